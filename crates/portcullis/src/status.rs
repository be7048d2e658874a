//! What the running daemon reports about itself: the answer to
//! `portcullis status` (over the control socket) and the source of the
//! Prometheus metrics. One snapshot type for both, so the two never
//! disagree.
//!
//! Every counter is cumulative since the daemon started (gauges say so).

use std::collections::BTreeMap;

use portcullis_engine::detector::DetectorStats;
use portcullis_engine::engine::Counters;
use portcullis_engine::Reason;
use serde::{Deserialize, Serialize};

/// A snapshot of the daemon, taken by the packet thread between batches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    /// `inline` (NFQUEUE verdicts) or `monitor` (passive capture).
    pub mode: String,
    /// False under `--dry-run` and in monitor mode: drops are only logged
    /// (`would_block`).
    pub enforcing: bool,
    /// Bans go into the kernel's ban set (inline, or monitor with
    /// `--enforce-bans`).
    #[serde(default)]
    pub bans_enforced: bool,
    /// Seconds since the daemon started (gauge).
    pub uptime_seconds: u64,
    /// The rules file, or `embedded default policy`.
    pub config: String,
    /// Kernel rules: `nft queue`, `iptables-nft NFQUEUE fallback`, `bans
    /// only` (monitor mode enforcing bans) or `none`.
    pub kernel_path: String,
    /// Engine counters.
    pub packets: PacketCounters,
    /// The NFQUEUE (inline mode).
    pub queue: Option<QueueStatus>,
    /// The NFLOG group of observed packets (inline mode).
    #[serde(default)]
    pub observed: Option<ObservedStatus>,
    /// Capture interfaces (monitor mode).
    pub capture: Vec<CaptureStatus>,
    /// Packet sources that have failed since the start: up again, or down
    /// and waiting to be reopened.
    #[serde(default)]
    pub sources: Vec<SourceStatus>,
    /// Bans in force now (gauge).
    pub bans_active: usize,
    /// Bans never applied automatically or by hand: loopback, the
    /// allowlist and, by default, the SSH client that started the daemon.
    pub protected: Vec<String>,
    /// The scan detector; none when detection is off.
    pub detector: Option<DetectorStatus>,
    /// Events lost because the event writer fell behind.
    pub events_dropped: u64,
    /// Events lost because the event log did not take them (disk full,
    /// I/O error); the daemon goes on.
    #[serde(default)]
    pub events_write_failed: u64,
    /// Failed writes of the event log.
    #[serde(default)]
    pub event_log_errors: u64,
    /// Our kernel rules and the commands to them (all zero where there are
    /// none).
    #[serde(default)]
    pub kernel: KernelStatus,
    /// Fleet mode (`crowdsec` in the rules file); none when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
}

/// What went wrong between the daemon and its kernel rules, and what was
/// repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelStatus {
    /// Times something else removed our kernel objects and we put them
    /// back (`rules` events).
    pub rules_restored: u64,
    /// Tries to put them back that failed (tried again every second).
    pub rules_restore_failed: u64,
    /// Bans the kernel refused at the first try (`enforced: false` with
    /// the error in the `ban` event; tried again with backoff).
    pub bans_failed: u64,
    /// Of those, bans a later try put into the kernel.
    pub bans_enforced_late: u64,
    /// Unbans the kernel refused at the first try (tried again).
    pub unbans_failed: u64,
    /// Bans and unbans waiting for another try now (gauge).
    pub retrying: u64,
    /// Conntrack entries of banned peers deleted: the open connections
    /// bans ended.
    #[serde(default)]
    pub flows_ended: u64,
    /// Times ending banned peers' connections did not happen (a failed
    /// pass, logged with its error; or an address beyond the bound).
    #[serde(default)]
    pub flow_end_failures: u64,
    /// Bans and unbans never handed to the kernel thread: its queue was
    /// full (the ban holds in user space only; `enforced: false`).
    pub commands_dropped: u64,
}

/// Packets and decisions, from the engine's [`Counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketCounters {
    pub packets: u64,
    pub accepted: u64,
    pub dropped: u64,
    /// Verdicts by reason (`default`, `blocked_ip`, `banned`, ...); every
    /// reason is present, zero or not.
    pub by_reason: BTreeMap<String, u64>,
    /// Frames that were not IP (ARP...): accepted, not inspected.
    pub not_ip: u64,
    pub dns_queries: u64,
    /// Connection attempts handed to the scan detector.
    pub probes: u64,
    /// Probes lost because the detector's channel was full.
    pub probes_dropped: u64,
    pub scans: u64,
    pub bans: u64,
    pub unbans: u64,
    /// Bans that yielded their place in a full ban table (`scan.max_bans`).
    #[serde(default)]
    pub bans_evicted: u64,
    /// Bans refused: the table was full of longer ones.
    #[serde(default)]
    pub bans_refused: u64,
    pub events: u64,
    /// Drop and dns events held back by the rate limit.
    pub events_suppressed: u64,
}

impl From<&Counters> for PacketCounters {
    fn from(c: &Counters) -> Self {
        Self {
            packets: c.packets,
            accepted: c.accepted,
            dropped: c.dropped,
            by_reason: Reason::ALL
                .iter()
                .map(|r| (r.as_str().to_owned(), c.reason(*r)))
                .collect(),
            not_ip: c.not_ip,
            dns_queries: c.dns_queries,
            probes: c.probes,
            probes_dropped: c.probes_dropped,
            scans: c.scans,
            bans: c.bans,
            unbans: c.unbans,
            bans_evicted: c.bans_evicted,
            bans_refused: c.bans_refused,
            events: c.events,
            events_suppressed: c.events_suppressed,
        }
    }
}

/// The NFQUEUE and what it lost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    pub number: u16,
    /// On overflow or daemon death packets pass (true) or are dropped.
    pub fail_open: bool,
    /// Packets this daemon read from the queue.
    pub received: u64,
    /// The kernel's counters (`/proc/net/netfilter/nfnetlink_queue`).
    pub queue_dropped: u64,
    pub user_dropped: u64,
    /// Let past a full queue without inspection (fail-open).
    pub uninspected: u64,
    /// Socket receive buffer overruns (ENOBUFS).
    pub overruns: u64,
    /// NXDOMAIN answers to blocked DNS queries that could not be built or
    /// sent (the query was dropped all the same).
    #[serde(default)]
    pub dns_answers_failed: u64,
}

/// The NFLOG group through which the daemon sees, without holding them,
/// the packets the kernel decides (inline mode).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedStatus {
    pub group: u16,
    /// Packets read.
    pub received: u64,
    /// Logged by the kernel but never read (gaps in the sequence numbers):
    /// they went on uninspected.
    pub lost: u64,
    /// Socket receive buffer overruns (ENOBUFS).
    pub overruns: u64,
    /// Messages that could not be decoded.
    pub malformed: u64,
}

/// One capture interface (monitor mode).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureStatus {
    pub interface: String,
    pub received: u64,
    /// Dropped by the capture buffer (libpcap `ps_drop`).
    pub dropped: u64,
    /// Dropped by the interface or driver (`ps_ifdrop`).
    pub if_dropped: u64,
}

/// What `status` shows of a source that has failed at least once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// `capture`, `queue` or `log`.
    pub kind: String,
    pub name: String,
    /// `up`, or `down` (waiting to be reopened).
    pub state: String,
    /// While down: the last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// While down: seconds since it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_seconds: Option<u64>,
    /// Failures since the daemon started (failed retries included).
    pub failures: u64,
    /// Times it was reopened.
    pub reopens: u64,
}

/// The scan detector's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectorStatus {
    /// Sources tracked now (gauge).
    pub sources: usize,
    /// Flows remembered now (gauge).
    pub flows: usize,
    /// Bytes held by the detector's tables now (gauge).
    pub memory_bytes: usize,
    pub source_evictions: u64,
    pub flow_evictions: u64,
    pub findings: u64,
}

impl From<&DetectorStats> for DetectorStatus {
    fn from(d: &DetectorStats) -> Self {
        Self {
            sources: d.sources,
            flows: d.flows,
            memory_bytes: d.approx_bytes,
            source_evictions: d.source_evictions,
            flow_evictions: d.flow_evictions,
            findings: d.findings,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_reason_is_reported_and_the_snapshot_round_trips() {
        let mut c = Counters::default();
        c.by_reason[Reason::Banned.index()] = 7;
        let p = PacketCounters::from(&c);
        assert_eq!(p.by_reason.len(), Reason::ALL.len());
        assert_eq!(p.by_reason["banned"], 7);
        let s = Status {
            packets: p,
            ..Status::default()
        };
        let back: Status = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}

/// What `status` and the metrics say about fleet mode (CrowdSec),
/// kept by `crate::fleet`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub lapi_url: String,
    /// CrowdSec values (addresses and ranges) enforced now (gauge).
    pub decisions: usize,
    /// Seconds since the last successful pull (gauge); none before the
    /// first.
    pub seconds_since_pull: Option<u64>,
    /// RFC 3339 time of the last successful pull.
    pub last_pull: Option<String>,
    pub pulls: u64,
    pub pull_errors: u64,
    /// Failed pulls in a row now (gauge).
    pub failing_pulls: u64,
    /// Why the last pull failed, while pulls fail.
    pub last_error: Option<String>,
    /// Answers refused whole as malformed.
    pub answers_rejected: u64,
    /// Items of answers refused (bad address, type, duration...).
    pub items_rejected: u64,
    pub decisions_added: u64,
    pub decisions_deleted: u64,
    pub unknown_deletions: u64,
    /// Decisions of a type not enforced.
    pub ignored_type: u64,
    /// Decisions on loopback, protected addresses or critical peers.
    pub protected: u64,
    /// Decisions dropped or refused beyond `max_decisions`.
    pub evicted: u64,
    /// Changes the kernel refused.
    pub kernel_errors: u64,
    /// Duration of the last kernel change, ms (gauge).
    pub last_kernel_ms: u64,
    /// Push enabled.
    pub push: bool,
    /// Findings waiting on disk (gauge).
    pub alerts_queued: usize,
    pub alerts_pushed: u64,
    pub push_errors: u64,
    /// Findings dropped (queue full, channel full, refused by the LAPI).
    pub alerts_dropped: u64,
    pub last_push_error: Option<String>,
}
