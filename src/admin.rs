//! The admin listener (loopback by default, never the public port): read-only views of the
//! running proxy in the formats nginx operators already know.
//!
//! - `GET /healthz` — liveness, `ok`.
//! - `GET /upstream_list[?<pool>]` — upsync's `upstream_show` text.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::upstream::upsync_format;
use crate::upstream::Pools;

pub struct AdminApp {
    pub pools: Arc<Pools>,
}

impl AdminApp {
    /// Routes one request; pure apart from reading shared state, so it is unit-testable.
    pub fn route(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
    ) -> Response<Vec<u8>> {
        if method != http::Method::GET && method != http::Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        }
        match path {
            "/healthz" => plain(StatusCode::OK, "ok\n".into()),
            "/upstream_list" => self.upstream_list(query),
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found; try /upstream_list or /healthz\n".into(),
            ),
        }
    }

    /// upsync's `upstream_show`: every pool, or only `?<name>` (case-insensitive).
    fn upstream_list(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let wanted = query.map(str::trim).filter(|q| !q.is_empty());
        let mut out = String::new();
        for pool in self.pools.iter() {
            if wanted.is_some_and(|w| !w.eq_ignore_ascii_case(&pool.name)) {
                continue;
            }
            let snap = pool.snapshot();
            out.push_str(&format!(
                "Upstream name: {}; Backend server count: {}\n",
                pool.name,
                snap.servers.len()
            ));
            for s in &snap.servers {
                out.push_str("        ");
                out.push_str(&upsync_format::render_line(&s.spec));
                out.push('\n');
            }
            out.push('\n');
        }
        if out.is_empty() {
            return plain(
                StatusCode::NOT_FOUND,
                "The upstream you requested does not exist. Please double-check the name\n".into(),
            );
        }
        plain(StatusCode::OK, out)
    }
}

fn plain(status: StatusCode, body: String) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body.into_bytes())
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let mut resp = self.route(&req.method, req.uri.path(), req.uri.query());
        if req.method == http::Method::HEAD {
            resp.body_mut().clear();
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::server::ServerSpec;

    fn app() -> AdminApp {
        let pools = Pools::new([("base", false), ("gray", true)]);
        let mut down = ServerSpec::new("127.0.0.1:2".parse().unwrap(), "127.0.0.1:2");
        down.down = true;
        pools.get("base").unwrap().replace(vec![
            ServerSpec::new("127.0.0.1:1".parse().unwrap(), "127.0.0.1:1"),
            down,
        ]);
        AdminApp {
            pools: Arc::new(pools),
        }
    }

    fn body(r: Response<Vec<u8>>) -> String {
        String::from_utf8(r.into_body()).unwrap()
    }

    #[test]
    fn upstream_list_uses_upsyncs_format() {
        let r = app().route(&http::Method::GET, "/upstream_list", None);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            body(r),
            "Upstream name: base; Backend server count: 2\n\
             \x20       server 127.0.0.1:1 weight=1 max_fails=2 fail_timeout=10s;\n\
             \x20       server 127.0.0.1:2 weight=1 max_fails=2 fail_timeout=10s down;\n\
             \n\
             Upstream name: gray; Backend server count: 0\n\n"
        );
    }

    #[test]
    fn upstream_list_filters_by_name_case_insensitively() {
        let b = body(app().route(&http::Method::GET, "/upstream_list", Some("GRAY")));
        assert_eq!(b, "Upstream name: gray; Backend server count: 0\n\n");
        let r = app().route(&http::Method::GET, "/upstream_list", Some("nope"));
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn only_get_and_head() {
        let r = app().route(&http::Method::POST, "/healthz", None);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
