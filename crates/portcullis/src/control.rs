//! The control socket: how `portcullis status|bans|ban|unban|explain|top` talk
//! to the running daemon.
//!
//! A Unix stream socket (default `/run/portcullis/portcullis.sock`, mode
//! 0600 in a 0700 directory, so only root gets in; the server also checks
//! the peer's credentials, and the client the server's). One request per
//! connection, one JSON line each way, as `fail2ban-client` and Suricata's
//! unix socket do:
//!
//! ```text
//! -> {"command":"ban","addr":"198.18.0.5","seconds":600}
//! <- {"ok":true,"result":{...}}      or      {"ok":false,"error":"..."}
//! ```
//!
//! The server thread only parses and checks; the request is answered by
//! whoever owns the engine (the packet thread, between batches) through a
//! bounded channel, so the packet path never waits for a client.
//!
//! # What a client can hold
//! Clients are served one at a time, on one thread. A peer that is neither
//! root nor the daemon's own uid is refused before anything is read from
//! it. Everyone else gets [`REQUEST_TIMEOUT`] for the whole request line (a
//! deadline, not a per-read timeout: trickling bytes does not extend it),
//! then the engine's owner gets [`IO_TIMEOUT`] (twice for a ban, which
//! waits for the kernel) and writing the answer another [`IO_TIMEOUT`] in
//! all. So one client holds the thread for at most about 11 s, and a client
//! that sends nothing for [`REQUEST_TIMEOUT`].
//!
//! # The socket path
//! The daemon runs as root and `--socket` is a path it creates and may
//! delete, so [`Server::start`] is careful with it: the folder must be ours
//! and writable by nobody else (it is created `0700` when missing), and
//! what is already at the path is only replaced if it is a socket of ours
//! that nothing answers on; a file, a folder, a link or someone else's
//! socket is refused.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use portcullis_engine::engine::Ban;
use portcullis_engine::events::rfc3339;
use portcullis_engine::Timestamp;
use serde::{Deserialize, Serialize};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/portcullis/portcullis.sock";
/// A request line longer than this is refused.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client may take to send its whole request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the daemon may take to answer, and to write the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// What a peer that is neither root nor us is told.
const REFUSED: &str = "permission denied: the portcullis control socket is root's only (use sudo)";
/// Requests waiting for the packet thread; more are refused as busy.
const PENDING: usize = 16;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    Bans,
    Ban {
        addr: IpAddr,
        /// Ban length; the configured scan ban duration when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seconds: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Unban {
        addr: IpAddr,
    },
    Explain {
        addr: IpAddr,
    },
    /// What `portcullis top` shows: the status snapshot, the top dropped
    /// sources and ports, bans with their origin, the latest scans
    /// (`top_view::TopView`; bounded lists).
    Top {
        /// Entries per top list (at most `top_view::MAX_TOP`; 10 when
        /// absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n: Option<usize>,
    },
}

/// The answer: a JSON value on success, a message saying what to do
/// otherwise.
pub type Reply = std::result::Result<serde_json::Value, String>;

/// One active ban as `portcullis bans` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanView {
    pub addr: IpAddr,
    pub reason: String,
    /// RFC 3339, UTC.
    pub since: String,
    pub until: String,
    pub seconds_left: u64,
    /// In the kernel's ban set (false: passive mode without
    /// `--enforce-bans`, or a dry run; the ban is only logged).
    pub enforced: bool,
}

impl BanView {
    /// `b` as seen at `now`.
    pub fn new(b: &Ban, now: Timestamp, enforced: bool) -> Self {
        Self {
            addr: b.addr,
            reason: b.reason.clone(),
            since: rfc3339(b.since),
            until: rfc3339(b.until),
            seconds_left: b.until.since(now).as_secs(),
            enforced,
        }
    }
}

/// What travels on the wire for a [`Reply`].
#[derive(Debug, Serialize, Deserialize)]
struct WireReply {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The engine owner's answer, possibly still waiting for the kernel thread
/// (a ban is only reported done once the kernel has it).
#[derive(Debug)]
pub enum Answer {
    Now(Reply),
    /// `Ok(())` from the kernel completes the reply with the value.
    AfterKernel(serde_json::Value, Receiver<std::result::Result<(), String>>),
}

/// One request for the engine's owner, with where its answer goes.
#[derive(Debug)]
pub struct Pending {
    pub request: Request,
    reply: Sender<Answer>,
}

impl Pending {
    /// A request as the server thread hands it over, and where its answer
    /// arrives (tests: the packet loop without a socket).
    #[cfg(test)]
    pub fn new(request: Request) -> (Self, Receiver<Answer>) {
        let (reply, rx) = crossbeam_channel::bounded(1);
        (Self { request, reply }, rx)
    }

    pub fn answer(self, a: Answer) {
        // The client may have gone: nothing to do then.
        let _ = self.reply.send(a);
    }
}

/// The listening socket and its thread. Dropping it removes the socket
/// file and tells the thread to stop, without waiting for it: the thread
/// ends within about 200 ms, or once the client it is serving (if any) is
/// done, which [`REQUEST_TIMEOUT`] and [`IO_TIMEOUT`] bound. Shutting down
/// never waits on a client.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    /// The socket file's device and inode: only that file is removed.
    file: (u64, u64),
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Listens at `path`, handing requests to the returned receiver (poll
    /// it with `try_recv` between batches). Refuses to start if another
    /// daemon answers there, if the folder is not ours alone, or if
    /// something other than a socket of ours is at `path`; a stale socket
    /// file of ours is replaced.
    pub fn start(path: &Path) -> Result<(Self, Receiver<Pending>)> {
        let me = nix::unistd::geteuid().as_raw();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        check_dir(dir, me)?;
        remove_stale(path, me)?;
        let listener =
            UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {} to root", path.display()))?;
        let meta = std::fs::symlink_metadata(path)
            .with_context(|| format!("checking {}", path.display()))?;
        listener
            .set_nonblocking(true)
            .context("control socket: non-blocking")?;
        let (tx, rx) = crossbeam_channel::bounded(PENDING);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        // Detached: Drop does not wait for it (see there).
        std::thread::Builder::new()
            .name("portcullis-control".into())
            .spawn(move || accept_loop(&listener, &tx, &flag, me))
            .context("starting the control thread")?;
        Ok((
            Self {
                path: path.to_path_buf(),
                file: (meta.dev(), meta.ino()),
                stop,
            },
            rx,
        ))
    }
}

impl Drop for Server {
    /// Removes the socket file (if it is still ours) and stops the thread
    /// without joining it: a client it is serving cannot delay shutdown.
    /// The thread drops the listener (and the request channel) when it
    /// sees the flag, within about 200 ms or after the current client.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The folder of the socket must be ours and writable by no one else:
/// whoever can write there can replace the socket (clients would talk to
/// them) or put something there for us to delete.
fn check_dir(dir: &Path, me: u32) -> Result<()> {
    let d = dir.display();
    let m = std::fs::metadata(dir).with_context(|| format!("checking {d}"))?;
    if !m.is_dir() {
        bail!("{d} is not a folder: pass --socket a path in a folder");
    }
    if m.uid() != me {
        bail!(
            "{d} is owned by uid {}, not uid {me}: refusing to put the control socket there; pass --socket a path in a folder of ours (a missing folder is created 0700), e.g. the default {DEFAULT_SOCKET}",
            m.uid()
        );
    }
    if m.mode() & 0o022 != 0 {
        bail!(
            "{d} is writable by group or others (mode {:04o}): refusing to put the control socket there; `chmod go-w {d}`, or pass --socket a path in a private folder (a missing folder is created 0700), e.g. the default {DEFAULT_SOCKET}",
            m.mode() & 0o7777
        );
    }
    Ok(())
}

/// Clears `path` for binding: nothing there, or a socket of ours that
/// nothing answers on (a crashed daemon's), which is removed. Anything else
/// is refused, never deleted.
fn remove_stale(path: &Path, me: u32) -> Result<()> {
    let p = path.display();
    let m = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        r => r.with_context(|| format!("checking {p}"))?,
    };
    let t = m.file_type();
    if !t.is_socket() {
        let what = if t.is_dir() {
            "a folder"
        } else if t.is_symlink() {
            "a symbolic link"
        } else if t.is_file() {
            "a regular file"
        } else {
            "a special file"
        };
        bail!(
            "{p} exists and is {what}, not a socket: refusing to replace it (is --socket right?)"
        );
    }
    if m.uid() != me {
        bail!(
            "{p} is a socket owned by uid {}, not uid {me}: refusing to replace it (remove it yourself if it is stale, or pass another --socket)",
            m.uid()
        );
    }
    if UnixStream::connect(path).is_ok() {
        bail!("another portcullis daemon is listening on {p}: stop it first (or pass another --socket)");
    }
    std::fs::remove_file(path).with_context(|| format!("removing the stale socket {p}"))
}

fn accept_loop(listener: &UnixListener, tx: &Sender<Pending>, stop: &AtomicBool, me: u32) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                // One client at a time: requests are tiny and answered in
                // milliseconds; a slow one is cut off by the deadlines.
                let _ = serve_client(stream, tx, me);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let fd = std::os::fd::AsFd::as_fd(listener);
                let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(200u16));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Serves one client (`me`: our euid, root for the daemon; tests may run
/// it otherwise).
fn serve_client(mut stream: UnixStream, tx: &Sender<Pending>, me: u32) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.uid())
        .ok();
    // Credentials first: a stranger is refused before anything is read
    // from it (the client reads the refusal even if its write failed).
    let reply = if peer.is_some_and(|uid| uid == 0 || uid == me) {
        read_request(&mut stream, Instant::now() + REQUEST_TIMEOUT).and_then(|req| ask(tx, req))
    } else {
        Err(REFUSED.into())
    };
    let wire = match reply {
        Ok(v) => WireReply {
            ok: true,
            result: Some(v),
            error: None,
        },
        Err(e) => WireReply {
            ok: false,
            result: None,
            error: Some(e),
        },
    };
    let mut line = serde_json::to_vec(&wire).unwrap_or_default();
    line.push(b'\n');
    write_by(&mut stream, &line, Instant::now() + IO_TIMEOUT)
}

/// Time left until `deadline`, or `None` once it has passed.
fn left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Reads the request line (up to `\n` or the end of the stream) by
/// `deadline`: one deadline for the whole line, so a client trickling
/// bytes cannot extend it.
fn read_request(
    stream: &mut UnixStream,
    deadline: Instant,
) -> std::result::Result<Request, String> {
    let timeout = || format!("no complete request within {} s", REQUEST_TIMEOUT.as_secs());
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    loop {
        let wait = left(deadline).ok_or_else(timeout)?;
        stream
            .set_read_timeout(Some(wait))
            .map_err(|e| format!("reading the request: {e}"))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(timeout()),
            Err(e) => return Err(format!("reading the request: {e}")),
        };
        if n == 0 {
            break;
        }
        let from = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
            buf.truncate(from + i + 1);
            break;
        }
        if buf.len() as u64 > MAX_REQUEST {
            break;
        }
    }
    if buf.len() as u64 > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    let line = std::str::from_utf8(&buf).map_err(|e| format!("bad request: {e}"))?;
    serde_json::from_str(line.trim_end()).map_err(|e| format!("bad request: {e}"))
}

/// Writes all of `bytes` by `deadline` (a client that reads slowly cannot
/// extend it).
fn write_by(stream: &mut UnixStream, mut bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let wait = left(deadline).ok_or(std::io::ErrorKind::TimedOut)?;
        stream.set_write_timeout(Some(wait))?;
        match stream.write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Hands the request to the engine's owner and waits (bounded) for it.
fn ask(tx: &Sender<Pending>, request: Request) -> Reply {
    let (reply, answer) = crossbeam_channel::bounded(1);
    tx.try_send(Pending { request, reply })
        .map_err(|_| "the daemon is busy or stopping; try again".to_owned())?;
    match answer.recv_timeout(IO_TIMEOUT) {
        Ok(Answer::Now(r)) => r,
        Ok(Answer::AfterKernel(v, kernel)) => match kernel.recv_timeout(IO_TIMEOUT) {
            Ok(Ok(())) => Ok(v),
            Ok(Err(e)) => Err(format!("the kernel refused the change: {e}")),
            Err(_) => {
                Err("the kernel rules were not updated in time; check the daemon's log".into())
            }
        },
        Err(_) => Err("the daemon did not answer in time".into()),
    }
}

/// Sends one request to the daemon at `path` and returns its reply. The
/// error says what to do (daemon not running, not root).
pub fn call(path: &Path, request: &Request) -> Result<Reply> {
    let stream = UnixStream::connect(path).map_err(|e| connect_error(path, &e))?;
    let server = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .with_context(|| format!("who serves {}", path.display()))?
        .uid();
    check_server(path, server, nix::unistd::geteuid().as_raw())?;
    stream.set_read_timeout(Some(IO_TIMEOUT * 3))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    let sent = (&stream).write_all(&line);
    let mut answer = String::new();
    let read = BufReader::new(&stream).read_line(&mut answer);
    // A refusal may arrive before our request was taken: prefer it.
    if answer.is_empty() {
        sent.context("sending the request")?;
    }
    read.context("reading the daemon's answer")?;
    if answer.is_empty() {
        bail!("the daemon closed the connection without answering");
    }
    let wire: WireReply = serde_json::from_str(&answer).context("the daemon's answer")?;
    Ok(if wire.ok {
        Ok(wire.result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(wire.error.unwrap_or_else(|| "unknown error".into()))
    })
}

/// The daemon runs as root (or, in tests, as us): a socket served by
/// anyone else is not a portcullis daemon to trust with our request, nor
/// its answer.
fn check_server(path: &Path, server: u32, me: u32) -> Result<()> {
    if server != 0 && server != me {
        bail!(
            "{} is served by uid {server}, not root: refusing to talk to it (is --socket right?)",
            path.display()
        );
    }
    Ok(())
}

fn connect_error(path: &Path, e: &std::io::Error) -> anyhow::Error {
    use std::io::ErrorKind as K;
    let p = path.display();
    match e.kind() {
        K::NotFound => anyhow::anyhow!(
            "no portcullis daemon is running: {p} does not exist (start one with `portcullis run`, or pass --socket PATH)"
        ),
        K::ConnectionRefused => anyhow::anyhow!(
            "no portcullis daemon is running: nothing listens on {p} (a stale socket; `portcullis run` replaces it)"
        ),
        K::PermissionDenied => anyhow::anyhow!(
            "permission denied on {p}: the control socket is root's only; run with sudo"
        ),
        _ => anyhow::anyhow!("cannot connect to {p}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn serve_one(rx: &Receiver<Pending>) {
        let p = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let answer = match &p.request {
            Request::Status => Answer::Now(Ok(serde_json::json!({"mode": "inline"}))),
            Request::Unban { addr } => Answer::Now(Err(format!("{addr} is not banned"))),
            Request::Ban { addr, .. } => {
                let (k, kr) = crossbeam_channel::bounded(1);
                k.send(Ok(())).unwrap();
                Answer::AfterKernel(serde_json::json!({"addr": addr}), kr)
            }
            _ => Answer::Now(Err("unexpected".into())),
        };
        p.answer(answer);
    }

    #[test]
    fn requests_reach_the_owner_and_answers_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/ctl.sock");
        let (server, rx) = Server::start(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let owner = std::thread::spawn(move || {
            for _ in 0..3 {
                serve_one(&rx);
            }
        });
        let v = call(&path, &Request::Status).unwrap().unwrap();
        assert_eq!(v["mode"], "inline");
        let addr: IpAddr = "198.18.0.5".parse().unwrap();
        let e = call(&path, &Request::Unban { addr }).unwrap().unwrap_err();
        assert_eq!(e, "198.18.0.5 is not banned");
        let v = call(
            &path,
            &Request::Ban {
                addr,
                seconds: Some(60),
                reason: None,
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!(v["addr"], "198.18.0.5");
        owner.join().unwrap();

        // A second daemon on the same socket is refused.
        let err = Server::start(&path).unwrap_err().to_string();
        assert!(err.contains("another portcullis daemon"), "{err}");
        drop(server);
        assert!(!path.exists(), "the socket file is removed on stop");
        let err = call(&path, &Request::Status).unwrap_err().to_string();
        assert!(err.contains("no portcullis daemon is running"), "{err}");
    }

    #[test]
    fn malformed_oversized_and_silent_clients_get_errors_not_a_stuck_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let (_server, rx) = Server::start(&path).unwrap();
        let raw = |bytes: &[u8]| {
            let mut s = UnixStream::connect(&path).unwrap();
            s.write_all(bytes).unwrap();
            let mut out = String::new();
            BufReader::new(&s).read_line(&mut out).unwrap();
            serde_json::from_str::<serde_json::Value>(&out).unwrap()
        };
        let v = raw(b"{\"command\":\"reboot\"}\n");
        assert_eq!(v["ok"], false);
        assert!(
            v["error"].as_str().unwrap().starts_with("bad request"),
            "{v}"
        );
        let mut big = vec![b' '; (MAX_REQUEST + 10) as usize];
        big.push(b'\n');
        let v = raw(&big);
        assert!(v["error"].as_str().unwrap().contains("longer than"), "{v}");
        // A client that connects and says nothing is cut off after the
        // timeout; the next one is served.
        let silent = UnixStream::connect(&path).unwrap();
        let t = std::time::Instant::now();
        let owner = std::thread::spawn(move || serve_one(&rx));
        let v = call(&path, &Request::Status).unwrap().unwrap();
        assert_eq!(v["mode"], "inline");
        assert!(t.elapsed() < IO_TIMEOUT * 2, "{:?}", t.elapsed());
        drop(silent);
        owner.join().unwrap();
    }

    #[test]
    fn stale_socket_files_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let err = call(&path, &Request::Status).unwrap_err().to_string();
        assert!(err.contains("stale socket"), "{err}");
        let (_server, _rx) = Server::start(&path).unwrap();
    }

    // ------------------------------------------------ another user's side

    const NOBODY: u32 = 65534;
    const ROLE: &str = "PORTCULLIS_CONTROL_TEST_ROLE";
    const SOCKET: &str = "PORTCULLIS_CONTROL_TEST_SOCKET";

    /// Not a test of its own: what [`as_nobody`] runs in a child process,
    /// as uid 65534, when the role variable is set.
    #[test]
    fn helper_run_as_another_user() {
        let (Ok(role), Ok(path)) = (std::env::var(ROLE), std::env::var(SOCKET)) else {
            return;
        };
        match role.as_str() {
            // Connects, says nothing, reports what comes back and when.
            "silent-client" => {
                let s = UnixStream::connect(&path).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let t = Instant::now();
                let mut line = String::new();
                let _ = BufReader::new(&s).read_line(&mut line);
                println!("HELPER {} {}", t.elapsed().as_millis(), line.trim_end());
            }
            // Listens (accepting nothing) until killed.
            "listener" => {
                let _l = UnixListener::bind(&path).unwrap();
                std::thread::sleep(Duration::from_secs(30));
            }
            r => panic!("unknown role {r}"),
        }
    }

    /// Runs [`helper_run_as_another_user`] in a copy of this test binary
    /// (where uid 65534 can run it) as uid and gid 65534.
    fn as_nobody(role: &str, socket: &Path) -> (std::process::Child, tempfile::TempDir) {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = dir.path().join("tests");
        std::fs::copy(std::env::current_exe().unwrap(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let child = std::process::Command::new(&bin)
            .args([
                "--exact",
                "control::tests::helper_run_as_another_user",
                "--nocapture",
                "--test-threads=1",
                "--quiet",
            ])
            .env(ROLE, role)
            .env(SOCKET, socket)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (child, dir)
    }

    #[test]
    fn strangers_are_refused_before_their_request_is_read() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to run a client as another user");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let (_server, _rx) = Server::start(&path).unwrap();
        // Let uid 65534 reach the socket: the server's own check is left.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (child, _bin) = as_nobody("silent-client", &path);
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("HELPER "))
            .unwrap_or_else(|| panic!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
        let (ms, reply) = line.split_once(' ').unwrap();
        let v: serde_json::Value = serde_json::from_str(reply).unwrap();
        assert_eq!(v["ok"], false);
        assert!(v["error"].as_str().unwrap().contains("root's only"), "{v}");
        // At once, not after the request deadline.
        let ms: u64 = ms.parse().unwrap();
        assert!(ms < 500, "refused after {ms} ms");
    }

    #[test]
    fn a_trickling_client_is_cut_off_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let (_server, rx) = Server::start(&path).unwrap();
        let mut slow = UnixStream::connect(&path).unwrap();
        let t = Instant::now();
        // One byte every 500 ms: every read succeeds, the line never ends
        // within the deadline.
        let trickle = std::thread::spawn(move || {
            let reader = slow.try_clone().unwrap();
            for &b in b"{\"command\":\"status\"}\n" {
                if slow.write_all(&[b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            let mut line = String::new();
            let _ = BufReader::new(&reader).read_line(&mut line);
            line
        });
        std::thread::sleep(Duration::from_millis(100));
        let owner = std::thread::spawn(move || serve_one(&rx));
        let v = call(&path, &Request::Status).unwrap().unwrap();
        let waited = t.elapsed();
        assert_eq!(v["mode"], "inline");
        assert!(
            waited < REQUEST_TIMEOUT + Duration::from_millis(700),
            "the next client waited {waited:?}"
        );
        owner.join().unwrap();
        let line = trickle.join().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("no complete request"),
            "{v}"
        );
    }

    #[test]
    fn dropping_the_server_does_not_wait_for_a_client() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let (server, _rx) = Server::start(&path).unwrap();
        let _silent = UnixStream::connect(&path).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        drop(server);
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        assert!(!path.exists());

        // Only our own socket file is removed.
        let (server, _rx) = Server::start(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "not ours").unwrap();
        drop(server);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not ours");
    }

    #[test]
    fn only_a_stale_socket_of_ours_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        // A file, a folder, a link: refused and left alone.
        let file = dir.path().join("bans.json");
        std::fs::write(&file, "{}").unwrap();
        let err = Server::start(&file).unwrap_err().to_string();
        assert!(err.contains("is a regular file, not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "{}");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let err = Server::start(&sub).unwrap_err().to_string();
        assert!(err.contains("is a folder, not a socket"), "{err}");
        assert!(sub.is_dir());
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = Server::start(&link).unwrap_err().to_string();
        assert!(err.contains("is a symbolic link, not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "{}");

        // Someone else's stale socket: refused and left alone.
        let path = dir.path().join("ctl.sock");
        drop(UnixListener::bind(&path).unwrap());
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::lchown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
            let err = Server::start(&path).unwrap_err().to_string();
            assert!(
                err.contains("is a socket owned by uid 65534, not uid 0"),
                "{err}"
            );
            assert!(path.exists());
            std::os::unix::fs::lchown(&path, Some(0), Some(0)).unwrap();
        }
        // Ours: replaced.
        let (_server, _rx) = Server::start(&path).unwrap();
    }

    #[test]
    fn the_socket_folder_must_be_ours_alone() {
        let dir = tempfile::tempdir().unwrap();
        // Created when missing, 0700.
        let made = dir.path().join("a/b");
        let (server, _rx) = Server::start(&made.join("ctl.sock")).unwrap();
        drop(server);
        for d in [dir.path().join("a"), made.clone()] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
        // Writable by others (like /tmp): refused.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = Server::start(&open.join("ctl.sock"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("writable by group or others (mode 1777)"),
            "{err}"
        );
        assert!(err.contains("chmod go-w"), "{err}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o770)).unwrap();
        let err = Server::start(&open.join("ctl.sock"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("writable by group"), "{err}");
        // 0755 is fine.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        drop(Server::start(&open.join("ctl.sock")).unwrap());
        // Someone else's: refused.
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&open, Some(NOBODY), Some(NOBODY)).unwrap();
            let err = Server::start(&open.join("ctl.sock"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("is owned by uid 65534, not uid 0"), "{err}");
        }
    }

    #[test]
    fn the_client_talks_only_to_a_server_run_by_root_or_itself() {
        let p = Path::new("/run/x.sock");
        assert!(check_server(p, 0, 1000).is_ok());
        assert!(check_server(p, 1000, 1000).is_ok());
        let err = check_server(p, 1000, 0).unwrap_err().to_string();
        assert_eq!(
            err,
            "/run/x.sock is served by uid 1000, not root: refusing to talk to it (is --socket right?)"
        );
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to run a listener as another user");
            return;
        }
        // And through `call`, with a listener run by uid 65534.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sub = dir.path().join("theirs");
        std::fs::create_dir(&sub).unwrap();
        std::os::unix::fs::chown(&sub, Some(NOBODY), Some(NOBODY)).unwrap();
        let path = sub.join("ctl.sock");
        let (mut child, _bin) = as_nobody("listener", &path);
        let t = Instant::now();
        while UnixStream::connect(&path).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the listener did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let err = call(&path, &Request::Status).unwrap_err().to_string();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            err.ends_with(
                "is served by uid 65534, not root: refusing to talk to it (is --socket right?)"
            ),
            "{err}"
        );
    }
}
