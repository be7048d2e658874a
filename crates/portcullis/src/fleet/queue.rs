//! Scan findings waiting to be pushed to the LAPI: a bounded queue kept
//! on disk (`crowdsec-alerts.jsonl` under `--state-dir`), so findings
//! survive a LAPI outage and a daemon restart.
//!
//! The file is append-only between compactions: one line per finding
//! (`{"id": N, "finding": {...}}`) and one per finding pushed
//! (`{"done": N}`), each written and synced before the queue changes in
//! memory. A finding is pushed once: its `done` line is synced right after
//! the LAPI accepted it (only a crash between the two pushes it again).
//! Compaction rewrites the file with what is pending (temporary file,
//! then rename) once done lines outnumber pending ones. Damaged lines are
//! skipped and counted. Beyond `max` pending findings the oldest is
//! dropped and counted.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use portcullis_crowdsec::ScanAlert;
use serde::{Deserialize, Serialize};

/// The file's name in the state folder.
pub const FILE: &str = "crowdsec-alerts.jsonl";

/// A scan finding as pushed (see [`ScanAlert`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub source: IpAddr,
    /// `tcp-syn`, `udp`, ... (the `scan` event's `kind`).
    pub kind: String,
    /// A sample of the ports probed.
    pub ports: Vec<u16>,
    pub probes: u64,
    /// First and last probe, ms since the epoch.
    pub start_ms: u64,
    pub stop_ms: u64,
    /// Our ban's length in seconds (the alert's decision); 0: none.
    pub ban_secs: u64,
}

impl Finding {
    pub fn alert(&self) -> ScanAlert {
        let t = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        ScanAlert {
            source: self.source,
            kind: self.kind.clone(),
            ports: self.ports.clone(),
            probes: self.probes,
            start: t(self.start_ms),
            stop: t(self.stop_ms),
            ban: (self.ban_secs > 0).then(|| Duration::from_secs(self.ban_secs)),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Add { id: u64, finding: Finding },
    Done { done: u64 },
}

/// The queue. See the module docs.
#[derive(Debug)]
pub struct AlertQueue {
    path: PathBuf,
    file: File,
    pending: VecDeque<(u64, Finding)>,
    next_id: u64,
    done_lines: usize,
    max: usize,
    /// Findings dropped because the queue was full.
    pub dropped: u64,
    /// Damaged lines skipped when the file was read.
    pub damaged: u64,
}

impl AlertQueue {
    /// Opens (or creates) the queue in `dir`, keeping at most `max`.
    pub fn open(dir: &Path, max: usize) -> Result<Self> {
        let path = dir.join(FILE);
        let mut pending: VecDeque<(u64, Finding)> = VecDeque::new();
        let mut damaged = 0;
        let mut next_id = 1;
        match File::open(&path) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line = line.with_context(|| format!("cannot read {}", path.display()))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Line>(&line) {
                        Ok(Line::Add { id, finding }) => {
                            next_id = next_id.max(id + 1);
                            pending.push_back((id, finding));
                        }
                        Ok(Line::Done { done }) => pending.retain(|(id, _)| *id != done),
                        Err(_) => damaged += 1,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        let max = max.max(1);
        let mut dropped = 0;
        while pending.len() > max {
            pending.pop_front();
            dropped += 1;
        }
        let file = rewrite(&path, &pending)?;
        Ok(Self {
            path,
            file,
            pending,
            next_id,
            done_lines: 0,
            max,
            dropped,
            damaged,
        })
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The oldest finding waiting.
    pub fn front(&self) -> Option<&Finding> {
        self.pending.front().map(|(_, f)| f)
    }

    /// Queues a finding (on disk first). When full, the oldest is dropped.
    pub fn push(&mut self, finding: Finding) -> Result<()> {
        let id = self.next_id;
        self.append(&Line::Add {
            id,
            finding: finding.clone(),
        })?;
        self.next_id += 1;
        self.pending.push_back((id, finding));
        if self.pending.len() > self.max {
            if let Some((old, _)) = self.pending.front() {
                let old = *old;
                self.append(&Line::Done { done: old })?;
                self.pending.pop_front();
                self.done_lines += 1;
                self.dropped += 1;
            }
        }
        self.maybe_compact()
    }

    /// The oldest finding was pushed: marked done on disk, then dropped.
    pub fn pop_pushed(&mut self) -> Result<()> {
        let Some(&(id, _)) = self.pending.front() else {
            return Ok(());
        };
        self.append(&Line::Done { done: id })?;
        self.pending.pop_front();
        self.done_lines += 1;
        self.maybe_compact()
    }

    fn append(&mut self, line: &Line) -> Result<()> {
        let mut text = serde_json::to_string(line)?;
        text.push('\n');
        self.file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    fn maybe_compact(&mut self) -> Result<()> {
        if self.done_lines > 64 && self.done_lines > self.pending.len() {
            self.file = rewrite(&self.path, &self.pending)?;
            self.done_lines = 0;
        }
        Ok(())
    }
}

/// Writes `pending` to a new file that replaces `path`; returns it open
/// for appending.
fn rewrite(path: &Path, pending: &VecDeque<(u64, Finding)>) -> Result<File> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut text = String::new();
    for (id, f) in pending {
        text.push_str(&serde_json::to_string(&Line::Add {
            id: *id,
            finding: f.clone(),
        })?);
        text.push('\n');
    }
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn finding(n: u8) -> Finding {
        Finding {
            source: IpAddr::from([198, 18, 0, n]),
            kind: "tcp-syn".into(),
            ports: vec![22, 80, 443],
            probes: 40,
            start_ms: 1_796_528_032_000,
            stop_ms: 1_796_528_042_000,
            ban_secs: 600,
        }
    }

    #[test]
    fn findings_survive_a_restart_and_each_is_pushed_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = AlertQueue::open(dir.path(), 10).unwrap();
        q.push(finding(1)).unwrap();
        q.push(finding(2)).unwrap();
        q.push(finding(3)).unwrap();
        assert_eq!(q.front(), Some(&finding(1)));
        q.pop_pushed().unwrap();
        drop(q);
        // Restart: 2 and 3 wait, 1 is not pushed again.
        let mut q = AlertQueue::open(dir.path(), 10).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q.front(), Some(&finding(2)));
        q.push(finding(4)).unwrap();
        q.pop_pushed().unwrap();
        q.pop_pushed().unwrap();
        drop(q);
        let q = AlertQueue::open(dir.path(), 10).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q.front(), Some(&finding(4)));
        let alert = q.front().unwrap().alert();
        assert_eq!(alert.ban, Some(Duration::from_secs(600)));
        assert_eq!(alert.source, IpAddr::from([198, 18, 0, 4]));
    }

    #[test]
    fn bounded_compacted_and_damage_tolerated() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = AlertQueue::open(dir.path(), 3).unwrap();
        for n in 1..=5 {
            q.push(finding(n)).unwrap();
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped, 2);
        assert_eq!(q.front(), Some(&finding(3)));
        // Many pushes and pops: the file stays small.
        for n in 0..200u8 {
            q.push(finding(n)).unwrap();
            q.pop_pushed().unwrap();
        }
        let size = fs::metadata(q.path()).unwrap().len();
        assert!(size < 40_000, "file not compacted: {size} bytes");
        let kept = q.len();
        drop(q);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        f.write_all(b"{\"id\": \"x\"}\nnot json\n").unwrap();
        let q = AlertQueue::open(dir.path(), 3).unwrap();
        assert_eq!(q.damaged, 2);
        assert_eq!(q.len(), kept);
        // A smaller bound on restart drops the oldest.
        let q = AlertQueue::open(dir.path(), 1).unwrap();
        assert_eq!(q.len(), 1);
    }
}
