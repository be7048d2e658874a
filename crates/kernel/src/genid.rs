//! The ruleset's generation: nf_tables counts every committed transaction
//! in a network namespace (ours, anyone's: nft, iptables-nft, firewalld)
//! and answers `NFT_MSG_GETGEN` with the count. Reading it is one netlink
//! round trip on a socket kept open, where listing our rules costs a
//! program run (3-4 ms each, several a second on the iptables path): the
//! check for damage lists them only when the count moved.
//!
//! ```text
//! request:  nlmsghdr { type: NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN, flags: REQUEST }
//!           nfgenmsg { family: AF_UNSPEC, version: 0, res_id: 0 }
//! answer:   nlmsghdr { type: ... | NFT_MSG_NEWGEN } nfgenmsg, NFTA_GEN_ID (be32), ...
//!           or NLMSG_ERROR with -errno
//! ```

use std::io;
use std::os::fd::OwnedFd;

use portcullis_netlink::{error_code, Attrs, NlMsgs, AF_UNSPEC, NFGENMSG_LEN, NLMSG_ERROR};

use crate::nfnl::{nft_type, Nfnl};

const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;

/// A netlink socket that reads the namespace's ruleset generation.
#[derive(Debug)]
pub struct Generation {
    nl: Nfnl,
}

impl Generation {
    /// Reads through `fd` (a `NETLINK_NETFILTER` socket: its namespace is
    /// the one read, whatever thread reads).
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self { nl: Nfnl::new(fd)? })
    }

    /// The current generation.
    pub fn read(&mut self) -> io::Result<u32> {
        let (seq, answer) =
            self.nl
                .request(crate::nfnl::nft_type(NFT_MSG_GETGEN), 0, AF_UNSPEC, |_| {})?;
        match parse(&answer, seq) {
            Answer::Generation(g) => Ok(g),
            Answer::Error(errno) => Err(io::Error::from_raw_os_error(errno)),
            Answer::Other | Answer::Malformed => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed NFT_MSG_NEWGEN answer",
            )),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Generation(u32),
    /// `errno` of an `NLMSG_ERROR` for our request.
    Error(i32),
    /// Not an answer to this request.
    Other,
    Malformed,
}

/// What datagram `buf` says about request `seq`.
fn parse(buf: &[u8], seq: u32) -> Answer {
    for m in NlMsgs::new(buf) {
        let Ok(m) = m else {
            return Answer::Malformed;
        };
        if m.seq != seq {
            continue;
        }
        if m.ty == NLMSG_ERROR {
            return match error_code(m.payload) {
                Ok(0) => Answer::Other,
                Ok(e) => Answer::Error(-e),
                Err(_) => Answer::Malformed,
            };
        }
        if m.ty != nft_type(NFT_MSG_NEWGEN) {
            continue;
        }
        let Some(attrs) = m.payload.get(NFGENMSG_LEN..) else {
            return Answer::Malformed;
        };
        for a in Attrs::new(attrs) {
            match a {
                Ok(a) if a.ty == NFTA_GEN_ID => {
                    return a.u32().map_or(Answer::Malformed, Answer::Generation)
                }
                Ok(_) => {}
                Err(_) => return Answer::Malformed,
            }
        }
        return Answer::Malformed;
    }
    Answer::Other
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnl::tests::ack as error;
    use portcullis_netlink::{NFNETLINK_V0, NLMSG_HDRLEN};

    /// A NEWGEN message: id, then the pid and name attributes the kernel
    /// adds.
    fn newgen(seq: u32, id: u32) -> Vec<u8> {
        let mut attrs = Vec::new();
        for (ty, v) in [(NFTA_GEN_ID, id.to_be_bytes()), (2, 77u32.to_be_bytes())] {
            attrs.extend_from_slice(&8u16.to_ne_bytes());
            attrs.extend_from_slice(&ty.to_ne_bytes());
            attrs.extend_from_slice(&v);
        }
        attrs.extend_from_slice(&8u16.to_ne_bytes());
        attrs.extend_from_slice(&3u16.to_ne_bytes());
        attrs.extend_from_slice(b"nft\0");
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&nft_type(NFT_MSG_NEWGEN).to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&[AF_UNSPEC, NFNETLINK_V0, 0, 0]);
        b.extend_from_slice(&attrs);
        b
    }

    #[test]
    fn the_request_is_a_getgen_of_the_right_length() {
        let r = crate::nfnl::encode_request(
            crate::nfnl::nft_type(NFT_MSG_GETGEN),
            0,
            AF_UNSPEC,
            7,
            |_| {},
        );
        assert_eq!(r.len(), 20);
        assert_eq!(u32::from_ne_bytes([r[0], r[1], r[2], r[3]]), 20);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 0x0a10);
        assert_eq!(u32::from_ne_bytes([r[8], r[9], r[10], r[11]]), 7);
    }

    #[test]
    fn answers_are_read_for_their_request_only() {
        assert_eq!(
            parse(&newgen(3, 0x0102_0304), 3),
            Answer::Generation(0x0102_0304)
        );
        // A late answer to an earlier request is not this one's.
        assert_eq!(parse(&newgen(2, 9), 3), Answer::Other);
        let mut two = newgen(2, 9);
        two.extend(newgen(3, 10));
        assert_eq!(parse(&two, 3), Answer::Generation(10));
        assert_eq!(parse(&error(3, 1), 3), Answer::Error(1));
        assert_eq!(parse(&error(3, 0), 3), Answer::Other);
    }

    #[test]
    fn broken_answers_are_malformed_never_a_generation() {
        let good = newgen(5, 42);
        for cut in 1..good.len() {
            let a = parse(&good[..cut], 5);
            assert!(
                matches!(a, Answer::Malformed | Answer::Other),
                "cut at {cut}: {a:?}"
            );
        }
        // The id attribute with a wrong size.
        let mut bad = good.clone();
        let at = NLMSG_HDRLEN + NFGENMSG_LEN;
        bad[at..at + 2].copy_from_slice(&6u16.to_ne_bytes());
        assert_eq!(parse(&bad, 5), Answer::Malformed);
    }
}
