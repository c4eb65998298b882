//! Progressive delivery: a rollout plan drives the gray percent by itself, judges gray against
//! base over the same windows, fleet-wide, and rolls back on its own.
//!
//! ```text
//!  request path ─► windows::Table (per pool/build counters)   mirror::Gate (copies of base pages)
//!                        │ published every second                     │
//!                        ▼                                            ▼
//!  Consul <prefix>windows/<instance> ──► driver (one per fleet: lock) ─► judge ─► driver state
//!                                               │ writes <gray prefix>percent, <prefix>state
//!                                               ▼
//!                      every instance follows the percent switch (and the mirror share)
//! ```
//!
//! Pure parts: [`plan`] (format, validation), [`judge`] (statistics), [`driver`] (the state
//! machine), [`windows`] (counters and window sums), [`tick`] (one window's judgement),
//! [`simulate`]'s tally. I/O at the edges: [`fleet`] (Consul mode: sessions, lock, KV),
//! [`local`] (a single instance's plan and state files), [`mirror`]'s sender, [`consul_api`].

pub mod consul_api;
pub mod driver;
pub mod fleet;
pub mod judge;
pub mod local;
pub mod lock;
pub mod metrics;
pub mod mirror;
pub mod plan;
pub mod plan_file;
pub mod simulate;
pub mod status;
pub mod tick;
pub mod windows;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use log::{info, warn};
use parking_lot::Mutex;
use pingora::http::RequestHeader;
use tokio::sync::mpsc;

use crate::config::{ConfigError, ConsulConfig};
use driver::{Command, Event, RolloutState};
use metrics::RolloutMetrics;
use windows::{Outcome, Published, Table};

/// Where the plan comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// No rollout (the default).
    Off,
    /// A fleet sharing Consul: plan, commands and state under `prefix`; the step is written to
    /// `<switches_prefix>percent` (the `gray.consul_prefix` switch every instance follows).
    Consul {
        prefix: String,
        switches_prefix: String,
    },
    /// A single instance: the plan in a file, the state in a file next to it, the percent set in
    /// memory.
    File { plan: PathBuf, state: PathBuf },
}

/// Validated `[rollout]` settings.
#[derive(Debug, Clone)]
pub struct RolloutSettings {
    pub source: Source,
    /// This instance's name in Consul and on `/rollout` (default: host name and admin port).
    pub instance: Option<String>,
    /// How often the driver looks at commands and windows.
    pub tick: Duration,
    /// How often an instance publishes its window counters.
    pub publish_interval: Duration,
    pub session_ttl: Duration,
    pub lock_delay: Duration,
    pub mirror_max_in_flight: usize,
    pub mirror_timeout: Duration,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        Self {
            source: Source::Off,
            instance: None,
            tick: Duration::from_secs(1),
            publish_interval: Duration::from_secs(1),
            session_ttl: Duration::from_secs(10),
            lock_delay: Duration::from_secs(15),
            mirror_max_in_flight: 32,
            mirror_timeout: Duration::from_secs(1),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The default instance name: the host name and the admin port (unique per machine).
pub fn default_instance(admin_port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.bytes().all(valid_instance_byte))
        .unwrap_or_else(|| "graysplit".to_string());
    format!("{host}:{admin_port}")
}

/// Instance names go into Consul keys: letters, digits, `.`, `_`, `-`, `:`.
pub fn valid_instance_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':')
}

/// What `/rollout` shows besides the state (updated by the running loop).
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The plan in force and where it came from.
    pub plan: Option<(plan::Plan, String)>,
    /// Problems of the last plan read (the plan in force, if any, is the previous good one).
    pub plan_errors: Vec<ConfigError>,
    pub state: Option<RolloutState>,
    /// This instance drives the plan.
    pub driving: bool,
    /// The driver's instance name, as the lock key says.
    pub holder: Option<String>,
    /// The open window's counts so far (driver only).
    pub open_window: Option<serde_json::Value>,
    /// Instances whose counters the driver reads, with the time of their last record.
    pub instances: Vec<(String, u64)>,
    /// The last error talking to Consul or writing the state file.
    pub last_error: Option<String>,
}

/// One request as the proxy's `logging` phase saw it.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    pub pool: &'a str,
    pub build: &'a str,
    pub outcome: Outcome,
    /// A navigation (not an asset), not sent by a pass-through route.
    pub page: bool,
    pub routed: bool,
    pub request: &'a RequestHeader,
}

/// The rollout's shared state: counters the request path writes, the mirror gate, the view the
/// admin listener reads, the command channel of the file mode.
pub struct Rollout {
    pub settings: RolloutSettings,
    pub instance: String,
    pub real: Arc<Table>,
    pub mirrored: Arc<Table>,
    pub gate: Arc<mirror::Gate>,
    pub metrics: Arc<RolloutMetrics>,
    pub consul: Option<Arc<consul_api::ConsulApi>>,
    boot: String,
    started_ms: u64,
    view: ArcSwap<View>,
    commands: mpsc::UnboundedSender<Command>,
    pub(crate) command_rx: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    pub(crate) mirror_rx: Mutex<Option<mpsc::UnboundedReceiver<mirror::Job>>>,
}

impl std::fmt::Debug for Rollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollout")
            .field("source", &self.settings.source)
            .field("instance", &self.instance)
            .finish()
    }
}

impl Rollout {
    /// No rollout: the request path's call returns at once (tests, and configs without
    /// `[rollout]` use [`Rollout::new`] with [`Source::Off`] the same way).
    pub fn off() -> Arc<Rollout> {
        let registry = prometheus::Registry::new();
        match Rollout::new(RolloutSettings::default(), "off".into(), &registry, None) {
            Ok(r) => r,
            // Only metric registration can fail, and this registry is empty.
            Err(e) => unreachable!("an empty registry refused the rollout metrics: {e}"),
        }
    }

    /// From the validated config; the instance name defaults to [`default_instance`].
    pub fn for_config(
        config: &crate::config::Config,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Rollout>, String> {
        let instance = config
            .rollout
            .instance
            .clone()
            .unwrap_or_else(|| default_instance(config.server.admin_listen.port()));
        Rollout::new(
            config.rollout.clone(),
            instance,
            registry,
            Some(&config.consul),
        )
    }

    /// Registers the metrics in `registry`; `consul` is used in Consul mode only.
    pub fn new(
        settings: RolloutSettings,
        instance: String,
        registry: &prometheus::Registry,
        consul: Option<&ConsulConfig>,
    ) -> Result<Arc<Rollout>, String> {
        let metrics = Arc::new(
            RolloutMetrics::new().map_err(|e| format!("cannot set up rollout metrics: {e}"))?,
        );
        metrics
            .register(registry)
            .map_err(|e| format!("cannot register rollout metrics: {e}"))?;
        metrics.position(None);
        let consul = match (&settings.source, consul) {
            (Source::Consul { .. }, Some(cfg)) => Some(Arc::new(consul_api::ConsulApi::new(
                cfg,
                Duration::from_secs(5).max(settings.tick),
            )?)),
            _ => None,
        };
        let (gate, mirror_rx) = mirror::Gate::new(settings.mirror_max_in_flight, metrics.clone());
        let (commands, command_rx) = mpsc::unbounded_channel();
        let boot = format!("{:016x}", rand::random::<u64>());
        Ok(Arc::new(Rollout {
            settings,
            instance,
            real: Arc::new(Table::default()),
            mirrored: Arc::new(Table::default()),
            gate: Arc::new(gate),
            metrics,
            consul,
            boot,
            started_ms: now_ms(),
            view: ArcSwap::from_pointee(View::default()),
            commands,
            command_rx: Mutex::new(Some(command_rx)),
            mirror_rx: Mutex::new(Some(mirror_rx)),
        }))
    }

    /// A rollout source is configured.
    pub fn enabled(&self) -> bool {
        self.settings.source != Source::Off
    }

    /// The request path's one call (from `logging`): counts the request, offers a mirror copy.
    pub fn served(&self, s: &Served<'_>) {
        if !self.enabled() {
            return;
        }
        // A client that left before any answer says nothing about the build.
        if s.outcome.status == 0 && !s.outcome.upstream_error {
            return;
        }
        self.real.record(s.pool, s.build, &s.outcome);
        if s.page && !s.routed && s.pool == crate::config::BASE_POOL && s.outcome.status != 0 {
            self.gate.offer(s.request);
        }
    }

    /// This instance's counters as published.
    pub fn published(&self) -> Published {
        Published {
            v: 1,
            instance: self.instance.clone(),
            boot: self.boot.clone(),
            started_ms: self.started_ms,
            at_ms: now_ms(),
            real: self.real.snapshot(),
            mirror: self.mirrored.snapshot(),
        }
    }

    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    pub(crate) fn set_view(&self, v: View) {
        self.view.store(Arc::new(v));
    }

    /// An operator command from the admin listener: in Consul mode it is written to
    /// `<prefix>control` (the driver, wherever it runs, picks it up); in file mode it goes to
    /// this instance's driver.
    pub async fn command(&self, cmd: Command) -> Result<String, String> {
        match (&self.settings.source, &self.consul) {
            (Source::Consul { prefix, .. }, Some(api)) => {
                let key = format!("{prefix}control");
                api.put(&key, cmd.label().as_bytes(), consul_api::Put::default())
                    .await
                    .inspect_err(|_| self.metrics.consul_error("write"))?;
                Ok(format!("{} written to Consul {key}", cmd.label()))
            }
            (Source::File { .. }, _) => {
                self.commands
                    .send(cmd)
                    .map_err(|_| "the rollout driver is not running".to_string())?;
                Ok(format!("{} sent to the driver", cmd.label()))
            }
            _ => Err("no rollout is configured ([rollout] in the config)".into()),
        }
    }
}

/// Logs a driver's events: a rollback as a warning, everything else as info.
pub fn log_events(events: &[Event]) {
    for e in events {
        if e.kind == "rollback" {
            warn!("rollout: {}", e.message);
        } else {
            info!("rollout: {}", e.message);
        }
    }
}

/// Adds the rollout's background services to `server` (none without `[rollout]`): the driver
/// (or follower) and the mirror sender.
pub fn add_services(
    rollout: &Arc<Rollout>,
    gray: &Arc<crate::gray::GrayEngine>,
    pools: &crate::upstream::Pools,
    server: &mut pingora::server::Server,
) {
    use pingora::services::background::background_service;
    if !rollout.enabled() {
        return;
    }
    server.add_service(background_service(
        "rollout",
        RolloutService {
            rollout: rollout.clone(),
            gray: gray.clone(),
        },
    ));
    let sender = mirror::Sender {
        gate: rollout.gate.clone(),
        jobs: Mutex::new(rollout.mirror_rx.lock().take()),
        gray: pools.get("gray").cloned(),
        counts: rollout.mirrored.clone(),
        metrics: rollout.metrics.clone(),
        timeout: rollout.settings.mirror_timeout,
    };
    server.add_service(background_service("mirror", MirrorService { sender }));
}

/// The background service running the rollout of this instance.
pub struct RolloutService {
    pub rollout: Arc<Rollout>,
    pub gray: Arc<crate::gray::GrayEngine>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for RolloutService {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        match self.rollout.settings.source.clone() {
            Source::Off => {}
            Source::Consul {
                prefix,
                switches_prefix,
            } => {
                fleet::Fleet::new(
                    self.rollout.clone(),
                    self.gray.clone(),
                    prefix,
                    switches_prefix,
                )
                .run(shutdown)
                .await
            }
            Source::File { plan, state } => {
                local::Local::new(self.rollout.clone(), self.gray.clone(), plan, state)
                    .run(shutdown)
                    .await
            }
        }
    }
}

/// The background service sending mirrored copies.
pub struct MirrorService {
    pub sender: mirror::Sender,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for MirrorService {
    async fn start(&self, shutdown: pingora::server::ShutdownWatch) {
        self.sender.run(shutdown).await;
    }
}
