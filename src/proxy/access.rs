//! The access-log line of one request (crate::access_log formats and writes it, off this thread).

use std::time::SystemTime;

use pingora::proxy::Session;

use super::ctx::RequestCtx;
use super::GraySplit;
use crate::access_log::Entry;

impl GraySplit {
    /// What the access log says about this request. `build` is the answering server's build.
    pub(super) fn access_entry<'a>(
        &self,
        session: &'a Session,
        ctx: &'a RequestCtx,
        status: u16,
        build: &'a str,
    ) -> Entry<'a> {
        let req = session.req_header();
        let header = |name: http::header::HeaderName| req.headers.get(name).map(|v| v.as_bytes());
        Entry {
            // As nginx's realip module: behind a trusted proxy, the client it names.
            client: ctx.client.as_ref().map(|c| c.ip).or(ctx.peer_ip),
            time: SystemTime::now(),
            method: req.method.as_str(),
            uri: req.uri.path_and_query().map_or("/", |p| p.as_str()),
            version: version(req.version),
            status,
            body_bytes: session.body_bytes_sent(),
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
            pool: ctx.pool.as_ref().map_or("-", |p| p.name.as_str()),
            build: if ctx.server.is_some() { build } else { "-" },
            server: ctx.server.as_ref().map_or("-", |s| s.spec.name.as_str()),
            reason: ctx.reason,
            pin: ctx.pin_event.unwrap_or("-"),
            tries: ctx.tried.len(),
            request_time: ctx.started.elapsed(),
            request_id: ctx.request_id.as_ref().map(|v| v.as_bytes()),
        }
    }
}

fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}
