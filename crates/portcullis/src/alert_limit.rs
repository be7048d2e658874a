//! The daemon's rate limit on `scan`, `ban` and `unban` events.
//!
//! The engine limits `drop` and `dns` events itself; scans and bans it
//! always reports, because replay and tests want every one. A live daemon
//! under a flood of spoofed scanners would then write several events per
//! spoofed address (a scan's start and end, its ban, the eviction of an
//! older ban), tens of thousands a second. Here they pass a token bucket of
//! their own (`events.max_events_per_second`, burst twice that; drops and
//! DNS queries cannot use it up); what it refuses is counted and said at
//! most once a second in a `suppressed` event. Only the events are held
//! back: every ban and unban still reaches the kernel, and `status`,
//! `bans` and the metrics count them all.

use portcullis_engine::events::{Body, Event, SuppressedEvent, SuppressedInfo, TokenBucket};
use portcullis_engine::Timestamp;

/// How often, at most, a `suppressed` event reports what was held back.
const REPORT_EVERY_MICROS: u64 = 1_000_000;

/// See the module docs.
#[derive(Debug)]
pub struct AlertLimiter {
    rate: u32,
    bucket: TokenBucket,
    held: Held,
    /// When the current report's first event was held back.
    since: Option<Timestamp>,
    last_report: Option<Timestamp>,
    /// Everything held back since the start (`status`, metrics).
    pub total: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Held {
    scan: u64,
    ban: u64,
    unban: u64,
}

impl AlertLimiter {
    /// A limiter at `rate` events a second (burst twice that).
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            bucket: TokenBucket::new(rate),
            held: Held::default(),
            since: None,
            last_report: None,
            total: 0,
        }
    }

    /// Follows a reloaded `events.max_events_per_second`.
    pub fn set_rate(&mut self, rate: u32) {
        if rate != self.rate {
            *self = Self {
                total: self.total,
                held: self.held,
                since: self.since,
                last_report: self.last_report,
                ..Self::new(rate)
            };
        }
    }

    /// Whether `ev` may be written at `now`. Events other than `scan`,
    /// `ban` and `unban` always may; those are counted when refused.
    pub fn admit(&mut self, ev: &Event, now: Timestamp) -> bool {
        let slot = match ev.body {
            Body::Scan(_) => &mut self.held.scan,
            Body::Ban(_) => &mut self.held.ban,
            Body::Unban(_) => &mut self.held.unban,
            _ => return true,
        };
        if self.bucket.take(now) {
            return true;
        }
        *slot += 1;
        self.total += 1;
        self.since.get_or_insert(now);
        false
    }

    /// The `suppressed` event for what was held back, once a second at
    /// most, or nothing.
    pub fn report(&mut self, now: Timestamp) -> Option<Event> {
        let since = self.since?;
        if self
            .last_report
            .is_some_and(|t| now.since(t).as_micros() < u128::from(REPORT_EVERY_MICROS))
        {
            return None;
        }
        let h = std::mem::take(&mut self.held);
        self.since = None;
        self.last_report = Some(now);
        Some(Event::new(
            now,
            Body::Suppressed(SuppressedEvent {
                suppressed: SuppressedInfo {
                    drop: 0,
                    dns: 0,
                    scan: h.scan,
                    ban: h.ban,
                    unban: h.unban,
                    since,
                },
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::IpAddr;

    use portcullis_engine::events::{Source, UnbanEvent, UnbanInfo, UnbanReason};

    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_micros(1_000_000_000 + ms * 1000)
    }

    fn unban(ms: u64) -> Event {
        Event::new(
            at(ms),
            Body::Unban(UnbanEvent {
                source: Source {
                    src_ip: "198.18.0.7".parse::<IpAddr>().unwrap(),
                },
                ban: UnbanInfo {
                    reason: UnbanReason::Evicted,
                    duration: 600,
                    expires: at(ms),
                    enforced: true,
                },
            }),
        )
    }

    #[test]
    fn scans_bans_and_unbans_pass_a_bucket_and_the_rest_is_reported_once_a_second() {
        let mut l = AlertLimiter::new(10);
        // A burst of 20 passes, then one a tenth of a second.
        let passed = (0..100).filter(|_| l.admit(&unban(0), at(0))).count();
        assert_eq!(passed, 20);
        assert_eq!(l.total, 80);
        let ev = l.report(at(0)).unwrap();
        let Body::Suppressed(s) = &ev.body else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (s.suppressed.unban, s.suppressed.scan, s.suppressed.ban),
            (80, 0, 0)
        );
        assert_eq!(s.suppressed.since, at(0));
        // Not again within the second, even with more held back.
        assert!(!l.admit(&unban(50), at(50)));
        assert!(l.report(at(500)).is_none());
        assert!(l.admit(&unban(150), at(150)));
        let ev = l.report(at(1000)).unwrap();
        let Body::Suppressed(s) = &ev.body else {
            panic!("{ev:?}")
        };
        assert_eq!(s.suppressed.unban, 1);
        assert_eq!(s.suppressed.since, at(50));
        // Nothing held back: nothing to report.
        assert!(l.report(at(5000)).is_none());
        assert_eq!(l.total, 81);
    }

    #[test]
    fn other_events_always_pass_and_a_reload_keeps_the_counts() {
        let mut l = AlertLimiter::new(1);
        for _ in 0..10 {
            l.admit(&unban(0), at(0));
        }
        assert_eq!(l.total, 8);
        let reload = Event::new(
            at(0),
            Body::Suppressed(SuppressedEvent {
                suppressed: SuppressedInfo {
                    drop: 1,
                    dns: 0,
                    scan: 0,
                    ban: 0,
                    unban: 0,
                    since: at(0),
                },
            }),
        );
        assert!((0..50).all(|_| l.admit(&reload, at(0))));
        l.set_rate(1000);
        assert_eq!(l.total, 8);
        assert!(l.admit(&unban(0), at(0)));
        assert_eq!(l.report(at(0)).map(|_| ()), Some(()));
    }
}
