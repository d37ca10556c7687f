//! Dirty keys: what the members' reflector events say may have changed since the last
//! aggregation pass, resolved to the services to rebuild.
//!
//! A Service, its Endpoints, its EndpointSlices (by their `kubernetes.io/service-name`
//! label, and the Service a relabelled slice left) and its ServiceExport mark that service.
//! A Pod marks the services whose endpoints reference it, a Node those with endpoints on
//! it ([`IncrementalCatalog::services_of_pod`], [`IncrementalCatalog::services_of_node`]).
//! A member that connects, relists, goes stale or is withdrawn marks everything it has or
//! contributed; its gateway Service marks the peers (the snapshot header).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use crate::catalog::ServiceKey;
use crate::incremental::{IncrementalCatalog, MemberObjects};

/// Marks gathered between two passes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dirty {
    services: BTreeSet<ServiceKey>,
    /// (member, namespace, name).
    pods: BTreeSet<(String, String, String)>,
    /// (member, name).
    nodes: BTreeSet<(String, String)>,
    members: BTreeSet<String>,
    peers: bool,
}

impl Dirty {
    /// The service `key` changed (its Service, Endpoints, a slice or its ServiceExport).
    pub fn service(&mut self, key: ServiceKey) {
        self.services.insert(key);
    }

    /// The services `keys` changed.
    pub fn extend_services(&mut self, keys: impl IntoIterator<Item = ServiceKey>) {
        self.services.extend(keys);
    }

    /// The Pod `namespace/name` of `cluster` changed.
    pub fn pod(&mut self, cluster: &str, namespace: &str, name: &str) {
        self.pods
            .insert((cluster.to_owned(), namespace.to_owned(), name.to_owned()));
    }

    /// The Node `name` of `cluster` changed.
    pub fn node(&mut self, cluster: &str, name: &str) {
        self.nodes.insert((cluster.to_owned(), name.to_owned()));
    }

    /// Anything of `cluster` may have changed (it connected, relisted, went stale, came back,
    /// was withdrawn or removed).
    pub fn member(&mut self, cluster: &str) {
        self.members.insert(cluster.to_owned());
    }

    /// A gateway Service changed: the peers are to be recomputed.
    pub fn peers(&mut self) {
        self.peers = true;
    }

    /// Whether the peers are to be recomputed.
    pub fn peers_changed(&self) -> bool {
        self.peers || !self.members.is_empty()
    }

    /// Whether nothing is marked.
    pub fn is_empty(&self) -> bool {
        *self == Dirty::default()
    }

    /// Adds `other`'s marks to these.
    pub fn merge(&mut self, other: Dirty) {
        self.services.extend(other.services);
        self.pods.extend(other.pods);
        self.nodes.extend(other.nodes);
        self.members.extend(other.members);
        self.peers |= other.peers;
    }

    /// The services to rebuild: the marked ones, the users of marked Pods and Nodes, and
    /// everything marked members have (`members`) or contributed (`catalog`).
    pub fn resolve(
        &self,
        catalog: &IncrementalCatalog,
        members: &[&dyn MemberObjects],
    ) -> BTreeSet<ServiceKey> {
        let mut keys = self.services.clone();
        for (c, ns, name) in &self.pods {
            keys.extend(catalog.services_of_pod(c, ns, name).cloned());
        }
        for (c, name) in &self.nodes {
            keys.extend(catalog.services_of_node(c, name).cloned());
        }
        for c in &self.members {
            keys.extend(catalog.services_of_member(c));
            for m in members.iter().filter(|m| m.cluster() == c) {
                keys.extend(m.service_keys());
            }
        }
        keys
    }
}

/// The marks shared between the reflectors (writers) and the aggregator (which takes them).
#[derive(Debug, Default, Clone)]
pub(crate) struct DirtyKeys(Arc<Mutex<Dirty>>);

impl DirtyKeys {
    /// Adds marks.
    pub(crate) fn mark(&self, f: impl FnOnce(&mut Dirty)) {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Takes every mark so far.
    pub(crate) fn take(&self) -> Dirty {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
