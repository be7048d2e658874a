//! Prometheus metrics: [`render`] turns a [`Status`] snapshot into the text
//! exposition format 0.0.4.
//!
//! # Names
//! Every metric starts with `portcullis_` and ends in its unit; counters end
//! in `_total` (after the unit: `portcullis_queue_dropped_packets_total`).
//! Verdicts are counted by `reason` only: whether a `default` or
//! `malformed` verdict accepts or drops depends on the policy, so the action
//! is not a label. `portcullis_packets_accepted_total` and
//! `portcullis_packets_dropped_total` count actions instead. A dropped
//! packet under `--dry-run` or in monitor mode was only logged
//! (`portcullis_enforcing` is 0).
//!
//! A family that does not apply is left out rather than reported as zero:
//! the queue families only in inline mode, the capture families only for
//! capture interfaces, the detector families only with detection on.
//!
//! Guarantee: [`render`] never panics and does no I/O.

// Wired into the daemon by the `--metrics` commit that follows.
#![allow(dead_code)]

use std::fmt::Write as _;

use crate::status::Status;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// One sample: label pairs (names are ours, values are escaped on output)
/// and an integer value.
struct Sample<'a> {
    labels: Vec<(&'static str, &'a str)>,
    value: u64,
}

fn plain<'a>(value: u64) -> Sample<'a> {
    Sample {
        labels: Vec::new(),
        value,
    }
}

fn labelled<'a>(labels: &[(&'static str, &'a str)], value: u64) -> Sample<'a> {
    Sample {
        labels: labels.to_vec(),
        value,
    }
}

/// `usize` to `u64`: lossless on every target Rust supports today.
fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

struct Exposition {
    out: String,
}

impl Exposition {
    /// Writes one family: `# HELP`, `# TYPE`, then its samples. A family
    /// without samples is left out.
    fn family<'a>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = Sample<'a>>,
    ) {
        debug_assert!(valid_name(name), "{name}");
        debug_assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return;
        }
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        for s in samples {
            self.out.push_str(name);
            if !s.labels.is_empty() {
                self.out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
                }
                self.out.push('}');
            }
            let _ = writeln!(self.out, " {}", s.value);
        }
    }
}

/// `^portcullis_[a-z0-9_]+$`: our metric names.
fn valid_name(name: &str) -> bool {
    name.strip_prefix("portcullis_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// A label value: `\`, `"` and line feed escaped.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A docstring: `\` and line feed escaped (quotes stay as they are).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The snapshot in the Prometheus text exposition format 0.0.4.
pub fn render(s: &Status) -> String {
    let mut e = Exposition {
        out: String::with_capacity(8 * 1024),
    };
    let p = &s.packets;

    e.family(
        "portcullis_build_info",
        Kind::Gauge,
        "Always 1; the version of the running portcullis.",
        [labelled(&[("version", &s.version)], 1)],
    );
    e.family(
        "portcullis_runtime_info",
        Kind::Gauge,
        "Always 1; how the daemon runs: mode (inline or monitor), kernel rules path, rules file.",
        [labelled(
            &[
                ("mode", &s.mode),
                ("kernel_path", &s.kernel_path),
                ("config", &s.config),
            ],
            1,
        )],
    );
    e.family(
        "portcullis_enforcing",
        Kind::Gauge,
        "1 if drop verdicts and bans are enforced, 0 under --dry-run or in monitor mode (drops only logged).",
        [plain(u64::from(s.enforcing))],
    );
    e.family(
        "portcullis_uptime_seconds",
        Kind::Gauge,
        "Seconds since the daemon started.",
        [plain(s.uptime_seconds)],
    );

    e.family(
        "portcullis_packets_total",
        Kind::Counter,
        "Packets seen by the engine (accepted + dropped + not IP).",
        [plain(p.packets)],
    );
    e.family(
        "portcullis_packets_accepted_total",
        Kind::Counter,
        "IP packets with an accept verdict.",
        [plain(p.accepted)],
    );
    e.family(
        "portcullis_packets_dropped_total",
        Kind::Counter,
        "IP packets with a drop verdict (only logged when portcullis_enforcing is 0).",
        [plain(p.dropped)],
    );
    e.family(
        "portcullis_packets_not_ip_total",
        Kind::Counter,
        "Frames that were not IP (ARP...): accepted without inspection.",
        [plain(p.not_ip)],
    );
    e.family(
        "portcullis_verdicts_total",
        Kind::Counter,
        "Verdicts on IP packets by reason (default, blocked_ip, banned, malformed, ...).",
        p.by_reason
            .iter()
            .map(|(reason, n)| labelled(&[("reason", reason)], *n)),
    );
    e.family(
        "portcullis_dns_queries_total",
        Kind::Counter,
        "DNS queries inspected.",
        [plain(p.dns_queries)],
    );
    e.family(
        "portcullis_probes_total",
        Kind::Counter,
        "Connection attempts handed to the scan detector.",
        [plain(p.probes)],
    );
    e.family(
        "portcullis_probes_dropped_total",
        Kind::Counter,
        "Probes lost because the scan detector's channel was full.",
        [plain(p.probes_dropped)],
    );
    e.family(
        "portcullis_scans_detected_total",
        Kind::Counter,
        "Scans reported by the detector.",
        [plain(p.scans)],
    );
    e.family(
        "portcullis_bans_active",
        Kind::Gauge,
        "Bans in force now.",
        [plain(count(s.bans_active))],
    );
    e.family(
        "portcullis_bans_total",
        Kind::Counter,
        "Bans applied.",
        [plain(p.bans)],
    );
    e.family(
        "portcullis_unbans_total",
        Kind::Counter,
        "Bans lifted (expired or by hand).",
        [plain(p.unbans)],
    );
    e.family(
        "portcullis_events_total",
        Kind::Counter,
        "Events emitted by the engine.",
        [plain(p.events)],
    );
    e.family(
        "portcullis_events_suppressed_total",
        Kind::Counter,
        "Drop and dns events held back by the rate limit.",
        [plain(p.events_suppressed)],
    );
    e.family(
        "portcullis_events_dropped_total",
        Kind::Counter,
        "Events lost because the event writer fell behind.",
        [plain(s.events_dropped)],
    );

    if let Some(q) = &s.queue {
        e.family(
            "portcullis_queue_received_packets_total",
            Kind::Counter,
            "Packets read from the NFQUEUE.",
            [plain(q.received)],
        );
        e.family(
            "portcullis_queue_dropped_packets_total",
            Kind::Counter,
            "Packets the kernel dropped at the NFQUEUE: queue_full (queue at its length limit), user (could not be delivered to the socket).",
            [
                labelled(&[("kind", "queue_full")], q.queue_dropped),
                labelled(&[("kind", "user")], q.user_dropped),
            ],
        );
        e.family(
            "portcullis_queue_uninspected_packets_total",
            Kind::Counter,
            "Packets let past a full queue without inspection (fail-open; known on the iptables path only).",
            [plain(q.uninspected)],
        );
        e.family(
            "portcullis_queue_overruns_total",
            Kind::Counter,
            "Queue socket receive buffer overruns (ENOBUFS).",
            [plain(q.overruns)],
        );
        e.family(
            "portcullis_queue_fail_open",
            Kind::Gauge,
            "1 if packets the queue cannot take pass uninspected, 0 if they are dropped.",
            [plain(u64::from(q.fail_open))],
        );
    }

    e.family(
        "portcullis_capture_received_packets_total",
        Kind::Counter,
        "Packets received on a capture interface.",
        s.capture
            .iter()
            .map(|c| labelled(&[("interface", &c.interface)], c.received)),
    );
    e.family(
        "portcullis_capture_dropped_packets_total",
        Kind::Counter,
        "Packets lost on a capture interface: buffer (capture buffer full), interface (dropped by the interface or driver).",
        s.capture.iter().flat_map(|c| {
            [
                labelled(&[("interface", &c.interface), ("kind", "buffer")], c.dropped),
                labelled(
                    &[("interface", &c.interface), ("kind", "interface")],
                    c.if_dropped,
                ),
            ]
        }),
    );

    if let Some(d) = &s.detector {
        e.family(
            "portcullis_detector_sources",
            Kind::Gauge,
            "Sources the scan detector tracks now.",
            [plain(count(d.sources))],
        );
        e.family(
            "portcullis_detector_flows",
            Kind::Gauge,
            "Flows the scan detector remembers now.",
            [plain(count(d.flows))],
        );
        e.family(
            "portcullis_detector_memory_bytes",
            Kind::Gauge,
            "Approximate bytes held by the scan detector's tables now.",
            [plain(count(d.memory_bytes))],
        );
        e.family(
            "portcullis_detector_evictions_total",
            Kind::Counter,
            "Entries evicted from the scan detector's full tables (sources, flows).",
            [
                labelled(&[("table", "sources")], d.source_evictions),
                labelled(&[("table", "flows")], d.flow_evictions),
            ],
        );
    }

    e.out
}

#[cfg(test)]
mod tests;
