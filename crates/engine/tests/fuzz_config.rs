//! Fuzzing the rules-file loader on the stable toolchain
//! (`portcullis-fuzzkit`): `Config::from_json_str` over mutants of the
//! example rules files (`docs/rules.md`, `policy/default.json`) and of a
//! domain list served by an in-memory `ListLoader`. Mutations work on the
//! JSON tree (values from a dictionary of edge cases, keys of the schema,
//! subtrees of other inputs), on the text, and on the list's lines.
//! A config that loads is then used: an engine runs packets to and from
//! the addresses, ports and names it names, explains its addresses and
//! writes its events. `PORTCULLIS_FUZZ_SECS` sets the time (default 2 s);
//! see `fuzz/README.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis_engine::config::{schema, Config, ConfigErrors, DEFAULT_POLICY};
use portcullis_engine::{DetectorMode, Direction, Engine, PacketIn, Timestamp};
use portcullis_fuzzkit::{bucket, fuzz, signature, Input, Mutator, Rng};
use portcullis_traffic::{dns_udp, flags, icmp_echo, port_scan, tcp, udp, ScanShape};
use portcullis_wire::LinkType;
use serde_json::{json, Value};

/// A rules file and the list files its loader serves.
#[derive(Debug, Clone)]
struct Case {
    rules: String,
    lists: BTreeMap<String, String>,
}

impl Input for Case {
    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&json!({"rules": self.rules, "lists": self.lists})).unwrap()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        Some(Case {
            rules: v.get("rules")?.as_str()?.to_string(),
            lists: serde_json::from_value(v.get("lists")?.clone()).ok()?,
        })
    }
}

const LIST: &str = "lists/hosts.txt";

const HOSTS: &str = "# a hosts file and adblock rules\n\
0.0.0.0 ads.example tracker.example\n\
127.0.0.1 localhost\n\
::1 ip6-localhost\n\
192.0.2.1 notasink.example\n\
||doubleclick.example^\n\
@@||good.ads.example^\n\
||x.example^$third-party\n\
! adblock comment\n\
[Adblock Plus 2.0]\n\
plain.example\n";

/// The JSON blocks of docs/rules.md and the default policy.
fn seeds() -> Vec<Case> {
    let doc = include_str!("../../../docs/rules.md");
    let mut texts: Vec<String> = Vec::new();
    let mut block: Option<String> = None;
    for line in doc.lines() {
        match (&mut block, line.trim_start()) {
            (None, "```json") => block = Some(String::new()),
            (Some(b), "```") => {
                texts.push(std::mem::take(b));
                block = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    // A lone rule object in the docs: make it a rules file.
    let texts = texts.into_iter().map(|t| {
        if t.trim_start().starts_with("{\"action\"") {
            format!("{{\"rules\": [{t}]}}")
        } else {
            t
        }
    });
    let lists = BTreeMap::from([(LIST.to_string(), HOSTS.to_string())]);
    let mut seeds: Vec<Case> = texts
        .chain([DEFAULT_POLICY.to_string(), "{}".to_string()])
        .map(|rules| Case {
            rules,
            lists: lists.clone(),
        })
        .collect();
    assert!(seeds.len() >= 5, "docs/rules.md lost its examples");
    // The last seed does not load: a list the loader cannot serve.
    seeds.push(Case {
        rules: r#"{"block": {"domain_lists": ["lists/hosts.txt", "lists/missing.txt"]}}"#.into(),
        lists,
    });
    seeds
}

/// Values that sit on the edges of what the file accepts.
fn edge_values() -> Vec<Value> {
    let mut v: Vec<Value> = [
        "10.0.0.0/8",
        "0.0.0.0/0",
        "::/0",
        "198.51.100.7",
        "198.51.100.7/32",
        "10.0.0.1/8",
        "300.1.1.1",
        "2001:db8::/129",
        "fe80::1%eth0",
        "::ffff:1.2.3.4",
        "1-65535",
        "0",
        "65535",
        "65536",
        "65535-1",
        "22-",
        "-",
        "80",
        "tcp",
        "UDP",
        "ICMPv6",
        "gre",
        "IPv6-ICMP",
        "0s",
        "1ms",
        "10m",
        "7d",
        "99999999999d",
        "-1s",
        "1.5h",
        "600",
        "*.example",
        "a..b",
        ".",
        "example.",
        "bücher.example",
        "xn--bcher-kva.example",
        "ads.example",
        "localhost",
        "lists/hosts.txt",
        "lists/missing.txt",
        "block",
        "allow",
        "drop",
        "accept",
        "alert",
        "ban",
        "nxdomain",
        "inbound",
        "outbound",
        "forward",
        "any",
        "",
        "\u{0}",
        "\u{feff}",
    ]
    .iter()
    .map(|s| json!(s))
    .collect();
    let long = ["a", "b", "c"].map(|c| c.repeat(63)).join(".") + "." + &"d".repeat(61);
    v.extend([
        json!(0),
        json!(-1),
        json!(1),
        json!(5),
        json!(47),
        json!(255),
        json!(256),
        json!(65535),
        json!(65536),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1.5),
        json!(1e300),
        json!(true),
        json!(false),
        Value::Null,
        json!([]),
        json!({}),
        json!("a".repeat(70) + ".example"),
        json!([long]),
    ]);
    v
}

/// Every property name of the schema and of the seeds.
fn keys(seeds: &[Case]) -> Vec<String> {
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if !k.starts_with('$') {
                        out.insert(k.clone());
                    }
                    walk(v, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(&schema(), &mut out);
    for s in seeds {
        if let Ok(v) = serde_json::from_str::<Value>(&s.rules) {
            walk(&v, &mut out);
        }
    }
    out.into_iter().collect()
}

/// Pointers to every node of a tree (JSON Pointer syntax).
fn nodes(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let k = k.replace('~', "~0").replace('/', "~1");
                nodes(c, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                nodes(c, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

const LIST_LINES: &[&str] = &[
    "0.0.0.0 a.example b.example",
    ":: v6sink.example",
    "127.0.0.1 localhost.localdomain",
    "0.0.0.0 0.0.0.0",
    "||ads.example^",
    "@@||ads.example^",
    "||^",
    "@@||^",
    "||a.example^$important",
    "example.com##.ad",
    "*.wild.example",
    "bücher.example",
    "a..b",
    "-bad-.example",
    "0.0.0.0 name # comment",
    "\r",
    "\u{feff}x.example",
    "x.example\r",
    "#",
];

struct Mutate {
    /// The seeds that load: half the donors, and a fresh start now and
    /// then (without it the corpus fills with files that fail, whose
    /// mutants fail too).
    loading: Vec<Case>,
    values: Vec<Value>,
    keys: Vec<String>,
    bytes: Mutator,
}

impl Mutate {
    /// A subtree of another input: the node at a path ending in the same
    /// key when there is one, else its root.
    fn donor(ptr: &str, rng: &mut Rng, corpus: &[Case]) -> Option<Value> {
        let other: Value = serde_json::from_str(&rng.pick(corpus).rules).ok()?;
        let mut theirs = Vec::new();
        nodes(&other, String::new(), &mut theirs);
        let last = ptr.rsplit('/').next().unwrap_or("");
        let same: Vec<&String> = theirs
            .iter()
            .filter(|p| !p.is_empty() && p.rsplit('/').next() == Some(last))
            .collect();
        let p = if same.is_empty() {
            String::new()
        } else {
            same[rng.below(same.len())].clone()
        };
        other.pointer(&p).cloned()
    }

    fn tree(&self, v: &mut Value, rng: &mut Rng, corpus: &[Case]) {
        let mut ptrs = Vec::new();
        nodes(v, String::new(), &mut ptrs);
        let ptr = rng.pick(&ptrs).clone();
        let choice = rng.below(7);
        let donated = if choice == 1 {
            let from = if rng.one_in(2) { &self.loading } else { corpus };
            Self::donor(&ptr, rng, from)
        } else {
            None
        };
        let Some(node) = v.pointer_mut(&ptr) else {
            return;
        };
        match choice {
            0 => *node = rng.pick(&self.values).clone(),
            1 => {
                if let Some(d) = donated {
                    *node = d;
                }
            }
            2 => match node {
                Value::Object(m) if !m.is_empty() => {
                    let k = m.keys().nth(rng.below(m.len())).unwrap().clone();
                    m.remove(&k);
                }
                Value::Array(a) if !a.is_empty() => {
                    a.remove(rng.below(a.len()));
                }
                _ => *node = Value::Null,
            },
            3 => match node {
                Value::Array(a) if !a.is_empty() => {
                    let x = a[rng.below(a.len())].clone();
                    a.insert(rng.below(a.len() + 1), x);
                }
                Value::Array(a) => a.push(rng.pick(&self.values).clone()),
                _ => *node = json!([node.clone()]),
            },
            4 => {
                if let Value::Object(m) = node {
                    let val = if rng.one_in(2) {
                        json!({})
                    } else {
                        rng.pick(&self.values).clone()
                    };
                    m.insert(rng.pick(&self.keys).clone(), val);
                } else if let Value::Array(a) = node {
                    a.push(rng.pick(&self.values).clone());
                }
            }
            5 => {
                if let Value::Array(a) = node {
                    if let Some(x) = a.first().cloned() {
                        *node = x;
                    }
                } else if let Value::Object(m) = node {
                    // Rename a key to another known one.
                    if let Some(k) = m.keys().nth(rng.below(m.len().max(1))).cloned() {
                        let x = m.remove(&k).unwrap();
                        m.insert(rng.pick(&self.keys).clone(), x);
                    }
                }
            }
            _ => {
                if let Value::Array(a) = node {
                    a.push(rng.pick(&self.values).clone());
                } else {
                    *node = rng.pick(&self.values).clone();
                }
            }
        }
    }

    fn list(&self, text: &mut String, rng: &mut Rng, corpus: &[Case]) {
        let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
        match rng.below(4) {
            0 => {
                let at = rng.below(lines.len() + 1);
                lines.insert(at, rng.pick(LIST_LINES).to_string());
            }
            1 if !lines.is_empty() => {
                lines.remove(rng.below(lines.len()));
            }
            2 => {
                let mut b = text.as_bytes().to_vec();
                let others: Vec<Vec<u8>> = corpus
                    .iter()
                    .filter_map(|c| c.lists.values().next())
                    .map(|s| s.as_bytes().to_vec())
                    .take(8)
                    .collect();
                self.bytes.mutate(&mut b, rng, &others);
                *text = String::from_utf8_lossy(&b).into_owned();
                return;
            }
            _ => {
                let n = 1 + rng.below(200);
                let line = rng.pick(LIST_LINES).to_string();
                lines.extend(std::iter::repeat_n(line, n));
            }
        }
        *text = lines.join("\n");
    }

    fn apply(&self, case: &mut Case, rng: &mut Rng, corpus: &[Case]) {
        // Fresh starts, and a bound on growth (duplicated elements and
        // lines add up over generations).
        let size = case.rules.len() + case.lists.values().map(String::len).sum::<usize>();
        if rng.one_in(4) || size > 64 * 1024 {
            *case = rng.pick(&self.loading).clone();
        }
        match rng.below(10) {
            0 => {
                let mut b = case.rules.as_bytes().to_vec();
                let others: Vec<Vec<u8>> = corpus
                    .iter()
                    .take(8)
                    .map(|c| c.rules.as_bytes().to_vec())
                    .collect();
                self.bytes.mutate(&mut b, rng, &others);
                case.rules = String::from_utf8_lossy(&b).into_owned();
            }
            1 | 2 => {
                let path = if case.lists.is_empty() || rng.one_in(8) {
                    LIST.to_string()
                } else {
                    let i = rng.below(case.lists.len());
                    case.lists.keys().nth(i).unwrap().clone()
                };
                let text = case.lists.entry(path).or_default();
                self.list(text, rng, corpus);
            }
            _ => match serde_json::from_str::<Value>(&case.rules) {
                Ok(mut v) => {
                    self.tree(&mut v, rng, corpus);
                    case.rules = if rng.one_in(2) {
                        serde_json::to_string_pretty(&v).unwrap()
                    } else {
                        v.to_string()
                    };
                }
                // Broken JSON: start again from another input's text.
                Err(_) => case.rules = rng.pick(corpus).rules.clone(),
            },
        }
    }
}

/// Error paths with indices blanked and the start of each message: what
/// a signature keeps of the errors.
fn error_shape(errs: &ConfigErrors) -> Vec<String> {
    let mut v: Vec<String> = errs
        .iter()
        .map(|e| {
            let p: String = e.path.chars().filter(|c| !c.is_ascii_digit()).collect();
            let m: String = e.message.chars().take(12).collect();
            format!("{p} {m}")
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Addresses, ports and host names the rules file mentions.
fn mentioned(v: &Value, ips: &mut Vec<IpAddr>, ports: &mut Vec<u16>, names: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            let head = s.split('/').next().unwrap_or("");
            if let Ok(a) = head.parse::<IpAddr>() {
                ips.push(a);
            } else if let Ok(p) = s.split('-').next().unwrap_or("").parse::<u16>() {
                ports.push(p);
            } else if s.contains('.')
                && s.len() < 200
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() < 64
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
            {
                names.push(s.clone());
            }
        }
        Value::Number(n) => {
            if let Some(p) = n.as_u64().and_then(|p| u16::try_from(p).ok()) {
                ports.push(p);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| mentioned(v, ips, ports, names)),
        Value::Object(m) => m.values().for_each(|v| mentioned(v, ips, ports, names)),
        _ => {}
    }
}

/// Runs a loaded config: packets to and from what it names (a scan
/// among them), verdicts described, explanations and events written.
fn exercise(cfg: Config, text: &str) -> Vec<u64> {
    let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let (mut ips, mut ports, mut names) = (Vec::new(), Vec::new(), Vec::new());
    mentioned(&v, &mut ips, &mut ports, &mut names);
    ips.truncate(6);
    ports.truncate(4);
    names.truncate(3);
    ips.extend([
        "203.0.113.9".parse::<IpAddr>().unwrap(),
        "2001:db8::9".parse().unwrap(),
    ]);
    ports.extend([22, 53]);
    names.push("ads.example".into());

    let default = cfg.policy.default;
    let cfg = Arc::new(cfg);
    let mut engine = Engine::new(cfg.clone(), DetectorMode::Inline).unwrap();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    for (i, &a) in ips.iter().enumerate() {
        let peer: IpAddr = if a.is_ipv4() {
            "198.18.0.77".parse().unwrap()
        } else {
            "2001:2::77".parse().unwrap()
        };
        let port = ports[i % ports.len()];
        let (pa, aa) = (SocketAddr::new(peer, 40000), SocketAddr::new(a, port));
        frames.push(tcp(aa, pa, flags::SYN, &[]));
        frames.push(tcp(pa, aa, flags::SYN, &[]));
        frames.push(udp(aa, pa, b"x"));
        frames.push(icmp_echo(a, peer, 1, i as u16));
        let name = &names[i % names.len()];
        frames.push(dns_udp(pa, SocketAddr::new(a, 53), i as u16, name));
    }
    let target: IpAddr = if ips[0].is_ipv4() {
        "198.18.0.78".parse().unwrap()
    } else {
        "2001:2::78".parse().unwrap()
    };
    let scan_ports: Vec<u16> = (1..=12).collect();
    let scan = port_scan(ips[0], target, &scan_ports, ScanShape::Syn, 0, 1000);
    frames.extend(scan.into_iter().map(|f| f.data));
    let dirs = [
        None,
        Some(Direction::Inbound),
        Some(Direction::Outbound),
        Some(Direction::Forwarded),
    ];
    let mut outcomes = BTreeSet::new();
    for (i, f) in frames.iter().enumerate() {
        let ts = Timestamp::from_micros(1_000_000_000 + i as u64 * 50_000);
        let verdict = engine.process(&PacketIn {
            data: f,
            link: LinkType::Ethernet,
            ts,
            dir: dirs[i % dirs.len()],
            orig_len: None,
        });
        if let Some(r) = verdict.rule {
            assert!(!cfg.rules.describe(r).is_empty());
        }
        outcomes.insert(format!("{:?} {:?}", verdict.action, verdict.reason));
        if let Ok(p) = portcullis_wire::decode(LinkType::Ethernet, f) {
            for d in [
                Direction::Inbound,
                Direction::Outbound,
                Direction::Forwarded,
            ] {
                if let Some(r) = cfg.rules.evaluate(&p, d, default).rule {
                    assert!(!cfg.rules.describe(r).is_empty());
                }
            }
        }
    }
    let now = Timestamp::from_micros(1_000_000_000 + frames.len() as u64 * 50_000);
    let banned = engine.ban(ips[0], now, Duration::from_secs(60), "fuzz".into());
    for &a in &ips {
        let e = engine.explain(a, now);
        assert!(!e.verdict.is_empty());
        let _ = e.to_string();
        serde_json::to_string(&e).unwrap();
    }
    engine.tick(now.saturating_add(Duration::from_secs(120)));
    engine.finish();
    let mut kinds = BTreeSet::new();
    for ev in engine.drain_events() {
        let j = serde_json::to_value(&ev).unwrap();
        let kind = j.get("event_type").and_then(Value::as_str).unwrap_or("");
        kinds.insert(kind.to_string());
        let _ = ev.to_string();
    }
    let _ = cfg.rules.export();
    let mut features: Vec<u64> = outcomes
        .iter()
        .map(|o| signature(&("verdict", o)))
        .collect();
    features.extend(kinds.iter().map(|k| signature(&("event", k))));
    features.push(signature(&("banned", banned)));
    features
}

/// Inputs that loaded (printed at the end: how much of the run got past
/// the loader).
static LOADED: AtomicU64 = AtomicU64::new(0);

/// No panic; every error has a message and a path or a line; a file that
/// loads loads the same rules however it is formatted, and runs; one that
/// fails fails at the same paths however it is formatted.
fn target(case: &Case) -> Vec<u64> {
    let r = Config::from_json_str(&case.rules, &case.lists);
    let reformatted = serde_json::from_str::<Value>(&case.rules)
        .ok()
        .map(|v| serde_json::to_string_pretty(&v).unwrap());
    match r {
        Err(errs) => {
            assert!(!errs.is_empty(), "an Err with no error");
            for e in &errs {
                assert!(!e.message.is_empty(), "an error without a message: {e:?}");
                assert!(
                    !e.path.is_empty() || e.line.is_some(),
                    "an error without a path or a line: {e:?}"
                );
                let _ = e.to_string();
            }
            // Duplicate keys are reported, and lost by reformatting (the
            // last one stays): compare only files without them.
            let dup = errs.iter().any(|e| e.message.starts_with("duplicate key"));
            if let (Some(text), false) = (reformatted, dup) {
                let again =
                    Config::from_json_str(&text, &case.lists).expect_err("fails once reformatted");
                let paths =
                    |e: &ConfigErrors| e.iter().map(|e| e.path.clone()).collect::<BTreeSet<_>>();
                assert_eq!(paths(&errs), paths(&again), "other errors once reformatted");
            }
            let mut features: Vec<u64> = error_shape(&errs)
                .iter()
                .map(|e| signature(&("error", e)))
                .collect();
            features.push(signature(&("errors", bucket(errs.len()))));
            features
        }
        Ok(cfg) => {
            LOADED.fetch_add(1, Ordering::Relaxed);
            let stats = cfg.rules.stats();
            if let Some(text) = &reformatted {
                let again =
                    Config::from_json_str(text, &case.lists).expect("loads once reformatted");
                assert_eq!(again.rules.stats(), stats, "other rules once reformatted");
            }
            let mut features = exercise(cfg, &case.rules);
            features.push(signature(&("stats", format!("{stats:?}").len() / 8)));
            features
        }
    }
}

#[test]
fn fuzz_config() {
    let seeds = seeds();
    for s in &seeds[..seeds.len() - 1] {
        if let Err(e) = Config::from_json_str(&s.rules, &s.lists) {
            panic!("seed does not load: {e}\n{}", s.rules);
        }
    }
    let m = Mutate {
        loading: seeds[..seeds.len() - 1].to_vec(),
        values: edge_values(),
        keys: keys(&seeds),
        bytes: Mutator {
            max_len: 16 * 1024,
            dict: ["\"", "{", "}", "[", ",", "\\u0000", "\n"]
                .map(|t| t.as_bytes().to_vec())
                .to_vec(),
            netlink: false,
        },
    };
    let report = fuzz(
        "config",
        seeds.clone(),
        |c, rng, corpus| m.apply(c, rng, corpus),
        target,
    );
    println!(
        "fuzz config: {} of {} inputs loaded",
        LOADED.load(Ordering::Relaxed),
        report.execs
    );
}
