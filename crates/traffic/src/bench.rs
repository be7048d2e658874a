//! A deterministic mixed workload for benchmarks.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::dns::{dns_query, dns_response, QTYPE_A, QTYPE_AAAA};
use crate::packet::{
    fragment_ipv4, fragment_ipv6, icmp_echo, icmp_echo_reply, mix, syn_with, udp, SynStyle,
};
use crate::scenario::{ephemeral, resolved_addr, Conn};
use crate::{flags, Frame};

/// Timestamp of the first frame of [`bench_mix`] (2023-11-14T22:13:20Z).
pub const BENCH_START_MICROS: u64 = 1_700_000_000_000_000;

/// Established flows [`bench_mix`] draws its data segments from.
const FLOWS: usize = 4096;
/// Servers (in 198.19.255.0/24) the flows and new connections go to.
const SERVERS: u64 = 64;
const SERVER_PORTS: [u16; 6] = [22, 80, 443, 443, 8080, 5432];
const RESOLVERS: [[u8; 4]; 4] = [
    [198, 18, 0, 53],
    [198, 18, 1, 53],
    [198, 19, 0, 53],
    [198, 19, 1, 53],
];
const WORDS: [&str; 16] = [
    "api", "cdn", "www", "mail", "img", "static", "auth", "login", "ads", "tracker", "update",
    "files", "media", "shop", "news", "metrics",
];
const TLDS: [&str; 5] = [
    "example",
    "example.com",
    "example.net",
    "example.org",
    "test",
];

/// SplitMix64: tiny, fast and good enough for picking packets.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        // `mix` adds the golden-ratio increment itself.
        let x = self.0;
        self.0 = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(x)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A random host in 198.18.0.0/15 (never .0 or .255 in the last byte).
fn client_v4(rng: &mut SplitMix64) -> IpAddr {
    let h = rng.next();
    IpAddr::from([
        198,
        18 + (h & 1) as u8,
        (h >> 8) as u8,
        1 + (h >> 16) as u8 % 254,
    ])
}

fn server_v4(rng: &mut SplitMix64) -> IpAddr {
    IpAddr::from([198, 19, 255, 1 + rng.below(SERVERS) as u8])
}

/// A random host in 2001:2::/48.
fn host_v6(rng: &mut SplitMix64) -> IpAddr {
    let h = rng.next();
    let subnet = (h >> 48) as u16;
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0x2,
        0,
        subnet,
        0,
        0,
        (h >> 16) as u16,
        (h as u16).max(1),
    ))
}

fn dns_name(rng: &mut SplitMix64) -> String {
    let w1 = WORDS[rng.below(WORDS.len() as u64) as usize];
    let w2 = WORDS[rng.below(WORDS.len() as u64) as usize];
    let tld = TLDS[rng.below(TLDS.len() as u64) as usize];
    match rng.below(3) {
        0 => format!("{w1}.{tld}"),
        1 => format!("{w1}{}.{w2}.{tld}", rng.below(1000)),
        _ => format!("{w1}-{:x}.{w2}.{tld}", rng.next() as u32),
    }
}

/// Bytes to slice payloads from.
static FILLER: [u8; 1448] = {
    let mut b = [0u8; 1448];
    let mut i = 0;
    while i < b.len() {
        b[i] = (i * 31 % 251) as u8;
        i += 1;
    }
    b
};

/// A deterministic mix of `n` Ethernet frames for benchmarks, the same for
/// the same `seed`. Timestamps start at [`BENCH_START_MICROS`] and advance
/// 1–20 µs per frame.
///
/// Frame shares (approximate):
/// - 70% data and ACK segments of 4096 established IPv4 TCP flows (random
///   directions; a pure ACK when the peer has unacknowledged data, else a
///   PSH|ACK with 1–1448 bytes), sequence and acknowledgment numbers
///   consistent per flow;
/// - 10% new IPv4 SYNs from random hosts in 198.18.0.0/15 (80% Linux style,
///   20% nmap style) to 64 servers in 198.19.255.0/24;
/// - 10% IPv4 UDP: half DNS queries and answers with varied names, the rest
///   NTP, syslog and QUIC-sized datagrams;
/// - 5% ICMP echo requests and replies;
/// - 3% IPv6 (SYNs, data segments, UDP) between hosts in 2001:2::/48;
/// - 2% IP fragments (three quarters IPv4, one quarter IPv6, two per
///   datagram).
pub fn bench_mix(n: usize, seed: u64) -> Vec<Frame> {
    let mut rng = SplitMix64(seed ^ 0x6265_6e63_685f_6d69);
    let mut flows: Vec<Flow> = (0..FLOWS)
        .map(|_| {
            let c = SocketAddr::new(client_v4(&mut rng), ephemeral(rng.next()));
            let port = SERVER_PORTS[rng.below(SERVER_PORTS.len() as u64) as usize];
            let s = SocketAddr::new(server_v4(&mut rng), port);
            Flow::new(Conn::established(c, s, rng.next()))
        })
        .collect();
    let mut v6_flows: Vec<Flow> = (0..256)
        .map(|_| {
            let c = SocketAddr::new(host_v6(&mut rng), ephemeral(rng.next()));
            let s = SocketAddr::new(host_v6(&mut rng), 443);
            Flow::new(Conn::established(c, s, rng.next()))
        })
        .collect();

    let mut out = Vec::with_capacity(n + 1);
    let mut t = BENCH_START_MICROS;
    while out.len() < n {
        t += 1 + rng.below(20);
        // 99 equally likely events: 98 make one frame, the fragment event two.
        match rng.below(99) {
            0..=69 => {
                let k = rng.below(FLOWS as u64) as usize;
                out.push(Frame::new(t, data_segment(&mut flows[k], &mut rng)));
            }
            70..=79 => {
                let c = SocketAddr::new(client_v4(&mut rng), ephemeral(rng.next()));
                let port = SERVER_PORTS[rng.below(SERVER_PORTS.len() as u64) as usize];
                let s = SocketAddr::new(server_v4(&mut rng), port);
                let style = if rng.chance(80) {
                    SynStyle::Os
                } else {
                    SynStyle::Nmap
                };
                let seq = rng.next() as u32;
                out.push(Frame::new(t, syn_with(c, s, style, seq, rng.next() as u32)));
            }
            80..=89 => {
                let c = SocketAddr::new(client_v4(&mut rng), ephemeral(rng.next()));
                out.push(Frame::new(t, udp_datagram(c, &mut rng)));
            }
            90..=94 => {
                let a = client_v4(&mut rng);
                let b = server_v4(&mut rng);
                let (id, seq) = (rng.next() as u16, rng.below(100) as u16);
                let f = if rng.chance(50) {
                    icmp_echo(a, b, id, seq)
                } else {
                    icmp_echo_reply(b, a, id, seq)
                };
                out.push(Frame::new(t, f));
            }
            95..=97 => {
                let f = match rng.below(3) {
                    0 => {
                        let c = SocketAddr::new(host_v6(&mut rng), ephemeral(rng.next()));
                        let s = SocketAddr::new(host_v6(&mut rng), 443);
                        syn_with(c, s, SynStyle::Os, rng.next() as u32, rng.next() as u32)
                    }
                    1 => {
                        let k = rng.below(v6_flows.len() as u64) as usize;
                        data_segment(&mut v6_flows[k], &mut rng)
                    }
                    _ => {
                        let c = SocketAddr::new(host_v6(&mut rng), ephemeral(rng.next()));
                        udp_datagram(c, &mut rng)
                    }
                };
                out.push(Frame::new(t, f));
            }
            _ => {
                // One datagram of 1600–2400 bytes in two fragments.
                let len = 1600 + rng.below(800) as usize;
                let payload: Vec<u8> = FILLER.iter().cycle().take(len).copied().collect();
                let frags = if rng.chance(75) {
                    let c = SocketAddr::new(client_v4(&mut rng), ephemeral(rng.next()));
                    let s = SocketAddr::new(server_v4(&mut rng), 9);
                    fragment_ipv4(&udp(c, s, &payload), 1480)
                } else {
                    let c = SocketAddr::new(host_v6(&mut rng), ephemeral(rng.next()));
                    let s = SocketAddr::new(host_v6(&mut rng), 9);
                    fragment_ipv6(&udp(c, s, &payload), 1448)
                };
                for f in frags {
                    out.push(Frame::new(t, f));
                    t += 1;
                }
            }
        }
    }
    out.truncate(n);
    out
}

/// An established flow and which of its ends owes the other an ACK.
#[derive(Debug)]
struct Flow {
    conn: Conn,
    /// `[client owes, server owes]`.
    owed: [bool; 2],
}

impl Flow {
    fn new(conn: Conn) -> Self {
        Flow {
            conn,
            owed: [false; 2],
        }
    }
}

/// The next segment of an established flow, from a random end: a pure ACK
/// (60%) if that end has unacknowledged data to acknowledge, otherwise
/// PSH|ACK with 1–1448 bytes.
fn data_segment(flow: &mut Flow, rng: &mut SplitMix64) -> Vec<u8> {
    let from_client = rng.chance(50);
    let side = usize::from(!from_client);
    let len = if flow.owed[side] && rng.chance(60) {
        0
    } else {
        1 + rng.below(FILLER.len() as u64) as usize
    };
    flow.owed[side] = false;
    if len > 0 {
        flow.owed[1 - side] = true;
    }
    let fl = if len == 0 {
        flags::ACK
    } else {
        flags::PSH | flags::ACK
    };
    let payload = &FILLER[..len];
    if from_client {
        flow.conn.client_sends(fl, payload)
    } else {
        flow.conn.server_sends(fl, payload)
    }
}

/// A UDP datagram from `client`: a DNS query or answer half of the time,
/// else NTP, syslog or a QUIC-sized datagram.
fn udp_datagram(client: SocketAddr, rng: &mut SplitMix64) -> Vec<u8> {
    let server_ip = match client.ip() {
        IpAddr::V4(_) => IpAddr::from(RESOLVERS[rng.below(RESOLVERS.len() as u64) as usize]),
        IpAddr::V6(_) => host_v6(rng),
    };
    match rng.below(6) {
        0..=2 => {
            let name = dns_name(rng);
            let id = rng.next() as u16;
            let qtype = if rng.chance(70) { QTYPE_A } else { QTYPE_AAAA };
            let server = SocketAddr::new(server_ip, 53);
            if rng.chance(50) {
                udp(client, server, &dns_query(id, &name, qtype))
            } else {
                udp(
                    server,
                    client,
                    &dns_response(id, &name, qtype, &[resolved_addr(&name)]),
                )
            }
        }
        3 => {
            let mut ntp = [0u8; 48];
            ntp[0] = 0x23; // v4, client
            udp(client, SocketAddr::new(server_ip, 123), &ntp)
        }
        4 => {
            let msg = format!("<34>Oct 11 22:14:15 host su: event {}", rng.next());
            udp(client, SocketAddr::new(server_ip, 514), msg.as_bytes())
        }
        _ => {
            let len = 1200.min(FILLER.len());
            udp(client, SocketAddr::new(server_ip, 443), &FILLER[..len])
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    use std::collections::HashSet;

    #[derive(Debug, Default)]
    struct Counts {
        established: usize,
        syn: usize,
        udp: usize,
        dns: usize,
        icmp: usize,
        v6: usize,
        frag: usize,
    }

    fn classify(frames: &[Frame]) -> (Counts, usize) {
        let mut c = Counts::default();
        let mut addrs = HashSet::new();
        for f in frames {
            let p = SlicedPacket::from_ethernet(&f.data).unwrap();
            let net = p.net.as_ref().unwrap();
            match net {
                NetSlice::Ipv4(i) => {
                    addrs.insert(IpAddr::V4(i.header().source_addr()));
                }
                NetSlice::Ipv6(i) => {
                    addrs.insert(IpAddr::V6(i.header().source_addr()));
                }
                NetSlice::Arp(_) => panic!("arp"),
            }
            if p.is_ip_payload_fragmented() {
                c.frag += 1;
                continue;
            }
            if matches!(net, NetSlice::Ipv6(_)) {
                c.v6 += 1;
                continue;
            }
            match p.transport.unwrap() {
                TransportSlice::Tcp(t) if t.syn() && !t.ack() => c.syn += 1,
                TransportSlice::Tcp(_) => c.established += 1,
                TransportSlice::Udp(u) => {
                    c.udp += 1;
                    if u.destination_port() == 53 || u.source_port() == 53 {
                        simple_dns::Packet::parse(u.payload()).unwrap();
                        c.dns += 1;
                    }
                }
                TransportSlice::Icmpv4(_) => c.icmp += 1,
                other => panic!("{other:?}"),
            }
        }
        (c, addrs.len())
    }

    #[test]
    fn deterministic_per_seed() {
        let a = bench_mix(2000, 7);
        let b = bench_mix(2000, 7);
        assert_eq!(a, b);
        assert_eq!(a.len(), 2000);
        assert_ne!(a, bench_mix(2000, 8));
        assert!(a[0].ts_micros > BENCH_START_MICROS);
        assert!(a.windows(2).all(|w| w[0].ts_micros <= w[1].ts_micros));
        // A prefix of a longer run is the shorter run.
        assert_eq!(bench_mix(500, 7), a[..500]);
    }

    #[test]
    fn roughly_the_stated_proportions() {
        let n = 20_000;
        let (c, distinct) = classify(&bench_mix(n, 42));
        let pct = |x: usize| x as f64 * 100.0 / n as f64;
        let near = |x: usize, want: f64, tol: f64| {
            let got = pct(x);
            assert!((got - want).abs() <= tol, "{c:?}: got {got}%, want {want}%");
        };
        near(c.established, 70.0, 2.0);
        near(c.syn, 10.0, 1.0);
        near(c.udp, 10.0, 1.0);
        near(c.icmp, 5.0, 1.0);
        near(c.v6, 3.0, 0.7);
        near(c.frag, 2.0, 0.6);
        assert!(c.dns > c.udp / 3, "{c:?}");
        assert!(distinct > 3000, "only {distinct} source addresses");
    }

    #[test]
    fn dns_names_vary() {
        let frames = bench_mix(5000, 1);
        let mut names = HashSet::new();
        for f in &frames {
            let p = SlicedPacket::from_ethernet(&f.data).unwrap();
            if let Some(TransportSlice::Udp(u)) = p.transport {
                if u.destination_port() == 53 {
                    let m = simple_dns::Packet::parse(u.payload()).unwrap();
                    names.insert(m.questions[0].qname.to_string());
                }
            }
        }
        assert!(names.len() > 50, "{}", names.len());
    }
}
