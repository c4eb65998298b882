//! Mirroring (the plan's stage 0): copies of base page loads go to gray after the answer,
//! without bodies or cookies, capped in flight (copies are dropped, never queued), with a short
//! timeout, and counted apart from gray's real traffic. Real binary, file-mode plan.

mod common;

use std::time::Duration;

use common::canary::CanaryUpstream;
use common::load::{Load, LoadClient};
use common::proc::Graysplit;
use common::rollout as ro;

/// A plan that stays in its mirror stage (it never gets enough data to be judged).
const MIRROR_ONLY: &str = r#"{"steps": [10], "step_duration": "1m", "window": "1s",
    "hold_timeout": "10m", "mirror": {"percent": 100, "duration": "1m"},
    "analysis": {"min_requests": 1000000}}"#;

fn start(base: &CanaryUpstream, gray: &CanaryUpstream, dir: &std::path::Path) -> Graysplit {
    let plan = dir.join("rollout.json");
    std::fs::write(&plan, MIRROR_ONLY).unwrap();
    let toml = format!(
        "{}[rollout]\nplan_file = \"{}\"\ntick = \"100ms\"\n[rollout.mirror]\n\
         max_in_flight = 2\ntimeout = \"300ms\"\n",
        ro::common_toml(""),
        plan.display()
    );
    let files = vec![
        ("base.conf", base.line(ro::BASE_BUILD)),
        ("gray.conf", gray.line(ro::GRAY_BUILD)),
    ];
    ro::start(&toml, &files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_leave_after_the_answer_without_cookies_or_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let base = CanaryUpstream::start("base");
    let gray = CanaryUpstream::start("gray");
    // A slow base: if a copy left before the answer, gray would see it first.
    base.set_delay(Duration::from_millis(150));
    let g = start(&base, &gray, dir.path());
    ro::wait(&g, Duration::from_secs(10), "the mirror stage", |v| {
        v["mirror"]["percent"] == 100.0
    })
    .await;
    for n in 0..12 {
        let path = format!("/?n={n}");
        let r = common::client()
            .get(g.url(&path))
            .header("sec-fetch-dest", "document")
            .header("accept", "text/html")
            .header("cookie", "session=secret")
            .header("x-forwarded-for", "10.3.0.1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-graysplit-pool"], "base");
        r.text().await.unwrap();
    }
    // An asset and a POST are never copied.
    common::client()
        .get(g.url("/assets/app.5bdff181.js"))
        .header("sec-fetch-dest", "script")
        .send()
        .await
        .unwrap();
    common::client()
        .post(g.url("/form"))
        .header("sec-fetch-dest", "document")
        .body("a=1")
        .send()
        .await
        .unwrap();
    common::eventually(Duration::from_secs(10), "the copies", || async {
        (gray.mirrored() >= 12).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing else may arrive
    let seen = gray.seen();
    assert_eq!(seen.len(), 12, "{seen:#?}");
    for s in &seen {
        assert!(
            s.mirrored && s.method == "GET" && !s.had_cookie && !s.had_body,
            "{s:?}"
        );
        // Causal, not a race with the test's own clock: base records the moment it begins its
        // answer, before writing it; a copy sent only after graysplit relayed that answer
        // reaches gray later.
        let began = base
            .shared
            .answering
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| *p == s.path)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("a copy of a page base never answered: {s:?}"));
        assert!(
            s.at >= began,
            "the copy of {} reached gray before base answered it",
            s.path
        );
    }
    assert_eq!(
        ro::metric(&g, "graysplit_mirror_requests_total{result=\"2xx\"}").await,
        12.0
    );
    assert_eq!(
        ro::metric_sum(&g, "graysplit_requests_total", &["pool=\"gray\""]).await,
        0.0,
        "copies are not gray traffic"
    );
    let v = ro::rollout(&g).await;
    assert_eq!(v["local"]["mirror"]["gray"][ro::GRAY_BUILD]["requests"], 12);
    assert_eq!(v["state"]["stage"], "mirror");
    assert_eq!(
        ro::live_percent(&g).await,
        0.0,
        "no user on gray in the mirror stage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_gray_gets_at_most_max_in_flight_copies_and_base_is_served_throughout() {
    let dir = tempfile::tempdir().unwrap();
    let base = CanaryUpstream::start("base");
    let gray = CanaryUpstream::start("gray");
    gray.set_delay(Duration::from_secs(2));
    let g = start(&base, &gray, dir.path());
    ro::wait(&g, Duration::from_secs(10), "the mirror stage", |v| {
        v["mirror"]["percent"] == 100.0
    })
    .await;
    let clients = (1..=8)
        .map(|i| LoadClient::at(&format!("10.4.0.{i}")).expecting("base"))
        .collect();
    let load = Load::start(&g, clients, Duration::from_millis(20));
    let max_in_flight = std::sync::atomic::AtomicU64::new(0);
    common::eventually(
        Duration::from_secs(30),
        "dropped and timed-out copies",
        || async {
            let v = ro::rollout(&g).await;
            let now = v["mirror"]["in_flight"].as_u64().unwrap_or(0);
            max_in_flight.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
            let dropped = ro::metric(&g, "graysplit_mirror_dropped_total{why=\"in_flight\"}").await;
            let timeouts =
                ro::metric(&g, "graysplit_mirror_requests_total{result=\"timeout\"}").await;
            (dropped >= 20.0 && timeouts >= 4.0).then_some(())
        },
    )
    .await;
    let report = load.finish().await;
    report.assert_clean("slow gray");
    assert_eq!(report.pages_by_pool.get("gray"), None);
    let max_in_flight = max_in_flight.into_inner();
    assert!(max_in_flight <= 2, "in flight: {max_in_flight}");
    // Every base page load was either copied or dropped, counted, never queued or lost; the
    // copies that reached gray are the ones sent (the dropped ones never left).
    ro::wait(&g, Duration::from_secs(10), "no copy in flight", |v| {
        v["mirror"]["in_flight"] == 0
    })
    .await;
    let sent = ro::metric_sum(&g, "graysplit_mirror_requests_total", &[]).await;
    let dropped = ro::metric_sum(&g, "graysplit_mirror_dropped_total", &[]).await;
    assert_eq!(
        sent + dropped,
        report.pages as f64,
        "{}",
        report.summary("slow gray")
    );
    assert!(
        gray.mirrored() as f64 <= sent,
        "{} reached, {sent} sent",
        gray.mirrored()
    );
    // Gray recovers: copies succeed and are counted in the mirror windows.
    gray.set_delay(Duration::ZERO);
    let before = ro::metric(&g, "graysplit_mirror_requests_total{result=\"2xx\"}").await;
    let load = Load::start(
        &g,
        vec![LoadClient::at("10.4.1.1")],
        Duration::from_millis(50),
    );
    common::eventually(Duration::from_secs(20), "successful copies", || async {
        let now = ro::metric(&g, "graysplit_mirror_requests_total{result=\"2xx\"}").await;
        (now >= before + 5.0).then_some(())
    })
    .await;
    let recovered = load.finish().await;
    assert_eq!(
        recovered.failed,
        0,
        "{}",
        recovered.summary("gray recovered")
    );
    let v = ro::wait(&g, Duration::from_secs(10), "a window with copies", |v| {
        ro::windows(v)
            .iter()
            .any(|w| w["stage"] == "mirror" && w["gray"]["requests"].as_u64() > Some(0))
    })
    .await;
    assert!(ro::verdicts(&v).iter().all(|v| v == "no_data"));
    assert_eq!(ro::status(&v), "running");
}
