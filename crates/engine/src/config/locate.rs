//! Maps JSON paths (`block.ip[3]`, `scan.slow.window`) back to lines of the
//! original text, and finds duplicate keys, which `serde_json::Value` would
//! otherwise merge silently (the last one wins).
//!
//! A tiny tokenizer: it walks strings, numbers, literals, objects and arrays
//! without building anything, tracking the path of the value it is on. It
//! assumes text that `serde_json` already accepted; on anything else it
//! stops and answers `None` for what it had not found yet. Recursion is
//! bounded by [`MAX_DEPTH`] (serde_json itself stops at 128).

use std::collections::HashMap;

const MAX_DEPTH: usize = 256;

/// The 1-based line where the value at `path` (`block.ip[3]`,
/// `scan.slow.window`) starts in the JSON `text`, if the path exists.
/// `""` is the whole document.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    positions(text, &[path])
        .pop()
        .flatten()
        .map(|(_, line)| line)
}

/// [`line_of`] for many paths in one walk of the text.
#[cfg(test)]
pub(crate) fn lines_of(text: &str, paths: &[&str]) -> Vec<Option<usize>> {
    positions(text, paths)
        .into_iter()
        .map(|p| p.map(|(_, line)| line))
        .collect()
}

/// `(byte offset, line)` of the values at `paths`, in one walk.
pub(crate) fn positions(text: &str, paths: &[&str]) -> Vec<Option<(usize, usize)>> {
    let mut w = Walker::new(text);
    for p in paths {
        w.wanted.insert((*p).to_string(), None);
    }
    w.run();
    paths
        .iter()
        .map(|p| {
            w.wanted
                .get(*p)
                .copied()
                .flatten()
                .map(|off| (off, w.line_at(off)))
        })
        .collect()
}

/// Keys that appear twice in one object: `(path of the repeated key, line
/// of its second appearance)`.
pub(crate) fn duplicate_keys(text: &str) -> Vec<(String, usize)> {
    let mut w = Walker::new(text);
    w.run();
    let dups = std::mem::take(&mut w.dups);
    dups.into_iter()
        .map(|(path, off)| (path, w.line_at(off)))
        .collect()
}

struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
    path: String,
    /// Path -> byte offset of its value, once found.
    wanted: HashMap<String, Option<usize>>,
    dups: Vec<(String, usize)>,
    newlines: Vec<usize>,
}

impl<'a> Walker<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            b: text.as_bytes(),
            pos: 0,
            path: String::new(),
            wanted: HashMap::new(),
            dups: Vec::new(),
            newlines: Vec::new(),
        }
    }

    fn run(&mut self) {
        self.newlines = self
            .b
            .iter()
            .enumerate()
            .filter(|&(_, &c)| c == b'\n')
            .map(|(i, _)| i)
            .collect();
        let _ = self.value(0);
    }

    fn line_at(&self, off: usize) -> usize {
        self.newlines.partition_point(|&n| n < off) + 1
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek()? == c).then(|| self.pos += 1)
    }

    /// Reads a string at `pos` and returns it decoded.
    fn string(&mut self) -> Option<String> {
        if self.peek()? != b'"' {
            return None;
        }
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let c = self.peek()?;
            self.pos += 1;
            match c {
                b'"' => return Some(String::from_utf8_lossy(&out).into_owned()),
                b'\\' => {
                    let e = self.peek()?;
                    self.pos += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return None,
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let s = self.b.get(self.pos..self.pos + 4)?;
        let v = u32::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()?;
        self.pos += 4;
        Some(v)
    }

    fn unicode_escape(&mut self) -> Option<char> {
        let hi = self.hex4()?;
        if (0xd800..0xdc00).contains(&hi) && self.b.get(self.pos..self.pos + 2) == Some(b"\\u") {
            let save = self.pos;
            self.pos += 2;
            let lo = self.hex4()?;
            if (0xdc00..0xe000).contains(&lo) {
                let c = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
                return Some(char::from_u32(c).unwrap_or('\u{fffd}'));
            }
            self.pos = save;
        }
        Some(char::from_u32(hi).unwrap_or('\u{fffd}'))
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        if let Some(slot) = self.wanted.get_mut(self.path.as_str()) {
            slot.get_or_insert(self.pos);
        }
        match self.peek()? {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => self.string().map(drop),
            _ => {
                let start = self.pos;
                while matches!(self.peek(), Some(c) if !matches!(c, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r'))
                {
                    self.pos += 1;
                }
                (self.pos > start).then_some(())
            }
        }
    }

    fn object(&mut self, depth: usize) -> Option<()> {
        self.pos += 1;
        self.ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(());
        }
        let mut seen: Vec<String> = Vec::new();
        loop {
            self.ws();
            let key_at = self.pos;
            let key = self.string()?;
            self.eat(b':')?;
            let len = self.path.len();
            if !self.path.is_empty() {
                self.path.push('.');
            }
            self.path.push_str(&key);
            if seen.contains(&key) {
                self.dups.push((self.path.clone(), key_at));
            } else {
                seen.push(key);
            }
            self.value(depth + 1)?;
            self.path.truncate(len);
            self.ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        self.pos += 1;
        self.ws();
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(());
        }
        let mut i = 0usize;
        loop {
            let len = self.path.len();
            self.path.push('[');
            self.path.push_str(&i.to_string());
            self.path.push(']');
            self.value(depth + 1)?;
            self.path.truncate(len);
            i += 1;
            self.ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{
  "block": {
    "ip": ["192.0.2.1",
           "300.1.1.1",
      "10.0.0.1/8"],
    "port": [80, "6000-6100"]
  },
  "rules": [
    {"action": "block", "port": ["22"]},
    {
      "action": "allow",
      "ip": []
    }
  ],
  "k\"ey": {"x": {"y": [[1, 2], [3,
     4]]}},
  "scan": {"window": "10s", "slow": {"window": "10m"}}
}"#;

    #[test]
    fn paths_map_to_lines() {
        assert_eq!(line_of(DOC, ""), Some(1));
        assert_eq!(line_of(DOC, "block"), Some(2));
        assert_eq!(line_of(DOC, "block.ip"), Some(3));
        assert_eq!(line_of(DOC, "block.ip[0]"), Some(3));
        assert_eq!(line_of(DOC, "block.ip[1]"), Some(4));
        assert_eq!(line_of(DOC, "block.ip[2]"), Some(5));
        assert_eq!(line_of(DOC, "block.port[1]"), Some(6));
        assert_eq!(line_of(DOC, "rules[0]"), Some(9));
        assert_eq!(line_of(DOC, "rules[0].port[0]"), Some(9));
        assert_eq!(line_of(DOC, "rules[1]"), Some(10));
        assert_eq!(line_of(DOC, "rules[1].ip"), Some(12));
        assert_eq!(line_of(DOC, "k\"ey.x.y[1][1]"), Some(16));
        assert_eq!(line_of(DOC, "scan.slow.window"), Some(17));
    }

    #[test]
    fn missing_paths_are_none() {
        assert_eq!(line_of(DOC, "block.ip[3]"), None);
        assert_eq!(line_of(DOC, "allow"), None);
        assert_eq!(line_of(DOC, "rules[1].ip[0]"), None);
        assert_eq!(line_of("{\"a\": ", "a"), Some(1));
        assert_eq!(line_of("not json", "a"), None);
    }

    #[test]
    fn many_paths_in_one_walk() {
        assert_eq!(
            lines_of(DOC, &["block.ip[2]", "nope", "scan.window", "block.ip[2]"]),
            vec![Some(5), None, Some(17), Some(5)]
        );
    }

    #[test]
    fn unicode_escapes_in_keys() {
        let doc = "{\n\"\\u00e9t\\u00e9\": {\n\"\\ud83d\\ude00\": 1}}";
        assert_eq!(line_of(doc, "été.😀"), Some(3));
    }

    #[test]
    fn duplicate_keys_are_found() {
        let doc = "{\"block\": {\"ip\": [], \"ip\": []},\n \"block\": {}}";
        assert_eq!(
            duplicate_keys(doc),
            vec![("block.ip".to_string(), 1), ("block".to_string(), 2)]
        );
        assert!(duplicate_keys(DOC).is_empty());
    }
}
