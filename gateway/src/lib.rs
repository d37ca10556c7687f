//! Meridian's east-west gateway.
//!
//! Every member cluster runs one. In-cluster clients reach a global service through its
//! outbound listeners (`outbound`); the gateway picks the endpoint with the shared
//! locality engine ([`route`], over health from `health` and `outlier`) and dials it
//! directly when local, or through the owning cluster's gateway over the mTLS HTTP/2
//! CONNECT [`tunnel`] when remote, reusing upstream HTTP connections ([`upstream`]). It
//! follows its controller's snapshots, each turned into a [`routing`] table,
//! keeps serving the last one while the controller is away, obtains and renews its
//! certificate (`identity`), and reports on the `admin` listener.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Public: what the binary (`config`) and the fuzz targets (fuzz/) drive directly.
pub mod config;
pub mod dataplane;
pub mod limits;
pub mod metrics;
pub mod route;
pub mod routing;
pub mod tunnel;
pub mod upstream;

mod address_map;
mod admin;
mod dial;
mod error;
mod health;
mod identity;
mod outbound;
mod outlier;
mod splice;
mod workers;

pub use crate::address_map::AddressMap;
pub use crate::dial::{DialError, Io};
pub use crate::health::Health;
pub use crate::outlier::{EndpointKey, Outcome};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meridian_api::channel::ControllerEndpoint;
use meridian_api::resources::Resources;
use meridian_api::signal::Shutdown;
use meridian_api::subscription::{ResourcesReceiver, Subscription};
use meridian_identity::tls::CredentialReceiver;
use meridian_identity::{Identity, tls};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

use crate::admin::AdminState;
use crate::config::Config;
use crate::dataplane::{Dataplane, Settings};
use crate::metrics::Metrics;
use crate::outbound::Listeners;
use crate::routing::RoutingTable;
use crate::tunnel::{PeerEvent, Pool};
use crate::workers::Workers;

pub use crate::error::{Error, Result};

/// How often outlier ejections are checked for their end.
const SWEEP_TICK: Duration = Duration::from_millis(200);

/// What the phases of [`run`] share: the data plane, its metrics and the admin state.
struct Gateway {
    metrics: Arc<Metrics>,
    dp: Arc<Dataplane>,
    state: Arc<AdminState>,
}

/// Runs the gateway until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    let (gw, peer_events) = Gateway::new(&config);
    gw.serve_admin(&config, &shutdown).await?;
    // Checked before anything waits on it: a TLS endpoint without a root is a
    // configuration error, not something to retry.
    let signer = signer(&config)?;
    let subscription = subscribe(&config)?;
    gw.spawn_status(&subscription, &shutdown);
    let mut states = subscription.resources();
    let Some(first) = first_state(&config, &mut states, &shutdown).await? else {
        return Ok(());
    };
    let source = certificate_source(&config, signer);
    let identity = gateway_identity(&config, &first)?;
    let Some(credentials) = gw.credentials(&identity, source, &shutdown).await? else {
        return Ok(());
    };
    gw.dp
        .set_table(RoutingTable::from_resources(&config.cluster, first))
        .await;
    gw.serve_tunnel(&config, &credentials, &shutdown).await?;
    let follower = gw.spawn_follower(&config, states, &shutdown)?;
    gw.spawn_peer_events(peer_events, &shutdown);
    gw.spawn_tickers(&config, &shutdown);

    gw.state.ready.store(true, Ordering::Relaxed);
    info!(cluster = %config.cluster, tunnel = %config.tunnel_addr, "gateway ready");
    shutdown.cancelled().await;
    info!("shutting down: draining connections");
    gw.state.ready.store(false, Ordering::Relaxed);
    let _ = follower.await;
    gw.dp.drain(config.drain_timeout).await;
    subscription.shutdown().await;
    info!("gateway stopped");
    Ok(())
}

impl Gateway {
    /// The data plane (empty routing table, no credentials yet) and the admin state; the
    /// receiver of the tunnel pool's peer events.
    fn new(config: &Config) -> (Self, mpsc::UnboundedReceiver<PeerEvent>) {
        let metrics = Arc::new(Metrics::default());
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let pool = Pool::new(
            config.connect_timeout,
            config.tunnel_keepalive,
            metrics.clone(),
            events_tx,
        );
        let dp = Arc::new(Dataplane::new(
            &config.cluster,
            settings(config),
            metrics.clone(),
            pool,
        ));
        let state = Arc::new(AdminState {
            ready: AtomicBool::new(false),
            registry,
            dataplane: dp.clone(),
            credentials: Default::default(),
            controller_connected: AtomicBool::new(false),
            limits: config.admin.limits(),
        });
        let gw = Self { metrics, dp, state };
        (gw, events_rx)
    }

    /// Binds both admin listeners (probes and metrics; the config dump) and serves them.
    async fn serve_admin(&self, config: &Config, shutdown: &Shutdown) -> Result<()> {
        for (addr, endpoints) in [
            (config.admin_addr(), admin::Endpoints::Probes),
            (config.config_dump_addr, admin::Endpoints::All),
        ] {
            let listener = bind("admin", addr).await?;
            tokio::spawn(
                admin::serve(listener, endpoints, self.state.clone(), shutdown.clone())
                    .instrument(info_span!("admin", ?endpoints)),
            );
        }
        Ok(())
    }

    /// Mirrors the controller connection into readiness details and a metric.
    fn spawn_status(&self, subscription: &Subscription, shutdown: &Shutdown) {
        let mut status = subscription.status_changes();
        let state = self.state.clone();
        let metrics = self.metrics.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                loop {
                    let connected = status.borrow_and_update().connected;
                    state
                        .controller_connected
                        .store(connected, Ordering::Relaxed);
                    metrics.controller_connected.set(i64::from(connected));
                    tokio::select! {
                        r = status.changed() => if r.is_err() { break },
                        () = shutdown.cancelled() => break,
                    }
                }
            }
            .instrument(info_span!("controller_status")),
        );
    }

    /// Obtains the first certificate (retrying until shutdown: `None`), publishes it to
    /// the data plane and the admin state, and keeps it renewed.
    async fn credentials(
        &self,
        identity: &Identity,
        source: identity::Source,
        shutdown: &Shutdown,
    ) -> Result<Option<CredentialReceiver>> {
        info!(%identity, "obtaining the gateway certificate");
        let Some(creds) = identity::fetch_until_ok(&source, identity, shutdown).await else {
            return Ok(None);
        };
        identity::observe(&self.metrics, &creds);
        let (store, creds_rx) = tls::watch(creds).map_err(Error::Credentials)?;
        self.dp.set_connector(creds_rx.connector());
        let _ = self.state.credentials.set(creds_rx.clone());
        tokio::spawn(
            identity::renew(
                Arc::new(store),
                creds_rx.clone(),
                source,
                self.metrics.clone(),
                shutdown.clone(),
            )
            .instrument(info_span!("certificates")),
        );
        Ok(Some(creds_rx))
    }

    /// Binds the tunnel listener and serves peer gateways with the current certificate.
    async fn serve_tunnel(
        &self,
        config: &Config,
        credentials: &CredentialReceiver,
        shutdown: &Shutdown,
    ) -> Result<()> {
        let listener = bind("tunnel", config.tunnel_addr).await?;
        tokio::spawn(
            tunnel::server::serve(
                listener,
                credentials.acceptor(),
                self.dp.clone(),
                shutdown.clone(),
            )
            .instrument(info_span!("tunnel")),
        );
        Ok(())
    }

    /// Follows the controller's state: each change applied to the routing table, and
    /// outbound listeners opened or closed to match.
    fn spawn_follower(
        &self,
        config: &Config,
        states: ResourcesReceiver,
        shutdown: &Shutdown,
    ) -> Result<JoinHandle<()>> {
        let workers = Workers::start(config.connection_workers()).map_err(Error::Workers)?;
        info!(workers = workers.len(), "connection workers started");
        let listeners = Listeners::new(config.outbound_bind, workers);
        Ok(tokio::spawn(
            follow(states, self.dp.clone(), listeners, shutdown.clone())
                .instrument(info_span!("snapshots")),
        ))
    }

    /// Applies the tunnel pool's peer liveness changes.
    fn spawn_peer_events(
        &self,
        mut events: mpsc::UnboundedReceiver<PeerEvent>,
        shutdown: &Shutdown,
    ) {
        let dp = self.dp.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                loop {
                    let ev = tokio::select! {
                        ev = events.recv() => ev,
                        () = shutdown.cancelled() => None,
                    };
                    let Some(ev) = ev else { break };
                    dp.peer_event(ev).await;
                }
            }
            .instrument(info_span!("peers")),
        );
    }

    /// The periodic tasks: outlier sweeps, peer probes and (with reuse on) reaping idle
    /// upstream connections.
    fn spawn_tickers(&self, config: &Config, shutdown: &Shutdown) {
        let dp = self.dp.clone();
        spawn_ticker(
            "outlier_sweep",
            SWEEP_TICK,
            shutdown,
            dp.clone(),
            |dp| async move { dp.sweep().await },
        );
        spawn_ticker(
            "peer_probe",
            config.peer_probe_interval,
            shutdown,
            dp.clone(),
            |dp| async move { dp.probe_peers().await },
        );
        if dp.upstreams().settings().reuse() {
            // Idle connections are checked a few times per idle timeout, at most every 5 s.
            let every = (config.upstream_idle_timeout / 4)
                .clamp(Duration::from_millis(50), Duration::from_secs(5));
            spawn_ticker("upstream_reap", every, shutdown, dp, |dp| async move {
                dp.upstreams().reap().await
            });
        }
    }
}

/// The data plane's tunables from the flags.
fn settings(config: &Config) -> Settings {
    Settings {
        max_retries: config.max_retries,
        connect_timeout: config.connect_timeout,
        response_timeout: config.upstream_timeout,
        address_map: config.dial_address_map,
        limits: config.limits(),
        upstream: upstream::Settings {
            idle_timeout: config.upstream_idle_timeout,
            max_idle: config.upstream_max_idle,
        },
    }
}

async fn bind(listener: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        listener,
        addr,
        source,
    })
}

/// The certificate signer's endpoint (`--ca`, default `--controller`).
fn signer(config: &Config) -> Result<ControllerEndpoint> {
    let endpoint = ControllerEndpoint::new(config.ca_endpoint(), config.controller.tls())
        .map_err(Error::Signer)?
        .with_token_file(config.controller.token_file.clone())
        // A blackholed or hung signer fails the attempt (retried with backoff) instead of
        // stalling issuance or renewal.
        .configure(|e| {
            e.connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30))
        });
    Ok(endpoint)
}

/// Starts following the controller's snapshots as this gateway.
fn subscribe(config: &Config) -> Result<Subscription> {
    Subscription::follow(
        &config.controller,
        &config.cluster,
        "gateway",
        &config.instance,
    )
    .map_err(Error::Subscription)
}

/// Waits for the first state; `None` when shutdown comes first.
async fn first_state(
    config: &Config,
    states: &mut ResourcesReceiver,
    shutdown: &Shutdown,
) -> Result<Option<Resources>> {
    info!(controller = %config.controller.url, "waiting for the first snapshot");
    tokio::select! {
        r = states.wait_for(Option::is_some) => {
            let first = r.map_err(|_| Error::SnapshotsClosed)?.clone();
            first.map(Some).ok_or(Error::SnapshotsClosed)
        }
        () = shutdown.cancelled() => Ok(None),
    }
}

/// The gateway's SPIFFE ID: `--trust-domain` (default: the first snapshot's) and
/// `--cluster`.
fn gateway_identity(config: &Config, first: &Resources) -> Result<Identity> {
    let trust_domain = config.trust_domain.clone().unwrap_or_else(|| {
        first
            .header()
            .map(|h| h.trust_domain.clone())
            .unwrap_or_default()
    });
    Identity::gateway(&trust_domain, &config.cluster).map_err(Error::Identity)
}

/// Static files when all three are given, else the controller's signer.
fn certificate_source(config: &Config, signer: ControllerEndpoint) -> identity::Source {
    match (&config.cert_chain, &config.key, &config.root) {
        (Some(chain), Some(key), Some(root)) => identity::Source::Files {
            chain: chain.clone(),
            key: key.clone(),
            root: root.clone(),
        },
        _ => identity::Source::Signer {
            endpoint: Box::new(signer),
            ttl: config.cert_ttl,
        },
    }
}

/// Applies each new state to the routing table in force: only the services it changed
/// are rebuilt ([`RoutingTable::apply`]); listeners are opened or closed to match.
async fn follow(
    mut states: ResourcesReceiver,
    dp: Arc<Dataplane>,
    mut listeners: Listeners,
    shutdown: Shutdown,
) {
    loop {
        let next = states.borrow_and_update().clone();
        if let Some(next) = next {
            let started = tokio::time::Instant::now();
            let (table, changes) = dp.routing().table.apply(next);
            info!(
                version = table.version,
                services = table.services.len(),
                changed = changes.services.len(),
                header = changes.header,
                peers = table.peers.len(),
                apply_us = started.elapsed().as_micros() as u64,
                "applying snapshot"
            );
            listeners.reconcile(&table, &dp, &shutdown).await;
            dp.apply_table(table, &changes).await;
        }
        let closed = tokio::select! {
            r = states.changed() => r.is_err(),
            () = shutdown.cancelled() => break,
        };
        if closed {
            warn!("snapshot channel closed; keeping the last snapshot");
            shutdown.cancelled().await;
            break;
        }
    }
    listeners.close_all();
}

/// Runs `f(dp)` every `every` until shutdown, in a span named after the task.
fn spawn_ticker<F, Fut>(
    name: &'static str,
    every: Duration,
    shutdown: &Shutdown,
    dp: Arc<Dataplane>,
    f: F,
) where
    F: Fn(Arc<Dataplane>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let shutdown = shutdown.clone();
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => f(dp.clone()).await,
                    () = shutdown.cancelled() => break,
                }
            }
        }
        .instrument(info_span!("task", name)),
    );
}
