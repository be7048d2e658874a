//! `portcullis top` against a real daemon (issue 12, item 1): the daemon
//! runs in network namespaces the test creates, a host scans it with nmap
//! and another sends blocked traffic; `top` runs in a tmux session of the
//! test's own (its own server socket), the screen is read with `tmux
//! capture-pane -p`, and keys sent with `tmux send-keys` ban and unban
//! addresses, checked in the kernel's ban set.
//!
//! ```text
//!   a 198.18.1.2 (nmap) ─────── fw 198.18.1.1 / 198.18.2.1 (portcullis) ─── b 198.18.2.2 (blocked port)
//! ```
//! The live test needs root; without it, it reports itself ignored with
//! the reason. The scan is bounded (200 ports, one try each, 30 s).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use portcullis_testnet::{live_trial, path_str as s, wait_for, Lab};

const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("nmap", "nmap"),
    ("nc", "netcat-openbsd"),
    ("tmux", "tmux"),
];

const FW_A: &str = "198.18.1.1";
const FW_B: &str = "198.18.2.1";
const A: &str = "198.18.1.2";
const B: &str = "198.18.2.2";

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let tests = vec![
        Trial::test(
            "without_a_terminal_top_refuses_and_says_what_to_use",
            no_terminal,
        ),
        live_trial(
            "top_shows_the_scanner_its_ban_and_drops_and_bans_and_unbans_by_key",
            TOOLS,
            live_top,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

fn no_terminal() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("ctl.sock");
    let out = Command::new(bin())
        .args(["top", "--socket", s(&sock)])
        .stdin(Stdio::null())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs a terminal"), "{err}");
    assert!(err.contains("--once"), "{err}");
    // --once needs no terminal, but a daemon.
    let out = Command::new(bin())
        .args(["top", "--once", "--socket", s(&sock)])
        .stdin(Stdio::null())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no portcullis daemon is running"), "{err}");
    // Bad flags say why.
    let out = Command::new(bin())
        .args(["top", "--interval", "10ms"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("from 200ms to 60s"), "{err}");
    Ok(())
}

/// A tmux server of our own (its own socket in the test's folder), killed
/// when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Starts `cmd` in a detached `cols` x `rows` session named `top`.
    fn start(socket: PathBuf, cols: u16, rows: u16, cmd: &str) -> Result<Self, Failed> {
        let t = Self { socket };
        t.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            cmd,
        ])?;
        // Keep the pane (and its last screen) if `top` exits early.
        t.run(&["set-option", "-t", "top", "remain-on-exit", "on"])?;
        Ok(t)
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("tmux")
            .arg("-u")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .map_err(|e| format!("tmux: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tmux {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
            .unwrap_or_else(|e| e)
    }

    /// Waits (10 s at most) for a screen `ok` accepts.
    fn wait_screen(&self, what: &str, ok: impl Fn(&str) -> bool) -> Result<String, Failed> {
        wait_for(Duration::from_secs(10), || {
            let s = self.screen();
            ok(&s).then_some(s)
        })
        .ok_or_else(|| format!("the screen never showed {what}:\n{}", self.screen()).into())
    }

    /// Types `keys` (tmux key names, e.g. `Enter`, `Tab`, or literal text
    /// with `-l`).
    fn keys(&self, keys: &[&str]) -> Result<(), Failed> {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend(keys);
        self.run(&args)?;
        Ok(())
    }

    fn pane_dead(&self) -> bool {
        self.run(&["display-message", "-p", "-t", "top", "#{pane_dead}"])
            .is_ok_and(|s| s.trim() == "1")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Only our server: it listens on our socket.
        let _ = self.run(&["kill-server"]);
    }
}

/// `nft list set inet portcullis ban4` in the daemon's namespace.
fn ban4(lab: &Lab) -> String {
    lab.exec("fw", "nft", &["list", "set", "inet", "portcullis", "ban4"])
        .unwrap_or_else(|e| e)
}

fn in_ban4(lab: &Lab, addr: &str, want: bool) -> Result<(), Failed> {
    wait_for(Duration::from_secs(5), || {
        (ban4(lab).contains(addr) == want).then_some(())
    })
    .ok_or_else(|| {
        format!(
            "{addr} {} ban4:\n{}",
            if want { "not in" } else { "still in" },
            ban4(lab)
        )
        .into()
    })
}

/// The drop count on the sources line of `addr` (its first column).
fn source_drops(screen: &str, addr: &str) -> Option<u64> {
    screen.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next()? == addr).then_some(())?;
        w.next()?.parse().ok()
    })
}

fn live_top() -> Result<(), Failed> {
    let mut lab = Lab::new();
    for ns in ["fw", "a", "b"] {
        lab.add_ns(ns)?;
    }
    lab.link("fw", &["198.18.1.1/24"], "a", &["198.18.1.2/24"])?;
    lab.link("fw", &["198.18.2.1/24"], "b", &["198.18.2.2/24"])?;
    lab.route_via("a", FW_A, None)?;
    lab.route_via("b", FW_B, None)?;
    let dir = tempfile::tempdir()?;
    let p = |n: &str| dir.path().join(n);
    std::fs::write(
        p("rules.json"),
        r#"{"block": {"port": [9999]}, "events": {"dns_queries": false}}"#,
    )?;
    let sock = p("run/portcullis.sock");
    let log = p("daemon.log");
    let daemon = lab.spawn(
        "fw",
        bin(),
        &[
            "run",
            "--config",
            s(&p("rules.json")),
            "--events",
            s(&p("events.jsonl")),
            "--state-dir",
            s(&p("state")),
            "--socket",
            s(&sock),
            "--no-protect-ssh",
        ],
        &log,
    )?;
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(Duration::from_secs(15), || {
        daemon_log().contains("running on NFQUEUE").then_some(())
    })
    .ok_or_else(|| format!("portcullis did not start:\n{}", daemon_log()))?;

    // The live view in an 80x24 terminal, started before the traffic.
    let cmd = format!(
        "{} top --socket {} 2> {}",
        bin(),
        s(&sock),
        s(&p("top.err"))
    );
    let tmux = Tmux::start(p("tmux.sock"), 80, 24, &cmd)?;
    tmux.wait_screen("the first frame", |s| s.contains("inline: enforcing"))?;

    // Blocked traffic from b while top runs: eight connection attempts to
    // a blocked port, about one a second (nc waits 1 s for the answer the
    // kernel never sends). Its drop rate shows up, with its sparkline.
    let ns_b = lab.ns("b");
    let blocked = std::thread::spawn(move || {
        for _ in 0..8 {
            let _ = portcullis_testnet::run(
                "ip",
                &["netns", "exec", &ns_b, "nc", "-z", "-w", "1", FW_B, "9999"],
            );
        }
    });
    let rate = tmux.wait_screen("a drop rate", |s| {
        s.lines()
            .find_map(|l| l.split("drops/s ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .is_some_and(|n| n > 0.0)
            && s.contains("blocked_port")
    })?;
    eprintln!("{rate}");
    blocked.join().map_err(|_| "the nc thread panicked")?;

    // A bounded SYN scan from a: 200 ports, one try each, 30 s at most.
    let _ = lab.exec(
        "a",
        "nmap",
        &[
            "-sS",
            "-n",
            "-Pn",
            "-p",
            "1-200",
            "--max-retries",
            "0",
            "--host-timeout",
            "30s",
            FW_A,
        ],
    );
    in_ban4(&lab, A, true)?;

    // One frame as text, for scripts.
    let out = Command::new(bin())
        .args(["top", "--once", "--socket", s(&sock)])
        .output()?;
    let once = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{once}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(once.lines().count(), 24, "{once}");
    assert!(once.contains("inline: enforcing"), "{once}");
    assert!(source_drops(&once, B).is_some_and(|n| n >= 1), "{once}");
    assert!(
        once.lines()
            .any(|l| l.contains(A) && l.contains("scan:syn")),
        "{once}"
    );

    let screen = tmux.wait_screen("the scanner, its ban, the drops and the rates", |s| {
        s.contains("inline: enforcing")
            && s.contains("bans (1 active)")
            && s.lines()
                .any(|l| l.contains(A) && l.contains("scan") && l.contains("scan:syn"))
            && s.lines()
                .any(|l| l.contains(A) && l.contains("syn vertical") && l.contains("ban"))
            && source_drops(s, B).is_some_and(|n| n >= 1)
            && s.contains("drops by reason:")
            && !s.contains("packets/s -")
    })?;
    eprintln!("{screen}");
    assert!(screen.lines().count() <= 24, "{screen}");

    // Ban b through the keys: filter the sources to b, `b`, confirm.
    tmux.keys(&["/"])?;
    tmux.keys(&["-l", B])?;
    tmux.keys(&["Enter"])?;
    tmux.wait_screen("the filter", |s| s.contains(&format!("[filter: {B}]")))?;
    tmux.keys(&["b"])?;
    tmux.wait_screen("the ban prompt", |s| s.contains(&format!("ban {B}? y/n")))?;
    tmux.keys(&["y"])?;
    in_ban4(&lab, B, true)?;
    tmux.wait_screen("b banned", |s| {
        s.contains(&format!("banned {B}"))
            && s.lines().any(|l| l.contains(B) && l.contains("manual"))
    })?;

    // Unban it from the bans list: Tab, `u`, confirm.
    tmux.keys(&["Tab"])?;
    tmux.keys(&["u"])?;
    tmux.wait_screen("the unban prompt", |s| {
        s.contains(&format!("unban {B}? y/n"))
    })?;
    // Anything but y cancels.
    tmux.keys(&["n"])?;
    tmux.wait_screen("cancelled", |s| s.contains("cancelled"))?;
    assert!(ban4(&lab).contains(B), "a cancelled unban unbanned");
    tmux.keys(&["u"])?;
    tmux.wait_screen("the unban prompt", |s| {
        s.contains(&format!("unban {B}? y/n"))
    })?;
    tmux.keys(&["y"])?;
    in_ban4(&lab, B, false)?;

    // And the scanner: a new filter, the bans list is still focused.
    tmux.keys(&["/"])?;
    tmux.keys(&["-l", A])?;
    tmux.keys(&["Enter", "u"])?;
    tmux.wait_screen("the unban prompt", |s| {
        s.contains(&format!("unban {A}? y/n"))
    })?;
    tmux.keys(&["y"])?;
    in_ban4(&lab, A, false)?;
    tmux.wait_screen("no bans", |s| s.contains("bans (0 active)"))?;

    // `q` quits and leaves the terminal as it was.
    tmux.keys(&["q"])?;
    wait_for(Duration::from_secs(5), || tmux.pane_dead().then_some(()))
        .ok_or_else(|| format!("top did not quit:\n{}", tmux.screen()))?;
    let err = std::fs::read_to_string(p("top.err")).unwrap_or_default();
    assert!(!err.contains("error"), "{err}");
    drop(tmux);

    let code = lab.stop(daemon, Duration::from_secs(10))?;
    assert_eq!(code, Some(0), "{}", daemon_log());
    let tables = lab.exec("fw", "nft", &["list", "tables"])?;
    assert!(!tables.contains("portcullis"), "{tables}");
    Ok(())
}
