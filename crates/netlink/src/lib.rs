//! Netlink and nfnetlink framing, shared by the NFQUEUE (`portcullis-nfqueue`)
//! and NFLOG (`portcullis-nflog`) sources. No I/O, no clock.
//!
//! ```text
//! nlmsghdr  { len: u32, type: u16, flags: u16, seq: u32, pid: u32 }   host byte order
//! nfgenmsg  { family: u8, version: u8, res_id: be16 }
//! attributes: { nla_len: u16, nla_type: u16 } + value, padded to 4    header in host order,
//!                                                                    values big-endian
//! ```
//!
//! **Invariant:** the iterators and readers never panic and never read
//! outside the buffer, whatever the bytes; every length is checked before
//! it is used.

#![forbid(unsafe_code)]

/// `struct nlmsghdr`'s size.
pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;

pub const NLA_HDRLEN: usize = 4;
/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER` stripped from attribute types.
pub const NLA_TYPE_MASK: u16 = 0x3fff;

/// `struct nfgenmsg`.
pub const NFGENMSG_LEN: usize = 4;
pub const NFNETLINK_V0: u8 = 0;
pub const AF_UNSPEC: u8 = 0;

/// Netlink lengths are padded to 4 bytes.
pub const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than a header or a fixed field.
    #[error("netlink message truncated")]
    Truncated,
    /// A length field that does not fit the buffer.
    #[error("netlink length field out of range")]
    BadLength,
    /// Not the subsystem's packet message.
    #[error("not a packet message (type {0:#06x})")]
    NotPacket(u16),
    /// A packet message without its packet header attribute.
    #[error("packet message without its packet header attribute")]
    MissingPacketHeader,
    /// An attribute whose value has the wrong size.
    #[error("attribute {0} has a wrong size")]
    BadAttribute(u16),
}

/// Readers: the value at byte `at` (native or big-endian order), or
/// `None` past the end.
pub fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
pub fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
pub fn u16_be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
pub fn u32_be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
pub fn u64_be(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// One netlink message, borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlMsg<'a> {
    pub ty: u16,
    /// `nlmsg_seq`: which request an answer belongs to.
    pub seq: u32,
    /// Everything after the 16-byte `nlmsghdr`.
    pub payload: &'a [u8],
    /// Offset of `payload` within the buffer given to [`NlMsgs::new`].
    pub payload_offset: usize,
}

/// A message whose framing is broken: why, its type (if readable) and the
/// bytes after its header, up to the end of the datagram (for salvaging).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokenMsg<'a> {
    pub error: DecodeError,
    pub ty: Option<u16>,
    pub rest: &'a [u8],
}

impl From<BrokenMsg<'_>> for DecodeError {
    fn from(b: BrokenMsg<'_>) -> Self {
        b.error
    }
}

/// Iterator over the netlink messages in one datagram. A framing error (a
/// length that does not fit) is yielded once and ends the iteration:
/// nothing after it can be found again.
#[derive(Debug)]
pub struct NlMsgs<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> NlMsgs<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        NlMsgs { buf, pos: 0 }
    }
}

impl<'a> Iterator for NlMsgs<'a> {
    type Item = Result<NlMsg<'a>, BrokenMsg<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let start = self.pos;
        // Any error ends the iteration.
        self.pos = self.buf.len();
        let ty = u16_ne(rest, 4);
        let broken = |error| BrokenMsg {
            error,
            ty,
            rest: rest.get(NLMSG_HDRLEN..).unwrap_or_default(),
        };
        let (Some(len), Some(ty)) = (u32_ne(rest, 0), ty) else {
            return Some(Err(broken(DecodeError::Truncated)));
        };
        if rest.len() < NLMSG_HDRLEN {
            return Some(Err(broken(DecodeError::Truncated)));
        }
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Some(Err(broken(DecodeError::BadLength)));
        }
        self.pos = start + align4(len).min(rest.len());
        Some(Ok(NlMsg {
            ty,
            // Within the header, whose length was checked above.
            seq: u32_ne(rest, 8).unwrap_or_default(),
            payload: &rest[NLMSG_HDRLEN..len],
            payload_offset: start + NLMSG_HDRLEN,
        }))
    }
}

/// The error code of an `NLMSG_ERROR` payload (`struct nlmsgerr`): 0 is an
/// acknowledgement, a negative value is `-errno`.
pub fn error_code(payload: &[u8]) -> Result<i32, DecodeError> {
    u32_ne(payload, 0)
        .map(|v| v as i32)
        .ok_or(DecodeError::Truncated)
}

/// The sequence number of the request an `NLMSG_ERROR` answers (from the
/// echoed `nlmsghdr` in `struct nlmsgerr`).
pub fn error_request_seq(payload: &[u8]) -> Option<u32> {
    u32_ne(payload, 4 + 8)
}

/// One attribute: type (flag bits stripped) and value.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    pub ty: u16,
    pub value: &'a [u8],
    /// Offset of `value` within the buffer given to [`Attrs::new`].
    pub value_offset: usize,
}

impl Attr<'_> {
    /// A big-endian `u32` value; any other size is an error.
    pub fn u32(&self) -> Result<u32, DecodeError> {
        if self.value.len() != 4 {
            return Err(DecodeError::BadAttribute(self.ty));
        }
        u32_be(self.value, 0).ok_or(DecodeError::BadAttribute(self.ty))
    }
}

/// Iterator over a run of attributes. Stops after the first error. The last
/// attribute may lack its padding (the kernel does not pad `NFQA_PAYLOAD`).
#[derive(Debug)]
pub struct Attrs<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Attrs { buf, pos: 0 }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.pos..)?;
        // Trailing bytes shorter than an attribute header are padding.
        if rest.len() < NLA_HDRLEN {
            return None;
        }
        let start = self.pos;
        self.pos = self.buf.len();
        let (Some(len), Some(ty)) = (u16_ne(rest, 0), u16_ne(rest, 2)) else {
            return Some(Err(DecodeError::Truncated));
        };
        let len = usize::from(len);
        if len < NLA_HDRLEN || len > rest.len() {
            return Some(Err(DecodeError::BadLength));
        }
        self.pos = start + align4(len).min(rest.len());
        Some(Ok(Attr {
            ty: ty & NLA_TYPE_MASK,
            value: &rest[NLA_HDRLEN..len],
            value_offset: start + NLA_HDRLEN,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn msg(ty: u16, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut v = Vec::new();
        v.extend((len as u32).to_ne_bytes());
        v.extend(ty.to_ne_bytes());
        v.extend([0; 2]);
        // Sequence number: the type times 100, to tell messages apart.
        v.extend((u32::from(ty) * 100).to_ne_bytes());
        v.extend([0; 4]);
        v.extend(payload);
        v.resize(align4(v.len()), 0);
        v
    }

    #[test]
    fn messages_are_framed_and_a_broken_one_ends_the_iteration() {
        let mut buf = msg(7, &[1, 2, 3]);
        let second = buf.len();
        buf.extend(msg(NLMSG_DONE, &[]));
        let m: Vec<_> = NlMsgs::new(&buf).collect();
        assert_eq!(m.len(), 2);
        let first = m[0].unwrap();
        assert_eq!(
            (first.ty, first.seq, first.payload, first.payload_offset),
            (7, 700, &[1, 2, 3][..], 16)
        );
        assert_eq!(m[1].unwrap().payload_offset, second + NLMSG_HDRLEN);
        // A length past the end: one error with the bytes after the header.
        let mut bad = msg(9, &[5, 6, 7, 8]);
        bad[0] = 200;
        let m: Vec<_> = NlMsgs::new(&bad).collect();
        assert_eq!(m.len(), 1);
        let b = m[0].unwrap_err();
        assert_eq!(
            (b.error, b.ty, b.rest),
            (DecodeError::BadLength, Some(9), &[5, 6, 7, 8][..])
        );
        assert_eq!(
            NlMsgs::new(&[1, 2, 3]).next().unwrap().unwrap_err().error,
            DecodeError::Truncated
        );
    }

    #[test]
    fn attributes_strip_flags_and_check_lengths() {
        // type 2 | NLA_F_NET_BYTEORDER, u32 value 0x01020304; then an
        // unpadded last attribute of 1 byte.
        let mut buf = vec![8, 0, 0x02, 0x40, 1, 2, 3, 4];
        buf.extend([5, 0, 9, 0, 0xaa]);
        let a: Vec<_> = Attrs::new(&buf).map(Result::unwrap).collect();
        assert_eq!(
            (a[0].ty, a[0].u32(), a[0].value_offset),
            (2, Ok(0x0102_0304), 4)
        );
        assert_eq!((a[1].ty, a[1].value), (9, &[0xaa][..]));
        assert_eq!(a[1].u32(), Err(DecodeError::BadAttribute(9)));
        // A length shorter than the header, or past the end.
        assert_eq!(
            Attrs::new(&[2, 0, 1, 0]).next().unwrap().unwrap_err(),
            DecodeError::BadLength
        );
        assert_eq!(
            Attrs::new(&[9, 0, 1, 0, 0]).next().unwrap().unwrap_err(),
            DecodeError::BadLength
        );
        // Trailing padding is not an attribute.
        assert!(Attrs::new(&[0, 0]).next().is_none());
    }

    #[test]
    fn error_messages() {
        let mut p = (-1i32).to_ne_bytes().to_vec();
        p.extend([0; 8]);
        p.extend(77u32.to_ne_bytes());
        assert_eq!(error_code(&p), Ok(-1));
        assert_eq!(error_request_seq(&p), Some(77));
        assert_eq!(error_code(&[1]), Err(DecodeError::Truncated));
    }
}
