//! The one shutdown model of Meridian's binaries.
//!
//! Every long-running task receives a [`CancellationToken`] (a clone of one root token) and
//! stops when it is cancelled; [`shutdown_on_signal`] cancels the root on SIGTERM (what
//! Kubernetes sends) or Ctrl-C. A task that fails cancels the same token, so one failure
//! stops the whole process in the same orderly way as a signal.

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub use tokio_util::sync::CancellationToken as Shutdown;

/// Returns a root token that is cancelled on the first SIGTERM or Ctrl-C.
///
/// Must be called inside a Tokio runtime: the signal handler runs as a task.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        terminated().await;
        cancel.cancel();
    });
    token
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut sigterm) => {
            tokio::select! {
                _ = sigterm.recv() => info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => info!("interrupt received"),
            }
        }
        Err(error) => {
            // Without SIGTERM only Ctrl-C can stop the process; say so rather than hide it.
            error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
            info!("interrupt received");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sigterm_cancels_the_root_token() {
        let token = shutdown_on_signal();
        let child = token.child_token();
        // Let the handler install itself before the signal is raised.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::TERM)
            .expect("raising SIGTERM");
        tokio::time::timeout(std::time::Duration::from_secs(10), child.cancelled())
            .await
            .expect("the token is cancelled after SIGTERM");
    }
}
