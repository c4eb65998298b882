//! `/status` in nginx_upstream_check_module's three shapes (`check_status html|csv|json`), so
//! existing dashboards and scripts keep working.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Csv,
    Json,
}

/// The parsed query of `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub format: Format,
    pub filter: Filter,
}

impl Query {
    /// `format=html|csv|json` (default html) and `status=up|down`; an unknown value is an error
    /// message for a 400.
    pub fn parse(query: Option<&str>) -> Result<Query, String> {
        let mut q = Query {
            format: Format::Html,
            filter: Filter::All,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match (key, value.to_ascii_lowercase().as_str()) {
                ("format", "html") => q.format = Format::Html,
                ("format", "csv") => q.format = Format::Csv,
                ("format", "json") => q.format = Format::Json,
                ("status", "up") => q.filter = Filter::Up,
                ("status", "down") => q.filter = Filter::Down,
                ("format", _) => {
                    return Err(format!("unknown format {value:?}: use html, csv or json"))
                }
                ("status", _) => return Err(format!("unknown status {value:?}: use up or down")),
                _ => {} // the check module ignores other arguments too
            }
        }
        Ok(q)
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

/// `{"servers": {"total": N, "generation": G, "server": [...]}}`.
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
    json!({"servers": {"total": rows.len(), "generation": generation, "server": servers}})
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
    fn query_defaults_to_html_and_refuses_unknown_values() {
        assert_eq!(
            Query::parse(None),
            Ok(Query {
                format: Format::Html,
                filter: Filter::All
            })
        );
        assert_eq!(
            Query::parse(Some("format=json&status=down")),
            Ok(Query {
                format: Format::Json,
                filter: Filter::Down
            })
        );
        assert!(Query::parse(Some("format=xml")).is_err());
        assert!(Query::parse(Some("status=sideways")).is_err());
        assert!(Query::parse(Some("x=1&format=csv")).is_ok());
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
}
