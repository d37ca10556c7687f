//! Meridian's east-west gateway.
//!
//! Every member cluster runs one. In-cluster clients reach a global service through its
//! outbound listeners ([`outbound`]); the gateway picks the endpoint with the shared
//! locality engine ([`route`], over health from [`health`] and [`outlier`]) and dials it
//! directly when local, or through the owning cluster's gateway over the mTLS HTTP/2
//! CONNECT [`tunnel`] when remote, reusing upstream HTTP connections ([`upstream`]). It
//! follows its controller's snapshots, each turned into a [`routing`] table,
//! keeps serving the last one while the controller is away, obtains and renews its
//! certificate ([`identity`]), and reports on the [`admin`] listener.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address_map;
pub mod admin;
pub mod config;
pub mod dataplane;
pub mod health;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod outbound;
pub mod outlier;
pub mod route;
pub mod routing;
pub mod splice;
pub mod tunnel;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use meridian_api::channel::ControllerEndpoint;
use meridian_api::proto::Subscriber;
use meridian_api::subscription::{SnapshotReceiver, Subscription, SubscriptionConfig};
use meridian_identity::{Identity, tls};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::admin::AdminState;
use crate::config::Config;
use crate::dataplane::{Dataplane, Settings};
use crate::metrics::Metrics;
use crate::outbound::Listeners;
use crate::routing::RoutingTable;
use crate::tunnel::Pool;

/// How often outlier ejections are checked for their end.
const SWEEP_TICK: Duration = Duration::from_millis(200);

/// Runs the gateway until `signal` completes, then drains and returns.
pub async fn run(config: Config, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(signal);
    let metrics = Arc::new(Metrics::default());
    let mut registry = Registry::default();
    metrics.register(&mut registry);

    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let pool = Pool::new(
        config.connect_timeout,
        config.tunnel_keepalive,
        metrics.clone(),
        events_tx,
    );
    let settings = Settings {
        max_retries: config.max_retries,
        connect_timeout: config.connect_timeout,
        response_timeout: config.upstream_timeout,
        address_map: config.dial_address_map,
        limits: config.limits(),
        upstream: upstream::Settings {
            idle_timeout: config.upstream_idle_timeout,
            max_idle: config.upstream_max_idle,
        },
    };
    let dp = Arc::new(Dataplane::new(
        &config.cluster,
        settings,
        metrics.clone(),
        pool,
    ));
    let (shutdown_tx, shutdown) = watch::channel(false);

    let state = Arc::new(AdminState {
        ready: AtomicBool::new(false),
        registry,
        dataplane: dp.clone(),
        credentials: Default::default(),
        controller_connected: AtomicBool::new(false),
        limits: config.admin.limits(),
    });
    for (addr, endpoints) in [
        (config.admin_addr(), admin::Endpoints::Probes),
        (config.config_dump_addr, admin::Endpoints::All),
    ] {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the admin listener {addr}"))?;
        tokio::spawn(
            admin::serve(listener, endpoints, state.clone(), shutdown.clone())
                .instrument(info_span!("admin", ?endpoints)),
        );
    }

    // Checked before anything waits on it: a TLS endpoint without a root is a
    // configuration error, not something to retry.
    let signer = ControllerEndpoint::new(config.ca_endpoint(), config.controller.tls())
        .context("the certificate signer endpoint (--ca, --controller)")?
        .with_token_file(config.controller.token_file.clone())
        // A blackholed or hung signer fails the attempt (retried with backoff) instead of
        // stalling issuance or renewal.
        .configure(|e| {
            e.connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(30))
        });
    let mut subscription_config = SubscriptionConfig::new(
        config.controller.url.clone(),
        Subscriber {
            cluster: config.cluster.clone(),
            role: "gateway".into(),
            instance: config.instance.clone(),
        },
    );
    subscription_config.tls = config.controller.tls();
    subscription_config.token_file = config.controller.token_file.clone();
    let subscription =
        Subscription::spawn(subscription_config).context("starting the snapshot subscription")?;
    spawn_status(
        &subscription,
        state.clone(),
        metrics.clone(),
        shutdown.clone(),
    );
    let mut snapshots = subscription.snapshots();
    info!(controller = %config.controller.url, "waiting for the first snapshot");
    let first = tokio::select! {
        r = snapshots.wait_for(Option::is_some) => r.context("snapshot channel closed")?.clone(),
        _ = &mut signal => return Ok(()),
    }
    .context("no snapshot")?;

    let trust_domain = config
        .trust_domain
        .clone()
        .unwrap_or_else(|| first.trust_domain.clone());
    let identity = Identity::gateway(&trust_domain, &config.cluster)
        .context("the gateway identity (check --trust-domain and --cluster)")?;
    let source = match (&config.cert_chain, &config.key, &config.root) {
        (Some(chain), Some(key), Some(root)) => identity::Source::Files {
            chain: chain.clone(),
            key: key.clone(),
            root: root.clone(),
        },
        _ => identity::Source::Signer {
            endpoint: Box::new(signer),
            ttl: config.cert_ttl,
        },
    };
    info!(%identity, "obtaining the gateway certificate");
    let mut fetch_shutdown = shutdown.clone();
    let creds = tokio::select! {
        c = identity::fetch_until_ok(&source, &identity, &mut fetch_shutdown) => c,
        _ = &mut signal => None,
    };
    let Some(creds) = creds else { return Ok(()) };
    identity::observe(&metrics, &creds);
    let (store, creds_rx) = tls::watch(creds)?;
    dp.set_connector(creds_rx.connector());
    let _ = state.credentials.set(creds_rx.clone());
    tokio::spawn(
        identity::renew(
            Arc::new(store),
            creds_rx.clone(),
            source,
            metrics.clone(),
            shutdown.clone(),
        )
        .instrument(info_span!("certificates")),
    );

    dp.set_table(RoutingTable::build(&config.cluster, first.clone()))
        .await;

    let tunnel_listener = TcpListener::bind(config.tunnel_addr)
        .await
        .with_context(|| format!("binding the tunnel listener {}", config.tunnel_addr))?;
    tokio::spawn(
        tunnel::server::serve(
            tunnel_listener,
            creds_rx.acceptor(),
            dp.clone(),
            shutdown.clone(),
        )
        .instrument(info_span!("tunnel")),
    );

    let listeners = Listeners::new(config.outbound_bind);
    let follower = tokio::spawn(
        follow(snapshots, dp.clone(), listeners, shutdown.clone())
            .instrument(info_span!("snapshots")),
    );
    {
        let dp = dp.clone();
        tokio::spawn(
            async move {
                while let Some(ev) = events_rx.recv().await {
                    dp.peer_event(ev).await;
                }
            }
            .instrument(info_span!("peers")),
        );
    }
    spawn_ticker("outlier_sweep", SWEEP_TICK, shutdown.clone(), {
        let dp = dp.clone();
        move || {
            let dp = dp.clone();
            async move { dp.sweep().await }
        }
    });
    spawn_ticker(
        "peer_probe",
        config.peer_probe_interval,
        shutdown.clone(),
        {
            let dp = dp.clone();
            move || {
                let dp = dp.clone();
                async move { dp.probe_peers().await }
            }
        },
    );

    if dp.upstreams().settings().reuse() {
        // Idle connections are checked a few times per idle timeout, at most every 5 s.
        let every = (config.upstream_idle_timeout / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
        spawn_ticker("upstream_reap", every, shutdown.clone(), {
            let dp = dp.clone();
            move || {
                let dp = dp.clone();
                async move { dp.upstreams().reap().await }
            }
        });
    }

    state.ready.store(true, Ordering::Relaxed);
    info!(cluster = %config.cluster, tunnel = %config.tunnel_addr, "gateway ready");

    signal.await;
    info!("shutting down: draining connections");
    state.ready.store(false, Ordering::Relaxed);
    shutdown_tx.send_replace(true);
    let _ = follower.await;
    dp.drain(config.drain_timeout).await;
    subscription.shutdown().await;
    info!("gateway stopped");
    Ok(())
}

/// Resolves once shutdown has been signalled (or the signal is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Applies each new snapshot: a new routing table, and listeners opened or closed to match.
async fn follow(
    mut snapshots: SnapshotReceiver,
    dp: Arc<Dataplane>,
    mut listeners: Listeners,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if let Some(snapshot) = snapshot {
            let table = RoutingTable::build(&dp.cluster, snapshot);
            info!(
                version = table.snapshot.version,
                services = table.services.len(),
                peers = table.peers.len(),
                "applying snapshot"
            );
            listeners.reconcile(&table, &dp, &shutdown).await;
            dp.set_table(table).await;
        }
        let closed = tokio::select! {
            r = snapshots.changed() => r.is_err(),
            _ = crate::stopped(&mut shutdown) => break,
        };
        if closed {
            warn!("snapshot channel closed; keeping the last snapshot");
            crate::stopped(&mut shutdown).await;
            break;
        }
    }
    listeners.close_all();
}

fn spawn_status(
    subscription: &Subscription,
    state: Arc<AdminState>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut status = subscription.status_changes();
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
                    _ = crate::stopped(&mut shutdown) => break,
                }
            }
        }
        .instrument(info_span!("controller_status")),
    );
}

fn spawn_ticker<F, Fut>(
    name: &'static str,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
    f: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => f().await,
                    _ = crate::stopped(&mut shutdown) => break,
                }
            }
        }
        .instrument(info_span!("task", name)),
    );
}
