//! `/upstream_status` (and `/status`) in nginx_upstream_check_module's shapes (`check_status
//! html|csv|json|prometheus`), so existing dashboards, scrapers and scripts keep working.
//!
//! One row per (pool, server): `index` counts over all pools and stays the same when
//! `?status=up|down` filters rows out (as in the check module); `total` is the number of rows
//! shown. `status` is `down` when the server may not take traffic because of its health —
//! active checks said down, or passive failures ejected it; `down` written in a pools file is an
//! operator's choice and shows in `/upstream_list`, not here. `rise`/`fall` are the consecutive
//! passing/failing check counts, `type` is `http` (`none` for a pool without active checks and
//! for servers marked `down`, which are not checked),
//! `port` is 0 (checks go to the server's own port). JSON is built with serde, so it is valid
//! for every filter — the check module's trailing comma after the last `down` row (#121) cannot
//! happen.
//!
//! Arguments behave as the module's `ngx_http_upstream_check_status_parse_args`: `format` and
//! `status` are looked up like nginx's `ngx_http_arg` (name case-insensitive, first occurrence
//! wins), `format` must match exactly (`JSON` is not `json`), `status` ignores case. A value the
//! module would not know is not an error: the page falls back to the default format or to all
//! servers, and the caller logs the [`Query::problems`] (the module logs "bad argument").
//! The prometheus format uses the module's metric names (the nginx-modules fork, merged into
//! Tengine): `nginx_upstream_count_{total,up,down,generation}` and
//! `nginx_upstream_server_{rise,fall,active}`.

use std::fmt::Write as _;

use serde_json::json;

use crate::upstream::Pools;

/// `?status=` of the check module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    All,
    Up,
    Down,
}

/// The page's format: `check_status <format>` sets the default, `?format=` picks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Html,
    Csv,
    Json,
    Prometheus,
}

impl Format {
    /// The module's names, as `?format=` and `admin.status_format` take them.
    pub const NAMES: [&'static str; 4] = ["html", "csv", "json", "prometheus"];

    /// Exactly one of [`Format::NAMES`] (case-sensitive, as the module compares).
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "html" => Some(Format::Html),
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            "prometheus" => Some(Format::Prometheus),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Html => "html",
            Format::Csv => "csv",
            Format::Json => "json",
            Format::Prometheus => "prometheus",
        }
    }

    /// The module's content types (no charset: it sends none either).
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Html => "text/html",
            Format::Csv | Format::Prometheus => "text/plain",
            Format::Json => "application/json",
        }
    }
}

/// The parsed query of the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub format: Format,
    pub filter: Filter,
    /// Arguments the module would call bad, already resolved to the fallback; for the log.
    pub problems: Vec<String>,
}

impl Query {
    /// Reads `format=` and `status=` from a query string; `default` is the format without (or
    /// with a bad) `format=`.
    pub fn parse(query: Option<&str>, default: Format) -> Query {
        let mut q = Query {
            format: default,
            filter: Filter::All,
            problems: Vec::new(),
        };
        let query = query.unwrap_or("");
        if let Some(value) = arg(query, "format") {
            match Format::from_name(value) {
                Some(f) => q.format = f,
                None => q.problems.push(format!(
                    "bad argument format={value:?} (html, csv, json or prometheus): {} page sent",
                    default.name()
                )),
            }
        }
        if let Some(value) = arg(query, "status") {
            if value.eq_ignore_ascii_case("up") {
                q.filter = Filter::Up;
            } else if value.eq_ignore_ascii_case("down") {
                q.filter = Filter::Down;
            } else {
                q.problems.push(format!(
                    "bad argument status={value:?} (up or down): every server shown"
                ));
            }
        }
        q
    }
}

/// nginx's `ngx_http_arg`: the value of the first `name=` argument, the name compared without
/// case; the value as sent (not decoded).
fn arg<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.eq_ignore_ascii_case(name).then_some(v)
    })
}

/// Renders the page in `format` (its content type: [`Format::content_type`]).
pub fn render(rows: &[Row], generation: u64, format: Format) -> String {
    match format {
        Format::Html => html(rows, generation),
        Format::Csv => csv(rows),
        Format::Json => json_text(rows, generation, &[]),
        Format::Prometheus => prometheus(rows, generation),
    }
}

/// One line of the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub index: usize,
    pub upstream: String,
    pub name: String,
    pub up: bool,
    pub rise: u32,
    pub fall: u32,
    pub kind: &'static str,
    pub port: u16,
}

/// The rows (filtered) and the generation (sum of the pools' generations: it moves whenever any
/// pool's server list changes, like the check module's reload generation).
pub fn rows(pools: &Pools, filter: Filter) -> (Vec<Row>, u64) {
    let mut out = Vec::new();
    let mut generation = 0;
    let mut index = 0;
    for pool in pools.iter() {
        let snap = pool.snapshot();
        generation += snap.generation;
        let checked = pool.checks().is_some();
        for s in &snap.servers {
            // Servers marked `down` are not checked (see upstream::checker).
            let kind = if checked && !s.spec.down {
                "http"
            } else {
                "none"
            };
            let up = s.health.available(&s.spec);
            let shown = match filter {
                Filter::All => true,
                Filter::Up => up,
                Filter::Down => !up,
            };
            if shown {
                out.push(Row {
                    index,
                    upstream: pool.name.clone(),
                    name: s.spec.name.clone(),
                    up,
                    rise: s.health.rise_count(),
                    fall: s.health.fall_count(),
                    kind,
                    port: 0,
                });
            }
            index += 1;
        }
    }
    (out, generation)
}

fn status_word(up: bool) -> &'static str {
    if up {
        "up"
    } else {
        "down"
    }
}

/// `{"servers": {"total": N, "up": U, "down": D, "generation": G, "server": [...]}}`.
pub fn json(rows: &[Row], generation: u64) -> serde_json::Value {
    let servers: Vec<_> = rows
        .iter()
        .map(|r| {
            json!({
                "index": r.index,
                "upstream": r.upstream,
                "name": r.name,
                "status": status_word(r.up),
                "rise": r.rise,
                "fall": r.fall,
                "type": r.kind,
                "port": r.port,
            })
        })
        .collect();
    let up = rows.iter().filter(|r| r.up).count();
    json!({"servers": {
        "total": rows.len(),
        "up": up,
        "down": rows.len() - up,
        "generation": generation,
        "server": servers,
    }})
}

/// The JSON page laid out as the module writes it — one line per server, `"key": value` — so
/// line-based scripts (`grep '"status": "down"' | wc -l`) keep working; every value goes through
/// serde, so the text is valid JSON whatever the filter and the names. `extras` follow
/// `servers` as further top-level keys.
pub fn json_text(rows: &[Row], generation: u64, extras: &[(&str, serde_json::Value)]) -> String {
    let text = |v: &str| serde_json::Value::from(v).to_string();
    let up = rows.iter().filter(|r| r.up).count();
    let mut out = format!(
        "{{\"servers\": {{\n  \"total\": {},\n  \"up\": {up},\n  \"down\": {},\n  \
         \"generation\": {generation},\n  \"server\": [\n",
        rows.len(),
        rows.len() - up
    );
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(
            out,
            "    {{\"index\": {}, \"upstream\": {}, \"name\": {}, \"status\": \"{}\", \
             \"rise\": {}, \"fall\": {}, \"type\": \"{}\", \"port\": {}}}{}",
            r.index,
            text(&r.upstream),
            text(&r.name),
            status_word(r.up),
            r.rise,
            r.fall,
            r.kind,
            r.port,
            if i + 1 < rows.len() { "," } else { "" }
        );
    }
    out.push_str("  ]\n}");
    for (key, value) in extras {
        let _ = write!(out, ",\n{}: {value}", text(key));
    }
    out.push_str("}\n");
    out
}

/// The module's prometheus page: server counts, then each server's rise and fall counts and
/// whether it is active (1 up, 0 down), labelled as the module labels them.
pub fn prometheus(rows: &[Row], generation: u64) -> String {
    let up = rows.iter().filter(|r| r.up).count();
    let mut out = String::new();
    for (name, help, value) in [
        ("total", "Servers on the page.", rows.len()),
        ("up", "Servers on the page that are up.", up),
        (
            "down",
            "Servers on the page that are down.",
            rows.len() - up,
        ),
        (
            "generation",
            "Changes of the server lists so far.",
            generation as usize,
        ),
    ] {
        let _ = write!(
            out,
            "# HELP nginx_upstream_count_{name} {help}\n\
             # TYPE nginx_upstream_count_{name} gauge\n\
             nginx_upstream_count_{name} {value}\n"
        );
    }
    let labels = |r: &Row, with_status: bool| {
        let status = if with_status {
            format!(",status=\"{}\"", status_word(r.up))
        } else {
            String::new()
        };
        format!(
            "index=\"{}\",upstream=\"{}\",name=\"{}\"{status},type=\"{}\",port=\"{}\"",
            r.index,
            label_value(&r.upstream),
            label_value(&r.name),
            r.kind,
            r.port
        )
    };
    for (metric, help, kind) in [
        ("rise", "Consecutive passing checks.", "counter"),
        ("fall", "Consecutive failing checks.", "counter"),
        (
            "active",
            "1 while the server is up, 0 while it is down.",
            "gauge",
        ),
    ] {
        let _ = writeln!(out, "# HELP nginx_upstream_server_{metric} {help}");
        let _ = writeln!(out, "# TYPE nginx_upstream_server_{metric} {kind}");
        for r in rows {
            let (value, with_status) = match metric {
                "rise" => (u64::from(r.rise), true),
                "fall" => (u64::from(r.fall), true),
                _ => (u64::from(r.up), false),
            };
            let _ = writeln!(
                out,
                "nginx_upstream_server_{metric}{{{}}} {value}",
                labels(r, with_status)
            );
        }
    }
    out
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `index,upstream,name,status,rise,fall,type,port` lines, no header (as the check module).
pub fn csv(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{}",
            r.index,
            r.upstream,
            r.name,
            status_word(r.up),
            r.rise,
            r.fall,
            r.kind,
            r.port
        );
    }
    out
}

/// The check module's table: down rows on a red background.
pub fn html(rows: &[Row], generation: u64) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n\
         <title>graysplit upstream check status</title>\n</head>\n<body>\n\
         <h1>graysplit upstream check status</h1>\n",
    );
    let _ = write!(
        out,
        "<h2>Check upstream server number: {}, generation: {generation}</h2>\n\
         <table style=\"background-color:white\" cellspacing=\"0\" cellpadding=\"3\" border=\"1\">\n\
         \x20 <tr bgcolor=\"#C0C0C0\">\n\
         \x20   <th>Index</th><th>Upstream</th><th>Name</th><th>Status</th>\
         <th>Rise counts</th><th>Fall counts</th><th>Check type</th><th>Check port</th>\n\
         \x20 </tr>\n",
        rows.len()
    );
    for r in rows {
        let colour = if r.up { "" } else { " bgcolor=\"#FF0000\"" };
        let _ = writeln!(
            out,
            "  <tr{colour}>\n    <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td>\n  </tr>",
            r.index,
            escape(&r.upstream),
            escape(&r.name),
            status_word(r.up),
            r.rise,
            r.fall,
            r.kind,
            r.port
        );
    }
    out.push_str("</table>\n</body>\n</html>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::health::HealthSettings;
    use crate::upstream::server::ServerSpec;

    fn pools() -> Pools {
        let pools = Pools::new([("base", false), ("gray", true)]);
        let base = pools.get("base").unwrap();
        base.set_checks(HealthSettings::default());
        base.replace(
            (1..=3)
                .map(|p| {
                    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], p));
                    ServerSpec::new(addr, addr.to_string())
                })
                .collect(),
        );
        // default_down: all three start down; two pass their checks.
        for s in &base.snapshot().servers[..2] {
            s.health.record_check(true, 1, 2);
        }
        pools.get("gray").unwrap().replace(vec![ServerSpec::new(
            "127.0.0.1:9".parse().unwrap(),
            "127.0.0.1:9",
        )]);
        pools
    }

    #[test]
    fn query_falls_back_like_the_check_module() {
        let q = |s: &str, d: Format| Query::parse(Some(s), d);
        assert_eq!(
            Query::parse(None, Format::Csv).format,
            Format::Csv,
            "the default"
        );
        let got = q("format=json&status=down", Format::Html);
        assert_eq!((got.format, got.filter), (Format::Json, Filter::Down));
        assert!(got.problems.is_empty());
        let bad = q("format=htm", Format::Json);
        assert_eq!((bad.format, bad.filter), (Format::Json, Filter::All));
        assert_eq!(bad.problems.len(), 1, "{:?}", bad.problems);
        assert!(bad.problems[0].contains("\"htm\""), "{:?}", bad.problems);
        let upper = q("format=JSON", Format::Html);
        assert_eq!(
            upper.format,
            Format::Html,
            "format is compared exactly, as the module does"
        );
        let status = q("format=html&status=foo", Format::Json);
        assert_eq!((status.format, status.filter), (Format::Html, Filter::All));
        assert_eq!(status.problems.len(), 1);
        assert_eq!(
            q("STATUS=UP", Format::Html).filter,
            Filter::Up,
            "names and status ignore case"
        );
        assert_eq!(
            q("status=up&status=down", Format::Html).filter,
            Filter::Up,
            "first wins"
        );
        assert_eq!(
            q("x=1&format=prometheus", Format::Html).format,
            Format::Prometheus
        );
        assert!(
            q("format&status", Format::Html).problems.is_empty(),
            "no '=': no argument"
        );
    }

    #[test]
    fn json_keeps_indexes_when_filtered_and_is_always_valid() {
        let p = pools();
        let (all, generation) = rows(&p, Filter::All);
        let v = json(&all, generation);
        assert_eq!(v["servers"]["total"], 4);
        assert_eq!(
            v["servers"]["server"][0],
            json!({"index": 0, "upstream": "base", "name": "127.0.0.1:1", "status": "up",
                   "rise": 1, "fall": 0, "type": "http", "port": 0})
        );
        assert_eq!(
            v["servers"]["server"][3]["type"], "none",
            "gray has no checks"
        );
        assert_eq!(
            (v["servers"]["up"].as_u64(), v["servers"]["down"].as_u64()),
            (Some(3), Some(1))
        );
        let (down, g) = rows(&p, Filter::Down);
        let text = json(&down, g).to_string();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["servers"]["total"], 1);
        assert_eq!(v["servers"]["server"][0]["index"], 2);
        assert_eq!(v["servers"]["server"][0]["status"], "down");
        let (up, g) = rows(&p, Filter::Up);
        assert_eq!(json(&up, g)["servers"]["total"], 3);
    }

    #[test]
    fn json_text_is_the_modules_layout_and_valid_json_for_every_filter() {
        let p = pools();
        for filter in [Filter::All, Filter::Up, Filter::Down] {
            let (r, g) = rows(&p, filter);
            let text = json_text(&r, g, &[("pools", json!({"a": [1, "x\"y"]}))]);
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            let mut want = json(&r, g);
            want["pools"] = json!({"a": [1, "x\"y"]});
            assert_eq!(v, want, "{text}");
        }
        let (all, g) = rows(&p, Filter::All);
        let text = json_text(&all, g, &[]);
        assert!(
            text.starts_with("{\"servers\": {\n  \"total\": 4,\n  \"up\": 3,\n"),
            "{text}"
        );
        assert_eq!(
            text.lines()
                .filter(|l| l.contains("\"status\": \"down\""))
                .count(),
            1
        );
        assert!(
            text.contains(
                "    {\"index\": 2, \"upstream\": \"base\", \"name\": \"127.0.0.1:3\", \
             \"status\": \"down\", \"rise\": 0, \"fall\": 0, \"type\": \"http\", \"port\": 0},\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("  ]\n}}\n"), "{text}");
    }

    #[test]
    fn csv_and_html_have_the_check_modules_columns() {
        let p = pools();
        let (all, generation) = rows(&p, Filter::All);
        assert_eq!(
            csv(&all),
            "0,base,127.0.0.1:1,up,1,0,http,0\n\
             1,base,127.0.0.1:2,up,1,0,http,0\n\
             2,base,127.0.0.1:3,down,0,0,http,0\n\
             3,gray,127.0.0.1:9,up,0,0,none,0\n"
        );
        let page = html(&all, generation);
        assert!(
            page.contains("Check upstream server number: 4, generation: 2"),
            "{page}"
        );
        assert_eq!(
            page.matches("<tr bgcolor=\"#FF0000\">").count(),
            1,
            "{page}"
        );
        assert!(page.contains("<td>2</td><td>base</td><td>127.0.0.1:3</td><td>down</td>"));
        assert!(page.ends_with("</html>\n"));
    }

    #[test]
    fn prometheus_has_the_modules_names_and_labels_and_parses() {
        let p = pools();
        let (all, generation) = rows(&p, Filter::All);
        let text = prometheus(&all, generation);
        let samples =
            crate::metrics::text_format::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let get = |name: &str| samples.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert_eq!(get("nginx_upstream_count_total"), Some(4.0));
        assert_eq!(get("nginx_upstream_count_up"), Some(3.0));
        assert_eq!(get("nginx_upstream_count_down"), Some(1.0));
        assert_eq!(get("nginx_upstream_count_generation"), Some(2.0));
        assert_eq!(
            get(
                "nginx_upstream_server_rise{index=\"0\",upstream=\"base\",name=\"127.0.0.1:1\",\
                 status=\"up\",type=\"http\",port=\"0\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            get(
                "nginx_upstream_server_active{index=\"2\",upstream=\"base\",name=\"127.0.0.1:3\",\
                 type=\"http\",port=\"0\"}"
            ),
            Some(0.0)
        );
        let (down, g) = rows(&p, Filter::Down);
        let text = prometheus(&down, g);
        assert_eq!(
            text.matches("nginx_upstream_server_fall{").count(),
            1,
            "{text}"
        );
    }
}
