//! Byte sizes as nginx writes them (`client_max_body_size 1m`): a number of bytes, optionally
//! followed by `k`, `m` or `g` (either case, powers of 1024).

/// Parses `"1m"`, `"512k"`, `"2G"`, `"1048576"`; the error is the rule, for a config message.
pub fn parse(text: &str) -> Result<u64, String> {
    const RULE: &str = "must be a size in bytes, optionally with k, m or g (e.g. \"1m\", \"512k\")";
    let t = text.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], Some(c.to_ascii_lowercase())),
        _ => (t, None),
    };
    let shift = match unit {
        None => 0,
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some(_) => return Err(RULE.into()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RULE.into());
    }
    let n: u64 = digits.parse().map_err(|_| RULE.to_string())?;
    n.checked_mul(1u64 << shift)
        .filter(|bytes| *bytes <= MAX)
        .ok_or_else(|| "must be at most 1024g".to_string())
}

/// Anything larger is surely a typo.
const MAX: u64 = 1 << 40;

/// The shortest exact nginx spelling: `1048576` → `"1m"`, `1500` → `"1500"`.
pub fn format(bytes: u64) -> String {
    for (shift, unit) in [(30, 'g'), (20, 'm'), (10, 'k')] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_spellings() {
        assert_eq!(parse("1m"), Ok(1 << 20));
        assert_eq!(parse("1M"), Ok(1 << 20));
        assert_eq!(parse("512k"), Ok(512 << 10));
        assert_eq!(parse("2g"), Ok(2 << 30));
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse(" 1500 "), Ok(1500));
        for bad in ["", "m", "1.5m", "-1", "1mb", "1t", "ten", "1 m"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse("99999999999999999999").is_err());
        assert!(parse("2048g").is_err());
    }

    #[test]
    fn formats_back() {
        for (bytes, text) in [(1 << 20, "1m"), (1500, "1500"), (0, "0"), (3 << 10, "3k")] {
            assert_eq!(format(bytes), text);
            assert_eq!(parse(text), Ok(bytes));
        }
    }
}
