//! Per-(pool, build) metric handles: requests, upstream time and failed attempts labelled by the
//! build that served them, so a rolling deploy inside one pool can be compared build against
//! build.
//!
//! Bounded labels: `pool` is a configured pool; `build` is the build of the server that answered
//! (a configured build: servers only come from the pools), `none` when no server was reached, and
//! `other` once a pool has [`MAX_BUILDS_PER_POOL`] builds. Builds that left every pool are dropped
//! from the metrics at the next scrape ([`ByBuild::prune`]), so a long-running process that sees
//! a new build every deploy keeps a bounded set of series.
//!
//! Cheap on the request path: one lookup of the (pool, build) entry in a lock-free map, then
//! plain indexing by reason and status class into counters resolved once (`with_label_values`
//! runs the first time a combination occurs, never again). A reason the table does not list
//! still gets its own label, through the slow path.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

use super::FailKind;

/// The `build` label of a request that reached no server.
pub const NONE: &str = "none";
/// The `build` label once a pool has [`MAX_BUILDS_PER_POOL`] builds.
pub const OTHER: &str = "other";
/// Builds per pool with their own label; more at once is a misconfiguration, not a deploy.
pub const MAX_BUILDS_PER_POOL: usize = 16;

/// Status classes, in the order of [`class_index`].
pub const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];
const KINDS: [FailKind; 3] = [FailKind::Connect, FailKind::Status, FailKind::Error];

/// The index into [`CLASSES`] of a status (`0`: nothing was sent, the client had gone).
pub fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// The counters of one (pool, build), each resolved on first use.
pub struct Handles {
    pool: String,
    build: String,
    /// `[reason index][class index]`, reasons as in `crate::gray::REASONS`.
    requests: Vec<[OnceLock<IntCounter>; 6]>,
    /// Reasons outside the table seen for this entry (their series, for pruning).
    other_reasons: Mutex<Vec<&'static str>>,
    upstream: OnceLock<Histogram>,
    failures: [OnceLock<IntCounter>; 3],
}

impl Handles {
    fn new(pool: &str, build: &str) -> Handles {
        Handles {
            pool: pool.to_string(),
            build: build.to_string(),
            requests: crate::gray::REASONS
                .iter()
                .map(|_| Default::default())
                .collect(),
            other_reasons: Mutex::new(Vec::new()),
            upstream: OnceLock::new(),
            failures: Default::default(),
        }
    }
}

/// Keys are configured pool and build names, not client input, so the hash need not resist
/// flooding: foldhash instead of SipHash (the lookup runs once per request).
type Hasher = foldhash::fast::RandomState;
type Map = HashMap<String, HashMap<String, Arc<Handles>, Hasher>, Hasher>;

/// The per-build families and their handles.
pub struct ByBuild {
    requests: IntCounterVec,
    upstream: HistogramVec,
    failures: IntCounterVec,
    map: ArcSwap<Map>,
    /// Serialises the rare writers (a new build, pruning); readers never wait.
    grow: Mutex<()>,
}

/// One line of [`ByBuild::totals`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Total {
    pub pool: String,
    pub build: String,
    pub reason: String,
    pub class: &'static str,
    pub requests: u64,
}

impl ByBuild {
    /// `requests` is labelled pool, build, reason, class; `upstream` pool, build; `failures`
    /// pool, build, kind.
    pub fn new(requests: IntCounterVec, upstream: HistogramVec, failures: IntCounterVec) -> Self {
        Self {
            requests,
            upstream,
            failures,
            map: ArcSwap::from_pointee(Map::default()),
            grow: Mutex::new(()),
        }
    }

    /// The handles of (pool, build); `other` past the cap.
    pub fn handles(&self, pool: &str, build: &str) -> Arc<Handles> {
        if let Some(h) = self.map.load().get(pool).and_then(|b| b.get(build)) {
            return h.clone();
        }
        let _writer = self.grow.lock();
        let current = self.map.load_full();
        if let Some(h) = current.get(pool).and_then(|b| b.get(build)) {
            return h.clone();
        }
        let builds = current.get(pool);
        let counted = builds.map_or(0, |b| {
            b.keys().filter(|k| *k != NONE && *k != OTHER).count()
        });
        let label = if build == NONE || counted < MAX_BUILDS_PER_POOL {
            build
        } else {
            OTHER
        };
        if let Some(h) = builds.and_then(|b| b.get(label)) {
            return h.clone();
        }
        let handles = Arc::new(Handles::new(pool, label));
        let mut next = (*current).clone();
        next.entry(pool.to_string())
            .or_default()
            .insert(label.to_string(), handles.clone());
        self.map.store(Arc::new(next));
        handles
    }

    /// One finished request; `upstream` is its time from the first upstream attempt, if any.
    pub fn request(&self, h: &Handles, reason: &'static str, status: u16, upstream: Option<f64>) {
        let class = class_index(status);
        let labels = [h.pool.as_str(), h.build.as_str(), reason, CLASSES[class]];
        match reason_index(reason) {
            Some(i) => h.requests[i][class]
                .get_or_init(|| self.requests.with_label_values(&labels))
                .inc(),
            None => {
                let mut seen = h.other_reasons.lock();
                if !seen.contains(&reason) {
                    seen.push(reason);
                }
                drop(seen);
                self.requests.with_label_values(&labels).inc();
            }
        }
        if let Some(secs) = upstream {
            h.upstream
                .get_or_init(|| self.upstream.with_label_values(&[&h.pool, &h.build]))
                .observe(secs);
        }
    }

    /// One failed upstream attempt.
    pub fn failure(&self, h: &Handles, kind: FailKind) {
        let i = KINDS.iter().position(|k| *k == kind).unwrap_or(0);
        h.failures[i]
            .get_or_init(|| {
                self.failures
                    .with_label_values(&[&h.pool, &h.build, kind.label()])
            })
            .inc();
    }

    /// Drops the series of builds `configured` says are gone (`none` and `other` stay).
    pub fn prune(&self, configured: impl Fn(&str, &str) -> bool) {
        let _writer = self.grow.lock();
        let current = self.map.load_full();
        let mut next = Map::default();
        let mut dropped = Vec::new();
        for (pool, builds) in current.iter() {
            for (build, h) in builds {
                if build == NONE || build == OTHER || configured(pool, build) {
                    next.entry(pool.clone())
                        .or_default()
                        .insert(build.clone(), h.clone());
                } else {
                    dropped.push(h.clone());
                }
            }
        }
        if dropped.is_empty() {
            return;
        }
        self.map.store(Arc::new(next));
        for h in dropped {
            self.remove_series(&h);
        }
    }

    fn remove_series(&self, h: &Handles) {
        let (pool, build) = (h.pool.as_str(), h.build.as_str());
        let mut reasons: Vec<(&str, usize)> = Vec::new();
        for (i, reason) in crate::gray::REASONS.iter().enumerate() {
            for (c, slot) in h.requests[i].iter().enumerate() {
                if slot.get().is_some() {
                    reasons.push((reason, c));
                }
            }
        }
        let others = h.other_reasons.lock().clone();
        for reason in others {
            for c in 0..CLASSES.len() {
                reasons.push((reason, c));
            }
        }
        for (reason, c) in reasons {
            let _ = self
                .requests
                .remove_label_values(&[pool, build, reason, CLASSES[c]]);
        }
        if h.upstream.get().is_some() {
            let _ = self.upstream.remove_label_values(&[pool, build]);
        }
        for (i, kind) in KINDS.iter().enumerate() {
            if h.failures[i].get().is_some() {
                let _ = self
                    .failures
                    .remove_label_values(&[pool, build, kind.label()]);
            }
        }
    }

    /// Every request count so far, by pool, build, reason and class (non-zero ones), sorted.
    pub fn totals(&self) -> Vec<Total> {
        let mut out = Vec::new();
        for builds in self.map.load().values() {
            for h in builds.values() {
                for (i, reason) in crate::gray::REASONS.iter().enumerate() {
                    for (c, slot) in h.requests[i].iter().enumerate() {
                        if let Some(counter) = slot.get() {
                            out.push(total(h, reason, c, counter.get()));
                        }
                    }
                }
                for reason in h.other_reasons.lock().iter() {
                    for (c, class) in CLASSES.iter().enumerate() {
                        if let Ok(counter) = self.requests.get_metric_with_label_values(&[
                            h.pool.as_str(),
                            h.build.as_str(),
                            reason,
                            class,
                        ]) {
                            out.push(total(h, reason, c, counter.get()));
                        }
                    }
                }
            }
        }
        out.retain(|t| t.requests > 0);
        out.sort_by(|a, b| {
            (&a.pool, &a.build, &a.reason, a.class).cmp(&(&b.pool, &b.build, &b.reason, b.class))
        });
        out
    }
}

fn total(h: &Handles, reason: &str, class: usize, requests: u64) -> Total {
    Total {
        pool: h.pool.clone(),
        build: h.build.clone(),
        reason: reason.to_string(),
        class: CLASSES[class],
        requests,
    }
}

/// Reasons are `&'static str` constants, so the pointer usually matches; the text decides.
fn reason_index(reason: &str) -> Option<usize> {
    let reasons = crate::gray::REASONS;
    reasons
        .iter()
        .position(|r| std::ptr::eq(*r, reason))
        .or_else(|| reasons.iter().position(|r| *r == reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;
    use prometheus::{HistogramOpts, Opts};

    fn by_build() -> ByBuild {
        ByBuild::new(
            IntCounterVec::new(Opts::new("r", "r"), &["pool", "build", "reason", "class"]).unwrap(),
            HistogramVec::new(HistogramOpts::new("u", "u"), &["pool", "build"]).unwrap(),
            IntCounterVec::new(Opts::new("f", "f"), &["pool", "build", "kind"]).unwrap(),
        )
    }

    #[test]
    fn counts_land_on_their_pool_build_reason_and_class() {
        let b = by_build();
        let old = b.handles("base", "v1");
        let new = b.handles("base", "v2");
        assert!(Arc::ptr_eq(&old, &b.handles("base", "v1")), "resolved once");
        b.request(&old, "default", 200, Some(0.01));
        b.request(&old, "default", 200, None);
        b.request(&new, "default", 502, Some(0.5));
        b.request(&new, "a_reason_nobody_listed", 0, None);
        b.failure(&new, FailKind::Connect);
        let totals = b.totals();
        let got: Vec<(&str, &str, &str, u64)> = totals
            .iter()
            .map(|t| (t.build.as_str(), t.reason.as_str(), t.class, t.requests))
            .collect();
        assert_eq!(
            got,
            vec![
                ("v1", "default", "2xx", 2),
                ("v2", "a_reason_nobody_listed", "none", 1),
                ("v2", "default", "5xx", 1),
            ]
        );
        assert_eq!(
            b.upstream
                .with_label_values(&["base", "v2"])
                .get_sample_count(),
            1
        );
        assert_eq!(
            b.failures
                .with_label_values(&["base", "v2", "connect"])
                .get(),
            1
        );
    }

    #[test]
    fn builds_are_capped_per_pool_and_pruned_when_gone() {
        let b = by_build();
        for i in 0..MAX_BUILDS_PER_POOL + 3 {
            let h = b.handles("base", &format!("b{i}"));
            b.request(&h, "default", 200, None);
        }
        let h = b.handles("base", NONE);
        b.request(&h, "default", 502, None);
        let builds: std::collections::BTreeSet<String> =
            b.totals().into_iter().map(|t| t.build).collect();
        assert_eq!(builds.len(), MAX_BUILDS_PER_POOL + 2, "{builds:?}");
        assert!(builds.contains(OTHER) && builds.contains(NONE));
        let other = b.totals().into_iter().find(|t| t.build == OTHER).unwrap();
        assert_eq!(other.requests, 3);
        b.prune(|_, build| build == "b0");
        let builds: Vec<String> = b.totals().into_iter().map(|t| t.build).collect();
        assert_eq!(builds, vec!["b0", NONE, OTHER]);
        assert_eq!(
            b.requests.collect()[0].get_metric().len(),
            3,
            "series of gone builds removed"
        );
    }
}
