//! `portcullis run`: the engine in the kernel's packet path (inline), or
//! beside it (monitor, dry run), as the [`RunPlan`] says. This module sets
//! the daemon up and tears it down; the loop is [`PacketLoop`].
//!
//! Threads:
//! - the **packet thread** (this one, [`crate::packet_loop`]): a
//!   [`PacketPath`] (NFQUEUE and NFLOG in [`crate::path::inline`],
//!   passive capture in [`crate::path::monitor`]) -> the engine; it owns
//!   the engine and answers control requests between batches;
//! - the **detector** thread (inside the engine);
//! - the **kernel** thread ([`crate::kernel_thread`]): every nft call (ban
//!   batches, reload, teardown) and the ban state file, so the packet path
//!   never waits for a process;
//! - the **event writer**: JSON Lines and console, behind a bounded channel;
//! - the **control** thread ([`crate::control`]): the Unix socket of
//!   `portcullis status|bans|ban|unban|explain`;
//! - the **metrics** threads ([`crate::metrics`], with `--metrics`);
//! - a **reload** thread per SIGHUP ([`crate::reload`]): compiles the new file and updates the
//!   kernel sets while the packet thread keeps serving; the engine takes
//!   the new config when both are done.
//!
//! **Invariant: the packet thread never blocks on anything but its packet
//! source** (with a 100 ms timeout, so signals, timers and control requests
//! are served).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};
use portcullis_engine::config::Config;
use portcullis_engine::engine::{DetectorMode, Engine};
use portcullis_engine::events::Event;
use portcullis_kernel::{Firewall, KernelOptions};

use crate::clock::now;
use crate::config::DaemonConfig;
use crate::control::{self, Pending};
use crate::kernel_thread::{self, KernelCmd, KernelStats, Links};
use crate::lock::lock_namespace;
use crate::notify::Notifier;
use crate::output::spawn_writer;
use crate::packet_loop::{Info, PacketLoop, Wiring};
use crate::path::inline::{InlinePath, UNKNOWN};
use crate::path::monitor::MonitorPath;
use crate::path::PacketPath;
use crate::plan::{KernelRules, RunPlan, Source};
use crate::state::StateDir;
use crate::status::Status;

/// Addresses never blocked nor banned on top of the rules file: `--protect`
/// and the SSH client that started us.
fn protected(plan: &RunPlan) -> Vec<ipnet::IpNet> {
    let mut nets: Vec<ipnet::IpNet> = plan.protect.iter().map(|&a| a.into()).collect();
    if plan.protect_ssh {
        if let Some((addr, sshd)) = crate::lockout::ssh_client_with_source() {
            log::info!(
                "protecting the SSH client {addr} (session of sshd pid {sshd}): never blocked nor banned (--no-protect-ssh to turn off)"
            );
            nets.push(addr.into());
        }
    }
    nets.sort();
    nets.dedup();
    nets
}

pub fn run(plan: &RunPlan) -> Result<ExitCode> {
    let protect = protected(plan);
    // Passive captures without a direction: this host's addresses tell.
    let source = DaemonConfig {
        path: plan.config.clone(),
        protect: protect.clone(),
        home_flag: plan.home_net.clone(),
        host_home: plan.passive(),
        peers: plan.protect_peers,
    };
    let cfg = source.load()?;
    if !cfg.critical_peers.is_empty() {
        let list: Vec<String> = cfg
            .critical_peers
            .iter()
            .filter(|(_, why)| why != crate::peers::Why::OwnAddress.as_str())
            .map(|(a, why)| format!("{a} ({why})"))
            .chain(std::iter::once("this host's own addresses".to_owned()))
            .collect();
        log::info!(
            "never banned by a scan: {} (--no-protect-peers to turn off)",
            list.join(", ")
        );
    }
    if plan.passive() && cfg.home_net.is_empty() {
        log::warn!(
            "no home_net and no address on this host yet: every captured packet counts as inbound (set --home-net CIDR or home_net in the rules file, or SIGHUP once the network is up)"
        );
    }
    let state = StateDir::open(&plan.state_dir)?;
    // Before any kernel change: a second daemon must not clean up the
    // first one's rules as if they were a crash's leftovers.
    let (control, requests) = control::Server::start(&plan.socket)?;
    let latest = Arc::new(Mutex::new(None::<Status>));
    let metrics = match plan.metrics {
        Some(addr) => {
            let snap = Arc::clone(&latest);
            let m = crate::metrics::serve(addr, move || snap.lock().ok()?.clone())
                .with_context(|| format!("--metrics {addr}: cannot listen"))?;
            log::info!("metrics on http://{}/metrics", m.local_addr());
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

    let rules = plan.kernel;
    let opts = KernelOptions::default();
    // Held until the kernel thread has torn our rules down.
    let ns_lock = match rules {
        Some(_) => Some(lock_namespace()?),
        None => None,
    };
    let (firewall, kernel_path) = match rules {
        Some(r) => {
            let fw = Firewall::install(&r.plan(&cfg)).context("installing kernel rules")?;
            if let Err(e) = fw.watch_generation() {
                // Slower, not wrong: every check then lists our rules.
                log::warn!("cannot read the ruleset generation ({e}); our kernel rules are listed every second to check them");
            }
            let path = match r {
                KernelRules::Full if fw.capabilities().conntrack_delete => format!(
                    "{}; bans end open connections by deleting their conntrack entries",
                    fw.queue_path()
                ),
                KernelRules::Full => format!(
                    "{}; established packets are checked against the ban sets (no ctnetlink)",
                    fw.queue_path()
                ),
                KernelRules::BansOnly => "nftables ban sets only (passive)".to_owned(),
            };
            log::info!("kernel rules installed (table inet portcullis); {path}");
            (Some((fw, r)), path)
        }
        None => (None, "none (passive, nothing enforced)".to_owned()),
    };

    // Fleet mode's thread changes the CrowdSec sets itself.
    let crowdsec_sets = firewall.as_ref().map(|(f, _)| f.crowdsec_sets());
    // From here on, every exit path must tear the kernel rules down: the
    // kernel thread does it when its channel closes.
    let (kernel_tx, kernel_rx) = crossbeam_channel::bounded::<KernelCmd>(65_536);
    let queue_hits = Arc::new(AtomicU64::new(UNKNOWN));
    let (links, reports) = Links::new(Arc::clone(&queue_hits));
    let kernel_stats = Arc::clone(&links.stats);
    // Bans nothing enforces are not saved: a dry run's "bans" must not
    // become real ones at the next inline start.
    let kernel = match kernel_thread::spawn(
        firewall,
        Arc::clone(&cfg),
        kernel_rx,
        rules.is_some().then(|| state.clone()),
        links,
    ) {
        Ok(k) => k,
        Err(e) => {
            // The firewall went down with the thread that never started.
            if rules.is_some() {
                if let Err(t) = Firewall::remove_leftovers() {
                    log::error!(
                        "removing our kernel rules after the kernel thread failed to start: {t}"
                    );
                }
            }
            return Err(e);
        }
    };
    let ctl = Control {
        kernel: &kernel_tx,
        reports,
        kernel_stats,
        term: &term,
        hup: &hup,
        requests: &requests,
        latest: &latest,
        notify: &notify,
        usr1: &usr1,
        info: Info {
            started: Instant::now(),
            mode: plan.label,
            kernel_path,
            config: plan.config_name(),
            protect,
            bans_enforced: plan.bans_enforced(),
        },
        source,
        crowdsec_sets,
    };
    let path: Result<Box<dyn PacketPath>> = match &plan.source {
        Source::Capture { interfaces, bpf } => MonitorPath::open(interfaces, bpf.as_deref())
            .map(|p| Box::new(p) as Box<dyn PacketPath>),
        Source::Inline => InlinePath::open(&cfg, opts.skip_mark, Arc::clone(&queue_hits))
            .map(|p| Box::new(p) as Box<dyn PacketPath>),
    };
    // A panic on the packet path must still reach the teardown below.
    let result = path.and_then(|p| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serve(plan, cfg, &state, ctl, p)
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
                log::info!("kernel rules removed");
            }
            Ok(code)
        }
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(e)) => Err(e.context("removing kernel rules")),
        (Err(e), Err(t)) => Err(e.context(format!("also, removing kernel rules failed: {t:#}"))),
    }
}

/// What the packet thread gets from the setup.
struct Control<'a> {
    /// Commands for the kernel thread.
    kernel: &'a Sender<KernelCmd>,
    /// The kernel thread's events.
    reports: Receiver<Event>,
    /// The kernel thread's counters.
    kernel_stats: Arc<KernelStats>,
    /// SIGINT/SIGTERM seen.
    term: &'a AtomicBool,
    /// SIGHUP seen.
    hup: &'a AtomicBool,
    /// Control socket requests.
    requests: &'a Receiver<Pending>,
    /// The snapshot the metrics server serves.
    latest: &'a Arc<Mutex<Option<Status>>>,
    /// systemd's notification socket (no-op without one).
    notify: &'a Notifier,
    /// SIGUSR1 seen: the event writer reopens its file.
    usr1: &'a Arc<AtomicBool>,
    /// What `status` reports that does not change.
    info: Info,
    /// Where the config comes from (again on SIGHUP).
    source: DaemonConfig,
    /// Fleet mode's kernel sets, where bans are enforced.
    crowdsec_sets: Option<portcullis_kernel::crowdsec::CrowdsecSets>,
}

/// The packet thread, from the engine's start to the writer's end.
fn serve(
    plan: &RunPlan,
    cfg: Arc<Config>,
    state: &StateDir,
    ctl: Control<'_>,
    path: Box<dyn PacketPath>,
) -> Result<ExitCode> {
    let mut engine = Engine::new(Arc::clone(&cfg), DetectorMode::Thread { capacity: 1024 })
        .context("starting the scan detector")?;
    // Passive: drops are only logged. Bans still apply to the engine's own
    // verdicts (logged as would_block) and, with --enforce-bans, the kernel.
    engine.set_enforcing(plan.verdicts_enforced());
    restore_bans(&mut engine, state, ctl.kernel, ctl.info.bans_enforced);
    let (event_tx, writer, writer_stats) =
        spawn_writer(plan.events.as_deref(), plan.console, Arc::clone(ctl.usr1))?;
    // Fleet mode: started once; a SIGHUP does not change it.
    let fleet = match &cfg.crowdsec {
        Some(c) => {
            let base = plan
                .config
                .as_deref()
                .and_then(std::path::Path::parent)
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            let f = crate::fleet::spawn(crate::fleet::Setup {
                config: c.clone(),
                base,
                protected: crate::fleet::protected_nets(&ctl.info.protect, &cfg.critical_peers),
                sets: ctl.crowdsec_sets.clone(),
                state_dir: plan.state_dir.clone(),
                events: event_tx.clone(),
                repairs: Arc::clone(&ctl.kernel_stats),
            })
            .context("starting fleet mode (crowdsec)")?;
            log::info!(
                "fleet mode: CrowdSec decisions from {} every {}s{}",
                c.lapi_url,
                c.pull_interval.as_secs(),
                if c.push { "; scan findings pushed" } else { "" }
            );
            Some(f)
        }
        None => None,
    };
    let wiring = Wiring {
        kernel: ctl.kernel.clone(),
        events: event_tx,
        reports: ctl.reports,
        kernel_stats: ctl.kernel_stats,
        writer_stats: Arc::clone(&writer_stats),
        requests: ctl.requests.clone(),
        latest: Arc::clone(ctl.latest),
        notify: ctl.notify,
        fleet: fleet.as_ref().map(crate::fleet::Fleet::link),
    };
    let mut packets = PacketLoop::new(engine, path, wiring, ctl.info, ctl.source);
    packets.announce();
    packets.run(ctl.term, ctl.hup)?;
    // Shutting down: settle what is queued, close the windows, stop the
    // fleet thread (it holds an event sender), stop the writer.
    let dropped_events = packets.finish();
    drop(fleet);
    if writer.join().is_err() {
        log::error!("the event writer panicked: the last events may be lost");
    }
    if dropped_events > 0 {
        log::warn!("{dropped_events} events were dropped: the event writer fell behind");
    }
    let unwritten = writer_stats.lost.load(std::sync::atomic::Ordering::Relaxed);
    if unwritten > 0 {
        log::warn!("{unwritten} events were lost: the event log did not take them");
    }
    Ok(ExitCode::SUCCESS)
}

/// Puts the saved bans back into the engine and (acknowledged, 5 s at most)
/// into the kernel: saved bans are in the kernel before we say we serve.
/// Saved bans are real ones: restored only where bans are `enforced`.
fn restore_bans(engine: &mut Engine, state: &StateDir, kernel: &Sender<KernelCmd>, enforced: bool) {
    let bans = match state.load_bans() {
        Ok(b) if enforced => b,
        Ok(_) => return,
        Err(e) => {
            log::warn!("ignoring saved bans: {e:#}");
            return;
        }
    };
    let start = now();
    let mut restored = 0;
    let mut acks = Vec::new();
    for b in bans {
        if engine.restore_ban(b.clone(), start) {
            restored += 1;
            let (ack, done) = crossbeam_channel::bounded(1);
            if kernel.try_send(KernelCmd::ban(b, Some(ack))).is_ok() {
                acks.push(done);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let failed = acks
        .iter()
        .filter(|a| !matches!(a.recv_deadline(deadline), Ok(Ok(()))))
        .count();
    if restored > 0 {
        log::info!(
            "restored {restored} bans from {}{}",
            state.bans_path().display(),
            if failed > 0 {
                format!(" ({failed} not confirmed by the kernel in time)")
            } else {
                String::new()
            }
        );
    }
}
