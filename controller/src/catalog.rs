//! The catalog: every exported Service of every member, merged by namespace/name into one
//! global service with its ports and its endpoints (cluster, address, ports, locality, pod
//! labels, readiness).
//!
//! Building the catalog is a pure function of what the reflectors hold, so it is tested
//! without an API server, and the same inputs always give the same (sorted) catalog.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Node, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meridian_api::Locality;
use meridian_api::proto::Protocol;
use tracing::debug;

use crate::targets::{self, Skip};

pub use meridian_crd::EXPORT_LABEL;

/// Node label carrying the region.
pub(crate) const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Node label carrying the zone.
pub(crate) const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Node label carrying the subzone (Istio's convention).
pub(crate) const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
pub(crate) const LEGACY_REGION_LABEL: &str = "failure-domain.beta.kubernetes.io/region";
pub(crate) const LEGACY_ZONE_LABEL: &str = "failure-domain.beta.kubernetes.io/zone";
/// EndpointSlice label naming the owning Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Namespace and name of a Service; global services are keyed by it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
}

impl ServiceKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of an object named like its Service (the Service, its Endpoints).
    fn of(meta: &ObjectMeta) -> Option<Self> {
        Some(Self::new(meta.namespace.as_deref()?, meta.name.as_deref()?))
    }

    /// `<name>.<namespace>.global`.
    pub fn hostname(&self, zone: &str) -> String {
        format!("{}.{}.{}", self.name, self.namespace, zone)
    }
}

impl fmt::Display for ServiceKey {
    /// `<name>.<namespace>`, the name of the GlobalService resource.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// The endpoint objects of one member: EndpointSlice `discovery.k8s.io/v1` where served,
/// else core/v1 Endpoints.
#[derive(Debug, Clone)]
pub enum EndpointObjects {
    /// `discovery.k8s.io/v1` EndpointSlices.
    Slices(Vec<Arc<EndpointSlice>>),
    /// core/v1 Endpoints.
    Endpoints(Vec<Arc<Endpoints>>),
}

impl Default for EndpointObjects {
    fn default() -> Self {
        EndpointObjects::Slices(Vec::new())
    }
}

/// What one member contributes: the current contents of its reflectors.
#[derive(Debug, Clone, Default)]
pub struct MemberInput {
    /// Member cluster name.
    pub cluster: String,
    /// The member is unreachable; its endpoints are kept but marked stale.
    pub stale: bool,
    /// Services (only those exported, by label or by a ServiceExport, are used).
    pub services: Vec<Arc<Service>>,
    /// MCS ServiceExports ([`crate::mcs`]): each exports the Service of its namespace and
    /// name exactly as the label does.
    pub service_exports: Vec<Arc<crate::mcs::ExportMeta>>,
    /// Endpoints of those Services.
    pub endpoints: EndpointObjects,
    /// Nodes, for endpoint localities.
    pub nodes: Vec<Arc<Node>>,
    /// Pods as [`crate::members::reflected::pod`] keeps them: labels for endpoint labels, IPs to check
    /// endpoint addresses against ([`targets`]).
    pub pods: Vec<Arc<Pod>>,
}

/// One port of a global service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortSpec {
    /// Port name; empty for a single unnamed port.
    pub name: String,
    /// Service port number.
    pub port: u32,
    /// Application protocol.
    pub protocol: Protocol,
}

/// One endpoint (pod address) of a global service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointEntry {
    /// Member cluster.
    pub cluster: String,
    /// Pod IP.
    pub address: String,
    /// Target port per service port name.
    pub ports: BTreeMap<String, u32>,
    /// Locality from the node's labels.
    pub locality: Locality,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Ready per the endpoint object.
    pub ready: bool,
    /// Kept from an unreachable member.
    pub stale: bool,
    /// Pod name, when the endpoint references a pod.
    pub pod: String,
}

/// Ready and total endpoint counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Ready endpoints.
    pub ready: u32,
    /// All endpoints, ready or not.
    pub total: u32,
}

impl Counts {
    fn add(&mut self, ready: bool) {
        self.total += 1;
        if ready {
            self.ready += 1;
        }
    }
}

/// A global service: one exported Service merged across members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalServiceEntry {
    /// Namespace/name.
    pub key: ServiceKey,
    /// Ports, sorted by name. A port defined differently in two clusters takes the
    /// definition of the first cluster by name.
    pub ports: Vec<PortSpec>,
    /// Clusters exporting the service, sorted.
    pub clusters: BTreeSet<String>,
    /// Endpoints sorted by (cluster, address).
    pub endpoints: Vec<EndpointEntry>,
    /// Endpoints left out because they are not tunnel targets ([`targets`]), per reason.
    pub skipped: BTreeMap<Skip, u32>,
}

impl GlobalServiceEntry {
    /// Counts per cluster and, within it, per locality. Every exporting cluster appears, even
    /// without endpoints.
    pub(crate) fn counts(&self) -> BTreeMap<String, (Counts, BTreeMap<Locality, Counts>)> {
        let mut out: BTreeMap<String, (Counts, BTreeMap<Locality, Counts>)> = self
            .clusters
            .iter()
            .map(|c| (c.clone(), Default::default()))
            .collect();
        for e in &self.endpoints {
            let (total, per) = out.entry(e.cluster.clone()).or_default();
            total.add(e.ready);
            per.entry(e.locality.clone()).or_default().add(e.ready);
        }
        out
    }

    /// Counts per locality over all clusters.
    pub(crate) fn locality_counts(&self) -> BTreeMap<Locality, Counts> {
        let mut out: BTreeMap<Locality, Counts> = BTreeMap::new();
        for e in &self.endpoints {
            out.entry(e.locality.clone()).or_default().add(e.ready);
        }
        out
    }

    /// Counts over everything.
    pub(crate) fn total_counts(&self) -> Counts {
        let mut c = Counts::default();
        for e in &self.endpoints {
            c.add(e.ready);
        }
        c
    }
}

/// All global services, by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Global services sorted by namespace/name; shared, so that the catalog a pass hands
    /// to the status writer costs a pointer per service and a rebuilt service is one
    /// allocation.
    pub services: BTreeMap<ServiceKey, Arc<GlobalServiceEntry>>,
}

/// The protocol of a Service port: `appProtocol` when set, else the port name's prefix
/// (`http`, `http2`, `grpc`, `tcp`, optionally followed by `-suffix`), else TCP.
pub(crate) fn port_protocol(name: &str, app_protocol: Option<&str>) -> Protocol {
    let by_word = |w: &str| match w.to_ascii_lowercase().as_str() {
        "http" | "https" => Some(Protocol::Http),
        "http2" | "h2c" | "kubernetes.io/h2c" => Some(Protocol::Http2),
        "grpc" | "grpc-web" => Some(Protocol::Grpc),
        "tcp" => Some(Protocol::Tcp),
        _ => None,
    };
    if let Some(p) = app_protocol.and_then(by_word) {
        return p;
    }
    let prefix = name.split('-').next().unwrap_or_default();
    by_word(prefix).unwrap_or(Protocol::Tcp)
}

/// The locality of a node from its topology labels (falling back to the legacy
/// `failure-domain.beta.kubernetes.io` labels).
pub(crate) fn node_locality(node: &Node) -> Locality {
    let labels = node.metadata.labels.as_ref();
    let get = |k: &str, legacy: Option<&str>| {
        labels
            .and_then(|l| l.get(k).or_else(|| legacy.and_then(|lk| l.get(lk))))
            .cloned()
            .unwrap_or_default()
    };
    Locality::new(
        get(REGION_LABEL, Some(LEGACY_REGION_LABEL)),
        get(ZONE_LABEL, Some(LEGACY_ZONE_LABEL)),
        get(SUBZONE_LABEL, None),
    )
}

/// Whether a Service is labelled for export.
pub(crate) fn is_exported(svc: &Service) -> bool {
    is_true(svc.metadata.labels.as_ref(), EXPORT_LABEL)
}

/// Whether the label or annotation `key` among `values` is `"true"`.
pub(crate) fn is_true(values: Option<&BTreeMap<String, String>>, key: &str) -> bool {
    values.and_then(|v| v.get(key)).is_some_and(|v| v == "true")
}

/// Per-member lookups used while walking its endpoint objects.
struct MemberIndex<'a> {
    input: &'a MemberInput,
    nodes: BTreeMap<&'a str, Locality>,
    pods: BTreeMap<(&'a str, &'a str), &'a Pod>,
}

impl<'a> MemberIndex<'a> {
    fn new(input: &'a MemberInput) -> Self {
        let nodes = input
            .nodes
            .iter()
            .filter_map(|n| Some((n.metadata.name.as_deref()?, node_locality(n))))
            .collect();
        let pods = input
            .pods
            .iter()
            .filter_map(|p| {
                Some((
                    (
                        p.metadata.namespace.as_deref()?,
                        p.metadata.name.as_deref()?,
                    ),
                    p.as_ref(),
                ))
            })
            .collect();
        Self { input, nodes, pods }
    }

    fn locality(&self, node: Option<&str>, zone: Option<&str>) -> Locality {
        match node.and_then(|n| self.nodes.get(n)) {
            Some(l) => l.clone(),
            // No node object: the slice's zone hint is all we know.
            None => Locality::new("", zone.unwrap_or_default(), ""),
        }
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<&'a Pod> {
        self.pods.get(&(namespace, name)).copied()
    }

    fn labels(&self, namespace: &str, pod: &str) -> BTreeMap<String, String> {
        self.pod(namespace, pod)
            .and_then(|p| p.metadata.labels.clone())
            .unwrap_or_default()
    }

    fn endpoint(
        &self,
        namespace: &str,
        ports: &BTreeMap<String, u32>,
        a: &Address<'_>,
    ) -> EndpointEntry {
        let pod = pod_ref(a.target_ref);
        EndpointEntry {
            cluster: self.input.cluster.clone(),
            address: a.ip.to_owned(),
            ports: ports.clone(),
            locality: self.locality(a.node, a.zone),
            labels: pod.map(|p| self.labels(namespace, p)).unwrap_or_default(),
            ready: a.ready,
            stale: self.input.stale,
            pod: pod.unwrap_or_default().to_owned(),
        }
    }
}

/// One address of an endpoint object, slice or Endpoints alike.
struct Address<'x> {
    ip: &'x str,
    ready: bool,
    node: Option<&'x str>,
    /// The slice's zone hint (Endpoints have none).
    zone: Option<&'x str>,
    target_ref: Option<&'x ObjectReference>,
}

/// Whether a slice endpoint takes new connections: a nil `ready` means ready (the
/// EndpointSlice API contract), and a terminating endpoint never does, whatever its
/// `ready` says (upstream sets it false; a hand-written slice may not). Terminating
/// endpoints stay listed, not ready, so that open connections to them finish.
fn slice_endpoint_ready(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> bool {
    let conditions = ep.conditions.as_ref();
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    ready && !terminating
}

fn pod_ref(r: Option<&ObjectReference>) -> Option<&str> {
    r.filter(|r| r.kind.as_deref() == Some("Pod"))
        .and_then(|r| r.name.as_deref())
}

impl Catalog {
    /// Merges every member's exported Services and endpoints. Members are processed in
    /// cluster-name order, so the result does not depend on input order.
    pub fn build(members: &[MemberInput]) -> Catalog {
        let mut sorted: Vec<&MemberInput> = members.iter().collect();
        sorted.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        let mut builder = Builder::default();
        for m in sorted {
            let exports = builder.add_services(m);
            match &m.endpoints {
                EndpointObjects::Slices(slices) => builder.add_slices(&exports, slices),
                EndpointObjects::Endpoints(list) => builder.add_endpoints(&exports, list),
            }
        }
        builder.finish()
    }

    /// Number of endpoints over every service.
    pub fn endpoint_count(&self) -> usize {
        self.services.values().map(|s| s.endpoints.len()).sum()
    }

    /// Endpoints left out as not tunnel targets, per reason, over every service.
    pub(crate) fn skipped_counts(&self) -> BTreeMap<Skip, u32> {
        let mut out: BTreeMap<Skip, u32> = Skip::ALL.iter().map(|s| (*s, 0)).collect();
        for (skip, n) in self.services.values().flat_map(|s| &s.skipped) {
            *out.entry(*skip).or_default() += n;
        }
        out
    }
}

/// The services of one member that are exported, with its lookups.
struct Exports<'a> {
    idx: MemberIndex<'a>,
    /// Services this member exports.
    exported: BTreeSet<ServiceKey>,
    /// Of those, the ones admitting endpoints that are not their namespace's Pods.
    external: BTreeSet<ServiceKey>,
}

/// A catalog under construction: what the members have contributed so far, per service.
#[derive(Default)]
struct Builder {
    ports: BTreeMap<ServiceKey, BTreeMap<String, PortSpec>>,
    clusters: BTreeMap<ServiceKey, BTreeSet<String>>,
    endpoints: BTreeMap<ServiceKey, BTreeMap<(String, String), EndpointEntry>>,
    skipped: BTreeMap<ServiceKey, BTreeMap<Skip, u32>>,
}

impl Builder {
    /// Adds the Services `m` exports (their TCP ports; the first cluster by name defines a
    /// port) and returns them.
    fn add_services<'a>(&mut self, m: &'a MemberInput) -> Exports<'a> {
        let mut exports = Exports {
            idx: MemberIndex::new(m),
            exported: BTreeSet::new(),
            external: BTreeSet::new(),
        };
        let mcs_exported = crate::mcs::exported_keys(m);
        for svc in m
            .services
            .iter()
            .filter(|s| is_exported(s) || crate::mcs::is_mcs_exported(s, &mcs_exported))
        {
            let Some(key) = ServiceKey::of(&svc.metadata) else {
                continue;
            };
            exports.exported.insert(key.clone());
            if targets::allows_external(svc) {
                exports.external.insert(key.clone());
            }
            self.clusters
                .entry(key.clone())
                .or_default()
                .insert(m.cluster.clone());
            let svc_ports = self.ports.entry(key).or_default();
            for p in svc.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
                if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                    continue; // the gateway carries TCP only
                }
                let pname = p.name.clone().unwrap_or_default();
                let Ok(number) = u32::try_from(p.port) else {
                    continue;
                };
                svc_ports.entry(pname.clone()).or_insert_with(|| PortSpec {
                    protocol: port_protocol(&pname, p.app_protocol.as_deref()),
                    name: pname,
                    port: number,
                });
            }
        }
        exports
    }

    /// Adds the endpoints of a member's EndpointSlices, in name order: the reflector's
    /// order is arbitrary, and a merged endpoint must not depend on it.
    fn add_slices(&mut self, exports: &Exports<'_>, slices: &[Arc<EndpointSlice>]) {
        let mut slices: Vec<&Arc<EndpointSlice>> = slices.iter().collect();
        slices.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        for s in slices {
            self.add_slice(exports, s);
        }
    }

    fn add_slice(&mut self, exports: &Exports<'_>, s: &EndpointSlice) {
        // IPv4 and IPv6 addresses are dialled as they are; an FQDN slice names hosts the
        // gateway would have to resolve in the member's own DNS, which it cannot reach.
        if !matches!(s.address_type.as_str(), "IPv4" | "IPv6") {
            debug!(
                cluster = %exports.idx.input.cluster,
                namespace = s.metadata.namespace.as_deref().unwrap_or_default(),
                slice = s.metadata.name.as_deref().unwrap_or_default(),
                address_type = %s.address_type,
                "EndpointSlice ignored: address type not carried"
            );
            return;
        }
        let (Some(ns), Some(svc)) = (
            s.metadata.namespace.as_deref(),
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL)),
        ) else {
            return;
        };
        let key = ServiceKey::new(ns, svc.as_str());
        if !exports.exported.contains(&key) {
            return;
        }
        let ports = tcp_ports(
            s.ports
                .iter()
                .flatten()
                .map(|p| (p.name.as_ref(), p.protocol.as_deref(), p.port)),
        );
        for ep in &s.endpoints {
            for ip in &ep.addresses {
                let address = Address {
                    ip,
                    ready: slice_endpoint_ready(ep),
                    node: ep.node_name.as_deref(),
                    zone: ep.zone.as_deref(),
                    target_ref: ep.target_ref.as_ref(),
                };
                self.add_address(exports, &key, &ports, &address);
            }
        }
    }

    /// Adds the endpoints of a member's core/v1 Endpoints (ready and not-ready addresses).
    fn add_endpoints(&mut self, exports: &Exports<'_>, list: &[Arc<Endpoints>]) {
        for eps in list {
            let Some(key) = ServiceKey::of(&eps.metadata) else {
                continue;
            };
            if !exports.exported.contains(&key) {
                continue;
            }
            for subset in eps.subsets.iter().flatten() {
                let ports = tcp_ports(
                    subset
                        .ports
                        .iter()
                        .flatten()
                        .map(|p| (p.name.as_ref(), p.protocol.as_deref(), Some(p.port))),
                );
                let both = [
                    (subset.addresses.iter().flatten(), true),
                    (subset.not_ready_addresses.iter().flatten(), false),
                ];
                for (addrs, ready) in both {
                    for a in addrs {
                        let address = Address {
                            ip: &a.ip,
                            ready,
                            node: a.node_name.as_deref(),
                            zone: None,
                            target_ref: a.target_ref.as_ref(),
                        };
                        self.add_address(exports, &key, &ports, &address);
                    }
                }
            }
        }
    }

    /// Adds one address of `key` when it is a tunnel target ([`targets::admit`]); counts
    /// and logs it when it is not.
    fn add_address(
        &mut self,
        exports: &Exports<'_>,
        key: &ServiceKey,
        ports: &BTreeMap<String, u32>,
        a: &Address<'_>,
    ) {
        let admitted = targets::admit(
            a.ip,
            a.target_ref,
            &key.namespace,
            exports.external.contains(key),
            |pod| exports.idx.pod(&key.namespace, pod),
        );
        if let Err(skip) = admitted {
            debug!(cluster = %exports.idx.input.cluster, service = %key, address = a.ip,
                reason = skip.label(),
                "endpoint skipped: not an IP of a Pod of the service's namespace");
            *self
                .skipped
                .entry(key.clone())
                .or_default()
                .entry(skip)
                .or_default() += 1;
            return;
        }
        let e = exports.idx.endpoint(&key.namespace, ports, a);
        self.endpoints
            .entry(key.clone())
            .or_default()
            .entry((e.cluster.clone(), e.address.clone()))
            .and_modify(|old| {
                // The same address in two slices (an endpoint moving between them, or one
                // slice per port set) is one endpoint: merge the ports; ready if either
                // says so, so that the order of the slices does not matter.
                for (k, v) in &e.ports {
                    old.ports.entry(k.clone()).or_insert(*v);
                }
                old.ready |= e.ready;
            })
            .or_insert(e);
    }

    /// One entry per service any member exports.
    fn finish(mut self) -> Catalog {
        let services = self
            .clusters
            .into_iter()
            .map(|(key, clusters)| {
                let entry = GlobalServiceEntry {
                    ports: self
                        .ports
                        .remove(&key)
                        .unwrap_or_default()
                        .into_values()
                        .collect(),
                    endpoints: self
                        .endpoints
                        .remove(&key)
                        .unwrap_or_default()
                        .into_values()
                        .collect(),
                    skipped: self.skipped.remove(&key).unwrap_or_default(),
                    clusters,
                    key: key.clone(),
                };
                (key, Arc::new(entry))
            })
            .collect();
        Catalog { services }
    }
}

/// The TCP ports of an endpoint object by name (name, protocol, number).
fn tcp_ports<'p>(
    ports: impl Iterator<Item = (Option<&'p String>, Option<&'p str>, Option<i32>)>,
) -> BTreeMap<String, u32> {
    ports
        .filter(|(_, protocol, _)| protocol.unwrap_or("TCP") == "TCP")
        .filter_map(|(name, _, port)| {
            Some((
                name.cloned().unwrap_or_default(),
                u32::try_from(port?).ok()?,
            ))
        })
        .collect()
}

/// The locality of a Service's first endpoint (ready ones first) in one member, e.g. of the
/// gateway Service: the gateway's own locality.
pub(crate) fn service_locality(
    input: &MemberInput,
    namespace: &str,
    name: &str,
) -> Option<Locality> {
    let idx = MemberIndex::new(input);
    let mut found: Vec<(bool, Locality)> = Vec::new();
    match &input.endpoints {
        EndpointObjects::Slices(slices) => {
            for s in slices.iter().filter(|s| {
                s.metadata.namespace.as_deref() == Some(namespace)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                        .is_some_and(|n| n == name)
            }) {
                for ep in &s.endpoints {
                    let ready = slice_endpoint_ready(ep);
                    found.push((
                        ready,
                        idx.locality(ep.node_name.as_deref(), ep.zone.as_deref()),
                    ));
                }
            }
        }
        EndpointObjects::Endpoints(list) => {
            for e in list.iter().filter(|e| {
                e.metadata.namespace.as_deref() == Some(namespace)
                    && e.metadata.name.as_deref() == Some(name)
            }) {
                for subset in e.subsets.iter().flatten() {
                    for a in subset.addresses.iter().flatten() {
                        found.push((true, idx.locality(a.node_name.as_deref(), None)));
                    }
                    for a in subset.not_ready_addresses.iter().flatten() {
                        found.push((false, idx.locality(a.node_name.as_deref(), None)));
                    }
                }
            }
        }
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    found.into_iter().next().map(|(_, l)| l)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fixtures::*;
    use k8s_openapi::api::discovery::v1::EndpointConditions;

    #[test]
    fn protocols() {
        assert_eq!(port_protocol("http", None), Protocol::Http);
        assert_eq!(port_protocol("http-web", None), Protocol::Http);
        assert_eq!(port_protocol("http2-api", None), Protocol::Http2);
        assert_eq!(port_protocol("grpc", None), Protocol::Grpc);
        assert_eq!(port_protocol("tcp-db", None), Protocol::Tcp);
        assert_eq!(port_protocol("httpx", None), Protocol::Tcp);
        assert_eq!(port_protocol("", None), Protocol::Tcp);
        assert_eq!(port_protocol("web", Some("http")), Protocol::Http);
        assert_eq!(port_protocol("http", Some("tcp")), Protocol::Tcp);
        assert_eq!(
            port_protocol("x", Some("kubernetes.io/h2c")),
            Protocol::Http2
        );
        assert_eq!(port_protocol("grpc-x", Some("unknown")), Protocol::Grpc);
    }

    #[test]
    fn merges_two_clusters_with_slices_and_endpoints() {
        let a = MemberInput::test("a")
            .with_node("n1", "eu", "eu-1", "")
            .with_service(service("demo", "echo", &[("http", 80, None)], true))
            .with_slice(slice(
                "demo",
                "echo",
                &[("http", 8080)],
                &[
                    ("10.0.0.2", true, "n1", "p2"),
                    ("10.0.0.1", false, "n1", "p1"),
                ],
            ))
            .with_pod("demo", "p1", &[("version", "v1")]);
        let b = MemberInput::test("b")
            .with_node("m1", "us", "us-1", "s1")
            .with_service(service(
                "demo",
                "echo",
                &[("http", 80, None), ("grpc", 90, None)],
                true,
            ))
            .with_endpoints(endpoints(
                "demo",
                "echo",
                &[("http", 8080), ("grpc", 9090)],
                &[("10.1.0.1", true, "m1", "q1")],
            ));
        let cat = Catalog::build(&[b.clone(), a.clone()]);
        assert_eq!(
            cat,
            Catalog::build(&[a, b.clone()]),
            "input order must not matter"
        );
        let svc = &cat.services[&ServiceKey::new("demo", "echo")];
        assert_eq!(
            svc.ports
                .iter()
                .map(|p| (p.name.as_str(), p.port, p.protocol))
                .collect::<Vec<_>>(),
            vec![("grpc", 90, Protocol::Grpc), ("http", 80, Protocol::Http)]
        );
        assert_eq!(svc.clusters.iter().collect::<Vec<_>>(), ["a", "b"]);
        let eps: Vec<_> = svc
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.cluster.as_str(),
                    e.address.as_str(),
                    e.ready,
                    e.locality.to_string(),
                )
            })
            .collect();
        assert_eq!(
            eps,
            vec![
                ("a", "10.0.0.1", false, "eu/eu-1".to_owned()),
                ("a", "10.0.0.2", true, "eu/eu-1".to_owned()),
                ("b", "10.1.0.1", true, "us/us-1/s1".to_owned()),
            ]
        );
        assert_eq!(svc.endpoints[0].labels["version"], "v1");
        assert_eq!(svc.endpoints[0].pod, "p1");
        assert_eq!(svc.endpoints[2].ports["grpc"], 9090);
        let counts = svc.counts();
        assert_eq!(counts["a"].0, Counts { ready: 1, total: 2 });
        assert_eq!(
            counts["b"].1[&Locality::new("us", "us-1", "s1")],
            Counts { ready: 1, total: 1 }
        );
        assert_eq!(svc.total_counts(), Counts { ready: 2, total: 3 });
        assert_eq!(
            service_locality(&b, "demo", "echo"),
            Some(Locality::new("us", "us-1", "s1"))
        );
        assert_eq!(service_locality(&b, "demo", "nope"), None);
    }

    #[test]
    fn unexported_services_and_their_endpoints_are_ignored() {
        let a = MemberInput::test("a")
            .with_service(service("demo", "hidden", &[("tcp", 5432, None)], false))
            .with_service(service("demo", "echo", &[("tcp", 1, None)], true))
            .with_slice(slice(
                "demo",
                "hidden",
                &[("tcp", 5432)],
                &[("10.0.0.9", true, "n", "p")],
            ));
        let b = MemberInput::test("b").with_slice(slice(
            "demo",
            "echo",
            &[("tcp", 1)],
            &[("10.9.9.9", true, "n", "p")],
        ));
        let cat = Catalog::build(&[a, b]);
        assert_eq!(cat.services.len(), 1);
        let svc = &cat.services[&ServiceKey::new("demo", "echo")];
        assert!(svc.endpoints.is_empty(), "b does not export echo");
        assert_eq!(svc.clusters.len(), 1);
    }

    /// A slice of `demo/echo` named `name` (port `tcp` 1).
    fn named_slice(name: &str, eps: &[(&str, bool, &str, &str)]) -> EndpointSlice {
        let mut s = slice("demo", "echo", &[("tcp", 1)], eps);
        s.metadata.name = Some(name.to_owned());
        s
    }

    fn exporting(slices: Vec<EndpointSlice>) -> MemberInput {
        let mut m =
            MemberInput::test("a").with_service(service("demo", "echo", &[("tcp", 1, None)], true));
        for s in slices {
            m = m.with_slice(s);
        }
        m
    }

    fn summary(cat: &Catalog) -> Vec<(String, bool)> {
        cat.services[&ServiceKey::new("demo", "echo")]
            .endpoints
            .iter()
            .map(|e| (e.address.clone(), e.ready))
            .collect()
    }

    #[test]
    fn an_address_in_two_slices_counts_once_whatever_their_order() {
        // Mid-move: 10.0.0.2 is in both slices, still marked not ready in the old one.
        let a = named_slice(
            "echo-a",
            &[
                ("10.0.0.1", true, "n", "p1"),
                ("10.0.0.2", false, "n", "p2"),
            ],
        );
        let b = named_slice("echo-b", &[("10.0.0.2", true, "n", "p2")]);
        let forward = Catalog::build(&[exporting(vec![a.clone(), b.clone()])]);
        let backward = Catalog::build(&[exporting(vec![b, a])]);
        assert_eq!(forward, backward);
        assert_eq!(
            summary(&forward),
            [("10.0.0.1".to_owned(), true), ("10.0.0.2".to_owned(), true)]
        );
        let svc = &forward.services[&ServiceKey::new("demo", "echo")];
        assert_eq!(svc.total_counts(), Counts { ready: 2, total: 2 });
    }

    #[test]
    fn terminating_endpoints_stay_listed_but_never_ready() {
        let mut s = named_slice(
            "echo-a",
            &[("10.0.0.1", true, "n", "p1"), ("10.0.0.2", true, "n", "p2")],
        );
        // Upstream: terminating, not ready, still serving.
        s.endpoints[0].conditions = Some(EndpointConditions {
            ready: Some(false),
            serving: Some(true),
            terminating: Some(true),
        });
        // A hand-written slice may leave ready unset (nil = ready) while terminating.
        s.endpoints[1].conditions = Some(EndpointConditions {
            ready: None,
            serving: None,
            terminating: Some(true),
        });
        let cat = Catalog::build(&[exporting(vec![s])]);
        assert_eq!(
            summary(&cat),
            [
                ("10.0.0.1".to_owned(), false),
                ("10.0.0.2".to_owned(), false)
            ]
        );
    }

    #[test]
    fn ipv6_slices_are_carried_and_fqdn_slices_ignored() {
        let mut v6 = named_slice("echo-v6", &[("fd00::1", true, "n", "p6")]);
        v6.address_type = "IPv6".into();
        let mut fqdn = named_slice("echo-fqdn", &[("db.example.com", true, "n", "pf")]);
        fqdn.address_type = "FQDN".into();
        let cat = Catalog::build(&[exporting(vec![v6, fqdn])]);
        assert_eq!(summary(&cat), [("fd00::1".to_owned(), true)]);
    }

    #[test]
    fn stale_members_mark_endpoints() {
        let mut a = MemberInput::test("a")
            .with_service(service("demo", "echo", &[("tcp", 1, None)], true))
            .with_slice(slice(
                "demo",
                "echo",
                &[("tcp", 1)],
                &[("10.0.0.1", true, "n", "p")],
            ));
        a.stale = true;
        let cat = Catalog::build(&[a]);
        assert!(cat.services.values().next().unwrap().endpoints[0].stale);
        // Without a node object the slice's zone hint is used.
        assert_eq!(
            cat.services.values().next().unwrap().endpoints[0].locality,
            Locality::new("", "", "")
        );
    }
    /// Issue 11 §5: endpoints written by hand into a selectorless Service (no `targetRef`,
    /// a Node, a Pod of another namespace) are not tunnel targets, on both endpoint APIs;
    /// the Service's `meridian.io/allow-external-endpoints: "true"` admits them.
    #[test]
    fn only_pods_of_the_service_namespace_are_tunnel_targets() {
        use k8s_openapi::api::core::v1::ObjectReference;
        let reference = |kind: &str, ns: &str, name: &str| ObjectReference {
            kind: Some(kind.into()),
            namespace: (!ns.is_empty()).then(|| ns.to_owned()),
            name: Some(name.into()),
            ..ObjectReference::default()
        };
        let refs = [
            ("10.0.0.1", Some(reference("Pod", "demo", "p1"))),
            ("10.0.0.2", None),
            ("10.0.0.3", Some(reference("Node", "", "n1"))),
            ("10.0.0.4", Some(reference("Pod", "other", "p4"))),
            ("10.0.0.5", Some(reference("Pod", "", "p5"))),
        ];
        let eps: Vec<(&str, bool, &str, &str)> =
            refs.iter().map(|(ip, _)| (*ip, true, "n1", "p")).collect();
        let target = |ip: &str| refs.iter().find(|r| r.0 == ip).and_then(|r| r.1.clone());
        let mut with_slice = slice("demo", "manual", &[("tcp", 1)], &eps);
        for ep in &mut with_slice.endpoints {
            ep.target_ref = target(&ep.addresses[0]);
        }
        let mut with_endpoints = endpoints("demo", "manual", &[("tcp", 1)], &eps);
        for subset in with_endpoints.subsets.iter_mut().flatten() {
            for a in subset.addresses.iter_mut().flatten() {
                a.target_ref = target(&a.ip);
            }
        }
        let exported = service("demo", "manual", &[("tcp", 1, None)], true);
        let mut annotated = exported.clone();
        annotated.metadata.annotations = Some(BTreeMap::from([(
            targets::ALLOW_EXTERNAL_ENDPOINTS_ANNOTATION.to_owned(),
            "true".to_owned(),
        )]));
        let members = [
            (
                "EndpointSlices",
                MemberInput::test("a").with_slice(with_slice),
            ),
            (
                "Endpoints",
                MemberInput::test("a").with_endpoints(with_endpoints),
            ),
        ];
        for (api, member) in members {
            let build = |svc: &Service| {
                let cat = Catalog::build(&[member.clone().with_service(svc.clone())]);
                cat.services[&ServiceKey::new("demo", "manual")].clone()
            };
            let strict = build(&exported);
            let addresses: Vec<&str> = strict
                .endpoints
                .iter()
                .map(|e| e.address.as_str())
                .collect();
            assert_eq!(addresses, ["10.0.0.1"], "{api}");
            assert_eq!(
                strict.skipped,
                BTreeMap::from([
                    (Skip::NoTargetRef, 1),
                    (Skip::NotAPod, 1),
                    (Skip::OtherNamespace, 2),
                ]),
                "{api}"
            );
            let open = build(&annotated);
            assert_eq!(
                open.endpoints.len(),
                5,
                "{api}: the annotation admits them all"
            );
            assert!(open.skipped.is_empty());
        }
    }

    /// Issue 11 §5: a hand-written endpoint naming one of the namespace's own Pods is a
    /// tunnel target only at that Pod's IP, not at an address of the writer's choosing (a
    /// node's kubelet, another namespace's pod), on both endpoint APIs; a Pod that is unknown
    /// or has no IP yet admits nothing; the annotation admits them all.
    #[test]
    fn an_endpoint_is_a_target_only_at_its_pods_ip() {
        let eps = [
            ("10.0.0.1", true, "n1", "p1"),
            // The kubelet of n1, behind the name of an own pod.
            ("192.168.0.10", true, "n1", "p1"),
            // Another namespace's pod, behind a not-ready own pod.
            ("10.0.0.7", false, "n1", "p1"),
            ("10.0.0.2", true, "n1", "pending"),
            ("10.0.0.3", true, "n1", "gone"),
        ];
        let member = MemberInput::test("a")
            .with_pod_ips("demo", "p1", &["10.0.0.1", "fd00::1"])
            .with_pod_ips("demo", "pending", &[]);
        let members = [
            (
                "EndpointSlices",
                member
                    .clone()
                    .with_slice(slice("demo", "manual", &[("tcp", 1)], &eps)),
            ),
            (
                "Endpoints",
                member.with_endpoints(endpoints("demo", "manual", &[("tcp", 1)], &eps)),
            ),
        ];
        let exported = service("demo", "manual", &[("tcp", 1, None)], true);
        let mut annotated = exported.clone();
        annotated.metadata.annotations = Some(BTreeMap::from([(
            targets::ALLOW_EXTERNAL_ENDPOINTS_ANNOTATION.to_owned(),
            "true".to_owned(),
        )]));
        for (api, mut member) in members {
            // No Pod named `gone` at all (the fixture adds the Pods endpoints reference).
            member
                .pods
                .retain(|p| p.metadata.name.as_deref() != Some("gone"));
            let build = |svc: &Service| {
                let cat = Catalog::build(&[member.clone().with_service(svc.clone())]);
                cat.services[&ServiceKey::new("demo", "manual")].clone()
            };
            let strict = build(&exported);
            let kept: Vec<(&str, &str)> = strict
                .endpoints
                .iter()
                .map(|e| (e.address.as_str(), e.pod.as_str()))
                .collect();
            assert_eq!(kept, [("10.0.0.1", "p1")], "{api}");
            assert_eq!(
                strict.skipped,
                BTreeMap::from([(Skip::PodIpUnknown, 2), (Skip::AddressNotPodIp, 2)]),
                "{api}"
            );
            let open = build(&annotated);
            assert_eq!(
                open.endpoints.len(),
                5,
                "{api}: the annotation admits them all"
            );
            assert!(open.skipped.is_empty(), "{api}");
        }
    }
}
