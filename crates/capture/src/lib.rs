//! Packet sources for portcullis.
//!
//! A [`PacketSource`] yields raw packets with their link type and timestamp;
//! the engine decides on them. Sources here: pcap and pcapng files
//! ([`FileSource`]) and memory ([`MemorySource`]). Live passive capture
//! through libpcap ([`live::LiveCapture`]) has its own batch API, fit for a
//! daemon loop that must wake for its timers.

#![forbid(unsafe_code)]

pub mod live;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use portcullis_engine::Timestamp;
use portcullis_wire::LinkType;

/// One packet from a source, borrowed until the next call.
#[derive(Debug, Clone, Copy)]
pub struct RawPacket<'a> {
    pub data: &'a [u8],
    pub link: LinkType,
    pub ts: Timestamp,
}

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("not a pcap or pcapng file (magic {0:#010x})")]
    UnknownFormat(u32),
    #[error("pcap: {0}")]
    Pcap(#[from] pcap_file::PcapError),
    #[error(
        "link type {0} is not supported (Ethernet, raw IP, Linux cooked and BSD loopback are)"
    )]
    UnsupportedLinkType(u32),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("no interface to capture on")]
    NoInterface,
    #[error("interface {0} is given twice")]
    DuplicateInterface(String),
    #[error("interface `any` already captures on every interface; give it alone")]
    AnyWithOthers,
    #[error("no such network interface: {0}")]
    NoSuchInterface(String),
    #[error("capturing on {iface} needs root or CAP_NET_RAW (libpcap: {message})")]
    PermissionDenied { iface: String, message: String },
    #[error("bad capture filter {filter:?}: {message}")]
    BadFilter { filter: String, message: String },
    #[error(
        "interface {iface} has link type {name} ({dlt}); supported: Ethernet, raw IP, Linux cooked, BSD loopback"
    )]
    UnsupportedInterfaceLink {
        iface: String,
        dlt: i32,
        name: String,
    },
    #[error("capture on {iface}: {message}")]
    Live { iface: String, message: String },
}

/// A source of packets. A lending iterator: each packet borrows the source
/// until the next call.
pub trait PacketSource {
    /// The next packet, `Ok(None)` at the end.
    fn next_packet(&mut self) -> Result<Option<RawPacket<'_>>, CaptureError>;
}

/// Packets held in memory (tests, the demo).
#[derive(Debug, Clone)]
pub struct MemorySource {
    packets: Vec<(Timestamp, Vec<u8>)>,
    link: LinkType,
    at: usize,
}

impl MemorySource {
    pub fn new(link: LinkType, packets: Vec<(Timestamp, Vec<u8>)>) -> Self {
        Self {
            packets,
            link,
            at: 0,
        }
    }
}

impl PacketSource for MemorySource {
    fn next_packet(&mut self) -> Result<Option<RawPacket<'_>>, CaptureError> {
        let Some((ts, data)) = self.packets.get(self.at) else {
            return Ok(None);
        };
        self.at += 1;
        Ok(Some(RawPacket {
            data,
            link: self.link,
            ts: *ts,
        }))
    }
}

/// A pcap or pcapng capture file (format detected from its magic number).
pub struct FileSource {
    inner: Inner<Box<dyn Read + Send>>,
    /// pcapng packets are copied here: the reader's borrow cannot outlive a
    /// loop over non-packet blocks (a borrow-checker limit, not a design).
    buf: Vec<u8>,
    /// Packets skipped because their interface's link type is unsupported.
    pub skipped: u64,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource").finish_non_exhaustive()
    }
}

enum Inner<R: Read> {
    Pcap {
        reader: PcapReader<R>,
        link: LinkType,
    },
    PcapNg {
        reader: PcapNgReader<R>,
        /// Per interface: link type (None: unsupported) and the timestamp
        /// unit as (numerator to micros, base-2 shift flag).
        ifaces: Vec<Iface>,
        last_ts: Timestamp,
    },
}

#[derive(Debug, Clone, Copy)]
struct Iface {
    link: Option<LinkType>,
    tsresol: u8,
}

impl Iface {
    /// Converts a raw pcapng timestamp in this interface's units to µs.
    fn micros(self, raw: u64) -> u64 {
        let r = self.tsresol;
        if r & 0x80 != 0 {
            // Negative powers of two.
            let shift = u32::from(r & 0x7f);
            ((u128::from(raw) * 1_000_000) >> shift.min(127)) as u64
        } else {
            let exp = u32::from(r);
            if exp >= 6 {
                raw / 10u64.saturating_pow(exp - 6).max(1)
            } else {
                raw.saturating_mul(10u64.pow(6 - exp))
            }
        }
    }
}

impl FileSource {
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let file = File::open(path).map_err(|source| CaptureError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(BufReader::with_capacity(1 << 20, file))
    }
}

const PCAPNG_MAGIC: u32 = 0x0a0d_0d0a;

impl FileSource {
    /// Reads the first four bytes to tell pcap from pcapng.
    pub fn new(mut r: impl Read + Send + 'static) -> Result<Self, CaptureError> {
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic)?;
        let r: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(magic).chain(r));
        let m = u32::from_le_bytes(magic);
        let inner = match m {
            PCAPNG_MAGIC => Inner::PcapNg {
                reader: PcapNgReader::new(r)?,
                ifaces: Vec::new(),
                last_ts: Timestamp::default(),
            },
            0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 => {
                let reader = PcapReader::new(r)?;
                let dlt = u32::from(reader.header().datalink);
                let link =
                    LinkType::from_pcap(dlt).ok_or(CaptureError::UnsupportedLinkType(dlt))?;
                Inner::Pcap { reader, link }
            }
            other => return Err(CaptureError::UnknownFormat(other)),
        };
        Ok(Self {
            inner,
            buf: Vec::with_capacity(65_536),
            skipped: 0,
        })
    }
}

impl PacketSource for FileSource {
    fn next_packet(&mut self) -> Result<Option<RawPacket<'_>>, CaptureError> {
        match &mut self.inner {
            Inner::Pcap { reader, link } => match reader.next_packet() {
                None => Ok(None),
                Some(Err(e)) => Err(e.into()),
                Some(Ok(p)) => {
                    let ts = Timestamp::from_micros(p.timestamp.as_micros() as u64);
                    let link = *link;
                    match p.data {
                        std::borrow::Cow::Borrowed(data) => Ok(Some(RawPacket { data, link, ts })),
                        // The reader borrows from its buffer; an owned packet
                        // never comes out of `next_packet`.
                        std::borrow::Cow::Owned(_) => Err(CaptureError::Io(std::io::Error::other(
                            "pcap reader returned an owned packet",
                        ))),
                    }
                }
            },
            Inner::PcapNg {
                reader,
                ifaces,
                last_ts,
            } => {
                let (link, ts) = loop {
                    // Two-phase: look at the block kind without holding the
                    // borrow across iterations.
                    let block = match reader.next_block() {
                        None => return Ok(None),
                        Some(Err(e)) => return Err(e.into()),
                        Some(Ok(b)) => b,
                    };
                    match block {
                        Block::SectionHeader(_) => ifaces.clear(),
                        Block::InterfaceDescription(idb) => {
                            let tsresol = idb
                                .options
                                .iter()
                                .find_map(|o| match o {
                                    InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                                    _ => None,
                                })
                                .unwrap_or(6);
                            ifaces.push(Iface {
                                link: LinkType::from_pcap(u32::from(idb.linktype)),
                                tsresol,
                            });
                        }
                        Block::EnhancedPacket(epb) => {
                            let Some(iface) = ifaces.get(epb.interface_id as usize).copied() else {
                                self.skipped += 1;
                                continue;
                            };
                            let Some(link) = iface.link else {
                                self.skipped += 1;
                                continue;
                            };
                            // pcap-file reads the raw 64-bit stamp as nanoseconds
                            // whatever if_tsresol says; undo that, then scale.
                            let raw = epb.timestamp.as_nanos() as u64;
                            let ts = Timestamp::from_micros(iface.micros(raw));
                            *last_ts = ts;
                            self.buf.clear();
                            self.buf.extend_from_slice(&epb.data);
                            break (link, ts);
                        }
                        Block::SimplePacket(spb) => {
                            let Some(link) = ifaces.first().and_then(|i| i.link) else {
                                self.skipped += 1;
                                continue;
                            };
                            self.buf.clear();
                            self.buf.extend_from_slice(&spb.data);
                            break (link, *last_ts);
                        }
                        _ => {}
                    }
                };
                Ok(Some(RawPacket {
                    data: &self.buf,
                    link,
                    ts,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsresol_units() {
        let us = Iface {
            link: None,
            tsresol: 6,
        };
        assert_eq!(us.micros(1_500_000), 1_500_000);
        let ns = Iface {
            link: None,
            tsresol: 9,
        };
        assert_eq!(ns.micros(1_500_000_000), 1_500_000);
        let ms = Iface {
            link: None,
            tsresol: 3,
        };
        assert_eq!(ms.micros(1_500), 1_500_000);
        let pow2 = Iface {
            link: None,
            tsresol: 0x80 | 10,
        };
        assert_eq!(pow2.micros(1024), 1_000_000);
    }

    #[test]
    fn unknown_magic_is_an_error() {
        let err = FileSource::new(&b"hello world"[..]).unwrap_err();
        assert!(matches!(err, CaptureError::UnknownFormat(_)), "{err}");
    }

    #[test]
    fn memory_source_yields_in_order() {
        let mut s = MemorySource::new(
            LinkType::Raw,
            vec![
                (Timestamp::from_secs(1), vec![1]),
                (Timestamp::from_secs(2), vec![2]),
            ],
        );
        assert_eq!(s.next_packet().unwrap().unwrap().data, &[1]);
        assert_eq!(
            s.next_packet().unwrap().unwrap().ts,
            Timestamp::from_secs(2)
        );
        assert!(s.next_packet().unwrap().is_none());
    }
}
