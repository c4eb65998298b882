//! One driver per fleet: a Consul session lock on `<prefix>lock`, following Consul's
//! leader-election guide (developer.hashicorp.com/consul/docs/dynamic-app-config/sessions/
//! application-leader-election):
//!
//! - every instance creates a session with a TTL (`Behavior: release`, a lock-delay) and renews
//!   it every TTL/2;
//! - an instance whose tick finds the lock key without a `Session` tries `PUT ?acquire=<id>`
//!   (the value is its instance name, which `/rollout` shows as the driver); `true` makes it the
//!   driver;
//! - the driver is the instance whose session the lock key names *in this tick's read*: it
//!   writes nothing unless that read says so, and its state writes are `?cas=` on top;
//! - a renew answered 404 means the session was invalidated (TTL expired, destroyed): its lock is
//!   gone, a new session is made and the instance competes again. After an invalidation, Consul
//!   refuses to hand the lock to anyone for the lock-delay, so a driver that was only slow learns
//!   of its loss before another one starts;
//! - on shutdown the driver releases the lock (no lock-delay) and destroys its session, so the
//!   next driver takes over within one tick.

use std::time::{Duration, Instant};

use log::{info, warn};

use super::consul_api::{ConsulApi, Entry, Put};

/// What this instance is, seen from one read of the lock key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The lock key names our session.
    Driver,
    /// Another session holds it; the value names that instance.
    Follower { holder: String },
    /// Nobody holds it.
    Free,
}

/// Reads the lock key's entry (pure).
pub fn role(lock: Option<&Entry>, ours: Option<&str>) -> Role {
    match lock.and_then(|e| e.session.as_deref()) {
        None => Role::Free,
        Some(s) if Some(s) == ours => Role::Driver,
        Some(_) => Role::Follower {
            holder: lock.map(Entry::text).unwrap_or_default(),
        },
    }
}

/// Is a renew due? Every TTL/2, as Consul's own lock helper does.
pub fn renew_due(last: Option<Instant>, ttl: Duration, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= ttl / 2)
}

/// This instance's session and its part in the election.
pub struct Lock {
    pub key: String,
    pub instance: String,
    pub ttl: Duration,
    pub lock_delay: Duration,
    session: Option<String>,
    renewed: Option<Instant>,
    /// The last session problem was logged (each is logged once).
    failing: bool,
}

impl Lock {
    pub fn new(key: String, instance: String, ttl: Duration, lock_delay: Duration) -> Self {
        Self {
            key,
            instance,
            ttl,
            lock_delay,
            session: None,
            renewed: None,
            failing: false,
        }
    }

    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// Makes sure a live session exists: creates one, or renews it when due. A session Consul
    /// no longer knows is replaced (its lock, if it held one, is gone already).
    pub async fn keep_session(&mut self, api: &ConsulApi) {
        let now = Instant::now();
        let result = match self.session.clone() {
            Some(id) if renew_due(self.renewed, self.ttl, now) => {
                match api.renew_session(&id).await {
                    Ok(true) => {
                        self.renewed = Some(now);
                        Ok(())
                    }
                    Ok(false) => {
                        warn!(
                        "rollout: session {id} expired or was destroyed; its lock (if held) is \
                         gone; creating a new one"
                    );
                        self.session = None;
                        self.create(api, now).await
                    }
                    Err(e) => Err(format!("renewing session {id}: {e}")),
                }
            }
            Some(_) => Ok(()),
            None => self.create(api, now).await,
        };
        match result {
            Ok(()) if self.failing => {
                info!("rollout: Consul sessions work again");
                self.failing = false;
            }
            Ok(()) => {}
            Err(e) => {
                if !self.failing {
                    warn!("rollout: {e}; not driving until this works");
                    self.failing = true;
                }
            }
        }
    }

    async fn create(&mut self, api: &ConsulApi, now: Instant) -> Result<(), String> {
        let name = format!("graysplit rollout {}", self.instance);
        let id = api
            .create_session(&name, self.ttl, self.lock_delay)
            .await
            .map_err(|e| format!("creating a session: {e}"))?;
        info!("rollout: session {id} created (TTL {:?})", self.ttl);
        self.session = Some(id);
        self.renewed = Some(now);
        Ok(())
    }

    /// This tick's role from the lock key as just read; when nobody holds it, tries to acquire it.
    pub async fn elect(&mut self, api: &ConsulApi, lock: Option<&Entry>) -> Role {
        let current = role(lock, self.session.as_deref());
        let (Role::Free, Some(id)) = (&current, self.session.clone()) else {
            return current;
        };
        let put = Put {
            acquire: Some(&id),
            ..Put::default()
        };
        match api.put(&self.key, self.instance.as_bytes(), put).await {
            Ok(true) => {
                info!(
                    "rollout: this instance ({}) drives the plan now (lock {})",
                    self.instance, self.key
                );
                Role::Driver
            }
            // Another instance was faster, or the lock-delay of a lost session is running.
            Ok(false) => Role::Free,
            Err(e) => {
                warn!("rollout: acquiring {}: {e}", self.key);
                Role::Free
            }
        }
    }

    /// Shutdown: release the lock if held (no lock-delay for the next driver) and destroy the
    /// session.
    pub async fn give_up(&mut self, api: &ConsulApi, holding: bool) {
        let Some(id) = self.session.take() else {
            return;
        };
        if holding {
            let put = Put {
                release: Some(&id),
                ..Put::default()
            };
            match api.put(&self.key, self.instance.as_bytes(), put).await {
                Ok(_) => info!("rollout: lock {} released", self.key),
                Err(e) => warn!("rollout: releasing {}: {e}", self.key),
            }
        }
        if let Err(e) = api.destroy_session(&id).await {
            warn!("rollout: destroying session {id}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(session: Option<&str>, value: &str) -> Entry {
        Entry {
            key: "graysplit/rollout/lock".into(),
            value: value.as_bytes().to_vec(),
            modify_index: 4,
            session: session.map(str::to_string),
        }
    }

    #[test]
    fn the_lock_key_names_the_driver() {
        assert_eq!(role(None, Some("a")), Role::Free);
        assert_eq!(role(Some(&entry(None, "web1")), Some("a")), Role::Free);
        assert_eq!(
            role(Some(&entry(Some("a"), "web1")), Some("a")),
            Role::Driver
        );
        assert_eq!(
            role(Some(&entry(Some("b"), "web2")), Some("a")),
            Role::Follower {
                holder: "web2".into()
            }
        );
        assert_eq!(
            role(Some(&entry(Some("b"), "web2")), None),
            Role::Follower {
                holder: "web2".into()
            },
            "without a session of our own we only follow"
        );
    }

    #[test]
    fn renewals_every_half_ttl() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        assert!(renew_due(None, ttl, t0));
        assert!(!renew_due(Some(t0), ttl, t0 + Duration::from_secs(4)));
        assert!(renew_due(Some(t0), ttl, t0 + Duration::from_secs(5)));
    }
}
