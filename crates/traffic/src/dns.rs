//! DNS messages and the frames that carry them.

use std::net::{IpAddr, SocketAddr};

use crate::packet::{self, flags, TcpFields};

/// Query type A (IPv4 address).
pub const QTYPE_A: u16 = 1;
/// Query type TXT.
pub const QTYPE_TXT: u16 = 16;
/// Query type AAAA (IPv6 address).
pub const QTYPE_AAAA: u16 = 28;

const CLASS_IN: u16 = 1;

/// Appends `name` in wire format: labels exactly as given (case preserved),
/// a trailing dot optional, `""` or `"."` meaning the root.
///
/// # Panics
/// If a label is empty or longer than 63 bytes, or the encoded name is
/// longer than 255 bytes.
fn push_name(out: &mut Vec<u8>, name: &str) {
    let start = out.len();
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            assert!(
                !label.is_empty() && label.len() <= 63,
                "bad DNS label {label:?} in {name:?}"
            );
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    assert!(out.len() - start <= 255, "DNS name too long: {name:?}");
}

fn header(out: &mut Vec<u8>, id: u16, flags: u16, qd: u16, an: u16) {
    for v in [id, flags, qd, an, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// A standard recursive query (RD set) for `name`, class IN, with one
/// question and no other records.
///
/// # Panics
/// If `name` is not a valid DNS name (see [`dns_udp`]).
pub fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + name.len() + 6);
    header(&mut out, id, 0x0100, 1, 0);
    push_name(&mut out, name);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// The answer to [`dns_query`]: QR, RD and RA set, RCODE 0, the question
/// echoed, and one record per address in `answers` (A for IPv4, AAAA for
/// IPv6; the owner name is a compression pointer to the question, TTL 300).
/// An empty `answers` is a NODATA response.
///
/// # Panics
/// If `name` is not a valid DNS name or there are more than 1000 answers.
pub fn dns_response(id: u16, name: &str, qtype: u16, answers: &[IpAddr]) -> Vec<u8> {
    assert!(answers.len() <= 1000, "too many answers");
    let mut out = dns_query(id, name, qtype);
    // Flags: QR, RD, RA; ANCOUNT.
    out[2..4].copy_from_slice(&0x8180u16.to_be_bytes());
    out[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
    for a in answers {
        out.extend_from_slice(&[0xc0, 0x0c]);
        let (ty, rdata): (u16, Vec<u8>) = match a {
            IpAddr::V4(v) => (QTYPE_A, v.octets().to_vec()),
            IpAddr::V6(v) => (QTYPE_AAAA, v.octets().to_vec()),
        };
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&300u32.to_be_bytes());
        out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    out
}

/// An A query for `name` in a UDP datagram.
///
/// # Panics
/// If the families differ, or a label of `name` is empty or longer than 63
/// bytes, or the name is longer than 255 bytes encoded.
pub fn dns_udp(src: SocketAddr, dst: SocketAddr, id: u16, name: &str) -> Vec<u8> {
    packet::udp(src, dst, &dns_query(id, name, QTYPE_A))
}

/// An A query for `name` as one TCP segment (PSH|ACK) carrying the 2-byte
/// length prefix and the message, with the sequence numbers of the first
/// data segment after a handshake between `src` and `dst` (see
/// [`crate::isn`]).
///
/// # Panics
/// As [`dns_udp`].
pub fn dns_tcp(src: SocketAddr, dst: SocketAddr, id: u16, name: &str) -> Vec<u8> {
    let f = TcpFields {
        flags: flags::PSH | flags::ACK,
        seq: packet::isn(src, dst).wrapping_add(1),
        ack: packet::isn(dst, src).wrapping_add(1),
        window: 502,
    };
    packet::tcp_segment(
        src,
        dst,
        f,
        &[],
        &length_prefixed(&dns_query(id, name, QTYPE_A)),
    )
}

/// `msg` with the 2-byte length prefix DNS over TCP uses.
pub(crate) fn length_prefixed(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use etherparse::{SlicedPacket, TransportSlice};
    use simple_dns::{rdata::RData, Packet, PacketFlag, QTYPE, TYPE};

    #[test]
    fn query_parses_with_simple_dns_and_keeps_case() {
        let q = dns_query(0x1234, "Ads.Tracker.EXAMPLE", QTYPE_A);
        let p = Packet::parse(&q).unwrap();
        assert_eq!(p.id(), 0x1234);
        assert!(p.has_flags(PacketFlag::RECURSION_DESIRED));
        assert!(!p.has_flags(PacketFlag::RESPONSE));
        assert_eq!(p.questions.len(), 1);
        assert_eq!(p.questions[0].qname.to_string(), "Ads.Tracker.EXAMPLE");
        assert_eq!(p.questions[0].qtype, QTYPE::TYPE(TYPE::A));
        // Exact bytes for a small name.
        assert_eq!(
            dns_query(1, "a.bc.", QTYPE_AAAA),
            [0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 2, b'b', b'c', 0, 0, 28, 0, 1]
        );
    }

    #[test]
    fn response_parses_with_simple_dns() {
        let addrs: Vec<IpAddr> = vec!["198.19.1.2".parse().unwrap(), "2001:2::5".parse().unwrap()];
        let r = dns_response(7, "www.example.com", QTYPE_A, &addrs);
        let p = Packet::parse(&r).unwrap();
        assert!(p.has_flags(PacketFlag::RESPONSE));
        assert_eq!(p.answers.len(), 2);
        assert_eq!(p.answers[0].name.to_string(), "www.example.com");
        match &p.answers[0].rdata {
            RData::A(a) => assert_eq!(
                std::net::Ipv4Addr::from(a.address),
                "198.19.1.2".parse::<std::net::Ipv4Addr>().unwrap()
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(p.answers[1].rdata, RData::AAAA(_)));
    }

    #[test]
    fn root_name() {
        let p_bytes = dns_query(1, ".", QTYPE_A);
        let p = Packet::parse(&p_bytes).unwrap();
        assert_eq!(p.questions[0].qname.to_string(), "");
    }

    #[test]
    #[should_panic(expected = "bad DNS label")]
    fn empty_label_panics() {
        let _ = dns_query(1, "a..b", QTYPE_A);
    }

    #[test]
    fn udp_and_tcp_carry_the_query() {
        let c: SocketAddr = "198.18.0.1:41000".parse().unwrap();
        let r: SocketAddr = "198.18.0.53:53".parse().unwrap();
        let u = dns_udp(c, r, 9, "example.org");
        let p = SlicedPacket::from_ethernet(&u).unwrap();
        let Some(TransportSlice::Udp(udp)) = p.transport else {
            panic!()
        };
        assert_eq!(udp.destination_port(), 53);
        assert_eq!(
            Packet::parse(udp.payload()).unwrap().questions[0]
                .qname
                .to_string(),
            "example.org"
        );

        let t = dns_tcp(c, r, 9, "example.org");
        let p = SlicedPacket::from_ethernet(&t).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = p.transport else {
            panic!()
        };
        assert!(tcp.psh() && tcp.ack() && !tcp.syn());
        let body = tcp.payload();
        let len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        assert_eq!(len, body.len() - 2);
        assert_eq!(
            Packet::parse(&body[2..]).unwrap().questions[0]
                .qname
                .to_string(),
            "example.org"
        );
    }
}
