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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use log::info;
use parking_lot::Mutex;
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
}
