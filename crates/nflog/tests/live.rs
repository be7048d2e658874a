//! Live NFLOG tests in network namespaces the tests create
//! (`portcullis_testnet::Lab`, removed on drop, also on failure, with the
//! nft tables inside them).
//!
//! They need root. Run with a custom harness (libtest-mimic) so that, when
//! they cannot run, each reports itself **ignored with the reason** instead
//! of passing. They run one at a time (the throughput test measures).
//!
//! Every flood is bounded: at most 200,000 packets and 10 s per sender.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use portcullis_nflog::{log_instances, Hook, Log, LogConfig, LogInstance, LogStats, NflogError};
use portcullis_testnet::{check, enter, join, Lab};

const PORT: u16 = 9999;
const MAX_PACKETS: u32 = 200_000;
const MAX_SEND_TIME: Duration = Duration::from_secs(10);

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let tests = vec![
        live("new_flows_arrive_whole_ipv4", || new_flows(false)),
        live("new_flows_arrive_whole_ipv6", || new_flows(true)),
        live("rule_snaplen_threshold_and_mark", rule_settings),
        live("overrun_is_counted_as_lost", overrun_counted),
        live("second_listener_is_refused", second_listener_refused),
        example_trial(),
        live("throughput_one_reader", throughput),
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// What these tests need.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("ping", "iputils-ping"),
];

fn live(name: &str, f: fn() -> Result<(), Failed>) -> Trial {
    portcullis_testnet::live_trial(name, TOOLS, f)
}

/// The `nflog_count` example, where `cargo test` builds it: next to this
/// test's `deps/` directory (not built with `--test live` alone).
fn example_exe() -> Option<std::path::PathBuf> {
    std::env::current_exe()
        .ok()?
        .parent()?
        .parent()
        .map(|dir| dir.join("examples").join("nflog_count"))
        .filter(|p| p.is_file())
}

/// Like [`live`], and also ignored with the reason when the example is not
/// built.
fn example_trial() -> Trial {
    Trial::ignorable_test("example_counts_until_sigterm", || {
        if let Some(reason) = portcullis_testnet::skip_reason(TOOLS) {
            return Ok(Completion::ignored_with(format!("skipped: {reason}")));
        }
        let Some(exe) = example_exe() else {
            return Ok(Completion::ignored_with(
                "skipped: the nflog_count example is not built (run `cargo test -p \
                 portcullis-nflog` without `--test live`)",
            ));
        };
        example_counts(&exe).map(|()| Completion::Completed)
    })
}

// ---- helpers -------------------------------------------------------------

const A4: &str = "198.18.0.1";
const B4: &str = "198.18.0.2";
const A6: &str = "2001:2::1";
const B6: &str = "2001:2::2";

/// Namespaces `a` (198.18.0.1, 2001:2::1), which sends, and `b`
/// (198.18.0.2, 2001:2::2), which logs and receives on [`B_IF`].
fn pair() -> Result<Lab, Failed> {
    let mut lab = Lab::new();
    lab.add_ns("a")?;
    lab.add_ns("b")?;
    lab.link(
        "a",
        &[&format!("{A4}/24"), &format!("{A6}/64")],
        "b",
        &[&format!("{B4}/24"), &format!("{B6}/64")],
    )?;
    Ok(lab)
}

/// The receiving interface in `b` (`Lab::link` names it).
const B_IF: &str = "vba";

fn addr(v6: bool, a: bool) -> IpAddr {
    let s = match (v6, a) {
        (false, true) => A4,
        (false, false) => B4,
        (true, true) => A6,
        (true, false) => B6,
    };
    s.parse().unwrap_or(IpAddr::from([198, 18, 0, 1]))
}

/// Interface index of `dev` in namespace `short`.
fn ifindex(lab: &Lab, short: &str, dev: &str) -> Result<u32, Failed> {
    let out = lab.exec(short, "ip", &["-o", "link", "show", dev])?;
    out.split(':')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("no ifindex in {out:?}").into())
}

/// Loads an nft script in namespace `ns` (our own table; it goes with the
/// namespace).
fn nft(lab: &Lab, ns: &str, script: &str) -> Result<(), Failed> {
    let path = std::env::temp_dir().join(format!("pcnflog-{}.nft", std::process::id()));
    std::fs::write(&path, script).map_err(|e| e.to_string())?;
    let r = lab.exec(ns, "nft", &["-f", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    r.map(|_| ()).map_err(Failed::from)
}

/// The packet count of the one `counter` in chain `in` of `table inet pcnflog`.
fn rule_counter(lab: &Lab, ns: &str) -> Result<u64, Failed> {
    let out = lab.exec(ns, "nft", &["list", "chain", "inet", "pcnflog", "in"])?;
    out.split("counter packets ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no counter in {out:?}").into())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A logged packet, copied out of the reader's buffer.
#[derive(Debug, Clone)]
struct Seen {
    family: u8,
    hook: Hook,
    hw_protocol: u16,
    payload: Vec<u8>,
    prefix: Option<Vec<u8>>,
    mark: u32,
    timestamp_micros: Option<u64>,
    seq: Option<u32>,
    indev: Option<u32>,
    outdev: Option<u32>,
    original_len: Option<u32>,
    /// When the reader got it.
    at_micros: u64,
}

struct ReadOut {
    packets: Vec<Seen>,
    /// Packets counted (also when not kept).
    count: u64,
    stats: LogStats,
    instance: Option<LogInstance>,
    portid: u32,
    rcvbuf: usize,
    /// (when, packets so far) after each batch that held packets.
    batches: Vec<(Instant, u64)>,
    /// CPU time the reader thread used after opening the group.
    cpu: Duration,
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(Duration::ZERO, Duration::from)
}

/// An NFLOG reader in a namespace, on its own thread.
struct Reader {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<ReadOut, String>>,
}

impl Reader {
    /// Opens `cfg` in `ns` and reads until stopped; keeps copies of the
    /// packets when `keep`.
    fn start(lab: &Lab, ns: &str, cfg: LogConfig, keep: bool) -> Result<Self, Failed> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        let name = lab.ns(ns);
        let stop2 = stop.clone();
        let handle = thread::spawn(move || -> Result<ReadOut, String> {
            let opened = enter(&name).and_then(|()| Log::open(&cfg).map_err(|e| e.to_string()));
            let mut log = match opened {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e.clone()));
                    return Err(e);
                }
            };
            let instance = log_instances()
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|i| i.group == cfg.group);
            let _ = tx.send(Ok(()));
            let mut out = ReadOut {
                packets: Vec::new(),
                count: 0,
                stats: LogStats::default(),
                instance,
                portid: log.portid(),
                rcvbuf: log.rcvbuf(),
                batches: Vec::new(),
                cpu: Duration::ZERO,
            };
            let cpu0 = thread_cpu();
            loop {
                let n = log
                    .recv_batch(4096, Some(Duration::from_millis(50)), |p| {
                        out.count += 1;
                        if keep {
                            out.packets.push(Seen {
                                family: p.family,
                                hook: p.hook,
                                hw_protocol: p.hw_protocol,
                                payload: p.payload.to_vec(),
                                prefix: p.prefix.map(<[u8]>::to_vec),
                                mark: p.mark,
                                timestamp_micros: p.timestamp_micros,
                                seq: p.seq,
                                indev: p.indev,
                                outdev: p.outdev,
                                original_len: p.original_len,
                                at_micros: now_micros(),
                            });
                        }
                    })
                    .map_err(|e| e.to_string())?;
                if n > 0 {
                    out.batches.push((Instant::now(), out.count));
                } else if stop2.load(Ordering::Relaxed) {
                    break;
                }
            }
            out.stats = log.stats().clone();
            out.cpu = thread_cpu().saturating_sub(cpu0);
            Ok(out)
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Reader { stop, handle }),
            Ok(Err(e)) => Err(format!("opening the NFLOG group failed: {e}").into()),
            Err(_) => Err("the NFLOG reader did not start".into()),
        }
    }

    /// Stops once nothing arrived for 50 ms, after the kernel's flush
    /// timeout has surely passed.
    fn finish(self, flush: Duration) -> Result<ReadOut, Failed> {
        thread::sleep(flush + Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        join(self.handle)
    }
}

/// Runs `f` on a thread in namespace `ns`.
fn in_ns<T: Send + 'static>(
    lab: &Lab,
    ns: &str,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, Failed> {
    let name = lab.ns(ns);
    join(thread::spawn(move || {
        enter(&name)?;
        f()
    }))
}

/// `n` TCP connections from `a` to a listener in `b` (each one new flow),
/// one after the other, each closed at once.
fn tcp_connections(lab: &Lab, v6: bool, n: usize) -> Result<(), Failed> {
    let dst = SocketAddr::new(addr(v6, false), PORT);
    let name_b = lab.ns("b");
    let (ready_tx, ready_rx) = mpsc::channel();
    let listener = thread::spawn(move || -> Result<usize, String> {
        enter(&name_b)?;
        let l = TcpListener::bind(dst).map_err(|e| format!("listen: {e}"))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let _ = ready_tx.send(());
        let end = Instant::now() + MAX_SEND_TIME;
        let mut accepted = 0;
        while accepted < n && Instant::now() < end {
            match l.accept() {
                Ok(_) => accepted += 1,
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        }
        Ok(accepted)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| "listener did not start")?;
    in_ns(lab, "a", move || {
        for _ in 0..n {
            TcpStream::connect_timeout(&dst, Duration::from_secs(2))
                .map_err(|e| format!("connect {dst}: {e}"))?;
        }
        Ok(())
    })?;
    let accepted = join(listener)?;
    check(accepted == n, || {
        format!("accepted {accepted} of {n} connections")
    })
}

/// `n` UDP datagrams from `a` to b:9999, each from a new socket (a new
/// flow each), 100 bytes: "flow <i>" padded with zeros.
fn udp_flows(lab: &Lab, v6: bool, n: usize) -> Result<(), Failed> {
    let (src, dst) = (
        SocketAddr::new(addr(v6, true), 0),
        SocketAddr::new(addr(v6, false), PORT),
    );
    in_ns(lab, "a", move || {
        for i in 0..n {
            let s = UdpSocket::bind(src).map_err(|e| format!("bind: {e}"))?;
            let mut data = format!("flow {i}").into_bytes();
            data.resize(100, 0);
            s.send_to(&data, dst).map_err(|e| format!("send: {e}"))?;
        }
        Ok(())
    })
}

/// `count` UDP datagrams of `size` bytes from `a` to b:9999, as fast as the
/// sockets take them, within 10 s, split over `threads` senders (one flow
/// each). Returns (sent, elapsed of the slowest sender).
fn udp_flood(lab: &Lab, count: u32, size: usize, threads: u32) -> Result<(u32, Duration), Failed> {
    let count = count.min(MAX_PACKETS);
    let threads = threads.max(1);
    let senders: Vec<_> = (0..threads)
        .map(|k| {
            let name = lab.ns("a");
            let share = count / threads + u32::from(k < count % threads);
            thread::spawn(move || -> Result<(u32, Duration), String> {
                enter(&name)?;
                let s = UdpSocket::bind((A4, 0)).map_err(|e| format!("bind: {e}"))?;
                s.connect((B4, PORT)).map_err(|e| format!("connect: {e}"))?;
                let mut payload = vec![0u8; size.max(4)];
                let start = Instant::now();
                let mut sent = 0;
                while sent < share && start.elapsed() < MAX_SEND_TIME {
                    payload[..4].copy_from_slice(&sent.to_be_bytes());
                    match s.send(&payload) {
                        Ok(_) => sent += 1,
                        // ENOBUFS / EAGAIN under load, and ECONNREFUSED
                        // from an ICMP port unreachable answer: go on.
                        Err(_) => thread::yield_now(),
                    }
                }
                Ok((sent, start.elapsed()))
            })
        })
        .collect();
    let mut total = (0, Duration::ZERO);
    for h in senders {
        let (sent, elapsed) = join(h)?;
        total = (total.0 + sent, total.1.max(elapsed));
    }
    Ok(total)
}

fn ping(lab: &Lab, v6: bool) -> Result<(), Failed> {
    let dst = addr(v6, false).to_string();
    lab.exec("a", "ping", &["-c", "1", "-W", "2", &dst])?;
    Ok(())
}

/// (protocol, L4 bytes) of an IPv4 or IPv6 packet without extension headers.
fn l4(ip: &[u8]) -> Option<(u8, &[u8])> {
    match ip.first()? >> 4 {
        4 => Some((*ip.get(9)?, ip.get(usize::from(ip[0] & 0x0f) * 4..)?)),
        6 => Some((*ip.get(6)?, ip.get(40..)?)),
        _ => None,
    }
}

fn src_dst(ip: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match ip.first()? >> 4 {
        4 => {
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        6 => {
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            Some((IpAddr::from(s), IpAddr::from(d)))
        }
        _ => None,
    }
}

// ---- tests ---------------------------------------------------------------

/// `ct state new log group 7 queue-threshold 8` on input: every new TCP
/// connection, UDP flow and ping arrives once, whole, with the right hook,
/// interface, prefix, timestamp and consecutive sequence numbers, and the
/// kernel holds the copy range and flush timeout we asked for.
fn new_flows(v6: bool) -> Result<(), Failed> {
    const TCP: usize = 20;
    const UDP: usize = 10;
    const PINGS: usize = 3;
    const TOTAL: usize = TCP + UDP + PINGS;
    let lab = pair()?;
    let ifindex = ifindex(&lab, "b", B_IF)?;
    nft(
        &lab,
        "b",
        "add table inet pcnflog\n\
         add chain inet pcnflog in { type filter hook input priority 0; }\n\
         add rule inet pcnflog in meta l4proto { tcp, udp, icmp, ipv6-icmp } ct state new \
         counter log prefix \"pcnf\" group 7 queue-threshold 8\n",
    )?;
    let cfg = LogConfig::new(7);
    let reader = Reader::start(&lab, "b", cfg.clone(), true)?;
    let t0 = now_micros();
    tcp_connections(&lab, v6, TCP)?;
    udp_flows(&lab, v6, UDP)?;
    for _ in 0..PINGS {
        ping(&lab, v6)?;
    }
    let r = reader.finish(Duration::from_millis(10 * u64::from(cfg.timeout)))?;
    let t1 = now_micros();
    let counted = rule_counter(&lab, "b")?;

    let (tcp, udp, icmp) = (6u8, 17u8, if v6 { 58u8 } else { 1u8 });
    let (family, proto) = if v6 { (10, 0x86dd) } else { (2, 0x0800) };
    let (a, b) = (addr(v6, true), addr(v6, false));
    let mut by_proto = [0usize; 3];
    let mut problems = Vec::new();
    for p in &r.packets {
        let mut bad = Vec::new();
        if (p.family, p.hw_protocol, p.hook) != (family, proto, Hook::Input) {
            bad.push("family/protocol/hook");
        }
        if (p.indev, p.outdev) != (Some(ifindex), None) {
            bad.push("interfaces");
        }
        if p.prefix.as_deref() != Some(b"pcnf") || p.mark != 0 {
            bad.push("prefix/mark");
        }
        // Stamped on receive: after the test started, before the reader saw it.
        if !p
            .timestamp_micros
            .is_some_and(|ts| ts >= t0 && ts <= p.at_micros)
        {
            bad.push("timestamp");
        }
        if p.original_len != Some(p.payload.len() as u32) {
            bad.push("original length (nothing should be cut at 256 bytes)");
        }
        if src_dst(&p.payload) != Some((a, b)) {
            bad.push("addresses");
        }
        match l4(&p.payload) {
            Some((pr, h)) if pr == tcp && h.get(2..4) == Some(&PORT.to_be_bytes()[..]) => {
                // SYN without ACK.
                if h.get(13).map(|f| f & 0x12) != Some(0x02) {
                    bad.push("TCP flags: not a SYN");
                }
                by_proto[0] += 1;
            }
            Some((pr, h)) if pr == udp && h.get(2..4) == Some(&PORT.to_be_bytes()[..]) => {
                if !h.get(8..).is_some_and(|d| d.starts_with(b"flow ")) {
                    bad.push("UDP payload");
                }
                by_proto[1] += 1;
            }
            // Echo request.
            Some((pr, h)) if pr == icmp && h.first() == Some(&if v6 { 128 } else { 8 }) => {
                by_proto[2] += 1;
            }
            _ => bad.push("unexpected packet"),
        }
        if !bad.is_empty() {
            problems.push(format!("{bad:?}: {p:?}"));
        }
    }
    let seqs: Vec<Option<u32>> = r.packets.iter().map(|p| p.seq).collect();
    let want_seqs: Vec<Option<u32>> = (0..TOTAL as u32).map(Some).collect();
    let first = r.packets.first();
    println!(
        "  {TOTAL} new flows -> {} logged (rule counter {counted}), tcp/udp/icmp {by_proto:?}, \
         stats {:?}, kernel instance {:?}, first packet stamped {} us before it was read, \
         test {} ms",
        r.packets.len(),
        r.stats,
        r.instance,
        first.map_or(0, |p| p
            .at_micros
            .saturating_sub(p.timestamp_micros.unwrap_or(0))),
        (t1 - t0) / 1000
    );
    check(problems.is_empty(), || {
        format!(
            "{} bad packets, e.g. {:?}",
            problems.len(),
            &problems[..problems.len().min(3)]
        )
    })?;
    check(by_proto == [TCP, UDP, PINGS], || {
        format!("tcp/udp/icmp {by_proto:?}, want [{TCP}, {UDP}, {PINGS}]")
    })?;
    check(seqs == want_seqs, || format!("sequence numbers {seqs:?}"))?;
    check(counted == TOTAL as u64, || {
        format!("the rule counted {counted}, want {TOTAL}")
    })?;
    let s = &r.stats;
    check(
        s.received == TOTAL as u64
            && s.lost == 0
            && s.overruns == 0
            && s.malformed == 0
            && s.out_of_order == 0
            && s.netlink_errors == 0,
        || format!("stats {s:?}"),
    )?;
    // The rule's threshold (8) is below ours (64): it wins.
    check(
        s.max_per_datagram <= 8 && s.datagrams >= (TOTAL as u64).div_ceil(8),
        || format!("datagrams larger than the rule's threshold: {s:?}"),
    )?;
    let inst = r.instance.ok_or("group 7 missing from nfnetlink_log")?;
    check(
        inst.portid == r.portid
            && inst.copy_mode == 2
            && inst.copy_range == cfg.copy_range
            && inst.flush_timeout == cfg.timeout,
        || format!("kernel instance {inst:?}, our port id {}", r.portid),
    )?;
    Ok(())
}

/// The rule's `snaplen` and `queue-threshold` win when smaller than the
/// configuration's; a mark set before the log statement is reported.
fn rule_settings() -> Result<(), Failed> {
    const N: usize = 12;
    let lab = pair()?;
    nft(
        &lab,
        "b",
        "add table inet pcnflog\n\
         add chain inet pcnflog in { type filter hook input priority 0; }\n\
         add rule inet pcnflog in udp dport 9999 meta mark set 0x2a counter \
         log group 3 snaplen 40 queue-threshold 2\n",
    )?;
    let cfg = LogConfig {
        timeout: 100, // 1 s: only the threshold can send before the end
        ..LogConfig::new(3)
    };
    let reader = Reader::start(&lab, "b", cfg.clone(), true)?;
    udp_flows(&lab, false, N)?;
    let r = reader.finish(Duration::from_secs(1))?;
    println!("  {N} packets: stats {:?}", r.stats);
    check(r.packets.len() == N, || {
        format!("got {} of {N}", r.packets.len())
    })?;
    for p in &r.packets {
        check(p.payload.len() == 40 && p.mark == 0x2a, || {
            format!("want 40 bytes (rule snaplen) and mark 0x2a: {p:?}")
        })?;
        check(p.original_len.is_some_and(|l| l > 40), || {
            format!("original length should exceed the snap length: {p:?}")
        })?;
    }
    check(
        r.stats.max_per_datagram == 2 && r.stats.datagrams == (N / 2) as u64,
        || {
            format!(
                "want {} datagrams of 2 (the rule's threshold): {:?}",
                N / 2,
                r.stats
            )
        },
    )?;
    Ok(())
}

/// A 4 KiB receive buffer and a burst of 2,000 logged packets not read
/// until the burst is over: the kernel drops whole datagrams, the socket
/// reports the overrun (`ENOBUFS`) and stays usable, and once a marker
/// packet arrives after the drain, received + lost equals what the rule
/// logged (its counter) and what was sent.
fn overrun_counted() -> Result<(), Failed> {
    const N: u32 = 2000;
    let lab = pair()?;
    nft(
        &lab,
        "b",
        "add table inet pcnflog\n\
         add chain inet pcnflog in { type filter hook input priority 0; }\n\
         add rule inet pcnflog in udp dport 9999 counter log group 8 queue-threshold 8\n",
    )?;
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(u32, usize), String>>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (drained_tx, drained_rx) = mpsc::channel::<LogStats>();
    let name = lab.ns("b");
    let h = thread::spawn(move || -> Result<LogStats, String> {
        let cfg = LogConfig {
            rcvbuf: 4096,
            ..LogConfig::new(8)
        };
        let opened = enter(&name).and_then(|()| Log::open(&cfg).map_err(|e| e.to_string()));
        let mut log = match opened {
            Ok(l) => l,
            Err(e) => {
                let _ = ready_tx.send(Err(e.clone()));
                return Err(e);
            }
        };
        let _ = ready_tx.send(Ok((log.portid(), log.rcvbuf())));
        // Not reading while the burst is sent.
        go_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "no go")?;
        thread::sleep(Duration::from_millis(300)); // past the flush timeout
        let mut idle = 0;
        while idle < 3 {
            let n = log
                .recv_batch(4096, Some(Duration::from_millis(50)), |_| {})
                .map_err(|e| e.to_string())?;
            idle = if n == 0 { idle + 1 } else { 0 };
        }
        let drained = log.stats().clone();
        let _ = drained_tx.send(drained.clone());
        // The marker: read until it arrives.
        let end = Instant::now() + Duration::from_secs(5);
        while log.stats().received == drained.received && Instant::now() < end {
            log.recv_batch(16, Some(Duration::from_millis(100)), |_| {})
                .map_err(|e| e.to_string())?;
        }
        Ok(log.stats().clone())
    });
    let (portid, rcvbuf) = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "reader did not start")??;
    let (sent, elapsed) = udp_flood(&lab, N, 64, 1)?;
    let _ = go_tx.send(());
    let drained = drained_rx
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| "reader did not drain")?;
    udp_flows(&lab, false, 1)?;
    let end = join(h)?;
    let counted = rule_counter(&lab, "b")?;
    println!(
        "  port id {portid}, rcvbuf {rcvbuf} B; sent {sent} in {elapsed:?} (+1 marker); rule \
         logged {counted}; after the burst: received {}, overruns {}, lost so far {}; after \
         the marker: {end:?}",
        drained.received, drained.overruns, drained.lost
    );
    check(drained.overruns > 0, || {
        format!("no ENOBUFS reported: {drained:?}")
    })?;
    check(end.received == drained.received + 1, || {
        format!("the socket did not deliver the marker after the overrun: {end:?}")
    })?;
    check(end.lost > 0, || format!("nothing counted lost: {end:?}"))?;
    check(end.received + end.lost + end.malformed == counted, || {
        format!("received + lost + malformed != rule counter {counted}: {end:?}")
    })?;
    check(counted == u64::from(sent) + 1, || {
        format!("the rule logged {counted}, {sent} + 1 were sent")
    })?;
    Ok(())
}

/// A second socket cannot bind a bound group; the error names the owner.
fn second_listener_refused() -> Result<(), Failed> {
    let mut lab = Lab::new();
    let name = lab.add_ns("q")?;
    let h = thread::spawn(move || -> Result<(), String> {
        enter(&name)?;
        let first = Log::open(&LogConfig::new(11)).map_err(|e| format!("first open: {e}"))?;
        match Log::open(&LogConfig::new(11)) {
            Err(
                e @ NflogError::GroupInUse {
                    group: 11,
                    portid: Some(p),
                },
            ) if p == first.portid() => println!("  second open: {e}"),
            Err(e) => return Err(format!("wrong error for a bound group: {e:?}")),
            Ok(_) => return Err("a second listener could bind the same group".into()),
        }
        Log::open(&LogConfig::new(12)).map_err(|e| format!("group 12: {e}"))?;
        drop(first);
        Log::open(&LogConfig::new(11)).map_err(|e| format!("rebinding after close: {e}"))?;
        Ok(())
    });
    join(h)
}

/// The `nflog_count` example (built by `cargo test` next to this test's
/// binary) counts what it reads and prints its totals on SIGTERM.
fn example_counts(exe: &std::path::Path) -> Result<(), Failed> {
    const N: usize = 10;
    let mut lab = pair()?;
    nft(
        &lab,
        "b",
        "add table inet pcnflog\n\
         add chain inet pcnflog in { type filter hook input priority 0; }\n\
         add rule inet pcnflog in udp dport 9999 counter log group 4 queue-threshold 8\n",
    )?;
    let out = std::env::temp_dir().join(format!("pcnflog-count-{}.log", std::process::id()));
    let pid = lab.spawn("b", &exe.to_string_lossy(), &["4", "--secs", "20"], &out)?;
    let bound = portcullis_testnet::wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| t.contains("bound group 4"))
    });
    let result = (|| -> Result<String, Failed> {
        bound.ok_or("the example did not bind group 4")?;
        udp_flows(&lab, false, N)?;
        thread::sleep(Duration::from_millis(1200));
        let code = lab.stop(pid, Duration::from_secs(5))?;
        check(code == Some(0), || format!("exit code {code:?}"))?;
        Ok(std::fs::read_to_string(&out).map_err(|e| e.to_string())?)
    })();
    let _ = std::fs::remove_file(&out);
    let text = result?;
    println!("  {}", text.trim().replace('\n', "\n  "));
    check(
        text.contains(&format!("total received {N} lost 0 overruns 0 malformed 0")),
        || format!("unexpected output: {text}"),
    )?;
    Ok(())
}

/// One reader, the default configuration (copy 256, qthresh 64, 8 MiB
/// buffer), every packet of a 64-byte UDP flood logged: how many packets
/// per second it takes, and every one accounted for.
fn throughput() -> Result<(), Failed> {
    const N: u32 = 200_000;
    // Two senders offer more than one (~230k/s against ~170k/s here).
    const SENDERS: u32 = 2;
    let lab = pair()?;
    nft(
        &lab,
        "b",
        "add table inet pcnflog\n\
         add chain inet pcnflog in { type filter hook input priority 0; }\n\
         add rule inet pcnflog in udp dport 9999 counter log group 9\n",
    )?;
    let cfg = LogConfig::new(9);
    let reader = Reader::start(&lab, "b", cfg.clone(), false)?;
    let (sent, elapsed) = udp_flood(&lab, N, 64, SENDERS)?;
    thread::sleep(Duration::from_millis(300));
    // A marker after the flood makes losses at its tail visible.
    udp_flows(&lab, false, 1)?;
    let r = reader.finish(Duration::from_millis(10 * u64::from(cfg.timeout)))?;
    let counted = rule_counter(&lab, "b")?;
    let s = &r.stats;
    // The flood's packets: from the first batch to the last one before the
    // marker (which arrives alone, 300 ms later).
    let flood = match r.batches.as_slice() {
        [first, .., before_marker, marker] if marker.1 == before_marker.1 + 1 => {
            Some((before_marker.0.duration_since(first.0), before_marker.1))
        }
        _ => None,
    };
    let (span, flood_received) = flood.ok_or("the marker did not arrive alone after the flood")?;
    let offered = f64::from(sent) / elapsed.as_secs_f64();
    let taken = flood_received as f64 / span.as_secs_f64().max(1e-6);
    println!(
        "  offered {sent} in {elapsed:?} ({offered:.0}/s); rule logged {counted}; reader took \
         {flood_received} of the flood in {span:?} ({taken:.0} packets/s), lost {}, overruns {}, {} datagrams (max {} \
         packets, mean {:.1}), rcvbuf {} B; reader CPU {:?} ({:.0} packets per CPU-second)",
        s.lost,
        s.overruns,
        s.datagrams,
        s.max_per_datagram,
        s.received as f64 / (s.datagrams.max(1)) as f64,
        r.rcvbuf,
        r.cpu,
        s.received as f64 / r.cpu.as_secs_f64().max(1e-6),
    );
    check(r.count == s.received, || {
        "callback count != received".into()
    })?;
    check(s.received + s.lost + s.malformed == counted, || {
        format!("received + lost + malformed != rule counter {counted}: {s:?}")
    })?;
    check(s.received > u64::from(sent) / 2, || {
        format!("the reader took less than half: {s:?}")
    })?;
    check(s.max_per_datagram > 1, || format!("no batching: {s:?}"))?;
    Ok(())
}
