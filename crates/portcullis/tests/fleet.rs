//! Fleet mode against a real CrowdSec Local API (Debian's `crowdsec`),
//! started by the test in its own namespace with a temp config, and two
//! portcullis daemons sharing it.
//!
//! ```text
//!   atk  198.18.10.2 ──┐
//!   atk2 198.18.15.2 ──┤
//!   clean 198.18.13.2 ─┤ r (router) ── ha 198.18.11.2 (portcullis A)
//!   lapi 198.18.14.2 ──┤           └── hb 198.18.12.2 (portcullis B)
//! ```
//! Root is needed, and crowdsec/cscli; otherwise the trial reports itself
//! ignored with the reason. Scans are bounded (nmap, 100 ports, one try,
//! a host timeout); every process is stopped by its pid and every
//! namespace removed, also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed};
use portcullis_testnet::{check, live_trial, path_str as s, wait_for, Lab};

const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("nmap", "nmap"),
    ("ping", "iputils-ping"),
    ("crowdsec", "crowdsec"),
    ("cscli", "crowdsec"),
];

fn main() {
    let args = Arguments::from_args();
    let tests = vec![live_trial("two_daemons_share_one_lapi", TOOLS, two_daemons)];
    libtest_mimic::run(&args, tests).exit();
}

const ATK: &str = "198.18.10.2";
const ATK2: &str = "198.18.15.2";
const HA: &str = "198.18.11.2";
const HB: &str = "198.18.12.2";
const LAPI: &str = "198.18.14.2";
const PORT: &str = "18089";
/// The pull interval of both daemons, seconds.
const PULL: u64 = 2;

struct Fleet {
    lab: Lab,
    dir: tempfile::TempDir,
    lapi: Option<u32>,
    starts: u32,
    daemons: Vec<(String, u32)>,
}

impl Fleet {
    fn new() -> Result<Self, Failed> {
        let mut lab = Lab::new();
        lab.add_ns("r")?;
        for (i, ns) in ["atk", "ha", "hb", "clean", "lapi", "atk2"]
            .iter()
            .enumerate()
        {
            lab.add_ns(ns)?;
            let net = 10 + i;
            lab.link(
                "r",
                &[&format!("198.18.{net}.1/24")],
                ns,
                &[&format!("198.18.{net}.2/24")],
            )?;
            lab.route_via(ns, &format!("198.18.{net}.1"), None)?;
        }
        lab.forwarding("r")?;
        Ok(Self {
            lab,
            dir: tempfile::tempdir()?,
            lapi: None,
            starts: 0,
            daemons: Vec::new(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cscli(&self, args: &[&str]) -> Result<String, Failed> {
        let cfg = self.path("lapi/config.yaml");
        let mut all = vec!["-c", s(&cfg), "--error"];
        all.extend_from_slice(args);
        Ok(self.lab.exec("lapi", "cscli", &all)?)
    }

    /// Writes the LAPI's config and registers a bouncer and a machine per
    /// daemon (straight into SQLite).
    fn setup_lapi(&self) -> Result<(), Failed> {
        let d = self.path("lapi");
        std::fs::create_dir_all(&d)?;
        let d = s(&d);
        let config = format!(
            "common:\n  log_media: stdout\n  log_level: info\n\
             config_paths:\n  config_dir: {d}/\n  data_dir: {d}/\n\
             db_config:\n  type: sqlite\n  db_path: {d}/crowdsec.db\n  use_wal: true\n\
             api:\n  client:\n    credentials_path: {d}/local_api_credentials.yaml\n\
             \x20 server:\n    listen_uri: {LAPI}:{PORT}\n    profiles_path: {d}/profiles.yaml\n"
        );
        let profiles = "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\n\
                        decisions:\n - type: ban\n   duration: 4h\non_success: break\n";
        std::fs::write(format!("{d}/config.yaml"), config)?;
        std::fs::write(format!("{d}/profiles.yaml"), profiles)?;
        self.cscli(&["machines", "add", "-a"])?;
        for host in ["ha", "hb"] {
            self.cscli(&[
                "bouncers",
                "add",
                &format!("pc-{host}"),
                "-k",
                &format!("key-{host}"),
            ])?;
            self.cscli(&[
                "machines",
                "add",
                &format!("pc-{host}"),
                "--password",
                &format!("pw-{host}-0123456789"),
                "-f",
                "/dev/null",
            ])?;
            std::fs::write(self.path(&format!("{host}.key")), format!("key-{host}\n"))?;
            std::fs::write(
                self.path(&format!("{host}.pw")),
                format!("pw-{host}-0123456789\n"),
            )?;
        }
        Ok(())
    }

    fn start_lapi(&mut self) -> Result<(), Failed> {
        let cfg = self.path("lapi/config.yaml");
        self.starts += 1;
        let log = self.path(&format!("lapi/crowdsec-{}.log", self.starts));
        let pid = self.lab.spawn(
            "lapi",
            "crowdsec",
            &["-c", s(&cfg), "-no-cs", "-no-capi"],
            &log,
        )?;
        self.lapi = Some(pid);
        let up = wait_for(Duration::from_secs(10), || {
            self.lab
                .exec("lapi", "nmap", &["-n", "-Pn", "-p", PORT, LAPI])
                .ok()
                .filter(|o| o.contains("open"))
        });
        up.ok_or("the LAPI did not come up")?;
        Ok(())
    }

    fn stop_lapi(&mut self) -> Result<(), Failed> {
        if let Some(pid) = self.lapi.take() {
            self.lab.stop(pid, Duration::from_secs(5))?;
        }
        Ok(())
    }

    fn start_daemon(&mut self, host: &str) -> Result<(), Failed> {
        let rules = format!(
            r#"{{"scan": {{"ban_duration": "10m"}},
  "crowdsec": {{"lapi_url": "http://{LAPI}:{PORT}/", "api_key_file": "{host}.key",
    "machine_id": "pc-{host}", "password_file": "{host}.pw", "pull_interval": "{PULL}s",
    "danger_plain_http_remote": true}}}}"#
        );
        let cfg = self.path(&format!("{host}.json"));
        std::fs::write(&cfg, rules)?;
        let (ev, st, sock, log) = (
            self.path(&format!("{host}.events")),
            self.path(&format!("{host}-state")),
            self.path(&format!("{host}.sock")),
            self.path(&format!("{host}.log")),
        );
        let bin = env!("CARGO_BIN_EXE_portcullis");
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
            "--no-protect-peers",
        ];
        let pid = self.lab.spawn(host, bin, &args, &log)?;
        self.daemons.push((host.to_owned(), pid));
        wait_for(Duration::from_secs(15), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("running on NFQUEUE")
                .then_some(())
        })
        .ok_or_else(|| format!("portcullis in {host} did not start:\n{}", self.log(host)))?;
        Ok(())
    }

    fn log(&self, host: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{host}.log"))).unwrap_or_default()
    }

    /// The elements of CrowdSec set `set` in `host`'s kernel.
    fn set(&self, host: &str, set: &str) -> String {
        self.lab
            .exec(host, "nft", &["list", "set", "inet", "portcullis", set])
            .unwrap_or_else(|e| e)
    }

    /// Waits up to `limit` until `host`'s set `set` holds `what` (or not).
    fn wait_set(
        &self,
        host: &str,
        set: &str,
        what: &str,
        present: bool,
        limit: Duration,
    ) -> Result<Duration, Failed> {
        let t = Instant::now();
        wait_for(limit, || {
            (self.set(host, set).contains(what) == present).then_some(())
        })
        .ok_or_else(|| {
            format!(
                "{host}: {what} {} in {set} after {limit:?}:\n{}\nlog:\n{}",
                if present { "not" } else { "still" },
                self.set(host, set),
                self.log(host)
            )
        })?;
        Ok(t.elapsed())
    }

    fn ping(&self, from: &str, to: &str) -> bool {
        self.lab
            .exec(from, "ping", &["-c", "1", "-W", "1", to])
            .is_ok()
    }

    fn status(&self, host: &str) -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["status", "--json", "--socket"])
            .arg(self.path(&format!("{host}.sock")))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn nmap(&self, from: &str, target: &str) {
        let _ = self.lab.exec(
            from,
            "nmap",
            &[
                "-sS",
                "-n",
                "-Pn",
                "-p",
                "1-100",
                "--max-retries",
                "0",
                "--host-timeout",
                "10s",
                target,
            ],
        );
    }

    fn stop_daemons(&mut self) -> Result<(), Failed> {
        for (host, pid) in std::mem::take(&mut self.daemons) {
            let code = self.lab.stop(pid, Duration::from_secs(15))?;
            if code != Some(0) {
                return Err(format!(
                    "portcullis in {host} exited with {code:?}:\n{}",
                    self.log(&host)
                )
                .into());
            }
        }
        Ok(())
    }
}

fn two_daemons() -> Result<(), Failed> {
    let t0 = Instant::now();
    let mut f = Fleet::new()?;
    f.setup_lapi()?;
    f.start_lapi()?;
    f.start_daemon("ha")?;
    f.start_daemon("hb")?;
    check(f.ping("atk", HB) && f.ping("clean", HB), || {
        "no path to hb before any ban".into()
    })?;

    // 1. A scans -> A bans and pushes; B enforces within one pull + 1 s.
    f.nmap("atk", HA);
    f.wait_set("ha", "ban4", ATK, true, Duration::from_secs(5))?;
    let took = f.wait_set("hb", "cs4", ATK, true, Duration::from_secs(PULL + 1 + 5))?;
    println!("  A's ban reached B's kernel {took:?} after A's kernel had it");
    check(took <= Duration::from_secs(PULL + 1), || {
        format!("B took {took:?}, more than one pull interval + 1 s")
    })?;
    check(!f.ping("atk", HB), || "the scanner still reaches B".into())?;
    check(f.ping("clean", HB), || {
        "a clean host no longer reaches B".into()
    })?;
    let bans = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["bans", "--json", "--socket"])
        .arg(f.path("hb.sock"))
        .output()?;
    let bans = String::from_utf8_lossy(&bans.stdout).into_owned();
    check(
        bans.contains("\"origin\":\"crowdsec\"") || bans.contains("\"origin\": \"crowdsec\""),
        || format!("B's bans do not show the CrowdSec origin: {bans}"),
    )?;
    check(bans.contains("portcullis/port-scan"), || {
        format!("no scenario in B's bans: {bans}")
    })?;

    // 2. cscli decisions add --ip / --range reach both; delete lifts them.
    f.cscli(&[
        "decisions",
        "add",
        "--ip",
        "198.18.13.77",
        "--duration",
        "1h",
        "--reason",
        "fleet-test",
    ])?;
    f.cscli(&[
        "decisions",
        "add",
        "--range",
        "198.18.20.0/24",
        "--duration",
        "1h",
    ])?;
    for host in ["ha", "hb"] {
        f.wait_set(
            host,
            "cs4",
            "198.18.13.77",
            true,
            Duration::from_secs(PULL + 2),
        )?;
        f.wait_set(
            host,
            "csr4",
            "198.18.20.0/24",
            true,
            Duration::from_secs(PULL + 2),
        )?;
    }
    f.cscli(&["decisions", "delete", "--ip", "198.18.13.77"])?;
    f.cscli(&["decisions", "delete", "--range", "198.18.20.0/24"])?;
    for host in ["ha", "hb"] {
        f.wait_set(
            host,
            "cs4",
            "198.18.13.77",
            false,
            Duration::from_secs(PULL + 2),
        )?;
        f.wait_set(
            host,
            "csr4",
            "198.18.20.0/24",
            false,
            Duration::from_secs(PULL + 2),
        )?;
    }

    // 3. The LAPI dies: bans stay, daemons run, status says why.
    f.stop_lapi()?;
    std::thread::sleep(Duration::from_secs(PULL + 1));
    check(f.set("hb", "cs4").contains(ATK), || {
        "B lost the ban with the LAPI".into()
    })?;
    check(!f.ping("atk", HB), || {
        "the scanner reaches B while the LAPI is down".into()
    })?;
    let st = f.status("hb");
    check(
        st["fleet"]["failing_pulls"].as_u64().unwrap_or(0) >= 1
            && st["fleet"]["last_error"].is_string(),
        || format!("B's status does not say pulls fail: {}", st["fleet"]),
    )?;
    // Something flushes B's whole ruleset while the LAPI is down: the
    // kernel thread puts our table back, and the CrowdSec decisions with
    // it (from what the daemon holds, not from the LAPI).
    f.lab.exec("hb", "nft", &["flush", "ruleset"])?;
    let took = f.wait_set("hb", "cs4", ATK, true, Duration::from_secs(4))?;
    println!("  CrowdSec decisions back {took:?} after nft flush ruleset");
    check(!f.ping("atk", HB), || {
        "the scanner reaches B after the ruleset was flushed".into()
    })?;
    // A finding while it is down waits on disk...
    f.nmap("atk2", HA);
    f.wait_set("ha", "ban4", ATK2, true, Duration::from_secs(5))?;
    let queued = wait_for(Duration::from_secs(3), || {
        (f.status("ha")["fleet"]["alerts_queued"].as_u64() >= Some(1)).then_some(())
    });
    check(queued.is_some(), || {
        format!("A's finding is not queued: {}", f.status("ha")["fleet"])
    })?;
    // ...and goes out when the LAPI is back; B then enforces it.
    f.start_lapi()?;
    f.wait_set("hb", "cs4", ATK2, true, Duration::from_secs(15))?;
    check(!f.ping("atk2", HB), || {
        "the second scanner reaches B".into()
    })?;
    let st = f.status("ha");
    check(
        st["fleet"]["alerts_queued"] == 0 && st["fleet"]["failing_pulls"] == 0,
        || format!("A after the LAPI came back: {}", st["fleet"]),
    )?;
    f.stop_daemons()?;
    f.stop_lapi()?;
    println!("  whole fleet test: {:?}", t0.elapsed());
    Ok(())
}
