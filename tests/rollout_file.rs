//! Progressive delivery on a single instance without Consul: the plan in a file, the state in a
//! file next to it (a restart resumes the step), commands as admin POSTs, the step set on the
//! in-memory switches; `graysplit -t` checks the plan file and `-t --plan` any plan.

mod common;

use std::path::Path;
use std::time::Duration;

use common::canary::CanaryUpstream;
use common::load::{Load, LoadClient};
use common::proc::run;
use common::rollout as ro;
use common::upstream::Upstream;

fn browsers(n: usize) -> Vec<LoadClient> {
    (1..=n)
        .map(|i| LoadClient::at(&format!("10.5.0.{i}")))
        .collect()
}

fn file_toml(plan: &Path) -> String {
    format!(
        "{}[rollout]\nplan_file = \"{}\"\ntick = \"100ms\"\ninstance = \"single\"\n",
        ro::common_toml(""),
        plan.display()
    )
}

const PLAN: &str = r#"{"steps": [25, 50, 75, 100], "step_duration": "3s", "window": "1s",
    "hold_timeout": "2m", "analysis": {"min_requests": 10, "p99_floor": "2s"}}"#;

async fn post(g: &common::proc::Graysplit, path: &str) -> serde_json::Value {
    common::client()
        .post(g.admin_url(path))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_resumes_the_step_from_the_state_file() {
    let shared = tempfile::tempdir().unwrap();
    let plan = shared.path().join("rollout.json");
    let state = shared.path().join("rollout.json.state");
    let base = Upstream::start("base");
    let gray = CanaryUpstream::start("gray");
    let files = ro::pools(&base, &gray);
    let first = ro::start(&file_toml(&plan), &files);
    std::fs::write(&plan, PLAN).unwrap();
    let load = Load::start(&first, browsers(16), Duration::from_millis(40));
    let at_two = ro::wait(&first, Duration::from_secs(60), "step 2", |v| {
        v["state"]["step"] == 2 && v["state"]["passes"].as_u64() >= Some(1)
    })
    .await;
    assert_eq!(at_two["mode"], "file");
    assert_eq!(ro::live_percent(&first).await, 50.0);
    first.signal(libc::SIGKILL);
    load.finish().await;
    // What the state file says is what the next process starts from.
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["status"], "running");
    assert_eq!(saved["step_index"], 1);
    let passes_before = saved["passes"].as_u64().unwrap();

    let second = ro::start(&file_toml(&plan), &files);
    let resumed = ro::wait(&second, Duration::from_secs(10), "the resumed state", |v| {
        v["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == "resume"))
    })
    .await;
    assert_eq!(resumed["state"]["plan_id"], at_two["state"]["plan_id"]);
    assert_eq!(resumed["state"]["step"], 2);
    assert!(resumed["state"]["passes"].as_u64() >= Some(passes_before));
    common::eventually(Duration::from_secs(5), "50 % again", || async {
        (ro::live_percent(&second).await == 50.0).then_some(())
    })
    .await;
    let load = Load::start(&second, browsers(16), Duration::from_millis(40));
    let done = ro::wait(&second, Duration::from_secs(90), "completion", |v| {
        ro::status(v) == "completed"
    })
    .await;
    load.finish().await.assert_clean("after the restart");
    let resumed_at = resumed["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "resume")
        .and_then(|e| e["at_unix_ms"].as_u64())
        .unwrap();
    for w in ro::windows(&done) {
        if w["ended_unix_ms"].as_u64().unwrap() > resumed_at {
            assert!(
                w["step"].as_u64().unwrap() >= 2,
                "never back to step 1: {w:#}"
            );
        }
    }
    assert_eq!(ro::live_percent(&second).await, 100.0);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_posts_pause_resume_and_abort_and_a_bad_plan_file_changes_nothing() {
    let shared = tempfile::tempdir().unwrap();
    let plan = shared.path().join("rollout.json");
    std::fs::write(&plan, PLAN).unwrap();
    let base = Upstream::start("base");
    let gray = CanaryUpstream::start("gray");
    let g = ro::start(&file_toml(&plan), &ro::pools(&base, &gray));
    let load = Load::start(&g, browsers(8), Duration::from_millis(40));
    ro::wait(&g, Duration::from_secs(10), "running", |v| {
        ro::status(v) == "running"
    })
    .await;
    assert_eq!(post(&g, "/rollout/pause").await["ok"], true);
    ro::wait(&g, Duration::from_secs(10), "paused", |v| {
        ro::status(v) == "paused"
    })
    .await;
    assert_eq!(ro::live_percent(&g).await, 25.0, "a pause keeps the step");
    assert_eq!(post(&g, "/rollout/resume").await["ok"], true);
    ro::wait(&g, Duration::from_secs(10), "running", |v| {
        ro::status(v) == "running"
    })
    .await;
    // A broken plan file is refused with every problem; the running plan goes on.
    std::fs::write(&plan, r#"{"steps": [25, 5], "window": "soon"}"#).unwrap();
    let refused = ro::wait(&g, Duration::from_secs(10), "the plan errors", |v| {
        v["plan_errors"].as_array().is_some_and(|e| e.len() == 2)
    })
    .await;
    assert_eq!(ro::status(&refused), "running");
    let conf = g.path("graysplit.toml");
    let out = run(&["-t", "-c", conf.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("rollout.plan_file (") && err.contains(") steps[1] = \"5\""),
        "{err}"
    );
    assert!(err.contains(") window = \"soon\""), "{err}");
    let r = post(&g, "/rollout/abort").await;
    assert_eq!(r["ok"], true);
    let aborted = ro::wait(&g, Duration::from_secs(10), "aborted", |v| {
        ro::status(v) == "aborted"
    })
    .await;
    assert_eq!(aborted["state"]["percent"], 0.0);
    assert_eq!(ro::live_percent(&g).await, 0.0);
    let again = post(&g, "/rollout/resume").await;
    assert_eq!(again["ok"], true, "sent; the driver notes it is over");
    ro::wait(&g, Duration::from_secs(10), "the ignored resume", |v| {
        v["events"].as_array().unwrap().iter().any(|e| {
            e["kind"] == "ignored" && e["message"] == "resume ignored: the plan is aborted"
        })
    })
    .await;
    load.finish().await.assert_clean("file mode controls");
}

#[test]
fn check_validates_plans_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.conf"), "server 127.0.0.1:1;\n").unwrap();
    let conf = dir.path().join("graysplit.toml");
    std::fs::write(
        &conf,
        "[pools.base]\nfile = \"base.conf\"\n[rollout]\nplan_file = \"rollout.json\"\n",
    )
    .unwrap();
    let c = conf.to_str().unwrap();
    // No plan yet is fine.
    let out = run(&["-t", "-c", c]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(text.contains("no rollout plan at"), "{text}");
    std::fs::write(dir.path().join("rollout.json"), PLAN).unwrap();
    let out = run(&["-t", "-c", c]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rollout plan with 4 step(s)"));
    // -t --plan checks a plan meant for Consul.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"steps": [0, 200], "failure_limit": 0, "analysis": {"confidence": 20}}"#,
    )
    .unwrap();
    let out = run(&["-t", "-c", c, "--plan", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for needle in [
        "bad.json: steps[0] = \"0\": must be greater than 0",
        "bad.json: steps[1] = \"200\": must be a number from 0 to 100",
        "bad.json: failure_limit = \"0\"",
        "bad.json: analysis.confidence = \"20\"",
        "test failed (4 errors)",
    ] {
        assert!(err.contains(needle), "no {needle:?} in {err}");
    }
    let good = dir.path().join("rollout.json");
    let out = run(&["-t", "-c", c, "--plan", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rollout plan OK"));
}
