//! The proxy over file-defined pools: real binary, real static upstreams, real HTTP.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::proc::Graysplit;
use common::upstream::{CaptureUpstream, Upstream};
use common::{client, eventually, free_addr};

const POOLS: &str = "[pools.base]\nfile = \"base.conf\"\n\n[pools.gray]\nfile = \"gray.conf\"\n";

fn start(base: &str) -> Graysplit {
    Graysplit::start(POOLS, &[("base.conf", base), ("gray.conf", "")])
}

/// Sends `n` GETs and counts which upstream answered (by `X-Served-By`).
async fn spread(g: &Graysplit, n: usize) -> HashMap<String, usize> {
    let c = client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = c.get(g.url("/")).send().await.expect("request");
        assert_eq!(r.status(), 200);
        let by = r.headers()["x-served-by"].to_str().unwrap().to_string();
        *seen.entry(by).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_pages_and_assets_of_the_base_build() {
    let a = Upstream::start("base");
    let g = start(&format!("{}\n", a.line("weight=1")));
    let c = client();
    let r = c.get(g.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-graysplit-pool"], "base");
    assert_eq!(r.headers()["x-graysplit-reason"], "default");
    let html = r.text().await.unwrap();
    assert!(html.contains("base-2026.11.1"), "{html}");
    let js = html
        .split("src=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let r = c.get(g.url(js)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(r.text().await.unwrap().contains("window.__BUILD__ = build"));
    let r = c.head(g.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(g.url("/assets/app.nope.js")).send().await.unwrap();
    assert_eq!(r.status(), 404, "a missing asset is a 404, never a page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_host_real_ip_and_forwarded_for_like_the_seed_nginx() {
    let up = CaptureUpstream::start();
    let g = start(&format!("server {};\n", up.addr));
    let r = client()
        .get(g.url("/page"))
        .header("host", "Shop.Example.COM:8080")
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.last_header("host").as_deref(), Some("shop.example.com"));
    // The test client is on loopback, a trusted proxy by default: like nginx's realip module,
    // X-Real-IP names the client it forwarded for.
    assert_eq!(up.last_header("x-real-ip").as_deref(), Some("203.0.113.7"));
    assert_eq!(
        up.last_header("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic_within_five_percent() {
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    let g = start(&format!("{}\n{}\n", a.line("weight=3"), b.line("weight=1")));
    let seen = spread(&g, 1000).await;
    let share_a = seen[&a.addr.to_string()] as f64 / 1000.0;
    assert!((share_a - 0.75).abs() <= 0.05, "weight 3:1 gave {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_server_gets_nothing() {
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    let g = start(&format!("{}\n{}\n", a.line(""), b.line("down")));
    let seen = spread(&g, 100).await;
    assert_eq!(seen.get(&a.addr.to_string()), Some(&100));
    assert_eq!(b.hits(), 0, "the down server was never contacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_pools_file_moves_traffic_within_two_seconds() {
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    let g = start(&format!("{}\n", a.line("")));
    assert_eq!(spread(&g, 10).await.len(), 1);
    let edited = Instant::now();
    g.write_file(
        "base.conf",
        &format!("{}\n{}\n", a.line("down"), b.line("")),
    );
    let c = client();
    let b_name = b.addr.to_string();
    eventually(
        Duration::from_secs(2),
        "traffic to move to the new server",
        || {
            let c = c.clone();
            let url = g.url("/");
            let b_name = b_name.clone();
            async move {
                let r = c.get(url).send().await.ok()?;
                (r.headers().get("x-served-by")?.to_str().ok()? == b_name).then_some(())
            }
        },
    )
    .await;
    assert!(edited.elapsed() < Duration::from_secs(2));
    let seen = spread(&g, 20).await;
    assert_eq!(seen.get(&b_name), Some(&20), "all traffic moved: {seen:?}");
    let list = client()
        .get(g.admin_url("/upstream_list?base"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        list.contains(&format!(
            "server {} weight=1 max_fails=2 fail_timeout=10s down;",
            a.addr
        )),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pools_line_is_reported_and_a_broken_edit_is_never_applied() {
    let (a, b) = (Upstream::start("base"), Upstream::start("base"));
    // At startup there is nothing to keep: the good line serves, the bad ones are logged.
    let g = start(&format!(
        "{}\nserver 127.0.0.1:notaport weight=1;\n{}\n",
        a.line(""),
        b.line("weight=banana")
    ));
    let seen = spread(&g, 20).await;
    assert_eq!(seen.get(&a.addr.to_string()), Some(&20));
    let log = g.log();
    assert!(
        log.contains("line 2:"),
        "bad line 2 is logged with its number:\n{log}"
    );
    assert!(
        log.contains("line 3:") && log.contains("weight=banana"),
        "{log}"
    );
    // Fixed: both serve.
    g.write_file("base.conf", &format!("{}\n{}\n", a.line(""), b.line("")));
    eventually(
        Duration::from_secs(5),
        "the fixed file to apply",
        || async { (spread(&g, 10).await.len() == 2).then_some(()) },
    )
    .await;
    // An edit that loses a line (b's line cut off, as a writer that died would leave it) is
    // never applied: both keep serving, and the log says why.
    g.write_file("base.conf", &format!("{}\nserver 127.0", a.line("")));
    eventually(
        Duration::from_secs(5),
        "the broken edit to be refused",
        || async { g.log().contains("not applied").then_some(()) },
    )
    .await;
    assert_eq!(spread(&g, 10).await.len(), 2, "the last good list stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_keepalive_connections_are_reused() {
    let a = Upstream::start("base");
    let g = start(&format!("{}\n", a.line("")));
    spread(&g, 50).await;
    let conns = a
        .site
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        conns <= 4,
        "50 sequential requests used {conns} upstream connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_is_retried_on_another_server() {
    let a = Upstream::start("base");
    let dead = free_addr();
    let g = start(&format!("server {dead} max_fails=0;\n{}\n", a.line("")));
    let seen = spread(&g, 40).await;
    assert_eq!(
        seen.get(&a.addr.to_string()),
        Some(&40),
        "no client saw the dead server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_usable_base_server_is_a_fast_502_with_retry_after() {
    let dead = free_addr();
    let g = start(&format!("server {dead};\n"));
    let started = Instant::now();
    let r = client().get(g.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(r.text().await.unwrap(), "502 Bad Gateway\n");
    assert!(started.elapsed() < Duration::from_secs(2), "never a hang");
}
