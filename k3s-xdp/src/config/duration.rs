//! Durations in the config file: strings with a unit, as HAProxy writes them (`"500ms"`,
//! `"2s"`, `"1m"`, `"1h"`, and compounds such as `"1m30s"`).
//!
//! A bare number is refused on purpose: HAProxy reads `inter 10` as milliseconds while
//! keepalived reads `advert_int 1` as seconds, so a unit-less value is a guess either way.
//! [`format`] is the inverse of [`parse`], used when rendering a config back to TOML and in
//! `status --json`.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DurationError {
    /// `"-2s"`: well formed, but below zero.
    Negative,
    /// Anything else that is not `<integer><unit>` repeated.
    Malformed,
}

const UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

/// Parses `"1m30s"`-style durations (whole numbers, units `ms`, `s`, `m`, `h`, each at most once
/// and from the largest down, as Go and systemd print them).
pub(crate) fn parse(text: &str) -> Result<Duration, DurationError> {
    match text.strip_prefix('-') {
        Some(magnitude) => parse_magnitude(magnitude).and(Err(DurationError::Negative)),
        None => parse_magnitude(text),
    }
}

fn parse_magnitude(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Malformed);
    }
    let mut total_ms: u64 = 0;
    // Index in UNITS (largest last) of the smallest unit used so far; units must decrease.
    let mut smallest = UNITS.len();
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::Malformed);
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::Malformed)?;
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..letters];
        rest = &rest[letters..];
        let index = UNITS
            .iter()
            .position(|(name, _)| *name == unit)
            .ok_or(DurationError::Malformed)?;
        if index >= smallest {
            return Err(DurationError::Malformed);
        }
        smallest = index;
        total_ms = number
            .checked_mul(UNITS[index].1)
            .and_then(|ms| ms.checked_add(total_ms))
            .ok_or(DurationError::Malformed)?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// The shortest string [`parse`] reads back as `d` (sub-millisecond parts are dropped; the
/// config never produces them): `"0s"`, `"500ms"`, `"1m30s"`, `"1h"`.
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (name, size) in UNITS.iter().rev() {
        let size = u128::from(*size);
        if ms >= size {
            out.push_str(&format!("{}{name}", ms / size));
            ms %= size;
        }
    }
    out
}

/// `serialize_with` helper: durations appear in JSON as the strings the config file uses.
pub(crate) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn units_and_compounds() {
        assert_eq!(parse("500ms"), Ok(ms(500)));
        assert_eq!(parse("2s"), Ok(ms(2_000)));
        assert_eq!(parse("1m"), Ok(ms(60_000)));
        assert_eq!(parse("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse("1h2m3s4ms"), Ok(ms(3_723_004)));
        assert_eq!(parse("0s"), Ok(ms(0)));
        assert_eq!(parse("90s"), Ok(ms(90_000)));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in [
            "", "2", "s", "2 s", " 2s", "2S", "2sec", "1.5s", "30s1m", "1s1s", "2s-", "--2s", "ms",
            "1d", "+2s",
        ] {
            assert_eq!(parse(bad), Err(DurationError::Malformed), "{bad:?}");
        }
        assert_eq!(parse("-2s"), Err(DurationError::Negative));
        assert_eq!(parse("-0s"), Err(DurationError::Negative));
        // Overflow is an error, not a panic or a wrap.
        assert_eq!(
            parse("99999999999999999999h"),
            Err(DurationError::Malformed)
        );
        assert_eq!(parse("9999999999999999h"), Err(DurationError::Malformed));
    }

    #[test]
    fn format_is_the_inverse_of_parse() {
        for text in [
            "0s", "10ms", "500ms", "2s", "1m30s", "1h", "1h1ms", "40s950ms",
        ] {
            let d = parse(text).unwrap();
            assert_eq!(format(d), text);
            assert_eq!(parse(&format(d)), Ok(d));
        }
        assert_eq!(format(ms(90_000)), "1m30s");
        assert_eq!(format(ms(1_500)), "1s500ms");
    }
}
