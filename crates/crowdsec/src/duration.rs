//! Go duration strings (`time.ParseDuration`), as CrowdSec writes them.
//!
//! The LAPI sends a decision's remaining time as Go formats a
//! `time.Duration`: `"3h59m59.791607702s"`, `"921.633358ms"`, and negative
//! for expired or deleted decisions (`"-9.907339ms"`). [`parse_go_duration`]
//! accepts exactly Go's grammar (sign, then one or more decimal numbers each
//! with a unit `ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`; a bare `0`) and
//! Go's range (at most `i64::MAX` nanoseconds, about 292 years). It never
//! panics and reads at most [`MAX_LEN`] bytes.

use std::time::Duration;

/// Longest duration string accepted (Go's longest formatted duration is 24
/// bytes; anything much longer is not one).
pub const MAX_LEN: usize = 64;

/// A parsed Go duration: a magnitude and a sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration {
    /// The string started with `-` (and was not zero).
    pub negative: bool,
    /// The absolute value.
    pub magnitude: Duration,
}

impl GoDuration {
    /// Time left: the magnitude, or zero when negative (already expired).
    pub fn remaining(&self) -> Duration {
        if self.negative {
            Duration::ZERO
        } else {
            self.magnitude
        }
    }
}

/// Why a duration string is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Empty string.
    #[error("empty duration")]
    Empty,
    /// Longer than [`MAX_LEN`].
    #[error("duration longer than {MAX_LEN} bytes")]
    TooLong,
    /// Not Go's grammar (a number without unit, an unknown unit, ...).
    #[error("not a Go duration")]
    Syntax,
    /// More than `i64::MAX` nanoseconds.
    #[error("duration out of range")]
    Overflow,
}

const MAX_NANOS: u128 = i64::MAX as u128;

/// Parses a Go duration string (see the module docs).
pub fn parse_go_duration(text: &str) -> Result<GoDuration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.len() > MAX_LEN {
        return Err(DurationError::TooLong);
    }
    let (negative, mut rest) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(GoDuration {
            negative: false,
            magnitude: Duration::ZERO,
        });
    }
    if rest.is_empty() {
        return Err(DurationError::Syntax);
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        // Integer part.
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after) = rest.split_at(int_len);
        rest = after;
        // Fraction.
        let mut frac_digits = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            let (f, after) = after_dot.split_at(frac_len);
            frac_digits = f;
            rest = after;
        }
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(DurationError::Syntax);
        }
        // Unit: everything up to the next digit or dot.
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let (unit, after) = rest.split_at(unit_len);
        rest = after;
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return Err(DurationError::Syntax),
        };
        let mut int: u128 = 0;
        for d in int_digits.bytes() {
            int = int * 10 + u128::from(d - b'0');
            if int > MAX_NANOS {
                return Err(DurationError::Overflow);
            }
        }
        let mut value = int * unit_nanos;
        // Fraction digits beyond nanosecond precision change nothing (Go
        // truncates too); 20 digits keep the arithmetic far from overflow.
        let mut scale: u128 = 1;
        let mut frac: u128 = 0;
        for d in frac_digits.bytes().take(20) {
            frac = frac * 10 + u128::from(d - b'0');
            scale *= 10;
        }
        value += frac * unit_nanos / scale;
        total += value;
        if total > MAX_NANOS {
            return Err(DurationError::Overflow);
        }
    }
    let magnitude = Duration::new(
        u64::try_from(total / 1_000_000_000).map_err(|_| DurationError::Overflow)?,
        u32::try_from(total % 1_000_000_000).map_err(|_| DurationError::Overflow)?,
    );
    Ok(GoDuration {
        negative: negative && !magnitude.is_zero(),
        magnitude,
    })
}

/// Formats a duration for the LAPI: whole seconds, or seconds with
/// milliseconds (`"14400s"`, `"1.500s"`), which Go's parser reads back.
pub fn format_go_duration(d: Duration) -> String {
    let millis = d.subsec_millis();
    if millis == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}.{millis:03}s", d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (bool, Duration) {
        let d = parse_go_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (d.negative, d.magnitude)
    }

    #[test]
    fn real_lapi_durations() {
        assert_eq!(
            ok("59m59.713885051s"),
            (false, Duration::new(3599, 713_885_051))
        );
        assert_eq!(
            ok("3h59m59.791607702s"),
            (false, Duration::new(4 * 3600 - 1, 791_607_702))
        );
        assert_eq!(ok("921.633358ms"), (false, Duration::new(0, 921_633_358)));
        assert_eq!(ok("-9.907339ms"), (true, Duration::new(0, 9_907_339)));
        assert_eq!(ok("-2.098125364s"), (true, Duration::new(2, 98_125_364)));
        assert_eq!(ok("-1.5s"), (true, Duration::from_millis(1500)));
        assert_eq!(
            parse_go_duration("-1.5s").map(|d| d.remaining()),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn go_grammar() {
        assert_eq!(ok("0"), (false, Duration::ZERO));
        assert_eq!(ok("-0"), (false, Duration::ZERO));
        assert_eq!(ok("+5s"), (false, Duration::from_secs(5)));
        assert_eq!(ok("4h"), (false, Duration::from_secs(4 * 3600)));
        assert_eq!(ok("1h2m3s4ms5us6ns").1, Duration::new(3723, 4_005_006));
        assert_eq!(ok("7µs").1, Duration::from_micros(7));
        assert_eq!(ok("7μs").1, Duration::from_micros(7));
        assert_eq!(ok(".5s").1, Duration::from_millis(500));
        assert_eq!(ok("5.s").1, Duration::from_secs(5));
        assert_eq!(ok("1.0000000000000000000000001s").1, Duration::from_secs(1));
        assert_eq!(
            ok("2562047h47m16.854775807s").1,
            Duration::new(9_223_372_036, 854_775_807)
        );
        for bad in [
            "", "s", "5", "-", "+", "5 s", "4 hours", "1d", "1.2.3s", ".s", "5s-", "--5s", "0s5",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_go_duration("2562048h"), Err(DurationError::Overflow));
        assert_eq!(
            parse_go_duration("99999999999999999999999999h"),
            Err(DurationError::Overflow)
        );
        assert_eq!(
            parse_go_duration(&"1".repeat(65)),
            Err(DurationError::TooLong)
        );
    }

    #[test]
    fn format_round_trips() {
        for d in [
            Duration::from_secs(14_400),
            Duration::from_millis(1500),
            Duration::ZERO,
        ] {
            let s = format_go_duration(d);
            assert_eq!(parse_go_duration(&s).map(|g| g.magnitude), Ok(d), "{s}");
        }
        assert_eq!(format_go_duration(Duration::from_secs(14_400)), "14400s");
    }
}
