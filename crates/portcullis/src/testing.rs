//! Test doubles for the binary's unit tests: a [`RecordingRunner`] that
//! plays a kernel with nft `queue` support and nothing installed (so
//! `Firewall::install_with` and every later call succeed without root) and
//! records each call, and packet builders for the in-memory path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Output};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portcullis_engine::config::Config;
use portcullis_kernel::{Firewall, Runner};
use portcullis_traffic::SynStyle;
use portcullis_wire::{Direction, LinkType, Timestamp};

use crate::path::memory::Frame;
use crate::plan::KernelRules;

/// One program run: `nft -f -` and what it read on stdin.
#[derive(Debug, Clone)]
pub struct Call {
    pub command: String,
    pub stdin: String,
}

/// Records every call; answers as a kernel with nft `queue`, no iptables
/// and none of our rules installed before the first install. Tests can make
/// `nft -f` scripts fail ([`RecordingRunner::fail_scripts_with`]) and our
/// rules vanish ([`RecordingRunner::flush`]).
#[derive(Debug, Default)]
pub struct RecordingRunner {
    calls: Mutex<Vec<Call>>,
    /// `nft -f` scripts containing one of these fail.
    fail: Mutex<Vec<String>>,
    /// Our chain is gone (as after `nft flush ruleset`) until the next
    /// script that creates the table.
    flushed: std::sync::atomic::AtomicBool,
}

/// What `nft list chain inet portcullis input` shows while our rules are
/// in place.
const OUR_INPUT_CHAIN: &str =
    "table inet portcullis {\n\tchain input {\n\t\tip saddr @ban4 drop\n\t}\n}\n";

/// The probe's throwaway set after the second `add`: timeouts update.
const PROBE_UPDATED: &str = r#"{"nftables": [{"metainfo": {}}, {"set": {"family": "inet", "name": "t", "table": "portcullis_probe", "type": "ipv4_addr", "flags": ["timeout"], "elem": [{"elem": {"val": "198.18.255.254", "timeout": 7200, "expires": 7199}}]}}]}"#;

impl Runner for RecordingRunner {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> io::Result<Output> {
        let call = Call {
            command: std::iter::once(program)
                .chain(args.iter().copied())
                .collect::<Vec<_>>()
                .join(" "),
            stdin: String::from_utf8_lossy(stdin.unwrap_or_default()).into_owned(),
        };
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
        let script = String::from_utf8_lossy(stdin.unwrap_or_default()).into_owned();
        let failing = self
            .fail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|f| script.contains(f.as_str()));
        let flushed = self.flushed.load(std::sync::atomic::Ordering::Relaxed);
        let (code, out, err) = match (program, args) {
            ("nft", ["-f", "-"]) if failing => (
                1,
                "",
                "Error: Could not process rule: No buffer space available\n",
            ),
            ("nft", ["-f", "-"]) if script.contains("add table inet portcullis") => {
                self.flushed
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                (0, "", "")
            }
            ("nft", ["--version"]) => (0, "nftables v1.0.6 (Lester Gooch #5)\n", ""),
            ("nft", ["list", "chain", "inet", "portcullis", "input"]) if !flushed => {
                (0, OUR_INPUT_CHAIN, "")
            }
            ("nft", ["-j", "list", "set", "inet", "portcullis_probe", "t"]) => {
                (0, PROBE_UPDATED, "")
            }
            ("nft", ["list", ..]) => (1, "", "Error: No such file or directory\n"),
            ("nft", _) => (0, "", ""),
            _ => return Err(io::Error::new(io::ErrorKind::NotFound, "not installed")),
        };
        Ok(Output {
            status: ExitStatus::from_raw(code << 8),
            stdout: out.as_bytes().to_vec(),
            stderr: err.as_bytes().to_vec(),
        })
    }
}

impl RecordingRunner {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// From now on, `nft -f` scripts containing `pattern` fail (none: all
    /// succeed again).
    pub fn fail_scripts_with(&self, pattern: Option<&str>) {
        *self.fail.lock().unwrap_or_else(PoisonError::into_inner) =
            pattern.into_iter().map(str::to_owned).collect();
    }

    /// As `nft flush ruleset`: our table is gone until it is installed
    /// again.
    pub fn flush(&self) {
        self.flushed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn clear(&self) {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Our rules for `cfg`, "installed" through this runner; the install's
    /// calls are cleared.
    pub fn firewall(self: &Arc<Self>, rules: KernelRules, cfg: &Config) -> Firewall {
        let runner: Arc<dyn Runner> = self.clone();
        let fw = Firewall::install_with(&rules.plan(cfg), runner).expect("fake install");
        self.clear();
        fw
    }
}

/// An nmap-style SYN from `src` to `dst`, inbound, at `ts`.
pub fn syn(src: SocketAddr, dst: SocketAddr, ts: Timestamp) -> Frame {
    Frame {
        data: portcullis_traffic::tcp_syn(src, dst, SynStyle::Nmap),
        link: LinkType::Ethernet,
        ts,
        dir: Some(Direction::Inbound),
    }
}

/// `t` plus `ms` milliseconds.
pub fn after(t: Timestamp, ms: u64) -> Timestamp {
    t.saturating_add(Duration::from_millis(ms))
}
