//! The detector on its own thread, so the packet path never waits for it.
//!
//! Probes go in through a bounded channel with `try_send`, in batches (one
//! channel operation per batch, not per probe: the cache line the two
//! threads share moves once per batch): when it is full the batch is
//! dropped and its probes counted, never waited for. Findings come back
//! through a second bounded channel that the engine drains; if nobody
//! drains it, further findings are dropped and counted rather than stalling
//! detection. The thread calls [`Detector::expire`] as packet time advances
//! (the probes' timestamps, never the clock) and publishes its statistics
//! after each batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{Detector, DetectorStats, ScanFinding, ScanSummary};
use crate::config::ScanConfig;
use crate::types::{Observation, Probe, Timestamp};

/// What the detector reports: a scan found (at its threshold), or a scan
/// episode's summary when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Start(ScanFinding),
    End(ScanSummary),
}

/// Findings held for the engine before further ones are dropped.
const FINDINGS_CAPACITY: usize = 4096;

/// Probes handled between two publications of the statistics.
const BATCH: usize = 1024;

/// Packet time between two calls to [`Detector::expire`].
const EXPIRE_EVERY_US: u64 = 1_000_000;

#[derive(Debug, Default)]
struct Shared {
    dropped: AtomicU64,
    findings_dropped: AtomicU64,
    stats: Mutex<DetectorStats>,
}

impl Shared {
    fn publish(&self, stats: DetectorStats) {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner) = stats;
    }

    fn stats(&self) -> DetectorStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A [`Detector`] running on a thread named `portcullis-detector`.
#[derive(Debug)]
pub struct DetectorThread {
    probes: Sender<Vec<Observation>>,
    findings: Receiver<Report>,
    shared: Arc<Shared>,
    handle: JoinHandle<DetectorStats>,
}

impl DetectorThread {
    /// Spawns the thread, which owns a [`Detector`] built from `cfg`; probe
    /// batches reach it through a bounded channel of `capacity` batches (at
    /// least 1).
    pub fn spawn(cfg: ScanConfig, capacity: usize) -> std::io::Result<Self> {
        let (probe_tx, probe_rx) = crossbeam_channel::bounded(capacity.max(1));
        let (finding_tx, finding_rx) = crossbeam_channel::bounded(FINDINGS_CAPACITY);
        let shared = Arc::new(Shared::default());
        let handle = std::thread::Builder::new()
            .name("portcullis-detector".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || run(Detector::new(&cfg), &probe_rx, &finding_tx, &shared)
            })?;
        Ok(Self {
            probes: probe_tx,
            findings: finding_rx,
            shared,
            handle,
        })
    }

    /// Hands a probe over without waiting. Returns false, and counts a drop,
    /// when the channel is full (or the thread has gone).
    pub fn offer(&self, p: Probe) -> bool {
        self.offer_batch(vec![Observation::Probe(p)])
    }

    /// Hands a batch of probes over without waiting. Returns false, and
    /// counts its probes as dropped, when the channel is full (or the thread
    /// has gone).
    pub fn offer_batch(&self, batch: Vec<Observation>) -> bool {
        match self.probes.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => {
                self.shared
                    .dropped
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                false
            }
        }
    }

    /// Whether findings are waiting: two atomic loads, cheap enough to ask
    /// once per packet.
    pub fn has_findings(&self) -> bool {
        !self.findings.is_empty()
    }

    /// The reports produced since the last call, without waiting.
    pub fn try_findings(&self) -> Vec<Report> {
        self.findings.try_iter().collect()
    }

    /// Probes dropped because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Findings dropped because nobody drained them.
    pub fn dropped_findings(&self) -> u64 {
        self.shared.findings_dropped.load(Ordering::Relaxed)
    }

    /// The statistics the thread published last (after each batch of up to
    /// 1024 probes, and whenever it has caught up with the channel).
    pub fn stats(&self) -> DetectorStats {
        self.shared.stats()
    }

    /// Closes the channel, lets the thread finish what was queued, joins it
    /// and returns its final statistics and the reports not yet taken
    /// (every open episode ends then, with its summary).
    pub fn shutdown(self) -> (DetectorStats, Vec<Report>) {
        let Self {
            probes,
            findings,
            shared,
            handle,
        } = self;
        drop(probes);
        // A panic in the thread is a bug; the last published stats are the
        // best we have then.
        let stats = handle.join().unwrap_or_else(|_| shared.stats());
        (stats, findings.try_iter().collect())
    }
}

fn run(
    mut det: Detector,
    probes: &Receiver<Vec<Observation>>,
    findings: &Sender<Report>,
    shared: &Shared,
) -> DetectorStats {
    let mut next_expire: Option<Timestamp> = None;
    let send = |r: Report| {
        if findings.try_send(r).is_err() {
            shared.findings_dropped.fetch_add(1, Ordering::Relaxed);
        }
    };
    let mut handle = |det: &mut Detector, o: Observation| {
        let found = match &o {
            Observation::Probe(p) => det.observe(p),
            Observation::Answer(a) => det.answer(a),
            Observation::Tick(_) => None,
        };
        let ts = o.ts();
        if next_expire.is_none_or(|t| ts >= t) {
            det.expire(ts);
            next_expire = Some(Timestamp::from_micros(
                ts.as_micros().saturating_add(EXPIRE_EVERY_US),
            ));
        }
        for e in det.drain_ends() {
            send(Report::End(e));
        }
        if let Some(f) = found {
            send(Report::Start(f));
        }
    };
    // Blocks only when there is nothing to do; ends when the sender is
    // dropped and the queue is empty.
    while let Ok(batch) = probes.recv() {
        let mut handled = batch.len();
        batch.into_iter().for_each(|o| handle(&mut det, o));
        while handled < BATCH {
            let Ok(batch) = probes.try_recv() else { break };
            handled += batch.len();
            batch.into_iter().for_each(|o| handle(&mut det, o));
        }
        shared.publish(det.stats());
    }
    det.finish();
    for e in det.drain_ends() {
        send(Report::End(e));
    }
    let stats = det.stats();
    shared.publish(stats);
    stats
}
