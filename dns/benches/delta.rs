//! Cost of one endpoint change at mesh scale: applying it to the served zones as a delta
//! ([`ZoneState::apply`], only the touched service rebuilt) against today's full rebuild
//! (every zone, the hickory catalog and the name index built anew), in the same run.
//!
//! `cargo bench -p meridian-dns --bench delta` (a plain binary, not criterion: one
//! initial build costs seconds). The size comes from `DELTA_SERVICES` (default 2,000) and
//! `DELTA_ENDPOINTS` (per service, default 500). Every service has a VIP, two named ports
//! and three pinned VIPs; every tenth is headless, so its ready endpoints are DNS records
//! (an A and a host name each, and one SRV per port), while the endpoints of the others
//! appear in no record.

use std::hint::black_box;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::proto::rr::Name;
use meridian_api::proto::{ClusterVip, Endpoint, GlobalService, ServicePort, Snapshot};
use meridian_api::resources::Resources;
use meridian_dns::authority::Authority;
use meridian_dns::metrics::Metrics;
use meridian_dns::state::ZoneState;
use meridian_dns::zone::{ZoneSettings, Zones};
use tokio::time::Instant;

const CLUSTERS: [&str; 10] = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"];
/// Changes measured per kind.
const CHANGES: usize = 41;

fn service(i: usize, endpoints: usize) -> GlobalService {
    let mut eps: Vec<Endpoint> = (0..endpoints)
        .map(|e| Endpoint {
            cluster: CLUSTERS[e % CLUSTERS.len()].into(),
            pod: format!("pod-{i}-{e}"),
            address: format!("10.{}.{}.{}", 128 + e / 65_536, (e / 256) % 256, e % 256),
            ready: true,
            ports: [("http".to_owned(), 8080)].into(),
            ..Endpoint::default()
        })
        .collect();
    eps.sort_by(|a, b| (&a.cluster, &a.address).cmp(&(&b.cluster, &b.address)));
    GlobalService {
        name: format!("svc-{i}"),
        namespace: format!("ns-{}", i % 50),
        hostname: format!("svc-{i}.ns-{}.global", i % 50),
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
        endpoints: eps,
        headless: i.is_multiple_of(10),
        ..Default::default()
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident set size in MiB, from /proc (0 where there is none).
fn rss_mib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096 / (1024 * 1024)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn report(what: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{what}: p50 {:?}, p99 {:?}, max {:?} ({} changes)",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1],
        times.len()
    );
}

fn main() {
    let services = env("DELTA_SERVICES", 2_000);
    let endpoints = env("DELTA_ENDPOINTS", 500);
    let settings = Arc::new(ZoneSettings {
        origins: vec![Name::from_str("global.").expect("name")],
        ttl: 5,
        nameserver: Name::from_str("meridian-dns.meridian-system.svc.cluster.local.")
            .expect("name"),
        clusterset: Some(Name::from_str("clusterset.local.").expect("name")),
    });
    println!(
        "{services} services × {endpoints} endpoints = {} endpoints; every tenth service headless",
        services * endpoints
    );
    let base_rss = rss_mib();
    let mut resources = Resources::new();
    for i in 0..services {
        resources.set_service(&service(i, endpoints));
    }
    let snapshot = Snapshot {
        version: 1,
        cluster: "east".into(),
        ..resources.to_snapshot()
    };
    println!(
        "resources and one snapshot built: RSS {} MiB (+{} MiB)",
        rss_mib(),
        rss_mib().saturating_sub(base_rss)
    );

    // Today: every change rebuilds all zones, the catalog and the index.
    let authority = Authority::new(&[], Arc::new(Metrics::new()));
    let mut full = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let zones = Zones::build(black_box(&snapshot), &settings);
        let records = zones.record_count();
        authority.replace(zones.into_catalog().expect("catalog"));
        full.push(start.elapsed());
        black_box(records);
    }
    full.sort();
    println!(
        "full rebuild (today, per change): {:?} (median of 3)",
        full[1]
    );
    drop(authority);

    // Incremental: the initial build, then one endpoint change at a time.
    let before = rss_mib();
    let authority = Authority::new(&[], Arc::new(Metrics::new()));
    let mut state = ZoneState::new(settings.clone());
    let start = Instant::now();
    let all = resources.touched_since(&Resources::new());
    let applied = state.apply(&resources, &all, 1, &authority);
    println!(
        "incremental initial build: {:?}, {} records; RSS {} MiB (was {} MiB before it)",
        start.elapsed(),
        applied.records,
        rss_mib(),
        before
    );

    let mut version = 1;
    for (kind, pick) in [("headless", 0_usize), ("ClusterSet IP", 1)] {
        let (mut apply, mut diff, mut fallback) = (Vec::new(), Vec::new(), Vec::new());
        let mut sets = 0;
        for n in 0..CHANGES {
            // A different service each time, of the kind measured.
            let i = (n * 10 + pick) % services;
            let host = format!("svc-{i}.ns-{}.global", i % 50);
            let mut svc = resources.service(&host).expect("service");
            let e = n % svc.endpoints.len().max(1);
            if let Some(ep) = svc.endpoints.get_mut(e) {
                ep.ready = !ep.ready;
            }
            let older = resources.clone();
            resources.set_service(&svc);
            version += 1;

            let start = Instant::now();
            let touched = resources.touched_since(&older);
            let touched_at = start.elapsed();
            let applied = state.apply(&resources, &touched, version, &authority);
            apply.push(start.elapsed());
            diff.push(touched_at);
            sets += applied.sets;
            assert_eq!(applied.services, 1, "{applied:?}");

            // What the follower pays on top while it receives full snapshots: splitting
            // the snapshot into resources and diffing them in full. A few samples only.
            if n < 3 {
                let snap = resources.to_snapshot();
                let start = Instant::now();
                let again = Resources::from_snapshot(&snap);
                black_box(again.touched_since(&older));
                fallback.push(start.elapsed());
            }
        }
        report(
            &format!("one endpoint change, {kind} service: touched_since + apply"),
            apply,
        );
        report("  of which touched_since", diff);
        println!("  record sets written per change: {}", sets / CHANGES);
        fallback.sort();
        println!(
            "  + with full snapshots (from_snapshot + full diff, until the delta stream): {:?}",
            fallback[fallback.len() / 2]
        );
    }
}
