//! The scheme on the request path: which listener and transport a request came in on, the
//! HTTP → HTTPS redirect (nginx's `return 308 https://$host$request_uri;`), `X-Forwarded-Proto`
//! upstream, HSTS on TLS answers, and the `Host` of an HTTP/2 request (its `:authority`).

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use ipnet::IpNet;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::ctx::RequestCtx;
use super::forwarded::host_without_port;
use super::header_edit::HeaderEdit;
use super::GraySplit;
use crate::header_names::X_FORWARDED_PROTO;
use crate::listeners::ListenerTable;

/// The reason logged for a redirected request.
pub const HTTPS_REDIRECT: &str = "https_redirect";

/// What the request path needs to know about listeners and TLS.
#[derive(Debug, Clone, Default)]
pub struct HttpsSettings {
    pub listeners: Arc<ListenerTable>,
    /// `Strict-Transport-Security` on TLS answers.
    pub hsts: Option<HeaderValue>,
    /// Paths served over plain HTTP even on a redirecting listener.
    pub redirect_exempt: Vec<String>,
    /// Peers whose `X-Forwarded-Proto` is believed (`gray.trusted_proxies`).
    pub trusted_proxies: Vec<IpNet>,
}

impl HttpsSettings {
    pub fn new(config: &crate::config::Config, listeners: Arc<ListenerTable>) -> HttpsSettings {
        HttpsSettings {
            listeners,
            // Validated in config::tls.
            hsts: config
                .tls
                .hsts
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok()),
            redirect_exempt: config.tls.redirect_exempt.clone(),
            trusted_proxies: config.gray.trusted_proxies.clone(),
        }
    }
}

/// `https://host[:port]/path?query`; the port only when it is not 443.
pub fn redirect_location(host: &str, port: u16, path_and_query: &str) -> String {
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    }
}

pub fn is_exempt(path: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| path.starts_with(p.as_str()))
}

/// The `X-Forwarded-Proto` sent upstream: a trusted proxy's own `http`/`https` is kept (TLS ended
/// before it), anything else is replaced by how the request reached us.
pub fn forwarded_proto(client_sent: Option<&[u8]>, peer_trusted: bool, tls: bool) -> &'static str {
    match client_sent.filter(|_| peer_trusted).map(<[u8]>::trim_ascii) {
        Some(v) if v.eq_ignore_ascii_case(b"https") => "https",
        Some(v) if v.eq_ignore_ascii_case(b"http") => "http",
        _ if tls => "https",
        _ => "http",
    }
}

impl GraySplit {
    /// Early, once per request: the transport (TLS or not) and listener, and `Host` from `:authority` on an
    /// HTTP/2 request that has none (RFC 9113 §8.3.1), so that rules, the pin and the `Host` sent
    /// upstream read one header whatever the protocol.
    pub(super) fn read_transport(&self, session: &mut Session, ctx: &mut RequestCtx) {
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let listener = session
            .server_addr()
            .and_then(|a| a.as_inet())
            .and_then(|a| self.settings.https.listeners.find(*a));
        ctx.redirect_https = listener.and_then(|l| l.https_redirect).filter(|_| !ctx.tls);
        let req = session.req_header_mut();
        if !req.headers.contains_key(http::header::HOST) {
            if let Some(authority) = req.uri.authority().map(|a| a.as_str().to_string()) {
                // A valid authority is a valid header value; a failure only leaves Host absent.
                let _ = req.insert_header(http::header::HOST, authority);
            }
        }
    }

    /// On a redirecting plain listener: answers with a 308 to the same URL on https and returns
    /// `true` (the request is done), unless the path is exempt.
    pub(super) async fn redirect_to_https(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let Some(port) = ctx.redirect_https else {
            return Ok(false);
        };
        let req = session.req_header();
        if is_exempt(req.uri.path(), &self.settings.https.redirect_exempt) {
            return Ok(false);
        }
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(host_without_port);
        let (status, location) = match host {
            Some(host) => {
                let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
                (308, Some(redirect_location(&host, port, pq)))
            }
            // No name to redirect to (HTTP/1.0 without Host): nginx would use server_name.
            None => (400, None),
        };
        let body = Bytes::from(match &location {
            Some(l) => format!("308 Permanent Redirect: {l}\n"),
            None => "400 Bad Request: a Host header is needed for the https redirect\n".into(),
        });
        let mut resp = ResponseHeader::build(status, Some(4))?;
        if let Some(l) = location {
            resp.insert_header(http::header::LOCATION, l)?;
        }
        resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        ctx.reason = HTTPS_REDIRECT;
        let head_only = req.method == http::Method::HEAD;
        session
            .write_response_header(Box::new(resp), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(true)
    }

    /// `X-Forwarded-Proto` on the upstream request.
    pub(super) fn set_forwarded_proto(
        &self,
        session: &Session,
        req: &mut impl HeaderEdit,
        ctx: &RequestCtx,
    ) -> Result<()> {
        let trusted = ctx.peer_ip.is_some_and(|ip| {
            crate::gray::client_ip::is_trusted(ip, &self.settings.https.trusted_proxies)
        });
        let sent = session
            .req_header()
            .headers
            .get(&crate::header_names::X_FORWARDED_PROTO)
            .map(HeaderValue::as_bytes);
        let proto = forwarded_proto(sent, trusted, ctx.tls);
        req.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto))
    }

    /// HSTS on answers sent over TLS (never over plain HTTP: RFC 6797 §7.2).
    pub(super) fn add_hsts(&self, resp: &mut impl HeaderEdit, ctx: &RequestCtx) -> Result<()> {
        if let (true, Some(v)) = (ctx.tls, &self.settings.https.hsts) {
            resp.insert(&http::header::STRICT_TRANSPORT_SECURITY, v.clone())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_location_keeps_path_and_query() {
        assert_eq!(
            redirect_location("example.com", 443, "/a/b?x=1&y=%20"),
            "https://example.com/a/b?x=1&y=%20"
        );
        assert_eq!(
            redirect_location("example.com", 8443, "/"),
            "https://example.com:8443/"
        );
        assert_eq!(redirect_location("[::1]", 443, "*"), "https://[::1]/");
    }

    #[test]
    fn exemptions_are_prefixes() {
        let p = vec!["/.well-known/acme-challenge/".to_string()];
        assert!(is_exempt("/.well-known/acme-challenge/tok", &p));
        assert!(!is_exempt("/.well-known/other", &p));
        assert!(!is_exempt("/", &[]));
    }

    #[test]
    fn forwarded_proto_is_ours_unless_a_trusted_proxy_said() {
        assert_eq!(forwarded_proto(None, false, true), "https");
        assert_eq!(forwarded_proto(None, true, false), "http");
        assert_eq!(
            forwarded_proto(Some(b"https"), false, false),
            "http",
            "untrusted: ours"
        );
        assert_eq!(
            forwarded_proto(Some(b" HTTPS "), true, false),
            "https",
            "trusted: theirs"
        );
        assert_eq!(forwarded_proto(Some(b"http"), true, true), "http");
        assert_eq!(
            forwarded_proto(Some(b"gopher"), true, true),
            "https",
            "garbage: ours"
        );
    }
}
