//! The daemon's kernel thread: every nft call (ban batches, reload,
//! teardown) and the ban state file, so the packet path never waits for a
//! process. Without kernel rules (passive monitor, dry run) it keeps only
//! the state file.

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

/// Tells whoever asked for a kernel change whether it is done.
pub type Ack = Sender<std::result::Result<(), String>>;

/// What the kernel thread is asked to do.
pub enum KernelCmd {
    Ban(Ban, Option<Ack>),
    Unban(IpAddr, Option<Ack>),
    Update(Arc<Config>, Sender<Result<()>>),
}

/// Starts the thread. It tears `fw` down when the channel closes and
/// returns how that went. `fw` runs its programs through whatever
/// [`portcullis_kernel::Runner`] it was installed with (a recording one in
/// tests). `queue_hits` receives the queue rule's packet counter every
/// second (left as it is where the rule is not counted).
/// `state`: where bans are saved after each batch; none when nothing
/// enforces them. `cfg`: the configuration `fw` was installed with.
///
/// Every second it also checks that our kernel objects are all there
/// ([`Firewall::check`]): when something else removed them (`nft flush
/// ruleset`, a firewall manager's reload), it puts them back with the bans'
/// remaining time ([`Firewall::repair`]) and says so.
pub fn spawn(
    fw: Option<(Firewall, KernelRules)>,
    cfg: Arc<Config>,
    rx: Receiver<KernelCmd>,
    state: Option<StateDir>,
    queue_hits: Arc<AtomicU64>,
) -> Result<JoinHandle<Result<()>>> {
    std::thread::Builder::new()
        .name("portcullis-kernel".into())
        .spawn(move || {
            let mut bans: HashMap<IpAddr, Ban> = HashMap::new();
            // Detection (the packet's time) to kernel commit, worst seen.
            let mut worst_latency = Duration::ZERO;
            let mut committed = 0u64;
            let mut last_poll = Instant::now();
            let mut cfg = cfg;
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
                        queue_hits.store(n, Ordering::Relaxed);
                    }
                    if let Some((f, rules)) = &fw {
                        heal(f, *rules, &cfg, &bans);
                    }
                }
                // Wake in time for a deferred write of the bans file.
                let wait = if dirty { SAVE_EVERY / 4 } else { POLL_EVERY };
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
                            let _ = reply.send(r);
                        }
                    }
                }
                let mut outcome = Ok(());
                if let Some((f, _)) = &fw {
                    // Removals first: a ban evicted from a full table
                    // (`scan.max_bans`) leaves the kernel's set before the
                    // one that took its place goes in.
                    if !del.is_empty() {
                        let del: Vec<IpAddr> = del.into_iter().collect();
                        if let Err(e) = f.unban(&del) {
                            log::warn!("removing bans from the kernel: {e}");
                            outcome = Err(e.to_string());
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
                                log::error!("adding bans to the kernel: {e}");
                                outcome = outcome.and(Err(e.to_string()));
                            }
                        }
                    }
                }
                for ack in acks {
                    let _ = ack.send(outcome.clone());
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
            match fw {
                Some((f, _)) => f.teardown().map_err(anyhow::Error::from),
                None => Ok(()),
            }
        })
        .context("starting the kernel thread")
}

/// Puts our kernel objects back if something else removed them.
fn heal(f: &Firewall, rules: KernelRules, cfg: &Config, bans: &HashMap<IpAddr, Ban>) {
    let damage = match f.check() {
        Ok(d) if d.any() => d,
        Ok(_) => return,
        Err(e) => {
            log::warn!("checking our kernel rules: {e}");
            return;
        }
    };
    let t = now();
    let left: Vec<(IpAddr, Duration)> = bans
        .values()
        .map(|b| {
            (
                b.addr,
                Duration::from_micros(b.until.as_micros().saturating_sub(t.as_micros())),
            )
        })
        .filter(|(_, d)| !d.is_zero())
        .collect();
    let what = match (damage.table, damage.iptables) {
        (true, true) => "the table and the iptables jumps",
        (true, false) => "the table",
        _ => "the iptables jumps",
    };
    match f.repair(&rules.plan(cfg), damage, &left) {
        Ok(()) => log::warn!(
            "something removed our kernel rules ({what}); put back with {} bans",
            left.len()
        ),
        Err(e) => log::error!("putting back our kernel rules ({what}): {e}"),
    }
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
            KernelCmd::Ban(ban("198.18.0.1"), None),
            KernelCmd::Ban(ban("198.18.0.2"), Some(ack)),
            KernelCmd::Ban(ban("2001:2::5"), None),
            KernelCmd::Unban("198.18.0.9".parse().unwrap(), None),
            // The last word on an address wins.
            KernelCmd::Ban(ban("198.18.0.3"), None),
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
            hits,
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
            Arc::new(AtomicU64::new(0)),
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
        tx.send(KernelCmd::Ban(over, Some(ack))).unwrap();
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
            Arc::new(AtomicU64::new(0)),
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
        tx.send(KernelCmd::Ban(ban("198.18.0.1"), Some(ack)))
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
            Arc::new(AtomicU64::new(0)),
        )
        .unwrap();
        let ban_one = |i: u8| {
            let (ack, done) = crossbeam_channel::bounded(1);
            tx.send(KernelCmd::Ban(ban(&format!("198.18.0.{i}")), Some(ack)))
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
