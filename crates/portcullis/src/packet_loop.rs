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
//! event and counts it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use portcullis_engine::events::{Body, Event};
use portcullis_engine::Engine;

use crate::clock::now;
use crate::config::DaemonConfig;
use crate::control::{Answer, Pending, Request};
use crate::fleet::FleetLink;
use crate::kernel_thread::KernelCmd;
use crate::notify::Notifier;
use crate::path::PacketPath;
use crate::reload::{self, PendingReload};
use crate::requests;
use crate::status::{DetectorStatus, PacketCounters, Status};

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
    last_tick: Instant,
    last_stats: Option<Instant>,
    /// WatchdogSec= in the unit: how often to prove the loop turns.
    watchdog: Option<Duration>,
    last_watchdog: Instant,
}

impl<'a> PacketLoop<'a> {
    pub fn new(
        engine: Engine,
        path: Box<dyn PacketPath>,
        wiring: Wiring<'a>,
        info: Info,
        config: DaemonConfig,
    ) -> Self {
        Self {
            engine,
            path,
            wiring,
            info,
            config,
            reloading: None,
            dropped_events: 0,
            last_tick: Instant::now(),
            last_stats: None,
            // At twice the rate systemd asks for.
            watchdog: crate::notify::watchdog_interval().map(|d| d / 2),
            last_watchdog: Instant::now(),
        }
    }

    /// Says we serve: the ready line on stderr, READY to systemd.
    pub fn announce(&self) {
        eprintln!("portcullis: {}", self.path.ready_line());
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
            eprintln!("portcullis: a reload is already in progress; this SIGHUP is ignored");
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
                let _ = self.wiring.events.try_send(ev);
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
        self.path.step(&mut self.engine, POLL)?;
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

    /// Every [`STATS_EVERY`]: loss events, the metrics snapshot, the line
    /// `systemctl status` shows.
    fn stats(&mut self) {
        for ev in self.path.losses() {
            let _ = self.wiring.events.try_send(ev);
        }
        // The metrics server reads this copy; never wait for a scrape.
        let snapshot = self.status();
        if let Ok(mut g) = self.wiring.latest.try_lock() {
            *g = Some(snapshot);
        }
        let c = self.engine.counters();
        let _ = self.wiring.notify.status(&format!(
            "{}: {} packets, {} dropped, {} scans, {} bans active",
            self.info.mode,
            c.packets,
            c.dropped,
            c.scans,
            self.engine.bans().len()
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
            ..
        } = self;
        let _ = wiring.notify.stopping();
        path.finish();
        drop(path);
        engine.finish();
        forward(
            &mut engine,
            &wiring,
            info.bans_enforced,
            &mut dropped_events,
        );
        dropped_events
    }

    fn forward(&mut self) {
        forward(
            &mut self.engine,
            &self.wiring,
            self.info.bans_enforced,
            &mut self.dropped_events,
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
            packets: PacketCounters::from(engine.counters()),
            queue: None,
            observed: None,
            capture: Vec::new(),
            bans_active: engine.bans().len(),
            protected,
            detector: engine.detector_stats().as_ref().map(DetectorStatus::from),
            events_dropped: self.dropped_events,
            fleet: self.wiring.fleet.as_ref().and_then(FleetLink::status),
        };
        self.path.status(&mut s);
        s
    }
}

/// The engine's events to the writer (a full channel drops the event and
/// counts it in `dropped`); bans and unbans also to the kernel thread where
/// bans are `enforced`.
fn forward(engine: &mut Engine, wiring: &Wiring<'_>, enforced: bool, dropped: &mut u64) {
    let events: Vec<Event> = engine.drain_events().collect();
    for mut ev in events {
        match &mut ev.body {
            Body::Ban(e) => {
                let ban = engine.bans().get(&e.source.src_ip).cloned();
                if let Some(b) = ban.filter(|_| enforced) {
                    let _ = wiring.kernel.try_send(KernelCmd::Ban(b, None));
                }
                e.ban.enforced = enforced;
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
                if enforced {
                    let _ = wiring
                        .kernel
                        .try_send(KernelCmd::Unban(e.source.src_ip, None));
                }
                e.ban.enforced = enforced;
            }
            _ => {}
        }
        if let Err(TrySendError::Full(_)) = wiring.events.try_send(ev) {
            *dropped += 1;
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

    /// `kernel`: the kernel thread's channel (else the test reads it).
    fn harness_with(
        config: Option<PathBuf>,
        bans_enforced: bool,
        kernel: Option<Sender<KernelCmd>>,
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
        let wiring = Wiring {
            kernel: kernel.unwrap_or(kernel_tx),
            events: events_tx,
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

        let cmds: Vec<KernelCmd> = h.kernel.try_iter().collect();
        let [KernelCmd::Ban(ban, None)] = &cmds[..] else {
            panic!("one ban for the kernel thread, got {} commands", cmds.len());
        };
        assert_eq!(ban.addr, scanner());

        let events = h.events();
        assert!(events
            .iter()
            .any(|e| matches!(&e.body, Body::Scan(s) if s.source.src_ip == scanner())));
        let bans: Vec<bool> = events
            .iter()
            .filter_map(|e| match &e.body {
                Body::Ban(b) if b.source.src_ip == scanner() => Some(b.ban.enforced),
                _ => None,
            })
            .collect();
        assert_eq!(bans, [true]);
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
        let fw = runner.firewall(KernelRules::Full, &cfg);
        let (kernel_tx, kernel_rx) = crossbeam_channel::bounded(1024);
        let kernel = crate::kernel_thread::spawn(
            Some((fw, KernelRules::Full)),
            Arc::clone(&cfg),
            kernel_rx,
            None,
            Arc::new(std::sync::atomic::AtomicU64::new(0)),
        )
        .unwrap();
        let mut h = harness_with(Some(rules.clone()), true, Some(kernel_tx));
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
}
