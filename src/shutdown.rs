//! One shutdown signal for the whole node, and a way to wait until every task let go.
//!
//! The server's accept loop, every HTTP connection and every WebSocket connection hold a clone;
//! [`Shutdown::trigger`] (SIGINT, SIGTERM or a test) makes [`Shutdown::triggered`] resolve for
//! all of them, and [`Shutdown::wait_idle`] resolves once every task spawned through
//! [`Shutdown::spawn`] has finished.

use std::future::Future;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The node's shutdown signal and task tracker.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    /// A signal not yet triggered.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts shutting down (idempotent).
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once triggered.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// Spawns a task that shutdown waits for.
    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(f)
    }

    /// Waits until every tracked task has finished (call after [`Shutdown::trigger`]).
    pub async fn wait_idle(&self) {
        self.tasks.close();
        self.tasks.wait().await
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler works on unix; qed");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
