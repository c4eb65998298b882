//! Per-request state carried through Pingora's phases.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::gray::Client;
use crate::pin::Pin;
use crate::upstream::pool::Pool;
use crate::upstream::server::Server;

/// Why a request went to its pool; appears in the access log and the debug header.
pub type Reason = &'static str;

#[derive(Debug)]
pub struct RequestCtx {
    pub started: Instant,
    /// Canonical address of the direct peer.
    pub peer_ip: Option<IpAddr>,
    /// The pool chosen once in `request_filter` (never re-decided on retries).
    pub pool: Option<Arc<Pool>>,
    pub reason: Reason,
    /// The client as the gray decision saw it (trusted proxies honoured).
    pub client: Option<Client>,
    /// The pool the decision chose (`base`, `gray`, a rule's pool): picks the headers sent
    /// upstream, even when a pass-through route sends the request to another pool.
    pub decided: Option<std::sync::Arc<str>>,
    /// Servers already attempted for this request, so a retry picks another.
    pub tried: Vec<SocketAddr>,
    /// The server of the current (last) attempt.
    pub server: Option<Arc<Server>>,
    /// Start of the first upstream attempt (for the upstream response time).
    pub upstream_started: Option<Instant>,
    /// The current attempt already counted as a passive failure (so its end is no success).
    pub attempt_failed: bool,
    /// A navigation (re-decides, may issue the pin) rather than an asset.
    pub page: bool,
    /// The request's valid pin cookie, if any.
    pub pin: Option<Pin>,
    /// The asset follows its pin: selection wants the pin's build.
    pub sticky: bool,
    /// A pass-through route chose the pool (never pinned, never falls back).
    pub routed: bool,
    /// The current attempt is the one asset-miss retry on another build.
    pub miss_retry: bool,
    /// What happened to the pin on this response (`new`, `changed`, …), for the access log.
    pub pin_event: Option<&'static str>,
    /// Where the user id came from, whether the peer is trusted (`gray::identity`).
    pub identity: crate::gray::identity::Identity,
    /// Request body bytes seen so far (`limits.client_max_body_size`).
    pub body: crate::limits::body::BodyCount,
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            peer_ip: None,
            pool: None,
            reason: "default",
            client: None,
            decided: None,
            tried: Vec::new(),
            server: None,
            upstream_started: None,
            attempt_failed: false,
            page: false,
            pin: None,
            sticky: false,
            routed: false,
            miss_retry: false,
            pin_event: None,
            identity: Default::default(),
            body: Default::default(),
        }
    }
}
