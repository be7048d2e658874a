//! The errors of this crate: each says what went wrong and what to do.

use nix::errno::Errno;

use crate::msg::DecodeError;

/// Why opening or reading an NFLOG group failed.
///
/// Receive-buffer overruns (`ENOBUFS`), lost packets and malformed
/// messages are not errors: they are counted in
/// [`LogStats`](crate::LogStats).
#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    /// `socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER)` failed.
    #[error(
        "cannot open a netfilter netlink socket ({0}): the kernel needs nfnetlink \
         (CONFIG_NETFILTER_NETLINK; try `modprobe nfnetlink`)"
    )]
    NetlinkUnavailable(Errno),

    /// The kernel has no nfnetlink_log subsystem (it answered `EINVAL`).
    #[error(
        "the kernel has no NFLOG support: load it with `modprobe nfnetlink_log` \
         (CONFIG_NETFILTER_NETLINK_LOG; nft's `log group` also needs CONFIG_NFT_LOG)"
    )]
    ModuleMissing,

    /// The kernel refused with `EPERM` and no other socket holds the group.
    #[error(
        "binding NFLOG group {group} was refused: it needs CAP_NET_ADMIN in this network \
         namespace (run as root or grant CAP_NET_ADMIN, e.g. AmbientCapabilities= in systemd)"
    )]
    PermissionDenied {
        /// The group number.
        group: u16,
    },

    /// Another netlink socket (usually another process, e.g. `ulogd` or
    /// `tcpdump -i nflog:N`) has bound the group.
    #[error(
        "NFLOG group {group} is already bound by another listener{}: stop it, or use another \
         group number (and the matching `log group` in the firewall rule)",
        match .portid { Some(p) => format!(" (netlink port id {p}, see /proc/net/netfilter/nfnetlink_log)"), None => String::new() }
    )]
    GroupInUse {
        /// The group number.
        group: u16,
        /// The owner's netlink port id (usually its pid), if it could be read.
        portid: Option<u32>,
    },

    /// The configuration cannot work.
    #[error("invalid NFLOG configuration: {0}")]
    InvalidConfig(&'static str),

    /// The kernel rejected the group setup with an unexpected error.
    #[error("the kernel rejected the NFLOG group {group} setup: {errno}")]
    SetupRejected {
        /// The group number.
        group: u16,
        /// What the kernel said.
        errno: Errno,
    },

    /// The kernel did not acknowledge the setup in time.
    #[error("the kernel did not acknowledge the NFLOG setup within 5 s")]
    SetupTimeout,

    /// A system call failed.
    #[error("{op} on the NFLOG socket failed: {errno}")]
    Io {
        /// The system call.
        op: &'static str,
        /// Its error.
        errno: Errno,
    },

    /// The kernel sent something this crate cannot decode during setup.
    #[error("undecodable netlink message from the kernel: {0}")]
    Protocol(#[from] DecodeError),
}

impl NflogError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(Errno) -> NflogError {
        move |errno| NflogError::Io { op, errno }
    }
}
