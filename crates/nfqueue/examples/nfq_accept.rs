//! Bind an NFQUEUE, print each packet briefly and accept it.
//!
//! `cargo run -p portcullis-nfqueue --example nfq_accept -- [--quiet] [--spin MICROS] QUEUE [SECONDS]`
//! (needs CAP_NET_ADMIN and an NFQUEUE rule for QUEUE; stops after SECONDS,
//! default 10).
//!
//! `--quiet` prints no line per packet: a trivial accept-all reader (the
//! reference `bench/inline.sh` compares portcullis with), whose cost is
//! the queue's and not that of formatting and writing a line per packet.
//! `--spin MICROS` sets [`QueueConfig::spin`] (default 0; the daemon
//! uses 50), so that the reader can hold packets the way the daemon does.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use portcullis_nfqueue::{Queue, QueueConfig, Verdict};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let usage = "usage: nfq_accept [--quiet] [--spin MICROS] QUEUE [SECONDS]";
    let quiet = args.next_if(|a| a == "--quiet" || a == "-q").is_some();
    let spin = match args.next_if(|a| a == "--spin") {
        Some(_) => Duration::from_micros(args.next().ok_or(usage)?.parse()?),
        None => Duration::ZERO,
    };
    let num: u16 = args.next().ok_or(usage)?.parse()?;
    let secs: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let mut cfg = QueueConfig::new(num);
    cfg.spin = spin;
    let mut q = Queue::open(&cfg)?;
    println!(
        "bound queue {num} (netlink port id {}, rcvbuf {} bytes)",
        q.portid(),
        q.rcvbuf()
    );
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if q.recv_batch(Some(Duration::from_millis(200)))? == 0 {
            continue;
        }
        if quiet {
            q.decide_each(|_| (Verdict::Accept, None));
            q.flush()?;
            continue;
        }
        q.decide_each(|p| {
            println!(
                "id {} hook {:?} proto {:#06x} len {} mark {} in {:?} out {:?} gso {}",
                p.id,
                p.hook,
                p.hw_protocol,
                p.payload.len(),
                p.mark,
                p.indev,
                p.outdev,
                p.is_gso
            );
            (Verdict::Accept, None)
        });
        q.flush()?;
    }
    println!("{:?}", q.counters());
    Ok(())
}
