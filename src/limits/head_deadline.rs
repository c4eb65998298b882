//! `client_header_timeout`: one deadline for the whole request head, not per read.
//!
//! Pingora reads the head before any proxy phase runs, and its own timeouts apply to each read
//! separately (60 s per read for a first request, the keep-alive timeout for later ones), so a
//! client that sends one byte every few seconds (slowloris) keeps a connection and its task for
//! as long as it likes. nginx's `client_header_timeout` is a single timer for the whole head;
//! this is the same, one layer below HTTP: [`HeadDeadline`] wraps the client's stream and fails
//! its reads once the deadline passes while a head is being read.
//!
//! The stream cannot tell where a head ends (the body follows it), so the request path tells it:
//! [`head_read`] from the first proxy phase (the head is in), [`request_done`] from the last (the
//! next bytes start the next head). The states:
//!
//! ```text
//! accept ──► ARMED (deadline = accept + timeout) ──head_read──► IN_REQUEST ──request_done──► BETWEEN
//!              ▲                                                                              │
//!              └───────────── first byte of the next head (deadline = now + timeout) ─────────┘
//! ```
//!
//! As with nginx, the idle wait before a keep-alive request is not part of it (that is the
//! keep-alive timeout); the first request's deadline runs from accept. When the deadline passes
//! after part of a head arrived, the client gets `408 Request Timeout` and the connection is
//! closed; a connection that sent nothing is just closed. HTTP/2 connections are not wrapped
//! (their streams share one connection; see [`super::gate`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const ARMED: u8 = 0;
const IN_REQUEST: u8 = 1;
const BETWEEN: u8 = 2;

/// Sent when the deadline cuts a head short (Apache and HAProxy do the same; nginx closes
/// silently). `Connection: close` because the rest of that head is never read.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// Called once per connection the deadline cut after part of a head had arrived.
pub type OnCut = Arc<dyn Fn() + Send + Sync>;

/// The client stream with a head deadline. Everything but reads is the wrapped stream's.
pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    state: AtomicU8,
    /// Bytes read since the deadline was armed: 0 means an idle connection, not a slow head.
    read_since_armed: usize,
    cut: bool,
    on_cut: OnCut,
}

impl HeadDeadline {
    /// Wraps a just-accepted connection; its first head must be complete within `timeout`.
    pub fn new(inner: Stream, timeout: Duration, on_cut: OnCut) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            state: AtomicU8::new(ARMED),
            read_since_armed: 0,
            cut: false,
            on_cut,
        }
    }

    /// The head is in: the deadline stops (the body has nginx's per-read timeouts, Pingora's).
    pub fn head_read(&self) {
        self.state.store(IN_REQUEST, Ordering::Relaxed);
    }

    /// The request is over: the next byte that arrives starts the next head's deadline.
    pub fn request_done(&self) {
        self.state.store(BETWEEN, Ordering::Relaxed);
    }

    fn timed_out(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "client_header_timeout ({:?}): the request head was not complete in time",
                self.timeout
            ),
        )
    }

    /// The deadline passed: answer 408 if part of a head came (best effort: one non-blocking
    /// write, which a fresh socket's send buffer takes), and fail every read from now on.
    fn cut(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.cut = true;
        if self.read_since_armed > 0 {
            (self.on_cut)();
            let _ = Pin::new(&mut self.inner).poll_write(cx, REQUEST_TIMEOUT);
            let _ = Pin::new(&mut self.inner).poll_flush(cx);
        }
        Poll::Ready(Err(self.timed_out()))
    }
}

impl std::fmt::Debug for HeadDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadDeadline")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish()
    }
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.cut {
            return Poll::Ready(Err(this.timed_out()));
        }
        // Polling the timer also registers this task to wake when it fires, so a client that
        // goes quiet is cut at the deadline, not at its next byte.
        if this.state.load(Ordering::Relaxed) == ARMED && this.deadline.as_mut().poll(cx).is_ready()
        {
            return this.cut(cx);
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            match this.state.load(Ordering::Relaxed) {
                BETWEEN => {
                    this.state.store(ARMED, Ordering::Relaxed);
                    this.deadline.as_mut().reset(Instant::now() + this.timeout);
                    this.read_since_armed = n;
                }
                ARMED => this.read_since_armed += n,
                _ => {}
            }
        }
        result
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// The deadline of the connection a request came on, if it has one (HTTP/1 through the gate).
fn of(session: &pingora::protocols::http::ServerSession) -> Option<&HeadDeadline> {
    session.stream()?.as_any().downcast_ref::<HeadDeadline>()
}

/// From the first proxy phase: this request's head is complete.
pub fn head_read(session: &pingora::protocols::http::ServerSession) {
    if let Some(d) = of(session) {
        d.head_read();
    }
}

/// From the last proxy phase: the connection waits for its next request.
pub fn request_done(session: &pingora::protocols::http::ServerSession) {
    if let Some(d) = of(session) {
        d.request_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn wrapped(timeout: Duration) -> (HeadDeadline, DuplexStream, Arc<AtomicUsize>) {
        let (ours, theirs) = tokio::io::duplex(1024);
        let cuts = Arc::new(AtomicUsize::new(0));
        let counted = cuts.clone();
        let on_cut: OnCut = Arc::new(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        (
            HeadDeadline::new(Box::new(ours), timeout, on_cut),
            theirs,
            cuts,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_is_cut_at_the_deadline_with_a_408() {
        let (mut s, mut client, cuts) = wrapped(Duration::from_secs(10));
        let mut buf = [0u8; 64];
        // One byte a second: each read succeeds, but the total is capped.
        let mut got = 0;
        let err = loop {
            client.write_all(b"G").await.unwrap();
            match s.read(&mut buf).await {
                Ok(n) => got += n,
                Err(e) => break e,
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        };
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(got, 10, "bytes read before the deadline (paused clock)");
        assert_eq!(cuts.load(Ordering::Relaxed), 1);
        let mut answer = vec![0u8; REQUEST_TIMEOUT.len()];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, REQUEST_TIMEOUT);
        assert!(s.read(&mut buf).await.is_err(), "stays cut");
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_client_is_cut_without_sending_more() {
        let (mut s, mut client, cuts) = wrapped(Duration::from_secs(5));
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).await.unwrap(), 16);
        // Nothing more arrives: the read waits, and the timer (not a byte) ends it.
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(cuts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_without_an_answer() {
        let (mut s, mut client, cuts) = wrapped(Duration::from_secs(5));
        let mut buf = [0u8; 64];
        assert!(s.read(&mut buf).await.is_err());
        assert_eq!(cuts.load(Ordering::Relaxed), 0, "not a slow head");
        drop(s);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "no 408 for a connection that sent nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn the_body_and_the_idle_wait_are_not_timed_and_the_next_head_is() {
        let (mut s, mut client, cuts) = wrapped(Duration::from_secs(5));
        let mut buf = [0u8; 64];
        client.write_all(b"POST / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 19);
        s.head_read();
        // A slow body: far past the head deadline, still read.
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(1)).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        }
        s.request_done();
        // Idle between requests for longer than the deadline: not cut.
        tokio::time::advance(Duration::from_secs(30)).await;
        client.write_all(b"GET").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 3);
        // The next head's deadline runs from its first byte.
        tokio::time::advance(Duration::from_secs(4)).await;
        client.write_all(b" /").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 2);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.read(&mut buf).await.is_err(), "5 s after its first byte");
        assert_eq!(cuts.load(Ordering::Relaxed), 1);
    }
}
