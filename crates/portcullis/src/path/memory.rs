//! An in-memory packet path for tests (smoltcp's `Loopback`): the test
//! pushes packets through a [`MemoryPath`] handle, the packet loop decides
//! them as it would queued ones, and the verdicts are recorded in order.
//! Nothing here waits: an empty path returns at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Result;
use portcullis_engine::events::Event;
use portcullis_engine::{Engine, Verdict};
use portcullis_wire::{Direction, LinkType, PacketIn, Timestamp};

use crate::path::PacketPath;
use crate::status::Status;

/// A packet waiting in a [`MemoryPath`].
#[derive(Debug, Clone)]
pub struct Frame {
    pub data: Vec<u8>,
    pub link: LinkType,
    pub ts: Timestamp,
    pub dir: Option<Direction>,
}

#[derive(Debug, Default)]
struct Inner {
    waiting: VecDeque<Frame>,
    verdicts: Vec<Verdict>,
    finished: bool,
}

/// Clones share the same packets and verdicts: keep one, give the other to
/// the packet loop.
#[derive(Debug, Clone, Default)]
pub struct MemoryPath {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryPath {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Queues a packet for the next `step`.
    pub fn push(&self, frame: Frame) {
        self.with(|i| i.waiting.push_back(frame));
    }

    /// The verdicts given so far, in packet order.
    pub fn verdicts(&self) -> Vec<Verdict> {
        self.with(|i| i.verdicts.clone())
    }

    /// Whether the loop has shut the path down.
    pub fn finished(&self) -> bool {
        self.with(|i| i.finished)
    }
}

impl PacketPath for MemoryPath {
    fn ready_line(&self) -> String {
        "running on memory".to_owned()
    }

    fn step(&mut self, engine: &mut Engine, _wait: Duration) -> Result<()> {
        let frames: Vec<Frame> = self.with(|i| i.waiting.drain(..).collect());
        let verdicts: Vec<Verdict> = frames
            .iter()
            .map(|f| {
                engine.process(&PacketIn {
                    data: &f.data,
                    link: f.link,
                    ts: f.ts,
                    dir: f.dir,
                    orig_len: None,
                })
            })
            .collect();
        if !verdicts.is_empty() {
            engine.flush_due();
        }
        self.with(|i| i.verdicts.extend(verdicts));
        Ok(())
    }

    fn losses(&mut self) -> Vec<Event> {
        Vec::new()
    }

    fn status(&mut self, _s: &mut Status) {}

    fn finish(&mut self) {
        self.with(|i| i.finished = true);
    }
}
