//! `portcullis replay` and `portcullis demo`: the engine over a capture.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use portcullis_capture::{FileSource, PacketSource};
use portcullis_engine::config::Config;
use portcullis_engine::engine::{DetectorMode, Engine, PacketIn};
use portcullis_engine::Reason;

use crate::cli::{Common, DetectorArg};
use crate::config;
use crate::output::Output;

/// Runs `source` through a fresh engine, writing events as they come.
pub fn run_source(
    source: &mut dyn PacketSource,
    cfg: Arc<Config>,
    common: &Common,
) -> Result<ReplayStats> {
    let mode = match common.detector {
        DetectorArg::Inline => DetectorMode::Inline,
        DetectorArg::Thread => DetectorMode::Thread { capacity: 65_536 },
    };
    let mut engine = Engine::new(cfg, mode).context("starting the scan detector")?;
    let mut out = Output::new(common.engine.events.as_deref(), !common.engine.quiet)?;
    let started = Instant::now();
    while let Some(p) = source.next_packet().context("reading the capture")? {
        engine.process(&PacketIn {
            data: p.data,
            link: p.link,
            ts: p.ts,
            dir: None,
        });
        for ev in engine.drain_events() {
            out.write(&ev)?;
        }
    }
    engine.finish();
    for ev in engine.drain_events() {
        out.write(&ev)?;
    }
    out.flush()?;
    Ok(ReplayStats {
        elapsed: started.elapsed(),
        counters: engine.counters().clone(),
    })
}

/// What a replay did, for the closing summary.
#[derive(Debug)]
pub struct ReplayStats {
    pub elapsed: std::time::Duration,
    pub counters: portcullis_engine::engine::Counters,
}

impl ReplayStats {
    pub fn print(&self) {
        let c = &self.counters;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "replayed {} packets in {:.3}s ({:.0} packets/s): {} accepted, {} dropped",
            c.packets,
            secs,
            c.packets as f64 / secs,
            c.accepted,
            c.dropped
        );
        let reasons: Vec<String> = Reason::ALL
            .iter()
            .filter(|r| c.reason(**r) > 0)
            .map(|r| format!("{r}={}", c.reason(*r)))
            .collect();
        eprintln!(
            "verdicts: {}; scans {}, bans {}, unbans {}, dns queries {}, events {} ({} suppressed)",
            reasons.join(" "),
            c.scans,
            c.bans,
            c.unbans,
            c.dns_queries,
            c.events,
            c.events_suppressed
        );
    }
}

pub fn replay_file(file: &Path, common: &Common) -> Result<ExitCode> {
    let cfg = config::load(common.engine.config.as_deref())?;
    let mut source = FileSource::open(file)?;
    let stats = run_source(&mut source, cfg, common)?;
    if source.skipped > 0 {
        eprintln!(
            "skipped {} packets on interfaces with unsupported link types",
            source.skipped
        );
    }
    stats.print();
    Ok(ExitCode::SUCCESS)
}

pub fn demo(save: Option<&Path>, common: &Common) -> Result<ExitCode> {
    let cfg = config::load(common.engine.config.as_deref())?;
    let frames = portcullis_traffic::demo(1_795_000_000_000_000);
    let dir = tempfile::tempdir().context("creating a temporary folder")?;
    let path = match save {
        Some(p) => p.to_path_buf(),
        None => dir.path().join("demo.pcap"),
    };
    let f =
        std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
    portcullis_traffic::write_pcap(std::io::BufWriter::new(f), &frames)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "demo: replaying {} generated packets from {}",
        frames.len(),
        path.display()
    );
    let mut source = FileSource::open(&path)?;
    run_source(&mut source, cfg, common)?.print();
    Ok(ExitCode::SUCCESS)
}
