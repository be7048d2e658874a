//! Property tests for [`portcullis_wire::decode`].
//!
//! - `decode` never panics, for every [`LinkType`], on arbitrary bytes, on a
//!   plausible IPv4/IPv6 header followed by garbage (and a random prefix of
//!   it), and on valid packets cut at a random length, which must be
//!   `Truncated` exactly until the transport header is complete; whatever it
//!   returns is self-consistent ([`check_invariants`]).
//! - On packets etherparse 0.21 builds (IPv4 with options, IPv6 with
//!   extension headers, TCP/UDP/ICMP/other, Ethernet with 0-2 VLAN tags and
//!   padding, Linux cooked v1/v2, BSD loopback), `decode` agrees with
//!   etherparse's slicer field by field, payload bytes included.
//! - Fragments: a non-first fragment carries no ports, flags or ICMP type;
//!   a first fragment keeps them; a TCP fragment at offset 1 and a first
//!   fragment too short for its transport header are rejected.
//! - IPv6 extension chains decode up to [`MAX_IPV6_EXT_HEADERS`] headers and
//!   are refused beyond with [`DecodeError::TooManyHeaders`]; the same for
//!   [`MAX_VLAN_TAGS`] VLAN tags.
//!
//! Case counts are set per block (2,000-5,000). Seeds are random on every
//! run; a failure prints the shrunk input, and `PROPTEST_RNG_SEED=<n>`
//! replays a run.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    IpAuthHeader, IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv4Options, Ipv6Extensions,
    Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, Ipv6RoutingExtensions, LinuxSllPacketType,
    NetSlice, PacketBuilder, PacketBuilderStep, SlicedPacket, TcpHeader, TransportSlice, VlanId,
};
use portcullis_wire::{
    decode, decode_partial, DecodeError, Fragment, IpProto, LinkType, PacketSummary, TcpFlags,
    MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // No `.proptest-regressions` files beside the sources: a failure is
        // turned into a named regression test by hand.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Invariants every successful decode must satisfy.
// ---------------------------------------------------------------------------

/// What holds for every summary `decode` returns, whatever the input was.
fn check_invariants(s: &PacketSummary, data: &[u8]) -> Result<(), TestCaseError> {
    // `payload_len` subtracts the stored offsets: a start past the end would
    // panic (debug) or wrap; a range past the buffer makes `payload` empty.
    prop_assert_eq!(
        s.payload(data).len(),
        s.payload_len(),
        "payload range outside the buffer"
    );
    prop_assert_eq!(s.src.is_ipv6(), s.dst.is_ipv6());
    let non_first = matches!(s.fragment, Fragment::NonFirst { .. });
    let has_ports = matches!(s.proto, IpProto::Tcp | IpProto::Udp) && !non_first;
    prop_assert_eq!(s.src_port.is_some(), has_ports, "src_port for {:?}", s);
    prop_assert_eq!(s.dst_port.is_some(), has_ports, "dst_port for {:?}", s);
    if s.proto != IpProto::Tcp || non_first {
        prop_assert_eq!(s.tcp_flags, TcpFlags(0));
        prop_assert_eq!(s.tcp_window, 0);
        prop_assert_eq!(s.tcp_options_len, 0);
    }
    prop_assert!(s.tcp_options_len <= 40 && s.tcp_options_len % 4 == 0);
    let has_icmp = matches!(s.proto, IpProto::Icmp | IpProto::Icmpv6) && !non_first;
    prop_assert_eq!(s.icmp.is_some(), has_icmp, "icmp for {:?}", s);
    if let Fragment::NonFirst { offset } = s.fragment {
        prop_assert!(offset != 0);
        prop_assert!(
            !(s.proto == IpProto::Tcp && offset == 1),
            "TCP fragment at offset 1 accepted"
        );
    }
    Ok(())
}

fn decode_checked(
    link: LinkType,
    data: &[u8],
) -> Result<Result<PacketSummary, DecodeError>, TestCaseError> {
    let r = decode(link, data);
    if let Ok(s) = &r {
        check_invariants(s, data)?;
        prop_assert!(s.wire_payload_len() >= s.payload_len());
    }
    // `decode_partial` agrees, and what a failure keeps is consistent.
    let full = decode_partial(link, data);
    prop_assert_eq!(full.map_err(|u| u.error), r);
    if let Err(u) = full {
        let p = u.partial;
        prop_assert_eq!(p.src.is_some(), p.dst.is_some());
        prop_assert_eq!(p.src_port.is_some(), p.dst_port.is_some());
        if p.dst_port.is_some() {
            prop_assert!(matches!(p.proto, Some(IpProto::Tcp | IpProto::Udp)));
            prop_assert!(p.src.is_some());
        }
        prop_assert!(!u.cut || u.error == DecodeError::Truncated, "{:?}", u);
    }
    Ok(r)
}

/// `decode_checked` for inputs where only "no panic, consistent" is asserted.
fn check_any(link: LinkType, data: &[u8]) -> Result<(), TestCaseError> {
    decode_checked(link, data).map(drop)
}

// ---------------------------------------------------------------------------
// Link layers, written by hand (they are tiny and fixed).
// ---------------------------------------------------------------------------

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

fn all_links() -> impl Strategy<Value = LinkType> {
    prop_oneof![
        Just(LinkType::Raw),
        Just(LinkType::Ethernet),
        Just(LinkType::LinuxSll),
        Just(LinkType::LinuxSll2),
        Just(LinkType::Null),
    ]
}

/// Bytes that go in front of an IP packet for `link`. `vlans` is only used
/// for Ethernet; `family` only for BSD loopback (its 4-byte address family,
/// written little- or big-endian as the capturing host would).
fn link_prefix(
    link: LinkType,
    ethertype: u16,
    vlans: usize,
    family: u32,
    big_endian: bool,
) -> Vec<u8> {
    let et = ethertype.to_be_bytes();
    match link {
        LinkType::Raw => Vec::new(),
        LinkType::Ethernet => {
            let mut p = DST_MAC.to_vec();
            p.extend_from_slice(&SRC_MAC);
            for i in 0..vlans {
                let tpid: [u8; 2] = if i == 0 && vlans > 1 {
                    [0x88, 0xa8]
                } else {
                    [0x81, 0x00]
                };
                p.extend_from_slice(&tpid);
                p.extend_from_slice(&[0x00, 10 + i as u8]);
            }
            p.extend_from_slice(&et);
            p
        }
        LinkType::LinuxSll => {
            // packet type HOST, ARPHRD_ETHER, address length 6, address, protocol.
            let mut p = vec![0, 0, 0, 1, 0, 6];
            p.extend_from_slice(&SRC_MAC);
            p.extend_from_slice(&[0, 0]);
            p.extend_from_slice(&et);
            p
        }
        LinkType::LinuxSll2 => {
            // protocol, reserved, ifindex, ARPHRD_ETHER, packet type, address length, address.
            let mut p = et.to_vec();
            p.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 1, 0, 6]);
            p.extend_from_slice(&SRC_MAC);
            p.extend_from_slice(&[0, 0]);
            p
        }
        LinkType::Null => {
            if big_endian {
                family.to_be_bytes().to_vec()
            } else {
                family.to_le_bytes().to_vec()
            }
        }
    }
}

/// A link prefix that announces IPv4 or IPv6 for `link`, with its parameters.
fn ip_link_prefix(v6: bool) -> impl Strategy<Value = (LinkType, Vec<u8>)> {
    (
        all_links(),
        0..=MAX_VLAN_TAGS,
        prop_oneof![Just(24u32), Just(28), Just(30)],
        any::<bool>(),
    )
        .prop_map(move |(link, vlans, fam6, be)| {
            let (et, fam) = if v6 {
                (ETHERTYPE_IPV6, fam6)
            } else {
                (ETHERTYPE_IPV4, 2)
            };
            (link, link_prefix(link, et, vlans, fam, be))
        })
}

// ---------------------------------------------------------------------------
// Property 1: no input panics.
// ---------------------------------------------------------------------------

/// Protocol numbers worth hitting more often than 1 in 256.
fn interesting_proto() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(vec![0u8, 1, 6, 17, 43, 44, 51, 58, 59, 60, 135, 139, 140]),
        1 => any::<u8>(),
    ]
}

/// An IPv4 header whose fields are random but mostly plausible (version 4,
/// IHL 5-15 with its options present, total length either consistent or
/// random, random fragment bits), followed by garbage.
fn ipv4_with_garbage() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![4 => 5u8..=15, 1 => 0u8..5],
        any::<bool>(),
        any::<u16>(),
        prop_oneof![1 => Just(0u16), 1 => Just(0x2000u16), 2 => any::<u16>()],
        any::<u8>(),
        interesting_proto(),
        any::<[u8; 8]>(),
        vec(any::<u8>(), 40),
        vec(any::<u8>(), 0..80),
    )
        .prop_map(
            |(ihl, consistent, total, frag, ttl, proto, addrs, opts, garbage)| {
                let hl = usize::from(ihl.max(5)) * 4;
                let len = hl + garbage.len();
                let total = if consistent { len as u16 } else { total };
                let mut p = vec![0x40 | ihl, 0];
                p.extend_from_slice(&total.to_be_bytes());
                p.extend_from_slice(&[0, 1]);
                p.extend_from_slice(&frag.to_be_bytes());
                p.extend_from_slice(&[ttl, proto, 0, 0]);
                p.extend_from_slice(&addrs);
                p.extend_from_slice(&opts[..hl - 20]);
                p.extend_from_slice(&garbage);
                p
            },
        )
}

/// An IPv6 header with a random (often extension-header) next header and a
/// consistent or random payload length, followed by garbage.
fn ipv6_with_garbage() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        any::<u16>(),
        interesting_proto(),
        any::<u8>(),
        any::<[u8; 32]>(),
        vec(any::<u8>(), 0..120),
    )
        .prop_map(|(consistent, plen, next, hop, addrs, garbage)| {
            let plen = if consistent {
                garbage.len() as u16
            } else {
                plen
            };
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&plen.to_be_bytes());
            p.extend_from_slice(&[next, hop]);
            p.extend_from_slice(&addrs);
            p.extend_from_slice(&garbage);
            p
        })
}

proptest! {
    #![proptest_config(config(5_000))]

    #[test]
    fn arbitrary_bytes_never_panic(link in all_links(), data in vec(any::<u8>(), 0..160)) {
        check_any(link, &data)?;
    }

    #[test]
    fn ip_header_then_garbage_never_panics(
        v6 in any::<bool>(),
        (link, prefix) in prop_oneof![ip_link_prefix(false), ip_link_prefix(true)],
        v4 in ipv4_with_garbage(),
        v6p in ipv6_with_garbage(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut data = prefix;
        data.extend_from_slice(if v6 { &v6p } else { &v4 });
        check_any(link, &data)?;
        // And every prefix of it, at a random length.
        let cut = cut.index(data.len() + 1);
        check_any(link, &data[..cut])?;
    }
}

// ---------------------------------------------------------------------------
// Packets built by etherparse.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum L4 {
    Tcp {
        src: u16,
        dst: u16,
        seq: u32,
        ack: u32,
        /// FIN..CWR, the 13th byte of the header.
        flags: u8,
        /// The NS bit lives in byte 12: it must not leak into `tcp_flags`.
        ns: bool,
        window: u16,
        urgent: u16,
        options: Vec<u8>,
    },
    Udp {
        src: u16,
        dst: u16,
    },
    /// Any ICMP type/code with an 8-byte header (not ICMPv4 timestamps,
    /// whose header etherparse counts as 20 bytes).
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
    },
    Echo {
        request: bool,
        id: u16,
        seq: u16,
    },
    /// A protocol neither side decodes further.
    Other(u8),
}

#[derive(Debug, Clone)]
enum L3 {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        ttl: u8,
        options: Vec<u8>,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        hop: u8,
        hbh: Option<Vec<u8>>,
        dst_opts: Option<Vec<u8>>,
        routing: Option<Vec<u8>>,
        auth: Option<Vec<u8>>,
    },
}

impl L3 {
    fn is_v6(&self) -> bool {
        matches!(self, L3::V6 { .. })
    }
}

#[derive(Debug, Clone, Copy)]
enum Link {
    Raw,
    /// Ethernet II built by etherparse with 0, 1 (802.1Q) or 2 (802.1ad) tags.
    Ethernet {
        vlans: u8,
    },
    /// Linux cooked v1, built by etherparse.
    Sll,
    /// Linux cooked v2, prefix written by hand.
    Sll2,
    /// BSD loopback, prefix written by hand.
    Null {
        family6: u32,
        big_endian: bool,
    },
}

#[derive(Debug, Clone)]
struct Spec {
    link: Link,
    l3: L3,
    l4: L4,
    payload: Vec<u8>,
    /// Trailing bytes after the IP datagram (Ethernet minimum-frame padding
    /// or capture junk); only added on Ethernet.
    padding: Vec<u8>,
}

/// Payload of a raw IPv6 extension header: 6 + 8n bytes.
fn ext_body() -> impl Strategy<Value = Vec<u8>> {
    (0usize..4).prop_flat_map(|n| vec(any::<u8>(), 6 + 8 * n))
}

fn l3_v4() -> impl Strategy<Value = L3> {
    (
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        any::<u8>(),
        prop_oneof![3 => Just(0usize), 1 => 1usize..=10].prop_flat_map(|w| vec(any::<u8>(), 4 * w)),
    )
        .prop_map(|(src, dst, ttl, options)| L3::V4 {
            src,
            dst,
            ttl,
            options,
        })
}

/// IPv6 with a random subset of hop-by-hop, destination options, routing
/// and (when `with_auth`) authentication headers.
fn l3_v6(with_auth: bool) -> impl Strategy<Value = L3> {
    (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u8>(),
        prop::option::weighted(0.3, ext_body()),
        prop::option::weighted(0.3, ext_body()),
        prop::option::weighted(0.2, ext_body()),
        // AH on IPv6 must be a multiple of 8 bytes: 12 + ICV, ICV 4 + 8n.
        prop::option::weighted(
            0.2,
            (0usize..3).prop_flat_map(|n| vec(any::<u8>(), 4 + 8 * n)),
        ),
    )
        .prop_map(
            move |(src, dst, hop, hbh, dst_opts, routing, auth)| L3::V6 {
                src,
                dst,
                hop,
                hbh,
                dst_opts,
                routing,
                auth: auth.filter(|_| with_auth),
            },
        )
}

fn l3_strategy() -> impl Strategy<Value = L3> {
    prop_oneof![l3_v4(), l3_v6(true)]
}

fn other_proto() -> impl Strategy<Value = u8> {
    // Not a transport either side decodes, not an extension header, not
    // IGMP (etherparse decodes it) and not IP-in-IP.
    any::<u8>().prop_filter("decoded protocol", |p| {
        !matches!(
            p,
            0 | 1 | 2 | 4 | 6 | 17 | 41 | 43 | 44 | 51 | 58 | 60 | 135 | 139 | 140
        )
    })
}

fn l4_strategy() -> impl Strategy<Value = L4> {
    let tcp = (
        (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>()),
        (any::<u8>(), any::<bool>(), any::<u16>(), any::<u16>()),
        (0usize..=40).prop_flat_map(|n| vec(any::<u8>(), n)),
    )
        .prop_map(
            |((src, dst, seq, ack), (flags, ns, window, urgent), options)| L4::Tcp {
                src,
                dst,
                seq,
                ack,
                flags,
                ns,
                window,
                urgent,
                options,
            },
        );
    let udp = (any::<u16>(), any::<u16>()).prop_map(|(src, dst)| L4::Udp { src, dst });
    let icmp = (
        any::<u8>().prop_filter("timestamp", |t| !matches!(t, 13 | 14)),
        any::<u8>(),
        any::<[u8; 4]>(),
    )
        .prop_map(|(ty, code, rest)| L4::Icmp { ty, code, rest });
    let echo = (any::<bool>(), any::<u16>(), any::<u16>())
        .prop_map(|(request, id, seq)| L4::Echo { request, id, seq });
    prop_oneof![
        4 => tcp,
        3 => udp,
        1 => icmp,
        1 => echo,
        1 => other_proto().prop_map(L4::Other),
    ]
}

fn link_strategy() -> impl Strategy<Value = Link> {
    prop_oneof![
        Just(Link::Raw),
        (0u8..=2).prop_map(|vlans| Link::Ethernet { vlans }),
        Just(Link::Sll),
        Just(Link::Sll2),
        (prop::sample::select(vec![24u32, 28, 30]), any::<bool>()).prop_map(
            |(family6, big_endian)| Link::Null {
                family6,
                big_endian
            }
        ),
    ]
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    (
        link_strategy(),
        l3_strategy(),
        l4_strategy(),
        vec(any::<u8>(), 0..64),
        prop_oneof![3 => Just(Vec::new()), 1 => vec(any::<u8>(), 1..24)],
    )
        .prop_map(|(link, l3, l4, payload, padding)| Spec {
            link,
            l3,
            l4,
            payload,
            padding,
        })
}

fn ip_headers(l3: &L3) -> IpHeaders {
    match l3 {
        L3::V4 {
            src,
            dst,
            ttl,
            options,
        } => {
            let mut h = Ipv4Header::new(0, *ttl, IpNumber::UDP, *src, *dst).unwrap();
            h.options = Ipv4Options::try_from(&options[..]).unwrap();
            IpHeaders::Ipv4(h, Default::default())
        }
        L3::V6 {
            src,
            dst,
            hop,
            hbh,
            dst_opts,
            routing,
            auth,
        } => {
            let h = Ipv6Header {
                hop_limit: *hop,
                source: *src,
                destination: *dst,
                ..Default::default()
            };
            let raw = |b: &Vec<u8>| Ipv6RawExtHeader::new_raw(IpNumber::UDP, b).unwrap();
            let exts = Ipv6Extensions {
                hop_by_hop_options: hbh.as_ref().map(raw),
                destination_options: dst_opts.as_ref().map(raw),
                routing: routing.as_ref().map(|b| Ipv6RoutingExtensions {
                    routing: raw(b),
                    final_destination_options: None,
                }),
                fragment: None,
                auth: auth
                    .as_ref()
                    .map(|icv| IpAuthHeader::new(IpNumber::UDP, 0x1234, 7, icv).unwrap()),
            };
            IpHeaders::Ipv6(h, exts)
        }
    }
}

/// Adds the transport layer and payload and serialises.
fn finish(step: PacketBuilderStep<IpHeaders>, spec: &Spec) -> Vec<u8> {
    let mut out = Vec::new();
    let v6 = spec.l3.is_v6();
    let payload = &spec.payload;
    match &spec.l4 {
        L4::Tcp {
            src,
            dst,
            seq,
            ack,
            flags,
            ns,
            window,
            urgent,
            options,
        } => {
            let mut h = TcpHeader::new(*src, *dst, *seq, *window);
            h.acknowledgment_number = *ack;
            h.urgent_pointer = *urgent;
            h.ns = *ns;
            h.fin = flags & TcpFlags::FIN != 0;
            h.syn = flags & TcpFlags::SYN != 0;
            h.rst = flags & TcpFlags::RST != 0;
            h.psh = flags & TcpFlags::PSH != 0;
            h.ack = flags & TcpFlags::ACK != 0;
            h.urg = flags & TcpFlags::URG != 0;
            h.ece = flags & TcpFlags::ECE != 0;
            h.cwr = flags & TcpFlags::CWR != 0;
            h.set_options_raw(options).unwrap();
            step.tcp_header(h).write(&mut out, payload).unwrap();
        }
        L4::Udp { src, dst } => step.udp(*src, *dst).write(&mut out, payload).unwrap(),
        L4::Icmp { ty, code, rest } if v6 => step
            .icmpv6_raw(*ty, *code, *rest)
            .write(&mut out, payload)
            .unwrap(),
        L4::Icmp { ty, code, rest } => step
            .icmpv4_raw(*ty, *code, *rest)
            .write(&mut out, payload)
            .unwrap(),
        L4::Echo {
            request: true,
            id,
            seq,
        } if v6 => step
            .icmpv6_echo_request(*id, *seq)
            .write(&mut out, payload)
            .unwrap(),
        L4::Echo {
            request: false,
            id,
            seq,
        } if v6 => step
            .icmpv6_echo_reply(*id, *seq)
            .write(&mut out, payload)
            .unwrap(),
        L4::Echo {
            request: true,
            id,
            seq,
        } => step
            .icmpv4_echo_request(*id, *seq)
            .write(&mut out, payload)
            .unwrap(),
        L4::Echo {
            request: false,
            id,
            seq,
        } => step
            .icmpv4_echo_reply(*id, *seq)
            .write(&mut out, payload)
            .unwrap(),
        L4::Other(p) => step.write(&mut out, IpNumber(*p), payload).unwrap(),
    }
    out
}

/// A serialised packet and where its IP datagram sits in it.
#[derive(Debug)]
struct Built {
    link: LinkType,
    bytes: Vec<u8>,
    /// Offset of the IP header.
    ip_start: usize,
    /// End of the IP datagram (before any padding).
    ip_end: usize,
}

fn build(spec: &Spec) -> Built {
    let ip = ip_headers(&spec.l3);
    let v6 = spec.l3.is_v6();
    let (link, mut bytes, ip_start) = match spec.link {
        Link::Raw => (LinkType::Raw, finish(PacketBuilder::ip(ip), spec), 0),
        Link::Ethernet { vlans } => {
            let eth = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
            let bytes = match vlans {
                0 => finish(eth.ip(ip), spec),
                1 => finish(eth.single_vlan(VlanId::try_new(10).unwrap()).ip(ip), spec),
                _ => finish(
                    eth.double_vlan(VlanId::try_new(10).unwrap(), VlanId::try_new(20).unwrap())
                        .ip(ip),
                    spec,
                ),
            };
            (LinkType::Ethernet, bytes, 14 + 4 * usize::from(vlans))
        }
        Link::Sll => {
            let mut addr = [0u8; 8];
            addr[..6].copy_from_slice(&SRC_MAC);
            let sll = PacketBuilder::linux_sll(LinuxSllPacketType::HOST, 6, addr);
            (LinkType::LinuxSll, finish(sll.ip(ip), spec), 16)
        }
        Link::Sll2 | Link::Null { .. } => {
            let et = if v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 };
            let (link, fam, be) = match spec.link {
                Link::Null {
                    family6,
                    big_endian,
                } => (LinkType::Null, if v6 { family6 } else { 2 }, big_endian),
                _ => (LinkType::LinuxSll2, 0, false),
            };
            let mut bytes = link_prefix(link, et, 0, fam, be);
            let start = bytes.len();
            bytes.extend_from_slice(&finish(PacketBuilder::ip(ip), spec));
            (link, bytes, start)
        }
    };
    let ip_end = bytes.len();
    // An IPv6 header with payload length 0 is read to the end of the
    // capture (the jumbogram note in `decode_ipv6`), so padding after it
    // would count as payload where etherparse reads none. Known and
    // reported; not asserted either way here.
    let v6_empty = v6 && ip_end - ip_start == 40;
    if matches!(spec.link, Link::Ethernet { .. }) && !v6_empty {
        bytes.extend_from_slice(&spec.padding);
    }
    Built {
        link,
        bytes,
        ip_start,
        ip_end,
    }
}

/// What etherparse says about a packet, in our terms.
#[derive(Debug, PartialEq)]
struct Reference {
    src: IpAddr,
    dst: IpAddr,
    proto: IpProto,
    ttl: u8,
    ip_len: u16,
    ports: Option<(u16, u16)>,
    /// (flags byte, window, options length)
    tcp: Option<(u8, u16, usize)>,
    icmp: Option<(u8, u8)>,
    payload: Vec<u8>,
}

fn reference(b: &Built) -> Reference {
    let sliced = match b.link {
        LinkType::Ethernet => SlicedPacket::from_ethernet(&b.bytes),
        LinkType::LinuxSll => SlicedPacket::from_linux_sll(&b.bytes),
        _ => SlicedPacket::from_ip(&b.bytes[b.ip_start..]),
    }
    .unwrap();
    let (src, dst, ttl, ip_len, ip_payload) = match sliced.net.as_ref().unwrap() {
        NetSlice::Ipv4(v4) => {
            let h = v4.header();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                h.ttl(),
                h.total_len(),
                v4.payload().clone(),
            )
        }
        NetSlice::Ipv6(v6) => {
            let h = v6.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                h.hop_limit(),
                40 + h.payload_length(),
                v6.payload().clone(),
            )
        }
        NetSlice::Arp(_) => unreachable!("built as IP"),
    };
    let mut r = Reference {
        src,
        dst,
        proto: IpProto::from_number(ip_payload.ip_number.0),
        ttl,
        ip_len,
        ports: None,
        tcp: None,
        icmp: None,
        payload: ip_payload.payload.to_vec(),
    };
    match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => {
            r.ports = Some((t.source_port(), t.destination_port()));
            let bits = [
                (t.fin(), TcpFlags::FIN),
                (t.syn(), TcpFlags::SYN),
                (t.rst(), TcpFlags::RST),
                (t.psh(), TcpFlags::PSH),
                (t.ack(), TcpFlags::ACK),
                (t.urg(), TcpFlags::URG),
                (t.ece(), TcpFlags::ECE),
                (t.cwr(), TcpFlags::CWR),
            ];
            let flags = bits
                .iter()
                .filter(|(set, _)| *set)
                .fold(0, |acc, (_, bit)| acc | bit);
            r.tcp = Some((flags, t.window_size(), t.options().len()));
            r.payload = t.payload().to_vec();
        }
        Some(TransportSlice::Udp(u)) => {
            r.ports = Some((u.source_port(), u.destination_port()));
            r.payload = u.payload().to_vec();
        }
        Some(TransportSlice::Icmpv4(i)) => {
            r.icmp = Some((i.type_u8(), i.code_u8()));
            r.payload = i.payload().to_vec();
        }
        Some(TransportSlice::Icmpv6(i)) => {
            r.icmp = Some((i.type_u8(), i.code_u8()));
            r.payload = i.payload().to_vec();
        }
        Some(other) => panic!("unexpected transport {other:?}"),
        None => {}
    }
    r
}

fn ours(s: &PacketSummary, data: &[u8]) -> Reference {
    Reference {
        src: s.src,
        dst: s.dst,
        proto: s.proto,
        ttl: s.ttl,
        ip_len: s.ip_len,
        ports: s.src_port.zip(s.dst_port),
        tcp: (s.proto == IpProto::Tcp).then_some((
            s.tcp_flags.0,
            s.tcp_window,
            usize::from(s.tcp_options_len),
        )),
        icmp: s.icmp,
        payload: s.payload(data).to_vec(),
    }
}

fn spec_addrs(l3: &L3) -> (IpAddr, IpAddr) {
    match l3 {
        L3::V4 { src, dst, .. } => (Ipv4Addr::from(*src).into(), Ipv4Addr::from(*dst).into()),
        L3::V6 { src, dst, .. } => (Ipv6Addr::from(*src).into(), Ipv6Addr::from(*dst).into()),
    }
}

/// The transport header length our decoder requires before it answers
/// anything but `Truncated`.
fn needed_l4(l4: &L4) -> usize {
    match l4 {
        L4::Tcp { options, .. } => 20 + options.len().div_ceil(4) * 4,
        L4::Udp { .. } => 8,
        L4::Icmp { .. } | L4::Echo { .. } => 4,
        L4::Other(_) => 0,
    }
}

fn l4_header_len(l4: &L4) -> usize {
    match l4 {
        L4::Icmp { .. } | L4::Echo { .. } => 8,
        other => needed_l4(other),
    }
}

proptest! {
    #![proptest_config(config(4_000))]

    /// Property 2: differential against etherparse on everything it builds.
    #[test]
    fn agrees_with_etherparse(spec in spec_strategy()) {
        let b = build(&spec);
        let expected = reference(&b);
        let s = decode_checked(b.link, &b.bytes)?.map_err(|e| TestCaseError::fail(format!("{e:?} for {b:?}")))?;
        prop_assert_eq!(ours(&s, &b.bytes), expected);
        // And against the spec itself, so a shared misreading cannot pass.
        prop_assert_eq!((s.src, s.dst), spec_addrs(&spec.l3));
        prop_assert_eq!(s.payload(&b.bytes), &spec.payload[..]);
        prop_assert_eq!(s.fragment, Fragment::None);
        prop_assert!(!s.truncated);
        prop_assert_eq!(usize::from(s.ip_len), b.ip_end - b.ip_start);
        match &spec.l4 {
            L4::Tcp { src, dst, flags, window, options, .. } => {
                prop_assert_eq!((s.src_port, s.dst_port), (Some(*src), Some(*dst)));
                prop_assert_eq!(s.tcp_flags, TcpFlags(*flags));
                prop_assert_eq!(s.tcp_window, *window);
                prop_assert_eq!(usize::from(s.tcp_options_len), options.len().div_ceil(4) * 4);
            }
            L4::Udp { src, dst } => prop_assert_eq!((s.src_port, s.dst_port), (Some(*src), Some(*dst))),
            L4::Icmp { ty, code, .. } => prop_assert_eq!(s.icmp, Some((*ty, *code))),
            L4::Echo { request, .. } => {
                let ty = match (spec.l3.is_v6(), request) {
                    (false, true) => 8,
                    (false, false) => 0,
                    (true, true) => 128,
                    (true, false) => 129,
                };
                prop_assert_eq!(s.icmp, Some((ty, 0)));
            }
            L4::Other(p) => prop_assert_eq!(s.proto, IpProto::Other(*p)),
        }
    }

    /// Property 1 (truncation): a valid packet cut anywhere is `Truncated`
    /// until its transport header is complete, and from then on decodes to
    /// the same fields with the payload cut accordingly and `truncated` set.
    #[test]
    fn truncated_valid_packets(mut spec in spec_strategy(), cut in any::<prop::sample::Index>()) {
        spec.padding.clear();
        let b = build(&spec);
        let full = decode(b.link, &b.bytes).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let payload_at = b.bytes.len() - spec.payload.len();
        let l4_at = payload_at - l4_header_len(&spec.l4);
        let needed = l4_at + needed_l4(&spec.l4);
        let cut = cut.index(b.bytes.len() + 1);
        let data = &b.bytes[..cut];
        match decode_checked(b.link, data)? {
            Err(e) => {
                prop_assert!(cut < needed, "{:?} at cut {} (needed {})", e, cut, needed);
                prop_assert_eq!(e, DecodeError::Truncated);
                // The packet's lengths announce more: the capture was cut,
                // the packet was not built wrong.
                let u = decode_partial(b.link, data).unwrap_err();
                prop_assert!(u.cut, "{:?} at cut {}", u, cut);
            }
            Ok(s) => {
                prop_assert!(cut >= needed, "decoded at cut {} (needed {})", cut, needed);
                prop_assert_eq!(s.truncated, cut < b.bytes.len());
                prop_assert_eq!(s.payload(data), &spec.payload[..cut.saturating_sub(payload_at)]);
                let same = |x: &PacketSummary| {
                    (x.src, x.dst, x.proto, x.src_port, x.dst_port, x.tcp_flags, x.tcp_window, x.icmp, x.ttl, x.ip_len)
                };
                prop_assert_eq!(same(&s), same(&full));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Property 3: fragments.
// ---------------------------------------------------------------------------

/// A bare IP packet (no link layer, no padding) over `l3`.
fn raw_spec(l3: impl Strategy<Value = L3>) -> impl Strategy<Value = Spec> {
    (l3, l4_strategy(), vec(any::<u8>(), 0..64)).prop_map(|(l3, l4, payload)| Spec {
        link: Link::Raw,
        l3,
        l4,
        payload,
        padding: Vec::new(),
    })
}

/// Checks the summary of a fragment of `whole` (the unfragmented decode).
fn check_fragment(
    r: Result<PacketSummary, DecodeError>,
    whole: &PacketSummary,
    whole_data: &[u8],
    offset: u16,
    more: bool,
    data: &[u8],
    ip_payload: &[u8],
) -> Result<(), TestCaseError> {
    if offset == 0 {
        let s = r.map_err(|e| TestCaseError::fail(format!("first fragment: {e:?}")))?;
        prop_assert_eq!(
            s.fragment,
            if more {
                Fragment::First
            } else {
                Fragment::None
            }
        );
        prop_assert_eq!((s.src_port, s.dst_port), (whole.src_port, whole.dst_port));
        prop_assert_eq!(s.tcp_flags, whole.tcp_flags);
        prop_assert_eq!(s.icmp, whole.icmp);
        prop_assert_eq!(s.payload(data), whole.payload(whole_data));
    } else if whole.proto == IpProto::Tcp && offset == 1 {
        prop_assert_eq!(r, Err(DecodeError::TinyFragment));
    } else {
        let s = r.map_err(|e| TestCaseError::fail(format!("non-first fragment: {e:?}")))?;
        prop_assert_eq!(s.fragment, Fragment::NonFirst { offset });
        prop_assert_eq!(s.proto, whole.proto);
        prop_assert_eq!((s.src_port, s.dst_port), (None, None));
        prop_assert_eq!(s.tcp_flags, TcpFlags(0));
        prop_assert_eq!(s.icmp, None);
        // Everything after the IP headers is fragment data.
        prop_assert_eq!(s.payload(data), ip_payload);
    }
    Ok(())
}

/// Fragment offsets: 0, 1 and small values often, anything up to 8191.
fn frag_offset() -> impl Strategy<Value = u16> {
    prop_oneof![Just(0u16), Just(1), 2u16..16, 0u16..0x2000]
}

proptest! {
    #![proptest_config(config(4_000))]

    #[test]
    fn ipv4_fragments(spec in raw_spec(l3_v4()), offset in frag_offset(), more in any::<bool>(), df in any::<bool>()) {
        let b = build(&spec);
        let whole = decode(LinkType::Raw, &b.bytes).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let mut data = b.bytes.clone();
        let field = offset | if more { 0x2000 } else { 0 } | if df { 0x4000 } else { 0 };
        data[6..8].copy_from_slice(&field.to_be_bytes());
        let ihl = usize::from(data[0] & 0x0f) * 4;
        let r = decode_checked(LinkType::Raw, &data)?;
        check_fragment(r, &whole, &b.bytes, offset, more, &data, &data[ihl..])?;
    }

    /// A first fragment whose transport header does not fit is refused;
    /// an unfragmented datagram cut the same way is just truncated.
    #[test]
    fn tiny_first_fragment(spec in raw_spec(l3_v4()), keep in any::<prop::sample::Index>()) {
        let need = needed_l4(&spec.l4);
        prop_assume!(need > 0);
        let b = build(&spec);
        let ihl = usize::from(b.bytes[0] & 0x0f) * 4;
        let keep = keep.index(need);
        let mut data = b.bytes[..ihl + keep].to_vec();
        data[2..4].copy_from_slice(&((ihl + keep) as u16).to_be_bytes());
        prop_assert_eq!(decode_checked(LinkType::Raw, &data)?, Err(DecodeError::Truncated));
        data[6] |= 0x20;
        prop_assert_eq!(decode_checked(LinkType::Raw, &data)?, Err(DecodeError::TinyFragment));
    }

    #[test]
    fn ipv6_fragments(
        spec in raw_spec(l3_v6(false)),
        offset in frag_offset(),
        more in any::<bool>(),
        id in any::<u32>(),
    ) {
        let b = build(&spec);
        let whole = decode(LinkType::Raw, &b.bytes).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let IpHeaders::Ipv6(h, mut exts) = ip_headers(&spec.l3) else { unreachable!() };
        exts.fragment = Some(Ipv6FragmentHeader::new(
            IpNumber::UDP,
            IpFragOffset::try_new(offset).unwrap(),
            more,
            id,
        ));
        let data = finish(PacketBuilder::ip(IpHeaders::Ipv6(h, exts)), &spec);
        prop_assert_eq!(data.len(), b.bytes.len() + 8);
        let after_frag = data.len() - (b.bytes.len() - 40 - ext_len(&spec.l3)) ;
        let r = decode_checked(LinkType::Raw, &data)?;
        check_fragment(r, &whole, &b.bytes, offset, more, &data, &data[after_frag..])?;
    }
}

/// Bytes of IPv6 extension headers a spec asks for.
fn ext_len(l3: &L3) -> usize {
    match l3 {
        L3::V4 { .. } => 0,
        L3::V6 {
            hbh,
            dst_opts,
            routing,
            auth,
            ..
        } => {
            [hbh, dst_opts, routing]
                .iter()
                .flat_map(|h| h.as_ref())
                .map(|b| b.len() + 2)
                .sum::<usize>()
                + auth.as_ref().map_or(0, |icv| 12 + icv.len())
        }
    }
}

// ---------------------------------------------------------------------------
// Property 4: IPv6 extension chains.
// ---------------------------------------------------------------------------

/// One extension header: its type and its full bytes (next header is
/// patched in when the chain is assembled).
fn ext_header() -> impl Strategy<Value = (u8, Vec<u8>)> {
    let eightish = (
        prop::sample::select(vec![0u8, 43, 60, 135, 139, 140]),
        0usize..4,
        any::<u8>(),
    )
        .prop_map(|(ty, units, fill)| {
            let mut h = vec![0, units as u8];
            h.resize(8 * (units + 1), fill);
            (ty, h)
        });
    // AH: payload length in 4-byte units minus 2; at least 12 bytes.
    let ah = (1usize..6, any::<u8>()).prop_map(|(len, fill)| {
        let mut h = vec![0, len as u8];
        h.resize(4 * (len + 2), fill);
        (51u8, h)
    });
    // An atomic fragment (offset 0, M clear, RFC 6946): not a fragment.
    let frag = any::<u32>().prop_map(|id| {
        let mut h = vec![0, 0, 0, 0];
        h.extend_from_slice(&id.to_be_bytes());
        (44u8, h)
    });
    prop_oneof![4 => eightish, 1 => ah, 1 => frag]
}

/// An IPv6 packet with `exts` in front of UDP `sport -> dport` and `payload`.
fn v6_chain(exts: &[(u8, Vec<u8>)], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (_, h)) in exts.iter().enumerate() {
        let next = exts.get(i + 1).map_or(17, |(ty, _)| *ty);
        body.push(next);
        body.extend_from_slice(&h[1..]);
    }
    body.extend_from_slice(&sport.to_be_bytes());
    body.extend_from_slice(&dport.to_be_bytes());
    body.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(payload);
    let first = exts.first().map_or(17, |(ty, _)| *ty);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(body.len() as u16).to_be_bytes());
    p.extend_from_slice(&[first, 64]);
    p.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).octets());
    p.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets());
    p.extend_from_slice(&body);
    p
}

proptest! {
    #![proptest_config(config(4_000))]

    #[test]
    fn ipv6_extension_chains(
        exts in vec(ext_header(), 0..=MAX_IPV6_EXT_HEADERS + 3),
        sport in any::<u16>(),
        dport in any::<u16>(),
        payload in vec(any::<u8>(), 0..16),
        cut in any::<prop::sample::Index>(),
    ) {
        let p = v6_chain(&exts, sport, dport, &payload);
        let r = decode_checked(LinkType::Raw, &p)?;
        if exts.len() <= MAX_IPV6_EXT_HEADERS {
            let s = r.map_err(|e| TestCaseError::fail(format!("{} headers: {e:?}", exts.len())))?;
            prop_assert_eq!(s.proto, IpProto::Udp);
            prop_assert_eq!((s.src_port, s.dst_port), (Some(sport), Some(dport)));
            prop_assert_eq!(s.fragment, Fragment::None);
            prop_assert_eq!(s.payload(&p), &payload[..]);
        } else {
            prop_assert_eq!(r, Err(DecodeError::TooManyHeaders));
        }
        // Cut inside the headers: an error, never a panic; `Truncated`
        // while the chain itself is within bounds.
        let transport_end = p.len() - payload.len();
        let cut = cut.index(transport_end);
        let r = decode_checked(LinkType::Raw, &p[..cut])?;
        if exts.len() <= MAX_IPV6_EXT_HEADERS {
            prop_assert_eq!(r, Err(DecodeError::Truncated));
        } else {
            prop_assert!(r.is_err());
        }
    }

    /// Chains of random headers with random lengths and next-header bytes
    /// (extension types most of the time): whatever comes back is consistent.
    #[test]
    fn random_ipv6_chains_never_panic(
        hops in vec((interesting_proto(), any::<u8>(), vec(any::<u8>(), 0..24)), 0..12),
        first in interesting_proto(),
        plen in prop_oneof![Just(None), any::<u16>().prop_map(Some)],
    ) {
        let mut body = Vec::new();
        for (next, len, fill) in &hops {
            body.push(*next);
            body.push(*len);
            body.extend_from_slice(fill);
        }
        let plen = plen.unwrap_or(body.len() as u16);
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&plen.to_be_bytes());
        p.extend_from_slice(&[first, 64]);
        p.extend_from_slice(&[0x20; 32]);
        p.extend_from_slice(&body);
        check_any(LinkType::Raw, &p)?;
    }
}

// ---------------------------------------------------------------------------
// VLAN tag limit.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(2_000))]

    /// Up to `MAX_VLAN_TAGS` tags (any mix of 802.1Q, 802.1ad and the old
    /// 0x9100) decode to exactly what the bare packet decodes to; one more
    /// is `TooManyHeaders`.
    #[test]
    fn vlan_tag_limit(
        spec in raw_spec(l3_strategy()),
        tpids in vec(prop::sample::select(vec![0x8100u16, 0x88a8, 0x9100]), 0..=MAX_VLAN_TAGS + 2),
        tci in any::<u16>(),
    ) {
        let b = build(&spec);
        let bare = decode(LinkType::Raw, &b.bytes).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let mut frame = DST_MAC.to_vec();
        frame.extend_from_slice(&SRC_MAC);
        for tpid in &tpids {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&tci.to_be_bytes());
        }
        let et = if spec.l3.is_v6() { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 };
        frame.extend_from_slice(&et.to_be_bytes());
        let l3 = frame.len();
        frame.extend_from_slice(&b.bytes);
        let r = decode_checked(LinkType::Ethernet, &frame)?;
        if tpids.len() <= MAX_VLAN_TAGS {
            let s = r.map_err(|e| TestCaseError::fail(format!("{} tags: {e:?}", tpids.len())))?;
            prop_assert_eq!(ours(&s, &frame), ours(&bare, &b.bytes));
            prop_assert_eq!(s.payload_len(), bare.payload_len());
            prop_assert_eq!(s.payload(&frame), &frame[l3 + b.bytes.len() - bare.payload_len()..]);
        } else {
            prop_assert_eq!(r, Err(DecodeError::TooManyHeaders));
        }
    }
}
