//! Fleet mode on a CrowdSec Local API (the rules file's `crowdsec`
//! section; docs/fleet.md): its own thread pulls the decision stream into
//! the kernel's CrowdSec sets and pushes our scan findings as alerts.
//!
//! - **Pull**: `startup=true` first, then deltas every `pull_interval`.
//!   Failures retry with backoff (doubling up to [`MAX_BACKOFF`]); the
//!   decisions in force stay in the kernel until their own timeouts, and
//!   `status` says how stale they are and why. A malformed answer is
//!   refused whole with a `fleet` event (`rejected`) and lifts nothing.
//! - **Kernel**: the sets are changed by this thread with one `nft`
//!   transaction per pull ([`portcullis_kernel::crowdsec`]); a startup
//!   answer, or any refused change, loads them whole.
//! - **Push**: findings arrive through a bounded channel (the packet
//!   thread never waits: a full channel drops and counts), wait in the
//!   on-disk queue ([`queue`]) and are pushed oldest first, each once.
//! - **Who wins**: loopback, the protected addresses and the critical
//!   peers are taken out in [`model`]; the allowlist's accept comes before
//!   the CrowdSec sets in the kernel.
//!
//! The thread never touches the engine: CrowdSec's addresses are dropped
//! in the kernel before any packet reaches user space.

pub mod model;
pub mod queue;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use ipnet::IpNet;
use portcullis_crowdsec::{
    Bouncer, ClientConfig, CrowdsecError, DecisionKind, Limits, Overflow, TlsOptions, Watcher,
};
use portcullis_engine::config::CrowdsecConfig;
use portcullis_engine::events::{
    rfc3339, Body, Event, FleetAction, FleetEvent, FleetInfo, ScanEvent, ScanPhase,
};
use portcullis_kernel::crowdsec::CrowdsecSets;

use crate::clock::now;
use crate::control::{Answer, Request};
use crate::kernel_thread::KernelStats;
pub use crate::status::FleetStatus;
use model::Model;
use queue::{AlertQueue, Finding};

/// Longest wait between two pulls after failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Findings in flight between the packet thread and this one.
const CHANNEL: usize = 1024;
/// Findings pushed per turn at most (the thread also has pulls to do).
const PUSH_BURST: usize = 64;
/// CrowdSec entries a `bans` answer lists at most.
const BANS_LISTED: usize = 1000;

/// What the packet thread holds of the fleet thread.
#[derive(Debug, Clone)]
pub struct FleetLink {
    findings: Sender<Finding>,
    status: Arc<Mutex<FleetStatus>>,
    model: Arc<Mutex<Model>>,
    lost: Arc<AtomicU64>,
}

impl FleetLink {
    /// Hands a `scan` event's finding to the pusher, when it started a ban
    /// of `ban` (never waits; a full channel counts a loss).
    pub fn finding(&self, e: &ScanEvent, ban: Duration) {
        let s = &e.scan;
        if s.phase != ScanPhase::Start {
            return;
        }
        let f = Finding {
            source: e.source.src_ip,
            kind: s.kind.to_string(),
            ports: s.port_sample.clone(),
            probes: s.probes,
            start_ms: s.first_seen.as_micros() / 1000,
            stop_ms: s.last_seen.as_micros() / 1000,
            ban_secs: ban.as_secs(),
        };
        if let Err(TrySendError::Full(_)) = self.findings.try_send(f) {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The status, unless the fleet thread holds it right now.
    pub fn status(&self) -> Option<FleetStatus> {
        self.status.try_lock().ok().map(|s| s.clone())
    }

    /// Adds the CrowdSec side to a `bans` or `explain` answer. Never
    /// waits: while the fleet thread changes the decisions, says so.
    pub fn augment(&self, req: &Request, answer: Answer) -> Answer {
        let Answer::Now(Ok(mut value)) = answer else {
            return answer;
        };
        let t = now();
        let now_ms = t.as_micros() / 1000;
        let view = |net: IpNet, e: &model::Entry| {
            let value = if net.prefix_len() == net.max_prefix_len() {
                net.addr().to_string()
            } else {
                net.to_string()
            };
            serde_json::json!({
                "addr": value,
                "origin": "crowdsec",
                "crowdsec_origin": e.origin,
                "scenario": e.scenario,
                "reason": format!("crowdsec:{}", e.scenario),
                "id": e.id,
                "until": rfc3339(portcullis_engine::Timestamp::from_micros(e.until_ms.saturating_mul(1000))),
                "seconds_left": e.until_ms.saturating_sub(now_ms) / 1000,
                "enforced": true,
            })
        };
        match (req, &mut value) {
            (Request::Bans, serde_json::Value::Array(list)) => match self.model.try_lock() {
                Ok(m) => list.extend(m.list(BANS_LISTED).iter().map(|(n, e)| view(*n, e))),
                Err(_) => list.push(serde_json::json!({"origin": "crowdsec", "busy": true})),
            },
            (Request::Explain { addr }, serde_json::Value::Object(obj)) => {
                let found = match self.model.try_lock() {
                    Ok(m) => m
                        .lookup(*addr)
                        .iter()
                        .map(|(n, e)| view(*n, e))
                        .collect::<Vec<_>>(),
                    Err(_) => vec![serde_json::json!({"busy": true})],
                };
                obj.insert("crowdsec".into(), serde_json::Value::Array(found));
            }
            _ => {}
        }
        Answer::Now(Ok(value))
    }
}

/// The running fleet thread; dropping it stops the thread (within a
/// request's timeout) and waits for it.
#[derive(Debug)]
pub struct Fleet {
    link: FleetLink,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Fleet {
    pub fn link(&self) -> FleetLink {
        self.link.clone()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What the fleet thread needs.
pub struct Setup {
    pub config: CrowdsecConfig,
    /// Relative file names in `config` are resolved against this folder
    /// (the rules file's).
    pub base: PathBuf,
    /// Never in the CrowdSec sets (loopback is added).
    pub protected: Vec<IpNet>,
    /// The kernel sets; none when nothing enforces bans (the decisions are
    /// then only tracked).
    pub sets: Option<CrowdsecSets>,
    /// `--state-dir`: the alert queue's folder.
    pub state_dir: PathBuf,
    pub events: Sender<Event>,
    /// The kernel thread's repairs of our rules: when it has put the table
    /// back (after `nft flush ruleset`, say), the CrowdSec sets came back
    /// empty and are loaded whole again at once.
    pub repairs: Arc<KernelStats>,
}

fn resolve(base: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// The first line of a secret file, trimmed.
fn secret(base: &Path, file: &str, what: &str) -> Result<String> {
    let path = resolve(base, file);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("crowdsec.{what}: cannot read {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim().to_owned();
    if line.is_empty() {
        anyhow::bail!("crowdsec.{what}: {} is empty", path.display());
    }
    Ok(line)
}

fn kind(name: &str) -> Option<DecisionKind> {
    match name {
        "ban" => Some(DecisionKind::Ban),
        "captcha" => Some(DecisionKind::Captcha),
        "throttle" => Some(DecisionKind::Throttle),
        _ => None,
    }
}

/// Reads the secrets, builds the clients, opens the alert queue and
/// starts the thread. Bad files or URLs are errors here, before anything
/// runs.
pub fn spawn(setup: Setup) -> Result<Fleet> {
    let c = &setup.config;
    let mut client = ClientConfig::new(c.lapi_url.clone());
    client.timeout = Duration::from_secs(5);
    client.danger_plain_http_remote = c.danger_plain_http_remote;
    client.limits = Limits {
        // Per list of one answer; the model bounds what is held.
        max_decisions: c.max_decisions.saturating_mul(2).max(1024),
        overflow: Overflow::Truncate,
    };
    client.tls = TlsOptions {
        ca_file: c.ca_file.as_deref().map(|f| resolve(&setup.base, f)),
        client_cert: c.client_cert.as_ref().map(|(f, _)| resolve(&setup.base, f)),
        client_key: c.client_cert.as_ref().map(|(_, f)| resolve(&setup.base, f)),
    };
    let key = match &c.api_key_file {
        Some(f) => secret(&setup.base, f, "api_key_file")?,
        None => String::new(),
    };
    let bouncer = Bouncer::new(&client, key).context("crowdsec.lapi_url")?;
    let watcher = match (&c.machine, c.push) {
        (Some((id, pw)), true) => {
            let pw = secret(&setup.base, pw, "password_file")?;
            Some(Watcher::new(&client, id.clone(), pw).context("crowdsec.lapi_url")?)
        }
        _ => None,
    };
    let queue = match watcher {
        Some(_) => Some(AlertQueue::open(&setup.state_dir, c.max_queued_alerts)?),
        None => None,
    };
    if let Some(q) = queue.as_ref().filter(|q| q.damaged > 0) {
        log::warn!(
            "{}: {} damaged lines skipped",
            q.path().display(),
            q.damaged
        );
    }
    let types: Vec<DecisionKind> = c.decision_types.iter().filter_map(|t| kind(t)).collect();
    let model = Arc::new(Mutex::new(Model::new(
        c.max_decisions,
        types,
        setup.protected.clone(),
    )));
    let status = Arc::new(Mutex::new(FleetStatus {
        lapi_url: c.lapi_url.clone(),
        push: watcher.is_some(),
        alerts_queued: queue.as_ref().map_or(0, AlertQueue::len),
        ..FleetStatus::default()
    }));
    let (tx, rx) = crossbeam_channel::bounded(CHANNEL);
    let stop = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(AtomicU64::new(0));
    let link = FleetLink {
        findings: tx,
        status: Arc::clone(&status),
        model: Arc::clone(&model),
        lost: Arc::clone(&lost),
    };
    let mut worker = Worker {
        interval: c.pull_interval,
        bouncer,
        watcher,
        queue,
        sets: setup.sets,
        model,
        status,
        events: setup.events,
        findings: rx,
        lost,
        startup: true,
        resync: false,
        repairs_seen: setup.repairs.rules_restored.load(Ordering::Relaxed),
        repairs: setup.repairs,
        failing: 0,
        push_failing: 0,
        next_pull: Instant::now(),
        next_push: Instant::now(),
        last_ok: None,
    };
    let stop2 = Arc::clone(&stop);
    let handle = std::thread::Builder::new()
        .name("portcullis-fleet".into())
        .spawn(move || worker.run(&stop2))
        .context("starting the fleet thread")?;
    Ok(Fleet {
        link,
        stop,
        handle: Some(handle),
    })
}

struct Worker {
    interval: Duration,
    bouncer: Bouncer,
    watcher: Option<Watcher>,
    queue: Option<AlertQueue>,
    sets: Option<CrowdsecSets>,
    model: Arc<Mutex<Model>>,
    status: Arc<Mutex<FleetStatus>>,
    events: Sender<Event>,
    findings: Receiver<Finding>,
    lost: Arc<AtomicU64>,
    /// The next pull is a startup pull.
    startup: bool,
    /// The kernel refused a change: load whole at the next pull.
    resync: bool,
    /// The kernel thread's repairs, and how many of them the sets have
    /// been loaded after.
    repairs: Arc<KernelStats>,
    repairs_seen: u64,
    failing: u64,
    push_failing: u64,
    next_pull: Instant,
    next_push: Instant,
    last_ok: Option<Instant>,
}

/// The wait after `n` failures in a row: the interval doubled per
/// failure, at most [`MAX_BACKOFF`] (and never less than the interval).
pub fn backoff(interval: Duration, n: u64) -> Duration {
    let factor = 1u32 << n.saturating_sub(1).min(16);
    interval
        .saturating_mul(factor)
        .min(MAX_BACKOFF)
        .max(interval)
}

impl Worker {
    fn run(&mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let wake = self
                .next_pull
                .min(if self.queue_len() > 0 && self.watcher.is_some() {
                    self.next_push
                } else {
                    self.next_pull
                });
            let wait = wake
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            match self.findings.recv_timeout(wait) {
                Ok(f) => self.queue_finding(f),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    // The packet thread is gone: finish on the stop flag.
                    std::thread::sleep(wait.max(Duration::from_millis(10)));
                }
            }
            while let Ok(f) = self.findings.try_recv() {
                self.queue_finding(f);
            }
            let repaired = self.repairs.rules_restored.load(Ordering::Relaxed);
            if repaired != self.repairs_seen {
                // Our table was put back without the CrowdSec decisions.
                self.repairs_seen = repaired;
                self.resync = true;
                self.kernel(&model::Applied::default(), now().as_micros() / 1000);
            }
            if Instant::now() >= self.next_pull {
                self.pull();
            }
            if Instant::now() >= self.next_push {
                self.push();
            }
            self.refresh();
        }
    }

    fn queue_len(&self) -> usize {
        self.queue.as_ref().map_or(0, AlertQueue::len)
    }

    fn event(&self, action: FleetAction, count: u64, message: String) {
        let ev = Event::new(
            now(),
            Body::Fleet(FleetEvent {
                fleet: FleetInfo {
                    action,
                    origin: "crowdsec",
                    count,
                    message,
                },
            }),
        );
        let _ = self.events.try_send(ev);
    }

    fn with_status(&self, f: impl FnOnce(&mut FleetStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn queue_finding(&mut self, f: Finding) {
        let Some(q) = self.queue.as_mut() else {
            return;
        };
        let before = q.dropped;
        if let Err(e) = q.push(f) {
            log::warn!("crowdsec alert queue: {e:#}");
            self.with_status(|s| s.alerts_dropped += 1);
            return;
        }
        if q.dropped > before {
            let n = q.dropped - before;
            self.with_status(|s| s.alerts_dropped += n);
            self.event(
                FleetAction::AlertDropped,
                n,
                "the alert queue is full (crowdsec.max_queued_alerts): the oldest finding was dropped".into(),
            );
        }
    }

    fn pull(&mut self) {
        let startup = self.startup;
        match self.bouncer.stream(startup) {
            Ok(delta) => {
                let now_ms = now().as_micros() / 1000;
                let rejected = delta.stats.rejected();
                if rejected > 0 {
                    self.event(
                        FleetAction::Rejected,
                        rejected,
                        format!(
                            "{rejected} decisions refused as malformed; first: {}",
                            delta.stats.first_rejection.as_deref().unwrap_or("?")
                        ),
                    );
                }
                let applied = match self.model.lock() {
                    Ok(mut m) => m.apply(&delta, startup, now_ms),
                    Err(_) => return,
                };
                self.kernel(&applied, now_ms);
                if applied.evicted > 0 {
                    self.event(
                        FleetAction::Evicted,
                        applied.evicted,
                        "crowdsec.max_decisions reached: the decisions ending soonest were dropped or refused".into(),
                    );
                }
                if self.failing > 0 {
                    self.event(
                        FleetAction::Recovered,
                        self.failing,
                        format!("pulls work again after {} failures", self.failing),
                    );
                }
                let held = self.model.lock().map_or(0, |m| m.len());
                if startup {
                    self.event(
                        FleetAction::Loaded,
                        held as u64,
                        format!("startup pull: {held} CrowdSec decisions enforced"),
                    );
                }
                self.startup = delta.truncated();
                self.failing = 0;
                self.last_ok = Some(Instant::now());
                self.next_pull = Instant::now() + self.interval;
                let t = rfc3339(now());
                self.with_status(|s| {
                    s.pulls += 1;
                    s.failing_pulls = 0;
                    s.last_error = None;
                    s.last_pull = Some(t);
                    s.decisions = held;
                    s.items_rejected += rejected;
                    s.decisions_added += applied.added;
                    s.decisions_deleted += applied.deleted;
                    s.unknown_deletions += applied.unknown_deletions;
                    s.ignored_type += applied.ignored_type;
                    s.protected += applied.protected;
                    s.evicted += applied.evicted;
                });
            }
            Err(e) => self.pull_failed(&e),
        }
    }

    fn pull_failed(&mut self, e: &CrowdsecError) {
        self.failing += 1;
        let wait = backoff(self.interval, self.failing);
        self.next_pull = Instant::now() + wait;
        let malformed = matches!(
            e,
            CrowdsecError::Stream { .. } | CrowdsecError::BodyTooLarge { .. }
        );
        let message = format!(
            "{e}; the decisions in force stay until their own timeouts; next try in {}s",
            wait.as_secs()
        );
        if malformed {
            self.event(FleetAction::Rejected, 0, message.clone());
        } else if self.failing == 1 {
            self.event(FleetAction::PullFailed, 0, message.clone());
        }
        if self.failing == 1 {
            log::warn!("crowdsec: {message}");
        }
        let failing = self.failing;
        self.with_status(|s| {
            s.pull_errors += 1;
            s.failing_pulls = failing;
            s.answers_rejected += u64::from(malformed);
            s.last_error = Some(e.to_string());
        });
    }

    /// Puts a pull's changes into the kernel sets.
    fn kernel(&mut self, applied: &model::Applied, now_ms: u64) {
        let Some(sets) = &self.sets else {
            return;
        };
        let whole = applied.replace || self.resync;
        if !whole && applied.is_empty() {
            return;
        }
        let t = Instant::now();
        let result = if whole {
            let (addrs, ranges) = match self.model.lock() {
                Ok(m) => m.kernel_all(now_ms),
                Err(_) => return,
            };
            sets.replace(&addrs, &ranges)
        } else {
            sets.update(&applied.add, &applied.remove, applied.ranges.as_deref())
        };
        let ms = t.elapsed().as_millis() as u64;
        match result {
            Ok(()) => {
                self.resync = false;
                self.with_status(|s| s.last_kernel_ms = ms);
            }
            Err(e) => {
                // Load whole next time (an element may have expired under
                // us, or something removed our table).
                self.resync = true;
                log::error!("crowdsec decisions into the kernel: {e}");
                self.event(
                    FleetAction::KernelFailed,
                    0,
                    format!("the kernel refused a change of the CrowdSec sets: {e}; loading them whole at the next pull"),
                );
                self.with_status(|s| s.kernel_errors += 1);
            }
        }
    }

    fn push(&mut self) {
        let (Some(w), Some(q)) = (self.watcher.as_mut(), self.queue.as_mut()) else {
            return;
        };
        let mut pushed = 0u64;
        let mut dropped = 0u64;
        let mut failure: Option<String> = None;
        while pushed + dropped < PUSH_BURST as u64 {
            let Some(f) = q.front() else {
                break;
            };
            match w.push_alert(&f.alert()) {
                Ok(_) => {
                    pushed += 1;
                    if let Err(e) = q.pop_pushed() {
                        log::warn!("crowdsec alert queue: {e:#}");
                    }
                }
                Err(CrowdsecError::AlertRejected { status, message }) => {
                    // It would never go through: drop it, say so.
                    dropped += 1;
                    let _ = q.pop_pushed();
                    log::warn!("crowdsec refused an alert (HTTP {status}): {message}");
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        let queued = q.len();
        if dropped > 0 {
            self.event(
                FleetAction::AlertDropped,
                dropped,
                "the LAPI refused findings as invalid: dropped".into(),
            );
        }
        match &failure {
            Some(e) => {
                self.push_failing += 1;
                self.next_push = Instant::now() + backoff(self.interval, self.push_failing);
                if self.push_failing == 1 {
                    self.event(
                        FleetAction::PushFailed,
                        queued as u64,
                        format!("{e}; {queued} findings wait on disk"),
                    );
                }
            }
            None => {
                if self.push_failing > 0 && pushed > 0 {
                    self.event(
                        FleetAction::PushRecovered,
                        pushed,
                        format!("{pushed} waiting findings pushed"),
                    );
                }
                if pushed > 0 || queued == 0 {
                    self.push_failing = 0;
                }
                self.next_push = Instant::now();
            }
        }
        let failed = u64::from(failure.is_some());
        self.with_status(|s| {
            s.alerts_pushed += pushed;
            s.alerts_dropped += dropped;
            s.push_errors += failed;
            if failure.is_some() {
                s.last_push_error = failure;
            } else if pushed > 0 {
                s.last_push_error = None;
            }
        });
    }

    fn refresh(&self) {
        let queued = self.queue_len();
        let since = self.last_ok.map(|t| t.elapsed().as_secs());
        let lost = self.lost.swap(0, Ordering::Relaxed);
        self.with_status(|s| {
            s.alerts_queued = queued;
            s.seconds_since_pull = since;
            s.alerts_dropped += lost;
        });
    }
}

/// The protected addresses as nets (for [`Setup::protected`]).
pub fn protected_nets(protect: &[IpNet], peers: &[(IpAddr, String)]) -> Vec<IpNet> {
    protect
        .iter()
        .copied()
        .chain(peers.iter().map(|(a, _)| IpNet::from(a.to_canonical())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted LAPI on 127.0.0.1: answers each request with the next
    /// body (HTTP 200), then closes.
    fn lapi(bodies: Vec<String>) -> (String, std::thread::JoinHandle<()>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            for body in bodies {
                let (stream, _) = listener.accept().unwrap();
                let mut r = BufReader::new(stream);
                let mut line = String::new();
                while r.read_line(&mut line).unwrap() > 0 && line.trim() != "" {
                    line.clear();
                }
                let _ = write!(
                    r.into_inner(),
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (url, h)
    }

    fn worker(url: String) -> (Worker, Receiver<Event>) {
        let client = ClientConfig::new(url);
        let (events, ev_rx) = crossbeam_channel::bounded(64);
        let (_tx, findings) = crossbeam_channel::bounded(1);
        let repairs = Arc::new(KernelStats::default());
        let w = Worker {
            interval: Duration::from_secs(1),
            bouncer: Bouncer::new(&client, "key".to_owned()).unwrap(),
            watcher: None,
            queue: None,
            sets: None,
            model: Arc::new(Mutex::new(Model::new(
                100,
                vec![DecisionKind::Ban],
                Vec::new(),
            ))),
            status: Arc::new(Mutex::new(FleetStatus::default())),
            events,
            findings,
            lost: Arc::new(AtomicU64::new(0)),
            startup: true,
            resync: false,
            repairs_seen: 0,
            repairs,
            failing: 0,
            push_failing: 0,
            next_pull: Instant::now(),
            next_push: Instant::now(),
            last_ok: None,
        };
        (w, ev_rx)
    }

    fn decision(id: u32, value: &str, scope: &str) -> String {
        format!(
            r#"{{"duration":"1h","id":{id},"origin":"cscli","scenario":"manual","scope":"{scope}","type":"ban","value":"{value}"}}"#
        )
    }

    /// Issue 10, item 3: a malformed or hostile answer is refused with a
    /// `fleet` event and lifts nothing; bad items are refused one by one
    /// while the good ones of the same answer are taken.
    #[test]
    fn a_malformed_answer_is_rejected_and_lifts_nothing() {
        let good = format!(
            r#"{{"new":[{},{}],"deleted":null}}"#,
            decision(1, "198.18.50.1", "Ip"),
            decision(2, "198.18.60.0/24", "Range")
        );
        let bodies = vec![
            good,
            // Not a stream: wrong types everywhere.
            r#"{"new": 42, "deleted": "everything"}"#.to_owned(),
            // Not JSON at all.
            "<html>502 Bad Gateway</html>".to_owned(),
            // One bad CIDR, one bad scope, one good new decision, and a
            // deletion of something never held.
            format!(
                r#"{{"new":[{},{},{}],"deleted":[{}]}}"#,
                decision(3, "198.18.70.0/99", "Range"),
                decision(4, "198.18.80.1", "Country"),
                decision(5, "198.18.90.1", "Ip"),
                decision(6, "198.18.99.99", "Ip")
            ),
        ];
        let (url, server) = lapi(bodies);
        let (mut w, events) = worker(url);
        let held = |w: &Worker, a: &str| {
            !w.model
                .lock()
                .unwrap()
                .lookup(a.parse().unwrap())
                .is_empty()
        };
        w.pull();
        assert!(held(&w, "198.18.50.1") && held(&w, "198.18.60.7"));
        assert_eq!(w.model.lock().unwrap().len(), 2);
        let actions = |rx: &Receiver<Event>| -> Vec<FleetAction> {
            rx.try_iter()
                .filter_map(|e| match e.body {
                    Body::Fleet(f) => Some(f.fleet.action),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(actions(&events), [FleetAction::Loaded]);
        // The two broken answers: refused whole, with an event each;
        // nothing held is lifted.
        for _ in 0..2 {
            w.pull();
            assert_eq!(actions(&events), [FleetAction::Rejected]);
            assert!(held(&w, "198.18.50.1") && held(&w, "198.18.60.7"));
            assert_eq!(w.model.lock().unwrap().len(), 2);
        }
        assert_eq!(w.status.lock().unwrap().answers_rejected, 2);
        // The next answer: the good item is taken, the bad ones refused
        // and counted, the unknown deletion a no-op.
        w.pull();
        assert!(
            held(&w, "198.18.90.1"),
            "the good decision of a mixed answer"
        );
        assert!(!held(&w, "198.18.70.1") && !held(&w, "198.18.80.1"));
        assert!(held(&w, "198.18.50.1") && held(&w, "198.18.60.7"));
        let a = actions(&events);
        assert!(a.contains(&FleetAction::Rejected), "{a:?}");
        assert!(a.contains(&FleetAction::Recovered), "{a:?}");
        server.join().unwrap();
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let i = Duration::from_secs(10);
        assert_eq!(backoff(i, 0), i);
        assert_eq!(backoff(i, 1), i);
        assert_eq!(backoff(i, 2), Duration::from_secs(20));
        assert_eq!(backoff(i, 4), Duration::from_secs(80));
        assert_eq!(backoff(i, 10), MAX_BACKOFF);
        assert_eq!(backoff(i, u64::MAX), MAX_BACKOFF);
        // An interval longer than the cap is kept.
        assert_eq!(
            backoff(Duration::from_secs(600), 3),
            Duration::from_secs(600)
        );
    }
}
