//! A file that is polled for changes: the pools file, the whitelist file, the switches file.
//!
//! Content is compared, not mtimes, so editors that replace the file, tools that rewrite it in
//! place and same-second edits are all seen. A file that cannot be read is reported once, and
//! again once when it is readable; its last content stays in force meanwhile.
//!
//! A [`WatchedFile::settled`] file (the pools files) reports a change only once two reads one
//! poll apart agree on the content *and* the modification time, neither read overlapped a write
//! (the mtime before and after it agree), and the file has not been written for [`SETTLE_AGE`]:
//! a tool that rewrites a file in place (truncate, then write) is never caught with half of it —
//! not one that rewrites it again and again, nor one that pauses mid-write for less than that.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use log::{info, warn};
use parking_lot::Mutex;

#[derive(Debug)]
pub struct WatchedFile {
    path: PathBuf,
    /// What the file is, for log lines (`pool base`, `whitelist`).
    what: String,
    /// Report a change only once two reads agree.
    settle: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Last content reported.
    last: Option<Vec<u8>>,
    /// A new content (and its mtime) read once, waiting for a second read to agree (settled
    /// files only).
    pending: Option<(Vec<u8>, Option<SystemTime>)>,
    /// The last read failed (reported once).
    unreadable: bool,
}

/// How long a settled file must have been left alone before a change counts. (A file whose
/// modification time lies in the future, a clock that went back, counts on agreeing reads alone.)
pub const SETTLE_AGE: std::time::Duration = std::time::Duration::from_millis(500);

/// Startup reads of a settled file: this many tries, this far apart, for two reads to agree.
const STARTUP_READS: usize = 50;
const STARTUP_READ_GAP: std::time::Duration = std::time::Duration::from_millis(20);

impl WatchedFile {
    pub fn new(path: PathBuf, what: impl Into<String>) -> Self {
        Self {
            path,
            what: what.into(),
            settle: false,
            state: Mutex::new(State::default()),
        }
    }

    /// A file whose changes count only once two reads one poll apart agree.
    pub fn settled(path: PathBuf, what: impl Into<String>) -> Self {
        Self {
            settle: true,
            ..Self::new(path, what)
        }
    }

    /// Startup: the content, once two reads a moment apart agree (a write in progress is waited
    /// out, about a second at most; then the last read is taken). `None` when unreadable.
    pub fn read_settled_now(&self) -> Option<String> {
        let mut previous: Option<Vec<u8>> = None;
        for _ in 0..STARTUP_READS {
            let bytes = match std::fs::read(&self.path) {
                Ok(b) => b,
                Err(e) => {
                    self.report_unreadable(&e);
                    return None;
                }
            };
            if previous.as_ref() == Some(&bytes) {
                break;
            }
            previous = Some(bytes);
            std::thread::sleep(STARTUP_READ_GAP);
        }
        let bytes = previous?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let mut state = self.state.lock();
        state.last = Some(bytes);
        state.pending = None;
        Some(text)
    }

    fn report_unreadable(&self, e: &std::io::Error) {
        let mut state = self.state.lock();
        if !state.unreadable {
            warn!(
                "{}: cannot read {}: {e}; keeping what was last read",
                self.what,
                self.path.display()
            );
            state.unreadable = true;
        }
        state.pending = None;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The new content if the file changed since the last call (or on the first call); for a
    /// settled file, once two calls in a row read it unchanged.
    pub fn changed(&self) -> Option<String> {
        let (bytes, mtime) = match self.read_with_mtime() {
            Ok(read) => read,
            Err(e) => {
                self.report_unreadable(&e);
                return None;
            }
        };
        let mut state = self.state.lock();
        if state.unreadable {
            info!("{}: {} is readable again", self.what, self.path.display());
            state.unreadable = false;
        }
        if state.last.as_deref() == Some(bytes.as_slice()) {
            state.pending = None;
            return None;
        }
        if self.settle {
            // A read that overlapped a write (no stable mtime) never settles anything.
            let agrees = mtime.is_some()
                && state
                    .pending
                    .as_ref()
                    .is_some_and(|(b, m)| *b == bytes && *m == mtime);
            if !agrees {
                state.pending = Some((bytes, mtime));
                return None;
            }
            let left_alone = mtime.is_some_and(|m| {
                SystemTime::now()
                    .duration_since(m)
                    .map_or(true, |age| age >= SETTLE_AGE)
            });
            if !left_alone {
                return None;
            }
        }
        state.pending = None;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        state.last = Some(bytes);
        Some(text)
    }

    /// The content and the modification time, `None` for the time when it moved during the read
    /// (a write in progress) or the file system has none.
    fn read_with_mtime(&self) -> std::io::Result<(Vec<u8>, Option<SystemTime>)> {
        let mtime = || {
            std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok()
        };
        let before = mtime();
        let bytes = std::fs::read(&self.path)?;
        let after = mtime();
        Ok((bytes, before.filter(|b| Some(*b) == after)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_change_once_and_survives_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let f = WatchedFile::new(dir.path().join("w"), "test");
        assert_eq!(f.changed(), None, "missing file");
        std::fs::write(f.path(), "a").unwrap();
        assert_eq!(f.changed().as_deref(), Some("a"));
        assert_eq!(f.changed(), None, "unchanged");
        std::fs::write(f.path(), "b").unwrap();
        assert_eq!(f.changed().as_deref(), Some("b"), "same size, new content");
        std::fs::remove_file(f.path()).unwrap();
        assert_eq!(f.changed(), None);
        std::fs::write(f.path(), "b").unwrap();
        assert_eq!(f.changed(), None, "back with the same content: nothing new");
    }

    /// Writes `text` as if that happened `ago` before now.
    fn write_aged(path: &Path, text: &str, ago: std::time::Duration) {
        std::fs::write(path, text).unwrap();
        age(path, ago);
    }

    fn age(path: &Path, ago: std::time::Duration) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - ago).unwrap();
    }

    #[test]
    fn a_settled_file_reports_a_change_once_two_reads_agree_and_it_was_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let f = WatchedFile::settled(dir.path().join("w"), "test");
        let old = SETTLE_AGE * 2;
        write_aged(f.path(), "a", old);
        assert_eq!(f.read_settled_now().as_deref(), Some("a"));
        write_aged(f.path(), "", old);
        assert_eq!(f.changed(), None, "truncated, seen once");
        write_aged(f.path(), "a\nb", old);
        assert_eq!(f.changed(), None, "changed again: still being written");
        assert_eq!(f.changed().as_deref(), Some("a\nb"), "two reads agree");
        assert_eq!(f.changed(), None);
        write_aged(f.path(), "c", old);
        assert_eq!(f.changed(), None);
        write_aged(f.path(), "a\nb", old);
        assert_eq!(f.changed(), None, "back to what is in force");
        // The same half-written content seen twice, but written anew in between (a writer
        // rewriting in place in step with the polls): not settled.
        write_aged(f.path(), "a\n", old);
        assert_eq!(f.changed(), None);
        write_aged(f.path(), "a\n", old / 2);
        assert_eq!(f.changed(), None, "rewritten between the two reads");
        // Two reads agree, but it was written a moment ago (a writer pausing mid-write).
        std::fs::write(f.path(), "x\n").unwrap();
        assert_eq!(f.changed(), None);
        assert_eq!(
            f.changed(),
            None,
            "agreeing reads of a file written just now"
        );
        age(f.path(), old);
        assert_eq!(f.changed(), None, "its mtime moved: a new first read");
        assert_eq!(f.changed().as_deref(), Some("x\n"), "left alone: settled");
    }
}
