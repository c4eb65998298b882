//! A hiccup is not an outage (issue 12, points 1–5): nginx's failure semantics, and better,
//! against the real binary and real upstreams that answer GETs with 503 for a moment.
//!
//! `fail_on_status = [503]` is set where the hiccup must count as a failure (the default counts
//! only errors and timeouts, as nginx's `proxy_next_upstream error timeout`); every test counts
//! graysplit's *own* 502s (no usable server), which is what an outage looks like to a browser.

mod common;

use std::time::Duration;

use common::flaky::FlakyUpstream;
use common::proc::Graysplit;
use common::{client, eventually, get_json};

/// Checks every 100 ms on `/` with HEAD (which a hiccuping server still passes).
const CHECKS: &str = "[health]\ninterval = \"100ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 2\n";

fn start(upstream: &str, base: &str) -> Graysplit {
    Graysplit::start(
        &format!(
            "{CHECKS}[upstream]\n{upstream}\n[pools.base]\nfile = \"base.conf\"\n\
             [pools.gray]\nfile = \"gray.conf\"\n"
        ),
        &[("base.conf", base), ("gray.conf", "")],
    )
}

/// What one GET through graysplit got: the status and who answered (`-` for graysplit itself).
async fn get(c: &reqwest::Client, g: &Graysplit) -> (u16, String) {
    let r = c.get(g.url("/")).send().await.expect("request");
    let by = r
        .headers()
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let status = r.status().as_u16();
    r.bytes().await.expect("body");
    (status, by)
}

/// `n` sequential GETs.
async fn gets(g: &Graysplit, n: usize) -> Vec<(u16, String)> {
    let c = client();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(&c, g).await);
    }
    out
}

/// graysplit's own 502s: no server answered (`X-Served-By` absent).
fn own_502s(answers: &[(u16, String)]) -> usize {
    answers
        .iter()
        .filter(|(s, by)| *s == 502 && by == "-")
        .count()
}

async fn server_row(g: &Graysplit, u: &FlakyUpstream) -> serde_json::Value {
    let v = get_json(g.admin_url("/status?format=json")).await;
    v["servers"]["server"]
        .as_array()
        .and_then(|rows| {
            rows.iter()
                .find(|r| r["name"] == u.addr.to_string().as_str())
                .cloned()
        })
        .unwrap_or(serde_json::Value::Null)
}

async fn metric(g: &Graysplit, series: &str) -> f64 {
    let text = client()
        .get(g.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    graysplit::metrics::text_format::parse(&text)
        .expect("prometheus text")
        .into_iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_server_that_hiccups_is_never_ejected() {
    let a = FlakyUpstream::start("base");
    let g = start(
        "fail_on_status = [503]",
        &format!("{}\n", a.line("max_fails=2 fail_timeout=10s")),
    );
    a.fail_next(3, 503);
    let answers = gets(&g, 40).await;
    let hiccups = answers.iter().filter(|(s, _)| *s == 503).count();
    assert_eq!(hiccups, 3, "the server's own three 503s are passed on");
    assert_eq!(own_502s(&answers), 0, "{answers:?}");
    assert!(answers[3..].iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert_eq!(server_row(&g, &a).await["status"], "up");
    assert_eq!(
        metric(&g, "graysplit_passive_ejections_total{pool=\"base\"}").await,
        0.0,
        "a pool's only server is never ejected (nginx ignores max_fails for it)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_hiccuping_together_cost_no_502() {
    let (a, b) = (FlakyUpstream::start("base"), FlakyUpstream::start("base"));
    let g = start(
        "fail_on_status = [503]",
        &format!(
            "{}\n{}\n",
            a.line("max_fails=2 fail_timeout=10s"),
            b.line("max_fails=2 fail_timeout=10s")
        ),
    );
    a.fail_next(2, 503);
    b.fail_next(2, 503);
    let answers = gets(&g, 40).await;
    assert_eq!(
        answers.iter().filter(|(s, _)| *s == 503).count(),
        4,
        "both hiccups are passed on: {answers:?}"
    );
    // Both ejected after their two failures: panic mode tries them again at once instead of
    // answering 502 for fail_timeout (10 s).
    assert_eq!(own_502s(&answers), 0, "{answers:?}");
    assert!(answers[4..].iter().all(|(s, _)| *s == 200), "{answers:?}");
    let served: Vec<&str> = answers[4..].iter().map(|(_, by)| by.as_str()).collect();
    for u in [&a, &b] {
        assert!(
            served.contains(&u.addr.to_string().as_str()),
            "{} serves again: {served:?}",
            u.addr
        );
    }
    assert!(
        g.log().contains("panic mode"),
        "the reset is logged:\n{}",
        g.log()
    );
    assert_eq!(
        metric(&g, "graysplit_pool_panics_total{pool=\"base\"}").await,
        1.0,
        "and counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_every_other_request_is_ejected() {
    let (a, b) = (FlakyUpstream::start("base"), FlakyUpstream::start("base"));
    let g = start(
        "fail_on_status = [503]",
        &format!(
            "{}\n{}\n",
            a.line("max_fails=2 fail_timeout=30s"),
            b.line("max_fails=2 fail_timeout=30s")
        ),
    );
    a.fail_every_other(true, 503);
    let answers = gets(&g, 30).await;
    // a: failure, success, failure — the success in between does not wipe the count (nginx:
    // only a success after fail_timeout does), so the second failure ejects it.
    assert_eq!(a.gets(), 3, "{answers:?}");
    assert_eq!(a.failed(), 2);
    assert_eq!(b.gets(), 27);
    assert_eq!(own_502s(&answers), 0);
    assert_eq!(server_row(&g, &a).await["status"], "down", "ejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applications_own_503_never_ejects_by_default() {
    let (a, b) = (FlakyUpstream::start("base"), FlakyUpstream::start("base"));
    let g = start("", &format!("{}\n{}\n", a.line(""), b.line("")));
    // A maintenance page or a rate limit: every GET to a answers 503 for a while.
    a.fail_next(u64::MAX, 503);
    let answers = gets(&g, 20).await;
    assert_eq!(a.gets(), 10, "a keeps its share: {answers:?}");
    assert_eq!(
        metric(&g, "graysplit_passive_ejections_total{pool=\"base\"}").await,
        0.0
    );
    assert_eq!(own_502s(&answers), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_enabled_again_after_down_gets_nothing_before_it_passes_rise_checks() {
    let (a, b) = (FlakyUpstream::start("base"), FlakyUpstream::start("base"));
    // fall = 3 checks 200 ms apart: a server wrongly taken as up would keep traffic for at least
    // 400 ms before its checks took it out.
    let g = Graysplit::start(
        "[health]\ninterval = \"200ms\"\ntimeout = \"1s\"\nrise = 2\nfall = 3\n\
         [pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n",
        &[
            ("base.conf", &format!("{}\n{}\n", a.line(""), b.line(""))),
            ("gray.conf", ""),
        ],
    );
    let lines = |b_extra: &str| format!("{}\n{}\n", a.line(""), b.line(b_extra));
    eventually(Duration::from_secs(5), "both to serve", || async {
        let answers = gets(&g, 4).await;
        answers
            .iter()
            .any(|(_, by)| *by == b.addr.to_string())
            .then_some(())
    })
    .await;
    // Marked down: no longer checked (its last state, "up", stays as it was) ...
    g.write_file("base.conf", &lines("down"));
    eventually(
        Duration::from_secs(5),
        "b to be marked down and unchecked",
        || async { (server_row(&g, &b).await["type"] == "none").then_some(()) },
    )
    .await;
    let checks_when_down = b.behaviour.heads.load(std::sync::atomic::Ordering::Relaxed);
    // ... and broken meanwhile (its checks and its pages answer 503).
    b.set_broken(true);
    let before = b.gets();
    // Enabled again: it must not take traffic on its stale "up" from before.
    g.write_file("base.conf", &lines(""));
    let c = client();
    eventually(
        Duration::from_secs(10),
        "b to be checked and held down",
        || {
            let (c, g, b) = (&c, &g, &b);
            async move {
                let (status, by) = get(c, g).await;
                assert_eq!(
                    (status, by.as_str()),
                    (200, a.addr.to_string().as_str()),
                    "only a serves while b is unchecked or failing"
                );
                let row = server_row(g, b).await;
                (row["fall"].as_u64() >= Some(3)).then_some(())
            }
        },
    )
    .await;
    assert_eq!(b.gets(), before, "no page reached the broken server");
    assert!(
        b.behaviour.heads.load(std::sync::atomic::Ordering::Relaxed) >= checks_when_down + 3,
        "it was checked after it was enabled"
    );
    // Repaired: it comes back after rise passes.
    b.set_broken(false);
    eventually(Duration::from_secs(10), "b to serve again", || async {
        gets(&g, 4)
            .await
            .iter()
            .any(|(_, by)| *by == b.addr.to_string())
            .then_some(())
    })
    .await;
}
