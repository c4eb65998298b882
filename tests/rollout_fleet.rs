//! Progressive delivery across a fleet: two real graysplit processes share the Consul stand-in.
//! Exactly one drives the plan (a session lock); both follow the percent; the judge sees the sum
//! of both instances' counters; when the driver is killed, the other takes the lock over (after
//! the session TTL and the lock-delay, as Consul does) and resumes the step where it was.

mod common;

use std::time::Duration;

use common::canary::CanaryUpstream;
use common::consul::ConsulStandIn;
use common::load::{Load, LoadClient};
use common::proc::Graysplit;
use common::rollout::{self as ro, LOCK_KEY, PERCENT_KEY, PLAN_KEY};
use common::upstream::Upstream;

fn browsers(net: u8, n: usize) -> Vec<LoadClient> {
    (1..=n)
        .map(|i| LoadClient::at(&format!("10.{net}.0.{i}")))
        .collect()
}

/// `n` page loads sent on purpose to `pool` (the `x-canary` rule) through `g`, all at once.
async fn burst(g: &Graysplit, pool: &'static str, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = g.url("/");
            tokio::spawn(async move {
                let r = common::client()
                    .get(url)
                    .header("x-canary", pool)
                    .header("x-forwarded-for", format!("10.99.0.{}", i + 1))
                    .header("sec-fetch-dest", "document")
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status(), 200);
                assert_eq!(r.headers()["x-graysplit-pool"], pool);
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
}

/// Sums a side's numbers over the windows after `after`.
fn summed(v: &serde_json::Value, after: u64, f: impl Fn(&serde_json::Value) -> u64) -> u64 {
    ro::windows(v)
        .iter()
        .filter(|w| w["number"].as_u64().unwrap() > after)
        .map(f)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_one_driver_both_follow_the_judge_sums_and_a_killed_driver_is_replaced() {
    let consul = ConsulStandIn::start();
    let base = Upstream::start("base");
    let gray = CanaryUpstream::start("gray");
    let files = ro::pools(&base, &gray);
    let a = ro::start(&ro::consul_toml(&consul, "a"), &files);
    let b = ro::start(&ro::consul_toml(&consul, "b"), &files);

    // Exactly one driver, and both agree which.
    let holder = common::eventually(Duration::from_secs(20), "one driver", || async {
        let (va, vb) = (ro::rollout(&a).await, ro::rollout(&b).await);
        let drivers = [&va, &vb]
            .iter()
            .filter(|v| v["driver"]["this_instance"] == true)
            .count();
        let same = va["driver"]["holder"] == vb["driver"]["holder"];
        (drivers == 1 && same)
            .then(|| va["driver"]["holder"].as_str().map(str::to_string))
            .flatten()
    })
    .await;
    assert_eq!(consul.get(LOCK_KEY).as_deref(), Some(holder.as_str()));
    assert_eq!(consul.lock_index(LOCK_KEY), 1);
    let (driver, survivor, survivor_name) = if holder == "a" {
        (&a, &b, "b")
    } else {
        (&b, &a, "a")
    };
    assert_eq!(ro::metric(driver, "graysplit_rollout_driver").await, 1.0);
    assert_eq!(ro::metric(survivor, "graysplit_rollout_driver").await, 0.0);

    consul.put(
        PLAN_KEY,
        r#"{"steps": [20, 40, 100], "step_duration": "4s", "window": "1s", "hold_timeout": "2m",
            "analysis": {"min_requests": 30, "p99_floor": "2s"}}"#,
    );
    // Both instances follow the step.
    common::eventually(Duration::from_secs(10), "both at 20 %", || async {
        (ro::live_percent(&a).await == 20.0 && ro::live_percent(&b).await == 20.0).then_some(())
    })
    .await;

    // The judge sees the sum: with no traffic the windows are empty; then each instance gets
    // 20 gray and 20 base page loads — below min_requests (30) alone, above it together.
    let quiet = ro::wait(driver, Duration::from_secs(20), "an empty window", |v| {
        ro::windows(v)
            .iter()
            .any(|w| w["gray"]["requests"] == 0 && w["base"]["requests"] == 0)
    })
    .await;
    let after = ro::windows(&quiet)
        .last()
        .and_then(|w| w["number"].as_u64())
        .unwrap();
    let mut bursts = 0u64;
    let summed_pass = loop {
        bursts += 1;
        tokio::join!(
            burst(&a, "gray", 20),
            burst(&a, "base", 20),
            burst(&b, "gray", 20),
            burst(&b, "base", 20)
        );
        let want = 40 * bursts;
        let v = ro::wait(
            driver,
            Duration::from_secs(20),
            "the burst in the windows",
            |v| {
                summed(v, after, |w| w["gray"]["requests"].as_u64().unwrap()) == want
                    && summed(v, after, |w| w["base"]["requests"].as_u64().unwrap()) == want
            },
        )
        .await;
        for inst in ["a", "b"] {
            let mine = summed(&v, after, |w| {
                w["instances"][inst]["gray"].as_u64().unwrap_or(0)
            });
            assert_eq!(mine, 20 * bursts, "{inst}'s share of the sum");
        }
        // A window that held a whole burst passed on the sum of both instances.
        let pass = ro::windows(&v).into_iter().find(|w| {
            w["number"].as_u64().unwrap() > after
                && w["verdict"] == "pass"
                && ["a", "b"].iter().all(|i| {
                    let g = w["instances"][*i]["gray"].as_u64().unwrap_or(0);
                    g > 0 && g < 30
                })
        });
        if let Some(w) = pass {
            break w;
        }
        // The burst straddled a window boundary: again.
        assert!(bursts < 5, "five bursts, none judged whole:\n{v:#}");
    };
    assert!(summed_pass["gray"]["requests"].as_u64().unwrap() >= 30);

    // Browser-like load through both instances for the rest of the plan.
    let load_driver = Load::start(driver, browsers(1, 12), Duration::from_millis(40));
    let load_survivor = Load::start(survivor, browsers(2, 12), Duration::from_millis(40));
    let at_two = ro::wait(driver, Duration::from_secs(60), "step 2", |v| {
        v["state"]["step"] == 2 && v["state"]["passes"].as_u64() >= Some(1)
    })
    .await;
    common::eventually(Duration::from_secs(5), "both at 40 %", || async {
        (ro::live_percent(&a).await == 40.0 && ro::live_percent(&b).await == 40.0).then_some(())
    })
    .await;
    let both = ro::windows(&at_two).into_iter().any(|w| {
        ["a", "b"]
            .iter()
            .all(|i| w["instances"][*i]["gray"].as_u64().unwrap_or(0) > 0)
    });
    assert!(
        both,
        "windows hold both instances' gray traffic:\n{at_two:#}"
    );

    // Kill the driver mid-step. The survivor takes over once the session expires and the
    // lock-delay has passed, and resumes step 2 (never back to step 1, never to 0 %).
    let plan_id = at_two["state"]["plan_id"].clone();
    driver.signal(libc::SIGKILL);
    let died = load_driver.finish().await;
    println!("{}", died.summary("the driver's own browsers"));
    let percents = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let taken = common::eventually(Duration::from_secs(40), "the takeover", || async {
        let now = consul.get(PERCENT_KEY).unwrap_or_default();
        percents.lock().unwrap().insert(now);
        let v = ro::rollout(survivor).await;
        (v["driver"]["this_instance"] == true).then_some(v)
    })
    .await;
    let percents = percents.into_inner().unwrap();
    assert!(
        percents.iter().all(|p| p == "40" || p == "100"),
        "the percent never went back: {percents:?}"
    );
    assert_eq!(consul.lock_index(LOCK_KEY), 2, "acquired anew");
    assert_eq!(consul.get(LOCK_KEY).as_deref(), Some(survivor_name));
    let done = ro::wait(survivor, Duration::from_secs(60), "completion", |v| {
        ro::status(v) == "completed"
    })
    .await;
    assert_eq!(done["state"]["plan_id"], plan_id, "the same plan, resumed");
    assert_eq!(done["state"]["driver"], survivor_name);
    let resumed = done["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "resume")
        .unwrap_or_else(|| panic!("no resume event:\n{done:#}"));
    let msg = resumed["message"].as_str().unwrap();
    assert!(msg.contains("at step 2/3"), "{msg}");
    assert!(taken["state"]["step"].as_u64() >= Some(2), "{taken:#}");
    // No window of step 1 after the takeover, and nothing failed.
    let resumed_at = resumed["at_unix_ms"].as_u64().unwrap();
    for w in ro::windows(&done) {
        if w["ended_unix_ms"].as_u64().unwrap() > resumed_at {
            assert_eq!(w["step"], 2, "{w:#}");
        }
        assert_ne!(w["verdict"], "fail", "{w:#}");
    }
    assert_eq!(consul.get(PERCENT_KEY).as_deref(), Some("100"));
    common::eventually(Duration::from_secs(5), "the survivor at 100 %", || async {
        (ro::live_percent(survivor).await == 100.0).then_some(())
    })
    .await;
    load_survivor
        .finish()
        .await
        .assert_clean("the survivor's browsers");
    let log = survivor.log();
    assert!(log.contains("rollout: this instance (") && log.contains(") drives the plan now"));
    assert!(
        log.contains("rollout: resuming plan"),
        "{}",
        ro::tail(&log, 40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_that_stops_cleanly_releases_the_lock_and_destroys_its_session() {
    let consul = ConsulStandIn::start();
    let base = Upstream::start("base");
    let gray = CanaryUpstream::start("gray");
    let files = ro::pools(&base, &gray);
    let a = ro::start(&ro::consul_toml(&consul, "a"), &files);
    let b = ro::start(&ro::consul_toml(&consul, "b"), &files);
    let session = common::eventually(Duration::from_secs(20), "a driver", || async {
        consul.lock_holder(LOCK_KEY)
    })
    .await;
    let (driver, survivor) = if consul.get(LOCK_KEY).as_deref() == Some("a") {
        (&a, &b)
    } else {
        (&b, &a)
    };
    driver.signal(libc::SIGTERM);
    // Gone before its TTL could have expired it: the session is renewed every 5 s (TTL/2) and
    // lives 10 s, so it cannot expire within 4 s of the signal; only the driver destroys it.
    common::eventually(Duration::from_secs(4), "the session destroyed", || async {
        (!consul.sessions().contains(&session)).then_some(())
    })
    .await;
    common::eventually(
        Duration::from_secs(10),
        "the other instance driving",
        || async {
            let v = ro::rollout(survivor).await;
            (v["driver"]["this_instance"] == true).then_some(())
        },
    )
    .await;
    assert_eq!(consul.lock_index(LOCK_KEY), 2);
    let log = driver.log();
    assert!(
        log.contains("rollout: lock graysplit/rollout/lock released"),
        "{}",
        ro::tail(&log, 30)
    );
}
