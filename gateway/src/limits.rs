//! Limits of the gateway's listeners: how many connections each listener and each tunnel
//! peer may hold at once, how many streams a tunnel connection may carry, and how long a
//! client may stay silent (TLS handshake, HTTP request headers, idle splices). Beyond a
//! limit the connection is closed and counted by reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_api::accept::accept_until;
use meridian_api::signal::Shutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::metrics::Metrics;

/// The limits in force (from the flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections one listener (each outbound listener, the tunnel listener) serves at once.
    pub max_connections: usize,
    /// Tunnel connections one peer identity holds at once.
    pub max_peer_connections: usize,
    /// Concurrent HTTP/2 streams one tunnel connection may carry.
    pub max_streams: u32,
    /// How long a tunnel client may take to start and finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// How long an HTTP/1 client may take to send request headers, and how long an idle
    /// keep-alive connection is kept (hyper starts the clock when it waits for a request).
    pub header_timeout: Duration,
    /// How long a spliced TCP connection, tunnel stream or HTTP connection may move no
    /// byte in either direction (zero: no limit).
    pub idle_timeout: Duration,
}

/// A cap on connections held at once: one slot per connection, released when dropped.
#[derive(Debug, Clone)]
pub struct Slots(Arc<Semaphore>);

impl Slots {
    /// At most `max` at once.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max)))
    }

    /// A slot, or `None` when all are taken.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }

    /// The next connection `listener` accepts that gets a slot, or `None` once `shutdown`
    /// is cancelled. A failed accept is logged and retried after a short pause; a
    /// connection beyond the cap is closed at once (so a client that opens too many cannot
    /// starve everyone else of sockets and tasks) and counted against `label`.
    pub(crate) async fn accept(
        &self,
        listener: &TcpListener,
        label: &'static str,
        metrics: &Metrics,
        shutdown: &Shutdown,
    ) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        loop {
            let pause = Duration::from_millis(50);
            let (tcp, remote) =
                accept_until(listener, shutdown.cancelled(), pause, "accept").await?;
            match self.try_acquire() {
                Some(slot) => return Some((tcp, remote, slot)),
                None => {
                    debug!(%remote, "connection refused: listener at --max-connections");
                    metrics.refuse_connection(label, "max_connections");
                }
            }
        }
    }
}

/// A cap on connections held at once by each peer identity.
#[derive(Debug)]
pub struct PeerSlots {
    max: usize,
    /// One entry per identity that ever connected: mesh members only (the handshake
    /// already verified the identity), so the map stays small.
    peers: Mutex<HashMap<String, Slots>>,
}

impl PeerSlots {
    /// At most `max` connections per peer.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            peers: Mutex::default(),
        }
    }

    /// A slot for `peer`, or `None` when it holds `max` connections already.
    pub async fn try_acquire(&self, peer: &str) -> Option<OwnedSemaphorePermit> {
        let slots = self
            .peers
            .lock()
            .await
            .entry(peer.to_owned())
            .or_insert_with(|| Slots::new(self.max))
            .clone();
        slots.try_acquire()
    }
}
