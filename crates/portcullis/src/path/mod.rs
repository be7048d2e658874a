//! Packet paths: where packets come from and where their verdicts go, the
//! part of the daemon that differs between modes, behind one trait.
//!
//! - [`inline::InlinePath`]: NFQUEUE (held packets, verdicts, NXDOMAIN
//!   answers) and NFLOG (observed packets) in one `step`;
//! - [`monitor::MonitorPath`]: libpcap on one or more interfaces;
//! - `memory::MemoryPath` (tests): packets pushed by the test, verdicts
//!   recorded, so the packet loop runs without root.
//!
//! A path hands packets to the engine and nothing else: it knows nothing
//! of the kernel thread, the control socket or the event writer.

use std::time::Duration;

use anyhow::Result;
use portcullis_engine::events::Event;
use portcullis_engine::Engine;

use crate::status::Status;

pub mod inline;
#[cfg(test)]
pub mod memory;
pub mod monitor;

/// Where packets come from and go.
pub trait PacketPath {
    /// The line the daemon prints once it serves (after saved bans are back
    /// in the kernel): `running on NFQUEUE 0 (fail-open)`, `monitoring ...`.
    fn ready_line(&self) -> String;
    /// Processes what arrives within `wait` (deciding it, inline).
    fn step(&mut self, engine: &mut Engine, wait: Duration) -> Result<()>;
    /// Packets lost since the last call, as events (called every second).
    fn losses(&mut self) -> Vec<Event>;
    /// Fills in this path's part of a status snapshot.
    fn status(&mut self, s: &mut Status);
    /// Shutting down: settle what is still pending.
    fn finish(&mut self);
}
