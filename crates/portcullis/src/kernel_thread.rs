//! The daemon's kernel thread: every nft call (ban batches, reload,
//! teardown) and the ban state file, so the packet path never waits for a
//! process. Without kernel rules (passive monitor, dry run) it keeps only
//! the state file.
//!
//! **Invariant: nothing it fails at is silent.** A ban the kernel refuses
//! is reported in its `ban` event (`enforced: false` and the error), counted
//! and tried again with backoff ([`RETRY_FIRST`] doubling up to
//! [`RETRY_MAX`]) until the kernel takes it (a second `ban` event with
//! `attempts`) or the ban ends; a failed unban likewise until it works or
//! the kernel's own timeout has ended the ban. Rules something else
//! removed are put back and reported in a `rules` event. Everything is
//! counted in [`KernelStats`] (`status`, metrics).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};
use portcullis_engine::config::Config;
use portcullis_engine::engine::Ban;
use portcullis_engine::events::{
    BanEvent, BanInfo, Body, Event, RulesAction, RulesEvent, RulesInfo, Source,
};
use portcullis_engine::Timestamp;
use portcullis_kernel::Firewall;

use crate::clock::now;
use crate::plan::KernelRules;
use crate::state::StateDir;

/// How long the kernel thread gathers ban changes into one nft call.
const BAN_BATCH_WINDOW: Duration = Duration::from_millis(20);
/// How often the queue rule's counter is read.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// The bans file is written at most this often (and at exit): a flood of
/// bans costs one write a second, not one per batch.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// A failed ban or unban is tried again after this long, then after twice
/// as long each time, up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between two tries of a failed ban or unban.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// Events the kernel thread can have waiting for the packet thread.
pub const REPORTS: usize = 4096;

/// Tells whoever asked for a kernel change whether it is done.
pub type Ack = Sender<std::result::Result<(), String>>;

/// What the kernel thread is asked to do.
pub enum KernelCmd {
    /// A ban. `ack` hears whether the kernel took it; `event` (the engine's
    /// `ban` event for it) is sent on to the event log once the kernel has
    /// answered, saying whether the ban is enforced.
    Ban {
        ban: Ban,
        ack: Option<Ack>,
        event: Option<Box<Event>>,
    },
    Unban(IpAddr, Option<Ack>),
    Update(Arc<Config>, Sender<Result<()>>),
}

impl KernelCmd {
    /// A ban with nothing to report back.
    pub fn ban(ban: Ban, ack: Option<Ack>) -> Self {
        Self::Ban {
            ban,
            ack,
            event: None,
        }
    }
}

/// What the kernel thread failed at and repaired, since the start
/// (`status`, metrics).
#[derive(Debug, Default)]
pub struct KernelStats {
    /// Times something else removed our kernel objects and we put them
    /// back.
    pub rules_restored: AtomicU64,
    /// Tries to put them back that failed.
    pub rules_restore_failed: AtomicU64,
    /// Bans the kernel refused at the first try.
    pub bans_failed: AtomicU64,
    /// Of those, bans a later try put into the kernel.
    pub bans_enforced_late: AtomicU64,
    /// Unbans the kernel refused at the first try.
    pub unbans_failed: AtomicU64,
    /// Bans and unbans waiting for another try now (gauge).
    pub retrying: AtomicU64,
    /// Conntrack entries of banned peers deleted (their flows ended), as
    /// the firewall's flow-ending thread reports them.
    pub flows_ended: AtomicU64,
    /// Times ending banned peers' flows did not happen: failed passes
    /// (each tried again, four times at most), and addresses beyond the
    /// thread's bound.
    pub flow_end_failures: AtomicU64,
    /// Events of the kernel thread lost because the packet thread did not
    /// take them in time.
    pub events_dropped: AtomicU64,
}

/// What the kernel thread shares with the rest of the daemon.
#[derive(Debug, Clone)]
pub struct Links {
    /// The queue rule's packet counter, every second (left as it is where
    /// the rule is not counted).
    pub queue_hits: Arc<AtomicU64>,
    pub stats: Arc<KernelStats>,
    /// Its events (`ban` with the kernel's answer, `rules`), for the packet
    /// thread to forward.
    pub reports: Sender<Event>,
}

impl Links {
    /// New links and the receiving end of the reports.
    pub fn new(queue_hits: Arc<AtomicU64>) -> (Self, Receiver<Event>) {
        let (reports, rx) = crossbeam_channel::bounded(REPORTS);
        (
            Self {
                queue_hits,
                stats: Arc::new(KernelStats::default()),
                reports,
            },
            rx,
        )
    }

    fn report(&self, ev: Event) {
        if self.reports.try_send(ev).is_err() {
            self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A change the kernel refused, waiting for another try.
#[derive(Debug, Clone)]
struct Retry {
    /// True: a ban (its details in the thread's bans); false: an unban.
    ban: bool,
    /// Tries so far.
    attempts: u32,
    next: Instant,
    /// Unbans: when the kernel's own timeout ends the ban anyway.
    until: Option<Timestamp>,
}

/// The wait after the `attempts`-th failed try.
fn backoff(attempts: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

/// The time left of `b` at `t`.
fn left(b: &Ban, t: Timestamp) -> Duration {
    Duration::from_micros(b.until.as_micros().saturating_sub(t.as_micros()))
}

/// The `ban` event of a ban the kernel took only on a later try.
fn late_ban_event(b: &Ban, attempts: u32) -> Event {
    Event::new(
        now(),
        Body::Ban(BanEvent {
            source: Source { src_ip: b.addr },
            ban: BanInfo {
                reason: b.reason.clone(),
                duration: b.until.since(b.since).as_secs(),
                expires: b.until,
                enforced: true,
                error: None,
                attempts: Some(attempts),
            },
        }),
    )
}

/// Starts the thread. It tears `fw` down when the channel closes and
/// returns how that went. `fw` runs its programs through whatever
/// [`portcullis_kernel::Runner`] it was installed with (a recording one in
/// tests). `links`: the queue rule's counter, the counters, where its
/// events go.
/// `state`: where bans are saved after each batch; none when nothing
/// enforces them. `cfg`: the configuration `fw` was installed with.
///
/// Every second it also checks that our kernel objects are all there
/// ([`Firewall::check`]): when something else removed them (`nft flush
/// ruleset`, a firewall manager's reload), it puts them back with the bans'
/// remaining time ([`Firewall::repair`]) and says so in a `rules` event.
pub fn spawn(
    fw: Option<(Firewall, KernelRules)>,
    cfg: Arc<Config>,
    rx: Receiver<KernelCmd>,
    state: Option<StateDir>,
    links: Links,
) -> Result<JoinHandle<Result<()>>> {
    std::thread::Builder::new()
        .name("portcullis-kernel".into())
        .spawn(move || {
            let mut bans: HashMap<IpAddr, Ban> = HashMap::new();
            let mut retry: HashMap<IpAddr, Retry> = HashMap::new();
            // Detection (the packet's time) to kernel commit, worst seen.
            let mut worst_latency = Duration::ZERO;
            let mut committed = 0u64;
            let mut last_poll = Instant::now();
            let mut cfg = cfg;
            // Putting our rules back has failed since it was last reported.
            let mut healing_failed = false;
            // Bans changed since the file was last written.
            let mut dirty = false;
            let mut last_save: Option<Instant> = None;
            let save = |bans: &HashMap<IpAddr, Ban>| {
                if let Some(Err(e)) = state.as_ref().map(|s| s.save_bans(bans.values())) {
                    log::warn!("{e:#}");
                }
            };
            loop {
                if dirty && last_save.is_none_or(|t| t.elapsed() >= SAVE_EVERY) {
                    save(&bans);
                    dirty = false;
                    last_save = Some(Instant::now());
                }
                if last_poll.elapsed() >= POLL_EVERY {
                    last_poll = Instant::now();
                    if let Some(Ok(Some(n))) = fw.as_ref().map(|(f, _)| f.queue_rule_packets()) {
                        links.queue_hits.store(n, Ordering::Relaxed);
                    }
                    if let Some((f, rules)) = &fw {
                        if let Some(ev) =
                            heal(f, *rules, &cfg, &bans, &links.stats, &mut healing_failed)
                        {
                            links.report(ev);
                        }
                        flow_ending(f, &links.stats);
                    }
                }
                if let Some((f, _)) = &fw {
                    retry_due(f, &mut retry, &bans, &links);
                }
                links
                    .stats
                    .retrying
                    .store(retry.len() as u64, Ordering::Relaxed);
                // Wake in time for a deferred write of the bans file and
                // the next retry.
                let mut wait = if dirty { SAVE_EVERY / 4 } else { POLL_EVERY };
                if let Some(next) = retry.values().map(|r| r.next).min() {
                    wait = wait.min(next.saturating_duration_since(Instant::now()));
                }
                let first = match rx.recv_timeout(wait) {
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
                let mut add: HashMap<IpAddr, Duration> = HashMap::new();
                let mut del: HashSet<IpAddr> = HashSet::new();
                let mut acks: Vec<Ack> = Vec::new();
                let mut events: Vec<Event> = Vec::new();
                let mut oldest: Option<Timestamp> = None;
                // Unbans: when the kernel would end the ban by itself.
                let mut ends: HashMap<IpAddr, Timestamp> = HashMap::new();
                for c in cmds {
                    match c {
                        KernelCmd::Ban { ban: b, ack, event } => {
                            let left = left(&b, now());
                            // A new word on the address: an older failure
                            // is moot.
                            retry.remove(&b.addr);
                            if !left.is_zero() {
                                del.remove(&b.addr);
                                add.insert(b.addr, left);
                                oldest = Some(oldest.map_or(b.since, |o| o.min(b.since)));
                                bans.insert(b.addr, b);
                            }
                            acks.extend(ack);
                            events.extend(event.map(|e| *e));
                        }
                        KernelCmd::Unban(a, ack) => {
                            retry.remove(&a);
                            add.remove(&a);
                            del.insert(a);
                            if let Some(b) = bans.remove(&a) {
                                ends.insert(a, b.until);
                            }
                            acks.extend(ack);
                        }
                        KernelCmd::Update(new, reply) => {
                            let r = match &fw {
                                Some((f, rules)) => {
                                    f.update(&rules.plan(&new)).map_err(anyhow::Error::from)
                                }
                                None => Ok(()),
                            };
                            if r.is_ok() {
                                cfg = new;
                            }
                            // The reload thread waits for this, or is gone.
                            let _ = reply.send(r);
                        }
                    }
                }
                let mut outcome = Ok(());
                // The kernel's refusal of the bans in `add`, if any.
                let mut refused: Option<String> = None;
                if let Some((f, _)) = &fw {
                    // Removals first: a ban evicted from a full table
                    // (`scan.max_bans`) leaves the kernel's set before the
                    // one that took its place goes in.
                    if !del.is_empty() {
                        let del: Vec<IpAddr> = del.into_iter().collect();
                        if let Err(e) = f.unban(&del) {
                            log::error!(
                                "removing {} bans from the kernel: {e}; trying again in {} s",
                                del.len(),
                                RETRY_FIRST.as_secs()
                            );
                            outcome = Err(e.to_string());
                            links
                                .stats
                                .unbans_failed
                                .fetch_add(del.len() as u64, Ordering::Relaxed);
                            for a in del {
                                retry.insert(
                                    a,
                                    Retry {
                                        ban: false,
                                        attempts: 1,
                                        next: Instant::now() + backoff(1),
                                        until: ends.get(&a).copied(),
                                    },
                                );
                            }
                        }
                    }
                    if !add.is_empty() {
                        let add: Vec<(IpAddr, Duration)> = add.into_iter().collect();
                        match f.ban(&add) {
                            Ok(()) => {
                                committed += add.len() as u64;
                                if let Some(o) = oldest {
                                    worst_latency = worst_latency.max(now().since(o));
                                }
                            }
                            Err(e) => {
                                log::error!(
                                    "adding {} bans to the kernel: {e}; trying again in {} s",
                                    add.len(),
                                    RETRY_FIRST.as_secs()
                                );
                                outcome = outcome.and(Err(e.to_string()));
                                refused = Some(e.to_string());
                                links
                                    .stats
                                    .bans_failed
                                    .fetch_add(add.len() as u64, Ordering::Relaxed);
                                for (a, _) in add {
                                    retry.insert(
                                        a,
                                        Retry {
                                            ban: true,
                                            attempts: 1,
                                            next: Instant::now() + backoff(1),
                                            until: None,
                                        },
                                    );
                                }
                            }
                        }
                    }
                }
                for ack in acks {
                    // Whoever asked may have given up waiting.
                    let _ = ack.send(outcome.clone());
                }
                for mut ev in events {
                    if let (Body::Ban(e), Some(err)) = (&mut ev.body, &refused) {
                        if retry.get(&e.source.src_ip).is_some_and(|r| r.ban) {
                            e.ban.enforced = false;
                            e.ban.error = Some(err.clone());
                        }
                    }
                    links.report(ev);
                }
                dirty = true;
                if last_save.is_none_or(|t| t.elapsed() >= SAVE_EVERY) {
                    save(&bans);
                    dirty = false;
                    last_save = Some(Instant::now());
                }
            }
            if dirty {
                save(&bans);
            }
            if committed > 0 {
                log::info!(
                    "{committed} bans committed to the kernel; worst latency from detection {} ms",
                    worst_latency.as_millis()
                );
            }
            if !retry.is_empty() {
                log::warn!(
                    "{} ban changes the kernel refused were still waiting for another try at exit",
                    retry.len()
                );
            }
            match fw {
                Some((f, _)) => f.teardown().map_err(anyhow::Error::from),
                None => Ok(()),
            }
        })
        .context("starting the kernel thread")
}

/// Takes the flow-ending thread's record into `stats`, and logs what
/// failed since the last look (the bans themselves are in force: new
/// connections are refused, open ones may go on).
fn flow_ending(f: &Firewall, stats: &KernelStats) {
    let Some(done) = f.flow_ending() else {
        return;
    };
    stats
        .flows_ended
        .store(done.entries_deleted, Ordering::Relaxed);
    let failures = done.failed + done.overflowed;
    let before = stats.flow_end_failures.swap(failures, Ordering::Relaxed);
    if failures > before {
        log::error!(
            "ending banned peers' open connections failed {} more times (since the start: {} addresses \
             over the bound, {} given up after five tries): {}; the bans hold for new connections",
            failures - before,
            done.overflowed,
            done.abandoned,
            done.last_error.as_deref().unwrap_or("no message")
        );
    }
}

/// Tries again the bans and unbans that are due. A failed batch may have
/// left the kernel's sets anywhere between before and after (and a set
/// full of lifted bans waiting for garbage collection refuses new ones),
/// so the retry is a resynchronisation: one nft transaction that flushes
/// both ban sets and adds every ban still in force, whatever is due.
fn retry_due(
    f: &Firewall,
    retry: &mut HashMap<IpAddr, Retry>,
    bans: &HashMap<IpAddr, Ban>,
    links: &Links,
) {
    let (t, at) = (now(), Instant::now());
    // Over: bans that ended, unbans the kernel's timeout has done.
    retry.retain(|a, r| {
        if r.ban {
            bans.get(a).is_some_and(|b| !left(b, t).is_zero())
        } else {
            r.until.is_none_or(|u| u > t)
        }
    });
    let due: Vec<IpAddr> = retry
        .iter()
        .filter(|(_, r)| r.next <= at)
        .map(|(a, _)| *a)
        .collect();
    if due.is_empty() {
        return;
    }
    let live: Vec<(IpAddr, Duration)> = bans
        .values()
        .map(|b| (b.addr, left(b, t)))
        .filter(|(_, d)| !d.is_zero())
        .collect();
    match f.resync_bans(&live) {
        Ok(()) => {
            // Everything is as it should be now, due or not yet.
            let mut late = 0usize;
            for (a, r) in retry.drain() {
                if r.ban {
                    if let Some(b) = bans.get(&a) {
                        late += 1;
                        links
                            .stats
                            .bans_enforced_late
                            .fetch_add(1, Ordering::Relaxed);
                        links.report(late_ban_event(b, r.attempts + 1));
                    }
                }
            }
            log::info!(
                "ban sets resynchronised with the {} bans in force ({late} of them refused before)",
                live.len()
            );
        }
        Err(e) => {
            let mut longest = Duration::ZERO;
            for a in due {
                if let Some(r) = retry.get_mut(&a) {
                    r.attempts += 1;
                    let wait = backoff(r.attempts);
                    longest = longest.max(wait);
                    r.next = at + wait;
                }
            }
            log::error!(
                "resynchronising the ban sets with the {} bans in force failed: {e}; next try in {} s",
                live.len(),
                longest.as_secs()
            );
        }
    }
}

/// Puts our kernel objects back if something else removed them; the
/// `rules` event that says so (a failure only once until it works).
fn heal(
    f: &Firewall,
    rules: KernelRules,
    cfg: &Config,
    bans: &HashMap<IpAddr, Ban>,
    stats: &KernelStats,
    failing: &mut bool,
) -> Option<Event> {
    let damage = match f.check() {
        Ok(d) if d.any() => d,
        Ok(_) => return None,
        Err(e) => {
            log::warn!("checking our kernel rules: {e}");
            return None;
        }
    };
    let t = now();
    let left: Vec<(IpAddr, Duration)> = bans
        .values()
        .map(|b| (b.addr, left(b, t)))
        .filter(|(_, d)| !d.is_zero())
        .collect();
    let missing = damage.missing.clone();
    let what = missing.join(", ");
    // Bans go back only with the table (the iptables objects hold none).
    let bans_back = if damage.table { left.len() } else { 0 };
    let info = match f.repair(&rules.plan(cfg), damage, &left) {
        Ok(()) => {
            *failing = false;
            stats.rules_restored.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "something removed our kernel rules ({what}); put back with {bans_back} bans"
            );
            RulesInfo {
                action: RulesAction::Restored,
                missing,
                bans_restored: bans_back,
                error: None,
            }
        }
        Err(e) => {
            stats.rules_restore_failed.fetch_add(1, Ordering::Relaxed);
            log::error!("putting back our kernel rules ({what}): {e}; trying again in 1 s");
            if std::mem::replace(failing, true) {
                return None;
            }
            RulesInfo {
                action: RulesAction::RestoreFailed,
                missing,
                bans_restored: 0,
                error: Some(e.to_string()),
            }
        }
    };
    Some(Event::new(now(), Body::Rules(RulesEvent { rules: info })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    fn cfg_default() -> portcullis_engine::config::Config {
        portcullis_engine::config::Config::default()
    }

    use super::*;
    use crate::testing::RecordingRunner;

    fn ban(addr: &str) -> Ban {
        let t = now();
        Ban {
            addr: addr.parse().unwrap(),
            since: t,
            until: t.saturating_add(Duration::from_secs(600)),
            reason: "scan:syn".into(),
        }
    }

    /// The `nft` calls whose script names `addr`.
    fn naming(calls: &[crate::testing::Call], addr: &str) -> usize {
        calls.iter().filter(|c| c.stdin.contains(addr)).count()
    }

    #[test]
    fn changes_arriving_together_go_to_the_kernel_in_one_call_each_way() {
        let runner = RecordingRunner::new();
        let cfg = Arc::new(Config::default_policy().unwrap());
        let fw = runner.firewall(KernelRules::Full, &cfg);
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        // Queued before the thread starts: its first receive finds them all.
        let (tx, rx) = crossbeam_channel::bounded(16);
        let (ack, done) = crossbeam_channel::bounded(1);
        for cmd in [
            KernelCmd::ban(ban("198.18.0.1"), None),
            KernelCmd::ban(ban("198.18.0.2"), Some(ack)),
            KernelCmd::ban(ban("2001:2::5"), None),
            KernelCmd::Unban("198.18.0.9".parse().unwrap(), None),
            // The last word on an address wins.
            KernelCmd::ban(ban("198.18.0.3"), None),
            KernelCmd::Unban("198.18.0.3".parse().unwrap(), None),
        ] {
            tx.send(cmd).unwrap();
        }
        let hits = Arc::new(AtomicU64::new(0));
        let thread = spawn(
            Some((fw, KernelRules::Full)),
            Arc::new(cfg_default()),
            rx,
            Some(state.clone()),
            Links::new(hits).0,
        )
        .unwrap();
        assert_eq!(done.recv_timeout(Duration::from_secs(5)), Ok(Ok(())));
        drop(tx);
        thread.join().unwrap().unwrap();

        let calls = runner.calls();
        let commands: Vec<&str> = calls.iter().map(|c| c.command.as_str()).collect();
        // Unbans first (a full set's evicted ban leaves before its
        // replacement comes), bans, teardown.
        assert_eq!(commands, ["nft -f -"; 3], "{calls:#?}");
        let (unbans, bans) = (&calls[0].stdin, &calls[1].stdin);
        for a in [
            "198.18.0.1 timeout",
            "198.18.0.2 timeout",
            "2001:2::5 timeout",
        ] {
            assert!(bans.contains(a), "{a} not in {bans}");
        }
        assert!(!bans.contains("198.18.0.3") && !bans.contains("198.18.0.9"));
        for a in ["198.18.0.3", "198.18.0.9"] {
            assert!(unbans.contains(a), "{a} not in {unbans}");
            assert_eq!(naming(&calls, a), 1);
        }
        // The state file holds what is banned now.
        let mut saved: Vec<String> = state
            .load_bans()
            .unwrap()
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        saved.sort();
        assert_eq!(saved, ["198.18.0.1", "198.18.0.2", "2001:2::5"]);
    }

    #[test]
    fn reload_updates_the_kernel_and_a_failed_ban_is_reported_to_who_asked() {
        let runner = RecordingRunner::new();
        let cfg = Arc::new(Config::default_policy().unwrap());
        let fw = runner.firewall(KernelRules::Full, &cfg);
        let (tx, rx) = crossbeam_channel::bounded(16);
        let thread = spawn(
            Some((fw, KernelRules::Full)),
            Arc::new(cfg_default()),
            rx,
            None,
            Links::new(Arc::new(AtomicU64::new(0))).0,
        )
        .unwrap();
        let (reply, result) = crossbeam_channel::bounded(1);
        tx.send(KernelCmd::Update(Arc::clone(&cfg), reply)).unwrap();
        result
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .unwrap();
        let calls = runner.calls();
        assert!(!calls.is_empty());
        assert!(
            calls.iter().all(|c| c.command.starts_with("nft ")),
            "{calls:#?}"
        );
        // A ban that is over before it reaches the kernel is not written;
        // the asker still hears back.
        let mut over = ban("198.18.0.4");
        over.until = over.since;
        let (ack, done) = crossbeam_channel::bounded(1);
        tx.send(KernelCmd::ban(over, Some(ack))).unwrap();
        assert_eq!(done.recv_timeout(Duration::from_secs(5)), Ok(Ok(())));
        assert_eq!(naming(&runner.calls(), "198.18.0.4"), 0);
        drop(tx);
        thread.join().unwrap().unwrap();
    }

    #[test]
    fn without_kernel_rules_nothing_runs_and_updates_succeed() {
        let (tx, rx) = crossbeam_channel::bounded(16);
        let thread = spawn(
            None,
            Arc::new(cfg_default()),
            rx,
            None,
            Links::new(Arc::new(AtomicU64::new(0))).0,
        )
        .unwrap();
        let (reply, result) = crossbeam_channel::bounded(1);
        let cfg = Arc::new(Config::default_policy().unwrap());
        tx.send(KernelCmd::Update(cfg, reply)).unwrap();
        result
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .unwrap();
        let (ack, done) = crossbeam_channel::bounded(1);
        tx.send(KernelCmd::ban(ban("198.18.0.1"), Some(ack)))
            .unwrap();
        assert_eq!(done.recv_timeout(Duration::from_secs(5)), Ok(Ok(())));
        drop(tx);
        thread.join().unwrap().unwrap();
    }

    /// Issue 11, item 1: under a stream of bans the state file is written
    /// at most once a second (each write renames a new file into place: a
    /// new inode), and what was deferred is written within the second.
    #[test]
    fn the_bans_file_is_written_at_most_once_a_second() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let file = state.bans_path();
        let (tx, rx) = crossbeam_channel::bounded(16);
        let thread = spawn(
            None,
            Arc::new(cfg_default()),
            rx,
            Some(state.clone()),
            Links::new(Arc::new(AtomicU64::new(0))).0,
        )
        .unwrap();
        let ban_one = |i: u8| {
            let (ack, done) = crossbeam_channel::bounded(1);
            tx.send(KernelCmd::ban(ban(&format!("198.18.0.{i}")), Some(ack)))
                .unwrap();
            assert_eq!(done.recv_timeout(Duration::from_secs(5)), Ok(Ok(())));
        };
        ban_one(1);
        // The first change is written at once (the ack comes just before).
        let first = wait(|| std::fs::metadata(&file).ok().map(|m| m.ino()));
        let t = Instant::now();
        for i in 2..=10 {
            ban_one(i);
            std::thread::sleep(Duration::from_millis(20));
        }
        if t.elapsed() < Duration::from_millis(800) {
            assert_eq!(
                std::fs::metadata(&file).unwrap().ino(),
                first,
                "written again within the second"
            );
        }
        let later = wait(|| {
            let ino = std::fs::metadata(&file).ok()?.ino();
            (ino != first).then_some(ino)
        });
        assert_ne!(later, first);
        assert_eq!(state.load_bans().unwrap().len(), 10);
        drop(tx);
        thread.join().unwrap().unwrap();
    }

    fn wait<T>(mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
