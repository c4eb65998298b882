//! Mirroring: copies of a share of base page loads sent to gray, fire-and-forget, so gray can be
//! judged on real page requests before any user reaches it (the plan's mirror stage).
//!
//! - Only base **page GETs** are copied (never a request with a body, never an asset, never a
//!   pass-through route), and only **after** the main response is complete: the proxy offers the
//!   copy from its `logging` phase, when the client has its answer.
//! - [`Gate::offer`] costs one relaxed load when mirroring is off; when on, a random draw and,
//!   for a copy, one atomic increment and one channel send. When `max_in_flight` copies are
//!   outstanding the copy is **dropped** (counted), never queued behind a slow gray.
//! - The copies leave from their own task with their own HTTP client: keep-alive connections to
//!   gray, a short `timeout`, bodies read and discarded. They carry `X-Graysplit-Mirror: 1`, no
//!   cookies and no client address.
//! - Their results go to their own counters (`graysplit_mirror_*` metrics, the mirror window
//!   table), never to gray's real traffic, its passive health or its access log.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use pingora::http::RequestHeader;
use rand::Rng as _;
use tokio::sync::mpsc;

use super::metrics::RolloutMetrics;
use super::windows::{Outcome, Table};
use crate::upstream::pool::Pool;

/// The header every copy carries, so gray's logs can tell copies from users.
pub const MIRROR_HEADER: &str = "x-graysplit-mirror";
/// Request headers a copy keeps (what a static frontend server may vary on).
const KEPT: [HeaderName; 4] = [
    http::header::HOST,
    http::header::USER_AGENT,
    http::header::ACCEPT,
    http::header::ACCEPT_LANGUAGE,
];
/// A gray page bigger than this is not read to the end (its connection is then not reused).
const MAX_BODY: usize = 8 << 20;

/// One copy to send.
#[derive(Debug)]
pub struct Job {
    pub path_and_query: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The request-path side: decides whether a page load is copied.
#[derive(Debug)]
pub struct Gate {
    /// Share of base page GETs copied, in basis points (set by the rollout's mirror stage).
    share_bp: AtomicU32,
    in_flight: AtomicUsize,
    max_in_flight: usize,
    jobs: mpsc::UnboundedSender<Job>,
    metrics: Arc<RolloutMetrics>,
}

impl Gate {
    pub fn new(
        max_in_flight: usize,
        metrics: Arc<RolloutMetrics>,
    ) -> (Gate, mpsc::UnboundedReceiver<Job>) {
        let (jobs, rx) = mpsc::unbounded_channel();
        let gate = Gate {
            share_bp: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: max_in_flight.max(1),
            jobs,
            metrics,
        };
        (gate, rx)
    }

    pub fn set_share(&self, bp: u32) {
        let before = self.share_bp.swap(bp.min(10_000), Ordering::Relaxed);
        if before != bp {
            log::info!(
                "mirror: {} % of base page loads copied to gray",
                f64::from(bp) / 100.0
            );
        }
    }

    pub fn share(&self) -> u32 {
        self.share_bp.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// A finished base page GET: copy it to gray with the configured share. Returns whether a
    /// copy was queued.
    pub fn offer(&self, req: &RequestHeader) -> bool {
        let share = self.share_bp.load(Ordering::Relaxed);
        if share == 0 || req.method != http::Method::GET {
            return false;
        }
        if share < 10_000 && rand::thread_rng().gen_range(0..10_000) >= share {
            return false;
        }
        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.metrics.mirror_dropped("in_flight");
            return false;
        }
        let headers = KEPT
            .iter()
            .filter_map(|n| req.headers.get(n).map(|v| (n.clone(), v.clone())))
            .collect();
        let job = Job {
            path_and_query: req
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            headers,
        };
        if self.jobs.send(job).is_err() {
            // The mirror task is gone (shutdown).
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.metrics.set_mirror_in_flight(self.in_flight());
        true
    }

    /// A copy finished (or was given up).
    fn done(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.set_mirror_in_flight(self.in_flight());
    }
}

/// The sending side: a background task that turns jobs into requests to gray servers.
pub struct Sender {
    pub gate: Arc<Gate>,
    pub jobs: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    pub gray: Option<Arc<Pool>>,
    pub counts: Arc<Table>,
    pub metrics: Arc<RolloutMetrics>,
    pub timeout: Duration,
}

impl Sender {
    fn client(&self) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .pool_max_idle_per_host(self.gate.max_in_flight())
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
    }

    async fn send(
        http: reqwest::Client,
        job: Job,
        server: Arc<crate::upstream::server::Server>,
        build: String,
        gate: Arc<Gate>,
        counts: Arc<Table>,
        metrics: Arc<RolloutMetrics>,
    ) {
        let started = Instant::now();
        let url = format!("http://{}{}", server.spec.addr, job.path_and_query);
        let mut req = http.get(url).header(MIRROR_HEADER, "1");
        for (n, v) in job.headers {
            req = req.header(n, v);
        }
        let result = async {
            let mut resp = req.send().await?;
            let status = resp.status().as_u16();
            let mut read = 0usize;
            while let Some(chunk) = resp.chunk().await? {
                read += chunk.len();
                if read > MAX_BODY {
                    break;
                }
            }
            Ok::<u16, reqwest::Error>(status)
        }
        .await;
        let elapsed = started.elapsed();
        let (outcome, label) = match result {
            Ok(status) => (
                Outcome {
                    status,
                    upstream_error: false,
                    elapsed: Some(elapsed),
                },
                crate::metrics::status_class(status),
            ),
            Err(e) => (
                Outcome {
                    status: 0,
                    upstream_error: true,
                    elapsed: None,
                },
                if e.is_timeout() { "timeout" } else { "error" },
            ),
        };
        counts.record("gray", &build, &outcome);
        metrics.mirror_result(label, outcome.elapsed);
        gate.done();
    }

    /// Runs until `shutdown` fires.
    pub async fn run(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some(mut jobs) = self.jobs.lock().take() else {
            return;
        };
        let http = match self.client() {
            Ok(c) => c,
            Err(e) => {
                log::error!("mirror: cannot set up the HTTP client: {e}; copies are dropped");
                return;
            }
        };
        loop {
            let job = tokio::select! {
                job = jobs.recv() => job,
                _ = shutdown.changed() => return,
            };
            let Some(job) = job else { return };
            let picked = self.gray.as_ref().and_then(|pool| {
                let server = pool.select(|_| true)?;
                let build = crate::proxy::select::build_of(&server, pool).to_string();
                Some((server, build))
            });
            let Some((server, build)) = picked else {
                self.metrics.mirror_dropped("no_server");
                self.gate.done();
                continue;
            };
            tokio::spawn(Self::send(
                http.clone(),
                job,
                server,
                build,
                self.gate.clone(),
                self.counts.clone(),
                self.metrics.clone(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(path: &str) -> RequestHeader {
        let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
        r.insert_header("host", "www.example.com").unwrap();
        r.insert_header("cookie", "session=secret").unwrap();
        r.insert_header("accept", "text/html").unwrap();
        r
    }

    fn gate(max: usize) -> (Gate, mpsc::UnboundedReceiver<Job>) {
        Gate::new(max, Arc::new(RolloutMetrics::new().unwrap()))
    }

    #[test]
    fn off_means_no_copy_and_a_copy_keeps_no_cookie() {
        let (g, mut rx) = gate(4);
        assert!(!g.offer(&page("/")));
        g.set_share(10_000);
        assert!(g.offer(&page("/a?b=1")));
        let job = rx.try_recv().unwrap();
        assert_eq!(job.path_and_query, "/a?b=1");
        let names: Vec<&str> = job.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["host", "accept"]);
        let mut post = page("/");
        post.set_method(http::Method::POST);
        assert!(!g.offer(&post), "only GETs");
    }

    #[test]
    fn the_in_flight_cap_drops_copies_instead_of_queueing_them() {
        let (g, _rx) = gate(2);
        g.set_share(10_000);
        let queued = (0..5).filter(|_| g.offer(&page("/"))).count();
        assert_eq!((queued, g.in_flight()), (2, 2));
        g.done();
        assert!(g.offer(&page("/")));
        assert_eq!(g.in_flight(), 2);
    }

    #[test]
    fn the_share_is_a_probability() {
        let (g, _rx) = gate(100_000);
        g.set_share(2_500);
        let copied = (0..10_000).filter(|_| g.offer(&page("/"))).count();
        // 25 % of 10,000 draws: far outside 2,300..2,700 is ~10 standard deviations.
        assert!((2_300..=2_700).contains(&copied), "{copied}");
    }
}
