//! A trivial NFLOG reader: bind a group, count packets, print counts and
//! losses every second.
//!
//! `cargo run -p portcullis-nflog --example nflog_count -- GROUP [--secs N]
//! [--qthresh K] [--copy-range B] [--rcvbuf BYTES]`
//!
//! Needs CAP_NET_ADMIN and a rule such as
//! `nft add rule inet t input ct state new log group GROUP queue-threshold 8`.
//! Stops on SIGTERM or SIGINT, or after `--secs` (default: never), and
//! prints a last line `total ...` with the final counters.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_nflog::{Log, LogConfig, LogStats};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str =
    "usage: nflog_count GROUP [--secs N] [--qthresh K] [--copy-range B] [--rcvbuf BYTES]";

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let group: u16 = args.next().ok_or(USAGE)?.parse()?;
    let mut cfg = LogConfig::new(group);
    let mut secs: Option<f64> = None;
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(USAGE)?;
        match flag.as_str() {
            "--secs" => secs = Some(value.parse()?),
            "--qthresh" => cfg.qthresh = value.parse()?,
            "--copy-range" => cfg.copy_range = value.parse()?,
            "--rcvbuf" => cfg.rcvbuf = value.parse()?,
            _ => return Err(USAGE.into()),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;

    let mut log = Log::open(&cfg)?;
    println!(
        "bound group {group} (netlink port id {}, rcvbuf {} bytes)",
        log.portid(),
        log.rcvbuf()
    );
    let start = Instant::now();
    let end = secs.map(|s| start + Duration::from_secs_f64(s));
    let mut next_print = start + Duration::from_secs(1);
    let mut last = LogStats::default();
    let mut bytes = 0u64;
    while !stop.load(Ordering::Relaxed) && end.is_none_or(|e| Instant::now() < e) {
        log.recv_batch(1024, Some(Duration::from_millis(100)), |p| {
            bytes += p.payload.len() as u64;
        })?;
        let now = Instant::now();
        if now >= next_print {
            let s = log.stats();
            println!(
                "{:.0}s received {} (+{}) lost {} (+{}) overruns {} malformed {} datagrams {}",
                now.duration_since(start).as_secs_f64(),
                s.received,
                s.received - last.received,
                s.lost,
                s.lost - last.lost,
                s.overruns,
                s.malformed,
                s.datagrams,
            );
            last = s.clone();
            next_print = now + Duration::from_secs(1);
        }
    }
    let s = log.stats();
    println!(
        "total received {} lost {} overruns {} malformed {} datagrams {} max_per_datagram {} bytes {} secs {:.3}",
        s.received,
        s.lost,
        s.overruns,
        s.malformed,
        s.datagrams,
        s.max_per_datagram,
        bytes,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
