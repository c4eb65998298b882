//! The serde shape of `graysplit.toml`, exactly as users write it.
//!
//! Values that need a rule (addresses, durations, names) stay strings here so that validation
//! (`super::validate`) can report *every* bad value with its key, instead of serde stopping at the
//! first one. Unknown keys are collected by `serde_ignored` in `super::load` for the same reason.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FileConfig {
    pub server: ServerSection,
    pub upstream: UpstreamSection,
    pub consul: ConsulSection,
    /// Active checks shared by every pool (`[health]`).
    pub health: super::health::HealthSection,
    pub pools: BTreeMap<String, PoolSection>,
    /// The gray decision (`[gray]`, `[gray.redis]`, `[[gray.rules]]`, `[gray.headers.<pool>]`).
    pub gray: super::gray::GraySection,
    /// Pass-through routes (`[[routes]]`).
    pub routes: Vec<super::gray::RouteSection>,
    /// The pin cookie (`[pin]`).
    pub pin: super::pin::PinSection,
    /// The admin listener's token and status page (`[admin]`).
    pub admin: super::admin::AdminSection,
    /// Caching headers of responses decided per client (`[cache]`).
    pub cache: super::cache::CacheSection,
    /// The visitor id cookie (`[visitor]`).
    pub visitor: super::visitor::VisitorSection,
    /// Certificates, HTTP/2 limits, HSTS (`[tls]`).
    pub tls: super::tls::TlsSection,
    /// Where the access log goes and its format (`[access_log]`).
    pub access_log: super::access_log::AccessLogSection,
    /// Slow and greedy clients (`[limits]`).
    pub limits: super::limits::LimitsSection,
    /// Progressive delivery (`[rollout]`, `[rollout.mirror]`).
    pub rollout: super::rollout::RolloutSection,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct ServerSection {
    /// One address, or a list of addresses and listener tables (`super::listen`).
    pub listen: super::listen::ListenSection,
    pub admin_listen: String,
    pub threads: usize,
    /// `per_thread` (one single-threaded service per thread) or `shared` (Pingora's one
    /// service on a `threads`-thread runtime).
    pub runtime: String,
    pub pid_file: String,
    pub upgrade_sock: String,
    pub grace_period: String,
    pub graceful_shutdown_timeout: String,
    pub keepalive_timeout: String,
    /// `normalize` (common names in their usual case, others lowercase) or `preserve`.
    pub header_case: String,
    pub access_log: bool,
    pub debug_headers: super::debug_headers::DebugHeadersValue,
    pub request_id_header: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: super::listen::ListenSection::default(),
            admin_listen: "127.0.0.1:9901".into(),
            threads: 2,
            runtime: "per_thread".into(),
            pid_file: "/run/graysplit/graysplit.pid".into(),
            upgrade_sock: "/run/graysplit/upgrade.sock".into(),
            grace_period: "5s".into(),
            graceful_shutdown_timeout: "5s".into(),
            keepalive_timeout: "65s".into(),
            header_case: "normalize".into(),
            access_log: true,
            debug_headers: Default::default(),
            request_id_header: "X-Request-Id".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct UpstreamSection {
    pub connect_timeout: String,
    pub read_timeout: String,
    pub write_timeout: String,
    pub idle_timeout: String,
    pub keepalive_pool_size: usize,
    pub tries: usize,
    pub host_header: String,
    /// Host sent upstream when the client sent none; "" = the server's address.
    pub default_host: String,
    pub fail_on_status: Vec<u16>,
    pub retry_on_status: Vec<u16>,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            connect_timeout: "1s".into(),
            read_timeout: "30s".into(),
            write_timeout: "30s".into(),
            idle_timeout: "60s".into(),
            keepalive_pool_size: 128,
            tries: 2,
            host_header: "host".into(),
            default_host: String::new(),
            fail_on_status: super::health::DEFAULT_FAIL_ON_STATUS.to_vec(),
            retry_on_status: Vec::new(),
        }
    }
}

/// `[consul]`: where Consul KV pools come from. Only used when a pool sets `consul_prefix`.
#[derive(Deserialize)]
#[serde(default)]
pub struct ConsulSection {
    pub addresses: Vec<String>,
    /// ACL token; a secret, so this type's `Debug` never shows it.
    pub token: Option<String>,
    pub wait: String,
    pub interval: String,
    pub strong_dependency: bool,
    /// `None` means "the minimum": wait + wait/16 + a margin.
    pub timeout: Option<String>,
    /// Longest wait between two polls while Consul fails.
    pub max_backoff: String,
}

impl Default for ConsulSection {
    fn default() -> Self {
        Self {
            addresses: Vec::new(),
            token: None,
            wait: "5m".into(),
            interval: "500ms".into(),
            strong_dependency: false,
            timeout: None,
            max_backoff: "2s".into(),
        }
    }
}

impl std::fmt::Debug for ConsulSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulSection")
            .field("addresses", &self.addresses)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("wait", &self.wait)
            .field("interval", &self.interval)
            .field("strong_dependency", &self.strong_dependency)
            .field("timeout", &self.timeout)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PoolSection {
    /// Pools file in upsync's dump format (the file source).
    pub file: Option<String>,
    /// Consul KV folder whose keys are this pool's servers (the Consul source).
    pub consul_prefix: Option<String>,
    /// Where the Consul source keeps its last good list (upsync's `upsync_dump_path`).
    pub dump_path: Option<String>,
    /// `None` means "the default for this pool": false for `base`, true for every other pool.
    pub allow_empty: Option<bool>,
    /// This pool's active checks; unset keys come from `[health]`.
    pub health: super::health::HealthSection,
}
