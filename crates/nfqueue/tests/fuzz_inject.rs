//! Fuzzing the NXDOMAIN answer to a queued packet
//! (`inject::build_answer`) on the stable toolchain
//! (`portcullis-fuzzkit`). `PORTCULLIS_FUZZ_SECS` sets the time (default
//! 2 s); see `fuzz/README.md`.
//!
//! An input is either a raw L3 packet (first byte with the top bit set),
//! or a recipe the target builds a well-formed packet from (so mutations
//! reach the DNS and TCP logic instead of stopping at the IP header):
//! byte 0 picks UDP/TCP, IPv4/IPv6 and the addresses, byte 1 the TCP
//! flags, bytes 2..10 the sequence and acknowledgement numbers, byte 10
//! whether a timestamp option is sent, the rest is the DNS message (for
//! TCP given its length prefix).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

#[path = "../../wire/tests/support/nxdomain_check.rs"]
mod nxdomain_check;

use std::net::{IpAddr, SocketAddr};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};
use nxdomain_check::check_nxdomain;
use portcullis_fuzzkit::{bucket, fuzz_bytes, signature, Mutator};
use portcullis_nfqueue::inject::{build_answer, Answer};
use portcullis_nfqueue::InjectError;
use portcullis_traffic::{dns_query, dns_tcp, dns_udp, raw_l3};
use portcullis_wire::dns::tcp_message;

const RAW: u8 = 0x80;
const TCP: u8 = 0x01;
const V6: u8 = 0x02;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// Client and resolver addresses; byte 0 bits 2-3 pick odd ones (a
/// multicast destination, an unspecified source, link-local).
fn endpoints(sel: u8, v6: bool) -> (IpAddr, IpAddr) {
    let pick = |a: &str, b: &str| (a.parse().unwrap(), b.parse().unwrap());
    match ((sel >> 2) & 3, v6) {
        (0, false) => pick("198.18.0.1", "198.18.0.2"),
        (1, false) => pick("198.18.0.1", "224.0.0.251"),
        (2, false) => pick("0.0.0.0", "198.18.0.2"),
        (_, false) => pick("198.18.0.1", "255.255.255.255"),
        (0, true) => pick("2001:2::1", "2001:2::2"),
        (1, true) => pick("2001:2::1", "ff02::fb"),
        (2, true) => pick("::", "2001:2::2"),
        (_, true) => pick("fe80::1", "fe80::2"),
    }
}

/// The L3 packet an input stands for, and the DNS message it carries
/// (after the TCP length prefix).
fn packet(input: &[u8]) -> Option<Vec<u8>> {
    let (&sel, rest) = input.split_first()?;
    if sel & RAW != 0 {
        return Some(rest.to_vec());
    }
    let fixed = rest.get(..10)?;
    let dns = &rest[10..];
    let flags = fixed[0];
    let seq = u32::from_be_bytes(fixed[1..5].try_into().unwrap());
    let ack = u32::from_be_bytes(fixed[5..9].try_into().unwrap());
    let ts = fixed[9];
    let (client, resolver) = endpoints(sel, sel & V6 != 0);
    let builder = match (client, resolver) {
        (IpAddr::V4(c), IpAddr::V4(r)) => PacketBuilder::ipv4(c.octets(), r.octets(), 64),
        (IpAddr::V6(c), IpAddr::V6(r)) => PacketBuilder::ipv6(c.octets(), r.octets(), 64),
        _ => return None,
    };
    let mut out = Vec::new();
    if sel & TCP == 0 {
        builder.udp(40000, 53).write(&mut out, dns).ok()?;
        return Some(out);
    }
    let mut payload = (dns.len() as u16).to_be_bytes().to_vec();
    payload.extend_from_slice(dns);
    let mut step = builder.tcp(40001, 53, seq, 502);
    if flags & SYN != 0 {
        step = step.syn();
    }
    if flags & ACK != 0 {
        step = step.ack(ack);
    }
    if flags & FIN != 0 {
        step = step.fin();
    }
    if flags & RST != 0 {
        step = step.rst();
    }
    if flags & PSH != 0 {
        step = step.psh();
    }
    if ts != 0 {
        step = step
            .options(&[
                TcpOptionElement::Noop,
                TcpOptionElement::Noop,
                TcpOptionElement::Timestamp(u32::from(ts) * 1000, 77),
            ])
            .ok()?;
    }
    step.write(&mut out, &payload).ok()?;
    Some(out)
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

/// The transport checksum of a packet the builder wrote is right.
fn checksum_ok(s: &SlicedPacket<'_>) -> bool {
    match (&s.net, &s.transport) {
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(u))) => {
            let h = ip.header().to_header();
            h.calc_header_checksum() == h.header_checksum
                && u.to_header().calc_checksum_ipv4(&h, u.payload()).ok() == Some(u.checksum())
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Udp(u))) => {
            let h = ip.header().to_header();
            u.to_header().calc_checksum_ipv6(&h, u.payload()).ok() == Some(u.checksum())
        }
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) => {
            let h = ip.header().to_header();
            h.calc_header_checksum() == h.header_checksum
                && t.to_header().calc_checksum_ipv4(&h, t.payload()).ok() == Some(t.checksum())
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Tcp(t))) => {
            let h = ip.header().to_header();
            t.to_header().calc_checksum_ipv6(&h, t.payload()).ok() == Some(t.checksum())
        }
        _ => false,
    }
}

/// No panic; on success the answer packets are well-formed IP with
/// correct checksums, addressed back to the client, and carry an
/// NXDOMAIN with the query's id and questions (`check_nxdomain`); TCP
/// gets the answer with the flow's numbers and a reset to the resolver,
/// a SYN only a RST|ACK. On error nothing is built.
fn target(input: &[u8]) -> Vec<u64> {
    let Some(l3) = packet(input) else {
        return Vec::new();
    };
    let mut answer = Answer::default();
    let r = build_answer(&l3, &mut answer);
    let out: Vec<&[u8]> = answer.packets().collect();
    let mut shape = None;
    match &r {
        Err(_) => assert!(out.is_empty(), "packets left after an error"),
        Ok(()) => {
            let q = SlicedPacket::from_ip(&l3).expect("an answered query slices");
            let (client, resolver) = addrs(&q);
            let first = SlicedPacket::from_ip(out[0]).expect("the answer slices");
            assert!(checksum_ok(&first), "bad checksum in the answer");
            assert_eq!(addrs(&first), (resolver, client));
            match (&q.transport, &first.transport) {
                (Some(TransportSlice::Udp(qu)), Some(TransportSlice::Udp(au))) => {
                    assert_eq!(out.len(), 1);
                    assert_eq!(au.source_port(), qu.destination_port());
                    assert_eq!(au.destination_port(), qu.source_port());
                    check_nxdomain(qu.payload(), au.payload());
                    shape = Some(0);
                }
                (Some(TransportSlice::Tcp(qt)), Some(TransportSlice::Tcp(at))) => {
                    assert_eq!(at.source_port(), qt.destination_port());
                    assert_eq!(at.destination_port(), qt.source_port());
                    let len = qt.payload().len() as u32;
                    if qt.syn() {
                        assert_eq!(out.len(), 1);
                        assert!(at.rst() && at.ack() && at.payload().is_empty());
                        let want = qt
                            .sequence_number()
                            .wrapping_add(len + 1 + u32::from(qt.fin()));
                        assert_eq!(at.acknowledgment_number(), want);
                        shape = Some(1);
                    } else {
                        assert!(qt.ack() && !qt.rst());
                        assert_eq!(out.len(), 2);
                        assert!(at.psh() && at.ack() && at.fin() && !at.rst());
                        assert_eq!(at.sequence_number(), qt.acknowledgment_number());
                        let consumed = len + u32::from(qt.fin());
                        assert_eq!(
                            at.acknowledgment_number(),
                            qt.sequence_number().wrapping_add(consumed)
                        );
                        let msg = tcp_message(qt.payload()).unwrap();
                        let a = at.payload();
                        let alen = usize::from(u16::from_be_bytes([a[0], a[1]]));
                        assert_eq!(alen, a.len() - 2, "length prefix");
                        check_nxdomain(msg, &a[2..]);
                        let rst = SlicedPacket::from_ip(out[1]).expect("the reset slices");
                        assert!(checksum_ok(&rst), "bad checksum in the reset");
                        assert_eq!(addrs(&rst), (client, resolver));
                        let Some(TransportSlice::Tcp(rt)) = &rst.transport else {
                            panic!("the reset is not TCP");
                        };
                        assert!(rt.rst() && rt.payload().is_empty());
                        assert_eq!(rt.sequence_number(), qt.sequence_number());
                        shape = Some(2);
                    }
                }
                _ => panic!("the answer's transport differs from the query's"),
            }
        }
    }
    let kind = input.first().map(|b| b & (RAW | TCP | V6 | 0x0c));
    let tcp_flags = input.get(1).filter(|_| input[0] & (RAW | TCP) == TCP);
    let dns = r.as_ref().map_err(|e| match e {
        InjectError::Dns(d) => Some(*d),
        _ => None,
    });
    let err = r.as_ref().map_err(std::mem::discriminant);
    vec![
        signature(&("result", kind, err, dns, shape)),
        signature(&("tcp", tcp_flags, err, shape)),
        signature(&("len", kind, err, bucket(l3.len()))),
    ]
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn recipe(sel: u8, flags: u8, ts: u8, dns: &[u8]) -> Vec<u8> {
    let mut v = vec![sel, flags, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0x10, 0, ts];
    v.extend_from_slice(dns);
    v
}

fn seeds() -> Vec<Vec<u8>> {
    let a = dns_query(0x1234, "ads.example", 1);
    let mut edns = dns_query(7, "www.tracker.example", 28);
    edns[11] = 1;
    edns.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0]);
    let raw = |frame: Vec<u8>| [&[RAW][..], raw_l3(&frame)].concat();
    vec![
        recipe(0, 0, 0, &a),
        recipe(V6, 0, 0, &edns),
        recipe(TCP, PSH | ACK, 1, &a),
        recipe(TCP | V6, PSH | ACK | FIN, 0, &edns),
        recipe(TCP, SYN, 0, &a),
        recipe(V6 | 0x0c, 0, 0, &a),
        recipe(0x04, 0, 0, &a),
        raw(dns_udp(
            addr("198.18.0.1:40000"),
            addr("198.18.0.2:53"),
            3,
            "a.example",
        )),
        raw(dns_tcp(
            addr("[2001:2::1]:40001"),
            addr("[2001:2::2]:53"),
            4,
            "b.example",
        )),
    ]
}

#[test]
fn fuzz_inject_answer() {
    let mutator = Mutator {
        max_len: 1024,
        dict: vec![
            vec![0xc0, 0x0c],
            vec![0xc0, 0x00],
            vec![0x3f],
            vec![0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0],
            vec![RAW],
        ],
        netlink: false,
    };
    for s in seeds() {
        let l3 = packet(&s).unwrap();
        let mut answer = Answer::default();
        let r = build_answer(&l3, &mut answer);
        // The one to a multicast address is refused; every other one is
        // answered (link-local included).
        assert_eq!(r.is_ok(), s[0] != 0x04, "{r:?}");
    }
    fuzz_bytes("inject_answer", seeds(), mutator, target);
}
