//! One member cluster: a kube Client built from its accepted kubeconfig, endpoint-API
//! detection, reflectors for everything the catalog needs, and a reachability probe.
//!
//! A member runs as one task tree that is aborted when its registration goes away or
//! changes. What it sees is published in its [`MemberState`] (a `watch` channel) and its
//! reflector stores; every change pokes the aggregator's `Notify`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::catalog::{EXPORT_LABEL, EndpointObjects, MemberInput};
use crate::crd::Phase;
use crate::kubeconfig::AcceptedKubeconfig;
use crate::metrics::Metrics;
use crate::reflected;

/// Which endpoint API a member serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointApi {
    /// `discovery.k8s.io/v1` EndpointSlices.
    EndpointSliceV1,
    /// core/v1 Endpoints (older clusters; the testbed's v1.20).
    EndpointsV1,
}

impl std::fmt::Display for EndpointApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndpointApi::EndpointSliceV1 => "discovery.k8s.io/v1",
            EndpointApi::EndpointsV1 => "v1/Endpoints",
        })
    }
}

/// How to reach a member.
#[derive(Clone)]
pub enum Credentials {
    /// The controller's own client, and its server URL.
    Local(Client, String),
    /// A registration Secret's kubeconfig, accepted by [`crate::kubeconfig::accept`].
    Kubeconfig(Arc<AcceptedKubeconfig>),
}

impl PartialEq for Credentials {
    /// The local client is one; kubeconfigs compare field by field (a changed Secret restarts
    /// the member).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Credentials::Local(_, a), Credentials::Local(_, b)) => a == b,
            (Credentials::Kubeconfig(a), Credentials::Kubeconfig(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Credentials {}

impl std::fmt::Debug for Credentials {
    /// Never prints the kubeconfig: it holds credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Local(_, server) => write!(f, "Local({server})"),
            Credentials::Kubeconfig(_) => f.write_str("Kubeconfig(<redacted>)"),
        }
    }
}

/// A member's registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// Cluster name.
    pub name: String,
    /// How to connect.
    pub credentials: Credentials,
    /// Registration Secret, `<namespace>/<name>` (remote members).
    pub secret: Option<String>,
    /// `meridian.io/gateway-address` from the Secret: the gateway address when its Service
    /// has no LoadBalancer ingress.
    pub gateway_address: Option<String>,
}

/// What the controller currently knows about a member's connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberState {
    /// Phase.
    pub phase: Phase,
    /// API server URL.
    pub server: Option<String>,
    /// Endpoint API in use.
    pub endpoint_api: Option<EndpointApi>,
    /// Since when the member is unreachable (or rejects us), if it is.
    pub lost_since: Option<Instant>,
    /// Last time it was fully in sync.
    pub last_sync: Option<SystemTime>,
    /// Last error, if any.
    pub message: Option<String>,
}

/// The reflector stores of a connected member.
#[derive(Clone)]
pub struct MemberStores {
    services: Store<Service>,
    slices: Option<Store<EndpointSlice>>,
    endpoints: Option<Store<Endpoints>>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    gateway: Store<Service>,
}

impl MemberStores {
    /// The catalog input of this member.
    pub fn input(&self, cluster: &str, stale: bool) -> MemberInput {
        MemberInput {
            cluster: cluster.to_owned(),
            stale,
            services: self.services.state(),
            endpoints: match (&self.slices, &self.endpoints) {
                (Some(s), _) => EndpointObjects::Slices(s.state()),
                (None, Some(e)) => EndpointObjects::Endpoints(e.state()),
                (None, None) => EndpointObjects::default(),
            },
            nodes: self.nodes.state(),
            pods: self.pods.state(),
        }
    }

    /// The member's gateway Service, if it exists.
    pub fn gateway(&self) -> Option<Arc<Service>> {
        self.gateway.state().into_iter().next()
    }
}

/// Settings every member shares.
#[derive(Clone)]
pub struct MemberSettings {
    /// Namespace of the gateway Service.
    pub gateway_namespace: String,
    /// Name of the gateway Service.
    pub gateway_service: String,
    /// Probe period.
    pub probe_interval: Duration,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Poked on every change.
    pub notify: Arc<Notify>,
}

/// A running member.
pub struct Member {
    /// Its registration.
    pub spec: MemberSpec,
    state: watch::Receiver<MemberState>,
    stores: watch::Receiver<Option<MemberStores>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Member {
    /// Starts connecting to a member.
    pub fn start(spec: MemberSpec, settings: MemberSettings) -> Member {
        let (state_tx, state) = watch::channel(MemberState::default());
        let (stores_tx, stores) = watch::channel(None);
        let span = info_span!("member", cluster = %spec.name);
        let runner = Runner {
            spec: spec.clone(),
            settings,
            state: state_tx,
        };
        let task = tokio::spawn(runner.run(stores_tx).instrument(span));
        Member {
            spec,
            state,
            stores,
            task,
        }
    }

    /// Current connection state.
    pub fn state(&self) -> MemberState {
        self.state.borrow().clone()
    }

    /// Current stores, once connected.
    pub fn stores(&self) -> Option<MemberStores> {
        self.stores.borrow().clone()
    }
}

/// Whether an error means "the server rejects our credentials" rather than "cannot reach".
fn is_auth_error(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 401 || s.code == 403,
        _ => false,
    }
}

/// Backoff for reconnects: 200 ms doubling to 10 s, with jitter.
pub fn reconnect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

struct Runner {
    spec: MemberSpec,
    settings: MemberSettings,
    state: watch::Sender<MemberState>,
}

impl Runner {
    fn update(&self, f: impl FnOnce(&mut MemberState)) {
        let changed = self.state.send_if_modified(|s| {
            let before = s.clone();
            f(s);
            *s != before
        });
        if changed {
            let s = self.state.borrow().clone();
            self.settings.metrics.set_phase(&self.spec.name, s.phase);
            if let Some(at) = s.last_sync {
                self.settings.metrics.set_synced(&self.spec.name, at);
            }
            self.settings.notify.notify_one();
        }
    }

    fn lost(&self, e: &kube::Error) {
        let phase = if is_auth_error(e) {
            Phase::InvalidCredentials
        } else {
            Phase::Unreachable
        };
        self.update(|s| {
            if s.phase != phase {
                warn!(error = %e, %phase, "member lost");
            }
            s.phase = phase;
            s.lost_since.get_or_insert_with(Instant::now);
            // With the causes: "client error (Connect)" alone does not say that the
            // member's certificate was refused, or that the connection was.
            s.message = Some(meridian_api::subscription::error_chain(e));
        });
    }

    async fn run(self, stores_tx: watch::Sender<Option<MemberStores>>) {
        self.settings
            .metrics
            .set_phase(&self.spec.name, Phase::Connecting);
        let (client, server) = match &self.spec.credentials {
            Credentials::Local(c, server) => (c.clone(), server.clone()),
            Credentials::Kubeconfig(kc) => match kc.client() {
                Ok(client) => (client, kc.server()),
                Err(e) => {
                    // Accepted kubeconfigs hold parsed certificates and keys: rare, but kube
                    // may still refuse them (e.g. a key type rustls cannot use).
                    warn!(error = %e, "member client cannot be built");
                    self.update(|s| {
                        s.phase = Phase::InvalidCredentials;
                        s.message = Some(format!("building the client: {e}"));
                        s.lost_since.get_or_insert_with(Instant::now);
                    });
                    return; // nothing to retry until the Secret changes
                }
            },
        };
        self.update(|s| s.server = Some(server));

        // Detect the endpoint API, retrying with backoff until the server answers.
        let mut backoff = reconnect_backoff().build();
        let api = loop {
            match detect_endpoint_api(&client).await {
                Ok(api) => break api,
                Err(e) => {
                    self.lost(&e);
                    let delay = backoff.next().unwrap_or(Duration::from_secs(10));
                    tokio::time::sleep(delay).await;
                }
            }
        };
        info!(endpoint_api = %api, "connected");
        self.update(|s| {
            s.endpoint_api = Some(api);
            s.phase = Phase::Connecting;
            s.message = None;
        });

        let mut tasks = JoinSet::new();
        let this = Arc::new(self);
        let services_cfg = watcher::Config::default().labels(&format!("{EXPORT_LABEL}=true"));
        let services = this.reflect(
            &mut tasks,
            "Service",
            Api::<Service>::all(client.clone()),
            services_cfg,
            reflected::service,
        );
        let (slices, endpoints) = match api {
            EndpointApi::EndpointSliceV1 => (
                Some(this.reflect(
                    &mut tasks,
                    "EndpointSlice",
                    Api::<EndpointSlice>::all(client.clone()),
                    watcher::Config::default(),
                    reflected::endpoint_slice,
                )),
                None,
            ),
            EndpointApi::EndpointsV1 => (
                None,
                Some(this.reflect(
                    &mut tasks,
                    "Endpoints",
                    Api::<Endpoints>::all(client.clone()),
                    watcher::Config::default(),
                    reflected::endpoints,
                )),
            ),
        };
        let nodes = this.reflect(
            &mut tasks,
            "Node",
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            reflected::node,
        );
        // Full Pods, for their IPs (an endpoint's address must be its Pod's IP, see
        // `targets`), stripped to labels and IPs by `reflected::pod`. Pages of 100, not 500:
        // a page is held whole while it is parsed, before the strip, and pods are what a
        // member's users can inflate (up to the API server's ~1.5 MiB per object, in
        // metadata or spec alike).
        let pods = this.reflect(
            &mut tasks,
            "Pod",
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().page_size(100),
            reflected::pod,
        );
        let gateway = this.reflect(
            &mut tasks,
            "GatewayService",
            Api::<Service>::namespaced(client.clone(), &this.settings.gateway_namespace),
            watcher::Config::default()
                .fields(&format!("metadata.name={}", this.settings.gateway_service)),
            reflected::gateway_service,
        );
        let stores = MemberStores {
            services,
            slices,
            endpoints,
            nodes,
            pods,
            gateway,
        };
        let _ = stores_tx.send(Some(stores.clone()));

        // Synced once every store has listed; then probe periodically.
        let ready = {
            let s = stores.clone();
            async move {
                let _ = s.services.wait_until_ready().await;
                if let Some(x) = &s.slices {
                    let _ = x.wait_until_ready().await;
                }
                if let Some(x) = &s.endpoints {
                    let _ = x.wait_until_ready().await;
                }
                let _ = s.nodes.wait_until_ready().await;
                let _ = s.pods.wait_until_ready().await;
                let _ = s.gateway.wait_until_ready().await;
            }
        };
        tokio::select! {
            _ = ready => {}
            _ = tasks.join_next() => {}
        }
        info!("synced");
        this.update(|s| {
            s.phase = Phase::Synced;
            s.lost_since = None;
            s.message = None;
            s.last_sync = Some(SystemTime::now());
        });
        let mut tick = tokio::time::interval(this.settings.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let probe = tokio::time::timeout(
                this.settings.probe_interval.max(Duration::from_secs(2)),
                client.apiserver_version(),
            )
            .await;
            match probe {
                // `/version` may be open to anyone: it cannot clear a credentials problem
                // (a relisting reflector does).
                Ok(Ok(_)) if this.state.borrow().phase == Phase::InvalidCredentials => {}
                Ok(Ok(_)) => this.update(|s| {
                    if s.phase != Phase::Synced {
                        info!("member reachable again");
                    }
                    s.phase = Phase::Synced;
                    s.lost_since = None;
                    s.message = None;
                    s.last_sync = Some(SystemTime::now());
                }),
                Ok(Err(e)) => this.lost(&e),
                Err(_) => this.update(|s| {
                    s.phase = Phase::Unreachable;
                    s.lost_since.get_or_insert_with(Instant::now);
                    s.message = Some("API server probe timed out".into());
                }),
            }
        }
    }

    /// Reflects `api` into a store, keeping of each object only what `strip` leaves (see
    /// [`crate::reflected`]).
    fn reflect<K>(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        resource: &'static str,
        api: Api<K>,
        cfg: watcher::Config,
        strip: fn(&mut K),
    ) -> Store<K>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let (reader, writer) = reflector::store();
        let stream = watcher(api, cfg).modify(strip);
        let stream = reflector::reflector(writer, stream);
        tasks.spawn(self.clone().drive(resource, stream).in_current_span());
        reader
    }

    /// Consumes one reflector stream with reconnect backoff, reporting events and errors.
    async fn drive<K>(
        self: Arc<Self>,
        resource: &'static str,
        stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    ) {
        let backoff = kube::runtime::watcher::ExponentialBackoff::from(reconnect_backoff());
        let mut stream = std::pin::pin!(stream.backoff(backoff));
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    self.settings.metrics.watch_event(&self.spec.name, resource);
                    if matches!(ev, watcher::Event::InitDone) {
                        debug!(resource, "listed");
                        // A relist after an outage means the server is back.
                        self.update(|s| {
                            if s.lost_since.is_some() && s.phase != Phase::Connecting {
                                s.phase = Phase::Synced;
                                s.lost_since = None;
                                s.message = None;
                                s.last_sync = Some(SystemTime::now());
                            }
                        });
                    }
                    self.settings.notify.notify_one();
                }
                Err(e) => {
                    debug!(resource, error = %e, "watch failed");
                    match &e {
                        // Failing to (re)establish means trouble; a watch that breaks
                        // mid-stream is simply restarted by the watcher.
                        watcher::Error::InitialListFailed(k)
                        | watcher::Error::WatchStartFailed(k) => self.lost(k),
                        watcher::Error::WatchError(s) if s.code == 401 || s.code == 403 => {
                            self.lost(&kube::Error::Api(s.clone()));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

/// EndpointSlice v1 when served, else core/v1 Endpoints.
pub async fn detect_endpoint_api(client: &Client) -> kube::Result<EndpointApi> {
    // Any authenticated call first, so bad credentials are told apart from "not served".
    client.apiserver_version().await?;
    match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => {
            Ok(EndpointApi::EndpointSliceV1)
        }
        Ok(_) => Ok(EndpointApi::EndpointsV1),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(EndpointApi::EndpointsV1),
        Err(e) => Err(e),
    }
}
