//! Shared helpers for integration tests. Every helper is a guard: dropping it stops what it
//! started. Every port comes from binding `127.0.0.1:0`; readiness is polled with a deadline.
#![allow(dead_code)]

pub mod builds;
pub mod canary;
pub mod certs;
pub mod chrome;
pub mod consul;
pub mod edge;
pub mod faulty;
pub mod flaky;
pub mod load;
pub mod nginx;
pub mod proc;
pub mod pyserver;
pub mod redis;
pub mod rollout;
pub mod server_thread;
pub mod upstream;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A port that was free a moment ago (bound on 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// The repository's `static-test/<build>` directory.
pub fn static_dir(build: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("static-test")
        .join(build)
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Blocking variant of [`eventually`] for plain `#[test]`s and Drop code.
pub fn eventually_sync<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP client that does not reuse connections across tests and never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

/// GETs `url` and parses the body as JSON (admin endpoints such as `/decide`, `/status`).
pub async fn get_json(url: impl reqwest::IntoUrl) -> serde_json::Value {
    client()
        .get(url)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("a JSON body")
}
