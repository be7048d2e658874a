//! Address lists: longest-prefix match over IPv4 and IPv6 prefixes.
//!
//! # Structure, and why not `prefix_trie`
//!
//! A list of CIDR prefixes, nested or not, splits the address space into
//! disjoint intervals, each owned by the longest prefix that covers it (or
//! by none). The table stores exactly that, flattened at compile time:
//! a sorted array of interval starts and, beside it, the entry that owns
//! each interval. A lookup finds the last start `<=` the address.
//!
//! To keep that search short whatever the list size, a direct index on the
//! address's top 16 bits (65,537 `u32`s, built only for lists of more than
//! [`INDEX_MIN`] intervals) narrows it to the intervals that start inside
//! the address's /16 — for IPv4 at most 2 x 65,536, so at most 17 halvings
//! even in the worst case, and in practice one cache line.
//!
//! Measured against `prefix_trie::PrefixMap` 0.10 (a tree bitmap, 5-bit
//! strides: up to 7 dependent node loads for IPv4, 26 for IPv6) on the same
//! random prefixes (/8-/32, /16-/128) and addresses (half inside a listed
//! prefix), release build, one core of the 2-core dev machine
//! (`rules::tests::timing_ip_tables_vs_prefix_trie`):
//!
//! | prefixes     | flat ns/lookup | flat memory | prefix_trie ns/lookup | prefix_trie memory |
//! |--------------|---------------:|------------:|----------------------:|-------------------:|
//! | 1,000 IPv4   |           6-23 |     271 KiB |                 39-63 |             69 KiB |
//! | 100,000 IPv4 |          23-48 |     1.6 MiB |                 54-94 |            4.5 MiB |
//! | 10 IPv6      |          22-33 |      <1 KiB |                97-156 |              2 KiB |
//! | 100,000 IPv6 |          33-51 |     4.1 MiB |               153-208 |             33 MiB |
//!
//! (Ranges over four runs on a shared, loaded machine.)
//!
//! The flat table does 1-3 dependent loads with no pointer chasing, builds
//! 100,000 prefixes in under 10 ms, and answers identically (the tests
//! compare it with `prefix_trie` address by address).
//!
//! The table is immutable: build it with [`IpTableBuilder`].

use std::net::IpAddr;

use ipnet::IpNet;

/// Lists with more intervals than this get the /16 index.
pub(crate) const INDEX_MIN: usize = 64;

/// Marks an interval no prefix covers.
const NONE: u32 = u32::MAX;

/// An address family's integer form.
trait Key: Copy + Ord + std::fmt::Debug {
    const ZERO: Self;
    /// The top 16 bits, as an index.
    fn top16(self) -> usize;
    /// The first address whose top 16 bits are `t`.
    fn from_top16(t: usize) -> Self;
    fn checked_next(self) -> Option<Self>;
}

impl Key for u32 {
    const ZERO: Self = 0;
    fn top16(self) -> usize {
        (self >> 16) as usize
    }
    fn from_top16(t: usize) -> Self {
        (t as u32) << 16
    }
    fn checked_next(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Key for u128 {
    const ZERO: Self = 0;
    fn top16(self) -> usize {
        (self >> 112) as usize
    }
    fn from_top16(t: usize) -> Self {
        (t as u128) << 112
    }
    fn checked_next(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// One family's flattened intervals. Invariant: `starts` is sorted and
/// strictly increasing, `starts[0] == 0`, `vals.len() == starts.len()`, and
/// `index` is empty or has 65,537 entries with `index[t]` = the number of
/// starts below `from_top16(t)`.
#[derive(Debug, Clone)]
struct Flat<K> {
    starts: Vec<K>,
    vals: Vec<u32>,
    index: Vec<u32>,
    /// Distinct prefixes it was built from.
    prefixes: usize,
}

impl<K: Key> Default for Flat<K> {
    fn default() -> Self {
        Self {
            starts: Vec::new(),
            vals: Vec::new(),
            index: Vec::new(),
            prefixes: 0,
        }
    }
}

impl<K: Key> Flat<K> {
    /// `prefixes`: `(first address, last address, entry)`, properly nested
    /// or disjoint (CIDR prefixes always are), no two with the same range.
    fn build(mut prefixes: Vec<(K, K, u32)>) -> Self {
        if prefixes.is_empty() {
            return Self::default();
        }
        let count = prefixes.len();
        // Outer prefixes before the ones they contain.
        prefixes.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut starts = vec![K::ZERO];
        let mut vals = vec![NONE];
        let mut emit = |at: K, v: u32| {
            let n = starts.len();
            if starts[n - 1] == at {
                vals[n - 1] = v;
                if n >= 2 && vals[n - 2] == v {
                    starts.pop();
                    vals.pop();
                }
            } else if vals[n - 1] != v {
                starts.push(at);
                vals.push(v);
            }
        };
        // The prefixes open around the current position, innermost last.
        let mut open: Vec<(K, u32)> = Vec::new();
        for (first, last, v) in prefixes {
            while let Some(&(end, _)) = open.last() {
                if end >= first {
                    break;
                }
                open.pop();
                let resume = open.last().map_or(NONE, |o| o.1);
                if let Some(next) = end.checked_next() {
                    emit(next, resume);
                }
            }
            emit(first, v);
            open.push((last, v));
        }
        while let Some((end, _)) = open.pop() {
            let resume = open.last().map_or(NONE, |o| o.1);
            if let Some(next) = end.checked_next() {
                emit(next, resume);
            }
        }
        let mut index = Vec::new();
        if starts.len() > INDEX_MIN {
            index.reserve_exact(65_537);
            let mut i = 0usize;
            for t in 0..65_536usize {
                let bound = K::from_top16(t);
                while i < starts.len() && starts[i] < bound {
                    i += 1;
                }
                index.push(i as u32);
            }
            index.push(starts.len() as u32);
        }
        starts.shrink_to_fit();
        vals.shrink_to_fit();
        Self {
            starts,
            vals,
            index,
            prefixes: count,
        }
    }

    #[inline]
    fn lookup(&self, a: K) -> Option<u32> {
        let (lo, hi) = if self.index.is_empty() {
            (0, self.starts.len())
        } else {
            let t = a.top16();
            (
                *self.index.get(t)? as usize,
                *self.index.get(t + 1)? as usize,
            )
        };
        // The last start <= a is at k - 1; k >= 1 since starts[0] == 0 (if
        // no start of this /16 is <= a, the interval began in an earlier
        // one: index lo - 1).
        let k = lo + self.starts.get(lo..hi)?.partition_point(|&s| s <= a);
        let v = *self.vals.get(k.checked_sub(1)?)?;
        (v != NONE).then_some(v)
    }

    fn mem_size(&self) -> usize {
        self.starts.capacity() * std::mem::size_of::<K>()
            + self.vals.capacity() * 4
            + self.index.capacity() * 4
    }
}

/// Collects prefixes; [`IpTableBuilder::build`] flattens them.
#[derive(Debug, Default)]
pub(crate) struct IpTableBuilder {
    v4: Vec<(u32, u8, u32)>,
    v6: Vec<(u128, u8, u32)>,
}

impl IpTableBuilder {
    /// Adds `net` for `entry`. `net` must have no host bits (the config
    /// compiler checks). Of two entries with the same prefix, the smaller
    /// entry (the first in the file) keeps it.
    pub(crate) fn insert(&mut self, net: IpNet, entry: u32) {
        match net {
            IpNet::V4(n) => self
                .v4
                .push((u32::from(n.network()), n.prefix_len(), entry)),
            IpNet::V6(n) => self
                .v6
                .push((u128::from(n.network()), n.prefix_len(), entry)),
        }
    }

    pub(crate) fn build(self) -> IpTable {
        fn ranges<K: Key>(mut v: Vec<(K, u8, u32)>, last: impl Fn(K, u8) -> K) -> Vec<(K, K, u32)> {
            v.sort_unstable();
            v.dedup_by(|b, a| a.0 == b.0 && a.1 == b.1);
            v.into_iter()
                .map(|(s, len, e)| (s, last(s, len), e))
                .collect()
        }
        let v4 = ranges(self.v4, |s, len| {
            s | u32::MAX.checked_shr(u32::from(len)).unwrap_or(0)
        });
        let v6 = ranges(self.v6, |s, len| {
            s | u128::MAX.checked_shr(u32::from(len)).unwrap_or(0)
        });
        IpTable {
            v4: Flat::build(v4),
            v6: Flat::build(v6),
        }
    }
}

/// A set of prefixes, each mapped to the index of the list entry that gave
/// it. Lookups return the entry of the *longest* matching prefix.
#[derive(Debug, Clone, Default)]
pub(crate) struct IpTable {
    v4: Flat<u32>,
    v6: Flat<u128>,
}

impl IpTable {
    pub(crate) fn from_nets(nets: impl IntoIterator<Item = IpNet>) -> Self {
        let mut b = IpTableBuilder::default();
        for (i, n) in nets.into_iter().enumerate() {
            b.insert(n, i as u32);
        }
        b.build()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.v4.prefixes == 0 && self.v6.prefixes == 0
    }

    /// Distinct IPv4 prefixes.
    pub(crate) fn len_v4(&self) -> usize {
        self.v4.prefixes
    }

    /// Distinct IPv6 prefixes.
    pub(crate) fn len_v6(&self) -> usize {
        self.v6.prefixes
    }

    /// Heap bytes held.
    pub(crate) fn mem_size(&self) -> usize {
        self.v4.mem_size() + self.v6.mem_size()
    }

    /// The entry of the longest prefix containing `addr`.
    #[inline]
    pub(crate) fn lookup(&self, addr: IpAddr) -> Option<u32> {
        match addr {
            IpAddr::V4(a) if self.v4.prefixes != 0 => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) if self.v6.prefixes != 0 => self.v6.lookup(u128::from(a)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use ipnet::{Ipv4Net, Ipv6Net};
    use prefix_trie::PrefixMap;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn table(nets: &[&str]) -> IpTable {
        IpTable::from_nets(nets.iter().map(|s| net(s)))
    }

    #[test]
    fn longest_prefix_wins_v4_and_v6() {
        let t = table(&[
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.3/32",
            "2001:db8::/32",
            "2001:db8:1::/48",
        ]);
        assert_eq!(t.lookup(ip("10.9.9.9")), Some(0));
        assert_eq!(t.lookup(ip("10.0.0.0")), Some(0));
        assert_eq!(t.lookup(ip("10.255.255.255")), Some(0));
        assert_eq!(t.lookup(ip("10.1.9.9")), Some(1));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(2));
        assert_eq!(t.lookup(ip("10.1.2.4")), Some(1));
        assert_eq!(t.lookup(ip("10.1.2.2")), Some(1));
        assert_eq!(t.lookup(ip("9.255.255.255")), None);
        assert_eq!(t.lookup(ip("11.0.0.0")), None);
        assert_eq!(t.lookup(ip("2001:db8:2::1")), Some(3));
        assert_eq!(t.lookup(ip("2001:db8:1::1")), Some(4));
        assert_eq!(t.lookup(ip("2001:db9::1")), None);
        // Families never cross: ::ffff:10.0.0.1 is an IPv6 address.
        assert_eq!(t.lookup(ip("::ffff:10.0.0.1")), None);
        assert_eq!((t.len_v4(), t.len_v6()), (3, 2));
    }

    #[test]
    fn first_entry_keeps_a_duplicate_prefix() {
        let t = table(&["192.0.2.0/24", "198.51.100.0/24", "192.0.2.0/24"]);
        assert_eq!(t.lookup(ip("192.0.2.1")), Some(0));
        assert_eq!(t.len_v4(), 2);
    }

    #[test]
    fn edges_of_the_address_space() {
        let t = table(&[
            "0.0.0.0/0",
            "255.255.255.255/32",
            "0.0.0.0/32",
            "::/0",
            "ffff::/16",
        ]);
        assert_eq!(t.lookup(ip("0.0.0.0")), Some(2));
        assert_eq!(t.lookup(ip("0.0.0.1")), Some(0));
        assert_eq!(t.lookup(ip("255.255.255.254")), Some(0));
        assert_eq!(t.lookup(ip("255.255.255.255")), Some(1));
        assert_eq!(t.lookup(ip("::")), Some(3));
        assert_eq!(t.lookup(ip("ffff:ffff::1")), Some(4));
        assert_eq!(t.lookup(ip("fffe::1")), Some(3));
        let t = table(&["255.255.255.0/24"]);
        assert_eq!(t.lookup(ip("255.255.255.255")), Some(0));
        assert_eq!(t.lookup(ip("255.255.254.255")), None);
        assert!(IpTable::default().is_empty());
        assert_eq!(IpTable::default().lookup(ip("1.2.3.4")), None);
    }

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x >> 12;
        *x ^= *x << 25;
        *x ^= *x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Random nested prefix sets, checked address by address against
    /// `prefix_trie`'s longest-prefix match, with and without the index.
    #[test]
    fn agrees_with_prefix_trie() {
        let mut x = 0x1234_5678_9abc_def1u64;
        for (round, n) in [3usize, 20, 60, 70, 500, 5000].into_iter().enumerate() {
            let mut reference4: PrefixMap<Ipv4Net, u32> = PrefixMap::new();
            let mut reference6: PrefixMap<Ipv6Net, u32> = PrefixMap::new();
            let mut b = IpTableBuilder::default();
            let mut probes = Vec::new();
            // Few distinct top bits so prefixes nest a lot.
            let base4 = 0x0a00_0000u32 | ((round as u32) << 16);
            for i in 0..n as u32 {
                let r = xorshift(&mut x);
                let len4 = 8 + (r % 25) as u8;
                let a4 = Ipv4Addr::from(base4 ^ ((r >> 8) as u32 & 0x00ff_ffff));
                let n4 = Ipv4Net::new(a4, len4).unwrap().trunc();
                let a6 = Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(r) << 32));
                let n6 = Ipv6Net::new(a6, 32 + (r % 97) as u8).unwrap().trunc();
                b.insert(IpNet::V4(n4), i);
                b.insert(IpNet::V6(n6), i);
                reference4.entry(n4).or_insert(i);
                reference6.entry(n6).or_insert(i);
                // Edges of each prefix and its neighbours.
                let lo4 = u32::from(n4.network());
                let hi4 = u32::from(n4.broadcast());
                for a in [
                    lo4,
                    hi4,
                    lo4.wrapping_sub(1),
                    hi4.wrapping_add(1),
                    lo4 ^ (r as u32 & 0xff),
                ] {
                    probes.push(IpAddr::V4(Ipv4Addr::from(a)));
                }
                let lo6 = u128::from(n6.network());
                let hi6 = u128::from(n6.broadcast());
                for a in [lo6, hi6, lo6.wrapping_sub(1), hi6.wrapping_add(1)] {
                    probes.push(IpAddr::V6(Ipv6Addr::from(a)));
                }
            }
            let t = b.build();
            assert_eq!(t.len_v4(), reference4.len());
            assert_eq!(t.len_v6(), reference6.len());
            for a in probes {
                let want = match a {
                    IpAddr::V4(a) => reference4.get_lpm(&Ipv4Net::from(a)).map(|(_, &e)| e),
                    IpAddr::V6(a) => reference6.get_lpm(&Ipv6Net::from(a)).map(|(_, &e)| e),
                };
                assert_eq!(t.lookup(a), want, "{a} with {n} prefixes");
            }
        }
    }
}
