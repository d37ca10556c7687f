//! The gateway's routing table: what the current snapshot says, in the shapes the data plane
//! needs (services with parsed policies and endpoints, listeners, peers, and the local
//! targets the tunnel may reach). Immutable; a new state makes a new routing table.
//!
//! A new state is applied incrementally ([`RoutingTable::apply`]): only the global
//! services its resources touched are rebuilt, and everything else is shared with the
//! previous table (persistent maps, an `Arc` per service), so a one-endpoint change costs
//! one service whatever the mesh size. A header change (locality, trust domain, peers)
//! rebuilds the caller and the peers, which are all that depend on it. The result is the
//! table a build from the full snapshot gives (property-tested below).
//!
//! A VIP pinned to one cluster (`<cluster>.<svc>.<ns>.global`, the snapshot's
//! `cluster_vips`) becomes a service of its own here: the global service's policy and ports
//! (with the pinned listener ports) over only that cluster's endpoints. Routing, the
//! locality engine and outlier detection then treat it like any service, so its failover
//! stays among that cluster's localities; through the tunnel it still names the global
//! service, which is what the owning gateway authorizes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use imbl::{HashSet, OrdMap};
use meridian_api::policy::OutlierSettings;
use meridian_api::proto::{self, Protocol, Snapshot, SnapshotHeader};
use meridian_api::resources::Resources;
use meridian_api::split::Caller;
use meridian_api::{Locality, TrafficPolicy};
use meridian_identity::Identity;
use tracing::warn;

use crate::metrics::Label;
use crate::outlier::EndpointKey;

/// One port of a global service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Port name (may be empty).
    pub name: String,
    /// The port clients use on the VIP.
    pub port: u32,
    /// TCP (per connection) or HTTP/HTTP2/gRPC (per request).
    pub protocol: Protocol,
    /// The gateway listener serving it in this cluster.
    pub listener_port: u32,
}

impl Port {
    /// Whether requests are balanced one by one.
    pub fn is_http(&self) -> bool {
        self.protocol != Protocol::Tcp
    }

    /// Whether upstream connections speak HTTP/2 (prior knowledge).
    pub fn is_http2(&self) -> bool {
        matches!(self.protocol, Protocol::Http2 | Protocol::Grpc)
    }
}

/// One endpoint of a global service.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Stable identity across snapshots (for outlier state).
    pub key: EndpointKey,
    /// Cluster it runs in.
    pub cluster: String,
    /// Pod IP.
    pub ip: IpAddr,
    /// Target port per service port name.
    pub ports: HashMap<String, u32>,
    /// Where it runs.
    pub locality: Locality,
    /// `locality` as text, for metrics.
    pub locality_label: Label,
    /// `cluster` as a metric label (shared, so label sets are built without allocating).
    pub cluster_label: Label,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Ready according to its cluster.
    pub ready: bool,
    /// Pod name.
    pub pod: String,
    /// Drain progress of its cluster in permille (the snapshot's `drains`); 0 when not
    /// drained.
    pub drain: u32,
}

impl Endpoint {
    /// The `ip:port` serving service port `port`: by port name, else the only port, else
    /// the service port number.
    pub fn target(&self, port: &Port) -> SocketAddr {
        let p = self
            .ports
            .get(&port.name)
            .copied()
            .or_else(|| {
                (self.ports.len() == 1)
                    .then(|| self.ports.values().next().copied())
                    .flatten()
            })
            .unwrap_or(port.port);
        SocketAddr::new(self.ip, p as u16)
    }
}

/// A global service as the gateway sees it (or its VIP pinned to one cluster).
#[derive(Debug, Clone)]
pub struct Service {
    /// `<name>.<namespace>.global`, or `<cluster>.<name>.<namespace>.global` when pinned.
    pub hostname: String,
    /// The global service's hostname: what the tunnel names (equal to `hostname` unless
    /// pinned).
    pub global_hostname: String,
    /// The cluster whose endpoints alone serve a pinned VIP.
    pub pinned: Option<String>,
    /// The policy in force (the default one when the snapshot's is unreadable).
    pub policy: TrafficPolicy,
    /// Why the snapshot's policy was not used, if it was not.
    pub policy_error: Option<String>,
    /// Outlier detection settings in force.
    pub outlier: OutlierSettings,
    /// Ports.
    pub ports: Vec<Port>,
    /// Endpoints in every cluster, sorted by (cluster, address).
    pub endpoints: Vec<Endpoint>,
    /// `hostname` as a metric label.
    pub label: Label,
}

/// An outbound listener to open: service port `port` of `hostname`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// Global service hostname.
    pub hostname: String,
    /// The port.
    pub port: Port,
}

/// Another member's gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerGateway {
    /// Its cluster.
    pub cluster: String,
    /// `host:port` of its tunnel listener.
    pub address: String,
    /// The identity it must present.
    pub identity: Identity,
}

/// Everything derived from one state.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    /// The state in use, as resources (the full snapshot is `resources.to_snapshot()`).
    pub resources: Resources,
    /// The version of the state in use ([`Resources::snapshot_version`]).
    pub version: u64,
    /// This gateway's cluster.
    pub cluster: String,
    /// The caller for locality decisions: this gateway's own locality.
    pub caller: Caller,
    /// Services by hostname.
    pub services: OrdMap<String, Arc<Service>>,
    /// Outbound listeners by listener port.
    pub listeners: OrdMap<u16, ListenerSpec>,
    /// Peer gateways by cluster.
    pub peers: BTreeMap<String, PeerGateway>,
    /// Drain progress in permille by drained cluster (the header's `drains`).
    drains: BTreeMap<String, u32>,
    /// (hostname, service port, target) the tunnel may connect to: ready local endpoints
    /// only.
    local_targets: HashSet<(String, u32, SocketAddr)>,
    /// What each global service contributed, to take back when it changes.
    units: OrdMap<String, Arc<Unit>>,
    /// Every claim on a listener port, by (global hostname, order within it). The last
    /// claim wins, as when a snapshot's services are walked in order.
    claims: OrdMap<u16, OrdMap<(String, usize), ListenerSpec>>,
}

/// What one global service put into the table.
#[derive(Debug, Default)]
struct Unit {
    /// Its hostname and those of its pinned VIPs.
    hostnames: Vec<String>,
    /// (listener port, order) of its claims.
    claims: Vec<(u16, usize)>,
    /// Its local tunnel targets.
    targets: Vec<(String, u32, SocketAddr)>,
}

/// What applying a state changed, so that the data plane rebuilds only that.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The header changed: the caller's locality or the drains (every split depends on
    /// them) or the peers.
    pub header: bool,
    /// Hostnames of the table (global and pinned) added, changed or removed.
    pub services: BTreeSet<String>,
}

impl RoutingTable {
    /// Builds the routing table of `snapshot` for the gateway of `cluster`. Malformed parts (a
    /// bad address, policy or peer identity) are skipped with a warning; the rest is used.
    pub fn build(cluster: &str, snapshot: Arc<Snapshot>) -> Self {
        let mut resources = Resources::from_snapshot(&snapshot);
        resources.set_snapshot_version(snapshot.version);
        Self::from_resources(cluster, resources)
    }

    /// Builds the routing table of `resources` from scratch.
    pub fn from_resources(cluster: &str, resources: Resources) -> Self {
        let mut empty = Self {
            cluster: cluster.to_owned(),
            ..Self::default()
        };
        // A state without a header still has a caller, as a snapshot without one does.
        empty.set_header(resources.header());
        empty.apply(resources).0
    }

    /// The table of `next`: only the services `next` changed since this table's state are
    /// rebuilt; the rest is shared. O(changes · log n) when `next` was derived from this
    /// table's resources (as each delta's result is).
    pub fn apply(&self, next: Resources) -> (Self, Changes) {
        let mut touched = next.touched_since(&self.resources);
        let mut table = self.clone();
        let mut changes = Changes {
            header: touched.header,
            services: BTreeSet::new(),
        };
        if touched.header {
            table.set_header(next.header());
            // Every endpoint carries its cluster's drain: a drain change touches every
            // service.
            if table.drains != self.drains {
                touched.services.extend(
                    self.units
                        .keys()
                        .cloned()
                        .chain(next.hostnames().map(str::to_owned)),
                );
            }
        }
        for host in &touched.services {
            table.remove_unit(host, &mut changes);
            if let Some(svc) = next.service(host) {
                table.add_unit(&svc, &mut changes);
            }
        }
        table.version = next.snapshot_version();
        table.resources = next;
        (table, changes)
    }

    /// The caller and the peers, from the header.
    fn set_header(&mut self, header: Option<&SnapshotHeader>) {
        let default = SnapshotHeader::default();
        let header = header.unwrap_or(&default);
        self.caller = Caller::at(
            header
                .locality
                .as_ref()
                .map(Locality::from)
                .unwrap_or_default(),
        );
        let mut peers = BTreeMap::new();
        for p in &header.peers {
            if p.cluster == self.cluster {
                continue;
            }
            let identity = if p.identity.is_empty() {
                Identity::gateway(&header.trust_domain, &p.cluster)
            } else {
                p.identity.parse()
            };
            match identity {
                Ok(identity) => {
                    peers.insert(
                        p.cluster.clone(),
                        PeerGateway {
                            cluster: p.cluster.clone(),
                            address: p.address.clone(),
                            identity,
                        },
                    );
                }
                Err(e) => warn!(peer = %p.cluster, error = %e, "peer skipped: bad identity"),
            }
        }
        self.peers = peers;
        self.drains = header
            .drains
            .iter()
            .map(|d| (d.cluster.clone(), d.permille))
            .collect();
    }

    /// Adds global service `s` with its pinned VIPs: services, listener claims, targets.
    fn add_unit(&mut self, s: &proto::GlobalService, changes: &mut Changes) {
        let global = service(s, &self.drains);
        let pinned: Vec<Service> = s
            .cluster_vips
            .iter()
            .map(|cv| pinned_service(&global, cv))
            .collect();
        let mut unit = Unit::default();
        for svc in std::iter::once(global).chain(pinned) {
            for p in &svc.ports {
                if p.listener_port == 0 || p.listener_port > u32::from(u16::MAX) {
                    continue;
                }
                let port = p.listener_port as u16;
                let spec = ListenerSpec {
                    hostname: svc.hostname.clone(),
                    port: p.clone(),
                };
                let order = unit.claims.len();
                let claims = self.claims.entry(port).or_default();
                if let Some(((_, _), prev)) = claims.get_max() {
                    warn!(
                        listener_port = port,
                        first = %prev.hostname,
                        second = %svc.hostname,
                        "two service ports share a listener port; the later one wins"
                    );
                }
                claims.insert((s.hostname.clone(), order), spec);
                unit.claims.push((port, order));
                self.refresh_listener(port);
                // Not-ready endpoints are never tunnel targets, not even in panic: a peer
                // reaches only what Kubernetes would route to.
                for ep in svc
                    .endpoints
                    .iter()
                    .filter(|e| e.cluster == self.cluster && e.ready)
                {
                    let target = (svc.global_hostname.clone(), p.port, ep.target(p));
                    self.local_targets.insert(target.clone());
                    unit.targets.push(target);
                }
            }
            changes.services.insert(svc.hostname.clone());
            unit.hostnames.push(svc.hostname.clone());
            self.services.insert(svc.hostname.clone(), Arc::new(svc));
        }
        self.units.insert(s.hostname.clone(), Arc::new(unit));
    }

    /// Takes back what global service `host` added.
    fn remove_unit(&mut self, host: &str, changes: &mut Changes) {
        let Some(unit) = self.units.remove(host) else {
            return;
        };
        for h in &unit.hostnames {
            self.services.remove(h);
            changes.services.insert(h.clone());
        }
        for &(port, order) in &unit.claims {
            if let Some(claims) = self.claims.get_mut(&port) {
                claims.remove(&(host.to_owned(), order));
                if claims.is_empty() {
                    self.claims.remove(&port);
                }
            }
            self.refresh_listener(port);
        }
        for target in &unit.targets {
            self.local_targets.remove(target);
        }
    }

    /// Sets the listener of `port` to its winning claim, or removes it.
    fn refresh_listener(&mut self, port: u16) {
        match self.claims.get(&port).and_then(OrdMap::get_max) {
            Some((_, spec)) => {
                self.listeners.insert(port, spec.clone());
            }
            None => {
                self.listeners.remove(&port);
            }
        }
    }

    /// Whether the tunnel admits the peer gateway `peer`: its cluster must be a member in
    /// this snapshot's peers, under that identity. A cluster removed from the registry
    /// drops out of the next snapshot, and with it its gateway's access, whatever its
    /// certificate still says.
    pub fn admits(&self, peer: &Identity) -> bool {
        self.peers
            .get(peer.cluster())
            .is_some_and(|p| &p.identity == peer)
    }

    /// Whether the tunnel may connect a peer to `target` for `hostname:port`: the target
    /// must be a ready local endpoint of that exported service port.
    pub fn authorizes(&self, hostname: &str, port: u32, target: SocketAddr) -> bool {
        self.local_targets
            .contains(&(hostname.to_owned(), port, target))
    }

    /// A canonical text of everything routing depends on (sorted, no hash-map order), to
    /// compare tables built different ways.
    pub fn canonical_dump(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "cluster {} caller {:?}", self.cluster, self.caller);
        for (name, svc) in &self.services {
            let policy = serde_json::to_string(&svc.policy).unwrap_or_default();
            let _ = writeln!(
                out,
                "service {name} global={} pinned={:?} policy={policy} error={:?} outlier={:?} ports={:?}",
                svc.global_hostname, svc.pinned, svc.policy_error, svc.outlier, svc.ports
            );
            for e in &svc.endpoints {
                let ports: BTreeMap<_, _> = e.ports.iter().collect();
                let _ = writeln!(
                    out,
                    "  endpoint {:?} {} {} {ports:?} {:?} {} {:?} {} {} drain={}",
                    e.key,
                    e.cluster,
                    e.ip,
                    e.locality,
                    e.locality_label,
                    e.labels,
                    e.ready,
                    e.pod,
                    e.drain
                );
            }
        }
        for (port, spec) in &self.listeners {
            let _ = writeln!(out, "listener {port} {spec:?}");
        }
        for (cluster, peer) in &self.peers {
            let _ = writeln!(out, "peer {cluster} {peer:?}");
        }
        let mut targets: Vec<_> = self.local_targets.iter().collect();
        targets.sort();
        for t in targets {
            let _ = writeln!(out, "target {t:?}");
        }
        out
    }
}

/// The service behind the VIP of `global` pinned to `cv.cluster`: same policy, the pinned
/// listener ports, only that cluster's endpoints.
fn pinned_service(global: &Service, cv: &proto::ClusterVip) -> Service {
    let listeners: HashMap<&str, u32> = cv
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.listener_port))
        .collect();
    let hostname = format!("{}.{}", cv.cluster, global.global_hostname);
    Service {
        label: Label::from(hostname.as_str()),
        hostname,
        global_hostname: global.global_hostname.clone(),
        pinned: Some(cv.cluster.clone()),
        policy: global.policy.clone(),
        policy_error: global.policy_error.clone(),
        outlier: global.outlier,
        ports: global
            .ports
            .iter()
            .map(|p| Port {
                listener_port: listeners.get(p.name.as_str()).copied().unwrap_or(0),
                ..p.clone()
            })
            .collect(),
        endpoints: global
            .endpoints
            .iter()
            .filter(|e| e.cluster == cv.cluster)
            // A pinned VIP names its cluster explicitly: a drain does not apply to it (it
            // would only turn its requests into failures).
            .map(|e| Endpoint {
                drain: 0,
                ..e.clone()
            })
            .collect(),
    }
}

fn service(s: &proto::GlobalService, drains: &BTreeMap<String, u32>) -> Service {
    let (policy, policy_error) = if s.policy_json.is_empty() {
        (TrafficPolicy::default(), None)
    } else {
        match serde_json::from_str::<TrafficPolicy>(&s.policy_json)
            .map_err(|e| e.to_string())
            .and_then(|p| p.validate().map(|()| p).map_err(|e| e.to_string()))
        {
            Ok(p) => (p, None),
            Err(e) => {
                warn!(service = %s.hostname, error = %e, "policy ignored: using defaults");
                (TrafficPolicy::default(), Some(e))
            }
        }
    };
    let outlier = policy.outlier_settings().unwrap_or_default();
    let ports = s
        .ports
        .iter()
        .map(|p| Port {
            name: p.name.clone(),
            port: p.port,
            protocol: Protocol::try_from(p.protocol).unwrap_or(Protocol::Tcp),
            listener_port: p.listener_port,
        })
        .collect();
    let endpoints = s
        .endpoints
        .iter()
        .filter_map(|e| {
            let ip = match e.address.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => {
                    warn!(service = %s.hostname, address = %e.address, "endpoint skipped: bad address");
                    return None;
                }
            };
            let locality = e.locality.as_ref().map(Locality::from).unwrap_or_default();
            Some(Endpoint {
                key: EndpointKey {
                    cluster: e.cluster.clone(),
                    address: e.address.clone(),
                },
                cluster: e.cluster.clone(),
                ip,
                ports: e.ports.clone().into_iter().collect(),
                locality_label: Label::from(locality.to_string()),
                cluster_label: Label::from(e.cluster.as_str()),
                locality,
                labels: e.labels.clone().into_iter().collect(),
                ready: e.ready,
                pod: e.pod.clone(),
                drain: drains.get(e.cluster.as_str()).copied().unwrap_or(0),
            })
        })
        .collect();
    Service {
        hostname: s.hostname.clone(),
        global_hostname: s.hostname.clone(),
        pinned: None,
        policy,
        policy_error,
        outlier,
        ports,
        endpoints,
        label: Label::from(s.hostname.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_api::proto::{
        ClusterVip, Endpoint as PEndpoint, GlobalService, Peer, ServicePort,
    };
    use proptest::prelude::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            version: 1,
            cluster: "east".into(),
            trust_domain: "meridian.test".into(),
            services: vec![GlobalService {
                hostname: "reviews.default.global".into(),
                ports: vec![ServicePort {
                    name: "http".into(),
                    port: 9080,
                    protocol: Protocol::Http as i32,
                    listener_port: 20001,
                }],
                endpoints: vec![
                    PEndpoint {
                        cluster: "east".into(),
                        address: "127.0.1.1".into(),
                        ports: [("http".to_string(), 8080)].into(),
                        ready: true,
                        ..Default::default()
                    },
                    PEndpoint {
                        cluster: "west".into(),
                        address: "127.0.2.1".into(),
                        ports: [("http".to_string(), 8080)].into(),
                        ready: true,
                        ..Default::default()
                    },
                    PEndpoint {
                        cluster: "west".into(),
                        address: "not-an-ip".into(),
                        ..Default::default()
                    },
                ],
                policy_json: r#"{"panicThreshold": 300}"#.into(),
                cluster_vips: vec![ClusterVip {
                    cluster: "west".into(),
                    vip: "10.96.0.12".into(),
                    ports: vec![ServicePort {
                        name: "http".into(),
                        port: 9080,
                        protocol: Protocol::Http as i32,
                        listener_port: 20002,
                    }],
                }],
                ..Default::default()
            }],
            peers: vec![Peer {
                cluster: "west".into(),
                address: "127.0.0.1:15008".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn builds_listeners_targets_and_peers() {
        let c = RoutingTable::build("east", Arc::new(snapshot()));
        let svc = &c.services["reviews.default.global"];
        assert_eq!(svc.endpoints.len(), 2, "the bad address is skipped");
        assert!(
            svc.policy_error.is_some(),
            "an invalid policy falls back to defaults"
        );
        assert_eq!(c.listeners[&20001].port.port, 9080);
        let local: SocketAddr = "127.0.1.1:8080".parse().unwrap();
        let remote: SocketAddr = "127.0.2.1:8080".parse().unwrap();
        assert!(c.authorizes("reviews.default.global", 9080, local));
        assert!(!c.authorizes("reviews.default.global", 9080, remote));
        assert!(!c.authorizes("reviews.default.global", 9081, local));
        assert!(!c.authorizes("other.default.global", 9080, local));
        assert_eq!(
            c.peers["west"].identity.to_string(),
            "spiffe://meridian.test/cluster/west/gateway"
        );
    }

    #[test]
    fn a_pinned_vip_is_a_service_of_that_clusters_endpoints() {
        let c = RoutingTable::build("east", Arc::new(snapshot()));
        let pinned = &c.services["west.reviews.default.global"];
        assert_eq!(pinned.pinned.as_deref(), Some("west"));
        assert_eq!(pinned.global_hostname, "reviews.default.global");
        assert!(pinned.endpoints.iter().all(|e| e.cluster == "west"));
        assert_eq!(pinned.endpoints.len(), 1);
        let l = &c.listeners[&20002];
        assert_eq!(l.hostname, "west.reviews.default.global");
        assert_eq!((l.port.port, l.port.listener_port), (9080, 20002));
        assert_eq!(c.listeners[&20001].hostname, "reviews.default.global");
        // The tunnel still authorizes by the global service.
        let west = RoutingTable::build("west", Arc::new(snapshot()));
        let target: SocketAddr = "127.0.2.1:8080".parse().unwrap();
        assert!(west.authorizes("reviews.default.global", 9080, target));
        assert!(!west.authorizes("west.reviews.default.global", 9080, target));
    }
    /// Issue 11 §5: a local endpoint that is not ready is no tunnel target.
    #[test]
    fn a_not_ready_local_endpoint_is_no_tunnel_target() {
        let mut snap = snapshot();
        let eps = &mut snap.services[0].endpoints;
        eps[0].ready = false;
        let c = RoutingTable::build("east", Arc::new(snap));
        let local: SocketAddr = "127.0.1.1:8080".parse().unwrap();
        assert!(!c.authorizes("reviews.default.global", 9080, local));
        assert_eq!(
            c.services["reviews.default.global"].endpoints.len(),
            2,
            "still listed"
        );
    }

    #[test]
    fn an_endpoint_change_rebuilds_only_its_service() {
        let mut snap = snapshot();
        let mut other = snap.services[0].clone();
        other.hostname = "ratings.default.global".into();
        other.cluster_vips.clear();
        for p in &mut other.ports {
            p.listener_port = 20003;
        }
        snap.services.push(other);
        let before = RoutingTable::build("east", Arc::new(snap.clone()));
        let mut next = before.resources.clone();
        snap.services[0].endpoints[1].ready = false;
        next.set_service(&snap.services[0]);
        let (after, changes) = before.apply(next);
        assert!(!changes.header);
        assert_eq!(
            changes.services,
            ["reviews.default.global", "west.reviews.default.global"]
                .map(str::to_owned)
                .into()
        );
        assert!(Arc::ptr_eq(
            &before.services["ratings.default.global"],
            &after.services["ratings.default.global"]
        ));
        assert!(!after.services["reviews.default.global"].endpoints[1].ready);
        assert_eq!(
            after.canonical_dump(),
            RoutingTable::build("east", Arc::new(snap)).canonical_dump()
        );
    }

    /// One random change to a snapshot.
    #[derive(Debug, Clone)]
    enum Edit {
        Flip {
            service: usize,
            endpoint: usize,
        },
        AddEndpoint {
            service: usize,
            west: bool,
            host: u8,
        },
        RemoveService {
            service: usize,
        },
        AddService {
            n: u8,
            listener: u32,
        },
        ListenerPort {
            service: usize,
            listener: u32,
        },
        PinnedVip {
            service: usize,
            on: bool,
            listener: u32,
        },
        Policy {
            service: usize,
            valid: bool,
        },
        Zone {
            n: u8,
        },
        Peer {
            n: u8,
        },
    }

    fn edit() -> impl Strategy<Value = Edit> {
        // Few listener ports, so that claims collide and the later one must win.
        let listener = 20001..20005u32;
        prop_oneof![
            (0..6usize, 0..8usize).prop_map(|(service, endpoint)| Edit::Flip { service, endpoint }),
            (0..6usize, any::<bool>(), any::<u8>()).prop_map(|(service, west, host)| {
                Edit::AddEndpoint {
                    service,
                    west,
                    host,
                }
            }),
            (0..6usize).prop_map(|service| Edit::RemoveService { service }),
            (any::<u8>(), listener.clone())
                .prop_map(|(n, listener)| Edit::AddService { n, listener }),
            (0..6usize, listener.clone())
                .prop_map(|(service, listener)| Edit::ListenerPort { service, listener }),
            (0..6usize, any::<bool>(), listener).prop_map(|(service, on, listener)| {
                Edit::PinnedVip {
                    service,
                    on,
                    listener,
                }
            }),
            (0..6usize, any::<bool>()).prop_map(|(service, valid)| Edit::Policy { service, valid }),
            any::<u8>().prop_map(|n| Edit::Zone { n }),
            any::<u8>().prop_map(|n| Edit::Peer { n }),
        ]
    }

    fn new_service(host: &str, listener: u32) -> GlobalService {
        GlobalService {
            hostname: host.into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 9080,
                protocol: Protocol::Http as i32,
                listener_port: listener,
            }],
            endpoints: vec![PEndpoint {
                cluster: "east".into(),
                address: "127.0.9.9".into(),
                ports: [("http".to_string(), 8080)].into(),
                ready: true,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn apply_edit(snap: &mut Snapshot, e: &Edit) {
        let n = snap.services.len();
        let pick = |i: usize| i % n.max(1);
        match *e {
            Edit::Flip { service, endpoint } if n > 0 => {
                let eps = &mut snap.services[pick(service)].endpoints;
                if !eps.is_empty() {
                    let m = eps.len();
                    eps[endpoint % m].ready = !eps[endpoint % m].ready;
                }
            }
            Edit::AddEndpoint {
                service,
                west,
                host,
            } if n > 0 => {
                let cluster = if west { "west" } else { "east" };
                let address = format!("127.0.{}.{host}", if west { 2 } else { 1 });
                let eps = &mut snap.services[pick(service)].endpoints;
                if !eps
                    .iter()
                    .any(|x| x.cluster == cluster && x.address == address)
                {
                    eps.push(PEndpoint {
                        cluster: cluster.into(),
                        address,
                        ports: [("http".to_string(), 8080)].into(),
                        ready: true,
                        ..Default::default()
                    });
                    eps.sort_by(|a, b| (&a.cluster, &a.address).cmp(&(&b.cluster, &b.address)));
                }
            }
            Edit::RemoveService { service } if n > 0 => {
                snap.services.remove(pick(service));
            }
            Edit::AddService { n: k, listener } => {
                let host = format!("s{k}.default.global");
                if !snap.services.iter().any(|s| s.hostname == host) {
                    snap.services.push(new_service(&host, listener));
                    snap.services.sort_by(|a, b| a.hostname.cmp(&b.hostname));
                }
            }
            Edit::ListenerPort { service, listener } if n > 0 => {
                for p in &mut snap.services[pick(service)].ports {
                    p.listener_port = listener;
                }
            }
            Edit::PinnedVip {
                service,
                on,
                listener,
            } if n > 0 => {
                let svc = &mut snap.services[pick(service)];
                svc.cluster_vips.clear();
                if on {
                    svc.cluster_vips.push(ClusterVip {
                        cluster: "east".into(),
                        vip: "10.96.0.20".into(),
                        ports: vec![ServicePort {
                            name: "http".into(),
                            port: 9080,
                            protocol: Protocol::Http as i32,
                            listener_port: listener,
                        }],
                    });
                }
            }
            Edit::Policy { service, valid } if n > 0 => {
                snap.services[pick(service)].policy_json = if valid {
                    r#"{"panicThreshold": 30}"#.into()
                } else {
                    r#"{"panicThreshold": 300}"#.into()
                };
            }
            Edit::Zone { n: k } => {
                snap.locality = Some(proto::Locality {
                    region: "r1".into(),
                    zone: format!("z{}", k % 3),
                    subzone: String::new(),
                });
            }
            Edit::Peer { n: k } => {
                snap.peers[0].address = format!("127.0.0.{k}:15008");
                if k % 5 == 0 {
                    snap.peers[0].identity = "not a spiffe id".into();
                } else {
                    snap.peers[0].identity.clear();
                }
            }
            _ => {}
        }
    }

    proptest! {
        /// A routing table fed only deltas, each applied incrementally, ends in exactly the
        /// table a build from the full snapshot gives.
        #[test]
        fn applying_deltas_equals_building_from_the_full_snapshot(
            edits in proptest::collection::vec(edit(), 1..30)
        ) {
            let mut snap = snapshot();
            let mut server = Resources::from_snapshot(&snap);
            let mut table = RoutingTable::from_resources("east", server.clone());
            for e in &edits {
                apply_edit(&mut snap, e);
                snap.version += 1;
                server.update_from_snapshot(&snap);
                // What a subscriber holds after applying the delta the server sends.
                let mut client = table.resources.clone();
                client.apply(&server.delta_since(&table.resources)).expect("delta applies");
                table = table.apply(client).0;
                let full = RoutingTable::build("east", Arc::new(snap.clone()));
                prop_assert_eq!(table.canonical_dump(), full.canonical_dump());
            }
        }
    }

    #[test]
    fn drains_mark_their_clusters_endpoints_but_not_a_pinned_vip() {
        let mut snap = snapshot();
        snap.drains = vec![proto::ClusterDrain {
            cluster: "west".into(),
            permille: 400,
        }];
        let c = RoutingTable::build("east", Arc::new(snap));
        let drains: Vec<(&str, u32)> = c.services["reviews.default.global"]
            .endpoints
            .iter()
            .map(|e| (e.cluster.as_str(), e.drain))
            .collect();
        assert_eq!(drains, [("east", 0), ("west", 400)]);
        let pinned = &c.services["west.reviews.default.global"];
        assert!(pinned.endpoints.iter().all(|e| e.drain == 0));
    }
}
