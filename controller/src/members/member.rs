//! One member cluster: a kube Client built from its accepted kubeconfig, endpoint-API
//! detection, reflectors for everything the catalog needs, and a reachability probe.
//!
//! A member runs as one task tree that is aborted when its registration goes away or
//! changes. What it sees is published in its [`MemberState`] (a `watch` channel) and its
//! reflector stores; every change pokes the aggregator's `Notify`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::catalog::{EndpointObjects, ServiceKey};
use crate::crd::Phase;
use crate::dirty::{Mark, Marks, SliceEvent};
use crate::incremental::{MemberObjects, SliceOwners, slice_owner};
use crate::members::kubeconfig::AcceptedKubeconfig;
use crate::members::reflected;
use crate::metrics::Metrics;

/// Which endpoint API a member serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndpointApi {
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
pub(crate) enum Credentials {
    /// The controller's own client, and its server URL.
    Local(Client, String),
    /// A registration Secret's kubeconfig, accepted by [`crate::members::kubeconfig::accept`].
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
pub(crate) struct MemberSpec {
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
pub(crate) struct MemberState {
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
pub(crate) struct MemberStores {
    services: Store<Service>,
    slices: Option<Store<EndpointSlice>>,
    endpoints: Option<Store<Endpoints>>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    gateway: Store<Service>,
    service_exports: Store<crate::mcs::ExportMeta>,
    /// The MCS CRDs were served when the member connected: only then is the ServiceExport
    /// store waited for.
    mcs_served: bool,
}

/// A connected member's stores as the catalog reads them: by name.
pub(crate) struct StoreObjects {
    /// Member cluster name.
    pub(crate) cluster: String,
    /// Unreachable (endpoints kept, marked stale).
    pub(crate) stale: bool,
    /// Its stores.
    pub(crate) stores: MemberStores,
    /// Its slices per Service, as the aggregator keeps them from the slice events.
    pub(crate) slices: Arc<SliceOwners>,
}

/// `namespace/name` as a store key.
fn by_name<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> ObjectRef<K> {
    ObjectRef::new(name).within(namespace)
}

impl MemberObjects for StoreObjects {
    fn cluster(&self) -> &str {
        &self.cluster
    }
    fn stale(&self) -> bool {
        self.stale
    }
    fn service(&self, key: &ServiceKey) -> Option<Arc<Service>> {
        self.stores
            .services
            .get(&by_name(&key.namespace, &key.name))
    }
    fn service_export(&self, key: &ServiceKey) -> Option<Arc<crate::mcs::ExportMeta>> {
        self.stores
            .service_exports
            .get(&by_name(&key.namespace, &key.name))
    }
    fn endpoint_objects(&self, key: &ServiceKey) -> EndpointObjects {
        match (&self.stores.slices, &self.stores.endpoints) {
            (Some(store), _) => EndpointObjects::Slices(
                self.slices
                    .names(key)
                    .filter_map(|n| store.get(&by_name(&key.namespace, n)))
                    .collect(),
            ),
            (None, Some(store)) => EndpointObjects::Endpoints(
                store
                    .get(&by_name(&key.namespace, &key.name))
                    .into_iter()
                    .collect(),
            ),
            (None, None) => EndpointObjects::default(),
        }
    }
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.stores.pods.get(&by_name(namespace, name))
    }
    fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.stores.nodes.get(&ObjectRef::new(name))
    }
    fn service_keys(&self) -> Vec<ServiceKey> {
        let services = self.stores.services.state();
        let exports = self.stores.service_exports.state();
        let metas = services
            .iter()
            .map(|s| &s.metadata)
            .chain(exports.iter().map(|e| &e.metadata));
        metas
            .filter_map(|m| Some(ServiceKey::new(m.namespace.as_deref()?, m.name.as_deref()?)))
            .collect()
    }
}

impl MemberStores {
    /// The number of Nodes of the member.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.state().len()
    }

    /// Resolves once every store has listed.
    async fn listed(&self) {
        let _ = self.services.wait_until_ready().await;
        if let Some(x) = &self.slices {
            let _ = x.wait_until_ready().await;
        }
        if let Some(x) = &self.endpoints {
            let _ = x.wait_until_ready().await;
        }
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.gateway.wait_until_ready().await;
        if self.mcs_served {
            let _ = self.service_exports.wait_until_ready().await;
        }
    }

    /// The member's gateway Service, if it exists.
    pub(crate) fn gateway(&self) -> Option<Arc<Service>> {
        self.gateway.state().into_iter().next()
    }
}

/// Settings every member shares.
#[derive(Clone)]
pub(crate) struct MemberSettings {
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
    /// Where reflector events mark what changed.
    pub marks: Marks,
}

/// A running member.
pub(crate) struct Member {
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
    pub(crate) fn start(spec: MemberSpec, settings: MemberSettings) -> Member {
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
    pub(crate) fn state(&self) -> MemberState {
        self.state.borrow().clone()
    }

    /// Current stores, once connected.
    pub(crate) fn stores(&self) -> Option<MemberStores> {
        self.stores.borrow().clone()
    }
}

/// Marks a member in sync now: reachable, nothing lost, no error.
fn synced(s: &mut MemberState) {
    s.phase = Phase::Synced;
    s.lost_since = None;
    s.message = None;
    s.last_sync = Some(SystemTime::now());
}

/// Whether an error means "the server rejects our credentials" rather than "cannot reach".
fn is_auth_error(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 401 || s.code == 403,
        _ => false,
    }
}

/// Backoff for reconnects: 200 ms doubling to 10 s, with jitter.
pub(crate) fn reconnect_backoff() -> ExponentialBuilder {
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
            self.settings.marks.send(&self.spec.name, Mark::Member);
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
            s.message = Some(meridian_api::error_chain(e));
        });
    }

    /// Connects, reflects everything the catalog needs, then probes until aborted.
    async fn run(self, stores_tx: watch::Sender<Option<MemberStores>>) {
        self.settings
            .metrics
            .set_phase(&self.spec.name, Phase::Connecting);
        let Some(client) = self.client() else {
            return; // nothing to retry until the Secret changes
        };
        let api = self.detect_endpoint_api(&client).await;
        let mut tasks = JoinSet::new();
        let this = Arc::new(self);
        let mcs_served = crate::mcs::served(&client).await;
        let mut stores = this.reflect_all(&mut tasks, &client, api);
        stores.mcs_served = mcs_served;
        let _ = stores_tx.send(Some(stores.clone()));
        tokio::select! {
            _ = stores.listed() => {}
            _ = tasks.join_next() => {}
        }
        info!("synced");
        this.update(synced);
        this.probe(&client).await;
    }

    /// The member's client, or `None` (and `InvalidCredentials`) when kube refuses its
    /// accepted kubeconfig.
    fn client(&self) -> Option<Client> {
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
                    return None;
                }
            },
        };
        self.update(|s| s.server = Some(server));
        Some(client)
    }

    /// Detects the endpoint API, retrying with backoff until the server answers.
    async fn detect_endpoint_api(&self, client: &Client) -> EndpointApi {
        let mut backoff = reconnect_backoff().build();
        let api = loop {
            match detect_endpoint_api(client).await {
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
        api
    }

    /// Starts one reflector per resource the catalog reads.
    fn reflect_all(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        client: &Client,
        api: EndpointApi,
    ) -> MemberStores {
        let cfg = watcher::Config::default;
        let gateway = cfg().fields(&format!("metadata.name={}", self.settings.gateway_service));
        let gateway_api = Api::namespaced(client.clone(), &self.settings.gateway_namespace);
        let mut r = Reflectors {
            runner: self,
            tasks,
            client,
        };
        // Every Service, not only labelled ones: a ServiceExport exports the Service of its
        // name whatever its labels (stripped by `reflected::service` to a few fields).
        let services = r.all(
            "Service",
            cfg(),
            reflected::service,
            self.marker(mark_named),
        );
        let (slices, endpoints) = match api {
            EndpointApi::EndpointSliceV1 => {
                let slices = r.all(
                    "EndpointSlice",
                    cfg(),
                    reflected::endpoint_slice,
                    Box::new(slice_mark),
                );
                (Some(slices), None)
            }
            EndpointApi::EndpointsV1 => {
                let mark = self.marker(mark_named);
                (
                    None,
                    Some(r.all("Endpoints", cfg(), reflected::endpoints, mark)),
                )
            }
        };
        MemberStores {
            services,
            slices,
            endpoints,
            nodes: r.all("Node", cfg(), reflected::node, self.marker(mark_node)),
            // Full Pods, for their IPs (an endpoint's address must be its Pod's IP, see
            // `targets`), stripped to labels and IPs by `reflected::pod`. Pages of 100, not
            // 500: a page is held whole while it is parsed, before the strip, and pods are
            // what a member's users can inflate (up to the API server's ~1.5 MiB per object,
            // in metadata or spec alike).
            pods: r.all(
                "Pod",
                cfg().page_size(100),
                reflected::pod,
                self.marker(mark_pod),
            ),
            gateway: self.reflect(
                r.tasks,
                "GatewayService",
                gateway_api,
                gateway,
                reflected::gateway_service,
                self.marker(|_| Some(Mark::Peers)),
            ),
            service_exports: self.reflect_service_exports(r.tasks, client),
            mcs_served: false,
        }
    }

    /// Reflects MCS ServiceExports (metadata only). The CRD may not be installed (yet): the
    /// watch is retried but never marks the member lost.
    fn reflect_service_exports(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        client: &Client,
    ) -> Store<crate::mcs::ExportMeta> {
        let api = Api::all(client.clone());
        let (reader, stream) =
            stream_of(api, watcher::Config::default(), reflected::service_export);
        let mark = self.marker(mark_named);
        tasks.spawn(
            self.clone()
                .drive("ServiceExport", Watch::Optional, stream, mark)
                .in_current_span(),
        );
        reader
    }

    /// Marks what an event of a `K` reflector changed: `object` marks per object; a
    /// (re)list, which may have dropped objects without a deletion event, marks the member.
    fn marker<K: Send + Sync + 'static>(&self, object: fn(&K) -> Option<Mark>) -> MarkOf<K> {
        Box::new(move |ev| match ev {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) => object(o),
            watcher::Event::InitDone => Some(Mark::Member),
            watcher::Event::Init | watcher::Event::InitApply(_) => None,
        })
    }

    /// Probes the API server every `probe_interval`, forever.
    async fn probe(&self, client: &Client) {
        let mut tick = tokio::time::interval(self.settings.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let probe = tokio::time::timeout(
                self.settings.probe_interval.max(Duration::from_secs(2)),
                client.apiserver_version(),
            )
            .await;
            match probe {
                // `/version` may be open to anyone: it cannot clear a credentials problem
                // (a relisting reflector does).
                Ok(Ok(_)) if self.state.borrow().phase == Phase::InvalidCredentials => {}
                Ok(Ok(_)) => self.update(|s| {
                    if s.phase != Phase::Synced {
                        info!("member reachable again");
                    }
                    synced(s);
                }),
                Ok(Err(e)) => self.lost(&e),
                Err(_) => self.update(|s| {
                    s.phase = Phase::Unreachable;
                    s.lost_since.get_or_insert_with(Instant::now);
                    s.message = Some("API server probe timed out".into());
                }),
            }
        }
    }

    /// Reflects `api` into a store, keeping of each object only what `strip` leaves (see
    /// [`crate::members::reflected`]).
    fn reflect<K: Reflectable>(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        resource: &'static str,
        api: Api<K>,
        cfg: watcher::Config,
        strip: fn(&mut K),
        mark: MarkOf<K>,
    ) -> Store<K> {
        let (reader, stream) = stream_of(api, cfg, strip);
        tasks.spawn(
            self.clone()
                .drive(resource, Watch::Required, stream, mark)
                .in_current_span(),
        );
        reader
    }

    /// Consumes one reflector stream with reconnect backoff, reporting events and errors.
    /// Errors of an optional watch (a CRD that may not be installed) are retried but never
    /// mark the member lost.
    async fn drive<K>(
        self: Arc<Self>,
        resource: &'static str,
        watch: Watch,
        stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
        mark: MarkOf<K>,
    ) {
        let backoff = kube::runtime::watcher::ExponentialBackoff::from(reconnect_backoff());
        let mut stream = std::pin::pin!(stream.backoff(backoff));
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    self.settings.metrics.watch_event(&self.spec.name, resource);
                    // The store already holds the event's change (the reflector applies it
                    // before passing it on), so a pass that takes the mark sees it.
                    if let Some(m) = mark(&ev) {
                        self.settings.marks.send(&self.spec.name, m);
                    }
                    if matches!(ev, watcher::Event::InitDone) {
                        debug!(resource, "listed");
                        // A relist after an outage means the server is back.
                        self.update(|s| {
                            if s.lost_since.is_some() && s.phase != Phase::Connecting {
                                synced(s);
                            }
                        });
                    }
                    self.settings.notify.notify_one();
                }
                Err(e) if watch == Watch::Optional => {
                    debug!(resource, error = %e, "optional watch failed");
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

/// A Kubernetes type a member's reflector can hold.
trait Reflectable:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
}

impl<K> Reflectable for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// What a reflector event of a `K` marks ([`crate::dirty`]).
type MarkOf<K> = Box<dyn Fn(&watcher::Event<K>) -> Option<Mark> + Send + Sync>;

/// A Service, Endpoints or ServiceExport marks the service of its namespace/name.
fn mark_named<K: Resource>(o: &K) -> Option<Mark> {
    let m = o.meta();
    Some(Mark::Service(ServiceKey::new(
        m.namespace.as_deref()?,
        m.name.as_deref()?,
    )))
}

/// A Pod marks itself (resolved to the services reading it).
fn mark_pod(p: &Pod) -> Option<Mark> {
    let m = &p.metadata;
    Some(Mark::Pod(m.namespace.clone()?, m.name.clone()?))
}

/// A Node marks itself (resolved to the services with endpoints on it).
fn mark_node(n: &Node) -> Option<Mark> {
    Some(Mark::Node(n.metadata.name.clone()?))
}

/// An EndpointSlice event, for the aggregator's index of slices per Service (its relist
/// included: the index swaps when the store does).
fn slice_mark(ev: &watcher::Event<EndpointSlice>) -> Option<Mark> {
    let id = |s: &EndpointSlice| {
        Some((
            s.metadata.namespace.clone()?,
            s.metadata.name.clone()?,
            slice_owner(s),
        ))
    };
    let event = match ev {
        watcher::Event::Init => SliceEvent::Relist,
        watcher::Event::InitDone => SliceEvent::Relisted,
        watcher::Event::InitApply(s) => {
            let (ns, name, owner) = id(s)?;
            SliceEvent::Listed(ns, name, owner)
        }
        watcher::Event::Apply(s) => {
            let (ns, name, owner) = id(s)?;
            SliceEvent::Applied(ns, name, owner)
        }
        watcher::Event::Delete(s) => {
            let (ns, name, _) = id(s)?;
            SliceEvent::Deleted(ns, name)
        }
    };
    Some(Mark::Slice(event))
}

/// Whether a watch's failures say anything about the member's reachability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// A resource every member serves: failing to list it means trouble.
    Required,
    /// A resource that may not be served (the MCS CRDs).
    Optional,
}

/// A store of `K` and the reflector stream that fills it, each object stripped by `strip`.
fn stream_of<K: Reflectable>(
    api: Api<K>,
    cfg: watcher::Config,
    strip: fn(&mut K),
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
) {
    let (reader, writer) = reflector::store();
    let stream = watcher(api, cfg).modify(strip);
    (reader, reflector::reflector(writer, stream))
}

/// Starts cluster-wide reflectors of one member in its task set.
struct Reflectors<'a> {
    runner: &'a Arc<Runner>,
    tasks: &'a mut JoinSet<()>,
    client: &'a Client,
}

impl Reflectors<'_> {
    /// Reflects every `K` of the member that `cfg` selects, stripped by `strip`.
    fn all<K: Reflectable>(
        &mut self,
        resource: &'static str,
        cfg: watcher::Config,
        strip: fn(&mut K),
        mark: MarkOf<K>,
    ) -> Store<K> {
        let api = Api::all(self.client.clone());
        self.runner
            .reflect(self.tasks, resource, api, cfg, strip, mark)
    }
}

/// EndpointSlice v1 when served, else core/v1 Endpoints.
pub(crate) async fn detect_endpoint_api(client: &Client) -> kube::Result<EndpointApi> {
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
