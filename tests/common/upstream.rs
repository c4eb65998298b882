//! Real HTTP upstreams serving `static-test/` builds, each on its own thread and runtime so a
//! test can stop one (simulating a dead server) without touching the others.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use graysplit::static_site::{self, SiteFiles, StaticSite};

use super::server_thread::ServerThread;

pub struct Upstream {
    pub addr: SocketAddr,
    pub site: Arc<StaticSite>,
    _server: ServerThread,
}

impl Upstream {
    /// Serves `static-test/<build>` on 127.0.0.1:0.
    pub fn start(build: &str) -> Upstream {
        Self::start_with(build, |_| {})
    }

    /// As [`Upstream::start`], with a chance to adjust the site (e.g. `spa_fallback`).
    pub fn start_with(build: &str, adjust: impl FnOnce(&mut StaticSite)) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        Self::serve(build, listener, adjust)
    }

    /// Serves on a given address again (a "restarted" server).
    pub fn start_on(build: &str, addr: SocketAddr) -> std::io::Result<Upstream> {
        let listener = std::net::TcpListener::bind(addr)?;
        Ok(Self::serve(build, listener, |_| {}))
    }

    fn serve(
        build: &str,
        listener: std::net::TcpListener,
        adjust: impl FnOnce(&mut StaticSite),
    ) -> Upstream {
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let files = SiteFiles::from_dir(&super::static_dir(build)).expect("read static-test build");
        let mut site = StaticSite::new(files, addr.to_string());
        adjust(&mut site);
        let site = Arc::new(site);
        let served = site.clone();
        let server = ServerThread::spawn(move || async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            static_site::serve(listener, served).await;
        });
        Upstream {
            addr,
            site,
            _server: server,
        }
    }

    pub fn hits(&self) -> u64 {
        self.site.hits.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.site.healthy.store(healthy, Ordering::Relaxed);
    }

    /// A pools-file line for this server.
    pub fn line(&self, extra: &str) -> String {
        format!("server {} {extra};", self.addr)
    }
}

/// An upstream that records the raw request heads it receives and answers `200 ok`.
pub struct CaptureUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl CaptureUpstream {
    pub fn start() -> CaptureUpstream {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (reqs, stopping) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let mut reader = BufReader::new(stream);
                loop {
                    let mut head = String::new();
                    let mut line = String::new();
                    while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                        line.clear();
                    }
                    if head.is_empty() {
                        break;
                    }
                    reqs.lock().expect("lock").push(head);
                    let body = "ok\n";
                    let _ = write!(
                        reader.get_mut(),
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
                        body.len()
                    );
                }
            }
        });
        CaptureUpstream {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// The value of `name` in the last captured request (case-insensitive).
    pub fn last_header(&self, name: &str) -> Option<String> {
        let reqs = self.requests.lock().expect("lock");
        let head = reqs.last()?;
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

impl Drop for CaptureUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
