//! The systemd notification protocol (`sd_notify(3)`), in safe std.
//!
//! Under `Type=notify` systemd passes a datagram socket in `$NOTIFY_SOCKET`
//! (a path, or an abstract name written with a leading `@`). The service
//! tells it `READY=1` once it serves, `RELOADING=1` / `READY=1` around a
//! reload, `STOPPING=1` when it begins to shut down, a free-form `STATUS=`
//! line for `systemctl status`, and `WATCHDOG=1` keep-alives when the unit
//! sets `WatchdogSec=`.
//!
//! Guarantees:
//! - Without `$NOTIFY_SOCKET` (not started by systemd, or `Type=simple`)
//!   every call is a no-op that returns `Ok`.
//! - A message is one datagram of `KEY=value` lines; values never contain a
//!   newline (a `STATUS=` text has its line breaks replaced by spaces), so
//!   a status cannot smuggle in `READY=1`.
//! - Never blocks for long: the datagram socket is non-blocking, and a full
//!   or missing receiver is an error returned to the caller, who may ignore
//!   it (notifications are best effort; the firewall must not stop because
//!   systemd is busy).

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends notifications to systemd, or does nothing when not under systemd.
///
/// Cheap to share: every method takes `&self` and the type is `Sync`, so
/// one `Arc<Notifier>` (or a clone per thread) serves every thread.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// A notifier for `$NOTIFY_SOCKET`, or a no-op one when it is unset or
    /// empty. Fails only when the variable is set but unusable (not an
    /// absolute path or `@name`), which is a configuration error worth
    /// reporting.
    pub fn from_env() -> io::Result<Self> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(v) if !v.is_empty() => Self::to(&v),
            _ => Ok(Self::disabled()),
        }
    }

    /// A notifier that does nothing.
    pub fn disabled() -> Self {
        Self { target: None }
    }

    /// A notifier for the socket named as in `$NOTIFY_SOCKET`: an absolute
    /// path, or `@name` for a Linux abstract socket.
    pub fn to(socket: &OsStr) -> io::Result<Self> {
        let bytes = socket.as_bytes();
        let addr = match bytes.first() {
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
            Some(b'/') => SocketAddr::from_pathname(socket)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "NOTIFY_SOCKET={} is neither an absolute path nor an @abstract name",
                        socket.to_string_lossy()
                    ),
                ))
            }
        };
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(Self {
            target: Some((sock, addr)),
        })
    }

    /// Whether messages go anywhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `READY=1`: startup (or a reload) is complete, the service serves.
    pub fn ready(&self) -> io::Result<()> {
        self.send("READY=1")
    }

    /// `READY=1` with a status line in the same datagram.
    pub fn ready_with_status(&self, status: &str) -> io::Result<()> {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (the time systemd ≥ 253 needs
    /// under `Type=notify-reload`; older versions ignore it). Follow with
    /// [`Notifier::ready`] when the reload is over, successful or not.
    pub fn reloading(&self) -> io::Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            monotonic_usec()?
        ))
    }

    /// `STOPPING=1`: shutdown has begun (rules are being removed).
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1")
    }

    /// `STATUS=...`: one line shown by `systemctl status`.
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STATUS={}", one_line(status)))
    }

    /// `WATCHDOG=1`: the keep-alive for `WatchdogSec=`. Send it at least
    /// every [`watchdog_interval`] / 2.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }

    /// Sends `state` (newline-separated `KEY=value` lines) as one datagram.
    pub fn send(&self, state: &str) -> io::Result<()> {
        match &self.target {
            None => Ok(()),
            Some((sock, addr)) => sock.send_to_addr(state.as_bytes(), addr).map(|_| ()),
        }
    }
}

/// How often systemd expects `WATCHDOG=1` (`$WATCHDOG_USEC`), when it was
/// meant for this process (`$WATCHDOG_PID` unset or equal to our PID). Ping
/// at half this interval.
pub fn watchdog_interval() -> Option<Duration> {
    parse_watchdog(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    let us: u64 = usec?.trim().parse().ok()?;
    (us > 0).then(|| Duration::from_micros(us))
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares reload
/// times against.
fn monotonic_usec() -> io::Result<u64> {
    let ts =
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_err(io::Error::from)?;
    let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
    Ok(secs * 1_000_000 + nanos / 1_000)
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::to(path.as_os_str()).unwrap();
        assert!(n.enabled());

        n.ready().unwrap();
        assert_eq!(recv(&rx), "READY=1");
        n.stopping().unwrap();
        assert_eq!(recv(&rx), "STOPPING=1");
        n.watchdog().unwrap();
        assert_eq!(recv(&rx), "WATCHDOG=1");
        n.status("3 bans\nREADY=1").unwrap();
        assert_eq!(recv(&rx), "STATUS=3 bans READY=1");
        n.ready_with_status("serving").unwrap();
        assert_eq!(recv(&rx), "READY=1\nSTATUS=serving");
    }

    #[test]
    fn reloading_carries_the_monotonic_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::to(path.as_os_str()).unwrap();

        let before = monotonic_usec().unwrap();
        n.reloading().unwrap();
        let after = monotonic_usec().unwrap();
        let msg = recv(&rx);
        let mut lines = msg.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {msg:?}"))
            .parse()
            .unwrap();
        assert!(before <= usec && usec <= after, "{before} {usec} {after}");
        assert_eq!(lines.next(), None);
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        let name = format!("portcullis-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = Notifier::to(OsStr::new(&format!("@{name}"))).unwrap();
        n.ready().unwrap();
        assert_eq!(recv(&rx), "READY=1");
    }

    #[test]
    fn disabled_is_a_no_op_and_bad_names_are_refused() {
        let n = Notifier::disabled();
        assert!(!n.enabled());
        n.ready().unwrap();
        n.reloading().unwrap();
        n.stopping().unwrap();
        assert!(Notifier::to(OsStr::new("relative/path")).is_err());
        // A socket nobody listens on: an error for the caller to ignore,
        // never a hang.
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::to(dir.path().join("nobody").as_os_str()).unwrap();
        assert!(n.ready().is_err());
    }

    #[test]
    fn watchdog_interval_is_ours_only() {
        assert_eq!(
            parse_watchdog(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_watchdog(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_watchdog(Some("30000000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("soon"), None, 7), None);
        assert_eq!(parse_watchdog(None, None, 7), None);
    }
}
