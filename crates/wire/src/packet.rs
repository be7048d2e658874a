//! IPv4/IPv6/TCP/UDP/ICMP decoding into a small [`PacketSummary`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How many IPv6 extension headers the decoder walks before it calls the
/// packet malformed. Real traffic carries at most two or three; the bound
/// keeps an attacker-built chain from costing more than a few reads.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

/// How many stacked 802.1Q / 802.1ad tags an Ethernet frame may carry.
pub const MAX_VLAN_TAGS: usize = 3;

/// What the bytes handed to [`decode`] start with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// A bare IP packet, version taken from the first nibble (NFQUEUE, pcap
    /// `LINKTYPE_RAW`, `LINKTYPE_IPV4`, `LINKTYPE_IPV6`).
    Raw,
    /// Ethernet II, with up to [`MAX_VLAN_TAGS`] VLAN tags.
    Ethernet,
    /// Linux "cooked" capture v1 (`LINKTYPE_LINUX_SLL`, `tcpdump -i any`).
    LinuxSll,
    /// Linux "cooked" capture v2 (`LINKTYPE_LINUX_SLL2`).
    LinuxSll2,
    /// BSD loopback (`LINKTYPE_NULL`): a 4-byte address family.
    Null,
}

impl LinkType {
    /// Maps a pcap/pcapng link-layer type number to a link type we decode.
    pub fn from_pcap(linktype: u32) -> Option<Self> {
        match linktype {
            0 => Some(Self::Null),
            1 => Some(Self::Ethernet),
            12 | 14 | 101 | 228 | 229 => Some(Self::Raw),
            113 => Some(Self::LinuxSll),
            276 => Some(Self::LinuxSll2),
            _ => None,
        }
    }
}

/// IP protocol number, an open enum: an unexpected value is a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpProto {
    Icmp,
    Tcp,
    Udp,
    Icmpv6,
    Other(u8),
}

impl IpProto {
    pub const fn from_number(n: u8) -> Self {
        match n {
            1 => Self::Icmp,
            6 => Self::Tcp,
            17 => Self::Udp,
            58 => Self::Icmpv6,
            n => Self::Other(n),
        }
    }

    pub const fn number(self) -> u8 {
        match self {
            Self::Icmp => 1,
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Icmpv6 => 58,
            Self::Other(n) => n,
        }
    }

    /// The name events and rules use (Suricata EVE's `proto` spelling).
    pub fn name(self) -> ProtoName {
        ProtoName(self)
    }
}

/// Display helper for [`IpProto::name`]: `TCP`, `UDP`, `ICMP`, `IPv6-ICMP`, or the number.
#[derive(Debug, Clone, Copy)]
pub struct ProtoName(IpProto);

impl fmt::Display for ProtoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpProto::Icmp => f.write_str("ICMP"),
            IpProto::Tcp => f.write_str("TCP"),
            IpProto::Udp => f.write_str("UDP"),
            IpProto::Icmpv6 => f.write_str("IPv6-ICMP"),
            IpProto::Other(n) => write!(f, "{n}"),
        }
    }
}

/// TCP flags byte (FIN..CWR).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    pub const fn has(self, bits: u8) -> bool {
        self.0 & bits == bits
    }

    /// The flags ignoring ECN bits (ECE, CWR), which do not change what a
    /// segment means for connection tracking or scan classification.
    pub const fn core(self) -> u8 {
        self.0 & 0x3f
    }
}

impl fmt::Debug for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for TcpFlags {
    /// tcpdump-like letters: `S`, `SA`, `F`, `FPU`, `.` for none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const LETTERS: [(u8, char); 8] = [
            (TcpFlags::SYN, 'S'),
            (TcpFlags::FIN, 'F'),
            (TcpFlags::RST, 'R'),
            (TcpFlags::PSH, 'P'),
            (TcpFlags::ACK, 'A'),
            (TcpFlags::URG, 'U'),
            (TcpFlags::ECE, 'E'),
            (TcpFlags::CWR, 'C'),
        ];
        if self.0 == 0 {
            return f.write_str(".");
        }
        for (bit, c) in LETTERS {
            if self.0 & bit != 0 {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Where this packet stands in IP fragmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// A whole datagram.
    None,
    /// The first fragment (offset 0, more-fragments set): its transport
    /// header is present and decoded.
    First,
    /// A later fragment: no transport header, so no ports and no flags.
    NonFirst {
        /// Offset in 8-byte units.
        offset: u16,
    },
}

/// What one packet says, decoded once. `Copy`, 60-odd bytes, no borrow: the
/// payload is a range into the caller's buffer ([`PacketSummary::payload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketSummary {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: IpProto,
    /// `None` for protocols without ports and for non-first fragments.
    pub src_port: Option<u16>,
    /// `None` for protocols without ports and for non-first fragments.
    pub dst_port: Option<u16>,
    /// Zero unless TCP.
    pub tcp_flags: TcpFlags,
    /// TCP receive window (zero unless TCP).
    pub tcp_window: u16,
    /// Bytes of TCP options (data offset * 4 - 20; zero unless TCP). An OS
    /// `connect()` sends several options with its SYN; a raw-socket scanner
    /// usually sends at most MSS.
    pub tcp_options_len: u8,
    /// ICMP or ICMPv6 `(type, code)`.
    pub icmp: Option<(u8, u8)>,
    /// SCTP (protocol 132): source port, destination port and the type of
    /// the first chunk (1 = INIT). Kept apart from `src_port`/`dst_port`,
    /// which the rules match as TCP and UDP ports only.
    pub sctp: Option<Sctp>,
    pub fragment: Fragment,
    /// Hop limit / TTL.
    pub ttl: u8,
    /// IP datagram length as the header states it (may exceed what was
    /// captured, see [`PacketSummary::truncated`]).
    pub ip_len: u16,
    /// Whether fewer bytes were captured than the IP header announces
    /// (pcap snap length). The transport header, when present, was complete.
    pub truncated: bool,
    payload_start: u32,
    payload_end: u32,
    /// Where the payload ends on the wire (by the IP header's length), in
    /// the caller's buffer's coordinates: past `payload_end` when the
    /// capture was cut.
    payload_wire_end: u32,
}

impl PacketSummary {
    /// The transport payload (after the TCP/UDP/ICMP header; for a
    /// non-first fragment, the fragment's data) as captured.
    ///
    /// `data` must be the buffer this summary was decoded from; with any
    /// other buffer the result is empty or meaningless but never panics.
    pub fn payload<'a>(&self, data: &'a [u8]) -> &'a [u8] {
        data.get(self.payload_start as usize..self.payload_end as usize)
            .unwrap_or(&[])
    }

    /// Bytes of payload captured (`payload(data).len()`).
    pub fn payload_len(&self) -> usize {
        (self.payload_end - self.payload_start) as usize
    }

    /// Bytes of payload the packet carried on the wire, as its IP header
    /// announces them: more than [`PacketSummary::payload_len`] when the
    /// capture cut the packet (snap length), never less. What to classify a
    /// segment by ("a bare ACK carries no data").
    pub fn wire_payload_len(&self) -> usize {
        (self.payload_wire_end.max(self.payload_end) - self.payload_start) as usize
    }

    pub fn is_ipv6(&self) -> bool {
        self.src.is_ipv6()
    }
}

/// Why a packet could not be decoded. Small and `Copy`: it is counted, not
/// logged per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Fewer bytes than a header needs.
    Truncated,
    /// Not IPv4 or IPv6 (ARP, LLDP, ...). Not malformed: just not ours.
    NotIp,
    /// IP version nibble disagrees with the link layer, or is neither 4 nor 6.
    BadVersion,
    /// A length field is impossible (IHL < 5, total length < header length,
    /// TCP data offset < 5, UDP length < 8).
    BadLength,
    /// More than [`MAX_IPV6_EXT_HEADERS`] IPv6 extension headers or more
    /// than [`MAX_VLAN_TAGS`] VLAN tags.
    TooManyHeaders,
    /// A first fragment too short to hold the transport header, or a TCP
    /// fragment at offset 1 that would overwrite the header (RFC 1858).
    TinyFragment,
}

impl DecodeError {
    /// Short snake_case name for counters and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::NotIp => "not_ip",
            Self::BadVersion => "bad_version",
            Self::BadLength => "bad_length",
            Self::TooManyHeaders => "too_many_headers",
            Self::TinyFragment => "tiny_fragment",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for DecodeError {}

/// What the decoder had read of a packet when it gave up: every field that
/// decoded, `None` for the rest. `Copy`, no borrow, like [`PacketSummary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Partial {
    /// Source address, when the IP header's addresses were captured.
    pub src: Option<IpAddr>,
    /// Destination address, when the IP header's addresses were captured.
    pub dst: Option<IpAddr>,
    /// The transport protocol: IPv4's protocol field; for IPv6 the header
    /// after the last extension header, once the chain was walked.
    pub proto: Option<IpProto>,
    /// TCP/UDP source port, when its bytes were there (never for a
    /// non-first fragment).
    pub src_port: Option<u16>,
    /// TCP/UDP destination port, as `src_port`.
    pub dst_port: Option<u16>,
}

/// A packet [`decode_partial`] could not decode: why, and what it had read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undecodable {
    pub error: DecodeError,
    pub partial: Partial,
    /// The captured bytes ended before a header that the packet's own
    /// length fields say is there (`error` is then `Truncated`): a capture
    /// cut by its snap length, or a buffer cut short by its reader, rather
    /// than a packet built wrong. Whether the packet really was longer on
    /// the wire only the capture knows (its original length).
    pub cut: bool,
}

impl From<DecodeError> for Undecodable {
    /// Nothing decoded yet; `Truncated` here means the captured bytes ran
    /// out (no length field bounded them).
    fn from(error: DecodeError) -> Self {
        Self {
            error,
            partial: Partial::default(),
            cut: error == DecodeError::Truncated,
        }
    }
}

impl fmt::Display for Undecodable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.error.as_str())?;
        if self.cut {
            f.write_str(" (capture cut)")?;
        }
        Ok(())
    }
}

impl std::error::Error for Undecodable {}

#[inline]
fn be16(d: &[u8], at: usize) -> Result<u16, DecodeError> {
    match d.get(at..at + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(DecodeError::Truncated),
    }
}

/// IP protocol number of SCTP.
const SCTP: u8 = 132;

/// The SCTP common header and first chunk type of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sctp {
    pub src_port: u16,
    pub dst_port: u16,
    /// Type of the first chunk: 1 INIT, 6 ABORT, ...
    pub chunk: u8,
}

/// SCTP chunk types that matter to scan detection.
impl Sctp {
    pub const INIT: u8 = 1;
    pub const ABORT: u8 = 6;
}

/// The start of the datagram an ICMP or ICMPv6 error message quotes: who
/// sent it where, over which protocol and ports (RFC 792, RFC 4443).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (for IPv6, the first next header).
    pub proto: u8,
    /// TCP, UDP and SCTP ports, when the quote is long enough to hold them.
    pub ports: Option<(u16, u16)>,
}

/// The datagram quoted by an ICMP destination-unreachable message (ICMPv4
/// type 3, ICMPv6 type 1): `None` for other messages or a quote too short
/// to hold the quoted IP header. Every length is checked; never panics.
pub fn unreachable_quote(p: &PacketSummary, data: &[u8]) -> Option<Quote> {
    match (p.proto, p.icmp) {
        (IpProto::Icmp, Some((3, _))) | (IpProto::Icmpv6, Some((1, _))) => {}
        _ => return None,
    }
    let q = p.payload(data);
    let version = q.first()? >> 4;
    let (src, dst, proto, l4) = match version {
        4 => {
            let ihl = usize::from(q[0] & 0x0f) * 4;
            if ihl < 20 || q.len() < ihl {
                return None;
            }
            let src = IpAddr::V4(Ipv4Addr::new(q[12], q[13], q[14], q[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(q[16], q[17], q[18], q[19]));
            (src, dst, q[9], q.get(ihl..)?)
        }
        6 => {
            if q.len() < 40 {
                return None;
            }
            (ipv6_addr(&q[8..24]), ipv6_addr(&q[24..40]), q[6], &q[40..])
        }
        _ => return None,
    };
    let ports = match proto {
        6 | 17 | SCTP if l4.len() >= 4 => Some((
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )),
        _ => None,
    };
    Some(Quote {
        src,
        dst,
        proto,
        ports,
    })
}

#[inline]
fn byte(d: &[u8], at: usize) -> Result<u8, DecodeError> {
    d.get(at).copied().ok_or(DecodeError::Truncated)
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const ETHERTYPE_QINQ_OLD: u16 = 0x9100;

/// Decodes one packet. Never panics, whatever `data` holds.
pub fn decode(link: LinkType, data: &[u8]) -> Result<PacketSummary, DecodeError> {
    decode_partial(link, data).map_err(|u| u.error)
}

/// [`decode`], and when it fails, what was read before it failed
/// ([`Undecodable`]: addresses, protocol and ports as far as they decoded,
/// and whether the captured bytes simply ran out). Never panics, never
/// allocates.
pub fn decode_partial(link: LinkType, data: &[u8]) -> Result<PacketSummary, Undecodable> {
    let (l3, ethertype) = match link {
        LinkType::Raw => (0, None),
        LinkType::Ethernet => {
            let mut off = 12;
            let mut ty = be16(data, off)?;
            let mut tags = 0;
            while matches!(ty, ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD) {
                tags += 1;
                if tags > MAX_VLAN_TAGS {
                    return Err(DecodeError::TooManyHeaders.into());
                }
                off += 4;
                ty = be16(data, off)?;
            }
            (off + 2, Some(ty))
        }
        LinkType::LinuxSll => (16, Some(be16(data, 14)?)),
        LinkType::LinuxSll2 => (20, Some(be16(data, 0)?)),
        LinkType::Null => {
            let fam = data.get(0..4).ok_or(DecodeError::Truncated)?;
            // Host byte order of the capturing machine: accept either.
            let fam = u32::from_le_bytes([fam[0], fam[1], fam[2], fam[3]]);
            let fam = if fam > 0xffff { fam.swap_bytes() } else { fam };
            let ty = match fam {
                2 => ETHERTYPE_IPV4,
                24 | 28 | 30 => ETHERTYPE_IPV6,
                _ => return Err(DecodeError::NotIp.into()),
            };
            (4, Some(ty))
        }
    };
    let ip = data.get(l3..).ok_or(DecodeError::Truncated)?;
    let version = byte(ip, 0)? >> 4;
    match (ethertype, version) {
        (None | Some(ETHERTYPE_IPV4), 4) => decode_ipv4(data, l3),
        (None | Some(ETHERTYPE_IPV6), 6) => decode_ipv6(data, l3),
        (None | Some(ETHERTYPE_IPV4 | ETHERTYPE_IPV6), _) => Err(DecodeError::BadVersion.into()),
        (Some(_), _) => Err(DecodeError::NotIp.into()),
    }
}

/// What the network layer found, handed to the transport decoder.
struct Network {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    ttl: u8,
    ip_len: u16,
    truncated: bool,
    fragment: Fragment,
    /// Absolute offsets of the transport bytes in the caller's buffer.
    l4_start: usize,
    l4_end: usize,
    /// Where the transport bytes end on the wire, by the IP header's length
    /// (may lie past the buffer when the capture was cut).
    l4_wire_end: usize,
}

fn decode_ipv4(data: &[u8], l3: usize) -> Result<PacketSummary, Undecodable> {
    let ip = data.get(l3..).unwrap_or(&[]);
    // Addresses and protocol sit in the first 20 bytes: known even when a
    // later check fails.
    let partial = match ip.get(..20) {
        Some(h) => Partial {
            src: Some(IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]))),
            dst: Some(IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]))),
            proto: Some(IpProto::from_number(h[9])),
            ..Partial::default()
        },
        None => Partial::default(),
    };
    let fail = |error, cut| Undecodable {
        error,
        partial,
        cut,
    };
    let ihl = usize::from(byte(ip, 0)? & 0x0f) * 4;
    if ihl < 20 {
        return Err(fail(DecodeError::BadLength, false));
    }
    if ip.len() < ihl {
        // Cut by the capture unless the total length says the header
        // itself is short.
        let cut = be16(ip, 2).map_or(true, |t| usize::from(t) >= ihl);
        return Err(fail(DecodeError::Truncated, cut));
    }
    let total = be16(ip, 2).map_err(|e| fail(e, true))?;
    if usize::from(total) < ihl {
        return Err(fail(DecodeError::BadLength, false));
    }
    let frag = be16(ip, 6).map_err(|e| fail(e, true))?;
    let more = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    let fragment = match (offset, more) {
        (0, false) => Fragment::None,
        (0, true) => Fragment::First,
        (offset, _) => Fragment::NonFirst { offset },
    };
    let end = ip.len().min(usize::from(total));
    let net = Network {
        src: IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])),
        dst: IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19])),
        proto: ip[9],
        ttl: ip[8],
        ip_len: total,
        truncated: ip.len() < usize::from(total),
        fragment,
        l4_start: l3 + ihl,
        l4_end: l3 + end,
        l4_wire_end: l3 + usize::from(total),
    };
    decode_transport(data, net)
}

fn ipv6_addr(b: &[u8]) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    IpAddr::V6(Ipv6Addr::from(a))
}

fn decode_ipv6(data: &[u8], l3: usize) -> Result<PacketSummary, Undecodable> {
    let ip = data.get(l3..).unwrap_or(&[]);
    if ip.len() < 40 {
        return Err(DecodeError::Truncated.into());
    }
    let (src, dst) = (ipv6_addr(&ip[8..24]), ipv6_addr(&ip[24..40]));
    let partial = Partial {
        src: Some(src),
        dst: Some(dst),
        ..Partial::default()
    };
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]);
    // Payload length 0 means a jumbogram (RFC 2675) only behind a
    // hop-by-hop header (where the jumbo option lives; Linux "BIG TCP" uses
    // it): read to the end of the capture then. Otherwise the datagram is
    // empty and what follows is link padding, not payload.
    let announced = 40 + usize::from(payload_len);
    let jumbo = payload_len == 0 && ip[6] == 0;
    let end = if jumbo {
        ip.len()
    } else {
        ip.len().min(announced)
    };
    // How far the datagram reaches on the wire.
    let wire_end = if jumbo { end } else { announced };
    // A read that failed at `at` (exclusive end): cut by the capture if the
    // datagram reaches that far on the wire.
    let short = |at: usize| Undecodable {
        error: DecodeError::Truncated,
        partial,
        cut: at > ip.len() && at <= wire_end,
    };
    let mut next = ip[6];
    let mut off = 40;
    let mut fragment = Fragment::None;
    for _ in 0..=MAX_IPV6_EXT_HEADERS {
        let len = match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6.
            0 | 43 | 60 | 135 | 139 | 140 => {
                (usize::from(byte(ip, off + 1).map_err(|_| short(off + 2))?) + 1) * 8
            }
            // Authentication header: length in 4-byte units, minus 2.
            51 => (usize::from(byte(ip, off + 1).map_err(|_| short(off + 2))?) + 2) * 4,
            44 => {
                let fo = be16(ip, off + 2).map_err(|_| short(off + 4))?;
                let offset = fo >> 3;
                let more = fo & 1 != 0;
                fragment = match (offset, more) {
                    (0, false) => Fragment::None, // atomic fragment (RFC 6946)
                    (0, true) => Fragment::First,
                    (offset, _) => Fragment::NonFirst { offset },
                };
                8
            }
            _ => {
                let net = Network {
                    src,
                    dst,
                    proto: next,
                    ttl: ip[7],
                    ip_len: u16::try_from(announced).unwrap_or(u16::MAX),
                    truncated: ip.len() < announced,
                    fragment,
                    l4_start: l3 + off,
                    l4_end: l3 + end.max(off),
                    l4_wire_end: l3 + wire_end.max(off),
                };
                return decode_transport(data, net);
            }
        };
        next = byte(ip, off).map_err(|_| short(off + 1))?;
        off += len;
        if off > end {
            return Err(short(off));
        }
        if let Fragment::NonFirst { .. } = fragment {
            // The rest is fragment data: the next header is not here.
            let net = Network {
                src,
                dst,
                proto: next,
                ttl: ip[7],
                ip_len: u16::try_from(announced).unwrap_or(u16::MAX),
                truncated: ip.len() < announced,
                fragment,
                l4_start: l3 + off,
                l4_end: l3 + end,
                l4_wire_end: l3 + wire_end.max(off),
            };
            return decode_transport(data, net);
        }
    }
    Err(Undecodable {
        error: DecodeError::TooManyHeaders,
        partial,
        cut: false,
    })
}

fn decode_transport(data: &[u8], n: Network) -> Result<PacketSummary, Undecodable> {
    let proto = IpProto::from_number(n.proto);
    let mut s = PacketSummary {
        src: n.src,
        dst: n.dst,
        proto,
        src_port: None,
        dst_port: None,
        tcp_flags: TcpFlags(0),
        tcp_window: 0,
        tcp_options_len: 0,
        icmp: None,
        sctp: None,
        fragment: n.fragment,
        ttl: n.ttl,
        ip_len: n.ip_len,
        truncated: n.truncated,
        payload_start: n.l4_start as u32,
        payload_end: n.l4_end as u32,
        payload_wire_end: n.l4_wire_end.min(u32::MAX as usize) as u32,
    };
    let l4 = data.get(n.l4_start..n.l4_end).unwrap_or(&[]);
    let mut partial = Partial {
        src: Some(n.src),
        dst: Some(n.dst),
        proto: Some(proto),
        ..Partial::default()
    };
    if let Fragment::NonFirst { offset } = n.fragment {
        // RFC 1858: a TCP fragment at offset 1 rewrites the flags of the
        // first fragment's header. Nothing legitimate does that.
        if proto == IpProto::Tcp && offset == 1 {
            return Err(Undecodable {
                error: DecodeError::TinyFragment,
                partial,
                cut: false,
            });
        }
        return Ok(s);
    }
    if let (IpProto::Tcp | IpProto::Udp, Some(&[a, b, c, d])) = (proto, l4.get(..4)) {
        partial.src_port = Some(u16::from_be_bytes([a, b]));
        partial.dst_port = Some(u16::from_be_bytes([c, d]));
    }
    // Transport bytes on the wire, by the IP header's length.
    let wire = n.l4_wire_end.saturating_sub(n.l4_start);
    let short = |need: usize| {
        if wire < need {
            // The packet itself is too short for its header.
            let error = if n.fragment == Fragment::First {
                DecodeError::TinyFragment
            } else {
                DecodeError::Truncated
            };
            Err(Undecodable {
                error,
                partial,
                cut: false,
            })
        } else if l4.len() < need {
            // Long enough on the wire; the capture stopped early.
            Err(Undecodable {
                error: DecodeError::Truncated,
                partial,
                cut: true,
            })
        } else {
            Ok(())
        }
    };
    let header_len = match proto {
        IpProto::Tcp => {
            short(20)?;
            let doff = usize::from(l4[12] >> 4) * 4;
            if doff < 20 {
                return Err(Undecodable {
                    error: DecodeError::BadLength,
                    partial,
                    cut: false,
                });
            }
            short(doff)?;
            s.src_port = Some(u16::from_be_bytes([l4[0], l4[1]]));
            s.dst_port = Some(u16::from_be_bytes([l4[2], l4[3]]));
            s.tcp_flags = TcpFlags(l4[13]);
            s.tcp_window = u16::from_be_bytes([l4[14], l4[15]]);
            s.tcp_options_len = (doff - 20) as u8;
            doff
        }
        IpProto::Udp => {
            short(8)?;
            s.src_port = Some(u16::from_be_bytes([l4[0], l4[1]]));
            s.dst_port = Some(u16::from_be_bytes([l4[2], l4[3]]));
            8
        }
        IpProto::Icmp | IpProto::Icmpv6 => {
            short(4)?;
            s.icmp = Some((l4[0], l4[1]));
            // Echo and most messages have 4 more bytes of header; keep the
            // payload as everything after type/code/checksum/rest.
            l4.len().min(8)
        }
        // Common header (ports, verification tag, checksum), then the
        // first chunk's type. Too short for that: an opaque payload, as for
        // any other protocol (nothing matches SCTP ports).
        IpProto::Other(SCTP) if l4.len() >= 13 => {
            s.sctp = Some(Sctp {
                src_port: u16::from_be_bytes([l4[0], l4[1]]),
                dst_port: u16::from_be_bytes([l4[2], l4[3]]),
                chunk: l4[12],
            });
            // The payload stays the whole datagram, as for any protocol
            // without a decoded header.
            0
        }
        IpProto::Other(_) => 0,
    };
    s.payload_start = (n.l4_start + header_len) as u32;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 TCP SYN 198.18.0.2:40000 -> 198.18.0.1:80, MSS option only.
    static SYN_V4: [u8; 44] = [
        0x45, 0x00, 0x00, 0x2c, 0x00, 0x01, 0x00, 0x00, 0x40, 0x06, 0x00, 0x00, // ip
        198, 18, 0, 2, 198, 18, 0, 1, // addrs
        0x9c, 0x40, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, // ports, seq, ack
        0x60, 0x02, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, // doff=6, SYN, win 1024
        0x02, 0x04, 0x05, 0xb4, // MSS 1460
    ];

    #[test]
    fn ipv4_syn() {
        let s = decode(LinkType::Raw, &SYN_V4).unwrap();
        assert_eq!(s.src, "198.18.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(s.dst, "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(s.proto, IpProto::Tcp);
        assert_eq!((s.src_port, s.dst_port), (Some(40000), Some(80)));
        assert_eq!(s.tcp_flags, TcpFlags(TcpFlags::SYN));
        assert_eq!(s.tcp_window, 1024);
        assert_eq!(s.tcp_options_len, 4);
        assert_eq!(s.fragment, Fragment::None);
        assert_eq!(s.payload(&SYN_V4), &[] as &[u8]);
    }

    #[test]
    fn ethernet_with_two_vlan_tags() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x88, 0xa8, 0x00, 0x0a, 0x81, 0x00, 0x00, 0x14, 0x08, 0x00]);
        f.extend_from_slice(&SYN_V4);
        let s = decode(LinkType::Ethernet, &f).unwrap();
        assert_eq!(s.dst_port, Some(80));
        assert_eq!(s.payload(&f), &[] as &[u8]);
    }

    #[test]
    fn too_many_vlan_tags() {
        let mut f = vec![0u8; 12];
        for _ in 0..4 {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x01]);
        }
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&SYN_V4);
        assert_eq!(
            decode(LinkType::Ethernet, &f),
            Err(DecodeError::TooManyHeaders)
        );
    }

    #[test]
    fn arp_is_not_ip() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend_from_slice(&[0u8; 28]);
        assert_eq!(decode(LinkType::Ethernet, &f), Err(DecodeError::NotIp));
    }

    #[test]
    fn non_first_fragment_has_no_ports() {
        let mut p = SYN_V4;
        p[6] = 0x00;
        p[7] = 0x03; // offset 3 * 8 bytes
        let s = decode(LinkType::Raw, &p).unwrap();
        assert_eq!(s.fragment, Fragment::NonFirst { offset: 3 });
        assert_eq!((s.src_port, s.dst_port), (None, None));
        assert_eq!(s.tcp_flags, TcpFlags(0));
    }

    #[test]
    fn tcp_fragment_at_offset_one_is_rejected() {
        let mut p = SYN_V4;
        p[7] = 0x01;
        assert_eq!(decode(LinkType::Raw, &p), Err(DecodeError::TinyFragment));
    }

    #[test]
    fn tiny_first_fragment_is_rejected() {
        let mut p = SYN_V4.to_vec();
        p[6] = 0x20; // MF
        p.truncate(20 + 8);
        p[3] = 28;
        assert_eq!(decode(LinkType::Raw, &p), Err(DecodeError::TinyFragment));
    }

    #[test]
    fn first_fragment_keeps_ports() {
        let mut p = SYN_V4;
        p[6] = 0x20;
        let s = decode(LinkType::Raw, &p).unwrap();
        assert_eq!(s.fragment, Fragment::First);
        assert_eq!(s.dst_port, Some(80));
    }

    #[test]
    fn bad_lengths() {
        let mut p = SYN_V4;
        p[0] = 0x44;
        assert_eq!(decode(LinkType::Raw, &p), Err(DecodeError::BadLength));
        let mut p = SYN_V4;
        p[32] = 0x40; // data offset 4
        assert_eq!(decode(LinkType::Raw, &p), Err(DecodeError::BadLength));
        let mut p = SYN_V4;
        p[0] = 0x55;
        assert_eq!(decode(LinkType::Raw, &p), Err(DecodeError::BadVersion));
        assert_eq!(decode(LinkType::Raw, &[]), Err(DecodeError::Truncated));
    }

    #[test]
    fn a_failure_keeps_what_decoded() {
        // Tiny first fragment: 8 bytes of TCP header, and the IP total
        // length says so. The sender's doing: not cut.
        let mut p = SYN_V4.to_vec();
        p[6] = 0x20;
        p.truncate(28);
        p[3] = 28;
        let u = decode_partial(LinkType::Raw, &p).unwrap_err();
        assert_eq!(u.error, DecodeError::TinyFragment);
        assert!(!u.cut);
        assert_eq!(u.partial.src, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(u.partial.dst, Some("198.18.0.1".parse().unwrap()));
        assert_eq!(u.partial.proto, Some(IpProto::Tcp));
        assert_eq!(
            (u.partial.src_port, u.partial.dst_port),
            (Some(40000), Some(80))
        );

        // The same bytes with the whole segment announced: the capture
        // stopped early (snap length), the packet was fine.
        p[3] = 44;
        let u = decode_partial(LinkType::Raw, &p).unwrap_err();
        assert_eq!(u.error, DecodeError::Truncated);
        assert!(u.cut);
        assert_eq!(u.partial.dst_port, Some(80));

        // Cut inside the IP header: nothing but the error.
        let u = decode_partial(LinkType::Raw, &SYN_V4[..12]).unwrap_err();
        assert_eq!((u.error, u.cut), (DecodeError::Truncated, true));
        assert_eq!(u.partial, Partial::default());

        // A bad TCP data offset: addresses and ports, not cut.
        let mut p = SYN_V4;
        p[32] = 0x40;
        let u = decode_partial(LinkType::Raw, &p).unwrap_err();
        assert_eq!((u.error, u.cut), (DecodeError::BadLength, false));
        assert_eq!(u.partial.src_port, Some(40000));
    }

    #[test]
    fn ipv6_cut_inside_extension_headers_is_cut() {
        let mut pl = vec![60, 0, 1, 4, 0, 0, 0, 0];
        pl.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        pl.extend_from_slice(&[0x14, 0xe9, 0x00, 0x35, 0x00, 0x0c, 0, 0, 1, 2, 3, 4]);
        let p = v6_header(0, &pl);
        let u = decode_partial(LinkType::Raw, &p[..50]).unwrap_err();
        assert_eq!((u.error, u.cut), (DecodeError::Truncated, true));
        assert_eq!(u.partial.src, Some("2001:2::2".parse().unwrap()));
        assert_eq!(u.partial.proto, None, "the chain was not walked to its end");
        // Zero payload length, padding after: the packet is empty, not cut.
        let mut p = v6_header(6, &[]);
        p.extend_from_slice(&SYN_V4[20..]);
        let u = decode_partial(LinkType::Raw, &p).unwrap_err();
        assert_eq!((u.error, u.cut), (DecodeError::Truncated, false));
    }

    #[test]
    fn cut_payload_keeps_its_wire_length() {
        // An ACK with 100 bytes of data, captured up to the TCP header.
        let mut p = SYN_V4[..40].to_vec();
        p[32] = 0x50;
        p[33] = 0x10;
        p[2..4].copy_from_slice(&140u16.to_be_bytes());
        let s = decode(LinkType::Raw, &p).unwrap();
        assert!(s.truncated);
        assert_eq!(s.payload_len(), 0);
        assert_eq!(s.wire_payload_len(), 100);
        let s = decode(LinkType::Raw, &SYN_V4).unwrap();
        assert_eq!(s.wire_payload_len(), 0);
    }

    #[test]
    fn snaplen_truncated_payload_is_flagged() {
        let mut p = SYN_V4.to_vec();
        p[3] = 0xff; // claims 255 bytes
        let s = decode(LinkType::Raw, &p).unwrap();
        assert!(s.truncated);
        assert_eq!(s.dst_port, Some(80));
    }

    fn v6_header(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.push(next);
        p.push(64);
        let src: std::net::Ipv6Addr = "2001:2::2".parse().unwrap();
        let dst: std::net::Ipv6Addr = "2001:2::1".parse().unwrap();
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn ipv6_udp_behind_extension_headers() {
        // hop-by-hop (8 bytes) -> destination options (8) -> UDP 5353 -> 53
        let mut pl = vec![60, 0, 1, 4, 0, 0, 0, 0];
        pl.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]);
        pl.extend_from_slice(&[
            0x14, 0xe9, 0x00, 0x35, 0x00, 0x0c, 0, 0, b'a', b'b', b'c', b'd',
        ]);
        let p = v6_header(0, &pl);
        let s = decode(LinkType::Raw, &p).unwrap();
        assert_eq!(s.proto, IpProto::Udp);
        assert_eq!(s.dst_port, Some(53));
        assert_eq!(s.payload(&p), b"abcd");
    }

    #[test]
    fn ipv6_zero_payload_length_without_hop_by_hop_is_empty() {
        // A 40-byte IPv6 header (next header TCP, payload length 0) followed
        // by Ethernet padding that looks like a TCP SYN: not a segment.
        let mut p = v6_header(6, &[]);
        p.extend_from_slice(&SYN_V4[20..]);
        assert_eq!(decode(LinkType::Raw, &p), Err(DecodeError::Truncated));
    }

    #[test]
    fn ipv6_extension_chain_is_bounded() {
        let mut pl = Vec::new();
        for _ in 0..MAX_IPV6_EXT_HEADERS + 1 {
            pl.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
        }
        let p = v6_header(60, &pl);
        assert_eq!(decode(LinkType::Raw, &p), Err(DecodeError::TooManyHeaders));
    }

    #[test]
    fn ipv6_non_first_fragment() {
        // fragment header: next TCP, offset 2 (16 bytes), M=0
        let mut pl = vec![6, 0, 0x00, 0x10, 0, 0, 0, 7];
        pl.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let p = v6_header(44, &pl);
        let s = decode(LinkType::Raw, &p).unwrap();
        assert_eq!(s.fragment, Fragment::NonFirst { offset: 2 });
        assert_eq!(s.proto, IpProto::Tcp);
        assert_eq!(s.dst_port, None);
        assert_eq!(s.payload(&p), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn icmp_echo() {
        let mut p = SYN_V4[..20].to_vec();
        p[9] = 1;
        p[3] = 28;
        p.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
        let s = decode(LinkType::Raw, &p).unwrap();
        assert_eq!(s.proto, IpProto::Icmp);
        assert_eq!(s.icmp, Some((8, 0)));
        assert_eq!(s.dst_port, None);
    }

    #[test]
    fn flags_display() {
        assert_eq!(TcpFlags(TcpFlags::SYN | TcpFlags::ACK).to_string(), "SA");
        assert_eq!(
            TcpFlags(TcpFlags::FIN | TcpFlags::PSH | TcpFlags::URG).to_string(),
            "FPU"
        );
        assert_eq!(TcpFlags(0).to_string(), ".");
    }
}
