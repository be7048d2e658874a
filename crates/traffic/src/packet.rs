//! Single-packet builders.
//!
//! Every builder returns a complete Ethernet II frame (link type 1) whose IP
//! and transport lengths and checksums are filled in by `etherparse`, so that
//! tcpdump and Wireshark accept it. The IP family of the frame follows the
//! addresses given; mixing an IPv4 source with an IPv6 destination is a bug
//! in the caller and panics.
//!
//! MAC addresses are fake but stable: each IP address maps to a locally
//! administered unicast MAC (`02:00:` followed by the last four bytes of the
//! address), so the two directions of a flow use mirrored MACs.

use std::net::{IpAddr, SocketAddr};

use etherparse::{
    icmpv4, icmpv6, EtherType, Icmpv4Type, Icmpv6Type, IpFragOffset, IpHeaders, IpNumber,
    Ipv4Header, Ipv6FragmentHeader, Ipv6Header, PacketBuilder, TcpHeader,
};

/// TCP flag bits as they appear in byte 13 of the TCP header.
pub mod flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field significant.
    pub const URG: u8 = 0x20;
    /// ECN echo.
    pub const ECE: u8 = 0x40;
    /// Congestion window reduced.
    pub const CWR: u8 = 0x80;
}

/// Largest payload any builder accepts, in bytes. Bigger payloads could not
/// fit in one IP datagram together with the headers.
pub const MAX_PAYLOAD: usize = 65_000;

/// Length of the Ethernet II header the builders emit.
pub const ETHERNET_HEADER_LEN: usize = 14;

/// How a SYN looks: what sent it shapes its window and options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SynStyle {
    /// A raw-socket scanner such as `nmap -sS`: window 1024, only an MSS
    /// option (4 option bytes), no DF bit, a TTL in the 40s and a random IP ID.
    Nmap,
    /// The Linux kernel's `connect()`: window 64240 and the options MSS,
    /// SACK_PERM, TS, NOP, WSCALE (20 option bytes), DF set, TTL 64.
    Os,
}

/// Header fields of a TCP segment other than addresses and options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpFields {
    /// Flag bits, see [`flags`].
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (sent as given, even without the ACK flag).
    pub ack: u32,
    /// Window field as it appears on the wire (unscaled).
    pub window: u16,
}

/// IP header knobs that differ between a kernel stack and a raw scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IpKnobs {
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// IPv4 "don't fragment" bit; ignored for IPv6.
    pub df: bool,
    /// IPv4 identification; ignored for IPv6.
    pub id: u16,
}

impl IpKnobs {
    /// What the Linux stack sends on a connected socket.
    pub(crate) const fn os() -> Self {
        IpKnobs {
            ttl: 64,
            df: true,
            id: 0,
        }
    }

    /// What nmap's raw-socket probes look like: no DF, lower TTL, random ID.
    pub(crate) fn nmap(seed: u64) -> Self {
        let h = mix(seed);
        IpKnobs {
            ttl: 37 + (h % 23) as u8,
            df: false,
            id: (h >> 16) as u16,
        }
    }

    /// ICMP errors and echo messages from the Linux stack (no DF).
    pub(crate) fn icmp(seed: u64) -> Self {
        IpKnobs {
            ttl: 64,
            df: false,
            id: mix(seed) as u16,
        }
    }
}

/// Transport layer of a frame to build.
pub(crate) enum L4 {
    Tcp(TcpHeader),
    Udp { sport: u16, dport: u16 },
    Icmpv4(Icmpv4Type),
    Icmpv6(Icmpv6Type),
}

/// The fake MAC address used for `ip`.
pub fn mac_for(ip: IpAddr) -> [u8; 6] {
    let tail = match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x02, 0x00, tail[0], tail[1], tail[2], tail[3]]
}

/// Builds one Ethernet II frame.
///
/// # Panics
/// If `src` and `dst` are of different families, if `payload` is longer than
/// [`MAX_PAYLOAD`], or if the transport does not match the family (ICMPv4
/// over IPv6 or the reverse; only crate-internal callers choose the
/// transport).
pub(crate) fn build(src: IpAddr, dst: IpAddr, knobs: IpKnobs, l4: L4, payload: &[u8]) -> Vec<u8> {
    assert!(
        payload.len() <= MAX_PAYLOAD,
        "payload of {} bytes is larger than MAX_PAYLOAD",
        payload.len()
    );
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => IpHeaders::Ipv4(
            Ipv4Header {
                identification: knobs.id,
                dont_fragment: knobs.df,
                time_to_live: knobs.ttl,
                source: s.octets(),
                destination: d.octets(),
                ..Default::default()
            },
            Default::default(),
        ),
        (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
            Ipv6Header {
                hop_limit: knobs.ttl,
                source: s.octets(),
                destination: d.octets(),
                ..Default::default()
            },
            Default::default(),
        ),
        _ => panic!("mixed address families: {src} -> {dst}"),
    };
    let step = PacketBuilder::ethernet2(mac_for(src), mac_for(dst)).ip(ip);
    let mut out = Vec::with_capacity(ETHERNET_HEADER_LEN + 40 + 60 + payload.len());
    let res = match l4 {
        L4::Tcp(h) => step.tcp_header(h).write(&mut out, payload),
        L4::Udp { sport, dport } => step.udp(sport, dport).write(&mut out, payload),
        L4::Icmpv4(t) => step.icmpv4(t).write(&mut out, payload),
        L4::Icmpv6(t) => step.icmpv6(t).write(&mut out, payload),
    };
    match res {
        Ok(()) => out,
        // Writing to a Vec cannot fail on I/O, the payload length was checked
        // above and the families were matched, so only an ICMP/family
        // mismatch from a crate-internal caller can end here.
        Err(e) => unreachable!("packet build failed: {e}"),
    }
}

/// Builds a TCP header with the given fields and raw option bytes.
///
/// # Panics
/// If `options` is longer than 40 bytes.
pub(crate) fn tcp_header(sport: u16, dport: u16, f: TcpFields, options: &[u8]) -> TcpHeader {
    let mut h = TcpHeader::new(sport, dport, f.seq, f.window);
    h.acknowledgment_number = f.ack;
    h.fin = f.flags & flags::FIN != 0;
    h.syn = f.flags & flags::SYN != 0;
    h.rst = f.flags & flags::RST != 0;
    h.psh = f.flags & flags::PSH != 0;
    h.ack = f.flags & flags::ACK != 0;
    h.urg = f.flags & flags::URG != 0;
    h.ece = f.flags & flags::ECE != 0;
    h.cwr = f.flags & flags::CWR != 0;
    if let Err(e) = h.set_options_raw(options) {
        panic!("TCP options of {} bytes do not fit: {e}", options.len());
    }
    h
}

/// One TCP segment with full control over the header.
///
/// `options` are raw option bytes (at most 40; padded with zeros to a
/// multiple of four). IP knobs are the Linux stack's (TTL 64, DF).
///
/// # Panics
/// If the families differ, `options` is longer than 40 bytes or `payload`
/// is longer than [`MAX_PAYLOAD`].
pub fn tcp_segment(
    src: SocketAddr,
    dst: SocketAddr,
    fields: TcpFields,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    tcp_segment_with(src, dst, IpKnobs::os(), fields, options, payload)
}

pub(crate) fn tcp_segment_with(
    src: SocketAddr,
    dst: SocketAddr,
    knobs: IpKnobs,
    fields: TcpFields,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let h = tcp_header(src.port(), dst.port(), fields, options);
    build(src.ip(), dst.ip(), knobs, L4::Tcp(h), payload)
}

/// A TCP segment with the given flags (see [`flags`]) and no options.
///
/// The sequence number is a stable function of the address pair (so repeated
/// calls for one flow agree); with `ACK` set, the acknowledgment number is
/// the reverse direction's initial sequence number plus one. Window 64240.
///
/// # Panics
/// If the families differ or `payload` is longer than [`MAX_PAYLOAD`].
pub fn tcp(src: SocketAddr, dst: SocketAddr, flags: u8, payload: &[u8]) -> Vec<u8> {
    let ack = if flags & self::flags::ACK != 0 {
        isn(dst, src).wrapping_add(1)
    } else {
        0
    };
    let seq = if flags & self::flags::SYN != 0 {
        isn(src, dst)
    } else {
        isn(src, dst).wrapping_add(1)
    };
    let f = TcpFields {
        flags,
        seq,
        ack,
        window: 64240,
    };
    tcp_segment(src, dst, f, &[], payload)
}

/// A SYN as `style` would send it, with sequence number [`isn`]`(src, dst)`.
///
/// # Panics
/// If the families differ.
pub fn tcp_syn(src: SocketAddr, dst: SocketAddr, style: SynStyle) -> Vec<u8> {
    syn_with(src, dst, style, isn(src, dst), tsval_for(src, 0))
}

/// A SYN with an explicit sequence number and TS value (Os style only).
pub(crate) fn syn_with(
    src: SocketAddr,
    dst: SocketAddr,
    style: SynStyle,
    seq: u32,
    tsval: u32,
) -> Vec<u8> {
    match style {
        SynStyle::Nmap => {
            let f = TcpFields {
                flags: flags::SYN,
                seq,
                ack: 0,
                window: 1024,
            };
            let knobs = IpKnobs::nmap(flow_hash(src, dst));
            tcp_segment_with(src, dst, knobs, f, &MSS_ONLY, &[])
        }
        SynStyle::Os => {
            let f = TcpFields {
                flags: flags::SYN,
                seq,
                ack: 0,
                window: 64240,
            };
            tcp_segment_with(src, dst, IpKnobs::os(), f, &linux_options(tsval, 0), &[])
        }
    }
}

/// MSS 1460 and nothing else: what nmap sends and what Linux answers it with.
pub(crate) const MSS_ONLY: [u8; 4] = [2, 4, 0x05, 0xb4];

/// Linux's SYN / SYN-ACK options: MSS 1460, SACK_PERM, TS, NOP, WSCALE 7.
pub(crate) fn linux_options(tsval: u32, tsecr: u32) -> [u8; 20] {
    let v = tsval.to_be_bytes();
    let e = tsecr.to_be_bytes();
    [
        2, 4, 0x05, 0xb4, // MSS 1460
        4, 2, // SACK permitted
        8, 10, v[0], v[1], v[2], v[3], e[0], e[1], e[2], e[3], // timestamps
        1,    // NOP
        3, 3, 7, // window scale 7
    ]
}

/// A UDP datagram.
///
/// # Panics
/// If the families differ or `payload` is longer than [`MAX_PAYLOAD`].
pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    build(
        src.ip(),
        dst.ip(),
        IpKnobs::os(),
        L4::Udp {
            sport: src.port(),
            dport: dst.port(),
        },
        payload,
    )
}

/// The 56 bytes Linux `ping` puts after the echo header (a timeval and a
/// counting pattern).
pub(crate) fn ping_payload() -> [u8; 56] {
    let mut p = [0u8; 56];
    for (i, b) in p.iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// An ICMP (IPv4) or ICMPv6 echo request with Linux `ping`'s 56-byte payload.
///
/// # Panics
/// If the families differ.
pub fn icmp_echo(src: IpAddr, dst: IpAddr, id: u16, seq: u16) -> Vec<u8> {
    echo(src, dst, id, seq, false)
}

/// The echo reply matching [`icmp_echo`] (`src` is the replying host).
///
/// # Panics
/// If the families differ.
pub fn icmp_echo_reply(src: IpAddr, dst: IpAddr, id: u16, seq: u16) -> Vec<u8> {
    echo(src, dst, id, seq, true)
}

fn echo(src: IpAddr, dst: IpAddr, id: u16, seq: u16, reply: bool) -> Vec<u8> {
    let hdr = etherparse::IcmpEchoHeader { id, seq };
    let l4 = match (src, reply) {
        (IpAddr::V4(_), false) => L4::Icmpv4(Icmpv4Type::EchoRequest(hdr)),
        (IpAddr::V4(_), true) => L4::Icmpv4(Icmpv4Type::EchoReply(hdr)),
        (IpAddr::V6(_), false) => L4::Icmpv6(Icmpv6Type::EchoRequest(hdr)),
        (IpAddr::V6(_), true) => L4::Icmpv6(Icmpv6Type::EchoReply(hdr)),
    };
    let knobs = IpKnobs {
        df: true,
        ..IpKnobs::icmp(u64::from(id) << 16 | u64::from(seq))
    };
    build(src, dst, knobs, l4, &ping_payload())
}

/// An ICMP "port unreachable" from `src` about the packet in `offending`
/// (an Ethernet frame), quoting as much of its IP packet as Linux does
/// (576 bytes total for IPv4, 1280 for IPv6).
///
/// # Panics
/// If the families differ.
pub fn icmp_port_unreachable(src: IpAddr, dst: IpAddr, offending: &[u8]) -> Vec<u8> {
    let quoted = raw_l3(offending);
    let (l4, room) = match src {
        IpAddr::V4(_) => (
            L4::Icmpv4(Icmpv4Type::DestinationUnreachable(
                icmpv4::DestUnreachableHeader::Port,
            )),
            576 - 20 - 8,
        ),
        IpAddr::V6(_) => (
            L4::Icmpv6(Icmpv6Type::DestinationUnreachable(
                icmpv6::DestUnreachableCode::Port,
            )),
            1280 - 40 - 8,
        ),
    };
    let quoted = &quoted[..quoted.len().min(room)];
    build(src, dst, IpKnobs::icmp(fnv(quoted)), l4, quoted)
}

/// Length of the link header (Ethernet II plus any 802.1Q / 802.1ad tags)
/// and the EtherType it ends with, or `None` if `frame` is too short.
fn link_header(frame: &[u8]) -> Option<(usize, u16)> {
    let mut at = 12;
    // Bounded: at most two tags (QinQ) are walked.
    for _ in 0..3 {
        let ty = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        match EtherType(ty) {
            EtherType::VLAN_TAGGED_FRAME
            | EtherType::PROVIDER_BRIDGING
            | EtherType::VLAN_DOUBLE_TAGGED_FRAME => at += 4,
            _ => return Some((at + 2, ty)),
        }
    }
    None
}

/// The IP packet inside an Ethernet frame, i.e. the frame without its
/// Ethernet header and any VLAN tags: what NFQUEUE hands to user space.
/// A frame too short to hold a link header gives an empty slice.
pub fn raw_l3(frame: &[u8]) -> &[u8] {
    match link_header(frame) {
        Some((len, _)) => &frame[len..],
        None => &[],
    }
}

/// `frame` with an 802.1Q tag (priority 0) for `vlan_id` inserted after the
/// MAC addresses. Only the low 12 bits of `vlan_id` are used.
///
/// # Panics
/// If `frame` is shorter than the 12 bytes of MAC addresses.
pub fn with_vlan(frame: &[u8], vlan_id: u16) -> Vec<u8> {
    assert!(frame.len() >= 12, "not an Ethernet frame");
    let mut out = Vec::with_capacity(frame.len() + 4);
    out.extend_from_slice(&frame[..12]);
    out.extend_from_slice(&0x8100u16.to_be_bytes());
    out.extend_from_slice(&(vlan_id & 0x0fff).to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// Splits an Ethernet + IPv4 frame into IPv4 fragments carrying at most
/// `fragment_payload_bytes` of IP payload each (rounded down to a multiple
/// of 8, at least 8).
///
/// The link header (including VLAN tags) is copied to every fragment. DF is
/// cleared and a non-zero identification derived from the frame is used if
/// the original had none. IPv4 options are kept in the first fragment only.
/// A frame that is not IPv4, is already a fragment, or whose payload already
/// fits is returned unchanged as the only element.
pub fn fragment_ipv4(frame: &[u8], fragment_payload_bytes: usize) -> Vec<Vec<u8>> {
    let Some((l2, ty)) = link_header(frame) else {
        return vec![frame.to_vec()];
    };
    if EtherType(ty) != EtherType::IPV4 {
        return vec![frame.to_vec()];
    }
    let Ok((hdr, rest)) = Ipv4Header::from_slice(&frame[l2..]) else {
        return vec![frame.to_vec()];
    };
    let payload_len = usize::from(hdr.total_len).saturating_sub(hdr.header_len());
    let payload = &rest[..payload_len.min(rest.len())];
    let step = (fragment_payload_bytes / 8).max(1) * 8;
    if hdr.is_fragmenting_payload() || payload.len() <= step {
        return vec![frame.to_vec()];
    }
    let id = if hdr.identification != 0 {
        hdr.identification
    } else {
        (fnv(frame) as u16).max(1)
    };
    let mut out = Vec::new();
    for (i, chunk) in payload.chunks(step).enumerate() {
        let offset = i * step;
        let mut h = hdr.clone();
        if i > 0 {
            h.options = Default::default();
        }
        h.identification = id;
        h.dont_fragment = false;
        h.more_fragments = offset + chunk.len() < payload.len();
        // offset / 8 < 65_536 / 8 fits the 13-bit field.
        h.fragment_offset =
            IpFragOffset::try_new((offset / 8) as u16).unwrap_or(IpFragOffset::ZERO);
        h.total_len = (h.header_len() + chunk.len()) as u16;
        h.header_checksum = h.calc_header_checksum();
        let mut f = Vec::with_capacity(l2 + h.header_len() + chunk.len());
        f.extend_from_slice(&frame[..l2]);
        f.extend_from_slice(&h.to_bytes());
        f.extend_from_slice(chunk);
        out.push(f);
    }
    out
}

/// Splits an Ethernet + IPv6 frame into fragments using the Fragment
/// extension header, each carrying at most `fragment_payload_bytes` of the
/// fragmentable part (rounded down to a multiple of 8, at least 8).
///
/// Everything after the fixed IPv6 header is treated as fragmentable (the
/// builders here emit no extension headers). A frame that is not IPv6, already
/// carries a Fragment header, or whose payload already fits is returned
/// unchanged as the only element.
pub fn fragment_ipv6(frame: &[u8], fragment_payload_bytes: usize) -> Vec<Vec<u8>> {
    let Some((l2, ty)) = link_header(frame) else {
        return vec![frame.to_vec()];
    };
    if EtherType(ty) != EtherType::IPV6 {
        return vec![frame.to_vec()];
    }
    let Ok((hdr, rest)) = Ipv6Header::from_slice(&frame[l2..]) else {
        return vec![frame.to_vec()];
    };
    let payload = &rest[..usize::from(hdr.payload_length).min(rest.len())];
    let step = (fragment_payload_bytes / 8).max(1) * 8;
    if hdr.next_header == IpNumber::IPV6_FRAGMENTATION_HEADER || payload.len() <= step {
        return vec![frame.to_vec()];
    }
    let id = (fnv(frame) as u32).max(1);
    let mut out = Vec::new();
    for (i, chunk) in payload.chunks(step).enumerate() {
        let offset = i * step;
        let more = offset + chunk.len() < payload.len();
        // offset / 8 < 65_536 / 8 fits the 13-bit field.
        let off = IpFragOffset::try_new((offset / 8) as u16).unwrap_or(IpFragOffset::ZERO);
        let fh = Ipv6FragmentHeader::new(hdr.next_header, off, more, id);
        let mut h = hdr.clone();
        h.next_header = IpNumber::IPV6_FRAGMENTATION_HEADER;
        h.payload_length = (Ipv6FragmentHeader::LEN + chunk.len()) as u16;
        let mut f =
            Vec::with_capacity(l2 + Ipv6Header::LEN + Ipv6FragmentHeader::LEN + chunk.len());
        f.extend_from_slice(&frame[..l2]);
        f.extend_from_slice(&h.to_bytes());
        f.extend_from_slice(&fh.to_bytes());
        f.extend_from_slice(chunk);
        out.push(f);
    }
    out
}

/// The initial sequence number this crate uses for the direction
/// `src -> dst`: a stable hash, so both ends of a synthetic flow agree.
pub fn isn(src: SocketAddr, dst: SocketAddr) -> u32 {
    (mix(flow_hash(src, dst) ^ 0x5eed_0f15) >> 16) as u32
}

/// A TCP timestamp value for `host` at `ts_micros` (a 1 ms clock with a
/// per-host offset, like Linux).
pub(crate) fn tsval_for(host: SocketAddr, ts_micros: u64) -> u32 {
    let offset = mix(fnv(host.ip().to_string().as_bytes())) as u32;
    offset.wrapping_add((ts_micros / 1000) as u32)
}

/// A hash of a directed address pair.
pub(crate) fn flow_hash(src: SocketAddr, dst: SocketAddr) -> u64 {
    let mut b = Vec::with_capacity(36);
    push_addr(&mut b, src);
    push_addr(&mut b, dst);
    fnv(&b)
}

fn push_addr(b: &mut Vec<u8>, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(v) => b.extend_from_slice(&v.octets()),
        IpAddr::V6(v) => b.extend_from_slice(&v.octets()),
    }
    b.extend_from_slice(&a.port().to_be_bytes());
}

/// FNV-1a, 64 bit.
pub(crate) fn fnv(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: a good bijective scrambler.
pub(crate) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn tcp_of(frame: &[u8]) -> etherparse::TcpHeaderSlice<'_> {
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        match p.transport {
            Some(TransportSlice::Tcp(t)) => {
                etherparse::TcpHeaderSlice::from_slice(t.header_slice()).unwrap()
            }
            other => panic!("not TCP: {other:?}"),
        }
    }

    #[test]
    fn tcp_v4_addresses_ports_flags() {
        let f = tcp(
            sa("198.18.0.2:40000"),
            sa("198.18.0.1:80"),
            flags::PSH | flags::ACK,
            b"hello",
        );
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not IPv4")
        };
        assert_eq!(ip.header().source_addr().to_string(), "198.18.0.2");
        assert_eq!(ip.header().destination_addr().to_string(), "198.18.0.1");
        let t = tcp_of(&f);
        assert_eq!((t.source_port(), t.destination_port()), (40000, 80));
        assert!(t.psh() && t.ack() && !t.syn() && !t.fin() && !t.rst());
        assert_eq!(
            t.acknowledgment_number(),
            isn(sa("198.18.0.1:80"), sa("198.18.0.2:40000")) + 1
        );
        let Some(TransportSlice::Tcp(ts)) = p.transport else {
            panic!()
        };
        assert_eq!(ts.payload(), b"hello");
        // Checksums verify.
        let hdr = ts.to_header();
        assert_eq!(
            hdr.calc_checksum_ipv4(&ip.header().to_header(), b"hello")
                .unwrap(),
            hdr.checksum
        );
        assert_eq!(
            ip.header().to_header().calc_header_checksum(),
            ip.header().header_checksum()
        );
    }

    #[test]
    fn tcp_v6() {
        let f = tcp(
            sa("[2001:2::2]:40000"),
            sa("[2001:2::1]:22"),
            flags::FIN,
            &[],
        );
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &p.net else {
            panic!("not IPv6")
        };
        assert_eq!(ip.header().source_addr().to_string(), "2001:2::2");
        let t = tcp_of(&f);
        assert!(t.fin() && !t.ack());
        assert_eq!(t.destination_port(), 22);
        let Some(TransportSlice::Tcp(ts)) = p.transport else {
            panic!()
        };
        let hdr = ts.to_header();
        assert_eq!(
            hdr.calc_checksum_ipv6(&ip.header().to_header(), &[])
                .unwrap(),
            hdr.checksum
        );
    }

    #[test]
    fn syn_styles() {
        let s = sa("198.18.0.66:51000");
        let d = sa("198.18.0.1:443");
        let nmap = tcp_of(&tcp_syn(s, d, SynStyle::Nmap)).to_header();
        assert!(nmap.syn && !nmap.ack);
        assert_eq!(nmap.window_size, 1024);
        assert_eq!(nmap.options.len(), 4);
        assert_eq!(nmap.options.as_slice(), &MSS_ONLY);
        let os = tcp_of(&tcp_syn(s, d, SynStyle::Os)).to_header();
        assert_eq!(os.window_size, 64240);
        assert_eq!(os.options.len(), 20);
        assert_eq!(&os.options.as_slice()[..6], &[2, 4, 5, 0xb4, 4, 2]);
        assert_eq!(os.sequence_number, isn(s, d));
        // v6 too.
        let v6 = tcp_syn(
            sa("[2001:2::66]:51000"),
            sa("[2001:2::1]:443"),
            SynStyle::Nmap,
        );
        assert_eq!(tcp_of(&v6).to_header().options.len(), 4);
    }

    #[test]
    fn nmap_syn_has_no_df() {
        let f = tcp_syn(
            sa("198.18.0.66:51000"),
            sa("198.18.0.1:443"),
            SynStyle::Nmap,
        );
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!()
        };
        assert!(!ip.header().dont_fragment());
        assert!(ip.header().ttl() < 64);
    }

    #[test]
    fn udp_and_icmp() {
        let f = udp(sa("198.18.0.2:5000"), sa("198.18.0.1:53"), b"xyz");
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(TransportSlice::Udp(u)) = p.transport else {
            panic!()
        };
        assert_eq!((u.source_port(), u.destination_port()), (5000, 53));
        assert_eq!(u.payload(), b"xyz");
        assert_eq!(u.length(), 11);

        for (s, d) in [("198.18.0.2", "198.18.0.1"), ("2001:2::2", "2001:2::1")] {
            let f = icmp_echo(s.parse().unwrap(), d.parse().unwrap(), 7, 3);
            let p = SlicedPacket::from_ethernet(&f).unwrap();
            let echo = match p.transport {
                Some(TransportSlice::Icmpv4(i)) => match i.icmp_type() {
                    Icmpv4Type::EchoRequest(e) => e,
                    t => panic!("{t:?}"),
                },
                Some(TransportSlice::Icmpv6(i)) => match i.icmp_type() {
                    Icmpv6Type::EchoRequest(e) => e,
                    t => panic!("{t:?}"),
                },
                t => panic!("{t:?}"),
            };
            assert_eq!((echo.id, echo.seq), (7, 3));
        }
    }

    #[test]
    fn port_unreachable_quotes_probe() {
        let probe = udp(sa("198.18.0.66:40000"), sa("198.18.0.1:161"), &[]);
        let f = icmp_port_unreachable(
            "198.18.0.1".parse().unwrap(),
            "198.18.0.66".parse().unwrap(),
            &probe,
        );
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(TransportSlice::Icmpv4(i)) = p.transport else {
            panic!()
        };
        assert_eq!(
            i.icmp_type(),
            Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port)
        );
        assert_eq!(i.payload(), raw_l3(&probe));
    }

    #[test]
    fn vlan_tag_present_and_raw_l3_skips_it() {
        let f = udp(sa("198.18.0.2:5000"), sa("198.18.0.1:53"), b"q");
        let v = with_vlan(&f, 42);
        assert_eq!(v.len(), f.len() + 4);
        let p = SlicedPacket::from_ethernet(&v).unwrap();
        let ids = p.vlan_ids();
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].value(), 42);
        assert!(matches!(p.transport, Some(TransportSlice::Udp(_))));
        assert_eq!(raw_l3(&v), raw_l3(&f));
        assert_eq!(raw_l3(&f), &f[14..]);
        assert_eq!(raw_l3(&[0u8; 5]), &[] as &[u8]);
    }

    fn reassemble_v4(frags: &[Vec<u8>]) -> Vec<u8> {
        let mut data = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            let (h, rest) = Ipv4Header::from_slice(&f[14..]).unwrap();
            assert_eq!(h.calc_header_checksum(), h.header_checksum);
            assert_eq!(usize::from(h.total_len), f.len() - 14);
            assert_eq!(usize::from(h.fragment_offset.byte_offset()), data.len());
            assert_eq!(h.more_fragments, i + 1 < frags.len());
            assert!(!h.dont_fragment);
            assert_ne!(h.identification, 0);
            if i + 1 < frags.len() {
                assert_eq!(rest.len() % 8, 0);
            }
            data.extend_from_slice(rest);
        }
        data
    }

    #[test]
    fn ipv4_fragments_reassemble() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let f = udp(sa("198.18.0.2:5000"), sa("198.18.0.1:9999"), &payload);
        let frags = fragment_ipv4(&f, 1001);
        assert_eq!(frags.len(), 4); // 3008 bytes in 1000-byte pieces
        let orig = raw_l3(&f);
        assert_eq!(reassemble_v4(&frags), orig[20..]);
        // The first fragment still parses as UDP with the original header.
        let p = SlicedPacket::from_ethernet(&frags[0]).unwrap();
        assert!(p.is_ip_payload_fragmented());
        // Small frames are returned unchanged.
        assert_eq!(fragment_ipv4(&f, 8000), vec![f.clone()]);
        // IPv6 is not touched by the IPv4 splitter.
        let v6 = udp(sa("[2001:2::2]:5000"), sa("[2001:2::1]:9"), &payload);
        assert_eq!(fragment_ipv4(&v6, 512), vec![v6.clone()]);
        // VLAN-tagged frames keep their tag.
        let tagged = fragment_ipv4(&with_vlan(&f, 7), 1000);
        assert_eq!(tagged.len(), 4);
        assert!(tagged.iter().all(|t| t[12..14] == [0x81, 0x00]));
    }

    #[test]
    fn ipv6_fragments_reassemble() {
        let payload: Vec<u8> = (0..2500u32).map(|i| (i * 13) as u8).collect();
        let f = udp(sa("[2001:2::2]:5000"), sa("[2001:2::1]:9999"), &payload);
        let frags = fragment_ipv6(&f, 1200);
        assert_eq!(frags.len(), 3);
        let mut data = Vec::new();
        let mut ids = Vec::new();
        for (i, fr) in frags.iter().enumerate() {
            let (h, rest) = Ipv6Header::from_slice(&fr[14..]).unwrap();
            assert_eq!(h.next_header, IpNumber::IPV6_FRAGMENTATION_HEADER);
            assert_eq!(usize::from(h.payload_length), rest.len());
            let (fh, chunk) = Ipv6FragmentHeader::from_slice(rest).unwrap();
            assert_eq!(fh.next_header, IpNumber::UDP);
            assert_eq!(usize::from(fh.fragment_offset.byte_offset()), data.len());
            assert_eq!(fh.more_fragments, i + 1 < frags.len());
            ids.push(fh.identification);
            data.extend_from_slice(chunk);
        }
        assert!(ids.iter().all(|&id| id == ids[0]));
        assert_eq!(data, raw_l3(&f)[40..]);
        // Reassembles through etherparse's defragmenter as well.
        let mut pool = etherparse::defrag::IpDefragPool::<(), ()>::new();
        let mut whole = None;
        for fr in &frags {
            let p = SlicedPacket::from_ethernet(fr).unwrap();
            if let Some(done) = pool.process_sliced_packet(&p, (), ()).unwrap() {
                whole = Some(done.payload.clone());
            }
        }
        assert_eq!(whole.unwrap(), raw_l3(&f)[40..]);
    }

    #[test]
    fn isn_is_direction_specific_and_stable() {
        let a = sa("198.18.0.2:40000");
        let b = sa("198.18.0.1:80");
        assert_eq!(isn(a, b), isn(a, b));
        assert_ne!(isn(a, b), isn(b, a));
    }

    #[test]
    #[should_panic(expected = "mixed address families")]
    fn mixed_families_panic() {
        let _ = udp(sa("198.18.0.2:1"), sa("[2001:2::1]:2"), &[]);
    }
}
