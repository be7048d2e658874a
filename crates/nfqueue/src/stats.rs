//! `/proc/net/netfilter/nfnetlink_queue`: the kernel's per-queue counters.

use std::io;

/// One line of `/proc/net/netfilter/nfnetlink_queue` (one bound queue in the
/// current network namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue number.
    pub queue_number: u16,
    /// Netlink port id of the listener (usually its pid).
    pub peer_portid: u32,
    /// Packets waiting for a verdict now.
    pub queue_total: u32,
    /// 0 none, 1 meta, 2 packet.
    pub copy_mode: u8,
    /// Bytes of each packet copied to the listener.
    pub copy_range: u32,
    /// Packets dropped because the queue was full (`max_len`), without fail-open.
    pub queue_dropped: u32,
    /// Packets dropped because the listener's socket buffer was full, without fail-open.
    pub user_dropped: u32,
    /// The last packet id handed out.
    pub id_sequence: u32,
}

/// Paths tried in order. `thread-self` first: a thread that entered another
/// network namespace with `setns` sees that namespace's file there, while
/// `/proc/net` follows the process's main thread.
const PATHS: [&str; 2] = [
    "/proc/thread-self/net/netfilter/nfnetlink_queue",
    "/proc/net/netfilter/nfnetlink_queue",
];

/// The counters of every queue bound in the calling thread's network namespace.
///
/// The file exists only while the `nfnetlink_queue` module is loaded; its
/// absence is an [`io::ErrorKind::NotFound`] error.
pub fn queue_stats() -> io::Result<Vec<QueueStats>> {
    let mut last = None;
    for path in PATHS {
        match std::fs::read_to_string(path) {
            Ok(text) => return parse_queue_stats(&text),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotFound)))
}

/// Parse the text of `/proc/net/netfilter/nfnetlink_queue`.
///
/// Each line is `queue_number peer_portid queue_total copy_mode copy_range
/// queue_dropped user_dropped id_sequence 1` (the last field is constant).
pub fn parse_queue_stats(text: &str) -> io::Result<Vec<QueueStats>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> io::Result<QueueStats> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected nfnetlink_queue line: {line:?}"),
        )
    };
    let mut f = line.split_whitespace();
    let mut next_u32 =
        || -> io::Result<u32> { f.next().and_then(|s| s.parse().ok()).ok_or_else(bad) };
    Ok(QueueStats {
        queue_number: u16::try_from(next_u32()?).map_err(|_| bad())?,
        peer_portid: next_u32()?,
        queue_total: next_u32()?,
        copy_mode: u8::try_from(next_u32()?).map_err(|_| bad())?,
        copy_range: next_u32()?,
        queue_dropped: next_u32()?,
        user_dropped: next_u32()?,
        id_sequence: next_u32()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_format() {
        // Format of seq_show(): "%5u %6u %5u %1u %5u %5u %5u %8u %2d\n".
        let text = "    7  12345     3 2 65531     0    17   200000  1\n    9   4242     0 2   128     5     0        4  1\n";
        let s = parse_queue_stats(text).unwrap();
        assert_eq!(
            s,
            vec![
                QueueStats {
                    queue_number: 7,
                    peer_portid: 12345,
                    queue_total: 3,
                    copy_mode: 2,
                    copy_range: 65531,
                    queue_dropped: 0,
                    user_dropped: 17,
                    id_sequence: 200_000,
                },
                QueueStats {
                    queue_number: 9,
                    peer_portid: 4242,
                    queue_total: 0,
                    copy_mode: 2,
                    copy_range: 128,
                    queue_dropped: 5,
                    user_dropped: 0,
                    id_sequence: 4,
                },
            ]
        );
    }

    #[test]
    fn empty_file_is_no_queues() {
        assert!(parse_queue_stats("").unwrap().is_empty());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_queue_stats("    7  12345 x\n").is_err());
        assert!(parse_queue_stats("70000 1 1 1 1 1 1 1 1\n").is_err());
    }
}
