//! The control socket: how `portcullis status|bans|ban|unban|explain` talk
//! to the running daemon.
//!
//! A Unix stream socket (default `/run/portcullis/portcullis.sock`, mode
//! 0600 in a 0700 directory, so only root gets in; the server also checks
//! the peer's credentials). One request per connection, one JSON line each
//! way, as `fail2ban-client` and Suricata's unix socket do:
//!
//! ```text
//! -> {"command":"ban","addr":"198.18.0.5","seconds":600}
//! <- {"ok":true,"result":{...}}      or      {"ok":false,"error":"..."}
//! ```
//!
//! The server thread only parses and checks; the request is answered by
//! whoever owns the engine (the packet thread, between batches) through a
//! bounded channel, so the packet path never waits for a client. A client
//! that is slow to write gets [`IO_TIMEOUT`] and is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/portcullis/portcullis.sock";
/// A request line longer than this is refused.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client may take to send its request, and how long the
/// daemon may take to answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);
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
}

/// The answer: a JSON value on success, a message saying what to do
/// otherwise.
pub type Reply = std::result::Result<serde_json::Value, String>;

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
    pub fn answer(self, a: Answer) {
        // The client may have gone: nothing to do then.
        let _ = self.reply.send(a);
    }
}

/// The listening socket and its thread. Dropping it stops the thread and
/// removes the socket file.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens at `path`, handing requests to the returned receiver (poll
    /// it with `try_recv` between batches). Refuses to start if another
    /// daemon answers there; a stale socket file is replaced.
    pub fn start(path: &Path) -> Result<(Self, Receiver<Pending>)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                bail!(
                    "another portcullis daemon is listening on {}: stop it first (or pass another --socket)",
                    path.display()
                );
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {} to root", path.display()))?;
        listener
            .set_nonblocking(true)
            .context("control socket: non-blocking")?;
        let (tx, rx) = crossbeam_channel::bounded(PENDING);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("portcullis-control".into())
            .spawn(move || accept_loop(&listener, &tx, &flag))
            .context("starting the control thread")?;
        Ok((
            Self {
                path: path.to_path_buf(),
                stop,
                thread: Some(thread),
            },
            rx,
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: &UnixListener, tx: &Sender<Pending>, stop: &AtomicBool) {
    // Our own uid: root for the daemon; tests may run it otherwise.
    let me = nix::unistd::geteuid().as_raw();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                // One client at a time: requests are tiny and answered in
                // milliseconds; a slow one is cut off by the timeouts.
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

fn serve_client(stream: UnixStream, tx: &Sender<Pending>, me: u32) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut out = stream.try_clone()?;
    let peer = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.uid())
        .ok();
    // The request is read either way, so that a refused client gets its
    // answer instead of a broken pipe.
    let request = read_request(&stream);
    let reply = match peer {
        Some(uid) if uid == 0 || uid == me => request.and_then(|req| ask(tx, req)),
        _ => {
            Err("permission denied: the portcullis control socket is root's only (use sudo)".into())
        }
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
    out.write_all(&line)
}

fn read_request(stream: &UnixStream) -> std::result::Result<Request, String> {
    let mut line = String::new();
    let mut r = BufReader::new(stream.take(MAX_REQUEST + 1));
    r.read_line(&mut line)
        .map_err(|e| format!("reading the request: {e}"))?;
    if line.len() as u64 > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    serde_json::from_str(line.trim_end()).map_err(|e| format!("bad request: {e}"))
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
}
