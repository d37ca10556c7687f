//! VIPs: per global service, a managed ClusterIP Service in the controller's namespace that
//! selects the gateway pods and maps each service port to a gateway listener port. Its
//! ClusterIP is the global service's VIP in this cluster.
//!
//! Listener ports are allocated from a range, lowest free first, and are stable: on start the
//! allocation is read back from the managed Services (the API server is the only state).
//! Managed objects carry `app.kubernetes.io/managed-by: meridian` and are deleted when their
//! global service disappears.

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
/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "meridian-controller";

/// Allocation key: a global service's port, by name.
type PortKey = (ServiceKey, String);

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
    pub fn adopt(&mut self, key: ServiceKey, port_name: String, listener: u16) -> bool {
        if !self.range.contains(&listener) || self.by_key.values().any(|p| *p == listener) {
            return false;
        }
        self.by_key.insert((key, port_name), listener).is_none()
    }

    /// Allocates for every port in the catalog, keeping existing allocations and releasing
    /// those of ports that are gone. Returns listener port per service and port name.
    pub fn allocate(
        &mut self,
        catalog: &Catalog,
    ) -> Result<BTreeMap<ServiceKey, BTreeMap<String, u32>>> {
        let wanted: BTreeSet<PortKey> = catalog
            .services
            .values()
            .flat_map(|s| s.ports.iter().map(|p| (s.key.clone(), p.name.clone())))
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
        let mut out: BTreeMap<ServiceKey, BTreeMap<String, u32>> = BTreeMap::new();
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

/// Name of the managed Service of a global service: `<name>-<namespace>-<hash>`, cut to 63
/// characters; the hash keeps `a-b/c` and `a/b-c` apart.
pub fn managed_service_name(key: &ServiceKey) -> String {
    let hash = short_hash(&format!("{}/{}", key.namespace, key.name));
    let mut base = format!("{}-{}", key.name, key.namespace);
    base.truncate(63 - hash.len() - 1);
    let base = base.trim_end_matches('-');
    format!("{base}-{hash}")
}

fn parse_key(annotation: &str) -> Option<ServiceKey> {
    let (ns, name) = annotation.split_once('/')?;
    Some(ServiceKey::new(ns, name))
}

/// Owns the managed VIP Services of the controller's cluster.
pub struct VipManager {
    api: Api<Service>,
    namespace: String,
    selector: BTreeMap<String, String>,
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
        let existing = api
            .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
            .await?;
        let mut allocator = PortAllocator::new(range);
        let mut known = BTreeSet::new();
        let mut adopted = 0;
        let mut items = existing.items;
        items.sort_by_key(|s| s.name_any());
        for svc in items {
            known.insert(svc.name_any());
            let Some(key) = svc
                .annotations()
                .get(GLOBAL_SERVICE_ANNOTATION)
                .and_then(|a| parse_key(a))
            else {
                continue;
            };
            for p in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
                if let Some(IntOrString::Int(t)) = p.target_port
                    && let Ok(t) = u16::try_from(t)
                {
                    let name = p.name.clone().unwrap_or_default();
                    if allocator.adopt(key.clone(), name.clone(), t) {
                        adopted += 1;
                    } else {
                        warn!(service = %key, port = %name, listener = t, "listener port not adopted (taken or out of range)");
                    }
                }
            }
        }
        info!(
            services = known.len(),
            ports = adopted,
            "read back VIP allocation"
        );
        Ok(VipManager {
            api,
            namespace: namespace.to_owned(),
            selector,
            allocator,
            applied: BTreeMap::new(),
            known,
        })
    }

    fn desired(
        &self,
        key: &ServiceKey,
        listeners: &BTreeMap<String, u32>,
        catalog: &Catalog,
    ) -> Service {
        let name = managed_service_name(key);
        let ports = catalog.services[key]
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
                annotations: Some(BTreeMap::from([(
                    GLOBAL_SERVICE_ANNOTATION.to_owned(),
                    format!("{}/{}", key.namespace, key.name),
                )])),
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
    /// per global service (the VIP is empty where the Service could not be applied).
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
            out.insert(
                key.clone(),
                VipInfo {
                    vip,
                    listeners: listeners.clone(),
                },
            );
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

    fn catalog(svcs: &[(&str, &[(&str, i32)])]) -> Catalog {
        let mut m = MemberInput::test("a");
        for (name, ports) in svcs {
            let ports: Vec<_> = ports.iter().map(|(n, p)| (*n, *p, None)).collect();
            m = m.with_service(service("demo", name, &ports, true));
        }
        Catalog::build(&[m])
    }

    #[test]
    fn allocation_is_lowest_free_stable_and_released() {
        let mut a = PortAllocator::new(15000..=15003);
        let c1 = catalog(&[("b", &[("http", 80)]), ("a", &[("http", 80), ("grpc", 90)])]);
        let got = a.allocate(&c1).unwrap();
        let a_key = ServiceKey::new("demo", "a");
        let b_key = ServiceKey::new("demo", "b");
        assert_eq!(got[&a_key]["grpc"], 15000);
        assert_eq!(got[&a_key]["http"], 15001);
        assert_eq!(got[&b_key]["http"], 15002);
        // a disappears, c arrives: b keeps its port, c takes the lowest free.
        let c2 = catalog(&[("b", &[("http", 80)]), ("c", &[("tcp", 1)])]);
        let got = a.allocate(&c2).unwrap();
        assert_eq!(got[&b_key]["http"], 15002);
        assert_eq!(got[&ServiceKey::new("demo", "c")]["tcp"], 15000);
        // Exhaustion is an error, not a collision.
        let c3 = catalog(&[(
            "d",
            &[("p1", 1), ("p2", 2), ("p3", 3), ("p4", 4), ("p5", 5)],
        )]);
        assert!(matches!(a.allocate(&c3), Err(Error::PortsExhausted(_))));
    }

    #[test]
    fn read_back_allocation_is_kept_and_collisions_refused() {
        let mut a = PortAllocator::new(15000..=15009);
        let b_key = ServiceKey::new("demo", "b");
        assert!(a.adopt(b_key.clone(), "http".into(), 15007));
        assert!(
            !a.adopt(ServiceKey::new("demo", "z"), "http".into(), 15007),
            "taken"
        );
        assert!(
            !a.adopt(ServiceKey::new("demo", "y"), "http".into(), 80),
            "out of range"
        );
        let got = a
            .allocate(&catalog(&[("a", &[("http", 80)]), ("b", &[("http", 80)])]))
            .unwrap();
        assert_eq!(got[&b_key]["http"], 15007);
        assert_eq!(got[&ServiceKey::new("demo", "a")]["http"], 15000);
    }

    #[test]
    fn managed_names_are_valid_and_distinct() {
        let n1 = managed_service_name(&ServiceKey::new("c", "a-b"));
        let n2 = managed_service_name(&ServiceKey::new("b-c", "a"));
        assert_ne!(n1, n2);
        assert!(n1.starts_with("a-b-c-"));
        let long = managed_service_name(&ServiceKey::new("n".repeat(63), "s".repeat(63)));
        assert!(long.len() <= 63, "{long}");
        assert!(!long.contains("--"));
    }
}
