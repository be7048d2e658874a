//! Byte-exact encoding and decoding tests. Netlink headers are in host byte
//! order; the arrays here and in `fixtures` are for little-endian hosts.
#![cfg(target_endian = "little")]

use super::*;
use crate::fixtures::{DGRAM_PING4, DGRAM_THREE};
use portcullis_netlink::{NlMsg, NLMSG_HDRLEN};

/// The config message `Log::open` sends for `LogConfig::new(5)`, as strace
/// decoded it on the test machine: bind, copy packet 256, nlbufsiz 65536,
/// timeout 10, qthresh 64, flags `NFULNL_CFG_F_SEQ`, ack requested, seq 1.
static CONFIG_BIND: [u8; 72] = [
    0x48, 0x00, 0x00, 0x00, // len 72
    0x01, 0x04, // subsys 4 (ulog), msg 1 (config)
    0x05, 0x00, // NLM_F_REQUEST | NLM_F_ACK
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // seq 1, pid 0
    0x00, 0x00, 0x00, 0x05, // AF_UNSPEC, v0, group 5
    0x05, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, // NFULA_CFG_CMD: BIND (1 byte + pad)
    0x0a, 0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00,
    0x00, // MODE: 256, packet
    0x08, 0x00, 0x03, 0x00, 0x00, 0x01, 0x00, 0x00, // NLBUFSIZ 65536
    0x08, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x0a, // TIMEOUT 10
    0x08, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x40, // QTHRESH 64
    0x06, 0x00, 0x06, 0x00, 0x00, 0x01, 0x00, 0x00, // FLAGS: SEQ (be16 + pad)
];

/// A packet message built by hand: `(type, value)` attributes after an
/// nfgenmsg for `family` and group 5.
pub(crate) fn packet_msg(family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = MsgWriter::begin(&mut buf, NFULNL_MSG_PACKET, 0, 0, AF_UNSPEC, 5);
    for (ty, v) in attrs {
        w.attr(*ty, v);
    }
    w.finish();
    buf[NLMSG_HDRLEN] = family;
    buf
}

/// An IPv4 input packet with sequence number `seq` (none if `None`).
pub(crate) fn seq_packet(seq: Option<u32>) -> Vec<u8> {
    let seq_bytes = seq.map(u32::to_be_bytes);
    let mut attrs: Vec<(u16, &[u8])> = vec![(NFULA_PACKET_HDR, &[0x08, 0x00, 0x01, 0x00])];
    if let Some(s) = &seq_bytes {
        attrs.push((NFULA_SEQ, s));
    }
    attrs.push((NFULA_PAYLOAD, &IP4_UDP));
    packet_msg(2, &attrs)
}

/// A 29-byte IPv4/UDP packet 198.18.0.1:12345 -> 198.18.0.2:9999.
pub(crate) static IP4_UDP: [u8; 29] = [
    0x45, 0x00, 0x00, 0x1d, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc6, 0x12, 0x00, 0x01,
    0xc6, 0x12, 0x00, 0x02, 0x30, 0x39, 0x27, 0x0f, 0x00, 0x09, 0x00, 0x00, 0x78,
];

/// A message of type `ty` with a bare nfgenmsg.
pub(crate) fn control_msg(ty: u16, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let w = MsgWriter::begin(&mut buf, ty, 0, 0, AF_UNSPEC, 0);
    w.finish();
    buf.extend_from_slice(body);
    let len = buf.len() as u32;
    buf[..4].copy_from_slice(&len.to_ne_bytes());
    buf
}

#[test]
fn encodes_the_config_message_byte_for_byte() {
    let mut buf = Vec::new();
    encode_config(
        &mut buf,
        1,
        &ConfigRequest {
            group: 5,
            copy_range: 256,
            nlbufsiz: 65536,
            timeout: 10,
            qthresh: 64,
            flags: NFULNL_CFG_F_SEQ,
        },
    );
    assert_eq!(buf, CONFIG_BIND);
}

fn messages(buf: &[u8]) -> Vec<NlMsg<'_>> {
    NlMsgs::new(buf).map(|m| m.unwrap()).collect()
}

#[test]
fn decodes_a_captured_ipv4_packet() {
    let msgs = messages(&DGRAM_PING4);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].ty, NFULNL_MSG_PACKET);
    let p = decode_packet(msgs[0].payload).unwrap();
    assert_eq!(p.group, 5);
    assert_eq!(p.family, 2);
    assert_eq!(p.hook, Hook::Input);
    assert_eq!(p.hw_protocol, 0x0800);
    assert_eq!(p.indev, Some(2));
    assert_eq!(p.outdev, None);
    assert_eq!(p.mark, 0);
    assert_eq!(p.seq, Some(0));
    assert_eq!(p.seq_global, None);
    assert_eq!(p.uid, None);
    assert_eq!(
        p.timestamp_micros,
        Some(0x6b14_ebd8 * 1_000_000 + 0x000a_13f3)
    );
    let (addr, len) = p.hw_addr.unwrap();
    assert_eq!(
        &addr[..usize::from(len)],
        &[0x5e, 0xfa, 0x7c, 0x0f, 0x2d, 0x79]
    );
    let prefix = &msgs[0].payload[p.prefix.clone().unwrap()];
    assert_eq!(prefix, b"pc-new");
    let payload = &msgs[0].payload[p.payload.clone()];
    assert_eq!(payload.len(), 84);
    // IPv4, ICMP, 198.18.0.1 -> 198.18.0.2, echo request.
    assert_eq!(payload[0], 0x45);
    assert_eq!(payload[9], 1);
    assert_eq!(&payload[12..20], &[198, 18, 0, 1, 198, 18, 0, 2]);
    assert_eq!(payload[20], 8);
}

#[test]
fn decodes_a_captured_batch_of_three_and_its_done() {
    let msgs = messages(&DGRAM_THREE);
    let types: Vec<u16> = msgs.iter().map(|m| m.ty).collect();
    assert_eq!(
        types,
        [
            NFULNL_MSG_PACKET,
            NFULNL_MSG_PACKET,
            NFULNL_MSG_PACKET,
            NLMSG_DONE
        ]
    );
    let p: Vec<PacketMeta> = msgs[..3]
        .iter()
        .map(|m| decode_packet(m.payload).unwrap())
        .collect();
    // ICMPv6 echo on input.
    assert_eq!(
        (p[0].family, p[0].hook, p[0].hw_protocol),
        (10, Hook::Input, 0x86dd)
    );
    assert_eq!(p[0].seq, Some(1));
    assert_eq!(p[0].payload.len(), 104);
    assert!(p[0].timestamp_micros.is_some());
    // ICMP echo on output: outdev, uid/gid, no prefix, no timestamp, cut
    // to the rule's snaplen 40.
    assert_eq!((p[1].family, p[1].hook), (2, Hook::Output));
    assert_eq!((p[1].indev, p[1].outdev), (None, Some(2)));
    assert_eq!((p[1].uid, p[1].gid), (Some(0), Some(0)));
    assert_eq!(p[1].prefix, None);
    assert_eq!(p[1].timestamp_micros, None);
    assert_eq!(p[1].hw_addr, None);
    assert_eq!(p[1].seq, Some(2));
    assert_eq!(p[1].payload.len(), 40);
    // UDP "hi\n" to port 9999, 31 bytes, the message's last attribute.
    assert_eq!(p[2].seq, Some(3));
    let udp = &msgs[2].payload[p[2].payload.clone()];
    assert_eq!(udp.len(), 31);
    assert_eq!(&udp[22..24], &9999u16.to_be_bytes());
    assert_eq!(&udp[28..], b"hi\n");
}

#[test]
fn every_truncation_of_a_real_datagram_is_an_error_not_a_panic() {
    for cut in 0..DGRAM_THREE.len() {
        let buf = &DGRAM_THREE[..cut];
        let mut whole = 0;
        for m in NlMsgs::new(buf) {
            match m {
                Ok(m) if m.ty == NFULNL_MSG_PACKET => {
                    let p = decode_packet(m.payload).unwrap();
                    assert!(p.payload.end <= m.payload.len());
                    whole += 1;
                }
                Ok(_) => {}
                Err(b) => {
                    assert!(b.rest.len() <= buf.len());
                    let _ = salvage_seq(b.rest);
                }
            }
        }
        assert!(whole <= 3);
    }
}

#[test]
fn salvages_the_sequence_number_of_a_cut_message() {
    // Cut inside the second packet's payload: its header and seq survive.
    let first_len = 0xec;
    let cut = &DGRAM_THREE[..first_len + 100];
    let mut it = NlMsgs::new(cut);
    assert!(it.next().unwrap().is_ok());
    let broken = it.next().unwrap().unwrap_err();
    assert_eq!(broken.error, DecodeError::BadLength);
    assert_eq!(broken.ty, Some(NFULNL_MSG_PACKET));
    assert_eq!(salvage_seq(broken.rest), Some(2));
    assert!(it.next().is_none());
}

#[test]
fn message_framing_errors() {
    // Shorter than a header.
    let e = NlMsgs::new(&[1, 0, 0]).next().unwrap().unwrap_err();
    assert_eq!(e.error, DecodeError::Truncated);
    // nlmsg_len smaller than the header, or larger than the buffer.
    for len in [0u32, 15, 10_000] {
        let mut m = seq_packet(Some(1));
        m[..4].copy_from_slice(&len.to_ne_bytes());
        let e = NlMsgs::new(&m).next().unwrap().unwrap_err();
        assert_eq!(e.error, DecodeError::BadLength, "len {len}");
    }
}

#[test]
fn attribute_errors_are_errors() {
    let hdr: &[u8] = &[0x08, 0x00, 0x01, 0x00];
    type AttrList<'a> = Vec<(u16, &'a [u8])>;
    let cases: Vec<(AttrList<'_>, DecodeError)> = vec![
        (
            vec![(NFULA_PAYLOAD, &IP4_UDP)],
            DecodeError::MissingPacketHeader,
        ),
        (
            vec![(NFULA_PACKET_HDR, &[0x08, 0x00])],
            DecodeError::BadAttribute(NFULA_PACKET_HDR),
        ),
        (
            vec![(NFULA_PACKET_HDR, hdr), (NFULA_MARK, &[1, 2, 3])],
            DecodeError::BadAttribute(NFULA_MARK),
        ),
        (
            vec![(NFULA_PACKET_HDR, hdr), (NFULA_SEQ, &[0; 8])],
            DecodeError::BadAttribute(NFULA_SEQ),
        ),
        (
            vec![(NFULA_PACKET_HDR, hdr), (NFULA_TIMESTAMP, &[0; 8])],
            DecodeError::BadAttribute(NFULA_TIMESTAMP),
        ),
        (
            vec![(NFULA_PACKET_HDR, hdr), (NFULA_HWADDR, &[0, 6, 0, 0, 1])],
            DecodeError::BadAttribute(NFULA_HWADDR),
        ),
        (
            vec![(NFULA_PACKET_HDR, hdr), (NFULA_IFINDEX_INDEV, &[])],
            DecodeError::BadAttribute(NFULA_IFINDEX_INDEV),
        ),
    ];
    for (attrs, want) in cases {
        let m = packet_msg(2, &attrs);
        let msg = messages(&m)[0];
        assert_eq!(decode_packet(msg.payload), Err(want), "{attrs:?}");
    }
    // nla_len 0, 2 (below the header) and past the end.
    for bad in [0u16, 2, 200] {
        let mut m = seq_packet(Some(7));
        let at = NLMSG_HDRLEN + NFGENMSG_LEN;
        m[at..at + 2].copy_from_slice(&bad.to_ne_bytes());
        let msg = messages(&m)[0];
        assert_eq!(
            decode_packet(msg.payload),
            Err(DecodeError::BadLength),
            "nla_len {bad}"
        );
        // The packet header was the broken attribute: nothing to salvage.
        assert_eq!(salvage_seq(msg.payload), None);
    }
    // An nfgenmsg cut short.
    assert_eq!(decode_packet(&[2, 0]), Err(DecodeError::Truncated));
}

#[test]
fn unknown_attributes_and_type_flag_bits_are_tolerated() {
    let m = packet_msg(
        10,
        &[
            (NFULA_PACKET_HDR | 0x8000, &[0x86, 0xdd, 0x04, 0x00]),
            (999, &[1, 2, 3, 4, 5]),
            (NFULA_MARK, &[0, 0, 0, 0x2a]),
            (NFULA_SEQ_GLOBAL, &[0, 0, 0, 9]),
            (NFULA_PREFIX, b"abc\0"),
            (NFULA_PREFIX + 100, &[]),
        ],
    );
    let msg = messages(&m)[0];
    let p = decode_packet(msg.payload).unwrap();
    assert_eq!(
        (p.family, p.hook, p.hw_protocol),
        (10, Hook::Postrouting, 0x86dd)
    );
    assert_eq!((p.mark, p.seq_global, p.seq), (0x2a, Some(9), None));
    assert_eq!(&msg.payload[p.prefix.unwrap()], b"abc");
    assert!(p.payload.is_empty());
}

#[test]
fn hooks_are_an_open_enum() {
    assert_eq!(Hook::from(0), Hook::Prerouting);
    assert_eq!(Hook::from(2), Hook::Forward);
    assert_eq!(Hook::from(3), Hook::Output);
    assert_eq!(Hook::from(9), Hook::Unknown(9));
}

#[test]
fn error_messages_give_code_and_request() {
    // struct nlmsgerr { int error; struct nlmsghdr msg; }
    let mut body = (-1i32).to_ne_bytes().to_vec();
    body.extend_from_slice(&CONFIG_BIND[..16]);
    let m = control_msg(NLMSG_ERROR, &body);
    let msg = messages(&m)[0];
    assert_eq!(msg.ty, NLMSG_ERROR);
    // control_msg writes an nfgenmsg first: skip it.
    assert_eq!(error_code(&msg.payload[4..]), Ok(-1));
    assert_eq!(error_request_seq(&msg.payload[4..]), Some(1));
    assert_eq!(error_code(&[0, 0]), Err(DecodeError::Truncated));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never panic the decoders, and every decoded
        /// range lies inside its message.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            for m in NlMsgs::new(&bytes) {
                match m {
                    Ok(m) => {
                        if let Ok(p) = decode_packet(m.payload) {
                            prop_assert!(p.payload.end <= m.payload.len());
                            if let Some(r) = p.prefix {
                                prop_assert!(r.end <= m.payload.len());
                            }
                        }
                        let _ = salvage_seq(m.payload);
                        let _ = error_code(m.payload);
                        let _ = error_request_seq(m.payload);
                    }
                    Err(b) => {
                        let _ = salvage_seq(b.rest);
                    }
                }
            }
        }

        /// A real datagram with bytes overwritten at random never panics
        /// the decoders either (reaches deeper than random bytes do).
        #[test]
        fn garbled_real_datagrams_never_panic(
            edits in proptest::collection::vec((0usize..532, any::<u8>()), 1..8),
            cut in 0usize..533,
        ) {
            let mut buf = DGRAM_THREE.to_vec();
            for (at, v) in edits {
                buf[at] = v;
            }
            buf.truncate(cut);
            for m in NlMsgs::new(&buf) {
                match m {
                    Ok(m) => {
                        if let Ok(p) = decode_packet(m.payload) {
                            prop_assert!(p.payload.end <= m.payload.len());
                        }
                        let _ = salvage_seq(m.payload);
                    }
                    Err(b) => {
                        let _ = salvage_seq(b.rest);
                    }
                }
            }
        }

        /// Any attributes after a packet header decode or fail cleanly.
        #[test]
        fn attribute_soup(attrs in proptest::collection::vec((0u16..24, proptest::collection::vec(any::<u8>(), 0..24)), 0..12)) {
            let mut list: Vec<(u16, &[u8])> = vec![(NFULA_PACKET_HDR, &[0x08, 0x00, 0x01, 0x00])];
            list.extend(attrs.iter().map(|(t, v)| (*t, v.as_slice())));
            let buf = packet_msg(2, &list);
            let m = NlMsgs::new(&buf).next().unwrap().unwrap();
            if let Ok(p) = decode_packet(m.payload) {
                prop_assert!(p.payload.end <= m.payload.len());
            }
        }
    }
}
