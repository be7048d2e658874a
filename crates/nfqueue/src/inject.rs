//! Answering a blocked DNS query from user space: the NXDOMAIN the client
//! gets instead of waiting for a timeout.
//!
//! A [`Responder`] takes the query packet exactly as NFQUEUE handed it over
//! (the L3 bytes, [`Packet::payload`]), builds the answer that the resolver
//! would have sent, with the resolver's address as source, and sends it
//! through a raw socket (`IPPROTO_RAW`, header included) opened once at
//! startup. The caller gives the query the `Drop` verdict, before or after;
//! the answer does not depend on it.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use portcullis_nfqueue::{Queue, QueueConfig, Responder, Verdict};
//! # fn is_blocked(_: &[u8]) -> bool { true }
//! let mut q = Queue::open(&QueueConfig::new(7))?;
//! let mut responder = Responder::open()?;
//! responder.set_mark(0x70c)?; // so that the firewall can let our answers pass
//! q.recv_batch(None)?;
//! q.decide_each(|p| {
//!     if is_blocked(p.payload) {
//!         let _ = responder.respond_to(p); // count the error; drop anyway
//!         (Verdict::Drop, None)
//!     } else {
//!         (Verdict::Accept, None)
//!     }
//! });
//! q.flush()?;
//! # Ok(()) }
//! ```
//!
//! # What is sent
//! - **UDP**: one datagram `resolver:53 -> client:port` holding
//!   [`nxdomain_response`](portcullis_wire::dns::nxdomain_response), with
//!   correct IP and UDP checksums. The answer is never longer than the
//!   query, so it fits wherever the query did.
//! - **TCP** (a query segment, ACK set): one segment `resolver -> client`
//!   with `seq` = the query's `ack`, `ack` = the query's `seq` + its length
//!   (+1 if it carried FIN), flags PSH|ACK|FIN, holding the length-prefixed
//!   answer; a TCP timestamp option in the query is mirrored (TSval = its
//!   TSecr, TSecr = its TSval) so that stacks that insist on timestamps
//!   accept the segment. The client reads the answer and then end of file,
//!   and closes: `dig +tcp` reports NXDOMAIN at once. Then one RST
//!   `client -> resolver` with `seq` = the query's `seq` (what the resolver
//!   expects next, since it never saw the query), so that the resolver does
//!   not keep a half-open connection.
//! - **TCP SYN with data** (TCP Fast Open): the connection does not exist
//!   yet, so the client gets RST|ACK instead (its connect fails at once).
//!
//! Both packets leave through the kernel's normal output path: they pass
//! the `OUTPUT` and `POSTROUTING` hooks of the namespace (and, when the
//! client is this host, `INPUT` through loopback). Give them a mark with
//! [`Responder::set_mark`] and let the firewall accept (and not queue)
//! packets with that mark.
//!
//! # Where it works
//! The query may come from this host (`OUTPUT` hook: the answer goes to a
//! local address through loopback), or from another host that is answered
//! by this host (`INPUT`) or routed through it (`FORWARD`): the answer is
//! routed to the client like any other packet. For a link-local IPv6 peer
//! the interface must be known: [`Responder::respond_to`] takes it from the
//! queued packet, [`Responder::respond_on`] from the caller.
//!
//! # Not supported
//! IP fragments (netfilter's defragmentation normally hands over whole
//! packets), a DNS-over-TCP query split over several segments, more than
//! one query in a segment (only the first is answered), and IPv4 options or
//! IPv6 extension headers in the answer (the query's are not copied).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};
use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn,
    SockaddrIn6,
};
use portcullis_wire::dns::{self, DnsError};

use crate::queue::Packet;
use crate::Hook;

/// TTL / hop limit of the answers.
const HOP_LIMIT: u8 = 64;
/// The window the answer segment advertises (the client has nothing more
/// to send but its FIN).
const TCP_WINDOW: u16 = 0xffff;

/// Why a query could not be answered. The query should be dropped anyway.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// `socket(AF_INET[6], SOCK_RAW, IPPROTO_RAW)` failed at startup.
    #[error(
        "cannot open a raw {family} socket to answer blocked DNS queries ({errno}){}",
        if *.errno == Errno::EPERM || *.errno == Errno::EACCES {
            ": it needs CAP_NET_RAW (run as root or grant it, e.g. AmbientCapabilities= in systemd)"
        } else { "" }
    )]
    Open {
        /// `"IPv4"` or `"IPv6"`.
        family: &'static str,
        /// What the kernel said.
        errno: Errno,
    },
    /// Setting `SO_MARK` on the raw sockets failed.
    #[error("cannot set SO_MARK on the raw sockets ({0}): it needs CAP_NET_ADMIN")]
    Mark(Errno),
    /// No raw socket of the query's family (IPv6 was unavailable at startup).
    #[error("no raw {0} socket: IPv6 was unavailable when the responder was opened")]
    NoSocket(&'static str),
    /// The bytes are not a whole IPv4/IPv6 packet.
    #[error("the queued packet is not a whole IP packet: {0}")]
    Malformed(String),
    /// An IP fragment: the DNS message may be elsewhere.
    #[error("the queued packet is an IP fragment")]
    Fragment,
    /// Not UDP or TCP, no payload, or a TCP segment that cannot be answered.
    #[error("not an answerable DNS query: {0}")]
    NotDns(&'static str),
    /// The payload is not a DNS query that can be answered.
    #[error("the DNS query cannot be answered: {0}")]
    Dns(#[from] DnsError),
    /// Building the packet failed (it would exceed 64 KiB).
    #[error("building the answer failed: {0}")]
    Build(String),
    /// `sendto` failed (e.g. `EPERM` when the firewall drops it, `EAGAIN`
    /// when the socket buffer is full: raw sends never block).
    #[error("sending the answer to {dst} failed: {errno}")]
    Send {
        /// Where it was going.
        dst: IpAddr,
        /// What the kernel said.
        errno: Errno,
    },
}

/// The packets that answer one query: one for UDP, up to two for TCP (the
/// answer to the client, a reset to the resolver). Reused between queries.
#[derive(Debug, Default, Clone)]
pub struct Answer {
    packets: [Vec<u8>; 2],
    count: usize,
    dns: Vec<u8>,
}

impl Answer {
    /// The IP packets, in sending order, each starting with its IP header.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.packets[..self.count].iter().map(Vec::as_slice)
    }

    fn clear(&mut self) {
        self.count = 0;
        for p in &mut self.packets {
            p.clear();
        }
    }

    /// The next packet buffer, cleared. At most two are used.
    fn next(&mut self) -> &mut Vec<u8> {
        let i = self.count.min(1);
        self.count = i + 1;
        self.packets[i].clear();
        &mut self.packets[i]
    }
}

/// The addresses and transport header fields of the query.
struct Query<'a> {
    src: IpAddr,
    dst: IpAddr,
    transport: TransportSlice<'a>,
}

fn slice_query(query_l3: &[u8]) -> Result<Query<'_>, InjectError> {
    let sliced =
        SlicedPacket::from_ip(query_l3).map_err(|e| InjectError::Malformed(e.to_string()))?;
    let (src, dst) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => {
            if ip.is_payload_fragmented() {
                return Err(InjectError::Fragment);
            }
            let h = ip.header();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
            )
        }
        Some(NetSlice::Ipv6(ip)) => {
            if ip.is_payload_fragmented() {
                return Err(InjectError::Fragment);
            }
            let h = ip.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
            )
        }
        _ => return Err(InjectError::Malformed("not IPv4 or IPv6".into())),
    };
    // An answer from a group or broadcast address, or to nobody, is bogus.
    let broadcast = IpAddr::V4(Ipv4Addr::BROADCAST);
    if dst.is_multicast() || dst == broadcast || dst.is_unspecified() {
        return Err(InjectError::NotDns(
            "sent to a multicast or broadcast address",
        ));
    }
    if src.is_multicast() || src == broadcast || src.is_unspecified() {
        return Err(InjectError::NotDns(
            "from a multicast or unspecified address",
        ));
    }
    let transport = sliced
        .transport
        .ok_or(InjectError::NotDns("neither UDP nor TCP"))?;
    Ok(Query {
        src,
        dst,
        transport,
    })
}

/// A packet builder for `src -> dst` (both of one family).
fn ip(
    src: IpAddr,
    dst: IpAddr,
) -> Result<etherparse::PacketBuilderStep<etherparse::IpHeaders>, InjectError> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            Ok(PacketBuilder::ipv4(s.octets(), d.octets(), HOP_LIMIT))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            Ok(PacketBuilder::ipv6(s.octets(), d.octets(), HOP_LIMIT))
        }
        _ => Err(InjectError::Malformed("mixed address families".into())),
    }
}

fn build_err(e: impl std::fmt::Display) -> InjectError {
    InjectError::Build(e.to_string())
}

/// Builds into `answer` the packets that answer the DNS query in
/// `query_l3` (an IPv4 or IPv6 packet, IP header first, carrying UDP or
/// TCP) with NXDOMAIN, as described in the [module docs](self). Pure: no
/// I/O; [`Responder`] sends what this builds.
///
/// # Errors
/// [`InjectError::Malformed`], [`InjectError::Fragment`],
/// [`InjectError::NotDns`], [`InjectError::Dns`] for queries that cannot
/// be answered; `answer` then holds no packet.
pub fn build_answer(query_l3: &[u8], answer: &mut Answer) -> Result<(), InjectError> {
    answer.clear();
    let r = build_into(query_l3, answer);
    if r.is_err() {
        answer.clear();
    }
    r
}

fn build_into(query_l3: &[u8], answer: &mut Answer) -> Result<(), InjectError> {
    let q = slice_query(query_l3)?;
    match &q.transport {
        TransportSlice::Udp(udp) => {
            dns::nxdomain_response(udp.payload(), &mut answer.dns)?;
            let dns = std::mem::take(&mut answer.dns);
            let r = ip(q.dst, q.src)?
                .udp(udp.destination_port(), udp.source_port())
                .write(answer.next(), &dns)
                .map_err(build_err);
            answer.dns = dns;
            r
        }
        TransportSlice::Tcp(tcp) => {
            let payload = tcp.payload();
            if payload.is_empty() {
                return Err(InjectError::NotDns("TCP segment without payload"));
            }
            if tcp.rst() {
                return Err(InjectError::NotDns("TCP reset"));
            }
            dns::nxdomain_response_tcp(payload, &mut answer.dns)?;
            // A payload is shorter than 64 KiB: the cast cannot truncate.
            let len = payload.len() as u32;
            let (sport, dport) = (tcp.destination_port(), tcp.source_port());
            if tcp.syn() {
                // TCP Fast Open: no connection yet to answer on. Refuse it;
                // the SYN and its data count as received.
                let syn_len = len + 1 + u32::from(tcp.fin());
                return ip(q.dst, q.src)?
                    .tcp(sport, dport, 0, 0)
                    .rst()
                    .ack(tcp.sequence_number().wrapping_add(syn_len))
                    .write(answer.next(), &[])
                    .map_err(build_err);
            }
            if !tcp.ack() {
                return Err(InjectError::NotDns("TCP segment without ACK"));
            }
            let consumed = len + u32::from(tcp.fin());
            let timestamp = tcp.options_iterator().find_map(|o| match o {
                Ok(TcpOptionElement::Timestamp(val, ecr)) => Some((val, ecr)),
                _ => None,
            });
            let mut step = ip(q.dst, q.src)?
                .tcp(sport, dport, tcp.acknowledgment_number(), TCP_WINDOW)
                .psh()
                .ack(tcp.sequence_number().wrapping_add(consumed))
                .fin();
            if let Some((val, ecr)) = timestamp {
                step = step
                    .options(&[
                        TcpOptionElement::Noop,
                        TcpOptionElement::Noop,
                        TcpOptionElement::Timestamp(ecr, val),
                    ])
                    .map_err(build_err)?;
            }
            let dns = std::mem::take(&mut answer.dns);
            let r = step.write(answer.next(), &dns).map_err(build_err);
            answer.dns = dns;
            r?;
            // Reset the resolver's side, which never saw the query.
            ip(q.src, q.dst)?
                .tcp(
                    tcp.source_port(),
                    tcp.destination_port(),
                    tcp.sequence_number(),
                    0,
                )
                .rst()
                .write(answer.next(), &[])
                .map_err(build_err)
        }
        _ => Err(InjectError::NotDns("neither UDP nor TCP")),
    }
}

/// The destination address in an IP header this module built.
fn destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let b: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 => {
            let b: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

/// Whether an IPv6 destination needs an interface (link-local, or
/// link- or interface-local multicast).
fn needs_scope(a: &Ipv6Addr) -> bool {
    let s = a.segments()[0];
    (s & 0xffc0) == 0xfe80 || (a.is_multicast() && matches!(s & 0x000f, 1 | 2))
}

/// Sends NXDOMAIN answers to blocked DNS queries through raw sockets.
///
/// Open it once at startup, in the network namespace (and with the
/// privileges, CAP_NET_RAW) the answers are sent from; the sockets belong
/// to the namespace they were opened in.
#[derive(Debug)]
pub struct Responder {
    v4: OwnedFd,
    v6: Option<OwnedFd>,
    answer: Answer,
}

impl Responder {
    /// Opens the raw sockets: `socket(AF_INET, SOCK_RAW, IPPROTO_RAW)`,
    /// which always includes the IP header (`IP_HDRINCL`), and
    /// `socket(AF_INET6, SOCK_RAW, IPPROTO_RAW)`, which Linux (since 4.5)
    /// also opens with the header included (`IPV6_HDRINCL`). A host
    /// without IPv6 gets an IPv4-only responder.
    ///
    /// # Errors
    /// [`InjectError::Open`], usually for want of CAP_NET_RAW.
    pub fn open() -> Result<Responder, InjectError> {
        let raw = |family, name| {
            socket::socket(
                family,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::Raw,
            )
            .map_err(|errno| InjectError::Open {
                family: name,
                errno,
            })
        };
        let v4 = raw(AddressFamily::Inet, "IPv4")?;
        let v6 = match raw(AddressFamily::Inet6, "IPv6") {
            Ok(s) => Some(s),
            Err(InjectError::Open {
                errno: Errno::EAFNOSUPPORT,
                ..
            }) => None,
            Err(e) => return Err(e),
        };
        Ok(Responder {
            v4,
            v6,
            answer: Answer::default(),
        })
    }

    /// Whether IPv6 queries can be answered.
    pub fn has_ipv6(&self) -> bool {
        self.v6.is_some()
    }

    /// Marks every packet this responder sends with `mark` (`SO_MARK`), so
    /// that firewall rules can recognise them (accept them, and not queue
    /// the reset sent to the resolver back to user space).
    ///
    /// # Errors
    /// [`InjectError::Mark`]: setting it needs CAP_NET_ADMIN.
    pub fn set_mark(&mut self, mark: u32) -> Result<(), InjectError> {
        socket::setsockopt(&self.v4, sockopt::Mark, &mark).map_err(InjectError::Mark)?;
        if let Some(v6) = &self.v6 {
            socket::setsockopt(v6, sockopt::Mark, &mark).map_err(InjectError::Mark)?;
        }
        Ok(())
    }

    /// Answers the query in a queued packet; a link-local IPv6 peer is
    /// reached through the interface the packet came in on (or, on the
    /// `OUTPUT` and `POSTROUTING` hooks, goes out on).
    ///
    /// # Errors
    /// As [`Responder::respond_on`].
    pub fn respond_to(&mut self, packet: &Packet<'_>) -> Result<(), InjectError> {
        let ifindex = match packet.hook {
            Hook::Output | Hook::Postrouting => packet.outdev,
            _ => packet.indev,
        };
        self.respond_on(packet.payload, ifindex)
    }

    /// Answers the DNS query in `query_l3` (the L3 bytes NFQUEUE handed
    /// over) with NXDOMAIN, as described in the [module docs](self).
    ///
    /// # Errors
    /// See [`InjectError`]; a query that cannot be answered is just
    /// dropped by the caller.
    pub fn respond(&mut self, query_l3: &[u8]) -> Result<(), InjectError> {
        self.respond_on(query_l3, None)
    }

    /// Like [`Responder::respond`]; `ifindex` is the interface of the link
    /// the query travelled, needed only to reach link-local IPv6 peers.
    ///
    /// # Errors
    /// See [`InjectError`]. If the second packet of a TCP answer (the
    /// reset to the resolver) fails, the client has its answer already.
    pub fn respond_on(&mut self, query_l3: &[u8], ifindex: Option<u32>) -> Result<(), InjectError> {
        build_answer(query_l3, &mut self.answer)?;
        for packet in self.answer.packets() {
            let dst = destination(packet).ok_or_else(|| build_err("no destination"))?;
            let flags = MsgFlags::MSG_DONTWAIT;
            let sent = match dst {
                IpAddr::V4(a) => {
                    let to = SockaddrIn::from(SocketAddrV4::new(a, 0));
                    socket::sendto(self.v4.as_raw_fd(), packet, &to, flags)
                }
                IpAddr::V6(a) => {
                    let fd = self.v6.as_ref().ok_or(InjectError::NoSocket("IPv6"))?;
                    let scope = if needs_scope(&a) {
                        ifindex.unwrap_or(0)
                    } else {
                        0
                    };
                    let to = SockaddrIn6::from(SocketAddrV6::new(a, 0, 0, scope));
                    socket::sendto(fd.as_raw_fd(), packet, &to, flags)
                }
            };
            sent.map_err(|errno| InjectError::Send { dst, errno })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    // Test helpers: a failed unwrap is a failed test.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use etherparse::{IpNumber, Ipv4Header, Ipv6Header, TcpHeader};
    use proptest::prelude::*;

    const CLIENT4: [u8; 4] = [198, 18, 7, 2];
    const RESOLVER4: [u8; 4] = [198, 18, 7, 53];
    const CLIENT6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const RESOLVER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x53];

    /// `foo.blocked.test A IN`, RD, with an OPT record (DO clear).
    fn dns_query() -> Vec<u8> {
        let mut m = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
        m.extend_from_slice(b"\x03foo\x07blocked\x04test\x00\x00\x01\x00\x01");
        m.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        m
    }

    fn nxdomain(q: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        dns::nxdomain_response(q, &mut out).unwrap();
        out
    }

    fn udp_query(v6: bool, payload: &[u8]) -> Vec<u8> {
        let b = if v6 {
            PacketBuilder::ipv6(CLIENT6, RESOLVER6, 64)
        } else {
            PacketBuilder::ipv4(CLIENT4, RESOLVER4, 64)
        };
        let mut p = Vec::new();
        b.udp(40000, 53).write(&mut p, payload).unwrap();
        p
    }

    fn udp_to(dst: IpAddr, payload: &[u8]) -> Vec<u8> {
        let b = match dst {
            IpAddr::V4(d) => PacketBuilder::ipv4(CLIENT4, d.octets(), 64),
            IpAddr::V6(d) => PacketBuilder::ipv6(CLIENT6, d.octets(), 64),
        };
        let mut p = Vec::new();
        b.udp(40000, 53).write(&mut p, payload).unwrap();
        p
    }

    fn tcp_query(v6: bool, header: TcpHeader, payload: &[u8]) -> Vec<u8> {
        let b = if v6 {
            PacketBuilder::ipv6(CLIENT6, RESOLVER6, 64)
        } else {
            PacketBuilder::ipv4(CLIENT4, RESOLVER4, 64)
        };
        let mut p = Vec::new();
        b.tcp_header(header).write(&mut p, payload).unwrap();
        p
    }

    fn tcp_header(seq: u32, ack: u32) -> TcpHeader {
        let mut h = TcpHeader::new(40001, 53, seq, 502);
        h.psh = true;
        h.ack = true;
        h.acknowledgment_number = ack;
        h
    }

    fn prefixed(m: &[u8]) -> Vec<u8> {
        let mut t = (m.len() as u16).to_be_bytes().to_vec();
        t.extend_from_slice(m);
        t
    }

    /// Checks the IP header checksum (IPv4) and the transport checksum;
    /// returns the sliced packet.
    fn checked(p: &[u8]) -> SlicedPacket<'_> {
        let s = SlicedPacket::from_ip(p).unwrap();
        let payload = match &s.transport {
            Some(TransportSlice::Udp(u)) => u.payload(),
            Some(TransportSlice::Tcp(t)) => t.payload(),
            other => panic!("transport {other:?}"),
        };
        match &s.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h: Ipv4Header = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum());
                assert_eq!(h.time_to_live, HOP_LIMIT);
                match &s.transport {
                    Some(TransportSlice::Udp(u)) => assert_eq!(
                        u.checksum(),
                        u.to_header().calc_checksum_ipv4(&h, payload).unwrap()
                    ),
                    Some(TransportSlice::Tcp(t)) => assert_eq!(
                        t.checksum(),
                        t.calc_checksum_ipv4(h.source, h.destination).unwrap()
                    ),
                    _ => unreachable!(),
                }
            }
            Some(NetSlice::Ipv6(ip)) => {
                let h: Ipv6Header = ip.header().to_header();
                assert_eq!(h.hop_limit, HOP_LIMIT);
                match &s.transport {
                    Some(TransportSlice::Udp(u)) => assert_eq!(
                        u.checksum(),
                        u.to_header().calc_checksum_ipv6(&h, payload).unwrap()
                    ),
                    Some(TransportSlice::Tcp(t)) => assert_eq!(
                        t.checksum(),
                        t.calc_checksum_ipv6(h.source, h.destination).unwrap()
                    ),
                    _ => unreachable!(),
                }
            }
            other => panic!("net {other:?}"),
        }
        s
    }

    fn addrs(s: &SlicedPacket<'_>) -> (IpAddr, IpAddr) {
        match &s.net {
            Some(NetSlice::Ipv4(ip)) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            Some(NetSlice::Ipv6(ip)) => (
                ip.header().source_addr().into(),
                ip.header().destination_addr().into(),
            ),
            _ => panic!("not IP"),
        }
    }

    fn client(v6: bool) -> IpAddr {
        if v6 {
            Ipv6Addr::from(CLIENT6).into()
        } else {
            Ipv4Addr::from(CLIENT4).into()
        }
    }

    fn resolver(v6: bool) -> IpAddr {
        if v6 {
            Ipv6Addr::from(RESOLVER6).into()
        } else {
            Ipv4Addr::from(RESOLVER4).into()
        }
    }

    #[test]
    fn udp_answer_swaps_addresses_and_ports() {
        for v6 in [false, true] {
            let q = dns_query();
            let mut a = Answer::default();
            build_answer(&udp_query(v6, &q), &mut a).unwrap();
            let packets: Vec<_> = a.packets().collect();
            assert_eq!(packets.len(), 1);
            let s = checked(packets[0]);
            assert_eq!(addrs(&s), (resolver(v6), client(v6)));
            assert_eq!(destination(packets[0]), Some(client(v6)));
            let Some(TransportSlice::Udp(u)) = &s.transport else {
                panic!("not UDP")
            };
            assert_eq!((u.source_port(), u.destination_port()), (53, 40000));
            assert_eq!(u.payload(), &nxdomain(&q)[..]);
            assert_eq!(u.payload()[3] & 0x0f, 3);
        }
    }

    #[test]
    fn tcp_answer_then_reset_to_the_resolver() {
        for v6 in [false, true] {
            let q = prefixed(&dns_query());
            let mut h = tcp_header(1000, 5000);
            h.set_options(&[
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
                TcpOptionElement::Timestamp(111, 222),
            ])
            .unwrap();
            let mut a = Answer::default();
            build_answer(&tcp_query(v6, h, &q), &mut a).unwrap();
            let packets: Vec<_> = a.packets().collect();
            assert_eq!(packets.len(), 2);

            let s = checked(packets[0]);
            assert_eq!(addrs(&s), (resolver(v6), client(v6)));
            let Some(TransportSlice::Tcp(t)) = &s.transport else {
                panic!("not TCP")
            };
            assert_eq!((t.source_port(), t.destination_port()), (53, 40001));
            assert_eq!(t.sequence_number(), 5000);
            assert_eq!(t.acknowledgment_number(), 1000 + q.len() as u32);
            assert!(t.psh() && t.ack() && t.fin() && !t.syn() && !t.rst());
            let ts: Vec<_> = t.options_iterator().collect::<Result<_, _>>().unwrap();
            assert!(
                ts.contains(&TcpOptionElement::Timestamp(222, 111)),
                "{ts:?}"
            );
            assert_eq!(t.payload(), &prefixed(&nxdomain(&dns_query()))[..]);

            let s = checked(packets[1]);
            assert_eq!(addrs(&s), (client(v6), resolver(v6)));
            assert_eq!(destination(packets[1]), Some(resolver(v6)));
            let Some(TransportSlice::Tcp(t)) = &s.transport else {
                panic!("not TCP")
            };
            assert_eq!((t.source_port(), t.destination_port()), (40001, 53));
            assert_eq!(t.sequence_number(), 1000);
            assert!(t.rst() && !t.ack() && !t.fin() && t.payload().is_empty());
        }
    }

    #[test]
    fn tcp_query_with_fin_and_wrapping_sequence_numbers() {
        let q = prefixed(&dns_query());
        let mut h = tcp_header(u32::MAX - 3, 7);
        h.fin = true;
        let mut a = Answer::default();
        build_answer(&tcp_query(false, h, &q), &mut a).unwrap();
        let first = a.packets().next().unwrap();
        let s = checked(first);
        let Some(TransportSlice::Tcp(t)) = &s.transport else {
            panic!("not TCP")
        };
        assert_eq!(
            t.acknowledgment_number(),
            (u32::MAX - 3).wrapping_add(q.len() as u32 + 1)
        );
        assert_eq!(t.options(), &[] as &[u8]);
    }

    #[test]
    fn tcp_fast_open_syn_is_refused() {
        let q = prefixed(&dns_query());
        let mut h = TcpHeader::new(40002, 53, 900, 502);
        h.syn = true;
        let mut a = Answer::default();
        build_answer(&tcp_query(false, h, &q), &mut a).unwrap();
        let packets: Vec<_> = a.packets().collect();
        assert_eq!(packets.len(), 1);
        let s = checked(packets[0]);
        assert_eq!(addrs(&s), (resolver(false), client(false)));
        let Some(TransportSlice::Tcp(t)) = &s.transport else {
            panic!("not TCP")
        };
        assert!(t.rst() && t.ack());
        assert_eq!(t.acknowledgment_number(), 900 + 1 + q.len() as u32);
    }

    type Expect = fn(&InjectError) -> bool;

    #[test]
    fn what_cannot_be_answered() {
        let mut a = Answer::default();
        build_answer(&udp_query(false, &dns_query()), &mut a).unwrap();
        let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
            ("empty", vec![], |e| matches!(e, InjectError::Malformed(_))),
            (
                "truncated",
                udp_query(false, &dns_query())[..30].to_vec(),
                |e| matches!(e, InjectError::Malformed(_)),
            ),
            (
                "response",
                {
                    let mut r = dns_query();
                    r[2] |= 0x80;
                    udp_query(false, &r)
                },
                |e| *e == InjectError::Dns(DnsError::NotQuery),
            ),
            ("bare ack", tcp_query(true, tcp_header(1, 2), &[]), |e| {
                matches!(e, InjectError::NotDns(_))
            }),
            (
                "no ack",
                {
                    let mut h = tcp_header(1, 2);
                    h.ack = false;
                    tcp_query(false, h, &prefixed(&dns_query()))
                },
                |e| matches!(e, InjectError::NotDns(_)),
            ),
            (
                "split query",
                tcp_query(false, tcp_header(1, 2), &prefixed(&dns_query())[..12]),
                |e| *e == InjectError::Dns(DnsError::Truncated),
            ),
            ("to broadcast", udp_to([255; 4].into(), &dns_query()), |e| {
                matches!(e, InjectError::NotDns(_))
            }),
            (
                "to multicast",
                udp_to("ff02::fb".parse().unwrap(), &dns_query()),
                |e| matches!(e, InjectError::NotDns(_)),
            ),
            (
                "icmp",
                {
                    let mut p = Vec::new();
                    PacketBuilder::ipv4(CLIENT4, RESOLVER4, 64)
                        .icmpv4_echo_request(1, 1)
                        .write(&mut p, &[])
                        .unwrap();
                    p
                },
                |e| matches!(e, InjectError::NotDns(_)),
            ),
            (
                "fragment",
                {
                    let mut p = udp_query(false, &dns_query());
                    p[6] = 0x20; // more fragments
                    p[10..12].copy_from_slice(&[0, 0]);
                    let h = Ipv4Header::from_slice(&p).unwrap().0;
                    p[10..12].copy_from_slice(&h.calc_header_checksum().to_be_bytes());
                    p
                },
                |e| *e == InjectError::Fragment,
            ),
        ];
        for (name, packet, want) in cases {
            let e = build_answer(&packet, &mut a).unwrap_err();
            assert!(want(&e), "{name}: {e:?}");
            assert_eq!(a.packets().count(), 0, "{name}");
        }
    }

    #[test]
    fn unknown_transport_is_not_dns() {
        let mut p = Vec::new();
        PacketBuilder::ipv6(CLIENT6, RESOLVER6, 64)
            .write(&mut p, IpNumber(200), &[1, 2, 3])
            .unwrap();
        let mut a = Answer::default();
        assert!(matches!(
            build_answer(&p, &mut a),
            Err(InjectError::NotDns(_))
        ));
    }

    #[test]
    fn link_local_needs_a_scope() {
        assert!(needs_scope(&"fe80::1".parse().unwrap()));
        assert!(needs_scope(&"ff02::1".parse().unwrap()));
        assert!(!needs_scope(&"2001:2::1".parse().unwrap()));
        assert!(!needs_scope(&"ff0e::1".parse().unwrap()));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Arbitrary bytes, and valid packets with arbitrary payloads or
        /// one byte changed, never panic; an answer is a valid packet.
        #[test]
        fn never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            v6 in any::<bool>(), tcp in any::<bool>(),
            flip in any::<(usize, u8)>(),
        ) {
            let mut a = Answer::default();
            let _ = build_answer(&bytes, &mut a);
            let mut p = if tcp {
                tcp_query(v6, tcp_header(1, 2), &prefixed(&dns_query()))
            } else {
                udp_query(v6, &dns_query())
            };
            let at = flip.0 % p.len();
            p[at] ^= flip.1;
            if build_answer(&p, &mut a).is_ok() {
                prop_assert!(a.packets().count() >= 1);
                for packet in a.packets() {
                    prop_assert!(SlicedPacket::from_ip(packet).is_ok());
                    prop_assert!(destination(packet).is_some());
                }
            }
            p.extend_from_slice(&bytes);
            let _ = build_answer(&p, &mut a);
        }
    }
}
