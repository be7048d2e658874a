//! nfnetlink_log message encoding and decoding. No I/O, no clock.
//!
//! Layout of every message (see `linux/netlink.h`, `linux/netfilter/nfnetlink.h`
//! and `linux/netfilter/nfnetlink_log.h`):
//!
//! ```text
//! nlmsghdr  { len: u32, type: u16, flags: u16, seq: u32, pid: u32 }   host byte order
//! nfgenmsg  { family: u8, version: u8, res_id: be16 }                res_id = group number
//! attributes: { nla_len: u16, nla_type: u16 } + value, padded to 4    header in host order,
//!                                                                    values big-endian
//! ```
//!
//! One datagram from the kernel holds up to the threshold's worth of
//! `NFULNL_MSG_PACKET` messages back to back and, when it holds more than
//! one, a closing `NLMSG_DONE` (`__nfulnl_send` in `nfnetlink_log.c`).
//!
//! **Invariant:** the decoders never panic and never read outside the buffer,
//! whatever the bytes; every length is checked before it is used.

use std::ops::Range;

// ---- netlink (framing shared with NFQUEUE: portcullis-netlink) ---------

pub use portcullis_netlink::DecodeError;
pub(crate) use portcullis_netlink::{
    align4, error_code, error_request_seq, u16_be, u64_be, Attrs, MsgWriter, NlMsgs, AF_UNSPEC,
    NFGENMSG_LEN, NLA_HDRLEN, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_ACK,
    NLM_F_REQUEST,
};

// ---- nfnetlink -----------------------------------------------------------

const NFNL_SUBSYS_ULOG: u16 = 4;

pub(crate) const NFULNL_MSG_PACKET: u16 = NFNL_SUBSYS_ULOG << 8;
pub(crate) const NFULNL_MSG_CONFIG: u16 = (NFNL_SUBSYS_ULOG << 8) | 1;

// Packet attributes (enum nfulnl_attr_type).
const NFULA_PACKET_HDR: u16 = 1;
const NFULA_MARK: u16 = 2;
const NFULA_TIMESTAMP: u16 = 3;
const NFULA_IFINDEX_INDEV: u16 = 4;
const NFULA_IFINDEX_OUTDEV: u16 = 5;
const NFULA_IFINDEX_PHYSINDEV: u16 = 6;
const NFULA_IFINDEX_PHYSOUTDEV: u16 = 7;
const NFULA_HWADDR: u16 = 8;
const NFULA_PAYLOAD: u16 = 9;
const NFULA_PREFIX: u16 = 10;
const NFULA_UID: u16 = 11;
const NFULA_SEQ: u16 = 12;
const NFULA_SEQ_GLOBAL: u16 = 13;
const NFULA_GID: u16 = 14;

// Config attributes (enum nfulnl_attr_config).
const NFULA_CFG_CMD: u16 = 1;
const NFULA_CFG_MODE: u16 = 2;
const NFULA_CFG_NLBUFSIZ: u16 = 3;
const NFULA_CFG_TIMEOUT: u16 = 4;
const NFULA_CFG_QTHRESH: u16 = 5;
const NFULA_CFG_FLAGS: u16 = 6;

const NFULNL_CFG_CMD_BIND: u8 = 1;
const NFULNL_COPY_PACKET: u8 = 2;

/// `NFULNL_CFG_F_SEQ`: a per-group sequence number in every packet.
pub(crate) const NFULNL_CFG_F_SEQ: u16 = 1;
/// `NFULNL_CFG_F_SEQ_GLOBAL`: a per-namespace sequence number in every packet.
pub(crate) const NFULNL_CFG_F_SEQ_GLOBAL: u16 = 2;

/// The kernel's largest copy range (`NFULNL_COPY_RANGE_MAX`, `0xffff -
/// NLA_HDRLEN`): the payload must fit a 16-bit attribute length.
pub const MAX_COPY_RANGE: u32 = 0xffff - NLA_HDRLEN as u32;

/// The netfilter hook a packet was logged from (`nfulnl_msg_packet_hdr.hook`).
///
/// An open enum: a hook number this crate does not know is a value, not an
/// error. (For the `netdev` family, 0 is the ingress hook.)
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

/// A decoded `NFULNL_MSG_PACKET`, with the byte fields as ranges into the
/// message payload given to [`decode_packet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PacketMeta {
    pub group: u16,
    pub family: u8,
    pub hook: Hook,
    pub hw_protocol: u16,
    pub payload: Range<usize>,
    pub prefix: Option<Range<usize>>,
    pub mark: u32,
    pub indev: Option<u32>,
    pub outdev: Option<u32>,
    pub phys_indev: Option<u32>,
    pub phys_outdev: Option<u32>,
    pub hw_addr: Option<([u8; 8], u8)>,
    pub timestamp_micros: Option<u64>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub seq: Option<u32>,
    pub seq_global: Option<u32>,
}

/// Decode the payload of an `NFULNL_MSG_PACKET` (everything after the
/// `nlmsghdr`). Ranges in the result index `msg`.
pub(crate) fn decode_packet(msg: &[u8]) -> Result<PacketMeta, DecodeError> {
    let nfgen = msg.get(..NFGENMSG_LEN).ok_or(DecodeError::Truncated)?;
    let family = nfgen[0];
    let group = u16_be(nfgen, 2).ok_or(DecodeError::Truncated)?;
    let mut meta = PacketMeta {
        group,
        family,
        hook: Hook::Unknown(u8::MAX),
        hw_protocol: 0,
        payload: 0..0,
        prefix: None,
        mark: 0,
        indev: None,
        outdev: None,
        phys_indev: None,
        phys_outdev: None,
        hw_addr: None,
        timestamp_micros: None,
        uid: None,
        gid: None,
        seq: None,
        seq_global: None,
    };
    let mut have_hdr = false;
    for attr in Attrs::new(&msg[NFGENMSG_LEN..]) {
        let a = attr?;
        let at = NFGENMSG_LEN + a.value_offset;
        match a.ty {
            NFULA_PACKET_HDR => {
                // struct nfulnl_msg_packet_hdr: be16 hw_protocol, u8 hook, u8 pad.
                let (Some(proto), Some(&hook)) = (u16_be(a.value, 0), a.value.get(2)) else {
                    return Err(DecodeError::BadAttribute(a.ty));
                };
                meta.hw_protocol = proto;
                meta.hook = Hook::from(hook);
                have_hdr = true;
            }
            NFULA_MARK => meta.mark = a.u32()?,
            NFULA_IFINDEX_INDEV => meta.indev = Some(a.u32()?),
            NFULA_IFINDEX_OUTDEV => meta.outdev = Some(a.u32()?),
            NFULA_IFINDEX_PHYSINDEV => meta.phys_indev = Some(a.u32()?),
            NFULA_IFINDEX_PHYSOUTDEV => meta.phys_outdev = Some(a.u32()?),
            NFULA_UID => meta.uid = Some(a.u32()?),
            NFULA_GID => meta.gid = Some(a.u32()?),
            NFULA_SEQ => meta.seq = Some(a.u32()?),
            NFULA_SEQ_GLOBAL => meta.seq_global = Some(a.u32()?),
            NFULA_TIMESTAMP => {
                // struct nfulnl_msg_packet_timestamp: be64 sec, be64 usec.
                let (Some(sec), Some(usec)) = (u64_be(a.value, 0), u64_be(a.value, 8)) else {
                    return Err(DecodeError::BadAttribute(a.ty));
                };
                meta.timestamp_micros =
                    sec.checked_mul(1_000_000).and_then(|s| s.checked_add(usec));
            }
            NFULA_HWADDR => {
                // struct nfulnl_msg_packet_hw: be16 len, u16 pad, u8 addr[8].
                let (Some(len), Some(bytes)) = (u16_be(a.value, 0), a.value.get(4..12)) else {
                    return Err(DecodeError::BadAttribute(a.ty));
                };
                let mut addr = [0u8; 8];
                addr.copy_from_slice(bytes);
                // Bounded to 8 by min(); the cast cannot truncate.
                meta.hw_addr = Some((addr, len.min(8) as u8));
            }
            NFULA_PREFIX => {
                // A C string: the kernel sends strlen + 1 bytes.
                // A rule without a prefix sends an empty one.
                let text = a.value.split(|&b| b == 0).next().unwrap_or_default();
                meta.prefix = (!text.is_empty()).then(|| at..at + text.len());
            }
            NFULA_PAYLOAD => meta.payload = at..at + a.value.len(),
            // Hardware type/header, conntrack, VLAN, L2 header: not used.
            _ => {}
        }
    }
    if !have_hdr {
        return Err(DecodeError::MissingPacketHeader);
    }
    Ok(meta)
}

/// The `NFULA_SEQ` of a packet message that failed to decode (or was cut
/// short), read from the attributes before the first broken one, so that a
/// malformed packet is not also counted as lost.
pub(crate) fn salvage_seq(msg: &[u8]) -> Option<u32> {
    let attrs = msg.get(NFGENMSG_LEN..)?;
    Attrs::new(attrs)
        .map_while(Result::ok)
        .find(|a| a.ty == NFULA_SEQ)
        .and_then(|a| a.u32().ok())
}

// ---- encoding ------------------------------------------------------------

/// What [`encode_config`] sets up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConfigRequest {
    pub group: u16,
    pub copy_range: u32,
    pub nlbufsiz: u32,
    pub timeout: u32,
    pub qthresh: u32,
    pub flags: u16,
}

/// One `NFULNL_MSG_CONFIG` that binds the group and sets copy mode, buffer
/// size, flush timeout, threshold and flags, with an acknowledgement
/// requested. The kernel (`nfulnl_recv_config`) binds first and then
/// applies the other attributes in that order; a bind that fails leaves
/// nothing changed.
pub(crate) fn encode_config(buf: &mut Vec<u8>, seq: u32, req: &ConfigRequest) {
    let mut w = MsgWriter::begin(
        buf,
        NFULNL_MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        AF_UNSPEC,
        req.group,
    );
    // struct nfulnl_msg_config_cmd { u8 command; } (packed)
    w.attr(NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
    // struct nfulnl_msg_config_mode { be32 copy_range; u8 copy_mode; u8 pad; } (packed)
    let r = req.copy_range.to_be_bytes();
    w.attr(
        NFULA_CFG_MODE,
        &[r[0], r[1], r[2], r[3], NFULNL_COPY_PACKET, 0],
    );
    w.attr_u32(NFULA_CFG_NLBUFSIZ, req.nlbufsiz);
    w.attr_u32(NFULA_CFG_TIMEOUT, req.timeout);
    w.attr_u32(NFULA_CFG_QTHRESH, req.qthresh);
    // NLA_U16, big-endian.
    w.attr(NFULA_CFG_FLAGS, &req.flags.to_be_bytes());
    w.finish();
}

#[cfg(test)]
pub(crate) mod tests;
