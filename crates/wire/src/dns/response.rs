//! Answers built from a query: the NXDOMAIN a firewall sends back for a
//! blocked name, so that the client fails at once instead of timing out.
//!
//! Guarantees:
//! - Only what [`parse_query`] accepts is answered; anything else is an
//!   error, never a panic.
//! - The answer is never longer than the query: it holds the header, the
//!   questions `parse_query` read (at most [`MAX_QUESTIONS`]) and at most an
//!   11-byte OPT record, which replaces the query's own (at least 11 bytes).
//!   So it fits wherever the query fitted (512-byte UDP, the path MTU).
//! - Every loop over the query is bounded: at most [`MAX_RECORDS_SCANNED`]
//!   records are skipped looking for the OPT record, and each name skip
//!   stops after 128 labels.

use super::{parse_query, read_name, tcp_message, DnsError, Query, HEADER_LEN, MAX_QUESTIONS};

/// Records of the query (answer, authority, additional sections) skipped
/// looking for its OPT record; an OPT behind more is not seen, and the
/// answer then carries none. Real queries have one or two.
pub const MAX_RECORDS_SCANNED: usize = 32;

/// The UDP payload size the answer's OPT record advertises (the DNS Flag
/// Day 2020 default).
pub const EDNS_UDP_PAYLOAD_SIZE: u16 = 1232;

/// RCODE 3, "Name Error" (RFC 1035 §4.1.1).
const RCODE_NXDOMAIN: u16 = 3;
/// RR type of the EDNS0 pseudo-record (RFC 6891).
const TYPE_OPT: u16 = 41;
/// The DO ("DNSSEC OK") bit in the OPT record's TTL field (RFC 3225).
const EDNS_DO: u32 = 0x8000;
/// Header flag bits: QR, opcode, RD, RA, CD.
const QR: u16 = 0x8000;
const OPCODE_MASK: u16 = 0x7800;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;
const CD: u16 = 0x0010;
/// Labels in a name before a skip gives up: 255 wire bytes hold at most 127.
const MAX_LABELS: usize = 128;

/// Writes into `out` (cleared first) an NXDOMAIN answer to the DNS query
/// `query_msg` (a UDP payload, or a TCP payload after [`tcp_message`]).
///
/// The answer has the query's ID, QR=1, the query's opcode, RD and CD, RA=1,
/// AA=TC=AD=0, RCODE=3 (NXDOMAIN), the questions `parse_query` read copied
/// byte for byte (QDCOUNT is their number), no answer and no authority
/// records. If the query carries an EDNS0 OPT record in its additional
/// section, the answer carries a minimal one (no options, version 0,
/// payload size [`EDNS_UDP_PAYLOAD_SIZE`], the query's DO bit) and
/// ARCOUNT=1; otherwise ARCOUNT=0.
///
/// The answer is never longer than the query (its OPT record, 11 bytes,
/// replaces the query's, which is at least as long), so it fits wherever
/// the query did. No input panics; the work is bounded (at most
/// [`MAX_RECORDS_SCANNED`] records are skipped looking for the OPT).
///
/// # Errors
/// Whatever [`parse_query`] returns for the message; and
/// [`DnsError::PointerLoop`] for a question name whose compression pointer
/// points into the header (the answer's header differs from the query's, so
/// the copied name would read differently). On error `out` is empty.
pub fn nxdomain_response(query_msg: &[u8], out: &mut Vec<u8>) -> Result<(), DnsError> {
    out.clear();
    append_nxdomain(query_msg, out)
}

/// Like [`nxdomain_response`] for DNS over TCP: `tcp_payload` is the TCP
/// payload of the query, starting with its 2-byte length prefix (RFC 1035
/// §4.2.2); `out` (cleared first) receives the answer with its own prefix.
///
/// # Errors
/// [`DnsError::Truncated`] if the payload is shorter than the prefix, else
/// as [`nxdomain_response`]. On error `out` is empty.
pub fn nxdomain_response_tcp(tcp_payload: &[u8], out: &mut Vec<u8>) -> Result<(), DnsError> {
    out.clear();
    let msg = tcp_message(tcp_payload).ok_or(DnsError::Truncated)?;
    out.extend_from_slice(&[0, 0]);
    append_nxdomain(msg, out).inspect_err(|_| out.clear())?;
    // The answer is no longer than the message, whose length fit in 16 bits.
    let len = u16::try_from(out.len() - 2).map_err(|_| DnsError::Truncated)?;
    out[..2].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Appends the answer to `out`; on error `out` is as it was.
fn append_nxdomain(msg: &[u8], out: &mut Vec<u8>) -> Result<(), DnsError> {
    let query = parse_query(msg)?;
    let edns_do = find_opt(msg, &query).map(|ttl| ttl & EDNS_DO);
    let qdcount = query.questions().count() as u16; // at most MAX_QUESTIONS
    let flags = QR | (query.header.flags & (OPCODE_MASK | RD | CD)) | RA | RCODE_NXDOMAIN;

    let start = out.len();
    out.reserve(query.questions_end + 11);
    out.extend_from_slice(&query.header.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&qdcount.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // ANCOUNT, NSCOUNT
    out.extend_from_slice(&u16::from(edns_do.is_some()).to_be_bytes());
    // parse_query read exactly this range: it is inside `msg`.
    out.extend_from_slice(&msg[HEADER_LEN..query.questions_end]);

    // A name compressed into the header would now read our header bytes:
    // check that each question reads back the same from the answer.
    let answer = &out[start..];
    let mut at = HEADER_LEN;
    for q in query.questions() {
        match read_name(answer, at) {
            Ok((name, after)) if name == q.name => at = after + 4,
            _ => {
                out.truncate(start);
                return Err(DnsError::PointerLoop);
            }
        }
    }

    if let Some(edns_do) = edns_do {
        out.push(0); // root name
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&EDNS_UDP_PAYLOAD_SIZE.to_be_bytes());
        // Extended RCODE 0 and version 0: plain NXDOMAIN; DO copied.
        out.extend_from_slice(&edns_do.to_be_bytes());
        out.extend_from_slice(&[0, 0]); // RDLENGTH
    }
    Ok(())
}

fn be16(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

/// The TTL field of the query's first OPT record (extended RCODE, version,
/// DO bit), if one is found within [`MAX_RECORDS_SCANNED`] records and the
/// message can be walked that far.
fn find_opt(msg: &[u8], query: &Query) -> Option<u32> {
    let ancount = usize::from(be16(msg, 6)?);
    let nscount = usize::from(be16(msg, 8)?);
    let arcount = usize::from(be16(msg, 10)?);
    let mut at = query.questions_end;
    // Questions parse_query did not read (more than MAX_QUESTIONS).
    let unread = usize::from(query.header.qdcount).saturating_sub(MAX_QUESTIONS);
    for _ in 0..unread.min(MAX_RECORDS_SCANNED) {
        at = skip_name(msg, at)? + 4;
    }
    if unread > MAX_RECORDS_SCANNED {
        return None;
    }
    let mut budget = MAX_RECORDS_SCANNED;
    for _ in 0..(ancount + nscount).min(budget) {
        at = skip_record(msg, at)?;
    }
    budget = budget.checked_sub(ancount + nscount)?;
    for _ in 0..arcount.min(budget) {
        // Only a whole record counts (so the answer stays no longer).
        let end = skip_record(msg, at)?;
        if msg.get(at) == Some(&0) && be16(msg, at + 1) == Some(TYPE_OPT) {
            let ttl = msg.get(at + 5..at + 9)?;
            return Some(u32::from_be_bytes([ttl[0], ttl[1], ttl[2], ttl[3]]));
        }
        at = end;
    }
    None
}

/// The offset just past the resource record at `at`.
fn skip_record(msg: &[u8], at: usize) -> Option<usize> {
    let fixed = skip_name(msg, at)?;
    let rdlength = usize::from(be16(msg, fixed + 8)?);
    let end = fixed + 10 + rdlength;
    (end <= msg.len()).then_some(end)
}

/// The offset just past the name at `at`, without decoding it.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..MAX_LABELS {
        let len = *msg.get(at)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => at += 1 + usize::from(len),
            0xc0 => return (at + 2 <= msg.len()).then_some(at + 2),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    // Test helpers: a failed unwrap is a failed test.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use simple_dns::rdata::{RData, A};
    use simple_dns::{Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, QCLASS, QTYPE};
    use simple_dns::{OPCODE, RCODE, TYPE};

    /// `www.example.com A IN`, ID 0x1234, RD.
    const QUERY: [u8; 33] = [
        0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, //
        3, b'w', b'w', b'w', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 3, b'c', b'o', b'm', 0,
        0, 1, 0, 1,
    ];

    /// The same query with an OPT record (payload 4096, DO set, a cookie).
    fn query_with_opt() -> Vec<u8> {
        let mut m = QUERY.to_vec();
        m[11] = 1; // ARCOUNT
        m.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0x80, 0, 0, 12]);
        m.extend_from_slice(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
        m
    }

    #[test]
    fn plain_query_gets_nxdomain() {
        let mut out = vec![0xaa; 3]; // cleared first
        nxdomain_response(&QUERY, &mut out).unwrap();
        let mut want = QUERY.to_vec();
        want[2..4].copy_from_slice(&[0x81, 0x83]);
        assert_eq!(out, want);
    }

    #[test]
    fn edns_query_gets_a_minimal_opt_with_do() {
        let q = query_with_opt();
        let mut out = Vec::new();
        nxdomain_response(&q, &mut out).unwrap();
        let mut want = QUERY.to_vec();
        want[2..4].copy_from_slice(&[0x81, 0x83]);
        want[11] = 1;
        want.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0]);
        assert_eq!(out, want);
        assert!(out.len() <= q.len());

        let p = Packet::parse(&out).unwrap();
        assert_eq!(p.rcode(), RCODE::NameError);
        let opt = p.opt().unwrap();
        // simple-dns 0.13 reads the version from the TTL's third byte, where
        // RFC 6891 puts DO: it sees 0x80 here.
        assert_eq!(opt.udp_packet_size, 1232);
        assert!(opt.opt_codes.is_empty());
    }

    #[test]
    fn opcode_rd_cd_copied_other_flags_cleared() {
        let mut q = QUERY.to_vec();
        // opcode 2 (STATUS), AA, TC, RD clear, Z, AD, CD, rcode 5
        q[2..4].copy_from_slice(&[0x16, 0x75]);
        let mut out = Vec::new();
        nxdomain_response(&q, &mut out).unwrap();
        assert_eq!(&out[2..4], &[0x90, 0x93]);
    }

    #[test]
    fn opt_after_answer_and_authority_records_is_found() {
        let mut q = QUERY.to_vec();
        q[7] = 1; // ANCOUNT
        q[9] = 1; // NSCOUNT
        q[11] = 2; // ARCOUNT
        let rr = [0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 1];
        q.extend_from_slice(&rr);
        q.extend_from_slice(&rr);
        q.extend_from_slice(&rr); // an additional record before the OPT
        q.extend_from_slice(&[0, 0, 41, 2, 0, 0, 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        nxdomain_response(&q, &mut out).unwrap();
        assert_eq!(&out[6..12], &[0, 0, 0, 0, 0, 1]);
        assert_eq!(
            &out[out.len() - 11..],
            &[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn truncated_additional_section_means_no_opt() {
        let q = query_with_opt();
        let mut out = Vec::new();
        for cut in [q.len() - 5, QUERY.len() + 9, QUERY.len() + 3] {
            nxdomain_response(&q[..cut], &mut out).unwrap();
            assert_eq!(out.len(), QUERY.len());
            assert_eq!(&out[10..12], &[0, 0]);
        }
    }

    #[test]
    fn more_than_max_questions_answers_those_read() {
        let mut q = vec![0, 7, 0, 0, 0, 6, 0, 0, 0, 0, 0, 1];
        for c in b"abcdef" {
            q.extend_from_slice(&[1, *c, 0, 0, 1, 0, 1]);
        }
        q.extend_from_slice(&[0, 0, 41, 2, 0, 0, 0, 0, 0, 0, 0]);
        let mut out = Vec::new();
        nxdomain_response(&q, &mut out).unwrap();
        assert_eq!(&out[4..12], &[0, 4, 0, 0, 0, 0, 0, 1]);
        assert_eq!(&out[12..12 + 4 * 7], &q[12..12 + 4 * 7]);
        assert_eq!(out.len(), 12 + 4 * 7 + 11);
    }

    #[test]
    fn errors_of_parse_query_and_out_left_empty() {
        let mut out = vec![1, 2, 3];
        assert_eq!(
            nxdomain_response(&QUERY[..11], &mut out),
            Err(DnsError::Truncated)
        );
        assert!(out.is_empty());
        let mut resp = QUERY.to_vec();
        resp[2] |= 0x80;
        assert_eq!(nxdomain_response(&resp, &mut out), Err(DnsError::NotQuery));
        let mut none = QUERY.to_vec();
        none[5] = 0;
        assert_eq!(
            nxdomain_response(&none, &mut out),
            Err(DnsError::NoQuestion)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn pointer_into_the_header_is_refused() {
        // The name points at offset 4 (QDCOUNT's high byte, 0: the root) in
        // the query, but the answer would read it there too; offset 2 (the
        // flags, 0x01 = a 1-byte label in the query) reads differently.
        let mut q = vec![0, 1, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&[0xc0, 4, 0, 1, 0, 1]);
        let mut out = Vec::new();
        nxdomain_response(&q, &mut out).unwrap();
        q[12..14].copy_from_slice(&[0xc0, 2]);
        assert!(parse_query(&q).is_ok());
        assert_eq!(nxdomain_response(&q, &mut out), Err(DnsError::PointerLoop));
        assert!(out.is_empty());
    }

    #[test]
    fn tcp_variant_prefixes_the_length() {
        let q = query_with_opt();
        let mut t = (q.len() as u16).to_be_bytes().to_vec();
        t.extend_from_slice(&q);
        t.extend_from_slice(b"next query");
        let (mut udp, mut tcp) = (Vec::new(), Vec::new());
        nxdomain_response(&q, &mut udp).unwrap();
        nxdomain_response_tcp(&t, &mut tcp).unwrap();
        assert_eq!(&tcp[..2], &(udp.len() as u16).to_be_bytes());
        assert_eq!(&tcp[2..], &udp[..]);
        assert_eq!(
            nxdomain_response_tcp(&[0], &mut tcp),
            Err(DnsError::Truncated)
        );
        assert!(tcp.is_empty());
        assert_eq!(
            nxdomain_response_tcp(&t[..10], &mut tcp),
            Err(DnsError::Truncated)
        );
        assert!(tcp.is_empty());
    }

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9-]{1,20}"
    }

    fn name() -> impl Strategy<Value = String> {
        vec(label(), 1..5).prop_map(|l| l.join("."))
    }

    /// A query as a client builds it: random id, opcode, RD/CD, 1-3
    /// questions, maybe an answer (some clients send one in NOTIFY), maybe
    /// other additional records, maybe an OPT.
    #[derive(Debug, Clone)]
    struct Spec {
        id: u16,
        opcode: u8,
        rd: bool,
        cd: bool,
        names: Vec<(String, u16)>,
        answer: bool,
        extra: bool,
        opt: Option<(u16, bool)>,
        compress: bool,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            (
                any::<u16>(),
                prop_oneof![Just(0u8), Just(1), Just(2), Just(4), Just(5)],
                any::<bool>(),
                any::<bool>(),
            ),
            vec(
                (
                    name(),
                    prop_oneof![Just(1u16), Just(28), Just(16), Just(255)],
                ),
                1..4,
            ),
            (any::<bool>(), any::<bool>()),
            proptest::option::of((512u16..=u16::MAX, any::<bool>())),
            any::<bool>(),
        )
            .prop_map(
                |((id, opcode, rd, cd), names, (answer, extra), opt, compress)| Spec {
                    id,
                    opcode,
                    rd,
                    cd,
                    names,
                    answer,
                    extra,
                    opt,
                    compress,
                },
            )
    }

    fn build(s: &Spec) -> Vec<u8> {
        let mut p = Packet::new_query(s.id);
        *p.opcode_mut() = OPCODE::from(u16::from(s.opcode));
        p.remove_flags(PacketFlag::RECURSION_DESIRED);
        if s.rd {
            p.set_flags(PacketFlag::RECURSION_DESIRED);
        }
        if s.cd {
            p.set_flags(PacketFlag::CHECKING_DISABLED);
        }
        for (n, t) in &s.names {
            p.questions.push(Question::new(
                Name::new_unchecked(n),
                if *t == 255 {
                    QTYPE::ANY
                } else {
                    QTYPE::TYPE(TYPE::from(*t))
                },
                QCLASS::CLASS(CLASS::IN),
                false,
            ));
        }
        let rr = || {
            ResourceRecord::new(
                Name::new_unchecked("x.example"),
                CLASS::IN,
                60,
                RData::A(A {
                    address: 0xc6120001,
                }),
            )
        };
        if s.answer {
            p.answers.push(rr());
        }
        if s.extra {
            p.additional_records.push(rr());
        }
        let mut m = if s.compress {
            p.build_bytes_vec_compressed().unwrap()
        } else {
            p.build_bytes_vec().unwrap()
        };
        if let Some((size, do_bit)) = s.opt {
            // Written by hand, after any other additional record, with a
            // cookie option: simple-dns writes its OPT first and has no DO.
            m.extend_from_slice(&[0, 0, 41]);
            m.extend_from_slice(&size.to_be_bytes());
            m.extend_from_slice(&[0, 0, if do_bit { 0x80 } else { 0 }, 0, 0, 12]);
            m.extend_from_slice(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
            m[11] += 1; // ARCOUNT, at most 1 before
        }
        m
    }

    proptest! {
        #![proptest_config(config(512))]

        /// simple-dns reads back an NXDOMAIN with the query's id, opcode,
        /// RD, CD and questions, RA set, nothing else, and an OPT exactly
        /// when the query had one; it is never longer than the query.
        #[test]
        fn simple_dns_reads_the_answer(s in spec()) {
            let q = build(&s);
            let mut out = Vec::new();
            nxdomain_response(&q, &mut out).unwrap();
            prop_assert!(out.len() <= q.len());
            let query = Packet::parse(&q).unwrap();
            let p = Packet::parse(&out).unwrap();
            prop_assert_eq!(p.id(), s.id);
            prop_assert_eq!(p.rcode(), RCODE::NameError);
            prop_assert_eq!(p.opcode(), query.opcode());
            prop_assert!(p.has_flags(PacketFlag::RESPONSE | PacketFlag::RECURSION_AVAILABLE));
            prop_assert_eq!(p.has_flags(PacketFlag::RECURSION_DESIRED), s.rd);
            prop_assert_eq!(p.has_flags(PacketFlag::CHECKING_DISABLED), s.cd);
            prop_assert!(!p.has_flags(PacketFlag::AUTHORITATIVE_ANSWER));
            prop_assert!(!p.has_flags(PacketFlag::TRUNCATION));
            prop_assert!(!p.has_flags(PacketFlag::AUTHENTIC_DATA));
            // Question has no PartialEq: compare what Debug shows (names as sent).
            prop_assert_eq!(format!("{:?}", p.questions), format!("{:?}", query.questions));
            prop_assert!(p.answers.is_empty() && p.name_servers.is_empty());
            prop_assert!(p.additional_records.is_empty());
            match (s.opt, p.opt()) {
                (None, None) => {}
                (Some((_, do_bit)), Some(opt)) => {
                    prop_assert_eq!(opt.udp_packet_size, 1232);
                    prop_assert!(opt.opt_codes.is_empty());
                    // The whole record, DO copied (simple-dns cannot show DO).
                    let want = [0, 0, 41, 4, 0xd0, 0, 0, if do_bit { 0x80 } else { 0 }, 0, 0, 0];
                    prop_assert_eq!(&out[out.len() - 11..], &want[..]);
                }
                (want, got) => prop_assert!(false, "opt {:?}, answer {:?}", want, got),
            }
        }

        /// Arbitrary bytes never panic; an answer exists exactly when
        /// parse_query reads the message, and is no longer than it.
        #[test]
        fn any_bytes(m in vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            match nxdomain_response(&m, &mut out) {
                Ok(()) => {
                    prop_assert!(parse_query(&m).is_ok());
                    prop_assert!(out.len() <= m.len());
                    prop_assert_eq!(&out[..2], &m[..2]);
                    prop_assert_eq!(out[3] & 0x0f, 3);
                }
                Err(_) => prop_assert!(out.is_empty()),
            }
        }

        /// A valid query header, then label/pointer/record soup.
        #[test]
        fn query_header_then_soup(
            qd in 1u16..8, an in 0u16..3, ar in 0u16..4,
            body in vec(prop_oneof![Just(0u8), Just(1), Just(41), Just(0xc0), 0u8..64, any::<u8>()], 0..200),
        ) {
            let mut m = vec![0, 1, 1, 0];
            m.extend_from_slice(&qd.to_be_bytes());
            m.extend_from_slice(&an.to_be_bytes());
            m.extend_from_slice(&[0, 0]);
            m.extend_from_slice(&ar.to_be_bytes());
            m.extend_from_slice(&body);
            let mut out = Vec::new();
            let mut tcp = (m.len() as u16).to_be_bytes().to_vec();
            tcp.extend_from_slice(&m);
            let mut tcp_out = Vec::new();
            let r = nxdomain_response(&m, &mut out);
            prop_assert_eq!(r, nxdomain_response_tcp(&tcp, &mut tcp_out));
            if r.is_ok() {
                prop_assert!(out.len() <= m.len());
                prop_assert_eq!(&tcp_out[2..], &out[..]);
                // Each question reads back from the answer as from the query.
                let q = parse_query(&m).unwrap();
                let mut at = HEADER_LEN;
                for question in q.questions() {
                    let (n, after) = read_name(&out, at).unwrap();
                    prop_assert_eq!(n, question.name);
                    at = after + 4;
                }
            } else {
                prop_assert!(out.is_empty() && tcp_out.is_empty());
            }
        }
    }
}
