//! Sessions and locks of the Consul stand-in (a child module of `consul.rs`), following:
//!
//! - developer.hashicorp.com/consul/api-docs/session — `PUT /v1/session/create` (body fields
//!   `Name`, `Node`, `LockDelay` (default `15s`), `Behavior` (`release` default, or `delete`),
//!   `TTL` "between 10s and 86400s", answer `{"ID": ...}`), `PUT /v1/session/destroy/<id>`
//!   (idempotent: `true` also for an unknown id), `GET /v1/session/info/<id>` (`[]` when
//!   unknown), `GET /v1/session/list`, `PUT /v1/session/renew/<id>` (extends by the TTL; an
//!   unknown session is a 404);
//! - developer.hashicorp.com/consul/docs/dynamic-app-config/sessions — invalidation (destroy,
//!   TTL expiry) releases the session's locks (`release`: `Session` cleared, `ModifyIndex`
//!   incremented) or deletes their keys (`delete`); "the contract of a TTL is that it represents
//!   a lower bound for invalidation" (this stand-in invalidates at the TTL, which Consul is
//!   allowed to do; real Consul may wait up to twice as long); after an invalidation the locks
//!   cannot be re-acquired for the lock-delay ("between 0 and 60 seconds");
//! - developer.hashicorp.com/consul/api-docs/kv — `?acquire=<session>`: with the lock not held
//!   and the session valid, increments `LockIndex`, sets `Session` and updates the value; by the
//!   holder itself, updates the value without a new `LockIndex`; otherwise `false`.
//!   `?release=<session>`: only by the holder; clears `Session`, keeps `LockIndex`, updates the
//!   value ("the request will fail if given an invalid session" — an acquire with an unknown
//!   session is an error, as in Consul: 500 `invalid session`);
//! - the leader-election guide (…/sessions/application-leader-election) for the flow the rollout
//!   uses: create, acquire, renew, release.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};

use super::{json, parse_consul_duration, response, set_json, text, Query, Resp, State};

/// Consul's TTL bounds.
const MIN_TTL: Duration = Duration::from_secs(10);
const MAX_TTL: Duration = Duration::from_secs(86_400);
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behavior {
    Release,
    Delete,
}

#[derive(Debug, Clone)]
struct Session {
    name: String,
    node: String,
    lock_delay: Duration,
    behavior: Behavior,
    ttl: Option<Duration>,
    expires: Option<Instant>,
    create_index: u64,
}

#[derive(Debug, Default)]
pub(super) struct Sessions {
    live: BTreeMap<String, Session>,
    /// Key → until when a lock released by an invalidation cannot be acquired again.
    lock_delay_until: BTreeMap<String, Instant>,
    created: u64,
}

fn bad(msg: String) -> Resp {
    let mut r = response(StatusCode::BAD_REQUEST, msg);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_value(status: StatusCode, v: &serde_json::Value) -> Resp {
    let mut r = response(status, v.to_string());
    set_json(&mut r);
    r
}

/// `LockDelay` as Consul reads it: a duration string, or a number (below 1000: seconds, else
/// nanoseconds, as the create endpoint's docs of older versions describe).
fn lock_delay(v: Option<&serde_json::Value>) -> Result<Duration, String> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(DEFAULT_LOCK_DELAY),
        Some(serde_json::Value::String(s)) => {
            parse_consul_duration(s).ok_or(format!("Request decode failed: bad LockDelay {s:?}"))
        }
        Some(serde_json::Value::Number(n)) => {
            let n = n.as_u64().ok_or("Request decode failed: bad LockDelay")?;
            Ok(if n < 1000 {
                Duration::from_secs(n)
            } else {
                Duration::from_nanos(n)
            })
        }
        Some(other) => Err(format!("Request decode failed: bad LockDelay {other}")),
    }
}

impl State {
    fn session_json(&self, id: &str, s: &Session) -> serde_json::Value {
        serde_json::json!({
            "ID": id,
            "Name": s.name,
            "Node": s.node,
            "LockDelay": u64::try_from(s.lock_delay.as_nanos()).unwrap_or(u64::MAX),
            "Behavior": match s.behavior { Behavior::Release => "release", Behavior::Delete => "delete" },
            "TTL": s.ttl.map_or(String::new(), |t| format!("{}s", t.as_secs())),
            "NodeChecks": ["serfHealth"],
            "ServiceChecks": null,
            "CreateIndex": s.create_index,
            "ModifyIndex": s.create_index,
        })
    }

    /// Invalidates every session whose TTL has passed. Returns whether anything changed.
    pub(super) fn expire_sessions(&mut self, now: Instant) -> bool {
        let expired: Vec<String> = self
            .sessions
            .live
            .iter()
            .filter(|(_, s)| s.expires.is_some_and(|t| now >= t))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.invalidate(id, now);
        }
        !expired.is_empty()
    }

    /// A session ends: its locks are released (or their keys deleted) and get the lock-delay.
    fn invalidate(&mut self, id: &str, now: Instant) -> bool {
        let Some(s) = self.sessions.live.remove(id) else {
            return false;
        };
        self.index += 1;
        let index = self.index;
        let held: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, e)| e.session.as_deref() == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for key in held {
            match s.behavior {
                Behavior::Release => {
                    if let Some(e) = self.kv.get_mut(&key) {
                        e.session = None;
                        e.modify_index = index;
                    }
                }
                Behavior::Delete => {
                    self.kv.remove(&key);
                    self.tombstones.insert(key.clone(), index);
                }
            }
            if !s.lock_delay.is_zero() {
                self.sessions
                    .lock_delay_until
                    .insert(key, now + s.lock_delay);
            }
        }
        true
    }

    /// `/v1/session/<rest>`.
    pub(super) fn session_request(&mut self, method: &Method, rest: &str, body: &Bytes) -> Resp {
        let now = Instant::now();
        let (op, id) = rest.split_once('/').unwrap_or((rest, ""));
        match (method, op) {
            (&Method::PUT, "create") => self.create_session(body, now),
            (&Method::PUT, "destroy") => {
                self.invalidate(id, now);
                json(StatusCode::OK, "true")
            }
            (&Method::PUT, "renew") => match self.sessions.live.get_mut(id) {
                Some(s) => {
                    s.expires = s.ttl.map(|t| now + t);
                    let s = s.clone();
                    let v = serde_json::json!([self.session_json(id, &s)]);
                    json_value(StatusCode::OK, &v)
                }
                None => response(
                    StatusCode::NOT_FOUND,
                    format!("Session id '{id}' not found"),
                ),
            },
            (&Method::GET, "info") => {
                let list: Vec<serde_json::Value> = self
                    .sessions
                    .live
                    .get(id)
                    .map(|s| self.session_json(id, s))
                    .into_iter()
                    .collect();
                self.with_index(json_value(StatusCode::OK, &serde_json::Value::Array(list)))
            }
            (&Method::GET, "list") => {
                let list: Vec<serde_json::Value> = self
                    .sessions
                    .live
                    .iter()
                    .map(|(id, s)| self.session_json(id, s))
                    .collect();
                self.with_index(json_value(StatusCode::OK, &serde_json::Value::Array(list)))
            }
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        }
    }

    fn with_index(&self, mut r: Resp) -> Resp {
        r.headers_mut()
            .insert(super::X_CONSUL_INDEX, http::HeaderValue::from(self.index));
        r
    }

    fn create_session(&mut self, body: &Bytes, now: Instant) -> Resp {
        let v: serde_json::Value = if body.is_empty() {
            serde_json::json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return bad(format!("Request decode failed: {e}")),
            }
        };
        let ttl = match v
            .get("TTL")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
        {
            None => None,
            Some(t) => match parse_consul_duration(t) {
                None => return bad(format!("Request decode failed: bad TTL {t:?}")),
                Some(d) if d.is_zero() => None,
                Some(d) if !(MIN_TTL..=MAX_TTL).contains(&d) => {
                    return bad(format!(
                        "Invalid Session TTL '{t}', must be between [10s=24h0m0s]"
                    ))
                }
                Some(d) => Some(d),
            },
        };
        let lock_delay = match lock_delay(v.get("LockDelay")) {
            Ok(d) if d <= MAX_LOCK_DELAY => d,
            Ok(_) => return bad("LockDelay must be between 0 and 60 seconds".into()),
            Err(e) => return bad(e),
        };
        let behavior = match v.get("Behavior").and_then(|b| b.as_str()) {
            None | Some("") | Some("release") => Behavior::Release,
            Some("delete") => Behavior::Delete,
            Some(other) => return bad(format!("Invalid Behavior setting '{other}'")),
        };
        self.sessions.created += 1;
        self.index += 1;
        let id = format!("5e551040-0000-4000-8000-{:012x}", self.sessions.created);
        self.sessions.live.insert(
            id.clone(),
            Session {
                name: v
                    .get("Name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("")
                    .to_string(),
                node: v
                    .get("Node")
                    .and_then(|n| n.as_str())
                    .unwrap_or("consul-standin")
                    .to_string(),
                lock_delay,
                behavior,
                ttl,
                expires: ttl.map(|t| now + t),
                create_index: self.index,
            },
        );
        json_value(StatusCode::OK, &serde_json::json!({ "ID": id }))
    }

    /// `PUT /v1/kv/<key>?acquire=<session>` or `?release=<session>` (cas already checked).
    pub(super) fn lock_put(&mut self, key: &str, body: &Bytes, query: &Query) -> Resp {
        let now = Instant::now();
        if let Some(id) = &query.acquire {
            if !self.sessions.live.contains_key(id) {
                return response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("invalid session \"{id}\""),
                );
            }
            let holder = self.kv.get(key).and_then(|e| e.session.clone());
            match holder {
                Some(h) if h == *id => {
                    // The holder updates the value and keeps its LockIndex.
                    self.put(key, body, query.flags);
                    return json(StatusCode::OK, "true");
                }
                Some(_) => return json(StatusCode::OK, "false"),
                None => {}
            }
            if self
                .sessions
                .lock_delay_until
                .get(key)
                .is_some_and(|until| now < *until)
            {
                return json(StatusCode::OK, "false");
            }
            self.sessions.lock_delay_until.remove(key);
            self.put(key, body, query.flags);
            if let Some(e) = self.kv.get_mut(key) {
                e.lock_index += 1;
                e.session = Some(id.clone());
            }
            return json(StatusCode::OK, "true");
        }
        if let Some(id) = &query.release {
            let held_by_it = self
                .kv
                .get(key)
                .is_some_and(|e| e.session.as_deref() == Some(id.as_str()));
            if !held_by_it {
                return json(StatusCode::OK, "false");
            }
            self.put(key, body, query.flags);
            if let Some(e) = self.kv.get_mut(key) {
                e.session = None;
            }
            return json(StatusCode::OK, "true");
        }
        json(StatusCode::OK, "false")
    }
}

impl super::ConsulStandIn {
    /// The session holding `key`'s lock, if any.
    pub fn lock_holder(&self, key: &str) -> Option<String> {
        self.shared
            .lock()
            .kv
            .get(key)
            .and_then(|e| e.session.clone())
    }

    /// How many times `key` was acquired (its `LockIndex`).
    pub fn lock_index(&self, key: &str) -> u64 {
        self.shared.lock().kv.get(key).map_or(0, |e| e.lock_index)
    }

    /// The ids of the live sessions.
    pub fn sessions(&self) -> Vec<String> {
        self.shared.lock().sessions.live.keys().cloned().collect()
    }

    /// The `ModifyIndex` of `key`.
    pub fn modify_index(&self, key: &str) -> Option<u64> {
        self.shared.lock().kv.get(key).map(|e| e.modify_index)
    }
}
