//! Where events go: a JSON Lines file (or stdout) for machines, one readable
//! line per event on the console for people.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::Sender;
use indicatif::ProgressBar;
use portcullis_engine::events::Event;

/// The event outputs.
pub struct Output {
    json: Option<Box<dyn Write + Send>>,
    /// The event log's path when it is a file (what [`Output::reopen`]
    /// opens again).
    path: Option<PathBuf>,
    console: Option<io::Stderr>,
    /// A progress bar on the console: event lines are printed above it.
    progress: Option<ProgressBar>,
}

fn open_log(p: &Path) -> Result<Box<dyn Write + Send>> {
    let f: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .with_context(|| format!("cannot open event log {}", p.display()))?;
    Ok(Box::new(BufWriter::with_capacity(1 << 16, f)))
}

impl Output {
    /// `events`: a path to append JSON Lines to, `-` for stdout, or none.
    /// `console`: readable lines on stderr.
    pub fn new(events: Option<&Path>, console: bool) -> Result<Self> {
        let (json, path): (Option<Box<dyn Write + Send>>, _) = match events {
            None => (None, None),
            Some(p) if p.as_os_str() == "-" => (Some(Box::new(BufWriter::new(io::stdout()))), None),
            Some(p) => (Some(open_log(p)?), Some(p.to_path_buf())),
        };
        Ok(Self {
            json,
            path,
            console: console.then(io::stderr),
            progress: None,
        })
    }

    pub fn write(&mut self, ev: &Event) -> Result<()> {
        if let Some(w) = self.json.as_mut() {
            serde_json::to_writer(&mut *w, ev).context("writing event")?;
            w.write_all(b"\n").context("writing event")?;
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
            w.flush().context("flushing event log")?;
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
            old.flush().context("flushing the old event log")?;
        }
        Ok(())
    }
}

/// Events waiting for the writer before new ones are dropped (and counted).
const EVENT_QUEUE: usize = 65_536;
/// How often the writer checks for a reopen request when idle.
const REOPEN_CHECK: Duration = Duration::from_millis(100);

/// The event writer. `reopen` (SIGUSR1, logrotate) makes it reopen the
/// event log at its path; it checks at least every [`REOPEN_CHECK`].
pub fn spawn_writer(
    events: Option<&Path>,
    console: bool,
    reopen: Arc<AtomicBool>,
) -> Result<(Sender<Event>, JoinHandle<()>)> {
    let mut out = Output::new(events, console)?;
    let (tx, rx) = crossbeam_channel::bounded::<Event>(EVENT_QUEUE);
    let handle = std::thread::Builder::new()
        .name("portcullis-events".into())
        .spawn(move || loop {
            match rx.recv_timeout(REOPEN_CHECK) {
                Ok(ev) => {
                    let _ = out.write(&ev);
                    for ev in rx.try_iter().take(1024) {
                        let _ = out.write(&ev);
                    }
                    // Written promptly: a SIEM tails this file.
                    let _ = out.flush();
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    let _ = out.flush();
                    break;
                }
            }
            if reopen.swap(false, Ordering::Relaxed) {
                if let Err(e) = out.reopen() {
                    log::warn!("{e:#}; events still go to the old file");
                }
            }
        })
        .context("starting the event writer")?;
    Ok((tx, handle))
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
