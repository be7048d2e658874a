//! Live test of the anti-lockout on a real OpenSSH server (issue 11, item
//! 6): the daemon is started from inside an SSH session, finds the client
//! through its root `sshd` ancestor's connection, and a scan spoofed from
//! that client's address neither bans it nor breaks the session.
//!
//! ```text
//!   a 198.18.1.2 (ssh client) ───── fw 198.18.1.1 (sshd; portcullis in the session)
//!   b 198.18.2.2 (attacker)   ───── fw 198.18.2.1
//! ```
//! `a` and `b` route through `fw`. `b` also holds a's address (a host
//! route) and scans `fw` with `nmap -S 198.18.1.2 -e vbfw`: the probes
//! arrive over b's link with a's address, the answers go to `a`.
//!
//! sshd runs with a configuration, host key and authorized key of the
//! test's own, in its temporary folder. Everything started is ended by
//! pid, and the namespaces are deleted, also when the test fails. It
//! needs root and openssh-server; otherwise it reports itself ignored with
//! the reason.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed};
use portcullis_testnet::{check, json_lines, live_trial, path_str as s, run, wait_for, which, Lab};
use serde_json::Value;

const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("nmap", "nmap"),
    ("ping", "iputils-ping"),
    ("sshd", "openssh-server"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
];

const FW_A: &str = "198.18.1.1";
const FW_B: &str = "198.18.2.1";
const A: &str = "198.18.1.2";
const B: &str = "198.18.2.2";

fn main() {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let tests = vec![live_trial(
        "a_scan_spoofed_from_the_ssh_client_of_a_real_sshd_neither_bans_it_nor_breaks_the_session",
        TOOLS,
        spoofed_scan_spares_the_ssh_client,
    )];
    libtest_mimic::run(&args, tests).exit();
}

/// The lab, sshd in `fw`, and the daemon started over SSH from `a`.
/// Dropped, it ends the daemon and sshd's sessions (by pid: the daemon's
/// is read from the session, the sessions are children of our sshd), then
/// the lab kills the ssh client and sshd and deletes the namespaces.
struct Session {
    dir: tempfile::TempDir,
    /// Our sshd listener in `fw`.
    sshd: u32,
    /// The daemon, as the session's shell reported its pid.
    daemon: Option<u32>,
    lab: Lab,
}

impl Session {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn socket(&self) -> PathBuf {
        self.path("run/portcullis.sock")
    }

    /// What the daemon wrote to the session (its stderr comes back over
    /// SSH to the client, which writes it to this file).
    fn log(&self) -> String {
        std::fs::read_to_string(self.path("session.log")).unwrap_or_default()
    }

    fn events(&self) -> Vec<Value> {
        json_lines(&self.path("events.jsonl"))
    }

    fn event(&self, what: &str, f: impl Fn(&Value) -> bool) -> Result<Value, Failed> {
        wait_for(Duration::from_secs(10), || {
            self.events().into_iter().find(|e| f(e))
        })
        .ok_or_else(|| {
            format!(
                "no {what} event; events: {:#?}\nsession:\n{}",
                self.events(),
                self.log()
            )
            .into()
        })
    }

    /// `ssh` from `a` to fw's sshd with the test's key and no user or
    /// system configuration, at most 20 s; `extra` goes before the
    /// destination.
    fn ssh_args(&self, extra: &[&str], command: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "20",
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            s(&self.path("client_key")),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|e| e.to_string()));
        args.push(format!("root@{FW_A}"));
        args.push(command.to_owned());
        args
    }

    /// A command run in fw over SSH from `a`: a new login, or with
    /// `-S <control socket>` a new channel on the daemon's own session.
    fn ssh(&self, extra: &[&str], command: &str) -> Result<String, String> {
        let args = self.ssh_args(extra, command);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lab.exec("a", "timeout", &args)
    }

    /// `portcullis <args> --socket ...` in fw; (exit code, output).
    fn ctl(&self, args: &[&str]) -> (i32, String) {
        let sock = self.socket();
        let mut all = vec![env!("CARGO_BIN_EXE_portcullis")];
        all.extend_from_slice(args);
        all.extend(["--socket", s(&sock)]);
        match self.lab.exec("fw", all[0], &all[1..]) {
            Ok(out) => (0, out),
            Err(e) => (1, e),
        }
    }

    fn fw(&self, cmd: &str, args: &[&str]) -> String {
        self.lab.exec("fw", cmd, args).unwrap_or_else(|e| e)
    }

    fn ping(&self, from: &str, to: &str) -> bool {
        self.lab
            .exec(from, "ping", &["-c", "1", "-W", "1", to])
            .is_ok()
    }

    /// A SYN scan of fw's ports 1-100 from `b`, one try per port, 20 s at
    /// most; `spoof` sends it with that source address.
    fn syn_scan(&self, spoof: Option<&str>) -> String {
        let mut args = vec!["-sS", "-n", "-Pn", "-p", "1-100", "--max-retries", "0"];
        args.extend(["--host-timeout", "20s"]);
        if let Some(src) = spoof {
            args.extend(["-S", src, "-e", "vbfw"]);
        }
        args.push(FW_B);
        self.lab.exec("b", "nmap", &args).unwrap_or_else(|e| e)
    }

    /// Whether `addr` is in the kernel's ban set.
    fn banned_in_kernel(&self, addr: &str) -> bool {
        self.fw("nft", &["list", "set", "inet", "portcullis", "ban4"])
            .contains(addr)
    }

    /// TCP resets fw's stack has sent (`/proc/net/snmp`, Tcp OutRsts):
    /// the answers to probes of closed ports.
    fn fw_tcp_resets(&self) -> u64 {
        let snmp = self.fw("cat", &["/proc/net/snmp"]);
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "OutRsts")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // The daemon, if the test did not stop it: by the pid its session
        // reported, if that process is still ours (its command line names
        // our socket).
        if let Some(pid) = self.daemon.take() {
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(s(&self.socket())))
                .unwrap_or(false);
            if ours {
                let _ = run("kill", &["-TERM", &pid.to_string()]);
                let gone = wait_for(Duration::from_secs(5), || {
                    (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
                });
                if gone.is_none() {
                    let _ = run("kill", &["-KILL", &pid.to_string()]);
                }
            }
        }
        // sshd's sessions (its children; the listener does not end them).
        for pid in children_of(self.sshd) {
            let _ = run("kill", &["-TERM", &pid.to_string()]);
        }
        // Then `lab` (a field, dropped after this) kills the client and
        // sshd and deletes the namespaces.
    }
}

/// The processes whose parent is `pid` (`/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| parent_of(*child) == Some(pid))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The lab, keys, sshd running in `fw` and listening.
fn start_sshd() -> Result<Session, Failed> {
    let mut lab = Lab::new();
    for ns in ["fw", "a", "b"] {
        lab.add_ns(ns)?;
    }
    lab.link("fw", &["198.18.1.1/24"], "a", &["198.18.1.2/24"])?;
    lab.link("fw", &["198.18.2.1/24"], "b", &["198.18.2.2/24"])?;
    lab.route_via("a", FW_A, None)?;
    lab.route_via("b", FW_B, None)?;
    lab.forwarding("fw")?;
    // Strict reverse-path filtering would drop the spoofed probes (a's
    // address arriving on b's link) before anything sees them: off, the
    // worst case for the client (it is off in a new namespace unless the
    // host makes namespaces inherit its settings).
    for conf in ["all", "default", "vfwb"] {
        lab.exec(
            "fw",
            "sysctl",
            &["-qw", &format!("net.ipv4.conf.{conf}.rp_filter=0")],
        )?;
    }
    // The attacker claims a's address too (a host route of its own, no
    // subnet route): nmap's route lookup for `-S` needs the source to be
    // local. Its probes reach fw over b's link with a's source; fw
    // answers them to a, over a's link.
    lab.exec(
        "b",
        "ip",
        &[
            "addr",
            "add",
            &format!("{A}/32"),
            "dev",
            "vbfw",
            "noprefixroute",
        ],
    )?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    for key in ["host_key", "client_key"] {
        let path = d.join(key);
        run(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "portcullis-test",
                "-f",
                s(&path),
            ],
        )?;
    }
    std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys"))?;
    // The temporary folder sits under world-writable /tmp, which sshd's
    // StrictModes refuses for AuthorizedKeysFile: off, for this file only.
    std::fs::write(
        d.join("sshd_config"),
        format!(
            "ListenAddress {FW_A}:22\n\
             HostKey {host}\n\
             PidFile {pid}\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             AuthorizedKeysFile {keys}\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             StrictModes no\n\
             LogLevel VERBOSE\n",
            host = d.join("host_key").display(),
            pid = d.join("sshd.pid").display(),
            keys = d.join("authorized_keys").display(),
        ),
    )?;
    // Privilege separation needs /run/sshd. Created when missing and left
    // in place (an empty root-owned folder, as the Debian service makes
    // it): another sshd may be using it by then.
    std::fs::create_dir_all("/run/sshd")?;
    let sshd_bin = which("sshd").ok_or("no sshd")?;
    let cfg = d.join("sshd_config");
    // sshd re-executes itself, so it must be started by its absolute path.
    let sshd = lab.spawn(
        "fw",
        s(&sshd_bin),
        &["-D", "-e", "-f", s(&cfg)],
        &d.join("sshd.log"),
    )?;
    let session = Session {
        dir,
        sshd,
        daemon: None,
        lab,
    };
    wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(session.path("sshd.log"))
            .unwrap_or_default()
            .contains("Server listening on")
            .then_some(())
    })
    .ok_or_else(|| {
        format!(
            "sshd did not start:\n{}",
            std::fs::read_to_string(session.path("sshd.log")).unwrap_or_default()
        )
    })?;
    Ok(session)
}

fn spoofed_scan_spares_the_ssh_client() -> Result<(), Failed> {
    let mut t = start_sshd()?;
    std::fs::write(
        t.path("rules.json"),
        r#"{"events": {"dns_queries": false}}"#,
    )?;
    // The daemon as the session's command, in the foreground (no
    // --no-protect-ssh, no --protect, no SSH_CONNECTION of ours): sshd
    // runs it with root's shell, which execs it, so its parent is the
    // session's sshd. The session is a control master: further commands
    // share its connection.
    let daemon_cmd = format!(
        "echo portcullis pid $$; exec {bin} run --config {cfg} --events {ev} --state-dir {st} --socket {sock}",
        bin = env!("CARGO_BIN_EXE_portcullis"),
        cfg = s(&t.path("rules.json")),
        ev = s(&t.path("events.jsonl")),
        st = s(&t.path("state")),
        sock = s(&t.socket()),
    );
    let ctl = t.path("ctl");
    let args = t.ssh_args(&["-M", "-S", s(&ctl)], &daemon_cmd);
    // Not under `timeout` (the first two arguments): this session lasts
    // the whole test.
    let args: Vec<&str> = args[2..].iter().map(String::as_str).collect();
    let client = t.lab.spawn("a", "ssh", &args, &t.path("session.log"))?;
    let pid = wait_for(Duration::from_secs(10), || {
        t.log().lines().find_map(|l| {
            l.strip_prefix("portcullis pid ")?
                .trim()
                .parse::<u32>()
                .ok()
        })
    })
    .ok_or_else(|| format!("no session:\n{}\nsshd:\n{}", t.log(), sshd_log(&t)))?;
    t.daemon = Some(pid);
    wait_for(Duration::from_secs(15), || {
        t.log().contains("running on NFQUEUE").then_some(())
    })
    .ok_or_else(|| format!("portcullis did not start:\n{}", t.log()))?;

    // 1. It found the client through the real sshd: the session process,
    //    a child of our listener, is the one named.
    let sessions = children_of(t.sshd);
    let line = t
        .log()
        .lines()
        .find(|l| l.contains("protecting the SSH client"))
        .map(str::to_owned)
        .ok_or_else(|| format!("the SSH client is not protected:\n{}", t.log()))?;
    let want = format!("portcullis: protecting the SSH client {A} (session of sshd pid ");
    check(line.starts_with(&want), || line.clone())?;
    let named: u32 = line[want.len()..]
        .split(')')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no pid in {line}"))?;
    check(sessions.contains(&named), || {
        format!(
            "sshd pid {named} is not a session of our sshd {} ({sessions:?})",
            t.sshd
        )
    })?;
    check(parent_of(pid) == Some(named), || {
        format!(
            "the daemon {pid} is not the session's command: parent {:?}",
            parent_of(pid)
        )
    })?;

    // 2. explain names it protected, status lists it, a ban is refused.
    let (code, out) = t.ctl(&["explain", A]);
    check(
        code == 0 && out.contains(&format!("protected[0] {A}")),
        || format!("explain {A}: {out}"),
    )?;
    let (code, out) = t.ctl(&["status"]);
    check(
        code == 0 && out.contains(&format!("never banned: loopback, {A} (SSH client)")),
        || format!("status: {out}"),
    )?;
    let (code, out) = t.ctl(&["ban", A]);
    check(
        code != 0 && out.contains(&format!("never banned: protected[0] {A}")),
        || format!("ban {A}: {out}"),
    )?;

    // 3. A SYN scan spoofed from b with a's address: fw receives and
    //    answers it (RSTs to a for closed ports), nothing bans a.
    check(t.ping("b", FW_B), || "b cannot reach fw".into())?;
    let resets = t.fw_tcp_resets();
    let nmap = t.syn_scan(Some(A));
    let answered = t.fw_tcp_resets() - resets;
    check(answered >= 90, || {
        format!("the spoofed probes did not reach fw: {answered} resets sent\n{nmap}")
    })?;
    // A ban would follow the threshold's packet within milliseconds;
    // a second leaves room for a slow machine.
    std::thread::sleep(Duration::from_secs(1));
    let bans: Vec<Value> = t
        .events()
        .into_iter()
        .filter(|e| e["event_type"] == "ban" && e["src_ip"] == A)
        .collect();
    check(bans.is_empty(), || format!("{A} was banned: {bans:#?}"))?;
    // Nor reported: the allowlist accepts its packets in the kernel before
    // the rule that copies new connections to the detector.
    let seen: Vec<Value> = t
        .events()
        .into_iter()
        .filter(|e| e["src_ip"] == A)
        .collect();
    check(seen.is_empty(), || format!("events of {A}: {seen:#?}"))?;
    check(!t.banned_in_kernel(A), || {
        t.fw("nft", &["list", "set", "inet", "portcullis", "ban4"])
    })?;
    let (_, out) = t.ctl(&["bans"]);
    check(!out.contains(A), || format!("bans lists {A}: {out}"))?;

    // 4. The session still works: a command on its own connection, and a
    //    new login from a.
    let out = t.ssh(&["-S", s(&ctl)], "echo alive on the session");
    check(out.as_deref() == Ok("alive on the session\n"), || {
        format!("the session is broken: {out:?}\n{}", t.log())
    })?;
    let out = t.ssh(&[], "echo new login");
    check(out.as_deref() == Ok("new login\n"), || {
        format!("a new login from {A} failed: {out:?}")
    })?;

    // 5. The same scan from b's own address is detected and banned: the
    //    detector works in this very run.
    let nmap = t.syn_scan(None);
    let scan = t
        .event("scan", |e| e["event_type"] == "scan" && e["src_ip"] == B)
        .map_err(|e| format!("{e:?}\nnmap:\n{nmap}"))?;
    check(scan["scan"]["kind"] == "syn", || format!("{scan:#}"))?;
    t.event("ban", |e| e["event_type"] == "ban" && e["src_ip"] == B)?;
    check(
        wait_for(Duration::from_secs(1), || {
            t.banned_in_kernel(B).then_some(())
        })
        .is_some(),
        || t.fw("nft", &["list", "set", "inet", "portcullis", "ban4"]),
    )?;
    check(!t.ping("b", FW_B), || {
        "the banned b still gets answers".into()
    })?;
    let out = t.ssh(&["-S", s(&ctl)], "echo still alive");
    check(out.as_deref() == Ok("still alive\n"), || {
        format!("the session broke after b's ban: {out:?}")
    })?;

    // 6. SIGTERM ends the daemon cleanly; its exit status comes back over
    //    SSH as the client's, and its rules are gone.
    t.daemon = None;
    run("kill", &["-TERM", &pid.to_string()])?;
    let code = t.lab.wait(client, Duration::from_secs(15))?;
    check(code == Some(0), || {
        format!("the session ended with {code:?}:\n{}", t.log())
    })?;
    let tables = t.fw("nft", &["list", "tables"]);
    check(!tables.contains("portcullis"), || {
        format!("our table is still there: {tables}")
    })?;
    let sshd = t.sshd;
    t.lab.stop(sshd, Duration::from_secs(10))?;

    // 7. The control: the same spoofed scan against a daemon that does not
    //    protect the SSH client bans a. The probes were visible; only the
    //    protection spared a.
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let (cfg, ev, st, sock) = (
        t.path("rules.json"),
        t.path("events.jsonl"),
        t.path("state"),
        t.socket(),
    );
    let args = [
        "run",
        "--config",
        s(&cfg),
        "--events",
        s(&ev),
        "--state-dir",
        s(&st),
        "--socket",
        s(&sock),
        "--no-protect-ssh",
    ];
    let unprotected = t.lab.spawn("fw", bin, &args, &t.path("control.log"))?;
    let log = t.path("control.log");
    let control_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(Duration::from_secs(15), || {
        control_log().contains("running on NFQUEUE").then_some(())
    })
    .ok_or_else(|| format!("portcullis did not start:\n{}", control_log()))?;
    let nmap = t.syn_scan(Some(A));
    t.event("ban of the unprotected client", |e| {
        e["event_type"] == "ban" && e["src_ip"] == A
    })
    .map_err(|e| format!("{e:?}\nnmap:\n{nmap}"))?;
    check(
        wait_for(Duration::from_secs(1), || {
            t.banned_in_kernel(A).then_some(())
        })
        .is_some(),
        || t.fw("nft", &["list", "set", "inet", "portcullis", "ban4"]),
    )?;
    let code = t.lab.stop(unprotected, Duration::from_secs(10))?;
    check(code == Some(0), || {
        format!("portcullis exited with {code:?}:\n{}", control_log())
    })?;
    eprintln!(
        "spoofed probes answered by fw: {answered}; {A} protected (sshd pid {named}), not banned; {B} banned"
    );
    Ok(())
}

fn sshd_log(t: &Session) -> String {
    std::fs::read_to_string(t.path("sshd.log")).unwrap_or_default()
}
