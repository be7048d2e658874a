//! Small value types shared by the rules, the detector, the events and the
//! engine. Everything here is `Copy` and cheap: it travels with each packet.

use std::fmt;
use std::net::IpAddr;

use portcullis_wire::{IpProto, PacketSummary};

/// Shared with the packet sources, which do not depend on the engine.
pub use portcullis_wire::{Direction, Timestamp};

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
/// path from the protocol, TCP flags and options (cheap: no state).
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
    /// ACK alone with no payload (`nmap -sA`, `-sW`, or an ordinary ACK
    /// of a flow that began before we saw it).
    BareAck,
    /// FIN+ACK with no payload (`nmap -sM`, or an ordinary close of a flow
    /// that began before we saw it).
    Maimon,
    /// A combination of TCP flags no stack sends to open, carry or close a
    /// connection (`nmap --scanflags`): the flags byte.
    Other(u8),
    /// A UDP datagram.
    Udp,
    /// An SCTP INIT (`nmap -sY`).
    Sctp,
    /// An ICMP or ICMPv6 request that asks a host to answer: echo,
    /// timestamp, address mask (`nmap -sn -PE/-PP/-PM`); the ICMP type.
    Icmp(u8),
    /// A datagram of an IP protocol other than TCP, UDP, SCTP, ICMP and
    /// ICMPv6 (`nmap -sO`); the protocol number.
    Proto(u8),
}

impl ProbeShape {
    /// Classifies a decoded packet; `None` for packets that are never
    /// probes (data segments, answers such as RST, SYN-ACK or ICMP errors,
    /// fragments without ports) and for packets to multicast or broadcast
    /// addresses or from an unspecified one (nobody scans with those).
    pub fn classify(p: &PacketSummary) -> Option<Self> {
        use portcullis_wire::TcpFlags as F;
        if !unicast(p.src, p.dst) {
            return None;
        }
        if let portcullis_wire::Fragment::NonFirst { .. } = p.fragment {
            return None;
        }
        match p.proto {
            IpProto::Udp => p.dst_port.map(|_| Self::Udp),
            IpProto::Tcp => {
                p.dst_port?;
                let f = p.tcp_flags.core();
                // By the length on the wire: a data segment whose payload a
                // snap length cut away is not a bare ACK.
                let bare = p.wire_payload_len() == 0;
                Some(match f {
                    F::SYN if p.tcp_options_len <= 4 => Self::SynRaw,
                    F::SYN => Self::SynOs,
                    F::FIN => Self::Fin,
                    0 => Self::Null,
                    x if x == F::FIN | F::PSH | F::URG => Self::Xmas,
                    F::ACK if bare => Self::BareAck,
                    x if x == F::FIN | F::ACK && bare => Self::Maimon,
                    // Answers: SYN-ACK, RST, RST-ACK.
                    x if x == F::SYN | F::ACK || x == F::RST || x == F::RST | F::ACK => {
                        return None
                    }
                    // Opening with something besides SYN, or SYN/RST/FIN
                    // together: no stack does that.
                    x if x & F::SYN != 0 || x & F::RST != 0 || x & F::ACK == 0 => Self::Other(x),
                    // ACK with PSH/URG/FIN and maybe data: a flow's
                    // segments.
                    _ => return None,
                })
            }
            IpProto::Icmp => match p.icmp {
                // Echo, timestamp, address mask requests.
                Some((t @ (8 | 13 | 17), _)) => Some(Self::Icmp(t)),
                _ => None,
            },
            IpProto::Icmpv6 => match p.icmp {
                // Echo request.
                Some((t @ 128, _)) => Some(Self::Icmp(t)),
                _ => None,
            },
            IpProto::Other(132) => match p.sctp {
                Some(s) if s.chunk == portcullis_wire::Sctp::INIT => Some(Self::Sctp),
                _ => None,
            },
            // IPv6 "no next header" carries nothing to probe with.
            IpProto::Other(59) => None,
            IpProto::Other(n) => Some(Self::Proto(n)),
        }
    }

    /// The IP protocol number of this shape's packets (`v6`: an ICMPv6
    /// request).
    pub fn proto(self, v6: bool) -> u8 {
        match self {
            Self::Udp => 17,
            Self::Sctp => 132,
            Self::Icmp(_) if v6 => 58,
            Self::Icmp(_) => 1,
            Self::Proto(n) => n,
            _ => 6,
        }
    }

    /// What was probed, as a number for counting distinct targets: the
    /// destination port for TCP, UDP and SCTP, the ICMP type, or the
    /// protocol number, with the protocol in the upper bits so that TCP
    /// port 53 and UDP port 53 are two services.
    pub fn service(self, dst_port: u16) -> u32 {
        match self {
            Self::Icmp(t) => (1 << 16) | u32::from(t),
            Self::Proto(n) => u32::from(n),
            Self::Udp => (17 << 16) | u32::from(dst_port),
            Self::Sctp => (132 << 16) | u32::from(dst_port),
            _ => (6 << 16) | u32::from(dst_port),
        }
    }
}

/// Neither end is multicast or broadcast, and the source is specified.
fn unicast(src: IpAddr, dst: IpAddr) -> bool {
    let bad = |a: IpAddr| match a {
        IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast() || v4.is_unspecified(),
        IpAddr::V6(v6) => v6.is_multicast() || v6.is_unspecified(),
    };
    !bad(src) && !bad(dst)
}

/// When a probe counts toward a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CountOn {
    /// As soon as it is seen (its flow being new).
    Sight,
    /// Only when the target answers it negatively: a TCP RST, an ICMP
    /// destination unreachable, an SCTP ABORT. See the detector's docs.
    Failure,
}

/// What the packet path hands to the scan detector: small, no heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub ts: Timestamp,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Zero for ICMP and other protocols without ports.
    pub src_port: u16,
    /// Zero for ICMP and other protocols without ports.
    pub dst_port: u16,
    pub shape: ProbeShape,
    /// The source is inside `home_net` or is this host: a scan from it is
    /// reported with `scan.internal_action` (alert by default).
    pub internal: bool,
    pub count: CountOn,
    /// The source is allowlisted: report a scan, never ban it.
    pub allowlisted: bool,
}

/// A negative answer seen on the wire (TCP RST, ICMP destination
/// unreachable, SCTP ABORT), named by the flow of the probe it answers as
/// the prober sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub ts: Timestamp,
    /// Who sent the probe being answered.
    pub prober: IpAddr,
    /// Where the probe went.
    pub target: IpAddr,
    pub prober_port: u16,
    pub target_port: u16,
    /// IP protocol number of the probe.
    pub proto: u8,
}

/// What the packet path hands to the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    Probe(Probe),
    Answer(Answer),
    /// Packet time has reached this point (housekeeping: episodes end,
    /// state ages out) even if no probe came.
    Tick(Timestamp),
}

impl Observation {
    pub fn ts(&self) -> Timestamp {
        match self {
            Self::Probe(p) => p.ts,
            Self::Answer(a) => a.ts,
            Self::Tick(t) => *t,
        }
    }
}
