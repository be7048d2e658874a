//! Verdict tests through the whole path (rules file -> `RuleSet` ->
//! verdict), and the size/timing acceptance tests.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use portcullis_wire::dns::{read_name, Name};
use portcullis_wire::{decode, Fragment, IpProto, LinkType, PacketSummary};

use super::*;
use crate::config::{Config, NoLists};
use crate::types::{Action, Direction, Reason, RuleRef, Verdict};

/// IPv4 UDP 198.18.0.2:40000 -> 198.18.0.1:53, 4 bytes of payload.
static UDP_V4: [u8; 32] = [
    0x45, 0x00, 0x00, 0x20, 0x00, 0x01, 0x00, 0x00, 0x40, 0x11, 0x00, 0x00, // ip
    198, 18, 0, 2, 198, 18, 0, 1, // addrs
    0x9c, 0x40, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, // udp
    1, 2, 3, 4,
];

/// IPv4 TCP non-first fragment (offset 100 * 8) 198.18.0.2 -> 198.18.0.1.
static TCP_FRAGMENT_V4: [u8; 28] = [
    0x45, 0x00, 0x00, 0x1c, 0x00, 0x02, 0x00, 0x64, 0x40, 0x06, 0x00, 0x00, // ip
    198, 18, 0, 2, 198, 18, 0, 1, // addrs
    0, 0x16, 0, 0x50, 0, 0, 0, 0, // looks like ports 22 -> 80, but is data
];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A packet `src -> dst` of `proto` to `dst_port` (ports only for TCP/UDP).
fn pkt(src: &str, dst: &str, proto: IpProto, dst_port: Option<u16>) -> PacketSummary {
    let mut p = decode(LinkType::Raw, &UDP_V4).unwrap();
    p.src = ip(src);
    p.dst = ip(dst);
    p.proto = proto;
    p.src_port = dst_port.map(|_| 40000);
    p.dst_port = dst_port;
    p
}

fn tcp(src: &str, dst: &str, port: u16) -> PacketSummary {
    pkt(src, dst, IpProto::Tcp, Some(port))
}

fn udp(src: &str, dst: &str, port: u16) -> PacketSummary {
    pkt(src, dst, IpProto::Udp, Some(port))
}

fn compile(json: &str) -> RuleSet {
    match Config::from_json_str(json, &NoLists) {
        Ok(c) => c.rules,
        Err(e) => panic!("{e}"),
    }
}

/// The verdict the engine would reach without bans and DNS: tier 1, then
/// `evaluate`.
fn verdict(rules: &RuleSet, p: &PacketSummary, dir: Direction) -> Verdict {
    rules
        .allowed_peer(p, dir)
        .unwrap_or_else(|| rules.evaluate(p, dir, Action::Accept))
}

fn reason(rules: &RuleSet, p: &PacketSummary, dir: Direction) -> (Action, Reason) {
    let v = verdict(rules, p, dir);
    (v.action, v.reason)
}

/// A wire-format name from text.
pub(crate) fn name(text: &str) -> Name {
    let mut wire = Vec::new();
    for label in text.split('.').filter(|l| !l.is_empty()) {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    read_name(&wire, 0).unwrap().0
}

const SEED: &str = r#"{"block":{"ip":["192.168.1.100"],"port":[80,443],"protocol":["TCP"]},"allow":{"ip":["127.0.0.1"],"port":[22],"protocol":["ICMP"]}}"#;

#[test]
fn seed_config_behaves_as_the_seed() {
    use Action::*;
    use Direction::Inbound;
    let r = compile(SEED);
    let me = "10.0.0.1";
    // Blocked address, whatever it sends.
    assert_eq!(
        verdict(&r, &udp("192.168.1.100", me, 53), Inbound),
        Verdict::drop(
            Reason::BlockedIp,
            Some(RuleRef {
                list: list_id::BLOCK_IP,
                entry: 0
            })
        )
    );
    // ...but allow.port (tier a) comes before block.ip (tier b).
    assert_eq!(
        reason(&r, &tcp("192.168.1.100", me, 22), Inbound),
        (Accept, Reason::AllowPort)
    );
    // Ports 80 and 443 are blocked (TCP and UDP); 22 allowed.
    assert_eq!(
        reason(&r, &udp("10.9.9.9", me, 80), Inbound),
        (Drop, Reason::BlockedPort)
    );
    assert_eq!(
        verdict(&r, &udp("10.9.9.9", me, 443), Inbound).rule,
        Some(RuleRef {
            list: list_id::BLOCK_PORT,
            entry: 1
        })
    );
    assert_eq!(
        reason(&r, &tcp("10.9.9.9", me, 22), Inbound),
        (Accept, Reason::AllowPort)
    );
    // Other TCP: the protocol is blocked. Other UDP: default accept.
    assert_eq!(
        reason(&r, &tcp("10.9.9.9", me, 8080), Inbound),
        (Drop, Reason::BlockedProtocol)
    );
    assert_eq!(
        reason(&r, &udp("10.9.9.9", me, 8080), Inbound),
        (Accept, Reason::Default)
    );
    // ICMP allowed; ICMPv6 is another protocol (default here).
    assert_eq!(
        reason(&r, &pkt("10.9.9.9", me, IpProto::Icmp, None), Inbound),
        (Accept, Reason::AllowProtocol)
    );
    assert_eq!(
        reason(
            &r,
            &pkt("2001:db8::9", "2001:db8::1", IpProto::Icmpv6, None),
            Inbound
        ),
        (Accept, Reason::Default)
    );
    // Loopback wins over everything, in both families.
    assert_eq!(
        reason(&r, &tcp("127.0.0.1", "127.0.0.1", 80), Inbound),
        (Accept, Reason::Loopback)
    );
    assert_eq!(
        reason(&r, &tcp("127.8.0.1", me, 80), Inbound),
        (Accept, Reason::Loopback)
    );
    assert_eq!(
        reason(&r, &tcp("::1", "::1", 443), Inbound),
        (Accept, Reason::Loopback)
    );
    assert!(r.is_allowlisted(ip("127.0.0.1")));
    assert!(r.is_allowlisted(ip("::1")));
    assert!(!r.is_allowlisted(ip("192.168.1.100")));
    assert_eq!(
        r.describe(RuleRef {
            list: list_id::BLOCK_IP,
            entry: 0
        }),
        "block.ip[0] 192.168.1.100"
    );
    assert_eq!(
        r.describe(RuleRef {
            list: list_id::BLOCK_PORT,
            entry: 1
        }),
        "block.port[1] 443"
    );
    assert_eq!(
        r.describe(RuleRef {
            list: list_id::BLOCK_PROTOCOL,
            entry: 0
        }),
        "block.protocol[0] TCP"
    );
    assert_eq!(
        r.describe(RuleRef {
            list: list_id::ALLOW_PROTOCOL,
            entry: 0
        }),
        "allow.protocol[0] ICMP"
    );
}

#[test]
fn peers_follow_the_direction() {
    use Direction::*;
    let r = compile(r#"{"block": {"ip": ["203.0.113.0/24"]}, "allow": {"ip": ["198.51.100.7"]}}"#);
    let bad_in = udp("203.0.113.5", "10.0.0.1", 53);
    let bad_out = udp("10.0.0.1", "203.0.113.5", 53);
    assert_eq!(reason(&r, &bad_in, Inbound).1, Reason::BlockedIp);
    assert_eq!(reason(&r, &bad_out, Outbound).1, Reason::BlockedIp);
    // The local end is not the peer.
    assert_eq!(reason(&r, &bad_in, Outbound).1, Reason::Default);
    assert_eq!(reason(&r, &bad_out, Inbound).1, Reason::Default);
    // Forwarded: either end.
    assert_eq!(reason(&r, &bad_in, Forwarded).1, Reason::BlockedIp);
    assert_eq!(reason(&r, &bad_out, Forwarded).1, Reason::BlockedIp);
    // allow.ip as tier 1, also on either end of forwarded traffic, and
    // winning over block.ip.
    let both = udp("203.0.113.5", "198.51.100.7", 53);
    assert_eq!(reason(&r, &both, Forwarded).1, Reason::AllowIp);
    assert_eq!(reason(&r, &both, Outbound).1, Reason::AllowIp);
    assert_eq!(reason(&r, &both, Inbound).1, Reason::BlockedIp);
    assert!(r.is_allowlisted(ip("198.51.100.7")));
    assert!(!r.is_allowlisted(ip("198.51.100.8")));
}

#[test]
fn cidr_longest_prefix_v4_and_v6() {
    let r = compile(
        r#"{"block": {"ip": ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::1"]},
            "allow": {"ip": ["10.2.0.0/16", "2001:db8:2::/48"]}}"#,
    );
    let entry = |src: &str| verdict(&r, &udp(src, "192.0.2.1", 1), Direction::Inbound);
    let blocked = |e: u32| {
        Verdict::drop(
            Reason::BlockedIp,
            Some(RuleRef {
                list: list_id::BLOCK_IP,
                entry: e,
            }),
        )
    };
    let allowed = |e: u32| {
        Verdict::accept(
            Reason::AllowIp,
            Some(RuleRef {
                list: list_id::ALLOW_IP,
                entry: e,
            }),
        )
    };
    assert_eq!(entry("10.200.0.1"), blocked(0));
    assert_eq!(entry("10.1.200.1"), blocked(1));
    assert_eq!(entry("10.1.2.3"), blocked(2));
    assert_eq!(entry("10.1.2.4"), blocked(1));
    assert_eq!(entry("10.2.3.4"), allowed(0));
    assert_eq!(entry("11.0.0.1").reason, Reason::Default);
    assert_eq!(entry("2001:db8:ffff::1"), blocked(3));
    assert_eq!(entry("2001:db8:1:5::1"), blocked(4));
    assert_eq!(entry("2001:db8:1::1"), blocked(5));
    assert_eq!(entry("2001:db8:2::1"), allowed(1));
    assert_eq!(entry("2001:db9::1").reason, Reason::Default);
    assert_eq!(
        r.describe(RuleRef {
            list: list_id::BLOCK_IP,
            entry: 4
        }),
        "block.ip[4] 2001:db8:1::/48"
    );
    let s = r.stats();
    assert_eq!((s.block.ipv4_prefixes, s.block.ipv6_prefixes), (3, 3));
    assert_eq!((s.allow.ipv4_prefixes, s.allow.ipv6_prefixes), (1, 1));
}

#[test]
fn port_ranges() {
    let r = compile(
        r#"{"block": {"port": [23, "6000-6100", "6050-6200"]}, "allow": {"port": ["6060"]}}"#,
    );
    let v = |port: u16| verdict(&r, &tcp("192.0.2.9", "192.0.2.1", port), Direction::Inbound);
    assert_eq!(v(23).reason, Reason::BlockedPort);
    assert_eq!(v(22).reason, Reason::Default);
    assert_eq!(v(5999).reason, Reason::Default);
    assert_eq!(
        v(6000).rule,
        Some(RuleRef {
            list: list_id::BLOCK_PORT,
            entry: 1
        })
    );
    assert_eq!(
        v(6100).rule,
        Some(RuleRef {
            list: list_id::BLOCK_PORT,
            entry: 1
        })
    );
    assert_eq!(
        v(6101).rule,
        Some(RuleRef {
            list: list_id::BLOCK_PORT,
            entry: 2
        })
    );
    assert_eq!(v(6060).reason, Reason::AllowPort);
    assert_eq!(v(6201).reason, Reason::Default);
    // Ports are TCP and UDP only: an SCTP-ish "Other" protocol never matches
    // even if something set a port on it.
    let other = pkt("192.0.2.9", "192.0.2.1", IpProto::Other(132), Some(23));
    assert_eq!(reason(&r, &other, Direction::Inbound).1, Reason::Default);
    assert_eq!(
        r.describe(RuleRef {
            list: list_id::BLOCK_PORT,
            entry: 1
        }),
        "block.port[1] 6000-6100"
    );
    assert_eq!(r.stats().block.port_ranges, 3);
}

#[test]
fn a_non_first_fragment_never_matches_a_port() {
    let frag = decode(LinkType::Raw, &TCP_FRAGMENT_V4).unwrap();
    assert_eq!(frag.fragment, Fragment::NonFirst { offset: 100 });
    assert_eq!(frag.dst_port, None);
    // Allow side: port 80 allowed, TCP blocked -> the fragment is not
    // accepted by the port entry, and falls to block.protocol.
    let r = compile(r#"{"allow": {"port": [80, "0-65535"]}, "block": {"protocol": ["TCP"]}}"#);
    assert_eq!(
        reason(&r, &frag, Direction::Inbound),
        (Action::Drop, Reason::BlockedProtocol)
    );
    // Block side: every port blocked; the fragment is not.
    let r = compile(r#"{"block": {"port": ["0-65535"]}}"#);
    assert_eq!(
        reason(&r, &frag, Direction::Inbound),
        (Action::Accept, Reason::Default)
    );
    // Composite rules with ports neither.
    let r = compile(
        r#"{"rules": [{"action": "allow", "port": ["0-65535"]}, {"action": "block", "port": ["0-65535"], "protocol": ["TCP"]}]}"#,
    );
    assert_eq!(
        reason(&r, &frag, Direction::Inbound),
        (Action::Accept, Reason::Default)
    );
    let mut first = tcp("198.18.0.2", "198.18.0.1", 80);
    first.fragment = Fragment::First;
    assert_eq!(
        reason(&r, &first, Direction::Inbound),
        (Action::Accept, Reason::AllowRule)
    );
}

#[test]
fn protocol_numbers() {
    let r = compile(
        r#"{"block": {"protocol": [47, "50", "ICMPv6"]}, "allow": {"protocol": ["ipv6-icmp", "udp"]}}"#,
    );
    let v = |proto: IpProto| {
        reason(
            &r,
            &pkt("192.0.2.9", "192.0.2.1", proto, None),
            Direction::Inbound,
        )
    };
    assert_eq!(
        v(IpProto::Other(47)),
        (Action::Drop, Reason::BlockedProtocol)
    );
    assert_eq!(
        v(IpProto::Other(50)),
        (Action::Drop, Reason::BlockedProtocol)
    );
    assert_eq!(v(IpProto::Other(51)), (Action::Accept, Reason::Default));
    // Allow beats block for the same protocol.
    assert_eq!(v(IpProto::Icmpv6), (Action::Accept, Reason::AllowProtocol));
    assert_eq!(
        reason(&r, &udp("192.0.2.9", "192.0.2.1", 9), Direction::Inbound).1,
        Reason::AllowProtocol
    );
    assert_eq!(
        r.describe(RuleRef {
            list: list_id::BLOCK_PROTOCOL,
            entry: 0
        }),
        "block.protocol[0] 47"
    );
    assert_eq!(
        r.describe(RuleRef {
            list: list_id::BLOCK_PROTOCOL,
            entry: 2
        }),
        "block.protocol[2] IPv6-ICMP"
    );
    assert_eq!(r.stats().block.protocols, 3);
}

#[test]
fn composite_rules_and_direction() {
    use Direction::*;
    let r = compile(
        r#"{"rules": [
            {"action": "allow", "direction": "inbound", "ip": ["198.18.0.10"], "port": [22], "protocol": ["TCP"], "comment": "jump host"},
            {"action": "block", "direction": "inbound", "ip": ["198.18.0.0/15"], "port": ["22"], "protocol": ["TCP"], "comment": "no ssh from the lab"},
            {"action": "block", "direction": "outbound", "port": [25]},
            {"action": "drop", "protocol": [47]},
            {"action": "block", "direction": "forwarded", "ip": ["192.0.2.0/24"]}
        ]}"#,
    );
    let me = "10.0.0.1";
    let rr = |e: u32| {
        Some(RuleRef {
            list: list_id::RULES,
            entry: e,
        })
    };
    // Rule 0 (allow) before rule 1 (block): allow rules are tier (a).
    assert_eq!(
        verdict(&r, &tcp("198.18.0.10", me, 22), Inbound),
        Verdict::accept(Reason::AllowRule, rr(0))
    );
    assert_eq!(
        verdict(&r, &tcp("198.18.0.11", me, 22), Inbound),
        Verdict::drop(Reason::BlockedIp, rr(1))
    );
    assert_eq!(
        verdict(&r, &tcp("198.19.255.1", me, 22), Inbound),
        Verdict::drop(Reason::BlockedIp, rr(1))
    );
    // AND: every field must match.
    assert_eq!(
        reason(&r, &udp("198.18.0.11", me, 22), Inbound).1,
        Reason::Default
    );
    assert_eq!(
        reason(&r, &tcp("198.18.0.11", me, 23), Inbound).1,
        Reason::Default
    );
    assert_eq!(
        reason(&r, &tcp("198.20.0.1", me, 22), Inbound).1,
        Reason::Default
    );
    // Direction: the same packet outbound is not rule 1's business (and the
    // peer would be the destination anyway).
    assert_eq!(
        reason(&r, &tcp(me, "198.18.0.11", 22), Outbound).1,
        Reason::Default
    );
    assert_eq!(
        reason(&r, &tcp("198.18.0.11", me, 22), Forwarded).1,
        Reason::Default
    );
    // Rule 2: outbound SMTP, TCP or UDP, reason BlockedPort (no ip).
    assert_eq!(
        verdict(&r, &tcp(me, "192.0.2.25", 25), Outbound),
        Verdict::drop(Reason::BlockedPort, rr(2))
    );
    assert_eq!(
        reason(&r, &tcp("192.0.2.25", me, 25), Inbound).1,
        Reason::Default
    );
    // Rule 3: any direction, protocol only, "drop" spelling.
    let gre = pkt("192.0.2.9", me, IpProto::Other(47), None);
    for dir in [Inbound, Outbound, Forwarded] {
        assert_eq!(
            verdict(&r, &gre, dir),
            Verdict::drop(Reason::BlockedProtocol, rr(3))
        );
    }
    // Rule 4: forwarded, either end.
    assert_eq!(
        reason(&r, &udp("10.1.1.1", "192.0.2.77", 9), Forwarded).1,
        Reason::BlockedIp
    );
    assert_eq!(
        reason(&r, &udp("192.0.2.77", "10.1.1.1", 9), Forwarded).1,
        Reason::BlockedIp
    );
    assert_eq!(
        reason(&r, &udp("192.0.2.77", me, 9), Inbound).1,
        Reason::Default
    );
    assert_eq!(
        r.describe(RuleRef {
            list: list_id::RULES,
            entry: 1
        }),
        "rules[1] (no ssh from the lab)"
    );
    assert_eq!(
        r.describe(RuleRef {
            list: list_id::RULES,
            entry: 2
        }),
        "rules[2]"
    );
    let s = r.stats();
    assert_eq!((s.allow_rules, s.block_rules), (1, 4));
}

#[test]
fn plain_lists_come_before_rules_within_a_tier() {
    let r = compile(
        r#"{"block": {"port": [22]},
            "rules": [{"action": "block", "ip": ["192.0.2.0/24"]}, {"action": "allow", "ip": ["192.0.2.5"], "port": [22]}]}"#,
    );
    // The allow rule (tier a) beats block.port (tier b).
    assert_eq!(
        reason(&r, &tcp("192.0.2.5", "10.0.0.1", 22), Direction::Inbound).1,
        Reason::AllowRule
    );
    // block.port before the block rule.
    assert_eq!(
        reason(&r, &tcp("192.0.2.6", "10.0.0.1", 22), Direction::Inbound).1,
        Reason::BlockedPort
    );
    assert_eq!(
        reason(&r, &tcp("192.0.2.6", "10.0.0.1", 23), Direction::Inbound).1,
        Reason::BlockedIp
    );
}

#[test]
fn default_policy_applies_when_nothing_matches() {
    let r = RuleSet::empty();
    let p = tcp("192.0.2.6", "10.0.0.1", 23);
    assert_eq!(
        r.evaluate(&p, Direction::Inbound, Action::Drop),
        Verdict::drop(Reason::Default, None)
    );
    assert_eq!(
        r.evaluate(&p, Direction::Inbound, Action::Accept),
        Verdict::accept(Reason::Default, None)
    );
    assert_eq!(r.allowed_peer(&p, Direction::Inbound), None);
    assert_eq!(r.match_domain(&name("example.com")), DomainMatch::None);
    assert_eq!(
        r.describe(RuleRef {
            list: 9999,
            entry: 3
        }),
        "list 9999 entry 3"
    );
    assert_eq!(
        r.describe(RuleRef {
            list: list_id::BLOCK_IP,
            entry: 3
        }),
        "block.ip[3]"
    );
}

#[test]
fn domains_case_trailing_dot_subdomains_and_wildcards() {
    let r = compile(
        r#"{"block": {"domain": ["Ads.Example", "*.tracker.example", "fqdn.example.", "ok.ads.example"]},
            "allow": {"domain": ["ok.ads.example", "cdn.tracker.example"]}}"#,
    );
    let blocked = |e: u32| {
        DomainMatch::Blocked(RuleRef {
            list: list_id::BLOCK_DOMAIN,
            entry: e,
        })
    };
    let allowed = |e: u32| {
        DomainMatch::Allowed(RuleRef {
            list: list_id::ALLOW_DOMAIN,
            entry: e,
        })
    };
    assert_eq!(r.match_domain(&name("ads.example")), blocked(0));
    assert_eq!(r.match_domain(&name("ADS.EXAMPLE")), blocked(0));
    assert_eq!(r.match_domain(&name("x.y.ads.example")), blocked(0));
    // "*.x" means the same as "x": the name itself too.
    assert_eq!(r.match_domain(&name("tracker.example")), blocked(1));
    assert_eq!(r.match_domain(&name("a.tracker.example")), blocked(1));
    assert_eq!(r.match_domain(&name("fqdn.example")), blocked(2));
    // allow.domain beats block.domain, for the name and below it.
    assert_eq!(r.match_domain(&name("ok.ads.example")), allowed(0));
    assert_eq!(r.match_domain(&name("a.ok.ads.example")), allowed(0));
    assert_eq!(r.match_domain(&name("cdn.tracker.example")), allowed(1));
    // Not parents, not lookalikes.
    assert_eq!(r.match_domain(&name("example")), DomainMatch::None);
    assert_eq!(r.match_domain(&name("notads.example")), DomainMatch::None);
    assert_eq!(r.match_domain(&name("ads.example.evil")), DomainMatch::None);
    assert_eq!(r.match_domain(&Name::root()), DomainMatch::None);
    assert_eq!(
        r.describe(RuleRef {
            list: list_id::BLOCK_DOMAIN,
            entry: 1
        }),
        "block.domain[1] tracker.example"
    );
    let s = r.stats();
    assert_eq!(
        (s.block.domains, s.allow.domains, s.distinct_domains),
        (4, 2, 5)
    );
}

#[test]
fn domain_list_files_and_exceptions() {
    let mut files = HashMap::new();
    files.insert(
        "lists/hosts.txt".to_string(),
        "# hosts\n127.0.0.1 localhost\n0.0.0.0 ads.example\n0.0.0.0 bad!.example\n".to_string(),
    );
    files.insert(
        "lists/easylist.txt".to_string(),
        "[Adblock Plus 2.0]\n||tracker.example^\n@@||ok.ads.example^\n||x.example^$third-party\n"
            .to_string(),
    );
    files.insert(
        "allow.txt".to_string(),
        "safe.tracker.example\n".to_string(),
    );
    let c = Config::from_json_str(
        r#"{"block": {"domain_lists": ["lists/hosts.txt", "lists/easylist.txt"]},
            "allow": {"domain_lists": ["allow.txt"]}}"#,
        &files,
    )
    .unwrap();
    let r = &c.rules;
    let hosts = list_id::FIRST_DOMAIN_LIST;
    let easy = hosts + 1;
    let allow = hosts + 2;
    assert_eq!(
        r.match_domain(&name("www.ads.example")),
        DomainMatch::Blocked(RuleRef {
            list: hosts,
            entry: 3
        })
    );
    assert_eq!(
        r.match_domain(&name("tracker.example")),
        DomainMatch::Blocked(RuleRef {
            list: easy,
            entry: 2
        })
    );
    // The @@ exception in a block list goes to the allow side.
    assert_eq!(
        r.match_domain(&name("ok.ads.example")),
        DomainMatch::Allowed(RuleRef {
            list: easy,
            entry: 3
        })
    );
    assert_eq!(
        r.match_domain(&name("safe.tracker.example")),
        DomainMatch::Allowed(RuleRef {
            list: allow,
            entry: 1
        })
    );
    assert_eq!(r.match_domain(&name("x.example")), DomainMatch::None);
    assert_eq!(r.match_domain(&name("localhost")), DomainMatch::None);
    assert_eq!(
        r.describe(RuleRef {
            list: hosts,
            entry: 3
        }),
        "block.domain_lists[0] lists/hosts.txt:3"
    );
    assert_eq!(
        r.describe(RuleRef {
            list: allow,
            entry: 1
        }),
        "allow.domain_lists[0] allow.txt:1"
    );
    let s = r.stats();
    assert_eq!(s.domain_lists.len(), 3);
    let h = &s.domain_lists[0];
    assert_eq!(
        (h.list, h.name.as_str(), h.path.as_str(), h.allow),
        (hosts, "block.domain_lists[0]", "lists/hosts.txt", false)
    );
    assert_eq!(
        (
            h.counts.names,
            h.counts.skipped_lines,
            h.counts.first_skipped.clone()
        ),
        (1, 1, vec![4])
    );
    let e = &s.domain_lists[1];
    assert_eq!(
        (e.counts.names, e.counts.exceptions, e.counts.skipped_lines),
        (1, 1, 1)
    );
    assert!(s.domain_lists[2].allow);
    assert_eq!((s.block.domains, s.allow.domains), (2, 2));
    let text = s.to_string();
    assert!(text.contains("block.domain_lists[0] lists/hosts.txt: 1 names, 0 exceptions, 1 lines skipped (first at lines 4)"), "{text}");
}

#[test]
fn export_gives_the_plain_lists_for_the_kernel() {
    let r = compile(
        r#"{"block": {"ip": ["198.18.0.0/24", "2001:2::/48", "198.18.0.0/24"],
                      "port": [23, "6000-6100"], "protocol": ["47", 47]},
            "allow": {"ip": ["198.18.1.1", "::ffff:198.18.1.2"], "port": ["22"],
                      "protocol": ["ICMP"]}}"#,
    );
    let e = r.export();
    let v4 = |s: &str| s.parse::<ipnet::Ipv4Net>().unwrap();
    let v6 = |s: &str| s.parse::<ipnet::Ipv6Net>().unwrap();
    assert_eq!(e.block_v4, vec![v4("198.18.0.0/24"), v4("198.18.0.0/24")]);
    assert_eq!(e.block_v6, vec![v6("2001:2::/48")]);
    assert_eq!(e.allow_v4, vec![v4("198.18.1.1/32")]);
    // Families never cross: a mapped address stays IPv6.
    assert_eq!(e.allow_v6, vec![v6("::ffff:198.18.1.2/128")]);
    assert_eq!(e.block_ports, vec![(23, 23), (6000, 6100)]);
    assert_eq!(e.allow_ports, vec![(22, 22)]);
    assert_eq!(e.block_protocols, vec![47, 47]);
    assert_eq!(e.allow_protocols, vec![1]);
    assert_eq!(
        (e.rules, e.outbound_rules, e.has_domains),
        (0, false, false)
    );
    assert_eq!(RuleSet::empty().export(), RuleExport::default());

    let r = compile(
        r#"{"rules": [{"action": "block", "direction": "inbound", "port": [22]}],
            "block": {"domain": ["ads.example"]}}"#,
    );
    let e = r.export();
    assert_eq!((e.rules, e.outbound_rules, e.has_domains), (1, false, true));
    assert_eq!(e.allow_rules, 0);
    for dir in ["outbound", "any"] {
        let json =
            format!(r#"{{"rules": [{{"action": "allow", "direction": "{dir}", "port": [22]}}]}}"#);
        let e = compile(&json).export();
        assert_eq!(
            (e.rules, e.allow_rules, e.outbound_rules),
            (1, 1, true),
            "{dir}"
        );
    }
}

/// `n` distinct pseudo-random prefixes, /8 to /32 (and /16 to /128 for
/// IPv6), host bits cleared.
fn random_prefixes(n: usize, seed: u64) -> (Vec<String>, Vec<IpNet>) {
    let mut x = seed;
    let mut next = || {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut seen = std::collections::HashSet::new();
    let mut text = Vec::with_capacity(n);
    let mut nets = Vec::with_capacity(n);
    while nets.len() < n {
        let r = next();
        let net = if r % 8 != 0 {
            let len = 8 + (r >> 8) as u8 % 25;
            IpNet::new(IpAddr::V4(Ipv4Addr::from((r >> 32) as u32)), len)
                .unwrap()
                .trunc()
        } else {
            let hi = u128::from(next()) << 64 | u128::from(next());
            IpNet::new(IpAddr::V6(Ipv6Addr::from(hi)), 16 + (r >> 8) as u8 % 113)
                .unwrap()
                .trunc()
        };
        if seen.insert(net) {
            text.push(format!("\"{net}\""));
            nets.push(net);
        }
    }
    (text, nets)
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

/// Average ns per call of `f` over `addrs`, repeated.
fn ns_per_lookup(
    addrs: &[PacketSummary],
    rounds: usize,
    mut f: impl FnMut(&PacketSummary) -> bool,
) -> (f64, usize) {
    let mut hits = 0;
    let t = Instant::now();
    for _ in 0..rounds {
        for p in addrs {
            hits += usize::from(std::hint::black_box(f(std::hint::black_box(p))));
        }
    }
    (
        t.elapsed().as_nanos() as f64 / (rounds * addrs.len()) as f64,
        hits,
    )
}

#[test]
#[cfg_attr(debug_assertions, ignore = "timing: run with --release")]
fn timing_100k_cidrs_compile_and_lookup() {
    let (text, nets) = random_prefixes(100_000, 0x9e37_79b9_7f4a_7c15);
    let json = format!(r#"{{"block": {{"ip": [{}]}}}}"#, text.join(","));
    let (c, took) = timed(|| Config::from_json_str(&json, &NoLists).unwrap());
    let r = c.rules;
    let s = r.stats();
    assert_eq!(s.block.ipv4_prefixes + s.block.ipv6_prefixes, 100_000);
    eprintln!(
        "100k CIDRs ({} v4, {} v6, {} KiB JSON): compile (parse + check + build) {took:?}, tries {} KiB",
        s.block.ipv4_prefixes,
        s.block.ipv6_prefixes,
        json.len() / 1024,
        s.ip_table_bytes / 1024
    );
    assert!(
        took < Duration::from_secs(2),
        "compiling 100k CIDRs took {took:?}"
    );

    // Lookups: half inside listed prefixes, half random.
    let mut x = 1u64;
    let mut packets = Vec::new();
    for (i, net) in nets.iter().enumerate().take(4096) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let addr = if i % 2 == 0 {
            net.network()
        } else if net.addr().is_ipv4() {
            IpAddr::V4(Ipv4Addr::from((x >> 32) as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(
                u128::from(x) << 64 | u128::from(x.rotate_left(17)),
            ))
        };
        packets.push(udp(&addr.to_string(), "10.0.0.1", 9));
    }
    let (ns, hits) = ns_per_lookup(&packets, 200, |p| {
        r.evaluate(p, Direction::Inbound, Action::Accept).action == Action::Drop
    });
    eprintln!("evaluate() with 100k block.ip: {ns:.1} ns/packet ({hits} drops)");
    assert!(hits >= 200 * 2048);
    assert!(ns < 1000.0, "{ns} ns per lookup");
}

#[test]
#[cfg_attr(debug_assertions, ignore = "timing: run with --release")]
fn timing_1m_domains_compile_and_lookup() {
    // A hosts-format list, like the big downloadable ones.
    let mut list = String::with_capacity(40 << 20);
    list.push_str("# generated\n127.0.0.1 localhost\n");
    for i in 0..1_000_000u32 {
        let _ = writeln!(list, "0.0.0.0 ad{i:x}.tracker{}.example{}", i % 977, i % 13);
    }
    let mut files = HashMap::new();
    files.insert("big.txt".to_string(), list);
    let json = r#"{"block": {"domain_lists": ["big.txt"]}}"#;
    let (c, took) = timed(|| Config::from_json_str(json, &files).unwrap());
    let r = c.rules;
    let s = r.stats();
    assert_eq!(s.distinct_domains, 1_000_000);
    assert_eq!(s.domain_lists[0].counts.skipped_lines, 0);
    eprintln!(
        "1M domains ({} MiB list): compile {took:?}, domain table {} MiB ({} bytes/name)",
        files["big.txt"].len() >> 20,
        s.domain_table_bytes >> 20,
        s.domain_table_bytes / 1_000_000
    );
    assert!(
        took < Duration::from_secs(2),
        "compiling 1M domains took {took:?}"
    );

    let names: Vec<Name> = (0..4096u32)
        .map(|i| {
            let i = i.wrapping_mul(2_654_435_761) % 1_000_000;
            if i % 2 == 0 {
                name(&format!("www.ad{i:x}.tracker{}.example{}", i % 977, i % 13))
            } else {
                name(&format!("www.miss{i}.example.com"))
            }
        })
        .collect();
    let t = Instant::now();
    let mut hits = 0usize;
    let rounds = 200;
    for _ in 0..rounds {
        for n in &names {
            hits += usize::from(matches!(
                r.match_domain(std::hint::black_box(n)),
                DomainMatch::Blocked(_)
            ));
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / (rounds * names.len()) as f64;
    eprintln!("match_domain() over 1M names, 4096 names cycled: {ns:.1} ns/name (4-label names, {hits} hits)");
    assert_eq!(hits, rounds * names.len() / 2);
    assert!(ns < 2000.0, "{ns} ns per name");
    // A hot set, as a resolver's traffic mostly is: the CPU cost alone.
    let hot = &names[..64];
    let t = Instant::now();
    for _ in 0..10_000 {
        for n in hot {
            std::hint::black_box(r.match_domain(std::hint::black_box(n)));
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / (10_000 * hot.len()) as f64;
    eprintln!("match_domain() over 1M names, 64 hot names: {ns:.1} ns/name");
}

#[test]
#[cfg_attr(debug_assertions, ignore = "timing: run with --release")]
fn timing_small_rule_set_per_packet() {
    // The seed's shape plus a few rules: the common case.
    let r = compile(
        r#"{"block": {"ip": ["192.168.1.100", "203.0.113.0/24"], "port": [80, 443], "protocol": [47]},
            "allow": {"ip": ["127.0.0.1"], "port": [22], "protocol": ["ICMP"]},
            "rules": [{"action": "block", "direction": "inbound", "ip": ["198.18.0.0/15"], "port": ["22"], "protocol": ["TCP"]}]}"#,
    );
    let packets: Vec<PacketSummary> = (0..1024u32)
        .map(|i| {
            udp(
                &Ipv4Addr::from(0x0a00_0000 | i.wrapping_mul(2_654_435_761) >> 8).to_string(),
                "10.0.0.1",
                (i % 1000) as u16 + 1000,
            )
        })
        .collect();
    let (ns, _) = ns_per_lookup(&packets, 2000, |p| {
        r.allowed_peer(p, Direction::Inbound).is_none()
            && r.evaluate(p, Direction::Inbound, Action::Accept).action == Action::Accept
    });
    eprintln!("allowed_peer() + evaluate(), seed-sized rule set: {ns:.1} ns/packet");
    assert!(ns < 200.0, "{ns} ns per packet");
}

/// The flat interval table against `prefix_trie` on the same prefixes and
/// addresses (see `rules::ip` for why the flat table is used).
#[test]
#[cfg_attr(debug_assertions, ignore = "timing: run with --release")]
fn timing_ip_tables_vs_prefix_trie() {
    use ipnet::{Ipv4Net, Ipv6Net};
    use prefix_trie::PrefixMap;

    for (n, v6) in [
        (10usize, false),
        (1_000, false),
        (100_000, false),
        (10, true),
        (100_000, true),
    ] {
        let (_, nets) = random_prefixes(n * 8, 0x5555_1234 + n as u64);
        let nets: Vec<IpNet> = nets
            .into_iter()
            .filter(|n| n.addr().is_ipv6() == v6)
            .take(n)
            .collect();
        let mut trie4: PrefixMap<Ipv4Net, u32> = PrefixMap::new();
        let mut trie6: PrefixMap<Ipv6Net, u32> = PrefixMap::new();
        for (i, net) in nets.iter().enumerate() {
            match net {
                IpNet::V4(x) => trie4.insert(*x, i as u32),
                IpNet::V6(x) => trie6.insert(*x, i as u32),
            };
        }
        let (flat, build) = timed(|| ip::IpTable::from_nets(nets.iter().copied()));
        // Half the probes inside a listed prefix, half anywhere.
        let mut x = 7u64;
        let addrs: Vec<IpAddr> = (0..8192)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if i % 2 == 0 {
                    nets[(x >> 33) as usize % nets.len()].network()
                } else if v6 {
                    IpAddr::V6(Ipv6Addr::from((0x2000u128 << 112) | (u128::from(x) << 40)))
                } else {
                    IpAddr::V4(Ipv4Addr::from((x >> 32) as u32))
                }
            })
            .collect();
        let rounds = 100;
        let run = |f: &dyn Fn(IpAddr) -> Option<u32>| {
            let t = Instant::now();
            let mut hits = 0usize;
            for _ in 0..rounds {
                for a in &addrs {
                    hits += usize::from(f(std::hint::black_box(*a)).is_some());
                }
            }
            (
                t.elapsed().as_nanos() as f64 / (rounds * addrs.len()) as f64,
                hits,
            )
        };
        let (flat_ns, flat_hits) = run(&|a| flat.lookup(a));
        let (trie_ns, trie_hits) = run(&|a| match a {
            IpAddr::V4(a) => trie4.get_lpm(&Ipv4Net::from(a)).map(|(_, &e)| e),
            IpAddr::V6(a) => trie6.get_lpm(&Ipv6Net::from(a)).map(|(_, &e)| e),
        });
        assert_eq!(flat_hits, trie_hits);
        eprintln!(
            "{n:>6} {} prefixes: flat {flat_ns:5.1} ns/lookup ({} KiB, built in {build:?}), prefix_trie {trie_ns:5.1} ns/lookup ({} KiB)",
            if v6 { "IPv6" } else { "IPv4" },
            flat.mem_size() / 1024,
            (trie4.mem_size() + trie6.mem_size()) / 1024,
        );
        assert!(flat_ns < 250.0, "{flat_ns} ns per lookup");
    }
}
