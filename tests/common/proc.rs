//! The real graysplit binary with a generated config in a temp dir, killed on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
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
    /// The current process (changes with [`Graysplit::adopt`]). Declared before `dir`: fields
    /// drop in order, so the process is killed before its directory goes.
    current: Proc,
    pub dir: tempfile::TempDir,
}

/// `[server]` keys a test may change; everything else is fixed by [`Graysplit::start`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub grace_period: &'static str,
    pub graceful_shutdown_timeout: &'static str,
    /// Extra environment for the process (e.g. `GRAYSPLIT_PIN_SECRETS`).
    pub env: Vec<(&'static str, String)>,
    /// The admin listener's IP (its port is always a fresh one), e.g. "0.0.0.0".
    pub admin_ip: &'static str,
    /// More `[server]` lines (e.g. `request_id_header = "X-Trace"`).
    pub server_extra: String,
    /// More `server.listen` entries after the plain one on [`Graysplit::listen`], as TOML (an
    /// address string or an inline table such as `{ addr = "127.0.0.1:8443", tls = true }`).
    /// Start waits for the plain one only: wait for these yourself (Pingora binds them after it).
    pub extra_listeners: Vec<String>,
    /// `server.debug_headers` as TOML. Tests read `X-Graysplit-Pool`/`-Reason` for clients named
    /// by X-Forwarded-For, so the harness shows them to everyone (`"true"`); `None` leaves the
    /// key out (the shipped default: local clients only).
    pub debug_headers: Option<&'static str>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            grace_period: "1s",
            graceful_shutdown_timeout: "1s",
            env: Vec::new(),
            admin_ip: "127.0.0.1",
            server_extra: String::new(),
            extra_listeners: Vec::new(),
            debug_headers: Some("true"),
        }
    }
}

impl Graysplit {
    /// Writes `graysplit.toml` into a temp dir with fresh ports and the given extra TOML
    /// (pool sections etc.), writes `files` next to it, starts the binary and waits until both
    /// listeners answer.
    pub fn start(extra_toml: &str, files: &[(&str, &str)]) -> Graysplit {
        Self::start_with(&ServerOptions::default(), extra_toml, files)
    }

    /// As [`Graysplit::start`], with other `[server]` timings or environment.
    pub fn start_with(opts: &ServerOptions, extra_toml: &str, files: &[(&str, &str)]) -> Graysplit {
        // A port from `free_port` can be taken by a parallel test before we bind it; then the
        // process exits at once and we try again with fresh ports.
        let mut last_log = String::new();
        for _ in 0..3 {
            match Self::try_start(opts, extra_toml, files) {
                Ok(g) => return g,
                Err(log) => last_log = log,
            }
        }
        panic!("graysplit did not start:\n{last_log}");
    }

    fn try_start(
        opts: &ServerOptions,
        extra_toml: &str,
        files: &[(&str, &str)],
    ) -> Result<Graysplit, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write file");
        }
        let listen = super::free_addr();
        let admin_ip: std::net::IpAddr = opts.admin_ip.parse().expect("admin_ip");
        let admin = SocketAddr::new(admin_ip, super::free_port());
        let d = dir.path().display();
        // The single-string form unless there are more (both forms stay in use).
        let listen_toml = if opts.extra_listeners.is_empty() {
            format!("\"{listen}\"")
        } else {
            let all: Vec<String> = std::iter::once(format!("\"{listen}\""))
                .chain(opts.extra_listeners.iter().cloned())
                .collect();
            format!("[{}]", all.join(", "))
        };
        let debug = opts
            .debug_headers
            .map(|v| format!("debug_headers = {v}\n"))
            .unwrap_or_default();
        let conf = format!(
            "[server]\nlisten = {listen_toml}\nadmin_listen = \"{admin}\"\nthreads = 2\n\
             pid_file = \"{d}/graysplit.pid\"\nupgrade_sock = \"{d}/upgrade.sock\"\n\
             grace_period = \"{}\"\ngraceful_shutdown_timeout = \"{}\"\n{debug}{}\n\n{extra_toml}\n",
            opts.grace_period, opts.graceful_shutdown_timeout, opts.server_extra
        );
        std::fs::write(dir.path().join("graysplit.toml"), conf).expect("write config");
        let current = Proc::spawn(&[], dir.path(), "graysplit", opts);
        let mut g = Graysplit {
            listen,
            admin,
            dir,
            current,
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
            if self.current.exited().is_some() {
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

    /// The log (stderr) of the current process.
    pub fn log(&self) -> String {
        self.current.log()
    }

    /// The access-log lines in the process's output so far (the shipped `graysplit` format).
    pub fn access_lines(&self) -> Vec<String> {
        access_lines(&self.log())
    }

    /// The current process's pid.
    pub fn pid(&self) -> u32 {
        self.current.pid()
    }

    /// Sends `signal` (`libc::SIGTERM`, `SIGQUIT`, ...) to the current process.
    pub fn signal(&self, signal: libc::c_int) {
        self.current.signal(signal);
    }

    /// Waits up to `timeout` for the current process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.current.wait_exit(timeout)
    }

    /// Starts a second graysplit on the same config with `-u` (Pingora's graceful upgrade) and
    /// `opts.env`, logging to `<name>.log` in the same dir. Pingora's order: the new process
    /// builds everything, then listens on `upgrade_sock` and waits (about 5 s) for the old
    /// process's sockets; returns once that socket exists, so the caller can send `SIGQUIT` to
    /// the old process (which then sends its listening sockets over).
    pub fn spawn_upgrade(&self, name: &str, opts: &ServerOptions) -> Proc {
        let mut p = Proc::spawn(&["-u"], self.dir.path(), name, opts);
        let sock = self.path("upgrade.sock");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !sock.exists() {
            if let Some(status) = p.exited() {
                panic!(
                    "graysplit -u exited ({status}) before waiting for sockets:\n{}",
                    p.log()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "graysplit -u made no upgrade socket in 15s:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    }

    /// Makes `next` (from [`Graysplit::spawn_upgrade`]) the current process and returns the
    /// previous one, still killed when dropped.
    pub fn adopt(&mut self, next: Proc) -> Proc {
        std::mem::replace(&mut self.current, next)
    }
}

/// One graysplit process on the config in its directory, logging to `<name>.log` there; killed
/// on drop.
pub struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// `graysplit <args> -c <dir>/graysplit.toml`, with `opts.env`.
    fn spawn(args: &[&str], dir: &Path, name: &str, opts: &ServerOptions) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .args(args)
            .arg("-c")
            .arg(dir.join("graysplit.toml"))
            // GRAYSPLIT_TEST_LOG=debug: the processes under test log at another level.
            .env(
                "RUST_LOG",
                std::env::var("GRAYSPLIT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn graysplit");
        Proc { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: libc::c_int) {
        send_signal(self.child.id(), signal);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }

    /// `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The access-log lines of a process log: nginx's combined line followed by ` pool=…` (the
/// shipped `access_log.format = "graysplit"`), written to standard error by the log's writer.
pub fn access_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("\" pool="))
        .map(str::to_string)
        .collect()
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill(pid, signal)` for one process we started (never a process group).
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    assert!(pid > 0, "refusing to signal pid {pid}");
    // SAFETY: kill(2) has no memory-safety preconditions; pid is a single positive pid.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

/// Polls `child` until it exits or `timeout` passes (`None`).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
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
