//! The generated nft script for representative plans.

use super::*;

use portcullis_engine::config::{Config, NoLists};

fn config(json: &str) -> Config {
    match Config::from_json_str(json, &NoLists) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn plan(json: &str) -> KernelPlan {
    KernelPlan::from_config(&config(json), &KernelOptions::default())
}

/// The rule lines of chain `name` in `script` (declaration lines left out).
fn chain(script: &str, name: &str) -> Vec<String> {
    let start = format!("\tchain {name} {{");
    let mut lines = script.lines().skip_while(|l| *l != start).skip(1);
    let mut out = Vec::new();
    for l in lines.by_ref() {
        if l == "\t}" {
            break;
        }
        if !l.contains("type filter hook") {
            out.push(l.trim().to_string());
        }
    }
    out
}

/// The element lines of set `name` (joined), or "" if it has none.
fn elements(script: &str, name: &str) -> String {
    let start = format!("\tset {name} {{");
    let body: Vec<&str> = script
        .lines()
        .skip_while(|l| *l != start)
        .skip(1)
        .take_while(|l| *l != "\t}")
        .collect();
    match body.iter().position(|l| l.contains("elements = {")) {
        Some(i) => body[i + 1..]
            .iter()
            .take_while(|l| l.trim() != "}")
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(" "),
        None => String::new(),
    }
}

const EXAMPLE: &str = r#"{
    "block": {"ip": ["198.18.0.0/29", "2001:2::/125", "198.18.0.4"], "port": [23, "6000-6100"], "protocol": [47]},
    "allow": {"ip": ["198.18.0.3", "2001:2::3"], "port": [22], "protocol": ["ICMP"]},
    "inline": {"queue": 3, "block_log_rate": 50}
}"#;

#[test]
fn input_chain_follows_the_engine_precedence() {
    let s = plan(EXAMPLE).ruleset_text(QueuePath::IptablesNfqueue);
    assert_eq!(
        chain(&s, "input"),
        [
            "ct state established,related ip saddr != @ban4 th dport != 53 accept",
            "ct state established,related ip6 saddr != @ban6 th dport != 53 accept",
            "ct state established,related ip saddr != @ban4 meta l4proto != { tcp, udp } accept",
            "ct state established,related ip6 saddr != @ban6 meta l4proto != { tcp, udp } accept",
            "meta mark set meta mark & 0xcfffffff",
            "iif \"lo\" meta mark set meta mark | 0x10000000 accept",
            "ip saddr @allow4 meta mark set meta mark | 0x10000000 accept",
            "ip6 saddr @allow6 meta mark set meta mark | 0x10000000 accept",
            "ip saddr @ban4 counter drop",
            "ip6 saddr @ban6 counter drop",
            // No domain rule: DNS queries are copied, not held.
            "meta l4proto { tcp, udp } th dport 53 log group 9 queue-threshold 32",
            "tcp dport @allow_tcp goto allowed",
            "udp dport @allow_udp goto allowed",
            "meta l4proto @allow_proto goto allowed",
            "ip saddr @block4 goto blocked",
            "ip6 saddr @block6 goto blocked",
            "tcp dport @block_tcp goto blocked",
            "udp dport @block_udp goto blocked",
            "meta l4proto @block_proto goto blocked",
            // DNS queries were copied above already.
            "meta l4proto { tcp, udp } th dport != 53 ct state new,invalid,untracked log group 9 queue-threshold 32",
            // Scan detection is on: the other probe shapes too.
            "meta l4proto != { tcp, udp, icmp, ipv6-icmp } ct state new,invalid,untracked log group 9 queue-threshold 32",
            "icmp type { echo-request, timestamp-request, address-mask-request } ct state new,invalid,untracked log group 9 queue-threshold 32",
            "icmpv6 type echo-request ct state new,invalid,untracked log group 9 queue-threshold 32",
        ]
    );
    assert_eq!(
        chain(&s, "allowed"),
        [
            "ct state new,invalid,untracked meta l4proto . th dport != { tcp . 53, udp . 53 } log group 9 queue-threshold 32",
            "accept"
        ]
    );
    assert_eq!(
        chain(&s, "blocked"),
        [
            "ct state new,invalid,untracked meta l4proto . th dport != { tcp . 53, udp . 53 } limit rate 50/second burst 100 packets log group 9 queue-threshold 32",
            "counter drop"
        ]
    );
    assert!(
        s.contains("\tchain input {\n\t\ttype filter hook input priority -10; policy accept;\n")
    );
    assert!(s.starts_with("table inet portcullis {\n"));
}

#[test]
fn forward_checks_both_ends_output_the_destination() {
    let s = plan(EXAMPLE).ruleset_text(QueuePath::IptablesNfqueue);
    let fwd = chain(&s, "forward");
    assert!(!fwd.iter().any(|r| r.contains("\"lo\"")));
    for want in [
        "ct state established,related ip saddr != @ban4 ip daddr != @ban4 th dport != 53 accept",
        "ct state established,related ip saddr != @ban4 ip daddr != @ban4 meta l4proto != { tcp, udp } accept",
        "ip saddr @allow4 meta mark set meta mark | 0x10000000 accept",
        "ip daddr @allow4 meta mark set meta mark | 0x10000000 accept",
        "ip saddr @ban4 counter drop",
        "ip daddr @ban4 counter drop",
        "ip6 saddr @ban6 counter drop",
        "ip6 daddr @ban6 counter drop",
        "ip saddr @block4 goto blocked",
        "ip daddr @block4 goto blocked",
        "meta l4proto { tcp, udp } th dport != 53 ct state new,invalid,untracked log group 9 queue-threshold 32",
    ] {
        assert!(
            fwd.contains(&want.to_string()),
            "{want} missing in {fwd:#?}"
        );
    }
    // Allow before ban before DNS before allow ports before block.
    let pos = |needle: &str| fwd.iter().position(|r| r.contains(needle)).unwrap();
    assert!(pos("@allow6") < pos("@ban4 counter"));
    assert!(pos("@ban6") < pos("th dport 53"));
    assert!(pos("th dport 53") < pos("@allow_tcp"));
    assert!(pos("@allow_proto") < pos("@block4"));
    assert!(pos("@block_proto") < pos("ct state new"));
    // Established flows of unbanned peers first of all.
    assert!(pos("ct state established") < pos("@allow4"));

    // Outbound: the destination is the peer; allowed ports are accepted
    // here and new connections are not queued (no composite rules, default
    // accept), but blocked ones still go through `blocked` and DNS is
    // queued.
    assert_eq!(
        chain(&s, "output"),
        [
            "ct state established,related ip daddr != @ban4 th dport != 53 accept",
            "ct state established,related ip6 daddr != @ban6 th dport != 53 accept",
            "ct state established,related ip daddr != @ban4 meta l4proto != { tcp, udp } accept",
            "ct state established,related ip6 daddr != @ban6 meta l4proto != { tcp, udp } accept",
            "meta mark & 0x10000000 == 0x10000000 accept",
            "meta mark set meta mark & 0xcfffffff",
            "oif \"lo\" meta mark set meta mark | 0x10000000 accept",
            "ip daddr @allow4 meta mark set meta mark | 0x10000000 accept",
            "ip6 daddr @allow6 meta mark set meta mark | 0x10000000 accept",
            "ip daddr @ban4 counter drop",
            "ip6 daddr @ban6 counter drop",
            "meta l4proto { tcp, udp } th dport 53 log group 9 queue-threshold 32",
            "tcp dport @allow_tcp accept",
            "udp dport @allow_udp accept",
            "meta l4proto @allow_proto accept",
            "ip daddr @block4 goto blocked",
            "ip6 daddr @block6 goto blocked",
            "tcp dport @block_tcp goto blocked",
            "udp dport @block_udp goto blocked",
            "meta l4proto @block_proto goto blocked",
        ]
    );
}

#[test]
fn set_contents_are_merged_and_ipv6_kept_apart() {
    let p = plan(EXAMPLE);
    let s = p.ruleset_text(QueuePath::IptablesNfqueue);
    // 198.18.0.4 lies inside 198.18.0.0/29: one element.
    assert_eq!(elements(&s, "block4"), "198.18.0.0/29");
    assert_eq!(elements(&s, "block6"), "2001:2::/125");
    assert_eq!(elements(&s, "allow4"), "198.18.0.3");
    assert_eq!(elements(&s, "allow6"), "2001:2::3");
    assert_eq!(elements(&s, "allow_tcp"), "22");
    assert_eq!(elements(&s, "allow_udp"), "22");
    assert_eq!(elements(&s, "block_tcp"), "23, 6000-6100");
    assert_eq!(elements(&s, "block_udp"), "23, 6000-6100");
    assert_eq!(elements(&s, "allow_proto"), "1");
    assert_eq!(elements(&s, "block_proto"), "47");
    assert_eq!(elements(&s, "queue_proto"), "");
    assert!(s.contains(
        "\tset ban4 {\n\t\ttype ipv4_addr\n\t\tflags timeout\n\t\tsize 66560\n\t\tgc-interval 100ms\n\t\tcounter\n\t}\n"
    ));
    assert!(s.contains(
        "\tset ban6 {\n\t\ttype ipv6_addr\n\t\tflags timeout\n\t\tsize 66560\n\t\tgc-interval 100ms\n\t\tcounter\n\t}\n"
    ));
    assert!(s.contains("\tset block_tcp {\n\t\ttype inet_service\n\t\tflags interval\n"));
    assert!(s.contains("\tset block_proto {\n\t\ttype inet_proto\n\t\telements"));
    // Without per-element counters.
    let s = p.render(Shape {
        ban_counters: false,
        ..Shape::of(QueuePath::IptablesNfqueue)
    });
    assert!(
        s.contains("\tset ban4 {\n\t\ttype ipv4_addr\n\t\tflags timeout\n\t\tsize 66560\n\t\tgc-interval 100ms\n\t}\n")
    );
}

#[test]
fn queue_paths_and_fail_open_or_closed() {
    let mut p = plan(EXAMPLE);
    let to_user = |p: &KernelPlan, path| chain(&p.ruleset_text(path), "to_user");
    assert_eq!(
        to_user(&p, QueuePath::IptablesNfqueue),
        ["meta mark set meta mark | 0x20000000 accept"]
    );
    assert_eq!(
        to_user(&p, QueuePath::NftQueue),
        ["meta mark set meta mark | 0x20000000 queue num 3 bypass"]
    );
    p.fail_open = false;
    assert_eq!(
        to_user(&p, QueuePath::NftQueue),
        ["meta mark set meta mark | 0x20000000 queue num 3"]
    );
    // The fallback does not depend on fail-open in nft (iptables does it).
    assert_eq!(
        to_user(&p, QueuePath::IptablesNfqueue),
        ["meta mark set meta mark | 0x20000000 accept"]
    );
    // From the rules file.
    let p = plan(r#"{"inline": {"queue": 7, "danger_fail_closed": true}}"#);
    assert_eq!((p.queue_num, p.fail_open), (7, false));
    assert_eq!(
        to_user(&p, QueuePath::NftQueue),
        ["meta mark set meta mark | 0x20000000 queue num 7"]
    );
}

#[test]
fn empty_plan_has_no_elements_and_no_rules_on_empty_sets() {
    let p = plan("{}");
    assert_eq!((p.queue_num, p.fail_open, p.block_log_rate), (0, true, 100));
    let s = p.ruleset_text(QueuePath::IptablesNfqueue);
    assert!(!s.contains("elements"), "{s}");
    assert_eq!(
        chain(&s, "input"),
        [
            "ct state established,related ip saddr != @ban4 th dport != 53 accept",
            "ct state established,related ip6 saddr != @ban6 th dport != 53 accept",
            "ct state established,related ip saddr != @ban4 meta l4proto != { tcp, udp } accept",
            "ct state established,related ip6 saddr != @ban6 meta l4proto != { tcp, udp } accept",
            "meta mark set meta mark & 0xcfffffff",
            "iif \"lo\" meta mark set meta mark | 0x10000000 accept",
            "ip saddr @ban4 counter drop",
            "ip6 saddr @ban6 counter drop",
            "meta l4proto { tcp, udp } th dport 53 log group 9 queue-threshold 32",
            "meta l4proto { tcp, udp } th dport != 53 ct state new,invalid,untracked log group 9 queue-threshold 32",
            // Scan detection is on: the other probe shapes too.
            "meta l4proto != { tcp, udp, icmp, ipv6-icmp } ct state new,invalid,untracked log group 9 queue-threshold 32",
            "icmp type { echo-request, timestamp-request, address-mask-request } ct state new,invalid,untracked log group 9 queue-threshold 32",
            "icmpv6 type echo-request ct state new,invalid,untracked log group 9 queue-threshold 32",
        ]
    );
    // Without scan detection, only new TCP and UDP flows.
    let p = plan(r#"{"scan": {"enabled": false}}"#);
    let s2 = p.ruleset_text(QueuePath::IptablesNfqueue);
    assert_eq!(
        chain(&s2, "input").last().map(|l| l.as_str()),
        Some("meta l4proto { tcp, udp } th dport != 53 ct state new,invalid,untracked log group 9 queue-threshold 32")
    );
    // Every set and chain is declared all the same, for `update` to fill.
    for set in LIST_SETS.iter().chain(&["ban4", "ban6"]) {
        assert!(s.contains(&format!("\tset {set} {{\n")), "{set}");
    }
    for c in CHAINS {
        assert!(s.contains(&format!("\tchain {c} {{\n")), "{c}");
    }
}

#[test]
fn what_user_space_needs_shapes_the_chains() {
    // No domains, no dns events: DNS stays in the kernel.
    let p = plan(r#"{"events": {"dns_queries": false}}"#);
    assert!(!p.queue_dns);
    let s = p.ruleset_text(QueuePath::IptablesNfqueue);
    assert!(!s.contains("dport 53"), "{s}");
    // A blocked domain needs the queries even without dns events.
    let p = plan(r#"{"events": {"dns_queries": false}, "block": {"domain": ["ads.example"]}}"#);
    assert!(p.queue_dns);
    // ... and holds them: user space gives their verdict.
    assert!(p.hold_dns && !p.dns_observed() && p.holds());
    let s = p.ruleset_text(QueuePath::IptablesNfqueue);
    assert!(
        chain(&s, "input").contains(&"meta l4proto { tcp, udp } th dport 53 goto to_user".into()),
        "{s}"
    );
    // Held, so not also copied: no copy rule leaves DNS out.
    assert!(
        !s.lines()
            .any(|r| r.contains("th dport != 53") && r.contains("log group")),
        "{s}"
    );

    // The default policy (dns events, no domain rule, no composite rule):
    // DNS queries and new connections are copied, nothing is held, so the
    // iptables fallback is not installed at all.
    let p = plan(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../policy/default.json"
        ))
        .unwrap(),
    );
    assert!(p.dns_observed() && !p.holds());
    let s = p.ruleset_text(QueuePath::IptablesNfqueue);
    assert!(!s.contains("goto to_user"), "{s}");
    // Each of these holds something.
    for json in [
        r#"{"inline": {"danger_fail_closed": true}}"#,
        r#"{"inline": {"queue_all": ["UDP"]}}"#,
        r#"{"block": {"domain": ["ads.example"]}}"#,
        r#"{"rules": [{"action": "block", "port": [8080]}]}"#,
        r#"{"policy": {"default": "drop"}}"#,
        r#"{"allow": {"port": [22]}, "rules": [{"action": "allow", "port": [8080]}]}"#,
    ] {
        let p = plan(json);
        let s = p.ruleset_text(QueuePath::IptablesNfqueue);
        assert!(p.holds(), "{json}");
        assert!(s.contains("goto to_user"), "{json}: {s}");
        // A queue rule matches our mark: established packets clear it.
        assert!(
            chain(&s, "input")[0].ends_with("meta mark set meta mark & 0xcfffffff accept"),
            "{json}: {s}"
        );
    }

    // An inbound composite rule: every protocol's new packets are queued
    // (the rule might match them), but outbound stays in the kernel.
    let p =
        plan(r#"{"rules": [{"action": "block", "direction": "inbound", "protocol": ["ICMP"]}]}"#);
    assert!(p.queue_new_all_protocols && !p.queue_output_new);
    let s = p.ruleset_text(QueuePath::IptablesNfqueue);
    assert_eq!(
        chain(&s, "input").last().unwrap(),
        "ct state new,invalid,untracked goto to_user"
    );
    assert!(!chain(&s, "output")
        .iter()
        .any(|r| r.contains("ct state new")));

    // A rule for any direction, or a default of drop: outbound new
    // connections go to user space too.
    for json in [
        r#"{"rules": [{"action": "allow", "port": [22]}]}"#,
        r#"{"policy": {"default": "drop"}}"#,
    ] {
        let p = plan(json);
        assert!(p.queue_output_new && p.queue_new_all_protocols, "{json}");
        let s = p.ruleset_text(QueuePath::IptablesNfqueue);
        assert_eq!(
            chain(&s, "output").last().unwrap(),
            "ct state new,invalid,untracked goto to_user",
            "{json}"
        );
    }

    // queue_all: those protocols go to user space whole, right after bans.
    let p = plan(r#"{"inline": {"queue_all": ["TCP", 17, "TCP"]}, "allow": {"port": [22]}}"#);
    assert_eq!(p.queue_all, [6, 17]);
    let s = p.ruleset_text(QueuePath::IptablesNfqueue);
    assert_eq!(elements(&s, "queue_proto"), "6, 17");
    let input = chain(&s, "input");
    let at = input
        .iter()
        .position(|r| r == "meta l4proto @queue_proto goto to_user")
        .unwrap();
    assert!(input[at - 1].contains("th dport 53"));
    assert!(input[at + 1].contains("@allow_tcp"));

    // No logging of blocked packets (the rules file says at least 1; the
    // plan allows 0): all dropped in the kernel.
    let p = KernelPlan {
        block_log_rate: 0,
        ..plan("{}")
    };
    assert_eq!(
        chain(&p.ruleset_text(QueuePath::IptablesNfqueue), "blocked"),
        ["counter drop"]
    );
}

#[test]
fn marks_are_configurable_and_checked() {
    let opts = KernelOptions {
        skip_mark: 0x1,
        queue_mark: 0x2,
    };
    // A blocked name: DNS queries are held, so the marks matter.
    let p = KernelPlan::from_config(&config(r#"{"block": {"domain": ["ads.example"]}}"#), &opts);
    let s = p.ruleset_text(QueuePath::IptablesNfqueue);
    assert_eq!(
        chain(&s, "input")[0],
        "ct state established,related ip saddr != @ban4 th dport != 53 meta mark set meta mark & 0xfffffffc accept"
    );
    assert!(chain(&s, "input").contains(&"meta mark set meta mark & 0xfffffffc".to_owned()));
    assert_eq!(
        chain(&s, "to_user"),
        ["meta mark set meta mark | 0x00000002 accept"]
    );
    assert!(p.validate().is_ok());
    for (skip, queue) in [(0, 2), (1, 0), (3, 2)] {
        let p = KernelPlan {
            skip_mark: skip,
            queue_mark: queue,
            ..p.clone()
        };
        let e = p.validate().unwrap_err().to_string();
        assert!(e.starts_with("invalid kernel plan"), "{e}");
    }
    let bad = KernelPlan {
        block_ports: vec![(10, 5)],
        ..p
    };
    assert!(bad.validate().is_err());
}

#[test]
fn many_elements_are_split_over_lines() {
    let nets: Vec<ipnet::Ipv4Net> = (0..20u32)
        .map(|i| ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(0xc612_0000 + i * 4), 32).unwrap())
        .collect();
    let export = RuleExport {
        block_v4: nets,
        ..Default::default()
    };
    let s = KernelPlan::from_export(&export, &KernelOptions::default())
        .ruleset_text(QueuePath::IptablesNfqueue);
    let lines: Vec<&str> = s
        .lines()
        .skip_while(|l| *l != "\tset block4 {")
        .skip(3)
        .take(4)
        .collect();
    assert_eq!(lines[0], "\t\telements = {");
    assert_eq!(
        lines[1],
        "\t\t\t198.18.0.0, 198.18.0.4, 198.18.0.8, 198.18.0.12, 198.18.0.16, 198.18.0.20, 198.18.0.24, 198.18.0.28,"
    );
    assert_eq!(lines[3].matches(", ").count(), 3, "{}", lines[3]);
    assert!(!lines[3].ends_with(','));
}

/// Found by the differential test (crates/portcullis/tests/differential.rs):
/// allow rules come before the block lists (tier 4 before tier 5), so a new
/// packet a block list matches is held for user space, which may accept it;
/// the kernel used to drop it.
#[test]
fn with_an_allow_rule_new_packets_the_block_lists_match_are_held() {
    let p = plan(
        r#"{"block": {"protocol": ["TCP"], "ip": ["198.18.1.0/24"]},
            "rules": [{"action": "allow", "direction": "inbound", "protocol": ["TCP"], "port": [8080]}]}"#,
    );
    assert!(p.hold_blocked_new);
    let s = p.ruleset_text(QueuePath::IptablesNfqueue);
    assert_eq!(
        chain(&s, "blocked"),
        [
            "ct state new,invalid,untracked goto to_user",
            "counter drop"
        ]
    );
    // Block rules come after the lists: blocked stays blocked in the kernel.
    let p =
        plan(r#"{"block": {"protocol": ["TCP"]}, "rules": [{"action": "block", "port": [8080]}]}"#);
    assert!(!p.hold_blocked_new);
    let s = p.ruleset_text(QueuePath::IptablesNfqueue);
    assert_eq!(
        chain(&s, "blocked"),
        [
            "ct state new,invalid,untracked meta l4proto . th dport != { tcp . 53, udp . 53 } limit rate 100/second burst 200 packets log group 9 queue-threshold 32",
            "counter drop"
        ]
    );
}

/// `th dport` reads bytes 2-3 of whatever transport header follows (an
/// ICMP checksum, GRE's protocol type). The first rules (one load and
/// compare, where a `meta l4proto . th dport` set lookup cost 5 % of
/// small-packet throughput) keep only port 53 from the accept; the next
/// two accept whatever of that is neither TCP nor UDP, or an ICMP reply
/// whose checksum happens to be 53 would fall through to the block lists.
#[test]
fn the_established_rules_except_dns_of_tcp_and_udp_only() {
    let s = plan("{}").ruleset_text(QueuePath::IptablesNfqueue);
    for hook in ["input", "forward", "output"] {
        let rules = chain(&s, hook);
        for (i, rule) in rules[..4].iter().enumerate() {
            assert!(rule.starts_with("ct state established,related"), "{rule}");
            assert!(rule.ends_with(" accept"), "{rule}");
            let except = if i < 2 {
                " th dport != 53 "
            } else {
                " meta l4proto != { tcp, udp } "
            };
            assert!(rule.contains(except), "{hook}: {rules:#?}");
        }
        // Nothing else established is accepted before the bans.
        assert!(
            !rules[4].starts_with("ct state established,related"),
            "{rules:#?}"
        );
    }
}

#[test]
fn crowdsec_sets_drop_after_our_bans_and_the_allowlist() {
    let json = r#"{"allow": {"ip": ["198.18.0.3"]},
        "crowdsec": {"lapi_url": "http://127.0.0.1:8080/", "api_key_file": "k", "max_decisions": 1234}}"#;
    let p = plan(json);
    assert_eq!(p.crowdsec, Some(1234));
    let s = p.ruleset_text(QueuePath::NftQueue);
    assert!(s.contains("\tset cs4 { type ipv4_addr; flags timeout; size 1234; }\n"));
    assert!(s.contains("\tset csr6 { type ipv6_addr; flags interval, timeout; size 1234; }\n"));
    let input = chain(&s, "input");
    assert_eq!(
        input[0],
        "ct state established,related ip saddr != @ban4 ip saddr != @cs4 ip saddr != @csr4 th dport != 53 accept"
    );
    assert!(input[1].starts_with(
        "ct state established,related ip6 saddr != @ban6 ip6 saddr != @cs6 ip6 saddr != @csr6 "
    ));
    let pos = |needle: &str| input.iter().position(|r| r.contains(needle)).unwrap();
    for set in ["cs4", "csr4", "cs6", "csr6"] {
        assert!(pos("iif \"lo\"") < pos(&format!("@{set} counter drop")));
        assert!(pos("@allow4") < pos(&format!("@{set} counter drop")));
        assert!(pos("@ban6 counter drop") < pos(&format!("@{set} counter drop")));
        assert!(pos(&format!("@{set} counter drop")) < pos("th dport 53"));
    }
    let fwd = chain(&s, "forward");
    assert!(fwd.contains(&"ip daddr @csr4 counter drop".to_string()));
    // A bans-only daemon enforces them too.
    let b = KernelPlan::bans_only(&config(json), &KernelOptions::default())
        .ruleset_text(QueuePath::NftQueue);
    assert!(chain(&b, "input").contains(&"ip6 saddr @cs6 counter drop".to_string()));
    // Without the section: no sets, no lookups.
    let off = plan("{}").ruleset_text(QueuePath::NftQueue);
    assert!(!off.contains("cs4") && !off.contains("csr6"));
}

#[test]
fn established_held_packets_skip_the_chain_but_not_bans_allowlist_or_loopback() {
    let cfg = config(
        r#"{"block": {"domain": ["ads.example"]}, "allow": {"ip": ["198.18.0.7"]},
            "inline": {"queue_all": ["UDP"]}}"#,
    );
    let p = KernelPlan::from_config(&cfg, &KernelOptions::default());
    let s = p.ruleset_text(QueuePath::IptablesNfqueue);
    let input = chain(&s, "input");
    let dns = "iif != \"lo\" ct state established,related ip saddr != @ban4 ip saddr != @allow4 meta l4proto . th dport { tcp . 53, udp . 53 } goto to_user";
    let udp = "iif != \"lo\" ct state established,related ip saddr != @ban4 ip saddr != @allow4 meta l4proto @queue_proto goto to_user";
    // Right after the established-flow accepts (ip, ip6, twice), before the
    // mark reset, loopback, allowlist and bans.
    assert_eq!(input[4], dns, "{input:#?}");
    assert_eq!(input[5], udp, "{input:#?}");
    assert!(input[6].starts_with(
        "iif != \"lo\" ct state established,related ip6 saddr != @ban6 meta l4proto . th"
    ));
    // Forwarded: neither end banned or allowlisted.
    let fwd = chain(&s, "forward");
    assert!(fwd.contains(&"ct state established,related ip saddr != @ban4 ip daddr != @ban4 ip saddr != @allow4 ip daddr != @allow4 meta l4proto @queue_proto goto to_user".to_owned()), "{fwd:#?}");
    // Outbound: after the rule that lets our own NXDOMAIN answers pass.
    let out = chain(&s, "output");
    let skip = out
        .iter()
        .position(|r| r.starts_with("meta mark & "))
        .unwrap();
    let held = out
        .iter()
        .position(|r| r.ends_with("@queue_proto goto to_user") && r.contains("established"))
        .unwrap();
    assert!(skip < held, "{out:#?}");
    assert!(out[held].starts_with("oif != \"lo\" "));

    // Nothing held (the default policy copies DNS queries): no such rule.
    let p = KernelPlan::from_config(&config("{}"), &KernelOptions::default());
    let s = p.ruleset_text(QueuePath::IptablesNfqueue);
    for hook in ["input", "forward", "output"] {
        assert!(
            !chain(&s, hook)
                .iter()
                .any(|r| r.contains("established") && r.contains("to_user")),
            "{hook}: {:#?}",
            chain(&s, hook)
        );
    }
}

/// Where a ban deletes its peer's conntrack entries, established packets
/// are accepted (or held) without a ban or CrowdSec set lookup, one rule
/// for both families; the bans' drops stay for what is new again.
#[test]
fn where_bans_end_flows_established_packets_skip_the_ban_sets() {
    let ends = |p: &KernelPlan| {
        p.render(Shape {
            bans_end_flows: true,
            ..Shape::of(QueuePath::XtQueue)
        })
    };
    let s = ends(&plan(
        r#"{"crowdsec": {"lapi_url": "http://127.0.0.1:8080/", "api_key_file": "k"}}"#,
    ));
    for hook in ["input", "forward", "output"] {
        let rules = chain(&s, hook);
        assert_eq!(
            rules[0],
            "ct state established,related th dport != 53 accept"
        );
        assert_eq!(
            rules[1],
            "ct state established,related meta l4proto != { tcp, udp } accept"
        );
        assert!(
            !rules[2].starts_with("ct state established"),
            "{hook}: {rules:#?}"
        );
        // Bans and decisions still drop.
        assert!(rules.iter().any(|r| r.ends_with("@ban4 counter drop")));
        assert!(rules.iter().any(|r| r.ends_with("@cs6 counter drop")));
    }
    // Held flows: the allowlist is still looked up; a family without one
    // is named so that the other's allowlisted peers are not held.
    let s = ends(&plan(
        r#"{"block": {"domain": ["ads.example"]}, "allow": {"ip": ["198.18.0.7"]},
            "inline": {"queue_all": ["UDP"]}}"#,
    ));
    let input = chain(&s, "input");
    let held: Vec<&String> = input
        .iter()
        .filter(|r| r.contains("established") && r.ends_with("goto to_user"))
        .collect();
    assert_eq!(
        held,
        [
            "iif != \"lo\" ct state established,related ip saddr != @allow4 meta l4proto . th dport { tcp . 53, udp . 53 } goto to_user",
            "iif != \"lo\" ct state established,related ip saddr != @allow4 meta l4proto @queue_proto goto to_user",
            "iif != \"lo\" ct state established,related meta nfproto ipv6 meta l4proto . th dport { tcp . 53, udp . 53 } goto to_user",
            "iif != \"lo\" ct state established,related meta nfproto ipv6 meta l4proto @queue_proto goto to_user",
        ],
        "{input:#?}"
    );
    // No allowlist: one held rule per kind for both families.
    let s = ends(&plan(r#"{"inline": {"queue_all": ["UDP"]}}"#));
    let held: Vec<String> = chain(&s, "output")
        .into_iter()
        .filter(|r| r.contains("established") && r.ends_with("goto to_user"))
        .collect();
    assert_eq!(
        held,
        ["oif != \"lo\" ct state established,related meta l4proto @queue_proto goto to_user"]
    );
    // Elsewhere the lookups stay.
    let s = plan("{}").ruleset_text(QueuePath::XtQueue);
    assert_eq!(
        chain(&s, "input")[0],
        "ct state established,related ip saddr != @ban4 th dport != 53 accept"
    );
}
