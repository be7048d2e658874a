//! Small value types shared by the rules, the detector, the events and the
//! engine. Everything here is `Copy` and cheap: it travels with each packet.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use portcullis_wire::{IpProto, PacketSummary};

/// Time as it arrives with a packet: microseconds since the Unix epoch, UTC.
/// The engine never reads a clock; live sources stamp packets, replay uses
/// the capture's stamps, tests make them up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const fn from_micros(us: u64) -> Self {
        Self(us)
    }

    pub const fn from_secs(s: u64) -> Self {
        Self(s.saturating_mul(1_000_000))
    }

    pub const fn as_micros(self) -> u64 {
        self.0
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }

    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }

    /// `self - earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

/// Which way a packet crosses the host, as the netfilter hook (or, in
/// replay, the configured `home_net`) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// To this host (netfilter input).
    Inbound,
    /// From this host (netfilter output).
    Outbound,
    /// Through this host (netfilter forward).
    Forwarded,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Forwarded => "forwarded",
        }
    }

    /// The peer's address: the source of inbound and forwarded packets, the
    /// destination of outbound ones.
    pub fn remote(self, p: &PacketSummary) -> IpAddr {
        match self {
            Self::Outbound => p.dst,
            Self::Inbound | Self::Forwarded => p.src,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Drop,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Drop => "drop",
        }
    }
}

/// Why a verdict was reached. The `Blocked*`, `Banned` and `Malformed`
/// reasons are the `reason` field of `drop` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// No rule matched; the configured default policy applied.
    Default,
    /// Loopback traffic, always accepted.
    Loopback,
    /// The peer address is on the allowlist.
    AllowIp,
    /// The destination port is on the allowlist.
    AllowPort,
    /// The protocol is on the allowlist.
    AllowProtocol,
    /// A composite `allow` rule matched.
    AllowRule,
    BlockedIp,
    BlockedPort,
    BlockedProtocol,
    BlockedDomain,
    /// The peer is banned (scan detected, or banned by hand).
    Banned,
    /// The packet could not be decoded; the `malformed` policy applied.
    Malformed,
}

impl Reason {
    pub const ALL: [Reason; 12] = [
        Reason::Default,
        Reason::Loopback,
        Reason::AllowIp,
        Reason::AllowPort,
        Reason::AllowProtocol,
        Reason::AllowRule,
        Reason::BlockedIp,
        Reason::BlockedPort,
        Reason::BlockedProtocol,
        Reason::BlockedDomain,
        Reason::Banned,
        Reason::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Loopback => "loopback",
            Self::AllowIp => "allow_ip",
            Self::AllowPort => "allow_port",
            Self::AllowProtocol => "allow_protocol",
            Self::AllowRule => "allow_rule",
            Self::BlockedIp => "blocked_ip",
            Self::BlockedPort => "blocked_port",
            Self::BlockedProtocol => "blocked_protocol",
            Self::BlockedDomain => "blocked_domain",
            Self::Banned => "banned",
            Self::Malformed => "malformed",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which rule-list entry decided a verdict: a list (the `block.ip` array, a
/// blocklist file, a composite rule...) and an entry in it (array index, or
/// line number for files). Rendered to text only when an event is written,
/// by `RuleSet::describe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub list: u16,
    pub entry: u32,
}

/// The verdict for one packet and what decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub reason: Reason,
    pub rule: Option<RuleRef>,
}

impl Verdict {
    pub const fn accept(reason: Reason, rule: Option<RuleRef>) -> Self {
        Self {
            action: Action::Accept,
            reason,
            rule,
        }
    }

    pub const fn drop(reason: Reason, rule: Option<RuleRef>) -> Self {
        Self {
            action: Action::Drop,
            reason,
            rule,
        }
    }
}

/// The shape of a packet that may be a scan probe, classified on the packet
/// path from TCP flags and options (cheap: no state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeShape {
    /// SYN with at most the MSS option: a raw-socket half-open probe
    /// (`nmap -sS`).
    SynRaw,
    /// SYN with the option set an OS `connect()` sends (`nmap -sT`, or any
    /// ordinary client).
    SynOs,
    /// FIN alone (`nmap -sF`).
    Fin,
    /// No flags (`nmap -sN`).
    Null,
    /// FIN+PSH+URG (`nmap -sX`).
    Xmas,
    /// ACK alone with no payload (`nmap -sA`, or an ordinary ACK of a flow
    /// that began before we saw it).
    BareAck,
    /// A UDP datagram.
    Udp,
}

impl ProbeShape {
    /// Classifies a decoded packet; `None` for packets that are never
    /// probes (data segments, RST, SYN-ACK, ICMP, fragments without ports).
    pub fn classify(p: &PacketSummary) -> Option<Self> {
        use portcullis_wire::TcpFlags as F;
        p.dst_port?;
        match p.proto {
            IpProto::Udp => Some(Self::Udp),
            IpProto::Tcp => match p.tcp_flags.core() {
                F::SYN if p.tcp_options_len <= 4 => Some(Self::SynRaw),
                F::SYN => Some(Self::SynOs),
                F::FIN => Some(Self::Fin),
                0 => Some(Self::Null),
                x if x == F::FIN | F::PSH | F::URG => Some(Self::Xmas),
                // By the length on the wire: a data segment whose payload a
                // snap length cut away is not a bare ACK.
                F::ACK if p.wire_payload_len() == 0 => Some(Self::BareAck),
                _ => None,
            },
            _ => None,
        }
    }
}

/// What the packet path hands to the scan detector: 48 bytes, no heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub ts: Timestamp,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub shape: ProbeShape,
    pub dir: Direction,
    /// The source is allowlisted: report a scan, never ban it.
    pub allowlisted: bool,
}
