//! A blocking client for the CrowdSec Local API (LAPI).
//!
//! - [`Bouncer`] (API key): [`Bouncer::stream`] pulls the decision stream
//!   (`GET /v1/decisions/stream`) into a [`Delta`] of [`Decision`]s (`Ip`
//!   and `Range` scopes, IPv4 and IPv6, the remaining time parsed from Go
//!   duration strings).
//! - [`Watcher`] (machine id and password): [`Watcher::login`] gets a JWT
//!   (renewed before it expires and after a 401), [`Watcher::push_alert`]
//!   posts a [`ScanAlert`] carrying a `ban` decision with scenario
//!   [`SCENARIO`] and origin [`ORIGIN`].
//! - [`ClientConfig`]: the URL, a timeout, the User-Agent, answer size and
//!   decision count bounds, TLS files ([`TlsOptions`]: CA, client
//!   certificate and key; rustls, no OpenSSL). Plain `http://` only to a
//!   loopback host unless `danger_plain_http_remote`.
//!
//! **Guarantees.** Every answer is untrusted input: nothing the LAPI sends
//! can panic the client, answers are read up to
//! [`ClientConfig::max_body_bytes`], each list of a stream up to
//! [`Limits::max_decisions`], and a document that is not a decision stream
//! is an error, never an empty delta (see [`decision`]). Secrets never
//! appear in `Debug` output or errors. Errors ([`CrowdsecError`]) say what
//! to check; [`CrowdsecError::is_transient`] tells a retry loop whether
//! waiting can help.
//!
//! Written against crowdsec 1.4.6 (Debian 12), whose exact answers are in
//! the unit tests; the live tests (`tests/lapi.rs`) run each case against
//! a real LAPI started in a temp dir.

#![forbid(unsafe_code)]

mod bouncer;
mod client;
pub mod decision;
pub mod duration;
mod error;
mod watcher;

pub use bouncer::Bouncer;
pub use client::{ClientConfig, TlsOptions};
pub use decision::{
    Decision, DecisionKind, Delta, Limits, List, Overflow, ParseError, ParseStats, Scope,
};
pub use duration::{format_go_duration, parse_go_duration, GoDuration};
pub use error::CrowdsecError;
pub use watcher::{ScanAlert, Watcher, MAX_META_PORTS, ORIGIN, RENEW_BEFORE, SCENARIO};

/// The README's example, compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
