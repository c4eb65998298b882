//! A steady request load through graysplit, as browsers make it: N concurrent clients, each in a
//! loop of one page (a navigation) and the assets that page names, keeping its pin cookie like a
//! cookie jar would. Every request's outcome is recorded, so a chaos scenario can assert that no
//! request failed, that every asset came from the same build as its page (the pin held) and that
//! every client stayed on the pool it should be on.
//!
//! ```ignore
//! let load = Load::start(&g, clients, PACE);
//! load.wait_ok(100).await;          // running
//! // ... inject the fault, wait for its effect ...
//! let report = load.finish().await;
//! report.assert_clean("black hole");
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::proc::Graysplit;

/// The build ids the static-test builds announce in every file (page, script, stylesheet).
pub const BUILDS: [(&str, &str); 2] = [("base", "base-2026.11.1"), ("gray", "gray-2026.11.2")];

/// The build id a body announces, if any.
pub fn build_in(body: &str) -> Option<&'static str> {
    BUILDS.iter().map(|(_, b)| *b).find(|b| body.contains(b))
}

/// The pool that serves `build` in the test setups.
fn pool_of_build(build: &str) -> Option<&'static str> {
    BUILDS.iter().find(|(_, b)| *b == build).map(|(p, _)| *p)
}

/// The `/assets/...` files a page loads (`href="..."` / `src="..."`).
pub fn assets_in(page: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["href=\"", "src=\""] {
        for (i, _) in page.match_indices(attr) {
            let rest = &page[i + attr.len()..];
            if let Some(end) = rest.find('"') {
                let path = &rest[..end];
                if path.starts_with("/assets/") {
                    out.push(path.to_string());
                }
            }
        }
    }
    out
}

/// One simulated browser.
#[derive(Debug, Clone)]
pub struct LoadClient {
    pub name: String,
    /// Sent with every request (e.g. `x-forwarded-for`: the client IP graysplit decides on).
    pub headers: Vec<(String, String)>,
    /// Every page must come from this pool (e.g. a whitelisted client: "gray").
    pub expect_pool: Option<String>,
}

impl LoadClient {
    /// A client at `ip` (graysplit trusts loopback's `X-Forwarded-For` by default).
    pub fn at(ip: &str) -> LoadClient {
        LoadClient {
            name: ip.to_string(),
            headers: vec![("x-forwarded-for".into(), ip.into())],
            expect_pool: None,
        }
    }

    pub fn named(mut self, name: &str) -> LoadClient {
        self.name = name.to_string();
        self
    }

    pub fn expecting(mut self, pool: &str) -> LoadClient {
        self.expect_pool = Some(pool.to_string());
        self
    }
}

/// What the load saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub requests: u64,
    pub failed: u64,
    /// The first failures, described.
    pub failures: Vec<String>,
    pub pages: u64,
    pub assets: u64,
    /// Assets whose build differs from their page's (a broken pin).
    pub mixed: u64,
    /// Pages from another pool than the client expects (lost whitelist data).
    pub wrong_pool: u64,
    /// 5xx answers that no upstream gave (no `X-Served-By`): graysplit's own 502/504, what an
    /// outage looks like to a browser (a subset of `failed`).
    pub own_5xx: u64,
    /// Pages by pool (`X-Graysplit-Pool`).
    pub pages_by_pool: BTreeMap<String, u64>,
    /// Requests by server (`X-Served-By`).
    pub by_server: BTreeMap<String, u64>,
    /// Request latencies (sorted by `finish`).
    pub latencies: Vec<Duration>,
    pub duration: Duration,
}

const KEEP_FAILURES: usize = 20;
/// Marks a failure description as graysplit's own 5xx (see [`Report::own_5xx`]).
const OWN_5XX: &str = "(graysplit's own)";

impl Report {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        if what.contains(OWN_5XX) {
            self.own_5xx += 1;
        }
        if self.failures.len() < KEEP_FAILURES {
            self.failures.push(what);
        }
    }

    pub fn percentile(&self, p: usize) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies[(self.latencies.len() * p / 100).min(self.latencies.len() - 1)]
    }

    pub fn p99(&self) -> Duration {
        self.percentile(99)
    }

    pub fn max(&self) -> Duration {
        self.latencies.last().copied().unwrap_or_default()
    }

    pub fn served_by(&self, server: &str) -> u64 {
        self.by_server.get(server).copied().unwrap_or(0)
    }

    /// One line for the test output (and the README's figures).
    pub fn summary(&self, scenario: &str) -> String {
        format!(
            "chaos {scenario}: {} requests ({} pages, {} assets) in {:.1?}, {} failed ({} graysplit's \
             own 5xx), {} mixed, {} wrong pool; pages by pool {:?}; p50 {:?} p99 {:?} max {:?}",
            self.requests,
            self.pages,
            self.assets,
            self.duration,
            self.failed,
            self.own_5xx,
            self.mixed,
            self.wrong_pool,
            self.pages_by_pool,
            self.percentile(50),
            self.p99(),
            self.max()
        )
    }

    /// No failed request, no asset from another build than its page, no client on the wrong pool,
    /// and enough traffic for that to mean something.
    pub fn assert_clean(&self, scenario: &str) {
        println!("{}", self.summary(scenario));
        assert!(
            self.pages >= 20,
            "{scenario}: the load barely ran: {}",
            self.summary(scenario)
        );
        assert!(
            self.assets >= self.pages,
            "{scenario}: pages without their assets: {}",
            self.summary(scenario)
        );
        assert_eq!(
            self.failed,
            0,
            "{scenario}: failed requests: {:#?}\n{}",
            self.failures,
            self.summary(scenario)
        );
        assert_eq!(self.mixed, 0, "{scenario}: {}", self.summary(scenario));
        assert_eq!(self.wrong_pool, 0, "{scenario}: {}", self.summary(scenario));
    }

    /// As [`Report::assert_clean`], except for exactly `upstream_failures` answers that servers
    /// gave themselves (a hiccup passed on as it came); none of graysplit's own.
    pub fn assert_only_upstream_failures(&self, scenario: &str, upstream_failures: u64) {
        println!("{}", self.summary(scenario));
        assert!(self.pages >= 20, "{scenario}: {}", self.summary(scenario));
        assert_eq!(
            (self.failed, self.own_5xx),
            (upstream_failures, 0),
            "{scenario}: {:#?}\n{}",
            self.failures,
            self.summary(scenario)
        );
        assert_eq!(self.mixed, 0, "{scenario}: {}", self.summary(scenario));
        assert_eq!(self.wrong_pool, 0, "{scenario}: {}", self.summary(scenario));
    }
}

/// " (graysplit's own)" when a 5xx came from no upstream.
fn own(status: u16, server: &str) -> &'static str {
    if status >= 500 && server == "-" {
        OWN_5XX
    } else {
        ""
    }
}

struct Shared {
    ok: AtomicU64,
    report: Mutex<Report>,
}

/// The running load; [`Load::finish`] stops it and returns the [`Report`].
pub struct Load {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    /// Starts one task per client; each waits `pace` between two page loads.
    pub fn start(g: &Graysplit, clients: Vec<LoadClient>, pace: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            ok: AtomicU64::new(0),
            report: Mutex::new(Report::default()),
        });
        let tasks = clients
            .into_iter()
            .map(|c| {
                let (stop, shared, base) = (stop.clone(), shared.clone(), g.url(""));
                tokio::spawn(browse(c, base, pace, stop, shared))
            })
            .collect();
        Load {
            stop,
            shared,
            tasks,
            started: Instant::now(),
        }
    }

    /// Requests answered correctly so far.
    pub fn ok(&self) -> u64 {
        self.shared.ok.load(Ordering::Relaxed)
    }

    /// Failed requests so far.
    pub fn failed(&self) -> u64 {
        self.shared.report.lock().expect("report lock").failed
    }

    /// The report so far (latencies unsorted).
    pub fn snapshot(&self) -> Report {
        self.shared.report.lock().expect("report lock").clone()
    }

    /// Waits until `n` more requests than now have succeeded (the load is really running).
    pub async fn wait_ok(&self, n: u64) {
        let target = self.ok() + n;
        super::eventually(
            Duration::from_secs(30),
            &format!("{n} more successful requests"),
            || async { (self.ok() >= target).then_some(()) },
        )
        .await;
    }

    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load client task");
        }
        let mut r = std::mem::take(&mut *self.shared.report.lock().expect("report lock"));
        r.duration = self.started.elapsed();
        r.latencies.sort();
        r
    }
}

/// The pin cookie value from a `Set-Cookie` header, if it is ours.
fn pin_from(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| {
            c.split(';')
                .next()
                .and_then(|kv| kv.strip_prefix("graysplit="))
                .map(str::to_string)
        })
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

/// One answer: status, pool, server, body (or why there is none).
struct Got {
    status: u16,
    pool: String,
    server: String,
    body: String,
}

async fn get(
    http: &reqwest::Client,
    url: &str,
    c: &LoadClient,
    dest: &str,
    pin: &mut Option<String>,
) -> Result<Got, String> {
    let mut req = http.get(url).header("sec-fetch-dest", dest);
    if dest == "document" {
        req = req.header("accept", "text/html,application/xhtml+xml");
    }
    for (k, v) in &c.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(p) = pin.as_deref() {
        req = req.header("cookie", format!("graysplit={p}"));
    }
    let r = req.send().await.map_err(|e| format!("{e:?}"))?;
    if let Some(p) = pin_from(&r) {
        *pin = Some(p);
    }
    let (status, pool, server) = (
        r.status().as_u16(),
        header(&r, "x-graysplit-pool"),
        header(&r, "x-served-by"),
    );
    let body = r.text().await.map_err(|e| format!("body: {e:?}"))?;
    Ok(Got {
        status,
        pool,
        server,
        body,
    })
}

async fn browse(
    c: LoadClient,
    base: String,
    pace: Duration,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
) {
    // One connection pool per client, as one browser has.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client");
    let mut pin: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let page = get(&http, &format!("{base}/"), &c, "document", &mut pin).await;
        let took = t.elapsed();
        let page_build = {
            let mut r = shared.report.lock().expect("report lock");
            r.requests += 1;
            r.latencies.push(took);
            match &page {
                Ok(g) if g.status == 200 => match build_in(&g.body) {
                    Some(build) if pool_of_build(build) == Some(g.pool.as_str()) => {
                        r.pages += 1;
                        *r.pages_by_pool.entry(g.pool.clone()).or_default() += 1;
                        *r.by_server.entry(g.server.clone()).or_default() += 1;
                        if c.expect_pool.as_deref().is_some_and(|p| p != g.pool) {
                            r.wrong_pool += 1;
                            if r.failures.len() < KEEP_FAILURES {
                                r.failures.push(format!(
                                    "{}: page from {} (expected {:?})",
                                    c.name, g.pool, c.expect_pool
                                ));
                            }
                        }
                        shared.ok.fetch_add(1, Ordering::Relaxed);
                        Some(build)
                    }
                    other => {
                        r.fail(format!(
                            "{}: page from pool {} by {} announces build {other:?}",
                            c.name, g.pool, g.server
                        ));
                        None
                    }
                },
                Ok(g) => {
                    r.fail(format!(
                        "{}: page status {}{} (pool {}, server {}): {:.80}",
                        c.name,
                        g.status,
                        own(g.status, &g.server),
                        g.pool,
                        g.server,
                        g.body
                    ));
                    None
                }
                Err(e) => {
                    r.fail(format!("{}: page: {e}", c.name));
                    None
                }
            }
        };
        if let (Some(build), Ok(p)) = (page_build, &page) {
            for path in assets_in(&p.body) {
                let dest = if path.ends_with(".css") {
                    "style"
                } else {
                    "script"
                };
                let t = Instant::now();
                let got = get(&http, &format!("{base}{path}"), &c, dest, &mut pin).await;
                let took = t.elapsed();
                let mut r = shared.report.lock().expect("report lock");
                r.requests += 1;
                r.latencies.push(took);
                match got {
                    Ok(a) if a.status == 200 => {
                        r.assets += 1;
                        *r.by_server.entry(a.server.clone()).or_default() += 1;
                        if build_in(&a.body) == Some(build) {
                            shared.ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            r.mixed += 1;
                            if r.failures.len() < KEEP_FAILURES {
                                r.failures.push(format!(
                                    "{}: {path} from {} (pool {}) is not of the page's build {build}",
                                    c.name, a.server, a.pool
                                ));
                            }
                        }
                    }
                    Ok(a) => r.fail(format!(
                        "{}: {path} status {}{} (pool {}, server {})",
                        c.name,
                        a.status,
                        own(a.status, &a.server),
                        a.pool,
                        a.server
                    )),
                    Err(e) => r.fail(format!("{}: {path}: {e}", c.name)),
                }
            }
        }
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
}
