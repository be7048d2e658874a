//! Configuration: the JSON rules file, parsed (not just validated) into a
//! [`Config`] that cannot be invalid.
//!
//! Pipeline: text -> `serde_json::Value` (syntax errors with line/column) ->
//! [`raw::RawConfig`] (serde, `deny_unknown_fields`, read section by
//! section) -> [`Config`] via `compile`, which reports *every* semantic
//! error with its JSON path and line. A file with any error yields no
//! `Config` at all: never a partial rule set.
//!
//! **Invariant: no I/O.** Domain list files named by the rules file are read
//! through a [`ListLoader`] the caller supplies (the binary's resolves paths
//! against the rules file's directory); tests use a `HashMap`.
//!
//! The format is specified in `docs/rules.md`; [`schema`] is its JSON
//! Schema (`portcullis schema`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ipnet::IpNet;

use crate::rules::RuleSet;
use crate::types::Action;

mod compile;
mod error;
mod lists;
mod locate;
pub mod raw;

pub use error::{ConfigError, ConfigErrors};
pub use lists::FIRST_SKIPPED;
pub use locate::line_of;

/// The built-in policy for "protect this host": accept by default, drop
/// malformed packets, detect and ban port scanners, log DNS queries, block
/// nothing else. `policy/default.json` in the repository.
pub const DEFAULT_POLICY: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../policy/default.json"
));

/// Reads the domain list files a rules file names. The engine does no I/O:
/// the caller decides what a path means.
pub trait ListLoader {
    /// The whole text of the file at `path` (as written in the rules file),
    /// or why it could not be read.
    fn load(&self, path: &str) -> Result<String, String>;
}

/// A loader for rules files that name no list: any path is an error.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLists;

impl ListLoader for NoLists {
    fn load(&self, path: &str) -> Result<String, String> {
        Err(format!(
            "no list files can be read here (asked for {path:?})"
        ))
    }
}

/// In-memory lists, by path (tests, embedded lists).
impl ListLoader for HashMap<String, String> {
    fn load(&self, path: &str) -> Result<String, String> {
        self.get(path)
            .cloned()
            .ok_or_else(|| "no such file".to_string())
    }
}

/// In-memory lists, by path.
impl ListLoader for BTreeMap<String, String> {
    fn load(&self, path: &str) -> Result<String, String> {
        self.get(path)
            .cloned()
            .ok_or_else(|| "no such file".to_string())
    }
}

/// The JSON Schema of the rules file (`portcullis schema`), with the
/// descriptions of [`raw::RawConfig`]'s doc comments.
pub fn schema() -> serde_json::Value {
    schemars::schema_for!(raw::RawConfig).to_value()
}

/// A duration as the rules file writes it (`600`, `90s`, `10m`, `12h`,
/// `7d`), for command lines that take the same syntax. Zero is refused.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    compile::parse_duration(&serde_json::Value::String(text.to_owned()))
}

/// An address or CIDR prefix as `home_net` and `block.ip` write it
/// (`198.51.100.7`, `198.51.100.0/24`, `2001:db8::/32`; host bits set are
/// refused), for command lines that take the same syntax.
pub fn parse_net(text: &str) -> Result<IpNet, String> {
    compile::parse_ip(&serde_json::Value::String(text.to_owned()))
}

impl Config {
    /// Parses and compiles a rules file. Every error is reported, each with
    /// its path and line; any error means no `Config`.
    pub fn from_json_str(text: &str, loader: &dyn ListLoader) -> Result<Config, ConfigErrors> {
        compile::compile(text, loader)
    }

    /// The built-in [`DEFAULT_POLICY`], compiled.
    pub fn default_policy() -> Result<Config, ConfigErrors> {
        Self::from_json_str(DEFAULT_POLICY, &NoLists)
    }
}

impl Default for Config {
    /// No rules, every setting at its default (what `{}` compiles to).
    fn default() -> Self {
        Self {
            rules: RuleSet::empty(),
            policy: Policy::default(),
            scan: ScanConfig::default(),
            events: EventConfig::default(),
            dns: DnsConfig::default(),
            inline: InlineConfig::default(),
            home_net: Vec::new(),
            critical_peers: Vec::new(),
            crowdsec: None,
        }
    }
}

/// A whole, valid configuration.
#[derive(Debug)]
pub struct Config {
    pub rules: RuleSet,
    pub policy: Policy,
    pub scan: ScanConfig,
    pub events: EventConfig,
    pub dns: DnsConfig,
    pub inline: InlineConfig,
    /// Our own networks, used to tell direction in pcap replay and passive
    /// capture (Suricata's `HOME_NET`). Empty: every packet is inbound.
    pub home_net: Vec<IpNet>,
    /// Addresses a scan never gets banned (a scan is spoofed easily): the
    /// host's default gateways and DNS resolvers, with why. Not from the
    /// rules file: the daemon finds them (`--no-protect-peers`).
    pub critical_peers: Vec<(std::net::IpAddr, String)>,
    /// Fleet mode (`crowdsec`); `None`: off.
    pub crowdsec: Option<CrowdsecConfig>,
}

/// Verdicts when nothing else decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// When no rule matches. Default: accept.
    pub default: Action,
    /// For packets that cannot be decoded. Default: drop.
    pub malformed: Action,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            default: Action::Accept,
            malformed: Action::Drop,
        }
    }
}

/// What is done about a scanner (`scan.internal_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanAction {
    /// Report it (`scan` events with `action: alert`).
    Alert,
    /// Report and ban it.
    Ban,
}

impl ScanAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Ban => "ban",
        }
    }
}

/// Port-scan detection and banning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanConfig {
    pub enabled: bool,
    /// Sliding window for the port and host counts. Default 10 s.
    pub window: Duration,
    /// A source is a scanner when it probes *more than* this many distinct
    /// destination ports within `window`. Default 5.
    pub port_threshold: u32,
    /// Horizontal sweep: more than this many distinct destination addresses
    /// on one port within `window`. Default 10.
    pub host_threshold: u32,
    /// Optional long window for slow scans. Default: off.
    pub slow: Option<SlowScan>,
    /// Ban detected scanners. Default: true.
    pub ban: bool,
    /// What to do about scanners inside `home_net` or this host itself
    /// (when `ban` is true). Default: alert.
    pub internal_action: ScanAction,
    /// How long a ban lasts. Default 600 s.
    pub ban_duration: Duration,
    /// Cap on sources tracked at once; the least recently seen is evicted.
    /// Default 65 536.
    pub max_sources: usize,
    /// Cap on flows remembered (to tell replies and established flows from
    /// probes). Default 262 144.
    pub max_flows: usize,
    /// Bans in force at most; when full, the one ending soonest yields.
    /// Default 16 384.
    pub max_bans: usize,
    /// How long a remembered flow stays without packets. Default 120 s.
    pub flow_timeout: Duration,
}

impl Default for ScanConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(10),
            port_threshold: 5,
            host_threshold: 10,
            slow: None,
            ban: true,
            internal_action: ScanAction::Alert,
            ban_duration: Duration::from_secs(600),
            max_sources: 65_536,
            max_flows: 262_144,
            max_bans: 16_384,
            flow_timeout: Duration::from_secs(120),
        }
    }
}

/// The long window that catches slow scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowScan {
    pub window: Duration,
    pub port_threshold: u32,
}

/// What is written to the event log, and how floods are held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventConfig {
    /// Log allowed DNS queries as `dns` events. Default: true.
    pub dns_queries: bool,
    /// Drops from one source for one reason within this window become one
    /// event with a count. Default 60 s.
    pub drop_window: Duration,
    /// At most this many drop sources tracked for aggregation at once.
    /// Default 4096.
    pub max_drop_keys: usize,
    /// At most this many events per second are written (token bucket,
    /// burst of twice the rate); the rest are counted and reported in one
    /// summary event per second. Default 500.
    pub max_events_per_second: u32,
    /// Community ID seed (Corelight spec). Default 0.
    pub community_id_seed: u16,
}

impl Default for EventConfig {
    fn default() -> Self {
        Self {
            dns_queries: true,
            drop_window: Duration::from_secs(60),
            max_drop_keys: 4096,
            max_events_per_second: 500,
            community_id_seed: 0,
        }
    }
}

/// How blocked DNS queries are answered (inline mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlockedDnsResponse {
    /// Answer NXDOMAIN so the client fails fast. Default.
    #[default]
    Nxdomain,
    /// Drop silently.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DnsConfig {
    pub blocked_response: BlockedDnsResponse,
}

#[cfg(test)]
mod tests;

/// Inline mode (`portcullis run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineConfig {
    /// NFQUEUE number. Default 0.
    pub queue: u16,
    /// Queued packets are dropped while no daemon listens (config key
    /// `danger_fail_closed`). Default false: fail-open, a dead daemon never
    /// cuts the host off.
    pub fail_closed: bool,
    /// Blocked new connections shown to user space per second for logging;
    /// the rest are dropped and counted in the kernel. Default 100.
    pub block_log_rate: u32,
    /// Kernel queue length (packets awaiting a verdict). Default 8192.
    pub queue_length: u32,
    /// Protocol numbers whose every packet is queued. Default: none.
    pub queue_all: Vec<u8>,
    /// NFLOG group for packets user space only observes. Default 9.
    pub log_group: u16,
}

impl Default for InlineConfig {
    fn default() -> Self {
        Self {
            log_group: 9,
            queue: 0,
            fail_closed: false,
            block_log_rate: 100,
            queue_length: 8192,
            queue_all: Vec::new(),
        }
    }
}

/// Fleet mode on a CrowdSec Local API (`crowdsec`). Paths are as written
/// in the rules file (the binary resolves relative ones and reads them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrowdsecConfig {
    /// Base URL (`http://` or `https://`).
    pub lapi_url: String,
    /// The bouncer API key's file; `None` with a client certificate.
    pub api_key_file: Option<String>,
    /// The machine login for pushing: id and password file.
    pub machine: Option<(String, String)>,
    /// Push scan findings as alerts (implies `machine`).
    pub push: bool,
    /// Decision stream pull period. Default 10 s.
    pub pull_interval: Duration,
    /// Decision types enforced, among `ban`, `captcha`, `throttle`.
    pub decision_types: Vec<String>,
    pub ca_file: Option<String>,
    /// Client certificate and key files.
    pub client_cert: Option<(String, String)>,
    /// CrowdSec decisions held at most. Default 200 000.
    pub max_decisions: usize,
    /// Findings waiting for the LAPI at most. Default 10 000.
    pub max_queued_alerts: usize,
    pub danger_plain_http_remote: bool,
}

impl CrowdsecConfig {
    /// Default `pull_interval`.
    pub const PULL_INTERVAL: Duration = Duration::from_secs(10);
    /// Default `max_decisions`.
    pub const MAX_DECISIONS: usize = 200_000;
    /// Default `max_queued_alerts`.
    pub const MAX_QUEUED_ALERTS: usize = 10_000;
    /// Largest `max_decisions` accepted.
    pub const MAX_DECISIONS_LIMIT: usize = 5_000_000;
    /// The decision types CrowdSec defines.
    pub const TYPES: [&'static str; 3] = ["ban", "captcha", "throttle"];
}
