//! Progressive delivery (issue 17) on one instance with the Consul stand-in: the real binary,
//! a browser-like load (pages, their assets, pin cookies), a canary upstream that can fail.
//! Plans use one-second windows so each scenario takes seconds; every assertion is on counts,
//! steps and verdicts.

mod common;

use std::time::Duration;

use common::consul::ConsulStandIn;
use common::flaky::FlakyUpstream;
use common::load::{Load, LoadClient};
use common::rollout::{self as ro, PERCENT_KEY, PLAN_KEY};
use common::upstream::Upstream;

/// Browsers at distinct addresses: with gray at 25 %, some of them are gray.
fn browsers(n: usize) -> Vec<LoadClient> {
    (1..=n)
        .map(|i| LoadClient::at(&format!("10.7.{}.{}", i / 200, i % 200 + 1)))
        .collect()
}

const PACE: Duration = Duration::from_millis(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_gray_is_mirrored_then_promoted_through_every_step() {
    let consul = ConsulStandIn::start();
    let base = Upstream::start("base");
    let gray = FlakyUpstream::start("gray");
    let g = ro::start(&ro::consul_toml(&consul, "solo"), &ro::pools(&base, &gray));
    let load = Load::start(&g, browsers(24), PACE);
    load.wait_ok(100).await;
    consul.put(
        PLAN_KEY,
        r#"{"name": "2026.11.2", "steps": [25, 50, 100], "step_duration": "2s", "window": "1s",
            "mirror": {"percent": 100, "duration": "2s"}, "hold_timeout": "2m",
            "analysis": {"min_requests": 20}}"#,
    );
    // A busy machine makes quiet windows (they hold); the hold timeout is far off.
    let done = ro::wait(&g, Duration::from_secs(110), "the plan to complete", |v| {
        ro::status(v) == "completed"
    })
    .await;
    let report = load.finish().await;
    report.assert_clean("rollout");

    // Every stage needed exactly its two passing windows; nothing failed.
    let windows = ro::windows(&done);
    let stages: Vec<(String, u64, String)> = windows
        .iter()
        .map(|w| {
            (
                w["stage"].as_str().unwrap().to_string(),
                w["step"].as_u64().unwrap(),
                w["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let passes = |stage: &str, step: u64| {
        stages
            .iter()
            .filter(|(s, n, v)| s == stage && *n == step && v == "pass")
            .count()
    };
    assert_eq!(
        (passes("mirror", 0), passes("step", 1), passes("step", 2)),
        (2, 2, 2),
        "{stages:?}"
    );
    assert!(stages.iter().all(|(_, _, v)| v != "fail"), "{stages:?}");
    assert_eq!(done["state"]["percent"], 100.0);
    assert_eq!(consul.get(PERCENT_KEY).as_deref(), Some("100"));
    assert_eq!(ro::live_percent(&g).await, 100.0);

    // The mirror stage judged copies: no real user reached gray during it.
    for w in windows.iter().filter(|w| w["stage"] == "mirror") {
        assert!(w["gray"]["requests"].as_u64().unwrap() >= 20, "{w:#}");
        assert_eq!(w["instances"]["solo"]["gray"], 0, "{w:#}");
    }
    // Steps judged real gray traffic.
    for w in windows.iter().filter(|w| w["stage"] == "step") {
        assert!(w["instances"]["solo"]["gray"].as_u64().unwrap() >= 20, "{w:#}");
    }
    let seen = gray.seen();
    let copies: Vec<_> = seen.iter().filter(|s| s.mirrored).collect();
    assert!(!copies.is_empty());
    assert!(
        copies
            .iter()
            .all(|s| s.method == "GET" && s.path == "/" && !s.had_cookie && !s.had_body),
        "copies are page GETs without cookies or bodies: {copies:?}"
    );

    // Copies are kept apart from real gray traffic: gray's GETs are exactly the copies plus
    // the requests graysplit counted for the gray pool.
    ro::wait(&g, Duration::from_secs(5), "no copy in flight", |v| {
        v["mirror"]["in_flight"] == 0
    })
    .await;
    let real_gray = ro::metric_sum(&g, "graysplit_requests_total", &["pool=\"gray\""]).await;
    let copies_sent = ro::metric_sum(&g, "graysplit_mirror_requests_total", &[]).await;
    assert_eq!(gray.gets() as f64, real_gray + copies_sent);
    assert_eq!(gray.mirrored() as f64, copies_sent);
    assert_eq!(
        ro::metric(&g, "graysplit_rollout_windows_total{verdict=\"pass\"}").await,
        6.0
    );
    assert_eq!(
        ro::metric(&g, "graysplit_rollout_status{status=\"completed\"}").await,
        1.0
    );
    assert_eq!(ro::metric(&g, "graysplit_rollout_percent").await, 100.0);
    assert_eq!(ro::metric(&g, "graysplit_rollout_driver").await, 1.0);

    // A log line for every step and verdict.
    let log = g.log();
    for line in [
        "rollout: mirror stage: 100 % of base page loads copied to gray",
        "rollout: step 1/3: gray at 25 %",
        "rollout: step 2/3: gray at 50 %",
        "rollout: step 3/3: gray at 100 %; plan \"2026.11.2\"",
    ] {
        assert!(log.contains(line), "no {line:?} in the log:\n{}", ro::tail(&log, 80));
    }
    assert_eq!(log.matches("): pass ").count(), 6, "{}", ro::tail(&log, 80));
}
