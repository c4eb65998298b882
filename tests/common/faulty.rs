//! Upstreams that misbehave on command, for the chaos suite.
//!
//! [`FaultyUpstream`] is a real static server (`static-test/<build>`, `X-Served-By` = its own
//! address) behind a TCP relay on 127.0.0.1:0 whose [`Mode`] can be switched at any time — so a
//! server can join a pool healthy (passing its startup check) and go bad while it takes traffic,
//! as real servers do. The mode is applied to every chunk of request bytes, on new and on
//! already-open keep-alive connections:
//!
//! - [`Mode::Normal`]: forwarded at once;
//! - [`Mode::Slow`]: forwarded after a delay (the answer is real, only late);
//! - [`Mode::BlackHole`]: read and never forwarded, the connection held open: a server that
//!   accepts and never answers;
//! - [`Mode::Reset`]: the connection is closed with `SO_LINGER` 0, so the peer gets a TCP RST.
//!
//! Everything runs on its own thread and runtime; dropping the guard stops the listener and
//! closes every connection.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use graysplit::static_site::{self, SiteFiles, StaticSite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::server_thread::ServerThread;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Slow(Duration),
    BlackHole,
    Reset,
}

/// Counters of what the relay did.
#[derive(Debug, Default)]
pub struct FaultStats {
    pub connections: AtomicU64,
    /// Request chunks swallowed in black-hole mode.
    pub held: AtomicU64,
    /// Connections reset.
    pub resets: AtomicU64,
    /// Request chunks forwarded late in slow mode.
    pub delayed: AtomicU64,
}

pub struct FaultyUpstream {
    pub addr: SocketAddr,
    pub site: Arc<StaticSite>,
    pub stats: Arc<FaultStats>,
    mode: Arc<Mutex<Mode>>,
    _server: ServerThread,
}

impl FaultyUpstream {
    /// Serves `static-test/<build>` on 127.0.0.1:0, in `mode`.
    pub fn start(build: &str, mode: Mode) -> FaultyUpstream {
        let front = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let back = std::net::TcpListener::bind("127.0.0.1:0").expect("bind static server");
        let addr = front.local_addr().expect("relay addr");
        let back_addr = back.local_addr().expect("static addr");
        front.set_nonblocking(true).expect("nonblocking");
        back.set_nonblocking(true).expect("nonblocking");
        let files = SiteFiles::from_dir(&super::static_dir(build)).expect("read static-test build");
        // Named after the relay: X-Served-By names the address graysplit knows.
        let site = Arc::new(StaticSite::new(files, addr.to_string()));
        let stats = Arc::new(FaultStats::default());
        let mode = Arc::new(Mutex::new(mode));
        let (served, shared_mode, counters) = (site.clone(), mode.clone(), stats.clone());
        let server = ServerThread::spawn(move || async move {
            let back = TcpListener::from_std(back).expect("tokio listener");
            let front = TcpListener::from_std(front).expect("tokio listener");
            tokio::spawn(static_site::serve(back, served));
            accept_loop(front, back_addr, shared_mode, counters).await;
        });
        FaultyUpstream {
            addr,
            site,
            stats,
            mode,
            _server: server,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().expect("mode lock") = mode;
    }

    /// Requests the real server behind the relay answered (pages, assets and health checks).
    pub fn hits(&self) -> u64 {
        self.site.hits.load(Ordering::Relaxed)
    }

    /// A pools-file line for this server.
    pub fn line(&self, extra: &str) -> String {
        format!("server {} {extra};", self.addr)
    }
}

async fn accept_loop(
    front: TcpListener,
    back: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    stats: Arc<FaultStats>,
) {
    loop {
        let Ok((client, _)) = front.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(relay(client, back, mode.clone(), stats.clone()));
    }
}

/// Sets SO_LINGER {on, 0}: closing the socket then sends RST instead of FIN.
fn linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid open fd and a properly sized `linger` struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt SO_LINGER");
}

async fn relay(
    mut client: TcpStream,
    back: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    stats: Arc<FaultStats>,
) {
    let _ = client.set_nodelay(true);
    let current = || *mode.lock().expect("mode lock");
    if current() == Mode::Reset {
        // Accepted, then reset before a byte is read.
        reset(client, &stats);
        return;
    }
    let Ok(mut server) = TcpStream::connect(back).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    // Borrowed halves: nothing is shut down behind our back (an owned write half sends a FIN
    // when dropped, which would spoil both the black hole and the reset).
    let (mut from_client, mut to_client) = client.split();
    let (mut from_server, mut to_server) = server.split();
    let (mut cbuf, mut sbuf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let fault = loop {
        tokio::select! {
            r = from_client.read(&mut cbuf) => {
                let n = match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                match current() {
                    Mode::Normal => {}
                    Mode::Slow(d) => {
                        stats.delayed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(d).await;
                    }
                    fault => break fault,
                }
                if to_server.write_all(&cbuf[..n]).await.is_err() {
                    return;
                }
            }
            r = from_server.read(&mut sbuf) => {
                let n = match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if to_client.write_all(&sbuf[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    drop(server);
    if fault == Mode::Reset {
        reset(client, &stats);
        return;
    }
    // Black hole: keep reading (and dropping) whatever comes; never answer, never close.
    stats.held.fetch_add(1, Ordering::Relaxed);
    while let Ok(n) = client.read(&mut cbuf).await {
        if n == 0 {
            break;
        }
    }
}

/// Closes `s` with a RST.
fn reset(s: TcpStream, stats: &FaultStats) {
    linger_zero(&s);
    stats.resets.fetch_add(1, Ordering::Relaxed);
    drop(s);
}
