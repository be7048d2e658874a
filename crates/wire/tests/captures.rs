//! Table tests on hand-made captures of tricky but real traffic: one row
//! per capture, the exact summary asserted. The bytes were written for these
//! tests (checksums are correct, though the decoder does not read them).

// Test helpers: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use portcullis_wire::dns::{parse_query, tcp_message};
use portcullis_wire::{decode, DecodeError, Fragment, IpProto, LinkType, PacketSummary};

/// What the transport payload must be.
#[derive(Debug, Clone, Copy)]
enum Payload {
    /// Exactly these bytes.
    Bytes(&'static [u8]),
    /// This many bytes.
    Len(usize),
    /// A DNS query over UDP with these question names.
    Dns(&'static [&'static str]),
    /// A length-prefixed DNS query over TCP with these question names.
    DnsTcp(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy)]
struct Expect {
    src: &'static str,
    dst: &'static str,
    proto: IpProto,
    ports: Option<(u16, u16)>,
    /// tcpdump letters, `.` for none.
    flags: &'static str,
    window: u16,
    options_len: u8,
    icmp: Option<(u8, u8)>,
    fragment: Fragment,
    ttl: u8,
    ip_len: u16,
    truncated: bool,
    payload: Payload,
}

const BASE: Expect = Expect {
    src: "",
    dst: "",
    proto: IpProto::Other(255),
    ports: None,
    flags: ".",
    window: 0,
    options_len: 0,
    icmp: None,
    fragment: Fragment::None,
    ttl: 64,
    ip_len: 0,
    truncated: false,
    payload: Payload::Len(0),
};

#[derive(Debug)]
enum Want {
    Ok(Expect),
    Err(DecodeError),
}

const fn ok(e: Expect) -> Want {
    Want::Ok(e)
}

struct Case {
    name: &'static str,
    link: LinkType,
    hex: &'static [&'static str],
    want: Want,
}

fn bytes(hex: &[&str]) -> Vec<u8> {
    let hex: String = hex.concat();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn check(case: &Case) {
    let data = bytes(case.hex);
    let got = decode(case.link, &data);
    let e = match &case.want {
        Want::Err(err) => {
            assert_eq!(got, Err(*err), "{}", case.name);
            return;
        }
        Want::Ok(e) => e,
    };
    let s: PacketSummary = got.unwrap_or_else(|err| panic!("{}: {err:?}", case.name));
    let n = case.name;
    assert_eq!(s.src, e.src.parse::<IpAddr>().unwrap(), "{n}: src");
    assert_eq!(s.dst, e.dst.parse::<IpAddr>().unwrap(), "{n}: dst");
    assert_eq!(s.proto, e.proto, "{n}: proto");
    assert_eq!((s.src_port, s.dst_port), e.ports.unzip(), "{n}: ports");
    assert_eq!(s.tcp_flags.to_string(), e.flags, "{n}: flags");
    assert_eq!(s.tcp_window, e.window, "{n}: window");
    assert_eq!(s.tcp_options_len, e.options_len, "{n}: options");
    assert_eq!(s.icmp, e.icmp, "{n}: icmp");
    assert_eq!(s.fragment, e.fragment, "{n}: fragment");
    assert_eq!(s.ttl, e.ttl, "{n}: ttl");
    assert_eq!(s.ip_len, e.ip_len, "{n}: ip_len");
    assert_eq!(s.truncated, e.truncated, "{n}: truncated");
    let payload = s.payload(&data);
    assert_eq!(payload.len(), s.payload_len(), "{n}: payload_len");
    let names = |msg: &[u8]| -> Vec<String> {
        let q = parse_query(msg).unwrap_or_else(|err| panic!("{n}: dns {err:?}"));
        q.questions().map(|q| q.name.to_text()).collect()
    };
    match e.payload {
        Payload::Bytes(b) => assert_eq!(payload, b, "{n}: payload"),
        Payload::Len(l) => assert_eq!(payload.len(), l, "{n}: payload length"),
        Payload::Dns(want) => assert_eq!(names(payload), want, "{n}: dns names"),
        Payload::DnsTcp(want) => {
            let msg = tcp_message(payload).unwrap();
            assert_eq!(
                msg.len() + 2,
                payload.len(),
                "{n}: whole message in segment"
            );
            assert_eq!(names(msg), want, "{n}: dns names");
        }
    }
}

#[test]
fn captures() {
    for case in CASES {
        check(case);
    }
    // Each capture cut anywhere decodes or fails, never panics.
    for case in CASES {
        let data = bytes(case.hex);
        for cut in 0..data.len() {
            let _ = decode(case.link, &data[..cut]);
        }
    }
}

static CASES: &[Case] = &[
    Case {
        name: "linux_syn",
        // A Linux `connect()` SYN: MSS, SACK-permitted, timestamps, NOP, window scale.
        link: LinkType::Ethernet,
        hex: &[
            "3c52820a1b2c52540012345a08004500003c1c46400040069b10c0a80114c0a8",
            "0101c93a00166b8b456700000000a002faf0890d0000020405b40402080a9a3b",
            "2c1d0000000001030307",
        ],
        want: ok(Expect {
            src: "192.168.1.20",
            dst: "192.168.1.1",
            proto: IpProto::Tcp,
            ports: Some((51514, 22)),
            flags: "S",
            window: 64240,
            options_len: 20,
            ip_len: 60,
            ..BASE
        }),
    },
    Case {
        name: "nmap_syn",
        // An nmap `-sS` probe as NFQUEUE hands it over: MSS only, window 1024, no DF.
        link: LinkType::Raw,
        hex: &[
            "4500002c6e1a0000290625b3cb007142c0a80114ef3201bb1f2e3d4c00000000",
            "6002040048bf0000020405b4",
        ],
        want: ok(Expect {
            src: "203.0.113.66",
            dst: "192.168.1.20",
            proto: IpProto::Tcp,
            ports: Some((61234, 443)),
            flags: "S",
            window: 1024,
            options_len: 4,
            ttl: 41,
            ip_len: 44,
            ..BASE
        }),
    },
    Case {
        name: "rst_padded",
        // A 40-byte RST/ACK padded to the 60-byte Ethernet minimum: padding is not payload.
        link: LinkType::Ethernet,
        hex: &[
            "3c52820a1b2c52540012345a080045000028000040004006b76ac0a80101c0a8",
            "01140016c93a000000006b8b456850140000b2260000000000000000",
        ],
        want: ok(Expect {
            src: "192.168.1.1",
            dst: "192.168.1.20",
            proto: IpProto::Tcp,
            ports: Some((22, 51514)),
            flags: "RA",
            ip_len: 40,
            ..BASE
        }),
    },
    Case {
        name: "dns_sll",
        // `tcpdump -i any`: a mixed-case DNS query in Linux cooked v1.
        link: LinkType::LinuxSll,
        hex: &[
            "00000001000652540012345a000008004500003d1c464000401106590a00020f",
            "0a0002039cbb0035002981cebeef012000010000000000000357575707457861",
            "6d706c6503434f4d0000010001",
        ],
        want: ok(Expect {
            src: "10.0.2.15",
            dst: "10.0.2.3",
            proto: IpProto::Udp,
            ports: Some((40123, 53)),
            ip_len: 61,
            payload: Payload::Dns(&["www.example.com"]),
            ..BASE
        }),
    },
    Case {
        name: "echo6_sll2",
        // Linux cooked v2: ICMPv6 echo request.
        link: LinkType::LinuxSll2,
        hex: &[
            "86dd0000000000020001040652540012345a00006000000000103a4020010db8",
            "00000000000000000000002020010db800000000000000000000000180008057",
            "123400016162636465666768",
        ],
        want: ok(Expect {
            src: "2001:db8::20",
            dst: "2001:db8::1",
            proto: IpProto::Icmpv6,
            icmp: Some((128, 0)),
            ip_len: 56,
            payload: Payload::Bytes(b"abcdefgh"),
            ..BASE
        }),
    },
    Case {
        name: "mld_hbh",
        // An MLDv2 report behind a hop-by-hop router-alert header, hop limit 1.
        link: LinkType::Ethernet,
        hex: &[
            "33330000001652540012345a86dd6000000000240001fe800000000000005054",
            "00fffe12345aff0200000000000000000000000000163a000502000001008f00",
            "b8dc0000000104000000ff0200000000000000000001ff12345a",
        ],
        want: ok(Expect {
            src: "fe80::5054:ff:fe12:345a",
            dst: "ff02::16",
            proto: IpProto::Icmpv6,
            icmp: Some((143, 0)),
            ttl: 1,
            ip_len: 76,
            payload: Payload::Len(20),
            ..BASE
        }),
    },
    Case {
        name: "lo6_synack",
        // macOS loopback (AF_INET6 = 30, little-endian): a SYN-ACK on ::1.
        link: LinkType::Null,
        hex: &[
            "1e00000060000000001806400000000000000000000000000000000100000000",
            "0000000000000000000000011f90c35011111111222222236012ffff13bd0000",
            "020440c4",
        ],
        want: ok(Expect {
            src: "::1",
            dst: "::1",
            proto: IpProto::Tcp,
            ports: Some((8080, 50000)),
            flags: "SA",
            window: 65535,
            options_len: 4,
            ip_len: 64,
            ..BASE
        }),
    },
    Case {
        name: "lo4_be_udp",
        // BSD loopback written by a big-endian host (AF_INET = 2).
        link: LinkType::Null,
        hex: &[
            "00000002450000201c460000401160857f0000017f00000113881389000cfbf1",
            "70696e67",
        ],
        want: ok(Expect {
            src: "127.0.0.1",
            dst: "127.0.0.1",
            proto: IpProto::Udp,
            ports: Some((5000, 5001)),
            ip_len: 32,
            payload: Payload::Bytes(b"ping"),
            ..BASE
        }),
    },
    Case {
        name: "frag1",
        // First fragment of a UDP datagram (MF, offset 0): ports kept.
        link: LinkType::Raw,
        hex: &[
            "450000344242200040112c52c6336435c0a8011400359cbb00407f4500010203",
            "0405060708090a0b0c0d0e0f1011121314151617",
        ],
        want: ok(Expect {
            src: "198.51.100.53",
            dst: "192.168.1.20",
            proto: IpProto::Udp,
            ports: Some((53, 40123)),
            fragment: Fragment::First,
            ip_len: 52,
            payload: Payload::Len(24),
            ..BASE
        }),
    },
    Case {
        name: "frag2",
        // Its second fragment (offset 4 * 8): no ports, the data is the payload.
        link: LinkType::Raw,
        hex: &[
            "450000344242000440114c4ec6336435c0a8011418191a1b1c1d1e1f20212223",
            "2425262728292a2b2c2d2e2f3031323334353637",
        ],
        want: ok(Expect {
            src: "198.51.100.53",
            dst: "192.168.1.20",
            proto: IpProto::Udp,
            fragment: Fragment::NonFirst { offset: 4 },
            ip_len: 52,
            payload: Payload::Len(32),
            ..BASE
        }),
    },
    Case {
        name: "qinq_udp",
        // 802.1ad + 802.1Q (QinQ) NTP.
        link: LinkType::Ethernet,
        hex: &[
            "3c52820a1b2c52540012345a88a80064810000c808004500004c1c464000ff11",
            "49560a0101010a010102007b007b0038e8830000000000000000000000000000",
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0000",
        ],
        want: ok(Expect {
            src: "10.1.1.1",
            dst: "10.1.1.2",
            proto: IpProto::Udp,
            ports: Some((123, 123)),
            ttl: 255,
            ip_len: 76,
            payload: Payload::Len(48),
            ..BASE
        }),
    },
    Case {
        name: "vlan_arp",
        // ARP inside an 802.1Q tag: not IP, not malformed.
        link: LinkType::Ethernet,
        hex: &[
            "3c52820a1b2c52540012345a8100000a0806000108000604000152540012345a",
            "c0a80114000000000000c0a80101",
        ],
        want: Want::Err(DecodeError::NotIp),
    },
    Case {
        name: "igmp_ra",
        // IGMPv2 report with an IP router-alert option (IHL 6): an open-enum protocol.
        link: LinkType::Raw,
        hex: &["460000201c460000010265dac0a80114e00000fb9404000016000904e00000fb"],
        want: ok(Expect {
            src: "192.168.1.20",
            dst: "224.0.0.251",
            proto: IpProto::Other(2),
            ttl: 1,
            ip_len: 32,
            payload: Payload::Len(8),
            ..BASE
        }),
    },
    Case {
        name: "tcp_off1",
        // RFC 1858: a TCP fragment at offset 1 that would rewrite the flags.
        link: LinkType::Raw,
        hex: &["4500001c1c46000140066096cb007142c0a801140000000050020000"],
        want: Want::Err(DecodeError::TinyFragment),
    },
    Case {
        name: "dns_tcp",
        // DNS over TCP, two questions, the second compressed against the first.
        link: LinkType::Raw,
        hex: &[
            "450000561c46400040069af6c0a80114c0a80101b26e00350000000100000001",
            "501801f60c910000002c0a0b01000002000000000000046d61696c074578616d",
            "706c65036f726700000f000103777777c011001c0001",
        ],
        want: ok(Expect {
            src: "192.168.1.20",
            dst: "192.168.1.1",
            proto: IpProto::Tcp,
            ports: Some((45678, 53)),
            flags: "PA",
            window: 502,
            ip_len: 86,
            payload: Payload::DnsTcp(&["mail.example.org", "www.example.org"]),
            ..BASE
        }),
    },
    Case {
        name: "esp6",
        // ESP over IPv6: opaque, protocol 50, the whole ESP packet is the payload.
        link: LinkType::Raw,
        hex: &[
            "600000000020324020010db800010000000000000000000120010db800020000",
            "00000000000000010000100000000007000102030405060708090a0b0c0d0e0f",
            "1011121314151617",
        ],
        want: ok(Expect {
            src: "2001:db8:1::1",
            dst: "2001:db8:2::1",
            proto: IpProto::Other(50),
            ip_len: 72,
            payload: Payload::Len(32),
            ..BASE
        }),
    },
    Case {
        name: "frag6_nonfirst",
        // An IPv6 non-first fragment behind destination options.
        link: LinkType::Raw,
        hex: &[
            "6000000000303c4020010db800000000000000000000006620010db800000000",
            "00000000000000202c00010400000000110005a8deadbeef0001020304050607",
            "08090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        ],
        want: ok(Expect {
            src: "2001:db8::66",
            dst: "2001:db8::20",
            proto: IpProto::Udp,
            fragment: Fragment::NonFirst { offset: 181 },
            ip_len: 88,
            payload: Payload::Len(32),
            ..BASE
        }),
    },
    Case {
        name: "snap68",
        // An SSH segment captured with `tcpdump -s 68`: headers whole, payload cut.
        link: LinkType::Ethernet,
        hex: &[
            "3c52820a1b2c52540012345a0800450000ab1c46400040069aa1c0a80114c0a8",
            "0101c93a001600000064000000c8801801f568c800000101080a000000010000",
            "00025353",
        ],
        want: ok(Expect {
            src: "192.168.1.20",
            dst: "192.168.1.1",
            proto: IpProto::Tcp,
            ports: Some((51514, 22)),
            flags: "PA",
            window: 501,
            options_len: 12,
            ip_len: 171,
            truncated: true,
            payload: Payload::Bytes(b"SS"),
            ..BASE
        }),
    },
];
