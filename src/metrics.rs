//! Prometheus metrics, served as text on the admin listener's `/metrics`.
//!
//! One [`Metrics`] per process with its own `Registry` (no global registry, so tests and the demo
//! can build several). Labels are pool names, decision reasons, status classes and server
//! addresses — bounded sets chosen by the operator — never client IPs, user ids or paths.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `graysplit_requests_total` | counter | `pool`, `build`, `reason`, `class` (`2xx`…`5xx`, `none` when the client left) |
//! | `graysplit_upstream_response_seconds` | histogram | `pool`, `build` — first upstream attempt to end of response |
//! | `graysplit_upstream_retries_total` | counter | `pool`, `cause` (`connect`, `status`, `error`) |
//! | `graysplit_passive_failures_total` | counter | `pool`, `build`, `kind` (`connect`, `status`, `error`) |
//! | `graysplit_passive_ejections_total` | counter | `pool` |
//! | `graysplit_server_up` | gauge | `pool`, `server` — 1 when active checks and passive state allow traffic |
//! | `graysplit_server_in_flight` | gauge | `pool`, `server` — requests proxied to it right now |
//! | `graysplit_health_checks_total` | counter | `result` (`pass`, `fail`) |
//! | `graysplit_health_flips_total` | counter | `to` (`up`, `down`) |
//! | `graysplit_consul_poll_errors_total` | counter | `pool` |
//! | `graysplit_consul_last_success_age_seconds` | gauge | `pool` (absent before the first success) |
//! | `graysplit_pin_rejected_total` | counter | `why` (`malformed`, `version`, `forged`, `expired`, `stale`) |
//! | `graysplit_pins_set_total` | counter | `event` (`new`, `changed`, `refreshed`, `repinned`) |
//! | `graysplit_asset_misses_total` | counter | `action` (`retried`, `passed`, `blocked`) |
//! | `graysplit_conditional_requests_total` | counter | `outcome` (`passed`, `translated`, `dropped`: validators of another build's copy removed) |
//!
//! `build_gone` (a pinned build with no usable server left) is a `reason` of
//! `graysplit_requests_total`; every such request also counts as `repinned`.
//!
//! `build` is the build of the server that answered (`none`: no server was reached), bounded as
//! [`by_build`] explains; compare builds inside a pool during a rolling deploy with e.g.
//! `sum by (build) (rate(graysplit_requests_total{pool="base",class="5xx"}[5m]))`.
//!
//! Client limits and user identity: [`trust`].

pub mod by_build;
pub mod trust;

use std::time::{Duration, SystemTime};

use prometheus::core::Collector as _;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::upstream::health::Flip;
use crate::upstream::Pools;
use by_build::ByBuild;

/// Content type of the Prometheus text format served on `/metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upstream response time buckets, in seconds: static files are fast, so the low end is fine.
const RESPONSE_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why an attempt on a server failed, for the passive and retry counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// Connect refused, unreachable or timed out: nothing reached the server.
    Connect,
    /// The server answered with a status listed in `upstream.fail_on_status`.
    Status,
    /// Any other upstream error after connecting (reset, read timeout).
    Error,
}

impl FailKind {
    pub fn label(self) -> &'static str {
        match self {
            FailKind::Connect => "connect",
            FailKind::Status => "status",
            FailKind::Error => "error",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// Requests, upstream time and failed attempts by pool and build.
    by_build: ByBuild,
    retries: IntCounterVec,
    passive_ejections: IntCounterVec,
    pool_panics: IntCounterVec,
    server_up: IntGaugeVec,
    server_in_flight: IntGaugeVec,
    health_checks: IntCounterVec,
    health_flips: IntCounterVec,
    consul_errors: IntCounterVec,
    consul_age: prometheus::GaugeVec,
    pin_rejected: IntCounterVec,
    pins_set: IntCounterVec,
    asset_misses: IntCounterVec,
    conditional: IntCounterVec,
    /// Client limits and user identity.
    pub trust: std::sync::Arc<trust::TrustMetrics>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// The status class label of a response (`0`: nothing was sent, the client had gone).
pub fn status_class(status: u16) -> &'static str {
    by_build::CLASSES[by_build::class_index(status)]
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<_> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let requests = counter(
            "graysplit_requests_total",
            "Requests answered, by pool, build of the server that answered (none: no server), \
             decision reason and status class.",
            &["pool", "build", "reason", "class"],
        )?;
        let retries = counter(
            "graysplit_upstream_retries_total",
            "Attempts retried on another server, by pool and cause.",
            &["pool", "cause"],
        )?;
        let passive_failures = counter(
            "graysplit_passive_failures_total",
            "Failed upstream attempts (connect, fail_on_status answer, error), by pool, build and \
             kind; they count toward a server's max_fails.",
            &["pool", "build", "kind"],
        )?;
        let passive_ejections = counter(
            "graysplit_passive_ejections_total",
            "Servers made unavailable for fail_timeout after max_fails failures.",
            &["pool"],
        )?;
        let pool_panics = counter(
            "graysplit_pool_panics_total",
            "Times every usable server of a pool was ejected by passive failures and their \
             counts were reset to try them again (panic mode), by pool.",
            &["pool"],
        )?;
        let health_checks = counter(
            "graysplit_health_checks_total",
            "Active health checks run, by result.",
            &["result"],
        )?;
        let health_flips = counter(
            "graysplit_health_flips_total",
            "Servers that active checks brought up or took down.",
            &["to"],
        )?;
        let consul_errors = counter(
            "graysplit_consul_poll_errors_total",
            "Failed Consul polls, by pool.",
            &["pool"],
        )?;
        let pin_rejected = counter(
            "graysplit_pin_rejected_total",
            "Pin cookies ignored, by why (malformed, version, forged, expired, stale = unknown pool).",
            &["why"],
        )?;
        let pins_set = counter(
            "graysplit_pins_set_total",
            "Pin cookies sent: new (none before), changed (a page decided otherwise), refreshed, \
             repinned (an asset's pinned build or pool had no usable server).",
            &["event"],
        )?;
        let asset_misses = counter(
            "graysplit_asset_misses_total",
            "Pinned assets answered 404, or assets answered with HTML: retried once on another \
             build, passed on (the 404 as is), or blocked (HTML replaced by a plain 404).",
            &["action"],
        )?;
        let conditional = counter(
            "graysplit_conditional_requests_total",
            "Conditional GET/HEAD requests to frontend servers, by what graysplit did to their \
             validators: passed (as sent), translated (build tags turned back into the server's \
             own), dropped (they described another build's copy: removed, the answer is a 200).",
            &["outcome"],
        )?;
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "graysplit_upstream_response_seconds",
                "Time from the first upstream attempt to the end of the response, by pool and \
                 build.",
            )
            .buckets(RESPONSE_BUCKETS.to_vec()),
            &["pool", "build"],
        )?;
        registry.register(Box::new(upstream_seconds.clone()))?;
        let server_up = IntGaugeVec::new(
            Opts::new(
                "graysplit_server_up",
                "1 when active checks and passive state let the server take traffic.",
            ),
            &["pool", "server"],
        )?;
        registry.register(Box::new(server_up.clone()))?;
        let server_in_flight = IntGaugeVec::new(
            Opts::new(
                "graysplit_server_in_flight",
                "Requests proxied to the server right now (connected or waiting to, not finished).",
            ),
            &["pool", "server"],
        )?;
        registry.register(Box::new(server_in_flight.clone()))?;
        let consul_age = prometheus::GaugeVec::new(
            Opts::new(
                "graysplit_consul_last_success_age_seconds",
                "Seconds since the last successful Consul poll, by pool.",
            ),
            &["pool"],
        )?;
        registry.register(Box::new(consul_age.clone()))?;
        let trust = std::sync::Arc::new(trust::TrustMetrics::new(&registry)?);
        Ok(Self {
            registry,
            by_build: ByBuild::new(requests, upstream_seconds, passive_failures),
            retries,
            passive_ejections,
            pool_panics,
            server_up,
            server_in_flight,
            health_checks,
            health_flips,
            consul_errors,
            consul_age,
            pin_rejected,
            pins_set,
            asset_misses,
            conditional,
            trust,
        })
    }

    /// A conditional request and what was done to its validators (`passed`, `translated`,
    /// `dropped`).
    pub fn conditional(&self, outcome: &str) {
        self.conditional.with_label_values(&[outcome]).inc();
    }

    /// The registry behind `/metrics`, for modules that own their metric families
    /// (`crate::tls`, `crate::rollout::metrics`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A pin cookie that was ignored (`malformed`, `version`, `forged`, `expired`, `stale`).
    pub fn pin_rejected(&self, why: &str) {
        self.pin_rejected.with_label_values(&[why]).inc();
    }

    /// A `Set-Cookie` for the pin (`new`, `changed`, `refreshed`, `repinned`).
    pub fn pin_set(&self, event: &str) {
        self.pins_set.with_label_values(&[event]).inc();
    }

    /// An asset miss and what was done (`retried`, `passed`, `blocked`).
    pub fn asset_miss(&self, action: &str) {
        self.asset_misses.with_label_values(&[action]).inc();
    }

    /// One finished request (called once, from the proxy's `logging` phase): its pool, the
    /// build of the server that answered ([`by_build::NONE`] without one), its reason, status
    /// (0: nothing sent) and, when it reached an upstream, the time since the first attempt.
    pub fn request(
        &self,
        pool: &str,
        build: &str,
        reason: &'static str,
        status: u16,
        upstream: Option<Duration>,
    ) {
        let h = self.by_build.handles(pool, build);
        self.by_build
            .request(&h, reason, status, upstream.map(|d| d.as_secs_f64()));
    }

    pub fn retry(&self, pool: &str, cause: FailKind) {
        self.retries.with_label_values(&[pool, cause.label()]).inc();
    }

    /// A failed attempt counted against a server of `build`; `ejected` when it crossed
    /// `max_fails`.
    pub fn passive_failure(&self, pool: &str, build: &str, kind: FailKind, ejected: bool) {
        let h = self.by_build.handles(pool, build);
        self.by_build.failure(&h, kind);
        if ejected {
            self.passive_ejections.with_label_values(&[pool]).inc();
        }
    }

    pub fn health_check(&self, passed: bool, flip: Option<Flip>) {
        let result = if passed { "pass" } else { "fail" };
        self.health_checks.with_label_values(&[result]).inc();
        match flip {
            Some(Flip::Up) => self.health_flips.with_label_values(&["up"]).inc(),
            Some(Flip::Down) => self.health_flips.with_label_values(&["down"]).inc(),
            None => {}
        }
    }

    /// Consul watcher state of one pool, read at scrape time: the watcher's running error total
    /// and its last success. For the Consul source to call (or for `/metrics` to feed from its
    /// shared state) — the counter only ever moves forward.
    pub fn consul_state(&self, pool: &str, errors_total: u64, last_success: Option<SystemTime>) {
        let counter = self.consul_errors.with_label_values(&[pool]);
        let seen = counter.get();
        if errors_total > seen {
            counter.inc_by(errors_total - seen);
        }
        match last_success.and_then(|t| SystemTime::now().duration_since(t).ok()) {
            Some(age) => self
                .consul_age
                .with_label_values(&[pool])
                .set(age.as_secs_f64()),
            None => {
                // Never succeeded: no sample rather than a misleading 0.
                let _ = self.consul_age.remove_label_values(&[pool]);
            }
        }
    }

    /// Brings what is read from the pools up to date: per-server gauges (servers come and go,
    /// so they are rebuilt) and the per-build series (builds that left every pool are dropped).
    pub fn refresh(&self, pools: &Pools) {
        self.server_up.reset();
        self.server_in_flight.reset();
        for pool in pools.iter() {
            let panics = self.pool_panics.with_label_values(&[pool.name.as_str()]);
            let seen = panics.get();
            if pool.panics() > seen {
                panics.inc_by(pool.panics() - seen);
            }
            for s in &pool.snapshot().servers {
                let labels = [pool.name.as_str(), s.spec.name.as_str()];
                let up = s.health.available(&s.spec);
                self.server_up.with_label_values(&labels).set(i64::from(up));
                self.server_in_flight
                    .with_label_values(&labels)
                    .set(i64::from(s.health.in_flight()));
            }
        }
        self.by_build.prune(|pool, build| {
            pools.get(pool).is_some_and(|p| {
                p.snapshot()
                    .servers
                    .iter()
                    .any(|s| s.spec.build.as_deref().unwrap_or(p.name.as_str()) == build)
            })
        });
    }

    /// Request counts by pool, build, reason and class, for `/status?format=json`.
    pub fn request_totals(&self) -> Vec<by_build::Total> {
        self.by_build.totals()
    }

    /// Pins set and rejected so far, by event and by why: `{"set": {..}, "rejected": {..}}`.
    pub fn pins_json(&self) -> serde_json::Value {
        let counts = |vec: &IntCounterVec| -> serde_json::Map<String, serde_json::Value> {
            vec.collect()
                .iter()
                .flat_map(|family| family.get_metric())
                .filter_map(|m| {
                    let label = m.get_label().first()?.value().to_string();
                    Some((label, serde_json::json!(m.get_counter().get_value() as u64)))
                })
                .collect()
        };
        serde_json::json!({
            "set": counts(&self.pins_set),
            "rejected": counts(&self.pin_rejected),
        })
    }

    /// Refreshes what is read from the pools ([`Metrics::refresh`]) and renders everything as
    /// text.
    pub fn render(&self, pools: &Pools) -> String {
        self.refresh(pools);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            log::warn!("cannot encode metrics: {e}");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::server::ServerSpec;

    /// A strict reading of the text format: every line is a comment (`# HELP`/`# TYPE`) or
    /// `name{labels} value`, names and label names are valid, values are numbers, and every
    /// sample belongs to a family declared by a `# TYPE` line.
    pub(crate) fn parse_prometheus_text(text: &str) -> Result<Vec<(String, f64)>, String> {
        crate::metrics::text_format::parse(text)
    }

    #[test]
    fn counters_and_gauges_render_as_valid_text() {
        let m = Metrics::new().unwrap();
        let pools = Pools::new([("base", false)]);
        pools.get("base").unwrap().replace(vec![ServerSpec::new(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:1",
        )]);
        m.request(
            "base",
            "base",
            "default",
            200,
            Some(Duration::from_millis(3)),
        );
        m.request("base", "base", "default", 502, None);
        m.request("base", by_build::NONE, "default", 0, None);
        m.retry("base", FailKind::Connect);
        m.passive_failure("base", "base", FailKind::Status, true);
        m.health_check(true, Some(Flip::Up));
        m.consul_state("base", 3, Some(SystemTime::now()));
        m.consul_state("base", 2, None);
        m.pin_rejected("forged");
        m.pin_set("new");
        m.asset_miss("retried");
        let text = m.render(&pools);
        let samples = parse_prometheus_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let get = |name: &str| {
            samples
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        };
        assert_eq!(
            get("graysplit_requests_total{build=\"base\",class=\"2xx\",pool=\"base\",reason=\"default\"}"),
            1.0
        );
        assert_eq!(
            get("graysplit_requests_total{build=\"none\",class=\"none\",pool=\"base\",reason=\"default\"}"),
            1.0
        );
        assert_eq!(
            get("graysplit_passive_failures_total{build=\"base\",kind=\"status\",pool=\"base\"}"),
            1.0
        );
        assert_eq!(
            get("graysplit_server_in_flight{pool=\"base\",server=\"127.0.0.1:1\"}"),
            0.0
        );
        assert_eq!(
            get("graysplit_server_up{pool=\"base\",server=\"127.0.0.1:1\"}"),
            1.0
        );
        assert_eq!(get("graysplit_passive_ejections_total{pool=\"base\"}"), 1.0);
        assert_eq!(
            get("graysplit_consul_poll_errors_total{pool=\"base\"}"),
            3.0
        );
        assert_eq!(
            get("graysplit_upstream_response_seconds_count{build=\"base\",pool=\"base\"}"),
            1.0
        );
        assert_eq!(
            m.pins_json(),
            serde_json::json!({"set": {"new": 1}, "rejected": {"forged": 1}})
        );
        assert_eq!(get("graysplit_pin_rejected_total{why=\"forged\"}"), 1.0);
        assert_eq!(get("graysplit_pins_set_total{event=\"new\"}"), 1.0);
        assert_eq!(get("graysplit_asset_misses_total{action=\"retried\"}"), 1.0);
        assert!(
            !text.contains("graysplit_consul_last_success_age_seconds{"),
            "no age before a success: {text}"
        );
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(0), "none");
    }

    #[test]
    fn the_parser_refuses_broken_text() {
        for bad in [
            "no_type_line 1\n",
            "# TYPE x counter\nx{a=\"1\" 1\n",
            "# TYPE x counter\nx one\n",
            "# TYPE x counter\n9x 1\n",
        ] {
            assert!(parse_prometheus_text(bad).is_err(), "{bad:?}");
        }
    }
}

/// A small checker of the Prometheus text exposition format, used by tests (unit and
/// integration) to prove `/metrics` is parseable.
pub mod text_format {
    /// Returns every sample as (`name{labels}` exactly as written, value).
    pub fn parse(text: &str) -> Result<Vec<(String, f64)>, String> {
        let mut families: Vec<String> = Vec::new();
        let mut samples = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                let words: Vec<&str> = rest.split_whitespace().collect();
                if words.first() == Some(&"TYPE") {
                    let (Some(name), Some(kind)) = (words.get(1), words.get(2)) else {
                        return Err(format!("line {n}: bad TYPE line"));
                    };
                    if !valid_name(name)
                        || !["counter", "gauge", "histogram", "summary", "untyped"].contains(kind)
                    {
                        return Err(format!("line {n}: bad TYPE line {line:?}"));
                    }
                    families.push((*name).to_string());
                }
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| format!("line {n}: no value in {line:?}"))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v
                    .parse()
                    .map_err(|_| format!("line {n}: bad value {v:?}"))?,
            };
            let name = match series.split_once('{') {
                Some((name, labels)) => {
                    let labels = labels
                        .strip_suffix('}')
                        .ok_or_else(|| format!("line {n}: unclosed labels in {line:?}"))?;
                    check_labels(labels).map_err(|e| format!("line {n}: {e} in {line:?}"))?;
                    name
                }
                None => series,
            };
            if !valid_name(name) {
                return Err(format!("line {n}: bad metric name {name:?}"));
            }
            let family_ok = families.iter().any(|f| {
                name == f
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(f.as_str()))
            });
            if !family_ok {
                return Err(format!("line {n}: sample {name:?} has no # TYPE line"));
            }
            samples.push((series.to_string(), value));
        }
        Ok(samples)
    }

    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// `a="x",b="y"`: valid label names, quoted values with `\\`, `\"`, `\n` escapes.
    fn check_labels(labels: &str) -> Result<(), String> {
        let mut rest = labels;
        while !rest.is_empty() {
            let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
            if !valid_name(name) || name.contains(':') {
                return Err(format!("bad label name {name:?}"));
            }
            let mut escaped = false;
            let mut end = None;
            for (i, c) in after.char_indices() {
                match (escaped, c) {
                    (true, '\\' | '"' | 'n') => escaped = false,
                    (true, _) => return Err("bad escape".into()),
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    (false, _) => {}
                }
            }
            let end = end.ok_or("unterminated label value")?;
            rest = &after[end + 1..];
            rest = match rest.strip_prefix(',') {
                Some(r) => r,
                None if rest.is_empty() => rest,
                None => return Err("expected ',' between labels".into()),
            };
        }
        Ok(())
    }
}
