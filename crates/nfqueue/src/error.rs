//! The errors of this crate: each says what went wrong and what to do.

use nix::errno::Errno;

use crate::msg::DecodeError;

/// Why opening or using a queue failed.
///
/// Receive-buffer overruns (`ENOBUFS`) and kernel errors about single
/// verdicts are not errors: they are counted in
/// [`QueueCounters`](crate::QueueCounters).
#[derive(Debug, thiserror::Error)]
pub enum NfqError {
    /// `socket(AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER)` failed.
    #[error(
        "cannot open a netfilter netlink socket ({0}): the kernel needs nfnetlink \
         (CONFIG_NETFILTER_NETLINK; try `modprobe nfnetlink`)"
    )]
    NetlinkUnavailable(Errno),

    /// The kernel has no nfnetlink_queue subsystem (it answered `EINVAL`).
    #[error(
        "the kernel has no NFQUEUE support: load it with `modprobe nfnetlink_queue` \
         (CONFIG_NETFILTER_NETLINK_QUEUE)"
    )]
    ModuleMissing,

    /// The kernel refused with `EPERM` and no other process holds the queue.
    #[error(
        "binding NFQUEUE {queue} was refused: it needs CAP_NET_ADMIN in this network \
         namespace (run as root or grant CAP_NET_ADMIN, e.g. AmbientCapabilities= in systemd)"
    )]
    PermissionDenied {
        /// The queue number.
        queue: u16,
    },

    /// Another netlink socket (usually another process) has bound the queue.
    #[error(
        "NFQUEUE {queue} is already bound by another listener{}: stop it, or use another \
         queue number (and the matching --queue-num in the firewall rule)",
        match .portid { Some(p) => format!(" (netlink port id {p}, see /proc/net/netfilter/nfnetlink_queue)"), None => String::new() }
    )]
    QueueInUse {
        /// The queue number.
        queue: u16,
        /// The owner's netlink port id (usually its pid), if it could be read.
        portid: Option<u32>,
    },

    /// The kernel does not support a requested queue flag.
    #[error(
        "the kernel does not support the requested NFQUEUE flags ({0}): \
         turn off `gso` or `fail_open` in the queue configuration"
    )]
    FlagsUnsupported(&'static str),

    /// The configuration cannot work.
    #[error("invalid NFQUEUE configuration: {0}")]
    InvalidConfig(&'static str),

    /// The kernel rejected the queue setup with an unexpected error.
    #[error("the kernel rejected the NFQUEUE {queue} setup: {errno}")]
    SetupRejected {
        /// The queue number.
        queue: u16,
        /// What the kernel said.
        errno: Errno,
    },

    /// The kernel did not acknowledge the setup in time.
    #[error("the kernel did not acknowledge the NFQUEUE setup within 5 s")]
    SetupTimeout,

    /// A system call failed.
    #[error("{op} on the NFQUEUE socket failed: {errno}")]
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

impl NfqError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(Errno) -> NfqError {
        move |errno| NfqError::Io { op, errno }
    }
}
