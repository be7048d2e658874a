//! The running total of one scan episode, from its finding to its end:
//! what the summary reports. Bounded: at most [`Tally::MAX_HEAP_BYTES`] on
//! the heap.

use std::mem::size_of;
use std::net::IpAddr;

use super::{kind_of_counts, ScanFinding, ScanKind, ScanPattern, ScanSummary, Target, PORT_SAMPLE};
use crate::types::{ProbeShape, Timestamp};

/// Ports in one block of the port bitmap.
const BLOCK: usize = 1024;
const BLOCK_WORDS: usize = BLOCK / 64;
/// Hosts remembered exactly before switching to the bitmap.
const EXACT_HOSTS: usize = 256;
/// Bits of the host bitmap (linear counting).
const HOST_BITS: usize = 8192;

/// Distinct port numbers, exact: a bitmap in blocks of 1,024 ports
/// allocated as they are touched, kept sorted by block.
#[derive(Debug, Default)]
struct PortSet {
    blocks: Vec<(u16, [u64; BLOCK_WORDS])>,
}

impl PortSet {
    fn insert(&mut self, port: u16) {
        let block = port / BLOCK as u16;
        let bit = usize::from(port) % BLOCK;
        let i = match self.blocks.binary_search_by_key(&block, |b| b.0) {
            Ok(i) => i,
            Err(i) => {
                self.blocks.insert(i, (block, [0; BLOCK_WORDS]));
                i
            }
        };
        if let Some((_, words)) = self.blocks.get_mut(i) {
            words[bit / 64] |= 1 << (bit % 64);
        }
    }

    fn len(&self) -> u32 {
        self.blocks
            .iter()
            .flat_map(|(_, w)| w.iter())
            .map(|w| w.count_ones())
            .sum()
    }

    /// The lowest `n` ports, ascending.
    fn lowest(&self, n: usize) -> Vec<u16> {
        let mut out = Vec::with_capacity(n);
        for (block, words) in &self.blocks {
            for (wi, &w) in words.iter().enumerate() {
                let mut w = w;
                while w != 0 && out.len() < n {
                    let b = w.trailing_zeros() as usize;
                    w &= w - 1;
                    out.push((usize::from(*block) * BLOCK + wi * 64 + b) as u16);
                }
            }
        }
        out
    }

    fn heap_bytes(&self) -> usize {
        self.blocks.capacity() * size_of::<(u16, [u64; BLOCK_WORDS])>()
    }
}

/// Distinct hosts: exact up to [`EXACT_HOSTS`], then linear counting over
/// a [`HOST_BITS`]-bit bitmap.
#[derive(Debug, Default)]
struct HostSet {
    exact: Vec<u32>,
    bits: Option<Box<[u64; HOST_BITS / 64]>>,
}

/// Spreads a host id over the bitmap (splitmix64's finalizer). Unkeyed: a
/// sender who chooses colliding addresses only lowers an estimate.
fn spread(host: u32) -> usize {
    let mut z = u64::from(host).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) % HOST_BITS as u64) as usize
}

impl HostSet {
    fn insert(&mut self, host: u32) {
        if self.bits.is_none() {
            if self.exact.contains(&host) {
                return;
            }
            if self.exact.len() < EXACT_HOSTS {
                self.exact.push(host);
                return;
            }
            let mut bits = Box::new([0u64; HOST_BITS / 64]);
            for h in self.exact.drain(..) {
                let b = spread(h);
                bits[b / 64] |= 1 << (b % 64);
            }
            self.exact = Vec::new();
            self.bits = Some(bits);
        }
        if let Some(bits) = &mut self.bits {
            let b = spread(host);
            bits[b / 64] |= 1 << (b % 64);
        }
    }

    /// The count, and whether it is an estimate.
    fn len(&self) -> (u32, bool) {
        match &self.bits {
            None => (self.exact.len() as u32, false),
            Some(bits) => {
                let m = HOST_BITS as f64;
                let ones: u32 = bits.iter().map(|w| w.count_ones()).sum();
                let zeros = (HOST_BITS as u32 - ones).max(1);
                let n = -m * (f64::from(zeros) / m).ln();
                (n.round() as u32, true)
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        self.exact.capacity() * size_of::<u32>() + self.bits.as_ref().map_or(0, |_| HOST_BITS / 8)
    }
}

/// One open episode.
#[derive(Debug)]
pub(super) struct Tally {
    pub(super) src: IpAddr,
    pub(super) slow: bool,
    pub(super) last_seen: Timestamp,
    first_seen: Timestamp,
    pattern: ScanPattern,
    swept_port: Option<u16>,
    tcp_flags: Option<u8>,
    internal: bool,
    allowlisted: bool,
    probes: u64,
    kinds: [u64; ScanKind::ALL.len()],
    ports: PortSet,
    hosts: HostSet,
}

impl Tally {
    /// Most heap one tally holds: every port block and the host bitmap.
    pub(super) const MAX_HEAP_BYTES: usize = (65_536 / BLOCK)
        * size_of::<(u16, [u64; BLOCK_WORDS])>()
        + EXACT_HOSTS * size_of::<u32>()
        + HOST_BITS / 8;

    /// Opens the tally of the episode `f` fired, with the targets counted
    /// in its window.
    pub(super) fn open(f: &ScanFinding, targets: &[Target]) -> Self {
        let mut t = Self {
            src: f.src,
            slow: f.slow,
            last_seen: f.last_seen,
            first_seen: f.first_seen,
            pattern: f.pattern,
            swept_port: f.swept_port,
            tcp_flags: f.tcp_flags,
            internal: f.internal,
            allowlisted: f.allowlisted,
            probes: u64::from(f.probes),
            kinds: [0; ScanKind::ALL.len()],
            ports: PortSet::default(),
            hosts: HostSet::default(),
        };
        for e in targets {
            t.record(e);
        }
        t
    }

    /// A counted probe of the episode after its finding.
    pub(super) fn add(&mut self, e: &Target) {
        self.probes += 1;
        self.last_seen = self.last_seen.max(e.ts);
        self.record(e);
    }

    fn record(&mut self, e: &Target) {
        self.kinds[ScanKind::of(e.shape) as usize] += 1;
        if let ProbeShape::Other(f) = e.shape {
            self.tcp_flags = Some(f);
        }
        self.ports.insert(e.port());
        self.hosts.insert(e.host);
    }

    pub(super) fn heap_bytes(&self) -> usize {
        self.ports.heap_bytes() + self.hosts.heap_bytes()
    }

    pub(super) fn summary(self) -> ScanSummary {
        let (hosts, hosts_estimated) = self.hosts.len();
        let kind = kind_of_counts(&self.kinds);
        ScanSummary {
            src: self.src,
            kind,
            pattern: self.pattern,
            slow: self.slow,
            ports: self.ports.len(),
            hosts,
            hosts_estimated,
            probes: self.probes,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            port_sample: self.ports.lowest(PORT_SAMPLE),
            swept_port: self.swept_port,
            tcp_flags: if kind == ScanKind::Other {
                self.tcp_flags
            } else {
                None
            },
            internal: self.internal,
            allowlisted: self.allowlisted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_exact_across_the_whole_range() {
        let mut p = PortSet::default();
        for port in (0..=u16::MAX).step_by(7) {
            p.insert(port);
            p.insert(port);
        }
        assert_eq!(p.len(), 65_536 / 7 + 1);
        assert_eq!(p.lowest(3), vec![0, 7, 14]);
        assert!(p.heap_bytes() <= Tally::MAX_HEAP_BYTES);
    }

    #[test]
    fn hosts_exact_then_estimated_closely() {
        let mut h = HostSet::default();
        for i in 0..EXACT_HOSTS as u32 {
            h.insert(0xc612_0000 + i);
            h.insert(0xc612_0000 + i);
        }
        assert_eq!(h.len(), (EXACT_HOSTS as u32, false));
        for i in EXACT_HOSTS as u32..1000u32 {
            h.insert(0xc612_0000 + i);
        }
        let (n, est) = h.len();
        assert!(est);
        assert!((970..=1030).contains(&n), "{n}");
        let mut h = HostSet::default();
        for i in 0..65_536u32 {
            h.insert(0x0a00_0000 + i);
        }
        let (n, _) = h.len();
        assert!((55_000..=80_000).contains(&n), "{n}");
    }
}
