//! The compiled rule set: what the `block`, `allow` and `rules` sections of
//! the rules file become, laid out for lookups on the packet path.
//!
//! Guarantees:
//! - **A `RuleSet` is valid by construction.** Only the config compiler
//!   (`crate::config`) builds one, and only from a file without errors;
//!   [`RuleSet::empty`] is the other way in.
//! - **Lookups are bounded and allocation-free.** Addresses: longest-prefix
//!   match in a flattened interval table with a /16 index, 1-3 dependent
//!   loads whatever the list size (module `ip`, which compares it with
//!   `prefix_trie`). Ports: a bitmap and a 65,536-slot index. Protocols: a
//!   256-slot table. Domains: one hash probe per label (module `domains`).
//!   Composite `rules` are the only linear part: they are tried in file
//!   order.
//! - **A non-first fragment never matches a port entry**, allow or block:
//!   it has no `dst_port` ([`PacketSummary::dst_port`] is `None`).
//!
//! Every verdict names the entry that decided it as a [`RuleRef`]: a list id
//! (stable for a given file: see [`list_id`]) and an entry (array index, or
//! 1-based line number in a domain list file). [`RuleSet::describe`] turns
//! it into text when an event is written.

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use portcullis_wire::dns::Name;
use portcullis_wire::{IpProto, PacketSummary};

use crate::types::{Action, Direction, Reason, RuleRef, Verdict};

pub(crate) mod domains;
pub(crate) mod ip;
pub(crate) mod ports;

use domains::{DomainTable, Side};
use ip::IpTable;
use ports::{PortSet, PortTable, ProtoSet, ProtoTable};

/// The list ids in [`RuleRef::list`]. The fixed lists have fixed ids; each
/// domain list file gets the next id from [`list_id::FIRST_DOMAIN_LIST`] on,
/// `block.domain_lists` first, then `allow.domain_lists`, in file order.
pub mod list_id {
    pub const BLOCK_IP: u16 = 0;
    pub const BLOCK_PORT: u16 = 1;
    pub const BLOCK_PROTOCOL: u16 = 2;
    pub const BLOCK_DOMAIN: u16 = 3;
    pub const ALLOW_IP: u16 = 4;
    pub const ALLOW_PORT: u16 = 5;
    pub const ALLOW_PROTOCOL: u16 = 6;
    pub const ALLOW_DOMAIN: u16 = 7;
    /// The composite `rules` array; the entry is the rule's index.
    pub const RULES: u16 = 8;
    /// Addresses the daemon protects on its own (the SSH client that
    /// started it: see [`RuleSet::protect`](super::RuleSet::protect)).
    /// They are matched as part of `allow.ip`, after the file's entries.
    pub const PROTECTED: u16 = 9;
    /// The first domain list file.
    pub const FIRST_DOMAIN_LIST: u16 = 16;
    /// Ids stop below this (`u16::MAX` marks "none" inside the tables).
    pub const LIMIT: u16 = u16::MAX;
}

/// What the domain lists say about a DNS name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainMatch {
    /// Listed on neither side.
    None,
    /// On `allow.domain`, an allow list, or a `@@` exception: never blocked.
    Allowed(RuleRef),
    /// On `block.domain` or a block list, and not allowed.
    Blocked(RuleRef),
}

/// What a list's entries were, for [`RuleSet::describe`].
#[derive(Debug, Clone)]
enum Entries {
    Ips(Vec<IpNet>),
    Ports(Vec<(u16, u16)>),
    Protocols(Vec<u8>),
    Names(Vec<String>),
    /// A domain list file: entries are its line numbers.
    File(FileInfo),
    /// The `rules` array, as written (for `describe` and `explain`).
    Rules(Vec<RuleSpec>),
}

#[derive(Debug, Clone, Default)]
struct FileInfo {
    path: String,
    allow_side: bool,
    counts: ListFileCounts,
}

/// What parsing one domain list file found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFileCounts {
    /// Names taken (on the list's own side), duplicates included.
    pub names: usize,
    /// `@@||name^` exceptions taken to the allow side.
    pub exceptions: usize,
    /// Lines that were neither a name, a comment nor blank.
    pub skipped_lines: usize,
    /// The first few skipped line numbers (1-based), for `portcullis check`.
    pub first_skipped: Vec<u32>,
}

#[derive(Debug, Clone)]
struct ListInfo {
    /// `block.ip`, `block.domain_lists[0]`, `rules`.
    name: String,
    entries: Entries,
}

/// One composite rule, compiled.
#[derive(Debug, Clone)]
struct CompiledRule {
    /// Index in the `rules` array.
    index: u32,
    direction: Option<Direction>,
    ips: Option<IpTable>,
    ports: Option<PortSet>,
    protocols: Option<ProtoSet>,
    reason: Reason,
}

impl CompiledRule {
    #[inline]
    fn matches(&self, p: &PacketSummary, dir: Direction, port: Option<u16>, proto: u8) -> bool {
        if self.direction.is_some_and(|d| d != dir) {
            return false;
        }
        if let Some(ps) = &self.protocols {
            if !ps.contains(proto) {
                return false;
            }
        }
        if let Some(set) = &self.ports {
            match port {
                Some(port) if set.contains(port) => {}
                _ => return false,
            }
        }
        if let Some(ips) = &self.ips {
            let (a, b) = peers(p, dir);
            if ips.lookup(a).is_none() && b.and_then(|b| ips.lookup(b)).is_none() {
                return false;
            }
        }
        true
    }
}

/// The compiled rule set. See the module docs. Its `Debug` shows
/// [`RuleSet::stats`], not every entry.
#[derive(Clone)]
pub struct RuleSet {
    lists: Vec<ListInfo>,
    allow_ip: IpTable,
    block_ip: IpTable,
    allow_port: PortTable,
    block_port: PortTable,
    allow_proto: ProtoTable,
    block_proto: ProtoTable,
    allow_rules: Vec<CompiledRule>,
    block_rules: Vec<CompiledRule>,
    domains: DomainTable,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for RuleSet {
    fn default() -> Self {
        Self::empty()
    }
}

/// The addresses a packet's peer checks look at: the source of inbound
/// packets, the destination of outbound ones, both ends of forwarded ones.
#[inline]
fn peers(p: &PacketSummary, dir: Direction) -> (IpAddr, Option<IpAddr>) {
    match dir {
        Direction::Inbound => (p.src, None),
        Direction::Outbound => (p.dst, None),
        Direction::Forwarded => (p.src, Some(p.dst)),
    }
}

/// The destination port, for TCP and UDP only (`None` for a non-first
/// fragment, which carries no port).
#[inline]
fn tcp_udp_port(p: &PacketSummary) -> Option<u16> {
    match p.proto {
        IpProto::Tcp | IpProto::Udp => p.dst_port,
        _ => None,
    }
}

impl RuleSet {
    /// No rules at all: every packet gets the default policy (loopback is
    /// still accepted by [`RuleSet::allowed_peer`]).
    pub fn empty() -> Self {
        let fixed = |name: &str, entries: Entries| ListInfo {
            name: name.to_string(),
            entries,
        };
        let mut lists = vec![
            fixed("block.ip", Entries::Ips(Vec::new())),
            fixed("block.port", Entries::Ports(Vec::new())),
            fixed("block.protocol", Entries::Protocols(Vec::new())),
            fixed("block.domain", Entries::Names(Vec::new())),
            fixed("allow.ip", Entries::Ips(Vec::new())),
            fixed("allow.port", Entries::Ports(Vec::new())),
            fixed("allow.protocol", Entries::Protocols(Vec::new())),
            fixed("allow.domain", Entries::Names(Vec::new())),
            fixed("rules", Entries::Rules(Vec::new())),
            fixed("protected", Entries::Ips(Vec::new())),
        ];
        while lists.len() < usize::from(list_id::FIRST_DOMAIN_LIST) {
            lists.push(fixed("(unused)", Entries::Names(Vec::new())));
        }
        Self {
            lists,
            allow_ip: IpTable::default(),
            block_ip: IpTable::default(),
            allow_port: PortTable::default(),
            block_port: PortTable::default(),
            allow_proto: ProtoTable::default(),
            block_proto: ProtoTable::default(),
            allow_rules: Vec::new(),
            block_rules: Vec::new(),
            domains: DomainTable::default(),
        }
    }

    /// Tier 1 — the address allowlist always wins: `Some(accept)` if any
    /// peer address is loopback (127.0.0.0/8, ::1; reason `Loopback`) or on
    /// `allow.ip` (reason `AllowIp`, with its [`RuleRef`]). Peers: inbound,
    /// the source; outbound, the destination; forwarded, both.
    #[inline]
    pub fn allowed_peer(&self, p: &PacketSummary, dir: Direction) -> Option<Verdict> {
        let (a, b) = peers(p, dir);
        if a.is_loopback() || b.is_some_and(|b| b.is_loopback()) {
            return Some(Verdict::accept(Reason::Loopback, None));
        }
        let entry = self
            .allow_ip
            .lookup(a)
            .or_else(|| b.and_then(|b| self.allow_ip.lookup(b)))?;
        Some(Verdict::accept(
            Reason::AllowIp,
            Some(RuleRef {
                list: list_id::ALLOW_IP,
                entry,
            }),
        ))
    }

    /// True if this address may never be banned (loopback or `allow.ip`).
    pub fn is_allowlisted(&self, addr: IpAddr) -> bool {
        addr.is_loopback() || self.allow_ip.lookup(addr).is_some()
    }

    /// The `allow.ip` (or protected) entry covering `addr`, if any.
    pub fn allowlisted_by(&self, addr: IpAddr) -> Option<RuleRef> {
        self.allow_ip.lookup(addr).map(|entry| RuleRef {
            list: list_id::ALLOW_IP,
            entry,
        })
    }

    /// DNS name decision: `allow.domain` (and `@@` exceptions) wins over
    /// `block.domain`. A name matches an entry equal to it or to any parent.
    #[inline]
    pub fn match_domain(&self, name: &Name) -> DomainMatch {
        self.domains.lookup(name.as_bytes())
    }

    /// Tiers after bans and DNS (the engine handles those):
    /// (a) `allow.port`, `allow.protocol`, then allow rules in file order:
    ///     accept (`AllowPort`, `AllowProtocol`, `AllowRule`);
    /// (b) `block.ip` (peer addresses as in [`RuleSet::allowed_peer`]),
    ///     `block.port`, `block.protocol`, then block rules in file order:
    ///     drop (`BlockedIp`, `BlockedPort`, `BlockedProtocol`; a block rule
    ///     gives `BlockedIp` if it has `ip`, else `BlockedPort` if it has
    ///     `port`, else `BlockedProtocol`);
    /// (c) otherwise `default` (reason `Default`, no rule).
    ///
    /// Port entries match only TCP and UDP packets that carry a destination
    /// port: a non-first fragment never matches one, allow or block.
    #[inline]
    pub fn evaluate(&self, p: &PacketSummary, dir: Direction, default: Action) -> Verdict {
        let port = tcp_udp_port(p);
        let proto = p.proto.number();
        let rule = |list: u16, entry: u32| Some(RuleRef { list, entry });

        // (a) allow
        if let Some(e) = port.and_then(|port| self.allow_port.lookup(port)) {
            return Verdict::accept(Reason::AllowPort, rule(list_id::ALLOW_PORT, e));
        }
        if let Some(e) = self.allow_proto.lookup(proto) {
            return Verdict::accept(Reason::AllowProtocol, rule(list_id::ALLOW_PROTOCOL, e));
        }
        for r in &self.allow_rules {
            if r.matches(p, dir, port, proto) {
                return Verdict::accept(r.reason, rule(list_id::RULES, r.index));
            }
        }

        // (b) block
        if !self.block_ip.is_empty() {
            let (a, b) = peers(p, dir);
            if let Some(e) = self
                .block_ip
                .lookup(a)
                .or_else(|| b.and_then(|b| self.block_ip.lookup(b)))
            {
                return Verdict::drop(Reason::BlockedIp, rule(list_id::BLOCK_IP, e));
            }
        }
        if let Some(e) = port.and_then(|port| self.block_port.lookup(port)) {
            return Verdict::drop(Reason::BlockedPort, rule(list_id::BLOCK_PORT, e));
        }
        if let Some(e) = self.block_proto.lookup(proto) {
            return Verdict::drop(Reason::BlockedProtocol, rule(list_id::BLOCK_PROTOCOL, e));
        }
        for r in &self.block_rules {
            if r.matches(p, dir, port, proto) {
                return Verdict::drop(r.reason, rule(list_id::RULES, r.index));
            }
        }

        // (c) default
        Verdict {
            action: default,
            reason: Reason::Default,
            rule: None,
        }
    }

    /// Human text for a [`RuleRef`]: `block.ip[3] 10.0.0.0/8`,
    /// `block.domain_lists[0] lists/hosts.txt:1234`,
    /// `rules[2] (no ssh from the lab)`.
    pub fn describe(&self, r: RuleRef) -> String {
        let Some(list) = self.lists.get(usize::from(r.list)) else {
            return format!("list {} entry {}", r.list, r.entry);
        };
        let i = r.entry as usize;
        let name = &list.name;
        match &list.entries {
            Entries::Ips(v) => match v.get(i) {
                Some(net) => format!("{name}[{i}] {}", HostOrNet(*net)),
                // Past the file's allow.ip entries: a protected address.
                None if r.list == list_id::ALLOW_IP => self.describe(RuleRef {
                    list: list_id::PROTECTED,
                    entry: (i - v.len()) as u32,
                }),
                None => format!("{name}[{i}]"),
            },
            Entries::Ports(v) => match v.get(i) {
                Some(&(lo, hi)) if lo == hi => format!("{name}[{i}] {lo}"),
                Some(&(lo, hi)) => format!("{name}[{i}] {lo}-{hi}"),
                None => format!("{name}[{i}]"),
            },
            Entries::Protocols(v) => match v.get(i) {
                Some(&n) => format!("{name}[{i}] {}", IpProto::from_number(n).name()),
                None => format!("{name}[{i}]"),
            },
            Entries::Names(v) => match v.get(i) {
                Some(n) => format!("{name}[{i}] {n}"),
                None => format!("{name}[{i}]"),
            },
            Entries::File(f) => format!("{name} {}:{}", f.path, r.entry),
            Entries::Rules(v) => match v.get(i).and_then(|r| r.comment.as_ref()) {
                Some(comment) => format!("{name}[{i}] ({comment})"),
                _ => format!("{name}[{i}]"),
            },
        }
    }

    /// The name of list `id` (`block.ip`, `rules`, `block.domain_lists[0]`).
    pub(crate) fn list_name(&self, id: u16) -> &str {
        self.lists
            .get(usize::from(id))
            .map_or("(unknown list)", |l| l.name.as_str())
    }

    /// The prefixes of an address list (`block.ip`, `allow.ip`) as written,
    /// duplicates and overlaps kept; empty for any other list.
    pub(crate) fn ip_entries(&self, id: u16) -> &[IpNet] {
        match self.lists.get(usize::from(id)).map(|l| &l.entries) {
            Some(Entries::Ips(v)) => v,
            _ => &[],
        }
    }

    /// The ranges of a port list as written; empty for any other list.
    pub(crate) fn port_entries(&self, id: u16) -> &[(u16, u16)] {
        match self.lists.get(usize::from(id)).map(|l| &l.entries) {
            Some(Entries::Ports(v)) => v,
            _ => &[],
        }
    }

    /// The numbers of a protocol list as written; empty for any other list.
    pub(crate) fn protocol_entries(&self, id: u16) -> &[u8] {
        match self.lists.get(usize::from(id)).map(|l| &l.entries) {
            Some(Entries::Protocols(v)) => v,
            _ => &[],
        }
    }

    /// The composite rules as written, in file order (index = `rules[i]`).
    pub(crate) fn rule_specs(&self) -> &[RuleSpec] {
        match self
            .lists
            .get(usize::from(list_id::RULES))
            .map(|l| &l.entries)
        {
            Some(Entries::Rules(v)) => v,
            _ => &[],
        }
    }

    /// The `allow.ip` entry the packet path names for `addr` (longest
    /// prefix; of equal prefixes, the first in the file).
    pub(crate) fn allow_ip_entry(&self, addr: IpAddr) -> Option<u32> {
        self.allow_ip.lookup(addr)
    }

    /// The `block.ip` entry the packet path names for `addr`.
    pub(crate) fn block_ip_entry(&self, addr: IpAddr) -> Option<u32> {
        self.block_ip.lookup(addr)
    }

    /// Whether any name is on the block side (a DNS query can be refused).
    pub(crate) fn blocks_domains(&self) -> bool {
        self.domains.block_count() > 0
    }

    /// The plain lists, as the kernel rules layer (`portcullis-kernel`)
    /// loads them into nftables sets: prefixes by family and port ranges in
    /// file order (duplicates and overlaps kept: the caller merges),
    /// protocol numbers, and what only user space can decide (composite
    /// rules, domain names).
    pub fn export(&self) -> RuleExport {
        let list = |id: u16| self.lists.get(usize::from(id)).map(|l| &l.entries);
        let ips = |id: u16| -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
            let mut v4 = Vec::new();
            let mut v6 = Vec::new();
            if let Some(Entries::Ips(nets)) = list(id) {
                for net in nets {
                    match *net {
                        IpNet::V4(n) => v4.push(n),
                        IpNet::V6(n) => v6.push(n),
                    }
                }
            }
            (v4, v6)
        };
        let ports = |id: u16| match list(id) {
            Some(Entries::Ports(v)) => v.clone(),
            _ => Vec::new(),
        };
        let protocols = |id: u16| match list(id) {
            Some(Entries::Protocols(v)) => v.clone(),
            _ => Vec::new(),
        };
        let (mut allow_v4, mut allow_v6) = ips(list_id::ALLOW_IP);
        let (protected_v4, protected_v6) = ips(list_id::PROTECTED);
        allow_v4.extend(protected_v4);
        allow_v6.extend(protected_v6);
        let (block_v4, block_v6) = ips(list_id::BLOCK_IP);
        RuleExport {
            allow_v4,
            allow_v6,
            block_v4,
            block_v6,
            allow_ports: ports(list_id::ALLOW_PORT),
            block_ports: ports(list_id::BLOCK_PORT),
            allow_protocols: protocols(list_id::ALLOW_PROTOCOL),
            block_protocols: protocols(list_id::BLOCK_PROTOCOL),
            rules: self.allow_rules.len() + self.block_rules.len(),
            allow_rules: self.allow_rules.len(),
            outbound_rules: self
                .allow_rules
                .iter()
                .chain(&self.block_rules)
                .any(|r| matches!(r.direction, None | Some(Direction::Outbound))),
            has_domains: self.domains.len() > 0,
        }
    }

    /// Never blocks nor bans `nets` (the daemon protects the SSH client
    /// that started it): they join `allow.ip`, after the file's entries,
    /// and are described as `protected[i]`. The kernel's allow sets get
    /// them too ([`RuleSet::export`]).
    pub fn protect(&mut self, nets: &[IpNet]) {
        if nets.is_empty() {
            return;
        }
        let entries = |s: &Self, id: u16| match s.lists.get(usize::from(id)).map(|l| &l.entries) {
            Some(Entries::Ips(v)) => v.clone(),
            _ => Vec::new(),
        };
        let mut protected = entries(self, list_id::PROTECTED);
        protected.extend_from_slice(nets);
        let mut all = entries(self, list_id::ALLOW_IP);
        all.extend_from_slice(&protected);
        self.allow_ip = IpTable::from_nets(all);
        if let Some(l) = self.lists.get_mut(usize::from(list_id::PROTECTED)) {
            l.entries = Entries::Ips(protected);
        }
    }

    /// Counts for `portcullis check`.
    pub fn stats(&self) -> RuleStats {
        let side = |ip: &IpTable, port: &PortTable, proto: &ProtoTable, domains: usize| SideStats {
            ipv4_prefixes: ip.len_v4(),
            ipv6_prefixes: ip.len_v6(),
            port_ranges: port.ranges(),
            protocols: proto.len(),
            domains,
        };
        let domain_lists = self
            .lists
            .iter()
            .enumerate()
            .filter_map(|(id, l)| match &l.entries {
                Entries::File(f) => Some(DomainListStats {
                    list: u16::try_from(id).unwrap_or(u16::MAX),
                    name: l.name.clone(),
                    path: f.path.clone(),
                    allow: f.allow_side,
                    counts: f.counts.clone(),
                }),
                _ => None,
            })
            .collect();
        let rule_mem: usize = self
            .allow_rules
            .iter()
            .chain(&self.block_rules)
            .map(|r| {
                std::mem::size_of::<CompiledRule>()
                    + r.ips.as_ref().map_or(0, IpTable::mem_size)
                    + r.ports.as_ref().map_or(0, |p| p.len() * 4)
            })
            .sum();
        RuleStats {
            block: side(
                &self.block_ip,
                &self.block_port,
                &self.block_proto,
                self.domains.block_count(),
            ),
            allow: side(
                &self.allow_ip,
                &self.allow_port,
                &self.allow_proto,
                self.domains.allow_count(),
            ),
            block_rules: self.block_rules.len(),
            allow_rules: self.allow_rules.len(),
            distinct_domains: self.domains.len(),
            domain_lists,
            ip_table_bytes: self.allow_ip.mem_size() + self.block_ip.mem_size(),
            port_table_bytes: self.allow_port.mem_size() + self.block_port.mem_size(),
            domain_table_bytes: self.domains.mem_size(),
            rule_bytes: rule_mem,
        }
    }
}

/// The plain lists of a [`RuleSet`], for the kernel rules layer
/// ([`RuleSet::export`]). Prefixes and ranges are as written (file order,
/// duplicates and overlaps kept); IPv4-mapped IPv6 prefixes stay IPv6.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleExport {
    /// `allow.ip`, IPv4 entries.
    pub allow_v4: Vec<Ipv4Net>,
    /// `allow.ip`, IPv6 entries.
    pub allow_v6: Vec<Ipv6Net>,
    /// `block.ip`, IPv4 entries.
    pub block_v4: Vec<Ipv4Net>,
    /// `block.ip`, IPv6 entries.
    pub block_v6: Vec<Ipv6Net>,
    /// `allow.port`: TCP and UDP destination port ranges, both ends included.
    pub allow_ports: Vec<(u16, u16)>,
    /// `block.port`.
    pub block_ports: Vec<(u16, u16)>,
    /// `allow.protocol`: IP protocol numbers.
    pub allow_protocols: Vec<u8>,
    /// `block.protocol`.
    pub block_protocols: Vec<u8>,
    /// Number of composite `rules` (allow and block).
    pub rules: usize,
    /// Number of composite allow rules. They come before the block lists
    /// (tier 4 before tier 5): a packet a block list matches may still be
    /// accepted by one.
    pub allow_rules: usize,
    /// Whether some composite rule can match outbound packets (direction
    /// `outbound` or `any`).
    pub outbound_rules: bool,
    /// Whether any domain name is listed, on either side.
    pub has_domains: bool,
}

/// `10.0.0.1` for a host prefix, `10.0.0.0/8` otherwise.
struct HostOrNet(IpNet);

impl fmt::Display for HostOrNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

/// Entries on one side (`block` or `allow`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SideStats {
    /// Distinct IPv4 prefixes (host addresses count as /32).
    pub ipv4_prefixes: usize,
    /// Distinct IPv6 prefixes.
    pub ipv6_prefixes: usize,
    /// Port entries (a number or a range each).
    pub port_ranges: usize,
    /// Distinct protocol numbers.
    pub protocols: usize,
    /// Distinct names, from `domain` and every list file on this side
    /// (`@@` exceptions count on the allow side).
    pub domains: usize,
}

/// One domain list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainListStats {
    /// Its id in [`RuleRef::list`].
    pub list: u16,
    /// `block.domain_lists[0]`.
    pub name: String,
    /// The path as written in the rules file.
    pub path: String,
    /// Whether it is an allow list.
    pub allow: bool,
    pub counts: ListFileCounts,
}

/// Counts for `portcullis check` (see [`RuleSet::stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleStats {
    pub block: SideStats,
    pub allow: SideStats,
    pub block_rules: usize,
    pub allow_rules: usize,
    /// Distinct names in the domain table, both sides.
    pub distinct_domains: usize,
    pub domain_lists: Vec<DomainListStats>,
    /// Heap bytes of the address tries.
    pub ip_table_bytes: usize,
    /// Heap bytes of the port tables.
    pub port_table_bytes: usize,
    /// Heap bytes of the domain table.
    pub domain_table_bytes: usize,
    /// Bytes of the composite rules.
    pub rule_bytes: usize,
}

impl fmt::Display for RuleStats {
    /// Several lines, for `portcullis check`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, s) in [("block", &self.block), ("allow", &self.allow)] {
            writeln!(
                f,
                "{name}: {} IPv4 prefixes, {} IPv6 prefixes, {} port entries, {} protocols, {} domains",
                s.ipv4_prefixes, s.ipv6_prefixes, s.port_ranges, s.protocols, s.domains
            )?;
        }
        writeln!(
            f,
            "rules: {} block, {} allow",
            self.block_rules, self.allow_rules
        )?;
        for l in &self.domain_lists {
            write!(
                f,
                "{} {}: {} names, {} exceptions, {} lines skipped",
                l.name, l.path, l.counts.names, l.counts.exceptions, l.counts.skipped_lines
            )?;
            if !l.counts.first_skipped.is_empty() {
                let lines: Vec<String> =
                    l.counts.first_skipped.iter().map(u32::to_string).collect();
                write!(f, " (first at lines {})", lines.join(", "))?;
            }
            writeln!(f)?;
        }
        write!(
            f,
            "memory: {} KiB domain table ({} distinct names), {} KiB address tries, {} KiB port tables",
            self.domain_table_bytes / 1024,
            self.distinct_domains,
            self.ip_table_bytes / 1024,
            self.port_table_bytes / 1024
        )
    }
}

/// The entries of one side, already parsed; indices are the JSON array
/// indices.
#[derive(Debug, Clone, Default)]
pub(crate) struct SideSpec {
    pub(crate) ips: Vec<IpNet>,
    pub(crate) ports: Vec<(u16, u16)>,
    pub(crate) protocols: Vec<u8>,
    pub(crate) domains: Vec<String>,
}

/// One composite rule, already parsed.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleSpec {
    pub(crate) allow: bool,
    pub(crate) direction: Option<Direction>,
    pub(crate) ips: Option<Vec<IpNet>>,
    pub(crate) ports: Option<Vec<(u16, u16)>>,
    pub(crate) protocols: Option<Vec<u8>>,
    pub(crate) comment: Option<String>,
}

/// Builds a [`RuleSet`]; used by the config compiler only, after every
/// entry has been parsed and checked.
#[derive(Debug)]
pub(crate) struct RuleSetBuilder {
    set: RuleSet,
    rule_specs: Vec<RuleSpec>,
}

impl RuleSetBuilder {
    pub(crate) fn new() -> Self {
        Self {
            set: RuleSet::empty(),
            rule_specs: Vec::new(),
        }
    }

    /// Adds one side's inline entries. Fails only if the domain table is
    /// full (4 GiB of names).
    pub(crate) fn side(&mut self, block: bool, spec: SideSpec) -> Result<(), String> {
        let s = &mut self.set;
        let (ip, port, proto, ids) = if block {
            (
                &mut s.block_ip,
                &mut s.block_port,
                &mut s.block_proto,
                [
                    list_id::BLOCK_IP,
                    list_id::BLOCK_PORT,
                    list_id::BLOCK_PROTOCOL,
                    list_id::BLOCK_DOMAIN,
                ],
            )
        } else {
            (
                &mut s.allow_ip,
                &mut s.allow_port,
                &mut s.allow_proto,
                [
                    list_id::ALLOW_IP,
                    list_id::ALLOW_PORT,
                    list_id::ALLOW_PROTOCOL,
                    list_id::ALLOW_DOMAIN,
                ],
            )
        };
        *ip = IpTable::from_nets(spec.ips.iter().copied());
        for (i, &(lo, hi)) in spec.ports.iter().enumerate() {
            port.insert(lo, hi, i as u32);
        }
        for (i, &n) in spec.protocols.iter().enumerate() {
            proto.insert(n, i as u32);
        }
        let side = if block { Side::Block } else { Side::Allow };
        for (i, name) in spec.domains.iter().enumerate() {
            let r = RuleRef {
                list: ids[3],
                entry: i as u32,
            };
            s.domains
                .insert(name.as_bytes(), side, r)
                .map_err(|_| "too many domain names (the table holds up to 4 GiB of names)")?;
        }
        let [ip_id, port_id, proto_id, domain_id] = ids.map(usize::from);
        s.lists[ip_id].entries = Entries::Ips(spec.ips);
        s.lists[port_id].entries = Entries::Ports(spec.ports);
        s.lists[proto_id].entries = Entries::Protocols(spec.protocols);
        s.lists[domain_id].entries = Entries::Names(spec.domains);
        Ok(())
    }

    /// Adds the next composite rule (call in file order).
    pub(crate) fn rule(&mut self, spec: RuleSpec) {
        let index = self.rule_specs.len() as u32;
        let reason = if spec.allow {
            Reason::AllowRule
        } else if spec.ips.is_some() {
            Reason::BlockedIp
        } else if spec.ports.is_some() {
            Reason::BlockedPort
        } else {
            Reason::BlockedProtocol
        };
        let compiled = CompiledRule {
            index,
            direction: spec.direction,
            ips: spec.ips.clone().map(IpTable::from_nets),
            ports: spec.ports.clone().map(PortSet::from_ranges),
            protocols: spec.protocols.as_ref().map(|v| {
                let mut s = ProtoSet::default();
                v.iter().for_each(|&n| s.insert(n));
                s
            }),
            reason,
        };
        if spec.allow {
            self.set.allow_rules.push(compiled);
        } else {
            self.set.block_rules.push(compiled);
        }
        self.rule_specs.push(spec);
    }

    /// Registers a domain list file; returns its list id.
    pub(crate) fn domain_list(
        &mut self,
        name: String,
        path: String,
        allow: bool,
    ) -> Result<u16, String> {
        let id = u16::try_from(self.set.lists.len())
            .ok()
            .filter(|&id| id < list_id::LIMIT)
            .ok_or("too many domain list files")?;
        self.set.lists.push(ListInfo {
            name,
            entries: Entries::File(FileInfo {
                path,
                allow_side: allow,
                counts: ListFileCounts::default(),
            }),
        });
        Ok(id)
    }

    /// Records what parsing list `id` found.
    pub(crate) fn list_counts(&mut self, id: u16, counts: ListFileCounts) {
        if let Some(ListInfo {
            entries: Entries::File(f),
            ..
        }) = self.set.lists.get_mut(usize::from(id))
        {
            f.counts = counts;
        }
    }

    /// The domain table, for list files to fill.
    pub(crate) fn domains(&mut self) -> &mut DomainTable {
        &mut self.set.domains
    }

    pub(crate) fn build(mut self) -> RuleSet {
        let specs = std::mem::take(&mut self.rule_specs);
        if let Some(l) = self.set.lists.get_mut(usize::from(list_id::RULES)) {
            l.entries = Entries::Rules(specs);
        }
        self.set.domains.shrink();
        self.set
    }
}

#[cfg(test)]
mod tests;
