use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::*;
use crate::config::SlowScan;

const SCANNER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
const US: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const SERVER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 80));

fn ms(n: u64) -> Timestamp {
    // An arbitrary epoch, so that nothing relies on time starting at zero.
    Timestamp::from_micros(1_700_000_000_000_000 + n * 1_000)
}

fn probe(
    ts: Timestamp,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    shape: ProbeShape,
) -> Probe {
    Probe {
        ts,
        src,
        dst,
        src_port: sport,
        dst_port: dport,
        shape,
        internal: false,
        // As the engine decides for a source outside home_net.
        count: match shape {
            ProbeShape::BareAck | ProbeShape::Maimon => CountOn::Failure,
            _ => CountOn::Sight,
        },
        allowlisted: false,
    }
}

/// A probe from our host to the outside: counts only when refused.
fn outbound(ts: Timestamp, sport: u16, dst: IpAddr, dport: u16, shape: ProbeShape) -> Probe {
    Probe {
        internal: true,
        count: CountOn::Failure,
        ..probe(ts, US, dst, sport, dport, shape)
    }
}

/// The negative answer (RST, ICMP unreachable) to probe `p`.
fn refusal(ts: Timestamp, p: &Probe) -> Answer {
    Answer {
        ts,
        prober: p.src,
        target: p.dst,
        prober_port: p.src_port,
        target_port: p.dst_port,
        proto: p.shape.proto(p.src.is_ipv6()),
    }
}

/// `n` probes of ports `first..first+n` on `US`, `gap_ms` apart from `t0`.
fn port_scan(
    src: IpAddr,
    t0: u64,
    gap_ms: u64,
    first: u16,
    n: u16,
    shape: ProbeShape,
) -> Vec<Probe> {
    (0..n)
        .map(|i| {
            probe(
                ms(t0 + u64::from(i) * gap_ms),
                src,
                US,
                40_000 + i,
                first + i,
                shape,
            )
        })
        .collect()
}

fn run(det: &mut Detector, probes: &[Probe]) -> Vec<ScanFinding> {
    probes.iter().filter_map(|p| det.observe(p)).collect()
}

fn defaults() -> Detector {
    Detector::new(&ScanConfig::default())
}

#[test]
fn syn_scan_is_reported_once_with_the_counts_at_the_threshold() {
    let mut det = defaults();
    let probes = port_scan(SCANNER, 0, 10, 1, 20, ProbeShape::SynRaw);
    let found = run(&mut det, &probes);
    assert_eq!(
        found,
        [ScanFinding {
            src: SCANNER,
            kind: ScanKind::Syn,
            pattern: ScanPattern::Vertical,
            slow: false,
            ports: 6,
            hosts: 1,
            port_sample: vec![1, 2, 3, 4, 5, 6],
            swept_port: None,
            tcp_flags: None,
            probes: 6,
            first_seen: ms(0),
            last_seen: ms(50),
            internal: false,
            allowlisted: false,
        }]
    );
    let st = det.stats();
    assert_eq!(
        (st.findings, st.probes, st.counted, st.sources),
        (1, 20, 20, 1)
    );
}

#[test]
fn five_ports_is_not_a_scan_six_is() {
    let mut det = defaults();
    assert!(run(
        &mut det,
        &port_scan(SCANNER, 0, 100, 1, 5, ProbeShape::SynRaw)
    )
    .is_empty());
    let sixth = probe(ms(600), SCANNER, US, 50_000, 6, ProbeShape::SynRaw);
    assert!(det.observe(&sixth).is_some());
}

#[test]
fn each_probe_shape_names_its_scan() {
    for (shape, kind) in [
        (ProbeShape::SynRaw, ScanKind::Syn),
        (ProbeShape::SynOs, ScanKind::Connect),
        (ProbeShape::Fin, ScanKind::Fin),
        (ProbeShape::Null, ScanKind::Null),
        (ProbeShape::Xmas, ScanKind::Xmas),
        (ProbeShape::BareAck, ScanKind::Ack),
        (ProbeShape::Maimon, ScanKind::Maimon),
        (ProbeShape::Other(0x21), ScanKind::Other),
        (ProbeShape::Udp, ScanKind::Udp),
        (ProbeShape::Sctp, ScanKind::Sctp),
        (ProbeShape::Proto(47), ScanKind::Ipproto),
    ] {
        let mut det = defaults();
        let mut found = Vec::new();
        for (i, p) in port_scan(SCANNER, 0, 10, 1000, 10, shape)
            .iter()
            .enumerate()
        {
            let p = match shape {
                // One probe per protocol number, as nmap -sO sends them.
                ProbeShape::Proto(n) => Probe {
                    shape: ProbeShape::Proto(n + i as u8),
                    src_port: 0,
                    dst_port: 0,
                    ..*p
                },
                _ => *p,
            };
            found.extend(det.observe(&p));
            // Bare ACK and FIN+ACK count when refused.
            found.extend(det.answer(&refusal(p.ts, &p)));
        }
        assert_eq!(found.len(), 1, "{shape:?}");
        assert_eq!(found[0].kind, kind, "{shape:?}");
        assert_eq!(found[0].pattern, ScanPattern::Vertical);
    }
    assert_eq!(ScanKind::Connect.as_str(), "connect");
    assert_eq!(ScanKind::Ack.to_string(), "ack");
    assert_eq!(ScanPattern::Horizontal.as_str(), "horizontal");
}

#[test]
fn kind_is_mixed_unless_one_shape_covers_half() {
    use ProbeShape::*;
    assert_eq!(
        kind_of([SynRaw, SynRaw, SynRaw, SynRaw, Fin, Fin].into_iter()),
        ScanKind::Syn
    );
    assert_eq!(
        kind_of([SynRaw, SynRaw, SynRaw, Fin, Fin, Fin].into_iter()),
        ScanKind::Mixed
    );
    assert_eq!(
        kind_of([SynRaw, SynRaw, Fin, Null, Xmas, Udp].into_iter()),
        ScanKind::Mixed
    );
    assert_eq!(
        kind_of([Udp, Udp, Udp, Fin, Null, Xmas].into_iter()),
        ScanKind::Udp
    );

    // Through the detector: alternating FIN and NULL probes.
    let mut det = defaults();
    let probes: Vec<Probe> = (0..6)
        .map(|i| {
            let shape = if i % 2 == 0 { Fin } else { Null };
            probe(ms(i * 10), SCANNER, US, 40_000, 1 + i as u16, shape)
        })
        .collect();
    let found = run(&mut det, &probes);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, ScanKind::Mixed);
}

#[test]
fn horizontal_sweep_of_one_port() {
    let mut det = defaults();
    let probes: Vec<Probe> = (1..=20u8)
        .map(|h| {
            let dst = IpAddr::V4(Ipv4Addr::new(10, 0, 0, h));
            probe(
                ms(u64::from(h) * 5),
                SCANNER,
                dst,
                41_000,
                22,
                ProbeShape::SynRaw,
            )
        })
        .collect();
    let found = run(&mut det, &probes);
    assert_eq!(found.len(), 1);
    let f = &found[0];
    assert_eq!(f.pattern, ScanPattern::Horizontal);
    assert_eq!(f.kind, ScanKind::Syn);
    assert_eq!((f.hosts, f.ports, f.probes), (11, 1, 11));
    assert_eq!(f.port_sample, [22]);
    assert!(!f.slow);
}

#[test]
fn sweep_of_several_ports_is_still_caught() {
    // Five ports on each of many hosts, interleaved: never more than five
    // ports, but port 1 reaches its 11th host.
    let mut det = defaults();
    let mut probes = Vec::new();
    for h in 1..=20u8 {
        for port in 1..=5u16 {
            let dst = IpAddr::V4(Ipv4Addr::new(10, 0, 1, h));
            let t = u64::from(h) * 50 + u64::from(port);
            probes.push(probe(
                ms(t),
                SCANNER,
                dst,
                42_000 + u16::from(h),
                port,
                ProbeShape::SynRaw,
            ));
        }
    }
    let found = run(&mut det, &probes);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].pattern, ScanPattern::Horizontal);
    assert_eq!((found[0].hosts, found[0].ports), (11, 5));
    assert_eq!(found[0].port_sample, [1, 2, 3, 4, 5]);
}

#[test]
fn busy_honest_client_is_not_a_scanner() {
    // 50 connections to our HTTPS port in 2 s, one per ephemeral port.
    let mut det = defaults();
    let probes: Vec<Probe> = (0..50u16)
        .map(|i| {
            probe(
                ms(u64::from(i) * 40),
                SCANNER,
                US,
                50_000 + i,
                443,
                ProbeShape::SynOs,
            )
        })
        .collect();
    assert!(run(&mut det, &probes).is_empty());
    assert_eq!(det.stats().counted, 50);
}

/// Our host talks to a web server and a DNS server from 50 ephemeral ports
/// each; then come the servers' replies (bare ACKs, UDP answers).
fn client_session(register_outbound: bool) -> Vec<ScanFinding> {
    let mut det = defaults();
    let dns = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 53));
    let mut probes = Vec::new();
    if register_outbound {
        for i in 0..50u16 {
            probes.push(outbound(
                ms(u64::from(i)),
                40_000 + i,
                SERVER,
                443,
                ProbeShape::SynOs,
            ));
            probes.push(outbound(
                ms(u64::from(i)),
                50_000 + i,
                dns,
                53,
                ProbeShape::Udp,
            ));
        }
    }
    for i in 0..50u16 {
        let t = ms(100 + u64::from(i) * 10);
        probes.push(probe(t, SERVER, US, 443, 40_000 + i, ProbeShape::BareAck));
        probes.push(probe(t, dns, US, 53, 50_000 + i, ProbeShape::Udp));
    }
    run(&mut det, &probes)
}

#[test]
fn server_replies_on_known_flows_are_not_probes() {
    assert!(client_session(true).is_empty());
    // The same replies without our side of the flows: the UDP answers look
    // like a scan (flow tracking is what tells them apart), the bare ACKs
    // still do not (they count only when refused by a RST).
    let found = client_session(false);
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].kind, found[0].ports), (ScanKind::Udp, 6));
}

#[test]
fn outbound_probes_count_only_when_refused() {
    let mut det = defaults();
    let probes: Vec<Probe> = (1..=100u16)
        .map(|p| outbound(ms(u64::from(p)), 33_000, SERVER, p, ProbeShape::SynRaw))
        .collect();
    assert!(run(&mut det, &probes).is_empty());
    let st = det.stats();
    assert_eq!((st.counted, st.sources, st.flows), (0, 0, 100));
    // The server refuses six of them: our host is a scanner (internal).
    let mut found = Vec::new();
    for p in &probes[..6] {
        found.extend(det.answer(&refusal(ms(200), p)));
    }
    assert_eq!(found.len(), 1);
    let f = &found[0];
    assert_eq!(
        (f.src, f.kind, f.ports, f.internal),
        (US, ScanKind::Syn, 6, true)
    );
    // An answer from the prober's own side, or a second one, counts nothing.
    let before = det.stats().counted;
    let p = &probes[50];
    let mut backwards = refusal(ms(300), p);
    std::mem::swap(&mut backwards.prober, &mut backwards.target);
    std::mem::swap(&mut backwards.prober_port, &mut backwards.target_port);
    assert!(det.answer(&backwards).is_none());
    assert!(det.answer(&refusal(ms(300), &probes[0])).is_none());
    assert_eq!(det.stats().counted, before);
}

#[test]
fn honest_client_with_refused_and_unanswered_connections_is_silent() {
    // A P2P client calls 200 peers, each on its own port, half of them
    // refused; a browser opens 60 connections to 60 servers on 443.
    let mut det = defaults();
    let mut found = Vec::new();
    for i in 0..200u16 {
        let peer = IpAddr::V4(Ipv4Addr::new(198, 51, 100, i as u8));
        let p = outbound(
            ms(u64::from(i)),
            40_000 + i,
            peer,
            6_000 + i,
            ProbeShape::SynOs,
        );
        found.extend(det.observe(&p));
        if i % 2 == 0 {
            found.extend(det.answer(&refusal(ms(u64::from(i) + 1), &p)));
        }
    }
    for i in 0..60u16 {
        let server = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100 + i as u8));
        let p = outbound(
            ms(300 + u64::from(i)),
            50_000 + i,
            server,
            443,
            ProbeShape::SynOs,
        );
        found.extend(det.observe(&p));
    }
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn bare_acks_of_connections_open_before_we_started_are_silent() {
    // Mid-session: eight servers' bare ACKs and FIN+ACKs on many ports,
    // never refused, never count; the same shapes refused by RST do.
    let mut det = defaults();
    for i in 0..200u16 {
        let server = IpAddr::V4(Ipv4Addr::new(198, 51, 100, (i % 8) as u8));
        let shape = if i % 3 == 0 {
            ProbeShape::Maimon
        } else {
            ProbeShape::BareAck
        };
        assert!(det
            .observe(&probe(ms(u64::from(i)), server, US, 443, 40_000 + i, shape))
            .is_none());
    }
    assert_eq!(det.stats().counted, 0);
    let mut found = Vec::new();
    for p in port_scan(SCANNER, 1000, 1, 1, 10, ProbeShape::BareAck) {
        found.extend(det.observe(&p));
        found.extend(det.answer(&refusal(ms(1000 + u64::from(p.dst_port)), &p)));
    }
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].kind, found[0].ports), (ScanKind::Ack, 6));
}

#[test]
fn vertical_counts_ports_of_one_host() {
    // Five ports on each of 8 hosts: no host has six, no port has eleven
    // hosts: not a scan. A sixth port on one host is.
    let mut det = defaults();
    let mut found = Vec::new();
    for h in 0..8u8 {
        for port in 1..=5u16 {
            let dst = IpAddr::V4(Ipv4Addr::new(192, 0, 2, h));
            found.extend(det.observe(&probe(
                ms(u64::from(h) * 10 + u64::from(port)),
                SCANNER,
                dst,
                40_000,
                port,
                ProbeShape::SynRaw,
            )));
        }
    }
    assert!(found.is_empty(), "{found:?}");
    let dst = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3));
    let f = det
        .observe(&probe(
            ms(200),
            SCANNER,
            dst,
            40_000,
            99,
            ProbeShape::SynRaw,
        ))
        .expect("six ports of one host");
    assert_eq!((f.pattern, f.ports, f.hosts), (ScanPattern::Vertical, 6, 8));
}

#[test]
fn many_targets_in_one_window_fire_as_wide() {
    // Five ports on each of 11 hosts, interleaved: 55 distinct targets
    // fill the set with no host over five ports and no port over ten
    // hosts: a network scan, reported horizontal (more hosts than ports).
    let mut det = defaults();
    let mut found = Vec::new();
    let mut t = 0;
    for port in 1..=5u16 {
        for h in 0..11u8 {
            t += 1;
            let dst = IpAddr::V4(Ipv4Addr::new(192, 0, 2, h));
            found.extend(det.observe(&probe(
                ms(t),
                SCANNER,
                dst,
                40_000,
                port,
                ProbeShape::SynRaw,
            )));
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].pattern, ScanPattern::Horizontal);
    assert_eq!(found[0].hosts, 11);
}

#[test]
fn episode_summary_counts_the_whole_scan() {
    let mut det = defaults();
    let probes = port_scan(SCANNER, 0, 1, 1, 10_000, ProbeShape::SynRaw);
    let found = run(&mut det, &probes);
    assert_eq!(found.len(), 1);
    assert_eq!(det.drain_ends().count(), 0);
    // Still scanning at 9.999 s: not over. Quiet for a window: over.
    det.expire(ms(10_000 + 9_000));
    assert_eq!(det.drain_ends().count(), 0);
    det.expire(ms(10_000 + 10_000));
    let ends: Vec<ScanSummary> = det.drain_ends().collect();
    assert_eq!(ends.len(), 1);
    let e = &ends[0];
    assert_eq!(
        (e.src, e.kind, e.pattern),
        (SCANNER, ScanKind::Syn, ScanPattern::Vertical)
    );
    assert_eq!((e.ports, e.hosts, e.probes), (10_000, 1, 10_000));
    assert_eq!((e.first_seen, e.last_seen), (ms(0), ms(9_999)));
    assert_eq!(e.port_sample, (1..=16).collect::<Vec<u16>>());
    assert!(det.stats().episodes == 0);
}

#[test]
fn a_sweep_summary_names_the_port_and_counts_hosts() {
    let mut det = defaults();
    let mut found = Vec::new();
    for i in 0..300u16 {
        let dst = IpAddr::V4(Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8));
        found.extend(det.observe(&probe(
            ms(u64::from(i)),
            SCANNER,
            dst,
            40_000,
            0,
            ProbeShape::Icmp(8),
        )));
    }
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].kind, found[0].pattern, found[0].hosts),
        (ScanKind::Icmp, ScanPattern::Horizontal, 11)
    );
    det.finish();
    let ends: Vec<ScanSummary> = det.drain_ends().collect();
    assert_eq!(ends.len(), 1);
    assert_eq!(
        (ends[0].swept_port, ends[0].ports, ends[0].probes),
        (Some(8), 1, 300)
    );
    // 300 hosts: past the exact list, estimated closely.
    assert!(ends[0].hosts_estimated);
    assert!((290..=310).contains(&ends[0].hosts), "{}", ends[0].hosts);
}

#[test]
fn unusual_flags_are_named_other_with_their_flags() {
    let mut det = defaults();
    let found = run(
        &mut det,
        &port_scan(SCANNER, 0, 1, 1, 10, ProbeShape::Other(0x03)),
    );
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].kind, found[0].tcp_flags),
        (ScanKind::Other, Some(0x03))
    );
}

#[test]
fn episodes_are_bounded() {
    let mut det = defaults();
    for s in 0..(MAX_EPISODES as u32 + 10) {
        let src = IpAddr::V4(Ipv4Addr::from(0xcb00_0000 + s));
        let t = u64::from(s);
        assert!(run(&mut det, &port_scan(src, t, 0, 1, 6, ProbeShape::SynRaw)).len() == 1);
    }
    let st = det.stats();
    assert_eq!(st.episodes, MAX_EPISODES);
    assert_eq!(st.episode_evictions, 10);
    assert_eq!(det.drain_ends().count(), 10);
    assert!(st.approx_bytes <= det.max_bytes());
}

#[test]
fn retransmissions_on_one_flow_count_once() {
    let mut det = defaults();
    for i in 0..10 {
        assert!(det
            .observe(&probe(
                ms(i * 500),
                SCANNER,
                US,
                40_000,
                80,
                ProbeShape::SynRaw
            ))
            .is_none());
    }
    assert_eq!(det.stats().counted, 1);
}

#[test]
fn a_flow_is_forgotten_after_flow_timeout() {
    let cfg = ScanConfig {
        flow_timeout: Duration::from_secs(120),
        ..ScanConfig::default()
    };
    let mut det = Detector::new(&cfg);
    det.observe(&outbound(ms(0), 40_000, SERVER, 443, ProbeShape::Udp));
    det.observe(&probe(
        ms(119_000),
        SERVER,
        US,
        443,
        40_000,
        ProbeShape::Udp,
    ));
    assert_eq!(det.stats().counted, 0, "known flow, refreshed");
    det.observe(&probe(
        ms(238_000),
        SERVER,
        US,
        443,
        40_000,
        ProbeShape::Udp,
    ));
    assert_eq!(det.stats().counted, 0, "refreshed at 119 s, still known");
    det.observe(&probe(
        ms(358_000),
        SERVER,
        US,
        443,
        40_000,
        ProbeShape::Udp,
    ));
    assert_eq!(det.stats().counted, 1, "silent for 120 s: a new flow");
}

#[test]
fn slow_scan_needs_the_slow_window() {
    // 20 ports, one every 15 s.
    let probes = port_scan(SCANNER, 0, 15_000, 100, 20, ProbeShape::SynRaw);
    assert!(run(&mut defaults(), &probes).is_empty());

    let cfg = ScanConfig {
        slow: Some(SlowScan {
            window: Duration::from_secs(600),
            port_threshold: 15,
        }),
        ..ScanConfig::default()
    };
    let mut det = Detector::new(&cfg);
    let found = run(&mut det, &probes);
    assert_eq!(found.len(), 1);
    let f = &found[0];
    assert!(f.slow);
    assert_eq!(f.pattern, ScanPattern::Vertical);
    assert_eq!(f.kind, ScanKind::Syn);
    assert_eq!((f.ports, f.hosts, f.probes), (16, 1, 16));
    assert_eq!(f.port_sample, (100..116).collect::<Vec<u16>>());
    assert_eq!((f.first_seen, f.last_seen), (ms(0), ms(15 * 15_000)));
}

#[test]
fn a_fast_scan_with_the_slow_window_on_is_reported_once() {
    let cfg = ScanConfig {
        slow: Some(SlowScan {
            window: Duration::from_secs(600),
            port_threshold: 15,
        }),
        ..ScanConfig::default()
    };
    let mut det = Detector::new(&cfg);
    let found = run(
        &mut det,
        &port_scan(SCANNER, 0, 10, 1, 40, ProbeShape::SynRaw),
    );
    assert_eq!(found.len(), 1);
    assert!(!found[0].slow);
    // Quiet for a window, then a little more: a new episode from a clean
    // slate, not the old ports counted again by the slow window.
    let found = run(
        &mut det,
        &port_scan(SCANNER, 20_000, 10, 1, 5, ProbeShape::SynRaw),
    );
    assert!(found.is_empty());
}

#[test]
fn one_finding_per_episode() {
    let mut det = defaults();
    let found = run(
        &mut det,
        &port_scan(SCANNER, 0, 10, 1, 20, ProbeShape::SynRaw),
    );
    assert_eq!(found.len(), 1);
    // 60 more probes right after (new ports, and the old ones from new
    // source ports): still the same episode.
    let more: Vec<Probe> = (0..60u16)
        .map(|i| {
            probe(
                ms(200 + u64::from(i) * 100),
                SCANNER,
                US,
                45_000 + i,
                1 + i % 40,
                ProbeShape::SynRaw,
            )
        })
        .collect();
    assert!(run(&mut det, &more).is_empty());
    // Last probe at 6.1 s; 9.9 s later is not quiet enough...
    let almost = port_scan(SCANNER, 6_100 + 9_900, 1_000, 2_000, 10, ProbeShape::Fin);
    assert!(run(&mut det, &almost).is_empty());
    // ...and that kept the episode alive. A full quiet window re-arms.
    let again = port_scan(
        SCANNER,
        6_100 + 9_900 + 9_000 + 10_000,
        10,
        3_000,
        20,
        ProbeShape::Fin,
    );
    let found = run(&mut det, &again);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].kind, ScanKind::Fin);
    assert_eq!((found[0].ports, found[0].probes), (6, 6));
    assert_eq!(found[0].port_sample, [3000, 3001, 3002, 3003, 3004, 3005]);
    assert_eq!(det.stats().findings, 2);
}

#[test]
fn allowlisted_source_is_reported_as_such() {
    let mut det = defaults();
    let probes: Vec<Probe> = port_scan(SCANNER, 0, 10, 1, 10, ProbeShape::SynRaw)
        .into_iter()
        .map(|p| Probe {
            allowlisted: true,
            ..p
        })
        .collect();
    let found = run(&mut det, &probes);
    assert_eq!(found.len(), 1);
    assert!(found[0].allowlisted);
}

#[test]
fn ipv6_scan() {
    let src = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 1));
    let dst = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    let mut det = defaults();
    let probes: Vec<Probe> = (0..20u16)
        .map(|i| {
            probe(
                ms(u64::from(i)),
                src,
                dst,
                60_000,
                8000 + i,
                ProbeShape::Udp,
            )
        })
        .collect();
    let found = run(&mut det, &probes);
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].src, found[0].kind, found[0].ports),
        (src, ScanKind::Udp, 6)
    );

    // A sweep of 20 addresses of one /64 on port 22.
    let mut det = defaults();
    let probes: Vec<Probe> = (1..=20u16)
        .map(|h| {
            let dst = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, h));
            probe(ms(u64::from(h)), src, dst, 60_000, 22, ProbeShape::SynRaw)
        })
        .collect();
    let found = run(&mut det, &probes);
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].pattern, found[0].hosts),
        (ScanPattern::Horizontal, 11)
    );
}

#[test]
fn disabled_finds_nothing_and_holds_nothing() {
    let mut det = Detector::new(&ScanConfig {
        enabled: false,
        ..ScanConfig::default()
    });
    assert!(run(
        &mut det,
        &port_scan(SCANNER, 0, 10, 1, 100, ProbeShape::SynRaw)
    )
    .is_empty());
    let st = det.stats();
    assert_eq!((st.sources, st.flows, st.probes, st.findings), (0, 0, 0, 0));
}

#[test]
fn expire_forgets_sources_and_flows() {
    let mut det = defaults();
    run(
        &mut det,
        &port_scan(SCANNER, 0, 10, 1, 3, ProbeShape::SynRaw),
    );
    run(
        &mut det,
        &[outbound(ms(30), 40_000, SERVER, 443, ProbeShape::SynOs)],
    );
    let full = det.stats();
    assert_eq!((full.sources, full.flows), (1, 4));

    det.expire(ms(9_000));
    assert_eq!((det.stats().sources, det.stats().flows), (1, 4));
    det.expire(ms(10_020));
    assert_eq!(
        (det.stats().sources, det.stats().flows),
        (0, 4),
        "quiet for a window"
    );
    det.expire(ms(120_025));
    assert_eq!(det.stats().flows, 1, "the outbound flow is the youngest");
    det.expire(ms(200_000));
    let st = det.stats();
    assert_eq!(st.flows, 0);
    assert!(st.approx_bytes < full.approx_bytes);

    // A source forgotten with three ports in: three more are not a scan.
    assert!(run(
        &mut det,
        &port_scan(SCANNER, 300_000, 10, 4, 3, ProbeShape::SynRaw)
    )
    .is_empty());
}

#[test]
fn spoofed_flood_stays_bounded() {
    let cfg = ScanConfig::default();
    let mut det = Detector::new(&cfg);
    // Our own connection, made before the flood...
    det.observe(&outbound(ms(0), 40_000, SERVER, 443, ProbeShape::SynOs));
    let n = 1_000_000u32;
    for i in 0..n {
        let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        let p = probe(
            ms(1 + u64::from(i / 100)),
            src,
            US,
            (i % 60_000) as u16,
            (i % 1024) as u16,
            ProbeShape::SynRaw,
        );
        assert!(det.observe(&p).is_none());
    }
    let st = det.stats();
    assert_eq!(st.sources, cfg.max_sources);
    assert_eq!(st.source_evictions, u64::from(n) - cfg.max_sources as u64);
    assert!(st.flows <= cfg.max_flows);
    assert_eq!(st.flow_evictions, u64::from(n) - (cfg.max_flows / 2) as u64);
    assert!(
        st.approx_bytes <= det.max_bytes(),
        "{} > {}",
        st.approx_bytes,
        det.max_bytes()
    );
    // Per tracked source (slot, index, one 4-entry set) and flow, generously.
    let bound = cfg.max_sources * 256 + cfg.max_flows * 80;
    assert!(st.approx_bytes <= bound, "{} > {bound}", st.approx_bytes);
    println!(
        "flood: {} sources, {} flows, approx {} bytes (max_bytes {})",
        st.sources,
        st.flows,
        st.approx_bytes,
        det.max_bytes()
    );

    // ...is still known: the server's reply is not a probe.
    let reply = probe(ms(11_000), SERVER, US, 443, 40_000, ProbeShape::BareAck);
    det.observe(&reply);
    assert_eq!(det.stats().counted, st.counted);
    // And a real scan right after the flood is still caught.
    assert_eq!(
        run(
            &mut det,
            &port_scan(SCANNER, 11_001, 1, 1, 10, ProbeShape::SynRaw)
        )
        .len(),
        1
    );
}

#[test]
fn worst_case_sources_stay_under_max_bytes() {
    // Every source probes 5 ports on each of 10 hosts (just under both
    // thresholds) so that each holds full sets.
    let cfg = ScanConfig {
        max_sources: 500,
        max_flows: 4096,
        ..ScanConfig::default()
    };
    let mut det = Detector::new(&cfg);
    for s in 0..2_000u32 {
        let src = IpAddr::V4(Ipv4Addr::from(0xc633_6400 + s));
        for h in 0..10u32 {
            for port in 1..=5u16 {
                let dst = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + h));
                let p = probe(ms(u64::from(s)), src, dst, 1000, port, ProbeShape::SynRaw);
                assert!(det.observe(&p).is_none());
            }
        }
    }
    let st = det.stats();
    assert_eq!(st.sources, 500);
    assert!(
        st.approx_bytes <= det.max_bytes(),
        "{} > {}",
        st.approx_bytes,
        det.max_bytes()
    );
    // The sets are really held: 500 sources x (6 + 51) x 16 bytes at most,
    // at least the 50 pairs and 5 ports each.
    assert!(st.approx_bytes >= 500 * 55 * 16);
}

#[test]
fn thread_reports_a_scan_and_shuts_down() {
    let t = DetectorThread::spawn(ScanConfig::default(), 1024).unwrap();
    for p in port_scan(SCANNER, 0, 10, 1, 20, ProbeShape::SynRaw) {
        assert!(t.offer(p));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut found = Vec::new();
    while found.is_empty() && Instant::now() < deadline {
        found = t.try_findings();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(found.len(), 1);
    let Report::Start(f) = &found[0] else {
        panic!("{found:?}")
    };
    assert_eq!((f.src, f.ports), (SCANNER, 6));
    // A second scanner, queued right before shutdown: drained, not lost.
    let other = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 8));
    for p in port_scan(other, 100, 10, 1, 10, ProbeShape::Udp) {
        assert!(t.offer(p));
    }
    let (stats, rest) = t.shutdown();
    // The second scan's start, then both episodes' summaries (shutdown
    // ends every episode).
    let starts: Vec<&ScanFinding> = rest
        .iter()
        .filter_map(|r| match r {
            Report::Start(f) => Some(f),
            Report::End(_) => None,
        })
        .collect();
    assert_eq!(starts.len(), 1, "{rest:?}");
    assert_eq!((starts[0].src, starts[0].kind), (other, ScanKind::Udp));
    let mut ended: Vec<IpAddr> = rest
        .iter()
        .filter_map(|r| match r {
            Report::End(e) => Some(e.src),
            Report::Start(_) => None,
        })
        .collect();
    ended.sort();
    assert_eq!(ended, [SCANNER, other]);
    assert_eq!((stats.findings, stats.probes, stats.sources), (2, 30, 2));
}

#[test]
fn thread_offer_never_blocks_when_full() {
    let t = DetectorThread::spawn(ScanConfig::default(), 1).unwrap();
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..100_000u32 {
        let src = IpAddr::V4(Ipv4Addr::from(i));
        let p = probe(ms(u64::from(i)), src, US, 1, 2, ProbeShape::SynRaw);
        let t0 = Instant::now();
        t.offer(p);
        slowest = slowest.max(t0.elapsed());
    }
    let elapsed = start.elapsed();
    assert!(t.dropped() > 0);
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    // No single offer waited for the detector (a scheduling hiccup aside).
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    let dropped = t.dropped();
    let (stats, _) = t.shutdown();
    assert_eq!(stats.probes + dropped, 100_000);
}

/// CPU time this thread has run, from the scheduler (ns), so that other
/// processes on a busy machine do not count; `None` off Linux.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// ns per `observe` over `probes` (best of three runs on fresh detectors,
/// thread CPU time where available), expiring as the engine would.
fn time_per_probe(probes: &[Probe]) -> (f64, usize, DetectorStats) {
    let mut best = f64::MAX;
    let mut out = (0, DetectorStats::default());
    for _ in 0..3 {
        let mut det = defaults();
        let (wall, cpu) = (Instant::now(), thread_cpu_ns());
        let mut findings = 0;
        for (i, p) in probes.iter().enumerate() {
            findings += usize::from(det.observe(p).is_some());
            if i % 65_536 == 0 {
                det.expire(p.ts);
            }
        }
        let ns = match (cpu, thread_cpu_ns()) {
            (Some(a), Some(b)) => b - a,
            _ => wall.elapsed().as_nanos() as u64,
        };
        best = best.min(ns as f64 / probes.len() as f64);
        out = (findings, det.stats());
    }
    (best, out.0, out.1)
}

/// Timing, asserted only with optimizations (the test command runs the
/// suite in release): `cargo test --release -p portcullis-engine
/// detector::tests::throughput -- --nocapture`.
#[test]
#[cfg_attr(debug_assertions, ignore = "timing: run with --release")]
fn throughput() {
    const N: u32 = 2_000_000;
    let spoofed = |i: u32, ts| {
        let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        probe(ts, src, US, 1234, (i % 1000) as u16, ProbeShape::SynRaw)
    };
    // Worst case: every probe a new flow from a new source, both tables
    // full and evicting.
    let flood: Vec<Probe> = (0..N).map(|i| spoofed(i, ms(u64::from(i / 50)))).collect();
    // A mix: spoofed sources, 64 scanners, a busy client, our own
    // connections and the replies to them.
    let mix: Vec<Probe> = (0..N)
        .map(|i| {
            let ts = ms(u64::from(i / 50));
            let eph = (i >> 3) as u16;
            match i % 8 {
                0 | 1 => spoofed(i, ts),
                2 | 3 => {
                    let src = IpAddr::V4(Ipv4Addr::from(0xcb00_7100 + i % 64));
                    probe(ts, src, US, eph, (i % 5000) as u16, ProbeShape::SynRaw)
                }
                4 => probe(ts, SCANNER, US, eph, 443, ProbeShape::SynOs),
                5 => outbound(ts, eph, SERVER, 443, ProbeShape::SynOs),
                _ => probe(ts, SERVER, US, 443, eph, ProbeShape::BareAck),
            }
        })
        .collect();
    // Steady traffic on known flows only (after the first pass).
    let known: Vec<Probe> = (0..N)
        .map(|i| {
            probe(
                ms(u64::from(i / 50)),
                SERVER,
                US,
                443,
                (i % 50_000) as u16,
                ProbeShape::BareAck,
            )
        })
        .collect();
    let mut worst: f64 = 0.0;
    for (name, probes) in [("flood", &flood), ("mix", &mix), ("known", &known)] {
        let (ns, findings, st) = time_per_probe(probes);
        println!(
            "{name}: {ns:.0} ns/probe over {} probes ({findings} findings, {} sources, {} flows, {} bytes)",
            probes.len(),
            st.sources,
            st.flows,
            st.approx_bytes
        );
        worst = worst.max(ns);
    }
    println!(
        "sizes: flow slot {} B, source slot {} B, target {} B",
        size_of::<FlowKey>() + size_of::<Timestamp>() + 8,
        size_of::<SourceKey>() + size_of::<Source>() + 8,
        size_of::<Target>()
    );
    if !cfg!(debug_assertions) {
        assert!(worst < 1_000.0, "{worst} ns/probe");
    }
}

#[test]
fn the_documented_memory_bounds_hold() {
    // docs/rules.md, "How scans are detected": at most 1.4 KiB a source
    // with the default thresholds, 11 KiB an open episode, 160 MiB in all.
    let det = defaults();
    let per_source = det.max_bytes_per_source();
    let per_episode = Detector::max_bytes_per_episode();
    eprintln!(
        "per source {per_source} B, per episode {per_episode} B, all {} B",
        det.max_bytes()
    );
    assert!(per_source <= 1_440, "{per_source}");
    assert!(per_episode <= 11 * 1024, "{per_episode}");
    assert!(det.max_bytes() <= 160 << 20, "{}", det.max_bytes());
}
