//! The inline packet path: packets the kernel decides are *observed*
//! through NFLOG (copied, never held: the engine detects scans and logs,
//! its verdict is not needed); packets only user space can decide (DNS
//! queries, `queue_all` protocols, composite rules) are *held* in NFQUEUE:
//! batches -> engine -> batched verdicts, NXDOMAIN answers for blocked DNS
//! queries. Losses of both are counted and reported.
//!
//! A socket that fails is closed and named in a [`SourceFailure`]; the other
//! goes on and the packet loop reopens (rebinds) it. While the queue is
//! unbound, what the kernel would hold passes (fail-open: the queue rule
//! bypasses) or is dropped (fail-closed); while the log group is unbound,
//! observed packets go on unseen. Kernel rules and bans stay in force.
//! Counters carry on across reopenings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use portcullis_engine::config::{BlockedDnsResponse, Config};
use portcullis_engine::events::{
    Body, CaptureEvent, CaptureInfo, Event, QueueEvent, QueueFate, QueueInfo, SourceKind,
};
use portcullis_engine::Engine;
use portcullis_engine::{Action, Reason};
use portcullis_nflog::{Hook as LogHook, Log, LogConfig, LogStats, NflogError};
use portcullis_nfqueue::{Hook, NfqError, Queue, QueueConfig, Responder, Verdict as NfVerdict};
use portcullis_wire::{Direction, LinkType, PacketIn, Timestamp};

use crate::clock::now;
use crate::path::{PacketPath, SourceFailure, SourceId};
use crate::status::{ObservedStatus, QueueStatus, Status};

/// Marks "not known yet" in the shared queue-rule counter (the kernel
/// thread reads the rule's counter where the path counts it, the iptables
/// fallback).
pub const UNKNOWN: u64 = u64::MAX;

/// Logged packets handed to the engine per read, at most (one datagram
/// more may come with the last read).
const LOG_BATCH: usize = 1024;

/// Bytes of each observed packet copied to us (headers of new
/// connections, whole DNS queries).
const LOG_COPY_RANGE: u32 = 512;

/// While one socket keeps the loop busy, how often the other, idle one is
/// read at most (see `InlinePath::step`); when both are idle, poll says
/// which one has something.
const READ_IDLE_EVERY: Duration = Duration::from_millis(1);

/// The NFLOG socket's flush timeout, in 1/100 s: an observed packet waits
/// at most this long for its batch (the scan detector's ban latency).
const LOG_FLUSH_CENTIS: u32 = 1;

/// The queue, the NFLOG group, the DNS responder and what they lost so far.
pub struct InlinePath {
    /// `None` while closed after a failure.
    log: Option<Log>,
    lcfg: LogConfig,
    /// The counters of closed logs.
    log_before: LogStats,
    /// Losses of the log already reported.
    log_reported: (u64, u64),
    /// `None` while closed after a failure.
    queue: Option<Queue>,
    qcfg: QueueConfig,
    /// (packets, overruns) of closed queues.
    queue_before: (u64, u64),
    responder: Responder,
    /// Packets our queue rule sent (kernel thread), or [`UNKNOWN`].
    queue_hits: Arc<AtomicU64>,
    seen: QueueDrops,
    overruns: u64,
    /// NXDOMAIN answers that could not be built or sent.
    dns_answers_failed: u64,
    /// While the other socket keeps the loop busy, each socket is read
    /// no earlier than this, unless its last read found something (poll
    /// tells when both are idle).
    next_observe: Instant,
    next_hold: Instant,
    /// The last read of the socket found something.
    log_busy: bool,
    queue_busy: bool,
}

impl InlinePath {
    /// Opens the queue of `cfg` and the raw sockets for DNS answers (marked
    /// `skip_mark`, so our own chains let them pass).
    pub fn open(cfg: &Config, skip_mark: u32, queue_hits: Arc<AtomicU64>) -> Result<Self> {
        let mut lcfg = LogConfig::new(cfg.inline.log_group);
        lcfg.qthresh = u32::from(portcullis_kernel::LOG_THRESHOLD);
        lcfg.timeout = LOG_FLUSH_CENTIS;
        // Observed DNS queries (no domain rule) are decoded whole: a query
        // with a 255-byte name and EDNS fits in 512 bytes of IPv6.
        lcfg.copy_range = LOG_COPY_RANGE;
        let log = Log::open(&lcfg).with_context(|| {
            format!(
                "opening NFLOG group {} (inline.log_group)",
                cfg.inline.log_group
            )
        })?;
        let mut qcfg = QueueConfig::new(cfg.inline.queue);
        qcfg.fail_open = !cfg.inline.fail_closed;
        qcfg.max_len = cfg.inline.queue_length;
        qcfg.spin = Duration::from_micros(50);
        let queue = Queue::open(&qcfg).context("opening the NFQUEUE")?;
        let mut responder = Responder::open().context("opening the raw sockets for DNS answers")?;
        responder
            .set_mark(skip_mark)
            .context("marking DNS answers")?;
        Ok(Self {
            log: Some(log),
            lcfg,
            log_before: LogStats::default(),
            log_reported: (0, 0),
            queue: Some(queue),
            qcfg,
            queue_before: (0, 0),
            responder,
            queue_hits,
            seen: QueueDrops::default(),
            overruns: 0,
            dns_answers_failed: 0,
            next_observe: Instant::now(),
            next_hold: Instant::now(),
            log_busy: false,
            queue_busy: false,
        })
    }
}

impl PacketPath for InlinePath {
    fn ready_line(&self) -> String {
        format!(
            "running on NFQUEUE {} ({})",
            self.qcfg.num,
            if self.qcfg.fail_open {
                "fail-open"
            } else {
                "fail-closed"
            }
        )
    }

    fn step(&mut self, engine: &mut Engine, wait: Duration) -> Result<(), SourceFailure> {
        // Neither source may starve the other: read what each has without
        // waiting, and wait on both only when both were empty. A read that
        // finds nothing costs a syscall or two, as much as handling a
        // packet: while one socket keeps the loop busy, the other one is
        // read only if its last read found something, or at most every
        // READ_IDLE_EVERY (the kernel sends NFLOG copies in batches anyway:
        // `queue-threshold`, a 10 ms flush timeout). A held packet then
        // waits at most that long behind a burst of observed ones.
        let t = Instant::now();
        let mut n = 0;
        if self.log_busy || t >= self.next_observe {
            self.next_observe = t + READ_IDLE_EVERY;
            let k = self.observe(engine)?;
            self.log_busy = k > 0;
            n += k;
        }
        if self.queue_busy || t >= self.next_hold {
            self.next_hold = t + READ_IDLE_EVERY;
            // Spinning for the next held packet pays only while they keep
            // coming: an idle queue costs one read.
            let k = self.hold(engine, self.queue_busy)?;
            self.queue_busy = k > 0;
            n += k;
        }
        if n == 0 {
            let (log_ready, queue_ready) = self.wait_either(wait)?;
            if log_ready {
                let k = self.observe(engine)?;
                self.log_busy = k > 0;
                n += k;
            }
            if queue_ready {
                let k = self.hold(engine, false)?;
                self.queue_busy = k > 0;
                n += k;
            }
        }
        if n > 0 {
            engine.flush_due();
        }
        Ok(())
    }

    fn reopen(&mut self, id: &SourceId) -> Result<(), SourceFailure> {
        match id.kind {
            SourceKind::Queue if self.queue.is_none() => {
                let q = Queue::open(&self.qcfg).map_err(|e| {
                    let fatal = queue_fatal(&e);
                    SourceFailure {
                        id: self.queue_id(),
                        error: e.into(),
                        fatal,
                    }
                })?;
                self.queue = Some(q);
            }
            SourceKind::Log if self.log.is_none() => {
                let l = Log::open(&self.lcfg).map_err(|e| {
                    let fatal = log_fatal(&e);
                    SourceFailure {
                        id: self.log_id(),
                        error: e.into(),
                        fatal,
                    }
                })?;
                self.log = Some(l);
            }
            _ => {}
        }
        Ok(())
    }

    fn losses(&mut self) -> Vec<Event> {
        let mut out = self.queue_losses();
        let st = self.log_stats();
        let (lost, overruns) = (st.lost, st.overruns);
        let (seen_lost, seen_overruns) = self.log_reported;
        if lost > seen_lost || overruns > seen_overruns {
            // Observed packets went on in the kernel: what was lost was
            // not inspected, as a passive capture's losses.
            out.push(Event::new(
                now(),
                Body::Capture(CaptureEvent {
                    capture: CaptureInfo {
                        interface: format!("nflog:{}", self.lcfg.group),
                        dropped: lost - seen_lost,
                        if_dropped: 0,
                    },
                }),
            ));
            self.log_reported = (lost, overruns);
        }
        out
    }

    fn status(&mut self, s: &mut Status) {
        self.queue_status(s);
        let st = self.log_stats();
        s.observed = Some(ObservedStatus {
            group: self.lcfg.group,
            received: st.received,
            lost: st.lost,
            overruns: st.overruns,
            malformed: st.malformed,
        });
    }

    fn finish(&mut self) {
        self.queue_finish();
    }
}

/// Queue errors no rebinding mends: the kernel or our rights changed.
fn queue_fatal(e: &NfqError) -> bool {
    matches!(
        e,
        NfqError::NetlinkUnavailable(_)
            | NfqError::ModuleMissing
            | NfqError::PermissionDenied { .. }
            | NfqError::FlagsUnsupported(_)
            | NfqError::InvalidConfig(_)
    )
}

/// Log errors no rebinding mends.
fn log_fatal(e: &NflogError) -> bool {
    matches!(
        e,
        NflogError::NetlinkUnavailable(_)
            | NflogError::ModuleMissing
            | NflogError::PermissionDenied { .. }
            | NflogError::InvalidConfig(_)
    )
}

impl InlinePath {
    fn queue_id(&self) -> SourceId {
        SourceId::new(SourceKind::Queue, self.qcfg.num.to_string())
    }

    fn log_id(&self) -> SourceId {
        SourceId::new(SourceKind::Log, self.lcfg.group.to_string())
    }

    /// The log's counters since the start, across reopenings.
    fn log_stats(&self) -> LogStats {
        let b = &self.log_before;
        match &self.log {
            None => b.clone(),
            Some(l) => {
                // Only the counters reported are carried.
                let c = l.stats();
                LogStats {
                    received: b.received + c.received,
                    lost: b.lost + c.lost,
                    overruns: b.overruns + c.overruns,
                    malformed: b.malformed + c.malformed,
                    ..c.clone()
                }
            }
        }
    }

    /// The queue's (packets, overruns) since the start, across reopenings.
    fn queue_counts(&self) -> (u64, u64) {
        let (p, o) = self.queue_before;
        self.queue.as_ref().map_or((p, o), |q| {
            (p + q.counters().packets, o + q.counters().enobufs)
        })
    }

    /// Closes the log after `error`, keeping its counters.
    fn close_log(&mut self, error: anyhow::Error) -> SourceFailure {
        self.log_before = self.log_stats();
        self.log = None;
        SourceFailure::new(self.log_id(), error)
    }

    /// Closes the queue after `error`, keeping its counters. What it still
    /// holds gets the fail-open or fail-closed verdict if the socket still
    /// takes it (unbinding would drop it).
    fn close_queue(&mut self, error: anyhow::Error) -> SourceFailure {
        self.queue_finish();
        self.queue_before = self.queue_counts();
        self.queue = None;
        SourceFailure::new(self.queue_id(), error)
    }

    /// Waits up to `wait` for the log or the queue to have something;
    /// false on timeout (or a signal). With both closed, sleeps `wait`.
    /// Waits up to `wait` until the NFLOG or the NFQUEUE socket has
    /// something (or an error) to read: (log ready, queue ready).
    fn wait_either(&self, wait: Duration) -> Result<(bool, bool), SourceFailure> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        let log = self.log.as_ref().map(Log::raw_fd);
        let queue = self.queue.as_ref().map(Queue::raw_fd);
        let mut fds: Vec<PollFd<'_>> = [log, queue]
            .into_iter()
            .flatten()
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        // Readable, or an error the next read reports (and the loop then
        // handles as the source's failure).
        let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => Ok((false, false)),
            Ok(_) => {
                let mut it = fds.iter();
                let log_ready = log.is_some() && it.next().is_some_and(ready);
                let queue_ready = queue.is_some() && it.next().is_some_and(ready);
                Ok((log_ready, queue_ready))
            }
            Err(nix::errno::Errno::EINTR) => Ok((false, false)),
            // Not one socket's fault: nothing to close, retried at the
            // next step (the loop backs off).
            Err(e) => Err(SourceFailure::new(
                self.queue_id(),
                anyhow::Error::from(e).context("waiting for the NFLOG and NFQUEUE sockets"),
            )),
        }
    }

    /// Hands the logged packets that have arrived to the engine: the kernel
    /// already decided them, so the verdict is not used (detection and
    /// logging only). Never waits. The kernel stamps copies of input and
    /// forward packets itself; output copies carry a time only where some
    /// socket switched on host-wide timestamping (we do not: it costs
    /// every packet of the host a clock read) and otherwise take the time
    /// of this read, at most the 10 ms flush timeout late.
    fn observe(&mut self, engine: &mut Engine) -> Result<usize, SourceFailure> {
        let t = now();
        let Some(log) = self.log.as_mut() else {
            return Ok(0);
        };
        let n = log
            .recv_batch(LOG_BATCH, Some(Duration::ZERO), |p| {
                let dir = match p.hook {
                    LogHook::Output | LogHook::Postrouting => Direction::Outbound,
                    LogHook::Forward => Direction::Forwarded,
                    _ => Direction::Inbound,
                };
                let ts = p.timestamp_micros.map_or(t, Timestamp::from_micros);
                engine.process(&PacketIn {
                    data: p.payload,
                    link: LinkType::Raw,
                    ts,
                    dir: Some(dir),
                    orig_len: p.original_len,
                });
            })
            .context("reading the NFLOG group");
        n.map_err(|e| self.close_log(e))
    }

    /// Decides the queued packets that have arrived (never sleeping; with
    /// `spin`, trying for the queue's spin time when none has), and sends
    /// the verdicts.
    fn hold(&mut self, engine: &mut Engine, spin: bool) -> Result<usize, SourceFailure> {
        let Some(queue) = self.queue.as_mut() else {
            return Ok(0);
        };
        let n = match queue.try_recv_batch(spin).context("reading the NFQUEUE") {
            Ok(n) => n,
            Err(e) => return Err(self.close_queue(e)),
        };
        if n == 0 {
            return Ok(0);
        }
        let t = now();
        let answer = engine.config().dns.blocked_response == BlockedDnsResponse::Nxdomain;
        let responder = &mut self.responder;
        let failed = &mut self.dns_answers_failed;
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
                orig_len: None,
            });
            if v.reason == Reason::BlockedDomain && answer {
                // The query is dropped either way; a failed answer is
                // counted and said (rate-limited by the logger).
                if let Err(e) = responder.respond_to(p) {
                    *failed += 1;
                    log::warn!(
                        "NXDOMAIN answer to a blocked DNS query not sent: {e} ({} so far)",
                        *failed
                    );
                }
            }
            match v.action {
                Action::Accept => (NfVerdict::Accept, None),
                Action::Drop => (NfVerdict::Drop, None),
            }
        });
        if let Err(e) = queue.flush().context("sending verdicts") {
            return Err(self.close_queue(e));
        }
        Ok(n)
    }

    fn queue_losses(&mut self) -> Vec<Event> {
        let num = self.qcfg.num;
        let (packets, overruns) = self.queue_counts();
        let cur = QueueDrops::read(num, self.queue_hits.load(Ordering::Relaxed), packets);
        let ev = self
            .seen
            .event(&cur, overruns - self.overruns, num, self.qcfg.fail_open);
        // The estimate can dip (skew between the two readings): keep the
        // high-water mark so nothing is reported twice.
        self.seen = QueueDrops {
            uninspected: self.seen.uninspected.max(cur.uninspected),
            ..cur
        };
        self.overruns = overruns;
        ev.into_iter().collect()
    }

    fn queue_status(&mut self, s: &mut Status) {
        s.queue = Some(QueueStatus {
            number: self.qcfg.num,
            fail_open: self.qcfg.fail_open,
            received: self.queue_counts().0,
            queue_dropped: self.seen.queue_dropped,
            user_dropped: self.seen.user_dropped,
            uninspected: self.seen.uninspected,
            overruns: self.overruns,
            dns_answers_failed: self.dns_answers_failed,
        });
    }

    fn queue_finish(&mut self) {
        let Some(queue) = self.queue.as_mut() else {
            return;
        };
        // What is still queued passes (fail-open) or not.
        queue.verdict_outstanding(if self.qcfg.fail_open {
            NfVerdict::Accept
        } else {
            NfVerdict::Drop
        });
        if let Err(e) = queue.flush() {
            log::warn!("the last verdicts at exit were not sent ({e}); the kernel decides those packets by the queue's fail-open or fail-closed setting");
        }
    }
}

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
        let queue = QueueInfo {
            number: num,
            queue_dropped: q,
            user_dropped: u,
            overruns,
            uninspected: p,
            fate: if fail_open {
                QueueFate::Passed
            } else {
                QueueFate::Dropped
            },
        };
        Some(Event::new(now(), Body::Queue(QueueEvent { queue })))
    }
}
