//! An in-memory packet path for tests (smoltcp's `Loopback`): the test
//! pushes packets through a [`MemoryPath`] handle, the packet loop decides
//! them as it would queued ones, and the verdicts are recorded in order.
//! Nothing here waits: an empty path returns at once. Its one source
//! (`queue memory`) can be made to fail, and its reopening to fail too, as
//! a real socket or capture would.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use portcullis_engine::events::{Event, SourceKind};
use portcullis_engine::{Engine, Verdict};
use portcullis_wire::{Direction, LinkType, PacketIn, Timestamp};

use crate::path::{PacketPath, SourceFailure, SourceId};
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
    /// The next step fails with this error (fatal or not).
    fail: Option<(String, bool)>,
    /// Failed and not reopened: packets wait.
    closed: bool,
    /// This many reopenings fail before one succeeds.
    refuse: u32,
    reopens: u32,
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

    /// The path's one source.
    pub fn id() -> SourceId {
        SourceId::new(SourceKind::Queue, "memory")
    }

    /// The next step fails with `error` and closes the source; the next
    /// `refuse` reopenings fail too.
    pub fn fail(&self, error: &str, fatal: bool, refuse: u32) {
        self.with(|i| {
            i.fail = Some((error.to_owned(), fatal));
            i.refuse = refuse;
        });
    }

    /// Reopenings tried so far (failed ones included).
    pub fn reopens(&self) -> u32 {
        self.with(|i| i.reopens)
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

    fn step(&mut self, engine: &mut Engine, _wait: Duration) -> Result<(), SourceFailure> {
        if let Some((error, fatal)) = self.with(|i| {
            let f = i.fail.take();
            i.closed |= f.is_some();
            f
        }) {
            return Err(SourceFailure {
                id: Self::id(),
                error: anyhow::anyhow!(error),
                fatal,
            });
        }
        if self.with(|i| i.closed) {
            return Ok(());
        }
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

    fn reopen(&mut self, id: &SourceId) -> Result<(), SourceFailure> {
        assert_eq!(id, &Self::id(), "only the memory source is reopened");
        self.with(|i| {
            i.reopens += 1;
            if i.refuse > 0 {
                i.refuse -= 1;
                Err(SourceFailure::new(
                    Self::id(),
                    anyhow::anyhow!("still failing"),
                ))
            } else {
                i.closed = false;
                Ok(())
            }
        })
    }

    fn losses(&mut self) -> Vec<Event> {
        Vec::new()
    }

    fn status(&mut self, _s: &mut Status) {}

    fn finish(&mut self) {
        self.with(|i| i.finished = true);
    }
}
