//! The command line: `check`, `schema`, `demo`, errors and exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn check_accepts_the_default_policy_and_the_seed_file() {
    let out = portcullis(&["check"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("configuration is valid\n"), "{text}");
    assert!(text.contains("scan detection: more than 5 ports"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.json");
    std::fs::write(
        &seed,
        r#"{"block":{"ip":["192.168.1.100"],"port":[80,443],"protocol":["TCP"]},"allow":{"ip":["127.0.0.1"],"port":[22],"protocol":["ICMP"]}}"#,
    )
    .unwrap();
    let out = portcullis(&["check", "--config", seed.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("block: 1 IPv4 prefixes"), "{text}");
}

#[test]
fn check_reports_every_error_with_path_and_line_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        "{\n  \"block\": {\n    \"ip\": [\"198.18.0.1\", \"300.1.1.1\"],\n    \"port\": [\"90-80\"],\n    \"domain_lists\": [\"missing.txt\"]\n  },\n  \"scan\": {\"window\": \"soon\"}\n}\n",
    )
    .unwrap();
    let out = portcullis(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    for needle in [
        "block.ip[1] (line 3)",
        "300.1.1.1",
        "block.port[0] (line 4)",
        "block.domain_lists[0] (line 5)",
        "missing.txt",
        "scan.window (line 7)",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn check_reports_a_json_syntax_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\n  \"block\": {\"ip\": [\"198.18.0.1\",]}\n}\n").unwrap();
    let out = portcullis(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn schema_is_json_schema_for_the_rules_file() {
    let out = portcullis(&["schema"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["$schema"].as_str().unwrap().contains("json-schema.org"));
    let props = &v["properties"];
    for key in [
        "block", "allow", "rules", "policy", "scan", "events", "home_net",
    ] {
        assert!(props.get(key).is_some(), "schema lacks {key}");
    }
}

#[test]
fn demo_runs_the_default_policy_over_its_own_capture() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let out = portcullis(&["demo", "--quiet", "--events", events.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&events).unwrap();
    let evs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scans = |phase: &str| -> Vec<(String, u64)> {
        evs.iter()
            .filter(|e| e["event_type"] == "scan" && e["scan"]["phase"] == phase)
            .map(|e| {
                (
                    e["src_ip"].as_str().unwrap().to_owned(),
                    e["scan"]["ports"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // Reported at the threshold, then summarized whole when each ends.
    assert_eq!(
        scans("start"),
        [("198.18.0.66".into(), 6), ("2001:2::66".into(), 6)]
    );
    assert_eq!(
        scans("end"),
        [("198.18.0.66".into(), 100), ("2001:2::66".into(), 20)]
    );
    assert_eq!(evs.iter().filter(|e| e["event_type"] == "ban").count(), 2);
}

#[test]
fn replay_of_a_missing_file_says_so() {
    let out = portcullis(&["replay", "/nonexistent/x.pcap"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cannot open /nonexistent/x.pcap"), "{err}");
}

/// The words of a completion script: runs of letters, digits, `-` and `_`.
fn words(text: &str) -> std::collections::HashSet<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn completions_for_every_shell_name_the_subcommands_and_their_options() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = portcullis(&["completions", shell]);
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let words = words(&text);
        for w in [
            "run",
            "replay",
            "check",
            "schema",
            "demo",
            "completions",
            "man",
        ] {
            assert!(words.contains(w), "{shell}: no {w:?} in\n{text}");
        }
        // Options of subcommands, not only the top level (fish writes
        // them without the dashes).
        for o in ["state-dir", "no-progress", "home-net"] {
            assert!(text.contains(o), "{shell}: no {o:?} in\n{text}");
        }
    }
    let out = portcullis(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn man_page_is_roff_naming_every_subcommand() {
    let out = portcullis(&["man"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(".TH portcullis 1"), "{text}");
    for sub in ["run", "replay", "check", "completions"] {
        assert!(
            text.contains(&format!("portcullis\\-{sub}(1)")),
            "no {sub} in\n{text}"
        );
    }
}

#[test]
fn man_dir_writes_a_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = portcullis(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in ["portcullis.1", "portcullis-run.1", "portcullis-replay.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}: {text}");
    }
    let run = std::fs::read_to_string(dir.path().join("portcullis-run.1")).unwrap();
    assert!(run.contains("state\\-dir"), "{run}");
}

#[test]
fn explain_against_a_rules_file_needs_no_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"{"block": {"ip": ["198.18.5.0/24", "198.18.0.0/16"]}, "allow": {"ip": ["198.18.5.9"]}}"#,
    )
    .unwrap();
    let r = rules.to_str().unwrap();
    let out = portcullis(&["explain", "198.18.5.7", "--config", r]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("block.ip[0] 198.18.5.0/24"), "{text}");
    assert!(text.contains("block.ip[1] 198.18.0.0/16"), "{text}");
    assert!(text.contains("verdict: dropped"), "{text}");
    let out = portcullis(&["explain", "198.18.5.9", "--config", r, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["allowlisted"]["text"], "allow.ip[0] 198.18.5.9");
    assert!(
        v["verdict"].as_str().unwrap().starts_with("accepted"),
        "{v}"
    );
    // Without --config it asks the daemon, which is not running here.
    let out = portcullis(&["explain", "198.18.5.7", "--socket", "/nonexistent/x.sock"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no portcullis daemon is running"), "{err}");
}

/// A capture of one UDP packet from 198.18.0.66 to 198.18.0.1, written in
/// `dir`.
fn one_packet_capture(dir: &std::path::Path) -> String {
    let pcap = dir.join("one.pcap");
    let frame = portcullis_traffic::udp(
        "198.18.0.66:40000".parse().unwrap(),
        "198.18.0.1:9999".parse().unwrap(),
        b"x",
    );
    portcullis_traffic::write_pcap(
        std::fs::File::create(&pcap).unwrap(),
        &[portcullis_traffic::Frame::new(1_795_000_000_000_000, frame)],
    )
    .unwrap();
    pcap.to_str().unwrap().to_owned()
}

const NO_HOME_NET: &str = "portcullis: warning: no home network given: every packet counts as inbound (set it with --home-net CIDR, repeatable, or \"home_net\" in the rules file)\n";

#[test]
fn replay_without_a_home_network_says_once_that_all_is_inbound() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = one_packet_capture(dir.path());
    let out = portcullis(&["replay", &pcap, "--quiet"]);
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.matches(NO_HOME_NET).count(), 1, "{err}");
    assert_eq!(err.matches("home network").count(), 1, "{err}");

    // Given by the flag or by the rules file: no notice.
    let out = portcullis(&["replay", &pcap, "--quiet", "--home-net", "198.18.0.1"]);
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("home network"), "{err}");
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, r#"{"home_net": ["2001:2::/64"]}"#).unwrap();
    let out = portcullis(&["replay", &pcap, "-q", "-c", rules.to_str().unwrap()]);
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("home network"), "{err}");
}

/// Operator messages go through the log levels: `--log-level` (or
/// `PORTCULLIS_LOG`) hides what is below it; under systemd (stderr is the
/// journal) each line carries its syslog priority and nothing of ours.
#[test]
fn log_levels_filter_operator_messages_and_journald_gets_priorities() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = one_packet_capture(dir.path());
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .env_remove("PORTCULLIS_LOG")
            .env_remove("INVOCATION_ID")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stderr).unwrap())
    };
    let (code, err) = run(&["replay", &pcap, "-q", "--log-level", "error"], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("home network"), "{err}");
    let (_, err) = run(&["replay", &pcap, "-q"], &[("PORTCULLIS_LOG", "error")]);
    assert!(!err.contains("home network"), "{err}");
    // The flag wins over the environment.
    let (_, err) = run(
        &["replay", &pcap, "-q", "--log-level", "warn"],
        &[("PORTCULLIS_LOG", "off")],
    );
    assert_eq!(err.matches(NO_HOME_NET).count(), 1, "{err}");
    // Started by systemd: `<4>` and the bare message.
    let (_, err) = run(&["replay", &pcap, "-q"], &[("INVOCATION_ID", "0123abcd")]);
    assert!(
        err.contains("<4>no home network given: every packet counts as inbound"),
        "{err}"
    );
    assert!(!err.contains("portcullis: warning"), "{err}");
    // A bad level is a clear error.
    let (code, err) = run(&["replay", &pcap, "--log-level", "loud"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown log level \"loud\""), "{err}");
    let (code, err) = run(&["replay", &pcap], &[("PORTCULLIS_LOG", "loud")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("PORTCULLIS_LOG: unknown log level"), "{err}");
}

#[test]
fn a_bad_home_net_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = one_packet_capture(dir.path());
    for (bad, says) in [
        ("198.18.0.0/33", "not an IP address or CIDR prefix"),
        ("eth0", "not an IP address or CIDR prefix"),
        ("2001:2::/129", "not an IP address or CIDR prefix"),
        ("198.18.0.1/24", "the network is \"198.18.0.0/24\""),
    ] {
        let out = portcullis(&[
            "replay",
            &pcap,
            "--home-net",
            "198.18.0.0/24",
            "--home-net",
            bad,
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("--home-net"), "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
}
