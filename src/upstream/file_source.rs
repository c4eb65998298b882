//! The file source: a pool's servers read from a file in upsync's dump format, re-read when the
//! file changes (polled every 250 ms, so an edit applies well within a second).
//!
//! A bad line is logged with its number and skipped; the other lines still apply. A file that
//! vanishes or cannot be read keeps the last servers. Log lines appear once per change, not per
//! poll.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use log::{info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::pool::{Pool, Update};
use super::upsync_format::{self, LineError};
use crate::watched_file::WatchedFile;

/// How often files are checked for changes.
pub const POLL: Duration = Duration::from_millis(250);

/// One pool fed from one file.
#[derive(Debug)]
pub struct FileSource {
    pool: Arc<Pool>,
    file: WatchedFile,
}

/// What a load found, for `-t` and the startup log.
#[derive(Debug)]
pub struct LoadReport {
    pub servers: usize,
    pub errors: Vec<LineError>,
}

impl FileSource {
    pub fn new(pool: Arc<Pool>, path: PathBuf) -> Self {
        let file = WatchedFile::new(path, format!("pool {}", pool.name));
        Self { pool, file }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Reads the file and applies it if its content changed since the last call.
    pub fn poll(&self) {
        if let Some(text) = self.file.changed() {
            self.apply(&text);
        }
    }

    fn apply(&self, text: &str) {
        let parsed = upsync_format::parse(text);
        for e in &parsed.errors {
            warn!(
                "pool {}: {}: {e}; line skipped",
                self.pool.name,
                self.path().display()
            );
        }
        match self.pool.replace(parsed.servers) {
            Update::Applied(diff) => info!(
                "pool {}: {} server(s) from {}: {diff}",
                self.pool.name,
                self.pool.snapshot().servers.len(),
                self.path().display()
            ),
            Update::RefusedEmpty => warn!(
                "pool {}: {} lists no usable server; keeping the last {} (allow_empty = false)",
                self.pool.name,
                self.path().display(),
                self.pool.snapshot().servers.len()
            ),
            Update::Unchanged => {}
        }
    }
}

/// Reads a pools file once without applying it (for `graysplit -t`).
pub fn check(path: &Path) -> Result<LoadReport, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let parsed = upsync_format::parse(&text);
    Ok(LoadReport {
        servers: parsed.servers.len(),
        errors: parsed.errors,
    })
}

/// Background service polling every file source.
pub struct FileWatcher {
    pub sources: Vec<Arc<FileSource>>,
}

#[async_trait]
impl BackgroundService for FileWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sources.iter().for_each(|s| s.poll()),
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::health::HealthTable;

    fn source(dir: &Path, allow_empty: bool) -> (Arc<Pool>, FileSource) {
        let pool = Arc::new(Pool::new(
            "base",
            allow_empty,
            Arc::new(HealthTable::default()),
        ));
        let src = FileSource::new(pool.clone(), dir.join("base.conf"));
        (pool, src)
    }

    fn ports(pool: &Pool) -> Vec<u16> {
        pool.snapshot()
            .servers
            .iter()
            .map(|s| s.spec.addr.port())
            .collect()
    }

    #[test]
    fn applies_changes_and_keeps_good_lines_around_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, src) = source(dir.path(), false);
        std::fs::write(src.path(), "server 127.0.0.1:1;\nserver 127.0.0.1:2;\n").unwrap();
        src.poll();
        assert_eq!(ports(&pool), vec![1, 2]);
        std::fs::write(
            src.path(),
            "server 127.0.0.1:1;\nserver garbage\nserver 127.0.0.1:3;\n",
        )
        .unwrap();
        src.poll();
        assert_eq!(ports(&pool), vec![1, 3]);
    }

    #[test]
    fn missing_or_empty_file_keeps_the_last_servers_for_base() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, src) = source(dir.path(), false);
        std::fs::write(src.path(), "server 127.0.0.1:1;\n").unwrap();
        src.poll();
        std::fs::remove_file(src.path()).unwrap();
        src.poll();
        assert_eq!(ports(&pool), vec![1]);
        std::fs::write(src.path(), "").unwrap();
        src.poll();
        assert_eq!(ports(&pool), vec![1]);
    }

    #[test]
    fn empty_file_empties_a_pool_that_allows_it() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, src) = source(dir.path(), true);
        std::fs::write(src.path(), "server 127.0.0.1:1;\n").unwrap();
        src.poll();
        std::fs::write(src.path(), "# no gray today\n").unwrap();
        src.poll();
        assert!(ports(&pool).is_empty());
    }
}
