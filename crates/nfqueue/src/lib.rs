//! A pure-Rust NFQUEUE client: the kernel's `nfnetlink_queue` spoken over a
//! netlink socket, without libnetfilter_queue.
//!
//! A firewall rule such as
//! `iptables -I INPUT -p udp --dport 53 -j NFQUEUE --queue-num 7 --queue-bypass`
//! hands packets to user space; a [`Queue`] bound to queue 7 reads them in
//! batches and answers each with a [`Verdict`] (and optionally a new mark):
//!
//! ```no_run
//! use std::time::Duration;
//! use portcullis_nfqueue::{Queue, QueueConfig, Verdict};
//!
//! # fn main() -> Result<(), portcullis_nfqueue::NfqError> {
//! let mut q = Queue::open(&QueueConfig::new(7))?;
//! loop {
//!     if q.recv_batch(Some(Duration::from_millis(100)))? == 0 {
//!         continue; // timeout: check for shutdown here
//!     }
//!     q.decide_each(|p| {
//!         if p.payload.len() > 1200 { (Verdict::Drop, None) } else { (Verdict::Accept, Some(0x2a)) }
//!     });
//!     q.flush()?; // all verdicts of the batch in one send
//! }
//! # }
//! ```
//!
//! # Guarantees
//! - **Batching.** [`Queue::recv_batch`] waits for the first packet only and
//!   then takes everything queued on the socket, up to
//!   [`QueueConfig::batch`] packets, with one `recvmmsg` call;
//!   [`Queue::flush`] sends all buffered verdicts in one `send`, folding runs
//!   of equal verdicts into `NFQNL_MSG_VERDICT_BATCH` where that is exact.
//!   On the 2-core test machine (64-byte UDP, veth) this carried 200,000
//!   packets at 310-340k packets/s without a drop, where one `send` per
//!   verdict delivered 170-210k packets/s and the kernel dropped 40-60%.
//! - **Fail-open and GSO** are on by default ([`QueueConfig`]). Packets that
//!   fail-open lets through a full queue are counted nowhere by the kernel.
//! - **Overruns are counted, not fatal**: `ENOBUFS` shows up in
//!   [`QueueCounters::enobufs`]; the kernel's own drop counters are in
//!   [`queue_stats`].
//! - **Decoding never panics**: every length from the kernel is checked
//!   ([`Packet::decode`] is safe to fuzz).
//! - The setup asks for an acknowledgement and turns the kernel's answer
//!   into an [`NfqError`] that says what to do; verdicts are sent without
//!   acknowledgements, and the kernel's rare complaints about them are
//!   counted ([`QueueCounters::netlink_errors`]).
//!
//! # Network namespaces
//! A queue lives in the network namespace of the thread that calls
//! [`Queue::open`]; [`queue_stats`] reads the calling thread's namespace.
//!
//! # Not supported
//! Payload rewriting, conntrack attributes (the test machine's kernel lacks
//! `CONFIG_NETFILTER_NETLINK_GLUE_CT`), uid/gid and security contexts.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
pub mod inject;
mod msg;
mod queue;
mod stats;

pub use error::NfqError;
pub use inject::{InjectError, Responder};
pub use msg::{DecodeError, Hook, SkbInfo, Verdict, MAX_COPY_RANGE};
pub use queue::{HwAddr, Packet, Queue, QueueConfig, QueueCounters};
pub use stats::{parse_queue_stats, queue_stats, QueueStats};
