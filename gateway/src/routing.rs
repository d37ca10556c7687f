//! The gateway's routing table: what the current snapshot says, in the shapes the data plane
//! needs (services with parsed policies and endpoints, listeners, peers, and the local
//! targets the tunnel may reach). Immutable; a new snapshot builds a new routing table.
//!
//! A VIP pinned to one cluster (`<cluster>.<svc>.<ns>.global`, the snapshot's
//! `cluster_vips`) becomes a service of its own here: the global service's policy and ports
//! (with the pinned listener ports) over only that cluster's endpoints. Routing, the
//! locality engine and outlier detection then treat it like any service, so its failover
//! stays among that cluster's localities; through the tunnel it still names the global
//! service, which is what the owning gateway authorizes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use meridian_api::policy::OutlierSettings;
use meridian_api::proto::{self, Protocol, Snapshot};
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
    /// `hostname` as a metric label.
    pub label: Label,
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

/// Everything derived from one snapshot.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    /// The snapshot in use.
    pub snapshot: Arc<Snapshot>,
    /// This gateway's cluster.
    pub cluster: String,
    /// The caller for locality decisions: this gateway's own locality.
    pub caller: Caller,
    /// Services by hostname.
    pub services: BTreeMap<String, Arc<Service>>,
    /// Outbound listeners by listener port.
    pub listeners: BTreeMap<u16, ListenerSpec>,
    /// Peer gateways by cluster.
    pub peers: BTreeMap<String, PeerGateway>,
    /// (hostname, service port, target) the tunnel may connect to: ready local endpoints
    /// only.
    local_targets: HashSet<(String, u32, SocketAddr)>,
}

impl RoutingTable {
    /// Builds the routing table of `snapshot` for the gateway of `cluster`. Malformed parts (a
    /// bad address, policy or peer identity) are skipped with a warning; the rest is used.
    pub fn build(cluster: &str, snapshot: Arc<Snapshot>) -> Self {
        let caller = Caller::at(
            snapshot
                .locality
                .as_ref()
                .map(Locality::from)
                .unwrap_or_default(),
        );
        let mut services = BTreeMap::new();
        let mut listeners = BTreeMap::new();
        let mut local_targets = HashSet::new();
        let drains: HashMap<&str, u32> = snapshot
            .drains
            .iter()
            .map(|d| (d.cluster.as_str(), d.permille))
            .collect();
        let all = snapshot.services.iter().flat_map(|s| {
            let global = service(s, &drains);
            let pinned: Vec<Service> = s
                .cluster_vips
                .iter()
                .map(|cv| pinned_service(&global, cv))
                .collect();
            std::iter::once(global).chain(pinned)
        });
        for svc in all {
            for p in &svc.ports {
                if p.listener_port == 0 || p.listener_port > u32::from(u16::MAX) {
                    continue;
                }
                let spec = ListenerSpec {
                    hostname: svc.hostname.clone(),
                    port: p.clone(),
                };
                if let Some(prev) = listeners.insert(p.listener_port as u16, spec) {
                    warn!(
                        listener_port = p.listener_port,
                        first = %prev.hostname,
                        second = %svc.hostname,
                        "two service ports share a listener port; the later one wins"
                    );
                }
                // Not-ready endpoints are never tunnel targets, not even in panic: a peer
                // reaches only what Kubernetes would route to.
                for ep in svc
                    .endpoints
                    .iter()
                    .filter(|e| e.cluster == cluster && e.ready)
                {
                    local_targets.insert((svc.global_hostname.clone(), p.port, ep.target(p)));
                }
            }
            services.insert(svc.hostname.clone(), Arc::new(svc));
        }
        let mut peers = BTreeMap::new();
        for p in &snapshot.peers {
            if p.cluster == cluster {
                continue;
            }
            let identity = if p.identity.is_empty() {
                Identity::gateway(&snapshot.trust_domain, &p.cluster)
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
        Self {
            snapshot,
            cluster: cluster.to_owned(),
            caller,
            services,
            listeners,
            peers,
            local_targets,
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
        // A pinned VIP names its cluster explicitly: a drain does not apply to it (it would
        // only turn its requests into failures).
        endpoints: global
            .endpoints
            .iter()
            .filter(|e| e.cluster == cv.cluster)
            .map(|e| Endpoint {
                drain: 0,
                ..e.clone()
            })
            .collect(),
    }
}

fn service(s: &proto::GlobalService, drains: &HashMap<&str, u32>) -> Service {
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
        label: Label::from(s.hostname.as_str()),
        global_hostname: s.hostname.clone(),
        pinned: None,
        policy,
        policy_error,
        outlier,
        ports,
        endpoints,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_api::proto::{
        ClusterVip, Endpoint as PEndpoint, GlobalService, Peer, ServicePort,
    };

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
}
