//! The request path: one `impl ProxyHttp`, each phase short and delegating to pure helpers.
//!
//! ```text
//! early_request_filter   downstream keep-alive timeout
//! request_filter         page or asset, read the pin, decide the pool once (stored in ctx;
//!                        retries do not re-decide); a pinned asset follows its pin (pinning.rs)
//! upstream_peer          pick a server in that pool (of the pinned build for a sticky asset),
//!                        skipping servers this request already tried; pinned build gone → any
//!                        server of the pool (`build_gone`); gray without a usable server → base
//!                        (`gray_unavailable`), none → 502
//! fail_to_connect        passive failure + retry on another server (nothing was sent yet)
//! upstream_response_filter  asset-miss guard (pinning.rs); fail_on_status counts,
//!                        retry_on_status retries GET/HEAD (passive.rs)
//! error_while_proxy      passive failure (once per attempt) + retry of GET/HEAD on another server
//!                        while nothing reached the client (passive.rs, nginx's proxy_next_upstream)
//! upstream_request_filter Host / X-Real-IP / X-Forwarded-For as the seed's nginx did
//! response_filter        pin cookie when issued, changed or refreshed; debug headers
//! fail_to_proxy          short plain 502/504 page with Retry-After, never a hang
//! logging                access line, passive success/failure bookkeeping
//! ```

pub mod ctx;
pub mod forwarded;
mod passive;
mod pinning;
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

use crate::config::{HostHeader, UpstreamConfig, BASE_POOL};
use crate::gray::decision::Target;
use crate::gray::GrayEngine;
use crate::metrics::{FailKind, Metrics};
use crate::pin::Pinner;
use crate::upstream::pool::Pool;
use crate::upstream::Pools;
use ctx::RequestCtx;

/// Error explanation used when a pool has no usable server.
const NO_SERVER: &str = "no usable server in pool";

/// Settings of the request path, taken from the validated config.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub upstream: UpstreamConfig,
    pub keepalive_timeout: Duration,
    pub access_log: bool,
    pub debug_headers: bool,
    pub metrics: Arc<Metrics>,
    pub pin: Arc<Pinner>,
    /// Set on SIGQUIT/SIGTERM: answers carry `Connection: close` (crate::lifecycle).
    pub draining: crate::lifecycle::Draining,
    /// Window counters and the mirror gate of the rollout (a no-op without `[rollout]`).
    pub rollout: Arc<crate::rollout::Rollout>,
}

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

    fn peer_for(&self, server: &crate::upstream::server::Server) -> HttpPeer {
        let u = &self.settings.upstream;
        let mut peer = HttpPeer::new(server.spec.addr, false, String::new());
        peer.options.connection_timeout = Some(u.connect_timeout);
        peer.options.read_timeout = Some(u.read_timeout);
        peer.options.write_timeout = Some(u.write_timeout);
        // Upstream keep-alive: idle pooled connections live this long (None = until closed).
        peer.options.idle_timeout = (!u.idle_timeout.is_zero()).then_some(u.idle_timeout);
        peer
    }
}

#[async_trait]
impl ProxyHttp for GraySplit {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        // Pingora keeps idle client connections forever by default; nginx's keepalive_timeout.
        session.set_keepalive(Some(self.settings.keepalive_timeout.as_secs().max(1)));
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| forwarded::canonical_ip(a.ip()));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let pinned = self.read_pin(session, ctx);
        let req = session.req_header();
        let peer = ctx
            .peer_ip
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        let client = self.gray.client(peer, &req.headers);
        let decision = self
            .gray
            .decide(
                &client,
                &req.headers,
                req.uri.query(),
                !ctx.page,
                pinned.as_ref(),
            )
            .await;
        let (decided, mut pool) = self.pool_of(&decision.target);
        if let Some(route) = self.gray.route(req.uri.path()) {
            pool = self.pools.get(route).cloned().unwrap_or(pool);
            ctx.routed = true;
        }
        ctx.pool = Some(pool);
        ctx.reason = decision.reason;
        ctx.sticky = decision.reason == "sticky";
        ctx.decided = Some(decided);
        ctx.client = Some(client);
        Ok(false)
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
        let peer = self.peer_for(&pick.server);
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
        // Nothing reached the upstream, so retrying is safe for every method.
        if self.may_retry(ctx) {
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
            may_retry: self.may_retry(ctx),
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
        match self.settings.upstream.host_header {
            HostHeader::Host => {
                let host = session
                    .req_header()
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| session.req_header().uri.host())
                    .and_then(forwarded::host_without_port);
                if let Some(host) = host {
                    req.insert_header(http::header::HOST, host)?;
                }
            }
            HostHeader::HttpHost => {}
            HostHeader::Upstream => {
                if let Some(server) = &ctx.server {
                    req.insert_header(http::header::HOST, server.spec.name.as_str())?;
                }
            }
        }
        // The decision travels with the request (e.g. gray → `a: 1`) so the backend gateway routes
        // the whole chain; a client-sent copy must never choose for itself.
        for name in self.gray.strip() {
            req.remove_header(name);
        }
        if let Some(decided) = &ctx.decided {
            for (name, value) in self.gray.headers_for(decided) {
                req.insert_header(name.clone(), value.clone())?;
            }
        }
        if let Some(peer) = ctx.peer_ip {
            let real_ip = ctx.client.as_ref().map(|c| c.ip).unwrap_or(peer);
            let xff = forwarded::append_forwarded_for(
                req.headers
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok()),
                peer,
            );
            req.insert_header("x-forwarded-for", xff)?;
            // Like nginx's realip module: behind a trusted proxy, X-Real-IP is the real client.
            req.insert_header("x-real-ip", real_ip.to_string())?;
        }
        Ok(())
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
        if let Some(cookie) = self.pin_cookie(ctx, resp.status.as_u16()) {
            resp.append_header(http::header::SET_COOKIE, cookie)?;
        }
        if self.settings.debug_headers {
            if let Some(pool) = &ctx.pool {
                resp.insert_header("x-graysplit-pool", pool.name.as_str())?;
            }
            resp.insert_header("x-graysplit-reason", ctx.reason)?;
        }
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, e: &Error) -> bool {
        // The asset-miss guard's deliberate 404s are no proxy failures; metrics count them.
        if is_asset_miss(e) {
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
        _ctx: &mut Self::CTX,
    ) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        let code = error_status(e);
        if code > 0 {
            if let Err(err) = write_error_page(session, code).await {
                log::debug!("could not send the {code} page: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        if let (Some(server), None, false) = (&ctx.server, e, ctx.attempt_failed) {
            server.health.record_success();
        }
        let pool = ctx.pool.as_ref().map_or("-", |p| p.name.as_str());
        let metrics = &self.settings.metrics;
        metrics.request(pool, ctx.reason, status);
        if let (Some(started), None) = (ctx.upstream_started, e) {
            metrics.upstream_time(pool, started.elapsed());
        }
        self.settings.rollout.served(&crate::rollout::Served {
            pool,
            build: match (&ctx.pool, &ctx.server) {
                (Some(p), Some(s)) => select::build_of(s, p),
                _ => "-",
            },
            outcome: crate::rollout::windows::Outcome {
                status,
                upstream_error: e.is_some_and(|e| e.esource() == &ErrorSource::Upstream),
                elapsed: ctx
                    .upstream_started
                    .filter(|_| e.is_none())
                    .map(|s| s.elapsed()),
            },
            page: ctx.page,
            routed: ctx.routed,
            request: session.req_header(),
        });
        if !self.settings.access_log {
            return;
        }
        let req = session.req_header();
        info!(
            target: "access",
            "{} \"{} {}\" {} pool={} build={} server={} reason={} pin={} tries={} {}ms",
            ctx.peer_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "-".into()),
            req.method,
            req.uri.path(),
            status,
            ctx.pool.as_ref().map(|p| p.name.as_str()).unwrap_or("-"),
            match (&ctx.pool, &ctx.server) {
                (Some(p), Some(s)) => select::build_of(s, p),
                _ => "-",
            },
            ctx.server.as_ref().map(|s| s.spec.name.as_str()).unwrap_or("-"),
            ctx.reason,
            ctx.pin_event.unwrap_or("-"),
            ctx.tried.len(),
            ctx.started.elapsed().as_millis()
        );
    }
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

/// A short plain page; 502/503/504 carry `Retry-After` so clients and CDNs back off briefly.
async fn write_error_page(session: &mut Session, code: u16) -> Result<()> {
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
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}
