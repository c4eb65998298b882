//! Python's `http.server` as an upstream: `python3 -m http.server --bind 127.0.0.1 PORT
//! --directory DIR`, killed on drop. Its validator semantics are those of Go's
//! `http.FileServer` and Node's `serve-static` without ETags: `Last-Modified` only, no `ETag`,
//! and `304` whenever the file's mtime is at or before `If-Modified-Since` (checked only when the
//! request has no `If-None-Match`). It logs one line per request to stderr (kept in a file).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct PyServer {
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl PyServer {
    /// Serves `dir` on a free loopback port (retrying with another port if one was taken).
    pub fn serve(dir: &Path) -> PyServer {
        Self::serve_on(dir, None).expect("python3 -m http.server did not start")
    }

    /// Serves `dir` on `addr` (a restarted server), or on a free port when `None`.
    pub fn serve_on(dir: &Path, addr: Option<SocketAddr>) -> Option<PyServer> {
        for _ in 0..3 {
            let addr = addr.unwrap_or_else(super::free_addr);
            let logdir = tempfile::tempdir().expect("tempdir");
            let log = logdir.path().join("http.server.log");
            let stderr = std::fs::File::create(&log).expect("log file");
            let child = Command::new("python3")
                .args(["-u", "-m", "http.server", "--bind", "127.0.0.1"])
                .arg(addr.port().to_string())
                .arg("--directory")
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .expect("python3 is not installed: run scripts/test, which installs it");
            let mut s = PyServer {
                addr,
                child,
                log,
                _logdir: logdir,
            };
            if s.wait_ready() {
                return Some(s);
            }
        }
        None
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false; // e.g. the port was taken
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The request log so far (`"GET / HTTP/1.1" 304 -` lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A pools-file line for this server.
    pub fn line(&self, extra: &str) -> String {
        format!("server {} {extra};", self.addr)
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
