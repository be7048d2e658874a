//! Anti-lockout: the address of the SSH client that started the daemon is
//! never blocked or banned (unless `--no-protect-ssh`), like fail2ban's
//! `ignoreself` and `ignoreip` for the operator's own session.
//!
//! The client is found in `SSH_CONNECTION` (or `SSH_CLIENT`), ours or, since
//! `sudo` drops both from the environment, the nearest ancestor process's
//! (`/proc/PID/environ`, readable by root).

use std::net::IpAddr;
use std::path::Path;

/// How many ancestors are searched.
const MAX_DEPTH: usize = 32;

/// The SSH client's address, if this process was started from an SSH
/// session.
pub fn ssh_client() -> Option<IpAddr> {
    for var in ["SSH_CONNECTION", "SSH_CLIENT"] {
        if let Some(a) = std::env::var(var).ok().as_deref().and_then(client_addr) {
            return Some(a);
        }
    }
    let mut pid = std::process::id();
    for _ in 0..MAX_DEPTH {
        pid = parent_of(Path::new("/proc"), pid)?;
        if pid <= 1 {
            return None;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        if let Some(a) = from_environ(&env) {
            return Some(a);
        }
    }
    None
}

/// The client address in an `SSH_CONNECTION` / `SSH_CLIENT` value
/// (`client port [server port]`).
pub fn client_addr(value: &str) -> Option<IpAddr> {
    let first = value.split_whitespace().next()?;
    // OpenSSH writes IPv6 without brackets; a zone (fe80::1%eth0) is dropped.
    first.split('%').next()?.parse().ok()
}

/// The client address in a NUL-separated environment block.
fn from_environ(env: &[u8]) -> Option<IpAddr> {
    let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
    ["SSH_CONNECTION=", "SSH_CLIENT="].iter().find_map(|key| {
        vars.iter()
            .find_map(|v| v.strip_prefix(key.as_bytes()))
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(client_addr)
    })
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
        let env = b"PATH=/bin\0SSH_CLIENT=198.18.0.9 4 22\0HOME=/root\0";
        assert_eq!(from_environ(env), Some("198.18.0.9".parse().unwrap()));
        assert_eq!(from_environ(b"PATH=/bin\0"), None);
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
}
