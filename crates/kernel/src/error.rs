//! [`KernelError`]: what can go wrong talking to nftables (programs and
//! netlink) and iptables.

use std::net::IpAddr;

/// Longest stderr kept in an error (nft echoes the offending input line;
/// with 100k set elements that could be megabytes).
const MAX_STDERR: usize = 2000;

/// An error from the kernel rules layer. Every variant says what to do.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A program is not installed (or not on PATH, /usr/sbin, /sbin).
    #[error("`{program}` is not installed: apt-get install {package}")]
    MissingProgram {
        program: String,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// The kernel lacks something we need.
    #[error("the kernel lacks {feature}: {detail}")]
    MissingFeature {
        /// The module and its kernel config option.
        feature: &'static str,
        detail: String,
    },
    /// Not allowed to change the firewall.
    #[error("`{program}` was refused: run as root or with CAP_NET_ADMIN ({detail})")]
    PermissionDenied { program: String, detail: String },
    /// A program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// What ran, with its arguments (not its input).
        command: String,
        status: String,
        stderr: String,
    },
    /// A program could not be started.
    #[error("could not run `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// A netfilter netlink request (nf_tables, ctnetlink) failed (`errno`
    /// from the kernel, or no socket in the runner's namespace).
    #[error("netfilter netlink request ({what}) failed: {source}")]
    Netlink {
        what: &'static str,
        source: std::io::Error,
    },
    /// A program's output was not what we expected.
    #[error("unexpected output from `{command}`: {detail}")]
    Output { command: String, detail: String },
    /// A [`KernelPlan`](crate::KernelPlan) that cannot be installed.
    #[error("invalid kernel plan: {0}")]
    InvalidPlan(String),
    /// A ban that cannot be set.
    #[error("cannot ban {addr}: {reason}")]
    InvalidBan { addr: IpAddr, reason: &'static str },
    /// Neither the nft `queue` statement, the xt NFQUEUE target in our
    /// table nor iptables' NFQUEUE target is available.
    #[error(
        "no way to hand packets to user space: this kernel has no nft `queue` statement \
         (CONFIG_NFT_QUEUE), refuses the xt NFQUEUE target in an inet table \
         (CONFIG_NETFILTER_XT_TARGET_NFQUEUE, CONFIG_NFT_COMPAT) and {0}"
    )]
    NoQueuePath(String),
}

/// The Debian package of a program we run.
pub(crate) fn package_of(program: &str) -> &'static str {
    match program {
        "nft" => "nftables",
        "ip" => "iproute2",
        p if p.starts_with("iptables") || p.starts_with("ip6tables") => "iptables",
        _ => "(unknown package)",
    }
}

/// Cuts `s` to [`MAX_STDERR`] bytes on a character boundary.
pub(crate) fn clip(s: &str) -> String {
    let s = s.trim();
    if s.len() <= MAX_STDERR {
        return s.to_string();
    }
    let mut end = MAX_STDERR;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}
