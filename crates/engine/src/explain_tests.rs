//! `explain` against hand-written configs, and against `Engine::process` on
//! concrete packets (the explanation must name what the packet path does).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_traffic as traffic;
use portcullis_wire::LinkType;

use super::*;
use crate::config::{Config, ListLoader, NoLists};
use crate::engine::{DetectorMode, Engine, PacketIn};
use crate::types::{Reason, Verdict};

const T0: u64 = 1_795_000_000_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> Option<IpNet> {
    Some(s.parse().unwrap())
}

fn engine_with(json: &str, loader: &dyn ListLoader) -> Engine {
    let cfg = Config::from_json_str(json, loader).unwrap();
    Engine::new(Arc::new(cfg), DetectorMode::Off).unwrap()
}

fn engine(json: &str) -> Engine {
    engine_with(json, &NoLists)
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_micros(T0 + secs * 1_000_000)
}

/// One packet through the engine at `ts`, with the netfilter direction.
fn process(e: &mut Engine, frame: &[u8], dir: Direction, ts: Timestamp) -> Verdict {
    e.process(&PacketIn {
        data: frame,
        link: LinkType::Ethernet,
        ts,
        dir: Some(dir),
        orig_len: None,
    })
}

fn syn(src: &str, dst: &str, port: u16) -> Vec<u8> {
    traffic::tcp_syn(
        SocketAddr::new(ip(src), 40_000),
        SocketAddr::new(ip(dst), port),
        traffic::SynStyle::Os,
    )
}

fn udp(src: &str, dst: &str, port: u16) -> Vec<u8> {
    traffic::udp(
        SocketAddr::new(ip(src), 40_000),
        SocketAddr::new(ip(dst), port),
        b"x",
    )
}

/// When the explanation decides every packet of the address (no "depends
/// on"), the packet path must reach the same action, and the entry that
/// decided it must be the one the explanation names.
fn assert_agrees(e: &Engine, x: &Explanation, v: Verdict) {
    assert!(
        !x.verdict.starts_with("depends on"),
        "not an unconditional verdict: {}",
        x.verdict
    );
    let word = match v.action {
        Action::Accept => "accepted: ",
        Action::Drop => "dropped: ",
    };
    assert!(
        x.verdict.starts_with(word),
        "{v:?} but explain says {:?}",
        x.verdict
    );
    if let Some(r) = v.rule {
        let named = e.config().rules.describe(r);
        assert!(
            x.verdict.contains(&named),
            "{v:?} ({named}) but explain says {:?}",
            x.verdict
        );
    }
}

#[test]
fn allowlisted_address_in_a_cidr_is_accepted_and_never_banned() {
    let mut e = engine(
        r#"{"allow": {"ip": ["192.0.2.10", "198.18.0.0/15"]},
            "block": {"ip": ["198.18.5.0/24"]}}"#,
    );
    let a = ip("198.18.5.7");
    let x = e.explain(a, at(0));
    let m = x.allowlisted.clone().unwrap();
    assert_eq!((m.list.as_str(), m.index), ("allow.ip", 1));
    assert_eq!(m.net, net("198.18.0.0/15"));
    assert_eq!(m.text, "allow.ip[1] 198.18.0.0/15");
    assert!(x.protected && !x.loopback);
    assert_eq!(
        x.verdict,
        "accepted: allowlisted by allow.ip[1] 198.18.0.0/15 (never banned)"
    );
    assert_eq!(x.allowed_by, vec![m]);
    // The block entry is listed (an operator wants to see it) but loses.
    assert_eq!(x.blocked_by.len(), 1);
    assert_eq!(x.blocked_by[0].text, "block.ip[0] 198.18.5.0/24");
    assert!(!e.ban(a, at(0), Duration::from_secs(60), "manual".into()));
    assert!(e.explain(a, at(0)).ban.is_none());

    for (frame, dir) in [
        (syn("198.18.5.7", "192.0.2.1", 22), Direction::Inbound),
        (syn("192.0.2.1", "198.18.5.7", 80), Direction::Outbound),
        (udp("198.18.5.7", "198.51.100.1", 9), Direction::Forwarded),
    ] {
        let v = process(&mut e, &frame, dir, at(1));
        assert_eq!(v.reason, Reason::AllowIp);
        assert_agrees(&e, &x, v);
    }
}

#[test]
fn every_overlapping_block_cidr_is_listed_and_the_longest_decides() {
    let mut e = engine(
        r#"{"block": {"ip": ["203.0.113.7", "198.18.0.0/16", "198.18.5.0/24",
                              "198.19.0.0/16", "198.18.0.0/16"]}}"#,
    );
    let x = e.explain(ip("198.18.5.7"), at(0));
    let listed: Vec<(&str, u32, Option<IpNet>)> = x
        .blocked_by
        .iter()
        .map(|m| (m.list.as_str(), m.index, m.net))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("block.ip", 1, net("198.18.0.0/16")),
            ("block.ip", 2, net("198.18.5.0/24")),
            ("block.ip", 4, net("198.18.0.0/16")),
        ],
        "all of them, duplicates included, in file order"
    );
    assert!(x.allowed_by.is_empty() && x.allowlisted.is_none() && !x.protected);
    assert_eq!(
        x.verdict,
        "dropped: blocked by block.ip[2] 198.18.5.0/24 (any direction)"
    );
    for (frame, dir) in [
        (syn("198.18.5.7", "192.0.2.1", 22), Direction::Inbound),
        (syn("192.0.2.1", "198.18.5.7", 443), Direction::Outbound),
    ] {
        let v = process(&mut e, &frame, dir, at(1));
        assert_eq!(v.reason, Reason::BlockedIp);
        assert_agrees(&e, &x, v);
    }
    // Outside the /24, the /16 decides (first of the duplicates).
    let x = e.explain(ip("198.18.6.1"), at(0));
    assert_eq!(x.blocked_by.len(), 2);
    assert_eq!(
        x.verdict,
        "dropped: blocked by block.ip[1] 198.18.0.0/16 (any direction)"
    );
}

#[test]
fn a_banned_address_shows_the_ban_and_the_seconds_left() {
    let mut e = engine(r#"{"block": {"ip": ["198.18.5.0/24"]}}"#);
    let a = ip("198.18.5.7");
    assert!(e.ban(a, at(0), Duration::from_secs(600), "scan:syn".into()));
    let x = e.explain(a, at(88));
    assert_eq!(
        x.ban,
        Some(BanView {
            reason: "scan:syn".into(),
            since: at(0),
            until: at(600),
            seconds_left: 512,
        })
    );
    assert_eq!(x.verdict, "dropped: banned (scan:syn) for another 512 s");
    assert_eq!(
        x.to_string(),
        "198.18.5.7\n\
         \x20 verdict: dropped: banned (scan:syn) for another 512 s\n\
         \x20 ban: scan:syn since 2026-11-18T11:06:40Z until 2026-11-18T11:16:40Z (512 s left)\n\
         \x20 blocked by: block.ip[0] 198.18.5.0/24\n\
         \x20 allowed by: -"
    );
    // Part of a second left counts as a second.
    let half = Timestamp::from_micros(T0 + 599_500_000);
    assert_eq!(e.explain(a, half).ban.unwrap().seconds_left, 1);
    let v = process(
        &mut e,
        &syn("198.18.5.7", "192.0.2.1", 22),
        Direction::Inbound,
        at(88),
    );
    assert_eq!(v.reason, Reason::Banned);
    assert_agrees(&e, &x, v);

    // Over: the ban is shown but no longer decides; the block list does.
    let x = e.explain(a, at(600));
    assert_eq!(x.ban.as_ref().unwrap().seconds_left, 0);
    assert_eq!(
        x.verdict,
        "dropped: blocked by block.ip[0] 198.18.5.0/24 (any direction) \
         (once the ban (scan:syn) that ended at 2026-11-18T11:16:40Z is lifted, \
         at the engine's next tick: within 1 s of packet time)"
    );
    assert!(x.to_string().contains("(over: lifted at the next tick)"));
    let v = process(
        &mut e,
        &syn("198.18.5.7", "192.0.2.1", 22),
        Direction::Inbound,
        at(601),
    );
    assert_eq!(v.reason, Reason::BlockedIp);
    assert_agrees(&e, &x, v);
    assert!(e.explain(a, at(601)).ban.is_none(), "expired by the tick");
}

#[test]
fn loopback_v4_and_v6_are_accepted_and_protected() {
    let mut e =
        engine(r#"{"block": {"ip": ["127.0.0.0/8", "::1"]}, "policy": {"default": "drop"}}"#);
    for (a, other) in [
        ("127.0.0.1", "127.0.0.2"),
        ("127.9.9.9", "127.0.0.1"),
        ("::1", "::1"),
    ] {
        let x = e.explain(ip(a), at(0));
        assert!(x.loopback && x.protected, "{a}");
        assert!(x.allowlisted.is_none());
        assert_eq!(x.verdict, "accepted: loopback (never banned)");
        assert_eq!(
            x.blocked_by.len(),
            1,
            "{a}: the block entry is listed, and loses"
        );
        assert!(!e.ban(ip(a), at(0), Duration::from_secs(60), "manual".into()));
        let v = process(&mut e, &syn(a, other, 22), Direction::Inbound, at(1));
        assert_eq!(v.reason, Reason::Loopback);
        assert_agrees(&e, &x, v);
    }
    // An IPv4-mapped loopback is not loopback (nor is it on 127.0.0.0/8).
    let x = e.explain(ip("::ffff:127.0.0.1"), at(0));
    assert!(!x.loopback && !x.protected && x.blocked_by.is_empty());
    assert_eq!(x.verdict, "dropped: default policy (drop)");
}

#[test]
fn an_ipv6_address_in_a_blocked_48() {
    let mut e = engine(r#"{"block": {"ip": ["198.18.0.0/15", "2001:db8:1::/48"]}}"#);
    let x = e.explain(ip("2001:db8:1:2::5"), at(0));
    assert_eq!(x.blocked_by.len(), 1);
    assert_eq!(x.blocked_by[0].index, 1);
    assert_eq!(x.blocked_by[0].net, net("2001:db8:1::/48"));
    assert_eq!(
        x.verdict,
        "dropped: blocked by block.ip[1] 2001:db8:1::/48 (any direction)"
    );
    let v = process(
        &mut e,
        &syn("2001:db8:1:2::5", "2001:db8:ffff::1", 443),
        Direction::Inbound,
        at(1),
    );
    assert_eq!(v.reason, Reason::BlockedIp);
    assert_agrees(&e, &x, v);
    let x = e.explain(ip("2001:db8:2::1"), at(0));
    assert!(x.blocked_by.is_empty());
    assert_eq!(x.verdict, "accepted: default policy (accept)");
}

const LAB_RULES: &str = r#"{
  "allow": {"ip": ["192.0.2.10"]},
  "rules": [
    {"action": "allow", "ip": ["198.18.9.0/24"], "protocol": ["ICMP"]},
    {"action": "block", "direction": "inbound", "ip": ["203.0.113.0/24", "198.18.0.0/24"],
     "port": ["22"], "protocol": ["TCP"], "comment": "no ssh from the lab"},
    {"action": "block", "ip": ["198.18.0.0/16"]}
  ]
}"#;

#[test]
fn a_composite_rule_is_described_with_its_conditions() {
    let mut e = engine(LAB_RULES);
    let a = "198.18.0.9";
    let x = e.explain(ip(a), at(0));
    let texts: Vec<&str> = x.blocked_by.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(
        texts,
        vec![
            "rules[1] (no ssh from the lab): inbound TCP port 22 from 198.18.0.0/24 (and 1 other prefixes)",
            "rules[2]: from or to 198.18.0.0/16 (any direction)",
        ]
    );
    assert_eq!(x.blocked_by[0].net, net("198.18.0.0/24"));
    assert_eq!(x.blocked_by[0].list, "rules");
    assert_eq!(
        x.blocked_by[0].conditions.as_deref(),
        Some("inbound TCP port 22 from 198.18.0.0/24 (and 1 other prefixes)")
    );
    assert!(x.allowed_by.is_empty(), "rules[0] is about 198.18.9.0/24");
    // rules[2] has no condition but the address: it decides what rules[1]
    // does not (here the same action, but the cause differs).
    assert_eq!(
        x.verdict,
        "depends on direction/port/protocol: dropped by rules[1] (no ssh from the lab): \
         inbound TCP port 22 from 198.18.0.0/24 (and 1 other prefixes); \
         otherwise dropped: blocked by rules[2]: from or to 198.18.0.0/16 (any direction)"
    );
    let v = process(&mut e, &syn(a, "192.0.2.1", 22), Direction::Inbound, at(1));
    assert_eq!((v.action, v.rule.map(|r| r.entry)), (Action::Drop, Some(1)));
    let v = process(&mut e, &syn("192.0.2.1", a, 22), Direction::Outbound, at(1));
    assert_eq!((v.action, v.rule.map(|r| r.entry)), (Action::Drop, Some(2)));

    // An allow rule that depends on the protocol, before the default.
    let x = e.explain(ip("198.18.9.1"), at(0));
    assert_eq!(x.allowed_by.len(), 1);
    assert_eq!(
        x.verdict,
        "depends on protocol: accepted by rules[0]: ICMP from or to 198.18.9.0/24 (any direction); \
         otherwise dropped: blocked by rules[2]: from or to 198.18.0.0/16 (any direction)"
    );
    let ping = traffic::icmp_echo(ip("198.18.9.1"), ip("192.0.2.1"), 1, 1);
    let v = process(&mut e, &ping, Direction::Inbound, at(1));
    assert_eq!(
        (v.reason, v.rule.map(|r| r.entry)),
        (Reason::AllowRule, Some(0))
    );
    let v = process(
        &mut e,
        &udp("198.18.9.1", "192.0.2.1", 53),
        Direction::Inbound,
        at(1),
    );
    assert_eq!(
        (v.reason, v.rule.map(|r| r.entry)),
        (Reason::BlockedIp, Some(2))
    );
}

#[test]
fn an_address_nothing_matches_gets_the_default_policy() {
    for (policy, word, action) in [
        ("accept", "accepted", Action::Accept),
        ("drop", "dropped", Action::Drop),
    ] {
        let mut e = engine(&format!(
            r#"{{"block": {{"ip": ["198.18.5.0/24"]}}, "allow": {{"ip": ["192.0.2.0/24"]}},
                 "policy": {{"default": "{policy}"}}}}"#
        ));
        let x = e.explain(ip("198.19.1.1"), at(0));
        assert!(x.blocked_by.is_empty() && x.allowed_by.is_empty() && x.ban.is_none());
        assert!(!x.protected && !x.loopback);
        assert_eq!(x.verdict, format!("{word}: default policy ({policy})"));
        assert_eq!(
            x.to_string(),
            format!(
                "198.19.1.1\n  verdict: {word}: default policy ({policy})\n  ban: -\n  \
                 blocked by: -\n  allowed by: -"
            )
        );
        let v = process(
            &mut e,
            &syn("198.19.1.1", "192.0.2.1", 80),
            Direction::Inbound,
            at(1),
        );
        assert_eq!((v.action, v.reason), (action, Reason::Default));
        assert_agrees(&e, &x, v);
    }
}

/// Regression guard for the precedence that surprises: `allow.port` is
/// tier 4 and `block.ip` tier 5, so an allowed port passes from a blocked
/// address. The explanation must say so, not "dropped".
#[test]
fn allow_port_wins_over_block_ip_and_explain_says_it_depends_on_the_port() {
    let mut e = engine(
        r#"{"block": {"ip": ["198.18.5.0/24"], "port": [23]},
            "allow": {"port": [22], "protocol": ["ICMP"]}}"#,
    );
    let a = "198.18.5.7";
    let x = e.explain(ip(a), at(0));
    assert_eq!(
        x.verdict,
        "depends on port/protocol: accepted by allow.port[0] 22 (TCP/UDP destination port); \
         accepted by allow.protocol[0] ICMP; \
         otherwise dropped: blocked by block.ip[0] 198.18.5.0/24 (any direction)"
    );
    let v = process(&mut e, &syn(a, "192.0.2.1", 22), Direction::Inbound, at(1));
    assert_eq!((v.action, v.reason), (Action::Accept, Reason::AllowPort));
    let ping = traffic::icmp_echo(ip(a), ip("192.0.2.1"), 1, 1);
    let v = process(&mut e, &ping, Direction::Inbound, at(1));
    assert_eq!(
        (v.action, v.reason),
        (Action::Accept, Reason::AllowProtocol)
    );
    let v = process(&mut e, &syn(a, "192.0.2.1", 80), Direction::Inbound, at(1));
    assert_eq!((v.action, v.reason), (Action::Drop, Reason::BlockedIp));

    // Without a block.ip match, block.port is one more condition.
    let x = e.explain(ip("198.19.0.1"), at(0));
    assert_eq!(
        x.verdict,
        "depends on port/protocol: accepted by allow.port[0] 22 (TCP/UDP destination port); \
         accepted by allow.protocol[0] ICMP; \
         dropped by block.port[0] 23 (TCP/UDP destination port); \
         otherwise accepted: default policy (accept)"
    );
}

#[test]
fn blocked_dns_names_come_before_allow_port() {
    let lists: HashMap<String, String> =
        [("hosts.txt".to_owned(), "0.0.0.0 ads.example\n".to_owned())].into();
    let mut e = engine_with(
        r#"{"block": {"domain_lists": ["hosts.txt"]}, "allow": {"port": [53]}}"#,
        &lists,
    );
    let a = "198.18.0.53";
    let x = e.explain(ip(a), at(0));
    assert_eq!(
        x.verdict,
        "depends on port/DNS name: DNS queries (TCP/UDP port 53) for blocked names are dropped; \
         accepted by allow.port[0] 53 (TCP/UDP destination port); \
         otherwise accepted: default policy (accept)"
    );
    let query = |name: &str| {
        traffic::dns_udp(
            SocketAddr::new(ip("192.0.2.1"), 40_000),
            SocketAddr::new(ip(a), 53),
            7,
            name,
        )
    };
    let v = process(&mut e, &query("x.ads.example"), Direction::Outbound, at(1));
    assert_eq!((v.action, v.reason), (Action::Drop, Reason::BlockedDomain));
    let v = process(&mut e, &query("example.org"), Direction::Outbound, at(1));
    assert_eq!((v.action, v.reason), (Action::Accept, Reason::AllowPort));
}

#[test]
fn serde_round_trip() {
    let mut e = engine(LAB_RULES);
    assert!(e.ban(
        ip("198.18.0.9"),
        at(0),
        Duration::from_secs(600),
        "scan:syn".into()
    ));
    for a in ["198.18.0.9", "192.0.2.10", "::1", "2001:db8::1"] {
        let x = e.explain(ip(a), at(30));
        let json = serde_json::to_string(&x).unwrap();
        let back: Explanation = serde_json::from_str(&json).unwrap();
        assert_eq!(back, x, "{json}");
    }
    let json = serde_json::to_value(e.explain(ip("198.18.0.9"), at(30))).unwrap();
    assert_eq!(json["ban"]["since"], "2026-11-18T11:06:40.000000Z");
    assert_eq!(json["ban"]["seconds_left"], 570);
    assert_eq!(json["blocked_by"][0]["net"], "198.18.0.0/24");
}

#[test]
fn protected_addresses_are_explained_as_protected() {
    let mut cfg = Config::from_json_str(
        r#"{"block": {"ip": ["198.18.0.0/24"]}, "allow": {"ip": ["198.18.1.1"]}}"#,
        &NoLists,
    )
    .unwrap();
    cfg.rules.protect(&["198.18.0.9/32".parse().unwrap()]);
    let e = Engine::new(Arc::new(cfg), DetectorMode::Off).unwrap();
    let x = e.explain("198.18.0.9".parse().unwrap(), Timestamp::from_secs(1));
    let allow = x.allowlisted.as_ref().unwrap();
    assert_eq!(allow.list, "protected");
    assert_eq!(allow.text, "protected[0] 198.18.0.9");
    assert_eq!(x.allowed_by.len(), 1, "{x}");
    assert_eq!(x.blocked_by.len(), 1, "{x}");
    assert!(x.verdict.starts_with("accepted"), "{x}");
}
