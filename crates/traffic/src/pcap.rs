//! Writing frames as pcap and pcapng captures.

use std::borrow::Cow;
use std::io::{self, Write};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness, PcapError, TsResolution};

use crate::Frame;

/// Snapshot length written to the headers (tcpdump's default). Every frame
/// this crate builds is shorter.
pub const SNAPLEN: u32 = 262_144;

fn io_err(e: PcapError) -> io::Error {
    match e {
        PcapError::IoError(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

fn ts(frame: &Frame) -> Duration {
    Duration::from_micros(frame.ts_micros)
}

/// Writes `frames` as a classic pcap file: little endian, version 2.4,
/// LINKTYPE_ETHERNET, microsecond timestamps, whole frames captured.
pub fn write_pcap<W: Write>(w: W, frames: &[Frame]) -> io::Result<()> {
    let header = PcapHeader {
        snaplen: SNAPLEN,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::Little,
        ..Default::default()
    };
    let mut out = PcapWriter::with_header(w, header).map_err(io_err)?;
    for f in frames {
        let len = f.data.len() as u32;
        out.write_packet(&PcapPacket::new(ts(f), len, &f.data))
            .map_err(io_err)?;
    }
    out.into_writer().flush()
}

/// Writes `frames` as a classic pcap file captured with snap length
/// `snaplen` (`tcpdump -s snaplen`): each record holds at most `snaplen`
/// bytes and the frame's whole length as its original length, and the file
/// header states `snaplen`.
pub fn write_pcap_snaplen<W: Write>(w: W, frames: &[Frame], snaplen: u32) -> io::Result<()> {
    let header = PcapHeader {
        snaplen,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::Little,
        ..Default::default()
    };
    let mut out = PcapWriter::with_header(w, header).map_err(io_err)?;
    for f in frames {
        let kept = f.data.len().min(snaplen as usize);
        let orig = u32::try_from(f.data.len()).unwrap_or(u32::MAX);
        out.write_packet(&PcapPacket::new(ts(f), orig, &f.data[..kept]))
            .map_err(io_err)?;
    }
    out.into_writer().flush()
}

/// Writes `frames` as a pcapng file: one little-endian section, one
/// Ethernet interface and one Enhanced Packet Block per frame.
///
/// The interface declares nanosecond timestamps (`if_tsresol` = 9) because
/// `pcap-file` 2 always writes Enhanced Packet Block timestamps in
/// nanoseconds; readers that honour `if_tsresol` (Wireshark, tcpdump,
/// libpcap) then see the same instants as [`Frame::ts_micros`].
pub fn write_pcapng<W: Write>(w: W, frames: &[Frame]) -> io::Result<()> {
    let mut out = PcapNgWriter::with_endianness(w, Endianness::Little).map_err(io_err)?;
    let interface = InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: SNAPLEN,
        options: vec![InterfaceDescriptionOption::IfTsResol(9)],
    };
    out.write_pcapng_block(interface).map_err(io_err)?;
    for f in frames {
        let block = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: ts(f),
            original_len: f.data.len() as u32,
            data: Cow::Borrowed(&f.data),
            options: vec![],
        };
        out.write_pcapng_block(block).map_err(io_err)?;
    }
    out.into_inner().flush()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use pcap_file::pcap::PcapReader;
    use pcap_file::pcapng::{Block, PcapNgReader};

    fn sample() -> Vec<Frame> {
        let mut f = crate::busy_client(
            "198.18.0.10".parse().unwrap(),
            "198.18.0.1".parse().unwrap(),
            80,
            3,
            1_700_000_000_123_456,
            1_000_000,
        );
        f.extend(crate::port_scan(
            "2001:2::66".parse().unwrap(),
            "2001:2::1".parse().unwrap(),
            &[53, 161],
            crate::ScanShape::Udp,
            1_700_000_002_000_001,
            7,
        ));
        f
    }

    #[test]
    fn pcap_round_trip() {
        let frames = sample();
        let mut buf = Vec::new();
        write_pcap(&mut buf, &frames).unwrap();
        // Little-endian microsecond magic.
        assert_eq!(&buf[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        let mut r = PcapReader::new(&buf[..]).unwrap();
        assert_eq!(r.header().datalink, DataLink::ETHERNET);
        let mut back = Vec::new();
        while let Some(p) = r.next_packet() {
            let p = p.unwrap();
            assert_eq!(p.orig_len as usize, p.data.len());
            back.push(Frame {
                ts_micros: p.timestamp.as_micros() as u64,
                data: p.data.into_owned(),
            });
        }
        assert_eq!(back, frames);
    }

    #[test]
    fn pcapng_round_trip() {
        let frames = sample();
        let mut buf = Vec::new();
        write_pcapng(&mut buf, &frames).unwrap();
        let mut r = PcapNgReader::new(&buf[..]).unwrap();
        let mut back = Vec::new();
        let mut tsresol = None;
        while let Some(b) = r.next_block() {
            match b.unwrap() {
                Block::InterfaceDescription(idb) => {
                    assert_eq!(idb.linktype, DataLink::ETHERNET);
                    for o in idb.options {
                        if let InterfaceDescriptionOption::IfTsResol(v) = o {
                            tsresol = Some(v);
                        }
                    }
                }
                Block::EnhancedPacket(p) => back.push(Frame {
                    ts_micros: (p.timestamp.as_nanos() / 1000) as u64,
                    data: p.data.into_owned(),
                }),
                _ => {}
            }
        }
        assert_eq!(tsresol, Some(9));
        assert_eq!(back, frames);
    }
}
