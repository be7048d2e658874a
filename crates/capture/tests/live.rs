//! Live tests of `LiveCapture` in network namespaces the tests create
//! (`portcullis_testnet::Lab`, removed on drop, also on failure).
//!
//! They need root. A custom harness (libtest-mimic) makes each report
//! itself **ignored with the reason** when it cannot run. The capture runs
//! on a thread that entered a test namespace; traffic is a fixed number of
//! pings and UDP datagrams between test namespaces (198.18.0.0/15,
//! 2001:2:0:N::/64), each burst bounded in count and time. No firewall is
//! touched.

use std::net::{IpAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libtest_mimic::{Arguments, Failed, Trial};
use portcullis_capture::live::{CaptureDirection, IfaceStats, LiveCapture, LiveOptions, ANY};
use portcullis_capture::CaptureError;
use portcullis_testnet::{enter, join, Lab};
use portcullis_wire::Direction;
use portcullis_wire::{decode, IpProto, LinkType, PacketSummary};

/// Set in the environment of this binary run as a child without
/// CAP_NET_RAW: it opens a capture on that interface and prints the result.
const CHILD_ENV: &str = "PORTCULLIS_CAPTURE_OPEN_CHILD";

fn main() {
    if let Ok(iface) = std::env::var(CHILD_ENV) {
        let opts = LiveOptions {
            interfaces: vec![iface],
            ..LiveOptions::default()
        };
        match LiveCapture::open(&opts) {
            Ok(_) => println!("opened"),
            Err(e @ CaptureError::PermissionDenied { .. }) => println!("permission: {e}"),
            Err(e) => println!("other error: {e}"),
        }
        return;
    }
    let mut args = Arguments::from_args();
    // Timing and exact packet counts: one lab at a time.
    args.test_threads = Some(1);
    let tests = vec![
        live("veth_both_directions_ipv4_ipv6", both_directions),
        live("bpf_filter_keeps_udp_and_drops_icmp", bpf_udp_only),
        live("direction_in_sees_only_inbound", direction_in),
        live("two_interfaces_keep_their_packets_apart", two_interfaces),
        live("any_uses_cooked_v2_with_direction", any_cooked),
        live("block_mode_delivers_within_the_block_timeout", block_mode),
        live("without_cap_net_raw_the_error_says_so", permission_denied),
        live("a_removed_interface_is_an_error_naming_it", iface_removed),
    ];
    libtest_mimic::run(&args, tests).exit();
}

const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("setpriv", "util-linux"),
];

fn live(name: &str, f: fn() -> Result<(), Failed>) -> Trial {
    portcullis_testnet::live_trial(name, TOOLS, f)
}

// ---- lab -----------------------------------------------------------------

const A1: &str = "198.18.1.1";
const B1: &str = "198.18.1.2";
const A1V6: &str = "2001:2:0:1::1";
const B1V6: &str = "2001:2:0:1::2";
const A2: &str = "198.18.2.1";
const C2: &str = "198.18.2.3";

/// Namespaces `a` and `b` on veth `vab`/`vba` (198.18.1.0/24,
/// 2001:2:0:1::/64); with `c`, also `a`-`c` on `vac`/`vca`
/// (198.18.2.0/24, 2001:2:0:2::/64).
fn lab(with_c: bool) -> Result<Lab, Failed> {
    let mut lab = Lab::new();
    lab.add_ns("a")?;
    lab.add_ns("b")?;
    lab.link(
        "a",
        &[&format!("{A1}/24"), &format!("{A1V6}/64")],
        "b",
        &[&format!("{B1}/24"), &format!("{B1V6}/64")],
    )?;
    if with_c {
        lab.add_ns("c")?;
        lab.link(
            "a",
            &[&format!("{A2}/24"), "2001:2:0:2::1/64"],
            "c",
            &[&format!("{C2}/24"), "2001:2:0:2::3/64"],
        )?;
    }
    Ok(lab)
}

/// `count` pings from namespace `from` to `dst`, 100 ms apart (bounded: at
/// most `count` requests, 1 s wait for the last reply).
fn ping(lab: &Lab, from: &str, dst: &str, count: u32) -> Result<(), Failed> {
    let c = count.to_string();
    lab.exec(
        from,
        "ping",
        &["-n", "-q", "-c", &c, "-i", "0.1", "-W", "1", dst],
    )?;
    Ok(())
}

/// `count` UDP datagrams from namespace `ns` (source `src`) to `dst:port`,
/// 5 ms apart.
fn udp(lab: &Lab, ns: &str, src: &str, dst: &str, port: u16, count: usize) -> Result<(), Failed> {
    let name = lab.ns(ns);
    let (src, dst): (IpAddr, IpAddr) = (
        src.parse().map_err(|e| format!("{src}: {e}"))?,
        dst.parse().map_err(|e| format!("{dst}: {e}"))?,
    );
    let h = thread::spawn(move || -> Result<(), String> {
        enter(&name)?;
        let sock = UdpSocket::bind((src, 0)).map_err(|e| format!("bind {src}: {e}"))?;
        for i in 0..count {
            sock.send_to(format!("portcullis {i}").as_bytes(), (dst, port))
                .map_err(|e| format!("send to {dst}: {e}"))?;
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    });
    join(h)
}

// ---- capture thread ------------------------------------------------------

/// What the test keeps of each captured packet.
#[derive(Debug, Clone)]
struct Seen {
    iface: usize,
    link: LinkType,
    dir: Option<Direction>,
    ts_us: u64,
    caplen: usize,
    wire_len: u32,
    sum: Result<PacketSummary, String>,
}

impl Seen {
    fn is(&self, proto: IpProto, src: &str, dst: &str) -> bool {
        matches!(&self.sum, Ok(s) if s.proto == proto
            && s.src.to_string() == src
            && s.dst.to_string() == dst)
    }

    fn icmp_type(&self) -> Option<u8> {
        self.sum.as_ref().ok().and_then(|s| s.icmp).map(|(t, _)| t)
    }

    fn dst_port(&self) -> Option<u16> {
        self.sum.as_ref().ok().and_then(|s| s.dst_port)
    }
}

struct Capturer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    links: Vec<(String, LinkType)>,
    handle: JoinHandle<Result<Vec<IfaceStats>, String>>,
}

impl Capturer {
    /// Opens a capture in namespace `ns` (full name) and reads it on its own
    /// thread, 100 ms timeouts, until stopped.
    fn start(ns: String, opts: LiveOptions) -> Result<Self, Failed> {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<Result<Vec<(String, LinkType)>, String>>();
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let handle = thread::spawn(move || -> Result<Vec<IfaceStats>, String> {
            let setup =
                enter(&ns).and_then(|()| LiveCapture::open(&opts).map_err(|e| e.to_string()));
            let mut cap = match setup {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(e.clone()));
                    return Err(e);
                }
            };
            let _ = tx.send(Ok(cap
                .interfaces()
                .map(|(n, l)| (n.to_owned(), l))
                .collect()));
            let mut batch = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let n = cap
                    .next_batch(Duration::from_millis(100), &mut |p| {
                        batch.push(Seen {
                            iface: p.iface,
                            link: p.packet.link,
                            dir: p.dir,
                            ts_us: p.packet.ts.as_micros(),
                            caplen: p.packet.data.len(),
                            wire_len: p.wire_len,
                            sum: decode(p.packet.link, p.packet.data).map_err(|e| format!("{e:?}")),
                        });
                    })
                    .map_err(|e| e.to_string())?;
                if n > opts.max_batch {
                    return Err(format!("batch of {n} > max_batch {}", opts.max_batch));
                }
                if n != batch.len() {
                    return Err(format!("next_batch said {n}, callback ran {}", batch.len()));
                }
                seen2.lock().map_err(|_| "poisoned")?.append(&mut batch);
            }
            Ok(cap.stats())
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(links)) => Ok(Capturer {
                stop,
                seen,
                links,
                handle,
            }),
            Ok(Err(e)) => Err(format!("opening the capture failed: {e}").into()),
            Err(_) => Err("the capture thread did not start".into()),
        }
    }

    /// Waits (at most 3 s) until `done` holds for what was captured, then
    /// stops the thread: the packets and the final counters.
    fn finish(
        self,
        done: impl Fn(&[Seen]) -> bool,
    ) -> Result<(Vec<Seen>, Vec<IfaceStats>), Failed> {
        let seen = self.seen.clone();
        portcullis_testnet::wait_for(Duration::from_secs(3), || {
            let s = seen.lock().ok()?;
            done(&s).then_some(())
        });
        self.stop.store(true, Ordering::Relaxed);
        let stats = join(self.handle)?;
        let seen = self.seen.lock().map_err(|_| "poisoned")?.clone();
        Ok((seen, stats))
    }
}

fn opts(interfaces: &[&str]) -> LiveOptions {
    LiveOptions {
        interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
        // Small rings: a test namespace carries a handful of packets.
        buffer_size: 1 << 20,
        max_batch: 64,
        ..LiveOptions::default()
    }
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(msg().into())
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn count(seen: &[Seen], f: impl Fn(&Seen) -> bool) -> usize {
    seen.iter().filter(|s| f(s)).count()
}

fn summary(seen: &[Seen]) -> String {
    let lines: Vec<String> = seen
        .iter()
        .map(|s| match &s.sum {
            Ok(p) => format!(
                "if{} {:?} {:?} {:?} {} -> {} icmp {:?} dport {:?}",
                s.iface, s.link, s.dir, p.proto, p.src, p.dst, p.icmp, p.dst_port
            ),
            Err(e) => format!("if{} {:?} undecodable: {e}", s.iface, s.link),
        })
        .collect();
    lines.join("\n")
}

/// The counters agree with what was delivered, and nothing was dropped.
fn check_stats(stats: &[IfaceStats], seen: &[Seen], names: &[&str]) -> Result<(), Failed> {
    check(stats.len() == names.len(), || format!("stats {stats:?}"))?;
    for (i, (st, name)) in stats.iter().zip(names).enumerate() {
        let delivered = count(seen, |s| s.iface == i) as u64;
        check(
            st.name == *name
                && st.delivered == delivered
                && st.received >= delivered
                && st.dropped == 0,
            || format!("interface {i} ({name}): stats {st:?}, {delivered} delivered"),
        )?;
    }
    Ok(())
}

// ---- tests ---------------------------------------------------------------

const PORT: u16 = 40_001;

/// Pings and UDP (v4 and v6) from `b` to `a`, captured on `a`'s veth:
/// requests and replies (both directions), Ethernet, decodable, stamped now.
fn both_directions() -> Result<(), Failed> {
    let lab = lab(false)?;
    let cap = Capturer::start(lab.ns("a"), opts(&["vab"]))?;
    check(
        cap.links == [("vab".to_owned(), LinkType::Ethernet)],
        || format!("links {:?}", cap.links),
    )?;
    let t0 = now_us();
    ping(&lab, "b", A1, 3)?;
    udp(&lab, "b", B1, A1, PORT, 5)?;
    udp(&lab, "b", B1V6, A1V6, PORT, 5)?;
    let requests = |s: &Seen| s.is(IpProto::Icmp, B1, A1) && s.icmp_type() == Some(8);
    let replies = |s: &Seen| s.is(IpProto::Icmp, A1, B1) && s.icmp_type() == Some(0);
    let udp4 = |s: &Seen| s.is(IpProto::Udp, B1, A1) && s.dst_port() == Some(PORT);
    let udp6 = |s: &Seen| s.is(IpProto::Udp, B1V6, A1V6) && s.dst_port() == Some(PORT);
    let (seen, stats) = cap.finish(|s| {
        count(s, requests) >= 3
            && count(s, replies) >= 3
            && count(s, udp4) >= 5
            && count(s, udp6) >= 5
    })?;
    let t1 = now_us();
    let got = [
        count(&seen, requests),
        count(&seen, replies),
        count(&seen, udp4),
        count(&seen, udp6),
    ];
    check(got == [3, 3, 5, 5], || {
        format!("requests, replies, udp4, udp6: {got:?}\n{}", summary(&seen))
    })?;
    for s in &seen {
        // ARP (not IP) is the only other traffic on the link.
        check(
            s.iface == 0
                && s.link == LinkType::Ethernet
                && s.dir.is_none()
                && (s.sum.is_ok() || s.sum.as_ref().is_err_and(|e| e == "NotIp"))
                && s.caplen == s.wire_len as usize
                && (t0.saturating_sub(1_000_000)..=t1 + 1_000_000).contains(&s.ts_us),
            || format!("{s:?} (t0 {t0}, t1 {t1})"),
        )?;
    }
    check_stats(&stats, &seen, &["vab"])
}

/// `--bpf udp`: the UDP datagrams only; pings (and ICMP errors) filtered out
/// in the kernel.
fn bpf_udp_only() -> Result<(), Failed> {
    let lab = lab(false)?;
    let mut o = opts(&["vab"]);
    o.bpf = Some("udp".into());
    let cap = Capturer::start(lab.ns("a"), o)?;
    ping(&lab, "b", A1, 3)?;
    udp(&lab, "b", B1, A1, PORT, 5)?;
    udp(&lab, "b", B1V6, A1V6, PORT, 5)?;
    let udp4 = |s: &Seen| s.is(IpProto::Udp, B1, A1) && s.dst_port() == Some(PORT);
    let udp6 = |s: &Seen| s.is(IpProto::Udp, B1V6, A1V6) && s.dst_port() == Some(PORT);
    let (seen, stats) = cap.finish(|s| count(s, udp4) >= 5 && count(s, udp6) >= 5)?;
    check(
        count(&seen, udp4) == 5 && count(&seen, udp6) == 5 && seen.len() == 10,
        || format!("want exactly the 10 datagrams:\n{}", summary(&seen)),
    )?;
    check_stats(&stats, &seen, &["vab"])
}

/// Direction `In`: echo requests arrive, replies (outgoing) are not
/// captured, and every packet says Inbound.
fn direction_in() -> Result<(), Failed> {
    let lab = lab(false)?;
    let mut o = opts(&["vab"]);
    o.direction = CaptureDirection::In;
    o.bpf = Some("icmp".into());
    let cap = Capturer::start(lab.ns("a"), o)?;
    ping(&lab, "b", A1, 3)?;
    let requests = |s: &Seen| s.is(IpProto::Icmp, B1, A1) && s.icmp_type() == Some(8);
    // Give a reply time to show up if the direction were not applied.
    let (seen, _) = cap.finish(|s| count(s, requests) >= 3 && s.len() > 3)?;
    check(
        count(&seen, requests) == 3
            && seen.len() == 3
            && seen.iter().all(|s| s.dir == Some(Direction::Inbound)),
        || format!("want 3 inbound requests only:\n{}", summary(&seen)),
    )
}

/// Two interfaces in one capture: each packet carries the index of the
/// interface it came from; the counters are per interface.
fn two_interfaces() -> Result<(), Failed> {
    let lab = lab(true)?;
    let mut o = opts(&["vab", "vac"]);
    o.bpf = Some(format!("udp port {PORT}"));
    let cap = Capturer::start(lab.ns("a"), o)?;
    check(
        cap.links
            == [
                ("vab".to_owned(), LinkType::Ethernet),
                ("vac".to_owned(), LinkType::Ethernet),
            ],
        || format!("links {:?}", cap.links),
    )?;
    udp(&lab, "b", B1, A1, PORT, 4)?;
    udp(&lab, "c", C2, A2, PORT, 6)?;
    let from_b = |s: &Seen| s.is(IpProto::Udp, B1, A1);
    let from_c = |s: &Seen| s.is(IpProto::Udp, C2, A2);
    let (seen, stats) = cap.finish(|s| count(s, from_b) >= 4 && count(s, from_c) >= 6)?;
    check(
        seen.len() == 10
            && count(&seen, |s| from_b(s) && s.iface == 0) == 4
            && count(&seen, |s| from_c(s) && s.iface == 1) == 6,
        || format!("want 4 on vab (0), 6 on vac (1):\n{}", summary(&seen)),
    )?;
    check_stats(&stats, &seen, &["vab", "vac"])
}

/// `any`: Linux cooked v2 framing, whose packet type gives the direction of
/// requests (inbound) and replies (outbound).
fn any_cooked() -> Result<(), Failed> {
    let lab = lab(false)?;
    let mut o = opts(&[ANY]);
    o.bpf = Some("icmp".into());
    let cap = Capturer::start(lab.ns("a"), o)?;
    check(cap.links == [(ANY.to_owned(), LinkType::LinuxSll2)], || {
        format!("links {:?}", cap.links)
    })?;
    ping(&lab, "b", A1, 3)?;
    let requests = |s: &Seen| {
        s.is(IpProto::Icmp, B1, A1) && s.icmp_type() == Some(8) && s.dir == Some(Direction::Inbound)
    };
    let replies = |s: &Seen| {
        s.is(IpProto::Icmp, A1, B1)
            && s.icmp_type() == Some(0)
            && s.dir == Some(Direction::Outbound)
    };
    let (seen, stats) = cap.finish(|s| count(s, requests) >= 3 && count(s, replies) >= 3)?;
    check(
        count(&seen, requests) == 3 && count(&seen, replies) == 3 && seen.len() == 6,
        || {
            format!(
                "want 3 inbound requests, 3 outbound replies:\n{}",
                summary(&seen)
            )
        },
    )?;
    check_stats(&stats, &seen, &[ANY])
}

/// Without immediate mode (TPACKET_V3 blocks) a quiet link's packets still
/// arrive, within the block timeout.
fn block_mode() -> Result<(), Failed> {
    let lab = lab(false)?;
    let mut o = opts(&["vab"]);
    o.immediate = false;
    o.block_timeout = Duration::from_millis(20);
    o.bpf = Some(format!("udp port {PORT}"));
    let cap = Capturer::start(lab.ns("a"), o)?;
    udp(&lab, "b", B1, A1, PORT, 5)?;
    let udp4 = |s: &Seen| s.is(IpProto::Udp, B1, A1);
    let (seen, stats) = cap.finish(|s| count(s, udp4) >= 5)?;
    check(count(&seen, udp4) == 5 && seen.len() == 5, || {
        format!("want the 5 datagrams:\n{}", summary(&seen))
    })?;
    check_stats(&stats, &seen, &["vab"])
}

/// This binary, run without CAP_NET_RAW (bounding and inheritable sets)
/// inside a test namespace, cannot open a capture and says what it needs.
fn permission_denied() -> Result<(), Failed> {
    let lab = lab(false)?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let exe = exe.to_string_lossy();
    let out = lab.exec(
        "a",
        "env",
        &[
            &format!("{CHILD_ENV}=vab"),
            "setpriv",
            "--bounding-set=-net_raw",
            "--inh-caps=-net_raw",
            "--",
            &exe,
        ],
    )?;
    check(
        out.starts_with("permission: ")
            && out.contains("vab")
            && out.contains("needs root or CAP_NET_RAW"),
        || format!("child said: {out}"),
    )?;
    // The same binary with its capabilities opens it: the failure above is
    // the missing capability, nothing else.
    let out = lab.exec("a", "env", &[&format!("{CHILD_ENV}=vab"), &exe])?;
    check(out.trim() == "opened", || {
        format!("child with caps said: {out}")
    })
}

/// The interface disappears under the capture: `next_batch` fails, naming
/// it, instead of returning nothing forever (a daemon loop would spin or
/// stay blind).
fn iface_removed() -> Result<(), Failed> {
    let lab = lab(false)?;
    let cap = Capturer::start(lab.ns("a"), opts(&["vab"]))?;
    lab.exec("a", "ip", &["link", "del", "vab"])?;
    portcullis_testnet::wait_for(Duration::from_secs(3), || {
        cap.handle.is_finished().then_some(())
    });
    let finished = cap.handle.is_finished();
    cap.stop.store(true, Ordering::Relaxed);
    let result = cap.handle.join().map_err(|_| "capture thread panicked")?;
    check(finished, || {
        format!("no error 3 s after the removal: {result:?}")
    })?;
    match result {
        Err(e) if e.contains("vab") => Ok(()),
        other => Err(format!("want an error naming vab, got {other:?}").into()),
    }
}
