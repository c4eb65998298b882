//! Passive health and retries: what one failed attempt means for its server and for the request.
//!
//! - A connect error or connect timeout counts against the server (nginx `max_fails`) and is
//!   retried on another server: nothing reached the upstream, so every method is safe.
//! - An error after connecting (reset, read timeout) on a fresh connection counts against the
//!   server; Pingora's own policy decides the retry (idempotent methods whose body is still in
//!   its retry buffer, on reused connections only). A failure on a *reused* keep-alive connection
//!   is usually the server closing an idle connection at the wrong moment, not a sick server, so
//!   it is not counted.
//! - An upstream status in `upstream.fail_on_status` counts against the server. A GET or HEAD
//!   whose status is in `upstream.retry_on_status` is retried on another server when one is left
//!   and `tries` allows — before anything was sent to the client (the decision is taken on the
//!   response header, see `upstream_response_filter`). Otherwise the answer is passed on as is.
//!
//! `tries` counts attempts (first one included), as nginx's `proxy_next_upstream_tries`.

use log::warn;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use super::ctx::RequestCtx;
use super::{select, GraySplit};
use crate::metrics::FailKind;

impl GraySplit {
    /// Counts the current attempt as a failure of its server; logs and counts an ejection.
    pub(super) fn count_failure(&self, ctx: &mut RequestCtx, kind: FailKind, what: &str) {
        ctx.attempt_failed = true;
        let Some(server) = &ctx.server else { return };
        let ejected = server.health.record_failure(&server.spec);
        if ejected {
            warn!(
                "server {} ejected for {:?} after {} failure(s): {what}",
                server.spec.name, server.spec.fail_timeout, server.spec.max_fails
            );
        }
        self.settings
            .metrics
            .passive_failure(&self.pool_name(ctx), kind, ejected);
    }

    /// May this request try another server? (`tries` left, and a server left to try.)
    pub(super) fn may_retry(&self, ctx: &RequestCtx) -> bool {
        let pool = ctx.pool.as_ref().unwrap_or(&self.base);
        ctx.tried.len() < self.settings.upstream.tries
            && select::has_next(pool, &self.base, self.may_fall_back(ctx), &ctx.tried)
    }

    /// Marks a retry in the metrics.
    pub(super) fn count_retry(&self, ctx: &RequestCtx, cause: FailKind) {
        self.settings.metrics.retry(&self.pool_name(ctx), cause);
    }

    /// The upstream answered `status`: count it, and ask for a retry when configured.
    pub(super) fn check_status(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        status: u16,
    ) -> pingora::Result<()> {
        let u = &self.settings.upstream;
        if u.fail_on_status.contains(&status) {
            self.count_failure(ctx, FailKind::Status, &format!("status {status}"));
        }
        let method = &session.req_header().method;
        // Only safe methods: a request body may already have gone to the first server.
        let safe = method == http::Method::GET || method == http::Method::HEAD;
        if u.retry_on_status.contains(&status) && safe && self.may_retry(ctx) {
            self.count_retry(ctx, FailKind::Status);
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                "upstream status listed in retry_on_status",
            );
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    /// The decided pool may fall back to base unless it is a pass-through route's pool.
    pub(super) fn may_fall_back(&self, ctx: &RequestCtx) -> bool {
        match (&ctx.pool, &ctx.decided) {
            (Some(pool), Some(decided)) => pool.name.as_str() == &**decided,
            _ => true,
        }
    }

    pub(super) fn pool_name(&self, ctx: &RequestCtx) -> String {
        ctx.pool
            .as_ref()
            .map_or_else(|| self.base.name.clone(), |p| p.name.clone())
    }
}
