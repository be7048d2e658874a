//! Events: what portcullis tells a SIEM and a person.
//!
//! One [`Event`] serializes to one JSON object (one line of the JSON Lines
//! event log, specified field by field in `docs/events.md`) and displays as
//! one readable console line. Field names follow Suricata's EVE where one
//! exists.
//!
//! **Events are types.** An event is a timestamp and a [`Body`], one
//! variant per `event_type` (serde writes the tag), each with its own
//! struct ([`DropEvent`], [`ScanEvent`], ...); what can only take a few
//! values is an enum ([`DropAction`], [`ScanPhase`], [`NotBanned`],
//! [`UnbanReason`], [`QueueFate`], ...), so no event can carry a field of
//! another type or a misspelt value. The golden test
//! (`crates/portcullis/tests/golden.rs`) holds the JSON and console lines
//! of every event type a replay writes.
//!
//! **Invariant: a flood cannot fill the disk.** Drops are aggregated per
//! (reason, rule, source, and for `blocked_domain` the name) over
//! `drop_window` ([`DropAggregator`], at most `max_drop_keys` windows), and `drop` and
//! `dns` events pass a token bucket on packet time ([`TokenBucket`]); what
//! the bucket refuses is counted and reported in one `suppressed` event per
//! second. `scan`, `ban` and `unban` events are bounded by the detector and
//! the ban table and are never suppressed.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde::ser::{Serialize, Serializer};

use crate::config::ScanAction;
use crate::detector::{ScanKind, ScanPattern};
use crate::types::{Direction, Reason, RuleRef, Timestamp};

pub use portcullis_wire::{parse_rfc3339, rfc3339, rfc3339_short};

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `event_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Drop,
    Dns,
    Scan,
    Ban,
    Unban,
    Suppressed,
    Queue,
    Reload,
    /// A passive capture lost packets (monitor mode).
    Capture,
    /// A packet source failed, or came back (`packet_source`).
    #[serde(rename = "packet_source")]
    PacketSource,
    /// Our kernel rules were removed by something else and put back.
    Rules,
    /// Fleet mode (CrowdSec).
    Fleet,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Dns => "dns",
            Self::Scan => "scan",
            Self::Ban => "ban",
            Self::Unban => "unban",
            Self::Suppressed => "suppressed",
            Self::Queue => "queue",
            Self::Reload => "reload",
            Self::Capture => "capture",
            Self::PacketSource => "packet_source",
            Self::Rules => "rules",
            Self::Fleet => "fleet",
        }
    }
}

/// The flow a `drop` or `dns` event is about (`scan`, `ban` and `unban`
/// events carry only the address: [`Source`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Flow {
    pub src_ip: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dest_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dest_port: Option<u16>,
    /// `TCP`, `UDP`, `ICMP`, `IPv6-ICMP` or the protocol number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub community_id: Option<String>,
    /// ICMP type and code, as EVE names them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
}

/// `drop.action`: what happened to the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropAction {
    /// Dropped (inline).
    Blocked,
    /// Not enforced (passive monitor, dry run): it would have been.
    WouldBlock,
}

/// `drop.error`: why a `malformed` packet could not be decoded (the wire
/// decoder's error, by its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeErrorName(pub portcullis_wire::DecodeError);

impl Serialize for DecodeErrorName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl fmt::Display for DecodeErrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// `drop` object of a drop event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DropInfo {
    pub reason: Reason,
    /// The rule, list entry or ban that decided, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub action: DropAction,
    /// Packets this event stands for (1 for the first of a window).
    pub count: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// For `malformed`: what was wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<DecodeErrorName>,
    /// Summaries only: up to [`MAX_DEST_PORTS`] distinct destination ports
    /// of the drops counted, sorted. Empty (left out) when none had one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dest_ports: Vec<u16>,
}

/// How many distinct destination ports a drop summary lists.
pub const MAX_DEST_PORTS: usize = 16;

/// `dns.type`: the record is a query (EVE also has `answer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsRecord {
    Query,
}

/// `dns.transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
}

/// `dns` object (EVE `dns` query record).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DnsInfo {
    #[serde(rename = "type")]
    pub kind: DnsRecord,
    pub id: u16,
    pub rrname: String,
    pub rrtype: String,
    pub transport: Transport,
}

/// `scan.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanPhase {
    /// The threshold was crossed (this event triggers the ban).
    Start,
    /// The episode ended: the whole scan.
    End,
}

/// `scan.note`: why a scanner was not banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum NotBanned {
    #[serde(rename = "allowlisted")]
    Allowlisted,
    #[serde(rename = "ban disabled")]
    BanDisabled,
    /// Inside `home_net` with `scan.internal_action` `alert`.
    #[serde(rename = "internal")]
    Internal,
    /// A default gateway or DNS resolver of this host: a spoofed scan must
    /// not cut us off.
    #[serde(rename = "critical peer")]
    CriticalPeer,
}

impl NotBanned {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowlisted => "allowlisted",
            Self::BanDisabled => "ban disabled",
            Self::Internal => "internal",
            Self::CriticalPeer => "critical peer",
        }
    }
}

impl Serialize for ScanKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for ScanPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Serialize for ScanAction {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `scan` object: at the threshold (`phase: start`, it triggers the ban)
/// and when the episode ends (`phase: end`, the whole scan).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScanInfo {
    pub phase: ScanPhase,
    pub kind: ScanKind,
    pub pattern: ScanPattern,
    pub slow: bool,
    pub ports: u32,
    pub hosts: u32,
    /// `end` only, when `hosts` is an estimate (more than 256 hosts).
    #[serde(skip_serializing_if = "is_false")]
    pub hosts_estimated: bool,
    pub port_sample: Vec<u16>,
    /// Horizontal scans: the port swept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swept_port: Option<u16>,
    /// Kind `other`: the TCP flags of its probes, two hex digits as EVE
    /// writes `tcp_flags`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<TcpFlagsHex>,
    pub probes: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// `end` only: seconds from the first to the last probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<Seconds>,
    /// The scanner is inside `home_net` or is this host.
    pub internal: bool,
    /// `ban` or `alert` (not banned: see `note`).
    pub action: ScanAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<NotBanned>,
}

/// A TCP flags byte, written as two hex digits (`"03"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFlagsHex(pub u8);

impl Serialize for TcpFlagsHex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for TcpFlagsHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", self.0)
    }
}

/// A span of time, written as a JSON number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0.as_secs_f64())
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `ban` object of ban events.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BanInfo {
    /// Why: `scan:<kind>`, or what `portcullis ban --reason` said
    /// (default `manual`).
    pub reason: String,
    /// Ban length in seconds.
    pub duration: u64,
    pub expires: Timestamp,
    /// False when nothing enforces the ban (passive monitor without
    /// `--enforce-bans`, dry run) or the kernel refused it (`error`):
    /// written only then, as `"enforced": false`.
    #[serde(skip_serializing_if = "is_true")]
    pub enforced: bool,
    /// Why the kernel did not take the ban (it is retried until it does or
    /// the ban ends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// On the second `ban` event of an address whose ban the kernel first
    /// refused: how many tries it took (written only then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// `ban.reason` of an unban event: why the ban ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnbanReason {
    /// Its time was over.
    Expired,
    /// `portcullis unban`.
    Manual,
    /// A reload put the address on the allowlist.
    Allowlisted,
    /// The ban table was full (`scan.max_bans`): the ban ending soonest
    /// made room for a new one.
    Evicted,
}

impl UnbanReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Manual => "manual",
            Self::Allowlisted => "allowlisted",
            Self::Evicted => "evicted",
        }
    }
}

/// `ban` object of unban events.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnbanInfo {
    pub reason: UnbanReason,
    /// Length of the ban that ended, in seconds.
    pub duration: u64,
    /// When it ended (or was to end).
    pub expires: Timestamp,
    /// As for bans: written only as `false`.
    #[serde(skip_serializing_if = "is_true")]
    pub enforced: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

/// `suppressed` object: what the rate limit held back since the last one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SuppressedInfo {
    pub drop: u64,
    pub dns: u64,
    /// `scan`, `ban` and `unban` events a live daemon held back (its own
    /// limit; written only when not zero).
    #[serde(skip_serializing_if = "is_zero")]
    pub scan: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub ban: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub unban: u64,
    pub since: Timestamp,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `queue.fate`: what became of packets the queue could not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueFate {
    /// Fail-open: they passed uninspected.
    Passed,
    /// Fail-closed: they were dropped.
    Dropped,
}

impl QueueFate {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Dropped => "dropped",
        }
    }
}

/// `queue` object: packets the kernel could not hand to portcullis since
/// the last `queue` event (from `/proc/net/netfilter/nfnetlink_queue` and
/// the socket).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueInfo {
    pub number: u16,
    /// The kernel queue was full (`queue_dropped`).
    pub queue_dropped: u64,
    /// The socket buffer was full (`user_dropped`).
    pub user_dropped: u64,
    /// Receive overruns seen on the socket (ENOBUFS).
    pub overruns: u64,
    /// Sent toward the queue but neither received nor counted as dropped:
    /// let past a full queue by fail-open, uninspected (iptables path).
    pub uninspected: u64,
    pub fate: QueueFate,
}

/// `capture` object: packets a passive capture lost since the last
/// `capture` event of that interface. They were not inspected; the host
/// handled them as usual (nothing is inline in monitor mode).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CaptureInfo {
    pub interface: String,
    /// The capture ring was full (libpcap `ps_drop`): we fell behind.
    pub dropped: u64,
    /// The interface or its driver dropped them (`ps_ifdrop`).
    pub if_dropped: u64,
}

/// `packet_source.kind`: which kind of packet source.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A libpcap capture on one interface (monitor mode).
    Capture,
    /// The NFQUEUE of held packets (inline).
    Queue,
    /// The NFLOG group of observed packets (inline).
    Log,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Capture => "capture",
            Self::Queue => "queue",
            Self::Log => "log",
        }
    }
}

/// `packet_source.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceState {
    /// It failed and is closed; portcullis reopens it after `retry_in_ms`.
    Down,
    /// It was reopened and is read again.
    Up,
    /// It failed in a way no reopening can mend: the daemon stops (with
    /// its teardown).
    Fatal,
}

impl SourceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::Up => "up",
            Self::Fatal => "fatal",
        }
    }
}

/// `packet_source` object: a packet source (a capture interface, the
/// NFQUEUE, the NFLOG group) failed and was closed, or was reopened.
/// While one is down, the kernel rules and bans stay in force; what it
/// would have delivered is not inspected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SourceInfo {
    pub kind: SourceKind,
    /// The interface, queue number or log group.
    pub name: String,
    pub state: SourceState,
    /// Why it failed (`down`, `fatal`; also when a retry failed differently).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Failures of this source since the daemon started (retries included).
    pub failures: u64,
    /// Times it was reopened since the daemon started.
    pub reopens: u64,
    /// `down`: when the next attempt to reopen is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// `up`: how long it was down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down_ms: Option<u64>,
}

/// `reload` object: the outcome of re-reading the configuration (SIGHUP).
/// `status` is `ok`, or `error` with the error (the old rules stay in
/// force).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadInfo {
    pub error: Option<String>,
}

impl Serialize for ReloadInfo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("ReloadInfo", 2)?;
        match &self.error {
            None => st.serialize_field("status", "ok")?,
            Some(e) => {
                st.serialize_field("status", "error")?;
                st.serialize_field("error", e)?;
            }
        }
        st.end()
    }
}

/// `rules.action`: what became of our kernel rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RulesAction {
    /// Something removed them; they are back, with the bans.
    Restored,
    /// Something removed them and putting them back failed (tried again
    /// every second; reported once until it works).
    RestoreFailed,
}

impl RulesAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restored => "restored",
            Self::RestoreFailed => "restore_failed",
        }
    }
}

/// `rules` object: our kernel objects were found missing (`nft flush
/// ruleset`, `iptables -F` of our chain, a firewall manager's reload).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RulesInfo {
    pub action: RulesAction,
    /// What was missing: `table`, `chain:input`, `rules:input`,
    /// `iptables_chain:ipv4`, `iptables_rule:ipv4`,
    /// `iptables_jump:ipv4:INPUT`, ... (docs/events.md).
    pub missing: Vec<String>,
    /// Bans put back with their remaining time (`restored` only).
    pub bans_restored: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a scan, ban or unban event comes from: the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Source {
    pub src_ip: IpAddr,
}

/// A `drop` event: the flow as far as it decoded (none for a malformed
/// packet whose IP header did not), what dropped it, and for
/// `blocked_domain` the query.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DropEvent {
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub flow: Option<Flow>,
    pub drop: DropInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsInfo>,
}

/// A `dns` event: an allowed query.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DnsEvent {
    #[serde(flatten)]
    pub flow: Flow,
    pub dns: DnsInfo,
}

/// A `scan` event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScanEvent {
    #[serde(flatten)]
    pub source: Source,
    pub scan: ScanInfo,
}

/// A `ban` event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BanEvent {
    #[serde(flatten)]
    pub source: Source,
    pub ban: BanInfo,
}

/// An `unban` event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnbanEvent {
    #[serde(flatten)]
    pub source: Source,
    pub ban: UnbanInfo,
}

/// A `suppressed` event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SuppressedEvent {
    pub suppressed: SuppressedInfo,
}

/// A `queue` event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueEvent {
    pub queue: QueueInfo,
}

/// A `reload` event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadEvent {
    pub reload: ReloadInfo,
}

/// A `capture` event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CaptureEvent {
    pub capture: CaptureInfo,
}

/// A `packet_source` event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PacketSourceEvent {
    pub packet_source: SourceInfo,
}

/// A `rules` event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RulesEvent {
    pub rules: RulesInfo,
}

/// A `fleet` event: fleet mode's link with the CrowdSec Local API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetEvent {
    pub fleet: FleetInfo,
}

/// `fleet.action`: what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetAction {
    /// A startup pull loaded the decisions whole (`count`: values held).
    Loaded,
    /// Pulls fail (first failure of a run; `message` says why). The
    /// decisions in force stay until their own timeouts.
    PullFailed,
    /// Pulls work again after failures (`count`: failed pulls).
    Recovered,
    /// An answer, or items in it, refused as malformed (`count`: items;
    /// the whole answer when 0). Nothing in force was lifted.
    Rejected,
    /// Decisions dropped or refused beyond `crowdsec.max_decisions`
    /// (`count`).
    Evicted,
    /// The kernel refused a change to the CrowdSec sets; reloaded whole
    /// at the next pull.
    KernelFailed,
    /// Pushing findings fails (first failure of a run); they wait on disk.
    PushFailed,
    /// Findings pushed after push failures (`count`).
    PushRecovered,
    /// A finding dropped: the LAPI refused it, or the queue was full
    /// (`count`).
    AlertDropped,
}

impl fmt::Display for FleetAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loaded => "loaded",
            Self::PullFailed => "pull_failed",
            Self::Recovered => "recovered",
            Self::Rejected => "rejected",
            Self::Evicted => "evicted",
            Self::KernelFailed => "kernel_failed",
            Self::PushFailed => "push_failed",
            Self::PushRecovered => "push_recovered",
            Self::AlertDropped => "alert_dropped",
        })
    }
}

/// The body of a `fleet` event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FleetInfo {
    pub action: FleetAction,
    /// Always `crowdsec`.
    pub origin: &'static str,
    pub count: u64,
    /// For people: what and why.
    pub message: String,
}

/// What an event says, one type per `event_type` (serde writes the tag).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event_type", rename_all = "lowercase")]
pub enum Body {
    Drop(DropEvent),
    Dns(DnsEvent),
    Scan(ScanEvent),
    Ban(BanEvent),
    Unban(UnbanEvent),
    Suppressed(SuppressedEvent),
    Queue(QueueEvent),
    Reload(ReloadEvent),
    /// A passive capture lost packets (monitor mode).
    Capture(CaptureEvent),
    /// A packet source failed or came back.
    #[serde(rename = "packet_source")]
    PacketSource(PacketSourceEvent),
    /// Our kernel rules were removed by something else.
    Rules(RulesEvent),
    /// Fleet mode (CrowdSec).
    Fleet(FleetEvent),
}

/// One event: when, and what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    pub timestamp: Timestamp,
    #[serde(flatten)]
    pub body: Body,
}

impl Event {
    pub fn new(timestamp: Timestamp, body: Body) -> Self {
        Self { timestamp, body }
    }

    pub fn event_type(&self) -> EventType {
        match &self.body {
            Body::Drop(_) => EventType::Drop,
            Body::Dns(_) => EventType::Dns,
            Body::Scan(_) => EventType::Scan,
            Body::Ban(_) => EventType::Ban,
            Body::Unban(_) => EventType::Unban,
            Body::Suppressed(_) => EventType::Suppressed,
            Body::Queue(_) => EventType::Queue,
            Body::Reload(_) => EventType::Reload,
            Body::Capture(_) => EventType::Capture,
            Body::PacketSource(_) => EventType::PacketSource,
            Body::Rules(_) => EventType::Rules,
            Body::Fleet(_) => EventType::Fleet,
        }
    }

    /// The flow of a `drop` (when it decoded) or `dns` event.
    pub fn flow(&self) -> Option<&Flow> {
        match &self.body {
            Body::Drop(e) => e.flow.as_ref(),
            Body::Dns(e) => Some(&e.flow),
            _ => None,
        }
    }

    /// The address an event is about: the flow's source, or the scanner or
    /// banned address.
    pub fn src_ip(&self) -> Option<IpAddr> {
        match &self.body {
            Body::Scan(ScanEvent { source, .. })
            | Body::Ban(BanEvent { source, .. })
            | Body::Unban(UnbanEvent { source, .. }) => Some(source.src_ip),
            _ => self.flow().map(|f| f.src_ip),
        }
    }

    /// The `drop` object of a drop event.
    pub fn drop_info(&self) -> Option<&DropInfo> {
        match &self.body {
            Body::Drop(e) => Some(&e.drop),
            _ => None,
        }
    }

    /// The `dns` object of a dns event or a `blocked_domain` drop.
    pub fn dns_info(&self) -> Option<&DnsInfo> {
        match &self.body {
            Body::Drop(e) => e.dns.as_ref(),
            Body::Dns(e) => Some(&e.dns),
            _ => None,
        }
    }

    /// The JSON Lines record (no trailing newline).
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string
        // keys, no custom errors.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// DNS query type mnemonic for the common types, `TYPEnn` (RFC 3597) else.
pub fn rrtype_name(t: u16) -> String {
    let s = match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        43 => "DS",
        48 => "DNSKEY",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        t => return format!("TYPE{t}"),
    };
    s.to_owned()
}

struct Endpoint<'a>(&'a IpAddr, Option<u16>);

impl fmt::Display for Endpoint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}"),
            (a, Some(p)) => write!(f, "{a}:{p}"),
            (a, None) => write!(f, "{a}"),
        }
    }
}

/// The flow of an event on the console: `src:port (PROTO) -> dst:port`.
struct Path<'a>(&'a Flow);

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fl = self.0;
        write!(f, "{}", Endpoint(&fl.src_ip, fl.src_port))?;
        if let Some(p) = &fl.proto {
            write!(f, " ({p})")?;
        }
        if let Some(d) = &fl.dest_ip {
            write!(f, " -> {}", Endpoint(d, fl.dest_port))?;
        }
        if let (Some(t), Some(c)) = (fl.icmp_type, fl.icmp_code) {
            write!(f, " icmp {t}/{c}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Event {
    /// The console line: time, a bracketed tag, then the facts.
    /// `[BLOCKED] 192.168.1.100:40000 (TCP) -> 198.18.0.1:80 blocked_ip (block.ip[0] 192.168.1.100)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", rfc3339(self.timestamp))?;
        match &self.body {
            Body::Drop(e) => {
                let d = &e.drop;
                f.write_str(match d.action {
                    DropAction::WouldBlock => "[WOULD BLOCK] ",
                    DropAction::Blocked => "[BLOCKED] ",
                })?;
                if let Some(fl) = &e.flow {
                    write!(f, "{}", Path(fl))?;
                }
                write!(f, " {}", d.reason)?;
                if let Some(r) = &d.rule {
                    write!(f, " ({r})")?;
                }
                if let Some(err) = d.error {
                    write!(f, " error={err}")?;
                }
                if d.count > 1 {
                    write!(f, " x{} since {}", d.count, rfc3339(d.first_seen))?;
                }
                if !d.dest_ports.is_empty() {
                    write!(f, " ports {:?}", d.dest_ports)?;
                }
                if let Some(q) = &e.dns {
                    write!(f, " {} {}", q.rrtype, q.rrname)?;
                }
                Ok(())
            }
            Body::Dns(e) => write!(
                f,
                "[DNS] {} {} {}",
                Path(&e.flow),
                e.dns.rrtype,
                e.dns.rrname
            ),
            Body::Scan(e) => {
                let s = &e.scan;
                let span = s.last_seen.since(s.first_seen).as_secs_f64();
                write!(
                    f,
                    "[SCAN] {} {}{}{}{} scan ({}): {} ports, {}{} hosts, {} probes in {:.1}s, ports {:?}",
                    e.source.src_ip,
                    if s.phase == ScanPhase::End { "ended: " } else { "" },
                    if s.internal { "internal " } else { "" },
                    if s.slow { "slow " } else { "" },
                    s.kind,
                    s.pattern,
                    s.ports,
                    if s.hosts_estimated { "~" } else { "" },
                    s.hosts,
                    s.probes,
                    span,
                    s.port_sample
                )?;
                if let Some(p) = s.swept_port {
                    write!(f, ", swept port {p}")?;
                }
                if let Some(t) = s.tcp_flags {
                    write!(f, ", tcp flags {t}")?;
                }
                match (s.phase, s.note) {
                    // The summary of a scan already acted on.
                    (ScanPhase::End, _) => Ok(()),
                    (ScanPhase::Start, Some(n)) => {
                        write!(f, " -> {} ({})", s.action.as_str(), n.as_str())
                    }
                    (ScanPhase::Start, None) => write!(f, " -> {}", s.action.as_str()),
                }
            }
            Body::Ban(e) => {
                let b = &e.ban;
                write!(
                    f,
                    "[BAN] {} for {}s ({}) until {}",
                    e.source.src_ip,
                    b.duration,
                    b.reason,
                    rfc3339(b.expires)
                )?;
                match (&b.error, b.attempts) {
                    (Some(err), _) => write!(f, " (not enforced: {err}; retrying)")?,
                    (None, _) if !b.enforced => f.write_str(" (not enforced)")?,
                    (None, Some(n)) => write!(f, " (in the kernel after {n} attempts)")?,
                    (None, None) => {}
                }
                Ok(())
            }
            Body::Unban(e) => write!(f, "[UNBAN] {} ({})", e.source.src_ip, e.ban.reason.as_str()),
            Body::Reload(e) => match &e.reload.error {
                None => f.write_str("[RELOAD] configuration reloaded"),
                Some(err) => write!(f, "[RELOAD] failed, the old rules stay in force: {err}"),
            },
            Body::Queue(e) => {
                let q = &e.queue;
                write!(
                    f,
                    "[QUEUE] queue {}: {} packets not inspected (kernel queue full {}, passed full queue {}, socket full {}, overruns {}), {}",
                    q.number,
                    q.queue_dropped + q.user_dropped + q.uninspected,
                    q.queue_dropped,
                    q.uninspected,
                    q.user_dropped,
                    q.overruns,
                    q.fate.as_str()
                )
            }
            Body::Fleet(e) => write!(
                f,
                "[FLEET] {} {}: {}",
                e.fleet.origin, e.fleet.action, e.fleet.message
            ),
            Body::Capture(e) => {
                let c = &e.capture;
                write!(
                    f,
                    "[CAPTURE] {}: {} packets not inspected (capture buffer full {}, interface {})",
                    c.interface,
                    c.dropped + c.if_dropped,
                    c.dropped,
                    c.if_dropped
                )
            }
            Body::PacketSource(e) => {
                let p = &e.packet_source;
                write!(f, "[SOURCE] {} {} ", p.kind.as_str(), p.name)?;
                match p.state {
                    SourceState::Down => write!(
                        f,
                        "down: {}; reopening in {:.1}s (failures {})",
                        p.error.as_deref().unwrap_or("failed"),
                        p.retry_in_ms.unwrap_or(0) as f64 / 1000.0,
                        p.failures
                    ),
                    SourceState::Up => write!(
                        f,
                        "back up after {:.1}s (reopens {})",
                        p.down_ms.unwrap_or(0) as f64 / 1000.0,
                        p.reopens
                    ),
                    SourceState::Fatal => write!(
                        f,
                        "failed for good, stopping: {}",
                        p.error.as_deref().unwrap_or("failed")
                    ),
                }
            }
            Body::Rules(e) => {
                let r = &e.rules;
                match r.action {
                    RulesAction::Restored => write!(
                        f,
                        "[RULES] something removed our kernel rules ({}); put back with {} bans",
                        r.missing.join(", "),
                        r.bans_restored
                    ),
                    RulesAction::RestoreFailed => write!(
                        f,
                        "[RULES] something removed our kernel rules ({}); putting them back failed: {}",
                        r.missing.join(", "),
                        r.error.as_deref().unwrap_or("unknown error")
                    ),
                }
            }
            Body::Suppressed(e) => {
                let s = &e.suppressed;
                if s.scan + s.ban + s.unban > 0 {
                    write!(
                        f,
                        "[SUPPRESSED] rate limit held back {} scan, {} ban and {} unban events since {} (every ban still reached the kernel)",
                        s.scan,
                        s.ban,
                        s.unban,
                        rfc3339(s.since)
                    )
                } else {
                    write!(
                        f,
                        "[SUPPRESSED] rate limit held back {} drop and {} dns events since {}",
                        s.drop,
                        s.dns,
                        rfc3339(s.since)
                    )
                }
            }
        }
    }
}

/// A token bucket on packet time: `rate` tokens per second, holding at most
/// `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens in millionths, so refills at microsecond resolution add up.
    micro_tokens: u64,
    last: Timestamp,
}

impl TokenBucket {
    pub fn new(rate_per_sec: u32) -> Self {
        let rate = u64::from(rate_per_sec.max(1));
        let burst = rate * 2;
        Self {
            rate,
            burst,
            micro_tokens: burst * 1_000_000,
            last: Timestamp::default(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Timestamp) -> bool {
        if now > self.last {
            let add = now.since(self.last).as_micros() as u64;
            self.micro_tokens = self
                .micro_tokens
                .saturating_add(add.saturating_mul(self.rate))
                .min(self.burst * 1_000_000);
            self.last = now;
        }
        if self.micro_tokens >= 1_000_000 {
            self.micro_tokens -= 1_000_000;
            true
        } else {
            false
        }
    }
}

/// What identifies drops that aggregate into one event: `Copy`, no heap, one
/// hash probe per dropped packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub reason: Reason,
    /// The rule or list entry that decided (`None` for bans and
    /// `malformed`).
    pub rule: Option<RuleRef>,
    /// The remote address; for `malformed`, the source when the IP header
    /// decoded.
    pub src: Option<IpAddr>,
    /// What else tells drops of one rule and source apart: for
    /// `blocked_domain` a hash of the queried name ([`name_hash`]), for
    /// `malformed` the decode error; 0 otherwise.
    pub detail: u64,
}

/// A 64-bit hash of a (lower-cased) DNS name for [`DropKey::detail`]:
/// computed over the name's bytes, no allocation.
pub fn name_hash(name: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    h.write(name);
    // Never 0, which means "no detail".
    h.finish() | 1
}

/// Distinct destination ports of a window, at most [`MAX_DEST_PORTS`], in
/// a fixed array: sampling costs a short scan per drop, no allocation.
#[derive(Debug, Clone, Copy, Default)]
struct PortSample {
    ports: [u16; MAX_DEST_PORTS],
    len: u8,
}

impl PortSample {
    fn add(&mut self, port: u16) {
        let n = usize::from(self.len);
        if n < MAX_DEST_PORTS && !self.ports[..n].contains(&port) {
            self.ports[n] = port;
            self.len += 1;
        }
    }

    fn sorted(&self) -> Vec<u16> {
        let mut v = self.ports[..usize::from(self.len)].to_vec();
        v.sort_unstable();
        v
    }
}

#[derive(Debug)]
struct Pending {
    window_start: Timestamp,
    last_seen: Timestamp,
    /// Drops since the last event for this key.
    unreported: u64,
    /// Their destination ports.
    ports: PortSample,
    /// The first event of the window, reused as the template of the
    /// summary.
    template: Event,
}

/// Aggregates drops per [`DropKey`] (reason, rule, source, name or error):
/// the first drop of a window is reported at once, the rest of the window
/// as one event with a count and a sample of destination ports when the
/// window closes. At most `max_keys` keys are held; past that, drops are
/// reported one by one (and then held back by the token bucket).
#[derive(Debug)]
pub struct DropAggregator {
    window: Duration,
    max_keys: usize,
    pending: FxHashMap<DropKey, Pending>,
}

/// What [`DropAggregator::count`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Aggregated {
    /// Counted into an open window; nothing to write now.
    Counted,
    /// No open window: report this drop (if the rate limit admits it) and
    /// [`DropAggregator::open`] one with the event as its template.
    Open,
}

impl DropAggregator {
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys,
            pending: FxHashMap::default(),
        }
    }

    /// Counts one drop (to `dest_port`, if it has one) into its open window
    /// if it has one. A window for this key that has already ended is closed
    /// first: its summary goes to `out`.
    pub fn count(
        &mut self,
        key: DropKey,
        ts: Timestamp,
        dest_port: Option<u16>,
        out: &mut Vec<Event>,
    ) -> Aggregated {
        let Some(p) = self.pending.get_mut(&key) else {
            return Aggregated::Open;
        };
        if ts.since(p.window_start) < self.window {
            p.unreported += 1;
            p.last_seen = ts;
            if let Some(port) = dest_port {
                p.ports.add(port);
            }
            return Aggregated::Counted;
        }
        if let Some(p) = self.pending.remove(&key) {
            if p.unreported > 0 {
                out.push(summary(&p, ts));
            }
        }
        Aggregated::Open
    }

    /// Opens a window for `key` at `ts` with `first` (the event just
    /// reported) as the template of its summary. When `max_keys` windows are
    /// open, nothing is opened: later drops of this key are reported one by
    /// one, and the rate limit holds them back.
    pub fn open(&mut self, key: DropKey, ts: Timestamp, first: &Event) {
        if self.pending.len() < self.max_keys {
            self.pending.insert(
                key,
                Pending {
                    window_start: ts,
                    last_seen: ts,
                    unreported: 0,
                    ports: PortSample::default(),
                    template: first.clone(),
                },
            );
        }
    }

    /// Closes windows that ended before `now`: one summary event for each
    /// that counted drops; keys without new drops are forgotten.
    pub fn flush_due(&mut self, now: Timestamp, out: &mut Vec<Event>) {
        let window = self.window;
        self.pending.retain(|_, p| {
            if now.since(p.window_start) < window {
                return true;
            }
            if p.unreported > 0 {
                out.push(summary(p, now));
            }
            false
        });
    }

    /// Closes every window (end of a replay, shutdown).
    pub fn flush_all(&mut self, now: Timestamp, out: &mut Vec<Event>) {
        let mut keys: Vec<_> = self.pending.drain().map(|(_, p)| p).collect();
        keys.sort_by_key(|p| p.window_start);
        for p in keys.iter().filter(|p| p.unreported > 0) {
            out.push(summary(p, now));
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

fn summary(p: &Pending, now: Timestamp) -> Event {
    let mut ev = p.template.clone();
    ev.timestamp = now.max(p.last_seen);
    if let Body::Drop(DropEvent { drop: d, .. }) = &mut ev.body {
        d.count = p.unreported;
        d.first_seen = p.window_start;
        d.last_seen = p.last_seen;
        d.dest_ports = p.ports.sorted();
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop_event(ts: Timestamp) -> Event {
        let flow = Some(Flow {
            src_ip: "198.18.0.9".parse().unwrap(),
            src_port: Some(40000),
            dest_ip: Some("198.18.0.1".parse().unwrap()),
            dest_port: Some(80),
            proto: Some("TCP".into()),
            direction: Some(Direction::Inbound),
            community_id: None,
            icmp_type: None,
            icmp_code: None,
        });
        let drop = DropInfo {
            reason: Reason::BlockedIp,
            rule: Some("block.ip[0] 198.18.0.9".into()),
            action: DropAction::Blocked,
            count: 1,
            first_seen: ts,
            last_seen: ts,
            error: None,
            dest_ports: Vec::new(),
        };
        Event::new(
            ts,
            Body::Drop(DropEvent {
                flow,
                drop,
                dns: None,
            }),
        )
    }

    #[test]
    fn timestamp_format() {
        assert_eq!(
            rfc3339(Timestamp::from_micros(1_700_000_000_123_456)),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(
            rfc3339(Timestamp::from_micros(0)),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn drop_event_json_and_console() {
        let e = drop_event(Timestamp::from_secs(1_700_000_000));
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["event_type"], "drop");
        assert_eq!(v["src_ip"], "198.18.0.9");
        assert_eq!(v["dest_port"], 80);
        assert_eq!(v["proto"], "TCP");
        assert_eq!(v["drop"]["reason"], "blocked_ip");
        assert_eq!(v["drop"]["count"], 1);
        assert!(v.get("dns").is_none());
        assert_eq!(
            e.to_string(),
            "2023-11-14T22:13:20.000000Z [BLOCKED] 198.18.0.9:40000 (TCP) -> 198.18.0.1:80 \
             blocked_ip (block.ip[0] 198.18.0.9)"
        );
    }

    #[test]
    fn capture_losses_and_unenforced_bans_say_so() {
        let ts = Timestamp::from_micros(1_700_000_000_000_000);
        let e = Event::new(
            ts,
            Body::Capture(CaptureEvent {
                capture: CaptureInfo {
                    interface: "eth0".into(),
                    dropped: 7,
                    if_dropped: 2,
                },
            }),
        );
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event_type"], "capture");
        assert_eq!(v["capture"]["dropped"], 7);
        assert!(
            e.to_string()
                .contains("[CAPTURE] eth0: 9 packets not inspected"),
            "{e}"
        );

        let addr: std::net::IpAddr = "198.18.0.9".parse().unwrap();
        let mut b = Event::new(
            ts,
            Body::Ban(BanEvent {
                source: Source { src_ip: addr },
                ban: BanInfo {
                    reason: "scan:syn".into(),
                    duration: 600,
                    expires: ts,
                    enforced: true,
                    error: None,
                    attempts: None,
                },
            }),
        );
        let v: serde_json::Value = serde_json::to_value(&b).unwrap();
        assert!(v["ban"].get("enforced").is_none(), "{v}");
        assert!(!b.to_string().contains("not enforced"));
        if let Body::Ban(e) = &mut b.body {
            e.ban.enforced = false;
        }
        let v: serde_json::Value = serde_json::to_value(&b).unwrap();
        assert_eq!(v["ban"]["enforced"], false);
        assert!(b.to_string().ends_with("(not enforced)"), "{b}");
        assert!(v["ban"].get("error").is_none() && v["ban"].get("attempts").is_none());
        // The kernel refused it: the error; later taken: the attempts.
        if let Body::Ban(e) = &mut b.body {
            e.ban.error = Some("nft: Could not process rule".into());
        }
        let v: serde_json::Value = serde_json::to_value(&b).unwrap();
        assert_eq!(v["ban"]["error"], "nft: Could not process rule");
        assert!(
            b.to_string()
                .ends_with("(not enforced: nft: Could not process rule; retrying)"),
            "{b}"
        );
        if let Body::Ban(e) = &mut b.body {
            e.ban.enforced = true;
            e.ban.error = None;
            e.ban.attempts = Some(3);
        }
        let v: serde_json::Value = serde_json::to_value(&b).unwrap();
        assert_eq!(v["ban"]["attempts"], 3);
        assert!(v["ban"].get("enforced").is_none(), "{v}");
        assert!(
            b.to_string().ends_with("(in the kernel after 3 attempts)"),
            "{b}"
        );
    }

    #[test]
    fn rules_event_json_and_console() {
        let ts = Timestamp::from_secs(1_700_000_000);
        let mut e = Event::new(
            ts,
            Body::Rules(RulesEvent {
                rules: RulesInfo {
                    action: RulesAction::Restored,
                    missing: vec!["table".into(), "iptables_jump:ipv4:INPUT".into()],
                    bans_restored: 2,
                    error: None,
                },
            }),
        );
        assert_eq!(e.event_type().as_str(), "rules");
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "timestamp": "2023-11-14T22:13:20.000000Z",
                "event_type": "rules",
                "rules": {
                    "action": "restored",
                    "missing": ["table", "iptables_jump:ipv4:INPUT"],
                    "bans_restored": 2
                }
            })
        );
        assert!(
            e.to_string().ends_with(
                "[RULES] something removed our kernel rules (table, iptables_jump:ipv4:INPUT); put back with 2 bans"
            ),
            "{e}"
        );
        if let Body::Rules(r) = &mut e.body {
            r.rules.action = RulesAction::RestoreFailed;
            r.rules.bans_restored = 0;
            r.rules.error = Some("nft: timed out".into());
        }
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["rules"]["action"], "restore_failed");
        assert_eq!(v["rules"]["error"], "nft: timed out");
        assert!(
            e.to_string()
                .ends_with("putting them back failed: nft: timed out"),
            "{e}"
        );
    }

    #[test]
    fn aggregation_reports_first_then_one_summary() {
        let mut agg = DropAggregator::new(Duration::from_secs(60), 16);
        let key = DropKey {
            reason: Reason::BlockedIp,
            rule: Some(RuleRef { list: 0, entry: 0 }),
            src: Some("198.18.0.9".parse().unwrap()),
            detail: 0,
        };
        let t0 = Timestamp::from_secs(1000);
        let mut out = Vec::new();
        assert_eq!(agg.count(key, t0, Some(80), &mut out), Aggregated::Open);
        agg.open(key, t0, &drop_event(t0));
        for i in 1..=99u64 {
            let t = Timestamp::from_micros(t0.as_micros() + i * 100_000);
            // 99 drops to 40 ports, each port more than once.
            let port = 1000 - (i % 40) as u16;
            assert_eq!(agg.count(key, t, Some(port), &mut out), Aggregated::Counted);
        }
        agg.flush_due(Timestamp::from_secs(1030), &mut out);
        assert!(out.is_empty(), "window still open");
        agg.flush_due(Timestamp::from_secs(1060), &mut out);
        assert_eq!(out.len(), 1);
        let d = out[0].drop_info().unwrap();
        assert_eq!(d.count, 99);
        assert_eq!(d.first_seen, t0);
        // A bounded sample: the first 16 distinct ports, sorted.
        let want: Vec<u16> = (1..=16).map(|i| 1000 - (i % 40) as u16).rev().collect();
        assert_eq!(d.dest_ports, want);
        let v: serde_json::Value = serde_json::from_str(&out[0].to_json()).unwrap();
        assert_eq!(
            v["drop"]["dest_ports"].as_array().unwrap().len(),
            MAX_DEST_PORTS
        );
        assert!(out[0].to_string().contains("x99 since"), "{}", out[0]);
        assert_eq!(
            d.last_seen,
            Timestamp::from_micros(t0.as_micros() + 99 * 100_000)
        );
        assert!(agg.is_empty());
    }

    #[test]
    fn a_late_drop_closes_the_old_window_first() {
        let mut agg = DropAggregator::new(Duration::from_secs(60), 16);
        let key = DropKey {
            reason: Reason::BlockedIp,
            rule: None,
            src: None,
            detail: 0,
        };
        let mut out = Vec::new();
        let t0 = Timestamp::from_secs(1000);
        agg.count(key, t0, None, &mut out);
        agg.open(key, t0, &drop_event(t0));
        agg.count(key, Timestamp::from_secs(1001), None, &mut out);
        // No tick ran; a drop after the window must not lose the count of 1.
        assert_eq!(
            agg.count(key, Timestamp::from_secs(1100), None, &mut out),
            Aggregated::Open
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].drop_info().unwrap().count, 1);
    }

    #[test]
    fn aggregator_is_bounded() {
        let mut agg = DropAggregator::new(Duration::from_secs(60), 4);
        for i in 0..100u32 {
            let key = DropKey {
                reason: Reason::BlockedIp,
                rule: None,
                src: Some(IpAddr::from(i.to_be_bytes())),
                detail: 0,
            };
            let t = Timestamp::from_secs(1);
            assert_eq!(agg.count(key, t, None, &mut Vec::new()), Aggregated::Open);
            agg.open(key, t, &drop_event(t));
        }
        assert_eq!(agg.len(), 4);
    }

    #[test]
    fn keys_tell_rules_and_names_apart() {
        let mut agg = DropAggregator::new(Duration::from_secs(60), 16);
        let src = Some("198.18.0.9".parse().unwrap());
        let t = Timestamp::from_secs(1);
        let key = |entry: u32, detail: u64| DropKey {
            reason: Reason::BlockedDomain,
            rule: Some(RuleRef { list: 3, entry }),
            src,
            detail,
        };
        let (a, b) = (
            name_hash(b"www.blocked.example"),
            name_hash(b"sub.blocked.example"),
        );
        assert_ne!(a, b);
        assert_ne!(a, 0, "0 means no detail");
        for k in [key(0, a), key(0, b), key(1, a)] {
            assert_eq!(agg.count(k, t, Some(53), &mut Vec::new()), Aggregated::Open);
            agg.open(k, t, &drop_event(t));
        }
        assert_eq!(agg.len(), 3);
        assert_eq!(
            agg.count(key(0, b), t, Some(53), &mut Vec::new()),
            Aggregated::Counted
        );
    }

    #[test]
    fn token_bucket_limits_rate_on_packet_time() {
        let mut b = TokenBucket::new(10);
        let t0 = Timestamp::from_secs(100);
        let granted = (0..1000).filter(|_| b.take(t0)).count();
        assert_eq!(granted, 20, "burst is twice the rate");
        let t1 = Timestamp::from_secs(101);
        let granted = (0..1000).filter(|_| b.take(t1)).count();
        assert_eq!(granted, 10, "one second refills `rate` tokens");
    }

    #[test]
    fn packet_source_events_say_what_failed_and_when_it_came_back() {
        let info = |state, error: Option<&str>, retry, down| SourceInfo {
            kind: SourceKind::Capture,
            name: "eth1".into(),
            state,
            error: error.map(str::to_owned),
            failures: 2,
            reopens: 1,
            retry_in_ms: retry,
            down_ms: down,
        };
        let ev = |i| {
            Event::new(
                Timestamp::from_secs(1_700_000_000),
                Body::PacketSource(PacketSourceEvent { packet_source: i }),
            )
        };
        let down = ev(info(SourceState::Down, Some("gone"), Some(400), None));
        let v: serde_json::Value = serde_json::from_str(&down.to_json()).unwrap();
        assert_eq!(v["event_type"], "packet_source");
        assert_eq!(down.event_type().as_str(), "packet_source");
        assert_eq!(v["packet_source"]["kind"], "capture");
        assert_eq!(v["packet_source"]["state"], "down");
        assert_eq!(v["packet_source"]["retry_in_ms"], 400);
        assert!(v["packet_source"].get("down_ms").is_none());
        assert_eq!(
            down.to_string(),
            "2023-11-14T22:13:20.000000Z [SOURCE] capture eth1 down: gone; reopening in 0.4s (failures 2)"
        );
        let up = ev(info(SourceState::Up, None, None, Some(2300)));
        let v: serde_json::Value = serde_json::from_str(&up.to_json()).unwrap();
        assert_eq!(v["packet_source"]["state"], "up");
        assert!(v["packet_source"].get("error").is_none());
        assert_eq!(
            up.to_string(),
            "2023-11-14T22:13:20.000000Z [SOURCE] capture eth1 back up after 2.3s (reopens 1)"
        );
        let fatal = ev(info(SourceState::Fatal, Some("no NFQUEUE"), None, None));
        assert!(fatal
            .to_string()
            .ends_with("failed for good, stopping: no NFQUEUE"));
    }
}
