//! `portcullis replay` and `portcullis demo`: the engine over a capture.

use std::fs::File;
use std::io::{BufReader, IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use anyhow::{Context, Result};
use portcullis_capture::{FileSource, PacketSource};
use portcullis_engine::config::Config;
use portcullis_engine::engine::{DetectorMode, Engine, PacketIn};
use portcullis_engine::Reason;

use crate::cli::Common;
use crate::config;
use crate::output::Output;

/// Packets between two progress updates: keeps the bar's cost (a clock
/// read and an atomic) off the per-packet path.
const PROGRESS_EVERY: u64 = 4096;

/// A capture file being read, with the count of bytes read so far for the
/// progress bar.
struct Capture {
    source: FileSource,
    read: Arc<AtomicU64>,
    len: u64,
}

/// Counts the bytes that pass through it.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn open_capture(path: &Path) -> Result<Capture> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let read = Arc::new(AtomicU64::new(0));
    // Counted below the buffer: the position advances a buffer at a time,
    // which is all a progress bar needs.
    let counting = Counting {
        inner: file,
        read: Arc::clone(&read),
    };
    let source = FileSource::new(BufReader::with_capacity(1 << 20, counting))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Capture { source, read, len })
}

/// A progress bar over the bytes of the capture, drawn on stderr only when
/// stderr is a terminal and `--no-progress` is not given.
fn progress_bar(cap: &Capture, common: &Common) -> Option<ProgressBar> {
    if common.no_progress || !std::io::stderr().is_terminal() {
        return None;
    }
    let style = ProgressStyle::with_template(
        "replay {bar:40} {binary_bytes}/{binary_total_bytes} {percent}% eta {eta}",
    )
    .ok()?;
    let bar = ProgressBar::with_draw_target(Some(cap.len), ProgressDrawTarget::stderr())
        .with_style(style);
    Some(bar)
}

/// Runs a capture file through a fresh engine, with a progress bar on a
/// terminal.
fn run_capture(cap: &mut Capture, cfg: Arc<Config>, common: &Common) -> Result<ReplayStats> {
    let bar = progress_bar(cap, common);
    let read = Arc::clone(&cap.read);
    let progress = bar.as_ref().map(|b| (b, &*read));
    let stats = run_source(&mut cap.source, cfg, common, progress);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    stats
}

/// Runs `source` through a fresh engine, writing events as they come.
/// `progress`: a bar to move to the byte count every few thousand packets
/// (console lines are then printed above it).
pub fn run_source(
    source: &mut dyn PacketSource,
    cfg: Arc<Config>,
    common: &Common,
    progress: Option<(&ProgressBar, &AtomicU64)>,
) -> Result<ReplayStats> {
    // Inline, never on a thread: a detector thread sees probes on its own
    // schedule, so its findings (and bans) would land late and vary from
    // run to run. Inline, every event carries the time of the packet that
    // caused it, and a ban applies from the next packet.
    let mut engine =
        Engine::new(cfg, DetectorMode::Inline).context("starting the scan detector")?;
    let mut out = Output::new(common.engine.events.as_deref(), !common.engine.quiet)?;
    if let Some((bar, _)) = progress {
        out.set_progress(bar.clone());
    }
    let started = Instant::now();
    let mut n = 0u64;
    while let Some(p) = source.next_packet().context("reading the capture")? {
        n += 1;
        if n % PROGRESS_EVERY == 0 {
            if let Some((bar, read)) = progress {
                bar.set_position(read.load(Ordering::Relaxed));
            }
        }
        engine.process(&PacketIn {
            data: p.data,
            link: p.link,
            ts: p.ts,
            dir: None,
            orig_len: Some(p.orig_len),
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
            "replayed {} packets in {:.3}s ({:.0} packets/s): {} accepted, {} dropped, {} not IP, {} truncated (cut inside their headers by the capture)",
            c.packets,
            secs,
            c.packets as f64 / secs,
            c.accepted,
            c.dropped,
            c.not_ip,
            c.truncated
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

/// What replay says once when nothing tells it which side is ours.
const NO_HOME_NET: &str = "no home network given: every packet counts as inbound (set it with --home-net CIDR, repeatable, or \"home_net\" in the rules file)";

/// The config of `replay` and `demo`: the rules file with `--home-net`.
fn load_config(common: &Common) -> Result<Arc<Config>> {
    config::load_for_daemon(
        common.engine.config.as_deref(),
        &[],
        config::Home::from_flag(&common.home_net, &[]),
        // A capture's critical peers are not this host's.
        false,
    )
}

pub fn replay_file(file: &Path, common: &Common) -> Result<ExitCode> {
    let cfg = load_config(common)?;
    let mut cap = open_capture(file)?;
    if cfg.home_net.is_empty() {
        log::warn!("{NO_HOME_NET}");
    }
    let stats = run_capture(&mut cap, cfg, common)?;
    if cap.source.cut_short {
        log::warn!(
            "{} ends in the middle of a packet record (the file was cut short); \
             replayed the packets before it",
            file.display()
        );
    }
    if cap.source.skipped > 0 {
        log::warn!(
            "skipped {} packets on interfaces with unsupported link types",
            cap.source.skipped
        );
    }
    stats.print();
    Ok(ExitCode::SUCCESS)
}

pub fn demo(save: Option<&Path>, common: &Common) -> Result<ExitCode> {
    let cfg = load_config(common)?;
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
    let mut cap = open_capture(&path)?;
    run_capture(&mut cap, cfg, common)?.print();
    Ok(ExitCode::SUCCESS)
}
