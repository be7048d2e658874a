//! Prometheus metrics: [`render`] turns a [`Status`] snapshot into the text
//! exposition format 0.0.4, and [`serve`] answers scrapes over HTTP/1.1 on
//! a thread of its own.
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
//! # Server
//! One thread accepts; each connection is served on a short-lived thread of
//! its own, at most [`MAX_CONNECTIONS`] at once: one more is answered `503`
//! at once without reading its request (on a thread of a second pool of
//! [`MAX_CONNECTIONS`], held for at most a few hundred milliseconds; beyond
//! that a connection is closed unanswered), so idle clients cannot pile up
//! threads, and a few of them do not delay a scrape. Each connection gets at most
//! [`READ_TIMEOUT`] for its whole request head (a deadline, not a per-read
//! timeout, so trickling bytes does not extend it) and at most
//! [`MAX_REQUEST_HEAD`] bytes, so a connection holds its slot for about
//! [`READ_TIMEOUT`] plus the answer, never longer. The address should be a
//! management network or loopback: the endpoint has no authentication, and
//! whoever can reach it can keep it at `503` by holding
//! [`MAX_CONNECTIONS`] connections open.
//!
//! Guarantees: [`render`] never panics and does no I/O; the server never
//! panics on anything a client sends, and a `None` snapshot (daemon busy or
//! stopping) is answered `503`.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::status::Status;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The most bytes of request head (request line and headers) read from a
/// client; a longer head is answered `431`.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// How long a client has to send its whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one write of the response may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections served at once; more are answered `503` and closed.
pub const MAX_CONNECTIONS: usize = 8;

/// How long writing the `503` for a connection over the limit may block.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// After answering, how long (and how many bytes) to read what the client
/// still sends, so that closing with unread data does not reset the
/// connection before the client has read the answer.
const LINGER: Duration = Duration::from_millis(250);
const LINGER_BYTES: usize = 64 * 1024;

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
        "1 if drop verdicts are enforced, 0 under --dry-run or in monitor mode (drops only logged).",
        [plain(u64::from(s.enforcing))],
    );
    e.family(
        "portcullis_bans_enforced",
        Kind::Gauge,
        "1 if bans go into the kernel's ban set (inline, or monitor with --enforce-bans), 0 if they are only logged.",
        [plain(u64::from(s.bans_enforced))],
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
        "Bans lifted (expired, by hand, allowlisted, or evicted from a full table).",
        [plain(p.unbans)],
    );
    e.family(
        "portcullis_bans_limited_total",
        Kind::Counter,
        "Bans the full ban table (scan.max_bans) did not simply take: evicted (the ban ending soonest made room) or refused (all others last longer).",
        [
            labelled(&[("kind", "evicted")], p.bans_evicted),
            labelled(&[("kind", "refused")], p.bans_refused),
        ],
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
        "Events held back by the rate limits (drop and dns; scan, ban and unban in a live daemon, whose bans still reach the kernel).",
        [plain(p.events_suppressed)],
    );
    e.family(
        "portcullis_events_dropped_total",
        Kind::Counter,
        "Events lost because the event writer fell behind.",
        [plain(s.events_dropped)],
    );
    e.family(
        "portcullis_events_write_failed_total",
        Kind::Counter,
        "Events lost because the event log did not take them (disk full, I/O error); the daemon goes on.",
        [plain(s.events_write_failed)],
    );
    e.family(
        "portcullis_event_log_errors_total",
        Kind::Counter,
        "Failed writes of the event log.",
        [plain(s.event_log_errors)],
    );
    let k = &s.kernel;
    e.family(
        "portcullis_rules_restored_total",
        Kind::Counter,
        "Times something else removed our kernel rules (table, chains, iptables jumps) and portcullis put them back with the bans.",
        [plain(k.rules_restored)],
    );
    e.family(
        "portcullis_rules_restore_failed_total",
        Kind::Counter,
        "Tries to put our removed kernel rules back that failed (tried again every second).",
        [plain(k.rules_restore_failed)],
    );
    e.family(
        "portcullis_kernel_commands_failed_total",
        Kind::Counter,
        "Bans and unbans the kernel refused at the first try (tried again with backoff): command is ban or unban.",
        [
            labelled(&[("command", "ban")], k.bans_failed),
            labelled(&[("command", "unban")], k.unbans_failed),
        ],
    );
    e.family(
        "portcullis_bans_enforced_late_total",
        Kind::Counter,
        "Bans the kernel first refused and a later try put in.",
        [plain(k.bans_enforced_late)],
    );
    e.family(
        "portcullis_kernel_retrying",
        Kind::Gauge,
        "Bans and unbans waiting for another try now.",
        [plain(k.retrying)],
    );
    e.family(
        "portcullis_ban_flows_ended_total",
        Kind::Counter,
        "Conntrack entries of banned peers deleted: open connections bans ended.",
        [plain(k.flows_ended)],
    );
    e.family(
        "portcullis_ban_flow_end_failures_total",
        Kind::Counter,
        "Times ending banned peers' open connections did not happen (a failed pass, or an address beyond the bound).",
        [plain(k.flow_end_failures)],
    );
    e.family(
        "portcullis_kernel_commands_dropped_total",
        Kind::Counter,
        "Bans and unbans never handed to the kernel: the kernel thread's queue was full.",
        [plain(k.commands_dropped)],
    );

    if let Some(f) = &s.fleet {
        fleet(&mut e, f);
    }

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
            "portcullis_dns_answers_failed_total",
            Kind::Counter,
            "NXDOMAIN answers to blocked DNS queries that could not be built or sent (the query was dropped all the same).",
            [plain(q.dns_answers_failed)],
        );
        e.family(
            "portcullis_queue_fail_open",
            Kind::Gauge,
            "1 if packets the queue cannot take pass uninspected, 0 if they are dropped.",
            [plain(u64::from(q.fail_open))],
        );
    }

    if let Some(o) = &s.observed {
        e.family(
            "portcullis_observed_packets_total",
            Kind::Counter,
            "Packets the kernel decided and copied to portcullis through NFLOG (inline mode): seen, not held.",
            [plain(o.received)],
        );
        e.family(
            "portcullis_observed_lost_packets_total",
            Kind::Counter,
            "Packets the kernel logged for portcullis that never arrived (NFLOG sequence gaps): they went on uninspected.",
            [plain(o.lost)],
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

    e.family(
        "portcullis_source_up",
        Kind::Gauge,
        "1 if a packet source that has failed since the start is open again, 0 while it waits to be reopened.",
        s.sources.iter().map(|c| {
            labelled(
                &[("kind", &c.kind), ("name", &c.name)],
                u64::from(c.state == "up"),
            )
        }),
    );
    e.family(
        "portcullis_source_failures_total",
        Kind::Counter,
        "Failures of a packet source (capture interface, NFQUEUE, NFLOG group), failed reopenings included.",
        s.sources
            .iter()
            .map(|c| labelled(&[("kind", &c.kind), ("name", &c.name)], c.failures)),
    );
    e.family(
        "portcullis_source_reopens_total",
        Kind::Counter,
        "Times a failed packet source was reopened.",
        s.sources
            .iter()
            .map(|c| labelled(&[("kind", &c.kind), ("name", &c.name)], c.reopens)),
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

/// The metrics HTTP server, running on its own thread.
///
/// Dropping it asks the accepting thread to stop without waiting for it;
/// [`MetricsServer::shutdown`] waits for it. Either way the listening
/// socket is closed at once; connections being served finish on their own
/// threads, within about [`READ_TIMEOUT`] plus [`LINGER`].
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Binds `addr` (port 0 picks a free port) and serves scrapes on a new
/// thread. `snapshot` is called once per `GET /metrics`; `None` is answered
/// `503 Service Unavailable`. It may be called from several connection
/// threads at once; it should give up after a second or so rather than
/// block, since a connection holds one of [`MAX_CONNECTIONS`] slots
/// meanwhile (a panic ends only that connection).
pub fn serve<F>(addr: SocketAddr, snapshot: F) -> io::Result<MetricsServer>
where
    F: Fn() -> Option<Status> + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = thread::Builder::new().name("metrics".into()).spawn({
        let stop = Arc::clone(&stop);
        move || accept_loop(&listener, &stop, Arc::new(snapshot))
    })?;
    Ok(MetricsServer {
        addr,
        stop,
        thread: Some(thread),
    })
}

impl MetricsServer {
    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and waits for its thread.
    pub fn shutdown(mut self) {
        if self.signal_stop() {
            if let Some(t) = self.thread.take() {
                // A panic in the snapshot closure already ended the thread.
                let _ = t.join();
            }
        }
    }

    /// Sets the stop flag and wakes the blocked `accept` with a connection
    /// of our own. False if the wake-up connection failed: the thread may
    /// then stay in `accept` until the process exits.
    fn signal_stop(&mut self) -> bool {
        if self.stop.swap(true, Ordering::SeqCst) {
            return true;
        }
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        TcpStream::connect_timeout(&SocketAddr::new(ip, self.addr.port()), WRITE_TIMEOUT).is_ok()
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.signal_stop();
        }
    }
}

/// Holds one of the [`MAX_CONNECTIONS`] slots; gives it back when dropped
/// (also when the connection thread panics).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Option<Self> {
        active
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_CONNECTIONS).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(active)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop<F>(listener: &TcpListener, stop: &AtomicBool, snapshot: Arc<F>)
where
    F: Fn() -> Option<Status> + Send + Sync + 'static,
{
    // Connections being served, and being answered 503.
    let active = Arc::new(AtomicUsize::new(0));
    let refusing = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            // A failed connection is the client's problem, not ours.
            Ok(stream) => {
                // A failed spawn drops the connection (and the slot); so
                // does a full second pool.
                if let Some(slot) = Slot::take(&active) {
                    let snapshot = Arc::clone(&snapshot);
                    let _ = thread::Builder::new()
                        .name("metrics-conn".into())
                        .spawn(move || {
                            let _slot = slot;
                            let _ = handle(stream, &*snapshot);
                        });
                } else if let Some(slot) = Slot::take(&refusing) {
                    let _ = thread::Builder::new()
                        .name("metrics-busy".into())
                        .spawn(move || {
                            let _slot = slot;
                            busy(stream);
                        });
                }
            }
            // Out of file descriptors and the like: back off instead of
            // spinning on the same error.
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Answers a connection over [`MAX_CONNECTIONS`] `503` without reading
/// its request (but reading what it sends for [`LINGER`], so that closing
/// does not reset the connection before the client read the answer).
fn busy(mut stream: TcpStream) {
    let mut r = Response::text(
        503,
        "Service Unavailable",
        "too many connections; try again",
    );
    r.extra_headers = "Retry-After: 1\r\n";
    if stream.set_write_timeout(Some(BUSY_WRITE_TIMEOUT)).is_ok()
        && stream.write_all(&r.bytes()).is_ok()
        && stream.shutdown(Shutdown::Write).is_ok()
    {
        linger(&mut stream);
    }
}

/// Why no request head was read.
#[derive(Debug)]
enum HeadError {
    /// The client closed before finishing its head.
    Closed,
    /// [`READ_TIMEOUT`] passed.
    Timeout,
    /// Longer than [`MAX_REQUEST_HEAD`].
    TooLarge,
    Io(io::Error),
}

/// Reads up to the blank line that ends the request head, by `deadline`.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(HeadError::Timeout)?;
        stream.set_read_timeout(Some(left)).map_err(HeadError::Io)?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::Timeout)
            }
            Err(e) => return Err(HeadError::Io(e)),
        };
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf, from) {
            if end > MAX_REQUEST_HEAD {
                return Err(HeadError::TooLarge);
            }
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

/// The end of the head (just past `\r\n\r\n`, or `\n\n` from lenient
/// clients), searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find_map(|i| {
        if buf[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if buf[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra_headers: &'static str,
    body: String,
    head_only: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Self {
        Self {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra_headers: "",
            body: format!("{body}\n"),
            head_only: false,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n{}\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            self.extra_headers,
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

const INDEX_HTML: &str = "<!DOCTYPE html>\n<html><head><title>portcullis</title></head>\n<body><h1>portcullis</h1><p><a href=\"/metrics\">Metrics</a></p></body></html>\n";

/// The answer to one request head.
fn respond(head: &[u8], snapshot: &dyn Fn() -> Option<Status>) -> Response {
    let Some(line) = std::str::from_utf8(head)
        .ok()
        .and_then(|h| h.lines().next())
    else {
        return Response::text(400, "Bad Request", "bad request");
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "Bad Request", "bad request");
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Response::text(400, "Bad Request", "bad request");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let mut r = Response::text(405, "Method Not Allowed", "method not allowed");
            r.extra_headers = "Allow: GET, HEAD\r\n";
            return r;
        }
    };
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let mut r = match path {
        "/metrics" => match snapshot() {
            Some(s) => Response {
                status: 200,
                reason: "OK",
                content_type: CONTENT_TYPE,
                extra_headers: "",
                body: render(&s),
                head_only: false,
            },
            None => {
                let mut r = Response::text(
                    503,
                    "Service Unavailable",
                    "the daemon did not answer; try again",
                );
                r.extra_headers = "Retry-After: 1\r\n";
                r
            }
        },
        "/" => Response {
            status: 200,
            reason: "OK",
            content_type: "text/html; charset=utf-8",
            extra_headers: "",
            body: INDEX_HTML.to_owned(),
            head_only: false,
        },
        _ => Response::text(404, "Not Found", "not found; metrics are at /metrics"),
    };
    r.head_only = head_only;
    r
}

/// Serves one connection: reads the head, answers, closes.
fn handle(mut stream: TcpStream, snapshot: &dyn Fn() -> Option<Status>) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let _ = stream.set_nodelay(true);
    let response = match read_head(&mut stream, Instant::now() + READ_TIMEOUT) {
        Ok(head) => respond(&head, snapshot),
        Err(HeadError::TooLarge) => Response::text(
            431,
            "Request Header Fields Too Large",
            "request head too large",
        ),
        Err(HeadError::Timeout) => Response::text(408, "Request Timeout", "request timeout"),
        Err(HeadError::Closed) => return Ok(()),
        Err(HeadError::Io(e)) => return Err(e),
    };
    stream.write_all(&response.bytes())?;
    stream.shutdown(Shutdown::Write)?;
    linger(&mut stream);
    Ok(())
}

/// Reads (and discards) what the client still sends, until it closes, for
/// at most [`LINGER`] and [`LINGER_BYTES`].
fn linger(stream: &mut TcpStream) {
    let deadline = Instant::now() + LINGER;
    let mut chunk = [0u8; 4096];
    let mut read = 0;
    while read < LINGER_BYTES {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return;
        };
        if stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests;

/// Fleet mode (CrowdSec).
fn fleet(e: &mut Exposition, f: &crate::status::FleetStatus) {
    e.family(
        "portcullis_crowdsec_decisions",
        Kind::Gauge,
        "CrowdSec decisions (addresses and ranges) enforced in the kernel now.",
        [plain(f.decisions as u64)],
    );
    e.family(
        "portcullis_crowdsec_pull_age_seconds",
        Kind::Gauge,
        "Seconds since the last successful pull of the CrowdSec decision stream (how stale the decisions may be); absent before the first.",
        f.seconds_since_pull.map(plain),
    );
    e.family(
        "portcullis_crowdsec_failing_pulls",
        Kind::Gauge,
        "Failed pulls in a row now (0: pulls work).",
        [plain(f.failing_pulls)],
    );
    e.family(
        "portcullis_crowdsec_pulls_total",
        Kind::Counter,
        "Pulls of the decision stream, by outcome.",
        [
            labelled(&[("outcome", "ok")], f.pulls),
            labelled(&[("outcome", "error")], f.pull_errors),
        ],
    );
    e.family(
        "portcullis_crowdsec_decisions_total",
        Kind::Counter,
        "CrowdSec decisions taken in or not: added, deleted, unknown_deletion, ignored_type, protected, evicted, rejected (malformed items).",
        [
            labelled(&[("kind", "added")], f.decisions_added),
            labelled(&[("kind", "deleted")], f.decisions_deleted),
            labelled(&[("kind", "unknown_deletion")], f.unknown_deletions),
            labelled(&[("kind", "ignored_type")], f.ignored_type),
            labelled(&[("kind", "protected")], f.protected),
            labelled(&[("kind", "evicted")], f.evicted),
            labelled(&[("kind", "rejected")], f.items_rejected),
        ],
    );
    e.family(
        "portcullis_crowdsec_answers_rejected_total",
        Kind::Counter,
        "Decision stream answers refused whole as malformed (nothing in force was lifted).",
        [plain(f.answers_rejected)],
    );
    e.family(
        "portcullis_crowdsec_kernel_errors_total",
        Kind::Counter,
        "Changes of the CrowdSec kernel sets the kernel refused (then loaded whole).",
        [plain(f.kernel_errors)],
    );
    e.family(
        "portcullis_crowdsec_alerts_queued",
        Kind::Gauge,
        "Scan findings waiting on disk to be pushed to the LAPI.",
        [plain(f.alerts_queued as u64)],
    );
    e.family(
        "portcullis_crowdsec_alerts_total",
        Kind::Counter,
        "Scan findings pushed to the LAPI as alerts, by outcome: pushed, error (a failed try; retried), dropped.",
        [
            labelled(&[("outcome", "pushed")], f.alerts_pushed),
            labelled(&[("outcome", "error")], f.push_errors),
            labelled(&[("outcome", "dropped")], f.alerts_dropped),
        ],
    );
}
