//! New TCP connections per second, for `bench/inline.sh`.
//!
//! ```text
//! connrate server ADDR:PORT [--threads T] [--max-secs S]
//! connrate client ADDR:PORT --count N [--concurrency C] [--max-secs S] [--no-data]
//! ```
//!
//! The server accepts on `T` threads; for each connection it reads one
//! byte (or end of stream), then closes. It exits by itself after
//! `--max-secs` (default 600), printing how many connections it accepted.
//!
//! The client opens `N` connections from `C` threads, each one after the
//! other: connect, send one byte, wait for the server to close, close.
//! The server closes first, so the TIME_WAIT state stays on the server and
//! the client's ephemeral ports are free again at once. With `--no-data` it
//! connects and closes at once (the client then holds TIME_WAIT). It stops
//! at `N` connections or after `--max-secs` (default 30), whichever comes
//! first, and prints one line:
//!
//! ```text
//! connrate: connections=N errors=E secs=S rate=R
//! ```
//!
//! `rate` is completed connections per second of wall time. Only the
//! standard library is used.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one connect, read or write may take before it counts as an
/// error.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

const USAGE: &str = "usage:
  connrate server ADDR:PORT [--threads T] [--max-secs S]
  connrate client ADDR:PORT --count N [--concurrency C] [--max-secs S] [--no-data]";

struct Opts {
    addr: SocketAddr,
    threads: u64,
    count: u64,
    max_secs: Option<f64>,
    no_data: bool,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let addr = args
        .first()
        .ok_or("missing ADDR:PORT")?
        .parse::<SocketAddr>()
        .map_err(|e| format!("ADDR:PORT: {e}"))?;
    let mut o = Opts {
        addr,
        threads: 0,
        count: 0,
        max_secs: None,
        no_data: false,
    };
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value"))
                .cloned()
        };
        match flag.as_str() {
            "--threads" | "--concurrency" => {
                o.threads = value()?.parse().map_err(|e| format!("{flag}: {e}"))?;
            }
            "--count" => o.count = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--max-secs" => {
                let s: f64 = value()?.parse().map_err(|e| format!("{flag}: {e}"))?;
                if !(s > 0.0 && s <= 3600.0) {
                    return Err(format!("{flag} must be in (0, 3600]"));
                }
                o.max_secs = Some(s);
            }
            "--no-data" => o.no_data = true,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(o)
}

fn server(o: &Opts) -> Result<(), String> {
    let listener = TcpListener::bind(o.addr).map_err(|e| format!("bind {}: {e}", o.addr))?;
    let accepted = Arc::new(AtomicU64::new(0));
    let threads = if o.threads == 0 { 4 } else { o.threads };
    for _ in 0..threads {
        let l = listener.try_clone().map_err(|e| e.to_string())?;
        let accepted = Arc::clone(&accepted);
        std::thread::spawn(move || loop {
            let Ok((mut s, _)) = l.accept() else {
                // Out of descriptors or similar: back off, keep serving.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            accepted.fetch_add(1, Ordering::Relaxed);
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            let mut b = [0u8; 1];
            let _ = s.read(&mut b);
            // Dropping `s` closes it: the server closes first.
        });
    }
    println!("connrate: server listening on {}", o.addr);
    std::thread::sleep(Duration::from_secs_f64(o.max_secs.unwrap_or(600.0)));
    println!(
        "connrate: server accepted={} (time limit reached)",
        accepted.load(Ordering::Relaxed)
    );
    Ok(())
}

fn one(addr: SocketAddr, no_data: bool) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    if no_data {
        return Ok(());
    }
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(&[1])?;
    let mut b = [0u8; 16];
    // Wait for the server's FIN, so that it closes first.
    while s.read(&mut b)? > 0 {}
    Ok(())
}

fn client(o: &Opts) -> Result<(), String> {
    if o.count == 0 {
        return Err("--count N (N > 0) is required".into());
    }
    let threads = if o.threads == 0 {
        1
    } else {
        o.threads.min(1024)
    };
    let limit = Duration::from_secs_f64(o.max_secs.unwrap_or(30.0));
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..threads {
        let (next, done, errors) = (Arc::clone(&next), Arc::clone(&done), Arc::clone(&errors));
        let (addr, count, no_data) = (o.addr, o.count, o.no_data);
        let h = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < count && start.elapsed() < limit {
                    match one(addr, no_data) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
            .map_err(|e| format!("spawning a client thread: {e}"))?;
        handles.push(h);
    }
    for h in handles {
        let _ = h.join();
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "connrate: connections={n} errors={} secs={secs:.3} rate={:.0}",
        errors.load(Ordering::Relaxed),
        n as f64 / secs
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("server") => parse(&args[1..]).and_then(|o| server(&o)),
        Some("client") => parse(&args[1..]).and_then(|o| client(&o)),
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connrate: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
