//! A small static file server for frontend builds: the demo's upstreams and the test fixtures.
//!
//! It behaves like the nginx in front of a Vue build: `GET`/`HEAD`, `/` → `index.html`, correct
//! content types, keep-alive, `/healthz` for health checks. Optional `spa_fallback` mimics
//! `try_files $uri /index.html`, the setting behind the seed's "got '<'" error. Every response says
//! which server answered (`X-Served-By`) so demos and tests can see where traffic went.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/static_files.rs"));
}

/// The files of one build, by URL path (`/index.html`, `/assets/app.1a2b.js`).
#[derive(Debug, Clone, Default)]
pub struct SiteFiles {
    files: HashMap<String, Bytes>,
}

impl SiteFiles {
    /// Reads every file under `dir`.
    pub fn from_dir(dir: &Path) -> std::io::Result<Self> {
        let mut files = HashMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d)? {
                let p = entry?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(dir) {
                    let url = format!("/{}", rel.to_string_lossy().replace('\\', "/"));
                    files.insert(url, Bytes::from(std::fs::read(&p)?));
                }
            }
        }
        Ok(Self { files })
    }

    /// A build compiled into the binary from `static-test/<build>/` (`base` or `gray`).
    pub fn embedded(build: &str) -> Option<Self> {
        let prefix = format!("{build}/");
        let files: HashMap<String, Bytes> = embedded::FILES
            .iter()
            .filter_map(|(path, data)| {
                path.strip_prefix(&prefix)
                    .map(|rel| (format!("/{rel}"), Bytes::from_static(data)))
            })
            .collect();
        (!files.is_empty()).then_some(Self { files })
    }

    pub fn get(&self, path: &str) -> Option<&Bytes> {
        self.files.get(path)
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }
}

/// One running site.
#[derive(Debug)]
pub struct StaticSite {
    files: SiteFiles,
    /// Value of the `X-Served-By` header.
    pub name: String,
    /// When false, `/healthz` answers 503 (to exercise health checks).
    pub healthy: AtomicBool,
    /// Serve `/index.html` for unknown paths, like `try_files $uri /index.html`.
    pub spa_fallback: bool,
    /// Requests served, health checks included.
    pub hits: AtomicU64,
    /// TCP connections accepted (shows whether a client reuses keep-alive connections).
    pub connections: AtomicU64,
}

impl StaticSite {
    pub fn new(files: SiteFiles, name: impl Into<String>) -> Self {
        Self {
            files,
            name: name.into(),
            healthy: AtomicBool::new(true),
            spa_fallback: false,
            hits: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        }
    }

    fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let builder = Response::builder().header("x-served-by", self.name.as_str());
        if method != Method::GET && method != Method::HEAD {
            return text(
                builder,
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n",
            );
        }
        if path == "/healthz" && !self.healthy.load(Ordering::Relaxed) {
            return text(builder, StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n");
        }
        let path = if path.ends_with('/') {
            format!("{path}index.html")
        } else {
            path.to_string()
        };
        let found = self
            .files
            .get(&path)
            .map(|b| (path.as_str(), b))
            .or_else(|| {
                self.spa_fallback
                    .then(|| self.files.get("/index.html").map(|b| ("/index.html", b)))
                    .flatten()
            });
        let Some((path, body)) = found else {
            return text(builder, StatusCode::NOT_FOUND, "404 not found\n");
        };
        let body = if method == Method::HEAD {
            Bytes::new()
        } else {
            body.clone()
        };
        builder
            .header("content-type", content_type(path))
            .header("cache-control", "no-cache")
            .body(Full::new(body))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    }
}

fn text(
    builder: http::response::Builder,
    status: StatusCode,
    msg: &'static str,
) -> Response<Full<Bytes>> {
    builder
        .status(status)
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(msg.as_bytes())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        _ if path == "/healthz" => "text/plain",
        _ => "application/octet-stream",
    }
}

/// Serves `site` on `listener` until the task is dropped or aborted.
pub async fn serve(listener: TcpListener, site: Arc<StaticSite>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        site.connections.fetch_add(1, Ordering::Relaxed);
        let site = site.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = site.respond(req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_builds_have_index_assets_and_healthz() {
        for build in ["base", "gray"] {
            let files = SiteFiles::embedded(build).expect("embedded build");
            assert!(files.get("/index.html").is_some());
            assert!(files.get("/healthz").is_some());
            let assets: Vec<&str> = files
                .paths()
                .filter(|p| p.starts_with("/assets/app."))
                .collect();
            assert_eq!(assets.len(), 2, "{build}: one js and one css: {assets:?}");
            let html = String::from_utf8_lossy(files.get("/index.html").unwrap()).to_string();
            for a in assets {
                assert!(html.contains(a), "{build} index.html references {a}");
            }
        }
    }

    #[test]
    fn serves_index_for_root_404_for_unknown_and_fallback_when_asked() {
        let mut site = StaticSite::new(SiteFiles::embedded("base").unwrap(), "s1");
        let r = site.respond(&Method::GET, "/");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(
            site.respond(&Method::GET, "/assets/app.missing.js")
                .status(),
            StatusCode::NOT_FOUND
        );
        site.spa_fallback = true;
        let r = site.respond(&Method::GET, "/assets/app.missing.js");
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    }

    #[test]
    fn healthz_follows_the_switch() {
        let site = StaticSite::new(SiteFiles::embedded("gray").unwrap(), "s1");
        assert_eq!(
            site.respond(&Method::HEAD, "/healthz").status(),
            StatusCode::OK
        );
        site.healthy.store(false, Ordering::Relaxed);
        assert_eq!(
            site.respond(&Method::HEAD, "/healthz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
