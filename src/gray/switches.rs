//! The switches file: runtime overrides of `[gray] enabled / all / percent`, one per line.
//!
//! ```text
//! enabled = true
//! all = false
//! percent = 12.5
//! salt = "2026-11-checkout"
//! ```
//!
//! Keys left out keep their config defaults. A file with any bad line is refused whole (a
//! half-applied switch set is worse than the previous one).

use super::decision::Switches;
use super::salt::{self, Salt};

/// Percent (0..=100, up to two decimals) as basis points.
pub fn percent_to_bp(p: f64) -> Option<u32> {
    (p.is_finite() && (0.0..=100.0).contains(&p)).then(|| (p * 100.0).round() as u32)
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" | "yes" => Some(true),
        "false" | "0" | "off" | "no" => Some(false),
        _ => None,
    }
}

pub fn parse(text: &str, defaults: Switches) -> Result<Switches, String> {
    let mut sw = defaults;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why} (in {line:?})", i + 1);
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad("expected key = value"))?;
        let value = value.trim().trim_matches('"');
        match key.trim() {
            "enabled" => {
                sw.enabled =
                    parse_bool(value).ok_or_else(|| bad("enabled must be true or false"))?
            }
            "all" => sw.all = parse_bool(value).ok_or_else(|| bad("all must be true or false"))?,
            "percent" => {
                sw.percent_bp = value
                    .parse::<f64>()
                    .ok()
                    .and_then(percent_to_bp)
                    .ok_or_else(|| bad("percent must be a number from 0 to 100"))?
            }
            "salt" => {
                if let Some(rule) = salt::check(value) {
                    return Err(bad(&format!("salt {rule}")));
                }
                sw.salt = Salt::new(value)
            }
            _ => return Err(bad("unknown key; expected enabled, all, percent or salt")),
        }
    }
    Ok(sw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_only_what_it_names() {
        let sw = parse("# ops\nall = on\npercent = 12.5\n", Switches::default()).unwrap();
        assert_eq!(
            sw,
            Switches {
                enabled: true,
                all: true,
                percent_bp: 1250,
                salt: Salt::NONE,
            }
        );
        let sw = parse("salt = \"r-2\"\n", Switches::default()).unwrap();
        assert_eq!(sw.salt, Salt::new("r-2"));
    }

    #[test]
    fn any_bad_line_refuses_the_file() {
        for bad in [
            "enabled = maybe",
            "percent = 101",
            "percent = -1",
            "colour = red",
            "percent",
            "salt = tab\there",
        ] {
            assert!(parse(bad, Switches::default()).is_err(), "{bad}");
        }
    }
}
