//! The request path: one `impl ProxyHttp`, each phase short and delegating to pure helpers.
//!
//! ```text
//! early_request_filter   downstream keep-alive timeout
//! request_filter         decide the pool once (stored in ctx; retries do not re-decide)
//! upstream_peer          pick a server in that pool, skipping servers this request already tried
//! fail_to_connect        passive failure + retry on another server (nothing was sent yet)
//! upstream_request_filter Host / X-Real-IP / X-Forwarded-For as the seed's nginx did
//! response_filter        debug headers
//! fail_to_proxy          short plain 502/504 page with Retry-After, never a hang
//! logging                access line, passive success/failure bookkeeping
//! ```

pub mod ctx;
pub mod forwarded;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use log::{info, warn};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::config::{HostHeader, UpstreamConfig};
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
}

pub struct GraySplit {
    base: Arc<Pool>,
    settings: ProxySettings,
}

impl GraySplit {
    /// `pools` must contain the base pool (config validation guarantees it).
    pub fn new(pools: &Pools, settings: ProxySettings) -> Option<Self> {
        Some(Self {
            base: pools.get(crate::config::BASE_POOL)?.clone(),
            settings,
        })
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

    async fn request_filter(&self, _session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.pool = Some(self.base.clone());
        ctx.reason = "default";
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let pool = ctx.pool.clone().unwrap_or_else(|| self.base.clone());
        let tried = &ctx.tried;
        let server = pool
            .select(|s| !tried.contains(&s.spec.addr))
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), NO_SERVER))?;
        ctx.tried.push(server.spec.addr);
        let peer = self.peer_for(&server);
        ctx.server = Some(server);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(server) = &ctx.server {
            if server.health.record_failure(&server.spec) {
                warn!(
                    "server {} ejected for {:?} after {} failure(s): {:?}",
                    server.spec.name,
                    server.spec.fail_timeout,
                    server.spec.max_fails,
                    e.etype()
                );
            }
        }
        // Nothing reached the upstream, so retrying is safe for every method.
        if ctx.tried.len() < self.settings.upstream.tries {
            e.set_retry(true);
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
        if let Some(peer) = ctx.peer_ip {
            let xff = forwarded::append_forwarded_for(
                req.headers
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok()),
                peer,
            );
            req.insert_header("x-forwarded-for", xff)?;
            req.insert_header("x-real-ip", peer.to_string())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if self.settings.debug_headers {
            if let Some(pool) = &ctx.pool {
                resp.insert_header("x-graysplit-pool", pool.name.as_str())?;
            }
            resp.insert_header("x-graysplit-reason", ctx.reason)?;
        }
        Ok(())
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
        if let (Some(server), None) = (&ctx.server, e) {
            server.health.record_success();
        }
        if !self.settings.access_log {
            return;
        }
        let req = session.req_header();
        info!(
            target: "access",
            "{} \"{} {}\" {} pool={} server={} reason={} tries={} {}ms",
            ctx.peer_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "-".into()),
            req.method,
            req.uri.path(),
            status,
            ctx.pool.as_ref().map(|p| p.name.as_str()).unwrap_or("-"),
            ctx.server.as_ref().map(|s| s.spec.name.as_str()).unwrap_or("-"),
            ctx.reason,
            ctx.tried.len(),
            ctx.started.elapsed().as_millis()
        );
    }
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
