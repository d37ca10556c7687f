//! The incremental catalog: the catalog and the MCS view kept between passes, with only the
//! services whose inputs changed rebuilt.
//!
//! A global service's entry depends only on, in each member, the Service and ServiceExport
//! of its namespace/name, the endpoint objects of that Service, the Pods those endpoints
//! reference in the Service's namespace and the Nodes they run on. So one service is
//! rebuilt by gathering exactly those objects by name ([`MemberObjects`]) and running the
//! same [`Catalog::build`] and [`McsView::build`] as a full pass on them: the incremental
//! result cannot drift from the full one by construction, and a test checks it over random
//! change sequences anyway. What each service read (Pods, Nodes) is indexed backwards, so a
//! Pod or Node event finds the services it affects ([`crate::dirty`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Node, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::catalog::{Catalog, EndpointObjects, MemberInput, SERVICE_NAME_LABEL, ServiceKey};
use crate::mcs::{ExportMeta, McsView};

/// A member's objects looked up by name: its reflector stores in the controller, a
/// [`IndexedMember`] in tests and benches.
pub trait MemberObjects {
    /// The member cluster's name.
    fn cluster(&self) -> &str;
    /// Whether the member is unreachable (its endpoints are kept, marked stale).
    fn stale(&self) -> bool;
    /// The Service `key`.
    fn service(&self, key: &ServiceKey) -> Option<Arc<Service>>;
    /// The ServiceExport `key`.
    fn service_export(&self, key: &ServiceKey) -> Option<Arc<ExportMeta>>;
    /// The endpoint objects of the Service `key` (its slices, or its Endpoints).
    fn endpoint_objects(&self, key: &ServiceKey) -> EndpointObjects;
    /// The Pod `namespace/name`.
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>>;
    /// The Node `name`.
    fn node(&self, name: &str) -> Option<Arc<Node>>;
    /// Every key with a Service or a ServiceExport in this member.
    fn service_keys(&self) -> Vec<ServiceKey>;
}

/// What one member's contribution to a service read besides the Service itself.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Reads {
    pods: BTreeSet<String>,
    nodes: BTreeSet<String>,
}

/// A member's objects of one Service (whether exported or not), e.g. of the gateway
/// Service for its locality ([`crate::catalog::service_locality`]).
pub fn objects_of(m: &dyn MemberObjects, key: &ServiceKey) -> MemberInput {
    gather(m, key, false).0
}

/// A member's input restricted to one service: everything [`Catalog::build`] reads for it.
fn restricted(m: &dyn MemberObjects, key: &ServiceKey) -> (MemberInput, Reads) {
    gather(m, key, true)
}

fn gather(m: &dyn MemberObjects, key: &ServiceKey, exported_only: bool) -> (MemberInput, Reads) {
    let mut input = MemberInput {
        cluster: m.cluster().to_owned(),
        stale: m.stale(),
        ..MemberInput::default()
    };
    let mut reads = Reads::default();
    input.services.extend(m.service(key));
    input.service_exports.extend(m.service_export(key));
    if exported_only && input.services.is_empty() {
        // Nothing exported here: its endpoints cannot count.
        return (input, reads);
    }
    let mut refer = |node: Option<&String>, target: Option<&ObjectReference>| {
        if let Some(n) = node {
            reads.nodes.insert(n.clone());
        }
        if let Some(r) = target
            && r.kind.as_deref() == Some("Pod")
            && r.namespace.as_deref() == Some(key.namespace.as_str())
            && let Some(name) = &r.name
        {
            reads.pods.insert(name.clone());
        }
    };
    let objects = m.endpoint_objects(key);
    match &objects {
        EndpointObjects::Slices(slices) => {
            for e in slices.iter().flat_map(|s| &s.endpoints) {
                refer(e.node_name.as_ref(), e.target_ref.as_ref());
            }
        }
        EndpointObjects::Endpoints(list) => {
            for s in list.iter().flat_map(|e| e.subsets.iter().flatten()) {
                let both = [&s.addresses, &s.not_ready_addresses];
                for a in both.into_iter().flatten().flatten() {
                    refer(a.node_name.as_ref(), a.target_ref.as_ref());
                }
            }
        }
    }
    input.endpoints = objects;
    input.pods = reads
        .pods
        .iter()
        .filter_map(|p| m.pod(&key.namespace, p))
        .collect();
    input.nodes = reads.nodes.iter().filter_map(|n| m.node(n)).collect();
    (input, reads)
}

/// The catalog and MCS view, rebuilt per service.
#[derive(Debug, Default, Clone)]
pub struct IncrementalCatalog {
    catalog: Catalog,
    mcs: McsView,
    /// Per service, per member contributing to it, what its last rebuild read.
    reads: HashMap<ServiceKey, BTreeMap<String, Reads>>,
    /// (member, namespace, pod) → the services whose endpoints reference that Pod.
    pod_users: HashMap<(String, String, String), BTreeSet<ServiceKey>>,
    /// (member, node) → the services with endpoints on that Node.
    node_users: HashMap<(String, String), BTreeSet<ServiceKey>>,
    /// Per member: the services it exports, and its endpoints in the catalog.
    member_counts: HashMap<String, MemberCounts>,
}

/// What one member contributes to the catalog, for its status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemberCounts {
    /// Global services it exports.
    pub services: u32,
    /// Its endpoints over every global service.
    pub endpoints: u32,
}

impl IncrementalCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// The catalog (MCS ports applied).
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The MCS view.
    pub fn mcs(&self) -> &McsView {
        &self.mcs
    }

    /// Rebuilds every service any member has, and drops the others: the first pass, and
    /// the periodic consistency pass. Returns the services whose entry changed.
    pub fn rebuild_all(
        &mut self,
        members: &[&dyn MemberObjects],
        local: &str,
    ) -> BTreeSet<ServiceKey> {
        let mut keys: BTreeSet<ServiceKey> = self.reads.keys().cloned().collect();
        keys.extend(self.catalog.services.keys().cloned());
        keys.extend(self.mcs.imports.keys().cloned());
        keys.extend(self.mcs.exports.keys().cloned());
        for m in members {
            keys.extend(m.service_keys());
        }
        self.rebuild(members, local, &keys)
    }

    /// Rebuilds the services `keys` from `members` (the members whose endpoints count, as
    /// in a full build). Returns those whose catalog entry or MCS state changed.
    pub fn rebuild(
        &mut self,
        members: &[&dyn MemberObjects],
        local: &str,
        keys: &BTreeSet<ServiceKey>,
    ) -> BTreeSet<ServiceKey> {
        let mut changed = BTreeSet::new();
        for key in keys {
            if self.rebuild_one(members, local, key) {
                changed.insert(key.clone());
            }
        }
        changed
    }

    fn rebuild_one(
        &mut self,
        members: &[&dyn MemberObjects],
        local: &str,
        key: &ServiceKey,
    ) -> bool {
        let mut inputs = Vec::with_capacity(members.len());
        let mut reads = BTreeMap::new();
        for m in members {
            let (input, r) = restricted(*m, key);
            if input.services.is_empty() && input.service_exports.is_empty() {
                continue;
            }
            // Kept even when empty: the member contributes (a Service, an export).
            reads.insert(input.cluster.clone(), r);
            inputs.push(input);
        }
        self.index(key, reads);
        let mut one = Catalog::build(&inputs);
        let mcs = McsView::build(&inputs, local);
        mcs.apply_ports(&mut one);
        let entry = one.services.remove(key);
        self.count(key, false);
        let mut changed = set(&mut self.catalog.services, key, entry);
        self.count(key, true);
        let McsView {
            mut imports,
            mut exports,
        } = mcs;
        changed |= set(&mut self.mcs.imports, key, imports.remove(key));
        changed |= set(&mut self.mcs.exports, key, exports.remove(key));
        changed
    }

    /// Adds (or takes away) the entry of `key` to (from) its members' counts.
    fn count(&mut self, key: &ServiceKey, add: bool) {
        let Some(entry) = self.catalog.services.get(key) else {
            return;
        };
        let step = |n: &mut u32, by: u32| {
            *n = if add {
                n.saturating_add(by)
            } else {
                n.saturating_sub(by)
            };
        };
        for c in &entry.clusters {
            step(
                &mut self.member_counts.entry(c.clone()).or_default().services,
                1,
            );
        }
        for e in &entry.endpoints {
            step(
                &mut self
                    .member_counts
                    .entry(e.cluster.clone())
                    .or_default()
                    .endpoints,
                1,
            );
        }
    }

    /// What `cluster` contributes to the catalog.
    pub fn member_counts(&self, cluster: &str) -> MemberCounts {
        self.member_counts.get(cluster).copied().unwrap_or_default()
    }

    /// Replaces what `key` read, in the backward indexes.
    fn index(&mut self, key: &ServiceKey, reads: BTreeMap<String, Reads>) {
        let old = if reads.is_empty() {
            self.reads.remove(key)
        } else {
            self.reads.insert(key.clone(), reads.clone())
        };
        if old.as_ref() == Some(&reads) {
            return;
        }
        for (cluster, r) in old.iter().flatten() {
            for p in &r.pods {
                let k = (cluster.clone(), key.namespace.clone(), p.clone());
                unindex(&mut self.pod_users, k, key);
            }
            for n in &r.nodes {
                unindex(&mut self.node_users, (cluster.clone(), n.clone()), key);
            }
        }
        for (cluster, r) in &reads {
            for p in &r.pods {
                let k = (cluster.clone(), key.namespace.clone(), p.clone());
                self.pod_users.entry(k).or_default().insert(key.clone());
            }
            for n in &r.nodes {
                let k = (cluster.clone(), n.clone());
                self.node_users.entry(k).or_default().insert(key.clone());
            }
        }
    }

    /// The services whose endpoints in `cluster` reference the Pod `namespace/name`.
    pub fn services_of_pod(
        &self,
        cluster: &str,
        namespace: &str,
        name: &str,
    ) -> impl Iterator<Item = &ServiceKey> {
        let k = (cluster.to_owned(), namespace.to_owned(), name.to_owned());
        self.pod_users.get(&k).into_iter().flatten()
    }

    /// The services with endpoints in `cluster` on the Node `name`.
    pub fn services_of_node(&self, cluster: &str, name: &str) -> impl Iterator<Item = &ServiceKey> {
        let k = (cluster.to_owned(), name.to_owned());
        self.node_users.get(&k).into_iter().flatten()
    }

    /// The services `cluster` contributed to at their last rebuild (a Service or a
    /// ServiceExport of their name).
    pub fn services_of_member(&self, cluster: &str) -> BTreeSet<ServiceKey> {
        self.reads
            .iter()
            .filter(|(_, r)| r.contains_key(cluster))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Sets or removes `map[key]`; whether that changed it.
fn set<V: PartialEq>(
    map: &mut BTreeMap<ServiceKey, V>,
    key: &ServiceKey,
    value: Option<V>,
) -> bool {
    match value {
        Some(v) => {
            if map.get(key) == Some(&v) {
                return false;
            }
            map.insert(key.clone(), v);
            true
        }
        None => map.remove(key).is_some(),
    }
}

fn unindex<K: std::hash::Hash + Eq>(
    index: &mut HashMap<K, BTreeSet<ServiceKey>>,
    k: K,
    key: &ServiceKey,
) {
    if let Some(set) = index.get_mut(&k) {
        set.remove(key);
        if set.is_empty() {
            index.remove(&k);
        }
    }
}

/// Which EndpointSlices belong to which Service: reflector stores are keyed by the
/// slice's own name, the catalog looks slices up by their Service.
#[derive(Debug, Clone, Default)]
pub struct SliceOwners {
    owner: HashMap<(String, String), ServiceKey>,
    names: HashMap<ServiceKey, BTreeSet<String>>,
}

impl SliceOwners {
    /// Records that slice `namespace/name` belongs to `owner`; returns the Service it
    /// belonged to before when that was another one.
    pub fn put(
        &mut self,
        namespace: &str,
        name: &str,
        owner: Option<ServiceKey>,
    ) -> Option<ServiceKey> {
        let before = self.delete(namespace, name);
        if let Some(o) = &owner {
            self.names
                .entry(o.clone())
                .or_default()
                .insert(name.to_owned());
            self.owner
                .insert((namespace.to_owned(), name.to_owned()), o.clone());
        }
        before.filter(|b| Some(b) != owner.as_ref())
    }

    /// Forgets slice `namespace/name`; returns the Service it belonged to.
    pub fn delete(&mut self, namespace: &str, name: &str) -> Option<ServiceKey> {
        let owner = self
            .owner
            .remove(&(namespace.to_owned(), name.to_owned()))?;
        if let Some(set) = self.names.get_mut(&owner) {
            set.remove(name);
            if set.is_empty() {
                self.names.remove(&owner);
            }
        }
        Some(owner)
    }

    /// The names of the slices of `key` (in its namespace).
    pub fn names(&self, key: &ServiceKey) -> impl Iterator<Item = &String> {
        self.names.get(key).into_iter().flatten()
    }
}

/// A member's objects in hash maps, looked up by name: the [`MemberObjects`] of tests and
/// benches (the controller's are its reflector stores).
#[derive(Debug, Clone, Default)]
pub struct IndexedMember {
    /// Member cluster name.
    pub cluster: String,
    /// Unreachable: endpoints kept, marked stale.
    pub stale: bool,
    services: HashMap<ServiceKey, Arc<Service>>,
    exports: HashMap<ServiceKey, Arc<ExportMeta>>,
    /// Slices by (namespace, slice name), and their names per Service.
    slices: HashMap<(String, String), Arc<EndpointSlice>>,
    slices_of: SliceOwners,
    /// Whether the member serves core/v1 Endpoints rather than slices.
    uses_endpoints: bool,
    endpoints: HashMap<ServiceKey, Arc<Endpoints>>,
    pods: HashMap<(String, String), Arc<Pod>>,
    nodes: HashMap<String, Arc<Node>>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<ServiceKey> {
    Some(ServiceKey::new(
        meta.namespace.as_deref()?,
        meta.name.as_deref()?,
    ))
}

/// The Service an EndpointSlice belongs to (its `kubernetes.io/service-name` label).
pub(crate) fn slice_owner(s: &EndpointSlice) -> Option<ServiceKey> {
    let ns = s.metadata.namespace.as_deref()?;
    let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ServiceKey::new(ns, svc.as_str()))
}

impl IndexedMember {
    /// Indexes a member's objects.
    pub fn new(input: &MemberInput) -> Self {
        let mut m = IndexedMember {
            cluster: input.cluster.clone(),
            stale: input.stale,
            uses_endpoints: matches!(input.endpoints, EndpointObjects::Endpoints(_)),
            ..IndexedMember::default()
        };
        for s in &input.services {
            m.put_service(s.clone());
        }
        for e in &input.service_exports {
            if let Some(k) = key_of(&e.metadata) {
                m.exports.insert(k, e.clone());
            }
        }
        match &input.endpoints {
            EndpointObjects::Slices(v) => {
                for s in v {
                    m.put_slice(s.clone());
                }
            }
            EndpointObjects::Endpoints(v) => v.iter().for_each(|e| m.put_endpoints(e.clone())),
        }
        for p in &input.pods {
            m.put_pod(p.clone());
        }
        for n in &input.nodes {
            m.put_node(n.clone());
        }
        m
    }

    /// Adds or replaces a Service.
    pub fn put_service(&mut self, s: Arc<Service>) {
        if let Some(k) = key_of(&s.metadata) {
            self.services.insert(k, s);
        }
    }

    /// Removes a Service.
    pub fn delete_service(&mut self, key: &ServiceKey) {
        self.services.remove(key);
    }

    /// Adds or replaces an EndpointSlice; returns the Service it belonged to before, if
    /// another.
    pub fn put_slice(&mut self, s: Arc<EndpointSlice>) -> Option<ServiceKey> {
        let (Some(ns), Some(name)) = (s.metadata.namespace.clone(), s.metadata.name.clone()) else {
            return None;
        };
        let before = self.slices_of.put(&ns, &name, slice_owner(&s));
        self.slices.insert((ns, name), s);
        before
    }

    /// Removes an EndpointSlice; returns the Service it belonged to.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) -> Option<ServiceKey> {
        self.slices.remove(&(namespace.to_owned(), name.to_owned()));
        self.slices_of.delete(namespace, name)
    }

    /// Adds or replaces a core/v1 Endpoints.
    pub fn put_endpoints(&mut self, e: Arc<Endpoints>) {
        if let Some(k) = key_of(&e.metadata) {
            self.endpoints.insert(k, e);
        }
    }

    /// Removes a core/v1 Endpoints.
    pub fn delete_endpoints(&mut self, key: &ServiceKey) {
        self.endpoints.remove(key);
    }

    /// Adds or replaces a Pod.
    pub fn put_pod(&mut self, p: Arc<Pod>) {
        if let (Some(ns), Some(name)) = (&p.metadata.namespace, &p.metadata.name) {
            self.pods.insert((ns.clone(), name.clone()), p);
        }
    }

    /// Removes a Pod.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        self.pods.remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Adds or replaces a Node.
    pub fn put_node(&mut self, n: Arc<Node>) {
        if let Some(name) = &n.metadata.name {
            self.nodes.insert(name.clone(), n);
        }
    }

    /// Removes a Node.
    pub fn delete_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// The EndpointSlice `namespace/name`.
    pub fn slice(&self, namespace: &str, name: &str) -> Option<Arc<EndpointSlice>> {
        self.slices
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The member as one [`MemberInput`], for a full [`Catalog::build`].
    pub fn input(&self) -> MemberInput {
        MemberInput {
            cluster: self.cluster.clone(),
            stale: self.stale,
            services: self.services.values().cloned().collect(),
            service_exports: self.exports.values().cloned().collect(),
            endpoints: if self.uses_endpoints {
                EndpointObjects::Endpoints(self.endpoints.values().cloned().collect())
            } else {
                EndpointObjects::Slices(self.slices.values().cloned().collect())
            },
            nodes: self.nodes.values().cloned().collect(),
            pods: self.pods.values().cloned().collect(),
        }
    }
}

impl MemberObjects for IndexedMember {
    fn cluster(&self) -> &str {
        &self.cluster
    }
    fn stale(&self) -> bool {
        self.stale
    }
    fn service(&self, key: &ServiceKey) -> Option<Arc<Service>> {
        self.services.get(key).cloned()
    }
    fn service_export(&self, key: &ServiceKey) -> Option<Arc<ExportMeta>> {
        self.exports.get(key).cloned()
    }
    fn endpoint_objects(&self, key: &ServiceKey) -> EndpointObjects {
        if self.uses_endpoints {
            return EndpointObjects::Endpoints(
                self.endpoints.get(key).cloned().into_iter().collect(),
            );
        }
        EndpointObjects::Slices(
            self.slices_of
                .names(key)
                .filter_map(|name| self.slice(&key.namespace, name))
                .collect(),
        )
    }
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }
    fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.get(name).cloned()
    }
    fn service_keys(&self) -> Vec<ServiceKey> {
        let mut keys: Vec<ServiceKey> = self.services.keys().cloned().collect();
        keys.extend(self.exports.keys().cloned());
        keys
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use kube::core::PartialObjectMetaExt;

    use super::*;
    use crate::dirty::Dirty;
    use crate::fixtures;

    /// xorshift64: a seeded, dependency-free source of random choices.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
        fn coin(&mut self) -> bool {
            self.below(2) == 0
        }
    }

    const NS: &str = "demo";
    const SERVICES: usize = 4;
    const PODS: usize = 8;
    const NODES: usize = 3;

    fn svc_name(i: usize) -> String {
        format!("s{i}")
    }

    fn pod_ip(cluster: usize, pod: usize) -> String {
        format!("10.{cluster}.0.{pod}")
    }

    /// Endpoints `(ip, ready, node, pod)` for a random set of the member's pods (sometimes
    /// at an address that is not the pod's).
    fn random_eps(rng: &mut Rng, c: usize) -> Vec<(String, bool, String, String)> {
        (0..rng.below(4))
            .map(|_| {
                let p = rng.below(PODS);
                let ip = if rng.below(5) == 0 {
                    format!("10.9.9.{p}")
                } else {
                    pod_ip(c, p)
                };
                (
                    ip,
                    rng.coin(),
                    format!("n{}", rng.below(NODES)),
                    format!("p{p}"),
                )
            })
            .collect()
    }

    fn borrow(eps: &[(String, bool, String, String)]) -> Vec<(&str, bool, &str, &str)> {
        eps.iter()
            .map(|(a, r, n, p)| (a.as_str(), *r, n.as_str(), p.as_str()))
            .collect()
    }

    /// One random change to member `c`, marked in `dirty` as its reflector marks it.
    fn change(rng: &mut Rng, c: usize, m: &mut IndexedMember, dirty: &mut Dirty) {
        let cluster = m.cluster.clone();
        let s = svc_name(rng.below(SERVICES));
        let key = ServiceKey::new(NS, s.as_str());
        match rng.below(9) {
            0 => {
                let ports: &[(&str, i32, Option<&str>)] = match rng.below(3) {
                    0 => &[("http", 80, None)],
                    1 => &[("http", 81, None), ("grpc", 90, Some("grpc"))],
                    _ => &[("tcp-db", 5432, None)],
                };
                m.put_service(Arc::new(fixtures::service(
                    NS,
                    &s,
                    ports,
                    rng.below(4) != 0,
                )));
                dirty.service(key);
            }
            1 => {
                m.delete_service(&key);
                dirty.service(key);
            }
            2 | 3 if m.uses_endpoints => {
                let eps = random_eps(rng, c);
                if rng.below(4) == 0 {
                    m.delete_endpoints(&key);
                } else {
                    let ports = [("http", 8080), ("grpc", 9090)];
                    let e = fixtures::endpoints(NS, &s, &ports[..1 + rng.below(2)], &borrow(&eps));
                    m.put_endpoints(Arc::new(e));
                }
                dirty.service(key);
            }
            2 | 3 => {
                let eps = random_eps(rng, c);
                // Two slices per service; a slice may move to another service.
                let name = format!("{s}-{}", rng.below(2));
                if rng.below(4) == 0 {
                    dirty.service(key);
                    if let Some(old) = m.delete_slice(NS, &name) {
                        dirty.service(old);
                    }
                    return;
                }
                let owner = if rng.below(6) == 0 {
                    svc_name(rng.below(SERVICES))
                } else {
                    s
                };
                let mut slice = fixtures::slice(NS, &owner, &[("http", 8080)], &borrow(&eps));
                slice.metadata.name = Some(name);
                dirty.service(ServiceKey::new(NS, owner.as_str()));
                if let Some(old) = m.put_slice(Arc::new(slice)) {
                    dirty.service(old);
                }
            }
            4 | 5 => {
                let p = rng.below(PODS);
                let name = format!("p{p}");
                if rng.below(4) == 0 {
                    m.delete_pod(NS, &name);
                } else {
                    let ip = if rng.below(5) == 0 {
                        String::new()
                    } else {
                        pod_ip(c, p)
                    };
                    let ips: Vec<&str> = [ip.as_str()]
                        .into_iter()
                        .filter(|i| !i.is_empty())
                        .collect();
                    let mut pod = fixtures::pod(
                        NS,
                        &name,
                        &ips,
                        &[("version", &format!("v{}", rng.below(3)))],
                    );
                    if rng.below(6) == 0 {
                        pod.status.get_or_insert_with(PodStatus::default).phase =
                            Some("Succeeded".into());
                    }
                    m.put_pod(Arc::new(pod));
                }
                dirty.pod(&cluster, NS, &name);
            }
            6 => {
                let name = format!("n{}", rng.below(NODES));
                if rng.below(4) == 0 {
                    m.delete_node(&name);
                } else {
                    let zone = format!("z{}", rng.below(3));
                    let node = IndexedMember::new(
                        &MemberInput::test(&cluster).with_node(&name, "r", &zone, ""),
                    );
                    m.put_node(node.node(&name).expect("just added"));
                }
                dirty.node(&cluster, &name);
            }
            7 => {
                m.stale = !m.stale;
                dirty.member(&cluster);
            }
            _ => {
                if rng.coin() {
                    m.exports.remove(&key);
                } else {
                    let meta = ObjectMeta {
                        namespace: Some(NS.into()),
                        name: Some(s.clone()),
                        creation_timestamp: Some(Time(
                            k8s_openapi::jiff::Timestamp::from_second(
                                1_000_000 + rng.below(100) as i64,
                            )
                            .expect("in range"),
                        )),
                        ..ObjectMeta::default()
                    };
                    m.exports
                        .insert(key.clone(), Arc::new(meta.into_response_partial()));
                }
                dirty.service(key);
            }
        }
    }

    /// What a full pass gives for the same members.
    fn full(members: &[IndexedMember]) -> (Catalog, McsView) {
        let inputs: Vec<MemberInput> = members.iter().map(IndexedMember::input).collect();
        let mut catalog = Catalog::build(&inputs);
        let mcs = McsView::build(&inputs, "a");
        mcs.apply_ports(&mut catalog);
        (catalog, mcs)
    }

    /// Over random change sequences (services, slices moving between services, Endpoints,
    /// pods, nodes, staleness, ServiceExports; a member joining and leaving), rebuilding only
    /// the services the marks resolve to gives exactly the full pass's catalog and MCS view.
    #[test]
    fn incremental_equals_full_over_random_changes() {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let mut members: Vec<IndexedMember> = ["a", "b", "c"]
                .iter()
                .map(|c| IndexedMember::new(&MemberInput::test(c)))
                .collect();
            members[1].uses_endpoints = true;
            let mut present = [true, true, true];
            let mut inc = IncrementalCatalog::new();
            for step in 0..150 {
                let mut dirty = Dirty::default();
                for _ in 0..1 + rng.below(3) {
                    let c = rng.below(members.len());
                    if rng.below(40) == 0 {
                        // A member joins or leaves (withdrawn, unregistered).
                        present[c] = !present[c];
                        dirty.member(&members[c].cluster);
                    } else {
                        change(&mut rng, c, &mut members[c], &mut dirty);
                    }
                }
                let counted: Vec<IndexedMember> = members
                    .iter()
                    .zip(present)
                    .filter(|(_, p)| *p)
                    .map(|(m, _)| m.clone())
                    .collect();
                let objects: Vec<&dyn MemberObjects> =
                    counted.iter().map(|m| m as &dyn MemberObjects).collect();
                let keys = dirty.resolve(&inc, &objects);
                inc.rebuild(&objects, "a", &keys);
                let (catalog, mcs) = full(&counted);
                assert_eq!(inc.catalog(), &catalog, "seed {seed} step {step}");
                assert_eq!(inc.mcs(), &mcs, "seed {seed} step {step}");
                for m in &members {
                    let services = catalog.services.values();
                    let want = MemberCounts {
                        services: services
                            .clone()
                            .filter(|s| s.clusters.contains(&m.cluster))
                            .count() as u32,
                        endpoints: services
                            .flat_map(|s| &s.endpoints)
                            .filter(|e| e.cluster == m.cluster)
                            .count() as u32,
                    };
                    assert_eq!(
                        inc.member_counts(&m.cluster),
                        want,
                        "seed {seed} step {step}"
                    );
                }
            }
            let (catalog, _) = full(&members);
            assert!(
                seed > 1 || catalog.endpoint_count() > 0,
                "the sequences reach catalogs with endpoints"
            );
        }
    }

    /// A rebuild of everything gives the full pass's result, and one change rebuilds only
    /// the service it belongs to.
    #[test]
    fn one_endpoint_change_rebuilds_only_its_service() {
        let member = |c: &str, n: usize| {
            let mut m = MemberInput::test(c).with_node("n0", "r", "z", "");
            for i in 0..3 {
                let s = svc_name(i);
                m = m
                    .with_service(fixtures::service(NS, &s, &[("http", 80, None)], true))
                    .with_slice({
                        let ip = format!("10.{n}.{i}.1");
                        let pod = format!("{s}-p");
                        let mut sl =
                            fixtures::slice(NS, &s, &[("http", 8080)], &[(&ip, true, "n0", &pod)]);
                        sl.metadata.name = Some(s.clone());
                        sl
                    });
            }
            IndexedMember::new(&m)
        };
        let mut members = vec![member("a", 0), member("b", 1)];
        let mut inc = IncrementalCatalog::new();
        let objects: Vec<&dyn MemberObjects> =
            members.iter().map(|m| m as &dyn MemberObjects).collect();
        let all = inc.rebuild_all(&objects, "a");
        assert_eq!(all.len(), 3);
        assert_eq!(inc.catalog(), &full(&members).0);
        let mut slice = (*members[1].slice(NS, "s1").expect("slice")).clone();
        slice.endpoints[0].conditions.get_or_insert_default().ready = Some(false);
        members[1].put_slice(Arc::new(slice));
        let mut dirty = Dirty::default();
        dirty.service(ServiceKey::new(NS, "s1"));
        let objects: Vec<&dyn MemberObjects> =
            members.iter().map(|m| m as &dyn MemberObjects).collect();
        let keys = dirty.resolve(&inc, &objects);
        let changed = inc.rebuild(&objects, "a", &keys);
        assert_eq!(changed, BTreeSet::from([ServiceKey::new(NS, "s1")]));
        assert_eq!(inc.catalog(), &full(&members).0);
        // The pod and node indexes point back at the services that read them.
        assert_eq!(
            inc.services_of_node("b", "n0")
                .cloned()
                .collect::<Vec<_>>()
                .len(),
            3
        );
        assert_eq!(
            inc.services_of_pod("b", NS, "s2-p")
                .cloned()
                .collect::<Vec<_>>(),
            [ServiceKey::new(NS, "s2")]
        );
    }
}
