//! NFLOG datagrams on arbitrary bytes: `decode_datagram` and
//! `LoggedPacket::decode` never panic, agree on the first message, and
//! never point outside the datagram. The stable target
//! (`crates/nflog/src/fuzz_tests.rs`) also checks the counting intake.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_nflog::{decode_datagram, LoggedPacket};

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    inner.is_empty() || (o.start <= i.start && i.end <= o.end)
}

fuzz_target!(|data: &[u8]| {
    let mut first = None;
    for (i, p) in decode_datagram(data).enumerate() {
        if let Ok(p) = &p {
            assert!(within(data, p.payload));
            assert!(p.prefix.is_none_or(|x| within(data, x) && !x.contains(&0)));
            assert!(p.hw_addr.map_or(0, |h| h.as_bytes().len()) <= 8);
        }
        if i == 0 {
            first = Some(p);
        }
    }
    if let (Ok(p), Some(Ok(q))) = (LoggedPacket::decode(data), first) {
        assert_eq!(p, q);
    }
});
