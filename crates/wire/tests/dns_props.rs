//! Property tests for [`portcullis_wire::dns`].
//!
//! - `parse_query` never panics, on arbitrary bytes or on a query header
//!   followed by label/pointer soup, and what it returns is consistent.
//! - Queries built by simple-dns 0.13 (random names in random case, 1-6
//!   questions, random qtype/qclass, with and without name compression)
//!   parse back to the lower-cased names without a trailing dot, and
//!   `Name::suffixes` yields the name and then each parent.
//! - Random compression-pointer graphs (self, forward and looping pointers)
//!   always end with `Ok` or `Err`, checked by a watchdog, and agree with a
//!   step-counting model of RFC 1035 §4.1.4 whose work stays bounded.
//! - Names over 255 wire bytes are refused, with or without a pointer in
//!   the middle; names of exactly 255 are accepted.
//! - `tcp_message` returns the length-prefixed message.

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use portcullis_wire::dns::{
    parse_query, read_name, tcp_message, DnsError, Name, MAX_NAME_WIRE_LEN, MAX_POINTERS,
    MAX_QUESTIONS,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use simple_dns::{Packet, Question, CLASS, QCLASS, QTYPE, TYPE};

/// Case counts are set per block; seeds are random on every run
/// (`PROPTEST_RNG_SEED=<n>` replays one).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // No `.proptest-regressions` files beside the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A 12-byte query header (QR clear) with `qdcount` questions.
fn header(id: u16, flags: u16, qdcount: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&(flags & 0x7fff).to_be_bytes());
    m.extend_from_slice(&qdcount.to_be_bytes());
    m.extend_from_slice(&[0; 6]);
    m
}

/// What holds for every name the decoder returns.
fn check_name(name: &Name) -> Result<(), TestCaseError> {
    let b = name.as_bytes();
    prop_assert!(
        b.len() <= MAX_NAME_WIRE_LEN - 2,
        "presentation length {}",
        b.len()
    );
    prop_assert!(
        !b.iter().any(u8::is_ascii_uppercase),
        "not folded: {:?}",
        name
    );
    // Each suffix is a proper tail of the previous one, starting after a dot.
    let mut prev: Option<&[u8]> = None;
    for s in name.suffixes() {
        prop_assert!(!s.is_empty());
        match prev {
            None => prop_assert_eq!(s, b),
            Some(p) => {
                prop_assert!(p.ends_with(s) && p.len() > s.len());
                prop_assert_eq!(p[p.len() - s.len() - 1], b'.');
            }
        }
        prev = Some(s);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Never panics.
// ---------------------------------------------------------------------------

/// Wire tokens: labels (some over 63 bytes or with extended types), pointers
/// anywhere (self, forward, past the end), terminators and stray bytes.
fn wire_token() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..64).prop_map(|l| {
            let mut t = vec![l.len() as u8];
            t.extend_from_slice(&l);
            t
        }),
        3 => (0u16..0x60).prop_map(|to| vec![0xc0 | (to >> 8) as u8, to as u8]),
        1 => any::<u16>().prop_map(|to| (to | 0xc000).to_be_bytes().to_vec()),
        2 => Just(vec![0u8]),
        1 => any::<u8>().prop_map(|b| vec![b]),
        1 => any::<[u8; 4]>().prop_map(|b| b.to_vec()),
    ]
}

fn check_query(msg: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(q) = parse_query(msg) {
        prop_assert!(!q.header.is_response());
        prop_assert!(q.header.qdcount > 0);
        let n = q.questions().count();
        prop_assert_eq!(n, usize::from(q.header.qdcount).min(MAX_QUESTIONS));
        prop_assert!(q.questions_end <= msg.len());
        prop_assert!(q.first().is_some());
        for question in q.questions() {
            check_name(&question.name)?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(5_000))]

    #[test]
    fn arbitrary_bytes_never_panic(msg in vec(any::<u8>(), 0..300)) {
        check_query(&msg)?;
        // Any start offset, including past the end.
        for start in [0, 12, msg.len() / 2, msg.len(), msg.len() + 1] {
            if let Ok((name, end)) = read_name(&msg, start) {
                check_name(&name)?;
                prop_assert!(end > start && end <= msg.len());
            }
        }
        let _ = tcp_message(&msg);
    }

    #[test]
    fn query_header_then_label_soup_never_panics(
        id in any::<u16>(),
        flags in any::<u16>(),
        qdcount in 0u16..8,
        tokens in vec(wire_token(), 0..24),
    ) {
        let mut msg = header(id, flags, qdcount);
        msg.extend(tokens.into_iter().flatten());
        check_query(&msg)?;
    }
}

// ---------------------------------------------------------------------------
// Round trip through simple-dns.
// ---------------------------------------------------------------------------

fn label() -> impl Strategy<Value = String> {
    // Hostname-ish labels in any case, plus `_` for service names.
    proptest::string::string_regex("[A-Za-z0-9_][A-Za-z0-9_-]{0,19}").unwrap()
}

/// 1-6 questions whose names share a suffix (so compression has work to
/// do). Letters are upper- or lower-cased by the bits of a `u64`, counted
/// from the end of the name: one pattern for all questions half of the time
/// (compression needs equal case), one per question otherwise.
fn questions() -> impl Strategy<Value = Vec<(Vec<String>, u16, u16, bool)>> {
    let qtype = prop::sample::select(vec![
        1u16, 2, 5, 6, 12, 15, 16, 28, 33, 35, 43, 48, 64, 65, 99, 251, 252, 255,
    ]);
    let qclass = prop::sample::select(vec![1u16, 3, 4, 255]);
    let shared_case = prop::option::of(any::<u64>());
    (vec(label(), 0..3), shared_case).prop_flat_map(move |(shared, shared_case)| {
        let q = (
            vec(label(), 0..4),
            qtype.clone(),
            qclass.clone(),
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(move |(mut labels, qt, qc, unicast, own_case)| {
                labels.extend(shared.iter().cloned());
                let case = shared_case.unwrap_or(own_case);
                let n = labels.len();
                let labels = labels
                    .into_iter()
                    .enumerate()
                    .map(|(i, l)| {
                        l.chars()
                            .enumerate()
                            .map(|(j, c)| {
                                if case >> (((n - i) * 7 + j) % 64) & 1 == 1 {
                                    c.to_ascii_uppercase()
                                } else {
                                    c.to_ascii_lowercase()
                                }
                            })
                            .collect::<String>()
                    })
                    .collect::<Vec<_>>();
                (labels, qt, qc, unicast)
            });
        vec(q, 1..=6)
    })
}

fn qtype_of(v: u16) -> QTYPE {
    match v {
        251 => QTYPE::IXFR,
        252 => QTYPE::AXFR,
        255 => QTYPE::ANY,
        v => QTYPE::TYPE(TYPE::from(v)),
    }
}

fn qclass_of(v: u16) -> QCLASS {
    match v {
        255 => QCLASS::ANY,
        v => QCLASS::CLASS(CLASS::try_from(v).unwrap()),
    }
}

proptest! {
    #![proptest_config(config(3_000))]

    #[test]
    fn simple_dns_queries_round_trip(
        id in any::<u16>(),
        qs in questions(),
        compressed in any::<bool>(),
        trailing_dot in any::<bool>(),
    ) {
        let texts: Vec<String> = qs
            .iter()
            .map(|(labels, ..)| {
                let mut t = labels.join(".");
                if trailing_dot && !t.is_empty() {
                    t.push('.');
                }
                t
            })
            .collect();
        // Keep within the 255-byte wire limit (at most ~8 labels of 20).
        prop_assume!(texts.iter().all(|t| t.trim_end_matches('.').len() <= 253));
        let mut p = Packet::new_query(id);
        for (text, (_, qt, qc, unicast)) in texts.iter().zip(&qs) {
            p.questions.push(Question::new(
                simple_dns::Name::new_unchecked(text),
                qtype_of(*qt),
                qclass_of(*qc),
                *unicast,
            ));
        }
        let bytes = if compressed { p.build_bytes_vec_compressed() } else { p.build_bytes_vec() }.unwrap();
        let q = parse_query(&bytes).map_err(|e| TestCaseError::fail(format!("{e:?}: {bytes:02x?}")))?;
        prop_assert_eq!(q.header.id, id);
        prop_assert_eq!(usize::from(q.header.qdcount), qs.len());
        let got: Vec<_> = q.questions().collect();
        prop_assert_eq!(got.len(), qs.len().min(MAX_QUESTIONS));
        for (g, (labels, qt, qc, unicast)) in got.iter().zip(&qs) {
            let lower: Vec<String> = labels.iter().map(|l| l.to_ascii_lowercase()).collect();
            prop_assert_eq!(g.name.to_text(), lower.join("."));
            prop_assert_eq!(g.qtype, *qt);
            prop_assert_eq!(g.qclass, *qc | if *unicast { 0x8000 } else { 0 });
            let suffixes: Vec<&[u8]> = g.name.suffixes().collect();
            let expected: Vec<String> = (0..lower.len()).map(|i| lower[i..].join(".")).collect();
            let expected: Vec<&[u8]> = expected.iter().map(|s| s.as_bytes()).collect();
            prop_assert_eq!(suffixes, expected);
            check_name(&g.name)?;
        }
        if qs.len() <= MAX_QUESTIONS {
            prop_assert_eq!(q.questions_end, bytes.len());
        } else {
            prop_assert!(q.questions_end < bytes.len());
        }
    }

    /// Labels may hold any byte but a dot; the decoder keeps them (ASCII
    /// case folded) and splits suffixes only at the dots it wrote.
    #[test]
    fn binary_labels_and_suffixes(labels in vec(vec(any::<u8>().prop_filter("dot", |b| *b != b'.'), 1..=63), 0..4)) {
        let mut msg = header(1, 0, 1);
        for l in &labels {
            msg.push(l.len() as u8);
            msg.extend_from_slice(l);
        }
        msg.push(0);
        let wire: usize = labels.iter().map(|l| l.len() + 1).sum::<usize>() + 1;
        msg.extend_from_slice(&[0, 1, 0, 1]);
        let r = parse_query(&msg);
        if wire > MAX_NAME_WIRE_LEN {
            prop_assert_eq!(r.map(|_| ()), Err(DnsError::NameTooLong));
            return Ok(());
        }
        let q = r.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let name = q.first().unwrap().name;
        let lower: Vec<Vec<u8>> = labels.iter().map(|l| l.to_ascii_lowercase()).collect();
        prop_assert_eq!(name.as_bytes(), &lower.join(&b'.')[..]);
        let expected: Vec<Vec<u8>> = (0..lower.len()).map(|i| lower[i..].join(&b'.')).collect();
        prop_assert_eq!(name.suffixes().map(<[u8]>::to_vec).collect::<Vec<_>>(), expected);
        check_name(&name)?;
    }
}

// ---------------------------------------------------------------------------
// Compression pointers.
// ---------------------------------------------------------------------------

/// A model of name reading per RFC 1035 §4.1.4 with the decoder's stated
/// limits, counting every length byte it reads.
fn model_read_name(msg: &[u8], start: usize) -> (Result<(Vec<u8>, usize), DnsError>, usize) {
    let mut name: Vec<u8> = Vec::new();
    let mut at = start;
    let mut first_pointer_end = None;
    let mut pointers = 0;
    // Wire length of the name so far, counting the root label (the
    // terminating zero) from the start: a name whose labels already take
    // 255 bytes is too long whatever follows.
    let mut wire = 1;
    let mut steps = 0;
    loop {
        steps += 1;
        let Some(&len) = msg.get(at) else {
            return (Err(DnsError::Truncated), steps);
        };
        if len & 0xc0 == 0xc0 {
            let Some(&lo) = msg.get(at + 1) else {
                return (Err(DnsError::Truncated), steps);
            };
            let target = usize::from(len & 0x3f) << 8 | usize::from(lo);
            pointers += 1;
            if target >= at || pointers > MAX_POINTERS {
                return (Err(DnsError::PointerLoop), steps);
            }
            first_pointer_end.get_or_insert(at + 2);
            at = target;
            continue;
        }
        if len & 0xc0 != 0 {
            return (Err(DnsError::BadLabel), steps);
        }
        let len = usize::from(len);
        if len == 0 {
            return (Ok((name, first_pointer_end.unwrap_or(at + 1))), steps);
        }
        wire += len + 1;
        if wire > MAX_NAME_WIRE_LEN {
            return (Err(DnsError::NameTooLong), steps);
        }
        let Some(label) = msg.get(at + 1..at + 1 + len) else {
            return (Err(DnsError::Truncated), steps);
        };
        if label.contains(&b'.') {
            return (Err(DnsError::BadLabel), steps);
        }
        if !name.is_empty() {
            name.push(b'.');
        }
        name.extend(label.iter().map(u8::to_ascii_lowercase));
        at += 1 + len;
    }
}

/// Most length bytes any name read may take: one per pointer, one per
/// label (at least 2 wire bytes each within 255), one terminator.
const MAX_STEPS: usize = MAX_POINTERS + 1 + (MAX_NAME_WIRE_LEN - 1) / 2 + 1;

/// Runs `f` on another thread and fails if it has not returned within
/// `limit`: a decoder that loops forever fails the test instead of hanging it.
fn within(limit: Duration, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => worker.join().unwrap(),
        Err(RecvTimeoutError::Disconnected) => {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(RecvTimeoutError::Timeout) => panic!("did not terminate within {limit:?}"),
    }
}

/// A message whose body is a random graph of labels and pointers (targets
/// drawn from the whole message, so self, forward and looping pointers are
/// common), and a start offset: mostly a token boundary, sometimes any byte.
fn pointer_graph() -> impl Strategy<Value = (Vec<u8>, usize)> {
    let token = prop_oneof![
        // Short labels of digits and '-': read from the middle, these bytes
        // are themselves plausible label lengths (0x2d-0x39).
        3 => (1usize..8, any::<u8>()).prop_map(|(n, c)| {
            let mut t = vec![n as u8];
            t.extend(std::iter::repeat_n(b"0123456789-"[usize::from(c) % 11], n));
            t
        }),
        1 => (40usize..=63).prop_map(|n| {
            let mut t = vec![n as u8];
            t.resize(n + 1, b'5');
            t
        }),
        4 => (0u16..96).prop_map(|to| vec![0xc0 | (to >> 8) as u8, to as u8]),
        1 => Just(vec![0u8]),
    ];
    vec(token, 1..32).prop_flat_map(|tokens| {
        let mut msg = header(7, 0, 1);
        let mut starts = Vec::new();
        for t in tokens {
            starts.push(msg.len());
            msg.extend(t);
        }
        let len = msg.len();
        (
            Just(msg),
            prop_oneof![4 => prop::sample::select(starts), 1 => 12..len],
        )
    })
}

#[test]
fn compression_pointer_graphs_terminate() {
    within(Duration::from_secs(120), || {
        let mut runner = TestRunner::new(config(5_000));
        let result = runner.run(&pointer_graph(), |(msg, start)| {
            let got = read_name(&msg, start);
            let (want, steps) = model_read_name(&msg, start);
            prop_assert!(steps <= MAX_STEPS, "model took {} steps", steps);
            match (&got, &want) {
                (Ok((name, end)), Ok((wname, wend))) => {
                    prop_assert_eq!(name.as_bytes(), &wname[..]);
                    prop_assert_eq!(end, wend);
                    check_name(name)?;
                }
                // Within one label the decoder may find "runs past the
                // end" before "too long" or after; any other error is met
                // at the same step by both and must be the same.
                (Err(DnsError::Truncated), Err(DnsError::NameTooLong))
                | (Err(DnsError::NameTooLong), Err(DnsError::Truncated)) => {}
                (Err(e), Err(w)) => prop_assert_eq!(e, w),
                _ => prop_assert!(false, "decoder {:?} vs model {:?}", got, want),
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
    });
}

/// The longest legal pointer chain: each pointer jumps to the previous one.
#[test]
fn pointer_chain_at_the_limit() {
    for n in [MAX_POINTERS, MAX_POINTERS + 1] {
        let mut msg = header(1, 0, 1);
        msg.extend_from_slice(b"\x03end\x00");
        let mut prev = 12u16;
        for _ in 0..n {
            let at = msg.len() as u16;
            msg.extend_from_slice(&(0xc000 | prev).to_be_bytes());
            prev = at;
        }
        let start = msg.len() - 2;
        let r = read_name(&msg, start);
        if n <= MAX_POINTERS {
            let (name, end) = r.unwrap();
            assert_eq!(name.as_bytes(), b"end");
            assert_eq!(end, msg.len());
        } else {
            assert_eq!(r.unwrap_err(), DnsError::PointerLoop);
        }
    }
}

// ---------------------------------------------------------------------------
// The 255-byte limit.
// ---------------------------------------------------------------------------

/// Label lengths (1-63) whose wire form, terminator included, is `wire`
/// bytes; `seeds` picks the lengths.
fn label_lengths(wire: usize, seeds: &[u8]) -> Vec<usize> {
    let mut left = wire - 1;
    let mut lens = Vec::new();
    for &seed in seeds.iter().cycle() {
        if left == 0 {
            break;
        }
        // One label takes `step` = 2..=64 bytes and must not leave exactly 1.
        let max = left.min(64);
        let mut step = 2 + usize::from(seed) % (max - 1);
        if left - step == 1 {
            step = if step > 2 { step - 1 } else { step + 1 };
        }
        lens.push(step - 1);
        left -= step;
    }
    lens
}

proptest! {
    #![proptest_config(config(3_000))]

    /// Labels of random lengths around the limit: accepted iff the wire form
    /// (length bytes, labels, terminator) is at most 255 bytes, whether the
    /// name is written out or its tail sits behind a pointer.
    #[test]
    fn name_wire_length_limit(
        wire in prop_oneof![1 => 200usize..=300, 2 => 253usize..=258],
        seeds in vec(any::<u8>(), 64),
        split in any::<prop::sample::Index>(),
    ) {
        let lens = label_lengths(wire, &seeds);
        prop_assert_eq!(lens.iter().map(|l| l + 1).sum::<usize>() + 1, wire);
        prop_assert!(lens.iter().all(|l| (1..=63).contains(l)));
        let labels: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &n)| vec![b'A' + (i as u8 % 26); n]).collect();
        let expected = labels.iter().map(|l| l.to_ascii_lowercase()).collect::<Vec<_>>().join(&b'.');
        let check = |r: Result<(Name, usize), DnsError>| -> Result<(), TestCaseError> {
            if wire <= MAX_NAME_WIRE_LEN {
                let (name, _) = r.map_err(|e| TestCaseError::fail(format!("{e:?} at wire length {wire}")))?;
                prop_assert_eq!(name.as_bytes(), &expected[..]);
            } else {
                prop_assert_eq!(r.map(|_| ()), Err(DnsError::NameTooLong), "wire length {}", wire);
            }
            Ok(())
        };
        // Written out.
        let mut msg = header(1, 0, 1);
        for l in &labels {
            msg.push(l.len() as u8);
            msg.extend_from_slice(l);
        }
        msg.push(0);
        check(read_name(&msg, 12))?;
        // Tail first, then the head and a pointer back to the tail.
        let k = split.index(labels.len());
        let mut msg = header(1, 0, 1);
        for l in &labels[k..] {
            msg.push(l.len() as u8);
            msg.extend_from_slice(l);
        }
        msg.push(0);
        let head = msg.len();
        for l in &labels[..k] {
            msg.push(l.len() as u8);
            msg.extend_from_slice(l);
        }
        msg.extend_from_slice(&0xc00cu16.to_be_bytes());
        check(read_name(&msg, head))?;
    }
}

// ---------------------------------------------------------------------------
// DNS over TCP framing.
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(5_000))]

    #[test]
    fn tcp_message_round_trips(
        body in vec(any::<u8>(), 0..600),
        trailing in vec(any::<u8>(), 0..40),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut seg = (body.len() as u16).to_be_bytes().to_vec();
        seg.extend_from_slice(&body);
        seg.extend_from_slice(&trailing);
        prop_assert_eq!(tcp_message(&seg), Some(&body[..]));
        // A segment that holds only part of the message gives that part.
        let cut = cut.index(body.len() + 3);
        let got = tcp_message(&seg[..cut]);
        if cut < 2 {
            prop_assert_eq!(got, None);
        } else {
            prop_assert_eq!(got, Some(&body[..cut - 2]));
        }
    }
}
