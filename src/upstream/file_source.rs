//! The file source: a pool's servers read from a file in upsync's dump format, re-read when the
//! file changes (polled every 250 ms; an edit applies within a second).
//!
//! A file is applied whole or not at all, as nginx applies an `include` on reload:
//! - **Settled content only.** A change is applied once two reads one poll apart agree and the
//!   file was left alone for [`crate::watched_file::SETTLE_AGE`], so an editor or a tool
//!   rewriting the file in place (truncate, then write) is never caught halfway
//!   ([`WatchedFile::settled`]).
//! - **No lost lines.** A changed file with a line that does not parse (a cut-off last line, a
//!   typo) is not applied: every bad line is logged with its number and the pool keeps its
//!   servers until the file is fixed. `graysplit -t` reports the same lines. At startup there is
//!   no last list to keep, so the good lines are served (and the bad ones logged).
//! - **Host names never block and never lose a server.** Names are resolved off the async
//!   threads with a deadline ([`super::resolve`]), and not before the process has taken its
//!   sockets: the first load runs in the watcher's service, which the health checks (and so the
//!   proxy) wait for. A name that does not resolve keeps its last address; a new one is skipped
//!   and looked up again every [`RETRY`] until it resolves.
//! - An empty or unreadable file never empties `base` (`allow_empty = false`).
//!
//! Log lines appear once per change, not per poll.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use log::{info, warn};
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;

use super::pool::{Pool, Update};
use super::resolve::{self, Resolved};
use super::upsync_format::LineError;
use crate::watched_file::WatchedFile;

/// How often files are checked for changes.
pub const POLL: Duration = Duration::from_millis(250);
/// How often names that did not resolve are looked up again.
pub const RETRY: Duration = Duration::from_secs(5);

/// One pool fed from one file.
#[derive(Debug)]
pub struct FileSource {
    pool: Arc<Pool>,
    file: WatchedFile,
    /// The last settled, well-formed content and whether some of its names are still unresolved
    /// (then it is applied again after [`RETRY`]).
    current: Mutex<Option<Current>>,
}

#[derive(Debug)]
struct Current {
    text: String,
    unresolved: bool,
    resolved_at: Instant,
}

/// What a load found, for `-t` and the startup log.
#[derive(Debug)]
pub struct LoadReport {
    pub servers: usize,
    pub errors: Vec<LineError>,
}

/// A file's content after the syntax check: the names it needs, or why it is refused.
enum Checked {
    Good { names: Vec<String> },
    Refused(Vec<LineError>),
}

fn check_text(text: &str) -> Checked {
    let syntax = resolve::names_and_syntax(text);
    if syntax.errors.is_empty() {
        Checked::Good {
            names: syntax.names,
        }
    } else {
        Checked::Refused(syntax.errors)
    }
}

impl FileSource {
    pub fn new(pool: Arc<Pool>, path: PathBuf) -> Self {
        let file = WatchedFile::settled(path, format!("pool {}", pool.name));
        Self {
            pool,
            file,
            current: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn pool_name(&self) -> &str {
        &self.pool.name
    }

    /// Servers the pool holds now.
    pub fn server_count(&self) -> usize {
        self.pool.snapshot().servers.len()
    }

    /// The first load (the proxy waits for it): reads the file (until two reads agree, so a
    /// write in progress is not taken), resolves its names within [`resolve::STARTUP_BUDGET`]
    /// and applies it. With nothing to keep yet, a file with bad lines serves its good ones.
    pub async fn load_first(self: &Arc<Self>) {
        let me = self.clone();
        let Ok(Some(text)) = tokio::task::spawn_blocking(move || me.file.read_settled_now()).await
        else {
            return;
        };
        let syntax = resolve::names_and_syntax(&text);
        if !syntax.errors.is_empty() {
            for e in &syntax.errors {
                warn!("pool {}: {}: {e}", self.pool.name, self.path().display());
            }
            warn!(
                "pool {}: {} has {} bad line(s); serving the other {} until it is fixed",
                self.pool.name,
                self.path().display(),
                syntax.errors.len(),
                syntax.servers
            );
        }
        let resolved = resolve::lookup(&syntax.names, resolve::STARTUP_BUDGET).await;
        self.apply(text, &resolved, false);
    }

    /// One poll: a settled change is checked and applied; names still unresolved are looked up
    /// again every [`RETRY`].
    pub async fn poll(&self) {
        let (text, retry) = match self.file.changed() {
            Some(text) => (text, false),
            None => {
                let retry = self.current.lock().as_ref().and_then(|c| {
                    (c.unresolved && c.resolved_at.elapsed() >= RETRY).then(|| c.text.clone())
                });
                match retry {
                    Some(text) => (text, true),
                    None => return,
                }
            }
        };
        let Checked::Good { names } = self.judge(&text) else {
            return;
        };
        let resolved = resolve::lookup(&names, resolve::TIMEOUT).await;
        self.apply(text, &resolved, retry);
    }

    /// The syntax verdict, logged when a file is refused.
    fn judge(&self, text: &str) -> Checked {
        let checked = check_text(text);
        if let Checked::Refused(errors) = &checked {
            for e in errors {
                warn!("pool {}: {}: {e}", self.pool.name, self.path().display());
            }
            warn!(
                "pool {}: {} not applied ({} bad line(s)); keeping the last {} server(s) until \
                 it is fixed (graysplit -t shows the same lines)",
                self.pool.name,
                self.path().display(),
                errors.len(),
                self.pool.snapshot().servers.len()
            );
        }
        checked
    }

    /// Applies a checked file with these addresses. `retry`: a look-up again of the names that
    /// did not resolve (their problems were logged when the content was new).
    fn apply(&self, text: String, resolved: &Resolved, retry: bool) {
        let name = &self.pool.name;
        let previous = self.pool.snapshot().specs();
        let r = resolve::parse_resolved(&text, resolved, &previous);
        let level = if retry {
            log::Level::Debug
        } else {
            log::Level::Warn
        };
        for k in &r.kept {
            log::log!(level, "pool {name}: {}: {k}", self.path().display());
        }
        for e in &r.parsed.errors {
            log::log!(level, "pool {name}: {}: {e}", self.path().display());
        }
        let unresolved = !r.unresolved.is_empty() || !r.kept.is_empty();
        *self.current.lock() = Some(Current {
            text,
            unresolved,
            resolved_at: Instant::now(),
        });
        match self.pool.replace(r.parsed.servers) {
            Update::Applied(diff) => info!(
                "pool {name}: {} server(s) from {}: {diff}",
                self.pool.snapshot().servers.len(),
                self.path().display()
            ),
            Update::RefusedEmpty => warn!(
                "pool {name}: {} lists no usable server; keeping the last {} (allow_empty = false)",
                self.path().display(),
                self.pool.snapshot().servers.len()
            ),
            Update::Unchanged => {}
        }
    }
}

/// Reads a pools file once without applying it (for `graysplit -t`): its syntax, judged as the
/// file source judges it. Names are not looked up (at run time one that does not resolve is
/// retried, never fatal).
pub fn check(path: &Path) -> Result<LoadReport, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let syntax = resolve::names_and_syntax(&text);
    Ok(LoadReport {
        servers: syntax.servers,
        errors: syntax.errors,
    })
}

/// Background service polling every file source. Ready once every file had its first load,
/// so the health checks and the proxy start with the pools in place.
pub struct FileWatcher {
    pub sources: Vec<Arc<FileSource>>,
}

#[async_trait]
impl BackgroundService for FileWatcher {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let mut first = tokio::task::JoinSet::new();
        for s in &self.sources {
            let s = s.clone();
            first.spawn(async move {
                s.load_first().await;
                info!(
                    "pool {}: {} server(s) from {}",
                    s.pool.name,
                    s.server_count(),
                    s.path().display()
                );
            });
        }
        while first.join_next().await.is_some() {}
        ready.notify_ready();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    for s in &self.sources {
                        s.poll().await;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::health::HealthTable;

    fn source(dir: &Path, allow_empty: bool) -> (Arc<Pool>, Arc<FileSource>) {
        let pool = Arc::new(Pool::new(
            "base",
            allow_empty,
            Arc::new(HealthTable::default()),
        ));
        let src = Arc::new(FileSource::new(pool.clone(), dir.join("base.conf")));
        (pool, src)
    }

    fn ports(pool: &Pool) -> Vec<u16> {
        pool.snapshot()
            .servers
            .iter()
            .map(|s| s.spec.addr.port())
            .collect()
    }

    /// Writes a file as an editor that finished a second ago would have left it.
    fn write_old(path: &Path, text: &str) -> std::io::Result<()> {
        std::fs::write(path, text)?;
        std::fs::File::options()
            .write(true)
            .open(path)?
            .set_modified(std::time::SystemTime::now() - 2 * crate::watched_file::SETTLE_AGE)
    }

    /// Two polls: a change is applied once two reads agree.
    async fn settle(src: &FileSource) {
        src.poll().await;
        src.poll().await;
    }

    #[tokio::test]
    async fn a_change_applies_once_two_reads_agree() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, src) = source(dir.path(), false);
        write_old(src.path(), "server 127.0.0.1:1;\nserver 127.0.0.1:2;\n").unwrap();
        src.load_first().await;
        assert_eq!(ports(&pool), vec![1, 2], "startup reads at once");
        // A rewrite in place caught halfway: one server written, then the rest.
        write_old(src.path(), "server 127.0.0.1:1;\n").unwrap();
        src.poll().await;
        assert_eq!(
            ports(&pool),
            vec![1, 2],
            "one read of a new content is not enough"
        );
        write_old(src.path(), "server 127.0.0.1:1;\nserver 127.0.0.1:3;\n").unwrap();
        src.poll().await;
        assert_eq!(ports(&pool), vec![1, 2], "it changed again: still writing");
        src.poll().await;
        assert_eq!(ports(&pool), vec![1, 3], "settled: applied");
    }

    #[tokio::test]
    async fn a_file_with_a_bad_line_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, src) = source(dir.path(), false);
        write_old(src.path(), "server 127.0.0.1:1;\nserver 127.0.0.1:2;\n").unwrap();
        src.load_first().await;
        // Cut off in the middle of a line (a writer that died), then a typo.
        for bad in [
            "server 127.0.0.1:1;\nserver 127.0",
            "server 127.0.0.1:1;\nserver 127.0.0.1:3 wieght=2;\n",
        ] {
            write_old(src.path(), bad).unwrap();
            settle(&src).await;
            assert_eq!(ports(&pool), vec![1, 2], "{bad:?} lost lines: not applied");
        }
        write_old(src.path(), "server 127.0.0.1:1;\nserver 127.0.0.1:3;\n").unwrap();
        settle(&src).await;
        assert_eq!(ports(&pool), vec![1, 3], "fixed: applied");
    }

    #[tokio::test]
    async fn at_startup_the_good_lines_of_a_bad_file_serve() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, src) = source(dir.path(), false);
        std::fs::write(
            src.path(),
            "server 127.0.0.1:1;\nserver x\nserver 127.0.0.1:3;\n",
        )
        .unwrap();
        src.load_first().await;
        assert_eq!(
            ports(&pool),
            vec![1, 3],
            "nothing to keep yet: the good lines"
        );
    }

    #[tokio::test]
    async fn missing_or_empty_file_keeps_the_last_servers_for_base() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, src) = source(dir.path(), false);
        write_old(src.path(), "server 127.0.0.1:1;\n").unwrap();
        src.load_first().await;
        std::fs::remove_file(src.path()).unwrap();
        settle(&src).await;
        assert_eq!(ports(&pool), vec![1]);
        write_old(src.path(), "").unwrap();
        settle(&src).await;
        assert_eq!(ports(&pool), vec![1]);
    }

    #[tokio::test]
    async fn empty_file_empties_a_pool_that_allows_it_once_settled() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, src) = source(dir.path(), true);
        write_old(src.path(), "server 127.0.0.1:1;\n").unwrap();
        src.load_first().await;
        write_old(src.path(), "").unwrap();
        src.poll().await;
        assert_eq!(
            ports(&pool),
            vec![1],
            "a truncate seen once is not the truth yet"
        );
        write_old(src.path(), "# no gray today\n").unwrap();
        settle(&src).await;
        assert!(ports(&pool).is_empty());
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_skipped_and_the_rest_applies() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, src) = source(dir.path(), false);
        std::fs::write(
            src.path(),
            "server localhost:1;\nserver nonexistent.invalid:2;\nserver 127.0.0.1:3;\n",
        )
        .unwrap();
        src.load_first().await;
        let got = ports(&pool);
        assert_eq!(got, vec![1, 3], "a DNS failure is not a broken file");
        assert!(pool.snapshot().servers[0].spec.addr.ip().is_loopback());
        assert!(
            src.current.lock().as_ref().is_some_and(|c| c.unresolved),
            "retried later"
        );
    }
}
