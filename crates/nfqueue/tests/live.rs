//! Live NFQUEUE tests in network namespaces the tests create
//! (`portcullis_testnet::Lab`, removed on drop, also on failure).
//!
//! They need root. Run with a custom harness (libtest-mimic) so that, when
//! they cannot run, each reports itself **ignored with the reason** instead
//! of passing; the summary line counts them as ignored. They run one at a
//! time (the throughput test measures).
//!
//! Every flood is bounded: at most 200,000 packets and 10 s per sender.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use portcullis_nfqueue::{
    queue_stats, Hook, NfqError, Packet, Queue, QueueConfig, QueueCounters, QueueStats, Verdict,
};
use portcullis_testnet::{check, enter, join, Lab};

const PORT: u16 = 9999;
const MAX_PACKETS: u32 = 200_000;
const MAX_SEND_TIME: Duration = Duration::from_secs(10);
/// Packets that carried NFQA_TIMESTAMP in `accept_drop_mark`.
static TIMESTAMPED: AtomicU64 = AtomicU64::new(0);

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    // SO_TIMESTAMP (which a queue sets) switches kernel timestamping on
    // host-wide, but the kernel does it from a work queue a moment later:
    // packets sent right after the first queue opens can carry none. Switch
    // it on here, before any test counts timestamps, and keep it on. A
    // local socket that never sends anything.
    let _stamps = std::net::UdpSocket::bind("127.0.0.1:0").inspect(|s| {
        let _ = nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::ReceiveTimestamp, &true);
    });
    let tests = vec![
        live("accept_drop_mark_ipv4", || accept_drop_mark(false)),
        live("accept_drop_mark_ipv6", || accept_drop_mark(true)),
        live("batches_form_under_load", batches_under_load),
        live("bypass_when_listener_gone", bypass_when_listener_gone),
        live("second_listener_is_refused", second_listener_refused),
        live("try_recv_batch_spins_only_when_asked", try_recv_spin),
        live("fail_open_when_queue_full", fail_open_when_full),
        live("gso_super_packets_arrive_whole", gso_super_packets),
        live("throughput_batched_vs_single", throughput),
    ];
    libtest_mimic::run(&args, tests).exit();
}

/// What these tests need.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("nft", "nftables"),
];

fn live(name: &str, f: fn() -> Result<(), Failed>) -> Trial {
    portcullis_testnet::live_trial(name, TOOLS, f)
}

// ---- helpers -------------------------------------------------------------

const A4: &str = "198.18.0.1";
const B4: &str = "198.18.0.2";
const A6: &str = "2001:2::1";
const B6: &str = "2001:2::2";

/// Namespaces `a` (198.18.0.1, 2001:2::1), which sends, and `b`
/// (198.18.0.2, 2001:2::2), which queues and receives on [`B_IF`].
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

/// Interface index of `dev` in namespace `short`.
fn ifindex(lab: &Lab, short: &str, dev: &str) -> Result<u32, Failed> {
    let out = lab.exec(short, "ip", &["-o", "link", "show", dev])?;
    out.split(':')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("no ifindex in {out:?}").into())
}

fn iptables(v6: bool) -> &'static str {
    if v6 {
        "ip6tables"
    } else {
        "iptables"
    }
}

/// `-I INPUT -p udp --dport 9999 -j NFQUEUE --queue-num N [--queue-bypass]` in `ns`.
fn add_queue_rule(lab: &Lab, ns: &str, v6: bool, num: u16, bypass: bool) -> Result<(), Failed> {
    let num = num.to_string();
    let mut args = vec![
        "-I",
        "INPUT",
        "-p",
        "udp",
        "--dport",
        "9999",
        "-j",
        "NFQUEUE",
        "--queue-num",
        &num,
    ];
    if bypass {
        args.push("--queue-bypass");
    }
    lab.exec(ns, iptables(v6), &args)?;
    Ok(())
}

fn flush_rules(lab: &Lab, ns: &str, v6: bool) -> Result<(), Failed> {
    lab.exec(ns, iptables(v6), &["-F", "INPUT"])?;
    Ok(())
}

/// An nft chain after iptables' filter table counting port-9999 packets with `mark`.
fn add_mark_counter(lab: &Lab, ns: &str, mark: u32) -> Result<(), Failed> {
    let script = format!(
        "add table inet pcqtest\n\
         add chain inet pcqtest in {{ type filter hook input priority 10; }}\n\
         add rule inet pcqtest in udp dport 9999 meta mark {mark:#x} counter\n"
    );
    let path = std::env::temp_dir().join(format!("pcqtest-{}.nft", std::process::id()));
    std::fs::write(&path, script).map_err(|e| e.to_string())?;
    let r = lab.exec(ns, "nft", &["-f", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    r.map(|_| ()).map_err(Failed::from)
}

fn mark_count(lab: &Lab, ns: &str) -> Result<u64, Failed> {
    let out = lab.exec(ns, "nft", &["list", "chain", "inet", "pcqtest", "in"])?;
    let after = out
        .split("counter packets ")
        .nth(1)
        .ok_or("no counter in nft output")?;
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("bad counter in {out:?}").into())
}

/// UDP payload: a big-endian sequence number, padded.
fn seq_of_udp(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(..4)?.try_into().ok()?))
}

/// The UDP payload of an IPv4/IPv6 packet without extension headers.
fn udp_payload(ip: &[u8]) -> Option<&[u8]> {
    let l4 = match ip.first()? >> 4 {
        4 => usize::from(ip[0] & 0x0f) * 4,
        6 => 40,
        _ => return None,
    };
    ip.get(l4 + 8..)
}

struct RecvOut {
    seqs: Vec<u32>,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// A UDP socket on port 9999 in a namespace, counting sequence numbers.
struct Receiver {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<RecvOut, String>>,
}

impl Receiver {
    fn start(lab: &Lab, ns: &str, v6: bool) -> Result<Self, Failed> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let name = lab.ns(ns);
        let stop2 = stop.clone();
        let handle = thread::spawn(move || -> Result<RecvOut, String> {
            enter(&name)?;
            let addr: SocketAddr = if v6 { "[::]:9999" } else { "0.0.0.0:9999" }
                .parse()
                .map_err(|e| format!("{e}"))?;
            let sock = UdpSocket::bind(addr).map_err(|e| format!("bind receiver: {e}"))?;
            let _ = nix::sys::socket::setsockopt(
                &sock,
                nix::sys::socket::sockopt::RcvBufForce,
                &(32 << 20),
            );
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(|e| e.to_string())?;
            let _ = tx.send(());
            let mut out = RecvOut {
                seqs: Vec::new(),
                first: None,
                last: None,
            };
            let mut buf = [0u8; 2048];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => {
                        let now = Instant::now();
                        out.first.get_or_insert(now);
                        out.last = Some(now);
                        if let Some(s) = seq_of_udp(&buf[..n]) {
                            out.seqs.push(s);
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        // Stop once asked and nothing arrived for 300 ms.
                        let idle = out
                            .last
                            .is_none_or(|l| l.elapsed() > Duration::from_millis(300));
                        if stop2.load(Ordering::Relaxed) && idle {
                            return Ok(out);
                        }
                    }
                    Err(e) => return Err(format!("recv: {e}")),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| "receiver did not start")?;
        Ok(Receiver { stop, handle })
    }

    fn finish(self) -> Result<RecvOut, Failed> {
        // Give packets in flight (and queued ones) time to arrive.
        thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        join(self.handle)
    }
}

struct SendOut {
    sent: u32,
    elapsed: Duration,
}

/// Send `count` UDP packets (sequence numbers from `first_seq`, `size`-byte
/// payload) from `ns` to b:9999, as fast as possible, within 10 s.
fn send(
    lab: &Lab,
    ns: &str,
    v6: bool,
    first_seq: u32,
    count: u32,
    size: usize,
) -> Result<SendOut, Failed> {
    let count = count.min(MAX_PACKETS);
    let name = lab.ns(ns);
    let h = thread::spawn(move || -> Result<SendOut, String> {
        enter(&name)?;
        let (local, dst) = if v6 {
            (format!("[{A6}]:0"), format!("[{B6}]:{PORT}"))
        } else {
            (format!("{A4}:0"), format!("{B4}:{PORT}"))
        };
        let sock = UdpSocket::bind(local.as_str()).map_err(|e| format!("bind sender: {e}"))?;
        sock.connect(dst.as_str())
            .map_err(|e| format!("connect: {e}"))?;
        let mut payload = vec![0u8; size.max(4)];
        let start = Instant::now();
        let mut sent = 0;
        while sent < count && start.elapsed() < MAX_SEND_TIME {
            payload[..4].copy_from_slice(&(first_seq + sent).to_be_bytes());
            match sock.send(&payload) {
                Ok(_) => sent += 1,
                // ENOBUFS / EAGAIN under load: let the receiver side catch up.
                Err(e)
                    if e.raw_os_error() == Some(105) || e.kind() == io::ErrorKind::WouldBlock =>
                {
                    thread::yield_now()
                }
                Err(e) => return Err(format!("send: {e}")),
            }
        }
        Ok(SendOut {
            sent,
            elapsed: start.elapsed(),
        })
    });
    join(h)
}

struct ConsumerOut {
    counters: QueueCounters,
    stats: Option<QueueStats>,
    portid: u32,
}

type Decide = Box<dyn FnMut(&Packet<'_>) -> (Verdict, Option<u32>) + Send>;

/// A queue listener in `ns` running `decide` on every packet.
struct Consumer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<ConsumerOut, String>>,
}

impl Consumer {
    fn start(lab: &Lab, ns: &str, cfg: QueueConfig, mut decide: Decide) -> Result<Self, Failed> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Result<u32, String>>();
        let name = lab.ns(ns);
        let stop2 = stop.clone();
        let handle = thread::spawn(move || -> Result<ConsumerOut, String> {
            let setup = enter(&name).and_then(|()| Queue::open(&cfg).map_err(|e| e.to_string()));
            let mut q = match setup {
                Ok(q) => q,
                Err(e) => {
                    let _ = tx.send(Err(e.clone()));
                    return Err(e);
                }
            };
            let _ = tx.send(Ok(q.portid()));
            loop {
                let n = q
                    .recv_batch(Some(Duration::from_millis(100)))
                    .map_err(|e| e.to_string())?;
                if n == 0 {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
                q.decide_each(&mut decide);
                q.flush().map_err(|e| e.to_string())?;
            }
            let stats = queue_stats()
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|s| s.queue_number == cfg.num);
            Ok(ConsumerOut {
                counters: q.counters().clone(),
                stats,
                portid: q.portid(),
            })
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(_)) => Ok(Consumer { stop, handle }),
            Ok(Err(e)) => Err(format!("opening the queue failed: {e}").into()),
            Err(_) => Err("the queue listener did not start".into()),
        }
    }

    fn finish(self) -> Result<ConsumerOut, Failed> {
        self.stop.store(true, Ordering::Relaxed);
        join(self.handle)
    }
}

// ---- tests ---------------------------------------------------------------

/// Even sequence numbers are accepted with mark 0x2a, odd ones dropped: the
/// receiver sees exactly the even ones, a later nft chain sees the mark, and
/// the packet metadata is right.
fn accept_drop_mark(v6: bool) -> Result<(), Failed> {
    const N: u32 = 200;
    const MARK: u32 = 0x2a;
    let lab = pair()?;
    let ifindex = ifindex(&lab, "b", B_IF)?;
    add_queue_rule(&lab, "b", v6, 7, true)?;
    add_mark_counter(&lab, "b", MARK)?;

    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let probs = problems.clone();
    let want_dst: IpAddr = if v6 { B6 } else { B4 }
        .parse()
        .unwrap_or(IpAddr::from([198, 18, 0, 2]));
    let decide: Decide = Box::new(move |p: &Packet<'_>| {
        let mut bad = Vec::new();
        let (family, proto) = if v6 { (10, 0x86dd) } else { (2, 0x0800) };
        if p.hook != Hook::Input || p.family != family || p.hw_protocol != proto {
            bad.push(format!(
                "hook/family/proto {:?}/{}/{:#x}",
                p.hook, p.family, p.hw_protocol
            ));
        }
        if p.indev != Some(ifindex) || p.outdev.is_some() {
            bad.push(format!(
                "indev {:?} outdev {:?}, want Some({ifindex})/None",
                p.indev, p.outdev
            ));
        }
        let dst_ok = match want_dst {
            IpAddr::V4(a) => p.payload.get(16..20) == Some(&a.octets()[..]),
            IpAddr::V6(a) => p.payload.get(24..40) == Some(&a.octets()[..]),
        };
        if !dst_ok || p.is_gso || p.original_len as usize != p.payload.len() || p.mark != 0 {
            bad.push(format!("payload/gso/len/mark wrong: {p:?}"));
        }
        if let Some(ts) = p.timestamp_micros {
            TIMESTAMPED.fetch_add(1, Ordering::Relaxed);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            if now.abs_diff(ts) > 60_000_000 {
                bad.push(format!("timestamp {ts} is far from now {now}"));
            }
        }
        if !bad.is_empty() {
            if let Ok(mut v) = probs.lock() {
                v.extend(bad);
            }
        }
        match udp_payload(p.payload).and_then(seq_of_udp) {
            Some(s) if s % 2 == 0 => (Verdict::Accept, Some(MARK)),
            _ => (Verdict::Drop, None),
        }
    });

    let consumer = Consumer::start(&lab, "b", QueueConfig::new(7), decide)?;
    let receiver = Receiver::start(&lab, "b", v6)?;
    let s = send(&lab, "a", v6, 0, N, 32)?;
    let r = receiver.finish()?;
    let c = consumer.finish()?;

    let mut seqs = r.seqs.clone();
    seqs.sort_unstable();
    let want: Vec<u32> = (0..N).filter(|s| s % 2 == 0).collect();
    let problems = problems.lock().map(|v| v.clone()).unwrap_or_default();
    println!(
        "  sent {}, received {}, with timestamp {}, queue counters {:?}, kernel stats {:?}",
        s.sent,
        seqs.len(),
        TIMESTAMPED.load(Ordering::Relaxed),
        c.counters,
        c.stats
    );
    let stamped = TIMESTAMPED.swap(0, Ordering::Relaxed);
    check(stamped == u64::from(N), || {
        format!("{stamped} of {N} packets had NFQA_TIMESTAMP")
    })?;
    check(problems.is_empty(), || {
        format!(
            "metadata problems: {:?}",
            &problems[..problems.len().min(5)]
        )
    })?;
    check(seqs == want, || {
        format!(
            "received {:?}.., want the {} even seqs",
            &seqs[..seqs.len().min(10)],
            want.len()
        )
    })?;
    check(c.counters.packets == u64::from(N), || {
        format!("queue saw {} packets, want {N}", c.counters.packets)
    })?;
    let marked = mark_count(&lab, "b")?;
    check(marked == u64::from(N / 2), || {
        format!(
            "{marked} packets carried mark {MARK:#x} after the queue, want {}",
            N / 2
        )
    })?;
    let st = c
        .stats
        .ok_or("queue 7 missing from /proc/.../nfnetlink_queue")?;
    check(
        st.peer_portid == c.portid
            && st.copy_mode == 2
            && st.id_sequence == N
            && st.queue_total == 0,
        || format!("unexpected kernel stats {st:?} (our portid {})", c.portid),
    )?;
    Ok(())
}

/// Under a burst the consumer reads several packets per batch and folds
/// their verdicts into batch messages; nothing is lost.
fn batches_under_load() -> Result<(), Failed> {
    const N: u32 = 20_000;
    let lab = pair()?;
    add_queue_rule(&lab, "b", false, 3, true)?;
    let consumer = Consumer::start(
        &lab,
        "b",
        QueueConfig::new(3),
        Box::new(|_| (Verdict::Accept, None)),
    )?;
    let receiver = Receiver::start(&lab, "b", false)?;
    let s = send(&lab, "a", false, 0, N, 32)?;
    let r = receiver.finish()?;
    let c = consumer.finish()?;
    println!(
        "  sent {} in {:?}, received {}, counters {:?}, stats {:?}",
        s.sent,
        s.elapsed,
        r.seqs.len(),
        c.counters,
        c.stats
    );
    check(r.seqs.len() == N as usize, || {
        format!("received {} of {N}", r.seqs.len())
    })?;
    check(c.counters.max_batch > 1, || {
        format!("no batch larger than 1: {:?}", c.counters)
    })?;
    check(c.counters.batch_verdict_msgs > 0, || {
        "no NFQNL_MSG_VERDICT_BATCH was sent".into()
    })?;
    check(c.counters.sends < c.counters.packets, || {
        format!("not fewer sends than packets: {:?}", c.counters)
    })?;
    Ok(())
}

/// With `--queue-bypass`, traffic flows when nobody listens (before the
/// daemon starts and after it is gone); without it, it is dropped.
fn bypass_when_listener_gone() -> Result<(), Failed> {
    const N: u32 = 20;
    let lab = pair()?;
    add_queue_rule(&lab, "b", false, 5, true)?;

    let phase = |first: u32| -> Result<usize, Failed> {
        let receiver = Receiver::start(&lab, "b", false)?;
        send(&lab, "a", false, first, N, 16)?;
        Ok(receiver.finish()?.seqs.len())
    };
    let before = phase(0)?;
    let consumer = Consumer::start(
        &lab,
        "b",
        QueueConfig::new(5),
        Box::new(|_| (Verdict::Accept, None)),
    )?;
    let during = phase(100)?;
    let c = consumer.finish()?; // the listener is gone: socket closed
    let after = phase(200)?;

    flush_rules(&lab, "b", false)?;
    add_queue_rule(&lab, "b", false, 5, false)?;
    let no_bypass = phase(300)?;
    println!("  received: no listener {before}, listening {during} (queued {}), gone {after}, gone without bypass {no_bypass}", c.counters.packets);
    check(
        before == N as usize && during == N as usize && after == N as usize,
        || format!("with --queue-bypass expected {N} each time, got {before}/{during}/{after}"),
    )?;
    check(c.counters.packets == u64::from(N), || {
        format!("the listener saw {} packets, want {N}", c.counters.packets)
    })?;
    check(no_bypass == 0, || {
        format!("without --queue-bypass and no listener {no_bypass} packets passed")
    })?;
    Ok(())
}

/// A second socket cannot bind a bound queue; the error names the owner.
fn second_listener_refused() -> Result<(), Failed> {
    let mut lab = Lab::new();
    let name = lab.add_ns("q")?;
    let h = thread::spawn(move || -> Result<(), String> {
        enter(&name)?;
        let first = Queue::open(&QueueConfig::new(11)).map_err(|e| format!("first open: {e}"))?;
        match Queue::open(&QueueConfig::new(11)) {
            Err(NfqError::QueueInUse {
                queue: 11,
                portid: Some(p),
            }) if p == first.portid() => {
                println!(
                    "  second open: {}",
                    NfqError::QueueInUse {
                        queue: 11,
                        portid: Some(p)
                    }
                );
            }
            Err(e) => return Err(format!("wrong error for a bound queue: {e:?}")),
            Ok(_) => return Err("a second listener could bind the same queue".into()),
        }
        // Another queue number is free.
        Queue::open(&QueueConfig::new(12)).map_err(|e| format!("queue 12: {e}"))?;
        // After the first closes, the queue can be bound again.
        drop(first);
        Queue::open(&QueueConfig::new(11)).map_err(|e| format!("rebinding after close: {e}"))?;
        Ok(())
    });
    join(h)
}

/// `try_recv_batch` never sleeps: on an idle queue it returns at once
/// unless asked to spin, and then only for `cfg.spin`; a queued packet is
/// returned either way.
fn try_recv_spin() -> Result<(), Failed> {
    const SPIN: Duration = Duration::from_millis(300);
    let lab = pair()?;
    add_queue_rule(&lab, "b", false, 13, true)?;
    let name = lab.ns("b");
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let h = thread::spawn(move || -> Result<(), String> {
        enter(&name)?;
        let mut cfg = QueueConfig::new(13);
        cfg.spin = SPIN;
        let mut q = Queue::open(&cfg).map_err(|e| format!("open: {e}"))?;
        let t = Instant::now();
        let n = q.try_recv_batch(false).map_err(|e| e.to_string())?;
        let idle = t.elapsed();
        let t = Instant::now();
        let m = q.try_recv_batch(true).map_err(|e| e.to_string())?;
        let spun = t.elapsed();
        println!("  idle queue: without spin {n} packets in {idle:?}, with spin {m} in {spun:?}");
        if n != 0 || m != 0 {
            return Err(format!("packets on an idle queue: {n}, {m}"));
        }
        if idle >= SPIN / 3 {
            return Err(format!("an idle read without spin took {idle:?}"));
        }
        if spun < SPIN {
            return Err(format!("the spin ended after {spun:?}, before {SPIN:?}"));
        }
        ready_tx.send(()).map_err(|e| e.to_string())?;
        sent_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|e| format!("the sender: {e}"))?;
        // The packet is queued by now (the sender's send returned after
        // the input hook ran); no spin needed to find it.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if q.try_recv_batch(false).map_err(|e| e.to_string())? == 1 {
                break;
            }
            if Instant::now() >= deadline {
                return Err("the queued packet was not returned".into());
            }
            thread::sleep(Duration::from_millis(10));
        }
        q.decide_each(|_| (Verdict::Accept, None));
        q.flush().map_err(|e| e.to_string())?;
        Ok(())
    });
    if ready_rx.recv_timeout(Duration::from_secs(10)).is_err() {
        // The thread's own error says why.
        return join(h).and(Err("the queue thread stopped early".into()));
    }
    let s = send(&lab, "a", false, 0, 1, 32)?;
    check(s.sent == 1, || "the packet was not sent".into())?;
    sent_tx.send(()).map_err(|e| e.to_string())?;
    join(h)
}

/// With `max_len` 16 and a listener that does not read: fail-open lets the
/// overflow through; without fail-open the kernel drops and counts it.
fn fail_open_when_full() -> Result<(), Failed> {
    const N: u32 = 100;
    const LEN: u32 = 16;
    let lab = pair()?;
    add_queue_rule(&lab, "b", false, 9, true)?;
    let mut results = Vec::new();
    for fail_open in [true, false] {
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let name = lab.ns("b");
        let h = thread::spawn(move || -> Result<(u64, Option<QueueStats>), String> {
            enter(&name)?;
            let cfg = QueueConfig {
                max_len: LEN,
                fail_open,
                ..QueueConfig::new(9)
            };
            let mut q = Queue::open(&cfg).map_err(|e| e.to_string())?;
            let _ = ready_tx.send(());
            // Read nothing until all packets were sent.
            go_rx
                .recv_timeout(Duration::from_secs(20))
                .map_err(|_| "no go")?;
            let stats = queue_stats()
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|s| s.queue_number == 9);
            while q
                .recv_batch(Some(Duration::from_millis(200)))
                .map_err(|e| e.to_string())?
                > 0
            {
                q.decide_each(|_| (Verdict::Accept, None));
                q.flush().map_err(|e| e.to_string())?;
            }
            Ok((q.counters().packets, stats))
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "listener did not start")?;
        let receiver = Receiver::start(&lab, "b", false)?;
        send(&lab, "a", false, 0, N, 16)?;
        thread::sleep(Duration::from_millis(100));
        let _ = go_tx.send(());
        let (queued, stats) = join(h)?;
        let received = receiver.finish()?.seqs.len();
        println!("  fail_open={fail_open}: queued {queued}, received {received}, stats while full {stats:?}");
        results.push((fail_open, queued, received, stats));
    }
    for (fail_open, queued, received, stats) in results {
        let st = stats.ok_or("no stats")?;
        check(queued == u64::from(LEN), || {
            format!("fail_open={fail_open}: queued {queued}, want {LEN}")
        })?;
        if fail_open {
            check(received == N as usize && st.queue_dropped == 0, || {
                format!("fail-open: received {received} of {N}, {st:?}")
            })?;
        } else {
            check(
                received == LEN as usize && st.queue_dropped == N - LEN,
                || {
                    format!(
                        "fail-closed: received {received} (want {LEN}), queue_dropped {} (want {})",
                        st.queue_dropped,
                        N - LEN
                    )
                },
            )?;
        }
    }
    Ok(())
}

/// Packets per second through the queue for 64-byte IPv4 packets (36-byte
/// UDP payload): batched verdicts vs one send per verdict, and no queue.
/// Fail-open is off so that overload shows up as kernel drops.
fn throughput() -> Result<(), Failed> {
    const N: u32 = MAX_PACKETS;
    const PAYLOAD: usize = 36;
    let lab = pair()?;
    println!();
    println!(
        "  {:<28} {:>8} {:>12} {:>9} {:>13} {:>9} {:>8} {:>8} {:>9}",
        "mode",
        "sent",
        "offered pps",
        "received",
        "delivered pps",
        "q_drop",
        "u_drop",
        "enobufs",
        "max_batch"
    );
    let mut rows = Vec::new();
    for (label, batch) in [
        ("no queue rule", 0usize),
        ("batch 64, one send/batch", 64),
        ("one send per verdict", 1),
    ] {
        flush_rules(&lab, "b", false)?;
        let consumer = if batch > 0 {
            add_queue_rule(&lab, "b", false, 1, true)?;
            let cfg = QueueConfig {
                batch,
                fail_open: false,
                ..QueueConfig::new(1)
            };
            Some(Consumer::start(
                &lab,
                "b",
                cfg,
                Box::new(|_| (Verdict::Accept, None)),
            )?)
        } else {
            None
        };
        let receiver = Receiver::start(&lab, "b", false)?;
        let s = send(&lab, "a", false, 0, N, PAYLOAD)?;
        let r = receiver.finish()?;
        let c = consumer.map(Consumer::finish).transpose()?;
        let span = match (r.first, r.last) {
            (Some(f), Some(l)) if l > f => l - f,
            _ => Duration::from_millis(1),
        };
        let offered = f64::from(s.sent) / s.elapsed.as_secs_f64();
        let delivered = r.seqs.len() as f64 / span.as_secs_f64();
        let (qd, ud, enobufs, max_batch) = match &c {
            Some(c) => (
                c.stats.map_or(0, |s| s.queue_dropped),
                c.stats.map_or(0, |s| s.user_dropped),
                c.counters.enobufs,
                c.counters.max_batch,
            ),
            None => (0, 0, 0, 0),
        };
        println!(
            "  {label:<28} {:>8} {:>12.0} {:>9} {:>13.0} {qd:>9} {ud:>8} {enobufs:>8} {max_batch:>9}",
            s.sent,
            offered,
            r.seqs.len(),
            delivered
        );
        rows.push((label, s.sent, r.seqs.len()));
    }
    for (label, sent, received) in rows {
        check(received > 0, || {
            format!("{label}: nothing received of {sent}")
        })?;
    }
    Ok(())
}

/// TCP through the queue: with `gso` on, super-packets larger than the MTU
/// arrive whole and flagged; with it off, the kernel segments them first.
/// Every byte arrives either way.
fn gso_super_packets() -> Result<(), Failed> {
    const BYTES: usize = 4 << 20;
    let lab = pair()?;
    lab.exec(
        "b",
        "iptables",
        &[
            "-I",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "9998",
            "-j",
            "NFQUEUE",
            "--queue-num",
            "4",
            "--queue-bypass",
        ],
    )?;
    for gso in [true, false] {
        let gso_packets = Arc::new(AtomicU64::new(0));
        let max_len = Arc::new(AtomicUsize::new(0));
        let (g, m) = (gso_packets.clone(), max_len.clone());
        let decide: Decide = Box::new(move |p: &Packet<'_>| {
            if p.is_gso {
                g.fetch_add(1, Ordering::Relaxed);
            }
            m.fetch_max(p.payload.len(), Ordering::Relaxed);
            (Verdict::Accept, None)
        });
        let consumer = Consumer::start(
            &lab,
            "b",
            QueueConfig {
                gso,
                ..QueueConfig::new(4)
            },
            decide,
        )?;

        let (tx, rx) = mpsc::channel();
        let name = lab.ns("b");
        let server = thread::spawn(move || -> Result<usize, String> {
            enter(&name)?;
            let l = TcpListener::bind((B4, 9998)).map_err(|e| format!("listen: {e}"))?;
            let _ = tx.send(());
            let (mut c, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0;
            loop {
                match c.read(&mut buf) {
                    Ok(0) => return Ok(total),
                    Ok(n) => total += n,
                    Err(e) => return Err(format!("read after {total} bytes: {e}")),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| "server did not start")?;
        let name = lab.ns("a");
        let client = thread::spawn(move || -> Result<(), String> {
            enter(&name)?;
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::from(([198, 18, 0, 2], 9998)),
                Duration::from_secs(5),
            )
            .map_err(|e| format!("connect: {e}"))?;
            s.set_write_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let chunk = vec![0x5au8; 1 << 16];
            for _ in 0..BYTES / chunk.len() {
                s.write_all(&chunk).map_err(|e| format!("write: {e}"))?;
            }
            Ok(())
        });
        join(client)?;
        let got = join(server)?;
        let c = consumer.finish()?;
        let (gp, ml) = (
            gso_packets.load(Ordering::Relaxed),
            max_len.load(Ordering::Relaxed),
        );
        println!(
            "  gso={gso}: {got} bytes through, {} packets queued, {gp} GSO, largest payload {ml}",
            c.counters.packets
        );
        check(got == BYTES, || {
            format!("gso={gso}: {got} of {BYTES} bytes arrived")
        })?;
        if gso {
            check(gp > 0 && ml > 1500, || {
                format!("no GSO super-packets seen (gso {gp}, largest {ml})")
            })?;
        } else {
            check(gp == 0 && ml <= 1500, || {
                format!("gso off but gso {gp}, largest {ml}")
            })?;
        }
    }
    Ok(())
}
