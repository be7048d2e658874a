//! The NFQUEUE socket: setup, batched receive, batched verdicts.

use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    self, sockopt, AddressFamily, MsgFlags, MultiHeaders, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

use crate::error::NfqError;
use crate::msg::{
    self, ConfigRequest, DecodeError, Hook, NlMsgs, PacketMeta, SkbInfo, Verdict, MAX_COPY_RANGE,
    MAX_VERDICT_MSG_LEN, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO, NFQNL_MSG_PACKET, NLMSG_ERROR,
};
use crate::stats::queue_stats;

/// How to set up a queue. Start from [`QueueConfig::new`] or `default()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    /// The queue number (`--queue-num` of the NFQUEUE rule).
    pub num: u16,
    /// Bytes of each packet copied to user space; 0 or anything above
    /// [`MAX_COPY_RANGE`] means the kernel's maximum (65531). Default 0xffff.
    pub copy_range: u32,
    /// Packets the kernel holds waiting for a verdict before the queue counts
    /// as full. Default 8192 (the kernel's own default is 1024).
    pub max_len: u32,
    /// `NFQA_CFG_F_FAIL_OPEN`: accept, instead of drop, packets that the queue
    /// or the socket buffer cannot take. Default true. Such packets are not
    /// counted by the kernel (`queue_dropped`/`user_dropped` count only drops
    /// without fail-open), and a full queue gives no `ENOBUFS`.
    pub fail_open: bool,
    /// `NFQA_CFG_F_GSO`: receive GSO super-packets whole instead of having
    /// the kernel segment them first (10x TCP throughput here). Such packets
    /// may carry unfinished checksums ([`Packet::skb_info`]). Default true.
    pub gso: bool,
    /// Socket receive buffer in bytes, set with `SO_RCVBUFFORCE` (falls back
    /// to `SO_RCVBUF`, capped by `net.core.rmem_max`, without
    /// CAP_NET_ADMIN). Default 16 MiB.
    pub rcvbuf: usize,
    /// Most packets returned by one [`Queue::recv_batch`], 1 to 1024.
    /// Each takes a receive slot of `copy_range` + 1 KiB. Default 64.
    pub batch: usize,
    /// How long [`Queue::recv_batch`] keeps trying non-blocking reads
    /// before it sleeps in `poll`: fewer wake-ups under load, at the cost
    /// of that much CPU per idle moment. Default 0.
    pub spin: Duration,
    /// Ask the kernel to timestamp incoming packets (`SO_TIMESTAMP` on the
    /// queue's socket switches on timestamping host-wide), so that
    /// [`Packet::timestamp_micros`] is filled on the prerouting, input and
    /// forward hooks. Without it, and without another socket asking for
    /// timestamps, packets usually carry none: take the time they are
    /// received instead (a held packet is read within microseconds).
    /// Default false: host-wide timestamping costs every packet of the
    /// host, in every namespace, a clock read (about 1.7 % of the CPU
    /// time per new TCP connection through veth, measured with `perf`).
    pub timestamps: bool,
}

impl QueueConfig {
    /// Defaults for queue `num`.
    pub fn new(num: u16) -> Self {
        QueueConfig {
            num,
            copy_range: 0xffff,
            max_len: 8192,
            fail_open: true,
            gso: true,
            rcvbuf: 16 << 20,
            batch: 64,
            spin: Duration::ZERO,
            timestamps: false,
        }
    }

    fn flags(&self) -> u32 {
        let mut f = 0;
        if self.fail_open {
            f |= NFQA_CFG_F_FAIL_OPEN;
        }
        if self.gso {
            f |= NFQA_CFG_F_GSO;
        }
        f
    }

    /// The copy range the kernel will use.
    fn effective_copy_range(&self) -> u32 {
        if self.copy_range == 0 || self.copy_range > MAX_COPY_RANGE {
            MAX_COPY_RANGE
        } else {
            self.copy_range
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig::new(0)
    }
}

/// Counters kept by a [`Queue`]; they only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Packets received.
    pub packets: u64,
    /// Calls of [`Queue::recv_batch`] that returned at least one packet.
    pub batches: u64,
    /// Largest batch seen.
    pub max_batch: usize,
    /// `ENOBUFS` from `recv`: the socket buffer overflowed and the kernel
    /// could not deliver some packets. They were accepted (fail-open) or
    /// dropped (counted as `user_dropped` in [`QueueStats`](crate::QueueStats)).
    pub enobufs: u64,
    /// Netlink error messages received after setup (e.g. `ENOENT` for a
    /// verdict on an unknown packet id).
    pub netlink_errors: u64,
    /// The last such error (positive errno).
    pub last_netlink_error: Option<i32>,
    /// Packet messages that could not be decoded; those whose id could be
    /// read were accepted.
    pub malformed: u64,
    /// `NFQNL_MSG_VERDICT` messages sent (one packet each).
    pub verdict_msgs: u64,
    /// `NFQNL_MSG_VERDICT_BATCH` messages sent (a run of packets each).
    pub batch_verdict_msgs: u64,
    /// `send` calls (the setup message included).
    pub sends: u64,
}

/// A packet waiting for a verdict, borrowed from the queue's receive buffer
/// until the next [`Queue::recv_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The id to give the verdict for.
    pub id: u32,
    /// The queue it came from.
    pub queue: u16,
    /// `nfgen_family`: the netfilter protocol family (`NFPROTO_IPV4` = 2,
    /// `NFPROTO_IPV6` = 10, `NFPROTO_BRIDGE` = 7).
    pub family: u8,
    /// The netfilter hook that queued it.
    pub hook: Hook,
    /// EtherType of the payload (0x0800 IPv4, 0x86dd IPv6).
    pub hw_protocol: u16,
    /// The L3 packet (IP header first), at most `copy_range` bytes.
    pub payload: &'a [u8],
    /// Length of the whole packet; larger than `payload.len()` when the copy
    /// was cut at `copy_range` (`NFQA_CAP_LEN`).
    pub original_len: u32,
    /// The packet mark (0 when unset).
    pub mark: u32,
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
    /// Receive time in microseconds since the Unix epoch (`NFQA_TIMESTAMP`):
    /// only for packets that carry a kernel timestamp, and only on the
    /// prerouting, input and forward hooks.
    pub timestamp_micros: Option<u64>,
    /// A GSO super-packet (only with [`QueueConfig::gso`]).
    pub is_gso: bool,
    /// All `NFQA_SKB_INFO` flags (GSO, checksum not ready / not verified).
    pub skb_info: SkbInfo,
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

impl<'a> Packet<'a> {
    fn from_meta(m: &PacketMeta, buf: &'a [u8]) -> Packet<'a> {
        let payload = buf.get(m.payload.clone()).unwrap_or_default();
        Packet {
            id: m.id,
            queue: m.queue,
            family: m.family,
            hook: m.hook,
            hw_protocol: m.hw_protocol,
            payload,
            // A payload is at most 64 KiB: the cast cannot truncate.
            original_len: m.original_len.unwrap_or(payload.len() as u32),
            mark: m.mark,
            indev: m.indev,
            outdev: m.outdev,
            phys_indev: m.phys_indev,
            phys_outdev: m.phys_outdev,
            hw_addr: m.hw_addr.map(|(bytes, len)| HwAddr { bytes, len }),
            timestamp_micros: m.timestamp_micros,
            is_gso: SkbInfo(m.skb_info).is_gso(),
            skb_info: SkbInfo(m.skb_info),
        }
    }

    /// Decode one complete `NFQNL_MSG_PACKET` netlink message (starting with
    /// its `nlmsghdr`), e.g. one captured from the socket. For replay, tests
    /// and fuzzing; [`Queue`] does this itself.
    pub fn decode(message: &'a [u8]) -> Result<Packet<'a>, DecodeError> {
        let m = NlMsgs::new(message)
            .next()
            .ok_or(DecodeError::Truncated)??;
        if m.ty != NFQNL_MSG_PACKET {
            return Err(DecodeError::NotPacket(m.ty));
        }
        let meta = msg::decode_packet(m.payload, m.payload_offset)?;
        Ok(Packet::from_meta(&meta, message))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    id: u32,
    verdict: Verdict,
    mark: Option<u32>,
}

/// Everything but the receive buffer, so that packets can borrow the buffer
/// while verdicts are recorded.
#[derive(Debug, Default)]
struct State {
    /// The current batch, payload ranges index `Queue::rx`.
    batch: Vec<PacketMeta>,
    /// Ids delivered to us and not yet given a verdict, oldest first. The
    /// kernel hands out ids in increasing order (mod 2^32).
    outstanding: VecDeque<u32>,
    /// Verdicts buffered until `flush`.
    pending: Vec<Pending>,
    counters: QueueCounters,
}

impl State {
    /// Take in one datagram. Returns whether any packet of the current
    /// batch points into it (so that its bytes must be kept).
    fn ingest(&mut self, buf: &[u8], base: usize, truncated: bool) -> bool {
        let mut kept = false;
        for m in NlMsgs::new(buf) {
            let m = match m {
                Ok(m) => m,
                Err(_) => {
                    // A message cut short (truncated receive) or garbage. If it
                    // was a packet, its id is near the start: accept it rather
                    // than leave it stuck in the kernel.
                    self.counters.malformed += 1;
                    if truncated {
                        if let Some(id) = buf
                            .get(portcullis_netlink::NLMSG_HDRLEN..)
                            .and_then(msg::salvage_packet_id)
                        {
                            self.accept_unseen(id);
                        }
                    }
                    break;
                }
            };
            match m.ty {
                NFQNL_MSG_PACKET => match msg::decode_packet(m.payload, base + m.payload_offset) {
                    Ok(meta) => {
                        self.outstanding.push_back(meta.id);
                        self.batch.push(meta);
                        self.counters.packets += 1;
                        kept = true;
                    }
                    Err(_) => {
                        self.counters.malformed += 1;
                        if let Some(id) = msg::salvage_packet_id(m.payload) {
                            self.accept_unseen(id);
                        }
                    }
                },
                NLMSG_ERROR => {
                    if let Ok(code) = msg::error_code(m.payload) {
                        if code != 0 {
                            self.counters.netlink_errors += 1;
                            self.counters.last_netlink_error = Some(code.saturating_neg());
                        }
                    }
                }
                // NLMSG_NOOP, NLMSG_DONE, anything else: nothing to do.
                _ => {}
            }
        }
        kept
    }

    /// A packet the caller never saw: accept it at the next flush.
    fn accept_unseen(&mut self, id: u32) {
        self.outstanding.push_back(id);
        self.pending.push(Pending {
            id,
            verdict: Verdict::Accept,
            mark: None,
        });
    }
}

/// An NFQUEUE listener: one bound queue on one netlink socket.
///
/// Dropping it closes the socket; the kernel then unbinds the queue and
/// **drops** every packet still waiting for a verdict. [`flush`](Self::flush)
/// first (and see [`verdict_outstanding`](Self::verdict_outstanding)). With the
/// queue unbound, the NFQUEUE rule drops packets unless it has
/// `--queue-bypass`.
#[derive(Debug)]
pub struct Queue {
    fd: OwnedFd,
    cfg: QueueConfig,
    portid: u32,
    seq: u32,
    /// Receive buffer: the datagrams of the current batch, back to back.
    rx: Vec<u8>,
    /// Room one datagram needs: a full copy plus the attributes. `rx` has
    /// one such slot per packet of a batch (4.2 MiB of address space at the
    /// defaults; small packets touch only the first page of their slot).
    max_msg: usize,
    /// (length, truncated) of each datagram of the last `recvmmsg`.
    lens: Vec<(usize, bool)>,
    tx: Vec<u8>,
    rcvbuf: usize,
    st: State,
}

/// Room for everything but the payload in a packet message (headers,
/// interface indexes, mark, timestamp, hw address, skb info, cap len).
const MSG_OVERHEAD: usize = 1024;
/// Largest batch: `recvmmsg` takes at most `UIO_MAXIOV` (1024) messages,
/// and each needs a receive slot of `max_msg` bytes.
const MAX_BATCH: usize = 1024;
/// Spin turns between two readings of the clock (a turn is one syscall,
/// well under a microsecond; the clock read costs about as much).
const SPIN_CLOCK_EVERY: u32 = 8;
/// Send verdicts in chunks below the default socket send buffer.
const TX_CHUNK: usize = 32 * 1024;
/// How long to wait for the kernel's setup acknowledgement.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

impl Queue {
    /// Bind queue `cfg.num` in the calling thread's network namespace: open a
    /// netlink socket, enlarge its receive buffer, and send one config
    /// message (bind, copy whole packets up to `copy_range`, `max_len`,
    /// fail-open and GSO flags), then wait for the kernel's acknowledgement.
    ///
    /// The obsolete per-family `PF_UNBIND`/`PF_BIND` commands are not sent:
    /// kernels since 3.8 ignore them.
    pub fn open(cfg: &QueueConfig) -> Result<Self, NfqError> {
        if cfg.batch == 0 || cfg.batch > MAX_BATCH {
            return Err(NfqError::InvalidConfig("batch must be between 1 and 1024"));
        }
        if cfg.max_len == 0 {
            return Err(NfqError::InvalidConfig("max_len must be at least 1"));
        }
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(NfqError::NetlinkUnavailable)?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(NfqError::io("bind"))?;
        let portid = socket::getsockname::<NetlinkAddr>(fd.as_raw_fd())
            .map_err(NfqError::io("getsockname"))?
            .pid();

        if socket::setsockopt(&fd, sockopt::RcvBufForce, &cfg.rcvbuf).is_err() {
            // Without CAP_NET_ADMIN: as much as net.core.rmem_max allows.
            socket::setsockopt(&fd, sockopt::RcvBuf, &cfg.rcvbuf)
                .map_err(NfqError::io("setsockopt(SO_RCVBUF)"))?;
        }
        if cfg.timestamps {
            // Any socket asking for receive timestamps turns on kernel
            // timestamping of incoming packets; the netlink socket itself
            // gets no control messages we read.
            socket::setsockopt(&fd, sockopt::ReceiveTimestamp, &true)
                .map_err(NfqError::io("setsockopt(SO_TIMESTAMP)"))?;
        }
        let rcvbuf = socket::getsockopt(&fd, sockopt::RcvBuf)
            .map_err(NfqError::io("getsockopt(SO_RCVBUF)"))?;

        let max_msg = msg::align4(cfg.effective_copy_range() as usize) + MSG_OVERHEAD;
        let mut q = Queue {
            fd,
            cfg: cfg.clone(),
            portid,
            seq: 0,
            // calloc'd: pages are only touched as datagrams arrive.
            rx: vec![0; max_msg.saturating_mul(cfg.batch)],
            max_msg,
            lens: Vec::with_capacity(cfg.batch),
            tx: Vec::with_capacity(TX_CHUNK + MAX_VERDICT_MSG_LEN),
            rcvbuf,
            st: State::default(),
        };
        q.configure()?;
        // Packets that arrived before the acknowledgement were accepted unseen.
        q.flush()?;
        Ok(q)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn configure(&mut self) -> Result<(), NfqError> {
        let seq = self.next_seq();
        let req = ConfigRequest {
            queue: self.cfg.num,
            copy_range: self.cfg.effective_copy_range(),
            max_len: self.cfg.max_len,
            flags: self.cfg.flags(),
        };
        self.tx.clear();
        msg::encode_config(&mut self.tx, seq, &req);
        self.send_tx()?;

        let deadline = Instant::now() + SETUP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait_readable(Some(left))? {
                return Err(NfqError::SetupTimeout);
            }
            let n = match socket::recv(self.fd.as_raw_fd(), &mut self.rx, MsgFlags::MSG_DONTWAIT) {
                Ok(n) => n.min(self.rx.len()),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(Errno::ENOBUFS) => {
                    self.st.counters.enobufs += 1;
                    continue;
                }
                Err(e) => {
                    return Err(NfqError::Io {
                        op: "recv",
                        errno: e,
                    })
                }
            };
            let mut answer = None;
            for m in NlMsgs::new(&self.rx[..n]) {
                let m = m.map_err(DecodeError::from)?;
                match m.ty {
                    NLMSG_ERROR if msg::error_request_seq(m.payload) == Some(seq) => {
                        answer = Some(msg::error_code(m.payload)?);
                    }
                    NFQNL_MSG_PACKET => {
                        // Bound already, ack not read yet: let it pass.
                        if let Some(id) = msg::salvage_packet_id(m.payload) {
                            self.st.accept_unseen(id);
                        }
                    }
                    _ => {}
                }
            }
            match answer {
                None => continue,
                Some(0) => return Ok(()),
                Some(code) => return Err(self.setup_error(Errno::from_raw(code.saturating_neg()))),
            }
        }
    }

    fn setup_error(&self, errno: Errno) -> NfqError {
        let queue = self.cfg.num;
        match errno {
            // The kernel answers EPERM both without CAP_NET_ADMIN and when
            // another socket owns the queue; the proc file tells them apart.
            Errno::EPERM | Errno::EBUSY => {
                let owner = queue_stats()
                    .ok()
                    .and_then(|s| s.into_iter().find(|s| s.queue_number == queue))
                    .map(|s| s.peer_portid);
                match (errno, owner) {
                    (_, Some(portid)) if portid != self.portid => NfqError::QueueInUse {
                        queue,
                        portid: Some(portid),
                    },
                    (Errno::EBUSY, _) => NfqError::QueueInUse {
                        queue,
                        portid: None,
                    },
                    _ => NfqError::PermissionDenied { queue },
                }
            }
            // nfnetlink answers EINVAL for a subsystem it does not have.
            Errno::EINVAL => NfqError::ModuleMissing,
            Errno::EOPNOTSUPP => {
                NfqError::FlagsUnsupported(match (self.cfg.gso, self.cfg.fail_open) {
                    (true, true) => "gso, fail_open",
                    (true, false) => "gso",
                    (false, true) => "fail_open",
                    (false, false) => "none",
                })
            }
            errno => NfqError::SetupRejected { queue, errno },
        }
    }

    /// Wait until the socket is readable. `None` waits forever. Returns
    /// false on timeout or when a signal interrupted the wait.
    fn wait_readable(&self, timeout: Option<Duration>) -> Result<bool, NfqError> {
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
            Err(e) => Err(NfqError::Io {
                op: "poll",
                errno: e,
            }),
        }
    }

    /// Receive what the socket holds now, never sleeping: up to
    /// `cfg.batch` packets; when there is nothing and `spin` is true, keep
    /// trying for up to `cfg.spin` first (worth it only while packets
    /// keep coming: a caller that found the queue idle last time passes
    /// false, and an idle queue then costs one `recvmmsg`, not a spin).
    ///
    /// Returns the number of packets, as [`recv_batch`](Self::recv_batch).
    pub fn try_recv_batch(&mut self, spin: bool) -> Result<usize, NfqError> {
        self.st.batch.clear();
        self.read_available(MsgFlags::MSG_DONTWAIT)?;
        if self.st.batch.is_empty() && spin && !self.cfg.spin.is_zero() {
            self.spin()?;
        }
        Ok(self.count_batch())
    }

    /// Counts the batch just read; its size.
    fn count_batch(&mut self) -> usize {
        let n = self.st.batch.len();
        if n > 0 {
            self.st.counters.batches += 1;
            self.st.counters.max_batch = self.st.counters.max_batch.max(n);
        }
        n
    }

    /// Receive the next batch: wait up to `timeout` (`None`: forever) for a
    /// packet (`poll`), then take what the socket holds, up to `cfg.batch`
    /// packets, with `recvmmsg` (one call unless the socket refills while
    /// reading or reports an overrun). With `None`, `recvmmsg` itself waits
    /// for the first datagram (`MSG_WAITFORONE`).
    ///
    /// Returns the number of packets, 0 on timeout or when a signal
    /// interrupted the wait. The previous batch is gone afterwards; packets
    /// of it that got no verdict stay queued in the kernel and can still be
    /// given one by id. `ENOBUFS` (socket buffer overrun) is counted in
    /// [`counters`](Self::counters), not returned.
    pub fn recv_batch(&mut self, timeout: Option<Duration>) -> Result<usize, NfqError> {
        self.st.batch.clear();
        if timeout.is_some() {
            // Under load the socket is rarely empty: read first and poll
            // only when there was nothing (one syscall less per batch).
            self.read_available(MsgFlags::MSG_DONTWAIT)?;
            if self.st.batch.is_empty() && !self.cfg.spin.is_zero() {
                self.spin()?;
            }
            if self.st.batch.is_empty() {
                if !self.wait_readable(timeout)? {
                    return Ok(0);
                }
                self.read_available(MsgFlags::MSG_DONTWAIT)?;
            }
        } else {
            // Without a timeout, block for the first datagram only.
            self.read_available(MsgFlags::MSG_WAITFORONE)?;
        }
        Ok(self.count_batch())
    }

    /// Spins up to `cfg.spin` for a datagram, then reads what is there.
    /// Each turn is one cheap non-blocking peek (no buffers to set up); the
    /// clock is read every [`SPIN_CLOCK_EVERY`] turns. On a machine where
    /// CPU is the bottleneck, what a turn costs is taken from the traffic.
    fn spin(&mut self) -> Result<(), NfqError> {
        let until = std::time::Instant::now() + self.cfg.spin;
        let mut byte = [0u8; 1];
        let mut turns = 0u32;
        loop {
            match socket::recv(
                self.fd.as_raw_fd(),
                &mut byte,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(_) => return self.read_available(MsgFlags::MSG_DONTWAIT),
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(Errno::ENOBUFS) => {
                    // The overrun is reported once, here: count it and read
                    // what did arrive.
                    self.st.counters.enobufs += 1;
                    return self.read_available(MsgFlags::MSG_DONTWAIT);
                }
                Err(e) => {
                    return Err(NfqError::Io {
                        op: "recv(MSG_PEEK)",
                        errno: e,
                    })
                }
            }
            turns += 1;
            if turns % SPIN_CLOCK_EVERY == 0 && std::time::Instant::now() >= until {
                return Ok(());
            }
            std::hint::spin_loop();
        }
    }

    /// Reads up to `cfg.batch` datagrams into the current batch; the first
    /// `recvmmsg` uses `first_flags`, later ones never block.
    fn read_available(&mut self, first_flags: MsgFlags) -> Result<(), NfqError> {
        let slot = self.max_msg;
        let slots = self.rx.len() / slot;
        let mut used_slots = 0;
        let mut flags = first_flags;
        while self.st.batch.len() < self.cfg.batch && used_slots < slots {
            let want = (self.cfg.batch - self.st.batch.len()).min(slots - used_slots);
            self.lens.clear();
            let received = {
                // One datagram per slot; a slot holds the largest message.
                let mut headers = MultiHeaders::<NetlinkAddr>::preallocate(want, None);
                let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self.rx[used_slots * slot..]
                    .chunks_mut(slot)
                    .take(want)
                    .map(|c| [IoSliceMut::new(c)])
                    .collect();
                socket::recvmmsg(
                    self.fd.as_raw_fd(),
                    &mut headers,
                    iovs.iter_mut(),
                    flags,
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
                    // Overrun: the kernel could not deliver some packets
                    // (accepted by fail-open, or dropped). Keep reading.
                    self.st.counters.enobufs += 1;
                    flags = MsgFlags::MSG_DONTWAIT;
                    continue;
                }
                Err(e) => {
                    return Err(NfqError::Io {
                        op: "recvmmsg",
                        errno: e,
                    })
                }
            }
            for (k, &(len, truncated)) in self.lens.iter().enumerate() {
                let at = (used_slots + k) * slot;
                self.st.ingest(&self.rx[at..at + len], at, truncated);
            }
            used_slots += self.lens.len();
            if self.lens.len() < want {
                break; // the socket is empty
            }
            flags = MsgFlags::MSG_DONTWAIT;
        }
        Ok(())
    }

    /// The packets of the current batch, in the order the kernel sent them.
    pub fn packets(&self) -> impl ExactSizeIterator<Item = Packet<'_>> + '_ {
        self.st.batch.iter().map(|m| Packet::from_meta(m, &self.rx))
    }

    /// Buffer a verdict for packet `id`, optionally setting its mark. Nothing
    /// is sent before [`flush`](Self::flush).
    pub fn verdict(&mut self, id: u32, verdict: Verdict, mark: Option<u32>) {
        self.st.pending.push(Pending { id, verdict, mark });
    }

    /// Decide on every packet of the current batch with `f` and buffer the
    /// verdicts; the usual loop body between `recv_batch` and `flush`.
    pub fn decide_each<F>(&mut self, mut f: F)
    where
        F: FnMut(&Packet<'_>) -> (Verdict, Option<u32>),
    {
        let State { batch, pending, .. } = &mut self.st;
        for m in batch.iter() {
            let (verdict, mark) = f(&Packet::from_meta(m, &self.rx));
            pending.push(Pending {
                id: m.id,
                verdict,
                mark,
            });
        }
    }

    /// Buffer `verdict` for every packet delivered and not yet given a
    /// verdict (e.g. `Accept` before shutting down).
    pub fn verdict_outstanding(&mut self, verdict: Verdict) {
        let State {
            outstanding,
            pending,
            ..
        } = &mut self.st;
        let given: std::collections::HashSet<u32> = pending.iter().map(|p| p.id).collect();
        pending.extend(
            outstanding
                .iter()
                .filter(|id| !given.contains(id))
                .map(|&id| Pending {
                    id,
                    verdict,
                    mark: None,
                }),
        );
    }

    /// Packets delivered to us that have no verdict sent yet.
    pub fn outstanding(&self) -> usize {
        self.st.outstanding.len()
    }

    /// Send every buffered verdict, in as few `send` calls as possible
    /// (several netlink messages per call, up to 32 KiB).
    ///
    /// A run of packets that were delivered consecutively, are all the
    /// packets still waiting up to that point, and share verdict and mark
    /// becomes one `NFQNL_MSG_VERDICT_BATCH` (which covers every queued id up
    /// to its own); everything else one `NFQNL_MSG_VERDICT` each. A verdict
    /// for an id that was not delivered (or was already decided) is sent as
    /// is; the kernel answers `ENOENT`, which is counted in
    /// [`QueueCounters::netlink_errors`].
    ///
    /// On a send error, the verdicts not yet sent are lost; those packets
    /// stay queued until the queue is closed.
    pub fn flush(&mut self) -> Result<(), NfqError> {
        if self.st.pending.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.st.pending);
        let mut outstanding = std::mem::take(&mut self.st.outstanding);
        let result = self.flush_inner(&mut pending, &mut outstanding);
        pending.clear();
        // Keep the allocation for the next round.
        self.st.pending = pending;
        self.st.outstanding = outstanding;
        result
    }

    fn flush_inner(
        &mut self,
        pending: &mut [Pending],
        outstanding: &mut VecDeque<u32>,
    ) -> Result<(), NfqError> {
        let mut keep = VecDeque::with_capacity(outstanding.len());
        let mut out = Vec::with_capacity(pending.len());
        plan_verdicts(outstanding, pending, &mut keep, &mut out);
        *outstanding = keep;

        self.tx.clear();
        for m in out {
            let seq = self.next_seq();
            msg::encode_verdict(
                &mut self.tx,
                seq,
                self.cfg.num,
                m.batch,
                m.id,
                m.verdict,
                m.mark,
            );
            if m.batch {
                self.st.counters.batch_verdict_msgs += 1;
            } else {
                self.st.counters.verdict_msgs += 1;
            }
            if self.tx.len() >= TX_CHUNK {
                self.send_tx()?;
                self.tx.clear();
            }
        }
        if !self.tx.is_empty() {
            self.send_tx()?;
        }
        Ok(())
    }

    fn send_tx(&mut self) -> Result<(), NfqError> {
        let mut tries = 0;
        loop {
            match socket::send(self.fd.as_raw_fd(), &self.tx, MsgFlags::empty()) {
                Ok(_) => {
                    self.st.counters.sends += 1;
                    return Ok(());
                }
                Err(Errno::EINTR) => {}
                Err(Errno::ENOBUFS | Errno::ENOMEM | Errno::EAGAIN) if tries < 3 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => {
                    return Err(NfqError::Io {
                        op: "send",
                        errno: e,
                    })
                }
            }
        }
    }

    /// The socket, to `poll` together with a shutdown eventfd or pipe.
    pub fn raw_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// What this queue has counted so far.
    pub fn counters(&self) -> &QueueCounters {
        &self.st.counters
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &QueueConfig {
        &self.cfg
    }

    /// The socket's netlink port id (shown as `peer_portid` in
    /// [`queue_stats`](crate::queue_stats)).
    pub fn portid(&self) -> u32 {
        self.portid
    }

    /// The receive buffer the kernel granted, in bytes (it reports twice the
    /// requested size: half is bookkeeping).
    pub fn rcvbuf(&self) -> usize {
        self.rcvbuf
    }
}

impl AsFd for Queue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One verdict message to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Msg {
    /// `NFQNL_MSG_VERDICT_BATCH`: every queued id up to `id`.
    batch: bool,
    id: u32,
    verdict: Verdict,
    mark: Option<u32>,
}

/// Consecutive outstanding ids `outstanding[first..=last]` with one verdict
/// and mark. `clean`: no id before it stays outstanding, so a batch verdict
/// up to its last id covers exactly the run.
#[derive(Debug, Clone, Copy)]
struct Run {
    first: usize,
    last: usize,
    verdict: Verdict,
    mark: Option<u32>,
    clean: bool,
}

/// Turn buffered verdicts into messages.
///
/// `outstanding` holds the delivered ids without verdict in delivery order
/// (increasing mod 2^32, as the kernel hands them out); `pending` the
/// buffered verdicts (sorted here). Writes the ids that stay outstanding to
/// `keep` and the messages, in sending order, to `out`.
///
/// **Invariant:** a batch message is only planned when every id that the
/// kernel could still hold up to its `id` gets this very verdict: the kernel
/// applies `NFQNL_MSG_VERDICT_BATCH` to *all* queued ids up to it, and it
/// has queued only ids it delivered to us (it enqueues a packet after the
/// netlink delivery succeeded, in id order).
fn plan_verdicts(
    outstanding: &VecDeque<u32>,
    pending: &mut [Pending],
    keep: &mut VecDeque<u32>,
    out: &mut Vec<Msg>,
) {
    keep.clear();
    out.clear();
    let Some(first) = pending.first() else {
        keep.extend(outstanding.iter().copied());
        return;
    };
    // Serial-number order relative to the oldest outstanding id, as the
    // kernel compares ids. Stable: a duplicate keeps its place after the first.
    let base = outstanding.front().copied().unwrap_or(first.id);
    pending.sort_by_key(|p| p.id.wrapping_sub(base));

    let single = |id: u32, verdict: Verdict, mark: Option<u32>| Msg {
        batch: false,
        id,
        verdict,
        mark,
    };
    let close = |run: &mut Option<Run>, out: &mut Vec<Msg>| {
        let Some(r) = run.take() else { return };
        if r.clean && r.last > r.first {
            out.push(Msg {
                batch: true,
                id: outstanding[r.last],
                verdict: r.verdict,
                mark: r.mark,
            });
        } else {
            out.extend((r.first..=r.last).map(|k| single(outstanding[k], r.verdict, r.mark)));
        }
    };

    let mut run: Option<Run> = None;
    let (mut i, mut j) = (0, 0);
    loop {
        match (outstanding.get(i).copied(), pending.get(j).copied()) {
            (Some(o), Some(p)) if p.id.wrapping_sub(base) == o.wrapping_sub(base) => {
                match &mut run {
                    Some(r) if r.verdict == p.verdict && r.mark == p.mark => r.last = i,
                    _ => {
                        close(&mut run, out);
                        run = Some(Run {
                            first: i,
                            last: i,
                            verdict: p.verdict,
                            mark: p.mark,
                            clean: keep.is_empty(),
                        });
                    }
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(p)) if p.id.wrapping_sub(base) > o.wrapping_sub(base) => {
                // `o` is still waiting for its verdict.
                close(&mut run, out);
                keep.push_back(o);
                i += 1;
            }
            (Some(o), None) => {
                close(&mut run, out);
                keep.push_back(o);
                i += 1;
            }
            (_, Some(p)) => {
                // Not delivered to us, or decided twice: send it alone.
                close(&mut run, out);
                out.push(single(p.id, p.verdict, p.mark));
                j += 1;
            }
            (None, None) => {
                close(&mut run, out);
                break;
            }
        }
    }
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
