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
//!              ▲                                                    ▲                         │
//!              │                                                    └── whole head in one read┤
//!              └───────── first bytes of the next head, not all of it (deadline = now + timeout) ┘
//! ```
//!
//! A keep-alive head that arrives in one read (almost all of them) never arms the timer.
//!
//! As with nginx, the idle wait before a keep-alive request is not part of it; the first
//! request's deadline runs from accept. The idle wait has its own limit, `keepalive_timeout`,
//! kept here too with the same timer: Pingora would otherwise arm one of its timers for every
//! request's head read (a clock read, a lock, a map insert and a notifier each time, about 2k
//! instructions per request: bench/README.md "Keep-alive timer"). Here a request costs one clock
//! read when the connection goes idle; the timer moves only when it fires early (it still held
//! an earlier head's deadline) or holds a later one. An idle connection past the timeout reads
//! as closed by the client, which Pingora ends quietly, as its own keep-alive timer does. When the deadline passes
//! after part of a head arrived, the client gets `408 Request Timeout` and the connection is
//! closed; a connection that sent nothing is just closed. HTTP/2 connections are not wrapped
//! (their streams share one connection; see [`super::gate`]; `tls.http2_max_header_list_size`
//! bounds their heads).
//!
//! The same wrapper enforces `large_client_header_buffers` ([`super::head_size`]) on the bytes
//! of each head as they arrive: a head over the limit is answered `414`/`431` and never reaches
//! Pingora's parser, and the connection lingers (reads and drops the rest for up to 5 s, as
//! nginx does) so that the answer is not lost to a reset.

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

use super::head_size::{HeadLimits, HeadScan, Oversize, Scan};

const ARMED: u8 = 0;
const IN_REQUEST: u8 = 1;
const BETWEEN: u8 = 2;

/// Sent when the deadline cuts a head short (Apache and HAProxy do the same; nginx closes
/// silently). `Connection: close` because the rest of that head is never read.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// After refusing a head that is too large, how long and how much more of it is read and
/// thrown away before the connection closes (nginx's lingering close, `lingering_timeout 5s`):
/// closing a socket with unread bytes makes the kernel send a reset, which can destroy the
/// answer before the client reads it.
const LINGER: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 1 << 20;

/// Why a connection's head was cut, for the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// `client_header_timeout`, after part of a head had arrived.
    Timeout,
    /// `large_client_header_buffers`.
    TooLarge(Oversize),
}

/// Called once per connection whose head was cut.
pub type OnCut = Arc<dyn Fn(Cut) + Send + Sync>;

/// How a cut connection ends its reads.
#[derive(Debug, Clone, Copy)]
enum Ended {
    TimedOut,
    /// `keepalive_timeout` passed between requests: every read is the end of the stream.
    Idle,
    /// The answer is sent; the rest of the head is being read and dropped.
    Lingering(Oversize),
    Refused(Oversize),
}

/// The client stream with a head deadline and a head size limit. Everything but reads is the
/// wrapped stream's.
pub struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    state: AtomicU8,
    /// The head being read, against `large_client_header_buffers`. It is reset whenever the
    /// deadline is armed, so "nothing fed" also means an idle connection, not a slow head.
    scan: HeadScan,
    lingered: usize,
    ended: Option<Ended>,
    on_cut: OnCut,
    /// `server.keepalive_timeout`: how long the connection may wait for its next head.
    keepalive: Duration,
    /// When the current idle wait ends; `None` while a request is in or before the first wait
    /// between requests has begun.
    idle_until: Option<Instant>,
}

impl HeadDeadline {
    /// Wraps a just-accepted connection; its first head must be complete within `timeout`, each
    /// head must keep to `limits`, and the wait between requests may last `keepalive`.
    pub fn new(
        inner: Stream,
        timeout: Duration,
        limits: HeadLimits,
        on_cut: OnCut,
        keepalive: Duration,
    ) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            state: AtomicU8::new(ARMED),
            scan: HeadScan::new(limits),
            lingered: 0,
            ended: None,
            on_cut,
            keepalive,
            idle_until: None,
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

    fn error(&self, ended: Ended) -> std::io::Error {
        match ended {
            Ended::TimedOut => std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "client_header_timeout ({:?}): the request head was not complete in time",
                    self.timeout
                ),
            ),
            // Never returned: an idle connection reads as closed.
            Ended::Idle => std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "keepalive_timeout: the connection was idle",
            ),
            Ended::Lingering(over) | Ended::Refused(over) => std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "large_client_header_buffers: {}",
                    match over {
                        Oversize::RequestLine => "the request line is too long",
                        Oversize::HeaderLine => "a header line is too long",
                        Oversize::Head => "the request head is too large",
                    }
                ),
            ),
        }
    }

    /// Best effort, one non-blocking write (which a connection that is not being answered has
    /// room for), then the write side is closed so the client sees the end of the answer.
    fn answer(&mut self, cx: &mut Context<'_>, response: &[u8], close: bool) {
        let _ = Pin::new(&mut self.inner).poll_write(cx, response);
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        if close {
            let _ = Pin::new(&mut self.inner).poll_shutdown(cx);
        }
    }

    /// The deadline passed: answer 408 if part of a head came, and fail every read from now on.
    fn cut(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.ended = Some(Ended::TimedOut);
        if !self.scan.is_empty() {
            (self.on_cut)(Cut::Timeout);
            self.answer(cx, REQUEST_TIMEOUT, false);
        }
        Poll::Ready(Err(self.error(Ended::TimedOut)))
    }

    /// The head broke `large_client_header_buffers`: answer 414 or 431, then linger.
    fn refuse(&mut self, over: Oversize, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        (self.on_cut)(Cut::TooLarge(over));
        self.answer(cx, over.response(), true);
        self.ended = Some(Ended::Lingering(over));
        self.deadline.as_mut().reset(Instant::now() + LINGER);
        self.linger(over, cx)
    }

    /// Reads and drops what the client still sends, until it closes, [`LINGER`] passes or
    /// [`LINGER_BYTES`] came; only then does the read fail (and Pingora close the connection).
    fn linger(&mut self, over: Oversize, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut scratch = [0u8; 16 * 1024];
        loop {
            let done = self.deadline.as_mut().poll(cx).is_ready() || {
                let mut rb = ReadBuf::new(&mut scratch);
                match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                        self.lingered += rb.filled().len();
                        self.lingered > LINGER_BYTES
                    }
                    Poll::Ready(_) => true,
                }
            };
            if done {
                self.ended = Some(Ended::Refused(over));
                return Poll::Ready(Err(self.error(Ended::Refused(over))));
            }
        }
    }
}

impl std::fmt::Debug for HeadDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadDeadline")
            .field("inner", &self.inner)
            .field("timeout", &self.timeout)
            .field("state", &self.state.load(Ordering::Relaxed))
            .field("ended", &self.ended)
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
        match this.ended {
            None => {}
            Some(Ended::Lingering(over)) => return this.linger(over, cx),
            Some(Ended::Idle) => return Poll::Ready(Ok(())),
            Some(ended) => return Poll::Ready(Err(this.error(ended))),
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
            let scan = match this.state.load(Ordering::Relaxed) {
                BETWEEN => {
                    this.idle_until = None;
                    // The next head's first bytes. The deadline is armed only if they are not
                    // the whole head (below): most heads arrive in one read, and arming a timer
                    // for each of them costs a clock read and a timer-wheel move per request.
                    this.scan.reset();
                    match this.scan.feed(&buf.filled()[before..]) {
                        Scan::Partial => {
                            this.state.store(ARMED, Ordering::Relaxed);
                            // Polled (so registered) at the next read, which Pingora makes
                            // since the head is not complete.
                            this.deadline.as_mut().reset(Instant::now() + this.timeout);
                            Scan::Partial
                        }
                        scan => scan,
                    }
                }
                ARMED => this.scan.feed(&buf.filled()[before..]),
                // The body, or requests pipelined behind this one (Pingora's own 1 MiB cap
                // is what bounds a pipelined head).
                _ => Scan::Partial,
            };
            match scan {
                Scan::Partial => {}
                // The head is in: the deadline stops here (the first proxy phase says so
                // again, for heads Pingora had read before this stream saw them).
                Scan::Complete => this.state.store(IN_REQUEST, Ordering::Relaxed),
                Scan::TooLarge(over) => {
                    // Pingora never sees these bytes: the head is refused, not parsed.
                    buf.set_filled(before);
                    return this.refuse(over, cx);
                }
            }
        } else if result.is_pending() && this.state.load(Ordering::Relaxed) == BETWEEN {
            return this.idle(cx);
        }
        result
    }
}

impl HeadDeadline {
    /// Nothing to read between two requests: wait, for `keepalive` at most (nginx's
    /// `keepalive_timeout`), then read as closed. The inner read registered the task for the
    /// next byte; this registers it for the timer as well.
    fn idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let keepalive = self.keepalive;
        let until = *self
            .idle_until
            .get_or_insert_with(|| Instant::now() + keepalive);
        if self.deadline.deadline() > until {
            self.deadline.as_mut().reset(until);
        }
        loop {
            if self.deadline.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() >= until {
                self.ended = Some(Ended::Idle);
                return Poll::Ready(Ok(()));
            }
            // It held an earlier deadline (a previous head's): on to this wait's end.
            self.deadline.as_mut().reset(until);
        }
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

/// From the first proxy phase: this request's head is complete. `true` when the connection's
/// wait for its next request is timed here (`keepalive_timeout`), so Pingora need not time it.
pub fn head_read(session: &pingora::protocols::http::ServerSession) -> bool {
    match of(session) {
        Some(d) => {
            d.head_read();
            true
        }
        None => false,
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

    const LIMITS: HeadLimits = HeadLimits {
        line_max: 8192,
        head_max: 32768,
    };

    /// Limits small enough for a test to break with a few hundred bytes.
    const SMALL: HeadLimits = HeadLimits {
        line_max: 100,
        head_max: 1000,
    };

    /// Longer than any test waits, unless a test is about it.
    const KEEPALIVE: Duration = Duration::from_secs(3600);

    fn wrapped(timeout: Duration) -> (HeadDeadline, DuplexStream, Arc<AtomicUsize>) {
        let (s, client, cuts, _) = wrapped_with(timeout, LIMITS);
        (s, client, cuts)
    }

    type Cuts = Arc<std::sync::Mutex<Vec<Cut>>>;

    fn wrapped_with(
        timeout: Duration,
        limits: HeadLimits,
    ) -> (HeadDeadline, DuplexStream, Arc<AtomicUsize>, Cuts) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let cuts = Arc::new(AtomicUsize::new(0));
        let kinds: Cuts = Arc::default();
        let (counted, named) = (cuts.clone(), kinds.clone());
        let on_cut: OnCut = Arc::new(move |cut| {
            counted.fetch_add(1, Ordering::Relaxed);
            named.lock().unwrap().push(cut);
        });
        (
            HeadDeadline::new(Box::new(ours), timeout, limits, on_cut, KEEPALIVE),
            theirs,
            cuts,
            kinds,
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

    /// The client sends `head`, the wrapper reads it whole in one read, the proxy says it is in.
    async fn first_head(s: &mut HeadDeadline, client: &mut DuplexStream, head: &[u8]) {
        let mut buf = [0u8; 64];
        client.write_all(head).await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), head.len());
        s.head_read();
    }

    #[tokio::test(start_paused = true)]
    async fn a_next_head_that_comes_in_one_read_never_arms_the_timer() {
        let (mut s, mut client, cuts) = wrapped(Duration::from_secs(5));
        let mut buf = [0u8; 64];
        first_head(&mut s, &mut client, b"GET / HTTP/1.1\r\n\r\n").await;
        s.request_done();
        let first = s.deadline.deadline();
        tokio::time::advance(Duration::from_secs(30)).await;
        client.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 19);
        assert_eq!(
            s.deadline.deadline(),
            first,
            "the timer was not moved for it"
        );
        // Complete, so not timed: long after, the body (or the next request) still reads.
        tokio::time::advance(Duration::from_secs(30)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        assert_eq!(cuts.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_body_and_the_idle_wait_are_not_timed_and_the_next_head_is() {
        let (mut s, mut client, cuts) = wrapped(Duration::from_secs(5));
        let mut buf = [0u8; 64];
        first_head(&mut s, &mut client, b"POST / HTTP/1.1\r\n\r\n").await;
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

    fn wrapped_keepalive(timeout: Duration, keepalive: Duration) -> (HeadDeadline, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let on_cut: OnCut = Arc::new(|_| {});
        let s = HeadDeadline::new(Box::new(ours), timeout, LIMITS, on_cut, keepalive);
        (s, theirs)
    }

    /// One request on a connection: its head comes, the proxy answers, the request ends.
    async fn request(s: &mut HeadDeadline, client: &mut DuplexStream) {
        first_head(s, client, b"GET / HTTP/1.1\r\n\r\n").await;
        s.request_done();
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_reads_as_closed_at_keepalive_timeout_after_its_last_request() {
        // Both orders of the two timeouts: the timer then holds an earlier or a later deadline.
        for (header_timeout, keepalive) in [(5, 10), (60, 10)] {
            let keepalive = Duration::from_secs(keepalive);
            let (mut s, mut client) =
                wrapped_keepalive(Duration::from_secs(header_timeout), keepalive);
            let mut buf = [0u8; 64];
            // Requests 4 s apart for 20 s, twice the keep-alive timeout: never idle that long.
            for _ in 0..5 {
                request(&mut s, &mut client).await;
                let next = async {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    client.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
                };
                let (read, ()) = tokio::join!(s.read(&mut buf), next);
                assert_eq!(read.unwrap(), 19, "the next head, not the end");
                s.head_read();
                s.request_done();
            }
            let idle_from = Instant::now();
            // The paused clock jumps to the next timer: the read ends exactly at the timeout.
            assert_eq!(s.read(&mut buf).await.unwrap(), 0, "reads as closed");
            assert_eq!(
                idle_from.elapsed(),
                keepalive,
                "after {header_timeout} s heads"
            );
            assert_eq!(s.read(&mut buf).await.unwrap(), 0, "and stays closed");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_keepalive_timeout_does_not_cut_a_request_or_its_body() {
        let (mut s, mut client) = wrapped_keepalive(Duration::from_secs(5), Duration::from_secs(3));
        let mut buf = [0u8; 64];
        first_head(&mut s, &mut client, b"POST / HTTP/1.1\r\n\r\n").await;
        // A body read far past the keep-alive timeout: the request is not idle.
        tokio::time::advance(Duration::from_secs(30)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        s.request_done();
        let idle_from = Instant::now();
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
        assert_eq!(idle_from.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_too_large_is_answered_431_never_read_and_the_rest_is_drained() {
        let (mut s, mut client, cuts, kinds) = wrapped_with(Duration::from_secs(60), SMALL);
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: ".to_vec();
        head.extend_from_slice(&[b'c'; 20_000]);
        head.extend_from_slice(b"\r\n\r\n");
        let sender = tokio::spawn(async move {
            client.write_all(&head).await.unwrap();
            let mut answer = Vec::new();
            // The client reads the answer to its end (the write side is closed) ...
            client.read_to_end(&mut answer).await.unwrap();
            // ... and then closes, which ends the linger.
            drop(client);
            answer
        });
        let mut buf = vec![0u8; 4096];
        let mut seen = 0;
        let err = loop {
            match s.read(&mut buf).await {
                Ok(n) => seen += n,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert!(
            err.to_string().contains("a header line is too long"),
            "{err}"
        );
        assert!(seen <= 4096, "read {seen} bytes of the head past its limit");
        let answer = sender.await.unwrap();
        assert_eq!(answer, Oversize::HeaderLine.response());
        assert_eq!(cuts.load(Ordering::Relaxed), 1);
        assert_eq!(
            *kinds.lock().unwrap(),
            vec![Cut::TooLarge(Oversize::HeaderLine)]
        );
        assert!(s.read(&mut buf).await.is_err(), "stays refused");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_keeps_sending_is_dropped_after_the_linger() {
        let (mut s, mut client, cuts, _) = wrapped_with(Duration::from_secs(60), SMALL);
        client
            .write_all(b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let reading = tokio::spawn(async move { s.read(&mut buf).await.map_err(|e| e.kind()) });
        // The client never closes: the read fails when the linger is over, not before.
        tokio::time::advance(LINGER - Duration::from_millis(10)).await;
        client.write_all(b"more").await.unwrap();
        tokio::task::yield_now().await;
        assert!(!reading.is_finished(), "still lingering");
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(reading.await.unwrap(), Err(std::io::ErrorKind::InvalidData));
        assert_eq!(cuts.load(Ordering::Relaxed), 1);
        let mut answer = vec![0u8; Oversize::RequestLine.response().len()];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, Oversize::RequestLine.response());
    }

    #[tokio::test(start_paused = true)]
    async fn heads_within_the_limits_pass_and_each_head_is_measured_on_its_own() {
        let limits = HeadLimits {
            line_max: 100,
            head_max: 200,
        };
        let (mut s, mut client, cuts, _) = wrapped_with(Duration::from_secs(60), limits);
        let head = b"POST / HTTP/1.1\r\nA: 0123456789012345678901234567890123456789\r\n\r\n";
        let mut buf = vec![0u8; 4096];
        for _ in 0..10 {
            // Ten heads of 80 bytes: 800 in all on one connection, each within 200. A body
            // without line ends follows the head in the same read and is not counted.
            client.write_all(head).await.unwrap();
            client.write_all(&[b'x'; 500]).await.unwrap();
            let mut got = 0;
            while got < head.len() + 500 {
                got += s.read(&mut buf).await.unwrap();
            }
            s.request_done();
        }
        assert_eq!(cuts.load(Ordering::Relaxed), 0);
    }
}
