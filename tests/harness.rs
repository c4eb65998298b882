//! The shared test helpers themselves: real Redis, real upstreams, cleanup on drop.

mod common;

use common::redis::RedisServer;
use common::upstream::Upstream;

#[test]
fn redis_helper_runs_a_real_server_and_stops_it_on_drop() {
    let redis = RedisServer::start();
    // The operator's whitelist command from the seed, unchanged.
    assert_eq!(
        redis
            .cli(&["set", "192.168.93.182", "192.168.93.182"])
            .as_deref(),
        Some("OK")
    );
    assert_eq!(
        redis.cli(&["get", "192.168.93.182"]).as_deref(),
        Some("192.168.93.182")
    );
    let port = redis.port;
    drop(redis);
    common::eventually_sync(std::time::Duration::from_secs(5), "redis to stop", || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_err()
            .then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_helper_serves_static_test_and_dies_on_drop() {
    let up = Upstream::start("gray");
    let r = common::client()
        .get(format!("http://{}/", up.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("gray-2026.11.2"));
    let url = format!("http://{}/", up.addr);
    let site = up.site.clone();
    let served = site.hits.load(std::sync::atomic::Ordering::Relaxed);
    drop(up);
    // A parallel test may have been handed the freed port, so the question is not "does anything
    // answer there" but "did our server answer": its own counter must not move.
    let _ = common::client().get(url).send().await;
    let after = site.hits.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after, served, "the upstream still serves after drop");
}

/// Raw HTTP/1.x exchange on a fresh connection: the status line nginx answers.
fn raw_status(addr: std::net::SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or("").to_string()
}

#[test]
fn nginx_helper_runs_a_real_nginx_that_is_strict_about_host_and_stops_on_drop() {
    let nginx = common::nginx::Nginx::serve_dir(&common::static_dir("base"), "");
    assert!(
        raw_status(
            nginx.addr,
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        .contains(" 200 "),
        "{}",
        nginx.error_log()
    );
    // What hyper tolerates and nginx does not (RFC 9112 section 3.2).
    assert!(
        raw_status(nginx.addr, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").contains(" 400 ")
    );
    // nginx's validators: ETag from mtime and size, 304 on a match.
    let head = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(nginx.addr).unwrap();
        s.write_all(b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("ETag: "))
        .expect("nginx sends an ETag")
        .to_string();
    assert!(raw_status(
        nginx.addr,
        &format!("GET / HTTP/1.1\r\nHost: a\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n")
    )
    .contains(" 304 "));
    let addr = nginx.addr;
    drop(nginx);
    common::eventually_sync(std::time::Duration::from_secs(5), "nginx to stop", || {
        std::net::TcpStream::connect(addr).is_err().then_some(())
    });
}

#[test]
fn nginx_test_config_rejects_weight_zero_as_nginx_does() {
    let ok = common::nginx::test_config("upstream u { server 127.0.0.1:1 weight=1 down; }");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = common::nginx::test_config("upstream u { server 127.0.0.1:1 weight=0; }");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid parameter \"weight=0\""));
}
