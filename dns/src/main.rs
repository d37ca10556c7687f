//! `meridian-dns`: authoritative DNS for Meridian's global services.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use meridian_api::proto::Subscriber;
use meridian_api::subscription::{Subscription, SubscriptionConfig};
use meridian_dns::admin::{self, Admin};
use meridian_dns::authority::Authority;
use meridian_dns::config::Config;
use meridian_dns::metrics::Metrics;
use meridian_dns::server::DnsServer;
use meridian_dns::snapshot;
use meridian_dns::zone::ZoneSettings;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span};
use tracing_subscriber::EnvFilter;

/// hickory logs every query at info level; keep that out of the default output.
const DEFAULT_LOG_FILTER: &str = "info,hickory_server=warn,hickory_proto=warn,hickory_net=warn";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    run(config).await
}

async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let settings = Arc::new(ZoneSettings {
        origins: config.zones.clone(),
        ttl: config.ttl,
        nameserver: config.nameserver.clone(),
        clusterset: Some(config.clusterset_domain.clone()),
    });
    let served: Vec<_> = settings
        .origins
        .iter()
        .chain(settings.clusterset.iter())
        .cloned()
        .collect();
    let authority = Authority::new(&served, metrics.clone());

    let mut subscription_config = SubscriptionConfig::new(
        config.controller.url.clone(),
        Subscriber {
            cluster: config.cluster.clone(),
            role: "dns".into(),
            instance: config.instance.clone(),
        },
    );
    subscription_config.tls = config.controller.tls();
    subscription_config.token_file = config.controller.token_file.clone();
    let subscription = Subscription::spawn(subscription_config).context("controller endpoint")?;

    let mut dns = DnsServer::bind(&config.listen, authority.clone())
        .await
        .with_context(|| format!("binding DNS sockets on {:?}", config.listen))?;
    let admin_addr = config.admin_addr();
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .with_context(|| format!("binding the admin server on {admin_addr}"))?;
    info!(
        admin = %admin_listener.local_addr()?,
        zones = ?config.zones.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ttl = config.ttl,
        controller = %config.controller.url,
        cluster = %config.cluster,
        "meridian-dns started"
    );

    let shutdown = CancellationToken::new();
    let follower = tokio::spawn(
        snapshot::follow(
            subscription.snapshots(),
            authority.clone(),
            settings,
            metrics.clone(),
            config.cluster.clone(),
        )
        .instrument(info_span!("snapshot_follower")),
    );
    let admin = tokio::spawn(
        admin::serve(
            admin_listener,
            Arc::new(Admin {
                metrics,
                status: subscription.status_changes(),
                authority,
                limits: config.admin_listener.limits(),
            }),
            shutdown.clone(),
        )
        .instrument(info_span!("admin")),
    );

    let outcome = tokio::select! {
        () = terminated() => Ok(()),
        stopped = dns.stopped() => Err(match stopped {
            Ok(()) => anyhow::anyhow!("DNS server stopped unexpectedly"),
            Err(error) => anyhow::Error::new(error).context("DNS server failed"),
        }),
    };
    info!("shutting down");
    shutdown.cancel();
    if let Err(error) = dns.shutdown().await {
        error!(%error, "DNS server shutdown");
    }
    follower.abort();
    subscription.shutdown().await;
    let _ = admin.await;
    info!("stopped");
    outcome
}

/// Resolves on SIGTERM (Kubernetes) or Ctrl-C.
async fn terminated() {
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        Ok(signal) => signal,
        Err(error) => {
            error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("interrupt received"),
    }
}
