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
//!
//! **A failing source is closed, not fatal.** When one of its sources
//! fails, a path closes it, returns a [`SourceFailure`] naming it, and
//! keeps reading the others (waiting out `wait` when none is left); the
//! packet loop reopens it later through [`PacketPath::reopen`], as
//! [`recover::Recovery`] says.

use std::time::Duration;

use portcullis_engine::events::Event;
use portcullis_engine::Engine;

use crate::status::Status;

pub mod inline;
#[cfg(test)]
pub mod memory;
pub mod monitor;
pub mod recover;

pub use recover::{SourceFailure, SourceId};

/// Where packets come from and go.
pub trait PacketPath {
    /// The line the daemon prints once it serves (after saved bans are back
    /// in the kernel): `running on NFQUEUE 0 (fail-open)`, `monitoring ...`.
    fn ready_line(&self) -> String;
    /// Processes what arrives within `wait` (deciding it, inline). A
    /// source that fails is closed and named in the error; the next steps
    /// read the others.
    fn step(&mut self, engine: &mut Engine, wait: Duration) -> Result<(), SourceFailure>;
    /// Opens a failed source again; the error if it still fails.
    fn reopen(&mut self, id: &SourceId) -> Result<(), SourceFailure>;
    /// Packets lost since the last call, as events (called every second).
    fn losses(&mut self) -> Vec<Event>;
    /// Fills in this path's part of a status snapshot.
    fn status(&mut self, s: &mut Status);
    /// Shutting down: settle what is still pending.
    fn finish(&mut self);
}
