//! A bounded map for answers the request path caches (Redis whitelist answers, verified user
//! tokens): constant work per call, however full it is.
//!
//! The first Redis cache swept the whole map under its lock when it was full (100,000 entries by
//! default), on the request that happened to insert: every other request waited on that lock.
//! Here the entries are kept in insertion order and a full shard gives up its oldest entries, at
//! most two per insert, so no call ever walks the map. Re-inserting a key moves it to the back
//! (its old place becomes a stale marker that eviction skips); that may briefly hold a shard
//! above its share, never above twice. The map is split into shards, each behind its own short
//! lock, so requests on different threads rarely wait for each other.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};

use parking_lot::Mutex;

const SHARDS: usize = 16;
/// Entries given up per insert, at most: constant work, and enough to drain stale markers.
const EVICT_PER_INSERT: usize = 2;

pub struct BoundedCache<K, V> {
    shards: Vec<Mutex<Shard<K, V>>>,
    hasher: RandomState,
    per_shard: usize,
}

struct Shard<K, V> {
    map: HashMap<K, (V, u64)>,
    /// Keys in insertion order with the insert's sequence number; a key whose number no longer
    /// matches the map's was re-inserted since (a stale marker).
    order: VecDeque<(K, u64)>,
    seq: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> BoundedCache<K, V> {
    /// Room for about `capacity` entries (at least one per shard).
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        order: VecDeque::new(),
                        seq: 0,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            per_shard,
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Mutex<Shard<K, V>> {
        // The modulo keeps the index in range before the cast.
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        &self.shards[i]
    }

    /// The value for `key` (any borrowed form of it: a `&str` for `String` keys).
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key).lock().map.get(key).map(|(v, _)| v.clone())
    }

    pub fn insert(&self, key: K, value: V) {
        let cap = self.per_shard;
        let mut shard = self.shard(&key).lock();
        shard.seq += 1;
        let seq = shard.seq;
        shard.order.push_back((key.clone(), seq));
        shard.map.insert(key, (value, seq));
        for _ in 0..EVICT_PER_INSERT {
            if shard.map.len() <= cap && shard.order.len() <= 2 * cap {
                break;
            }
            let Some((old, old_seq)) = shard.order.pop_front() else {
                break;
            };
            if shard.map.get(&old).is_some_and(|(_, s)| *s == old_seq) {
                shard.map.remove(&old);
            }
        }
    }

    /// Drops everything (e.g. when the keys that verified the cached tokens changed).
    pub fn clear(&self) {
        for s in &self.shards {
            let mut s = s.lock();
            s.map.clear();
            s.order.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Upper bound of [`BoundedCache::len`].
    pub fn max_len(&self) -> usize {
        2 * self.per_shard * SHARDS
    }

    #[cfg(test)]
    fn markers(&self) -> usize {
        self.shards.iter().map(|s| s.lock().order.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entries_go_first() {
        let c: BoundedCache<u32, u32> = BoundedCache::new(SHARDS * 4);
        for k in 0..10_000 {
            c.insert(k, k);
        }
        assert!(c.len() <= SHARDS * 4, "{}", c.len());
        // The newest keys of every shard are there, the first ones gone.
        assert_eq!(c.get(&9_999), Some(9_999));
        assert_eq!(c.get(&0), None);
    }

    #[test]
    fn a_re_inserted_key_moves_to_the_back_and_its_old_marker_is_skipped() {
        // Room for one entry per shard; four keys that share a shard.
        let c: BoundedCache<u32, &str> = BoundedCache::new(SHARDS);
        let same_shard: Vec<u32> = (0..100_000)
            .filter(|k| std::ptr::eq(c.shard(k), c.shard(&0)))
            .take(4)
            .collect();
        let [a, b, d, e] = same_shard[..] else {
            panic!("four keys in one shard")
        };
        c.insert(a, "old");
        c.insert(a, "new");
        assert_eq!(c.get(&a), Some("new"));
        c.insert(b, "b");
        // The shard holds one entry: b pushed out a (its newer marker came before b's).
        assert_eq!(c.get(&a), None);
        assert_eq!(c.get(&b), Some("b"));
        c.insert(d, "d");
        c.insert(b, "b2");
        c.insert(e, "e");
        assert_eq!(c.get(&e), Some("e"));
        assert!(c.len() <= 2);
    }

    #[test]
    fn churn_and_refreshes_stay_bounded() {
        let c: BoundedCache<u32, u32> = BoundedCache::new(1_000);
        for i in 0..200_000u32 {
            // A few hot keys refreshed all the time among many one-off keys.
            let k = if i % 3 == 0 { i % 7 } else { i };
            c.insert(k, i);
            assert!(c.len() <= c.max_len());
        }
        assert!(c.markers() <= c.max_len());
        assert!(
            (0..7).filter(|k| c.get(k).is_some()).count() >= 5,
            "hot keys stay"
        );
        c.clear();
        assert!(c.is_empty());
    }
}
