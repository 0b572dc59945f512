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

/// SIGINT and SIGTERM, caught from the moment [`signals`] returns (not from the first poll, as
/// with `tokio::signal::ctrl_c`): a signal that comes while the server is starting still shuts
/// it down gracefully instead of killing it.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

/// Starts catching SIGINT and SIGTERM (inside a tokio runtime).
pub fn signals() -> Signals {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            int: signal(SignalKind::interrupt()).expect("installing a SIGINT handler works on unix; qed"),
            term: signal(SignalKind::terminate()).expect("installing a SIGTERM handler works on unix; qed"),
        }
    }
    #[cfg(not(unix))]
    Signals {}
}

impl Signals {
    /// Resolves on the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    signals().recv().await
}
