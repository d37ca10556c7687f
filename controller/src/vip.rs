//! VIPs: per global service, a managed ClusterIP Service in the controller's namespace that
//! selects the gateway pods and maps each service port to a gateway listener port. Its
//! ClusterIP is the global service's VIP in this cluster.
//!
//! Per global service and exporting member cluster there is one more managed Service, the
//! VIP pinned to that cluster (`<cluster>.<svc>.<ns>.global`): same shape, its own listener
//! ports, and the gateway sends what arrives on them only to that cluster's endpoints.
//!
//! Listener ports are allocated from a range, lowest free first, and are stable: on start
//! (and on becoming the leader) the allocation is read back from the managed Services (the
//! API server is the only state). Managed objects carry `app.kubernetes.io/managed-by:
//! meridian` and are deleted when their global service (or the pinned cluster's export)
//! disappears. Replicas that do not lead only read the managed Services ([`vips_of`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use k8s_openapi::api::core::v1::{Namespace, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tracing::{info, instrument, warn};

use crate::catalog::{Catalog, ServiceKey};
use crate::snapshot::VipInfo;
use crate::{Error, Result};

pub use meridian_crd::{MANAGED_BY, MANAGED_BY_LABEL};
/// Annotation naming the global service (`<namespace>/<name>`) of a managed Service.
pub const GLOBAL_SERVICE_ANNOTATION: &str = "meridian.io/global-service";
/// Annotation naming the cluster a managed Service's VIP is pinned to (absent on the
/// service's own VIP).
pub(crate) const PINNED_CLUSTER_ANNOTATION: &str = "meridian.io/pinned-cluster";
/// Field manager for server-side apply.
pub(crate) const FIELD_MANAGER: &str = "meridian-controller";

/// What a managed Service stands for: a global service's VIP, or its VIP pinned to one
/// exporting cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipKey {
    /// The global service.
    pub service: ServiceKey,
    /// The cluster the VIP is pinned to; `None` for the service's own VIP.
    pub pinned: Option<String>,
}

impl VipKey {
    /// The global service's own VIP.
    pub fn global(service: ServiceKey) -> Self {
        Self {
            service,
            pinned: None,
        }
    }

    /// The VIP of `service` pinned to `cluster`.
    pub(crate) fn pinned(service: ServiceKey, cluster: impl Into<String>) -> Self {
        Self {
            service,
            pinned: Some(cluster.into()),
        }
    }
}

impl std::fmt::Display for VipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pinned {
            Some(c) => write!(f, "{c}.{}", self.service),
            None => write!(f, "{}", self.service),
        }
    }
}

/// Allocation key: a VIP's port, by name.
type PortKey = (VipKey, String);

/// Why a VIP has no managed Service, or not all of its listener ports. Only that VIP is
/// affected: every other keeps its Service, VIP and ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The listener-port range has too few free ports left for the VIP's ports.
    PortsExhausted {
        /// The configured range, `LOW-HIGH`.
        range: String,
        /// Ports the VIP still needed.
        needed: usize,
    },
    /// The VIP's namespace already uses its cap of listener ports.
    NamespacePortLimit {
        /// The cap (`--max-listener-ports-per-namespace`).
        limit: usize,
        /// Ports the namespace holds already.
        used: usize,
        /// Ports the VIP still needed.
        needed: usize,
    },
    /// A Service with the managed Service's name exists and does not stand for this VIP
    /// (its `meridian.io/global-service` annotation names another, or it is not managed).
    NameConflict {
        /// The managed Service's name.
        name: String,
        /// What its annotation names (empty when it has none).
        owner: String,
    },
}

impl Refusal {
    /// Every reason, for metrics.
    pub(crate) const REASONS: [&'static str; 3] =
        ["PortsExhausted", "NamespacePortLimit", "NameConflict"];

    /// The `VipAllocated` condition reason.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refusal::PortsExhausted { .. } => Self::REASONS[0],
            Refusal::NamespacePortLimit { .. } => Self::REASONS[1],
            Refusal::NameConflict { .. } => Self::REASONS[2],
        }
    }

    /// A message naming the VIP and what is missing.
    pub(crate) fn message(&self, vip: &VipKey) -> String {
        let which = match &vip.pinned {
            Some(c) => format!("the VIP pinned to {c}"),
            None => "the VIP".to_owned(),
        };
        match self {
            Refusal::PortsExhausted { range, needed } => format!(
                "{which}: no {needed} free listener port(s) left in {range}; other services keep theirs"
            ),
            Refusal::NamespacePortLimit {
                limit,
                used,
                needed,
            } => format!(
                "{which}: namespace {} holds {used} of its {limit} listener ports, {needed} more needed",
                vip.service.namespace
            ),
            Refusal::NameConflict { name, owner } => format!(
                "{which}: Service {name} exists and belongs to {}; it is not touched",
                if owner.is_empty() {
                    "no global service"
                } else {
                    owner
                }
            ),
        }
    }
}

/// The outcome of one allocation: listener ports per VIP (only VIPs with at least one), and
/// the VIPs that did not get all of theirs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Allocation {
    /// Listener port per VIP and port name.
    pub listeners: BTreeMap<VipKey, BTreeMap<String, u32>>,
    /// VIPs missing some or all of their ports, and why.
    pub refused: BTreeMap<VipKey, Refusal>,
}

/// Stable, collision-free gateway listener port allocation.
#[derive(Debug, Clone)]
pub(crate) struct PortAllocator {
    range: RangeInclusive<u16>,
    namespace_limit: usize,
    by_key: BTreeMap<PortKey, u16>,
}

impl PortAllocator {
    /// An empty allocator over `range`, with no per-namespace cap.
    pub(crate) fn new(range: RangeInclusive<u16>) -> Self {
        Self {
            range,
            namespace_limit: usize::MAX,
            by_key: BTreeMap::new(),
        }
    }

    /// Caps the listener ports the VIPs of one namespace may hold together.
    pub(crate) fn with_namespace_limit(mut self, limit: usize) -> Self {
        self.namespace_limit = limit;
        self
    }

    /// Adopts an allocation read back from the cluster. Ports outside the range, or already
    /// taken by another key, are refused (and re-allocated later).
    pub(crate) fn adopt(&mut self, key: VipKey, port_name: String, listener: u16) -> bool {
        if !self.range.contains(&listener) || self.by_key.values().any(|p| *p == listener) {
            return false;
        }
        self.by_key.insert((key, port_name), listener).is_none()
    }

    /// Allocates for every port of every VIP the catalog calls for (each global service, and
    /// each service pinned to each cluster exporting it), keeping existing allocations and
    /// releasing those of ports that are gone.
    ///
    /// Each VIP gets all the ports it still lacks or none of them: one that does not fit in
    /// the range or under its namespace's cap is refused and keeps what it had, and nobody
    /// else's allocation changes. VIPs are served in key order (a service's own VIP before
    /// its pins), so the outcome does not depend on timing.
    pub(crate) fn allocate(&mut self, catalog: &Catalog) -> Allocation {
        let mut wanted: BTreeMap<VipKey, Vec<String>> = BTreeMap::new();
        for s in catalog.services.values() {
            let keys = std::iter::once(VipKey::global(s.key.clone()))
                .chain(s.clusters.iter().map(|c| VipKey::pinned(s.key.clone(), c)));
            for k in keys {
                wanted.insert(k, s.ports.iter().map(|p| p.name.clone()).collect());
            }
        }
        self.by_key
            .retain(|(vip, port), _| wanted.get(vip).is_some_and(|ps| ps.contains(port)));
        let mut used: BTreeSet<u16> = self.by_key.values().copied().collect();
        let mut per_namespace: BTreeMap<String, usize> = BTreeMap::new();
        for (vip, _) in self.by_key.keys() {
            *per_namespace
                .entry(vip.service.namespace.clone())
                .or_default() += 1;
        }
        let mut refused = BTreeMap::new();
        for (vip, ports) in &wanted {
            let missing: Vec<&String> = ports
                .iter()
                .filter(|p| !self.by_key.contains_key(&(vip.clone(), (*p).clone())))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let ns_used = per_namespace
                .get(&vip.service.namespace)
                .copied()
                .unwrap_or_default();
            if ns_used.saturating_add(missing.len()) > self.namespace_limit {
                refused.insert(
                    vip.clone(),
                    Refusal::NamespacePortLimit {
                        limit: self.namespace_limit,
                        used: ns_used,
                        needed: missing.len(),
                    },
                );
                continue;
            }
            let free: Vec<u16> = self
                .range
                .clone()
                .filter(|p| !used.contains(p))
                .take(missing.len())
                .collect();
            if free.len() < missing.len() {
                refused.insert(
                    vip.clone(),
                    Refusal::PortsExhausted {
                        range: format!("{}-{}", self.range.start(), self.range.end()),
                        needed: missing.len(),
                    },
                );
                continue;
            }
            *per_namespace
                .entry(vip.service.namespace.clone())
                .or_default() += missing.len();
            for (port, listener) in missing.into_iter().zip(free) {
                used.insert(listener);
                self.by_key.insert((vip.clone(), port.clone()), listener);
            }
        }
        let mut listeners: BTreeMap<VipKey, BTreeMap<String, u32>> = BTreeMap::new();
        for ((vip, port), listener) in &self.by_key {
            listeners
                .entry(vip.clone())
                .or_default()
                .insert(port.clone(), u32::from(*listener));
        }
        Allocation { listeners, refused }
    }
}

/// Hex characters of the hash in a managed Service's name: 64 bits of SHA-256, so two
/// global services cannot be made to share a name (a 24-bit suffix could be collided in
/// seconds). The owner check before every write covers the rest.
const NAME_HASH_HEX: usize = 16;

/// The first 64 bits of SHA-256 of `s`, in hex.
fn name_hash(s: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    digest.as_ref()[..NAME_HASH_HEX / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the hash in a managed Service's name covers: namespace, name and pinned cluster,
/// with separators no Kubernetes name contains.
fn name_hash_input(key: &VipKey) -> String {
    let svc = &key.service;
    match &key.pinned {
        None => format!("{}/{}", svc.namespace, svc.name),
        Some(c) => format!("{c}@{}/{}", svc.namespace, svc.name),
    }
}

/// The readable part of a managed Service's name, cut so that `-<hash>` fits in a DNS
/// label (63 characters).
fn name_base(key: &VipKey, hash_len: usize) -> String {
    let svc = &key.service;
    let mut base = match &key.pinned {
        None => format!("{}-{}", svc.name, svc.namespace),
        Some(c) => format!("{c}-{}-{}", svc.name, svc.namespace),
    };
    base.truncate(63 - hash_len - 1);
    base.trim_end_matches('-').to_owned()
}

/// Name of the managed Service of a VIP: `<name>-<namespace>-<hash>` for a global service,
/// `<cluster>-<name>-<namespace>-<hash>` for one pinned to a cluster, the readable part cut
/// to fit 63 characters; the 64-bit hash keeps apart keys whose readable parts are equal
/// (`a-b/c` and `a/b-c`, or long names sharing a prefix).
pub fn managed_service_name(key: &VipKey) -> String {
    let hash = name_hash(&name_hash_input(key));
    format!("{}-{hash}", name_base(key, hash.len()))
}

/// The name earlier versions gave the managed Service of `key` (a 24-bit FNV-1a suffix).
/// Services read back under it keep it, so their VIPs stay stable; they are used only when
/// their annotation names `key`.
pub fn legacy_managed_service_name(key: &VipKey) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in name_hash_input(key).bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let hash = format!("{:06x}", h & 0x00ff_ffff);
    format!("{}-{hash}", name_base(key, hash.len()))
}

fn parse_key(annotation: &str) -> Option<ServiceKey> {
    let (ns, name) = annotation.split_once('/')?;
    Some(ServiceKey::new(ns, name))
}

/// The VIP a managed Service stands for, from its annotations.
pub(crate) fn vip_key(svc: &Service) -> Option<VipKey> {
    let service = svc
        .annotations()
        .get(GLOBAL_SERVICE_ANNOTATION)
        .and_then(|a| parse_key(a))?;
    Some(VipKey {
        service,
        pinned: svc.annotations().get(PINNED_CLUSTER_ANNOTATION).cloned(),
    })
}

/// Listener port per service port name of a managed Service (its target ports).
fn listeners_of(svc: &Service) -> BTreeMap<String, u16> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| match p.target_port {
            Some(IntOrString::Int(t)) => {
                Some((p.name.clone().unwrap_or_default(), u16::try_from(t).ok()?))
            }
            _ => None,
        })
        .collect()
}

/// VIPs and listener ports as the managed Services in the cluster say, for the services of
/// `catalog` (how replicas that do not lead learn what the leader allocated). Ports the
/// catalog no longer has, pins to clusters no longer exporting, and Services whose name is
/// not one their annotations' VIP would have (the leader does not use them) are left out.
pub(crate) fn vips_of<'a>(
    managed: impl IntoIterator<Item = &'a Service>,
    catalog: &Catalog,
) -> BTreeMap<ServiceKey, VipInfo> {
    let mut out: BTreeMap<ServiceKey, VipInfo> = BTreeMap::new();
    for svc in managed {
        let Some(key) = vip_key(svc) else { continue };
        let name = svc.name_any();
        if name != managed_service_name(&key) && name != legacy_managed_service_name(&key) {
            continue;
        }
        let Some(entry) = catalog.services.get(&key.service) else {
            continue;
        };
        if key
            .pinned
            .as_ref()
            .is_some_and(|c| !entry.clusters.contains(c))
        {
            continue;
        }
        let listeners = listeners_of(svc);
        let info = VipInfo {
            vip: cluster_ip(svc),
            listeners: entry
                .ports
                .iter()
                .filter_map(|p| Some((p.name.clone(), u32::from(*listeners.get(&p.name)?))))
                .collect(),
            pinned: BTreeMap::new(),
        };
        let slot = out.entry(key.service).or_default();
        match key.pinned {
            Some(c) => {
                slot.pinned.insert(c, info);
            }
            None => {
                let pinned = std::mem::take(&mut slot.pinned);
                *slot = VipInfo { pinned, ..info };
            }
        }
    }
    out
}

/// A managed Service as last seen: whom it stands for and its ClusterIP.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// The VIP its annotations name (`None`: none, or not parseable).
    owner: Option<VipKey>,
    /// Its ClusterIP (empty if none yet).
    cluster_ip: String,
}

impl Seen {
    fn of(svc: &Service) -> Self {
        Seen {
            owner: vip_key(svc),
            cluster_ip: cluster_ip(svc),
        }
    }
}

fn cluster_ip(svc: &Service) -> String {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .filter(|ip| ip != "None")
        .unwrap_or_default()
}

/// What one reconcile produced: VIP and listener ports per global service (with its pinned
/// VIPs), and the VIPs refused.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reconciled {
    /// VIPs and listener ports per global service.
    pub vips: BTreeMap<ServiceKey, VipInfo>,
    /// VIPs without (all of) their ports or Service, and why.
    pub refused: BTreeMap<VipKey, Refusal>,
}

/// The settings of a [`VipManager`].
#[derive(Debug, Clone)]
pub(crate) struct VipSettings {
    /// Namespace of the managed Services.
    pub namespace: String,
    /// Labels of the gateway pods the managed Services select.
    pub selector: BTreeMap<String, String>,
    /// Listener-port range.
    pub range: RangeInclusive<u16>,
    /// Listener ports the VIPs of one namespace may hold together.
    pub namespace_limit: usize,
}

/// Owns the managed VIP Services of the controller's cluster (written only by the leader).
pub(crate) struct VipManager {
    api: Api<Service>,
    settings: VipSettings,
    allocator: PortAllocator,
    /// What was last applied, by managed Service name, to skip no-op API calls.
    applied: BTreeMap<String, Service>,
    /// Managed Services known to exist (labelled as ours), by name.
    known: BTreeMap<String, Seen>,
    /// The name each VIP's Service has, where it is not [`managed_service_name`] (one read
    /// back under its [`legacy_managed_service_name`]).
    names: BTreeMap<VipKey, String>,
    /// What the last reconcile refused, to log changes only.
    refused: BTreeMap<VipKey, Refusal>,
}

impl VipManager {
    /// Reads back existing managed Services and their listener ports.
    #[instrument(skip_all, fields(namespace = %settings.namespace))]
    pub(crate) async fn start(client: Client, settings: VipSettings) -> Result<VipManager> {
        ensure_namespace(&client, &settings.namespace).await;
        let api: Api<Service> = Api::namespaced(client, &settings.namespace);
        let mut m = VipManager {
            api,
            allocator: PortAllocator::new(settings.range.clone())
                .with_namespace_limit(settings.namespace_limit),
            settings,
            applied: BTreeMap::new(),
            known: BTreeMap::new(),
            names: BTreeMap::new(),
            refused: BTreeMap::new(),
        };
        m.read_back().await?;
        Ok(m)
    }

    /// Forgets what it knew and reads the allocation back from the managed Services (on
    /// start, and whenever this replica becomes the leader: another one may have allocated
    /// in between).
    #[instrument(skip_all, fields(namespace = %self.settings.namespace))]
    pub(crate) async fn read_back(&mut self) -> Result<()> {
        let existing = self
            .api
            .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
            .await?;
        let mut allocator = PortAllocator::new(self.settings.range.clone())
            .with_namespace_limit(self.settings.namespace_limit);
        let mut known = BTreeMap::new();
        let mut names = BTreeMap::new();
        let mut adopted = 0;
        let mut items = existing.items;
        items.sort_by_key(|s| s.name_any());
        for svc in items {
            let name = svc.name_any();
            let seen = Seen::of(&svc);
            known.insert(name.clone(), seen.clone());
            let Some(key) = seen.owner else { continue };
            if name == legacy_managed_service_name(&key) {
                names.insert(key.clone(), name.clone());
            } else if name != managed_service_name(&key) {
                // Under neither of its names: not used (collected as stale).
                continue;
            }
            for (port, listener) in listeners_of(&svc) {
                if allocator.adopt(key.clone(), port.clone(), listener) {
                    adopted += 1;
                } else {
                    warn!(vip = %key, %port, listener, "listener port not adopted (taken or out of range)");
                }
            }
        }
        info!(
            services = known.len(),
            ports = adopted,
            "read back VIP allocation"
        );
        self.allocator = allocator;
        self.known = known;
        self.names = names;
        self.applied.clear();
        Ok(())
    }

    /// The name of the managed Service of `key`.
    fn name_of(&self, key: &VipKey) -> String {
        self.names
            .get(key)
            .cloned()
            .unwrap_or_else(|| managed_service_name(key))
    }

    fn desired(
        &self,
        key: &VipKey,
        listeners: &BTreeMap<String, u32>,
        catalog: &Catalog,
    ) -> Service {
        let name = self.name_of(key);
        let mut annotations = BTreeMap::from([(
            GLOBAL_SERVICE_ANNOTATION.to_owned(),
            format!("{}/{}", key.service.namespace, key.service.name),
        )]);
        if let Some(c) = &key.pinned {
            annotations.insert(PINNED_CLUSTER_ANNOTATION.to_owned(), c.clone());
        }
        let ports = catalog.services[&key.service]
            .ports
            .iter()
            .filter_map(|p| {
                let listener = *listeners.get(&p.name)?;
                Some(ServicePort {
                    name: (!p.name.is_empty()).then(|| p.name.clone()),
                    port: i32::try_from(p.port).ok()?,
                    target_port: Some(IntOrString::Int(i32::try_from(listener).ok()?)),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                })
            })
            .collect();
        Service {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.settings.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY_LABEL.to_owned(),
                    MANAGED_BY.to_owned(),
                )])),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                selector: Some(self.settings.selector.clone()),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    /// Whether the Service named `name` may be written for `key`: it does not exist, or it
    /// is a managed Service whose annotations name `key`. Read from the API server unless
    /// this replica knows the Service as `key`'s.
    async fn check_owner(&self, key: &VipKey, name: &str) -> Result<Option<Refusal>> {
        let current = match self.known.get(name) {
            Some(seen) if seen.owner.as_ref() == Some(key) => return Ok(None),
            Some(seen) => Some(seen.owner.clone()),
            None => match self.api.get_opt(name).await? {
                None => return Ok(None),
                Some(svc) => {
                    let managed =
                        svc.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY);
                    let owner = vip_key(&svc);
                    if managed && owner.as_ref() == Some(key) {
                        return Ok(None);
                    }
                    Some(owner)
                }
            },
        };
        Ok(current.map(|owner| Refusal::NameConflict {
            name: name.to_owned(),
            owner: owner.map(|o| o.to_string()).unwrap_or_default(),
        }))
    }

    /// Applies the managed Service of `key` unless it is unchanged or another's; returns
    /// its VIP (the last known one when the write fails, so a failed write never takes a
    /// VIP away) or the refusal.
    async fn apply(
        &mut self,
        key: &VipKey,
        desired: Service,
    ) -> (std::result::Result<String, Refusal>, Result<()>) {
        let name = desired.name_any();
        let last_vip = self
            .known
            .get(&name)
            .map(|s| s.cluster_ip.clone())
            .unwrap_or_default();
        if self.applied.get(&name) == Some(&desired) {
            return (Ok(last_vip), Ok(()));
        }
        match self.check_owner(key, &name).await {
            Ok(None) => {}
            Ok(Some(refusal)) => return (Err(refusal), Ok(())),
            Err(e) => {
                warn!(service = %key, managed = %name, error = %e, "reading VIP Service failed");
                return (Ok(last_vip), Err(e));
            }
        }
        let patch = Patch::Apply(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": desired.metadata,
            "spec": desired.spec,
        }));
        match self
            .api
            .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &patch)
            .await
        {
            Ok(svc) => {
                let seen = Seen::of(&svc);
                let vip = seen.cluster_ip.clone();
                info!(service = %key, managed = %name, %vip, "VIP Service applied");
                self.known.insert(name.clone(), seen);
                self.applied.insert(name, desired);
                (Ok(vip), Ok(()))
            }
            Err(e) => {
                warn!(service = %key, error = %e, "applying VIP Service failed");
                (Ok(last_vip), Err(Error::Kube(e)))
            }
        }
    }

    /// Brings the managed Services in line with the catalog; returns VIP and listener ports
    /// per global service, with its pinned VIPs, and the VIPs refused. A VIP is empty where
    /// its Service was never applied; a refused VIP leaves every other one as it is.
    #[instrument(skip_all, fields(services = catalog.services.len()))]
    pub(crate) async fn reconcile(&mut self, catalog: &Catalog) -> (Reconciled, Result<()>) {
        let allocation = self.allocator.allocate(catalog);
        let mut out = Reconciled {
            vips: BTreeMap::new(),
            refused: allocation.refused,
        };
        let mut first_err = Ok(());
        let mut wanted = BTreeSet::new();
        for (key, listeners) in &allocation.listeners {
            let desired = self.desired(key, listeners, catalog);
            let name = desired.name_any();
            let (vip, result) = self.apply(key, desired).await;
            if let Err(e) = result
                && first_err.is_ok()
            {
                first_err = Err(e);
            }
            let vip = match vip {
                Ok(vip) => vip,
                Err(refusal) => {
                    // Not wanted: another's Service whose global service is gone is
                    // collected below, and this VIP gets the name on a later pass.
                    out.refused.insert(key.clone(), refusal);
                    continue;
                }
            };
            wanted.insert(name);
            let info = VipInfo {
                vip,
                listeners: listeners.clone(),
                pinned: BTreeMap::new(),
            };
            let slot: &mut VipInfo = out.vips.entry(key.service.clone()).or_default();
            match &key.pinned {
                Some(c) => {
                    slot.pinned.insert(c.clone(), info);
                }
                None => {
                    let pinned = std::mem::take(&mut slot.pinned);
                    *slot = VipInfo { pinned, ..info };
                }
            }
        }
        self.log_refusals(&out.refused);
        // Garbage-collect managed Services of global services that are gone.
        let stale: Vec<String> = self
            .known
            .keys()
            .filter(|n| !wanted.contains(*n))
            .cloned()
            .collect();
        for name in stale {
            match self.api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => info!(managed = %name, "VIP Service deleted"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    warn!(managed = %name, error = %e, "deleting VIP Service failed");
                    if first_err.is_ok() {
                        first_err = Err(Error::Kube(e));
                    }
                    continue;
                }
            }
            self.known.remove(&name);
            self.applied.remove(&name);
            self.names.retain(|_, n| *n != name);
        }
        (out, first_err)
    }

    /// Logs refusals as they start and end (not on every pass).
    fn log_refusals(&mut self, now: &BTreeMap<VipKey, Refusal>) {
        for (key, r) in now {
            if self.refused.get(key) != Some(r) {
                warn!(vip = %key, reason = r.reason(), "{}", r.message(key));
            }
        }
        for key in self.refused.keys().filter(|k| !now.contains_key(*k)) {
            info!(vip = %key, "VIP no longer refused");
        }
        self.refused = now.clone();
    }
}

/// Creates the namespace if it does not exist (best effort: lacking rights is not fatal).
async fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => info!(namespace = name, "namespace created"),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => warn!(namespace = name, error = %e, "could not ensure namespace"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::MemberInput;
    use crate::fixtures::service;

    /// Services exported by member `a` (and those listed under `b` by member `b` too).
    fn catalog(svcs: &[(&str, &[(&str, i32)])], in_b: &[&str]) -> Catalog {
        let mut a = MemberInput::test("a");
        let mut b = MemberInput::test("b");
        for (name, ports) in svcs {
            let ports: Vec<_> = ports.iter().map(|(n, p)| (*n, *p, None)).collect();
            a = a.with_service(service("demo", name, &ports, true));
            if in_b.contains(name) {
                b = b.with_service(service("demo", name, &ports, true));
            }
        }
        Catalog::build(&[a, b])
    }

    fn global(name: &str) -> VipKey {
        VipKey::global(ServiceKey::new("demo", name))
    }

    fn pinned(name: &str, cluster: &str) -> VipKey {
        VipKey::pinned(ServiceKey::new("demo", name), cluster)
    }

    #[test]
    fn allocation_is_lowest_free_stable_and_released() {
        let mut a = PortAllocator::new(15000..=15005);
        let c1 = catalog(
            &[("b", &[("http", 80)]), ("a", &[("http", 80), ("grpc", 90)])],
            &[],
        );
        let got = a.allocate(&c1);
        assert!(got.refused.is_empty());
        let got = got.listeners;
        // Each service's own VIP, then its VIP pinned to each exporting cluster.
        assert_eq!(got[&global("a")]["grpc"], 15000);
        assert_eq!(got[&global("a")]["http"], 15001);
        assert_eq!(got[&pinned("a", "a")]["grpc"], 15002);
        assert_eq!(got[&pinned("a", "a")]["http"], 15003);
        assert_eq!(got[&global("b")]["http"], 15004);
        assert_eq!(got[&pinned("b", "a")]["http"], 15005);
        assert_eq!(got.len(), 4);
        // a disappears, c arrives: b keeps its ports, c takes the lowest free.
        let c2 = catalog(&[("b", &[("http", 80)]), ("c", &[("tcp", 1)])], &[]);
        let got = a.allocate(&c2).listeners;
        assert_eq!(got[&global("b")]["http"], 15004);
        assert_eq!(got[&pinned("b", "a")]["http"], 15005);
        assert_eq!(got[&global("c")]["tcp"], 15000);
        assert_eq!(got[&pinned("c", "a")]["tcp"], 15001);
    }

    /// Issue 11 §2: with a 4-port range, a 4-port service `b` that does not fit is refused
    /// on its own; `a` keeps its VIP and ports (before, the whole allocation failed and
    /// every service lost its VIP).
    #[test]
    fn a_service_that_does_not_fit_is_refused_alone() {
        let mut alloc = PortAllocator::new(15000..=15003);
        let only_a = catalog(&[("a", &[("http", 80)])], &[]);
        let before = alloc.allocate(&only_a);
        assert!(before.refused.is_empty());
        let ports4: &[(&str, i32)] = &[("p1", 1), ("p2", 2), ("p3", 3), ("p4", 4)];
        let with_b = catalog(&[("a", &[("http", 80)]), ("b", ports4)], &[]);
        let after = alloc.allocate(&with_b);
        assert_eq!(
            after.listeners[&global("a")],
            before.listeners[&global("a")]
        );
        assert_eq!(
            after.listeners[&pinned("a", "a")],
            before.listeners[&pinned("a", "a")]
        );
        assert!(
            !after.listeners.contains_key(&global("b")),
            "all or nothing"
        );
        let refusal = Refusal::PortsExhausted {
            range: "15000-15003".into(),
            needed: 4,
        };
        assert_eq!(after.refused[&global("b")], refusal);
        assert_eq!(after.refused[&pinned("b", "a")], refusal);
        assert_eq!(refusal.reason(), "PortsExhausted");
        // a leaves: b fits now (its own VIP first; its pin still does not).
        let only_b = catalog(&[("b", ports4)], &[]);
        let later = alloc.allocate(&only_b);
        assert_eq!(later.listeners[&global("b")].len(), 4);
        assert!(later.refused.contains_key(&pinned("b", "a")));
        assert!(!later.refused.contains_key(&global("b")));
    }

    /// A VIP that gains a port the range cannot hold keeps the ports it has.
    #[test]
    fn a_vip_growing_past_the_range_keeps_its_ports() {
        let mut alloc = PortAllocator::new(15000..=15002);
        let got = alloc.allocate(&catalog(&[("a", &[("http", 80)])], &[]));
        let http = got.listeners[&global("a")]["http"];
        let grown = catalog(&[("a", &[("http", 80), ("grpc", 90)])], &[]);
        let got = alloc.allocate(&grown);
        assert_eq!(got.listeners[&global("a")]["http"], http);
        assert_eq!(got.listeners[&global("a")].len(), 2);
        assert_eq!(got.listeners[&pinned("a", "a")].len(), 1, "kept, not grown");
        assert!(matches!(
            got.refused[&pinned("a", "a")],
            Refusal::PortsExhausted { needed: 1, .. }
        ));
    }

    #[test]
    fn the_namespace_cap_refuses_only_that_namespace() {
        let mut alloc = PortAllocator::new(15000..=15099).with_namespace_limit(3);
        let mut a = MemberInput::test("a");
        for (ns, name) in [("demo", "x"), ("demo", "y"), ("other", "z")] {
            a = a.with_service(service(ns, name, &[("http", 80, None)], true));
        }
        let got = alloc.allocate(&Catalog::build(&[a]));
        // demo/x takes 2 (its VIP and its pin to a), demo/y's VIP the third.
        assert_eq!(got.listeners[&global("x")].len(), 1);
        assert_eq!(got.listeners[&pinned("x", "a")].len(), 1);
        assert_eq!(got.listeners[&global("y")].len(), 1);
        let refusal = &got.refused[&pinned("y", "a")];
        assert_eq!(
            refusal,
            &Refusal::NamespacePortLimit {
                limit: 3,
                used: 3,
                needed: 1
            }
        );
        assert_eq!(refusal.reason(), "NamespacePortLimit");
        assert_eq!(got.refused.len(), 1);
        let z = VipKey::global(ServiceKey::new("other", "z"));
        assert_eq!(
            got.listeners[&z].len(),
            1,
            "another namespace is not capped"
        );
    }

    #[test]
    fn pinned_vips_follow_the_exporting_clusters() {
        let mut a = PortAllocator::new(15000..=15099);
        let both = catalog(&[("x", &[("http", 80)])], &["x"]);
        let got = a.allocate(&both).listeners;
        let keys: Vec<_> = got.keys().cloned().collect();
        assert_eq!(keys, [global("x"), pinned("x", "a"), pinned("x", "b")]);
        let ports: BTreeSet<u32> = got.values().flat_map(|l| l.values().copied()).collect();
        assert_eq!(ports.len(), 3, "every VIP has its own listener port");
        let b_port = got[&pinned("x", "b")]["http"];
        // b stops exporting: its pin is released, the others keep their ports.
        let only_a = catalog(&[("x", &[("http", 80)])], &[]);
        let after = a.allocate(&only_a).listeners;
        assert!(!after.contains_key(&pinned("x", "b")));
        assert_eq!(after[&global("x")], got[&global("x")]);
        assert_eq!(after[&pinned("x", "a")], got[&pinned("x", "a")]);
        // b exports again: it gets a port back (the lowest free: its old one).
        let again = a.allocate(&both).listeners;
        assert_eq!(again[&pinned("x", "b")]["http"], b_port);
    }

    #[test]
    fn read_back_allocation_is_kept_and_collisions_refused() {
        let mut a = PortAllocator::new(15000..=15009);
        assert!(a.adopt(global("b"), "http".into(), 15007));
        assert!(a.adopt(pinned("b", "a"), "http".into(), 15003));
        assert!(!a.adopt(global("z"), "http".into(), 15007), "taken");
        assert!(
            !a.adopt(pinned("z", "a"), "http".into(), 15003),
            "taken by a pin"
        );
        assert!(!a.adopt(global("y"), "http".into(), 80), "out of range");
        let got = a
            .allocate(&catalog(
                &[("a", &[("http", 80)]), ("b", &[("http", 80)])],
                &[],
            ))
            .listeners;
        assert_eq!(got[&global("b")]["http"], 15007);
        assert_eq!(got[&pinned("b", "a")]["http"], 15003);
        assert_eq!(got[&global("a")]["http"], 15000);
        assert_eq!(got[&pinned("a", "a")]["http"], 15001);
    }

    #[test]
    fn managed_names_are_valid_and_distinct() {
        let n1 = managed_service_name(&VipKey::global(ServiceKey::new("c", "a-b")));
        let n2 = managed_service_name(&VipKey::global(ServiceKey::new("b-c", "a")));
        assert_ne!(n1, n2);
        assert_eq!(n1, "a-b-c-839c42d9576a2f9b", "SHA-256 of `c/a-b`, 64 bits");
        let p1 = managed_service_name(&VipKey::pinned(ServiceKey::new("c", "a-b"), "west"));
        let p2 = managed_service_name(&VipKey::pinned(ServiceKey::new("b-c", "a"), "west"));
        assert!(p1.starts_with("west-a-b-c-"), "{p1}");
        assert_ne!(p1, p2);
        assert_ne!(p1, n1);
        for key in [
            VipKey::global(ServiceKey::new("n".repeat(63), "s".repeat(63))),
            VipKey::pinned(
                ServiceKey::new("n".repeat(63), "s".repeat(63)),
                "c".repeat(63),
            ),
        ] {
            let long = managed_service_name(&key);
            assert_eq!(long.len(), 63, "{long}");
            assert!(!long.contains("--"));
            assert!(legacy_managed_service_name(&key).len() <= 63);
        }
    }

    /// Issue 11 §3: keys whose readable parts are cut to the same prefix differ only in the
    /// hash, which has 64 bits.
    #[test]
    fn keys_with_equal_truncated_prefixes_get_distinct_64_bit_names() {
        let long = "a".repeat(60);
        let k1 = VipKey::global(ServiceKey::new("demo", format!("{long}1")));
        let k2 = VipKey::global(ServiceKey::new("demo", format!("{long}2")));
        let (n1, n2) = (managed_service_name(&k1), managed_service_name(&k2));
        let (base1, hash1) = n1.rsplit_once('-').unwrap();
        let (base2, hash2) = n2.rsplit_once('-').unwrap();
        assert_eq!(base1, base2, "equal truncated prefixes");
        assert_ne!(n1, n2);
        assert_eq!(hash1.len(), 16, "64 bits of hash: {n1}");
        assert!(hash1.chars().all(|c| c.is_ascii_hexdigit()) && hash1 != hash2);
        assert!(n1.len() <= 63);
    }

    #[test]
    fn legacy_names_are_those_of_earlier_versions() {
        // `<base>-<FNV-1a 24 bit>`, as written before the 64-bit names.
        let key = VipKey::global(ServiceKey::new("c", "a-b"));
        assert_eq!(legacy_managed_service_name(&key), "a-b-c-ef8b1d");
        let key = VipKey::pinned(ServiceKey::new("c", "a-b"), "west");
        assert_eq!(legacy_managed_service_name(&key), "west-a-b-c-8815c4");
    }

    #[test]
    fn followers_read_vips_from_the_managed_services() {
        let cat = catalog(&[("x", &[("http", 80)])], &["x"]);
        let svc = |key: &VipKey, ip: &str, listener: i32| {
            let mut annotations =
                BTreeMap::from([(GLOBAL_SERVICE_ANNOTATION.to_owned(), "demo/x".to_owned())]);
            if let Some(c) = &key.pinned {
                annotations.insert(PINNED_CLUSTER_ANNOTATION.to_owned(), c.clone());
            }
            Service {
                metadata: ObjectMeta {
                    name: Some(managed_service_name(key)),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                },
                spec: Some(ServiceSpec {
                    cluster_ip: Some(ip.into()),
                    ports: Some(vec![ServicePort {
                        name: Some("http".into()),
                        port: 80,
                        target_port: Some(IntOrString::Int(listener)),
                        ..ServicePort::default()
                    }]),
                    ..ServiceSpec::default()
                }),
                ..Service::default()
            }
        };
        let managed = [
            svc(&pinned("x", "b"), "10.96.0.3", 15002),
            svc(&global("x"), "10.96.0.1", 15000),
            svc(&pinned("x", "a"), "10.96.0.2", 15001),
            svc(&pinned("x", "gone"), "10.96.0.4", 15003),
        ];
        // Under a name that is not x's: not x's VIP, whatever its annotation says.
        let mut misnamed = svc(&global("x"), "10.96.0.9", 15009);
        misnamed.metadata.name = Some("x-default-0000000000000000".into());
        let managed = [
            managed[0].clone(),
            managed[1].clone(),
            managed[2].clone(),
            managed[3].clone(),
            misnamed,
        ];
        let vips = vips_of(&managed, &cat);
        let x = &vips[&ServiceKey::new("demo", "x")];
        assert_eq!(x.vip, "10.96.0.1");
        assert_eq!(x.listeners["http"], 15000);
        assert_eq!(
            x.pinned.len(),
            2,
            "no pin to a cluster that does not export"
        );
        assert_eq!(x.pinned["a"].vip, "10.96.0.2");
        assert_eq!(x.pinned["b"].listeners["http"], 15002);
    }
}
