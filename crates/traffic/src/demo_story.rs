//! The quick-start demo capture: who talks, what they do, and when.
//!
//! [`crate::demo`] builds the frames; the constants here name the hosts,
//! names, ports and times so that the demo policy and tests can match them
//! without copying numbers. Times are microseconds after the `start_micros`
//! given to [`crate::demo`].
//!
//! The story, seen from the protected host [`HOST_V4`] / [`HOST_V6`] (a web
//! server with ssh, port 22, and HTTP, port 80, open; HTTPS on IPv6):
//!
//! | when (s) | what |
//! | --- | --- |
//! | 0 – 88 | [`WEB_CLIENT_V4`] makes [`WEB_CONNECTIONS_V4`] HTTP connections to [`HOST_V4`] port 80 (handshake, GET, 200 OK, FIN teardown) |
//! | 1.5 – 86.5 | [`WEB_CLIENT_V6`] makes [`WEB_CONNECTIONS_V6`] HTTPS-looking connections to [`HOST_V6`] port 443 |
//! | 2 | [`HOST_V4`] looks up [`ORDINARY_NAMES`] (UDP, A) at [`RESOLVER`], 50 ms apart; each is answered |
//! | 20 | [`HOST_V4`] looks up [`BLOCKED_NAME`] at [`RESOLVER`] (the query, then the resolver's answer 2 ms later) |
//! | 30 – 31 | [`SCANNER`] SYN-scans [`HOST_V4`] ports [`SYN_SCAN_PORTS`] (1–100), one probe every 10 ms, nmap style; 22 and 80 answer SYN-ACK (the scanner resets), the rest RST-ACK |
//! | 45, 46, 47 | [`SCANNER`] (banned by then) pings [`HOST_V4`] three times, no replies |
//! | 55 – 56 | [`SCANNER_V6`] UDP-scans [`HOST_V6`] ports [`UDP_SCAN_PORTS`], one every 50 ms; 53 answers DNS, the rest ICMPv6 port unreachable |
//! | 70, 71, 72 | [`BLOCKED_HOST`] (blocked by the demo policy) pings [`HOST_V4`] three times, no replies |
//!
//! The whole capture lasts about [`DURATION_MICROS`] (90 s).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use crate::{
    busy_client, dns_lookups, icmp_echo, merge, port_scan, scenario::Timeline, Frame, ScanShape,
};

/// The protected host (IPv4).
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The protected host (IPv6).
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 1);
/// An ordinary web client (IPv4).
pub const WEB_CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// An ordinary web client (IPv6).
pub const WEB_CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0x10);
/// The DNS resolver the host uses.
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 53);
/// The IPv4 port scanner.
pub const SCANNER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 66);
/// The IPv6 port scanner.
pub const SCANNER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0x66);
/// A host the demo policy blocks outright.
pub const BLOCKED_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);
/// A name the demo policy's DNS filter should block.
pub const BLOCKED_NAME: &str = "ads.tracker.example";
/// Names looked up at [`DNS_AT_MICROS`], all harmless.
pub const ORDINARY_NAMES: &[&str] = &["www.example.com", "updates.example.net", "mail.example.org"];
/// TCP ports of the SYN scan, in probe order.
pub const SYN_SCAN_PORTS: RangeInclusive<u16> = 1..=100;
/// UDP ports of the IPv6 scan, in probe order.
pub const UDP_SCAN_PORTS: &[u16] = &[
    53, 67, 68, 69, 123, 137, 138, 161, 162, 500, 514, 520, 623, 1434, 1900, 4500, 5353, 11211,
    27017, 49152,
];
/// Connections made by [`WEB_CLIENT_V4`].
pub const WEB_CONNECTIONS_V4: u32 = 30;
/// Connections made by [`WEB_CLIENT_V6`].
pub const WEB_CONNECTIONS_V6: u32 = 8;

const SECOND: u64 = 1_000_000;
/// When the ordinary lookups start.
pub const DNS_AT_MICROS: u64 = 2 * SECOND;
/// When [`BLOCKED_NAME`] is looked up.
pub const BLOCKED_DNS_AT_MICROS: u64 = 20 * SECOND;
/// When the SYN scan starts.
pub const SYN_SCAN_AT_MICROS: u64 = 30 * SECOND;
/// Time between two SYN scan probes.
pub const SYN_SCAN_GAP_MICROS: u64 = 10_000;
/// When the (banned) scanner's first ping arrives.
pub const SCANNER_PING_AT_MICROS: u64 = 45 * SECOND;
/// When the IPv6 UDP scan starts.
pub const UDP_SCAN_AT_MICROS: u64 = 55 * SECOND;
/// Time between two UDP scan probes.
pub const UDP_SCAN_GAP_MICROS: u64 = 50_000;
/// When the blocked host's first ping arrives.
pub const BLOCKED_PING_AT_MICROS: u64 = 70 * SECOND;
/// Length of the story.
pub const DURATION_MICROS: u64 = 90 * SECOND;
/// ICMP echo identifier of the scanner's pings.
pub const SCANNER_PING_ID: u16 = 0x0666;
/// ICMP echo identifier of the blocked host's pings.
pub const BLOCKED_PING_ID: u16 = 0x0099;

/// Three echo requests one second apart, sequence numbers 1 to 3.
fn pings(from: IpAddr, to: IpAddr, id: u16, at: u64) -> Vec<Frame> {
    let mut tl = Timeline::default();
    for seq in 1..=3u16 {
        tl.push(
            at + u64::from(seq - 1) * SECOND,
            icmp_echo(from, to, id, seq),
        );
    }
    tl.finish()
}

/// Builds the story told in this module's documentation.
pub(crate) fn frames(start_micros: u64) -> Vec<Frame> {
    let t = |offset: u64| start_micros.saturating_add(offset);
    let host4 = IpAddr::V4(HOST_V4);
    let host6 = IpAddr::V6(HOST_V6);
    let syn_ports: Vec<u16> = SYN_SCAN_PORTS.collect();
    merge(vec![
        busy_client(
            WEB_CLIENT_V4.into(),
            host4,
            80,
            WEB_CONNECTIONS_V4,
            t(0),
            88 * SECOND,
        ),
        busy_client(
            WEB_CLIENT_V6.into(),
            host6,
            443,
            WEB_CONNECTIONS_V6,
            t(1_500_000),
            85 * SECOND,
        ),
        dns_lookups(
            host4,
            RESOLVER.into(),
            ORDINARY_NAMES,
            false,
            t(DNS_AT_MICROS),
        ),
        dns_lookups(
            host4,
            RESOLVER.into(),
            &[BLOCKED_NAME],
            false,
            t(BLOCKED_DNS_AT_MICROS),
        ),
        port_scan(
            SCANNER.into(),
            host4,
            &syn_ports,
            ScanShape::Syn,
            t(SYN_SCAN_AT_MICROS),
            SYN_SCAN_GAP_MICROS,
        ),
        pings(
            SCANNER.into(),
            host4,
            SCANNER_PING_ID,
            t(SCANNER_PING_AT_MICROS),
        ),
        port_scan(
            SCANNER_V6.into(),
            host6,
            UDP_SCAN_PORTS,
            ScanShape::Udp,
            t(UDP_SCAN_AT_MICROS),
            UDP_SCAN_GAP_MICROS,
        ),
        pings(
            BLOCKED_HOST.into(),
            host4,
            BLOCKED_PING_ID,
            t(BLOCKED_PING_AT_MICROS),
        ),
    ])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn src_of(f: &Frame) -> IpAddr {
        match SlicedPacket::from_ethernet(&f.data).unwrap().net.unwrap() {
            NetSlice::Ipv4(i) => i.header().source_addr().into(),
            NetSlice::Ipv6(i) => i.header().source_addr().into(),
            NetSlice::Arp(_) => panic!("arp"),
        }
    }

    #[test]
    fn story_matches_its_documentation() {
        let start = 1_700_000_000_000_000;
        let f = crate::demo(start);
        assert!(f.windows(2).all(|w| w[0].ts_micros <= w[1].ts_micros));
        assert!(f[0].ts_micros >= start);
        let last = f.last().unwrap().ts_micros - start;
        assert!(last <= DURATION_MICROS && last > 80 * SECOND, "{last}");

        // Every address is in the benchmarking ranges.
        for fr in &f {
            match src_of(fr) {
                IpAddr::V4(a) => assert_eq!(a.octets()[..1], [198]),
                IpAddr::V6(a) => assert_eq!(a.segments()[..3], [0x2001, 2, 0]),
            }
        }

        let scan: Vec<&Frame> = f
            .iter()
            .filter(|x| src_of(x) == IpAddr::V4(SCANNER))
            .collect();
        // 100 SYNs, 2 RSTs after SYN-ACK, 3 pings.
        assert_eq!(scan.len(), 105);
        let first_scan = scan[0].ts_micros - start;
        assert_eq!(first_scan, SYN_SCAN_AT_MICROS);
        let pings: Vec<&&Frame> = scan
            .iter()
            .filter(|x| {
                matches!(
                    SlicedPacket::from_ethernet(&x.data).unwrap().transport,
                    Some(TransportSlice::Icmpv4(_))
                )
            })
            .collect();
        assert_eq!(pings.len(), 3);
        assert_eq!(pings[0].ts_micros - start, SCANNER_PING_AT_MICROS);

        let blocked: Vec<&Frame> = f
            .iter()
            .filter(|x| src_of(x) == IpAddr::V4(BLOCKED_HOST))
            .collect();
        assert_eq!(blocked.len(), 3);
        assert_eq!(blocked[0].ts_micros - start, BLOCKED_PING_AT_MICROS);

        let v6_probes = f
            .iter()
            .filter(|x| src_of(x) == IpAddr::V6(SCANNER_V6))
            .count();
        assert_eq!(v6_probes, UDP_SCAN_PORTS.len());

        // The blocked name is queried exactly once, at its time.
        let q: Vec<&Frame> = f
            .iter()
            .filter(|x| {
                let p = SlicedPacket::from_ethernet(&x.data).unwrap();
                match p.transport {
                    Some(TransportSlice::Udp(u)) if u.destination_port() == 53 => {
                        let m = simple_dns::Packet::parse(u.payload()).unwrap();
                        m.questions[0].qname.to_string() == BLOCKED_NAME
                    }
                    _ => false,
                }
            })
            .collect();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].ts_micros - start, BLOCKED_DNS_AT_MICROS);
    }
}
