//! The pin on the request path: read it, follow it, (re-)issue it, and guard assets from
//! another build's `index.html`.
//!
//! - `request_filter`: [`GraySplit::read_pin`] classifies the request and verifies its pin cookie
//!   (an HMAC only when the cookie is present); rejected cookies are counted and ignored. The
//!   pin's scope ([`crate::pin::scope`]) says how it takes part in the decision: an asset within
//!   the grace follows it with no lookup; an asset path past the grace keeps the pin's build only
//!   if the fresh decision names the pin's pool ([`GraySplit::with_pin_scope`]); anything else is
//!   decided as if there were no pin.
//! - `upstream_peer`: a sticky asset asks for a server of its pin's build
//!   ([`GraySplit::pick_sticky`]). When the build is configured but has no usable server this
//!   moment (failing checks, `rise` after a restart, refusing connections), the request waits
//!   for one — polling, never blocking a thread — for at most `pin.build_wait`, and tries a
//!   server that refused it again after a short backoff. Only a build that is not configured, or
//!   has been unusable for longer than `build_wait`, sends the asset to any server of the pool
//!   (`build_gone`), and the response re-pins.
//! - `upstream_response_filter`: [`GraySplit::check_asset_miss`]. A pinned asset answered 404 may
//!   belong to another build (a tab loaded before the pin moved, a rolling deploy): it is retried
//!   once on a server of another build — before anything reached the client, so the retry is
//!   invisible. A script/style/image answered with HTML is an SPA fallback's `index.html`: it is
//!   treated like a 404, and, when no retry is left, replaced by a plain 404. A real 404 is
//!   passed on untouched.
//! - `response_filter`: [`GraySplit::pin_cookie`] decides whether this response carries a
//!   `Set-Cookie`: a page whose served pool/build differs from its pin (or that had none), a
//!   page whose pin is due for a refresh, an asset whose pinned build was gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use super::ctx::{PinWait, RequestCtx};
use super::select::{self, Pick, MAX_WAIT_ATTEMPTS};
use super::GraySplit;
use crate::config::BASE_POOL;
use crate::gray::decision::{Decision, Target};
use crate::pin::classify::{self, Kind};
use crate::pin::scope::{self, Scope};
use crate::pin::{unix_now, Pinner, Read};
use crate::upstream::pool::Pool;

/// How often a waiting sticky asset looks at its build again.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// Backoff before a waiting asset tries a server again that refused it: 100 ms, doubling, at
/// most 1 s.
fn retry_backoff(attempts: u32) -> Duration {
    Duration::from_millis(100u64 << attempts.min(4)).min(Duration::from_secs(1))
}

/// How the request's valid pin takes part in its decision (see [`crate::pin::scope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PinUse {
    /// No pin, or one that does not take part (a page; a non-asset path past the grace).
    None,
    /// An asset within the grace: the pinned pool, without any lookup.
    Follow(Target),
    /// An asset path past the grace: the pin's build if the fresh decision names this pool.
    IfStillDecided(Target),
}

impl PinUse {
    /// The pool to follow without a lookup, if any.
    pub(super) fn follow(&self) -> Option<&Target> {
        match self {
            PinUse::Follow(t) => Some(t),
            _ => None,
        }
    }
}

impl GraySplit {
    /// Classifies the request and reads its pin into `ctx`; returns how the pin takes part in
    /// the decision (only a pin whose pool is still configured takes part at all).
    pub(super) fn read_pin(&self, session: &Session, ctx: &mut RequestCtx) -> PinUse {
        let pinner = &self.settings.pin;
        let req = session.req_header();
        let kind = classify::classify(
            &req.method,
            &req.headers,
            req.uri.path(),
            &pinner.settings.assets,
        );
        ctx.page = kind == Kind::Page;
        let now = unix_now();
        let pin = match pinner.read(&req.headers, now) {
            Read::Absent => return PinUse::None,
            Read::Rejected(why) => {
                self.settings.metrics.pin_rejected(why.label());
                return PinUse::None;
            }
            Read::Valid(pin) => pin,
        };
        let target = match pin.pool.as_str() {
            BASE_POOL => Target::Base,
            "gray" if self.pools.get("gray").is_some() => Target::Gray,
            name => match self.pools.get(name) {
                Some(_) => Target::Named(name.into()),
                None => {
                    // Signed by us, but for a pool this config no longer has.
                    self.settings.metrics.pin_rejected("stale");
                    return PinUse::None;
                }
            },
        };
        let age = Pinner::age(&pin, now);
        let grace = pinner.settings.grace;
        // The path test only matters past the grace: skip it on the common path.
        let asset_path = kind == Kind::Asset
            && age > grace.as_secs()
            && pinner.settings.assets.matches(req.uri.path());
        ctx.pin = Some(pin);
        match scope::scope(kind, asset_path, age, grace) {
            Scope::Follow => PinUse::Follow(target),
            Scope::IfStillDecided => PinUse::IfStillDecided(target),
            Scope::Ignore => PinUse::None,
        }
    }

    /// The decision with the pin's scope applied: an asset path past the grace keeps its pin's
    /// build (reason `sticky`) when the fresh decision still names the pin's pool; otherwise the
    /// fresh decision stands and the pin is not followed.
    pub(super) fn with_pin_scope(&self, pin_use: &PinUse, decision: Decision) -> Decision {
        match pin_use {
            PinUse::IfStillDecided(pinned) if *pinned == decision.target => Decision {
                reason: "sticky",
                ..decision
            },
            _ => decision,
        }
    }

    /// A server of a sticky asset's pinned build (`None` at once for other requests). While
    /// the build is configured but has no usable server, waits for one — polling, async — until
    /// the request's or the build's `build_wait` is over, and tries a server that refused it
    /// again after a backoff. `None`: the build is gone; the caller takes any server.
    pub(super) async fn pick_sticky(&self, ctx: &mut RequestCtx, pool: &Arc<Pool>) -> Option<Pick> {
        if ctx.miss_retry || !Arc::ptr_eq(pool, self.pools.get(&ctx.pin.as_ref()?.pool)?) {
            return None;
        }
        let build = self.wanted_build(ctx)?.to_string();
        let outages = &self.settings.pin.outages;
        if let Some(w) = &mut ctx.wait {
            // Back here after a failed attempt on the build: back off before the same server.
            w.retry_at = Instant::now() + retry_backoff(w.attempts);
        }
        loop {
            let now = Instant::now();
            let retry_tried = ctx.wait.is_some_and(|w| now >= w.retry_at);
            if let Some(server) = select::pick_build(pool, &build, &ctx.tried, retry_tried) {
                if let Some(w) = &mut ctx.wait {
                    w.attempts += 1;
                }
                return Some(Pick {
                    server,
                    pool: pool.clone(),
                    fell_back: false,
                    build_gone: false,
                });
            }
            if !select::build_configured(pool, &build) {
                return None;
            }
            let wait = match ctx.wait {
                Some(w) => w,
                None => {
                    let until = outages.unusable(&pool.name, &build, now)?;
                    let w = PinWait {
                        until,
                        retry_at: now + retry_backoff(0),
                        attempts: 0,
                    };
                    ctx.wait = Some(w);
                    w
                }
            };
            if now >= wait.until || wait.attempts >= MAX_WAIT_ATTEMPTS {
                // Counted once per request: the build stays out for the ones that follow.
                outages.unusable(&pool.name, &build, now);
                return None;
            }
            tokio::time::sleep(WAIT_POLL.min(wait.until - now)).await;
        }
    }

    /// May a failed attempt of a sticky asset be retried so that it can wait for its build?
    /// (Beyond `tries`: the wait is bounded by `build_wait` and [`MAX_WAIT_ATTEMPTS`].)
    pub(super) fn may_wait_retry(&self, ctx: &RequestCtx) -> bool {
        if self.wanted_build(ctx).is_none()
            || ctx.miss_retry
            || ctx.reason != "sticky"
            || self.settings.pin.settings.build_wait.is_zero()
        {
            return false;
        }
        ctx.wait
            .is_none_or(|w| Instant::now() < w.until && w.attempts < MAX_WAIT_ATTEMPTS)
    }

    /// A sticky asset got an answer from its build: any outage of that build is over.
    fn build_answered(&self, ctx: &RequestCtx) {
        if let (Some(pin), Some(pool), Some(server), true) =
            (&ctx.pin, &ctx.pool, &ctx.server, ctx.sticky)
        {
            if select::build_of(server, pool) == pin.build {
                self.settings.pin.outages.recovered(&pool.name, &pin.build);
            }
        }
    }

    /// The pinned build a selection should want: a sticky asset on its pinned pool.
    pub(super) fn wanted_build<'c>(&self, ctx: &'c RequestCtx) -> Option<&'c str> {
        let pin = ctx.pin.as_ref().filter(|_| ctx.sticky && !ctx.routed)?;
        Some(pin.build.as_str())
    }

    /// The one server for the asset-miss retry: another build, pinned pool first, then the other
    /// frontend pools (base, gray).
    pub(super) fn pick_for_miss(&self, ctx: &RequestCtx) -> Option<Pick> {
        let pin = ctx.pin.as_ref()?;
        let pinned = self.pools.get(&pin.pool)?;
        let gray = self.pools.get("gray");
        let mut order = [Some(pinned), Some(&self.base), gray];
        // The pinned pool is already first; never list a pool twice.
        for slot in order.iter_mut().skip(1) {
            if slot.is_some_and(|p| std::sync::Arc::ptr_eq(p, pinned)) {
                *slot = None;
            }
        }
        let pools: Vec<_> = order.into_iter().flatten().collect();
        select::pick_elsewhere(&pools, &pin.build, &ctx.tried)
    }

    /// Could the asset-miss retry find a server? (Does not move the round robin.)
    fn miss_retry_possible(&self, ctx: &RequestCtx) -> bool {
        let Some(pin) = &ctx.pin else { return false };
        [
            self.pools.get(&pin.pool),
            Some(&self.base),
            self.pools.get("gray"),
        ]
        .into_iter()
        .flatten()
        .any(|pool| {
            pool.has_usable(|s| {
                !ctx.tried.contains(&s.spec.addr) && select::build_of(s, pool) != pin.build
            })
        })
    }

    /// Looks at an asset's upstream answer before anything reaches the client: a pinned asset's
    /// 404 is retried once on another build; HTML for a script/style/image is never passed on.
    pub(super) fn check_asset_miss(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        resp: &ResponseHeader,
    ) -> pingora::Result<()> {
        self.build_answered(ctx);
        if ctx.page {
            return Ok(());
        }
        let s = &self.settings.pin.settings;
        let req = session.req_header();
        let status = resp.status.as_u16();
        let html = s.reject_html
            && (200..300).contains(&status)
            && is_html(resp)
            && classify::html_is_never_right(&req.headers, req.uri.path());
        let pinned_404 = status == 404 && self.wanted_build(ctx).is_some();
        if !html && !pinned_404 {
            return Ok(());
        }
        let safe = req.method == http::Method::GET || req.method == http::Method::HEAD;
        if s.retry_missing
            && safe
            && !ctx.miss_retry
            && self.wanted_build(ctx).is_some()
            && self.miss_retry_possible(ctx)
        {
            ctx.miss_retry = true;
            self.settings.metrics.asset_miss("retried");
            let mut e = Error::explain(
                ErrorType::HTTPStatus(404),
                "pinned asset missing in its build: trying another build once",
            );
            e.set_retry(true);
            return Err(e);
        }
        if html {
            self.settings.metrics.asset_miss("blocked");
            // fail_to_proxy answers a plain 404: an SPA fallback's index.html is never an asset.
            return Err(Error::explain(
                ErrorType::HTTPStatus(404),
                "an asset was answered with HTML (SPA fallback): sent a plain 404 instead",
            ));
        }
        self.settings.metrics.asset_miss("passed");
        Ok(())
    }

    /// The `Set-Cookie` value this response carries, if any; records the event in `ctx`.
    pub(super) fn pin_cookie(
        &self,
        ctx: &mut RequestCtx,
        status: u16,
    ) -> Option<http::HeaderValue> {
        let pinner = &self.settings.pin;
        // A server error is not worth pinning; a miss retry served another tab's build.
        if !pinner.settings.enabled || ctx.routed || ctx.miss_retry || status >= 500 {
            return None;
        }
        let (pool, server) = (ctx.pool.as_ref()?, ctx.server.as_ref()?);
        let build = select::build_of(server, pool);
        let same = ctx
            .pin
            .as_ref()
            .map(|p| p.pool == pool.name && p.build == build);
        let now = unix_now();
        let event = match (ctx.page, same) {
            (true, None) => "new",
            (true, Some(false)) => "changed",
            (true, Some(true)) => match &ctx.pin {
                Some(p) if pinner.refresh_due(p, now) => "refreshed",
                _ => return None,
            },
            // An asset moves its pin only when it could not follow it.
            (false, Some(false)) if ctx.sticky => "repinned",
            (false, _) => return None,
        };
        match pinner.set_cookie_header(&pool.name, build, now, ctx.tls) {
            Ok(v) => {
                ctx.pin_event = Some(event);
                self.settings.metrics.pin_set(event);
                Some(v)
            }
            Err(e) => {
                // Pool and build names are validated tokens; a value that is not a header is a
                // bug to see in the log, not a reason to fail the page.
                log::warn!(
                    "pin: Set-Cookie for {}/{build} is not a header value: {e}",
                    pool.name
                );
                None
            }
        }
    }
}

fn is_html(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let media = ct.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("text/html")
                || media.eq_ignore_ascii_case("application/xhtml+xml")
        })
}
