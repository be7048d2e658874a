//! `/proc/net/netfilter/nfnetlink_log`: the bound groups of the calling
//! thread's network namespace, as the kernel's `seq_show` prints them.

/// One bound NFLOG group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogInstance {
    /// The group number.
    pub group: u16,
    /// Netlink port id of the socket that bound it.
    pub portid: u32,
    /// Packets waiting in the kernel's current datagram.
    pub qlen: u32,
    /// Copy mode (2: packet, 1: metadata only, 0: none).
    pub copy_mode: u8,
    /// Bytes copied per packet.
    pub copy_range: u32,
    /// Flush timeout in 1/100 s.
    pub flush_timeout: u32,
}

/// Parse the proc file's text; lines that do not parse are skipped.
pub fn parse_log_instances(text: &str) -> Vec<LogInstance> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let mut next = || f.next();
            Some(LogInstance {
                group: next()?.parse().ok()?,
                portid: next()?.parse().ok()?,
                qlen: next()?.parse().ok()?,
                copy_mode: next()?.parse().ok()?,
                copy_range: next()?.parse().ok()?,
                flush_timeout: next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The bound groups of the calling thread's network namespace.
pub fn log_instances() -> std::io::Result<Vec<LogInstance>> {
    // /proc/net follows the calling thread's namespace via /proc/thread-self.
    let text = std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_log")
        .or_else(|_| std::fs::read_to_string("/proc/net/netfilter/nfnetlink_log"))?;
    Ok(parse_log_instances(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seq_show_lines() {
        // "%5u %6u %5u %1u %5u %6u %2u\n"
        let text =
            "    7  12345     0 2   256     10  1\n   65      9     3 2 65531    100  2\ngarbage\n";
        let v = parse_log_instances(text);
        assert_eq!(
            v,
            vec![
                LogInstance {
                    group: 7,
                    portid: 12345,
                    qlen: 0,
                    copy_mode: 2,
                    copy_range: 256,
                    flush_timeout: 10
                },
                LogInstance {
                    group: 65,
                    portid: 9,
                    qlen: 3,
                    copy_mode: 2,
                    copy_range: 65531,
                    flush_timeout: 100
                },
            ]
        );
    }
}
