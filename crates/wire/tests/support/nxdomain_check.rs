//! The properties of an NXDOMAIN answer, shared by the stable fuzz
//! targets of `portcullis-wire` (`fuzz_dns_answer.rs`) and
//! `portcullis-nfqueue` (`fuzz_inject.rs`, through `#[path]`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use portcullis_wire::dns::parse_query;
use simple_dns::{Packet, PacketFlag, RCODE};

/// `answer` is what `nxdomain_response` built from `query` (a DNS message
/// without TCP prefix): no longer than the query, the query's id, QR and
/// NXDOMAIN; read back (QR cleared) it has the questions the query has
/// (at most `MAX_QUESTIONS`); when simple-dns reads the query, it reads
/// the answer with that id, rcode, and the query's (first) questions.
pub fn check_nxdomain(query: &[u8], answer: &[u8]) {
    assert!(answer.len() <= query.len(), "answer longer than the query");
    assert!(answer.len() >= 12, "shorter than a header");
    assert_eq!(answer[..2], query[..2], "id");
    assert_eq!(answer[2] & 0x80, 0x80, "QR");
    assert_eq!(answer[3] & 0x0f, 3, "RCODE");
    let q = parse_query(query).expect("the query parses");
    let mut back = answer.to_vec();
    back[2] &= 0x7f;
    let a = parse_query(&back).expect("the answer reads back as a query");
    assert!(
        q.questions().eq(a.questions()),
        "questions differ: {:?} / {:?}",
        q.questions().collect::<Vec<_>>(),
        a.questions().collect::<Vec<_>>()
    );
    // simple-dns refuses some questions a resolver takes (unknown QTYPE
    // values, for one): judge the answer by it only when it reads the query.
    let Ok(sq) = Packet::parse(query) else {
        return;
    };
    let n = q.questions().count();
    let p = Packet::parse(answer)
        .unwrap_or_else(|e| panic!("simple-dns reads the query but not the answer: {e}"));
    assert_eq!(p.id(), q.header.id);
    assert_eq!(p.rcode(), RCODE::NameError);
    assert!(p.has_flags(PacketFlag::RESPONSE));
    assert_eq!(p.questions.len(), n);
    assert!(p.answers.is_empty() && p.name_servers.is_empty());
    assert!(p.additional_records.is_empty(), "only an OPT record");
    let want = format!("{:?}", &sq.questions[..n.min(sq.questions.len())]);
    assert_eq!(format!("{:?}", p.questions), want, "simple-dns questions");
}
