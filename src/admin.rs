//! The admin listener (loopback by default, never the public port): views of the running proxy
//! in the formats nginx operators already know, and a dashboard.
//!
//! - `GET /` — the dashboard ([`dashboard`]): pools and servers, switches, traffic by pool,
//!   build and reason with charts, pins; it reads `/status?format=json` and `/rollout`.
//! - `GET /healthz` — liveness, `ok`. `GET /readyz` — `ready` while the base pool has a usable
//!   server, else 503 (for a load balancer in front of several graysplit instances).
//! - `GET /upstream_list[?<pool>]` — upsync's `upstream_show` text. Servers that may not take
//!   traffic because of their health carry a note in the line's comment (`unhealthy`: active
//!   checks say down; `ejected`: passive failures), so every line still parses as upsync's format.
//! - `GET /upstream_status` and `/status` `[?format=html|csv|json|prometheus][&status=up|down]` —
//!   nginx_upstream_check_module's `check_status` (see [`crate::status_page`]; default format
//!   `admin.status_format`); the JSON also carries `consul`, `pools`, `switches`, `requests`
//!   and `pins`, what the dashboard shows.
//! - `GET /metrics` — Prometheus text (see [`crate::metrics`]).
//! - `GET /decide?...` — a dry run of the gray decision ([`crate::gray::explain`]).
//!
//! With `admin.token` set (required off loopback), every path but `/healthz` and `/readyz`
//! needs it ([`auth`]).

mod auth;
pub mod dashboard;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::{Response, StatusCode};
use log::warn;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::config::admin::AdminSettings;
use crate::config::duration;
use crate::metrics::Metrics;
use crate::status_page::{self, Format};
use crate::upstream::consul::ConsulStatus;
use crate::upstream::server::Server;
use crate::upstream::upsync_format;
use crate::upstream::Pools;

pub struct AdminApp {
    pub pools: Arc<Pools>,
    pub consul: Arc<ConsulStatus>,
    /// For `/decide` (a dry run of the gray decision) and the switches.
    pub gray: Arc<crate::gray::GrayEngine>,
    pub metrics: Arc<Metrics>,
    /// The token and the status page's default format.
    pub settings: AdminSettings,
    /// When the process started (uptime on the dashboard).
    pub started: Instant,
    /// For `/rollout`, its commands and `/simulate`.
    pub rollout: Arc<crate::rollout::Rollout>,
}

impl AdminApp {
    /// Routes one request; pure apart from reading shared state, so it is unit-testable.
    /// (Authorization is checked before, in [`AdminApp::authorize`].)
    pub fn route(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
    ) -> Response<Vec<u8>> {
        if method != http::Method::GET && method != http::Method::HEAD {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        }
        if let Some(page) = dashboard::asset(path) {
            return page;
        }
        match path {
            "/healthz" => plain(StatusCode::OK, "ok\n".into()),
            "/readyz" => self.readyz(),
            "/upstream_list" => self.upstream_list(query),
            "/upstream_status" | "/status" => self.status(path, query),
            "/metrics" => self.metrics(),
            _ => plain(
                StatusCode::NOT_FOUND,
                "not found; try /, /upstream_list, /upstream_status?format=json or /healthz\n"
                    .into(),
            ),
        }
    }

    /// `None` when the request may go on; otherwise the 401 to send.
    pub fn authorize(&self, path: &str, authorization: Option<&[u8]>) -> Option<Response<Vec<u8>>> {
        let token = self.settings.token.as_ref()?;
        if auth::OPEN_PATHS.contains(&path) || auth::authorized(token, authorization) {
            return None;
        }
        let mut resp = plain(
            StatusCode::UNAUTHORIZED,
            "401 Unauthorized: send the admin token, as `Authorization: Bearer <token>` or as \
             the password of HTTP Basic\n"
                .into(),
        );
        for challenge in auth::CHALLENGES {
            resp.headers_mut().append(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static(challenge),
            );
        }
        Some(resp)
    }

    /// `/readyz`: ready while the base pool has a server that may take a request.
    fn readyz(&self) -> Response<Vec<u8>> {
        match self.pools.get(crate::config::BASE_POOL) {
            Some(base) if base.has_usable(|_| true) => plain(StatusCode::OK, "ready\n".into()),
            _ => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no usable server in pool base\n".into(),
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
                let marks: &[&str] = match health_mark(s) {
                    Some(mark) => &[mark],
                    None => &[],
                };
                out.push_str(&upsync_format::render_line_marked(&s.spec, marks));
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

    /// The check module's page; a bad argument is logged (as the module does) and falls back.
    fn status(&self, path: &str, query: Option<&str>) -> Response<Vec<u8>> {
        let q = status_page::Query::parse(query, self.settings.status_format);
        for problem in &q.problems {
            warn!("admin {path}: {problem}");
        }
        let (rows, generation) = status_page::rows(&self.pools, q.filter);
        let body = match q.format {
            Format::Json => status_page::json_text(&rows, generation, &self.state()),
            other => status_page::render(&rows, generation, other),
        };
        with_type(plain(StatusCode::OK, body), q.format.content_type())
    }

    /// What the JSON page carries beside the check module's rows (what the dashboard shows).
    fn state(&self) -> Vec<(&'static str, serde_json::Value)> {
        self.metrics.refresh(&self.pools);
        let sw = self.gray.switches();
        vec![
            ("consul", self.consul.to_json()),
            ("pools", pools_json(&self.pools)),
            (
                "switches",
                serde_json::json!({
                    "enabled": sw.enabled,
                    "all": sw.all,
                    "percent": f64::from(sw.percent_bp) / 100.0,
                    "source": self.gray.switches_source(),
                }),
            ),
            ("requests", serde_json::json!(self.metrics.request_totals())),
            ("pins", self.metrics.pins_json()),
            (
                "process",
                serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "pid": std::process::id(),
                    "uptime_seconds": self.started.elapsed().as_secs(),
                }),
            ),
        ]
    }

    /// `/metrics`: Prometheus text, with per-server gauges and Consul state read now.
    fn metrics(&self) -> Response<Vec<u8>> {
        for pool in self.pools.iter() {
            if let Some(w) = self.consul.get(&pool.name) {
                self.metrics
                    .consul_state(&pool.name, w.errors_total, w.last_success);
            }
        }
        let body = self.metrics.render(&self.pools);
        with_type(plain(StatusCode::OK, body), crate::metrics::CONTENT_TYPE)
    }
}

/// `{"<pool>": {"allow_empty": .., "servers": [..]}}`: each pool's current servers, their
/// settings and their live state.
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
                        let h = &s.health;
                        serde_json::json!({
                            "name": s.spec.name,
                            "addr": s.spec.addr.to_string(),
                            "weight": s.spec.weight,
                            "max_fails": s.spec.max_fails,
                            "fail_timeout": duration::format(s.spec.fail_timeout),
                            "down": s.spec.down,
                            "backup": s.spec.backup,
                            "build": s.spec.build,
                            "effective_build": crate::proxy::select::build_of(s, pool),
                            "health": if h.is_up() { "up" } else { "down" },
                            "checks": h.checks(),
                            "rise": h.rise_count(),
                            "fall": h.fall_count(),
                            "ejected": h.ejected(),
                            "selectable": s.selectable(),
                            "draining": s.draining(),
                            "in_flight": h.in_flight(),
                        })
                    })
                    .collect();
                let pool_json = serde_json::json!({
                    "allow_empty": pool.allow_empty,
                    "checked": pool.checks().is_some(),
                    "generation": snap.generation,
                    "servers": servers,
                });
                (pool.name.clone(), pool_json)
            })
            .collect(),
    )
}

/// The `/upstream_list` note for a server kept from traffic by its health.
fn health_mark(s: &Server) -> Option<&'static str> {
    if !s.health.is_up() {
        Some("unhealthy")
    } else if s.health.ejected() {
        Some("ejected")
    } else {
        None
    }
}

fn with_type(mut resp: Response<Vec<u8>>, content_type: &'static str) -> Response<Vec<u8>> {
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
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

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let authorization = req
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if let Some(denied) = self.authorize(req.uri.path(), authorization) {
            warn!(
                "admin: {} {} from {}: no valid token",
                req.method,
                req.uri.path(),
                session
                    .client_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "-".into())
            );
            return denied;
        }
        let (method, path, query) = (&req.method, req.uri.path(), req.uri.query());
        if let Some((code, v)) =
            crate::rollout::status::serve(&self.rollout, &self.gray, method, path, query).await
        {
            let mut resp = json_response(StatusCode::from_u16(code).unwrap_or(StatusCode::OK), &v);
            if req.method == http::Method::HEAD {
                resp.body_mut().clear();
            }
            return resp;
        }
        if req.uri.path() == "/decide" {
            return match crate::gray::explain::decide(&self.gray, req.uri.query()).await {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => json_response(StatusCode::BAD_REQUEST, &serde_json::json!({"error": e})),
            };
        }
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
            gray: Arc::new(crate::gray::GrayEngine::new(Default::default()).unwrap()),
            metrics: Arc::new(Metrics::new().unwrap()),
            settings: AdminSettings::default(),
            started: Instant::now(),
            rollout: crate::rollout::Rollout::off(),
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
        assert_eq!(base["servers"][0]["in_flight"], 0);
        assert_eq!(base["servers"][0]["health"], "up");
        assert_eq!(
            v["switches"],
            serde_json::json!({"enabled": true, "all": false, "percent": 0.0, "source": "config"})
        );
        assert_eq!(v["requests"], serde_json::json!([]));
        assert_eq!(v["pins"], serde_json::json!({"set": {}, "rejected": {}}));
        let r = app().route(&http::Method::GET, "/status", Some("format=xml"));
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "an unknown format falls back to the default"
        );
        assert_eq!(r.headers()["content-type"], "text/html");
    }

    #[test]
    fn upstream_status_is_the_check_modules_page_with_its_default_format() {
        let mut a = app();
        a.settings.status_format = Format::Csv;
        let r = a.route(&http::Method::GET, "/upstream_status", None);
        assert_eq!(r.headers()["content-type"], "text/plain");
        assert_eq!(
            body(r),
            "0,base,127.0.0.1:1,up,0,0,none,0\n1,base,127.0.0.1:2,up,0,0,none,0\n"
        );
        let r = a.route(
            &http::Method::GET,
            "/upstream_status",
            Some("format=prometheus"),
        );
        assert!(body(r).contains("nginx_upstream_count_total 2\n"));
    }

    #[test]
    fn a_token_guards_everything_but_health_and_readiness() {
        let mut a = app();
        assert!(
            a.authorize("/status", None).is_none(),
            "no token configured: open"
        );
        a.settings.token = Some(crate::config::Secret::new("0123456789abcdef0123"));
        let denied = a.authorize("/status", None).unwrap();
        assert_eq!(denied.status(), StatusCode::UNAUTHORIZED);
        let challenges: Vec<_> = denied
            .headers()
            .get_all("www-authenticate")
            .iter()
            .collect();
        assert_eq!(challenges.len(), 2);
        assert!(a
            .authorize("/", Some(b"Bearer wrong-wrong-wrong-1"))
            .is_some());
        assert!(a
            .authorize("/", Some(b"Bearer 0123456789abcdef0123"))
            .is_none());
        assert!(a.authorize("/healthz", None).is_none());
        assert!(a.authorize("/readyz", None).is_none());
    }

    #[test]
    fn readyz_follows_the_base_pool() {
        let a = app();
        assert_eq!(
            a.route(&http::Method::GET, "/readyz", None).status(),
            StatusCode::OK
        );
        for s in &a.pools.get("base").unwrap().snapshot().servers {
            s.health.set_up(false);
        }
        let r = a.route(&http::Method::GET, "/readyz", None);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn upstream_list_marks_unhealthy_and_ejected_servers_and_stays_parseable() {
        let a = app();
        let base = a.pools.get("base").unwrap().snapshot();
        base.servers[0].health.set_up(false);
        let mut one_fail = base.servers[1].spec.clone();
        one_fail.max_fails = 1;
        base.servers[1].health.record_failure(&one_fail);
        let b = body(a.route(&http::Method::GET, "/upstream_list", Some("base")));
        assert!(
            b.contains("server 127.0.0.1:1 weight=1 max_fails=2 fail_timeout=10s; # unhealthy\n"),
            "{b}"
        );
        assert!(b.contains("fail_timeout=10s down; # ejected\n"), "{b}");
        let lines: String = b
            .lines()
            .skip(1)
            .map(|l| format!("{}\n", l.trim()))
            .collect();
        let parsed = upsync_format::parse(&lines);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.servers.len(), 2);
    }

    #[test]
    fn status_has_the_check_modules_three_formats_and_a_filter() {
        let a = app();
        a.pools.get("base").unwrap().snapshot().servers[1]
            .health
            .set_up(false);
        let html = a.route(&http::Method::GET, "/status", None);
        assert_eq!(html.headers()["content-type"], "text/html");
        assert!(body(html).contains("Check upstream server number: 2"));
        let csv = body(a.route(
            &http::Method::GET,
            "/status",
            Some("format=csv&status=down"),
        ));
        assert_eq!(csv, "1,base,127.0.0.1:2,down,0,0,none,0\n");
        let r = a.route(&http::Method::GET, "/status", Some("format=json&status=up"));
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["servers"]["total"], 1);
        assert_eq!(v["servers"]["server"][0]["name"], "127.0.0.1:1");
        assert!(v["consul"].is_object() && v["pools"].is_object());
        let r = a.route(
            &http::Method::GET,
            "/status",
            Some("format=csv&status=maybe"),
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            body(r).lines().count(),
            2,
            "an unknown status shows every server"
        );
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let r = app().route(&http::Method::GET, "/metrics", None);
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        let text = body(r);
        crate::metrics::text_format::parse(&text).unwrap();
        assert!(text.contains("graysplit_server_up{pool=\"base\",server=\"127.0.0.1:1\"} 1"));
    }

    #[test]
    fn only_get_and_head() {
        let r = app().route(&http::Method::POST, "/healthz", None);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
