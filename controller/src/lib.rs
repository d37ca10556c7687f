//! Meridian controller.
//!
//! Connects to every member cluster registered through a kubeconfig Secret (and always to its
//! own cluster, [`registry`], [`member`]), aggregates exported Services, their endpoints and
//! the locality of each endpoint into a [`catalog`], allocates VIPs and gateway listener
//! ports in its own cluster ([`vip`]), writes status ([`status`], [`policy`]) and streams
//! deterministic [`snapshot`]s to its own cluster's gateway and DNS server ([`server`], over
//! TLS with a certificate from the mesh CA: [`tls`]; the root goes out through [`ca_root`];
//! callers are authenticated by [`auth`]).
//! [`aggregator`] is the loop that ties them together; [`run`] starts everything. With more
//! than one replica, a [`leader`] elected through a Lease does all the writing.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod aggregator;
pub mod auth;
pub mod ca_root;
pub mod catalog;
pub mod certificates;
pub mod config;
pub mod crd;
pub mod error;
pub mod kubeconfig;
pub mod leader;
pub mod mcs;
pub mod member;
pub mod metrics;
pub mod policy;
pub mod reflected;
pub mod registry;
pub mod server;
pub mod snapshot;
pub mod status;
pub mod targets;
pub mod tls;
pub mod vip;

#[cfg(test)]
mod fixtures;

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

pub use config::Config;
pub use error::{Error, Result};

/// Builds the own cluster's client: `--kubeconfig` (and `--context`) when given, else the
/// in-cluster configuration. Returns the client and the API server URL.
pub async fn local_client(config: &Config) -> Result<(Client, String)> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Kubeconfig(format!("reading {}: {e}", path.display())))?;
            let kc = Kubeconfig::from_yaml(&text).map_err(|e| Error::Kubeconfig(e.to_string()))?;
            let opts = KubeConfigOptions {
                context: config.context.clone(),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| Error::Kubeconfig(e.to_string()))?
        }
        None => kube::Config::incluster().map_err(|e| Error::Kubeconfig(e.to_string()))?,
    };
    let server = kube_config.cluster_url.to_string();
    let client = Client::try_from(kube_config).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    Ok((client, server))
}

/// Applies Meridian's CRDs and waits until they are served.
pub async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    // Create or replace, not server-side apply: v1.20's apply turns `default: ''` into null.
    for mut crd in crd::all() {
        let name = crd.name_any();
        match api.get_opt(&name).await? {
            Some(existing) => {
                crd.metadata.resource_version = existing.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &crd).await?;
            }
            None => {
                api.create(&PostParams::default(), &crd).await?;
            }
        }
        info!(crd = %name, "CRD installed");
    }
    // Established CRDs answer lists; poll briefly.
    let ready = || async {
        Api::<crd::GlobalService>::all(client.clone())
            .list(&ListParams::default().limit(1))
            .await?;
        Api::<crd::MemberCluster>::all(client.clone())
            .list(&ListParams::default().limit(1))
            .await?;
        Api::<crd::GlobalTrafficPolicy>::all(client.clone())
            .list(&ListParams::default().limit(1))
            .await
    };
    let mut last = None;
    for _ in 0..100 {
        match ready().await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::Kube(last.expect("loop ran")))
}

/// Retries `f` with backoff until it succeeds (the own API server may start after us).
async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut backoff = member::reconnect_backoff().build();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                warn!(error = %e, "{what} failed, retrying");
                tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(10))).await;
            }
        }
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let config = Arc::new(config);
    let (client, server_url) = local_client(&config).await?;
    if config.install_crds {
        retry("installing CRDs", || install_crds(&client)).await;
    }
    let metrics = Arc::new(metrics::Metrics::default());
    let notify = Arc::new(Notify::new());
    let publisher = server::SnapshotPublisher::new();

    let grpc = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|e| Error::Server(format!("binding {}: {e}", config.grpc_addr)))?;
    let metrics_addr = config.metrics_addr();
    let http = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .map_err(|e| Error::Server(format!("binding {metrics_addr}: {e}")))?;
    info!(
        cluster = %config.cluster_name,
        grpc = %grpc.local_addr().map_err(|e| Error::Server(e.to_string()))?,
        metrics = %http.local_addr().map_err(|e| Error::Server(e.to_string()))?,
        "meridian-controller starting"
    );

    let mut tasks = JoinSet::new();
    let election = if config.leader_elect {
        leader::Election::start(
            client.clone(),
            leader::ElectionSettings {
                namespace: config.namespace.clone(),
                lease_name: config.lease_name.clone(),
                identity: config
                    .leader_identity
                    .clone()
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(leader::default_identity),
                lease_duration: config.lease_duration,
            },
        )
    } else {
        leader::Election::always_leader()
    };
    {
        let mut leads = election.subscribe();
        let metrics = metrics.clone();
        let notify = notify.clone();
        tasks.spawn(async move {
            loop {
                metrics.leader.set(i64::from(*leads.borrow_and_update()));
                notify.notify_one();
                if leads.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    let settings = member::MemberSettings {
        gateway_namespace: config.namespace.clone(),
        gateway_service: config.gateway_service.clone(),
        probe_interval: config.probe_interval,
        metrics: metrics.clone(),
        notify: notify.clone(),
    };
    let local = member::MemberSpec {
        name: config.cluster_name.clone(),
        credentials: member::Credentials::Local(client.clone(), server_url),
        secret: None,
        gateway_address: None,
    };
    let registry = registry::Registry::new(local, settings);
    tasks.spawn(
        registry
            .clone()
            .run(client.clone(), config.namespace.clone())
            .instrument(info_span!("registry")),
    );

    let (policies, policy_controller) = policy::controller(
        client.clone(),
        metrics.clone(),
        notify.clone(),
        election.subscribe(),
    );
    tasks.spawn(policy_controller.instrument(info_span!("policy-controller")));

    // The managed VIP Services as they are: what replicas that do not lead serve.
    let (managed, managed_writer) = reflector::store::<Service>();
    {
        let api: Api<Service> = Api::namespaced(client.clone(), &config.namespace);
        let selector = format!("{}={}", vip::MANAGED_BY_LABEL, vip::MANAGED_BY);
        let notify = notify.clone();
        tasks.spawn(
            reflector(
                managed_writer,
                watcher(api, watcher::Config::default().labels(&selector)).backoff(
                    watcher::ExponentialBackoff::from(member::reconnect_backoff()),
                ),
            )
            .for_each(move |_| {
                notify.notify_one();
                futures::future::ready(())
            })
            .instrument(info_span!("vip-services")),
        );
    }

    let (status_tx, status_rx) = watch::channel(None);
    tasks.spawn(
        status::StatusWriter::run_while_leader(
            client.clone(),
            metrics.clone(),
            status_rx.clone(),
            election.subscribe(),
        )
        .instrument(info_span!("status-writer")),
    );
    tasks.spawn(
        mcs::writer::McsWriter::run_while_leader(
            client.clone(),
            config.cluster_name.clone(),
            status_rx.clone(),
            election.subscribe(),
        )
        .instrument(info_span!("mcs-writer")),
    );
    {
        let config = config.clone();
        let client = client.clone();
        let registry = registry.clone();
        let metrics = metrics.clone();
        let notify = notify.clone();
        let publisher = publisher.clone();
        let leadership = aggregator::Leadership {
            managed,
            leader: election.subscribe(),
        };
        tasks.spawn(
            async move {
                let vips = retry("reading back VIP Services", || {
                    vip::VipManager::start(client.clone(), config.vip_settings())
                })
                .await;
                aggregator::Aggregator::new(
                    config, registry, policies, vips, leadership, publisher, status_tx, notify,
                    metrics,
                )
                .run()
                .await;
            }
            .instrument(info_span!("aggregator")),
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    tasks.spawn(
        metrics::serve(
            http,
            metrics.clone(),
            config.admin.limits(),
            stopped(stop_rx.clone()),
        )
        .instrument(info_span!("metrics-server")),
    );
    let caller_auth = |mode: config::AuthMode, names: Vec<String>, what: &str| match mode {
        config::AuthMode::TokenReview => auth::CallerAuth::ServiceAccounts {
            client: client.clone(),
            namespace: config.namespace.clone(),
            names,
            audience: config.token_audience.clone(),
        },
        config::AuthMode::None => {
            warn!("{what}: anyone who reaches the gRPC port is served (development only)");
            auth::CallerAuth::Unauthenticated
        }
    };
    let discovery = server::DiscoveryService::new(
        config.cluster_name.clone(),
        publisher,
        metrics.clone(),
        caller_auth(
            config.discovery_auth,
            vec![
                config.gateway_service_account.clone(),
                config.dns_service_account.clone(),
            ],
            "--discovery-auth none (snapshots)",
        ),
    )
    .with_max_subscribers(config.max_subscribers)
    .with_shutdown(stop_rx.clone());
    let ca = Arc::new(certificates::CaCache::new(match &config.ca_dir {
        Some(dir) => certificates::CaSource::Dir(dir.clone()),
        None => certificates::CaSource::Secret {
            client: client.clone(),
            namespace: config.namespace.clone(),
        },
    }));
    let csr_auth = caller_auth(
        config.csr_auth,
        vec![config.gateway_service_account.clone()],
        "--csr-auth none (the gateway certificate)",
    );
    let certs = certificates::CertificatesService::new(
        config.cluster_name.clone(),
        config.trust_domain.clone(),
        ca.clone(),
        csr_auth,
    );
    tasks.spawn(
        ca_root::publish_while_leader(
            client.clone(),
            config.namespace.clone(),
            ca.clone(),
            election.subscribe(),
        )
        .instrument(info_span!("ca-root")),
    );
    let transport = if config.grpc_plaintext {
        warn!(
            "--grpc-plaintext: the gRPC port is not authenticated; anyone who can impersonate \
             the controller can feed gateways and DNS servers and read the gateway's token"
        );
        tls::Transport::Plaintext
    } else {
        let serving = tls::ServingCert::new();
        let settings = tls::ServingSettings {
            dns_names: tls::dns_names(&config.namespace, &config.grpc_dns_names),
            spiffe_id: meridian_identity::identity::controller_spiffe_id(
                &config.trust_domain,
                &config.cluster_name,
            )
            .map_err(|e| warn!(error = %e, "no SPIFFE ID in the serving certificate"))
            .ok(),
            ttl: config.grpc_cert_ttl,
        };
        tasks.spawn(
            serving
                .clone()
                .run(ca.clone(), settings)
                .instrument(info_span!("serving-cert")),
        );
        tls::Transport::tls(&serving)
    };
    let grpc_server = tokio::spawn(
        server::serve(
            grpc,
            transport,
            server::Keepalive {
                interval: config.grpc_keepalive_interval,
                timeout: config.grpc_keepalive_timeout,
            },
            discovery,
            Some(certs),
            stopped(stop_rx),
        )
        .instrument(info_span!("grpc-server")),
    );

    shutdown.await;
    info!("shutting down");
    // Ends the snapshot streams too, so the gRPC server stops at once.
    let _ = stop_tx.send(true);
    tasks.shutdown().await;
    // Writers are stopped: hand the Lease over.
    election.resign(Duration::from_secs(3)).await;
    match tokio::time::timeout(Duration::from_secs(5), grpc_server).await {
        Ok(Ok(r)) => r,
        _ => Ok(()),
    }
}
