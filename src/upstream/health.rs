//! Live per-address server state shared by every pool that lists the address.
//!
//! Active checks follow nginx_upstream_check_module: a pass bumps the consecutive `rise` counter
//! and clears `fall`, a failure does the opposite; a down server comes up at `rise` passes, an up
//! server goes down at `fall` failures. Only the one check task of an address writes these.
//!
//! Passive failures follow nginx's round robin (`ngx_http_upstream_round_robin.c`) exactly, with
//! its two timestamps: `accessed` (the last failure) and `checked` (the last failure, or the
//! moment the server was picked again after `fail_timeout` had passed since `checked`):
//! - a failed attempt increments `fails` and sets both timestamps to now;
//! - the server is unavailable while `fails >= max_fails` and `now - checked <= fail_timeout`;
//! - a pick after `fail_timeout` moves `checked` to now: after an ejection that pick is the one
//!   trial request, and the server is skipped again while it runs;
//! - a success clears `fails` only when `accessed < checked`, i.e. when the server was picked
//!   after `fail_timeout` had passed since its last failure. A success in between does not wipe
//!   the slate: a server failing every other request is ejected, and after an ejection expires
//!   the next failure ejects it again;
//! - `max_fails = 0` disables all of it.
//!
//! nginx's two group rules (a pool of one server is never ejected; when every server is
//! unavailable the counts are reset) need the pool and live in [`super::pool`]. Everything here
//! is atomics, so the request path never takes a lock to ask "may I use this server?".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::spec::ServerSpec;

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
    /// Passive failures counted (nginx's `peer->fails`).
    fails: AtomicU32,
    /// Last failure, in ms since `epoch` (nginx's `peer->accessed`); 0 = never.
    accessed_ms: AtomicU64,
    /// Last failure or trial pick, in ms since `epoch` (nginx's `peer->checked`).
    checked_ms: AtomicU64,
    /// `checked + fail_timeout` while `fails >= max_fails` (0 = not ejected), so that
    /// [`ServerHealth::ejected`] needs no settings.
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
            accessed_ms: AtomicU64::new(0),
            checked_ms: AtomicU64::new(0),
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

    /// Starts over as a server nobody has checked yet (in place, so every pool listing the
    /// address sees it): a server enabled again after `down` may have broken meanwhile.
    pub fn restart(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.rise_count.store(0, Ordering::Relaxed);
        self.fall_count.store(0, Ordering::Relaxed);
        self.checks.store(0, Ordering::Relaxed);
        self.forgive();
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 can mean "never".
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Is the server usable given active and passive state?
    pub fn available(&self, spec: &ServerSpec) -> bool {
        // The clock is read only for a server with failures to weigh: selection asks this of
        // every server of a pool on every request.
        self.up.load(Ordering::Relaxed)
            && !(self.may_be_ejected(spec) && self.ejected_at(spec, self.now_ms()))
    }

    /// Has the server failed often enough that its ejection depends on the time?
    fn may_be_ejected(&self, spec: &ServerSpec) -> bool {
        spec.max_fails != 0 && self.fails.load(Ordering::Relaxed) >= spec.max_fails
    }

    #[cfg(test)]
    fn available_at(&self, spec: &ServerSpec, now: u64) -> bool {
        self.up.load(Ordering::Relaxed) && !self.ejected_at(spec, now)
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

    /// Passive failures currently counted against the server.
    pub fn fails(&self) -> u32 {
        self.fails.load(Ordering::Relaxed)
    }

    /// Is the server currently ejected by passive failures?
    pub fn ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() <= until
    }

    fn ejected_at(&self, spec: &ServerSpec, now: u64) -> bool {
        if !self.may_be_ejected(spec) {
            return false;
        }
        now.saturating_sub(self.checked_ms.load(Ordering::Relaxed))
            <= duration_ms(spec.fail_timeout)
    }

    /// Records a failed attempt. Returns true when the server is ejected by it (the count
    /// reached `max_fails`, or a trial after an ejection failed).
    pub fn record_failure(&self, spec: &ServerSpec) -> bool {
        self.record_failure_at(spec, self.now_ms())
    }

    fn record_failure_at(&self, spec: &ServerSpec, now: u64) -> bool {
        if spec.max_fails == 0 {
            return false;
        }
        let fails = self.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        self.accessed_ms.store(now, Ordering::Relaxed);
        self.checked_ms.store(now, Ordering::Relaxed);
        if fails >= spec.max_fails {
            self.ejected_until_ms.store(
                now.saturating_add(duration_ms(spec.fail_timeout)),
                Ordering::Relaxed,
            );
            return true;
        }
        false
    }

    /// The server was picked for an attempt: once `fail_timeout` has passed since `checked`,
    /// this pick is the trial that may clear the count (and, after an ejection, the only
    /// request it gets until the trial ends).
    pub fn note_picked(&self, spec: &ServerSpec) {
        // No failure counted (the usual case): nothing to do, and no clock to read.
        if self.fails.load(Ordering::Relaxed) != 0 && spec.max_fails != 0 {
            self.note_picked_at(spec, self.now_ms());
        }
    }

    fn note_picked_at(&self, spec: &ServerSpec, now: u64) {
        let fails = self.fails.load(Ordering::Relaxed);
        if fails == 0 || spec.max_fails == 0 {
            return;
        }
        let window = duration_ms(spec.fail_timeout);
        if now.saturating_sub(self.checked_ms.load(Ordering::Relaxed)) > window {
            self.checked_ms.store(now, Ordering::Relaxed);
            if fails >= spec.max_fails {
                self.ejected_until_ms
                    .store(now.saturating_add(window), Ordering::Relaxed);
            }
        }
    }

    /// A successful response: the count is cleared only when the server was picked after
    /// `fail_timeout` had passed since its last failure (`accessed < checked`).
    pub fn record_success(&self) {
        if self.fails.load(Ordering::Relaxed) == 0 {
            return;
        }
        if self.accessed_ms.load(Ordering::Relaxed) < self.checked_ms.load(Ordering::Relaxed) {
            self.forgive();
        }
    }

    /// Clears every passive failure (nginx: "all peers failed, mark them as live for quick
    /// recovery"; also a fresh start).
    pub fn forgive(&self) {
        self.fails.store(0, Ordering::Relaxed);
        self.ejected_until_ms.store(0, Ordering::Relaxed);
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
    fn ejects_after_max_fails() {
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
        assert_eq!(h.fails(), 0);
    }

    #[test]
    fn an_endless_fail_timeout_ejects_without_overflow() {
        // Parsers refuse over a day; a spec built otherwise must still not overflow (a panic in
        // debug builds, a wrapped "ejected until" in release).
        let h = ServerHealth::default();
        let s = spec(1, Duration::MAX);
        assert!(h.record_failure(&s));
        assert!(h.ejected());
        h.note_picked(&s);
        assert!(h.ejected());
    }

    /// Times below are ms since the state's epoch, as nginx's are seconds since its clock.
    const T: u64 = 1_000;

    #[test]
    fn a_success_within_fail_timeout_does_not_clear_the_count() {
        // nginx: `accessed < checked` is false until a pick after fail_timeout moved `checked`.
        let h = ServerHealth::default();
        let s = spec(2, Duration::from_millis(T));
        h.record_failure_at(&s, 10);
        h.note_picked_at(&s, 20);
        h.record_success();
        assert_eq!(h.fails(), 1, "the success came within fail_timeout");
        assert!(
            h.record_failure_at(&s, 30),
            "every other request failing: ejected"
        );
        assert!(!h.available_at(&s, 31));
    }

    #[test]
    fn a_success_after_fail_timeout_clears_the_count() {
        let h = ServerHealth::default();
        let s = spec(2, Duration::from_millis(T));
        h.record_failure_at(&s, 10);
        h.note_picked_at(&s, 10 + T + 1);
        h.record_success();
        assert_eq!(h.fails(), 0);
        assert!(!h.record_failure_at(&s, 2 * T + 20), "a fresh count");
    }

    #[test]
    fn a_failure_long_after_the_last_still_counts_without_a_clearing_success() {
        // nginx keeps `fails` until a success clears it: without traffic in between, a failure
        // an hour later completes the count.
        let h = ServerHealth::default();
        let s = spec(2, Duration::from_millis(T));
        h.record_failure_at(&s, 10);
        assert!(h.record_failure_at(&s, 3_600_000));
    }

    #[test]
    fn after_an_ejection_one_trial_is_let_through_and_a_failure_ejects_again() {
        let h = ServerHealth::default();
        let s = spec(2, Duration::from_millis(T));
        h.record_failure_at(&s, 10);
        h.record_failure_at(&s, 20);
        assert!(!h.available_at(&s, 20 + T), "ejected for fail_timeout");
        let expired = 20 + T + 1;
        assert!(h.available_at(&s, expired), "expired");
        h.note_picked_at(&s, expired);
        assert!(
            !h.available_at(&s, expired + 1),
            "while the trial runs, nothing else is sent"
        );
        assert!(
            h.record_failure_at(&s, expired + 5),
            "the trial failed: ejected again"
        );
        assert!(!h.available_at(&s, expired + 5 + T));
        assert!(h.available_at(&s, expired + 5 + T + 1));
    }

    #[test]
    fn after_an_ejection_a_successful_trial_clears_the_count() {
        let h = ServerHealth::default();
        let s = spec(2, Duration::from_millis(T));
        h.record_failure_at(&s, 10);
        h.record_failure_at(&s, 20);
        h.note_picked_at(&s, 20 + T + 1);
        h.record_success();
        assert_eq!(h.fails(), 0);
        assert!(h.available_at(&s, 20 + T + 2));
        assert!(!h.ejected());
    }

    #[test]
    fn ejection_ends_after_fail_timeout_on_the_real_clock() {
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
        assert!(!h.ejected());
    }

    #[test]
    fn forgive_and_restart_start_over() {
        let h = ServerHealth::default();
        let s = spec(1, Duration::from_secs(10));
        h.record_failure(&s);
        h.forgive();
        assert!(h.available(&s) && !h.ejected() && h.fails() == 0);
        h.record_check(true, 1, 1);
        h.record_failure(&s);
        h.restart(false);
        assert!(!h.is_up(), "checked again before traffic");
        assert_eq!((h.checks(), h.rise_count(), h.fails()), (0, 0, 0));
        assert!(!h.ejected());
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
