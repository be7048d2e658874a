//! The NXDOMAIN answer to a queued packet on arbitrary L3 bytes
//! (`inject::build_answer`): no panic; an answer is one or two IP packets
//! that slice cleanly, none after an error. The stable target
//! (`crates/nfqueue/tests/fuzz_inject.rs`) builds well-formed packets
//! around mutated DNS and checks addresses, numbers and checksums.

#![no_main]

use etherparse::SlicedPacket;
use libfuzzer_sys::fuzz_target;
use portcullis_nfqueue::inject::{build_answer, Answer};

fuzz_target!(|data: &[u8]| {
    let mut answer = Answer::default();
    match build_answer(data, &mut answer) {
        Ok(()) => {
            let n = answer.packets().count();
            assert!((1..=2).contains(&n));
            for p in answer.packets() {
                assert!(SlicedPacket::from_ip(p).is_ok());
            }
        }
        Err(_) => assert_eq!(answer.packets().count(), 0),
    }
});
