//! Fuzzing on the stable toolchain (`portcullis-fuzzkit`): the datagram
//! decoders and the counting intake over mutants of datagrams captured
//! from the kernel. `PORTCULLIS_FUZZ_SECS` sets the time (default 2 s);
//! see `fuzz/README.md`.
#![cfg(target_endian = "little")]
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use portcullis_fuzzkit::{bucket, fuzz_bytes, signature, Mutator};

use crate::fixtures::{DGRAM_PING4, DGRAM_THREE};
use crate::log::State;
use crate::msg::tests::{control_msg, seq_packet};
use crate::msg::{NLMSG_DONE, NLMSG_ERROR};
use crate::{decode_datagram, DecodeError, LoggedPacket};

/// Each message of the captured datagrams alone, the datagrams whole,
/// and hand-built packets and control messages.
fn seeds() -> Vec<Vec<u8>> {
    let mut seeds = vec![DGRAM_PING4.to_vec(), DGRAM_THREE.to_vec()];
    let mut at = 0;
    while at + 4 <= DGRAM_THREE.len() {
        let len = u32::from_ne_bytes(DGRAM_THREE[at..at + 4].try_into().unwrap()) as usize;
        seeds.push(DGRAM_THREE[at..at + len].to_vec());
        at += (len + 3) & !3;
    }
    seeds.push(seq_packet(Some(7)));
    seeds.push(seq_packet(None));
    seeds.push(control_msg(NLMSG_ERROR, &(-1i32).to_ne_bytes()));
    seeds.push(control_msg(NLMSG_DONE, &[]));
    seeds
}

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    inner.is_empty() || (o.start <= i.start && i.end <= o.end)
}

fn error_kind(e: &DecodeError) -> u16 {
    match e {
        DecodeError::Truncated => 1,
        DecodeError::BadLength => 2,
        DecodeError::NotPacket(_) => 3,
        DecodeError::MissingPacketHeader => 4,
        DecodeError::BadAttribute(a) => 0x100 | a,
    }
}

/// Checks one decoded packet; returns its features.
fn check_packet(datagram: &[u8], p: &LoggedPacket<'_>) -> Vec<u64> {
    assert!(within(datagram, p.payload), "payload outside the datagram");
    if let Some(prefix) = p.prefix {
        assert!(within(datagram, prefix), "prefix outside the datagram");
        assert!(!prefix.contains(&0), "prefix keeps its NUL: {prefix:?}");
    }
    let hw = p.hw_addr.map(|h| h.as_bytes().len());
    assert!(hw.unwrap_or(0) <= 8);
    if let Some(len) = p.original_len {
        // The IP header's own length: at least a header's worth.
        assert!(len >= 20, "original_len {len}");
    }
    vec![
        signature(&(
            "payload",
            bucket(p.payload.len()),
            p.original_len.map(|l| l as usize >= p.payload.len()),
        )),
        signature(&("prefix", p.prefix.map(<[u8]>::len).map(bucket))),
        signature(&(
            "fields",
            [p.indev, p.outdev, p.phys_indev, p.phys_outdev, p.uid, p.gid].map(|v| v.is_some()),
        )),
        signature(&(
            "meta",
            p.timestamp_micros.is_some(),
            p.seq.is_some(),
            p.seq_global.is_some(),
            hw,
        )),
    ]
}

/// `decode_datagram`, `LoggedPacket::decode` and the counting `State`
/// agree, never panic, and never point outside the datagram.
fn target(data: &[u8]) -> Vec<u64> {
    let mut features = Vec::new();
    let mut oks = 0u64;
    let mut errs = 0u64;
    let mut first = None;
    for (i, item) in decode_datagram(data).enumerate() {
        match &item {
            Ok(p) => {
                oks += 1;
                features.extend(check_packet(data, p));
            }
            Err(e) => {
                errs += 1;
                features.push(u64::from(error_kind(e)));
            }
        }
        if i == 0 {
            first = Some(item);
        }
    }
    // One message alone: what decode_datagram says of it, when it is the
    // first item and a packet message.
    let single = LoggedPacket::decode(data);
    if let (Ok(p), Some(Ok(q))) = (&single, &first) {
        assert_eq!(p, q, "decode and decode_datagram disagree");
    }
    features.push(signature(&single.map(|_| 0).map_err(|e| error_kind(&e))));

    for truncated in [false, true] {
        let mut st = State::default();
        let mut handed = 0u64;
        let n = st.ingest(data, truncated, &mut |p: &LoggedPacket<'_>| {
            handed += 1;
            check_packet(data, p);
        });
        let s = &st.stats;
        assert_eq!(n as u64, handed);
        assert_eq!(s.received, oks, "ingest and decode_datagram disagree");
        assert_eq!(s.malformed, errs, "ingest and decode_datagram disagree");
        assert_eq!(s.datagrams, 1);
        assert_eq!(s.truncated, u64::from(truncated));
        assert_eq!(s.max_per_datagram, handed);
        if !truncated {
            features.push(signature(&(
                bucket(s.lost as usize),
                s.out_of_order.min(2),
                s.netlink_errors.min(2),
            )));
        }
    }
    features
}

#[test]
fn fuzz_nflog_datagram() {
    let mutator = Mutator {
        max_len: 2048,
        dict: Vec::new(),
        netlink: true,
    };
    fuzz_bytes("nflog_datagram", seeds(), mutator, target);
}
