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
use portcullis_wire::LinkType;
use portcullis_wire::Timestamp;

/// One packet from a source, borrowed until the next call.
#[derive(Debug, Clone, Copy)]
pub struct RawPacket<'a> {
    /// The bytes captured (at most the capture's snap length).
    pub data: &'a [u8],
    pub link: LinkType,
    pub ts: Timestamp,
    /// The packet's length on the wire: more than `data.len()` when the
    /// capture's snap length cut it (never less).
    pub orig_len: u32,
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
    #[error("interface {0} is down")]
    InterfaceDown(String),
    #[error("interface {0} was removed or replaced (its index changed)")]
    InterfaceReplaced(String),
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
            orig_len: wire_len(data, 0),
        }))
    }
}

/// The length on the wire of `data` as a record states it (`orig`): never
/// less than what was captured, whatever the record says.
fn wire_len(data: &[u8], orig: u32) -> u32 {
    orig.max(u32::try_from(data.len()).unwrap_or(u32::MAX))
}

/// A pcap or pcapng capture file (format detected from its magic number).
///
/// Reads what tcpdump reads: packets cut by a snap length come with their
/// original length ([`RawPacket::orig_len`]), even when the file header's
/// snap length is smaller than it; a file that ends inside a record (a
/// capture killed mid-write, a partial copy) ends there, with
/// [`FileSource::cut_short`] set, instead of failing.
pub struct FileSource {
    inner: Inner<Box<dyn Read + Send>>,
    /// pcapng packets are copied here: the reader's borrow cannot outlive a
    /// loop over non-packet blocks (a borrow-checker limit, not a design).
    buf: Vec<u8>,
    /// Packets skipped because their interface's link type is unsupported.
    pub skipped: u64,
    /// The file ended in the middle of a record: what came before it was
    /// read, the rest is lost. [`PacketSource::next_packet`] returned
    /// `Ok(None)` there.
    pub cut_short: bool,
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
        /// Timestamp fractions are nanoseconds (else microseconds).
        nanos: bool,
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
                let header = reader.header();
                let dlt = u32::from(header.datalink);
                let link =
                    LinkType::from_pcap(dlt).ok_or(CaptureError::UnsupportedLinkType(dlt))?;
                Inner::Pcap {
                    reader,
                    link,
                    nanos: header.ts_resolution == pcap_file::TsResolution::NanoSecond,
                }
            }
            other => return Err(CaptureError::UnknownFormat(other)),
        };
        Ok(Self {
            inner,
            buf: Vec::with_capacity(65_536),
            skipped: 0,
            cut_short: false,
        })
    }
}

/// Whether a reader error means the file ended inside a record.
fn ends_mid_record(e: &pcap_file::PcapError) -> bool {
    matches!(e, pcap_file::PcapError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
}

impl PacketSource for FileSource {
    fn next_packet(&mut self) -> Result<Option<RawPacket<'_>>, CaptureError> {
        if self.cut_short {
            return Ok(None);
        }
        match &mut self.inner {
            // Raw records: the checked ones of `pcap-file` refuse an
            // original length above the file's snap length, which is
            // exactly what `tcpdump -s N` writes. Lengths need no check
            // here: the record's bytes were read, and `orig_len` is only
            // ever compared.
            Inner::Pcap {
                reader,
                link,
                nanos,
            } => match reader.next_raw_packet() {
                None => Ok(None),
                Some(Err(e)) if ends_mid_record(&e) => {
                    self.cut_short = true;
                    Ok(None)
                }
                Some(Err(e)) => Err(e.into()),
                Some(Ok(p)) => {
                    let frac = u64::from(p.ts_frac);
                    let frac_us = if *nanos { frac / 1000 } else { frac };
                    let ts = Timestamp::from_micros(
                        u64::from(p.ts_sec)
                            .saturating_mul(1_000_000)
                            .saturating_add(frac_us),
                    );
                    let link = *link;
                    match p.data {
                        std::borrow::Cow::Borrowed(data) => Ok(Some(RawPacket {
                            data,
                            link,
                            ts,
                            orig_len: wire_len(data, p.orig_len),
                        })),
                        // The reader borrows from its buffer; an owned packet
                        // never comes out of `next_raw_packet`.
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
                let (link, ts, orig) = loop {
                    // Two-phase: look at the block kind without holding the
                    // borrow across iterations.
                    let block = match reader.next_block() {
                        None => return Ok(None),
                        Some(Err(e)) if ends_mid_record(&e) => {
                            self.cut_short = true;
                            return Ok(None);
                        }
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
                            break (link, ts, epb.original_len);
                        }
                        Block::SimplePacket(spb) => {
                            let Some(link) = ifaces.first().and_then(|i| i.link) else {
                                self.skipped += 1;
                                continue;
                            };
                            self.buf.clear();
                            self.buf.extend_from_slice(&spb.data);
                            break (link, *last_ts, spb.original_len);
                        }
                        _ => {}
                    }
                };
                Ok(Some(RawPacket {
                    data: &self.buf,
                    link,
                    ts,
                    orig_len: wire_len(&self.buf, orig),
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

    fn frames() -> Vec<portcullis_traffic::Frame> {
        (0..3u64)
            .map(|i| {
                portcullis_traffic::Frame::new(
                    1_795_000_000_000_000 + i,
                    portcullis_traffic::udp(
                        "198.18.0.2:5000".parse().unwrap(),
                        "198.18.0.1:9".parse().unwrap(),
                        &[i as u8; 100],
                    ),
                )
            })
            .collect()
    }

    fn read_all(bytes: Vec<u8>) -> (Vec<(usize, u32, Timestamp)>, FileSource) {
        let mut src = FileSource::new(std::io::Cursor::new(bytes)).unwrap();
        let mut got = Vec::new();
        while let Some(p) = src.next_packet().unwrap() {
            got.push((p.data.len(), p.orig_len, p.ts));
        }
        (got, src)
    }

    #[test]
    fn snap_length_captures_are_read_with_their_original_length() {
        let frames = frames();
        let whole = frames[0].data.len() as u32;
        let mut buf = Vec::new();
        portcullis_traffic::write_pcap_snaplen(&mut buf, &frames, 64).unwrap();
        let (got, src) = read_all(buf);
        assert!(!src.cut_short);
        assert_eq!(got.len(), 3);
        for (i, (len, orig, ts)) in got.into_iter().enumerate() {
            assert_eq!((len, orig), (64, whole));
            assert_eq!(ts.as_micros(), frames[i].ts_micros);
        }
    }

    #[test]
    fn a_file_cut_inside_a_record_ends_there() {
        let frames = frames();
        let mut pcap = Vec::new();
        portcullis_traffic::write_pcap(&mut pcap, &frames).unwrap();
        let mut ng = Vec::new();
        portcullis_traffic::write_pcapng(&mut ng, &frames).unwrap();
        for (name, mut bytes) in [("pcap", pcap), ("pcapng", ng)] {
            let (all, src) = read_all(bytes.clone());
            assert!(!src.cut_short, "{name}");
            assert_eq!(all.len(), 3, "{name}");
            // Cut in the middle of the last record's data, then inside its
            // record header.
            bytes.truncate(bytes.len() - 30);
            let (got, mut src) = read_all(bytes.clone());
            assert_eq!(got, all[..2], "{name}");
            assert!(src.cut_short, "{name}");
            assert!(src.next_packet().unwrap().is_none(), "{name}: stays ended");
            let whole = bytes.len();
            bytes.truncate(whole - (frames[2].data.len() - 30) - 4);
            let (got, src) = read_all(bytes);
            assert_eq!(got, all[..2], "{name}");
            assert!(src.cut_short, "{name}");
        }
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
