//! The aggregator: the loop that turns what the members' reflectors hold into the catalog,
//! the VIP Services, the snapshot and the status view.
//!
//! Any change anywhere pokes one `Notify`; the members' reflector events also mark what
//! changed ([`crate::dirty`]). A pass rebuilds only the catalog entries of the marked
//! services ([`crate::incremental`]); the first pass, and one every [`PERIOD`], rebuild
//! everything (and say when that found a change no mark had announced). Passes are
//! coalesced ([`crate::coalesce`]): the first change after a quiet period is processed at
//! once, a burst at most once per [`SETTLE`]. Stale-endpoint grace is a deadline the loop
//! also wakes for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::Store;
use meridian_api::Locality;
use meridian_api::resources::Resources;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, instrument, warn};

use crate::catalog::{self, Catalog, GlobalServiceEntry, ServiceKey};
use crate::coalesce::Coalescer;
use crate::config::Config;
use crate::crd::{GlobalTrafficPolicy, MemberCluster, MemberClusterStatus, Phase};
use crate::dirty::{Dirty, Mark, SliceTable};
use crate::drain::{DrainState, Drains};
use crate::grpc::discovery::SnapshotPublisher;
use crate::incremental::{self, IncrementalCatalog, MemberObjects};
use crate::members::member::{Member, MemberSpec, MemberState, StoreObjects};
use crate::members::registry::Registry;
use crate::metrics::Metrics;
use crate::policy::PolicyInForce;
use crate::snapshot::{self, PeerInfo, SnapshotInput, VipInfo};
use crate::status::{MemberReport, StatusView, rfc3339};
use crate::vip::{self, VipManager};

/// During a burst of watch events, at most one pass per this window.
const SETTLE: Duration = Duration::from_millis(25);
/// Recompute at least this often (refreshes member status and retries), rebuilding the
/// whole catalog as a consistency check.
const PERIOD: Duration = Duration::from_secs(10);
/// Retry delay after a failed VIP reconcile.
const VIP_RETRY: Duration = Duration::from_secs(2);

/// The address of a member's gateway: its Service's LoadBalancer ingress (with the port
/// named `tunnel`, else the first), else the registration's `meridian.io/gateway-address`.
pub(crate) fn gateway_address(svc: Option<&Service>, fallback: Option<&str>) -> Option<String> {
    let from_lb = svc.and_then(|s| {
        let ingress = s
            .status
            .as_ref()?
            .load_balancer
            .as_ref()?
            .ingress
            .as_ref()?;
        let host = ingress
            .iter()
            .find_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))?;
        let ports = s.spec.as_ref()?.ports.as_ref()?;
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some("tunnel"))
            .or_else(|| ports.first())?
            .port;
        Some(if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        })
    });
    from_lb.or_else(|| fallback.map(str::to_owned))
}

/// What the aggregator reads and writes, handed over once (as kube-rs' controller-rs hands
/// its reconcilers a `Context`).
pub(crate) struct Context {
    /// The controller's configuration.
    pub(crate) config: Arc<Config>,
    /// The members and rejected registrations.
    pub(crate) registry: Arc<Registry>,
    /// The GlobalTrafficPolicies (the policy controller's store).
    pub(crate) policies: Store<GlobalTrafficPolicy>,
    /// The managed VIP Services as the API server has them (what followers serve).
    pub(crate) managed: Store<Service>,
    /// The MemberCluster objects, for the drains in their specs.
    pub(crate) member_objects: Store<MemberCluster>,
    /// Whether this replica leads (writes VIP Services).
    pub(crate) leader: watch::Receiver<bool>,
    /// Where snapshots go to the Discovery service.
    pub(crate) publisher: SnapshotPublisher,
    /// Where status views go to the status writer.
    pub(crate) status: watch::Sender<Option<Arc<StatusView>>>,
    /// Poked on every change anywhere.
    pub(crate) notify: Arc<Notify>,
    /// What the members' reflector events marked changed (the receiving end; `None` only
    /// when it was taken already).
    pub(crate) marks: Option<mpsc::UnboundedReceiver<(String, Mark)>>,
    /// Metrics.
    pub(crate) metrics: Arc<Metrics>,
}

/// The loop's state between passes.
pub(crate) struct Aggregator {
    ctx: Context,
    vips: VipManager,
    /// Whether `vips` holds the allocation read back since this replica last became leader.
    vips_current: bool,
    started: Instant,
    published: bool,
    /// The catalog and MCS view, rebuilt per marked service.
    incremental: IncrementalCatalog,
    /// When everything was last rebuilt.
    last_full: Option<Instant>,
    /// The members whose endpoints counted in the last pass, and whether stale: a change
    /// marks the member.
    counted: BTreeMap<String, bool>,
    coalescer: Coalescer,
    /// The members' marks.
    marks: mpsc::UnboundedReceiver<(String, Mark)>,
    /// Each member's EndpointSlices per Service, from its slice events.
    slices: BTreeMap<String, SliceTable>,
    /// The published resources, updated per changed service.
    resources: Resources,
    /// What each service's published resources were made of.
    service_inputs: BTreeMap<ServiceKey, ServiceInputs>,
}

/// What one service's resources are made of: they are rebuilt when any of it changes (the
/// catalog keeps an unchanged entry's `Arc`, so comparing it is a pointer comparison).
struct ServiceInputs {
    entry: Arc<GlobalServiceEntry>,
    vip: Option<VipInfo>,
    policy: Option<meridian_api::TrafficPolicy>,
    headless: bool,
}

/// When the next pass is due at the latest: the soonest of the deadlines seen.
struct Deadline(Instant);

impl Deadline {
    fn at(&mut self, t: Instant) {
        self.0 = self.0.min(t);
    }
}

/// A member as one pass sees it, for its status.
struct Seen {
    name: String,
    spec: MemberSpec,
    state: MemberState,
    /// Lost beyond the stale grace: its endpoints are withdrawn.
    withdrawn: bool,
}

/// What one pass gathers from the members.
#[derive(Default)]
struct Observed {
    /// The members whose endpoints count, looked up by name.
    inputs: Vec<StoreObjects>,
    /// The other members' gateways.
    peers: Vec<PeerInfo>,
    /// Every member, for status.
    seen: Vec<Seen>,
    /// The locality of the own cluster's gateway endpoints.
    local_gateway_locality: Option<Locality>,
    /// The members' drains (from their MemberCluster specs) at this pass.
    drains: Drains,
    /// Nodes per member.
    node_counts: BTreeMap<String, u32>,
}

impl Aggregator {
    /// Assembles the aggregator; `vips` holds the allocation read back at start.
    pub(crate) fn new(mut ctx: Context, vips: VipManager) -> Self {
        let marks = ctx
            .marks
            .take()
            .unwrap_or_else(|| crate::dirty::Marks::channel().1);
        Self {
            marks,
            slices: BTreeMap::new(),
            resources: Resources::new(),
            service_inputs: BTreeMap::new(),
            ctx,
            vips,
            vips_current: true,
            started: Instant::now(),
            published: false,
            incremental: IncrementalCatalog::new(),
            last_full: None,
            counted: BTreeMap::new(),
            coalescer: Coalescer::new(SETTLE),
        }
    }

    /// Runs until aborted, or until leadership can no longer be followed.
    pub(crate) async fn run(mut self) {
        loop {
            let wake = self.pass().await;
            self.coalescer.passed(Instant::now());
            tokio::select! {
                _ = self.ctx.notify.notified() => {}
                _ = tokio::time::sleep_until(wake) => {}
                changed = self.ctx.leader.changed() => if changed.is_err() { return },
            }
            self.coalescer.settle().await;
        }
    }

    /// One recomputation. Returns when the next one is due at the latest.
    #[instrument(name = "aggregate", skip_all)]
    async fn pass(&mut self) -> Instant {
        let now = Instant::now();
        let mut next = Deadline(now + PERIOD);
        let members = self.ctx.registry.members();
        // Taken before the stores are read: a change after this is marked for the next pass.
        let mut dirty = self.take_marks(&members);
        let mut observed = self.observe(&members, now, &mut next);
        if !self.ready_to_act(&members, now, &mut next) {
            return next.0;
        }
        let dirty = dirty_members(&mut dirty, &mut self.counted, &observed);
        self.rebuild(&observed, dirty, now);
        let catalog = Arc::new(self.incremental.catalog().clone());
        let mcs = Arc::new(self.incremental.mcs().clone());
        let all_policies = self.ctx.policies.state();
        let policies = crate::policy::in_force(&all_policies);
        self.ctx
            .metrics
            .set_policy_rejections(crate::policy::rejections(&all_policies));
        let reconciled = self.reconcile_vips(&catalog, &mut next).await;
        self.record(&catalog, &reconciled);
        observed.drains = Drains::of(
            &self.ctx.member_objects,
            self.ctx.registry.local_name(),
            std::time::SystemTime::now(),
        );
        if let Some(step) = observed.drains.next_step {
            next.at(Instant::now() + step);
        }
        self.ctx.metrics.set_drains(&observed.drains);
        self.publish_resources(&catalog, &reconciled.vips, &policies, &mcs, &mut observed);
        let members = self.member_reports(observed, &members);
        let _ = self.ctx.status.send(Some(Arc::new(StatusView {
            catalog,
            vips: reconciled.vips,
            vip_refusals: reconciled.refused,
            policies,
            members,
            zone: self.ctx.config.zone.clone(),
            mcs,
        })));
        next.0
    }

    /// Every mark received so far (slice events applied to the slice index), and forgets
    /// the slice index of members no longer registered.
    fn take_marks(&mut self, members: &Members) -> Dirty {
        let mut dirty = Dirty::default();
        while let Ok((cluster, mark)) = self.marks.try_recv() {
            match mark {
                Mark::Service(key) => dirty.service(key),
                Mark::Pod(ns, name) => dirty.pod(&cluster, &ns, &name),
                Mark::Node(name) => dirty.node(&cluster, &name),
                Mark::Member => dirty.member(&cluster),
                Mark::Peers => dirty.peers(),
                Mark::Slice(event) => {
                    let table = self.slices.entry(cluster.clone()).or_default();
                    table.apply(&cluster, event, &mut dirty);
                }
            }
        }
        self.slices.retain(|name, _| members.contains_key(name));
        dirty
    }

    /// Rebuilds the catalog entries of the services `dirty` resolves to, or of all
    /// services on the first pass and every [`PERIOD`].
    fn rebuild(&mut self, observed: &Observed, dirty: Dirty, now: Instant) {
        let members: Vec<&dyn MemberObjects> = observed
            .inputs
            .iter()
            .map(|m| m as &dyn MemberObjects)
            .collect();
        let local = self.ctx.registry.local_name();
        let full = self
            .last_full
            .is_none_or(|at| now.duration_since(at) >= PERIOD);
        if full {
            let changed = self.incremental.rebuild_all(&members, local);
            if self.last_full.is_some() && !changed.is_empty() && dirty.is_empty() {
                // Only a change between the take and this rebuild (marked for the next
                // pass) or a missed mark can do this.
                debug!(
                    services = changed.len(),
                    "full rebuild changed services no mark announced"
                );
            }
            self.last_full = Some(now);
        } else {
            let keys = dirty.resolve(&self.incremental, &members);
            let changed = self.incremental.rebuild(&members, local, &keys);
            debug!(
                marked = keys.len(),
                changed = changed.len(),
                "services rebuilt"
            );
        }
    }

    /// Reads every member's state and stores; a member lost for less than the grace is kept
    /// (stale) and the pass is due again when its grace ends.
    fn observe(&self, members: &Members, now: Instant, next: &mut Deadline) -> Observed {
        let grace = self.ctx.config.stale_endpoint_grace;
        let mut observed = Observed::default();
        for (name, m) in members.iter() {
            let state = m.state();
            let withdrawn = state
                .lost_since
                .is_some_and(|since| now.duration_since(since) >= grace);
            if let Some(since) = state.lost_since
                && !withdrawn
            {
                next.at(since + grace);
            }
            self.observe_member(&mut observed, name, m, &state, withdrawn);
            observed.seen.push(Seen {
                name: name.clone(),
                spec: m.spec.clone(),
                state,
                withdrawn,
            });
        }
        observed
    }

    /// One member's catalog input, node count and gateway (its locality when it is the own
    /// cluster's, else a peer).
    fn observe_member(
        &self,
        observed: &mut Observed,
        name: &str,
        m: &Member,
        state: &MemberState,
        withdrawn: bool,
    ) {
        let local = name == self.ctx.registry.local_name();
        let Some(stores) = m.stores() else {
            // Not connected yet: a registered gateway address still makes it a peer.
            if !local && let Some(address) = m.spec.gateway_address.clone() {
                observed.peers.push(PeerInfo {
                    cluster: name.to_owned(),
                    address,
                    locality: Locality::default(),
                });
            }
            return;
        };
        observed
            .node_counts
            .insert(name.to_owned(), stores.node_count() as u32);
        let input = StoreObjects {
            cluster: name.to_owned(),
            stale: state.lost_since.is_some(),
            stores: stores.clone(),
            slices: self
                .slices
                .get(name)
                .map(|t| t.current.clone())
                .unwrap_or_default(),
        };
        let config = &self.ctx.config;
        let gateway = ServiceKey::new(config.namespace.as_str(), config.gateway_service.as_str());
        let gw_locality = catalog::service_locality(
            &incremental::objects_of(&input, &gateway),
            &config.namespace,
            &config.gateway_service,
        );
        if local {
            observed.local_gateway_locality = gw_locality;
        } else if let Some(address) = gateway_address(
            stores.gateway().as_deref(),
            m.spec.gateway_address.as_deref(),
        ) {
            observed.peers.push(PeerInfo {
                cluster: name.to_owned(),
                address,
                locality: gw_locality.unwrap_or_default(),
            });
        }
        if withdrawn {
            debug!(cluster = %name, "member lost beyond the grace: endpoints withdrawn");
        } else {
            observed.inputs.push(input);
        }
    }

    /// Nothing is acted on before the members have synced (or the initial timeout passed):
    /// a restarting controller must neither hand its gateway a half-empty snapshot nor
    /// garbage-collect the VIP Services of services it has not seen yet. A follower serves
    /// the VIPs it reads from the managed Services: not before it has listed them, or its
    /// gateways would be told every VIP and listener is gone.
    fn ready_to_act(&self, members: &Members, now: Instant, next: &mut Deadline) -> bool {
        let config = &self.ctx.config;
        let local_synced = members
            .get(self.ctx.registry.local_name())
            .is_some_and(|m| m.state().phase == Phase::Synced);
        let others_settled = members
            .values()
            .all(|m| m.state().phase != Phase::Connecting);
        let waited = now.duration_since(self.started) >= config.initial_sync_timeout;
        if !(self.published || (local_synced && (others_settled || waited))) {
            debug!("waiting for the initial sync");
            next.at(self.started + config.initial_sync_timeout);
            return false;
        }
        if !*self.ctx.leader.borrow()
            && self.ctx.managed.wait_until_ready().now_or_never().is_none()
        {
            debug!("waiting for the managed VIP Services to be listed");
            next.at(Instant::now() + SETTLE * 4);
            return false;
        }
        true
    }

    /// The VIPs of `catalog`; a failed reconcile is counted and retried soon.
    async fn reconcile_vips(&mut self, catalog: &Catalog, next: &mut Deadline) -> vip::Reconciled {
        let (reconciled, result) = self.vips(catalog).await;
        if let Err(e) = result {
            warn!(error = %e, "VIP reconcile incomplete, retrying");
            self.ctx.metrics.reconcile_failed("vip", &e);
            next.at(Instant::now() + VIP_RETRY);
        }
        reconciled
    }

    /// The pass's metrics: VIP refusals, catalog size, skipped endpoints.
    fn record(&self, catalog: &Catalog, reconciled: &vip::Reconciled) {
        let metrics = &self.ctx.metrics;
        metrics.set_vip_refusals(reconciled.refused.values().map(vip::Refusal::reason));
        metrics.reconciled("aggregate");
        metrics.catalog_services.set(catalog.services.len() as i64);
        metrics
            .catalog_endpoints
            .set(catalog.endpoint_count() as i64);
        for (skip, n) in catalog.skipped_counts() {
            metrics
                .skipped_endpoints
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: skip.label().to_owned(),
                })
                .set(i64::from(n));
        }
    }

    /// Updates the resources of the services whose entry, VIP, policy or MCS type changed
    /// since the last pass (and removes those gone), sets the header, and publishes the
    /// resources when their system version is new.
    fn publish_resources(
        &mut self,
        catalog: &Catalog,
        vips: &BTreeMap<ServiceKey, VipInfo>,
        policies: &BTreeMap<ServiceKey, PolicyInForce>,
        mcs: &crate::mcs::McsView,
        observed: &mut Observed,
    ) {
        let config = &self.ctx.config;
        let mut rebuilt = 0usize;
        for (key, entry) in &catalog.services {
            let vip = vips.get(key);
            let policy = policies.get(key).map(|p| &p.policy);
            let headless = mcs
                .imports
                .get(key)
                .is_some_and(|i| i.type_ == crate::mcs::types::ImportType::Headless);
            let same = self.service_inputs.get(key).is_some_and(|s| {
                Arc::ptr_eq(&s.entry, entry)
                    && s.vip.as_ref() == vip
                    && s.policy.as_ref() == policy
                    && s.headless == headless
            });
            if same {
                continue;
            }
            let svc = snapshot::global_service(entry, vip, policy, &config.zone, headless);
            self.resources.set_service(&svc);
            self.service_inputs.insert(
                key.clone(),
                ServiceInputs {
                    entry: entry.clone(),
                    vip: vip.cloned(),
                    policy: policy.cloned(),
                    headless,
                },
            );
            rebuilt += 1;
        }
        let gone: Vec<ServiceKey> = self
            .service_inputs
            .keys()
            .filter(|k| !catalog.services.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.resources.remove_service(&key.hostname(&config.zone));
            self.service_inputs.remove(&key);
        }
        self.resources.set_header(snapshot::header(&SnapshotInput {
            cluster: self.ctx.registry.local_name(),
            locality: config
                .locality()
                .or(observed.local_gateway_locality.take())
                .unwrap_or_default(),
            trust_domain: &config.trust_domain,
            zone: &config.zone,
            peers: std::mem::take(&mut observed.peers),
            drains: observed.drains.for_snapshot.clone(),
            ..SnapshotInput::default()
        }));
        let version = self.resources.version();
        debug!(rebuilt, "service resources rebuilt");
        if self.ctx.publisher.publish_resources(self.resources.clone()) {
            info!(
                version,
                services = catalog.services.len(),
                "snapshot published"
            );
            self.ctx.metrics.snapshot_publishes.inc();
            self.ctx.metrics.snapshot_version.set(version);
        }
        self.published = true;
    }

    /// The status of every member, then of every rejected registration that does not hide
    /// a member.
    fn member_reports(&self, observed: Observed, members: &Members) -> Vec<MemberReport> {
        let local_name = self.ctx.registry.local_name();
        let mut reports: Vec<MemberReport> = observed
            .seen
            .into_iter()
            .map(|seen| {
                let drain = observed.drains.members.get(&seen.name);
                let counts = self.incremental.member_counts(&seen.name);
                member_report(
                    seen,
                    counts,
                    &observed.node_counts,
                    members,
                    local_name,
                    drain,
                )
            })
            .collect();
        for r in self.ctx.registry.rejected().iter() {
            if reports.iter().any(|m| m.name == r.report_as) {
                continue; // never hide a member behind a rejected registration
            }
            reports.push(MemberReport {
                name: r.report_as.clone(),
                local: false,
                secret: Some(r.secret.clone()),
                status: MemberClusterStatus {
                    phase: r.phase,
                    message: Some(r.reason.clone()),
                    ..MemberClusterStatus::default()
                },
            });
        }
        reports
    }
}

/// Marks every member that joined or left the counted ones, or turned stale or back,
/// since the last pass, and records this pass's; returns the marks.
fn dirty_members(
    dirty: &mut Dirty,
    counted: &mut BTreeMap<String, bool>,
    observed: &Observed,
) -> Dirty {
    let now: BTreeMap<String, bool> = observed
        .inputs
        .iter()
        .map(|m| (m.cluster.clone(), m.stale))
        .collect();
    for name in counted.keys().chain(now.keys()) {
        if counted.get(name) != now.get(name) {
            dirty.member(name);
        }
    }
    *counted = now;
    std::mem::take(dirty)
}

/// The members by name, as the registry hands them out.
type Members = BTreeMap<String, Arc<Member>>;

/// One member's status: its connection, what it contributes to the catalog, its gateway.
fn member_report(
    seen: Seen,
    counts: incremental::MemberCounts,
    node_counts: &BTreeMap<String, u32>,
    members: &Members,
    local_name: &str,
    drain: Option<&DrainState>,
) -> MemberReport {
    let Seen {
        name,
        spec,
        state,
        withdrawn,
    } = seen;
    let incremental::MemberCounts {
        services,
        endpoints,
    } = counts;
    let (drain_text, drain_permille) = drain.map(DrainState::status).unzip();
    let status = MemberClusterStatus {
        phase: state.phase,
        server: state.server.clone(),
        endpoint_api: state.endpoint_api.map(|a| a.to_string()),
        last_sync_time: state.last_sync.map(rfc3339),
        services,
        endpoints,
        nodes: node_counts.get(&name).copied().unwrap_or_default(),
        gateway_address: snapshot_peer_address(&name, members, local_name),
        message: member_message(&state, withdrawn),
        drain: drain_text,
        drain_permille: drain_permille.flatten(),
    };
    MemberReport {
        local: name == local_name,
        secret: spec.secret.clone(),
        name,
        status,
    }
}

/// The member's last error, and what became of its endpoints while it is lost.
fn member_message(state: &MemberState, withdrawn: bool) -> Option<String> {
    let lost = |what: &str| {
        let message = state.message.clone();
        Some(format!(
            "{}; {what}",
            message.unwrap_or_else(|| "unreachable".into())
        ))
    };
    if withdrawn {
        lost("endpoints withdrawn after the stale grace")
    } else if state.lost_since.is_some() && state.last_sync.is_some() {
        // Only a member that synced once has endpoints to keep.
        lost("last endpoints kept as stale")
    } else {
        state.message.clone()
    }
}

impl Aggregator {
    /// VIPs and listener ports: the leader allocates and applies them (and knows which
    /// VIPs it refused); other replicas read what the leader applied.
    async fn vips(&mut self, catalog: &Catalog) -> (vip::Reconciled, crate::Result<()>) {
        let followed = |managed: &Store<Service>| vip::Reconciled {
            vips: vip::vips_of(managed.state().iter().map(|s| s.as_ref()), catalog),
            refused: BTreeMap::new(),
        };
        if !*self.ctx.leader.borrow_and_update() {
            self.vips_current = false;
            return (followed(&self.ctx.managed), Ok(()));
        }
        if !self.vips_current {
            // Another leader may have allocated since this replica last wrote.
            if let Err(e) = self.vips.read_back().await {
                return (followed(&self.ctx.managed), Err(e));
            }
            self.vips_current = true;
        }
        self.vips.reconcile(catalog).await
    }
}

fn snapshot_peer_address(name: &str, members: &Members, local: &str) -> Option<String> {
    if name == local {
        return None;
    }
    let m = members.get(name)?;
    gateway_address(
        m.stores().and_then(|s| s.gateway()).as_deref(),
        m.spec.gateway_address.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
    };

    #[test]
    fn gateway_address_prefers_load_balancer() {
        let svc = Service {
            spec: Some(ServiceSpec {
                ports: Some(vec![
                    ServicePort {
                        name: Some("admin".into()),
                        port: 15021,
                        ..Default::default()
                    },
                    ServicePort {
                        name: Some("tunnel".into()),
                        port: 15443,
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: Some("192.0.2.1".into()),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            gateway_address(Some(&svc), Some("127.0.0.9:1")).as_deref(),
            Some("192.0.2.1:15443")
        );
        assert_eq!(
            gateway_address(Some(&Service::default()), Some("127.0.0.9:1")).as_deref(),
            Some("127.0.0.9:1")
        );
        assert_eq!(gateway_address(None, None), None);
    }
}
