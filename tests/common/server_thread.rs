//! A test server on its own OS thread and single-threaded runtime, stopped on drop.
//!
//! Each server lives on its own runtime so a test can stop one (a dead server) without touching
//! the others, from sync or async test code alike.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

pub struct ServerThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Runs the future `serve()` makes (on the new runtime, so it may register sockets there)
    /// until it ends or the guard is dropped.
    pub fn spawn<F, Fut>(serve: F) -> ServerThread
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                tokio::select! {
                    _ = serve() => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every task and so closes every socket: the server is
            // really gone.
        });
        ServerThread {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
