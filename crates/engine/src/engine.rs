//! The packet path: one packet in (bytes, link type, timestamp, direction),
//! one [`Verdict`] out, events on the side.
//!
//! Order of decisions (docs/rules.md, "Precedence"):
//! 1. undecodable -> the `malformed` policy (but a packet a capture's snap
//!    length cut inside its headers is only counted, `truncated`);
//! 2. loopback or an allowlisted peer -> accept (never banned);
//! 3. a banned peer -> drop `banned`;
//! 4. a DNS query: allowed names pass on, blocked names drop `blocked_domain`;
//! 5. allow port/protocol/rules -> accept; block ip/port/protocol/rules -> drop;
//! 6. the default policy.
//!
//! Scan probes (see [`ProbeShape`]) of packets that reach step 5 are handed
//! to the detector, inline or on its own thread; the packet path never waits
//! for it. Findings come back as `scan` events and bans.
//!
//! **Invariant: time only moves with packets.** [`Engine::process`] and
//! [`Engine::tick`] take the time; bans expire, drop windows close and the
//! rate limit refills on that time alone.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_wire::dns;
use portcullis_wire::{decode_partial, DecodeError, IpProto, PacketSummary, Undecodable};
use rustc_hash::FxHashMap;

use crate::community_id::community_id;
use crate::config::Config;
use crate::config::ScanAction;
use crate::detector::{Detector, DetectorStats, DetectorThread, Report, ScanFinding, ScanSummary};
use crate::events::{
    name_hash, rrtype_name, Aggregated, BanEvent, BanInfo, Body, DecodeErrorName, DnsEvent,
    DnsInfo, DnsRecord, DropAction, DropAggregator, DropEvent, DropInfo, DropKey, Event, EventType,
    Flow, NotBanned, ScanEvent, ScanInfo, ScanPhase, Seconds, Source, SuppressedEvent,
    SuppressedInfo, TcpFlagsHex, TokenBucket, Transport, UnbanEvent, UnbanInfo, UnbanReason,
};
use crate::explain::Explanation;
use crate::rules::DomainMatch;
use crate::top::DropTops;
use crate::types::{
    Action, Answer, CountOn, Direction, Observation, Probe, ProbeShape, Reason, Timestamp, Verdict,
};

pub use portcullis_wire::PacketIn;

/// A decoded packet's context inside the engine.
struct Pkt<'a> {
    data: &'a [u8],
    ts: Timestamp,
    dir: Direction,
}

/// Direction from `home_net`: to it is inbound, from it outbound, within or
/// outside it forwarded. Without `home_net`, everything is inbound.
pub fn infer_direction(home_net: &[ipnet::IpNet], p: &PacketSummary) -> Direction {
    infer_direction_of(home_net, p.src, p.dst)
}

/// [`infer_direction`] from the two addresses alone.
pub fn infer_direction_of(home_net: &[ipnet::IpNet], src: IpAddr, dst: IpAddr) -> Direction {
    if home_net.is_empty() {
        return Direction::Inbound;
    }
    let src_home = home_net.iter().any(|n| n.contains(&src));
    let dst_home = home_net.iter().any(|n| n.contains(&dst));
    match (src_home, dst_home) {
        (false, true) => Direction::Inbound,
        (true, false) => Direction::Outbound,
        _ => Direction::Forwarded,
    }
}

/// Where scan detection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectorMode {
    /// No detection.
    Off,
    /// In the caller's thread, right after each probe: deterministic, for
    /// replay and tests (a ban applies from the next packet on).
    Inline,
    /// On its own thread behind a bounded channel of `capacity` probes (live
    /// mode), handed over in batches of [`PROBE_BATCH`]: a batch goes when it
    /// is full, on every [`Engine::tick`] and on [`Engine::flush`]. A full
    /// channel drops the batch and counts its probes.
    Thread { capacity: usize },
}

enum DetectorLink {
    Off,
    Inline(Box<Detector>),
    Thread(DetectorThread),
}

impl DetectorLink {
    fn new(cfg: &Config, mode: DetectorMode) -> std::io::Result<Self> {
        Ok(match mode {
            _ if !cfg.scan.enabled => Self::Off,
            DetectorMode::Off => Self::Off,
            DetectorMode::Inline => Self::Inline(Box::new(Detector::new(&cfg.scan))),
            DetectorMode::Thread { capacity } => {
                Self::Thread(DetectorThread::spawn(cfg.scan.clone(), capacity)?)
            }
        })
    }
}

/// An active ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub addr: IpAddr,
    pub since: Timestamp,
    pub until: Timestamp,
    /// `scan:syn`, `manual`, ...
    pub reason: String,
}

/// Bans with per-entry expiry; lookups are one hash probe, expiry is a heap
/// peek per tick. At most `max` bans: when full, the ban that would end
/// soonest yields to a new one ([`BanTable::insert`]).
#[derive(Debug)]
pub struct BanTable {
    bans: FxHashMap<IpAddr, Ban>,
    expiry: BinaryHeap<Reverse<(Timestamp, IpAddr)>>,
    max: usize,
}

impl Default for BanTable {
    fn default() -> Self {
        Self::with_max(usize::MAX)
    }
}

impl BanTable {
    /// A table holding at most `max` bans (at least 1).
    pub fn with_max(max: usize) -> Self {
        Self {
            bans: FxHashMap::default(),
            expiry: BinaryHeap::new(),
            max: max.max(1),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Entries of the expiry heap (live and stale): bounded by about twice
    /// the bans in force.
    pub fn heap_len(&self) -> usize {
        self.expiry.len()
    }

    /// Adds a ban to a full table: the ban ending soonest yields and is
    /// returned (none yields to a ban that would end sooner than all of
    /// them: then the new one is refused, `Err(())`).
    fn make_room(&mut self, new_until: Timestamp) -> Result<Option<Ban>, ()> {
        while let Some(Reverse((until, addr))) = self.expiry.peek().copied() {
            // Stale heap entries (extended or lifted bans) are skipped.
            if self.bans.get(&addr).is_none_or(|b| b.until != until) {
                self.expiry.pop();
                continue;
            }
            if until > new_until {
                return Err(());
            }
            self.expiry.pop();
            return Ok(self.bans.remove(&addr));
        }
        Ok(None)
    }

    pub fn get(&self, addr: &IpAddr) -> Option<&Ban> {
        self.bans.get(addr)
    }

    pub fn len(&self) -> usize {
        self.bans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bans.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Ban> {
        self.bans.values()
    }

    /// Adds or extends a ban. Returns what happened: nothing when an
    /// existing ban already lasts at least as long; when the table is full,
    /// the ban ending soonest yields (or the new one is refused when it
    /// would end sooner than every ban in force).
    pub fn insert(&mut self, ban: Ban) -> Inserted {
        let mut evicted = None;
        match self.bans.get(&ban.addr) {
            Some(old) if old.until >= ban.until => return Inserted::Unchanged,
            Some(_) => {}
            None if self.bans.len() >= self.max => match self.make_room(ban.until) {
                Ok(e) => evicted = e,
                Err(()) => return Inserted::Refused,
            },
            None => {}
        }
        // The heap holds at most a few stale entries per live ban: rebuild
        // it when stale ones dominate, so it stays bounded too.
        if self.expiry.len() > 2 * self.bans.len() + 64 {
            let live = &self.bans;
            self.expiry
                .retain(|Reverse((u, a))| live.get(a).is_some_and(|b| b.until == *u));
        }
        self.expiry.push(Reverse((ban.until, ban.addr)));
        self.bans.insert(ban.addr, ban);
        Inserted::Added { evicted }
    }

    pub fn remove(&mut self, addr: &IpAddr) -> Option<Ban> {
        self.bans.remove(addr)
    }

    /// Removes and returns the bans that ended at or before `now`.
    pub fn expire(&mut self, now: Timestamp) -> Vec<Ban> {
        let mut gone = Vec::new();
        while let Some(Reverse((until, addr))) = self.expiry.peek().copied() {
            if until > now {
                break;
            }
            self.expiry.pop();
            // The heap may hold stale entries for bans extended or lifted.
            if self.bans.get(&addr).is_some_and(|b| b.until == until) {
                if let Some(b) = self.bans.remove(&addr) {
                    gone.push(b);
                }
            }
        }
        gone
    }
}

/// What [`BanTable::insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The ban is in force (new or extended); `evicted`: the ban that
    /// yielded its place in a full table.
    Added { evicted: Option<Ban> },
    /// A ban at least as long was already in force.
    Unchanged,
    /// The table is full of bans that all last longer.
    Refused,
}

/// Packet and decision counters (the daemon's metrics read these).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub accepted: u64,
    pub dropped: u64,
    /// Verdicts by [`Reason::index`].
    pub by_reason: [u64; Reason::ALL.len()],
    /// Frames that were not IP (ARP...): accepted, not inspected.
    pub not_ip: u64,
    /// Packets a capture's snap length cut inside their headers (original
    /// length beyond the bytes captured): accepted, not inspected, never
    /// reported as `malformed`.
    pub truncated: u64,
    pub dns_queries: u64,
    pub probes: u64,
    /// Probes lost because the detector's channel was full.
    pub probes_dropped: u64,
    pub scans: u64,
    pub bans: u64,
    pub unbans: u64,
    /// Bans that yielded their place in a full ban table (`scan.max_bans`).
    pub bans_evicted: u64,
    /// Bans refused because the table was full of longer ones.
    pub bans_refused: u64,
    pub events: u64,
    /// Drop and dns events held back by the rate limit.
    pub events_suppressed: u64,
}

impl Counters {
    pub fn reason(&self, r: Reason) -> u64 {
        self.by_reason[r.index()]
    }
}

/// Probes handed to the detector thread in one channel operation.
pub const PROBE_BATCH: usize = 64;

/// The longest a probe waits for its batch to fill before
/// [`Engine::flush_due`] sends it, in packet time.
pub const PROBE_DELAY: Duration = Duration::from_millis(2);

/// How often housekeeping runs, in packet time.
const TICK: Duration = Duration::from_secs(1);

/// The engine. Owns the compiled config, the ban table, the detector link
/// and the event queue. Not `Sync`: one packet thread drives it.
pub struct Engine {
    cfg: Arc<Config>,
    mode: DetectorMode,
    bans: BanTable,
    detector: DetectorLink,
    aggregator: DropAggregator,
    bucket: TokenBucket,
    suppressed_drop: u64,
    suppressed_dns: u64,
    suppressed_since: Option<Timestamp>,
    events: Vec<Event>,
    /// Probes and answers waiting for the next hand-off to the detector
    /// thread.
    probe_batch: Vec<Observation>,
    counters: Counters,
    /// The remote addresses and destination ports dropped most, recently
    /// (`portcullis top`).
    tops: DropTops,
    next_tick: Timestamp,
    now: Timestamp,
    /// `would_block` instead of `blocked` in drop events (monitor, dry run).
    enforcing: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("bans", &self.bans.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds an engine; spawning the detector thread is the only thing that
    /// can fail.
    pub fn new(cfg: Arc<Config>, mode: DetectorMode) -> std::io::Result<Self> {
        let detector = DetectorLink::new(&cfg, mode)?;
        Ok(Self {
            mode,
            aggregator: DropAggregator::new(cfg.events.drop_window, cfg.events.max_drop_keys),
            bucket: TokenBucket::new(cfg.events.max_events_per_second),
            bans: BanTable::with_max(cfg.scan.max_bans),
            cfg,
            detector,
            suppressed_drop: 0,
            suppressed_dns: 0,
            suppressed_since: None,
            events: Vec::new(),
            probe_batch: Vec::new(),
            counters: Counters::default(),
            tops: DropTops::default(),
            next_tick: Timestamp::default(),
            now: Timestamp::default(),
            enforcing: true,
        })
    }

    /// Drop events say `would_block` instead of `blocked` (passive monitor,
    /// dry run). Verdicts are unchanged: the caller decides not to enforce.
    pub fn set_enforcing(&mut self, enforcing: bool) {
        self.enforcing = enforcing;
    }

    /// False after `set_enforcing(false)`.
    pub fn enforcing(&self) -> bool {
        self.enforcing
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.cfg
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn bans(&self) -> &BanTable {
        &self.bans
    }

    /// The remote addresses and destination ports dropped most in the last
    /// one to two [`crate::top::TOP_WINDOW`]s.
    pub fn drop_tops(&self) -> &DropTops {
        &self.tops
    }

    /// The latest detector statistics (the thread publishes them as it goes).
    pub fn detector_stats(&self) -> Option<DetectorStats> {
        match &self.detector {
            DetectorLink::Off => None,
            DetectorLink::Inline(d) => Some(d.stats()),
            DetectorLink::Thread(t) => Some(t.stats()),
        }
    }

    /// Events produced since the last drain, in order.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.events.drain(..)
    }

    /// Decides one packet.
    pub fn process(&mut self, pkt: &PacketIn<'_>) -> Verdict {
        self.counters.packets += 1;
        if pkt.ts >= self.next_tick {
            self.tick(pkt.ts);
        }
        self.now = self.now.max(pkt.ts);
        if let DetectorLink::Thread(_) = self.detector {
            self.collect_findings(pkt.ts);
        }
        let verdict = match decode_partial(pkt.link, pkt.data) {
            Ok(p) => {
                let dir = pkt
                    .dir
                    .unwrap_or_else(|| infer_direction(&self.cfg.home_net, &p));
                let ctx = Pkt {
                    data: pkt.data,
                    ts: pkt.ts,
                    dir,
                };
                self.decide(&p, &ctx)
            }
            Err(u) if u.error == DecodeError::NotIp => {
                self.counters.not_ip += 1;
                return Verdict::accept(Reason::Default, None);
            }
            Err(u) if u.cut && pkt.orig_len.is_some_and(|l| l as usize > pkt.data.len()) => {
                // The capture stopped inside the headers: nothing the
                // sender did wrong, nothing to decide on.
                self.counters.truncated += 1;
                return Verdict::accept(Reason::Default, None);
            }
            Err(u) => self.malformed(u, pkt),
        };
        self.counters.by_reason[verdict.reason.index()] += 1;
        match verdict.action {
            Action::Accept => self.counters.accepted += 1,
            Action::Drop => self.counters.dropped += 1,
        }
        verdict
    }

    /// The `malformed` policy. The event keeps every address and port that
    /// decoded; drops aggregate per (source, error).
    fn malformed(&mut self, u: Undecodable, pkt: &PacketIn<'_>) -> Verdict {
        let v = match self.cfg.policy.malformed {
            Action::Accept => Verdict::accept(Reason::Malformed, None),
            Action::Drop => Verdict::drop(Reason::Malformed, None),
        };
        if v.action == Action::Drop {
            let ts = pkt.ts;
            let p = u.partial;
            let dir = match (p.src, p.dst) {
                (Some(src), Some(dst)) => Some(
                    pkt.dir
                        .unwrap_or_else(|| infer_direction_of(&self.cfg.home_net, src, dst)),
                ),
                _ => pkt.dir,
            };
            let remote = match dir {
                Some(Direction::Outbound) => p.dst,
                _ => p.src,
            };
            let key = DropKey {
                reason: Reason::Malformed,
                rule: None,
                src: remote,
                detail: u.error as u64 + 1,
            };
            let action = self.drop_action();
            self.report_drop_with(key, ts, p.dst_port, |s| {
                let flow = p.src.map(|src| {
                    let community_id = match (p.dst, p.proto, p.src_port, p.dst_port) {
                        (Some(dst), Some(proto), Some(sp), Some(dp)) => Some(community_id(
                            s.cfg.events.community_id_seed,
                            src,
                            dst,
                            proto,
                            Some((sp, dp)),
                        )),
                        _ => None,
                    };
                    Flow {
                        src_ip: src,
                        src_port: p.src_port,
                        dest_ip: p.dst,
                        dest_port: p.dst_port,
                        proto: p.proto.map(|pr| pr.name().to_string()),
                        direction: dir,
                        community_id,
                        icmp_type: None,
                        icmp_code: None,
                    }
                });
                Event::new(
                    ts,
                    Body::Drop(DropEvent {
                        flow,
                        drop: DropInfo {
                            reason: Reason::Malformed,
                            rule: Some("policy.malformed".into()),
                            action,
                            count: 1,
                            first_seen: ts,
                            last_seen: ts,
                            error: Some(DecodeErrorName(u.error)),
                            dest_ports: Vec::new(),
                        },
                        dns: None,
                    }),
                )
            });
        }
        v
    }

    fn decide(&mut self, p: &PacketSummary, pkt: &Pkt<'_>) -> Verdict {
        let dir = pkt.dir;
        let shape = ProbeShape::classify(p);
        if shape.is_none() {
            self.offer_answer(p, pkt);
        }
        if let Some(v) = self.cfg.rules.allowed_peer(p, dir) {
            if let Some(shape) = shape {
                self.offer_probe(p, pkt, shape, true);
            }
            return v;
        }
        if !self.bans.is_empty() {
            let banned = self.bans.get(&dir.remote(p)).is_some()
                || (dir == Direction::Forwarded && self.bans.get(&p.dst).is_some());
            if banned {
                let v = Verdict::drop(Reason::Banned, None);
                self.report_drop(p, pkt, v, 0, || None);
                // The scan goes on: its summary counts what a banned
                // scanner still sent our way.
                if let Some(shape) = shape {
                    self.offer_probe(p, pkt, shape, false);
                }
                return v;
            }
        }
        if p.dst_port == Some(53) && matches!(p.proto, IpProto::Udp | IpProto::Tcp) {
            if let Some(v) = self.inspect_dns(p, pkt) {
                return v;
            }
        }
        let v = self.cfg.rules.evaluate(p, dir, self.cfg.policy.default);
        if v.action == Action::Drop {
            self.report_drop(p, pkt, v, 0, || None);
        }
        if let Some(shape) = shape {
            self.offer_probe(p, pkt, shape, false);
        }
        v
    }

    /// Step 4: DNS queries. Returns a verdict only when the name is blocked.
    fn inspect_dns(&mut self, p: &PacketSummary, pkt: &Pkt<'_>) -> Option<Verdict> {
        let payload = p.payload(pkt.data);
        let (msg, transport) = match p.proto {
            IpProto::Tcp => (dns::tcp_message(payload)?, Transport::Tcp),
            _ => (payload, Transport::Udp),
        };
        let query = dns::parse_query(msg).ok()?;
        self.counters.dns_queries += 1;
        let mut blocked = None;
        for q in query.questions() {
            if let DomainMatch::Blocked(rule) = self.cfg.rules.match_domain(&q.name) {
                blocked = Some((q, rule));
                break;
            }
        }
        let info = |q: &dns::Question| DnsInfo {
            kind: DnsRecord::Query,
            id: query.header.id,
            rrname: q.name.to_text(),
            rrtype: rrtype_name(q.qtype),
            transport,
        };
        match blocked {
            Some((q, rule)) => {
                // One window per blocked name: the name's hash is in the key,
                // its text is made only when an event is written.
                let v = Verdict::drop(Reason::BlockedDomain, Some(rule));
                let name = name_hash(q.name.as_bytes());
                self.report_drop(p, pkt, v, name, || Some(info(q)));
                Some(v)
            }
            None => {
                if self.cfg.events.dns_queries {
                    if let Some(q) = query.first() {
                        if self.admit(pkt.ts, EventType::Dns) {
                            let ev = Event::new(
                                pkt.ts,
                                Body::Dns(DnsEvent {
                                    flow: flow(&self.cfg, p, pkt.dir),
                                    dns: info(q),
                                }),
                            );
                            self.push(ev);
                        }
                    }
                }
                None
            }
        }
    }

    fn drop_action(&self) -> DropAction {
        if self.enforcing {
            DropAction::Blocked
        } else {
            DropAction::WouldBlock
        }
    }

    /// Reports a drop of a decoded packet, aggregated per (reason, rule,
    /// remote address, `detail`: the blocked name's hash or 0). `dns`
    /// builds the query record, only when an event is written.
    fn report_drop(
        &mut self,
        p: &PacketSummary,
        pkt: &Pkt<'_>,
        v: Verdict,
        detail: u64,
        dns: impl FnOnce() -> Option<DnsInfo>,
    ) {
        let ts = pkt.ts;
        let remote = pkt.dir.remote(p);
        let key = DropKey {
            reason: v.reason,
            rule: v.rule,
            src: Some(remote),
            detail,
        };
        let action = self.drop_action();
        self.report_drop_with(key, ts, p.dst_port, |s| {
            let rule = match (v.rule, v.reason) {
                (Some(r), _) => Some(s.cfg.rules.describe(r)),
                (None, Reason::Banned) => s.bans.get(&remote).map(|b| {
                    format!(
                        "ban ({}) until {}",
                        b.reason,
                        crate::events::rfc3339(b.until)
                    )
                }),
                _ => None,
            };
            Event::new(
                ts,
                Body::Drop(DropEvent {
                    flow: Some(flow(&s.cfg, p, pkt.dir)),
                    drop: DropInfo {
                        reason: v.reason,
                        rule,
                        action,
                        count: 1,
                        first_seen: ts,
                        last_seen: ts,
                        error: None,
                        dest_ports: Vec::new(),
                    },
                    dns: dns(),
                }),
            )
        });
    }

    /// Aggregates a drop; builds and writes its event only when it opens a
    /// window and the rate limit admits it, so a flood costs a hash probe
    /// per packet, not an event.
    fn report_drop_with(
        &mut self,
        key: DropKey,
        ts: Timestamp,
        dest_port: Option<u16>,
        build: impl FnOnce(&Self) -> Event,
    ) {
        self.tops.count(key.src, dest_port);
        let mut closed = Vec::new();
        let state = self.aggregator.count(key, ts, dest_port, &mut closed);
        for ev in closed {
            self.emit_limited(ev, EventType::Drop);
        }
        if state == Aggregated::Open && self.admit(ts, EventType::Drop) {
            let ev = build(self);
            self.aggregator.open(key, ts, &ev);
            self.push(ev);
        }
    }

    /// Takes a rate-limit token for a drop or dns event; counts it as
    /// suppressed when there is none.
    fn admit(&mut self, ts: Timestamp, kind: EventType) -> bool {
        if self.bucket.take(ts) {
            return true;
        }
        self.counters.events_suppressed += 1;
        self.suppressed_since.get_or_insert(ts);
        match kind {
            EventType::Dns => self.suppressed_dns += 1,
            _ => self.suppressed_drop += 1,
        }
        false
    }

    /// Writes an already built drop or dns event if the rate limit admits it.
    fn emit_limited(&mut self, ev: Event, kind: EventType) {
        if self.admit(ev.timestamp, kind) {
            self.push(ev);
        }
    }

    fn push(&mut self, ev: Event) {
        self.counters.events += 1;
        self.events.push(ev);
    }

    /// Whether `a` is inside `home_net`.
    fn at_home(&self, a: IpAddr) -> bool {
        self.cfg.home_net.iter().any(|n| n.contains(&a))
    }

    fn offer_probe(
        &mut self,
        p: &PacketSummary,
        pkt: &Pkt<'_>,
        shape: ProbeShape,
        allowlisted: bool,
    ) {
        let (src_port, dst_port) = match (shape, p.sctp) {
            (ProbeShape::Sctp, Some(s)) => (s.src_port, s.dst_port),
            _ => (p.src_port.unwrap_or(0), p.dst_port.unwrap_or(0)),
        };
        // Where each end sits: this host (the hook says so) or home_net.
        let src_home = pkt.dir == Direction::Outbound || self.at_home(p.src);
        let dst_home = pkt.dir == Direction::Inbound || self.at_home(p.dst);
        // Detector module docs, "What counts": from home to the outside,
        // and the shapes of connections already open, count on failure.
        let count = match shape {
            ProbeShape::BareAck | ProbeShape::Maimon => CountOn::Failure,
            _ if src_home && !dst_home => CountOn::Failure,
            _ => CountOn::Sight,
        };
        let probe = Probe {
            ts: pkt.ts,
            src: p.src,
            dst: p.dst,
            src_port,
            dst_port,
            shape,
            internal: src_home,
            count,
            allowlisted,
        };
        self.counters.probes += 1;
        self.observe(Observation::Probe(probe));
    }

    /// A negative answer (TCP RST, ICMP destination unreachable, SCTP
    /// ABORT) goes to the detector, which counts the probe it answers if
    /// that one counts on failure.
    fn offer_answer(&mut self, p: &PacketSummary, pkt: &Pkt<'_>) {
        use portcullis_wire::TcpFlags as F;
        let answer = match p.proto {
            IpProto::Tcp if p.tcp_flags.core() & F::RST != 0 => {
                let (Some(sp), Some(dp)) = (p.src_port, p.dst_port) else {
                    return;
                };
                Answer {
                    ts: pkt.ts,
                    prober: p.dst,
                    target: p.src,
                    prober_port: dp,
                    target_port: sp,
                    proto: 6,
                }
            }
            IpProto::Icmp | IpProto::Icmpv6 => {
                let Some(q) = portcullis_wire::unreachable_quote(p, pkt.data) else {
                    return;
                };
                let (sp, dp) = q.ports.unwrap_or((0, 0));
                Answer {
                    ts: pkt.ts,
                    prober: q.src,
                    target: q.dst,
                    prober_port: sp,
                    target_port: dp,
                    proto: q.proto,
                }
            }
            IpProto::Other(132) => match p.sctp {
                Some(s) if s.chunk == portcullis_wire::Sctp::ABORT => Answer {
                    ts: pkt.ts,
                    prober: p.dst,
                    target: p.src,
                    prober_port: s.dst_port,
                    target_port: s.src_port,
                    proto: 132,
                },
                _ => return,
            },
            _ => return,
        };
        self.observe(Observation::Answer(answer));
    }

    /// Hands an observation to the detector: at once when it runs inline,
    /// in the next batch when it has its own thread.
    fn observe(&mut self, o: Observation) {
        match &mut self.detector {
            DetectorLink::Off => {}
            DetectorLink::Inline(d) => {
                let found = match &o {
                    Observation::Probe(p) => d.observe(p),
                    Observation::Answer(a) => d.answer(a),
                    Observation::Tick(t) => {
                        d.expire(*t);
                        None
                    }
                };
                let ends: Vec<ScanSummary> = d.drain_ends().collect();
                let now = o.ts();
                for e in ends {
                    self.on_summary(e, now);
                }
                if let Some(f) = found {
                    self.on_finding(f, now);
                }
            }
            DetectorLink::Thread(_) => {
                if self.probe_batch.capacity() == 0 {
                    self.probe_batch.reserve_exact(PROBE_BATCH);
                }
                self.probe_batch.push(o);
                if self.probe_batch.len() >= PROBE_BATCH {
                    self.flush();
                }
            }
        }
    }

    /// Hands waiting probes to the detector thread if the oldest has waited
    /// [`PROBE_DELAY`] of packet time (or a batch is full, which sends it
    /// anyway). Live sources call this after each batch of packets: under
    /// load probes travel in batches and the detector thread is woken a few
    /// hundred times a second instead of once per packet batch (on two
    /// cores that wake-up was a measurable share of the CPU), while a scan
    /// is still seen within milliseconds. `tick` and `finish` send
    /// everything.
    pub fn flush_due(&mut self) {
        if let Some(first) = self.probe_batch.first() {
            if self.now.since(first.ts()) >= PROBE_DELAY {
                self.flush();
            }
        }
    }

    /// Hands waiting probes to the detector thread now; `tick` and
    /// `finish` call it.
    pub fn flush(&mut self) {
        if let DetectorLink::Thread(t) = &self.detector {
            if !self.probe_batch.is_empty() {
                let batch = std::mem::take(&mut self.probe_batch);
                let n = batch.len() as u64;
                if !t.offer_batch(batch) {
                    self.counters.probes_dropped += n;
                }
            }
        }
    }

    fn collect_findings(&mut self, now: Timestamp) {
        if let DetectorLink::Thread(t) = &self.detector {
            if !t.has_findings() {
                return;
            }
            for r in t.try_findings() {
                self.on_report(r, now);
            }
        }
    }

    fn on_report(&mut self, r: Report, now: Timestamp) {
        match r {
            Report::Start(f) => self.on_finding(f, now),
            Report::End(e) => self.on_summary(e, now),
        }
    }

    /// What is done about a scanner: ban it, or only report it and why.
    fn scan_action(
        &self,
        src: IpAddr,
        internal: bool,
        allowlisted: bool,
    ) -> (ScanAction, Option<NotBanned>) {
        if allowlisted || self.cfg.rules.is_allowlisted(src) {
            (ScanAction::Alert, Some(NotBanned::Allowlisted))
        } else if !self.cfg.scan.ban {
            (ScanAction::Alert, Some(NotBanned::BanDisabled))
        } else if self.cfg.critical_peers.iter().any(|(a, _)| *a == src) {
            (ScanAction::Alert, Some(NotBanned::CriticalPeer))
        } else if internal && self.cfg.scan.internal_action == ScanAction::Alert {
            (ScanAction::Alert, Some(NotBanned::Internal))
        } else {
            (ScanAction::Ban, None)
        }
    }

    /// A scan: report it and, unless the source may never be banned, ban it.
    fn on_finding(&mut self, f: ScanFinding, now: Timestamp) {
        self.counters.scans += 1;
        let (action, note) = self.scan_action(f.src, f.internal, f.allowlisted);
        let scan = ScanInfo {
            phase: ScanPhase::Start,
            kind: f.kind,
            pattern: f.pattern,
            slow: f.slow,
            ports: f.ports,
            hosts: f.hosts,
            hosts_estimated: false,
            port_sample: f.port_sample,
            swept_port: f.swept_port,
            tcp_flags: f.tcp_flags.map(TcpFlagsHex),
            probes: u64::from(f.probes),
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            duration: None,
            internal: f.internal,
            action,
            note,
        };
        let ts = now.max(f.last_seen);
        self.push(Event::new(
            ts,
            Body::Scan(ScanEvent {
                source: Source { src_ip: f.src },
                scan,
            }),
        ));
        if action == ScanAction::Ban {
            let reason = format!("scan:{}", f.kind.as_str());
            self.ban(f.src, ts, self.cfg.scan.ban_duration, reason);
        }
    }

    /// A scan episode ended: one event with the whole scan.
    fn on_summary(&mut self, e: ScanSummary, now: Timestamp) {
        let (action, note) = self.scan_action(e.src, e.internal, e.allowlisted);
        let scan = ScanInfo {
            phase: ScanPhase::End,
            kind: e.kind,
            pattern: e.pattern,
            slow: e.slow,
            ports: e.ports,
            hosts: e.hosts,
            hosts_estimated: e.hosts_estimated,
            port_sample: e.port_sample,
            swept_port: e.swept_port,
            tcp_flags: e.tcp_flags.map(TcpFlagsHex),
            probes: e.probes,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            duration: Some(Seconds(e.last_seen.since(e.first_seen))),
            internal: e.internal,
            action,
            note,
        };
        self.push(Event::new(
            now.max(e.last_seen),
            Body::Scan(ScanEvent {
                source: Source { src_ip: e.src },
                scan,
            }),
        ));
    }

    /// Bans `addr` from `now` for `duration`. Allowlisted and loopback
    /// addresses are refused (returns false). Emits a `ban` event.
    pub fn ban(
        &mut self,
        addr: IpAddr,
        now: Timestamp,
        duration: Duration,
        reason: String,
    ) -> bool {
        if self.cfg.rules.is_allowlisted(addr) {
            return false;
        }
        let until = now.saturating_add(duration);
        let ban = Ban {
            addr,
            since: now,
            until,
            reason: reason.clone(),
        };
        match self.bans.insert(ban) {
            Inserted::Unchanged => return false,
            Inserted::Refused => {
                self.counters.bans_refused += 1;
                return false;
            }
            Inserted::Added { evicted } => {
                if let Some(old) = evicted {
                    // Its `unban` event takes it out of the kernel's set
                    // before the new ban goes in.
                    self.counters.bans_evicted += 1;
                    self.unbanned(old, now, UnbanReason::Evicted);
                }
            }
        }
        self.counters.bans += 1;
        self.push(Event::new(
            now,
            Body::Ban(BanEvent {
                source: Source { src_ip: addr },
                ban: BanInfo {
                    reason,
                    duration: duration.as_secs(),
                    expires: until,
                    enforced: true,
                    error: None,
                    attempts: None,
                },
            }),
        ));
        true
    }

    /// Puts back a ban saved before a restart, without a new `ban` event
    /// (it was reported when it began). Refused for allowlisted addresses
    /// and bans already over at `now`.
    pub fn restore_ban(&mut self, ban: Ban, now: Timestamp) -> bool {
        if ban.until <= now || self.cfg.rules.is_allowlisted(ban.addr) {
            return false;
        }
        // More saved bans than `scan.max_bans`: the ones ending soonest
        // are not restored.
        matches!(self.bans.insert(ban), Inserted::Added { .. })
    }

    /// Swaps in a new configuration (SIGHUP). Bans survive, except those on
    /// addresses the new allowlist covers (lifted, with an `unban` event);
    /// the detector is restarted only if its settings changed; open drop
    /// windows are closed first.
    pub fn reload(&mut self, cfg: Arc<Config>) -> std::io::Result<()> {
        let now = self.now;
        self.flush();
        if cfg.scan != self.cfg.scan {
            self.close_detector(now);
            self.detector = DetectorLink::new(&cfg, self.mode)?;
        }
        let mut out = Vec::new();
        self.aggregator.flush_all(now, &mut out);
        for ev in out {
            self.emit_limited(ev, EventType::Drop);
        }
        if cfg.events != self.cfg.events {
            self.aggregator = DropAggregator::new(cfg.events.drop_window, cfg.events.max_drop_keys);
            self.bucket = TokenBucket::new(cfg.events.max_events_per_second);
        }
        let lifted: Vec<IpAddr> = self
            .bans
            .iter()
            .map(|b| b.addr)
            .filter(|a| cfg.rules.is_allowlisted(*a))
            .collect();
        self.cfg = cfg;
        for addr in lifted {
            if let Some(b) = self.bans.remove(&addr) {
                self.unbanned(b, now, UnbanReason::Allowlisted);
            }
        }
        Ok(())
    }

    /// Lifts a ban by hand. Emits an `unban` event.
    pub fn unban(&mut self, addr: IpAddr, now: Timestamp) -> bool {
        match self.bans.remove(&addr) {
            Some(b) => {
                self.unbanned(b, now, UnbanReason::Manual);
                true
            }
            None => false,
        }
    }

    fn unbanned(&mut self, b: Ban, now: Timestamp, why: UnbanReason) {
        self.counters.unbans += 1;
        self.push(Event::new(
            now,
            Body::Unban(UnbanEvent {
                source: Source { src_ip: b.addr },
                ban: UnbanInfo {
                    reason: why,
                    duration: b.until.since(b.since).as_secs(),
                    expires: b.until,
                    enforced: true,
                },
            }),
        ));
    }

    /// Housekeeping at `now` (packet time): expire bans, close drop windows,
    /// report suppressed events, age the detector. Called by `process` once
    /// per second of packet time; live sources also call it on a timer so
    /// bans end when traffic is quiet.
    pub fn tick(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
        self.next_tick = now.saturating_add(TICK);
        self.tops.rotate(now);
        for b in self.bans.expire(now) {
            let at = b.until;
            self.unbanned(b, at, UnbanReason::Expired);
        }
        let mut out = Vec::new();
        self.aggregator.flush_due(now, &mut out);
        for ev in out {
            self.emit_limited(ev, EventType::Drop);
        }
        self.flush_suppressed(now);
        if !matches!(self.detector, DetectorLink::Off) {
            // The detector ages its state and ends quiet episodes on time
            // even when no probe comes.
            self.observe(Observation::Tick(now));
        }
        self.flush();
        self.collect_findings(now);
    }

    fn flush_suppressed(&mut self, now: Timestamp) {
        if let Some(since) = self.suppressed_since {
            if now.since(since) >= TICK || now == self.now {
                let ev = Event::new(
                    now,
                    Body::Suppressed(SuppressedEvent {
                        suppressed: SuppressedInfo {
                            drop: self.suppressed_drop,
                            dns: self.suppressed_dns,
                            scan: 0,
                            ban: 0,
                            unban: 0,
                            since,
                        },
                    }),
                );
                self.suppressed_drop = 0;
                self.suppressed_dns = 0;
                self.suppressed_since = None;
                self.push(ev);
            }
        }
    }

    /// Ends every open scan episode (their summaries written at `now`): a
    /// detector thread is shut down (left `Off`), an inline detector is
    /// kept.
    fn close_detector(&mut self, now: Timestamp) {
        if matches!(self.detector, DetectorLink::Thread(_)) {
            if let DetectorLink::Thread(t) =
                std::mem::replace(&mut self.detector, DetectorLink::Off)
            {
                let (_, reports) = t.shutdown();
                for r in reports {
                    self.on_report(r, now);
                }
            }
        }
        if let DetectorLink::Inline(d) = &mut self.detector {
            d.finish();
            let ends: Vec<ScanSummary> = d.drain_ends().collect();
            for e in ends {
                self.on_summary(e, now);
            }
        }
    }

    /// End of input (replay end, shutdown): closes every drop window and
    /// reports what is pending, at the last packet time seen. Bans stay.
    pub fn finish(&mut self) {
        let now = self.now;
        self.flush();
        self.close_detector(now);
        for b in self.bans.expire(now) {
            let at = b.until;
            self.unbanned(b, at, UnbanReason::Expired);
        }
        let mut out = Vec::new();
        self.aggregator.flush_all(now, &mut out);
        for ev in out {
            self.emit_limited(ev, EventType::Drop);
        }
        if self.suppressed_since.is_some() {
            self.flush_suppressed(now);
        }
    }

    /// The latest packet time seen.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Which lists, rules and ban apply to `addr` and what they add up to,
    /// the ban judged at `now` (pass [`Engine::now`] for the latest packet
    /// time, or the caller's clock). Pure: reads the rules and the ban
    /// table, changes nothing. O(n) in the list sizes (it scans the entries
    /// as written to name *every* match): for the control socket, not the
    /// packet path. See [`crate::explain`].
    pub fn explain(&self, addr: IpAddr, now: Timestamp) -> Explanation {
        let mut e = crate::explain::explain(
            &self.cfg.rules,
            self.cfg.policy.default,
            self.bans.get(&addr),
            addr,
            now,
        );
        e.critical_peer = self
            .cfg
            .critical_peers
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, why)| why.clone());
        e
    }
}

/// The flow fields of an event about `p`.
fn flow(cfg: &Config, p: &PacketSummary, dir: Direction) -> Flow {
    let ports = match (p.src_port, p.dst_port, p.icmp) {
        (Some(s), Some(d), _) => Some((s, d)),
        (_, _, Some((t, c))) => Some((u16::from(t), u16::from(c))),
        _ => None,
    };
    Flow {
        src_ip: p.src,
        src_port: p.src_port,
        dest_ip: Some(p.dst),
        dest_port: p.dst_port,
        proto: Some(p.proto.name().to_string()),
        direction: Some(dir),
        community_id: Some(community_id(
            cfg.events.community_id_seed,
            p.src,
            p.dst,
            p.proto,
            ports,
        )),
        icmp_type: p.icmp.map(|(t, _)| t),
        icmp_code: p.icmp.map(|(_, c)| c),
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
