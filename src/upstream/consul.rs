//! The Consul source: a pool's servers are the keys under a Consul KV folder, followed with
//! blocking queries (nginx-upsync-module's job, done per Consul's "Blocking Queries" rules).
//!
//! ```text
//! GET {address}/v1/kv/{prefix}?recurse&index={N}&wait={wait}     X-Consul-Token: ...
//! ```
//!
//! - One long-poll per pool per process (upsync has one per nginx worker, and the workers can
//!   disagree for a while); every worker thread reads the same pool snapshot.
//! - First call `index=0` (answers at once); then echo `X-Consul-Index`. An answer is not a
//!   change: the entries are compared with the last ones, and [`Pool::replace`] compares again.
//! - The index is reset to 0 when it goes backwards (snapshot restore, new cluster) and after any
//!   error (upsync never does, and hangs for a whole `wait` after a Consul restore); an index <= 0
//!   is a Consul bug and is replaced by 1, so we never spin on non-blocking queries.
//! - The client timeout is at least `wait + wait/16 + margin` (Consul adds up to `wait/16` of
//!   jitter), so a healthy long-poll is never cut short; `interval` is the minimum gap between
//!   two polls of a pool.
//! - On errors: the next address (round robin), and after a whole round of failed addresses an
//!   exponential backoff with full jitter (250 ms doubling, capped at `consul.max_backoff`,
//!   default 2 s, reset on success): once Consul answers again, the next change applies within
//!   about `max_backoff`. A longer cap spares a struggling Consul little (a failed poll costs it
//!   next to nothing) and costs every operator's next change its length.
//! - TCP keep-alive on the connections, so a poll parked on a connection whose peer vanished
//!   (a partition, a host gone) fails within about 25 s instead of waiting out `timeout`.
//! - Never lose a pool: a 500, a garbage body, a hang, a dropped connection or a rewound index
//!   leaves the pool as it is; an empty folder (404) only empties a pool with `allow_empty`.
//! - After every change the pool is written to its dump file; at start the dump is loaded first.

use std::collections::{BTreeMap, HashMap};
use std::error::Error as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use log::{debug, error, info, warn};
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use rand::Rng as _;
use serde_json::json;

use super::dump;
use super::kv_value::{self, KvEntry};
use super::pool::{Pool, Update};
use super::resolve;
use crate::config::{duration, ConsulConfig, PoolConfig};

/// First backoff step after a full round of failed addresses; doubles up to `max_backoff`.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// `consul.max_backoff` when not configured.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Keep-alive probes on Consul connections: idle time, interval, count (see module docs).
const KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(10), Duration::from_secs(5), 3);
/// Consul agents are near; a longer connect wait only delays moving to the next address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Total time `strong_dependency` gives Consul at startup (upsync: 3 tries of 1 s).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// A KV answer larger than this is refused (upsync's buffer is 4 MiB); pools are small.
const MAX_BODY: usize = 16 << 20;

/// The HTTP side: one client (connection pool) shared by every pool's watcher.
pub struct ConsulClient {
    http: reqwest::Client,
    cfg: ConsulConfig,
}

/// A 200 or 404 answer.
#[derive(Debug)]
pub struct Answer {
    /// `X-Consul-Index` as sent (signed: the sanity check needs to see values <= 0).
    pub index: i64,
    /// Entries; empty for a 404 (empty folder).
    pub entries: Vec<KvEntry>,
}

impl ConsulClient {
    pub fn new(cfg: &ConsulConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(cfg.timeout))
            .tcp_keepalive(KEEPALIVE.0)
            .tcp_keepalive_interval(KEEPALIVE.1)
            .tcp_keepalive_retries(KEEPALIVE.2)
            // Consul is reached directly, as upsync does; an HTTP(S)_PROXY set for other tools
            // must not silently sit between us and our service discovery.
            .no_proxy()
            .user_agent(concat!("graysplit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the Consul HTTP client: {}", chain(&e)))?;
        Ok(Self {
            http,
            cfg: cfg.clone(),
        })
    }

    pub fn addresses(&self) -> &[String] {
        &self.cfg.addresses
    }

    /// The cap of the backoff while Consul fails (`consul.max_backoff`).
    pub fn max_backoff(&self) -> Duration {
        self.cfg.max_backoff
    }

    /// One query. `index = 0` answers at once; otherwise Consul holds it up to `wait`.
    pub async fn fetch(
        &self,
        address: &str,
        prefix: &str,
        index: u64,
        timeout: Duration,
    ) -> Result<Answer, String> {
        // The prefix is validated to need no escaping (letters, digits, . _ - /).
        let url = format!(
            "{address}/v1/kv/{prefix}?recurse&index={index}&wait={}",
            duration::format(self.cfg.wait)
        );
        let mut req = self.http.get(&url).timeout(timeout);
        if let Some(token) = &self.cfg.token {
            let mut value = http::HeaderValue::from_str(token.expose())
                .map_err(|_| "the Consul token is not a valid header value".to_string())?;
            // Keeps the token out of any debug output of the HTTP stack.
            value.set_sensitive(true);
            req = req.header("X-Consul-Token", value);
        }
        let mut resp = req.send().await.map_err(|e| chain(&e))?;
        let status = resp.status();
        let index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| chain(&e))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("answer is larger than {} MiB", MAX_BODY >> 20));
            }
            body.extend_from_slice(&chunk);
        }
        let entries = match status.as_u16() {
            200 => kv_value::parse_body(&body)?,
            404 => Vec::new(),
            _ => {
                let text: String = String::from_utf8_lossy(&body)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect();
                let hint = if status.as_u16() == 403 {
                    " (check the token and its ACL policy: it needs key_prefix read)"
                } else {
                    ""
                };
                return Err(format!("Consul answered {status}{hint}: {text:?}"));
            }
        };
        let index = index.ok_or("answer has no numeric X-Consul-Index header")?;
        Ok(Answer { index, entries })
    }
}

/// An error with its causes ("error sending request ...: tcp connect error: Connection refused").
/// Also the rollout's Consul client's (rollout/consul_api.rs).
pub(crate) fn chain(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        format!("timed out ({e})")
    } else {
        e.to_string()
    };
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The index of the next blocking query, per Consul's "Blocking Queries" implementation notes.
pub fn next_index(previous: u64, returned: i64) -> u64 {
    match u64::try_from(returned) {
        // "Sanity check index is greater than zero": a 0 would make every query non-blocking.
        Ok(0) | Err(_) => 1,
        // "Reset the index if it goes backwards": the next query answers at once.
        Ok(r) if r < previous => 0,
        Ok(r) => r,
    }
}

/// Exponential backoff with full jitter (AWS architecture blog's "Full Jitter").
#[derive(Debug)]
pub struct Backoff {
    failures: u32,
    max: Duration,
}

impl Default for Backoff {
    /// Capped at `consul.max_backoff`'s default (2 s).
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BACKOFF)
    }
}

impl Backoff {
    /// Delays capped at `max` (at least the first step).
    pub fn new(max: Duration) -> Self {
        Self {
            failures: 0,
            max: max.max(BACKOFF_BASE),
        }
    }

    /// The cap of the next delay: 250 ms, 500 ms, 1 s, ... `max`.
    pub fn ceiling(&self) -> Duration {
        BACKOFF_BASE
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.max)
    }

    /// A random delay in `0..=ceiling`, and one step further.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What one pool's watcher shows on `/status`.
#[derive(Debug, Clone, Default)]
pub struct WatchState {
    pub prefix: String,
    /// The address of the last poll.
    pub address: Option<String>,
    /// `None` until the first answer or error.
    pub reachable: Option<bool>,
    /// The `index` of the next blocking query.
    pub index: u64,
    pub last_success: Option<SystemTime>,
    /// Last time Consul changed the pool.
    pub last_change: Option<SystemTime>,
    /// Failed polls since the last success.
    pub errors: u64,
    pub errors_total: u64,
    pub last_error: Option<String>,
    pub last_error_at: Option<SystemTime>,
    pub dump_path: Option<PathBuf>,
    /// Why the last dump write failed; `None` once a write succeeds.
    pub dump_error: Option<String>,
    /// Where the pool's current servers came from: "none", "dump" or "consul".
    pub servers_from: &'static str,
}

fn unix(t: Option<SystemTime>) -> serde_json::Value {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(serde_json::Value::Null, |d| json!(d.as_secs()))
}

fn age(t: Option<SystemTime>, now: SystemTime) -> serde_json::Value {
    t.and_then(|t| now.duration_since(t).ok())
        .map_or(serde_json::Value::Null, |d| {
            json!((d.as_secs_f64() * 1000.0).round() / 1000.0)
        })
}

impl WatchState {
    pub fn to_json(&self, now: SystemTime) -> serde_json::Value {
        json!({
            "prefix": self.prefix,
            "address": self.address,
            "reachable": self.reachable,
            "index": self.index,
            "last_success_unix": unix(self.last_success),
            "last_success_age_seconds": age(self.last_success, now),
            "last_change_unix": unix(self.last_change),
            "errors": self.errors,
            "errors_total": self.errors_total,
            "last_error": self.last_error,
            "last_error_unix": unix(self.last_error_at),
            "dump_path": self.dump_path.as_ref().map(|p| p.display().to_string()),
            "dump_error": self.dump_error,
            "servers_from": self.servers_from,
        })
    }
}

/// Every Consul pool's [`WatchState`], shared with the admin listener.
#[derive(Debug, Default)]
pub struct ConsulStatus {
    pools: BTreeMap<String, Arc<Mutex<WatchState>>>,
}

impl ConsulStatus {
    pub fn get(&self, pool: &str) -> Option<WatchState> {
        self.pools.get(pool).map(|s| s.lock().clone())
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// `{"<pool>": {...}, ...}`: the `consul` part of `/status?format=json`.
    pub fn to_json(&self) -> serde_json::Value {
        let now = SystemTime::now();
        serde_json::Value::Object(
            self.pools
                .iter()
                .map(|(name, s)| (name.clone(), s.lock().to_json(now)))
                .collect(),
        )
    }
}

/// One pool fed from one Consul prefix.
pub struct PoolWatcher {
    pool: Arc<Pool>,
    prefix: String,
    dump_path: Option<PathBuf>,
    state: Arc<Mutex<WatchState>>,
    /// Entries of the last answer that was fully applied; an equal answer is skipped.
    last: Mutex<Option<Vec<KvEntry>>>,
    /// The dump is behind the pool (a write failed); retried after every poll.
    dump_stale: AtomicBool,
}

impl PoolWatcher {
    pub fn new(pool: Arc<Pool>, prefix: String, dump_path: Option<PathBuf>) -> Self {
        let state = WatchState {
            prefix: prefix.clone(),
            dump_path: dump_path.clone(),
            servers_from: "none",
            ..WatchState::default()
        };
        Self {
            pool,
            prefix,
            dump_path,
            state: Arc::new(Mutex::new(state)),
            last: Mutex::new(None),
            dump_stale: AtomicBool::new(false),
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn state(&self) -> WatchState {
        self.state.lock().clone()
    }

    /// Loads the dump into the pool (startup, before serving). Problems are logged, never fatal:
    /// the pool then waits for Consul. Skipped when Consul's own answer is in already
    /// (`strong_dependency`).
    pub async fn load_dump(&self) {
        let name = &self.pool.name;
        if self.state.lock().servers_from == "consul" {
            return;
        }
        let Some(path) = &self.dump_path else {
            info!(
                "pool {name}: no dump_path, so the pool is empty until Consul answers \
                 (set dump_path to serve the last known servers when Consul is down at start)"
            );
            return;
        };
        let text = match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                info!(
                    "pool {name}: no dump at {} yet; the pool is empty until Consul answers",
                    path.display()
                );
                return;
            }
            Err(e) => {
                warn!(
                    "pool {name}: cannot read the dump {}: {e}; the pool is empty until Consul \
                     answers",
                    path.display()
                );
                return;
            }
            Ok(text) => text,
        };
        // Host names in the dump are looked up within a short budget, off the async threads;
        // one that does not answer waits for Consul.
        let names = resolve::names_and_syntax(&text).names;
        let resolved = resolve::lookup(&names, resolve::STARTUP_BUDGET).await;
        let parsed = resolve::parse_resolved(&text, &resolved, &[]).parsed;
        for e in &parsed.errors {
            warn!("pool {name}: dump {}: {e}; line skipped", path.display());
        }
        let n = parsed.servers.len();
        self.pool.replace(parsed.servers);
        self.state.lock().servers_from = "dump";
        info!(
            "pool {name}: {n} server(s) from the dump {} until Consul answers",
            path.display()
        );
    }

    /// Applies one answer: skips it when nothing changed, else resolves, replaces the pool,
    /// logs what changed and rewrites the dump.
    pub async fn apply(&self, entries: Vec<KvEntry>, index: i64) {
        if self.last.lock().as_ref() == Some(&entries) {
            if self.dump_stale.load(Ordering::Relaxed) {
                self.write_dump().await;
            }
            return;
        }
        let name = &self.pool.name;
        let (servers, skipped) = kv_value::servers(&self.prefix, &entries);
        let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
        let resolved = resolve::lookup(&names, resolve::TIMEOUT).await;
        let previous = self.pool.snapshot().specs();
        let (specs, problems) = kv_value::specs(&servers, &resolved, &previous);
        for p in skipped.iter().chain(&problems) {
            warn!("pool {name}: Consul {}: {p}", self.prefix);
        }
        match self.pool.replace(specs) {
            Update::Applied(diff) => {
                info!(
                    "pool {name}: {} server(s) from Consul {} (index {index}): {diff}",
                    self.pool.snapshot().servers.len(),
                    self.prefix
                );
                {
                    let mut st = self.state.lock();
                    st.last_change = Some(SystemTime::now());
                    st.servers_from = "consul";
                }
                self.write_dump().await;
            }
            Update::RefusedEmpty => warn!(
                "pool {name}: Consul {} lists no usable server; keeping the last {} \
                 (allow_empty = false)",
                self.prefix,
                self.pool.snapshot().servers.len()
            ),
            Update::Unchanged => {
                // The dump (if any) matched Consul: the servers are now Consul's.
                self.state.lock().servers_from = "consul";
                if self.dump_stale.load(Ordering::Relaxed) {
                    self.write_dump().await;
                } else {
                    self.refresh_dump().await;
                }
            }
        }
        // A name that did not resolve is retried with the next answer, even an unchanged one.
        let complete = resolved.values().all(Result::is_ok);
        *self.last.lock() = complete.then_some(entries);
    }

    /// Writes the dump when there is none yet (a pool that is empty from the start: nginx's
    /// `include` needs the file) or when it says something else than we would write (e.g. a dump
    /// of an older version, in a form nginx refuses).
    async fn refresh_dump(&self) {
        let Some(path) = self.dump_path.clone() else {
            return;
        };
        let text = dump::render(&self.pool.name, &self.prefix, &self.pool.snapshot().specs());
        let current = tokio::task::spawn_blocking(move || std::fs::read_to_string(path).ok())
            .await
            .ok()
            .flatten();
        if current.as_deref() != Some(text.as_str()) {
            self.write_dump().await;
        }
    }

    async fn write_dump(&self) {
        let Some(path) = self.dump_path.clone() else {
            return;
        };
        let text = dump::render(&self.pool.name, &self.prefix, &self.pool.snapshot().specs());
        let target = path.clone();
        let result = tokio::task::spawn_blocking(move || dump::write_atomically(&target, &text))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let mut st = self.state.lock();
        match result {
            Ok(()) => {
                if st.dump_error.take().is_some() {
                    info!(
                        "pool {}: dump {} written again",
                        self.pool.name,
                        path.display()
                    );
                }
                self.dump_stale.store(false, Ordering::Relaxed);
            }
            Err(e) => {
                if st.dump_error.is_none() {
                    warn!(
                        "pool {}: cannot write the dump {}: {e}; retrying after every poll \
                         (the pool itself is fine)",
                        self.pool.name,
                        path.display()
                    );
                }
                st.dump_error = Some(e);
                self.dump_stale.store(true, Ordering::Relaxed);
            }
        }
    }

    fn note_success(&self, address: &str, next_index: u64) {
        let mut st = self.state.lock();
        let name = &self.pool.name;
        match st.reachable {
            None => info!(
                "pool {name}: following Consul {address} prefix {}",
                self.prefix
            ),
            Some(false) => info!(
                "pool {name}: Consul {address} answers again after {} failed poll(s)",
                st.errors
            ),
            Some(true) => {}
        }
        st.reachable = Some(true);
        st.address = Some(address.to_string());
        st.index = next_index;
        st.last_success = Some(SystemTime::now());
        st.errors = 0;
    }

    fn note_error(&self, address: &str, err: &str, retry_in: Option<Duration>) {
        let mut st = self.state.lock();
        st.errors += 1;
        st.errors_total += 1;
        st.address = Some(address.to_string());
        st.index = 0;
        st.last_error = Some(format!("{address}: {err}"));
        st.last_error_at = Some(SystemTime::now());
        let servers = self.pool.snapshot().servers.len();
        if st.reachable != Some(false) {
            // Once per outage, not per poll.
            warn!(
                "pool {}: Consul poll failed: {address}: {err}; keeping the last {servers} \
                 server(s) and retrying (other addresses in turn, then with backoff)",
                self.pool.name
            );
        } else {
            debug!(
                "pool {}: Consul poll failed again ({} in a row): {address}: {err}{}",
                self.pool.name,
                st.errors,
                retry_in.map_or(String::new(), |d| format!("; next try in {d:?}"))
            );
        }
        st.reachable = Some(false);
    }

    /// The poll loop; runs until the task is aborted.
    pub async fn run(self: Arc<Self>, client: Arc<ConsulClient>) {
        let addresses = client.addresses().to_vec();
        if addresses.is_empty() {
            error!("pool {}: no Consul addresses", self.pool.name);
            return;
        }
        let mut at = 0usize;
        let mut index = 0u64;
        let mut backoff = Backoff::new(client.cfg.max_backoff);
        let mut failures_in_row = 0usize;
        let mut next_poll = tokio::time::Instant::now();
        loop {
            tokio::time::sleep_until(next_poll).await;
            next_poll = tokio::time::Instant::now() + client.cfg.interval;
            let address = &addresses[at];
            match client
                .fetch(address, &self.prefix, index, client.cfg.timeout)
                .await
            {
                Ok(answer) => {
                    failures_in_row = 0;
                    backoff.reset();
                    let next = next_index(index, answer.index);
                    if next == 0 {
                        info!(
                            "pool {}: Consul index went backwards ({index} -> {}): restarting \
                             the blocking query from 0",
                            self.pool.name, answer.index
                        );
                    }
                    self.note_success(address, next);
                    self.apply(answer.entries, answer.index).await;
                    index = next;
                }
                Err(e) => {
                    index = 0;
                    failures_in_row += 1;
                    at = (at + 1) % addresses.len();
                    // Other addresses are tried at once; a full round of failures backs off.
                    let delay = failures_in_row
                        .is_multiple_of(addresses.len())
                        .then(|| backoff.next_delay());
                    self.note_error(address, &e, delay);
                    if let Some(d) = delay {
                        next_poll = next_poll.max(tokio::time::Instant::now() + d);
                    }
                }
            }
        }
    }

    /// `strong_dependency`: one non-blocking query, every address in turn until `deadline`.
    async fn first_fetch(&self, client: &ConsulClient, deadline: Instant) -> Result<(), String> {
        let mut failures: Vec<String> = Vec::new();
        loop {
            for address in client.addresses() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(failures.join("; "));
                }
                match client.fetch(address, &self.prefix, 0, left).await {
                    Ok(answer) => {
                        self.note_success(address, next_index(0, answer.index));
                        self.apply(answer.entries, answer.index).await;
                        return Ok(());
                    }
                    Err(e) => {
                        let line = format!("{address}: {e}");
                        if !failures.contains(&line) {
                            failures.push(line);
                        }
                    }
                }
            }
            // A short pause between rounds: a refused connection fails in microseconds.
            let pause =
                Duration::from_millis(250).min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }
}

/// Every Consul pool of a configuration, ready to run: dumps loaded, and (with
/// `strong_dependency`) a first answer from Consul applied.
pub struct ConsulSource {
    pub client: Arc<ConsulClient>,
    pub watchers: Vec<Arc<PoolWatcher>>,
    pub status: Arc<ConsulStatus>,
}

impl ConsulSource {
    /// Builds the watchers (nothing read or fetched yet). `pools` yields (config, pool) for the
    /// Consul pools.
    pub fn new<'a>(
        cfg: &ConsulConfig,
        pools: impl IntoIterator<Item = (&'a PoolConfig, Arc<Pool>)>,
    ) -> Result<Self, String> {
        let client = Arc::new(ConsulClient::new(cfg)?);
        let mut watchers = Vec::new();
        let mut status = ConsulStatus::default();
        for (p, pool) in pools {
            let Some(prefix) = &p.consul_prefix else {
                continue;
            };
            let w = Arc::new(PoolWatcher::new(pool, prefix.clone(), p.dump_path.clone()));
            status.pools.insert(p.name.clone(), w.state.clone());
            watchers.push(w);
        }
        Ok(Self {
            client,
            watchers,
            status: Arc::new(status),
        })
    }

    /// `strong_dependency = true`: every pool's first answer, within [`STARTUP_TIMEOUT`] in all,
    /// or an error naming the addresses. Runs on its own thread and runtime, so it works before
    /// (and regardless of) Pingora's runtimes.
    pub fn first_fetch(&self, cfg: &ConsulConfig) -> Result<(), String> {
        let watchers = self.watchers.clone();
        let cfg = cfg.clone();
        let run = move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a runtime for the first Consul query: {e}"))?;
            // A client of its own: a connection pool must not outlive the runtime it ran on.
            let client = ConsulClient::new(&cfg)?;
            let deadline = Instant::now() + STARTUP_TIMEOUT;
            rt.block_on(async {
                for w in &watchers {
                    w.first_fetch(&client, deadline).await.map_err(|why| {
                        format!(
                            "Consul did not answer for pool {} (prefix {}) within {:?} at {} \
                             and strong_dependency = true, so graysplit does not start: {why}. \
                             Start Consul, or set strong_dependency = false to start from the \
                             dump file",
                            w.pool.name,
                            w.prefix,
                            STARTUP_TIMEOUT,
                            cfg.addresses.join(", ")
                        )
                    })?;
                }
                Ok(())
            })
        };
        std::thread::Builder::new()
            .name("consul-startup".into())
            .spawn(run)
            .map_err(|e| format!("cannot start the first Consul query: {e}"))?
            .join()
            .map_err(|_| "the first Consul query panicked".to_string())?
    }
}

/// The background service running every pool's poll loop (one task per pool). It loads each
/// pool's dump first and is ready then, so the health checks (and so the proxy) start with the
/// dumps' servers in place, traffic flowing before Consul answers.
pub struct ConsulWatcher {
    pub client: Arc<ConsulClient>,
    pub watchers: Vec<Arc<PoolWatcher>>,
}

#[async_trait]
impl BackgroundService for ConsulWatcher {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        for w in &self.watchers {
            w.load_dump().await;
        }
        ready.notify_ready();
        let mut tasks = tokio::task::JoinSet::new();
        let mut by_task = HashMap::new();
        for (i, w) in self.watchers.iter().enumerate() {
            let handle = tasks.spawn(w.clone().run(self.client.clone()));
            by_task.insert(handle.id(), i);
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(ended) = tasks.join_next_with_id() => {
                    // A poll loop only ends by panicking (or with no address, which validation
                    // rules out); a panicked one would freeze its pool silently, so it is
                    // restarted.
                    let Err(e) = ended else { continue };
                    let Some(i) = by_task.remove(&e.id()) else { continue };
                    let w = &self.watchers[i];
                    error!(
                        "pool {}: the Consul watcher stopped unexpectedly ({e}); restarting it",
                        w.pool.name
                    );
                    let handle = tasks.spawn(w.clone().run(self.client.clone()));
                    by_task.insert(handle.id(), i);
                }
            }
        }
        tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_follows_consuls_blocking_query_rules() {
        assert_eq!(next_index(0, 42), 42, "first answer");
        assert_eq!(next_index(42, 42), 42, "wait expired, nothing changed");
        assert_eq!(next_index(42, 50), 50, "moved forward");
        assert_eq!(next_index(42, 7), 0, "went backwards: reset to 0");
        assert_eq!(next_index(0, 0), 1, "index 0 is a Consul bug: use 1");
        assert_eq!(next_index(0, -5), 1, "negative index: use 1");
        assert_eq!(next_index(42, 0), 1);
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_full_jitter_and_resets() {
        let max = Duration::from_secs(2);
        let mut b = Backoff::new(max);
        let caps: Vec<u128> = (0..7)
            .map(|_| {
                let cap = b.ceiling();
                let d = b.next_delay();
                assert!(d <= cap, "{d:?} above {cap:?}");
                cap.as_millis()
            })
            .collect();
        assert_eq!(caps, vec![250, 500, 1000, 2000, 2000, 2000, 2000]);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), max, "no overflow after many failures");
        b.reset();
        assert_eq!(b.ceiling(), BACKOFF_BASE);
        assert_eq!(Backoff::new(Duration::ZERO).ceiling(), BACKOFF_BASE);
        // Full jitter: the delays spread over the whole range, not around the cap.
        let long = Duration::from_secs(30);
        let small = (0..200)
            .filter(|_| {
                let mut b = Backoff::new(long);
                b.failures = 10;
                b.next_delay() < long / 2
            })
            .count();
        assert!(small > 40, "{small} of 200 delays below half the cap");
    }

    #[test]
    fn status_json_has_the_documented_fields() {
        let w = PoolWatcher::new(
            Arc::new(Pool::new(
                "base",
                false,
                Arc::new(super::super::health::HealthTable::default()),
            )),
            "upstreams/base/".into(),
            None,
        );
        w.note_error("http://127.0.0.1:1", "connection refused", None);
        let mut status = ConsulStatus::default();
        status.pools.insert("base".into(), w.state.clone());
        let j = status.to_json();
        let b = &j["base"];
        assert_eq!(b["prefix"], "upstreams/base/");
        assert_eq!(b["address"], "http://127.0.0.1:1");
        assert_eq!(b["reachable"], false);
        assert_eq!(b["errors"], 1);
        assert_eq!(b["last_error"], "http://127.0.0.1:1: connection refused");
        assert!(b["last_success_unix"].is_null());
        w.note_success("http://127.0.0.1:2", 9);
        let b = &status.to_json()["base"];
        assert_eq!(
            (b["reachable"].as_bool(), b["index"].as_u64()),
            (Some(true), Some(9))
        );
        assert_eq!(b["errors"], 0);
        assert_eq!(b["errors_total"], 1);
        assert!(b["last_success_age_seconds"].as_f64().unwrap() < 5.0);
    }

    #[tokio::test]
    async fn apply_skips_equal_answers_keeps_base_and_writes_the_dump() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let dump_path = dir.path().join("base.conf");
        let pool = Arc::new(Pool::new(
            "base",
            false,
            Arc::new(super::super::health::HealthTable::default()),
        ));
        let w = PoolWatcher::new(
            pool.clone(),
            "upstreams/base/".into(),
            Some(dump_path.clone()),
        );
        let entry = |k: &str, v: &str| KvEntry {
            key: format!("upstreams/base/{k}"),
            value: Some(base64::engine::general_purpose::STANDARD.encode(v)),
        };
        w.apply(vec![entry("127.0.0.1:1", r#"{"weight":3}"#)], 5)
            .await;
        assert_eq!(pool.snapshot().servers[0].spec.weight, 3);
        let dumped = std::fs::read_to_string(&dump_path).unwrap();
        assert!(
            dumped.contains("server 127.0.0.1:1 weight=3 max_fails=2 fail_timeout=10s;"),
            "{dumped}"
        );
        // An equal answer does not even rewrite the dump.
        std::fs::remove_file(&dump_path).unwrap();
        w.apply(vec![entry("127.0.0.1:1", r#"{"weight":3}"#)], 6)
            .await;
        assert!(!dump_path.exists());
        // Empty for base: kept.
        w.apply(vec![], 7).await;
        assert_eq!(pool.snapshot().servers.len(), 1);
        // A dump reloads into a fresh pool.
        w.apply(vec![entry("127.0.0.1:2", "")], 8).await;
        let fresh = Arc::new(Pool::new(
            "base",
            false,
            Arc::new(super::super::health::HealthTable::default()),
        ));
        let w2 = PoolWatcher::new(fresh.clone(), "upstreams/base/".into(), Some(dump_path));
        w2.load_dump().await;
        assert_eq!(fresh.snapshot().specs(), pool.snapshot().specs());
        assert_eq!(w2.state().servers_from, "dump");
    }
}

/// Property tests (`cargo test --lib fuzz_`; `PROPTEST_CASES=1000000` for the long run).
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any X-Consul-Index sequence (a header is an i64 as Consul sends it, possibly junk that
        /// became a negative or zero number): the next query's index is the answer's index, 0
        /// after a rewind, 1 for a non-positive answer, and never moves backwards otherwise.
        #[test]
        fn fuzz_next_index_follows_consuls_rules(
            start in any::<u64>(),
            returned in proptest::collection::vec(
                prop_oneof![any::<i64>(), -2i64..100, Just(0i64)], 1..20),
        ) {
            let mut previous = start;
            for r in returned {
                let next = next_index(previous, r);
                match u64::try_from(r) {
                    Err(_) | Ok(0) => prop_assert_eq!(next, 1),
                    Ok(r) if r < previous => prop_assert_eq!(next, 0),
                    Ok(r) => {
                        prop_assert_eq!(next, r);
                        prop_assert!(next >= previous);
                    }
                }
                previous = next;
            }
        }

        /// However many failures in a row, a delay stays within its cap and the cap within
        /// `max_backoff`.
        #[test]
        fn fuzz_backoff_stays_within_its_cap(failures in 0usize..200, max_ms in 0u64..400_000) {
            let max = Duration::from_millis(max_ms);
            let mut b = Backoff::new(max);
            for _ in 0..failures {
                let cap = b.ceiling();
                prop_assert!(cap <= max.max(BACKOFF_BASE) && cap >= BACKOFF_BASE);
                prop_assert!(b.next_delay() <= cap);
            }
        }
    }
}
