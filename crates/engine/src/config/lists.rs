//! Domain list files: hosts files, one name per line, and the domain rules
//! of adblock lists, told apart line by line (downloaded lists mix them).
//!
//! Per line, after trimming:
//! - blank, `#...`, `!...` (adblock comment) and `[...]` (adblock header):
//!   ignored;
//! - `||name^`: the name; `@@||name^`: an exception (the name goes to the
//!   allow side). Any other adblock syntax (`$modifiers`, paths, `##`
//!   cosmetic filters, wildcards) is not a plain domain rule: skipped;
//! - `ADDRESS name [name...]` (hosts): taken when ADDRESS is a sink
//!   (`0.0.0.0`, `::`, or loopback such as `127.0.0.1`, `::1`); a hosts line
//!   mapping a name to any other address is skipped, since it is not a
//!   block. A `#` after whitespace starts a comment;
//! - `name` alone: the name.
//!
//! Boilerplate names (`localhost`, `localhost.localdomain`, `local`,
//! `broadcasthost`, `ip6-*`, `0.0.0.0`...) are ignored silently wherever
//! they appear. Any other line that yields no valid name is *skipped*:
//! counted, the first few line numbers kept for `portcullis check`, never
//! an error. A line with several names keeps the good ones and counts as
//! skipped if one was bad.

use std::net::IpAddr;

use crate::rules::domains::{self, TableFull};
use crate::rules::ListFileCounts;

/// How many skipped line numbers are remembered per file.
pub const FIRST_SKIPPED: usize = 5;

/// What a line gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// A name for the list's own side.
    Name,
    /// An `@@||name^` exception: the allow side.
    Exception,
}

fn ignored_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.trim_end_matches('.'),
        "localhost"
            | "localhost.localdomain"
            | "localhost4"
            | "localhost4.localdomain4"
            | "localhost6"
            | "localhost6.localdomain6"
            | "local"
            | "broadcasthost"
            | "0.0.0.0"
    ) || n.starts_with("ip6-")
}

/// Parses `text`, handing each name (normalized) to `sink` with what kind
/// it is and its 1-based line number. Stops only if `sink` fails (the
/// domain table is full).
pub(crate) fn parse(
    text: &str,
    mut sink: impl FnMut(&[u8], Found, u32) -> Result<(), TableFull>,
) -> Result<ListFileCounts, TableFull> {
    let mut counts = ListFileCounts::default();
    let mut buf = Vec::with_capacity(domains::MAX_NAME_LEN);
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, line) in text.split('\n').enumerate() {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let t = line.trim();
        if t.is_empty() || t.starts_with(['#', '!', '[']) {
            continue;
        }
        let ok = if let Some(rest) = t.strip_prefix("@@||") {
            adblock(
                rest,
                &mut buf,
                |b| sink(b, Found::Exception, n),
                &mut counts.exceptions,
            )?
        } else if let Some(rest) = t.strip_prefix("||") {
            adblock(
                rest,
                &mut buf,
                |b| sink(b, Found::Name, n),
                &mut counts.names,
            )?
        } else {
            let t = strip_comment(t);
            let mut words = t.split_ascii_whitespace();
            let first = words.next().unwrap_or_default();
            // A zone (`fe80::1%lo0`) is not part of the address.
            let addr = first.split('%').next().unwrap_or_default();
            match addr.parse::<IpAddr>() {
                Ok(addr) => {
                    let sinkhole = addr.is_unspecified() || addr.is_loopback();
                    let mut any = false;
                    let mut bad = false;
                    for w in words {
                        if ignored_name(w) {
                            any = true;
                        } else if sinkhole && domains::normalize(w, &mut buf).is_ok() {
                            sink(&buf, Found::Name, n)?;
                            counts.names += 1;
                            any = true;
                        } else {
                            bad = true;
                        }
                    }
                    any && !bad
                }
                Err(_) => match words.next() {
                    None if ignored_name(first) => true,
                    None if domains::normalize(first, &mut buf).is_ok() => {
                        sink(&buf, Found::Name, n)?;
                        counts.names += 1;
                        true
                    }
                    _ => false,
                },
            }
        };
        if !ok {
            counts.skipped_lines += 1;
            if counts.first_skipped.len() < FIRST_SKIPPED {
                counts.first_skipped.push(n);
            }
        }
    }
    Ok(counts)
}

/// `name^` exactly (the part after `||` or `@@||`).
fn adblock(
    rest: &str,
    buf: &mut Vec<u8>,
    mut sink: impl FnMut(&[u8]) -> Result<(), TableFull>,
    count: &mut usize,
) -> Result<bool, TableFull> {
    let Some(name) = rest.strip_suffix('^') else {
        return Ok(false);
    };
    if name.starts_with("*.") || domains::normalize(name, buf).is_err() {
        return Ok(false);
    }
    sink(buf)?;
    *count += 1;
    Ok(true)
}

/// Cuts a `#` comment that follows whitespace (`0.0.0.0 ads.example # x`).
fn strip_comment(t: &str) -> &str {
    let b = t.as_bytes();
    for i in 1..b.len() {
        if b[i] == b'#' && b[i - 1].is_ascii_whitespace() {
            return t[..i].trim_end();
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> (Vec<(String, Found, u32)>, ListFileCounts) {
        let mut got = Vec::new();
        let counts = parse(text, |name, f, line| {
            got.push((String::from_utf8(name.to_vec()).unwrap(), f, line));
            Ok(())
        })
        .unwrap();
        (got, counts)
    }

    fn names(v: &[(String, Found, u32)]) -> Vec<&str> {
        v.iter().map(|(n, _, _)| n.as_str()).collect()
    }

    #[test]
    fn hosts_format() {
        let text = "# StevenBlack-style hosts\n\
                    127.0.0.1 localhost\n\
                    127.0.0.1 localhost.localdomain\n\
                    255.255.255.255 broadcasthost\n\
                    ::1 localhost ip6-localhost ip6-loopback\n\
                    fe80::1%lo0 localhost\n\
                    0.0.0.0 0.0.0.0\n\
                    0.0.0.0 Ads.Example.COM # inline comment\n\
                    0.0.0.0\tone.example two.example.\n\
                    :: v6sink.example\n\
                    127.0.0.1 loop.example\n\
                    192.168.1.5 myserver.lan\n\
                    0.0.0.0 good.example bad_name!.example\n\
                    0.0.0.0\n";
        let (got, c) = run(text);
        assert_eq!(
            names(&got),
            [
                "ads.example.com",
                "one.example",
                "two.example",
                "v6sink.example",
                "loop.example",
                "good.example"
            ]
        );
        assert_eq!(got[0].2, 8);
        assert!(got.iter().all(|(_, f, _)| *f == Found::Name));
        assert_eq!(c.names, 6);
        // 192.168.1.5 (a real mapping, not a block), a bad name, an address
        // alone. The boilerplate lines (broadcasthost, fe80::1%lo0) are not
        // skipped lines.
        assert_eq!(c.skipped_lines, 3);
        assert_eq!(c.first_skipped, vec![12, 13, 14]);
    }

    #[test]
    fn plain_format() {
        let text = "\u{feff}example.org\r\n*.wild.example\r\nTRAILING.example.\r\n\r\n# c\r\nnot a name\r\nlocalhost\r\nhttp://x.example/\r\n";
        let (got, c) = run(text);
        assert_eq!(
            names(&got),
            ["example.org", "wild.example", "trailing.example"]
        );
        assert_eq!((c.names, c.skipped_lines), (3, 2));
        assert_eq!(c.first_skipped, vec![6, 8]);
    }

    #[test]
    fn adblock_format() {
        let text = "[Adblock Plus 2.0]\n\
                    ! Title: test\n\
                    ||ads.example^\n\
                    @@||cdn.ads.example^\n\
                    ||tracker.example^$third-party\n\
                    @@||x.example^$important\n\
                    ||path.example/ads^\n\
                    example.com##.banner\n\
                    /banner[0-9]+/\n\
                    ||*.wild.example^\n\
                    ||UPPER.example^\n\
                    ||nocaret.example\n";
        let (got, c) = run(text);
        assert_eq!(
            got,
            vec![
                ("ads.example".to_string(), Found::Name, 3),
                ("cdn.ads.example".to_string(), Found::Exception, 4),
                ("upper.example".to_string(), Found::Name, 11),
            ]
        );
        assert_eq!((c.names, c.exceptions), (2, 1));
        assert_eq!(c.skipped_lines, 7);
        assert_eq!(c.first_skipped, vec![5, 6, 7, 8, 9]);
    }

    #[test]
    fn sink_failure_stops_parsing() {
        let r = parse("a.example\nb.example\n", |_, _, _| Err(TableFull));
        assert_eq!(r, Err(TableFull));
    }
}
