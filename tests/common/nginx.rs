//! A real Debian nginx (`/usr/sbin/nginx`, installed by `scripts/test`), for tests where nginx's
//! own behaviour matters: it answers `400` to HTTP/1.1 without `Host`, computes ETags from mtime
//! and size, and `nginx -t` rejects what it cannot include (`weight=0`).
//!
//! [`Nginx`] runs one nginx on a free loopback port with a generated config in a temp dir, in
//! the foreground (`daemon off`) and as a single process (`master_process off`), so killing the
//! child stops it entirely; it is killed on drop. [`test_config`] runs `nginx -t` on a config.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The nginx binary: Debian's, unless `NGINX` names another.
pub fn binary() -> PathBuf {
    std::env::var_os("NGINX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    /// Holds nginx.conf, the logs and nginx's temp paths; removed after the process is killed.
    pub dir: tempfile::TempDir,
}

/// The `events {}` and top of `http {}` every generated config shares: everything nginx writes
/// goes into the temp dir, so no test needs `/var/lib/nginx` or `/var/log/nginx`.
fn preamble(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\nevents {{ worker_connections 256; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
         proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         types {{ text/html html; application/javascript js; text/css css; \
         text/plain txt; image/svg+xml svg; }}\n  default_type application/octet-stream;\n"
    )
}

impl Nginx {
    /// Serves `root` as static files on a free port. `server_extra` goes inside `server {}`
    /// (e.g. `"etag off;"`, `"location = /slow { return 503; }"`).
    pub fn serve_dir(root: &Path, server_extra: &str) -> Nginx {
        let root = root.display().to_string();
        Self::start(|port| {
            format!(
                "  server {{\n    listen 127.0.0.1:{port};\n    server_name localhost;\n    \
                 root {root};\n    {server_extra}\n  }}\n"
            )
        })
    }

    /// Starts nginx with the `http {}` contents `servers(port)` returns (one or more `server`
    /// blocks; `port` is the free port to listen on). Retries with a fresh port if another test
    /// took it first.
    pub fn start(servers: impl Fn(u16) -> String) -> Nginx {
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = super::free_port();
            let conf = format!("{}{}}}\n", preamble(dir.path()), servers(port));
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf).expect("write nginx.conf");
            let child = Command::new(binary())
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {} (scripts/test installs nginx): {e}",
                        binary().display()
                    )
                });
            let mut n = Nginx {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child,
                dir,
            };
            if n.wait_ready() {
                return n;
            }
            last = n.error_log();
        }
        panic!("nginx did not start:\n{last}");
    }

    /// Polls until the port accepts; false if nginx exited (e.g. the port was taken).
    fn wait_ready(&mut self) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// nginx's error log so far (for failure messages).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// nginx's access log so far (one line per request it answered).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// A pools-file line for this server.
    pub fn line(&self, extra: &str) -> String {
        format!("server {} {extra};", self.addr)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `nginx -t` on a config whose `http {}` block contains `http_body` (e.g. an `upstream`
/// block that `include`s a graysplit dump). Returns nginx's output: `status.success()` is
/// nginx's verdict, stderr its reasons.
pub fn test_config(http_body: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = format!("{}{http_body}\n}}\n", preamble(dir.path()));
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    Command::new(binary())
        .arg("-t")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (scripts/test installs nginx): {e}",
                binary().display()
            )
        })
}
