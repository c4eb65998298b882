//! Long-lived requests are not server failures (issue 12, point 6): a real WebSocket upgrade
//! through graysplit idles past the pool's `read_timeout` on a `[[routes]]` entry with its own
//! timeout; without it the connection ends at the pool's timeout but the server is neither
//! ejected nor retried; a long-poll GET under such a route reaches the upstream exactly once.
//!
//! The upstreams are hyper servers that answer health checks and plain GETs, upgrade `/ws/…`
//! and `/plain-ws/…` to WebSocket echo (tokio-tungstenite on hyper's upgraded connection), and
//! hold `/poll/…` and `/slow/…` for [`HOLD`] before answering, as a long-poll API does.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use common::proc::Graysplit;
use common::server_thread::ServerThread;
use common::{client, eventually, get_json};

/// How long `/poll/` and `/slow/` hold a request: three times the pool's read_timeout.
const HOLD: Duration = Duration::from_millis(1500);
/// The pool's read_timeout in these tests.
const POOL_READ_TIMEOUT: &str = "500ms";

#[derive(Default)]
struct Counts {
    polls: AtomicU64,
    slow: AtomicU64,
    gets: AtomicU64,
    sockets: AtomicU64,
}

/// A frontend server that also speaks WebSocket and long poll.
struct LongServer {
    addr: SocketAddr,
    counts: Arc<Counts>,
    _server: ServerThread,
}

impl LongServer {
    fn start() -> LongServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        let server = ServerThread::spawn(move || async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counts = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, addr, counts.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        LongServer {
            addr,
            counts,
            _server: server,
        }
    }

    fn line(&self) -> String {
        format!("server {} max_fails=1 fail_timeout=30s;\n", self.addr)
    }
}

fn text(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn answer(
    mut req: Request<Incoming>,
    me: SocketAddr,
    counts: Arc<Counts>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let upgrade = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if upgrade && (path.starts_with("/ws/") || path.starts_with("/plain-ws/")) {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return Ok(text(400, "no key\n".into()));
        };
        counts.sockets.fetch_add(1, Ordering::Relaxed);
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Text(t) = msg {
                    let reply = format!("{me}: {}", t.as_str());
                    if ws.send(Message::text(reply)).await.is_err() {
                        return;
                    }
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let resp = Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
        return Ok(resp);
    }
    if path.starts_with("/poll/") || path.starts_with("/slow/") {
        let counter = if path.starts_with("/poll/") {
            &counts.polls
        } else {
            &counts.slow
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(HOLD).await;
        return Ok(text(200, format!("news from {me}\n")));
    }
    if req.method() == hyper::Method::GET {
        counts.gets.fetch_add(1, Ordering::Relaxed);
    }
    Ok(text(200, format!("{me}\n")))
}

/// Two such servers in base; the pool's read_timeout is short, `/ws/` and `/poll/` have their
/// own (no pool: the decided pool, with the route's timeout).
fn setup() -> (Graysplit, LongServer, LongServer) {
    let (a, b) = (LongServer::start(), LongServer::start());
    let toml = format!(
        "[health]\ninterval = \"100ms\"\ntimeout = \"1s\"\n\
         [upstream]\nread_timeout = \"{POOL_READ_TIMEOUT}\"\n\
         [[routes]]\nprefix = \"/ws/\"\nread_timeout = \"30s\"\n\
         [[routes]]\nprefix = \"/poll/\"\nread_timeout = \"30s\"\n\
         [pools.base]\nfile = \"base.conf\"\n[pools.gray]\nfile = \"gray.conf\"\n"
    );
    let g = Graysplit::start(
        &toml,
        &[
            ("base.conf", &format!("{}{}", a.line(), b.line())),
            ("gray.conf", ""),
        ],
    );
    (g, a, b)
}

type Socket = WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket through graysplit to `path`.
async fn open(g: &Graysplit, path: &str) -> Socket {
    let tcp = tokio::net::TcpStream::connect(g.listen)
        .await
        .expect("connect");
    let url = format!("ws://{}{path}", g.listen);
    let (ws, resp) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("websocket handshake through graysplit");
    assert_eq!(resp.status(), 101);
    ws
}

/// Sends `msg` and returns the echo (`<server>: <msg>`), or why there is none.
async fn echo(ws: &mut Socket, msg: &str) -> Result<String, String> {
    ws.send(Message::text(msg))
        .await
        .map_err(|e| format!("send: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => Ok(t.as_str().to_string()),
        Ok(other) => Err(format!("no echo: {other:?}")),
        Err(_) => Err("no echo within 5 s".into()),
    }
}

async fn metric(g: &Graysplit, series: &str) -> f64 {
    let text = client()
        .get(g.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    graysplit::metrics::text_format::parse(&text)
        .expect("prometheus text")
        .into_iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| v)
}

/// Both servers are up on `/status` and both answer GETs through graysplit.
async fn both_serve(g: &Graysplit, a: &LongServer, b: &LongServer) {
    let v = get_json(g.admin_url("/status?format=json&status=down")).await;
    assert_eq!(v["servers"]["total"], 0, "nothing ejected or down: {v}");
    let before = (
        a.counts.gets.load(Ordering::Relaxed),
        b.counts.gets.load(Ordering::Relaxed),
    );
    let c = client();
    for _ in 0..6 {
        let r = c.get(g.url("/")).send().await.expect("request");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
    }
    assert_eq!(a.counts.gets.load(Ordering::Relaxed) - before.0, 3);
    assert_eq!(b.counts.gets.load(Ordering::Relaxed) - before.1, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_on_a_route_outlives_the_pools_read_timeout() {
    let (g, a, b) = setup();
    let mut ws = open(&g, "/ws/chat").await;
    let first = echo(&mut ws, "hello").await.expect("echo");
    // Idle for three times the pool's read_timeout: the route's 30 s holds the connection.
    tokio::time::sleep(HOLD).await;
    let again = echo(&mut ws, "still there?")
        .await
        .expect("echo after idling");
    let server = |reply: &str| reply.split_once(": ").map(|(s, _)| s.to_string());
    assert_eq!(server(&first), server(&again), "the same connection");
    assert!(again.ends_with("still there?"));
    assert_eq!(
        metric(
            &g,
            "graysplit_passive_failures_total{kind=\"error\",pool=\"base\"}"
        )
        .await,
        0.0
    );
    both_serve(&g, &a, &b).await;
    let _ = ws.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_idle_past_the_timeout_ends_but_ejects_and_retries_nothing() {
    let (g, a, b) = setup();
    // No route for /plain-ws/: the pool's 500 ms read_timeout applies to the idle socket.
    let mut ws = open(&g, "/plain-ws/chat").await;
    echo(&mut ws, "hello").await.expect("echo");
    tokio::time::sleep(HOLD).await;
    assert!(
        echo(&mut ws, "anyone?").await.is_err(),
        "ended after read_timeout"
    );
    let sockets =
        a.counts.sockets.load(Ordering::Relaxed) + b.counts.sockets.load(Ordering::Relaxed);
    assert_eq!(
        sockets, 1,
        "the upgrade was never retried on the other server"
    );
    // The timeout came after the 101 went out: not the server's failure (max_fails=1 would
    // otherwise have ejected it).
    assert_eq!(
        metric(
            &g,
            "graysplit_passive_failures_total{kind=\"error\",pool=\"base\"}"
        )
        .await,
        0.0
    );
    assert_eq!(
        metric(&g, "graysplit_passive_ejections_total{pool=\"base\"}").await,
        0.0
    );
    both_serve(&g, &a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_a_route_reaches_the_upstream_once() {
    let (g, a, b) = setup();
    let c = client();
    let r = c.get(g.url("/poll/news")).send().await.expect("long poll");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("body").starts_with("news from "));
    let polls = a.counts.polls.load(Ordering::Relaxed) + b.counts.polls.load(Ordering::Relaxed);
    assert_eq!(
        polls, 1,
        "held past the pool's read_timeout, answered, never repeated"
    );
    both_serve(&g, &a, &b).await;

    // Without a route the same wait is the pool's read_timeout before any header: nginx's
    // `proxy_next_upstream timeout`, a GET is retried once on the other server, then 504.
    let r = c.get(g.url("/slow/news")).send().await.expect("slow");
    assert_eq!(r.status(), 504);
    let slow = a.counts.slow.load(Ordering::Relaxed) + b.counts.slow.load(Ordering::Relaxed);
    assert_eq!(slow, 2, "tries = 2");
    // Those two timeouts came before the header: each counted against its server (max_fails=1).
    eventually(
        Duration::from_secs(5),
        "both servers to be ejected",
        || async {
            (metric(&g, "graysplit_passive_ejections_total{pool=\"base\"}").await == 2.0)
                .then_some(())
        },
    )
    .await;
}
