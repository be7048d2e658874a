//! The client against a scripted HTTP server on 127.0.0.1: what a real
//! LAPI does not do on demand (expiring tokens, a revoked token, hostile or
//! broken answers). Each server answers a fixed list of responses, one per
//! connection, and returns the requests it saw.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use portcullis_crowdsec::{
    Bouncer, ClientConfig, CrowdsecError, Limits, Overflow, ParseError, ScanAlert, Watcher,
};

/// One request as the server saw it: request line, headers, body.
#[derive(Debug)]
struct Seen {
    line: String,
    headers: Vec<String>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn serve(responses: Vec<(u16, String)>) -> (String, JoinHandle<Vec<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        let mut seen = Vec::new();
        for (status, body) in responses {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                headers.push(h.trim().to_owned());
            }
            let mut req = Seen {
                line: line.trim().to_owned(),
                headers,
                body: String::new(),
            };
            let len: usize = req
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut buf = vec![0; len];
            reader.read_exact(&mut buf).unwrap();
            req.body = String::from_utf8(buf).unwrap();
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            seen.push(req);
        }
        seen
    });
    (url, handle)
}

fn login_answer(expire: SystemTime, token: &str) -> (u16, String) {
    let expire = DateTime::<Utc>::from(expire).to_rfc3339_opts(SecondsFormat::Secs, true);
    (
        200,
        format!(r#"{{"code":200,"expire":"{expire}","token":"{token}"}}"#),
    )
}

fn alert() -> ScanAlert {
    ScanAlert {
        source: "198.51.100.9".parse().unwrap(),
        kind: "tcp-syn".into(),
        ports: vec![22],
        probes: 3,
        start: SystemTime::now(),
        stop: SystemTime::now(),
        ban: Some(Duration::from_secs(60)),
    }
}

#[test]
fn token_near_expiry_is_renewed_before_use() {
    let soon = SystemTime::now() + Duration::from_secs(60);
    let later = SystemTime::now() + Duration::from_secs(3600);
    let (url, server) = serve(vec![
        login_answer(soon, "t1"),
        login_answer(later, "t2"),
        (201, r#"["1"]"#.into()),
        (201, r#"["2"]"#.into()),
    ]);
    let mut w = Watcher::new(&ClientConfig::new(url), "m", "p").unwrap();
    w.login().unwrap();
    // t1 expires within RENEW_BEFORE: the push logs in again first.
    assert_eq!(w.push_alert(&alert()).unwrap(), ["1"]);
    // t2 is fresh: no login.
    assert_eq!(w.push_alert(&alert()).unwrap(), ["2"]);
    let seen = server.join().unwrap();
    let lines: Vec<_> = seen.iter().map(|s| s.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "POST /v1/watchers/login HTTP/1.1",
            "POST /v1/watchers/login HTTP/1.1",
            "POST /v1/alerts HTTP/1.1",
            "POST /v1/alerts HTTP/1.1"
        ]
    );
    assert_eq!(seen[2].header("authorization"), Some("Bearer t2"));
    assert_eq!(seen[3].header("authorization"), Some("Bearer t2"));
    assert!(
        seen[0].body.contains(r#""machine_id":"m""#),
        "{}",
        seen[0].body
    );
    assert!(seen[0]
        .header("user-agent")
        .is_some_and(|ua| ua.starts_with("portcullis/")));
}

#[test]
fn refused_token_logs_in_again_once() {
    let later = SystemTime::now() + Duration::from_secs(3600);
    let (url, server) = serve(vec![
        login_answer(later, "revoked"),
        (401, r#"{"code":401,"message":"Token is expired"}"#.into()),
        login_answer(later, "new"),
        (201, r#"["7"]"#.into()),
    ]);
    let mut w = Watcher::new(&ClientConfig::new(url), "m", "p").unwrap();
    assert_eq!(w.push_alert(&alert()).unwrap(), ["7"]);
    let seen = server.join().unwrap();
    assert_eq!(seen[1].header("authorization"), Some("Bearer revoked"));
    assert_eq!(seen[3].header("authorization"), Some("Bearer new"));
}

#[test]
fn validation_error_is_an_alert_rejection() {
    let later = SystemTime::now() + Duration::from_secs(3600);
    let (url, server) = serve(vec![
        login_answer(later, "t"),
        (
            500,
            r#"{"message":"validation failure list:\n0.scenario_hash in body is required"}"#.into(),
        ),
    ]);
    let mut w = Watcher::new(&ClientConfig::new(url), "m", "p").unwrap();
    match w.push_alert(&alert()) {
        Err(CrowdsecError::AlertRejected {
            status: 500,
            message,
        }) => {
            assert!(message.contains("scenario_hash"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    server.join().unwrap();
}

#[test]
fn broken_stream_answers_are_errors() {
    let (url, server) = serve(vec![
        (200, "<html>proxy error</html>".into()),
        (200, r#"{"message":"hello"}"#.into()),
        (503, r#"{"message":"database is locked"}"#.into()),
        (
            200,
            format!(
                r#"{{"new":null,"deleted":null,"pad":"{}"}}"#,
                "x".repeat(4096)
            ),
        ),
    ]);
    let mut config = ClientConfig::new(url);
    config.max_body_bytes = 1024;
    let b = Bouncer::new(&config, "k").unwrap();
    for _ in 0..2 {
        match b.stream(true) {
            Err(
                e @ CrowdsecError::Stream {
                    source: ParseError::Malformed(_),
                    ..
                },
            ) => {
                assert!(!e.is_transient(), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
    match b.stream(false) {
        Err(e @ CrowdsecError::Status { status: 503, .. }) => {
            assert!(e.is_transient());
            assert!(e.to_string().contains("database is locked"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    match b.stream(false) {
        Err(e @ CrowdsecError::BodyTooLarge { limit: 1024, .. }) => {
            assert!(e.to_string().contains("max_body_bytes"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let seen = server.join().unwrap();
    assert_eq!(
        seen[0].line,
        "GET /v1/decisions/stream?startup=true HTTP/1.1"
    );
    assert_eq!(
        seen[2].line,
        "GET /v1/decisions/stream?startup=false HTTP/1.1"
    );
    assert_eq!(seen[0].header("x-api-key"), Some("k"));
}

#[test]
fn decision_limit_applies_to_the_stream() {
    let item = r#"{"duration":"1h","id":1,"origin":"o","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.1"}"#;
    let doc = format!(r#"{{"new":[{}],"deleted":null}}"#, [item; 5].join(","));
    let (url, server) = serve(vec![(200, doc.clone()), (200, doc)]);
    let mut config = ClientConfig::new(url);
    config.limits = Limits {
        max_decisions: 3,
        overflow: Overflow::Truncate,
    };
    let d = Bouncer::new(&config, "k").unwrap().stream(true).unwrap();
    assert_eq!((d.new.len(), d.stats.truncated), (3, 2));
    config.limits.overflow = Overflow::Error;
    match Bouncer::new(&config, "k").unwrap().stream(true) {
        Err(CrowdsecError::Stream {
            source: ParseError::TooManyDecisions { max: 3, .. },
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    server.join().unwrap();
}

#[test]
fn silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = ClientConfig::new(format!("http://{}/", listener.local_addr().unwrap()));
    config.timeout = Duration::from_millis(300);
    let b = Bouncer::new(&config, "k").unwrap();
    match b.stream(true) {
        Err(e @ CrowdsecError::Timeout { .. }) => assert!(e.is_transient()),
        other => panic!("{other:?}"),
    }
    drop(listener);
}
