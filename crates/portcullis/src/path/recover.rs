//! Recovering packet sources: a source that fails (a read error on the
//! NFQUEUE or NFLOG socket, a capture interface that vanished) is closed by
//! its path, reported, and reopened with exponential backoff while the
//! path keeps reading its other sources. The kernel rules and bans stay in
//! force meanwhile; only failures a reopening cannot mend stop the daemon.
//!
//! [`Recovery`] is the policy, pure and clock-free (the caller passes the
//! time): when to retry, what to count, which `packet_source` events to
//! emit, what `status` shows. The packet loop drives it.
//!
//! Backoff: the first retry after [`MIN_DELAY`], each failed retry doubles
//! the delay up to [`MAX_DELAY`]. A source that stayed up [`STABLE`] starts
//! again from [`MIN_DELAY`] when it next fails; one that fails again soon
//! after a reopen keeps its longer delay, so a flapping source costs at
//! most one attempt per [`MAX_DELAY`]. Events: one when a source goes down,
//! one when it is back up, and one for a failed retry only when its error
//! differs from the last one reported (a source down for a day writes two
//! events, not 17,000).

use std::time::{Duration, Instant};

use portcullis_engine::events::{SourceInfo, SourceKind, SourceState};

use crate::status::SourceStatus;

/// The first retry comes this long after a failure.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
/// Retries are never further apart than this.
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// Up this long, a source's next failure starts the backoff afresh.
pub const STABLE: Duration = Duration::from_secs(30);

/// One packet source of a path: `capture eth1`, `queue 0`, `log 5`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId {
    pub kind: SourceKind,
    /// The interface, queue number or log group.
    pub name: String,
}

impl SourceId {
    pub fn new(kind: SourceKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.name)
    }
}

/// A packet source failed; its path has closed it and keeps reading its
/// other sources.
#[derive(Debug)]
pub struct SourceFailure {
    pub id: SourceId,
    pub error: anyhow::Error,
    /// No reopening can mend it: the daemon stops (with its teardown).
    pub fatal: bool,
}

impl SourceFailure {
    /// A failure a reopening may mend.
    pub fn new(id: SourceId, error: anyhow::Error) -> Self {
        Self {
            id,
            error,
            fatal: false,
        }
    }

    /// Into the error the daemon exits with.
    pub fn into_error(self) -> anyhow::Error {
        let id = self.id.to_string();
        self.error.context(id)
    }
}

#[derive(Debug)]
struct Down {
    since: Instant,
    next_try: Instant,
    /// The error last reported in an event.
    reported: String,
    /// The latest error.
    error: String,
}

#[derive(Debug)]
struct Tracked {
    id: SourceId,
    failures: u64,
    reopens: u64,
    delay: Duration,
    up_since: Instant,
    down: Option<Down>,
}

impl Tracked {
    fn info(&self, state: SourceState) -> SourceInfo {
        SourceInfo {
            kind: self.id.kind,
            name: self.id.name.clone(),
            state,
            error: None,
            failures: self.failures,
            reopens: self.reopens,
            retry_in_ms: None,
            down_ms: None,
        }
    }
}

/// The recovery state of every source that has failed (see the module
/// docs). Sources that never failed are not tracked.
#[derive(Debug, Default)]
pub struct Recovery {
    tracked: Vec<Tracked>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Recovery {
    fn entry(&mut self, id: &SourceId, now: Instant) -> &mut Tracked {
        let i = match self.tracked.iter().position(|t| &t.id == id) {
            Some(i) => i,
            None => {
                self.tracked.push(Tracked {
                    id: id.clone(),
                    failures: 0,
                    reopens: 0,
                    delay: MIN_DELAY,
                    up_since: now,
                    down: None,
                });
                self.tracked.len() - 1
            }
        };
        &mut self.tracked[i]
    }

    /// Source `id` failed with `error` at `now` (while up, or on a retry).
    /// The event to emit, if any: always for a source that was up (or a
    /// fatal failure), for a failed retry only when its error changed.
    pub fn failed(
        &mut self,
        id: &SourceId,
        error: &str,
        fatal: bool,
        now: Instant,
    ) -> Option<SourceInfo> {
        let t = self.entry(id, now);
        t.failures += 1;
        if fatal {
            let mut info = t.info(SourceState::Fatal);
            info.error = Some(error.to_owned());
            return Some(info);
        }
        let report = match &mut t.down {
            Some(d) => {
                // A failed retry: wait longer.
                t.delay = (t.delay * 2).min(MAX_DELAY);
                d.next_try = now + t.delay;
                d.error = error.to_owned();
                let changed = d.reported != error;
                if changed {
                    d.reported = error.to_owned();
                }
                changed
            }
            None => {
                if now.saturating_duration_since(t.up_since) >= STABLE {
                    t.delay = MIN_DELAY;
                } else if t.reopens > 0 {
                    // Failed again soon after a reopen: back off further.
                    t.delay = (t.delay * 2).min(MAX_DELAY);
                }
                t.down = Some(Down {
                    since: now,
                    next_try: now + t.delay,
                    reported: error.to_owned(),
                    error: error.to_owned(),
                });
                true
            }
        };
        report.then(|| {
            let mut info = t.info(SourceState::Down);
            info.error = Some(error.to_owned());
            info.retry_in_ms = Some(millis(t.delay));
            info
        })
    }

    /// Sources whose next reopening attempt is due at `now`.
    pub fn due(&self, now: Instant) -> Vec<SourceId> {
        self.tracked
            .iter()
            .filter(|t| t.down.as_ref().is_some_and(|d| d.next_try <= now))
            .map(|t| t.id.clone())
            .collect()
    }

    /// Source `id` was reopened at `now`: the `up` event.
    pub fn reopened(&mut self, id: &SourceId, now: Instant) -> SourceInfo {
        let t = self.entry(id, now);
        let since = t.down.take().map_or(now, |d| d.since);
        t.reopens += 1;
        t.up_since = now;
        let mut info = t.info(SourceState::Up);
        info.down_ms = Some(millis(now.saturating_duration_since(since)));
        info
    }

    /// The sources that are down now (`capture eth1`).
    pub fn down(&self) -> Vec<String> {
        self.tracked
            .iter()
            .filter(|t| t.down.is_some())
            .map(|t| t.id.to_string())
            .collect()
    }

    /// Every source that has failed, for `status`.
    pub fn status(&self, now: Instant) -> Vec<SourceStatus> {
        self.tracked
            .iter()
            .map(|t| SourceStatus {
                kind: t.id.kind.as_str().to_owned(),
                name: t.id.name.clone(),
                state: if t.down.is_some() { "down" } else { "up" }.to_owned(),
                error: t.down.as_ref().map(|d| d.error.clone()),
                down_seconds: t
                    .down
                    .as_ref()
                    .map(|d| now.saturating_duration_since(d.since).as_secs()),
                failures: t.failures,
                reopens: t.reopens,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn eth1() -> SourceId {
        SourceId::new(SourceKind::Capture, "eth1")
    }

    #[test]
    fn retries_back_off_from_100_ms_to_5_s_and_report_only_changes() {
        let mut r = Recovery::default();
        let t0 = Instant::now();
        let down = r.failed(&eth1(), "gone", false, t0).unwrap();
        assert_eq!(down.state, SourceState::Down);
        assert_eq!(down.retry_in_ms, Some(100));
        assert_eq!(down.failures, 1);
        assert!(r.due(t0 + Duration::from_millis(99)).is_empty());
        assert_eq!(r.due(t0 + MIN_DELAY), [eth1()]);

        // Failed retries: 200, 400, ... 5000 ms, then 5000 ms on.
        let mut now = t0 + MIN_DELAY;
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert!(
                r.failed(&eth1(), "gone", false, now).is_none(),
                "same error, no event"
            );
            let next = (1..=10_000)
                .map(|ms| now + Duration::from_millis(ms))
                .find(|t| !r.due(*t).is_empty())
                .unwrap();
            waits.push(millis(next - now));
            now = next;
        }
        assert_eq!(waits, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        let changed = r.failed(&eth1(), "no such device", false, now).unwrap();
        assert_eq!(changed.error.as_deref(), Some("no such device"));
        assert_eq!(changed.failures, 10);

        let st = r.status(now);
        assert_eq!(st[0].state, "down");
        assert_eq!(st[0].error.as_deref(), Some("no such device"));
        assert_eq!(r.down(), ["capture eth1"]);

        let up = r.reopened(&eth1(), now + MAX_DELAY);
        assert_eq!(up.state, SourceState::Up);
        assert_eq!(up.reopens, 1);
        assert_eq!(up.down_ms, Some(millis(now + MAX_DELAY - t0)));
        assert!(r.due(now + Duration::from_secs(3600)).is_empty());
        assert!(r.down().is_empty());
        let st = r.status(now);
        assert_eq!((st[0].state.as_str(), st[0].reopens), ("up", 1));
        assert_eq!(st[0].error, None);
    }

    #[test]
    fn a_source_that_flaps_keeps_backing_off_and_a_stable_one_starts_afresh() {
        let mut r = Recovery::default();
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..4 {
            let d = r.failed(&eth1(), "gone", false, now).unwrap();
            delays.push(d.retry_in_ms.unwrap());
            now += Duration::from_millis(d.retry_in_ms.unwrap());
            r.reopened(&eth1(), now);
            // Fails again a second later.
            now += Duration::from_secs(1);
        }
        assert_eq!(delays, [100, 200, 400, 800]);
        now += STABLE;
        let d = r.failed(&eth1(), "gone", false, now).unwrap();
        assert_eq!(d.retry_in_ms, Some(100));
    }

    #[test]
    fn sources_recover_independently_and_fatal_failures_say_so() {
        let mut r = Recovery::default();
        let now = Instant::now();
        let queue = SourceId::new(SourceKind::Queue, "0");
        let log = SourceId::new(SourceKind::Log, "5");
        r.failed(&queue, "recvmmsg: ENOMEM", false, now).unwrap();
        r.failed(
            &log,
            "recvmmsg: EIO",
            false,
            now + Duration::from_millis(50),
        )
        .unwrap();
        assert_eq!(r.due(now + MIN_DELAY), std::slice::from_ref(&queue));
        r.reopened(&queue, now + MIN_DELAY);
        assert_eq!(
            r.due(now + Duration::from_millis(150)),
            std::slice::from_ref(&log)
        );
        let fatal = r.failed(&log, "no NFLOG support", true, now).unwrap();
        assert_eq!(fatal.state, SourceState::Fatal);
        assert_eq!(fatal.error.as_deref(), Some("no NFLOG support"));
    }
}
