//! Answers straight from a hash index of the names each zone holds, for the queries
//! hickory's zone handler makes expensive.
//!
//! Why: hickory's in-memory zone handler tells NXDOMAIN from NODATA by walking every key
//! of the zone (`records.keys().any(..)`), O(records) for each query of a name or type it
//! does not hold; with 1,000 services and a quarter of the queries NXDOMAIN that walk was
//! two thirds of the server's CPU (docs/benchmarks.md). Its positive answers are
//! O(log records) but pay, per query, ordered name comparisons at every label (its
//! delegation check), a lock, and its generic lookup machinery. So the names of every zone
//! go into a hash map: every owner name with its record sets, and every ancestor of one up
//! to the origin (the empty non-terminals, holding nothing), counted so that a change
//! (`NameIndex::set`, one record set) adds or removes only its own name and ancestors. The
//! authority answers from it with the message hickory would build: AA set; NXDOMAIN for a
//! name not in the map and NODATA for a name without the asked type, each with the zone's
//! SOA in the authority section; else the record set, and for SRV the A and AAAA sets of
//! the first record's target as additional records. SOA, NS, ANY, AXFR and IXFR queries,
//! and every query into a zone this index cannot vouch for (one with a CNAME, ANAME,
//! wildcard or delegation, which change hickory's answer), still go to hickory.

use std::sync::Arc;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{LowerName, RData, Record, RecordSet, RecordType, RrKey};

use crate::zone::Zone;

/// The names of every served zone, keyed by origin.
///
/// Persistent maps (`imbl`): a clone is O(1) and shares everything, so the snapshot
/// follower clones the served index, changes the record sets a delta touched
/// ([`NameIndex::set`]) and swaps the result in, leaving the old one to the queries still
/// reading it.
#[derive(Debug, Default, Clone)]
pub(crate) struct NameIndex {
    /// `None`: a zone whose answers are all left to hickory.
    zones: imbl::HashMap<LowerName, Option<ZoneNames>>,
}

/// The names one zone holds.
#[derive(Debug, Clone)]
pub(crate) struct ZoneNames {
    /// Every owner name and every ancestor of one up to the origin, with the record
    /// sets at that name (none for an empty non-terminal).
    names: imbl::HashMap<LowerName, Node>,
    /// The apex SOA, as hickory puts it in the authority section.
    soa: Arc<[Record]>,
}

/// One name of a zone.
#[derive(Debug, Clone, Default)]
struct Node {
    /// Its record sets, one per type.
    sets: Vec<Arc<Held>>,
    /// How many names holding records are this one or below it: the name exists (an
    /// owner or an empty non-terminal) while this is above 0.
    refs: u32,
}

/// One record set of a name, as hickory answers a query for its type.
#[derive(Debug)]
struct Held {
    record_type: RecordType,
    records: Vec<Record>,
    /// SRV: the first record's target, whose A and AAAA records hickory adds.
    srv_target: Option<LowerName>,
}

/// What the index answers: the response code and the records of each section.
#[derive(Debug, PartialEq)]
pub(crate) struct Answer<'a> {
    pub(crate) code: ResponseCode,
    pub(crate) answers: &'a [Record],
    pub(crate) authorities: &'a [Record],
    /// The A, then the AAAA records of an SRV answer's first target.
    pub(crate) additionals: [&'a [Record]; 2],
}

impl NameIndex {
    /// Indexes `zones`; like hickory's `Catalog::upsert`, a later zone with the same
    /// origin replaces an earlier one.
    pub(crate) fn new(zones: &[Zone]) -> Self {
        let mut index = Self::default();
        for zone in zones {
            index.insert_zone(zone);
        }
        index
    }

    /// Indexes (or re-indexes) one zone.
    pub(crate) fn insert_zone(&mut self, zone: &Zone) {
        let origin = LowerName::new(zone.origin());
        let names = ZoneNames::new(&origin, zone);
        self.zones.insert(origin, names);
    }

    /// Forgets the zone `origin`.
    pub(crate) fn remove_zone(&mut self, origin: &LowerName) {
        self.zones.remove(origin);
    }

    /// Sets the record set `key` of the zone `origin` to `set` (`None`: removes it),
    /// adding or removing the name and the empty non-terminals above it as needed.
    pub(crate) fn set(&mut self, origin: &LowerName, key: &RrKey, set: Option<&RecordSet>) {
        let Some(slot) = self.zones.get_mut(origin) else {
            return;
        };
        let Some(zone) = slot else {
            return; // left to hickory
        };
        if set.is_some() && !indexable(origin, key) {
            *slot = None;
            return;
        }
        zone.set(origin, key, set);
    }

    /// The answer to `name` and `query_type`, or `None` when hickory must answer (SOA,
    /// NS, ANY, AXFR, IXFR, a name in no zone, or one whose zone is not indexed).
    pub(crate) fn answer(&self, name: &LowerName, query_type: RecordType) -> Option<Answer<'_>> {
        if matches!(
            query_type,
            RecordType::AXFR | RecordType::IXFR | RecordType::ANY
        ) {
            return None;
        }
        let zone = self.zone_of(name)?.as_ref()?;
        let negative = |code| Answer {
            code,
            answers: &[],
            authorities: &zone.soa,
            additionals: [&[], &[]],
        };
        let Some(node) = zone.names.get(name) else {
            return Some(negative(ResponseCode::NXDomain));
        };
        match node.sets.iter().find(|set| set.record_type == query_type) {
            None => Some(negative(ResponseCode::NoError)),
            // hickory adds the NS records to an SOA answer, and NS targets as additionals.
            Some(_) if matches!(query_type, RecordType::SOA | RecordType::NS) => None,
            Some(set) => Some(Answer {
                code: ResponseCode::NoError,
                answers: &set.records,
                authorities: &[],
                additionals: zone.additionals(set),
            }),
        }
    }

    /// The most specific zone `name` is in, as hickory's `Catalog::find` picks it.
    fn zone_of(&self, name: &LowerName) -> Option<&Option<ZoneNames>> {
        let mut name = name.clone();
        loop {
            if let Some(zone) = self.zones.get(&name) {
                return Some(zone);
            }
            if name.is_root() {
                return None;
            }
            name = name.base_name();
        }
    }
}

/// Whether a record set leaves hickory's answers plain record sets: not a CNAME or ANAME
/// (chased), a wildcard (synthesised), an NS below the apex (a referral) or a name
/// outside the zone.
fn indexable(origin: &LowerName, key: &RrKey) -> bool {
    let owner = key.name();
    let record_type = key.record_type;
    let delegation = record_type == RecordType::NS && owner != origin;
    !(matches!(record_type, RecordType::CNAME | RecordType::ANAME)
        || delegation
        || owner.is_wildcard()
        || !origin.zone_of(owner))
}

impl ZoneNames {
    /// `None` when the zone holds what makes hickory's answers differ from plain record
    /// sets ([`indexable`]), or no SOA.
    fn new(origin: &LowerName, zone: &Zone) -> Option<Self> {
        let mut names = Self {
            names: imbl::HashMap::new(),
            soa: Arc::from(Vec::new()),
        };
        let mut has_soa = false;
        for (key, set) in zone.records() {
            if !indexable(origin, key) {
                return None;
            }
            has_soa |= key.record_type == RecordType::SOA && key.name() == origin;
            names.set(origin, key, Some(set));
        }
        has_soa.then_some(names)
    }

    fn set(&mut self, origin: &LowerName, key: &RrKey, set: Option<&RecordSet>) {
        let owner = key.name();
        let record_type = key.record_type;
        let held = set.map(|set| {
            let records: Vec<Record> = set.records_without_rrsigs().cloned().collect();
            let srv_target = match records.first().map(|r| &r.data) {
                Some(RData::SRV(srv)) if record_type == RecordType::SRV => {
                    Some(LowerName::new(&srv.target))
                }
                _ => None,
            };
            Arc::new(Held {
                record_type,
                records,
                srv_target,
            })
        });
        if record_type == RecordType::SOA && owner == origin {
            self.soa = Arc::from(
                held.as_ref()
                    .map(|held| held.records.clone())
                    .unwrap_or_default(),
            );
        }
        let node = self.names.entry(owner.clone()).or_default();
        let had = !node.sets.is_empty();
        node.sets.retain(|held| held.record_type != record_type);
        if let Some(held) = held {
            node.sets.push(held);
        }
        let has = !node.sets.is_empty();
        if had == has {
            if node.refs == 0 {
                self.names.remove(owner); // removing what was never there
            }
            return;
        }
        // The owner and every ancestor up to the origin (the empty non-terminals) exist
        // while some name at or below them holds records.
        let mut name = owner.clone();
        loop {
            let done = name == *origin || name.is_root();
            let node = self.names.entry(name.clone()).or_default();
            if has {
                node.refs += 1;
            } else {
                node.refs = node.refs.saturating_sub(1);
                if node.refs == 0 {
                    self.names.remove(&name);
                }
            }
            if done {
                break;
            }
            name = name.base_name();
        }
    }

    /// What hickory adds to an SRV answer: the A, then the AAAA set of the first record's
    /// target, when the zone holds them.
    fn additionals(&self, set: &Held) -> [&[Record]; 2] {
        let Some(node) = set.srv_target.as_ref().and_then(|t| self.names.get(t)) else {
            return [&[], &[]];
        };
        let of = |record_type| {
            node.sets
                .iter()
                .find(|held| held.record_type == record_type)
                .map_or(&[][..], |held| &held.records[..])
        };
        [of(RecordType::A), of(RecordType::AAAA)]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::SocketAddr;
    use std::str::FromStr;
    use std::sync::Arc;

    use hickory_server::net::runtime::TokioTime;
    use hickory_server::net::xfer::Protocol;
    use hickory_server::proto::op::{Edns, Message, Query};
    use hickory_server::proto::rr::{Name, RData};
    use hickory_server::server::{Request, RequestHandler};
    use meridian_api::proto::{ClusterVip, Endpoint, GlobalService, ServicePort, Snapshot};

    use super::*;
    use crate::authority::{Authority, ServedZones};
    use crate::metrics::Metrics;
    use crate::udp::Capture;
    use crate::zone::{ZoneSettings, Zones};

    pub(crate) fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    pub(crate) fn settings() -> ZoneSettings {
        ZoneSettings {
            origins: vec![name("global."), name("mesh.example.com.")],
            ttl: 5,
            nameserver: name("meridian-dns.meridian-system.svc.cluster.local."),
            clusterset: Some(name("clusterset.local.")),
        }
    }

    /// Services of every shape: v4 and v6 VIPs, no VIP, pinned VIPs, named ports,
    /// headless with endpoints.
    pub(crate) fn snapshot(count: usize) -> Snapshot {
        let services = (0..count)
            .map(|i| GlobalService {
                name: format!("svc-{i}"),
                namespace: format!("ns-{}", i % 3),
                hostname: format!("svc-{i}.ns-{}.global", i % 3),
                vip: match i % 4 {
                    0 | 1 => format!("10.96.{}.{}", i / 256, i % 256),
                    2 => format!("fd00::{i:x}"),
                    _ => String::new(),
                },
                headless: i % 5 == 4,
                endpoints: ["a", "b"]
                    .iter()
                    .enumerate()
                    .map(|(n, pod)| Endpoint {
                        cluster: "east".into(),
                        pod: format!("pod-{i}-{pod}"),
                        address: format!("10.{}.{}.{}", n + 1, i / 256, i % 256),
                        ready: true,
                        ..Endpoint::default()
                    })
                    .collect(),
                cluster_vips: vec![
                    ClusterVip {
                        cluster: "east".into(),
                        vip: format!("10.98.{}.{}", i / 256, i % 256),
                        ports: Vec::new(),
                    },
                    ClusterVip {
                        cluster: "west".into(),
                        vip: format!("fd01::{i:x}"),
                        ports: Vec::new(),
                    },
                ],
                ports: vec![
                    ServicePort {
                        name: "http".into(),
                        port: 8080,
                        ..Default::default()
                    },
                    ServicePort {
                        name: "grpc".into(),
                        port: 9090,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            })
            .collect();
        Snapshot {
            version: 7,
            cluster: "east".into(),
            services,
            ..Default::default()
        }
    }

    fn served(count: usize) -> (Zones, Authority, Arc<ServedZones>) {
        let settings = settings();
        let zones = Zones::build(&snapshot(count), &settings);
        let authority = Authority::new(&settings.origins, Arc::new(Metrics::new()));
        authority.replace(zones.clone().into_catalog().unwrap());
        // A second, identical build: hickory's catalog alone, the path before the index.
        let hickory = Arc::new(zones.clone().into_catalog().unwrap());
        (zones, authority, hickory)
    }

    pub(crate) fn request(qname: &Name, query_type: RecordType, edns: Option<u8>) -> Request {
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(qname.clone(), query_type));
        if let Some(version) = edns {
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            edns.set_version(version);
            query.set_edns(edns);
        }
        let client: SocketAddr = "127.0.0.1:53000".parse().unwrap();
        Request::from_bytes(query.to_vec().unwrap(), client, Protocol::Udp).unwrap()
    }

    /// The response of the authority (index first) and of hickory's catalog alone.
    pub(crate) async fn both(
        authority: &Authority,
        hickory: &ServedZones,
        request: &Request,
    ) -> (Vec<u8>, Vec<u8>) {
        let (ours, theirs) = (Capture::default(), Capture::default());
        authority
            .handle_request::<_, TokioTime>(request, ours.clone())
            .await;
        hickory
            .catalog()
            .handle_request::<_, TokioTime>(request, theirs.clone())
            .await;
        (ours.take().unwrap(), theirs.take().unwrap())
    }

    async fn answer(authority: &Authority, qname: &str, query_type: RecordType) -> Message {
        let capture = Capture::default();
        authority
            .handle_request::<_, TokioTime>(
                &request(&name(qname), query_type, None),
                capture.clone(),
            )
            .await;
        Message::from_vec(&capture.take().unwrap()).unwrap()
    }

    fn soa_owner(message: &Message) -> Vec<String> {
        message
            .authorities
            .iter()
            .filter(|r| r.record_type() == RecordType::SOA)
            .map(|r| r.name.to_string())
            .collect()
    }

    #[tokio::test]
    async fn empty_non_terminal_is_nodata_and_a_missing_name_nxdomain() {
        let (_zones, authority, _) = served(8);
        for ent in [
            "ns-0.global.",
            "_tcp.svc-0.ns-0.global.",
            "ns-1.mesh.example.com.",
        ] {
            let message = answer(&authority, ent, RecordType::A).await;
            assert_eq!(
                message.metadata.response_code,
                ResponseCode::NoError,
                "{ent}"
            );
            assert!(message.metadata.authoritative, "{ent}");
            assert!(message.answers.is_empty(), "{ent}");
            assert_eq!(soa_owner(&message).len(), 1, "{ent}");
        }
        for missing in ["nope.ns-0.global.", "x.svc-0.ns-0.global.", "nope.global."] {
            let message = answer(&authority, missing, RecordType::A).await;
            assert_eq!(
                message.metadata.response_code,
                ResponseCode::NXDomain,
                "{missing}"
            );
            assert_eq!(soa_owner(&message), ["global."], "{missing}");
        }
        // A name holding another type: NODATA.
        let message = answer(&authority, "svc-0.ns-0.global.", RecordType::AAAA).await;
        assert_eq!(message.metadata.response_code, ResponseCode::NoError);
        assert!(message.answers.is_empty());
        assert_eq!(soa_owner(&message), ["global."]);
    }

    #[tokio::test]
    async fn negative_answers_are_case_insensitive() {
        let (_zones, authority, _) = served(8);
        let message = answer(&authority, "SVC-0.Ns-0.GLOBAL.", RecordType::A).await;
        assert_eq!(message.metadata.response_code, ResponseCode::NoError);
        assert_eq!(message.answers.len(), 1);
        let message = answer(&authority, "SVC-0.Ns-0.GLOBAL.", RecordType::AAAA).await;
        assert_eq!(message.metadata.response_code, ResponseCode::NoError);
        assert!(message.answers.is_empty());
        let message = answer(&authority, "NS-0.Global.", RecordType::A).await;
        assert_eq!(message.metadata.response_code, ResponseCode::NoError);
        let message = answer(&authority, "Missing.NS-0.Global.", RecordType::A).await;
        assert_eq!(message.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(soa_owner(&message), ["global."]);
    }

    #[tokio::test]
    async fn clusterset_zone_answers_from_its_own_soa() {
        let (_zones, authority, _) = served(8);
        let message = answer(&authority, "ns-0.svc.clusterset.local.", RecordType::A).await;
        assert_eq!(message.metadata.response_code, ResponseCode::NoError);
        assert_eq!(soa_owner(&message), ["clusterset.local."]);
        let message = answer(&authority, "nope.svc.clusterset.local.", RecordType::A).await;
        assert_eq!(message.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(soa_owner(&message), ["clusterset.local."]);
        let message = answer(&authority, "dns-version.clusterset.local.", RecordType::A).await;
        assert_eq!(message.metadata.response_code, ResponseCode::NoError);
        assert!(message.answers.is_empty());
        // A child of a reverse (one-name) zone: NXDOMAIN with that zone's SOA.
        let message = answer(&authority, "1.0.0.96.10.in-addr.arpa.", RecordType::PTR).await;
        assert_eq!(message.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(soa_owner(&message), ["0.0.96.10.in-addr.arpa."]);
    }

    #[tokio::test]
    async fn srv_answer_carries_its_targets_addresses() {
        let (_zones, authority, _) = served(8);
        let message = answer(&authority, "_http._tcp.svc-0.ns-0.global.", RecordType::SRV).await;
        assert_eq!(message.metadata.response_code, ResponseCode::NoError);
        assert!(message.metadata.authoritative);
        assert_eq!(message.answers.len(), 1);
        let additionals: Vec<String> = message
            .additionals
            .iter()
            .map(|r| format!("{} {}", r.name, r.data))
            .collect();
        assert_eq!(additionals, ["svc-0.ns-0.global. 10.96.0.0"]);
        // Headless: one SRV per endpoint; hickory adds the first target's addresses.
        let message = answer(
            &authority,
            "_http._tcp.svc-4.ns-1.svc.clusterset.local.",
            RecordType::SRV,
        )
        .await;
        assert_eq!(message.answers.len(), 2);
        assert_eq!(message.additionals.len(), 1);
    }

    /// Flips the case of every other letter, deterministically.
    pub(crate) fn mixed_case(name: &Name) -> Name {
        let flipped: String = name
            .to_ascii()
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        Name::from_str(&flipped).unwrap()
    }

    /// The query types the byte-identity tests ask for every name.
    pub(crate) const QUERY_TYPES: [RecordType; 11] = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::TXT,
        RecordType::PTR,
        RecordType::SOA,
        RecordType::NS,
        RecordType::MX,
        RecordType::CNAME,
        RecordType::DS,
        RecordType::ANY,
    ];

    /// Every owner name of `zones`, mixed-case, with a missing child, and every ancestor
    /// up to its origin with a missing child; plus names outside the zones.
    pub(crate) fn query_names(zones: &[Zone]) -> Vec<Name> {
        let mut names = vec![
            name("example.org."),
            name("in-addr.arpa."),
            name("96.10.in-addr.arpa."),
            name("."),
        ];
        for zone in zones {
            for key in zone.records().keys() {
                let owner = Name::from(key.name());
                names.push(owner.clone());
                names.push(mixed_case(&owner));
                names.push(owner.prepend_label("child").unwrap());
                let mut ancestor = owner.base_name();
                while zone.origin().zone_of(&ancestor) {
                    names.push(ancestor.clone());
                    names.push(ancestor.prepend_label("missing").unwrap());
                    ancestor = ancestor.base_name();
                }
            }
        }
        names.sort();
        names.dedup();
        names
    }

    #[tokio::test]
    async fn answers_are_hickorys_byte_for_byte() {
        let (zones, authority, hickory) = served(24);
        let names = query_names(zones.zones());
        let types = QUERY_TYPES;
        let (mut compared, mut negative, mut indexed, mut positive) = (0, 0, 0, 0);
        for qname in &names {
            for (i, query_type) in types.iter().enumerate() {
                // EDNS on some queries, and a version hickory refuses (BADVERS) on a few.
                let edns = [None, Some(0), None, Some(1)][(compared + i) % 4];
                let request = request(qname, *query_type, edns);
                let (new, old) = both(&authority, &hickory, &request).await;
                match hickory.names().answer(&LowerName::new(qname), *query_type) {
                    Some(answer) if !answer.answers.is_empty() => positive += 1,
                    Some(_) => indexed += 1,
                    None => {}
                }
                assert_eq!(new, old, "{qname} {query_type} edns {edns:?}");
                let message = Message::from_vec(&new).unwrap();
                if message.answers.is_empty()
                    && matches!(
                        message.metadata.response_code,
                        ResponseCode::NXDomain | ResponseCode::NoError
                    )
                {
                    negative += 1;
                }
                compared += 1;
            }
        }
        assert!(compared > 3000, "{compared}");
        assert!(negative > compared / 2, "{negative} of {compared}");
        // Most negative answers came from the index (not those to ANY, or BADVERS), and
        // some positive ones (A, AAAA, SRV with additionals, TXT, PTR).
        assert!(indexed > negative / 2, "{indexed} of {negative}");
        assert!(positive > 200, "{positive}");
    }

    #[test]
    fn a_zone_with_a_wildcard_or_cname_is_left_to_hickory() {
        let settings = settings();
        let zones = Zones::build(&snapshot(2), &settings);
        let mut zone = zones.zones()[0].clone();
        zone.add(
            name("*.ns-0.global."),
            RData::A(hickory_server::proto::rr::rdata::A::new(10, 0, 0, 1)),
            5,
        );
        let index = NameIndex::new(std::slice::from_ref(&zone));
        assert_eq!(
            index.answer(&LowerName::new(&name("x.ns-0.global.")), RecordType::A),
            None
        );
        let plain = NameIndex::new(&zones.zones()[..1]);
        assert_eq!(
            plain
                .answer(&LowerName::new(&name("x.ns-0.global.")), RecordType::A)
                .map(|answer| answer.code),
            Some(ResponseCode::NXDomain)
        );
    }
}
