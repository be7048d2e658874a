//! Differential test (issue 9, item 4): the kernel and the engine decide
//! alike. For the example configurations in docs/rules.md and
//! policy/default.json and for generated ones, a connection gets through
//! the live kernel path (`portcullis run` in namespaces) exactly when the
//! engine, run in this process over the same file, accepts its first
//! packet; and `portcullis explain ADDR --config FILE` agrees with the
//! engine.
//!
//! Topology (addresses from the benchmarking ranges only):
//! ```text
//!   a 198.18.1.2, .3         fw 198.18.1.1 | 198.18.2.1       b 198.18.2.2
//!     2001:2:0:1::2, ::3  ──    2001:2:0:1::1 | 2001:2:0:2::1 ──  2001:2:0:2::2
//! ```
//! Inbound is a -> fw, outbound fw -> a, forwarded a -> b through fw.
//!
//! Cases, per configuration, both families and each direction: TCP (connect
//! within 1 s, then a line echoed back: data both ways on the established
//! connection), UDP (a request answered, then a second one: both ways on
//! the established flow), ICMP echo. Servers in every namespace listen on
//! every test port and record what reaches them, so a live outcome is
//! - *through*: the first packet passed and the established flow carried
//!   data both ways;
//! - *blocked*: the first packet never reached the server;
//! - *broken*: anything else (a reply of an accepted flow lost, a refusal):
//!   always a mismatch, whatever the engine says.
//!
//! Generated configurations come from a xorshift generator seeded by
//! `PORTCULLIS_DIFF_SEED` (default: the clock); the seed is printed at the
//! start and in every failure. `PORTCULLIS_DIFF_CONFIGS` sets how many are
//! generated (default 16).
//!
//! The example configurations are loaded with `scan.ban` set to false (the
//! detector still runs, so the kernel plan is the example's): the cases
//! probe a dozen ports of one peer, a scan by the example's thresholds, and
//! a banned client would test the ban, not the rules. Generated
//! configurations turn the detector off.
//!
//! IPv6 neighbour entries are made permanent in the lab: neighbour
//! discovery is ICMPv6, and a configuration that blocks ICMPv6 or drops by
//! default drops it (kernel and engine alike), which would break every
//! IPv6 case of it for a reason that is not the connection under test.
//!
//! They need root; otherwise each reports itself ignored with the reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use portcullis_engine::config::Config;
use portcullis_engine::{Action, DetectorMode, Direction, Engine, PacketIn, Timestamp, Verdict};
use portcullis_testnet::{enter, live_trial, path_str as s, wait_for, Lab};
use portcullis_wire::LinkType;
use serde_json::{json, Value};

const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("ping", "iputils-ping"),
];

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Ports every server listens on (TCP and UDP); cases pick from them.
const PORTS: [u16; 7] = [22, 80, 443, 6050, 7000, 7005, 8080];

/// The client side's addresses, IPv4 then IPv6.
const A4: [&str; 2] = ["198.18.1.2", "198.18.1.3"];
const A6: [&str; 2] = ["2001:2:0:1::2", "2001:2:0:1::3"];
const FW_A4: &str = "198.18.1.1";
const FW_A6: &str = "2001:2:0:1::1";
const FW_B4: &str = "198.18.2.1";
const FW_B6: &str = "2001:2:0:2::1";
const B4: &str = "198.18.2.2";
const B6: &str = "2001:2:0:2::2";

/// A connection's patience: connect, each reply, each ping.
const TIMEOUT: Duration = Duration::from_secs(1);

fn main() {
    let mut args = Arguments::from_args();
    // Namespaces and 1 s timeouts on two cores: one configuration at a
    // time (its cases run in parallel).
    args.test_threads = Some(1);
    let seed = std::env::var("PORTCULLIS_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let generated: usize = std::env::var("PORTCULLIS_DIFF_CONFIGS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    eprintln!("differential: seed {seed} (PORTCULLIS_DIFF_SEED={seed} repeats this run)");

    let mut configs = examples();
    for i in 0..generated {
        let mut rng = Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        configs.push(Example {
            name: format!("generated_{i:02}"),
            json: generate(&mut rng),
            files: Vec::new(),
        });
    }
    let tests: Vec<Trial> = configs
        .into_iter()
        .enumerate()
        .map(|(i, ex)| {
            let case_seed = seed ^ (i as u64 + 101).wrapping_mul(0xD6E8_FEB8_6659_FD93);
            live_trial(
                format!("kernel_and_engine_agree_on_{}", ex.name),
                TOOLS,
                move || differential(&ex, seed, case_seed),
            )
        })
        .collect();
    libtest_mimic::run(&args, tests).exit();
}

/// A configuration under test: its rules file and the list files it names
/// (relative path, contents).
#[derive(Debug, Clone)]
struct Example {
    name: String,
    json: String,
    files: Vec<(String, String)>,
}

/// The example configurations: every `json` block of docs/rules.md (a
/// single rule as `{"rules": [it]}`), policy/default.json, and the seeds'
/// example from issue 9.
fn examples() -> Vec<Example> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let docs = std::fs::read_to_string(root.join("docs/rules.md")).expect("docs/rules.md");
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in docs.lines() {
        match (&mut block, line.trim_end()) {
            (None, "```json") => block = Some(String::new()),
            (Some(b), "```") => {
                let mut v: Value = serde_json::from_str(b).expect("a json block of docs/rules.md");
                if v.get("action").is_some() {
                    v = json!({ "rules": [v] });
                }
                out.push(example(format!("docs_rules_md_{}", out.len()), v));
                block = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(
        out.len() >= 2,
        "docs/rules.md has fewer json examples than expected"
    );
    let default =
        std::fs::read_to_string(root.join("policy/default.json")).expect("policy/default.json");
    out.push(example(
        "policy_default_json".into(),
        serde_json::from_str(&default).expect("policy/default.json is JSON"),
    ));
    // docs/rules.md shows it too ("The original seed format"): once is
    // enough.
    let seeds = example(
        "the_seeds_example".into(),
        serde_json::from_str(
            r#"{"block":{"ip":["192.168.1.100"],"port":[80,443],"protocol":["TCP"]},
                "allow":{"ip":["127.0.0.1"],"port":[22],"protocol":["ICMP"]}}"#,
        )
        .unwrap(),
    );
    if !out.iter().any(|e| e.json == seeds.json) {
        out.push(seeds);
    }
    out
}

/// An example with `scan.ban` off (see the module docs) and the list files
/// it names (docs/rules.md's `lists/hosts.txt`) made up.
fn example(name: String, mut v: Value) -> Example {
    let obj = v.as_object_mut().expect("a JSON object");
    let scan = obj.entry("scan").or_insert_with(|| json!({}));
    scan["ban"] = json!(false);
    let mut files = Vec::new();
    for side in ["block", "allow"] {
        if let Some(lists) = v[side]["domain_lists"].as_array() {
            for l in lists {
                let path = l.as_str().expect("a list path").to_owned();
                files.push((path, "0.0.0.0 ads.example tracker.example\n".to_owned()));
            }
        }
    }
    Example {
        name,
        json: serde_json::to_string_pretty(&v).unwrap(),
        files,
    }
}

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `pct` %.
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }

    /// Up to `max` distinct elements of `v`.
    fn some<T: Copy + PartialEq>(&mut self, v: &[T], max: usize) -> Vec<T> {
        let n = self.below(max + 1);
        let mut out = Vec::new();
        for _ in 0..n {
            let x = self.pick(v);
            if !out.contains(&x) {
                out.push(x);
            }
        }
        out
    }
}

/// Address entries: hosts and prefixes around the lab's addresses.
const IPS: &[&str] = &[
    "198.18.1.2",
    "198.18.1.3",
    "198.18.1.2/31",
    "198.18.1.0/24",
    "198.18.2.2",
    "198.18.2.0/24",
    "198.18.0.0/15",
    "2001:2:0:1::2",
    "2001:2:0:1::3",
    "2001:2:0:1::2/127",
    "2001:2:0:1::/64",
    "2001:2:0:2::2",
    "2001:2::/48",
];

/// Port entries: single ports (some of them tested, some not) and ranges.
const PORT_ENTRIES: &[&str] = &[
    "22",
    "80",
    "443",
    "8080",
    "7005",
    "23",
    "6000-6100",
    "7000-7010",
    "20-25",
    "440-8000",
];

const PROTOCOLS: &[&str] = &["TCP", "UDP", "ICMP", "ICMPv6"];

/// A random configuration inside what the engine supports (docs/rules.md).
fn generate(rng: &mut Rng) -> String {
    let ports = |rng: &mut Rng, max: usize| -> Vec<Value> {
        rng.some(PORT_ENTRIES, max)
            .into_iter()
            .map(|p| match p.parse::<u16>() {
                Ok(n) if rng.chance(50) => json!(n),
                _ => json!(p),
            })
            .collect()
    };
    let mut block = serde_json::Map::new();
    let mut allow = serde_json::Map::new();
    let b_ip = rng.some(IPS, 2);
    if !b_ip.is_empty() {
        block.insert("ip".into(), json!(b_ip));
    }
    let b_port = ports(rng, 2);
    if !b_port.is_empty() {
        block.insert("port".into(), json!(b_port));
    }
    let b_proto = rng.some(PROTOCOLS, 2);
    if !b_proto.is_empty() {
        block.insert("protocol".into(), json!(b_proto));
    }
    if rng.chance(20) {
        allow.insert("ip".into(), json!([rng.pick(IPS)]));
    }
    let a_port = ports(rng, 1);
    if !a_port.is_empty() {
        allow.insert("port".into(), json!(a_port));
    }
    if rng.chance(30) {
        allow.insert("protocol".into(), json!([rng.pick(PROTOCOLS)]));
    }
    let mut rules = Vec::new();
    for _ in 0..rng.below(3) {
        let mut r = serde_json::Map::new();
        let action = if rng.chance(50) { "allow" } else { "block" };
        r.insert("action".into(), json!(action));
        if rng.chance(60) {
            let d = rng.pick(&["inbound", "outbound", "forwarded", "any"]);
            r.insert("direction".into(), json!(d));
        }
        let (mut has_ip, has_port, has_proto) = (rng.chance(50), rng.chance(50), rng.chance(50));
        if !(has_ip || has_port || has_proto) {
            has_ip = true;
        }
        if has_ip {
            let mut ips = rng.some(IPS, 2);
            if ips.is_empty() {
                ips.push(rng.pick(IPS));
            }
            r.insert("ip".into(), json!(ips));
        }
        if has_proto {
            let mut protos = vec![rng.pick(PROTOCOLS)];
            if rng.chance(40) {
                protos.push(rng.pick(PROTOCOLS));
                protos.dedup();
            }
            // A rule with ports needs TCP or UDP among its protocols.
            if has_port && !protos.iter().any(|p| *p == "TCP" || *p == "UDP") {
                protos.push(rng.pick(&["TCP", "UDP"]));
            }
            r.insert("protocol".into(), json!(protos));
        }
        if has_port {
            let mut p = ports(rng, 2);
            if p.is_empty() {
                p.push(json!(rng.pick(PORT_ENTRIES)));
            }
            r.insert("port".into(), json!(p));
        }
        rules.push(Value::Object(r));
    }
    let mut cfg = serde_json::Map::new();
    if !block.is_empty() {
        cfg.insert("block".into(), Value::Object(block));
    }
    if !allow.is_empty() {
        cfg.insert("allow".into(), Value::Object(allow));
    }
    if !rules.is_empty() {
        cfg.insert("rules".into(), json!(rules));
    }
    let default = if rng.chance(25) { "drop" } else { "accept" };
    cfg.insert("policy".into(), json!({ "default": default }));
    cfg.insert("scan".into(), json!({ "enabled": false }));
    cfg.insert("events".into(), json!({ "dns_queries": rng.chance(50) }));
    let text = serde_json::to_string_pretty(&Value::Object(cfg)).unwrap();
    if let Err(e) = Config::from_json_str(&text, &portcullis_engine::config::NoLists) {
        panic!("the generator made an invalid configuration:\n{text}\n{e}");
    }
    text
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// One connection to try.
#[derive(Debug, Clone)]
struct Case {
    id: usize,
    dir: Direction,
    proto: Proto,
    /// Namespace the client runs in.
    client: &'static str,
    src: IpAddr,
    dst: IpAddr,
    /// TCP and UDP destination port.
    port: u16,
}

impl Case {
    fn describe(&self) -> String {
        let what = match self.proto {
            Proto::Tcp => format!("TCP port {}", self.port),
            Proto::Udp => format!("UDP port {}", self.port),
            Proto::Icmp => "ICMP echo".into(),
        };
        format!(
            "#{} {} {what} {} -> {} (client in {})",
            self.id,
            self.dir.as_str(),
            self.src,
            self.dst,
            self.client
        )
    }

    /// The peer whose address `explain` is asked about: the source of
    /// inbound packets, the destination of outbound ones. Forwarded
    /// packets have two peers; `explain` cannot know the other.
    fn explain_peer(&self) -> Option<IpAddr> {
        match self.dir {
            Direction::Inbound => Some(self.src),
            Direction::Outbound => Some(self.dst),
            Direction::Forwarded => None,
        }
    }

    /// The first packet, as an Ethernet frame.
    fn first_packet(&self) -> Vec<u8> {
        let (s, d) = (
            SocketAddr::new(self.src, 40000),
            SocketAddr::new(self.dst, self.port),
        );
        match self.proto {
            Proto::Tcp => portcullis_traffic::tcp_syn(s, d, portcullis_traffic::SynStyle::Os),
            Proto::Udp => portcullis_traffic::udp(s, d, b"request\n"),
            Proto::Icmp => portcullis_traffic::icmp_echo(self.src, self.dst, 1, 1),
        }
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Per direction and family: two TCP ports, two UDP ports, one ping.
fn cases(rng: &mut Rng) -> Vec<Case> {
    let mut out = Vec::new();
    for dir in [
        Direction::Inbound,
        Direction::Outbound,
        Direction::Forwarded,
    ] {
        for v6 in [false, true] {
            let pool = if v6 { A6 } else { A4 };
            let tcp = two(rng);
            let udp = two(rng);
            let protos = [
                (Proto::Tcp, tcp[0]),
                (Proto::Tcp, tcp[1]),
                (Proto::Udp, udp[0]),
                (Proto::Udp, udp[1]),
                (Proto::Icmp, 0),
            ];
            for (proto, port) in protos {
                let a = ip(rng.pick(&pool));
                let (client, src, dst) = match dir {
                    Direction::Inbound => ("a", a, ip(if v6 { FW_A6 } else { FW_A4 })),
                    Direction::Outbound => ("fw", ip(if v6 { FW_A6 } else { FW_A4 }), a),
                    Direction::Forwarded => ("a", a, ip(if v6 { B6 } else { B4 })),
                };
                out.push(Case {
                    id: out.len(),
                    dir,
                    proto,
                    client,
                    src,
                    dst,
                    port,
                });
            }
        }
    }
    out
}

fn two(rng: &mut Rng) -> [u16; 2] {
    let a = rng.pick(&PORTS);
    loop {
        let b = rng.pick(&PORTS);
        if b != a {
            return [a, b];
        }
    }
}

/// What happened live.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Live {
    Through,
    Blocked,
    Broken(String),
}

/// Tokens the servers received.
type Seen = Arc<Mutex<HashSet<String>>>;

fn seen(s: &Seen, token: &str) -> bool {
    s.lock().unwrap().contains(token)
}

/// Echo servers in one namespace: TCP on `[::]` (both families) and UDP on
/// each of `addrs` (so that replies leave from the address asked), on every
/// port of [`PORTS`]. Each records the first line it receives in `seen`.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl Servers {
    fn start(lab: &Lab, spec: &[(&str, Vec<IpAddr>)], seen: &Seen) -> Result<Self, Failed> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (short, addrs) in spec {
            let (ns, addrs, seen, stop) =
                (lab.ns(short), addrs.clone(), seen.clone(), stop.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            threads.push(std::thread::spawn(move || {
                let bound = bind_servers(&ns, &addrs);
                let (tcp, udp) = match bound {
                    Ok(s) => {
                        let _ = tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                serve(&tcp, &udp, &seen, &stop)
            }));
            rx.recv_timeout(Duration::from_secs(5))
                .map_err(|e| format!("server in {short}: {e}"))??;
        }
        Ok(Self { stop, threads })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn bind_servers(ns: &str, addrs: &[IpAddr]) -> Result<(Vec<TcpListener>, Vec<UdpSocket>), String> {
    enter(ns)?;
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for port in PORTS {
        let l = TcpListener::bind(("::", port)).map_err(|e| format!("tcp [::]:{port}: {e}"))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        tcp.push(l);
        for &a in addrs {
            let u = UdpSocket::bind((a, port)).map_err(|e| format!("udp {a}:{port}: {e}"))?;
            u.set_nonblocking(true).map_err(|e| e.to_string())?;
            udp.push(u);
        }
    }
    Ok((tcp, udp))
}

fn serve(
    tcp: &[TcpListener],
    udp: &[UdpSocket],
    seen: &Seen,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        let mut idle = true;
        for l in tcp {
            match l.accept() {
                Ok((s, _)) => {
                    idle = false;
                    let seen = seen.clone();
                    std::thread::spawn(move || echo_tcp(s, &seen));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("accept: {e}")),
            }
        }
        for u in udp {
            match u.recv_from(&mut buf) {
                Ok((n, from)) => {
                    idle = false;
                    let text = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
                    seen.lock().unwrap().insert(text);
                    let _ = u.send_to(&buf[..n], from);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // An ICMP error for an earlier reply; not ours to judge.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(format!("recv: {e}")),
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

fn echo_tcp(mut s: TcpStream, seen: &Seen) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let mut line = Vec::new();
    let mut buf = [0u8; 64];
    while !line.contains(&b'\n') && line.len() < 256 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => line.extend_from_slice(&buf[..n]),
        }
    }
    seen.lock()
        .unwrap()
        .insert(String::from_utf8_lossy(&line).trim().to_owned());
    let _ = s.write_all(&line);
}

/// A TCP connection from `src` (bound) to `dst` within `TIMEOUT`.
fn tcp_connect(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::errno::Errno;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{
        bind, connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType,
        SockaddrStorage,
    };
    let fam = if dst.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        fam,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(src, 0)),
    )?;
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(dst)) {
        Ok(()) | Err(Errno::EINPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
    let n = poll(
        &mut fds,
        PollTimeout::try_from(TIMEOUT.as_millis() as u32).unwrap(),
    )?;
    if n == 0 {
        return Err(ErrorKind::TimedOut.into());
    }
    let err = getsockopt(&fd, sockopt::SocketError)?;
    if err != 0 {
        return Err(std::io::Error::from_raw_os_error(err));
    }
    let s = TcpStream::from(fd);
    s.set_nonblocking(false)?;
    Ok(s)
}

/// Runs one case from its client namespace.
fn run_case(lab_ns: &str, c: &Case, tag: &str, seen_by: &Seen) -> Live {
    let tok = |n: u8| format!("{tag}-{}-{n}", c.id);
    match c.proto {
        Proto::Icmp => {
            let src = c.src.to_string();
            let dst = c.dst.to_string();
            let w = TIMEOUT.as_secs().max(1).to_string();
            let ok = portcullis_testnet::run(
                "ip",
                &[
                    "netns", "exec", lab_ns, "ping", "-n", "-c", "1", "-W", &w, "-I", &src, &dst,
                ],
            )
            .is_ok();
            if ok {
                Live::Through
            } else {
                Live::Blocked
            }
        }
        Proto::Tcp => {
            if let Err(e) = enter(lab_ns) {
                return Live::Broken(e);
            }
            let t = tok(1);
            match tcp_connect(c.src, SocketAddr::new(c.dst, c.port)) {
                Err(e) if e.kind() == ErrorKind::TimedOut => Live::Blocked,
                Err(e) => Live::Broken(format!("connect: {e}")),
                Ok(mut s) => {
                    let _ = s.set_read_timeout(Some(TIMEOUT));
                    let sent = s.write_all(format!("{t}\n").as_bytes()).is_ok();
                    let mut got = Vec::new();
                    let mut buf = [0u8; 64];
                    while sent && !got.contains(&b'\n') {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let echoed = String::from_utf8_lossy(&got).trim() == t;
                    if echoed && seen(seen_by, &t) {
                        Live::Through
                    } else {
                        Live::Broken(format!(
                            "connected, but on the established connection the server got the data: {}, the echo came back: {echoed}",
                            seen(seen_by, &t)
                        ))
                    }
                }
            }
        }
        Proto::Udp => {
            if let Err(e) = enter(lab_ns) {
                return Live::Broken(e);
            }
            let sock = match UdpSocket::bind((c.src, 0))
                .and_then(|s| s.connect((c.dst, c.port)).map(|()| s))
                .and_then(|s| s.set_read_timeout(Some(TIMEOUT)).map(|()| s))
            {
                Ok(s) => s,
                Err(e) => return Live::Broken(format!("udp socket: {e}")),
            };
            let ask = |t: &str| -> bool {
                let mut buf = [0u8; 128];
                sock.send(format!("{t}\n").as_bytes()).is_ok()
                    && matches!(sock.recv(&mut buf), Ok(n) if String::from_utf8_lossy(&buf[..n]).trim() == t)
            };
            let (t1, t2) = (tok(1), tok(2));
            let r1 = ask(&t1);
            let s1 = seen(seen_by, &t1);
            match (s1, r1) {
                (false, false) => Live::Blocked,
                (true, true) => {
                    if ask(&t2) && seen(seen_by, &t2) {
                        Live::Through
                    } else {
                        Live::Broken(format!(
                            "the first request was answered, the second (established) one: server got it: {}",
                            seen(seen_by, &t2)
                        ))
                    }
                }
                (true, false) => {
                    Live::Broken("the request arrived, its reply never came back".into())
                }
                (false, true) => Live::Broken("a reply came back to an unseen request".into()),
            }
        }
    }
}

/// A lab, its servers and a daemon running one configuration.
struct Net {
    lab: Lab,
    dir: tempfile::TempDir,
    daemon: Option<u32>,
}

impl Net {
    fn new() -> Result<Self, Failed> {
        let mut lab = Lab::new();
        for ns in ["fw", "a", "b"] {
            lab.add_ns(ns)?;
        }
        let a: Vec<String> = A4
            .iter()
            .map(|x| format!("{x}/24"))
            .chain(A6.iter().map(|x| format!("{x}/64")))
            .collect();
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        lab.link("fw", &["198.18.1.1/24", "2001:2:0:1::1/64"], "a", &a)?;
        lab.link(
            "fw",
            &["198.18.2.1/24", "2001:2:0:2::1/64"],
            "b",
            &["198.18.2.2/24", "2001:2:0:2::2/64"],
        )?;
        lab.route_via("a", FW_A4, Some(FW_A6))?;
        lab.route_via("b", FW_B4, Some(FW_B6))?;
        lab.forwarding("fw")?;
        // Permanent IPv6 neighbours (module docs).
        let mac = |short: &str, ifname: &str| -> Result<String, Failed> {
            let out = lab.exec(short, "ip", &["-br", "link", "show", "dev", ifname])?;
            Ok(out
                .split_whitespace()
                .nth(2)
                .ok_or_else(|| format!("no MAC in {out:?}"))?
                .to_owned())
        };
        let (fw_a, a_fw, fw_b, b_fw) = (
            mac("fw", "vfwa")?,
            mac("a", "vafw")?,
            mac("fw", "vfwb")?,
            mac("b", "vbfw")?,
        );
        let mut neigh = vec![
            ("a", FW_A6, fw_a.as_str(), "vafw"),
            ("b", FW_B6, fw_b.as_str(), "vbfw"),
            ("fw", B6, b_fw.as_str(), "vfwb"),
        ];
        for x in A6 {
            neigh.push(("fw", x, a_fw.as_str(), "vfwa"));
        }
        for (short, addr, mac, dev) in neigh {
            lab.exec(
                short,
                "ip",
                &[
                    "-6",
                    "neigh",
                    "replace",
                    addr,
                    "lladdr",
                    mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ],
            )?;
        }
        Ok(Self {
            lab,
            dir: tempfile::tempdir()?,
            daemon: None,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// Starts `portcullis run` in fw on `rules.json`; returns once its
    /// kernel rules are in and it reads the queue.
    fn start(&mut self) -> Result<(), Failed> {
        let (cfg, ev, st, sock, log) = (
            self.path("rules.json"),
            self.path("events.jsonl"),
            self.path("state"),
            self.path("run/portcullis.sock"),
            self.path("daemon.log"),
        );
        let pid = self.lab.spawn(
            "fw",
            BIN,
            &[
                "run",
                "--config",
                s(&cfg),
                "--events",
                s(&ev),
                "--state-dir",
                s(&st),
                "--socket",
                s(&sock),
                "--no-protect-ssh",
            ],
            &log,
        )?;
        self.daemon = Some(pid);
        let ready = wait_for(Duration::from_secs(15), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("running on NFQUEUE")
                .then_some(())
        });
        if ready.is_none() {
            return Err(format!("portcullis did not start:\n{}", self.log()).into());
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), Failed> {
        let pid = self.daemon.take().ok_or("not running")?;
        let code = self.lab.stop(pid, Duration::from_secs(10))?;
        if code != Some(0) {
            return Err(format!("portcullis exited with {code:?}:\n{}", self.log()).into());
        }
        Ok(())
    }
}

/// How `explain` compared with the engine for one case.
#[derive(Debug, PartialEq, Eq)]
enum Explained {
    Agrees,
    /// `explain` names at most 8 conditional steps ("and N more"): the
    /// engine's rule is among those it left out, so only the absence of a
    /// contradiction was checked. Counted and printed, never silent.
    Elided,
}

/// What `explain` must say given the engine's verdict `v` for a packet of
/// that peer: the rule that decided named with the verdict's action, or,
/// for the default policy, the default as the last word.
fn explain_agrees(text: &str, v: &Verdict, cfg: &Config) -> Result<Explained, String> {
    let (words, first): (&[&str], &str) = match v.action {
        Action::Accept => (&["accepted", "allowlisted", "allowed"], "accepted"),
        Action::Drop => (&["dropped", "blocked"], "dropped"),
    };
    if !text.starts_with("depends on") && !text.starts_with(first) {
        return Err(format!("explain decides otherwise: {text}"));
    }
    match v.rule {
        Some(r) => {
            let d = cfg.rules.describe(r);
            if words.iter().any(|w| text.contains(&format!("{w} by {d}"))) {
                Ok(Explained::Agrees)
            } else if text.starts_with("depends on") && text.contains(" more; otherwise ") {
                Ok(Explained::Elided)
            } else {
                Err(format!(
                    "explain does not name `{d}` as the verdict's rule: {text}"
                ))
            }
        }
        None => {
            let want = match v.action {
                Action::Accept => "accepted: default policy (accept)",
                Action::Drop => "dropped: default policy (drop)",
            };
            if text.ends_with(want) {
                Ok(Explained::Agrees)
            } else {
                Err(format!("explain does not end with `{want}`: {text}"))
            }
        }
    }
}

/// One configuration: the engine's verdicts, the live outcomes, `explain`.
fn differential(ex: &Example, seed: u64, case_seed: u64) -> Result<(), Failed> {
    let started = std::time::Instant::now();
    let mut net = Net::new()?;
    std::fs::write(net.path("rules.json"), &ex.json)?;
    let mut lists: BTreeMap<String, String> = BTreeMap::new();
    for (rel, text) in &ex.files {
        let p = net.path(rel);
        std::fs::create_dir_all(p.parent().unwrap())?;
        std::fs::write(&p, text)?;
        lists.insert(rel.clone(), text.clone());
    }
    let cfg = Config::from_json_str(&ex.json, &lists).map_err(|e| format!("{}:\n{e}", ex.json))?;
    let cfg = Arc::new(cfg);
    let mut engine = Engine::new(cfg.clone(), DetectorMode::Off)?;
    let cases = cases(&mut Rng::new(case_seed));
    let verdicts: Vec<Verdict> = cases
        .iter()
        .map(|c| {
            let frame = c.first_packet();
            engine.process(&PacketIn {
                data: &frame,
                link: LinkType::Ethernet,
                ts: Timestamp::from_secs(1),
                dir: Some(c.dir),
                orig_len: None,
            })
        })
        .collect();

    let seen: Seen = Arc::default();
    let all =
        |v4: &[&str], v6: &[&str]| -> Vec<IpAddr> { v4.iter().chain(v6).map(|x| ip(x)).collect() };
    let _servers = Servers::start(
        &net.lab,
        &[
            ("fw", all(&[FW_A4, FW_B4], &[FW_A6, FW_B6])),
            ("a", all(&A4, &A6)),
            ("b", all(&[B4], &[B6])),
        ],
        &seen,
    )?;
    net.start()?;
    let tag = format!("{:x}", case_seed & 0xffff_ffff);
    let handles: Vec<_> = cases
        .iter()
        .map(|c| {
            let (ns, c, tag, seen) = (net.lab.ns(c.client), c.clone(), tag.clone(), seen.clone());
            std::thread::spawn(move || run_case(&ns, &c, &tag, &seen))
        })
        .collect();
    let outcomes: Vec<Live> = handles
        .into_iter()
        .map(|h| {
            h.join()
                .unwrap_or_else(|_| Live::Broken("case thread panicked".into()))
        })
        .collect();

    let mut mismatches = Vec::new();
    for ((c, v), live) in cases.iter().zip(&verdicts).zip(&outcomes) {
        let agree = matches!(
            (v.action, live),
            (Action::Accept, Live::Through) | (Action::Drop, Live::Blocked)
        );
        if !agree {
            mismatches.push(format!(
                "{}: engine {:?} ({:?}, {}), live {live:?}",
                c.describe(),
                v.action,
                v.reason,
                v.rule
                    .map(|r| cfg.rules.describe(r))
                    .unwrap_or_else(|| "no rule".into()),
            ));
        }
    }
    let table = net
        .lab
        .exec("fw", "nft", &["list", "table", "inet", "portcullis"])
        .unwrap_or_else(|e| e);
    net.stop()?;

    // `explain` about each peer of inbound and outbound cases.
    let (mut explained, mut elided) = (0, 0);
    let mut answers: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (c, v) in cases.iter().zip(&verdicts) {
        let Some(peer) = c.explain_peer() else {
            continue;
        };
        if let std::collections::btree_map::Entry::Vacant(slot) = answers.entry(peer) {
            let out = std::process::Command::new(BIN)
                .args(["explain", &peer.to_string(), "--json", "--config"])
                .arg(net.path("rules.json"))
                .output()?;
            let x: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
                format!(
                    "explain {peer}: {e}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
            slot.insert(x["verdict"].as_str().unwrap_or_default().to_owned());
        }
        explained += 1;
        match explain_agrees(&answers[&peer], v, &cfg) {
            Ok(Explained::Agrees) => {}
            Ok(Explained::Elided) => elided += 1,
            Err(e) => mismatches.push(format!(
                "{}: engine {:?} ({:?}), but {e}",
                c.describe(),
                v.action,
                v.reason
            )),
        }
    }
    let through = outcomes.iter().filter(|o| **o == Live::Through).count();
    eprintln!(
        "{}: {} cases ({through} through), {explained} against explain ({elided} with the rule past its 8 steps), {} mismatches, {:.1} s",
        ex.name,
        cases.len(),
        mismatches.len(),
        started.elapsed().as_secs_f64()
    );
    if mismatches.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} mismatches (seed {seed}; PORTCULLIS_DIFF_SEED={seed} repeats this run)\nconfig {}:\n{}\n\n{}\n\nnft list table inet portcullis:\n{table}\ndaemon log:\n{}",
        mismatches.len(),
        ex.name,
        ex.json,
        mismatches.join("\n"),
        net.log()
    )
    .into())
}
