//! Passive health and retries: what one failed attempt means for its server and for the request.
//!
//! - A connect error or connect timeout counts against the server (nginx `max_fails`) and is
//!   retried on another server: nothing reached the upstream, so every method is safe.
//! - An error after connecting — a reset, a connection closed before the answer, a read timeout
//!   on a server that accepts but never answers — is nginx's `proxy_next_upstream error
//!   timeout`: a GET or HEAD (no body to lose) is retried on another server as long as nothing
//!   was sent to the client yet (the response header has not gone out) and `tries` allows. Once
//!   the header went out, the client keeps what it got (the connection is closed). Other
//!   idempotent methods keep Pingora's policy (retried only after a failure on a reused
//!   connection); other methods are never retried after connecting.
//! - Such an error counts against the server once per attempt. A timeout always counts; a reset
//!   or close on a *reused* keep-alive connection does not — that is usually the server closing
//!   an idle connection at the wrong moment, not a sick server.
//! - Nothing that happens after the response header went to the client counts or retries: an
//!   idle WebSocket or SSE stream, a long-poll answer, a slow download hitting `read_timeout` is
//!   the nature of that response, not a sick server (nginx, too, counts failures only where it
//!   would try the next server).
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
    /// A pool's only server is never counted against (nginx's single-server rule, pool.rs).
    pub(super) fn count_failure(&self, ctx: &mut RequestCtx, kind: FailKind, what: &str) {
        ctx.attempt_failed = true;
        let Some(server) = &ctx.server else { return };
        let counts = ctx.pool.as_ref().is_none_or(|p| p.counts_failures());
        let ejected = counts && server.health.record_failure(&server.spec);
        if ejected {
            warn!(
                "server {} ejected for {:?} after {} failure(s): {what}",
                server.spec.name, server.spec.fail_timeout, server.spec.max_fails
            );
        }
        let build = ctx
            .pool
            .as_ref()
            .map_or(crate::metrics::by_build::NONE, |p| {
                select::build_of(server, p)
            });
        self.settings
            .metrics
            .passive_failure(&self.pool_name(ctx), build, kind, ejected);
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

/// What `error_while_proxy` knows about one failed attempt (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ErrorFacts {
    /// The upstream failed (reset, closed, timed out, bad answer), not the client or a phase.
    pub upstream: bool,
    /// A read or write timeout.
    pub timeout: bool,
    /// The attempt used a pooled keep-alive connection.
    pub reused: bool,
    /// This attempt already counted as a failure of its server (e.g. `fail_on_status`).
    pub counted: bool,
    /// GET or HEAD.
    pub safe_method: bool,
    /// Idempotent by HTTP's definition (GET, HEAD, PUT, DELETE, OPTIONS, TRACE).
    pub idempotent: bool,
    /// The request body is still whole in the retry buffer (or there is none).
    pub body_buffered: bool,
    /// The response header already went to the client.
    pub header_sent: bool,
    /// Retry as already decided: by a phase (status errors), else Pingora's reused-only default.
    pub decided: bool,
    /// A phase raised the error on an upstream status (`retry_on_status`, asset-miss guard).
    pub status_error: bool,
    /// `tries` left and an untried server left.
    pub may_retry: bool,
}

/// What to do about one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Count it against the server (toward `max_fails`).
    pub count: bool,
    /// Try another server.
    pub retry: bool,
}

/// The policy of the module docs, as a pure function.
pub(super) fn after_error(f: &ErrorFacts) -> Verdict {
    let count = f.upstream && !f.counted && !f.header_sent && (f.timeout || !f.reused);
    let retry = if !f.idempotent || !f.body_buffered || f.header_sent {
        false
    } else if f.status_error {
        f.decided
    } else if f.upstream && f.safe_method {
        f.may_retry
    } else {
        f.decided && f.may_retry
    };
    Verdict { count, retry }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GET whose fresh connection was reset before any answer, with a server left.
    fn reset_get() -> ErrorFacts {
        ErrorFacts {
            upstream: true,
            safe_method: true,
            idempotent: true,
            body_buffered: true,
            may_retry: true,
            ..ErrorFacts::default()
        }
    }

    #[test]
    fn a_reset_or_timeout_before_the_header_retries_a_get_and_counts_once() {
        let v = after_error(&reset_get());
        assert_eq!(
            v,
            Verdict {
                count: true,
                retry: true
            }
        );
        let timeout = ErrorFacts {
            timeout: true,
            ..reset_get()
        };
        assert_eq!(after_error(&timeout), v);
        // Already counted in this attempt (e.g. a fail_on_status answer): not twice.
        let counted = ErrorFacts {
            counted: true,
            ..reset_get()
        };
        assert!(!after_error(&counted).count && after_error(&counted).retry);
    }

    #[test]
    fn nothing_is_retried_or_counted_once_the_header_reached_the_client() {
        // An idle WebSocket, an SSE stream or a slow download meeting read_timeout.
        for timeout in [true, false] {
            let f = ErrorFacts {
                header_sent: true,
                decided: true,
                timeout,
                ..reset_get()
            };
            assert_eq!(
                after_error(&f),
                Verdict {
                    count: false,
                    retry: false
                }
            );
        }
    }

    #[test]
    fn no_retry_without_tries_or_servers_left() {
        let f = ErrorFacts {
            may_retry: false,
            ..reset_get()
        };
        assert!(!after_error(&f).retry);
        assert!(after_error(&f).count);
    }

    #[test]
    fn a_post_is_never_retried_after_connecting_a_put_only_on_a_reused_connection() {
        let post = ErrorFacts {
            safe_method: false,
            idempotent: false,
            decided: true,
            reused: true,
            ..reset_get()
        };
        assert!(!after_error(&post).retry);
        let put_fresh = ErrorFacts {
            safe_method: false,
            ..reset_get()
        };
        assert!(!after_error(&put_fresh).retry);
        let put_reused = ErrorFacts {
            decided: true,
            reused: true,
            ..put_fresh
        };
        assert!(after_error(&put_reused).retry);
        let truncated = ErrorFacts {
            body_buffered: false,
            ..put_reused
        };
        assert!(!after_error(&truncated).retry);
    }

    #[test]
    fn a_reset_on_a_reused_connection_retries_but_does_not_count_a_timeout_does() {
        let reused = ErrorFacts {
            reused: true,
            ..reset_get()
        };
        assert_eq!(
            after_error(&reused),
            Verdict {
                count: false,
                retry: true
            }
        );
        let timeout = ErrorFacts {
            timeout: true,
            ..reused
        };
        assert!(after_error(&timeout).count);
    }

    #[test]
    fn a_phases_status_decision_stands_and_is_not_a_transport_failure() {
        let status = ErrorFacts {
            upstream: false,
            status_error: true,
            decided: true,
            may_retry: false,
            ..reset_get()
        };
        assert_eq!(
            after_error(&status),
            Verdict {
                count: false,
                retry: true
            }
        );
        let declined = ErrorFacts {
            decided: false,
            may_retry: true,
            ..status
        };
        assert!(!after_error(&declined).retry);
    }

    #[test]
    fn a_client_side_error_is_neither_counted_nor_retried() {
        let f = ErrorFacts {
            upstream: false,
            ..reset_get()
        };
        assert_eq!(
            after_error(&f),
            Verdict {
                count: false,
                retry: false
            }
        );
    }
}
