//! Starting and stopping the controller: [`run`] calls one helper per phase.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::aggregator::{self, Aggregator};
use crate::config::AuthMode;
use crate::crd::{GlobalTrafficPolicy, MemberCluster};
use crate::dirty::{Mark, Marks};
use crate::grpc::auth::CallerAuth;
use crate::grpc::certificates::{CaCache, CaSource, CertificatesService};
use crate::grpc::discovery::{DiscoveryService, SnapshotPublisher};
use crate::grpc::tls::{self, ServingCert, ServingSettings, Transport};
use crate::grpc::{self, Keepalive, ca_root};
use crate::leader::{self, Election, ElectionSettings};
use crate::mcs::writer::McsWriter;
use crate::members::member::{Credentials, MemberSettings, MemberSpec, reconnect_backoff};
use crate::members::registry::Registry;
use crate::metrics::{self, Metrics};
use crate::status::{StatusView, StatusWriter};
use crate::tasks::{Tasks, retry};
use crate::vip::{self, VipManager};
use crate::{Config, Error, Result, own_cluster, policy};

/// How long the Lease hand-over may take on shutdown.
const RESIGN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the gRPC server may take to stop once its streams are ended.
const GRPC_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the controller until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let config = Arc::new(config);
    let (client, server_url) = own_cluster::client(&config).await?;
    if config.install_crds {
        let install = retry("installing CRDs", || own_cluster::install_crds(&client));
        if shutdown.run_until_cancelled(install).await.is_none() {
            return Ok(());
        }
    }
    let listeners = Listeners::bind(&config).await?;
    let mut controller = Controller::new(config, client, shutdown.clone());
    controller.follow_leadership();
    let publisher = SnapshotPublisher::new();
    let context = aggregator::Context {
        registry: controller.start_registry(server_url),
        policies: controller.start_policy_controller(),
        managed: controller.reflect_managed_vips(),
        member_objects: controller.reflect_member_objects(),
        status: controller.start_status_writer(),
        leader: controller.election.subscribe(),
        publisher: publisher.clone(),
        config: controller.config.clone(),
        notify: controller.notify.clone(),
        marks: controller.marks.1.take(),
        metrics: controller.metrics.clone(),
    };
    controller.start_aggregator(context);
    controller.serve_metrics(listeners.metrics);
    let grpc = controller.serve_grpc(listeners.grpc, publisher);
    shutdown.cancelled().await;
    controller.stop(grpc).await
}

/// The gRPC and metrics ports, bound before anything starts so a taken port fails at once.
struct Listeners {
    grpc: TcpListener,
    metrics: TcpListener,
}

impl Listeners {
    async fn bind(config: &Config) -> Result<Self> {
        let (grpc, grpc_addr) = bind(config.grpc_addr).await?;
        let (metrics, metrics_addr) = bind(config.metrics_addr()).await?;
        info!(
            cluster = %config.cluster_name,
            grpc = %grpc_addr,
            metrics = %metrics_addr,
            "meridian-controller starting"
        );
        Ok(Self { grpc, metrics })
    }
}

/// Binds `addr`; returns the listener and the address it got.
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let bound = |source| Error::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bound)?;
    let local = listener.local_addr().map_err(bound)?;
    Ok((listener, local))
}

/// The running controller: what its parts share, and its tasks.
struct Controller {
    config: Arc<Config>,
    client: Client,
    metrics: Arc<Metrics>,
    /// Poked on every change the aggregator must see.
    notify: Arc<Notify>,
    /// Where the members' reflector events send what they changed, and the aggregator's
    /// end (taken when it starts).
    marks: (Marks, Option<mpsc::UnboundedReceiver<(String, Mark)>>),
    election: Election,
    tasks: Tasks,
}

impl Controller {
    /// Joins the leader election (or leads alone, without `--leader-elect`).
    fn new(config: Arc<Config>, client: Client, shutdown: CancellationToken) -> Self {
        let election = if config.leader_elect {
            Election::start(client.clone(), election_settings(&config))
        } else {
            Election::always_leader()
        };
        Self {
            config,
            client,
            metrics: Arc::new(Metrics::default()),
            notify: Arc::new(Notify::new()),
            marks: {
                let (tx, rx) = Marks::channel();
                (tx, Some(rx))
            },
            election,
            tasks: Tasks::new(shutdown),
        }
    }

    /// Mirrors leadership into the `leader` metric and wakes the aggregator on every change.
    fn follow_leadership(&mut self) {
        let mut leads = self.election.subscribe();
        let metrics = self.metrics.clone();
        let notify = self.notify.clone();
        let task = async move {
            loop {
                metrics.leader.set(i64::from(*leads.borrow_and_update()));
                notify.notify_one();
                if leads.changed().await.is_err() {
                    return;
                }
            }
        };
        self.tasks.spawn(info_span!("leadership"), task);
    }

    /// The registry with the own cluster as its first member, following the registration
    /// Secrets.
    fn start_registry(&mut self, server_url: String) -> Arc<Registry> {
        let config = &self.config;
        let settings = MemberSettings {
            gateway_namespace: config.namespace.clone(),
            gateway_service: config.gateway_service.clone(),
            probe_interval: config.probe_interval,
            metrics: self.metrics.clone(),
            notify: self.notify.clone(),
            marks: self.marks.0.clone(),
        };
        let local = MemberSpec {
            name: config.cluster_name.clone(),
            credentials: Credentials::Local(self.client.clone(), server_url),
            secret: None,
            gateway_address: None,
        };
        let registry = Registry::new(local, settings);
        let follow = registry
            .clone()
            .run(self.client.clone(), config.namespace.clone());
        self.tasks.spawn(info_span!("registry"), follow);
        registry
    }

    /// The GlobalTrafficPolicy controller; returns its store.
    fn start_policy_controller(&mut self) -> Store<GlobalTrafficPolicy> {
        let (policies, controller) = policy::controller(
            self.client.clone(),
            self.metrics.clone(),
            self.notify.clone(),
            self.election.subscribe(),
        );
        self.tasks
            .spawn(info_span!("policy-controller"), controller);
        policies
    }

    /// The managed VIP Services as they are: what replicas that do not lead serve.
    fn reflect_managed_vips(&mut self) -> Store<Service> {
        let (managed, writer) = reflector::store::<Service>();
        let api: Api<Service> = Api::namespaced(self.client.clone(), &self.config.namespace);
        let selector = format!("{}={}", vip::MANAGED_BY_LABEL, vip::MANAGED_BY);
        let backoff = watcher::ExponentialBackoff::from(reconnect_backoff());
        let stream = watcher(api, watcher::Config::default().labels(&selector)).backoff(backoff);
        let notify = self.notify.clone();
        let task = reflector(writer, stream).for_each(move |_| {
            notify.notify_one();
            futures::future::ready(())
        });
        self.tasks.spawn(info_span!("vip-services"), task);
        managed
    }

    /// The MemberCluster objects, for their `spec.drain` ([`crate::drain`]). Only spec
    /// changes (a new generation) or deletions wake the aggregator, not its own status writes.
    fn reflect_member_objects(&mut self) -> Store<MemberCluster> {
        let (objects, writer) = reflector::store::<MemberCluster>();
        let api: Api<MemberCluster> = Api::all(self.client.clone());
        let backoff = watcher::ExponentialBackoff::from(reconnect_backoff());
        let stream = watcher(api, watcher::Config::default()).backoff(backoff);
        let notify = self.notify.clone();
        let mut generations = std::collections::HashMap::new();
        let task = reflector(writer, stream).for_each(move |event| {
            let changed = match &event {
                Ok(watcher::Event::Apply(mc) | watcher::Event::InitApply(mc)) => {
                    let generation = mc.metadata.generation;
                    generations.insert(kube::ResourceExt::name_any(mc), generation)
                        != Some(generation)
                }
                Ok(watcher::Event::Delete(mc)) => {
                    generations.remove(&kube::ResourceExt::name_any(mc));
                    true
                }
                Ok(watcher::Event::InitDone) => true,
                Ok(watcher::Event::Init) | Err(_) => false,
            };
            if changed {
                notify.notify_one();
            }
            futures::future::ready(())
        });
        self.tasks.spawn(info_span!("member-objects"), task);
        objects
    }

    /// The status writer (active while leading); returns where views go.
    fn start_status_writer(&mut self) -> watch::Sender<Option<Arc<StatusView>>> {
        let (status, views) = watch::channel(None);
        // Both writers (re)read what they manage each time this replica gains leadership.
        let (client, cluster) = (self.client.clone(), self.config.cluster_name.clone());
        let mcs = leader::while_leader(
            self.election.subscribe(),
            views.clone(),
            "listing managed ServiceImports",
            move || McsWriter::start(client.clone(), cluster.clone()),
            McsWriter::run,
        );
        self.tasks.spawn(info_span!("mcs-writer"), mcs);
        let (client, metrics) = (self.client.clone(), self.metrics.clone());
        let writer = leader::while_leader(
            self.election.subscribe(),
            views,
            "listing managed status objects",
            move || StatusWriter::start(client.clone(), metrics.clone()),
            StatusWriter::run,
        );
        self.tasks.spawn(info_span!("status-writer"), writer);
        status
    }

    /// The aggregator, once the VIP Services have been read back.
    fn start_aggregator(&mut self, context: aggregator::Context) {
        let client = self.client.clone();
        let settings = self.config.vip_settings();
        let task = async move {
            let vips = retry("reading back VIP Services", || {
                VipManager::start(client.clone(), settings.clone())
            })
            .await;
            Aggregator::new(context, vips).run().await;
        };
        self.tasks.spawn(info_span!("aggregator"), task);
    }

    /// `/metrics` and `/healthz`.
    fn serve_metrics(&mut self, listener: TcpListener) {
        let server = metrics::serve(
            listener,
            self.metrics.clone(),
            self.config.admin.limits(),
            self.tasks.token(),
        );
        self.tasks.spawn(info_span!("metrics-server"), server);
    }

    /// The gRPC port: Discovery and Certificates, over TLS unless `--grpc-plaintext`.
    fn serve_grpc(
        &mut self,
        listener: TcpListener,
        publisher: SnapshotPublisher,
    ) -> JoinHandle<Result<()>> {
        let discovery = self.discovery_service(publisher);
        let ca = self.start_ca();
        let certificates = self.certificates_service(ca.clone());
        let transport = self.transport(ca);
        let keepalive = Keepalive {
            interval: self.config.grpc_keepalive_interval,
            timeout: self.config.grpc_keepalive_timeout,
        };
        let server = grpc::serve(
            listener,
            transport,
            keepalive,
            discovery,
            Some(certificates),
            self.tasks.token(),
        );
        tokio::spawn(server.instrument(info_span!("grpc-server")))
    }

    /// Snapshots for this cluster's gateway and DNS server; the streams end on shutdown.
    fn discovery_service(&self, publisher: SnapshotPublisher) -> DiscoveryService {
        let config = &self.config;
        let auth = self.caller_auth(
            config.discovery_auth,
            vec![
                config.gateway_service_account.clone(),
                config.dns_service_account.clone(),
            ],
            "--discovery-auth none (snapshots)",
        );
        DiscoveryService::new(
            config.cluster_name.clone(),
            publisher,
            self.metrics.clone(),
            auth,
        )
        .with_max_subscribers(config.max_subscribers)
        .with_shutdown(self.tasks.token())
    }

    /// The mesh CA (`--ca-dir` or its Secret), and its root published while leading.
    fn start_ca(&mut self) -> Arc<CaCache> {
        let config = &self.config;
        let ca = Arc::new(CaCache::new(match &config.ca_dir {
            Some(dir) => CaSource::Dir(dir.clone()),
            None => CaSource::Secret {
                client: self.client.clone(),
                namespace: config.namespace.clone(),
            },
        }));
        let publish = ca_root::publish_while_leader(
            self.client.clone(),
            config.namespace.clone(),
            ca.clone(),
            self.election.subscribe(),
        );
        self.tasks.spawn(info_span!("ca-root"), publish);
        ca
    }

    /// Signs the gateway's certificate requests.
    fn certificates_service(&self, ca: Arc<CaCache>) -> CertificatesService {
        let config = &self.config;
        let auth = self.caller_auth(
            config.csr_auth,
            vec![config.gateway_service_account.clone()],
            "--csr-auth none (the gateway certificate)",
        );
        CertificatesService::new(
            config.cluster_name.clone(),
            config.trust_domain.clone(),
            ca,
            auth,
        )
    }

    /// TLS with a serving certificate from the mesh CA (kept renewed by its own task), or
    /// plaintext with `--grpc-plaintext`.
    fn transport(&mut self, ca: Arc<CaCache>) -> Transport {
        let config = &self.config;
        if config.grpc_plaintext {
            warn!(
                "--grpc-plaintext: the gRPC port is not authenticated; anyone who can impersonate \
                 the controller can feed gateways and DNS servers and read the gateway's token"
            );
            return Transport::Plaintext;
        }
        let spiffe_id = meridian_identity::identity::controller_spiffe_id(
            &config.trust_domain,
            &config.cluster_name,
        )
        .map_err(|e| warn!(error = %e, "no SPIFFE ID in the serving certificate"))
        .ok();
        let settings = ServingSettings {
            dns_names: tls::dns_names(&config.namespace, &config.grpc_dns_names),
            spiffe_id,
            ttl: config.grpc_cert_ttl,
        };
        let serving = ServingCert::new();
        self.tasks.spawn(
            info_span!("serving-cert"),
            serving.clone().run(ca, settings),
        );
        Transport::tls(&serving)
    }

    /// How callers of one gRPC service are authenticated.
    fn caller_auth(&self, mode: AuthMode, names: Vec<String>, what: &str) -> CallerAuth {
        match mode {
            AuthMode::TokenReview => CallerAuth::ServiceAccounts {
                client: self.client.clone(),
                namespace: self.config.namespace.clone(),
                names,
                audience: self.config.token_audience.clone(),
            },
            AuthMode::None => {
                warn!("{what}: anyone who reaches the gRPC port is served (development only)");
                CallerAuth::Unauthenticated
            }
        }
    }

    /// After the shutdown token is cancelled (which also ended the snapshot streams, so the
    /// gRPC server stops at once): waits for the tasks, then hands the Lease over.
    async fn stop(self, grpc: JoinHandle<Result<()>>) -> Result<()> {
        info!("shutting down");
        self.tasks.join().await;
        // Writers are stopped: hand the Lease over.
        self.election.resign(RESIGN_TIMEOUT).await;
        match tokio::time::timeout(GRPC_STOP_TIMEOUT, grpc).await {
            Ok(Ok(r)) => r,
            _ => Ok(()),
        }
    }
}

/// The Lease this replica competes for (`--leader-elect`).
fn election_settings(config: &Config) -> ElectionSettings {
    ElectionSettings {
        namespace: config.namespace.clone(),
        lease_name: config.lease_name.clone(),
        identity: config
            .leader_identity
            .clone()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(leader::default_identity),
        lease_duration: config.lease_duration,
    }
}
