//! Verdict planning and datagram intake, without a socket.

use super::*;

fn p(id: u32, verdict: Verdict, mark: Option<u32>) -> Pending {
    Pending { id, verdict, mark }
}
fn acc(id: u32) -> Pending {
    p(id, Verdict::Accept, None)
}
fn single(id: u32, verdict: Verdict, mark: Option<u32>) -> Msg {
    Msg {
        batch: false,
        id,
        verdict,
        mark,
    }
}
fn batch(id: u32, verdict: Verdict, mark: Option<u32>) -> Msg {
    Msg {
        batch: true,
        id,
        verdict,
        mark,
    }
}

fn plan(outstanding: &[u32], pending: &[Pending]) -> (Vec<u32>, Vec<Msg>) {
    let outstanding: VecDeque<u32> = outstanding.iter().copied().collect();
    let mut pending = pending.to_vec();
    let (mut keep, mut out) = (VecDeque::new(), Vec::new());
    plan_verdicts(&outstanding, &mut pending, &mut keep, &mut out);
    (keep.into_iter().collect(), out)
}

#[test]
fn equal_verdicts_in_order_become_one_batch() {
    let (keep, out) = plan(&[1, 2, 3, 4, 5], &[acc(1), acc(2), acc(3), acc(4), acc(5)]);
    assert!(keep.is_empty());
    assert_eq!(out, [batch(5, Verdict::Accept, None)]);
}

#[test]
fn order_of_verdict_calls_does_not_matter() {
    let (keep, out) = plan(&[1, 2, 3, 4], &[acc(4), acc(2), acc(3), acc(1)]);
    assert!(keep.is_empty());
    assert_eq!(out, [batch(4, Verdict::Accept, None)]);
}

#[test]
fn runs_split_on_verdict_and_mark() {
    let d = Verdict::Drop;
    let a = Verdict::Accept;
    let (keep, out) = plan(
        &[1, 2, 3, 4, 5, 6, 7],
        &[
            acc(1),
            acc(2),
            p(3, d, None),
            p(4, d, None),
            acc(5),
            p(6, a, Some(9)),
            p(7, a, Some(9)),
        ],
    );
    assert!(keep.is_empty());
    assert_eq!(
        out,
        [
            batch(2, a, None),
            batch(4, d, None),
            single(5, a, None),
            batch(7, a, Some(9))
        ]
    );
}

#[test]
fn held_packet_blocks_batches_after_it() {
    // Packet 1 waits (e.g. for a DNS answer); 2..4 are decided. A batch up to
    // 4 would decide 1 as well, so they go one by one.
    let (keep, out) = plan(&[1, 2, 3, 4], &[acc(2), acc(3), acc(4)]);
    assert_eq!(keep, [1]);
    assert_eq!(
        out,
        [
            single(2, Verdict::Accept, None),
            single(3, Verdict::Accept, None),
            single(4, Verdict::Accept, None)
        ]
    );
    // Later packet 1 gets its verdict.
    let (keep, out) = plan(&[1, 5, 6], &[p(1, Verdict::Drop, None), acc(5), acc(6)]);
    assert!(keep.is_empty());
    assert_eq!(
        out,
        [
            single(1, Verdict::Drop, None),
            batch(6, Verdict::Accept, None)
        ]
    );
}

#[test]
fn run_before_a_held_packet_still_batches() {
    let (keep, out) = plan(&[1, 2, 3, 4], &[acc(1), acc(2), acc(4)]);
    assert_eq!(keep, [3]);
    assert_eq!(
        out,
        [
            batch(2, Verdict::Accept, None),
            single(4, Verdict::Accept, None)
        ]
    );
}

#[test]
fn ids_wrap_around() {
    let ids = [u32::MAX - 1, u32::MAX, 0, 1];
    let (keep, out) = plan(&ids, &[acc(1), acc(u32::MAX), acc(0), acc(u32::MAX - 1)]);
    assert!(keep.is_empty());
    assert_eq!(out, [batch(1, Verdict::Accept, None)]);
}

#[test]
fn unknown_and_duplicate_ids_are_sent_alone() {
    let (keep, out) = plan(
        &[10, 11],
        &[acc(10), p(10, Verdict::Drop, None), acc(11), acc(99)],
    );
    assert!(keep.is_empty());
    assert_eq!(
        out,
        [
            single(10, Verdict::Accept, None),
            single(10, Verdict::Drop, None),
            single(11, Verdict::Accept, None),
            single(99, Verdict::Accept, None),
        ]
    );
}

#[test]
fn nothing_pending_keeps_everything() {
    let (keep, out) = plan(&[3, 4], &[]);
    assert_eq!(keep, [3, 4]);
    assert!(out.is_empty());
}

#[test]
fn every_outstanding_id_is_decided_exactly_once_or_kept() {
    // Exhaustive over small patterns: for each id, verdict A, D, or none.
    for pattern in 0..3u32.pow(6) {
        let ids: Vec<u32> = (100..106).collect();
        let mut pending = Vec::new();
        let mut x = pattern;
        for &id in &ids {
            match x % 3 {
                0 => pending.push(acc(id)),
                1 => pending.push(p(id, Verdict::Drop, None)),
                _ => {}
            }
            x /= 3;
        }
        let (keep, out) = plan(&ids, &pending);
        // Simulate the kernel: a batch decides every queued id up to its id.
        let mut queued: Vec<u32> = ids.clone();
        let mut decided = Vec::new();
        for m in &out {
            if m.batch {
                let (now, rest): (Vec<u32>, Vec<u32>) = queued.iter().partition(|&&q| q <= m.id);
                decided.extend(now.into_iter().map(|id| (id, m.verdict)));
                queued = rest;
            } else {
                let pos = queued
                    .iter()
                    .position(|&q| q == m.id)
                    .expect("decided twice");
                queued.remove(pos);
                decided.push((m.id, m.verdict));
            }
        }
        decided.sort_by_key(|d| d.0);
        let want: Vec<(u32, Verdict)> = {
            let mut w: Vec<_> = pending.iter().map(|p| (p.id, p.verdict)).collect();
            w.sort_by_key(|d| d.0);
            w
        };
        assert_eq!(decided, want, "pattern {pattern}");
        assert_eq!(queued, keep, "pattern {pattern}");
    }
}

#[cfg(target_endian = "little")]
#[test]
fn ingest_takes_packets_and_counts_errors() {
    let mut buf = Vec::new();
    // A packet message with id 77 and an 8-byte payload.
    let mut w = msg::MsgWriter::begin(&mut buf, NFQNL_MSG_PACKET, 0, 0, msg::AF_UNSPEC, 1);
    w.attr(1, &[0, 0, 0, 77, 0x08, 0x00, 1]);
    w.attr(10, &[1, 2, 3, 4, 5, 6, 7, 8]);
    w.finish();
    // An NLMSG_ERROR with -ENOENT (a verdict for an unknown id).
    buf.extend_from_slice(&36u32.to_ne_bytes());
    buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
    buf.extend_from_slice(&[0; 10]);
    buf.extend_from_slice(&(-2i32).to_ne_bytes());
    buf.extend_from_slice(&[0; 16]);

    let mut st = State::default();
    let offset = 100; // where the datagram sits in the receive buffer
    let mut rx = vec![0u8; offset];
    rx.extend_from_slice(&buf);
    assert!(st.ingest(&rx[offset..], offset, false));
    assert_eq!(st.batch.len(), 1);
    assert_eq!(st.outstanding, [77]);
    assert_eq!(st.counters.packets, 1);
    assert_eq!(st.counters.netlink_errors, 1);
    assert_eq!(st.counters.last_netlink_error, Some(2));
    let pkt = Packet::from_meta(&st.batch[0], &rx);
    assert_eq!(pkt.payload, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(pkt.original_len, 8);
    assert_eq!(pkt.hook, Hook::Input);

    // The same datagram cut short: not kept, but packet 77 gets accepted.
    let mut st = State::default();
    assert!(!st.ingest(&buf[..40], 0, true));
    assert_eq!(st.counters.malformed, 1);
    assert_eq!(st.pending, [acc(77)]);
    assert_eq!(st.outstanding, [77]);
}

#[test]
fn packet_decode_checks_type() {
    let mut buf = Vec::new();
    msg::encode_verdict(&mut buf, 1, 1, false, 1, Verdict::Accept, None);
    assert_eq!(
        Packet::decode(&buf),
        Err(DecodeError::NotPacket(msg::NFQNL_MSG_VERDICT))
    );
    assert_eq!(Packet::decode(&[]), Err(DecodeError::Truncated));
}

#[test]
fn config_defaults_match_the_brief() {
    let c = QueueConfig::new(3);
    assert_eq!(
        (
            c.num,
            c.copy_range,
            c.max_len,
            c.fail_open,
            c.gso,
            c.rcvbuf,
            c.batch
        ),
        (3, 0xffff, 8192, true, true, 16 << 20, 64)
    );
    assert_eq!(c.effective_copy_range(), MAX_COPY_RANGE);
    assert_eq!(
        QueueConfig {
            copy_range: 0,
            ..c.clone()
        }
        .effective_copy_range(),
        MAX_COPY_RANGE
    );
    assert_eq!(
        QueueConfig {
            copy_range: 128,
            ..c
        }
        .effective_copy_range(),
        128
    );
}

#[test]
fn queue_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<Queue>();
    assert_send::<NfqError>();
}
