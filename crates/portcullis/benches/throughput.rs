//! Throughput of the packet path, without the kernel:
//! - `engine/mix`: decode + rules + ban lookup + DNS inspection + detector
//!   hand-off (thread mode: a channel `try_send`) on `bench_mix`, with
//!   100,000 blocked CIDRs and 1,000,000 blocked domains loaded;
//! - `replay/1M`: the whole replay path (pcap reading included) over a
//!   1,000,000-packet capture, detector inline.
//!
//! `cargo bench -p portcullis --bench throughput`. Throughput is reported
//! in packets per second (criterion's "elem/s").

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portcullis_capture::{FileSource, PacketSource};
use portcullis_engine::config::Config;
use portcullis_engine::engine::{DetectorMode, Engine, PacketIn};
use portcullis_engine::{Direction, Timestamp};
use portcullis_wire::LinkType;

/// 100k CIDRs (in 10.0.0.0/8 and 2001:db8::/32: never in bench_mix's
/// addresses, so every lookup walks to a miss or a short match) and 1M
/// domains in a list file.
fn big_config() -> Config {
    let mut ips = String::new();
    for i in 0..90_000u32 {
        let _ = write!(ips, "\"10.{}.{}.0/24\",", (i >> 8) & 0xff, i & 0xff);
    }
    for i in 0..10_000u32 {
        let _ = write!(ips, "\"2001:db8:{:x}::/48\",", i);
    }
    ips.pop();
    let mut domains = String::with_capacity(30_000_000);
    for i in 0..1_000_000u32 {
        let _ = writeln!(domains, "0.0.0.0 host{i}.blocked{}.example", i % 1000);
    }
    let text = format!(
        r#"{{"block": {{"ip": [{ips}], "port": [23, "6000-6100"], "domain_lists": ["big.txt"]}},
            "home_net": ["198.18.0.0/24"]}}"#
    );
    let loader: HashMap<String, String> = [("big.txt".to_owned(), domains)].into();
    match Config::from_json_str(&text, &loader) {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e}"),
    }
}

fn bench(c: &mut Criterion) {
    let cfg = Arc::new(big_config());
    let frames = portcullis_traffic::bench_mix(200_000, 7);
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(frames.len() as u64));
    g.sample_size(20);
    g.bench_function("mix", |b| {
        let mut engine = match Engine::new(cfg.clone(), DetectorMode::Thread { capacity: 65_536 }) {
            Ok(e) => e,
            Err(e) => panic!("{e}"),
        };
        b.iter(|| {
            for f in &frames {
                let v = engine.process(&PacketIn {
                    data: &f.data,
                    link: LinkType::Ethernet,
                    ts: Timestamp::from_micros(f.ts_micros),
                    dir: Some(Direction::Inbound),
                    orig_len: None,
                });
                std::hint::black_box(v);
            }
            engine.drain_events().for_each(drop);
        });
    });
    g.finish();

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.pcap");
    let big = portcullis_traffic::bench_mix(1_000_000, 11);
    portcullis_traffic::write_pcap(
        std::io::BufWriter::new(std::fs::File::create(&path).expect("create")),
        &big,
    )
    .expect("write pcap");
    drop(big);
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(1_000_000));
    g.sample_size(10);
    g.bench_function("1M", |b| {
        b.iter(|| {
            let mut engine = Engine::new(cfg.clone(), DetectorMode::Inline).expect("engine");
            let mut src = FileSource::open(&path).expect("open");
            while let Some(p) = src.next_packet().expect("read") {
                engine.process(&PacketIn {
                    data: p.data,
                    link: p.link,
                    ts: p.ts,
                    dir: None,
                    orig_len: Some(p.orig_len),
                });
                engine.drain_events().for_each(drop);
            }
            engine.finish();
            std::hint::black_box(engine.counters().packets)
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
