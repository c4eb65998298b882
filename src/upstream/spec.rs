//! A server's settings as written in Consul or a pools file: plain data, compared by value.
//!
//! A leaf module: live state ([`super::health`]) and the pool's view of a server
//! ([`super::server`]) both read these settings, and neither is needed to describe them.

use std::net::SocketAddr;
use std::time::Duration;

/// Defaults as upsync and nginx use them.
pub const DEFAULT_WEIGHT: u32 = 1;
pub const DEFAULT_MAX_FAILS: u32 = 2;
pub const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `fail_timeout` any source accepts: longer is a typo, and it keeps the
/// passive-failure window (milliseconds) and the dump's `…ms` far from overflow.
pub const MAX_FAIL_TIMEOUT: Duration = Duration::from_secs(86_400);

/// A server's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Resolved address used to connect.
    pub addr: SocketAddr,
    /// The address as written (`10.0.0.1:8080`, `[::1]:8080`, `web1:8080`), shown in status pages.
    pub name: String,
    /// Relative share of traffic; 0 drains the server (no new requests).
    pub weight: u32,
    /// Passive failures within `fail_timeout` that make the server unavailable; 0 disables.
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// Taken out of rotation by the operator.
    pub down: bool,
    /// Used only when no primary server is available.
    pub backup: bool,
    /// Build id served by this server; `None` means "the pool's default build".
    pub build: Option<String>,
}

impl ServerSpec {
    /// A server with upsync's default settings.
    pub fn new(addr: SocketAddr, name: impl Into<String>) -> Self {
        Self {
            addr,
            name: name.into(),
            weight: DEFAULT_WEIGHT,
            max_fails: DEFAULT_MAX_FAILS,
            fail_timeout: DEFAULT_FAIL_TIMEOUT,
            down: false,
            backup: false,
            build: None,
        }
    }
}
