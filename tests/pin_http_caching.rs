//! Browser revalidation and shared caches against the frontend servers users run (issue 11):
//!
//! - a real Debian nginx serving both builds with **identical mtimes and same-size pages**, so
//!   its ETags (mtime + size) and Last-Modified collide across builds;
//! - Python's `http.server` (Go's `http.FileServer` / `serve-static` semantics: Last-Modified
//!   only, `304` when the file is not newer than `If-Modified-Since`), gray built a day after base.
//!
//! A client that behaves like a browser cache (it sends the validators of the copy it holds and
//! the pin cookie it was given) is whitelisted, removed and whitelisted again: every answer after
//! a move is a `200` of the decided build, and a revalidation on the same build is still a `304`.
//! Each test first proves the hazard is real: the upstream itself answers `304` to the other
//! build's validators.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::builds::{base_time, BuildDir};
use common::nginx::Nginx;
use common::proc::Graysplit;
use common::pyserver::PyServer;
use common::redis::RedisServer;
use common::{client, eventually};

const BASE_BUILD: &str = "base-2026.11.1";
const GRAY_BUILD: &str = "gray-2026.11.2";
const SECRET: &str = "http-caching-test-secret-0123456789";
/// The whitelisted client (the seed's example address), named through X-Forwarded-For.
const IP: &str = "192.168.93.182";

fn build_in(body: &str) -> Option<&'static str> {
    [BASE_BUILD, GRAY_BUILD]
        .into_iter()
        .find(|b| body.contains(b))
}

/// A copy in the simulated browser cache.
#[derive(Debug, Clone)]
struct Copy {
    etag: Option<String>,
    last_modified: Option<String>,
    build: &'static str,
}

/// What one fetch ended with.
#[derive(Debug)]
struct Shown {
    status: u16,
    pool: String,
    reason: String,
    /// The build the browser shows: the new body's, or the cached copy's after a 304.
    build: &'static str,
    cache_control: String,
    set_cookie: bool,
    /// The pin after this answer, when the answer set one (`pool.build`).
    new_pin: Option<String>,
}

/// A browser's cache and cookie jar for one client.
#[derive(Default)]
struct Browser {
    cache: HashMap<String, Copy>,
    pin: Option<String>,
}

impl Browser {
    async fn fetch(&mut self, g: &Graysplit, path: &str, dest: &str) -> Shown {
        let mut req = client()
            .get(g.url(path))
            .header("sec-fetch-dest", dest)
            .header("x-forwarded-for", IP);
        if let Some(p) = &self.pin {
            req = req.header("cookie", format!("graysplit={p}"));
        }
        if let Some(c) = self.cache.get(path) {
            if let Some(e) = &c.etag {
                req = req.header("if-none-match", e);
            }
            if let Some(lm) = &c.last_modified {
                req = req.header("if-modified-since", lm);
            }
        }
        let r = req.send().await.expect("request");
        let h = |n: &str| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (etag, last_modified) = (h("etag"), h("last-modified"));
        let (pool, reason) = (h("x-graysplit-pool"), h("x-graysplit-reason"));
        let cache_control = h("cache-control").unwrap_or_default();
        let pins: Vec<String> = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|c| {
                c.split(';')
                    .next()?
                    .strip_prefix("graysplit=")
                    .map(str::to_string)
            })
            .collect();
        let set_cookie = r.headers().contains_key("set-cookie");
        let new_pin = pins.last().map(|p| {
            let mut parts = p.splitn(3, '.').skip(1);
            let pool = parts.next().unwrap_or("");
            let build = parts
                .next()
                .unwrap_or("")
                .rsplitn(3, '.')
                .nth(2)
                .unwrap_or("");
            format!("{pool} {build}")
        });
        if let Some(p) = pins.last() {
            self.pin = Some(p.clone());
        }
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        let build = match status {
            304 => {
                let c = self
                    .cache
                    .get_mut(path)
                    .expect("a 304 only for a cached copy");
                // A 304 updates the stored validators (RFC 9111 §4.3.4).
                if etag.is_some() {
                    c.etag = etag;
                }
                c.build
            }
            _ => {
                // An error page or a file without a build id (e.g. /healthz): nothing to cache.
                let Some(b) = build_in(&body).filter(|_| status == 200) else {
                    return Shown {
                        status,
                        pool: pool.unwrap_or_default(),
                        reason: reason.unwrap_or_default(),
                        build: "-",
                        cache_control,
                        set_cookie,
                        new_pin,
                    };
                };
                self.cache.insert(
                    path.to_string(),
                    Copy {
                        etag,
                        last_modified,
                        build: b,
                    },
                );
                b
            }
        };
        Shown {
            status,
            pool: pool.unwrap_or_default(),
            reason: reason.unwrap_or_default(),
            build,
            cache_control,
            set_cookie,
            new_pin,
        }
    }
}

fn build_of(pool: &str) -> &'static str {
    if pool == "gray" {
        GRAY_BUILD
    } else {
        BASE_BUILD
    }
}

fn config(redis: &RedisServer) -> String {
    format!(
        "[pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n\
         [gray.redis]\nurl = \"{}\"\ncache_ttl = \"0s\"\ntimeout = \"200ms\"\n\
         [pin]\nsecrets = [\"{SECRET}\"]\n",
        redis.url()
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
        .expect("metrics")
        .text()
        .await
        .expect("body")
}

/// Whitelist → removal → whitelist again, with a page (`/`) and a non-hashed file
/// (`/config.js`) each time, as a browser revalidates them. Returns how many 304s were seen.
async fn flip_and_revalidate(g: &Graysplit, redis: &RedisServer) -> usize {
    let mut b = Browser::default();
    let mut not_modified = 0;
    let load = |listed: bool| {
        let want = if listed { GRAY_BUILD } else { BASE_BUILD };
        let out = if listed {
            redis.cli(&["set", IP, IP])
        } else {
            redis.cli(&["del", IP])
        };
        assert!(out.is_some(), "redis-cli");
        want
    };
    let steps = [
        (false, "first visit"),
        (false, "revalidation, same build"),
        (true, "whitelisted"),
        (true, "revalidation, same build"),
        (false, "removed from the whitelist"),
        (false, "revalidation, same build"),
        (true, "whitelisted again"),
        (true, "revalidation, same build"),
    ];
    let mut previous = None;
    for (listed, what) in steps {
        let want = load(listed);
        let moved = previous.is_some_and(|p| p != want);
        let page = b.fetch(g, "/", "document").await;
        assert_eq!(page.build, want, "{what}: page {page:?}");
        assert_eq!(build_of(&page.pool), want, "{what}: {page:?}");
        // Assets of the page: the non-hashed one must be of the page's build too.
        let config = b.fetch(g, "/config.js", "script").await;
        assert_eq!(config.build, want, "{what}: /config.js {config:?}");
        assert!(
            page.cache_control.starts_with("private"),
            "{what}: {page:?}"
        );
        assert_eq!(
            config.reason, "sticky",
            "{what}: /config.js follows the page's pin"
        );
        if moved {
            assert!(page.set_cookie, "{what}: the pin moved with the page");
            assert_eq!(
                page.status, 200,
                "{what}: a moved page is a 200 of its build"
            );
            assert_eq!(config.status, 200, "{what}: /config.js of the new build");
        } else if previous.is_some() {
            assert_eq!(page.status, 304, "{what}: same build, the 304 still works");
            assert_eq!(config.status, 304, "{what}: /config.js revalidated");
        }
        not_modified += usize::from(page.status == 304) + usize::from(config.status == 304);
        previous = Some(want);
    }
    not_modified
}

fn pools_files(base: &str, gray: &str) -> [(&'static str, String); 2] {
    [
        ("base.conf", format!("{base} # build={BASE_BUILD}\n")),
        ("gray.conf", format!("{gray} # build={GRAY_BUILD}\n")),
    ]
}

fn start(redis: &RedisServer, files: &[(&'static str, String); 2], extra: &str) -> Graysplit {
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    Graysplit::start(&format!("{}{extra}", config(redis)), &refs)
}

/// Requests a path straight from an upstream with the given headers; returns the status.
async fn direct(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = client().get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("direct request").status().as_u16()
}

async fn raw_validators(addr: std::net::SocketAddr, path: &str) -> (Option<String>, String) {
    let r = client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("direct request");
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    (h("etag"), h("last-modified").expect("Last-Modified"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_equal_etags_never_answers_304_across_builds() {
    let t = base_time();
    let (base_dir, gray_dir) = (
        BuildDir::new("base", BASE_BUILD, t),
        BuildDir::new("gray", GRAY_BUILD, t),
    );
    let (base, gray) = (
        Nginx::serve_dir(base_dir.path(), ""),
        Nginx::serve_dir(gray_dir.path(), ""),
    );
    // The hazard: both builds' index.html have the same ETag, and each nginx takes the other's.
    let (base_etag, base_lm) = raw_validators(base.addr, "/").await;
    let (gray_etag, _) = raw_validators(gray.addr, "/").await;
    assert_eq!(base_etag, gray_etag, "same mtime and size: same ETag");
    let etag = base_etag.expect("nginx sends an ETag");
    assert_eq!(
        direct(
            gray.addr,
            "/",
            &[("if-none-match", &etag), ("if-modified-since", &base_lm)]
        )
        .await,
        304,
        "gray's nginx would keep base's page on screen"
    );

    let redis = RedisServer::start();
    let g = start(&redis, &pools_files(&base.line(""), &gray.line("")), "");
    let not_modified = flip_and_revalidate(&g, &redis).await;
    assert_eq!(not_modified, 8, "every same-build revalidation was a 304");
    let m = metrics(&g).await;
    assert_eq!(
        metric(
            &m,
            "graysplit_conditional_requests_total{outcome=\"dropped\"}"
        ),
        6.0,
        "three moves, page and config.js each: another build's validators removed\n{m}"
    );
    assert_eq!(
        metric(
            &m,
            "graysplit_conditional_requests_total{outcome=\"translated\"}"
        ),
        8.0,
        "{m}"
    );
    // The nginx answered those 304s themselves (plus the one to the direct request above).
    let count_304 = |n: &Nginx| n.access_log().matches("\" 304 ").count();
    assert_eq!(count_304(&base) + count_304(&gray), 8 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_modified_servers_never_answer_304_across_builds() {
    let t = base_time();
    // Gray was built a day after base: the rollback direction is the dangerous one.
    let (base_dir, gray_dir) = (
        BuildDir::new("base", BASE_BUILD, t),
        BuildDir::new("gray", GRAY_BUILD, t + Duration::from_secs(86_400)),
    );
    let (base, gray) = (
        PyServer::serve(base_dir.path()),
        PyServer::serve(gray_dir.path()),
    );
    let (etag, gray_lm) = raw_validators(gray.addr, "/").await;
    assert_eq!(etag, None, "http.server sends no ETag");
    assert_eq!(
        direct(base.addr, "/", &[("if-modified-since", &gray_lm)]).await,
        304,
        "base's server would keep gray's page on screen after a rollback"
    );

    let redis = RedisServer::start();
    let g = start(&redis, &pools_files(&base.line(""), &gray.line("")), "");
    let not_modified = flip_and_revalidate(&g, &redis).await;
    assert_eq!(not_modified, 8, "every same-build revalidation was a 304");
    let count_304 = |s: &PyServer| s.log().matches("\" 304 ").count();
    // The upstreams answered those 304s (plus the one to the direct request above).
    assert_eq!(count_304(&base) + count_304(&gray), 8 + 1);
}

/// Validators without graysplit's tag (a copy cached before graysplit tagged them) are believed
/// only when the pin names the server's pool and build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untagged_validators_pass_only_with_a_matching_pin() {
    let t = base_time();
    let (base_dir, gray_dir) = (
        BuildDir::new("base", BASE_BUILD, t),
        BuildDir::new("gray", GRAY_BUILD, t),
    );
    let (base, gray) = (
        Nginx::serve_dir(base_dir.path(), ""),
        Nginx::serve_dir(gray_dir.path(), ""),
    );
    let (etag, lm) = raw_validators(base.addr, "/").await;
    let etag = etag.expect("ETag");
    let redis = RedisServer::start();
    let g = start(&redis, &pools_files(&base.line(""), &gray.line("")), "");
    // A base pin, from a first visit.
    let mut b = Browser::default();
    let first = b.fetch(&g, "/", "document").await;
    assert_eq!((first.status, first.build), (200, BASE_BUILD));
    let pin = b.pin.clone().expect("pin");
    let send = |pin: String, etag: String, lm: String| {
        let url = g.url("/");
        async move {
            let r = client()
                .get(url)
                .header("sec-fetch-dest", "document")
                .header("x-forwarded-for", IP)
                .header("cookie", format!("graysplit={pin}"))
                .header("if-none-match", etag)
                .header("if-modified-since", lm)
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            (status, build_in(&r.text().await.unwrap_or_default()))
        }
    };
    assert_eq!(
        send(pin.clone(), etag.clone(), lm.clone()).await.0,
        304,
        "base pin, base decided: the untagged copy is base's"
    );
    redis.cli(&["set", IP, IP]).expect("redis-cli");
    assert_eq!(
        send(pin, etag, lm).await,
        (200, Some(GRAY_BUILD)),
        "base pin, gray decided: the untagged copy may be base's, so no 304"
    );
}

/// A range of another build's bytes would corrupt a resumed download: it becomes a full 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_request_for_another_builds_copy_gets_the_whole_file() {
    let t = base_time();
    let (base_dir, gray_dir) = (
        BuildDir::new("base", BASE_BUILD, t),
        BuildDir::new("gray", GRAY_BUILD, t),
    );
    let (base, gray) = (
        Nginx::serve_dir(base_dir.path(), ""),
        Nginx::serve_dir(gray_dir.path(), ""),
    );
    let redis = RedisServer::start();
    let g = start(&redis, &pools_files(&base.line(""), &gray.line("")), "");
    let mut b = Browser::default();
    b.fetch(&g, "/config.js", "script").await;
    let tagged = b.cache["/config.js"].etag.clone().expect("tagged ETag");
    assert!(tagged.contains(":gs=base-2026.11.1"), "{tagged}");
    let range = |etag: String| {
        let url = g.url("/config.js");
        async move {
            let r = client()
                .get(url)
                .header("sec-fetch-dest", "script")
                .header("x-forwarded-for", IP)
                .header("range", "bytes=0-9")
                .header("if-range", etag)
                .send()
                .await
                .expect("request");
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
    };
    let (status, body) = range(tagged.clone()).await;
    assert_eq!((status, body.len()), (206, 10), "same build: the range");
    redis.cli(&["set", IP, IP]).expect("redis-cli");
    let (status, body) = range(tagged).await;
    assert_eq!(status, 200, "another build's copy: the whole file");
    assert_eq!(build_in(&body), Some(GRAY_BUILD));
}

/// Issue 11, "Shared caches": the upstream marks everything `public, max-age=600` (and tells
/// CDNs to cache); pages through graysplit are private (max-age kept), hashed assets keep their
/// caching, and the pin's Set-Cookie never travels on a response a shared cache may store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_private_and_hashed_assets_keep_their_caching() {
    let t = base_time();
    let (base_dir, gray_dir) = (
        BuildDir::new("base", BASE_BUILD, t),
        BuildDir::new("gray", GRAY_BUILD, t),
    );
    let cdn = "add_header Cache-Control \"public, max-age=600\";\n    \
               add_header CDN-Cache-Control \"max-age=600\";";
    let (base, gray) = (
        Nginx::serve_dir(base_dir.path(), cdn),
        Nginx::serve_dir(gray_dir.path(), cdn),
    );
    let redis = RedisServer::start();
    let g = start(&redis, &pools_files(&base.line(""), &gray.line("")), "");
    let get = |path: &'static str, dest: &'static str, pin: Option<String>| {
        let url = g.url(path);
        async move {
            let mut req = client()
                .get(url)
                .header("sec-fetch-dest", dest)
                .header("x-forwarded-for", IP);
            if let Some(p) = pin {
                req = req.header("cookie", format!("graysplit={p}"));
            }
            let r = req.send().await.expect("request");
            let h = |n: &str| {
                r.headers()
                    .get_all(n)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join(" | ")
            };
            let out = (
                r.status().as_u16(),
                h("cache-control"),
                h("cdn-cache-control"),
                h("vary"),
                h("set-cookie"),
                h("etag"),
            );
            drop(r);
            out
        }
    };
    let (status, cc, cdn_cc, vary, set_cookie, _) = get("/", "document", None).await;
    assert_eq!(status, 200);
    assert_eq!(cc, "private, max-age=600", "a page decided per client");
    assert_eq!(cdn_cc, "", "no CDN may cache it either");
    assert!(vary.contains("Cookie"), "{vary}");
    assert!(set_cookie.contains("graysplit=v1.base."), "{set_cookie}");
    let pin = set_cookie
        .split(" | ")
        .find_map(|c| c.split(';').next()?.strip_prefix("graysplit="))
        .map(str::to_string)
        .expect("pin");
    // A hashed asset is the same for everyone: its caching and validators are the upstream's.
    let (status, cc, cdn_cc, _, set_cookie, etag) =
        get("/assets/app.5bdff181.js", "script", Some(pin.clone())).await;
    assert_eq!(status, 200);
    assert_eq!(cc, "public, max-age=600");
    assert_eq!(cdn_cc, "max-age=600");
    assert_eq!(set_cookie, "");
    assert!(!etag.contains(":gs="), "untouched: {etag}");
    // A non-hashed asset follows the pin: decided per client, private.
    let (status, cc, _, vary, set_cookie, etag) =
        get("/config.js", "script", Some(pin.clone())).await;
    assert_eq!((status, cc.as_str()), (200, "private, max-age=600"));
    assert!(vary.contains("Cookie"), "{vary}");
    assert_eq!(set_cookie, "");
    assert!(etag.contains(":gs=base-2026.11.1"), "{etag}");
    // Whatever the page: never a public response with graysplit's cookie on it.
    redis.cli(&["set", IP, IP]).expect("redis-cli");
    let (_, cc, _, _, set_cookie, _) = get("/", "document", Some(pin)).await;
    assert!(
        set_cookie.contains("graysplit=v1.gray."),
        "moved: {set_cookie}"
    );
    assert!(cc.starts_with("private") && !cc.contains("public"), "{cc}");

    // "unchanged": the operator's CDN keys on the pin cookie; the cookie still forces private.
    drop(g);
    let g = start(
        &redis,
        &pools_files(&base.line(""), &gray.line("")),
        "[cache]\ndecided = \"unchanged\"\n",
    );
    let r = eventually(Duration::from_secs(5), "a page", || async {
        client()
            .get(g.url("/"))
            .header("sec-fetch-dest", "document")
            .header("x-forwarded-for", "10.9.9.9")
            .send()
            .await
            .ok()
    })
    .await;
    let cc = r.headers()["cache-control"].to_str().unwrap().to_string();
    assert!(r.headers().contains_key("set-cookie"));
    assert_eq!(
        cc, "private, max-age=600",
        "a Set-Cookie response is private regardless"
    );
}

/// The rollback, step by step (the table in docs/pin.md is this test's output): gray is live and
/// a whitelisted browser has a gray page open; the operator turns gray off, then removes gray's
/// servers. Each row is one request as the browser makes it (validators and pin included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_step_by_step() {
    use graysplit::pin::cookie::{encode, Keys};
    let t = base_time();
    let (base_dir, gray_dir) = (
        BuildDir::new("base", BASE_BUILD, t),
        BuildDir::new("gray", GRAY_BUILD, t),
    );
    let (base, gray) = (
        Nginx::serve_dir(base_dir.path(), ""),
        Nginx::serve_dir(gray_dir.path(), ""),
    );
    let redis = RedisServer::start();
    redis.cli(&["set", IP, IP]).expect("redis-cli");
    let mut files = pools_files(&base.line(""), &gray.line("")).to_vec();
    files.push(("switches.conf", "enabled = true\n".into()));
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let g = Graysplit::start(
        &format!(
            "{}[gray]\nswitches_file = \"switches.conf\"\n",
            config(&redis)
        ),
        &refs,
    );
    let mut b = Browser::default();
    let mut rows: Vec<String> = Vec::new();
    // (status, pool, build shown, reason, pin set)
    let mut row = |step: &str, request: &str, s: &Shown, want: (u16, &str, &str, &str, &str)| {
        let pin = s.new_pin.clone().unwrap_or_else(|| "-".into());
        rows.push(format!(
            "| {step} | {request} | {} | {} | {} | {} | {pin} |",
            s.status, s.pool, s.build, s.reason
        ));
        assert_eq!(
            (
                s.status,
                s.pool.as_str(),
                s.build,
                s.reason.as_str(),
                pin.as_str()
            ),
            want,
            "{step}: {request}"
        );
    };
    let (gpin, bpin) = (format!("gray {GRAY_BUILD}"), format!("base {BASE_BUILD}"));
    let (gb, bb) = (GRAY_BUILD, BASE_BUILD);
    const GJS: &str = "/assets/app.9abd1b9d.js";
    const GCSS: &str = "/assets/app.8e130b62.css";
    const BJS: &str = "/assets/app.5bdff181.js";

    let s = b.fetch(&g, "/", "document").await;
    row(
        "1 gray live",
        "page `/`",
        &s,
        (200, "gray", gb, "ip", &gpin),
    );
    for (path, dest) in [(GJS, "script"), (GCSS, "style"), ("/config.js", "script")] {
        let s = b.fetch(&g, path, dest).await;
        row(
            "1 gray live",
            &format!("`{path}`"),
            &s,
            (200, "gray", gb, "sticky", "-"),
        );
    }
    let open_gray_pin = b.pin.clone().expect("pin");

    g.write_file("switches.conf", "enabled = false\n");
    eventually(Duration::from_secs(5), "switch off applied", || async {
        g.log().contains("enabled=false").then_some(())
    })
    .await;
    let s = b.fetch(&g, "/config.js", "script").await;
    row(
        "2 switch off",
        "open page: `/config.js` again (within grace)",
        &s,
        (304, "gray", gb, "sticky", "-"),
    );
    let s = b.fetch(&g, GJS, "script").await;
    row(
        "2 switch off",
        "open page: its script again",
        &s,
        (304, "gray", gb, "sticky", "-"),
    );

    // The same open page, 6 minutes later: its pin is past the 5 min grace.
    let keys = Keys::new(&[SECRET]).unwrap();
    let six_min_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 360;
    b.pin = Some(encode(&keys, "gray", GRAY_BUILD, six_min_ago));
    let s = b.fetch(&g, "/config.js", "script").await;
    row(
        "3 +6 min",
        "open page: `/config.js` (past grace)",
        &s,
        (200, "base", bb, "switch_off", "-"),
    );
    let s = b.fetch(&g, "/assets/app.9abd1b9d.js", "script").await;
    row(
        "3 +6 min",
        "open page: a gray chunk (past grace)",
        &s,
        (404, "base", "-", "switch_off", "-"),
    );

    b.pin = Some(open_gray_pin.clone());
    let s = b.fetch(&g, "/", "document").await;
    row(
        "4 reload",
        "page `/` (gray's validators)",
        &s,
        (200, "base", bb, "switch_off", &bpin),
    );
    let s = b.fetch(&g, BJS, "script").await;
    row(
        "4 reload",
        "its script",
        &s,
        (200, "base", bb, "sticky", "-"),
    );
    let s = b.fetch(&g, "/config.js", "script").await;
    row(
        "4 reload",
        "`/config.js` (base's copy from step 3)",
        &s,
        (304, "base", bb, "sticky", "-"),
    );
    let s = b.fetch(&g, "/", "document").await;
    row(
        "5 reload again",
        "page `/`",
        &s,
        (304, "base", bb, "switch_off", "-"),
    );

    g.write_file("gray.conf", "");
    eventually(Duration::from_secs(5), "gray removed", || async {
        let v = common::get_json(g.admin_url("/status?format=json")).await;
        let gone = !v["servers"]["server"]
            .as_array()
            .map(|a| a.iter().any(|r| r["upstream"] == "gray"))
            .unwrap_or(true);
        gone.then_some(())
    })
    .await;
    // Another tab, loaded from gray a moment before the switch (its pin within the grace).
    let mut tab = Browser {
        pin: Some(open_gray_pin),
        ..Browser::default()
    };
    let s = tab.fetch(&g, GCSS, "style").await;
    row(
        "6 gray removed",
        "another gray tab (pin within grace): its stylesheet",
        &s,
        (404, "base", "-", "gray_unavailable", &bpin),
    );
    let s = tab.fetch(&g, "/healthz", "empty").await;
    row(
        "6 gray removed",
        "the same tab: its next fetch",
        &s,
        (200, "base", "-", "sticky", "-"),
    );

    println!("| step | request | status | pool | build | reason | pin set |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        println!("{r}");
    }
}
