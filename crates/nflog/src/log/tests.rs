//! Counting and sequence tracking over byte arrays (no socket).
#![cfg(target_endian = "little")]

use super::*;
use crate::fixtures::{DGRAM_PING4, DGRAM_THREE};
use crate::msg::tests::{control_msg, seq_packet, IP4_UDP};

/// Ingests `datagrams` into a fresh state; returns it and the packets'
/// (seq, payload length) in delivery order.
fn ingest_all(datagrams: &[&[u8]]) -> (State, Vec<(Option<u32>, usize)>) {
    let mut st = State::default();
    let mut seen = Vec::new();
    for d in datagrams {
        st.ingest(d, false, &mut |p: &LoggedPacket<'_>| {
            seen.push((p.seq, p.payload.len()))
        });
    }
    (st, seen)
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn captured_datagrams_count_four_packets_and_no_loss() {
    let (st, seen) = ingest_all(&[&DGRAM_PING4, &DGRAM_THREE]);
    assert_eq!(
        seen,
        [(Some(0), 84), (Some(1), 104), (Some(2), 40), (Some(3), 31)]
    );
    assert_eq!(
        st.stats,
        LogStats {
            received: 4,
            datagrams: 2,
            max_per_datagram: 3,
            ..LogStats::default()
        }
    );
    assert_eq!(st.next_seq, 4);
}

#[test]
fn logged_packet_fields_from_a_captured_datagram() {
    let mut got = Vec::new();
    let mut st = State::default();
    st.ingest(&DGRAM_THREE, false, &mut |p: &LoggedPacket<'_>| {
        got.push(format!("{p:?}"))
    });
    assert_eq!(got.len(), 3);
    let packets: Vec<LoggedPacket<'_>> =
        decode_datagram(&DGRAM_THREE).map(|p| p.unwrap()).collect();
    assert_eq!(packets.len(), 3);
    let out = &packets[1];
    assert_eq!(
        (out.hook, out.outdev, out.prefix),
        (Hook::Output, Some(2), None)
    );
    // Cut to 40 bytes by the rule's snaplen; the IP header says 84.
    assert_eq!((out.payload.len(), out.original_len), (40, Some(84)));
    let v6 = &packets[0];
    assert_eq!((v6.original_len, v6.payload.len()), (Some(104), 104));
    assert_eq!(v6.prefix, Some(&b"pc-new"[..]));
    assert_eq!(v6.hw_addr.map(|h| h.as_bytes().len()), Some(6));
    let single = LoggedPacket::decode(&DGRAM_PING4).unwrap();
    assert_eq!(
        (single.seq, single.original_len, single.indev),
        (Some(0), Some(84), Some(2))
    );
    assert_eq!(
        LoggedPacket::decode(&DGRAM_THREE[..100]),
        Err(DecodeError::BadLength)
    );
    let done = control_msg(NLMSG_DONE, &[]);
    assert_eq!(
        LoggedPacket::decode(&done),
        Err(DecodeError::NotPacket(NLMSG_DONE))
    );
}

#[test]
fn a_gap_in_sequence_numbers_counts_lost_packets() {
    // The first datagram (seq 0) never arrived.
    let (st, _) = ingest_all(&[&DGRAM_THREE]);
    assert_eq!((st.stats.received, st.stats.lost), (3, 1));
    // 0, then 5..=6: 1..=4 lost.
    let d = concat(&[&seq_packet(Some(5)), &seq_packet(Some(6))]);
    let (st, _) = ingest_all(&[&seq_packet(Some(0)), &d]);
    assert_eq!((st.stats.received, st.stats.lost), (3, 4));
}

#[test]
fn sequence_numbers_wrap() {
    let mut st = State {
        next_seq: u32::MAX - 1,
        ..State::default()
    };
    for s in [u32::MAX - 1, u32::MAX, 0, 1] {
        st.ingest(&seq_packet(Some(s)), false, &mut |_: &LoggedPacket<'_>| {});
    }
    assert_eq!(
        (st.stats.received, st.stats.lost, st.stats.out_of_order),
        (4, 0, 0)
    );
    // A gap across the wrap.
    st.ingest(
        &seq_packet(Some(u32::MAX)),
        false,
        &mut |_: &LoggedPacket<'_>| {},
    );
    assert_eq!(st.stats.out_of_order, 1, "u32::MAX after 1 goes backwards");
    let mut st = State {
        next_seq: u32::MAX - 1,
        ..State::default()
    };
    st.ingest(&seq_packet(Some(2)), false, &mut |_: &LoggedPacket<'_>| {});
    assert_eq!(st.stats.lost, 4);
}

#[test]
fn a_repeated_or_older_number_is_out_of_order_not_loss() {
    let (st, seen) = ingest_all(&[
        &seq_packet(Some(0)),
        &seq_packet(Some(1)),
        &seq_packet(Some(1)),
    ]);
    assert_eq!(seen.len(), 3);
    assert_eq!(
        (st.stats.lost, st.stats.out_of_order, st.next_seq),
        (0, 1, 2)
    );
}

#[test]
fn packets_without_sequence_numbers_are_not_accounted() {
    let (st, _) = ingest_all(&[&seq_packet(None), &seq_packet(None)]);
    assert_eq!((st.stats.received, st.stats.lost, st.next_seq), (2, 0, 0));
}

#[test]
fn a_malformed_packet_is_counted_skipped_and_not_lost() {
    // A packet message whose header attribute is missing but whose seq is
    // readable, between two good ones.
    let mut bad = seq_packet(Some(1));
    // Retype NFULA_PACKET_HDR (the first attribute) to an unknown type.
    let at = portcullis_netlink::NLMSG_HDRLEN + 4 + 2;
    bad[at..at + 2].copy_from_slice(&200u16.to_ne_bytes());
    let d = concat(&[&seq_packet(Some(0)), &bad, &seq_packet(Some(2))]);
    let (st, seen) = ingest_all(&[&d]);
    assert_eq!(seen, [(Some(0), 29), (Some(2), 29)]);
    assert_eq!(
        (st.stats.received, st.stats.malformed, st.stats.lost),
        (2, 1, 0)
    );
}

#[test]
fn a_cut_datagram_keeps_the_whole_messages_and_counts_the_rest() {
    // The receive slot cut the batch of three inside its second message.
    let cut = &DGRAM_THREE[..0xec + 100];
    let mut st = State {
        next_seq: 1,
        ..State::default()
    };
    let mut n = 0;
    st.ingest(cut, true, &mut |_: &LoggedPacket<'_>| n += 1);
    assert_eq!(n, 1);
    assert_eq!(
        (
            st.stats.received,
            st.stats.malformed,
            st.stats.truncated,
            st.stats.lost
        ),
        (1, 1, 1, 0)
    );
    // Seq 2 was salvaged; seq 3 shows as lost once seq 4 arrives.
    st.ingest(&seq_packet(Some(4)), false, &mut |_: &LoggedPacket<'_>| {});
    assert_eq!((st.stats.received, st.stats.lost), (2, 1));
}

#[test]
fn control_messages_and_strangers() {
    let mut err = (-(Errno::ENOENT as i32)).to_ne_bytes().to_vec();
    err.extend_from_slice(&[0; 16]);
    let mut ack = 0i32.to_ne_bytes().to_vec();
    ack.extend_from_slice(&[0; 16]);
    // control_msg writes an nfgenmsg; NLMSG_ERROR has none: build by hand.
    let nlerr = |body: &[u8]| {
        let mut m = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m
    };
    let d = concat(&[
        &control_msg(NLMSG_NOOP, &[]),
        &nlerr(&err),
        &nlerr(&ack),
        &control_msg(0x0401, &[]), // NFULNL_MSG_CONFIG: the kernel never sends it
        &seq_packet(Some(0)),
        &control_msg(NLMSG_DONE, &[]),
    ]);
    let (st, seen) = ingest_all(&[&d]);
    assert_eq!(seen.len(), 1);
    assert_eq!((st.stats.netlink_errors, st.stats.malformed), (1, 1));
    let decoded: Vec<_> = decode_datagram(&d).collect();
    assert_eq!(decoded.len(), 2);
    assert_eq!(decoded[0], Err(DecodeError::NotPacket(0x0401)));
    assert!(decoded[1].is_ok());
}

#[test]
fn garbage_never_panics_the_counting() {
    let mut st = State::default();
    let mut buf = DGRAM_THREE.to_vec();
    for i in 0..buf.len() {
        let keep = buf[i];
        for v in [0u8, 1, 0x7f, 0xff] {
            buf[i] = v;
            st.ingest(&buf, i % 2 == 0, &mut |p: &LoggedPacket<'_>| {
                assert!(p.payload.len() <= DGRAM_THREE.len());
            });
        }
        buf[i] = keep;
    }
    assert!(st.stats.malformed > 0);
    assert_eq!(st.stats.datagrams, 4 * DGRAM_THREE.len() as u64);
}

#[test]
fn ip_len_reads_the_ip_header() {
    assert_eq!(ip_len(0x0800, &IP4_UDP), Some(29));
    assert_eq!(ip_len(0x0800, &IP4_UDP[..3]), None);
    assert_eq!(ip_len(0x0800, &[0x45, 0, 0, 10]), None, "below the header");
    assert_eq!(
        ip_len(0x86dd, &IP4_UDP),
        None,
        "version and protocol disagree"
    );
    let mut v6 = [0u8; 40];
    v6[0] = 0x60;
    v6[5] = 8;
    assert_eq!(ip_len(0x86dd, &v6), Some(48));
    v6[5] = 0;
    assert_eq!(ip_len(0x86dd, &v6), None, "jumbogram");
    assert_eq!(ip_len(0x0800, &[]), None);
}

#[test]
fn config_defaults_validation_and_slot_size() {
    let c = LogConfig::new(5);
    assert_eq!(
        (c.copy_range, c.qthresh, c.timeout, c.seq),
        (256, 64, 10, true)
    );
    assert_eq!(c.flags(), NFULNL_CFG_F_SEQ);
    assert_eq!(c.slot_size(), 131_072);
    assert!(c.validate().is_ok());
    let big = LogConfig {
        nlbufsiz: 131_072,
        ..LogConfig::new(1)
    };
    assert_eq!(big.slot_size(), 262_144);
    let small_full = LogConfig {
        nlbufsiz: 4096,
        copy_range: 0,
        ..LogConfig::new(1)
    };
    assert_eq!(small_full.effective_copy_range(), MAX_COPY_RANGE);
    assert_eq!(small_full.slot_size(), 131_072);
    let small = LogConfig {
        nlbufsiz: 4096,
        ..LogConfig::new(1)
    };
    assert_eq!(small.slot_size(), 8192);
    for bad in [
        LogConfig {
            qthresh: 0,
            ..LogConfig::new(1)
        },
        LogConfig {
            nlbufsiz: 4095,
            ..LogConfig::new(1)
        },
        LogConfig {
            nlbufsiz: 131_073,
            ..LogConfig::new(1)
        },
        LogConfig {
            slots: 0,
            ..LogConfig::new(1)
        },
        LogConfig {
            slots: 65,
            ..LogConfig::new(1)
        },
    ] {
        assert!(
            matches!(bad.validate(), Err(NflogError::InvalidConfig(_))),
            "{bad:?}"
        );
    }
    let both = LogConfig {
        seq_global: true,
        ..LogConfig::new(1)
    };
    assert_eq!(both.flags(), NFULNL_CFG_F_SEQ | NFULNL_CFG_F_SEQ_GLOBAL);
}
