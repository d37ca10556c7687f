//! How long one aggregation pass's pure part takes: merging the members' objects into the
//! catalog, and building, versioning and encoding the snapshot.
//! `cargo bench -p meridian-controller --bench catalog`.

use std::collections::BTreeMap;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Node, ObjectReference, Pod, PodIP,
    PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meridian_controller::catalog::{Catalog, EndpointObjects, MemberInput};
use meridian_controller::snapshot::{self, SnapshotInput, VipInfo};
use prost::Message;

const CLUSTERS: usize = 3;
const SERVICES: usize = 200;
const ENDPOINTS: usize = 10;

fn meta(ns: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: ns.map(str::to_owned),
        name: Some(name.to_owned()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..ObjectMeta::default()
    }
}

fn member(c: usize) -> MemberInput {
    let nodes = (0..3)
        .map(|z| {
            Arc::new(Node {
                metadata: meta(
                    None,
                    &format!("node-{z}"),
                    &[
                        ("topology.kubernetes.io/region", &format!("region-{c}")),
                        ("topology.kubernetes.io/zone", &format!("zone-{c}-{z}")),
                    ],
                ),
                ..Node::default()
            })
        })
        .collect();
    let services = (0..SERVICES)
        .map(|s| {
            Arc::new(Service {
                metadata: meta(
                    Some("bench"),
                    &format!("svc-{s}"),
                    &[("meridian.io/export", "true")],
                ),
                spec: Some(ServiceSpec {
                    ports: Some(vec![ServicePort {
                        name: Some("http".into()),
                        port: 80,
                        ..ServicePort::default()
                    }]),
                    ..ServiceSpec::default()
                }),
                ..Service::default()
            })
        })
        .collect();
    // Every endpoint's Pod, at the endpoint's address: the catalog admits only those.
    let pods = (0..SERVICES)
        .flat_map(|s| (0..ENDPOINTS).map(move |e| (s, e)))
        .map(|(s, e)| {
            let ip = format!("10.{c}.{s}.{e}");
            Arc::new(Pod {
                metadata: meta(Some("bench"), &format!("svc-{s}-{e}"), &[("app", "bench")]),
                status: Some(PodStatus {
                    pod_ip: Some(ip.clone()),
                    pod_ips: Some(vec![PodIP { ip }]),
                    ..PodStatus::default()
                }),
                ..Pod::default()
            })
        })
        .collect();
    let endpoints = (0..SERVICES)
        .map(|s| {
            let addrs = (0..ENDPOINTS)
                .map(|e| EndpointAddress {
                    ip: format!("10.{c}.{s}.{e}"),
                    node_name: Some(format!("node-{}", e % 3)),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        namespace: Some("bench".into()),
                        name: Some(format!("svc-{s}-{e}")),
                        ..ObjectReference::default()
                    }),
                    ..EndpointAddress::default()
                })
                .collect();
            Arc::new(Endpoints {
                metadata: meta(Some("bench"), &format!("svc-{s}"), &[]),
                subsets: Some(vec![EndpointSubset {
                    addresses: Some(addrs),
                    not_ready_addresses: None,
                    ports: Some(vec![EndpointPort {
                        name: Some("http".into()),
                        port: 8080,
                        ..EndpointPort::default()
                    }]),
                }]),
            })
        })
        .collect();
    MemberInput {
        cluster: format!("cluster-{c}"),
        stale: false,
        services,
        endpoints: EndpointObjects::Endpoints(endpoints),
        nodes,
        pods,
        service_exports: Vec::new(),
    }
}

fn bench(c: &mut Criterion) {
    let members: Vec<MemberInput> = (0..CLUSTERS).map(member).collect();
    let label = format!("{CLUSTERS} clusters x {SERVICES} services x {ENDPOINTS} endpoints");
    c.bench_function(&format!("catalog build ({label})"), |b| {
        b.iter(|| Catalog::build(&members))
    });
    let catalog = Catalog::build(&members);
    assert_eq!(
        catalog.endpoint_count(),
        CLUSTERS * SERVICES * ENDPOINTS,
        "every endpoint is its pod's IP, none skipped"
    );
    let vips: BTreeMap<_, _> = catalog
        .services
        .keys()
        .enumerate()
        .map(|(i, k)| {
            (
                k.clone(),
                VipInfo {
                    vip: format!("172.16.0.{i}"),
                    listeners: BTreeMap::from([("http".to_owned(), 15100 + i as u32)]),
                    ..VipInfo::default()
                },
            )
        })
        .collect();
    c.bench_function(&format!("snapshot build+version+encode ({label})"), |b| {
        b.iter(|| {
            let snap = snapshot::build(&SnapshotInput {
                cluster: "cluster-0",
                trust_domain: "meridian.local",
                zone: "global",
                catalog: Some(&catalog),
                vips: Some(&vips),
                ..SnapshotInput::default()
            });
            snap.encode_to_vec().len()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
