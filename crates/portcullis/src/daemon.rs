//! `portcullis run`: the engine in the kernel's packet path (inline), or
//! beside it (monitor, dry run).
//!
//! Threads:
//! - the **packet thread** (this one): a [`PacketPath`] (NFQUEUE batches
//!   and verdicts in [`crate::inline`], passive capture in
//!   [`crate::monitor`]) -> the engine; it owns the engine and answers
//!   control requests between batches;
//! - the **detector** thread (inside the engine);
//! - the **kernel** thread ([`crate::kernel_thread`]): every nft call (ban
//!   batches, reload, teardown) and the ban state file, so the packet path
//!   never waits for a process;
//! - the **event writer**: JSON Lines and console, behind a bounded channel;
//! - the **control** thread ([`crate::control`]): the Unix socket of
//!   `portcullis status|bans|ban|unban|explain`;
//! - the **metrics** threads ([`crate::metrics`], with `--metrics`);
//! - a **reload** thread per SIGHUP: compiles the new file and updates the
//!   kernel sets while the packet thread keeps serving; the engine takes
//!   the new config when both are done.
//!
//! **Invariant: the packet thread never blocks on anything but its packet
//! source** (with a 100 ms timeout, so signals, timers and control requests
//! are served).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::ValueEnum;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use portcullis_engine::config::Config;
use portcullis_engine::engine::{Ban, DetectorMode, Engine};
use portcullis_engine::events::{rfc3339, Body, Event, ReloadEvent, ReloadInfo};
use portcullis_engine::Timestamp;
use portcullis_kernel::{Firewall, KernelOptions};

use crate::cli::EngineArgs;
use crate::config;
use crate::control::{self, Answer, Pending, Request};
use crate::inline::InlinePath;
use crate::kernel_thread::{self, Ack, KernelCmd, Rules, UNKNOWN};
use crate::monitor::MonitorPath;
use crate::notify::Notifier;
use crate::output::Output;
use crate::state::StateDir;
use crate::status::{DetectorStatus, PacketCounters, Status};

/// How the daemon sees packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// In the packet path (nftables + NFQUEUE): drops are enforced.
    Inline,
    /// Passive capture (libpcap): nothing is dropped inline; would-be drops
    /// are logged, scans detected (and banned with --enforce-bans).
    Monitor,
}

/// Options of `portcullis run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// inline: decide in the packet path; monitor: capture passively.
    #[arg(long, value_enum, default_value_t = Mode::Inline)]
    pub mode: Mode,
    /// Monitor mode: an interface to capture on (repeat for more; `any`
    /// for all). Default: any.
    #[arg(long = "interface", short = 'i', value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Monitor mode: a capture filter in tcpdump syntax.
    #[arg(long, value_name = "FILTER")]
    pub bpf: Option<String>,
    /// Monitor mode: this host's network, an address or CIDR prefix
    /// (repeat for more; IPv4 and IPv6), where the capture cannot tell
    /// direction. Replaces the rules file's `home_net` when given; without
    /// either, this host's own addresses.
    #[arg(long = "home-net", value_name = "CIDR", value_parser = portcullis_engine::config::parse_net)]
    pub home_net: Vec<ipnet::IpNet>,
    /// Monitor mode: ban detected scanners in the kernel (a table with the
    /// ban sets only; nothing else is enforced).
    #[arg(long)]
    pub enforce_bans: bool,
    /// Enforce nothing: no kernel rules at all; every would-be drop and ban
    /// is logged (`would_block`, `"enforced": false`). Runs as a passive
    /// monitor (on `any` unless --interface is given).
    #[arg(long, conflicts_with = "enforce_bans")]
    pub dry_run: bool,
    /// Where bans are kept across restarts.
    #[arg(long, default_value = "/var/lib/portcullis")]
    pub state_dir: PathBuf,
    /// The control socket (`portcullis status`, `bans`, `ban`, `unban`,
    /// `explain`), root only.
    #[arg(long, default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (no
    /// authentication: bind to loopback or a management network; in inline
    /// mode a remote scraper needs an allow rule).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Do not protect the SSH client that started the daemon. By default
    /// its address (from SSH_CONNECTION, ours or an ancestor's: sudo drops
    /// it) is never blocked nor banned, so a bad rule cannot lock you out.
    #[arg(long)]
    pub no_protect_ssh: bool,
    /// Let scans get this host's default gateways and DNS resolvers banned.
    /// By default they are reported but never banned: a scan is spoofed
    /// easily, and banning the gateway or the resolver cuts the host off.
    #[arg(long)]
    pub no_protect_peers: bool,
    /// Never block nor ban this address either (repeat for more): your
    /// management hosts. Like an `allow.ip` entry that no rules file can
    /// take away.
    /// Also takes an SSH_CONNECTION value: `--protect "$SSH_CONNECTION"`.
    #[arg(long = "protect", value_name = "ADDR", value_parser = crate::lockout::parse_protect)]
    pub protect: Vec<IpAddr>,
}

/// How long the packet thread waits for packets before serving timers,
/// signals and control requests.
const POLL: Duration = Duration::from_millis(100);
/// Events waiting for the writer before new ones are dropped (and counted).
const EVENT_QUEUE: usize = 65_536;
/// How often loss counters are read and the metrics snapshot refreshed.
const STATS_EVERY: Duration = Duration::from_secs(1);

/// Wall-clock time as the engine counts it.
pub fn now() -> Timestamp {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    Timestamp::from_micros(us)
}

/// Where packets come from and go: the part of the daemon that differs
/// between inline and monitor mode.
pub trait PacketPath {
    /// The line the daemon prints once it serves (after saved bans are back
    /// in the kernel): `running on NFQUEUE 0 (fail-open)`, `monitoring ...`.
    fn ready_line(&self) -> String;
    /// Processes what arrives within `wait` (deciding it, inline).
    fn step(&mut self, engine: &mut Engine, wait: Duration) -> Result<()>;
    /// Packets lost since the last call, as events (called every second).
    fn losses(&mut self) -> Vec<Event>;
    /// Fills in this path's part of a status snapshot.
    fn status(&mut self, s: &mut Status);
    /// Shutting down: settle what is still pending.
    fn finish(&mut self);
}

/// Addresses never blocked nor banned on top of the rules file: `--protect`
/// and the SSH client that started us.
fn protected(args: &RunArgs) -> Vec<ipnet::IpNet> {
    let mut nets: Vec<ipnet::IpNet> = args.protect.iter().map(|&a| a.into()).collect();
    if !args.no_protect_ssh {
        if let Some((addr, sshd)) = crate::lockout::ssh_client_with_source() {
            eprintln!(
                "portcullis: protecting the SSH client {addr} (session of sshd pid {sshd}): never blocked nor banned (--no-protect-ssh to turn off)"
            );
            nets.push(addr.into());
        }
    }
    nets.sort();
    nets.dedup();
    nets
}

/// Where the lock that makes one daemon per network namespace lives.
pub(crate) const LOCK_DIR: &str = "/run/portcullis";

/// Holds the kernel-rules lock of this network namespace: one daemon with
/// kernel rules per namespace, whatever `--socket` each was given (another
/// one's install would delete our table as a crash's leftovers, and its
/// teardown ours). Released when dropped (or when the process dies).
pub(crate) fn lock_namespace() -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    let ns = std::fs::metadata("/proc/self/ns/net")
        .context("reading this process's network namespace")?
        .ino();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(LOCK_DIR)
        .with_context(|| format!("creating {LOCK_DIR}"))?;
    let path = format!("{LOCK_DIR}/netns-{ns}.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {path}"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another portcullis daemon manages this network namespace's kernel rules (lock {path}: {e}); stop it first"
        )
    })
}

pub fn run(args: &RunArgs) -> Result<ExitCode> {
    let passive = args.mode == Mode::Monitor || args.dry_run;
    if !passive
        && (!args.interfaces.is_empty()
            || args.bpf.is_some()
            || args.enforce_bans
            || !args.home_net.is_empty())
    {
        anyhow::bail!("--interface, --bpf, --enforce-bans and --home-net are for --mode monitor");
    }
    if let Some(f) = &args.bpf {
        portcullis_capture::live::check_filter(f)?;
    }
    let protect = protected(args);
    // Passive captures without a direction: this host's addresses tell.
    let home = if passive {
        config::local_addresses()
    } else {
        Vec::new()
    };
    let cfg = config::load_for_daemon(
        args.engine.config.as_deref(),
        &protect,
        config::Home::from_flag(&args.home_net, &home),
        !args.no_protect_peers,
    )?;
    if !cfg.critical_peers.is_empty() {
        let list: Vec<String> = cfg
            .critical_peers
            .iter()
            .filter(|(_, why)| !why.starts_with("this host"))
            .map(|(a, why)| format!("{a} ({why})"))
            .chain(std::iter::once("this host's own addresses".to_owned()))
            .collect();
        eprintln!(
            "portcullis: never banned by a scan: {} (--no-protect-peers to turn off)",
            list.join(", ")
        );
    }
    if passive && cfg.home_net.is_empty() {
        eprintln!(
            "portcullis: warning: no home_net and no address on this host yet: every captured packet counts as inbound (set --home-net CIDR or home_net in the rules file, or SIGHUP once the network is up)"
        );
    }
    let state = StateDir::open(&args.state_dir)?;
    // Before any kernel change: a second daemon must not clean up the
    // first one's rules as if they were a crash's leftovers.
    let (control, requests) = control::Server::start(&args.socket)?;
    let latest = Arc::new(Mutex::new(None::<Status>));
    let metrics = match args.metrics {
        Some(addr) => {
            let snap = Arc::clone(&latest);
            let m = crate::metrics::serve(addr, move || snap.lock().ok()?.clone())
                .with_context(|| format!("--metrics {addr}: cannot listen"))?;
            eprintln!("portcullis: metrics on http://{}/metrics", m.local_addr());
            Some(m)
        }
        None => None,
    };

    // Signals first, so that a TERM during setup still tears down.
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&term))
            .context("installing signal handlers")?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .context("installing signal handlers")?;
    // SIGUSR1 (logrotate): the event writer reopens its file.
    let usr1 = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&usr1))
        .context("installing signal handlers")?;
    let notify = Notifier::from_env().context("NOTIFY_SOCKET")?;

    let rules = match (passive, args.enforce_bans) {
        (false, _) => Some(Rules::Full),
        (true, true) => Some(Rules::BansOnly),
        (true, false) => None,
    };
    let opts = KernelOptions::default();
    // Held until the kernel thread has torn our rules down.
    let ns_lock = match rules {
        Some(_) => Some(lock_namespace()?),
        None => None,
    };
    let (firewall, kernel_path) = match rules {
        Some(r) => {
            let fw = Firewall::install(&r.plan(&cfg)).context("installing kernel rules")?;
            let path = match r {
                Rules::Full => fw.queue_path().to_string(),
                Rules::BansOnly => "nftables ban sets only (passive)".to_owned(),
            };
            eprintln!("portcullis: kernel rules installed (table inet portcullis); {path}");
            (Some((fw, r)), path)
        }
        None => (None, "none (passive, nothing enforced)".to_owned()),
    };

    // From here on, every exit path must tear the kernel rules down: the
    // kernel thread does it when its channel closes.
    let (kernel_tx, kernel_rx) = crossbeam_channel::bounded::<KernelCmd>(65_536);
    let queue_hits = Arc::new(AtomicU64::new(UNKNOWN));
    // Bans nothing enforces are not saved: a dry run's "bans" must not
    // become real ones at the next inline start.
    let kernel = match kernel_thread::spawn(
        firewall,
        kernel_rx,
        rules.is_some().then(|| state.clone()),
        Arc::clone(&queue_hits),
    ) {
        Ok(k) => k,
        Err(e) => {
            // The firewall went down with the thread that never started.
            if rules.is_some() {
                let _ = Firewall::remove_leftovers();
            }
            return Err(e);
        }
    };
    let ctl = Control {
        kernel: &kernel_tx,
        term: &term,
        hup: &hup,
        requests: &requests,
        latest: &latest,
        notify: &notify,
        usr1: &usr1,
        info: Info {
            started: Instant::now(),
            mode: match (args.mode, args.dry_run) {
                (_, true) => "monitor (dry run)",
                (Mode::Inline, _) => "inline",
                (Mode::Monitor, _) => "monitor",
            },
            kernel_path,
            config: args.engine.config.as_ref().map_or_else(
                || "embedded default policy".to_owned(),
                |p| p.display().to_string(),
            ),
            protect,
            home,
            bans_enforced: rules.is_some(),
            passive,
        },
    };
    let path: Result<Box<dyn PacketPath>> = if passive {
        let ifs = if args.interfaces.is_empty() {
            vec![portcullis_capture::live::ANY.to_owned()]
        } else {
            args.interfaces.clone()
        };
        MonitorPath::open(&ifs, args.bpf.as_deref()).map(|p| Box::new(p) as Box<dyn PacketPath>)
    } else {
        InlinePath::open(&cfg, opts.skip_mark, Arc::clone(&queue_hits))
            .map(|p| Box::new(p) as Box<dyn PacketPath>)
    };
    // A panic on the packet path must still reach the teardown below.
    let result = path.and_then(|p| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serve(args, cfg, &state, &ctl, p)
        }))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the packet thread panicked")))
    });
    let _ = notify.stopping();
    drop(kernel_tx);
    let teardown = kernel.join().unwrap_or_else(|_| {
        // The kernel thread died with our rules in place: remove them here.
        Firewall::remove_leftovers()
            .map(drop)
            .map_err(|e| anyhow::anyhow!("the kernel thread panicked; {e}"))
    });
    drop(ns_lock);
    // Only now: a client must never delay the teardown above.
    drop(control);
    if let Some(m) = metrics {
        m.shutdown();
    }
    match (result, teardown) {
        (Ok(code), Ok(())) => {
            if rules.is_some() {
                eprintln!("portcullis: kernel rules removed");
            }
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
    /// Control socket requests.
    requests: &'a Receiver<Pending>,
    /// The snapshot the metrics server serves.
    latest: &'a Mutex<Option<Status>>,
    /// systemd's notification socket (no-op without one).
    notify: &'a Notifier,
    /// SIGUSR1 seen: the event writer reopens its file.
    usr1: &'a Arc<AtomicBool>,
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
    /// `home_net` when the file has none (passive mode).
    home: Vec<ipnet::IpNet>,
    /// Bans go into the kernel.
    bans_enforced: bool,
    /// Monitor mode or dry run.
    passive: bool,
}

fn serve(
    args: &RunArgs,
    cfg: Arc<Config>,
    state: &StateDir,
    ctl: &Control<'_>,
    mut path: Box<dyn PacketPath>,
) -> Result<ExitCode> {
    let kernel = ctl.kernel;
    let mut engine = Engine::new(cfg, DetectorMode::Thread { capacity: 1024 })
        .context("starting the scan detector")?;
    // Passive: drops are only logged. Bans still apply to the engine's own
    // verdicts (logged as would_block) and, with --enforce-bans, the kernel.
    engine.set_enforcing(args.mode == Mode::Inline && !args.dry_run);
    let start = now();
    // Saved bans are real ones: restored only where bans are enforced.
    match state.load_bans().map(|b| {
        if ctl.info.bans_enforced {
            b
        } else {
            Vec::new()
        }
    }) {
        Ok(bans) => {
            let mut restored = 0;
            let mut acks = Vec::new();
            for b in bans {
                if engine.restore_ban(b.clone(), start) {
                    restored += 1;
                    let (ack, done) = crossbeam_channel::bounded(1);
                    if kernel.try_send(KernelCmd::Ban(b, Some(ack))).is_ok() {
                        acks.push(done);
                    }
                }
            }
            // Saved bans are in the kernel before we say we serve.
            let deadline = Instant::now() + Duration::from_secs(5);
            let failed = acks
                .iter()
                .filter(|a| !matches!(a.recv_deadline(deadline), Ok(Ok(()))))
                .count();
            if restored > 0 {
                eprintln!(
                    "portcullis: restored {restored} bans from {}{}",
                    state.bans_path().display(),
                    if failed > 0 {
                        format!(" ({failed} not confirmed by the kernel in time)")
                    } else {
                        String::new()
                    }
                );
            }
        }
        Err(e) => eprintln!("portcullis: warning: ignoring saved bans: {e:#}"),
    }

    let (event_tx, writer) = spawn_writer(
        args.engine.events.as_deref(),
        !args.engine.quiet,
        Arc::clone(ctl.usr1),
    )?;
    let mut dropped_events = 0u64;
    let forward = |engine: &mut Engine, dropped: &mut u64| {
        let events: Vec<Event> = engine.drain_events().collect();
        for mut ev in events {
            match &mut ev.body {
                Body::Ban(e) => {
                    if let Some(b) =
                        engine_ban(engine, e.source.src_ip).filter(|_| ctl.info.bans_enforced)
                    {
                        let _ = kernel.try_send(KernelCmd::Ban(b, None));
                    }
                    e.ban.enforced = ctl.info.bans_enforced;
                }
                Body::Unban(e) => {
                    if ctl.info.bans_enforced {
                        let _ = kernel.try_send(KernelCmd::Unban(e.source.src_ip, None));
                    }
                    e.ban.enforced = ctl.info.bans_enforced;
                }
                _ => {}
            }
            if let Err(TrySendError::Full(_)) = event_tx.try_send(ev) {
                *dropped += 1;
            }
        }
    };

    let mut last_tick = Instant::now();
    let mut last_stats = Instant::now() - STATS_EVERY;
    // WatchdogSec= in the unit: prove the packet loop turns, at twice the
    // rate systemd asks for.
    let watchdog = crate::notify::watchdog_interval().map(|d| d / 2);
    let mut last_watchdog = Instant::now();
    let mut reloading: Option<PendingReload> = None;
    eprintln!("portcullis: {}", path.ready_line());
    let _ = ctl
        .notify
        .ready_with_status(&format!("{}; {}", ctl.info.mode, ctl.info.kernel_path));
    while !ctl.term.load(Ordering::Relaxed) {
        if ctl.hup.swap(false, Ordering::Relaxed) {
            if reloading.is_some() {
                eprintln!("portcullis: a reload is already in progress; this SIGHUP is ignored");
            } else {
                let _ = ctl.notify.reloading();
                reloading = Some(start_reload(args, kernel, &ctl.info));
            }
        }
        if let Some(pending) = &reloading {
            let outcome = match pending.try_recv() {
                Ok(r) => Some(r),
                Err(crossbeam_channel::TryRecvError::Empty) => None,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    Some(Err("the reload thread died".to_owned()))
                }
            };
            if let Some(outcome) = outcome {
                let ev = finish_reload(outcome, &mut engine);
                let _ = event_tx.try_send(ev);
                reloading = None;
                // The old rules stay in force on failure: ready either way.
                let _ = ctl.notify.ready();
            }
        }
        if let Some(every) = watchdog {
            if last_watchdog.elapsed() >= every {
                let _ = ctl.notify.watchdog();
                last_watchdog = Instant::now();
            }
        }
        path.step(&mut engine, POLL)?;
        if last_tick.elapsed() >= POLL {
            engine.tick(now());
            last_tick = Instant::now();
        }
        if last_stats.elapsed() >= STATS_EVERY {
            last_stats = Instant::now();
            for ev in path.losses() {
                let _ = event_tx.try_send(ev);
            }
            // The metrics server reads this copy; never wait for a scrape.
            if let Ok(mut g) = ctl.latest.try_lock() {
                *g = Some(status(&engine, &ctl.info, path.as_mut(), dropped_events));
            }
            // `systemctl status` shows this line.
            let c = engine.counters();
            let _ = ctl.notify.status(&format!(
                "{}: {} packets, {} dropped, {} scans, {} bans active",
                ctl.info.mode,
                c.packets,
                c.dropped,
                c.scans,
                engine.bans().len()
            ));
        }
        for p in ctl.requests.try_iter() {
            let answer = match &p.request {
                Request::Status => {
                    let s = status(&engine, &ctl.info, path.as_mut(), dropped_events);
                    Answer::Now(serde_json::to_value(s).map_err(|e| e.to_string()))
                }
                req => answer(&mut engine, req, kernel, ctl.info.bans_enforced),
            };
            p.answer(answer);
        }
        forward(&mut engine, &mut dropped_events);
    }

    let _ = ctl.notify.stopping();
    // Shutting down: settle what is queued, close the windows, stop the
    // writer. The bans file is the kernel thread's alone: it has seen every
    // ban and unban (including the expiries `finish` reports) and writes
    // the file after each batch.
    path.finish();
    drop(path);
    engine.finish();
    forward(&mut engine, &mut dropped_events);
    drop(event_tx);
    let _ = writer.join();
    if dropped_events > 0 {
        eprintln!("portcullis: {dropped_events} events were dropped: the event writer fell behind");
    }
    Ok(ExitCode::SUCCESS)
}

/// A snapshot for `portcullis status` and the metrics.
fn status(engine: &Engine, info: &Info, path: &mut dyn PacketPath, events_dropped: u64) -> Status {
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
        events_dropped,
    };
    path.status(&mut s);
    s
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
    /// In the kernel's ban set (false: passive mode without
    /// `--enforce-bans`, or a dry run; the ban is only logged).
    pub enforced: bool,
}

impl BanView {
    fn new(b: &Ban, now: Timestamp, enforced: bool) -> Self {
        Self {
            addr: b.addr,
            reason: b.reason.clone(),
            since: rfc3339(b.since),
            until: rfc3339(b.until),
            seconds_left: b.until.since(now).as_secs(),
            enforced,
        }
    }
}

/// Answers a control request other than `status` (the packet thread owns
/// the engine). Bans and unbans are answered once the kernel has them.
fn answer(
    engine: &mut Engine,
    req: &Request,
    kernel: &Sender<KernelCmd>,
    enforced: bool,
) -> Answer {
    let t = now();
    let json = |v: Result<serde_json::Value, serde_json::Error>| v.map_err(|e| e.to_string());
    match *req {
        Request::Status => Answer::Now(Err("status is answered by the caller".into())),
        Request::Bans => {
            let mut bans: Vec<BanView> = engine
                .bans()
                .iter()
                .map(|b| BanView::new(b, t, enforced))
                .collect();
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
            let view = json(serde_json::to_value(BanView::new(&ban, t, enforced)));
            kernel_answer(kernel, |ack| KernelCmd::Ban(ban, Some(ack)), view)
        }
        Request::Explain { addr } => {
            // Wall-clock time: the engine's packet time stands still when
            // no packets come.
            Answer::Now(json(serde_json::to_value(engine.explain(addr, t))))
        }
        Request::Unban { addr } => {
            if !engine.unban(addr, t) {
                return Answer::Now(Err(format!("{addr} is not banned")));
            }
            let v = json(Ok(
                serde_json::json!({ "addr": addr, "unbanned": true, "enforced": enforced }),
            ));
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

/// The engine's ban behind a `ban` event for `addr`.
fn engine_ban(engine: &Engine, addr: std::net::IpAddr) -> Option<Ban> {
    engine.bans().get(&addr).cloned()
}

/// A reload in progress: the new config, compiled and in the kernel, or
/// why not.
type PendingReload = Receiver<std::result::Result<Arc<Config>, String>>;

/// SIGHUP, first half, off the packet thread: re-reads the config (with the
/// protected addresses and, passive, the host's addresses as they are now)
/// and updates the kernel sets in one transaction. Compiling a big list and
/// the nft call take a second or more: the packet thread keeps serving
/// packets meanwhile and picks the result up with [`finish_reload`].
fn start_reload(args: &RunArgs, kernel: &Sender<KernelCmd>, info: &Info) -> PendingReload {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let path = args.engine.config.clone();
    let protect = info.protect.clone();
    let home = if info.passive {
        config::local_addresses()
    } else {
        info.home.clone()
    };
    let flag = args.home_net.clone();
    let peers = !args.no_protect_peers;
    let kernel = kernel.clone();
    let work = move || -> std::result::Result<Arc<Config>, String> {
        let home = config::Home::from_flag(&flag, &home);
        let cfg = config::load_for_daemon(path.as_deref(), &protect, home, peers)
            .map_err(|e| format!("{e:#}"))?;
        let (done, result) = crossbeam_channel::bounded(1);
        kernel
            .send(KernelCmd::Update(Arc::clone(&cfg), done))
            .map_err(|_| "the kernel thread has stopped".to_owned())?;
        result
            .recv()
            .map_err(|_| "the kernel thread has stopped".to_owned())?
            .map_err(|e| format!("updating kernel rules: {e:#}"))?;
        Ok(cfg)
    };
    let spawned = std::thread::Builder::new()
        .name("portcullis-reload".into())
        .spawn({
            let tx = tx.clone();
            move || {
                let _ = tx.send(work());
            }
        });
    if let Err(e) = spawned {
        let _ = tx.send(Err(format!("starting the reload thread: {e}")));
    }
    rx
}

/// SIGHUP, second half, on the packet thread: the engine takes the new
/// config (bans survive). A `reload` event says what happened; on an error
/// before the kernel update the old rules stay in force.
fn finish_reload(outcome: std::result::Result<Arc<Config>, String>, engine: &mut Engine) -> Event {
    let outcome = outcome.and_then(|cfg| {
        engine.reload(cfg).map_err(|e| {
            format!("the kernel has the new lists, but the scan detector did not restart: {e}")
        })
    });
    let ev = Event::new(
        now(),
        Body::Reload(ReloadEvent {
            reload: ReloadInfo {
                error: outcome.as_ref().err().cloned(),
            },
        }),
    );
    match outcome {
        Ok(()) => eprintln!("portcullis: configuration reloaded"),
        Err(e) => eprintln!("portcullis: reload failed: {e}"),
    }
    ev
}

/// The event writer. `reopen` (SIGUSR1, logrotate) makes it reopen the
/// event log at its path; it checks at least every [`POLL`].
fn spawn_writer(
    events: Option<&Path>,
    console: bool,
    reopen: Arc<AtomicBool>,
) -> Result<(Sender<Event>, JoinHandle<()>)> {
    let mut out = Output::new(events, console)?;
    let (tx, rx) = crossbeam_channel::bounded::<Event>(EVENT_QUEUE);
    let handle = std::thread::Builder::new()
        .name("portcullis-events".into())
        .spawn(move || loop {
            match rx.recv_timeout(POLL) {
                Ok(ev) => {
                    let _ = out.write(&ev);
                    for ev in rx.try_iter().take(1024) {
                        let _ = out.write(&ev);
                    }
                    // Written promptly: a SIEM tails this file.
                    let _ = out.flush();
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    let _ = out.flush();
                    break;
                }
            }
            if reopen.swap(false, Ordering::Relaxed) {
                if let Err(e) = out.reopen() {
                    eprintln!("portcullis: warning: {e:#}; events still go to the old file");
                }
            }
        })
        .context("starting the event writer")?;
    Ok((tx, handle))
}
