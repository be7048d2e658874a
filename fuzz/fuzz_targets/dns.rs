//! The DNS query decoder on arbitrary bytes: as a UDP payload, as a TCP
//! payload with its length prefix, and `read_name` from an offset chosen by
//! the first byte. Names must stay within the limits the module states.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_wire::dns::{parse_query, read_name, tcp_message, Name, MAX_NAME_WIRE_LEN};

fn check(name: &Name) {
    let bytes = name.as_bytes();
    assert!(bytes.len() <= MAX_NAME_WIRE_LEN - 2);
    assert!(!bytes.iter().any(u8::is_ascii_uppercase));
    for suffix in name.suffixes() {
        assert!(!suffix.is_empty() && bytes.ends_with(suffix));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = parse_query(data) {
        assert!(q.questions_end <= data.len());
        q.questions().for_each(|q| check(&q.name));
    }
    if let Some(msg) = tcp_message(data) {
        if let Ok(q) = parse_query(msg) {
            q.questions().for_each(|q| check(&q.name));
        }
    }
    if let Some(&start) = data.first() {
        if let Ok((name, end)) = read_name(data, usize::from(start)) {
            assert!(end > usize::from(start) && end <= data.len());
            check(&name);
        }
    }
});
