//! The dashboard (issue 16, point 1) in a real headless Chromium: the page at `/` on the admin
//! listener, after known traffic, shows what `/status?format=json` says — every server's build,
//! weight, health, passive state and in-flight count, the switches and where they came from,
//! requests and 5xx by pool / build and by reason, pins set and rejected — draws its charts from
//! the counters as they grow, says "no rollout" while no rollout is configured, and logs no console
//! error (its Content Security Policy included). Screenshot: `<target>/browser-test/dashboard.png`.
//! A second test runs a file-mode rollout plan and checks the rollout section against `/rollout`
//! (`dashboard-rollout.png`).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::chrome::{console_errors, screenshot_dir, ChromeDriver};
use common::faulty::{FaultyUpstream, Mode};
use common::proc::Graysplit;
use common::upstream::Upstream;
use common::{client, eventually, get_json};
use serde_json::Value;

/// Everything the page shows, read from its DOM.
const READ_PAGE: &str = r#"
    const txt = (root, sel) => { const n = root.querySelector(sel); return n ? n.textContent.trim() : null; };
    const servers = [...document.querySelectorAll('tr[data-server]')].map((tr) => ({
        pool: tr.dataset.pool, name: tr.dataset.server,
        build: txt(tr, '[data-field="build"]'), weight: txt(tr, '[data-field="weight"]'),
        health: txt(tr, '[data-field="health"]'), passive: txt(tr, '[data-field="passive"]'),
        in_flight: txt(tr, '[data-field="in_flight"]'), flags: txt(tr, '[data-field="flags"]'),
    }));
    const rows = (sel, key) => [...document.querySelectorAll(sel)].map((tr) => ({
        pool: tr.dataset.pool, key: tr.dataset[key],
        requests: txt(tr, '[data-field="requests"]'), errors: txt(tr, '[data-field="errors"]'),
    }));
    const cells = (attr) => Object.fromEntries([...document.querySelectorAll('[' + attr + ']')]
        .map((td) => [td.getAttribute(attr), td.textContent.trim()]));
    return {
        refreshes: Number(document.body.dataset.refreshes || 0),
        servers,
        builds: rows('#builds-body tr', 'build'),
        reasons: rows('#reasons-body tr', 'reason'),
        switches: {
            enabled: txt(document, '[data-field="switch-enabled"]'),
            all: txt(document, '[data-field="switch-all"]'),
            percent: txt(document, '[data-field="switch-percent"]'),
            source: txt(document, '[data-field="switch-source"]'),
        },
        pins_set: cells('data-pin-set'),
        pins_rejected: cells('data-pin-rejected'),
        rollout: txt(document, '#rollout-body'),
        chart_points: Number(document.getElementById('chart-rate').getAttribute('data-points') || 0),
        reason_series: [...document.querySelectorAll('#chart-reasons polyline')].map((l) => l.dataset.series),
        problem: txt(document, '#problem'),
    };
"#;

/// The y of every point of one chart series (the chart is 150 high; 146 is a rate of 0).
const SERIES_YS: &str = r#"
    const line = document.querySelector('#chart-rate polyline[data-series="' + arguments[0] + '"]');
    if (!line) return [];
    return line.getAttribute('points').split(' ').filter((p) => p).map((p) => Number(p.split(',')[1]));
"#;

fn on_off(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "on"
    } else {
        "off"
    }
}

/// (pool, key) → (requests, 5xx) summed from `/status?format=json`'s `requests`.
fn sums(status: &Value, key: &str) -> BTreeMap<(String, String), (u64, u64)> {
    let mut out = BTreeMap::new();
    for r in status["requests"].as_array().expect("requests") {
        let e = out
            .entry((
                r["pool"].as_str().unwrap().to_string(),
                r[key].as_str().unwrap().to_string(),
            ))
            .or_insert((0, 0));
        let n = r["requests"].as_u64().unwrap();
        e.0 += n;
        if r["class"] == "5xx" {
            e.1 += n;
        }
    }
    out
}

fn page_sums(rows: &Value) -> BTreeMap<(String, String), (u64, u64)> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let n = |k: &str| {
                r[k].as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("a number")
            };
            (
                (
                    r["pool"].as_str().unwrap().to_string(),
                    r["key"].as_str().unwrap().to_string(),
                ),
                (n("requests"), n("errors")),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_status_json_says_in_chromium() {
    let (base1, base2, gray1) = (
        Upstream::start("base"),
        Upstream::start("base"),
        Upstream::start("gray"),
    );
    let hold = FaultyUpstream::start("base", Mode::BlackHole);
    let toml = "[health]\ninterval = \"60s\"\n\
                [gray]\nwhitelist_file = \"whitelist.txt\"\nswitches_file = \"switches.conf\"\n\
                [pin]\nsecrets = [\"dashboard-test-secret-0123456789\"]\n\
                [pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n\
                [pools.hold]\nfile = \"hold.conf\"\n[pools.hold.health]\nenabled = false\n\
                [[routes]]\nprefix = \"/hold/\"\npool = \"hold\"\n";
    let files = [
        (
            "base.conf",
            format!(
                "{} # build=base-1\n{} # build=base-2\n",
                base1.line("weight=2"),
                base2.line("weight=0")
            ),
        ),
        ("gray.conf", format!("{} # build=gray-1\n", gray1.line(""))),
        ("hold.conf", format!("{}\n", hold.line("max_fails=0"))),
        ("whitelist.txt", "10.9.9.9\n".to_string()),
        // From the file rather than the config: the page says where switches come from. (A
        // percent above 0 would send some of this test's fixed clients to gray.)
        (
            "switches.conf",
            "enabled = true\nall = false\npercent = 0\n".to_string(),
        ),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = Graysplit::start(toml, &refs);
    eventually(Duration::from_secs(5), "the switches file", || async {
        let s = get_json(g.admin_url("/status?format=json")).await;
        (s["switches"]["source"] == "switches file").then_some(())
    })
    .await;

    // Known traffic: 6 base pages (base-2 is drained), 3 pages of a whitelisted client behind
    // the trusted local proxy, 2 misses, an asset with a forged pin, 2 requests held in flight.
    let c = client();
    let get = |path: &str, headers: &[(&str, String)]| {
        let mut req = c.get(g.url(path));
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        async move {
            let r = req.send().await.expect("request");
            let status = r.status().as_u16();
            let _ = r.bytes().await;
            status
        }
    };
    let page = [("accept", "text/html".to_string())];
    for _ in 0..6 {
        assert_eq!(get("/", &page).await, 200);
    }
    let whitelisted = [
        ("accept", "text/html".to_string()),
        ("x-forwarded-for", "10.9.9.9".to_string()),
    ];
    for _ in 0..3 {
        assert_eq!(get("/", &whitelisted).await, 200);
    }
    for _ in 0..2 {
        assert_eq!(get("/missing.txt", &[]).await, 404);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forged = format!("graysplit=v1.gray.gray-1.{now}.{}", "A".repeat(43));
    assert_eq!(
        get("/assets/app.5bdff181.js", &[("cookie", forged)]).await,
        200
    );
    let held: Vec<_> = (0..2)
        .map(|i| {
            let url = g.url(&format!("/hold/{i}"));
            tokio::spawn(async move { client().get(url).send().await.map(|r| r.status()) })
        })
        .collect();
    eventually(Duration::from_secs(5), "two requests in flight", || async {
        let s = get_json(g.admin_url("/status?format=json")).await;
        (s["pools"]["hold"]["servers"][0]["in_flight"] == 2).then_some(())
    })
    .await;

    let driver = ChromeDriver::start();
    let profile = tempfile::tempdir().expect("profile");
    let browser = driver.session(profile.path(), (1280, 1400)).await;
    browser
        .goto(&g.admin_url("/?refresh=300ms"))
        .await
        .expect("open the dashboard");
    let shown = eventually(
        Duration::from_secs(15),
        "the dashboard to refresh 3 times",
        || async {
            let v = browser.execute(READ_PAGE, vec![]).await.ok()?;
            (v["refreshes"].as_u64()? >= 3 && v["chart_points"].as_u64()? >= 2).then_some(v)
        },
    )
    .await;
    let status = get_json(g.admin_url("/status?format=json")).await;

    // Servers: one row each, with the JSON's values.
    let mut expected_rows = 0;
    for (pool, p) in status["pools"].as_object().unwrap() {
        for srv in p["servers"].as_array().unwrap() {
            expected_rows += 1;
            let row = shown["servers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["pool"] == pool.as_str() && r["name"] == srv["name"])
                .unwrap_or_else(|| panic!("no row for {pool} {} in {shown}", srv["name"]));
            assert_eq!(row["build"], srv["effective_build"], "{row}");
            assert_eq!(row["weight"], srv["weight"].to_string(), "{row}");
            assert_eq!(row["health"], srv["health"], "{row}");
            let passive = if srv["ejected"] == true {
                "ejected"
            } else {
                "ok"
            };
            assert_eq!(row["passive"], passive, "{row}");
            assert_eq!(row["in_flight"], srv["in_flight"].to_string(), "{row}");
        }
    }
    assert_eq!(shown["servers"].as_array().unwrap().len(), expected_rows);
    let row = |pool: &str| {
        shown["servers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["pool"] == pool)
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(row("hold")[0]["in_flight"], "2");
    assert_eq!(row("base")[1]["flags"], "draining");
    assert_eq!(
        (
            row("base")[1]["weight"].as_str(),
            row("base")[1]["build"].as_str()
        ),
        (Some("0"), Some("base-2"))
    );

    // Switches and their source.
    let sw = &status["switches"];
    assert_eq!(shown["switches"]["enabled"], on_off(&sw["enabled"]));
    assert_eq!(shown["switches"]["all"], on_off(&sw["all"]));
    let percent = shown["switches"]["percent"]
        .as_str()
        .and_then(|p| p.strip_suffix(" %"));
    assert_eq!(
        percent.and_then(|p| p.parse::<f64>().ok()),
        sw["percent"].as_f64()
    );
    assert_eq!(shown["switches"]["source"], "switches file");
    assert_eq!(shown["switches"]["percent"], "0 %");

    // Requests and 5xx by pool / build and by pool / reason, as counted.
    let by_build = sums(&status, "build");
    assert_eq!(page_sums(&shown["builds"]), by_build);
    assert_eq!(page_sums(&shown["reasons"]), sums(&status, "reason"));
    let count = |pool: &str, build: &str| {
        by_build
            .get(&(pool.to_string(), build.to_string()))
            .map(|c| c.0)
    };
    assert_eq!(
        count("base", "base-1"),
        Some(9),
        "6 pages, 2 misses, 1 asset: {by_build:?}"
    );
    assert_eq!(count("gray", "gray-1"), Some(3), "{by_build:?}");
    assert_eq!(count("base", "base-2"), None, "drained: no page");

    // Pins.
    for (kind, cells) in [
        ("set", &shown["pins_set"]),
        ("rejected", &shown["pins_rejected"]),
    ] {
        for (why, n) in cells.as_object().unwrap() {
            let want = status["pins"][kind][why].as_u64().unwrap_or(0).to_string();
            assert_eq!(n.as_str(), Some(want.as_str()), "pins {kind} {why}");
        }
    }
    assert_eq!(shown["pins_rejected"]["forged"], "1");
    assert_eq!(
        shown["pins_set"]["new"],
        status["pins"]["set"]["new"].to_string()
    );
    assert_eq!(
        shown["rollout"], "no rollout",
        "no [rollout] source configured"
    );
    let mut reason_series: Vec<String> = shown["reason_series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    reason_series.sort();
    let mut want: Vec<String> = sums(&status, "reason")
        .keys()
        .map(|(p, r)| format!("{p} / {r}"))
        .collect();
    want.sort();
    assert_eq!(reason_series, want, "one line per pool and reason");

    // The charts follow the counters while the page is open.
    for _ in 0..10 {
        assert_eq!(get("/", &page).await, 200);
    }
    eventually(
        Duration::from_secs(15),
        "a non-zero rate in the chart",
        || async {
            let ys = browser
                .execute(SERIES_YS, vec![Value::from("base / base-1")])
                .await
                .ok()?;
            ys.as_array()?
                .iter()
                .any(|y| y.as_f64().is_some_and(|y| y < 145.0))
                .then_some(())
        },
    )
    .await;

    let shot = screenshot_dir().join("dashboard.png");
    std::fs::write(&shot, browser.screenshot().await.expect("screenshot"))
        .expect("save dashboard.png");
    let problem = browser.execute(READ_PAGE, vec![]).await.unwrap()["problem"].clone();
    assert_eq!(problem, "", "no fetch failed");
    assert_eq!(console_errors(&browser).await, Vec::<String>::new());
    browser.close().await.expect("close the session");
    for h in held {
        h.abort();
    }
}

/// The rollout section's fields and the windows it lists, read from the DOM.
const READ_ROLLOUT: &str = r#"
    const fields = Object.fromEntries([...document.querySelectorAll('[data-rollout-field]')]
        .map((dd) => [dd.getAttribute('data-rollout-field'), dd.textContent.trim()]));
    const windows = [...document.querySelectorAll('table[data-rollout="windows"] tbody tr')]
        .map((tr) => ({ number: Number(tr.dataset.window), verdict: tr.children[2].textContent.trim(),
                        base: Number(tr.children[3].textContent), gray: Number(tr.children[5].textContent) }));
    return { fields, windows, events: document.querySelectorAll('[data-rollout="events"] li').length };
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollout_section_shows_what_rollout_json_says_in_chromium() {
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    let dir = tempfile::tempdir().expect("plan dir");
    let plan = dir.path().join("rollout.json");
    let toml = format!(
        "[health]\ninterval = \"60s\"\n[pin]\nsecrets = [\"dashboard-test-secret-0123456789\"]\n\
         [pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n\
         [rollout]\nplan_file = \"{}\"\ntick = \"100ms\"\ninstance = \"dash\"\n",
        plan.display()
    );
    let files = [
        ("base.conf", format!("{} # build=base-1\n", base.line(""))),
        ("gray.conf", format!("{} # build=gray-1\n", gray.line(""))),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = Graysplit::start(&toml, &refs);
    std::fs::write(
        &plan,
        r#"{"steps": [50, 100], "step_duration": "1h", "window": "1s", "hold_timeout": "1h",
            "analysis": {"min_requests": 5, "p99_floor": "2s"}}"#,
    )
    .expect("write the plan");
    // Traffic for two judged windows at step 1 (half the clients on gray), then a pause: the
    // state stops moving, so the page and the JSON can be compared.
    let c = client();
    let rollout = eventually(Duration::from_secs(30), "two judged windows", || async {
        for i in 0..20 {
            let _ = c
                .get(g.url("/"))
                .header("accept", "text/html")
                .header("x-forwarded-for", format!("10.7.0.{i}"))
                .send()
                .await
                .ok()?
                .bytes()
                .await;
        }
        let v = get_json(g.admin_url("/rollout")).await;
        (v["windows"].as_array()?.len() >= 2).then_some(v)
    })
    .await;
    assert_eq!(rollout["state"]["status"], "running", "{rollout}");
    let paused = c
        .post(g.admin_url("/rollout/pause"))
        .send()
        .await
        .expect("pause");
    assert_eq!(paused.status(), 200);
    let frozen = eventually(Duration::from_secs(10), "the pause", || async {
        let v = get_json(g.admin_url("/rollout")).await;
        (v["state"]["status"] == "paused").then_some(v)
    })
    .await;

    let driver = ChromeDriver::start();
    let profile = tempfile::tempdir().expect("profile");
    let browser = driver.session(profile.path(), (1280, 1400)).await;
    browser
        .goto(&g.admin_url("/?refresh=300ms"))
        .await
        .expect("open the dashboard");
    let shown = eventually(Duration::from_secs(15), "the rollout section", || async {
        let v = browser.execute(READ_ROLLOUT, vec![]).await.ok()?;
        (v["fields"]["status"] == "paused").then_some(v)
    })
    .await;
    let state = &frozen["state"];
    let f = &shown["fields"];
    assert_eq!(f["mode"], "file");
    assert_eq!(f["driver"], "dash (this instance)");
    assert_eq!(
        f["stage"],
        format!("step {} / {}", state["step"], state["steps"]).as_str()
    );
    let shown_percent = f["gray percent"]
        .as_str()
        .and_then(|p| p.strip_suffix(" %"))
        .and_then(|p| p.parse::<f64>().ok());
    assert_eq!(shown_percent, state["percent"].as_f64(), "{f}");
    assert_eq!(
        f["passing windows"],
        format!("{} of {} needed", state["passes"], state["passes_needed"]).as_str()
    );
    assert_eq!(
        f["failed windows"],
        format!(
            "{} of {} allowed",
            state["failures"], state["failure_limit"]
        )
        .as_str()
    );
    // The last windows, newest first, with the JSON's verdicts and request counts.
    let want: Vec<(u64, String, u64, u64)> = frozen["windows"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .take(10)
        .map(|w| {
            (
                w["number"].as_u64().unwrap(),
                w["verdict"].as_str().unwrap().to_string(),
                w["base"]["requests"].as_u64().unwrap(),
                w["gray"]["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    let got: Vec<(u64, String, u64, u64)> = shown["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["number"].as_u64().unwrap(),
                w["verdict"].as_str().unwrap().to_string(),
                w["base"].as_u64().unwrap(),
                w["gray"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(
        shown["events"].as_u64() >= Some(2),
        "start and pause: {shown}"
    );
    let shot = screenshot_dir().join("dashboard-rollout.png");
    std::fs::write(&shot, browser.screenshot().await.expect("screenshot"))
        .expect("save dashboard-rollout.png");
    assert_eq!(console_errors(&browser).await, Vec::<String>::new());
    browser.close().await.expect("close the session");
}
