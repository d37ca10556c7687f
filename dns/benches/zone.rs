//! Cost of applying a snapshot: building the zones and the hickory catalog that is then
//! swapped in. Each service has a VIP, two named ports and pinned VIPs in three clusters
//! (7 records), in one zone.

use std::hint::black_box;
use std::str::FromStr;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use hickory_server::proto::rr::Name;
use meridian_api::proto::{ClusterVip, GlobalService, ServicePort, Snapshot};
use meridian_dns::zone::{ZoneSettings, Zones};

fn snapshot(services: usize) -> Snapshot {
    let services = (0..services)
        .map(|i| GlobalService {
            name: format!("svc-{i}"),
            namespace: format!("ns-{}", i % 50),
            vip: format!("10.{}.{}.{}", 96 + i / 65_536, (i / 256) % 256, i % 256),
            cluster_vips: ["east", "west", "north"]
                .iter()
                .enumerate()
                .map(|(c, cluster)| ClusterVip {
                    cluster: (*cluster).into(),
                    vip: format!("10.{}.{}.{}", 100 + c, (i / 256) % 256, i % 256),
                    ports: Vec::new(),
                })
                .collect(),
            ports: ["http", "grpc"]
                .iter()
                .enumerate()
                .map(|(p, name)| ServicePort {
                    name: (*name).into(),
                    port: 8080 + p as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    Snapshot {
        version: 1,
        cluster: "east".into(),
        services,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let settings = ZoneSettings {
        origins: vec![Name::from_str("global.").unwrap()],
        ttl: 5,
        nameserver: Name::from_str("meridian-dns.meridian-system.svc.cluster.local.").unwrap(),
        clusterset: None,
    };
    let mut group = c.benchmark_group("apply_snapshot");
    group.sample_size(10);
    for services in [100, 1_000, 10_000] {
        let snapshot = snapshot(services);
        group.bench_with_input(
            BenchmarkId::new("build_zones", services),
            &snapshot,
            |b, snapshot| b.iter(|| black_box(Zones::build(black_box(snapshot), &settings))),
        );
        group.bench_with_input(
            BenchmarkId::new("build_zones_and_catalog", services),
            &snapshot,
            |b, snapshot| {
                b.iter(|| {
                    let zones = Zones::build(black_box(snapshot), &settings);
                    black_box(zones.into_catalog().unwrap())
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
