//! The control plane at scale, with synthetic members (no API server): for each size, the
//! initial sync, the controller's RSS, and what one endpoint flipping readiness costs (CPU
//! and bytes per subscriber), next to today's full pass measured in the same run.
//!
//! `cargo bench -p meridian-controller --bench control_plane [-- 1k 100k 1M]` (default
//! `1k 100k`). Sizes: `1k` = 2 clusters × 50 services × 10 endpoints, `100k` = 10 × 1,000 ×
//! 10, `1M` = 50 × 2,000 × 10. Each size runs in a fresh process (RSS is per size): the
//! bench re-executes itself once per size. Timings are printed, never asserted.
//!
//! What is measured:
//! - initial sync: building every global service from the members' objects (by-name
//!   lookups, as the controller reads its reflector stores) and the published resources.
//!   Not included: listing and decoding the objects from the API servers.
//! - per change: one slice of one member has one endpoint flip readiness; the controller
//!   resolves the marks, rebuilds that service, updates its resources and diffs them
//!   against what the subscriber was last sent (the delta a subscriber receives, encoded
//!   with prost). Per change: the wall time of that single-threaded work (no I/O, so its
//!   CPU time), p50 and p99; and the thread's CPU time over all the changes divided by
//!   their number (`/proc/thread-self/schedstat`, which is only exact over longer spans).
//! - baseline (today's pass): merging every member into the catalog, building, versioning
//!   and encoding the full snapshot, which every subscriber received on every change.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodIP, PodStatus, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use meridian_api::resources::Resources;
use meridian_controller::catalog::{Catalog, MemberInput, ServiceKey};
use meridian_controller::dirty::Dirty;
use meridian_controller::incremental::{IncrementalCatalog, IndexedMember, MemberObjects};
use meridian_controller::mcs::McsView;
use meridian_controller::snapshot::{self, SnapshotInput, VipInfo};
use prost::Message;
use tokio::time::Instant;

/// Changes measured per size.
const CHANGES: usize = 200;
const NS: &str = "bench";
const ZONE: &str = "global";
const LOCAL: &str = "cluster-0";

/// One mesh size.
#[derive(Debug, Clone, Copy)]
struct Size {
    label: &'static str,
    clusters: usize,
    services: usize,
    endpoints: usize,
}

const SIZES: [Size; 3] = [
    Size {
        label: "1k",
        clusters: 2,
        services: 50,
        endpoints: 10,
    },
    Size {
        label: "100k",
        clusters: 10,
        services: 1_000,
        endpoints: 10,
    },
    Size {
        label: "1M",
        clusters: 50,
        services: 2_000,
        endpoints: 10,
    },
];

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

fn ip(c: usize, s: usize, e: usize) -> String {
    format!("10.{c}.{}.{}", s / 256 * 16 + e, s % 256)
}

fn slice(c: usize, s: usize, size: Size, not_ready: Option<usize>) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(
            Some(NS),
            &format!("svc-{s}-x1"),
            &[("kubernetes.io/service-name", &format!("svc-{s}"))],
        ),
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
        endpoints: (0..size.endpoints)
            .map(|e| Endpoint {
                addresses: vec![ip(c, s, e)],
                conditions: Some(EndpointConditions {
                    ready: Some(not_ready != Some(e)),
                    ..EndpointConditions::default()
                }),
                node_name: Some(format!("node-{}", e % 3)),
                target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(NS.into()),
                    name: Some(format!("svc-{s}-{e}")),
                    ..Default::default()
                }),
                ..Endpoint::default()
            })
            .collect(),
    }
}

/// One synthetic member, as its reflectors (after stripping) would hold it.
fn member(c: usize, size: Size) -> IndexedMember {
    let mut m = IndexedMember::new(&MemberInput {
        cluster: format!("cluster-{c}"),
        ..MemberInput::default()
    });
    for z in 0..3 {
        m.put_node(Arc::new(Node {
            metadata: meta(
                None,
                &format!("node-{z}"),
                &[
                    (
                        "topology.kubernetes.io/region",
                        &format!("region-{}", c % 5),
                    ),
                    ("topology.kubernetes.io/zone", &format!("zone-{c}-{z}")),
                ],
            ),
            ..Node::default()
        }));
    }
    for s in 0..size.services {
        m.put_service(Arc::new(Service {
            metadata: meta(
                Some(NS),
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
        }));
        for e in 0..size.endpoints {
            let addr = ip(c, s, e);
            m.put_pod(Arc::new(Pod {
                metadata: meta(Some(NS), &format!("svc-{s}-{e}"), &[("app", "bench")]),
                status: Some(PodStatus {
                    phase: Some("Running".into()),
                    pod_ip: Some(addr.clone()),
                    pod_ips: Some(vec![PodIP { ip: addr }]),
                    ..PodStatus::default()
                }),
                ..Pod::default()
            }));
        }
        m.put_slice(Arc::new(slice(c, s, size, None)));
    }
    m
}

/// The process's resident set, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// This thread's CPU time so far, in nanoseconds.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The VIPs the leader would have allocated: one per service.
fn vips(catalog: &Catalog) -> BTreeMap<ServiceKey, VipInfo> {
    catalog
        .services
        .keys()
        .enumerate()
        .map(|(i, k)| {
            (
                k.clone(),
                VipInfo {
                    vip: format!("172.16.{}.{}", i / 250, i % 250),
                    listeners: BTreeMap::from([("http".to_owned(), 15000 + i as u32)]),
                    ..VipInfo::default()
                },
            )
        })
        .collect()
}

/// The resources of the services `keys` set from the catalog (removed when gone).
fn publish(
    resources: &mut Resources,
    catalog: &IncrementalCatalog,
    vips: &BTreeMap<ServiceKey, VipInfo>,
    keys: impl IntoIterator<Item = ServiceKey>,
) {
    for key in keys {
        match catalog.catalog().services.get(&key) {
            Some(svc) => {
                resources.set_service(&snapshot::global_service(
                    svc,
                    vips.get(&key),
                    None,
                    ZONE,
                    false,
                ));
            }
            None => {
                resources.remove_service(&key.hostname(ZONE));
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

fn run(size: Size) {
    let total = size.clusters * size.services * size.endpoints;
    let rss_start = rss_mib();
    let mut members: Vec<IndexedMember> = (0..size.clusters).map(|c| member(c, size)).collect();
    let rss_objects = rss_mib();

    // Initial sync: every service from the members' objects, and its resources.
    let started = Instant::now();
    let cpu0 = cpu_ns();
    let mut inc = IncrementalCatalog::new();
    let objects: Vec<&dyn MemberObjects> =
        members.iter().map(|m| m as &dyn MemberObjects).collect();
    let all = inc.rebuild_all(&objects, LOCAL);
    let vips = vips(inc.catalog());
    let mut resources = Resources::new();
    resources.set_header(snapshot::header(&SnapshotInput {
        cluster: LOCAL,
        trust_domain: "meridian.local",
        zone: ZONE,
        ..SnapshotInput::default()
    }));
    publish(&mut resources, &inc, &vips, all);
    let sync_ms = (cpu_ns() - cpu0) as f64 / 1e6;
    let sync_wall_ms = started.elapsed().as_secs_f64() * 1e3;
    let rss_synced = rss_mib();
    assert_eq!(inc.catalog().endpoint_count(), total, "no endpoint skipped");

    // One endpoint flips readiness, CHANGES times, in services and members spread out.
    let mut cpu = Vec::with_capacity(CHANGES);
    let mut cpu_total = 0u64;
    let mut rebuilt = 0usize;
    let mut bytes = Vec::with_capacity(CHANGES);
    let mut names = Vec::with_capacity(CHANGES);
    // Which endpoint of each touched slice is not ready: every change really flips one.
    let mut state: BTreeMap<(usize, usize), Option<usize>> = BTreeMap::new();
    for i in 0..CHANGES {
        let c = (i * 7) % size.clusters;
        let s = (i * 131) % size.services;
        let now = state.entry((c, s)).or_default();
        *now = match *now {
            None => Some(i % size.endpoints),
            Some(_) => None,
        };
        members[c].put_slice(Arc::new(slice(c, s, size, *now)));
        let mut dirty = Dirty::default();
        dirty.service(ServiceKey::new(NS, format!("svc-{s}")));
        let sent = resources.clone();
        let cpu0 = cpu_ns();
        let wall = Instant::now();
        let objects: Vec<&dyn MemberObjects> =
            members.iter().map(|m| m as &dyn MemberObjects).collect();
        let keys = dirty.resolve(&inc, &objects);
        let changed = inc.rebuild(&objects, LOCAL, &keys);
        rebuilt += changed.len();
        publish(&mut resources, &inc, &vips, changed);
        let delta = resources.delta_since(&sent);
        if delta.resources.is_empty() && delta.removed.is_empty() {
            // Cross-check the diff of the persistent maps against the O(n) comparison.
            let by_versions = resources.delta_from_versions(&sent.versions());
            println!(
                "  change {i}: empty delta_since, delta_from_versions has {} resource(s); versions {} -> {}",
                by_versions.resources.len(),
                sent.version(),
                resources.version()
            );
        }
        let encoded = delta.encode_to_vec().len();
        cpu.push(wall.elapsed().as_secs_f64() * 1e3);
        cpu_total += cpu_ns() - cpu0;
        bytes.push(encoded as f64);
        names.push(delta.resources.len() + delta.removed.len());
    }
    cpu.sort_by(f64::total_cmp);
    bytes.sort_by(f64::total_cmp);

    // Today's full pass, on the same objects.
    let inputs: Vec<MemberInput> = members.iter().map(IndexedMember::input).collect();
    let cpu0 = cpu_ns();
    let mut catalog = Catalog::build(&inputs);
    let mcs = McsView::build(&inputs, LOCAL);
    mcs.apply_ports(&mut catalog);
    let build_ms = (cpu_ns() - cpu0) as f64 / 1e6;
    let cpu1 = cpu_ns();
    let snap = snapshot::build(&SnapshotInput {
        cluster: LOCAL,
        trust_domain: "meridian.local",
        zone: ZONE,
        catalog: Some(&catalog),
        vips: Some(&vips),
        mcs: Some(&mcs),
        ..SnapshotInput::default()
    });
    let full_bytes = snap.encode_to_vec().len();
    let snap_ms = (cpu_ns() - cpu1) as f64 / 1e6;
    assert_eq!(&catalog, inc.catalog(), "incremental == full");
    let to_snapshot_cpu = cpu_ns();
    let derived = resources.to_snapshot();
    let to_snapshot_ms = (cpu_ns() - to_snapshot_cpu) as f64 / 1e6;
    assert_eq!(derived.services.len(), snap.services.len());

    println!(
        "{label:>5} endpoints ({c} clusters x {s} services x {e}): {total} endpoints",
        label = size.label,
        c = size.clusters,
        s = size.services,
        e = size.endpoints,
    );
    println!(
        "  initial sync: {sync_ms:.0} ms CPU ({sync_wall_ms:.0} ms wall); RSS {rss_start:.0} MiB at start, {rss_objects:.0} MiB with the reflected objects ({per:.0} MiB per 100k endpoints), {rss_synced:.0} MiB synced",
        per = (rss_objects - rss_start) / (total as f64 / 100_000.0),
    );
    println!(
        "  one endpoint flips readiness ({CHANGES} changes): controller p50 {:.3} ms, p99 {:.3} ms (mean CPU {:.3} ms); delta per subscriber p50 {:.0} B, max {:.0} B ({} resource(s))",
        percentile(&cpu, 0.5),
        percentile(&cpu, 0.99),
        cpu_total as f64 / 1e6 / CHANGES as f64,
        percentile(&bytes, 0.5),
        percentile(&bytes, 1.0),
        names.iter().max().copied().unwrap_or_default(),
    );
    println!(
        "  changes that changed their service: {rebuilt}/{CHANGES}; delta min {:.0} B",
        percentile(&bytes, 0.0)
    );
    println!(
        "  baseline, today's full pass: catalog build {build_ms:.0} ms + snapshot build+version+encode {snap_ms:.0} ms = {:.0} ms CPU, {full_bytes} B per subscriber",
        build_ms + snap_ms
    );
    println!(
        "  full snapshot for Watch/meridianctl derived from the resources: {to_snapshot_ms:.0} ms (once per version)"
    );
    println!("  gateway apply: measured by the gateway's delta bench (issue 14, `delta`)");
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Ok(label) = std::env::var("CONTROL_PLANE_SIZE") {
        match SIZES.iter().find(|s| s.label == label) {
            Some(size) => run(*size),
            None => eprintln!("unknown size {label:?}"),
        }
        return;
    }
    let wanted: Vec<&str> = if args.is_empty() {
        vec!["1k", "100k"]
    } else {
        args.iter().map(String::as_str).collect()
    };
    println!(
        "Control plane at scale (synthetic members; sizes of the reflected objects: Pod {} B, EndpointSlice {} B, Service {} B before their heap parts)",
        std::mem::size_of::<Pod>(),
        std::mem::size_of::<EndpointSlice>(),
        std::mem::size_of::<Service>(),
    );
    let Ok(me) = std::env::current_exe() else {
        eprintln!("cannot find the bench executable");
        return;
    };
    for label in wanted {
        // A fresh process per size, so that its RSS is its own.
        let status = Command::new(&me).env("CONTROL_PLANE_SIZE", label).status();
        match status {
            Ok(s) if s.success() => {}
            other => println!("{label:>5}: did not complete ({other:?})"),
        }
    }
}
