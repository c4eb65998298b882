//! Configuration: load `graysplit.toml`, validate it, and hand the program typed values.
//!
//! Two layers: [`file`] is the serde shape users write; [`Config`] is what the program uses, with
//! defaults applied and every value parsed. [`load`] collects *all* problems (unknown keys, bad
//! durations, addresses, names, clashes) so `graysplit -t` can print them in one go, nginx-style,
//! each with its key, the bad value and the rule.

pub mod access_log;
pub mod admin;
pub mod cache;
pub mod consul_address;
pub mod debug_headers;
pub mod duration;
pub mod file;
pub mod gray;
pub mod health;
pub mod jwt;
pub mod limits;
pub mod listen;
pub mod pin;
pub mod rollout;
pub mod size;
pub mod tls;
pub mod visitor;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `pools.gray.file`; empty for file-level problems.
    pub key: String,
    /// The offending value as written (never a secret); `None` when there is no single value.
    pub value: Option<String>,
    /// The rule that was broken.
    pub rule: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key.is_empty(), &self.value) {
            (true, _) => write!(f, "{}", self.rule),
            (false, None) => write!(f, "{}: {}", self.key, self.rule),
            (false, Some(v)) => write!(f, "{} = {v:?}: {}", self.key, self.rule),
        }
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            writeln!(f, "graysplit: [emerg] {}: {e}", self.path.display())?;
        }
        write!(
            f,
            "graysplit: configuration file {} test failed ({} error{})",
            self.path.display(),
            self.errors.len(),
            if self.errors.len() == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for ConfigErrors {}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; relative paths inside it are resolved against its directory.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub consul: ConsulConfig,
    /// The shared `[health]` section (each pool's own settings are in [`PoolConfig::health`]).
    pub health: health::HealthSettings,
    pub pools: BTreeMap<String, PoolConfig>,
    pub gray: crate::gray::GraySettings,
    /// `[pin]`: the pin cookie (one page, one build).
    pub pin: crate::pin::PinSettings,
    /// `[admin]`: the admin listener's token and status page format.
    pub admin: admin::AdminSettings,
    /// `[cache]`: caching headers of responses decided per client.
    pub cache: crate::http_cache::CacheSettings,
    /// `[tls]`: certificates and what goes with TLS listeners.
    pub tls: crate::tls::TlsSettings,
    /// `[limits]`: slow and greedy clients.
    pub limits: crate::limits::LimitSettings,
    /// `server.access_log` and `[access_log]`: the access log.
    pub access_log: crate::access_log::AccessLogSettings,
    /// `[rollout]`: the rollout plan's source, driver and mirror settings.
    pub rollout: crate::rollout::RolloutSettings,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The public listeners, at least one.
    pub listen: Vec<crate::listeners::Listener>,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    /// How the proxy's threads are organised.
    pub runtime: Runtime,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// How HTTP/1 header names are written on both sides of the proxy.
    pub header_case: HeaderCase,
    pub access_log: bool,
    /// The request id header (kept from trusted proxies, else generated); `None`: off.
    pub request_id_header: Option<http::HeaderName>,
    /// Who gets `X-Graysplit-Pool` / `X-Graysplit-Reason`.
    pub debug_headers: debug_headers::DebugHeaders,
}

/// How the proxy's `threads` run (`server.runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// One single-threaded service per thread on shared listening sockets, each with its own
    /// upstream connection pool (nginx's worker model, `crate::per_core`): a connection stays on
    /// the thread that accepted it. The default.
    PerThread,
    /// Pingora's own model: one service on a `threads`-thread runtime with work stealing.
    Shared,
}

/// How graysplit writes the names of HTTP/1 headers it forwards (`server.header_case`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderCase {
    /// Common names in their usual case (`Host`, `Content-Type`, `Set-Cookie`), others in
    /// lowercase (`etag`, `x-forwarded-for`), as Pingora writes an HTTP/2 message to HTTP/1 and
    /// Envoy writes every HTTP/1 header. Names are case-insensitive (RFC 9110 §5.1); keeping a
    /// second map of the case as read costs every added header twice (`crate::proxy`). The
    /// default.
    Normalize,
    /// Each name as the client or the upstream wrote it, as nginx forwards them: for a client
    /// or upstream that compares header names case-sensitively, against the RFC.
    Preserve,
}

/// How graysplit sets the `Host` header on proxied requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHeader {
    /// nginx's `proxy_set_header Host $host`: the client's host, lower-cased, without the port.
    Host,
    /// The client's `Host` header exactly as sent (`$http_host`).
    HttpHost,
    /// The upstream server's `ip:port` (nginx's default `$proxy_host`).
    Upstream,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub keepalive_pool_size: usize,
    pub tries: usize,
    pub host_header: HostHeader,
    /// `Host` sent upstream for a request that has none (an HTTP/1.0 probe), like nginx's
    /// `server_name` behind `$host`; `None`: the server's address as written in the pool.
    pub default_host: Option<String>,
    /// Upstream statuses counted as passive failures (default none: only errors and timeouts).
    pub fail_on_status: Vec<u16>,
    /// Upstream statuses on which a GET or HEAD is retried on another server (default none).
    pub retry_on_status: Vec<u16>,
}

/// Secrets live in their own module (`crate::secret`), shared with `pin` without a cycle.
pub use crate::secret::Secret;

/// Environment variable holding the Consul token when the config file does not set `token`
/// (keeps the secret out of a file that is usually in version control).
pub const CONSUL_TOKEN_ENV: &str = "GRAYSPLIT_CONSUL_TOKEN";

/// Added to `wait + wait/16` for the minimum client timeout: Consul holds a blocking query up to
/// `wait` plus a random `wait/16`, and the answer still has to travel back to us.
pub const CONSUL_TIMEOUT_MARGIN: Duration = Duration::from_secs(3);

/// Consul caps `?wait=` at 10 minutes; longer values would only be cut silently.
pub const CONSUL_MAX_WAIT: Duration = Duration::from_secs(600);

/// Upper bound of `consul.max_backoff`.
pub const CONSUL_MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The smallest client timeout that never cuts a healthy blocking query short.
pub fn consul_min_timeout(wait: Duration) -> Duration {
    wait + wait / 16 + CONSUL_TIMEOUT_MARGIN
}

/// `[consul]`, validated. `addresses` is empty when no pool uses Consul.
#[derive(Debug, Clone)]
pub struct ConsulConfig {
    /// Base URLs such as `http://127.0.0.1:8500` (no trailing '/'), tried in turn.
    pub addresses: Vec<String>,
    pub token: Option<Secret>,
    /// Blocking-query wait sent as `?wait=`.
    pub wait: Duration,
    /// Minimum gap between two polls of one pool (upsync_interval).
    pub interval: Duration,
    /// Refuse to start unless Consul answers at startup.
    pub strong_dependency: bool,
    /// Client timeout of one poll; at least [`consul_min_timeout`].
    pub timeout: Duration,
    /// Cap of the jittered backoff between polls while Consul fails: after Consul answers
    /// again, the next change applies within about this long.
    pub max_backoff: Duration,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    /// The file source; exactly one of `file` and `consul_prefix` is set.
    pub file: Option<PathBuf>,
    /// The Consul source: a KV folder ending in '/'.
    pub consul_prefix: Option<String>,
    /// Dump of the last good Consul list (Consul pools only).
    pub dump_path: Option<PathBuf>,
    pub allow_empty: bool,
    /// Active checks: `[pools.<name>.health]` over `[health]` over the defaults.
    pub health: health::HealthSettings,
}

/// The pool every request falls back to; it must exist.
pub const BASE_POOL: &str = "base";

impl Config {
    /// Reads and validates `path`. On failure, returns every problem found.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            path: path.to_path_buf(),
            errors,
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(vec![ConfigError {
                key: String::new(),
                value: None,
                rule: format!("cannot read configuration file: {e}"),
            }])
        })?;
        // Absolute, because daemon mode (-d) changes the working directory to `/` and relative
        // paths inside the file are resolved against the file's own directory.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Config::from_toml(&text, &path).map_err(fail)
    }

    /// Parses and validates TOML text as if it were read from `path`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
        Config::from_toml_with_env(text, path, |name| std::env::var(name).ok())
    }

    /// As [`Config::from_toml`], reading environment variables through `env` (so tests need not
    /// touch the process environment).
    pub fn from_toml_with_env(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<ConfigError>> {
        let mut unknown = Vec::new();
        let de = toml::Deserializer::new(text);
        let raw: file::FileConfig = serde_ignored::deserialize(de, |key| {
            unknown.push(ConfigError {
                key: key.to_string(),
                value: None,
                rule: "unknown key".into(),
            })
        })
        .map_err(|e| vec![shape_error(text, &e)])?;
        let mut v = Validator {
            errors: unknown,
            env: &env,
        };
        let base_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let config = v.config(raw, path, &base_dir);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            Err(v.errors)
        }
    }
}

/// Collects errors while turning the file shape into typed values. Each helper returns a usable
/// placeholder on error so validation can continue and find the next problem.
struct Validator<'e> {
    errors: Vec<ConfigError>,
    env: &'e dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    fn error(&mut self, key: &str, value: impl fmt::Display, rule: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            value: Some(value.to_string()),
            rule: rule.into(),
        });
    }

    fn error_no_value(&mut self, key: &str, rule: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            value: None,
            rule: rule.into(),
        });
    }

    fn addr(&mut self, key: &str, value: &str) -> SocketAddr {
        value.parse().unwrap_or_else(|_| {
            self.error(
                key,
                value,
                "must be an address with a port, e.g. \"0.0.0.0:8080\" or \"[::1]:8080\"",
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    fn duration(&mut self, key: &str, value: &str) -> Duration {
        duration::parse(value).unwrap_or_else(|rule| {
            self.error(key, value, rule);
            Duration::ZERO
        })
    }

    fn positive_duration(&mut self, key: &str, value: &str) -> Duration {
        let d = self.duration(key, value);
        if d.is_zero() && duration::parse(value).is_ok() {
            self.error(key, value, "must be greater than zero");
        }
        d
    }

    fn config(&mut self, raw: file::FileConfig, path: &Path, base_dir: &Path) -> Config {
        let tls = self.tls(&raw.tls, base_dir);
        let server = self.server(&raw.server, base_dir, !tls.certificates.is_empty());
        let upstream = self.upstream(&raw.upstream);
        let consul = self.consul(&raw.consul);
        // Bad addresses are reported on their own; "no addresses" only when none were written.
        let consul_listed = !raw.consul.addresses.is_empty();
        let health = health::resolve(
            &mut self.errors,
            "health",
            &raw.health,
            &health::HealthSettings::default(),
        );
        let pool_health: Vec<(String, health::HealthSection)> = raw
            .pools
            .iter()
            .map(|(name, p)| (name.clone(), p.health.clone()))
            .collect();
        let mut pools = self.pools(raw.pools, base_dir, consul_listed);
        for (name, section) in pool_health {
            if let Some(pool) = pools.get_mut(&name) {
                let prefix = format!("pools.{name}.health");
                pool.health = health::resolve(&mut self.errors, &prefix, &section, &health);
            }
        }
        let mut gray = self.gray(
            &raw.gray,
            &raw.routes,
            &pools,
            base_dir,
            !consul.addresses.is_empty(),
        );
        gray.visitor = self.visitor(&raw.visitor, raw.pin.secure, &raw.pin.name);
        let pin = self.pin(&raw.pin);
        let admin = self.admin(&raw.admin, &raw.server.admin_listen);
        let cache = self.cache(&raw.cache);
        let limits = self.limits(&raw.limits);
        let access_log = self.access_log(&raw.access_log, raw.server.access_log, base_dir);
        let rollout = self.rollout(
            &raw.rollout,
            &rollout::Context {
                base_dir,
                consul_listed,
                switches_prefix: gray.consul_prefix.as_deref(),
                pool_prefixes: pools
                    .values()
                    .filter_map(|p| Some((p.name.clone(), p.consul_prefix.clone()?)))
                    .collect(),
            },
        );
        Config {
            path: path.to_path_buf(),
            server,
            upstream,
            consul,
            health,
            pools,
            gray,
            pin,
            admin,
            cache,
            tls,
            limits,
            access_log,
            rollout,
        }
    }

    fn server(&mut self, s: &file::ServerSection, base_dir: &Path, tls: bool) -> ServerConfig {
        let listen = self.listeners(&s.listen, tls);
        let admin_listen = self.addr("server.admin_listen", &s.admin_listen);
        for l in listen.iter().map(|l| l.addr) {
            if l.port() != 0 && l.port() == admin_listen.port() {
                let overlaps = l.ip() == admin_listen.ip()
                    || l.ip().is_unspecified()
                    || admin_listen.ip().is_unspecified();
                if overlaps {
                    self.error(
                        "server.admin_listen",
                        &s.admin_listen,
                        format!(
                            "clashes with server.listen = \"{l}\": the admin listener needs its own port"
                        ),
                    );
                }
            }
        }
        if s.threads == 0 || s.threads > 1024 {
            self.error("server.threads", s.threads, "must be between 1 and 1024");
        }
        for (key, value) in [
            ("server.pid_file", &s.pid_file),
            ("server.upgrade_sock", &s.upgrade_sock),
        ] {
            if value.trim().is_empty() {
                self.error(key, value, "must not be empty");
            }
        }
        ServerConfig {
            listen,
            admin_listen,
            threads: s.threads,
            runtime: match s.runtime.as_str() {
                "per_thread" => Runtime::PerThread,
                "shared" => Runtime::Shared,
                other => {
                    self.error(
                        "server.runtime",
                        other,
                        "must be \"per_thread\" (one single-threaded service per thread) or \
                         \"shared\" (Pingora's multi-threaded runtime)",
                    );
                    Runtime::PerThread
                }
            },
            pid_file: base_dir.join(&s.pid_file),
            upgrade_sock: base_dir.join(&s.upgrade_sock),
            grace_period: self.duration("server.grace_period", &s.grace_period),
            graceful_shutdown_timeout: self.duration(
                "server.graceful_shutdown_timeout",
                &s.graceful_shutdown_timeout,
            ),
            keepalive_timeout: self.duration("server.keepalive_timeout", &s.keepalive_timeout),
            header_case: match s.header_case.as_str() {
                "normalize" => HeaderCase::Normalize,
                "preserve" => HeaderCase::Preserve,
                other => {
                    self.error(
                        "server.header_case",
                        other,
                        "must be \"normalize\" (common header names in their usual case, \
                         others lowercase) or \"preserve\" (each name as it was written)",
                    );
                    HeaderCase::Normalize
                }
            },
            access_log: s.access_log,
            debug_headers: self.debug_headers(&s.debug_headers),
            request_id_header: self.request_id_header(&s.request_id_header),
        }
    }

    /// `server.request_id_header`: a header name, or "" for none.
    fn request_id_header(&mut self, value: &str) -> Option<http::HeaderName> {
        if value.is_empty() {
            return None;
        }
        http::HeaderName::from_bytes(value.as_bytes())
            .map_err(|_| {
                self.error(
                    "server.request_id_header",
                    value,
                    "must be a header name such as \"X-Request-Id\" (\"\" = no request ids)",
                )
            })
            .ok()
    }

    fn upstream(&mut self, u: &file::UpstreamSection) -> UpstreamConfig {
        if u.tries == 0 || u.tries > 16 {
            self.error("upstream.tries", u.tries, "must be between 1 and 16");
        }
        let host_header = match u.host_header.as_str() {
            "host" => HostHeader::Host,
            "http_host" => HostHeader::HttpHost,
            "upstream" => HostHeader::Upstream,
            other => {
                self.error(
                    "upstream.host_header",
                    other,
                    "must be one of \"host\", \"http_host\", \"upstream\"",
                );
                HostHeader::Host
            }
        };
        UpstreamConfig {
            connect_timeout: self.positive_duration("upstream.connect_timeout", &u.connect_timeout),
            read_timeout: self.positive_duration("upstream.read_timeout", &u.read_timeout),
            write_timeout: self.positive_duration("upstream.write_timeout", &u.write_timeout),
            idle_timeout: self.duration("upstream.idle_timeout", &u.idle_timeout),
            keepalive_pool_size: u.keepalive_pool_size,
            tries: u.tries,
            host_header,
            default_host: self.default_host(&u.default_host),
            fail_on_status: health::statuses(
                &mut self.errors,
                "upstream.fail_on_status",
                &u.fail_on_status,
            ),
            retry_on_status: health::statuses(
                &mut self.errors,
                "upstream.retry_on_status",
                &u.retry_on_status,
            ),
        }
    }

    /// A host name or `host:port` (or `[v6]:port`), sent as a header value.
    fn default_host(&mut self, value: &str) -> Option<String> {
        if value.is_empty() {
            return None;
        }
        let ok = value.len() <= 255
            && value.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']')
            });
        if !ok {
            self.error(
                "upstream.default_host",
                value,
                "must be a host name such as \"www.example.com\" (optionally with :port)",
            );
            return None;
        }
        Some(value.to_string())
    }

    fn consul(&mut self, c: &file::ConsulSection) -> ConsulConfig {
        let addresses = c
            .addresses
            .iter()
            .enumerate()
            .filter_map(|(i, a)| self.consul_address(&format!("consul.addresses[{i}]"), a))
            .collect();
        let wait = self.positive_duration("consul.wait", &c.wait);
        if wait > CONSUL_MAX_WAIT {
            self.error(
                "consul.wait",
                &c.wait,
                "must be at most 10m (Consul caps blocking queries at 10 minutes)",
            );
        }
        let interval = self.positive_duration("consul.interval", &c.interval);
        let min_timeout = consul_min_timeout(wait);
        let timeout = match c.timeout.as_deref() {
            None => min_timeout,
            Some(t) => {
                let timeout = self.duration("consul.timeout", t);
                if duration::parse(t).is_ok() && timeout < min_timeout {
                    self.error(
                        "consul.timeout",
                        t,
                        format!(
                            "must be at least wait + wait/16 + {} = {} (Consul may hold a \
                             blocking query for wait + wait/16); leave it out to get that",
                            duration::format(CONSUL_TIMEOUT_MARGIN),
                            duration::format(min_timeout)
                        ),
                    );
                }
                timeout.max(min_timeout)
            }
        };
        let max_backoff = self.positive_duration("consul.max_backoff", &c.max_backoff);
        if max_backoff > CONSUL_MAX_BACKOFF {
            self.error(
                "consul.max_backoff",
                &c.max_backoff,
                "must be at most 5m (a longer backoff only delays the next change after Consul \
                 recovers)",
            );
        }
        ConsulConfig {
            addresses,
            token: self.consul_token(c.token.as_deref()),
            wait,
            interval,
            strong_dependency: c.strong_dependency,
            timeout,
            max_backoff,
        }
    }

    /// `http(s)://host[:port]`, or `host:port` as upsync writes it (plain HTTP); returned
    /// without a trailing '/' (see [`consul_address`]).
    fn consul_address(&mut self, key: &str, value: &str) -> Option<String> {
        match consul_address::normalise(value) {
            Ok(url) => Some(url),
            Err(consul_address::AddressError::Invalid(rule)) => {
                self.error(key, value, rule);
                None
            }
            Err(consul_address::AddressError::KvPath(prefix)) => {
                self.error(
                    key,
                    value,
                    format!(
                        "is an upsync line: the address is the part before /v1/kv, and the KV \
                         folder goes in the pool, e.g. consul_prefix = {prefix:?}"
                    ),
                );
                None
            }
            Err(consul_address::AddressError::Credential) => {
                // The value holds a credential, so it is not echoed.
                self.error_no_value(
                    key,
                    "must not contain a user or password (use `token` for Consul ACLs)",
                );
                None
            }
        }
    }

    /// The token from the file, else from the environment. Never echoed in errors.
    fn consul_token(&mut self, from_file: Option<&str>) -> Option<Secret> {
        let (key, token) = match from_file.filter(|t| !t.is_empty()) {
            Some(t) => ("consul.token", t.to_string()),
            None => (
                CONSUL_TOKEN_ENV,
                (self.env)(CONSUL_TOKEN_ENV).filter(|t| !t.is_empty())?,
            ),
        };
        // It travels as an HTTP header value.
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            self.error_no_value(
                key,
                "must be printable ASCII without spaces (the value is not shown: it is a secret)",
            );
            return None;
        }
        Some(Secret::new(token))
    }

    fn pools(
        &mut self,
        raw: BTreeMap<String, file::PoolSection>,
        base_dir: &Path,
        consul_listed: bool,
    ) -> BTreeMap<String, PoolConfig> {
        let mut pools = BTreeMap::new();
        let mut dumps: BTreeMap<PathBuf, String> = BTreeMap::new();
        for (name, p) in raw {
            let key = format!("pools.{name}");
            if !valid_pool_name(&name) {
                self.error(
                    "pools",
                    &name,
                    "pool name must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-'",
                );
            }
            let file = match p.file.as_deref() {
                Some(f) if f.trim().is_empty() => {
                    self.error(&format!("{key}.file"), f, "must not be empty");
                    None
                }
                Some(f) => Some(base_dir.join(f)),
                None => None,
            };
            let consul_prefix = p
                .consul_prefix
                .as_deref()
                .and_then(|prefix| self.consul_prefix(&format!("{key}.consul_prefix"), prefix));
            match (&p.file, &p.consul_prefix) {
                (None, None) => self.error_no_value(
                    &key,
                    "needs a server source: set `file` (a pools file in upsync's dump format) \
                     or `consul_prefix` (a Consul KV folder such as \"upstreams/base/\")",
                ),
                (Some(_), Some(_)) => self.error_no_value(
                    &key,
                    "has both `file` and `consul_prefix`: set exactly one server source",
                ),
                _ => {}
            }
            if let (Some(prefix), false) = (&p.consul_prefix, consul_listed) {
                self.error(
                    &format!("{key}.consul_prefix"),
                    prefix,
                    "needs Consul addresses: set `addresses` in [consul], \
                     e.g. addresses = [\"http://127.0.0.1:8500\"]",
                );
            }
            let dump_path = match p.dump_path.as_deref() {
                Some(d) if d.trim().is_empty() => {
                    self.error(&format!("{key}.dump_path"), d, "must not be empty");
                    None
                }
                Some(d) if p.consul_prefix.is_none() => {
                    self.error(
                        &format!("{key}.dump_path"),
                        d,
                        "only applies to a pool with `consul_prefix` (a `file` pool is its own dump)",
                    );
                    None
                }
                Some(d) => {
                    let path = base_dir.join(d);
                    if let Some(other) = dumps.insert(path.clone(), name.clone()) {
                        self.error(
                            &format!("{key}.dump_path"),
                            d,
                            format!(
                                "is also the dump_path of pool {other:?}: each pool needs its own"
                            ),
                        );
                    }
                    Some(path)
                }
                None => None,
            };
            let allow_empty = p.allow_empty.unwrap_or(name != BASE_POOL);
            pools.insert(
                name.clone(),
                PoolConfig {
                    name,
                    file,
                    consul_prefix,
                    dump_path,
                    allow_empty,
                    // Resolved by `config` once the shared [health] section is known.
                    health: health::HealthSettings::default(),
                },
            );
        }
        if !pools.contains_key(BASE_POOL) {
            self.error_no_value(
                "pools.base",
                "is required: every request that is not gray goes to the base pool",
            );
        }
        pools
    }
}

impl Validator<'_> {
    /// A KV folder: it must end in '/', because Consul matches `?recurse` prefixes as plain
    /// strings and `upstreams/base` would also read `upstreams/base2/...`.
    fn consul_prefix(&mut self, key: &str, prefix: &str) -> Option<String> {
        let rule = if prefix.is_empty() || prefix == "/" {
            "must name a Consul KV folder, e.g. \"upstreams/base/\""
        } else if prefix.starts_with('/') {
            "must not start with '/' (Consul keys are relative, e.g. \"upstreams/base/\")"
        } else if !prefix.ends_with('/') {
            "must end with '/': Consul matches prefixes as plain strings, so \"upstreams/base\" \
             would also read \"upstreams/base2/...\""
        } else if prefix.contains("//")
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
        {
            // These characters go into the URL path unescaped.
            "must be made of a-z, A-Z, 0-9, '.', '_', '-' and single '/' separators"
        } else {
            return Some(prefix.to_string());
        };
        self.error(key, prefix, rule);
        None
    }
}

/// A deserialisation error. Syntax errors stay as TOML reports them (position and line). A value
/// of the wrong type or shape in valid TOML names its key, like every other problem:
/// `server.threads: invalid type: string "x", expected usize (line 2)`.
fn shape_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let syntax = ConfigError {
        key: String::new(),
        value: None,
        rule: format!(
            "invalid TOML: {}",
            redact_token_lines(text, e.to_string().trim_end())
        ),
    };
    if text.parse::<toml::Table>().is_err() {
        return syntax;
    }
    let Some(at) = e.span().map(|s| s.start) else {
        return syntax;
    };
    let Some(key) = key_at(text, at) else {
        return syntax;
    };
    let line = text.get(..at).map_or(1, |b| b.matches('\n').count() + 1);
    let secret = key == "consul.token"
        || key == "admin.token"
        || key.starts_with("pin.secrets")
        || key.starts_with("gray.jwt.secret");
    let rule = if secret {
        // serde quotes the value it refused; this one is not shown.
        format!("has the wrong type (line {line}; the value is not shown: it is a secret)")
    } else {
        format!("{} (line {line})", e.message().trim_end())
    };
    ConfigError {
        key,
        value: None,
        rule,
    }
}

/// The dotted key of the value at byte `at` (where a TOML type error points): the last table
/// header above it (`[[...]]` counted, as `gray.rules[1]`), then the key written before the `=`
/// on that line, or on the nearest line above with one (a multi-line array). A header at `at`
/// names itself. `None` when the text is not shaped like that.
fn key_at(text: &str, at: usize) -> Option<String> {
    let before = text.get(..at)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let header = |t: &str, open: &str, close: &str| {
        t.strip_prefix(open)
            .and_then(|h| h.split(close).next())
            .map(unquote_key)
    };
    let here = text[line_start..].lines().next().unwrap_or("").trim();
    if here.starts_with('[') && before[line_start..].trim().is_empty() {
        return header(here.trim_start_matches('['), "", "]").filter(|h| !h.is_empty());
    }
    let mut table = String::new();
    let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
    let mut key_line = None;
    for line in text[..line_start].lines().chain(std::iter::once(here)) {
        let t = line.trim();
        if let Some(name) = header(t, "[[", "]]") {
            let n = arrays.entry(name.clone()).or_insert(0);
            *n += 1;
            table = format!("{name}[{}]", *n - 1);
            key_line = None;
        } else if let Some(name) = header(t, "[", "]") {
            table = name;
            key_line = None;
        } else if let Some((k, _)) = t.split_once('=') {
            key_line = Some(unquote_key(k));
        }
    }
    let key = key_line.filter(|k| !k.is_empty())?;
    Some(if table.is_empty() {
        key
    } else {
        format!("{table}.{key}")
    })
}

/// `a . "b"` → `a.b`.
fn unquote_key(k: &str) -> String {
    k.split('.')
        .map(|p| p.trim().trim_matches(|c| c == '"' || c == '\''))
        .collect::<Vec<_>>()
        .join(".")
}

/// A TOML syntax error quotes the offending line; when that is the `token = ...` line, the quote
/// would print the secret, so such lines are blanked out of the message.
fn redact_token_lines(text: &str, message: &str) -> String {
    let mut out = message.to_string();
    for line in text.lines() {
        let trimmed = line.trim();
        for name in ["token", "secret"] {
            if trimmed.starts_with(name) && trimmed.len() > name.len() {
                out = out.replace(trimmed, &format!("{name} = <redacted>"));
            }
        }
    }
    out
}

fn valid_pool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
