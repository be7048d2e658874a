//! DNS query decoding: just what a firewall needs to match a name.
//!
//! Guarantees:
//! - Names are folded to ASCII lower case, without the trailing dot, into a
//!   fixed 255-byte buffer: no allocation.
//! - Compression pointers must point strictly backwards, at most
//!   [`MAX_POINTERS`] are followed, and a name longer than 255 bytes on the
//!   wire is an error. A loop therefore ends in at most a few hundred reads.
//! - At most [`MAX_QUESTIONS`] questions are read from one message.
//!
//! [`nxdomain_response`] (and its TCP form) answers a query for a blocked
//! name with NXDOMAIN; its guarantees are on the function.

use std::fmt;

mod response;

pub use response::{
    nxdomain_response, nxdomain_response_tcp, EDNS_UDP_PAYLOAD_SIZE, MAX_RECORDS_SCANNED,
};

/// Compression pointers followed within one name before it is rejected.
pub const MAX_POINTERS: usize = 16;
/// Questions read from one message; more are ignored.
pub const MAX_QUESTIONS: usize = 4;
/// The DNS wire limit on a whole name (RFC 1035 §3.1).
pub const MAX_NAME_WIRE_LEN: usize = 255;

const HEADER_LEN: usize = 12;

/// Why a message is not a DNS query we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnsError {
    /// Shorter than its header or a name/question runs past the end.
    Truncated,
    /// QR bit set: a response, not a query.
    NotQuery,
    /// No question.
    NoQuestion,
    /// A label type other than a plain label or a pointer (0x40/0x80
    /// types), or a label holding a `.` (which would make suffix matching
    /// ambiguous; no real host name has one).
    BadLabel,
    /// A pointer that does not point backwards, or too many pointers.
    PointerLoop,
    /// Longer than 255 bytes on the wire.
    NameTooLong,
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Truncated => "truncated",
            Self::NotQuery => "not a query",
            Self::NoQuestion => "no question",
            Self::BadLabel => "bad label type",
            Self::PointerLoop => "compression pointer loop",
            Self::NameTooLong => "name too long",
        })
    }
}

impl std::error::Error for DnsError {}

/// A domain name in presentation form, lower case, no trailing dot; the root
/// is the empty name. Label bytes are kept as they are apart from ASCII case
/// folding; a label never holds a `.` (the decoder rejects it).
#[derive(Clone, Copy)]
pub struct Name {
    buf: [u8; MAX_NAME_WIRE_LEN],
    len: u8,
}

impl Name {
    pub const fn root() -> Self {
        Self {
            buf: [0; MAX_NAME_WIRE_LEN],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// The name as text; bytes that are not UTF-8 are replaced.
    pub fn to_text(&self) -> String {
        String::from_utf8_lossy(self.as_bytes()).into_owned()
    }

    /// The name and each parent, longest first: `a.b.c`, `b.c`, `c`.
    /// Split at the dots this decoder wrote between labels.
    pub fn suffixes(&self) -> Suffixes<'_> {
        Suffixes {
            name: self.as_bytes(),
            next: Some(0),
        }
    }

    fn push_label(&mut self, label: &[u8]) -> Result<(), DnsError> {
        let dot = usize::from(self.len != 0);
        let need = usize::from(self.len) + dot + label.len();
        // Presentation length of a 255-byte wire name is at most 253.
        if need > MAX_NAME_WIRE_LEN - 2 {
            return Err(DnsError::NameTooLong);
        }
        if label.contains(&b'.') {
            return Err(DnsError::BadLabel);
        }
        let mut at = usize::from(self.len);
        if dot == 1 {
            self.buf[at] = b'.';
            at += 1;
        }
        for (d, s) in self.buf[at..at + label.len()].iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        self.len = need as u8;
        Ok(())
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Name {}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({:?})", self.to_text())
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.as_bytes()))
    }
}

/// Iterator from [`Name::suffixes`]. Label boundaries are exactly the dots
/// between labels: the decoder rejects labels that contain a `.`.
#[derive(Debug)]
pub struct Suffixes<'a> {
    name: &'a [u8],
    next: Option<usize>,
}

impl<'a> Iterator for Suffixes<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.next?;
        if start >= self.name.len() {
            self.next = None;
            return None;
        }
        let rest = &self.name[start..];
        self.next = rest.iter().position(|&b| b == b'.').map(|i| start + i + 1);
        Some(rest)
    }
}

/// One question of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    pub name: Name,
    pub qtype: u16,
    pub qclass: u16,
}

/// The header fields a firewall reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub flags: u16,
    pub qdcount: u16,
}

impl Header {
    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0x0f) as u8
    }
}

/// A decoded query: header and up to [`MAX_QUESTIONS`] questions.
#[derive(Debug, Clone)]
pub struct Query {
    pub header: Header,
    questions: [Option<Question>; MAX_QUESTIONS],
    /// Byte offset just past the last question read: where an answer
    /// section would start.
    pub questions_end: usize,
}

impl Query {
    pub fn questions(&self) -> impl Iterator<Item = &Question> {
        self.questions.iter().flatten()
    }

    pub fn first(&self) -> Option<&Question> {
        self.questions[0].as_ref()
    }
}

/// Strips the 2-byte length prefix of DNS over TCP (RFC 1035 §4.2.2) and
/// returns the message, or as much of it as this segment holds.
pub fn tcp_message(payload: &[u8]) -> Option<&[u8]> {
    let len = u16::from_be_bytes([*payload.first()?, *payload.get(1)?]);
    let body = &payload[2..];
    Some(&body[..body.len().min(usize::from(len))])
}

/// Decodes a DNS query message (the UDP payload, or the TCP payload after
/// [`tcp_message`]).
pub fn parse_query(msg: &[u8]) -> Result<Query, DnsError> {
    if msg.len() < HEADER_LEN {
        return Err(DnsError::Truncated);
    }
    let header = Header {
        id: u16::from_be_bytes([msg[0], msg[1]]),
        flags: u16::from_be_bytes([msg[2], msg[3]]),
        qdcount: u16::from_be_bytes([msg[4], msg[5]]),
    };
    if header.is_response() {
        return Err(DnsError::NotQuery);
    }
    if header.qdcount == 0 {
        return Err(DnsError::NoQuestion);
    }
    let mut q = Query {
        header,
        questions: [None; MAX_QUESTIONS],
        questions_end: HEADER_LEN,
    };
    let mut at = HEADER_LEN;
    for slot in q
        .questions
        .iter_mut()
        .take(usize::from(header.qdcount).min(MAX_QUESTIONS))
    {
        let (name, after) = read_name(msg, at)?;
        let fixed = msg.get(after..after + 4).ok_or(DnsError::Truncated)?;
        *slot = Some(Question {
            name,
            qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
            qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
        });
        at = after + 4;
        q.questions_end = at;
    }
    Ok(q)
}

/// Reads the name at `start`; returns it and the offset just past it (past
/// the first pointer if the name is compressed).
pub fn read_name(msg: &[u8], start: usize) -> Result<(Name, usize), DnsError> {
    let mut name = Name::root();
    let mut at = start;
    let mut end_after = None;
    let mut pointers = 0;
    let mut wire_len = 0usize;
    loop {
        let len = *msg.get(at).ok_or(DnsError::Truncated)?;
        match len & 0xc0 {
            0x00 => {
                wire_len += usize::from(len) + 1;
                if wire_len > MAX_NAME_WIRE_LEN {
                    return Err(DnsError::NameTooLong);
                }
                if len == 0 {
                    return Ok((name, end_after.unwrap_or(at + 1)));
                }
                let label = msg
                    .get(at + 1..at + 1 + usize::from(len))
                    .ok_or(DnsError::Truncated)?;
                name.push_label(label)?;
                at += 1 + usize::from(len);
            }
            0xc0 => {
                let lo = *msg.get(at + 1).ok_or(DnsError::Truncated)?;
                let target = usize::from(u16::from_be_bytes([len & 0x3f, lo]));
                pointers += 1;
                // Strictly backwards and bounded: no loop can last.
                if target >= at || pointers > MAX_POINTERS {
                    return Err(DnsError::PointerLoop);
                }
                end_after.get_or_insert(at + 2);
                at = target;
            }
            _ => return Err(DnsError::BadLabel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name_wire: &[u8]) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(name_wire);
        m.extend_from_slice(&[0, 1, 0, 1]);
        m
    }

    #[test]
    fn mixed_case_name_is_folded() {
        let m = query(b"\x03WwW\x07ExAmPlE\x03CoM\x00");
        let q = parse_query(&m).unwrap();
        let first = q.first().unwrap();
        assert_eq!(first.name.as_bytes(), b"www.example.com");
        assert_eq!((first.qtype, first.qclass), (1, 1));
        assert_eq!(q.header.id, 0x1234);
        assert_eq!(q.questions_end, m.len());
        let s: Vec<_> = first.name.suffixes().collect();
        assert_eq!(s, vec![&b"www.example.com"[..], b"example.com", b"com"]);
    }

    #[test]
    fn root_name() {
        let q = parse_query(&query(b"\x00")).unwrap();
        assert_eq!(q.first().unwrap().name.as_bytes(), b"");
        assert_eq!(q.first().unwrap().name.suffixes().count(), 0);
    }

    #[test]
    fn response_is_not_a_query() {
        let mut m = query(b"\x01a\x00");
        m[2] |= 0x80;
        assert_eq!(parse_query(&m).unwrap_err(), DnsError::NotQuery);
    }

    #[test]
    fn backward_pointer_is_followed() {
        // question 1: a.example (at 12), question 2: b + pointer to "example" at 14
        let mut m = vec![0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(b"\x01a\x07example\x00\x00\x01\x00\x01");
        m.extend_from_slice(b"\x01b\xc0\x0e\x00\x01\x00\x01");
        let q = parse_query(&m).unwrap();
        let names: Vec<_> = q.questions().map(|q| q.name.to_text()).collect();
        assert_eq!(names, ["a.example", "b.example"]);
        assert_eq!(q.questions_end, m.len());
    }

    #[test]
    fn self_and_forward_pointers_are_loops() {
        let m = query(b"\xc0\x0c");
        assert_eq!(parse_query(&m).unwrap_err(), DnsError::PointerLoop);
        let m = query(b"\xc0\x20");
        assert_eq!(parse_query(&m).unwrap_err(), DnsError::PointerLoop);
    }

    #[test]
    fn overlong_name_is_rejected() {
        let mut wire = Vec::new();
        for _ in 0..5 {
            wire.push(63);
            wire.extend_from_slice(&[b'a'; 63]);
        }
        wire.push(0);
        assert_eq!(
            parse_query(&query(&wire)).unwrap_err(),
            DnsError::NameTooLong
        );
    }

    #[test]
    fn tcp_prefix() {
        let m = query(b"\x01a\x00");
        let mut t = (m.len() as u16).to_be_bytes().to_vec();
        t.extend_from_slice(&m);
        t.extend_from_slice(b"trailing");
        assert_eq!(tcp_message(&t).unwrap(), &m[..]);
        assert_eq!(tcp_message(&[0]), None);
    }

    #[test]
    fn a_dot_inside_a_label_is_rejected() {
        // One label "tracker.example" under "good": not tracker.example.
        let m = query(b"\x0ftracker.example\x04good\x00");
        assert_eq!(parse_query(&m).unwrap_err(), DnsError::BadLabel);
    }

    #[test]
    fn extended_label_types_are_rejected() {
        assert_eq!(
            parse_query(&query(b"\x41a\x00")).unwrap_err(),
            DnsError::BadLabel
        );
    }
}
