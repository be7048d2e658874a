//! Live tests against a real CrowdSec Local API.
//!
//! Each test starts its own LAPI (`crowdsec -no-cs -no-capi`) with its
//! config, SQLite database and log in a temp dir and its own port on
//! 127.0.0.1, registers a bouncer and machines there with `cscli`, and
//! stops it by pid at the end (also on failure: the fixture's `Drop`),
//! printing the end of its log when the test failed. No root, no network,
//! nothing under /etc or /var (../shared/CROWDSEC-NOTES.md).
//!
//! A custom harness (libtest-mimic) lets each test report itself
//! **ignored with the reason** when `crowdsec` or `cscli` is missing
//! (`scripts/test` installs Debian's `crowdsec` as root, offline).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use portcullis_crowdsec::{
    Bouncer, ClientConfig, CrowdsecError, DecisionKind, Delta, ScanAlert, Scope, Watcher, ORIGIN,
    SCENARIO,
};

fn main() {
    let args = Arguments::from_args();
    let tests = vec![
        live("cscli_decisions_appear_in_startup_stream", cscli_add),
        live("cscli_delete_appears_as_deleted", cscli_delete),
        live("pushed_alert_becomes_a_streamed_decision", push_alert),
        live("wrong_credentials_are_explained", wrong_credentials),
        live("lapi_down_is_a_connection_error", lapi_down),
        live_tls("tls_ca_file_and_client_certificate", tls),
    ];
    libtest_mimic::run(&args, tests).exit();
}

fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/bin", "/usr/sbin", "/bin"])
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file());
    found
}

fn live(name: &str, f: fn(&mut Lapi) -> Result<(), Failed>) -> Trial {
    trial(name, false, f)
}

/// A test of a LAPI that serves HTTPS (certificates made with `openssl`).
fn live_tls(name: &str, f: fn(&mut Lapi) -> Result<(), Failed>) -> Trial {
    trial(name, true, f)
}

fn trial(name: &str, tls: bool, f: fn(&mut Lapi) -> Result<(), Failed>) -> Trial {
    Trial::ignorable_test(name, move || {
        for bin in ["crowdsec", "cscli"] {
            if which(bin).is_none() {
                return Ok(Completion::ignored_with(format!(
                    "skipped: `{bin}` is missing: apt-get install crowdsec \
                     (offline: see scripts/test, which installs it as root)"
                )));
            }
        }
        if tls && which("openssl").is_none() {
            return Ok(Completion::ignored_with(
                "skipped: `openssl` (to make the test certificates) is missing: apt-get install openssl",
            ));
        }
        let mut lapi = Lapi::start(tls)?;
        let result = f(&mut lapi);
        if let Err(e) = &result {
            lapi.stop();
            return Err(format!(
                "{}\n---- crowdsec log (end) ----\n{}",
                msg(e),
                lapi.log_tail()
            )
            .into());
        }
        result.map(|()| Completion::Completed)
    })
}

fn msg(e: &Failed) -> String {
    e.message().unwrap_or("failed").to_owned()
}

const KEY: &str = "portcullis-test-bouncer-key-0123456789";
const MACHINE: &str = "portcullis-test";
const PASSWORD: &str = "S3cret-portcullis-test";

/// A LAPI in a temp dir, stopped (by pid) and removed on drop.
struct Lapi {
    dir: tempfile::TempDir,
    child: Option<Child>,
    url: String,
}

impl Lapi {
    fn start(tls: bool) -> Result<Lapi, Failed> {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-lapi.")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let d = dir.path().display().to_string();
        // Pick a free port: bind :0, read it, close (a small race).
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("free port: {e}"))?
            .port();
        let (scheme, tls_section) = if tls {
            make_certificates(dir.path())?;
            (
                "https",
                format!(
                    "    tls:\n      cert_file: {d}/server.pem\n      key_file: {d}/server.key\n\
                     \x20     ca_cert_path: {d}/ca.pem\n      client_verification: VerifyClientCertIfGiven\n\
                     \x20     bouncers_allowed_ou: [bouncer-ou]\n      agents_allowed_ou: [agent-ou]\n"
                ),
            )
        } else {
            ("http", String::new())
        };
        let config = format!(
            "common:\n  log_media: stdout\n  log_level: info\n\
             config_paths:\n  config_dir: {d}/\n  data_dir: {d}/\n\
             db_config:\n  type: sqlite\n  db_path: {d}/crowdsec.db\n  use_wal: true\n\
             api:\n  client:\n    credentials_path: {d}/local_api_credentials.yaml\n\
             \x20 server:\n    listen_uri: 127.0.0.1:{port}\n    profiles_path: {d}/profiles.yaml\n{tls_section}"
        );
        let profiles = "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\n\
                        decisions:\n - type: ban\n   duration: 4h\non_success: break\n";
        fs::write(dir.path().join("config.yaml"), config).map_err(|e| format!("config: {e}"))?;
        fs::write(dir.path().join("profiles.yaml"), profiles)
            .map_err(|e| format!("profiles: {e}"))?;
        let mut lapi = Lapi {
            dir,
            child: None,
            url: format!("{scheme}://127.0.0.1:{port}/"),
        };
        // Registrations go straight into SQLite, before the LAPI runs.
        lapi.cscli(&["machines", "add", "-a"])?;
        lapi.cscli(&["bouncers", "add", "portcullis-test-bouncer", "-k", KEY])?;
        lapi.cscli(&[
            "machines",
            "add",
            MACHINE,
            "--password",
            PASSWORD,
            "-f",
            "/dev/null",
        ])?;

        let log = fs::File::create(lapi.dir.path().join("crowdsec.log"))
            .map_err(|e| format!("log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("log: {e}"))?;
        let child = Command::new("crowdsec")
            .arg("-c")
            .arg(lapi.dir.path().join("config.yaml"))
            .args(["-no-cs", "-no-capi"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("spawn crowdsec: {e}"))?;
        lapi.child = Some(child);
        let bouncer = lapi.bouncer()?;
        let start = Instant::now();
        loop {
            if bouncer.health().is_ok() {
                break;
            }
            if let Some(c) = lapi.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "crowdsec exited during startup ({status}):\n{}",
                        lapi.log_tail()
                    )
                    .into());
                }
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!("LAPI not up after 10 s:\n{}", lapi.log_tail()).into());
            }
            thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "LAPI up on {} in {} ms",
            lapi.url,
            start.elapsed().as_millis()
        );
        Ok(lapi)
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(self.url.clone());
        c.timeout = Duration::from_secs(5);
        if self.url.starts_with("https") {
            c.tls.ca_file = Some(self.dir.path().join("ca.pem"));
        }
        c
    }

    fn bouncer(&self) -> Result<Bouncer, Failed> {
        Bouncer::new(&self.config(), KEY).map_err(|e| format!("{e}").into())
    }

    fn watcher(&self) -> Result<Watcher, Failed> {
        Watcher::new(&self.config(), MACHINE, PASSWORD).map_err(|e| format!("{e}").into())
    }

    fn cscli(&self, args: &[&str]) -> Result<String, Failed> {
        let out = Command::new("cscli")
            .arg("-c")
            .arg(self.dir.path().join("config.yaml"))
            .arg("--error")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cscli: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cscli {}: {}\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// SIGTERM, then SIGKILL after 3 s; waits for the process.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("crowdsec.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// A test CA, the LAPI's certificate for 127.0.0.1 and a bouncer client
/// certificate (OU `bouncer-ou`), all P-256, in `dir`.
fn make_certificates(dir: &Path) -> Result<(), Failed> {
    let openssl = |args: &[&str]| -> Result<(), Failed> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        check(out.status.success(), || {
            format!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(key);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=portcullis test CA",
    ]);
    openssl(&ca)?;
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| format!("{e}"))?;
    fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")
        .map_err(|e| format!("{e}"))?;
    for (name, subject) in [
        ("server", "/CN=127.0.0.1"),
        ("client", "/OU=bouncer-ou/CN=portcullis-tls-bouncer"),
    ] {
        let (k, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req"];
        req.extend(key);
        req.extend(["-keyout", &k, "-out", &csr, "-subj", subject]);
        openssl(&req)?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ])?;
    }
    Ok(())
}

impl Drop for Lapi {
    fn drop(&mut self) {
        self.stop();
    }
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(what().into())
    }
}

fn stream(b: &Bouncer, startup: bool) -> Result<Delta, Failed> {
    b.stream(startup)
        .map_err(|e| format!("stream(startup={startup}): {e}").into())
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn within(d: Duration, lo: Duration, hi: Duration) -> bool {
    lo <= d && d <= hi
}

// ---- tests ---------------------------------------------------------------

fn cscli_add(lapi: &mut Lapi) -> Result<(), Failed> {
    let b = lapi.bouncer()?;
    let d = stream(&b, true)?;
    check(d == Delta::default(), || format!("fresh LAPI: {d:?}"))?;

    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "198.51.100.7",
        "--duration",
        "1h",
        "--reason",
        "test",
    ])?;
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "203.0.113.0/24",
        "--duration",
        "2h",
    ])?;
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "2001:db8::1",
        "--duration",
        "30m",
        "--type",
        "captcha",
    ])?;
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "2001:db8:1::/48",
        "--duration",
        "90m",
    ])?;

    let d = stream(&b, true)?;
    check(d.deleted.is_empty() && d.new.len() == 4, || {
        format!("{d:?}")
    })?;
    check(
        d.stats.rejected() == 0 && d.stats.unknown_scope == 0,
        || format!("{:?}", d.stats),
    )?;
    let find = |v: &str| d.new.iter().find(|x| x.value == net(v));
    let m = Duration::from_secs(60);

    let ip = find("198.51.100.7/32").ok_or("198.51.100.7 not streamed")?;
    check(
        ip.scope == Scope::Ip && ip.kind == DecisionKind::Ban,
        || format!("{ip:?}"),
    )?;
    check(ip.origin == "cscli" && ip.scenario == "test", || {
        format!("{ip:?}")
    })?;
    check(within(ip.duration, 59 * m, 60 * m), || format!("{ip:?}"))?;

    let range = find("203.0.113.0/24").ok_or("203.0.113.0/24 not streamed")?;
    check(range.scope == Scope::Range, || format!("{range:?}"))?;
    check(within(range.duration, 119 * m, 120 * m), || {
        format!("{range:?}")
    })?;

    let v6 = find("2001:db8::1/128").ok_or("2001:db8::1 not streamed")?;
    check(
        v6.scope == Scope::Ip && v6.kind == DecisionKind::Captcha,
        || format!("{v6:?}"),
    )?;
    check(within(v6.duration, 29 * m, 30 * m), || format!("{v6:?}"))?;

    let r6 = find("2001:db8:1::/48").ok_or("2001:db8:1::/48 not streamed")?;
    check(
        r6.scope == Scope::Range && within(r6.duration, 89 * m, 90 * m),
        || format!("{r6:?}"),
    )?;

    // Right after a startup pull, a delta pull has nothing new.
    let d = stream(&b, false)?;
    check(d.new.is_empty(), || format!("delta after startup: {d:?}"))
}

fn cscli_delete(lapi: &mut Lapi) -> Result<(), Failed> {
    let b = lapi.bouncer()?;
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "198.51.100.8",
        "--duration",
        "1h",
    ])?;
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "192.0.2.0/25",
        "--duration",
        "1h",
    ])?;
    let d = stream(&b, true)?;
    check(d.new.len() == 2, || format!("{d:?}"))?;
    let id = d
        .new
        .iter()
        .find(|x| x.value == net("198.51.100.8/32"))
        .ok_or("198.51.100.8 not streamed")?
        .id;

    lapi.cscli(&["decisions", "delete", "--ip", "198.51.100.8"])?;
    let d = stream(&b, false)?;
    check(d.new.is_empty(), || format!("{d:?}"))?;
    let del = d
        .deleted
        .iter()
        .find(|x| x.value == net("198.51.100.8/32"))
        .ok_or_else(|| format!("deletion not streamed: {d:?}"))?;
    check(del.id == id && del.duration == Duration::ZERO, || {
        format!("{del:?}")
    })?;
    check(
        !d.deleted.iter().any(|x| x.value == net("192.0.2.0/25")),
        || format!("{d:?}"),
    )?;

    lapi.cscli(&["decisions", "delete", "--range", "192.0.2.0/25"])?;
    let d = stream(&b, false)?;
    check(
        d.deleted
            .iter()
            .any(|x| x.value == net("192.0.2.0/25") && x.scope == Scope::Range),
        || format!("range deletion not streamed: {d:?}"),
    )?;
    // A startup pull now holds nothing active.
    let d = stream(&b, true)?;
    check(d.new.is_empty() && d.deleted.len() >= 2, || {
        format!("{d:?}")
    })
}

fn push_alert(lapi: &mut Lapi) -> Result<(), Failed> {
    let b = lapi.bouncer()?;
    let mut w = lapi.watcher()?;
    w.login().map_err(|e| format!("login: {e}"))?;
    let expiry = w.token_expiry().ok_or("no token after login")?;
    check(
        expiry > SystemTime::now() + Duration::from_secs(30 * 60),
        || format!("token expires at {expiry:?}"),
    )?;

    let now = SystemTime::now();
    let mut alert = ScanAlert {
        source: "198.51.100.9".parse().map_err(|e| format!("{e}"))?,
        kind: "tcp-syn".into(),
        ports: vec![22, 80, 443, 8080],
        probes: 37,
        start: now - Duration::from_secs(10),
        stop: now,
        ban: Some(Duration::from_secs(4 * 3600)),
    };
    let ids = w
        .push_alert(&alert)
        .map_err(|e| format!("push_alert: {e}"))?;
    check(ids.len() == 1, || format!("alert ids {ids:?}"))?;

    alert.source = "2001:db8::9".parse().map_err(|e| format!("{e}"))?;
    alert.ban = Some(Duration::from_secs(600));
    // A new watcher logs in by itself on first use.
    let mut w2 = lapi.watcher()?;
    w2.push_alert(&alert)
        .map_err(|e| format!("push_alert (IPv6): {e}"))?;

    let d = stream(&b, true)?;
    check(d.new.len() == 2, || format!("{d:?}"))?;
    for (v, lo, hi) in [
        ("198.51.100.9/32", 3 * 3600 + 3500, 4 * 3600),
        ("2001:db8::9/128", 500, 600),
    ] {
        let x = d
            .new
            .iter()
            .find(|x| x.value == net(v))
            .ok_or_else(|| format!("{v} not streamed: {d:?}"))?;
        check(
            x.scenario == SCENARIO
                && x.origin == ORIGIN
                && x.scope == Scope::Ip
                && x.kind == DecisionKind::Ban
                && within(x.duration, Duration::from_secs(lo), Duration::from_secs(hi)),
            || format!("{x:?}"),
        )?;
    }

    // The meta made it into the LAPI's alert.
    let inspect = lapi.cscli(&["alerts", "inspect", "-o", "json", &ids[0]])?;
    for needle in ["\"probes\"", "\"37\"", "22,80,443,8080", "tcp-syn"] {
        check(inspect.contains(needle), || {
            format!("{needle} not in the alert: {inspect}")
        })?;
    }

    // A report without a ban makes no decision.
    alert.source = "198.51.100.10".parse().map_err(|e| format!("{e}"))?;
    alert.ban = None;
    w.push_alert(&alert)
        .map_err(|e| format!("push_alert (no ban): {e}"))?;
    let d = stream(&b, false)?;
    check(d.new.is_empty(), || {
        format!("an alert without ban made a decision: {d:?}")
    })
}

fn wrong_credentials(lapi: &mut Lapi) -> Result<(), Failed> {
    let b = Bouncer::new(&lapi.config(), "wrong-key").map_err(|e| format!("{e}"))?;
    match b.stream(true) {
        Err(e @ CrowdsecError::BadApiKey { .. }) => {
            check(e.to_string().contains("cscli bouncers"), || e.to_string())?;
            check(!e.is_transient(), || e.to_string())?;
        }
        other => return Err(format!("wrong key gave {other:?}").into()),
    }
    let mut w = Watcher::new(&lapi.config(), MACHINE, "wrong").map_err(|e| format!("{e}"))?;
    match w.login() {
        Err(e @ CrowdsecError::BadLogin { status: 401, .. }) => {
            check(
                e.to_string().contains("incorrect Username or Password"),
                || e.to_string(),
            )?;
        }
        other => return Err(format!("wrong password gave {other:?}").into()),
    }
    let mut w =
        Watcher::new(&lapi.config(), "nobody-here", PASSWORD).map_err(|e| format!("{e}"))?;
    match w.login() {
        Err(CrowdsecError::BadLogin { .. }) => Ok(()),
        other => Err(format!("unknown machine gave {other:?}").into()),
    }
}

fn lapi_down(lapi: &mut Lapi) -> Result<(), Failed> {
    let b = lapi.bouncer()?;
    let mut w = lapi.watcher()?;
    stream(&b, true)?;
    w.login().map_err(|e| format!("login: {e}"))?;
    lapi.stop();
    let alert = ScanAlert {
        source: "198.51.100.11".parse().map_err(|e| format!("{e}"))?,
        kind: "udp".into(),
        ports: vec![53],
        probes: 1,
        start: SystemTime::now(),
        stop: SystemTime::now(),
        ban: Some(Duration::from_secs(60)),
    };
    for (what, result) in [
        ("stream", b.stream(false).map(|_| ())),
        ("health", b.health()),
        ("push_alert", w.push_alert(&alert).map(|_| ())),
    ] {
        match result {
            Err(e @ CrowdsecError::ConnectionRefused { .. }) => {
                let text = e.to_string();
                check(
                    text.contains("connection refused") && text.contains(&lapi.url),
                    || text.clone(),
                )?;
                check(e.is_transient(), || text)?;
            }
            other => return Err(format!("{what} with the LAPI down gave {other:?}").into()),
        }
    }
    Ok(())
}

fn tls(lapi: &mut Lapi) -> Result<(), Failed> {
    // Login, alert and API key over HTTPS, the LAPI's certificate checked
    // against our CA.
    let b = lapi.bouncer()?;
    let mut w = lapi.watcher()?;
    let now = SystemTime::now();
    let alert = ScanAlert {
        source: "198.51.100.20".parse().map_err(|e| format!("{e}"))?,
        kind: "tcp-syn".into(),
        ports: vec![22],
        probes: 5,
        start: now,
        stop: now,
        ban: Some(Duration::from_secs(3600)),
    };
    w.push_alert(&alert)
        .map_err(|e| format!("push_alert over https: {e}"))?;
    let d = stream(&b, true)?;
    check(
        d.new.len() == 1 && d.new[0].value == net("198.51.100.20/32"),
        || format!("{d:?}"),
    )?;

    // Without our CA (the public roots), the certificate is not trusted.
    let mut config = lapi.config();
    config.tls.ca_file = None;
    match Bouncer::new(&config, KEY)
        .map_err(|e| format!("{e}"))?
        .stream(true)
    {
        Err(e @ CrowdsecError::Tls { .. }) => {
            check(e.to_string().contains("CA file"), || e.to_string())?
        }
        other => return Err(format!("untrusted certificate gave {other:?}").into()),
    }

    // A client certificate instead of a key: the LAPI makes the bouncer.
    let mut config = lapi.config();
    config.tls.client_cert = Some(lapi.dir.path().join("client.pem"));
    config.tls.client_key = Some(lapi.dir.path().join("client.key"));
    let by_cert = Bouncer::new(&config, "").map_err(|e| format!("{e}"))?;
    let d = stream(&by_cert, true)?;
    check(
        d.new.len() == 1 && d.new[0].value == net("198.51.100.20/32"),
        || format!("{d:?}"),
    )?;
    let bouncers = lapi.cscli(&["bouncers", "list", "-o", "json"])?;
    check(
        bouncers.contains("portcullis-tls-bouncer@127.0.0.1")
            && bouncers.contains(r#""auth_type": "tls""#),
        || format!("no TLS bouncer: {bouncers}"),
    )?;

    // The same bouncer without certificate nor key is refused.
    let mut config = lapi.config();
    config.tls.client_cert = None;
    match Bouncer::new(&config, "")
        .map_err(|e| format!("{e}"))?
        .stream(true)
    {
        Err(CrowdsecError::BadApiKey { .. }) => Ok(()),
        other => Err(format!("no key and no certificate gave {other:?}").into()),
    }
}
