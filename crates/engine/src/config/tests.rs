//! Whole-file tests: loading, every error reported with path and line,
//! the default policy, the schema.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::rules::list_id;
use crate::types::RuleRef;

fn errors(text: &str) -> Vec<String> {
    errors_with(text, &NoLists)
}

fn errors_with(text: &str, loader: &dyn ListLoader) -> Vec<String> {
    match Config::from_json_str(text, loader) {
        Ok(_) => panic!("expected errors in {text}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn seed_format_loads_unchanged() {
    let seed = r#"{"block":{"ip":["192.168.1.100"],"port":[80,443],"protocol":["TCP"]},"allow":{"ip":["127.0.0.1"],"port":[22],"protocol":["ICMP"]}}"#;
    let c = Config::from_json_str(seed, &NoLists).unwrap();
    let s = c.rules.stats();
    assert_eq!(s.block.ipv4_prefixes, 1);
    assert_eq!(s.block.port_ranges, 2);
    assert_eq!(s.block.protocols, 1);
    assert_eq!(s.allow.ipv4_prefixes, 1);
    assert_eq!(s.allow.port_ranges, 1);
    assert_eq!(s.allow.protocols, 1);
    // Everything else at its default.
    assert_eq!(c.policy, Policy::default());
    assert_eq!(c.scan, ScanConfig::default());
    assert_eq!(c.events, EventConfig::default());
    assert_eq!(c.dns, DnsConfig::default());
    assert!(c.home_net.is_empty());
}

#[test]
fn a_schema_key_is_allowed() {
    assert!(Config::from_json_str(r#"{"$schema": "./portcullis.schema.json"}"#, &NoLists).is_ok());
    assert_eq!(
        errors(r#"{"$schema": 1}"#),
        ["$schema (line 1): expected a string (the schema's URL or path), not the number 1"]
    );
}

#[test]
fn empty_object_is_the_defaults() {
    let c = Config::from_json_str("{}", &NoLists).unwrap();
    assert_eq!(c.policy, Config::default().policy);
    assert_eq!(c.scan, ScanConfig::default());
    assert_eq!(c.rules.stats(), RuleSet::empty().stats());
}

#[test]
fn full_format_compiles() {
    let text = r#"{
  "block": {"ip": ["203.0.113.7", "198.51.100.0/24", "2001:db8::/32"], "port": [23, "6000-6100"], "protocol": ["TCP","UDP","ICMP","ICMPv6", 47],
            "domain": ["ads.example"], "domain_lists": ["lists/hosts.txt"]},
  "allow": {"ip": ["192.0.2.1"], "port": [22], "protocol": ["IPv6-ICMP"], "domain": ["ok.ads.example"], "domain_lists": []},
  "rules": [{"action": "block", "direction": "inbound", "ip": ["198.18.0.0/15"], "port": ["22"], "protocol": ["TCP"], "comment": "no ssh from the lab"}],
  "policy": {"default": "drop", "malformed": "accept"},
  "scan": {"enabled": false, "window": "20s", "port_threshold": 7, "host_threshold": 12, "slow": {"window": "10m", "port_threshold": 15},
           "ban": false, "ban_duration": "1h", "max_sources": 100, "max_flows": 200, "flow_timeout": 90},
  "events": {"dns_queries": false, "drop_window": "2m", "max_drop_keys": 10, "max_events_per_second": 50, "community_id_seed": 7},
  "dns": {"blocked_response": "drop"},
  "home_net": ["198.18.0.0/24", "2001:2::/64", "192.0.2.1"]
}"#;
    let mut files = HashMap::new();
    files.insert(
        "lists/hosts.txt".to_string(),
        "0.0.0.0 tracker.example\n".to_string(),
    );
    let c = Config::from_json_str(text, &files).unwrap();
    assert_eq!(
        c.policy,
        Policy {
            default: Action::Drop,
            malformed: Action::Accept
        }
    );
    assert_eq!(
        c.scan,
        ScanConfig {
            enabled: false,
            window: Duration::from_secs(20),
            port_threshold: 7,
            host_threshold: 12,
            slow: Some(SlowScan {
                window: Duration::from_secs(600),
                port_threshold: 15
            }),
            ban: false,
            internal_action: crate::config::ScanAction::Alert,
            ban_duration: Duration::from_secs(3600),
            max_sources: 100,
            max_flows: 200,
            max_bans: 16_384,
            flow_timeout: Duration::from_secs(90),
        }
    );
    assert_eq!(
        c.events,
        EventConfig {
            dns_queries: false,
            drop_window: Duration::from_secs(120),
            max_drop_keys: 10,
            max_events_per_second: 50,
            community_id_seed: 7,
        }
    );
    assert_eq!(c.dns.blocked_response, BlockedDnsResponse::Drop);
    let nets: Vec<String> = c.home_net.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["198.18.0.0/24", "2001:2::/64", "192.0.2.1/32"]);
    let s = c.rules.stats();
    assert_eq!(
        (
            s.block.ipv4_prefixes,
            s.block.ipv6_prefixes,
            s.block.protocols
        ),
        (2, 1, 5)
    );
    assert_eq!((s.block.domains, s.allow.domains, s.block_rules), (2, 1, 1));
    assert_eq!(
        c.rules.describe(RuleRef {
            list: list_id::RULES,
            entry: 0
        }),
        "rules[0] (no ssh from the lab)"
    );
}

#[test]
fn every_error_is_reported_with_path_and_line() {
    let text = r#"{
  "block": {
    "ip": ["192.0.2.1", "300.1.1.1", "10.0.0.1/8",
           "2001:db8::1/32", 7],
    "port": [80, 70000, "100-50", "ssh"],
    "protocol": ["TCP", "SCTPX", 256],
    "domain": ["ok.example", "bad domain.example"]
  },
  "allow": {"ip": "127.0.0.1"},
  "rules": [
    {"action": "block", "port": [22]},
    {"action": "allow", "ip": []},
    {"action": "block", "direction": "inbound"},
    {"action": "block", "port": [22], "protocol": ["ICMP"]}
  ],
  "scan": {"window": "10 min", "port_threshold": 0, "ban_duration": 0,
           "slow": {"window": "5s"}},
  "events": {"drop_window": "-1"},
  "home_net": ["198.18.0.0/15", "198.18.0.1/15"]
}"#;
    let got = errors(text);
    let want = [
        r#"block.ip[1] (line 3): "300.1.1.1" is not an IP address or CIDR prefix"#,
        r#"block.ip[2] (line 3): "10.0.0.1/8" has host bits set: the network is "10.0.0.0/8"; write that, or the address alone for one host"#,
        r#"block.ip[3] (line 4): "2001:db8::1/32" has host bits set: the network is "2001:db8::/32"; write that, or the address alone for one host"#,
        r#"block.ip[4] (line 4): the number 7 is not an IP address or CIDR prefix: expected a string such as "203.0.113.7" or "198.51.100.0/24""#,
        r#"block.port[1] (line 5): 70000 is not a port (0-65535)"#,
        r#"block.port[2] (line 5): "100-50": the range starts above its end"#,
        r#"block.port[3] (line 5): "ssh" is not a port: expected a number 0-65535 or a range "N-M""#,
        r#"block.protocol[1] (line 6): "SCTPX" is not a protocol: expected TCP, UDP, ICMP, ICMPv6 or a protocol number 0-255"#,
        r#"block.protocol[2] (line 6): 256 is not a protocol: expected TCP, UDP, ICMP, ICMPv6 or a protocol number 0-255"#,
        r#"block.domain[1] (line 7): "bad domain.example" is not a domain name: it has the character ' '; names use a-z, 0-9, '-' and '_' (write IDNs in punycode, xn--...)"#,
        r#"allow.ip (line 9): expected an array ([...]), not the string "127.0.0.1""#,
        r#"rules[1].ip (line 12): is empty: an empty list matches nothing; leave the field out to match any"#,
        r#"rules[2] (line 13): a rule needs at least one of `ip`, `port`, `protocol` (to match every packet, use policy.default)"#,
        r#"rules[3].port (line 14): ports match only TCP and UDP, and this rule's protocol list has neither: it could never match"#,
        r#"scan.window (line 16): "10 min" is not a duration: write seconds as a number, or a whole number with a unit s, m, h or d ("10m")"#,
        r#"scan.port_threshold (line 16): must be more than zero"#,
        r#"scan.ban_duration (line 16): 0 must be more than zero"#,
        r#"scan.slow.window (line 17): must be longer than scan.window (10s), or the slow window catches nothing more"#,
        r#"events.drop_window (line 18): "-1" is not a duration: write seconds as a number, or a whole number with a unit s, m, h or d ("10m")"#,
        r#"home_net[1] (line 19): "198.18.0.1/15" has host bits set: the network is "198.18.0.0/15"; write that, or the address alone for one host"#,
    ];
    assert_eq!(got, want, "\n{}", got.join("\n"));
    // The Display of the whole set is one error per line.
    let e = Config::from_json_str(text, &NoLists).unwrap_err();
    assert_eq!(e.to_string().lines().count(), want.len());
}

#[test]
fn structural_errors_are_reported_with_their_path() {
    let text = "{\n  \"block\": {\"ip\": [], \"ports\": [80]},\n  \"scan\": {\"slow\": {\"windw\": \"1m\"}},\n  \"rules\": [{\"action\": \"block\", \"port\": [1], \"dir\": \"in\"}],\n  \"sacn\": {}\n}";
    let got = errors(text);
    assert_eq!(
        got,
        [
            "block.ports (line 2): unknown field `ports`, expected `ip`, `port`, `protocol`, `domain` or `domain_lists`",
            "scan.slow.windw (line 3): unknown field `windw`, expected `window` or `port_threshold`",
            "rules[0].dir (line 4): unknown field `dir`, expected `action`, `direction`, `ip`, `port`, `protocol` or `comment`",
            "sacn (line 5): unknown field `sacn`, expected `block`, `allow`, `rules`, `policy`, `scan`, `events`, `dns`, `inline`, `home_net`, `crowdsec` or `$schema`",
        ],
        "\n{}",
        got.join("\n")
    );
}

#[test]
fn one_bad_section_does_not_hide_another() {
    let mut got = errors(
        r#"{"policy": {"default": "reject"}, "block": {"port": [99999]}, "scan": {"ban": "yes"}}"#,
    );
    got.sort();
    assert_eq!(
        got,
        [
            "block.port[0] (line 1): 99999 is not a port (0-65535)",
            "policy.default (line 1): unknown variant `reject`, expected `accept` or `drop`",
            "scan.ban (line 1): invalid type: string \"yes\", expected a boolean",
        ]
    );
}

#[test]
fn json_syntax_errors_carry_line_and_column() {
    let got = errors("{\n  \"block\": {\"ip\": [\"1.2.3.4\",]}\n}");
    assert_eq!(
        got,
        ["line 2: JSON syntax error: trailing comma (column 30)"]
    );
    let got = errors("{\"block\": ");
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("line 1: JSON syntax error: EOF while parsing"),
        "{got:?}"
    );
    let got = errors("[1, 2]");
    assert_eq!(
        got,
        ["line 1: the rules file must be a JSON object ({...}), not an array"]
    );
}

#[test]
fn duplicate_keys_are_errors() {
    let got = errors("{\"block\": {\"ip\": [\"192.0.2.1\"]},\n \"block\": {\"port\": [1]}}");
    assert_eq!(
        got,
        ["block (line 2): duplicate key `block`: only the last one would count; merge them"]
    );
}

#[test]
fn domain_list_files_must_exist_but_bad_lines_are_skipped() {
    let mut files = HashMap::new();
    files.insert(
        "messy.txt".to_string(),
        "good.example\nnot a domain line\n||x.example^$popup\n".to_string(),
    );
    let text = "{\"block\": {\"domain_lists\": [\"messy.txt\", \"missing.txt\", 5]},\n \"allow\": {\"domain_lists\": [\"gone.txt\"]}}";
    let got = errors_with(text, &files);
    assert_eq!(
        got,
        [
            "block.domain_lists[1] (line 1): cannot read \"missing.txt\": no such file",
            "block.domain_lists[2] (line 1): expected a file path, not the number 5",
            "allow.domain_lists[0] (line 2): cannot read \"gone.txt\": no such file",
        ]
    );
    let c = Config::from_json_str(r#"{"block": {"domain_lists": ["messy.txt"]}}"#, &files).unwrap();
    let l = &c.rules.stats().domain_lists[0];
    assert_eq!(
        (
            l.counts.names,
            l.counts.skipped_lines,
            l.counts.first_skipped.clone()
        ),
        (1, 2, vec![2, 3])
    );
    // NoLists refuses every path.
    let got = errors(r#"{"block": {"domain_lists": ["a.txt"]}}"#);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("block.domain_lists[0] (line 1): cannot read \"a.txt\": no list files")
    );
}

#[test]
fn the_default_policy_compiles_and_is_conservative() {
    let c = Config::default_policy().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.policy,
        Policy {
            default: Action::Accept,
            malformed: Action::Drop
        }
    );
    assert!(c.scan.enabled && c.scan.ban);
    assert_eq!(c.scan, ScanConfig::default());
    assert!(c.events.dns_queries);
    let s = c.rules.stats();
    // Blocks nothing: no entry that could break a server or a laptop.
    assert_eq!(s.block, crate::rules::SideStats::default());
    assert_eq!(s.block_rules, 0);
    assert!(s.domain_lists.is_empty());
}

#[test]
fn schema_describes_the_format() {
    let s = schema();
    assert_eq!(s["title"], "portcullis rules file");
    assert_eq!(s["additionalProperties"], false);
    let lists = &s["$defs"]["RawLists"];
    assert!(lists["properties"]["ip"]["description"]
        .as_str()
        .unwrap()
        .contains("longest matching prefix"));
    assert!(s["$defs"]["PortEntry"]["oneOf"].is_array());
    assert!(s["$defs"]["DurationEntry"]["description"]
        .as_str()
        .unwrap()
        .contains("s, m, h or d"));
    // The default policy and the full example validate structurally against
    // the property names the schema lists (a cheap consistency check).
    let v: serde_json::Value = serde_json::from_str(DEFAULT_POLICY).unwrap();
    for k in v.as_object().unwrap().keys() {
        assert!(s["properties"].get(k).is_some(), "{k}");
    }
}

#[test]
fn line_of_is_public_and_tested() {
    assert_eq!(line_of("{\n\"a\": [1,\n2]}", "a[1]"), Some(3));
}

#[test]
fn scan_thresholds_the_detector_cannot_reach_are_rejected() {
    let e = errors(
        r#"{"scan": {"port_threshold": 512, "host_threshold": 0, "slow": {"window": "1h", "port_threshold": 600}}}"#,
    );
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(
        e[0].starts_with("scan.port_threshold") && e[0].contains("below 512"),
        "{e:#?}"
    );
    assert!(
        e[1].starts_with("scan.host_threshold") && e[1].contains("more than zero"),
        "{e:#?}"
    );
    assert!(
        e[2].starts_with("scan.slow.port_threshold") && e[2].contains("below 512"),
        "{e:#?}"
    );
}

#[test]
fn inline_section() {
    let c = Config::from_json_str(
        r#"{"inline": {"queue": 3, "danger_fail_closed": true, "block_log_rate": 10, "queue_all": ["UDP", 132]}}"#,
        &NoLists,
    )
    .unwrap();
    assert_eq!(c.inline.queue, 3);
    assert!(c.inline.fail_closed);
    assert_eq!(c.inline.block_log_rate, 10);
    assert_eq!(c.inline.queue_all, [17, 132]);
    let d = Config::from_json_str("{}", &NoLists).unwrap();
    assert!(!d.inline.fail_closed, "fail-open by default");
    let e = errors(r#"{"inline": {"queue_all": ["SCTPX"], "fail_closed": true}}"#);
    assert_eq!(e.len(), 2, "{e:#?}");
}

#[test]
fn crowdsec_section_compiles_with_defaults() {
    let c = Config::from_json_str(
        r#"{"crowdsec": {"lapi_url": "http://127.0.0.1:8080/", "api_key_file": "bouncer.key"}}"#,
        &NoLists,
    )
    .unwrap();
    let cs = c.crowdsec.unwrap();
    assert_eq!(cs.lapi_url, "http://127.0.0.1:8080/");
    assert_eq!(cs.api_key_file.as_deref(), Some("bouncer.key"));
    assert!(!cs.push);
    assert_eq!(cs.machine, None);
    assert_eq!(cs.pull_interval, CrowdsecConfig::PULL_INTERVAL);
    assert_eq!(cs.decision_types, ["ban"]);
    assert_eq!(cs.max_decisions, CrowdsecConfig::MAX_DECISIONS);
    assert_eq!(cs.max_queued_alerts, CrowdsecConfig::MAX_QUEUED_ALERTS);
    assert!(Config::from_json_str("{}", &NoLists)
        .unwrap()
        .crowdsec
        .is_none());

    let full = Config::from_json_str(
        r#"{"crowdsec": {"lapi_url": "https://lapi.example:8080/", "api_key_file": "k",
            "machine_id": "host-a", "password_file": "pw", "pull_interval": "2s",
            "decision_types": ["ban", "captcha", "ban"], "ca_file": "ca.pem",
            "cert_file": "c.pem", "key_file": "c.key", "max_decisions": 100,
            "max_queued_alerts": 5, "danger_plain_http_remote": false}}"#,
        &NoLists,
    )
    .unwrap()
    .crowdsec
    .unwrap();
    assert!(full.push, "push defaults to on with a machine login");
    assert_eq!(full.machine, Some(("host-a".into(), "pw".into())));
    assert_eq!(full.pull_interval, Duration::from_secs(2));
    assert_eq!(full.decision_types, ["ban", "captcha"]);
    assert_eq!(full.client_cert, Some(("c.pem".into(), "c.key".into())));
    assert_eq!(full.max_decisions, 100);
}

#[test]
fn crowdsec_section_errors_carry_their_path() {
    assert_eq!(
        errors(r#"{"crowdsec": {"api_key_file": "k"}}"#),
        ["crowdsec (line 1): missing field `lapi_url` (e.g. \"http://127.0.0.1:8080/\")"]
    );
    let text = r#"{"crowdsec": {
  "lapi_url": "ftp://x/",
  "api_key_file": "",
  "push": true,
  "pull_interval": "0s",
  "decision_types": ["ban", "tarpit"],
  "max_decisions": 0,
  "cert_file": "c.pem",
  "lapi_key": 1
}}"#;
    let got = errors(text);
    let want = [
        "crowdsec.lapi_url (line 2): \"ftp://x/\" must start with http:// or https://",
        "crowdsec.api_key_file (line 3): is empty: give a file path or leave the field out",
        "crowdsec.pull_interval (line 5)",
        "crowdsec.decision_types[1] (line 6): unknown decision type \"tarpit\"",
        "crowdsec.max_decisions (line 7): must be more than zero",
        "crowdsec.cert_file (line 8): needs `key_file` too",
        "crowdsec.lapi_key (line 9): unknown field `lapi_key`",
    ];
    for w in want {
        assert!(got.iter().any(|g| g.starts_with(w)), "{w} not in {got:#?}");
    }
    assert_eq!(
        errors(
            r#"{"crowdsec": {"lapi_url": "http://127.0.0.1:1/", "api_key_file": "k", "push": true}}"#
        ),
        ["crowdsec.push (line 1): is true but no machine login is set: add `machine_id` and `password_file` (`cscli machines add NAME --password ...`), or set push to false"]
    );
    assert_eq!(
        errors(
            r#"{"crowdsec": {"lapi_url": "http://127.0.0.1:1/", "api_key_file": "k", "ca_file": "ca.pem"}}"#
        ),
        ["crowdsec.lapi_url (line 1): TLS files are set but the URL is http://; use https://"]
    );
    assert!(
        errors(r#"{"crowdsec": {"lapi_url": "http://127.0.0.1:1/"}}"#)[0]
            .starts_with("crowdsec (line 1): missing field `api_key_file`")
    );
    assert!(
        errors(r#"{"crowdsec": {"lapi_url": "http://127.0.0.1:1/", "api_key_file": "k", "pull_interval": "2h"}}"#)[0]
            .starts_with("crowdsec.pull_interval (line 1): must be between 1s and 1h")
    );
}
