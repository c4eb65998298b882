//! The request path: one `impl ProxyHttp`, each phase short and delegating to pure helpers.
//!
//! ```text
//! early_request_filter   downstream keep-alive timeout; TLS or not, which listener, Host from
//!                        an HTTP/2 `:authority` (https.rs)
//! request_filter         308 to https on a redirecting listener (https.rs); request id
//!                        (request_id.rs); page or asset, read the pin, decide the pool once
//!                        (stored in ctx; retries do not re-decide); a pinned asset follows
//!                        its pin (pinning.rs)
//! upstream_peer          pick a server in that pool (of the pinned build for a sticky asset),
//!                        skipping servers this request already tried; pinned build gone → any
//!                        server of the pool (`build_gone`); gray without a usable server → base
//!                        (`gray_unavailable`), none → 502; counts the server's in-flight requests
//! fail_to_connect        passive failure + retry on another server (nothing was sent yet)
//! upstream_response_filter  asset-miss guard (pinning.rs); fail_on_status counts,
//!                        retry_on_status retries GET/HEAD (passive.rs)
//! error_while_proxy      passive failure (once per attempt) + retry of GET/HEAD on another server
//!                        while nothing reached the client (passive.rs, nginx's proxy_next_upstream)
//! upstream_request_filter Host / X-Real-IP / X-Forwarded-For as the seed's nginx did, and
//!                        X-Forwarded-Proto (https.rs); request id; validators made to speak
//!                        for the chosen server's build (caching.rs)
//! response_filter        pin (Secure over TLS) and visitor cookies; Cache-Control private /
//!                        Vary for answers decided per client, build-tagged ETag (caching.rs);
//!                        debug headers; request id; HSTS over TLS
//! fail_to_proxy          short plain 502/504 page with Retry-After, never a hang
//! logging                access line, metrics by pool and build, passive success bookkeeping
//! ```

mod access;
mod caching;
pub mod ctx;
mod edge;
pub mod forwarded;
mod header_case;
mod header_edit;
pub mod https;
mod passive;
mod pinning;
pub mod request_id;
pub mod select;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use log::info;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::config::{HeaderCase, UpstreamConfig, BASE_POOL};
use crate::gray::decision::Target;
use crate::gray::GrayEngine;
use crate::header_names::{X_FORWARDED_FOR, X_GRAYSPLIT_POOL, X_GRAYSPLIT_REASON, X_REAL_IP};
use crate::metrics::{by_build, FailKind, Metrics};
use crate::pin::Pinner;
use crate::routes::RouteTimeouts;
use crate::upstream::in_flight::InFlight;
use crate::upstream::pool::Pool;
use crate::upstream::Pools;
use ctx::RequestCtx;
use header_edit::HeaderEdit;

/// Error explanation used when a pool has no usable server.
const NO_SERVER: &str = "no usable server in pool";

/// Settings of the request path, taken from the validated config.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub upstream: UpstreamConfig,
    pub keepalive_timeout: Duration,
    /// Whether header names keep the case they were read in (`crate::proxy::header_case`).
    pub header_case: crate::config::HeaderCase,
    /// The access log (`None`: `server.access_log = false`); lines are written off this thread.
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// Who gets `X-Graysplit-Pool` / `X-Graysplit-Reason`.
    pub debug_headers: crate::config::debug_headers::DebugHeaders,
    /// Client limits (body size here; connections and the head deadline in the gate).
    pub limits: Arc<crate::limits::Limits>,
    pub metrics: Arc<Metrics>,
    pub pin: Arc<Pinner>,
    /// `[cache]`: what caches may keep of answers decided per client, build-tagged validators.
    pub cache: Arc<crate::http_cache::CachePolicy>,
    /// Set on SIGQUIT/SIGTERM: answers carry `Connection: close` (crate::lifecycle).
    pub draining: crate::lifecycle::Draining,
    /// Request ids (`server.request_id_header`); `None`: off.
    pub request_ids: Option<Arc<request_id::RequestIds>>,
    /// Listeners, HSTS, the https redirect (https.rs).
    pub https: https::HttpsSettings,
    /// Window counters and the mirror gate of the rollout (a no-op without `[rollout]`).
    pub rollout: Arc<crate::rollout::Rollout>,
}

/// The proxy logic. Cheap to clone (shared state behind `Arc`s): each per-thread proxy service
/// gets its own copy (crate::per_core).
#[derive(Clone)]
pub struct GraySplit {
    base: Arc<Pool>,
    /// Pool names as shared strings, made once: the request path only clones them.
    base_name: Arc<str>,
    gray_name: Arc<str>,
    pools: Arc<Pools>,
    gray: Arc<GrayEngine>,
    settings: ProxySettings,
}

impl GraySplit {
    /// `pools` must contain the base pool (config validation guarantees it).
    pub fn new(pools: Arc<Pools>, gray: Arc<GrayEngine>, settings: ProxySettings) -> Option<Self> {
        Some(Self {
            base: pools.get(BASE_POOL)?.clone(),
            base_name: Arc::from(BASE_POOL),
            gray_name: Arc::from("gray"),
            pools,
            gray,
            settings,
        })
    }

    /// The pool a decision names; a pool that is not configured means base.
    fn pool_of(&self, target: &Target) -> (Arc<str>, Arc<Pool>) {
        let name: Arc<str> = match target {
            Target::Base => self.base_name.clone(),
            Target::Gray => self.gray_name.clone(),
            Target::Named(n) => n.clone(),
        };
        let pool = self
            .pools
            .get(&name)
            .cloned()
            .unwrap_or_else(|| self.base.clone());
        (name, pool)
    }

    /// The peer for one attempt: `[upstream]`'s timeouts, or the matching route's.
    fn peer_for(&self, server: &crate::upstream::server::Server, route: RouteTimeouts) -> HttpPeer {
        let u = &self.settings.upstream;
        let mut peer = HttpPeer::new(server.spec.addr, false, String::new());
        peer.options.connection_timeout = Some(route.connect.unwrap_or(u.connect_timeout));
        peer.options.read_timeout = Some(route.read.unwrap_or(u.read_timeout));
        peer.options.write_timeout = Some(route.write.unwrap_or(u.write_timeout));
        // Upstream keep-alive: idle pooled connections live this long (None = until closed).
        peer.options.idle_timeout = (!u.idle_timeout.is_zero()).then_some(u.idle_timeout);
        peer
    }

    /// The upstream request's headers: Host, the decision's headers, the user, X-Forwarded-For /
    /// X-Real-IP as the seed's nginx set them, the request id, X-Forwarded-Proto, validators.
    fn shape_upstream_request(
        &self,
        session: &Session,
        req: &mut impl HeaderEdit,
        ctx: &RequestCtx,
    ) -> Result<()> {
        let u = &self.settings.upstream;
        let client_host = session
            .req_header()
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let server = ctx.server.as_ref().map_or("", |s| s.spec.name.as_str());
        if let Some(host) = forwarded::upstream_host(
            u.host_header,
            client_host,
            session.req_header().uri.host(),
            u.default_host.as_deref(),
            server,
        ) {
            // The upstream request is a copy of the client's: when its Host already says this
            // (a browser's `Host: shop.example`, once), there is nothing to replace.
            let twice = req
                .map()
                .get_all(http::header::HOST)
                .iter()
                .nth(1)
                .is_some();
            if twice || client_host != Some(&*host) {
                req.insert(&http::header::HOST, header_edit::value(host.into_owned())?)?;
            }
        }
        // The decision travels with the request (e.g. gray → `a: 1`) so the backend gateway routes
        // the whole chain; a client-sent copy must never choose for itself.
        for name in self.gray.strip() {
            req.remove(name);
        }
        if let Some(decided) = &ctx.decided {
            for (name, value) in self.gray.headers_for(decided) {
                req.insert(name, value.clone())?;
            }
        }
        self.forward_identity(req, ctx)?;
        if let Some(peer) = ctx.peer_ip {
            let real_ip = ctx.client.as_ref().map(|c| c.ip).unwrap_or(peer);
            let passed = forwarded::prior_hops(self.forwarded_for_to_pass(req.map(), ctx));
            let xff = header_value(forwarded::append_forwarded_for(passed, peer))?;
            // Like nginx's realip module: behind a trusted proxy, X-Real-IP is the real client.
            // Usually both name the peer alone: one value, shared (a reference count).
            let real = if passed.is_none() && real_ip == peer {
                xff.clone()
            } else {
                let mut text = Vec::with_capacity(39);
                crate::ip_text::write_ip(real_ip, &mut text);
                header_value(text)?
            };
            req.insert(&X_FORWARDED_FOR, xff)?;
            req.insert(&X_REAL_IP, real)?;
        }
        // Replaces whatever the client sent: only an id a trusted peer sent was kept.
        if let Some((name, id)) = self.request_id_header(ctx) {
            req.insert(name, id.clone())?;
        }
        self.set_forwarded_proto(session, req, ctx)?;
        self.translate_validators(session, req, ctx)
    }

    /// The client's answer: cookies and caching (caching.rs), debug headers, request id, HSTS.
    fn shape_client_response(
        &self,
        ctx: &mut RequestCtx,
        status: u16,
        resp: &mut impl HeaderEdit,
    ) -> Result<()> {
        self.shape_response(ctx, status, resp)?;
        if self.show_debug_headers(ctx) {
            if let Some(pool) = &ctx.pool {
                let name = match &pool.name_value {
                    Some(v) => v.clone(),
                    None => header_edit::value(pool.name.as_str())?,
                };
                resp.insert(&X_GRAYSPLIT_POOL, name)?;
            }
            resp.insert(&X_GRAYSPLIT_REASON, header_edit::static_value(ctx.reason)?)?;
        }
        if let Some((name, id)) = self.request_id_header(ctx) {
            resp.insert(name, id.clone())?;
        }
        self.add_hsts(resp, ctx)
    }
}

#[async_trait]
impl ProxyHttp for GraySplit {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        // nginx's keepalive_timeout, for connections the client keeps alive (HTTP/1.1, or 1.0
        // with `Connection: keep-alive`; an HTTP/1.0 probe or `Connection: close` is answered
        // and closed). Pingora keeps them forever unless told; a connection through the gate
        // has its idle wait timed by its stream, at a fraction of Pingora's per-request timer
        // (limits::head_deadline), so only others (HTTP/2 streams) are timed by Pingora.
        let timed_by_stream = edge::head_read(session);
        if self.settings.keepalive_timeout.is_zero() {
            // nginx's `keepalive_timeout 0`: keep-alive off, every answer says
            // `Connection: close` and closes its connection.
            session.set_keepalive(None);
        } else if !timed_by_stream && session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.settings.keepalive_timeout.as_secs().max(1)));
        }
        if self.settings.header_case == HeaderCase::Normalize {
            header_case::forget_request_case(session.req_header_mut());
        }
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| forwarded::canonical_ip(a.ip()));
        self.read_transport(session, ctx);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.request_id = self.request_id(session.req_header(), ctx.peer_ip);
        if self.redirect_to_https(session, ctx).await? {
            return Ok(true);
        }
        if self.refuse_large_body(session, ctx).await? {
            return Ok(true);
        }
        let pin_use = self.read_pin(session, ctx);
        let client = self.identify(session, ctx);
        let req = session.req_header();
        let decision = self
            .gray
            .decide(
                &client,
                &req.headers,
                req.uri.query(),
                !ctx.page,
                pin_use.follow(),
            )
            .await;
        let decision = self.with_pin_scope(&pin_use, decision);
        let (decided, mut pool) = self.pool_of(&decision.target);
        if let Some(route) = self.gray.route_for(req.uri.path()) {
            if let Some(name) = &route.pool {
                pool = self.pools.get(name).cloned().unwrap_or(pool);
                ctx.routed = true;
            }
            ctx.timeouts = route.timeouts;
        }
        ctx.pool = Some(pool);
        ctx.reason = decision.reason;
        ctx.sticky = decision.reason == "sticky";
        ctx.visitor = decision.visitor;
        ctx.immutable = self.settings.cache.immutable(req.uri.path());
        ctx.decided = Some(decided);
        ctx.client = Some(client);
        if let Some(read) = ctx.timeouts.read {
            // The client side of an upgraded (WebSocket) or long-lived request idles as long as
            // the upstream side may (Pingora's default is 60 s per read).
            session.set_read_timeout(Some(read));
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        self.count_body(ctx, body)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let pool = ctx.pool.clone().unwrap_or_else(|| self.base.clone());
        let pick = if ctx.miss_retry {
            // The pinned build said 404 (or sent HTML) and no other build is left: a plain 404.
            self.pick_for_miss(ctx).ok_or_else(|| {
                Error::explain(ErrorType::HTTPStatus(404), "asset missing in every build")
            })?
        } else if let Some(pick) = self.pick_sticky(ctx, &pool).await {
            pick
        } else {
            let build = self.wanted_build(ctx);
            select::pick(
                &pool,
                &self.base,
                self.may_fall_back(ctx),
                build,
                &ctx.tried,
            )
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), NO_SERVER))?
        };
        if pick.fell_back {
            ctx.reason = select::GRAY_UNAVAILABLE;
        } else if pick.build_gone {
            ctx.reason = select::BUILD_GONE;
        }
        if !Arc::ptr_eq(&pick.pool, &pool) {
            ctx.pool = Some(pick.pool);
        }
        ctx.tried.push(pick.server.spec.addr);
        ctx.upstream_started
            .get_or_insert_with(std::time::Instant::now);
        ctx.attempt_failed = false;
        // Replacing the previous attempt's guard moves the count to this server.
        ctx.in_flight = Some(InFlight::start(&pick.server.health));
        let peer = self.peer_for(&pick.server, ctx.timeouts);
        ctx.server = Some(pick.server);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Refused, unreachable or timed out (ConnectTimedout comes here too).
        self.count_failure(ctx, FailKind::Connect, e.etype().as_str());
        // Nothing reached the upstream, so retrying is safe for every method. A sticky asset may
        // also retry to wait for its pinned build (pinning.rs).
        if self.may_retry(ctx) || self.may_wait_retry(ctx) {
            self.count_retry(ctx, FailKind::Connect);
            e.set_retry(true);
        }
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // Runs before anything is written to the client, so an error here can still retry.
        self.check_asset_miss(session, ctx, upstream_response)?;
        self.check_status(session, ctx, upstream_response.status.as_u16())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let req = session.req_header();
        let method = &req.method;
        let status_error = matches!(e.etype(), ErrorType::HTTPStatus(_));
        // Pingora's default, resolved: a failure on a reused connection may be retried.
        e.retry.decide_reuse(client_reused);
        let facts = passive::ErrorFacts {
            upstream: e.esource() == &ErrorSource::Upstream && !status_error,
            timeout: matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout
            ),
            reused: client_reused,
            counted: ctx.attempt_failed,
            safe_method: method == http::Method::GET || method == http::Method::HEAD,
            idempotent: method.is_idempotent(),
            body_buffered: !session.as_ref().retry_buffer_truncated(),
            header_sent: session.response_written().is_some(),
            decided: e.retry(),
            status_error,
            may_retry: self.may_retry(ctx) || self.may_wait_retry(ctx),
        };
        let verdict = passive::after_error(&facts);
        if verdict.count {
            self.count_failure(ctx, FailKind::Error, e.etype().as_str());
        }
        e.set_retry(verdict.retry);
        if verdict.retry && !status_error {
            self.count_retry(ctx, FailKind::Error);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if self.settings.header_case == HeaderCase::Normalize && header_edit::request_is_plain(req)
        {
            header_edit::on_request_map(req, |parts| {
                self.shape_upstream_request(session, &mut parts.headers, ctx)
            })
        } else {
            self.shape_upstream_request(session, req, ctx)
        }
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // Handing over or stopping: close this connection cleanly after the answer, so the client
        // never reuses one this process is about to drop (crate::lifecycle).
        if self.settings.draining.is_set() || session.is_process_shutting_down() {
            session.set_keepalive(None);
        }
        let status = resp.status.as_u16();
        if self.settings.header_case == HeaderCase::Normalize {
            header_edit::on_response_map(resp, |parts| {
                self.shape_client_response(ctx, status, &mut parts.headers)
            })
        } else {
            self.shape_client_response(ctx, status, resp)
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, e: &Error) -> bool {
        // The asset-miss guard's deliberate 404s are no proxy failures; metrics count them.
        if is_asset_miss(e) || edge::is_too_large(e) {
            return true;
        }
        // A client that went away mid-request or sent something unusable is not our error nor
        // an upstream's: nginx logs these at info ("client prematurely closed connection"). At
        // error level every closed browser tab (and the end of every load test) floods the log.
        if e.esource() == &ErrorSource::Downstream {
            info!("client: {e}");
            return true;
        }
        false
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &Self::CTX,
        e: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        is_asset_miss(e)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        let code = error_status(e);
        if code > 0 {
            if let Err(err) = write_error_page(session, code, self.request_id_header(ctx)).await {
                log::debug!("could not send the {code} page: {err}");
            }
            if code == 413 {
                edge::linger(session).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        edge::request_done(session);
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        if let (Some(server), None, false) = (&ctx.server, e, ctx.attempt_failed) {
            server.health.record_success();
        }
        let pool = ctx.pool.as_ref().map_or("-", |p| p.name.as_str());
        let build = match (&ctx.pool, &ctx.server) {
            (Some(p), Some(s)) => select::build_of(s, p),
            _ => by_build::NONE,
        };
        let upstream_time = match (ctx.upstream_started, e) {
            (Some(started), None) => Some(started.elapsed()),
            _ => None,
        };
        self.settings
            .metrics
            .request(pool, build, ctx.reason, status, upstream_time);
        self.settings.rollout.served(&crate::rollout::Served {
            pool,
            build,
            outcome: crate::rollout::windows::Outcome {
                status,
                upstream_error: e.is_some_and(|e| e.esource() == &ErrorSource::Upstream),
                elapsed: upstream_time,
            },
            page: ctx.page,
            routed: ctx.routed,
            request: session.req_header(),
        });
        if let Some(log) = &self.settings.access_log {
            log.log(&self.access_entry(session, ctx, status, build));
        }
    }
}

/// Bytes made on the request path as a header value (validated, not copied).
fn header_value(bytes: Vec<u8>) -> Result<http::HeaderValue> {
    http::HeaderValue::from_maybe_shared(Bytes::from(bytes))
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "forwarded header", e))
}

/// The asset-miss guard's errors (pinning.rs) are the only 404s graysplit raises itself.
fn is_asset_miss(e: &Error) -> bool {
    matches!(e.etype(), ErrorType::HTTPStatus(404))
}

/// The status sent to the client for a failed request (0: the client is gone, send nothing).
pub fn error_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

/// A short plain page; 502/503/504 carry `Retry-After` so clients and CDNs back off briefly, and
/// the request id, if any, so a report of the error can be found in the log.
async fn write_error_page(
    session: &mut Session,
    code: u16,
    request_id: Option<(&http::HeaderName, &http::HeaderValue)>,
) -> Result<()> {
    let reason = http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = Bytes::from(format!("{code} {reason}\n"));
    let mut resp = ResponseHeader::build(code, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if matches!(code, 502..=504) {
        resp.insert_header(http::header::RETRY_AFTER, "5")?;
    }
    if let Some((name, id)) = request_id {
        resp.insert_header(name.clone(), id.clone())?;
    }
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}
