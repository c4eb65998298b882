//! A canary upstream for the rollout tests (`canary.rs`; `flaky.rs` is the hiccup one): a real static server for a `static-test/` build
//! (`X-Served-By` = its address) that can answer every Nth GET with a 500 and can be made slow,
//! and that records what reached it — mirrored copies (`X-Graysplit-Mirror`) apart from users.
//!
//! Failures are deterministic: with `fail_every = 20`, the 20th, 40th, … GET are 500s, so any
//! 40 consecutive GETs hold exactly two — exactly 5 %, whatever the window boundaries.
//! Health checks (`HEAD`) always pass: the server is up, only its answers are bad.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use graysplit::static_site::SiteFiles;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::server_thread::ServerThread;

/// What one GET looked like (for the mirror assertions).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub mirrored: bool,
    pub had_cookie: bool,
    pub had_body: bool,
    /// When the request head arrived.
    pub at: std::time::Instant,
}

#[derive(Debug, Default)]
pub struct Shared {
    /// 0: never fail.
    pub fail_every: AtomicU64,
    pub delay_ms: AtomicU64,
    pub gets: AtomicU64,
    pub mirrored: AtomicU64,
    pub failed: AtomicU64,
    pub seen: Mutex<Vec<Seen>>,
    /// (path and query, when this server began its answer): recorded before the answer is
    /// written, so anything caused by the answer happens after it.
    pub answering: Mutex<Vec<(String, std::time::Instant)>>,
}

pub struct CanaryUpstream {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    _server: ServerThread,
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "text/plain",
    }
}

impl CanaryUpstream {
    pub fn start(build: &str) -> CanaryUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let files = Arc::new(SiteFiles::from_dir(&super::static_dir(build)).expect("build"));
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let server = ServerThread::spawn(move || async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (files, state) = (files.clone(), state.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (files, state) = (files.clone(), state.clone());
                        async move { Ok::<_, Infallible>(answer(req, &files, &state, addr).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        CanaryUpstream {
            addr,
            shared,
            _server: server,
        }
    }

    pub fn fail_every(&self, n: u64) {
        self.shared.fail_every.store(n, Ordering::Relaxed);
    }

    pub fn set_delay(&self, d: Duration) {
        self.shared.delay_ms.store(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn gets(&self) -> u64 {
        self.shared.gets.load(Ordering::Relaxed)
    }

    pub fn mirrored(&self) -> u64 {
        self.shared.mirrored.load(Ordering::Relaxed)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("seen lock").clone()
    }

    /// A pools-file line for this server.
    pub fn line(&self, build: &str) -> String {
        format!("server {} max_fails=0; # build={build}\n", self.addr)
    }
}

async fn answer(
    req: Request<Incoming>,
    files: &SiteFiles,
    state: &Shared,
    addr: SocketAddr,
) -> Response<Full<Bytes>> {
    let builder = Response::builder().header("x-served-by", addr.to_string());
    let path = req.uri().path().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |p| p.as_str().to_string());
    if req.method() == hyper::Method::HEAD {
        return builder
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    }
    let mirrored = req.headers().contains_key("x-graysplit-mirror");
    let had_cookie = req.headers().contains_key("cookie");
    let had_body = req
        .headers()
        .get("content-length")
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key("transfer-encoding");
    let answer_target = target.clone();
    state.seen.lock().expect("seen lock").push(Seen {
        method: req.method().to_string(),
        path: target,
        mirrored,
        had_cookie,
        had_body,
        at: std::time::Instant::now(),
    });
    let n = state.gets.fetch_add(1, Ordering::Relaxed) + 1;
    if mirrored {
        state.mirrored.fetch_add(1, Ordering::Relaxed);
    }
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    state
        .answering
        .lock()
        .expect("answering lock")
        .push((answer_target, std::time::Instant::now()));
    let every = state.fail_every.load(Ordering::Relaxed);
    if every > 0 && n.is_multiple_of(every) {
        state.failed.fetch_add(1, Ordering::Relaxed);
        return builder
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Full::new(Bytes::from_static(b"boom\n")))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    }
    let file = if path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path
    };
    match files.get(&file) {
        Some(body) => builder
            .header("content-type", content_type(&file))
            .body(Full::new(body.clone()))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
        None => builder
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"404\n")))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
    }
}
