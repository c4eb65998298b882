//! One single-threaded proxy service per core, all accepting on the same listening sockets —
//! nginx's worker model on Pingora.
//!
//! Why: Pingora runs a service with `threads = N` on one runtime whose threads share work. On a
//! small machine that costs more than it brings: a connection accepted by one thread is served
//! by whichever thread its readiness wakes, pooled upstream connections and their idle watchers
//! move between threads, and every hop is a cross-thread wake-up (an `eventfd` write). Measured on
//! 2 cores, a bare Pingora proxy gains nothing from a second thread (bench/README.md). With one
//! service per core, each on a single-threaded runtime with its own proxy app — and so its own
//! upstream connection pool — a connection, its request and its upstream connection stay on one
//! thread from accept to the last byte.
//!
//! How the sockets are shared: Pingora keeps the listening sockets in one table keyed by address
//! (`ListenFds`), hands that table to every service, and sends it to the new process on a
//! graceful upgrade (`-u`). Two services that listen on the same address would both wrap the
//! table's file descriptor and both close it at shutdown — the second close can hit an unrelated
//! descriptor that reused the number (cloudflare/pingora PR #990). [`PerCore`] avoids that: it
//! owns the one real socket per address (binding it, or adopting the one a previous process
//! handed over, and entering it in the shared table so the next upgrade sends it on), and gives
//! each service a private table holding its own `dup(2)` of it. Each service then owns, and
//! closes, exactly its own descriptor. All dups are the same kernel socket, so there is one accept
//! queue: whichever idle thread wakes first accepts, and the upgrade hand-over is the ordinary
//! one whatever the number of threads before and after.
//!
//! SO_REUSEPORT (one socket per thread, the kernel spreading connections) was the alternative; it
//! was not taken because each socket has its own accept queue and the upgrade table holds one
//! descriptor per address: a new process with fewer threads than the old one would drop the
//! connections waiting in the queues it did not take over.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use async_trait::async_trait;
use log::{error, info};
use parking_lot::Mutex;
use pingora::listeners::TcpSocketOptions;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};

/// Same backlog as Pingora's own listeners (`LISTENER_BACKLOG` in pingora-core's `l4.rs`).
const BACKLOG: i32 = 65_535;

/// One listening address as Pingora keys it (`"0.0.0.0:8080"`, `"[::]:443"`) and the options
/// that matter when binding it.
#[derive(Clone, Debug)]
pub struct SocketSpec {
    pub addr: String,
    pub options: Option<TcpSocketOptions>,
}

/// The real listening sockets, shared by every per-core service of one process.
#[derive(Default)]
pub struct SharedSockets {
    /// Address → the socket this process owns (bound here or adopted from the old process).
    owned: Mutex<HashMap<String, OwnedFd>>,
}

impl SharedSockets {
    /// Closes this process's own copy of every socket: once the services stop accepting (their
    /// dups are closed by Pingora), the kernel refuses new connections instead of queueing them
    /// in a backlog nobody reads. A new process (`-u`) got its own copies before this.
    fn close_all(&self) {
        self.owned.lock().clear();
    }

    /// A private fd table for one service: a `dup` of the real socket of every address in
    /// `specs`. The real sockets are bound (or adopted from `real`, the table Pingora passes
    /// between processes) on first use, and entered in `real`.
    fn private_table(&self, real: &ListenFds, specs: &[SocketSpec]) -> std::io::Result<ListenFds> {
        let mut owned = self.owned.lock();
        let mut private = pingora::server::Fds::new();
        for spec in specs {
            if !owned.contains_key(&spec.addr) {
                // Looked up first: a guard in the `match` scrutinee would live through the
                // arms, and `add` below would deadlock on it.
                let inherited = real.lock().get(&spec.addr).copied();
                let fd = match inherited {
                    // Handed over by the previous process: this process owns it from now on.
                    // SAFETY: Pingora received this descriptor for us and nobody else wraps it
                    // (every service of ours gets a dup instead).
                    Some(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                    None => {
                        let fd = bind(spec)?;
                        real.lock().add(spec.addr.clone(), fd.as_raw_fd());
                        fd
                    }
                };
                owned.insert(spec.addr.clone(), fd);
            }
            let fd = owned
                .get(&spec.addr)
                .ok_or_else(|| std::io::Error::other("socket vanished"))?;
            // The service's listener takes ownership of this descriptor and closes it.
            let dup: RawFd = fd.try_clone()?.into_raw_fd();
            private.add(spec.addr.clone(), dup);
        }
        Ok(Arc::new(Mutex::new(private)))
    }
}

/// Binds a listening TCP socket the way Pingora does (`SO_REUSEADDR`, backlog 65535,
/// `IPV6_V6ONLY` when asked), non-blocking. (Pingora's other socket options apply to accepted
/// connections, which the service itself handles.)
fn bind(spec: &SocketSpec) -> std::io::Result<OwnedFd> {
    use socket2::{Domain, Socket, Type};
    let addr: std::net::SocketAddr = spec
        .addr
        .parse()
        .map_err(|_| std::io::Error::other(format!("not an ip:port: {}", spec.addr)))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if let Some(opts) = &spec.options {
        if let (Some(v6only), true) = (opts.ipv6_only, addr.is_ipv6()) {
            socket.set_only_v6(v6only)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(OwnedFd::from(socket))
}

/// A Pingora service that runs on its own single-threaded runtime and listens on a private
/// `dup` of the shared sockets (see the module docs).
pub struct PerCore<S> {
    inner: S,
    specs: Vec<SocketSpec>,
    sockets: Arc<SharedSockets>,
}

impl<S> PerCore<S> {
    /// `inner` must listen on exactly the addresses of `specs` (with their options).
    pub fn new(inner: S, specs: Vec<SocketSpec>, sockets: Arc<SharedSockets>) -> Self {
        Self {
            inner,
            specs,
            sockets,
        }
    }
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for PerCore<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        let private = match &fds {
            Some(real) => match self.sockets.private_table(real, &self.specs) {
                Ok(p) => Some(p),
                Err(e) => {
                    // Pingora's own listeners panic here ("Failed to build listeners"); a
                    // clear line and no listener is the same outcome, said plainly.
                    error!("{}: cannot listen: {e}", self.inner.name());
                    return;
                }
            },
            None => None,
        };
        info!(
            "{}: listening on {:?}",
            self.inner.name(),
            self.specs.iter().map(|s| &s.addr).collect::<Vec<_>>()
        );
        // At shutdown this process's copies of the sockets are closed too (Pingora's own
        // listeners close theirs then), not when the services are dropped after the linger.
        let sockets = self.sockets.clone();
        let mut watch = shutdown.clone();
        tokio::spawn(async move {
            while !*watch.borrow() {
                if watch.changed().await.is_err() {
                    return;
                }
            }
            sockets.close_all();
        });
        self.inner
            .start_service(private, shutdown, listeners_per_fd, ready_notifier)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}
