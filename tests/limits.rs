//! Slow and greedy clients, end to end (issue 13 §4): a slowloris is cut at the head deadline
//! while normal clients are served, connections over `max_connections` /
//! `max_connections_per_ip` are closed at once, bodies over `client_max_body_size` get 413 —
//! each counted in `/metrics`. Assertions are on bytes, answers and counts, never on timings.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::edge::{client_from, connect_from, metric, raw_get, OTHER, TRUSTED, UNTRUSTED};
use common::eventually;
use common::proc::{Graysplit, ServerOptions};
use common::upstream::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn start(limits: &str, base: &str) -> Graysplit {
    Graysplit::start(
        &format!("[pools.base]\nfile = \"base.conf\"\n[limits]\n{limits}\n"),
        &[("base.conf", &format!("{base}\n"))],
    )
}

fn limit_hits(limit: &str) -> String {
    format!("graysplit_client_limit_hits_total{{limit=\"{limit}\"}}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_is_cut_at_the_deadline_while_normal_clients_are_served() {
    let up = Upstream::start("base");
    let g = start("client_header_timeout = \"2s\"", &up.line(""));
    let mut slow = connect_from(UNTRUSTED, g.listen).await;
    // The head it would need: 100 bytes at one a second, far beyond the 2 s deadline.
    let head = format!(
        "GET / HTTP/1.1\r\nHost: test\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(70)
    );
    assert!(head.len() >= 100);
    let sent = Arc::new(AtomicUsize::new(0));
    let (mut rd, mut wr) = slow.split();
    let drip = async {
        for b in head.as_bytes() {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            sent.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let answer = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    // Normal clients keep being served while the slow one drips.
    let normal = async {
        let c = client_from(common::edge::OTHER);
        let mut ok = 0;
        for _ in 0..20 {
            if c.get(g.url("/"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                ok += 1;
            }
        }
        ok
    };
    let (got, ok) = tokio::select! {
        both = async { tokio::join!(answer, normal) } => both,
        _ = drip => panic!("the slow client sent its whole head without being cut"),
    };
    let managed = sent.load(Ordering::Relaxed);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "answer to the slow head: {text:?}"
    );
    assert!(
        managed < head.len(),
        "cut after {managed} of {} bytes",
        head.len()
    );
    assert_eq!(ok, 20, "normal clients were served meanwhile");
    assert_eq!(metric(&g, &limit_hits("client_header_timeout")).await, 1.0);
    println!("the slow client managed {managed} bytes before the cut");
}

/// One keep-alive request on `s`; the status line of its answer (read to the end of its body).
async fn keepalive_get(s: &mut tokio::net::TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert!(n > 0, "closed before the answer was complete: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .expect("a Content-Length");
            if body.len() >= len {
                return head.lines().next().unwrap_or_default().to_string();
            }
        }
    }
}

/// graysplit in front of `up` alone, with `server.keepalive_timeout = timeout`.
fn with_keepalive_timeout(up: &Upstream, timeout: &str) -> Graysplit {
    let opts = ServerOptions {
        server_extra: format!("keepalive_timeout = \"{timeout}\""),
        ..ServerOptions::default()
    };
    Graysplit::start_with(
        &opts,
        "[pools.base]\nfile = \"base.conf\"\n",
        &[("base.conf", &format!("{}\n", up.line("")))],
    )
}

/// `server.keepalive_timeout` is kept by graysplit's client stream wrapper, not Pingora's
/// per-request timer: an idle keep-alive connection is closed (no answer, a plain close) once
/// the timeout passes after its last request, and a connection reused within it stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keepalive_connection_is_closed_after_keepalive_timeout() {
    let up = Upstream::start("base");
    let g = with_keepalive_timeout(&up, "2s");
    let mut s = connect_from(OTHER, g.listen).await;
    // Reused well within the timeout: the same connection answers every time.
    for _ in 0..3 {
        assert_eq!(keepalive_get(&mut s).await, "HTTP/1.1 200 OK");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(keepalive_get(&mut s).await, "HTTP/1.1 200 OK");
    let idle_from = std::time::Instant::now();
    let (rest, closed) = common::edge::read_until_closed(&mut s, Duration::from_secs(30)).await;
    assert!(closed, "the idle connection was closed");
    assert!(rest.is_empty(), "closed without an answer: {rest:?}");
    // A lower bound only: a busy machine can make the close late, never early.
    assert!(
        idle_from.elapsed() >= Duration::from_millis(1900),
        "closed after {:?} idle, before keepalive_timeout",
        idle_from.elapsed()
    );
    eventually(
        Duration::from_secs(5),
        "the connection to be given back",
        || async { (metric(&g, "graysplit_client_connections").await == 0.0).then_some(()) },
    )
    .await;
}

/// `keepalive_timeout = "0s"` is nginx's "keep-alive off": the answer says `Connection: close`
/// and the connection is closed after it, though the client asked to keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_timeout_zero_turns_keep_alive_off() {
    let up = Upstream::start("base");
    let g = with_keepalive_timeout(&up, "0s");
    let mut s = connect_from(OTHER, g.listen).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: keep-alive\r\n\r\n")
        .await
        .expect("send");
    let (got, closed) = common::edge::read_until_closed(&mut s, Duration::from_secs(30)).await;
    assert!(closed, "the connection was closed after its answer");
    let text = String::from_utf8_lossy(&got);
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 200"), "answered: {head}");
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case("connection: close")),
        "the answer says the connection closes: {head}"
    );
}

/// Opens `n` idle connections from `from` and waits until graysplit holds `total` in all.
async fn hold(g: &Graysplit, from: [u8; 4], n: usize, total: f64) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(connect_from(from, g.listen).await);
    }
    eventually(
        Duration::from_secs(5),
        "the connections to be counted",
        || async { (metric(g, "graysplit_client_connections").await == total).then_some(()) },
    )
    .await;
    held
}

/// A request on a fresh connection from `from`: `Some(status line)` or `None` when the
/// connection was closed without an answer.
async fn try_get(g: &Graysplit, from: [u8; 4]) -> Option<String> {
    let mut s = connect_from(from, g.listen).await;
    let (got, closed) = raw_get(&mut s).await;
    assert!(closed, "an answer or a close, never a hang");
    let text = String::from_utf8_lossy(&got).into_owned();
    text.lines().next().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_limit_are_closed_at_once() {
    let up = Upstream::start("base");
    let g = start(
        "max_connections_per_ip = 2\nclient_header_timeout = \"30s\"",
        &up.line(""),
    );
    let mut held = hold(&g, UNTRUSTED, 2, 2.0).await;
    let refused = AtomicUsize::new(0);
    assert_eq!(try_get(&g, UNTRUSTED).await, None, "a third from 127.0.0.2");
    refused.fetch_add(1, Ordering::Relaxed);
    // Other addresses, and a trusted proxy (exempt: it carries many clients), are served.
    assert_eq!(try_get(&g, OTHER).await.as_deref(), Some("HTTP/1.1 200 OK"));
    let proxies = hold(&g, TRUSTED, 3, 5.0).await;
    assert_eq!(
        try_get(&g, TRUSTED).await.as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    assert_eq!(
        metric(&g, &limit_hits("max_connections_per_ip")).await,
        refused.load(Ordering::Relaxed) as f64
    );
    // One of the two closes: 127.0.0.2 may connect again.
    held.pop();
    eventually(Duration::from_secs(5), "a place for 127.0.0.2", || async {
        match try_get(&g, UNTRUSTED).await {
            Some(status) => Some(status),
            None => {
                refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    })
    .await;
    assert_eq!(
        metric(&g, &limit_hits("max_connections_per_ip")).await,
        refused.load(Ordering::Relaxed) as f64,
        "every refusal counted, nothing else"
    );
    drop(proxies);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_closed_at_once() {
    let up = Upstream::start("base");
    let g = start(
        "max_connections = 3\nclient_header_timeout = \"30s\"",
        &up.line(""),
    );
    let mut held = hold(&g, TRUSTED, 3, 3.0).await;
    assert_eq!(try_get(&g, OTHER).await, None, "a fourth connection");
    assert_eq!(metric(&g, &limit_hits("max_connections")).await, 1.0);
    held.pop();
    eventually(Duration::from_secs(5), "a free place", || async {
        try_get(&g, OTHER).await.filter(|s| s == "HTTP/1.1 200 OK")
    })
    .await;
    assert!(metric(&g, &limit_hits("max_connections")).await >= 1.0);
    // Every place is given back when the clients go.
    drop(held);
    eventually(Duration::from_secs(5), "no connection left", || async {
        (metric(&g, "graysplit_client_connections").await <= 1.0).then_some(())
    })
    .await;
}

/// An upstream that reads the whole request body (Content-Length or chunked) before it
/// answers `200` with the byte count — a real backend, unlike the static server's early 405.
struct BodyUpstream {
    addr: SocketAddr,
    bodies: Arc<std::sync::Mutex<Vec<usize>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl BodyUpstream {
    async fn start() -> BodyUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = bodies.clone();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let _ = Self::serve(s, seen).await;
                });
            }
        });
        BodyUpstream {
            addr,
            bodies,
            _task: task,
        }
    }

    async fn serve(
        s: tokio::net::TcpStream,
        seen: Arc<std::sync::Mutex<Vec<usize>>>,
    ) -> std::io::Result<()> {
        use tokio::io::AsyncBufReadExt;
        let mut r = tokio::io::BufReader::new(s);
        loop {
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == "\r\n" {
                    break;
                }
                head.push(line.to_ascii_lowercase());
            }
            let length = head.iter().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|v| v.trim().parse::<usize>().ok())
            });
            let chunked = head
                .iter()
                .any(|l| l.contains("transfer-encoding: chunked"));
            let mut n = 0;
            if let Some(len) = length {
                let mut body = vec![0u8; len];
                r.read_exact(&mut body).await?;
                n = len;
            } else if chunked {
                loop {
                    let mut size = String::new();
                    r.read_line(&mut size).await?;
                    let len = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                    let mut chunk = vec![0u8; len + 2];
                    r.read_exact(&mut chunk).await?;
                    if len == 0 {
                        break;
                    }
                    n += len;
                }
            }
            if !head.first().is_some_and(|l| l.starts_with("head ")) {
                seen.lock().unwrap().push(n);
            }
            let body = format!("got {n}\n");
            r.get_mut()
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await?;
        }
    }

    fn bodies(&self) -> Vec<usize> {
        self.bodies.lock().unwrap().clone()
    }
}

/// A POST on a fresh connection: (status line, body) of the answer.
async fn post(g: &Graysplit, head: &str, body: &[u8]) -> (String, String) {
    let mut s = connect_from(UNTRUSTED, g.listen).await;
    let mut req = format!("POST /upload HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{head}\r\n")
        .into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).await.unwrap();
    let (got, closed) = common::edge::read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "answered and closed");
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// `n` bytes as 100-byte chunks, with the last chunk.
fn chunked(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..n / 100 {
        out.extend_from_slice(b"64\r\n");
        out.extend_from_slice(&[b'x'; 100]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_client_max_body_size_get_413_declared_or_streamed() {
    let up = BodyUpstream::start().await;
    let g = start(
        "client_max_body_size = \"1k\"",
        &format!("server {};", up.addr),
    );
    let (status, _) = post(&g, "Content-Length: 2000\r\n", &[b'x'; 2000]).await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    assert_eq!(up.bodies(), Vec::<usize>::new(), "nothing was proxied");

    let (status, body) = post(&g, "Content-Length: 500\r\n", &[b'x'; 500]).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "got 500\n")
    );
    let (status, body) = post(&g, "Content-Length: 1024\r\n", &[b'x'; 1024]).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "got 1024\n"),
        "exactly the limit"
    );

    // No Content-Length: counted as it streams, refused once past the limit.
    let te = "Transfer-Encoding: chunked\r\n";
    let (status, body) = post(&g, te, &chunked(500)).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "got 500\n")
    );
    let (status, _) = post(&g, te, &chunked(3000)).await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    assert_eq!(
        up.bodies(),
        vec![500, 1024, 500],
        "the large stream never completed upstream"
    );

    assert_eq!(metric(&g, &limit_hits("client_max_body_size")).await, 2.0);
    assert!(
        !g.log().contains("ERROR"),
        "a refused body is the client's doing, not an error:\n{}",
        g.log()
    );
}

/// Sends `raw` whole on a new connection and returns the status lines of what came back, and
/// whether each answer came from the upstream (graysplit's decision header is on it).
async fn statuses(g: &Graysplit, raw: &[u8]) -> Vec<(String, bool)> {
    let mut s = connect_from(UNTRUSTED, g.listen).await;
    // The whole head is written even when it is refused early: the refusal lingers, reading
    // and dropping the rest, so the answer is not lost to a reset.
    s.write_all(raw).await.expect("the whole request is taken");
    let (got, closed) = common::edge::read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "answered and closed");
    let text = String::from_utf8_lossy(&got).into_owned();
    text.split("HTTP/1.1 ")
        .skip(1)
        .map(|answer| {
            let status = answer.lines().next().unwrap_or("").to_string();
            (status, answer.contains("x-graysplit-pool"))
        })
        .collect()
}

/// One whole answer (its head and `Content-Length` bytes of body) off a kept-alive connection.
async fn read_one_answer(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            if body.len() >= len {
                return got;
            }
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

fn head(path: &str, headers: &[String], close: bool) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    if close {
        r.push_str("Connection: close\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

fn header(name: &str, line_len: usize) -> String {
    let prefix = format!("{name}: ");
    format!("{prefix}{}", "a".repeat(line_len - prefix.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_over_large_client_header_buffers_get_414_or_431_and_are_counted() {
    let up = Upstream::start("base");
    // The shipped default, nginx's `4 8k`.
    let g = start("", &up.line(""));
    let ok = ("200 OK".to_string(), true);
    let too_large = ("431 Request Header Fields Too Large".to_string(), false);

    // An 8,000-byte header line and a 7,000-byte URI fit; 9,000 bytes do not.
    assert_eq!(
        statuses(&g, &head("/", &[header("X-Big", 8000)], true)).await,
        vec![ok.clone()]
    );
    let uri = format!("/?q={}", "a".repeat(7000));
    assert_eq!(statuses(&g, &head(&uri, &[], true)).await, vec![ok.clone()]);
    assert_eq!(
        statuses(&g, &head("/", &[header("X-Big", 9000)], true)).await,
        vec![too_large.clone()]
    );
    let uri = format!("/?q={}", "a".repeat(9000));
    assert_eq!(
        statuses(&g, &head(&uri, &[], true)).await,
        vec![("414 URI Too Long".to_string(), false)]
    );
    // Five lines of 7,000 bytes: each fits a buffer, all of them not the four.
    let five: Vec<String> = (0..5).map(|i| header(&format!("X-{i}"), 7000)).collect();
    assert_eq!(
        statuses(&g, &head("/", &five, true)).await,
        vec![too_large.clone()]
    );
    // 2,000 forged pins in one Cookie (about 150 KB): refused before a byte of it is parsed.
    let sig = "A".repeat(43);
    let pins: Vec<String> = (0..2000)
        .map(|i| format!("graysplit=v1.gray.g-{i}.1700000000.{sig}"))
        .collect();
    let cookie = format!("Cookie: {}", pins.join("; "));
    assert!(cookie.len() > 140_000);
    assert_eq!(
        statuses(&g, &head("/", &[cookie], true)).await,
        vec![too_large.clone()]
    );
    // On a keep-alive connection each head is measured on its own: a normal request, then
    // (once it is answered) one too large.
    let mut s = connect_from(UNTRUSTED, g.listen).await;
    s.write_all(&head("/", &[header("X-Big", 6000)], false))
        .await
        .unwrap();
    let first = read_one_answer(&mut s).await;
    assert!(first.starts_with(b"HTTP/1.1 200 OK\r\n"), "{first:?}");
    s.write_all(&head("/", &[header("X-Big", 20_000)], true))
        .await
        .unwrap();
    let (second, closed) = common::edge::read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed);
    assert!(
        second.starts_with(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{:?}",
        String::from_utf8_lossy(&second)
    );

    assert_eq!(
        metric(&g, &limit_hits("large_client_header_buffers")).await,
        5.0
    );
    assert_eq!(
        statuses(&g, &head("/", &[], true)).await,
        vec![ok.clone()],
        "still serving"
    );

    // A larger setting takes larger heads, and still refuses past it.
    let g = start("large_client_header_buffers = \"2 16k\"", &up.line(""));
    assert_eq!(
        statuses(&g, &head("/", &[header("X-Big", 15_000)], true)).await,
        vec![ok]
    );
    assert_eq!(
        statuses(&g, &head("/", &[header("X-Big", 17_000)], true)).await,
        vec![too_large]
    );
}
