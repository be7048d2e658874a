//! The xt `NFQUEUE` target in our own table, for kernels without nft's
//! `queue` statement (CONFIG_NFT_QUEUE) that have nft_compat and
//! xt_NFQUEUE (as iptables-nft uses them).
//!
//! `nft` cannot write an xt target from text, so this one rule goes over
//! netlink ([`crate::nfnl`]) into chain [`QUEUE_CHAIN`], which our `nft`
//! scripts declare empty and never flush; `to_user` jumps to it:
//!
//! ```text
//! chain to_user { meta mark set meta mark | 0x20000000 jump nfqueue
//!                 drop }                      (fail-closed only: the rule
//!                                              is missing, nothing passes)
//! chain nfqueue { counter  xt target NFQUEUE rev 3 { num, total 1, bypass } }
//! ```
//!
//! `nft list` shows the rule as `counter packets N bytes M queue num 0
//! bypass` (nft translates xt targets it knows). Held packets then leave
//! our table for the queue directly: no mark match in a second base chain
//! (iptables-nft's `security` table), no iptables program to install,
//! check or count, and the rule's counter is read with one netlink dump.
//!
//! ```text
//! NFT_MSG_NEWRULE { NFTA_RULE_TABLE "portcullis", NFTA_RULE_CHAIN "nfqueue",
//!   NFTA_RULE_EXPRESSIONS { ELEM { NAME "counter", DATA { BYTES 0, PACKETS 0 } },
//!                           ELEM { NAME "target",  DATA { NAME "NFQUEUE", REV 3,
//!                                  INFO xt_NFQ_info_v3 { u16 num, u16 total, u16 flags } + 2 pad } } } }
//! ```
//! (`INFO` is in host byte order, as xtables structures are.)

use portcullis_netlink::{u16_ne, u64_be, Attrs, DecodeError, NLM_F_APPEND, NLM_F_CREATE};

use crate::nfnl::{Batch, NFPROTO_INET};
use crate::plan::TABLE;

/// The chain that holds the xt rule.
pub const QUEUE_CHAIN: &str = "nfqueue";

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
pub(crate) const NFT_MSG_GETCHAIN: u16 = 4;
pub(crate) const NFT_MSG_NEWRULE: u16 = 6;
pub(crate) const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_TARGET_NAME: u16 = 1;
const NFTA_TARGET_REV: u16 = 2;
const NFTA_TARGET_INFO: u16 = 3;

const TARGET: &str = "NFQUEUE";
const REVISION: u32 = 3;
const NFQ_FLAG_BYPASS: u16 = 0x01;

/// The table the probe creates and deletes in one transaction.
const PROBE_TABLE: &str = "portcullis_probe";

/// What the rule queues to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct XtQueue {
    pub(crate) num: u16,
    /// Packets pass when no program listens (fail-open).
    pub(crate) bypass: bool,
}

impl XtQueue {
    /// `struct xt_NFQ_info_v3`, padded to 8 bytes (`XT_ALIGN`).
    fn info(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..2].copy_from_slice(&self.num.to_ne_bytes());
        b[2..4].copy_from_slice(&1u16.to_ne_bytes());
        let flags = if self.bypass { NFQ_FLAG_BYPASS } else { 0 };
        b[4..6].copy_from_slice(&flags.to_ne_bytes());
        b
    }
}

/// Appends the rule (counter, then the target) to `table`'s `chain`.
fn write_rule(b: &mut Batch, table: &str, chain: &str, q: XtQueue) {
    let mut w = b.msg(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, NFPROTO_INET);
    w.attr_str(NFTA_RULE_TABLE, table)
        .attr_str(NFTA_RULE_CHAIN, chain)
        .nest(NFTA_RULE_EXPRESSIONS, |w| {
            w.nest(NFTA_LIST_ELEM, |w| {
                w.attr_str(NFTA_EXPR_NAME, "counter")
                    .nest(NFTA_EXPR_DATA, |w| {
                        w.attr_u64(NFTA_COUNTER_BYTES, 0)
                            .attr_u64(NFTA_COUNTER_PACKETS, 0);
                    });
            })
            .nest(NFTA_LIST_ELEM, |w| {
                w.attr_str(NFTA_EXPR_NAME, "target")
                    .nest(NFTA_EXPR_DATA, |w| {
                        w.attr_str(NFTA_TARGET_NAME, TARGET)
                            .attr_u32(NFTA_TARGET_REV, REVISION)
                            .attr(NFTA_TARGET_INFO, &q.info());
                    });
            });
        });
    w.finish();
}

/// Our queue chain holds exactly the rule for `q`, whatever it held
/// before: one transaction (the chain's rules deleted, the rule added).
pub(crate) fn write_replace(b: &mut Batch, q: XtQueue) {
    let mut w = b.msg(NFT_MSG_DELRULE, 0, NFPROTO_INET);
    w.attr_str(NFTA_RULE_TABLE, TABLE)
        .attr_str(NFTA_RULE_CHAIN, QUEUE_CHAIN);
    w.finish();
    write_rule(b, TABLE, QUEUE_CHAIN, q);
}

/// Whether the kernel takes the rule in an `inet` table: a throwaway
/// table with a chain and the rule, deleted in the same transaction
/// (nothing is ever visible).
pub(crate) fn write_probe(b: &mut Batch) {
    let mut w = b.msg(NFT_MSG_NEWTABLE, NLM_F_CREATE, NFPROTO_INET);
    w.attr_str(NFTA_TABLE_NAME, PROBE_TABLE);
    w.finish();
    let mut w = b.msg(NFT_MSG_NEWCHAIN, NLM_F_CREATE, NFPROTO_INET);
    w.attr_str(NFTA_CHAIN_TABLE, PROBE_TABLE)
        .attr_str(NFTA_CHAIN_NAME, "q");
    w.finish();
    write_rule(
        b,
        PROBE_TABLE,
        "q",
        XtQueue {
            num: 0,
            bypass: true,
        },
    );
    let mut w = b.msg(NFT_MSG_DELTABLE, 0, NFPROTO_INET);
    w.attr_str(NFTA_TABLE_NAME, PROBE_TABLE);
    w.finish();
}

/// Names our queue chain in a `NFT_MSG_GETCHAIN` request.
pub(crate) fn write_chain_name(w: &mut portcullis_netlink::MsgWriter<'_>) {
    w.attr_str(NFTA_CHAIN_TABLE, TABLE)
        .attr_str(NFTA_CHAIN_NAME, QUEUE_CHAIN);
}

/// The filter of a dump of our queue chain's rules.
pub(crate) fn write_dump_filter(w: &mut portcullis_netlink::MsgWriter<'_>) {
    w.attr_str(NFTA_RULE_TABLE, TABLE)
        .attr_str(NFTA_RULE_CHAIN, QUEUE_CHAIN);
}

/// What one dumped rule holds of ours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// Its xt `NFQUEUE` target (revision 3), if it has one.
    pub(crate) queue: Option<XtQueue>,
    /// Its counter's packets, if it has a counter.
    pub(crate) packets: Option<u64>,
}

/// Reads a rule's attributes (a `NFT_MSG_NEWRULE` after `nfgenmsg`).
pub(crate) fn parse_rule(attrs: &[u8]) -> Result<Seen, DecodeError> {
    let mut seen = Seen::default();
    for a in Attrs::new(attrs) {
        let a = a?;
        if a.ty != NFTA_RULE_EXPRESSIONS {
            continue;
        }
        for elem in Attrs::new(a.value) {
            let elem = elem?;
            let (mut name, mut data) = (None, None);
            for e in Attrs::new(elem.value) {
                let e = e?;
                match e.ty {
                    NFTA_EXPR_NAME => name = Some(e.value),
                    NFTA_EXPR_DATA => data = Some(e.value),
                    _ => {}
                }
            }
            let data = data.unwrap_or_default();
            match name {
                Some(b"counter\0") => {
                    for c in Attrs::new(data) {
                        let c = c?;
                        if c.ty == NFTA_COUNTER_PACKETS {
                            if c.value.len() != 8 {
                                return Err(DecodeError::BadAttribute(c.ty));
                            }
                            seen.packets = u64_be(c.value, 0);
                        }
                    }
                }
                Some(b"target\0") => seen.queue = parse_target(data)?.or(seen.queue),
                _ => {}
            }
        }
    }
    Ok(seen)
}

/// An xt target's data: ours if it is `NFQUEUE` revision 3.
fn parse_target(data: &[u8]) -> Result<Option<XtQueue>, DecodeError> {
    let (mut name, mut rev, mut info) = (None, None, None);
    for t in Attrs::new(data) {
        let t = t?;
        match t.ty {
            NFTA_TARGET_NAME => name = Some(t.value),
            NFTA_TARGET_REV => rev = Some(t.u32()?),
            NFTA_TARGET_INFO => info = Some(t.value),
            _ => {}
        }
    }
    let ours = name.is_some_and(|n| n.strip_suffix(b"\0") == Some(TARGET.as_bytes()))
        && rev == Some(REVISION);
    let Some(info) = info.filter(|_| ours) else {
        return Ok(None);
    };
    match (u16_ne(info, 0), u16_ne(info, 4)) {
        (Some(num), Some(flags)) => Ok(Some(XtQueue {
            num,
            bypass: flags & NFQ_FLAG_BYPASS != 0,
        })),
        _ => Err(DecodeError::BadAttribute(NFTA_TARGET_INFO)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use portcullis_netlink::{NlMsgs, NFGENMSG_LEN};

    fn messages(b: Batch) -> Vec<(u16, Vec<u8>)> {
        let (bytes, _) = b.end();
        NlMsgs::new(&bytes)
            .map(Result::unwrap)
            .map(|m| (m.ty, m.payload[NFGENMSG_LEN..].to_vec()))
            .collect()
    }

    #[test]
    fn the_rule_reads_back_as_our_queue_with_its_counter() {
        for q in [
            XtQueue {
                num: 0,
                bypass: true,
            },
            XtQueue {
                num: 65535,
                bypass: false,
            },
        ] {
            let mut b = Batch::new(1);
            write_replace(&mut b, q);
            let m = messages(b);
            // Begin, delete the chain's rules, add ours, end.
            let types: Vec<u16> = m.iter().map(|(t, _)| *t).collect();
            assert_eq!(types, vec![0x10, 0x0a08, 0x0a06, 0x11]);
            assert_eq!(
                parse_rule(&m[2].1).unwrap(),
                Seen {
                    queue: Some(q),
                    packets: Some(0)
                }
            );
            // The delete names our chain and no handle: all its rules.
            let del: Vec<_> = Attrs::new(&m[1].1).map(Result::unwrap).collect();
            assert_eq!(del.len(), 2);
            assert_eq!(del[0].value, b"portcullis\0");
            assert_eq!(del[1].value, b"nfqueue\0");
            // xt_NFQ_info_v3 in host order, 8 bytes.
            assert_eq!(q.info()[2..4], 1u16.to_ne_bytes());
        }
    }

    #[test]
    fn the_probe_adds_and_deletes_its_own_table_in_one_transaction() {
        let mut b = Batch::new(1);
        write_probe(&mut b);
        let m = messages(b);
        let types: Vec<u16> = m.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, vec![0x10, 0x0a00, 0x0a03, 0x0a06, 0x0a02, 0x11]);
        for (_, attrs) in &m[1..5] {
            let first = Attrs::new(attrs).next().unwrap().unwrap();
            assert_eq!(first.value, b"portcullis_probe\0");
        }
    }

    #[test]
    fn other_rules_and_targets_are_not_ours_and_broken_ones_are_errors() {
        let mut b = Batch::new(1);
        write_replace(
            &mut b,
            XtQueue {
                num: 3,
                bypass: true,
            },
        );
        let rule = messages(b).remove(2).1;
        // Another target name, another revision: no queue of ours.
        let name = b"NFQUEUE\0";
        let at = rule.windows(name.len()).position(|w| w == name).unwrap();
        let mut other = rule.clone();
        other[at..at + name.len()].copy_from_slice(b"NFLOGXX\0");
        assert_eq!(parse_rule(&other).unwrap().queue, None);
        let rev = 3u32.to_be_bytes();
        let at = rule
            .windows(8)
            .position(|w| w[..4] == [8, 0, 2, 0] && w[4..] == rev)
            .unwrap();
        let mut other = rule.clone();
        other[at + 4..at + 8].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(parse_rule(&other).unwrap().queue, None);
        // Cut anywhere: an error or less than the whole, never a wrong queue.
        for cut in 0..rule.len() {
            if let Ok(s) = parse_rule(&rule[..cut]) {
                assert!(
                    s.queue.is_none()
                        || s.queue
                            == Some(XtQueue {
                                num: 3,
                                bypass: true
                            }),
                    "{cut}"
                );
            }
        }
    }
}
