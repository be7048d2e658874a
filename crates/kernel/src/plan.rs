//! [`KernelPlan`]: what goes into the kernel, and the nft script for it.

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr};

use portcullis_engine::config::Config;
use portcullis_engine::rules::RuleExport;
use portcullis_engine::Action;

use crate::error::KernelError;
use crate::ranges::{self, port_element, v4_element, v6_element};

/// Our nftables table: `table inet portcullis`.
pub const TABLE: &str = "portcullis";
/// Priority of our base chains: before iptables' filter chains (0), after
/// conntrack (-200), so `ct state` is known and our drops come first.
pub const PRIORITY: i32 = -10;
/// Default mark bit for packets the allowlist (or loopback) accepted.
pub const DEFAULT_SKIP_MARK: u32 = 0x1000_0000;
/// Default mark bit for packets handed to user space.
pub const DEFAULT_QUEUE_MARK: u32 = 0x2000_0000;

/// The sets [`crate::Firewall::update`] replaces (every set but the bans).
pub(crate) const LIST_SETS: [&str; 11] = [
    "allow4",
    "allow6",
    "block4",
    "block6",
    "allow_tcp",
    "allow_udp",
    "block_tcp",
    "block_udp",
    "allow_proto",
    "block_proto",
    "queue_proto",
];

/// The chains of our table.
pub(crate) const CHAINS: [&str; 6] = [
    "input", "forward", "output", "allowed", "blocked", "to_user",
];

/// How queued packets reach user space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueuePath {
    /// Our chains end with nft's own `queue` statement (CONFIG_NFT_QUEUE).
    NftQueue,
    /// The kernel has no nft `queue` but takes xtables' `NFQUEUE` target in
    /// an `inet` table (nft_compat): `to_user` jumps to chain `nfqueue`,
    /// whose one rule (written over netlink, module `xtqueue`) queues.
    XtQueue,
    /// Neither: our chains mark the packet, and one
    /// rule of ours in iptables-nft's `security` INPUT/FORWARD/OUTPUT chains
    /// (IPv4 and IPv6) jumps to chain `PORTCULLIS`, whose NFQUEUE target
    /// queues marked packets.
    IptablesNfqueue,
}

impl fmt::Display for QueuePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NftQueue => "nftables `queue` statement",
            Self::XtQueue => "xt NFQUEUE target in our own table (this kernel has no nft `queue`)",
            Self::IptablesNfqueue => {
                "iptables NFQUEUE target on marked packets (this kernel has no nft `queue`)"
            }
        })
    }
}

/// How a plan is drawn on this kernel: what [`crate::Capabilities`] say
/// beyond the plan itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    /// How held packets reach user space.
    pub path: QueuePath,
    /// The ban sets count packets per element (`counter`).
    pub ban_counters: bool,
    /// A ban deletes its peer's conntrack entries
    /// ([`crate::Capabilities::conntrack_delete`]), so established packets
    /// are accepted without looking their peer up in the ban sets (and
    /// the CrowdSec sets): a banned peer's next packet is new again and
    /// meets the ban's `drop`.
    pub bans_end_flows: bool,
}

impl Shape {
    /// `path` with per-element ban counters, bans checked on established
    /// packets too: drawn on any kernel.
    pub fn of(path: QueuePath) -> Self {
        Self {
            path,
            ban_counters: true,
            bans_end_flows: false,
        }
    }
}

/// Settings that are not in the rules file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelOptions {
    /// Mark bit set on packets loopback or the allowlist accepted.
    /// Default [`DEFAULT_SKIP_MARK`].
    pub skip_mark: u32,
    /// Mark bit set on packets handed to user space (the iptables fallback
    /// queues exactly these). Default [`DEFAULT_QUEUE_MARK`].
    pub queue_mark: u32,
}

impl Default for KernelOptions {
    fn default() -> Self {
        Self {
            skip_mark: DEFAULT_SKIP_MARK,
            queue_mark: DEFAULT_QUEUE_MARK,
        }
    }
}

/// Everything the kernel holds for one configuration: set contents (merged,
/// ready to load) and the switches that shape the chains. Build it with
/// [`KernelPlan::from_config`] (or [`KernelPlan::from_export`]); the fields
/// are public so that callers and tests can adjust them.
///
/// Address ranges are inclusive `(first, last)` pairs, sorted, disjoint and
/// non-adjacent (see [`crate::ranges`]); so are port ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPlan {
    /// `allow.ip`, IPv4.
    pub allow4: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// `allow.ip`, IPv6.
    pub allow6: Vec<(Ipv6Addr, Ipv6Addr)>,
    /// `block.ip`, IPv4.
    pub block4: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// `block.ip`, IPv6.
    pub block6: Vec<(Ipv6Addr, Ipv6Addr)>,
    /// `allow.port` (sets `allow_tcp` and `allow_udp`).
    pub allow_ports: Vec<(u16, u16)>,
    /// `block.port` (sets `block_tcp` and `block_udp`).
    pub block_ports: Vec<(u16, u16)>,
    /// `allow.protocol`, sorted, distinct.
    pub allow_protocols: Vec<u8>,
    /// `block.protocol`, sorted, distinct.
    pub block_protocols: Vec<u8>,
    /// `inline.queue_all`: protocols whose every packet goes to user space
    /// (after loopback, the allowlist and bans), sorted, distinct.
    pub queue_all: Vec<u8>,
    /// NFQUEUE number (`inline.queue`).
    pub queue_num: u16,
    /// Queued packets pass while nobody listens (`bypass`). Default true;
    /// false with `inline.danger_fail_closed`.
    pub fail_open: bool,
    /// See [`KernelOptions::skip_mark`].
    pub skip_mark: u32,
    /// See [`KernelOptions::queue_mark`].
    pub queue_mark: u32,
    /// New connections to blocked addresses, ports or protocols handed to
    /// user space per second (to be logged), burst twice that; the rest are
    /// dropped in the kernel. 0: none are, all are dropped in the kernel.
    pub block_log_rate: u32,
    /// User space sees DNS queries (UDP and TCP destination port 53, every
    /// packet): needed for domain rules and `dns` events. Held when
    /// [`KernelPlan::hold_dns`] is set (or no NFLOG group exists), otherwise
    /// copied to the NFLOG group while the kernel's rules decide.
    pub queue_dns: bool,
    /// DNS queries wait for user space's verdict: domain rules exist (a
    /// blocked name is dropped and answered NXDOMAIN by user space). Without
    /// domain rules, `dns` events need only a copy of each query.
    pub hold_dns: bool,
    /// Queue new outbound connections (composite rules that can match
    /// outbound packets, or a default policy of drop). Without it the
    /// `output` chain queues only DNS and rate-limited blocked packets.
    pub queue_output_new: bool,
    /// Queue new packets of every protocol, not just TCP and UDP. Needed
    /// when user space can decide something about other protocols:
    /// composite rules or a default policy of drop. Otherwise the scan
    /// detector only looks at TCP and UDP, and user space would accept the
    /// rest anyway, so ICMP, IPv6 neighbour discovery and the like stay in
    /// the kernel.
    pub queue_new_all_protocols: bool,
    /// Hold new packets a block list matches for user space to decide
    /// instead of dropping them in the kernel: composite allow rules come
    /// before the block lists (docs/rules.md, "Precedence": tier 4 before
    /// tier 5), so one of them may accept such a packet, and only user
    /// space evaluates them. Set when the rules have an allow rule.
    pub hold_blocked_new: bool,
    /// Scan detection is on: besides new TCP and UDP flows, user space sees
    /// the other shapes of scan probes (ICMP echo, timestamp and
    /// address-mask requests, SCTP INITs, datagrams of other IP protocols),
    /// but not ICMP errors or neighbour discovery.
    pub queue_probes: bool,
    /// NFLOG group through which user space observes what the kernel
    /// decides (new connections, rate-limited blocked packets); `None`
    /// (`inline.danger_fail_closed`, where new connections must wait for
    /// the daemon): those are queued and held.
    pub log_group: Option<u16>,
    /// Elements the ban sets hold at most (`scan.max_bans`; the engine
    /// makes room before it adds one).
    pub max_bans: usize,
    /// Fleet mode (`crowdsec`): the CrowdSec decision sets
    /// ([`crate::crowdsec`]) exist, with this many elements at most, and
    /// drop right after our own bans. `None`: no such sets or rules.
    pub crowdsec: Option<usize>,
    /// Anything goes to user space. False for a passive daemon that only
    /// enforces bans ([`KernelPlan::bans_only`]): the chains stop after
    /// loopback, the allowlist and the ban sets, and no NFQUEUE rule exists.
    pub user_space: bool,
}

impl KernelPlan {
    /// The plan for a compiled configuration: its lists
    /// ([`portcullis_engine::rules::RuleSet::export`]), its `inline`
    /// section, and whether user space needs DNS queries and new outbound
    /// connections.
    pub fn from_config(cfg: &Config, opts: &KernelOptions) -> Self {
        let export = cfg.rules.export();
        let mut plan = Self::from_export(&export, opts);
        let default_drop = cfg.policy.default == Action::Drop;
        plan.queue_num = cfg.inline.queue;
        plan.fail_open = !cfg.inline.fail_closed;
        plan.block_log_rate = cfg.inline.block_log_rate;
        plan.queue_all = distinct(&cfg.inline.queue_all);
        plan.queue_dns = export.has_domains || cfg.events.dns_queries;
        plan.hold_dns = export.has_domains;
        plan.queue_output_new = export.outbound_rules || default_drop;
        plan.queue_new_all_protocols = export.rules > 0 || default_drop;
        plan.queue_probes = cfg.scan.enabled;
        // Fail-closed means new connections wait for the daemon: they are
        // held, never only observed.
        plan.log_group = (!cfg.inline.fail_closed).then_some(cfg.inline.log_group);
        plan.max_bans = cfg.scan.max_bans;
        plan.crowdsec = cfg.crowdsec.as_ref().map(|c| c.max_decisions);
        plan
    }

    /// The plan of a passive daemon (monitor mode) that enforces bans
    /// only: loopback and the allowlist are accepted (never banned), banned
    /// addresses dropped, everything else left to the host's own rules.
    /// Nothing is queued and the block lists are not loaded.
    pub fn bans_only(cfg: &Config, opts: &KernelOptions) -> Self {
        let mut plan = Self::from_config(cfg, opts);
        plan.block4.clear();
        plan.block6.clear();
        plan.block_ports.clear();
        plan.block_protocols.clear();
        plan.allow_ports.clear();
        plan.allow_protocols.clear();
        plan.queue_all.clear();
        plan.queue_dns = false;
        plan.hold_dns = false;
        plan.queue_output_new = false;
        plan.queue_new_all_protocols = false;
        plan.hold_blocked_new = false;
        plan.queue_probes = false;
        plan.log_group = None;
        plan.block_log_rate = 0;
        plan.user_space = false;
        plan
    }

    /// The plan for lists alone, with the defaults of the rules file for
    /// everything else (queue 0, fail-open, 100 blocked packets/s logged,
    /// DNS queued).
    pub fn from_export(export: &RuleExport, opts: &KernelOptions) -> Self {
        Self {
            allow4: ranges::merge_v4(&export.allow_v4),
            allow6: ranges::merge_v6(&export.allow_v6),
            block4: ranges::merge_v4(&export.block_v4),
            block6: ranges::merge_v6(&export.block_v6),
            allow_ports: ranges::merge_ports(&export.allow_ports),
            block_ports: ranges::merge_ports(&export.block_ports),
            allow_protocols: distinct(&export.allow_protocols),
            block_protocols: distinct(&export.block_protocols),
            queue_all: Vec::new(),
            queue_num: 0,
            fail_open: true,
            skip_mark: opts.skip_mark,
            queue_mark: opts.queue_mark,
            block_log_rate: 100,
            queue_dns: true,
            hold_dns: export.has_domains,
            queue_output_new: export.outbound_rules,
            queue_new_all_protocols: export.rules > 0,
            hold_blocked_new: export.allow_rules > 0,
            queue_probes: false,
            log_group: None,
            max_bans: portcullis_engine::config::ScanConfig::default().max_bans,
            crowdsec: None,
            user_space: true,
        }
    }

    /// Checks what the kernel would refuse, or what would make our rules
    /// wrong: the marks must be non-zero and share no bit; ranges must be
    /// ordered.
    pub fn validate(&self) -> Result<(), KernelError> {
        let bad = |m: String| Err(KernelError::InvalidPlan(m));
        if self.skip_mark == 0 || self.queue_mark == 0 {
            return bad("the skip and queue marks must not be 0".into());
        }
        if self.skip_mark & self.queue_mark != 0 {
            return bad(format!(
                "the skip mark {:#x} and the queue mark {:#x} share bits",
                self.skip_mark, self.queue_mark
            ));
        }
        if self.block_log_rate > u32::MAX / 2 {
            return bad(format!(
                "block_log_rate {} is too large",
                self.block_log_rate
            ));
        }
        let ordered4 = |v: &[(Ipv4Addr, Ipv4Addr)]| v.iter().all(|(a, b)| a <= b);
        let ordered6 = |v: &[(Ipv6Addr, Ipv6Addr)]| v.iter().all(|(a, b)| a <= b);
        let ordered_p = |v: &[(u16, u16)]| v.iter().all(|(a, b)| a <= b);
        if !(ordered4(&self.allow4)
            && ordered4(&self.block4)
            && ordered6(&self.allow6)
            && ordered6(&self.block6)
            && ordered_p(&self.allow_ports)
            && ordered_p(&self.block_ports))
        {
            return bad("a range ends before it starts".into());
        }
        Ok(())
    }

    /// The nft script that declares our table for `path`, with per-element
    /// counters in the ban sets: what [`crate::Firewall::install`] loads
    /// (after `add table` + `delete table`, which removes a leftover table
    /// in the same transaction).
    pub fn ruleset_text(&self, path: QueuePath) -> String {
        self.render(Shape::of(path))
    }

    /// The table block for `shape`: what [`crate::Firewall::install`]
    /// loads on a kernel with those capabilities.
    pub fn render(&self, shape: Shape) -> String {
        let path = shape.path;
        let mut s = String::with_capacity(
            4096 + 40 * (self.allow4.len() + self.block4.len())
                + 90 * (self.allow6.len() + self.block6.len()),
        );
        let _ = writeln!(s, "table inet {TABLE} {{");
        set(
            &mut s,
            "allow4",
            "ipv4_addr",
            "interval",
            &self.allow4,
            v4_element,
        );
        set(
            &mut s,
            "allow6",
            "ipv6_addr",
            "interval",
            &self.allow6,
            v6_element,
        );
        set(
            &mut s,
            "block4",
            "ipv4_addr",
            "interval",
            &self.block4,
            v4_element,
        );
        set(
            &mut s,
            "block6",
            "ipv6_addr",
            "interval",
            &self.block6,
            v6_element,
        );
        for name in ["ban4", "ban6"] {
            let ty = if name == "ban4" {
                "ipv4_addr"
            } else {
                "ipv6_addr"
            };
            let _ = writeln!(
                s,
                "\tset {name} {{\n\t\ttype {ty}\n\t\tflags timeout\n\t\tsize {}\n\t\tgc-interval {}ms",
                self.ban_set_size(),
                BAN_GC_INTERVAL_MS
            );
            if shape.ban_counters {
                s.push_str("\t\tcounter\n");
            }
            s.push_str("\t}\n");
        }
        if let Some(max) = self.crowdsec {
            crate::crowdsec::declare_sets(&mut s, max);
        }
        for (name, ports) in [
            ("allow_tcp", &self.allow_ports),
            ("allow_udp", &self.allow_ports),
            ("block_tcp", &self.block_ports),
            ("block_udp", &self.block_ports),
        ] {
            set(
                &mut s,
                name,
                "inet_service",
                "interval",
                ports,
                port_element,
            );
        }
        for (name, protos) in [
            ("allow_proto", &self.allow_protocols),
            ("block_proto", &self.block_protocols),
            ("queue_proto", &self.queue_all),
        ] {
            set(&mut s, name, "inet_proto", "", protos, |o, p| {
                let _ = write!(o, "{p}");
            });
        }
        for hook in [Hook::Input, Hook::Forward, Hook::Output] {
            let _ = writeln!(
                s,
                "\tchain {} {{\n\t\ttype filter hook {} priority {PRIORITY}; policy accept;",
                hook.name(),
                hook.name()
            );
            for rule in self.base_rules(hook, shape.bans_end_flows) {
                let _ = writeln!(s, "\t\t{rule}");
            }
            s.push_str("\t}\n");
        }
        let chains = [
            ("allowed", self.allowed_rules()),
            ("blocked", self.blocked_rules()),
            ("to_user", self.to_user_rules(path)),
        ];
        // A bans-only table has no use for them.
        let chains = if self.user_space { &chains[..] } else { &[] };
        for (name, rules) in chains {
            let _ = writeln!(s, "\tchain {name} {{");
            for rule in rules {
                let _ = writeln!(s, "\t\t{rule}");
            }
            s.push_str("\t}\n");
        }
        if self.user_space && path == QueuePath::XtQueue {
            // Declared empty: updates never flush it, and its one rule
            // comes over netlink.
            let _ = writeln!(
                s,
                "\tchain {} {{\n\t\t# counter, xt NFQUEUE num {}{} (added over netlink)\n\t}}",
                crate::xtqueue::QUEUE_CHAIN,
                self.queue_num,
                if self.fail_open { " bypass" } else { "" }
            );
        }
        s.push_str("}\n");
        s
    }

    /// The rules of base chain `hook`, in the engine's precedence
    /// (docs/rules.md, "Precedence"). Rules on empty sets are left out.
    /// `bans_end_flows`: see [`Shape::bans_end_flows`].
    fn base_rules(&self, hook: Hook, bans_end_flows: bool) -> Vec<String> {
        let skip = self.skip_mark;
        let ours = !(self.skip_mark | self.queue_mark);
        // The peer: inbound the source, outbound the destination,
        // forwarded either end (as the engine).
        let peers: &[&str] = match hook {
            Hook::Input => &["saddr"],
            Hook::Output => &["daddr"],
            Hook::Forward => &["saddr", "daddr"],
        };
        let mut r = Vec::new();
        // 0. Established and related packets are accepted at once, before
        //    anything else (with our mark bits cleared on the way, as step
        //    1 does for the rest, where a queue rule might see them):
        //    replies of connections we accepted never meet a block entry.
        //    A banned peer's flows must end: where bans delete their
        //    peers' conntrack entries, its next packet is new and meets
        //    step 3; elsewhere this rule looks the peer up in the ban sets
        //    (one rule per family), and its packets go on down to step 3.
        //    What must still be seen goes on down the chain too: DNS
        //    queries on a reused socket or a TCP connection, `queue_all`
        //    protocols.
        if self.user_space {
            let queue_all = if self.queue_all.is_empty() {
                ""
            } else {
                " meta l4proto != @queue_proto"
            };
            // Keeping DNS queries out: `th dport != 53` is one load and
            // compare where `meta l4proto . th dport != { tcp . 53, udp .
            // 53 }` is a set lookup on every established packet (5 % of
            // 64-byte UDP throughput, measured). But `th dport` reads bytes
            // 2-3 of any transport header (nft shows it on ICMP as `icmp
            // checksum`), so a second rule accepts what has those bytes at
            // 53 without being TCP or UDP. It comes after the first rules:
            // the common packet still costs one rule.
            let keep: &[&str] = if self.queue_dns {
                &[" th dport != 53", " meta l4proto != { tcp, udp }"]
            } else {
                &[""]
            };
            // Our mark bits only matter to a queue rule that matches them:
            // when nothing is held, none exists, and the write is saved.
            let clear = if self.holds() {
                format!(" meta mark set meta mark & {ours:#010x}")
            } else {
                String::new()
            };
            let not_banned: Vec<String> = if bans_end_flows {
                vec![String::new()]
            } else {
                [("ip", "ban4"), ("ip6", "ban6")]
                    .iter()
                    .map(|(fam, set)| self.not_in(fam, Some(set), None, peers))
                    .collect()
            };
            for keep in keep {
                for not_banned in &not_banned {
                    r.push(format!(
                        "ct state established,related{not_banned}{keep}{queue_all}{clear} accept"
                    ));
                }
            }
        }
        // Packets portcullis itself sends (NXDOMAIN answers, socket mark
        // SKIP) pass: they must not come back to the queue. Only a local
        // socket with CAP_NET_ADMIN can carry a mark here.
        if hook == Hook::Output {
            r.push(format!("meta mark & {skip:#010x} == {skip:#010x} accept"));
        }
        r.extend(self.held_established_rules(hook, peers, bans_end_flows));
        // Our bits mean what this table says, whatever set them before.
        r.push(format!("meta mark set meta mark & {ours:#010x}"));
        // 1. Loopback.
        match hook {
            Hook::Input => r.push(format!(
                "iif \"lo\" meta mark set meta mark | {skip:#010x} accept"
            )),
            Hook::Output => r.push(format!(
                "oif \"lo\" meta mark set meta mark | {skip:#010x} accept"
            )),
            Hook::Forward => {}
        }
        // 2. The address allowlist always wins.
        for (fam, set, empty) in [
            ("ip", "allow4", self.allow4.is_empty()),
            ("ip6", "allow6", self.allow6.is_empty()),
        ] {
            if !empty {
                for p in peers {
                    r.push(format!(
                        "{fam} {p} @{set} meta mark set meta mark | {skip:#010x} accept"
                    ));
                }
            }
        }
        // 3. Bans (also established flows of a banned host).
        for (fam, set) in [("ip", "ban4"), ("ip6", "ban6")] {
            for p in peers {
                r.push(format!("{fam} {p} @{set} counter drop"));
            }
        }
        // 3b. CrowdSec decisions (fleet mode): after our own bans, after
        //     loopback and the allowlist, which always win.
        if self.crowdsec.is_some() {
            for fam in ["ip", "ip6"] {
                for set in crate::crowdsec::sets_of(fam) {
                    for p in peers {
                        r.push(format!("{fam} {p} @{set} counter drop"));
                    }
                }
            }
        }
        if !self.user_space {
            return r;
        }
        // 4. DNS queries, every packet (a reused socket is ESTABLISHED;
        //    TCP DNS data too): held when user space decides them (domain
        //    rules), else copied while the rules below decide (the copies
        //    further down then leave DNS out, so each query is seen once);
        //    protocols queued whole.
        if self.queue_dns {
            if self.dns_observed() {
                r.push(format!(
                    "meta l4proto {{ tcp, udp }} th dport 53 {}",
                    self.see()
                ));
            } else {
                r.push("meta l4proto { tcp, udp } th dport 53 goto to_user".into());
            }
        }
        if !self.queue_all.is_empty() {
            r.push("meta l4proto @queue_proto goto to_user".into());
        }
        // 5. Allowed ports and protocols: user space sees new connections
        //    (scan detection); the rest is accepted here.
        let allowed = if hook == Hook::Output && !self.queue_output_new {
            "accept"
        } else {
            "goto allowed"
        };
        if !self.allow_ports.is_empty() {
            r.push(format!("tcp dport @allow_tcp {allowed}"));
            r.push(format!("udp dport @allow_udp {allowed}"));
        }
        if !self.allow_protocols.is_empty() {
            r.push(format!("meta l4proto @allow_proto {allowed}"));
        }
        // 6. Blocked addresses, ports and protocols.
        for (fam, set, empty) in [
            ("ip", "block4", self.block4.is_empty()),
            ("ip6", "block6", self.block6.is_empty()),
        ] {
            if !empty {
                for p in peers {
                    r.push(format!("{fam} {p} @{set} goto blocked"));
                }
            }
        }
        if !self.block_ports.is_empty() {
            r.push("tcp dport @block_tcp goto blocked".into());
            r.push("udp dport @block_udp goto blocked".into());
        }
        if !self.block_protocols.is_empty() {
            r.push("meta l4proto @block_proto goto blocked".into());
        }
        // 7. New connections: scan detection, composite rules, default
        //    policy. 8. The rest (established, related) is accepted by the
        //    chain's policy.
        if hook != Hook::Output || self.queue_output_new {
            if self.queue_new_all_protocols {
                // Composite rules or a default of drop: user space gives
                // the verdict, so the packet is held.
                r.push(format!("ct state {NEW} goto to_user"));
            } else {
                // The verdict is the chain's policy (accept): user space
                // only needs to see the packet (scan detection, logging).
                let see = self.see();
                let not_dns = if self.dns_observed() {
                    " th dport != 53"
                } else {
                    ""
                };
                r.push(format!(
                    "meta l4proto {{ tcp, udp }}{not_dns} ct state {NEW} {see}"
                ));
                if self.queue_probes {
                    r.push(format!(
                        "meta l4proto != {{ tcp, udp, icmp, ipv6-icmp }} ct state {NEW} {see}"
                    ));
                    r.push(format!(
                        "icmp type {{ echo-request, timestamp-request, address-mask-request }} ct state {NEW} {see}"
                    ));
                    r.push(format!("icmpv6 type echo-request ct state {NEW} {see}"));
                }
            }
        }
        r
    }

    /// 0b. Established packets user space must decide (DNS queries under
    /// domain rules, `queue_all` protocols) of peers that are not
    /// allowlisted (nor banned, looked up only where bans do not end
    /// flows), not on loopback: held at once. Steps 1-4
    /// would decide them alike (loopback and the allowlist accept, bans
    /// drop, then the same hold), but each packet of a held flow would
    /// walk six or more rules first; measured on 64-byte UDP with
    /// `queue_all`, that walk cost 10 % of the held packet rate. New
    /// packets still take the whole chain (scan detection, logging).
    fn held_established_rules(
        &self,
        hook: Hook,
        peers: &[&str],
        bans_end_flows: bool,
    ) -> Vec<String> {
        if !self.user_space {
            return Vec::new();
        }
        let mut held = Vec::new();
        if self.queue_dns && !self.dns_observed() {
            held.push("meta l4proto . th dport { tcp . 53, udp . 53 }");
        }
        if !self.queue_all.is_empty() {
            held.push("meta l4proto @queue_proto");
        }
        let lo = match hook {
            Hook::Input => "iif != \"lo\" ",
            Hook::Output => "oif != \"lo\" ",
            Hook::Forward => "",
        };
        // Per family, the sets its peers must not be in.
        let not_in: Vec<(&str, String)> = [
            ("ipv4", "ip", "ban4", "allow4", self.allow4.is_empty()),
            ("ipv6", "ip6", "ban6", "allow6", self.allow6.is_empty()),
        ]
        .into_iter()
        .map(|(nfproto, fam, ban, allow, allow_empty)| {
            let ban = (!bans_end_flows).then_some(ban);
            let allow = (!allow_empty).then_some(allow);
            (nfproto, self.not_in(fam, ban, allow, peers))
        })
        .collect();
        // Nothing to look up: one rule for both families. Else one per
        // family, the one with nothing to look up named by its family.
        let conds: Vec<String> = if not_in.iter().all(|(_, n)| n.is_empty()) {
            vec![String::new()]
        } else {
            not_in
                .into_iter()
                .map(|(nfproto, n)| {
                    if n.is_empty() {
                        format!(" meta nfproto {nfproto}")
                    } else {
                        n
                    }
                })
                .collect()
        };
        let mut r = Vec::new();
        for cond in &conds {
            for m in &held {
                r.push(format!(
                    "{lo}ct state established,related{cond} {m} goto to_user"
                ));
            }
        }
        r
    }

    /// ` {fam} {peer} != @{set}` for every peer and every set a peer must
    /// not be in: the ban set `ban` and the CrowdSec sets in fleet mode
    /// (when `ban` is given: both are bans), and `allow` when given.
    fn not_in(&self, fam: &str, ban: Option<&str>, allow: Option<&str>, peers: &[&str]) -> String {
        let mut sets: Vec<&str> = ban.into_iter().collect();
        if ban.is_some() && self.crowdsec.is_some() {
            sets.extend(crate::crowdsec::sets_of(fam));
        }
        sets.extend(allow);
        sets.iter()
            .flat_map(|set| peers.iter().map(move |p| format!(" {fam} {p} != @{set}")))
            .collect()
    }

    /// Elements each ban set can hold: four times `max_bans`, plus 1,024.
    /// The engine keeps at most `max_bans` bans; the rest is room for
    /// lifted bans whose element has timed out but still takes its slot
    /// until the kernel's garbage collection runs (an unban is a 1 ms
    /// timeout: a `delete` would make nft load whole sets, 0.35 s beside
    /// 100,000 blocked CIDRs), collected every 100 ms rather than the
    /// kernel's default second. A spoofed flood's churn (measured here:
    /// 10,000 bans a second, in batches of up to 1,000) then fits; should
    /// a faster one fill the set, the kernel thread resynchronises it. The
    /// limit bounds kernel memory; nothing is allocated for unused room.
    pub fn ban_set_size(&self) -> usize {
        self.max_bans.saturating_mul(4).saturating_add(1024)
    }

    /// DNS queries are copied to the NFLOG group, not held: no domain rule
    /// needs user space's verdict.
    pub fn dns_observed(&self) -> bool {
        self.queue_dns && !self.hold_dns && self.log_group.is_some()
    }

    /// Some packet waits in NFQUEUE for user space's verdict: DNS queries
    /// with domain rules, `queue_all` protocols, new connections under
    /// composite rules or a default of drop, blocked new packets an allow
    /// rule may still accept, or anything user space must see when no
    /// NFLOG group exists (fail-closed). When nothing is held, the iptables
    /// fallback's chain and jumps are not installed: packets then cross
    /// our nft chains only.
    pub fn holds(&self) -> bool {
        self.user_space
            && ((self.queue_dns && !self.dns_observed())
                || !self.queue_all.is_empty()
                || self.queue_new_all_protocols
                || self.hold_blocked_new
                || self.log_group.is_none())
    }

    /// The match that leaves out DNS queries where step 4 of the base
    /// chains already copied them (empty where it did not), so that the
    /// `allowed` and `blocked` chains' copies do not copy them again.
    fn not_observed_dns(&self) -> &'static str {
        if self.dns_observed() {
            " meta l4proto . th dport != { tcp . 53, udp . 53 }"
        } else {
            ""
        }
    }

    /// How a packet whose verdict the kernel gives reaches user space:
    /// copied to the NFLOG group (it goes on at once), or, without one,
    /// queued and held.
    fn see(&self) -> String {
        match self.log_group {
            Some(g) => format!("log group {g} queue-threshold {LOG_THRESHOLD}"),
            None => "goto to_user".into(),
        }
    }

    fn allowed_rules(&self) -> Vec<String> {
        // Allowed ports and protocols are accepted whatever the composite
        // rules say (docs/rules.md, "Precedence"): seen, not held.
        vec![
            format!("ct state {NEW}{} {}", self.not_observed_dns(), self.see()),
            "accept".into(),
        ]
    }

    fn blocked_rules(&self) -> Vec<String> {
        let mut r = Vec::new();
        if self.hold_blocked_new {
            // An allow rule may still accept it: user space decides (its
            // drop events aggregate what the rate limit would bound).
            r.push(format!("ct state {NEW} goto to_user"));
        } else if self.block_log_rate > 0 {
            let n = self.block_log_rate;
            r.push(format!(
                "ct state {NEW}{} limit rate {n}/second burst {} packets {}",
                self.not_observed_dns(),
                2 * n,
                self.see()
            ));
        }
        r.push("counter drop".into());
        r
    }

    fn to_user_rules(&self, path: QueuePath) -> Vec<String> {
        let mark = format!("meta mark set meta mark | {:#010x}", self.queue_mark);
        match path {
            QueuePath::NftQueue => vec![format!(
                "{mark} queue num {}{}",
                self.queue_num,
                if self.fail_open { " bypass" } else { "" }
            )],
            QueuePath::IptablesNfqueue => vec![format!("{mark} accept")],
            QueuePath::XtQueue => {
                let mut r = vec![format!("{mark} jump {}", crate::xtqueue::QUEUE_CHAIN)];
                // Fail-closed: without the queue rule (being installed,
                // or removed by someone) nothing passes either.
                if !self.fail_open {
                    r.push("drop".into());
                }
                r
            }
        }
    }
}

/// How often the kernel collects timed-out elements of the ban sets, in
/// milliseconds: a walk over the set's live elements.
pub const BAN_GC_INTERVAL_MS: u32 = 100;

/// The conntrack states user space sees.
const NEW: &str = "new,invalid,untracked";

/// Packets the kernel gathers before it sends a batch to the NFLOG group
/// (it also sends after the socket's flush timeout).
pub const LOG_THRESHOLD: u16 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    Input,
    Forward,
    Output,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
        }
    }
}

/// Elements per line: keeps nft's error messages (which quote the line)
/// short.
const PER_LINE: usize = 8;

fn set<T: Copy>(
    s: &mut String,
    name: &str,
    ty: &str,
    flags: &str,
    elements: &[T],
    fmt: impl Fn(&mut String, T),
) {
    let _ = writeln!(s, "\tset {name} {{\n\t\ttype {ty}");
    if !flags.is_empty() {
        let _ = writeln!(s, "\t\tflags {flags}");
    }
    if !elements.is_empty() {
        s.push_str("\t\telements = {");
        for (i, &e) in elements.iter().enumerate() {
            if i % PER_LINE == 0 {
                s.push_str("\n\t\t\t");
            } else {
                s.push(' ');
            }
            fmt(s, e);
            if i + 1 < elements.len() {
                s.push(',');
            }
        }
        s.push_str("\n\t\t}\n");
    }
    s.push_str("\t}\n");
}

fn distinct(v: &[u8]) -> Vec<u8> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests;
