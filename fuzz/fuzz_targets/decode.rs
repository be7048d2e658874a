//! `decode` on arbitrary bytes: the first byte picks the link type, the
//! rest is the packet. Beyond "no panic", every summary must be consistent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_wire::{decode, Fragment, IpProto, LinkType, TcpFlags};

const LINKS: [LinkType; 5] = [
    LinkType::Raw,
    LinkType::Ethernet,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::Null,
];

fuzz_target!(|input: &[u8]| {
    let Some((&selector, data)) = input.split_first() else {
        return;
    };
    let link = LINKS[usize::from(selector) % LINKS.len()];
    let Ok(s) = decode(link, data) else {
        return;
    };
    assert_eq!(s.payload(data).len(), s.payload_len());
    let non_first = matches!(s.fragment, Fragment::NonFirst { .. });
    if non_first {
        assert_eq!((s.src_port, s.dst_port), (None, None));
        assert_eq!(s.tcp_flags, TcpFlags(0));
    }
    let ported = matches!(s.proto, IpProto::Tcp | IpProto::Udp) && !non_first;
    assert_eq!(s.dst_port.is_some(), ported);
    assert_eq!(s.src_port.is_some(), ported);
});
