//! Per (pool, build): since when requests have found no usable server of it (pure state; the
//! clock is an argument).
//!
//! A pinned asset whose build is *configured* but momentarily unusable (its only server failing
//! checks, waiting for `rise` after a restart, refusing connections for a second) waits for it
//! instead of leaving the build — leaving would load the rest of an open page from another build.
//! The wait is bounded twice: a request waits at most until `since + wait`, and once a build has
//! been unusable for longer than `wait`, requests stop waiting and move (`build_gone`).
//!
//! `since` is the first time a request saw the build unusable. A request that finds a usable
//! server of it ends the outage; so does silence: when no request has looked for `wait`, the next
//! unusable sighting starts a new outage (the build may have recovered unseen in between).
//!
//! The map holds only builds that are configured in a pool (callers check), so its size is
//! bounded by the pools' contents; the request path takes its lock only while a build is out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy)]
struct Entry {
    since: Instant,
    last: Instant,
}

/// Outages of pinned builds.
#[derive(Debug, Default)]
pub struct Outages {
    wait: Duration,
    entries: Mutex<HashMap<(String, String), Entry>>,
    /// Entries in the map, so that [`Outages::recovered`] costs no lock when nothing is out.
    len: AtomicUsize,
}

impl Outages {
    pub fn new(wait: Duration) -> Outages {
        Outages {
            wait,
            ..Outages::default()
        }
    }

    /// The longest a request waits for a build (`pin.build_wait`).
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// A request found no usable server of `build` in `pool` at `now`. Returns until when it may
    /// wait for one; `None` when the build has been out for `wait` already (it is gone).
    pub fn unusable(&self, pool: &str, build: &str, now: Instant) -> Option<Instant> {
        if self.wait.is_zero() {
            return None;
        }
        let mut entries = self.entries.lock();
        let key = (pool.to_string(), build.to_string());
        let entry = entries
            .entry(key)
            .and_modify(|e| {
                if now.saturating_duration_since(e.last) > self.wait {
                    e.since = now;
                }
                e.last = now;
            })
            .or_insert(Entry {
                since: now,
                last: now,
            });
        let until = entry.since + self.wait;
        self.len.store(entries.len(), Ordering::Relaxed);
        (now < until).then_some(until)
    }

    /// A request found a usable server of `build` in `pool`: its outage, if any, is over.
    pub fn recovered(&self, pool: &str, build: &str) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut entries = self.entries.lock();
        entries.retain(|(p, b), _| !(p == pool && b == build));
        self.len.store(entries.len(), Ordering::Relaxed);
    }

    /// Builds currently out (for tests and the status page).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn a_request_waits_until_since_plus_wait_then_the_build_is_gone() {
        let o = Outages::new(WAIT);
        let t0 = Instant::now();
        assert_eq!(o.unusable("gray", "g1", t0), Some(t0 + WAIT));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            o.unusable("gray", "g1", t1),
            Some(t0 + WAIT),
            "a later request waits only for the rest"
        );
        assert_eq!(
            o.unusable("gray", "g1", t0 + WAIT),
            None,
            "out for `wait`: gone"
        );
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn recovery_ends_the_outage_and_builds_are_separate() {
        let o = Outages::new(WAIT);
        let t0 = Instant::now();
        o.unusable("gray", "g1", t0);
        o.unusable("base", "b1", t0);
        o.recovered("gray", "g1");
        assert_eq!(o.len(), 1);
        let t1 = t0 + Duration::from_secs(4);
        assert_eq!(
            o.unusable("gray", "g1", t1),
            Some(t1 + WAIT),
            "a new outage"
        );
        assert_eq!(o.unusable("base", "b1", t1), Some(t0 + WAIT));
    }

    #[test]
    fn silence_longer_than_wait_starts_a_new_outage() {
        let o = Outages::new(WAIT);
        let t0 = Instant::now();
        o.unusable("gray", "g1", t0);
        let t1 = t0 + WAIT + Duration::from_secs(1);
        assert_eq!(o.unusable("gray", "g1", t1), Some(t1 + WAIT));
    }

    #[test]
    fn wait_zero_never_waits() {
        let o = Outages::new(Duration::ZERO);
        assert_eq!(o.unusable("gray", "g1", Instant::now()), None);
        assert!(o.is_empty());
        o.recovered("gray", "g1");
    }
}
