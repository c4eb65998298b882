//! A real browser over HTTPS and HTTP/2: Debian's headless Chromium (through chromedriver) loads
//! the demo page from graysplit's TLS listener (`--ignore-certificate-errors` for the test CA;
//! `site.test` mapped to loopback so SNI is a real name), page and assets over `h2`, one build per
//! page, the pin cookie `Secure`, the Redis whitelist moving the browser to gray, and a plain-HTTP
//! URL redirected (308) to the same page on https.
//!
//! Screenshot: `<target>/browser-test/https-gray.png`.

mod common;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

use common::proc::{Graysplit, ServerOptions};
use common::redis::RedisServer;
use common::upstream::Upstream;
use common::{certs, eventually, eventually_sync, free_addr, free_port};

const BASE_BUILD: &str = "base-2026.11.1";
const GRAY_BUILD: &str = "gray-2026.11.2";

/// chromedriver in its own process group, so dropping it also ends the Chromium it started.
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
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
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
                "--ignore-certificate-errors",
                "--host-resolver-rules=MAP site.test 127.0.0.1",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    caps.insert(
        "timeouts".into(),
        json!({"pageLoad": 15_000, "script": 5_000}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session with Chromium")
}

/// The page's builds (document, script, stylesheet) and the protocol of the page and of every
/// resource (`nextHopProtocol`: "h2" for HTTP/2).
const REPORT_JS: &str = r#"
    const root = document.documentElement;
    const nav = performance.getEntriesByType('navigation')[0];
    return {
        document: document.querySelector('meta[name="graysplit-build"]').content,
        script: String(window.__BUILD__ || ''),
        stylesheet: getComputedStyle(root).getPropertyValue('--build').trim().replace(/"/g, ''),
        protocols: [nav.nextHopProtocol].concat(
            performance.getEntriesByType('resource').map(e => e.name + ' ' + e.nextHopProtocol)),
        url: location.href,
    };
"#;

#[derive(Debug)]
struct Report {
    builds: [String; 3],
    protocols: Vec<String>,
    url: String,
}

impl Report {
    fn single_build(&self) -> Option<&str> {
        let b = &self.builds;
        (b.iter().all(|x| *x == b[0]) && !b[0].is_empty()).then_some(b[0].as_str())
    }

    /// Page and every resource came over HTTP/2.
    fn all_h2(&self) -> bool {
        self.protocols.len() >= 3 && self.protocols.iter().all(|p| p.ends_with("h2"))
    }
}

async fn report(c: &Client) -> Report {
    let v = c.execute(REPORT_JS, vec![]).await.expect("run the report");
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    Report {
        builds: [s("document"), s("script"), s("stylesheet")],
        protocols: v["protocols"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        url: s("url"),
    }
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
async fn chromium_over_https_and_http2_keeps_one_build_per_page() {
    let redis = RedisServer::start();
    let base = Upstream::start_with("base", |site| site.spa_fallback = true);
    let gray = Upstream::start_with("gray", |site| site.spa_fallback = true);
    let (tls, redirect) = (free_addr(), free_addr());
    let opts = ServerOptions {
        extra_listeners: vec![
            format!("{{ addr = \"{tls}\", tls = true }}"),
            format!(
                "{{ addr = \"{redirect}\", https_redirect = true, https_port = {} }}",
                tls.port()
            ),
        ],
        ..ServerOptions::default()
    };
    let certs_dir = tempfile::tempdir().unwrap();
    certs::ca(certs_dir.path());
    certs::leaf(certs_dir.path(), "site", "site.test");
    let read = |n: &str| std::fs::read_to_string(certs_dir.path().join(n)).unwrap();
    let files = [
        (
            "base.conf",
            format!("{} # build={BASE_BUILD}\n", base.line("")),
        ),
        (
            "gray.conf",
            format!("{} # build={GRAY_BUILD}\n", gray.line("")),
        ),
        ("site.crt", read("site.crt")),
        ("site.key", read("site.key")),
    ];
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    // The browser connects from 127.0.0.1: with no trusted proxies that address is the client.
    let toml = format!(
        "[pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n\
         [gray]\ntrusted_proxies = []\n[gray.redis]\nurl = \"{}\"\ncache_ttl = \"0s\"\ntimeout = \"2s\"\n\
         [pin]\nsecrets = [\"browser-test-secret-0123456789\"]\n\
         [[tls.certificates]]\ncert = \"site.crt\"\nkey = \"site.key\"\n",
        redis.url()
    );
    let _g = Graysplit::start_with(&opts, &toml, &refs);
    // The harness waits for the first listener; Pingora binds the others right after it.
    for addr in [tls, redirect] {
        eventually_sync(
            Duration::from_secs(10),
            "the TLS and redirect listeners",
            || TcpStream::connect(addr).ok().map(|_| ()),
        );
    }
    let driver = ChromeDriver::start();
    let profile = tempfile::tempdir().expect("profile dir");
    let c = browser(&driver, profile.path()).await;
    let page = format!("https://site.test:{}/", tls.port());

    // 1. Not whitelisted: base everywhere, over h2, the pin Secure.
    c.goto(&page).await.expect("open the page");
    let r = report(&c).await;
    assert_eq!(r.single_build(), Some(BASE_BUILD), "{r:?}");
    assert!(r.all_h2(), "page and assets over HTTP/2: {r:?}");
    let pin = c
        .get_named_cookie("graysplit")
        .await
        .expect("the pin cookie");
    assert!(
        pin.value().starts_with(&format!("v1.base.{BASE_BUILD}.")),
        "{pin:?}"
    );
    assert_eq!(pin.secure(), Some(true), "Secure over TLS: {pin:?}");

    // 2. Whitelisted the seed's way: a reload is gray everywhere, still h2.
    assert_eq!(
        redis.cli(&["set", "127.0.0.1", "127.0.0.1"]).as_deref(),
        Some("OK")
    );
    let r = eventually(Duration::from_secs(10), "a reload to be gray", || async {
        c.refresh().await.ok()?;
        let r = report(&c).await;
        (r.builds[0] == GRAY_BUILD).then_some(r)
    })
    .await;
    assert_eq!(r.single_build(), Some(GRAY_BUILD), "{r:?}");
    assert!(r.all_h2(), "{r:?}");
    let pin = c
        .get_named_cookie("graysplit")
        .await
        .expect("the pin cookie");
    assert!(
        pin.value().starts_with(&format!("v1.gray.{GRAY_BUILD}.")),
        "{pin:?}"
    );
    std::fs::write(
        screenshot_dir().join("https-gray.png"),
        c.screenshot().await.expect("screenshot"),
    )
    .expect("save https-gray.png");

    // 3. The plain-HTTP address: redirected to the same page and query on https.
    c.goto(&format!("http://site.test:{}/?from=http", redirect.port()))
        .await
        .expect("open the http URL");
    let r = report(&c).await;
    assert_eq!(r.url, format!("{page}?from=http"), "{r:?}");
    assert_eq!(r.single_build(), Some(GRAY_BUILD), "{r:?}");
    assert!(r.all_h2(), "{r:?}");
    c.close().await.expect("close the session");
}
