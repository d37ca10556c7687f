//! A snapshot as named, content-versioned resources: what incremental (delta) delivery
//! diffs, sends and applies, as Envoy's incremental xDS does.
//!
//! A [`Snapshot`] splits into one `header` resource (cluster, locality, trust domain,
//! peers, member drains), one `service/<hostname>` resource per global service (without its endpoints)
//! and one `endpoints/<hostname>/<cluster>` resource per member cluster that has
//! endpoints of the service. A one-endpoint change therefore touches one small resource,
//! whatever the mesh size. Each resource's version is a hash of its encoding, so equal
//! content has equal versions on every replica and after every restart.
//!
//! [`Resources`] keeps them in a persistent ordered map (`imbl`): cloning is O(1), an
//! update is O(log n) and shares every untouched node, and the difference between two
//! versions walks only the nodes they do not share. The controller keeps the last value
//! each subscriber was sent and diffs the newest against it; the gateway and the DNS
//! server apply the deltas they receive and rebuild only the services a delta touched.
//! [`Resources::to_snapshot`] puts the full snapshot back together for clients of the
//! full stream and for `meridianctl`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use imbl::OrdMap;

use crate::proto::{
    DeltaResponse, EndpointGroup, GlobalService, Resource, Snapshot, SnapshotHeader, resource,
};

/// Name of the header resource.
pub const HEADER: &str = "header";
const SERVICE_PREFIX: &str = "service/";
const ENDPOINTS_PREFIX: &str = "endpoints/";

/// The name of a service's resource: `service/<hostname>`.
pub fn service_name(hostname: &str) -> String {
    format!("{SERVICE_PREFIX}{hostname}")
}

/// The name of one cluster's endpoints of a service: `endpoints/<hostname>/<cluster>`.
pub fn endpoints_name(hostname: &str, cluster: &str) -> String {
    format!("{ENDPOINTS_PREFIX}{hostname}/{cluster}")
}

/// The hostname a service or endpoints resource belongs to (`None` for the header or an
/// unknown name).
pub fn hostname_of(name: &str) -> Option<&str> {
    if let Some(host) = name.strip_prefix(SERVICE_PREFIX) {
        return Some(host);
    }
    let rest = name.strip_prefix(ENDPOINTS_PREFIX)?;
    rest.rsplit_once('/').map(|(host, _cluster)| host)
}

/// FNV-1a, 64 bit: small, and stable across Rust versions and platforms (std's hasher
/// is neither), so versions agree between replicas and builds.
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// One resource's contribution to the system version: a well-mixed hash of its name and
/// version (splitmix64's finaliser), combined by XOR so that an update costs O(1).
fn mix(name: &str, version: u64) -> u64 {
    let mut z = content_hash(name.as_bytes()) ^ version.rotate_left(29);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A snapshot's fields other than its services.
fn header_of(snap: &Snapshot) -> SnapshotHeader {
    SnapshotHeader {
        cluster: snap.cluster.clone(),
        locality: snap.locality.clone(),
        trust_domain: snap.trust_domain.clone(),
        peers: snap.peers.clone(),
        drains: snap.drains.clone(),
    }
}

/// A resource held in the map. Equality is by version: versions are content hashes.
#[derive(Debug, Clone)]
struct Held(Arc<Resource>);

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.0.version == other.0.version
    }
}

/// Why a delta could not be applied. The client then resubscribes from scratch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeltaError {
    /// A resource arrived without a body, or with a body that does not match its name.
    #[error("resource {0:?} has no body or a body of the wrong kind")]
    Malformed(String),
    /// After applying, the client's state does not hash to the server's system version:
    /// the client missed a change.
    #[error("state after the delta has version {have:#x}, the server announced {want:#x}")]
    VersionMismatch {
        /// The version the client's state hashes to.
        have: u64,
        /// The system version the delta announced.
        want: u64,
    },
}

/// What a delta changed, so that a client rebuilds only that.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    /// The header changed (cluster, locality, trust domain, peers or drains).
    pub header: bool,
    /// Hostnames whose service or endpoints changed, were added or were removed.
    pub services: BTreeSet<String>,
}

impl Touched {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.header && self.services.is_empty()
    }

    fn note(&mut self, name: &str) {
        match hostname_of(name) {
            Some(host) => {
                self.services.insert(host.to_owned());
            }
            None => self.header = true,
        }
    }
}

/// A snapshot as versioned resources. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    map: OrdMap<String, Held>,
    /// XOR of `mix(name, version)` over every resource.
    combined: u64,
    /// The version of the full snapshot these resources were made from, when they were
    /// (the `Watch` stream's own numbering); cleared by any change.
    snapshot_version: Option<u64>,
}

impl Resources {
    /// No resources.
    pub fn new() -> Self {
        Self::default()
    }

    /// The system version: changes if and only if some resource changes (up to hash
    /// collisions). 0 only when empty.
    pub fn version(&self) -> u64 {
        if self.map.is_empty() {
            0
        } else {
            self.combined.max(1)
        }
    }

    /// The version to report for this state: the version of the full snapshot it was
    /// made from (see [`Self::set_snapshot_version`]), else the system version. Metrics
    /// and admin dumps show it, so that a client of the full stream shows the controller's
    /// numbering.
    pub fn snapshot_version(&self) -> u64 {
        self.snapshot_version.unwrap_or_else(|| self.version())
    }

    /// Records that this state is the full snapshot of version `version` (until the next
    /// change).
    pub fn set_snapshot_version(&mut self, version: u64) {
        self.snapshot_version = Some(version);
    }

    /// Number of resources.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no resources.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The resource called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.map.get(name).map(|h| &h.0)
    }

    /// Every resource name with its version (what a reconnecting client sends).
    pub fn versions(&self) -> BTreeMap<String, u64> {
        self.map
            .iter()
            .map(|(k, v)| (k.clone(), v.0.version))
            .collect()
    }

    /// Sets `name` to `body`, versioned by its content; returns whether anything changed.
    pub fn upsert(&mut self, name: String, body: resource::Body) -> bool {
        let mut buf = Vec::with_capacity(body.encoded_len());
        body.encode(&mut buf);
        let version = content_hash(&buf);
        if self.map.get(&name).is_some_and(|h| h.0.version == version) {
            return false;
        }
        self.put(Arc::new(Resource {
            name,
            version,
            body: Some(body),
        }));
        true
    }

    /// Inserts a resource as received, with its own version.
    fn put(&mut self, res: Arc<Resource>) {
        self.snapshot_version = None;
        self.combined ^= mix(&res.name, res.version);
        if let Some(old) = self.map.insert(res.name.clone(), Held(res)) {
            self.combined ^= mix(&old.0.name, old.0.version);
        }
    }

    /// Removes `name`; returns whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        match self.map.remove(name) {
            Some(old) => {
                self.snapshot_version = None;
                self.combined ^= mix(&old.0.name, old.0.version);
                true
            }
            None => false,
        }
    }

    /// Sets the header.
    pub fn set_header(&mut self, header: SnapshotHeader) -> bool {
        self.upsert(HEADER.to_owned(), resource::Body::Header(header))
    }

    /// Sets one global service: its service resource and one endpoints resource per
    /// cluster (removing the clusters it no longer has). `svc.endpoints` must be sorted by
    /// (cluster, address), as in a snapshot. Returns whether anything changed.
    pub fn set_service(&mut self, svc: &GlobalService) -> bool {
        let host = svc.hostname.clone();
        let mut groups: BTreeMap<&str, Vec<_>> = BTreeMap::new();
        for e in &svc.endpoints {
            groups
                .entry(e.cluster.as_str())
                .or_default()
                .push(e.clone());
        }
        let mut changed = false;
        for stale in self.endpoint_names(&host) {
            let cluster = &stale[ENDPOINTS_PREFIX.len() + host.len() + 1..];
            if !groups.contains_key(cluster) {
                changed |= self.remove(&stale);
            }
        }
        for (cluster, endpoints) in groups {
            changed |= self.upsert(
                endpoints_name(&host, cluster),
                resource::Body::Endpoints(EndpointGroup {
                    hostname: host.clone(),
                    cluster: cluster.to_owned(),
                    endpoints,
                }),
            );
        }
        let bare = GlobalService {
            endpoints: Vec::new(),
            ..svc.clone()
        };
        changed |= self.upsert(service_name(&host), resource::Body::Service(bare));
        changed
    }

    /// Removes a global service with all its endpoints; returns whether it was there.
    pub fn remove_service(&mut self, hostname: &str) -> bool {
        let mut changed = self.remove(&service_name(hostname));
        for name in self.endpoint_names(hostname) {
            changed |= self.remove(&name);
        }
        changed
    }

    /// The names of a service's endpoints resources, in cluster order.
    fn endpoint_names(&self, hostname: &str) -> Vec<String> {
        let prefix = format!("{ENDPOINTS_PREFIX}{hostname}/");
        self.map
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            // `a.b.global/x` vs `a.b.global2/…`: the '/' right after the hostname keeps
            // other hostnames out; a cluster name holds no '/'.
            .filter(|(k, _)| !k[prefix.len()..].contains('/'))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Splits a full snapshot into resources.
    pub fn from_snapshot(snap: &Snapshot) -> Self {
        let mut r = Self::new();
        r.set_header(header_of(snap));
        for svc in &snap.services {
            r.set_service(svc);
        }
        r
    }

    /// Brings these resources to `snap`'s content, keeping every unchanged resource (and
    /// so the structure shared with earlier values): a value derived this way diffs against
    /// those in O(changes). Costs O(n) to hash the snapshot; for a source that only has
    /// full snapshots (the `Watch` stream, a publisher of snapshots). Returns whether
    /// anything changed.
    pub fn update_from_snapshot(&mut self, snap: &Snapshot) -> bool {
        let mut changed = self.set_header(header_of(snap));
        let keep: BTreeSet<&str> = snap.services.iter().map(|s| s.hostname.as_str()).collect();
        let gone: Vec<String> = self
            .hostnames()
            .filter(|h| !keep.contains(h))
            .map(str::to_owned)
            .collect();
        for host in gone {
            changed |= self.remove_service(&host);
        }
        for svc in &snap.services {
            changed |= self.set_service(svc);
        }
        changed
    }

    /// The header, if any.
    pub fn header(&self) -> Option<&SnapshotHeader> {
        match self.get(HEADER)?.body.as_ref()? {
            resource::Body::Header(h) => Some(h),
            _ => None,
        }
    }

    /// One global service with its endpoints put back (sorted by cluster, then as sent).
    pub fn service(&self, hostname: &str) -> Option<GlobalService> {
        let mut svc = match self.get(&service_name(hostname))?.body.as_ref()? {
            resource::Body::Service(s) => s.clone(),
            _ => return None,
        };
        for name in self.endpoint_names(hostname) {
            if let Some(resource::Body::Endpoints(g)) =
                self.get(&name).and_then(|r| r.body.as_ref())
            {
                svc.endpoints.extend(g.endpoints.iter().cloned());
            }
        }
        Some(svc)
    }

    /// The hostnames of every global service, sorted.
    pub fn hostnames(&self) -> impl Iterator<Item = &str> + '_ {
        self.map
            .range(SERVICE_PREFIX.to_owned()..)
            .take_while(|(k, _)| k.starts_with(SERVICE_PREFIX))
            .map(|(k, _)| &k[SERVICE_PREFIX.len()..])
    }

    /// The full snapshot these resources make, versioned by [`Self::snapshot_version`].
    pub fn to_snapshot(&self) -> Snapshot {
        let header = self.header().cloned().unwrap_or_default();
        Snapshot {
            version: self.snapshot_version(),
            cluster: header.cluster,
            locality: header.locality,
            trust_domain: header.trust_domain,
            services: self.hostnames().filter_map(|h| self.service(h)).collect(),
            peers: header.peers,
            drains: header.drains,
        }
    }

    /// The delta from `older` to `self`: O(changes · log n) when `self` was derived from
    /// `older` (the usual case: the value a subscriber was last sent).
    pub fn delta_since(&self, older: &Resources) -> DeltaResponse {
        let mut out = DeltaResponse {
            system_version: self.version(),
            ..DeltaResponse::default()
        };
        for item in older.map.diff(&self.map) {
            match item {
                imbl::ordmap::DiffItem::Add(_, new)
                | imbl::ordmap::DiffItem::Update { new: (_, new), .. } => {
                    out.resources.push(Resource::clone(&new.0));
                }
                imbl::ordmap::DiffItem::Remove(name, _) => out.removed.push(name.clone()),
            }
        }
        out
    }

    /// What changed from `older` to `self`, for a consumer that rebuilds only that: the
    /// gateway and the DNS server keep the value they last applied and ask this of the
    /// newest one. O(changes · log n) when `self` was derived from `older`.
    pub fn touched_since(&self, older: &Resources) -> Touched {
        let mut touched = Touched::default();
        for item in older.map.diff(&self.map) {
            let (imbl::ordmap::DiffItem::Add(name, _)
            | imbl::ordmap::DiffItem::Update { new: (name, _), .. }
            | imbl::ordmap::DiffItem::Remove(name, _)) = item;
            touched.note(name);
        }
        touched
    }

    /// The delta from what a client says it holds (`known`: name → version) to `self`:
    /// what a reconnecting client needs. O(n).
    pub fn delta_from_versions(&self, known: &BTreeMap<String, u64>) -> DeltaResponse {
        let mut out = DeltaResponse {
            system_version: self.version(),
            ..DeltaResponse::default()
        };
        for (name, held) in &self.map {
            if known.get(name) != Some(&held.0.version) {
                out.resources.push(Resource::clone(&held.0));
            }
        }
        out.removed = known
            .keys()
            .filter(|name| !self.map.contains_key(*name))
            .cloned()
            .collect();
        out
    }

    /// Applies a delta received from the server and reports what it touched. On error the
    /// state is left as it was, and the client should resubscribe with no versions.
    pub fn apply(&mut self, delta: &DeltaResponse) -> Result<Touched, DeltaError> {
        let mut next = self.clone();
        next.snapshot_version = None;
        let mut touched = Touched::default();
        for name in &delta.removed {
            if next.remove(name) {
                touched.note(name);
            }
        }
        for res in &delta.resources {
            let well_formed = match (res.body.as_ref(), hostname_of(&res.name)) {
                (Some(resource::Body::Header(_)), None) => res.name == HEADER,
                (Some(resource::Body::Service(s)), Some(host)) => {
                    res.name == service_name(&s.hostname) && host == s.hostname
                }
                (Some(resource::Body::Endpoints(g)), Some(_)) => {
                    res.name == endpoints_name(&g.hostname, &g.cluster)
                }
                _ => false,
            };
            if !well_formed || res.version == 0 {
                return Err(DeltaError::Malformed(res.name.clone()));
            }
            next.put(Arc::new(res.clone()));
            touched.note(&res.name);
        }
        if next.version() != delta.system_version {
            return Err(DeltaError::VersionMismatch {
                have: next.version(),
                want: delta.system_version,
            });
        }
        *self = next;
        Ok(touched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ClusterDrain, Endpoint, Locality, Peer};
    use proptest::prelude::*;

    fn endpoint(cluster: &str, address: &str, ready: bool) -> Endpoint {
        Endpoint {
            cluster: cluster.into(),
            address: address.into(),
            ready,
            ports: [("http".to_owned(), 8080)].into(),
            locality: Some(Locality {
                region: "r".into(),
                zone: format!("z-{cluster}"),
                subzone: String::new(),
            }),
            ..Endpoint::default()
        }
    }

    fn service(host: &str, endpoints: Vec<Endpoint>) -> GlobalService {
        GlobalService {
            name: host.split('.').next().unwrap_or_default().into(),
            namespace: "default".into(),
            hostname: host.into(),
            vip: "10.0.0.1".into(),
            endpoints,
            clusters: vec!["east".into(), "west".into()],
            ..GlobalService::default()
        }
    }

    fn snapshot(services: Vec<GlobalService>) -> Snapshot {
        Snapshot {
            version: 0,
            cluster: "east".into(),
            locality: Some(Locality {
                region: "r".into(),
                zone: "z-east".into(),
                subzone: String::new(),
            }),
            trust_domain: "mesh.local".into(),
            services,
            peers: vec![Peer {
                cluster: "west".into(),
                address: "127.0.0.2:15443".into(),
                identity: "spiffe://mesh.local/cluster/west/gateway".into(),
                locality: None,
            }],
            drains: vec![ClusterDrain {
                cluster: "west".into(),
                permille: 400,
            }],
        }
    }

    fn two_services() -> Snapshot {
        snapshot(vec![
            service(
                "a.default.global",
                vec![
                    endpoint("east", "10.1.0.1", true),
                    endpoint("east", "10.1.0.2", true),
                    endpoint("west", "10.2.0.1", false),
                ],
            ),
            service("b.default.global", vec![endpoint("west", "10.2.0.9", true)]),
        ])
    }

    #[test]
    fn a_snapshot_round_trips_through_its_resources() {
        let snap = two_services();
        let r = Resources::from_snapshot(&snap);
        assert_eq!(
            r.len(),
            1 + 2 + 3,
            "header, two services, three endpoint groups"
        );
        let back = r.to_snapshot();
        assert_eq!(
            Snapshot {
                version: 0,
                ..back.clone()
            },
            snap
        );
        assert_eq!(back.version, r.version());
    }

    #[test]
    fn a_hostname_that_prefixes_another_keeps_its_own_endpoints() {
        let snap = snapshot(vec![
            service("a.default.global", vec![endpoint("east", "10.1.0.1", true)]),
            service(
                "a.default.global2",
                vec![endpoint("west", "10.2.0.1", true)],
            ),
        ]);
        let r = Resources::from_snapshot(&snap);
        assert_eq!(
            r.service("a.default.global").map(|s| s.endpoints.len()),
            Some(1)
        );
        assert_eq!(
            Snapshot {
                version: 0,
                ..r.to_snapshot()
            },
            snap
        );
    }

    #[test]
    fn one_endpoint_change_is_one_resource() {
        let before = Resources::from_snapshot(&two_services());
        let mut after = before.clone();
        let mut snap = two_services();
        snap.services[0].endpoints[2].ready = true;
        assert!(after.set_service(&snap.services[0]));
        assert_ne!(after.version(), before.version());

        let delta = after.delta_since(&before);
        let names: Vec<_> = delta.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["endpoints/a.default.global/west"]);
        assert!(delta.removed.is_empty());

        let mut client = before.clone();
        let touched = client.apply(&delta).expect("applies");
        assert_eq!(
            touched.services,
            BTreeSet::from(["a.default.global".to_owned()])
        );
        assert!(!touched.header);
        assert_eq!(client.to_snapshot(), after.to_snapshot());
    }

    #[test]
    fn updating_from_a_snapshot_equals_splitting_it_and_shares_the_rest() {
        let before = Resources::from_snapshot(&two_services());
        let mut snap = two_services();
        snap.services.remove(1);
        snap.services[0].endpoints[0].ready = false;
        let mut after = before.clone();
        assert!(after.update_from_snapshot(&snap));
        assert_eq!(after.version(), Resources::from_snapshot(&snap).version());
        let delta = after.delta_since(&before);
        let names: Vec<_> = delta.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["endpoints/a.default.global/east"]);
        assert_eq!(
            delta.removed,
            [
                "endpoints/b.default.global/west",
                "service/b.default.global"
            ]
        );
        assert!(
            !after.clone().update_from_snapshot(&snap),
            "no change twice"
        );

        // A full snapshot's own version is reported until the next change.
        after.set_snapshot_version(7);
        assert_eq!(after.snapshot_version(), 7);
        assert_eq!(after.to_snapshot().version, 7);
        after.remove_service("a.default.global");
        assert_eq!(after.snapshot_version(), after.version());
    }

    #[test]
    fn the_same_content_is_the_same_version_and_no_change() {
        let mut r = Resources::from_snapshot(&two_services());
        let v = r.version();
        assert!(!r.set_service(&two_services().services[1]));
        assert_eq!(r.version(), v);
        assert_eq!(Resources::from_snapshot(&two_services()).version(), v);
    }

    #[test]
    fn a_reconnecting_client_gets_only_the_difference() {
        let old = Resources::from_snapshot(&two_services());
        let mut now = old.clone();
        now.remove_service("b.default.global");
        let delta = now.delta_from_versions(&old.versions());
        assert!(delta.resources.is_empty());
        assert_eq!(
            delta.removed,
            [
                "endpoints/b.default.global/west",
                "service/b.default.global"
            ]
        );
        let mut client = old.clone();
        let touched = client.apply(&delta).expect("applies");
        assert_eq!(
            touched.services,
            BTreeSet::from(["b.default.global".to_owned()])
        );
        assert_eq!(client.to_snapshot(), now.to_snapshot());
    }

    #[test]
    fn a_delta_that_misses_a_change_is_refused_and_leaves_the_state_alone() {
        let base = Resources::from_snapshot(&two_services());
        let mut step1 = base.clone();
        step1.remove_service("b.default.global");
        let mut step2 = step1.clone();
        let mut snap = two_services();
        snap.services[0].vip = "10.0.0.2".into();
        step2.set_service(&snap.services[0]);

        // The client holds `base` but is sent step1 → step2 only.
        let mut client = base.clone();
        let err = client.apply(&step2.delta_since(&step1)).unwrap_err();
        assert!(matches!(err, DeltaError::VersionMismatch { .. }), "{err}");
        assert_eq!(client.version(), base.version());
    }

    #[test]
    fn a_resource_whose_body_does_not_match_its_name_is_refused() {
        let mut client = Resources::from_snapshot(&two_services());
        let mut delta = Resources::new().delta_since(&Resources::new());
        delta.resources.push(Resource {
            name: "service/x.default.global".into(),
            version: 7,
            body: Some(resource::Body::Service(service("y.default.global", vec![]))),
        });
        assert_eq!(
            client.apply(&delta),
            Err(DeltaError::Malformed("service/x.default.global".into()))
        );
    }

    /// Regression: imbl 6.1's `OrdMap::diff` skipped the entry right after a run of
    /// shared nodes (jneem/imbl#161, fixed in 7.0), so in a large map some single-service
    /// changes went unseen by `touched_since` and `delta_since` (an empty delta).
    #[test]
    fn every_single_change_in_a_large_map_is_in_its_delta() {
        let services: Vec<GlobalService> = (0..2_000)
            .map(|i| {
                service(
                    &format!("s{i}.default.global"),
                    vec![endpoint("east", "10.0.0.1", true)],
                )
            })
            .collect();
        let base = Resources::from_snapshot(&snapshot(services.clone()));
        let mut missed = Vec::new();
        for svc in &services {
            let mut changed = svc.clone();
            changed.endpoints[0].ready = false;
            let mut next = base.clone();
            assert!(next.set_service(&changed));
            let touched = next.touched_since(&base);
            let sent = next.delta_since(&base).resources.len();
            if touched.services != BTreeSet::from([svc.hostname.clone()]) || sent != 1 {
                missed.push(svc.hostname.clone());
            }
        }
        assert!(
            missed.is_empty(),
            "{} of 2000 missed, e.g. {:?}",
            missed.len(),
            missed.first()
        );
    }

    /// One random edit of a snapshot.
    #[derive(Debug, Clone)]
    enum Edit {
        Flip {
            service: usize,
            endpoint: usize,
        },
        AddEndpoint {
            service: usize,
            cluster: usize,
            host: u8,
        },
        RemoveService {
            service: usize,
        },
        AddService {
            n: u8,
        },
        Peer {
            n: u8,
        },
        Drain {
            permille: u32,
        },
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (0..8usize, 0..16usize)
                .prop_map(|(service, endpoint)| Edit::Flip { service, endpoint }),
            (0..8usize, 0..3usize, any::<u8>()).prop_map(|(service, cluster, host)| {
                Edit::AddEndpoint {
                    service,
                    cluster,
                    host,
                }
            }),
            (0..8usize).prop_map(|service| Edit::RemoveService { service }),
            any::<u8>().prop_map(|n| Edit::AddService { n }),
            any::<u8>().prop_map(|n| Edit::Peer { n }),
            (0..=1000u32).prop_map(|permille| Edit::Drain { permille }),
        ]
    }

    fn apply_edit(snap: &mut Snapshot, e: &Edit) {
        let clusters = ["east", "west", "far"];
        let n = snap.services.len();
        match *e {
            Edit::Flip { service, endpoint } if n > 0 => {
                let svc = &mut snap.services[service % n];
                let m = svc.endpoints.len();
                if m > 0 {
                    let ep = &mut svc.endpoints[endpoint % m];
                    ep.ready = !ep.ready;
                }
            }
            Edit::AddEndpoint {
                service,
                cluster,
                host,
            } if n > 0 => {
                let svc = &mut snap.services[service % n];
                let ep = endpoint(clusters[cluster], &format!("10.{cluster}.0.{host}"), true);
                if !svc
                    .endpoints
                    .iter()
                    .any(|x| x.cluster == ep.cluster && x.address == ep.address)
                {
                    svc.endpoints.push(ep);
                    svc.endpoints
                        .sort_by(|a, b| (&a.cluster, &a.address).cmp(&(&b.cluster, &b.address)));
                }
            }
            Edit::RemoveService { service } if n > 0 => {
                snap.services.remove(service % n);
            }
            Edit::AddService { n: k } => {
                let host = format!("s{k}.default.global");
                if !snap.services.iter().any(|s| s.hostname == host) {
                    snap.services
                        .push(service(&host, vec![endpoint("east", "10.9.9.9", true)]));
                    snap.services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
                }
            }
            Edit::Peer { n: k } => snap.peers[0].address = format!("127.0.0.{k}:15443"),
            Edit::Drain { permille } => snap.drains[0].permille = permille,
            _ => {}
        }
    }

    proptest! {
        /// A client fed only deltas — one per step, or one after a reconnect — ends in
        /// exactly the state the full snapshot gives.
        #[test]
        fn deltas_end_where_the_full_snapshot_is(edits in proptest::collection::vec(edit(), 1..40)) {
            let mut snap = two_services();
            let mut server = Resources::from_snapshot(&snap);
            let mut client = Resources::new();
            client.apply(&server.delta_since(&Resources::new())).expect("initial");
            let reconnecting = client.clone();
            for e in &edits {
                apply_edit(&mut snap, e);
                let before = server.clone();
                let full = Resources::from_snapshot(&snap);
                for h in before.hostnames() {
                    if full.get(&service_name(h)).is_none() {
                        server.remove_service(h);
                    }
                }
                server.set_header(full.header().cloned().unwrap_or_default());
                for svc in &snap.services {
                    server.set_service(svc);
                }
                prop_assert_eq!(server.version(), full.version());
                client.apply(&server.delta_since(&before)).expect("step");
                prop_assert_eq!(client.to_snapshot(), full.to_snapshot());
            }
            let mut late = reconnecting;
            late.apply(&server.delta_from_versions(&late.versions())).expect("resume");
            prop_assert_eq!(late.to_snapshot(), Resources::from_snapshot(&snap).to_snapshot());
        }
    }
}
