//! Clients as the public edge sees them: from another loopback address (Linux routes all of
//! 127/8 to `lo`, so 127.0.0.2 is a peer outside the shipped `trusted_proxies`), raw sockets
//! for clients that misbehave, and reading one sample from `/metrics`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::proc::Graysplit;

/// A peer that is not a trusted proxy with the shipped defaults.
pub const UNTRUSTED: [u8; 4] = [127, 0, 0, 2];
/// Another one (a second client address).
pub const OTHER: [u8; 4] = [127, 0, 0, 3];
/// The shipped `trusted_proxies` include it.
pub const TRUSTED: [u8; 4] = [127, 0, 0, 1];

/// An HTTP client whose connections come from `from`.
pub fn client_from(from: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(from))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client")
}

/// A TCP connection to `to` from `from`.
pub async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind a loopback address");
    socket.connect(to).await.expect("connect")
}

/// What a raw connection got back: everything until the server closed it (or `wait` passed).
pub async fn read_until_closed(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(wait, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

/// Sends a plain GET on a raw connection and returns what came back until the close.
pub async fn raw_get(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let _ = s
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await;
    read_until_closed(s, Duration::from_secs(10)).await
}

/// One sample of `/metrics` (`name{labels}` exactly as rendered), 0 when absent.
pub async fn metric(g: &Graysplit, series: &str) -> f64 {
    let text = super::client()
        .get(g.admin_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    graysplit::metrics::text_format::parse(&text)
        .expect("valid Prometheus text")
        .into_iter()
        .find(|(n, _)| n == series)
        .map_or(0.0, |(_, v)| v)
}
