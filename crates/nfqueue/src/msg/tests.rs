//! Byte-exact encoding and decoding tests. Netlink headers are in host byte
//! order; these arrays are written for little-endian hosts.
#![cfg(target_endian = "little")]

use super::*;
use portcullis_netlink::{NlMsg, NLMSG_DONE, NLMSG_NOOP};

/// `NFQNL_MSG_VERDICT`: accept id 0x01020304 on queue 5, mark 0x2a, seq 7.
static VERDICT_ACCEPT_MARK: [u8; 40] = [
    0x28, 0x00, 0x00, 0x00, // nlmsg_len 40
    0x01, 0x03, // type: subsys 3 (queue), msg 1 (verdict)
    0x01, 0x00, // flags: NLM_F_REQUEST
    0x07, 0x00, 0x00, 0x00, // seq
    0x00, 0x00, 0x00, 0x00, // pid: the kernel
    0x00, 0x00, 0x00, 0x05, // nfgenmsg: AF_UNSPEC, v0, queue 5 (be16)
    0x0c, 0x00, 0x02, 0x00, // NFQA_VERDICT_HDR, 12 bytes
    0x00, 0x00, 0x00, 0x01, // NF_ACCEPT
    0x01, 0x02, 0x03, 0x04, // id
    0x08, 0x00, 0x03, 0x00, // NFQA_MARK
    0x00, 0x00, 0x00, 0x2a,
];

/// `NFQNL_MSG_VERDICT_BATCH`: drop everything up to id 9 on queue 1, seq 2.
static VERDICT_BATCH_DROP: [u8; 32] = [
    0x20, 0x00, 0x00, 0x00, 0x03, 0x03, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x01, // queue 1
    0x0c, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, // NF_DROP
    0x00, 0x00, 0x00, 0x09,
];

/// `NFQNL_MSG_CONFIG`: bind queue 7, copy packet 65531 bytes, maxlen 8192,
/// flags fail-open + GSO (mask the same), ack requested, seq 1.
static CONFIG_BIND: [u8; 64] = [
    0x40, 0x00, 0x00, 0x00, // len 64
    0x02, 0x03, // subsys 3, msg 2 (config)
    0x05, 0x00, // NLM_F_REQUEST | NLM_F_ACK
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, //
    0x00, 0x00, 0x00, 0x07, // queue 7
    0x08, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, // NFQA_CFG_CMD: BIND, pad, pf 0
    0x09, 0x00, 0x02, 0x00, 0x00, 0x00, 0xff, 0xfb, 0x02, 0x00, 0x00,
    0x00, // PARAMS (5 bytes + pad)
    0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x20, 0x00, // QUEUE_MAXLEN 8192
    0x08, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x05, // MASK
    0x08, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x05, // FLAGS
];

/// An `NFQNL_MSG_PACKET` laid out as `nfqnl_build_packet_message` does:
/// packet header, indev, mark, hw address, timestamp, skb info, and the
/// payload last and unpadded (a 29-byte IPv4/UDP packet 198.18.0.1 ->
/// 198.18.0.2, port 12345 -> 9999).
pub(crate) static PACKET_MSG: [u8; 125] = [
    0x7d, 0x00, 0x00, 0x00, // len 125
    0x00, 0x03, 0x00, 0x00, // type: subsys 3, msg 0 (packet); flags 0
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // seq, pid
    0x02, 0x00, 0x00, 0x07, // NFPROTO_IPV4, v0, queue 7
    0x0b, 0x00, 0x01, 0x00, // NFQA_PACKET_HDR, 7 bytes (packed)
    0x00, 0x00, 0x00, 0x2a, // id 42
    0x08, 0x00, // ETH_P_IP
    0x01, 0x00, // hook NF_INET_LOCAL_IN, pad
    0x08, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x03, // NFQA_IFINDEX_INDEV 3
    0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x07, // NFQA_MARK 7
    0x10, 0x00, 0x09, 0x00, // NFQA_HWADDR
    0x00, 0x06, 0x00, 0x00, // addrlen 6, pad
    0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, // 02:00:00:00:00:01
    0x14, 0x00, 0x04, 0x00, // NFQA_TIMESTAMP
    0x00, 0x00, 0x00, 0x00, 0x65, 0x00, 0x00, 0x00, // sec
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x7b, // usec 123
    0x08, 0x00, 0x0e, 0x00, 0x00, 0x00, 0x00, 0x04, // NFQA_SKB_INFO: CSUM_NOTVERIFIED
    0x21, 0x00, 0x0a, 0x00, // NFQA_PAYLOAD, 29 bytes, no padding after
    0x45, 0x00, 0x00, 0x1d, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, // IPv4
    0xc6, 0x12, 0x00, 0x01, 0xc6, 0x12, 0x00, 0x02, //
    0x30, 0x39, 0x27, 0x0f, 0x00, 0x09, 0x00, 0x00, // UDP
    0x78,
];

#[test]
fn encodes_single_verdict_with_mark() {
    let mut buf = Vec::new();
    encode_verdict(
        &mut buf,
        7,
        5,
        false,
        0x0102_0304,
        Verdict::Accept,
        Some(0x2a),
    );
    assert_eq!(buf, VERDICT_ACCEPT_MARK);
    assert_eq!(buf.len(), MAX_VERDICT_MSG_LEN);
}

#[test]
fn encodes_batch_verdict_without_mark() {
    let mut buf = Vec::new();
    encode_verdict(&mut buf, 2, 1, true, 9, Verdict::Drop, None);
    assert_eq!(buf, VERDICT_BATCH_DROP);
}

#[test]
fn verdicts_concatenate_into_one_buffer() {
    let mut buf = Vec::new();
    encode_verdict(
        &mut buf,
        7,
        5,
        false,
        0x0102_0304,
        Verdict::Accept,
        Some(0x2a),
    );
    encode_verdict(&mut buf, 2, 1, true, 9, Verdict::Drop, None);
    let msgs: Vec<_> = NlMsgs::new(&buf).collect::<Result<_, _>>().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].ty, NFQNL_MSG_VERDICT);
    assert_eq!(msgs[1].ty, NFQNL_MSG_VERDICT_BATCH);
    // The second message starts right after the first (40 bytes, aligned).
    assert_eq!(msgs[1].payload_offset, 40 + NLMSG_HDRLEN);
}

#[test]
fn encodes_config() {
    let mut buf = Vec::new();
    let req = ConfigRequest {
        queue: 7,
        copy_range: MAX_COPY_RANGE,
        max_len: 8192,
        flags: NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO,
    };
    encode_config(&mut buf, 1, &req);
    assert_eq!(buf, CONFIG_BIND);
}

#[test]
fn decodes_packet_message() {
    let msg = NlMsgs::new(&PACKET_MSG).next().unwrap().unwrap();
    assert_eq!(msg.ty, NFQNL_MSG_PACKET);
    assert_eq!(msg.payload_offset, NLMSG_HDRLEN);
    let p = decode_packet(msg.payload, msg.payload_offset).unwrap();
    assert_eq!(p.id, 42);
    assert_eq!(p.queue, 7);
    assert_eq!(p.family, 2);
    assert_eq!(p.hook, Hook::Input);
    assert_eq!(p.hw_protocol, 0x0800);
    assert_eq!(p.indev, Some(3));
    assert_eq!(p.outdev, None);
    assert_eq!(p.phys_indev, None);
    assert_eq!(p.mark, 7);
    assert_eq!(p.hw_addr, Some(([2, 0, 0, 0, 0, 1, 0, 0], 6)));
    assert_eq!(p.timestamp_micros, Some(0x6500_0000 * 1_000_000 + 123));
    assert_eq!(p.original_len, None);
    let info = SkbInfo(p.skb_info);
    assert!(!info.is_gso() && !info.checksum_not_ready() && info.checksum_not_verified());
    assert_eq!(p.payload, 96..125);
    assert_eq!(PACKET_MSG[p.payload.clone()][..4], [0x45, 0x00, 0x00, 0x1d]);
}

/// A packet message built from attributes, for the cases not in `PACKET_MSG`.
pub(crate) fn packet_msg(attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = MsgWriter::begin(&mut buf, NFQNL_MSG_PACKET, 0, 0, AF_UNSPEC, 3);
    for (ty, v) in attrs {
        w.attr(*ty, v);
    }
    w.finish();
    buf
}

const HDR_ID_5_OUTPUT: &[u8] = &[0, 0, 0, 5, 0x86, 0xdd, 3];

#[test]
fn decodes_gso_truncated_output_packet() {
    let payload = [0x60u8; 40];
    let buf = packet_msg(&[
        (NFQA_PACKET_HDR, HDR_ID_5_OUTPUT),
        (NFQA_IFINDEX_OUTDEV, &[0, 0, 0, 9]),
        (NFQA_IFINDEX_PHYSOUTDEV, &[0, 0, 0, 10]),
        (NFQA_CAP_LEN, &[0, 0, 0xfc, 0x00]),
        (NFQA_SKB_INFO, &[0, 0, 0, 3]),
        (0x8000 | 99, &[1, 2, 3]), // unknown attribute with the nested bit: ignored
        (NFQA_PAYLOAD, &payload),
    ]);
    let msg = NlMsgs::new(&buf).next().unwrap().unwrap();
    let p = decode_packet(msg.payload, msg.payload_offset).unwrap();
    assert_eq!((p.id, p.hook, p.hw_protocol), (5, Hook::Output, 0x86dd));
    assert_eq!(
        (p.indev, p.outdev, p.phys_outdev),
        (None, Some(9), Some(10))
    );
    assert_eq!(p.original_len, Some(0xfc00));
    assert!(SkbInfo(p.skb_info).is_gso() && SkbInfo(p.skb_info).checksum_not_ready());
    assert_eq!(p.mark, 0);
    assert_eq!(p.timestamp_micros, None);
    assert_eq!(&buf[p.payload.clone()], &payload[..]);
}

#[test]
fn hook_numbers_are_an_open_enum() {
    let hooks: Vec<Hook> = (0u8..=5).map(Hook::from).collect();
    assert_eq!(
        hooks,
        [
            Hook::Prerouting,
            Hook::Input,
            Hook::Forward,
            Hook::Output,
            Hook::Postrouting,
            Hook::Unknown(5)
        ]
    );
}

#[test]
fn rejects_packet_without_header() {
    let buf = packet_msg(&[(NFQA_MARK, &[0, 0, 0, 1])]);
    let msg = NlMsgs::new(&buf).next().unwrap().unwrap();
    assert_eq!(
        decode_packet(msg.payload, 16),
        Err(DecodeError::MissingPacketHeader)
    );
}

#[test]
fn rejects_wrong_attribute_size_but_salvages_id() {
    let buf = packet_msg(&[(NFQA_PACKET_HDR, HDR_ID_5_OUTPUT), (NFQA_MARK, &[0, 1])]);
    let msg = NlMsgs::new(&buf).next().unwrap().unwrap();
    assert_eq!(
        decode_packet(msg.payload, 16),
        Err(DecodeError::BadAttribute(NFQA_MARK))
    );
    assert_eq!(salvage_packet_id(msg.payload), Some(5));
}

#[test]
fn every_truncation_fails_cleanly() {
    for cut in 0..PACKET_MSG.len() {
        let buf = &PACKET_MSG[..cut];
        if let Some(Ok(m)) = NlMsgs::new(buf).next() {
            panic!("a {cut}-byte prefix decoded as a message: {m:?}");
        }
        // What a truncated receive leaves: the id is still there once the
        // packet header is in.
        let salvaged = buf.get(NLMSG_HDRLEN..).and_then(salvage_packet_id);
        if cut >= NLMSG_HDRLEN + 4 + 8 {
            assert_eq!(salvaged, Some(42), "cut at {cut}");
        }
    }
}

#[test]
fn attribute_length_past_the_end_is_an_error() {
    let mut buf = PACKET_MSG.to_vec();
    // NFQA_PACKET_HDR's nla_len (right after nlmsghdr and nfgenmsg) claims 65535 bytes.
    buf[20] = 0xff;
    buf[21] = 0xff;
    let msg = NlMsgs::new(&buf).next().unwrap().unwrap();
    assert_eq!(decode_packet(msg.payload, 16), Err(DecodeError::BadLength));
}

#[test]
fn nlmsg_length_out_of_range_is_an_error() {
    let mut short = PACKET_MSG.to_vec();
    short[0] = 8; // shorter than nlmsghdr
    fn error(buf: &[u8]) -> Option<Result<NlMsg<'_>, DecodeError>> {
        NlMsgs::new(buf).next().map(|m| m.map_err(|b| b.error))
    }
    assert_eq!(error(&short), Some(Err(DecodeError::BadLength)));
    let mut long = PACKET_MSG.to_vec();
    long[0] = 200;
    assert_eq!(error(&long), Some(Err(DecodeError::BadLength)));
}

/// `NLMSG_ERROR` acknowledging seq 1 (error 0) and one answering seq 9 with
/// -EPERM, in one datagram.
pub(crate) static ACK_AND_ERROR: [u8; 72] = [
    0x24, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, // error 0: ack
    0x40, 0x00, 0x00, 0x00, 0x02, 0x03, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00,
    0x24, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0xff, // error -1: EPERM
    0x40, 0x00, 0x00, 0x00, 0x01, 0x03, 0x01, 0x00, 0x09, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00,
];

#[test]
fn decodes_acks_and_errors() {
    let msgs: Vec<_> = NlMsgs::new(&ACK_AND_ERROR)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(msgs.len(), 2);
    assert!(msgs.iter().all(|m| m.ty == NLMSG_ERROR));
    assert_eq!(error_code(msgs[0].payload), Ok(0));
    assert_eq!(error_request_seq(msgs[0].payload), Some(1));
    assert_eq!(error_code(msgs[1].payload), Ok(-1));
    assert_eq!(error_request_seq(msgs[1].payload), Some(9));
}

#[test]
fn ignores_noop_and_done_types() {
    // NlMsgs itself is type-agnostic; the consumers skip these.
    let mut buf = Vec::new();
    for ty in [NLMSG_NOOP, NLMSG_DONE] {
        buf.extend_from_slice(&16u32.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&[0; 10]);
    }
    let tys: Vec<u16> = NlMsgs::new(&buf).map(|m| m.unwrap().ty).collect();
    assert_eq!(tys, [NLMSG_NOOP, NLMSG_DONE]);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes never panic the decoders, and a decoded payload
        /// range always lies inside the buffer.
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for m in NlMsgs::new(&bytes).flatten() {
                if let Ok(p) = decode_packet(m.payload, m.payload_offset) {
                    prop_assert!(p.payload.end <= bytes.len());
                }
                let _ = salvage_packet_id(m.payload);
                let _ = error_code(m.payload);
            }
            let _ = salvage_packet_id(&bytes);
        }

        /// Attribute soup behind a valid header decodes or fails, never panics.
        #[test]
        fn attribute_soup(attrs in proptest::collection::vec((0u16..24, proptest::collection::vec(any::<u8>(), 0..24)), 0..12)) {
            let mut list: Vec<(u16, &[u8])> = vec![(NFQA_PACKET_HDR, HDR_ID_5_OUTPUT)];
            list.extend(attrs.iter().map(|(t, v)| (*t, v.as_slice())));
            let buf = packet_msg(&list);
            let m = NlMsgs::new(&buf).next().unwrap().unwrap();
            if let Ok(p) = decode_packet(m.payload, m.payload_offset) {
                prop_assert!(p.payload.end <= buf.len());
            }
        }
    }
}
