//! Domain names: one open-addressing hash table over every allow and block
//! name, built for lists of millions of names.
//!
//! Layout (about 13 bytes of header plus the name's own bytes per name, and
//! 8-byte index slots kept between a third and two-thirds full; see
//! [`DomainTable::mem_size`]):
//! - `records`: one byte arena holding, per distinct name, a 13-byte header
//!   (first allow [`RuleRef`], first block [`RuleRef`], length) followed by
//!   the name's bytes — no `String` per name, and a hit reads one place;
//! - `slots`: a power-of-two linear-probing index of `(hash tag, record
//!   offset)` pairs, so a probe ends at an empty slot and the tag spares a
//!   trip to the records on most misses.
//!
//! **Lookup does no allocation and one hash probe per suffix.** The hash is
//! computed from the *end* of the name backwards (FNV-1a over bytes, then a
//! 64-bit finalizer), so the hashes of `com`, `example.com` and
//! `ads.example.com` fall out of a single pass over the name. The home
//! slots of up to 16 suffixes at a time are then read in one loop of
//! independent loads, so their cache misses overlap instead of queueing.
//!
//! The hash is not keyed: query names come from the network, but the table
//! content comes from the operator's lists, and the cost of a probe depends
//! on how the *stored* names cluster, which a query cannot change. Names are
//! always compared byte for byte: a hash collision never makes a match.

use crate::types::RuleRef;

use super::DomainMatch;

/// Longest name in presentation form without the trailing dot.
pub(crate) const MAX_NAME_LEN: usize = 253;
/// Longest label.
pub(crate) const MAX_LABEL_LEN: usize = 63;

const NO_LIST: u16 = u16::MAX;
/// Record header: allow list (2), allow entry (4), block list (2), block
/// entry (4), name length (1).
const HEADER: usize = 13;

/// Which side a name is listed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Allow,
    Block,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    tag: u32,
    /// `record offset + 1`; 0 marks an empty slot.
    off: u32,
}

/// Why a name could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TableFull;

/// See the module docs.
#[derive(Clone, Default)]
pub(crate) struct DomainTable {
    records: Vec<u8>,
    slots: Vec<Slot>,
    names: usize,
    allow_count: usize,
    block_count: usize,
}

impl std::fmt::Debug for DomainTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainTable")
            .field("names", &self.names)
            .field("allow", &self.allow_count)
            .field("block", &self.block_count)
            .field("mem_size", &self.mem_size())
            .finish()
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline(always)]
fn step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
}

/// MurmurHash3's 64-bit finalizer: spreads FNV's weak low bits.
#[inline(always)]
fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The hash of a whole name, computed backwards as [`DomainTable::lookup`]
/// does for each suffix.
fn hash_name(name: &[u8]) -> u64 {
    finish(name.iter().rev().fold(FNV_OFFSET, |h, &b| step(h, b)))
}

fn read_ref(h: &[u8], at: usize) -> Option<RuleRef> {
    let list = u16::from_le_bytes([h[at], h[at + 1]]);
    let entry = u32::from_le_bytes([h[at + 2], h[at + 3], h[at + 4], h[at + 5]]);
    (list != NO_LIST).then_some(RuleRef { list, entry })
}

impl DomainTable {
    /// Distinct names on either side.
    pub(crate) fn len(&self) -> usize {
        self.names
    }

    pub(crate) fn allow_count(&self) -> usize {
        self.allow_count
    }

    pub(crate) fn block_count(&self) -> usize {
        self.block_count
    }

    /// Heap bytes held (capacity, not just length).
    pub(crate) fn mem_size(&self) -> usize {
        self.records.capacity() + self.slots.capacity() * std::mem::size_of::<Slot>()
    }

    /// Makes room for about `names` more names of about `bytes` bytes in
    /// total, so a big list grows the index once instead of a dozen times.
    pub(crate) fn reserve(&mut self, names: usize, bytes: usize) {
        self.records
            .reserve(bytes.saturating_add(names.saturating_mul(HEADER)));
        let want = self.names.saturating_add(names);
        if want.saturating_mul(3) > self.slots.len().saturating_mul(2) {
            self.rebuild(capacity_for(want));
        }
    }

    /// Releases spare capacity once every list is in.
    pub(crate) fn shrink(&mut self) {
        self.records.shrink_to_fit();
        if capacity_for(self.names) < self.slots.len() {
            self.rebuild(capacity_for(self.names));
        }
    }

    /// The record at `off`: header and name.
    #[inline]
    fn record(&self, off: usize) -> Option<(&[u8], &[u8])> {
        let header = self.records.get(off..off + HEADER)?;
        let len = usize::from(header[HEADER - 1]);
        let name = self.records.get(off + HEADER..off + HEADER + len)?;
        Some((header, name))
    }

    /// The record holding `name`, whose finished hash is `h`, probing from
    /// `slot`.
    #[inline]
    fn find_from(&self, name: &[u8], h: u64, mut slot: Slot) -> Option<usize> {
        let mask = self.slots.len().checked_sub(1)?;
        let tag = (h >> 32) as u32;
        let mut i = (h as usize) & mask;
        // Ends: the table is never more than two-thirds full, so an empty
        // slot lies ahead; the bound guards against a broken invariant.
        for _ in 0..self.slots.len() {
            if slot.off == 0 {
                return None;
            }
            if slot.tag == tag {
                let off = (slot.off - 1) as usize;
                if self.record(off).is_some_and(|(_, n)| n == name) {
                    return Some(off);
                }
            }
            i = (i + 1) & mask;
            slot = *self.slots.get(i)?;
        }
        None
    }

    fn find(&self, name: &[u8], h: u64) -> Option<usize> {
        let mask = self.slots.len().checked_sub(1)?;
        let slot = *self.slots.get((h as usize) & mask)?;
        self.find_from(name, h, slot)
    }

    fn place(slots: &mut [Slot], h: u64, off: u32) {
        let mask = slots.len() - 1;
        let mut i = (h as usize) & mask;
        // Ends: callers keep the table at most two-thirds full.
        loop {
            if slots[i].off == 0 {
                slots[i] = Slot {
                    tag: (h >> 32) as u32,
                    off: off + 1,
                };
                return;
            }
            i = (i + 1) & mask;
        }
    }

    fn rebuild(&mut self, cap: usize) {
        let mut slots = vec![Slot::default(); cap];
        let mut off = 0;
        while let Some((_, name)) = self.record(off) {
            Self::place(&mut slots, hash_name(name), off as u32);
            off += HEADER + name.len();
        }
        self.slots = slots;
    }

    /// Adds `name` (already normalized: see [`normalize`]) on `side`. The
    /// first reference per side is kept; returns whether this side of the
    /// name was new.
    pub(crate) fn insert(
        &mut self,
        name: &[u8],
        side: Side,
        r: RuleRef,
    ) -> Result<bool, TableFull> {
        debug_assert!(r.list != NO_LIST);
        let len = u8::try_from(name.len()).map_err(|_| TableFull)?;
        let h = hash_name(name);
        let off = match self.find(name, h) {
            Some(off) => off,
            None => {
                let off = self.records.len();
                // `off + 1` is stored in a u32 slot.
                if off + HEADER + name.len() >= u32::MAX as usize {
                    return Err(TableFull);
                }
                if (self.names + 1) * 3 > self.slots.len() * 2 {
                    self.rebuild(capacity_for(self.names + 1));
                }
                self.records.extend_from_slice(&NO_LIST.to_le_bytes());
                self.records.extend_from_slice(&[0; 4]);
                self.records.extend_from_slice(&NO_LIST.to_le_bytes());
                self.records.extend_from_slice(&[0; 4]);
                self.records.push(len);
                self.records.extend_from_slice(name);
                Self::place(&mut self.slots, h, off as u32);
                self.names += 1;
                off
            }
        };
        let (at, count) = match side {
            Side::Allow => (off, &mut self.allow_count),
            Side::Block => (off + 6, &mut self.block_count),
        };
        let Some(field) = self.records.get_mut(at..at + 6) else {
            return Err(TableFull);
        };
        if field[..2] != NO_LIST.to_le_bytes() {
            return Ok(false);
        }
        field[..2].copy_from_slice(&r.list.to_le_bytes());
        field[2..].copy_from_slice(&r.entry.to_le_bytes());
        *count += 1;
        Ok(true)
    }

    /// Allow beats block; among several matching suffixes the longest (most
    /// specific) names the rule. `name` is lower case, without trailing dot.
    #[inline]
    pub(crate) fn lookup(&self, name: &[u8]) -> DomainMatch {
        if self.slots.is_empty() || name.is_empty() || name.len() > MAX_NAME_LEN {
            return DomainMatch::None;
        }
        // Suffixes are found shortest first and probed in batches (small
        // arrays: no allocation, little to zero); a longer suffix's match
        // replaces a shorter one's.
        let mut batch = Batch::default();
        let mut found = (None, None);
        let mut h = FNV_OFFSET;
        for (i, &b) in name.iter().enumerate().rev() {
            if b == b'.' {
                batch.push(i + 1, finish(h));
                if batch.n == BATCH {
                    self.probe(name, &batch, &mut found);
                    batch.n = 0;
                }
            }
            h = step(h, b);
        }
        batch.push(0, finish(h));
        self.probe(name, &batch, &mut found);
        match found {
            (Some(r), _) => DomainMatch::Allowed(r),
            (None, Some(r)) => DomainMatch::Blocked(r),
            (None, None) => DomainMatch::None,
        }
    }

    /// Probes a batch of suffixes: first every home slot, in one loop of
    /// independent loads, then the probe sequences and name comparisons.
    #[inline]
    fn probe(&self, name: &[u8], batch: &Batch, found: &mut (Option<RuleRef>, Option<RuleRef>)) {
        let mask = self.slots.len().wrapping_sub(1);
        let mut home = [Slot::default(); BATCH];
        for (slot, &h) in home.iter_mut().zip(&batch.hashes[..batch.n]) {
            *slot = self
                .slots
                .get((h as usize) & mask)
                .copied()
                .unwrap_or_default();
        }
        let n = batch.n.min(BATCH);
        for ((slot, &start), &h) in home[..n].iter().zip(&batch.starts).zip(&batch.hashes) {
            if slot.off == 0 {
                continue;
            }
            let Some(suffix) = name.get(usize::from(start)..) else {
                continue;
            };
            if let Some((header, _)) = self
                .find_from(suffix, h, *slot)
                .and_then(|off| self.record(off))
            {
                found.0 = read_ref(header, 0).or(found.0);
                found.1 = read_ref(header, 6).or(found.1);
            }
        }
    }
}

/// Suffixes probed together.
const BATCH: usize = 16;

#[derive(Default)]
struct Batch {
    starts: [u8; BATCH],
    hashes: [u64; BATCH],
    n: usize,
}

impl Batch {
    #[inline]
    fn push(&mut self, start: usize, hash: u64) {
        if let (Some(s), Some(h)) = (self.starts.get_mut(self.n), self.hashes.get_mut(self.n)) {
            // `start` <= MAX_NAME_LEN < 256.
            *s = start as u8;
            *h = hash;
            self.n += 1;
        }
    }
}

/// Slots for `n` names at most two-thirds full, a power of two, at least 64.
fn capacity_for(n: usize) -> usize {
    (n.saturating_mul(3) / 2 + 1).next_power_of_two().max(64)
}

/// Normalizes a domain name as written in a config or list into `out`:
/// ASCII lower case, one trailing dot and one leading `*.` removed. Checks
/// RFC 1035 lengths (labels 1-63 bytes, name at most 253), the characters
/// `a-z 0-9 - _`, and that the last label is not all digits (an IP address
/// is not a name). The error says what is wrong, without the name.
pub(crate) fn normalize(raw: &str, out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    let mut s = raw.strip_prefix("*.").unwrap_or(raw);
    s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() {
        return Err("is empty".to_string());
    }
    if s.len() > MAX_NAME_LEN {
        return Err(format!(
            "is {} bytes long; a name has at most {MAX_NAME_LEN}",
            s.len()
        ));
    }
    let mut last_all_digits = false;
    for label in s.split('.') {
        if label.is_empty() {
            return Err("has an empty label".to_string());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!(
                "has a label of {} bytes; a label has at most {MAX_LABEL_LEN}",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "has the character {c:?}; names use a-z, 0-9, '-' and '_' (write IDNs in punycode, xn--...)"
            ));
        }
        last_all_digits = label.bytes().all(|b| b.is_ascii_digit());
    }
    if last_all_digits {
        return Err("ends in an all-digit label (an IP address is not a name)".to_string());
    }
    out.extend(s.bytes().map(|b| b.to_ascii_lowercase()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(list: u16, entry: u32) -> RuleRef {
        RuleRef { list, entry }
    }

    fn norm(s: &str) -> Result<String, String> {
        let mut v = Vec::new();
        normalize(s, &mut v).map(|()| String::from_utf8(v).unwrap())
    }

    #[test]
    fn normalize_folds_case_dots_and_wildcards() {
        assert_eq!(norm("Ads.Example.COM.").unwrap(), "ads.example.com");
        assert_eq!(norm("*.tracker.example").unwrap(), "tracker.example");
        assert_eq!(norm("_dmarc.example").unwrap(), "_dmarc.example");
        assert_eq!(norm("zip").unwrap(), "zip");
        assert!(norm("").is_err());
        assert!(norm(".").is_err());
        assert!(norm("a..b").is_err());
        assert!(norm("exa mple.com").unwrap_err().contains("' '"));
        assert!(norm("*.*.x").is_err());
        assert!(norm("1.2.3.4").unwrap_err().contains("IP address"));
        assert!(norm(&"a".repeat(64)).unwrap_err().contains("64 bytes"));
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(long.len(), 253);
        assert!(norm(&long).is_ok());
        assert!(norm(&format!("e{long}")).unwrap_err().contains("254"));
        assert!(norm("bücher.example").is_err());
    }

    #[test]
    fn suffix_matching_and_allow_beats_block() {
        let mut t = DomainTable::default();
        t.insert(b"example.com", Side::Block, r(3, 0)).unwrap();
        t.insert(b"ads.example.com", Side::Block, r(3, 1)).unwrap();
        t.insert(b"good.example.com", Side::Allow, r(7, 0)).unwrap();
        assert_eq!(t.lookup(b"example.com"), DomainMatch::Blocked(r(3, 0)));
        assert_eq!(t.lookup(b"www.example.com"), DomainMatch::Blocked(r(3, 0)));
        // The most specific block entry names the rule.
        assert_eq!(
            t.lookup(b"x.ads.example.com"),
            DomainMatch::Blocked(r(3, 1))
        );
        assert_eq!(t.lookup(b"good.example.com"), DomainMatch::Allowed(r(7, 0)));
        assert_eq!(
            t.lookup(b"a.good.example.com"),
            DomainMatch::Allowed(r(7, 0))
        );
        assert_eq!(t.lookup(b"notexample.com"), DomainMatch::None);
        assert_eq!(t.lookup(b"com"), DomainMatch::None);
        assert_eq!(t.lookup(b""), DomainMatch::None);
        assert_eq!(t.lookup(b"example.com.evil"), DomainMatch::None);
        // An allowed parent beats a blocked child: allow always wins.
        t.insert(b"example.com", Side::Allow, r(7, 1)).unwrap();
        assert_eq!(
            t.lookup(b"x.ads.example.com"),
            DomainMatch::Allowed(r(7, 1))
        );
    }

    #[test]
    fn names_with_more_labels_than_a_batch() {
        let labels: Vec<String> = (0..40).map(|i| format!("l{i}")).collect();
        let full = labels.join(".");
        let suffix = |k: usize| labels[labels.len() - k..].join(".");
        let mut t = DomainTable::default();
        t.insert(suffix(2).as_bytes(), Side::Block, r(3, 0))
            .unwrap();
        t.insert(suffix(17).as_bytes(), Side::Block, r(3, 1))
            .unwrap();
        t.insert(suffix(33).as_bytes(), Side::Block, r(3, 2))
            .unwrap();
        assert_eq!(t.lookup(full.as_bytes()), DomainMatch::Blocked(r(3, 2)));
        assert_eq!(
            t.lookup(suffix(32).as_bytes()),
            DomainMatch::Blocked(r(3, 1))
        );
        assert_eq!(
            t.lookup(suffix(16).as_bytes()),
            DomainMatch::Blocked(r(3, 0))
        );
        t.insert(suffix(20).as_bytes(), Side::Allow, r(7, 0))
            .unwrap();
        assert_eq!(t.lookup(full.as_bytes()), DomainMatch::Allowed(r(7, 0)));
        assert_eq!(
            t.lookup(suffix(19).as_bytes()),
            DomainMatch::Blocked(r(3, 1))
        );
        // Empty labels (a wire label may hold a dot) match nothing extra.
        assert_eq!(t.lookup(b"x..l38.l39"), DomainMatch::Blocked(r(3, 0)));
        assert_eq!(t.lookup(&[b'.'; 253]), DomainMatch::None);
        assert_eq!(t.lookup(&[b'a'; 254]), DomainMatch::None);
    }

    #[test]
    fn first_reference_per_side_is_kept() {
        let mut t = DomainTable::default();
        assert_eq!(t.insert(b"a.example", Side::Block, r(16, 10)), Ok(true));
        assert_eq!(t.insert(b"a.example", Side::Block, r(17, 3)), Ok(false));
        assert_eq!(t.insert(b"a.example", Side::Allow, r(16, 12)), Ok(true));
        assert_eq!((t.len(), t.block_count(), t.allow_count()), (1, 1, 1));
        assert_eq!(t.lookup(b"a.example"), DomainMatch::Allowed(r(16, 12)));
    }

    #[test]
    fn grows_and_keeps_every_name() {
        let mut t = DomainTable::default();
        for i in 0..20_000u32 {
            let n = format!("host{i}.example{}", i % 7);
            t.insert(n.as_bytes(), Side::Block, r(16, i + 1)).unwrap();
        }
        assert_eq!(t.len(), 20_000);
        for i in (0..20_000u32).step_by(97) {
            let n = format!("sub.host{i}.example{}", i % 7);
            assert_eq!(t.lookup(n.as_bytes()), DomainMatch::Blocked(r(16, i + 1)));
        }
        assert_eq!(t.lookup(b"host1.example2"), DomainMatch::None);
        assert!(t.slots.len() * 2 >= t.len() * 3);
        t.shrink();
        assert!(t.mem_size() < 20_000 * 48, "{}", t.mem_size());
        assert_eq!(
            t.lookup(b"a.host7.example0"),
            DomainMatch::Blocked(r(16, 8))
        );
    }
}
