//! The NXDOMAIN answer builder on arbitrary bytes, over UDP and TCP: the
//! properties of `crates/wire/tests/fuzz_dns_answer.rs` (the same check,
//! shared by path).

#![no_main]

#[path = "../../crates/wire/tests/support/nxdomain_check.rs"]
mod nxdomain_check;

use libfuzzer_sys::fuzz_target;
use portcullis_wire::dns::{nxdomain_response, nxdomain_response_tcp, parse_query};

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    match nxdomain_response(data, &mut out) {
        Ok(()) => nxdomain_check::check_nxdomain(data, &out),
        Err(e) => {
            assert!(out.is_empty());
            if let Err(pe) = parse_query(data) {
                assert_eq!(pe, e);
            }
        }
    }
    let mut tcp_out = Vec::new();
    if nxdomain_response_tcp(data, &mut tcp_out).is_err() {
        assert!(tcp_out.is_empty());
    }
});
