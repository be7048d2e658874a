//! Multi-packet scenarios: scans, sweeps, busy clients, DNS lookups.
//!
//! Each scenario returns frames sorted by timestamp (stable), starting at the
//! `start_micros` it was given. Replies from the other side are timed one
//! round trip after what caused them, so with a small gap they interleave
//! with later probes as in a real capture.

use std::net::{IpAddr, SocketAddr};

use crate::dns::{self, QTYPE_A, QTYPE_TXT};
use crate::packet::{
    self, flags, fnv, linux_options, mix, syn_with, tcp_segment_with, tsval_for, IpKnobs, SynStyle,
    TcpFields, L4, MSS_ONLY,
};
use crate::Frame;

/// TCP ports that [`port_scan`] models as open on the target (if scanned);
/// every other TCP port is closed.
pub const SCAN_OPEN_TCP_PORTS: &[u16] = &[22, 80, 443];

/// UDP ports that [`port_scan`] models as open (they answer with a DNS
/// response); every other UDP port answers with ICMP port unreachable.
pub const SCAN_OPEN_UDP_PORTS: &[u16] = &[53];

/// Round-trip time between hosts in the scenarios, in microseconds.
pub const RTT_MICROS: u64 = 400;

/// Time between two names in [`dns_lookups`], in microseconds.
pub const DNS_LOOKUP_GAP_MICROS: u64 = 50_000;

/// Time a resolver takes to answer in [`dns_lookups`], in microseconds.
pub const DNS_ANSWER_DELAY_MICROS: u64 = 2_000;

/// What kind of port scan [`port_scan`] produces (named after nmap's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScanShape {
    /// `-sS`: raw SYN ([`SynStyle::Nmap`]) from one source port. Open ports
    /// answer SYN-ACK and the scanner's kernel resets; closed ports answer
    /// RST-ACK.
    Syn,
    /// `-sT`: a full `connect()` ([`SynStyle::Os`]) from a new ephemeral port
    /// per probe. Open ports: SYN-ACK, ACK, then the scanner's RST-ACK
    /// (`SO_LINGER` 0). Closed: RST-ACK from the target.
    Connect,
    /// `-sF`: FIN only. Closed ports answer RST-ACK, open ones stay silent.
    Fin,
    /// `-sN`: no flags. Closed ports answer RST-ACK, open ones stay silent.
    Null,
    /// `-sX`: FIN, PSH and URG. Closed ports answer RST-ACK.
    Xmas,
    /// `-sA`: ACK only. Every port answers RST (unfiltered).
    Ack,
    /// `-sU`: empty UDP datagrams (a DNS query to port 53). Closed ports
    /// answer ICMP port unreachable; [`SCAN_OPEN_UDP_PORTS`] answer in kind.
    Udp,
}

/// Collects frames and sorts them once at the end.
#[derive(Debug, Default)]
pub(crate) struct Timeline(Vec<Frame>);

impl Timeline {
    pub(crate) fn push(&mut self, ts_micros: u64, data: Vec<u8>) {
        self.0.push(Frame { ts_micros, data });
    }

    pub(crate) fn finish(mut self) -> Vec<Frame> {
        self.0.sort_by_key(|f| f.ts_micros);
        self.0
    }
}

/// One TCP connection seen from both ends, tracking sequence numbers.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    pub(crate) client: SocketAddr,
    pub(crate) server: SocketAddr,
    /// Next sequence number the client sends.
    c_next: u32,
    /// Next sequence number the server sends.
    s_next: u32,
    c_tsval: u32,
}

/// Window field after a Linux handshake with window scale 7 (64240 >> 7).
const ESTABLISHED_WINDOW: u16 = 501;
/// Linux SYN-ACK window for MSS 1460.
const SYN_ACK_WINDOW: u16 = 65160;

impl Conn {
    pub(crate) fn new(client: SocketAddr, server: SocketAddr) -> Self {
        Conn {
            client,
            server,
            c_next: packet::isn(client, server),
            s_next: packet::isn(server, client),
            c_tsval: 0,
        }
    }

    /// A connection with arbitrary (but valid) sequence numbers, already
    /// past its handshake.
    pub(crate) fn established(client: SocketAddr, server: SocketAddr, seed: u64) -> Self {
        let h = mix(seed);
        Conn {
            client,
            server,
            c_next: h as u32,
            s_next: (h >> 32) as u32,
            c_tsval: 0,
        }
    }

    pub(crate) fn syn(&mut self, style: SynStyle, ts: u64) -> Vec<u8> {
        self.c_tsval = tsval_for(self.client, ts);
        let f = syn_with(self.client, self.server, style, self.c_next, self.c_tsval);
        self.c_next = self.c_next.wrapping_add(1);
        f
    }

    /// The server's SYN-ACK to a SYN of `style` (Linux mirrors the options
    /// it was offered).
    pub(crate) fn syn_ack(&mut self, style: SynStyle, ts: u64) -> Vec<u8> {
        let f = TcpFields {
            flags: flags::SYN | flags::ACK,
            seq: self.s_next,
            ack: self.c_next,
            window: SYN_ACK_WINDOW,
        };
        self.s_next = self.s_next.wrapping_add(1);
        let opts;
        let options: &[u8] = match style {
            SynStyle::Nmap => &MSS_ONLY,
            SynStyle::Os => {
                opts = linux_options(tsval_for(self.server, ts), self.c_tsval);
                &opts
            }
        };
        tcp_segment_with(self.server, self.client, IpKnobs::os(), f, options, &[])
    }

    pub(crate) fn client_sends(&mut self, flags: u8, payload: &[u8]) -> Vec<u8> {
        let f = TcpFields {
            flags,
            seq: self.c_next,
            ack: self.s_next,
            window: ESTABLISHED_WINDOW,
        };
        self.c_next = advance(self.c_next, flags, payload);
        tcp_segment_with(self.client, self.server, IpKnobs::os(), f, &[], payload)
    }

    pub(crate) fn server_sends(&mut self, flags: u8, payload: &[u8]) -> Vec<u8> {
        let f = TcpFields {
            flags,
            seq: self.s_next,
            ack: self.c_next,
            window: ESTABLISHED_WINDOW,
        };
        self.s_next = advance(self.s_next, flags, payload);
        tcp_segment_with(self.server, self.client, IpKnobs::os(), f, &[], payload)
    }
}

fn advance(seq: u32, flags: u8, payload: &[u8]) -> u32 {
    let ctl = u32::from(flags & (flags::SYN | flags::FIN) != 0);
    seq.wrapping_add(payload.len() as u32).wrapping_add(ctl)
}

/// `start + i * gap`, saturating.
fn at(start: u64, i: usize, gap: u64) -> u64 {
    start.saturating_add((i as u64).saturating_mul(gap))
}

/// A source port in Linux's ephemeral range (32768..=60999) chosen by `h`.
pub(crate) fn ephemeral(h: u64) -> u16 {
    32768 + (h % 28232) as u16
}

/// An RST-ACK from a closed port in answer to a segment that ended at `ack`.
fn rst_ack(from: SocketAddr, to: SocketAddr, ack: u32) -> Vec<u8> {
    let f = TcpFields {
        flags: flags::RST | flags::ACK,
        seq: 0,
        ack,
        window: 0,
    };
    tcp_segment_with(from, to, IpKnobs::os(), f, &[], &[])
}

/// A port scan of `ports` on `target`, one probe every `gap_micros` in the
/// order given, with the target's replies and the scanner's follow-ups as a
/// capture on either host would show them (see [`ScanShape`];
/// [`SCAN_OPEN_TCP_PORTS`] and [`SCAN_OPEN_UDP_PORTS`] are open).
///
/// # Panics
/// If `scanner` and `target` are of different families.
pub fn port_scan(
    scanner: IpAddr,
    target: IpAddr,
    ports: &[u16],
    kind: ScanShape,
    start_micros: u64,
    gap_micros: u64,
) -> Vec<Frame> {
    let seed = fnv(format!("{scanner}>{target} {kind:?}").as_bytes());
    let raw_src = SocketAddr::new(scanner, ephemeral(mix(seed)));
    let raw_knobs = IpKnobs::nmap(seed);
    let mut tl = Timeline::default();
    for (i, &port) in ports.iter().enumerate() {
        let t = at(start_micros, i, gap_micros);
        let reply_t = t + RTT_MICROS;
        let dst = SocketAddr::new(target, port);
        let probe_seq = mix(seed ^ u64::from(port)) as u32;
        let tcp_open = SCAN_OPEN_TCP_PORTS.contains(&port);
        let probe = |flags: u8, seq: u32, ack: u32| {
            let f = TcpFields {
                flags,
                seq,
                ack,
                window: 1024,
            };
            tcp_segment_with(raw_src, dst, raw_knobs, f, &[], &[])
        };
        match kind {
            ScanShape::Syn => {
                let mut c = Conn::new(raw_src, dst);
                c.c_next = probe_seq;
                tl.push(t, c.syn(SynStyle::Nmap, t));
                if tcp_open {
                    tl.push(reply_t, c.syn_ack(SynStyle::Nmap, reply_t));
                    // The scanner's kernel knows no such connection: RST.
                    let f = TcpFields {
                        flags: flags::RST,
                        seq: c.c_next,
                        ack: 0,
                        window: 0,
                    };
                    tl.push(
                        reply_t + 30,
                        tcp_segment_with(raw_src, dst, raw_knobs, f, &[], &[]),
                    );
                } else {
                    tl.push(reply_t, rst_ack(dst, raw_src, c.c_next));
                }
            }
            ScanShape::Connect => {
                let src = SocketAddr::new(scanner, ephemeral(mix(seed).wrapping_add(i as u64)));
                let mut c = Conn::new(src, dst);
                tl.push(t, c.syn(SynStyle::Os, t));
                if tcp_open {
                    tl.push(reply_t, c.syn_ack(SynStyle::Os, reply_t));
                    tl.push(reply_t + 20, c.client_sends(flags::ACK, &[]));
                    tl.push(reply_t + 40, c.client_sends(flags::RST | flags::ACK, &[]));
                } else {
                    tl.push(reply_t, rst_ack(dst, src, c.c_next));
                }
            }
            ScanShape::Fin | ScanShape::Null | ScanShape::Xmas => {
                let fl = match kind {
                    ScanShape::Fin => flags::FIN,
                    ScanShape::Xmas => flags::FIN | flags::PSH | flags::URG,
                    _ => 0,
                };
                tl.push(t, probe(fl, probe_seq, 0));
                if !tcp_open {
                    let ack = advance(probe_seq, fl, &[]);
                    tl.push(reply_t, rst_ack(dst, raw_src, ack));
                }
            }
            ScanShape::Ack => {
                let ack = mix(seed ^ (u64::from(port) << 20)) as u32;
                tl.push(t, probe(flags::ACK, probe_seq, ack));
                let f = TcpFields {
                    flags: flags::RST,
                    seq: ack,
                    ack: 0,
                    window: 0,
                };
                tl.push(
                    reply_t,
                    tcp_segment_with(dst, raw_src, IpKnobs::os(), f, &[], &[]),
                );
            }
            ScanShape::Udp => {
                let id = probe_seq as u16;
                let payload = if port == 53 {
                    dns::dns_query(id, "version.bind", QTYPE_TXT)
                } else {
                    Vec::new()
                };
                let l4 = L4::Udp {
                    sport: raw_src.port(),
                    dport: port,
                };
                let p = packet::build(scanner, target, raw_knobs, l4, &payload);
                if SCAN_OPEN_UDP_PORTS.contains(&port) {
                    let answer = dns::dns_response(id, "version.bind", QTYPE_TXT, &[]);
                    tl.push(reply_t, packet::udp(dst, raw_src, &answer));
                } else {
                    tl.push(reply_t, packet::icmp_port_unreachable(target, scanner, &p));
                }
                tl.push(t, p);
            }
        }
    }
    tl.finish()
}

/// A SYN sweep: one [`SynStyle::Nmap`] SYN to `port` on each of `targets`,
/// every `gap_micros`, from one source port. No replies (the targets are
/// modelled as filtered).
///
/// # Panics
/// If `scanner` and a target are of different families.
pub fn sweep(
    scanner: IpAddr,
    targets: &[IpAddr],
    port: u16,
    start_micros: u64,
    gap_micros: u64,
) -> Vec<Frame> {
    let seed = fnv(format!("sweep {scanner}:{port}").as_bytes());
    let src = SocketAddr::new(scanner, ephemeral(mix(seed)));
    let mut tl = Timeline::default();
    for (i, &target) in targets.iter().enumerate() {
        let t = at(start_micros, i, gap_micros);
        let seq = mix(seed ^ i as u64) as u32;
        tl.push(
            t,
            syn_with(src, SocketAddr::new(target, port), SynStyle::Nmap, seq, 0),
        );
    }
    tl.finish()
}

/// The request a client sends on its `i`-th connection to `port`
/// (HTTP/1.1 text, or TLS application-data records for port 443).
fn request(port: u16, i: u32) -> Vec<u8> {
    if port == 443 {
        tls_record(120 + (i % 7) * 16, u64::from(i))
    } else {
        format!(
            "GET /api/items/{i} HTTP/1.1\r\nHost: service.example\r\n\
             User-Agent: portcullis-traffic\r\nAccept: */*\r\n\r\n"
        )
        .into_bytes()
    }
}

/// The server's answer to [`request`].
fn response(port: u16, i: u32) -> Vec<u8> {
    let body_len = 200 + (mix(u64::from(i)) % 800) as usize;
    if port == 443 {
        tls_record(body_len as u32, u64::from(i) << 32)
    } else {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
        )
        .into_bytes();
        r.push(b'{');
        r.resize(r.len() + body_len - 2, b'a');
        r.push(b'}');
        r
    }
}

/// A TLS 1.2/1.3 application-data record with `len` opaque bytes.
fn tls_record(len: u32, seed: u64) -> Vec<u8> {
    let mut r = vec![0x17, 0x03, 0x03];
    r.extend_from_slice(&(len as u16).to_be_bytes());
    let mut s = seed;
    for _ in 0..len {
        s = mix(s);
        r.push(s as u8);
    }
    r
}

/// An ordinary client: `connections` TCP connections from `client` to
/// `port` on `server`, started evenly over `span_micros`, each from its own
/// ephemeral port and made of a [`SynStyle::Os`] handshake, one request and
/// one response (HTTP text, or TLS records for port 443), the ACKs, and a
/// FIN/ACK teardown started by the client. Both directions are included.
///
/// # Panics
/// If `client` and `server` are of different families.
pub fn busy_client(
    client: IpAddr,
    server: IpAddr,
    port: u16,
    connections: u32,
    start_micros: u64,
    span_micros: u64,
) -> Vec<Frame> {
    let base = mix(fnv(format!("{client}>{server}:{port}").as_bytes()));
    let dst = SocketAddr::new(server, port);
    let mut tl = Timeline::default();
    let r = RTT_MICROS;
    for i in 0..connections {
        let offset = u128::from(span_micros) * u128::from(i) / u128::from(connections);
        let t = start_micros.saturating_add(offset as u64);
        let src = SocketAddr::new(client, ephemeral(base.wrapping_add(u64::from(i))));
        let mut c = Conn::new(src, dst);
        tl.push(t, c.syn(SynStyle::Os, t));
        tl.push(t + r, c.syn_ack(SynStyle::Os, t + r));
        tl.push(t + r + 10, c.client_sends(flags::ACK, &[]));
        tl.push(
            t + r + 20,
            c.client_sends(flags::PSH | flags::ACK, &request(port, i)),
        );
        tl.push(
            t + 2 * r + 200,
            c.server_sends(flags::PSH | flags::ACK, &response(port, i)),
        );
        tl.push(t + 3 * r + 200, c.client_sends(flags::ACK, &[]));
        tl.push(
            t + 3 * r + 300,
            c.client_sends(flags::FIN | flags::ACK, &[]),
        );
        tl.push(
            t + 4 * r + 300,
            c.server_sends(flags::FIN | flags::ACK, &[]),
        );
        tl.push(t + 5 * r + 300, c.client_sends(flags::ACK, &[]));
    }
    tl.finish()
}

/// The address a synthetic resolver gives for `name`: stable, in
/// 198.19.0.0/16.
pub fn resolved_addr(name: &str) -> IpAddr {
    let h = mix(fnv(name.to_ascii_lowercase().as_bytes()));
    IpAddr::from([198, 19, (h >> 8) as u8, (h as u8).max(1)])
}

/// One A lookup per name from `client` to `resolver` port 53, one every
/// [`DNS_LOOKUP_GAP_MICROS`], each answered [`DNS_ANSWER_DELAY_MICROS`]
/// later with one A record ([`resolved_addr`]).
///
/// Over UDP each lookup is a query and a response from a fresh ephemeral
/// port. Over TCP (`tcp`) each lookup is a whole connection: handshake,
/// length-prefixed query and response, ACK, FIN teardown.
///
/// # Panics
/// If the families differ or a name is not a valid DNS name.
pub fn dns_lookups(
    client: IpAddr,
    resolver: IpAddr,
    names: &[&str],
    tcp: bool,
    start_micros: u64,
) -> Vec<Frame> {
    let base = mix(fnv(format!("dns {client}>{resolver}").as_bytes()));
    let server = SocketAddr::new(resolver, 53);
    let mut tl = Timeline::default();
    for (i, name) in names.iter().enumerate() {
        let h = mix(base ^ fnv(name.as_bytes()) ^ i as u64);
        let t = at(start_micros, i, DNS_LOOKUP_GAP_MICROS);
        let id = h as u16;
        let src = SocketAddr::new(client, ephemeral(h >> 16));
        let query = dns::dns_query(id, name, QTYPE_A);
        let answer = dns::dns_response(id, name, QTYPE_A, &[resolved_addr(name)]);
        let d = DNS_ANSWER_DELAY_MICROS;
        if tcp {
            let r = RTT_MICROS;
            let mut c = Conn::new(src, server);
            tl.push(t, c.syn(SynStyle::Os, t));
            tl.push(t + r, c.syn_ack(SynStyle::Os, t + r));
            tl.push(t + r + 10, c.client_sends(flags::ACK, &[]));
            let q = dns::length_prefixed(&query);
            tl.push(t + r + 20, c.client_sends(flags::PSH | flags::ACK, &q));
            let a = dns::length_prefixed(&answer);
            tl.push(t + r + 20 + d, c.server_sends(flags::PSH | flags::ACK, &a));
            tl.push(t + 2 * r + 20 + d, c.client_sends(flags::ACK, &[]));
            tl.push(
                t + 2 * r + 30 + d,
                c.client_sends(flags::FIN | flags::ACK, &[]),
            );
            tl.push(
                t + 3 * r + 30 + d,
                c.server_sends(flags::FIN | flags::ACK, &[]),
            );
            tl.push(t + 4 * r + 30 + d, c.client_sends(flags::ACK, &[]));
        } else {
            tl.push(t, packet::udp(src, server, &query));
            tl.push(t + d, packet::udp(server, src, &answer));
        }
    }
    tl.finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// (src, dst, sport, dport, flags, seq, ack, payload len) of a TCP frame.
    type Seg = (IpAddr, IpAddr, u16, u16, u8, u32, u32, usize);

    fn seg(f: &Frame) -> Option<Seg> {
        let p = SlicedPacket::from_ethernet(&f.data).unwrap();
        let (s, d) = match p.net.as_ref()? {
            NetSlice::Ipv4(i) => (
                IpAddr::V4(i.header().source_addr()),
                IpAddr::V4(i.header().destination_addr()),
            ),
            NetSlice::Ipv6(i) => (
                IpAddr::V6(i.header().source_addr()),
                IpAddr::V6(i.header().destination_addr()),
            ),
            _ => return None,
        };
        match p.transport? {
            TransportSlice::Tcp(t) => Some((
                s,
                d,
                t.source_port(),
                t.destination_port(),
                t.header_slice()[13],
                t.sequence_number(),
                t.acknowledgment_number(),
                t.payload().len(),
            )),
            _ => None,
        }
    }

    fn sorted(frames: &[Frame]) -> bool {
        frames.windows(2).all(|w| w[0].ts_micros <= w[1].ts_micros)
    }

    #[test]
    fn syn_scan_has_probes_and_replies() {
        let ports: Vec<u16> = (1..=100).collect();
        let f = port_scan(
            ip("198.18.0.66"),
            ip("198.18.0.1"),
            &ports,
            ScanShape::Syn,
            1_000,
            10_000,
        );
        assert!(sorted(&f));
        assert_eq!(f[0].ts_micros, 1_000);
        let segs: Vec<Seg> = f.iter().filter_map(seg).collect();
        assert_eq!(segs.len(), f.len());
        let probes: Vec<&Seg> = segs.iter().filter(|s| s.4 == flags::SYN).collect();
        assert_eq!(probes.len(), 100);
        assert!(probes
            .iter()
            .all(|s| s.0 == ip("198.18.0.66") && s.2 == probes[0].2));
        let synacks: Vec<&Seg> = segs
            .iter()
            .filter(|s| s.4 == flags::SYN | flags::ACK)
            .collect();
        let mut open: Vec<u16> = synacks.iter().map(|s| s.2).collect();
        open.sort_unstable();
        assert_eq!(open, [22, 80]);
        let rsts: Vec<&Seg> = segs.iter().filter(|s| s.4 == flags::RST).collect();
        assert_eq!(rsts.len(), 2);
        let closed = segs
            .iter()
            .filter(|s| s.4 == flags::RST | flags::ACK)
            .count();
        assert_eq!(closed, 98);
        // Replies acknowledge the probe's sequence number + 1.
        for sa in synacks {
            let probe = probes.iter().find(|p| p.3 == sa.2).unwrap();
            assert_eq!(sa.6, probe.5.wrapping_add(1));
            let rst = rsts.iter().find(|r| r.3 == sa.2).unwrap();
            assert_eq!(rst.5, probe.5.wrapping_add(1));
        }
    }

    #[test]
    fn connect_scan_completes_handshakes_on_open_ports() {
        let f = port_scan(
            ip("198.18.0.66"),
            ip("198.18.0.1"),
            &[21, 22, 23],
            ScanShape::Connect,
            0,
            1000,
        );
        let segs: Vec<Seg> = f.iter().filter_map(seg).collect();
        let syns: Vec<&Seg> = segs.iter().filter(|s| s.4 == flags::SYN).collect();
        assert_eq!(syns.len(), 3);
        // Distinct ephemeral ports per probe.
        assert!(syns[0].2 != syns[1].2 && syns[1].2 != syns[2].2);
        let kinds: Vec<u8> = segs
            .iter()
            .filter(|s| s.3 == 22 || s.2 == 22)
            .map(|s| s.4)
            .collect();
        assert_eq!(
            kinds,
            [
                flags::SYN,
                flags::SYN | flags::ACK,
                flags::ACK,
                flags::RST | flags::ACK
            ]
        );
        let client_rst = segs
            .iter()
            .find(|s| s.3 == 22 && s.4 == flags::RST | flags::ACK)
            .unwrap();
        let synack = segs
            .iter()
            .find(|s| s.2 == 22 && s.4 == flags::SYN | flags::ACK)
            .unwrap();
        assert_eq!(client_rst.6, synack.5.wrapping_add(1));
        assert_eq!(
            segs.iter()
                .filter(|s| s.4 == flags::RST | flags::ACK)
                .count(),
            3
        );
    }

    #[test]
    fn stealth_scans_have_their_flags() {
        for (shape, fl) in [
            (ScanShape::Fin, flags::FIN),
            (ScanShape::Null, 0),
            (ScanShape::Xmas, flags::FIN | flags::PSH | flags::URG),
            (ScanShape::Ack, flags::ACK),
        ] {
            let f = port_scan(
                ip("2001:2::66"),
                ip("2001:2::1"),
                &[22, 1000],
                shape,
                0,
                1000,
            );
            let segs: Vec<Seg> = f.iter().filter_map(seg).collect();
            let probes = segs
                .iter()
                .filter(|s| s.0 == ip("2001:2::66"))
                .collect::<Vec<_>>();
            assert_eq!(probes.len(), 2);
            assert!(probes.iter().all(|s| s.4 == fl), "{shape:?}");
            let replies = segs.len() - 2;
            let want = if shape == ScanShape::Ack { 2 } else { 1 };
            assert_eq!(replies, want, "{shape:?}");
        }
    }

    #[test]
    fn udp_scan_gets_port_unreachables() {
        let f = port_scan(
            ip("2001:2::66"),
            ip("2001:2::1"),
            &[53, 123, 161],
            ScanShape::Udp,
            0,
            5000,
        );
        assert_eq!(f.len(), 6);
        let mut unreach = 0;
        let mut dns = 0;
        for fr in &f {
            let p = SlicedPacket::from_ethernet(&fr.data).unwrap();
            match p.transport {
                Some(TransportSlice::Icmpv6(i)) => {
                    assert!(matches!(
                        i.icmp_type(),
                        etherparse::Icmpv6Type::DestinationUnreachable(
                            etherparse::icmpv6::DestUnreachableCode::Port
                        )
                    ));
                    unreach += 1;
                }
                Some(TransportSlice::Udp(u)) if u.source_port() == 53 => {
                    simple_dns::Packet::parse(u.payload()).unwrap();
                    dns += 1;
                }
                Some(TransportSlice::Udp(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((unreach, dns), (2, 1));
    }

    #[test]
    fn sweep_hits_each_target() {
        let targets: Vec<IpAddr> = (1..=20).map(|i| IpAddr::from([198, 18, 1, i])).collect();
        let f = sweep(ip("198.18.0.66"), &targets, 445, 100, 50);
        assert_eq!(f.len(), 20);
        for (fr, t) in f.iter().zip(&targets) {
            let s = seg(fr).unwrap();
            assert_eq!((s.1, s.3, s.4), (*t, 445, flags::SYN));
        }
        assert_eq!(f[19].ts_micros, 100 + 19 * 50);
    }

    #[test]
    fn busy_client_has_exactly_n_syns_and_consistent_sequences() {
        let f = busy_client(
            ip("198.18.0.10"),
            ip("198.18.0.1"),
            80,
            25,
            5_000,
            1_000_000,
        );
        assert!(sorted(&f));
        assert_eq!(f[0].ts_micros, 5_000);
        let segs: Vec<Seg> = f.iter().filter_map(seg).collect();
        assert_eq!(segs.len(), 25 * 9);
        let syns: Vec<&Seg> = segs.iter().filter(|s| s.4 == flags::SYN).collect();
        assert_eq!(syns.len(), 25);
        assert!(syns.iter().all(|s| s.3 == 80 && s.0 == ip("198.18.0.10")));
        let mut ports: Vec<u16> = syns.iter().map(|s| s.2).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 25);
        // Per flow and direction, each segment starts where the previous ended.
        for sport in ports {
            let mut next: std::collections::HashMap<bool, u32> = Default::default();
            let mut acked_fin = false;
            for s in segs.iter().filter(|s| s.2 == sport || s.3 == sport) {
                let up = s.2 == sport;
                if let Some(n) = next.get(&up) {
                    assert_eq!(s.5, *n, "port {sport}");
                }
                let ctl = u32::from(s.4 & (flags::SYN | flags::FIN) != 0);
                next.insert(up, s.5.wrapping_add(s.7 as u32 + ctl));
                if s.4 & flags::ACK != 0 {
                    // The ACK acknowledges everything the peer has sent so far.
                    assert_eq!(Some(&s.6), next.get(&!up));
                    acked_fin = up && s.4 == flags::ACK;
                }
            }
            assert!(acked_fin);
        }
        // Payload on both sides.
        assert!(segs.iter().any(|s| s.2 == 80 && s.7 > 200));
        assert!(segs.iter().any(|s| s.3 == 80 && s.7 > 50));
    }

    #[test]
    fn dns_lookups_udp_and_tcp() {
        let names = ["www.example.com", "ads.tracker.example"];
        let f = dns_lookups(ip("198.18.0.1"), ip("198.18.0.53"), &names, false, 0);
        assert_eq!(f.len(), 4);
        let mut seen = Vec::new();
        for fr in &f {
            let p = SlicedPacket::from_ethernet(&fr.data).unwrap();
            let Some(TransportSlice::Udp(u)) = p.transport else {
                panic!()
            };
            let m = simple_dns::Packet::parse(u.payload()).unwrap();
            seen.push((
                m.has_flags(simple_dns::PacketFlag::RESPONSE),
                m.questions[0].qname.to_string(),
                m.answers.len(),
            ));
        }
        assert_eq!(
            seen,
            [
                (false, names[0].to_string(), 0),
                (true, names[0].to_string(), 1),
                (false, names[1].to_string(), 0),
                (true, names[1].to_string(), 1),
            ]
        );
        let t = dns_lookups(ip("2001:2::1"), ip("2001:2::53"), &names, true, 0);
        assert_eq!(t.len(), 18);
        let segs: Vec<Seg> = t.iter().filter_map(seg).collect();
        assert_eq!(
            segs.iter()
                .filter(|s| s.4 == flags::SYN && s.3 == 53)
                .count(),
            2
        );
        assert_eq!(segs.iter().filter(|s| s.7 > 0).count(), 4);
    }
}
