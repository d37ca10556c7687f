//! Building the versioned `Snapshot` this cluster's gateway and DNS server receive.
//!
//! A snapshot is a pure function of the catalog, the VIP allocation, the accepted policies
//! and the peers, with everything sorted. Its version is a 64-bit FNV-1a hash of its
//! canonical encoding (maps walked in key order, since prost's maps have no stable order),
//! so the same inputs give the same version across restarts and a version changes only when
//! the content does.

use std::collections::BTreeMap;

use meridian_api::Locality;
use meridian_api::TrafficPolicy;
use meridian_api::proto;
use prost::Message;

use crate::catalog::{Catalog, EndpointEntry, GlobalServiceEntry, ServiceKey};

/// A member's east-west gateway as the snapshot lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerInfo {
    /// Member cluster name.
    pub cluster: String,
    /// `host:port` of its tunnel listener.
    pub address: String,
    /// Locality of the gateway, when known.
    pub locality: Locality,
}

/// This cluster's VIP and listener ports for one global service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// ClusterIP of the managed Service (empty until the API server assigned it).
    pub vip: String,
    /// Gateway listener port per service port name.
    pub listeners: BTreeMap<String, u32>,
    /// The VIPs pinned to one exporting cluster each, by cluster (their own `pinned` is
    /// empty).
    pub pinned: BTreeMap<String, VipInfo>,
}

/// Everything a snapshot is built from.
#[derive(Debug, Clone, Default)]
pub struct SnapshotInput<'a> {
    /// This cluster's name.
    pub cluster: &'a str,
    /// Default caller locality in this cluster.
    pub locality: Locality,
    /// SPIFFE trust domain.
    pub trust_domain: &'a str,
    /// DNS zone of global hostnames (`global`).
    pub zone: &'a str,
    /// The catalog.
    pub catalog: Option<&'a Catalog>,
    /// VIPs and listener ports per service.
    pub vips: Option<&'a BTreeMap<ServiceKey, VipInfo>>,
    /// Accepted policies per service.
    pub policies: Option<&'a BTreeMap<ServiceKey, TrafficPolicy>>,
    /// Gateways of the other members.
    pub peers: Vec<PeerInfo>,
    /// The MCS view: which services resolve as headless under `clusterset.local`.
    pub mcs: Option<&'a crate::mcs::McsView>,
    /// Drain progress in permille per drained cluster, as it applies to this cluster's
    /// callers.
    pub drains: BTreeMap<String, u32>,
}

/// The SPIFFE identity of a cluster's gateway.
pub(crate) fn gateway_identity(trust_domain: &str, cluster: &str) -> String {
    format!("spiffe://{trust_domain}/cluster/{cluster}/gateway")
}

/// Builds the snapshot and stamps its content version.
pub fn build(input: &SnapshotInput<'_>) -> proto::Snapshot {
    let empty_vips = BTreeMap::new();
    let empty_policies = BTreeMap::new();
    let vips = input.vips.unwrap_or(&empty_vips);
    let policies = input.policies.unwrap_or(&empty_policies);
    let services = input
        .catalog
        .map(|c| c.services.values().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|svc| {
            let headless = input
                .mcs
                .and_then(|m| m.imports.get(&svc.key))
                .is_some_and(|i| i.type_ == crate::mcs::types::ImportType::Headless);
            let policy = policies.get(&svc.key);
            global_service(svc, vips.get(&svc.key), policy, input.zone, headless)
        })
        .collect();
    let mut snap = proto::Snapshot {
        version: 0,
        cluster: input.cluster.to_owned(),
        locality: Some((&input.locality).into()),
        trust_domain: input.trust_domain.to_owned(),
        services,
        peers: peers(input),
        drains: drains(input),
    };
    snap.version = content_version(&snap);
    snap
}

/// The snapshot's header resource: cluster, locality, trust domain and the other
/// members' gateways.
pub fn header(input: &SnapshotInput<'_>) -> proto::SnapshotHeader {
    proto::SnapshotHeader {
        cluster: input.cluster.to_owned(),
        locality: Some((&input.locality).into()),
        trust_domain: input.trust_domain.to_owned(),
        peers: peers(input),
        drains: drains(input),
    }
}

/// The drains in force for this cluster's callers, sorted by cluster.
fn drains(input: &SnapshotInput<'_>) -> Vec<proto::ClusterDrain> {
    input
        .drains
        .iter()
        .map(|(cluster, permille)| proto::ClusterDrain {
            cluster: cluster.clone(),
            permille: *permille,
        })
        .collect()
}

/// One global service with its VIPs, ports, endpoints and policy, as the snapshot (and
/// its `service/<hostname>` and `endpoints/…` resources) carry it.
pub fn global_service(
    svc: &GlobalServiceEntry,
    vip: Option<&VipInfo>,
    policy: Option<&TrafficPolicy>,
    zone: &str,
    headless: bool,
) -> proto::GlobalService {
    proto::GlobalService {
        name: svc.key.name.clone(),
        namespace: svc.key.namespace.clone(),
        hostname: svc.key.hostname(zone),
        vip: vip.map(|v| v.vip.clone()).unwrap_or_default(),
        // Sorted by cluster (a BTreeMap); only clusters exporting the service.
        cluster_vips: vip
            .map(|v| &v.pinned)
            .into_iter()
            .flatten()
            .filter(|(c, _)| svc.clusters.contains(*c))
            .map(|(c, p)| proto::ClusterVip {
                cluster: c.clone(),
                vip: p.vip.clone(),
                ports: service_ports(svc, Some(p)),
            })
            .collect(),
        ports: service_ports(svc, vip),
        endpoints: svc.endpoints.iter().map(endpoint).collect(),
        policy_json: policy
            .map(|p| serde_json::to_string(p).expect("a policy always serializes"))
            .unwrap_or_default(),
        clusters: svc.clusters.iter().cloned().collect(),
        headless,
    }
}

/// The ports of a service with the listener port each has on `vip` (0: none).
fn service_ports(svc: &GlobalServiceEntry, vip: Option<&VipInfo>) -> Vec<proto::ServicePort> {
    svc.ports
        .iter()
        .map(|p| proto::ServicePort {
            name: p.name.clone(),
            port: p.port,
            protocol: p.protocol as i32,
            listener_port: vip
                .and_then(|v| v.listeners.get(&p.name).copied())
                .unwrap_or(0),
        })
        .collect()
}

fn endpoint(e: &EndpointEntry) -> proto::Endpoint {
    proto::Endpoint {
        cluster: e.cluster.clone(),
        address: e.address.clone(),
        ports: e.ports.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        locality: Some((&e.locality).into()),
        labels: e
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ready: e.ready,
        stale: e.stale,
        pod: e.pod.clone(),
    }
}

/// The other members' gateways, one per cluster, sorted.
fn peers(input: &SnapshotInput<'_>) -> Vec<proto::Peer> {
    let mut peers = input.peers.clone();
    peers.sort();
    peers.dedup_by(|a, b| a.cluster == b.cluster);
    peers
        .into_iter()
        .map(|p| proto::Peer {
            identity: gateway_identity(input.trust_domain, &p.cluster),
            cluster: p.cluster,
            address: p.address,
            locality: Some((&p.locality).into()),
        })
        .collect()
}

/// FNV-1a, 64 bit: tiny, stable across Rust versions and platforms (unlike std's hasher).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    /// Length-prefixed, so adjacent fields cannot run into each other.
    fn field(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }
}

/// The content version of a snapshot: a hash of its canonical encoding, ignoring `version`.
/// Never 0, so 0 can mean "no snapshot yet".
pub(crate) fn content_version(snap: &proto::Snapshot) -> u64 {
    let mut h = Fnv::new();
    let mut head = snap.clone();
    head.version = 0;
    head.services.clear();
    h.field(&head.encode_to_vec());
    for svc in &snap.services {
        let mut s = svc.clone();
        s.endpoints.clear();
        h.field(&s.encode_to_vec());
        for e in &svc.endpoints {
            let mut bare = e.clone();
            bare.ports.clear();
            bare.labels.clear();
            h.field(&bare.encode_to_vec());
            let ports: BTreeMap<_, _> = e.ports.iter().collect();
            h.field(&(ports.len() as u64).to_le_bytes());
            for (k, v) in ports {
                h.field(k.as_bytes());
                h.field(&v.to_le_bytes());
            }
            let labels: BTreeMap<_, _> = e.labels.iter().collect();
            h.field(&(labels.len() as u64).to_le_bytes());
            for (k, v) in labels {
                h.field(k.as_bytes());
                h.field(v.as_bytes());
            }
        }
    }
    h.0.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::MemberInput;
    use crate::fixtures::*;

    fn catalog(ready: bool) -> Catalog {
        let a = MemberInput::test("a")
            .with_node("n1", "eu", "eu-1", "")
            .with_service(service("demo", "echo", &[("http", 80, None)], true))
            .with_slice(slice(
                "demo",
                "echo",
                &[("http", 8080)],
                &[
                    ("10.0.0.1", ready, "n1", "p1"),
                    ("10.0.0.2", true, "n1", "p2"),
                ],
            ))
            .with_pod(
                "demo",
                "p1",
                &[("version", "v1"), ("app", "echo"), ("tier", "x")],
            );
        Catalog::build(&[a])
    }

    fn snap(cat: &Catalog) -> proto::Snapshot {
        let key = ServiceKey::new("demo", "echo");
        let vips = BTreeMap::from([(
            key.clone(),
            VipInfo {
                vip: "10.96.0.10".into(),
                listeners: BTreeMap::from([("http".to_owned(), 15001)]),
                pinned: BTreeMap::from([
                    (
                        "a".to_owned(),
                        VipInfo {
                            vip: "10.96.0.11".into(),
                            listeners: BTreeMap::from([("http".to_owned(), 15002)]),
                            ..VipInfo::default()
                        },
                    ),
                    (
                        "gone".to_owned(),
                        VipInfo {
                            vip: "10.96.0.12".into(),
                            listeners: BTreeMap::from([("http".to_owned(), 15003)]),
                            ..VipInfo::default()
                        },
                    ),
                ]),
            },
        )]);
        let policies = BTreeMap::from([(key, TrafficPolicy::default())]);
        build(&SnapshotInput {
            cluster: "a",
            locality: Locality::new("eu", "eu-1", ""),
            trust_domain: "meridian.local",
            zone: "global",
            catalog: Some(cat),
            vips: Some(&vips),
            policies: Some(&policies),
            mcs: None,
            peers: vec![
                PeerInfo {
                    cluster: "c".into(),
                    address: "127.0.0.3:15443".into(),
                    locality: Locality::default(),
                },
                PeerInfo {
                    cluster: "b".into(),
                    address: "127.0.0.2:15443".into(),
                    locality: Locality::default(),
                },
            ],
            drains: BTreeMap::from([("c".to_owned(), 400), ("b".to_owned(), 1000)]),
        })
    }

    #[test]
    fn same_inputs_same_version() {
        let s1 = snap(&catalog(true));
        // Rebuilt from scratch: maps get fresh hash states, the version must not move.
        let s2 = snap(&catalog(true));
        assert_eq!(s1.version, s2.version);
        assert_eq!(s1, s2);
        assert_ne!(s1.version, 0);
        let s3 = snap(&catalog(false));
        assert_ne!(s1.version, s3.version, "readiness is content");
        let mut s4 = s1.clone();
        s4.drains[1].permille = 500;
        assert_ne!(
            content_version(&s4),
            s1.version,
            "each ramp step is a new version"
        );
    }

    #[test]
    fn contents() {
        let s = snap(&catalog(true));
        assert_eq!(
            s.peers
                .iter()
                .map(|p| p.cluster.as_str())
                .collect::<Vec<_>>(),
            ["b", "c"]
        );
        assert_eq!(
            s.peers[0].identity,
            "spiffe://meridian.local/cluster/b/gateway"
        );
        let drains: Vec<(&str, u32)> = s
            .drains
            .iter()
            .map(|d| (d.cluster.as_str(), d.permille))
            .collect();
        assert_eq!(drains, [("b", 1000), ("c", 400)], "sorted by cluster");
        let svc = &s.services[0];
        assert_eq!(svc.hostname, "echo.demo.global");
        assert_eq!(svc.vip, "10.96.0.10");
        assert_eq!(svc.ports[0].listener_port, 15001);
        assert_eq!(svc.ports[0].protocol, proto::Protocol::Http as i32);
        assert_eq!(svc.policy_json, "{}");
        assert_eq!(svc.endpoints[0].labels.len(), 3);
        assert_eq!(svc.clusters, ["a"]);
        // Pinned VIPs: one per exporting cluster, with their own listener ports.
        assert_eq!(
            svc.cluster_vips.len(),
            1,
            "no pin to a cluster not exporting"
        );
        let pin = &svc.cluster_vips[0];
        assert_eq!(
            (pin.cluster.as_str(), pin.vip.as_str()),
            ("a", "10.96.0.11")
        );
        assert_eq!(pin.ports[0].listener_port, 15002);
        assert_eq!(pin.ports[0].port, 80);
        assert_eq!(pin.ports[0].protocol, proto::Protocol::Http as i32);
    }
}
