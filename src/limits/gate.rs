//! The gate in front of the proxy app: every client connection passes it once, before HTTP.
//!
//! It wraps any Pingora [`ServerApp`] (the proxy, already wrapped by `lifecycle::Lingering`),
//! so it sits where Pingora hands over an accepted (and, with TLS, handshaken) connection, on
//! every listener of the service it is given to. Per connection it:
//!
//! 1. takes a place in [`ConnCounter`] (`max_connections`, `max_connections_per_ip`) or closes
//!    the connection at once, before reading a byte: a connection over the limit costs an
//!    accept and a close, nothing more;
//! 2. wraps an HTTP/1 stream in [`HeadDeadline`] (`client_header_timeout`,
//!    `large_client_header_buffers`, `keepalive_timeout`);
//! 3. runs the wrapped app, and gives the place back when the connection ends.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;

use super::conn_count::{ConnCounter, ConnGuard, Refused};
use super::head_deadline::{Cut, HeadDeadline, OnCut};
use super::Limits;
use crate::metrics::trust::{Limit, TrustMetrics};

/// A [`ServerApp`] behind the connection limits and the head deadline.
pub struct Gate<A> {
    pub app: Arc<A>,
    pub limits: Arc<Limits>,
    /// `server.keepalive_timeout`, which the HTTP/1 stream wrapper keeps.
    pub keepalive: Duration,
}

impl<A> Gate<A> {
    pub fn new(app: A, limits: Arc<Limits>, keepalive: Duration) -> Self {
        Self {
            app: Arc::new(app),
            limits,
            keepalive,
        }
    }
}

/// A connection's place and its share of the gauge, held for its life.
struct Open {
    _place: ConnGuard,
    metrics: Arc<TrustMetrics>,
}

impl Open {
    fn new(place: ConnGuard, metrics: Arc<TrustMetrics>) -> Self {
        metrics.connection_opened();
        Self {
            _place: place,
            metrics,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.connection_closed();
    }
}

/// The client's address as the socket knows it (canonical: IPv4-mapped IPv6 as IPv4).
fn peer_ip(stream: &Stream) -> Option<IpAddr> {
    let digest = stream.get_socket_digest()?;
    let addr = digest.peer_addr()?.as_inet()?;
    Some(crate::proxy::forwarded::canonical_ip(addr.ip()))
}

#[async_trait]
impl<A> ServerApp for Gate<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = &self.limits;
        let ip = peer_ip(&stream);
        let exempt = ip.is_some_and(|ip| limits.exempt_from_per_ip(ip));
        let place = match ConnCounter::try_acquire(&limits.connections, ip, exempt) {
            Ok(guard) => guard,
            Err(why) => {
                limits.refused(why);
                // Dropping the stream closes it; nothing was read, nothing is answered.
                return None;
            }
        };
        // Given back however the connection ends (a panicking task included).
        let _open = Open::new(place, limits.metrics.clone());
        // An HTTP/2 connection carries many requests at once, so one head deadline per
        // connection has no meaning there (and h2c is off: plain connections are HTTP/1).
        let http1 = !matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let mut stream: Stream = if http1 {
            let metrics = limits.metrics.clone();
            let on_cut: OnCut = Arc::new(move |cut| {
                metrics.limit_hit(match cut {
                    Cut::Timeout => Limit::ClientHeaderTimeout,
                    Cut::TooLarge(_) => Limit::LargeClientHeaderBuffers,
                })
            });
            Box::new(HeadDeadline::new(
                stream,
                limits.settings.client_header_timeout,
                limits.settings.header_buffers.limits(),
                on_cut,
                self.keepalive,
            ))
        } else {
            stream
        };
        // Pingora's HTTP app keeps a connection for all its requests and returns `None`; any
        // stream it does return stays inside this gate (and keeps its place) until it ends.
        while let Some(again) = self.app.process_new(stream, shutdown).await {
            stream = again;
        }
        None
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

impl Limits {
    fn refused(&self, why: Refused) {
        self.metrics.limit_hit(match why {
            Refused::Total => Limit::MaxConnections,
            Refused::PerIp => Limit::MaxConnectionsPerIp,
        });
        let log = match why {
            Refused::Total => &self.refusal_log[0],
            Refused::PerIp => &self.refusal_log[1],
        };
        log.note(|n| {
            log::warn!(
                "limits: closed {n} connection(s) over {} in the last {}s (graysplit_client_limit_hits_total)",
                match why {
                    Refused::Total => format!("max_connections = {}", self.max_connections),
                    Refused::PerIp => format!(
                        "max_connections_per_ip = {}",
                        self.settings.max_connections_per_ip
                    ),
                },
                crate::rate_limited_log::PERIOD.as_secs()
            )
        });
    }
}
