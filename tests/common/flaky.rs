//! A frontend server that hiccups on command, for the failure-semantics tests (issue 12).
//!
//! [`FlakyUpstream`] serves a `static-test/<build>` (with `X-Served-By` = its address, like
//! [`super::upstream::Upstream`]) and can be told to answer the way a real server does when it
//! has a bad moment: the next N GETs with a status (a deploy restarting the app behind nginx,
//! a rate limit), every other GET, or everything including the health check (broken). Health
//! checks are `HEAD`s and pass unless the server is broken, as with a real server whose
//! application hiccups while nginx in front of it still answers `HEAD /`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use graysplit::static_site::SiteFiles;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;

use super::server_thread::ServerThread;

/// What the server does, shared with the test.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// GETs still to answer with `status`.
    fail_next: AtomicU64,
    status: AtomicU16,
    /// Every other GET answers `status` (the first one does).
    alternate: AtomicBool,
    alternated: AtomicU64,
    /// Every request, health checks included, answers 503.
    broken: AtomicBool,
    /// GETs received (pages and assets), and how many were answered with a failure status.
    pub gets: AtomicU64,
    pub failed: AtomicU64,
    /// HEADs received (health checks).
    pub heads: AtomicU64,
}

pub struct FlakyUpstream {
    pub addr: SocketAddr,
    pub behaviour: Arc<Behaviour>,
    _server: ServerThread,
}

impl FlakyUpstream {
    /// Serves `static-test/<build>` on 127.0.0.1:0, healthy.
    pub fn start(build: &str) -> FlakyUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind flaky upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let files =
            Arc::new(SiteFiles::from_dir(&super::static_dir(build)).expect("read static build"));
        let behaviour = Arc::new(Behaviour {
            status: AtomicU16::new(503),
            ..Behaviour::default()
        });
        let (b, name) = (behaviour.clone(), addr.to_string());
        let server = ServerThread::spawn(move || async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (b, files, name) = (b.clone(), files.clone(), name.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let resp = respond(&b, &files, &name, req.method(), req.uri().path());
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FlakyUpstream {
            addr,
            behaviour,
            _server: server,
        }
    }

    /// The next `n` GETs answer `status`.
    pub fn fail_next(&self, n: u64, status: u16) {
        self.behaviour.status.store(status, Ordering::Relaxed);
        self.behaviour.fail_next.store(n, Ordering::Relaxed);
    }

    /// Every other GET answers `status` (starting with the next one), until turned off.
    pub fn fail_every_other(&self, on: bool, status: u16) {
        self.behaviour.status.store(status, Ordering::Relaxed);
        self.behaviour.alternated.store(0, Ordering::Relaxed);
        self.behaviour.alternate.store(on, Ordering::Relaxed);
    }

    /// Broken: every request, health checks included, answers 503.
    pub fn set_broken(&self, broken: bool) {
        self.behaviour.broken.store(broken, Ordering::Relaxed);
    }

    pub fn gets(&self) -> u64 {
        self.behaviour.gets.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.behaviour.failed.load(Ordering::Relaxed)
    }

    /// A pools-file line for this server.
    pub fn line(&self, extra: &str) -> String {
        format!("server {} {extra};", self.addr)
    }
}

/// Atomically takes one from `n` if it is above zero.
fn take_one(n: &AtomicU64) -> bool {
    n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
        .is_ok()
}

fn respond(
    b: &Behaviour,
    files: &SiteFiles,
    name: &str,
    method: &Method,
    path: &str,
) -> Response<Full<Bytes>> {
    let builder = || Response::builder().header("x-served-by", name);
    let fail = |status: u16| {
        b.failed.fetch_add(1, Ordering::Relaxed);
        builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"hiccup\n")))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    if *method == Method::HEAD {
        b.heads.fetch_add(1, Ordering::Relaxed);
    } else {
        b.gets.fetch_add(1, Ordering::Relaxed);
    }
    if b.broken.load(Ordering::Relaxed) {
        return fail(503);
    }
    if *method == Method::GET {
        let status = b.status.load(Ordering::Relaxed);
        if take_one(&b.fail_next) {
            return fail(status);
        }
        if b.alternate.load(Ordering::Relaxed)
            && b.alternated
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(2)
        {
            return fail(status);
        }
    }
    let path = if path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path.to_string()
    };
    let Some(body) = files.get(&path) else {
        return builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"404 not found\n")))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
    };
    let body = if *method == Method::HEAD {
        Bytes::new()
    } else {
        body.clone()
    };
    let content_type = match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "text/plain",
    };
    builder()
        .header("content-type", content_type)
        .header("cache-control", "no-cache")
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
