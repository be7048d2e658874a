//! A bounded least-recently-used table on a dense slab.
//!
//! Entries live in one `Vec` (no allocation per entry, no pointers: links
//! are `u32` indices), doubly linked from most to least recently used, and
//! found through a `hashbrown::HashTable<u32>` that stores only the slot
//! index (the key is stored once, in the slab). Callers hash keys
//! themselves, so one hash of a key serves several tables.
//!
//! **Invariant:** every index held in `index`, `head`, `tail` and in the
//! `prev`/`next` links is either `NIL` or `< slots.len()`; this is what
//! makes the slab indexing below unable to panic.
//!
//! Memory: the slab never grows past `cap` slots (growth is done by hand
//! with `reserve_exact`), and the index is at most twice hashbrown's
//! minimum bucket count for `cap` (tombstones left by evictions can make it
//! grow once; after that it rehashes in place). [`Lru::bytes_bound`] is the
//! resulting worst case, [`Lru::bytes`] the current allocation.

use std::fmt;
use std::mem::size_of;

use hashbrown::HashTable;

const NIL: u32 = u32::MAX;

/// Largest capacity a table accepts (indices are `u32`, `NIL` is reserved).
const MAX_CAP: usize = (u32::MAX - 1) as usize;

struct Slot<K, V> {
    key: K,
    val: V,
    prev: u32,
    next: u32,
}

pub(super) struct Lru<K, V> {
    index: HashTable<u32>,
    slots: Vec<Slot<K, V>>,
    /// Most recently used.
    head: u32,
    /// Least recently used: the next to be evicted.
    tail: u32,
    cap: usize,
}

impl<K: Eq, V> fmt::Debug for Lru<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lru")
            .field("len", &self.slots.len())
            .field("cap", &self.cap)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl<K: Eq, V> Lru<K, V> {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            index: HashTable::new(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            cap: cap.min(MAX_CAP),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn cap(&self) -> usize {
        self.cap
    }

    /// The slot index of `key`, if present.
    pub(super) fn find(&self, hash: u64, key: &K) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(hash, |&i| {
                slots.get(i as usize).is_some_and(|s| s.key == *key)
            })
            .copied()
    }

    pub(super) fn get(&self, i: u32) -> &V {
        &self.slots[i as usize].val
    }

    pub(super) fn get_mut(&mut self, i: u32) -> &mut V {
        &mut self.slots[i as usize].val
    }

    /// The least recently used entry (the next to be evicted).
    pub(super) fn lru(&self) -> Option<u32> {
        (self.tail != NIL).then_some(self.tail)
    }

    /// Marks `i` as the most recently used.
    pub(super) fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    /// Inserts `key`, which must not be present, as the most recently used
    /// entry. At capacity the least recently used entry is evicted first
    /// (its slot is reused in place) and returned. `None` when the table has
    /// capacity 0 and stores nothing.
    pub(super) fn insert(
        &mut self,
        hash: u64,
        key: K,
        val: V,
        hasher: impl Fn(&K) -> u64,
    ) -> Option<(u32, Option<(K, V)>)> {
        if self.cap == 0 {
            return None;
        }
        if self.slots.len() >= self.cap {
            let t = self.tail;
            // Not NIL: the table is full and cap > 0.
            let old_hash = hasher(&self.slots[t as usize].key);
            if let Ok(e) = self.index.find_entry(old_hash, |&j| j == t) {
                e.remove();
            }
            self.unlink(t);
            let slot = &mut self.slots[t as usize];
            let old_key = std::mem::replace(&mut slot.key, key);
            let old_val = std::mem::replace(&mut slot.val, val);
            self.push_front(t);
            self.index_insert(hash, t, &hasher);
            return Some((t, Some((old_key, old_val))));
        }
        if self.slots.len() == self.slots.capacity() {
            let want = (self.slots.capacity() * 2).max(4).min(self.cap);
            self.slots.reserve_exact(want - self.slots.len());
        }
        // Fits in u32: len < cap <= MAX_CAP.
        let i = self.slots.len() as u32;
        self.slots.push(Slot {
            key,
            val,
            prev: NIL,
            next: NIL,
        });
        self.push_front(i);
        self.index_insert(hash, i, &hasher);
        Some((i, None))
    }

    /// Removes entry `i`; the last slot moves into its place.
    pub(super) fn remove(&mut self, i: u32, hasher: impl Fn(&K) -> u64) -> (K, V) {
        let h = hasher(&self.slots[i as usize].key);
        if let Ok(e) = self.index.find_entry(h, |&j| j == i) {
            e.remove();
        }
        self.unlink(i);
        // Not empty: it holds `i`. Fits in u32: len <= cap <= MAX_CAP.
        let last = (self.slots.len() - 1) as u32;
        let removed = self.slots.swap_remove(i as usize);
        if i != last {
            let (prev, next) = {
                let s = &self.slots[i as usize];
                (s.prev, s.next)
            };
            if prev == NIL {
                self.head = i;
            } else {
                self.slots[prev as usize].next = i;
            }
            if next == NIL {
                self.tail = i;
            } else {
                self.slots[next as usize].prev = i;
            }
            let h = hasher(&self.slots[i as usize].key);
            if let Some(j) = self.index.find_mut(h, |&j| j == last) {
                *j = i;
            }
        }
        (removed.key, removed.val)
    }

    /// Gives memory back after a flood has drained away.
    pub(super) fn shrink(&mut self, hasher: impl Fn(&K) -> u64) {
        let len = self.slots.len();
        if self.slots.capacity() > 64 && len * 4 < self.slots.capacity() {
            self.slots.shrink_to(len * 2);
            let slots = &self.slots;
            self.index.shrink_to(len, |&j| {
                slots.get(j as usize).map_or(0, |s| hasher(&s.key))
            });
        }
    }

    /// Bytes allocated now: the slab and the index.
    pub(super) fn bytes(&self) -> usize {
        self.slots.capacity() * size_of::<Slot<K, V>>() + self.index.allocation_size()
    }

    /// The most [`Lru::bytes`] can reach for a table of capacity `cap`.
    pub(super) fn bytes_bound(cap: usize) -> usize {
        if cap == 0 {
            return 0;
        }
        // hashbrown: buckets = next power of two of cap * 8 / 7 (at least
        // 4), one control byte per bucket plus one group; tombstones can
        // double it once.
        let buckets = (cap.saturating_mul(8) / 7).max(4).next_power_of_two();
        let index = 2 * (buckets * (size_of::<u32>() + 1) + 32);
        cap.min(MAX_CAP) * size_of::<Slot<K, V>>() + index
    }

    fn index_insert(&mut self, hash: u64, i: u32, hasher: &impl Fn(&K) -> u64) {
        let slots = &self.slots;
        self.index.insert_unique(hash, i, |&j| {
            slots.get(j as usize).map_or(0, |s| hasher(&s.key))
        });
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        let s = &mut self.slots[i as usize];
        s.prev = NIL;
        s.next = NIL;
    }

    fn push_front(&mut self, i: u32) {
        let head = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = head;
        }
        if head == NIL {
            self.tail = i;
        } else {
            self.slots[head as usize].prev = i;
        }
        self.head = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: &u64) -> u64 {
        // Deliberately poor, to exercise probing on collisions.
        k % 7
    }

    /// Keys from least to most recently used, walking the links.
    fn order(l: &Lru<u64, u64>) -> Vec<u64> {
        let mut out = Vec::new();
        let mut i = l.tail;
        while i != NIL {
            out.push(l.slots[i as usize].key);
            i = l.slots[i as usize].prev;
        }
        out
    }

    fn check(l: &Lru<u64, u64>) {
        assert_eq!(l.index.len(), l.slots.len());
        for (i, s) in l.slots.iter().enumerate() {
            assert_eq!(l.find(h(&s.key), &s.key), Some(i as u32));
        }
        assert_eq!(order(l).len(), l.slots.len());
    }

    #[test]
    fn evicts_least_recently_used_and_reuses_its_slot() {
        let mut l = Lru::new(3);
        for k in 1..=3 {
            let (_, ev) = l.insert(h(&k), k, k * 10, h).unwrap();
            assert!(ev.is_none());
        }
        let i1 = l.find(h(&1), &1).unwrap();
        l.touch(i1);
        assert_eq!(order(&l), [2, 3, 1]);
        let (i4, ev) = l.insert(h(&4), 4, 40, h).unwrap();
        assert_eq!(ev, Some((2, 20)));
        assert_eq!(l.len(), 3);
        assert_eq!(*l.get(i4), 40);
        assert_eq!(l.find(h(&2), &2), None);
        assert_eq!(order(&l), [3, 1, 4]);
        assert!(l.slots.capacity() <= 3);
        check(&l);
    }

    #[test]
    fn remove_moves_the_last_slot_and_keeps_links() {
        let mut l = Lru::new(10);
        for k in 0..6 {
            l.insert(h(&k), k, k, h).unwrap();
        }
        // Remove the head, the tail and a middle entry.
        for k in [5, 0, 2] {
            let i = l.find(h(&k), &k).unwrap();
            assert_eq!(l.remove(i, h), (k, k));
            check(&l);
        }
        assert_eq!(order(&l), [1, 3, 4]);
        while let Some(t) = l.lru() {
            l.remove(t, h);
            check(&l);
        }
        assert_eq!(l.len(), 0);
        assert_eq!((l.head, l.tail), (NIL, NIL));
    }

    #[test]
    fn zero_capacity_stores_nothing() {
        let mut l: Lru<u64, u64> = Lru::new(0);
        assert!(l.insert(1, 1, 1, h).is_none());
        assert_eq!(l.len(), 0);
        assert_eq!(Lru::<u64, u64>::bytes_bound(0), 0);
    }

    #[test]
    fn memory_stays_under_the_bound_through_churn() {
        let cap = 1000;
        let mut l = Lru::new(cap);
        let fx = |k: &u64| k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for k in 0..200_000u64 {
            l.insert(fx(&k), k, k, fx).unwrap();
            if k % 3 == 0 {
                if let Some(t) = l.lru() {
                    l.remove(t, fx);
                }
            }
            assert!(l.bytes() <= Lru::<u64, u64>::bytes_bound(cap));
        }
        assert_eq!(l.len(), cap);
        while let Some(t) = l.lru() {
            l.remove(t, fx);
        }
        l.shrink(fx);
        assert!(l.bytes() < Lru::<u64, u64>::bytes_bound(cap) / 4);
    }
}
