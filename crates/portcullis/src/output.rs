//! Where events go: a JSON Lines file (or stdout) for machines, one readable
//! line per event on the console for people.
//!
//! **Invariant: a failing event log never stops the daemon and is never
//! silent.** An event the file did not take (disk full, I/O error) is
//! counted as lost ([`WriterStats`]: `status`, metrics) and reported
//! through the rate-limited operator log; the writer drops what its
//! buffer held unwritten rather than letting it grow, and goes on: events
//! are written again as soon as the file takes them. Each event is one
//! whole line or none (a line cut by a failed write is ended before the
//! next one).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};
use indicatif::ProgressBar;
use portcullis_engine::events::Event;

/// The buffer in front of the event log.
const LOG_BUFFER: usize = 1 << 16;

type Json = BufWriter<Box<dyn Write + Send>>;

/// The event outputs.
pub struct Output {
    json: Option<Json>,
    /// One serialized event, written whole into `json`.
    line: Vec<u8>,
    /// A failed write left a line cut short in the file: end it first.
    resync: bool,
    /// Events the log did not take.
    lost: u64,
    /// Writes and flushes of the log that failed.
    errors: u64,
    /// The event log's path when it is a file (what [`Output::reopen`]
    /// opens again).
    path: Option<PathBuf>,
    console: Option<io::Stderr>,
    /// A progress bar on the console: event lines are printed above it.
    progress: Option<ProgressBar>,
}

fn open_log(p: &Path) -> Result<Json> {
    let f: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .with_context(|| format!("cannot open event log {}", p.display()))?;
    Ok(BufWriter::with_capacity(LOG_BUFFER, Box::new(f)))
}

/// The events in what a failed write left unwritten: the line ends
/// after some text. A newline at the start ends a line whose text did
/// reach the file (or is the one that ends a cut line), and empty lines
/// are the resync newlines.
fn events_in(held: &[u8]) -> u64 {
    held.windows(2)
        .filter(|w| w[1] == b'\n' && w[0] != b'\n')
        .count() as u64
}

impl Output {
    /// `events`: a path to append JSON Lines to, `-` for stdout, or none.
    /// `console`: readable lines on stderr.
    pub fn new(events: Option<&Path>, console: bool) -> Result<Self> {
        let (json, path): (Option<Json>, _) = match events {
            None => (None, None),
            Some(p) if p.as_os_str() == "-" => (
                Some(BufWriter::with_capacity(LOG_BUFFER, Box::new(io::stdout()))),
                None,
            ),
            Some(p) => (Some(open_log(p)?), Some(p.to_path_buf())),
        };
        Ok(Self::with(json, path, console))
    }

    fn with(json: Option<Json>, path: Option<PathBuf>, console: bool) -> Self {
        Self {
            json,
            line: Vec::with_capacity(1024),
            resync: false,
            lost: 0,
            errors: 0,
            path,
            console: console.then(io::stderr),
            progress: None,
        }
    }

    /// An output to any writer (tests: one that fails).
    #[cfg(test)]
    fn to_writer(w: Box<dyn Write + Send>) -> Self {
        Self::with(Some(BufWriter::with_capacity(LOG_BUFFER, w)), None, false)
    }

    /// Events the log did not take, since the start.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Failed writes and flushes of the log, since the start.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// A write or flush of the log failed: what its buffer still held
    /// (whole events, each ending in a newline) is dropped and counted
    /// lost, so the buffer cannot grow and a later write starts clean.
    fn failed(&mut self, extra_lost: u64) {
        self.errors += 1;
        self.lost += extra_lost;
        let Some(w) = self.json.take() else { return };
        let (inner, held) = w.into_parts();
        let held = held.unwrap_or_default();
        self.lost += events_in(&held);
        // Part of a line may have reached the file.
        self.resync = true;
        self.json = Some(BufWriter::with_capacity(LOG_BUFFER, inner));
    }

    pub fn write(&mut self, ev: &Event) -> Result<()> {
        if let Some(w) = self.json.as_mut() {
            self.line.clear();
            if self.resync {
                self.line.push(b'\n');
            }
            serde_json::to_writer(&mut self.line, ev).context("serializing event")?;
            self.line.push(b'\n');
            match w.write_all(&self.line) {
                Ok(()) => self.resync = false,
                Err(e) => {
                    self.failed(1);
                    return Err(e).context("writing the event log");
                }
            }
        }
        if let Some(c) = self.console.as_mut() {
            // The console is best effort: a closed terminal must not stop
            // the firewall.
            match &self.progress {
                None => {
                    let _ = writeln!(c, "{ev}");
                }
                // Clear the bar, print the line, draw the bar again below.
                Some(bar) => bar.suspend(|| {
                    let _ = writeln!(c, "{ev}");
                }),
            }
        }
        Ok(())
    }

    /// Console lines from now on are printed above `bar` instead of
    /// through it.
    pub fn set_progress(&mut self, bar: ProgressBar) {
        self.progress = Some(bar);
    }

    pub fn flush(&mut self) -> Result<()> {
        if let Some(w) = self.json.as_mut() {
            if let Err(e) = w.flush() {
                self.failed(0);
                return Err(e).context("writing the event log");
            }
        }
        Ok(())
    }

    /// Flushes and reopens the event log at the same path (append, created
    /// if missing): after logrotate has renamed the file, new events go to
    /// a new file at the configured path (SIGUSR1 in `portcullis run`).
    /// A no-op for stdout or no event log. If the reopen fails, events keep
    /// going to the old file, so none is lost, and the error is returned.
    pub fn reopen(&mut self) -> Result<()> {
        let Some(p) = self.path.as_deref() else {
            return Ok(());
        };
        let fresh = open_log(p)?;
        if let Some(mut old) = self.json.replace(fresh) {
            if let Err(e) = old.flush() {
                self.errors += 1;
                let (_, held) = old.into_parts();
                let held = held.unwrap_or_default();
                self.lost += events_in(&held);
                return Err(e).context("flushing the old event log");
            }
        }
        Ok(())
    }
}

/// Events waiting for the writer before new ones are dropped (and counted).
const EVENT_QUEUE: usize = 65_536;
/// How often the writer checks for a reopen request when idle.
const REOPEN_CHECK: Duration = Duration::from_millis(100);

/// What the event writer could not write, since the start (`status`,
/// metrics).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Events the event log did not take.
    pub lost: AtomicU64,
    /// Failed writes and flushes of the event log.
    pub errors: AtomicU64,
}

/// Writes `result`'s failure to the operator log (rate-limited per call
/// site by the logger) and the output's counts to `stats`.
fn account(out: &Output, stats: &WriterStats, result: Result<()>) {
    stats.lost.store(out.lost(), Ordering::Relaxed);
    stats.errors.store(out.errors(), Ordering::Relaxed);
    if let Err(e) = result {
        log::error!(
            "{e:#}: {} events lost so far; the daemon goes on and writes again as soon as the event log takes it",
            out.lost()
        );
    }
}

/// The event writer. `reopen` (SIGUSR1, logrotate) makes it reopen the
/// event log at its path; it checks at least every [`REOPEN_CHECK`].
pub fn spawn_writer(
    events: Option<&Path>,
    console: bool,
    reopen: Arc<AtomicBool>,
) -> Result<(Sender<Event>, JoinHandle<()>, Arc<WriterStats>)> {
    let out = Output::new(events, console)?;
    let (tx, rx) = crossbeam_channel::bounded::<Event>(EVENT_QUEUE);
    let stats = Arc::new(WriterStats::default());
    let handle = std::thread::Builder::new()
        .name("portcullis-events".into())
        .spawn({
            let stats = Arc::clone(&stats);
            move || writer_loop(out, &rx, &reopen, &stats)
        })
        .context("starting the event writer")?;
    Ok((tx, handle, stats))
}

fn writer_loop(mut out: Output, rx: &Receiver<Event>, reopen: &AtomicBool, stats: &WriterStats) {
    loop {
        match rx.recv_timeout(REOPEN_CHECK) {
            Ok(ev) => {
                // The first failure of a batch is reported; the rest are
                // counted.
                let mut result = out.write(&ev);
                for ev in rx.try_iter().take(1024) {
                    result = result.and(out.write(&ev));
                }
                // Written promptly: a SIEM tails this file.
                result = result.and(out.flush());
                account(&out, stats, result);
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                let result = out.flush();
                account(&out, stats, result);
                break;
            }
        }
        if reopen.swap(false, Ordering::Relaxed) {
            if let Err(e) = out.reopen() {
                log::warn!("{e:#}; events still go to the old file");
            }
            account(&out, stats, Ok(()));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use portcullis_engine::events::{Body, ReloadEvent, ReloadInfo};
    use portcullis_engine::Timestamp;

    fn event(us: u64) -> Event {
        Event::new(
            Timestamp::from_micros(us),
            Body::Reload(ReloadEvent {
                reload: ReloadInfo { error: None },
            }),
        )
    }

    fn times(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["timestamp"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn reopen_after_rename_writes_new_events_to_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.jsonl");
        let rotated = dir.path().join("events.jsonl.1");
        let mut out = Output::new(Some(&log), false).unwrap();
        out.write(&event(1_000_000)).unwrap();
        out.write(&event(2_000_000)).unwrap();
        // Not flushed yet: reopen must flush the old file's buffer there.
        std::fs::rename(&log, &rotated).unwrap();
        out.reopen().unwrap();
        out.write(&event(3_000_000)).unwrap();
        out.flush().unwrap();

        let old = times(&rotated);
        let new = times(&log);
        assert_eq!(old.len(), 2, "{old:?}");
        assert_eq!(new.len(), 1, "{new:?}");
        assert!(
            old[0].contains(":00:01") && old[1].contains(":00:02"),
            "{old:?}"
        );
        assert!(new[0].contains(":00:03"), "{new:?}");
    }

    #[test]
    fn reopen_without_rename_appends() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("events.jsonl");
        let mut out = Output::new(Some(&log), false).unwrap();
        out.write(&event(1_000_000)).unwrap();
        out.reopen().unwrap();
        out.write(&event(2_000_000)).unwrap();
        out.flush().unwrap();
        assert_eq!(times(&log).len(), 2);
    }

    #[test]
    fn reopen_of_stdout_or_nothing_is_a_no_op() {
        Output::new(None, false).unwrap().reopen().unwrap();
        Output::new(Some(Path::new("-")), false)
            .unwrap()
            .reopen()
            .unwrap();
    }

    /// A file that takes `room` bytes, then fails like a full disk until
    /// `room` grows again.
    #[derive(Clone)]
    struct Disk {
        data: Arc<std::sync::Mutex<Vec<u8>>>,
        room: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Write for Disk {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let mut d = self.data.lock().unwrap();
            let room = self.room.load(Ordering::Relaxed).saturating_sub(d.len());
            if room == 0 {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let n = b.len().min(room);
            d.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Issue 11, item 4: a full disk loses events, counted; the writer
    /// goes on, its buffer does not grow, and once there is room again
    /// every line in the file is a whole event.
    #[test]
    fn a_full_disk_loses_events_counted_and_the_log_resumes_whole() {
        let disk = Disk {
            data: Arc::default(),
            room: Arc::new(std::sync::atomic::AtomicUsize::new(300)),
        };
        let mut out = Output::to_writer(Box::new(disk.clone()));
        let mut failures = 0;
        for i in 0..10u64 {
            if out.write(&event(1_000_000 * (i + 1))).is_err() {
                failures += 1;
            }
            if out.flush().is_err() {
                failures += 1;
            }
        }
        // About two events fit in 300 bytes; the rest were lost, each
        // counted once, and every failure was returned.
        let written = disk
            .data
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        assert!((1..10).contains(&written), "{written}");
        assert!(out.lost() >= 10 - written - 1, "lost {}", out.lost());
        assert!(out.lost() <= 10 - written, "lost {}", out.lost());
        assert_eq!(out.errors(), failures);
        assert!(failures > 0);
        // Room again: the next event is written, on a line of its own.
        disk.room.store(1 << 20, Ordering::Relaxed);
        out.write(&event(99_000_000)).unwrap();
        out.flush().unwrap();
        let text = String::from_utf8(disk.data.lock().unwrap().clone()).unwrap();
        let last = text.lines().last().unwrap();
        let v: serde_json::Value = serde_json::from_str(last).unwrap();
        assert!(
            v["timestamp"].as_str().unwrap().contains(":01:39"),
            "{text}"
        );
        // Whole lines everywhere but where the disk cut one.
        let broken = text
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
            .count();
        assert!(broken <= 1, "{text}");
    }

    /// The writer thread on `/dev/full` (a real ENOSPC): it keeps running,
    /// and counts what it lost and why.
    #[test]
    fn the_writer_thread_on_a_full_device_counts_and_goes_on() {
        let (tx, handle, stats) = spawn_writer(
            Some(Path::new("/dev/full")),
            false,
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap();
        for i in 0..50 {
            tx.send(event(1_000_000 * (i + 1))).unwrap();
        }
        drop(tx);
        handle.join().unwrap();
        assert_eq!(stats.lost.load(Ordering::Relaxed), 50);
        assert!(stats.errors.load(Ordering::Relaxed) >= 1);
    }

    #[test]
    fn a_failed_reopen_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("logs");
        std::fs::create_dir(&sub).unwrap();
        let log = sub.join("events.jsonl");
        let moved = dir.path().join("moved");
        let mut out = Output::new(Some(&log), false).unwrap();
        out.write(&event(1_000_000)).unwrap();
        // The folder is gone: the path cannot be opened again.
        std::fs::rename(&sub, &moved).unwrap();
        assert!(out.reopen().is_err());
        out.write(&event(2_000_000)).unwrap();
        out.flush().unwrap();
        assert_eq!(times(&moved.join("events.jsonl")).len(), 2);
    }
}
