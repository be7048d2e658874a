//! The CrowdSec decisions we enforce, and what the kernel's sets must
//! change to match them. Pure: time arrives as an argument (milliseconds
//! since the epoch), nothing here runs a program.
//!
//! Guarantees:
//! - **Bounded**: at most `max` values (addresses or ranges), each with at
//!   most [`MAX_PER_VALUE`] decisions. A new value beyond `max` takes the
//!   place of the one whose decisions end soonest, if it ends later; else
//!   it is refused. Both are counted ([`Applied::evicted`]).
//! - **Protected addresses win**: loopback, the `--protect`ed addresses
//!   (the SSH client) and the critical peers are never in the kernel sets:
//!   an address decision on one is refused and counted, a range holding one
//!   gets a hole. (The allowlist wins in the kernel: its accept comes first.)
//! - **Deletions by id**: a deleted decision leaves; the value leaves when
//!   its last decision does. An unknown deletion changes nothing (CrowdSec
//!   repeats them).
//! - **Startup replaces**: a `startup=true` answer is the whole truth; the
//!   kernel sets are then loaded whole in one transaction.
//! - Range decisions (scope `Range`) become disjoint ranges, each with the
//!   longest remaining time of the decisions covering it: an nft interval
//!   set refuses overlaps, and each part must still end on its own time.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use portcullis_crowdsec::{Decision, DecisionKind, Delta, Scope};
use portcullis_kernel::crowdsec::CsRange;

/// Decisions kept for one value (several scenarios may ban one address).
pub const MAX_PER_VALUE: usize = 8;

/// One decision we enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: i64,
    pub origin: String,
    pub scenario: String,
    /// When it ends, ms since the epoch.
    pub until_ms: u64,
}

/// What a pull changed, and what the kernel must do about it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Load everything whole ([`Model::kernel_all`]): a startup answer.
    pub replace: bool,
    /// Addresses to add or re-time in the address sets.
    pub add: Vec<(IpAddr, Duration)>,
    /// Addresses to lift.
    pub remove: Vec<IpAddr>,
    /// The range sets' new contents, when a range changed.
    pub ranges: Option<Vec<CsRange>>,
    /// Decisions taken in.
    pub added: u64,
    /// Decisions lifted.
    pub deleted: u64,
    /// Deletions of decisions we did not hold.
    pub unknown_deletions: u64,
    /// Decisions of a type not enforced (`crowdsec.decision_types`).
    pub ignored_type: u64,
    /// Address decisions on a protected address.
    pub protected: u64,
    /// Values dropped or refused because `max` was reached.
    pub evicted: u64,
}

impl Applied {
    /// Nothing for the kernel.
    pub fn is_empty(&self) -> bool {
        !self.replace && self.add.is_empty() && self.remove.is_empty() && self.ranges.is_none()
    }
}

/// The decisions in force, by value.
#[derive(Debug)]
pub struct Model {
    values: HashMap<IpNet, Vec<Entry>>,
    /// (end of the value's longest decision, value): eviction order.
    by_end: BTreeSet<(u64, IpNet)>,
    max: usize,
    types: Vec<DecisionKind>,
    protected: Vec<IpNet>,
}

fn is_host(n: &IpNet) -> bool {
    n.prefix_len() == n.max_prefix_len()
}

fn end_of(entries: &[Entry]) -> u64 {
    entries.iter().map(|e| e.until_ms).max().unwrap_or(0)
}

fn left(until_ms: u64, now_ms: u64) -> Duration {
    Duration::from_millis(until_ms.saturating_sub(now_ms))
}

impl Model {
    /// At most `max` values; `types` enforced; `protected` never banned
    /// (loopback is added here).
    pub fn new(max: usize, types: Vec<DecisionKind>, protected: Vec<IpNet>) -> Self {
        let mut protected = protected;
        if let Ok(lo) = "127.0.0.0/8".parse() {
            protected.push(lo);
        }
        protected.push(IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        protected.sort();
        protected.dedup();
        Self {
            values: HashMap::new(),
            by_end: BTreeSet::new(),
            max: max.max(1),
            types,
            protected,
        }
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// The decisions on `addr`: its own, then the ranges holding it.
    pub fn lookup(&self, addr: IpAddr) -> Vec<(IpNet, Entry)> {
        let addr = addr.to_canonical();
        let mut out: Vec<(IpNet, Entry)> = Vec::new();
        let host = IpNet::from(addr);
        if let Some(v) = self.values.get(&host) {
            out.extend(v.iter().map(|e| (host, e.clone())));
        }
        for plen in (0..host.max_prefix_len()).rev() {
            if let Ok(n) = IpNet::new(addr, plen).map(|n| n.trunc()) {
                if let Some(v) = self.values.get(&n) {
                    out.extend(v.iter().map(|e| (n, e.clone())));
                }
            }
        }
        out
    }

    /// Every value with its longest decision, soonest ending first, at
    /// most `limit`.
    pub fn list(&self, limit: usize) -> Vec<(IpNet, Entry)> {
        self.by_end
            .iter()
            .filter_map(|(_, net)| {
                let v = self.values.get(net)?;
                let best = v.iter().max_by_key(|e| e.until_ms)?;
                Some((*net, best.clone()))
            })
            .take(limit)
            .collect()
    }

    fn is_protected(&self, a: IpAddr) -> bool {
        self.protected.iter().any(|n| n.contains(&a))
    }

    /// Forgets values whose decisions have all ended (the kernel expired
    /// them by itself).
    fn expire(&mut self, now_ms: u64) -> bool {
        let mut ranges = false;
        while let Some(&(end, net)) = self.by_end.first() {
            if end > now_ms {
                break;
            }
            self.by_end.pop_first();
            self.values.remove(&net);
            ranges |= !is_host(&net);
        }
        ranges
    }

    /// Takes in one answer of the stream. `startup`: it replaces
    /// everything.
    pub fn apply(&mut self, delta: &Delta, startup: bool, now_ms: u64) -> Applied {
        let mut out = Applied::default();
        let mut ranges_changed = self.expire(now_ms);
        // Net change per address: the last word wins.
        let mut touched: BTreeMap<IpAddr, ()> = BTreeMap::new();
        if startup {
            self.values.clear();
            self.by_end.clear();
            out.replace = true;
        } else {
            for d in &delta.deleted {
                let net = d.value;
                let Some(entries) = self.values.get_mut(&net) else {
                    out.unknown_deletions += 1;
                    continue;
                };
                let before = end_of(entries);
                let n = entries.len();
                entries.retain(|e| e.id != d.id);
                if entries.len() == n {
                    out.unknown_deletions += 1;
                    continue;
                }
                out.deleted += 1;
                let after = end_of(entries);
                let empty = entries.is_empty();
                self.by_end.remove(&(before, net));
                if empty {
                    self.values.remove(&net);
                } else {
                    self.by_end.insert((after, net));
                }
                if is_host(&net) {
                    touched.insert(net.addr(), ());
                } else {
                    ranges_changed = true;
                }
            }
        }
        for d in &delta.new {
            if !self.types.contains(&d.kind) {
                out.ignored_type += 1;
                continue;
            }
            if d.duration.is_zero() {
                continue;
            }
            let net = match d.scope {
                Scope::Ip | Scope::Range => d.value.trunc(),
            };
            if is_host(&net) && self.is_protected(net.addr()) {
                out.protected += 1;
                continue;
            }
            let until_ms =
                now_ms.saturating_add(d.duration.as_millis().min(u64::MAX as u128) as u64);
            if self.insert(net, d, until_ms, &mut out, &mut ranges_changed) {
                out.added += 1;
                if is_host(&net) {
                    touched.insert(net.addr(), ());
                } else {
                    ranges_changed = true;
                }
            }
        }
        if out.replace {
            return out;
        }
        for (a, ()) in touched {
            match self.values.get(&IpNet::from(a)) {
                Some(v) => out.add.push((a, left(end_of(v), now_ms))),
                None => out.remove.push(a),
            }
        }
        if ranges_changed {
            out.ranges = Some(self.kernel_ranges(now_ms));
        }
        out
    }

    /// Adds one decision; false if refused (full of longer ones).
    fn insert(
        &mut self,
        net: IpNet,
        d: &Decision,
        until_ms: u64,
        out: &mut Applied,
        ranges_changed: &mut bool,
    ) -> bool {
        let entry = Entry {
            id: d.id,
            origin: d.origin.clone(),
            scenario: d.scenario.clone(),
            until_ms,
        };
        if let Some(entries) = self.values.get_mut(&net) {
            let before = end_of(entries);
            if let Some(e) = entries.iter_mut().find(|e| e.id == d.id) {
                *e = entry;
            } else if entries.len() < MAX_PER_VALUE {
                entries.push(entry);
            } else if let Some(shortest) = entries.iter_mut().min_by_key(|e| e.until_ms) {
                if shortest.until_ms >= until_ms {
                    return false;
                }
                *shortest = entry;
            }
            let after = end_of(entries);
            self.by_end.remove(&(before, net));
            self.by_end.insert((after, net));
            return true;
        }
        if self.values.len() >= self.max {
            let Some(&(end, victim)) = self.by_end.first() else {
                return false;
            };
            out.evicted += 1;
            if end >= until_ms {
                return false;
            }
            self.by_end.pop_first();
            self.values.remove(&victim);
            if is_host(&victim) {
                if !out.replace {
                    out.remove.push(victim.addr());
                }
            } else {
                *ranges_changed = true;
            }
        }
        self.values.insert(net, vec![entry]);
        self.by_end.insert((until_ms, net));
        true
    }

    /// Everything for a whole load: addresses with their time left, and
    /// the disjoint ranges.
    pub fn kernel_all(&self, now_ms: u64) -> (Vec<(IpAddr, Duration)>, Vec<CsRange>) {
        let addrs = self
            .values
            .iter()
            .filter(|(n, _)| is_host(n))
            .map(|(n, v)| (n.addr(), left(end_of(v), now_ms)))
            .filter(|(_, d)| !d.is_zero())
            .collect();
        (addrs, self.kernel_ranges(now_ms))
    }

    /// The range decisions as disjoint ranges, each with the longest time
    /// left among the decisions covering it, holes at protected addresses.
    pub fn kernel_ranges(&self, now_ms: u64) -> Vec<CsRange> {
        let mut out = Vec::new();
        for v4 in [true, false] {
            let ranges: Vec<(u128, u128, u64)> = self
                .values
                .iter()
                .filter(|(n, _)| !is_host(n) && matches!(n, IpNet::V4(_)) == v4)
                .map(|(n, v)| (to_u128(n.network()), to_u128(n.broadcast()), end_of(v)))
                .filter(|(_, _, end)| *end > now_ms)
                .collect();
            let holes: Vec<(u128, u128)> = self
                .protected
                .iter()
                .filter(|n| matches!(n, IpNet::V4(_)) == v4)
                .map(|n| (to_u128(n.network()), to_u128(n.broadcast())))
                .collect();
            for (first, last, end) in segments(ranges, &holes) {
                out.push(CsRange {
                    first: from_u128(first, v4),
                    last: from_u128(last, v4),
                    timeout: left(end, now_ms),
                });
            }
        }
        out
    }
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(x: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(u32::try_from(x).unwrap_or(u32::MAX)))
    } else {
        IpAddr::V6(Ipv6Addr::from(x))
    }
}

/// Disjoint `(first, last, end)` pieces covering the union of `ranges`
/// minus `holes`; each piece ends at the latest end of the ranges covering
/// it; neighbours with the same end are merged. A sweep: O(n log n).
pub fn segments(
    mut ranges: Vec<(u128, u128, u64)>,
    holes: &[(u128, u128)],
) -> Vec<(u128, u128, u64)> {
    if ranges.is_empty() {
        return Vec::new();
    }
    // Boundaries: where coverage may change. `None` is "past the end".
    let mut points: Vec<u128> = Vec::with_capacity(2 * (ranges.len() + holes.len()));
    for &(s, e, _) in &ranges {
        points.push(s);
        if let Some(n) = e.checked_add(1) {
            points.push(n);
        }
    }
    for &(s, e) in holes {
        points.push(s);
        if let Some(n) = e.checked_add(1) {
            points.push(n);
        }
    }
    points.sort_unstable();
    points.dedup();
    ranges.sort_unstable();
    let mut holes: Vec<(u128, u128)> = holes.to_vec();
    holes.sort_unstable();
    // Max-heap of (end, last) of the ranges open at the current point.
    let mut open: BinaryHeap<(u64, u128)> = BinaryHeap::new();
    let mut next = 0;
    let mut hole_i = 0;
    let mut out: Vec<(u128, u128, u64)> = Vec::new();
    for (i, &p) in points.iter().enumerate() {
        while next < ranges.len() && ranges[next].0 <= p {
            let (_, e, end) = ranges[next];
            open.push((end, e));
            next += 1;
        }
        while open.peek().is_some_and(|&(_, e)| e < p) {
            open.pop();
        }
        // Closed ranges may stay below the top: any with a later end
        // would be on top and popped above, so the top is open and has
        // the latest end of the open ones.
        let Some(&(end, _)) = open.peek() else {
            continue;
        };
        let seg_last = match points.get(i + 1) {
            Some(&n) => n - 1,
            None => u128::MAX,
        };
        while hole_i < holes.len() && holes[hole_i].1 < p {
            hole_i += 1;
        }
        if holes
            .get(hole_i)
            .is_some_and(|&(hs, he)| hs <= p && seg_last <= he)
        {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.2 == end && last.1.checked_add(1) == Some(p) => last.1 = seg_last,
            _ => out.push((p, seg_last, end)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use portcullis_crowdsec::ParseStats;

    fn d(id: i64, value: &str, secs: u64) -> Decision {
        let value: IpNet = value
            .parse()
            .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
            .unwrap();
        Decision {
            id,
            origin: "cscli".into(),
            scenario: "test".into(),
            scope: if is_host(&value) {
                Scope::Ip
            } else {
                Scope::Range
            },
            value,
            kind: DecisionKind::Ban,
            duration: Duration::from_secs(secs),
        }
    }

    fn delta(new: Vec<Decision>, deleted: Vec<Decision>) -> Delta {
        Delta {
            new,
            deleted,
            stats: ParseStats::default(),
        }
    }

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn model() -> Model {
        Model::new(
            100,
            vec![DecisionKind::Ban],
            vec!["198.18.9.9/32".parse().unwrap()],
        )
    }

    const T: u64 = 1_000_000;

    #[test]
    fn startup_replaces_then_deltas_add_and_lift() {
        let mut m = model();
        let r = m.apply(
            &delta(vec![d(1, "198.18.0.5", 60), d(2, "2001:2::5", 60)], vec![]),
            true,
            T,
        );
        assert!(r.replace);
        assert_eq!(r.added, 2);
        let (addrs, ranges) = m.kernel_all(T);
        assert_eq!(addrs.len(), 2);
        assert!(ranges.is_empty());

        let r = m.apply(
            &delta(vec![d(3, "198.18.0.6", 30)], vec![d(1, "198.18.0.5", 0)]),
            false,
            T,
        );
        assert!(!r.replace);
        assert_eq!(r.add, [(a("198.18.0.6"), Duration::from_secs(30))]);
        assert_eq!(r.remove, [a("198.18.0.5")]);
        assert_eq!(r.ranges, None);
        // Repeated deletion: a no-op.
        let r = m.apply(
            &delta(vec![], vec![d(1, "198.18.0.5", 0), d(99, "198.18.7.7", 0)]),
            false,
            T,
        );
        assert!(r.is_empty());
        assert_eq!(r.unknown_deletions, 2);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_second_decision_keeps_the_address_until_its_own_end() {
        let mut m = model();
        m.apply(
            &delta(
                vec![d(1, "198.18.0.5", 60), d(2, "198.18.0.5", 600)],
                vec![],
            ),
            false,
            T,
        );
        let r = m.apply(&delta(vec![], vec![d(2, "198.18.0.5", 0)]), false, T);
        assert_eq!(r.add, [(a("198.18.0.5"), Duration::from_secs(60))]);
        assert!(r.remove.is_empty());
        let r = m.apply(&delta(vec![], vec![d(1, "198.18.0.5", 0)]), false, T);
        assert_eq!(r.remove, [a("198.18.0.5")]);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn protected_loopback_and_other_types_are_refused() {
        let mut m = model();
        let mut captcha = d(4, "198.18.0.8", 60);
        captcha.kind = DecisionKind::Captcha;
        let r = m.apply(
            &delta(
                vec![
                    d(1, "198.18.9.9", 60),
                    d(2, "127.0.0.1", 60),
                    d(3, "::1", 60),
                    captcha,
                ],
                vec![],
            ),
            false,
            T,
        );
        assert_eq!(r.protected, 3);
        assert_eq!(r.ignored_type, 1);
        assert!(r.is_empty());
        // A range over a protected address gets a hole.
        let r = m.apply(&delta(vec![d(5, "198.18.9.0/24", 60)], vec![]), false, T);
        let ranges = r.ranges.unwrap();
        assert_eq!(
            ranges,
            [
                CsRange {
                    first: a("198.18.9.0"),
                    last: a("198.18.9.8"),
                    timeout: Duration::from_secs(60)
                },
                CsRange {
                    first: a("198.18.9.10"),
                    last: a("198.18.9.255"),
                    timeout: Duration::from_secs(60)
                },
            ]
        );
    }

    #[test]
    fn nested_ranges_become_disjoint_pieces_with_the_longest_time() {
        let mut m = model();
        let r = m.apply(
            &delta(
                vec![
                    d(1, "198.18.0.0/16", 60),
                    d(2, "198.18.4.0/24", 600),
                    d(3, "2001:2::/64", 5),
                ],
                vec![],
            ),
            false,
            T,
        );
        let ranges = r.ranges.unwrap();
        let s = |x: &CsRange| format!("{}-{} {}", x.first, x.last, x.timeout.as_secs());
        assert_eq!(
            ranges.iter().map(s).collect::<Vec<_>>(),
            [
                "198.18.0.0-198.18.3.255 60",
                "198.18.4.0-198.18.4.255 600",
                // The protected 198.18.9.9 is left out.
                "198.18.5.0-198.18.9.8 60",
                "198.18.9.10-198.18.255.255 60",
                "2001:2::-2001:2::ffff:ffff:ffff:ffff 5",
            ]
        );
        // The outer one deleted: the inner stays.
        let r = m.apply(&delta(vec![], vec![d(1, "198.18.0.0/16", 0)]), false, T);
        assert_eq!(
            r.ranges.unwrap().iter().map(s).collect::<Vec<_>>()[0],
            "198.18.4.0-198.18.4.255 600"
        );
        // Time passes: the IPv6 range is gone from the model too.
        let later = T + 10_000;
        let r = m.apply(&delta(vec![], vec![]), false, later);
        assert_eq!(r.ranges.unwrap().len(), 1);
        assert_eq!(m.lookup(a("198.18.4.7")).len(), 1);
        assert_eq!(m.lookup(a("2001:2::1")).len(), 0);
    }

    #[test]
    fn full_model_drops_the_soonest_ending_first() {
        let mut m = Model::new(2, vec![DecisionKind::Ban], vec![]);
        m.apply(
            &delta(
                vec![d(1, "198.18.0.1", 10), d(2, "198.18.0.2", 100)],
                vec![],
            ),
            false,
            T,
        );
        let r = m.apply(&delta(vec![d(3, "198.18.0.3", 50)], vec![]), false, T);
        assert_eq!(r.evicted, 1);
        assert_eq!(r.remove, [a("198.18.0.1")]);
        assert_eq!(r.add, [(a("198.18.0.3"), Duration::from_secs(50))]);
        // Shorter than everything held: refused, counted.
        let r = m.apply(&delta(vec![d(4, "198.18.0.4", 5)], vec![]), false, T);
        assert_eq!((r.evicted, r.added), (1, 0));
        assert!(r.is_empty());
        assert_eq!(m.len(), 2);
        let listed: Vec<IpNet> = m.list(10).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            listed,
            [
                "198.18.0.3/32".parse::<IpNet>().unwrap(),
                "198.18.0.2/32".parse().unwrap()
            ]
        );
    }

    #[test]
    fn segments_match_a_brute_force_count() {
        // Small universe: every point checked.
        let mut seed = 7u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..300 {
            let ranges: Vec<(u128, u128, u64)> = (0..rnd(6))
                .map(|_| {
                    let s = rnd(60) as u128;
                    (s, s + rnd(20) as u128, 1 + rnd(5))
                })
                .collect();
            let holes: Vec<(u128, u128)> = (0..rnd(3))
                .map(|_| {
                    let s = rnd(80) as u128;
                    (s, s + rnd(3) as u128)
                })
                .collect();
            let segs = segments(ranges.clone(), &holes);
            for w in segs.windows(2) {
                assert!(w[0].1 < w[1].0, "overlap {segs:?}");
            }
            for p in 0..100u128 {
                let want = if holes.iter().any(|&(s, e)| s <= p && p <= e) {
                    None
                } else {
                    ranges
                        .iter()
                        .filter(|&&(s, e, _)| s <= p && p <= e)
                        .map(|r| r.2)
                        .max()
                };
                let got = segs
                    .iter()
                    .find(|&&(s, e, _)| s <= p && p <= e)
                    .map(|r| r.2);
                assert_eq!(
                    got, want,
                    "point {p}: {ranges:?} holes {holes:?} -> {segs:?}"
                );
            }
        }
    }
}
