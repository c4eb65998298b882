//! graysplit: a gray (canary) release proxy for web frontends, built on Pingora.
//!
//! Module map: [`config`] loads and validates `graysplit.toml`; [`upstream`] holds pools, their
//! sources (pools file, Consul), selection and health; [`proxy`] is the request path; [`pin`]
//! keeps a page and its assets on one build; [`rollout`] drives a rollout plan (fleet-wide
//! analysis, rollback, mirroring, the simulator); [`admin`] is the loopback admin listener; [`app`]
//! assembles them into a Pingora server; [`demo`] is the embedded default; [`static_site`] serves
//! frontend builds for the demo and tests. [`limits`] bounds what slow and greedy clients cost
//! (connections, head deadline, body size).

pub mod access_log;
pub mod admin;
pub mod app;
pub mod config;
pub mod cookies;
pub mod demo;
pub mod gray;
pub mod header_names;
pub mod http_cache;
pub mod ip_text;
pub mod lifecycle;
pub mod limits;
pub mod listeners;
pub mod metrics;
pub mod per_core;
pub mod pin;
pub mod proxy;
pub mod proxy_protocol;
pub mod rate_limited_log;
pub mod rollout;
pub mod routes;
pub mod secret;
pub mod static_site;
pub mod status_page;
pub mod tls;
pub mod upstream;
pub mod watched_file;
