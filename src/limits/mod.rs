//! What a slow or greedy client may cost: nginx's `client_header_timeout`,
//! `client_max_body_size` and connection limits (`worker_connections`, `limit_conn`).
//!
//! - [`gate`]: a Pingora app wrapper every client connection passes once (connection counts,
//!   the head deadline), below HTTP and on every listener of the proxy service;
//! - [`head_deadline`]: the client stream with one deadline for the whole request head, and the
//!   head size limit applied to it;
//! - [`head_size`]: `large_client_header_buffers`, the size rule over a head's bytes;
//! - [`conn_count`]: open connections in total and per client address;
//! - [`body`]: the body-size rule, applied on the request path (`proxy::edge`).
//!
//! Counters: `graysplit_client_limit_hits_total{limit}` (the limit's config key) and the
//! `graysplit_client_connections` gauge ([`crate::metrics::trust`]).

pub mod body;
pub mod conn_count;
pub mod gate;
pub mod head_deadline;
pub mod head_size;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::metrics::trust::TrustMetrics;
use crate::rate_limited_log::RateLimitedLog;
use conn_count::ConnCounter;

/// `max_connections` as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxConnections {
    /// Half of the process's open-files limit at start: each client connection may hold an
    /// upstream connection too, and a process out of file descriptors can no longer reach its
    /// upstreams, Redis or Consul, nor run health checks — it fails everyone, not just the
    /// newcomers.
    Auto,
    /// No limit (`0`).
    Unlimited,
    At(usize),
}

/// `large_client_header_buffers number size`: as in nginx, a request line or header line must fit
/// one buffer of `size` bytes, and the head all `number` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderBuffers {
    pub number: u32,
    pub size: u32,
}

/// Pingora refuses a head of more than this (`MAX_HEADER_SIZE`, 1 MiB - 1) with a bare 400;
/// keeping under it means a head of the configured maximum (`1m` in all) gets the 431.
const PINGORA_MAX_HEAD: usize = 1_048_575;

impl HeaderBuffers {
    pub fn limits(self) -> head_size::HeadLimits {
        head_size::HeadLimits {
            line_max: self.size as usize,
            head_max: (self.number as usize * self.size as usize).min(PINGORA_MAX_HEAD),
        }
    }
}

impl Default for HeaderBuffers {
    /// nginx's default, `4 8k`.
    fn default() -> Self {
        Self {
            number: 4,
            size: 8 << 10,
        }
    }
}

impl std::fmt::Display for HeaderBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            self.number,
            crate::config::size::format(u64::from(self.size))
        )
    }
}

/// Validated `[limits]`.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// The whole request head must arrive within this (nginx `client_header_timeout`, 60s).
    pub client_header_timeout: Duration,
    /// The largest request line, header line and head (nginx `large_client_header_buffers`,
    /// `4 8k`).
    pub header_buffers: HeaderBuffers,
    /// Largest request body in bytes, 0 = no limit (nginx `client_max_body_size`, 1m).
    pub client_max_body_size: u64,
    pub max_connections: MaxConnections,
    /// Concurrent connections per client address, 0 = no limit. Peers in
    /// `gray.trusted_proxies` are exempt (a load balancer carries many clients).
    pub max_connections_per_ip: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            client_header_timeout: Duration::from_secs(60),
            header_buffers: HeaderBuffers::default(),
            client_max_body_size: 1 << 20,
            max_connections: MaxConnections::Auto,
            max_connections_per_ip: 0,
        }
    }
}

/// The limits at run time, shared by the gate and the request path.
pub struct Limits {
    pub settings: LimitSettings,
    /// `max_connections` resolved (0 = none).
    pub max_connections: usize,
    pub connections: Arc<ConnCounter>,
    trusted_proxies: Vec<IpNet>,
    pub metrics: Arc<TrustMetrics>,
    /// One per refusal kind, so each line names the limit its count belongs to.
    refusal_log: [RateLimitedLog; 2],
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("settings", &self.settings)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl Limits {
    pub fn new(
        settings: LimitSettings,
        trusted_proxies: Vec<IpNet>,
        metrics: Arc<TrustMetrics>,
    ) -> Self {
        let max_connections = match settings.max_connections {
            MaxConnections::Unlimited => 0,
            MaxConnections::At(n) => n,
            MaxConnections::Auto => auto_max_connections(open_files_limit()),
        };
        Self {
            connections: Arc::new(ConnCounter::new(
                max_connections,
                settings.max_connections_per_ip,
            )),
            max_connections,
            settings,
            trusted_proxies,
            metrics,
            refusal_log: [RateLimitedLog::new(), RateLimitedLog::new()],
        }
    }

    /// Trusted proxies carry many clients on their connections: no per-address limit for them.
    pub fn exempt_from_per_ip(&self, peer: IpAddr) -> bool {
        crate::gray::client_ip::is_trusted(peer, &self.trusted_proxies)
    }

    /// One line for the startup log.
    pub fn describe(&self) -> String {
        let conns = match (self.settings.max_connections, self.max_connections) {
            (_, 0) => "no limit".to_string(),
            (MaxConnections::Auto, n) => format!("{n} (auto: half the open-files limit)"),
            (_, n) => n.to_string(),
        };
        let body = match self.settings.client_max_body_size {
            0 => "no limit".to_string(),
            n => crate::config::size::format(n),
        };
        let per_ip = match self.settings.max_connections_per_ip {
            0 => "no limit".to_string(),
            n => n.to_string(),
        };
        format!(
            "limits: client_header_timeout {}, large_client_header_buffers {}, client_max_body_size {body}, \
             max_connections {conns}, max_connections_per_ip {per_ip}",
            crate::config::duration::format(self.settings.client_header_timeout),
            self.settings.header_buffers
        )
    }
}

/// The soft `RLIMIT_NOFILE` (`ulimit -n`), if the system tells.
fn open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives for the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur)
}

/// Half the open-files limit (nginx's `worker_connections` 512 for the common `ulimit -n` of
/// 1024); no limit when the system has none.
fn auto_max_connections(nofile: Option<u64>) -> usize {
    nofile
        .map(|n| usize::try_from(n / 2).unwrap_or(usize::MAX).max(1))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_half_the_open_files_limit() {
        assert_eq!(auto_max_connections(Some(1024)), 512);
        assert_eq!(auto_max_connections(Some(65536)), 32768);
        assert_eq!(auto_max_connections(Some(1)), 1);
        assert_eq!(auto_max_connections(None), 0);
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }
}
