//! Active health checks: a supervisor that keeps one small task per server address.
//!
//! Every 100 ms the supervisor compares the addresses listed by the pools (with their pool's
//! `[health]` settings) to the running tasks, starts tasks for new addresses, and stops tasks of
//! removed ones. A task checks at once, then every `interval`, and feeds the result into the
//! address's [`ServerHealth`] (rise/fall as nginx_upstream_check_module counts them). A
//! semaphore bounds how many checks are in flight, so a thousand servers cost a thousand short
//! connections per interval and nothing more; checks run on the background service's own
//! runtime, never on the proxy's.
//!
//! An address listed by several pools is checked once, with the settings of the first pool that
//! lists it (`base` first, then by name): health is per address, as everywhere in graysplit.
//! Servers marked `down` in their pool are not checked (as in the check module): they take no
//! traffic anyway, may be under maintenance, and need `rise` passes once they are enabled again.
//!
//! A new server is checked back to back: its first checks run [`RISING_GAP`] apart (100 ms,
//! or `interval` if shorter) until it is up or a check fails, so with `rise = 2` a server PUT
//! into Consul takes traffic about 100 ms after it appears instead of one `interval`; after that
//! (and after any failure) checks run every `interval`. Only a task's first streak is fast: a
//! server that went down needs its `rise` passes at the normal pace, so a flapping server does not
//! come back early.
//!
//! Warm start: at startup (and so after every graceful upgrade) the supervisor checks every
//! server once and only then reports ready; the proxy depends on it. A server that passes this
//! first check comes up at once, so a restart neither sends traffic to a server that was never
//! checked nor answers 502 for `rise × interval` — the check module's reload problem
//! (yaoweibin/nginx_upstream_check_module#70). Servers that appear later need `rise` passes —
//! except into a pool that has no usable server at all: there one pass is enough, because a
//! server that just passed a check serves better than the 502 the pool answers otherwise (a
//! first start with Consul and no dump yet, or every server restarted at once).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use log::{debug, info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use rand::Rng;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::health::{Flip, ServerHealth};
use super::pool::Pool;
use super::probe;
use crate::config::health::HealthSettings;
use crate::metrics::Metrics;

/// How often the supervisor looks for added or removed servers.
pub const RECONCILE: Duration = Duration::from_millis(100);
/// Gap between the first checks of a new server, until it is up or one fails (module docs).
pub const RISING_GAP: Duration = Duration::from_millis(100);
/// Checks in flight at once, across all servers.
pub const MAX_CONCURRENT_CHECKS: usize = 256;
/// Extra wait beyond the longest check `timeout` before the warm start gives up waiting.
const WARM_START_MARGIN: Duration = Duration::from_secs(1);

/// What one address is checked with.
#[derive(Clone)]
struct Target {
    pool: Arc<Pool>,
    /// The address as written in the pool: the default `Host` header and the log name.
    name: String,
    settings: Arc<HealthSettings>,
    /// Weak, so a removed server's state is freed by its pool, not kept alive by its check.
    health: Weak<ServerHealth>,
}

impl Target {
    fn same_as(&self, other: &Target) -> bool {
        self.name == other.name
            && Arc::ptr_eq(&self.pool, &other.pool)
            && Arc::ptr_eq(&self.settings, &other.settings)
            && self.health.ptr_eq(&other.health)
    }
}

struct Running {
    target: Target,
    handle: JoinHandle<()>,
}

/// The background service running every active check.
pub struct HealthChecker {
    /// Pools with active checks enabled, in priority order (base first).
    pools: Vec<(Arc<Pool>, Arc<HealthSettings>)>,
    metrics: Arc<Metrics>,
    limit: Arc<Semaphore>,
}

impl HealthChecker {
    /// `pools` in priority order; pools without enabled checks ([`Pool::checks`]) are skipped.
    pub fn new(pools: Vec<Arc<Pool>>, metrics: Arc<Metrics>) -> Self {
        Self {
            pools: pools
                .into_iter()
                .filter_map(|p| Some((p.checks()?.clone(), p)))
                .map(|(s, p)| (p, s))
                .collect(),
            metrics,
            limit: Arc::new(Semaphore::new(MAX_CONCURRENT_CHECKS)),
        }
    }

    /// Pool generations: when none moved, the set of addresses cannot have changed.
    fn fingerprint(&self) -> Vec<u64> {
        self.pools
            .iter()
            .map(|(p, _)| p.snapshot().generation)
            .collect()
    }

    fn desired(&self) -> HashMap<SocketAddr, Target> {
        let mut out = HashMap::new();
        for (pool, settings) in &self.pools {
            for s in pool.snapshot().servers.iter().filter(|s| !s.spec.down) {
                out.entry(s.spec.addr).or_insert_with(|| Target {
                    pool: pool.clone(),
                    name: s.spec.name.clone(),
                    settings: settings.clone(),
                    health: Arc::downgrade(&s.health),
                });
            }
        }
        out
    }

    /// Starts and stops tasks to match the pools. `warm`: the startup round (see module doc).
    fn reconcile(
        &self,
        running: &mut HashMap<SocketAddr, Running>,
        warm: Option<&mpsc::Sender<()>>,
    ) {
        let desired = self.desired();
        running.retain(|addr, r| {
            let keep =
                desired.get(addr).is_some_and(|t| t.same_as(&r.target)) && !r.handle.is_finished();
            if !keep {
                r.handle.abort();
            }
            keep
        });
        for (addr, target) in desired {
            if running.contains_key(&addr) {
                continue;
            }
            let task = CheckTask {
                addr,
                target: target.clone(),
                metrics: self.metrics.clone(),
                limit: self.limit.clone(),
            };
            let first_done = warm.cloned();
            let handle = tokio::spawn(task.run(first_done));
            running.insert(addr, Running { target, handle });
        }
    }

    /// The longest check timeout, for the warm start's deadline.
    fn longest_timeout(&self) -> Duration {
        self.pools
            .iter()
            .map(|(_, s)| s.timeout)
            .max()
            .unwrap_or_default()
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let mut running = HashMap::new();
        let mut seen = self.fingerprint();
        {
            let (tx, mut rx) = mpsc::channel::<()>(1);
            self.reconcile(&mut running, Some(&tx));
            let servers = running.len();
            drop(tx);
            // Every first check drops its sender; the channel closes when all are done.
            let deadline = self.longest_timeout() + WARM_START_MARGIN;
            let started = Instant::now();
            let all_done =
                tokio::time::timeout(deadline, async { while rx.recv().await.is_some() {} })
                    .await
                    .is_ok();
            info!(
                "health: first check of {servers} server(s) {} in {}ms",
                if all_done { "done" } else { "still running" },
                started.elapsed().as_millis()
            );
        }
        ready.notify_ready();
        let mut tick = tokio::time::interval(RECONCILE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = self.fingerprint();
                    if now != seen {
                        self.reconcile(&mut running, None);
                        seen = now;
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        for r in running.values() {
            r.handle.abort();
        }
    }
}

/// One address's check loop.
struct CheckTask {
    addr: SocketAddr,
    target: Target,
    metrics: Arc<Metrics>,
    limit: Arc<Semaphore>,
}

impl CheckTask {
    async fn run(self, mut first_done: Option<mpsc::Sender<()>>) {
        let settings = self.target.settings.clone();
        let request = probe::request(&settings, &self.target.name);
        // Warm start: the first pass alone brings the server up (see module doc).
        let mut warm = first_done.is_some();
        // First check at once; then back to back while a new server rises; then every
        // `interval`, shifted by a small random phase so servers added together are not checked
        // in lockstep forever.
        let jitter = settings
            .interval
            .mul_f64(rand::thread_rng().gen_range(0.0..0.1));
        let mut next = Instant::now();
        let mut rising = true;
        loop {
            let started = Instant::now();
            let result = {
                let Ok(_permit) = self.limit.acquire().await else {
                    return; // closed: shutting down
                };
                probe::probe(self.addr, &request, &settings).await
            };
            let Some(health) = self.target.health.upgrade() else {
                return; // removed from every pool
            };
            let rise = self.rise_now(&health, result.is_ok(), warm);
            warm = false;
            let flip = health.record_check(result.is_ok(), rise, settings.fall);
            self.metrics.health_check(result.is_ok(), flip);
            self.log(&result, flip, &health);
            let was_rising = rising;
            rising = rising && result.is_ok() && !health.is_up();
            drop(health);
            drop(first_done.take());
            if rising {
                next += RISING_GAP.min(settings.interval);
            } else {
                next += settings.interval;
                if was_rising {
                    next += jitter;
                }
            }
            // A check slower than the interval: go again at once rather than pile up.
            if next < started {
                next = Instant::now();
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// Passes needed now to come up: `rise`, or 1 at warm start or into a pool with no usable
    /// server (see module doc). The pool is scanned only for a down server that just passed.
    fn rise_now(&self, health: &ServerHealth, passed: bool, warm: bool) -> u32 {
        let settings = &self.target.settings;
        if warm || (passed && !health.is_up() && !self.target.pool.has_usable(|_| true)) {
            1
        } else {
            settings.rise
        }
    }

    fn log(&self, result: &Result<u16, probe::ProbeError>, flip: Option<Flip>, h: &ServerHealth) {
        let t = &self.target;
        match (flip, result) {
            (Some(Flip::Up), _) => info!(
                "health: pool {} server {} is up ({} check(s) passed)",
                t.pool.name,
                t.name,
                h.rise_count()
            ),
            (Some(Flip::Down), Err(e)) => warn!(
                "health: pool {} server {} is down after {} failed check(s): {e}",
                t.pool.name,
                t.name,
                h.fall_count()
            ),
            (_, Err(e)) => debug!("health: {} check failed: {e}", t.name),
            (_, Ok(status)) => debug!("health: {} check passed: {status}", t.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::health::HealthTable;
    use crate::upstream::server::ServerSpec;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering every check with the status in `status` (shared, changeable).
    async fn server(status: Arc<std::sync::atomic::AtomicU16>) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let code = status.load(std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = [0u8; 512];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(format!("HTTP/1.1 {code} X\r\n\r\n").as_bytes())
                        .await;
                });
            }
        });
        addr
    }

    fn fast() -> HealthSettings {
        HealthSettings {
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(500),
            ..HealthSettings::default()
        }
    }

    async fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn checks_bring_servers_up_and_down_and_stop_with_the_server() {
        use std::sync::atomic::{AtomicU16, Ordering};
        let status = Arc::new(AtomicU16::new(200));
        let addr = server(status.clone()).await;
        // allow_empty, so the server can be removed at the end.
        let anchor = server(Arc::new(AtomicU16::new(200))).await;
        let pool = Arc::new(Pool::new("gray", true, Arc::new(HealthTable::default())));
        pool.set_checks(fast());
        pool.replace(vec![
            ServerSpec::new(anchor, anchor.to_string()),
            ServerSpec::new(addr, addr.to_string()),
        ]);
        let checker = HealthChecker::new(vec![pool.clone()], Arc::new(Metrics::new().unwrap()));
        let mut running = HashMap::new();
        checker.reconcile(&mut running, None);
        // The tasks have not run yet (current-thread runtime): the pool has one usable server,
        // so the server under test needs the full `rise`.
        pool.snapshot().servers[0].health.set_up(true);
        let h = pool.snapshot().servers[1].health.clone();
        assert!(!h.is_up(), "default_down");
        wait_for("rise", || h.is_up()).await;
        assert!(h.checks() >= 2, "came up only after rise = 2 checks");
        status.store(503, Ordering::Relaxed);
        wait_for("fall", || !h.is_up()).await;
        assert!(h.fall_count() >= 2);
        pool.replace(vec![]);
        drop(h);
        checker.reconcile(&mut running, None);
        assert!(
            running.is_empty(),
            "removed servers: their tasks are stopped"
        );
    }

    #[tokio::test]
    async fn into_a_pool_without_usable_servers_one_pass_is_enough() {
        use std::sync::atomic::AtomicU16;
        let addr = server(Arc::new(AtomicU16::new(200))).await;
        let pool = Arc::new(Pool::new("base", false, Arc::new(HealthTable::default())));
        pool.set_checks(HealthSettings {
            interval: Duration::from_secs(60),
            ..fast()
        });
        pool.replace(vec![ServerSpec::new(addr, addr.to_string())]);
        let checker = HealthChecker::new(vec![pool.clone()], Arc::new(Metrics::new().unwrap()));
        let mut running = HashMap::new();
        checker.reconcile(&mut running, None);
        let h = pool.snapshot().servers[0].health.clone();
        wait_for("first pass", || h.is_up()).await;
        assert_eq!(h.checks(), 1, "up after one check: better than a 502");
    }

    #[tokio::test]
    async fn a_new_server_is_checked_back_to_back_until_it_is_up() {
        use std::sync::atomic::AtomicU16;
        let (anchor, addr) = (
            server(Arc::new(AtomicU16::new(200))).await,
            server(Arc::new(AtomicU16::new(200))).await,
        );
        let pool = Arc::new(Pool::new("base", false, Arc::new(HealthTable::default())));
        // A minute between checks: only the rising streak can bring it up within the test.
        pool.set_checks(HealthSettings {
            interval: Duration::from_secs(60),
            rise: 3,
            ..fast()
        });
        pool.replace(vec![ServerSpec::new(anchor, anchor.to_string())]);
        pool.snapshot().servers[0].health.set_up(true);
        pool.replace(vec![
            ServerSpec::new(anchor, anchor.to_string()),
            ServerSpec::new(addr, addr.to_string()),
        ]);
        let checker = HealthChecker::new(vec![pool.clone()], Arc::new(Metrics::new().unwrap()));
        let mut running = HashMap::new();
        checker.reconcile(&mut running, None);
        let h = pool.snapshot().servers[1].health.clone();
        wait_for("three back-to-back passes", || h.is_up()).await;
        assert_eq!(h.checks(), 3, "up at exactly rise = 3 passes");
    }

    #[tokio::test]
    async fn a_failed_first_check_ends_the_fast_streak() {
        use std::sync::atomic::{AtomicU16, Ordering};
        let anchor = server(Arc::new(AtomicU16::new(200))).await;
        let status = Arc::new(AtomicU16::new(503));
        let addr = server(status.clone()).await;
        let pool = Arc::new(Pool::new("base", false, Arc::new(HealthTable::default())));
        pool.set_checks(HealthSettings {
            interval: Duration::from_secs(60),
            ..fast()
        });
        pool.replace(vec![ServerSpec::new(anchor, anchor.to_string())]);
        pool.snapshot().servers[0].health.set_up(true);
        pool.replace(vec![
            ServerSpec::new(anchor, anchor.to_string()),
            ServerSpec::new(addr, addr.to_string()),
        ]);
        let checker = HealthChecker::new(vec![pool.clone()], Arc::new(Metrics::new().unwrap()));
        let mut running = HashMap::new();
        checker.reconcile(&mut running, None);
        let h = pool.snapshot().servers[1].health.clone();
        wait_for("the first check", || h.checks() == 1).await;
        status.store(200, Ordering::Relaxed);
        // Several rising gaps later, still one check: the next one is an interval away.
        tokio::time::sleep(RISING_GAP * 5).await;
        assert_eq!(h.checks(), 1);
        assert!(!h.is_up());
    }

    #[tokio::test]
    async fn servers_marked_down_are_not_checked() {
        let pool = Arc::new(Pool::new("base", false, Arc::new(HealthTable::default())));
        pool.set_checks(fast());
        let mut down = ServerSpec::new("127.0.0.1:9".parse().unwrap(), "127.0.0.1:9");
        down.down = true;
        pool.replace(vec![down]);
        let checker = HealthChecker::new(vec![pool], Arc::new(Metrics::new().unwrap()));
        assert!(checker.desired().is_empty());
    }

    #[tokio::test]
    async fn an_address_in_two_pools_is_checked_once_with_the_first_pools_settings() {
        let table = Arc::new(HealthTable::default());
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let base = Arc::new(Pool::new("base", false, table.clone()));
        let gray = Arc::new(Pool::new("gray", true, table));
        base.replace(vec![ServerSpec::new(addr, "127.0.0.1:9")]);
        gray.replace(vec![ServerSpec::new(addr, "127.0.0.1:9")]);
        let mut gray_settings = fast();
        gray_settings.path = "/gray".into();
        base.set_checks(fast());
        gray.set_checks(gray_settings);
        let off = Arc::new(Pool::new("off", true, Arc::new(HealthTable::default())));
        off.set_checks(HealthSettings {
            enabled: false,
            ..fast()
        });
        let checker = HealthChecker::new(vec![base, gray, off], Arc::new(Metrics::new().unwrap()));
        assert_eq!(checker.pools.len(), 2, "pools without checks are skipped");
        let d = checker.desired();
        assert_eq!(d.len(), 1);
        assert_eq!(d[&addr].pool.name, "base");
        assert_eq!(d[&addr].settings.path, "/");
    }
}
