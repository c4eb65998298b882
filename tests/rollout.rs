//! Progressive delivery (issue 17) on one instance with the Consul stand-in: the real binary,
//! a browser-like load (pages, their assets, pin cookies), a canary upstream that can fail.
//! Plans use one-second windows so each scenario takes seconds; every assertion is on counts,
//! steps and verdicts. Plans set `p99_floor` to 2 s: on a 2-core machine shared with other
//! builds, scheduling alone moves a p99 by hundreds of milliseconds (the latency check is
//! unit-tested in `src/rollout/judge.rs`; latency figures belong to `bench/`).

mod common;

use std::time::Duration;

use common::canary::CanaryUpstream;
use common::consul::ConsulStandIn;
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
    let gray = CanaryUpstream::start("gray");
    let g = ro::start(&ro::consul_toml(&consul, "solo"), &ro::pools(&base, &gray));
    let load = Load::start(&g, browsers(24), PACE);
    load.wait_ok(100).await;
    consul.put(
        PLAN_KEY,
        r#"{"name": "2026.11.2", "steps": [25, 50, 100], "step_duration": "2s", "window": "1s",
            "mirror": {"percent": 100, "duration": "2s"}, "hold_timeout": "2m",
            "analysis": {"min_requests": 20, "p99_floor": "2s"}}"#,
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
        assert!(
            w["instances"]["solo"]["gray"].as_u64().unwrap() >= 20,
            "{w:#}"
        );
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
        assert!(
            log.contains(line),
            "no {line:?} in the log:\n{}",
            ro::tail(&log, 80)
        );
    }
    assert_eq!(log.matches("): pass ").count(), 6, "{}", ro::tail(&log, 80));
}

/// An address the live decision sends to gray by percent (asked from `/decide`).
async fn a_gray_address(g: &common::proc::Graysplit) -> String {
    for i in 1..=250 {
        let ip = format!("10.9.0.{i}");
        let v = common::get_json(g.admin_url(&format!("/decide?ip={ip}"))).await;
        if v["decision"]["pool"] == "gray" && v["decision"]["reason"] == "percent" {
            return ip;
        }
    }
    panic!("no address among 250 is on gray");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gray_answering_5_percent_500s_is_rolled_back_and_its_pinned_users_go_to_base() {
    let consul = ConsulStandIn::start();
    let base = Upstream::start("base");
    let gray = CanaryUpstream::start("gray");
    gray.fail_every(20);
    let g = ro::start(&ro::consul_toml(&consul, "solo"), &ro::pools(&base, &gray));
    consul.put(
        PLAN_KEY,
        r#"{"steps": [25, 50, 100], "step_duration": "10s", "window": "1s", "failure_limit": 2,
            "hold_timeout": "2m", "analysis": {"min_requests": 40, "p99_floor": "2s"}}"#,
    );
    common::eventually(Duration::from_secs(10), "gray at 25 %", || async {
        (ro::live_percent(&g).await == 25.0).then_some(())
    })
    .await;
    // A user on gray by percent loads a page and keeps its pin.
    let ip = a_gray_address(&g).await;
    let pin = common::eventually(Duration::from_secs(10), "a gray page", || async {
        let (status, pool, _, pin, _) = ro::page(&g, &ip, None, "document", "/").await;
        assert_eq!(pool, "gray");
        (status == 200).then_some(pin).flatten()
    })
    .await;
    let load = Load::start(&g, browsers(24), PACE);
    let done = ro::wait(&g, Duration::from_secs(110), "the rollback", |v| {
        ro::status(v) == "rolled_back"
    })
    .await;
    let during = load.finish().await;
    println!("{}", during.summary("5 % 500s"));
    assert!(during.failed > 0, "gray's 500s reached some browsers");

    // Rolled back within failure_limit windows: exactly two judged windows, both failed, the
    // second one rolled back; it never left step 1.
    let verdicts = ro::verdicts(&done);
    assert_eq!(
        verdicts.iter().filter(|v| *v == "fail").count(),
        2,
        "{verdicts:?}"
    );
    assert!(
        verdicts.iter().all(|v| v == "fail" || v == "no_data"),
        "{verdicts:?}"
    );
    assert_eq!(verdicts.last().map(String::as_str), Some("fail"));
    for w in ro::windows(&done).iter().filter(|w| w["verdict"] == "fail") {
        assert_eq!(w["failed_checks"], serde_json::json!(["errors"]), "{w:#}");
        // Every 20th GET failed: any n of them hold n/20 failures, give or take one.
        let (n, failed) = (
            w["gray"]["requests"].as_u64().unwrap(),
            w["gray"]["failed"].as_u64().unwrap(),
        );
        assert!(failed + 1 >= n / 20 && failed <= n / 20 + 1, "{w:#}");
        assert_eq!(w["base"]["failed"], 0, "{w:#}");
        assert_eq!(w["step"], 1);
    }
    let state = &done["state"];
    assert_eq!(
        (state["failures"].clone(), state["step"].clone()),
        (2.into(), 1.into())
    );
    assert_eq!(state["rollback_check"], "errors");
    assert!(
        state["reason"]
            .as_str()
            .unwrap()
            .contains("2 failed window(s)"),
        "{state:#}"
    );
    assert_eq!(state["percent"], 0.0);
    assert_eq!(consul.get(PERCENT_KEY).as_deref(), Some("0"));
    common::eventually(
        Duration::from_secs(5),
        "every request decided at 0 %",
        || async { (ro::live_percent(&g).await == 0.0).then_some(()) },
    )
    .await;
    assert_eq!(
        ro::metric(&g, "graysplit_rollout_rollbacks_total{reason=\"errors\"}").await,
        1.0
    );
    assert!(g
        .log()
        .contains("WARN  graysplit::rollout] rollout: rolled back: 2 failed window(s)"));

    // The page that is open keeps its build for its assets while gray serves ...
    let mut served = false;
    for _ in 0..5 {
        let (status, pool, reason, _, body) =
            ro::page(&g, &ip, Some(&pin), "script", "/assets/app.9abd1b9d.js").await;
        assert_eq!((pool.as_str(), reason.as_str()), ("gray", "sticky"));
        if status == 200 {
            assert!(body.contains(ro::GRAY_BUILD));
            served = true;
            break;
        }
    }
    assert!(served, "the asset came from gray");
    // ... and the user's next page load is on base, re-pinned.
    let (status, pool, reason, new_pin, body) =
        ro::page(&g, &ip, Some(&pin), "document", "/").await;
    assert_eq!(
        (status, pool.as_str(), reason.as_str()),
        (200, "base", "default")
    );
    assert!(body.contains(ro::BASE_BUILD));
    assert!(new_pin.is_some_and(|p| p != pin), "re-pinned to base");
    // Nobody else reaches gray any more.
    let after = Load::start(&g, browsers(24), PACE);
    after.wait_ok(200).await;
    let after = after.finish().await;
    after.assert_clean("after the rollback");
    assert_eq!(
        after.pages_by_pool.get("gray"),
        None,
        "{}",
        after.summary("after")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn low_traffic_holds_without_failing_then_passes_and_a_hold_timeout_fails_the_plan() {
    let consul = ConsulStandIn::start();
    let base = Upstream::start("base");
    let gray = CanaryUpstream::start("gray");
    let g = ro::start(&ro::consul_toml(&consul, "solo"), &ro::pools(&base, &gray));
    let trickle = Load::start(&g, browsers(1), Duration::from_millis(500));
    consul.put(
        PLAN_KEY,
        r#"{"steps": [25, 100], "step_duration": "2s", "window": "1s", "hold_timeout": "2m",
            "analysis": {"min_requests": 30, "p99_floor": "2s"}}"#,
    );
    let held = ro::wait(&g, Duration::from_secs(30), "three quiet windows", |v| {
        ro::windows(v).len() >= 3
    })
    .await;
    assert!(
        ro::verdicts(&held).iter().all(|v| v == "no_data"),
        "{held:#}"
    );
    let s = &held["state"];
    assert_eq!(
        (
            ro::status(&held),
            s["failures"].as_u64(),
            s["passes"].as_u64(),
            s["step"].as_u64()
        ),
        ("running", Some(0), Some(0), Some(1))
    );
    assert!(s["no_data_since_unix_ms"].is_u64());
    assert_eq!(
        consul.get(PERCENT_KEY).as_deref(),
        Some("25"),
        "the step holds"
    );
    // Traffic arrives: the same step passes and the plan goes on.
    let busy = Load::start(&g, browsers(24), PACE);
    let done = ro::wait(&g, Duration::from_secs(110), "the plan to complete", |v| {
        ro::status(v) == "completed"
    })
    .await;
    busy.finish().await.assert_clean("busy");
    assert_eq!(done["state"]["failures"], 0);
    let verdicts = ro::verdicts(&done);
    assert_eq!(
        verdicts.iter().filter(|v| *v == "pass").count(),
        2,
        "{verdicts:?}"
    );

    // A new plan with a short hold timeout on a trickle: it fails, for lack of data. Windows
    // are as exact as the counters' publishing (every 200 ms here): let the last busy requests
    // reach the published record first, so the new plan's first window does not count them.
    trickle.finish().await;
    common::eventually(
        Duration::from_secs(10),
        "the published counters",
        || async {
            let local = ro::rollout(&g).await["local"]["real"].clone();
            let published = consul.get("graysplit/rollout-windows/solo")?;
            let published: serde_json::Value = serde_json::from_str(&published).ok()?;
            (published["real"] == local).then_some(())
        },
    )
    .await;
    let trickle = Load::start(&g, browsers(1), Duration::from_millis(500));
    consul.put(
        PLAN_KEY,
        r#"{"steps": [25, 100], "step_duration": "2s", "window": "1s", "hold_timeout": "3s",
            "analysis": {"min_requests": 30, "p99_floor": "2s"}}"#,
    );
    let failed = ro::wait(&g, Duration::from_secs(60), "the hold timeout", |v| {
        ro::status(v) == "rolled_back" && v["state"]["plan_id"] != done["state"]["plan_id"]
    })
    .await;
    trickle.finish().await;
    let s = &failed["state"];
    assert_eq!(
        (s["rollback_check"].as_str(), s["failures"].as_u64()),
        (Some("no_data"), Some(0))
    );
    let w = ro::windows(&failed);
    assert!(
        !w.is_empty() && w.len() <= 3,
        "windows are at least 1 s: {w:#?}"
    );
    assert!(w.iter().all(|w| w["verdict"] == "no_data"));
    let held_ms = w.last().unwrap()["ended_unix_ms"].as_u64().unwrap()
        - w[0]["started_unix_ms"].as_u64().unwrap();
    assert!(held_ms >= 3_000, "held {held_ms} ms");
    assert_eq!(consul.get(PERCENT_KEY).as_deref(), Some("0"));
    assert_eq!(
        ro::metric(&g, "graysplit_rollout_rollbacks_total{reason=\"no_data\"}").await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_promote_abort_and_a_bad_plan_from_consul_keys_and_admin_posts() {
    let consul = ConsulStandIn::start();
    let base = Upstream::start("base");
    let gray = CanaryUpstream::start("gray");
    let g = ro::start(&ro::consul_toml(&consul, "solo"), &ro::pools(&base, &gray));
    let load = Load::start(&g, browsers(12), PACE);
    const PLAN: &str = r#"{"steps": [25, 50, 100], "step_duration": "5s", "window": "1s",
        "hold_timeout": "2m", "analysis": {"min_requests": 5, "p99_floor": "2s"}}"#;
    consul.put(PLAN_KEY, PLAN);
    ro::wait(&g, Duration::from_secs(30), "a judged window", |v| {
        !ro::windows(v).is_empty()
    })
    .await;
    consul.put(ro::CONTROL_KEY, "pause");
    let paused = ro::wait(&g, Duration::from_secs(10), "paused", |v| {
        ro::status(v) == "paused"
    })
    .await;
    let n = ro::windows(&paused).len();
    // Proving an absence takes time: three window lengths with nothing judged.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = ro::rollout(&g).await;
    assert_eq!(
        (ro::status(&still), ro::windows(&still).len()),
        ("paused", n)
    );
    assert!(still["open_window"].is_null());
    consul.put(ro::CONTROL_KEY, "resume");
    ro::wait(&g, Duration::from_secs(30), "windows again", |v| {
        ro::status(v) == "running" && ro::windows(v).len() > n
    })
    .await;
    // The admin listener writes the same key.
    let r: serde_json::Value = common::client()
        .post(g.admin_url("/rollout/promote"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(consul.get(ro::CONTROL_KEY).as_deref(), Some("promote"));
    let promoted = ro::wait(&g, Duration::from_secs(10), "promoted", |v| {
        ro::status(v) == "promoted"
    })
    .await;
    assert_eq!(consul.get(PERCENT_KEY).as_deref(), Some("100"));
    // A bad plan is refused with every problem; the state is untouched.
    consul.put(
        PLAN_KEY,
        r#"{"steps": [50, 10], "window": "1", "colour": "red"}"#,
    );
    let refused = ro::wait(&g, Duration::from_secs(10), "the plan errors", |v| {
        v["plan_errors"].as_array().is_some_and(|e| e.len() == 3)
    })
    .await;
    let keys: Vec<&str> = refused["plan_errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, vec!["colour", "steps[1]", "window"]);
    assert_eq!(refused["state"]["plan_id"], promoted["state"]["plan_id"]);
    assert!(g
        .log()
        .contains("rollout: plan graysplit/rollout/plan: steps[1] = \"10\""));
    // A new plan starts over at its first step; a bad command is noted; abort goes to 0 %.
    consul.put(PLAN_KEY, PLAN);
    ro::wait(&g, Duration::from_secs(10), "the new plan", |v| {
        ro::status(v) == "running" && v["state"]["step"] == 1
    })
    .await;
    common::eventually(Duration::from_secs(5), "25 %", || async {
        (consul.get(PERCENT_KEY).as_deref() == Some("25")).then_some(())
    })
    .await;
    consul.put(ro::CONTROL_KEY, "stop");
    ro::wait(&g, Duration::from_secs(10), "the bad command noted", |v| {
        v["events"].as_array().unwrap().iter().any(|e| {
            e["kind"] == "ignored" && e["message"].as_str().unwrap().contains("\"stop\" ignored")
        })
    })
    .await;
    let r = common::client()
        .post(g.admin_url("/rollout/abort"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let aborted = ro::wait(&g, Duration::from_secs(10), "aborted", |v| {
        ro::status(v) == "aborted"
    })
    .await;
    assert_eq!(aborted["state"]["reason"], "aborted by the operator");
    assert_eq!(consul.get(PERCENT_KEY).as_deref(), Some("0"));
    load.finish().await.assert_clean("controls");
    for (cmd, n) in [
        ("pause", 1.0),
        ("resume", 1.0),
        ("promote", 1.0),
        ("abort", 1.0),
    ] {
        let series = format!("graysplit_rollout_commands_total{{command=\"{cmd}\"}}");
        assert_eq!(ro::metric(&g, &series).await, n, "{series}");
    }
    let r = common::client()
        .post(g.admin_url("/rollout/explode"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
