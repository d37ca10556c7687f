//! The controller's long-running tasks: each runs in its own named span and stops when the
//! shutdown token is cancelled.

use std::future::Future;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, warn};

use crate::Result;
use crate::members::member::reconnect_backoff;

/// The set of running tasks, all stopped by one token.
pub(crate) struct Tasks {
    set: JoinSet<()>,
    shutdown: CancellationToken,
}

impl Tasks {
    /// An empty set whose tasks stop when `shutdown` is cancelled.
    pub(crate) fn new(shutdown: CancellationToken) -> Self {
        Self {
            set: JoinSet::new(),
            shutdown,
        }
    }

    /// A token cancelled with the set's, for tasks that stop gracefully on their own.
    pub(crate) fn token(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// Runs `task` inside `span` until it ends or shutdown is cancelled.
    pub(crate) fn spawn(&mut self, span: Span, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.token();
        self.set.spawn(
            async move {
                stop.run_until_cancelled(task).await;
            }
            .instrument(span),
        );
    }

    /// Waits until every task has stopped.
    pub(crate) async fn join(mut self) {
        while self.set.join_next().await.is_some() {}
    }
}

/// Retries `f` with backoff until it succeeds (the own API server may start after us).
pub(crate) async fn retry<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let backoff = reconnect_backoff().build();
    let delays = backoff.chain(std::iter::repeat(Duration::from_secs(10)));
    retry_after(what, delays, f).await
}

/// Retries `f` until it succeeds, sleeping the next of `delays` after each failure, which
/// is logged as `what`.
pub(crate) async fn retry_after<T, F, Fut>(
    what: &str,
    mut delays: impl Iterator<Item = Duration>,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                warn!(error = %e, "{what} failed, retrying");
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tokio::time::sleep(delay).await;
            }
        }
    }
}
