//! The Multi-Cluster Services DNS names (specification 1.0.0) of the `--clusterset-domain`
//! zone `Z` (default `clusterset.local.`), from the same snapshot as the `.global` names:
//!
//! | Name | Type | Data |
//! |---|---|---|
//! | `Z` | SOA, NS | as every zone |
//! | `dns-version.Z` | TXT | `1.0.0` |
//! | `svc.ns.svc.Z` | A or AAAA | ClusterSetIP: this cluster's VIP; headless: every ready endpoint |
//! | `_port._tcp.svc.ns.svc.Z` | SRV | ClusterSetIP: `0 0 <port> svc.ns.svc.Z.`; headless: one per ready endpoint, to its name below |
//! | `host.cluster.svc.ns.svc.Z` | A or AAAA | headless: a ready endpoint of `cluster` (`host`: its pod's name) |
//! | `<reversed VIP>.in-addr.arpa` / `ip6.arpa` | PTR | `svc.ns.svc.Z.`, each its own one-name zone |
//!
//! A headless service with no ready endpoint has no name (NXDOMAIN). Every exported service
//! has these names, whether exported by a ServiceExport or by Meridian's label. Entries
//! that cannot be served are skipped and reported, as in [`crate::zone`].

use std::collections::BTreeSet;
use std::net::IpAddr;

use hickory_server::proto::rr::rdata::{PTR, SRV, TXT};
use hickory_server::proto::rr::{Name, RData};
use meridian_api::proto::GlobalService;
use meridian_api::resources::content_hash;

use crate::zone::{Skipped, Zone, ZoneSettings, address, label, service_id};

/// The MCS DNS specification version served at `dns-version.<zone>`.
pub const DNS_VERSION: &str = "1.0.0";

/// The clusterset zone `origin` with its apex records and `dns-version`.
pub(crate) fn apex(origin: &Name, settings: &ZoneSettings, serial: u32) -> Zone {
    let mut zone = Zone::new(origin.clone(), settings, serial);
    if let Ok(version) = Name::from_labels(["dns-version"]).and_then(|n| n.append_domain(origin)) {
        zone.add(
            version,
            RData::TXT(TXT::new(vec![DNS_VERSION.to_owned()])),
            settings.ttl,
        );
    }
    zone
}

/// A service's claim on the reverse name of its ClusterSet IP. When several services
/// claim one IP, the first (in snapshot order) gets the PTR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Claim {
    /// `name.namespace` of the claiming service.
    pub(crate) service: String,
    /// Its hostname: the snapshot's (and [`meridian_api::resources::Resources`]'s) order.
    pub(crate) hostname: String,
    /// The ClusterSet IP.
    pub(crate) vip: IpAddr,
    /// What the PTR points to: `svc.ns.svc.<clusterset zone>`.
    pub(crate) target: Name,
}

/// Adds the names of `services`, in order, to the clusterset zone `zone`; returns their
/// ClusterSet IP claims.
pub(crate) fn add_services<'a>(
    services: impl IntoIterator<Item = &'a GlobalService>,
    zone: &mut Zone,
    ttl: u32,
    skipped: &mut Vec<Skipped>,
) -> Vec<Claim> {
    let origin = zone.origin().clone();
    let mut claims = Vec::new();
    for service in services {
        match add_service(zone, service, &origin, ttl) {
            Ok(Some(vip)) => {
                if let Ok(target) = service_name(service, &origin) {
                    claims.push(Claim {
                        service: service_id(service),
                        hostname: service.hostname.clone(),
                        vip,
                        target,
                    });
                }
            }
            Ok(None) => {}
            Err(reason) => skipped.push(Skipped {
                service: service_id(service),
                reason: format!("{origin}: {reason}"),
            }),
        }
    }
    claims
}

/// One reverse zone per claimed ClusterSet IP, for its first claim; every later claim on
/// the same IP is skipped.
pub(crate) fn reverse_zones(
    claims: &[Claim],
    settings: &ZoneSettings,
    skipped: &mut Vec<Skipped>,
) -> Vec<Zone> {
    let mut vips = BTreeSet::new();
    let mut zones = Vec::new();
    for claim in claims {
        if vips.insert(claim.vip) {
            zones.push(reverse_zone(claim.vip, &claim.target, settings));
        } else {
            skipped.push(conflict(claim));
        }
    }
    zones
}

/// Why a claim on an IP another service has claimed first gets no PTR.
pub(crate) fn conflict(claim: &Claim) -> Skipped {
    Skipped {
        service: claim.service.clone(),
        reason: format!("ClusterSet IP {} of another service too: no PTR", claim.vip),
    }
}

/// The one-name zone of `vip`'s reverse name, pointing at `target`.
///
/// Its serial is a hash of the target, not the snapshot version: it changes exactly when
/// the zone does, so a change elsewhere in the mesh does not touch every reverse zone.
pub(crate) fn reverse_zone(vip: IpAddr, target: &Name, settings: &ZoneSettings) -> Zone {
    let serial = content_hash(target.to_ascii().as_bytes()) as u32;
    let mut zone = Zone::new(Name::from(vip), settings, serial);
    zone.add(
        Name::from(vip),
        RData::PTR(PTR(target.clone())),
        settings.ttl,
    );
    zone
}

/// `svc.ns.svc.<origin>`.
fn service_name(service: &GlobalService, origin: &Name) -> Result<Name, String> {
    let name = label(&service.name)?;
    let namespace = label(&service.namespace)?;
    Name::from_labels([name.as_str(), namespace.as_str(), "svc"])
        .and_then(|n| n.append_domain(origin))
        .map_err(|e| format!("service name: {e}"))
}

/// `_port._tcp.<owner>` for each named port.
fn srv_owners(service: &GlobalService, owner: &Name) -> Vec<(Name, u16)> {
    service
        .ports
        .iter()
        .filter(|p| !p.name.is_empty())
        .filter_map(|p| {
            let port_name = label(&p.name).ok().filter(|l| l.len() < 63)?;
            let number = u16::try_from(p.port).ok().filter(|n| *n != 0)?;
            let name = owner
                .prepend_label("_tcp")
                .and_then(|n| n.prepend_label(format!("_{port_name}").as_str()))
                .ok()?;
            Some((name, number))
        })
        .collect()
}

/// Adds one service's names; returns its ClusterSet IP (for a PTR) when it has one.
fn add_service(
    zone: &mut Zone,
    service: &GlobalService,
    origin: &Name,
    ttl: u32,
) -> Result<Option<IpAddr>, String> {
    let owner = service_name(service, origin)?;
    if !service.headless {
        let Ok(vip) = service.vip.parse::<IpAddr>() else {
            return Ok(None); // not allocated yet (or reported by the `.global` zone)
        };
        zone.add(owner.clone(), address(vip), ttl);
        for (srv, port) in srv_owners(service, &owner) {
            zone.add(srv, RData::SRV(SRV::new(0, 0, port, owner.clone())), ttl);
        }
        return Ok(Some(vip));
    }
    // Headless: the ready endpoints themselves (deduplicated: an address in two slices).
    // The service's address and SRV sets hold one record per endpoint: they are collected
    // and added whole ([`Zone::add_all`]), as adding records one by one costs O(n²).
    // One SRV set per owner name, its ports in order (two ports may share a name).
    let mut srv: Vec<(Name, Vec<u16>)> = Vec::new();
    for (name, port) in srv_owners(service, &owner) {
        match srv.iter_mut().find(|(n, _)| *n == name) {
            Some((_, ports)) => ports.push(port),
            None => srv.push((name, vec![port])),
        }
    }
    let mut addresses = Vec::new();
    let mut targets: Vec<Vec<RData>> = srv.iter().map(|_| Vec::new()).collect();
    let mut seen = BTreeSet::new();
    for e in service.endpoints.iter().filter(|e| e.ready) {
        let Ok(ip) = e.address.parse::<IpAddr>() else {
            continue;
        };
        if !seen.insert((e.cluster.clone(), ip)) {
            continue;
        }
        addresses.push(address(ip));
        let (Ok(host), Ok(cluster)) = (label(&e.pod), label(&e.cluster)) else {
            continue; // no pod name: the address is in the service's set only
        };
        let Ok(host_name) = owner
            .prepend_label(cluster.as_str())
            .and_then(|n| n.prepend_label(host.as_str()))
        else {
            continue;
        };
        zone.add(host_name.clone(), address(ip), ttl);
        for ((_, ports), records) in srv.iter().zip(&mut targets) {
            for port in ports {
                records.push(RData::SRV(SRV::new(0, 0, *port, host_name.clone())));
            }
        }
    }
    zone.add_all(&owner, addresses, ttl);
    for ((name, _), records) in srv.into_iter().zip(targets) {
        zone.add_all(&name, records, ttl);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_server::proto::rr::RecordType;
    use meridian_api::proto::{Endpoint, ServicePort, Snapshot};

    use super::*;
    use crate::zone::Zones;

    fn name(s: &str) -> Name {
        Name::from_str(s).expect("a name")
    }

    fn settings() -> ZoneSettings {
        ZoneSettings {
            origins: vec![name("global.")],
            ttl: 5,
            nameserver: name("meridian-dns.meridian-system.svc.cluster.local."),
            clusterset: Some(name("clusterset.local.")),
        }
    }

    fn service(name: &str, vip: &str, headless: bool, endpoints: Vec<Endpoint>) -> GlobalService {
        GlobalService {
            name: name.into(),
            namespace: "demo".into(),
            hostname: format!("{name}.demo.global"),
            vip: vip.into(),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 80,
                ..ServicePort::default()
            }],
            endpoints,
            headless,
            ..GlobalService::default()
        }
    }

    fn endpoint(cluster: &str, pod: &str, address: &str, ready: bool) -> Endpoint {
        Endpoint {
            cluster: cluster.into(),
            pod: pod.into(),
            address: address.into(),
            ready,
            ..Endpoint::default()
        }
    }

    fn data(zones: &Zones, zone: &str, owner: &str, t: RecordType) -> Vec<String> {
        let Some(z) = zones.zone(&name(zone)) else {
            return Vec::new();
        };
        let mut v: Vec<String> = z
            .get(&name(owner), t)
            .map(|rs| {
                rs.records_without_rrsigs()
                    .map(|r| r.data.to_string())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn snapshot(services: Vec<GlobalService>) -> Snapshot {
        Snapshot {
            version: 7,
            services,
            ..Snapshot::default()
        }
    }

    #[test]
    fn clusterset_ip_service_a_srv_ptr_and_version() {
        let zones = Zones::build(
            &snapshot(vec![
                service("hello", "10.96.0.10", false, Vec::new()),
                service("six", "fd00::10", false, Vec::new()),
            ]),
            &settings(),
        );
        let z = "clusterset.local.";
        assert_eq!(
            data(&zones, z, "hello.demo.svc.clusterset.local.", RecordType::A),
            ["10.96.0.10"]
        );
        assert_eq!(
            data(
                &zones,
                z,
                "six.demo.svc.clusterset.local.",
                RecordType::AAAA
            ),
            ["fd00::10"]
        );
        assert!(data(&zones, z, "six.demo.svc.clusterset.local.", RecordType::A).is_empty());
        assert_eq!(
            data(
                &zones,
                z,
                "_http._tcp.hello.demo.svc.clusterset.local.",
                RecordType::SRV
            ),
            ["0 0 80 hello.demo.svc.clusterset.local."]
        );
        assert_eq!(
            data(&zones, z, "dns-version.clusterset.local.", RecordType::TXT),
            ["1.0.0"]
        );
        assert_eq!(
            data(
                &zones,
                "10.0.96.10.in-addr.arpa.",
                "10.0.96.10.in-addr.arpa.",
                RecordType::PTR
            ),
            ["hello.demo.svc.clusterset.local."]
        );
        // The `.global` names are untouched.
        assert_eq!(
            data(&zones, "global.", "hello.demo.global.", RecordType::A),
            ["10.96.0.10"]
        );
    }

    #[test]
    fn headless_service_answers_its_ready_endpoints_and_their_host_names() {
        let zones = Zones::build(
            &snapshot(vec![service(
                "db",
                "10.96.0.20",
                true,
                vec![
                    endpoint("east", "db-0", "10.1.0.1", true),
                    endpoint("west", "db-0", "10.2.0.1", true),
                    endpoint("west", "db-1", "10.2.0.2", false),
                ],
            )]),
            &settings(),
        );
        let z = "clusterset.local.";
        assert_eq!(
            data(&zones, z, "db.demo.svc.clusterset.local.", RecordType::A),
            ["10.1.0.1", "10.2.0.1"],
            "one A per ready endpoint, never the VIP"
        );
        assert_eq!(
            data(
                &zones,
                z,
                "db-0.west.db.demo.svc.clusterset.local.",
                RecordType::A
            ),
            ["10.2.0.1"]
        );
        assert!(
            data(
                &zones,
                z,
                "db-1.west.db.demo.svc.clusterset.local.",
                RecordType::A
            )
            .is_empty()
        );
        assert_eq!(
            data(
                &zones,
                z,
                "_http._tcp.db.demo.svc.clusterset.local.",
                RecordType::SRV
            ),
            [
                "0 0 80 db-0.east.db.demo.svc.clusterset.local.",
                "0 0 80 db-0.west.db.demo.svc.clusterset.local."
            ]
        );
        assert!(
            zones.zone(&name("20.0.96.10.in-addr.arpa.")).is_none(),
            "no PTR for a headless service"
        );
    }

    #[test]
    fn headless_srv_records_come_per_endpoint_then_per_port() {
        let mut db = service(
            "db",
            "10.96.0.20",
            true,
            vec![
                endpoint("east", "db-0", "10.1.0.1", true),
                endpoint("east", "db-1", "10.1.0.2", true),
                endpoint("east", "db-2", "10.1.0.1", true),
            ],
        );
        // Two ports named alike share one SRV set.
        db.ports.push(ServicePort {
            name: "http".into(),
            port: 81,
            ..ServicePort::default()
        });
        let zones = Zones::build(&snapshot(vec![db]), &settings());
        let zone = zones.zone(&name("clusterset.local.")).expect("zone");
        let srv: Vec<String> = zone
            .get(
                &name("_http._tcp.db.demo.svc.clusterset.local."),
                RecordType::SRV,
            )
            .map(|set| {
                set.records_without_rrsigs()
                    .map(|r| r.data.to_string())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            srv,
            [
                "0 0 80 db-0.east.db.demo.svc.clusterset.local.",
                "0 0 81 db-0.east.db.demo.svc.clusterset.local.",
                "0 0 80 db-1.east.db.demo.svc.clusterset.local.",
                "0 0 81 db-1.east.db.demo.svc.clusterset.local.",
            ],
            "the order of adding them one by one; the repeated address is one endpoint"
        );
        let a = data(
            &zones,
            "clusterset.local.",
            "db.demo.svc.clusterset.local.",
            RecordType::A,
        );
        assert_eq!(a, ["10.1.0.1", "10.1.0.2"]);
    }

    #[test]
    fn headless_service_without_ready_endpoints_has_no_name() {
        let zones = Zones::build(
            &snapshot(vec![service(
                "db",
                "10.96.0.20",
                true,
                vec![endpoint("east", "db-0", "10.1.0.1", false)],
            )]),
            &settings(),
        );
        let z = zones.zone(&name("clusterset.local.")).expect("zone");
        for t in [RecordType::A, RecordType::AAAA, RecordType::SRV] {
            assert!(z.get(&name("db.demo.svc.clusterset.local."), t).is_none());
        }
        // Nothing below it either, so the name does not exist (NXDOMAIN, not NODATA).
        assert_eq!(z.record_count(), 3, "SOA, NS and dns-version only");
    }

    #[test]
    fn no_clusterset_domain_no_mcs_names() {
        let mut s = settings();
        s.clusterset = None;
        let zones = Zones::build(
            &snapshot(vec![service("hello", "10.96.0.10", false, Vec::new())]),
            &s,
        );
        assert_eq!(zones.zones().len(), 1);
    }
}
