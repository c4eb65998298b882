//! A named pool of servers and the choice of one server per attempt.
//!
//! Selection is nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`): every
//! candidate adds its weight to a running score, the best score wins and pays back the total.
//! It spreads weights evenly (3:1 gives A A B A, not A A A B) and, because unusable servers are
//! simply skipped in the same pass, the share of the remaining servers stays proportional to their
//! weights. Primary servers are tried first; `backup` servers only when no primary is usable.
//!
//! The server list is an immutable snapshot behind `ArcSwap`, replaced whole on every change, so
//! readers never block writers. Only the small score vector sits behind a mutex.
//!
//! Passive failures never empty a pool on a hiccup (nginx's two group rules, see
//! `docs/health.md`):
//! - **one server**: a pool with a single server that is not `down` never ejects it
//!   ([`Pool::counts_failures`] is false), as nginx ignores `max_fails` for a lone server;
//! - **panic mode**: when no server passes the filters but some are kept out *only* by passive
//!   ejection, their counts are reset and the pick is made again among them (nginx resets the
//!   counts too, but answers that one request with 502 first; Envoy's panic threshold routes to
//!   every host). A server that active checks hold `down`, one marked `down` and a drained one
//!   stay out: an active check is evidence, a few failed requests are a hiccup.
//!
//! A server enabled again after `down` starts over like a new one ([`Pool::replace`]): with
//! `default_down` it takes traffic only after `rise` passing checks, whatever its state before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use log::warn;
use parking_lot::Mutex;

use super::health::HealthTable;
use super::server::Server;
use super::spec::ServerSpec;
use crate::config::health::HealthSettings;

/// At most one panic-mode log line per pool per this many milliseconds.
const PANIC_LOG_EVERY_MS: u64 = 1_000;

/// An immutable view of a pool's servers.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Bumped on every change; resets the round-robin scores.
    pub generation: u64,
    pub servers: Vec<Arc<Server>>,
}

impl Snapshot {
    pub fn specs(&self) -> Vec<ServerSpec> {
        self.servers.iter().map(|s| s.spec.clone()).collect()
    }
}

#[derive(Debug, Default)]
struct Scores {
    generation: u64,
    current: Vec<i64>,
}

/// What changed between two versions of a pool, for the log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "added [{}] removed [{}] changed [{}]",
            self.added.join(", "),
            self.removed.join(", "),
            self.changed.join(", ")
        )
    }
}

/// A named pool.
#[derive(Debug)]
pub struct Pool {
    pub name: String,
    /// The name as a header value (`X-Graysplit-Pool`), made once rather than per answer;
    /// `None` for a name that is no valid header value.
    pub name_value: Option<http::HeaderValue>,
    /// When false, an update to zero servers is refused and the last servers are kept.
    pub allow_empty: bool,
    snapshot: ArcSwap<Snapshot>,
    scores: Mutex<Scores>,
    generation: AtomicU64,
    health: Arc<HealthTable>,
    /// Active-check settings, set once at startup; unset or disabled: no active checks.
    checks: OnceLock<Arc<HealthSettings>>,
    /// Times panic mode reset passive ejections (shown in `/metrics`).
    panics: AtomicU64,
    /// When panic mode was last logged (ms since `created`, 0 = never).
    panic_logged_ms: AtomicU64,
    created: Instant,
}

/// Outcome of [`Pool::replace`].
#[derive(Debug, PartialEq, Eq)]
pub enum Update {
    Unchanged,
    Applied(Diff),
    /// An empty list for a pool that must not be empty: the last servers were kept.
    RefusedEmpty,
}

impl Pool {
    pub fn new(name: impl Into<String>, allow_empty: bool, health: Arc<HealthTable>) -> Self {
        let name: String = name.into();
        Self {
            name_value: http::HeaderValue::from_str(&name).ok(),
            name,
            allow_empty,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            scores: Mutex::new(Scores::default()),
            generation: AtomicU64::new(0),
            health,
            checks: OnceLock::new(),
            panics: AtomicU64::new(0),
            panic_logged_ms: AtomicU64::new(0),
            created: Instant::now(),
        }
    }

    /// Sets the pool's active-check settings, once, before its first server list is applied:
    /// with `default_down`, servers that appear from then on start down until checks pass them.
    /// Returns false (and changes nothing) when they were already set.
    pub fn set_checks(&self, settings: HealthSettings) -> bool {
        self.checks.set(Arc::new(settings)).is_ok()
    }

    /// The active-check settings, when checks are enabled for this pool.
    pub fn checks(&self) -> Option<&Arc<HealthSettings>> {
        self.checks.get().filter(|s| s.enabled)
    }

    fn starts_down(&self) -> bool {
        self.checks().is_some_and(|s| s.default_down)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces the server list. Health state carries over per address, except for a server
    /// enabled again after `down`: it starts over like a new server (module docs).
    pub fn replace(&self, specs: Vec<ServerSpec>) -> Update {
        let old = self.snapshot.load_full();
        if specs.is_empty() && !old.servers.is_empty() && !self.allow_empty {
            return Update::RefusedEmpty;
        }
        let diff = diff(&old.specs(), &specs);
        if diff.is_empty() {
            return Update::Unchanged;
        }
        let starts_up = !self.starts_down();
        let servers = specs
            .into_iter()
            .map(|spec| {
                let health = self.health.get_or_start(spec.addr, starts_up);
                let enabled_again = !spec.down
                    && old
                        .servers
                        .iter()
                        .any(|o| o.spec.addr == spec.addr && o.spec.down);
                if enabled_again {
                    // Not checked while down (as the check module does), so what it knew is
                    // stale: the server may have broken meanwhile.
                    health.restart(starts_up);
                }
                Arc::new(Server { health, spec })
            })
            .collect();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.snapshot.store(Arc::new(Snapshot {
            generation,
            servers,
        }));
        drop(old);
        self.health.collect_garbage();
        Update::Applied(diff)
    }

    /// Picks a server for one attempt. `accept` filters further (e.g. servers already tried).
    /// Primary servers first, then backups; when only passive ejection stands in the way, panic
    /// mode (module docs).
    pub fn select(&self, accept: impl Fn(&Server) -> bool) -> Option<Arc<Server>> {
        let snap = self.snapshot.load();
        let usable = |s: &Server| s.selectable() && accept(s);
        let pick = |snap: &Snapshot| {
            self.pick(snap, |s| !s.spec.backup && usable(s))
                .or_else(|| self.pick(snap, |s| s.spec.backup && usable(s)))
        };
        pick(&snap).or_else(|| self.panic(&snap, &accept).then(|| pick(&snap)).flatten())
    }

    /// Panic mode: forgives the passive failures of every server that `accept`s and is kept out
    /// by them alone. Returns whether any was forgiven.
    fn panic(&self, snap: &Snapshot, accept: &impl Fn(&Server) -> bool) -> bool {
        let mut forgiven = Vec::new();
        for s in &snap.servers {
            if s.usable_but_for_passive() && !s.selectable() && accept(s) {
                s.health.forgive();
                forgiven.push(s.spec.name.as_str());
            }
        }
        if forgiven.is_empty() {
            return false;
        }
        self.panics.fetch_add(1, Ordering::Relaxed);
        let now = self.created.elapsed().as_millis() as u64 + 1;
        let last = self.panic_logged_ms.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= PANIC_LOG_EVERY_MS {
            self.panic_logged_ms.store(now, Ordering::Relaxed);
            warn!(
                "pool {}: every usable server was ejected by passive failures; trying them again \
                 (panic mode, counts reset): {}",
                self.name,
                forgiven.join(", ")
            );
        }
        true
    }

    /// How often panic mode reset this pool's passive ejections.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Do passive failures count in this pool? Not when it has a single server that is not
    /// `down`: nginx's "if there is only a single server in a group, max_fails, fail_timeout
    /// ... are ignored, and such a server will never be considered unavailable".
    pub fn counts_failures(&self) -> bool {
        self.snapshot
            .load()
            .servers
            .iter()
            .filter(|s| !s.spec.down)
            .nth(1)
            .is_some()
    }

    /// Picks among drained (`weight 0`) servers that are otherwise up, round robin, for assets
    /// pinned to a build that is being drained. `accept` filters (build, servers tried).
    pub fn select_draining(&self, accept: impl Fn(&Server) -> bool) -> Option<Arc<Server>> {
        let snap = self.snapshot.load();
        self.pick(&snap, |s| s.draining() && accept(s))
    }

    /// Would [`Pool::select`] find a server? (Does not move the round robin, resets nothing.)
    /// Passive ejection alone does not count: panic mode would pick such a server.
    pub fn has_usable(&self, accept: impl Fn(&Server) -> bool) -> bool {
        self.snapshot
            .load()
            .servers
            .iter()
            .any(|s| s.usable_but_for_passive() && accept(s))
    }

    fn pick(&self, snap: &Snapshot, candidate: impl Fn(&Server) -> bool) -> Option<Arc<Server>> {
        let mut scores = self.scores.lock();
        if scores.generation != snap.generation || scores.current.len() != snap.servers.len() {
            scores.generation = snap.generation;
            scores.current = vec![0; snap.servers.len()];
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, server) in snap.servers.iter().enumerate() {
            if !candidate(server) {
                continue;
            }
            // Drained servers (weight 0) are candidates only in `select_draining`: equal shares.
            let weight = i64::from(server.spec.weight.max(1));
            scores.current[i] += weight;
            total += weight;
            if best.is_none_or(|b| scores.current[i] > scores.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        scores.current[best] -= total;
        let server = &snap.servers[best];
        server.health.note_picked(&server.spec);
        Some(server.clone())
    }
}

fn diff(old: &[ServerSpec], new: &[ServerSpec]) -> Diff {
    let mut d = Diff::default();
    for n in new {
        match old.iter().find(|o| o.addr == n.addr) {
            None => d.added.push(n.name.clone()),
            Some(o) if o != n => d.changed.push(n.name.clone()),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|n| n.addr == o.addr) {
            d.removed.push(o.name.clone());
        }
    }
    // Same servers in a different order is still a change of the snapshot (round robin order).
    if d.is_empty() && old.len() == new.len() && old != new {
        d.changed.push("(order)".into());
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::SocketAddr;

    fn spec(port: u16, weight: u32) -> ServerSpec {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = ServerSpec::new(addr, addr.to_string());
        s.weight = weight;
        s
    }

    fn pool(specs: Vec<ServerSpec>) -> Pool {
        let p = Pool::new("base", false, Arc::new(HealthTable::default()));
        p.replace(specs);
        p
    }

    fn counts(p: &Pool, n: usize) -> HashMap<u16, usize> {
        let mut c = HashMap::new();
        for _ in 0..n {
            let s = p.select(|_| true).expect("a server");
            *c.entry(s.spec.addr.port()).or_default() += 1;
        }
        c
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves_like_nginx() {
        let p = pool(vec![spec(1, 5), spec(2, 1), spec(3, 1)]);
        let order: Vec<u16> = (0..7)
            .map(|_| p.select(|_| true).unwrap().spec.addr.port())
            .collect();
        // nginx's documented sequence for weights 5,1,1: a a b a c a a
        assert_eq!(order, vec![1, 1, 2, 1, 3, 1, 1]);
    }

    #[test]
    fn weights_split_traffic_exactly_over_a_cycle() {
        let p = pool(vec![spec(1, 3), spec(2, 1)]);
        let c = counts(&p, 400);
        assert_eq!((c[&1], c[&2]), (300, 100));
    }

    #[test]
    fn down_and_drained_servers_get_nothing() {
        let mut down = spec(2, 1);
        down.down = true;
        let p = pool(vec![spec(1, 1), down, spec(3, 0)]);
        let c = counts(&p, 50);
        assert_eq!(c.get(&1), Some(&50));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn backup_is_used_only_when_no_primary_is_usable() {
        let mut b = spec(9, 1);
        b.backup = true;
        let p = pool(vec![spec(1, 1), b]);
        assert_eq!(counts(&p, 10).get(&9), None);
        let s = p.select(|s| s.spec.addr.port() != 1).unwrap();
        assert_eq!(s.spec.addr.port(), 9);
    }

    #[test]
    fn accept_filter_skips_tried_servers_and_keeps_ratio_among_the_rest() {
        let p = pool(vec![spec(1, 1), spec(2, 2), spec(3, 1)]);
        let mut c: HashMap<u16, usize> = HashMap::new();
        for _ in 0..300 {
            let s = p.select(|s| s.spec.addr.port() != 3).unwrap();
            *c.entry(s.spec.addr.port()).or_default() += 1;
        }
        assert_eq!((c[&1], c[&2]), (100, 200));
    }

    #[test]
    fn nothing_usable_returns_none() {
        let p = pool(vec![spec(1, 1)]);
        assert!(p.select(|_| false).is_none());
        let empty = Pool::new("gray", true, Arc::new(HealthTable::default()));
        assert!(empty.select(|_| true).is_none());
    }

    #[test]
    fn empty_update_is_refused_unless_allowed() {
        let p = pool(vec![spec(1, 1)]);
        assert_eq!(p.replace(vec![]), Update::RefusedEmpty);
        assert_eq!(p.snapshot().servers.len(), 1);
        let g = Pool::new("gray", true, Arc::new(HealthTable::default()));
        g.replace(vec![spec(1, 1)]);
        assert!(matches!(g.replace(vec![]), Update::Applied(_)));
        assert!(g.snapshot().servers.is_empty());
    }

    #[test]
    fn weight_change_keeps_health_state() {
        let p = pool(vec![spec(1, 1), spec(2, 1)]);
        p.snapshot().servers[0].health.set_up(false);
        let u = p.replace(vec![spec(1, 5), spec(2, 1)]);
        assert_eq!(
            u,
            Update::Applied(Diff {
                changed: vec!["127.0.0.1:1".into()],
                ..Diff::default()
            })
        );
        assert!(
            !p.snapshot().servers[0].health.is_up(),
            "still down after weight change"
        );
        assert_eq!(p.replace(vec![spec(1, 5), spec(2, 1)]), Update::Unchanged);
    }

    #[test]
    fn start_down_applies_to_new_addresses_only() {
        let p = pool(vec![spec(1, 1)]);
        assert!(p.set_checks(HealthSettings::default()));
        assert!(!p.set_checks(HealthSettings::default()), "set once");
        p.replace(vec![spec(1, 1), spec(2, 1)]);
        let snap = p.snapshot();
        assert!(
            snap.servers[0].health.is_up(),
            "known server keeps its state"
        );
        assert!(
            !snap.servers[1].health.is_up(),
            "new server waits for its checks"
        );
        assert_eq!(counts(&p, 4).get(&1), Some(&4));
        assert!(p.has_usable(|_| true));
        assert!(!p.has_usable(|s| s.spec.addr.port() == 2));
    }

    /// Ejects `port` through passive failures (its spec's max_fails of them).
    fn eject(p: &Pool, port: u16) {
        let snap = p.snapshot();
        let s = snap
            .servers
            .iter()
            .find(|s| s.spec.addr.port() == port)
            .expect("server");
        for _ in 0..s.spec.max_fails {
            s.health.record_failure(&s.spec);
        }
        assert!(s.health.ejected());
    }

    #[test]
    fn one_ejected_server_of_two_leaves_the_other_and_no_panic() {
        let p = pool(vec![spec(1, 1), spec(2, 1)]);
        eject(&p, 1);
        assert_eq!(counts(&p, 6).get(&2), Some(&6));
        assert_eq!(p.panics(), 0);
    }

    #[test]
    fn every_server_ejected_means_panic_mode_not_an_empty_pool() {
        let p = pool(vec![spec(1, 1), spec(2, 1)]);
        eject(&p, 1);
        eject(&p, 2);
        assert!(
            p.has_usable(|_| true),
            "passive ejection alone leaves them usable"
        );
        let c = counts(&p, 4);
        assert_eq!((c.get(&1), c.get(&2)), (Some(&2), Some(&2)), "{c:?}");
        assert_eq!(p.panics(), 1, "one reset, then both count from zero");
        for s in &p.snapshot().servers {
            assert_eq!(s.health.fails(), 0);
        }
    }

    #[test]
    fn panic_mode_never_revives_a_server_down_by_checks_marked_down_or_drained() {
        let mut down = spec(2, 1);
        down.down = true;
        let p = pool(vec![spec(1, 1), down, spec(3, 0), spec(4, 1)]);
        p.snapshot().servers[3].health.set_up(false);
        eject(&p, 1);
        let c = counts(&p, 3);
        assert_eq!(
            c.get(&1),
            Some(&3),
            "only the ejected one is revived: {c:?}"
        );
        p.snapshot().servers[0].health.set_up(false);
        assert!(
            p.select(|_| true).is_none(),
            "active checks say down: no panic"
        );
        assert!(!p.has_usable(|_| true));
    }

    #[test]
    fn panic_mode_respects_the_filter() {
        let p = pool(vec![spec(1, 1), spec(2, 1)]);
        eject(&p, 1);
        eject(&p, 2);
        // A retry that already tried 2: only 1 is forgiven and picked.
        let s = p.select(|s| s.spec.addr.port() != 2).expect("panic pick");
        assert_eq!(s.spec.addr.port(), 1);
        assert!(
            p.snapshot().servers[1].health.ejected(),
            "2 was not forgiven"
        );
    }

    #[test]
    fn a_backup_is_used_before_panic_mode() {
        let mut b = spec(9, 1);
        b.backup = true;
        let p = pool(vec![spec(1, 1), b]);
        eject(&p, 1);
        assert_eq!(p.select(|_| true).unwrap().spec.addr.port(), 9);
        assert_eq!(p.panics(), 0);
    }

    #[test]
    fn a_pool_of_one_server_does_not_count_failures() {
        let p = pool(vec![spec(1, 1)]);
        assert!(!p.counts_failures());
        let mut down = spec(2, 1);
        down.down = true;
        p.replace(vec![spec(1, 1), down.clone()]);
        assert!(!p.counts_failures(), "a server marked down does not count");
        p.replace(vec![spec(1, 1), spec(2, 1)]);
        assert!(p.counts_failures());
        let mut backup = spec(2, 1);
        backup.backup = true;
        p.replace(vec![spec(1, 1), backup]);
        assert!(
            p.counts_failures(),
            "a backup takes over an ejected primary"
        );
    }

    #[test]
    fn a_server_enabled_again_after_down_starts_over() {
        let p = pool(vec![spec(1, 1)]);
        p.set_checks(HealthSettings::default());
        p.replace(vec![spec(1, 1), spec(2, 1)]);
        let h2 = p.snapshot().servers[1].health.clone();
        h2.set_up(true); // passed its checks
        let mut down = spec(2, 1);
        down.down = true;
        p.replace(vec![spec(1, 1), down]);
        assert!(h2.is_up(), "marked down: not checked, state untouched");
        p.replace(vec![spec(1, 1), spec(2, 1)]);
        assert!(
            !h2.is_up(),
            "enabled again: waits for rise checks like a new server"
        );
        assert!(std::sync::Arc::ptr_eq(&h2, &p.snapshot().servers[1].health));
        assert_eq!(counts(&p, 3).get(&1), Some(&3));
        // A weight change of an enabled server keeps its state.
        h2.set_up(true);
        p.replace(vec![spec(1, 1), spec(2, 7)]);
        assert!(h2.is_up());
    }

    #[test]
    fn diff_names_added_removed_changed() {
        let d = diff(&[spec(1, 1), spec(2, 1)], &[spec(2, 3), spec(3, 1)]);
        assert_eq!(d.added, vec!["127.0.0.1:3"]);
        assert_eq!(d.removed, vec!["127.0.0.1:1"]);
        assert_eq!(d.changed, vec!["127.0.0.1:2"]);
    }
}
