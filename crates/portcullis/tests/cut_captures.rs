//! Public captures that were cut by their snap length (`tcpdump -s N`),
//! replayed by the real binary. They live in `../shared/pcaps` beside the
//! workspace (read-only, never copied into the project; `truth.json` says
//! what each holds); without that folder each test reports itself
//! **ignored, with the reason**.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use serde_json::Value;

fn main() {
    let args = Arguments::from_args();
    let tests = vec![shared(
        "espn_cut_to_96_bytes_replays_every_packet_and_finds_no_attack",
        espn_snap96,
    )];
    libtest_mimic::run(&args, tests).exit();
}

/// `../shared/pcaps` relative to the workspace root.
fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/pcaps")
}

fn shared(name: &str, f: fn(&Path) -> Result<(), Failed>) -> Trial {
    Trial::ignorable_test(name, move || {
        let dir = shared_dir();
        if !dir.is_dir() {
            return Ok(Completion::ignored_with(format!(
                "skipped: no public captures at {} (the shared pcaps folder beside the workspace)",
                dir.display()
            )));
        }
        f(&dir).map(|()| Completion::Completed)
    })
}

/// Replays `pcap` with `home_net`; the events and standard error.
fn replay(pcap: &Path, home_net: &str) -> Result<(Vec<Value>, String), Failed> {
    let tmp = tempfile::tempdir()?;
    let cfg = tmp.path().join("rules.json");
    let events = tmp.path().join("events.jsonl");
    std::fs::write(&cfg, format!(r#"{{"home_net": ["{home_net}"]}}"#))?;
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("replay")
        .arg(pcap)
        .arg("--config")
        .arg(&cfg)
        .arg("--events")
        .arg(&events)
        .arg("--quiet")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!("replay of {} failed: {stderr}", pcap.display()).into());
    }
    let events = std::fs::read_to_string(&events)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    Ok((events, stderr))
}

/// The packet count from the closing summary: `replayed N packets ...`.
fn packets(stderr: &str) -> Option<u64> {
    let rest = &stderr[stderr.find("replayed ")? + "replayed ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// `derived_espn_snap96.pcap` is `ppa3_http_espn.pcapng` as `tcpdump -s 96`
/// writes it: every record's original length exceeds the file's snap
/// length. It must replay like the whole capture: every packet read, none
/// malformed, no scan (one host browsing a news site).
fn espn_snap96(dir: &Path) -> Result<(), Failed> {
    let home = "172.16.0.122/32";
    let (cut, cut_err) = replay(&dir.join("derived_espn_snap96.pcap"), home)?;
    let (_, whole_err) = replay(&dir.join("ppa3_http_espn.pcapng"), home)?;
    let (n_cut, n_whole) = (packets(&cut_err), packets(&whole_err));
    if n_cut.is_none() || n_cut != n_whole {
        return Err(format!("packets: cut {n_cut:?}, whole {n_whole:?}\n{cut_err}").into());
    }
    if let Some(e) = cut
        .iter()
        .find(|e| e["drop"]["reason"] == "malformed" || e["event_type"] == "scan")
    {
        return Err(format!("a snap length is not an attack: {e}").into());
    }
    if cut_err.contains("cut short") {
        return Err(format!("the file is whole: {cut_err}").into());
    }
    Ok(())
}
