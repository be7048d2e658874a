//! Vocabulary shared by the packet sources and the engine: when a packet
//! was seen ([`Timestamp`]), which way it crosses the host ([`Direction`])
//! and the packet as a source hands it over ([`PacketIn`]). Here, below
//! both, so that a source (`portcullis-capture`, the daemon's packet paths)
//! needs no engine to speak it.
//!
//! With the `serde` feature: [`Timestamp`] (de)serializes as RFC 3339 UTC
//! (`rfc3339`, `parse_rfc3339`), [`Direction`] as its name.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::{LinkType, PacketSummary};

/// Time as it arrives with a packet: microseconds since the Unix epoch, UTC.
/// The engine never reads a clock; live sources stamp packets, replay uses
/// the capture's stamps, tests make them up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const fn from_micros(us: u64) -> Self {
        Self(us)
    }

    pub const fn from_secs(s: u64) -> Self {
        Self(s.saturating_mul(1_000_000))
    }

    pub const fn as_micros(self) -> u64 {
        self.0
    }

    pub fn saturating_add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }

    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }

    /// `self - earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

/// Which way a packet crosses the host, as the netfilter hook (or, in
/// replay, the configured `home_net`) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// To this host (netfilter input).
    Inbound,
    /// From this host (netfilter output).
    Outbound,
    /// Through this host (netfilter forward).
    Forwarded,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Forwarded => "forwarded",
        }
    }

    /// The peer's address: the source of inbound and forwarded packets, the
    /// destination of outbound ones.
    pub fn remote(self, p: &PacketSummary) -> IpAddr {
        match self {
            Self::Outbound => p.dst,
            Self::Inbound | Self::Forwarded => p.src,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One packet handed to the engine.
#[derive(Debug, Clone, Copy)]
pub struct PacketIn<'a> {
    pub data: &'a [u8],
    pub link: LinkType,
    pub ts: Timestamp,
    /// The netfilter hook's direction; `None` (replay, passive capture):
    /// inferred from the config's `home_net`.
    pub dir: Option<Direction>,
    /// The packet's length on the wire when the source knows it (capture
    /// files, libpcap); more than `data.len()` when a snap length cut it.
    /// A packet cut inside its headers is then counted by the engine as
    /// truncated, not reported as `malformed`. `None`: `data` is the whole
    /// packet (NFQUEUE, tests).
    pub orig_len: Option<u32>,
}

#[cfg(feature = "serde")]
pub use text::{parse_rfc3339, rfc3339, rfc3339_short};

/// RFC 3339 text and serde for the vocabulary.
#[cfg(feature = "serde")]
mod text {
    use serde::ser::{Serialize, Serializer};
    use serde::Deserialize;

    use super::{Direction, Timestamp};

    /// RFC 3339 UTC with microseconds: `2026-11-22T03:01:00.123456Z`.
    pub fn rfc3339(ts: Timestamp) -> String {
        rfc3339_with(ts, chrono::SecondsFormat::Micros)
    }

    /// RFC 3339 UTC, fractional seconds only when there are some:
    /// `2026-11-22T03:01:00Z`, `2026-11-22T03:01:00.5Z` (for people).
    pub fn rfc3339_short(ts: Timestamp) -> String {
        rfc3339_with(ts, chrono::SecondsFormat::AutoSi)
    }

    fn rfc3339_with(ts: Timestamp, format: chrono::SecondsFormat) -> String {
        let us = ts.as_micros();
        let secs = i64::try_from(us / 1_000_000).unwrap_or(i64::MAX);
        let nanos = ((us % 1_000_000) * 1000) as u32;
        match chrono::DateTime::from_timestamp(secs, nanos) {
            Some(t) => t.to_rfc3339_opts(format, true),
            None => "9999-12-31T23:59:59.999999Z".to_owned(),
        }
    }

    /// Reads what [`rfc3339`] writes (any RFC 3339 time with an offset);
    /// `None` for text that is not one or a time before 1970.
    pub fn parse_rfc3339(s: &str) -> Option<Timestamp> {
        let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
        let secs = u64::try_from(t.timestamp()).ok()?;
        let us = secs
            .checked_mul(1_000_000)?
            .checked_add(u64::from(t.timestamp_subsec_micros()))?;
        Some(Timestamp::from_micros(us))
    }

    impl Serialize for Timestamp {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&rfc3339(*self))
        }
    }

    /// The inverse of the `Serialize` impl: an RFC 3339 string.
    impl<'de> Deserialize<'de> for Timestamp {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let s = String::deserialize(d)?;
            parse_rfc3339(&s).ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?} is not an RFC 3339 time after 1970"))
            })
        }
    }

    impl Serialize for Direction {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(self.as_str())
        }
    }
}
