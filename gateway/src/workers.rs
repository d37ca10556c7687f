//! Connection workers: threads that each run an event loop of their own (a single-threaded
//! tokio runtime with its own I/O driver and timer). Every client connection an outbound
//! listener accepts is handed to one of them, in turn, and stays there: its requests, its
//! upstream connections and its timers all run on that thread, as with Envoy's workers
//! and HAProxy's threads.
//!
//! Why not the process's multi-threaded runtime: its workers share one I/O driver, which
//! one of them polls at a time while the others sleep, and they hand tasks to each other
//! (work stealing), so a request's wake-ups cross threads. A worker here owns its
//! connections outright: no stealing, no shared driver, no lock on a run queue, and the
//! upstream connections it opens are reused by its own connections only (the pools are
//! per worker, as Envoy's are). Measured on the benchmark (docs/benchmarks.md): 6–9% less
//! CPU per request and 12–18% more requests per second than on the shared runtime. The
//! number of workers is `--workers` (see `Config::connection_workers` for the default).
//!
//! Everything else (the controller stream, the tunnel server, admin, tickers) stays on
//! the main runtime. State shared with the connections (routing, health, the upstream
//! pool, the tunnel pool) is behind `Arc`s and async locks, which work across runtimes.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;
use tracing::{Instrument, debug, warn};

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(MAIN) };
}

/// What [`current`] returns outside the workers (the main runtime, whose threads share
/// one I/O driver).
const MAIN: usize = usize::MAX;

/// The worker this thread is, or a value shared by every thread of the main runtime:
/// connections registered with one event loop are only reused on it.
pub(crate) fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// The connection workers; none means connections run on the caller's runtime.
#[derive(Debug, Default)]
pub(crate) struct Workers {
    handles: Vec<Handle>,
    // Dropping a sender ends its worker's loop once the tasks it is running yield.
    _stop: Vec<oneshot::Sender<()>>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `count` worker threads (0: none).
    pub(crate) fn start(count: usize) -> io::Result<Self> {
        let mut handles = Vec::with_capacity(count);
        let mut stop = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            std::thread::Builder::new()
                .name(format!("gateway-worker-{i}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(i));
                    // Spawned tasks run while this blocks; a stop (or the sender dropped)
                    // ends it, and dropping the runtime cancels what is left.
                    let _ = runtime.block_on(rx);
                    debug!(worker = i, "connection worker stopped");
                })?;
        }
        Ok(Self {
            handles,
            _stop: stop,
            next: AtomicUsize::new(0),
        })
    }

    /// How many workers there are.
    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }

    /// Serves `tcp` with `serve` on the next worker, or on the current runtime when there
    /// are none. The stream moves to the worker's I/O driver. The connection keeps the
    /// workers running until it ends (a drain outlives the listeners).
    pub(crate) fn serve<F, Fut>(self: &Arc<Self>, tcp: TcpStream, span: tracing::Span, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.handles.is_empty() {
            tokio::spawn(serve(tcp).instrument(span));
            return;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        // Registered with this runtime's driver: take it out, register it again there.
        let std = match tcp.into_std() {
            Ok(std) => std,
            Err(error) => {
                warn!(%error, "cannot hand a connection to a worker; closing it");
                return;
            }
        };
        let workers = self.clone();
        self.handles[i].spawn(
            async move {
                let _workers = workers;
                match TcpStream::from_std(std) {
                    Ok(tcp) => serve(tcp).await,
                    Err(error) => warn!(%error, "worker cannot take a connection; closing it"),
                }
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn connections_are_served_in_turn_on_the_worker_threads() {
        let workers = Arc::new(Workers::start(2).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut names = Vec::new();
        for _ in 0..4 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            workers.serve(tcp, tracing::Span::none(), |mut tcp| async move {
                let name = std::thread::current().name().unwrap_or("").to_owned();
                let mut byte = [0];
                tcp.read_exact(&mut byte).await.unwrap();
                // A timer too: the worker's runtime has its own.
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                tcp.write_all(name.as_bytes()).await.unwrap();
            });
            client.write_all(b"x").await.unwrap();
            let mut name = String::new();
            client.read_to_string(&mut name).await.unwrap();
            names.push(name);
        }
        assert_eq!(
            names,
            [
                "gateway-worker-0",
                "gateway-worker-1",
                "gateway-worker-0",
                "gateway-worker-1"
            ]
        );
    }
}
