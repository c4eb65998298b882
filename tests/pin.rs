//! The pin cookie end to end: real graysplit, real upstreams serving the static-test builds, a
//! real redis-server for whitelist flips. The browser itself is in tests/browser.rs.

mod common;

use std::time::Duration;

use common::proc::Graysplit;
use common::redis::RedisServer;
use common::upstream::Upstream;
use common::{client, eventually};
use graysplit::pin::cookie::{encode, Keys};

const BASE_BUILD: &str = "base-2026.11.1";
const GRAY_BUILD: &str = "gray-2026.11.2";
const SECRET: &str = "integration-test-secret-0123456789";
const BASE_JS: &str = "/assets/app.5bdff181.js";
const BASE_CSS: &str = "/assets/app.643cbc8e.css";
const GRAY_JS: &str = "/assets/app.9abd1b9d.js";
const GRAY_CSS: &str = "/assets/app.8e130b62.css";

/// What one response said.
#[derive(Debug)]
struct Answer {
    status: u16,
    pool: String,
    reason: String,
    /// The build id the body announces (index.html, js and css all name theirs).
    build: Option<&'static str>,
    /// The pin value from `Set-Cookie`, if one was sent.
    pin: Option<String>,
    set_cookie: Option<String>,
    content_type: String,
    body: String,
}

/// A request as Chrome sends it: a navigation (`document`) or a subresource (`script`, `style`).
async fn get(g: &Graysplit, path: &str, dest: &str, pin: Option<&str>) -> Answer {
    let mut req = client()
        .get(g.url(path))
        .header("sec-fetch-dest", dest)
        .header("x-forwarded-for", "192.168.93.182");
    if let Some(p) = pin {
        req = req.header("cookie", format!("theme=dark; graysplit={p}"));
    }
    let r = req.send().await.expect("request");
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (pool, reason, content_type) = (
        h("x-graysplit-pool"),
        h("x-graysplit-reason"),
        h("content-type"),
    );
    let set_cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let pin = set_cookie.as_deref().and_then(|c| {
        c.split(';')
            .next()
            .and_then(|kv| kv.strip_prefix("graysplit="))
            .map(str::to_string)
    });
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    let build = [BASE_BUILD, GRAY_BUILD]
        .into_iter()
        .find(|b| body.contains(b));
    Answer {
        status,
        pool,
        reason,
        build,
        pin,
        set_cookie,
        content_type,
        body,
    }
}

/// Which js and css a page's index.html loads.
fn assets_of(build: &str) -> [&'static str; 2] {
    if build == GRAY_BUILD {
        [GRAY_JS, GRAY_CSS]
    } else {
        [BASE_JS, BASE_CSS]
    }
}

fn line(u: &Upstream, build: &str, extra: &str) -> String {
    format!("{} # build={build}\n", u.line(extra))
}

fn toml(pin_extra: &str, gray_extra: &str) -> String {
    format!(
        "[pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n\
         [pin]\nsecrets = [\"{SECRET}\"]\n{pin_extra}\n{gray_extra}\n"
    )
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics(g: &Graysplit) -> String {
    client()
        .get(g.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_sets_the_pin_and_its_assets_follow_it() {
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    let files = [
        ("base.conf", line(&base, BASE_BUILD, "")),
        ("gray.conf", line(&gray, GRAY_BUILD, "")),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = Graysplit::start(&toml("max_age = \"1h\"\nsecure = true", ""), &refs);

    let page = get(&g, "/", "document", None).await;
    assert_eq!((page.status, page.build), (200, Some(BASE_BUILD)));
    let sc = page.set_cookie.as_deref().expect("a page sets the pin");
    assert!(
        sc.starts_with(&format!("graysplit=v1.base.{BASE_BUILD}.")),
        "{sc}"
    );
    assert!(
        sc.ends_with("; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=3600"),
        "{sc}"
    );
    let pin = page.pin.clone().unwrap();
    for path in assets_of(BASE_BUILD) {
        let a = get(&g, path, "script", Some(&pin)).await;
        assert_eq!(
            (a.status, a.reason.as_str(), a.build),
            (200, "sticky", Some(BASE_BUILD))
        );
        assert!(a.set_cookie.is_none(), "an asset never moves a good pin");
    }
    // Same answer on the next page: with max_age the pin slides (refreshed), still base.
    let again = get(&g, "/", "document", Some(&pin)).await;
    assert_eq!(again.reason, "default");
    let refreshed = again.pin.expect("max_age set: refreshed");
    assert!(refreshed.starts_with(&format!("v1.base.{BASE_BUILD}.")));
    let m = metrics(&g).await;
    assert_eq!(
        metric(&m, "graysplit_pins_set_total{event=\"new\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "graysplit_pins_set_total{event=\"refreshed\"}"),
        1.0
    );
    // The access log is written by its writer thread within 100 ms.
    common::eventually_sync(
        Duration::from_secs(5),
        "the access line naming the pin event",
        || g.log().contains("pin=new").then_some(()),
    );
    assert!(!g.log().contains(SECRET), "the secret is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_pin_is_not_resent_when_the_answer_is_the_same() {
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    let files = [
        ("base.conf", line(&base, BASE_BUILD, "")),
        ("gray.conf", line(&gray, GRAY_BUILD, "")),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = Graysplit::start(&toml("", ""), &refs);
    let pin = get(&g, "/", "document", None).await.pin.unwrap();
    let again = get(&g, "/", "document", Some(&pin)).await;
    assert_eq!(again.build, Some(BASE_BUILD));
    assert!(
        again.set_cookie.is_none(),
        "same answer, no max_age: no cookie"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_malformed_and_other_version_pins_are_ignored_and_counted() {
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    let files = [
        ("base.conf", line(&base, BASE_BUILD, "")),
        ("gray.conf", line(&gray, GRAY_BUILD, "")),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = Graysplit::start(&toml("lifetime = \"1h\"", ""), &refs);
    let keys = Keys::new(&[SECRET]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = encode(&keys, "gray", GRAY_BUILD, now);
    let forged = encode(
        &Keys::new(&["someone-elses-secret-0123"]).unwrap(),
        "gray",
        GRAY_BUILD,
        now,
    );
    let expired = encode(&keys, "gray", GRAY_BUILD, now - 7200);
    let tampered = good.replacen(".gray.", ".base.", 1);
    let other_version = good.replacen("v1.", "v2.", 1);
    let stale = encode(&keys, "canary", "c-1", now);
    // A pinned gray asset goes to gray without any lookup ...
    let a = get(&g, GRAY_JS, "script", Some(&good)).await;
    assert_eq!((a.pool.as_str(), a.reason.as_str()), ("gray", "sticky"));
    // ... every bad pin is ignored: the asset is decided like any request (base).
    for bad in [
        &forged,
        &expired,
        &tampered,
        &other_version,
        &stale,
        &"garbage".to_string(),
    ] {
        let a = get(&g, BASE_JS, "script", Some(bad)).await;
        assert_eq!(
            (a.status, a.pool.as_str(), a.reason.as_str()),
            (200, "base", "default"),
            "{bad}"
        );
        assert!(a.set_cookie.is_none(), "assets never issue pins");
    }
    let m = metrics(&g).await;
    for (why, n) in [
        ("forged", 2.0),
        ("expired", 1.0),
        ("version", 1.0),
        ("stale", 1.0),
        ("malformed", 1.0),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("graysplit_pin_rejected_total{{why=\"{why}\"}}")
            ),
            n,
            "{why}\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decide_describes_a_pinned_asset() {
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    let files = [
        ("base.conf", line(&base, BASE_BUILD, "")),
        ("gray.conf", line(&gray, GRAY_BUILD, "")),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = Graysplit::start(&toml("", "[gray]\nenabled = false"), &refs);
    let decide = |q: &'static str| {
        let url = g.admin_url(&format!("/decide?ip=10.1.2.3{q}"));
        async move {
            let v = common::get_json(url).await;
            (
                v["decision"]["pool"].as_str().unwrap_or("").to_string(),
                v["decision"]["reason"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    assert_eq!(decide("").await, ("base".into(), "switch_off".into()));
    assert_eq!(
        decide("&asset=1&pin=gray").await,
        ("gray".into(), "sticky".into()),
        "a pinned asset follows its pin even with the switch off"
    );
    assert_eq!(
        decide("&pin=gray").await,
        ("base".into(), "switch_off".into()),
        "a page re-decides"
    );
}

/// The whitelist entry flips between every request of a 200-page loop; every page's assets still
/// come from the page's build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitelist_flipping_between_every_request_never_mixes_a_page() {
    let redis = RedisServer::start();
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    let files = [
        ("base.conf", line(&base, BASE_BUILD, "")),
        ("gray.conf", line(&gray, GRAY_BUILD, "")),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    // No cache: every lookup asks Redis, so a flip takes effect at the very next request.
    let gray_toml = format!(
        "[gray.redis]\nurl = \"{}\"\ncache_ttl = \"0s\"\ntimeout = \"200ms\"",
        redis.url()
    );
    let g = Graysplit::start(&toml("", &gray_toml), &refs);
    let ip = "192.168.93.182";
    let mut listed = false;
    let mut flip = || {
        listed = !listed;
        let out = if listed {
            redis.cli(&["set", ip, ip])
        } else {
            redis.cli(&["del", ip])
        };
        assert!(out.is_some(), "redis-cli");
    };
    let mut pin: Option<String> = None;
    let mut pages = [0usize; 2];
    for i in 0..200 {
        flip();
        let page = get(&g, "/", "document", pin.as_deref()).await;
        let build = page
            .build
            .unwrap_or_else(|| panic!("page {i}: {}", page.body));
        if let Some(p) = page.pin {
            pin = Some(p);
        }
        pages[usize::from(build == GRAY_BUILD)] += 1;
        for path in assets_of(build) {
            flip();
            let a = get(&g, path, "script", pin.as_deref()).await;
            assert_eq!(
                (a.status, a.build, a.reason.as_str()),
                (200, Some(build), "sticky"),
                "page {i} from {build}, asset {path}"
            );
        }
    }
    // Three flips per page: the whitelist answer alternates between pages, so both builds served.
    assert!(
        pages[0] >= 50 && pages[1] >= 50,
        "pages per build {pages:?}"
    );
    let m = metrics(&g).await;
    assert!(
        metric(&m, "graysplit_pins_set_total{event=\"changed\"}") >= 50.0,
        "{m}"
    );
}

/// A rolling deploy inside base: two builds behind the pool, then the old one drained, then
/// removed. No page ever mixes builds; a removed build re-pins (`build_gone`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_inside_base_never_mixes_builds() {
    // The "new base build" serves the gray fixture (another build id, other hashed assets).
    let (old, new, gray) = (
        Upstream::start("base"),
        Upstream::start("gray"),
        Upstream::start("gray"),
    );
    let both = format!(
        "{}{}",
        line(&old, BASE_BUILD, "weight=1"),
        line(&new, GRAY_BUILD, "weight=1")
    );
    let files = [("base.conf", both.clone()), ("gray.conf", String::new())];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = Graysplit::start(&toml("", ""), &refs);
    drop(gray);

    // Both builds live: pages alternate, each page's assets come from its own build.
    let mut seen = std::collections::BTreeSet::new();
    let mut old_pin = None;
    for i in 0..40 {
        let page = get(&g, "/", "document", None).await;
        let build = page.build.expect("a build");
        seen.insert(build);
        let pin = page.pin.expect("pin");
        if build == BASE_BUILD {
            old_pin = Some(pin.clone());
        }
        for path in assets_of(build) {
            let a = get(&g, path, "style", Some(&pin)).await;
            assert_eq!((a.status, a.build), (200, Some(build)), "page {i} {path}");
        }
    }
    assert_eq!(seen.len(), 2, "WRR spread pages over both builds");
    let old_pin = old_pin.unwrap();

    // Drain the old build: no new page goes there, but a page loaded before still gets its assets.
    g.write_file(
        "base.conf",
        &format!(
            "{}{}",
            line(&old, BASE_BUILD, "weight=0"),
            line(&new, GRAY_BUILD, "weight=1")
        ),
    );
    eventually(Duration::from_secs(5), "drain applied", || async {
        let builds: Vec<_> = page_builds(&g, 4).await;
        builds.iter().all(|b| *b == GRAY_BUILD).then_some(())
    })
    .await;
    for path in assets_of(BASE_BUILD) {
        let a = get(&g, path, "script", Some(&old_pin)).await;
        assert_eq!(
            (a.status, a.build, a.reason.as_str()),
            (200, Some(BASE_BUILD), "sticky"),
            "a drained build still serves its open pages"
        );
        assert!(a.set_cookie.is_none());
    }

    // Remove it: the asset takes the pool's other build and is re-pinned there.
    g.write_file("base.conf", &line(&new, GRAY_BUILD, "weight=1"));
    let a = eventually(Duration::from_secs(5), "old build removed", || async {
        let a = get(&g, GRAY_JS, "script", Some(&old_pin)).await;
        (a.reason == "build_gone").then_some(a)
    })
    .await;
    let repin = a.pin.expect("re-pinned");
    assert!(
        repin.starts_with(&format!("v1.base.{GRAY_BUILD}.")),
        "{repin}"
    );
    let m = metrics(&g).await;
    assert!(
        metric(&m, "graysplit_pins_set_total{event=\"repinned\"}") >= 1.0,
        "{m}"
    );
    assert!(
        m.contains("reason=\"build_gone\""),
        "build_gone is a request reason: {m}"
    );
}

async fn page_builds(g: &Graysplit, n: usize) -> Vec<&'static str> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(g, "/", "document", None).await.build.unwrap_or("none"));
    }
    out
}

/// A tab loaded from gray asks for its script after another tab moved the pin to base, and base
/// runs `try_files $uri /index.html`: the script must come from gray, never base's index.html.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_asset_miss_is_tried_once_on_the_other_build_and_never_becomes_html() {
    let base = Upstream::start_with("base", |site| site.spa_fallback = true);
    let gray = Upstream::start("gray");
    let files = [
        ("base.conf", line(&base, BASE_BUILD, "")),
        ("gray.conf", line(&gray, GRAY_BUILD, "")),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = Graysplit::start(&toml("", ""), &refs);
    let base_pin = get(&g, "/", "document", None).await.pin.unwrap();

    // Base answers gray's script with its index.html; graysplit retries on gray.
    let a = get(&g, GRAY_JS, "script", Some(&base_pin)).await;
    assert_eq!((a.status, a.build), (200, Some(GRAY_BUILD)), "{a:?}");
    assert!(a.content_type.starts_with("text/javascript"), "{a:?}");
    assert_eq!(a.pool, "gray");
    assert!(a.set_cookie.is_none(), "the miss retry never moves the pin");

    // Missing everywhere: base sends HTML, gray a 404 — the 404 is passed on as it is.
    let a = get(&g, "/assets/app.nowhere.js", "script", Some(&base_pin)).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.body, "404 not found\n", "gray's own 404, untouched");

    // Without a pin there is no other build to try; the HTML is still never passed on.
    let a = get(&g, "/assets/app.nowhere.js", "script", None).await;
    assert_eq!(a.status, 404);
    assert!(!a.body.contains('<'), "{a:?}");
    // A navigation to an unknown path still gets the SPA's index.html.
    let a = get(&g, "/orders/42", "document", None).await;
    assert_eq!((a.status, a.build), (200, Some(BASE_BUILD)));

    let log = g.log();
    assert!(
        !log.contains("Fail to proxy"),
        "deliberate 404s are not logged as proxy failures:\n{log}"
    );
    let m = metrics(&g).await;
    for (action, n) in [("retried", 2.0), ("passed", 1.0), ("blocked", 1.0)] {
        assert_eq!(
            metric(
                &m,
                &format!("graysplit_asset_misses_total{{action=\"{action}\"}}")
            ),
            n,
            "{action}\n{m}"
        );
    }
}

/// A plain 404 of a pinned asset (no SPA fallback) is also tried on the other build, and a 404
/// when no other build exists is passed through untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_404_without_another_build_passes_through() {
    let base = Upstream::start("base");
    let gray = Upstream::start("gray");
    let files = [
        ("base.conf", line(&base, BASE_BUILD, "")),
        ("gray.conf", line(&gray, GRAY_BUILD, "")),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = Graysplit::start(&toml("", ""), &refs);
    let base_pin = get(&g, "/", "document", None).await.pin.unwrap();
    let a = get(&g, GRAY_CSS, "style", Some(&base_pin)).await;
    assert_eq!((a.status, a.build), (200, Some(GRAY_BUILD)));
    drop(g);

    let files = [
        ("base.conf", line(&base, BASE_BUILD, "")),
        ("gray.conf", String::new()),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = Graysplit::start(&toml("", ""), &refs);
    let base_pin = get(&g, "/", "document", None).await.pin.unwrap();
    let a = get(&g, GRAY_CSS, "style", Some(&base_pin)).await;
    assert_eq!(a.status, 404);
    assert_eq!(a.body, "404 not found\n");
    assert_eq!(a.content_type, "text/plain");
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Issue 13 §2, what a pin proves: a tester removed from the whitelist keeps an old gray pin.
/// Within the grace (an open page finishing its loads) it is honoured; past it, `/index.html`
/// fetched by a script gets the current decision, and an asset path is re-decided and keeps the
/// pin's build only while the decision still names gray.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_gray_pin_is_honoured_only_for_the_grace_once_gray_is_pulled() {
    let redis = RedisServer::start();
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    let files = [
        ("base.conf", line(&base, BASE_BUILD, "")),
        ("gray.conf", line(&gray, GRAY_BUILD, "")),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let gray_toml = format!(
        "[gray.redis]\nurl = \"{}\"\ncache_ttl = \"0s\"\ntimeout = \"200ms\"",
        redis.url()
    );
    let g = Graysplit::start(&toml("grace = \"1m\"", &gray_toml), &refs);
    let keys = Keys::new(&[SECRET]).unwrap();
    let now = now_secs();
    let fresh = encode(&keys, "gray", GRAY_BUILD, now - 10);
    let old = encode(&keys, "gray", GRAY_BUILD, now - 120);
    // Not (any more) whitelisted: 192.168.93.182 is base for pages.
    assert_eq!(get(&g, "/", "document", Some(&old)).await.pool, "base");

    // Within the grace: the open page's fetch and script still come from its build.
    let a = get(&g, "/index.html", "empty", Some(&fresh)).await;
    assert_eq!(
        (a.pool.as_str(), a.reason.as_str(), a.build),
        ("gray", "sticky", Some(GRAY_BUILD))
    );
    let a = get(&g, GRAY_JS, "script", Some(&fresh)).await;
    assert_eq!((a.status, a.reason.as_str()), (200, "sticky"));

    // Past it: /index.html is not an asset by its path: never served from the pin.
    let a = get(&g, "/index.html", "empty", Some(&old)).await;
    assert_eq!(
        (a.pool.as_str(), a.reason.as_str(), a.build),
        ("base", "default", Some(BASE_BUILD)),
        "the current decision, not the pin"
    );
    // An asset path is re-decided: base now, so gray's script is not served (base has none,
    // and no other build is tried for a pin that no longer holds).
    let a = get(&g, GRAY_JS, "script", Some(&old)).await;
    assert_eq!(
        (a.status, a.pool.as_str(), a.reason.as_str()),
        (404, "base", "default")
    );
    let a = get(&g, BASE_JS, "script", Some(&old)).await;
    assert_eq!((a.status, a.build), (200, Some(BASE_BUILD)));
    assert!(a.set_cookie.is_none(), "an asset never moves the pin");

    // Whitelisted again: the old pin's asset is re-decided gray, so it keeps its build.
    redis
        .cli(&["set", "192.168.93.182", "192.168.93.182"])
        .expect("redis-cli");
    let a = get(&g, GRAY_JS, "script", Some(&old)).await;
    assert_eq!(
        (a.status, a.reason.as_str(), a.build),
        (200, "sticky", Some(GRAY_BUILD))
    );
    // But a non-asset path past the grace is still decided, not pinned (here: gray by ip).
    let a = get(&g, "/index.html", "empty", Some(&old)).await;
    assert_eq!((a.pool.as_str(), a.reason.as_str()), ("gray", "ip"));
}

/// The switch is the operator's rollback: within the grace it never splits a loading page;
/// past the grace an old gray pin no longer brings anyone to gray.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_gray_off_moves_old_pins_after_the_grace() {
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    let files = [
        ("base.conf", line(&base, BASE_BUILD, "")),
        ("gray.conf", line(&gray, GRAY_BUILD, "")),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = Graysplit::start(&toml("grace = \"1m\"", "[gray]\nenabled = false"), &refs);
    let keys = Keys::new(&[SECRET]).unwrap();
    let now = now_secs();
    let fresh = encode(&keys, "gray", GRAY_BUILD, now - 5);
    let old = encode(&keys, "gray", GRAY_BUILD, now - 61);
    let a = get(&g, GRAY_CSS, "style", Some(&fresh)).await;
    assert_eq!((a.status, a.reason.as_str()), (200, "sticky"));
    let a = get(&g, GRAY_CSS, "style", Some(&old)).await;
    assert_eq!((a.pool.as_str(), a.reason.as_str()), ("base", "switch_off"));
}

/// Pages refresh the pin's issued time once it is older than a tenth of the grace, so every page
/// load gives its assets (nearly) the whole grace; younger pins are not re-sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_refresh_the_pins_time_so_open_pages_stay_inside_the_grace() {
    let (base, gray) = (Upstream::start("base"), Upstream::start("gray"));
    let files = [
        ("base.conf", line(&base, BASE_BUILD, "")),
        ("gray.conf", line(&gray, GRAY_BUILD, "")),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = Graysplit::start(&toml("grace = \"10m\"", ""), &refs);
    let keys = Keys::new(&[SECRET]).unwrap();
    let now = now_secs();
    let young = encode(&keys, "base", BASE_BUILD, now - 30);
    let older = encode(&keys, "base", BASE_BUILD, now - 61);
    assert!(
        get(&g, "/", "document", Some(&young)).await.pin.is_none(),
        "30 s < 10m/10"
    );
    let p = get(&g, "/", "document", Some(&older))
        .await
        .pin
        .expect("refreshed");
    let issued: u64 = p.rsplit('.').nth(1).unwrap().parse().unwrap();
    assert!(
        issued >= now,
        "the page's own decision time: {p} (now {now}, sent {older})"
    );
    let m = metrics(&g).await;
    assert_eq!(
        metric(&m, "graysplit_pins_set_total{event=\"refreshed\"}"),
        1.0,
        "{m}"
    );
}
