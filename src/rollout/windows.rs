//! Window counters: per (pool, build), requests, failures and a latency histogram, counted on
//! the request path and published (by every instance) for the driver to sum.
//!
//! The request path calls [`Table::record`]: two hash lookups by `&str` in a snapshot behind an
//! `ArcSwap` (no lock, no allocation) and a handful of relaxed atomic increments. Only the first
//! request of a new (pool, build) pair takes a lock to add its counters.
//!
//! Counters are cumulative since the process started. The driver takes a [`Published`] record
//! of every instance at the start and at the end of a window and judges the difference
//! ([`window_delta`]), so publishing late or twice never loses or doubles a request, and an
//! instance that restarts (new `boot`) starts again from zero.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::judge::{bucket_of, Side, BUCKETS};

/// More (pool, build) pairs than this share one `other` entry (builds come from the pools, so
/// this only guards against a runaway source).
const MAX_PAIRS: usize = 256;
const OTHER: &str = "other";

/// What one finished request tells the window counters.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The status sent to the client (0: none).
    pub status: u16,
    /// graysplit could not get an answer from the upstream (connect failure, reset, timeout).
    pub upstream_error: bool,
    /// From the first upstream attempt to the end of the response, if an upstream was tried.
    pub elapsed: Option<Duration>,
}

impl Outcome {
    /// A 5xx, or no answer from the upstream.
    pub fn failed(&self) -> bool {
        self.status >= 500 || self.upstream_error
    }
}

#[derive(Debug)]
struct Counters {
    requests: AtomicU64,
    failed: AtomicU64,
    status_5xx: AtomicU64,
    upstream_errors: AtomicU64,
    latency: [AtomicU64; BUCKETS],
}

impl Counters {
    fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            status_5xx: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn record(&self, o: &Outcome) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if o.failed() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        if o.status >= 500 {
            self.status_5xx.fetch_add(1, Ordering::Relaxed);
        }
        if o.upstream_error {
            self.upstream_errors.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(d) = o.elapsed {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            self.latency[bucket_of(ms)].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn totals(&self) -> Totals {
        Totals {
            requests: self.requests.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            status_5xx: self.status_5xx.load(Ordering::Relaxed),
            upstream_errors: self.upstream_errors.load(Ordering::Relaxed),
            latency: self
                .latency
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

type PairMap = HashMap<Arc<str>, HashMap<Arc<str>, Arc<Counters>>>;

/// The counters of one kind of traffic (real, or mirrored copies).
#[derive(Debug, Default)]
pub struct Table {
    map: ArcSwap<PairMap>,
    insert: Mutex<()>,
}

impl Table {
    /// Counts one request served by `pool` / `build`.
    pub fn record(&self, pool: &str, build: &str, o: &Outcome) {
        if let Some(c) = self.map.load().get(pool).and_then(|b| b.get(build)) {
            c.record(o);
            return;
        }
        self.add(pool, build).record(o);
    }

    /// The counters of a pair seen for the first time (rare: under a lock, with allocation).
    fn add(&self, pool: &str, build: &str) -> Arc<Counters> {
        let _one_writer = self.insert.lock();
        let current = self.map.load_full();
        if let Some(c) = current.get(pool).and_then(|b| b.get(build)) {
            return c.clone();
        }
        let pairs: usize = current.values().map(HashMap::len).sum();
        let (pool, build) = if pairs >= MAX_PAIRS {
            (OTHER, OTHER)
        } else {
            (pool, build)
        };
        if let Some(c) = current.get(pool).and_then(|b| b.get(build)) {
            return c.clone();
        }
        let mut next = (*current).clone();
        let c = Arc::new(Counters::new());
        next.entry(Arc::from(pool))
            .or_default()
            .insert(Arc::from(build), c.clone());
        self.map.store(Arc::new(next));
        c
    }

    /// Everything counted so far.
    pub fn snapshot(&self) -> Snapshot {
        let mut out = Snapshot::new();
        for (pool, builds) in self.map.load().iter() {
            let entry = out.entry(pool.to_string()).or_default();
            for (build, c) in builds {
                entry.insert(build.to_string(), c.totals());
            }
        }
        out
    }
}

/// Cumulative counts of one (pool, build).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub requests: u64,
    pub failed: u64,
    #[serde(rename = "5xx")]
    pub status_5xx: u64,
    pub upstream_errors: u64,
    /// Per-bucket counts, bounds in [`super::judge::BOUNDS_MS`] plus an overflow bucket.
    pub latency: Vec<u64>,
}

impl Totals {
    /// `self - earlier`, never below zero.
    fn minus(&self, earlier: &Totals) -> Totals {
        Totals {
            requests: self.requests.saturating_sub(earlier.requests),
            failed: self.failed.saturating_sub(earlier.failed),
            status_5xx: self.status_5xx.saturating_sub(earlier.status_5xx),
            upstream_errors: self.upstream_errors.saturating_sub(earlier.upstream_errors),
            latency: (0..BUCKETS)
                .map(|i| {
                    let now = self.latency.get(i).copied().unwrap_or(0);
                    now.saturating_sub(earlier.latency.get(i).copied().unwrap_or(0))
                })
                .collect(),
        }
    }

    /// Saturating: the records come from other instances through Consul and may be anything.
    fn add(&mut self, other: &Totals) {
        self.requests = self.requests.saturating_add(other.requests);
        self.failed = self.failed.saturating_add(other.failed);
        self.status_5xx = self.status_5xx.saturating_add(other.status_5xx);
        self.upstream_errors = self.upstream_errors.saturating_add(other.upstream_errors);
        self.latency.resize(BUCKETS, 0);
        for (i, n) in other.latency.iter().take(BUCKETS).enumerate() {
            self.latency[i] = self.latency[i].saturating_add(*n);
        }
    }
}

/// pool → build → totals.
pub type Snapshot = BTreeMap<String, BTreeMap<String, Totals>>;

/// What an instance publishes (the value of `<prefix>windows/<instance>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub v: u32,
    pub instance: String,
    /// Changes when the process restarts: its counters start again from zero.
    pub boot: String,
    /// When the process started (unix ms).
    pub started_ms: u64,
    /// When this record was made (unix ms).
    pub at_ms: u64,
    pub real: Snapshot,
    pub mirror: Snapshot,
}

/// Every instance's counts within one window, summed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowTotals {
    pub real: Snapshot,
    pub mirror: Snapshot,
    /// Instances that contributed, with their (base, gray) request counts in the window.
    pub instances: BTreeMap<String, (u64, u64)>,
}

fn minus(now: &Snapshot, earlier: Option<&Snapshot>) -> Snapshot {
    let empty = Totals::default();
    now.iter()
        .map(|(pool, builds)| {
            let builds = builds
                .iter()
                .map(|(build, t)| {
                    let before = earlier
                        .and_then(|e| e.get(pool))
                        .and_then(|b| b.get(build))
                        .unwrap_or(&empty);
                    (build.clone(), t.minus(before))
                })
                .collect();
            (pool.clone(), builds)
        })
        .collect()
}

fn add_into(sum: &mut Snapshot, part: &Snapshot) {
    for (pool, builds) in part {
        let entry = sum.entry(pool.clone()).or_default();
        for (build, t) in builds {
            entry.entry(build.clone()).or_default().add(t);
        }
    }
}

/// Requests of `pool` (all builds) in a snapshot.
pub fn requests(s: &Snapshot, pool: &str) -> u64 {
    s.get(pool).map_or(0, |b| {
        b.values().fold(0u64, |n, t| n.saturating_add(t.requests))
    })
}

/// The judge's view of `pool`: all its builds summed.
pub fn side(s: &Snapshot, pool: &str) -> Side {
    let mut t = Totals::default();
    if let Some(builds) = s.get(pool) {
        for b in builds.values() {
            t.add(b);
        }
    }
    t.latency.resize(BUCKETS, 0);
    Side {
        requests: t.requests,
        failed: t.failed,
        latency: t.latency,
    }
}

/// The counts of one window: for each instance, its record now minus its record at the start.
/// An instance with another `boot` than at the start restarted: everything it counted is new.
/// One not seen at the start counts from zero if it started within the window; otherwise (it
/// was running but not yet seen, e.g. right after a driver change) it joins at the next window.
pub fn window_delta(
    start: &BTreeMap<String, Published>,
    now: &BTreeMap<String, Published>,
    window_started_ms: u64,
) -> WindowTotals {
    let mut out = WindowTotals::default();
    for (name, n) in now {
        let before = match start.get(name) {
            Some(b) if b.boot == n.boot => Some(b),
            Some(_) => None,
            None if n.started_ms >= window_started_ms => None,
            None => continue,
        };
        let real = minus(&n.real, before.map(|b| &b.real));
        let mirror = minus(&n.mirror, before.map(|b| &b.mirror));
        out.instances.insert(
            name.clone(),
            (requests(&real, "base"), requests(&real, "gray")),
        );
        add_into(&mut out.real, &real);
        add_into(&mut out.mirror, &mirror);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ms: u64) -> Outcome {
        Outcome {
            status: 200,
            upstream_error: false,
            elapsed: Some(Duration::from_millis(ms)),
        }
    }

    #[test]
    fn counts_requests_failures_and_latency_per_pool_and_build() {
        let t = Table::default();
        t.record("gray", "g1", &ok(4));
        t.record("gray", "g1", &ok(4));
        t.record(
            "gray",
            "g1",
            &Outcome {
                status: 502,
                upstream_error: true,
                elapsed: None,
            },
        );
        t.record(
            "gray",
            "g2",
            &Outcome {
                status: 500,
                upstream_error: false,
                elapsed: Some(Duration::from_millis(40)),
            },
        );
        t.record("base", "b1", &ok(1));
        let s = t.snapshot();
        let g1 = &s["gray"]["g1"];
        assert_eq!(
            (g1.requests, g1.failed, g1.status_5xx, g1.upstream_errors),
            (3, 1, 1, 1)
        );
        assert_eq!(g1.latency[bucket_of(4)], 2);
        assert_eq!(
            g1.latency.iter().sum::<u64>(),
            2,
            "no latency without an upstream answer"
        );
        let gray = side(&s, "gray");
        assert_eq!((gray.requests, gray.failed), (4, 2));
        assert_eq!(side(&s, "base").requests, 1);
        assert_eq!(
            side(&s, "nope"),
            Side {
                latency: vec![0; BUCKETS],
                ..Side::default()
            }
        );
    }

    #[test]
    fn a_runaway_number_of_builds_shares_one_entry() {
        let t = Table::default();
        for i in 0..MAX_PAIRS + 10 {
            t.record("gray", &format!("b{i}"), &ok(1));
        }
        let s = t.snapshot();
        assert_eq!(s["other"]["other"].requests, 10);
        assert_eq!(requests(&s, "gray"), MAX_PAIRS as u64);
    }

    fn published(instance: &str, boot: &str, started_ms: u64, gray: u64, base: u64) -> Published {
        let t = |n| Totals {
            requests: n,
            latency: vec![0; BUCKETS],
            ..Totals::default()
        };
        let mut real = Snapshot::new();
        real.entry("gray".into())
            .or_default()
            .insert("g".into(), t(gray));
        real.entry("base".into())
            .or_default()
            .insert("b".into(), t(base));
        Published {
            v: 1,
            instance: instance.into(),
            boot: boot.into(),
            started_ms,
            at_ms: 0,
            real,
            mirror: Snapshot::new(),
        }
    }

    fn map(list: Vec<Published>) -> BTreeMap<String, Published> {
        list.into_iter().map(|p| (p.instance.clone(), p)).collect()
    }

    #[test]
    fn a_window_is_the_sum_over_instances_of_now_minus_start() {
        let start = map(vec![
            published("a", "1", 0, 100, 1_000),
            published("b", "1", 0, 50, 500),
        ]);
        let now = map(vec![
            published("a", "1", 0, 130, 1_200),
            published("b", "1", 0, 60, 560),
        ]);
        let w = window_delta(&start, &now, 10);
        assert_eq!(requests(&w.real, "gray"), 40);
        assert_eq!(requests(&w.real, "base"), 260);
        assert_eq!(w.instances["a"], (200, 30));
        assert_eq!(w.instances["b"], (60, 10));
    }

    #[test]
    fn restarts_and_latecomers() {
        let start = map(vec![
            published("a", "1", 0, 100, 1_000),
            published("late", "1", 0, 7, 7),
        ]);
        let now = map(vec![
            // Restarted during the window: all of its new counts belong to it.
            published("a", "2", 20, 5, 50),
            // New since the window started (10): counts from zero.
            published("new", "1", 15, 3, 30),
            // Running before the window, never seen at its start: next window.
            published("old", "1", 5, 1_000, 1_000),
        ]);
        let w = window_delta(&start, &now, 10);
        assert_eq!(requests(&w.real, "gray"), 8);
        assert_eq!(requests(&w.real, "base"), 80);
        assert!(!w.instances.contains_key("old"));
        assert!(
            !w.instances.contains_key("late"),
            "gone instances add nothing"
        );
    }

    #[test]
    fn published_records_round_trip_as_json() {
        let t = Table::default();
        t.record("gray", "g", &ok(3));
        let p = Published {
            v: 1,
            instance: "web1:9901".into(),
            boot: "abc".into(),
            started_ms: 1,
            at_ms: 2,
            real: t.snapshot(),
            mirror: Snapshot::new(),
        };
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains("\"5xx\":0"), "{text}");
        assert_eq!(serde_json::from_str::<Published>(&text).unwrap(), p);
    }
}

/// Property tests (`cargo test --lib fuzz_`): other instances' records come through Consul and
/// may hold any numbers.
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use crate::rollout::judge;
    use crate::rollout::plan::Analysis;
    use proptest::prelude::*;

    fn totals() -> impl Strategy<Value = Totals> {
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec(any::<u64>(), 0..40),
        )
            .prop_map(|(requests, failed, status_5xx, latency)| Totals {
                requests,
                failed,
                status_5xx,
                upstream_errors: 0,
                latency,
            })
    }

    fn record() -> impl Strategy<Value = Published> {
        (
            "[a-c]",
            "[0-2]",
            any::<u64>(),
            proptest::collection::btree_map(
                "base|gray|x",
                proptest::collection::btree_map("[a-b]", totals(), 0..3),
                0..3,
            ),
        )
            .prop_map(|(instance, boot, started_ms, real)| Published {
                v: 1,
                instance,
                boot,
                started_ms,
                at_ms: 0,
                mirror: real.clone(),
                real,
            })
    }

    proptest! {
        /// Any records at both ends of a window: the sums, the sides and the judge never panic,
        /// and a side below `min_requests` is never judged.
        #[test]
        fn fuzz_windows_from_any_records_never_panic(
            start in proptest::collection::vec(record(), 0..4),
            now in proptest::collection::vec(record(), 0..4),
            started in any::<u64>(),
            min in 1u64..1_000,
        ) {
            let index = |l: Vec<Published>| l.into_iter().map(|p| (p.instance.clone(), p)).collect::<BTreeMap<_, _>>();
            let w = window_delta(&index(start), &index(now), started);
            let (base, gray) = (side(&w.real, "base"), side(&w.real, "gray"));
            let a = Analysis { min_requests: min, ..Analysis::default() };
            let j = judge::judge(&base, &gray, &a);
            if base.requests < min || gray.requests < min {
                prop_assert_eq!(j.verdict, judge::Verdict::NoData);
            }
            prop_assert!(j.z.is_none_or(|z| !z.is_nan()));
        }
    }
}
