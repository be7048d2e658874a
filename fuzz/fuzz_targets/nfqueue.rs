//! NFQUEUE packet messages on arbitrary bytes: `Packet::decode` never
//! panics nor points outside the message, and whatever payload it finds
//! goes through the NXDOMAIN builder (`inject::build_answer`) as the
//! daemon's would. The stable target (`crates/nfqueue/src/queue/fuzz.rs`)
//! also checks the datagram intake.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_nfqueue::inject::{build_answer, Answer};
use portcullis_nfqueue::Packet;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::decode(data) {
        let (o, i) = (data.as_ptr_range(), p.payload.as_ptr_range());
        assert!(p.payload.is_empty() || (o.start <= i.start && i.end <= o.end));
        assert!(p.hw_addr.map_or(0, |h| h.as_bytes().len()) <= 8);
        let mut answer = Answer::default();
        match build_answer(p.payload, &mut answer) {
            Ok(()) => assert!((1..=2).contains(&answer.packets().count())),
            Err(_) => assert_eq!(answer.packets().count(), 0),
        }
    }
});
