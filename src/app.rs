//! Assembly only: turns a validated [`Config`] into a Pingora [`Server`] with the proxy, the admin
//! listener and the background watchers. No request logic lives here.

use std::sync::Arc;

use log::{info, warn};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::AdminApp;
use crate::config::{Config, Runtime};
use crate::gray::consul_switches::ConsulSwitches;
use crate::gray::{GrayEngine, GrayUpkeep};
use crate::lifecycle::{linger_for, DrainWatch, Draining, Lingering};
use crate::limits::gate::Gate;
use crate::limits::Limits;
use crate::listeners::{Edge, Entrypoint};
use crate::metrics::Metrics;
use crate::per_core::{PerCore, SharedSockets};
use crate::pin::Pinner;
use crate::proxy::https::HttpsSettings;
use crate::proxy::{GraySplit, ProxySettings};
use crate::upstream::checker::HealthChecker;
use crate::upstream::consul::ConsulClient;
use crate::upstream::consul::{ConsulSource, ConsulStatus, ConsulWatcher};
use crate::upstream::file_source::{FileSource, FileWatcher};
use crate::upstream::Pools;

/// Process-level options from the command line that Pingora acts on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    pub daemon: bool,
    pub upgrade: bool,
}

/// The shared state of a running graysplit, for the demo and tests that look inside.
pub struct App {
    pub server: Server,
    pub pools: Arc<Pools>,
    /// Per-pool Consul watcher state (empty without Consul pools).
    pub consul: Arc<ConsulStatus>,
}

fn server_conf(config: &Config) -> ServerConf {
    let s = &config.server;
    ServerConf {
        threads: s.threads,
        pid_file: s.pid_file.to_string_lossy().into_owned(),
        upgrade_sock: s.upgrade_sock.to_string_lossy().into_owned(),
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
        // Pingora's connector keeps this many idle connections per thread of the service.
        upstream_keepalive_pool_size: config
            .upstream
            .keepalive_pool_size
            .div_ceil(s.threads.max(1)),
        // Per thread, each service runs on one single-threaded runtime (Pingora's no-steal
        // runtime with one thread): a connection's tasks never move to another thread.
        work_stealing: s.runtime == Runtime::Shared,
        // Our own `tries` limits retries; this is only Pingora's global fail-safe, with room for
        // the one asset-miss retry (a pinned asset's 404 tried on another build, pinning.rs) and
        // a sticky asset's attempts while it waits for its pinned build (pinning.rs).
        max_retries: config.upstream.tries.max(1)
            + 1
            + crate::proxy::select::MAX_WAIT_ATTEMPTS as usize,
        ..ServerConf::default()
    }
}

/// Builds the server. Pools are loaded from their sources *before* this returns, so traffic
/// flows from the first accepted connection.
///
/// The order matters for `-u` (graceful upgrade, `systemctl reload`): the old process tries for
/// about 5 s to hand its listening sockets over and stops accepting 5 s after, so everything
/// that can fail runs first (fast, from the config alone), then the sockets are taken
/// ([`Server::bootstrap`]), and only then what may be slow: without `-u`, `strong_dependency`'s
/// first Consul answer; and, in the pool watchers' services (after `-d` forks), pools files and
/// dumps with their host names (DNS bounded by [`crate::upstream::resolve::STARTUP_BUDGET`]). The
/// health checks wait for those services and the proxy for the checks, so the first request
/// already finds the pools.
pub fn build(config: &Config, run: RunOptions) -> Result<App, String> {
    for dir in [&config.server.pid_file, &config.server.upgrade_sock]
        .iter()
        .filter_map(|p| p.parent())
    {
        if let Err(e) = std::fs::create_dir_all(dir) {
            warn!("cannot create {}: {e}", dir.display());
        }
    }
    let opt = Opt {
        daemon: run.daemon,
        upgrade: run.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), server_conf(config));

    let pools = Arc::new(Pools::new(
        config
            .pools
            .values()
            .map(|p| (p.name.as_str(), p.allow_empty)),
    ));
    // Before any server list is applied: with default_down, new servers start down.
    for p in config.pools.values() {
        if let Some(pool) = pools.get(&p.name) {
            pool.set_checks(p.health.clone());
        }
    }
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("cannot set up metrics: {e}"))?);
    let gray = Arc::new(GrayEngine::new(config.gray.clone())?);
    let consul = consul_source(config, &pools)?;
    let sources: Vec<Arc<FileSource>> = config
        .pools
        .values()
        .filter_map(|p| {
            let (file, pool) = (p.file.as_ref()?, pools.get(&p.name)?);
            Some(Arc::new(FileSource::new(pool.clone(), file.clone())))
        })
        .collect();

    // The listening sockets (inherited with -u), before anything slow.
    server.bootstrap();

    // Pools files and dumps are read by their watchers' services, after the fork of -d and on
    // their own runtimes (DNS never blocks startup); the health checks wait for them.
    let file_watcher = server.add_service(background_service(
        "pools file watcher",
        FileWatcher { sources },
    ));
    let mut pool_loaders = vec![file_watcher];
    let consul = match consul {
        Some(source) => {
            if config.consul.strong_dependency {
                if run.upgrade {
                    // The process handing over was serving from Consul and kept the dumps
                    // current; refusing to start now, with its sockets taken, would be the
                    // outage strong_dependency is meant to prevent.
                    info!(
                        "consul: strong_dependency is not waited for on an upgrade (-u): \
                         starting from the dumps the running process kept"
                    );
                } else {
                    source.first_fetch(&config.consul)?;
                }
            }
            pool_loaders.push(server.add_service(background_service(
                "consul watcher",
                ConsulWatcher {
                    client: source.client.clone(),
                    watchers: source.watchers.clone(),
                },
            )));
            source.status
        }
        None => Arc::new(ConsulStatus::default()),
    };

    // The public listeners: certificates loaded and checked now (a bad one stops the start).
    let edge = Edge::new(config, metrics.registry())?;
    if let Some(reloader) = edge.reloader(config.tls.reload_interval) {
        server.add_service(background_service("tls certificate reload", reloader));
    }

    // Set the moment SIGQUIT or SIGTERM arrives: answers then close their connection cleanly.
    let draining = Draining::default();
    let phases = server.watch_execution_phase();
    server.add_service(background_service(
        "drain watch",
        DrainWatch::new(phases, draining.clone()),
    ));

    // Client limits, shared by the gate (connections, head deadline) and the request path.
    let limits = Arc::new(Limits::new(
        config.limits.clone(),
        config.gray.trusted_proxies.clone(),
        metrics.trust.clone(),
    ));
    info!("{}", limits.describe());
    let rollout = crate::rollout::Rollout::for_config(config, metrics.registry())?;
    let access_log = access_log_service(config, &metrics, &mut server)?;
    let settings = ProxySettings {
        upstream: config.upstream.clone(),
        keepalive_timeout: config.server.keepalive_timeout,
        header_case: config.server.header_case,
        access_log: access_log.clone(),
        debug_headers: config.server.debug_headers.clone(),
        limits: limits.clone(),
        metrics: metrics.clone(),
        pin: Arc::new(pinner(config)),
        cache: Arc::new(crate::http_cache::CachePolicy::new(
            config.cache.clone(),
            &config.gray,
        )),
        draining,
        request_ids: config
            .server
            .request_id_header
            .clone()
            .map(|h| Arc::new(crate::proxy::request_id::RequestIds::new(h))),
        https: HttpsSettings::new(config, edge.table.clone()),
        rollout: rollout.clone(),
    };
    server.add_service(background_service(
        "gray upkeep",
        GrayUpkeep {
            engine: gray.clone(),
        },
    ));
    if let Some(prefix) = &config.gray.consul_prefix {
        let client = ConsulClient::new(&config.consul)?;
        server.add_service(background_service(
            "gray switches from consul",
            SwitchesWatcher(ConsulSwitches {
                engine: gray.clone(),
                client: Arc::new(client),
                prefix: prefix.clone(),
                interval: config.consul.interval,
                timeout: config.consul.timeout,
            }),
        ));
    }
    crate::rollout::add_services(&rollout, &gray, &pools, &mut server);
    let proxy = GraySplit::new(pools.clone(), gray.clone(), settings)
        .ok_or("the base pool is not configured")?;
    let checker = server.add_service(background_service(
        "health checks",
        HealthChecker::new(checked_pools(&pools), metrics.clone()),
    ));
    for loader in &pool_loaders {
        checker.add_dependency(loader);
    }
    // The proxy starts once every server had its first check (warm start, see checker.rs).
    edge.log_listeners();
    match config.server.runtime {
        Runtime::Shared => {
            let conf = server.configuration.clone();
            let mut service = Service::new(
                "graysplit".to_string(),
                proxy_app(config, conf, &edge, proxy, limits),
            );
            edge.add_endpoints(service.endpoints())?;
            server.add_service(service).add_dependency(&checker);
        }
        Runtime::PerThread => {
            // One single-threaded service per thread (per_core.rs), each with its own proxy
            // app and so its own upstream connection pool, all on the same listening sockets.
            let sockets = Arc::new(SharedSockets::default());
            let conf = Arc::new(per_thread_conf(config));
            for i in 0..config.server.threads {
                let mut service = Service::new(
                    format!("graysplit {i}"),
                    proxy_app(config, conf.clone(), &edge, proxy.clone(), limits.clone()),
                );
                service.threads = Some(1);
                edge.add_endpoints(service.endpoints())?;
                let service = PerCore::new(service, edge.socket_specs(), sockets.clone());
                server.add_service(service).add_dependency(&checker);
            }
        }
    }

    let mut admin = Service::new(
        "graysplit admin".to_string(),
        AdminApp {
            pools: pools.clone(),
            consul: consul.clone(),
            gray: gray.clone(),
            metrics: metrics.clone(),
            settings: config.admin.clone(),
            started: std::time::Instant::now(),
            rollout: rollout.clone(),
        },
    );
    admin.threads = Some(1);
    admin.add_tcp(&config.server.admin_listen.to_string());
    server.add_service(admin);

    Ok(App {
        server,
        pools,
        consul,
    })
}

/// The proxy app of one service: a connection meets the PROXY protocol gate of plain listeners
/// first (the client's real address), then the limits gate (limits/gate.rs, per client
/// address), then the proxy, wrapped so that shutdown does not drop a just-accepted connection
/// before its first request arrives (lifecycle.rs).
fn proxy_app(
    config: &Config,
    conf: Arc<ServerConf>,
    edge: &Edge,
    proxy: GraySplit,
    limits: Arc<Limits>,
) -> Entrypoint<Gate<Lingering<HttpProxy<GraySplit>>>> {
    let mut proxy = HttpProxy::new(proxy, conf);
    proxy.handle_init_modules();
    proxy.h2_options = Some(config.tls.h2.h2_options());
    proxy.server_options = Some(config.tls.h2.server_options());
    edge.entrypoint(Gate::new(
        Lingering {
            app: Arc::new(proxy),
            linger: linger_for(config.server.grace_period),
        },
        limits,
        // As configured, to the millisecond (Pingora's own setting takes whole seconds); zero
        // turns keep-alive off in `early_request_filter`, so the wrapper never waits then.
        config.server.keepalive_timeout,
    ))
}

/// What each per-thread proxy app is built with: one thread, and its share of the idle upstream
/// connections (`upstream.keepalive_pool_size` is for all threads together; Pingora's connector
/// keeps `upstream_keepalive_pool_size × threads` of them).
fn per_thread_conf(config: &Config) -> ServerConf {
    let threads = config.server.threads.max(1);
    ServerConf {
        threads: 1,
        upstream_keepalive_pool_size: config.upstream.keepalive_pool_size.div_ceil(threads),
        ..server_conf(config)
    }
}

/// The access log (`None` when off): its destination checked now, its writer started as a
/// service (after `-d` forks), `SIGUSR1` reopens it.
fn access_log_service(
    config: &Config,
    metrics: &Metrics,
    server: &mut Server,
) -> Result<Option<Arc<crate::access_log::AccessLog>>, String> {
    use crate::access_log::{self, AccessLog, AccessLogService};
    let settings = &config.access_log;
    if !settings.enabled {
        return Ok(None);
    }
    access_log::check(settings).map_err(|e| {
        let path = settings
            .path
            .as_deref()
            .unwrap_or(std::path::Path::new("-"));
        format!(
            "access_log.path: cannot open {} for appending: {e}",
            path.display()
        )
    })?;
    let (log, writer) = AccessLog::new(settings.clone(), Some(metrics.registry()))
        .map_err(|e| format!("cannot set up the access log's metric: {e}"))?;
    server.add_service(background_service(
        "access log",
        AccessLogService {
            log: log.clone(),
            writer: parking_lot::Mutex::new(Some(writer)),
        },
    ));
    Ok(Some(log))
}

/// The pin keys; without a configured secret a random one, and a warning saying what that costs.
fn pinner(config: &Config) -> Pinner {
    let pinner = Pinner::new(config.pin.clone());
    for w in crate::config::pin::warnings(config) {
        warn!("{w}");
    }
    if pinner.settings.enabled && pinner.random_secret {
        warn!(
            "pin: no secret configured ([pin] secrets or {}): using a random one. Pins will not \
             survive a restart and are not shared with other instances (each page load after a \
             restart or on another instance re-pins)",
            crate::pin::SECRETS_ENV
        );
    }
    pinner
}

/// Pools in the order health checks prefer their settings for a shared address: base first.
fn checked_pools(pools: &Pools) -> Vec<Arc<crate::upstream::pool::Pool>> {
    let mut ordered: Vec<_> = pools.iter().cloned().collect();
    ordered.sort_by_key(|p| (p.name != crate::config::BASE_POOL, p.name.clone()));
    ordered
}

/// The Consul source of the config's Consul pools (`None` without any): watchers and client,
/// nothing fetched or read yet.
fn consul_source(config: &Config, pools: &Pools) -> Result<Option<ConsulSource>, String> {
    let defs: Vec<_> = config
        .pools
        .values()
        .filter(|p| p.consul_prefix.is_some())
        .filter_map(|p| Some((p, pools.get(&p.name)?.clone())))
        .collect();
    if defs.is_empty() {
        return Ok(None);
    }
    ConsulSource::new(&config.consul, defs).map(Some)
}

/// `graysplit -t`: beyond the config itself, every pools file must be readable and every line
/// valid (at run time a bad line is only skipped, but a test run should say so).
pub fn check(config: &Config) -> Result<String, crate::config::ConfigErrors> {
    use crate::config::ConfigError;
    let mut errors = Vec::new();
    let mut servers = 0;
    for p in config.pools.values() {
        // A dump is our own output, but it may have been edited for a rollback: check it too.
        if let Some(dump) = &p.dump_path {
            // Syntax only: host names are looked up at run time, where one that does not
            // resolve is retried, never fatal.
            let read = match std::fs::read_to_string(dump) {
                Ok(text) => Ok(Some(crate::upstream::resolve::names_and_syntax(&text))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            };
            match read {
                Ok(Some(parsed)) => {
                    servers += parsed.servers;
                    errors.extend(parsed.errors.into_iter().map(|e| ConfigError {
                        key: format!(
                            "pools.{}.dump_path ({}) line {}",
                            p.name,
                            dump.display(),
                            e.line
                        ),
                        value: Some(e.text),
                        rule: e.reason,
                    }));
                }
                Ok(None) => {}
                Err(e) => errors.push(ConfigError {
                    key: format!("pools.{}.dump_path", p.name),
                    value: Some(dump.display().to_string()),
                    rule: format!("cannot read the dump: {e}"),
                }),
            }
        }
        let Some(file) = &p.file else { continue };
        let key = format!("pools.{}.file", p.name);
        match crate::upstream::file_source::check(file) {
            Ok(report) => {
                servers += report.servers;
                errors.extend(report.errors.into_iter().map(|e| ConfigError {
                    key: format!("{key} ({}) line {}", file.display(), e.line),
                    value: Some(e.text),
                    rule: e.reason,
                }));
            }
            Err(e) => errors.push(ConfigError {
                key: key.clone(),
                value: Some(file.display().to_string()),
                rule: format!("cannot read pools file: {e}"),
            }),
        }
    }
    // Every certificate, even when no listener uses TLS yet: a test run should say what would
    // fail once one does.
    let now = crate::pin::unix_now() as i64;
    for (i, c) in config.tls.certificates.iter().enumerate() {
        if let Err(e) = crate::tls::certs::load(c, now) {
            let which = if e.path == c.key { "key" } else { "cert" };
            errors.push(ConfigError {
                key: format!("tls.certificates[{i}].{which}"),
                value: Some(e.path.display().to_string()),
                rule: e.reason,
            });
        }
    }
    let plan = crate::rollout::plan_file::check_config(&config.rollout.source, &mut errors);
    if errors.is_empty() {
        Ok(format!(
            "{} pool(s), {servers} server(s), {} certificate(s){plan}",
            config.pools.len(),
            config.tls.certificates.len()
        ))
    } else {
        Err(crate::config::ConfigErrors {
            path: config.path.clone(),
            errors,
        })
    }
}

/// Runs the Consul switches watcher until shutdown.
struct SwitchesWatcher(ConsulSwitches);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for SwitchesWatcher {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        tokio::select! {
            _ = self.0.run() => {}
            _ = shutdown.changed() => {}
        }
    }
}
