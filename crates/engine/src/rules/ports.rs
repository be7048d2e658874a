//! Port and protocol tables: constant-time lookups.

/// A destination-port list: an 8 KiB bitmap answers "is this port listed"
/// from L1 cache, and a 65,536-slot index (allocated only when the list is
/// not empty) names the first entry, in file order, that covers the port.
#[derive(Clone, Default)]
pub(crate) struct PortTable {
    bits: Option<Box<[u64; 1024]>>,
    /// `entry + 1` per port, 0 for none.
    index: Box<[u32]>,
    ranges: usize,
}

impl std::fmt::Debug for PortTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortTable")
            .field("ranges", &self.ranges)
            .finish()
    }
}

impl PortTable {
    /// Adds the range `lo..=hi` for `entry`; ports already covered by an
    /// earlier entry keep it.
    pub(crate) fn insert(&mut self, lo: u16, hi: u16, entry: u32) {
        let bits = self.bits.get_or_insert_with(|| Box::new([0; 1024]));
        if self.index.is_empty() {
            self.index = vec![0; 1 << 16].into_boxed_slice();
        }
        for port in lo..=hi {
            let i = usize::from(port);
            if let Some(slot) = self.index.get_mut(i) {
                if *slot == 0 {
                    *slot = entry.saturating_add(1);
                    bits[i >> 6] |= 1 << (i & 63);
                }
            }
        }
        self.ranges += 1;
    }

    /// Number of ranges (entries) added.
    pub(crate) fn ranges(&self) -> usize {
        self.ranges
    }

    pub(crate) fn mem_size(&self) -> usize {
        self.bits.as_ref().map_or(0, |_| 8192) + self.index.len() * 4
    }

    /// The entry covering `port`.
    #[inline]
    pub(crate) fn lookup(&self, port: u16) -> Option<u32> {
        let bits = self.bits.as_ref()?;
        let i = usize::from(port);
        if bits[i >> 6] & (1 << (i & 63)) == 0 {
            return None;
        }
        self.index.get(i).and_then(|&e| e.checked_sub(1))
    }
}

/// The ports of one composite rule: sorted, merged, disjoint ranges
/// searched by bisection (a rule lists a handful of ports; a bitmap per rule
/// would cost 8 KiB each).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PortSet {
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    pub(crate) fn from_ranges(mut ranges: Vec<(u16, u16)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => {
                    last.1 = last.1.max(hi);
                }
                _ => merged.push((lo, hi)),
            }
        }
        Self { ranges: merged }
    }

    #[inline]
    pub(crate) fn contains(&self, port: u16) -> bool {
        // First range whose end is >= port; it matches if it starts <= port.
        let i = self.ranges.partition_point(|&(_, hi)| hi < port);
        self.ranges.get(i).is_some_and(|&(lo, _)| lo <= port)
    }

    pub(crate) fn len(&self) -> usize {
        self.ranges.len()
    }
}

/// A protocol list: the first entry per protocol number, 256 slots.
#[derive(Clone)]
pub(crate) struct ProtoTable {
    /// `entry + 1` per protocol number, 0 for none.
    index: [u32; 256],
    count: usize,
}

impl Default for ProtoTable {
    fn default() -> Self {
        Self {
            index: [0; 256],
            count: 0,
        }
    }
}

impl std::fmt::Debug for ProtoTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProtoTable")
            .field("count", &self.count)
            .finish()
    }
}

impl ProtoTable {
    pub(crate) fn insert(&mut self, proto: u8, entry: u32) {
        let slot = &mut self.index[usize::from(proto)];
        if *slot == 0 {
            *slot = entry.saturating_add(1);
            self.count += 1;
        }
    }

    /// Distinct protocol numbers listed.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    #[inline]
    pub(crate) fn lookup(&self, proto: u8) -> Option<u32> {
        self.index[usize::from(proto)].checked_sub(1)
    }
}

/// The protocols of one composite rule: a 256-bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ProtoSet([u64; 4]);

impl ProtoSet {
    pub(crate) fn insert(&mut self, proto: u8) {
        self.0[usize::from(proto >> 6)] |= 1 << (proto & 63);
    }

    #[inline]
    pub(crate) fn contains(&self, proto: u8) -> bool {
        self.0[usize::from(proto >> 6)] & (1 << (proto & 63)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_table_first_entry_wins_and_edges() {
        let mut t = PortTable::default();
        assert_eq!(t.lookup(80), None);
        t.insert(6000, 6100, 0);
        t.insert(6050, 6200, 1);
        t.insert(0, 0, 2);
        t.insert(65535, 65535, 3);
        assert_eq!(t.lookup(5999), None);
        assert_eq!(t.lookup(6000), Some(0));
        assert_eq!(t.lookup(6100), Some(0));
        assert_eq!(t.lookup(6101), Some(1));
        assert_eq!(t.lookup(6200), Some(1));
        assert_eq!(t.lookup(6201), None);
        assert_eq!(t.lookup(0), Some(2));
        assert_eq!(t.lookup(65535), Some(3));
        assert_eq!(t.ranges(), 4);
    }

    #[test]
    fn port_set_merges_and_bisects() {
        let s = PortSet::from_ranges(vec![(22, 22), (80, 90), (85, 100), (101, 101), (443, 443)]);
        assert_eq!(s.len(), 3);
        for p in [22, 80, 95, 100, 101, 443] {
            assert!(s.contains(p), "{p}");
        }
        for p in [0, 21, 23, 79, 102, 442, 444, 65535] {
            assert!(!s.contains(p), "{p}");
        }
        let full = PortSet::from_ranges(vec![(0, 65535)]);
        assert!(full.contains(0) && full.contains(65535));
        assert!(!PortSet::default().contains(0));
    }

    #[test]
    fn proto_tables() {
        let mut t = ProtoTable::default();
        t.insert(6, 0);
        t.insert(6, 1);
        t.insert(255, 2);
        assert_eq!(t.lookup(6), Some(0));
        assert_eq!(t.lookup(255), Some(2));
        assert_eq!(t.lookup(17), None);
        assert_eq!(t.len(), 2);
        let mut s = ProtoSet::default();
        s.insert(0);
        s.insert(200);
        assert!(s.contains(0) && s.contains(200) && !s.contains(6));
    }
}
