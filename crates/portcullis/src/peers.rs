//! Critical peers: the addresses a host cannot lose without cutting itself
//! off — its default gateways and its DNS resolvers. Scans are mostly SYNs
//! without a handshake, so their source address is whatever the sender
//! writes: a "scan" spoofed from our gateway's or resolver's address must
//! not make us ban it. These are protected by default like the SSH client
//! (`--no-protect-peers` turns it off), read at start and on SIGHUP.
//!
//! Read from the kernel's routing tables (`/proc/net/route`,
//! `/proc/net/ipv6_route`) and from the resolver files
//! (`/etc/resolv.conf`, and systemd-resolved's upstream list
//! `/run/systemd/resolve/resolv.conf` when present: `/etc/resolv.conf` then
//! names only its stub, 127.0.0.53). Pure parsers over the text, so they
//! are tested on fixtures.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// Where a critical peer was found, for `explain` and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    Gateway,
    Resolver,
    /// One of this host's own addresses.
    OwnAddress,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "default gateway",
            Self::Resolver => "DNS resolver",
            Self::OwnAddress => "this host's own address",
        }
    }
}

/// The critical peers of this host (network namespace), each with why.
/// Loopback and unspecified addresses are left out (they are never banned
/// anyway).
pub fn critical_peers() -> Vec<(IpAddr, Why)> {
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
    let mut out = Vec::new();
    out.extend(
        gateways_v4(&read("/proc/net/route"))
            .into_iter()
            .chain(gateways_v6(&read("/proc/net/ipv6_route")))
            .map(|a| (a, Why::Gateway)),
    );
    out.extend(
        nameservers(&read("/etc/resolv.conf"))
            .into_iter()
            .chain(nameservers(&read("/run/systemd/resolve/resolv.conf")))
            .map(|a| (a, Why::Resolver)),
    );
    out.retain(|(a, _)| !a.is_loopback() && !a.is_unspecified());
    out.sort();
    out.dedup_by_key(|(a, _)| *a);
    out
}

/// Gateways of the IPv4 default routes in `/proc/net/route` (destination
/// and mask 0, flag RTF_GATEWAY; addresses as little-endian hex words).
pub fn gateways_v4(text: &str) -> Vec<IpAddr> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dest, gw, flags, mask) = (f.get(1)?, f.get(2)?, f.get(3)?, f.get(7)?);
            let flags = u16::from_str_radix(flags, 16).ok()?;
            if *dest != "00000000" || *mask != "00000000" || flags & 0x2 == 0 {
                return None;
            }
            let word = u32::from_str_radix(gw, 16).ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(word.to_le_bytes())))
        })
        .collect()
}

/// Gateways of the IPv6 default routes in `/proc/net/ipv6_route`
/// (destination ::/0, a non-zero next hop; addresses as 32 hex digits in
/// network order).
pub fn gateways_v6(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dest, plen, next) = (f.first()?, f.get(1)?, f.get(4)?);
            if dest.chars().any(|c| c != '0') || *plen != "00" {
                return None;
            }
            let bits = u128::from_str_radix(next, 16).ok()?;
            (bits != 0).then(|| IpAddr::V6(Ipv6Addr::from(bits)))
        })
        .collect()
}

/// The `nameserver` addresses of a resolv.conf (an IPv6 zone suffix such
/// as `%eth0` is dropped).
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "nameserver").then_some(())?;
            let a = w.next()?;
            a.split('%').next()?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_default_gateway() {
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            eth1\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n";
        // 010200C0 little-endian is 192.0.2.1; the last default route has
        // no gateway (a point-to-point link).
        assert_eq!(gateways_v4(text), [ip("192.0.2.1")]);
        assert!(gateways_v4("garbage\n1 2 3\n").is_empty());
    }

    #[test]
    fn ipv6_default_gateway() {
        let text = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
            00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n\
            00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(gateways_v6(text), [ip("fd00::1")]);
    }

    #[test]
    fn resolvers_from_resolv_conf() {
        let text = "# comment\nsearch example.org\nnameserver 198.18.3.53\nnameserver fe80::1%eth0\nnameserver\noptions edns0\n";
        assert_eq!(nameservers(text), [ip("198.18.3.53"), ip("fe80::1")]);
    }
}
