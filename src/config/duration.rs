//! nginx-style durations: `"500ms"`, `"10s"`, `"5m"`, `"1h"`, `"1m30s"`.
//!
//! A unit is required: a bare `"10"` is ambiguous between configs written for nginx (seconds) and
//! for millisecond-minded tools, so we refuse it instead of guessing.

use std::time::Duration;

/// Parses a duration such as `"1m30s"`. Returns the rule that was broken on failure.
pub fn parse(text: &str) -> Result<Duration, &'static str> {
    const RULE: &str =
        "must be a number with a unit: ms, s, m, h or d (e.g. \"500ms\", \"10s\", \"1m30s\")";
    let s = text.trim();
    if s.is_empty() {
        return Err(RULE);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(RULE);
        }
        let number: u64 = rest[..digits].parse().map_err(|_| RULE)?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            "d" => Duration::from_secs(number.saturating_mul(86400)),
            _ => return Err(RULE),
        };
        rest = &rest[unit_len..];
        total = total.saturating_add(unit);
    }
    Ok(total)
}

/// Formats a duration the way nginx and upsync print it (`10s`, `500ms`).
pub fn format(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_compound_units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse(" 2d "), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn refuses_bare_numbers_unknown_units_and_garbage() {
        for bad in ["", "10", "10x", "s", "1.5s", "-1s", "10 s", "ten"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn formats_like_upsync() {
        assert_eq!(format(Duration::from_secs(10)), "10s");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
    }
}
