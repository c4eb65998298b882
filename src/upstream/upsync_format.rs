//! upsync's dump format, read by the file source and written as the Consul dump file:
//!
//! ```text
//! server 10.0.0.1:8080 weight=1 max_fails=2 fail_timeout=10s;
//! server 10.0.0.2:8080 weight=2 max_fails=2 fail_timeout=10s down; # build=2026.11.2
//! ```
//!
//! The same text can be `include`d in an nginx `upstream {}` block for a rollback, so rendering
//! never writes anything nginx would refuse; our build id lives in a trailing comment.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::server::ServerSpec;
use crate::config::duration;

/// A line that could not be used, with its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub text: String,
    pub reason: String,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}: {} (in {:?})",
            self.line, self.reason, self.text
        )
    }
}

/// Result of parsing a pools file: the good servers and the skipped lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub servers: Vec<ServerSpec>,
    pub errors: Vec<LineError>,
}

/// Parses a whole file. Bad lines are reported and skipped; the rest is kept.
pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    let mut seen = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let result = match parse_line(line) {
            Ok(Some(spec)) if !seen.insert(spec.addr) => {
                Err(format!("duplicate server {}", spec.name))
            }
            Ok(Some(spec)) => {
                out.servers.push(spec);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(reason) => Err(reason),
        };
        if let Err(reason) = result {
            out.errors.push(LineError {
                line: i + 1,
                text: line.chars().take(200).collect(),
                reason,
            });
        }
    }
    out
}

/// Parses one line: `Ok(None)` for blank lines and comments.
pub fn parse_line(line: &str) -> Result<Option<ServerSpec>, String> {
    let (body, comment) = match line.find('#') {
        Some(i) => (line[..i].trim(), Some(line[i + 1..].trim())),
        None => (line.trim(), None),
    };
    if body.is_empty() {
        return Ok(None);
    }
    let Some(body) = body.strip_suffix(';') else {
        return Err("missing ';' at the end of the server line".into());
    };
    let mut words = body.split_whitespace();
    if words.next() != Some("server") {
        return Err("expected `server <address> [weight=N] [max_fails=N] [fail_timeout=T] [down] [backup];`".into());
    }
    let name = words.next().ok_or("missing server address")?;
    let addr = resolve(name)?;
    let mut spec = ServerSpec::new(addr, name);
    for word in words {
        apply_param(&mut spec, word)?;
    }
    if let Some(build) = comment.and_then(build_from_comment) {
        spec.build = Some(build?);
    }
    Ok(Some(spec))
}

fn apply_param(spec: &mut ServerSpec, word: &str) -> Result<(), String> {
    let number = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{word}: expected a whole number"))
    };
    match word.split_once('=') {
        Some(("weight", v)) => spec.weight = number(v)?,
        Some(("max_fails", v)) => spec.max_fails = number(v)?,
        Some(("fail_timeout", v)) => spec.fail_timeout = fail_timeout(v)?,
        None if word == "down" => spec.down = true,
        None if word == "backup" => spec.backup = true,
        _ => return Err(format!("unknown parameter {word:?}")),
    }
    Ok(())
}

/// nginx accepts `fail_timeout=10` as seconds; so do we, here only (upsync writes `10s`).
fn fail_timeout(v: &str) -> Result<Duration, String> {
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    duration::parse(v).map_err(|rule| format!("fail_timeout={v}: {rule}"))
}

fn build_from_comment(comment: &str) -> Option<Result<String, String>> {
    let value = comment
        .split_whitespace()
        .find_map(|w| w.strip_prefix("build="))?;
    Some(if valid_build(value) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "build={value:?}: a build id is 1-64 characters of a-z, A-Z, 0-9, '.', '_' or '-'"
        ))
    })
}

/// Build ids travel in cookies and headers, so they are kept to a safe alphabet.
pub fn valid_build(b: &str) -> bool {
    (1..=64).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// `ip:port`, `[v6]:port` or `host:port` (resolved now, first address wins).
pub fn resolve(name: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = name.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = name.rsplit_once(':').ok_or_else(|| {
        format!("address {name:?} needs a port (ip:port, [v6]:port or host:port)")
    })?;
    if host.is_empty() || port.parse::<u16>().is_err() || host.contains(['[', ']', '/', ' ']) {
        return Err(format!(
            "address {name:?} is not ip:port, [v6]:port or host:port"
        ));
    }
    (host, port.parse::<u16>().unwrap_or(0))
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {name:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{name:?} resolves to no address"))
}

/// Renders one server as an upsync dump line.
pub fn render_line(s: &ServerSpec) -> String {
    let mut line = format!(
        "server {} weight={} max_fails={} fail_timeout={}",
        s.name,
        s.weight,
        s.max_fails,
        duration::format(s.fail_timeout)
    );
    if s.down {
        line.push_str(" down");
    }
    if s.backup {
        line.push_str(" backup");
    }
    line.push(';');
    if let Some(b) = &s.build {
        let _ = write!(line, " # build={b}");
    }
    line
}

/// Renders a whole pool, one line per server.
pub fn render(servers: &[ServerSpec]) -> String {
    servers.iter().map(|s| render_line(s) + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upsync_dump_lines_with_defaults_and_flags() {
        let p = parse(
            "# pools for base\n\
             server 127.0.0.1:20081 weight=3 max_fails=5 fail_timeout=30s;\n\
             \n\
             server 127.0.0.1:20082;\n\
             server [::1]:20083 weight=1 down backup; # build=v2.1\n",
        );
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.servers.len(), 3);
        let a = &p.servers[0];
        assert_eq!(
            (a.weight, a.max_fails, a.fail_timeout),
            (3, 5, Duration::from_secs(30))
        );
        let b = &p.servers[1];
        assert_eq!(
            (b.weight, b.max_fails, b.fail_timeout, b.down),
            (1, 2, Duration::from_secs(10), false)
        );
        let c = &p.servers[2];
        assert!(c.down && c.backup);
        assert_eq!(c.build.as_deref(), Some("v2.1"));
        assert_eq!(c.addr, "[::1]:20083".parse().unwrap());
    }

    #[test]
    fn bad_lines_are_reported_with_their_number_and_skipped() {
        let p = parse(
            "server 127.0.0.1:1 weight=1;\n\
             server 127.0.0.1:2 weight=x;\n\
             server 127.0.0.1:3\n\
             upstream foo;\n\
             server 127.0.0.1:4 colour=red;\n\
             server 127.0.0.1:1;\n\
             server nope;\n\
             server 127.0.0.1:5; # build=a/b\n\
             server 127.0.0.1:6 weight=2;\n",
        );
        let lines: Vec<usize> = p.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 8]);
        assert!(p.errors[0].reason.contains("weight=x"));
        assert!(p.errors[1].reason.contains("';'"));
        assert!(p.errors[3].reason.contains("colour=red"));
        assert!(p.errors[4].reason.contains("duplicate"));
        let kept: Vec<&str> = p.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(kept, vec!["127.0.0.1:1", "127.0.0.1:6"]);
    }

    #[test]
    fn render_then_parse_round_trips() {
        let mut s = ServerSpec::new("10.0.0.1:8080".parse().unwrap(), "10.0.0.1:8080");
        s.weight = 2;
        s.down = true;
        s.build = Some("b-7".into());
        let line = render_line(&s);
        assert_eq!(
            line,
            "server 10.0.0.1:8080 weight=2 max_fails=2 fail_timeout=10s down; # build=b-7"
        );
        assert_eq!(parse_line(&line).unwrap(), Some(s));
    }

    #[test]
    fn nginx_style_bare_fail_timeout_is_seconds() {
        let s = parse_line("server 127.0.0.1:1 fail_timeout=7;")
            .unwrap()
            .unwrap();
        assert_eq!(s.fail_timeout, Duration::from_secs(7));
    }

    #[test]
    fn hostnames_resolve() {
        let s = parse_line("server localhost:80;").unwrap().unwrap();
        assert!(s.addr.ip().is_loopback());
        assert_eq!(s.name, "localhost:80");
    }
}
