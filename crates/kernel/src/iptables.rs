//! The iptables fallback: for kernels without the nft `queue` statement.
//!
//! Our nft chains mark packets for user space; in iptables-nft's
//! `security` table (IPv4 and IPv6), one rule of ours at the top of INPUT,
//! FORWARD and OUTPUT jumps to our chain [`CHAIN`], which queues marked
//! packets.
//!
//! Why `security` (hook priority 50) and not `filter` (0): a verdict from
//! the queue ends the traversal of the table that queued. Queued from
//! `filter`, a packet portcullis accepts would skip the host's own filter
//! rules after our jump. From `security`, the host's filter rules have
//! already decided (their DROP wins; their ACCEPT does not stop the later
//! hook), and the `security` table is rarely used for anything else.
//!
//! ```text
//! *security
//!
//! ```text
//! -N PORTCULLIS
//! -A INPUT -m comment --comment portcullis -j PORTCULLIS
//! -A FORWARD -m comment --comment portcullis -j PORTCULLIS
//! -A OUTPUT -m comment --comment portcullis -j PORTCULLIS
//! -A PORTCULLIS -m mark --mark 0x20000000/0x20000000 -m comment --comment portcullis -j NFQUEUE --queue-num 0 --queue-bypass
//! ```
//!
//! Changes go through `iptables-restore --noflush` (one call per family,
//! atomic per table in iptables-nft). Our objects are found in
//! `iptables -S` by the chain name and the comment; nothing else is
//! touched.

use std::fmt::Write as _;

/// Our iptables chain.
pub const CHAIN: &str = "PORTCULLIS";
/// The iptables table our chain and jumps live in (see the module docs).
pub const TABLE: &str = "security";
/// The comment on each of our iptables rules.
pub const COMMENT: &str = "portcullis";
/// The built-in chains that jump to ours.
const HOOKS: [&str; 3] = ["INPUT", "FORWARD", "OUTPUT"];

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub(crate) fn program(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    pub(crate) fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    /// The nftables family iptables-nft keeps this family's tables in.
    pub(crate) fn nft_family(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

/// True if an `iptables -S` listing has no chain and no rule of anyone's:
/// only the built-in chains' policies (`-P`), all ACCEPT.
pub(crate) fn is_bare(listing: &str) -> bool {
    listing.lines().all(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.is_empty() || matches!(w.as_slice(), ["-P", _, "ACCEPT"])
    })
}

/// What of ours `iptables -S` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Ours {
    /// Rules outside our chain that jump to it and carry our comment, as
    /// `(chain, spec after "-A chain ")`.
    pub(crate) jumps: Vec<(String, String)>,
    /// Whether our chain exists.
    pub(crate) chain: bool,
}

impl Ours {
    pub(crate) fn is_empty(&self) -> bool {
        self.jumps.is_empty() && !self.chain
    }
}

/// Finds our objects in `iptables -t security -S` output.
pub(crate) fn parse(listing: &str) -> Ours {
    let mut ours = Ours::default();
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["-N", name] if *name == CHAIN => ours.chain = true,
            ["-A", chain, spec @ ..] if *chain != CHAIN => {
                let jumps = spec.windows(2).any(|w| w == ["-j", CHAIN]);
                let commented = spec.windows(2).any(|w| w == ["--comment", COMMENT]);
                if jumps && commented {
                    ours.jumps.push(((*chain).to_string(), spec.join(" ")));
                }
            }
            _ => {}
        }
    }
    ours
}

/// Sums the packet counters of the NFQUEUE rules in `iptables -nvxL
/// PORTCULLIS` output.
pub(crate) fn queue_rule_packets(listing: &str) -> u64 {
    listing
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let pkts = w.next()?.parse::<u64>().ok()?;
            let _bytes = w.next()?;
            (w.next()? == "NFQUEUE").then_some(pkts)
        })
        .sum()
}

/// The NFQUEUE rule of our chain.
pub(crate) fn queue_rule(queue_mark: u32, queue_num: u16, fail_open: bool) -> String {
    format!(
        "-A {CHAIN} -m mark --mark {queue_mark:#x}/{queue_mark:#x} -m comment --comment {COMMENT} \
         -j NFQUEUE --queue-num {queue_num}{}",
        if fail_open { " --queue-bypass" } else { "" }
    )
}

/// `iptables-restore --noflush` input: replaces whatever of ours exists
/// (`old`) with our chain and one jump at the top of each built-in chain.
/// Declaring the chain (`:PORTCULLIS`) creates it, or flushes it if it
/// exists.
pub(crate) fn install_script(
    old: &Ours,
    queue_mark: u32,
    queue_num: u16,
    fail_open: bool,
) -> String {
    let mut s = format!("*{TABLE}\n");
    let _ = writeln!(s, ":{CHAIN} - [0:0]");
    for (chain, spec) in &old.jumps {
        let _ = writeln!(s, "-D {chain} {spec}");
    }
    let _ = writeln!(s, "{}", queue_rule(queue_mark, queue_num, fail_open));
    for hook in HOOKS {
        let _ = writeln!(s, "-I {hook} 1 -m comment --comment {COMMENT} -j {CHAIN}");
    }
    s.push_str("COMMIT\n");
    s
}

/// `iptables-restore --noflush` input removing what of ours exists, or
/// `None` if nothing does.
pub(crate) fn removal_script(old: &Ours) -> Option<String> {
    if old.is_empty() {
        return None;
    }
    let mut s = format!("*{TABLE}\n");
    for (chain, spec) in &old.jumps {
        let _ = writeln!(s, "-D {chain} {spec}");
    }
    if old.chain {
        let _ = writeln!(s, "-F {CHAIN}\n-X {CHAIN}");
    }
    s.push_str("COMMIT\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "-P INPUT ACCEPT\n\
        -P FORWARD ACCEPT\n\
        -P OUTPUT ACCEPT\n\
        -N PORTCULLIS\n\
        -N FOREIGN\n\
        -A INPUT -m comment --comment portcullis -j PORTCULLIS\n\
        -A INPUT -s 198.18.0.99/32 -j DROP\n\
        -A INPUT -m comment --comment portcullis -j PORTCULLIS\n\
        -A FORWARD -m comment --comment portcullis -j PORTCULLIS\n\
        -A OUTPUT -m comment --comment \"not ours\" -j FOREIGN\n\
        -A FOREIGN -j PORTCULLIS\n\
        -A PORTCULLIS -m mark --mark 0x20000000/0x20000000 -m comment --comment portcullis -j NFQUEUE --queue-num 0 --queue-bypass\n";

    #[test]
    fn finds_only_our_objects() {
        let ours = parse(LISTING);
        assert!(ours.chain);
        assert_eq!(
            ours.jumps,
            [
                (
                    "INPUT".to_string(),
                    "-m comment --comment portcullis -j PORTCULLIS".to_string()
                ),
                (
                    "INPUT".to_string(),
                    "-m comment --comment portcullis -j PORTCULLIS".to_string()
                ),
                (
                    "FORWARD".to_string(),
                    "-m comment --comment portcullis -j PORTCULLIS".to_string()
                ),
            ]
        );
        assert!(parse("-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n").is_empty());
    }

    #[test]
    fn scripts() {
        let ours = parse(LISTING);
        assert_eq!(
            install_script(&Ours::default(), 0x2000_0000, 3, false),
            "*security\n\
             :PORTCULLIS - [0:0]\n\
             -A PORTCULLIS -m mark --mark 0x20000000/0x20000000 -m comment --comment portcullis -j NFQUEUE --queue-num 3\n\
             -I INPUT 1 -m comment --comment portcullis -j PORTCULLIS\n\
             -I FORWARD 1 -m comment --comment portcullis -j PORTCULLIS\n\
             -I OUTPUT 1 -m comment --comment portcullis -j PORTCULLIS\n\
             COMMIT\n"
        );
        let s = install_script(&ours, 0x2000_0000, 0, true);
        assert!(
            s.contains("-D INPUT -m comment --comment portcullis -j PORTCULLIS\n-D INPUT"),
            "{s}"
        );
        assert!(s.contains("--queue-num 0 --queue-bypass\n"), "{s}");
        assert_eq!(
            removal_script(&ours).unwrap(),
            "*security\n\
             -D INPUT -m comment --comment portcullis -j PORTCULLIS\n\
             -D INPUT -m comment --comment portcullis -j PORTCULLIS\n\
             -D FORWARD -m comment --comment portcullis -j PORTCULLIS\n\
             -F PORTCULLIS\n\
             -X PORTCULLIS\n\
             COMMIT\n"
        );
        assert_eq!(removal_script(&Ours::default()), None);
    }

    #[test]
    fn queue_rule_counters_are_summed() {
        let listing = "Chain PORTCULLIS (3 references)\n    pkts      bytes target     prot opt in     out     source               destination\n  123456  7890123 NFQUEUE    0    --  *      *       0.0.0.0/0            0.0.0.0/0            mark match 0x20000000/0x20000000 /* portcullis */ NFQUEUE num 0 bypass\n";
        assert_eq!(queue_rule_packets(listing), 123_456);
        assert_eq!(queue_rule_packets("Chain PORTCULLIS (0 references)\n"), 0);
    }
}
