//! In-process stand-in for Consul's KV HTTP API, for integration tests.
//!
//! Follows the documented behaviour of Consul's "KV Store Endpoints" and "Blocking Queries":
//!
//! * `PUT /v1/kv/<key>` (raw body = value, optional `?flags=` and `?cas=`) answers `true`/`false`.
//! * `DELETE /v1/kv/<key>` (optional `?recurse`) answers `true` and leaves tombstones, so the
//!   index of a prefix still moves when its last key is deleted.
//! * `GET /v1/kv/<key>` / `GET /v1/kv/<prefix>?recurse` answer a JSON array of entries
//!   (`LockIndex`, `Key`, `Flags`, `Value` (base64, `null` when empty), `CreateIndex`,
//!   `ModifyIndex`), or 404 with an empty body. `?keys` (with `?separator=`) and `?raw` work too.
//!   Every GET answer (200 and 404) carries `X-Consul-Index`, `X-Consul-Knownleader: true` and
//!   `X-Consul-Lastcontact: 0`.
//! * `?index=N` (N > 0) holds the GET until the index of what it reads becomes greater than N,
//!   or until `?wait=` expires (Go duration syntax, default 5m, capped at 10m, no jitter); on
//!   expiry the current result is returned with the unchanged index.
//!
//! The index of a read is the highest `ModifyIndex` among the matching keys and the tombstones
//! of deleted matching keys (and never below the last [`ConsulStandIn::bump_index_without_change`]);
//! when nothing ever matched it is the current global index (always >= 1).
//!
//! The server runs on its own OS thread with its own single-threaded Tokio runtime, so it works
//! from plain `#[test]` functions and from any `#[tokio::test]` flavour. All control methods are
//! synchronous and never block on the server thread.
//!
//! Sessions and locks (`/v1/session/*`, `PUT ?acquire=` / `?release=`, TTL expiry, lock-delay)
//! live in `consul_sessions.rs`; see its module docs.
//!
//! Fault injection ([`Fault`]) applies to every HTTP request (not only GETs) and is evaluated
//! whenever a response is about to be produced, so setting a fault also affects requests that
//! are already parked in a blocking query.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Notify};

// ---------------------------------------------------------------------------------------------
// Sessions and locks: a separate file (rollout engineer); hooks below are marked "sessions:".
#[path = "consul_sessions.rs"]
mod sessions;

/// Consul's default blocking-query wait when `?wait=` is absent.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// Consul's maximum blocking-query wait; longer `?wait=` values are capped to it.
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

const X_CONSUL_INDEX: HeaderName = HeaderName::from_static("x-consul-index");
const X_CONSUL_KNOWNLEADER: HeaderName = HeaderName::from_static("x-consul-knownleader");
const X_CONSUL_LASTCONTACT: HeaderName = HeaderName::from_static("x-consul-lastcontact");
const X_CONSUL_TOKEN: &str = "x-consul-token";

/// What the stand-in does with each HTTP request while the fault is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Behave like Consul.
    #[default]
    None,
    /// Answer `500 Internal Server Error` (body `No cluster leader`).
    Status500,
    /// Answer `200` with body `not json {{{`, `Content-Type: application/json` and a valid
    /// `X-Consul-Index`.
    Garbage,
    /// Read the request and never answer, until the fault is cleared (then the request is
    /// served normally) or the stand-in is dropped (then the connection is closed).
    Hang,
    /// Read the request, then close the TCP connection without writing any response.
    DropConnection,
}

struct Entry {
    value: Vec<u8>,
    flags: u64,
    create_index: u64,
    modify_index: u64,
    // sessions: how often the key was acquired, and the session holding its lock.
    lock_index: u64,
    session: Option<String>,
}

struct State {
    /// Global (raft) index; every write raises it by one.
    index: u64,
    kv: BTreeMap<String, Entry>,
    /// Deleted key -> index of the delete.
    tombstones: BTreeMap<String, u64>,
    /// Every read index is at least this (set by `bump_index_without_change`).
    bump_floor: u64,
    /// Raised by `rewind_index`; requests parked across a rewind return immediately.
    rewind_epoch: u64,
    fault: Fault,
    required_token: Option<String>,
    last_token: Option<String>,
    // sessions: live sessions and lock-delays.
    sessions: sessions::Sessions,
}

impl State {
    fn new() -> State {
        State {
            index: 1,
            kv: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            bump_floor: 0,
            rewind_epoch: 0,
            fault: Fault::None,
            required_token: None,
            last_token: None,
            sessions: sessions::Sessions::default(),
        }
    }

    fn put(&mut self, key: &str, value: &[u8], flags: u64) -> u64 {
        self.index += 1;
        let index = self.index;
        let create_index = self.kv.get(key).map_or(index, |e| e.create_index);
        // sessions: a write without ?acquire keeps the key's lock ("an update that does not
        // include the acquire parameter will proceed normally even if another session has
        // locked the key", api-docs/kv).
        let (lock_index, session) = self
            .kv
            .get(key)
            .map_or((0, None), |e| (e.lock_index, e.session.clone()));
        self.kv.insert(
            key.to_string(),
            Entry {
                value: value.to_vec(),
                flags,
                create_index,
                modify_index: index,
                lock_index,
                session,
            },
        );
        index
    }

    /// Check-and-set: `cas == 0` only creates, otherwise the key's ModifyIndex must match.
    fn cas_allows(&self, key: &str, cas: u64) -> bool {
        match self.kv.get(key) {
            None => cas == 0,
            Some(e) => e.modify_index == cas,
        }
    }

    fn delete(&mut self, key: &str) -> u64 {
        self.index += 1;
        if self.kv.remove(key).is_some() {
            self.tombstones.insert(key.to_string(), self.index);
        }
        self.index
    }

    fn delete_prefix(&mut self, prefix: &str) -> u64 {
        self.index += 1;
        let doomed: Vec<String> = self
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            self.kv.remove(&key);
            self.tombstones.insert(key, self.index);
        }
        self.index
    }

    fn bump(&mut self) -> u64 {
        self.index += 1;
        self.bump_floor = self.index;
        self.index
    }

    fn rewind(&mut self, to: u64) {
        let to = to.max(1);
        for e in self.kv.values_mut() {
            e.modify_index = e.modify_index.min(to);
            e.create_index = e.create_index.min(to);
        }
        for idx in self.tombstones.values_mut() {
            *idx = (*idx).min(to);
        }
        self.bump_floor = self.bump_floor.min(to);
        self.index = to;
        self.rewind_epoch += 1;
    }

    /// Entries read by a query: the exact key, or every key starting with `key` when `prefix`.
    fn matching(&self, key: &str, prefix: bool) -> Vec<(&String, &Entry)> {
        if prefix {
            self.kv
                .range(key.to_string()..)
                .take_while(|(k, _)| k.starts_with(key))
                .collect()
        } else {
            self.kv.get_key_value(key).into_iter().collect()
        }
    }

    /// The `X-Consul-Index` of a query (see the module docs).
    fn query_index(&self, key: &str, prefix: bool) -> u64 {
        let live = self
            .matching(key, prefix)
            .iter()
            .map(|(_, e)| e.modify_index)
            .max()
            .unwrap_or(0);
        let dead = if prefix {
            self.tombstones
                .range(key.to_string()..)
                .take_while(|(k, _)| k.starts_with(key))
                .map(|(_, i)| *i)
                .max()
                .unwrap_or(0)
        } else {
            self.tombstones.get(key).copied().unwrap_or(0)
        };
        let idx = live.max(dead);
        if idx == 0 {
            self.index.max(1)
        } else {
            idx.max(self.bump_floor)
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Bumped after every state change; parked requests re-evaluate on each bump.
    changes: watch::Sender<u64>,
    gets_served: AtomicU64,
    held: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Run `f` on the state and wake every parked request afterwards.
    fn mutate<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.lock());
        self.notify();
        out
    }
}

/// Counts a request as "held" (see [`ConsulStandIn::wait_for_blocked_queries`]) while alive.
struct HeldGuard<'a>(&'a AtomicUsize);

impl<'a> HeldGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> HeldGuard<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        HeldGuard(counter)
    }
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An in-process Consul KV HTTP server. Dropping it stops the server, closes every connection
/// (including ones held by blocking queries or [`Fault::Hang`]) and joins its thread.
pub struct ConsulStandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ConsulStandIn {
    /// Start on `127.0.0.1:<ephemeral port>`. Panics if that fails.
    pub fn start() -> ConsulStandIn {
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
        ConsulStandIn::start_on(addr).expect("consul stand-in: bind 127.0.0.1:0")
    }

    /// Start on a given address, e.g. the address of a dropped stand-in to simulate "Consul
    /// came back". The new stand-in starts empty with index 1 (like a Consul with fresh state).
    pub fn start_on(addr: SocketAddr) -> std::io::Result<ConsulStandIn> {
        // std's bind sets SO_REUSEADDR on Unix, so re-binding a just-closed port works.
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (changes, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new()),
            changes,
            gets_served: AtomicU64::new(0),
            held: AtomicUsize::new(0),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let server_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("consul-standin-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(accept_loop(listener, server_shared, shutdown_rx));
                // Dropping the runtime drops every connection task and so closes its socket.
                drop(runtime);
            })?;
        Ok(ConsulStandIn {
            addr,
            shared,
            shutdown,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Store `value` under `key` (flags 0); returns the new index.
    pub fn put(&self, key: &str, value: &str) -> u64 {
        self.shared.mutate(|st| st.put(key, value.as_bytes(), 0))
    }

    /// Delete one key (tombstoning it if it existed); returns the new index.
    pub fn delete(&self, key: &str) -> u64 {
        self.shared.mutate(|st| st.delete(key))
    }

    /// Delete every key starting with `prefix` (like `DELETE ?recurse`); returns the new index.
    pub fn delete_prefix(&self, prefix: &str) -> u64 {
        self.shared.mutate(|st| st.delete_prefix(prefix))
    }

    /// The value stored under `key` (lossy UTF-8).
    pub fn get(&self, key: &str) -> Option<String> {
        self.shared
            .lock()
            .kv
            .get(key)
            .map(|e| String::from_utf8_lossy(&e.value).into_owned())
    }

    /// The current global (raft) index.
    pub fn index(&self) -> u64 {
        self.shared.lock().index
    }

    /// Raise the global index and the index of every query (all prefixes/keys) by one without
    /// changing any content, and wake parked queries (they return the same data with the new
    /// index). Returns the new index.
    pub fn bump_index_without_change(&self) -> u64 {
        self.shared.mutate(State::bump)
    }

    /// Move the index backwards (snapshot restore / new leader): every CreateIndex, ModifyIndex
    /// and tombstone index above `to` becomes `to`, and the global index becomes `to` (min 1).
    /// Queries parked at the time of the call return immediately with the new, smaller index.
    /// (A *new* query with `index=N` above the current index blocks until the index exceeds N or
    /// `wait` expires, as in Consul.) Calling it with `to` above the current index simply sets
    /// the global index to `to`.
    pub fn rewind_index(&self, to: u64) {
        self.shared.mutate(|st| st.rewind(to));
    }

    /// Set the fault for every request from now on (including currently parked ones).
    pub fn set_fault(&self, f: Fault) {
        self.shared.mutate(|st| st.fault = f);
    }

    /// `Some(token)`: requests without exactly this token get `403 Permission denied`.
    /// `None`: any token (or none) is accepted.
    pub fn require_token(&self, token: Option<&str>) {
        self.shared
            .mutate(|st| st.required_token = token.map(str::to_string));
    }

    /// Number of `GET /v1/kv/...` requests received so far (including faulted/rejected ones).
    pub fn gets_served(&self) -> u64 {
        self.shared.gets_served.load(Ordering::SeqCst)
    }

    /// The token carried by the most recent HTTP request (`X-Consul-Token`, else
    /// `Authorization: Bearer`, else `?token=`); `None` if that request carried none.
    pub fn last_token(&self) -> Option<String> {
        self.shared.lock().last_token.clone()
    }

    /// Number of requests currently held without an answer: GETs parked in a blocking query
    /// plus requests stalled by [`Fault::Hang`].
    pub fn blocked_queries(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Poll until at least `n` requests are held (see [`Self::blocked_queries`]) or `timeout`
    /// passes; returns whether the count was reached.
    ///
    /// This blocks the calling thread. Inside a multi-thread Tokio runtime it uses
    /// `block_in_place`; inside a current-thread runtime it would starve client tasks running
    /// on that same runtime, so use [`Self::wait_for_blocked_queries_async`] there.
    pub fn wait_for_blocked_queries(&self, n: usize, timeout: Duration) -> bool {
        let poll = || {
            let deadline = Instant::now() + timeout;
            loop {
                if self.blocked_queries() >= n {
                    return true;
                }
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(poll)
            }
            _ => poll(),
        }
    }

    /// Async version of [`Self::wait_for_blocked_queries`]; safe on any Tokio runtime.
    pub async fn wait_for_blocked_queries_async(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.blocked_queries() >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for ConsulStandIn {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    // sessions: a TTL expires even when nobody asks (and wakes blocking queries on the keys
    // its locks are released from).
    let mut ttl_tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ttl_tick.tick() => {
                let expired = shared.lock().expire_sessions(Instant::now());
                if expired {
                    shared.notify();
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                // E.g. EMFILE: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    // Notified by a request handler to abort the connection without any response.
    let kill = Arc::new(Notify::new());
    let service = {
        let kill = Arc::clone(&kill);
        service_fn(move |req| {
            let shared = Arc::clone(&shared);
            let kill = Arc::clone(&kill);
            async move { Ok::<_, Infallible>(handle(req, shared, kill).await) }
        })
    };
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        // Dropping `conn` drops the socket: the client sees EOF/RST and no response.
        _ = kill.notified() => {}
    }
}

type Resp = Response<Full<Bytes>>;

/// What a request handler does after one look at the state.
enum Step {
    Respond(Resp),
    /// Park until the next change (or the deadline, if any).
    Park(Option<tokio::time::Instant>),
    DropConnection,
}

struct Query {
    recurse: bool,
    keys: bool,
    raw: bool,
    separator: Option<String>,
    min_index: u64,
    wait: Duration,
    flags: u64,
    cas: Option<u64>,
    token: Option<String>,
    // sessions: `?acquire=` / `?release=`, and the path after `/v1/session/`.
    acquire: Option<String>,
    release: Option<String>,
    session_path: Option<String>,
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>, kill: Arc<Notify>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let params = parse_query(req.uri().query().unwrap_or(""));
    let key = path.strip_prefix("/v1/kv/").map(percent_decode);
    if method == Method::GET && key.is_some() {
        shared.gets_served.fetch_add(1, Ordering::SeqCst);
    }
    let token = header_token(&req).or_else(|| param(&params, "token").map(str::to_string));
    shared.lock().last_token = token.clone();
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return text(StatusCode::BAD_REQUEST, "failed to read request body"),
    };
    let mut query = match parse_params(&params, token) {
        Ok(q) => q,
        Err(msg) => return text(StatusCode::BAD_REQUEST, msg),
    };
    query.session_path = path.strip_prefix("/v1/session/").map(str::to_string);

    let started = tokio::time::Instant::now();
    let deadline = started + query.wait;
    let mut held: Option<HeldGuard<'_>> = None;
    let mut epoch: Option<u64> = None;
    loop {
        // Subscribe before looking at the state so that no change can be missed.
        let mut changes = shared.changes.subscribe();
        let step = {
            let mut st = shared.lock();
            let first_epoch = *epoch.get_or_insert(st.rewind_epoch);
            step(
                &mut st,
                &method,
                key.as_deref(),
                &query,
                &body,
                deadline,
                first_epoch,
            )
        };
        match step {
            Step::Respond(resp) => {
                if method != Method::GET {
                    // Writes changed the state (harmless extra wake-up for failed writes).
                    shared.notify();
                }
                return resp;
            }
            Step::DropConnection => {
                kill.notify_one();
                return std::future::pending().await;
            }
            Step::Park(until) => {
                held.get_or_insert_with(|| HeldGuard::new(&shared.held));
                match until {
                    Some(until) => {
                        tokio::select! {
                            _ = changes.changed() => {}
                            _ = tokio::time::sleep_until(until) => {}
                        }
                    }
                    None => {
                        let _ = changes.changed().await;
                    }
                }
            }
        }
    }
}

fn step(
    st: &mut State,
    method: &Method,
    key: Option<&str>,
    query: &Query,
    body: &Bytes,
    deadline: tokio::time::Instant,
    first_epoch: u64,
) -> Step {
    match st.fault {
        Fault::None => {}
        Fault::Hang => return Step::Park(None),
        Fault::DropConnection => return Step::DropConnection,
        Fault::Status500 => {
            return Step::Respond(text(StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader"))
        }
        Fault::Garbage => {
            let idx = key.map_or(st.index, |k| st.query_index(k, query.recurse || query.keys));
            let mut resp = consul_get_response(StatusCode::OK, idx, "not json {{{");
            set_json(&mut resp);
            return Step::Respond(resp);
        }
    }
    if let Some(required) = &st.required_token {
        if query.token.as_deref() != Some(required.as_str()) {
            return Step::Respond(text(StatusCode::FORBIDDEN, "Permission denied"));
        }
    }
    // sessions: TTLs are checked on every request (and by a ticker, see accept_loop).
    st.expire_sessions(Instant::now());
    if let Some(rest) = &query.session_path {
        return Step::Respond(st.session_request(method, rest, body));
    }
    let Some(key) = key else {
        return Step::Respond(text(StatusCode::NOT_FOUND, "404 page not found"));
    };
    match *method {
        Method::PUT => {
            if key.is_empty() {
                return Step::Respond(text(StatusCode::BAD_REQUEST, "Missing key name"));
            }
            if let Some(cas) = query.cas {
                if !st.cas_allows(key, cas) {
                    return Step::Respond(json(StatusCode::OK, "false"));
                }
            }
            // sessions: lock acquisition and release.
            if query.acquire.is_some() || query.release.is_some() {
                return Step::Respond(st.lock_put(key, body, query));
            }
            st.put(key, body, query.flags);
            Step::Respond(json(StatusCode::OK, "true"))
        }
        Method::DELETE => {
            if query.recurse {
                st.delete_prefix(key);
            } else if key.is_empty() {
                return Step::Respond(text(StatusCode::BAD_REQUEST, "Missing key name"));
            } else {
                st.delete(key);
            }
            Step::Respond(json(StatusCode::OK, "true"))
        }
        Method::GET => {
            let prefix = query.recurse || query.keys;
            if key.is_empty() && !prefix {
                return Step::Respond(text(StatusCode::BAD_REQUEST, "Missing key name"));
            }
            let idx = st.query_index(key, prefix);
            let blocking = query.min_index > 0;
            if blocking
                && idx <= query.min_index
                && st.rewind_epoch == first_epoch
                && tokio::time::Instant::now() < deadline
            {
                return Step::Park(Some(deadline));
            }
            Step::Respond(read_response(st, key, query, idx))
        }
        _ => Step::Respond(text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
    }
}

fn read_response(st: &State, key: &str, query: &Query, idx: u64) -> Resp {
    let prefix = query.recurse || query.keys;
    let entries = st.matching(key, prefix);
    if entries.is_empty() {
        return consul_get_response(StatusCode::NOT_FOUND, idx, Bytes::new());
    }
    if query.keys {
        let mut keys: Vec<String> = Vec::new();
        for (k, _) in &entries {
            let mut k = k.as_str();
            if let Some(sep) = query.separator.as_deref().filter(|s| !s.is_empty()) {
                if let Some(pos) = k[key.len()..].find(sep) {
                    k = &k[..key.len() + pos + sep.len()];
                }
            }
            if keys.last().map(String::as_str) != Some(k) {
                keys.push(k.to_string());
            }
        }
        let mut resp =
            consul_get_response(StatusCode::OK, idx, serde_json::json!(keys).to_string());
        set_json(&mut resp);
        return resp;
    }
    if query.raw {
        let value = entries[0].1.value.clone();
        let mut resp = consul_get_response(StatusCode::OK, idx, value);
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return resp;
    }
    let engine = base64::engine::general_purpose::STANDARD;
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|(k, e)| {
            let value = if e.value.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::Value::String(engine.encode(&e.value))
            };
            let mut entry = serde_json::json!({
                "LockIndex": e.lock_index,
                "Key": k,
                "Flags": e.flags,
                "Value": value,
                "CreateIndex": e.create_index,
                "ModifyIndex": e.modify_index,
            });
            // sessions: "If the lock is held, the Session key provides the session that owns
            // the lock" (api-docs/kv); absent otherwise.
            if let (Some(s), Some(obj)) = (&e.session, entry.as_object_mut()) {
                obj.insert("Session".into(), serde_json::Value::String(s.clone()));
            }
            entry
        })
        .collect();
    let mut resp = consul_get_response(
        StatusCode::OK,
        idx,
        serde_json::Value::Array(list).to_string(),
    );
    set_json(&mut resp);
    resp
}

// ---------------------------------------------------------------------------------------------
// Responses

fn response(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

fn text(status: StatusCode, body: &'static str) -> Resp {
    let mut resp = response(status, body);
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(status: StatusCode, body: &'static str) -> Resp {
    let mut resp = response(status, body);
    set_json(&mut resp);
    resp
}

fn set_json(resp: &mut Resp) {
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
}

/// A GET answer with Consul's query-meta headers.
fn consul_get_response(status: StatusCode, index: u64, body: impl Into<Bytes>) -> Resp {
    let mut resp = response(status, body);
    let headers = resp.headers_mut();
    headers.insert(X_CONSUL_INDEX, HeaderValue::from(index));
    headers.insert(X_CONSUL_KNOWNLEADER, HeaderValue::from_static("true"));
    headers.insert(X_CONSUL_LASTCONTACT, HeaderValue::from_static("0"));
    resp
}

// ---------------------------------------------------------------------------------------------
// Request parsing

fn header_token(req: &Request<Incoming>) -> Option<String> {
    let headers = req.headers();
    if let Some(v) = headers.get(X_CONSUL_TOKEN) {
        return Some(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let auth = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn parse_params(params: &[(String, String)], token: Option<String>) -> Result<Query, &'static str> {
    let has = |name: &str| param(params, name).is_some();
    let min_index = match param(params, "index") {
        None | Some("") => 0,
        Some(v) => v.parse::<u64>().map_err(|_| "Invalid index")?,
    };
    let wait = match param(params, "wait") {
        None | Some("") => Duration::ZERO,
        Some(v) => parse_consul_duration(v).ok_or("Invalid wait time")?,
    };
    let wait = if wait.is_zero() {
        DEFAULT_WAIT
    } else {
        wait.min(MAX_WAIT)
    };
    let flags = match param(params, "flags") {
        None | Some("") => 0,
        Some(v) => v.parse::<u64>().map_err(|_| "Invalid flags")?,
    };
    let cas = match param(params, "cas") {
        None | Some("") => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| "Invalid cas index")?),
    };
    Ok(Query {
        recurse: has("recurse"),
        keys: has("keys"),
        raw: has("raw"),
        separator: param(params, "separator").map(str::to_string),
        min_index,
        wait,
        flags,
        cas,
        token,
        acquire: param(params, "acquire").map(str::to_string),
        release: param(params, "release").map(str::to_string),
        session_path: None,
    })
}

/// Decode `%XX` escapes (invalid escapes are kept literally; invalid UTF-8 is replaced).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse a Go `time.ParseDuration` string as Consul does for `?wait=`: e.g. `500ms`, `10s`,
/// `5m`, `1h`, `1.5s`, `1m30s`, `0`. Negative durations parse as zero (Consul then uses the
/// default wait). Returns `None` for malformed input.
pub fn parse_consul_duration(s: &str) -> Option<Duration> {
    let (negative, mut rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        rest = &rest[num_len..];
        const UNITS: [(&str, f64); 8] = [
            ("ns", 1.0),
            ("us", 1e3),
            ("µs", 1e3),
            ("μs", 1e3),
            ("ms", 1e6),
            ("s", 1e9),
            ("m", 60e9),
            ("h", 3600e9),
        ];
        let (unit, scale) = UNITS.iter().find(|(u, _)| rest.starts_with(u))?;
        rest = &rest[unit.len()..];
        total_nanos += value * scale;
    }
    if negative {
        return Some(Duration::ZERO);
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total_nanos as u64))
}
