//! The small HTTP/1.1 listener every component serves its admin endpoints on (`/metrics`,
//! health, `/config_dump`): one accept loop, so all three binaries back off the same way
//! on accept errors, refuse connections beyond a cap, close clients that are slow to send
//! request headers (slowloris) and drop open connections at shutdown.
//!
//! Where it binds by default is decided here too ([`default_addr`]): the pod IP when the
//! downward API provides one, else loopback, never the unspecified address.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

/// Pause after a failed accept (e.g. out of file descriptors) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Default of [`Limits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default of [`Limits::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of an admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers. Also bounds how long an
    /// idle keep-alive connection is kept: hyper starts the clock when it waits for the
    /// next request.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }
}

/// Why an admin connection was closed by the server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Closed {
    /// `max_connections` (refused on accept) or `header_timeout`.
    pub reason: &'static str,
}

/// Counters of an admin listener, registered by each binary under its own prefix.
#[derive(Debug, Clone, Default)]
pub struct AdminMetrics {
    /// Connections the server closed, by reason.
    pub closed: Family<Closed, Counter>,
}

impl AdminMetrics {
    /// Registers `admin_connections_closed` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "admin_connections_closed",
            "Admin connections closed by the server, by reason (max_connections, header_timeout)",
            self.closed.clone(),
        );
    }

    fn count(&self, reason: &'static str) {
        self.closed.get_or_create(&Closed { reason }).inc();
    }
}

/// The admin listener flags every binary shares.
#[cfg(feature = "clap")]
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// This pod's IP (the downward API's `status.podIP`). Admin listeners whose address
    /// is not given bind to it, else to 127.0.0.1; never to every interface by default.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<IpAddr>,

    /// Admin connections served at once; more are closed on accept and counted in
    /// `admin_connections_closed{reason="max_connections"}`.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub admin_max_connections: usize,

    /// How long an admin client may take to send its request headers (and how long an
    /// idle keep-alive connection is kept); then the connection is closed and counted in
    /// `admin_connections_closed{reason="header_timeout"}`.
    #[arg(long, default_value = "10s", value_parser = crate::policy::parse_duration)]
    pub admin_header_timeout: Duration,
}

#[cfg(feature = "clap")]
impl AdminArgs {
    /// The limits these flags set.
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.admin_max_connections,
            header_timeout: self.admin_header_timeout,
        }
    }

    /// `explicit` if given, else [`default_addr`] on `port`.
    pub fn addr(&self, explicit: Option<SocketAddr>, port: u16) -> SocketAddr {
        explicit.unwrap_or_else(|| default_addr(self.pod_ip, port))
    }
}

/// Where an admin listener binds unless told otherwise: the pod IP (so the kubelet's
/// probes and Prometheus reach it, but not other interfaces of a host-network pod), or
/// loopback outside Kubernetes. An unspecified pod IP is ignored.
pub fn default_addr(pod_ip: Option<IpAddr>, port: u16) -> SocketAddr {
    let ip = pod_ip
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, port)
}

/// Serves `handler` on `listener` within `limits` until `shutdown` completes; connections
/// still open then are dropped.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    handler: F,
    limits: Limits,
    metrics: AdminMetrics,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "admin accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        // Refused by closing at once: an admin client retries, and a flood of idle
        // sockets cannot starve the probes of file descriptors or memory.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("admin connection refused: too many open");
            metrics.count("max_connections");
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let response = handler(request);
                async move { Ok::<_, Infallible>(response.await) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                if error.is_timeout() {
                    metrics.count("header_timeout");
                }
                debug!(%error, "admin connection ended");
            }
        });
    }
}
