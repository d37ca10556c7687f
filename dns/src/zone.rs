//! Builds the records of the served zones from a snapshot.
//!
//! For every configured zone `Z` and every global service `svc` in namespace `ns`:
//!
//! | Name | Type | Data |
//! |---|---|---|
//! | `Z` | SOA, NS | the `--nameserver`, serial = snapshot version (low 32 bits) |
//! | `svc.ns.Z` | A or AAAA | this cluster's VIP of the service |
//! | `_port._tcp.svc.ns.Z` | SRV | `0 0 <service port> svc.ns.Z.` for each named port |
//! | `cluster.svc.ns.Z` | A or AAAA | the VIP pinned to that cluster's endpoints |
//!
//! Entries that cannot be served (a name that is not a DNS label, an unparsable VIP, a
//! duplicate service) are skipped and reported, without disturbing the rest of the zone.
//! The result is plain data; [`Zones::into_catalog`] turns it into the hickory
//! [`Catalog`] the server answers from, with the index of names that answers the
//! ordinary queries ([`ServedZones`]).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use meridian_api::proto::{GlobalService, Snapshot};

use crate::authority::ServedZones;
use crate::names::NameIndex;

/// SOA timers. Nothing transfers these zones (AXFR is refused), so they only need to be sane.
const SOA_REFRESH: i32 = 60;
const SOA_RETRY: i32 = 30;
const SOA_EXPIRE: i32 = 3600;

/// What every zone has in common: its origins, TTL and name server.
#[derive(Clone, Debug)]
pub struct ZoneSettings {
    /// Absolute, lower-cased zone names, e.g. `global.`.
    pub origins: Vec<Name>,
    /// TTL of every record, and the SOA minimum (negative-caching TTL).
    pub ttl: u32,
    /// Target of the apex NS record and SOA MNAME.
    pub nameserver: Name,
    /// The Multi-Cluster Services zone (`clusterset.local.`), served with its reverse
    /// (PTR) names by [`crate::clusterset`]; `None` serves no MCS names.
    pub clusterset: Option<Name>,
}

/// A snapshot entry that was left out of the zones, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// `name.namespace` of the service the entry belongs to.
    pub service: String,
    /// What was wrong with it.
    pub reason: String,
}

/// The records of one zone.
#[derive(Clone, Debug)]
pub struct Zone {
    origin: Name,
    records: BTreeMap<RrKey, RecordSet>,
}

impl Zone {
    pub(crate) fn new(origin: Name, settings: &ZoneSettings, serial: u32) -> Self {
        let mut zone = Self {
            records: BTreeMap::new(),
            origin: origin.clone(),
        };
        zone.add(origin.clone(), soa(&origin, settings, serial), settings.ttl);
        zone.add(
            origin,
            RData::NS(NS(settings.nameserver.clone())),
            settings.ttl,
        );
        zone
    }

    /// A zone without even its apex records: what one group of services adds to it.
    pub(crate) fn empty(origin: Name) -> Self {
        Self {
            origin,
            records: BTreeMap::new(),
        }
    }

    pub(crate) fn add(&mut self, name: Name, rdata: RData, ttl: u32) {
        let record_type = rdata.record_type();
        self.records
            .entry(RrKey::new(LowerName::new(&name), record_type))
            .or_insert_with(|| RecordSet::with_ttl(name, record_type, ttl))
            .add_rdata(rdata);
    }

    /// Adds `rdatas` at `name`, as many [`add`](Self::add)s in that order would, in
    /// O(n) rather than O(n²): `RecordSet::insert` scans the set for an equal record on
    /// every insert, which for a headless service's one-record-per-endpoint sets dominated
    /// both a full build and the rebuild of that service.
    pub(crate) fn add_all(&mut self, name: &Name, rdatas: Vec<RData>, ttl: u32) {
        let mut by_type: BTreeMap<RecordType, Vec<RData>> = BTreeMap::new();
        for rdata in rdatas {
            by_type.entry(rdata.record_type()).or_default().push(rdata);
        }
        for (record_type, rdatas) in by_type {
            let key = RrKey::new(LowerName::new(name), record_type);
            match self.records.entry(key) {
                Entry::Vacant(vacant) => {
                    // Equal records are dropped by `insert`, keeping the first: so here.
                    let mut seen = HashSet::new();
                    let records = rdatas
                        .into_iter()
                        .filter(|rdata| seen.insert(rdata.clone()))
                        .map(|rdata| Record::from_rdata(name.clone(), ttl, rdata))
                        .collect();
                    let mut set = RecordSet::with_ttl(name.clone(), record_type, ttl);
                    set.set_records(records);
                    vacant.insert(set);
                }
                // Another service of the same name added records here first: its records
                // come first, and equal ones are dropped, by `insert` itself.
                Entry::Occupied(mut occupied) => {
                    for rdata in rdatas {
                        occupied.get_mut().add_rdata(rdata);
                    }
                }
            }
        }
    }

    /// The zone's name.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// The record set of `name` and `record_type`, if any (case-insensitive).
    pub fn get(&self, name: &Name, record_type: RecordType) -> Option<&RecordSet> {
        self.records
            .get(&RrKey::new(LowerName::new(name), record_type))
    }

    /// Number of records in the zone (not record sets).
    pub fn record_count(&self) -> usize {
        self.records.values().map(RecordSet::records_count).sum()
    }

    pub(crate) fn records(&self) -> &BTreeMap<RrKey, RecordSet> {
        &self.records
    }

    pub(crate) fn into_records(self) -> BTreeMap<RrKey, RecordSet> {
        self.records
    }
}

/// All served zones, built from one snapshot.
#[derive(Clone, Debug)]
pub struct Zones {
    zones: Vec<Zone>,
    version: u64,
    skipped: Vec<Skipped>,
}

/// A zone could not be turned into a hickory zone handler (a bug, not bad input).
#[derive(Debug, thiserror::Error)]
#[error("cannot load zone {origin}: {reason}")]
pub struct ZoneError {
    origin: Name,
    reason: String,
}

impl Zones {
    /// Builds the zones of `snapshot` for every origin in `settings`.
    pub fn build(snapshot: &Snapshot, settings: &ZoneSettings) -> Self {
        // The controller's version is a content hash: its low 32 bits change with the content,
        // which is all a serial must do here (zone transfers are refused, so no secondary
        // compares serials).
        let serial = snapshot.version as u32;
        let mut zones = apexes(settings, serial);
        let mut skipped = Vec::new();
        let claims = add_services(&snapshot.services, &mut zones, settings, &mut skipped);
        zones.extend(crate::clusterset::reverse_zones(
            &claims,
            settings,
            &mut skipped,
        ));
        Self {
            zones,
            version: snapshot.version,
            skipped,
        }
    }

    /// The zones, in `--zone` order.
    pub fn zones(&self) -> &[Zone] {
        &self.zones
    }

    /// The zone named `origin`, if served.
    pub fn zone(&self, origin: &Name) -> Option<&Zone> {
        self.zones.iter().find(|zone| zone.origin == *origin)
    }

    /// The snapshot version the zones were built from.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Entries that were left out.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Total number of records over all zones.
    pub fn record_count(&self) -> usize {
        self.zones.iter().map(Zone::record_count).sum()
    }

    /// A hickory catalog with one authoritative in-memory zone per origin (AXFR is
    /// refused), with the index of the names each zone holds.
    pub fn into_catalog(self) -> Result<ServedZones, ZoneError> {
        let names = NameIndex::new(&self.zones);
        let mut catalog = Catalog::new();
        for zone in self.zones {
            let origin = zone.origin;
            let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
                origin.clone(),
                zone.records,
                ZoneType::Primary,
                AxfrPolicy::Deny,
            )
            .map_err(|reason| ZoneError {
                origin: origin.clone(),
                reason,
            })?;
            catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
        }
        Ok(ServedZones::new(Arc::new(catalog), names))
    }
}

/// The SOA record data of the zone `origin`.
pub(crate) fn soa(origin: &Name, settings: &ZoneSettings, serial: u32) -> RData {
    let hostmaster = origin
        .prepend_label("hostmaster")
        .unwrap_or_else(|_| origin.clone());
    RData::SOA(SOA::new(
        settings.nameserver.clone(),
        hostmaster,
        serial,
        SOA_REFRESH,
        SOA_RETRY,
        SOA_EXPIRE,
        settings.ttl,
    ))
}

/// The served zones with only their apex records (and `dns-version` in the clusterset
/// zone): one per origin, then the clusterset zone if configured. The slots
/// [`add_services`] fills.
pub(crate) fn apexes(settings: &ZoneSettings, serial: u32) -> Vec<Zone> {
    let mut zones: Vec<Zone> = settings
        .origins
        .iter()
        .map(|origin| Zone::new(origin.clone(), settings, serial))
        .collect();
    if let Some(origin) = &settings.clusterset {
        zones.push(crate::clusterset::apex(origin, settings, serial));
    }
    zones
}

/// Adds the records of `services`, in their order, to `zones` (one per origin, then the
/// clusterset zone if configured, as [`apexes`] makes them) and returns the ClusterSet IPs
/// they claim, in the same order. The one definition of what a service contributes: the
/// full build runs it over a snapshot, the incremental state ([`crate::state`]) over the
/// services that share a name.
pub(crate) fn add_services<'a>(
    services: impl IntoIterator<Item = &'a GlobalService> + Clone,
    zones: &mut [Zone],
    settings: &ZoneSettings,
    skipped: &mut Vec<Skipped>,
) -> Vec<crate::clusterset::Claim> {
    let (global, clusterset) = zones.split_at_mut(settings.origins.len());
    let mut seen = BTreeSet::new();
    for service in services.clone() {
        let id = service_id(service);
        if !seen.insert(id.clone()) {
            skipped.push(Skipped {
                service: id,
                reason: "duplicate service in snapshot".into(),
            });
            continue;
        }
        let entries = match entries(service) {
            Ok(entries) => entries,
            Err(reason) => {
                skipped.push(Skipped {
                    service: id,
                    reason,
                });
                continue;
            }
        };
        for problem in &entries.problems {
            skipped.push(Skipped {
                service: id.clone(),
                reason: problem.clone(),
            });
        }
        for zone in global.iter_mut() {
            if let Err(reason) = entries.add_to(zone, settings.ttl) {
                skipped.push(Skipped {
                    service: id.clone(),
                    reason,
                });
            }
        }
    }
    match clusterset.first_mut() {
        Some(zone) => crate::clusterset::add_services(services, zone, settings.ttl, skipped),
        None => Vec::new(),
    }
}

/// `name.namespace`, as skipped entries name a service.
pub(crate) fn service_id(service: &GlobalService) -> String {
    format!("{}.{}", service.name, service.namespace)
}

/// One service's records, relative to a zone: validated once, added to every zone.
struct Entries {
    /// `svc.ns`, relative.
    base: Name,
    vip: Option<IpAddr>,
    /// (`_port._tcp` labels, port).
    srv: Vec<(String, u16)>,
    /// (cluster label, VIP).
    pinned: Vec<(String, IpAddr)>,
    /// Parts of the service that were left out.
    problems: Vec<String>,
}

impl Entries {
    fn add_to(&self, zone: &mut Zone, ttl: u32) -> Result<(), String> {
        let name = self
            .base
            .clone()
            .append_domain(&zone.origin)
            .map_err(|e| format!("name too long in zone {}: {e}", zone.origin))?;
        if let Some(vip) = self.vip {
            zone.add(name.clone(), address(vip), ttl);
            for (port_name, port) in &self.srv {
                let owner = name
                    .prepend_label("_tcp")
                    .and_then(|n| n.prepend_label(format!("_{port_name}").as_str()))
                    .map_err(|e| format!("SRV name for port {port_name:?}: {e}"))?;
                zone.add(owner, RData::SRV(SRV::new(0, 0, *port, name.clone())), ttl);
            }
        }
        for (cluster, vip) in &self.pinned {
            let owner = name
                .prepend_label(cluster.as_str())
                .map_err(|e| format!("pinned name for cluster {cluster:?}: {e}"))?;
            zone.add(owner, address(*vip), ttl);
        }
        Ok(())
    }
}

pub(crate) fn address(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// Validates a service and collects what it contributes; `Err` drops the whole service.
fn entries(service: &GlobalService) -> Result<Entries, String> {
    let name = label(&service.name).map_err(|e| format!("service name: {e}"))?;
    let namespace = label(&service.namespace).map_err(|e| format!("namespace: {e}"))?;
    let base = Name::from_labels([name.as_str(), namespace.as_str()])
        .map_err(|e| format!("service name: {e}"))?;
    let mut problems = Vec::new();
    let vip = match service.vip.as_str() {
        // Not allocated yet: the name exists only through its pinned names, if any.
        "" => None,
        vip => match vip.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                problems.push(format!("VIP {vip:?} is not an IP address"));
                None
            }
        },
    };
    let mut srv = Vec::new();
    for port in &service.ports {
        if port.name.is_empty() {
            continue; // a single unnamed port has no SRV name
        }
        let port_name = match label(&port.name) {
            // `_` + name must still fit in a label.
            Ok(port_name) if port_name.len() < 63 => port_name,
            Ok(_) => {
                problems.push(format!("port name {:?} is too long", port.name));
                continue;
            }
            Err(e) => {
                problems.push(format!("port name: {e}"));
                continue;
            }
        };
        match u16::try_from(port.port) {
            Ok(number) if number != 0 => srv.push((port_name, number)),
            _ => problems.push(format!(
                "port {:?} has invalid number {}",
                port.name, port.port
            )),
        }
    }
    let mut pinned = Vec::new();
    for cluster_vip in &service.cluster_vips {
        let cluster = match label(&cluster_vip.cluster) {
            Ok(cluster) => cluster,
            Err(e) => {
                problems.push(format!("pinned VIP cluster: {e}"));
                continue;
            }
        };
        match cluster_vip.vip.parse::<IpAddr>() {
            Ok(ip) => pinned.push((cluster, ip)),
            Err(_) => problems.push(format!(
                "pinned VIP {:?} of cluster {:?} is not an IP address",
                cluster_vip.vip, cluster_vip.cluster
            )),
        }
    }
    Ok(Entries {
        base,
        vip,
        srv,
        pinned,
        problems,
    })
}

/// Checks that `s` is one RFC 1123 label (what Kubernetes names are) and lower-cases it.
///
/// Stricter than DNS itself on purpose: no `*` (a wildcard), no `.` (extra labels), no `_`.
pub(crate) fn label(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if valid {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("{s:?} is not a DNS label (RFC 1123)"))
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use meridian_api::proto::{ClusterVip, ServicePort};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    fn settings(origins: &[&str]) -> ZoneSettings {
        ZoneSettings {
            origins: origins.iter().map(|o| name(o)).collect(),
            ttl: 5,
            nameserver: name("meridian-dns.meridian-system.svc.cluster.local."),
            clusterset: None,
        }
    }

    fn reviews() -> GlobalService {
        GlobalService {
            name: "reviews".into(),
            namespace: "default".into(),
            hostname: "reviews.default.global".into(),
            vip: "10.96.0.10".into(),
            cluster_vips: vec![
                ClusterVip {
                    cluster: "east".into(),
                    vip: "10.96.0.11".into(),
                    ports: Vec::new(),
                },
                ClusterVip {
                    cluster: "west".into(),
                    vip: "fd00::12".into(),
                    ports: Vec::new(),
                },
            ],
            ports: vec![
                ServicePort {
                    name: "http".into(),
                    port: 9080,
                    ..Default::default()
                },
                ServicePort {
                    name: "grpc".into(),
                    port: 9090,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn snapshot(services: Vec<GlobalService>) -> Snapshot {
        Snapshot {
            version: 42,
            cluster: "east".into(),
            services,
            ..Default::default()
        }
    }

    fn rdatas(zone: &Zone, owner: &str, record_type: RecordType) -> Vec<RData> {
        zone.get(&name(owner), record_type)
            .map(|set| {
                set.records_without_rrsigs()
                    .map(|r| r.data.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn apex_has_soa_and_ns() {
        let zones = Zones::build(&snapshot(vec![]), &settings(&["global."]));
        let zone = zones.zone(&name("global.")).unwrap();
        let soa = rdatas(zone, "global.", RecordType::SOA);
        let RData::SOA(soa) = &soa[0] else {
            panic!("no SOA: {soa:?}")
        };
        assert_eq!(soa.serial, 42);
        assert_eq!(soa.minimum, 5);
        assert_eq!(
            soa.mname,
            name("meridian-dns.meridian-system.svc.cluster.local.")
        );
        assert_eq!(soa.rname, name("hostmaster.global."));
        assert_eq!(
            rdatas(zone, "global.", RecordType::NS),
            vec![RData::NS(NS(name(
                "meridian-dns.meridian-system.svc.cluster.local."
            )))]
        );
        assert_eq!(zone.record_count(), 2);
    }

    #[test]
    fn service_vip_srv_and_pinned_names() {
        let zones = Zones::build(&snapshot(vec![reviews()]), &settings(&["global."]));
        assert!(zones.skipped().is_empty(), "{:?}", zones.skipped());
        let zone = &zones.zones()[0];
        assert_eq!(
            rdatas(zone, "reviews.default.global.", RecordType::A),
            vec![RData::A(A::new(10, 96, 0, 10))]
        );
        assert!(rdatas(zone, "reviews.default.global.", RecordType::AAAA).is_empty());
        assert_eq!(
            rdatas(zone, "_http._tcp.reviews.default.global.", RecordType::SRV),
            vec![RData::SRV(SRV::new(
                0,
                0,
                9080,
                name("reviews.default.global.")
            ))]
        );
        assert_eq!(
            rdatas(zone, "_grpc._tcp.reviews.default.global.", RecordType::SRV),
            vec![RData::SRV(SRV::new(
                0,
                0,
                9090,
                name("reviews.default.global.")
            ))]
        );
        assert_eq!(
            rdatas(zone, "east.reviews.default.global.", RecordType::A),
            vec![RData::A(A::new(10, 96, 0, 11))]
        );
        assert_eq!(
            rdatas(zone, "west.reviews.default.global.", RecordType::AAAA),
            vec![RData::AAAA(AAAA("fd00::12".parse().unwrap()))]
        );
        let set = zone
            .get(&name("reviews.default.global."), RecordType::A)
            .unwrap();
        assert_eq!(set.ttl(), 5);
        // SOA + NS + A + 2 SRV + 2 pinned.
        assert_eq!(zones.record_count(), 7);
    }

    #[test]
    fn lookups_are_case_insensitive() {
        let zones = Zones::build(&snapshot(vec![reviews()]), &settings(&["global."]));
        let zone = &zones.zones()[0];
        assert!(
            zone.get(&name("REVIEWS.Default.GLOBAL."), RecordType::A)
                .is_some()
        );
    }

    #[test]
    fn every_zone_gets_every_service() {
        let zones = Zones::build(
            &snapshot(vec![reviews()]),
            &settings(&["global.", "mesh.example.com."]),
        );
        for (origin, owner) in [
            ("global.", "reviews.default.global."),
            ("mesh.example.com.", "reviews.default.mesh.example.com."),
        ] {
            let zone = zones.zone(&name(origin)).unwrap();
            assert_eq!(
                rdatas(zone, owner, RecordType::A),
                vec![RData::A(A::new(10, 96, 0, 10))],
                "{origin}"
            );
        }
    }

    #[test]
    fn ipv6_vip_is_aaaa() {
        let mut service = reviews();
        service.vip = "fd00::10".into();
        let zones = Zones::build(&snapshot(vec![service]), &settings(&["global."]));
        let zone = &zones.zones()[0];
        assert!(rdatas(zone, "reviews.default.global.", RecordType::A).is_empty());
        assert_eq!(
            rdatas(zone, "reviews.default.global.", RecordType::AAAA),
            vec![RData::AAAA(AAAA("fd00::10".parse().unwrap()))]
        );
    }

    #[test]
    fn unallocated_vip_keeps_pinned_names_but_no_srv() {
        let mut service = reviews();
        service.vip.clear();
        let zones = Zones::build(&snapshot(vec![service]), &settings(&["global."]));
        let zone = &zones.zones()[0];
        assert!(
            zone.get(&name("reviews.default.global."), RecordType::A)
                .is_none()
        );
        assert!(
            zone.get(&name("_http._tcp.reviews.default.global."), RecordType::SRV)
                .is_none()
        );
        assert!(
            zone.get(&name("east.reviews.default.global."), RecordType::A)
                .is_some()
        );
        assert!(zones.skipped().is_empty());
    }

    #[test]
    fn bad_entries_are_skipped_without_disturbing_the_rest() {
        let mut bad_vip = reviews();
        bad_vip.name = "ratings".into();
        bad_vip.vip = "not-an-ip".into();
        let mut bad_name = reviews();
        bad_name.name = "*".into();
        let mut bad_parts = reviews();
        bad_parts.name = "details".into();
        bad_parts.ports[0].name = "under_score".into();
        bad_parts.ports[1].port = 70000;
        bad_parts.cluster_vips[0].cluster = "a.b".into();
        bad_parts.cluster_vips[1].vip = "999.1.1.1".into();
        let services = vec![reviews(), bad_vip, bad_name, bad_parts, reviews()];
        let zones = Zones::build(&snapshot(services), &settings(&["global."]));
        let zone = &zones.zones()[0];

        assert!(
            zone.get(&name("reviews.default.global."), RecordType::A)
                .is_some()
        );
        assert!(
            zone.get(&name("ratings.default.global."), RecordType::A)
                .is_none()
        );
        // The pinned names of a service with a bad VIP are still served.
        assert!(
            zone.get(&name("east.ratings.default.global."), RecordType::A)
                .is_some()
        );
        assert!(
            zone.get(&name("details.default.global."), RecordType::A)
                .is_some()
        );
        assert!(
            zone.get(&name("_http._tcp.details.default.global."), RecordType::SRV)
                .is_none()
        );
        assert!(
            zone.get(&name("_grpc._tcp.details.default.global."), RecordType::SRV)
                .is_none()
        );
        assert!(
            zone.get(&name("east.details.default.global."), RecordType::A)
                .is_none()
        );

        let reasons: Vec<(&str, &str)> = zones
            .skipped()
            .iter()
            .map(|s| (s.service.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 7, "{reasons:#?}");
        assert!(reasons.contains(&("ratings.default", "VIP \"not-an-ip\" is not an IP address")));
        assert!(
            reasons
                .iter()
                .any(|(s, r)| *s == "*.default" && r.starts_with("service name"))
        );
        assert!(reasons.contains(&("reviews.default", "duplicate service in snapshot")));
        assert_eq!(
            reasons
                .iter()
                .filter(|(s, _)| *s == "details.default")
                .count(),
            4
        );
    }

    #[test]
    fn catalog_builds_for_every_zone() {
        let zones = Zones::build(
            &snapshot(vec![reviews()]),
            &settings(&["global.", "mesh.example.com."]),
        );
        let served = zones.into_catalog().unwrap();
        let catalog = served.catalog();
        assert!(catalog.contains(&LowerName::new(&name("global."))));
        assert!(catalog.contains(&LowerName::new(&name("mesh.example.com."))));
        assert!(
            catalog
                .find(&LowerName::new(&name("a.b.global.")))
                .is_some()
        );
        assert!(
            catalog
                .find(&LowerName::new(&name("example.org.")))
                .is_none()
        );
    }
}
