//! Running `nft`, `iptables` and friends.
//!
//! Everything this crate does to the kernel goes through a [`Runner`]:
//! [`SystemRunner`] runs the programs (and opens netlink sockets) in the
//! caller's network namespace;
//! tests inject one that prefixes `ip netns exec NS`, or a fake that
//! records the calls.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::error::{clip, package_of, KernelError};

/// Runs a program to completion.
pub trait Runner: fmt::Debug + Send + Sync {
    /// Runs `program` with `args`, writing `stdin` (if any) to its standard
    /// input; returns its exit status and output. A program that cannot be
    /// found must give an error of kind [`io::ErrorKind::NotFound`].
    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> io::Result<Output>;

    /// A `NETLINK_NETFILTER` socket in the network namespace this runner's
    /// programs run in, for the requests that go over netlink (the ruleset
    /// generation, the xt `NFQUEUE` rule and its counter): a socket stays
    /// in the namespace it was opened in. The default gives none (fakes
    /// that only record programs): the probe then finds no xt queue path
    /// and the generation cannot be watched.
    fn netfilter_socket(&self) -> io::Result<OwnedFd> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this runner opens no netlink socket",
        ))
    }
}

/// Runs programs in this process's network namespace (the namespace of the
/// calling thread). Programs are looked up on `PATH`, then in `/usr/sbin`,
/// `/sbin`, `/usr/bin` and `/bin` (a daemon's PATH may lack the sbin
/// directories), unless [`SystemRunner::with_search_path`] says otherwise.
///
/// Every run has a time limit ([`SystemRunner::DEFAULT_TIMEOUT`]): a
/// program still running then (an `nft` stuck on a kernel lock, an
/// `iptables` waiting for the xtables lock) is killed and the run fails with
/// [`io::ErrorKind::TimedOut`], so that bans, reloads and the teardown never
/// hang on it.
#[derive(Debug, Clone)]
pub struct SystemRunner {
    search: Option<Vec<PathBuf>>,
    timeout: Duration,
}

impl Default for SystemRunner {
    fn default() -> Self {
        Self {
            search: None,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }
}

impl SystemRunner {
    /// How long one program may run: installing 100,000 prefixes takes
    /// about a second here.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

    /// Looks programs up in exactly these directories (tests: an empty or
    /// fake directory makes every program "not installed").
    pub fn with_search_path(dirs: Vec<PathBuf>) -> Self {
        Self {
            search: Some(dirs),
            ..Self::default()
        }
    }

    /// The same runner with another time limit per program.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn resolve(&self, program: &str) -> Option<PathBuf> {
        let dirs: Vec<PathBuf> = match &self.search {
            Some(d) => d.clone(),
            None => std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
                .collect(),
        };
        dirs.iter()
            .map(|d| d.join(program))
            .find(|p| is_executable(p))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Runner for SystemRunner {
    /// Opened in the calling thread's network namespace.
    fn netfilter_socket(&self) -> io::Result<OwnedFd> {
        crate::nfnl::open_netfilter_socket()
    }

    fn run(&self, program: &str, args: &[&str], stdin: Option<&[u8]>) -> io::Result<Output> {
        let path = self.resolve(program).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{program} not found"))
        })?;
        let mut cmd = Command::new(path);
        cmd.args(args)
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let pid = child.id();
        let input = child.stdin.take();
        let out_pipe = child.stdout.take();
        let err_pipe = child.stderr.take();

        // Input, output and error on their own threads so that a child
        // writing a lot before it has read all its input cannot deadlock
        // us; the wait on a fourth, so that it can time out.
        std::thread::scope(|s| {
            let writer = s.spawn(move || -> io::Result<()> {
                if let (Some(mut pipe), Some(data)) = (input, stdin) {
                    pipe.write_all(data)?;
                }
                Ok(())
            });
            let stdout = s.spawn(move || drain(out_pipe));
            let stderr = s.spawn(move || drain(err_pipe));
            let (tx, rx) = std::sync::mpsc::channel();
            s.spawn(move || {
                let _ = tx.send(child.wait());
            });
            let status = match rx.recv_timeout(self.timeout) {
                Ok(status) => status?,
                Err(_) => {
                    // Ours, still unreaped (the waiter thread reaps it now).
                    if let Ok(pid) = i32::try_from(pid) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    let _ = rx.recv();
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{program} ran longer than {} s and was killed",
                            self.timeout.as_secs_f64()
                        ),
                    ));
                }
            };
            let join = |r: std::thread::Result<io::Result<Vec<u8>>>| {
                r.unwrap_or_else(|_| Err(io::Error::other("pipe reader panicked")))
            };
            let out = Output {
                status,
                stdout: join(stdout.join())?,
                stderr: join(stderr.join())?,
            };
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("stdin writer panicked")));
            // A child that exits early closes the pipe (EPIPE); its exit
            // status and stderr then say why, which matters more.
            match written {
                Err(e) if out.status.success() => Err(e),
                _ => Ok(out),
            }
        })
    }
}

/// Everything a child's pipe (if any) gives until it closes.
fn drain(pipe: Option<impl Read>) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        p.read_to_end(&mut buf)?;
    }
    Ok(buf)
}

/// Runs `program` through `runner`; its stdout, or a [`KernelError`] that
/// names the missing package, the missing permission or the failure.
pub(crate) fn run(
    runner: &dyn Runner,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, KernelError> {
    let out = runner
        .run(program, args, stdin.map(str::as_bytes))
        .map_err(|e| spawn_error(program, e))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Err(failure(program, args, &out.status.to_string(), &stderr))
}

pub(crate) fn spawn_error(program: &str, e: io::Error) -> KernelError {
    if e.kind() == io::ErrorKind::NotFound {
        KernelError::MissingProgram {
            program: program.to_string(),
            package: package_of(program),
        }
    } else {
        KernelError::Spawn {
            program: program.to_string(),
            source: e,
        }
    }
}

/// Turns a failed run into the most helpful error its stderr allows.
pub(crate) fn failure(program: &str, args: &[&str], status: &str, stderr: &str) -> KernelError {
    // `ip netns exec NS prog` (test runners) when prog is missing.
    if stderr.contains(&format!("exec of \"{program}\" failed: No such file")) {
        return KernelError::MissingProgram {
            program: program.to_string(),
            package: package_of(program),
        };
    }
    if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        return KernelError::PermissionDenied {
            program: program.to_string(),
            detail: clip(stderr),
        };
    }
    if program == "nft" && stderr.contains("Protocol not supported") {
        return KernelError::MissingFeature {
            feature: "nf_tables (CONFIG_NF_TABLES)",
            detail: clip(stderr),
        };
    }
    if program.contains("tables") {
        for (needle, feature) in [
            (
                "NFQUEUE",
                "the iptables NFQUEUE target (xt_NFQUEUE, CONFIG_NETFILTER_XT_TARGET_NFQUEUE)",
            ),
            (
                "`mark'",
                "the iptables mark match (xt_mark, CONFIG_NETFILTER_XT_MARK)",
            ),
            (
                "`comment'",
                "the iptables comment match (xt_comment, CONFIG_NETFILTER_XT_MATCH_COMMENT)",
            ),
        ] {
            if stderr.contains(needle)
                && (stderr.contains("missing kernel module") || stderr.contains("not supported"))
            {
                return KernelError::MissingFeature {
                    feature,
                    detail: clip(stderr),
                };
            }
        }
        if stderr.contains("Address family not supported") {
            return KernelError::MissingFeature {
                feature: "IPv6 (CONFIG_IPV6) or ip6tables support",
                detail: clip(stderr),
            };
        }
    }
    KernelError::Command {
        command: std::iter::once(program)
            .chain(args.iter().copied())
            .collect::<Vec<_>>()
            .join(" "),
        status: status.to_string(),
        stderr: clip(stderr),
    }
}

#[cfg(test)]
mod timeout_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Instant;

    #[test]
    fn a_hung_program_is_killed_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("nft");
        std::fs::write(&prog, "#!/bin/sh\necho started\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let r = SystemRunner::with_search_path(vec![dir.path().to_path_buf()])
            .with_timeout(Duration::from_millis(300));
        let t = Instant::now();
        let e = r.run("nft", &["list", "ruleset"], Some(b"x")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let k = run(&r, "nft", &["list"], None).unwrap_err();
        assert!(k.to_string().contains("killed"), "{k}");
        // A quick one still passes, output intact.
        std::fs::write(&prog, "#!/bin/sh\ncat; echo done >&2\n").unwrap();
        let out = r.run("nft", &[], Some(b"hello")).unwrap();
        assert_eq!(out.stdout, b"hello");
        assert_eq!(out.stderr, b"done\n");
    }
}
