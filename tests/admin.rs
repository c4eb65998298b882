//! The admin listener as an operator meets it: the token off loopback (issue 13 §6), readiness,
//! requests / errors / latency per pool and build during a rolling deploy (issue 16 point 5),
//! and the in-flight count of each server.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::faulty::{FaultyUpstream, Mode};
use common::proc::{self, Graysplit, ServerOptions};
use common::upstream::Upstream;
use common::{client, eventually, get_json};

const TOKEN: &str = "a-long-admin-token-0123456789";

fn sample(text: &str, series: &str) -> f64 {
    graysplit::metrics::text_format::parse(text)
        .unwrap_or_else(|e| panic!("{e}\n{text}"))
        .into_iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| v)
}

async fn text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[test]
fn t_refuses_an_admin_listener_off_loopback_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.conf"), "server 127.0.0.1:1;\n").unwrap();
    let conf = dir.path().join("graysplit.toml");
    std::fs::write(
        &conf,
        "[server]\nadmin_listen = \"0.0.0.0:9901\"\n[pools.base]\nfile = \"base.conf\"\n",
    )
    .unwrap();
    let conf = conf.to_str().unwrap();
    let out = proc::run(&["-t", "-c", conf]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.admin_listen = \"0.0.0.0:9901\": is not a loopback address, so the admin listener needs a token"),
        "{err}"
    );
    let ok = std::process::Command::new(proc::BIN)
        .args(["-t", "-c", conf])
        .env("GRAYSPLIT_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let short = std::process::Command::new(proc::BIN)
        .args(["-t", "-c", conf])
        .env("GRAYSPLIT_ADMIN_TOKEN", "hunter2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&short.stderr);
    assert_eq!(short.status.code(), Some(2));
    assert!(
        err.contains("GRAYSPLIT_ADMIN_TOKEN: must be at least 16"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the secret is never shown: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_the_admin_listener_but_not_health_and_readiness() {
    let a = Upstream::start("base");
    let opts = ServerOptions {
        admin_ip: "0.0.0.0",
        env: vec![("GRAYSPLIT_ADMIN_TOKEN", TOKEN.to_string())],
        ..ServerOptions::default()
    };
    let g = Graysplit::start_with(
        &opts,
        "[pools.base]\nfile = \"base.conf\"\n",
        &[("base.conf", &format!("{}\n", a.line("")))],
    );
    let c = client();
    let denied = c
        .get(g.admin_url("/status?format=json"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let challenges: Vec<String> = denied
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        challenges.iter().any(|c| c.starts_with("Basic ")),
        "{challenges:?}"
    );
    assert!(
        challenges.iter().any(|c| c.starts_with("Bearer ")),
        "{challenges:?}"
    );
    for path in [
        "/",
        "/metrics",
        "/upstream_list",
        "/decide?ip=10.0.0.1",
        "/upstream_status",
    ] {
        let r = c.get(g.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        let r = c
            .get(g.admin_url(path))
            .bearer_auth("not-the-token-0000000")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
        let r = c
            .get(g.admin_url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the token");
    }
    // A browser's login prompt: HTTP Basic, the token as password.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("ops:{TOKEN}"));
    let r = c
        .get(g.admin_url("/"))
        .header("authorization", format!("Basic {basic}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Load balancers probe without credentials.
    for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
        let r = c.get(g.admin_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.text().await.unwrap(), body);
    }
    let log = g.log();
    assert!(log.contains("no valid token"), "{log}");
    assert!(!log.contains(TOKEN), "the token is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_whether_base_can_take_a_request() {
    let a = Upstream::start("base");
    let g = Graysplit::start(
        "[health]\ninterval = \"200ms\"\nrise = 1\nfall = 1\npath = \"/healthz\"\n[pools.base]\nfile = \"base.conf\"\n",
        &[("base.conf", &format!("{}\n", a.line("")))],
    );
    let c = client();
    assert_eq!(
        c.get(g.admin_url("/readyz")).send().await.unwrap().status(),
        200
    );
    a.set_healthy(false);
    eventually(Duration::from_secs(5), "readyz to turn 503", || async {
        let r = c.get(g.admin_url("/readyz")).send().await.ok()?;
        (r.status() == 503).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_is_compared_build_against_build_with_bounded_labels() {
    // One pool, two builds: the new one (v2) answers its health path with 503.
    let (old, new, next) = (
        Upstream::start("base"),
        Upstream::start("base"),
        Upstream::start("base"),
    );
    new.set_healthy(false);
    let pools = |a: &Upstream, a_build: &str, b: &Upstream, b_build: &str| {
        format!(
            "{} # build={a_build}\n{} # build={b_build}\n",
            a.line("max_fails=0"),
            b.line("max_fails=0")
        )
    };
    let g = Graysplit::start(
        // fail_on_status: the application's 503s count as failures of v2 (not the default).
        "[health]\nenabled = false\n[upstream]\nfail_on_status = [503]\n\
         [pools.base]\nfile = \"base.conf\"\n",
        &[("base.conf", &pools(&old, "v1", &new, "v2"))],
    );
    let c = client();
    for _ in 0..10 {
        let r = c.get(g.url("/healthz")).send().await.unwrap();
        let _ = r.bytes().await;
    }
    for _ in 0..4 {
        let r = c.get(g.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
    }
    let m = text(&g.admin_url("/metrics")).await;
    let req = |build: &str, class: &str| {
        sample(
            &m,
            &format!("graysplit_requests_total{{build=\"{build}\",class=\"{class}\",pool=\"base\",reason=\"default\"}}"),
        )
    };
    // Round robin 1:1: each build got half of each kind of request.
    assert_eq!((req("v1", "2xx"), req("v1", "5xx")), (7.0, 0.0), "{m}");
    assert_eq!((req("v2", "2xx"), req("v2", "5xx")), (2.0, 5.0), "{m}");
    let latency = |build: &str| {
        sample(
            &m,
            &format!(
                "graysplit_upstream_response_seconds_count{{build=\"{build}\",pool=\"base\"}}"
            ),
        )
    };
    assert_eq!((latency("v1"), latency("v2")), (7.0, 7.0));
    let failures = sample(
        &m,
        "graysplit_passive_failures_total{build=\"v2\",kind=\"status\",pool=\"base\"}",
    );
    assert_eq!(failures, 5.0, "the 503s count against v2 (fail_on_status)");

    // The JSON the dashboard reads has the same counts.
    let s = get_json(g.admin_url("/status?format=json")).await;
    let json_count = |build: &str, class: &str| {
        s["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["build"] == build && r["class"] == class)
            .map(|r| r["requests"].as_u64().unwrap())
            .sum::<u64>() as f64
    };
    assert_eq!(json_count("v2", "5xx"), req("v2", "5xx"));
    assert_eq!(json_count("v1", "2xx"), req("v1", "2xx"));

    // v1 leaves the pool (replaced by v3): its series go at the next scrape, v2's stay.
    g.write_file("base.conf", &pools(&next, "v3", &new, "v2"));
    eventually(Duration::from_secs(5), "v3 in the pool", || async {
        let s = get_json(g.admin_url("/status?format=json")).await;
        (s["pools"]["base"]["servers"][0]["build"] == "v3").then_some(())
    })
    .await;
    let r = c.get(g.url("/")).send().await.unwrap();
    let _ = r.bytes().await;
    let m = text(&g.admin_url("/metrics")).await;
    assert!(!m.contains("build=\"v1\""), "{m}");
    assert!(
        m.contains("build=\"v2\"") && m.contains("build=\"v3\""),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts_the_requests_a_server_holds_and_drops_when_they_end() {
    let base = Upstream::start("base");
    let hold = FaultyUpstream::start("base", Mode::BlackHole);
    let g = Graysplit::start(
        "[upstream]\nread_timeout = \"2s\"\ntries = 1\n\
         [pools.base]\nfile = \"base.conf\"\n\
         [pools.hold]\nfile = \"hold.conf\"\n[pools.hold.health]\nenabled = false\n\
         [[routes]]\nprefix = \"/hold/\"\npool = \"hold\"\n",
        &[
            ("base.conf", &format!("{}\n", base.line(""))),
            ("hold.conf", &format!("{}\n", hold.line("max_fails=0"))),
        ],
    );
    let held: Vec<_> = (0..3)
        .map(|i| {
            let url = g.url(&format!("/hold/{i}"));
            tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let in_flight =
        |s: &serde_json::Value, pool: &str| s["pools"][pool]["servers"][0]["in_flight"].clone();
    eventually(
        Duration::from_secs(5),
        "three requests in flight",
        || async {
            let s = get_json(g.admin_url("/status?format=json")).await;
            (in_flight(&s, "hold") == 3).then_some(())
        },
    )
    .await;
    let s = get_json(g.admin_url("/status?format=json")).await;
    assert_eq!(in_flight(&s, "base"), 0);
    let m = text(&g.admin_url("/metrics")).await;
    assert_eq!(
        sample(
            &m,
            &format!(
                "graysplit_server_in_flight{{pool=\"hold\",server=\"{}\"}}",
                hold.addr
            )
        ),
        3.0
    );
    // The server never answers: each request ends at read_timeout (504), and the count with it.
    for h in held {
        assert_eq!(h.await.unwrap().unwrap(), 504);
    }
    // The 504 reaches the client before the request's last phase ends (and its count with it).
    eventually(Duration::from_secs(5), "the count back at 0", || async {
        let s = get_json(g.admin_url("/status?format=json")).await;
        (in_flight(&s, "hold") == 0).then_some(())
    })
    .await;
}
