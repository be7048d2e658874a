//! The answer to the control socket's `top` request, which `portcullis
//! top` asks for about once a second: the `status` snapshot plus what a
//! live view needs that `status` lacks. Built on the packet thread; every
//! list is bounded (top-N, never whole tables):
//!
//! - the remote addresses and destination ports dropped most in the last
//!   one to two minutes (the engine's [`DropTops`], [`MAX_TOP`] at most);
//! - active bans with their origin, newest first ([`MAX_TOP_BANS`] at
//!   most; `bans_total` says how many there are);
//! - the latest scans ([`RECENT_SCANS`], kept by the packet loop from the
//!   scan events it forwards).
//!
//! No terminal code here: the TUI (`top`) only reads these types.

use std::collections::VecDeque;
use std::net::IpAddr;

use portcullis_engine::engine::{Ban, BanTable};
use portcullis_engine::events::{rfc3339, Body, Event, ScanPhase};
use portcullis_engine::top::{DropTops, TOP_WINDOW};
use portcullis_engine::Timestamp;
use serde::{Deserialize, Serialize};

use crate::control::BanView;
use crate::status::Status;

/// The most entries of each top list a `top` request gets.
pub const MAX_TOP: usize = 32;
/// The most bans a `top` answer lists.
pub const MAX_TOP_BANS: usize = 64;
/// Scans the packet loop remembers for `top`.
pub const RECENT_SCANS: usize = 16;
/// Ports of a scan's sample carried in a `top` answer.
const SCAN_PORTS: usize = 8;

/// The `top` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TopView {
    pub status: Status,
    /// The top lists count the drops of the last one to two windows of
    /// this many seconds.
    pub window_seconds: u64,
    pub drop_sources: Vec<TopSource>,
    pub drop_ports: Vec<TopPort>,
    /// Newest first.
    pub bans: Vec<TopBan>,
    /// All active bans (`bans` holds at most [`MAX_TOP_BANS`]).
    pub bans_total: usize,
    /// Newest first.
    pub scans: Vec<ScanView>,
}

/// A remote address and its recent drops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopSource {
    pub addr: IpAddr,
    pub drops: u64,
    /// `drops` may overstate by this much (a bounded table: module docs
    /// of `portcullis_engine::top`).
    pub error: u64,
}

/// A destination port and its recent drops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopPort {
    pub port: u16,
    pub drops: u64,
    pub error: u64,
}

/// An active ban and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopBan {
    #[serde(flatten)]
    pub ban: BanView,
    /// `scan` (the detector), `crowdsec` or `manual` ([`ban_origin`]).
    pub origin: String,
}

/// Where a ban came from, by its reason: the detector's are `scan:<kind>`,
/// CrowdSec's start with `crowdsec`, everything else was asked for on the
/// control socket (`portcullis ban`, `top`'s `b`).
pub fn ban_origin(reason: &str) -> &'static str {
    if reason.starts_with("scan:") {
        "scan"
    } else if reason.starts_with("crowdsec") {
        "crowdsec"
    } else {
        "manual"
    }
}

/// One scan as `top` lists it (from its `scan` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanView {
    /// The event's time, RFC 3339.
    pub time: String,
    pub src_ip: IpAddr,
    /// `start` (the threshold was crossed) or `end` (the whole episode).
    pub phase: String,
    pub kind: String,
    pub pattern: String,
    pub ports: u32,
    pub hosts: u32,
    pub probes: u64,
    /// `ban` or `alert`.
    pub action: String,
    /// A few of the ports probed.
    pub port_sample: Vec<u16>,
}

/// The latest scans, newest first, at most [`RECENT_SCANS`]; an episode's
/// `end` replaces its `start`.
#[derive(Debug, Clone, Default)]
pub struct RecentScans(VecDeque<ScanView>);

impl RecentScans {
    /// Remembers `ev` if it is a scan event.
    pub fn record(&mut self, ev: &Event) {
        let Body::Scan(s) = &ev.body else {
            return;
        };
        let i = &s.scan;
        let view = ScanView {
            time: rfc3339(ev.timestamp),
            src_ip: s.source.src_ip,
            phase: match i.phase {
                ScanPhase::Start => "start",
                ScanPhase::End => "end",
            }
            .to_owned(),
            kind: i.kind.as_str().to_owned(),
            pattern: i.pattern.as_str().to_owned(),
            ports: i.ports,
            hosts: i.hosts,
            probes: i.probes,
            action: i.action.as_str().to_owned(),
            port_sample: i.port_sample.iter().copied().take(SCAN_PORTS).collect(),
        };
        if i.phase == ScanPhase::End {
            let same =
                |v: &ScanView| v.src_ip == view.src_ip && v.kind == view.kind && v.phase == "start";
            if let Some(at) = self.0.iter().position(same) {
                self.0.remove(at);
            }
        }
        self.0.push_front(view);
        self.0.truncate(RECENT_SCANS);
    }

    /// Newest first.
    pub fn list(&self) -> Vec<ScanView> {
        self.0.iter().cloned().collect()
    }
}

/// The answer, from the snapshot, the engine's top tables and bans (seen
/// at `now`; `enforced` as `bans` says) and the remembered scans; `n`
/// entries per top list (at most [`MAX_TOP`]). Only the newest
/// [`MAX_TOP_BANS`] bans are turned into views.
pub fn build(
    status: Status,
    tops: &DropTops,
    bans: &BanTable,
    now: Timestamp,
    enforced: bool,
    scans: &RecentScans,
    n: usize,
) -> TopView {
    let n = n.min(MAX_TOP);
    let mut newest: Vec<&Ban> = bans.iter().collect();
    let by_age = |a: &&Ban, b: &&Ban| b.since.cmp(&a.since).then(a.addr.cmp(&b.addr));
    if newest.len() > MAX_TOP_BANS {
        newest.select_nth_unstable_by(MAX_TOP_BANS, by_age);
        newest.truncate(MAX_TOP_BANS);
    }
    newest.sort_by(by_age);
    TopView {
        status,
        window_seconds: TOP_WINDOW.as_secs(),
        drop_sources: tops
            .sources(n)
            .into_iter()
            .map(|c| TopSource {
                addr: c.key,
                drops: c.count,
                error: c.error,
            })
            .collect(),
        drop_ports: tops
            .ports(n)
            .into_iter()
            .map(|c| TopPort {
                port: c.key,
                drops: c.count,
                error: c.error,
            })
            .collect(),
        bans: newest
            .into_iter()
            .map(|b| TopBan {
                origin: ban_origin(&b.reason).to_owned(),
                ban: BanView::new(b, now, enforced),
            })
            .collect(),
        bans_total: bans.len(),
        scans: scans.list(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use portcullis_engine::detector::{ScanKind, ScanPattern};
    use portcullis_engine::events::{ScanEvent, ScanInfo, Source};

    use super::*;

    fn scan(src: &str, phase: ScanPhase, ports: u32) -> Event {
        Event::new(
            Timestamp::from_secs(1_795_000_000),
            Body::Scan(ScanEvent {
                source: Source {
                    src_ip: src.parse().unwrap(),
                },
                scan: ScanInfo {
                    phase,
                    kind: ScanKind::Syn,
                    pattern: ScanPattern::Vertical,
                    slow: false,
                    ports,
                    hosts: 1,
                    hosts_estimated: false,
                    port_sample: (1..=20).collect(),
                    swept_port: None,
                    tcp_flags: None,
                    probes: u64::from(ports),
                    first_seen: Timestamp::from_secs(1_795_000_000),
                    last_seen: Timestamp::from_secs(1_795_000_000),
                    duration: None,
                    internal: false,
                    action: portcullis_engine::config::ScanAction::Ban,
                    note: None,
                },
            }),
        )
    }

    #[test]
    fn recent_scans_are_bounded_newest_first_and_an_end_replaces_its_start() {
        let mut r = RecentScans::default();
        r.record(&scan("198.18.0.5", ScanPhase::Start, 6));
        r.record(&scan("198.18.0.6", ScanPhase::Start, 6));
        r.record(&scan("198.18.0.5", ScanPhase::End, 100));
        let l = r.list();
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].src_ip.to_string(), l[0].phase.as_str(), l[0].ports),
            ("198.18.0.5".into(), "end", 100)
        );
        assert_eq!(l[0].port_sample.len(), SCAN_PORTS);
        assert_eq!(l[1].src_ip.to_string(), "198.18.0.6");
        for i in 0..100 {
            r.record(&scan(&format!("198.18.1.{i}"), ScanPhase::Start, 6));
        }
        assert_eq!(r.list().len(), RECENT_SCANS);
        assert_eq!(r.list()[0].src_ip.to_string(), "198.18.1.99");
    }

    #[test]
    fn bans_are_listed_newest_first_bounded_with_their_origin() {
        let mut t = BanTable::default();
        for i in 0..200u64 {
            t.insert(Ban {
                addr: IpAddr::from([198, 18, (i / 256) as u8, (i % 256) as u8]),
                since: Timestamp::from_secs(1000 + i),
                until: Timestamp::from_secs(5000),
                reason: match i % 3 {
                    0 => "scan:syn".into(),
                    1 => "manual".into(),
                    _ => "crowdsec:ssh-bf".into(),
                },
            });
        }
        let v = build(
            Status::default(),
            &DropTops::default(),
            &t,
            Timestamp::from_secs(2000),
            true,
            &RecentScans::default(),
            5,
        );
        assert_eq!(v.bans_total, 200);
        assert_eq!(v.bans.len(), MAX_TOP_BANS);
        assert_eq!(v.bans[0].ban.addr.to_string(), "198.18.0.199");
        assert_eq!(v.bans[0].origin, "manual");
        assert_eq!(v.bans[1].origin, "scan");
        assert_eq!(v.bans[2].origin, "crowdsec");
        assert_eq!(v.bans[0].ban.seconds_left, 3000);
        assert!(v.bans.windows(2).all(|w| w[0].ban.since >= w[1].ban.since));
        assert_eq!(v.window_seconds, 60);
    }
}
