//! A real browser: Debian's headless Chromium, driven through chromedriver (WebDriver), loads the
//! demo page through graysplit. `scripts/test` installs `chromium` and `chromium-driver`.
//!
//! The upstreams are two real Debian nginx serving the two builds with `try_files $uri
//! /index.html` (the seed's setting), so a script fetched from the wrong build would come back as
//! HTML and fail with "Unexpected token '<'" — a console error this test would see. Both builds'
//! files have identical mtimes and their pages the same size, so nginx gives both the same ETag
//! and Last-Modified: a reload whose validators reached the other build would get a 304 and keep
//! the old page on screen (issue 11). The browser revalidates on every reload.
//!
//! Screenshots: `<target>/browser-test/{base,gray}.png`.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

use common::builds::{base_time, BuildDir};
use common::nginx::Nginx;
use common::proc::Graysplit;
use common::redis::RedisServer;
use common::{eventually, eventually_sync, free_port};

const BASE_BUILD: &str = "base-2026.11.1";
const GRAY_BUILD: &str = "gray-2026.11.2";

/// chromedriver on a free loopback port, in its own process group so that dropping it also ends
/// the Chromium it started (even when the test panics before closing the session).
struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    fn start() -> ChromeDriver {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver is not installed: run scripts/test, which installs it");
        let driver = ChromeDriver { child, port };
        eventually_sync(Duration::from_secs(15), "chromedriver to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
        driver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        // The group id is chromedriver's own pid (process_group(0)); Chromium inherited it.
        // Signalled directly: procps-ng 4.0.2's `kill -KILL -<pgid>` reached far more than the
        // group here.
        if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
            if pgid > 1 {
                // SAFETY: kill(2) with a negative id signals exactly that process group.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `POST /session/{id}/se/log {"type":"browser"}`: chromedriver's console log (entries since the
/// last call), enabled by the `goog:loggingPrefs` capability.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &reqwest::Url,
        session_id: Option<&str>,
    ) -> Result<reqwest::Url, url_parse::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &reqwest::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// `url::ParseError`, reached through reqwest (the same `url` crate fantoccini uses).
mod url_parse {
    pub type ParseError = <reqwest::Url as std::str::FromStr>::Err;
}

async fn browser(driver: &ChromeDriver, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1024,640",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    caps.insert(
        "timeouts".into(),
        json!({"pageLoad": 15_000, "script": 5_000}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&driver.url())
        .await
        .expect("a WebDriver session with Chromium")
}

/// What the loaded page reports about itself: the document's build, the script's, the
/// stylesheet's, and every resource the browser fetched.
#[derive(Debug)]
struct Report {
    document: String,
    script: String,
    script_marked: String,
    stylesheet: String,
    resources: Vec<String>,
}

impl Report {
    fn builds(&self) -> [&str; 4] {
        [
            &self.document,
            &self.script,
            &self.script_marked,
            &self.stylesheet,
        ]
    }

    /// One build everywhere (and the page did load its assets).
    fn single_build(&self) -> Option<&str> {
        let b = self.builds();
        (b.iter().all(|x| *x == b[0]) && !b[0].is_empty()).then_some(b[0])
    }
}

const REPORT_JS: &str = r#"
    const root = document.documentElement;
    const css = getComputedStyle(document.getElementById('css-build'), '::after').content;
    return {
        document: document.querySelector('meta[name="graysplit-build"]').content,
        script: String(window.__BUILD__ || ''),
        script_marked: root.getAttribute('data-build') || '',
        stylesheet: getComputedStyle(root).getPropertyValue('--build').trim().replace(/"/g, '')
            + '|' + css.replace(/"/g, ''),
        resources: performance.getEntriesByType('resource').map(e => e.name),
    };
"#;

async fn report(c: &Client) -> Report {
    let v = c.execute(REPORT_JS, vec![]).await.expect("run the report");
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    // The stylesheet announces its build twice (a custom property and a ::after content).
    let stylesheet = match s("stylesheet").split_once('|') {
        Some((a, b)) if a == b => a.to_string(),
        _ => format!("inconsistent stylesheet {}", s("stylesheet")),
    };
    Report {
        document: s("document"),
        script: s("script"),
        script_marked: s("script_marked"),
        stylesheet,
        resources: v["resources"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Console entries at level SEVERE since the last call (script errors, failed loads).
///
/// One is expected and left out: the fixtures ship no favicon, and Chromium asks for
/// `/favicon.ico` on its own. The SPA fallback answers it with index.html, which graysplit never
/// passes on for an image, so the browser logs a 404 for it — the fixture's gap, not a build mix.
async fn console_errors(c: &Client) -> Vec<String> {
    let v = c.issue_cmd(BrowserLog).await.expect("browser log");
    v.as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["level"].as_str() == Some("SEVERE"))
                .map(|e| e["message"].as_str().unwrap_or("").to_string())
                .filter(|m| !(m.contains("/favicon.ico ") && m.contains("status of 404")))
                .collect()
        })
        .unwrap_or_default()
}

async fn pin_cookie(c: &Client) -> String {
    c.get_named_cookie("graysplit")
        .await
        .map(|ck| ck.value().to_string())
        .unwrap_or_default()
}

fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("browser-test"))
        .unwrap_or_else(|| PathBuf::from("target/browser-test"));
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_loads_one_build_per_page_while_the_whitelist_flips() {
    let redis = Arc::new(RedisServer::start());
    let (base_dir, gray_dir) = (
        BuildDir::new("base", BASE_BUILD, base_time()),
        BuildDir::new("gray", GRAY_BUILD, base_time()),
    );
    let spa = "location / { try_files $uri /index.html; }";
    let (base, gray) = (
        Nginx::serve_dir(base_dir.path(), spa),
        Nginx::serve_dir(gray_dir.path(), spa),
    );
    let files = [
        (
            "base.conf",
            format!("{} # build={BASE_BUILD}\n", base.line("")),
        ),
        (
            "gray.conf",
            format!("{} # build={GRAY_BUILD}\n", gray.line("")),
        ),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    // The browser connects from 127.0.0.1: with no trusted proxies that address is the client.
    // No whitelist cache: a flip takes effect at the very next request (the hardest case).
    let toml = format!(
        "[pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n\
         [gray]\ntrusted_proxies = []\n\
         [gray.redis]\nurl = \"{}\"\ncache_ttl = \"0s\"\ntimeout = \"200ms\"\n\
         [pin]\nsecrets = [\"browser-test-secret-0123456789\"]\n",
        redis.url()
    );
    let g = Graysplit::start(&toml, &refs);
    let driver = ChromeDriver::start();
    let profile = tempfile::tempdir().expect("profile dir");
    let c = browser(&driver, profile.path()).await;
    let shots = screenshot_dir();

    // 1. Not whitelisted: base everywhere, pin set.
    c.goto(&g.url("/")).await.expect("open the page");
    let r = report(&c).await;
    assert_eq!(r.single_build(), Some(BASE_BUILD), "{r:?}");
    assert!(
        r.resources.iter().any(|u| u.ends_with(".js"))
            && r.resources.iter().any(|u| u.ends_with(".css")),
        "{r:?}"
    );
    let pin = pin_cookie(&c).await;
    assert!(
        pin.starts_with(&format!("v1.base.{BASE_BUILD}.")),
        "pin {pin:?}"
    );
    assert_eq!(console_errors(&c).await, Vec::<String>::new());
    std::fs::write(
        shots.join("base.png"),
        c.screenshot().await.expect("screenshot"),
    )
    .expect("save base.png");
    // A reload on the same build revalidates, and nginx says 304: validators still work.
    let page_304s = |n: &Nginx| n.access_log().matches("\"GET / HTTP/1.1\" 304").count();
    c.refresh().await.expect("reload");
    let r = report(&c).await;
    assert_eq!(r.single_build(), Some(BASE_BUILD), "{r:?}");
    assert_eq!(
        page_304s(&base),
        1,
        "the same-build reload was a 304:\n{}",
        base.access_log()
    );

    // 2. Whitelist the browser's address the seed's way; reload: all gray, pin moved.
    assert_eq!(
        redis.cli(&["set", "127.0.0.1", "127.0.0.1"]).as_deref(),
        Some("OK")
    );
    let r = eventually(Duration::from_secs(10), "a reload to be gray", || async {
        c.refresh().await.ok()?;
        let r = report(&c).await;
        (r.document == GRAY_BUILD).then_some(r)
    })
    .await;
    assert_eq!(r.single_build(), Some(GRAY_BUILD), "{r:?}");
    let pin = pin_cookie(&c).await;
    assert!(
        pin.starts_with(&format!("v1.gray.{GRAY_BUILD}.")),
        "pin {pin:?}"
    );
    assert_eq!(console_errors(&c).await, Vec::<String>::new());
    std::fs::write(
        shots.join("gray.png"),
        c.screenshot().await.expect("screenshot"),
    )
    .expect("save gray.png");
    assert_eq!(
        page_304s(&gray),
        0,
        "the move to gray was a 200, never gray's 304"
    );

    // 3. Removed from the whitelist; reload: base again (the rollback direction).
    assert_eq!(redis.cli(&["del", "127.0.0.1"]).as_deref(), Some("1"));
    c.refresh().await.expect("reload");
    let r = report(&c).await;
    assert_eq!(
        r.single_build(),
        Some(BASE_BUILD),
        "the first reload after removal: {r:?}"
    );
    let pin = pin_cookie(&c).await;
    assert!(
        pin.starts_with(&format!("v1.base.{BASE_BUILD}.")),
        "pin {pin:?}"
    );
    assert_eq!(page_304s(&base), 1, "the move back to base was a 200 too");
    assert_eq!(console_errors(&c).await, Vec::<String>::new());
    redis.cli(&["set", "127.0.0.1", "127.0.0.1"]);

    // 4. 20 reloads while the whitelist flips in the background.
    let stop = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicUsize::new(0));
    let flipper = {
        let (stop, flips, redis) = (stop.clone(), flips.clone(), redis.clone());
        std::thread::spawn(move || {
            let mut listed = true;
            while !stop.load(Ordering::Relaxed) {
                listed = !listed;
                if listed {
                    redis.cli(&["set", "127.0.0.1", "127.0.0.1"]);
                } else {
                    redis.cli(&["del", "127.0.0.1"]);
                }
                flips.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(7));
            }
        })
    };
    let mut per_build = std::collections::BTreeMap::<String, usize>::new();
    let mut mixed = Vec::new();
    let mut stale = Vec::new();
    let mut errors = Vec::new();
    for i in 0..20 {
        c.refresh().await.expect("reload");
        let r = report(&c).await;
        match r.single_build() {
            Some(b) => *per_build.entry(b.to_string()).or_default() += 1,
            None => mixed.push(format!("reload {i}: {r:?}")),
        }
        // A stale page: the document of one build while the pin (the decision) names another —
        // what a 304 from the other build produced before.
        let pin = pin_cookie(&c).await;
        if !pin.contains(&format!(".{}.", r.document)) {
            stale.push(format!(
                "reload {i}: document {} with pin {pin}",
                r.document
            ));
        }
        errors.extend(
            console_errors(&c)
                .await
                .into_iter()
                .map(|e| format!("reload {i}: {e}")),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let _ = flipper.join();
    c.close().await.expect("close the session");
    eprintln!(
        "20 reloads during {} whitelist flips: {per_build:?}",
        flips.load(Ordering::Relaxed)
    );
    assert_eq!(mixed, Vec::<String>::new(), "mixed pages");
    assert_eq!(stale, Vec::<String>::new(), "stale pages");
    assert_eq!(errors, Vec::<String>::new(), "console errors");
    assert!(
        flips.load(Ordering::Relaxed) >= 20,
        "the whitelist did flip"
    );
}
