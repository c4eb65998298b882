//! The gray decision and its inputs: client IP behind trusted proxies, user id, whitelists
//! (Redis and file), switches, rules, percent, and the headers each decision sends upstream.
//!
//! [`decision`] is pure; this module gathers the inputs (the I/O edge) and keeps runtime state.

pub mod bounded_cache;
pub mod client_ip;
pub mod consul_switches;
pub mod decision;
pub mod explain;
pub mod identity;
pub mod jwt;
pub mod redis_whitelist;
pub mod rules;
pub mod salt;
pub mod switches;
pub mod visitor;
pub mod whitelist;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use log::{info, warn};

use crate::watched_file::WatchedFile;
use client_ip::ClientIpHeader;
use decision::{Decision, Hits, Switches, Target};
use identity::Identity;
use jwt::TokenVerifier;
use redis_whitelist::{RedisSettings, RedisWhitelist};
use rules::Rule;
use whitelist::Whitelist;

/// Validated `[gray]` settings.
#[derive(Debug, Clone, Default)]
pub struct GraySettings {
    pub defaults: Switches,
    pub trusted_proxies: Vec<IpNet>,
    pub client_ip_header: Option<ClientIpHeader>,
    pub user_header: Option<HeaderName>,
    pub user_cookie: Option<String>,
    pub rules: Vec<Rule>,
    /// Headers set on proxied requests, by pool name.
    pub headers: HashMap<String, Vec<(HeaderName, HeaderValue)>>,
    /// `[[routes]]`: path prefixes with a pass-through pool (e.g. `/api/` → `gateway`) and/or
    /// their own upstream timeouts, first match wins.
    pub routes: Vec<crate::routes::Route>,
    pub whitelist_file: Option<PathBuf>,
    pub switches_file: Option<PathBuf>,
    /// KV folder holding `enabled`, `all`, `percent` (e.g. `graysplit/gray/`).
    pub consul_prefix: Option<String>,
    pub redis: Option<RedisSettings>,
    /// The visitor id cookie: the percent bucket of anonymous clients (`[visitor]`).
    pub visitor: visitor::VisitorSettings,
    /// `[gray.jwt]`: user ids from verified tokens.
    pub jwt: Option<jwt::JwtSettings>,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    pub user: Option<String>,
}

pub struct GrayEngine {
    pub settings: GraySettings,
    /// Every header name any pool sets: client-sent copies are removed before ours are added.
    strip: Vec<HeaderName>,
    switches: ArcSwap<Switches>,
    /// Where the switches came from last: "config", "switches file" or "Consul".
    switches_source: ArcSwap<&'static str>,
    file_whitelist: ArcSwap<Whitelist>,
    whitelist_watch: Option<WatchedFile>,
    switches_watch: Option<WatchedFile>,
    pub redis: Option<RedisWhitelist>,
    /// `[gray.jwt]`: verified user ids.
    pub tokens: Option<TokenVerifier>,
}

impl GrayEngine {
    pub fn new(settings: GraySettings) -> Result<Self, String> {
        let redis = settings
            .redis
            .clone()
            .map(RedisWhitelist::new)
            .transpose()
            .map_err(|e| format!("gray.redis.url: {e}"))?;
        let mut strip: Vec<HeaderName> = settings
            .headers
            .values()
            .flat_map(|h| h.iter().map(|(n, _)| n.clone()))
            .collect();
        strip.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        strip.dedup();
        let engine = Self {
            strip,
            switches: ArcSwap::from_pointee(settings.defaults),
            switches_source: ArcSwap::from_pointee("config"),
            file_whitelist: ArcSwap::from_pointee(Whitelist::default()),
            whitelist_watch: settings
                .whitelist_file
                .clone()
                .map(|p| WatchedFile::new(p, "whitelist")),
            switches_watch: settings
                .switches_file
                .clone()
                .map(|p| WatchedFile::new(p, "switches")),
            redis,
            tokens: settings.jwt.clone().map(TokenVerifier::new),
            settings,
        };
        engine.poll_files();
        Ok(engine)
    }

    /// The client behind this request (trusted proxies honoured) and its user id, if any.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> Client {
        self.identify(peer, headers).0
    }

    /// As [`GrayEngine::client`], with where the user id came from ([`identity`]).
    pub fn identify(&self, peer: IpAddr, headers: &HeaderMap) -> (Client, Identity) {
        let trusted = &self.settings.trusted_proxies;
        let peer = crate::proxy::forwarded::canonical_ip(peer);
        let ip = match self.settings.client_ip_header {
            Some(which) => client_ip::resolve_headers(peer, headers, trusted, which),
            None => peer,
        };
        let peer_trusted = client_ip::is_trusted(peer, trusted);
        let (user, identity) =
            identity::user(&self.settings, self.tokens.as_ref(), peer_trusted, headers);
        (Client { ip, user }, identity)
    }

    pub fn switches(&self) -> Switches {
        **self.switches.load()
    }

    /// Where [`GrayEngine::switches`] came from: "config" (the defaults), "switches file" or
    /// "Consul" (keys absent there mean the config default).
    pub fn switches_source(&self) -> &'static str {
        **self.switches_source.load()
    }

    /// Replaces the runtime switches (from Consul or the switches file).
    pub fn set_switches(&self, sw: Switches, source: &'static str) {
        if **self.switches_source.load() != source {
            self.switches_source.store(Arc::new(source));
        }
        if **self.switches.load() != sw {
            info!(
                "gray switches from {source}: enabled={} all={} percent={} salt={}",
                sw.enabled,
                sw.all,
                f64::from(sw.percent_bp) / 100.0,
                sw.salt.label()
            );
            self.switches.store(Arc::new(sw));
        }
    }

    /// Decides one request. `pin` is the pinned pool of a valid pin cookie, if any.
    pub async fn decide(
        &self,
        client: &Client,
        headers: &HeaderMap,
        query: Option<&str>,
        is_asset: bool,
        pin: Option<&Target>,
    ) -> Decision {
        let sw = self.switches();
        let rule = rules::first_match(&self.settings.rules, headers, query);
        if let Some(d) = decision::before_lookup(&sw, rule, is_asset, pin) {
            return d;
        }
        let hits = self.hits(client).await;
        // The percent bucket: the user id, else the visitor id, else the IP (salted: salt.rs).
        // Only a partial rollout needs it (0 % and 100 % decide alike for every bucket).
        let partial = (1..10_000).contains(&sw.percent_bp);
        let visitor = match (&client.user, self.settings.visitor.cookie.as_deref()) {
            (None, Some(name)) if partial => visitor::read(headers, name),
            _ => None,
        };
        let bucket = match (&client.user, visitor) {
            _ if !partial => 0,
            (Some(u), _) => sw.salt.bucket(u.as_bytes()),
            (None, Some(v)) => sw.salt.bucket(v.as_bytes()),
            (None, None) => sw.salt.bucket(client.ip.to_string().as_bytes()),
        };
        let mut d = decision::after_lookup(&sw, hits, bucket);
        // An anonymous client reaching the percent step for the first time gets a visitor id on
        // the side its IP gave it (visitor.rs); only while a rollout is partial.
        if partial
            && client.user.is_none()
            && visitor.is_none()
            && self.settings.visitor.cookie.is_some()
            && matches!(d.reason, "percent" | "default")
        {
            d.visitor = Some(visitor::mint(
                &sw.salt,
                d.target == Target::Gray,
                sw.percent_bp,
            ));
        }
        d
    }

    async fn hits(&self, client: &Client) -> Hits {
        let local = self
            .file_whitelist
            .load()
            .hits(client.ip, client.user.as_deref());
        if local.ip || local.cidr || local.user {
            return local;
        }
        match &self.redis {
            Some(r) => r.lookup(client.ip, client.user.as_deref()).await,
            None => local,
        }
    }

    /// The pass-through pool for a path, if the route that matches names one.
    pub fn route(&self, path: &str) -> Option<&Arc<str>> {
        self.route_for(path)?.pool.as_ref()
    }

    /// The route that applies to a path (its pool and timeouts), if any.
    pub fn route_for(&self, path: &str) -> Option<&crate::routes::Route> {
        crate::routes::matching(&self.settings.routes, path)
    }

    /// Header names to remove from the client's request before adding ours.
    pub fn strip(&self) -> &[HeaderName] {
        &self.strip
    }

    /// Headers to set for a decision that went to `pool`.
    pub fn headers_for(&self, pool: &str) -> &[(HeaderName, HeaderValue)] {
        self.settings
            .headers
            .get(pool)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Re-reads the whitelist, switches and JWKS files if they changed.
    pub fn poll_files(&self) {
        if let Some(t) = &self.tokens {
            t.poll();
        }
        if let Some(text) = self.whitelist_watch.as_ref().and_then(WatchedFile::changed) {
            let (w, errors) = whitelist::parse(&text);
            for e in &errors {
                warn!("whitelist: {e}; line skipped");
            }
            info!(
                "whitelist: {} IP(s), {} CIDR(s), {} user(s)",
                w.ips.len(),
                w.cidrs.len(),
                w.users.len()
            );
            self.file_whitelist.store(Arc::new(w));
        }
        if let Some(text) = self.switches_watch.as_ref().and_then(WatchedFile::changed) {
            match switches::parse(&text, self.settings.defaults) {
                Ok(sw) => self.set_switches(sw, "switches file"),
                Err(e) => warn!("switches file: {e}; switches unchanged"),
            }
        }
    }
}

/// Names of reasons, for metrics and docs.
pub const REASONS: &[&str] = &[
    "switch_off",
    "all_gray",
    "rule",
    "sticky",
    "ip",
    "cidr",
    "user",
    "percent",
    "default",
    "gray_unavailable",
    "build_gone",
    "route",
    "body_too_large",
];

/// Background upkeep: re-read the whitelist and switches files (every 250 ms) and keep the Redis
/// connection and CIDR set fresh (every second).
pub struct GrayUpkeep {
    pub engine: Arc<GrayEngine>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for GrayUpkeep {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.engine.poll_files();
            if n.is_multiple_of(4) {
                if let Some(r) = &self.engine.redis {
                    r.maintain().await;
                }
            }
            n += 1;
        }
    }
}
