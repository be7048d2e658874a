//! nfnetlink, for the few things `nft` cannot do or costs a program run
//! for: reading the ruleset generation ([`crate::genid`]), the xt
//! `NFQUEUE` rule in our own table with its counter ([`crate::xtqueue`]),
//! and ending a banned address's connections ([`crate::conntrack`]).
//!
//! ```text
//! transaction: BATCH_BEGIN { res_id: NFNL_SUBSYS_NFTABLES }
//!              NFT_MSG_... (NLM_F_ACK: one NLMSG_ERROR each, 0 = done)
//!              BATCH_END                       all or nothing, like `nft -f`
//! dump:        NFT_MSG_GET... (NLM_F_DUMP) -> NFT_MSG_NEW... ... NLMSG_DONE
//! ```
//!
//! The socket lives in the network namespace it was opened in, whatever
//! thread uses it later: [`crate::Runner::netfilter_socket`] opens it where
//! the runner's programs run.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use portcullis_netlink::{
    error_code, MsgWriter, NlMsgs, AF_UNSPEC, NFGENMSG_LEN, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_DUMP, NLM_F_REQUEST,
};

pub(crate) const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

/// `NFPROTO_INET`: the family of `table inet portcullis`.
pub(crate) const NFPROTO_INET: u8 = 1;

/// The most datagrams one nf_tables answer may take before we give up on
/// it (our dumps are one or two rules; late answers to earlier requests
/// are skipped).
const MAX_DATAGRAMS: usize = 64;

/// Opens a `NETLINK_NETFILTER` socket in the calling thread's network
/// namespace.
pub fn open_netfilter_socket() -> io::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )?;
    socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    Ok(fd)
}

/// The message type of nf_tables message `msg`.
pub(crate) const fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// A transaction being written: every message asks for an
/// acknowledgement, so that the answer says which one failed.
#[derive(Debug)]
pub(crate) struct Batch {
    buf: Vec<u8>,
    seqs: Vec<u32>,
    next: u32,
}

impl Batch {
    /// A batch whose messages are numbered from `first_seq` (the begin
    /// marker takes it).
    pub(crate) fn new(first_seq: u32) -> Self {
        let mut b = Self {
            buf: Vec::with_capacity(512),
            seqs: Vec::new(),
            next: first_seq,
        };
        b.marker(NFNL_MSG_BATCH_BEGIN);
        b
    }

    fn marker(&mut self, ty: u16) {
        let seq = self.take_seq();
        MsgWriter::begin(
            &mut self.buf,
            ty,
            NLM_F_REQUEST,
            seq,
            AF_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        )
        .finish();
    }

    fn take_seq(&mut self) -> u32 {
        let s = self.next;
        self.next = self.next.wrapping_add(1);
        s
    }

    /// Starts nf_tables message `msg` for `family` with `flags` (besides
    /// request and acknowledgement); finish it before the next.
    pub(crate) fn msg(&mut self, msg: u16, flags: u16, family: u8) -> MsgWriter<'_> {
        let seq = self.take_seq();
        self.seqs.push(seq);
        MsgWriter::begin(
            &mut self.buf,
            nft_type(msg),
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            family,
            0,
        )
    }

    /// The whole transaction and the sequence numbers to be acknowledged.
    pub(crate) fn end(mut self) -> (Vec<u8>, Vec<u32>) {
        self.marker(NFNL_MSG_BATCH_END);
        (self.buf, self.seqs)
    }
}

/// What a datagram says about a transaction's pending acknowledgements:
/// acknowledged ones are removed; the first error is returned (`errno`).
pub(crate) fn take_acks(buf: &[u8], pending: &mut BTreeSet<u32>) -> Result<(), Answer> {
    for m in NlMsgs::new(buf) {
        let m = m.map_err(|_| Answer::Malformed)?;
        if m.ty != NLMSG_ERROR || !pending.contains(&m.seq) {
            continue;
        }
        match error_code(m.payload) {
            Ok(0) => {
                pending.remove(&m.seq);
            }
            Ok(e) => return Err(Answer::Errno(e.saturating_neg())),
            Err(_) => return Err(Answer::Malformed),
        }
    }
    Ok(())
}

/// The error an answer to request `seq` carries: `Some(errno)`, or `None`
/// if it is not an error (an object, an acknowledgement).
pub(crate) fn error_of(buf: &[u8], seq: u32) -> Result<Option<i32>, Answer> {
    for m in NlMsgs::new(buf) {
        let m = m.map_err(|_| Answer::Malformed)?;
        if m.seq == seq && m.ty == NLMSG_ERROR {
            let e = error_code(m.payload).map_err(|_| Answer::Malformed)?;
            return Ok((e != 0).then(|| e.saturating_neg()));
        }
    }
    Ok(None)
}

/// One part of a dump's answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The kernel refused the request: `errno`.
    Errno(i32),
    /// A message that does not parse.
    Malformed,
}

impl From<Answer> for io::Error {
    fn from(a: Answer) -> Self {
        match a {
            Answer::Errno(e) => io::Error::from_raw_os_error(e),
            Answer::Malformed => io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed nf_tables netlink answer",
            ),
        }
    }
}

/// Hands `each` the attributes (after `nfgenmsg`) of the messages of type
/// `ty` answering dump `seq`; true once the dump is done.
pub(crate) fn take_dump(
    buf: &[u8],
    seq: u32,
    ty: u16,
    each: &mut impl FnMut(&[u8]),
) -> Result<bool, Answer> {
    for m in NlMsgs::new(buf) {
        let m = m.map_err(|_| Answer::Malformed)?;
        if m.seq != seq {
            continue;
        }
        match m.ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                return match error_code(m.payload) {
                    Ok(0) => Ok(true),
                    Ok(e) => Err(Answer::Errno(e.saturating_neg())),
                    Err(_) => Err(Answer::Malformed),
                }
            }
            t if t == ty => {
                each(m.payload.get(NFGENMSG_LEN..).ok_or(Answer::Malformed)?);
            }
            _ => {}
        }
    }
    Ok(false)
}

/// One request outside a transaction: message type `ty` (subsystem and
/// message, e.g. [`nft_type`]) for `family`, `flags` besides the request
/// flag, attributes from `write`.
pub(crate) fn encode_request(
    ty: u16,
    flags: u16,
    family: u8,
    seq: u32,
    write: impl FnOnce(&mut MsgWriter<'_>),
) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(128);
    let mut w = MsgWriter::begin(&mut bytes, ty, NLM_F_REQUEST | flags, seq, family, 0);
    write(&mut w);
    w.finish();
    bytes
}

/// A netlink socket for nfnetlink requests, kept open.
#[derive(Debug)]
pub(crate) struct Nfnl {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Nfnl {
    /// Uses `fd` (a `NETLINK_NETFILTER` socket); an answer that never
    /// comes fails the request after a second instead of hanging it.
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        let limit = nix::sys::time::TimeVal::new(1, 0);
        socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &limit)?;
        Ok(Self {
            fd,
            seq: 0,
            buf: vec![0; 65536],
        })
    }

    /// A fresh sequence number, far from the last request's (its late
    /// answers are not taken for this one's).
    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1 << 8);
        self.seq
    }

    /// Sends `request` and hands each datagram to `take` until it has the
    /// answer, at most `max` datagrams.
    fn converse<T>(
        &mut self,
        request: &[u8],
        max: usize,
        mut take: impl FnMut(&[u8]) -> Option<Result<T, Answer>>,
    ) -> io::Result<T> {
        socket::send(self.fd.as_raw_fd(), request, MsgFlags::empty())?;
        for _ in 0..max {
            let n = socket::recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty())?;
            if let Some(r) = take(&self.buf[..n.min(self.buf.len())]) {
                return r.map_err(io::Error::from);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no complete answer from nf_tables",
        ))
    }

    /// Runs the transaction `write` builds: all of it or, on the first
    /// error, none of it (the error's `errno`).
    pub(crate) fn transaction(&mut self, write: impl FnOnce(&mut Batch)) -> io::Result<()> {
        let mut batch = Batch::new(self.next_seq());
        write(&mut batch);
        let (bytes, seqs) = batch.end();
        let mut pending: BTreeSet<u32> = seqs.into_iter().collect();
        self.converse(&bytes, MAX_DATAGRAMS, |d| {
            match take_acks(d, &mut pending) {
                Err(e) => Some(Err(e)),
                Ok(()) if pending.is_empty() => Some(Ok(())),
                Ok(()) => None,
            }
        })
    }

    /// Sends the request `write` builds (message type `ty`, `family`,
    /// with `flags`) and returns the answer's datagrams.
    pub(crate) fn request(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        write: impl FnOnce(&mut MsgWriter<'_>),
    ) -> io::Result<(u32, Vec<u8>)> {
        let seq = self.next_seq();
        let bytes = encode_request(ty, flags, family, seq, write);
        self.converse(&bytes, MAX_DATAGRAMS, |d| {
            let answered = NlMsgs::new(d).any(|m| m.is_ok_and(|m| m.seq == seq));
            answered.then(|| Ok(d.to_vec()))
        })
        .map(|d| (seq, d))
    }

    /// Dumps nf_tables objects: `msg` (a `GET`) with the filter attributes
    /// `write` puts; the attributes of each `answer`-typed message.
    pub(crate) fn dump(
        &mut self,
        msg: u16,
        answer: u16,
        family: u8,
        write: impl FnOnce(&mut MsgWriter<'_>),
    ) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.dump_each(
            nft_type(msg),
            nft_type(answer),
            family,
            MAX_DATAGRAMS,
            write,
            |attrs| out.push(attrs.to_vec()),
        )?;
        Ok(out)
    }

    /// Dumps objects of any subsystem: request type `ty` (a `GET`, full
    /// type) with the attributes `write` puts; `each` gets the attributes
    /// of every `answer`-typed message, as they arrive, over at most `max`
    /// datagrams.
    pub(crate) fn dump_each(
        &mut self,
        ty: u16,
        answer: u16,
        family: u8,
        max: usize,
        write: impl FnOnce(&mut MsgWriter<'_>),
        mut each: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        let seq = self.next_seq();
        let bytes = encode_request(ty, NLM_F_DUMP, family, seq, write);
        self.converse(&bytes, max, |d| {
            match take_dump(d, seq, answer, &mut each) {
                Err(e) => Some(Err(e)),
                Ok(true) => Some(Ok(())),
                Ok(false) => None,
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use portcullis_netlink::{u16_ne, u32_ne, NLMSG_HDRLEN};

    /// An `NLMSG_ERROR` answering `seq` with `errno` (0: an ack).
    pub(crate) fn ack(seq: u32, errno: i32) -> Vec<u8> {
        let len = NLMSG_HDRLEN + 4 + NLMSG_HDRLEN;
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(-errno).to_ne_bytes());
        b.extend_from_slice(&[0; NLMSG_HDRLEN]);
        b
    }

    #[test]
    fn a_batch_is_framed_by_markers_and_acks_each_message() {
        let mut b = Batch::new(100);
        let mut w = b.msg(6, 0x400, NFPROTO_INET);
        w.attr_str(1, "t");
        w.finish();
        b.msg(8, 0, NFPROTO_INET).finish();
        let (bytes, seqs) = b.end();
        assert_eq!(seqs, vec![101, 102]);
        let m: Vec<_> = NlMsgs::new(&bytes).map(Result::unwrap).collect();
        let types: Vec<u16> = m.iter().map(|m| m.ty).collect();
        assert_eq!(types, vec![0x10, 0x0a06, 0x0a08, 0x11]);
        assert_eq!(
            m.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [100, 101, 102, 103]
        );
        // Markers: no ack, res_id = the nf_tables subsystem (big-endian).
        assert_eq!(&m[0].payload[..4], &[0, 0, 0, 10]);
        assert_eq!(&m[3].payload[..4], &[0, 0, 0, 10]);
        let flags = |at: usize| u16_ne(&bytes, at + 6).unwrap();
        assert_eq!(flags(0), NLM_F_REQUEST);
        let second = u32_ne(&bytes, 0).unwrap() as usize;
        assert_eq!(flags(second), NLM_F_REQUEST | NLM_F_ACK | 0x400);
        assert_eq!(m[1].payload[0], NFPROTO_INET);
    }

    #[test]
    fn acks_are_taken_per_message_and_the_first_error_wins() {
        let mut pending: BTreeSet<u32> = [5, 6].into();
        // An ack for another request is not ours.
        assert_eq!(take_acks(&ack(4, 0), &mut pending), Ok(()));
        assert_eq!(pending.len(), 2);
        let mut d = ack(5, 0);
        d.extend(ack(6, 0));
        assert_eq!(take_acks(&d, &mut pending), Ok(()));
        assert!(pending.is_empty());
        let mut pending: BTreeSet<u32> = [5, 6].into();
        let mut d = ack(5, 0);
        d.extend(ack(6, 2));
        assert_eq!(take_acks(&d, &mut pending), Err(Answer::Errno(2)));
        assert_eq!(
            take_acks(&ack(5, 0)[..20], &mut [5].into()),
            Err(Answer::Malformed)
        );
    }

    #[test]
    fn an_answer_is_an_error_only_when_it_says_so() {
        assert_eq!(error_of(&ack(4, 2), 4), Ok(Some(2)));
        assert_eq!(error_of(&ack(4, 0), 4), Ok(None));
        // Another request's error is not this one's.
        assert_eq!(error_of(&ack(3, 2), 4), Ok(None));
        assert_eq!(error_of(&ack(4, 2)[..10], 4), Err(Answer::Malformed));
    }

    #[test]
    fn dumps_collect_their_messages_until_done() {
        let msg = |ty: u16, seq: u32, attrs: &[u8]| {
            let mut b = Vec::new();
            let mut w = MsgWriter::begin(&mut b, ty, 0, seq, NFPROTO_INET, 0);
            w.attr(1, attrs);
            w.finish();
            b
        };
        let mut out = Vec::new();
        let mut d = msg(nft_type(6), 9, &[1]);
        d.extend(msg(nft_type(6), 8, &[2])); // an earlier request's
        d.extend(msg(nft_type(3), 9, &[3])); // another type
        let mut push = |a: &[u8]| out.push(a.to_vec());
        assert_eq!(take_dump(&d, 9, nft_type(6), &mut push), Ok(false));
        let done = msg(NLMSG_DONE, 9, &[]);
        assert_eq!(take_dump(&done, 9, nft_type(6), &mut push), Ok(true));
        assert_eq!(
            take_dump(&ack(9, 2), 9, nft_type(6), &mut push),
            Err(Answer::Errno(2))
        );
        assert_eq!(out, vec![vec![5, 0, 1, 0, 1, 0, 0, 0]]);
        for cut in 1..d.len() {
            let r = take_dump(&d[..cut], 9, nft_type(6), &mut |_: &[u8]| {});
            assert!(matches!(r, Ok(false) | Err(Answer::Malformed)), "{cut}");
        }
    }
}
