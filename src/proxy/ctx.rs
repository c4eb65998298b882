//! Per-request state carried through Pingora's phases.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use crate::gray::Client;
use crate::pin::Pin;
use crate::upstream::in_flight::InFlight;
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
    /// Servers already attempted for this request, so a retry picks another. Inline for the
    /// first attempts: most requests make one, and it should not cost an allocation.
    pub tried: smallvec::SmallVec<[SocketAddr; 2]>,
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
    /// The matching route's upstream timeouts (none: `[upstream]`'s).
    pub timeouts: crate::routes::RouteTimeouts,
    /// The current attempt is the one asset-miss retry on another build.
    pub miss_retry: bool,
    /// What happened to the pin on this response (`new`, `changed`, …), for the access log.
    pub pin_event: Option<&'static str>,
    /// This request's id (request_id.rs), when request ids are on.
    pub request_id: Option<http::HeaderValue>,
    /// Counts this request on the server of the current attempt until the request ends.
    pub in_flight: Option<InFlight>,
    /// A sticky asset waiting for its pinned build (pinning.rs): until when, and its retries.
    pub wait: Option<PinWait>,
    /// A visitor id drawn for this client: the response sets its cookie (gray/visitor.rs).
    pub visitor: Option<String>,
    /// The path is a hashed immutable file (`[cache] immutable`): its caching is left alone.
    pub immutable: bool,
    /// The request came over TLS (https).
    pub tls: bool,
    /// A plain request on a listener with `https_redirect`: the https port to send it to.
    pub redirect_https: Option<u16>,
    /// Where the user id came from, whether the peer is trusted (`gray::identity`).
    pub identity: crate::gray::identity::Identity,
    /// Request body bytes seen so far (`limits.client_max_body_size`).
    pub body: crate::limits::body::BodyCount,
}

/// A sticky asset's wait for a momentarily unusable pinned build.
#[derive(Debug, Clone, Copy)]
pub struct PinWait {
    /// The request gives up waiting (and takes another build) at this instant.
    pub until: Instant,
    /// A server of the build that this request already tried may be tried again from then on.
    pub retry_at: Instant,
    /// Attempts made on the build while waiting.
    pub attempts: u32,
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
            tried: smallvec::SmallVec::new(),
            server: None,
            upstream_started: None,
            attempt_failed: false,
            page: false,
            pin: None,
            sticky: false,
            routed: false,
            timeouts: crate::routes::RouteTimeouts::default(),
            miss_retry: false,
            pin_event: None,
            request_id: None,
            in_flight: None,
            wait: None,
            visitor: None,
            immutable: false,
            tls: false,
            redirect_https: None,
            identity: Default::default(),
            body: Default::default(),
        }
    }
}
