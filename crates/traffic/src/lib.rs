//! Synthetic traffic for portcullis: replay tests, the demo and benchmarks.
//!
//! Three layers, each built on the one before:
//!
//! - **Packets** ([`tcp`], [`tcp_syn`], [`udp`], [`icmp_echo`], the DNS
//!   helpers, [`fragment_ipv4`], [`fragment_ipv6`], [`with_vlan`],
//!   [`raw_l3`]): single Ethernet II frames, correct on the wire (lengths and
//!   checksums by `etherparse`), so tcpdump and Wireshark accept them.
//! - **Scenarios** ([`port_scan`], [`sweep`], [`busy_client`],
//!   [`dns_lookups`], [`demo`], [`bench_mix`]): [`Frame`]s with timestamps,
//!   in time order, with plausible per-flow sequence numbers and the replies a
//!   real capture would contain. [`merge`] interleaves them.
//! - **Captures** ([`write_pcap`], [`write_pcap_snaplen`], [`write_pcapng`]).
//!
//! **Invariant:** everything here is a pure function of its arguments: no
//! clock, no randomness beyond seeded hashes, no I/O except into the writer
//! handed to the capture functions. The same call gives the same bytes.
//!
//! Defaults and examples only use the benchmarking ranges 198.18.0.0/15 and
//! 2001:2::/48. Timestamps are microseconds since the Unix epoch.
//!
//! ```
//! use portcullis_traffic::{merge, port_scan, busy_client, write_pcap, ScanShape};
//! let scanner = "198.18.0.66".parse().unwrap();
//! let host = "198.18.0.1".parse().unwrap();
//! let frames = merge(vec![
//!     busy_client("198.18.0.10".parse().unwrap(), host, 80, 5, 0, 1_000_000),
//!     port_scan(scanner, host, &[21, 22, 23, 80], ScanShape::Syn, 500_000, 1_000),
//! ]);
//! let mut pcap = Vec::new();
//! write_pcap(&mut pcap, &frames).unwrap();
//! ```

#![forbid(unsafe_code)]

mod bench;
pub mod demo_story;
mod dns;
mod packet;
mod pcap;
mod scenario;

pub use bench::{bench_mix, BENCH_START_MICROS};
pub use dns::{dns_query, dns_response, dns_tcp, dns_udp, QTYPE_A, QTYPE_AAAA, QTYPE_TXT};
pub use packet::{
    flags, fragment_ipv4, fragment_ipv6, icmp_echo, icmp_echo_reply, icmp_port_unreachable, isn,
    mac_for, raw_l3, tcp, tcp_segment, tcp_syn, udp, with_vlan, SynStyle, TcpFields,
    ETHERNET_HEADER_LEN, MAX_PAYLOAD,
};
pub use pcap::{write_pcap, write_pcap_snaplen, write_pcapng, SNAPLEN};
pub use scenario::{
    busy_client, dns_lookups, port_scan, resolved_addr, sweep, ScanShape, DNS_ANSWER_DELAY_MICROS,
    DNS_LOOKUP_GAP_MICROS, RTT_MICROS, SCAN_OPEN_TCP_PORTS, SCAN_OPEN_UDP_PORTS,
};

/// One captured frame: an Ethernet II frame (link type 1) and when it was
/// seen. Every builder and scenario here makes Ethernet frames; a caller
/// that wants what NFQUEUE sees strips the link header with [`raw_l3`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Capture time, microseconds since the Unix epoch.
    pub ts_micros: u64,
    /// The frame's bytes.
    pub data: Vec<u8>,
}

impl Frame {
    /// A frame seen at `ts_micros`.
    pub fn new(ts_micros: u64, data: Vec<u8>) -> Self {
        Frame { ts_micros, data }
    }
}

/// Interleaves several time-ordered streams into one, by timestamp. Stable:
/// frames with equal timestamps keep the order of `streams`, then their
/// order within their stream.
pub fn merge(streams: Vec<Vec<Frame>>) -> Vec<Frame> {
    let mut all: Vec<Frame> = streams.into_iter().flatten().collect();
    all.sort_by_key(|f| f.ts_micros);
    all
}

/// The quick-start demo: about 90 seconds of ordinary web and DNS traffic
/// with a DNS query for a blocked-looking name, a SYN scan, pings from the
/// banned scanner, an IPv6 UDP scan and pings from a blocked host.
///
/// The story with every address, name, port and time is in
/// [`demo_story`], whose constants the demo policy and tests can use:
///
/// | offset (s) | what |
/// | --- | --- |
/// | 0 – 88 | 198.18.0.10 -> 198.18.0.1:80, 30 HTTP connections |
/// | 1.5 – 86.5 | \[2001:2::10\] -> \[2001:2::1\]:443, 8 connections |
/// | 2 | 198.18.0.1 asks 198.18.0.53 for www.example.com, updates.example.net, mail.example.org |
/// | 20 | 198.18.0.1 asks 198.18.0.53 for `ads.tracker.example` |
/// | 30 – 31 | 198.18.0.66 SYN-scans 198.18.0.1 ports 1–100 (22 and 80 open) |
/// | 45, 46, 47 | 198.18.0.66 pings 198.18.0.1 |
/// | 55 – 56 | 2001:2::66 UDP-scans 2001:2::1, 20 ports |
/// | 70, 71, 72 | 198.18.0.99 pings 198.18.0.1 |
pub fn demo(start_micros: u64) -> Vec<Frame> {
    demo_story::frames(start_micros)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn merge_is_by_time_and_stable() {
        let a = vec![Frame::new(1, vec![1]), Frame::new(5, vec![2])];
        let b = vec![Frame::new(1, vec![3]), Frame::new(3, vec![4])];
        let m = merge(vec![a, b]);
        let order: Vec<u8> = m.iter().map(|f| f.data[0]).collect();
        assert_eq!(order, [1, 3, 4, 2]);
    }
}
