//! Golden test of the event format (docs/events.md): a replay that makes
//! every kind of event the engine writes — drops by each reason (rules,
//! ranges, blocked names over UDP and TCP, bans, a malformed fragment),
//! DNS queries, scans at their threshold and their end summaries
//! (vertical, horizontal, internal), bans, an expiry, suppressed events —
//! must write exactly the JSON Lines and console lines kept in
//! `tests/golden/`. A change to the format shows up here as a diff.
//!
//! To accept a deliberate change: `UPDATE_GOLDEN=1 cargo test --test
//! golden`, then review the diff of `tests/golden/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;

use portcullis_traffic::{self as traffic, Frame, ScanShape};

const T0: u64 = 1_795_000_000_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const RULES: &str = r#"{
  "home_net": ["198.18.0.0/24", "2001:2::/64"],
  "block": {"ip": ["198.18.9.9"], "port": [9999, "6000-6100"], "domain": ["blocked.example"]},
  "events": {"max_events_per_second": 20, "drop_window": "5s"},
  "scan": {"ban_duration": "30s"}
}"#;

fn capture() -> Vec<Frame> {
    let mut streams = Vec::new();
    let at = |us: u64, data: Vec<u8>| Frame::new(T0 + us, data);
    // Drops by rule: an address, a port, a range, twice each from one
    // source (one event per rule, then summaries with their counts).
    let mut drops = Vec::new();
    for i in 0..3u64 {
        drops.push(at(
            1_000 + i,
            traffic::udp(sa("198.18.9.9:4000"), sa("198.18.0.1:80"), b"x"),
        ));
        drops.push(at(
            2_000 + i,
            traffic::udp(sa("198.18.7.7:4000"), sa("198.18.0.1:9999"), b"x"),
        ));
        drops.push(at(
            3_000 + i,
            traffic::udp(sa("198.18.7.7:4000"), sa("198.18.0.1:6050"), b"x"),
        ));
    }
    // DNS: an allowed query, blocked names over UDP and TCP.
    drops.push(at(
        4_000,
        traffic::dns_udp(
            sa("198.18.0.2:53000"),
            sa("198.18.8.53:53"),
            7,
            "www.example.org",
        ),
    ));
    drops.push(at(
        4_100,
        traffic::dns_udp(
            sa("198.18.0.2:53001"),
            sa("198.18.8.53:53"),
            8,
            "www.blocked.example",
        ),
    ));
    drops.push(at(
        4_200,
        traffic::dns_tcp(
            sa("198.18.0.2:53002"),
            sa("198.18.8.53:53"),
            9,
            "Sub.Blocked.Example",
        ),
    ));
    // A tiny first fragment (malformed).
    let syn = traffic::tcp_syn(
        sa("198.18.5.8:40000"),
        sa("198.18.0.1:22"),
        traffic::SynStyle::Nmap,
    );
    for (i, f) in traffic::fragment_ipv4(&syn, 8).into_iter().enumerate() {
        drops.push(at(5_000 + i as u64, f));
    }
    streams.push(drops);
    // A SYN scan from outside (banned, expires), a SYN sweep of port 22
    // from outside, a UDP scan over IPv6, and a LAN host scanning another
    // (internal: alert).
    streams.push(traffic::port_scan(
        ip("198.18.66.6"),
        ip("198.18.0.1"),
        &(1..=40).collect::<Vec<u16>>(),
        ScanShape::Syn,
        T0 + 10_000,
        2_000,
    ));
    let targets: Vec<IpAddr> = (1..=20).map(|i| ip(&format!("198.18.0.{i}"))).collect();
    streams.push(traffic::sweep(
        ip("198.18.77.7"),
        &targets,
        22,
        T0 + 200_000,
        1_000,
    ));
    streams.push(traffic::port_scan(
        ip("2001:2:9::66"),
        ip("2001:2::1"),
        &(100..=120).collect::<Vec<u16>>(),
        ScanShape::Udp,
        T0 + 400_000,
        3_000,
    ));
    streams.push(traffic::port_scan(
        ip("198.18.0.50"),
        ip("198.18.0.1"),
        &(1000..=1010).collect::<Vec<u16>>(),
        ScanShape::Fin,
        T0 + 600_000,
        2_000,
    ));
    // A flood from a blocked address: past the rate limit (suppressed).
    let flood: Vec<Frame> = (0..200u16)
        .map(|i| {
            at(
                800_000 + u64::from(i),
                traffic::udp(
                    SocketAddr::new(ip(&format!("198.18.{}.{}", 30 + i / 250, 1 + i % 250)), 1),
                    sa("198.18.0.1:9999"),
                    b"f",
                ),
            )
        })
        .collect();
    streams.push(flood);
    // Something 40 s later: the ban has expired by then.
    streams.push(vec![at(
        40_000_000,
        traffic::udp(sa("198.18.0.2:5000"), sa("198.18.8.8:443"), b"q"),
    )]);
    traffic::merge(streams)
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

#[test]
fn events_match_the_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    let (pcap, cfg, events) = (
        dir.path().join("in.pcap"),
        dir.path().join("rules.json"),
        dir.path().join("events.jsonl"),
    );
    traffic::write_pcap(std::fs::File::create(&pcap).unwrap(), &capture()).unwrap();
    std::fs::write(&cfg, RULES).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("replay")
        .arg(&pcap)
        .arg("--config")
        .arg(&cfg)
        .arg("--events")
        .arg(&events)
        .arg("--no-progress")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = std::fs::read_to_string(&events).unwrap();
    // The console lines: everything on stderr but the closing summary
    // (which has a wall-clock rate in it).
    let console: String = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("replayed ") && !l.starts_with("verdicts: "))
        .map(|l| format!("{l}\n"))
        .collect();
    for (name, got) in [("events.jsonl", &json), ("console.txt", &console)] {
        let path = golden(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        if &want != got {
            let first = want
                .lines()
                .zip(got.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(want.lines().count().min(got.lines().count()));
            panic!(
                "{name} differs from the golden file, first at line {}:\n want: {}\n  got: {}\n(UPDATE_GOLDEN=1 to accept a deliberate change)",
                first + 1,
                want.lines().nth(first).unwrap_or("<end>"),
                got.lines().nth(first).unwrap_or("<end>"),
            );
        }
    }
    // Every event type the engine writes in replay is there.
    let types: std::collections::BTreeSet<String> = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event_type"].to_string())
        .collect();
    for t in ["drop", "dns", "scan", "ban", "unban", "suppressed"] {
        assert!(
            types.contains(&format!("\"{t}\"")),
            "no {t} event: {types:?}"
        );
    }
}
