//! Replay over public captures against their ground truth (issue 8,
//! "Detection you can trust on real traffic").
//!
//! The captures and `truth.json` live outside the repository, in
//! `../shared/pcaps` beside the workspace (see its README: never copied into
//! the project). For every capture that `truth.json` lists, the real
//! `portcullis replay` runs with the default policy twice: once with
//! `--home-net` set to the truth's `home_net` (the protected host), once to
//! its `lan_net` (the whole local network). Each run is a trial named
//! `<file>/home_net` or `<file>/lan_net` and passes when
//! - replay exits 0;
//! - every listed scanner (`expect: detect`) has a `scan` event with its
//!   `src_ip`, `scan.kind` and `scan.pattern` (any pattern where the truth
//!   says `-`);
//! - no other source has a `scan` or `ban` event.
//!
//! Every `scan` event counts as a report of its source, whatever else it
//! says (a later summary record, `"phase": "end"`, included). A failure
//! lists each source reported wrongly or missed, with its scan and ban
//! events. Without the folder, the trials are reported ignored, with the
//! reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Events shown per source in a failure message.
const SHOWN_PER_SOURCE: usize = 8;

fn main() {
    let args = Arguments::from_args();
    let dir = pcaps_dir();
    let trials = match read_truth(&dir) {
        Ok(captures) => captures
            .into_iter()
            .flat_map(|c| {
                let c = std::sync::Arc::new(c);
                [Net::Home, Net::Lan].map(|net| {
                    let (c, dir) = (std::sync::Arc::clone(&c), dir.clone());
                    Trial::test(format!("{}/{}", c.file, net.key()), move || {
                        check(&dir, &c, net)
                    })
                })
            })
            .collect(),
        Err(reason) => vec![Trial::ignorable_test("public_captures", move || {
            Ok(Completion::ignored_with(reason))
        })],
    };
    libtest_mimic::run(&args, trials).exit();
}

/// `../shared/pcaps` from the workspace root: the repository's parent
/// folder holds `shared/pcaps`.
fn pcaps_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.join("../shared/pcaps")
}

/// One capture's ground truth.
#[derive(Debug)]
struct Capture {
    file: String,
    home_net: Vec<String>,
    lan_net: Vec<String>,
    /// Source address -> what it must be reported as.
    scanners: BTreeMap<IpAddr, Expect>,
}

#[derive(Debug)]
struct Expect {
    kind: String,
    /// `None`: any pattern (`-` in truth.json).
    pattern: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum Net {
    Home,
    Lan,
}

impl Net {
    fn key(self) -> &'static str {
        match self {
            Net::Home => "home_net",
            Net::Lan => "lan_net",
        }
    }
}

/// The captures `truth.json` lists, or why there are none to run.
fn read_truth(dir: &Path) -> Result<Vec<Capture>, String> {
    if !dir.is_dir() {
        return Err(format!(
            "skipped: no public captures at {} (../shared/pcaps beside the workspace)",
            dir.display()
        ));
    }
    let path = dir.join("truth.json");
    // From here on a problem is a broken truth file, not a missing one:
    // panic (every trial would be wrong).
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let truth: serde_json::Map<String, Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a JSON object: {e}", path.display()));
    let strings = |v: &Value, what: &str| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("truth.json: {what} is not an array"))
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    };
    let mut out = Vec::new();
    for (file, t) in truth.iter().filter(|(k, _)| !k.starts_with('_')) {
        let mut scanners = BTreeMap::new();
        for (src, s) in t["scanners"]
            .as_object()
            .unwrap_or_else(|| panic!("truth.json: {file}.scanners is not an object"))
        {
            let src: IpAddr = src
                .parse()
                .unwrap_or_else(|_| panic!("truth.json: {file}: {src:?} is not an address"));
            let field = |k: &str| {
                s[k].as_str()
                    .unwrap_or_else(|| panic!("truth.json: {file}.scanners.{src}.{k} missing"))
                    .to_owned()
            };
            let expect = field("expect");
            assert_eq!(
                expect, "detect",
                "truth.json: {file}.scanners.{src}: unknown expect {expect:?}"
            );
            let pattern = field("pattern");
            scanners.insert(
                src,
                Expect {
                    kind: field("kind"),
                    pattern: (pattern != "-").then_some(pattern),
                },
            );
        }
        out.push(Capture {
            file: file.clone(),
            home_net: strings(&t["home_net"], &format!("{file}.home_net")),
            lan_net: strings(&t["lan_net"], &format!("{file}.lan_net")),
            scanners,
        });
    }
    Ok(out)
}

/// One trial: replay `c` with `net` as `--home-net`, compare with the truth.
fn check(dir: &Path, c: &Capture, net: Net) -> Result<(), Failed> {
    let nets = match net {
        Net::Home => &c.home_net,
        Net::Lan => &c.lan_net,
    };
    let mut cmd = Command::new(BIN);
    cmd.arg("replay")
        .arg(dir.join(&c.file))
        .args(["--events", "-", "--quiet", "--no-progress"]);
    for n in nets {
        cmd.args(["--home-net", n]);
    }
    let out = cmd.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let run = format!(
        "portcullis replay {} --home-net {} (default policy)",
        c.file,
        nets.join(" --home-net ")
    );
    if !out.status.success() {
        return Err(format!("{run}: {}\n{}", out.status, stderr.trim_end()).into());
    }
    // Scan and ban events by source.
    let mut by_src: BTreeMap<IpAddr, Vec<Value>> = BTreeMap::new();
    for (i, line) in String::from_utf8_lossy(&out.stdout).lines().enumerate() {
        let ev: Value = serde_json::from_str(line)
            .map_err(|e| format!("{run}: event line {} is not JSON ({e}): {line}", i + 1))?;
        if !matches!(ev["event_type"].as_str(), Some("scan" | "ban")) {
            continue;
        }
        let src = ev["src_ip"]
            .as_str()
            .and_then(|s| s.parse::<IpAddr>().ok())
            .ok_or_else(|| format!("{run}: event without a src_ip address: {line}"))?;
        by_src.entry(src).or_default().push(ev);
    }

    let mut missed = Vec::new();
    for (src, want) in &c.scanners {
        let events = by_src.get(src).map(Vec::as_slice).unwrap_or_default();
        let found = events.iter().any(|e| {
            e["event_type"] == "scan"
                && e["scan"]["kind"] == want.kind.as_str()
                && want
                    .pattern
                    .as_ref()
                    .is_none_or(|p| e["scan"]["pattern"] == p.as_str())
        });
        if !found {
            let mut s = format!(
                "missed {src}: want a scan event with kind {:?}, pattern {}; got {}",
                want.kind,
                want.pattern
                    .as_ref()
                    .map_or_else(|| "any".to_owned(), |p| format!("{p:?}")),
                if events.is_empty() {
                    "no scan or ban event".to_owned()
                } else {
                    format!("{} scan/ban events:", events.len())
                }
            );
            show(&mut s, events);
            missed.push(s);
        }
    }
    let mut wrong = Vec::new();
    for (src, events) in &by_src {
        if !c.scanners.contains_key(src) {
            let scans = events.iter().filter(|e| e["event_type"] == "scan").count();
            let mut s = format!(
                "reported wrongly {src} (benign): {scans} scan and {} ban events:",
                events.len() - scans
            );
            show(&mut s, events);
            wrong.push(s);
        }
    }
    if missed.is_empty() && wrong.is_empty() {
        return Ok(());
    }
    let mut msg = format!(
        "{run}: {} of {} scanners missed, {} benign sources reported\n",
        missed.len(),
        c.scanners.len(),
        wrong.len()
    );
    for s in missed.iter().chain(&wrong) {
        msg.push_str(s);
        msg.push('\n');
    }
    msg.push_str(stderr.trim_end());
    Err(msg.into())
}

/// Appends the first events of a source, one compact line each.
fn show(out: &mut String, events: &[Value]) {
    for e in events.iter().take(SHOWN_PER_SOURCE) {
        let ty = e["event_type"].as_str().unwrap_or("?");
        let _ = write!(
            out,
            "\n    {} {ty} {}",
            e["timestamp"].as_str().unwrap_or("?"),
            e[ty]
        );
    }
    if events.len() > SHOWN_PER_SOURCE {
        let _ = write!(
            out,
            "\n    ... and {} more",
            events.len() - SHOWN_PER_SOURCE
        );
    }
}
