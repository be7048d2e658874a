//! Prefix and port lists as nftables interval sets want them.
//!
//! An interval set refuses overlapping elements ("conflicting intervals
//! specified"), so lists are merged first: sorted, overlapping and adjacent
//! ranges joined. Membership is all the kernel needs (which entry matched
//! is for user space's events), so merging loses nothing. The `auto-merge`
//! set flag would do the same in nft, but makes every later `add element`
//! read the whole set back from the kernel.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// Sorted, disjoint, non-adjacent inclusive ranges covering the same
/// values as `ranges` (each `(first, last)` with `first <= last`).
pub(crate) fn merge(mut ranges: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    ranges.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if last.1 == u128::MAX || lo <= last.1 + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Merged IPv4 ranges of `nets`.
pub fn merge_v4(nets: &[Ipv4Net]) -> Vec<(Ipv4Addr, Ipv4Addr)> {
    merge(
        nets.iter()
            .map(|n| {
                (
                    u128::from(u32::from(n.network())),
                    u128::from(u32::from(n.broadcast())),
                )
            })
            .collect(),
    )
    .into_iter()
    .map(|(lo, hi)| (v4(lo), v4(hi)))
    .collect()
}

/// Merged IPv6 ranges of `nets`.
pub fn merge_v6(nets: &[Ipv6Net]) -> Vec<(Ipv6Addr, Ipv6Addr)> {
    merge(
        nets.iter()
            .map(|n| (u128::from(n.network()), u128::from(n.broadcast())))
            .collect(),
    )
    .into_iter()
    .map(|(lo, hi)| (Ipv6Addr::from(lo), Ipv6Addr::from(hi)))
    .collect()
}

/// Merged port ranges.
pub fn merge_ports(ports: &[(u16, u16)]) -> Vec<(u16, u16)> {
    merge(
        ports
            .iter()
            .map(|&(a, b)| (u128::from(a.min(b)), u128::from(a.max(b))))
            .collect(),
    )
    .into_iter()
    .map(|(lo, hi)| (port(lo), port(hi)))
    .collect()
}

fn v4(x: u128) -> Ipv4Addr {
    Ipv4Addr::from(u32::try_from(x).unwrap_or(u32::MAX))
}

fn port(x: u128) -> u16 {
    u16::try_from(x).unwrap_or(u16::MAX)
}

/// The prefix length if `lo..=hi` is exactly one CIDR prefix of a
/// `bits`-bit address.
fn prefix_len(lo: u128, hi: u128, bits: u32) -> Option<u32> {
    let span = hi.checked_sub(lo)?;
    // span must be 2^k - 1 and lo aligned to 2^k.
    (span & span.wrapping_add(1) == 0 && lo & span == 0).then(|| bits - span.count_ones())
}

/// One set element: `198.18.0.1`, `198.18.0.0/24`, or `198.18.0.1-198.18.0.5`.
pub(crate) fn v4_element(out: &mut String, (lo, hi): (Ipv4Addr, Ipv4Addr)) {
    let (a, b) = (u128::from(u32::from(lo)), u128::from(u32::from(hi)));
    let _ = match prefix_len(a, b, 32) {
        Some(32) => write!(out, "{lo}"),
        Some(len) => write!(out, "{lo}/{len}"),
        None => write!(out, "{lo}-{hi}"),
    };
}

/// One set element: `2001:2::1`, `2001:2::/48`, or `2001:2::1-2001:2::5`.
pub(crate) fn v6_element(out: &mut String, (lo, hi): (Ipv6Addr, Ipv6Addr)) {
    let _ = match prefix_len(u128::from(lo), u128::from(hi), 128) {
        Some(128) => write!(out, "{lo}"),
        Some(len) => write!(out, "{lo}/{len}"),
        None => write!(out, "{lo}-{hi}"),
    };
}

/// One set element: `22` or `6000-6100`.
pub(crate) fn port_element(out: &mut String, (lo, hi): (u16, u16)) {
    let _ = if lo == hi {
        write!(out, "{lo}")
    } else {
        write!(out, "{lo}-{hi}")
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets4(v: &[&str]) -> Vec<Ipv4Net> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn render4(v: &[(Ipv4Addr, Ipv4Addr)]) -> Vec<String> {
        v.iter()
            .map(|&r| {
                let mut s = String::new();
                v4_element(&mut s, r);
                s
            })
            .collect()
    }

    #[test]
    fn nested_overlapping_adjacent_and_duplicate_prefixes_merge() {
        let m = merge_v4(&nets4(&[
            "198.18.0.0/24",
            "198.18.0.128/25", // inside the /24
            "198.18.0.0/24",   // duplicate
            "198.18.1.0/24",   // adjacent: joins into a /23
            "198.18.3.7/32",
            "198.18.3.8/32", // adjacent, but 7-8 is no prefix
            "10.0.0.0/8",
            "11.0.0.0/8", // adjacent: 10.0.0.0/7
        ]));
        assert_eq!(
            render4(&m),
            ["10.0.0.0/7", "198.18.0.0/23", "198.18.3.7-198.18.3.8"]
        );
    }

    #[test]
    fn edges_of_the_address_space() {
        assert_eq!(render4(&merge_v4(&nets4(&["0.0.0.0/0"]))), ["0.0.0.0/0"]);
        assert_eq!(
            render4(&merge_v4(&nets4(&[
                "255.255.255.255/32",
                "0.0.0.0/32",
                "128.0.0.0/1"
            ]))),
            ["0.0.0.0", "128.0.0.0/1"]
        );
        let v6: Vec<Ipv6Net> = ["::/0", "2001:2::/48"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let m = merge_v6(&v6);
        assert_eq!(m.len(), 1);
        let mut s = String::new();
        v6_element(&mut s, m[0]);
        assert_eq!(s, "::/0");
        // The top of the space never overflows a merge.
        assert_eq!(
            merge(vec![(u128::MAX, u128::MAX), (0, u128::MAX), (5, 9)]),
            [(0, u128::MAX)]
        );
    }

    #[test]
    fn ipv6_prefixes_hosts_and_ranges() {
        let v6: Vec<Ipv6Net> = [
            "2001:2::1/128",
            "2001:2::2/128",
            "2001:2:0:1::/64",
            "::ffff:198.18.0.1/128",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let out: Vec<String> = merge_v6(&v6)
            .into_iter()
            .map(|r| {
                let mut s = String::new();
                v6_element(&mut s, r);
                s
            })
            .collect();
        assert_eq!(
            out,
            [
                "::ffff:198.18.0.1",
                "2001:2::1-2001:2::2",
                "2001:2:0:1::/64"
            ]
        );
    }

    #[test]
    fn ports_merge() {
        let m = merge_ports(&[
            (6000, 6100),
            (22, 22),
            (6050, 6200),
            (23, 23),
            (0, 0),
            (65535, 65535),
        ]);
        assert_eq!(m, [(0, 0), (22, 23), (6000, 6200), (65535, 65535)]);
        let mut s = String::new();
        port_element(&mut s, (22, 23));
        s.push(' ');
        port_element(&mut s, (80, 80));
        assert_eq!(s, "22-23 80");
    }
}
