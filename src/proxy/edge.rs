//! The public edge on the request path: what a client is trusted with and what it may cost.
//!
//! - `early_request_filter`: [`head_read`] stops the connection's head deadline
//!   (`limits::head_deadline`); `logging`: [`request_done`] arms it for the next request;
//! - `request_filter`: [`GraySplit::refuse_large_body`] (a declared body over
//!   `client_max_body_size` → 413 before anything is proxied), [`GraySplit::identify`] (who the
//!   client is, counted: ignored user headers, token results);
//! - `request_body_filter`: [`GraySplit::count_body`] (a streamed body that grows past the limit
//!   → 413);
//! - `upstream_request_filter`: [`GraySplit::forward_identity`] (`gray.user_header` kept, set or
//!   removed; an untrusted peer's `X-Forwarded-For` is not passed on as if it were true);
//! - `response_filter`: [`GraySplit::show_debug_headers`].

use std::time::Duration;

use bytes::Bytes;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use super::ctx::RequestCtx;
use super::header_edit::HeaderEdit;
use super::GraySplit;
use crate::gray::identity::{self, UpstreamUser};
use crate::gray::Client;
use crate::limits::body;
use crate::metrics::trust::Limit;

/// After a 413, the rest of the body is read (and dropped) for up to this long and this much, so
/// the client sees the answer instead of a reset (closing on unread data makes the kernel send
/// RST): nginx's lingering close, bounded.
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 16 << 20;

/// The error a streamed body raises when it passes the limit (answered 413 by `fail_to_proxy`).
const TOO_LARGE: &str = "request body larger than limits.client_max_body_size";

/// `true` when the connection's stream also times the wait for its next request.
pub(super) fn head_read(session: &Session) -> bool {
    crate::limits::head_deadline::head_read(session.as_downstream())
}

pub(super) fn request_done(session: &Session) {
    crate::limits::head_deadline::request_done(session.as_downstream());
}

/// The 413 of a streamed body (so logging and `fail_to_proxy` can tell it apart).
pub(super) fn is_too_large(e: &Error) -> bool {
    matches!(e.etype(), ErrorType::HTTPStatus(413))
}

impl GraySplit {
    fn body_limit(&self) -> u64 {
        self.settings.limits.settings.client_max_body_size
    }

    /// A declared `Content-Length` over the limit: 413 now, nothing proxied. `true` when answered.
    pub(super) async fn refuse_large_body(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        if !body::declared_too_large(&session.req_header().headers, self.body_limit()) {
            return Ok(false);
        }
        self.settings
            .limits
            .metrics
            .limit_hit(Limit::ClientMaxBodySize);
        ctx.reason = "body_too_large";
        super::write_error_page(session, 413, self.request_id_header(ctx)).await?;
        linger(session).await;
        Ok(true)
    }

    /// Counts a streamed body; past the limit the request fails with 413.
    pub(super) fn count_body(&self, ctx: &mut RequestCtx, chunk: &Option<Bytes>) -> Result<()> {
        let n = chunk.as_ref().map_or(0, Bytes::len);
        if ctx.body.add(n, self.body_limit()) {
            self.settings
                .limits
                .metrics
                .limit_hit(Limit::ClientMaxBodySize);
            ctx.reason = "body_too_large";
            return Err(Error::explain(ErrorType::HTTPStatus(413), TOO_LARGE));
        }
        Ok(())
    }

    /// The client and its user id, with what the metrics count about them.
    pub(super) fn identify(&self, session: &Session, ctx: &mut RequestCtx) -> Client {
        let peer = ctx
            .peer_ip
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        let (client, identity) = self.gray.identify(peer, &session.req_header().headers);
        let metrics = &self.settings.limits.metrics;
        if identity.header_ignored {
            metrics.user_header_ignored();
        }
        if let Some(check) = identity.token {
            metrics.token(check);
        }
        ctx.identity = identity;
        client
    }

    /// `gray.user_header` upstream, by where the id came from ([`identity::upstream_user`]).
    pub(super) fn forward_identity(
        &self,
        req: &mut impl HeaderEdit,
        ctx: &RequestCtx,
    ) -> Result<()> {
        let Some(name) = &self.gray.settings.user_header else {
            return Ok(());
        };
        let user = ctx.client.as_ref().and_then(|c| c.user.as_deref());
        match identity::upstream_user(&ctx.identity, user) {
            UpstreamUser::Keep => {}
            UpstreamUser::Remove => {
                req.remove(name);
            }
            UpstreamUser::Set(id) => {
                req.insert(name, super::header_edit::value(id)?)?;
            }
        }
        Ok(())
    }

    /// The `X-Forwarded-For` a peer sent, if it may be passed on: only a trusted proxy's. From
    /// anyone else it is a claim, and the upstream gets only the peer itself (like our
    /// `X-Real-IP`), so a backend reading the leftmost hop is not fooled either.
    pub(super) fn forwarded_for_to_pass<'r>(
        &self,
        req: &'r http::HeaderMap,
        ctx: &RequestCtx,
    ) -> Option<&'r str> {
        ctx.identity
            .peer_trusted
            .then(|| {
                req.get(&crate::header_names::X_FORWARDED_FOR)?
                    .to_str()
                    .ok()
            })
            .flatten()
    }

    /// Whether this response carries `X-Graysplit-Pool` / `X-Graysplit-Reason`.
    pub(super) fn show_debug_headers(&self, ctx: &RequestCtx) -> bool {
        let client = ctx.client.as_ref().map(|c| c.ip).or(ctx.peer_ip);
        client.is_some_and(|ip| self.settings.debug_headers.show(ip))
    }
}

/// Reads and drops what is left of the request body, within [`LINGER_TIME`] / [`LINGER_BYTES`].
pub(super) async fn linger(session: &mut Session) {
    let drain = async {
        let mut read = 0usize;
        while read < LINGER_BYTES {
            match session.downstream_session.read_request_body().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}
