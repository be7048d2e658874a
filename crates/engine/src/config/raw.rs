//! The rules file as written: serde types, loosely typed where entries are
//! (so each bad entry is reported on its own), strictly typed elsewhere.
//! `portcullis schema` prints the JSON Schema generated from these types;
//! the doc comments here are its descriptions.
//!
//! Reading is section by section: each top-level key, and each element of
//! `rules`, is deserialized on its own, and unknown keys are reported one
//! by one before the rest is deserialized. One mistake therefore never
//! hides the errors in another section.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::error::ConfigError;

/// A portcullis rules file. Every key is optional; an empty object `{}` is
/// a valid file (accept everything, detect and ban scanners).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "portcullis rules file")]
pub struct RawConfig {
    /// Traffic to drop and DNS names to refuse.
    pub block: Option<RawLists>,
    /// Traffic to accept and DNS names never to refuse. An address on
    /// `allow.ip` is also never banned.
    pub allow: Option<RawLists>,
    /// Composite rules: every field a rule gives must match. Tried in file
    /// order after the plain lists of the same action.
    pub rules: Option<Vec<RawRule>>,
    /// What happens when nothing else decides.
    pub policy: Option<RawPolicy>,
    /// Port-scan detection and banning.
    pub scan: Option<RawScan>,
    /// The event log.
    pub events: Option<RawEvents>,
    /// Blocked DNS queries.
    pub dns: Option<RawDns>,
    /// Inline mode (`portcullis run`): the kernel side.
    pub inline: Option<RawInline>,
    /// This host's own networks (Suricata's HOME_NET): in pcap replay and
    /// passive capture, tells inbound from outbound. Empty: every packet is
    /// inbound.
    #[schemars(with = "Option<Vec<IpEntry>>")]
    pub home_net: Option<Value>,
    /// Fleet mode: enforce the decisions of a CrowdSec Local API and push
    /// our scan findings to it (docs/fleet.md). Default: off.
    pub crowdsec: Option<RawCrowdsec>,
    /// Ignored: lets editors find this schema.
    #[serde(rename = "$schema")]
    pub schema: Option<String>,
}

impl RawConfig {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "block", "allow", "rules", "policy", "scan", "events", "dns", "inline", "home_net",
        "crowdsec", "$schema",
    ];
}

/// The plain lists of one side (`block` or `allow`).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLists {
    /// Peer addresses: IPv4/IPv6 addresses and CIDR prefixes. The peer is
    /// the source of inbound packets, the destination of outbound ones,
    /// either end of forwarded ones. The longest matching prefix names the
    /// entry.
    #[schemars(with = "Option<Vec<IpEntry>>")]
    pub ip: Option<Value>,
    /// TCP and UDP destination ports: numbers or "N-M" ranges.
    #[schemars(with = "Option<Vec<PortEntry>>")]
    pub port: Option<Value>,
    /// IP protocols: TCP, UDP, ICMP, ICMPv6, or a protocol number.
    #[schemars(with = "Option<Vec<ProtocolEntry>>")]
    pub protocol: Option<Value>,
    /// DNS names; each also covers every name below it.
    #[schemars(with = "Option<Vec<DomainEntry>>")]
    pub domain: Option<Value>,
    /// Domain list files (hosts, one name per line, or adblock `||name^`),
    /// relative paths resolved against the rules file's directory.
    #[schemars(with = "Option<Vec<String>>")]
    pub domain_lists: Option<Value>,
}

impl RawLists {
    pub(crate) const FIELDS: &'static [&'static str] =
        &["ip", "port", "protocol", "domain", "domain_lists"];
}

/// What a composite rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawRuleAction {
    /// Drop matching packets (also spelled "drop").
    #[serde(alias = "drop")]
    Block,
    /// Accept matching packets (also spelled "accept").
    #[serde(alias = "accept")]
    Allow,
}

/// Which packets a composite rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawDirection {
    /// To this host.
    Inbound,
    /// From this host.
    Outbound,
    /// Through this host (routed).
    Forwarded,
    /// All of them (the default).
    #[default]
    Any,
}

/// A composite rule. It needs at least one of `ip`, `port`, `protocol`;
/// all the fields it gives must match.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// "block" or "allow".
    pub action: RawRuleAction,
    /// Default: any.
    pub direction: Option<RawDirection>,
    /// Peer addresses (as in block.ip); any one may match.
    #[schemars(with = "Option<Vec<IpEntry>>")]
    pub ip: Option<Value>,
    /// Destination ports (TCP and UDP only); any one may match.
    #[schemars(with = "Option<Vec<PortEntry>>")]
    pub port: Option<Value>,
    /// Protocols; any one may match.
    #[schemars(with = "Option<Vec<ProtocolEntry>>")]
    pub protocol: Option<Value>,
    /// Free text, shown in events and `portcullis check`.
    pub comment: Option<String>,
}

impl RawRule {
    pub(crate) const FIELDS: &'static [&'static str] =
        &["action", "direction", "ip", "port", "protocol", "comment"];
}

/// A verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawAction {
    Accept,
    Drop,
}

/// Verdicts when nothing else decides.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// When no rule matches. Default: accept.
    pub default: Option<RawAction>,
    /// For packets that cannot be decoded. Default: drop.
    pub malformed: Option<RawAction>,
}

impl RawPolicy {
    pub(crate) const FIELDS: &'static [&'static str] = &["default", "malformed"];
}

/// Port-scan detection and banning.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawScan {
    /// Default: true.
    pub enabled: Option<bool>,
    /// Sliding window for the port and host counts. Default: 10s.
    #[schemars(with = "Option<DurationEntry>")]
    pub window: Option<Value>,
    /// A source probing more than this many distinct destination ports
    /// within `window` is a scanner. Default: 5.
    #[schemars(range(min = 1))]
    pub port_threshold: Option<u32>,
    /// A source probing one port on more than this many distinct addresses
    /// within `window` is a scanner (horizontal sweep). Default: 10.
    #[schemars(range(min = 1))]
    pub host_threshold: Option<u32>,
    /// A second, longer window for slow scans. Default: off.
    pub slow: Option<RawSlowScan>,
    /// Ban detected scanners. Default: true.
    pub ban: Option<bool>,
    /// What to do about a scanner inside `home_net` (or this host itself):
    /// `alert` (report only: banning a LAN client may cut a person off) or
    /// `ban`. Scanners outside `home_net` are banned when `ban` is true.
    /// Default: alert.
    pub internal_action: Option<RawScanAction>,
    /// How long a ban lasts. Default: 10m.
    #[schemars(with = "Option<DurationEntry>")]
    pub ban_duration: Option<Value>,
    /// Sources tracked at once; the least recently seen is evicted.
    /// Default: 65536.
    #[schemars(range(min = 1))]
    pub max_sources: Option<usize>,
    /// Flows remembered to tell replies from probes. Default: 262144.
    #[schemars(range(min = 1))]
    pub max_flows: Option<usize>,
    /// Bans in force at most (in the engine, the kernel's ban sets and the
    /// state file); when full, the ban that would end soonest yields.
    /// Default: 16384.
    #[schemars(range(min = 1))]
    pub max_bans: Option<usize>,
    /// How long a remembered flow lasts without packets. Default: 2m.
    #[schemars(with = "Option<DurationEntry>")]
    pub flow_timeout: Option<Value>,
}

impl RawScan {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "enabled",
        "window",
        "port_threshold",
        "host_threshold",
        "slow",
        "ban",
        "internal_action",
        "ban_duration",
        "max_sources",
        "max_flows",
        "max_bans",
        "flow_timeout",
    ];
}

/// What is done about a scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawScanAction {
    Alert,
    Ban,
}

/// The slow-scan window.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSlowScan {
    /// Must be longer than scan.window. Default: 10m.
    #[schemars(with = "Option<DurationEntry>")]
    pub window: Option<Value>,
    /// More than this many distinct ports within the window. Default: 15.
    #[schemars(range(min = 1))]
    pub port_threshold: Option<u32>,
}

/// The event log.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    /// Log allowed DNS queries as `dns` events. Default: true.
    pub dns_queries: Option<bool>,
    /// Drops from one source for one reason within this window become one
    /// event with a count. Default: 60s.
    #[schemars(with = "Option<DurationEntry>")]
    pub drop_window: Option<Value>,
    /// Drop sources tracked for aggregation at once. Default: 4096.
    #[schemars(range(min = 1))]
    pub max_drop_keys: Option<usize>,
    /// Events written per second at most (burst: twice this); the rest are
    /// counted in one summary event per second. Default: 500.
    #[schemars(range(min = 1))]
    pub max_events_per_second: Option<u32>,
    /// Community ID hash seed. Default: 0.
    pub community_id_seed: Option<u16>,
}

impl RawEvents {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "dns_queries",
        "drop_window",
        "max_drop_keys",
        "max_events_per_second",
        "community_id_seed",
    ];
}

/// How a blocked DNS query is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RawBlockedResponse {
    /// Answer NXDOMAIN so the client fails fast (inline mode).
    Nxdomain,
    /// Drop the query silently.
    Drop,
}

/// Blocked DNS queries.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    /// Default: nxdomain.
    pub blocked_response: Option<RawBlockedResponse>,
}

impl RawDns {
    pub(crate) const FIELDS: &'static [&'static str] = &["blocked_response"];
}

/// Inline mode: how portcullis sits in the kernel's packet path.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInline {
    /// NFQUEUE number for the packets user space decides. Default 0.
    pub queue: Option<u16>,
    /// Drop queued packets (new connections, DNS) when portcullis is not
    /// running, instead of letting them through. Dangerous: a dead daemon
    /// then cuts the host off from new connections. Default false
    /// (fail-open).
    pub danger_fail_closed: Option<bool>,
    /// New connections to blocked addresses, ports or protocols shown to
    /// user space (to be logged) per second; the rest are dropped in the
    /// kernel and only counted there. Default 100.
    pub block_log_rate: Option<u32>,
    /// Packets the kernel holds for portcullis before the queue counts as
    /// full (then: passed in fail-open mode, dropped in fail-closed mode;
    /// reported in `queue` events). Default 8192.
    pub queue_length: Option<u32>,
    /// Protocols whose every packet goes to user space, not just the first
    /// of each connection (deep inspection, benchmarks). Costly. Default:
    /// none.
    #[schemars(with = "Option<Vec<ProtocolEntry>>")]
    pub queue_all: Option<Value>,
    /// NFLOG group through which portcullis sees, without holding them,
    /// the packets whose verdict the kernel gives (new connections to be
    /// checked for scans, blocked packets to be logged). Default 9.
    pub log_group: Option<u16>,
}

impl RawInline {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "log_group",
        "queue",
        "danger_fail_closed",
        "block_log_rate",
        "queue_length",
        "queue_all",
    ];
}

/// Fleet mode on a CrowdSec Local API (LAPI): its `ban` decisions are
/// enforced in the kernel, our scan findings pushed to it as alerts.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCrowdsec {
    /// The LAPI's base URL, `http://127.0.0.1:8080/` or
    /// `https://lapi.example:8080/`. Required. Plain `http://` only to
    /// loopback unless `danger_plain_http_remote`.
    pub lapi_url: Option<String>,
    /// File holding the bouncer API key (`cscli bouncers add NAME`), one
    /// line. Required unless a client certificate is given. Relative paths
    /// are resolved against the rules file's directory.
    pub api_key_file: Option<String>,
    /// Machine id for pushing alerts (`cscli machines add NAME --password
    /// ...`). Needed when `push` is true.
    pub machine_id: Option<String>,
    /// File holding that machine's password, one line.
    pub password_file: Option<String>,
    /// Push our scan findings as alerts. Default: true when `machine_id`
    /// is set, else false.
    pub push: Option<bool>,
    /// How often the decision stream is pulled. Default: 10s.
    #[schemars(with = "Option<DurationEntry>")]
    pub pull_interval: Option<Value>,
    /// Decision types enforced (as a ban): `ban`, `captcha`, `throttle`.
    /// Other types are counted and ignored. Default: `["ban"]`.
    pub decision_types: Option<Vec<String>>,
    /// PEM CA certificates the LAPI's certificate must chain to (https).
    pub ca_file: Option<String>,
    /// PEM client certificate (https; needs `key_file`).
    pub cert_file: Option<String>,
    /// PEM key of the client certificate.
    pub key_file: Option<String>,
    /// CrowdSec decisions held at most (kernel sets and memory); beyond
    /// it the ones expiring soonest are dropped, counted and reported.
    /// Default: 200000.
    #[schemars(range(min = 1))]
    pub max_decisions: Option<usize>,
    /// Scan findings waiting on disk (under `--state-dir`) for the LAPI at
    /// most; beyond it the oldest are dropped and counted. Default: 10000.
    #[schemars(range(min = 1))]
    pub max_queued_alerts: Option<usize>,
    /// Allow `http://` to a LAPI that is not on loopback: the API key and
    /// the password then cross the network in clear. Default: false.
    pub danger_plain_http_remote: Option<bool>,
}

impl RawCrowdsec {
    pub(crate) const FIELDS: &'static [&'static str] = &[
        "lapi_url",
        "api_key_file",
        "machine_id",
        "password_file",
        "push",
        "pull_interval",
        "decision_types",
        "ca_file",
        "cert_file",
        "key_file",
        "max_decisions",
        "max_queued_alerts",
        "danger_plain_http_remote",
    ];
}

/// Schema-only types for the loosely typed entries.
macro_rules! schema_only {
    ($(#[doc = $doc:literal])* $name:ident, $schema:tt) => {
        $(#[doc = $doc])*
        #[derive(Debug)]
        pub enum $name {}

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

schema_only!(
    /// Schema of an `ip` entry.
    IpEntry,
    {
        "description": "An IPv4 or IPv6 address (a host: /32 or /128) or a CIDR prefix without host bits set.",
        "type": "string",
        "examples": ["203.0.113.7", "198.51.100.0/24", "2001:db8::/32"]
    }
);

schema_only!(
    /// Schema of a `port` entry.
    PortEntry,
    {
        "description": "A TCP/UDP destination port, or an inclusive range \"N-M\" with N <= M.",
        "oneOf": [
            {"type": "integer", "minimum": 0, "maximum": 65535},
            {"type": "string", "pattern": "^[0-9]{1,5}(-[0-9]{1,5})?$"}
        ],
        "examples": [22, "6000-6100"]
    }
);

schema_only!(
    /// Schema of a `protocol` entry.
    ProtocolEntry,
    {
        "description": "TCP, UDP, ICMP, ICMPv6 (also IPv6-ICMP), case-insensitive, or an IP protocol number.",
        "oneOf": [
            {"type": "integer", "minimum": 0, "maximum": 255},
            {"type": "string"}
        ],
        "examples": ["TCP", "ICMPv6", 47]
    }
);

schema_only!(
    /// Schema of a `domain` entry.
    DomainEntry,
    {
        "description": "A DNS name; it also covers every name below it. Case-insensitive; a trailing dot and a leading \"*.\" are ignored.",
        "type": "string",
        "examples": ["ads.example", "*.tracker.example"]
    }
);

schema_only!(
    /// Schema of a duration.
    DurationEntry,
    {
        "description": "Seconds, or a whole number with a unit: s, m, h or d (\"10m\"). Must be more than zero.",
        "oneOf": [
            {"type": "number", "exclusiveMinimum": 0},
            {"type": "string", "pattern": "^[0-9]+[smhd]?$"}
        ],
        "examples": [30, "10s", "10m", "1h", "7d"]
    }
);

fn join(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty() || rest == ".") {
        (_, true) => prefix.to_string(),
        (true, false) => rest.to_string(),
        (false, false) if rest.starts_with('[') => format!("{prefix}{rest}"),
        (false, false) => format!("{prefix}.{rest}"),
    }
}

/// `"a", "b" or "c"`
fn one_of(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => format!("`{one}`"),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(|n| format!("`{n}`")).collect();
            format!("{} or `{last}`", init.join(", "))
        }
    }
}

/// Deserializes one section found at `path`. Unknown keys of an object are
/// reported one by one and removed first, so the section's other errors
/// still show.
pub(crate) fn section<T: DeserializeOwned>(
    value: Value,
    path: &str,
    known: &[&str],
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let value = match value {
        Value::Object(mut map) => {
            let unknown: Vec<String> = map
                .keys()
                .filter(|k| !known.contains(&k.as_str()))
                .cloned()
                .collect();
            for k in unknown {
                map.remove(&k);
                errors.push(ConfigError::new(
                    join(path, &k),
                    format!("unknown field `{k}`, expected {}", one_of(known)),
                ));
            }
            Value::Object(map)
        }
        other => other,
    };
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(t) => Some(t),
        Err(e) => {
            let at = join(path, &e.path().to_string());
            errors.push(ConfigError::new(at, e.into_inner().to_string()));
            None
        }
    }
}

/// Reads the whole file's structure, section by section.
pub(crate) fn read(value: Value, errors: &mut Vec<ConfigError>) -> RawConfig {
    let mut raw = RawConfig::default();
    let map = match value {
        Value::Object(map) => map,
        other => {
            errors.push(ConfigError::new(
                "",
                format!(
                    "the rules file must be a JSON object ({{...}}), not {}",
                    kind(&other)
                ),
            ));
            return raw;
        }
    };
    for (key, v) in map {
        let e = &mut *errors;
        match key.as_str() {
            "block" => raw.block = section(v, "block", RawLists::FIELDS, e),
            "allow" => raw.allow = section(v, "allow", RawLists::FIELDS, e),
            "policy" => raw.policy = section(v, "policy", RawPolicy::FIELDS, e),
            "scan" => raw.scan = section(v, "scan", RawScan::FIELDS, e),
            "events" => raw.events = section(v, "events", RawEvents::FIELDS, e),
            "dns" => raw.dns = section(v, "dns", RawDns::FIELDS, e),
            "inline" => raw.inline = section(v, "inline", RawInline::FIELDS, e),
            "home_net" => raw.home_net = Some(v),
            "crowdsec" => raw.crowdsec = section(v, "crowdsec", RawCrowdsec::FIELDS, e),
            "$schema" => match v {
                Value::String(s) => raw.schema = Some(s),
                other => e.push(ConfigError::new(
                    "$schema",
                    format!(
                        "expected a string (the schema's URL or path), not {}",
                        kind(&other)
                    ),
                )),
            },
            "rules" => match v {
                Value::Array(items) => {
                    let mut rules = Vec::with_capacity(items.len());
                    let mut ok = true;
                    for (i, item) in items.into_iter().enumerate() {
                        match section(item, &format!("rules[{i}]"), RawRule::FIELDS, e) {
                            Some(r) => rules.push(r),
                            None => ok = false,
                        }
                    }
                    // Indices must stay those of the file: no rule set is
                    // built after an error anyway.
                    if ok {
                        raw.rules = Some(rules);
                    }
                }
                Value::Null => {}
                other => e.push(ConfigError::new(
                    "rules",
                    format!("expected an array of rules, not {}", kind(&other)),
                )),
            },
            _ => e.push(ConfigError::new(
                key.clone(),
                format!(
                    "unknown field `{key}`, expected {}",
                    one_of(RawConfig::FIELDS)
                ),
            )),
        }
    }
    raw
}

/// `a string "x"`, `the number 3`, `an object` — for messages.
pub(crate) fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_lists_match_the_schema() {
        let schema = schemars::schema_for!(RawConfig).to_value();
        let props = |v: &Value| -> Vec<String> {
            let mut k: Vec<String> = v["properties"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            k.sort();
            k
        };
        let sorted = |f: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = f.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        };
        assert_eq!(props(&schema), sorted(RawConfig::FIELDS));
        let defs = &schema["$defs"];
        assert_eq!(props(&defs["RawLists"]), sorted(RawLists::FIELDS));
        assert_eq!(props(&defs["RawRule"]), sorted(RawRule::FIELDS));
        assert_eq!(props(&defs["RawPolicy"]), sorted(RawPolicy::FIELDS));
        assert_eq!(props(&defs["RawScan"]), sorted(RawScan::FIELDS));
        assert_eq!(props(&defs["RawEvents"]), sorted(RawEvents::FIELDS));
        assert_eq!(props(&defs["RawDns"]), sorted(RawDns::FIELDS));
        assert_eq!(props(&defs["RawInline"]), sorted(RawInline::FIELDS));
        assert_eq!(props(&defs["RawCrowdsec"]), sorted(RawCrowdsec::FIELDS));
    }

    #[test]
    fn unknown_keys_are_reported_each_and_the_rest_still_read() {
        let mut errors = Vec::new();
        let v: Value = serde_json::from_str(
            r#"{"scan": {"windw": "1s", "bann": true, "port_threshold": 3}, "bogus": 1}"#,
        )
        .unwrap();
        let raw = read(v, &mut errors);
        let mut paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        paths.sort();
        assert_eq!(paths, ["bogus", "scan.bann", "scan.windw"]);
        let windw = errors.iter().find(|e| e.path == "scan.windw").unwrap();
        assert!(windw
            .message
            .starts_with("unknown field `windw`, expected `enabled`, `window`"));
        assert_eq!(raw.scan.unwrap().port_threshold, Some(3));
    }

    #[test]
    fn type_errors_carry_their_path() {
        let mut errors = Vec::new();
        let v: Value = serde_json::from_str(
            r#"{"scan": {"port_threshold": "5"}, "rules": [{"action": "block", "port": [1]}, {"action": "maybe"}], "policy": {"default": "Drop"}}"#,
        )
        .unwrap();
        read(v, &mut errors);
        let mut got: Vec<String> = errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "policy.default: unknown variant `Drop`, expected `accept` or `drop`",
                "rules[1].action: unknown variant `maybe`, expected one of `block`, `drop`, `accept`, `allow`",
                "scan.port_threshold: invalid type: string \"5\", expected u32",
            ]
        );
    }
}
