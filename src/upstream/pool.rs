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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use super::health::HealthTable;
use super::server::{Server, ServerSpec};
use crate::config::health::HealthSettings;

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
    /// When false, an update to zero servers is refused and the last servers are kept.
    pub allow_empty: bool,
    snapshot: ArcSwap<Snapshot>,
    scores: Mutex<Scores>,
    generation: AtomicU64,
    health: Arc<HealthTable>,
    /// Active-check settings, set once at startup; unset or disabled: no active checks.
    checks: OnceLock<Arc<HealthSettings>>,
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
        Self {
            name: name.into(),
            allow_empty,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            scores: Mutex::new(Scores::default()),
            generation: AtomicU64::new(0),
            health,
            checks: OnceLock::new(),
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

    /// Replaces the server list. Health state carries over per address.
    pub fn replace(&self, specs: Vec<ServerSpec>) -> Update {
        let old = self.snapshot.load_full();
        if specs.is_empty() && !old.servers.is_empty() && !self.allow_empty {
            return Update::RefusedEmpty;
        }
        let diff = diff(&old.specs(), &specs);
        if diff.is_empty() {
            return Update::Unchanged;
        }
        let servers = specs
            .into_iter()
            .map(|spec| {
                Arc::new(Server {
                    health: self.health.get_or_start(spec.addr, !self.starts_down()),
                    spec,
                })
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
    pub fn select(&self, accept: impl Fn(&Server) -> bool) -> Option<Arc<Server>> {
        let snap = self.snapshot.load();
        let usable = |s: &Server| s.selectable() && accept(s);
        self.pick(&snap, |s| !s.spec.backup && usable(s))
            .or_else(|| self.pick(&snap, |s| s.spec.backup && usable(s)))
    }

    /// Picks among drained (`weight 0`) servers that are otherwise up, round robin, for assets
    /// pinned to a build that is being drained. `accept` filters (build, servers tried).
    pub fn select_draining(&self, accept: impl Fn(&Server) -> bool) -> Option<Arc<Server>> {
        let snap = self.snapshot.load();
        self.pick(&snap, |s| s.draining() && accept(s))
    }

    /// Would [`Pool::select`] find a server? (Does not move the round robin.)
    pub fn has_usable(&self, accept: impl Fn(&Server) -> bool) -> bool {
        self.snapshot
            .load()
            .servers
            .iter()
            .any(|s| s.selectable() && accept(s))
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
        Some(snap.servers[best].clone())
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

    #[test]
    fn diff_names_added_removed_changed() {
        let d = diff(&[spec(1, 1), spec(2, 1)], &[spec(2, 3), spec(3, 1)]);
        assert_eq!(d.added, vec!["127.0.0.1:3"]);
        assert_eq!(d.removed, vec!["127.0.0.1:1"]);
        assert_eq!(d.changed, vec!["127.0.0.1:2"]);
    }
}
