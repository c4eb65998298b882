//! One upstream server: its settings (as written in Consul or a pools file) and its live state.
//!
//! Settings ([`ServerSpec`]) are plain data and compared by value, so a changed weight is a
//! changed spec, not a new server. Live state ([`ServerHealth`]) is keyed by address in
//! [`super::health::HealthTable`] and survives spec changes: changing a weight never makes a dead
//! server look alive (a Pingora `Backend` pitfall we avoid by not keying health on weight).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::health::ServerHealth;

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

/// A server in a pool snapshot: settings plus shared live state.
#[derive(Debug)]
pub struct Server {
    pub spec: ServerSpec,
    pub health: Arc<ServerHealth>,
}

impl Server {
    /// May this server take a new request right now? (not `down`, not drained, not ejected)
    pub fn selectable(&self) -> bool {
        !self.spec.down && self.spec.weight > 0 && self.health.available(&self.spec)
    }

    /// Drained (`weight 0`) but otherwise able to serve: takes no new page, but still serves
    /// assets pinned to its build, so a page loaded just before the drain completes.
    pub fn draining(&self) -> bool {
        !self.spec.down && self.spec.weight == 0 && self.health.available(&self.spec)
    }
}
