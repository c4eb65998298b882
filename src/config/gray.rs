//! `[gray]`, `[gray.redis]`, `[[gray.rules]]`, `[gray.headers.<pool>]` and `[[routes]]`: the file
//! shape and its validation into [`GraySettings`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::{PoolConfig, Validator};
use crate::gray::client_ip::ClientIpHeader;
use crate::gray::decision::Switches;
use crate::gray::redis_whitelist::RedisSettings;
use crate::gray::rules::{self, Match, Rule, Source};
use crate::gray::salt::{self, Salt};
use crate::gray::switches::percent_to_bp;
use crate::gray::GraySettings;
use crate::routes::{Route, RouteTimeouts};

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct GraySection {
    pub enabled: bool,
    pub all: bool,
    pub percent: f64,
    /// The percent rollout's salt ("" = none: buckets as before salts existed).
    pub salt: String,
    pub trusted_proxies: Vec<String>,
    pub client_ip_header: String,
    pub user_header: String,
    pub user_cookie: String,
    pub whitelist_file: String,
    pub switches_file: String,
    pub consul_prefix: String,
    pub redis: Option<RedisSection>,
    pub rules: Vec<RuleSection>,
    pub headers: BTreeMap<String, BTreeMap<String, String>>,
    /// A verified user id from a signed token (`[gray.jwt]`).
    pub jwt: Option<super::jwt::JwtSection>,
}

impl Default for GraySection {
    fn default() -> Self {
        Self {
            enabled: true,
            all: false,
            percent: 0.0,
            salt: String::new(),
            trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
            client_ip_header: "x-forwarded-for".into(),
            user_header: String::new(),
            user_cookie: String::new(),
            whitelist_file: String::new(),
            switches_file: String::new(),
            consul_prefix: String::new(),
            redis: None,
            rules: Vec::new(),
            headers: BTreeMap::new(),
            jwt: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct RedisSection {
    pub url: String,
    pub ip_prefix: String,
    pub cidr_set: String,
    pub users_set: String,
    pub user_prefix: String,
    pub timeout: String,
    pub cache_ttl: String,
    pub stale_if_error: String,
    pub cache_size: usize,
    pub breaker_failures: u32,
    pub breaker_open: String,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            ip_prefix: String::new(),
            cidr_set: "graysplit:cidrs".into(),
            users_set: "graysplit:users".into(),
            user_prefix: String::new(),
            timeout: "20ms".into(),
            cache_ttl: "1s".into(),
            stale_if_error: "10m".into(),
            cache_size: 100_000,
            breaker_failures: 5,
            breaker_open: "5s".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RuleSection {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub query: Option<String>,
    pub equals: Option<String>,
    pub prefix: Option<String>,
    pub present: Option<bool>,
    pub pool: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RouteSection {
    pub prefix: String,
    /// A pass-through pool; absent: the decided pool, with this route's timeouts.
    pub pool: Option<String>,
    /// Per-route `[upstream]` timeouts (nginx: `proxy_*_timeout` inside a `location`).
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub write_timeout: Option<String>,
}

impl Validator<'_> {
    pub(super) fn gray(
        &mut self,
        g: &GraySection,
        routes: &[RouteSection],
        pools: &BTreeMap<String, PoolConfig>,
        base_dir: &Path,
        consul_configured: bool,
    ) -> GraySettings {
        let percent_bp = percent_to_bp(g.percent).unwrap_or_else(|| {
            self.error("gray.percent", g.percent, "must be a number from 0 to 100");
            0
        });
        if let Some(rule) = salt::check(&g.salt) {
            self.error("gray.salt", &g.salt, rule);
        }
        let mut trusted = Vec::new();
        for (i, cidr) in g.trusted_proxies.iter().enumerate() {
            match cidr.parse::<ipnet::IpNet>() {
                Ok(n) => trusted.push(n.trunc()),
                Err(_) => self.error(
                    &format!("gray.trusted_proxies[{i}]"),
                    cidr,
                    "must be a CIDR such as \"10.0.0.0/8\" or \"::1/128\"",
                ),
            }
        }
        let client_ip_header = match g.client_ip_header.as_str() {
            "x-forwarded-for" => Some(ClientIpHeader::XForwardedFor),
            "x-real-ip" => Some(ClientIpHeader::XRealIp),
            "none" => None,
            other => {
                self.error(
                    "gray.client_ip_header",
                    other,
                    "must be \"x-forwarded-for\", \"x-real-ip\" or \"none\"",
                );
                None
            }
        };
        let user_header = (!g.user_header.is_empty())
            .then(|| self.header_name("gray.user_header", &g.user_header))
            .flatten();
        let file = |v: &str| (!v.trim().is_empty()).then(|| base_dir.join(v));
        let consul_prefix = (!g.consul_prefix.is_empty()).then(|| g.consul_prefix.clone());
        if let Some(prefix) = &consul_prefix {
            if !prefix.ends_with('/') || prefix.starts_with('/') {
                self.error(
                    "gray.consul_prefix",
                    prefix,
                    "must be a KV folder ending in '/' (e.g. \"graysplit/gray/\")",
                );
            }
            if !consul_configured {
                self.error("gray.consul_prefix", prefix, "needs [consul] addresses");
            }
            if !g.switches_file.is_empty() {
                self.error(
                    "gray.switches_file",
                    &g.switches_file,
                    "use either switches_file or consul_prefix, not both (two writers of one switch)",
                );
            }
        }
        GraySettings {
            defaults: Switches {
                enabled: g.enabled,
                all: g.all,
                percent_bp,
                salt: Salt::new(&g.salt),
            },
            trusted_proxies: trusted,
            client_ip_header,
            user_header,
            user_cookie: (!g.user_cookie.is_empty()).then(|| g.user_cookie.clone()),
            rules: self.rules(&g.rules, pools),
            headers: self.pool_headers(&g.headers, pools),
            routes: self.routes(routes, pools),
            whitelist_file: file(&g.whitelist_file),
            switches_file: file(&g.switches_file),
            consul_prefix,
            redis: g.redis.as_ref().and_then(|r| self.redis(r)),
            // Set by `[visitor]` (config/visitor.rs).
            visitor: Default::default(),
            jwt: g.jwt.as_ref().and_then(|j| self.jwt(j, base_dir)),
        }
    }

    pub(super) fn header_name(&mut self, key: &str, v: &str) -> Option<HeaderName> {
        HeaderName::from_bytes(v.trim().as_bytes())
            .map_err(|_| self.error(key, v, "must be a valid HTTP header name"))
            .ok()
    }

    fn pool_exists(&mut self, key: &str, pool: &str, pools: &BTreeMap<String, PoolConfig>) -> bool {
        let ok = pools.contains_key(pool);
        if !ok {
            let known: Vec<&str> = pools.keys().map(String::as_str).collect();
            self.error(
                key,
                pool,
                format!("no such pool (configured: {})", known.join(", ")),
            );
        }
        ok
    }

    fn rules(&mut self, raw: &[RuleSection], pools: &BTreeMap<String, PoolConfig>) -> Vec<Rule> {
        let mut out = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let key = format!("gray.rules[{i}]");
            let source = match (&r.header, &r.cookie, &r.query) {
                (Some(h), None, None) => self
                    .header_name(&format!("{key}.header"), h)
                    .map(Source::Header),
                (None, Some(c), None) if !c.is_empty() => Some(Source::Cookie(c.clone())),
                (None, None, Some(q)) if !q.is_empty() => Some(Source::Query(q.clone())),
                _ => {
                    self.error_no_value(&key, "needs exactly one of header, cookie or query");
                    None
                }
            };
            let matcher = match (&r.equals, &r.prefix, r.present) {
                (Some(v), None, None) => Some(Match::Equals(v.clone())),
                (None, Some(p), None) => Some(Match::Prefix(p.clone())),
                (None, None, Some(true)) => Some(Match::Present),
                _ => {
                    self.error_no_value(
                        &key,
                        "needs exactly one of equals, prefix or present = true",
                    );
                    None
                }
            };
            let pool_ok = self.pool_exists(&format!("{key}.pool"), &r.pool, pools);
            if let (Some(source), Some(matcher), true) = (source, matcher, pool_ok) {
                out.push(rules::rule(source, matcher, &r.pool));
            }
        }
        out
    }

    fn pool_headers(
        &mut self,
        raw: &BTreeMap<String, BTreeMap<String, String>>,
        pools: &BTreeMap<String, PoolConfig>,
    ) -> std::collections::HashMap<String, Vec<(HeaderName, HeaderValue)>> {
        let mut out = std::collections::HashMap::new();
        for (pool, headers) in raw {
            if !self.pool_exists(&format!("gray.headers.{pool}"), pool, pools) {
                continue;
            }
            let mut list = Vec::new();
            for (name, value) in headers {
                let key = format!("gray.headers.{pool}.{name}");
                let n = self.header_name(&key, name);
                let v = HeaderValue::from_str(value)
                    .map_err(|_| self.error(&key, value, "must be a valid HTTP header value"))
                    .ok();
                if let (Some(n), Some(v)) = (n, v) {
                    list.push((n, v));
                }
            }
            out.insert(pool.clone(), list);
        }
        out
    }

    fn routes(&mut self, raw: &[RouteSection], pools: &BTreeMap<String, PoolConfig>) -> Vec<Route> {
        let mut out = Vec::new();
        for (i, r) in raw.iter().enumerate() {
            let key = format!("routes[{i}]");
            let mut ok = true;
            if !r.prefix.starts_with('/') {
                self.error(&format!("{key}.prefix"), &r.prefix, "must start with '/'");
                ok = false;
            }
            let pool = match &r.pool {
                Some(p) if self.pool_exists(&format!("{key}.pool"), p, pools) => {
                    Some(Arc::from(p.as_str()))
                }
                Some(_) => {
                    ok = false;
                    None
                }
                None => None,
            };
            let mut timeout = |name: &str, v: &Option<String>| {
                v.as_deref()
                    .map(|v| self.positive_duration(&format!("{key}.{name}"), v))
            };
            let timeouts = RouteTimeouts {
                connect: timeout("connect_timeout", &r.connect_timeout),
                read: timeout("read_timeout", &r.read_timeout),
                write: timeout("write_timeout", &r.write_timeout),
            };
            if pool.is_none() && r.pool.is_none() && timeouts.is_empty() {
                self.error_no_value(
                    &key,
                    "does nothing: set `pool` (a pass-through pool) and/or a timeout \
                     (connect_timeout, read_timeout, write_timeout)",
                );
                ok = false;
            }
            if ok {
                out.push(Route {
                    prefix: r.prefix.clone(),
                    pool,
                    timeouts,
                });
            }
        }
        out
    }

    fn redis(&mut self, r: &RedisSection) -> Option<RedisSettings> {
        if r.url.trim().is_empty() {
            return None;
        }
        if redis::Client::open(r.url.as_str()).is_err() {
            // The URL may hold a password: name the rule, never echo the value.
            self.error_no_value(
                "gray.redis.url",
                "must be a redis:// or rediss:// URL (value not shown: it may hold a password)",
            );
        }
        let timeout = self.positive_duration("gray.redis.timeout", &r.timeout);
        let cache_ttl = self.duration("gray.redis.cache_ttl", &r.cache_ttl);
        let stale_if_error = self.duration("gray.redis.stale_if_error", &r.stale_if_error);
        let breaker_open = self.positive_duration("gray.redis.breaker_open", &r.breaker_open);
        if r.cache_size == 0 {
            self.error("gray.redis.cache_size", r.cache_size, "must be at least 1");
        }
        if r.breaker_failures == 0 {
            self.error(
                "gray.redis.breaker_failures",
                r.breaker_failures,
                "must be at least 1",
            );
        }
        Some(RedisSettings {
            url: r.url.clone(),
            ip_prefix: r.ip_prefix.clone(),
            cidr_set: r.cidr_set.clone(),
            users_set: r.users_set.clone(),
            user_prefix: (!r.user_prefix.is_empty()).then(|| r.user_prefix.clone()),
            timeout,
            cache_ttl,
            stale_if_error,
            cache_size: r.cache_size.max(1),
            breaker_failures: r.breaker_failures.max(1),
            breaker_open,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::path::Path;

    const POOLS: &str = "[pools.base]\nfile = \"b.conf\"\n[pools.gray]\nfile = \"g.conf\"\n";

    fn errors(extra: &str) -> Vec<String> {
        Config::from_toml(
            &format!("{POOLS}{extra}"),
            Path::new("/etc/graysplit/g.toml"),
        )
        .expect_err("refused")
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    #[test]
    fn defaults_trust_only_loopback_and_use_no_redis() {
        let c = Config::from_toml(POOLS, Path::new("/x/g.toml")).unwrap();
        let g = &c.gray;
        assert_eq!(g.trusted_proxies.len(), 2);
        assert!(g.defaults.enabled && !g.defaults.all && g.defaults.percent_bp == 0);
        assert!(g.redis.is_none() && g.user_header.is_none());
    }

    #[test]
    fn bad_gray_values_are_all_reported() {
        let e = errors(
            "[gray]\npercent = 120\ntrusted_proxies = [\"10.0.0.0/33\"]\nclient_ip_header = \"via\"\n\
             [gray.redis]\nurl = \"redis://127.0.0.1/\"\ntimeout = \"20\"\nstale_if_error = \"ten\"\n\
             [[gray.rules]]\nheader = \"a\"\ncookie = \"b\"\nequals = \"1\"\npool = \"gray\"\n\
             [[gray.rules]]\nquery = \"q\"\npool = \"nope\"\npresent = true\n\
             [gray.headers.grey]\na = \"1\"\n\
             [[routes]]\nprefix = \"api\"\npool = \"gray\"\n",
        );
        for want in [
            "gray.percent = \"120\": must be a number from 0 to 100",
            "gray.trusted_proxies[0] = \"10.0.0.0/33\": must be a CIDR",
            "gray.client_ip_header = \"via\"",
            "gray.redis.timeout = \"20\": must be a number with a unit",
            "gray.redis.stale_if_error = \"ten\": must be a number with a unit",
            "gray.rules[0]: needs exactly one of header, cookie or query",
            "gray.rules[1].pool = \"nope\": no such pool (configured: base, gray)",
            "gray.headers.grey = \"grey\": no such pool",
            "routes[0].prefix = \"api\": must start with '/'",
        ] {
            assert!(
                e.iter().any(|m| m.starts_with(want)),
                "missing {want:?} in {e:#?}"
            );
        }
    }

    #[test]
    fn routes_take_a_pool_and_or_timeouts() {
        let c = Config::from_toml(
            &format!(
                "{POOLS}[[routes]]\nprefix = \"/ws/\"\nread_timeout = \"1h\"\n\
                 [[routes]]\nprefix = \"/api/\"\npool = \"gray\"\nconnect_timeout = \"200ms\"\n"
            ),
            Path::new("/x/g.toml"),
        )
        .unwrap();
        let r = &c.gray.routes;
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].pool.as_deref(), r[0].timeouts.read),
            (None, Some(std::time::Duration::from_secs(3600)))
        );
        assert_eq!(r[1].pool.as_deref(), Some("gray"));
        assert_eq!(
            r[1].timeouts.connect,
            Some(std::time::Duration::from_millis(200))
        );
        let e = errors(
            "[[routes]]\nprefix = \"/x/\"\n[[routes]]\nprefix = \"/y/\"\nread_timeout = \"0s\"\n\
             write_timeout = \"soon\"\n",
        );
        for want in [
            "routes[0]: does nothing",
            "routes[1].read_timeout = \"0s\": must be greater than zero",
            "routes[1].write_timeout = \"soon\": must be a number with a unit",
        ] {
            assert!(
                e.iter().any(|m| m.starts_with(want)),
                "missing {want:?} in {e:#?}"
            );
        }
    }

    #[test]
    fn a_bad_redis_url_never_echoes_the_password() {
        let e = errors("[gray.redis]\nurl = \"http://:s3cret@host\"\n");
        assert!(e.iter().any(|m| m.starts_with("gray.redis.url")), "{e:?}");
        assert!(e.iter().all(|m| !m.contains("s3cret")), "{e:?}");
    }
}
