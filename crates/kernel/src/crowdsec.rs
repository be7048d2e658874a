//! The CrowdSec decision sets of fleet mode, kept apart from our own bans.
//!
//! Four sets in our table, declared when [`KernelPlan::crowdsec`] is set:
//!
//! - `cs4` / `cs6`: single addresses (CrowdSec scope `Ip`), hash sets with
//!   per-element timeouts (the decision's remaining time);
//! - `csr4` / `csr6`: ranges (scope `Range`), interval sets with timeouts.
//!
//! Each drops right after our own ban sets (after loopback and the
//! allowlist, which always win), and the first rule of each chain (the
//! established-flow accept) checks them like the ban sets.
//!
//! **Why two kinds of set.** nft 1.0.6 checks every new element of an
//! interval set against all its elements in user space: adding 5,000
//! addresses to an interval set of 100,000 ran for minutes here, while a
//! hash set takes 100,000 in 0.3 s and a delta of 10,000 in 50 ms. Ranges
//! are few in CrowdSec's feeds, so the range sets are rewritten whole
//! (flush + add, one transaction) whenever one changes. An interval set
//! also refuses overlapping elements: the caller hands over disjoint
//! ranges (each with the longest remaining time of the decisions covering
//! it), see `crates/portcullis/src/fleet/model.rs`.
//!
//! Every change is one `nft -f -` transaction: a failed one leaves the
//! previous contents.
//!
//! [`KernelPlan::crowdsec`]: crate::KernelPlan::crowdsec

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::conntrack::{self, Doomed};
use crate::error::KernelError;
use crate::nfnl::Nfnl;
use crate::nft::{nft_time, MAX_BAN};
use crate::plan::TABLE;
use crate::runner::{run, Runner};

/// The four sets: addresses and ranges, IPv4 and IPv6.
pub const SETS: [&str; 4] = ["cs4", "csr4", "cs6", "csr6"];

/// Elements per `add set` statement (keeps nft's error lines short enough
/// and its parser's memory low).
const CHUNK: usize = 10_000;

/// The sets of family `fam` (`ip` or `ip6`).
pub(crate) fn sets_of(fam: &str) -> [&'static str; 2] {
    if fam == "ip" {
        ["cs4", "csr4"]
    } else {
        ["cs6", "csr6"]
    }
}

fn decl(set: &str) -> &'static str {
    match set {
        "cs4" => "type ipv4_addr; flags timeout;",
        "cs6" => "type ipv6_addr; flags timeout;",
        "csr4" => "type ipv4_addr; flags interval, timeout;",
        _ => "type ipv6_addr; flags interval, timeout;",
    }
}

/// The set declarations inside our table block, `max` elements each.
pub(crate) fn declare_sets(s: &mut String, max: usize) {
    for set in SETS {
        let _ = writeln!(s, "\tset {set} {{ {} size {max}; }}", decl(set));
    }
}

/// One range of a range set: `first..=last`, same family, with its
/// remaining time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsRange {
    pub first: IpAddr,
    pub last: IpAddr,
    pub timeout: Duration,
}

fn addr_set(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "cs4"
    } else {
        "cs6"
    }
}

/// `add set inet portcullis SET { ...; elements = { ... } }`, in chunks:
/// declaring the existing set with elements adds them without the
/// element cache `add element` loads first.
fn add(s: &mut String, set: &str, elements: &[String]) {
    for chunk in elements.chunks(CHUNK) {
        let _ = writeln!(
            s,
            "add set inet {TABLE} {set} {{ {} elements = {{ {} }} }}",
            decl(set),
            chunk.join(", ")
        );
    }
}

fn timed_addrs(addrs: &[(IpAddr, Duration)], set: &str) -> Vec<String> {
    addrs
        .iter()
        .filter(|(a, d)| addr_set(a) == set && !d.is_zero())
        .map(|(a, d)| format!("{a} timeout {}", nft_time(*d)))
        .collect()
}

fn timed_ranges(ranges: &[CsRange], v4: bool) -> Vec<String> {
    live(ranges)
        .filter(|r| r.first.is_ipv4() == v4)
        .map(|r| {
            let t = nft_time(r.timeout);
            if r.first == r.last {
                format!("{} timeout {t}", r.first)
            } else {
                format!("{}-{} timeout {t}", r.first, r.last)
            }
        })
        .collect()
}

fn ranges_script(s: &mut String, ranges: &[CsRange]) {
    for (set, v4) in [("csr4", true), ("csr6", false)] {
        let _ = writeln!(s, "flush set inet {TABLE} {set}");
        add(s, set, &timed_ranges(ranges, v4));
    }
}

/// Empties the four sets and loads `addrs` and `ranges`, in one
/// transaction. Zero durations are left out (they would mean "forever").
pub fn replace_script(addrs: &[(IpAddr, Duration)], ranges: &[CsRange]) -> String {
    let mut s = String::with_capacity(64 + 40 * addrs.len() + 80 * ranges.len());
    for set in ["cs4", "cs6"] {
        let _ = writeln!(s, "flush set inet {TABLE} {set}");
        add(&mut s, set, &timed_addrs(addrs, set));
    }
    ranges_script(&mut s, ranges);
    s
}

/// Adds (or re-times) `add`, lifts `remove` (present or not), and, when
/// given, replaces the range sets with `ranges`; one transaction.
/// `timeout_update`: see [`crate::Capabilities::timeout_update`].
pub fn update_script(
    add_addrs: &[(IpAddr, Duration)],
    remove: &[IpAddr],
    ranges: Option<&[CsRange]>,
    timeout_update: bool,
) -> String {
    let mut s = String::with_capacity(64 + 40 * (add_addrs.len() + remove.len()));
    for set in ["cs4", "cs6"] {
        let gone: Vec<&IpAddr> = remove.iter().filter(|a| addr_set(a) == set).collect();
        if timeout_update {
            // A 1 ms timeout: the kernel treats the element as gone at
            // once, whether it was there or not.
            let timed: Vec<String> = gone.iter().map(|a| format!("{a} timeout 1ms")).collect();
            add(&mut s, set, &timed);
        } else if !gone.is_empty() {
            // Older kernels: make sure it exists, then delete it.
            let timed: Vec<String> = gone.iter().map(|a| format!("{a} timeout 1s")).collect();
            add(&mut s, set, &timed);
            let bare: Vec<String> = gone.iter().map(|a| a.to_string()).collect();
            for chunk in bare.chunks(CHUNK) {
                let _ = writeln!(
                    s,
                    "delete element inet {TABLE} {set} {{ {} }}",
                    chunk.join(", ")
                );
            }
        }
        let timed = timed_addrs(add_addrs, set);
        if !timeout_update && !timed.is_empty() {
            // Older kernels keep an existing element's timeout on `add`.
            let bare: Vec<String> = add_addrs
                .iter()
                .filter(|(a, d)| addr_set(a) == set && !d.is_zero())
                .map(|(a, _)| format!("{a} timeout 1s"))
                .collect();
            add(&mut s, set, &bare);
            let names: Vec<String> = add_addrs
                .iter()
                .filter(|(a, d)| addr_set(a) == set && !d.is_zero())
                .map(|(a, _)| a.to_string())
                .collect();
            for chunk in names.chunks(CHUNK) {
                let _ = writeln!(
                    s,
                    "delete element inet {TABLE} {set} {{ {} }}",
                    chunk.join(", ")
                );
            }
        }
        add(&mut s, set, &timed);
    }
    if let Some(r) = ranges {
        ranges_script(&mut s, r);
    }
    s
}

/// The ranges of `ranges` that go into the sets: zero timeouts and mixed
/// families are left out.
fn live(ranges: &[CsRange]) -> impl Iterator<Item = &CsRange> {
    ranges
        .iter()
        .filter(|r| !r.timeout.is_zero() && r.first.is_ipv4() == r.last.is_ipv4())
}

fn ends(r: &CsRange) -> (IpAddr, IpAddr) {
    (r.first, r.last)
}

/// A range put into the sets, and when the kernel's timeout ends it (no
/// later than this).
type InForce = (IpAddr, IpAddr, Instant);

/// `ranges` put into the sets at `at`, each until the kernel's timeout
/// ends it: capped at [`MAX_BAN`] as the script caps it (a range whose end
/// a clock cannot hold is left out, so counts as never ended).
fn in_force(ranges: &[CsRange], at: Instant) -> Vec<InForce> {
    live(ranges)
        .filter_map(|r| Some((r.first, r.last, at.checked_add(r.timeout.min(MAX_BAN))?)))
        .collect()
}

/// Of `ranges`, those no single range of `before` still in force at `now`
/// holds whole: the ones whose flows may not have been ended (a range
/// grown or joined with another is ended again, whole: a wider dump, never
/// a missed flow; one the kernel's timeout has ended may have let
/// connections in since).
fn uncovered(
    ranges: impl Iterator<Item = (IpAddr, IpAddr)>,
    before: &[InForce],
    now: Instant,
) -> Vec<(IpAddr, IpAddr)> {
    let holds = |(lo, hi, until): InForce, (first, last): (IpAddr, IpAddr)| {
        until > now && lo.is_ipv4() == first.is_ipv4() && lo <= first && last <= hi
    };
    ranges
        .filter(|r| !before.iter().any(|b| holds(*b, *r)))
        .collect()
}

/// The CrowdSec sets, for the thread that keeps them
/// ([`crate::Firewall::crowdsec_sets`]).
#[derive(Debug, Clone)]
pub struct CrowdsecSets {
    runner: Arc<dyn Runner>,
    timeout_update: bool,
    /// [`crate::Shape::bans_end_flows`]: decisions end their addresses'
    /// connections as bans do.
    bans_end_flows: bool,
    /// The ranges last put into the sets, until when: an update
    /// ends the flows only of ranges these do not already cover (each
    /// range's flows ended when it came; a range that expires or shrinks
    /// ends nothing, where a whole dump per family would be taken again).
    ranges_in: Arc<Mutex<Vec<InForce>>>,
}

impl CrowdsecSets {
    pub(crate) fn new(runner: Arc<dyn Runner>, timeout_update: bool, bans_end_flows: bool) -> Self {
        Self {
            runner,
            timeout_update,
            bans_end_flows,
            ranges_in: Arc::default(),
        }
    }

    /// See [`replace_script`]; then, where bans end flows, the connections
    /// of every address and range in force end.
    pub fn replace(
        &self,
        addrs: &[(IpAddr, Duration)],
        ranges: &[CsRange],
    ) -> Result<(), KernelError> {
        // Before the sets change: the kernel's timeouts end no earlier.
        let at = Instant::now();
        self.nft(&replace_script(addrs, ranges))?;
        let all: Vec<(IpAddr, IpAddr)> = live(ranges).map(ends).collect();
        self.note_ranges(ranges, at);
        self.end_flows(addrs, all)
    }

    /// See [`update_script`]; then, where bans end flows, the connections
    /// of the added addresses end, and of the ranges (when given) that
    /// the ranges put in before do not cover.
    pub fn update(
        &self,
        add: &[(IpAddr, Duration)],
        remove: &[IpAddr],
        ranges: Option<&[CsRange]>,
    ) -> Result<(), KernelError> {
        let script = update_script(add, remove, ranges, self.timeout_update);
        if script.is_empty() {
            return Ok(());
        }
        let at = Instant::now();
        self.nft(&script)?;
        let fresh = match ranges {
            Some(r) => {
                let before = self.ranges_in.lock().map(|g| g.clone()).unwrap_or_default();
                let fresh = uncovered(live(r).map(ends), &before, at);
                self.note_ranges(r, at);
                fresh
            }
            None => Vec::new(),
        };
        self.end_flows(add, fresh)
    }

    /// Notes `ranges` as put into the sets at `at`.
    fn note_ranges(&self, ranges: &[CsRange], at: Instant) {
        if let Ok(mut g) = self.ranges_in.lock() {
            *g = in_force(ranges, at);
        }
    }

    /// Deletes the conntrack entries of the decisions' connections (zero
    /// durations were left out of the sets, and are here).
    fn end_flows(
        &self,
        addrs: &[(IpAddr, Duration)],
        ranges: Vec<(IpAddr, IpAddr)>,
    ) -> Result<(), KernelError> {
        let doomed = Doomed {
            addrs: addrs
                .iter()
                .filter(|(_, d)| !d.is_zero())
                .map(|(a, _)| *a)
                .collect(),
            ranges,
        };
        if !self.bans_end_flows || doomed.is_empty() {
            return Ok(());
        }
        let what = "end the CrowdSec decisions' connections";
        let err = |source| KernelError::Netlink { what, source };
        let mut nl = self
            .runner
            .netfilter_socket()
            .and_then(Nfnl::new)
            .map_err(err)?;
        conntrack::end_flows(&mut nl, &doomed)
            .map(drop)
            .map_err(err)
    }

    /// Elements in the address sets now (`nft -j list set`, two calls):
    /// for tests and benchmarks.
    pub fn addresses(&self) -> Result<Vec<crate::BanEntry>, KernelError> {
        let mut out = crate::list_timed_set(self.runner.as_ref(), "cs4")?;
        out.extend(crate::list_timed_set(self.runner.as_ref(), "cs6")?);
        Ok(out)
    }

    fn nft(&self, script: &str) -> Result<(), KernelError> {
        run(self.runner.as_ref(), "nft", &["-f", "-"], Some(script)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn replace_loads_each_family_and_kind_into_its_set() {
        let addrs = [
            (a("198.18.0.9"), Duration::from_secs(60)),
            (a("2001:2::9"), Duration::from_secs(3600)),
            (a("198.18.0.10"), Duration::ZERO),
        ];
        let ranges = [
            CsRange {
                first: a("198.18.1.0"),
                last: a("198.18.1.255"),
                timeout: Duration::from_secs(90),
            },
            CsRange {
                first: a("2001:2::1:0"),
                last: a("2001:2::1:0"),
                timeout: Duration::from_millis(1500),
            },
        ];
        assert_eq!(
            replace_script(&addrs, &ranges),
            "flush set inet portcullis cs4\n\
             add set inet portcullis cs4 { type ipv4_addr; flags timeout; elements = { 198.18.0.9 timeout 1m } }\n\
             flush set inet portcullis cs6\n\
             add set inet portcullis cs6 { type ipv6_addr; flags timeout; elements = { 2001:2::9 timeout 1h } }\n\
             flush set inet portcullis csr4\n\
             add set inet portcullis csr4 { type ipv4_addr; flags interval, timeout; elements = { 198.18.1.0-198.18.1.255 timeout 1m30s } }\n\
             flush set inet portcullis csr6\n\
             add set inet portcullis csr6 { type ipv6_addr; flags interval, timeout; elements = { 2001:2::1:0 timeout 1s500ms } }\n"
        );
    }

    #[test]
    fn big_loads_are_chunked() {
        let addrs: Vec<(IpAddr, Duration)> = (0..25_000u32)
            .map(|i| (IpAddr::V4((0xC612_0000 + i).into()), Duration::from_secs(5)))
            .collect();
        let s = replace_script(&addrs, &[]);
        assert_eq!(s.matches("add set inet portcullis cs4").count(), 3);
        assert_eq!(s.matches(" timeout 5s").count(), 25_000);
    }

    #[test]
    fn updates_lift_and_add_in_one_transaction() {
        let add = [(a("198.18.0.9"), Duration::from_secs(60))];
        let remove = [a("2001:2::9")];
        assert_eq!(
            update_script(&add, &remove, None, true),
            "add set inet portcullis cs4 { type ipv4_addr; flags timeout; elements = { 198.18.0.9 timeout 1m } }\n\
             add set inet portcullis cs6 { type ipv6_addr; flags timeout; elements = { 2001:2::9 timeout 1ms } }\n"
        );
        assert_eq!(
            update_script(&add, &remove, None, false),
            "add set inet portcullis cs4 { type ipv4_addr; flags timeout; elements = { 198.18.0.9 timeout 1s } }\n\
             delete element inet portcullis cs4 { 198.18.0.9 }\n\
             add set inet portcullis cs4 { type ipv4_addr; flags timeout; elements = { 198.18.0.9 timeout 1m } }\n\
             add set inet portcullis cs6 { type ipv6_addr; flags timeout; elements = { 2001:2::9 timeout 1s } }\n\
             delete element inet portcullis cs6 { 2001:2::9 }\n"
        );
        assert_eq!(update_script(&[], &[], None, true), "");
        // Ranges given: both range sets are rewritten, even to empty.
        assert_eq!(
            update_script(&[], &[], Some(&[]), true),
            "flush set inet portcullis csr4\nflush set inet portcullis csr6\n"
        );
    }

    /// Issue 9: a range decision's flows end when it comes; an update
    /// that only shrinks, splits or drops ranges ends nothing again (each
    /// range taken would be a whole dump per family), one that grows or
    /// adds a range ends that range, and so does one that comes back after
    /// the kernel's timeout ended it (connections may have come in since).
    #[test]
    fn only_ranges_not_held_by_one_before_have_their_flows_ended() {
        let r = |lo: &str, hi: &str| (a(lo), a(hi));
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let before = [
            (a("198.18.0.0"), a("198.18.0.255"), later),
            (a("2001:2::"), a("2001:2::ff"), later),
            (a("198.18.9.0"), a("198.18.9.255"), now),
        ];
        let after = [
            // Split by a hole: both halves were covered.
            r("198.18.0.0", "198.18.0.9"),
            r("198.18.0.20", "198.18.0.255"),
            // Grown past its old end.
            r("2001:2::", "2001:2::1ff"),
            // New.
            r("198.18.5.0", "198.18.5.255"),
            // The same numbers in the other family are not covered.
            r("::ffff:c612:1", "::ffff:c612:2"),
            // Inside a range whose timeout has run out.
            r("198.18.9.1", "198.18.9.2"),
        ];
        assert_eq!(
            uncovered(after.iter().copied(), &before, now),
            vec![after[2], after[3], after[4], after[5]]
        );
        // Zero timeouts and mixed families never go in.
        let cs = |first: &str, last: &str, secs: u64| CsRange {
            first: a(first),
            last: a(last),
            timeout: Duration::from_secs(secs),
        };
        let ranges = [
            cs("198.18.0.0", "198.18.0.9", 60),
            cs("198.18.1.0", "198.18.1.9", 0),
            cs("198.18.2.0", "2001:2::", 60),
        ];
        assert_eq!(
            live(&ranges).map(ends).collect::<Vec<_>>(),
            vec![r("198.18.0.0", "198.18.0.9")]
        );
        // In force as long as the kernel keeps it: the script caps
        // timeouts at MAX_BAN, so the record does too (and a duration no
        // clock could add does not panic).
        let long = [
            cs("198.18.3.0", "198.18.3.9", 60),
            cs("198.18.4.0", "198.18.4.9", 100 * 365 * 24 * 3600),
            cs("198.18.5.0", "198.18.5.9", u64::MAX),
        ];
        assert_eq!(
            in_force(&long, now),
            vec![
                (
                    a("198.18.3.0"),
                    a("198.18.3.9"),
                    now + Duration::from_secs(60)
                ),
                (a("198.18.4.0"), a("198.18.4.9"), now + MAX_BAN),
                (a("198.18.5.0"), a("198.18.5.9"), now + MAX_BAN),
            ]
        );
    }
}
