//! How the request path edits headers: through Pingora's API, or straight on the `HeaderMap`.
//!
//! Pingora's `insert_header` turns every name into its case-keeping form and parses it back,
//! even for a header that keeps no case map: about 1k instructions per header, and for a name
//! the `http` crate has no constant for (`x-forwarded-for`, `x-request-id`) two allocations.
//! With `server.header_case = "normalize"` (the default) there is no case to keep, so the
//! phases that add headers take the `http` parts out of Pingora's header once, edit the
//! `HeaderMap` directly and put the parts back (bench/README.md "Header edits"). With
//! `"preserve"`, or a request whose target only Pingora's header can carry, the same code runs
//! on Pingora's header through this trait.

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType, Result};

/// Headers being shaped by a filter phase.
pub(super) trait HeaderEdit {
    /// The headers as they are now.
    fn map(&self) -> &HeaderMap;
    /// Replaces every value of `name` with `value`.
    fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()>;
    /// Adds `value` after the values `name` already has.
    fn append(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()>;
    /// Removes every value of `name`.
    fn remove(&mut self, name: &HeaderName);
}

/// A header value from text the request path made or was configured with.
pub(super) fn value(text: impl TryInto<HeaderValue>) -> Result<HeaderValue> {
    text.try_into()
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid header value"))
}

/// A header value from text compiled into graysplit (a decision reason): checked, not copied.
pub(super) fn static_value(text: &'static str) -> Result<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from_static(text.as_bytes()))
        .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "invalid header value"))
}

/// Room made before the edits for the headers a phase adds (the request: Host, X-Forwarded-For,
/// X-Real-IP, X-Forwarded-Proto, the request id, the decision's headers; the answer: cookies,
/// Cache-Control, Vary, ETag, the request id, debug headers, HSTS). Pingora sizes a parsed head's
/// map for the headers it has, so without this each edit phase grows it once or twice, every
/// growth a rehash of every header (bench/README.md "Header edits").
const ADDED: usize = 8;

fn too_many() -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, "too many headers")
}

impl HeaderEdit for HeaderMap {
    fn map(&self) -> &HeaderMap {
        self
    }
    fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()> {
        // A `HeaderName` clone is a reference count or a static: no parse, no copy.
        self.try_insert(name.clone(), value)
            .map_err(|_| too_many())?;
        Ok(())
    }
    fn append(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()> {
        self.try_append(name.clone(), value)
            .map_err(|_| too_many())?;
        Ok(())
    }
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
}

/// Pingora's two header types have the same editing API (keeping their case maps).
macro_rules! through_pingora {
    ($($header:ty),*) => {$(
        impl HeaderEdit for $header {
            fn map(&self) -> &HeaderMap {
                &self.headers
            }
            fn insert(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()> {
                self.insert_header(name, value)
            }
            fn append(&mut self, name: &HeaderName, value: HeaderValue) -> Result<()> {
                self.append_header(name, value).map(|_| ())
            }
            fn remove(&mut self, name: &HeaderName) {
                self.remove_header(name);
            }
        }
    )*};
}
through_pingora!(RequestHeader, ResponseHeader);

/// Whether `req`'s target is what its URI says: not absolute-form, CONNECT, or non-UTF-8, which
/// Pingora keeps beside the URI and `http` parts cannot carry.
pub(super) fn target_round_trips(req: &RequestHeader) -> bool {
    req.raw_path_is_utf8()
        && req.uri.path_and_query().map(|p| p.as_str().as_bytes()) == Some(req.raw_path())
}

/// Whether `req` can be taken apart into `http` parts and rebuilt without losing anything: no
/// case map to keep, and a target that round-trips.
pub(super) fn request_is_plain(req: &RequestHeader) -> bool {
    !req.has_case() && target_round_trips(req)
}

/// Runs `edit` on `req`'s `HeaderMap` directly; a case map `req` had is dropped. `req`'s target
/// must [round-trip](target_round_trips).
pub(super) fn on_request_map<T>(
    req: &mut RequestHeader,
    edit: impl FnOnce(&mut http::request::Parts) -> T,
) -> T {
    let send_end_stream = req.send_end_stream();
    // A placeholder that allocates nothing: an empty `HeaderMap`, the static "/" URI.
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, empty));
    parts.headers.reserve(ADDED);
    let out = edit(&mut parts);
    *req = RequestHeader::from(parts);
    if let Some(end) = send_end_stream {
        req.set_send_end_stream(end);
    }
    out
}

/// Runs `edit` on `resp`'s `HeaderMap` directly. A case map `resp` had is dropped (the caller
/// chose `normalize`); a reason phrase other than the status code's own is kept.
pub(super) fn on_response_map<T>(
    resp: &mut ResponseHeader,
    edit: impl FnOnce(&mut http::response::Parts) -> T,
) -> T {
    let own_reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != resp.status.canonical_reason())
        .map(str::to_owned);
    let empty = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, empty));
    parts.headers.reserve(ADDED);
    let out = edit(&mut parts);
    *resp = ResponseHeader::from(parts);
    if own_reason.is_some() {
        // Cannot fail: it only stores the text.
        let _ = resp.set_reason_phrase(own_reason.as_deref());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_req(req: &RequestHeader) -> String {
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).expect("text")
    }

    fn wire_resp(resp: &ResponseHeader) -> String {
        let mut buf = Vec::new();
        resp.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).expect("text")
    }

    /// The same edits, made through each implementation.
    fn edits(h: &mut impl HeaderEdit) -> Result<()> {
        let custom = HeaderName::from_static("x-real-ip");
        h.insert(&http::header::HOST, value("upstream.internal")?)?;
        h.append(&http::header::SET_COOKIE, value("a=1")?)?;
        h.append(&http::header::SET_COOKIE, value("b=2")?)?;
        h.insert(&custom, value("10.0.0.1")?)?;
        h.remove(&http::header::COOKIE);
        assert_eq!(
            h.map().get(&custom).map(HeaderValue::as_bytes),
            Some(&b"10.0.0.1"[..])
        );
        Ok(())
    }

    #[test]
    fn the_map_and_pingoras_api_make_the_same_request() {
        let build = || {
            let mut r = RequestHeader::build_no_case("GET", b"/a?b=1", None).expect("request");
            r.insert_header("host", "shop.example").expect("host");
            r.insert_header("cookie", "gs=1").expect("cookie");
            r.set_send_end_stream(false);
            r
        };
        let mut through_api = build();
        edits(&mut through_api).expect("api");
        let mut direct = build();
        assert!(request_is_plain(&direct));
        on_request_map(&mut direct, |p| edits(&mut p.headers)).expect("map");
        assert_eq!(wire_req(&direct), wire_req(&through_api));
        assert_eq!(
            wire_req(&direct),
            // Removing `cookie` moved the last name into its place (`HeaderMap::remove`).
            "Host: upstream.internal\r\nx-real-ip: 10.0.0.1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        );
        assert_eq!(direct.raw_path(), b"/a?b=1");
        assert_eq!(direct.send_end_stream(), through_api.send_end_stream());
    }

    #[test]
    fn a_request_only_pingora_can_carry_is_not_plain() {
        let absolute =
            RequestHeader::build_no_case("GET", b"http://shop.example/a", None).expect("request");
        assert!(!request_is_plain(&absolute));
        let lossy = RequestHeader::build_no_case("GET", b"/caf\xe9", None).expect("request");
        assert!(!request_is_plain(&lossy));
        let cased = RequestHeader::build("GET", b"/", None).expect("request");
        assert!(!request_is_plain(&cased));
    }

    #[test]
    fn a_response_loses_only_its_case_map() {
        let mut resp = ResponseHeader::build(200, None).expect("response");
        resp.set_reason_phrase(Some("Fine")).expect("reason");
        for (name, value) in [
            ("Content-Type", "text/html"),
            ("ETag", "\"1\""),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ] {
            resp.append_header(name, value).expect("header");
        }
        on_response_map(&mut resp, |_| ());
        assert!(!resp.has_case());
        assert_eq!(resp.status.as_u16(), 200);
        assert_eq!(resp.get_reason_phrase(), Some("Fine"));
        assert_eq!(
            wire_resp(&resp),
            "Content-Type: text/html\r\netag: \"1\"\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
        );

        let mut plain = ResponseHeader::build(404, None).expect("response");
        plain.set_reason_phrase(Some("Not Found")).expect("reason");
        plain.append_header("Server", "nginx").expect("header");
        on_response_map(&mut plain, |_| ());
        assert_eq!(plain.get_reason_phrase(), Some("Not Found"));
        assert_eq!(wire_resp(&plain), "Server: nginx\r\n");
    }

    #[test]
    fn a_response_keeps_status_its_own_reason_and_headers() {
        let mut resp = ResponseHeader::build(299, None).expect("response");
        resp.set_reason_phrase(Some("Fine Really")).expect("reason");
        resp.append_header("X-Upstream", "1").expect("header");
        on_response_map(&mut resp, |p| edits(&mut p.headers)).expect("map");
        assert_eq!(resp.status.as_u16(), 299);
        assert_eq!(resp.get_reason_phrase(), Some("Fine Really"));
        assert!(!resp.has_case());
        assert_eq!(
            wire_resp(&resp),
            "x-upstream: 1\r\nHost: upstream.internal\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nx-real-ip: 10.0.0.1\r\n"
        );
    }
}
