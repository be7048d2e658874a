//! nft scripts (written to `nft -f -`, one transaction each) and the
//! parsing of `nft -j` output.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use crate::plan::{KernelPlan, Shape, CHAINS, LIST_SETS, TABLE};

/// Longest ban we set: ten years (nft takes more, but nothing sane needs
/// it, and it keeps far from the kernel's limits).
pub const MAX_BAN: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The throwaway table [`crate::Firewall::probe`] uses.
pub(crate) const PROBE_TABLE: &str = "portcullis_probe";

/// `add table` + `delete table` (nft 1.0.6 has no `destroy`): removes our
/// table and a probe table if they exist, in any transaction.
pub(crate) fn remove_table() -> String {
    format!(
        "add table inet {TABLE}\ndelete table inet {TABLE}\n{}",
        remove_probe_table()
    )
}

/// Removes the probe table if it exists.
pub(crate) fn remove_probe_table() -> String {
    format!("add table inet {PROBE_TABLE}\ndelete table inet {PROBE_TABLE}\n")
}

/// Removes a leftover table and installs ours, in one transaction.
pub(crate) fn install_script(plan: &KernelPlan, shape: Shape) -> String {
    let mut s = remove_table();
    s.push_str(&plan.render(shape));
    s
}

/// Replaces every set but the bans and every chain, in one transaction:
/// the sets and chains are flushed, then the table is declared again (nft
/// adds to existing objects: elements to the sets, rules to the chains).
pub(crate) fn update_script(plan: &KernelPlan, shape: Shape) -> String {
    let mut s = String::new();
    for set in LIST_SETS {
        let _ = writeln!(s, "flush set inet {TABLE} {set}");
    }
    // A bans-only table has the base chains alone.
    let base = ["input", "forward", "output"];
    for chain in CHAINS
        .iter()
        .filter(|c| plan.user_space || base.contains(c))
    {
        let _ = writeln!(s, "flush chain inet {TABLE} {chain}");
    }
    s.push_str(&plan.render(shape));
    s
}

/// An nft time: `10m`, `1d2h3m4s5ms`. At least 1 ms (0 would mean "no
/// timeout": a permanent element).
pub(crate) fn nft_time(d: Duration) -> String {
    let ms = d.min(MAX_BAN).as_millis().max(1);
    let mut s = String::new();
    let mut rest = ms;
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        let n = rest / size;
        rest %= size;
        if n > 0 {
            let _ = write!(s, "{n}{unit}");
        }
    }
    s
}

fn ban_set(addr: &IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "ban4",
        IpAddr::V6(_) => "ban6",
    }
}

/// How ban sets take elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BanSets {
    /// The ban sets were declared with `counter` (the declaration below
    /// must match the existing set exactly).
    pub(crate) counters: bool,
    /// The kernel updates an existing element's timeout on `add` (recent
    /// kernels); older ones keep the old timeout.
    pub(crate) timeout_update: bool,
}

/// `add set inet portcullis ban4 { type ...; flags timeout; elements = {...} }`:
/// declaring the (existing, identical) set with elements adds them without
/// the element cache that `add element` loads; nft 1.0.6 fetches every
/// interval set's elements for that, which takes most of a second with
/// 100,000 listed prefixes.
fn add_to_ban_set(s: &mut String, set: &str, counters: bool, elements: &[String]) {
    if elements.is_empty() {
        return;
    }
    let ty = if set == "ban4" {
        "ipv4_addr"
    } else {
        "ipv6_addr"
    };
    // Declared whole: the kernel takes a declaration of an existing set
    // as an update, and one without `gc-interval` would put the kernel's
    // default (a second) back.
    let _ = writeln!(
        s,
        "add set inet {TABLE} {set} {{ type {ty}; flags timeout;{} gc-interval {}ms; elements = {{ {} }} }}",
        if counters { " counter;" } else { "" },
        crate::plan::BAN_GC_INTERVAL_MS,
        elements.join(", ")
    );
}

fn delete_from_ban_set(s: &mut String, set: &str, elements: &[String]) {
    if !elements.is_empty() {
        let _ = writeln!(
            s,
            "delete element inet {TABLE} {set} {{ {} }}",
            elements.join(", ")
        );
    }
}

/// Sets each ban's timeout, new or not, in one transaction. With
/// `timeout_update`, one `add` does it. Otherwise: `add` (a no-op for an
/// existing element), `delete` (now certain to succeed), `add` again.
/// `bans` must hold each address once and non-zero durations.
pub(crate) fn ban_script(bans: &[(IpAddr, Duration)], sets: BanSets) -> String {
    let mut s = String::new();
    for set in ["ban4", "ban6"] {
        let mine: Vec<&(IpAddr, Duration)> =
            bans.iter().filter(|(a, _)| ban_set(a) == set).collect();
        let timed: Vec<String> = mine
            .iter()
            .map(|(a, d)| format!("{a} timeout {}", nft_time(*d)))
            .collect();
        add_to_ban_set(&mut s, set, sets.counters, &timed);
        if !sets.timeout_update {
            let bare: Vec<String> = mine.iter().map(|(a, _)| a.to_string()).collect();
            delete_from_ban_set(&mut s, set, &bare);
            add_to_ban_set(&mut s, set, sets.counters, &timed);
        }
    }
    s
}

/// Replaces the contents of both ban sets with `bans`, in one transaction:
/// what a failed batch or a full set left behind (stale or missing
/// elements) is gone after it.
pub(crate) fn resync_script(bans: &[(IpAddr, Duration)], sets: BanSets) -> String {
    let mut s = String::new();
    for set in ["ban4", "ban6"] {
        let _ = writeln!(s, "flush set inet {TABLE} {set}");
        let timed: Vec<String> = bans
            .iter()
            .filter(|(a, _)| ban_set(a) == set)
            .map(|(a, d)| format!("{a} timeout {}", nft_time(*d)))
            .collect();
        add_to_ban_set(&mut s, set, sets.counters, &timed);
    }
    s
}

/// Lifts bans, whether they exist or not, in one transaction. With
/// `timeout_update`: a 1 ms timeout (the kernel then treats the element as
/// gone and collects it). Otherwise `add` (with a short timeout, so that
/// nothing permanent can be left) then `delete`.
pub(crate) fn unban_script(addrs: &[IpAddr], sets: BanSets) -> String {
    let mut s = String::new();
    for set in ["ban4", "ban6"] {
        let mine: Vec<&IpAddr> = addrs.iter().filter(|a| ban_set(a) == set).collect();
        if sets.timeout_update {
            let timed: Vec<String> = mine.iter().map(|a| format!("{a} timeout 1ms")).collect();
            add_to_ban_set(&mut s, set, sets.counters, &timed);
        } else {
            let timed: Vec<String> = mine.iter().map(|a| format!("{a} timeout 1s")).collect();
            add_to_ban_set(&mut s, set, sets.counters, &timed);
            let bare: Vec<String> = mine.iter().map(|a| a.to_string()).collect();
            delete_from_ban_set(&mut s, set, &bare);
        }
    }
    s
}

/// The live probe for [`BanSets::timeout_update`], step 1: a chainless
/// throwaway table (it sees no packets) with one timeout element. Step 2
/// adds the element again with a longer timeout; step 3 reads it back.
pub(crate) fn probe_timeout_update(step: u8) -> String {
    let t = if step == 1 { "1h" } else { "2h" };
    let mut s = String::new();
    if step == 1 {
        s.push_str(&remove_probe_table());
        let _ = writeln!(s, "add table inet {PROBE_TABLE}");
    }
    let _ = writeln!(
        s,
        "add set inet {PROBE_TABLE} t {{ type ipv4_addr; flags timeout; elements = {{ 198.18.255.254 timeout {t} }} }}"
    );
    s
}

/// A throwaway table for `nft -c` (check only: the kernel validates the
/// transaction, nothing is created). With what every install needs:
/// interval sets, a timeout set (with per-element counters if
/// `ban_counters`), ct state, limit, marks.
pub(crate) fn probe_basic(ban_counters: bool) -> String {
    format!(
        "table inet portcullis_probe {{\n\
         \tset s {{ type ipv4_addr; flags interval; elements = {{ 198.18.0.0/15 }} }}\n\
         \tset b {{ type ipv4_addr; flags timeout;{} }}\n\
         \tchain c {{ type filter hook input priority {}; policy accept;\n\
         \t\tip saddr @b counter drop\n\
         \t\tip saddr @s ct state new,invalid,untracked limit rate 10/second burst 20 packets meta mark set meta mark | 0x1 accept\n\
         \t\tmeta l4proto {{ tcp, udp }} th dport 53 accept\n\
         \t}}\n\
         }}\n",
        if ban_counters { " counter;" } else { "" },
        crate::plan::PRIORITY
    )
}

/// A throwaway chain with the nft `queue` statement, for `nft -c`.
pub(crate) fn probe_queue() -> &'static str {
    "table inet portcullis_probe {\n\tchain q {\n\t\tqueue num 0 bypass\n\t}\n}\n"
}

/// One element of a ban set, as `nft -j list set` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanEntry {
    pub addr: IpAddr,
    /// The timeout the ban was set with (whole seconds: nft's JSON output
    /// has no more precision).
    pub timeout: Option<Duration>,
    /// Time left (whole seconds, rounded down).
    pub expires_in: Option<Duration>,
    /// Packets dropped because of this ban (with per-element counters).
    pub packets: Option<u64>,
    /// Bytes dropped because of this ban.
    pub bytes: Option<u64>,
}

/// The elements of the sets in `nft -j list set ...` output.
pub(crate) fn parse_ban_set(json: &str) -> Result<Vec<BanEntry>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no \"nftables\" array")?;
    let mut out = Vec::new();
    for item in items {
        let Some(set) = item.get("set") else {
            continue;
        };
        let Some(elems) = set.get("elem").and_then(Value::as_array) else {
            continue; // an empty set has no "elem"
        };
        for e in elems {
            // A bare value, or {"elem": {"val": ..., "timeout": ..., ...}}.
            let (val, info) = match e.get("elem") {
                Some(inner) => (inner.get("val"), Some(inner)),
                None => (Some(e), None),
            };
            let addr = val
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<IpAddr>().ok())
                .ok_or_else(|| format!("element {e} is not an address"))?;
            let secs = |k: &str| {
                info.and_then(|i| i.get(k))
                    .and_then(Value::as_u64)
                    .map(Duration::from_secs)
            };
            let counter = |k: &str| {
                info.and_then(|i| i.get("counter"))
                    .and_then(|c| c.get(k))
                    .and_then(Value::as_u64)
            };
            out.push(BanEntry {
                addr,
                timeout: secs("timeout"),
                expires_in: secs("expires"),
                packets: counter("packets"),
                bytes: counter("bytes"),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(nft_time(Duration::from_secs(600)), "10m");
        assert_eq!(nft_time(Duration::from_millis(2500)), "2s500ms");
        assert_eq!(nft_time(Duration::from_millis(93_784_005)), "1d2h3m4s5ms");
        // Never 0: that would be a permanent element.
        assert_eq!(nft_time(Duration::ZERO), "1ms");
        assert_eq!(nft_time(Duration::from_micros(10)), "1ms");
        assert_eq!(nft_time(Duration::MAX), "3650d");
    }

    #[test]
    fn ban_and_unban_scripts() {
        let bans = [
            ("198.18.0.9".parse().unwrap(), Duration::from_secs(2)),
            ("2001:2::9".parse().unwrap(), Duration::from_secs(600)),
            ("198.18.0.10".parse().unwrap(), Duration::from_secs(60)),
        ];
        let new = BanSets {
            counters: true,
            timeout_update: true,
        };
        assert_eq!(
            ban_script(&bans, new),
            "add set inet portcullis ban4 { type ipv4_addr; flags timeout; counter; gc-interval 100ms; elements = { 198.18.0.9 timeout 2s, 198.18.0.10 timeout 1m } }\n\
             add set inet portcullis ban6 { type ipv6_addr; flags timeout; counter; gc-interval 100ms; elements = { 2001:2::9 timeout 10m } }\n"
        );
        let old = BanSets {
            counters: false,
            timeout_update: false,
        };
        assert_eq!(
            ban_script(&bans[1..2], old),
            "add set inet portcullis ban6 { type ipv6_addr; flags timeout; gc-interval 100ms; elements = { 2001:2::9 timeout 10m } }\n\
             delete element inet portcullis ban6 { 2001:2::9 }\n\
             add set inet portcullis ban6 { type ipv6_addr; flags timeout; gc-interval 100ms; elements = { 2001:2::9 timeout 10m } }\n"
        );
        assert_eq!(
            unban_script(&["2001:2::9".parse().unwrap()], new),
            "add set inet portcullis ban6 { type ipv6_addr; flags timeout; counter; gc-interval 100ms; elements = { 2001:2::9 timeout 1ms } }\n"
        );
        assert_eq!(
            resync_script(&bans[..2], new),
            "flush set inet portcullis ban4\n\
             add set inet portcullis ban4 { type ipv4_addr; flags timeout; counter; gc-interval 100ms; elements = { 198.18.0.9 timeout 2s } }\n\
             flush set inet portcullis ban6\n\
             add set inet portcullis ban6 { type ipv6_addr; flags timeout; counter; gc-interval 100ms; elements = { 2001:2::9 timeout 10m } }\n"
        );
        assert_eq!(
            resync_script(&[], new),
            "flush set inet portcullis ban4\nflush set inet portcullis ban6\n"
        );
        assert_eq!(
            unban_script(&["198.18.0.9".parse().unwrap()], old),
            "add set inet portcullis ban4 { type ipv4_addr; flags timeout; gc-interval 100ms; elements = { 198.18.0.9 timeout 1s } }\n\
             delete element inet portcullis ban4 { 198.18.0.9 }\n"
        );
        assert_eq!(ban_script(&[], new), "");
        assert_eq!(
            probe_timeout_update(1),
            "add table inet portcullis_probe\ndelete table inet portcullis_probe\n\
             add table inet portcullis_probe\n\
             add set inet portcullis_probe t { type ipv4_addr; flags timeout; elements = { 198.18.255.254 timeout 1h } }\n"
        );
    }

    #[test]
    fn ban_sets_parse() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"set": {"family": "inet", "name": "ban4", "table": "portcullis", "type": "ipv4_addr", "handle": 2, "flags": ["timeout"], "elem": [{"elem": {"val": "198.18.0.5", "timeout": 20, "expires": 19, "counter": {"packets": 3, "bytes": 252}}}, "198.18.0.6"], "stmt": [{"counter": null}]}}]}"#;
        let v = parse_ban_set(json).unwrap();
        assert_eq!(
            v,
            [
                BanEntry {
                    addr: "198.18.0.5".parse().unwrap(),
                    timeout: Some(Duration::from_secs(20)),
                    expires_in: Some(Duration::from_secs(19)),
                    packets: Some(3),
                    bytes: Some(252),
                },
                BanEntry {
                    addr: "198.18.0.6".parse().unwrap(),
                    timeout: None,
                    expires_in: None,
                    packets: None,
                    bytes: None,
                }
            ]
        );
        let empty = r#"{"nftables": [{"metainfo": {}}, {"set": {"family": "inet", "name": "ban6", "table": "portcullis", "type": "ipv6_addr", "handle": 3, "flags": ["timeout"]}}]}"#;
        assert_eq!(parse_ban_set(empty).unwrap(), []);
        assert!(parse_ban_set("nope").is_err());
        assert!(
            parse_ban_set(r#"{"nftables": [{"set": {"elem": [{"elem": {"val": 5}}]}}]}"#).is_err()
        );
    }
}
