//! The Redis whitelist, as the seed's Lua used it and better:
//!
//! - IP: gray when `GET <ip_prefix><ip>` is the IP itself or `1` (so `redis-cli set 1.2.3.4
//!   1.2.3.4` works unchanged);
//! - users: `SISMEMBER <users_set> <user>` (or `GET <user_prefix><user>` is non-empty);
//! - CIDRs: the members of `<cidr_set>`, refreshed every second in the background, matched
//!   locally — never a per-request round trip.
//!
//! Per request at most one round trip (a pipeline), bounded by `timeout`. Answers are cached for
//! `cache_ttl` (hits and misses alike; bounded, with constant work per call: `bounded_cache`);
//! concurrent misses for one key share one call; after `breaker_failures` failures in a row
//! Redis is left alone for `breaker_open`.
//! Whatever goes wrong (error, timeout, breaker open), the answer is the last one Redis gave for
//! that client if it is younger than `stale_if_error` (so a whitelisted user stays on gray
//! through a Redis outage), else "not whitelisted": never an error, never a stall. The price: a
//! `DEL` made while Redis cannot be read applies once it can (`stale_if_error = "0s"` trusts
//! nothing older than `cache_ttl`). The seed's Lua answered "failed to connect" as the page
//! instead.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use ipnet::IpNet;
use log::{info, warn};
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use super::bounded_cache::BoundedCache;
use super::decision::Hits;
use super::whitelist::parse_cidr;

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub ip_prefix: String,
    pub cidr_set: String,
    pub users_set: String,
    pub user_prefix: Option<String>,
    pub timeout: Duration,
    pub cache_ttl: Duration,
    /// On failure, the last answer for a key is used while younger than this.
    pub stale_if_error: Duration,
    pub cache_size: usize,
    pub breaker_failures: u32,
    pub breaker_open: Duration,
}

/// Counters for `/status` and metrics.
#[derive(Debug, Default)]
pub struct RedisStats {
    pub lookups: AtomicU64,
    pub cache_hits: AtomicU64,
    pub errors: AtomicU64,
    pub breaker_skips: AtomicU64,
    /// Failures answered with a stale answer (`stale_if_error`).
    pub stale_answers: AtomicU64,
}

/// (ip whitelisted, user whitelisted) as Redis answered.
type Answer = (bool, bool);
type Cell = Arc<OnceCell<Option<Answer>>>;

/// The answer whenever Redis cannot give one: base, as the seed's setup would have served.
const NOT_LISTED: Answer = (false, false);

pub struct RedisWhitelist {
    settings: RedisSettings,
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    cidrs: ArcSwap<Vec<IpNet>>,
    cache: AnswerCache,
    inflight: Mutex<HashMap<String, Cell>>,
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
    pub stats: RedisStats,
}

impl RedisWhitelist {
    /// Checks the URL; connecting happens in the background ([`RedisWhitelist::maintain`]).
    pub fn new(settings: RedisSettings) -> Result<Self, String> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| e.to_string())?;
        let cache = AnswerCache::new(
            settings.cache_ttl,
            settings.stale_if_error,
            settings.cache_size,
        );
        Ok(Self {
            settings,
            client,
            conn: ArcSwapOption::empty(),
            cidrs: ArcSwap::from_pointee(Vec::new()),
            cache,
            inflight: Mutex::new(HashMap::new()),
            failures: AtomicU32::new(0),
            open_until: Mutex::new(None),
            stats: RedisStats::default(),
        })
    }

    /// Whitelist hits for one client. Never fails: see the module docs.
    pub async fn lookup(&self, ip: IpAddr, user: Option<&str>) -> Hits {
        let cidr = self.cidrs.load().iter().any(|n| n.contains(&ip));
        let key = match user {
            Some(u) => format!("{ip}\n{u}"),
            None => ip.to_string(),
        };
        let (ip_hit, user_hit) = self.cached_or_fetch(&key, ip, user).await;
        Hits {
            ip: ip_hit,
            cidr,
            user: user_hit,
        }
    }

    async fn cached_or_fetch(&self, key: &str, ip: IpAddr, user: Option<&str>) -> (bool, bool) {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        if let Some(v) = self.cache.fresh(key, Instant::now()) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return v;
        }
        if self.breaker_open() {
            self.stats.breaker_skips.fetch_add(1, Ordering::Relaxed);
            return self.on_failure(key);
        }
        let cell = self
            .inflight
            .lock()
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(OnceCell::new()))
            .clone();
        let fetched = *cell.get_or_init(|| self.fetch(ip, user)).await;
        {
            let mut inflight = self.inflight.lock();
            if inflight.get(key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(key);
            }
        }
        match fetched {
            Some(v) => {
                self.cache.insert(key, v, Instant::now());
                v
            }
            None => self.on_failure(key),
        }
    }

    /// Redis could not answer: the last answer while younger than `stale_if_error`, else base.
    fn on_failure(&self, key: &str) -> Answer {
        match self.cache.stale(key, Instant::now()) {
            Some(v) => {
                self.stats.stale_answers.fetch_add(1, Ordering::Relaxed);
                v
            }
            None => NOT_LISTED,
        }
    }

    fn breaker_open(&self) -> bool {
        let mut open = self.open_until.lock();
        match *open {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                // Half-open: let the next call through; it closes or re-opens the breaker.
                *open = None;
                false
            }
            None => false,
        }
    }

    fn record(&self, ok: bool) {
        if ok {
            if self.failures.swap(0, Ordering::Relaxed) >= self.settings.breaker_failures {
                info!("redis whitelist: Redis answers again");
            }
            return;
        }
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n == self.settings.breaker_failures {
            warn!(
                "redis whitelist: {n} failures in a row; not asking Redis for {:?} (clients are treated as not whitelisted meanwhile)",
                self.settings.breaker_open
            );
        }
        if n >= self.settings.breaker_failures {
            *self.open_until.lock() = Some(Instant::now() + self.settings.breaker_open);
        }
    }

    /// One pipelined round trip, bounded by `timeout`. `None` on any failure.
    async fn fetch(&self, ip: IpAddr, user: Option<&str>) -> Option<(bool, bool)> {
        let Some(conn) = self.conn.load_full() else {
            self.record(false);
            return None;
        };
        let mut conn = (*conn).clone();
        let ip_text = ip.to_string();
        let mut pipe = redis::pipe();
        pipe.get(format!("{}{ip_text}", self.settings.ip_prefix));
        match (user, &self.settings.user_prefix) {
            (Some(u), Some(prefix)) => {
                pipe.get(format!("{prefix}{u}"));
            }
            (Some(u), None) => {
                pipe.sismember(&self.settings.users_set, u);
            }
            (None, _) => {}
        }
        let query = pipe.query_async::<Vec<redis::Value>>(&mut conn);
        let result = tokio::time::timeout(self.settings.timeout, query).await;
        let values = match result {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                log::debug!("redis whitelist lookup failed: {e}");
                self.record(false);
                return None;
            }
            Err(_) => {
                log::debug!(
                    "redis whitelist lookup timed out after {:?}",
                    self.settings.timeout
                );
                self.record(false);
                return None;
            }
        };
        self.record(true);
        let ip_hit = values
            .first()
            .and_then(as_text)
            .is_some_and(|v| v == ip_text || v == "1");
        let user_hit = match values.get(1) {
            Some(redis::Value::Int(n)) => *n == 1,
            Some(v) => as_text(v).is_some_and(|t| !t.is_empty()),
            None => false,
        };
        Some((ip_hit, user_hit))
    }

    /// Background upkeep, once a second: connect (or keep the connection), refresh the CIDR set.
    pub async fn maintain(&self) {
        if self.conn.load().is_none() {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Duration::from_secs(1))
                .set_response_timeout(Duration::from_secs(1))
                .set_number_of_retries(1);
            match self.client.get_connection_manager_with_config(config).await {
                Ok(c) => {
                    info!("redis whitelist: connected");
                    self.conn.store(Some(Arc::new(c)));
                }
                Err(e) => {
                    if self.failures.load(Ordering::Relaxed) == 0 {
                        warn!("redis whitelist: cannot connect: {e}; clients count as not whitelisted until it can");
                    }
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        self.refresh_cidrs().await;
    }

    async fn refresh_cidrs(&self) {
        let Some(conn) = self.conn.load_full() else {
            return;
        };
        let mut conn = (*conn).clone();
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(&self.settings.cidr_set);
        let query = cmd.query_async::<Vec<String>>(&mut conn);
        let Ok(Ok(members)) = tokio::time::timeout(Duration::from_secs(1), query).await else {
            return; // keep the last good set
        };
        let mut nets = Vec::with_capacity(members.len());
        for m in &members {
            match parse_cidr(m) {
                Some(n) => nets.push(n),
                None => log::debug!(
                    "redis whitelist: {:?} in {} is not a CIDR; skipped",
                    m,
                    self.settings.cidr_set
                ),
            }
        }
        nets.sort();
        if **self.cidrs.load() != nets {
            let skipped = members.len() - nets.len();
            info!(
                "redis whitelist: {} CIDR(s) from {}{}",
                nets.len(),
                self.settings.cidr_set,
                if skipped > 0 {
                    format!(" ({skipped} invalid member(s) skipped)")
                } else {
                    String::new()
                }
            );
            self.cidrs.store(Arc::new(nets));
        }
    }

    pub fn connected(&self) -> bool {
        self.conn.load().is_some()
            && self.failures.load(Ordering::Relaxed) < self.settings.breaker_failures
    }

    pub fn cidr_count(&self) -> usize {
        self.cidrs.load().len()
    }
}

/// Redis's answers by key, with their age: fresh within `ttl`, usable on failure within `stale`.
/// Bounded ([`BoundedCache`]: the oldest answers go first, constant work per call, no sweep):
/// a request never waits for the cache to tidy itself.
struct AnswerCache {
    map: BoundedCache<String, (Answer, Instant)>,
    ttl: Duration,
    stale: Duration,
}

impl AnswerCache {
    fn new(ttl: Duration, stale: Duration, size: usize) -> Self {
        Self {
            map: BoundedCache::new(size.max(1)),
            ttl,
            stale,
        }
    }

    fn younger_than(&self, key: &str, now: Instant, limit: Duration) -> Option<Answer> {
        let (v, at) = self.map.get(key)?;
        (now.saturating_duration_since(at) < limit).then_some(v)
    }

    /// An answer to use without asking Redis.
    fn fresh(&self, key: &str, now: Instant) -> Option<Answer> {
        self.younger_than(key, now, self.ttl)
    }

    /// An answer to use when Redis cannot answer (never shorter-lived than a fresh one).
    fn stale(&self, key: &str, now: Instant) -> Option<Answer> {
        self.younger_than(key, now, self.stale.max(self.ttl))
    }

    fn insert(&self, key: &str, v: Answer, now: Instant) {
        self.map.insert(key.to_string(), (v, now));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

fn as_text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const GRAY: Answer = (true, false);

    fn cache() -> AnswerCache {
        // cache_ttl 1 s, stale_if_error 10 min, room for 3 keys.
        AnswerCache::new(S, 600 * S, 3)
    }

    #[test]
    fn fresh_within_ttl_stale_within_stale_if_error_then_nothing() {
        let c = cache();
        let t0 = Instant::now();
        c.insert("1.2.3.4", GRAY, t0);
        assert_eq!(c.fresh("1.2.3.4", t0 + S / 2), Some(GRAY));
        assert_eq!(
            c.fresh("1.2.3.4", t0 + S),
            None,
            "past cache_ttl: ask Redis"
        );
        assert_eq!(
            c.stale("1.2.3.4", t0 + 5 * S),
            Some(GRAY),
            "Redis away: last answer"
        );
        assert_eq!(c.stale("1.2.3.4", t0 + 599 * S), Some(GRAY));
        assert_eq!(c.stale("1.2.3.4", t0 + 600 * S), None, "too old to trust");
        assert_eq!(
            c.stale("5.6.7.8", t0),
            None,
            "never asked: nothing to fall back on"
        );
    }

    #[test]
    fn a_new_answer_replaces_the_old_one_and_restarts_its_age() {
        let c = cache();
        let t0 = Instant::now();
        c.insert("k", GRAY, t0);
        c.insert("k", NOT_LISTED, t0 + 500 * S);
        assert_eq!(c.stale("k", t0 + 700 * S), Some(NOT_LISTED));
    }

    #[test]
    fn zero_stale_if_error_trusts_only_fresh_answers() {
        let c = AnswerCache::new(S, Duration::ZERO, 10);
        let t0 = Instant::now();
        c.insert("k", GRAY, t0);
        assert_eq!(
            c.stale("k", t0 + S / 2),
            Some(GRAY),
            "a fresh answer stands"
        );
        assert_eq!(c.stale("k", t0 + 2 * S), None);
    }

    #[test]
    fn a_full_cache_keeps_its_size_and_the_newest_answers() {
        let c = AnswerCache::new(S, 600 * S, 1_000);
        let t0 = Instant::now();
        for i in 0..50_000u32 {
            c.insert(&format!("10.0.{}.{}", i / 256, i % 256), GRAY, t0);
        }
        assert!(c.len() <= c.map.max_len(), "{}", c.len());
        assert!(c.len() >= 1_000 / 2, "still caching: {}", c.len());
        assert_eq!(
            c.fresh("10.0.195.79", t0),
            Some(GRAY),
            "the last one is there"
        );
        assert_eq!(c.fresh("10.0.0.0", t0), None, "the first one is gone");
    }
}
