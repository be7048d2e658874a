//! Engine tests for what replay tests do not reach: the ban table, reload,
//! restored bans, direction inference, forwarded LAN clients.

use std::net::{IpAddr, SocketAddr};

use portcullis_traffic as traffic;
use portcullis_wire::LinkType;

use super::*;
use crate::config::NoLists;
use crate::events::EventType;

const T0: u64 = 1_795_000_000_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn engine(json: &str) -> Engine {
    let cfg = Config::from_json_str(json, &NoLists).unwrap();
    Engine::new(Arc::new(cfg), DetectorMode::Inline).unwrap()
}

fn feed(e: &mut Engine, frames: &[traffic::Frame], dir: Option<Direction>) -> Vec<Verdict> {
    frames
        .iter()
        .map(|f| {
            e.process(&PacketIn {
                data: &f.data,
                link: LinkType::Ethernet,
                ts: Timestamp::from_micros(f.ts_micros),
                dir,
                orig_len: None,
            })
        })
        .collect()
}

fn ban(addr: &str, since: u64, until: u64) -> Ban {
    Ban {
        addr: ip(addr),
        since: Timestamp::from_secs(since),
        until: Timestamp::from_secs(until),
        reason: "manual".into(),
    }
}

#[test]
fn ban_table_expires_in_order_and_ignores_stale_heap_entries() {
    let mut t = BanTable::default();
    let added = Inserted::Added { evicted: None };
    assert_eq!(t.insert(ban("198.18.0.1", 0, 10)), added);
    assert_eq!(t.insert(ban("198.18.0.2", 0, 20)), added);
    // Extending a ban leaves a stale heap entry at 10.
    assert_eq!(t.insert(ban("198.18.0.1", 5, 30)), added);
    assert_eq!(
        t.insert(ban("198.18.0.1", 6, 25)),
        Inserted::Unchanged,
        "a shorter ban changes nothing"
    );
    assert!(t.expire(Timestamp::from_secs(15)).is_empty());
    let gone = t.expire(Timestamp::from_secs(20));
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].addr, ip("198.18.0.2"));
    assert_eq!(t.expire(Timestamp::from_secs(30))[0].addr, ip("198.18.0.1"));
    assert!(t.is_empty());
}

#[test]
fn direction_is_inferred_from_home_net() {
    let p = |s: &str, d: &str| {
        let f = traffic::udp(
            SocketAddr::new(ip(s), 1000),
            SocketAddr::new(ip(d), 2000),
            b"",
        );
        portcullis_wire::decode(LinkType::Ethernet, &f).unwrap()
    };
    let home = ["198.18.0.0/24".parse().unwrap()];
    assert_eq!(
        infer_direction(&home, &p("198.19.0.1", "198.18.0.1")),
        Direction::Inbound
    );
    assert_eq!(
        infer_direction(&home, &p("198.18.0.1", "198.19.0.1")),
        Direction::Outbound
    );
    assert_eq!(
        infer_direction(&home, &p("198.18.0.1", "198.18.0.2")),
        Direction::Forwarded
    );
    assert_eq!(
        infer_direction(&[], &p("198.18.0.1", "198.19.0.1")),
        Direction::Inbound
    );
}

#[test]
fn lan_clients_behind_a_gateway_are_not_sweepers() {
    // A LAN browser reaches 20 web servers on 443 through the gateway.
    let mut e = engine(r#"{"home_net": ["198.18.0.0/24"]}"#);
    let servers: Vec<IpAddr> = (1..=20).map(|i| ip(&format!("198.19.0.{i}"))).collect();
    let frames = traffic::sweep(ip("198.18.0.10"), &servers, 443, T0, 10_000);
    feed(&mut e, &frames, Some(Direction::Forwarded));
    assert_eq!(e.counters().scans, 0);
    // The same from outside home_net is a sweep.
    let frames = traffic::sweep(ip("198.19.9.9"), &servers, 443, T0 + 1_000_000, 10_000);
    feed(&mut e, &frames, Some(Direction::Forwarded));
    assert_eq!(e.counters().scans, 1);
}

#[test]
fn reload_keeps_bans_but_lifts_newly_allowlisted_ones() {
    let mut e = engine("{}");
    let now = Timestamp::from_micros(T0);
    assert!(e.ban(
        ip("198.18.0.66"),
        now,
        Duration::from_secs(600),
        "manual".into()
    ));
    assert!(e.ban(
        ip("198.18.0.77"),
        now,
        Duration::from_secs(600),
        "manual".into()
    ));
    e.drain_events().for_each(drop);
    let cfg = Config::from_json_str(r#"{"allow": {"ip": ["198.18.0.77"]}}"#, &NoLists).unwrap();
    e.reload(Arc::new(cfg)).unwrap();
    assert!(e.bans().get(&ip("198.18.0.66")).is_some());
    assert!(e.bans().get(&ip("198.18.0.77")).is_none());
    let evs: Vec<_> = e.drain_events().collect();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].event_type(), EventType::Unban);
    assert!(
        matches!(&evs[0].body, Body::Unban(u) if u.ban.reason == UnbanReason::Allowlisted),
        "{evs:?}"
    );
    // And the new rules apply to the next packet.
    let ping = traffic::icmp_echo(ip("198.18.0.66"), ip("198.18.0.1"), 1, 1);
    let v = feed(&mut e, &[traffic::Frame::new(T0 + 1, ping)], None);
    assert_eq!(v[0].reason, Reason::Banned);
}

#[test]
fn reload_with_new_scan_settings_restarts_the_detector() {
    let mut e = engine(r#"{"scan": {"port_threshold": 50}}"#);
    let scan = |t0| {
        traffic::port_scan(
            ip("198.18.0.66"),
            ip("198.18.0.1"),
            &(1..=20).collect::<Vec<_>>(),
            traffic::ScanShape::Syn,
            t0,
            1_000,
        )
    };
    feed(&mut e, &scan(T0), None);
    assert_eq!(e.counters().scans, 0, "20 ports are under 50");
    e.reload(Arc::new(Config::from_json_str("{}", &NoLists).unwrap()))
        .unwrap();
    feed(&mut e, &scan(T0 + 60_000_000), None);
    assert_eq!(e.counters().scans, 1);
}

#[test]
fn restored_bans_apply_without_a_new_ban_event() {
    let mut e = engine(r#"{"allow": {"ip": ["198.18.0.77"]}}"#);
    let now = Timestamp::from_secs(1000);
    assert!(e.restore_ban(ban("198.18.0.66", 900, 1500), now));
    assert!(
        !e.restore_ban(ban("198.18.0.67", 100, 999), now),
        "already over"
    );
    assert!(
        !e.restore_ban(ban("198.18.0.77", 900, 1500), now),
        "allowlisted"
    );
    assert_eq!(e.drain_events().count(), 0);
    assert_eq!(e.bans().len(), 1);
    e.tick(Timestamp::from_secs(1500));
    let evs: Vec<_> = e.drain_events().collect();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].event_type(), EventType::Unban);
}

#[test]
fn protected_addresses_are_accepted_never_banned_and_named() {
    let mut cfg = Config::from_json_str(
        r#"{"block": {"ip": ["198.18.0.0/24"]}, "allow": {"ip": ["198.18.1.1"]}}"#,
        &NoLists,
    )
    .unwrap();
    cfg.rules.protect(&["198.18.0.9/32".parse().unwrap()]);
    let export = cfg.rules.export();
    assert_eq!(
        export.allow_v4.len(),
        2,
        "the kernel's allow set gets it too"
    );
    let mut e = Engine::new(Arc::new(cfg), DetectorMode::Inline).unwrap();
    let now = Timestamp::from_micros(T0);
    assert!(!e.ban(
        ip("198.18.0.9"),
        now,
        Duration::from_secs(60),
        "manual".into()
    ));
    assert!(e.ban(
        ip("198.18.0.8"),
        now,
        Duration::from_secs(60),
        "manual".into()
    ));
    let ping = |src| traffic::icmp_echo(ip(src), ip("198.18.9.1"), 1, 1);
    let v = feed(
        &mut e,
        &[
            traffic::Frame::new(T0 + 1, ping("198.18.0.9")),
            traffic::Frame::new(T0 + 2, ping("198.18.0.8")),
            traffic::Frame::new(T0 + 3, ping("198.18.0.7")),
        ],
        Some(Direction::Inbound),
    );
    assert_eq!(v[0].reason, Reason::AllowIp);
    assert_eq!(
        e.config().rules.describe(v[0].rule.unwrap()),
        "protected[0] 198.18.0.9"
    );
    assert_eq!(v[1].reason, Reason::Banned);
    assert_eq!(v[2].reason, Reason::BlockedIp);
}

#[test]
fn probes_wait_for_their_batch_at_most_probe_delay() {
    let cfg = Config::from_json_str("{}", &NoLists).unwrap();
    let mut e = Engine::new(Arc::new(cfg), DetectorMode::Thread { capacity: 64 }).unwrap();
    let syn = |port: u16, us: u64| {
        let src: SocketAddr = "198.18.0.66:40000".parse().unwrap();
        let dst = SocketAddr::new(ip("198.18.0.1"), port);
        traffic::Frame::new(T0 + us, traffic::tcp_syn(src, dst, traffic::SynStyle::Nmap))
    };
    let seen = |e: &Engine| e.detector_stats().map_or(0, |s| s.probes);
    // Two probes 1 ms apart: younger than PROBE_DELAY, they stay here.
    feed(
        &mut e,
        &[syn(1, 0), syn(2, 1_000)],
        Some(Direction::Inbound),
    );
    e.flush_due();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(seen(&e), 0, "sent before PROBE_DELAY");
    // A packet 2 ms after the first: the batch goes.
    feed(
        &mut e,
        &[syn(3, PROBE_DELAY.as_micros() as u64)],
        Some(Direction::Inbound),
    );
    e.flush_due();
    let t = std::time::Instant::now();
    while seen(&e) < 3 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(seen(&e), 3);
}

/// The drop events an engine wrote, in order.
fn drops(e: &mut Engine) -> Vec<Event> {
    e.drain_events()
        .filter(|ev| ev.event_type() == EventType::Drop)
        .collect()
}

fn sock(a: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(a), port)
}

#[test]
fn two_rules_hit_by_one_source_are_two_events() {
    let mut e =
        engine(r#"{"block": {"port": [9999, "6000-6100"]}, "events": {"dns_queries": false}}"#);
    let src = "198.18.0.9";
    let mut frames = vec![traffic::Frame::new(
        T0,
        traffic::udp(sock(src, 5000), sock("198.18.0.1", 9999), b"x"),
    )];
    for (i, port) in [6000u16, 6001, 6050, 6001].into_iter().enumerate() {
        frames.push(traffic::Frame::new(
            T0 + 1 + i as u64,
            traffic::udp(sock(src, 5000), sock("198.18.0.1", port), b"x"),
        ));
    }
    feed(&mut e, &frames, None);
    e.finish();
    let d = drops(&mut e);
    let summary: Vec<_> = d
        .iter()
        .map(|ev| {
            let info = ev.drop_info().unwrap();
            (
                info.rule.clone().unwrap(),
                info.count,
                info.dest_ports.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("block.port[0] 9999".to_owned(), 1, vec![]),
            ("block.port[1] 6000-6100".to_owned(), 1, vec![]),
            // The closing summary: three more, to these ports.
            ("block.port[1] 6000-6100".to_owned(), 3, vec![6001, 6050]),
        ],
        "{d:#?}"
    );
    assert_eq!(d[1].flow().unwrap().dest_port, Some(6000));
}

#[test]
fn two_blocked_names_from_one_source_are_two_events() {
    let mut e = engine(r#"{"block": {"domain": ["blocked.example"]}}"#);
    let (c, r) = (sock("198.18.0.2", 40000), sock("198.18.0.53", 53));
    let frames = [
        traffic::Frame::new(T0, traffic::dns_udp(c, r, 1, "www.blocked.example")),
        traffic::Frame::new(T0 + 1, traffic::dns_tcp(c, r, 2, "sub.blocked.example")),
        traffic::Frame::new(T0 + 2, traffic::dns_udp(c, r, 3, "www.blocked.example")),
    ];
    feed(&mut e, &frames, None);
    e.finish();
    let d = drops(&mut e);
    let names: Vec<_> = d
        .iter()
        .map(|ev| {
            let q = ev.dns_info().unwrap();
            (
                q.rrname.as_str(),
                q.transport,
                ev.drop_info().unwrap().count,
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("www.blocked.example", Transport::Udp, 1),
            ("sub.blocked.example", Transport::Tcp, 1),
            ("www.blocked.example", Transport::Udp, 1),
        ],
        "{d:#?}"
    );
}

#[test]
fn a_malformed_tiny_fragment_keeps_its_addresses_and_ports() {
    let mut e = engine(r#"{"home_net": ["198.18.0.1/32"]}"#);
    let syn = traffic::tcp(
        sock("198.18.0.8", 40000),
        sock("198.18.0.1", 23),
        traffic::flags::SYN,
        &[0u8; 40],
    );
    let frags = traffic::fragment_ipv4(&syn, 8);
    let frame = traffic::Frame::new(T0, frags[0].clone());
    let v = feed(&mut e, &[frame], None);
    assert_eq!(v[0].reason, Reason::Malformed);
    let d = drops(&mut e);
    assert_eq!(d.len(), 1);
    let f = d[0].flow().expect("the IP header decoded: a flow");
    assert_eq!(f.src_ip, ip("198.18.0.8"));
    assert_eq!(f.dest_ip, Some(ip("198.18.0.1")));
    assert_eq!((f.src_port, f.dest_port), (Some(40000), Some(23)));
    assert_eq!(f.proto.as_deref(), Some("TCP"));
    assert_eq!(f.direction, Some(Direction::Inbound));
    assert!(f.community_id.is_some());
    assert_eq!(
        d[0].drop_info()
            .unwrap()
            .error
            .map(|e| e.to_string())
            .as_deref(),
        Some("tiny_fragment")
    );

    // Malformed drops are grouped per source: another source opens its own
    // window, the first source's second one is counted.
    let other = traffic::tcp(
        sock("198.18.0.7", 40000),
        sock("198.18.0.1", 23),
        traffic::flags::SYN,
        &[0u8; 40],
    );
    let frames = [
        traffic::Frame::new(T0 + 1, traffic::fragment_ipv4(&other, 8)[0].clone()),
        traffic::Frame::new(T0 + 2, frags[0].clone()),
    ];
    feed(&mut e, &frames, None);
    e.finish();
    let d = drops(&mut e);
    let srcs: Vec<_> = d
        .iter()
        .map(|ev| (ev.flow().unwrap().src_ip, ev.drop_info().unwrap().count))
        .collect();
    assert_eq!(srcs, [(ip("198.18.0.7"), 1), (ip("198.18.0.8"), 1)]);
}

#[test]
fn a_packet_cut_inside_its_headers_by_the_capture_is_truncated_not_malformed() {
    let mut e = engine("{}");
    let syn = traffic::tcp(
        sock("198.18.0.8", 40000),
        sock("198.18.0.1", 23),
        traffic::flags::SYN,
        &[],
    );
    // 14 Ethernet + 20 IP + 10 of the 20 TCP header bytes.
    let cut = &syn[..44];
    let pkt = |orig_len| PacketIn {
        data: cut,
        link: LinkType::Ethernet,
        ts: Timestamp::from_micros(T0),
        dir: None,
        orig_len,
    };
    let v = e.process(&pkt(Some(syn.len() as u32)));
    assert_eq!(v.action, Action::Accept);
    assert_eq!(e.counters().truncated, 1);
    assert_eq!(e.counters().reason(Reason::Malformed), 0);
    assert!(drops(&mut e).is_empty());
    // The same bytes handed over whole (NFQUEUE): the packet lies about
    // its length, malformed.
    let v = e.process(&pkt(None));
    assert_eq!(v.reason, Reason::Malformed);
    assert_eq!(e.counters().truncated, 1);
}

#[test]
fn a_flood_of_many_keys_stays_bounded() {
    // 5,000 names under a blocked domain from one source, in one window:
    // at most max_drop_keys windows, the rate limit holds back the rest.
    let mut e = engine(
        r#"{"block": {"domain": ["blocked.example"]},
            "events": {"max_drop_keys": 64, "max_events_per_second": 100}}"#,
    );
    let (c, r) = (sock("198.18.0.2", 40000), sock("198.18.0.53", 53));
    let frames: Vec<_> = (0..5_000u64)
        .map(|i| {
            traffic::Frame::new(
                T0 + i * 100,
                traffic::dns_udp(c, r, i as u16, &format!("n{i}.blocked.example")),
            )
        })
        .collect();
    feed(&mut e, &frames, None);
    assert!(e.aggregator.len() <= 64, "{}", e.aggregator.len());
    e.finish();
    let written = drops(&mut e).len() as u64;
    let c = e.counters();
    assert!(written <= 200 + 100, "{written} drop events");
    assert_eq!(written + c.events_suppressed, 5_000);
}

#[test]
fn a_data_segment_cut_by_the_snap_length_is_not_a_bare_ack() {
    let seg = traffic::tcp(
        sock("198.18.0.8", 40000),
        sock("198.18.0.1", 80),
        traffic::flags::ACK,
        &[7u8; 200],
    );
    // Headers whole (14 + 20 + 20), the data cut away.
    let cut = portcullis_wire::decode(LinkType::Ethernet, &seg[..54]).unwrap();
    assert!(cut.truncated);
    assert_eq!(cut.payload_len(), 0);
    assert_eq!(ProbeShape::classify(&cut), None);
    let bare = traffic::tcp(
        sock("198.18.0.8", 40000),
        sock("198.18.0.1", 80),
        traffic::flags::ACK,
        &[],
    );
    let bare = portcullis_wire::decode(LinkType::Ethernet, &bare).unwrap();
    assert_eq!(ProbeShape::classify(&bare), Some(ProbeShape::BareAck));
}

#[test]
fn bans_are_bounded_and_the_soonest_ending_yields() {
    let mut e = engine(r#"{"scan": {"max_bans": 3}}"#);
    let t = Timestamp::from_secs(1_000);
    for (i, secs) in [(1u8, 100u64), (2, 50), (3, 200)] {
        assert!(e.ban(
            IpAddr::from([198, 18, 0, i]),
            t,
            Duration::from_secs(secs),
            "test".into()
        ));
    }
    let _ = e.drain_events().count();
    // Full: a fourth ban lasting longer takes the place of the one ending
    // soonest (198.18.0.2, 50 s), with an `unban` event saying why.
    assert!(e.ban(
        IpAddr::from([198, 18, 0, 4]),
        t,
        Duration::from_secs(300),
        "test".into()
    ));
    assert_eq!(e.bans().len(), 3);
    assert!(e.bans().get(&IpAddr::from([198, 18, 0, 2])).is_none());
    let evs: Vec<Event> = e.drain_events().collect();
    assert!(
        matches!(&evs[0].body, Body::Unban(u) if u.ban.reason == UnbanReason::Evicted
            && u.source.src_ip == IpAddr::from([198, 18, 0, 2])),
        "{evs:?}"
    );
    assert_eq!(evs[1].event_type(), EventType::Ban);
    // A ban ending sooner than every ban in force is refused.
    assert!(!e.ban(
        IpAddr::from([198, 18, 0, 5]),
        t,
        Duration::from_secs(10),
        "test".into()
    ));
    assert_eq!(e.bans().len(), 3);
    let c = e.counters();
    assert_eq!((c.bans_evicted, c.bans_refused, c.bans), (1, 1, 4));
    // Under a flood of bans the table and its heap stay bounded.
    for i in 0..10_000u32 {
        e.ban(
            IpAddr::from((0xc612_0000u32 + i).to_be_bytes()),
            Timestamp::from_secs(2_000 + u64::from(i)),
            Duration::from_secs(600),
            "flood".into(),
        );
    }
    assert_eq!(e.bans().len(), 3);
    assert!(
        e.bans().heap_len() <= 2 * 3 + 64 + 1,
        "{}",
        e.bans().heap_len()
    );
}

#[test]
fn a_critical_peer_is_reported_never_banned_by_a_scan() {
    let mut cfg = Config::from_json_str(r#"{"home_net": ["198.18.0.1/32"]}"#, &NoLists).unwrap();
    cfg.critical_peers = vec![(ip("198.18.3.53"), "DNS resolver".into())];
    let mut e = Engine::new(Arc::new(cfg), DetectorMode::Inline).unwrap();
    let frames = traffic::port_scan(
        ip("198.18.3.53"),
        ip("198.18.0.1"),
        &(1..=20).collect::<Vec<u16>>(),
        traffic::ScanShape::Syn,
        T0,
        1_000,
    );
    feed(&mut e, &frames, None);
    let evs: Vec<Event> = e.drain_events().collect();
    let scan = evs
        .iter()
        .find_map(|ev| match &ev.body {
            Body::Scan(s) => Some(s),
            _ => None,
        })
        .expect("the scan is reported");
    assert_eq!(scan.scan.action, ScanAction::Alert);
    assert_eq!(scan.scan.note, Some(NotBanned::CriticalPeer));
    assert!(e.bans().is_empty());
    assert!(!evs.iter().any(|ev| ev.event_type() == EventType::Ban));
    let x = e.explain(ip("198.18.3.53"), e.now());
    assert_eq!(x.critical_peer.as_deref(), Some("DNS resolver"));
    assert!(
        x.to_string().contains("critical peer (DNS resolver)"),
        "{x}"
    );
}

/// Regression: a reload that changes the scan settings ends the open scan
/// episodes with their summaries (it used to drop the inline detector and
/// lose them).
#[test]
fn a_reload_that_restarts_the_detector_writes_the_open_summaries() {
    let mut e = engine(r#"{"home_net": ["198.18.0.1/32"]}"#);
    let frames = traffic::port_scan(
        ip("198.18.0.66"),
        ip("198.18.0.1"),
        &(1..=20).collect::<Vec<u16>>(),
        traffic::ScanShape::Syn,
        T0,
        1_000,
    );
    feed(&mut e, &frames, None);
    let _ = e.drain_events().count();
    let cfg = Config::from_json_str(
        r#"{"home_net": ["198.18.0.1/32"], "scan": {"port_threshold": 7}}"#,
        &NoLists,
    )
    .unwrap();
    e.reload(Arc::new(cfg)).unwrap();
    let ends: Vec<Event> = e
        .drain_events()
        .filter(|ev| matches!(&ev.body, Body::Scan(s) if s.scan.phase == ScanPhase::End))
        .collect();
    assert_eq!(ends.len(), 1, "{ends:?}");
}

#[test]
fn every_drop_counts_in_the_top_tables_accepts_do_not() {
    let mut e = engine(r#"{"block": {"port": [9999], "ip": ["198.18.7.0/24"]}}"#);
    let mut frames = Vec::new();
    for i in 0..5u64 {
        frames.push(traffic::Frame::new(
            T0 + i,
            traffic::udp(sock("198.18.0.9", 5000), sock("198.18.0.1", 9999), b"x"),
        ));
    }
    frames.push(traffic::Frame::new(
        T0 + 10,
        traffic::udp(sock("198.18.7.7", 5000), sock("198.18.0.1", 443), b"x"),
    ));
    // Accepted: not counted.
    frames.push(traffic::Frame::new(
        T0 + 11,
        traffic::udp(sock("198.18.0.10", 5000), sock("198.18.0.1", 80), b"x"),
    ));
    feed(&mut e, &frames, Some(Direction::Inbound));
    let t = e.drop_tops();
    let sources: Vec<_> = t.sources(10).iter().map(|c| (c.key, c.count)).collect();
    assert_eq!(sources, [(ip("198.18.0.9"), 5), (ip("198.18.7.7"), 1)]);
    let ports: Vec<_> = t.ports(10).iter().map(|c| (c.key, c.count)).collect();
    assert_eq!(ports, [(9999, 5), (443, 1)]);
}
