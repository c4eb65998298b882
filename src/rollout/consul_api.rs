//! The Consul calls the rollout needs beyond the pools' blocking queries: plain KV reads with
//! their metadata (`ModifyIndex`, `Session`), writes with `?cas=`, `?acquire=` and `?release=`,
//! and sessions (`create`, `renew`, `destroy`). Each call tries the configured agents in turn.
//!
//! API references: developer.hashicorp.com/consul/api-docs/kv (read, create/update with cas,
//! acquire, release) and developer.hashicorp.com/consul/api-docs/session.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use crate::config::{duration, ConsulConfig, Secret};
use crate::upstream::consul::chain;

/// A KV answer larger than this is refused (window records of a large fleet stay far below).
const MAX_BODY: usize = 16 << 20;

/// One KV entry with the metadata the rollout uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    pub modify_index: u64,
    /// The session holding the key's lock, if any.
    pub session: Option<String>,
}

impl Entry {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawEntry {
    key: String,
    value: Option<String>,
    #[serde(default)]
    modify_index: u64,
    #[serde(default)]
    session: Option<String>,
}

/// Options of a KV write.
#[derive(Debug, Clone, Copy, Default)]
pub struct Put<'a> {
    /// Check-and-set: 0 = only if the key does not exist, else only if its ModifyIndex is this.
    pub cas: Option<u64>,
    pub acquire: Option<&'a str>,
    pub release: Option<&'a str>,
}

pub struct ConsulApi {
    http: reqwest::Client,
    addresses: Vec<String>,
    token: Option<Secret>,
    /// The address that answered last; calls start there.
    current: AtomicUsize,
}

/// A session id goes into URLs: Consul's are UUIDs.
pub fn valid_session_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// A Consul error body as a short, printable quote.
fn quote(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

impl ConsulApi {
    /// `timeout` bounds each call (the rollout's calls are short: no blocking queries).
    pub fn new(cfg: &ConsulConfig, timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .no_proxy()
            .user_agent(concat!("graysplit/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the Consul HTTP client: {}", chain(&e)))?;
        Ok(Self {
            http,
            addresses: cfg.addresses.clone(),
            token: cfg.token.clone(),
            current: AtomicUsize::new(0),
        })
    }

    /// One call, on each address in turn until one answers without a transport error or a 5xx.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>), String> {
        self.call_indexed(method, path, body, None)
            .await
            .map(|(status, _, body)| (status, body))
    }

    /// As [`ConsulApi::call`], with the answer's `X-Consul-Index` and an optional timeout.
    async fn call_indexed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<(u16, Option<i64>, Vec<u8>), String> {
        if self.addresses.is_empty() {
            return Err("no Consul address configured".into());
        }
        let start = self.current.load(Ordering::Relaxed);
        let mut problems = Vec::new();
        for k in 0..self.addresses.len() {
            let i = (start + k) % self.addresses.len();
            let address = &self.addresses[i];
            match self
                .call_one(&method, address, path, body.clone(), timeout)
                .await
            {
                Ok((status, index, body)) if status < 500 => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok((status, index, body));
                }
                Ok((status, _, body)) => {
                    problems.push(format!("{address}: answered {status}: {:?}", quote(&body)))
                }
                Err(e) => problems.push(format!("{address}: {e}")),
            }
        }
        self.current
            .store((start + 1) % self.addresses.len(), Ordering::Relaxed);
        Err(problems.join("; "))
    }

    async fn call_one(
        &self,
        method: &reqwest::Method,
        address: &str,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<(u16, Option<i64>, Vec<u8>), String> {
        let mut req = self
            .http
            .request(method.clone(), format!("{address}{path}"));
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(token) = &self.token {
            let mut value = http::HeaderValue::from_str(token.expose())
                .map_err(|_| "the Consul token is not a valid header value".to_string())?;
            value.set_sensitive(true);
            req = req.header("X-Consul-Token", value);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let mut resp = req.send().await.map_err(|e| chain(&e))?;
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok());
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| chain(&e))? {
            if out.len() + chunk.len() > MAX_BODY {
                return Err(format!("answer is larger than {} MiB", MAX_BODY >> 20));
            }
            out.extend_from_slice(&chunk);
        }
        Ok((status, index, out))
    }

    fn refused(what: &str, status: u16, body: &[u8]) -> String {
        let hint = if status == 403 {
            " (check the token's ACL policy: key_prefix write on the rollout prefix and the \
             gray switches, session write)"
        } else {
            ""
        };
        format!("{what}: Consul answered {status}{hint}: {:?}", quote(body))
    }

    /// Every key under `prefix` (empty when there is none).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Entry>, String> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/kv/{prefix}?recurse"),
                None,
            )
            .await?;
        match status {
            200 => parse_entries(&body),
            404 => Ok(Vec::new()),
            _ => Err(Self::refused(
                &format!("GET {prefix}?recurse"),
                status,
                &body,
            )),
        }
    }

    /// A blocking query on `prefix` (Consul's "Blocking Queries": `index=0` answers at once,
    /// otherwise Consul holds the query until something under the prefix changes or `wait`
    /// passes). Returns the entries and the answer's `X-Consul-Index`.
    pub async fn watch(
        &self,
        prefix: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(Vec<Entry>, i64), String> {
        let path = format!(
            "/v1/kv/{prefix}?recurse&index={index}&wait={}",
            duration::format(wait)
        );
        // Consul may hold a query for wait + wait/16.
        let timeout = wait + wait / 16 + Duration::from_secs(3);
        let (status, idx, body) = self
            .call_indexed(reqwest::Method::GET, &path, None, Some(timeout))
            .await?;
        let idx = idx.ok_or_else(|| format!("GET {prefix}: no numeric X-Consul-Index"))?;
        match status {
            200 => Ok((parse_entries(&body)?, idx)),
            404 => Ok((Vec::new(), idx)),
            _ => Err(Self::refused(
                &format!("GET {prefix}?recurse"),
                status,
                &body,
            )),
        }
    }

    /// Writes `key`; the answer is Consul's `true` / `false` (a failed cas, acquire or release).
    pub async fn put(&self, key: &str, value: &[u8], opt: Put<'_>) -> Result<bool, String> {
        let mut path = format!("/v1/kv/{key}");
        let mut sep = '?';
        let mut param = |name: &str, v: &str| {
            path.push(sep);
            path.push_str(name);
            path.push('=');
            path.push_str(v);
            sep = '&';
        };
        if let Some(cas) = opt.cas {
            param("cas", &cas.to_string());
        }
        for (name, id) in [("acquire", opt.acquire), ("release", opt.release)] {
            if let Some(id) = id {
                if !valid_session_id(id) {
                    return Err(format!("{id:?} is not a session id"));
                }
                param(name, id);
            }
        }
        let (status, body) = self
            .call(reqwest::Method::PUT, &path, Some(value.to_vec()))
            .await?;
        if status != 200 {
            return Err(Self::refused(&format!("PUT {key}"), status, &body));
        }
        match String::from_utf8_lossy(&body).trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(format!(
                "PUT {key}: unexpected answer {:?}",
                quote(other.as_bytes())
            )),
        }
    }

    /// `PUT /v1/session/create`: a session with a TTL and a lock-delay whose locks are released
    /// when it is invalidated; returns its id.
    pub async fn create_session(
        &self,
        name: &str,
        ttl: Duration,
        lock_delay: Duration,
    ) -> Result<String, String> {
        let body = serde_json::json!({
            "Name": name,
            "TTL": duration::format(ttl),
            "LockDelay": duration::format(lock_delay),
            "Behavior": "release",
        });
        let (status, resp) = self
            .call(
                reqwest::Method::PUT,
                "/v1/session/create",
                Some(body.to_string().into_bytes()),
            )
            .await?;
        if status != 200 {
            return Err(Self::refused("PUT session/create", status, &resp));
        }
        #[derive(Deserialize)]
        struct Created {
            #[serde(rename = "ID")]
            id: String,
        }
        let created: Created = serde_json::from_slice(&resp)
            .map_err(|e| format!("session/create: unexpected answer ({e})"))?;
        if !valid_session_id(&created.id) {
            return Err(format!(
                "session/create: {:?} is not a session id",
                created.id
            ));
        }
        Ok(created.id)
    }

    /// `PUT /v1/session/renew/<id>`: `false` when the session no longer exists (expired or
    /// destroyed: its locks are gone).
    pub async fn renew_session(&self, id: &str) -> Result<bool, String> {
        if !valid_session_id(id) {
            return Err(format!("{id:?} is not a session id"));
        }
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/session/renew/{id}"),
                None,
            )
            .await?;
        match status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(Self::refused("PUT session/renew", status, &body)),
        }
    }

    /// `PUT /v1/session/destroy/<id>` (idempotent).
    pub async fn destroy_session(&self, id: &str) -> Result<(), String> {
        if !valid_session_id(id) {
            return Err(format!("{id:?} is not a session id"));
        }
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/session/destroy/{id}"),
                None,
            )
            .await?;
        if status == 200 {
            Ok(())
        } else {
            Err(Self::refused("PUT session/destroy", status, &body))
        }
    }
}

/// A KV read's JSON array.
pub fn parse_entries(body: &[u8]) -> Result<Vec<Entry>, String> {
    let raw: Vec<RawEntry> = serde_json::from_slice(body)
        .map_err(|e| format!("Consul KV answer is not the expected JSON ({e})"))?;
    raw.into_iter()
        .map(|r| {
            let value = match r.value {
                None => Vec::new(),
                Some(v) => base64::engine::general_purpose::STANDARD
                    .decode(v.as_bytes())
                    .map_err(|_| format!("{}: Value is not base64", r.key))?,
            };
            Ok(Entry {
                key: r.key,
                value,
                modify_index: r.modify_index,
                session: r.session.filter(|s| !s.is_empty()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_value_index_and_lock_holder() {
        let body = br#"[{"LockIndex":1,"Key":"r/lock","Flags":0,"Value":"d2ViMQ==","Session":"adf4238a-882b-9ddc-4a9d-5b6758e4159e","CreateIndex":5,"ModifyIndex":9},
                        {"LockIndex":0,"Key":"r/plan","Flags":0,"Value":null,"CreateIndex":3,"ModifyIndex":3}]"#;
        let e = parse_entries(body).unwrap();
        assert_eq!(e[0].text(), "web1");
        assert_eq!(e[0].modify_index, 9);
        assert_eq!(
            e[0].session.as_deref(),
            Some("adf4238a-882b-9ddc-4a9d-5b6758e4159e")
        );
        assert_eq!((e[1].value.len(), e[1].session.as_deref()), (0, None));
        assert!(parse_entries(b"not json").is_err());
        assert!(parse_entries(br#"[{"Key":"k","Value":"@@"}]"#).is_err());
    }

    #[test]
    fn session_ids_are_checked_before_they_reach_a_url() {
        assert!(valid_session_id("adf4238a-882b-9ddc-4a9d-5b6758e4159e"));
        assert!(!valid_session_id("../kv/x"));
        assert!(!valid_session_id(""));
        assert!(!valid_session_id("a&release=b"));
    }
}
