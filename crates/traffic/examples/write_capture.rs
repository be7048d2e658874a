//! Writes a synthetic capture to a file, for a look in tcpdump or Wireshark.
//!
//! ```text
//! cargo run -p portcullis-traffic --example write_capture -- demo demo.pcap
//! cargo run -p portcullis-traffic --example write_capture -- bench bench.pcapng 100000
//! ```
//!
//! Scenarios: `demo`, `bench` (optional frame count, default 10000), `scans`
//! (every scan shape, IPv4 and IPv6, plus a TCP DNS lookup, a sweep,
//! fragments and a VLAN tag). A `.pcapng` file name selects pcapng.

use std::fs::File;
use std::io::BufWriter;
use std::net::IpAddr;
use std::process::ExitCode;

use portcullis_traffic::{
    bench_mix, demo, dns_lookups, fragment_ipv4, fragment_ipv6, merge, port_scan, sweep, udp,
    with_vlan, write_pcap, write_pcapng, Frame, ScanShape, BENCH_START_MICROS,
};

fn scans() -> Vec<Frame> {
    let t0 = BENCH_START_MICROS;
    let mut streams = Vec::new();
    let shapes = [
        ScanShape::Syn,
        ScanShape::Connect,
        ScanShape::Fin,
        ScanShape::Null,
        ScanShape::Xmas,
        ScanShape::Ack,
        ScanShape::Udp,
    ];
    let pairs: [(IpAddr, IpAddr); 2] = [
        ([198, 18, 0, 66].into(), [198, 18, 0, 1].into()),
        (
            "2001:2::66".parse().unwrap_or(IpAddr::from([0u16; 8])),
            "2001:2::1".parse().unwrap_or(IpAddr::from([0u16; 8])),
        ),
    ];
    for (i, shape) in shapes.iter().enumerate() {
        for (j, (s, d)) in pairs.iter().enumerate() {
            let at = t0 + (i * 2 + j) as u64 * 1_000_000;
            streams.push(port_scan(*s, *d, &[21, 22, 53, 80, 443], *shape, at, 1_000));
        }
    }
    let (s4, d4) = pairs[0];
    let (s6, d6) = pairs[1];
    let at = t0 + 20_000_000;
    streams.push(dns_lookups(
        d4,
        [198, 18, 0, 53].into(),
        &["www.example.com"],
        true,
        at,
    ));
    let targets: Vec<IpAddr> = (1..=10).map(|i| IpAddr::from([198, 18, 2, i])).collect();
    streams.push(sweep(s4, &targets, 445, at + 1_000_000, 100));
    let big = vec![0x5a; 3000];
    let mut extra = Vec::new();
    let v4 = udp((s4, 4000).into(), (d4, 9).into(), &big);
    for f in fragment_ipv4(&v4, 1480) {
        extra.push(Frame::new(at + 2_000_000, f));
    }
    let v6 = udp((s6, 4000).into(), (d6, 9).into(), &big);
    for f in fragment_ipv6(&v6, 1232) {
        extra.push(Frame::new(at + 2_000_100, f));
    }
    let small = udp((s4, 4000).into(), (d4, 9).into(), b"tagged");
    extra.push(Frame::new(at + 2_000_200, with_vlan(&small, 100)));
    streams.push(extra);
    merge(streams)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(which), Some(path)) = (args.first(), args.get(1)) else {
        eprintln!("usage: write_capture demo|bench|scans FILE[.pcap|.pcapng] [COUNT]");
        return ExitCode::from(2);
    };
    let frames = match which.as_str() {
        "demo" => demo(BENCH_START_MICROS),
        "bench" => {
            let n = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(10_000);
            bench_mix(n, 1)
        }
        "scans" => scans(),
        other => {
            eprintln!("unknown scenario {other:?}");
            return ExitCode::from(2);
        }
    };
    let result = File::create(path).and_then(|f| {
        let w = BufWriter::new(f);
        if path.ends_with(".pcapng") {
            write_pcapng(w, &frames)
        } else {
            write_pcap(w, &frames)
        }
    });
    match result {
        Ok(()) => {
            println!("wrote {} frames to {path}", frames.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
