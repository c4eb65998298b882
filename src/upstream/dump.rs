//! The dump file of a Consul pool: its last good server list in upsync's format.
//!
//! It does two jobs. At start graysplit loads it before serving, so traffic flows even when
//! Consul is down or slow. And it is valid inside an nginx `upstream {}` block (`include
//! /var/lib/graysplit/base.conf;`), so a rollback to nginx starts with the servers graysplit was
//! using. upsync truncates and rewrites its dump in place; a crash then leaves a half-written
//! file, so we write a temp file in the same directory, fsync it, rename it over the dump and
//! fsync the directory: a reader sees the old or the new file, never a mix.

use std::fs::File;
use std::io::{self, Write as _};
use std::path::Path;

use super::server::ServerSpec;
use super::upsync_format::{self, Parsed};

/// The dump's text: a comment saying where it comes from, then one `server ...;` line each.
pub fn render(pool: &str, prefix: &str, servers: &[ServerSpec]) -> String {
    format!(
        "# graysplit: pool {pool} from Consul prefix {prefix} (rewritten on every change).\n\
         # nginx can `include` this file inside an upstream {{}} block for a rollback.\n{}",
        upsync_format::render(servers)
    )
}

/// Replaces `path` with `text` atomically and durably.
pub fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "dump path has no file name"))?;
    // The pid keeps two graysplit processes (old and new during an upgrade) off each other's
    // temp file; the leading dot keeps globs such as `*.conf` from picking it up.
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Makes the rename itself survive a power loss.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a dump. `Ok(None)` when there is none yet (first start).
pub fn load(path: &Path) -> io::Result<Option<Parsed>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(upsync_format::parse(&text))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_dump_loads_back_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.conf");
        let mut a = ServerSpec::new("10.0.0.1:80".parse().unwrap(), "10.0.0.1:80");
        a.weight = 3;
        a.build = Some("b1".into());
        let mut b = ServerSpec::new("[::1]:81".parse().unwrap(), "[::1]:81");
        b.down = true;
        b.backup = true;
        let text = render("base", "upstreams/base/", &[a.clone(), b.clone()]);
        write_atomically(&path, &text).unwrap();
        let parsed = load(&path).unwrap().unwrap();
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        assert_eq!(parsed.servers, vec![a, b]);
        write_atomically(&path, &render("base", "upstreams/base/", &[])).unwrap();
        assert!(load(&path).unwrap().unwrap().servers.is_empty());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["base.conf"]);
    }

    #[test]
    fn dump_lines_are_what_nginx_accepts() {
        let text = render(
            "base",
            "upstreams/base/",
            &[ServerSpec::new(
                "10.0.0.1:80".parse().unwrap(),
                "10.0.0.1:80",
            )],
        );
        for line in text.lines() {
            assert!(
                line.starts_with('#') || line.starts_with("server ") && line.ends_with(';'),
                "{line}"
            );
        }
    }

    #[test]
    fn missing_dump_is_none_and_unwritable_dir_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(&dir.path().join("none.conf")).unwrap().is_none());
        let err = write_atomically(&dir.path().join("no/such/dir/base.conf"), "x");
        assert!(err.is_err());
    }
}
