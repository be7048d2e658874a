//! Where events go: a JSON Lines file (or stdout) for machines, one readable
//! line per event on the console for people.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use portcullis_engine::events::Event;

/// The event outputs.
pub struct Output {
    json: Option<Box<dyn Write + Send>>,
    console: Option<io::Stderr>,
}

impl Output {
    /// `events`: a path to append JSON Lines to, `-` for stdout, or none.
    /// `console`: readable lines on stderr.
    pub fn new(events: Option<&Path>, console: bool) -> Result<Self> {
        let json: Option<Box<dyn Write + Send>> = match events {
            None => None,
            Some(p) if p.as_os_str() == "-" => Some(Box::new(BufWriter::new(io::stdout()))),
            Some(p) => {
                let f: File = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("cannot open event log {}", p.display()))?;
                Some(Box::new(BufWriter::with_capacity(1 << 16, f)))
            }
        };
        Ok(Self {
            json,
            console: console.then(io::stderr),
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
            let _ = writeln!(c, "{ev}");
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        if let Some(w) = self.json.as_mut() {
            w.flush().context("flushing event log")?;
        }
        Ok(())
    }
}
