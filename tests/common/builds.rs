//! The `static-test` builds copied into temp dirs, with the file times a test needs: real
//! servers (nginx, Python's `http.server`) derive their validators from mtime and size, so two
//! builds with equal mtimes and equal sizes get equal validators — as reproducible builds do.
//!
//! Each copy also gets `/config.js`, a file that is **not** content-hashed and differs between
//! the builds (with the same size): the kind of file that must come from the page's own build.

use std::path::Path;
use std::time::{Duration, SystemTime};

/// A copy of `static-test/<build>` whose files all have mtime `mtime`.
pub struct BuildDir {
    pub dir: tempfile::TempDir,
}

/// A fixed moment well in the past (2026-11-01 00:00:00 UTC), so no "future mtime" logic of a
/// server kicks in.
pub fn base_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_793_491_200)
}

impl BuildDir {
    pub fn new(build: &str, build_id: &str, mtime: SystemTime) -> BuildDir {
        let dir = tempfile::tempdir().expect("tempdir");
        copy(&super::static_dir(build), dir.path());
        std::fs::write(
            dir.path().join("config.js"),
            format!("window.__CONFIG__ = {{ build: \"{build_id}\" }};\n"),
        )
        .expect("write config.js");
        touch_all(dir.path(), mtime);
        BuildDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn copy(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read static-test") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn touch_all(dir: &Path, mtime: SystemTime) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            touch_all(&p, mtime);
        } else {
            std::fs::File::options()
                .write(true)
                .open(&p)
                .and_then(|f| f.set_modified(mtime))
                .expect("set mtime");
        }
    }
}
