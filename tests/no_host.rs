//! HTTP/1.0 without `Host` (load-balancer probes, the seed's own `HEAD / HTTP/1.0` check
//! string) is answered by the frontend (issue 12, point 7). graysplit talks HTTP/1.1 upstream,
//! and a real Debian nginx answers `400 Bad Request` to HTTP/1.1 without `Host`
//! (tests/harness.rs proves that), so graysplit sends one: `upstream.default_host` when set
//! (nginx's `server_name` behind `$host`), else the server's address as written in the pool.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::nginx::Nginx;
use common::proc::Graysplit;
use common::static_dir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `raw` on a new connection and reads the whole answer (HTTP/1.0: the server closes).
async fn exchange(addr: SocketAddr, raw: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> Option<u16> {
    answer.split_whitespace().nth(1)?.parse().ok()
}

/// nginx serving the base build, with `/host` echoing the `Host` it received.
fn nginx() -> Nginx {
    Nginx::serve_dir(
        &static_dir("base"),
        "location = /host { default_type text/plain; return 200 \"host=$host\\n\"; }",
    )
}

fn graysplit(upstream: &str, n: &Nginx) -> Graysplit {
    Graysplit::start(
        &format!(
            "[upstream]\n{upstream}\n[pools.base]\nfile = \"base.conf\"\n\
             [pools.gray]\nfile = \"gray.conf\"\n"
        ),
        &[
            ("base.conf", &format!("{}\n", n.line(""))),
            ("gray.conf", ""),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_without_host_is_answered_by_nginx_behind_graysplit() {
    let n = nginx();
    let g = graysplit("", &n);
    let page = exchange(g.listen, "GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&page), Some(200), "{page}\n{}", n.error_log());
    assert!(page.contains("base-2026.11.1"), "the base page: {page}");
    // The seed's health-check string, through the proxy.
    let head = exchange(g.listen, "HEAD / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&head), Some(200), "{head}");
    // Without a default_host, nginx saw the server's address as written in the pool.
    let host = exchange(g.listen, "GET /host HTTP/1.0\r\n\r\n").await;
    assert!(host.contains(&format!("host={}", n.addr.ip())), "{host}");
    // A client that names its host still gets it passed on (`proxy_set_header Host $host`).
    let named = exchange(
        g.listen,
        "GET /host HTTP/1.0\r\nHost: Shop.Example:8080\r\n\r\n",
    )
    .await;
    assert!(named.contains("host=shop.example"), "{named}");
    assert!(
        !n.access_log().contains("\" 400 "),
        "nginx answered no 400:\n{}",
        n.access_log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_host_is_sent_when_the_client_names_none() {
    let n = nginx();
    let g = graysplit("default_host = \"www.example.com\"", &n);
    let host = exchange(g.listen, "GET /host HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&host), Some(200), "{host}");
    assert!(host.contains("host=www.example.com"), "{host}");
    // `http_host` passes the client's Host unchanged, and still fills in a missing one.
    let g = graysplit(
        "default_host = \"www.example.com\"\nhost_header = \"http_host\"",
        &n,
    );
    let host = exchange(g.listen, "GET /host HTTP/1.0\r\n\r\n").await;
    assert!(host.contains("host=www.example.com"), "{host}");
}
