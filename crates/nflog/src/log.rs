//! The NFLOG socket: setup, batched receive, loss accounting.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    self, sockopt, AddressFamily, MsgFlags, MultiHeaders, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

use crate::error::NflogError;
use crate::msg::{
    self, ConfigRequest, DecodeError, Hook, NlMsgs, PacketMeta, MAX_COPY_RANGE, NFULNL_CFG_F_SEQ,
    NFULNL_CFG_F_SEQ_GLOBAL, NFULNL_MSG_PACKET, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN,
};
use crate::proc::log_instances;

/// How to set up an NFLOG group. Start from [`LogConfig::new`].
///
/// # Which setting wins: this one or the nft rule's
/// An nft `log group N` statement may carry its own `snaplen` and
/// `queue-threshold`. For each packet the kernel (`nfulnl_log_packet`)
/// takes the **smaller** of the rule's value and this configuration's:
/// `snaplen 64` with `copy_range` 256 copies 64 bytes, `snaplen 1500` still
/// copies 256; `queue-threshold 8` with `qthresh` 64 sends a datagram every
/// 8 packets, `queue-threshold 200` still every 64. A rule without them
/// uses this configuration alone. The flush `timeout` and `nlbufsiz` exist
/// only here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// The NFLOG group (`log group N` in nft, `--nflog-group` in iptables).
    pub group: u16,
    /// Bytes of each packet copied to user space, from the IP header on
    /// (`NFULA_CFG_MODE` copy-packet). 0 or anything above
    /// [`MAX_COPY_RANGE`] means the kernel's maximum (65531). Default 256:
    /// enough for IP, TCP with options, and a DNS question.
    pub copy_range: u32,
    /// Socket receive buffer in bytes, set with `SO_RCVBUFFORCE` (falls back
    /// to `SO_RCVBUF`, capped by `net.core.rmem_max`, without
    /// CAP_NET_ADMIN). Default 8 MiB. Datagrams that do not fit are lost
    /// and counted ([`LogStats::overruns`], [`LogStats::lost`]).
    pub rcvbuf: usize,
    /// Packets the kernel gathers into one datagram before it sends
    /// (`NFULA_CFG_QTHRESH`), at least 1. Default 64 (the kernel's own
    /// default is 100). A datagram also goes out when `nlbufsiz` is full or
    /// `timeout` has passed since its first packet.
    pub qthresh: u32,
    /// Flush timeout in 1/100 s (`NFULA_CFG_TIMEOUT`): the longest a packet
    /// waits in the kernel for its datagram to fill. Default 10 (100 ms;
    /// the kernel's default is 1 s).
    pub timeout: u32,
    /// Size of the kernel's datagram buffer (`NFULA_CFG_NLBUFSIZ`), 4096 to
    /// 131072 bytes (the kernel ignores other values silently; this crate
    /// refuses them). The kernel rounds the allocation up, so a datagram
    /// can be up to about twice this. Default 65536.
    pub nlbufsiz: u32,
    /// `NFULNL_CFG_F_SEQ`: number every packet of the group (`NFULA_SEQ`),
    /// so that lost packets are counted ([`LogStats::lost`]). Default true.
    pub seq: bool,
    /// `NFULNL_CFG_F_SEQ_GLOBAL`: also a sequence number shared by all
    /// groups of the network namespace (`NFULA_SEQ_GLOBAL`). Reported in
    /// [`LoggedPacket::seq_global`], not used for loss accounting (other
    /// groups advance it). Default false.
    pub seq_global: bool,
    /// Datagrams read by one `recvmmsg` call, 1 to 64. Each needs a receive
    /// slot big enough for the largest datagram (128 KiB at the defaults;
    /// pages are only touched as datagrams arrive). Default 8.
    pub slots: usize,
}

impl LogConfig {
    /// Defaults for group `group`.
    pub fn new(group: u16) -> Self {
        LogConfig {
            group,
            copy_range: 256,
            rcvbuf: 8 << 20,
            qthresh: 64,
            timeout: 10,
            nlbufsiz: 65536,
            seq: true,
            seq_global: false,
            slots: 8,
        }
    }

    /// The copy range the kernel will use.
    pub fn effective_copy_range(&self) -> u32 {
        if self.copy_range == 0 || self.copy_range > MAX_COPY_RANGE {
            MAX_COPY_RANGE
        } else {
            self.copy_range
        }
    }

    fn flags(&self) -> u16 {
        let mut f = 0;
        if self.seq {
            f |= NFULNL_CFG_F_SEQ;
        }
        if self.seq_global {
            f |= NFULNL_CFG_F_SEQ_GLOBAL;
        }
        f
    }

    fn validate(&self) -> Result<(), NflogError> {
        if self.qthresh == 0 {
            return Err(NflogError::InvalidConfig("qthresh must be at least 1"));
        }
        if !(MIN_NLBUFSIZ..=MAX_NLBUFSIZ).contains(&self.nlbufsiz) {
            return Err(NflogError::InvalidConfig(
                "nlbufsiz must be between 4096 and 131072 bytes",
            ));
        }
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return Err(NflogError::InvalidConfig("slots must be between 1 and 64"));
        }
        Ok(())
    }

    /// Room one datagram can need: the kernel allocates
    /// `max(nlbufsiz, one packet)` and rounds up to its allocator's size
    /// classes (powers of two above a page) minus the skb's shared info,
    /// and fills all of it.
    fn slot_size(&self) -> usize {
        let one_packet = msg::align4(self.effective_copy_range() as usize) + MSG_OVERHEAD;
        (self.nlbufsiz as usize)
            .max(one_packet)
            .saturating_add(MSG_OVERHEAD)
            .next_power_of_two()
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig::new(0)
    }
}

/// What a [`Log`] has counted; every counter only grows.
///
/// With [`LogConfig::seq`] on, `received + lost + malformed` is the number
/// of packets the kernel logged to the group up to the highest sequence
/// number seen (exactly, as long as every malformed message still had a
/// readable `NFULA_SEQ`). Losses after the last packet received become
/// visible as `lost` only when a later packet arrives; `overruns` says at
/// once that some happened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Packets decoded and handed to the caller.
    pub received: u64,
    /// Packets the kernel logged for us that never arrived: the sum of the
    /// gaps in `NFULA_SEQ`. The kernel numbers a packet when it puts it into
    /// a datagram; a datagram the socket buffer cannot take is dropped
    /// whole, so each overrun shows here as up to `qthresh` packets. 0 when
    /// [`LogConfig::seq`] is off. Not counted at all (the kernel's "FIXME:
    /// statistics"): packets for which the kernel could not allocate a
    /// datagram buffer; they get no sequence number.
    pub lost: u64,
    /// `ENOBUFS` from the socket: the receive buffer was full and the kernel
    /// dropped one or more datagrams since the last report (netlink reports
    /// an overrun once, however many datagrams it dropped). The socket stays
    /// usable; read faster, or raise [`LogConfig::rcvbuf`].
    pub overruns: u64,
    /// Messages that could not be decoded (bad lengths, a packet message
    /// without its header, a wrong attribute size, a datagram cut by the
    /// receive slot, a message type nfnetlink_log does not send). Skipped,
    /// never fatal.
    pub malformed: u64,
    /// Datagrams read from the socket.
    pub datagrams: u64,
    /// Most packets seen in one datagram (the effective threshold under
    /// load).
    pub max_per_datagram: u64,
    /// Datagrams longer than the receive slot (cut; should stay 0). Also
    /// counted in `malformed`.
    pub truncated: u64,
    /// Packets whose `NFULA_SEQ` was lower than the one expected (should
    /// stay 0: one group's numbers only increase, mod 2^32).
    pub out_of_order: u64,
    /// `NLMSG_ERROR` messages after setup (should stay 0).
    pub netlink_errors: u64,
}

/// One logged packet, borrowed from the receive buffer for the duration of
/// the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedPacket<'a> {
    /// The group it was logged to (`nfgenmsg.res_id`).
    pub group: u16,
    /// `nfgen_family`: the netfilter protocol family (`NFPROTO_IPV4` = 2,
    /// `NFPROTO_IPV6` = 10; an `inet` table logs with the packet's own).
    pub family: u8,
    /// The netfilter hook of the rule that logged it.
    pub hook: Hook,
    /// EtherType of the payload (0x0800 IPv4, 0x86dd IPv6).
    pub hw_protocol: u16,
    /// The packet from the IP header on (`NFULA_PAYLOAD`), at most the
    /// copy range (or the rule's smaller `snaplen`). Empty if the kernel
    /// sent no payload.
    pub payload: &'a [u8],
    /// The rule's `prefix` (`NFULA_PREFIX`) without its NUL; `None` when the
    /// rule has none (the kernel then sends an empty string).
    pub prefix: Option<&'a [u8]>,
    /// The packet mark (`NFULA_MARK`; the kernel omits it, and this is 0,
    /// when unset).
    pub mark: u32,
    /// Receive time in microseconds since the Unix epoch
    /// (`NFULA_TIMESTAMP`): only on the prerouting, input and forward
    /// hooks, where the kernel always sends one (the packet's receive
    /// stamp, or the time of logging if it has none).
    pub timestamp_micros: Option<u64>,
    /// The group's sequence number (`NFULA_SEQ`, with [`LogConfig::seq`]);
    /// the first packet after bind is 0.
    pub seq: Option<u32>,
    /// The namespace-wide sequence number (`NFULA_SEQ_GLOBAL`, with
    /// [`LogConfig::seq_global`]), starting at 1.
    pub seq_global: Option<u32>,
    /// Input interface index.
    pub indev: Option<u32>,
    /// Output interface index.
    pub outdev: Option<u32>,
    /// Bridge port the packet came in on.
    pub phys_indev: Option<u32>,
    /// Bridge port the packet goes out on.
    pub phys_outdev: Option<u32>,
    /// Link-layer source address, when the kernel knows one.
    pub hw_addr: Option<HwAddr>,
    /// File-system uid / gid of the local socket that sent it
    /// (`NFULA_UID`/`NFULA_GID`, output side only).
    pub uid: Option<u32>,
    /// See `uid`.
    pub gid: Option<u32>,
    /// The packet's length on the wire, when known. nfnetlink_log sends no
    /// capture-length attribute (unlike NFQUEUE's `NFQA_CAP_LEN`); this is
    /// the IP header's own length (IPv4 total length, IPv6 40 + payload
    /// length), which on the inet hooks equals the packet's length: the
    /// kernel's IP input drops or trims packets whose header disagrees
    /// before any netfilter hook. `None` without an IP header in the
    /// payload, or for an IPv6 jumbogram or BIG TCP packet (length 0).
    /// Larger than `payload.len()` when the copy was cut.
    pub original_len: Option<u32>,
}

/// A link-layer address of up to 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HwAddr {
    bytes: [u8; 8],
    len: u8,
}

impl HwAddr {
    /// The address bytes (6 for Ethernet).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The length the IP header announces (see [`LoggedPacket::original_len`]).
fn ip_len(hw_protocol: u16, ip: &[u8]) -> Option<u32> {
    let be16 = |at: usize| -> Option<u32> {
        Some(u32::from(u16::from_be_bytes(
            ip.get(at..at + 2)?.try_into().ok()?,
        )))
    };
    match (hw_protocol, ip.first()? >> 4) {
        (0x0800, 4) => be16(2).filter(|&l| l >= 20),
        (0x86dd, 6) => be16(4).filter(|&l| l > 0).map(|l| l + 40),
        _ => None,
    }
}

impl<'a> LoggedPacket<'a> {
    fn from_meta(m: &PacketMeta, msg: &'a [u8]) -> LoggedPacket<'a> {
        let payload = msg.get(m.payload.clone()).unwrap_or_default();
        LoggedPacket {
            group: m.group,
            family: m.family,
            hook: m.hook,
            hw_protocol: m.hw_protocol,
            payload,
            prefix: m.prefix.clone().and_then(|r| msg.get(r)),
            mark: m.mark,
            timestamp_micros: m.timestamp_micros,
            seq: m.seq,
            seq_global: m.seq_global,
            indev: m.indev,
            outdev: m.outdev,
            phys_indev: m.phys_indev,
            phys_outdev: m.phys_outdev,
            hw_addr: m.hw_addr.map(|(bytes, len)| HwAddr { bytes, len }),
            uid: m.uid,
            gid: m.gid,
            original_len: ip_len(m.hw_protocol, payload),
        }
    }

    /// Decode one complete `NFULNL_MSG_PACKET` netlink message (starting with
    /// its `nlmsghdr`). For replay, tests and fuzzing; [`Log`] does this
    /// itself. See [`decode_datagram`] for a whole datagram.
    pub fn decode(message: &'a [u8]) -> Result<LoggedPacket<'a>, DecodeError> {
        let m = NlMsgs::new(message)
            .next()
            .ok_or(DecodeError::Truncated)?
            .map_err(|b| b.error)?;
        if m.ty != NFULNL_MSG_PACKET {
            return Err(DecodeError::NotPacket(m.ty));
        }
        let meta = msg::decode_packet(m.payload)?;
        Ok(LoggedPacket::from_meta(&meta, m.payload))
    }
}

/// Decode every message of one datagram as the kernel sends it: each packet
/// message as `Ok`, each message that cannot be decoded as `Err`;
/// `NLMSG_DONE` and other control messages are skipped. A framing error
/// ends the datagram. Pure (no counting): for replay, tests and fuzzing.
pub fn decode_datagram(
    datagram: &[u8],
) -> impl Iterator<Item = Result<LoggedPacket<'_>, DecodeError>> {
    NlMsgs::new(datagram).filter_map(|m| match m {
        Err(b) => Some(Err(b.error)),
        Ok(m) if m.ty == NFULNL_MSG_PACKET => Some(
            msg::decode_packet(m.payload).map(|meta| LoggedPacket::from_meta(&meta, m.payload)),
        ),
        Ok(m) if matches!(m.ty, NLMSG_DONE | NLMSG_NOOP | NLMSG_OVERRUN | NLMSG_ERROR) => None,
        Ok(m) => Some(Err(DecodeError::NotPacket(m.ty))),
    })
}

/// Counting and sequence tracking, apart from the socket so that it can be
/// tested over byte arrays.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The `NFULA_SEQ` expected next. A new group instance numbers its
    /// first packet 0.
    pub next_seq: u32,
    pub stats: LogStats,
}

impl State {
    /// Count sequence number `seq` (of a packet received or malformed).
    fn account(&mut self, seq: u32) {
        let gap = seq.wrapping_sub(self.next_seq);
        if gap < 1 << 31 {
            self.stats.lost += u64::from(gap);
            self.next_seq = seq.wrapping_add(1);
        } else {
            // Behind the expected number: not a loss; keep expecting the
            // higher number.
            self.stats.out_of_order += 1;
        }
    }

    /// Take in one datagram: decode every message, count, and hand each
    /// packet to `f`. Returns the number of packets handed over.
    pub(crate) fn ingest<F>(&mut self, buf: &[u8], truncated: bool, f: &mut F) -> usize
    where
        F: FnMut(&LoggedPacket<'_>),
    {
        self.stats.datagrams += 1;
        if truncated {
            self.stats.truncated += 1;
        }
        let mut n = 0;
        for m in NlMsgs::new(buf) {
            let m = match m {
                Ok(m) => m,
                Err(broken) => {
                    // The rest of the datagram cannot be framed. A packet
                    // message cut here still counts by its number.
                    self.stats.malformed += 1;
                    if broken.ty == Some(NFULNL_MSG_PACKET) {
                        if let Some(seq) = msg::salvage_seq(broken.rest) {
                            self.account(seq);
                        }
                    }
                    break;
                }
            };
            match m.ty {
                NFULNL_MSG_PACKET => match msg::decode_packet(m.payload) {
                    Ok(meta) => {
                        if let Some(seq) = meta.seq {
                            self.account(seq);
                        }
                        self.stats.received += 1;
                        n += 1;
                        f(&LoggedPacket::from_meta(&meta, m.payload));
                    }
                    Err(_) => {
                        self.stats.malformed += 1;
                        if let Some(seq) = msg::salvage_seq(m.payload) {
                            self.account(seq);
                        }
                    }
                },
                NLMSG_DONE | NLMSG_NOOP | NLMSG_OVERRUN => {}
                NLMSG_ERROR => {
                    if msg::error_code(m.payload) != Ok(0) {
                        self.stats.netlink_errors += 1;
                    }
                }
                _ => self.stats.malformed += 1,
            }
        }
        self.stats.max_per_datagram = self.stats.max_per_datagram.max(n as u64);
        n
    }
}

/// An NFLOG listener: one bound group on one netlink socket.
///
/// Dropping it closes the socket; the kernel then unbinds the group (what
/// it still held for us is lost). Packets go on through the firewall
/// whether or not anyone listens: NFLOG only copies.
#[derive(Debug)]
pub struct Log {
    fd: OwnedFd,
    cfg: LogConfig,
    portid: u32,
    /// Receive buffer: `cfg.slots` slots of `slot` bytes.
    rx: Vec<u8>,
    slot: usize,
    /// (length, truncated) of each datagram of the last `recvmmsg`.
    lens: Vec<(usize, bool)>,
    /// Datagrams that arrived while waiting for the setup acknowledgement,
    /// handed over by the first `recv_batch`.
    early: Vec<(Vec<u8>, bool)>,
    rcvbuf: usize,
    st: State,
}

/// Room for everything but the payload in a packet message (headers,
/// prefix, interface indexes, mark, timestamp, hw address and header,
/// uid/gid, sequence numbers).
const MSG_OVERHEAD: usize = 1024;
const MIN_NLBUFSIZ: u32 = 4096;
const MAX_NLBUFSIZ: u32 = 131_072;
const MAX_SLOTS: usize = 64;
/// How long to wait for the kernel's setup acknowledgement.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// `ENOBUFS` reports one `recv_batch` takes before it returns (each is
/// followed by data under sustained overload; this bounds the call).
const MAX_OVERRUNS_PER_CALL: u32 = 64;

impl Log {
    /// Bind group `cfg.group` in the calling thread's network namespace:
    /// open a netlink socket, enlarge its receive buffer, send one config
    /// message (bind, copy packets up to `copy_range`, `nlbufsiz`,
    /// `timeout`, `qthresh`, sequence-number flags) and wait for the
    /// kernel's acknowledgement.
    ///
    /// The per-family `NFULNL_CFG_CMD_PF_UNBIND`/`PF_BIND` commands are not
    /// sent. They are not needed: an NFLOG rule (nft `log group`, xt
    /// `NFLOG`) asks for the ULOG logger type, which nfnetlink_log registers
    /// for every family when it loads (the live tests bind and receive IPv4
    /// and IPv6 on 6.18 without them). And they are not harmless: they set
    /// the namespace's *default* logger for the family
    /// (`/proc/net/netfilter/nf_log`; e.g. `nf_log_ipv4`, where conntrack's
    /// invalid-packet logging goes) to nfnetlink_log group 0, or, unbinding,
    /// to none, whoever had set it.
    pub fn open(cfg: &LogConfig) -> Result<Self, NflogError> {
        cfg.validate()?;
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(NflogError::NetlinkUnavailable)?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(NflogError::io("bind"))?;
        let portid = socket::getsockname::<NetlinkAddr>(fd.as_raw_fd())
            .map_err(NflogError::io("getsockname"))?
            .pid();
        if socket::setsockopt(&fd, sockopt::RcvBufForce, &cfg.rcvbuf).is_err() {
            // Without CAP_NET_ADMIN: as much as net.core.rmem_max allows.
            socket::setsockopt(&fd, sockopt::RcvBuf, &cfg.rcvbuf)
                .map_err(NflogError::io("setsockopt(SO_RCVBUF)"))?;
        }
        let rcvbuf = socket::getsockopt(&fd, sockopt::RcvBuf)
            .map_err(NflogError::io("getsockopt(SO_RCVBUF)"))?;
        let slot = cfg.slot_size();
        let mut log = Log {
            fd,
            cfg: cfg.clone(),
            portid,
            // calloc'd: pages are only touched as datagrams arrive.
            rx: vec![0; slot.saturating_mul(cfg.slots)],
            slot,
            lens: Vec::with_capacity(cfg.slots),
            early: Vec::new(),
            rcvbuf,
            st: State::default(),
        };
        log.configure()?;
        Ok(log)
    }

    fn configure(&mut self) -> Result<(), NflogError> {
        const SEQ: u32 = 1;
        let req = ConfigRequest {
            group: self.cfg.group,
            copy_range: self.cfg.effective_copy_range(),
            nlbufsiz: self.cfg.nlbufsiz,
            timeout: self.cfg.timeout,
            qthresh: self.cfg.qthresh,
            flags: self.cfg.flags(),
        };
        let mut tx = Vec::with_capacity(128);
        msg::encode_config(&mut tx, SEQ, &req);
        loop {
            match socket::send(self.fd.as_raw_fd(), &tx, MsgFlags::empty()) {
                Ok(_) => break,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    return Err(NflogError::Io {
                        op: "send",
                        errno: e,
                    })
                }
            }
        }

        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait_readable(Some(left))? {
                if Instant::now() >= deadline {
                    return Err(NflogError::SetupTimeout);
                }
                continue;
            }
            let buf = &mut self.rx[..self.slot];
            let (n, truncated) = match socket::recvmsg::<NetlinkAddr>(
                self.fd.as_raw_fd(),
                &mut [IoSliceMut::new(buf)],
                None,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(m) => (
                    m.bytes.min(self.slot),
                    m.flags.contains(MsgFlags::MSG_TRUNC),
                ),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(Errno::ENOBUFS) => {
                    self.st.stats.overruns += 1;
                    continue;
                }
                Err(e) => {
                    return Err(NflogError::Io {
                        op: "recvmsg",
                        errno: e,
                    })
                }
            };
            let data = &self.rx[..n];
            let mut answer = None;
            let mut packets = false;
            for m in NlMsgs::new(data).flatten() {
                match m.ty {
                    NLMSG_ERROR if msg::error_request_seq(m.payload) == Some(SEQ) => {
                        answer = Some(msg::error_code(m.payload)?);
                    }
                    NFULNL_MSG_PACKET => packets = true,
                    _ => {}
                }
            }
            if packets {
                // Logged between the bind and its acknowledgement: keep
                // them for the first recv_batch.
                self.early.push((data.to_vec(), truncated));
            }
            match answer {
                None => continue,
                Some(0) => return Ok(()),
                Some(code) => return Err(self.setup_error(Errno::from_raw(code.saturating_neg()))),
            }
        }
    }

    fn setup_error(&self, errno: Errno) -> NflogError {
        let group = self.cfg.group;
        match errno {
            // EPERM: without CAP_NET_ADMIN (nfnetlink's check), or another
            // socket owns the group; EBUSY/EEXIST: the group is bound.
            Errno::EPERM | Errno::EBUSY | Errno::EEXIST => {
                let owner = log_instances()
                    .ok()
                    .and_then(|v| v.into_iter().find(|i| i.group == group))
                    .map(|i| i.portid);
                match (errno, owner) {
                    (_, Some(portid)) if portid != self.portid => NflogError::GroupInUse {
                        group,
                        portid: Some(portid),
                    },
                    (Errno::EBUSY | Errno::EEXIST, _) => NflogError::GroupInUse {
                        group,
                        portid: None,
                    },
                    _ => NflogError::PermissionDenied { group },
                }
            }
            // nfnetlink answers EINVAL for a subsystem it does not have.
            Errno::EINVAL => NflogError::ModuleMissing,
            errno => NflogError::SetupRejected { group, errno },
        }
    }

    /// Wait until the socket is readable. `None` waits forever. Returns
    /// false on timeout or when a signal interrupted the wait.
    fn wait_readable(&self, timeout: Option<Duration>) -> Result<bool, NflogError> {
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(d) => {
                // Round up, so that a sub-millisecond timeout still waits.
                let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => Ok(false),
            Ok(_) => Ok(true),
            Err(Errno::EINTR) => Ok(false),
            Err(e) => Err(NflogError::Io {
                op: "poll",
                errno: e,
            }),
        }
    }

    /// Receive logged packets and hand each to `f`, in the order the kernel
    /// logged them.
    ///
    /// Reads what the socket holds without blocking; only when it is empty
    /// waits up to `timeout` (`None`: forever) for the first datagram, then
    /// takes what has arrived, `slots` datagrams per `recvmmsg`, until at
    /// least `max` packets were handed over or the socket is empty. One
    /// datagram carries up to the threshold's worth of packets and is never
    /// split, so a call can hand over up to that many more than `max`.
    ///
    /// Returns the number of packets handed over: 0 on timeout, when a
    /// signal interrupted the wait, or when what arrived held none.
    /// Overruns (`ENOBUFS`) and malformed messages are counted in
    /// [`stats`](Self::stats), not returned.
    pub fn recv_batch<F>(
        &mut self,
        max: usize,
        timeout: Option<Duration>,
        mut f: F,
    ) -> Result<usize, NflogError>
    where
        F: FnMut(&LoggedPacket<'_>),
    {
        let max = max.max(1);
        let mut n = 0;
        for (d, truncated) in std::mem::take(&mut self.early) {
            n += self.st.ingest(&d, truncated, &mut f);
        }
        let (got, more) = self.read_available(max.saturating_sub(n), &mut f)?;
        n += got;
        // A zero timeout asks for what has arrived: the read above saw it
        // all, and a poll would only cost a syscall.
        if n > 0 || more || timeout == Some(Duration::ZERO) {
            return Ok(n);
        }
        if !self.wait_readable(timeout)? {
            return Ok(0);
        }
        let (got, _) = self.read_available(max, &mut f)?;
        Ok(got)
    }

    /// Reads datagrams without blocking until `max` packets were handed
    /// over or the socket is empty. Returns (packets, whether any datagram
    /// or overrun report was read).
    fn read_available<F>(&mut self, max: usize, f: &mut F) -> Result<(usize, bool), NflogError>
    where
        F: FnMut(&LoggedPacket<'_>),
    {
        let slot = self.slot;
        let slots = self.cfg.slots;
        let mut n = 0;
        let mut any = false;
        let mut overruns = 0;
        while n < max.max(1) {
            self.lens.clear();
            let received = {
                let mut headers = MultiHeaders::<NetlinkAddr>::preallocate(slots, None);
                let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
                    .rx
                    .chunks_mut(slot)
                    .take(slots)
                    .map(|c| [IoSliceMut::new(c)])
                    .collect();
                socket::recvmmsg(
                    self.fd.as_raw_fd(),
                    &mut headers,
                    iovs.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                )
                .map(|msgs| {
                    for m in msgs {
                        self.lens
                            .push((m.bytes.min(slot), m.flags.contains(MsgFlags::MSG_TRUNC)));
                    }
                })
            };
            match received {
                Ok(()) => {}
                Err(Errno::EAGAIN | Errno::EINTR) => break,
                Err(Errno::ENOBUFS) => {
                    // The kernel dropped datagrams; the socket stays usable
                    // and what did arrive is still there.
                    self.st.stats.overruns += 1;
                    any = true;
                    overruns += 1;
                    if overruns >= MAX_OVERRUNS_PER_CALL {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    return Err(NflogError::Io {
                        op: "recvmmsg",
                        errno: e,
                    })
                }
            }
            any |= !self.lens.is_empty();
            for (k, &(len, truncated)) in self.lens.iter().enumerate() {
                let at = k * slot;
                n += self.st.ingest(&self.rx[at..at + len], truncated, f);
            }
            if self.lens.len() < slots {
                break; // the socket is empty
            }
        }
        Ok((n, any))
    }

    /// What this listener has counted so far.
    pub fn stats(&self) -> &LogStats {
        &self.st.stats
    }

    /// The socket, to `poll` together with a shutdown eventfd or pipe.
    pub fn raw_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    /// The socket's netlink port id (shown as `portid` in
    /// [`log_instances`](crate::log_instances)).
    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// The receive buffer the kernel granted, in bytes (it reports twice the
    /// requested size: half is bookkeeping).
    pub fn rcvbuf(&self) -> usize {
        self.rcvbuf
    }
}

impl AsFd for Log {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests;
