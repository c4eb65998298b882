//! One upstream server in a pool snapshot: its settings and its live state.
//!
//! Settings ([`ServerSpec`], in [`super::spec`]) are plain data and compared by value, so a
//! changed weight is a changed spec, not a new server. Live state ([`ServerHealth`]) is keyed by
//! address in [`super::health::HealthTable`] and survives spec changes: changing a weight never
//! makes a dead server look alive (a Pingora `Backend` pitfall we avoid by not keying health on
//! weight).

use std::sync::Arc;

use super::health::ServerHealth;
pub use super::spec::{
    ServerSpec, DEFAULT_FAIL_TIMEOUT, DEFAULT_MAX_FAILS, DEFAULT_WEIGHT, MAX_FAIL_TIMEOUT,
};

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

    /// Would this server be selectable if passive failures were forgiven? (Panic mode.)
    pub fn usable_but_for_passive(&self) -> bool {
        !self.spec.down && self.spec.weight > 0 && self.health.is_up()
    }

    /// Drained (`weight 0`) but otherwise able to serve: takes no new page, but still serves
    /// assets pinned to its build, so a page loaded just before the drain completes.
    pub fn draining(&self) -> bool {
        !self.spec.down && self.spec.weight == 0 && self.health.available(&self.spec)
    }
}
