//! `portcullis run`: the engine in the kernel's packet path.
//!
//! Threads:
//! - the **packet thread** (this one): NFQUEUE batches -> engine -> batched
//!   verdicts; NXDOMAIN answers for blocked DNS queries; owns the engine;
//! - the **detector** thread (inside the engine);
//! - the **kernel** thread: every nft call (ban batches, reload, teardown)
//!   and the ban state file, so the packet path never waits for a process;
//! - the **event writer**: JSON Lines and console, behind a bounded channel;
//! - the **control** thread: the Unix socket of `portcullis status|bans|
//!   ban|unban`; it hands each request to the packet thread, which answers
//!   between batches (it owns the engine).
//!
//! **Invariant: the packet thread never blocks on anything but the queue
//! socket** (with a 100 ms timeout, so signals and timers are served).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use portcullis_engine::config::{BlockedDnsResponse, Config};
use portcullis_engine::engine::{Ban, DetectorMode, Engine, PacketIn};
use portcullis_engine::events::{rfc3339, Event, EventType, QueueInfo, ReloadInfo};
use portcullis_engine::{Action, Direction, Reason, Timestamp};
use portcullis_kernel::{Firewall, KernelOptions, KernelPlan};
use portcullis_nfqueue::{Hook, Queue, QueueConfig, Responder, Verdict as NfVerdict};
use portcullis_wire::LinkType;

use crate::cli::EngineArgs;
use crate::config;
use crate::control::{self, Answer, Pending, Request};
use crate::output::Output;
use crate::state::StateDir;
use crate::status::{DetectorStatus, PacketCounters, QueueStatus, Status};

/// Options of `portcullis run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Where bans are kept across restarts.
    #[arg(long, default_value = "/var/lib/portcullis")]
    pub state_dir: PathBuf,
    /// The control socket (`portcullis status`, `bans`, `ban`, `unban`),
    /// root only.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Do not protect the SSH client that started the daemon. By default
    /// its address (from SSH_CONNECTION, ours or an ancestor's: sudo drops
    /// it) is never blocked nor banned, so a bad rule cannot lock you out.
    #[arg(long)]
    pub no_protect_ssh: bool,
}

/// How long the packet thread waits for packets before serving timers and
/// signals.
const POLL: Duration = Duration::from_millis(100);
/// How long the kernel thread gathers ban changes into one nft call.
const BAN_BATCH_WINDOW: Duration = Duration::from_millis(20);
/// Events waiting for the writer before new ones are dropped (and counted).
const EVENT_QUEUE: usize = 65_536;
/// How often queue drop counters are read.
const QUEUE_STATS_EVERY: Duration = Duration::from_secs(1);

fn now() -> Timestamp {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    Timestamp::from_micros(us)
}

/// Tells whoever asked for a kernel change whether it is done.
type Ack = Sender<std::result::Result<(), String>>;

/// What the kernel thread is asked to do.
enum KernelCmd {
    Ban(Ban, Option<Ack>),
    Unban(IpAddr, Option<Ack>),
    Update(Arc<Config>, Sender<Result<()>>),
}

/// Addresses never blocked nor banned on top of the rules file.
fn protected(args: &RunArgs) -> Vec<ipnet::IpNet> {
    if args.no_protect_ssh {
        return Vec::new();
    }
    match crate::lockout::ssh_client() {
        Some(addr) => {
            eprintln!(
                "portcullis: protecting the SSH client {addr}: never blocked nor banned (--no-protect-ssh to turn off)"
            );
            vec![ipnet::IpNet::from(addr)]
        }
        None => Vec::new(),
    }
}

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    let protect = protected(args);
    let cfg = config::load_protecting(args.engine.config.as_deref(), &protect)?;
    let state = StateDir::open(&args.state_dir)?;
    // Before any kernel change: a second daemon must not clean up the
    // first one's rules as if they were a crash's leftovers.
    let (control, requests) = control::Server::start(&args.socket)?;

    // Signals first, so that a TERM during setup still tears down.
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&term))
            .context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .context("installing signal handlers")?;

    let opts = KernelOptions::default();
    let plan = KernelPlan::from_config(&cfg, &opts);
    let skip_mark = opts.skip_mark;
    let firewall = Firewall::install(&plan).context("installing kernel rules")?;
    let kernel_path = firewall.queue_path().to_string();
    eprintln!(
        "portcullis: kernel rules installed (table inet portcullis); queue path: {kernel_path}"
    );

    // From here on, every exit path must tear the kernel rules down: the
    // kernel thread does it when its channel closes.
    let (kernel_tx, kernel_rx) = crossbeam_channel::bounded::<KernelCmd>(65_536);
    let queue_hits = Arc::new(AtomicU64::new(UNKNOWN));
    let kernel = spawn_kernel_thread(firewall, kernel_rx, state.clone(), Arc::clone(&queue_hits))?;
    let ctl = Control {
        kernel: &kernel_tx,
        term: &term,
        hup: &hup,
        queue_hits: &queue_hits,
        skip_mark,
        requests: &requests,
        info: Info {
            started: Instant::now(),
            mode: "inline",
            kernel_path,
            config: args.engine.config.as_ref().map_or_else(
                || "embedded default policy".to_owned(),
                |p| p.display().to_string(),
            ),
            protect,
        },
    };
    let result = serve(args, cfg, &state, &ctl);
    // No more requests: the engine is gone.
    drop(control);
    drop(kernel_tx);
    let teardown = kernel
        .join()
        .map_err(|_| anyhow::anyhow!("the kernel thread panicked"))?;
    match (result, teardown) {
        (Ok(code), Ok(())) => {
            eprintln!("portcullis: kernel rules removed");
            Ok(code)
        }
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(e)) => Err(e.context("removing kernel rules")),
        (Err(e), Err(t)) => Err(e.context(format!("also, removing kernel rules failed: {t:#}"))),
    }
}

/// What the packet thread shares with the rest of the daemon.
struct Control<'a> {
    /// Commands for the kernel thread.
    kernel: &'a Sender<KernelCmd>,
    /// SIGINT/SIGTERM seen.
    term: &'a AtomicBool,
    /// SIGHUP seen.
    hup: &'a AtomicBool,
    /// Packets our queue rule sent (kernel thread), or [`UNKNOWN`].
    queue_hits: &'a AtomicU64,
    /// The mark our own packets (DNS answers) carry.
    skip_mark: u32,
    /// Control socket requests.
    requests: &'a Receiver<Pending>,
    /// What `status` reports that does not change.
    info: Info,
}

/// The fixed part of [`Status`].
struct Info {
    started: Instant,
    mode: &'static str,
    kernel_path: String,
    config: String,
    protect: Vec<ipnet::IpNet>,
}

fn serve(
    args: &RunArgs,
    cfg: Arc<Config>,
    state: &StateDir,
    ctl: &Control<'_>,
) -> Result<ExitCode> {
    let Control {
        kernel,
        term,
        hup,
        queue_hits,
        skip_mark,
        requests,
        ..
    } = *ctl;
    let mut qcfg = QueueConfig::new(cfg.inline.queue);
    qcfg.fail_open = !cfg.inline.fail_closed;
    qcfg.max_len = cfg.inline.queue_length;
    qcfg.spin = Duration::from_micros(50);
    let mut queue = Queue::open(&qcfg).context("opening the NFQUEUE")?;
    let mut responder = Responder::open().context("opening the raw sockets for DNS answers")?;
    // Our answers must pass our own chains, not come back to the queue.
    responder
        .set_mark(skip_mark)
        .context("marking DNS answers")?;

    let mut engine = Engine::new(cfg, DetectorMode::Thread { capacity: 1024 })
        .context("starting the scan detector")?;
    let start = now();
    match state.load_bans() {
        Ok(bans) => {
            let mut restored = 0;
            for b in bans {
                if engine.restore_ban(b.clone(), start) {
                    restored += 1;
                    let _ = kernel.try_send(KernelCmd::Ban(b, None));
                }
            }
            if restored > 0 {
                eprintln!(
                    "portcullis: restored {restored} bans from {}",
                    state.bans_path().display()
                );
            }
        }
        Err(e) => eprintln!("portcullis: warning: ignoring saved bans: {e:#}"),
    }

    let (event_tx, writer) = spawn_writer(args.engine.events.as_deref(), !args.engine.quiet)?;
    let mut dropped_events = 0u64;
    let forward = |engine: &mut Engine, dropped: &mut u64| {
        let events: Vec<Event> = engine.drain_events().collect();
        for ev in events {
            match ev.event_type {
                EventType::Ban => {
                    if let Some(b) = engine_ban(engine, &ev) {
                        let _ = kernel.try_send(KernelCmd::Ban(b, None));
                    }
                }
                EventType::Unban => {
                    if let Some(f) = &ev.flow {
                        let _ = kernel.try_send(KernelCmd::Unban(f.src_ip, None));
                    }
                }
                _ => {}
            }
            if let Err(TrySendError::Full(_)) = event_tx.try_send(ev) {
                *dropped += 1;
            }
        }
    };

    let nxdomain = |e: &Engine| e.config().dns.blocked_response == BlockedDnsResponse::Nxdomain;
    let mut last_tick = Instant::now();
    let mut last_stats = Instant::now();
    let mut seen = QueueDrops::default();
    let mut overruns = 0;
    let mut queue_status = QueueStatus {
        number: qcfg.num,
        fail_open: qcfg.fail_open,
        ..QueueStatus::default()
    };
    eprintln!(
        "portcullis: running on NFQUEUE {} ({})",
        qcfg.num,
        if qcfg.fail_open {
            "fail-open"
        } else {
            "fail-closed"
        }
    );
    while !term.load(Ordering::Relaxed) {
        if hup.swap(false, Ordering::Relaxed) {
            let ev = reload(args, &mut engine, kernel);
            let _ = event_tx.try_send(ev);
        }
        match queue.recv_batch(Some(POLL)) {
            Ok(0) => {}
            Ok(_) => {
                let t = now();
                let answer = nxdomain(&engine);
                queue.decide_each(|p| {
                    let dir = match p.hook {
                        Hook::Output | Hook::Postrouting => Direction::Outbound,
                        Hook::Forward => Direction::Forwarded,
                        _ => Direction::Inbound,
                    };
                    let ts = p.timestamp_micros.map_or(t, Timestamp::from_micros);
                    let v = engine.process(&PacketIn {
                        data: p.payload,
                        link: LinkType::Raw,
                        ts,
                        dir: Some(dir),
                    });
                    if v.reason == Reason::BlockedDomain && answer {
                        // Best effort: the query is dropped either way.
                        let _ = responder.respond_to(p);
                    }
                    match v.action {
                        Action::Accept => (NfVerdict::Accept, None),
                        Action::Drop => (NfVerdict::Drop, None),
                    }
                });
                queue.flush().context("sending verdicts")?;
                engine.flush();
            }
            Err(e) => return Err(e).context("reading the NFQUEUE"),
        }
        if last_tick.elapsed() >= POLL {
            engine.tick(now());
            last_tick = Instant::now();
        }
        if last_stats.elapsed() >= QUEUE_STATS_EVERY {
            last_stats = Instant::now();
            let cur = QueueDrops::read(
                qcfg.num,
                queue_hits.load(Ordering::Relaxed),
                queue.counters().packets,
            );
            let new_overruns = queue.counters().enobufs;
            if let Some(ev) = seen.event(&cur, new_overruns - overruns, qcfg.num, qcfg.fail_open) {
                let _ = event_tx.try_send(ev);
            }
            // The estimate can dip (skew between the two readings): keep the
            // high-water mark so nothing is reported twice.
            seen = QueueDrops {
                uninspected: seen.uninspected.max(cur.uninspected),
                ..cur
            };
            overruns = new_overruns;
            queue_status = QueueStatus {
                received: queue.counters().packets,
                queue_dropped: seen.queue_dropped,
                user_dropped: seen.user_dropped,
                uninspected: seen.uninspected,
                overruns,
                ..queue_status
            };
        }
        for p in requests.try_iter() {
            let answer = match &p.request {
                Request::Status => {
                    queue_status.received = queue.counters().packets;
                    let s = status(&engine, &ctl.info, Some(&queue_status), dropped_events);
                    Answer::Now(serde_json::to_value(s).map_err(|e| e.to_string()))
                }
                req => answer(&mut engine, req, kernel),
            };
            p.answer(answer);
        }
        forward(&mut engine, &mut dropped_events);
    }

    // Shutting down: let what is queued through (fail-open) or not, close
    // the windows, save the bans, stop the writer.
    queue.verdict_outstanding(if qcfg.fail_open {
        NfVerdict::Accept
    } else {
        NfVerdict::Drop
    });
    let _ = queue.flush();
    drop(queue);
    engine.finish();
    // The bans file is the kernel thread's alone: it has seen every ban and
    // unban (including the expiries `finish` just reported) and writes the
    // file after each batch.
    forward(&mut engine, &mut dropped_events);
    drop(event_tx);
    let _ = writer.join();
    if dropped_events > 0 {
        eprintln!("portcullis: {dropped_events} events were dropped: the event writer fell behind");
    }
    Ok(ExitCode::SUCCESS)
}

/// A snapshot for `portcullis status` and the metrics.
fn status(
    engine: &Engine,
    info: &Info,
    queue: Option<&QueueStatus>,
    events_dropped: u64,
) -> Status {
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
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        mode: info.mode.to_owned(),
        enforcing: engine.enforcing(),
        uptime_seconds: info.started.elapsed().as_secs(),
        config: info.config.clone(),
        kernel_path: info.kernel_path.clone(),
        packets: PacketCounters::from(engine.counters()),
        queue: queue.cloned(),
        capture: Vec::new(),
        bans_active: engine.bans().len(),
        protected,
        detector: engine.detector_stats().as_ref().map(DetectorStatus::from),
        events_dropped,
    }
}

/// One active ban as `portcullis bans` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BanView {
    pub addr: IpAddr,
    pub reason: String,
    /// RFC 3339, UTC.
    pub since: String,
    pub until: String,
    pub seconds_left: u64,
}

impl BanView {
    fn new(b: &Ban, now: Timestamp) -> Self {
        Self {
            addr: b.addr,
            reason: b.reason.clone(),
            since: rfc3339(b.since),
            until: rfc3339(b.until),
            seconds_left: b.until.since(now).as_secs(),
        }
    }
}

/// Answers a control request other than `status` (the packet thread owns
/// the engine). Bans and unbans are answered once the kernel has them.
fn answer(engine: &mut Engine, req: &Request, kernel: &Sender<KernelCmd>) -> Answer {
    let t = now();
    let json = |v: Result<serde_json::Value, serde_json::Error>| v.map_err(|e| e.to_string());
    match *req {
        Request::Status => Answer::Now(Err("status is answered by the caller".into())),
        Request::Bans => {
            let mut bans: Vec<BanView> = engine.bans().iter().map(|b| BanView::new(b, t)).collect();
            bans.sort_by_key(|b| (b.seconds_left, b.addr));
            Answer::Now(json(serde_json::to_value(bans)))
        }
        Request::Ban {
            addr,
            seconds,
            ref reason,
        } => {
            let duration = match seconds {
                Some(0) => return Answer::Now(Err("a ban must last more than 0 s".into())),
                Some(s) => Duration::from_secs(s),
                None => engine.config().scan.ban_duration,
            };
            let rules = &engine.config().rules;
            if addr.is_loopback() {
                return Answer::Now(Err(format!("{addr} is loopback: never banned")));
            }
            if let Some(v) = rules.allowlisted_by(addr) {
                return Answer::Now(Err(format!(
                    "{addr} is never banned: {} (remove it there first)",
                    rules.describe(v)
                )));
            }
            let reason = reason.clone().unwrap_or_else(|| "manual".to_owned());
            if !engine.ban(addr, t, duration, reason) {
                let until = engine.bans().get(&addr).map(|b| b.until);
                return Answer::Now(Err(match until {
                    Some(u) => format!(
                        "{addr} is already banned until {} (unban it first to shorten the ban)",
                        rfc3339(u)
                    ),
                    None => format!("{addr} cannot be banned"),
                }));
            }
            let Some(ban) = engine.bans().get(&addr).cloned() else {
                return Answer::Now(Err(format!("{addr} cannot be banned")));
            };
            let view = json(serde_json::to_value(BanView::new(&ban, t)));
            kernel_answer(kernel, |ack| KernelCmd::Ban(ban, Some(ack)), view)
        }
        Request::Unban { addr } => {
            if !engine.unban(addr, t) {
                return Answer::Now(Err(format!("{addr} is not banned")));
            }
            let v = json(Ok(serde_json::json!({ "addr": addr, "unbanned": true })));
            kernel_answer(kernel, |ack| KernelCmd::Unban(addr, Some(ack)), v)
        }
    }
}

/// Sends a change to the kernel thread; the answer waits for its commit.
fn kernel_answer(
    kernel: &Sender<KernelCmd>,
    cmd: impl FnOnce(Ack) -> KernelCmd,
    value: std::result::Result<serde_json::Value, String>,
) -> Answer {
    let value = match value {
        Ok(v) => v,
        Err(e) => return Answer::Now(Err(e)),
    };
    let (ack, done) = crossbeam_channel::bounded(1);
    match kernel.try_send(cmd(ack)) {
        Ok(()) => Answer::AfterKernel(value, done),
        Err(_) => Answer::Now(Err(
            "the kernel thread is busy or stopped; the change applies in user space only".into(),
        )),
    }
}

/// The engine's ban behind a `ban` event.
fn engine_ban(engine: &Engine, ev: &Event) -> Option<Ban> {
    let addr = ev.flow.as_ref()?.src_ip;
    engine.bans().get(&addr).cloned()
}

/// SIGHUP: re-reads the config, updates the kernel sets (one transaction)
/// and the engine. On any error the old rules stay in force. Either way a
/// `reload` event says what happened.
fn reload(args: &RunArgs, engine: &mut Engine, kernel: &Sender<KernelCmd>) -> Event {
    let outcome = try_reload(args, engine, kernel);
    let mut ev = Event::new(now(), EventType::Reload, None);
    ev.reload = Some(ReloadInfo {
        status: if outcome.is_ok() { "ok" } else { "error" },
        error: outcome.as_ref().err().cloned(),
    });
    match outcome {
        Ok(()) => eprintln!("portcullis: configuration reloaded"),
        Err(e) => eprintln!("portcullis: reload failed, the old rules stay in force: {e}"),
    }
    ev
}

fn try_reload(
    args: &RunArgs,
    engine: &mut Engine,
    kernel: &Sender<KernelCmd>,
) -> std::result::Result<(), String> {
    let cfg = config::load(args.engine.config.as_deref()).map_err(|e| format!("{e:#}"))?;
    let (tx, rx) = crossbeam_channel::bounded(1);
    kernel
        .send(KernelCmd::Update(Arc::clone(&cfg), tx))
        .map_err(|_| "the kernel thread has stopped".to_owned())?;
    rx.recv()
        .map_err(|_| "the kernel thread has stopped".to_owned())?
        .map_err(|e| format!("updating kernel rules: {e:#}"))?;
    engine
        .reload(cfg)
        .map_err(|e| format!("restarting the detector: {e}"))
}

fn spawn_kernel_thread(
    fw: Firewall,
    rx: Receiver<KernelCmd>,
    state: StateDir,
    queue_hits: Arc<AtomicU64>,
) -> Result<JoinHandle<Result<()>>> {
    std::thread::Builder::new()
        .name("portcullis-kernel".into())
        .spawn(move || {
            let mut bans: std::collections::HashMap<IpAddr, Ban> = Default::default();
            // Detection (the packet's time) to kernel commit, worst seen.
            let mut worst_latency = Duration::ZERO;
            let mut committed = 0u64;
            let mut last_poll = Instant::now();
            loop {
                if last_poll.elapsed() >= QUEUE_STATS_EVERY {
                    last_poll = Instant::now();
                    if let Ok(Some(n)) = fw.queue_rule_packets() {
                        queue_hits.store(n, Ordering::Relaxed);
                    }
                }
                let first = match rx.recv_timeout(QUEUE_STATS_EVERY) {
                    Ok(c) => c,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                };
                // Gather what arrives within the window into one nft call.
                let deadline = Instant::now() + BAN_BATCH_WINDOW;
                let mut cmds = vec![first];
                while let Ok(c) = rx.recv_deadline(deadline) {
                    cmds.push(c);
                }
                // By address: the last word on an address wins, and the
                // same ban reported twice (event and control request) is
                // written once.
                let mut add: std::collections::HashMap<IpAddr, Duration> = Default::default();
                let mut del: std::collections::HashSet<IpAddr> = Default::default();
                let mut acks: Vec<Ack> = Vec::new();
                let mut oldest: Option<Timestamp> = None;
                for c in cmds {
                    match c {
                        KernelCmd::Ban(b, ack) => {
                            let left = Duration::from_micros(
                                b.until.as_micros().saturating_sub(now().as_micros()),
                            );
                            if !left.is_zero() {
                                del.remove(&b.addr);
                                add.insert(b.addr, left);
                                oldest = Some(oldest.map_or(b.since, |o| o.min(b.since)));
                                bans.insert(b.addr, b);
                            }
                            acks.extend(ack);
                        }
                        KernelCmd::Unban(a, ack) => {
                            add.remove(&a);
                            del.insert(a);
                            bans.remove(&a);
                            acks.extend(ack);
                        }
                        KernelCmd::Update(cfg, reply) => {
                            let plan = KernelPlan::from_config(&cfg, &KernelOptions::default());
                            let _ = reply.send(fw.update(&plan).map_err(anyhow::Error::from));
                        }
                    }
                }
                let mut outcome = Ok(());
                if !add.is_empty() {
                    let add: Vec<(IpAddr, Duration)> = add.into_iter().collect();
                    match fw.ban(&add) {
                        Ok(()) => {
                            committed += add.len() as u64;
                            if let Some(o) = oldest {
                                worst_latency = worst_latency.max(now().since(o));
                            }
                        }
                        Err(e) => {
                            eprintln!("portcullis: error: adding bans to the kernel: {e}");
                            outcome = Err(e.to_string());
                        }
                    }
                }
                if !del.is_empty() {
                    let del: Vec<IpAddr> = del.into_iter().collect();
                    if let Err(e) = fw.unban(&del) {
                        eprintln!("portcullis: warning: removing bans from the kernel: {e}");
                        outcome = outcome.and(Err(e.to_string()));
                    }
                }
                for ack in acks {
                    let _ = ack.send(outcome.clone());
                }
                if let Err(e) = state.save_bans(bans.values()) {
                    eprintln!("portcullis: warning: {e:#}");
                }
            }
            if committed > 0 {
                eprintln!(
                    "portcullis: {committed} bans committed to the kernel; worst latency from detection {} ms",
                    worst_latency.as_millis()
                );
            }
            fw.teardown().map_err(anyhow::Error::from)
        })
        .context("starting the kernel thread")
}

fn spawn_writer(events: Option<&Path>, console: bool) -> Result<(Sender<Event>, JoinHandle<()>)> {
    let mut out = Output::new(events, console)?;
    let (tx, rx) = crossbeam_channel::bounded::<Event>(EVENT_QUEUE);
    let handle = std::thread::Builder::new()
        .name("portcullis-events".into())
        .spawn(move || {
            while let Ok(ev) = rx.recv() {
                let _ = out.write(&ev);
                for ev in rx.try_iter().take(1024) {
                    let _ = out.write(&ev);
                }
                // Written promptly: a SIEM tails this file.
                let _ = out.flush();
            }
            let _ = out.flush();
        })
        .context("starting the event writer")?;
    Ok((tx, handle))
}

/// Marks "not known yet" in the shared queue-rule counter.
const UNKNOWN: u64 = u64::MAX;

/// Cumulative counters of our queue since it was opened.
#[derive(Debug, Clone, Copy, Default)]
struct QueueDrops {
    queue_dropped: u64,
    user_dropped: u64,
    /// Sent toward the queue, received by us, queued, dropped: none of
    /// these. Only known on the iptables path.
    uninspected: u64,
}

impl QueueDrops {
    /// `hits`: packets our queue rule sent (or [`UNKNOWN`]); `received`:
    /// packets this daemon read from the queue.
    fn read(num: u16, hits: u64, received: u64) -> Self {
        let Some(q) = portcullis_nfqueue::queue_stats()
            .ok()
            .and_then(|all| all.into_iter().find(|q| q.queue_number == num))
        else {
            return Self::default();
        };
        let (queue_dropped, user_dropped) = (u64::from(q.queue_dropped), u64::from(q.user_dropped));
        // The rule's counter is read on the kernel thread up to a second
        // earlier: this can only undercount now and catch up later.
        let uninspected = if hits == UNKNOWN {
            0
        } else {
            hits.saturating_sub(received + u64::from(q.queue_total) + queue_dropped + user_dropped)
        };
        Self {
            queue_dropped,
            user_dropped,
            uninspected,
        }
    }

    /// A `queue` event if anything was lost since `self`.
    fn event(&self, cur: &Self, overruns: u64, num: u16, fail_open: bool) -> Option<Event> {
        let q = cur.queue_dropped.saturating_sub(self.queue_dropped);
        let u = cur.user_dropped.saturating_sub(self.user_dropped);
        let p = cur.uninspected.saturating_sub(self.uninspected);
        if q == 0 && u == 0 && p == 0 && overruns == 0 {
            return None;
        }
        let mut ev = Event::new(now(), EventType::Queue, None);
        ev.queue = Some(QueueInfo {
            number: num,
            queue_dropped: q,
            user_dropped: u,
            overruns,
            uninspected: p,
            fate: if fail_open { "passed" } else { "dropped" },
        });
        Some(ev)
    }
}
