//! The Redis whitelist, as the seed's Lua used it and better:
//!
//! - IP: gray when `GET <ip_prefix><ip>` is the IP itself or `1` (so `redis-cli set 1.2.3.4
//!   1.2.3.4` works unchanged);
//! - users: `SISMEMBER <users_set> <user>` (or `GET <user_prefix><user>` is non-empty);
//! - CIDRs: the members of `<cidr_set>`, refreshed every second in the background, matched
//!   locally — never a per-request round trip.
//!
//! Per request at most one round trip (a pipeline), bounded by `timeout`. Answers are cached for
//! `cache_ttl` (hits and misses alike, bounded size); concurrent misses for one key share one
//! call; after `breaker_failures` failures in a row Redis is left alone for `breaker_open`.
//! Whatever goes wrong, the answer is a cached one still within `cache_ttl`, else "not
//! whitelisted": never an error, never a stall. The seed's Lua answered "failed to connect" as
//! the page instead.

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
    cache: Mutex<HashMap<String, (Answer, Instant)>>,
    inflight: Mutex<HashMap<String, Cell>>,
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
    pub stats: RedisStats,
}

impl RedisWhitelist {
    /// Checks the URL; connecting happens in the background ([`RedisWhitelist::maintain`]).
    pub fn new(settings: RedisSettings) -> Result<Self, String> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| e.to_string())?;
        Ok(Self {
            settings,
            client,
            conn: ArcSwapOption::empty(),
            cidrs: ArcSwap::from_pointee(Vec::new()),
            cache: Mutex::new(HashMap::new()),
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
        if let Some((v, at)) = self.cache.lock().get(key) {
            if at.elapsed() < self.settings.cache_ttl {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return *v;
            }
        }
        if self.breaker_open() {
            self.stats.breaker_skips.fetch_add(1, Ordering::Relaxed);
            return NOT_LISTED;
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
                self.remember(key, v);
                v
            }
            // An expired answer is not trusted: a DEL may be exactly what we failed to see.
            None => NOT_LISTED,
        }
    }

    fn remember(&self, key: &str, v: (bool, bool)) {
        let mut cache = self.cache.lock();
        if cache.len() >= self.settings.cache_size {
            let ttl = self.settings.cache_ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            if cache.len() >= self.settings.cache_size {
                cache.clear();
            }
        }
        cache.insert(key.to_string(), (v, Instant::now()));
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

fn as_text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}
