//! Port-scan detector: pure, deterministic, bounded.
//!
//! [`Detector`] is fed [`Probe`]s (packets shaped like scan probes,
//! classified on the packet path) and reports a [`ScanFinding`] when a
//! source becomes a scanner. It does no I/O and never reads a clock: time
//! is the probes' own [`Timestamp`]s, so live traffic, pcap replay and tests
//! decide identically. [`DetectorThread`] runs one off the packet path.
//!
//! # What counts
//!
//! A probe *counts* only when its flow (protocol and both endpoints, either
//! direction) is not already known. Every probe makes its flow known until
//! `flow_timeout` of silence (or eviction), so retransmissions, the ACKs of
//! an established connection and a server's replies to our own connections
//! are not probes. Probes sent by this host ([`Direction::Outbound`]) only
//! register their flow and never count.
//!
//! Flows our host initiated are kept in their own half of the `max_flows`
//! budget: a flood of spoofed inbound probes evicts only other inbound
//! flows, and cannot make the replies to our own connections (DNS answers,
//! HTTPS servers) look like probes, which would get those servers banned.
//!
//! # When a source is a scanner
//!
//! Per source, over its counted probes:
//! - **vertical**: more than `port_threshold` distinct destination ports
//!   within `window`;
//! - **horizontal**: more than `host_threshold` distinct destination
//!   addresses on one port within `window`;
//! - **slow** (when `slow` is set): more than `slow.port_threshold`
//!   distinct destination ports within `slow.window`.
//!
//! The finding is produced by the probe that crosses a threshold and carries
//! the counts *at that moment* (a 20-port scan with the default threshold of
//! 5 is reported with `ports == 6`).
//!
//! **One finding per scan episode.** After a finding the source is not
//! reported again until it has sent no counted probe for a full `window`
//! (`slow.window` after a slow finding); its next counted probe then starts
//! a new episode from a clean slate. An episode that has not fired ends (and
//! its history is forgotten) after the longest window of quiet.
//!
//! # Bounded memory
//!
//! - At most `max_sources` sources, least recently seen evicted
//!   ([`DetectorStats::source_evictions`]).
//! - At most `max_flows` flows, half for flows this host initiated, half for
//!   the others, each half least recently seen evicted
//!   ([`DetectorStats::flow_evictions`]).
//! - Per source, the distinct ports it probed and, once it has probed a
//!   second address, the distinct (address, port) pairs, each with the time
//!   of its latest probe (16 bytes an entry). The sets are sized from the
//!   thresholds so that the counts are exact up to the moment a finding
//!   fires: before a finding, a window holds at most `port_threshold` ports
//!   (`slow.port_threshold` for the slow window) and
//!   `port_threshold * host_threshold` pairs, so the sets have one entry
//!   more than that, and a full set only ever replaces an entry that has
//!   already left every window. This is also what defeats hiding a sweep by
//!   interleaving it with other ports: a ring of recent probes could be
//!   flushed that way, these sets cannot. A source's sets are freed when it
//!   fires (it needs none until its episode ends).
//! - Each set is capped at [`MAX_TARGETS`] entries whatever the thresholds.
//!   Past the cap the oldest entry is replaced even if still in the window:
//!   counts saturate at the cap, so a port threshold of `MAX_TARGETS` or
//!   more can never be exceeded, and with `port_threshold * host_threshold
//!   >= MAX_TARGETS` a sweep interleaved with many ports may be undercounted.
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
//! evicted or reported, so results do not depend on it.
//!
//! # Time
//!
//! Windows are measured back from the current probe's timestamp; an entry
//! exactly a window old is out of it. Timestamps may arrive slightly out of
//! order: an earlier stamp counts as "now" for ages (never negative) and
//! never moves a last-seen time backwards.

mod lru;
mod thread;

#[cfg(test)]
mod tests;

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::mem::size_of;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::ScanConfig;
use crate::types::{Direction, Probe, ProbeShape, Timestamp};

use lru::Lru;

pub use thread::DetectorThread;

/// Hard cap on each per-source set (distinct ports, distinct address/port
/// pairs), whatever the thresholds say.
pub const MAX_TARGETS: usize = 512;

/// Ports listed in [`ScanFinding::port_sample`] at most.
pub const PORT_SAMPLE: usize = 16;

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
    /// Bare ACKs (`-sA`, firewall mapping).
    Ack,
    Udp,
    /// No shape covers at least half of the probes.
    Mixed,
}

impl ScanKind {
    /// Every kind, in declaration order.
    pub const ALL: [ScanKind; 8] = [
        Self::Syn,
        Self::Connect,
        Self::Fin,
        Self::Null,
        Self::Xmas,
        Self::Ack,
        Self::Udp,
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
            Self::Udp => "udp",
            Self::Mixed => "mixed",
        }
    }

    fn of(shape: ProbeShape) -> Self {
        match shape {
            ProbeShape::SynRaw => Self::Syn,
            ProbeShape::SynOs => Self::Connect,
            ProbeShape::Fin => Self::Fin,
            ProbeShape::Null => Self::Null,
            ProbeShape::Xmas => Self::Xmas,
            ProbeShape::BareAck => Self::Ack,
            ProbeShape::Udp => Self::Udp,
        }
    }
}

impl fmt::Display for ScanKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Many ports of few hosts, or one port of many hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScanPattern {
    /// More than `port_threshold` distinct ports.
    Vertical,
    /// More than `host_threshold` distinct addresses on one port.
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
    /// From the shapes of the probes to the targets counted (the latest
    /// probe to each distinct port, or to each address for a horizontal
    /// sweep): the most frequent shape if it covers at least half of them
    /// and no other shape ties with it, else [`ScanKind::Mixed`].
    pub kind: ScanKind,
    pub pattern: ScanPattern,
    /// Found by the slow window (`ScanConfig::slow`).
    pub slow: bool,
    /// Distinct destination ports within the window that fired (`window`,
    /// or `slow.window` for a slow finding).
    pub ports: u32,
    /// Distinct destination addresses within `window`. For a slow finding,
    /// a lower bound: the addresses of the latest probe to each port.
    pub hosts: u32,
    /// Up to [`PORT_SAMPLE`] of the ports counted, the lowest, sorted.
    pub port_sample: Vec<u16>,
    /// Counted probes from this source in this episode so far.
    pub probes: u32,
    /// The first counted probe of the episode.
    pub first_seen: Timestamp,
    /// The probe that crossed the threshold (the latest timestamp seen).
    pub last_seen: Timestamp,
    /// The source is allowlisted (as said by the probe that fired): report,
    /// never ban.
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
    /// Bytes allocated by the detector's tables now (slabs, hash indexes,
    /// per-source sets), from their capacities.
    pub approx_bytes: usize,
    /// Probes observed.
    pub probes: u64,
    /// Probes that counted (new flow, not outbound).
    pub counted: u64,
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
    caps: Caps,
    hasher: RandomState,
    /// Flows this host initiated (outbound probes).
    local_flows: Lru<FlowKey, Timestamp>,
    /// Flows initiated by the other side.
    remote_flows: Lru<FlowKey, Timestamp>,
    sources: Lru<SourceKey, Source>,
    /// Bytes held by the per-source sets (sum of their capacities).
    target_bytes: usize,
    source_evictions: u64,
    flow_evictions: u64,
    findings: u64,
    probes: u64,
    counted: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slow {
    window: u64,
    port_threshold: u32,
}

/// Sizes of the per-source sets, from the thresholds.
#[derive(Debug, Clone, Copy)]
struct Caps {
    /// Distinct ports: one more than the largest port threshold.
    ports: usize,
    /// Distinct (address, port) pairs: one more than the most a window can
    /// hold without firing, `port_threshold * host_threshold` (and at least
    /// `host_threshold + 1`).
    pairs: usize,
}

impl Caps {
    fn new(cfg: &ScanConfig) -> Self {
        let slow = cfg.slow.map_or(0, |s| s.port_threshold);
        let ports = u64::from(cfg.port_threshold.max(slow)) + 1;
        let t_p = u64::from(cfg.port_threshold.max(1));
        let t_h = u64::from(cfg.host_threshold);
        let pairs = (t_p.saturating_mul(t_h) + 1).max(t_h + 1);
        let clamp = |n: u64| usize::try_from(n).unwrap_or(MAX_TARGETS).min(MAX_TARGETS);
        Self {
            ports: clamp(ports),
            pairs: clamp(pairs),
        }
    }
}

/// A flow, the same for both directions: the lower endpoint first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    lo: IpAddr,
    hi: IpAddr,
    lo_port: u16,
    hi_port: u16,
    udp: bool,
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
            (u64::from(self.lo_port) << 32) | (u64::from(self.hi_port) << 16) | u64::from(self.udp),
        );
    }
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

impl FlowKey {
    fn of(p: &Probe) -> Self {
        let udp = p.shape == ProbeShape::Udp;
        let a = (p.src, p.src_port);
        let b = (p.dst, p.dst_port);
        let ((lo, lo_port), (hi, hi_port)) = if a <= b { (a, b) } else { (b, a) };
        Self {
            lo,
            hi,
            lo_port,
            hi_port,
            udp,
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

/// One probed target: 16 bytes.
#[derive(Debug, Clone, Copy)]
struct Target {
    /// The latest counted probe to it.
    ts: Timestamp,
    /// [`host_id`] of the destination address.
    host: u32,
    port: u16,
    /// Shape of the latest counted probe to it.
    shape: ProbeShape,
}

/// Per-source state.
#[derive(Debug)]
struct Source {
    first_seen: Timestamp,
    last_seen: Timestamp,
    probes: u32,
    episode: Episode,
    /// The only address probed so far this episode, while `multi_host` is
    /// false; pairs are tracked only once a second address is probed.
    host0: u32,
    multi_host: bool,
    /// Distinct ports, each with its latest probe.
    ports: Vec<Target>,
    /// Distinct (address, port) pairs, once `multi_host`.
    pairs: Vec<Target>,
}

impl Source {
    fn new(ts: Timestamp, host: u32) -> Self {
        Self {
            first_seen: ts,
            last_seen: ts,
            probes: 0,
            episode: Episode::Armed,
            host0: host,
            multi_host: false,
            ports: Vec::new(),
            pairs: Vec::new(),
        }
    }

    /// Starts a new episode, keeping the sets' allocations.
    fn restart(&mut self, ts: Timestamp, host: u32) {
        self.first_seen = ts;
        self.last_seen = ts;
        self.probes = 0;
        self.episode = Episode::Armed;
        self.host0 = host;
        self.multi_host = false;
        self.ports.clear();
        self.pairs.clear();
    }

    fn heap_bytes(&self) -> usize {
        (self.ports.capacity() + self.pairs.capacity()) * size_of::<Target>()
    }
}

/// A 32-bit identity for a destination address, to count distinct ones
/// in 16-byte entries: exact for IPv4, a mix of the 128 bits for IPv6 (two
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

/// Records a probe of `t.port` (and, for pairs, `t.host`) in a set of at
/// most `cap` entries: refreshes the entry for the same target, else adds
/// one, replacing the entry probed longest ago when full. Returns how many
/// bytes the set's allocation grew by.
fn record(set: &mut Vec<Target>, t: Target, cap: usize, pairs: bool) -> usize {
    let mut oldest = 0;
    let mut oldest_ts = Timestamp::from_micros(u64::MAX);
    for (i, e) in set.iter_mut().enumerate() {
        if e.port == t.port && (!pairs || e.host == t.host) {
            e.ts = e.ts.max(t.ts);
            e.host = t.host;
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

/// Names a scan from the shapes of the targets it counted.
fn kind_of(shapes: impl Iterator<Item = ProbeShape>) -> ScanKind {
    // Indexed by `ScanKind as usize`; `Mixed` (the last) stays zero.
    let mut counts = [0u32; 8];
    let mut total = 0u32;
    for s in shapes {
        counts[ScanKind::of(s) as usize] += 1;
        total += 1;
    }
    let (mut best, mut max, mut tied) = (ScanKind::Mixed, 0, false);
    for (k, &c) in ScanKind::ALL.iter().zip(&counts) {
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

fn sample(ports: impl Iterator<Item = u16>) -> Vec<u16> {
    let mut v: Vec<u16> = ports.collect();
    v.sort_unstable();
    v.dedup();
    v.truncate(PORT_SAMPLE);
    v
}

fn distinct(mut v: Vec<u32>) -> u32 {
    v.sort_unstable();
    v.dedup();
    u32::try_from(v.len()).unwrap_or(u32::MAX)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fire {
    Vertical,
    Horizontal,
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
        Self {
            enabled: cfg.enabled,
            window,
            port_threshold: cfg.port_threshold,
            host_threshold: cfg.host_threshold,
            slow,
            retention: slow.map_or(window, |s| s.window.max(window)),
            flow_timeout: micros(cfg.flow_timeout),
            caps: Caps::new(cfg),
            hasher: RandomState::new(),
            local_flows: Lru::new(local_cap),
            remote_flows: Lru::new(cfg.max_flows - local_cap),
            sources: Lru::new(cfg.max_sources),
            target_bytes: 0,
            source_evictions: 0,
            flow_evictions: 0,
            findings: 0,
            probes: 0,
            counted: 0,
        }
    }

    /// Feeds one probe candidate. Returns a finding when this probe makes
    /// its source a scanner (once per scan episode).
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

    /// Drops state that has aged out of every window at packet time `now`:
    /// flows silent for `flow_timeout`, sources with no counted probe for
    /// the longest window. Walks each table from its least recently seen
    /// end and stops at the first live entry, so it costs what it frees.
    /// (With timestamps out of order, an entry stamped earlier than a later
    /// seen one may outlive its time until evicted or a later call.)
    pub fn expire(&mut self, now: Timestamp) {
        let h = &self.hasher;
        let timeout = self.flow_timeout;
        for table in [&mut self.local_flows, &mut self.remote_flows] {
            while let Some(t) = table.lru() {
                if age(now, *table.get(t)) < timeout {
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
    }

    pub fn stats(&self) -> DetectorStats {
        DetectorStats {
            sources: self.sources.len(),
            flows: self.local_flows.len() + self.remote_flows.len(),
            source_evictions: self.source_evictions,
            flow_evictions: self.flow_evictions,
            findings: self.findings,
            approx_bytes: size_of::<Self>()
                + self.local_flows.bytes()
                + self.remote_flows.bytes()
                + self.sources.bytes()
                + self.target_bytes,
            probes: self.probes,
            counted: self.counted,
        }
    }

    /// The most memory this detector can hold ([`DetectorStats::approx_bytes`]
    /// never exceeds it): full flow and source tables, every source with
    /// full sets.
    pub fn max_bytes(&self) -> usize {
        let per_source = (self.caps.ports + self.caps.pairs) * size_of::<Target>();
        size_of::<Self>()
            + Lru::<FlowKey, Timestamp>::bytes_bound(self.local_flows.cap())
            + Lru::<FlowKey, Timestamp>::bytes_bound(self.remote_flows.cap())
            + Lru::<SourceKey, Source>::bytes_bound(self.sources.cap())
            + self.sources.cap() * per_source
    }

    /// Registers the probe's flow; true when the probe counts.
    fn track_flow(&mut self, p: &Probe) -> bool {
        let key = FlowKey::of(p);
        let hash = self.hasher.hash_one(key);
        let h = &self.hasher;
        let hasher = |k: &FlowKey| h.hash_one(k);
        for table in [&mut self.local_flows, &mut self.remote_flows] {
            if let Some(i) = table.find(hash, &key) {
                let last = table.get_mut(i);
                if age(p.ts, *last) < self.flow_timeout {
                    *last = (*last).max(p.ts);
                    table.touch(i);
                    return false;
                }
                // Silent too long: forgotten, as if expired.
                table.remove(i, hasher);
                break;
            }
        }
        let outbound = p.dir == Direction::Outbound;
        let table = if outbound {
            &mut self.local_flows
        } else {
            &mut self.remote_flows
        };
        if let Some((_, Some(_))) = table.insert(hash, key, p.ts, hasher) {
            self.flow_evictions += 1;
        }
        !outbound
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
                    .insert(hash, key, Source::new(ts, host), |k| h.hash_one(k))?;
                if let Some((_, mut old)) = evicted {
                    self.source_evictions += 1;
                    // Reuse the evicted source's allocations.
                    old.restart(ts, host);
                    let s = self.sources.get_mut(i);
                    s.ports = old.ports;
                    s.pairs = old.pairs;
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
            s.restart(ts, host);
        }
        s.last_seen = s.last_seen.max(ts);
        s.probes = s.probes.saturating_add(1);
        if s.episode != Episode::Armed {
            return None;
        }

        let before = s.heap_bytes();
        let t = Target {
            ts,
            host,
            port: p.dst_port,
            shape: p.shape,
        };
        if !s.multi_host && host != s.host0 {
            // A second address: from now on track pairs, starting with the
            // ports of the first address still in the window (exact: the
            // ports set holds every port probed within the window).
            s.multi_host = true;
            for e in s.ports.iter().filter(|e| age(ts, e.ts) < self.window) {
                record(&mut s.pairs, *e, self.caps.pairs, true);
            }
        }
        record(&mut s.ports, t, self.caps.ports, false);
        if s.multi_host {
            record(&mut s.pairs, t, self.caps.pairs, true);
        }
        self.target_bytes += s.heap_bytes() - before;

        let (mut fast_ports, mut slow_ports) = (0u32, 0u32);
        for e in &s.ports {
            let a = age(ts, e.ts);
            fast_ports += u32::from(a < self.window);
            slow_ports += u32::from(self.slow.is_some_and(|w| a < w.window));
        }
        let port_hosts = if s.multi_host {
            let window = self.window;
            count(
                s.pairs
                    .iter()
                    .filter(|e| e.port == p.dst_port && age(ts, e.ts) < window)
                    .count(),
            )
        } else {
            1
        };
        let fire = if fast_ports > self.port_threshold {
            Fire::Vertical
        } else if port_hosts > self.host_threshold {
            Fire::Horizontal
        } else if self.slow.is_some_and(|w| slow_ports > w.port_threshold) {
            Fire::Slow
        } else {
            return None;
        };
        let finding = self.finding(i, p, fire);
        self.findings += 1;
        Some(finding)
    }

    /// Builds the finding for source `i` and closes its episode.
    fn finding(&mut self, i: u32, p: &Probe, fire: Fire) -> ScanFinding {
        let ts = p.ts;
        let window = match (fire, self.slow) {
            (Fire::Slow, Some(w)) => w.window,
            _ => self.window,
        };
        let s = self.sources.get_mut(i);
        let in_window = |e: &&Target| age(ts, e.ts) < window;
        let ports: Vec<&Target> = s.ports.iter().filter(in_window).collect();
        let pairs: Vec<&Target> = s.pairs.iter().filter(in_window).collect();
        let hosts = match fire {
            Fire::Slow => distinct(ports.iter().map(|e| e.host).collect()),
            _ if s.multi_host => distinct(pairs.iter().map(|e| e.host).collect()),
            _ => 1,
        };
        let kind = match fire {
            Fire::Horizontal => kind_of(
                pairs
                    .iter()
                    .filter(|e| e.port == p.dst_port)
                    .map(|e| e.shape),
            ),
            _ => kind_of(ports.iter().map(|e| e.shape)),
        };
        let finding = ScanFinding {
            src: p.src,
            kind,
            pattern: if fire == Fire::Horizontal {
                ScanPattern::Horizontal
            } else {
                ScanPattern::Vertical
            },
            slow: fire == Fire::Slow,
            ports: count(ports.len()),
            hosts,
            port_sample: sample(ports.iter().map(|e| e.port)),
            probes: s.probes,
            first_seen: s.first_seen,
            last_seen: s.last_seen,
            allowlisted: p.allowlisted,
        };
        // The sets are not needed until the episode ends: free them.
        s.episode = if fire == Fire::Slow {
            Episode::FiredSlow
        } else {
            Episode::FiredFast
        };
        let freed = s.heap_bytes();
        s.ports = Vec::new();
        s.pairs = Vec::new();
        release(&mut self.target_bytes, freed);
        finding
    }
}
