//! The served zones kept in step with the controller's resources by rebuilding only the
//! services a change touched.
//!
//! A full build ([`crate::zone::Zones::build`]) costs O(records) per change: every zone,
//! the hickory catalog and the name index are made anew. [`ZoneState`] instead keeps, for
//! each *group* of services, the record sets it contributes, and for a change
//! ([`Resources::touched_since`]) rebuilds the groups of the touched services only, with
//! the same code as the full build ([`crate::zone::add_services`]). It then writes the
//! record sets that differ into the live hickory zones and the name index, and swaps a new
//! [`ServedZones`] (same catalog, new index) into the [`Authority`].
//!
//! A group is the services whose name and namespace are equal ignoring case: their owner
//! names coincide (and only theirs do: every name a service owns ends in its
//! `name.namespace`), so a record set always belongs to one group and the full build's
//! rules between services (the first of a duplicate is served, record sets shared by case
//! variants) apply within it. Nearly every group is one service. The one rule across
//! groups, the PTR of a ClusterSet IP claimed by several services, is kept per IP: the
//! claim of the smallest hostname (the snapshot's order) owns the reverse zone.
//!
//! The SOA serial of the `--zone` zones and of the clusterset zone is the snapshot
//! version, so it changes with every change: those few SOA record sets are rewritten each
//! time. A reverse zone's serial is a hash of its content, so it is rewritten only with it.
//!
//! Consistency: the index (which answers ordinary queries) is persistent and swapped in
//! whole, so such an answer comes from one version. The hickory zones (SOA, NS and ANY
//! queries) are shared between versions and updated in place, under each zone's write
//! lock, all changed zones locked together, the index swapped before they are released: a
//! query sees each zone before or after a change, never halfway. Adding or removing a
//! reverse zone makes a new catalog (one `Arc` per zone, no records copied).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::{LowerName, Name, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use meridian_api::proto::GlobalService;
use meridian_api::proto::resource;
use meridian_api::resources::{Resources, Touched, service_name};

use crate::authority::{Authority, ServedZones};
use crate::clusterset::{Claim, conflict, reverse_zone};
use crate::names::NameIndex;
use crate::zone::{Skipped, Zone, ZoneSettings, add_services, apexes, soa};

type Handler = InMemoryZoneHandler<TokioRuntimeProvider>;

/// Lower-cased name and namespace: the services whose records may share owner names.
type GroupKey = (String, String);

/// A record set of one served zone: the zone's slot (`--zone` order, then the clusterset
/// zone) and its key.
type SetKey = (usize, RrKey);

/// The services of one group and what they contribute.
#[derive(Debug, Default)]
struct Group {
    /// Hostnames, in snapshot order.
    members: BTreeSet<String>,
    sets: BTreeMap<SetKey, Arc<RecordSet>>,
    skipped: Vec<Skipped>,
    claims: Vec<Claim>,
}

/// A `--zone` zone or the clusterset zone.
struct Slot {
    lower: LowerName,
    origin: Name,
    handler: Arc<Handler>,
    /// A later slot has the same origin and hides this one, as in the catalog.
    shadowed: bool,
}

/// The one-name zone of a claimed ClusterSet IP.
struct Reverse {
    target: Name,
    handler: Arc<Handler>,
    records: usize,
}

/// What one [`ZoneState::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Services rebuilt (the touched ones and those sharing their names).
    pub services: usize,
    /// Record sets written or removed, SOA included.
    pub sets: usize,
    /// Records now served, over all zones.
    pub records: usize,
    /// Entries now left out, over all services.
    pub skipped: usize,
    /// Why the rebuilt services' entries were left out.
    pub newly_skipped: Vec<Skipped>,
}

/// The served zones as what each group of services contributes; see the module docs.
pub struct ZoneState {
    settings: Arc<ZoneSettings>,
    serial: Option<u32>,
    slots: Vec<Slot>,
    groups: HashMap<GroupKey, Group>,
    group_of: HashMap<String, GroupKey>,
    /// ClusterSet IP → claims by hostname; the first owns the reverse zone.
    claims: BTreeMap<IpAddr, BTreeMap<String, Claim>>,
    reverse: BTreeMap<IpAddr, Reverse>,
    names: NameIndex,
    catalog: Arc<Catalog>,
    records: usize,
    group_skipped: usize,
    conflicts: usize,
}

impl ZoneState {
    /// The zones of `settings` with their apex records only, serving nothing until the
    /// first [`apply`](Self::apply).
    pub fn new(settings: Arc<ZoneSettings>) -> Self {
        let zones = apexes(&settings, 0);
        let names = NameIndex::new(&zones);
        let records = zones.iter().map(Zone::record_count).sum();
        let origins: Vec<LowerName> = zones.iter().map(|z| LowerName::new(z.origin())).collect();
        let slots = zones
            .into_iter()
            .enumerate()
            .map(|(i, zone)| Slot {
                lower: origins[i].clone(),
                origin: zone.origin().clone(),
                shadowed: origins[i + 1..].contains(&origins[i]),
                handler: handler(zone),
            })
            .collect();
        let mut state = Self {
            settings,
            serial: None,
            slots,
            groups: HashMap::new(),
            group_of: HashMap::new(),
            claims: BTreeMap::new(),
            reverse: BTreeMap::new(),
            names,
            catalog: Arc::new(Catalog::new()),
            records,
            group_skipped: 0,
            conflicts: 0,
        };
        state.catalog = Arc::new(state.build_catalog());
        state
    }

    /// Applies the change from the resources last applied to `resources` (`touched`:
    /// what [`Resources::touched_since`] says changed), with `version` as the snapshot
    /// version (the SOA serial), and swaps the result into `authority`.
    ///
    /// Blocks on the write locks of the zones it changes: call it off the async runtime
    /// (`spawn_blocking`).
    pub fn apply(
        &mut self,
        resources: &Resources,
        touched: &Touched,
        version: u64,
        authority: &Authority,
    ) -> Applied {
        let mut changes: Vec<Vec<(RrKey, Option<Arc<RecordSet>>)>> =
            (0..self.slots.len()).map(|_| Vec::new()).collect();
        let mut applied = Applied::default();

        // Which groups the touched services leave and join.
        let mut dirty = BTreeSet::new();
        for host in &touched.services {
            if let Some(key) = self.group_of.remove(host) {
                if let Some(group) = self.groups.get_mut(&key) {
                    group.members.remove(host);
                }
                dirty.insert(key);
            }
            if let Some(key) = group_key(resources, host) {
                self.group_of.insert(host.clone(), key.clone());
                self.groups
                    .entry(key.clone())
                    .or_default()
                    .members
                    .insert(host.clone());
                dirty.insert(key);
            }
        }

        // Rebuild those groups; keep the record sets that differ.
        let (mut withdrawn, mut claimed) = (Vec::new(), Vec::new());
        for key in dirty {
            let old = self.groups.remove(&key).unwrap_or_default();
            let services: Vec<GlobalService> = old
                .members
                .iter()
                .filter_map(|host| resources.service(host))
                .collect();
            applied.services += services.len();
            let new = build_group(old.members, &services, &self.settings);
            for ((slot, rr), set) in &old.sets {
                if !new.sets.contains_key(&(*slot, rr.clone())) {
                    self.records -= set.records_without_rrsigs().count();
                    changes[*slot].push((rr.clone(), None));
                }
            }
            for ((slot, rr), set) in &new.sets {
                let before = old.sets.get(&(*slot, rr.clone()));
                if before.is_some_and(|before| before == set) {
                    continue;
                }
                self.records -= before.map_or(0, |b| b.records_without_rrsigs().count());
                self.records += set.records_without_rrsigs().count();
                changes[*slot].push((rr.clone(), Some(set.clone())));
            }
            withdrawn.extend(old.claims);
            claimed.extend(new.claims.iter().cloned());
            self.group_skipped -= old.skipped.len();
            self.group_skipped += new.skipped.len();
            applied.newly_skipped.extend(new.skipped.iter().cloned());
            if !new.members.is_empty() {
                self.groups.insert(key, new);
            }
        }

        // Claims on ClusterSet IPs: every withdrawal first, as a service that moved to
        // another group withdraws and makes a claim under the same hostname.
        let mut dirty_vips = BTreeSet::new();
        for claim in withdrawn {
            if let Some(claims) = self.claims.get_mut(&claim.vip) {
                if claims.remove(&claim.hostname).is_some() && !claims.is_empty() {
                    self.conflicts -= 1;
                }
                if claims.is_empty() {
                    self.claims.remove(&claim.vip);
                }
            }
            dirty_vips.insert(claim.vip);
        }
        for claim in claimed {
            let claims = self.claims.entry(claim.vip).or_default();
            dirty_vips.insert(claim.vip);
            if claims.insert(claim.hostname.clone(), claim).is_none() && claims.len() > 1 {
                self.conflicts += 1;
            }
        }

        // Reverse zones whose owner changed.
        let mut catalog_changed = false;
        for vip in dirty_vips {
            let claims = self.claims.get(&vip);
            let want = claims.and_then(|c| c.values().next()).map(|c| &c.target);
            applied.newly_skipped.extend(
                claims
                    .into_iter()
                    .flat_map(|c| c.values().skip(1).map(conflict)),
            );
            if want == self.reverse.get(&vip).map(|r| &r.target) {
                continue;
            }
            let origin = LowerName::new(&Name::from(vip));
            if let Some(old) = self.reverse.remove(&vip) {
                self.records -= old.records;
                self.names.remove_zone(&origin);
            }
            if let Some(target) = want {
                let zone = reverse_zone(vip, target, &self.settings);
                self.names.insert_zone(&zone);
                let records = zone.record_count();
                self.records += records;
                self.reverse.insert(
                    vip,
                    Reverse {
                        target: target.clone(),
                        handler: handler(zone),
                        records,
                    },
                );
            }
            applied.sets += 1;
            catalog_changed = true;
        }

        // The serial of every zone but the reverse ones.
        let serial = version as u32;
        if self.serial != Some(serial) {
            self.serial = Some(serial);
            for (slot, changes) in self.slots.iter().zip(&mut changes) {
                let mut set =
                    RecordSet::with_ttl(slot.origin.clone(), RecordType::SOA, self.settings.ttl);
                set.add_rdata(soa(&slot.origin, &self.settings, serial));
                changes.push((
                    RrKey::new(slot.lower.clone(), RecordType::SOA),
                    Some(Arc::new(set)),
                ));
            }
        }

        applied.sets += changes.iter().map(Vec::len).sum::<usize>();
        if catalog_changed {
            self.catalog = Arc::new(self.build_catalog());
        }
        self.commit(changes, authority);
        applied.records = self.records;
        applied.skipped = self.skipped();
        applied
    }

    /// Writes `changes` into the live zones and the index, and swaps the new index (and
    /// catalog) in, all while holding the changed zones' write locks.
    fn commit(
        &mut self,
        changes: Vec<Vec<(RrKey, Option<Arc<RecordSet>>)>>,
        authority: &Authority,
    ) {
        let Self {
            slots,
            names,
            catalog,
            ..
        } = self;
        let mut locked = Vec::new();
        for (slot, changes) in slots.iter().zip(changes) {
            if changes.is_empty() {
                continue;
            }
            // Uncontended but for the queries that hickory answers, which hold it briefly.
            let mut records = futures::executor::block_on(slot.handler.records_mut());
            for (key, set) in changes {
                if !slot.shadowed {
                    names.set(&slot.lower, &key, set.as_deref());
                }
                match set {
                    Some(set) => records.insert(key, set),
                    None => records.remove(&key),
                };
            }
            locked.push(records);
        }
        authority.replace(ServedZones::new(catalog.clone(), names.clone()));
        drop(locked);
    }

    /// One handler per zone; like the full build, a later zone with the same origin
    /// replaces an earlier one.
    fn build_catalog(&self) -> Catalog {
        let mut catalog = Catalog::new();
        for slot in &self.slots {
            let handler: Arc<dyn ZoneHandler> = slot.handler.clone();
            catalog.upsert(slot.lower.clone(), vec![handler]);
        }
        for (vip, reverse) in &self.reverse {
            let handler: Arc<dyn ZoneHandler> = reverse.handler.clone();
            catalog.upsert(LowerName::new(&Name::from(*vip)), vec![handler]);
        }
        catalog
    }

    /// Entries left out: those of each group, and every claim on a ClusterSet IP after
    /// the first.
    pub fn skipped(&self) -> usize {
        self.group_skipped + self.conflicts
    }

    /// Records served over all zones.
    pub fn record_count(&self) -> usize {
        self.records
    }

    /// Every entry left out (O(services): for tests and diagnostics).
    pub fn skipped_entries(&self) -> Vec<Skipped> {
        let mut all: Vec<Skipped> = self
            .groups
            .values()
            .flat_map(|g| g.skipped.iter().cloned())
            .collect();
        all.extend(
            self.claims
                .values()
                .flat_map(|c| c.values().skip(1).map(conflict)),
        );
        all
    }

    /// Every served zone's origin and record sets as hickory holds them (O(records): for
    /// tests).
    #[cfg(test)]
    pub(crate) fn zones(&self) -> Vec<(Name, BTreeMap<RrKey, Arc<RecordSet>>)> {
        let read = |origin: &Name, handler: &Handler| {
            let records = futures::executor::block_on(handler.records()).clone();
            (origin.clone(), records)
        };
        let mut zones: Vec<_> = self
            .slots
            .iter()
            .map(|slot| read(&slot.origin, &slot.handler))
            .collect();
        zones.extend(
            self.reverse
                .iter()
                .map(|(vip, r)| read(&Name::from(*vip), &r.handler)),
        );
        zones
    }
}

/// The group of the service `host` in `resources`, if it is there.
fn group_key(resources: &Resources, host: &str) -> Option<GroupKey> {
    match resources.get(&service_name(host))?.body.as_ref()? {
        resource::Body::Service(svc) => Some((
            svc.name.to_ascii_lowercase(),
            svc.namespace.to_ascii_lowercase(),
        )),
        _ => None,
    }
}

/// What `services` (one group's, in snapshot order) contribute to every zone.
fn build_group(
    members: BTreeSet<String>,
    services: &[GlobalService],
    settings: &ZoneSettings,
) -> Group {
    let mut zones: Vec<Zone> = settings
        .origins
        .iter()
        .chain(settings.clusterset.iter())
        .cloned()
        .map(Zone::empty)
        .collect();
    let mut skipped = Vec::new();
    let claims = add_services(services, &mut zones, settings, &mut skipped);
    let sets = zones
        .into_iter()
        .enumerate()
        .flat_map(|(slot, zone)| {
            zone.into_records()
                .into_iter()
                .map(move |(key, set)| ((slot, key), Arc::new(set)))
        })
        .collect();
    Group {
        members,
        sets,
        skipped,
        claims,
    }
}

/// A hickory zone holding `zone`'s record sets as they are (what
/// `InMemoryZoneHandler::new` would insert record by record).
fn handler(zone: Zone) -> Arc<Handler> {
    let mut handler = Handler::empty(zone.origin().clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let records = handler.records_get_mut();
    for (key, set) in zone.into_records() {
        records.insert(key, Arc::new(set));
    }
    Arc::new(handler)
}

#[cfg(test)]
mod tests {
    use hickory_server::proto::rr::Record;
    use meridian_api::proto::{ClusterVip, Endpoint, ServicePort, Snapshot};
    use proptest::prelude::*;

    use super::*;
    use crate::metrics::Metrics;
    use crate::names::tests::{QUERY_TYPES, both, name, query_names, request, settings};
    use crate::zone::Zones;

    /// Record sets by origin (a later zone with the same origin hides an earlier one, as
    /// in the catalog), without hickory's per-set serial.
    type Contents = BTreeMap<Name, BTreeMap<RrKey, Vec<Record>>>;

    fn contents<'a>(
        zones: impl IntoIterator<Item = (Name, Vec<(RrKey, &'a RecordSet)>)>,
    ) -> Contents {
        zones
            .into_iter()
            .map(|(origin, sets)| {
                let sets = sets
                    .into_iter()
                    .map(|(key, set)| (key, set.records_without_rrsigs().cloned().collect()))
                    .collect();
                (origin, sets)
            })
            .collect()
    }

    fn full_contents(zones: &Zones) -> Contents {
        contents(zones.zones().iter().map(|zone| {
            let sets = zone.records().iter().map(|(k, s)| (k.clone(), s)).collect();
            (zone.origin().clone(), sets)
        }))
    }

    fn state_contents(state: &ZoneState) -> Contents {
        let zones = state.zones();
        contents(zones.iter().map(|(origin, records)| {
            let sets = records.iter().map(|(k, s)| (k.clone(), &**s)).collect();
            (origin.clone(), sets)
        }))
    }

    fn sorted(mut skipped: Vec<Skipped>) -> Vec<(String, String)> {
        let mut v: Vec<_> = skipped.drain(..).map(|s| (s.service, s.reason)).collect();
        v.sort();
        v
    }

    /// One generated service. Small pools of names, namespaces, VIPs, pods and addresses,
    /// so that services collide: duplicates, case variants, shared ClusterSet IPs, invalid
    /// labels and VIPs, headless sets with repeated addresses.
    fn service() -> impl Strategy<Value = GlobalService> {
        let names = prop::sample::select(vec!["a", "b", "A", "c-1", "*"]);
        let namespaces = prop::sample::select(vec!["ns", "NS", "x"]);
        let vips = prop::sample::select(vec!["10.96.0.1", "10.96.0.2", "fd00::1", "", "bad"]);
        let endpoint = (
            prop::sample::select(vec!["east", "west", "b_d"]),
            prop::sample::select(vec!["p-0", "p-1", ""]),
            prop::sample::select(vec!["10.1.0.1", "10.1.0.2", "fd01::1", "nope"]),
            any::<bool>(),
        )
            .prop_map(|(cluster, pod, address, ready)| Endpoint {
                cluster: cluster.into(),
                pod: pod.into(),
                address: address.into(),
                ready,
                ..Endpoint::default()
            });
        let port = (
            prop::sample::select(vec!["http", "grpc", "", "bad_name"]),
            prop::sample::select(vec![80_u32, 9090, 0, 70_000]),
        )
            .prop_map(|(name, port)| ServicePort {
                name: name.into(),
                port,
                ..ServicePort::default()
            });
        let pinned = (
            prop::sample::select(vec!["east", "west", "a.b"]),
            prop::sample::select(vec!["10.98.0.1", "fd02::1", "999.1.1.1"]),
        )
            .prop_map(|(cluster, vip)| ClusterVip {
                cluster: cluster.into(),
                vip: vip.into(),
                ports: Vec::new(),
            });
        (
            names,
            namespaces,
            vips,
            any::<bool>(),
            prop::collection::vec(endpoint, 0..5),
            prop::collection::vec(port, 0..3),
            prop::collection::vec(pinned, 0..3),
        )
            .prop_map(
                |(name, namespace, vip, headless, mut endpoints, ports, cluster_vips)| {
                    endpoints
                        .sort_by(|a, b| (&a.cluster, &a.address).cmp(&(&b.cluster, &b.address)));
                    GlobalService {
                        name: name.into(),
                        namespace: namespace.into(),
                        vip: vip.into(),
                        headless,
                        endpoints,
                        ports,
                        cluster_vips,
                        ..GlobalService::default()
                    }
                },
            )
    }

    /// One change: set the service at a hostname, remove it, or only a new version.
    #[derive(Debug, Clone)]
    enum Change {
        Set(usize, Box<GlobalService>),
        Remove(usize),
        Version,
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            4 => (0..6_usize, service()).prop_map(|(host, svc)| Change::Set(host, Box::new(svc))),
            2 => (0..6_usize).prop_map(Change::Remove),
            1 => Just(Change::Version),
        ]
    }

    fn settings_with_duplicate_origin() -> ZoneSettings {
        let mut settings = settings();
        // A `--zone` equal to the clusterset zone: the later one is served.
        settings.origins.push(name("clusterset.local."));
        settings
    }

    /// Asserts the state serves what a full build of `resources` at `version` serves:
    /// the same record sets in every zone, the same entries left out, the same count.
    fn assert_same_zones(state: &ZoneState, full: &Zones) -> Result<(), TestCaseError> {
        prop_assert_eq!(state_contents(state), full_contents(full));
        prop_assert_eq!(state.record_count(), full.record_count());
        prop_assert_eq!(state.skipped(), full.skipped().len());
        prop_assert_eq!(
            sorted(state.skipped_entries()),
            sorted(full.skipped().to_vec())
        );
        Ok(())
    }

    fn full_build(resources: &Resources, version: u64, settings: &ZoneSettings) -> Zones {
        let snapshot = Snapshot {
            version,
            ..resources.to_snapshot()
        };
        Zones::build(&snapshot, settings)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// A state fed only changes (successive resources, each applied as what
        /// `touched_since` says changed) ends in exactly the zones a full build of the
        /// final snapshot gives, and answers every name of every step's zones with the
        /// same bytes, through the index and through hickory.
        #[test]
        fn deltas_end_where_the_full_build_is(
            changes in prop::collection::vec(change(), 1..24),
            duplicate_origin in any::<bool>(),
        ) {
            let settings = Arc::new(if duplicate_origin {
                settings_with_duplicate_origin()
            } else {
                settings()
            });
            let authority = Authority::new(&[], Arc::new(Metrics::new()));
            let mut state = ZoneState::new(settings.clone());
            let mut resources = Resources::new();
            let mut version = 1_u64;
            let mut names = Vec::new();
            for change in &changes {
                let before = resources.clone();
                match change {
                    Change::Set(host, svc) => {
                        let svc = GlobalService {
                            hostname: format!("h{host}.global"),
                            ..*svc.clone()
                        };
                        resources.set_service(&svc);
                    }
                    Change::Remove(host) => {
                        resources.remove_service(&format!("h{host}.global"));
                    }
                    Change::Version => {}
                }
                version += 1;
                let touched = resources.touched_since(&before);
                state.apply(&resources, &touched, version, &authority);
                let full = full_build(&resources, version, &settings);
                assert_same_zones(&state, &full)?;
                names.extend(query_names(full.zones()));
            }
            names.sort();
            names.dedup();

            let full = full_build(&resources, version, &settings);
            let reference = Authority::new(&[], Arc::new(Metrics::new()));
            reference.replace(full.into_catalog().expect("catalog"));
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let (Some(ours), Some(theirs)) = (authority.served(), reference.served()) else {
                return Err(TestCaseError::fail("nothing served"));
            };
            runtime.block_on(async {
                for qname in &names {
                    for (i, query_type) in QUERY_TYPES.iter().enumerate() {
                        let request = request(qname, *query_type, [None, Some(0)][i % 2]);
                        let (index, hickory) = both(&authority, &ours, &request).await;
                        let (full_index, full_hickory) = both(&reference, &theirs, &request).await;
                        prop_assert_eq!(&index, &full_index, "{} {}", qname, query_type);
                        prop_assert_eq!(&hickory, &full_hickory, "{} {}", qname, query_type);
                    }
                }
                Ok(())
            })?;
        }
    }

    #[test]
    fn one_endpoint_change_rewrites_only_that_services_sets() {
        let settings = Arc::new(settings());
        let authority = Authority::new(&[], Arc::new(Metrics::new()));
        let mut state = ZoneState::new(settings);
        let snapshot = crate::names::tests::snapshot(40);
        let first = Resources::from_snapshot(&snapshot);
        let all = first.touched_since(&Resources::new());
        let applied = state.apply(&first, &all, 1, &authority);
        assert_eq!(applied.services, 40);

        // svc-4 is headless: flipping one endpoint changes its clusterset names.
        let mut svc = first.service("svc-4.ns-1.global").expect("svc-4");
        assert!(svc.headless);
        svc.endpoints[0].ready = false;
        let mut second = first.clone();
        second.set_service(&svc);
        let touched = second.touched_since(&first);
        let applied = state.apply(&second, &touched, 2, &authority);
        assert_eq!(applied.services, 1);
        // Its A set, the endpoint's host name, its two SRV sets; and the three SOAs.
        assert_eq!(applied.sets, 4 + 3, "{applied:?}");
    }
}
