//! nfnetlink_queue message encoding and decoding. No I/O, no clock.
//!
//! Layout of every message (see `linux/netlink.h`, `linux/netfilter/nfnetlink.h`
//! and `linux/netfilter/nfnetlink_queue.h`):
//!
//! ```text
//! nlmsghdr  { len: u32, type: u16, flags: u16, seq: u32, pid: u32 }   host byte order
//! nfgenmsg  { family: u8, version: u8, res_id: be16 }                res_id = queue number
//! attributes: { nla_len: u16, nla_type: u16 } + value, padded to 4    header in host order,
//!                                                                    values big-endian
//! ```
//!
//! **Invariant:** the decoders never panic and never read outside the buffer,
//! whatever the bytes; every length is checked before it is used.

use std::ops::Range;

// ---- netlink (framing shared with NFLOG: portcullis-netlink) -----------

pub use portcullis_netlink::DecodeError;
pub(crate) use portcullis_netlink::{
    align4, error_code, error_request_seq, u16_be, u16_ne, u32_be, u64_be, Attrs, MsgWriter,
    NlMsgs, AF_UNSPEC, NFGENMSG_LEN, NLA_HDRLEN, NLA_TYPE_MASK, NLMSG_ERROR, NLMSG_HDRLEN,
    NLM_F_ACK, NLM_F_REQUEST,
};

// ---- nfnetlink -----------------------------------------------------------

const NFNL_SUBSYS_QUEUE: u16 = 3;

pub(crate) const NFQNL_MSG_PACKET: u16 = NFNL_SUBSYS_QUEUE << 8;
pub(crate) const NFQNL_MSG_VERDICT: u16 = (NFNL_SUBSYS_QUEUE << 8) | 1;
pub(crate) const NFQNL_MSG_CONFIG: u16 = (NFNL_SUBSYS_QUEUE << 8) | 2;
pub(crate) const NFQNL_MSG_VERDICT_BATCH: u16 = (NFNL_SUBSYS_QUEUE << 8) | 3;

// Packet / verdict attributes (enum nfqnl_attr_type).
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_MARK: u16 = 3;
const NFQA_TIMESTAMP: u16 = 4;
const NFQA_IFINDEX_INDEV: u16 = 5;
const NFQA_IFINDEX_OUTDEV: u16 = 6;
const NFQA_IFINDEX_PHYSINDEV: u16 = 7;
const NFQA_IFINDEX_PHYSOUTDEV: u16 = 8;
const NFQA_HWADDR: u16 = 9;
const NFQA_PAYLOAD: u16 = 10;
const NFQA_CAP_LEN: u16 = 13;
const NFQA_SKB_INFO: u16 = 14;

// Config attributes (enum nfqnl_attr_config).
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;

const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_PACKET: u8 = 2;

/// `NFQA_CFG_F_FAIL_OPEN`: accept packets the queue cannot take.
pub(crate) const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
/// `NFQA_CFG_F_GSO`: hand over GSO super-packets unsegmented.
pub(crate) const NFQA_CFG_F_GSO: u32 = 4;
/// The flags this crate manages (the mask sent with every flag change).
pub(crate) const MANAGED_FLAGS: u32 = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO;

// NFQA_SKB_INFO bits.
const NFQA_SKB_CSUMNOTREADY: u32 = 1;
const NFQA_SKB_GSO: u32 = 2;
const NFQA_SKB_CSUM_NOTVERIFIED: u32 = 4;

// Netfilter verdicts.
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

/// The kernel's largest copy range (`0xffff - NLA_HDRLEN`): the payload must
/// fit a 16-bit attribute length.
pub const MAX_COPY_RANGE: u32 = 0xffff - NLA_HDRLEN as u32;

/// What to do with a queued packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let the packet continue (with the next hook / table).
    Accept,
    /// Drop the packet.
    Drop,
}

impl Verdict {
    const fn code(self) -> u32 {
        match self {
            Verdict::Accept => NF_ACCEPT,
            Verdict::Drop => NF_DROP,
        }
    }
}

/// The netfilter hook a packet was queued from (`nfqnl_msg_packet_hdr.hook`).
///
/// An open enum: a hook number this crate does not know is a value, not an
/// error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `NF_INET_PRE_ROUTING` (0).
    Prerouting,
    /// `NF_INET_LOCAL_IN` (1).
    Input,
    /// `NF_INET_FORWARD` (2).
    Forward,
    /// `NF_INET_LOCAL_OUT` (3).
    Output,
    /// `NF_INET_POST_ROUTING` (4).
    Postrouting,
    /// Any other hook number.
    Unknown(u8),
}

impl From<u8> for Hook {
    fn from(n: u8) -> Self {
        match n {
            0 => Hook::Prerouting,
            1 => Hook::Input,
            2 => Hook::Forward,
            3 => Hook::Output,
            4 => Hook::Postrouting,
            n => Hook::Unknown(n),
        }
    }
}

// ---- decoding ------------------------------------------------------------

/// A decoded `NFQNL_MSG_PACKET`, with the payload as a range so that the
/// queue can keep it next to its receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PacketMeta {
    pub id: u32,
    pub queue: u16,
    pub family: u8,
    pub hook: Hook,
    pub hw_protocol: u16,
    pub payload: Range<usize>,
    pub original_len: Option<u32>,
    pub mark: u32,
    pub indev: Option<u32>,
    pub outdev: Option<u32>,
    pub phys_indev: Option<u32>,
    pub phys_outdev: Option<u32>,
    pub hw_addr: Option<([u8; 8], u8)>,
    pub timestamp_micros: Option<u64>,
    pub skb_info: u32,
}

/// Decode the payload of an `NFQNL_MSG_PACKET` (everything after the
/// `nlmsghdr`). `base` is added to the payload range, so that it indexes the
/// caller's whole buffer.
pub(crate) fn decode_packet(msg: &[u8], base: usize) -> Result<PacketMeta, DecodeError> {
    let nfgen = msg.get(..NFGENMSG_LEN).ok_or(DecodeError::Truncated)?;
    let family = nfgen[0];
    let queue = u16_be(nfgen, 2).ok_or(DecodeError::Truncated)?;
    let attrs_at = NFGENMSG_LEN;
    let mut meta = PacketMeta {
        id: 0,
        queue,
        family,
        hook: Hook::Unknown(u8::MAX),
        hw_protocol: 0,
        payload: base..base,
        original_len: None,
        mark: 0,
        indev: None,
        outdev: None,
        phys_indev: None,
        phys_outdev: None,
        hw_addr: None,
        timestamp_micros: None,
        skb_info: 0,
    };
    let mut have_hdr = false;
    for attr in Attrs::new(&msg[attrs_at..]) {
        let a = attr?;
        match a.ty {
            NFQA_PACKET_HDR => {
                // struct nfqnl_msg_packet_hdr is packed: be32 id, be16 proto, u8 hook.
                if a.value.len() < 7 {
                    return Err(DecodeError::BadAttribute(a.ty));
                }
                meta.id = u32_be(a.value, 0).ok_or(DecodeError::BadAttribute(a.ty))?;
                meta.hw_protocol = u16_be(a.value, 4).ok_or(DecodeError::BadAttribute(a.ty))?;
                meta.hook = Hook::from(a.value[6]);
                have_hdr = true;
            }
            NFQA_MARK => meta.mark = a.u32()?,
            NFQA_IFINDEX_INDEV => meta.indev = Some(a.u32()?),
            NFQA_IFINDEX_OUTDEV => meta.outdev = Some(a.u32()?),
            NFQA_IFINDEX_PHYSINDEV => meta.phys_indev = Some(a.u32()?),
            NFQA_IFINDEX_PHYSOUTDEV => meta.phys_outdev = Some(a.u32()?),
            NFQA_CAP_LEN => meta.original_len = Some(a.u32()?),
            NFQA_SKB_INFO => meta.skb_info = a.u32()?,
            NFQA_TIMESTAMP => {
                // struct nfqnl_msg_packet_timestamp: be64 sec, be64 usec.
                let (Some(sec), Some(usec)) = (u64_be(a.value, 0), u64_be(a.value, 8)) else {
                    return Err(DecodeError::BadAttribute(a.ty));
                };
                meta.timestamp_micros =
                    sec.checked_mul(1_000_000).and_then(|s| s.checked_add(usec));
            }
            NFQA_HWADDR => {
                // struct nfqnl_msg_packet_hw: be16 len, u16 pad, u8 addr[8].
                let Some(len) = u16_be(a.value, 0) else {
                    return Err(DecodeError::BadAttribute(a.ty));
                };
                let Some(bytes) = a.value.get(4..12) else {
                    return Err(DecodeError::BadAttribute(a.ty));
                };
                let mut addr = [0u8; 8];
                addr.copy_from_slice(bytes);
                // Bounded to 8 by min(); the cast cannot truncate.
                meta.hw_addr = Some((addr, len.min(8) as u8));
            }
            NFQA_PAYLOAD => {
                let start = base + attrs_at + a.value_offset;
                meta.payload = start..start + a.value.len();
            }
            // Conntrack, uid/gid, secctx, VLAN, L2 header, priority, ...: not requested.
            _ => {}
        }
    }
    if !have_hdr {
        return Err(DecodeError::MissingPacketHeader);
    }
    Ok(meta)
}

/// Find the packet id in a message that failed to decode (or was cut short),
/// so that it can still be given a verdict. Tolerates a truncated tail.
pub(crate) fn salvage_packet_id(msg: &[u8]) -> Option<u32> {
    let attrs = msg.get(NFGENMSG_LEN..)?;
    for a in Attrs::new(attrs) {
        match a {
            Ok(a) if a.ty == NFQA_PACKET_HDR => return u32_be(a.value, 0),
            Ok(_) => {}
            Err(_) => {
                // A truncated attribute: the header may still be readable.
                break;
            }
        }
    }
    // The kernel always puts NFQA_PACKET_HDR first: read it even if its
    // length field ran past a truncated buffer.
    let ty = u16_ne(attrs, 2)?;
    (ty & NLA_TYPE_MASK == NFQA_PACKET_HDR)
        .then(|| u32_be(attrs, NLA_HDRLEN))
        .flatten()
}

/// The NFQA_SKB_INFO flags, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SkbInfo(pub u32);

impl SkbInfo {
    /// A GSO super-packet: one payload standing for several wire packets.
    pub const fn is_gso(self) -> bool {
        self.0 & NFQA_SKB_GSO != 0
    }
    /// The transport checksum is not filled in yet (`CHECKSUM_PARTIAL`, locally
    /// generated or GSO): do not verify it.
    pub const fn checksum_not_ready(self) -> bool {
        self.0 & NFQA_SKB_CSUMNOTREADY != 0
    }
    /// The kernel has not verified the transport checksum.
    pub const fn checksum_not_verified(self) -> bool {
        self.0 & NFQA_SKB_CSUM_NOTVERIFIED != 0
    }
}

// ---- encoding ------------------------------------------------------------

/// What [`encode_config`] sets up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConfigRequest {
    pub queue: u16,
    pub copy_range: u32,
    pub max_len: u32,
    pub flags: u32,
}

/// One `NFQNL_MSG_CONFIG` that binds the queue and sets copy mode, queue
/// length and flags, with an acknowledgement requested. The kernel checks the
/// flags before it binds, so an unsupported flag leaves nothing bound.
pub(crate) fn encode_config(buf: &mut Vec<u8>, seq: u32, req: &ConfigRequest) {
    let mut w = MsgWriter::begin(
        buf,
        NFQNL_MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        AF_UNSPEC,
        req.queue,
    );
    // struct nfqnl_msg_config_cmd { u8 command; u8 pad; be16 pf; }
    w.attr(NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0]);
    // struct nfqnl_msg_config_params { be32 copy_range; u8 copy_mode; } (packed: 5 bytes)
    let r = req.copy_range.to_be_bytes();
    w.attr(
        NFQA_CFG_PARAMS,
        &[r[0], r[1], r[2], r[3], NFQNL_COPY_PACKET],
    );
    w.attr_u32(NFQA_CFG_QUEUE_MAXLEN, req.max_len);
    w.attr_u32(NFQA_CFG_MASK, MANAGED_FLAGS);
    w.attr_u32(NFQA_CFG_FLAGS, req.flags & MANAGED_FLAGS);
    w.finish();
}

/// One `NFQNL_MSG_VERDICT` (single packet) or `NFQNL_MSG_VERDICT_BATCH`
/// (every queued packet with id up to `id`), without acknowledgement.
pub(crate) fn encode_verdict(
    buf: &mut Vec<u8>,
    seq: u32,
    queue: u16,
    batch: bool,
    id: u32,
    verdict: Verdict,
    mark: Option<u32>,
) {
    let ty = if batch {
        NFQNL_MSG_VERDICT_BATCH
    } else {
        NFQNL_MSG_VERDICT
    };
    let mut w = MsgWriter::begin(buf, ty, NLM_F_REQUEST, seq, AF_UNSPEC, queue);
    // struct nfqnl_msg_verdict_hdr { be32 verdict; be32 id; }
    let v = verdict.code().to_be_bytes();
    let i = id.to_be_bytes();
    w.attr(
        NFQA_VERDICT_HDR,
        &[v[0], v[1], v[2], v[3], i[0], i[1], i[2], i[3]],
    );
    if let Some(mark) = mark {
        w.attr_u32(NFQA_MARK, mark);
    }
    w.finish();
}

/// Size of the largest verdict message [`encode_verdict`] writes.
pub(crate) const MAX_VERDICT_MSG_LEN: usize = NLMSG_HDRLEN + NFGENMSG_LEN + 12 + 8;

#[cfg(test)]
pub(crate) mod tests;
