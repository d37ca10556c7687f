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

/// Label on every object the controller manages.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "meridian";
/// Annotation naming the global service (`<namespace>/<name>`) of a managed Service.
pub const GLOBAL_SERVICE_ANNOTATION: &str = "meridian.io/global-service";
/// Annotation naming the cluster a managed Service's VIP is pinned to (absent on the
/// service's own VIP).
pub const PINNED_CLUSTER_ANNOTATION: &str = "meridian.io/pinned-cluster";
/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "meridian-controller";

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
    pub fn pinned(service: ServiceKey, cluster: impl Into<String>) -> Self {
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

/// Stable, collision-free gateway listener port allocation.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    range: RangeInclusive<u16>,
    by_key: BTreeMap<PortKey, u16>,
}

impl PortAllocator {
    /// An empty allocator over `range`.
    pub fn new(range: RangeInclusive<u16>) -> Self {
        Self {
            range,
            by_key: BTreeMap::new(),
        }
    }

    /// Adopts an allocation read back from the cluster. Ports outside the range, or already
    /// taken by another key, are refused (and re-allocated later).
    pub fn adopt(&mut self, key: VipKey, port_name: String, listener: u16) -> bool {
        if !self.range.contains(&listener) || self.by_key.values().any(|p| *p == listener) {
            return false;
        }
        self.by_key.insert((key, port_name), listener).is_none()
    }

    /// Allocates for every port of every VIP the catalog calls for (each global service, and
    /// each service pinned to each cluster exporting it), keeping existing allocations and
    /// releasing those of ports that are gone. Returns listener port per VIP and port name.
    pub fn allocate(
        &mut self,
        catalog: &Catalog,
    ) -> Result<BTreeMap<VipKey, BTreeMap<String, u32>>> {
        let wanted: BTreeSet<PortKey> = catalog
            .services
            .values()
            .flat_map(|s| {
                std::iter::once(VipKey::global(s.key.clone()))
                    .chain(s.clusters.iter().map(|c| VipKey::pinned(s.key.clone(), c)))
                    .flat_map(|k| s.ports.iter().map(move |p| (k.clone(), p.name.clone())))
            })
            .collect();
        self.by_key.retain(|k, _| wanted.contains(k));
        let mut used: BTreeSet<u16> = self.by_key.values().copied().collect();
        for key in &wanted {
            if self.by_key.contains_key(key) {
                continue;
            }
            let free = self
                .range
                .clone()
                .find(|p| !used.contains(p))
                .ok_or_else(|| {
                    Error::PortsExhausted(format!("{}-{}", self.range.start(), self.range.end()))
                })?;
            used.insert(free);
            self.by_key.insert(key.clone(), free);
        }
        let mut out: BTreeMap<VipKey, BTreeMap<String, u32>> = BTreeMap::new();
        for ((svc, port), listener) in &self.by_key {
            out.entry(svc.clone())
                .or_default()
                .insert(port.clone(), u32::from(*listener));
        }
        Ok(out)
    }
}

/// FNV-1a 32 bit, for short stable name suffixes.
fn short_hash(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:06x}", h & 0x00ff_ffff)
}

/// Name of the managed Service of a VIP: `<name>-<namespace>-<hash>` for a global service,
/// `<cluster>-<name>-<namespace>-<hash>` for one pinned to a cluster, cut to 63 characters;
/// the hash keeps `a-b/c` and `a/b-c` (and the pinned from the unpinned) apart.
pub fn managed_service_name(key: &VipKey) -> String {
    let svc = &key.service;
    let (hash, mut base) = match &key.pinned {
        None => (
            short_hash(&format!("{}/{}", svc.namespace, svc.name)),
            format!("{}-{}", svc.name, svc.namespace),
        ),
        Some(c) => (
            short_hash(&format!("{c}@{}/{}", svc.namespace, svc.name)),
            format!("{c}-{}-{}", svc.name, svc.namespace),
        ),
    };
    base.truncate(63 - hash.len() - 1);
    let base = base.trim_end_matches('-');
    format!("{base}-{hash}")
}

fn parse_key(annotation: &str) -> Option<ServiceKey> {
    let (ns, name) = annotation.split_once('/')?;
    Some(ServiceKey::new(ns, name))
}

/// The VIP a managed Service stands for, from its annotations.
pub fn vip_key(svc: &Service) -> Option<VipKey> {
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
/// catalog no longer has, and pins to clusters no longer exporting, are left out.
pub fn vips_of<'a>(
    managed: impl IntoIterator<Item = &'a Service>,
    catalog: &Catalog,
) -> BTreeMap<ServiceKey, VipInfo> {
    let mut out: BTreeMap<ServiceKey, VipInfo> = BTreeMap::new();
    for svc in managed {
        let Some(key) = vip_key(svc) else { continue };
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
            vip: svc
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.clone())
                .filter(|ip| ip != "None")
                .unwrap_or_default(),
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

/// Owns the managed VIP Services of the controller's cluster (written only by the leader).
pub struct VipManager {
    api: Api<Service>,
    namespace: String,
    selector: BTreeMap<String, String>,
    range: RangeInclusive<u16>,
    allocator: PortAllocator,
    /// What was last applied, by managed Service name, to skip no-op API calls.
    applied: BTreeMap<String, (Service, String)>,
    /// Managed Service names known to exist.
    known: BTreeSet<String>,
}

impl VipManager {
    /// Reads back existing managed Services and their listener ports.
    #[instrument(skip_all, fields(namespace = %namespace))]
    pub async fn start(
        client: Client,
        namespace: &str,
        selector: BTreeMap<String, String>,
        range: RangeInclusive<u16>,
    ) -> Result<VipManager> {
        ensure_namespace(&client, namespace).await;
        let api: Api<Service> = Api::namespaced(client, namespace);
        let mut m = VipManager {
            api,
            namespace: namespace.to_owned(),
            selector,
            allocator: PortAllocator::new(range.clone()),
            range,
            applied: BTreeMap::new(),
            known: BTreeSet::new(),
        };
        m.read_back().await?;
        Ok(m)
    }

    /// Forgets what it knew and reads the allocation back from the managed Services (on
    /// start, and whenever this replica becomes the leader: another one may have allocated
    /// in between).
    #[instrument(skip_all, fields(namespace = %self.namespace))]
    pub async fn read_back(&mut self) -> Result<()> {
        let existing = self
            .api
            .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
            .await?;
        let mut allocator = PortAllocator::new(self.range.clone());
        let mut known = BTreeSet::new();
        let mut adopted = 0;
        let mut items = existing.items;
        items.sort_by_key(|s| s.name_any());
        for svc in items {
            known.insert(svc.name_any());
            let Some(key) = vip_key(&svc) else { continue };
            for (name, listener) in listeners_of(&svc) {
                if allocator.adopt(key.clone(), name.clone(), listener) {
                    adopted += 1;
                } else {
                    warn!(vip = %key, port = %name, listener, "listener port not adopted (taken or out of range)");
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
        self.applied.clear();
        Ok(())
    }

    fn desired(
        &self,
        key: &VipKey,
        listeners: &BTreeMap<String, u32>,
        catalog: &Catalog,
    ) -> Service {
        let name = managed_service_name(key);
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
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    MANAGED_BY_LABEL.to_owned(),
                    MANAGED_BY.to_owned(),
                )])),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                selector: Some(self.selector.clone()),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    /// Brings the managed Services in line with the catalog; returns VIP and listener ports
    /// per global service, with its pinned VIPs (a VIP is empty where its Service could not
    /// be applied).
    #[instrument(skip_all, fields(services = catalog.services.len()))]
    pub async fn reconcile(
        &mut self,
        catalog: &Catalog,
    ) -> (BTreeMap<ServiceKey, VipInfo>, Result<()>) {
        let mut out = BTreeMap::new();
        let allocation = match self.allocator.allocate(catalog) {
            Ok(a) => a,
            Err(e) => return (out, Err(e)),
        };
        let mut first_err = Ok(());
        let mut wanted = BTreeSet::new();
        for (key, listeners) in &allocation {
            let desired = self.desired(key, listeners, catalog);
            let name = desired.name_any();
            wanted.insert(name.clone());
            let vip = match self.applied.get(&name) {
                Some((applied, vip)) if applied == &desired => vip.clone(),
                _ => {
                    let mut body = desired.clone();
                    body.metadata.managed_fields = None;
                    let patch = Patch::Apply(serde_json::json!({
                        "apiVersion": "v1",
                        "kind": "Service",
                        "metadata": body.metadata,
                        "spec": body.spec,
                    }));
                    match self
                        .api
                        .patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &patch)
                        .await
                    {
                        Ok(svc) => {
                            let vip = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
                            info!(service = %key, managed = %name, %vip, "VIP Service applied");
                            self.known.insert(name.clone());
                            self.applied.insert(name.clone(), (desired, vip.clone()));
                            vip
                        }
                        Err(e) => {
                            warn!(service = %key, error = %e, "applying VIP Service failed");
                            if first_err.is_ok() {
                                first_err = Err(Error::Kube(e));
                            }
                            String::new()
                        }
                    }
                }
            };
            let info = VipInfo {
                vip,
                listeners: listeners.clone(),
                pinned: BTreeMap::new(),
            };
            let slot: &mut VipInfo = out.entry(key.service.clone()).or_default();
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
        // Garbage-collect managed Services of global services that are gone.
        let stale: Vec<String> = self.known.difference(&wanted).cloned().collect();
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
        }
        (out, first_err)
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
        let got = a.allocate(&c1).unwrap();
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
        let got = a.allocate(&c2).unwrap();
        assert_eq!(got[&global("b")]["http"], 15004);
        assert_eq!(got[&pinned("b", "a")]["http"], 15005);
        assert_eq!(got[&global("c")]["tcp"], 15000);
        assert_eq!(got[&pinned("c", "a")]["tcp"], 15001);
        // Exhaustion is an error, not a collision.
        let c3 = catalog(&[("d", &[("p1", 1), ("p2", 2), ("p3", 3), ("p4", 4)])], &[]);
        assert!(matches!(a.allocate(&c3), Err(Error::PortsExhausted(_))));
    }

    #[test]
    fn pinned_vips_follow_the_exporting_clusters() {
        let mut a = PortAllocator::new(15000..=15099);
        let both = catalog(&[("x", &[("http", 80)])], &["x"]);
        let got = a.allocate(&both).unwrap();
        let keys: Vec<_> = got.keys().cloned().collect();
        assert_eq!(keys, [global("x"), pinned("x", "a"), pinned("x", "b")]);
        let ports: BTreeSet<u32> = got.values().flat_map(|l| l.values().copied()).collect();
        assert_eq!(ports.len(), 3, "every VIP has its own listener port");
        let b_port = got[&pinned("x", "b")]["http"];
        // b stops exporting: its pin is released, the others keep their ports.
        let only_a = catalog(&[("x", &[("http", 80)])], &[]);
        let after = a.allocate(&only_a).unwrap();
        assert!(!after.contains_key(&pinned("x", "b")));
        assert_eq!(after[&global("x")], got[&global("x")]);
        assert_eq!(after[&pinned("x", "a")], got[&pinned("x", "a")]);
        // b exports again: it gets a port back (the lowest free: its old one).
        let again = a.allocate(&both).unwrap();
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
            .unwrap();
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
        assert!(n1.starts_with("a-b-c-"));
        // Unchanged for existing installations: the unpinned name has no cluster part.
        assert_eq!(n1, format!("a-b-c-{}", short_hash("c/a-b")));
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
            assert!(long.len() <= 63, "{long}");
            assert!(!long.contains("--"));
        }
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
