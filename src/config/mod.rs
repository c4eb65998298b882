//! Configuration: load `graysplit.toml`, validate it, and hand the program typed values.
//!
//! Two layers: [`file`] is the serde shape users write; [`Config`] is what the program uses, with
//! defaults applied and every value parsed. [`load`] collects *all* problems (unknown keys, bad
//! durations, addresses, names, clashes) so `graysplit -t` can print them in one go, nginx-style,
//! each with its key, the bad value and the rule.

pub mod duration;
pub mod file;

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
    pub pools: BTreeMap<String, PoolConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    pub pid_file: PathBuf,
    pub upgrade_sock: PathBuf,
    pub grace_period: Duration,
    pub graceful_shutdown_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub access_log: bool,
    pub debug_headers: bool,
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
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub file: Option<PathBuf>,
    pub allow_empty: bool,
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
        Config::from_toml(&text, path).map_err(fail)
    }

    /// Parses and validates TOML text as if it were read from `path`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
        let mut unknown = Vec::new();
        let de = toml::Deserializer::new(text);
        let raw: file::FileConfig = serde_ignored::deserialize(de, |key| {
            unknown.push(ConfigError {
                key: key.to_string(),
                value: None,
                rule: "unknown key".into(),
            })
        })
        .map_err(|e| {
            vec![ConfigError {
                key: String::new(),
                value: None,
                rule: format!("invalid TOML: {}", e.to_string().trim_end()),
            }]
        })?;
        let mut v = Validator { errors: unknown };
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
struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
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
        let server = self.server(&raw.server);
        let upstream = self.upstream(&raw.upstream);
        let pools = self.pools(raw.pools, base_dir);
        Config {
            path: path.to_path_buf(),
            server,
            upstream,
            pools,
        }
    }

    fn server(&mut self, s: &file::ServerSection) -> ServerConfig {
        let listen = self.addr("server.listen", &s.listen);
        let admin_listen = self.addr("server.admin_listen", &s.admin_listen);
        if listen.port() != 0 && listen.port() == admin_listen.port() {
            let overlaps = listen.ip() == admin_listen.ip()
                || listen.ip().is_unspecified()
                || admin_listen.ip().is_unspecified();
            if overlaps {
                self.error(
                    "server.admin_listen",
                    &s.admin_listen,
                    format!(
                        "clashes with server.listen = {:?}: the admin listener needs its own port",
                        s.listen
                    ),
                );
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
            pid_file: PathBuf::from(&s.pid_file),
            upgrade_sock: PathBuf::from(&s.upgrade_sock),
            grace_period: self.duration("server.grace_period", &s.grace_period),
            graceful_shutdown_timeout: self.duration(
                "server.graceful_shutdown_timeout",
                &s.graceful_shutdown_timeout,
            ),
            keepalive_timeout: self.duration("server.keepalive_timeout", &s.keepalive_timeout),
            access_log: s.access_log,
            debug_headers: s.debug_headers,
        }
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
        }
    }

    fn pools(
        &mut self,
        raw: BTreeMap<String, file::PoolSection>,
        base_dir: &Path,
    ) -> BTreeMap<String, PoolConfig> {
        let mut pools = BTreeMap::new();
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
            if file.is_none() && p.file.is_none() {
                self.error_no_value(
                    &key,
                    "needs a server source: set `file` (a pools file in upsync's dump format)",
                );
            }
            let allow_empty = p.allow_empty.unwrap_or(name != BASE_POOL);
            pools.insert(
                name.clone(),
                PoolConfig {
                    name,
                    file,
                    allow_empty,
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

fn valid_pool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests;
