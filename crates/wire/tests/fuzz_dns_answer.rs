//! Fuzzing the NXDOMAIN answer builder on the stable toolchain
//! (`portcullis-fuzzkit`): mutants of real queries (EDNS, compression,
//! several questions, records after the questions) through
//! `nxdomain_response` and `nxdomain_response_tcp`. `PORTCULLIS_FUZZ_SECS`
//! sets the time (default 2 s); see `fuzz/README.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod support {
    pub mod nxdomain_check;
}

use portcullis_fuzzkit::{bucket, fuzz_bytes, signature, Mutator};
use portcullis_wire::dns::{nxdomain_response, nxdomain_response_tcp, parse_query};
use simple_dns::rdata::{RData, A};
use simple_dns::{Name, Packet, PacketFlag, Question, ResourceRecord, CLASS, QCLASS, QTYPE, TYPE};
use support::nxdomain_check::check_nxdomain;

/// An EDNS0 OPT record: payload 4096, DO set, a cookie option.
const OPT: [u8; 23] = [
    0, 0, 41, 0x10, 0x00, 0, 0, 0x80, 0, 0, 12, 0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];

fn query(id: u16, names: &[(&str, u16)], records: bool, compress: bool, opt: bool) -> Vec<u8> {
    let mut p = Packet::new_query(id);
    p.set_flags(PacketFlag::RECURSION_DESIRED);
    for (n, t) in names {
        p.questions.push(Question::new(
            Name::new_unchecked(n),
            QTYPE::TYPE(TYPE::from(*t)),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
    }
    if records {
        let rr = ResourceRecord::new(
            Name::new_unchecked("x.example"),
            CLASS::IN,
            60,
            RData::A(A {
                address: 0xc612_0001,
            }),
        );
        p.answers.push(rr.clone());
        p.additional_records.push(rr);
    }
    let mut m = if compress {
        p.build_bytes_vec_compressed().unwrap()
    } else {
        p.build_bytes_vec().unwrap()
    };
    if opt {
        m.extend_from_slice(&OPT);
        m[11] += 1;
    }
    m
}

fn seeds() -> Vec<Vec<u8>> {
    let six: Vec<(&str, u16)> = [
        "a.example",
        "b.example",
        "c.example",
        "d.example",
        "e.x",
        "f.x",
    ]
    .iter()
    .map(|n| (*n, 1))
    .collect();
    vec![
        query(0x1234, &[("www.example.com", 1)], false, false, false),
        query(7, &[("www.example.com", 28)], false, false, true),
        query(
            9,
            &[
                ("mail.example.org", 15),
                ("www.example.org", 1),
                ("example.org", 16),
            ],
            false,
            true,
            true,
        ),
        query(0xffff, &six, false, true, true),
        query(3, &[("ads.tracker.example", 1)], true, true, true),
        query(
            4,
            &[(
                "a-label-of-sixty-three-bytes-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example",
                16,
            )],
            false,
            false,
            false,
        ),
    ]
}

/// Tokens: compression pointers (to the header, the first question, far
/// away), label lengths, the root, OPT and A record headers.
fn dict() -> Vec<Vec<u8>> {
    vec![
        vec![0xc0, 0x0c],
        vec![0xc0, 0x00],
        vec![0xc0, 0x02],
        vec![0xc0, 0x04],
        vec![0xff, 0xff],
        vec![0x3f],
        vec![0x40],
        vec![0x80],
        vec![0],
        vec![0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0],
        OPT.to_vec(),
        vec![0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 198, 18, 0, 1],
        vec![0, 1, 0, 1],
    ]
}

/// No panic; an answer exactly when `parse_query` reads the message, with
/// the properties of `check_nxdomain`; the TCP variant agrees with the
/// UDP one and prefixes the length; on error nothing is written.
fn target(m: &[u8]) -> Vec<u64> {
    let mut out = vec![0xaa; 3];
    let r = nxdomain_response(m, &mut out);
    let mut tcp = (m.len().min(0xffff) as u16).to_be_bytes().to_vec();
    tcp.extend_from_slice(m);
    let mut tcp_out = vec![0xaa; 3];
    let rt = nxdomain_response_tcp(&tcp, &mut tcp_out);
    let parsed = parse_query(m);
    match &r {
        Ok(()) => {
            assert!(parsed.is_ok());
            check_nxdomain(m, &out);
            if m.len() <= 0xffff {
                assert_eq!(rt, Ok(()));
                assert_eq!(&tcp_out[2..], &out[..]);
                assert_eq!(
                    usize::from(u16::from_be_bytes([tcp_out[0], tcp_out[1]])),
                    out.len()
                );
            }
        }
        Err(e) => {
            assert!(out.is_empty(), "output left after an error");
            if let Err(pe) = &parsed {
                assert_eq!(pe, e, "the error is parse_query's");
            }
            if m.len() <= 0xffff {
                assert_eq!(&rt, &r);
                assert!(tcp_out.is_empty());
            }
        }
    }
    let q = parsed.as_ref().ok();
    let questions = q.map(|q| (q.questions().count(), q.header.qdcount.min(8)));
    // Which record sections the query claims to have.
    let sections = m
        .get(6..12)
        .map(|c| c.chunks(2).map(|n| n != [0, 0]).collect::<Vec<_>>());
    let opt = out.get(11).copied(); // ARCOUNT low byte: OPT found or not
    vec![
        signature(&("result", r.err(), questions)),
        signature(&("sections", r.is_ok(), &sections, opt)),
        signature(&("len", r.err(), bucket(m.len()), bucket(out.len()))),
        signature(&("opt", r.is_ok(), opt, questions)),
    ]
}

#[test]
fn fuzz_dns_answer() {
    let mutator = Mutator {
        max_len: 1024,
        dict: dict(),
        netlink: false,
    };
    for s in seeds() {
        let mut out = Vec::new();
        nxdomain_response(&s, &mut out).unwrap();
        check_nxdomain(&s, &out);
    }
    fuzz_bytes("dns_answer", seeds(), mutator, target);
}
