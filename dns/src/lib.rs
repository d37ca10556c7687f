//! Meridian's authoritative DNS server for global services.
//!
//! Clients in a member cluster resolve `<svc>.<ns>.global` to this cluster's VIP of the
//! service. The zones are built from the controller's snapshot stream
//! ([`meridian_api::subscription`]) and served by hickory-server:
//!
//! - [`config`]: the flags;
//! - [`zone`]: records of the served zones, built from a snapshot;
//! - [`clusterset`]: the Multi-Cluster Services names (`<svc>.<ns>.svc.clusterset.local`);
//! - [`authority`]: the request handler answering from the current zones, swapped atomically;
//! - [`state`]: the served zones, updated by rebuilding only the services a change touched;
//! - `snapshot`: applies each new snapshot to the authority through the state;
//! - `server`: the UDP and TCP sockets;
//! - [`metrics`] and `admin`: Prometheus metrics and health endpoints;
//! - [`run`]: the server's phases, from binding to the drain on shutdown.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Public: what the binary (`config`), the benches and the fuzz targets (fuzz/) use.
pub mod authority;
pub mod clusterset;
pub mod config;
pub mod metrics;
pub mod state;
pub mod zone;

mod admin;
mod answer_cache;
mod error;
mod names;
mod server;
mod snapshot;
mod udp;

use std::sync::Arc;

use meridian_api::signal::Shutdown;
use meridian_api::subscription::Subscription;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{Instrument, error, info, info_span};

use crate::admin::Admin;
use crate::authority::Authority;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::DnsServer;
use crate::zone::ZoneSettings;

pub use crate::error::{Error, Result};

/// Serves DNS until `shutdown` is cancelled or the DNS sockets fail, then stops every
/// task; a socket failure cancels `shutdown` too and is returned.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let settings = Arc::new(ZoneSettings {
        origins: config.zones.clone(),
        ttl: config.ttl,
        nameserver: config.nameserver.clone(),
        clusterset: Some(config.clusterset_domain.clone()),
    });
    // The `.global` zones and the MCS `clusterset.local` zone share one authority.
    let served: Vec<_> = settings
        .origins
        .iter()
        .chain(settings.clusterset.iter())
        .cloned()
        .collect();
    let authority = Authority::new(&served, metrics.clone());
    let subscription = subscribe(&config)?;
    let mut dns = DnsServer::bind(&config.listen, authority.clone())
        .await
        .map_err(|source| Error::BindDns {
            listen: config.listen.clone(),
            source,
        })?;
    let admin_listener = bind_admin(&config).await?;
    let follower = tokio::spawn(
        snapshot::follow(
            subscription.resources(),
            authority.clone(),
            settings,
            metrics.clone(),
            config.cluster.clone(),
            shutdown.clone(),
        )
        .instrument(info_span!("snapshot_follower")),
    );
    let admin = Admin {
        metrics,
        status: subscription.status_changes(),
        authority,
        limits: config.admin_listener.limits(),
    };
    let admin = spawn_admin(admin_listener, admin, &shutdown);
    let outcome = serve(&mut dns, &shutdown).await;
    stop(dns, follower, subscription, admin, &shutdown).await;
    outcome
}

/// Starts following the controller's snapshots for this cluster.
fn subscribe(config: &Config) -> Result<Subscription> {
    Subscription::follow(&config.controller, &config.cluster, "dns", &config.instance)
        .map_err(Error::Subscription)
}

/// Binds the admin listener and logs the server's settings.
async fn bind_admin(config: &Config) -> Result<TcpListener> {
    let addr = config.admin_addr();
    let bind_error = |source| Error::BindAdmin { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    info!(
        admin = %listener.local_addr().map_err(bind_error)?,
        zones = ?config.zones.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ttl = config.ttl,
        controller = %config.controller.url,
        cluster = %config.cluster,
        "meridian-dns started"
    );
    Ok(listener)
}

fn spawn_admin(listener: TcpListener, admin: Admin, shutdown: &Shutdown) -> JoinHandle<()> {
    tokio::spawn(
        admin::serve(listener, Arc::new(admin), shutdown.clone()).instrument(info_span!("admin")),
    )
}

/// Answers queries until shutdown, or until the DNS server stops on its own (an error).
async fn serve(dns: &mut DnsServer, shutdown: &Shutdown) -> Result<()> {
    tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        stopped = dns.stopped() => Err(match stopped {
            Ok(()) => Error::Stopped,
            Err(source) => Error::Failed(source),
        }),
    }
}

/// Stops every task: the DNS sockets, the snapshot follower, the subscription, the admin
/// listener.
async fn stop(
    dns: DnsServer,
    follower: JoinHandle<()>,
    subscription: Subscription,
    admin: JoinHandle<()>,
    shutdown: &Shutdown,
) {
    info!("shutting down");
    shutdown.cancel();
    if let Err(error) = dns.shutdown().await {
        error!(%error, "DNS server shutdown");
    }
    let _ = follower.await;
    subscription.shutdown().await;
    let _ = admin.await;
    info!("stopped");
}
