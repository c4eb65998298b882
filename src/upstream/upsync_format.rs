//! upsync's dump format, read by the file source and written as the Consul dump file:
//!
//! ```text
//! server 10.0.0.1:8080 weight=1 max_fails=2 fail_timeout=10s;
//! server 10.0.0.2:8080 weight=2 max_fails=2 fail_timeout=10s down; # build=2026.11.2
//! ```
//!
//! The same text can be `include`d in an nginx `upstream {}` block for a rollback, so rendering
//! never writes anything nginx would refuse: what nginx cannot hold (a drain, a sub-second
//! `fail_timeout`, our build id) lives in the trailing comment ([`super::upsync_comment`]), and a
//! pool without a primary server gets a placeholder line nginx needs and graysplit skips.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::server::{ServerSpec, MAX_FAIL_TIMEOUT};
use super::upsync_comment;
use crate::config::duration;

pub use super::upsync_comment::valid_build;

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
    parse_with(text, &dns_lookup)
}

/// Looks up a host name (`host`, `port`) that is not an address literal.
pub type Lookup<'a> = &'a dyn Fn(&str, u16) -> Result<SocketAddr, String>;

/// [`parse`] with the host-name lookup given (tests use one without DNS).
pub fn parse_with(text: &str, lookup: Lookup<'_>) -> Parsed {
    let mut out = Parsed::default();
    let mut seen = HashSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let result = match parse_line_with(line, lookup) {
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
    parse_line_with(line, &dns_lookup)
}

/// [`parse_line`] with the host-name lookup given.
pub fn parse_line_with(line: &str, lookup: Lookup<'_>) -> Result<Option<ServerSpec>, String> {
    let (body, comment) = match line.find('#') {
        Some(i) => (line[..i].trim(), Some(line[i + 1..].trim())),
        None => (line.trim(), None),
    };
    if body.is_empty() {
        return Ok(None);
    }
    let notes = comment
        .map(upsync_comment::parse)
        .transpose()?
        .unwrap_or_default();
    if notes.placeholder {
        // Written for nginx's sake into a pool without a primary server; not a server.
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
    let addr = resolve_with(name, lookup)?;
    let mut spec = ServerSpec::new(addr, name);
    for word in words {
        apply_param(&mut spec, word)?;
    }
    upsync_comment::apply(&notes, &mut spec);
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
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => duration::parse(v).map_err(|rule| format!("fail_timeout={v}: {rule}"))?,
    };
    if d > MAX_FAIL_TIMEOUT {
        return Err(format!("fail_timeout={v}: must be at most 1d (86400s)"));
    }
    Ok(d)
}

/// `ip:port`, `[v6]:port` or `host:port` (resolved now, first address wins).
pub fn resolve(name: &str) -> Result<SocketAddr, String> {
    resolve_with(name, &dns_lookup)
}

/// [`resolve`] with the host-name lookup given. Only a name made of host-name characters
/// (letters, digits, '.', '-', '_') is looked up, so garbage never reaches the resolver and every
/// accepted name renders back into a line that parses to the same server.
pub fn resolve_with(name: &str, lookup: Lookup<'_>) -> Result<SocketAddr, String> {
    if let Ok(addr) = name.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = name.rsplit_once(':').ok_or_else(|| {
        format!("address {name:?} needs a port (ip:port, [v6]:port or host:port)")
    })?;
    let port = port.parse::<u16>().ok();
    let hostname = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    match port {
        Some(port) if hostname => lookup(host, port),
        _ => Err(format!(
            "address {name:?} is not ip:port, [v6]:port or host:port"
        )),
    }
}

/// The system resolver (blocking).
fn dns_lookup(host: &str, port: u16) -> Result<SocketAddr, String> {
    let name = format!("{host}:{port}");
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {name:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{name:?} resolves to no address"))
}

/// Renders one server as an upsync dump line that nginx accepts and graysplit reads back exactly.
pub fn render_line(s: &ServerSpec) -> String {
    render_line_marked(s, &[])
}

/// [`render_line`] with notes in the comment (e.g. `unhealthy`), which parsing ignores.
pub fn render_line_marked(s: &ServerSpec, marks: &[&str]) -> String {
    format!(
        "server {} {};{}",
        s.name,
        upsync_comment::nginx_params(s),
        upsync_comment::render(s, marks)
    )
}

/// Renders a whole pool, one line per server. A pool without a primary server (empty, or only
/// `backup` servers) starts with [`upsync_comment::PLACEHOLDER_LINE`]: nginx refuses an upstream
/// without one, and graysplit skips it when reading.
pub fn render(servers: &[ServerSpec]) -> String {
    let mut out = String::new();
    if servers.iter().all(|s| s.backup) {
        out.push_str(upsync_comment::PLACEHOLDER_LINE);
        out.push('\n');
    }
    for s in servers {
        out.push_str(&render_line(s));
        out.push('\n');
    }
    out
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
    fn a_pool_without_a_primary_gets_a_placeholder_that_reads_back_as_nothing() {
        assert_eq!(
            render(&[]),
            format!("{}\n", upsync_comment::PLACEHOLDER_LINE)
        );
        assert_eq!(parse(&render(&[])), Parsed::default());
        let mut b = ServerSpec::new("10.0.0.1:80".parse().unwrap(), "10.0.0.1:80");
        b.backup = true;
        let text = render(std::slice::from_ref(&b));
        assert!(text.starts_with(upsync_comment::PLACEHOLDER_LINE), "{text}");
        let p = parse(&text);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.servers, vec![b.clone()]);
        b.backup = false;
        assert!(
            !render(&[b]).contains("placeholder"),
            "a primary: no placeholder"
        );
    }

    #[test]
    fn a_drained_server_is_written_as_nginx_accepts_and_read_back_drained() {
        let mut s = ServerSpec::new("10.0.0.1:80".parse().unwrap(), "10.0.0.1:80");
        s.weight = 0;
        s.fail_timeout = Duration::from_millis(2500);
        let line = render_line(&s);
        assert_eq!(
            line,
            "server 10.0.0.1:80 weight=1 max_fails=2 fail_timeout=3s down; \
             # graysplit: weight=0 fail_timeout=2500ms"
        );
        let back = parse_line(&line).unwrap().unwrap();
        assert_eq!((back.weight, back.down), (0, false));
        assert_eq!(back, s);
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

/// Property tests (`cargo test --lib fuzz_`; `PROPTEST_CASES=1000000` for the long run).
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Host names resolve without DNS: a fixed address derived from the name.
    fn fake_lookup(host: &str, port: u16) -> Result<SocketAddr, String> {
        let h = host
            .bytes()
            .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        let [a, b, c, _] = h.to_be_bytes();
        Ok(SocketAddr::from(([10, a, b, c], port)))
    }

    fn server_name() -> impl Strategy<Value = String> {
        prop_oneof![
            (any::<Ipv4Addr>(), any::<u16>()).prop_map(|(ip, p)| format!("{ip}:{p}")),
            (any::<Ipv6Addr>(), any::<u16>()).prop_map(|(ip, p)| format!("[{ip}]:{p}")),
            (
                "[a-z][a-z0-9-]{0,15}(\\.[a-z0-9_-]{1,10}){0,3}",
                any::<u16>()
            )
                .prop_map(|(h, p)| format!("{h}:{p}")),
        ]
    }

    fn fail_timeout() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0..=86_400u64).prop_map(Duration::from_secs),
            (0..=86_400_000u64).prop_map(Duration::from_millis),
        ]
    }

    fn build() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._-]{1,64}"
    }

    fn spec() -> impl Strategy<Value = ServerSpec> {
        (
            server_name(),
            any::<u32>(),
            any::<u32>(),
            fail_timeout(),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(build()),
        )
            .prop_map(
                |(name, weight, max_fails, fail_timeout, down, backup, build)| {
                    let addr = resolve_with(&name, &fake_lookup).expect("generated names resolve");
                    ServerSpec {
                        addr,
                        name,
                        weight,
                        max_fails,
                        fail_timeout,
                        down,
                        backup,
                        build,
                    }
                },
            )
    }

    /// A server line as a person might write it: parameters in any order, defaults left out,
    /// tabs and runs of spaces, `fail_timeout` in any accepted spelling, notes in the comment.
    fn written() -> impl Strategy<Value = (String, ServerSpec)> {
        (
            spec(),
            any::<[bool; 3]>(),
            any::<u8>(),
            prop::sample::select(vec![" ", "  ", "\t", " \t "]),
            prop::sample::select(vec!["", " ", "\t"]),
            proptest::collection::vec("[a-z]{1,8}", 0..3),
            any::<u64>(),
        )
            .prop_flat_map(|(mut spec, keep, style, sep, edge, notes, seed)| {
                let mut words = Vec::new();
                if keep[0] {
                    words.push(format!("weight={}", spec.weight));
                } else {
                    spec.weight = 1;
                }
                if keep[1] {
                    words.push(format!("max_fails={}", spec.max_fails));
                } else {
                    spec.max_fails = 2;
                }
                if keep[2] {
                    let d = spec.fail_timeout;
                    let text = if d.subsec_nanos() != 0 {
                        format!("{}ms", d.as_millis())
                    } else {
                        let s = d.as_secs();
                        match style % 3 {
                            0 => format!("{s}"),
                            1 => format!("{s}s"),
                            _ => format!("{}m{}s", s / 60, s % 60),
                        }
                    };
                    words.push(format!("fail_timeout={text}"));
                } else {
                    spec.fail_timeout = Duration::from_secs(10);
                }
                if spec.down {
                    words.push("down".into());
                }
                if spec.backup {
                    words.push("backup".into());
                }
                let comment = match (&spec.build, seed % 3) {
                    (None, 0) => String::new(),
                    (None, _) => format!(" # {}", notes.join(" ")),
                    (Some(b), _) => {
                        let mut c = notes.clone();
                        c.insert((seed as usize) % (c.len() + 1), format!("build={b}"));
                        format!(" #{}", c.join(" "))
                    }
                };
                let name = spec.name.clone();
                Just(words).prop_shuffle().prop_map(move |words| {
                    let mut line = format!("{edge}server{sep}{name}");
                    for w in &words {
                        line.push_str(sep);
                        line.push_str(w);
                    }
                    if style & 8 != 0 {
                        line.push_str(sep);
                    }
                    line.push(';');
                    line.push_str(&comment);
                    line.push_str(edge);
                    (line, spec.clone())
                })
            })
    }

    /// Lines the parser must refuse, whatever else the file holds.
    fn bad_line() -> impl Strategy<Value = String> {
        prop_oneof![
            // No ';' anywhere in the body (and not blank).
            "[^#;\\s][^#;\r\n]{0,40}",
            written().prop_map(|(l, _)| l.replacen(';', "", 1)),
            (
                server_name(),
                prop::sample::select(vec![
                    "weight=-1",
                    "weight=abc",
                    "weight=4294967296",
                    "max_fails=x",
                    "max_fails=",
                    "fail_timeout=1.5s",
                    "fail_timeout=86401",
                    "fail_timeout=2d",
                    "fail_timeout=1d1ms",
                    "fail_timeout=18446744073709551615",
                    "fail_timeout=1722194435412d554343ms",
                    "fail_timeout=ten",
                    "fail_timeout=-1s",
                    "colour=red",
                    "down=1",
                    "=",
                    "weight",
                ])
            )
                .prop_map(|(n, p)| format!("server {n} {p};")),
            "[a-zA-Z0-9.]{1,20}".prop_map(|h| format!("server {h};")),
            "(upstream|servers|Server|include) [a-z0-9.:]{1,20};",
            (server_name(), "[a-z]{0,5}[/*!@]{1,3}[a-z]{0,5}")
                .prop_map(|(n, b)| format!("server {n}; # build={b}")),
            Just("server ;".to_string()),
            Just(";".to_string()),
        ]
    }

    #[derive(Debug, Clone)]
    enum Line {
        Good(String, ServerSpec),
        Bad(String),
        Blank(String),
        Comment(String),
    }

    fn line() -> impl Strategy<Value = Line> {
        prop_oneof![
            4 => written().prop_map(|(l, s)| Line::Good(l, s)),
            3 => bad_line().prop_map(Line::Bad),
            1 => "[ \t]{0,3}".prop_map(Line::Blank),
            1 => "[ \t]{0,2}#[^\r\n]{0,30}".prop_map(Line::Comment),
        ]
    }

    /// A single edit (insert, delete or replace one character) of a good line.
    fn mutated() -> impl Strategy<Value = String> {
        (written(), any::<usize>(), any::<char>(), 0..3u8).prop_map(|((line, _), at, c, op)| {
            let mut chars: Vec<char> = line.chars().collect();
            let i = at % (chars.len() + 1);
            match op {
                0 => chars.insert(i, c),
                1 if i < chars.len() => {
                    chars.remove(i);
                }
                _ if i < chars.len() => chars[i] = c,
                _ => chars.push(c),
            }
            chars.into_iter().collect()
        })
    }

    /// Anything accepted renders as a dump line that parses back to the same server (the Consul
    /// dump and `/upstream_list` write what the file source reads).
    fn assert_renders_back(spec: &ServerSpec) -> Result<(), TestCaseError> {
        let again = parse_line_with(&render_line(spec), &fake_lookup);
        prop_assert_eq!(again, Ok(Some(spec.clone())));
        Ok(())
    }

    /// What nginx 1.22's `ngx_http_upstream_server` accepts in the parameters of a line (the real
    /// `nginx -t` runs in tests/dump_nginx.rs): `weight` at least 1, `fail_timeout` in seconds.
    fn assert_nginx_accepts(line: &str) -> Result<(), TestCaseError> {
        let body = line.split('#').next().unwrap_or("").trim();
        prop_assert!(body.ends_with(';'), "{}", line);
        for word in body.trim_end_matches(';').split_whitespace().skip(2) {
            match word.split_once('=') {
                Some(("weight", v)) => {
                    prop_assert!(v.parse::<u32>().is_ok_and(|w| w >= 1), "{}", line)
                }
                Some(("max_fails", v)) => prop_assert!(v.parse::<u32>().is_ok(), "{}", line),
                Some(("fail_timeout", v)) => prop_assert!(
                    v.strip_suffix('s')
                        .is_some_and(|n| n.parse::<u64>().is_ok()),
                    "{}",
                    line
                ),
                None => prop_assert!(word == "down" || word == "backup", "{}", line),
                _ => prop_assert!(false, "{}", line),
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn fuzz_rendered_line_round_trips(spec in spec()) {
            assert_renders_back(&spec)?;
            assert_nginx_accepts(&render_line(&spec))?;
        }

        #[test]
        fn fuzz_rendered_pool_reads_back_and_has_a_primary_for_nginx(
            specs in proptest::collection::vec(spec(), 0..8),
        ) {
            let mut seen = HashSet::new();
            let specs: Vec<ServerSpec> = specs.into_iter().filter(|s| seen.insert(s.addr)).collect();
            let text = render(&specs);
            let parsed = parse_with(&text, &fake_lookup);
            prop_assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
            prop_assert_eq!(&parsed.servers, &specs);
            let primaries = text
                .lines()
                .filter(|l| !l.split('#').next().unwrap_or("").contains(" backup"))
                .count();
            prop_assert!(primaries >= 1, "{}", text);
            for line in text.lines() {
                assert_nginx_accepts(line)?;
            }
        }

        #[test]
        fn fuzz_written_line_parses_to_its_fields((line, spec) in written()) {
            prop_assert_eq!(parse_line_with(&line, &fake_lookup), Ok(Some(spec)), "{:?}", line);
        }

        #[test]
        fn fuzz_bad_line_is_refused_with_a_reason(line in bad_line()) {
            let err = parse_line_with(&line, &fake_lookup).expect_err(&line);
            prop_assert!(!err.is_empty());
        }

        #[test]
        fn fuzz_file_keeps_good_lines_and_numbers_bad_ones(
            lines in proptest::collection::vec(line(), 0..24),
            crlf in any::<bool>(),
        ) {
            let text = lines
                .iter()
                .map(|l| match l {
                    Line::Good(t, _) | Line::Bad(t) | Line::Blank(t) | Line::Comment(t) => t.as_str(),
                })
                .collect::<Vec<_>>()
                .join(if crlf { "\r\n" } else { "\n" });
            let mut want_servers: Vec<ServerSpec> = Vec::new();
            let mut want_errors = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                match l {
                    Line::Good(_, s) if want_servers.iter().any(|w| w.addr == s.addr) => {
                        want_errors.push(i + 1)
                    }
                    Line::Good(_, s) => want_servers.push(s.clone()),
                    Line::Bad(_) => want_errors.push(i + 1),
                    Line::Blank(_) | Line::Comment(_) => {}
                }
            }
            let parsed = parse_with(&text, &fake_lookup);
            prop_assert_eq!(parsed.servers, want_servers);
            let got: Vec<usize> = parsed.errors.iter().map(|e| e.line).collect();
            prop_assert_eq!(got, want_errors);
        }

        #[test]
        fn fuzz_mutated_line_never_panics_and_what_it_accepts_renders_back(line in mutated()) {
            if let Ok(Some(spec)) = parse_line_with(&line, &fake_lookup) {
                assert_renders_back(&spec)?;
            }
        }

        #[test]
        fn fuzz_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            // The file source reads bytes and decodes them lossily, exactly so.
            let text = String::from_utf8_lossy(&bytes);
            let parsed = parse_with(&text, &fake_lookup);
            let lines = text.lines().count();
            prop_assert!(parsed.servers.len() + parsed.errors.len() <= lines);
            let mut last = 0;
            for e in &parsed.errors {
                prop_assert!(e.line > last && e.line <= lines, "{:?}", e);
                prop_assert!(e.text.chars().count() <= 200 && !e.reason.is_empty());
                last = e.line;
            }
            let mut addrs = HashSet::new();
            for s in &parsed.servers {
                prop_assert!(addrs.insert(s.addr), "duplicate {}", s.addr);
                assert_renders_back(s)?;
            }
        }
    }
}
