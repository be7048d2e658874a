//! Live tests of [`Responder`]: a blocked DNS query is dropped at an
//! NFQUEUE and the client gets NXDOMAIN at once, from `dig`'s point of view.
//!
//! Each test makes its own namespaces (a `portcullis_testnet::Lab`): a
//! client (198.18.7.2 / 2001:2:0:7::2) and a resolver (198.18.7.53 /
//! 2001:2:0:7::53) running `dnsmasq`, which answers `allowed.test` with
//! 198.19.0.1 and nothing else; for the forwarded case a router between
//! them (client 198.18.8.2 / 2001:2:0:8::2, resolver 198.18.9.53 /
//! 2001:2:0:9::53). A queue listener in
//! the namespace with the NFQUEUE rule drops queries for names under
//! `blocked.test` and answers them with the `Responder`; everything else
//! is accepted. The rule is in
//! - the client's `OUTPUT` chain (the host's own query),
//! - the resolver's `INPUT` chain (a remote client of this host),
//! - the router's `FORWARD` chain (a client routed through this host),
//!
//! for UDP and TCP, IPv4 and IPv6. Each test asserts that `dig` (one try,
//! 2 s timeout) reports NXDOMAIN for `foo.blocked.test` well within the
//! timeout (over UDP with and without EDNS), NOERROR with 198.19.0.1 for
//! `allowed.test`, that dnsmasq never saw the blocked query, and that the
//! answers carried the responder's mark (counted by an iptables rule).
//!
//! They need root, `dig` and `dnsmasq`; otherwise each is reported ignored
//! with the reason. dnsmasq is started by the test's lab and killed by its
//! pid; the namespaces are deleted on drop, also on failure.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed};
use portcullis_nfqueue::{Hook, Packet, Queue, QueueConfig, Responder, Verdict};
use portcullis_testnet::{check, enter, join, live_trial, wait_for, Lab};
use portcullis_wire::dns::{parse_query, tcp_message};
use portcullis_wire::{decode, IpProto, LinkType};

/// The mark the responder puts on its packets; the queue rules skip it.
const MARK: u32 = 0x70c;
const QUEUE: u16 = 53;
const ALLOWED_A: &str = "198.19.0.1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Where {
    /// The client's OUTPUT chain.
    Output,
    /// The resolver's INPUT chain.
    Input,
    /// A router's FORWARD chain.
    Forward,
}

fn main() {
    let mut args = Arguments::from_args();
    // Timing is asserted: one test at a time.
    args.test_threads = Some(1);
    let mut tests = Vec::new();
    for at in [Where::Output, Where::Input, Where::Forward] {
        for v6 in [false, true] {
            for tcp in [false, true] {
                let name = format!(
                    "nxdomain_{}_{}{}",
                    format!("{at:?}").to_lowercase(),
                    if tcp { "tcp" } else { "udp" },
                    if v6 { "6" } else { "4" }
                );
                tests.push(live_trial(name, TOOLS, move || scenario(at, v6, tcp)));
            }
        }
    }
    libtest_mimic::run(&args, tests).exit();
}

/// What these tests need.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("nft", "nftables"),
    ("dig", "dnsutils"),
    ("dnsmasq", "dnsmasq"),
];

// ---- topology ------------------------------------------------------------

/// The namespaces of one test, `c` (client), `r` (resolver) and for
/// [`Where::Forward`] `g` (router), and the resolver's addresses.
struct Net {
    lab: Lab,
    resolver4: &'static str,
    resolver6: &'static str,
}

/// Adds namespace `short`, whose new interfaces skip duplicate address
/// detection: while a fresh veth's link-local address is tentative (about
/// 2 s here), the first neighbour discovery takes a 1 s retransmission.
fn add_ns(lab: &mut Lab, short: &str) -> Result<(), Failed> {
    lab.add_ns(short)?;
    lab.exec(
        short,
        "sysctl",
        &[
            "-qw",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.all.accept_dad=0",
        ],
    )?;
    Ok(())
}

/// Waits (up to 5 s) until `dev` in namespace `short` is operationally up:
/// until then its packets are dropped.
fn wait_up(lab: &Lab, short: &str, dev: &str) -> Result<(), Failed> {
    wait_for(Duration::from_secs(5), || {
        lab.exec(short, "ip", &["-o", "link", "show", "dev", dev])
            .ok()
            .filter(|out| out.contains("state UP"))
    })
    .map(drop)
    .ok_or_else(|| format!("{dev} in {} is not up after 5 s", lab.ns(short)).into())
}

impl Net {
    fn new(at: Where) -> Result<Net, Failed> {
        let mut lab = Lab::new();
        add_ns(&mut lab, "c")?;
        add_ns(&mut lab, "r")?;
        if at != Where::Forward {
            lab.link(
                "c",
                &["198.18.7.2/24", "2001:2:0:7::2/64"],
                "r",
                &["198.18.7.53/24", "2001:2:0:7::53/64"],
            )?;
            wait_up(&lab, "c", "vcr")?;
            wait_up(&lab, "r", "vrc")?;
            return Ok(Net {
                lab,
                resolver4: "198.18.7.53",
                resolver6: "2001:2:0:7::53",
            });
        }
        add_ns(&mut lab, "g")?;
        lab.link(
            "c",
            &["198.18.8.2/24", "2001:2:0:8::2/64"],
            "g",
            &["198.18.8.1/24", "2001:2:0:8::1/64"],
        )?;
        lab.link(
            "r",
            &["198.18.9.53/24", "2001:2:0:9::53/64"],
            "g",
            &["198.18.9.1/24", "2001:2:0:9::1/64"],
        )?;
        for (ns, dev) in [("c", "vcg"), ("g", "vgc"), ("g", "vgr"), ("r", "vrg")] {
            wait_up(&lab, ns, dev)?;
        }
        lab.route_via("c", "198.18.8.1", Some("2001:2:0:8::1"))?;
        lab.route_via("r", "198.18.9.1", Some("2001:2:0:9::1"))?;
        // Namespaced sysctls: only the router namespace forwards.
        lab.forwarding("g")?;
        Ok(Net {
            lab,
            resolver4: "198.18.9.53",
            resolver6: "2001:2:0:9::53",
        })
    }

    fn resolver_addr(&self, v6: bool) -> &'static str {
        if v6 {
            self.resolver6
        } else {
            self.resolver4
        }
    }

    /// The namespace holding the queue rule, the listener and the responder.
    fn queue_ns(at: Where) -> &'static str {
        match at {
            Where::Output => "c",
            Where::Input => "r",
            Where::Forward => "g",
        }
    }
}

// ---- dnsmasq -------------------------------------------------------------

/// dnsmasq in the resolver namespace, started by the lab (which kills it
/// by its pid when dropped); its files in a directory removed on drop.
struct Dnsmasq {
    pid: u32,
    dir: tempfile::TempDir,
}

impl Dnsmasq {
    fn start(net: &mut Net) -> Result<Dnsmasq, Failed> {
        let dir = tempfile::Builder::new().prefix("pcq-dnsmasq-").tempdir()?;
        let pid_file = dir.path().join("dnsmasq.pid");
        let log = dir.path().join("dnsmasq.log");
        // `ip netns exec` execs dnsmasq: the child's pid is dnsmasq's.
        let pid = net.lab.spawn(
            "r",
            "dnsmasq",
            &[
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--address=/allowed.test/198.19.0.1",
                "--port=53",
                "--bind-interfaces",
                "--log-queries",
                "--user=root",
                &format!("--listen-address={}", net.resolver4),
                &format!("--listen-address={}", net.resolver6),
                &format!("--pid-file={}", pid_file.display()),
                &format!("--log-facility={}", log.display()),
            ],
            &dir.path().join("dnsmasq.out"),
        )?;
        let d = Dnsmasq { pid, dir };
        // Ready when it answers on both addresses.
        let start = Instant::now();
        for server in [net.resolver4, net.resolver6] {
            loop {
                if let Some(status) = net.lab.try_wait(pid)? {
                    return Err(
                        format!("dnsmasq exited at start: {status}; log: {}", d.log()).into(),
                    );
                }
                let r = dig(&net.lab, "c", server, "allowed.test", &["+time=1"])?;
                if r.status.as_deref() == Some("NOERROR") {
                    break;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    return Err(format!("dnsmasq did not answer within 10 s: {r:?}").into());
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        let pid = std::fs::read_to_string(pid_file).unwrap_or_default();
        if pid.trim() != d.pid.to_string() {
            return Err(format!("dnsmasq pid file says {pid:?}, child is {}", d.pid).into());
        }
        Ok(d)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }

    /// Kills dnsmasq (SIGKILL to its pid, then reaped); its query log.
    fn stop(self, lab: &mut Lab) -> Result<String, Failed> {
        let log = self.log();
        lab.kill(self.pid)?;
        Ok(log)
    }
}

// ---- dig -----------------------------------------------------------------

#[derive(Debug)]
struct DigResult {
    status: Option<String>,
    query_ms: Option<u64>,
    wall: Duration,
    answers: Vec<String>,
    output: String,
}

/// `dig @server name +tries=1 +time=2 [extra]` in namespace `short`.
fn dig(
    lab: &Lab,
    short: &str,
    server: &str,
    name: &str,
    extra: &[&str],
) -> Result<DigResult, Failed> {
    let at = format!("@{server}");
    let ns = lab.ns(short);
    let mut args = vec![
        "netns",
        "exec",
        ns.as_str(),
        "dig",
        at.as_str(),
        name,
        "+tries=1",
        "+time=2",
    ];
    args.extend_from_slice(extra);
    let start = Instant::now();
    let out = Command::new("ip")
        .args(&args)
        .output()
        .map_err(|e| format!("dig: {e}"))?;
    let wall = start.elapsed();
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = output
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .map(str::to_owned);
    let query_ms = output
        .split(";; Query time: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    let answers = output
        .lines()
        .filter(|l| !l.starts_with(';') && l.contains("\tIN\t"))
        .map(str::to_owned)
        .collect();
    Ok(DigResult {
        status,
        query_ms,
        wall,
        answers,
        output,
    })
}

// ---- the queue listener --------------------------------------------------

#[derive(Debug, Default)]
struct ListenerOut {
    packets: u64,
    answered: u64,
    errors: Vec<String>,
    hooks: Vec<Hook>,
}

struct Listener {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<ListenerOut, String>>,
}

/// The first question's name if `ip` is a DNS query to port 53.
fn query_name(ip: &[u8]) -> Option<String> {
    let s = decode(LinkType::Raw, ip).ok()?;
    if s.dst_port != Some(53) {
        return None;
    }
    let payload = s.payload(ip);
    let msg = match s.proto {
        IpProto::Udp => payload,
        IpProto::Tcp => tcp_message(payload)?,
        _ => return None,
    };
    let q = parse_query(msg).ok()?;
    Some(q.first()?.name.to_text())
}

fn is_blocked(name: &str) -> bool {
    name == "blocked.test" || name.ends_with(".blocked.test")
}

impl Listener {
    /// A listener in namespace `name` (a full name, as `Lab::ns` gives).
    fn start(name: String) -> Result<Listener, Failed> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        let stop2 = stop.clone();
        let handle = thread::spawn(move || -> Result<ListenerOut, String> {
            let setup = enter(&name).and_then(|()| {
                let q = Queue::open(&QueueConfig::new(QUEUE)).map_err(|e| e.to_string())?;
                let mut r = Responder::open().map_err(|e| e.to_string())?;
                r.set_mark(MARK).map_err(|e| e.to_string())?;
                Ok((q, r))
            });
            let (mut q, mut responder) = match setup {
                Ok(v) => v,
                Err(e) => {
                    let _ = tx.send(Err(e.clone()));
                    return Err(e);
                }
            };
            let _ = tx.send(Ok(()));
            let mut out = ListenerOut::default();
            while !stop2.load(Ordering::Relaxed) {
                if q.recv_batch(Some(Duration::from_millis(50)))
                    .map_err(|e| e.to_string())?
                    == 0
                {
                    continue;
                }
                q.decide_each(|p: &Packet<'_>| {
                    out.packets += 1;
                    if !out.hooks.contains(&p.hook) {
                        out.hooks.push(p.hook);
                    }
                    match query_name(p.payload) {
                        Some(n) if is_blocked(&n) => {
                            match responder.respond_to(p) {
                                Ok(()) => out.answered += 1,
                                Err(e) => out.errors.push(format!("{n}: {e}")),
                            }
                            (Verdict::Drop, None)
                        }
                        _ => (Verdict::Accept, None),
                    }
                });
                q.flush().map_err(|e| e.to_string())?;
            }
            Ok(out)
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Listener { stop, handle }),
            Ok(Err(e)) => Err(format!("queue listener setup failed: {e}").into()),
            Err(_) => Err("the queue listener did not start".into()),
        }
    }

    fn finish(self) -> Result<ListenerOut, Failed> {
        self.stop.store(true, Ordering::Relaxed);
        join(self.handle)
    }
}

// ---- rules ---------------------------------------------------------------

fn iptables(v6: bool) -> &'static str {
    if v6 {
        "ip6tables"
    } else {
        "iptables"
    }
}

/// In the queue namespace: count (and accept) the responder's marked
/// packets in OUTPUT; queue unmarked DNS in `chain`.
fn add_rules(lab: &Lab, ns: &str, at: Where, v6: bool, tcp: bool) -> Result<(), Failed> {
    let ipt = iptables(v6);
    let mark = format!("{MARK:#x}");
    lab.exec(
        ns,
        ipt,
        &[
            "-I", "OUTPUT", "1", "-m", "mark", "--mark", &mark, "-j", "ACCEPT",
        ],
    )?;
    let chain = match at {
        Where::Output => "OUTPUT",
        Where::Input => "INPUT",
        Where::Forward => "FORWARD",
    };
    let queue = QUEUE.to_string();
    lab.exec(
        ns,
        ipt,
        &[
            "-A",
            chain,
            "-p",
            if tcp { "tcp" } else { "udp" },
            "--dport",
            "53",
            "-m",
            "mark",
            "!",
            "--mark",
            &mark,
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue,
            "--queue-bypass",
        ],
    )?;
    Ok(())
}

/// Packets counted by the marked-packet rule (the first in OUTPUT).
fn marked_count(lab: &Lab, ns: &str, v6: bool) -> Result<u64, Failed> {
    let out = lab.exec(ns, iptables(v6), &["-L", "OUTPUT", "1", "-v", "-x", "-n"])?;
    out.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no counter in {out:?}").into())
}

// ---- the test ------------------------------------------------------------

/// Blocked answers must arrive well within dig's 2 s timeout.
const FAST: Duration = Duration::from_millis(500);

fn scenario(at: Where, v6: bool, tcp: bool) -> Result<(), Failed> {
    let mut net = Net::new(at)?;
    let dnsmasq = Dnsmasq::start(&mut net)?;
    let qns = Net::queue_ns(at);
    add_rules(&net.lab, qns, at, v6, tcp)?;
    let listener = Listener::start(net.lab.ns(qns))?;

    let server = net.resolver_addr(v6);
    let proto: &[&str] = if tcp { &["+tcp"] } else { &[] };
    let mut variants: Vec<(&str, Vec<&str>)> = vec![("edns", proto.to_vec())];
    if !tcp {
        variants.push(("noedns", vec!["+noedns"]));
    }
    let mut blocked = Vec::new();
    for (what, extra) in &variants {
        blocked.push((
            *what,
            dig(&net.lab, "c", server, "foo.blocked.test", extra)?,
        ));
    }
    thread::sleep(Duration::from_millis(200));
    let sockets = if tcp {
        // The blocked connection must be gone on both sides.
        let c = net.lab.exec("c", "ss", &["-Htan"])?;
        let r = net.lab.exec("r", "ss", &["-Htan"])?;
        (c, r)
    } else {
        Default::default()
    };
    let allowed = dig(&net.lab, "c", server, "allowed.test", proto)?;
    thread::sleep(Duration::from_millis(100));
    let out = listener.finish()?;
    let marked = marked_count(&net.lab, qns, v6)?;
    let log = dnsmasq.stop(&mut net.lab)?;

    for (what, r) in &blocked {
        println!(
            "  {at:?} {} {}: foo.blocked.test ({what}) -> {} in {} ms (dig ran {} ms)",
            if tcp { "tcp" } else { "udp" },
            if v6 { "v6" } else { "v4" },
            r.status.as_deref().unwrap_or("no answer"),
            r.query_ms.map_or("-".into(), |m| m.to_string()),
            r.wall.as_millis()
        );
    }
    println!(
        "  allowed.test -> {} {:?} in {} ms; listener: {} packets, {} answered, hooks {:?}, {} marked packets sent",
        allowed.status.as_deref().unwrap_or("no answer"),
        allowed.answers,
        allowed.query_ms.map_or("-".into(), |m| m.to_string()),
        out.packets,
        out.answered,
        out.hooks,
        marked
    );

    check(out.errors.is_empty(), || {
        format!("responder errors: {:?}", out.errors)
    })?;
    for (what, r) in &blocked {
        check(r.status.as_deref() == Some("NXDOMAIN"), || {
            format!("blocked ({what}): want NXDOMAIN, dig said:\n{}", r.output)
        })?;
        check(r.wall < FAST && r.query_ms.is_some_and(|m| m < 500), || {
            format!("blocked ({what}): too slow ({:?}):\n{}", r.wall, r.output)
        })?;
        check(
            r.output.contains("QUERY: 1, ANSWER: 0, AUTHORITY: 0"),
            || format!("blocked ({what}): unexpected sections:\n{}", r.output),
        )?;
        let edns = r.output.contains("OPT PSEUDOSECTION");
        check(edns == (*what == "edns"), || {
            format!("blocked ({what}): OPT in the answer: {edns}:\n{}", r.output)
        })?;
        check(
            !r.output.contains("WARNING") && !r.output.contains("Warning"),
            || format!("blocked ({what}): dig warned:\n{}", r.output),
        )?;
    }
    check(allowed.status.as_deref() == Some("NOERROR"), || {
        format!("allowed: want NOERROR:\n{}", allowed.output)
    })?;
    check(
        allowed.answers.len() == 1 && allowed.answers[0].ends_with(ALLOWED_A),
        || format!("allowed: want one A {ALLOWED_A}:\n{}", allowed.output),
    )?;
    check(out.answered == blocked.len() as u64, || {
        format!("answered {} queries, want {}", out.answered, blocked.len())
    })?;
    let want_hook = match at {
        Where::Output => Hook::Output,
        Where::Input => Hook::Input,
        Where::Forward => Hook::Forward,
    };
    check(out.hooks == [want_hook], || {
        format!("packets came from hooks {:?}", out.hooks)
    })?;
    // UDP: one answer per query; TCP: the answer and the reset.
    let per_query = if tcp { 2 } else { 1 };
    check(marked == per_query * blocked.len() as u64, || {
        format!(
            "{marked} packets carried the mark, want {}",
            per_query * blocked.len() as u64
        )
    })?;
    check(log.contains("query[A] allowed.test"), || {
        format!("dnsmasq did not log the allowed query: {log}")
    })?;
    check(!log.contains("blocked.test"), || {
        format!("the blocked query reached dnsmasq: {log}")
    })?;
    // TCP: the client got FIN and closed; the resolver got the reset and
    // then answered the client's FIN with one: nothing is left but LISTEN.
    let (c, r) = &sockets;
    check(
        c.lines().chain(r.lines()).all(|l| l.starts_with("LISTEN")),
        || format!("connections left after the blocked query:\nclient:\n{c}resolver:\n{r}"),
    )?;
    Ok(())
}
