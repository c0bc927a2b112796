//! Human durations as written in `xtmp.toml` and on the command line: `"300s"`, `"5m"`,
//! `"250ms"`, `"1h"`, `"2d"`, and sums of those (`"1h30m"`, `"1m 30s"`).

use std::fmt;
use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DurationError {}

/// Units accepted by [`parse_duration`], longest suffix first so `ms` wins over `m`.
const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses a duration such as `"300s"`, `"5m"`, `"250ms"`, `"1h"`, `"2d"` or `"1h30m"`.
///
/// Every number needs a unit (`ms`, `s`, `m`, `h`, `d`); whitespace between parts is
/// allowed. The result must fit in 2^53 milliseconds (about 285,000 years).
///
/// # Errors
/// A [`DurationError`] saying what is wrong and what is expected.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    const EXPECTED: &str = "expected a number with a unit (ms, s, m, h, d), e.g. \"300s\", \"5m\", \"250ms\", \"1h30m\"";
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError(format!("empty duration; {EXPECTED}")));
    }
    let mut total_ms: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError(format!(
                "invalid duration {input:?}: {EXPECTED}"
            )));
        }
        let (num, after) = rest.split_at(digits);
        let n: u64 = num
            .parse()
            .map_err(|_| DurationError(format!("duration {input:?} is too large")))?;
        let after = after.trim_start();
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = after.split_at(unit_len);
        let Some(&(_, factor)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(DurationError(if unit.is_empty() {
                format!("invalid duration {input:?}: the number {n} has no unit; {EXPECTED}")
            } else {
                format!("invalid duration {input:?}: unknown unit {unit:?}; {EXPECTED}")
            }));
        };
        total_ms = n
            .checked_mul(factor)
            .and_then(|v| total_ms.checked_add(v))
            .filter(|v| *v <= (1u64 << 53))
            .ok_or_else(|| DurationError(format!("duration {input:?} is too large")))?;
        rest = tail;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration in the same notation [`parse_duration`] reads (`"5m"`, `"1h30m"`,
/// `"250ms"`, `"0s"`). Sub-millisecond parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let mut ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for &(unit, factor) in UNITS.iter().rev() {
        let n = ms / factor;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            ms -= n * factor;
        }
    }
    out
}

/// A [`Duration`] that (de)serializes as a human string (`"300s"`). Used for
/// configuration fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"300s\", \"5m\", \"250ms\" or \"1h\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                parse_duration(v).map(HumanDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_single_units() {
        assert_eq!(parse_duration("300s").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("2d").unwrap(),
            Duration::from_secs(2 * 86400)
        );
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration(" 3600s ").unwrap(),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn parses_compound() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("1m 30s 5ms").unwrap(),
            Duration::from_millis(90_005)
        );
        assert_eq!(parse_duration("10 s").unwrap(), Duration::from_secs(10));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "  ",
            "300",
            "s",
            "5 minutes",
            "1.5s",
            "-1s",
            "1x",
            "1h30",
            "abc",
            "1s2",
            "99999999999999999999s",
            "9999999999999d",
        ] {
            let e = parse_duration(bad);
            assert!(e.is_err(), "{bad:?} was accepted as {e:?}");
        }
        let msg = parse_duration("300").unwrap_err().to_string();
        assert!(msg.contains("no unit"), "{msg}");
        let msg = parse_duration("3x").unwrap_err().to_string();
        assert!(msg.contains("unknown unit \"x\""), "{msg}");
    }

    #[test]
    fn formats_round_trip() {
        for (d, s) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(5400), "1h30m"),
            (Duration::from_secs(90_061), "1d1h1m1s"),
        ] {
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(s).unwrap(), d);
        }
    }
}
