//! Process lifecycle: knowing, on the request path, that this process is on its way out.
//!
//! Pingora tells services about a shutdown through its `ShutdownWatch`, but only once the old
//! process stops accepting: on `SIGQUIT` (graceful upgrade) that is after it has handed its
//! listening sockets to the new process *and* waited another 5 s (Pingora's `CLOSE_TIMEOUT`), and
//! at that moment Pingora drops every idle keep-alive connection at once. A client that reuses
//! such a connection in that instant sees its request fail (the server closed it as the request
//! arrived), which is HTTP/1.1's idle-close race.
//!
//! [`DrainWatch`] follows Pingora's execution phases instead, so [`Draining`] is set the moment the
//! signal arrives. From then on the proxy answers every request with `Connection: close`
//! (`proxy::GraySplit::response_filter`): each busy keep-alive connection is closed cleanly after
//! its next answer, and the client's next request opens a new connection, which the shared
//! listening socket hands to whichever process accepts, the new one as soon as it is up. By the
//! time Pingora drops idle connections, only connections idle for the whole hand-over are left.
//!
//! [`Lingering`] covers the other edge: when the old process stops accepting, Pingora at once
//! wakes and drops every connection waiting for a request, including one it accepted a moment
//! ago whose first request is still on its way, which the client then sees fail. Wrapping the
//! proxy app, it holds that wake-up back for a short linger (within `grace_period`, which Pingora
//! waits anyway): requests that arrive meanwhile are served, with `Connection: close`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::info;
use parking_lot::Mutex;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::server::{ExecutionPhase, ShutdownWatch};
use tokio::sync::broadcast;

/// Set once this process has been told to stop (`SIGTERM`) or to hand over (`SIGQUIT`).
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Returns `true` the first time.
    pub fn set(&self) -> bool {
        !self.0.swap(true, Ordering::Relaxed)
    }
}

/// Background service: sets [`Draining`] from Pingora's execution phases (subscribe before
/// `run_forever`, see [`DrainWatch::new`]).
pub struct DrainWatch {
    phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
    draining: Draining,
}

impl DrainWatch {
    pub fn new(phases: broadcast::Receiver<ExecutionPhase>, draining: Draining) -> Self {
        Self {
            phases: Mutex::new(Some(phases)),
            draining,
        }
    }

    fn on_phase(&self, phase: &ExecutionPhase) {
        let why = match phase {
            ExecutionPhase::GracefulUpgradeTransferringFds
            | ExecutionPhase::GracefulUpgradeCloseTimeout => "SIGQUIT (graceful upgrade)",
            ExecutionPhase::GracefulTerminate => "SIGTERM",
            ExecutionPhase::ShutdownStarted
            | ExecutionPhase::ShutdownGracePeriod
            | ExecutionPhase::ShutdownRuntimes
            | ExecutionPhase::Terminated => "shutdown",
            _ => return,
        };
        self.drain(why);
    }

    fn drain(&self, why: &str) {
        if self.draining.set() {
            info!("{why}: draining, every answer now carries `Connection: close`");
        }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for DrainWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().take() else {
            return;
        };
        loop {
            tokio::select! {
                phase = phases.recv() => match phase {
                    Ok(phase) => self.on_phase(&phase),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = shutdown.changed() => {
                    self.drain("shutdown");
                    return;
                }
            }
        }
    }
}

/// How long [`Lingering`] holds back dropping waiting connections: half the grace period, at
/// most 2 s (Pingora ends the process `grace_period` after the shutdown starts).
pub fn linger_for(grace_period: Duration) -> Duration {
    (grace_period / 2).min(Duration::from_secs(2))
}

/// An HTTP app (the proxy) whose shutdown clean-up, which drops every connection waiting for a
/// request, waits `linger` first. Everything else is the wrapped app's.
pub struct Lingering<A> {
    pub app: Arc<A>,
    pub linger: Duration,
}

#[async_trait::async_trait]
impl<A> HttpServerApp for Lingering<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    // Not `async`: the wrapped app's boxed future is handed on as it is. An `async fn` here
    // would box a second future per request and poll through it on every wake-up.
    fn process_new_http<'app, 'watch, 'fut>(
        self: &'app Arc<Self>,
        session: ServerSession,
        shutdown: &'watch ShutdownWatch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<ReusedHttpStream>> + Send + 'fut>>
    where
        'app: 'fut,
        'watch: 'fut,
        Self: 'fut,
    {
        self.app.process_new_http(session, shutdown)
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.app.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.app.server_options()
    }

    async fn http_cleanup(&self) {
        tokio::time::sleep(self.linger).await;
        self.app.http_cleanup().await;
    }

    async fn process_custom_session(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.app
            .clone()
            .process_custom_session(stream, shutdown)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_that_drain() {
        let (tx, rx) = broadcast::channel(4);
        drop(tx);
        let w = DrainWatch::new(rx, Draining::default());
        w.on_phase(&ExecutionPhase::Running);
        w.on_phase(&ExecutionPhase::BootstrapComplete);
        assert!(!w.draining.is_set());
        w.on_phase(&ExecutionPhase::GracefulUpgradeTransferringFds);
        assert!(w.draining.is_set());
        let w = DrainWatch::new(broadcast::channel(1).1, Draining::default());
        w.on_phase(&ExecutionPhase::GracefulTerminate);
        assert!(w.draining.is_set());
    }

    #[test]
    fn linger_stays_inside_the_grace_period() {
        assert_eq!(
            linger_for(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(linger_for(Duration::from_secs(5)), Duration::from_secs(2));
        assert_eq!(linger_for(Duration::ZERO), Duration::ZERO);
    }
}
