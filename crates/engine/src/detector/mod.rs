//! Port-scan detector: pure, deterministic, bounded.
//!
//! [`Detector`] is fed [`Probe`]s (packets shaped like scan probes,
//! classified on the packet path) and [`Answer`]s (negative answers seen on
//! the wire: TCP RST, ICMP destination unreachable, SCTP ABORT). It reports
//! a [`ScanFinding`] when a source becomes a scanner and, when that scan
//! episode ends, one [`ScanSummary`] with the whole scan's size. It does no
//! I/O and never reads a clock: time is the probes' own [`Timestamp`]s, so
//! live traffic, pcap replay and tests decide identically.
//! [`DetectorThread`] runs one off the packet path.
//!
//! # What counts
//!
//! A probe is only ever considered when its flow (protocol and both
//! endpoints, either direction) is not already known. Every probe makes its
//! flow known until `flow_timeout` of silence (or eviction), so
//! retransmissions, the ACKs of an established connection and a server's
//! replies to our own connections are not probes.
//!
//! A new probe then counts in one of two ways ([`CountOn`]), chosen by the
//! packet path from where the source sits:
//!
//! - **on sight** ([`CountOn::Sight`]): a probe from outside `home_net`
//!   into it, or between two `home_net` addresses (lateral movement),
//!   counts when it is seen. An outsider touching many of our ports or
//!   addresses is a scanner whatever we answer, and counting at once is
//!   what lets the ban follow the threshold-crossing packet.
//! - **on failure** ([`CountOn::Failure`]): a probe from `home_net` (or
//!   from this host) to the outside counts only when the target answers it
//!   negatively (a TCP RST, an ICMP destination unreachable quoting it, an
//!   SCTP ABORT). A browser opening fifty connections, a P2P client calling
//!   hundreds of peers, a resolver asking many servers: their probes
//!   succeed or go unanswered, and they stay silent. A host or LAN client
//!   scanning the world collects refusals, and is reported. This is the
//!   method of Snort's port_scan at low sensitivity (count what fails).
//!   Probes that went unanswered are not counted: a scan of a fully
//!   filtered outside network from inside goes unreported.
//! - **bare ACK and FIN+ACK** ([`ProbeShape::BareAck`],
//!   [`ProbeShape::Maimon`]) always count on failure (a RST), wherever they
//!   come from: they are also what a connection that was open before we
//!   started looks like (a capture that begins mid-session, a daemon
//!   started on a busy host), and such a connection's peer never answers
//!   them with RST. `nmap -sA`, `-sW` and `-sM` are answered by RST (by
//!   every port of an unfiltered host for -sA/-sW, by closed ports for
//!   -sM on most stacks) and so are still found.
//!
//! # When a source is a scanner
//!
//! What is probed is a *target*: a destination address and a *service*
//! (TCP, UDP or SCTP port, ICMP type, or IP protocol number;
//! [`ProbeShape::service`]). Per source, over its counted probes:
//! - **vertical**: more than `port_threshold` distinct services on one
//!   destination address within `window` (one host's ports; a P2P client
//!   calling many peers on many ports is not one);
//! - **horizontal**: more than `host_threshold` distinct destination
//!   addresses on one service within `window` (a sweep);
//! - **wide**: more distinct targets within `window` than the per-source set
//!   holds (`port_threshold * host_threshold + 1`: a few ports across many
//!   hosts), unless no two of them share an address or a service (a P2P
//!   client calling many peers, each on its own port); reported as
//!   horizontal when it spans more hosts than services, else vertical;
//! - **slow** (when `slow` is set): more than `slow.port_threshold`
//!   distinct services on one address within `slow.window`.
//!
//! The finding is produced by the probe (or answer) that crosses a
//! threshold and carries the counts *at that moment*; it triggers the ban.
//!
//! # Episodes and summaries
//!
//! After a finding the source is not reported again until it has sent no
//! counted probe for a full `window` (`slow.window` after a slow finding):
//! that quiet ends the *episode*, and one [`ScanSummary`] says what the
//! whole scan did: distinct ports and hosts (a 10,000-port scan is
//! reported as 10,000 ports), probes, first and last probe, a sample, the
//! swept port of a horizontal scan. Summaries come out of
//! [`Detector::drain_ends`], after [`Detector::expire`] notices the quiet,
//! when the source starts a new episode, or at [`Detector::finish`]. An
//! episode that has not fired ends (and its history is forgotten) after the
//! longest window of quiet.
//!
//! # Bounded memory
//!
//! - At most `max_sources` sources, least recently seen evicted
//!   ([`DetectorStats::source_evictions`]).
//! - At most `max_flows` flows, half for flows from `home_net` (this host
//!   and its LAN), half for the others, each half least recently seen
//!   evicted ([`DetectorStats::flow_evictions`]). A flood of spoofed
//!   inbound probes evicts only other inbound flows and cannot make the
//!   replies to our own connections look like probes.
//! - Per source, before it fires, the distinct targets it probed, each
//!   with the time of its latest probe (24 bytes an entry), at most
//!   `max(port_threshold, slow.port_threshold) * host_threshold + 1`
//!   entries, capped at [`MAX_TARGETS`]. Within `window` the counts are
//!   exact until a finding fires: a full set whose entries are all in the
//!   window fires (wide), so a full set only ever replaces an entry that
//!   has left the fast window, and a scan cannot be hidden by interleaving
//!   it with other targets. Slow counts are over the latest entries that
//!   fit. A source's set is freed when it fires.
//! - At most [`MAX_EPISODES`] open episodes are tallied at once (a bitmap
//!   of the ports, 128 bytes per 1,024-port block touched, at most 8 KiB;
//!   the hosts exactly up to 256, then in a 1 KiB linear-counting bitmap).
//!   When full, the episode quiet the longest ends early (its summary is
//!   written), counted in [`DetectorStats::episode_evictions`].
//!
//! [`Detector::max_bytes`] is the worst case for a configuration;
//! [`DetectorStats::approx_bytes`] is what is allocated now.
//!
//! # Hashing
//!
//! Keys (addresses, ports) are chosen by whoever sends the packets, so the
//! tables use the standard library's keyed SipHash rather than an unkeyed
//! fast hash that an attacker could flood with colliding keys. The hash key
//! only decides where an entry sits in an index, never which entry is
//! evicted or reported, and summaries are written in (time, address)
//! order, so results do not depend on it.
//!
//! # Time
//!
//! Windows are measured back from the current probe's timestamp; an entry
//! exactly a window old is out of it. Timestamps may arrive slightly out of
//! order: an earlier stamp counts as "now" for ages (never negative) and
//! never moves a last-seen time backwards.

mod lru;
mod tally;
mod thread;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::mem::size_of;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::ScanConfig;
use crate::types::{Answer, CountOn, Probe, ProbeShape, Timestamp};

use lru::Lru;
use tally::Tally;

pub use thread::{DetectorThread, Report};

/// Hard cap on each per-source set of distinct targets, whatever the
/// thresholds say.
pub const MAX_TARGETS: usize = 512;

/// Ports listed in [`ScanFinding::port_sample`] and
/// [`ScanSummary::port_sample`] at most.
pub const PORT_SAMPLE: usize = 16;

/// Scan episodes tallied at once (see the module docs).
pub const MAX_EPISODES: usize = 1024;

/// How a scan probes: named after `nmap`'s scan types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScanKind {
    /// Half-open SYN probes from a raw socket (`-sS`).
    Syn,
    /// Full `connect()` SYNs with an OS option set (`-sT`).
    Connect,
    Fin,
    Null,
    Xmas,
    /// Bare ACKs answered by RST (`-sA`, `-sW`).
    Ack,
    /// FIN+ACK answered by RST (`-sM`).
    Maimon,
    /// Unusual TCP flag combinations (`--scanflags`).
    Other,
    Udp,
    /// SCTP INIT (`-sY`).
    Sctp,
    /// ICMP echo, timestamp or address-mask requests (`-sn -PE/-PP/-PM`).
    Icmp,
    /// Datagrams of many IP protocols (`-sO`).
    Ipproto,
    /// No shape covers at least half of the probes.
    Mixed,
}

impl ScanKind {
    /// Every kind, in declaration order.
    pub const ALL: [ScanKind; 13] = [
        Self::Syn,
        Self::Connect,
        Self::Fin,
        Self::Null,
        Self::Xmas,
        Self::Ack,
        Self::Maimon,
        Self::Other,
        Self::Udp,
        Self::Sctp,
        Self::Icmp,
        Self::Ipproto,
        Self::Mixed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syn => "syn",
            Self::Connect => "connect",
            Self::Fin => "fin",
            Self::Null => "null",
            Self::Xmas => "xmas",
            Self::Ack => "ack",
            Self::Maimon => "maimon",
            Self::Other => "other",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
            Self::Icmp => "icmp",
            Self::Ipproto => "ipproto",
            Self::Mixed => "mixed",
        }
    }

    pub fn of(shape: ProbeShape) -> Self {
        match shape {
            ProbeShape::SynRaw => Self::Syn,
            ProbeShape::SynOs => Self::Connect,
            ProbeShape::Fin => Self::Fin,
            ProbeShape::Null => Self::Null,
            ProbeShape::Xmas => Self::Xmas,
            ProbeShape::BareAck => Self::Ack,
            ProbeShape::Maimon => Self::Maimon,
            ProbeShape::Other(_) => Self::Other,
            ProbeShape::Udp => Self::Udp,
            ProbeShape::Sctp => Self::Sctp,
            ProbeShape::Icmp(_) => Self::Icmp,
            ProbeShape::Proto(_) => Self::Ipproto,
        }
    }
}

impl fmt::Display for ScanKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Many ports of one host, or one port of many hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScanPattern {
    /// More than `port_threshold` distinct services on one address.
    Vertical,
    /// More than `host_threshold` distinct addresses on one service.
    Horizontal,
}

impl ScanPattern {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vertical => "vertical",
            Self::Horizontal => "horizontal",
        }
    }
}

impl fmt::Display for ScanPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A source found scanning, with the counts at the moment it crossed a
/// threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanFinding {
    pub src: IpAddr,
    /// From the shapes of the probes to the targets that fired (the latest
    /// probe to each): the most frequent shape if it covers at least half
    /// of them and no other shape ties with it, else [`ScanKind::Mixed`].
    pub kind: ScanKind,
    pub pattern: ScanPattern,
    /// Found by the slow window (`ScanConfig::slow`).
    pub slow: bool,
    /// Distinct services (ports) within the window that fired (`window`,
    /// or `slow.window` for a slow finding).
    pub ports: u32,
    /// Distinct destination addresses within that window.
    pub hosts: u32,
    /// Up to [`PORT_SAMPLE`] of the ports that fired, the lowest, sorted
    /// (ICMP types for `icmp`, protocol numbers for `ipproto`).
    pub port_sample: Vec<u16>,
    /// For a horizontal scan: the port swept.
    pub swept_port: Option<u16>,
    /// For [`ScanKind::Other`]: the TCP flags byte of its probes.
    pub tcp_flags: Option<u8>,
    /// Counted probes from this source in this episode so far.
    pub probes: u32,
    /// The first counted probe of the episode.
    pub first_seen: Timestamp,
    /// The probe that crossed the threshold (the latest timestamp seen).
    pub last_seen: Timestamp,
    /// The source is inside `home_net` or this host (as said by the probe
    /// that fired).
    pub internal: bool,
    /// The source is allowlisted (as said by the probe that fired): report,
    /// never ban.
    pub allowlisted: bool,
}

/// What a whole scan episode did, written when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanSummary {
    pub src: IpAddr,
    /// From every counted probe of the episode, by the rule of
    /// [`ScanFinding::kind`].
    pub kind: ScanKind,
    /// As the finding said.
    pub pattern: ScanPattern,
    pub slow: bool,
    /// Distinct port numbers probed in the episode (ICMP types for `icmp`,
    /// protocol numbers for `ipproto`): exact.
    pub ports: u32,
    /// Distinct destination addresses: exact up to 256, then estimated
    /// (linear counting, within a few percent up to several thousand).
    pub hosts: u32,
    /// `hosts` is an estimate.
    pub hosts_estimated: bool,
    /// Counted probes in the episode.
    pub probes: u64,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// Up to [`PORT_SAMPLE`] of the ports, the lowest, sorted.
    pub port_sample: Vec<u16>,
    /// For a horizontal scan: the port swept.
    pub swept_port: Option<u16>,
    pub tcp_flags: Option<u8>,
    pub internal: bool,
    pub allowlisted: bool,
}

/// Counters and sizes, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DetectorStats {
    /// Sources tracked now.
    pub sources: usize,
    /// Flows remembered now.
    pub flows: usize,
    /// Sources evicted to stay under `max_sources`.
    pub source_evictions: u64,
    /// Flows evicted to stay under `max_flows`.
    pub flow_evictions: u64,
    /// Findings produced.
    pub findings: u64,
    /// Scan episodes tallied now.
    pub episodes: usize,
    /// Episodes ended early to stay under [`MAX_EPISODES`].
    pub episode_evictions: u64,
    /// Bytes allocated by the detector's tables now (slabs, hash indexes,
    /// per-source sets, tallies), from their capacities.
    pub approx_bytes: usize,
    /// Probes observed.
    pub probes: u64,
    /// Probes that counted (on sight, or answered negatively).
    pub counted: u64,
    /// Negative answers observed.
    pub answers: u64,
}

/// The port-scan detector. See the [module docs](self).
#[derive(Debug)]
pub struct Detector {
    enabled: bool,
    window: u64,
    port_threshold: u32,
    host_threshold: u32,
    slow: Option<Slow>,
    /// Quiet time after which an episode that has not fired is forgotten:
    /// the longest window.
    retention: u64,
    flow_timeout: u64,
    /// Entries of a source's target set.
    cap: usize,
    hasher: RandomState,
    /// Flows begun from `home_net` (this host, its LAN).
    local_flows: Lru<FlowKey, FlowVal>,
    /// Flows begun by the others.
    remote_flows: Lru<FlowKey, FlowVal>,
    sources: Lru<SourceKey, Source>,
    /// Open episodes of sources that fired.
    tallies: HashMap<SourceKey, Tally, RandomState>,
    /// Summaries not yet drained.
    ends: Vec<ScanSummary>,
    /// Bytes held by the per-source sets (sum of their capacities).
    target_bytes: usize,
    source_evictions: u64,
    flow_evictions: u64,
    episode_evictions: u64,
    findings: u64,
    probes: u64,
    counted: u64,
    answers: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slow {
    window: u64,
    port_threshold: u32,
}

/// A flow, the same for both directions: the lower endpoint first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    lo: IpAddr,
    hi: IpAddr,
    lo_port: u16,
    hi_port: u16,
    proto: u8,
}

/// An address as one integer, to hash it in one write.
fn addr_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl Hash for FlowKey {
    // By hand: a few wide writes instead of a dozen small ones (derive
    // hashes each address's discriminant, length and bytes separately).
    // Equal keys hash equally; an IPv4 and an IPv6 key may collide, which
    // `Eq` sorts out.
    fn hash<H: Hasher>(&self, h: &mut H) {
        match (self.lo, self.hi) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                h.write_u64((u64::from(u32::from(a)) << 32) | u64::from(u32::from(b)));
            }
            (a, b) => {
                h.write_u128(addr_bits(a));
                h.write_u128(addr_bits(b));
            }
        }
        h.write_u64(
            (u64::from(self.lo_port) << 32)
                | (u64::from(self.hi_port) << 16)
                | u64::from(self.proto),
        );
    }
}

impl FlowKey {
    fn new(a: (IpAddr, u16), b: (IpAddr, u16), proto: u8) -> (Self, bool) {
        let a_is_lo = a <= b;
        let ((lo, lo_port), (hi, hi_port)) = if a_is_lo { (a, b) } else { (b, a) };
        (
            Self {
                lo,
                hi,
                lo_port,
                hi_port,
                proto,
            },
            a_is_lo,
        )
    }

    /// The probe's flow, and whether its source is the lower endpoint.
    fn of(p: &Probe) -> (Self, bool) {
        Self::new(
            (p.src, p.src_port),
            (p.dst, p.dst_port),
            p.shape.proto(p.src.is_ipv6()),
        )
    }
}

/// What the detector remembers of a flow.
#[derive(Debug, Clone, Copy)]
struct FlowVal {
    last: Timestamp,
    /// The probe that opened it, waiting for a negative answer to count.
    pending: Option<Pending>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The prober is the key's lower endpoint.
    prober_is_lo: bool,
    shape: ProbeShape,
    internal: bool,
    allowlisted: bool,
}

/// A source address, hashed in one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SourceKey(IpAddr);

impl Hash for SourceKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self.0 {
            IpAddr::V4(v4) => h.write_u32(u32::from(v4)),
            IpAddr::V6(v6) => h.write_u128(u128::from(v6)),
        }
    }
}

/// Where an episode stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Episode {
    /// May fire.
    Armed,
    /// Fired from `window`; quiet for `window` re-arms.
    FiredFast,
    /// Fired from the slow window; quiet for `slow.window` re-arms.
    FiredSlow,
}

/// One probed target.
#[derive(Debug, Clone, Copy)]
struct Target {
    /// The latest counted probe to it.
    ts: Timestamp,
    /// [`host_id`] of the destination address.
    host: u32,
    /// [`ProbeShape::service`].
    service: u32,
    /// Shape of the latest counted probe to it.
    shape: ProbeShape,
}

impl Target {
    /// The port number (ICMP type, protocol number) of the service.
    fn port(&self) -> u16 {
        (self.service & 0xffff) as u16
    }
}

/// Per-source state.
#[derive(Debug)]
struct Source {
    first_seen: Timestamp,
    last_seen: Timestamp,
    probes: u32,
    episode: Episode,
    /// Distinct targets, each with its latest probe (until the source
    /// fires).
    targets: Vec<Target>,
}

impl Source {
    fn new(ts: Timestamp) -> Self {
        Self {
            first_seen: ts,
            last_seen: ts,
            probes: 0,
            episode: Episode::Armed,
            targets: Vec::new(),
        }
    }

    /// Starts a new episode, keeping the set's allocation.
    fn restart(&mut self, ts: Timestamp) {
        self.first_seen = ts;
        self.last_seen = ts;
        self.probes = 0;
        self.episode = Episode::Armed;
        self.targets.clear();
    }

    fn heap_bytes(&self) -> usize {
        self.targets.capacity() * size_of::<Target>()
    }
}

/// A 32-bit identity for a destination address, to count distinct ones
/// in small entries: exact for IPv4, a mix of the 128 bits for IPv6 (two
/// addresses share one with probability 2^-32, which can only undercount).
fn host_id(a: IpAddr) -> u32 {
    match a {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(v6) => {
            let x = u128::from(v6);
            let folded = (x as u64) ^ ((x >> 64) as u64).rotate_left(29);
            let z = folded.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            ((z >> 32) as u32) ^ (z as u32)
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// `now - then` in µs, zero if `then` is later (timestamps may arrive a
/// little out of order).
fn age(now: Timestamp, then: Timestamp) -> u64 {
    now.as_micros().saturating_sub(then.as_micros())
}

/// Records a probe of target `t` in a set of at most `cap` entries:
/// refreshes the entry for the same target, else adds one, replacing the
/// entry probed longest ago when full. Returns how many bytes the set's
/// allocation grew by.
fn record(set: &mut Vec<Target>, t: Target, cap: usize) -> usize {
    let mut oldest = 0;
    let mut oldest_ts = Timestamp::from_micros(u64::MAX);
    for (i, e) in set.iter_mut().enumerate() {
        if e.service == t.service && e.host == t.host {
            e.ts = e.ts.max(t.ts);
            e.shape = t.shape;
            return 0;
        }
        if e.ts < oldest_ts {
            oldest_ts = e.ts;
            oldest = i;
        }
    }
    if set.len() < cap {
        let before = set.capacity();
        if set.len() == before {
            let want = (before * 2).max(4).min(cap);
            set.reserve_exact(want - set.len());
        }
        set.push(t);
        (set.capacity() - before) * size_of::<Target>()
    } else {
        if let Some(e) = set.get_mut(oldest) {
            *e = t;
        }
        0
    }
}

/// Accounts for per-source set memory given back.
fn release(total: &mut usize, bytes: usize) {
    debug_assert!(bytes <= *total, "per-source set accounting");
    *total = total.saturating_sub(bytes);
}

/// Names a scan from per-kind counts (indexed by `ScanKind as usize`): the
/// most frequent kind if it covers at least half and no other ties with
/// it, else [`ScanKind::Mixed`].
fn kind_of_counts(counts: &[u64; ScanKind::ALL.len()]) -> ScanKind {
    let total: u64 = counts.iter().sum();
    let (mut best, mut max, mut tied) = (ScanKind::Mixed, 0, false);
    for (k, &c) in ScanKind::ALL.iter().zip(counts) {
        if c > max {
            (best, max, tied) = (*k, c, false);
        } else if c == max && c > 0 {
            tied = true;
        }
    }
    if max > 0 && !tied && 2 * max >= total {
        best
    } else {
        ScanKind::Mixed
    }
}

/// Names a scan from the shapes of the targets it counted.
fn kind_of(shapes: impl Iterator<Item = ProbeShape>) -> ScanKind {
    let mut counts = [0u64; ScanKind::ALL.len()];
    for s in shapes {
        counts[ScanKind::of(s) as usize] += 1;
    }
    kind_of_counts(&counts)
}

/// The flags of the latest `Other` shape among `shapes`.
fn other_flags(shapes: impl Iterator<Item = ProbeShape>) -> Option<u8> {
    shapes
        .filter_map(|s| match s {
            ProbeShape::Other(f) => Some(f),
            _ => None,
        })
        .last()
}

fn sample(ports: impl Iterator<Item = u16>) -> Vec<u16> {
    let mut v: Vec<u16> = ports.collect();
    v.sort_unstable();
    v.dedup();
    v.truncate(PORT_SAMPLE);
    v
}

fn distinct<T: Ord>(mut v: Vec<T>) -> u32 {
    v.sort_unstable();
    v.dedup();
    count(v.len())
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Whether no two targets share an address or a service: what an honest
/// client calling many peers, each on its own port, looks like (a P2P
/// client), and what no scan does. Only asked when a set is full.
fn all_apart(targets: &[Target]) -> bool {
    let n = targets.len();
    distinct(targets.iter().map(|e| e.host).collect()) as usize == n
        && distinct(targets.iter().map(|e| e.service).collect()) as usize == n
}

/// What fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fire {
    Vertical,
    Horizontal,
    Wide,
    Slow,
}

impl Detector {
    pub fn new(cfg: &ScanConfig) -> Self {
        let window = micros(cfg.window);
        let slow = cfg.slow.map(|s| Slow {
            window: micros(s.window),
            port_threshold: s.port_threshold,
        });
        let local_cap = cfg.max_flows / 2;
        let hasher = RandomState::new();
        let t_p = u64::from(cfg.port_threshold.max(slow.map_or(0, |s| s.port_threshold)));
        let t_h = u64::from(cfg.host_threshold);
        let cap = (t_p.max(1).saturating_mul(t_h) + 1)
            .max(t_h + 1)
            .max(t_p + 1);
        Self {
            enabled: cfg.enabled,
            window,
            port_threshold: cfg.port_threshold,
            host_threshold: cfg.host_threshold,
            slow,
            retention: slow.map_or(window, |s| s.window.max(window)),
            flow_timeout: micros(cfg.flow_timeout),
            cap: usize::try_from(cap).unwrap_or(MAX_TARGETS).min(MAX_TARGETS),
            tallies: HashMap::with_hasher(hasher.clone()),
            hasher,
            local_flows: Lru::new(local_cap),
            remote_flows: Lru::new(cfg.max_flows - local_cap),
            sources: Lru::new(cfg.max_sources),
            ends: Vec::new(),
            target_bytes: 0,
            source_evictions: 0,
            flow_evictions: 0,
            episode_evictions: 0,
            findings: 0,
            probes: 0,
            counted: 0,
            answers: 0,
        }
    }

    /// Feeds one probe candidate. Returns a finding when this probe makes
    /// its source a scanner (once per scan episode). An episode it ends is
    /// summarized in [`Detector::drain_ends`].
    pub fn observe(&mut self, p: &Probe) -> Option<ScanFinding> {
        if !self.enabled {
            return None;
        }
        self.probes += 1;
        if !self.track_flow(p) {
            return None;
        }
        self.counted += 1;
        self.count(p)
    }

    /// Feeds a negative answer: if it answers a probe that counts on
    /// failure and has not counted yet, that probe counts now (at the
    /// answer's time). Returns a finding as [`Detector::observe`] does.
    pub fn answer(&mut self, a: &Answer) -> Option<ScanFinding> {
        if !self.enabled {
            return None;
        }
        self.answers += 1;
        let (key, prober_is_lo) = FlowKey::new(
            (a.prober, a.prober_port),
            (a.target, a.target_port),
            a.proto,
        );
        let hash = self.hasher.hash_one(key);
        let mut pending = None;
        for table in [&mut self.local_flows, &mut self.remote_flows] {
            if let Some(i) = table.find(hash, &key) {
                let v = table.get_mut(i);
                if v.pending.is_some_and(|p| p.prober_is_lo == prober_is_lo) {
                    pending = v.pending.take();
                }
                break;
            }
        }
        let pending = pending?;
        let probe = Probe {
            ts: a.ts,
            src: a.prober,
            dst: a.target,
            src_port: a.prober_port,
            dst_port: a.target_port,
            shape: pending.shape,
            internal: pending.internal,
            count: CountOn::Failure,
            allowlisted: pending.allowlisted,
        };
        self.counted += 1;
        self.count(&probe)
    }

    /// Summaries of the episodes that ended since the last call, in the
    /// order they ended (several ending at once: by last probe, then
    /// address).
    pub fn drain_ends(&mut self) -> std::vec::Drain<'_, ScanSummary> {
        self.ends.drain(..)
    }

    /// Drops state that has aged out of every window at packet time `now`:
    /// flows silent for `flow_timeout`, sources with no counted probe for
    /// the longest window; ends the episodes quiet for their window (their
    /// summaries go to [`Detector::drain_ends`]). Walks each table from its
    /// least recently seen end and stops at the first live entry, so it
    /// costs what it frees (and at most [`MAX_EPISODES`] for the tallies).
    pub fn expire(&mut self, now: Timestamp) {
        let h = &self.hasher;
        let timeout = self.flow_timeout;
        for table in [&mut self.local_flows, &mut self.remote_flows] {
            while let Some(t) = table.lru() {
                if age(now, table.get(t).last) < timeout {
                    break;
                }
                table.remove(t, |k| h.hash_one(k));
            }
            table.shrink(|k| h.hash_one(k));
        }
        while let Some(t) = self.sources.lru() {
            if age(now, self.sources.get(t).last_seen) < self.retention {
                break;
            }
            let (_, s) = self.sources.remove(t, |k| h.hash_one(k));
            release(&mut self.target_bytes, s.heap_bytes());
        }
        self.sources.shrink(|k| h.hash_one(k));
        let (window, slow) = (self.window, self.slow.map_or(self.window, |s| s.window));
        let due: Vec<SourceKey> = self
            .tallies
            .iter()
            .filter(|(_, t)| age(now, t.last_seen) >= if t.slow { slow } else { window })
            .map(|(k, _)| *k)
            .collect();
        self.end_episodes(due);
    }

    /// End of input: every open episode ends now, its summary to
    /// [`Detector::drain_ends`].
    pub fn finish(&mut self) {
        let all: Vec<SourceKey> = self.tallies.keys().copied().collect();
        self.end_episodes(all);
    }

    /// Ends the episodes of `keys`, summaries in (last probe, address)
    /// order so that the hash key never shows in the output.
    fn end_episodes(&mut self, keys: Vec<SourceKey>) {
        let mut ended: Vec<Tally> = keys
            .into_iter()
            .filter_map(|k| self.tallies.remove(&k))
            .collect();
        ended.sort_by_key(|t| (t.last_seen, t.src));
        self.ends.extend(ended.into_iter().map(Tally::summary));
        self.tallies.shrink_to(self.tallies.len().max(16));
    }

    pub fn stats(&self) -> DetectorStats {
        DetectorStats {
            sources: self.sources.len(),
            flows: self.local_flows.len() + self.remote_flows.len(),
            source_evictions: self.source_evictions,
            flow_evictions: self.flow_evictions,
            findings: self.findings,
            episodes: self.tallies.len(),
            episode_evictions: self.episode_evictions,
            approx_bytes: size_of::<Self>()
                + self.local_flows.bytes()
                + self.remote_flows.bytes()
                + self.sources.bytes()
                + self.target_bytes
                + self.tallies.capacity() * (size_of::<(SourceKey, Tally)>() + 1)
                + self.tallies.values().map(Tally::heap_bytes).sum::<usize>(),
            probes: self.probes,
            counted: self.counted,
            answers: self.answers,
        }
    }

    /// The most memory this detector can hold ([`DetectorStats::approx_bytes`]
    /// never exceeds it): full flow and source tables, every source with a
    /// full set, every episode slot with a full tally.
    pub fn max_bytes(&self) -> usize {
        let per_source = self.cap * size_of::<Target>();
        // hashbrown holds at most 8/7 of its items, rounded up to a power
        // of two: twice the items covers it.
        let tally_slots = (2 * MAX_EPISODES).next_power_of_two();
        size_of::<Self>()
            + Lru::<FlowKey, FlowVal>::bytes_bound(self.local_flows.cap())
            + Lru::<FlowKey, FlowVal>::bytes_bound(self.remote_flows.cap())
            + Lru::<SourceKey, Source>::bytes_bound(self.sources.cap())
            + self.sources.cap() * per_source
            + tally_slots * (size_of::<(SourceKey, Tally)>() + 1)
            + MAX_EPISODES * Tally::MAX_HEAP_BYTES
    }

    /// Worst-case bytes per tracked source: its slot in the source table
    /// and a full target set (a tallied episode adds at most
    /// [`Detector::max_bytes_per_episode`], for at most [`MAX_EPISODES`]
    /// sources).
    pub fn max_bytes_per_source(&self) -> usize {
        Lru::<SourceKey, Source>::bytes_bound(1) + self.cap * size_of::<Target>()
    }

    /// Worst-case bytes of one open episode's tally (a port bitmap over
    /// every port and the host bitmap).
    pub fn max_bytes_per_episode() -> usize {
        size_of::<(SourceKey, Tally)>() + Tally::MAX_HEAP_BYTES
    }

    /// Registers the probe's flow; true when the probe counts now.
    fn track_flow(&mut self, p: &Probe) -> bool {
        let (key, prober_is_lo) = FlowKey::of(p);
        let hash = self.hasher.hash_one(key);
        let h = &self.hasher;
        let hasher = |k: &FlowKey| h.hash_one(k);
        for table in [&mut self.local_flows, &mut self.remote_flows] {
            if let Some(i) = table.find(hash, &key) {
                let v = table.get_mut(i);
                if age(p.ts, v.last) < self.flow_timeout {
                    v.last = v.last.max(p.ts);
                    table.touch(i);
                    return false;
                }
                // Silent too long: forgotten, as if expired.
                table.remove(i, hasher);
                break;
            }
        }
        let pending = (p.count == CountOn::Failure).then_some(Pending {
            prober_is_lo,
            shape: p.shape,
            internal: p.internal,
            allowlisted: p.allowlisted,
        });
        let table = if p.internal {
            &mut self.local_flows
        } else {
            &mut self.remote_flows
        };
        let val = FlowVal {
            last: p.ts,
            pending,
        };
        if let Some((_, Some(_))) = table.insert(hash, key, val, hasher) {
            self.flow_evictions += 1;
        }
        pending.is_none()
    }

    /// Counts a probe against its source; fires at most once per episode.
    fn count(&mut self, p: &Probe) -> Option<ScanFinding> {
        let ts = p.ts;
        let host = host_id(p.dst);
        let key = SourceKey(p.src);
        let hash = self.hasher.hash_one(key);
        let h = &self.hasher;
        let i = match self.sources.find(hash, &key) {
            Some(i) => {
                self.sources.touch(i);
                i
            }
            None => {
                let (i, evicted) = self
                    .sources
                    .insert(hash, key, Source::new(ts), |k| h.hash_one(k))?;
                if let Some((_, mut old)) = evicted {
                    self.source_evictions += 1;
                    // Reuse the evicted source's allocation.
                    old.restart(ts);
                    self.sources.get_mut(i).targets = old.targets;
                }
                i
            }
        };
        let s = self.sources.get_mut(i);

        let quiet = age(ts, s.last_seen);
        let rearm = match s.episode {
            Episode::Armed => quiet >= self.retention,
            Episode::FiredFast => quiet >= self.window,
            Episode::FiredSlow => quiet >= self.slow.map_or(self.window, |w| w.window),
        };
        if rearm {
            s.restart(ts);
        }
        s.last_seen = s.last_seen.max(ts);
        s.probes = s.probes.saturating_add(1);
        let target = Target {
            ts,
            host,
            service: p.shape.service(p.dst_port),
            shape: p.shape,
        };
        if s.episode != Episode::Armed {
            if let Some(t) = self.tallies.get_mut(&key) {
                t.add(&target);
            }
            return None;
        }
        if rearm && self.tallies.contains_key(&key) {
            // The old episode's quiet was not noticed yet: it ends first.
            self.end_episodes(vec![key]);
        }

        let s = self.sources.get_mut(i);
        let before = s.heap_bytes();
        record(&mut s.targets, target, self.cap);
        self.target_bytes += s.heap_bytes() - before;

        let (mut host_ports, mut service_hosts, mut in_window, mut slow_ports) =
            (0u32, 0u32, 0usize, 0u32);
        for e in &s.targets {
            let a = age(ts, e.ts);
            let fast = a < self.window;
            in_window += usize::from(fast);
            host_ports += u32::from(fast && e.host == host);
            service_hosts += u32::from(fast && e.service == target.service);
            slow_ports += u32::from(e.host == host && self.slow.is_some_and(|w| a < w.window));
        }
        let fire = if host_ports > self.port_threshold {
            Fire::Vertical
        } else if service_hosts > self.host_threshold {
            Fire::Horizontal
        } else if in_window >= self.cap && !all_apart(&s.targets) {
            Fire::Wide
        } else if self.slow.is_some_and(|w| slow_ports > w.port_threshold) {
            Fire::Slow
        } else {
            return None;
        };
        let finding = self.finding(i, p, &target, fire);
        self.findings += 1;
        Some(finding)
    }

    /// Builds the finding for source `i`, closes its armed episode and
    /// opens its tally.
    fn finding(&mut self, i: u32, p: &Probe, target: &Target, fire: Fire) -> ScanFinding {
        let ts = p.ts;
        let window = match (fire, self.slow) {
            (Fire::Slow, Some(w)) => w.window,
            _ => self.window,
        };
        let s = self.sources.get_mut(i);
        let in_window: Vec<Target> = s
            .targets
            .iter()
            .filter(|e| age(ts, e.ts) < window)
            .copied()
            .collect();
        // The targets that made it fire.
        let fired: Vec<&Target> = match fire {
            Fire::Vertical | Fire::Slow => {
                in_window.iter().filter(|e| e.host == target.host).collect()
            }
            Fire::Horizontal => in_window
                .iter()
                .filter(|e| e.service == target.service)
                .collect(),
            Fire::Wide => in_window.iter().collect(),
        };
        let hosts = distinct(in_window.iter().map(|e| e.host).collect());
        let ports = distinct(in_window.iter().map(|e| e.service).collect());
        let pattern = match fire {
            Fire::Horizontal => ScanPattern::Horizontal,
            Fire::Wide if hosts > ports => ScanPattern::Horizontal,
            _ => ScanPattern::Vertical,
        };
        let swept_port = (pattern == ScanPattern::Horizontal).then(|| {
            if fire == Fire::Horizontal {
                target.port()
            } else {
                // The port probed on the most hosts.
                let mut by_port: Vec<u16> = in_window.iter().map(Target::port).collect();
                by_port.sort_unstable();
                by_port
                    .chunk_by(|a, b| a == b)
                    .max_by_key(|c| c.len())
                    .and_then(|c| c.first().copied())
                    .unwrap_or(target.port())
            }
        });
        let finding = ScanFinding {
            src: p.src,
            kind: kind_of(fired.iter().map(|e| e.shape)),
            pattern,
            slow: fire == Fire::Slow,
            ports: if fire == Fire::Horizontal || pattern == ScanPattern::Horizontal {
                ports
            } else {
                count(fired.len())
            },
            hosts,
            port_sample: if pattern == ScanPattern::Horizontal {
                sample(in_window.iter().map(Target::port))
            } else {
                sample(fired.iter().map(|e| e.port()))
            },
            swept_port,
            tcp_flags: other_flags(fired.iter().map(|e| e.shape)),
            probes: s.probes,
            first_seen: s.first_seen,
            last_seen: s.last_seen,
            internal: p.internal,
            allowlisted: p.allowlisted,
        };
        // The set is not needed until the episode ends: free it.
        s.episode = if fire == Fire::Slow {
            Episode::FiredSlow
        } else {
            Episode::FiredFast
        };
        let freed = s.heap_bytes();
        s.targets = Vec::new();
        release(&mut self.target_bytes, freed);

        let key = SourceKey(p.src);
        if self.tallies.contains_key(&key) {
            self.end_episodes(vec![key]);
        }
        if self.tallies.len() >= MAX_EPISODES {
            let oldest = self
                .tallies
                .iter()
                .min_by_key(|(_, t)| (t.last_seen, t.src))
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.episode_evictions += 1;
                self.end_episodes(vec![k]);
            }
        }
        self.tallies.insert(key, Tally::open(&finding, &in_window));
        finding
    }
}
