//! The portcullis engine: rules, verdicts, port-scan detection and events.
//!
//! **Invariant: no I/O and no clock.** Every function here is a pure
//! function of its inputs and the engine's own state; time arrives with each
//! packet as a [`Timestamp`]. Live inline mode, passive capture, pcap replay
//! and tests therefore decide identically for the same packets.

#![forbid(unsafe_code)]

pub mod community_id;
pub mod config;
pub mod detector;
pub mod engine;
pub mod events;
pub mod explain;
pub mod rules;
pub mod top;
pub mod types;

pub use types::{Action, Direction, Probe, ProbeShape, Reason, RuleRef, Timestamp, Verdict};

pub use engine::{DetectorMode, Engine, PacketIn};
pub use explain::Explanation;
