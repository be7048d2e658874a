//! Decisions and the decision stream (`GET /v1/decisions/stream`), parsed
//! as untrusted input.
//!
//! Guarantees of [`parse_stream`]:
//! - It never panics, whatever the bytes.
//! - A document that is not a stream (not JSON, not an object, neither
//!   `new` nor `deleted` present, a list that is neither `null` nor an
//!   array, a key given twice) is an error, never an empty [`Delta`]: an
//!   empty delta tells the bouncer "nothing changed", which a broken or
//!   hostile answer must not be able to say.
//! - `null` lists are empty lists (CrowdSec sends `null`, not `[]`).
//! - One bad item costs only itself. Items of another scope than `Ip` or
//!   `Range` or of an unknown type are skipped and counted; items with a
//!   missing or wrongly typed field, an address or CIDR that does not
//!   parse, or a bad duration are rejected and counted by reason
//!   ([`ParseStats`]), with the first rejection described for the log.
//! - Bounded: at most [`Limits::max_decisions`] decisions are kept from each
//!   list; items beyond are not even built. With [`Overflow::Truncate`] (the
//!   default) they are counted in [`ParseStats::truncated`] and the delta is
//!   marked [`Delta::truncated`]; with [`Overflow::Error`] the whole answer
//!   is refused ([`ParseError::TooManyDecisions`]).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::duration::parse_go_duration;

/// What a decision applies to. Only these two reach a firewall; CrowdSec's
/// other scopes (`Country`, `AS`, `Username`, ...) are skipped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One address (`"Ip"`): the value is a /32 or /128.
    Ip,
    /// A CIDR range (`"Range"`).
    Range,
}

impl Scope {
    /// The name CrowdSec uses (`"Ip"`, `"Range"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ip => "Ip",
            Scope::Range => "Range",
        }
    }
}

/// The decision's remedy (`type` in CrowdSec's JSON). Other types are
/// skipped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// `"ban"`: drop the peer's traffic.
    Ban,
    /// `"captcha"`: meant for web bouncers; a firewall may ignore it.
    Captcha,
    /// `"throttle"`: meant for web bouncers.
    Throttle,
}

impl DecisionKind {
    /// The name CrowdSec uses.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Ban => "ban",
            DecisionKind::Captcha => "captcha",
            DecisionKind::Throttle => "throttle",
        }
    }
}

/// One decision as the stream delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The LAPI's decision id.
    pub id: i64,
    /// Who made it (`"cscli"`, `"crowdsec"`, `"CAPI"`, `"lists"`,
    /// `"portcullis"`, ...).
    pub origin: String,
    /// The scenario or reason (`"portcullis/port-scan"`, `"test"`, ...).
    pub scenario: String,
    /// `Ip` or `Range`.
    pub scope: Scope,
    /// The address (as a /32 or /128, IPv4-mapped IPv6 turned into IPv4)
    /// or the range (host bits cleared).
    pub value: IpNet,
    /// The remedy.
    pub kind: DecisionKind,
    /// Time left, measured by the LAPI when it answered; zero for a
    /// negative duration (expired or deleted decisions).
    pub duration: Duration,
}

/// Which list of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    /// `new`: decisions to apply.
    New,
    /// `deleted`: decisions to lift.
    Deleted,
}

impl fmt::Display for List {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            List::New => "new",
            List::Deleted => "deleted",
        })
    }
}

/// What to do when a list holds more than [`Limits::max_decisions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Keep the first `max_decisions`, count the rest in
    /// [`ParseStats::truncated`]. A truncated `new` list loses decisions
    /// until the next `startup=true` pull, which the caller should then
    /// schedule.
    #[default]
    Truncate,
    /// Refuse the whole answer with [`ParseError::TooManyDecisions`].
    Error,
}

/// Bounds on one stream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most decisions kept from each list (`new`, `deleted`).
    pub max_decisions: usize,
    /// What happens beyond.
    pub overflow: Overflow,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_decisions: 500_000,
            overflow: Overflow::Truncate,
        }
    }
}

/// Items that did not become decisions, by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Scope other than `Ip`/`Range` (skipped: not for a firewall).
    pub unknown_scope: u64,
    /// Type other than `ban`/`captcha`/`throttle` (skipped).
    pub unknown_kind: u64,
    /// Item not a JSON object (rejected).
    pub not_an_object: u64,
    /// A required field missing or of the wrong JSON type (rejected).
    pub bad_field: u64,
    /// `value` not an address (scope `Ip`) or CIDR (scope `Range`)
    /// (rejected).
    pub bad_value: u64,
    /// `duration` not a Go duration (rejected).
    pub bad_duration: u64,
    /// Beyond [`Limits::max_decisions`] (dropped, not parsed).
    pub truncated: u64,
    /// The first rejected item, described for an operator log (bounded).
    pub first_rejection: Option<String>,
}

impl ParseStats {
    /// Items rejected as malformed (not the skipped or truncated ones).
    pub fn rejected(&self) -> u64 {
        self.not_an_object + self.bad_field + self.bad_value + self.bad_duration
    }
}

/// One answer of the decision stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    /// Decisions to apply.
    pub new: Vec<Decision>,
    /// Decisions to lift. CrowdSec repeats deletions (a delta pull re-sends
    /// those of the last 2 s; a startup pull sends every deleted or expired
    /// decision still in its database): lifting an unknown one is a no-op.
    pub deleted: Vec<Decision>,
    /// Items skipped or rejected.
    pub stats: ParseStats,
}

impl Delta {
    /// Some items were dropped by the limit.
    pub fn truncated(&self) -> bool {
        self.stats.truncated > 0
    }
}

/// Why a stream answer was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not a decision stream document.
    #[error("not a decision stream: {0}")]
    Malformed(String),
    /// A list is longer than the limit and the policy is [`Overflow::Error`].
    #[error("the `{list}` list holds more than {max} decisions (the limit)")]
    TooManyDecisions {
        /// Which list.
        list: List,
        /// The limit.
        max: usize,
    },
}

/// Parses the body of `GET /v1/decisions/stream` (see the module docs).
pub fn parse_stream(body: &[u8], limits: &Limits) -> Result<Delta, ParseError> {
    let mut delta = Delta::default();
    let mut overflow = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    let result = de
        .deserialize_map(StreamVisitor {
            limits,
            delta: &mut delta,
            overflow: &mut overflow,
        })
        .and_then(|()| de.end());
    if let Some(list) = overflow {
        return Err(ParseError::TooManyDecisions {
            list,
            max: limits.max_decisions,
        });
    }
    result.map_err(|e| ParseError::Malformed(e.to_string()))?;
    Ok(delta)
}

struct StreamVisitor<'a> {
    limits: &'a Limits,
    delta: &'a mut Delta,
    overflow: &'a mut Option<List>,
}

impl<'de> Visitor<'de> for StreamVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with `new` and `deleted` lists")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (mut seen_new, mut seen_deleted) = (false, false);
        while let Some(key) = map.next_key::<String>()? {
            let list = match key.as_str() {
                "new" => List::New,
                "deleted" => List::Deleted,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let seen = match list {
                List::New => &mut seen_new,
                List::Deleted => &mut seen_deleted,
            };
            if std::mem::replace(seen, true) {
                return Err(de::Error::custom(format_args!("`{list}` given twice")));
            }
            let Delta {
                new,
                deleted,
                stats,
            } = &mut *self.delta;
            let out = match list {
                List::New => new,
                List::Deleted => deleted,
            };
            map.next_value_seed(ListSeed {
                list,
                limits: self.limits,
                out,
                stats,
                overflow: &mut *self.overflow,
            })?;
        }
        if !seen_new && !seen_deleted {
            return Err(de::Error::custom("neither `new` nor `deleted` present"));
        }
        Ok(())
    }
}

struct ListSeed<'a> {
    list: List,
    limits: &'a Limits,
    out: &'a mut Vec<Decision>,
    stats: &'a mut ParseStats,
    overflow: &'a mut Option<List>,
}

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: null or an array of decisions", self.list)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        loop {
            if self.out.len() >= self.limits.max_decisions {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    return Ok(());
                }
                if self.limits.overflow == Overflow::Error {
                    *self.overflow = Some(self.list);
                    return Err(de::Error::custom("too many decisions"));
                }
                self.stats.truncated += 1;
                continue;
            }
            let Some(item) = seq.next_element::<Value>()? else {
                return Ok(());
            };
            match decision_from_value(&item) {
                Ok(d) => self.out.push(d),
                Err(Skip::UnknownScope) => self.stats.unknown_scope += 1,
                Err(Skip::UnknownKind) => self.stats.unknown_kind += 1,
                Err(Skip::Rejected(reason, why)) => {
                    *match reason {
                        Reason::NotAnObject => &mut self.stats.not_an_object,
                        Reason::BadField => &mut self.stats.bad_field,
                        Reason::BadValue => &mut self.stats.bad_value,
                        Reason::BadDuration => &mut self.stats.bad_duration,
                    } += 1;
                    if self.stats.first_rejection.is_none() {
                        self.stats.first_rejection = Some(format!("{}[{index}]: {why}", self.list));
                    }
                }
            }
            index += 1;
        }
    }
}

#[derive(Debug)]
enum Reason {
    NotAnObject,
    BadField,
    BadValue,
    BadDuration,
}

#[derive(Debug)]
enum Skip {
    UnknownScope,
    UnknownKind,
    Rejected(Reason, String),
}

/// A value quoted for a log line: at most 64 characters.
fn quote(v: &str) -> String {
    let mut s: String = v.chars().take(64).collect();
    if s.len() < v.len() {
        s.push('…');
    }
    format!("{s:?}")
}

fn string_field<'a>(
    obj: &'a serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, Skip> {
    match obj.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Skip::Rejected(
            Reason::BadField,
            format!("`{name}` is not a string"),
        )),
        None => Err(Skip::Rejected(
            Reason::BadField,
            format!("`{name}` is missing"),
        )),
    }
}

fn decision_from_value(item: &Value) -> Result<Decision, Skip> {
    let Value::Object(obj) = item else {
        return Err(Skip::Rejected(
            Reason::NotAnObject,
            "not an object".to_owned(),
        ));
    };
    // Scope and type first: an item we would skip anyway is not rejected
    // for its other fields.
    let scope = match string_field(obj, "scope")? {
        s if s.eq_ignore_ascii_case("ip") => Scope::Ip,
        s if s.eq_ignore_ascii_case("range") => Scope::Range,
        _ => return Err(Skip::UnknownScope),
    };
    let kind = match string_field(obj, "type")? {
        "ban" => DecisionKind::Ban,
        "captcha" => DecisionKind::Captcha,
        "throttle" => DecisionKind::Throttle,
        _ => return Err(Skip::UnknownKind),
    };
    let id = match obj.get("id") {
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| {
            Skip::Rejected(Reason::BadField, format!("`id` {n} is not an integer"))
        })?,
        Some(_) => {
            return Err(Skip::Rejected(
                Reason::BadField,
                "`id` is not a number".to_owned(),
            ))
        }
        None => {
            return Err(Skip::Rejected(
                Reason::BadField,
                "`id` is missing".to_owned(),
            ))
        }
    };
    let origin = string_field(obj, "origin")?;
    let scenario = string_field(obj, "scenario")?;
    let raw_value = string_field(obj, "value")?;
    let value = parse_value(scope, raw_value).ok_or_else(|| {
        Skip::Rejected(
            Reason::BadValue,
            format!(
                "{} is not a valid {} value",
                quote(raw_value),
                scope.as_str()
            ),
        )
    })?;
    let raw_duration = string_field(obj, "duration")?;
    let duration = parse_go_duration(raw_duration).map_err(|e| {
        Skip::Rejected(
            Reason::BadDuration,
            format!("duration {}: {e}", quote(raw_duration)),
        )
    })?;
    Ok(Decision {
        id,
        origin: origin.to_owned(),
        scenario: scenario.to_owned(),
        scope,
        value,
        kind,
        duration: duration.remaining(),
    })
}

/// An `Ip` value is one address (IPv4-mapped IPv6 becomes IPv4); a `Range`
/// value is a CIDR (host bits cleared; IPv4-mapped IPv6 ranges are kept as
/// they are).
fn parse_value(scope: Scope, text: &str) -> Option<IpNet> {
    match scope {
        Scope::Ip => text
            .parse::<IpAddr>()
            .ok()
            .map(|a| IpNet::from(a.to_canonical())),
        Scope::Range => text.parse::<IpNet>().ok().map(|n| n.trunc()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Delta, ParseError> {
        parse_stream(s.as_bytes(), &Limits::default())
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    // Real answers of crowdsec 1.4.6 (CROWDSEC-NOTES.md §2).
    const EMPTY: &str = r#"{"deleted":null,"new":null}"#;
    const AFTER_ADD: &str = r#"{"deleted":null,
 "new":[{"duration":"59m59.713885051s","id":1,"origin":"cscli","scenario":"test",
         "scope":"Ip","type":"ban","value":"198.51.100.7"}]}"#;
    const AFTER_DELETE: &str = r#"{"deleted":[{"duration":"-9.907339ms","id":1,"origin":"cscli","scenario":"test",
             "scope":"Ip","type":"ban","value":"198.51.100.7"}],
 "new":null}"#;
    const BOTH: &str = r#"{"deleted":[{"duration":"-311.736491ms","id":1,"origin":"cscli","scenario":"test","scope":"Ip","type":"ban","value":"198.51.100.7"}],
 "new":[{"duration":"3h59m59.791607702s","id":2,"origin":"portcullis","scenario":"portcullis/port-scan","scope":"Ip","type":"ban","value":"198.51.100.9"}]}"#;

    #[test]
    fn real_answers() {
        assert_eq!(parse(EMPTY), Ok(Delta::default()));

        let d = parse(AFTER_ADD).unwrap();
        assert!(d.deleted.is_empty());
        assert_eq!(
            d.new,
            vec![Decision {
                id: 1,
                origin: "cscli".into(),
                scenario: "test".into(),
                scope: Scope::Ip,
                value: net("198.51.100.7/32"),
                kind: DecisionKind::Ban,
                duration: Duration::new(3599, 713_885_051),
            }]
        );
        assert_eq!(d.stats, ParseStats::default());

        let d = parse(AFTER_DELETE).unwrap();
        assert!(d.new.is_empty());
        assert_eq!(d.deleted.len(), 1);
        assert_eq!(d.deleted[0].duration, Duration::ZERO);
        assert_eq!(d.deleted[0].value, net("198.51.100.7/32"));

        let d = parse(BOTH).unwrap();
        assert_eq!(d.new[0].scenario, "portcullis/port-scan");
        assert_eq!(d.new[0].origin, "portcullis");
        assert_eq!(d.new[0].id, 2);
        assert_eq!(d.deleted[0].id, 1);
    }

    #[test]
    fn ranges_and_ipv6() {
        let d = parse(
            r#"{"new":[
            {"duration":"1h","id":3,"origin":"cscli","scenario":"s","scope":"Range","type":"ban","value":"203.0.113.0/24"},
            {"duration":"1h","id":4,"origin":"cscli","scenario":"s","scope":"Ip","type":"ban","value":"2001:db8::1"},
            {"duration":"1h","id":5,"origin":"cscli","scenario":"s","scope":"Range","type":"ban","value":"2001:db8:1::/48"},
            {"duration":"1h","id":6,"origin":"cscli","scenario":"s","scope":"Range","type":"ban","value":"203.0.113.77/24"},
            {"duration":"1h","id":7,"origin":"cscli","scenario":"s","scope":"Ip","type":"captcha","value":"::ffff:192.0.2.1"}
            ],"deleted":[]}"#,
        )
        .unwrap();
        let values: Vec<_> = d.new.iter().map(|d| d.value).collect();
        assert_eq!(
            values,
            [
                net("203.0.113.0/24"),
                net("2001:db8::1/128"),
                net("2001:db8:1::/48"),
                net("203.0.113.0/24"),
                net("192.0.2.1/32"),
            ]
        );
        assert_eq!(d.new[0].scope, Scope::Range);
        assert_eq!(d.new[4].kind, DecisionKind::Captcha);
    }

    #[test]
    fn skipped_and_rejected_items_are_counted() {
        let d = parse(
            r#"{"new":[
            {"duration":"1h","id":1,"origin":"o","scenario":"s","scope":"Country","type":"ban","value":"FR"},
            {"duration":"1h","id":2,"origin":"o","scenario":"s","scope":"Ip","type":"ratelimit","value":"192.0.2.1"},
            {"duration":"1h","id":3,"origin":"o","scenario":"s","scope":"Ip","type":"ban","value":"300.1.1.1"},
            {"duration":"1h","id":4,"origin":"o","scenario":"s","scope":"Range","type":"ban","value":"192.0.2.0/33"},
            {"duration":"1h","id":5,"origin":"o","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.0/24"},
            {"duration":"1 hour","id":6,"origin":"o","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.6"},
            {"duration":"1h","id":"7","origin":"o","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.7"},
            {"duration":"1h","id":8.5,"origin":"o","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.8"},
            {"duration":"1h","id":9,"origin":7,"scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.9"},
            {"duration":"1h","id":10,"origin":"o","scenario":"s","scope":"Ip","type":"ban"},
            {"duration":1,"id":11,"origin":"o","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.11"},
            {"duration":"1h","id":12,"origin":"o","scenario":"s","scope":null,"type":"ban","value":"192.0.2.12"},
            42, "x", null, [],
            {"duration":"1h","id":13,"origin":"o","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.13","extra":{"a":[1]}}
            ],"deleted":null}"#,
        )
        .unwrap();
        assert_eq!(d.new.len(), 1, "{d:?}");
        assert_eq!(d.new[0].id, 13);
        let s = &d.stats;
        assert_eq!(s.unknown_scope, 1);
        assert_eq!(s.unknown_kind, 1);
        assert_eq!(s.bad_value, 3);
        assert_eq!(s.bad_duration, 1);
        assert_eq!(s.bad_field, 6);
        assert_eq!(s.not_an_object, 4);
        assert_eq!(s.rejected(), 14);
        assert_eq!(
            s.first_rejection.as_deref(),
            Some(r#"new[2]: "300.1.1.1" is not a valid Ip value"#)
        );
    }

    #[test]
    fn malformed_documents_are_errors_not_empty_deltas() {
        for bad in [
            "",
            "null",
            "[]",
            "{}",
            r#"{"message":"access forbidden"}"#,
            r#"{"new":"198.51.100.7","deleted":null}"#,
            r#"{"new":{},"deleted":null}"#,
            r#"{"new":42}"#,
            r#"{"new":null,"new":[]}"#,
            r#"{"new":null,"deleted":null} trailing"#,
            r#"{"new":[{"id":1}"#,
            "\u{0}\u{ff}garbage",
        ] {
            assert!(
                matches!(parse(bad), Err(ParseError::Malformed(_))),
                "{bad:?} gave {:?}",
                parse(bad)
            );
        }
        // Extra keys are fine; one list alone is fine.
        assert_eq!(parse(r#"{"new":null,"extra":[1,2]}"#), Ok(Delta::default()));
        assert_eq!(parse(r#"{"new":[],"deleted":[]}"#), Ok(Delta::default()));
    }

    fn items(n: usize) -> String {
        let one = r#"{"duration":"1h","id":1,"origin":"o","scenario":"s","scope":"Ip","type":"ban","value":"192.0.2.1"}"#;
        vec![one; n].join(",")
    }

    #[test]
    fn bounded_truncate() {
        let limits = Limits {
            max_decisions: 10,
            overflow: Overflow::Truncate,
        };
        let doc = format!(r#"{{"new":[{}],"deleted":[{}]}}"#, items(25), items(3));
        let d = parse_stream(doc.as_bytes(), &limits).unwrap();
        assert_eq!(d.new.len(), 10);
        assert_eq!(d.deleted.len(), 3);
        assert_eq!(d.stats.truncated, 15);
        assert!(d.truncated());
    }

    #[test]
    fn bounded_error() {
        let limits = Limits {
            max_decisions: 10,
            overflow: Overflow::Error,
        };
        let doc = format!(r#"{{"deleted":[{}],"new":null}}"#, items(11));
        assert_eq!(
            parse_stream(doc.as_bytes(), &limits),
            Err(ParseError::TooManyDecisions {
                list: List::Deleted,
                max: 10
            })
        );
        let doc = format!(r#"{{"deleted":[{}],"new":null}}"#, items(10));
        assert_eq!(
            parse_stream(doc.as_bytes(), &limits).unwrap().deleted.len(),
            10
        );
    }

    #[test]
    fn huge_list_with_default_limits() {
        let doc = format!(r#"{{"new":[{}],"deleted":null}}"#, items(100_000));
        let d = parse(&doc).unwrap();
        assert_eq!(d.new.len(), 100_000);
        assert!(!d.truncated());
    }

    #[test]
    fn hostile_values_never_panic() {
        let long = "9".repeat(10_000);
        for v in [
            long.as_str(),
            "1.2.3.4/",
            "/8",
            "::/129",
            "1.2.3.4%eth0",
            "\u{202e}1.2.3.4",
            "",
        ] {
            for scope in ["Ip", "Range"] {
                let doc = serde_json::json!({"new": [{"duration": long, "id": u64::MAX, "origin": "o",
                    "scenario": "s", "scope": scope, "type": "ban", "value": v}], "deleted": null});
                let d = parse(&doc.to_string()).unwrap();
                assert!(d.new.is_empty());
                assert_eq!(d.stats.rejected(), 1);
                assert!(d.stats.first_rejection.as_ref().unwrap().len() < 200);
            }
        }
        // Deep nesting inside an item: serde_json's recursion limit makes
        // the document an error, not a panic or a stack overflow.
        let deep = format!(
            r#"{{"new":[{}{}]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(parse(&deep).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(&String::from_utf8_lossy(&bytes));
            let _ = parse_stream(&bytes, &Limits::default());
        }

        /// Real answers with one byte changed: an error or a delta, never a
        /// panic; and a delta only holds well-formed decisions.
        #[test]
        fn mutated_real_answers(which in 0usize..3, at in 0usize..400, byte in proptest::num::u8::ANY) {
            let mut doc = [AFTER_ADD, AFTER_DELETE, BOTH][which].as_bytes().to_vec();
            let at = at % doc.len();
            doc[at] = byte;
            if let Ok(d) = parse_stream(&doc, &Limits::default()) {
                for x in d.new.iter().chain(&d.deleted) {
                    proptest::prop_assert!(x.scope != Scope::Ip || x.value.prefix_len() == x.value.max_prefix_len());
                }
            }
        }
    }
}
