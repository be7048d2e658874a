//! `decode` on arbitrary bytes: the first byte picks the link type, the
//! rest is the packet. Beyond "no panic", every summary must be consistent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_wire::{decode, decode_partial, DecodeError, Fragment, IpProto, LinkType, TcpFlags};

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
    let full = decode_partial(link, data);
    assert_eq!(full.map_err(|u| u.error), decode(link, data));
    let s = match full {
        Ok(s) => s,
        Err(u) => {
            // What a failure keeps is consistent: ports only for TCP/UDP
            // behind decoded addresses; `cut` only for `Truncated`.
            let p = u.partial;
            assert_eq!(p.src.is_some(), p.dst.is_some());
            if p.dst_port.is_some() {
                assert!(matches!(p.proto, Some(IpProto::Tcp | IpProto::Udp)));
                assert!(p.src.is_some() && p.src_port.is_some());
            }
            assert!(!u.cut || u.error == DecodeError::Truncated);
            return;
        }
    };
    assert!(s.wire_payload_len() >= s.payload_len());
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
