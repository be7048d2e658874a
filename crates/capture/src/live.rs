//! Live passive capture through libpcap (monitor mode).
//!
//! [`LiveCapture`] holds one libpcap handle per interface, each in
//! non-blocking mode with the `--bpf` filter (tcpdump syntax) compiled and
//! applied in the kernel. On Linux libpcap reads a `PACKET_MMAP` ring:
//! `TPACKET_V2` in immediate mode (each packet as soon as it arrives, the
//! default), `TPACKET_V3` otherwise (blocks handed over when full or after
//! [`LiveOptions::block_timeout`]; cheaper under load).
//!
//! Guarantees:
//! - [`LiveCapture::next_batch`] never blocks longer than the timeout it is
//!   given and hands over at most [`LiveOptions::max_batch`] packets per
//!   call, so a daemon loop keeps serving its timers and signals under any
//!   load. An interrupted wait (a signal) returns `Ok(0)`.
//! - Capture losses are never silent: [`LiveCapture::stats`] reports, per
//!   interface, what the kernel dropped because the ring was full and what
//!   the interface itself dropped, as 64-bit totals (libpcap's counters are
//!   32-bit and wrap; the deltas are accumulated here).
//! - An interface that fails does not end the capture: a read error, an
//!   interface that went down ([`LiveCapture::check`]) or was removed or
//!   replaced closes that interface's handle, the error names it, and the
//!   others go on. [`LiveCapture::reopen`] opens it again (with the same
//!   options; counters carry on); until then it is skipped.
//! - Every packet comes with its interface's link type (Ethernet, raw IP,
//!   Linux cooked v1/v2, BSD loopback); an interface of another type is
//!   refused when the capture opens, never decoded wrongly.
//!
//! Direction: a packet socket sees both directions of an interface. When
//! the capture is restricted with [`CaptureDirection::In`] or
//! [`CaptureDirection::Out`] (libpcap `pcap_setdirection`), every packet
//! carries that direction. On the `any` pseudo-interface the capture uses
//! the Linux cooked v2 header, whose packet type tells outgoing packets
//! from those addressed to this host. Otherwise [`LivePacket::dir`] is
//! `None` and the engine infers the direction from the config's `home_net`.

use std::os::fd::AsFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use pcap::{Active, Capture, Linktype};
use portcullis_wire::LinkType;
use portcullis_wire::{Direction, Timestamp};

use crate::{CaptureError, RawPacket};

/// The pseudo-interface that captures on every interface of the network
/// namespace (Linux cooked headers).
pub const ANY: &str = "any";

/// Which directions a live capture sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureDirection {
    /// Packets received and sent (the default).
    #[default]
    Both,
    /// Only packets received by the interface (in promiscuous mode, also
    /// those for other hosts: all are marked [`Direction::Inbound`]).
    In,
    /// Only packets sent by the interface.
    Out,
}

/// How to open a [`LiveCapture`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveOptions {
    /// Interface names, or the single pseudo-interface [`ANY`].
    pub interfaces: Vec<String>,
    /// A capture filter in tcpdump syntax, applied on every interface.
    pub bpf: Option<String>,
    /// Bytes kept of each packet (default 262144: whole packets).
    pub snaplen: u32,
    /// The kernel ring per interface, in bytes (default 16 MiB). Larger
    /// rides out longer bursts before the kernel drops.
    pub buffer_size: u32,
    /// Promiscuous mode: also packets not addressed to this host (default
    /// off).
    pub promisc: bool,
    /// Immediate mode (default on): each packet is handed over as it
    /// arrives (`TPACKET_V2`). Off: the kernel hands over blocks of packets
    /// (`TPACKET_V3`), when full or after `block_timeout`.
    pub immediate: bool,
    /// Without immediate mode, the longest a packet waits in a block.
    pub block_timeout: Duration,
    /// Directions captured.
    pub direction: CaptureDirection,
    /// At most this many packets per [`LiveCapture::next_batch`] call
    /// (default 1024).
    pub max_batch: usize,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            bpf: None,
            snaplen: 262_144,
            buffer_size: 16 << 20,
            promisc: false,
            immediate: true,
            block_timeout: Duration::from_millis(10),
            direction: CaptureDirection::Both,
            max_batch: 1024,
        }
    }
}

/// A captured packet, borrowed from the kernel ring for the duration of the
/// callback.
#[derive(Debug, Clone, Copy)]
pub struct LivePacket<'a> {
    /// The bytes (at most `snaplen`), link type and capture time.
    pub packet: RawPacket<'a>,
    /// The index of the interface in [`LiveOptions::interfaces`].
    pub iface: usize,
    /// The direction when the capture knows it (see the module docs);
    /// `None`: infer it from `home_net`.
    pub dir: Option<Direction>,
    /// The packet's length on the wire; more than `packet.data.len()` when
    /// `snaplen` cut it (the same as `packet.orig_len`).
    pub wire_len: u32,
}

/// Capture counters of one interface since the capture opened.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IfaceStats {
    /// The interface name as given.
    pub name: String,
    /// Packets that passed the filter, as the kernel counts them (this
    /// includes `dropped`).
    pub received: u64,
    /// Packets that passed the filter but were dropped because the ring was
    /// full (libpcap `ps_drop`): the capture did not keep up.
    pub dropped: u64,
    /// Packets the interface or its driver dropped (libpcap `ps_ifdrop`,
    /// read from sysfs: only meaningful when `/sys` belongs to the same
    /// network namespace as the capture).
    pub if_dropped: u64,
    /// Packets handed to the callback of [`LiveCapture::next_batch`].
    pub delivered: u64,
}

/// Live capture on one or more interfaces (see the module docs).
pub struct LiveCapture {
    handles: Vec<Handle>,
    /// To reopen an interface as it was opened.
    opts: LiveOptions,
    /// Where the next drain starts, so that one busy interface cannot starve
    /// the others of the per-call budget.
    start: usize,
    max_batch: usize,
}

impl std::fmt::Debug for LiveCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ifaces: Vec<(&str, LinkType)> = self.interfaces().collect();
        f.debug_struct("LiveCapture")
            .field("interfaces", &ifaces)
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

struct Handle {
    name: String,
    /// `None` while closed after a failure.
    cap: Option<Capture<Active>>,
    /// The interface index at open (0 for `any`): a new index means the
    /// interface was removed and another of that name created.
    index: u32,
    link: LinkType,
    /// Set when the capture is restricted to one direction.
    fixed_dir: Option<Direction>,
    delivered: u64,
    /// libpcap's last 32-bit counters (received, dropped, if_dropped) and
    /// the 64-bit totals accumulated from their deltas.
    last: [u32; 3],
    total: [u64; 3],
}

impl LiveCapture {
    /// Opens every interface of `opts` (see [`LiveOptions`]). Fails, naming
    /// the interface, if one does not exist, cannot be captured on (root or
    /// `CAP_NET_RAW` is needed), has an unsupported link type, or the filter
    /// does not compile.
    pub fn open(opts: &LiveOptions) -> Result<Self, CaptureError> {
        if opts.interfaces.is_empty() {
            return Err(CaptureError::NoInterface);
        }
        for (i, name) in opts.interfaces.iter().enumerate() {
            if opts.interfaces[..i].contains(name) {
                return Err(CaptureError::DuplicateInterface(name.clone()));
            }
            if name == ANY && opts.interfaces.len() > 1 {
                return Err(CaptureError::AnyWithOthers);
            }
        }
        if let Some(bpf) = &opts.bpf {
            // A syntax error is reported once, without an interface name.
            check_filter(bpf)?;
        }
        let handles = opts
            .interfaces
            .iter()
            .map(|name| open_one(name, opts))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            handles,
            opts: opts.clone(),
            start: 0,
            max_batch: opts.max_batch.max(1),
        })
    }

    /// The interfaces in [`LiveOptions::interfaces`] order, with their link
    /// types.
    pub fn interfaces(&self) -> impl Iterator<Item = (&str, LinkType)> + '_ {
        self.handles.iter().map(|h| (h.name.as_str(), h.link))
    }

    /// Hands the packets that are ready to `f`, at most
    /// [`LiveOptions::max_batch`]; when none is ready, waits up to `timeout`
    /// for one. Returns how many were handed over: 0 after a timeout or an
    /// interrupted wait.
    pub fn next_batch(
        &mut self,
        timeout: Duration,
        f: &mut dyn FnMut(LivePacket<'_>),
    ) -> Result<usize, CaptureError> {
        let n = self.drain(None, f)?;
        if n > 0 {
            return Ok(n);
        }
        let ready = {
            // Closed handles are not polled; with none open, this sleeps
            // out the timeout.
            let open: Vec<usize> = (0..self.handles.len())
                .filter(|&i| self.handles[i].cap.is_some())
                .collect();
            let mut fds: Vec<PollFd<'_>> = self
                .handles
                .iter()
                .filter_map(|h| h.cap.as_ref())
                .map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN))
                .collect();
            match nix::poll::poll(&mut fds, poll_timeout(timeout)) {
                Ok(0) | Err(Errno::EINTR) => return Ok(0),
                Ok(_) => {}
                Err(e) => return Err(CaptureError::Io(e.into())),
            }
            // Errors (POLLERR: the interface went away) are read and
            // reported by the drain.
            let mut ready = vec![false; self.handles.len()];
            for (k, p) in fds.iter().enumerate() {
                ready[open[k]] = p.revents().is_some_and(|r| !r.is_empty());
            }
            ready
        };
        self.drain(Some(&ready), f)
    }

    /// Reads from every handle (or those marked in `only`) without waiting,
    /// within the batch budget.
    fn drain(
        &mut self,
        only: Option<&[bool]>,
        f: &mut dyn FnMut(LivePacket<'_>),
    ) -> Result<usize, CaptureError> {
        let count = self.handles.len();
        let mut total = 0;
        for k in 0..count {
            let i = (self.start + k) % count;
            if only.is_some_and(|o| !o.get(i).copied().unwrap_or(false)) {
                continue;
            }
            let budget = self.max_batch - total;
            if budget == 0 {
                break;
            }
            let h = &mut self.handles[i];
            let (link, fixed_dir) = (h.link, h.fixed_dir);
            let Some(cap) = h.cap.as_mut() else {
                continue;
            };
            let n = cap
                .dispatch(Some(budget), |p| {
                    let dir = fixed_dir.or_else(|| cooked_direction(link, p.data));
                    f(LivePacket {
                        packet: RawPacket {
                            data: p.data,
                            link,
                            ts: timestamp(p.header.ts.tv_sec, p.header.ts.tv_usec),
                            orig_len: p.header.len,
                        },
                        iface: i,
                        dir,
                        wire_len: p.header.len,
                    });
                })
                .map_err(|e| CaptureError::Live {
                    iface: h.name.clone(),
                    message: pcap_message(&e),
                });
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    h.close();
                    return Err(e);
                }
            };
            h.delivered += n as u64;
            total += n;
        }
        self.start = (self.start + 1) % count.max(1);
        Ok(total)
    }

    /// The counters of every interface. A counter libpcap cannot read this
    /// time keeps its last value.
    pub fn stats(&mut self) -> Vec<IfaceStats> {
        self.handles
            .iter_mut()
            .map(|h| {
                if let Some(Ok(s)) = h.cap.as_mut().map(Capture::stats) {
                    for (k, now) in [s.received, s.dropped, s.if_dropped]
                        .into_iter()
                        .enumerate()
                    {
                        h.total[k] += u64::from(now.wrapping_sub(h.last[k]));
                        h.last[k] = now;
                    }
                }
                IfaceStats {
                    name: h.name.clone(),
                    received: h.total[0],
                    dropped: h.total[1],
                    if_dropped: h.total[2],
                    delivered: h.delivered,
                }
            })
            .collect()
    }
}

impl LiveCapture {
    /// Looks at every open interface: one that is down, was removed, or was
    /// replaced by another of the same name is closed. Returns the first
    /// such failure (the others are returned by the next calls), naming
    /// the interface. Cheap (one lookup per interface): call it about once
    /// a second.
    pub fn check(&mut self) -> Result<(), CaptureError> {
        let up = interfaces_up();
        for h in self.handles.iter_mut().filter(|h| h.cap.is_some()) {
            if h.name == ANY {
                continue;
            }
            let err = match nix::net::if_::if_nametoindex(h.name.as_str()) {
                Err(_) => Some(CaptureError::NoSuchInterface(h.name.clone())),
                Ok(i) if i != h.index => Some(CaptureError::InterfaceReplaced(h.name.clone())),
                // Unknown flags (getifaddrs failed): assume up.
                Ok(_) if up.as_ref().is_some_and(|u| !u.contains(&h.name)) => {
                    Some(CaptureError::InterfaceDown(h.name.clone()))
                }
                Ok(_) => None,
            };
            if let Some(e) = err {
                h.close();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Opens interface `iface` (an index into [`LiveOptions::interfaces`])
    /// again after a failure, with the options the capture was opened
    /// with; its counters carry on. Fails, naming it, while it is missing
    /// or down. An open interface is left as it is.
    pub fn reopen(&mut self, iface: usize) -> Result<(), CaptureError> {
        let Some(h) = self.handles.get_mut(iface) else {
            return Err(CaptureError::NoInterface);
        };
        if h.cap.is_some() {
            return Ok(());
        }
        if h.name != ANY && interfaces_up().is_some_and(|u| !u.contains(&h.name)) {
            return Err(if nix::net::if_::if_nametoindex(h.name.as_str()).is_err() {
                CaptureError::NoSuchInterface(h.name.clone())
            } else {
                CaptureError::InterfaceDown(h.name.clone())
            });
        }
        let fresh = open_one(&h.name, &self.opts)?;
        if fresh.link != h.link {
            return Err(CaptureError::Live {
                iface: h.name.clone(),
                message: format!(
                    "its link type changed from {:?} to {:?}",
                    h.link, fresh.link
                ),
            });
        }
        h.cap = fresh.cap;
        h.index = fresh.index;
        // libpcap's counters start again from zero.
        h.last = [0; 3];
        Ok(())
    }

    /// Whether interface `iface` is open (not closed after a failure).
    pub fn is_open(&self, iface: usize) -> bool {
        self.handles.get(iface).is_some_and(|h| h.cap.is_some())
    }

    /// The index in [`LiveOptions::interfaces`] of interface `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.handles.iter().position(|h| h.name == name)
    }
}

impl Handle {
    /// Closed after a failure; its totals are kept.
    fn close(&mut self) {
        self.cap = None;
    }
}

/// The names of the interfaces that are up (`IFF_UP`) in the calling
/// thread's network namespace; `None` if they cannot be read.
fn interfaces_up() -> Option<Vec<String>> {
    use nix::net::if_::InterfaceFlags;
    let all = nix::ifaddrs::getifaddrs().ok()?;
    let mut up: Vec<String> = all
        .filter(|a| a.flags.contains(InterfaceFlags::IFF_UP))
        .map(|a| a.interface_name)
        .collect();
    up.sort();
    up.dedup();
    Some(up)
}

/// Checks that `bpf` compiles (tcpdump syntax; against Ethernet framing),
/// without opening anything: a bad `--bpf` can be refused before the
/// daemon needs root.
pub fn check_filter(bpf: &str) -> Result<(), CaptureError> {
    let dead = Capture::dead(Linktype::ETHERNET).map_err(|e| CaptureError::Live {
        iface: "(filter check)".into(),
        message: pcap_message(&e),
    })?;
    dead.compile(bpf, true)
        .map(drop)
        .map_err(|e| CaptureError::BadFilter {
            filter: bpf.to_owned(),
            message: pcap_message(&e),
        })
}

fn open_one(name: &str, opts: &LiveOptions) -> Result<Handle, CaptureError> {
    // libpcap's own message for a missing interface is vague ("No such
    // device exists" or nothing); the index lookup runs in the calling
    // thread's network namespace, like the capture.
    let index = if name == ANY {
        0
    } else {
        nix::net::if_::if_nametoindex(name)
            .map_err(|_| CaptureError::NoSuchInterface(name.to_owned()))?
    };
    let live_err = |e: pcap::Error| classify(name, &e);
    let timeout_ms = i32::try_from(opts.block_timeout.as_millis().max(1)).unwrap_or(i32::MAX);
    let cap = Capture::from_device(name)
        .map_err(live_err)?
        .snaplen(i32::try_from(opts.snaplen).unwrap_or(i32::MAX))
        .buffer_size(i32::try_from(opts.buffer_size).unwrap_or(i32::MAX))
        .promisc(opts.promisc)
        .immediate_mode(opts.immediate)
        .timeout(timeout_ms)
        .open()
        .map_err(live_err)?;
    let mut cap = cap.setnonblock().map_err(live_err)?;
    if name == ANY {
        // Cooked v2 carries the packet type (direction) and the interface
        // index; libpcap offers it on `any` only.
        let offered = cap.list_datalinks().unwrap_or_default();
        if offered.contains(&Linktype::LINUX_SLL2) {
            cap.set_datalink(Linktype::LINUX_SLL2).map_err(live_err)?;
        }
    }
    let dlt = cap.get_datalink();
    let link = link_type(dlt).ok_or_else(|| CaptureError::UnsupportedInterfaceLink {
        iface: name.to_owned(),
        dlt: dlt.0,
        name: dlt.get_name().unwrap_or_else(|_| "unknown".into()),
    })?;
    let fixed_dir = match opts.direction {
        CaptureDirection::Both => None,
        CaptureDirection::In => Some(Direction::Inbound),
        CaptureDirection::Out => Some(Direction::Outbound),
    };
    let pcap_dir = match opts.direction {
        CaptureDirection::Both => pcap::Direction::InOut,
        CaptureDirection::In => pcap::Direction::In,
        CaptureDirection::Out => pcap::Direction::Out,
    };
    if pcap_dir != pcap::Direction::InOut {
        cap.direction(pcap_dir).map_err(live_err)?;
    }
    if let Some(bpf) = &opts.bpf {
        cap.filter(bpf, true).map_err(|e| CaptureError::BadFilter {
            filter: bpf.clone(),
            message: format!("on {name}: {}", pcap_message(&e)),
        })?;
    }
    Ok(Handle {
        name: name.to_owned(),
        cap: Some(cap),
        index,
        link,
        fixed_dir,
        delivered: 0,
        last: [0; 3],
        total: [0; 3],
    })
}

/// The link type we decode for a libpcap data link type (`pcap_datalink`
/// returns DLT values, which differ from the LINKTYPE values of files for
/// raw IP: DLT_RAW is 12 on Linux).
pub fn link_type(dlt: Linktype) -> Option<LinkType> {
    u32::try_from(dlt.0).ok().and_then(LinkType::from_pcap)
}

/// The direction a Linux cooked header states (`sll_pkttype`): outgoing, or
/// addressed to this host (unicast, broadcast, multicast). A packet for
/// another host (promiscuous mode) has none.
pub fn cooked_direction(link: LinkType, data: &[u8]) -> Option<Direction> {
    let pkttype = match link {
        // v1: packet type (2 bytes) first.
        LinkType::LinuxSll => u16::from_be_bytes([*data.first()?, *data.get(1)?]),
        // v2: protocol (2), reserved (2), ifindex (4), hatype (2), pkttype (1).
        LinkType::LinuxSll2 => u16::from(*data.get(10)?),
        _ => return None,
    };
    match pkttype {
        // PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST
        0..=2 => Some(Direction::Inbound),
        // PACKET_OUTGOING
        4 => Some(Direction::Outbound),
        // PACKET_OTHERHOST and anything else
        _ => None,
    }
}

/// A `timeval` as µs since the epoch (a time before it as 0).
fn timestamp<S: TryInto<u64>, U: TryInto<u64>>(sec: S, usec: U) -> Timestamp {
    let sec = sec.try_into().unwrap_or(0);
    let usec = usec.try_into().unwrap_or(0);
    Timestamp::from_micros(sec.saturating_mul(1_000_000).saturating_add(usec))
}

/// `timeout` for poll(2): whole milliseconds, rounded up so that a short
/// non-zero timeout does not become a busy loop.
fn poll_timeout(timeout: Duration) -> PollTimeout {
    let ms = timeout.as_micros().div_ceil(1000);
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

fn pcap_message(e: &pcap::Error) -> String {
    match e {
        pcap::Error::PcapError(m) if !m.is_empty() => m.clone(),
        other => other.to_string(),
    }
}

/// Turns a libpcap error at open into what the operator has to do.
fn classify(iface: &str, e: &pcap::Error) -> CaptureError {
    let message = pcap_message(e);
    let lower = message.to_ascii_lowercase();
    if lower.contains("operation not permitted")
        || lower.contains("permission denied")
        || lower.contains("cap_net_raw")
        || lower.contains("permission to")
    {
        CaptureError::PermissionDenied {
            iface: iface.to_owned(),
            message,
        }
    } else if lower.contains("no such device") {
        CaptureError::NoSuchInterface(iface.to_owned())
    } else if message == "libpcap error: " || message.is_empty() {
        CaptureError::Live {
            iface: iface.to_owned(),
            message: "libpcap could not start the capture (is the interface up?)".into(),
        }
    } else {
        CaptureError::Live {
            iface: iface.to_owned(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datalinks_map_to_the_decoders_link_types() {
        let cases = [
            (Linktype::ETHERNET, Some(LinkType::Ethernet)),
            (Linktype::LINUX_SLL, Some(LinkType::LinuxSll)),
            (Linktype::LINUX_SLL2, Some(LinkType::LinuxSll2)),
            (Linktype::NULL, Some(LinkType::Null)),
            // DLT_RAW as Linux libpcap reports it, and LINKTYPE_RAW.
            (Linktype(12), Some(LinkType::Raw)),
            (Linktype::RAW, Some(LinkType::Raw)),
            (Linktype::IPV4, Some(LinkType::Raw)),
            (Linktype::IPV6, Some(LinkType::Raw)),
            (Linktype::IEEE802_11_RADIOTAP, None),
            (Linktype(-1), None),
        ];
        for (dlt, want) in cases {
            assert_eq!(link_type(dlt), want, "{dlt:?}");
        }
    }

    #[test]
    fn cooked_headers_give_the_direction() {
        let mut v1 = [0u8; 16];
        let mut v2 = [0u8; 20];
        for (pkttype, want) in [
            (0u8, Some(Direction::Inbound)),
            (1, Some(Direction::Inbound)),
            (2, Some(Direction::Inbound)),
            (3, None),
            (4, Some(Direction::Outbound)),
            (7, None),
        ] {
            v1[1] = pkttype;
            v2[10] = pkttype;
            assert_eq!(
                cooked_direction(LinkType::LinuxSll, &v1),
                want,
                "v1 {pkttype}"
            );
            assert_eq!(
                cooked_direction(LinkType::LinuxSll2, &v2),
                want,
                "v2 {pkttype}"
            );
        }
        // Truncated headers and non-cooked links: unknown, no panic.
        assert_eq!(cooked_direction(LinkType::LinuxSll, &[0]), None);
        assert_eq!(cooked_direction(LinkType::LinuxSll2, &v2[..10]), None);
        assert_eq!(cooked_direction(LinkType::Ethernet, &v2), None);
    }

    #[test]
    fn timestamps_are_micros_and_never_negative() {
        assert_eq!(timestamp(2i64, 500i64).as_micros(), 2_000_500);
        assert_eq!(timestamp(-5i64, 10i64).as_micros(), 10);
        assert_eq!(timestamp(i64::MAX, 0i64).as_micros(), u64::MAX);
    }

    #[test]
    fn poll_timeouts_round_up() {
        assert_eq!(poll_timeout(Duration::ZERO), PollTimeout::ZERO);
        assert_eq!(
            poll_timeout(Duration::from_micros(100)),
            PollTimeout::from(1u8)
        );
        assert_eq!(
            poll_timeout(Duration::from_millis(100)),
            PollTimeout::from(100u8)
        );
        assert_eq!(poll_timeout(Duration::from_secs(1 << 40)), PollTimeout::MAX);
    }

    #[test]
    fn good_filters_compile() {
        for f in [
            "udp",
            "tcp[tcpflags] & tcp-syn != 0",
            "not port 22",
            "ip6 or icmp",
        ] {
            check_filter(f).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn bad_filter_names_the_filter_and_libpcaps_reason() {
        let err = check_filter("udp and").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, CaptureError::BadFilter { .. }), "{text}");
        assert!(text.contains("\"udp and\""), "{text}");
        assert!(text.contains("syntax error"), "{text}");
        let err = check_filter("port 99999").unwrap_err().to_string();
        assert!(
            err.contains("port 99999") && err.contains("99999 > 65535"),
            "{err}"
        );
    }

    #[test]
    fn open_refuses_bad_option_sets_before_touching_libpcap() {
        let err = |interfaces: &[&str], bpf: Option<&str>| {
            LiveCapture::open(&LiveOptions {
                interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
                bpf: bpf.map(str::to_owned),
                ..LiveOptions::default()
            })
            .unwrap_err()
        };
        assert!(matches!(err(&[], None), CaptureError::NoInterface));
        assert!(matches!(
            err(&["x", "x"], None),
            CaptureError::DuplicateInterface(n) if n == "x"
        ));
        assert!(matches!(
            err(&[ANY, "x"], None),
            CaptureError::AnyWithOthers
        ));
        // The filter is checked before any interface is opened.
        assert!(matches!(
            err(&["lo"], Some("tcp port")),
            CaptureError::BadFilter { .. }
        ));
    }

    #[test]
    fn unknown_interface_is_named() {
        let err = LiveCapture::open(&LiveOptions {
            interfaces: vec!["pcnosuch0".into()],
            ..LiveOptions::default()
        })
        .unwrap_err();
        assert!(matches!(&err, CaptureError::NoSuchInterface(n) if n == "pcnosuch0"));
        assert!(err.to_string().contains("pcnosuch0"), "{err}");
    }

    #[test]
    fn open_errors_say_what_to_do() {
        let perm = classify(
            "eth0",
            &pcap::Error::PcapError("socket: Operation not permitted".into()),
        );
        let text = perm.to_string();
        assert!(
            matches!(perm, CaptureError::PermissionDenied { .. }),
            "{text}"
        );
        assert!(
            text.contains("eth0") && text.contains("root") && text.contains("CAP_NET_RAW"),
            "{text}"
        );
        let gone = classify(
            "eth9",
            &pcap::Error::PcapError("SIOCGIFINDEX: No such device".into()),
        );
        assert!(matches!(gone, CaptureError::NoSuchInterface(n) if n == "eth9"));
        let other = classify("eth0", &pcap::Error::PcapError("something odd".into()));
        assert!(other.to_string().contains("something odd"), "{other}");
    }
}
