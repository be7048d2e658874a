//! Test labs: network namespaces joined by veth links, and processes run in
//! them. Everything a lab creates is removed when it is dropped, also when
//! a test fails (panics unwind through the guards).
//!
//! Rules these helpers enforce for every live test:
//! - addresses only from 198.18.0.0/15 and 2001:2::/48 ([`Lab::link`]
//!   refuses others);
//! - only namespaces this lab created are touched; the root namespace's
//!   firewall never is;
//! - processes are ended by the pid this lab started them with.

#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A live test for a libtest-mimic harness: it runs `f` when
/// [`skip_reason`] finds nothing missing, and otherwise reports itself
/// **ignored with the reason**, never passed. `f` may be a closure (one
/// test function run with different parameters).
pub fn live_trial(
    name: impl Into<String>,
    tools: &'static [(&'static str, &'static str)],
    f: impl FnOnce() -> Result<(), libtest_mimic::Failed> + Send + 'static,
) -> libtest_mimic::Trial {
    libtest_mimic::Trial::ignorable_test(name, move || {
        if let Some(reason) = skip_reason(tools) {
            return Ok(libtest_mimic::Completion::ignored_with(format!(
                "skipped: {reason}"
            )));
        }
        f().map(|()| libtest_mimic::Completion::Completed)
    })
}

/// Moves the calling thread into network namespace `ns` (a full name, as
/// `ip netns` lists it). The network namespace is per thread: sockets the
/// thread opens afterwards live there.
pub fn enter(ns: &str) -> Result<(), String> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))
        .map_err(|e| format!("open netns {ns}: {e}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("setns {ns}: {e}"))
}

/// Joins a test thread: its error, or "thread panicked", as a test failure.
pub fn join<T>(h: std::thread::JoinHandle<Result<T, String>>) -> Result<T, libtest_mimic::Failed> {
    h.join()
        .map_err(|_| "thread panicked")?
        .map_err(libtest_mimic::Failed::from)
}

/// `p` as a program argument. Panics on a path that is not UTF-8: the
/// tests' paths are temporary folders they make, which are.
#[allow(clippy::expect_used)]
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The JSON values of a JSON Lines file (an event log) as far as it is
/// written: a missing file is empty, and a line still being written (not
/// yet whole JSON) is left out.
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `Ok` if `cond` holds, else a test failure with the message `msg` makes.
pub fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), libtest_mimic::Failed> {
    if cond {
        Ok(())
    } else {
        Err(msg().into())
    }
}

/// Why live tests cannot run here, or `None` when they can.
pub fn skip_reason(tools: &[(&str, &str)]) -> Option<String> {
    if !is_root() {
        return Some("needs root (network namespaces, nftables, NFQUEUE)".into());
    }
    for (bin, package) in tools {
        if which(bin).is_none() {
            return Some(format!("`{bin}` is missing: apt-get install {package}"));
        }
    }
    None
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The path of an executable on PATH (also /usr/sbin, /sbin).
pub fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file());
    found
}

/// Runs a command to completion; its stdout, or an error with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// Polls `f` every 50 ms until it returns `Some` or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

static SERIAL: AtomicU32 = AtomicU32::new(0);

fn allowed(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 198 && (o[1] == 18 || o[1] == 19)
        }
        IpAddr::V6(a) => {
            // 2001:2::/48: the first three groups are 2001, 2, 0.
            let s = a.segments();
            s[0] == 0x2001 && s[1] == 2 && s[2] == 0
        }
    }
}

/// A set of namespaces; dropped, it deletes them (and kills what it
/// started in them).
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<(String, Child)>,
}

impl Lab {
    /// A new empty lab; namespace names start with `pc<pid>x<serial>`.
    pub fn new() -> Self {
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        Self {
            prefix: format!("pc{}x{n}", std::process::id()),
            namespaces: Vec::new(),
            children: Vec::new(),
        }
    }

    /// The full name of the lab's namespace `short`.
    pub fn ns(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    /// Creates namespace `short` with loopback up.
    pub fn add_ns(&mut self, short: &str) -> Result<String, String> {
        let name = self.ns(short);
        run("ip", &["netns", "add", &name])?;
        self.namespaces.push(name.clone());
        self.exec(short, "ip", &["link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// Runs a command inside namespace `short`.
    pub fn exec(&self, short: &str, cmd: &str, args: &[&str]) -> Result<String, String> {
        let ns = self.ns(short);
        let mut all = vec!["netns", "exec", ns.as_str(), cmd];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// A veth link between namespaces `a` and `b`, with the given addresses
    /// (prefix length included, e.g. `198.18.1.1/24`, `2001:2:0:1::1/64`).
    pub fn link(
        &mut self,
        a: &str,
        a_addrs: &[&str],
        b: &str,
        b_addrs: &[&str],
    ) -> Result<(), String> {
        for cidr in a_addrs.iter().chain(b_addrs) {
            let addr: IpAddr = cidr
                .split('/')
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad address {cidr}"))?;
            if !allowed(&addr) {
                return Err(format!("{cidr} is outside 198.18.0.0/15 and 2001:2::/48"));
            }
        }
        let (ia, ib) = (format!("v{a}{b}"), format!("v{b}{a}"));
        let (na, nb) = (self.ns(a), self.ns(b));
        run(
            "ip",
            &[
                "link", "add", &ia, "netns", &na, "type", "veth", "peer", "name", &ib, "netns", &nb,
            ],
        )?;
        for (short, ifname, addrs) in [(a, &ia, a_addrs), (b, &ib, b_addrs)] {
            for cidr in addrs {
                let mut args = vec!["addr", "add", *cidr, "dev", ifname.as_str()];
                if cidr.contains(':') {
                    args.push("nodad");
                }
                self.exec(short, "ip", &args)?;
            }
            self.exec(short, "ip", &["link", "set", ifname, "up"])?;
        }
        Ok(())
    }

    /// Default routes (v4 and, if given, v6) of namespace `short`.
    pub fn route_via(&self, short: &str, v4: &str, v6: Option<&str>) -> Result<(), String> {
        self.exec(short, "ip", &["route", "add", "default", "via", v4])?;
        if let Some(v6) = v6 {
            self.exec(short, "ip", &["-6", "route", "add", "default", "via", v6])?;
        }
        Ok(())
    }

    /// Turns on forwarding in namespace `short`.
    pub fn forwarding(&self, short: &str) -> Result<(), String> {
        self.exec(short, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        self.exec(short, "sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        Ok(())
    }

    /// Starts a process in namespace `short`; stdout and stderr go to
    /// `log`. Returns its pid. The lab kills it (by that pid) when dropped,
    /// unless [`Lab::stop`] or [`Lab::kill`] did already.
    pub fn spawn(
        &mut self,
        short: &str,
        cmd: &str,
        args: &[&str],
        log: &Path,
    ) -> Result<u32, String> {
        let ns = self.ns(short);
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns.as_str(), cmd])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{cmd}: {e}"))?;
        let pid = child.id();
        self.children.push((cmd.to_owned(), child));
        Ok(pid)
    }

    /// Sends `signal` (e.g. "TERM", "HUP", "KILL") to a process this lab
    /// started.
    pub fn signal(&self, pid: u32, signal: &str) -> Result<(), String> {
        if !self.children.iter().any(|(_, c)| c.id() == pid) {
            return Err(format!("pid {pid} was not started by this lab"));
        }
        run("kill", &[&format!("-{signal}"), &pid.to_string()]).map(drop)
    }

    /// Whether a process this lab started has exited, without waiting: its
    /// exit status (then the lab forgets it), or `None` while it runs.
    pub fn try_wait(&mut self, pid: u32) -> Result<Option<ExitStatus>, String> {
        let i = self
            .children
            .iter()
            .position(|(_, c)| c.id() == pid)
            .ok_or_else(|| format!("pid {pid} was not started by this lab"))?;
        let st = self.children[i].1.try_wait().map_err(|e| e.to_string())?;
        if st.is_some() {
            self.children.remove(i);
        }
        Ok(st)
    }

    /// Waits up to `limit` for a process this lab started to exit; its exit
    /// code (None if killed by a signal).
    pub fn wait(&mut self, pid: u32, limit: Duration) -> Result<Option<i32>, String> {
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_wait(pid)? {
                return Ok(st.code());
            }
            if Instant::now() >= end {
                return Err(format!("pid {pid} still running after {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait up to `limit`.
    pub fn stop(&mut self, pid: u32, limit: Duration) -> Result<Option<i32>, String> {
        self.signal(pid, "TERM")?;
        self.wait(pid, limit)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self, pid: u32) -> Result<(), String> {
        self.signal(pid, "KILL")?;
        self.wait(pid, Duration::from_secs(5)).map(drop)
    }

    /// A one-line summary of what the lab holds, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = write!(s, "namespaces {:?}", self.namespaces);
        s
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            // `ip netns exec` execs the command: the pid is the process's.
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.drain(..).rev() {
            // Deleting the namespace removes its veth ends and its firewall.
            let _ = run("ip", &["netns", "delete", &ns]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_benchmarking_ranges_are_allowed() {
        for ok in ["198.18.0.1", "198.19.255.1", "2001:2::1", "2001:2:0:1::1"] {
            assert!(allowed(&ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "10.0.0.1",
            "192.168.1.1",
            "198.20.0.1",
            "8.8.8.8",
            "2001:db8::1",
            "2001:3::1",
            "2001:2:1::1",
        ] {
            assert!(!allowed(&bad.parse().unwrap()), "{bad}");
        }
    }
}
