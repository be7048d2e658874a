//! Zero-copy packet and DNS decoding for portcullis.
//!
//! Guarantees, relied on by every caller:
//! - **No input can panic.** Every length is checked before it is read; the
//!   decoders never index out of bounds, never loop without a bound and never
//!   allocate.
//! - **A non-first IP fragment carries no ports.** [`PacketSummary::dst_port`]
//!   is `None` for it, so it can never be read as port 0 or slip past a port
//!   rule; the verdict for it is made on what it does carry (addresses,
//!   protocol, fragment flags).
//! - **A failure says what it could.** [`decode_partial`] returns, beside
//!   the [`DecodeError`], the addresses, protocol and ports that decoded
//!   ([`Partial`]) and whether the captured bytes merely ran out before a
//!   header the packet's own lengths announce ([`Undecodable::cut`]: a
//!   snap length, not an attack).
//! - Decoding is pure: no I/O, no clock, no global state.
//!
//! The per-packet decoder is written by hand (smoltcp style) because it is
//! the hot path of the firewall; `etherparse` serves as the reference in the
//! property tests, and `simple-dns` builds the DNS messages those tests feed
//! to [`dns`].

#![forbid(unsafe_code)]

pub mod dns;
mod packet;
mod vocab;

pub use packet::{
    decode, decode_partial, unreachable_quote, DecodeError, Fragment, IpProto, LinkType,
    PacketSummary, Partial, Quote, Sctp, TcpFlags, Undecodable, MAX_IPV6_EXT_HEADERS,
    MAX_VLAN_TAGS,
};
#[cfg(feature = "serde")]
pub use vocab::{parse_rfc3339, rfc3339, rfc3339_short};
pub use vocab::{Direction, PacketIn, Timestamp};
