//! Header names on the wire (`server.header_case`): by default graysplit drops Pingora's map of
//! the case each name was read in (it costs every added header twice), and writes names as
//! Pingora writes an HTTP/2 message to HTTP/1: common ones in their usual case, the rest in
//! lowercase. `preserve` writes each name as the client or the upstream wrote it, as nginx does.
//! Both sides are read off the wire: a raw upstream records the request head it received, a raw
//! client reads the answer's head.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proc::{Graysplit, ServerOptions};
use common::server_thread::ServerThread;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The answer's head, names in mixed case and a reason phrase of its own.
const ANSWER: &str = "HTTP/1.1 200 Fine\r\nContent-Type: text/html\r\nETag: \"v1\"\r\n\
                      X-Build-Id: base-1\r\nContent-Length: 5\r\n\r\n";

/// Reads one request head (up to the blank line) from `s`; `None` when the peer closed.
async fn read_head(s: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// An HTTP/1.1 upstream that answers every request with [`ANSWER`] and records the heads of the
/// requests that are not health checks (`HEAD`).
fn raw_upstream() -> (ServerThread, SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let server = ServerThread::spawn(move || async move {
        let listener = TcpListener::from_std(listener).expect("listener");
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            let record = record.clone();
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut s).await {
                    let head_only = head.starts_with("HEAD ");
                    if !head_only {
                        record.lock().expect("lock").push(head);
                    }
                    let body = if head_only { "" } else { "hello" };
                    if s.write_all(format!("{ANSWER}{body}").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (server, addr, seen)
}

/// graysplit with one base server, `addr`, and `server_extra` in `[server]`.
fn graysplit(addr: SocketAddr, server_extra: &str) -> Graysplit {
    let opts = ServerOptions {
        server_extra: server_extra.to_string(),
        ..ServerOptions::default()
    };
    Graysplit::start_with(
        &opts,
        "[pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n",
        &[
            ("base.conf", &format!("server {addr};\n")),
            ("gray.conf", ""),
        ],
    )
}

/// Sends one request with mixed-case names and returns the answer's head.
async fn ask(g: &Graysplit) -> String {
    let mut s = tokio::net::TcpStream::connect(g.listen)
        .await
        .expect("connect");
    s.write_all(
        b"GET /index.html HTTP/1.1\r\nHOST: shop.example\r\nX-Client-Thing: 1\r\n\
          Connection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert_eq!(body, "hello", "{text}");
    head.to_string()
}

/// The header lines of a head, without its first line.
fn lines(head: &str) -> Vec<&str> {
    head.trim_end().split("\r\n").skip(1).collect()
}

fn forwarded(seen: &Arc<Mutex<Vec<String>>>) -> String {
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), 1, "one proxied request: {seen:?}");
    seen[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_names_are_written_as_pingora_writes_http2_ones() {
    let (_up, addr, seen) = raw_upstream();
    let g = graysplit(addr, "");
    let answer = ask(&g).await;
    let request = forwarded(&seen);

    // The upstream: a common name titled, the rest lowercase, graysplit's own too.
    let req = lines(&request);
    assert!(req.contains(&"Host: shop.example"), "{request}");
    assert!(req.contains(&"x-client-thing: 1"), "{request}");
    assert!(
        req.iter()
            .any(|l| l.starts_with("x-forwarded-for: 127.0.0.1")),
        "{request}"
    );
    assert!(!request.contains("X-Client-Thing"), "{request}");

    // The client: the status line and its reason phrase as the upstream wrote them; names
    // normalised the same way.
    assert!(answer.starts_with("HTTP/1.1 200 Fine\r\n"), "{answer}");
    let resp = lines(&answer);
    assert!(resp.contains(&"Content-Type: text/html"), "{answer}");
    assert!(
        resp.contains(&"etag: \"v1:gs=base\""),
        "tagged with the build: {answer}"
    );
    assert!(resp.contains(&"x-build-id: base-1"), "{answer}");
    assert!(resp.contains(&"x-graysplit-pool: base"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserve_writes_each_name_as_it_was_read() {
    let (_up, addr, seen) = raw_upstream();
    let g = graysplit(addr, "header_case = \"preserve\"");
    let answer = ask(&g).await;
    let request = forwarded(&seen);

    let req = lines(&request);
    assert!(req.contains(&"X-Client-Thing: 1"), "{request}");
    assert!(!request.contains("x-client-thing"), "{request}");

    assert!(answer.starts_with("HTTP/1.1 200 Fine\r\n"), "{answer}");
    let resp = lines(&answer);
    assert!(resp.contains(&"X-Build-Id: base-1"), "{answer}");
    assert!(resp.contains(&"Content-Type: text/html"), "{answer}");
}
