//! `RawConfig` -> [`Config`]: every entry parsed, every error collected.

use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use super::error::{ConfigError, ConfigErrors};
use super::raw::{self, kind, RawConfig, RawLists, RawRule};
use super::{
    BlockedDnsResponse, Config, CrowdsecConfig, DnsConfig, EventConfig, InlineConfig, ListLoader,
    Policy, ScanAction, ScanConfig, SlowScan,
};
use crate::rules::domains::{self, Side};
use crate::rules::{RuleSetBuilder, RuleSpec, SideSpec};
use crate::types::{Action, Direction};

/// Defaults of the optional slow-scan window.
const SLOW_WINDOW: Duration = Duration::from_secs(600);
const SLOW_PORT_THRESHOLD: u32 = 15;

/// The whole pipeline: text -> `Value` -> `RawConfig` -> `Config`.
pub(crate) fn compile(text: &str, loader: &dyn ListLoader) -> Result<Config, ConfigErrors> {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return Err(ConfigErrors {
                errors: vec![syntax_error(&e)],
            })
        }
    };
    let mut errors = Vec::new();
    for (path, line) in super::locate::duplicate_keys(text) {
        let key = path.rsplit('.').next().unwrap_or(&path).to_string();
        errors.push(ConfigError {
            path,
            line: Some(line),
            message: format!("duplicate key `{key}`: only the last one would count; merge them"),
        });
    }
    let raw = raw::read(value, &mut errors);
    let mut c = Compiler { errors, loader };
    let config = c.config(raw);
    if c.errors.is_empty() {
        return Ok(config);
    }
    let mut errors = c.errors;
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    let found = super::locate::positions(text, &paths);
    // File order: by the offending value's offset; duplicate-key errors
    // (line known, path ambiguous) by their line; the rest last, in the
    // order found.
    let mut keyed: Vec<((usize, usize), ConfigError)> = errors
        .drain(..)
        .zip(found)
        .map(|(mut e, pos)| {
            let key = match (e.line, pos) {
                (Some(line), _) => (line, usize::MAX),
                (None, Some((off, line))) => {
                    e.line = Some(line);
                    (line, off)
                }
                (None, None) => (usize::MAX, usize::MAX),
            };
            (key, e)
        })
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    errors.extend(keyed.into_iter().map(|(_, e)| e));
    Err(ConfigErrors { errors })
}

fn syntax_error(e: &serde_json::Error) -> ConfigError {
    let full = e.to_string();
    let msg = full
        .rfind(" at line ")
        .map_or(full.as_str(), |i| &full[..i]);
    ConfigError {
        path: String::new(),
        line: Some(e.line()),
        message: format!("JSON syntax error: {msg} (column {})", e.column()),
    }
}

struct Compiler<'l> {
    errors: Vec<ConfigError>,
    loader: &'l dyn ListLoader,
}

impl Compiler<'_> {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let mut rules = RuleSetBuilder::new();
        let block = raw.block.unwrap_or_default();
        let allow = raw.allow.unwrap_or_default();
        let (block_spec, block_files) = self.side("block", block);
        let (allow_spec, allow_files) = self.side("allow", allow);
        for (block, spec) in [(true, block_spec), (false, allow_spec)] {
            if let Err(e) = rules.side(block, spec) {
                self.err(
                    if block {
                        "block.domain"
                    } else {
                        "allow.domain"
                    },
                    e,
                );
            }
        }
        for (i, rule) in raw.rules.unwrap_or_default().into_iter().enumerate() {
            if let Some(spec) = self.rule(&format!("rules[{i}]"), rule) {
                rules.rule(spec);
            }
        }
        self.domain_lists(&mut rules, "block", block_files, false);
        self.domain_lists(&mut rules, "allow", allow_files, true);

        let home_net = self.entries(raw.home_net, "home_net", parse_ip);
        Config {
            rules: rules.build(),
            policy: self.policy(raw.policy.unwrap_or_default()),
            scan: self.scan(raw.scan.unwrap_or_default()),
            events: self.events(raw.events.unwrap_or_default()),
            dns: DnsConfig {
                blocked_response: match raw.dns.and_then(|d| d.blocked_response) {
                    None | Some(raw::RawBlockedResponse::Nxdomain) => BlockedDnsResponse::Nxdomain,
                    Some(raw::RawBlockedResponse::Drop) => BlockedDnsResponse::Drop,
                },
            },
            inline: self.inline(raw.inline.unwrap_or_default()),
            home_net,
            critical_peers: Vec::new(),
            crowdsec: raw.crowdsec.and_then(|c| self.crowdsec(c)),
        }
    }

    fn crowdsec(&mut self, raw: raw::RawCrowdsec) -> Option<CrowdsecConfig> {
        let before = self.errors.len();
        let nonempty = |c: &mut Self, v: Option<String>, path: &str| -> Option<String> {
            match v {
                Some(s) if s.trim().is_empty() => {
                    c.err(path, "is empty: give a file path or leave the field out");
                    None
                }
                other => other,
            }
        };
        let url = match raw.lapi_url {
            None => {
                self.err(
                    "crowdsec",
                    "missing field `lapi_url` (e.g. \"http://127.0.0.1:8080/\")",
                );
                String::new()
            }
            Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
                self.err(
                    "crowdsec.lapi_url",
                    format!("{u:?} must start with http:// or https://"),
                );
                u
            }
            Some(u) if u.contains(['?', '#', ' ']) => {
                self.err(
                    "crowdsec.lapi_url",
                    format!("{u:?} must be a base URL, without query, fragment or spaces"),
                );
                u
            }
            Some(u) => u,
        };
        let https = url.starts_with("https://");
        let api_key_file = nonempty(self, raw.api_key_file, "crowdsec.api_key_file");
        let ca_file = nonempty(self, raw.ca_file, "crowdsec.ca_file");
        let cert = nonempty(self, raw.cert_file, "crowdsec.cert_file");
        let key = nonempty(self, raw.key_file, "crowdsec.key_file");
        let client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                self.err("crowdsec.cert_file", "needs `key_file` too");
                None
            }
            (None, Some(_)) => {
                self.err("crowdsec.key_file", "needs `cert_file` too");
                None
            }
        };
        if !https && (ca_file.is_some() || client_cert.is_some()) {
            self.err(
                "crowdsec.lapi_url",
                "TLS files are set but the URL is http://; use https://",
            );
        }
        if api_key_file.is_none() && client_cert.is_none() {
            self.err(
                "crowdsec",
                "missing field `api_key_file` (the bouncer key: `cscli bouncers add NAME`), \
                 or a client certificate (`cert_file` and `key_file`)",
            );
        }
        let machine_id = match raw.machine_id {
            Some(m) if m.trim().is_empty() => {
                self.err("crowdsec.machine_id", "is empty");
                None
            }
            other => other,
        };
        let password = nonempty(self, raw.password_file, "crowdsec.password_file");
        let machine = match (machine_id, password) {
            (Some(m), Some(p)) => Some((m, p)),
            (None, None) => None,
            (Some(_), None) => {
                self.err("crowdsec.machine_id", "needs `password_file` too");
                None
            }
            (None, Some(_)) => {
                self.err("crowdsec.password_file", "needs `machine_id` too");
                None
            }
        };
        let push = raw.push.unwrap_or(machine.is_some());
        if push && machine.is_none() && self.errors.len() == before {
            self.err(
                "crowdsec.push",
                "is true but no machine login is set: add `machine_id` and `password_file` \
                 (`cscli machines add NAME --password ...`), or set push to false",
            );
        }
        let pull_interval = self.duration(
            raw.pull_interval,
            "crowdsec.pull_interval",
            CrowdsecConfig::PULL_INTERVAL,
        );
        if pull_interval < Duration::from_secs(1) || pull_interval > Duration::from_secs(3600) {
            self.err("crowdsec.pull_interval", "must be between 1s and 1h");
        }
        let mut decision_types = Vec::new();
        match raw.decision_types {
            None => decision_types.push("ban".to_owned()),
            Some(v) if v.is_empty() => self.err(
                "crowdsec.decision_types",
                "is empty: nothing would be enforced; leave it out for [\"ban\"]",
            ),
            Some(v) => {
                for (i, t) in v.into_iter().enumerate() {
                    if CrowdsecConfig::TYPES.contains(&t.as_str()) {
                        if !decision_types.contains(&t) {
                            decision_types.push(t);
                        }
                    } else {
                        self.err(
                            format!("crowdsec.decision_types[{i}]"),
                            format!("unknown decision type {t:?}, expected `ban`, `captcha` or `throttle`"),
                        );
                    }
                }
            }
        }
        let max_decisions = self.positive(
            raw.max_decisions,
            "crowdsec.max_decisions",
            CrowdsecConfig::MAX_DECISIONS,
        );
        if max_decisions > CrowdsecConfig::MAX_DECISIONS_LIMIT {
            self.err(
                "crowdsec.max_decisions",
                format!(
                    "{max_decisions} is more than {}",
                    CrowdsecConfig::MAX_DECISIONS_LIMIT
                ),
            );
        }
        let max_queued_alerts = self.positive(
            raw.max_queued_alerts,
            "crowdsec.max_queued_alerts",
            CrowdsecConfig::MAX_QUEUED_ALERTS,
        );
        (self.errors.len() == before).then_some(CrowdsecConfig {
            lapi_url: url,
            api_key_file,
            machine,
            push,
            pull_interval,
            decision_types,
            ca_file,
            client_cert,
            max_decisions,
            max_queued_alerts,
            danger_plain_http_remote: raw.danger_plain_http_remote.unwrap_or(false),
        })
    }

    fn inline(&mut self, raw: raw::RawInline) -> InlineConfig {
        let d = InlineConfig::default();
        InlineConfig {
            queue: raw.queue.unwrap_or(d.queue),
            fail_closed: raw.danger_fail_closed.unwrap_or(d.fail_closed),
            block_log_rate: self.positive(
                raw.block_log_rate,
                "inline.block_log_rate",
                d.block_log_rate,
            ),
            queue_length: self.positive(raw.queue_length, "inline.queue_length", d.queue_length),
            queue_all: self.entries(raw.queue_all, "inline.queue_all", parse_protocol),
            log_group: raw.log_group.unwrap_or(d.log_group),
        }
    }

    /// Parses an optional array at `path` entry by entry.
    fn entries<T>(
        &mut self,
        v: Option<Value>,
        path: &str,
        parse: fn(&Value) -> Result<T, String>,
    ) -> Vec<T> {
        match v {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match parse(item) {
                        Ok(t) => out.push(t),
                        Err(m) => self.err(format!("{path}[{i}]"), m),
                    }
                }
                out
            }
            Some(other) => {
                self.err(
                    path,
                    format!("expected an array ([...]), not {}", kind(&other)),
                );
                Vec::new()
            }
        }
    }

    fn side(&mut self, name: &str, raw: RawLists) -> (SideSpec, Vec<String>) {
        let spec = SideSpec {
            ips: self.entries(raw.ip, &format!("{name}.ip"), parse_ip),
            ports: self.entries(raw.port, &format!("{name}.port"), parse_port),
            protocols: self.entries(raw.protocol, &format!("{name}.protocol"), parse_protocol),
            domains: self.entries(raw.domain, &format!("{name}.domain"), parse_domain),
        };
        let files = self.entries(
            raw.domain_lists,
            &format!("{name}.domain_lists"),
            |v| match v {
                Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
                other => Err(format!("expected a file path, not {}", kind(other))),
            },
        );
        (spec, files)
    }

    fn domain_lists(
        &mut self,
        rules: &mut RuleSetBuilder,
        side: &str,
        files: Vec<String>,
        allow: bool,
    ) {
        for (i, path) in files.into_iter().enumerate() {
            let at = format!("{side}.domain_lists[{i}]");
            let text = match self.loader.load(&path) {
                Ok(t) => t,
                Err(e) => {
                    self.err(at, format!("cannot read {path:?}: {e}"));
                    continue;
                }
            };
            let id = match rules.domain_list(at.clone(), path, allow) {
                Ok(id) => id,
                Err(e) => {
                    self.err(at, e);
                    continue;
                }
            };
            let table = rules.domains();
            // About one name per line; sizes the index once.
            let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
            table.reserve(lines, text.len());
            let result = super::lists::parse(&text, |name, found, line| {
                let side = match found {
                    super::lists::Found::Exception => Side::Allow,
                    super::lists::Found::Name if allow => Side::Allow,
                    super::lists::Found::Name => Side::Block,
                };
                let r = crate::types::RuleRef {
                    list: id,
                    entry: line,
                };
                table.insert(name, side, r).map(drop)
            });
            match result {
                Ok(counts) => rules.list_counts(id, counts),
                Err(_) => self.err(
                    at,
                    "too many domain names (the table holds up to 4 GiB of names)",
                ),
            }
        }
    }

    fn rule(&mut self, path: &str, raw: RawRule) -> Option<RuleSpec> {
        let before = self.errors.len();
        let ips = self.rule_list(raw.ip, &format!("{path}.ip"), parse_ip);
        let ports = self.rule_list(raw.port, &format!("{path}.port"), parse_port);
        let protocols = self.rule_list(raw.protocol, &format!("{path}.protocol"), parse_protocol);
        if self.errors.len() > before {
            return None;
        }
        if ips.is_none() && ports.is_none() && protocols.is_none() {
            self.err(
                path,
                "a rule needs at least one of `ip`, `port`, `protocol` (to match every packet, use policy.default)",
            );
            return None;
        }
        if let (Some(_), Some(protos)) = (&ports, &protocols) {
            if !protos.iter().any(|&p| p == 6 || p == 17) {
                self.err(
                    format!("{path}.port"),
                    "ports match only TCP and UDP, and this rule's protocol list has neither: it could never match",
                );
                return None;
            }
        }
        let direction = match raw.direction.unwrap_or_default() {
            raw::RawDirection::Inbound => Some(Direction::Inbound),
            raw::RawDirection::Outbound => Some(Direction::Outbound),
            raw::RawDirection::Forwarded => Some(Direction::Forwarded),
            raw::RawDirection::Any => None,
        };
        Some(RuleSpec {
            allow: raw.action == raw::RawRuleAction::Allow,
            direction,
            ips,
            ports,
            protocols,
            comment: raw.comment.filter(|c| !c.trim().is_empty()),
        })
    }

    /// A list field of a rule: absent is `None` (match any), empty is an
    /// error (it would match nothing).
    fn rule_list<T>(
        &mut self,
        v: Option<Value>,
        at: &str,
        parse: fn(&Value) -> Result<T, String>,
    ) -> Option<Vec<T>> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) if a.is_empty() => {
                self.err(
                    at,
                    "is empty: an empty list matches nothing; leave the field out to match any",
                );
                None
            }
            v => Some(self.entries(v, at, parse)),
        }
    }

    fn policy(&mut self, raw: raw::RawPolicy) -> Policy {
        let action = |a: Option<raw::RawAction>, d: Action| match a {
            None => d,
            Some(raw::RawAction::Accept) => Action::Accept,
            Some(raw::RawAction::Drop) => Action::Drop,
        };
        let d = Policy::default();
        Policy {
            default: action(raw.default, d.default),
            malformed: action(raw.malformed, d.malformed),
        }
    }

    fn duration(&mut self, v: Option<Value>, path: &str, default: Duration) -> Duration {
        match v {
            None | Some(Value::Null) => default,
            Some(v) => parse_duration(&v).unwrap_or_else(|m| {
                self.err(path, m);
                default
            }),
        }
    }

    fn positive<T: Copy + PartialEq + Default + std::fmt::Display>(
        &mut self,
        v: Option<T>,
        path: &str,
        default: T,
    ) -> T {
        match v {
            Some(n) if n == T::default() => {
                self.err(path, "must be more than zero");
                default
            }
            Some(n) => n,
            None => default,
        }
    }

    /// A scan threshold: more than zero, and below what the detector can
    /// count per source ([`crate::detector::MAX_TARGETS`] distinct targets),
    /// or it could never fire.
    fn threshold(&mut self, v: Option<u32>, path: &str, default: u32) -> u32 {
        let n = self.positive(v, path, default);
        let cap = crate::detector::MAX_TARGETS as u32;
        if n >= cap {
            self.err(path, format!("must be below {cap}: the detector keeps at most {cap} targets per source, so it could never fire"));
            return default;
        }
        n
    }

    fn scan(&mut self, raw: raw::RawScan) -> ScanConfig {
        let d = ScanConfig::default();
        let window = self.duration(raw.window, "scan.window", d.window);
        let slow = raw.slow.map(|s| {
            let slow_window = self.duration(s.window, "scan.slow.window", SLOW_WINDOW);
            if slow_window <= window {
                self.err(
                    "scan.slow.window",
                    format!(
                        "must be longer than scan.window ({}s), or the slow window catches nothing more",
                        window.as_secs_f64()
                    ),
                );
            }
            SlowScan {
                window: slow_window,
                port_threshold: self.threshold(
                    s.port_threshold,
                    "scan.slow.port_threshold",
                    SLOW_PORT_THRESHOLD,
                ),
            }
        });
        ScanConfig {
            enabled: raw.enabled.unwrap_or(d.enabled),
            window,
            port_threshold: self.threshold(
                raw.port_threshold,
                "scan.port_threshold",
                d.port_threshold,
            ),
            host_threshold: self.threshold(
                raw.host_threshold,
                "scan.host_threshold",
                d.host_threshold,
            ),
            slow,
            ban: raw.ban.unwrap_or(d.ban),
            internal_action: match raw.internal_action {
                Some(raw::RawScanAction::Ban) => ScanAction::Ban,
                Some(raw::RawScanAction::Alert) => ScanAction::Alert,
                None => d.internal_action,
            },
            ban_duration: self.duration(raw.ban_duration, "scan.ban_duration", d.ban_duration),
            max_sources: self.positive(raw.max_sources, "scan.max_sources", d.max_sources),
            max_flows: self.positive(raw.max_flows, "scan.max_flows", d.max_flows),
            max_bans: self.positive(raw.max_bans, "scan.max_bans", d.max_bans),
            flow_timeout: self.duration(raw.flow_timeout, "scan.flow_timeout", d.flow_timeout),
        }
    }

    fn events(&mut self, raw: raw::RawEvents) -> EventConfig {
        let d = EventConfig::default();
        EventConfig {
            dns_queries: raw.dns_queries.unwrap_or(d.dns_queries),
            drop_window: self.duration(raw.drop_window, "events.drop_window", d.drop_window),
            max_drop_keys: self.positive(
                raw.max_drop_keys,
                "events.max_drop_keys",
                d.max_drop_keys,
            ),
            max_events_per_second: self.positive(
                raw.max_events_per_second,
                "events.max_events_per_second",
                d.max_events_per_second,
            ),
            community_id_seed: raw.community_id_seed.unwrap_or(d.community_id_seed),
        }
    }
}

/// An `ip` entry: an address (a host prefix) or a CIDR prefix with no host
/// bits set.
pub(crate) fn parse_ip(v: &Value) -> Result<IpNet, String> {
    let Value::String(s) = v else {
        return Err(format!(
            "{} is not an IP address or CIDR prefix: expected a string such as \"203.0.113.7\" or \"198.51.100.0/24\"",
            kind(v)
        ));
    };
    if s.contains('/') {
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR prefix"))?;
        if net.trunc() != net {
            return Err(format!(
                "{s:?} has host bits set: the network is \"{}\"; write that, or the address alone for one host",
                net.trunc()
            ));
        }
        Ok(net)
    } else {
        s.parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{s:?} is not an IP address or CIDR prefix"))
    }
}

/// A `port` entry: `22`, `"22"`, `"6000-6100"`.
pub(crate) fn parse_port(v: &Value) -> Result<(u16, u16), String> {
    fn one(s: &str, whole: &str) -> Result<u16, String> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{whole:?} is not a port: expected a number 0-65535 or a range \"N-M\""
            ));
        }
        s.parse::<u16>()
            .map_err(|_| format!("{whole:?}: {s} is not a port (0-65535)"))
    }
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(p) => u16::try_from(p)
                .map(|p| (p, p))
                .map_err(|_| format!("{p} is not a port (0-65535)")),
            None => Err(format!("{n} is not a port (0-65535)")),
        },
        Value::String(s) => {
            let (lo, hi) = match s.split_once('-') {
                Some((a, b)) => (one(a, s)?, one(b, s)?),
                None => {
                    let p = one(s, s)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(format!("{s:?}: the range starts above its end"));
            }
            Ok((lo, hi))
        }
        other => Err(format!(
            "{} is not a port: expected a number 0-65535 or a range \"N-M\"",
            kind(other)
        )),
    }
}

/// A `protocol` entry: a name or a number 0-255.
pub(crate) fn parse_protocol(v: &Value) -> Result<u8, String> {
    const EXPECTED: &str = "expected TCP, UDP, ICMP, ICMPv6 or a protocol number 0-255";
    match v {
        Value::Number(n) => n
            .as_u64()
            .and_then(|p| u8::try_from(p).ok())
            .ok_or_else(|| format!("{n} is not a protocol: {EXPECTED}")),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(6),
            "udp" => Ok(17),
            "icmp" => Ok(1),
            "icmpv6" | "ipv6-icmp" => Ok(58),
            d if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => d
                .parse::<u8>()
                .map_err(|_| format!("{s:?} is not a protocol: {EXPECTED}")),
            _ => Err(format!("{s:?} is not a protocol: {EXPECTED}")),
        },
        other => Err(format!("{} is not a protocol: {EXPECTED}", kind(other))),
    }
}

/// A `domain` entry, normalized.
pub(crate) fn parse_domain(v: &Value) -> Result<String, String> {
    let Value::String(s) = v else {
        return Err(format!(
            "{} is not a domain name: expected a string",
            kind(v)
        ));
    };
    let mut buf = Vec::new();
    domains::normalize(s, &mut buf).map_err(|m| format!("{s:?} is not a domain name: it {m}"))?;
    String::from_utf8(buf).map_err(|_| format!("{s:?} is not a domain name"))
}

/// A duration: seconds as a number, or a string `N`, `Ns`, `Nm`, `Nh`, `Nd`.
/// Zero is refused: no duration here means anything at zero.
pub(crate) fn parse_duration(v: &Value) -> Result<Duration, String> {
    const HOW: &str =
        "write seconds as a number, or a whole number with a unit s, m, h or d (\"10m\")";
    let d = match v {
        Value::Number(n) => {
            let secs = n.as_f64().unwrap_or(-1.0);
            if secs < 0.0 {
                return Err(format!("{n} is not a duration: it is negative"));
            }
            Duration::try_from_secs_f64(secs)
                .map_err(|_| format!("{n} is not a duration: too long"))?
        }
        Value::String(s) => {
            let (digits, unit) = match s.char_indices().last() {
                Some((i, c @ ('s' | 'm' | 'h' | 'd'))) => (&s[..i], c),
                _ => (s.as_str(), 's'),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{s:?} is not a duration: {HOW}"));
            }
            let per = match unit {
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => 1,
            };
            let secs = digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(per))
                .ok_or_else(|| format!("{s:?} is not a duration: too long"))?;
            Duration::from_secs(secs)
        }
        other => return Err(format!("{} is not a duration: {HOW}", kind(other))),
    };
    if d.is_zero() {
        return Err(format!("{} must be more than zero", v));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ips() {
        assert_eq!(
            parse_ip(&json!("203.0.113.7")).unwrap().to_string(),
            "203.0.113.7/32"
        );
        assert_eq!(
            parse_ip(&json!("2001:db8::1")).unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(
            parse_ip(&json!("198.51.100.0/24")).unwrap().to_string(),
            "198.51.100.0/24"
        );
        assert_eq!(
            parse_ip(&json!("2001:db8::/32")).unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            parse_ip(&json!("0.0.0.0/0")).unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert_eq!(
            parse_ip(&json!("300.1.1.1")).unwrap_err(),
            "\"300.1.1.1\" is not an IP address or CIDR prefix"
        );
        assert_eq!(
            parse_ip(&json!("10.0.0.1/8")).unwrap_err(),
            "\"10.0.0.1/8\" has host bits set: the network is \"10.0.0.0/8\"; write that, or the address alone for one host"
        );
        assert!(parse_ip(&json!("2001:db8::1/32"))
            .unwrap_err()
            .contains("\"2001:db8::/32\""));
        assert!(parse_ip(&json!("10.0.0.0/33")).is_err());
        assert!(parse_ip(&json!("010.0.0.1")).is_err());
        assert!(parse_ip(&json!(" 10.0.0.1")).is_err());
        assert!(parse_ip(&json!(17))
            .unwrap_err()
            .starts_with("the number 17 is not"));
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port(&json!(0)), Ok((0, 0)));
        assert_eq!(parse_port(&json!(65535)), Ok((65535, 65535)));
        assert_eq!(parse_port(&json!("22")), Ok((22, 22)));
        assert_eq!(parse_port(&json!("6000-6100")), Ok((6000, 6100)));
        assert_eq!(parse_port(&json!("7-7")), Ok((7, 7)));
        assert_eq!(
            parse_port(&json!(70000)).unwrap_err(),
            "70000 is not a port (0-65535)"
        );
        assert_eq!(
            parse_port(&json!(-1)).unwrap_err(),
            "-1 is not a port (0-65535)"
        );
        assert!(parse_port(&json!(1.5)).is_err());
        assert_eq!(
            parse_port(&json!("6100-6000")).unwrap_err(),
            "\"6100-6000\": the range starts above its end"
        );
        assert!(parse_port(&json!("1-70000"))
            .unwrap_err()
            .contains("70000 is not a port"));
        for bad in [
            json!("ssh"),
            json!("1-"),
            json!("-5"),
            json!(""),
            json!("1 - 2"),
            json!(true),
        ] {
            assert!(parse_port(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn protocols() {
        assert_eq!(parse_protocol(&json!("TCP")), Ok(6));
        assert_eq!(parse_protocol(&json!("udp")), Ok(17));
        assert_eq!(parse_protocol(&json!("Icmp")), Ok(1));
        assert_eq!(parse_protocol(&json!("ICMPv6")), Ok(58));
        assert_eq!(parse_protocol(&json!("IPv6-ICMP")), Ok(58));
        assert_eq!(parse_protocol(&json!(47)), Ok(47));
        assert_eq!(parse_protocol(&json!("132")), Ok(132));
        assert_eq!(parse_protocol(&json!(0)), Ok(0));
        assert_eq!(parse_protocol(&json!(255)), Ok(255));
        assert!(parse_protocol(&json!(256)).is_err());
        assert_eq!(
            parse_protocol(&json!("SCTPX")).unwrap_err(),
            "\"SCTPX\" is not a protocol: expected TCP, UDP, ICMP, ICMPv6 or a protocol number 0-255"
        );
    }

    #[test]
    fn durations() {
        let secs = |v: Value| parse_duration(&v).map(|d| d.as_secs_f64());
        assert_eq!(secs(json!(30)), Ok(30.0));
        assert_eq!(secs(json!(0.5)), Ok(0.5));
        assert_eq!(secs(json!("45")), Ok(45.0));
        assert_eq!(secs(json!("10s")), Ok(10.0));
        assert_eq!(secs(json!("10m")), Ok(600.0));
        assert_eq!(secs(json!("2h")), Ok(7200.0));
        assert_eq!(secs(json!("7d")), Ok(604_800.0));
        assert_eq!(secs(json!(0)).unwrap_err(), "0 must be more than zero");
        assert_eq!(
            secs(json!("0m")).unwrap_err(),
            "\"0m\" must be more than zero"
        );
        assert!(secs(json!(-3)).unwrap_err().contains("negative"));
        assert!(secs(json!("10 min"))
            .unwrap_err()
            .starts_with("\"10 min\" is not a duration"));
        assert!(secs(json!("1.5h")).is_err());
        assert!(secs(json!("m")).is_err());
        assert!(secs(json!("99999999999999999999d"))
            .unwrap_err()
            .contains("too long"));
        assert!(secs(json!(true)).is_err());
    }

    #[test]
    fn domains() {
        assert_eq!(
            parse_domain(&json!("*.Ads.Example.")),
            Ok("ads.example".to_string())
        );
        assert_eq!(
            parse_domain(&json!("exa mple.com")).unwrap_err(),
            "\"exa mple.com\" is not a domain name: it has the character ' '; names use a-z, 0-9, '-' and '_' (write IDNs in punycode, xn--...)"
        );
        assert!(parse_domain(&json!(3)).is_err());
    }
}
