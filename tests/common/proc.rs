//! The real graysplit binary with a generated config in a temp dir, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_graysplit");

/// Runs `graysplit <args>` to completion (for `-t`).
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run graysplit")
}

pub struct Graysplit {
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Graysplit {
    /// Writes `graysplit.toml` into a temp dir with fresh ports and the given extra TOML
    /// (pool sections etc.), writes `files` next to it, starts the binary and waits until both
    /// listeners answer.
    pub fn start(extra_toml: &str, files: &[(&str, &str)]) -> Graysplit {
        // A port from `free_port` can be taken by a parallel test before we bind it; then the
        // process exits at once and we try again with fresh ports.
        let mut last_log = String::new();
        for _ in 0..3 {
            match Self::try_start(extra_toml, files) {
                Ok(g) => return g,
                Err(log) => last_log = log,
            }
        }
        panic!("graysplit did not start:\n{last_log}");
    }

    fn try_start(extra_toml: &str, files: &[(&str, &str)]) -> Result<Graysplit, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write file");
        }
        let listen = super::free_addr();
        let admin = super::free_addr();
        let d = dir.path().display();
        let conf = format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\nthreads = 2\n\
             pid_file = \"{d}/graysplit.pid\"\nupgrade_sock = \"{d}/upgrade.sock\"\n\
             grace_period = \"1s\"\ngraceful_shutdown_timeout = \"1s\"\n\n{extra_toml}\n"
        );
        std::fs::write(dir.path().join("graysplit.toml"), conf).expect("write config");
        let log = std::fs::File::create(dir.path().join("graysplit.log")).expect("log file");
        let child = Command::new(BIN)
            .arg("-c")
            .arg(dir.path().join("graysplit.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn graysplit");
        let mut g = Graysplit {
            listen,
            admin,
            dir,
            child,
        };
        match g.wait_ready() {
            Ok(()) => Ok(g),
            Err(()) => Err(g.log()),
        }
    }

    fn wait_ready(&mut self) -> Result<(), ()> {
        let url = format!("http://{}/healthz", self.admin);
        let listen = self.listen;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(());
            }
            if http_get_status(&url) == Some(200) && std::net::TcpStream::connect(listen).is_ok() {
                return Ok(());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "graysplit not listening after 15s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces a file atomically (as an editor or config tool would).
    pub fn write_file(&self, name: &str, text: &str) {
        write_atomically(&self.path(name), text);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("graysplit.log")).unwrap_or_default()
    }
}

pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Minimal blocking GET used only for readiness (no runtime needed).
fn http_get_status(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for Graysplit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
