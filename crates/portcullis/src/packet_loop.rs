//! The packet thread's loop: a [`PacketPath`] feeds the engine; between
//! batches the loop ticks the engine, finishes reloads, answers control
//! requests, refreshes the status snapshot and hands the engine's events
//! to the writer (bans and unbans also to the kernel thread).
//!
//! Everything it talks to arrives as a channel or a trait object
//! ([`Wiring`]), so tests drive it turn by turn over an in-memory path,
//! with the test itself (or a kernel thread over a recording runner) on
//! the other end of the kernel channel.
//!
//! **Invariant: the packet thread never blocks on anything but its packet
//! source**: every send is a `try_send`; a full event channel drops the
//! event and counts it, a full kernel channel drops the ban or unban for
//! the kernel (it holds in user space), counts it and says so in the
//! event (`enforced: false`).
//!
//! Where bans are enforced, a `ban` event goes to the writer through the
//! kernel thread, which fills in whether the kernel took the ban.
//!
//! **A packet source that fails is reopened, not fatal.** The path closes
//! it and reads its other sources; the loop reports it (a `packet_source`
//! event, a line on stderr), reopens it with backoff
//! ([`crate::path::recover`]) and shows it in `status`. The kernel rules,
//! the bans and the engine's state stay as they are meanwhile. Only a
//! failure the path calls fatal ends the loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use portcullis_engine::events::{Body, Event, PacketSourceEvent, SourceInfo, SourceState};
use portcullis_engine::Engine;

use crate::alert_limit::AlertLimiter;
use crate::clock::now;
use crate::config::DaemonConfig;
use crate::control::{Answer, Pending, Request};
use crate::fleet::FleetLink;
use crate::kernel_thread::{KernelCmd, KernelStats};
use crate::notify::Notifier;
use crate::output::WriterStats;
use crate::path::recover::Recovery;
use crate::path::{PacketPath, SourceFailure};
use crate::reload::{self, PendingReload};
use crate::requests;
use crate::status::{DetectorStatus, KernelStatus, PacketCounters, Status};
use crate::top_view::{self, RecentScans};

/// How long the packet thread waits for packets before serving timers,
/// signals and control requests.
pub const POLL: Duration = Duration::from_millis(100);
/// How often loss counters are read and the metrics snapshot refreshed.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// What `status` reports that does not change while the daemon runs.
#[derive(Debug, Clone)]
pub struct Info {
    pub started: Instant,
    /// `inline`, `monitor`, `monitor (dry run)`.
    pub mode: &'static str,
    pub kernel_path: String,
    /// The rules file as `status` names it.
    pub config: String,
    /// Addresses protected on top of the rules file.
    pub protect: Vec<ipnet::IpNet>,
    /// Bans go into the kernel.
    pub bans_enforced: bool,
}

/// The loop's ends: where its commands, events and snapshots go and where
/// control requests come from.
pub struct Wiring<'a> {
    /// Commands for the kernel thread.
    pub kernel: Sender<KernelCmd>,
    /// Events for the writer.
    pub events: Sender<Event>,
    /// The kernel thread's events (`ban` with the kernel's answer,
    /// `rules`), forwarded to the writer.
    pub reports: Receiver<Event>,
    /// The kernel thread's counters.
    pub kernel_stats: Arc<KernelStats>,
    /// The event writer's counters.
    pub writer_stats: Arc<WriterStats>,
    /// Control socket requests.
    pub requests: Receiver<Pending>,
    /// The snapshot the metrics server serves.
    pub latest: Arc<Mutex<Option<Status>>>,
    /// systemd's notification socket (no-op without one).
    pub notify: &'a Notifier,
    /// Fleet mode (CrowdSec): findings to push, its status and decisions.
    pub fleet: Option<FleetLink>,
}

/// The packet thread: it owns the engine.
pub struct PacketLoop<'a> {
    engine: Engine,
    path: Box<dyn PacketPath>,
    wiring: Wiring<'a>,
    info: Info,
    /// Read again on reload.
    config: DaemonConfig,
    reloading: Option<PendingReload>,
    dropped_events: u64,
    /// Bans and unbans the kernel thread's full channel did not take.
    commands_dropped: u64,
    /// The latest scan events, for `top`.
    scans: RecentScans,
    /// The limit on `scan`, `ban` and `unban` events.
    alerts: AlertLimiter,
    last_tick: Instant,
    last_stats: Option<Instant>,
    /// WatchdogSec= in the unit: how often to prove the loop turns.
    watchdog: Option<Duration>,
    last_watchdog: Instant,
    /// Packet sources that failed: when to reopen them.
    recovery: Recovery,
}

impl<'a> PacketLoop<'a> {
    pub fn new(
        engine: Engine,
        path: Box<dyn PacketPath>,
        wiring: Wiring<'a>,
        info: Info,
        config: DaemonConfig,
    ) -> Self {
        let alerts = AlertLimiter::new(engine.config().events.max_events_per_second);
        Self {
            alerts,
            engine,
            path,
            wiring,
            info,
            config,
            reloading: None,
            dropped_events: 0,
            commands_dropped: 0,
            scans: RecentScans::default(),
            last_tick: Instant::now(),
            last_stats: None,
            // At twice the rate systemd asks for.
            watchdog: crate::notify::watchdog_interval().map(|d| d / 2),
            last_watchdog: Instant::now(),
            recovery: Recovery::default(),
        }
    }

    /// Says we serve: the ready line on stderr, READY to systemd.
    pub fn announce(&self) {
        log::info!("{}", self.path.ready_line());
        let _ = self
            .wiring
            .notify
            .ready_with_status(&format!("{}; {}", self.info.mode, self.info.kernel_path));
    }

    /// Turns until `term` is set; `hup` starts a reload.
    pub fn run(&mut self, term: &AtomicBool, hup: &AtomicBool) -> Result<()> {
        while !term.load(Ordering::Relaxed) {
            if hup.swap(false, Ordering::Relaxed) {
                self.start_reload();
            }
            self.turn()?;
        }
        Ok(())
    }

    /// SIGHUP: starts a reload unless one is in progress.
    pub fn start_reload(&mut self) {
        if self.reloading.is_some() {
            log::warn!("a reload is already in progress; this SIGHUP is ignored");
        } else {
            let _ = self.wiring.notify.reloading();
            self.reloading = Some(reload::start(&self.config, &self.wiring.kernel));
        }
    }

    /// One turn: a finished reload taken, the path stepped (waiting up to
    /// [`POLL`]), the timers served, control requests answered, events
    /// forwarded.
    pub fn turn(&mut self) -> Result<()> {
        if let Some(pending) = &self.reloading {
            let outcome = match pending.try_recv() {
                Ok(r) => Some(r),
                Err(crossbeam_channel::TryRecvError::Empty) => None,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    Some(Err("the reload thread died".to_owned()))
                }
            };
            if let Some(outcome) = outcome {
                let ev = reload::finish(outcome, &mut self.engine);
                self.emit(ev);
                self.reloading = None;
                // The old rules stay in force on failure: ready either way.
                let _ = self.wiring.notify.ready();
            }
        }
        if let Some(every) = self.watchdog {
            if self.last_watchdog.elapsed() >= every {
                let _ = self.wiring.notify.watchdog();
                self.last_watchdog = Instant::now();
            }
        }
        self.reopen_due()?;
        if let Err(f) = self.path.step(&mut self.engine, POLL) {
            self.source_failed(f)?;
        }
        if self.last_tick.elapsed() >= POLL {
            self.engine.tick(now());
            self.last_tick = Instant::now();
        }
        if self.last_stats.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
            self.last_stats = Some(Instant::now());
            self.stats();
        }
        let pending: Vec<Pending> = self.wiring.requests.try_iter().collect();
        for p in pending {
            let answer = match &p.request {
                Request::Status => {
                    let s = self.status();
                    Answer::Now(serde_json::to_value(s).map_err(|e| e.to_string()))
                }
                Request::Top { n } => {
                    let v = top_view::build(
                        self.status(),
                        self.engine.drop_tops(),
                        self.engine.bans(),
                        now(),
                        self.info.bans_enforced,
                        &self.scans,
                        n.unwrap_or(10),
                    );
                    Answer::Now(serde_json::to_value(v).map_err(|e| e.to_string()))
                }
                req => {
                    let a = requests::answer(
                        &mut self.engine,
                        req,
                        &self.wiring.kernel,
                        self.info.bans_enforced,
                    );
                    match &self.wiring.fleet {
                        Some(f) => f.augment(req, a),
                        None => a,
                    }
                }
            };
            p.answer(answer);
        }
        self.forward();
        Ok(())
    }

    /// Reopens the failed sources whose time has come.
    fn reopen_due(&mut self) -> Result<()> {
        let now = Instant::now();
        for id in self.recovery.due(now) {
            match self.path.reopen(&id) {
                Ok(()) => {
                    let info = self.recovery.reopened(&id, now);
                    self.source_event(info);
                }
                Err(f) => self.source_failed(f)?,
            }
        }
        Ok(())
    }

    /// A source failed: counted, reported, its reopening scheduled; the
    /// error itself when no reopening can mend it.
    fn source_failed(&mut self, f: SourceFailure) -> Result<()> {
        let error = format!("{:#}", f.error);
        if let Some(info) = self.recovery.failed(&f.id, &error, f.fatal, Instant::now()) {
            self.source_event(info);
        }
        if f.fatal {
            return Err(f.into_error());
        }
        Ok(())
    }

    /// A `packet_source` event and its line for the operator.
    fn source_event(&mut self, info: SourceInfo) {
        let id = format!("{} {}", info.kind.as_str(), info.name);
        match info.state {
            SourceState::Down => eprintln!(
                "portcullis: {id} failed: {}; kernel rules and bans stay in force, reopening in {} ms",
                info.error.as_deref().unwrap_or("?"),
                info.retry_in_ms.unwrap_or(0)
            ),
            SourceState::Up => eprintln!(
                "portcullis: {id} reopened after {} ms down",
                info.down_ms.unwrap_or(0)
            ),
            SourceState::Fatal => eprintln!(
                "portcullis: {id} failed and cannot be reopened: {}",
                info.error.as_deref().unwrap_or("?")
            ),
        }
        let ev = Event::new(
            now(),
            Body::PacketSource(PacketSourceEvent {
                packet_source: info,
            }),
        );
        if let Err(TrySendError::Full(_)) = self.wiring.events.try_send(ev) {
            self.dropped_events += 1;
        }
    }

    /// Every [`STATS_EVERY`]: loss events, the metrics snapshot, the line
    /// `systemctl status` shows.
    fn stats(&mut self) {
        for ev in self.path.losses() {
            self.emit(ev);
        }
        // The metrics server reads this copy; never wait for a scrape.
        let snapshot = self.status();
        if let Ok(mut g) = self.wiring.latest.try_lock() {
            *g = Some(snapshot);
        }
        let c = self.engine.counters();
        let down = self.recovery.down();
        let _ = self.wiring.notify.status(&format!(
            "{}: {} packets, {} dropped, {} scans, {} bans active{}",
            self.info.mode,
            c.packets,
            c.dropped,
            c.scans,
            self.engine.bans().len(),
            if down.is_empty() {
                String::new()
            } else {
                format!("; waiting for {}", down.join(", "))
            }
        ));
    }

    /// Shutting down: settles what the path holds, closes the engine's
    /// windows, forwards the last events and closes the event channel.
    /// Returns how many events were dropped because the writer fell behind.
    /// The bans file is the kernel thread's alone: it has seen every ban
    /// and unban (including the expiries `finish` reports).
    pub fn finish(self) -> u64 {
        let Self {
            mut engine,
            mut path,
            wiring,
            info,
            mut dropped_events,
            mut commands_dropped,
            mut scans,
            mut alerts,
            ..
        } = self;
        let _ = wiring.notify.stopping();
        path.finish();
        drop(path);
        engine.finish();
        let mut lost = Lost {
            events: &mut dropped_events,
            commands: &mut commands_dropped,
        };
        forward(
            &mut engine,
            &wiring,
            info.bans_enforced,
            &mut lost,
            &mut scans,
            &mut alerts,
        );
        // The kernel thread's answers to the last bans: a moment for them.
        let deadline = Instant::now() + FINISH_WAIT;
        while let Ok(ev) = wiring.reports.recv_deadline(deadline) {
            if let Err(TrySendError::Full(_)) = wiring.events.try_send(ev) {
                dropped_events += 1;
            }
        }
        dropped_events
    }

    /// One event to the writer; a full channel drops it, counted.
    fn emit(&mut self, ev: Event) {
        if let Err(TrySendError::Full(_)) = self.wiring.events.try_send(ev) {
            self.dropped_events += 1;
        }
    }

    fn forward(&mut self) {
        let mut lost = Lost {
            events: &mut self.dropped_events,
            commands: &mut self.commands_dropped,
        };
        forward(
            &mut self.engine,
            &self.wiring,
            self.info.bans_enforced,
            &mut lost,
            &mut self.scans,
            &mut self.alerts,
        );
    }

    /// A snapshot for `portcullis status` and the metrics.
    fn status(&mut self) -> Status {
        let info = &self.info;
        let engine = &self.engine;
        let mut protected = vec!["loopback".to_owned()];
        protected.extend(
            info.protect
                .iter()
                .map(|n| format!("{} (SSH client)", n.addr())),
        );
        let allow = engine.config().rules.stats();
        let n = allow.allow.ipv4_prefixes + allow.allow.ipv6_prefixes;
        if n > info.protect.len() {
            protected.push(format!("allow.ip: {} prefixes", n - info.protect.len()));
        }
        let mut s = Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            mode: info.mode.to_owned(),
            enforcing: engine.enforcing(),
            bans_enforced: info.bans_enforced,
            uptime_seconds: info.started.elapsed().as_secs(),
            config: info.config.clone(),
            kernel_path: info.kernel_path.clone(),
            packets: PacketCounters {
                // The engine's limit (drop, dns) and ours (scan, ban, unban).
                events_suppressed: engine.counters().events_suppressed + self.alerts.total,
                ..PacketCounters::from(engine.counters())
            },
            queue: None,
            observed: None,
            capture: Vec::new(),
            bans_active: engine.bans().len(),
            protected,
            detector: engine.detector_stats().as_ref().map(DetectorStatus::from),
            events_dropped: self.dropped_events
                + self
                    .wiring
                    .kernel_stats
                    .events_dropped
                    .load(Ordering::Relaxed),
            events_write_failed: self.wiring.writer_stats.lost.load(Ordering::Relaxed),
            event_log_errors: self.wiring.writer_stats.errors.load(Ordering::Relaxed),
            kernel: kernel_status(&self.wiring.kernel_stats, self.commands_dropped),
            sources: self.recovery.status(Instant::now()),
            fleet: self.wiring.fleet.as_ref().and_then(FleetLink::status),
        };
        self.path.status(&mut s);
        s
    }
}

/// How long `finish` waits for the kernel thread's answers to the last
/// bans.
const FINISH_WAIT: Duration = Duration::from_millis(200);

/// The loop's loss counters, as `forward` adds to them.
struct Lost<'a> {
    /// Events the writer's full channel did not take.
    events: &'a mut u64,
    /// Bans and unbans the kernel thread's full channel did not take.
    commands: &'a mut u64,
}

fn kernel_status(k: &KernelStats, commands_dropped: u64) -> KernelStatus {
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    KernelStatus {
        rules_restored: n(&k.rules_restored),
        rules_restore_failed: n(&k.rules_restore_failed),
        bans_failed: n(&k.bans_failed),
        bans_enforced_late: n(&k.bans_enforced_late),
        unbans_failed: n(&k.unbans_failed),
        retrying: n(&k.retrying),
        flows_ended: n(&k.flows_ended),
        flow_end_failures: n(&k.flow_end_failures),
        commands_dropped,
    }
}

/// Why a ban the kernel thread never got is not enforced.
const KERNEL_BUSY: &str =
    "the kernel thread's queue is full: the ban holds in user space only (held packets)";

/// The engine's events to the writer (a full channel drops the event and
/// counts it); bans and unbans also to the kernel thread where bans are
/// `enforced`: a `ban` event then travels with its ban and comes back
/// through `reports` with the kernel's answer. What the kernel thread
/// reports is forwarded too.
/// Scans are remembered in `scans` for `top`.
fn forward(
    engine: &mut Engine,
    wiring: &Wiring<'_>,
    enforced: bool,
    lost: &mut Lost<'_>,
    scans: &mut RecentScans,
    alerts: &mut AlertLimiter,
) {
    let t = now();
    alerts.set_rate(engine.config().events.max_events_per_second);
    // The kernel thread's reports: the `ban` events of the engine's bans
    // (already let through below) with the kernel's answer, and its own:
    // a ban the kernel took on a later try, which the limit sees now.
    let mut out: Vec<Event> = wiring
        .reports
        .try_iter()
        .filter(|ev| {
            let late = matches!(&ev.body, Body::Ban(e) if e.ban.attempts.is_some());
            !late || alerts.admit(ev, t)
        })
        .collect();
    let events: Vec<Event> = engine.drain_events().collect();
    for mut ev in events {
        scans.record(&ev);
        // Held back or not, every ban and unban reaches the kernel.
        let write = alerts.admit(&ev, t);
        match &mut ev.body {
            Body::Ban(e) => {
                e.ban.enforced = enforced;
                let ban = engine.bans().get(&e.source.src_ip).cloned();
                if let Some(b) = ban.filter(|_| enforced) {
                    // The event travels with its ban (when it is written).
                    let event = if write { Some(Box::new(ev)) } else { None };
                    let cmd = KernelCmd::Ban {
                        ban: b,
                        ack: None,
                        event,
                    };
                    match wiring.kernel.try_send(cmd) {
                        Ok(()) => continue,
                        Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) => {
                            *lost.commands += 1;
                            log::error!("a ban was not handed to the kernel: {KERNEL_BUSY}");
                            let KernelCmd::Ban {
                                event: Some(back), ..
                            } = c
                            else {
                                continue;
                            };
                            ev = *back;
                            if let Body::Ban(e) = &mut ev.body {
                                e.ban.enforced = false;
                                e.ban.error = Some(KERNEL_BUSY.to_owned());
                            }
                        }
                    }
                }
            }
            Body::Scan(e) => {
                // Fleet mode: a scan we ban is pushed as an alert, where
                // bans are enforced (a dry run's would not be real).
                if let Some(f) = wiring.fleet.as_ref().filter(|_| enforced) {
                    if e.scan.action == portcullis_engine::config::ScanAction::Ban {
                        f.finding(e, engine.config().scan.ban_duration);
                    }
                }
            }
            Body::Unban(e) => {
                e.ban.enforced = enforced;
                if enforced
                    && wiring
                        .kernel
                        .try_send(KernelCmd::Unban(e.source.src_ip, None))
                        .is_err()
                {
                    // The kernel's element ends by its own timeout.
                    *lost.commands += 1;
                    e.ban.enforced = false;
                    log::error!(
                        "an unban was not handed to the kernel (its queue is full): {} stays in the kernel's ban set until the ban's time is over",
                        e.source.src_ip
                    );
                }
            }
            _ => {}
        }
        if write {
            out.push(ev);
        }
    }
    out.extend(alerts.report(t));
    for ev in out {
        if let Err(TrySendError::Full(_)) = wiring.events.try_send(ev) {
            *lost.events += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::{IpAddr, SocketAddr};
    use std::path::PathBuf;

    use portcullis_engine::engine::DetectorMode;
    use portcullis_engine::{Action, Reason, Timestamp, Verdict};

    use super::*;
    use crate::path::memory::MemoryPath;
    use crate::plan::KernelRules;
    use crate::testing::{after, syn, RecordingRunner};

    const SCANNER: &str = "198.18.7.7";
    const HOST: &str = "198.18.0.1";

    /// The packet loop over a memory path, with the test holding every
    /// other end.
    struct Harness {
        packets: PacketLoop<'static>,
        path: MemoryPath,
        kernel: Receiver<KernelCmd>,
        events: Receiver<Event>,
        requests: Sender<Pending>,
    }

    fn harness(config: Option<PathBuf>, bans_enforced: bool) -> Harness {
        harness_with(config, bans_enforced, None)
    }

    /// A kernel thread's ends: its commands, its reports, its counters.
    type KernelEnd = (Sender<KernelCmd>, Receiver<Event>, Arc<KernelStats>);

    /// `kernel`: a kernel thread's ends (else the test reads the commands).
    fn harness_with(
        config: Option<PathBuf>,
        bans_enforced: bool,
        kernel: Option<KernelEnd>,
    ) -> Harness {
        let source = DaemonConfig {
            path: config,
            protect: Vec::new(),
            home_flag: Vec::new(),
            host_home: false,
            peers: false,
        };
        // Detection inline: a ban is decided within the turn that saw the
        // scan, so every turn's outcome is exact.
        let mut engine = Engine::new(source.load().unwrap(), DetectorMode::Inline).unwrap();
        engine.set_enforcing(true);
        let (kernel_tx, kernel_rx) = crossbeam_channel::bounded(1024);
        let (events_tx, events_rx) = crossbeam_channel::bounded(1024);
        let (requests_tx, requests_rx) = crossbeam_channel::bounded(16);
        let path = MemoryPath::default();
        let (kernel, reports, kernel_stats) = kernel.unwrap_or_else(|| {
            (
                kernel_tx,
                crossbeam_channel::never(),
                Arc::new(KernelStats::default()),
            )
        });
        let wiring = Wiring {
            kernel,
            events: events_tx,
            reports,
            kernel_stats,
            writer_stats: Arc::new(WriterStats::default()),
            requests: requests_rx,
            latest: Arc::new(Mutex::new(None)),
            notify: Box::leak(Box::new(Notifier::disabled())),
            fleet: None,
        };
        let info = Info {
            started: Instant::now(),
            mode: "inline",
            kernel_path: "memory".into(),
            config: "test".into(),
            protect: Vec::new(),
            bans_enforced,
        };
        Harness {
            packets: PacketLoop::new(engine, Box::new(path.clone()), wiring, info, source),
            path,
            kernel: kernel_rx,
            events: events_rx,
            requests: requests_tx,
        }
    }

    impl Harness {
        /// SYNs from the scanner to `ports` of the host, 1 ms apart.
        fn scan(&self, t: Timestamp, ports: impl IntoIterator<Item = u16>) {
            let src = SocketAddr::new(SCANNER.parse().unwrap(), 40_000);
            for (i, port) in ports.into_iter().enumerate() {
                let dst = SocketAddr::new(HOST.parse().unwrap(), port);
                self.path.push(syn(src, dst, after(t, i as u64)));
            }
        }

        fn events(&self) -> Vec<Event> {
            self.events.try_iter().collect()
        }

        /// Turns until an event `pick` accepts arrives (5 s at most).
        fn turn_until<T>(&mut self, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                self.packets.turn().unwrap();
                if let Some(t) = self.events.try_iter().find_map(|e| pick(&e)) {
                    return t;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            panic!("no such event within 5 s");
        }

        /// Asks what a control client would; the answer.
        fn ask(&mut self, request: Request) -> Answer {
            let (p, answer) = Pending::new(request);
            self.requests.send(p).unwrap();
            self.packets.turn().unwrap();
            answer.try_recv().unwrap()
        }
    }

    fn scanner() -> IpAddr {
        SCANNER.parse().unwrap()
    }

    fn actions(v: &[Verdict]) -> Vec<(Action, Reason)> {
        v.iter().map(|v| (v.action, v.reason)).collect()
    }

    #[test]
    fn a_scan_in_the_loop_is_banned_in_the_kernel_and_its_next_packets_dropped() {
        let mut h = harness(None, true);
        h.scan(now(), 1..=10);
        h.packets.turn().unwrap();

        // The default policy (port_threshold 5): the sixth port makes a
        // scan; the ban applies from the next packet on.
        let v = actions(&h.path.verdicts());
        assert_eq!(v.len(), 10);
        assert_eq!(v[..6], [(Action::Accept, Reason::Default); 6]);
        assert_eq!(v[6..], [(Action::Drop, Reason::Banned); 4]);

        // The ban goes to the kernel thread with its event, which waits
        // there for the kernel's answer.
        let cmds: Vec<KernelCmd> = h.kernel.try_iter().collect();
        let [KernelCmd::Ban {
            ban,
            ack: None,
            event: Some(ev),
        }] = &cmds[..]
        else {
            panic!("one ban for the kernel thread, got {} commands", cmds.len());
        };
        assert_eq!(ban.addr, scanner());
        assert!(matches!(&ev.body, Body::Ban(b) if b.source.src_ip == scanner() && b.ban.enforced));

        let events = h.events();
        assert!(events
            .iter()
            .any(|e| matches!(&e.body, Body::Scan(s) if s.source.src_ip == scanner())));
        assert!(!events.iter().any(|e| matches!(&e.body, Body::Ban(_))));
    }

    #[test]
    fn control_requests_are_answered_between_batches() {
        let mut h = harness(None, true);
        h.scan(now(), 1..=6);
        h.packets.turn().unwrap();
        let _ = h.kernel.try_iter().count();

        let Answer::Now(Ok(status)) = h.ask(Request::Status) else {
            panic!("status");
        };
        assert_eq!(status["mode"], "inline");
        assert_eq!(status["bans_active"], 1);
        assert_eq!(status["packets"]["packets"], 6, "{status:#}");

        let Answer::Now(Ok(bans)) = h.ask(Request::Bans) else {
            panic!("bans");
        };
        assert_eq!(bans[0]["addr"], SCANNER);
        assert_eq!(bans[0]["enforced"], true);

        // An unban is answered once the kernel thread has it.
        let Answer::AfterKernel(value, done) = h.ask(Request::Unban { addr: scanner() }) else {
            panic!("unban waits for the kernel");
        };
        assert_eq!(value["unbanned"], true);
        // The request's unban carries the ack; the `unban` event's copy
        // (the kernel thread writes an address once per batch) does not.
        let cmds: Vec<KernelCmd> = h.kernel.try_iter().collect();
        let [KernelCmd::Unban(addr, Some(ack)), KernelCmd::Unban(again, None)] = &cmds[..] else {
            panic!(
                "the request's unban, then the event's; got {} commands",
                cmds.len()
            );
        };
        assert_eq!((*addr, *again), (scanner(), scanner()));
        ack.send(Ok(())).unwrap();
        assert_eq!(done.try_recv(), Ok(Ok(())));
        assert!(h
            .events()
            .iter()
            .any(|e| matches!(&e.body, Body::Unban(u) if u.source.src_ip == scanner())));

        let Answer::Now(Err(e)) = h.ask(Request::Unban { addr: scanner() }) else {
            panic!("a second unban is refused");
        };
        assert!(e.contains("is not banned"), "{e}");
    }

    #[test]
    fn top_answers_the_scanner_its_ban_drops_and_the_scan() {
        let mut h = harness(None, true);
        // Ten SYNs: the sixth makes the scan, the last four are dropped as
        // banned.
        h.scan(now(), 1..=10);
        h.packets.turn().unwrap();
        let Answer::Now(Ok(v)) = h.ask(Request::Top { n: Some(5) }) else {
            panic!("top");
        };
        let top: crate::top_view::TopView = serde_json::from_value(v).unwrap();
        assert_eq!(top.status.packets.packets, 10);
        assert_eq!(top.status.mode, "inline");
        assert_eq!(top.drop_sources.len(), 1, "{top:#?}");
        assert_eq!(
            (top.drop_sources[0].addr, top.drop_sources[0].drops),
            (scanner(), 4)
        );
        let ports: Vec<u16> = top.drop_ports.iter().map(|p| p.port).collect();
        assert_eq!(ports, [7, 8, 9, 10]);
        assert_eq!(top.bans_total, 1);
        assert_eq!(top.bans[0].ban.addr, scanner());
        assert_eq!(top.bans[0].origin, "scan");
        assert!(top.bans[0].ban.enforced);
        assert_eq!(top.scans.len(), 1);
        let s = &top.scans[0];
        assert_eq!(
            (
                s.src_ip,
                s.phase.as_str(),
                s.kind.as_str(),
                s.pattern.as_str(),
                s.action.as_str()
            ),
            (scanner(), "start", "syn", "vertical", "ban")
        );
        assert_eq!(s.ports, 6);
        // n is bounded.
        let Answer::Now(Ok(v)) = h.ask(Request::Top { n: Some(1_000_000) }) else {
            panic!("top");
        };
        assert!(v["drop_sources"].as_array().unwrap().len() <= crate::top_view::MAX_TOP);
    }

    #[test]
    fn bans_nothing_enforces_are_logged_and_never_sent_to_the_kernel() {
        let mut h = harness(None, false);
        h.scan(now(), 1..=10);
        h.packets.turn().unwrap();
        assert_eq!(h.kernel.try_iter().count(), 0);
        let enforced: Vec<bool> = h
            .events()
            .iter()
            .filter_map(|e| match &e.body {
                Body::Ban(b) => Some(b.ban.enforced),
                _ => None,
            })
            .collect();
        assert_eq!(enforced, [false]);
    }

    fn source_events(events: &[Event]) -> Vec<SourceInfo> {
        events
            .iter()
            .filter_map(|e| match &e.body {
                Body::PacketSource(p) => Some(p.packet_source.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_failed_source_is_reopened_with_backoff_and_bans_and_rules_stay() {
        let mut h = harness(None, true);
        h.scan(now(), 1..=6);
        h.packets.turn().unwrap();
        assert_eq!(h.kernel.try_iter().count(), 1, "the scanner is banned");
        let _ = h.events();

        // The source fails; its first two reopenings fail too.
        h.path.fail("recvmmsg: ENOBUFS", false, 2);
        let failed_at = Instant::now();
        h.packets
            .turn()
            .expect("a source failure does not end the loop");
        // Packets arriving meanwhile wait for the source to come back.
        h.scan(now(), 7..=8);
        let up = h.turn_until(|e| match &e.body {
            Body::PacketSource(p) if p.packet_source.state == SourceState::Up => {
                Some(p.packet_source.clone())
            }
            _ => None,
        });
        let took = failed_at.elapsed();
        // Retries after 100, then 200, then 400 ms.
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(h.path.reopens(), 3);
        assert_eq!((up.failures, up.reopens), (3, 1));
        assert!(up.down_ms.unwrap() >= 700, "{up:?}");

        h.packets.turn().unwrap();
        // The ban held throughout: the scanner's packets after the reopen
        // are dropped, and nothing was unbanned in the kernel.
        let v = actions(&h.path.verdicts());
        assert_eq!(v[6..], [(Action::Drop, Reason::Banned); 2]);
        assert_eq!(h.kernel.try_iter().count(), 0);

        let Answer::Now(Ok(status)) = h.ask(Request::Status) else {
            panic!("status");
        };
        assert_eq!(status["bans_active"], 1);
        let src = &status["sources"][0];
        assert_eq!(src["kind"], "queue", "{status:#}");
        assert_eq!(src["state"], "up", "{status:#}");
        assert_eq!(
            (src["failures"].as_u64(), src["reopens"].as_u64()),
            (Some(3), Some(1))
        );
        assert!(
            crate::metrics::render(&serde_json::from_value(status).unwrap())
                .contains("portcullis_source_reopens_total{kind=\"queue\",name=\"memory\"} 1")
        );
    }

    #[test]
    fn a_source_down_is_reported_once_per_error_and_shown_in_status() {
        let mut h = harness(None, true);
        h.path.fail("interface gone", false, 1000);
        h.packets.turn().unwrap();
        let deadline = Instant::now() + Duration::from_millis(800);
        while Instant::now() < deadline {
            h.packets.turn().unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        // Down, then the retries' different error once; not one per retry.
        let reported = source_events(&h.events());
        let errors: Vec<(SourceState, Option<String>)> = reported
            .iter()
            .map(|s| (s.state, s.error.clone()))
            .collect();
        assert_eq!(
            errors,
            [
                (SourceState::Down, Some("interface gone".into())),
                (SourceState::Down, Some("still failing".into())),
            ]
        );
        assert!((3..=5).contains(&h.path.reopens()), "{}", h.path.reopens());
        let Answer::Now(Ok(status)) = h.ask(Request::Status) else {
            panic!("status");
        };
        let src = &status["sources"][0];
        assert_eq!(src["state"], "down", "{status:#}");
        assert_eq!(src["error"], "still failing", "{status:#}");
    }

    #[test]
    fn a_fatal_source_failure_ends_the_loop_with_its_error() {
        let mut h = harness(None, true);
        h.path.fail("no NFQUEUE support", true, 0);
        let err = h.packets.turn().unwrap_err();
        assert!(format!("{err:#}").contains("no NFQUEUE support"), "{err:#}");
        let reported = source_events(&h.events());
        assert_eq!(reported.len(), 1);
        assert_eq!(reported[0].state, SourceState::Fatal);
    }

    #[test]
    fn finishing_settles_the_path_and_closes_the_event_channel() {
        let h = harness(None, true);
        let (path, events) = (h.path.clone(), h.events.clone());
        h.scan(now(), [22]);
        assert_eq!(h.packets.finish(), 0);
        assert!(path.finished());
        // The event channel is closed once what is left was forwarded.
        let _ = events.iter().count();
        assert!(events.recv().is_err());
    }

    #[test]
    fn a_reload_takes_new_rules_once_the_kernel_has_them_and_keeps_the_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.json");
        std::fs::write(&rules, r#"{"policy": {"default": "accept"}}"#).unwrap();
        let runner = RecordingRunner::new();
        let cfg = DaemonConfig {
            path: Some(rules.clone()),
            protect: Vec::new(),
            home_flag: Vec::new(),
            host_home: false,
            peers: false,
        }
        .load()
        .unwrap();
        let (kernel, end) = kernel_thread(&runner, &cfg);
        let mut h = harness_with(Some(rules.clone()), true, Some(end));
        let telnet = |h: &Harness| {
            let src = SocketAddr::new("198.18.9.9".parse().unwrap(), 40_000);
            let dst = SocketAddr::new(HOST.parse().unwrap(), 23);
            h.path.push(syn(src, dst, now()));
        };
        telnet(&h);
        h.packets.turn().unwrap();

        std::fs::write(&rules, r#"{"block": {"port": [23]}}"#).unwrap();
        h.packets.start_reload();
        let error = h.turn_until(|e| match &e.body {
            Body::Reload(r) => Some(r.reload.error.clone()),
            _ => None,
        });
        assert_eq!(error, None);
        // The kernel thread wrote the new sets before the engine took them.
        let calls = runner.calls();
        assert!(calls.iter().any(|c| c.stdin.contains("23")), "{calls:#?}");
        telnet(&h);
        h.packets.turn().unwrap();

        std::fs::write(&rules, "{ not json").unwrap();
        h.packets.start_reload();
        let error = h.turn_until(|e| match &e.body {
            Body::Reload(r) => Some(r.reload.error.clone()),
            _ => None,
        });
        assert!(error.unwrap().contains("rules.json is invalid"));
        telnet(&h);
        h.packets.turn().unwrap();

        assert_eq!(
            actions(&h.path.verdicts()),
            [
                (Action::Accept, Reason::Default),
                (Action::Drop, Reason::BlockedPort),
                (Action::Drop, Reason::BlockedPort),
            ]
        );
        // The loop's end closes the kernel channel: the thread tears down.
        h.packets.finish();
        kernel.join().unwrap().unwrap();
        let last = runner.calls().pop().unwrap();
        assert!(last.stdin.contains("table inet portcullis"), "{last:?}");
    }

    /// A kernel thread over `runner`, installed with `cfg`.
    fn kernel_thread(
        runner: &Arc<RecordingRunner>,
        cfg: &Arc<portcullis_engine::config::Config>,
    ) -> (std::thread::JoinHandle<Result<()>>, KernelEnd) {
        let fw = runner.firewall(KernelRules::Full, cfg);
        let (kernel_tx, kernel_rx) = crossbeam_channel::bounded(1024);
        let (links, reports) =
            crate::kernel_thread::Links::new(Arc::new(std::sync::atomic::AtomicU64::new(0)));
        let stats = Arc::clone(&links.stats);
        let kernel = crate::kernel_thread::spawn(
            Some((fw, KernelRules::Full)),
            Arc::clone(cfg),
            kernel_rx,
            None,
            links,
        )
        .unwrap();
        (kernel, (kernel_tx, reports, stats))
    }

    fn status(h: &mut Harness) -> Status {
        let Answer::Now(Ok(v)) = h.ask(Request::Status) else {
            panic!("status");
        };
        serde_json::from_value(v).unwrap()
    }

    /// Issue 11, item 4: a ban the kernel refuses is reported
    /// `enforced: false` with the kernel's error, counted, and tried again
    /// until the kernel takes it; then a second `ban` event says so.
    #[test]
    fn a_ban_the_kernel_refuses_is_reported_unenforced_and_retried_until_it_holds() {
        let runner = RecordingRunner::new();
        let cfg = Arc::new(portcullis_engine::config::Config::default_policy().unwrap());
        let (kernel, end) = kernel_thread(&runner, &cfg);
        let mut h = harness_with(None, true, Some(end));
        runner.fail_scripts_with(Some(&format!("{SCANNER} timeout")));
        h.scan(now(), 1..=10);
        let first = h.turn_until(|e| match &e.body {
            Body::Ban(b) if b.source.src_ip == scanner() => Some(b.ban.clone()),
            _ => None,
        });
        assert!(!first.enforced, "{first:?}");
        let error = first.error.unwrap_or_default();
        assert!(error.contains("No buffer space available"), "{error}");
        let s = status(&mut h);
        assert_eq!((s.kernel.bans_failed, s.kernel.bans_enforced_late), (1, 0));
        assert_eq!(s.kernel.retrying, 1);

        // The kernel takes it again: the retry (1 s later) succeeds.
        runner.fail_scripts_with(None);
        let t = Instant::now();
        let second = h.turn_until(|e| match &e.body {
            Body::Ban(b) if b.source.src_ip == scanner() => Some(b.ban.clone()),
            _ => None,
        });
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(second.enforced && second.error.is_none(), "{second:?}");
        assert_eq!(second.attempts, Some(2));
        let s = status(&mut h);
        assert_eq!((s.kernel.bans_failed, s.kernel.bans_enforced_late), (1, 1));
        assert_eq!(s.kernel.retrying, 0);
        // Written: the first try and the retry.
        let tries = runner
            .calls()
            .iter()
            .filter(|c| c.stdin.contains(&format!("{SCANNER} timeout")))
            .count();
        assert_eq!(tries, 2);
        h.packets.finish();
        kernel.join().unwrap().unwrap();
    }

    /// Issue 11, item 3: our rules vanish (as after `nft flush ruleset`):
    /// the kernel thread puts them back with the bans, a `rules` event
    /// says what was missing, `status` counts it.
    #[test]
    fn vanished_rules_are_put_back_and_reported_in_a_rules_event() {
        let runner = RecordingRunner::new();
        let cfg = Arc::new(portcullis_engine::config::Config::default_policy().unwrap());
        let (kernel, end) = kernel_thread(&runner, &cfg);
        let mut h = harness_with(None, true, Some(end));
        h.scan(now(), 1..=10);
        h.turn_until(|e| matches!(&e.body, Body::Ban(_)).then_some(()));
        runner.clear();
        runner.flush();
        let rules = h.turn_until(|e| match &e.body {
            Body::Rules(r) => Some(r.rules.clone()),
            _ => None,
        });
        assert_eq!(
            rules.action,
            portcullis_engine::events::RulesAction::Restored
        );
        assert_eq!(rules.missing, ["table"]);
        assert_eq!(rules.bans_restored, 1);
        let calls = runner.calls();
        assert!(
            calls
                .iter()
                .any(|c| c.stdin.contains("add table inet portcullis")),
            "{calls:#?}"
        );
        assert!(calls
            .iter()
            .any(|c| c.stdin.contains(&format!("{SCANNER} timeout"))));
        assert_eq!(status(&mut h).kernel.rules_restored, 1);
        h.packets.finish();
        kernel.join().unwrap().unwrap();
    }

    /// Putting the rules back fails: one `restore_failed` event for the
    /// run of failures, every try counted; `restored` once it works.
    #[test]
    fn a_failed_repair_is_reported_once_counted_and_tried_again() {
        use portcullis_engine::events::RulesAction;
        let runner = RecordingRunner::new();
        let cfg = Arc::new(portcullis_engine::config::Config::default_policy().unwrap());
        let (kernel, end) = kernel_thread(&runner, &cfg);
        let mut h = harness_with(None, true, Some(end));
        runner.fail_scripts_with(Some("add table inet portcullis"));
        runner.flush();
        let rules = |e: &Event| match &e.body {
            Body::Rules(r) => Some(r.rules.clone()),
            _ => None,
        };
        let first = h.turn_until(rules);
        assert_eq!(first.action, RulesAction::RestoreFailed);
        assert!(first.error.unwrap_or_default().contains("No buffer space"));
        // Tried again every second: counted, not reported again.
        let until = Instant::now() + Duration::from_millis(2_500);
        let mut again = 0;
        while Instant::now() < until {
            h.packets.turn().unwrap();
            again += h.events().iter().filter_map(rules).count();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(again, 0);
        let s = status(&mut h);
        assert!(s.kernel.rules_restore_failed >= 3, "{:?}", s.kernel);
        assert_eq!(s.kernel.rules_restored, 0);
        runner.fail_scripts_with(None);
        let back = h.turn_until(rules);
        assert_eq!(back.action, RulesAction::Restored);
        assert_eq!(status(&mut h).kernel.rules_restored, 1);
        h.packets.finish();
        kernel.join().unwrap().unwrap();
    }

    /// Issue 11, item 4: a ban the kernel thread's full channel cannot
    /// take is counted and its event says it is not enforced, and why.
    #[test]
    fn a_ban_the_full_kernel_channel_refuses_is_counted_and_reported() {
        let (full, _keep) = crossbeam_channel::bounded(1);
        full.send(KernelCmd::Unban("198.18.0.99".parse().unwrap(), None))
            .unwrap();
        let (_reports_tx, reports) = crossbeam_channel::bounded(1);
        let end = (full, reports, Arc::new(KernelStats::default()));
        let mut h = harness_with(None, true, Some(end));
        h.scan(now(), 1..=10);
        h.packets.turn().unwrap();
        let ban = h
            .events()
            .into_iter()
            .find_map(|e| match e.body {
                Body::Ban(b) => Some(b.ban),
                _ => None,
            })
            .expect("the ban event, straight to the writer");
        assert!(!ban.enforced);
        assert!(ban.error.unwrap_or_default().contains("queue is full"));
        assert_eq!(status(&mut h).kernel.commands_dropped, 1);
    }
}
