//! Anti-lockout: the address of the SSH client that started the daemon is
//! never blocked or banned (unless `--no-protect-ssh`), like fail2ban's
//! `ignoreself` and `ignoreip` for the operator's own session.
//!
//! # Where the address comes from
//! Not from `SSH_CONNECTION`: any process can set that variable (ours or an
//! ancestor's) to any address, and a `tmux` or `screen` server keeps a
//! stale one. A process allowed to `sudo portcullis run` could otherwise
//! exempt an address of its choosing from the firewall.
//!
//! Instead, walking up from us, the first ancestor that is an SSH server
//! process (command name `sshd` or `sshd-session`) running as root (real
//! and effective uid 0 in `/proc/PID/status`) is our session's: with
//! privilege separation, the `sshd: user [priv]` monitor, which holds the
//! connection's TCP socket like the unprivileged `sshd: user@pts/0` child
//! does; for a root login, the one `sshd: root@pts/0` (or `root@notty`)
//! session process. The client address is the remote end of that socket's established
//! connection, from the kernel (`/proc/PID/fd` and `/proc/PID/net/tcp{,6}`).
//! Nothing an unprivileged process does changes it: a process that names
//! itself `sshd` is not root, and a session's own environment is its
//! user's to rewrite. The walk stops at that first root `sshd`: a process
//! not under an SSH session (a CI runner, a detached tmux server, systemd)
//! gets no address, whatever its environment says. [`parse_protect`] reads
//! an address given explicitly (`--protect`).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// How many ancestors are searched.
const MAX_DEPTH: usize = 32;

/// The command names (`/proc/PID/stat`) of OpenSSH's server: `sshd`, and
/// `sshd-session` for a session since OpenSSH 9.8.
const SSHD: [&str; 2] = ["sshd", "sshd-session"];

/// The SSH client's address and the pid of the root `sshd` process whose
/// connection it was read from (for the log), if this process was started
/// from an SSH session.
pub fn ssh_client_with_source() -> Option<(IpAddr, u32)> {
    ssh_client_in(Path::new("/proc"), std::process::id())
}

/// An address given explicitly to be protected (`--protect`): an address,
/// or an `SSH_CONNECTION` / `SSH_CLIENT` value (its first field), so that
/// `sudo portcullis run --protect "$SSH_CONNECTION"` works from the
/// operator's shell, which expands the variable before sudo drops it.
pub fn parse_protect(value: &str) -> Result<IpAddr, String> {
    client_addr(value).ok_or_else(|| {
        format!("{value:?} is not an IP address (nor an SSH_CONNECTION value starting with one)")
    })
}

/// [`ssh_client_with_source`] for process `pid` under the proc file
/// system mounted at `proc`.
fn ssh_client_in(proc: &Path, pid: u32) -> Option<(IpAddr, u32)> {
    // The topmost process below the sshd processes seen so far: once the
    // root sshd is found, the session program sshd exec'd (the login
    // shell), with the environment sshd gave it.
    let mut session: Option<u32> = None;
    let mut pid = pid;
    for _ in 0..MAX_DEPTH {
        pid = parent_of(proc, pid)?;
        if pid <= 1 {
            return None;
        }
        if is_root_sshd(proc, pid) {
            // Our session's sshd: its connection. Further up is the
            // listener, whose sockets are other sessions' or none. If this
            // OpenSSH's monitor does not hold the socket, the session
            // program's environment is the next best witness: only that
            // session's own user can rewrite it (`--no-protect-ssh` if
            // that matters).
            return tcp_peer(proc, pid)
                .or_else(|| session.and_then(|s| environ_addr(proc, s)))
                .map(|addr| (addr, pid));
        }
        if !comm_of(proc, pid).is_some_and(|c| SSHD.contains(&c.as_str())) {
            session = Some(pid);
        }
    }
    None
}

/// The command name of `pid` (`/proc/PID/stat`, between the parentheses).
fn comm_of(proc: &Path, pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")).ok()?;
    let (a, b) = (stat.find('(')?, stat.rfind(')')?);
    (a < b).then(|| stat[a + 1..b].to_owned())
}

/// The client address in `SSH_CONNECTION` (or `SSH_CLIENT`) of `pid`'s
/// environment as it was exec'd.
fn environ_addr(proc: &Path, pid: u32) -> Option<IpAddr> {
    let env = std::fs::read(proc.join(pid.to_string()).join("environ")).ok()?;
    let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
    ["SSH_CONNECTION=", "SSH_CLIENT="].iter().find_map(|key| {
        vars.iter()
            .find_map(|v| v.strip_prefix(key.as_bytes()))
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(client_addr)
    })
}

/// Whether `pid` is an SSH server process running as root.
fn is_root_sshd(proc: &Path, pid: u32) -> bool {
    if !comm_of(proc, pid).is_some_and(|c| SSHD.contains(&c.as_str())) {
        return false;
    }
    let dir = proc.join(pid.to_string());
    // Not the owner of /proc/PID: a process that made itself non-dumpable
    // shows as root's there.
    let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .is_some_and(|ids| {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            ids.len() >= 2 && ids[..2].iter().all(|id| *id == "0")
        })
}

/// The remote address of an established TCP connection that `pid` holds a
/// socket of (its network namespace's `net/tcp` and `net/tcp6`).
fn tcp_peer(proc: &Path, pid: u32) -> Option<IpAddr> {
    let dir = proc.join(pid.to_string());
    let links: Vec<String> = std::fs::read_dir(dir.join("fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?;
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let sockets: HashSet<&str> = links.iter().map(String::as_str).collect();
    ["net/tcp", "net/tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(dir.join(table)).ok()?;
        text.lines().skip(1).find_map(|line| {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.len() > 9 && f[3] == "01" && sockets.contains(f[9]))
                .then(|| proc_net_addr(f[2]))
                .flatten()
        })
    })
}

/// An address as `/proc/net/tcp{,6}` shows it: `ADDR:PORT` in hex, the
/// address as 32-bit words in host byte order. An IPv4-mapped IPv6 address
/// (an IPv4 client on a dual-stack socket) is returned as IPv4.
fn proc_net_addr(field: &str) -> Option<IpAddr> {
    let (hex, _port) = field.split_once(':')?;
    if !(hex.len() == 8 || hex.len() == 32) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = Vec::with_capacity(16);
    for word in hex.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(word).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    if let Ok(v4) = <[u8; 4]>::try_from(bytes.as_slice()) {
        return Some(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(bytes.as_slice()).ok()?);
    Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
}

/// The client address in an `SSH_CONNECTION` / `SSH_CLIENT` value
/// (`client port [server port]`).
pub fn client_addr(value: &str) -> Option<IpAddr> {
    let first = value.split_whitespace().next()?;
    // OpenSSH writes IPv6 without brackets; a zone (fe80::1%eth0) is dropped.
    first.split('%').next()?.parse().ok()
}

/// The parent of `pid` from `<proc>/<pid>/stat` (the field after the
/// parenthesized command name, which may itself hold spaces and parens).
fn parent_of(proc: &Path, pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn client_addresses_are_read_from_both_variables_and_v6() {
        assert_eq!(
            client_addr("198.18.0.7 51234 198.18.0.1 22"),
            Some("198.18.0.7".parse().unwrap())
        );
        assert_eq!(
            client_addr("2001:2::7 51234 22"),
            Some("2001:2::7".parse().unwrap())
        );
        assert_eq!(
            client_addr("fe80::1%eth0 1 fe80::2%eth0 22"),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(client_addr(""), None);
        assert_eq!(client_addr("not-an-address 1 2 3"), None);
        assert_eq!(
            parse_protect("198.18.0.7"),
            Ok("198.18.0.7".parse().unwrap())
        );
        assert_eq!(
            parse_protect("2001:2::7 51234 2001:2::1 22"),
            Ok("2001:2::7".parse().unwrap())
        );
        assert!(parse_protect("example.org")
            .unwrap_err()
            .contains("not an IP address"));
    }

    #[test]
    fn parents_come_from_proc_stat_even_with_odd_command_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("42")).unwrap();
        std::fs::write(
            dir.path().join("42/stat"),
            "42 (we) ird (name)) S 17 42 42 0 -1 4194560 0",
        )
        .unwrap();
        assert_eq!(parent_of(dir.path(), 42), Some(17));
        assert_eq!(parent_of(dir.path(), 43), None);
        // And on the real /proc: our parent is the test harness's parent.
        let me = std::process::id();
        assert_eq!(
            parent_of(Path::new("/proc"), me),
            Some(std::os::unix::process::parent_id())
        );
    }

    /// One process in a fake proc tree.
    struct Proc<'a> {
        pid: u32,
        ppid: u32,
        comm: &'a str,
        uid: u32,
        env: &'a str,
        /// Sockets it holds, by inode.
        sockets: &'a [u64],
    }

    const fn p<'a>(pid: u32, ppid: u32, comm: &'a str, uid: u32) -> Proc<'a> {
        Proc {
            pid,
            ppid,
            comm,
            uid,
            env: "",
            sockets: &[],
        }
    }

    /// A `/proc/net/tcp{,6}` address field for `addr:port`.
    fn hex(addr: IpAddr, port: u16) -> String {
        let words: Vec<String> = match addr {
            IpAddr::V4(a) => vec![format!("{:08X}", u32::from_ne_bytes(a.octets()))],
            IpAddr::V6(a) => a
                .octets()
                .chunks(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes(c.try_into().unwrap())))
                .collect(),
        };
        format!("{}:{port:04X}", words.concat())
    }

    /// Writes `procs` under `root` as the proc file system shows them, with
    /// `tcp` (inode, remote address, state) as every process's
    /// `net/tcp{,6}` (one network namespace).
    fn fake_proc(root: &Path, procs: &[Proc], tcp: &[(u64, &str, &str)]) {
        for pr in procs {
            let dir = root.join(pr.pid.to_string());
            std::fs::create_dir_all(dir.join("fd")).unwrap();
            std::fs::create_dir_all(dir.join("net")).unwrap();
            std::fs::write(
                dir.join("stat"),
                format!(
                    "{} ({}) S {} {} {} 0 -1 4194560 0",
                    pr.pid, pr.comm, pr.ppid, pr.pid, pr.pid
                ),
            )
            .unwrap();
            let u = pr.uid;
            std::fs::write(
                dir.join("status"),
                format!(
                    "Name:\t{}\nPPid:\t{}\nUid:\t{u}\t{u}\t{u}\t{u}\nGid:\t{u}\t{u}\t{u}\t{u}\n",
                    pr.comm, pr.ppid
                ),
            )
            .unwrap();
            std::fs::write(dir.join("environ"), pr.env.replace(' ', "\0")).unwrap();
            std::os::unix::fs::symlink("/dev/null", dir.join("fd/0")).unwrap();
            for (i, ino) in pr.sockets.iter().enumerate() {
                std::os::unix::fs::symlink(
                    format!("socket:[{ino}]"),
                    dir.join(format!("fd/{}", i + 3)),
                )
                .unwrap();
            }
            let head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
            let (mut v4, mut v6) = (head.to_owned(), head.to_owned());
            for (i, (ino, remote, st)) in tcp.iter().enumerate() {
                let remote: IpAddr = remote.parse().unwrap();
                let local: IpAddr = if remote.is_ipv4() {
                    "198.18.0.1"
                } else {
                    "2001:2::1"
                }
                .parse()
                .unwrap();
                let line = format!(
                    "{i:4}: {} {} {st} 00000000:00000000 02:000A7B2C 00000000     0        0 {ino} 4 0000000000000000 20 4 31 10 -1\n",
                    hex(local, 22),
                    hex(remote, 51234)
                );
                if remote.is_ipv4() {
                    v4.push_str(&line)
                } else {
                    v6.push_str(&line)
                }
            }
            std::fs::write(dir.join("net/tcp"), v4).unwrap();
            std::fs::write(dir.join("net/tcp6"), v6).unwrap();
        }
    }

    const SSH_ENV: &str = "PATH=/bin SSH_CONNECTION=198.18.0.7";

    /// Debian 12's OpenSSH: the listener, the root `[priv]` monitor and the
    /// user's `user@pts/0` child (both holding the connection, inode 5555),
    /// then the login shell, sudo and us (pid 600).
    fn ssh_session<'a>() -> Vec<Proc<'a>> {
        vec![
            Proc {
                sockets: &[1111],
                ..p(100, 1, "sshd", 0)
            },
            Proc {
                sockets: &[5555],
                ..p(200, 100, "sshd", 0)
            },
            Proc {
                sockets: &[5555],
                ..p(300, 200, "sshd", 1000)
            },
            Proc {
                env: SSH_ENV,
                ..p(400, 300, "bash", 1000)
            },
            p(500, 400, "sudo", 0),
            p(600, 500, "portcullis", 0),
        ]
    }

    /// The listener's socket (LISTEN, 0A) and our session's connection.
    const TCP: [(u64, &str, &str); 2] = [(1111, "0.0.0.0", "0A"), (5555, "198.18.0.7", "01")];

    #[test]
    fn the_client_comes_from_the_root_sshd_of_our_session() {
        let dir = tempfile::tempdir().unwrap();
        fake_proc(dir.path(), &ssh_session(), &TCP);
        assert_eq!(
            ssh_client_in(dir.path(), 600),
            Some(("198.18.0.7".parse().unwrap(), 200))
        );
        // Over IPv6, and IPv4 on a dual-stack socket.
        for (remote, want) in [
            ("2001:2::7", "2001:2::7"),
            ("::ffff:198.18.0.8", "198.18.0.8"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            fake_proc(dir.path(), &ssh_session(), &[(5555, remote, "01")]);
            assert_eq!(
                ssh_client_in(dir.path(), 600),
                Some((want.parse().unwrap(), 200))
            );
        }
        // The monitor holds no established connection: never the
        // listener's; the login shell's environment (sshd set it) instead.
        let dir = tempfile::tempdir().unwrap();
        fake_proc(
            dir.path(),
            &ssh_session(),
            &[(1111, "0.0.0.0", "0A"), (5555, "198.18.0.9", "06")],
        );
        assert_eq!(
            ssh_client_in(dir.path(), 600),
            Some(("198.18.0.7".parse().unwrap(), 200))
        );
        // Neither: nothing.
        let dir = tempfile::tempdir().unwrap();
        let mut procs = ssh_session();
        procs[3].env = "PATH=/bin";
        fake_proc(
            dir.path(),
            &procs,
            &[(1111, "0.0.0.0", "0A"), (5555, "198.18.0.9", "06")],
        );
        assert_eq!(ssh_client_in(dir.path(), 600), None);
    }

    #[test]
    fn a_root_login_runs_the_command_under_one_session_sshd() {
        // What Debian 12's OpenSSH 9.2 showed in the sshd live test
        // (crates/portcullis/tests/sshd.rs): `ssh root@host portcullis
        // run`, key login, no pty: one root `sshd: root@notty` under the
        // listener holds the connection, and root's shell exec'd us, so
        // our parent is that sshd (no session program in between).
        let dir = tempfile::tempdir().unwrap();
        fake_proc(
            dir.path(),
            &[
                Proc {
                    sockets: &[1111],
                    ..p(100, 1, "sshd", 0)
                },
                Proc {
                    sockets: &[5555],
                    ..p(200, 100, "sshd", 0)
                },
                p(600, 200, "portcullis", 0),
            ],
            &TCP,
        );
        assert_eq!(
            ssh_client_in(dir.path(), 600),
            Some(("198.18.0.7".parse().unwrap(), 200))
        );
    }

    #[test]
    fn an_environment_alone_protects_nothing() {
        // A CI runner (no sshd) with SSH_CONNECTION in its environment, and
        // in ours.
        let dir = tempfile::tempdir().unwrap();
        fake_proc(
            dir.path(),
            &[
                Proc {
                    env: SSH_ENV,
                    ..p(100, 1, "runner", 1000)
                },
                Proc {
                    env: SSH_ENV,
                    ..p(200, 100, "sudo", 0)
                },
                Proc {
                    env: SSH_ENV,
                    ..p(300, 200, "portcullis", 0)
                },
            ],
            &TCP,
        );
        assert_eq!(ssh_client_in(dir.path(), 300), None);

        // A tmux server, detached from the session that started it (its
        // parent is init), with that session's stale address.
        let dir = tempfile::tempdir().unwrap();
        let mut procs = ssh_session();
        procs.truncate(2);
        procs.extend([
            Proc {
                env: SSH_ENV,
                ..p(700, 1, "tmux: server", 1000)
            },
            Proc {
                env: SSH_ENV,
                ..p(800, 700, "bash", 1000)
            },
            p(900, 800, "sudo", 0),
            p(950, 900, "portcullis", 0),
        ]);
        fake_proc(dir.path(), &procs, &TCP);
        assert_eq!(ssh_client_in(dir.path(), 950), None);
    }

    #[test]
    fn a_process_calling_itself_sshd_is_not_trusted() {
        // In a real session, the user runs a program named sshd that
        // connects out to 203.0.113.6 and sets SSH_CONNECTION to it, then
        // `sudo portcullis run` under it: the real client is found.
        let dir = tempfile::tempdir().unwrap();
        let mut procs = ssh_session();
        procs.truncate(4);
        procs.extend([
            Proc {
                env: "SSH_CONNECTION=203.0.113.6 1 2 22",
                sockets: &[6666],
                ..p(450, 400, "sshd", 1000)
            },
            p(500, 450, "sudo", 0),
            p(600, 500, "portcullis", 0),
        ]);
        fake_proc(
            dir.path(),
            &procs,
            &[(5555, "198.18.0.7", "01"), (6666, "203.0.113.6", "01")],
        );
        assert_eq!(
            ssh_client_in(dir.path(), 600),
            Some(("198.18.0.7".parse().unwrap(), 200))
        );
        // And with no real session above it: nothing.
        let dir = tempfile::tempdir().unwrap();
        fake_proc(
            dir.path(),
            &[
                Proc {
                    env: "SSH_CONNECTION=203.0.113.6 1 2 22",
                    sockets: &[6666],
                    ..p(450, 1, "sshd", 1000)
                },
                p(500, 450, "sudo", 0),
                p(600, 500, "portcullis", 0),
            ],
            &[(6666, "203.0.113.6", "01")],
        );
        assert_eq!(ssh_client_in(dir.path(), 600), None);
    }

    #[test]
    fn proc_net_addresses_are_decoded() {
        for a in ["198.18.0.7", "2001:2::7", "::1"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(proc_net_addr(&hex(ip, 22)), Some(ip));
        }
        assert_eq!(
            proc_net_addr(&hex("::ffff:198.18.0.8".parse().unwrap(), 22)),
            Some("198.18.0.8".parse().unwrap())
        );
        // The kernel's own rendering of 127.0.0.1:22 on little endian.
        if cfg!(target_endian = "little") {
            assert_eq!(
                proc_net_addr("0100007F:0016"),
                Some("127.0.0.1".parse().unwrap())
            );
        }
        for bad in [
            "",
            "0100007F",
            "0100007:0016",
            "+100007F:0016",
            "zz00007F:0016",
        ] {
            assert_eq!(proc_net_addr(bad), None, "{bad}");
        }
    }
}
