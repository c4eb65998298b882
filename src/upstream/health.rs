//! Live per-address server state shared by every pool that lists the address.
//!
//! Active checks follow nginx_upstream_check_module: a pass bumps the consecutive `rise` counter
//! and clears `fall`, a failure does the opposite; a down server comes up at `rise` passes, an up
//! server goes down at `fall` failures. Only the one check task of an address writes these.
//!
//! Passive failure accounting follows nginx: `max_fails` failed attempts within `fail_timeout`
//! make a server unavailable for `fail_timeout`; `max_fails = 0` disables it. Everything here is
//! atomics so the request path never takes a lock to ask "may I use this server?".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::server::ServerSpec;

/// Live state of one server address.
#[derive(Debug)]
pub struct ServerHealth {
    epoch: Instant,
    /// Result of active checks. Starts true, or false for pools with `default_down`.
    up: AtomicBool,
    /// Consecutive passing / failing active checks (the check module's `rise`/`fall` counts).
    rise_count: AtomicU32,
    fall_count: AtomicU32,
    /// Active checks run so far (0: never checked).
    checks: AtomicU64,
    /// Failures counted in the current passive window.
    fails: AtomicU32,
    /// Start of the current passive window, in ms since `epoch`.
    window_start_ms: AtomicU64,
    /// Ejected until this instant (ms since `epoch`); 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// Requests proxied to this address right now (see [`super::in_flight::InFlight`]).
    in_flight: AtomicU32,
}

impl Default for ServerHealth {
    fn default() -> Self {
        Self::starting(true)
    }
}

/// A change of the active state, returned by [`ServerHealth::record_check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    Up,
    Down,
}

impl ServerHealth {
    /// State of a server nobody has checked yet: up, or down for a `default_down` pool.
    pub fn starting(up: bool) -> Self {
        Self {
            epoch: Instant::now(),
            up: AtomicBool::new(up),
            rise_count: AtomicU32::new(0),
            fall_count: AtomicU32::new(0),
            checks: AtomicU64::new(0),
            fails: AtomicU32::new(0),
            window_start_ms: AtomicU64::new(0),
            ejected_until_ms: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
        }
    }

    /// Requests proxied to this address right now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Only [`super::in_flight::InFlight`] calls these, in pairs.
    pub(super) fn in_flight_add(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn in_flight_sub(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 can mean "never".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Is the server usable given active and passive state?
    pub fn available(&self, _spec: &ServerSpec) -> bool {
        if !self.up.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    /// Records one active check with the pool's thresholds; returns the flip it caused, if any.
    pub fn record_check(&self, passed: bool, rise: u32, fall: u32) -> Option<Flip> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let up = self.up.load(Ordering::Relaxed);
        if passed {
            self.fall_count.store(0, Ordering::Relaxed);
            let count = self
                .rise_count
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if !up && count >= rise {
                self.up.store(true, Ordering::Relaxed);
                return Some(Flip::Up);
            }
        } else {
            self.rise_count.store(0, Ordering::Relaxed);
            let count = self
                .fall_count
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if up && count >= fall {
                self.up.store(false, Ordering::Relaxed);
                return Some(Flip::Down);
            }
        }
        None
    }

    /// Consecutive passing checks (shown as `rise` on the status page).
    pub fn rise_count(&self) -> u32 {
        self.rise_count.load(Ordering::Relaxed)
    }

    /// Consecutive failing checks (shown as `fall` on the status page).
    pub fn fall_count(&self) -> u32 {
        self.fall_count.load(Ordering::Relaxed)
    }

    /// Active checks run so far.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// Is the server currently ejected by passive failures?
    pub fn ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    /// Records a failed attempt. Returns true when this failure ejected the server.
    pub fn record_failure(&self, spec: &ServerSpec) -> bool {
        if spec.max_fails == 0 {
            return false;
        }
        let now = self.now_ms();
        let window = duration_ms(spec.fail_timeout);
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let fails = if start == 0 || now.saturating_sub(start) > window {
            self.window_start_ms.store(now, Ordering::Relaxed);
            self.fails.store(1, Ordering::Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if fails >= spec.max_fails {
            self.ejected_until_ms
                .store(now.saturating_add(window.max(1)), Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
            self.window_start_ms.store(0, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// A successful response: nginx forgets earlier failures.
    pub fn record_success(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
            self.window_start_ms.store(0, Ordering::Relaxed);
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Address-keyed registry of [`ServerHealth`], shared by all pools.
#[derive(Debug, Default)]
pub struct HealthTable {
    entries: Mutex<HashMap<SocketAddr, Arc<ServerHealth>>>,
}

impl HealthTable {
    /// The state for `addr`, created (up) on first use.
    pub fn get(&self, addr: SocketAddr) -> Arc<ServerHealth> {
        self.get_or_start(addr, true)
    }

    /// The state for `addr`; a new entry starts `up` or down. An address already known (listed
    /// by another pool, or listed again with another weight) keeps its state.
    pub fn get_or_start(&self, addr: SocketAddr, up: bool) -> Arc<ServerHealth> {
        self.entries
            .lock()
            .entry(addr)
            .or_insert_with(|| Arc::new(ServerHealth::starting(up)))
            .clone()
    }

    /// Drops state no pool refers to any more (called after pool updates).
    pub fn collect_garbage(&self) {
        self.entries.lock().retain(|_, h| Arc::strong_count(h) > 1);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max_fails: u32, fail_timeout: Duration) -> ServerSpec {
        let mut s = ServerSpec::new(SocketAddr::from(([127, 0, 0, 1], 1)), "127.0.0.1:1");
        s.max_fails = max_fails;
        s.fail_timeout = fail_timeout;
        s
    }

    #[test]
    fn ejects_after_max_fails_within_fail_timeout() {
        let h = ServerHealth::default();
        let s = spec(2, Duration::from_secs(10));
        assert!(!h.record_failure(&s));
        assert!(h.available(&s));
        assert!(h.record_failure(&s));
        assert!(!h.available(&s));
        assert!(h.ejected());
    }

    #[test]
    fn max_fails_zero_disables_passive_ejection() {
        let h = ServerHealth::default();
        let s = spec(0, Duration::from_secs(10));
        for _ in 0..10 {
            assert!(!h.record_failure(&s));
        }
        assert!(h.available(&s));
    }

    #[test]
    fn an_endless_fail_timeout_ejects_without_overflow() {
        // Parsers refuse over a day; a spec built otherwise must still not overflow (a panic in
        // debug builds, a wrapped "ejected until" in release).
        let h = ServerHealth::default();
        let s = spec(1, Duration::MAX);
        assert!(h.record_failure(&s));
        assert!(h.ejected());
    }

    #[test]
    fn ejection_ends_after_fail_timeout() {
        let h = ServerHealth::default();
        let s = spec(1, Duration::from_millis(30));
        assert!(h.record_failure(&s));
        assert!(!h.available(&s));
        let deadline = Instant::now() + Duration::from_secs(2);
        while !h.available(&s) {
            assert!(
                Instant::now() < deadline,
                "still ejected after fail_timeout"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn success_resets_the_failure_count() {
        let h = ServerHealth::default();
        let s = spec(2, Duration::from_secs(10));
        h.record_failure(&s);
        h.record_success();
        assert!(!h.record_failure(&s), "count restarted after a success");
    }

    #[test]
    fn rise_and_fall_count_consecutive_checks_like_the_check_module() {
        let h = ServerHealth::starting(false);
        assert_eq!(h.record_check(true, 2, 3), None, "one pass is not enough");
        assert_eq!(h.record_check(false, 2, 3), None);
        assert_eq!(h.rise_count(), 0, "a failure resets rise");
        assert_eq!(h.record_check(true, 2, 3), None);
        assert_eq!(h.record_check(true, 2, 3), Some(Flip::Up));
        assert!(h.is_up());
        assert_eq!(h.record_check(true, 2, 3), None, "no flip when already up");
        assert_eq!(h.rise_count(), 3);
        assert_eq!(h.record_check(false, 2, 3), None);
        assert_eq!(h.record_check(false, 2, 3), None);
        assert_eq!((h.rise_count(), h.fall_count()), (0, 2));
        assert_eq!(h.record_check(false, 2, 3), Some(Flip::Down));
        assert!(!h.is_up());
        assert_eq!(
            h.record_check(false, 2, 3),
            None,
            "no flip when already down"
        );
        assert_eq!(h.checks(), 9);
    }

    #[test]
    fn new_entries_start_as_asked_and_known_ones_keep_their_state() {
        let t = HealthTable::default();
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let h = t.get_or_start(a, false);
        assert!(!h.is_up(), "default_down: never checked, no traffic");
        h.set_up(true);
        assert!(
            t.get_or_start(a, false).is_up(),
            "known address keeps its state"
        );
        assert!(t.get(SocketAddr::from(([127, 0, 0, 1], 2))).is_up());
    }

    #[test]
    fn table_shares_state_per_address_and_collects_unused() {
        let t = HealthTable::default();
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let h1 = t.get(a);
        h1.set_up(false);
        assert!(!t.get(a).is_up(), "same address, same state");
        drop(h1);
        t.collect_garbage();
        assert!(t.is_empty());
    }
}
