//! Health: active HEAD checks with rise/fall and default_down, passive failures, retries, the
//! 502 when nothing is left, `/status` in the check module's formats and `/metrics` — against
//! the real binary and real upstreams.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proc::Graysplit;
use common::upstream::Upstream;
use common::{client, eventually};
use serde_json::Value;

/// Checks every 100 ms on `/healthz` (which `Upstream::set_healthy(false)` turns into a 503).
const FAST_CHECKS: &str = "[health]\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 2\n\
                           path = \"/healthz\"\n";

fn pools_toml() -> &'static str {
    "[pools.base]\nfile = \"base.conf\"\n\n[pools.gray]\nfile = \"gray.conf\"\n"
}

fn start(extra: &str, base: &[&Upstream]) -> Graysplit {
    let lines: String = base.iter().map(|u| u.line("") + "\n").collect();
    Graysplit::start(
        &format!("{extra}\n{}", pools_toml()),
        &[("base.conf", &lines), ("gray.conf", "")],
    )
}

async fn get_text(url: String) -> (u16, String) {
    let r = client().get(url).send().await.expect("admin request");
    (r.status().as_u16(), r.text().await.expect("body"))
}

async fn status_json(g: &Graysplit, query: &str) -> Value {
    let (code, body) = get_text(g.admin_url(&format!("/status?format=json{query}"))).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("invalid JSON ({e}): {body}"))
}

/// The `/status` row of server `u`.
async fn row(g: &Graysplit, u: &Upstream) -> Value {
    let v = status_json(g, "").await;
    let name = u.addr.to_string();
    v["servers"]["server"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name.as_str()).cloned())
        .unwrap_or_else(|| panic!("{name} not on the status page: {v}"))
}

/// Who answered `GET /` through the proxy (`X-Served-By`), or why it failed.
async fn served_by(c: &reqwest::Client, url: &str) -> Result<String, String> {
    let r = c.get(url).send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    let by = r
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    r.bytes().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("status {status} from {by:?}"));
    }
    Ok(by)
}

async fn spread(g: &Graysplit, n: usize) -> HashMap<String, usize> {
    let c = client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let by = served_by(&c, &g.url("/")).await.expect("request");
        *seen.entry(by).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_server_leaves_after_fall_checks_and_returns_after_rise() {
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    let g = start(FAST_CHECKS, &[&a, &b]);
    assert_eq!(spread(&g, 10).await.len(), 2, "both serve at first");

    a.set_healthy(false);
    // Every observation must respect the thresholds: up while fewer than `fall` failures.
    eventually(Duration::from_secs(5), "a to go down", || async {
        let r = row(&g, &a).await;
        let fall = r["fall"].as_u64().unwrap_or(0);
        match r["status"].as_str() {
            Some("up") => {
                assert!(fall < 2, "still up after {fall} failures: {r}");
                None
            }
            _ => {
                assert!(fall >= 2, "down after only {fall} failures: {r}");
                Some(())
            }
        }
    })
    .await;
    let seen = spread(&g, 20).await;
    assert_eq!(
        seen.get(&b.addr.to_string()),
        Some(&20),
        "a is out: {seen:?}"
    );

    a.set_healthy(true);
    eventually(Duration::from_secs(5), "a to come back", || async {
        let r = row(&g, &a).await;
        let rise = r["rise"].as_u64().unwrap_or(0);
        match r["status"].as_str() {
            Some("down") => {
                assert!(rise < 2, "still down after {rise} passes: {r}");
                None
            }
            _ => {
                assert!(rise >= 2, "up after only {rise} passes: {r}");
                Some(())
            }
        }
    })
    .await;
    assert_eq!(spread(&g, 10).await.len(), 2, "a is back in rotation");
    let log = g.log();
    assert!(
        log.contains(&format!("server {} is down after", a.addr)),
        "{log}"
    );
    assert!(log.contains(&format!("server {} is up", a.addr)), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_down_a_new_server_gets_no_request_before_it_passes() {
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    let g = start(FAST_CHECKS, &[&a]);
    // b answers pages but fails its health check: only default_down keeps traffic away.
    b.set_healthy(false);
    g.write_file("base.conf", &format!("{}\n{}\n", a.line(""), b.line("")));
    let c = client();
    let mut checked = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !checked {
        assert!(Instant::now() < deadline, "b was never checked");
        let by = served_by(&c, &g.url("/")).await.expect("request");
        assert_eq!(
            by,
            a.addr.to_string(),
            "a never-passed server got a request"
        );
        // Several failed checks seen: b is listed, checked, and still gets nothing.
        checked = row_if_listed(&g, &b)
            .await
            .is_some_and(|r| r["fall"].as_u64() >= Some(3));
    }
    let (before, t) = (b.hits(), Instant::now());
    assert_eq!(spread(&g, 20).await.get(&a.addr.to_string()), Some(&20));
    // One check per 100 ms (and one that may be in flight) is all b may have seen.
    let checks = t.elapsed().as_millis() as u64 / 100 + 2;
    assert!(b.hits() - before <= checks, "only health checks reached b");

    b.set_healthy(true);
    let name = b.addr.to_string();
    eventually(Duration::from_secs(5), "b to take traffic", || {
        let (c, url, name) = (c.clone(), g.url("/"), name.clone());
        async move { (served_by(&c, &url).await.ok()? == name).then_some(()) }
    })
    .await;
    let r = row(&g, &b).await;
    assert!(
        r["rise"].as_u64() >= Some(2),
        "served before rise passes: {r}"
    );
}

async fn row_if_listed(g: &Graysplit, u: &Upstream) -> Option<Value> {
    let v = status_json(g, "").await;
    let name = u.addr.to_string();
    v["servers"]["server"]
        .as_array()?
        .iter()
        .find(|r| r["name"] == name.as_str())
        .cloned()
}

/// A steady stream of requests in the background, counting failures.
struct RequestLoop {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<(u64, Vec<String>)>>,
    task: tokio::task::JoinHandle<()>,
}

impl RequestLoop {
    fn start(url: String) -> RequestLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new((0, Vec::new())));
        let (stopping, out) = (stop.clone(), results.clone());
        let task = tokio::spawn(async move {
            let c = client();
            while !stopping.load(Ordering::Relaxed) {
                let r = served_by(&c, &url).await;
                let mut o = out.lock().expect("lock");
                match r {
                    Ok(_) => o.0 += 1,
                    Err(e) => o.1.push(e),
                }
            }
        });
        RequestLoop {
            stop,
            results,
            task,
        }
    }

    fn ok(&self) -> u64 {
        self.results.lock().expect("lock").0
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("request loop");
        let (ok, failed) = std::mem::take(&mut *self.results.lock().expect("lock"));
        assert!(
            failed.is_empty(),
            "{} failed requests: {failed:?}",
            failed.len()
        );
        ok
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_base_servers_under_load_fails_no_request() {
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    let g = start(FAST_CHECKS, &[&a, &b]);
    let load = RequestLoop::start(g.url("/"));
    eventually(Duration::from_secs(5), "the loop to run", || async {
        (load.ok() >= 50).then_some(())
    })
    .await;
    let a_name = a.addr;
    let killed = Instant::now();
    drop(a);
    eventually(
        Duration::from_secs(5),
        "the killed server to be ejected",
        || async {
            let v = status_json(&g, "&status=down").await;
            (v["servers"]["total"] == 1).then_some(())
        },
    )
    .await;
    let ejected_after = killed.elapsed();
    let at_ejection = load.ok();
    eventually(
        Duration::from_secs(5),
        "more requests after the ejection",
        || async { (load.ok() >= at_ejection + 50).then_some(()) },
    )
    .await;
    let ok = load.finish().await;
    println!("killed server {a_name} ejected after {ejected_after:?}; {ok} requests, 0 failed");
    assert!(ejected_after < Duration::from_secs(2), "{ejected_after:?}");
    assert!(b.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_all_down_answers_502_at_once_with_retry_after() {
    let a = Upstream::start("base");
    a.set_healthy(false);
    let g = start(FAST_CHECKS, &[&a]);
    let c = client();
    for _ in 0..5 {
        let t = Instant::now();
        let r = c.get(g.url("/")).send().await.expect("request");
        let took = t.elapsed();
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()["retry-after"], "5");
        assert!(took < Duration::from_millis(500), "took {took:?}");
        assert_eq!(r.text().await.unwrap(), "502 Bad Gateway\n");
    }
    let v = status_json(&g, "&status=down").await;
    assert_eq!(v["servers"]["total"], 1, "{v}");
    assert!(a.hits() > 0, "checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_json_csv_and_html_with_filters() {
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    b.set_healthy(false);
    let g = start(FAST_CHECKS, &[&a, &b]);
    eventually(Duration::from_secs(5), "b to be checked down", || async {
        (row(&g, &b).await["fall"].as_u64() >= Some(2)).then_some(())
    })
    .await;
    let up = status_json(&g, "&status=up").await;
    assert_eq!(up["servers"]["total"], 1);
    let r = &up["servers"]["server"][0];
    assert_eq!(r["name"], a.addr.to_string());
    assert_eq!(
        (r["index"].as_u64(), r["upstream"].as_str()),
        (Some(0), Some("base"))
    );
    assert_eq!(
        (r["type"].as_str(), r["port"].as_u64()),
        (Some("http"), Some(0))
    );
    let down = status_json(&g, "&status=down").await;
    assert_eq!(down["servers"]["total"], 1);
    assert_eq!(
        down["servers"]["server"][0]["index"], 1,
        "index kept when filtered"
    );
    assert!(down["consul"].is_object() && down["pools"].is_object());

    let (code, csv) = get_text(g.admin_url("/status?format=csv")).await;
    assert_eq!(code, 200);
    let lines: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(lines.len(), 2, "{csv}");
    assert!(lines.iter().all(|l| l.len() == 8), "{csv}");
    assert_eq!(lines[1][..4], ["1", "base", &b.addr.to_string(), "down"]);

    let (code, html) = get_text(g.admin_url("/status")).await;
    assert_eq!(code, 200);
    assert!(html.contains("Check upstream server number: 2"), "{html}");
    assert!(
        html.contains(&format!("<td>{}</td><td>down</td>", b.addr)),
        "{html}"
    );

    let (_, list) = get_text(g.admin_url("/upstream_list?base")).await;
    assert!(
        list.contains(&format!(
            "server {} weight=1 max_fails=2 fail_timeout=10s; # unhealthy",
            b.addr
        )),
        "{list}"
    );
}

fn sample(text: &str, series: &str) -> f64 {
    graysplit::metrics::text_format::parse(text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .into_iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let a = Upstream::start("base");
    let g = start(FAST_CHECKS, &[&a]);
    let requests =
        "graysplit_requests_total{build=\"base\",class=\"2xx\",pool=\"base\",reason=\"default\"}";
    let timed = "graysplit_upstream_response_seconds_count{build=\"base\",pool=\"base\"}";
    let (_, before) = get_text(g.admin_url("/metrics")).await;
    let c = client();
    for _ in 0..7 {
        served_by(&c, &g.url("/")).await.expect("request");
    }
    let (code, after) = get_text(g.admin_url("/metrics")).await;
    assert_eq!(code, 200);
    assert_eq!(
        sample(&after, requests) - sample(&before, requests),
        7.0,
        "{after}"
    );
    assert_eq!(sample(&after, timed) - sample(&before, timed), 7.0);
    let up = format!("graysplit_server_up{{pool=\"base\",server=\"{}\"}}", a.addr);
    assert_eq!(sample(&after, &up), 1.0);
    assert!(sample(&after, "graysplit_health_checks_total{result=\"pass\"}") >= 1.0);
    a.set_healthy(false);
    eventually(Duration::from_secs(5), "a flip to show", || async {
        let (_, t) = get_text(g.admin_url("/metrics")).await;
        (sample(&t, "graysplit_health_flips_total{to=\"down\"}") == 1.0 && sample(&t, &up) == 0.0)
            .then_some(())
    })
    .await;
    let r = c.get(g.url("/")).send().await.expect("request");
    assert_eq!(r.status(), 502);
    let (_, t) = get_text(g.admin_url("/metrics")).await;
    assert_eq!(
        sample(
            &t,
            "graysplit_requests_total{build=\"none\",class=\"5xx\",pool=\"base\",reason=\"default\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_count_as_passive_failures_only_when_listed_and_retry_on_status_hides_them() {
    // No active checks: a 503 on /healthz (requested through the proxy) is then only seen
    // passively. max_fails=0 keeps both servers in rotation so every round hits a.
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    a.set_healthy(false);
    let lines = format!("{}\n{}\n", a.line("max_fails=0"), b.line("max_fails=0"));
    let toml = |upstream: &str| {
        format!(
            "[health]\nenabled = false\n[upstream]\n{upstream}\n\n{}",
            pools_toml()
        )
    };
    let status_failures =
        "graysplit_passive_failures_total{build=\"base\",kind=\"status\",pool=\"base\"}";
    let c = client();
    // The default (nginx's `proxy_next_upstream error timeout`): an application's 503 is an
    // answer, passed on and not held against the server.
    let plain = Graysplit::start(&toml(""), &[("base.conf", &lines), ("gray.conf", "")]);
    let codes: Vec<u16> = futures_codes(&c, &plain.url("/healthz"), 4).await;
    assert_eq!(codes.iter().filter(|&&s| s == 503).count(), 2, "{codes:?}");
    let (_, m) = get_text(plain.admin_url("/metrics")).await;
    assert_eq!(sample(&m, status_failures), 0.0, "{m}");

    let counting = Graysplit::start(
        &toml("fail_on_status = [503]"),
        &[("base.conf", &lines), ("gray.conf", "")],
    );
    let codes: Vec<u16> = futures_codes(&c, &counting.url("/healthz"), 4).await;
    assert!(
        codes.contains(&503),
        "without retry_on_status the 503 passes: {codes:?}"
    );
    let (_, m) = get_text(counting.admin_url("/metrics")).await;
    assert_eq!(sample(&m, status_failures), 2.0, "{m}");

    let retrying = Graysplit::start(
        &toml("retry_on_status = [503]"),
        &[("base.conf", &lines), ("gray.conf", "")],
    );
    let codes = futures_codes(&c, &retrying.url("/healthz"), 10).await;
    assert!(codes.iter().all(|&s| s == 200), "retried on b: {codes:?}");
    let (_, m) = get_text(retrying.admin_url("/metrics")).await;
    assert!(
        sample(
            &m,
            "graysplit_upstream_retries_total{cause=\"status\",pool=\"base\"}"
        ) >= 4.0
    );
    // A HEAD is retried too; the answer is b's.
    let r = c.head(retrying.url("/healthz")).send().await.expect("head");
    assert_eq!(r.status(), 200);
}

async fn futures_codes(c: &reqwest::Client, url: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = c.get(url).send().await.expect("request");
        out.push(r.status().as_u16());
    }
    out
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so connecting to it
/// times out (a server that hangs, unlike a dead one that refuses).
fn blackhole() -> (
    std::net::SocketAddr,
    Vec<std::net::TcpStream>,
    tokio::net::TcpListener,
) {
    let rt_socket = tokio::net::TcpSocket::new_v4().expect("socket");
    rt_socket
        .bind("127.0.0.1:0".parse().unwrap())
        .expect("bind");
    let listener = rt_socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            fillers.push(s);
        }
    }
    (addr, fillers, listener)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_timeout_is_retried_on_another_server() {
    let (hole, _fillers, _listener) = blackhole();
    let b = Upstream::start("base");
    // No active checks, so the hanging server is in rotation and must be survived by retrying.
    let g = Graysplit::start(
        &format!(
            "[health]\nenabled = false\n[upstream]\nconnect_timeout = \"200ms\"\n\n{}",
            pools_toml()
        ),
        &[
            (
                "base.conf",
                &format!("server {hole} max_fails=0;\n{}\n", b.line("max_fails=0")),
            ),
            ("gray.conf", ""),
        ],
    );
    let c = client();
    for _ in 0..4 {
        let t = Instant::now();
        let by = served_by(&c, &g.url("/"))
            .await
            .expect("retried, not failed");
        assert_eq!(by, b.addr.to_string());
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    let (_, m) = get_text(g.admin_url("/metrics")).await;
    assert!(
        sample(
            &m,
            "graysplit_upstream_retries_total{cause=\"connect\",pool=\"base\"}"
        ) >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gray_down_or_empty_is_served_by_base_with_reason_gray_unavailable() {
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    // `all = true` sends every request to gray (issue 5's switch).
    let g = Graysplit::start(
        &format!("{FAST_CHECKS}\n{}\n[gray]\nall = true\n", pools_toml()),
        &[
            ("base.conf", &format!("{}\n", base.line(""))),
            ("gray.conf", &format!("{}\n", gray.line(""))),
        ],
    );
    let c = client();
    let pool_of = |r: &reqwest::Response| {
        let h = |n: &str| r.headers()[n].to_str().unwrap_or("").to_string();
        (
            h("x-graysplit-pool"),
            h("x-graysplit-reason"),
            h("x-served-by"),
        )
    };
    let r = c.get(g.url("/")).send().await.expect("request");
    assert_eq!(
        pool_of(&r),
        ("gray".into(), "all_gray".into(), gray.addr.to_string())
    );

    gray.set_healthy(false);
    eventually(Duration::from_secs(5), "gray to go down", || async {
        (row(&g, &gray).await["status"] == "down").then_some(())
    })
    .await;
    let r = c.get(g.url("/")).send().await.expect("request");
    assert_eq!(r.status(), 200, "a page, not an error");
    assert_eq!(
        pool_of(&r),
        (
            "base".into(),
            "gray_unavailable".into(),
            base.addr.to_string()
        )
    );

    g.write_file("gray.conf", "# no gray today\n");
    eventually(Duration::from_secs(3), "gray to be emptied", || async {
        let v = status_json(&g, "").await;
        (v["servers"]["total"] == 1).then_some(())
    })
    .await;
    let r = c.get(g.url("/")).send().await.expect("request");
    assert_eq!(pool_of(&r).1, "gray_unavailable");
    let (_, m) = get_text(g.admin_url("/metrics")).await;
    assert_eq!(
        sample(
            &m,
            "graysplit_requests_total{build=\"base\",class=\"2xx\",pool=\"base\",reason=\"gray_unavailable\"}"
        ),
        2.0,
        "{m}"
    );
}
