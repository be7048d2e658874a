//! Fuzzing on the stable toolchain (`portcullis-fuzzkit`): `Packet::decode`
//! and the datagram intake (`State::ingest`, what `recv_batch` runs on
//! every datagram) over mutants of real packet messages, some carrying DNS
//! queries, each queued payload then handed to the NXDOMAIN builder as the
//! daemon does. `PORTCULLIS_FUZZ_SECS` sets the time (default 2 s); see
//! `fuzz/README.md`.
#![cfg(target_endian = "little")]
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use portcullis_fuzzkit::{bucket, fuzz_bytes, signature, Mutator};

use super::*;
use crate::inject::{build_answer, Answer};
use crate::msg::tests::{packet_msg, ACK_AND_ERROR, PACKET_MSG};

// nfqnl_attr_type values (msg.rs keeps its constants private).
const HDR: u16 = 1;
const MARK: u16 = 3;
const TIMESTAMP: u16 = 4;
const INDEV: u16 = 5;
const OUTDEV: u16 = 6;
const HWADDR: u16 = 9;
const PAYLOAD: u16 = 10;
const CAP_LEN: u16 = 13;
const SKB_INFO: u16 = 14;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Real packet messages (the layout the kernel writes), DNS queries over
/// UDP and TCP, IPv4 and IPv6, as queued on input and output, and a
/// datagram of acknowledgements.
fn seeds() -> Vec<Vec<u8>> {
    use portcullis_traffic::{dns_tcp, dns_udp, raw_l3};
    let udp4 = dns_udp(
        addr("198.18.0.1:40000"),
        addr("198.18.0.2:53"),
        0x1234,
        "ads.example",
    );
    let tcp6 = dns_tcp(
        addr("[2001:2::1]:40001"),
        addr("[2001:2::2]:53"),
        7,
        "www.tracker.example",
    );
    let udp6 = dns_udp(
        addr("[2001:2::1]:40002"),
        addr("[2001:2::2]:53"),
        9,
        "a.b.c.example",
    );
    let input = |id: u8, proto: [u8; 2], l3: &[u8]| {
        packet_msg(&[
            (HDR, &[0, 0, 0, id, proto[0], proto[1], 1]),
            (INDEV, &[0, 0, 0, 2]),
            (HWADDR, &[0, 6, 0, 0, 2, 0, 0, 0, 0, 1, 0, 0]),
            (
                TIMESTAMP,
                &[0, 0, 0, 0, 0x65, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x7b],
            ),
            (SKB_INFO, &[0, 0, 0, 4]),
            (PAYLOAD, l3),
        ])
    };
    let output = |id: u8, proto: [u8; 2], l3: &[u8]| {
        packet_msg(&[
            (HDR, &[0, 0, 0, id, proto[0], proto[1], 3]),
            (OUTDEV, &[0, 0, 0, 9]),
            (MARK, &[0, 0, 0x70, 0x0c]),
            (CAP_LEN, &[0, 0, 0xfc, 0]),
            (SKB_INFO, &[0, 0, 0, 3]),
            (PAYLOAD, l3),
        ])
    };
    let a = input(1, [0x08, 0x00], raw_l3(&udp4));
    let b = output(2, [0x86, 0xdd], raw_l3(&tcp6));
    let c = input(3, [0x86, 0xdd], raw_l3(&udp6));
    vec![
        PACKET_MSG.to_vec(),
        ACK_AND_ERROR.to_vec(),
        a.clone(),
        b.clone(),
        c.clone(),
        [a.as_slice(), &b, &c].concat(),
        [PACKET_MSG.as_slice(), &[0, 0, 0], &ACK_AND_ERROR].concat(),
        a[..a.len() - 5].to_vec(),
    ]
}

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    inner.is_empty() || (o.start <= i.start && i.end <= o.end)
}

/// A hook for a feature: the unknown ones are all alike.
fn known(h: Hook) -> Option<Hook> {
    (!matches!(h, Hook::Unknown(_))).then_some(h)
}

fn check_packet(buf: &[u8], p: &Packet<'_>) {
    assert!(within(buf, p.payload), "payload outside the buffer");
    assert!(p.hw_addr.map_or(0, |h| h.as_bytes().len()) <= 8);
    assert_eq!(p.is_gso, p.skb_info.is_gso());
}

/// No panic; `Packet::decode` and `State::ingest` agree on the first
/// message; every payload range indexes the caller's whole buffer and
/// lies inside the datagram; every packet is either in the batch or
/// accepted unseen (so none is left stuck in the kernel); the NXDOMAIN
/// builder takes any queued payload.
fn target(data: &[u8]) -> Vec<u64> {
    let mut features = Vec::new();
    let single = Packet::decode(data);
    if let Ok(p) = &single {
        check_packet(data, p);
    }
    features.push(signature(&(
        "decode",
        single
            .as_ref()
            .map(|p| p.hook)
            .map_err(std::mem::discriminant),
    )));

    // The datagram sits at an offset of the receive buffer, as in a batch.
    const BASE: usize = 13;
    let mut rx = vec![0xee; BASE];
    rx.extend_from_slice(data);
    for truncated in [false, true] {
        let mut st = State::default();
        let kept = st.ingest(&rx[BASE..], BASE, truncated);
        assert_eq!(kept, !st.batch.is_empty());
        assert_eq!(st.counters.packets as usize, st.batch.len());
        assert_eq!(st.outstanding.len(), st.batch.len() + st.pending.len());
        // Outstanding: the batch's ids and those accepted unseen.
        let mut ids: Vec<u32> = st.outstanding.iter().copied().collect();
        let mut want: Vec<u32> = st.batch.iter().map(|m| m.id).collect();
        want.extend(st.pending.iter().map(|p| p.id));
        ids.sort_unstable();
        want.sort_unstable();
        assert_eq!(ids, want);
        assert!(st
            .pending
            .iter()
            .all(|p| p.verdict == Verdict::Accept && p.mark.is_none()));
        for m in &st.batch {
            let r = &m.payload;
            assert!(
                BASE <= r.start && r.start <= r.end && r.end <= rx.len(),
                "{r:?}"
            );
            let p = Packet::from_meta(m, &rx);
            check_packet(&rx[BASE..], &p);
            if truncated {
                continue;
            }
            let mut answer = Answer::default();
            let built = build_answer(p.payload, &mut answer);
            let n = answer.packets().count();
            match &built {
                Ok(()) => assert!((1..=2).contains(&n)),
                Err(_) => assert_eq!(n, 0, "packets left after an error"),
            }
            let fields = [p.indev, p.outdev, p.phys_indev, p.phys_outdev].map(|d| d.is_some());
            let hw = p.hw_addr.map(|h| h.as_bytes().len());
            let built = built.as_ref().map_err(std::mem::discriminant);
            features.extend([
                signature(&(
                    "packet",
                    known(p.hook),
                    p.family.min(16),
                    bucket(p.payload.len()),
                )),
                signature(&("fields", fields, p.timestamp_micros.is_some(), hw)),
                signature(&("answer", p.family.min(16), built, n)),
            ]);
        }
        if let Ok(p) = &single {
            assert_eq!(Packet::from_meta(&st.batch[0], &rx), *p);
        }
        features.push(signature(&(
            truncated,
            bucket(st.batch.len()),
            st.pending.len().min(3),
            st.counters.malformed.min(3),
            st.counters.netlink_errors.min(3),
        )));
    }
    features
}

#[test]
fn fuzz_nfqueue_datagram() {
    let mutator = Mutator {
        max_len: 2048,
        dict: Vec::new(),
        netlink: true,
    };
    fuzz_bytes("nfqueue_datagram", seeds(), mutator, target);
}
