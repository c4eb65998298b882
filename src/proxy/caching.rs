//! Caching on the request path: build-specific validators, and what caches may keep of a
//! response decided per client (the logic is pure, in `crate::http_cache`).
//!
//! - `upstream_request_filter` (the server, so its build, is known): [`GraySplit::translate_validators`]
//!   turns a conditional request's build-tagged validators back into the server's own, and
//!   removes those of another build's copy, so a `304` never comes from a build other than the
//!   one the client holds. Validators without a tag are believed only when the request's pin
//!   names this server's pool and build. Pass-through routes and hashed immutable files
//!   (content-addressed: any build's `304` is right) are left alone.
//! - `response_filter`: [`GraySplit::shape_response`] adds the pin and visitor cookies, makes a
//!   response whose content depends on the decision `private` (`Vary` naming what the decision
//!   read), and tags its `ETag` with the build. A response that carries graysplit's
//!   `Set-Cookie` is always private, whatever `[cache] decided` says: a shared cache would hand
//!   the cookie to everyone.

use http::header::{
    CACHE_CONTROL, ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
    LAST_MODIFIED, RANGE, SET_COOKIE, VARY,
};
use http::{HeaderMap, HeaderName};
use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::header_edit::{self, HeaderEdit};
use super::select;
use super::GraySplit;
use crate::gray::visitor;
use crate::http_cache::cache_control::{self, CDN_HEADERS};
use crate::http_cache::validators::{self, Conditional, Edit};
use crate::http_cache::Decided;

/// The header's value, when it is present once and is text (several copies of a validator are
/// not something a browser sends: they are read as one unknown value).
fn single<'h>(req: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    let mut all = req.get_all(name).iter();
    let first = all.next()?;
    match (all.next(), first.to_str()) {
        (None, Ok(v)) => Some(v),
        _ => Some("\u{0}"),
    }
}

fn apply(req: &mut impl HeaderEdit, name: &HeaderName, edit: Edit) -> pingora::Result<()> {
    match edit {
        Edit::Keep => {}
        Edit::Remove => {
            req.remove(name);
        }
        Edit::Set(v) => req.insert(name, header_edit::value(v)?)?,
    }
    Ok(())
}

impl GraySplit {
    /// Makes the request's validators speak for the chosen server's build (see the module docs).
    pub(super) fn translate_validators(
        &self,
        session: &Session,
        req: &mut impl HeaderEdit,
        ctx: &RequestCtx,
    ) -> pingora::Result<()> {
        let method = &session.req_header().method;
        if ctx.routed
            || ctx.immutable
            || !(method == http::Method::GET || method == http::Method::HEAD)
        {
            return Ok(());
        }
        let (Some(server), Some(pool)) = (&ctx.server, &ctx.pool) else {
            return Ok(());
        };
        let headers = req.map();
        let c = Conditional {
            if_none_match: single(headers, &IF_NONE_MATCH),
            if_modified_since: headers.contains_key(IF_MODIFIED_SINCE),
            if_match: single(headers, &IF_MATCH),
            if_unmodified_since: headers.contains_key(IF_UNMODIFIED_SINCE),
            if_range: single(headers, &IF_RANGE),
            range: headers.contains_key(RANGE),
        };
        let conditional = c.if_none_match.is_some()
            || c.if_modified_since
            || c.if_match.is_some()
            || c.if_unmodified_since
            || c.if_range.is_some();
        if !conditional {
            return Ok(());
        }
        let build = select::build_of(server, pool);
        let trusted = ctx
            .pin
            .as_ref()
            .is_some_and(|p| p.pool == pool.name && p.build == build);
        let edits = validators::translate(&c, build, trusted);
        let outcome = if edits.none() {
            "passed"
        } else if [
            &edits.if_none_match,
            &edits.if_modified_since,
            &edits.if_range,
        ]
        .iter()
        .any(|e| **e == Edit::Remove)
        {
            "dropped"
        } else {
            "translated"
        };
        self.settings.metrics.conditional(outcome);
        apply(req, &IF_NONE_MATCH, edits.if_none_match)?;
        apply(req, &IF_MODIFIED_SINCE, edits.if_modified_since)?;
        apply(req, &IF_MATCH, edits.if_match)?;
        apply(req, &IF_UNMODIFIED_SINCE, edits.if_unmodified_since)?;
        apply(req, &IF_RANGE, edits.if_range)?;
        apply(req, &RANGE, edits.range)
    }

    /// Cookies, `Cache-Control`/`Vary` and the build-tagged `ETag` of a response.
    pub(super) fn shape_response(
        &self,
        ctx: &mut RequestCtx,
        status: u16,
        resp: &mut impl HeaderEdit,
    ) -> pingora::Result<()> {
        let mut cookie_set = false;
        if let Some(cookie) = self.pin_cookie(ctx, status) {
            resp.append(&SET_COOKIE, cookie)?;
            cookie_set = true;
        }
        let visitor = ctx
            .visitor
            .as_deref()
            .filter(|_| status < 500)
            .and_then(|id| visitor::set_cookie(&self.gray.settings.visitor, id));
        if let Some(cookie) = visitor {
            resp.append(&SET_COOKIE, header_edit::value(cookie)?)?;
            cookie_set = true;
        }
        let policy = &self.settings.cache;
        // A pass-through route's answer depends on the decision only through the headers the
        // decision sends there.
        let decided = !ctx.routed
            || ctx
                .decided
                .as_ref()
                .is_some_and(|d| !self.gray.headers_for(d).is_empty());
        let hashed = ctx.immutable && !ctx.routed;
        let private = decided && !hashed && policy.settings.decided == Decided::Private;
        if cookie_set || private {
            let vary: &[String] = if ctx.page {
                &policy.vary_pages
            } else {
                &policy.vary_assets
            };
            make_private(resp, vary)?;
        }
        let tag = policy.settings.tag_validators
            && !ctx.routed
            && !hashed
            && ((200..300).contains(&status) || status == 304);
        if let (true, Some(server), Some(pool)) = (tag, &ctx.server, &ctx.pool) {
            let build = select::build_of(server, pool);
            let etag = resp.map().get(ETAG).and_then(|v| v.to_str().ok());
            let lm = resp.map().contains_key(LAST_MODIFIED);
            if let Some(e) = validators::response_etag(etag, lm, status == 304, build) {
                resp.insert(&ETAG, header_edit::value(e)?)?;
            }
        }
        Ok(())
    }
}

/// A header value as text, if it is (a value that is not is left out of a merge).
fn text(v: &http::HeaderValue) -> Option<&str> {
    v.to_str().ok()
}

/// `private` merged into `Cache-Control`, CDN cache headers removed, `Vary` completed.
fn make_private(resp: &mut impl HeaderEdit, vary: &[String]) -> pingora::Result<()> {
    // The upstream's values are read in place (no list is collected per response).
    let cc = cache_control::private(resp.map().get_all(CACHE_CONTROL).iter().filter_map(text));
    resp.insert(&CACHE_CONTROL, header_edit::value(cc)?)?;
    // One walk over the names the answer has (a dozen, nearly always none of these) is cheaper
    // than hashing four long names for four removals.
    if resp.map().keys().any(|k| {
        let name = k.as_str();
        name.ends_with("-control") && CDN_HEADERS.iter().any(|h| h.as_str() == name)
    }) {
        for h in &CDN_HEADERS {
            resp.remove(h);
        }
    }
    let merged = cache_control::vary(resp.map().get_all(VARY).iter().filter_map(text), vary);
    if let Some(v) = merged {
        resp.insert(&VARY, header_edit::value(v)?)?;
    }
    Ok(())
}
