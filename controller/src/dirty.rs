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
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::catalog::ServiceKey;
use crate::incremental::{IncrementalCatalog, MemberObjects, SliceOwners};

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

/// What one reflector event of a member marks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mark {
    /// A Service, core/v1 Endpoints or ServiceExport of this namespace/name.
    Service(ServiceKey),
    /// A Pod (namespace, name).
    Pod(String, String),
    /// A Node.
    Node(String),
    /// Everything of the member (a relist, a state change).
    Member,
    /// The member's gateway Service.
    Peers,
    /// An EndpointSlice event, for the slice index ([`SliceTable`]).
    Slice(SliceEvent),
}

/// What an EndpointSlice event says about which slices a Service has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SliceEvent {
    /// A relist begins.
    Relist,
    /// A relisted slice (namespace, name, its Service).
    Listed(String, String, Option<ServiceKey>),
    /// The relist is complete: the store now holds exactly the listed slices.
    Relisted,
    /// A slice was added or changed (namespace, name, its Service).
    Applied(String, String, Option<ServiceKey>),
    /// A slice was deleted (namespace, name).
    Deleted(String, String),
}

/// One member's slice index as the aggregator keeps it from the member's slice events: the
/// current one, and during a relist the one being listed (the store swaps its contents
/// only when the relist is complete, and so does this).
#[derive(Debug, Default, Clone)]
pub(crate) struct SliceTable {
    /// What the store holds.
    pub(crate) current: Arc<SliceOwners>,
    listing: Option<SliceOwners>,
}

impl SliceTable {
    /// Applies one event; marks the Services it changed (and the one a slice left).
    pub(crate) fn apply(&mut self, cluster: &str, event: SliceEvent, dirty: &mut Dirty) {
        match event {
            SliceEvent::Relist => self.listing = Some(SliceOwners::default()),
            SliceEvent::Listed(ns, name, owner) => {
                self.listing
                    .get_or_insert_with(SliceOwners::default)
                    .put(&ns, &name, owner);
            }
            SliceEvent::Relisted => {
                self.current = Arc::new(self.listing.take().unwrap_or_default());
                dirty.member(cluster);
            }
            SliceEvent::Applied(ns, name, owner) => {
                let left = Arc::make_mut(&mut self.current).put(&ns, &name, owner.clone());
                dirty.extend_services(owner.into_iter().chain(left));
            }
            SliceEvent::Deleted(ns, name) => {
                let left = Arc::make_mut(&mut self.current).delete(&ns, &name);
                dirty.extend_services(left);
            }
        }
    }
}

/// Where the members' reflectors send their marks (the aggregator receives them). A
/// channel rather than a shared set: no lock between the reflectors and the aggregator.
#[derive(Debug, Clone)]
pub(crate) struct Marks(mpsc::UnboundedSender<(String, Mark)>);

impl Marks {
    /// A sender and the aggregator's receiving end.
    pub(crate) fn channel() -> (Marks, mpsc::UnboundedReceiver<(String, Mark)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Marks(tx), rx)
    }

    /// Sends a mark of member `cluster` (dropped when no aggregator runs).
    pub(crate) fn send(&self, cluster: &str, mark: Mark) {
        let _ = self.0.send((cluster.to_owned(), mark));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new("demo", name)
    }

    fn names(t: &SliceTable, k: &ServiceKey) -> Vec<String> {
        t.current.names(k).cloned().collect()
    }

    /// A slice event marks its Service and the one a relabelled slice left; a relist
    /// replaces the index only once complete, as the store does, and marks the member.
    #[test]
    fn slice_events_keep_the_index_and_mark_services() {
        let mut t = SliceTable::default();
        let mut d = Dirty::default();
        let applied = |name: &str, owner: &str| {
            SliceEvent::Applied("demo".into(), name.into(), Some(key(owner)))
        };
        t.apply("a", applied("x-1", "x"), &mut d);
        assert_eq!(d.services, BTreeSet::from([key("x")]));
        let mut d = Dirty::default();
        t.apply("a", applied("x-1", "y"), &mut d);
        assert_eq!(d.services, BTreeSet::from([key("x"), key("y")]), "moved");
        assert_eq!(names(&t, &key("y")), ["x-1"]);
        assert!(names(&t, &key("x")).is_empty());

        let mut d = Dirty::default();
        t.apply("a", SliceEvent::Relist, &mut d);
        let listed = SliceEvent::Listed("demo".into(), "z-1".into(), Some(key("z")));
        t.apply("a", listed, &mut d);
        assert_eq!(
            names(&t, &key("y")),
            ["x-1"],
            "the store still holds the old list"
        );
        assert!(d.is_empty());
        t.apply("a", SliceEvent::Relisted, &mut d);
        assert_eq!(names(&t, &key("z")), ["z-1"]);
        assert!(names(&t, &key("y")).is_empty());
        assert_eq!(d.members, BTreeSet::from(["a".to_owned()]));

        let mut d = Dirty::default();
        t.apply(
            "a",
            SliceEvent::Deleted("demo".into(), "z-1".into()),
            &mut d,
        );
        assert_eq!(d.services, BTreeSet::from([key("z")]));
        assert!(names(&t, &key("z")).is_empty());
    }
}
