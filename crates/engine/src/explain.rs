//! `portcullis explain ADDR`: which list entries, rules and bans apply to
//! one address, and what they add up to, in the engine's own precedence.
//!
//! [`explain`] (and [`Engine::explain`](crate::Engine::explain), which
//! passes it the engine's rules, policy and ban) is a pure function of the
//! rule set, the ban and the time it is given. **It is not on the packet
//! path:** it scans the lists as written, so it costs O(entries) in
//! `allow.ip`, `block.ip`, the port and protocol lists and `rules` (plus
//! the rules' own prefixes), and it allocates.
//!
//! The question is about an address, not a packet, so the answer says
//! exactly what it cannot decide: entries that look at the port, the
//! protocol, the direction or a DNS name are listed in precedence order as
//! "depends on ...", followed by what applies "otherwise". The address is
//! taken as the packet's *peer* (the source of inbound packets, the
//! destination of outbound ones, either end of forwarded ones); for a
//! forwarded packet the other end counts too (an allowlisted or banned
//! other end decides first), which an address-only answer cannot know.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use portcullis_wire::IpProto;
use serde::{Deserialize, Serialize};

use crate::engine::Ban;
use crate::events::rfc3339_short;
use crate::rules::{list_id, RuleSet, RuleSpec};
use crate::types::{Action, Direction, RuleRef, Timestamp};

/// What the engine would do with packets from or to one address, and why.
/// See the module docs; [`fmt::Display`] renders it for the CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    pub addr: IpAddr,
    /// The time the ban was judged at.
    pub now: Timestamp,
    /// 127.0.0.0/8 or ::1: always accepted, never banned.
    pub loopback: bool,
    /// The `allow.ip` entry the packet path names for this address (longest
    /// prefix; of equal ones, the first in the file). Every `allow.ip`
    /// entry containing it is in `allowed_by`.
    pub allowlisted: Option<Match>,
    /// Loopback or allowlisted: accepted before bans are looked at, and
    /// `Engine::ban` refuses to ban it (a scan is still reported).
    pub protected: bool,
    /// The ban in the engine's table, if any. A ban whose `seconds_left` is
    /// 0 is over: the verdict is what applies once the engine's next tick
    /// (within 1 s of packet time) removes it from the table.
    pub ban: Option<BanView>,
    /// Every `block.ip` entry containing the address (file order, all of
    /// them, not only the longest prefix), then every composite block rule
    /// whose `ip` list contains it.
    pub blocked_by: Vec<Match>,
    /// Every `allow.ip` entry containing the address, then every composite
    /// allow rule whose `ip` list contains it.
    pub allowed_by: Vec<Match>,
    /// The outcome in plain words, following the precedence of
    /// `Engine::process` (docs/rules.md, "Precedence").
    pub verdict: String,
    /// A default gateway or DNS resolver of the daemon's host (why, in
    /// words): a scan from it is reported, never banned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_peer: Option<String>,
}

/// One list entry or composite rule that applies to the address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    /// `block.ip`, `allow.ip` or `rules`.
    pub list: String,
    /// The index in that list (`rules[2]` -> 2).
    pub index: u32,
    /// The entry's prefix that contains the address; for a rule, the first
    /// of its prefixes that does (`None` for a rule without `ip`).
    pub net: Option<IpNet>,
    /// For a rule: what else a packet must be, in words
    /// (`inbound TCP port 22 from 198.18.0.0/24`). `None` for list entries.
    pub conditions: Option<String>,
    /// All of it as one line: `block.ip[3] 198.18.5.0/24`,
    /// `rules[2] (no ssh from the lab): inbound TCP port 22 from 198.18.0.0/24`.
    pub text: String,
}

/// A ban, as seen at [`Explanation::now`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanView {
    /// `scan:syn`, `manual`, ...
    pub reason: String,
    pub since: Timestamp,
    pub until: Timestamp,
    /// Whole seconds until `until`, rounded up (0: the ban is over).
    pub seconds_left: u64,
}

/// Explains `addr` against `rules` with default policy `default`, the
/// engine's ban for the address (if any) judged at `now`. O(n) in the list
/// sizes; see the module docs.
pub fn explain(
    rules: &RuleSet,
    default: Action,
    ban: Option<&Ban>,
    addr: IpAddr,
    now: Timestamp,
) -> Explanation {
    let loopback = addr.is_loopback();
    let allowlisted = rules
        .allow_ip_entry(addr)
        .map(|e| ip_match(rules, list_id::ALLOW_IP, e, addr));
    let protected = loopback || allowlisted.is_some();
    let ban = ban.filter(|b| b.addr == addr).map(|b| BanView {
        reason: b.reason.clone(),
        since: b.since,
        until: b.until,
        seconds_left: b
            .until
            .as_micros()
            .saturating_sub(now.as_micros())
            .div_ceil(1_000_000),
    });

    let specs = rules.rule_specs();
    let applicable = |allow: bool| {
        specs.iter().enumerate().filter_map(move |(i, spec)| {
            let net = match &spec.ips {
                Some(ips) => Some(*ips.iter().find(|n| n.contains(&addr))?),
                None => None,
            };
            (spec.allow == allow).then(|| rule_match(rules, i as u32, spec, net, addr))
        })
    };
    let ip_matches = |list: u16| {
        rules
            .ip_entries(list)
            .iter()
            .enumerate()
            .filter(|(_, n)| n.contains(&addr))
            .map(move |(i, _)| ip_match(rules, list, i as u32, addr))
    };
    // Rules without `ip` apply to every address: the verdict names them
    // where they count, the lists keep to what names this address.
    let has_ip = |m: &Match| m.net.is_some();
    let blocked_by: Vec<Match> = ip_matches(list_id::BLOCK_IP)
        .chain(applicable(false).filter(has_ip))
        .collect();
    let allowed_by: Vec<Match> = ip_matches(list_id::ALLOW_IP)
        .chain(ip_matches(list_id::PROTECTED))
        .chain(applicable(true).filter(has_ip))
        .collect();

    let mut verdict = verdict(
        rules,
        default,
        addr,
        loopback,
        allowlisted.as_ref(),
        ban.as_ref(),
        &mut applicable(true),
        &mut applicable(false),
    );
    if let Some(b) = ban.as_ref().filter(|b| b.seconds_left == 0 && !protected) {
        // Still in the table: `process` drops until its next tick (once a
        // second of packet time) removes it.
        verdict.push_str(&format!(
            " (once the ban ({}) that ended at {} is lifted, at the engine's next tick: \
             within 1 s of packet time)",
            b.reason,
            rfc3339_short(b.until)
        ));
    }
    Explanation {
        addr,
        now,
        loopback,
        allowlisted,
        protected,
        ban,
        blocked_by,
        allowed_by,
        verdict,
        critical_peer: None,
    }
}

/// What a conditional step depends on (for the "depends on ..." heading).
#[derive(Default)]
struct Depends {
    direction: bool,
    port: bool,
    protocol: bool,
    dns_name: bool,
}

impl Depends {
    fn heading(&self) -> String {
        let words: Vec<&str> = [
            (self.direction, "direction"),
            (self.port, "port"),
            (self.protocol, "protocol"),
            (self.dns_name, "DNS name"),
        ]
        .into_iter()
        .filter_map(|(on, w)| on.then_some(w))
        .collect();
        words.join("/")
    }
}

/// At most this many conditional steps are named in the verdict.
const MAX_STEPS: usize = 8;

/// Walks the tiers of `Engine::process` for packets whose peer is `addr`:
/// conditional steps are collected until the first step that decides every
/// such packet.
#[allow(clippy::too_many_arguments)]
fn verdict(
    rules: &RuleSet,
    default: Action,
    addr: IpAddr,
    loopback: bool,
    allowlisted: Option<&Match>,
    ban: Option<&BanView>,
    allow_rules: &mut dyn Iterator<Item = Match>,
    block_rules: &mut dyn Iterator<Item = Match>,
) -> String {
    // Tier 1: loopback and allow.ip.
    if loopback {
        return "accepted: loopback (never banned)".into();
    }
    if let Some(m) = allowlisted {
        return format!("accepted: allowlisted by {} (never banned)", m.text);
    }
    // Tier 2: bans.
    if let Some(b) = ban.filter(|b| b.seconds_left > 0) {
        return format!(
            "dropped: banned ({}) for another {} s",
            b.reason, b.seconds_left
        );
    }

    let mut depends = Depends::default();
    let mut steps: Vec<String> = Vec::new();
    let mut step = |s: String| steps.push(s);
    let finish = |steps: Vec<String>, depends: Depends, last: String| {
        if steps.is_empty() {
            return last;
        }
        let n = steps.len();
        let mut shown: Vec<String> = steps.into_iter().take(MAX_STEPS).collect();
        if n > MAX_STEPS {
            shown.push(format!("and {} more", n - MAX_STEPS));
        }
        format!(
            "depends on {}: {}; otherwise {last}",
            depends.heading(),
            shown.join("; ")
        )
    };

    // Tier 3: DNS queries for blocked names.
    if rules.blocks_domains() {
        depends.port = true;
        depends.dns_name = true;
        step("DNS queries (TCP/UDP port 53) for blocked names are dropped".into());
    }
    // Tier 4: allow.port, allow.protocol, allow rules.
    for (i, _) in rules.port_entries(list_id::ALLOW_PORT).iter().enumerate() {
        depends.port = true;
        step(format!(
            "accepted by {} (TCP/UDP destination port)",
            describe(rules, list_id::ALLOW_PORT, i)
        ));
    }
    for (i, _) in rules
        .protocol_entries(list_id::ALLOW_PROTOCOL)
        .iter()
        .enumerate()
    {
        depends.protocol = true;
        step(format!(
            "accepted by {}",
            describe(rules, list_id::ALLOW_PROTOCOL, i)
        ));
    }
    let specs = rules.rule_specs();
    for m in allow_rules {
        let spec = &specs[m.index as usize];
        if !note_conditions(&mut depends, spec) {
            return finish(steps, depends, format!("accepted: allowed by {}", m.text));
        }
        step(format!("accepted by {}", m.text));
    }
    // Tier 5: block.ip, block.port, block.protocol, block rules.
    if let Some(e) = rules.block_ip_entry(addr) {
        let m = ip_match(rules, list_id::BLOCK_IP, e, addr);
        return finish(
            steps,
            depends,
            format!("dropped: blocked by {} (any direction)", m.text),
        );
    }
    for (i, _) in rules.port_entries(list_id::BLOCK_PORT).iter().enumerate() {
        depends.port = true;
        step(format!(
            "dropped by {} (TCP/UDP destination port)",
            describe(rules, list_id::BLOCK_PORT, i)
        ));
    }
    for (i, _) in rules
        .protocol_entries(list_id::BLOCK_PROTOCOL)
        .iter()
        .enumerate()
    {
        depends.protocol = true;
        step(format!(
            "dropped by {}",
            describe(rules, list_id::BLOCK_PROTOCOL, i)
        ));
    }
    for m in block_rules {
        let spec = &specs[m.index as usize];
        if !note_conditions(&mut depends, spec) {
            return finish(steps, depends, format!("dropped: blocked by {}", m.text));
        }
        step(format!("dropped by {}", m.text));
    }
    // Tier 6: the default policy.
    let last = match default {
        Action::Accept => "accepted: default policy (accept)",
        Action::Drop => "dropped: default policy (drop)",
    };
    finish(steps, depends, last.into())
}

/// Records what a rule looks at besides the address; false if nothing (it
/// decides every packet of the address).
fn note_conditions(d: &mut Depends, spec: &RuleSpec) -> bool {
    d.direction |= spec.direction.is_some();
    d.port |= spec.ports.is_some();
    d.protocol |= spec.protocols.is_some();
    spec.direction.is_some() || spec.ports.is_some() || spec.protocols.is_some()
}

fn describe(rules: &RuleSet, list: u16, entry: usize) -> String {
    rules.describe(RuleRef {
        list,
        entry: entry as u32,
    })
}

fn ip_match(rules: &RuleSet, list: u16, entry: u32, addr: IpAddr) -> Match {
    // The allowlist's lookup numbers protected addresses after the file's
    // entries (see `RuleSet::protect`).
    let own = rules.ip_entries(list).len() as u32;
    let (list, entry) = if list == list_id::ALLOW_IP && entry >= own {
        (list_id::PROTECTED, entry - own)
    } else {
        (list, entry)
    };
    let net = rules
        .ip_entries(list)
        .get(entry as usize)
        .copied()
        .filter(|n| n.contains(&addr));
    Match {
        list: rules.list_name(list).to_owned(),
        index: entry,
        net,
        conditions: None,
        text: rules.describe(RuleRef { list, entry }),
    }
}

fn rule_match(
    rules: &RuleSet,
    index: u32,
    spec: &RuleSpec,
    net: Option<IpNet>,
    addr: IpAddr,
) -> Match {
    let conditions = rule_conditions(spec, addr);
    let name = rules.describe(RuleRef {
        list: list_id::RULES,
        entry: index,
    });
    Match {
        list: rules.list_name(list_id::RULES).to_owned(),
        index,
        net,
        text: format!("{name}: {conditions}"),
        conditions: Some(conditions),
    }
}

/// `inbound TCP port 22 from 198.18.0.0/24`: a rule's conditions, naming
/// only the rule's prefixes that contain `addr` (with a count of the rest).
fn rule_conditions(spec: &RuleSpec, addr: IpAddr) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(d) = spec.direction {
        parts.push(d.as_str().to_owned());
    }
    let protos = spec.protocols.as_ref().map(|v| {
        v.iter()
            .map(|&n| IpProto::from_number(n).name().to_string())
            .collect::<Vec<_>>()
            .join("/")
    });
    match (&protos, &spec.ports) {
        (Some(p), Some(ports)) => parts.push(format!("{p} {}", ports_text(ports))),
        (None, Some(ports)) => parts.push(format!("TCP/UDP {}", ports_text(ports))),
        (Some(p), None) => parts.push(p.clone()),
        (None, None) => {}
    }
    if let Some(ips) = &spec.ips {
        let hits: Vec<String> = ips
            .iter()
            .filter(|n| n.contains(&addr))
            .map(ToString::to_string)
            .collect();
        let others = ips.len() - hits.len();
        let nets = if hits.is_empty() {
            format!("{} prefixes (not this address)", ips.len())
        } else if others > 0 {
            format!("{} (and {others} other prefixes)", hits.join(", "))
        } else {
            hits.join(", ")
        };
        let word = match spec.direction {
            Some(Direction::Inbound) => "from",
            Some(Direction::Outbound) => "to",
            Some(Direction::Forwarded) | None => "from or to",
        };
        parts.push(format!("{word} {nets}"));
    }
    if spec.direction.is_none() {
        parts.push("(any direction)".into());
    }
    parts.join(" ")
}

/// `port 22`, `ports 22, 6000-6100`.
fn ports_text(ports: &[(u16, u16)]) -> String {
    let list: Vec<String> = ports
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    let word = if ports.len() == 1 && ports[0].0 == ports[0].1 {
        "port"
    } else {
        "ports"
    };
    format!("{word} {}", list.join(", "))
}

impl fmt::Display for Explanation {
    /// A few lines for the CLI:
    ///
    /// ```text
    /// 198.18.5.7
    ///   verdict: dropped: banned (scan:syn) for another 512 s
    ///   ban: scan:syn since 2026-11-22T06:01:02Z until 2026-11-22T06:11:02Z (512 s left)
    ///   blocked by: block.ip[3] 198.18.5.0/24
    ///   allowed by: -
    /// ```
    /// (No newline after the last line.)
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n  verdict: {}", self.addr, self.verdict)?;
        if self.loopback {
            write!(f, "\n  never banned: loopback")?;
        } else if let Some(m) = &self.allowlisted {
            write!(f, "\n  never banned: allowlisted by {}", m.text)?;
        } else if let Some(why) = &self.critical_peer {
            write!(f, "\n  never banned by a scan: critical peer ({why})")?;
        }
        match &self.ban {
            Some(b) => {
                write!(
                    f,
                    "\n  ban: {} since {} until {} ",
                    b.reason,
                    rfc3339_short(b.since),
                    rfc3339_short(b.until)
                )?;
                if b.seconds_left > 0 {
                    write!(f, "({} s left)", b.seconds_left)?;
                } else {
                    write!(f, "(over: lifted at the next tick)")?;
                }
            }
            None => write!(f, "\n  ban: -")?,
        }
        for (label, list) in [
            ("blocked by", &self.blocked_by),
            ("allowed by", &self.allowed_by),
        ] {
            write!(f, "\n  {label}:")?;
            if list.is_empty() {
                write!(f, " -")?;
            }
            for (i, m) in list.iter().enumerate() {
                if i == 0 {
                    write!(f, " {}", m.text)?;
                } else {
                    // Under the first entry: "  " + label + ": ".
                    write!(f, "\n{:pad$}{}", "", m.text, pad = label.len() + 4)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "explain_tests.rs"]
mod tests;
