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
/// `NLM_F_ROOT | NLM_F_MATCH`: every object (a dump).
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;

pub const NLA_HDRLEN: usize = 4;
/// Set in the type of an attribute that holds attributes.
pub const NLA_F_NESTED: u16 = 0x8000;
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

// ---- encoding ------------------------------------------------------------

/// Appends one nfnetlink message to a buffer: `nlmsghdr`, `nfgenmsg`,
/// attributes (nested ones too). Lengths are patched when a nest or the
/// message ends.
///
/// An attribute or nest must stay under 64 KiB (netlink's `u16` length):
/// a longer one is written with length 0, which the kernel refuses as
/// invalid rather than reading it as something else.
#[derive(Debug)]
pub struct MsgWriter<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
}

impl<'b> MsgWriter<'b> {
    /// Starts a message (its length is patched in [`finish`](Self::finish)),
    /// addressed to the kernel, with `nfgenmsg { family, version 0, res_id }`.
    #[inline]
    pub fn begin(
        buf: &'b mut Vec<u8>,
        ty: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
    ) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // destination: the kernel
        buf.push(family);
        buf.push(NFNETLINK_V0);
        buf.extend_from_slice(&res_id.to_be_bytes());
        MsgWriter { buf, start }
    }

    /// One attribute with `value`, padded to 4 bytes.
    #[inline]
    pub fn attr(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        let len = u16::try_from(NLA_HDRLEN + value.len()).unwrap_or(0);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        let pad = align4(value.len()) - value.len();
        self.buf.extend_from_slice(&[0u8; 3][..pad]);
        self
    }

    /// A big-endian `u32` attribute.
    #[inline]
    pub fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// A big-endian `u64` attribute.
    pub fn attr_u64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    /// A nested attribute (`NLA_F_NESTED`) holding what `inner` writes.
    pub fn nest(&mut self, ty: u16, inner: impl FnOnce(&mut Self)) -> &mut Self {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        inner(self);
        let len = u16::try_from(self.buf.len() - at).unwrap_or(0);
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// Patches the length; the message is complete.
    #[inline]
    pub fn finish(self) {
        let len = u32::try_from(self.buf.len() - self.start).unwrap_or(0);
        self.buf[self.start..self.start + 4].copy_from_slice(&len.to_ne_bytes());
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
    fn written_messages_read_back_with_nests_and_padding() {
        let mut buf = Vec::new();
        let mut w = MsgWriter::begin(&mut buf, 0x0a06, NLM_F_REQUEST | NLM_F_ACK, 9, 1, 10);
        w.attr_str(1, "ab").nest(4, |w| {
            w.attr_u32(2, 3).attr_u64(3, 1 << 40);
        });
        w.attr(5, &[7]);
        w.finish();
        let m: Vec<_> = NlMsgs::new(&buf).map(Result::unwrap).collect();
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].ty, m[0].seq), (0x0a06, 9));
        assert_eq!(u16_ne(&buf, 6), Some(NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(m[0].payload.len(), buf.len() - NLMSG_HDRLEN);
        assert_eq!(&m[0].payload[..4], &[1, 0, 0, 10]);
        let a: Vec<_> = Attrs::new(&m[0].payload[NFGENMSG_LEN..])
            .map(Result::unwrap)
            .collect();
        assert_eq!((a[0].ty, a[0].value), (1, &b"ab\0"[..]));
        assert_eq!(a[1].ty, 4);
        // The nested flag is in the raw type.
        assert_eq!(
            u16_ne(&buf, a[1].value_offset + NLMSG_HDRLEN + NFGENMSG_LEN - 2),
            Some(4 | NLA_F_NESTED)
        );
        let inner: Vec<_> = Attrs::new(a[1].value).map(Result::unwrap).collect();
        assert_eq!((inner[0].ty, inner[0].u32()), (2, Ok(3)));
        assert_eq!((inner[1].ty, u64_be(inner[1].value, 0)), (3, Some(1 << 40)));
        assert_eq!((a[2].ty, a[2].value), (5, &[7][..]));
        assert_eq!(buf.len() % 4, 0);
        // Too long for a u16 length: written as 0, which readers refuse.
        let mut big = Vec::new();
        let mut w = MsgWriter::begin(&mut big, 1, 0, 0, 0, 0);
        w.attr(1, &vec![0; 70_000]);
        w.finish();
        let m = NlMsgs::new(&big).next().unwrap().unwrap();
        assert_eq!(
            Attrs::new(&m.payload[NFGENMSG_LEN..])
                .next()
                .unwrap()
                .unwrap_err(),
            DecodeError::BadLength
        );
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
