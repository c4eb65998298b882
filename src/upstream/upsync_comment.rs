//! The comment at the end of a server line, where graysplit keeps what nginx's syntax cannot say.
//!
//! A dump must stay includable by nginx (`include base.conf;` inside `upstream {}` for a
//! rollback), and nginx refuses some values graysplit accepts. So the line carries what nginx
//! accepts and the comment carries graysplit's exact value, after the word `graysplit:`:
//!
//! | graysplit value | on the line (nginx) | in the comment (graysplit) |
//! | --- | --- | --- |
//! | `weight=0` (drain) | `weight=1 down` — nginx cannot drain, so the server is down there | `graysplit: weight=0` |
//! | `weight=0` and `down` | `weight=1 down` | `graysplit: weight=0 down` |
//! | `fail_timeout=1500ms` | `fail_timeout=2s` — nginx takes whole seconds only, rounded up | `graysplit: fail_timeout=1500ms` |
//! | an empty pool, or only `backup` servers | `server 127.0.0.1:9 down;` — nginx needs a primary server | `graysplit: placeholder` (the line is not a server) |
//!
//! ```text
//! server 10.0.0.7:8080 weight=1 max_fails=2 fail_timeout=10s down; # build=2026.11.1 graysplit: weight=0
//! ```
//!
//! `build=<id>` may stand anywhere in the comment (as before). Other words are notes and ignored,
//! also after `graysplit:`: a comment never costs a server its line.

use std::fmt::Write as _;
use std::time::Duration;

use super::server::{ServerSpec, MAX_FAIL_TIMEOUT};
use crate::config::duration;

/// The word after which graysplit's own values follow.
pub const MARKER: &str = "graysplit:";

/// The placeholder line written for a pool with no primary server (nginx refuses an upstream
/// without one: "no servers are inside upstream", "no servers in upstream").
pub const PLACEHOLDER_LINE: &str =
    "server 127.0.0.1:9 down; # nginx needs a primary server here; graysplit: placeholder";

/// What a comment says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Notes {
    pub build: Option<String>,
    /// `graysplit: weight=0`: the server is drained; the line's `down` only tells nginx.
    pub drained: bool,
    /// `graysplit: down` (next to `weight=0`): the server is down as well.
    pub down: bool,
    /// `graysplit: fail_timeout=<duration>`: the exact value (the line's is rounded for nginx).
    pub fail_timeout: Option<Duration>,
    /// `graysplit: placeholder`: the line is no server.
    pub placeholder: bool,
}

/// Reads a comment (the text after `#`). An error names the value that cannot be used.
pub fn parse(comment: &str) -> Result<Notes, String> {
    let mut notes = Notes::default();
    let mut ours = false;
    for word in comment.split_whitespace() {
        if let Some(build) = word.strip_prefix("build=") {
            if !valid_build(build) {
                return Err(format!(
                    "build={build:?}: a build id is 1-64 characters of a-z, A-Z, 0-9, '.', '_' or '-'"
                ));
            }
            notes.build = Some(build.to_string());
            continue;
        }
        if word == MARKER {
            ours = true;
            continue;
        }
        if !ours {
            continue;
        }
        match word.split_once('=') {
            Some(("weight", "0")) => notes.drained = true,
            Some(("fail_timeout", v)) => {
                let d = duration::parse(v)
                    .map_err(|rule| format!("{MARKER} fail_timeout={v}: {rule}"))?;
                if d > MAX_FAIL_TIMEOUT {
                    return Err(format!(
                        "{MARKER} fail_timeout={v}: must be at most 1d (86400s)"
                    ));
                }
                notes.fail_timeout = Some(d);
            }
            None if word == "down" => notes.down = true,
            None if word == "placeholder" => notes.placeholder = true,
            _ => {}
        }
    }
    Ok(notes)
}

/// Applies a comment to the server its line describes.
pub fn apply(notes: &Notes, spec: &mut ServerSpec) {
    if let Some(b) = &notes.build {
        spec.build = Some(b.clone());
    }
    if notes.drained {
        spec.weight = 0;
        spec.down = notes.down;
    }
    if let Some(d) = notes.fail_timeout {
        spec.fail_timeout = d;
    }
}

/// Build ids travel in cookies and headers, so they are kept to a safe alphabet.
pub fn valid_build(b: &str) -> bool {
    (1..=64).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The parameters nginx accepts for `spec`: `weight=… max_fails=… fail_timeout=…[ down][ backup]`.
pub fn nginx_params(spec: &ServerSpec) -> String {
    let mut out = format!(
        "weight={} max_fails={} fail_timeout={}s",
        spec.weight.max(1),
        spec.max_fails,
        whole_seconds_up(spec.fail_timeout)
    );
    if spec.down || spec.weight == 0 {
        out.push_str(" down");
    }
    if spec.backup {
        out.push_str(" backup");
    }
    out
}

/// The comment for `spec` (with its leading ` # `), or "" when there is nothing to say. `marks`
/// are notes placed before graysplit's values (e.g. `unhealthy` on `/upstream_list`).
pub fn render(spec: &ServerSpec, marks: &[&str]) -> String {
    let mut words: Vec<String> = Vec::new();
    if let Some(b) = &spec.build {
        words.push(format!("build={b}"));
    }
    words.extend(marks.iter().map(|m| m.to_string()));
    let mut ours = String::new();
    if spec.weight == 0 {
        ours.push_str(" weight=0");
        if spec.down {
            ours.push_str(" down");
        }
    }
    if spec.fail_timeout.subsec_nanos() != 0 {
        let _ = write!(
            ours,
            " fail_timeout={}",
            duration::format(spec.fail_timeout)
        );
    }
    if !ours.is_empty() {
        words.push(format!("{MARKER}{ours}"));
    }
    if words.is_empty() {
        String::new()
    } else {
        format!(" # {}", words.join(" "))
    }
}

/// nginx parses `fail_timeout` in seconds (`ngx_parse_time(.., 1)` refuses `ms`); rounding up
/// keeps nginx's ejection at least as long as ours.
fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServerSpec {
        ServerSpec::new("10.0.0.1:80".parse().unwrap(), "10.0.0.1:80")
    }

    #[test]
    fn a_drain_is_down_for_nginx_and_weight_zero_for_us() {
        let mut s = spec();
        s.weight = 0;
        s.build = Some("b1".into());
        assert_eq!(
            nginx_params(&s),
            "weight=1 max_fails=2 fail_timeout=10s down"
        );
        assert_eq!(render(&s, &[]), " # build=b1 graysplit: weight=0");
        let notes = parse("build=b1 graysplit: weight=0").unwrap();
        let mut back = spec();
        back.down = true;
        apply(&notes, &mut back);
        assert_eq!(back, s, "drained, not down");
        s.down = true;
        assert_eq!(render(&s, &[]), " # build=b1 graysplit: weight=0 down");
        let mut back = spec();
        back.down = true;
        apply(
            &parse("build=b1 graysplit: weight=0 down").unwrap(),
            &mut back,
        );
        assert_eq!(back, s, "drained and down");
    }

    #[test]
    fn sub_second_fail_timeouts_round_up_on_the_line_and_stay_exact_in_the_comment() {
        let mut s = spec();
        s.fail_timeout = Duration::from_millis(1500);
        assert_eq!(nginx_params(&s), "weight=1 max_fails=2 fail_timeout=2s");
        assert_eq!(render(&s, &[]), " # graysplit: fail_timeout=1500ms");
        s.fail_timeout = Duration::from_millis(1);
        assert_eq!(nginx_params(&s), "weight=1 max_fails=2 fail_timeout=1s");
        s.fail_timeout = Duration::ZERO;
        assert_eq!(nginx_params(&s), "weight=1 max_fails=2 fail_timeout=0s");
        assert_eq!(render(&s, &[]), "");
    }

    #[test]
    fn marks_come_before_our_values_and_human_notes_are_ignored() {
        let mut s = spec();
        s.weight = 0;
        assert_eq!(
            render(&s, &["unhealthy"]),
            " # unhealthy graysplit: weight=0"
        );
        let n = parse("taken down for maintenance, weight=0 next week").unwrap();
        assert_eq!(n, Notes::default(), "words before the marker are notes");
        let n = parse("graysplit: placeholder and some words").unwrap();
        assert!(n.placeholder);
        assert!(parse("graysplit: fail_timeout=2d").is_err());
        assert!(parse("build=a/b").is_err());
    }
}
