//! Replay tests: each builds a small capture, runs `portcullis replay` on it
//! (the real binary: pcap reading, config loading, engine, detector, bans,
//! event writing) and asserts the exact events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

use portcullis_traffic as traffic;
use portcullis_traffic::{flags, Frame, ScanShape, SynStyle};
use serde_json::Value;

const T0: u64 = 1_795_000_000_000_000;
const HOST: &str = "198.18.0.1";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Writes `frames` as pcap and `config` as a rules file, replays, returns
/// the events.
fn replay(frames: &[Frame], config: &str) -> Vec<Value> {
    replay_with(frames, config, &[])
}

fn replay_with(frames: &[Frame], config: &str, extra: &[&str]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("in.pcap");
    let cfg = dir.path().join("rules.json");
    let events = dir.path().join("events.jsonl");
    traffic::write_pcap(std::fs::File::create(&pcap).unwrap(), frames).unwrap();
    std::fs::write(&cfg, config).unwrap();
    run_replay(&pcap, &cfg, &events, extra)
}

fn run_replay(pcap: &Path, cfg: &Path, events: &Path, extra: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("replay")
        .arg(pcap)
        .arg("--config")
        .arg(cfg)
        .arg("--events")
        .arg(events)
        .arg("--quiet")
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect()
}

/// Two string fields of every event, each given as a path of keys.
fn fields<'a>(events: &'a [Value], a: &[&str], b: &[&str]) -> Vec<(&'a str, &'a str)> {
    let get = |e: &'a Value, path: &[&str]| {
        path.iter()
            .fold(e, |v, k| &v[*k])
            .as_str()
            .unwrap_or_else(|| panic!("no string at {path:?} in {e:#}"))
    };
    events.iter().map(|e| (get(e, a), get(e, b))).collect()
}

/// Packets as frames 1 µs apart from T0.
fn one_microsecond_apart(packets: Vec<Vec<u8>>) -> Vec<Frame> {
    packets
        .into_iter()
        .enumerate()
        .map(|(i, f)| Frame::new(T0 + i as u64, f))
        .collect()
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event_type"] == t).collect()
}

/// Scan detection on, our host is 198.18.0.1, DNS logging off so the
/// assertions see only what the test is about.
const SCAN_CONFIG: &str = r#"{
  "home_net": ["198.18.0.1/32", "2001:2::1/128"],
  "events": {"dns_queries": false}
}"#;

fn ports(n: u16) -> Vec<u16> {
    (1..=n).collect()
}

/// The `scan` events of one phase: `start` (at the threshold) or `end`
/// (the episode's summary).
fn scans(events: &[Value], phase: &str) -> Vec<Value> {
    of_type(events, "scan")
        .into_iter()
        .filter(|e| e["scan"]["phase"] == phase)
        .cloned()
        .collect()
}

/// One scan by `src`: reported once at the threshold (the 6th port), and
/// once more, summarized, when it ends. Returns (start, end).
fn assert_one_scan(events: &[Value], src: &str, kind: &str) -> (Value, Value) {
    assert_eq!(
        of_type(events, "scan").len(),
        2,
        "one start and one end: {events:#?}"
    );
    let (s, e) = (scans(events, "start"), scans(events, "end"));
    assert_eq!((s.len(), e.len()), (1, 1), "{events:#?}");
    for v in [&s[0], &e[0]] {
        assert_eq!(v["src_ip"], src);
        assert_eq!(v["scan"]["kind"], kind, "{v:#}");
        assert_eq!(v["scan"]["pattern"], "vertical");
    }
    assert_eq!(
        s[0]["scan"]["ports"], 6,
        "reported when the 6th port is probed"
    );
    (s[0].clone(), e[0].clone())
}

#[test]
fn syn_scan_is_detected_named_and_banned() {
    let frames = traffic::port_scan(
        ip("198.18.0.66"),
        ip(HOST),
        &ports(30),
        ScanShape::Syn,
        T0,
        10_000,
    );
    let events = replay(&frames, SCAN_CONFIG);
    let (scan, end) = assert_one_scan(&events, "198.18.0.66", "syn");
    assert_eq!(scan["scan"]["action"], "ban");
    assert_eq!(
        scan["scan"]["port_sample"],
        serde_json::json!([1, 2, 3, 4, 5, 6])
    );
    // The summary counts the whole scan, also what came after the ban.
    assert_eq!(end["scan"]["ports"], 30, "{end:#}");
    assert_eq!(end["scan"]["probes"], 30, "{end:#}");
    assert_eq!(end["scan"]["hosts"], 1);
    assert_eq!(end["scan"]["first_seen"], scan["scan"]["first_seen"]);
    let bans = of_type(&events, "ban");
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0]["src_ip"], "198.18.0.66");
    assert_eq!(bans[0]["ban"]["reason"], "scan:syn");
    assert_eq!(bans[0]["ban"]["duration"], 600);
    // The rest of the scan is dropped as banned: one event at once, then
    // one summary with the count when the capture ends.
    let drops = of_type(&events, "drop");
    assert!(
        drops.iter().all(|d| d["drop"]["reason"] == "banned"),
        "{drops:#?}"
    );
    let banned: u64 = drops
        .iter()
        .map(|d| d["drop"]["count"].as_u64().unwrap())
        .sum();
    // Every frame after the 6th SYN involves the banned scanner (its probes,
    // and our replies to it): all are dropped.
    let is_syn_from_scanner =
        |f: &Frame| f.data[26..30] == [198, 18, 0, 66] && f.data[14 + 20 + 13] == flags::SYN;
    let sixth = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| is_syn_from_scanner(f))
        .nth(5)
        .unwrap()
        .0;
    assert_eq!(banned as usize, frames.len() - sixth - 1);
    assert_eq!(types(&events)[..2], ["scan", "ban"]);
}

#[test]
fn fin_null_xmas_ack_connect_and_udp_scans_are_named() {
    for (shape, kind) in [
        (ScanShape::Fin, "fin"),
        (ScanShape::Null, "null"),
        (ScanShape::Xmas, "xmas"),
        (ScanShape::Ack, "ack"),
        (ScanShape::Connect, "connect"),
        (ScanShape::Udp, "udp"),
    ] {
        let frames = traffic::port_scan(ip("198.18.0.66"), ip(HOST), &ports(20), shape, T0, 20_000);
        let events = replay(&frames, SCAN_CONFIG);
        assert_one_scan(&events, "198.18.0.66", kind);
        assert_eq!(of_type(&events, "ban").len(), 1, "{kind}");
    }
}

#[test]
fn ipv6_scan_is_detected() {
    let frames = traffic::port_scan(
        ip("2001:2::66"),
        ip("2001:2::1"),
        &ports(20),
        ScanShape::Syn,
        T0,
        10_000,
    );
    let events = replay(&frames, SCAN_CONFIG);
    assert_one_scan(&events, "2001:2::66", "syn");
    assert_eq!(of_type(&events, "ban")[0]["src_ip"], "2001:2::66");
}

#[test]
fn horizontal_sweep_is_detected() {
    let targets: Vec<IpAddr> = (1..=20).map(|i| ip(&format!("198.18.1.{i}"))).collect();
    let frames = traffic::sweep(ip("198.18.0.66"), &targets, 22, T0, 10_000);
    let events = replay(
        &frames,
        r#"{"home_net": ["198.18.1.0/24"], "events": {"dns_queries": false}}"#,
    );
    let start = scans(&events, "start");
    assert_eq!(start.len(), 1, "{events:#?}");
    assert_eq!(start[0]["scan"]["pattern"], "horizontal");
    assert_eq!(start[0]["scan"]["hosts"], 11);
    assert_eq!(start[0]["scan"]["swept_port"], 22);
    let end = scans(&events, "end");
    assert_eq!(end.len(), 1, "{events:#?}");
    assert_eq!(end[0]["scan"]["hosts"], 20);
    assert_eq!(end[0]["scan"]["swept_port"], 22);
}

#[test]
fn slow_scan_is_not_flagged_with_defaults_but_is_with_a_long_window() {
    // 20 ports, one every 15 s: never more than one port per 10 s window.
    let frames = traffic::port_scan(
        ip("198.18.0.66"),
        ip(HOST),
        &ports(20),
        ScanShape::Syn,
        T0,
        15_000_000,
    );
    assert!(replay(&frames, SCAN_CONFIG).is_empty());
    let events = replay(
        &frames,
        r#"{"home_net": ["198.18.0.1/32"], "scan": {"slow": {"window": "10m", "port_threshold": 15}}}"#,
    );
    let start = scans(&events, "start");
    assert_eq!(start.len(), 1, "{events:#?}");
    assert_eq!(start[0]["scan"]["slow"], true);
    assert_eq!(start[0]["scan"]["ports"], 16);
    let end = scans(&events, "end");
    assert_eq!(end.len(), 1, "{events:#?}");
    assert_eq!(end[0]["scan"]["ports"], 20);
}

#[test]
fn busy_honest_client_is_not_a_scanner() {
    // 50 connections to 443 in 2 s, both directions, full handshakes.
    let frames = traffic::busy_client(ip("198.18.0.10"), ip(HOST), 443, 50, T0, 2_000_000);
    let events = replay(&frames, SCAN_CONFIG);
    assert!(events.is_empty(), "{events:#?}");
}

#[test]
fn our_own_busy_client_is_not_mistaken_for_a_scan_by_the_server() {
    // We are the client: the server answers to 50 of our ephemeral ports.
    let frames = traffic::busy_client(ip(HOST), ip("198.18.0.80"), 443, 50, T0, 2_000_000);
    let events = replay(&frames, SCAN_CONFIG);
    assert!(events.is_empty(), "{events:#?}");
}

#[test]
fn allowlisted_scanner_is_reported_never_banned() {
    let frames = traffic::port_scan(
        ip("198.18.0.66"),
        ip(HOST),
        &ports(30),
        ScanShape::Syn,
        T0,
        10_000,
    );
    let events = replay(
        &frames,
        r#"{"home_net": ["198.18.0.1/32"], "allow": {"ip": ["198.18.0.64/28"]}, "events": {"dns_queries": false}}"#,
    );
    let start = scans(&events, "start");
    assert_eq!(start.len(), 1, "{events:#?}");
    assert_eq!(start[0]["scan"]["action"], "alert");
    assert_eq!(start[0]["scan"]["note"], "allowlisted");
    assert!(of_type(&events, "ban").is_empty());
    assert!(of_type(&events, "drop").is_empty());
}

#[test]
fn ban_expires_with_an_unban_event() {
    let mut frames = traffic::port_scan(
        ip("198.18.0.66"),
        ip(HOST),
        &ports(10),
        ScanShape::Syn,
        T0,
        10_000,
    );
    // A ping from the scanner 5 minutes later (banned) and 11 minutes later
    // (ban over).
    let ping = |t| Frame::new(t, traffic::icmp_echo(ip("198.18.0.66"), ip(HOST), 1, 1));
    frames.push(ping(T0 + 300_000_000));
    frames.push(ping(T0 + 660_000_000));
    let events = replay(
        &frames,
        r#"{"home_net": ["198.18.0.1/32"], "scan": {"ban_duration": "10m"}}"#,
    );
    let unbans = of_type(&events, "unban");
    assert_eq!(unbans.len(), 1, "{events:#?}");
    assert_eq!(unbans[0]["src_ip"], "198.18.0.66");
    assert_eq!(unbans[0]["ban"]["reason"], "expired");
    let ban = &of_type(&events, "ban")[0];
    assert_eq!(unbans[0]["timestamp"], ban["ban"]["expires"]);
    // The ping at +5 min was dropped as banned; the one at +11 min passed.
    let icmp_drops: Vec<_> = of_type(&events, "drop")
        .into_iter()
        .filter(|d| d["proto"] == "ICMP")
        .collect();
    assert_eq!(icmp_drops.len(), 1, "{icmp_drops:#?}");
    assert_eq!(icmp_drops[0]["drop"]["reason"], "banned");
}

#[test]
fn icmp_from_a_blocked_host_is_dropped() {
    let frames = vec![
        Frame::new(T0, traffic::icmp_echo(ip("198.18.0.99"), ip(HOST), 7, 1)),
        Frame::new(
            T0 + 1,
            traffic::icmp_echo(ip("198.18.0.98"), ip(HOST), 7, 1),
        ),
    ];
    let events = replay(&frames, r#"{"block": {"ip": ["198.18.0.99"]}}"#);
    assert_eq!(types(&events), ["drop"], "{events:#?}");
    let d = &events[0];
    assert_eq!(d["src_ip"], "198.18.0.99");
    assert_eq!(d["proto"], "ICMP");
    assert_eq!(d["icmp_type"], 8);
    assert_eq!(d["drop"]["reason"], "blocked_ip");
    assert_eq!(d["drop"]["rule"], "block.ip[0] 198.18.0.99");
}

#[test]
fn seed_config_format_works_unchanged() {
    let seed = r#"{"block":{"ip":["198.18.0.100"],"port":[80,443],"protocol":["TCP"]},"allow":{"ip":["127.0.0.1"],"port":[22],"protocol":["ICMP"]}}"#;
    let frames = vec![
        // blocked ip
        Frame::new(
            T0,
            traffic::udp(sa("198.18.0.100:5000"), sa("198.18.0.1:9999"), b"x"),
        ),
        // TCP is blocked by protocol, but port 22 is allowed: allow wins
        Frame::new(
            T0 + 1,
            traffic::tcp_syn(sa("198.18.0.7:40000"), sa("198.18.0.1:22"), SynStyle::Os),
        ),
        // TCP to 8080: blocked by protocol
        Frame::new(
            T0 + 2,
            traffic::tcp_syn(sa("198.18.0.7:40001"), sa("198.18.0.1:8080"), SynStyle::Os),
        ),
        // UDP to 443: blocked port
        Frame::new(
            T0 + 3,
            traffic::udp(sa("198.18.0.8:5000"), sa("198.18.0.1:443"), b"q"),
        ),
        // ICMP from the blocked host: allow.protocol ICMP wins (allow always wins)
        Frame::new(
            T0 + 4,
            traffic::icmp_echo(ip("198.18.0.100"), ip(HOST), 1, 1),
        ),
    ];
    let events = replay(&frames, seed);
    assert_eq!(
        fields(&events, &["src_ip"], &["drop", "reason"]),
        [
            ("198.18.0.100", "blocked_ip"),
            ("198.18.0.7", "blocked_protocol"),
            ("198.18.0.8", "blocked_port"),
        ]
    );
}

const DNS_CONFIG: &str = r#"{"block": {"domain": ["tracker.example"]}}"#;

#[test]
fn blocked_domain_in_mixed_case_over_tcp_is_dropped() {
    let frames = vec![
        Frame::new(
            T0,
            traffic::dns_tcp(
                sa("198.18.0.2:40000"),
                sa("198.18.0.53:53"),
                0x1234,
                "Ads.TRACKER.Example.",
            ),
        ),
        Frame::new(
            T0 + 1000,
            traffic::dns_tcp(
                sa("198.18.0.2:40001"),
                sa("198.18.0.53:53"),
                0x1235,
                "www.Example.org",
            ),
        ),
    ];
    let events = replay(&frames, DNS_CONFIG);
    assert_eq!(types(&events), ["drop", "dns"], "{events:#?}");
    let d = &events[0];
    assert_eq!(d["drop"]["reason"], "blocked_domain");
    assert_eq!(d["dns"]["rrname"], "ads.tracker.example");
    assert_eq!(d["dns"]["transport"], "tcp");
    assert_eq!(d["dest_port"], 53);
    assert!(d["drop"]["rule"]
        .as_str()
        .unwrap()
        .starts_with("block.domain[0]"));
    assert_eq!(events[1]["dns"]["rrname"], "www.example.org");
    assert_eq!(events[1]["dns"]["rrtype"], "A");
}

#[test]
fn blocked_domain_over_udp_and_its_parent_is_not_blocked() {
    let frames = vec![
        Frame::new(
            T0,
            traffic::dns_udp(
                sa("198.18.0.2:40000"),
                sa("198.18.0.53:53"),
                1,
                "x.y.tracker.example",
            ),
        ),
        Frame::new(
            T0 + 1,
            traffic::dns_udp(sa("198.18.0.2:40001"), sa("198.18.0.53:53"), 2, "example"),
        ),
        Frame::new(
            T0 + 2,
            traffic::dns_udp(
                sa("198.18.0.2:40002"),
                sa("198.18.0.53:53"),
                3,
                "notatracker.example",
            ),
        ),
    ];
    let events = replay(&frames, DNS_CONFIG);
    assert_eq!(
        fields(&events, &["event_type"], &["dns", "rrname"]),
        [
            ("drop", "x.y.tracker.example"),
            ("dns", "example"),
            ("dns", "notatracker.example")
        ]
    );
}

#[test]
fn fragmented_syn_to_a_blocked_port_never_gets_through_on_port_0() {
    // A SYN with 40 bytes of payload, split into 16-byte fragments.
    let syn = traffic::tcp(
        sa("198.18.0.7:40000"),
        sa("198.18.0.1:23"),
        flags::SYN,
        &[0u8; 40],
    );
    let frags = traffic::fragment_ipv4(&syn, 24);
    assert!(frags.len() >= 3);
    let frames = one_microsecond_apart(frags);
    let events = replay(
        &frames,
        r#"{"block": {"port": [23, 0]}, "events": {"dns_queries": false}}"#,
    );
    // The first fragment carries the TCP header: dropped as blocked_port
    // (port 23). The later ones carry no port: never read as port 0, so
    // the "0" entry matches nothing.
    assert_eq!(types(&events), ["drop"], "{events:#?}");
    assert_eq!(events[0]["dest_port"], 23);
    assert_eq!(events[0]["drop"]["reason"], "blocked_port");
    assert_eq!(events[0]["drop"]["rule"], "block.port[0] 23");
}

#[test]
fn tiny_fragment_attack_is_malformed() {
    // First fragment holds only 8 bytes of the TCP header (RFC 1858).
    let syn = traffic::tcp(
        sa("198.18.0.7:40000"),
        sa("198.18.0.1:23"),
        flags::SYN,
        &[0u8; 40],
    );
    let frags = traffic::fragment_ipv4(&syn, 8);
    let frames = one_microsecond_apart(frags);
    let events = replay(&frames, r#"{"block": {"port": [23]}}"#);
    // The 8-byte first fragment (no room for the flags) and the fragment at
    // offset 1 (which would overwrite them) are both malformed: one event at
    // once, one summary with the second at the end. The later fragments
    // carry no header and pass; without their first fragment they never
    // reassemble.
    assert_eq!(types(&events), ["drop", "drop"], "{events:#?}");
    for e in &events {
        assert_eq!(e["drop"]["reason"], "malformed");
        assert_eq!(e["drop"]["error"], "tiny_fragment");
        assert_eq!(e["drop"]["count"], 1);
        // The IP header decoded: the attacker is named.
        assert_eq!(e["src_ip"], "198.18.0.7");
        assert_eq!(e["dest_ip"], HOST);
        assert_eq!(e["proto"], "TCP");
    }
    // The first fragment held the ports; the summary stands for the one at
    // offset 1, which has none.
    assert_eq!(events[0]["dest_port"], 23);
}

#[test]
fn vlan_tagged_frames_are_decoded() {
    let f = traffic::with_vlan(&traffic::icmp_echo(ip("198.18.0.99"), ip(HOST), 1, 1), 42);
    let events = replay(
        &[Frame::new(T0, f)],
        r#"{"block": {"ip": ["198.18.0.96/30"]}}"#,
    );
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["drop"]["rule"], "block.ip[0] 198.18.0.96/30");
}

#[test]
fn a_drop_flood_is_aggregated_into_a_few_events() {
    let frames: Vec<Frame> = (0..10_000u64)
        .map(|i| {
            Frame::new(
                T0 + i * 100,
                traffic::udp(sa("198.18.0.99:5000"), sa("198.18.0.1:9"), b"flood"),
            )
        })
        .collect();
    let events = replay(&frames, r#"{"block": {"ip": ["198.18.0.99"]}}"#);
    assert_eq!(
        events.len(),
        2,
        "first drop at once, then one summary: {events:#?}"
    );
    assert_eq!(events[0]["drop"]["count"], 1);
    assert_eq!(events[1]["drop"]["count"], 9_999);
}

#[test]
fn a_spoofed_flood_is_rate_limited() {
    // 20,000 sources in 2 s: the rate limit (100/s, burst 200) holds back
    // most events and says how many.
    let frames: Vec<Frame> = (0..20_000u32)
        .map(|i| {
            let src = IpAddr::from([198, 19, (i >> 8) as u8, i as u8]);
            Frame::new(
                T0 + u64::from(i) * 100,
                traffic::udp(SocketAddr::new(src, 5000), sa("198.18.0.1:9"), b"x"),
            )
        })
        .collect();
    let events = replay(
        &frames,
        r#"{"block": {"ip": ["198.19.0.0/16"]}, "events": {"max_events_per_second": 100}}"#,
    );
    let drops = of_type(&events, "drop").len();
    assert!((200..=420).contains(&drops), "{drops} drop events");
    let suppressed: u64 = of_type(&events, "suppressed")
        .iter()
        .map(|e| e["suppressed"]["drop"].as_u64().unwrap())
        .sum();
    assert_eq!(drops as u64 + suppressed, 20_000);
}

/// Regression (issue 8, item 7): with the detector on its own thread,
/// scan and ban events came up to 606 s late and varied between runs.
/// Replay now always detects inline: the same capture and config give the
/// same bytes, every event on the time of the packets.
#[test]
fn replay_is_deterministic_and_on_packet_time() {
    let mut frames = traffic::demo(T0);
    // A second scanner, interleaved with the demo's traffic.
    frames.extend(traffic::port_scan(
        ip("198.18.0.77"),
        ip(HOST),
        &ports(40),
        ScanShape::Fin,
        T0 + 1_500_000,
        2_000,
    ));
    frames.sort_by_key(|f| f.ts_micros);
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("in.pcap");
    let cfg = dir.path().join("rules.json");
    traffic::write_pcap(std::fs::File::create(&pcap).unwrap(), &frames).unwrap();
    std::fs::write(&cfg, SCAN_CONFIG).unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let events = run_replay(&pcap, &cfg, &a, &[]);
    run_replay(&pcap, &cfg, &b, &[]);
    let (ta, tb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(!ta.is_empty());
    assert!(ta == tb, "two replays of one capture differ");

    let scanners: Vec<&str> = of_type(&events, "scan")
        .iter()
        .map(|e| e["src_ip"].as_str().unwrap())
        .collect();
    assert!(scanners.contains(&"198.18.0.66"), "{scanners:?}");
    assert!(scanners.contains(&"198.18.0.77"), "{scanners:?}");
    assert!(!of_type(&events, "ban").is_empty());
    // Packet time: nothing before the first packet or after the last, and
    // a scan is reported at its last probe.
    let ts =
        |us: u64| portcullis_engine::events::rfc3339(portcullis_engine::Timestamp::from_micros(us));
    let (first, last) = (
        ts(frames[0].ts_micros),
        ts(frames.last().unwrap().ts_micros),
    );
    for e in &events {
        let t = e["timestamp"].as_str().unwrap();
        assert!(
            first.as_str() <= t && t <= last.as_str(),
            "{e} outside {first}..{last}"
        );
        if e["event_type"] == "scan" && e["scan"]["phase"] == "start" {
            assert_eq!(e["timestamp"], e["scan"]["last_seen"], "{e}");
        }
    }
}

#[test]
fn pcapng_replays_like_pcap() {
    let frames = traffic::port_scan(
        ip("198.18.0.66"),
        ip(HOST),
        &ports(30),
        ScanShape::Fin,
        T0,
        10_000,
    );
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.pcap"), dir.path().join("b.pcapng"));
    traffic::write_pcap(std::fs::File::create(&a).unwrap(), &frames).unwrap();
    traffic::write_pcapng(std::fs::File::create(&b).unwrap(), &frames).unwrap();
    let cfg = dir.path().join("c.json");
    std::fs::write(&cfg, SCAN_CONFIG).unwrap();
    let ea = run_replay(&a, &cfg, &dir.path().join("a.jsonl"), &[]);
    let eb = run_replay(&b, &cfg, &dir.path().join("b.jsonl"), &[]);
    assert!(!ea.is_empty());
    assert_eq!(ea, eb);
}

/// Issue 8, item 8: `--home-net` tells direction in replay, and replaces the
/// rules file's `home_net`.
#[test]
fn home_net_flag_decides_direction_and_replaces_the_files() {
    let frames = one_microsecond_apart(vec![
        traffic::udp(sa("198.18.0.66:40000"), sa("198.18.0.1:9999"), b"x"),
        traffic::udp(sa("[2001:2::66]:40000"), sa("[2001:2::1]:9999"), b"x"),
    ]);
    // Port 9999 blocked: each packet makes a drop event with its direction.
    let config = r#"{"block": {"port": [9999]}, "home_net": ["198.18.0.66", "2001:2::66"],
                     "events": {"dns_queries": false}}"#;
    let directions = |extra: &[&str]| -> Vec<(String, String)> {
        let events = replay_with(&frames, config, extra);
        fields(&events, &["src_ip"], &["direction"])
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect()
    };
    let want = |v4: &str, v6: &str| {
        vec![
            ("198.18.0.66".to_owned(), v4.to_owned()),
            ("2001:2::66".to_owned(), v6.to_owned()),
        ]
    };
    // The file's home_net: the senders are ours.
    assert_eq!(directions(&[]), want("outbound", "outbound"));
    // The flag replaces it (IPv4 and IPv6, repeatable).
    assert_eq!(
        directions(&["--home-net", "198.18.0.1", "--home-net", "2001:2::1/128"]),
        want("inbound", "inbound")
    );
    // Both ends inside home_net (IPv4) or both outside (IPv6): forwarded.
    assert_eq!(
        directions(&["--home-net", "198.18.0.0/24"]),
        want("forwarded", "forwarded")
    );
}

/// A scan is what comes in: with `--home-net` naming the scanner's side,
/// its probes are outbound and no scan is reported.
#[test]
fn home_net_flag_decides_who_is_scanning() {
    let frames = traffic::port_scan(
        ip("198.18.0.66"),
        ip(HOST),
        &ports(30),
        ScanShape::Syn,
        T0,
        10_000,
    );
    let events = replay_with(&frames, SCAN_CONFIG, &["--home-net", HOST]);
    assert_one_scan(&events, "198.18.0.66", "syn");
    // The scanner inside the home network, scanning out: reported (its
    // probes were refused), marked internal, alert only.
    let events = replay_with(&frames, SCAN_CONFIG, &["--home-net", "198.18.0.66/32"]);
    let start = scans(&events, "start");
    assert_eq!(start.len(), 1, "{events:#?}");
    assert_eq!(start[0]["scan"]["internal"], true);
    assert_eq!(start[0]["scan"]["action"], "alert");
    assert_eq!(start[0]["scan"]["note"], "internal");
    assert!(of_type(&events, "ban").is_empty(), "{events:#?}");
    // Unless the config says to ban insiders too.
    let events = replay_with(
        &frames,
        r#"{"scan": {"internal_action": "ban"}, "events": {"dns_queries": false}}"#,
        &["--home-net", "198.18.0.66/32"],
    );
    assert_eq!(of_type(&events, "ban").len(), 1, "{events:#?}");
}

/// Runs `portcullis replay` on a capture already written; the events and
/// the standard error (warnings, the closing summary).
fn replay_file_output(pcap: &Path, config: &str) -> (Vec<Value>, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("rules.json");
    let events = dir.path().join("events.jsonl");
    std::fs::write(&cfg, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("replay")
        .arg(pcap)
        .arg("--config")
        .arg(&cfg)
        .arg("--events")
        .arg(&events)
        .arg("--quiet")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "replay failed: {stderr}");
    let events = std::fs::read_to_string(&events)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (events, stderr)
}

#[test]
fn every_rule_and_every_blocked_name_that_fired_has_its_drops() {
    let src = "198.18.0.9";
    let to = |port: u16| {
        traffic::udp(
            sa(&format!("{src}:5000")),
            sa(&format!("{HOST}:{port}")),
            b"x",
        )
    };
    let resolver = sa("198.18.0.53:53");
    let client = sa(&format!("{src}:40000"));
    let mut packets = vec![to(9999)];
    packets.extend([6000, 6001, 6050, 6001, 6100].map(to));
    packets.push(traffic::dns_udp(client, resolver, 1, "www.blocked.example"));
    packets.push(traffic::dns_tcp(client, resolver, 2, "sub.blocked.example"));
    packets.push(traffic::dns_udp(client, resolver, 3, "www.blocked.example"));
    let events = replay(
        &one_microsecond_apart(packets),
        r#"{"block": {"port": [9999, "6000-6100"], "domain": ["blocked.example"]},
            "events": {"dns_queries": false}}"#,
    );
    let got: Vec<(&str, &str, u64, Vec<u64>)> = events
        .iter()
        .map(|e| {
            let d = &e["drop"];
            let what = e["dns"]["rrname"]
                .as_str()
                .unwrap_or_else(|| d["rule"].as_str().unwrap());
            let ports = d["dest_ports"]
                .as_array()
                .map(|a| a.iter().map(|p| p.as_u64().unwrap()).collect())
                .unwrap_or_default();
            (
                d["reason"].as_str().unwrap(),
                what,
                d["count"].as_u64().unwrap(),
                ports,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("blocked_port", "block.port[0] 9999", 1, vec![]),
            ("blocked_port", "block.port[1] 6000-6100", 1, vec![]),
            ("blocked_domain", "www.blocked.example", 1, vec![]),
            ("blocked_domain", "sub.blocked.example", 1, vec![]),
            // Closing summaries, in the order their windows opened.
            (
                "blocked_port",
                "block.port[1] 6000-6100",
                4,
                vec![6001, 6050, 6100]
            ),
            ("blocked_domain", "www.blocked.example", 1, vec![53]),
        ],
        "{events:#?}"
    );
    assert_eq!(events[3]["dns"]["transport"], "tcp");
    assert!(events.iter().all(|e| e["src_ip"] == src));
}

#[test]
fn a_snap_length_capture_is_decoded_as_far_as_its_bytes_go() {
    let client = sa("198.18.0.10:40000");
    let server = sa(&format!("{HOST}:80"));
    let mut packets = Vec::new();
    // Data segments: their payload is cut away, their headers are whole.
    for _ in 0..20 {
        packets.push(traffic::tcp(
            client,
            server,
            flags::ACK | flags::PSH,
            &[b'x'; 400],
        ));
        packets.push(traffic::tcp(server, client, flags::ACK, &[b'y'; 1200]));
    }
    // A UDP datagram to a blocked port, its payload cut.
    packets.push(traffic::udp(
        sa("198.18.0.9:5000"),
        sa(&format!("{HOST}:9999")),
        &[0; 300],
    ));
    // An OS SYN: 20 bytes of options, cut inside its TCP header.
    packets.push(traffic::tcp_syn(
        sa("198.18.0.11:40001"),
        server,
        SynStyle::Os,
    ));
    let frames = one_microsecond_apart(packets);
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("snap54.pcap");
    // 14 Ethernet + 20 IPv4 + 20 TCP.
    traffic::write_pcap_snaplen(std::fs::File::create(&pcap).unwrap(), &frames, 54).unwrap();
    let (events, stderr) = replay_file_output(
        &pcap,
        r#"{"home_net": ["198.18.0.1/32"], "block": {"port": [9999]}, "events": {"dns_queries": false}}"#,
    );
    assert_eq!(types(&events), ["drop"], "{events:#?}");
    assert_eq!(events[0]["drop"]["reason"], "blocked_port");
    assert_eq!(events[0]["dest_port"], 9999);
    assert!(
        stderr.contains("replayed 42 packets") && stderr.contains(", 1 truncated"),
        "{stderr}"
    );
    assert!(!stderr.contains("malformed"), "{stderr}");
}

#[test]
fn a_capture_cut_inside_its_last_record_ends_normally_with_its_summaries() {
    let frames: Vec<Frame> = (0..100u64)
        .map(|i| {
            Frame::new(
                T0 + i * 1000,
                traffic::udp(sa("198.18.0.99:5000"), sa(&format!("{HOST}:9")), b"flood"),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("cut.pcap");
    let mut bytes = Vec::new();
    traffic::write_pcap(&mut bytes, &frames).unwrap();
    bytes.truncate(bytes.len() - 10);
    std::fs::write(&pcap, &bytes).unwrap();
    let (events, stderr) = replay_file_output(&pcap, r#"{"block": {"ip": ["198.18.0.99"]}}"#);
    assert!(stderr.contains("cut short"), "{stderr}");
    assert!(stderr.contains("replayed 99 packets"), "{stderr}");
    let counts: Vec<u64> = events
        .iter()
        .map(|e| e["drop"]["count"].as_u64().unwrap())
        .collect();
    assert_eq!(
        counts,
        [1, 98],
        "the closing summary is written: {events:#?}"
    );
}
