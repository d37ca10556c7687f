//! What the controller keeps of the objects it reflects from member clusters: only the fields
//! the catalog and the aggregator read. Applied in each reflector's `modify`, before the
//! store, so a member cannot grow every controller's memory with annotations, managed fields,
//! owner references or node status (4,000 pods with 256 KiB annotations are 1 GiB unstripped;
//! `cargo bench -p meridian-controller --bench reflected_memory` measures it).
//!
//! Each function is an allow-list: it rebuilds the object from the fields it names, so a
//! field added to the API later is dropped too. A new read in [`crate::catalog`] needs its
//! field kept here; `stripping_does_not_change_the_catalog` below catches a forgotten one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, LoadBalancerIngress,
    LoadBalancerStatus, Node, ObjectReference, Pod, PodIP, PodStatus, Service, ServicePort,
    ServiceSpec, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{self as discovery, EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::catalog::{
    EXPORT_LABEL, LEGACY_REGION_LABEL, LEGACY_ZONE_LABEL, REGION_LABEL, SERVICE_NAME_LABEL,
    SUBZONE_LABEL, ZONE_LABEL,
};

/// Prefix of Meridian's own annotations on exported Services (e.g.
/// `meridian.io/allow-external-endpoints`), the only annotations kept.
pub(crate) const ANNOTATION_PREFIX: &str = "meridian.io/";

/// Identity (name, namespace) plus the labels and annotations `keep` accepts; everything
/// else of `m` goes, the uid and resourceVersion too (the store keys objects by namespace
/// and name; the watcher has taken the resourceVersion before the strip runs).
fn meta(
    m: &mut ObjectMeta,
    keep_label: impl Fn(&str) -> bool,
    keep_annotation: impl Fn(&str) -> bool,
) {
    let filter = |map: Option<BTreeMap<String, String>>, keep: &dyn Fn(&str) -> bool| {
        let kept: BTreeMap<String, String> =
            map.into_iter().flatten().filter(|(k, _)| keep(k)).collect();
        (!kept.is_empty()).then_some(kept)
    };
    *m = ObjectMeta {
        name: m.name.take(),
        namespace: m.namespace.take(),
        labels: filter(m.labels.take(), &keep_label),
        annotations: filter(m.annotations.take(), &keep_annotation),
        ..ObjectMeta::default()
    };
}

fn none(_: &str) -> bool {
    false
}

/// The reference an endpoint makes to its pod: kind, namespace, name.
fn target_ref(r: Option<ObjectReference>) -> Option<ObjectReference> {
    r.map(|r| ObjectReference {
        kind: r.kind,
        namespace: r.namespace,
        name: r.name,
        ..ObjectReference::default()
    })
}

fn service_ports(spec: Option<ServiceSpec>) -> Option<ServiceSpec> {
    spec.map(|s| ServiceSpec {
        ports: s.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| ServicePort {
                    name: p.name,
                    port: p.port,
                    protocol: p.protocol,
                    app_protocol: p.app_protocol,
                    ..ServicePort::default()
                })
                .collect()
        }),
        ..ServiceSpec::default()
    })
}

/// An exported Service: identity, the export label, Meridian's annotations, its ports.
pub(crate) fn service(s: &mut Service) {
    // The creation time orders MCS exports; type, headlessness and session affinity are
    // what ServiceImports carry (see `crate::mcs`).
    let created = s.metadata.creation_timestamp.take();
    let spec = s.spec.take();
    s.spec = service_ports(spec.clone()).map(|ports| ServiceSpec {
        cluster_ip: spec
            .as_ref()
            .and_then(|sp| sp.cluster_ip.clone())
            .filter(|ip| ip == "None"),
        type_: spec.as_ref().and_then(|sp| sp.type_.clone()),
        session_affinity: spec.as_ref().and_then(|sp| sp.session_affinity.clone()),
        session_affinity_config: spec.and_then(|sp| sp.session_affinity_config),
        ..ports
    });
    meta(
        &mut s.metadata,
        |k| k == EXPORT_LABEL,
        |k| k.starts_with(ANNOTATION_PREFIX),
    );
    s.metadata.creation_timestamp = created;
    s.status = None;
}

/// An MCS ServiceExport: its identity and creation time (the oldest export wins conflicts).
pub(crate) fn service_export(s: &mut crate::mcs::ExportMeta) {
    let created = s.metadata.creation_timestamp.take();
    meta(&mut s.metadata, none, none);
    s.metadata.creation_timestamp = created;
}

/// The member's gateway Service: its ports and LoadBalancer addresses.
pub(crate) fn gateway_service(s: &mut Service) {
    meta(&mut s.metadata, none, none);
    s.spec = service_ports(s.spec.take());
    let ingress = s
        .status
        .take()
        .and_then(|st| st.load_balancer)
        .and_then(|lb| lb.ingress);
    s.status = ingress.map(|ingress| ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: Some(
                ingress
                    .into_iter()
                    .map(|i| LoadBalancerIngress {
                        ip: i.ip,
                        hostname: i.hostname,
                        ..LoadBalancerIngress::default()
                    })
                    .collect(),
            ),
        }),
        ..ServiceStatus::default()
    });
}

/// An EndpointSlice: its Service label, address type, ports, and per endpoint the addresses,
/// conditions, node, zone and pod reference.
pub(crate) fn endpoint_slice(s: &mut EndpointSlice) {
    meta(&mut s.metadata, |k| k == SERVICE_NAME_LABEL, none);
    s.ports = s.ports.take().map(|ports| {
        ports
            .into_iter()
            .map(|p| discovery::EndpointPort {
                name: p.name,
                port: p.port,
                protocol: p.protocol,
                ..discovery::EndpointPort::default()
            })
            .collect()
    });
    s.endpoints = std::mem::take(&mut s.endpoints)
        .into_iter()
        .map(|e| discovery::Endpoint {
            addresses: e.addresses,
            conditions: e.conditions.map(|c| EndpointConditions {
                // `serving` is not read: readiness is `ready` and not `terminating`.
                ready: c.ready,
                terminating: c.terminating,
                ..EndpointConditions::default()
            }),
            node_name: e.node_name,
            zone: e.zone,
            target_ref: target_ref(e.target_ref),
            ..discovery::Endpoint::default()
        })
        .collect();
}

/// A core/v1 Endpoints: per subset the ports and the (not) ready addresses with their node and
/// pod reference.
pub(crate) fn endpoints(e: &mut Endpoints) {
    meta(&mut e.metadata, none, none);
    let addresses = |list: Option<Vec<EndpointAddress>>| {
        list.map(|l| {
            l.into_iter()
                .map(|a| EndpointAddress {
                    ip: a.ip,
                    node_name: a.node_name,
                    target_ref: target_ref(a.target_ref),
                    ..EndpointAddress::default()
                })
                .collect()
        })
    };
    e.subsets = e.subsets.take().map(|subsets| {
        subsets
            .into_iter()
            .map(|s| EndpointSubset {
                addresses: addresses(s.addresses),
                not_ready_addresses: addresses(s.not_ready_addresses),
                ports: s.ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|p| EndpointPort {
                            name: p.name,
                            port: p.port,
                            protocol: p.protocol,
                            ..EndpointPort::default()
                        })
                        .collect()
                }),
            })
            .collect()
    });
}

/// Whether a node label carries locality.
fn is_locality_label(k: &str) -> bool {
    [
        REGION_LABEL,
        ZONE_LABEL,
        SUBZONE_LABEL,
        LEGACY_REGION_LABEL,
        LEGACY_ZONE_LABEL,
    ]
    .contains(&k)
}

/// A Node: its name and locality labels (no spec, no status with its image list).
pub(crate) fn node(n: &mut Node) {
    meta(&mut n.metadata, is_locality_label, none);
    n.spec = None;
    n.status = None;
}

/// A Pod: identity, labels (subsets select on them), `status.podIP`/`podIPs` and
/// `status.phase` (endpoint addresses are checked against them, see [`crate::targets`]); no
/// spec, nothing else of the status.
pub fn pod(p: &mut Pod) {
    meta(&mut p.metadata, |_| true, none);
    p.spec = None;
    p.status = p.status.take().and_then(|s| {
        let pod_ips = s.pod_ips.map(|ips| {
            ips.into_iter()
                .map(|i| PodIP { ip: i.ip })
                .collect::<Vec<_>>()
        });
        // `podIP` is `podIPs[0]` wherever the server has `podIPs`: kept only where it adds.
        let pod_ip = s
            .pod_ip
            .filter(|ip| !pod_ips.iter().flatten().any(|p: &PodIP| &p.ip == ip));
        (pod_ip.is_some() || pod_ips.is_some() || s.phase.is_some()).then(|| PodStatus {
            phase: s.phase,
            pod_ip,
            pod_ips,
            ..PodStatus::default()
        })
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference};

    use super::*;
    use crate::catalog::{Catalog, EndpointObjects, MemberInput, service_locality};
    use crate::fixtures;

    const BIG: usize = 64 * 1024;

    /// Everything a member can pile onto an object's metadata.
    fn bloat(m: &mut ObjectMeta) {
        m.annotations.get_or_insert_default().insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "x".repeat(BIG),
        );
        m.labels
            .get_or_insert_default()
            .insert("team".into(), "payments".into());
        m.owner_references = Some(vec![OwnerReference {
            name: "rs".into(),
            ..OwnerReference::default()
        }]);
        m.managed_fields = Some(vec![ManagedFieldsEntry::default(); 3]);
        m.finalizers = Some(vec!["example.com/hold".into()]);
        m.generate_name = Some("x-".into());
        m.uid = Some("0f8e7d6c-0000-4000-8000-000000000001".into());
        m.resource_version = Some("12345".into());
    }

    fn bloated(input: &MemberInput) -> MemberInput {
        let mut out = input.clone();
        let each = |m: &mut ObjectMeta| bloat(m);
        out.services = input
            .services
            .iter()
            .map(|s| {
                let mut s = (**s).clone();
                each(&mut s.metadata);
                s.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert("meridian.io/allow-external-endpoints".into(), "true".into());
                Arc::new(s)
            })
            .collect();
        out.nodes = input
            .nodes
            .iter()
            .map(|n| {
                let mut n = (**n).clone();
                each(&mut n.metadata);
                n.status = Some(Default::default());
                Arc::new(n)
            })
            .collect();
        out.pods = input
            .pods
            .iter()
            .map(|p| {
                let mut p = (**p).clone();
                each(&mut p.metadata);
                p.spec = Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        args: Some(vec!["x".repeat(BIG)]),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                });
                let status = p.status.get_or_insert_default();
                status.message = Some("m".repeat(BIG));
                status.phase = Some("Running".into());
                status.host_ip = Some("192.168.0.10".into());
                Arc::new(p)
            })
            .collect();
        out.endpoints = match &input.endpoints {
            EndpointObjects::Slices(v) => EndpointObjects::Slices(
                v.iter()
                    .map(|s| {
                        let mut s = (**s).clone();
                        each(&mut s.metadata);
                        for e in &mut s.endpoints {
                            e.hostname = Some("h".repeat(63));
                            e.deprecated_topology = Some([("k".into(), "v".repeat(BIG))].into());
                            if let Some(r) = e.target_ref.as_mut() {
                                r.field_path = Some("spec".into());
                            }
                        }
                        Arc::new(s)
                    })
                    .collect(),
            ),
            EndpointObjects::Endpoints(v) => EndpointObjects::Endpoints(
                v.iter()
                    .map(|e| {
                        let mut e = (**e).clone();
                        each(&mut e.metadata);
                        Arc::new(e)
                    })
                    .collect(),
            ),
        };
        out
    }

    fn stripped(input: &MemberInput) -> MemberInput {
        fn all<K: Clone>(v: &[Arc<K>], f: fn(&mut K)) -> Vec<Arc<K>> {
            v.iter()
                .map(|o| {
                    let mut o = (**o).clone();
                    f(&mut o);
                    Arc::new(o)
                })
                .collect()
        }
        let mut out = input.clone();
        out.services = all(&input.services, service);
        out.nodes = all(&input.nodes, node);
        out.pods = all(&input.pods, pod);
        out.endpoints = match &input.endpoints {
            EndpointObjects::Slices(v) => EndpointObjects::Slices(all(v, endpoint_slice)),
            EndpointObjects::Endpoints(v) => EndpointObjects::Endpoints(all(v, endpoints)),
        };
        out
    }

    fn members() -> Vec<MemberInput> {
        let a = MemberInput::test("a")
            .with_node("n1", "eu", "eu-1", "s1")
            .with_service(fixtures::service(
                "demo",
                "echo",
                &[("http", 80, Some("http"))],
                true,
            ))
            .with_slice(fixtures::slice(
                "demo",
                "echo",
                &[("http", 8080)],
                &[
                    ("10.0.0.1", true, "n1", "p1"),
                    ("10.0.0.2", false, "n1", "p2"),
                ],
            ))
            .with_pod("demo", "p1", &[("version", "v1")]);
        let b = MemberInput::test("b")
            .with_node("m1", "us", "us-1", "")
            .with_service(fixtures::service(
                "demo",
                "echo",
                &[("grpc", 90, None)],
                true,
            ))
            .with_endpoints(fixtures::endpoints(
                "demo",
                "echo",
                &[("grpc", 9090)],
                &[
                    ("10.1.0.1", true, "m1", "q1"),
                    ("10.1.0.2", false, "m1", "q2"),
                ],
            ))
            .with_pod("demo", "q1", &[("version", "v2")]);
        vec![bloated(&a), bloated(&b)]
    }

    /// The catalog is the same from stripped objects: nothing it reads is dropped.
    #[test]
    fn stripping_does_not_change_the_catalog() {
        let full = members();
        let slim: Vec<MemberInput> = full.iter().map(stripped).collect();
        assert_eq!(Catalog::build(&slim), Catalog::build(&full));
        for (f, s) in full.iter().zip(&slim) {
            assert_eq!(
                service_locality(s, "demo", "echo"),
                service_locality(f, "demo", "echo")
            );
        }
        let catalog = Catalog::build(&slim);
        assert_eq!(catalog.endpoint_count(), 4, "{catalog:?}");
    }

    #[test]
    fn reflected_objects_keep_only_what_is_read() {
        let full = members();
        let slim = stripped(&full[0]);
        let svc = &slim.services[0];
        assert_eq!(
            svc.metadata.labels,
            Some([(EXPORT_LABEL.to_owned(), "true".to_owned())].into())
        );
        assert_eq!(
            svc.metadata.annotations,
            Some(
                [(
                    "meridian.io/allow-external-endpoints".to_owned(),
                    "true".to_owned()
                )]
                .into()
            )
        );
        let node = &slim.nodes[0];
        let pod = &slim.pods[0];
        let EndpointObjects::Slices(slices) = &slim.endpoints else {
            panic!("slices");
        };
        let slice = &slices[0];
        for m in [
            &svc.metadata,
            &node.metadata,
            &pod.metadata,
            &slice.metadata,
        ] {
            assert!(m.owner_references.is_none(), "{m:?}");
            assert!(m.managed_fields.is_none(), "{m:?}");
            assert!(m.finalizers.is_none() && m.generate_name.is_none(), "{m:?}");
            assert!(
                !m.annotations
                    .iter()
                    .flatten()
                    .any(|(k, _)| k.starts_with("kubectl.kubernetes.io/")),
                "{m:?}"
            );
        }
        assert!(node.status.is_none() && node.spec.is_none());
        assert!(
            !node.metadata.labels.as_ref().unwrap().contains_key("team"),
            "only locality labels on nodes"
        );
        assert_eq!(node.metadata.labels.as_ref().unwrap().len(), 3);
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["version"], "v1");
        assert!(pod.spec.is_none());
        assert_eq!(
            pod.status,
            Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: None,
                pod_ips: Some(vec![PodIP {
                    ip: "10.0.0.1".into()
                }]),
                ..PodStatus::default()
            }),
            "only the pod's phase and IPs of its status (podIP is podIPs[0])"
        );
        for m in [
            &svc.metadata,
            &node.metadata,
            &pod.metadata,
            &slice.metadata,
        ] {
            assert!(m.uid.is_none() && m.resource_version.is_none(), "{m:?}");
        }
        assert!(pod.metadata.annotations.is_none());
        assert_eq!(
            slice
                .metadata
                .labels
                .as_ref()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            [SERVICE_NAME_LABEL]
        );
        let ep = &slice.endpoints[0];
        assert!(ep.hostname.is_none() && ep.deprecated_topology.is_none());
        let r = ep.target_ref.as_ref().unwrap();
        assert_eq!(
            (
                r.kind.as_deref(),
                r.namespace.as_deref(),
                r.field_path.as_deref()
            ),
            (Some("Pod"), Some("demo"), None)
        );
        let before = serde_json::to_vec(full[0].pods[0].as_ref()).unwrap().len();
        let after = serde_json::to_vec(pod.as_ref()).unwrap().len();
        assert!(before > BIG && after < 512, "{before} -> {after} bytes");
    }

    #[test]
    fn the_gateway_service_keeps_its_ports_and_load_balancer() {
        let mut svc = fixtures::service(
            "meridian-system",
            "meridian-gateway",
            &[("tunnel", 15443, None)],
            false,
        );
        bloat(&mut svc.metadata);
        svc.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("192.0.2.1".into()),
                    ip_mode: Some("VIP".into()),
                    ..LoadBalancerIngress::default()
                }]),
            }),
            conditions: Some(vec![crate::policy::condition(
                "Ready",
                true,
                "Fine",
                "m".repeat(BIG),
                None,
            )]),
        });
        let want = crate::aggregator::gateway_address(Some(&svc), None);
        gateway_service(&mut svc);
        assert_eq!(crate::aggregator::gateway_address(Some(&svc), None), want);
        assert_eq!(want.as_deref(), Some("192.0.2.1:15443"));
        assert!(svc.metadata.annotations.is_none() && svc.metadata.labels.is_none());
        assert!(svc.status.as_ref().unwrap().conditions.is_none());
    }
}
