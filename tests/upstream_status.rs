//! `/upstream_status` (the seed's `check_status` URL) against nginx_upstream_check_module's own
//! interface tests (`test/t/check_interface.t` of yaoweibin/nginx_upstream_check_module and of
//! the nginx-modules fork that added the prometheus format): the same upstream of six servers,
//! one alive and five refusing connections, checked with `rise=1 fall=1`, and every request of
//! that suite against every default format it uses (`check_status;`, `check_status html|csv|json`
//! → `admin.status_format`), with the module's expected content type and body. Plus what the
//! suite leaves implicit: the fallbacks are logged, HEAD, POST, and `/status` is the same page.

mod common;

use std::net::SocketAddr;

use common::proc::Graysplit;
use common::upstream::Upstream;
use common::{client, free_addr};

/// The module test's upstream: the live server among five dead ones, in its order.
fn pools_file(live: SocketAddr, dead: &[SocketAddr]) -> String {
    let mut lines: Vec<String> = dead.iter().map(|a| format!("server {a};")).collect();
    lines.insert(3, format!("server {live};"));
    lines.join("\n") + "\n"
}

/// graysplit with the suite's upstream and `check_status <default>` (`None`: no argument).
fn start(default: Option<&str>, pools: &str) -> Graysplit {
    let admin = default
        .map(|f| format!("[admin]\nstatus_format = \"{f}\"\n"))
        .unwrap_or_default();
    let toml = format!(
        "[health]\ninterval = \"1s\"\nrise = 1\nfall = 1\ntimeout = \"1s\"\n\
         [pools.base]\nfile = \"base.conf\"\n{admin}"
    );
    Graysplit::start(&toml, &[("base.conf", pools)])
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

async fn get(g: &Graysplit, path: &str) -> Answer {
    let r = client()
        .get(g.admin_url(path))
        .send()
        .await
        .expect("admin request");
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Answer {
        status: r.status().as_u16(),
        content_type,
        body: r.text().await.expect("body"),
    }
}

/// The suite's `response_body_like` checks.
#[derive(Debug, Clone, Copy)]
enum Body {
    /// `^.*Check upstream server number: N.*$`
    HtmlCount(usize),
    /// `^.*"total": N,.*$`
    JsonTotal(usize),
    /// `^[:\.,\w]+\n$`: exactly one CSV line.
    OneCsvLine,
    /// `^.*$`: any CSV, here: one line per server.
    CsvLines(usize),
}

impl Body {
    fn check(self, body: &str) -> Result<(), String> {
        let ok = match self {
            Body::HtmlCount(n) => body.contains(&format!("Check upstream server number: {n},")),
            Body::JsonTotal(n) => {
                serde_json::from_str::<serde_json::Value>(body).is_ok()
                    && body.contains(&format!("\"total\": {n},"))
            }
            Body::OneCsvLine => {
                body.ends_with('\n')
                    && body.lines().count() == 1
                    && body
                        .trim_end()
                        .chars()
                        .all(|c| c.is_alphanumeric() || matches!(c, ':' | '.' | ',' | '_'))
            }
            Body::CsvLines(n) => {
                body.lines().count() == n && body.lines().all(|l| l.split(',').count() == 8)
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{self:?} does not match:\n{body}"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_of_the_check_modules_interface_tests() {
    let live = Upstream::start("base");
    let dead: Vec<SocketAddr> = (0..5).map(|_| free_addr()).collect();
    let pools = pools_file(live.addr, &dead);
    // (suite test, `check_status` argument, request, content type, body)
    let cases: &[(&str, Option<&str>, &str, &str, Body)] = &[
        (
            "TEST 1: default type",
            None,
            "/upstream_status",
            "text/html",
            Body::HtmlCount(6),
        ),
        (
            "TEST 2: html",
            Some("html"),
            "/upstream_status",
            "text/html",
            Body::HtmlCount(6),
        ),
        (
            "TEST 3: csv",
            Some("csv"),
            "/upstream_status",
            "text/plain",
            Body::CsvLines(6),
        ),
        (
            "TEST 4: json",
            Some("json"),
            "/upstream_status",
            "application/json",
            Body::JsonTotal(6),
        ),
        (
            "TEST 5: default html, request csv",
            Some("html"),
            "/upstream_status?format=csv",
            "text/plain",
            Body::CsvLines(6),
        ),
        (
            "TEST 6: default csv, request json",
            Some("csv"),
            "/upstream_status?format=json",
            "application/json",
            Body::JsonTotal(6),
        ),
        (
            "TEST 7: default json, request html",
            Some("json"),
            "/upstream_status?format=html",
            "text/html",
            Body::HtmlCount(6),
        ),
        (
            "TEST 8: default json, request htm, bad format",
            Some("json"),
            "/upstream_status?format=htm",
            "application/json",
            Body::JsonTotal(6),
        ),
        (
            "TEST 9: default html, request csv and up",
            Some("html"),
            "/upstream_status?format=csv&status=up",
            "text/plain",
            Body::OneCsvLine,
        ),
        (
            "TEST 10: default csv, request json and down",
            Some("csv"),
            "/upstream_status?format=json&status=down",
            "application/json",
            Body::JsonTotal(5),
        ),
        (
            "TEST 11: default json, request html and up",
            Some("json"),
            "/upstream_status?format=html&status=up",
            "text/html",
            Body::HtmlCount(1),
        ),
        (
            "TEST 12: default json, request html, bad status",
            Some("json"),
            "/upstream_status?format=html&status=foo",
            "text/html",
            Body::HtmlCount(6),
        ),
        (
            "TEST 13: default (keepalive checks)",
            None,
            "/upstream_status",
            "text/html",
            Body::HtmlCount(6),
        ),
    ];
    let mut procs: Vec<(Option<&str>, Graysplit)> = Vec::new();
    for default in [None, Some("html"), Some("csv"), Some("json")] {
        procs.push((default, start(default, &pools)));
    }
    let mut failures = Vec::new();
    for (name, default, path, content_type, body) in cases {
        let g = &procs
            .iter()
            .find(|(d, _)| d == default)
            .expect("a process")
            .1;
        let a = get(g, path).await;
        if a.status != 200 || a.content_type != *content_type {
            failures.push(format!(
                "{name}: GET {path}: {} {:?}, want 200 {content_type:?}",
                a.status, a.content_type
            ));
        }
        if let Err(e) = body.check(&a.body) {
            failures.push(format!("{name}: GET {path}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // The module logs bad arguments ("http upstream check, bad argument") and answers anyway.
    let json_default = &procs[3].1;
    common::eventually_sync(std::time::Duration::from_secs(5), "the log lines", || {
        let log = json_default.log();
        (log.contains("bad argument format=\"htm\"") && log.contains("bad argument status=\"foo\""))
            .then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_format_head_post_and_the_status_alias() {
    let live = Upstream::start("base");
    let dead: Vec<SocketAddr> = (0..5).map(|_| free_addr()).collect();
    let g = start(None, &pools_file(live.addr, &dead));

    let a = get(&g, "/upstream_status?format=prometheus").await;
    assert_eq!((a.status, a.content_type.as_str()), (200, "text/plain"));
    let samples = graysplit::metrics::text_format::parse(&a.body)
        .unwrap_or_else(|e| panic!("{e}\n{}", a.body));
    let value = |series: &str| {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {series} in\n{}", a.body))
    };
    assert_eq!(value("nginx_upstream_count_total"), 6.0);
    assert_eq!(value("nginx_upstream_count_up"), 1.0);
    assert_eq!(value("nginx_upstream_count_down"), 5.0);
    let active = format!(
        "nginx_upstream_server_active{{index=\"3\",upstream=\"base\",name=\"{}\",type=\"http\",port=\"0\"}}",
        live.addr
    );
    assert_eq!(value(&active), 1.0);
    let fall = format!(
        "nginx_upstream_server_fall{{index=\"0\",upstream=\"base\",name=\"{}\",status=\"down\",type=\"http\",port=\"0\"}}",
        dead[0]
    );
    assert!(value(&fall) >= 1.0, "a dead server has failed checks");
    let down_only = get(&g, "/upstream_status?format=prometheus&status=down").await;
    assert_eq!(
        down_only
            .body
            .matches("nginx_upstream_server_active{")
            .count(),
        5
    );

    // HEAD: the headers of the page without its body; other methods: 405, as the module.
    let head = client()
        .head(g.admin_url("/upstream_status?format=json"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], "application/json");
    assert_eq!(head.text().await.unwrap(), "");
    let post = client()
        .post(g.admin_url("/upstream_status"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);

    // /status is the same page (kept for graysplit's earlier users).
    let (a, b) = (
        get(&g, "/status?format=csv").await,
        get(&g, "/upstream_status?format=csv").await,
    );
    let rows = |t: &str| {
        t.lines()
            .map(|l| l.split(',').take(4).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rows(&a.body),
        rows(&b.body),
        "same rows (rise/fall may move)"
    );
}
