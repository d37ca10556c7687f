//! From what the members' reflectors hold to what MCS objects should say: which Services of
//! which clusters are constituents of an exported service, the resolved ServiceImport (type,
//! ports, session affinity, exporting clusters) and the conditions of the own cluster's
//! ServiceExports.
//!
//! A pure function, so it is tested without an API server, and every cluster's controller
//! resolves the same conflicts the same way: by the spec's rule, the oldest export wins
//! (the ServiceExport's creation time; for a Service exported by Meridian's label, the
//! Service's), ties broken by cluster name.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Service, SessionAffinityConfig};
use k8s_openapi::jiff::Timestamp;

use crate::catalog::{Catalog, MemberInput, ServiceKey, is_exported, port_protocol};
use crate::mcs::types::{ImportPort, ImportType};

/// Why a ServiceExport does not export anything (`Valid` False).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// No Service of that namespace and name.
    NoService,
    /// The Service is of type ExternalName.
    InvalidServiceType,
}

impl Invalid {
    /// The condition reason.
    pub fn reason(self) -> &'static str {
        match self {
            Invalid::NoService => "NoService",
            Invalid::InvalidServiceType => "InvalidServiceType",
        }
    }
}

/// A property on which the constituents of one exported service disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Conflict {
    /// A port of the same name with another number, protocol or application protocol.
    Port,
    /// Headless in one cluster, not in another.
    Type,
    /// Another `sessionAffinity`.
    SessionAffinity,
    /// Another `sessionAffinityConfig`.
    SessionAffinityConfig,
}

impl Conflict {
    /// The condition reason.
    pub fn reason(self) -> &'static str {
        match self {
            Conflict::Port => "PortConflict",
            Conflict::Type => "TypeConflict",
            Conflict::SessionAffinity => "SessionAffinityConflict",
            Conflict::SessionAffinityConfig => "SessionAffinityConfigConflict",
        }
    }
}

/// One cluster's Service as a constituent of an exported service.
#[derive(Debug, Clone, PartialEq)]
struct Constituent {
    cluster: String,
    since: Option<Timestamp>,
    headless: bool,
    ports: Vec<ImportPort>,
    session_affinity: Option<String>,
    session_affinity_config: Option<SessionAffinityConfig>,
}

/// The resolved, cluster-independent content of one ServiceImport.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedImport {
    /// Headless or ClusterSetIP: the oldest export's.
    pub type_: ImportType,
    /// Union of the ports by name; a name defined differently keeps the oldest definition.
    pub ports: Vec<ImportPort>,
    /// The oldest export's session affinity.
    pub session_affinity: Option<String>,
    /// The oldest export's session affinity configuration.
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// The exporting clusters, sorted.
    pub clusters: BTreeSet<String>,
    /// The cluster whose export won (the oldest).
    pub oldest: String,
    /// Disagreements between the constituents.
    pub conflicts: BTreeSet<Conflict>,
}

/// The state of one ServiceExport of the own cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportState {
    /// Not exported, and why.
    Invalid(Invalid),
    /// A constituent of the exported service of the same key.
    Valid,
}

/// Everything MCS objects are written from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct McsView {
    /// One ServiceImport per exported service.
    pub imports: BTreeMap<ServiceKey, ResolvedImport>,
    /// The own cluster's ServiceExports, with their state.
    pub exports: BTreeMap<ServiceKey, ExportState>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<ServiceKey> {
    Some(ServiceKey::new(
        meta.namespace.as_deref()?,
        meta.name.as_deref()?,
    ))
}

/// Whether a Service is headless (`clusterIP: None`).
pub(crate) fn is_headless(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip == "None")
}

/// Whether a Service is of type ExternalName (never exported by MCS).
pub(crate) fn is_external_name(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_some_and(|t| t == "ExternalName")
}

fn import_ports(svc: &Service) -> Vec<ImportPort> {
    let mut ports: Vec<ImportPort> = svc
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| ImportPort {
            name: p.name.clone().unwrap_or_default(),
            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
            app_protocol: p.app_protocol.clone(),
            port: p.port,
        })
        .collect();
    ports.sort();
    ports
}

impl McsView {
    /// Resolves every exported service of `members`; `local` names the own cluster, whose
    /// ServiceExports get a state.
    pub fn build(members: &[MemberInput], local: &str) -> McsView {
        let mut constituents: BTreeMap<ServiceKey, Vec<Constituent>> = BTreeMap::new();
        let mut exports = BTreeMap::new();
        for m in members {
            let services: BTreeMap<ServiceKey, &Service> = m
                .services
                .iter()
                .filter_map(|s| Some((key_of(&s.metadata)?, s.as_ref())))
                .collect();
            let mut exported: BTreeMap<ServiceKey, Option<Timestamp>> = BTreeMap::new();
            for se in &m.service_exports {
                let Some(key) = key_of(&se.metadata) else {
                    continue;
                };
                let state = match services.get(&key) {
                    None => ExportState::Invalid(Invalid::NoService),
                    Some(s) if is_external_name(s) => {
                        ExportState::Invalid(Invalid::InvalidServiceType)
                    }
                    Some(_) => {
                        exported.insert(
                            key.clone(),
                            se.metadata.creation_timestamp.as_ref().map(|t| t.0),
                        );
                        ExportState::Valid
                    }
                };
                if m.cluster == local {
                    exports.insert(key, state);
                }
            }
            for (key, svc) in &services {
                if is_exported(svc) && !is_external_name(svc) && !exported.contains_key(key) {
                    exported.insert(
                        key.clone(),
                        svc.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    );
                }
            }
            for (key, since) in exported {
                let Some(svc) = services.get(&key) else {
                    continue;
                };
                let spec = svc.spec.as_ref();
                constituents.entry(key).or_default().push(Constituent {
                    cluster: m.cluster.clone(),
                    since,
                    headless: is_headless(svc),
                    ports: import_ports(svc),
                    session_affinity: spec.and_then(|s| s.session_affinity.clone()),
                    session_affinity_config: spec.and_then(|s| s.session_affinity_config.clone()),
                });
            }
        }
        let imports = constituents
            .into_iter()
            .filter_map(|(key, c)| Some((key, resolve(c)?)))
            .collect();
        McsView { imports, exports }
    }
}

impl McsView {
    /// The catalog takes a port defined differently by two clusters from the first cluster
    /// by name; MCS says the oldest export's definition is in use. Applies the latter to the
    /// TCP ports of conflicting services, so the VIP serves what the ServiceImport says.
    pub fn apply_ports(&self, catalog: &mut Catalog) {
        for (key, import) in &self.imports {
            if !import.conflicts.contains(&Conflict::Port) {
                continue;
            }
            let Some(entry) = catalog.services.get_mut(key) else {
                continue;
            };
            for p in &mut std::sync::Arc::make_mut(entry).ports {
                let resolved = import
                    .ports
                    .iter()
                    .find(|ip| ip.name == p.name && ip.protocol == "TCP");
                if let Some(ip) = resolved
                    && let Ok(number) = u32::try_from(ip.port)
                {
                    p.port = number;
                    p.protocol = port_protocol(&ip.name, ip.app_protocol.as_deref());
                }
            }
        }
    }
}

/// The spec's conflict resolution: the oldest constituent's properties win; a port name is
/// added by the first (oldest) constituent that has it.
fn resolve(mut constituents: Vec<Constituent>) -> Option<ResolvedImport> {
    // No creation time sorts last: it is not known to be older than anything.
    constituents.sort_by(|a, b| {
        (a.since.is_none(), a.since, &a.cluster).cmp(&(b.since.is_none(), b.since, &b.cluster))
    });
    let oldest = constituents.first()?.clone();
    let mut conflicts = BTreeSet::new();
    let mut ports: BTreeMap<String, ImportPort> = BTreeMap::new();
    for c in &constituents {
        if c.headless != oldest.headless {
            conflicts.insert(Conflict::Type);
        }
        if c.session_affinity.as_deref().unwrap_or("None")
            != oldest.session_affinity.as_deref().unwrap_or("None")
        {
            conflicts.insert(Conflict::SessionAffinity);
        }
        if c.session_affinity_config != oldest.session_affinity_config {
            conflicts.insert(Conflict::SessionAffinityConfig);
        }
        for p in &c.ports {
            match ports.get(&p.name) {
                Some(kept) if kept != p => {
                    conflicts.insert(Conflict::Port);
                }
                Some(_) => {}
                None => {
                    ports.insert(p.name.clone(), p.clone());
                }
            }
        }
    }
    let mut ports: Vec<ImportPort> = ports.into_values().collect();
    ports.sort();
    Some(ResolvedImport {
        type_: if oldest.headless {
            ImportType::Headless
        } else {
            ImportType::ClusterSetIP
        },
        ports,
        session_affinity: oldest.session_affinity.clone(),
        session_affinity_config: oldest.session_affinity_config.clone(),
        clusters: constituents.iter().map(|c| c.cluster.clone()).collect(),
        oldest: oldest.cluster,
        conflicts,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;
    use crate::fixtures::service;
    use crate::mcs::ExportMeta;
    use kube::core::PartialObjectMetaExt;

    fn export(ns: &str, name: &str, age: i64) -> Arc<ExportMeta> {
        let se = ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            creation_timestamp: Some(Time(
                Timestamp::from_second(1_000_000 - age).expect("in range"),
            )),
            ..ObjectMeta::default()
        };
        Arc::new(se.into_response_partial())
    }

    fn member(cluster: &str, svc: Service, age: i64) -> MemberInput {
        let key_ns = svc.metadata.namespace.clone().unwrap_or_default();
        let key_name = svc.metadata.name.clone().unwrap_or_default();
        let mut m = MemberInput::test(cluster).with_service(svc);
        m.service_exports.push(export(&key_ns, &key_name, age));
        m
    }

    fn key() -> ServiceKey {
        ServiceKey::new("demo", "hello")
    }

    #[test]
    fn a_service_export_puts_an_unlabelled_service_into_the_catalog() {
        let m = member(
            "a",
            service("demo", "hello", &[("tcp", 42, None)], false),
            1,
        );
        let cat = Catalog::build(std::slice::from_ref(&m));
        assert!(
            cat.services.contains_key(&key()),
            "exported by the ServiceExport"
        );
        let without = MemberInput::test("a").with_service(service(
            "demo",
            "hello",
            &[("tcp", 42, None)],
            false,
        ));
        assert!(Catalog::build(&[without]).services.is_empty());
        let view = McsView::build(&[m], "a");
        assert_eq!(view.exports[&key()], ExportState::Valid);
        assert_eq!(view.imports[&key()].type_, ImportType::ClusterSetIP);
    }

    #[test]
    fn ports_are_the_union_by_name() {
        let a = member(
            "a",
            service("demo", "hello", &[("tcp", 42, None)], false),
            2,
        );
        let mut b_svc = service(
            "demo",
            "hello",
            &[("tcp", 42, None), ("stcp", 142, None)],
            false,
        );
        b_svc
            .spec
            .as_mut()
            .expect("spec")
            .ports
            .as_mut()
            .expect("ports")[1]
            .protocol = Some("SCTP".into());
        let b = member("b", b_svc, 1);
        let view = McsView::build(&[a, b], "a");
        let import = &view.imports[&key()];
        let ports: Vec<(&str, &str, i32)> = import
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.protocol.as_str(), p.port))
            .collect();
        assert_eq!(ports, [("stcp", "SCTP", 142), ("tcp", "TCP", 42)]);
        assert!(import.conflicts.is_empty());
        assert_eq!(import.clusters.iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn the_oldest_export_wins_a_port_conflict_whatever_the_cluster_names() {
        // `b` exported first: its port 43 wins over `a`'s 42.
        let a = member(
            "a",
            service("demo", "hello", &[("tcp", 42, None)], false),
            1,
        );
        let b = member(
            "b",
            service("demo", "hello", &[("tcp", 43, None)], false),
            5,
        );
        let view = McsView::build(&[a, b], "a");
        let import = &view.imports[&key()];
        assert_eq!(import.oldest, "b");
        assert_eq!(
            import.ports.iter().map(|p| p.port).collect::<Vec<_>>(),
            [43]
        );
        assert_eq!(import.conflicts, BTreeSet::from([Conflict::Port]));
        // The catalog (what the gateway listens on) follows the same rule.
        let mut cat = Catalog::build(&[a_input(), b_input()]);
        assert_eq!(
            cat.services[&key()].ports[0].port,
            42,
            "first by cluster name"
        );
        McsView::build(&[a_input(), b_input()], "a").apply_ports(&mut cat);
        assert_eq!(
            cat.services[&key()].ports[0].port,
            43,
            "the oldest export's"
        );
    }

    fn a_input() -> MemberInput {
        member(
            "a",
            service("demo", "hello", &[("tcp", 42, None)], false),
            1,
        )
    }

    fn b_input() -> MemberInput {
        member(
            "b",
            service("demo", "hello", &[("tcp", 43, None)], false),
            5,
        )
    }

    #[test]
    fn type_and_session_affinity_conflicts_keep_the_oldest() {
        let a = member(
            "a",
            service("demo", "hello", &[("tcp", 42, None)], false),
            5,
        );
        let mut headless = service("demo", "hello", &[("tcp", 42, None)], false);
        let spec = headless.spec.as_mut().expect("spec");
        spec.cluster_ip = Some("None".into());
        spec.session_affinity = Some("ClientIP".into());
        let b = member("b", headless, 1);
        let view = McsView::build(&[a, b], "b");
        let import = &view.imports[&key()];
        assert_eq!(import.type_, ImportType::ClusterSetIP);
        assert_eq!(import.session_affinity, None);
        assert_eq!(
            import.conflicts,
            BTreeSet::from([Conflict::Type, Conflict::SessionAffinity])
        );
    }

    #[test]
    fn external_name_and_missing_services_are_invalid_and_not_imported() {
        let mut ext = service("demo", "hello", &[("tcp", 42, None)], false);
        ext.spec.as_mut().expect("spec").type_ = Some("ExternalName".into());
        let a = member("a", ext, 1);
        let mut b = MemberInput::test("a");
        b.service_exports.push(export("demo", "ghost", 1));
        let view = McsView::build(std::slice::from_ref(&a), "a");
        assert_eq!(
            view.exports[&key()],
            ExportState::Invalid(Invalid::InvalidServiceType)
        );
        assert!(view.imports.is_empty());
        assert!(Catalog::build(&[a]).services.is_empty());
        let view = McsView::build(&[b], "a");
        assert_eq!(
            view.exports[&ServiceKey::new("demo", "ghost")],
            ExportState::Invalid(Invalid::NoService)
        );
        assert!(view.imports.is_empty());
    }

    #[test]
    fn only_the_own_clusters_exports_get_a_state() {
        let a = member(
            "a",
            service("demo", "hello", &[("tcp", 42, None)], false),
            1,
        );
        let view = McsView::build(&[a], "b");
        assert!(view.exports.is_empty());
        assert_eq!(view.imports.len(), 1);
    }
}
