//! A file that is polled for changes: the pools file, the whitelist file, the switches file.
//!
//! Content is compared, not mtimes, so editors that replace the file, tools that rewrite it in
//! place and same-second edits are all seen. A file that cannot be read is reported once, and
//! again once when it is readable; its last content stays in force meanwhile.

use std::path::{Path, PathBuf};

use log::{info, warn};
use parking_lot::Mutex;

#[derive(Debug)]
pub struct WatchedFile {
    path: PathBuf,
    /// What the file is, for log lines (`pool base`, `whitelist`).
    what: String,
    /// Last content seen and whether the last read failed.
    state: Mutex<(Option<Vec<u8>>, bool)>,
}

impl WatchedFile {
    pub fn new(path: PathBuf, what: impl Into<String>) -> Self {
        Self {
            path,
            what: what.into(),
            state: Mutex::new((None, false)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The new content if the file changed since the last call (or on the first call).
    pub fn changed(&self) -> Option<String> {
        let read = std::fs::read(&self.path);
        let mut state = self.state.lock();
        let (last, unreadable) = &mut *state;
        match read {
            Err(e) => {
                if !*unreadable {
                    warn!(
                        "{}: cannot read {}: {e}; keeping what was last read",
                        self.what,
                        self.path.display()
                    );
                    *unreadable = true;
                }
                None
            }
            Ok(bytes) => {
                if *unreadable {
                    info!("{}: {} is readable again", self.what, self.path.display());
                    *unreadable = false;
                }
                if last.as_deref() == Some(bytes.as_slice()) {
                    return None;
                }
                let text = String::from_utf8_lossy(&bytes).into_owned();
                *last = Some(bytes);
                Some(text)
            }
        }
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
}
