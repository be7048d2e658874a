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
                req => requests::answer(
                    &mut self.engine,
                    req,
                    &self.wiring.kernel,
                    self.info.bans_enforced,
                ),
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

