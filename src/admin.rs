//! The admin listener (loopback by default, never the public port): read-only views of the
//! running proxy in the formats nginx operators already know.
//!
//! - `GET /healthz` — liveness, `ok`.
//! - `GET /upstream_list[?<pool>]` — upsync's `upstream_show` text.
//! - `GET /status?format=json` — pools and Consul watchers as JSON.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::config::duration;
use crate::upstream::consul::ConsulStatus;
use crate::upstream::upsync_format;
use crate::upstream::Pools;

pub struct AdminApp {
    pub pools: Arc<Pools>,
    pub consul: Arc<ConsulStatus>,
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
            "/status" => self.status(query),
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found; try /upstream_list, /status?format=json or /healthz\n".into(),
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

impl AdminApp {
    /// `/status?format=json`. JSON is the only format so far (and the default).
    fn status(&self, query: Option<&str>) -> Response<Vec<u8>> {
        let format = query
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("format="))
            .unwrap_or("json");
        if format != "json" {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("unsupported format {format:?}; use format=json\n"),
            );
        }
        let body = serde_json::json!({
            "consul": self.consul.to_json(),
            "pools": pools_json(&self.pools),
        });
        let mut body = body.to_string();
        body.push('\n');
        let mut resp = plain(StatusCode::OK, body);
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// `{"<pool>": {"allow_empty": .., "servers": [..]}}`: each pool's current servers and settings.
pub fn pools_json(pools: &Pools) -> serde_json::Value {
    serde_json::Value::Object(
        pools
            .iter()
            .map(|pool| {
                let snap = pool.snapshot();
                let servers: Vec<_> = snap
                    .servers
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "name": s.spec.name,
                            "addr": s.spec.addr.to_string(),
                            "weight": s.spec.weight,
                            "max_fails": s.spec.max_fails,
                            "fail_timeout": duration::format(s.spec.fail_timeout),
                            "down": s.spec.down,
                            "backup": s.spec.backup,
                            "build": s.spec.build,
                        })
                    })
                    .collect();
                let pool_json = serde_json::json!({
                    "allow_empty": pool.allow_empty,
                    "generation": snap.generation,
                    "servers": servers,
                });
                (pool.name.clone(), pool_json)
            })
            .collect(),
    )
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
            consul: Arc::new(ConsulStatus::default()),
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
    fn status_json_lists_pools_and_an_empty_consul_section() {
        let r = app().route(&http::Method::GET, "/status", Some("format=json"));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/json");
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["consul"], serde_json::json!({}));
        let base = &v["pools"]["base"];
        assert_eq!(base["allow_empty"], false);
        assert_eq!(base["servers"][0]["name"], "127.0.0.1:1");
        assert_eq!(base["servers"][0]["fail_timeout"], "10s");
        assert_eq!(base["servers"][1]["down"], true);
        assert_eq!(v["pools"]["gray"]["servers"], serde_json::json!([]));
        let r = app().route(&http::Method::GET, "/status", Some("format=xml"));
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn only_get_and_head() {
        let r = app().route(&http::Method::POST, "/healthz", None);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
