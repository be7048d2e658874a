//! The Debian package (`scripts/deb`, `[package.metadata.deb]`): the binary
//! under test is packaged with cargo-deb and, as root, installed with
//! `apt-get install ./portcullis_<version>_amd64.deb`. The test checks every
//! file and the control fields, runs the installed binary (`--version`,
//! `check` of the shipped rules file) and `systemd-analyze verify` on the
//! installed unit, leaves kernel rules behind with a `kill -9`ed daemon,
//! removes the package (its prerm must clean them up, and leave a running
//! daemon's rules alone), purges it and checks that nothing of ours is
//! left.
//!
//! The package is purged at the end whatever happens (a guard's `Drop`).
//! dpkg runs inside a network namespace of the test's own, so its
//! maintainer scripts never touch the host's firewall. The test reports
//! itself ignored with the reason without root or its tools, and when a
//! portcullis package or its data is already on the machine (the purge
//! would delete an operator's installation).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use portcullis_testnet::{check, skip_reason, wait_for, Lab};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
const VERSION: &str = env!("CARGO_PKG_VERSION");

const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("iptables", "iptables"),
    ("apt-get", "apt"),
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("systemd-analyze", "systemd"),
];

/// Present while a package this test installed may still be on the
/// machine (a killed test run): the next run purges it instead of taking
/// it for an operator's installation.
const MARKER: &str = "/run/lock/portcullis-deb-test.installed";

/// What the package leaves on purge: nothing. What must not exist before
/// the test (an operator's data would be deleted by the purge).
const DATA: [&str; 3] = [
    "/etc/portcullis",
    "/var/lib/portcullis",
    "/var/log/portcullis",
];

fn main() {
    let args = Arguments::from_args();
    let tests = vec![Trial::ignorable_test(
        "deb_package_installs_checks_cleans_up_and_purges",
        || {
            if let Some(reason) = why_not() {
                return Ok(Completion::ignored_with(format!("skipped: {reason}")));
            }
            deb_package().map(|()| Completion::Completed)
        },
    )];
    libtest_mimic::run(&args, tests).exit();
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command; its stdout, or an error with everything it printed.
fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), text(&out)))
    }
}

/// dpkg's status of the portcullis package: "installed", "config-files"
/// (removed, conffiles kept), or "" when dpkg does not know it.
fn package_status() -> String {
    run(
        "dpkg-query",
        &["-W", "-f=${db:Status-Status}", "portcullis"],
    )
    .unwrap_or_default()
}

fn why_not() -> Option<String> {
    if let Some(reason) = skip_reason(TOOLS) {
        return Some(reason);
    }
    if !Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Some(
            "cargo-deb is missing: cargo install cargo-deb --locked (scripts/test does as root)"
                .into(),
        );
    }
    if !package_status().is_empty() {
        if Path::new(MARKER).exists() {
            // Ours, from a test run that was killed: purge it now.
            let _ = run("apt-get", &["purge", "-y", "-qq", "portcullis"]);
            let _ = std::fs::remove_file(MARKER);
        } else {
            return Some(
                "a portcullis package is installed on this machine; the test would replace it"
                    .into(),
            );
        }
    }
    if let Some(d) = DATA.iter().find(|d| Path::new(d).exists()) {
        return Some(format!(
            "{d} exists on this machine; purging the package would delete it"
        ));
    }
    None
}

/// Purges the package when dropped, inside the test's namespace (so the
/// prerm's cleanup sees only that namespace), whatever happened.
/// The namespace is dropped after the purge.
struct Installed {
    lab: Lab,
}

impl Installed {
    /// `cmd args...` inside the test's namespace (apt-get waits up to two
    /// minutes for dpkg's lock).
    fn exec(&self, cmd: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["DEBIAN_FRONTEND=noninteractive", cmd];
        if cmd == "apt-get" {
            all.extend(["-o", "DPkg::Lock::Timeout=120"]);
        }
        all.extend(args);
        self.lab.exec("ns", "env", &all)
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !package_status().is_empty()
            && self
                .exec("apt-get", &["purge", "-y", "-qq", "portcullis"])
                .is_err()
        {
            let _ = run("dpkg", &["--purge", "portcullis"]);
        }
        if package_status().is_empty() {
            let _ = std::fs::remove_file(MARKER);
        }
    }
}

fn host_has_our_table() -> bool {
    run("nft", &["list", "tables"]).is_ok_and(|t| t.contains("inet portcullis"))
}

fn deb_package() -> Result<(), Failed> {
    let started = Instant::now();
    let host_table_before = host_has_our_table();
    let out_dir = tempfile::tempdir()?;

    // Package the binary under test (no second build).
    let t = Instant::now();
    let out = Command::new(root().join("scripts/deb"))
        .args(["--binary", BIN, "--output"])
        .arg(out_dir.path())
        .output()?;
    check(out.status.success(), || {
        format!("scripts/deb:\n{}", text(&out))
    })?;
    let packaging = t.elapsed();
    let deb = out_dir
        .path()
        .join(format!("portcullis_{VERSION}_amd64.deb"));
    let size = std::fs::metadata(&deb)
        .map_err(|e| {
            format!(
                "{}: {e}; scripts/deb printed:\n{}",
                deb.display(),
                text(&out)
            )
        })?
        .len();
    let deb_s = deb.to_str().unwrap();

    // Control fields.
    let field = |f: &str| run("dpkg-deb", &["-f", deb_s, f]).map(|s| s.trim().to_owned());
    let depends = field("Depends")?;
    for dep in ["libc6", "libpcap0.8", "nftables"] {
        check(depends.contains(dep), || {
            format!("Depends lacks {dep}: {depends}")
        })?;
    }
    // Only the fallback queue path needs iptables.
    let recommends = field("Recommends")?;
    check(
        !depends.contains("iptables") && recommends.contains("iptables"),
        || {
            format!(
                "iptables should be recommended only: Depends {depends}; Recommends {recommends}"
            )
        },
    )?;
    check(field("Package")? == "portcullis", || "Package".into())?;
    check(field("Architecture")? == "amd64", || "Architecture".into())?;

    let mut lab = Lab::new();
    lab.add_ns("ns")?;
    let mut pkg = Installed { lab };
    std::fs::write(MARKER, deb_s)?;
    let t = Instant::now();
    pkg.exec(
        "apt-get",
        &["install", "-y", "-qq", "--no-install-recommends", deb_s],
    )?;
    let install = t.elapsed();
    check(package_status() == "installed", || {
        format!("dpkg status after install: {:?}", package_status())
    })?;

    for f in [
        "/usr/sbin/portcullis",
        "/lib/systemd/system/portcullis.service",
        "/etc/logrotate.d/portcullis",
        "/etc/portcullis/rules.json",
        "/etc/portcullis/README",
        "/usr/share/portcullis/rules.schema.json",
        "/usr/share/portcullis/grafana/portcullis.json",
        "/usr/share/man/man1/portcullis.1.gz",
        "/usr/share/man/man1/portcullis-run.1.gz",
        "/usr/share/man/man1/portcullis-cleanup.1.gz",
        "/usr/share/bash-completion/completions/portcullis",
        "/usr/share/zsh/vendor-completions/_portcullis",
        "/usr/share/fish/vendor_completions.d/portcullis.fish",
        "/usr/share/doc/portcullis/copyright",
        "/usr/share/doc/portcullis/rules.md",
        "/usr/share/doc/portcullis/operations.md",
    ] {
        let meta = std::fs::metadata(f).map_err(|e| format!("{f}: {e}"))?;
        check(meta.len() > 0, || format!("{f} is empty"))?;
    }
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", "portcullis"])?;
    for f in ["/etc/portcullis/rules.json", "/etc/logrotate.d/portcullis"] {
        check(conffiles.contains(f), || {
            format!("{f} is no conffile: {conffiles}")
        })?;
    }
    // Enabled like a debhelper package, started nowhere (no systemd here;
    // with one, a first install starts nothing either).
    if Path::new("/usr/bin/deb-systemd-helper").exists() {
        let wants = "/etc/systemd/system/multi-user.target.wants/portcullis.service";
        check(std::fs::symlink_metadata(wants).is_ok(), || {
            format!("{wants} missing: the service is not enabled")
        })?;
    }
    check(!host_has_our_table() || host_table_before, || {
        "installing created kernel rules".into()
    })?;

    // The installed binary and its files.
    let v = run("/usr/sbin/portcullis", &["--version"])?;
    check(v.trim() == format!("portcullis {VERSION}"), || {
        format!("--version: {v}")
    })?;
    let c = run(
        "/usr/sbin/portcullis",
        &["check", "--config", "/etc/portcullis/rules.json"],
    )?;
    check(c.starts_with("configuration is valid"), || c.clone())?;
    // The default policy, plus "$schema" naming the installed schema.
    let mut rules: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("/etc/portcullis/rules.json")?)?;
    let schema = rules
        .as_object_mut()
        .unwrap()
        .remove("$schema")
        .ok_or("rules.json has no $schema")?;
    check(
        schema == "file:///usr/share/portcullis/rules.schema.json",
        || format!("$schema: {schema}"),
    )?;
    let default: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        root().join("policy/default.json"),
    )?)?;
    check(rules == default, || {
        "rules.json is not the default policy".into()
    })?;
    let unit = std::fs::read_to_string("/lib/systemd/system/portcullis.service")?;
    check(
        unit.contains("ExecStart=/usr/sbin/portcullis run") && !unit.contains("/usr/local"),
        || format!("unit paths:\n{unit}"),
    )?;
    let out = Command::new("systemd-analyze")
        .args([
            "verify",
            "--man=no",
            "/lib/systemd/system/portcullis.service",
        ])
        .output()?;
    let complaints: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("portcullis"))
        .map(str::to_owned)
        .collect();
    check(out.status.success() && complaints.is_empty(), || {
        format!("systemd-analyze verify:\n{}", text(&out))
    })?;

    // A daemon killed with -9 in the namespace leaves its kernel rules.
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("daemon.log");
    let (state, events, sock) = (
        dir.path().join("state"),
        dir.path().join("events.jsonl"),
        dir.path().join("run/portcullis.sock"),
    );
    let pid = pkg.lab.spawn(
        "ns",
        "/usr/sbin/portcullis",
        &[
            "run",
            "--config",
            "/etc/portcullis/rules.json",
            "--no-protect-ssh",
            "--state-dir",
            state.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
        ],
        &log,
    )?;
    let daemon_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(Duration::from_secs(15), || {
        daemon_log().contains("running on NFQUEUE").then_some(())
    })
    .ok_or_else(|| format!("the installed portcullis did not start:\n{}", daemon_log()))?;
    let ns_tables = |lab: &Lab| {
        lab.exec("ns", "nft", &["list", "tables"])
            .unwrap_or_else(|e| e)
    };
    // A running daemon's rules are never cleaned up.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pkg.lab.ns("ns"),
            "/usr/sbin/portcullis",
            "cleanup",
        ])
        .output()?;
    check(out.status.code() == Some(1), || {
        format!(
            "cleanup next to a running daemon: {:?}\n{}",
            out.status,
            text(&out)
        )
    })?;
    check(ns_tables(&pkg.lab).contains("inet portcullis"), || {
        "cleanup removed a running daemon's table".into()
    })?;
    pkg.lab.kill(pid)?;
    check(ns_tables(&pkg.lab).contains("inet portcullis"), || {
        "no leftovers after kill -9".into()
    })?;

    // `apt remove`: the prerm removes them.
    let t = Instant::now();
    pkg.exec("apt-get", &["remove", "-y", "-qq", "portcullis"])?;
    check(package_status() == "config-files", || {
        format!("dpkg status after remove: {:?}", package_status())
    })?;
    check(!ns_tables(&pkg.lab).contains("portcullis"), || {
        format!("apt remove left our table: {}", ns_tables(&pkg.lab))
    })?;
    for prog in ["iptables", "ip6tables"] {
        let rules = pkg
            .lab
            .exec("ns", prog, &["-t", "security", "-S"])
            .unwrap_or_default();
        check(!rules.contains("PORTCULLIS"), || {
            format!("apt remove left {prog} rules:\n{rules}")
        })?;
    }
    check(!Path::new("/usr/sbin/portcullis").exists(), || {
        "the binary survived apt remove".into()
    })?;

    // What the service writes under systemd, and an operator's own list.
    std::fs::create_dir_all("/var/lib/portcullis")?;
    std::fs::write("/var/lib/portcullis/bans.json", "[]")?;
    std::fs::create_dir_all("/var/log/portcullis")?;
    std::fs::write("/var/log/portcullis/events.jsonl", "")?;
    std::fs::write("/etc/portcullis/blocklist.txt", "ads.example\n")?;
    pkg.exec("apt-get", &["purge", "-y", "-qq", "portcullis"])?;
    let remove_purge = t.elapsed();
    check(package_status().is_empty(), || {
        format!("dpkg status after purge: {:?}", package_status())
    })?;
    for p in DATA.iter().copied().chain([
        "/usr/sbin/portcullis",
        "/lib/systemd/system/portcullis.service",
        "/etc/systemd/system/portcullis.service",
        "/etc/systemd/system/multi-user.target.wants/portcullis.service",
        "/etc/logrotate.d/portcullis",
        "/usr/share/portcullis",
        "/usr/share/doc/portcullis",
        "/usr/share/man/man1/portcullis.1.gz",
        "/usr/share/bash-completion/completions/portcullis",
    ]) {
        check(std::fs::symlink_metadata(p).is_err(), || {
            format!("{p} is left after purge")
        })?;
    }
    check(!host_has_our_table() || host_table_before, || {
        "a table inet portcullis is left on the host".into()
    })?;
    drop(pkg);
    eprintln!(
        "deb: {} ({} KiB); scripts/deb {:.1}s, install {:.1}s, remove + purge {:.1}s, test {:.1}s",
        deb.file_name().unwrap().to_string_lossy(),
        size / 1024,
        packaging.as_secs_f64(),
        install.as_secs_f64(),
        remove_purge.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
