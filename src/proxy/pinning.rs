//! The pin on the request path: read it, follow it, (re-)issue it, and guard assets from
//! another build's `index.html`.
//!
//! - `request_filter`: [`GraySplit::read_pin`] classifies the request and verifies its pin cookie
//!   (an HMAC only when the cookie is present); rejected cookies are counted and ignored.
//! - `upstream_peer`: a sticky asset asks [`select::pick`] for its pin's build; none usable →
//!   any server of the pool (`build_gone`), and the response re-pins.
//! - `upstream_response_filter`: [`GraySplit::check_asset_miss`]. A pinned asset answered 404 may
//!   belong to another build (a tab loaded before the pin moved, a rolling deploy): it is retried
//!   once on a server of another build — before anything reached the client, so the retry is
//!   invisible. A script/style/image answered with HTML is an SPA fallback's `index.html`: it is
//!   treated like a 404, and, when no retry is left, replaced by a plain 404. A real 404 is
//!   passed on untouched.
//! - `response_filter`: [`GraySplit::pin_cookie`] decides whether this response carries a
//!   `Set-Cookie`: a page whose served pool/build differs from its pin (or that had none), a
//!   page whose pin is due for a refresh, an asset whose pinned build was gone.

use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use super::ctx::RequestCtx;
use super::select::{self, Pick};
use super::GraySplit;
use crate::config::BASE_POOL;
use crate::gray::decision::Target;
use crate::pin::classify::{self, Kind};
use crate::pin::{unix_now, Read};

impl GraySplit {
    /// Classifies the request and reads its pin into `ctx`. Returns the pinned pool as a
    /// decision target (only for a pin whose pool is still configured).
    pub(super) fn read_pin(&self, session: &Session, ctx: &mut RequestCtx) -> Option<Target> {
        let pinner = &self.settings.pin;
        let req = session.req_header();
        ctx.page = classify::classify(
            &req.method,
            &req.headers,
            req.uri.path(),
            &pinner.settings.assets,
        ) == Kind::Page;
        let pin = match pinner.read(&req.headers, unix_now()) {
            Read::Absent => return None,
            Read::Rejected(why) => {
                self.settings.metrics.pin_rejected(why.label());
                return None;
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
                    return None;
                }
            },
        };
        ctx.pin = Some(pin);
        Some(target)
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
    pub(super) fn pin_cookie(&self, ctx: &mut RequestCtx, status: u16) -> Option<String> {
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
        ctx.pin_event = Some(event);
        self.settings.metrics.pin_set(event);
        Some(if ctx.tls {
            pinner.set_cookie_tls(&pool.name, build, now)
        } else {
            pinner.set_cookie(&pool.name, build, now)
        })
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
