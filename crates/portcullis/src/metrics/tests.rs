#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use portcullis_engine::Reason;

use super::*;
use crate::status::{
    CaptureStatus, DetectorStatus, KernelStatus, ObservedStatus, PacketCounters, QueueStatus,
    SourceStatus,
};

/// A snapshot in which every number is different, so a value reported
/// under the wrong name cannot pass.
fn known() -> Status {
    Status {
        version: "0.3.0".into(),
        pid: 4242,
        mode: "inline".into(),
        enforcing: true,
        bans_enforced: false,
        uptime_seconds: 3600,
        config: "/etc/portcullis/rules.json".into(),
        kernel_path: "nft queue".into(),
        packets: PacketCounters {
            packets: 1000,
            accepted: 900,
            dropped: 90,
            by_reason: Reason::ALL
                .iter()
                .enumerate()
                .map(|(i, r)| (r.as_str().to_owned(), 100 + i as u64))
                .collect(),
            not_ip: 10,
            dns_queries: 11,
            probes: 12,
            probes_dropped: 13,
            scans: 14,
            bans: 15,
            unbans: 16,
            bans_evicted: 45,
            bans_refused: 46,
            events: 17,
            events_suppressed: 18,
        },
        queue: Some(QueueStatus {
            number: 3,
            fail_open: true,
            received: 19,
            queue_dropped: 20,
            user_dropped: 21,
            uninspected: 22,
            overruns: 23,
            dns_answers_failed: 47,
        }),
        observed: Some(ObservedStatus {
            group: 9,
            received: 41,
            lost: 42,
            overruns: 43,
            malformed: 44,
        }),
        capture: vec![CaptureStatus {
            interface: "eth0".into(),
            received: 24,
            dropped: 25,
            if_dropped: 26,
        }],
        bans_active: 27,
        protected: vec!["127.0.0.0/8".into()],
        detector: Some(DetectorStatus {
            sources: 28,
            flows: 29,
            memory_bytes: 30,
            source_evictions: 31,
            flow_evictions: 32,
            findings: 33,
        }),
        events_dropped: 34,
        sources: vec![SourceStatus {
            kind: "capture".into(),
            name: "eth0".into(),
            state: "up".into(),
            error: None,
            down_seconds: None,
            failures: 57,
            reopens: 58,
        }],
        events_write_failed: 48,
        event_log_errors: 49,
        kernel: KernelStatus {
            rules_restored: 50,
            rules_restore_failed: 51,
            bans_failed: 52,
            bans_enforced_late: 53,
            unbans_failed: 54,
            retrying: 55,
            flows_ended: 61,
            flow_end_failures: 62,
            commands_dropped: 56,
        },
        fleet: None,
    }
}

/// One metric family as read back from the text.
#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: String,
    samples: Vec<(Vec<(String, String)>, u64)>,
}

fn is_metric_name(n: &str) -> bool {
    n.strip_prefix("portcullis_").is_some_and(|r| {
        !r.is_empty()
            && r.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    })
}

fn is_label_name(n: &str) -> bool {
    let mut cs = n.chars();
    cs.next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && cs.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !n.starts_with("__")
}

/// `k="v",...}` -> the pairs (values unescaped) and the text after `}`.
fn parse_labels(mut s: &str) -> (Vec<(String, String)>, &str) {
    let mut labels = Vec::new();
    loop {
        let (name, rest) = s.split_once("=\"").expect("label name=\"");
        assert!(is_label_name(name), "label name {name:?}");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect("unterminated label value") {
                (_, '\\') => match chars.next().expect("dangling escape").1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => panic!("bad escape \\{c}"),
                },
                (_, '\n') => panic!("raw line feed in a label value"),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_owned(), value));
        let rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            s = r;
        } else {
            return (labels, rest.strip_prefix('}').expect("} after labels"));
        }
    }
}

/// Reads the exposition back, checking the format as it goes: every sample
/// belongs to the family whose HELP and TYPE precede it, families are not
/// repeated or interleaved, names and types follow the conventions.
fn parse(text: &str) -> Vec<Family> {
    assert!(
        text.ends_with('\n'),
        "the last line must end with a line feed"
    );
    let mut families: Vec<Family> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("# HELP name text");
            assert!(
                families.iter().all(|f| f.name != name),
                "{name} appears twice"
            );
            families.push(Family {
                name: name.into(),
                help: help.into(),
                kind: String::new(),
                samples: Vec::new(),
            });
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            let f = families.last_mut().expect("TYPE before HELP");
            assert_eq!(f.name, name, "TYPE right after its HELP");
            assert!(
                f.kind.is_empty() && f.samples.is_empty(),
                "{name}: late TYPE"
            );
            assert!(kind == "counter" || kind == "gauge", "{name}: type {kind}");
            f.kind = kind.into();
        } else {
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let name_end = line.find(['{', ' ']).expect("sample value");
            let name = &line[..name_end];
            let f = families.last_mut().expect("sample before any HELP");
            assert_eq!(f.name, name, "sample outside its family: {line:?}");
            assert!(!f.kind.is_empty(), "{name}: sample before TYPE");
            let (labels, rest) = match line[name_end..].strip_prefix('{') {
                Some(l) => parse_labels(l),
                None => (Vec::new(), &line[name_end..]),
            };
            let value = rest.strip_prefix(' ').expect("space before the value");
            let value: u64 = value
                .parse()
                .unwrap_or_else(|_| panic!("value in {line:?}"));
            f.samples.push((labels, value));
        }
    }
    for f in &families {
        assert!(is_metric_name(&f.name), "name {}", f.name);
        assert!(!f.help.is_empty(), "{}: empty HELP", f.name);
        assert!(!f.kind.is_empty(), "{}: no TYPE", f.name);
        assert_eq!(
            f.kind == "counter",
            f.name.ends_with("_total"),
            "{}: counters and only counters end in _total",
            f.name
        );
        assert!(!f.samples.is_empty(), "{}: no samples", f.name);
        let mut series = BTreeSet::new();
        for (labels, _) in &f.samples {
            let names: BTreeSet<_> = labels.iter().map(|(k, _)| k).collect();
            assert_eq!(names.len(), labels.len(), "{}: repeated label", f.name);
            assert!(series.insert(labels.clone()), "{}: repeated series", f.name);
        }
    }
    families
}

/// `name{k=v,...}` (labels sorted, values unescaped) -> value.
fn series(families: &[Family]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for f in families {
        for (labels, value) in &f.samples {
            let mut labels = labels.clone();
            labels.sort();
            let key = if labels.is_empty() {
                f.name.clone()
            } else {
                let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{}{{{}}}", f.name, l.join(","))
            };
            out.insert(key, *value);
        }
    }
    out
}

#[test]
fn render_reports_every_value_of_the_snapshot_under_its_name() {
    let s = known();
    let got = series(&parse(&render(&s)));
    let mut want: BTreeMap<String, u64> = [
        ("portcullis_build_info{version=0.3.0}", 1),
        (
            "portcullis_runtime_info{config=/etc/portcullis/rules.json,kernel_path=nft queue,mode=inline}",
            1,
        ),
        ("portcullis_enforcing", 1),
        ("portcullis_bans_enforced", 0),
        ("portcullis_uptime_seconds", 3600),
        ("portcullis_packets_total", 1000),
        ("portcullis_packets_accepted_total", 900),
        ("portcullis_packets_dropped_total", 90),
        ("portcullis_packets_not_ip_total", 10),
        ("portcullis_dns_queries_total", 11),
        ("portcullis_probes_total", 12),
        ("portcullis_probes_dropped_total", 13),
        ("portcullis_scans_detected_total", 14),
        ("portcullis_bans_total", 15),
        ("portcullis_unbans_total", 16),
        ("portcullis_bans_limited_total{kind=evicted}", 45),
        ("portcullis_bans_limited_total{kind=refused}", 46),
        ("portcullis_events_total", 17),
        ("portcullis_events_suppressed_total", 18),
        ("portcullis_queue_received_packets_total", 19),
        ("portcullis_queue_dropped_packets_total{kind=queue_full}", 20),
        ("portcullis_queue_dropped_packets_total{kind=user}", 21),
        ("portcullis_queue_uninspected_packets_total", 22),
        ("portcullis_observed_packets_total", 41),
        ("portcullis_observed_lost_packets_total", 42),
        ("portcullis_queue_overruns_total", 23),
        ("portcullis_queue_fail_open", 1),
        ("portcullis_capture_received_packets_total{interface=eth0}", 24),
        (
            "portcullis_capture_dropped_packets_total{interface=eth0,kind=buffer}",
            25,
        ),
        (
            "portcullis_capture_dropped_packets_total{interface=eth0,kind=interface}",
            26,
        ),
        ("portcullis_bans_active", 27),
        ("portcullis_detector_sources", 28),
        ("portcullis_detector_flows", 29),
        ("portcullis_detector_memory_bytes", 30),
        ("portcullis_detector_evictions_total{table=sources}", 31),
        ("portcullis_detector_evictions_total{table=flows}", 32),
        ("portcullis_events_dropped_total", 34),
        ("portcullis_source_up{kind=capture,name=eth0}", 1),
        ("portcullis_source_failures_total{kind=capture,name=eth0}", 57),
        ("portcullis_source_reopens_total{kind=capture,name=eth0}", 58),
        ("portcullis_dns_answers_failed_total", 47),
        ("portcullis_events_write_failed_total", 48),
        ("portcullis_event_log_errors_total", 49),
        ("portcullis_rules_restored_total", 50),
        ("portcullis_rules_restore_failed_total", 51),
        ("portcullis_kernel_commands_failed_total{command=ban}", 52),
        ("portcullis_bans_enforced_late_total", 53),
        ("portcullis_kernel_commands_failed_total{command=unban}", 54),
        ("portcullis_kernel_retrying", 55),
        ("portcullis_kernel_commands_dropped_total", 56),
        ("portcullis_ban_flows_ended_total", 61),
        ("portcullis_ban_flow_end_failures_total", 62),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (i, r) in Reason::ALL.iter().enumerate() {
        want.insert(
            format!("portcullis_verdicts_total{{reason={}}}", r.as_str()),
            100 + i as u64,
        );
    }
    assert_eq!(got, want);
}

#[test]
fn families_that_do_not_apply_are_left_out() {
    let s = Status {
        mode: "monitor".into(),
        queue: None,
        capture: Vec::new(),
        detector: None,
        sources: Vec::new(),
        ..known()
    };
    let names: Vec<String> = parse(&render(&s)).into_iter().map(|f| f.name).collect();
    for prefix in [
        "portcullis_queue_",
        "portcullis_capture_",
        "portcullis_detector_",
        "portcullis_source_",
    ] {
        assert!(
            names.iter().all(|n| !n.starts_with(prefix)),
            "{prefix}: {names:?}"
        );
    }
    assert!(names.iter().any(|n| n == "portcullis_scans_detected_total"));
    // Even an empty snapshot is a valid exposition.
    parse(&render(&Status::default()));
}

#[test]
fn label_values_are_escaped() {
    let weird = "we\"ird\\if\nx";
    let s = Status {
        config: "C:\\rules \"new\".json".into(),
        capture: vec![CaptureStatus {
            interface: weird.into(),
            received: 5,
            ..CaptureStatus::default()
        }],
        ..known()
    };
    let text = render(&s);
    assert!(
        text.contains(
            "portcullis_capture_received_packets_total{interface=\"we\\\"ird\\\\if\\nx\"} 5\n"
        ),
        "{text}"
    );
    let families = parse(&text);
    let capture = families
        .iter()
        .find(|f| f.name == "portcullis_capture_received_packets_total")
        .unwrap();
    assert_eq!(
        capture.samples,
        vec![(vec![("interface".to_owned(), weird.to_owned())], 5)]
    );
    let runtime = families
        .iter()
        .find(|f| f.name == "portcullis_runtime_info")
        .unwrap();
    assert!(runtime.samples[0]
        .0
        .contains(&("config".to_owned(), "C:\\rules \"new\".json".to_owned())));
    assert_eq!(escape_help("a\\b\nc \"d\""), "a\\\\b\\nc \"d\"");
}

// ---------------------------------------------------------------- HTTP

fn start(status: Option<Status>) -> MetricsServer {
    serve("127.0.0.1:0".parse().unwrap(), move || status.clone()).unwrap()
}

#[derive(Debug)]
struct Reply {
    status_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_reply(stream: &mut TcpStream) -> Reply {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("end of head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_owned();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(": ").expect("header");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    Reply {
        status_line,
        headers,
        body: body.to_owned(),
    }
}

fn request(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    // The server may answer (and stop reading) before all of an oversize
    // request is written.
    let _ = stream.write_all(raw);
    read_reply(&mut stream)
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n").as_bytes(),
    )
}

#[test]
fn scrape_answers_the_metrics_with_the_right_headers() {
    let server = start(Some(known()));
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    let r = get(addr, "/metrics");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(
        r.header("Content-Length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(r.body, render(&known()));

    let r = get(addr, "/metrics?name[]=portcullis_bans_active");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");

    let r = request(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert_eq!(
        r.header("Content-Length"),
        Some(render(&known()).len().to_string().as_str())
    );
    assert_eq!(r.body, "");

    let r = get(addr, "/");
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert!(r.header("Content-Type").unwrap().starts_with("text/html"));
    assert!(r.body.contains("href=\"/metrics\""));

    server.shutdown();
}

#[test]
fn wrong_paths_methods_and_requests_are_refused() {
    let server = start(Some(known()));
    let addr = server.local_addr();

    let r = get(addr, "/metrics/x");
    assert_eq!(r.status_line, "HTTP/1.1 404 Not Found");
    assert_eq!(
        r.header("Content-Length"),
        Some(r.body.len().to_string().as_str())
    );

    let r = request(
        addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(r.status_line, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(r.header("Allow"), Some("GET, HEAD"));

    let r = request(addr, b"hello there\r\n\r\n");
    assert_eq!(r.status_line, "HTTP/1.1 400 Bad Request");

    let r = request(addr, b"GET /metrics SPDY/3\r\n\r\n");
    assert_eq!(r.status_line, "HTTP/1.1 400 Bad Request");

    // Twice the limit, without ever ending the head.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
    big.resize(2 * MAX_REQUEST_HEAD, b'a');
    let r = request(addr, &big);
    assert_eq!(
        r.status_line,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );

    // A head that ends, but only after the limit.
    big.extend_from_slice(b"\r\n\r\n");
    let r = request(addr, &big);
    assert_eq!(
        r.status_line,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );

    // The server still works afterwards.
    assert_eq!(get(addr, "/metrics").status_line, "HTTP/1.1 200 OK");
    server.shutdown();
}

#[test]
fn no_snapshot_is_service_unavailable() {
    let server = start(None);
    let r = get(server.local_addr(), "/metrics");
    assert_eq!(r.status_line, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(r.header("Retry-After"), Some("1"));
    server.shutdown();
}

#[test]
fn a_silent_client_does_not_hold_the_server() {
    let server = start(Some(known()));
    let addr = server.local_addr();
    let mut silent = TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    let r = get(addr, "/metrics");
    let waited = t.elapsed();
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert!(
        waited < READ_TIMEOUT + Duration::from_secs(1),
        "the second client waited {waited:?}"
    );
    assert_eq!(
        read_reply(&mut silent).status_line,
        "HTTP/1.1 408 Request Timeout"
    );
    server.shutdown();
}

#[test]
fn a_trickling_client_does_not_hold_the_server() {
    let server = start(Some(known()));
    let addr = server.local_addr();
    let mut slow = TcpStream::connect(addr).unwrap();
    // One byte every 100 ms: each read succeeds, the head never ends.
    let trickle = thread::spawn(move || {
        let _ = slow.write_all(b"GET /metrics HTTP/1.1\r\n");
        for _ in 0..50 {
            if slow.write_all(b"X").is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    let r = get(addr, "/metrics");
    let waited = t.elapsed();
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert!(
        waited < READ_TIMEOUT + Duration::from_secs(1),
        "the second client waited {waited:?}"
    );
    server.shutdown();
    trickle.join().unwrap();
}

#[test]
fn shutdown_closes_the_port_and_drop_stops_the_thread() {
    let server = start(Some(known()));
    let addr = server.local_addr();
    server.shutdown();
    assert_eq!(
        TcpStream::connect(addr).unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused
    );

    let server = start(Some(known()));
    let addr = server.local_addr();
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still listening after drop");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_wildcard_address_is_woken_through_loopback() {
    let server = serve("0.0.0.0:0".parse().unwrap(), || None).unwrap();
    let port = server.local_addr().port();
    server.shutdown();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// Opens `n` connections that send nothing, and waits until the server has
/// taken them (each is its own thread now, so only time tells).
fn idle_clients(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let idle = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
    thread::sleep(Duration::from_millis(200));
    idle
}

#[test]
fn idle_clients_do_not_delay_a_scrape() {
    let server = start(Some(known()));
    let addr = server.local_addr();
    let _idle = idle_clients(addr, 4);
    let t = Instant::now();
    let r = get(addr, "/metrics");
    let waited = t.elapsed();
    assert_eq!(r.status_line, "HTTP/1.1 200 OK");
    assert!(
        waited < Duration::from_secs(1),
        "the scrape waited {waited:?}"
    );
    server.shutdown();
}

#[test]
fn connections_over_the_limit_are_answered_busy_at_once() {
    let server = start(Some(known()));
    let addr = server.local_addr();
    let idle = idle_clients(addr, MAX_CONNECTIONS);
    let t = Instant::now();
    let r = get(addr, "/metrics");
    let waited = t.elapsed();
    assert_eq!(r.status_line, "HTTP/1.1 503 Service Unavailable");
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert!(r.body.contains("too many connections"), "{}", r.body);
    assert!(
        waited < Duration::from_secs(1),
        "the refusal took {waited:?}"
    );
    // Slots come back as connections end.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = get(addr, "/metrics");
        if r.status_line == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(Instant::now() < deadline, "still {}", r.status_line);
        thread::sleep(Duration::from_millis(50));
    }
    server.shutdown();
}

// The Grafana dashboard shipped in packaging/grafana (and in the Debian
// package): every metric and label its queries use must be one `render`
// really writes, and every family `render` writes must be on it.

const DASHBOARD: &str = include_str!("../../../../packaging/grafana/portcullis.json");

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Every PromQL query of the dashboard (panel targets, in rows too, and
/// template variables) with where it is, and the legend of each target.
fn dashboard_queries(dash: &serde_json::Value) -> Vec<(String, String, Option<String>)> {
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String, Option<String>)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{title}: target without expr"));
                let legend = t["legendFormat"].as_str().map(str::to_owned);
                out.push((format!("panel {title:?}"), expr.to_owned(), legend));
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dash["panels"], &mut out);
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("?");
        if let Some(q) = v["query"]["query"].as_str().or(v["query"].as_str()) {
            out.push((format!("variable {name}"), q.to_owned(), None));
        }
    }
    out
}

/// The `portcullis_*` metric names in a query.
fn metric_names(expr: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    for (i, _) in expr.match_indices("portcullis_") {
        if expr[..i].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let len = expr[i..]
            .find(|c: char| !is_ident(c))
            .unwrap_or(expr.len() - i);
        names.push(expr[i..i + len].to_owned());
    }
    names
}

/// Label matchers `{name op "value"}` (op and value kept) and the labels of
/// `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` clauses and
/// `label_values(metric, label)`.
fn query_labels(expr: &str) -> (Vec<(String, String, String)>, Vec<String>) {
    let mut matchers = Vec::new();
    let mut rest = expr;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').expect("unclosed {") + open;
        for m in rest[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            let op_at = m
                .find(['=', '!'])
                .unwrap_or_else(|| panic!("matcher {m:?}"));
            let name = m[..op_at].trim();
            let after = &m[op_at..];
            let op_len =
                if after.starts_with("=~") || after.starts_with("!~") || after.starts_with("!=") {
                    2
                } else {
                    1
                };
            let value = after[op_len..].trim().trim_matches('"');
            matchers.push((
                name.to_owned(),
                after[..op_len].to_owned(),
                value.to_owned(),
            ));
        }
        rest = &rest[close + 1..];
    }
    let mut grouping = Vec::new();
    let words = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    for w in words {
        for (i, _) in expr.match_indices(w) {
            let before_ok = !expr[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            let after = expr[i + w.len()..].trim_start();
            if before_ok && after.starts_with('(') {
                let inner = &after[1..after.find(')').expect("unclosed (")];
                grouping.extend(
                    inner
                        .split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                );
            }
        }
    }
    if let Some(args) = expr.strip_prefix("label_values(") {
        let args = args.trim_end_matches(')');
        if let Some((_, label)) = args.rsplit_once(',') {
            grouping.push(label.trim().to_owned());
        }
    }
    (matchers, grouping)
}

#[test]
fn the_grafana_dashboard_uses_only_metrics_and_labels_the_daemon_exports() {
    let exported = parse(&render(&known()));
    let family = |name: &str| exported.iter().find(|f| f.name == name);
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    assert!(
        dash["schemaVersion"].as_u64().unwrap() >= 39,
        "a current Grafana schema"
    );

    let queries = dashboard_queries(&dash);
    assert!(queries.len() > 20, "{} queries", queries.len());
    let mut used = BTreeSet::new();
    for (place, expr, legend) in &queries {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "{place}: no portcullis metric in {expr:?}"
        );
        let mut labels: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        for name in &names {
            let f = family(name).unwrap_or_else(|| {
                panic!("{place}: {name} is not a metric portcullis exports ({expr})")
            });
            for (ls, _) in &f.samples {
                labels.extend(ls.iter().map(|(k, _)| k.clone()));
            }
            used.insert(name.clone());
        }
        let (matchers, grouping) = query_labels(expr);
        for l in grouping.iter().chain(matchers.iter().map(|(l, _, _)| l)) {
            assert!(
                labels.contains(l),
                "{place}: label {l:?} is not on {names:?} ({expr})"
            );
        }
        // An exact value must be one the daemon writes (a typo in a
        // reason name would show an empty panel forever).
        for (l, op, v) in &matchers {
            if op == "=" && !TARGET_LABELS.contains(&l.as_str()) {
                let known_values: BTreeSet<&str> = names
                    .iter()
                    .filter_map(|n| family(n))
                    .flat_map(|f| f.samples.iter())
                    .flat_map(|(ls, _)| ls.iter())
                    .filter(|(k, _)| k == l)
                    .map(|(_, v)| v.as_str())
                    .collect();
                assert!(
                    known_values.contains(v.as_str()),
                    "{place}: {l}=\"{v}\" never written; values: {known_values:?}"
                );
            }
        }
        // Legends name labels the query's result can carry.
        for part in legend.iter().flat_map(|l| l.split("{{").skip(1)) {
            let l = part.split("}}").next().unwrap().trim();
            assert!(
                labels.contains(l),
                "{place}: legend label {l:?} is not on {names:?}"
            );
        }
    }
    // Every family on the dashboard: a new metric needs a panel.
    let missing: Vec<&str> = exported
        .iter()
        .map(|f| f.name.as_str())
        .filter(|n| !used.contains(*n))
        .collect();
    assert!(missing.is_empty(), "exported but on no panel: {missing:?}");
}

#[test]
fn every_dashboard_panel_queries_the_prometheus_input() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
    let mut ids = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "panel id {} twice",
            p["id"]
        );
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap();
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        }
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{title}: wider than the grid"
        );
    }
}

#[test]
fn dashboard_query_parsing_finds_names_and_labels() {
    assert_eq!(
        metric_names("sum by (reason) (rate(portcullis_verdicts_total{instance=~\"$instance\"}[5m])) / x_portcullis_no"),
        ["portcullis_verdicts_total"]
    );
    let (m, g) =
        query_labels("a{instance=~\"$i\", reason=\"banned\"} * on(instance) group_left(mode) b");
    assert_eq!(
        m,
        [
            ("instance".into(), "=~".into(), "$i".into()),
            ("reason".into(), "=".into(), "banned".into())
        ]
    );
    assert_eq!(g, ["instance", "mode"]);
}
