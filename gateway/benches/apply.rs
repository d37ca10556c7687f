//! The gateway's cost of one endpoint change, incremental against a full rebuild, in the
//! same run: a synthetic mesh of `clusters × services × endpoints per cluster` (100k
//! endpoints, and 1M with `MERIDIAN_BENCH_1M=1` where memory allows), then for one
//! endpoint flipped in one service at a time:
//!
//! - `delta`: the subscriber applying the delta it receives (`Resources::apply`);
//! - `apply`: the routing table rebuilding only the touched service (`RoutingTable::apply`);
//! - `full`: today's full rebuild from the snapshot (`RoutingTable::build`).
//!
//! Prints the median and the maximum of each, and the delta's size on the wire.
//! `cargo bench -p meridian-gateway --bench apply`.

use std::sync::Arc;
use std::time::Duration;

use meridian_api::proto::{
    Endpoint, GlobalService, Locality, Peer, Protocol, ServicePort, Snapshot,
};
use meridian_api::resources::Resources;
use meridian_gateway::routing::RoutingTable;
use prost::Message;
use tokio::time::Instant;

/// A mesh of `clusters` members, each with `per_cluster` endpoints of each of `services`.
fn mesh(clusters: usize, services: usize, per_cluster: usize) -> Snapshot {
    let names: Vec<String> = (0..clusters).map(|c| format!("c{c:02}")).collect();
    let services = (0..services)
        .map(|s| GlobalService {
            name: format!("svc{s:05}"),
            namespace: "default".into(),
            hostname: format!("svc{s:05}.default.global"),
            vip: format!("10.96.{}.{}", s / 250, s % 250),
            ports: vec![ServicePort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Http as i32,
                listener_port: 20000 + (s % 40000) as u32,
            }],
            endpoints: names
                .iter()
                .enumerate()
                .flat_map(|(c, cluster)| {
                    (0..per_cluster).map(move |e| Endpoint {
                        cluster: cluster.clone(),
                        address: format!(
                            "10.{c}.{}.{}",
                            (s * per_cluster + e) / 250 % 250,
                            (s * per_cluster + e) % 250
                        ),
                        ports: [("http".to_owned(), 8080)].into(),
                        ready: true,
                        locality: Some(Locality {
                            region: format!("r{}", c % 3),
                            zone: format!("z{c}"),
                            subzone: String::new(),
                        }),
                        pod: format!("svc{s}-{e}"),
                        ..Endpoint::default()
                    })
                })
                .collect(),
            clusters: names.clone(),
            ..GlobalService::default()
        })
        .collect();
    Snapshot {
        version: 1,
        cluster: names[0].clone(),
        locality: Some(Locality {
            region: "r0".into(),
            zone: "z0".into(),
            subzone: String::new(),
        }),
        trust_domain: "mesh.local".into(),
        services,
        peers: names
            .iter()
            .skip(1)
            .map(|c| Peer {
                cluster: c.clone(),
                address: format!("{c}.gw:15443"),
                ..Peer::default()
            })
            .collect(),
        drains: Vec::new(),
    }
}

fn stats(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let median = samples[samples.len() / 2];
    let max = samples[samples.len() - 1];
    format!("median {median:>10.3?}  max {max:>10.3?}")
}

fn run(clusters: usize, services: usize, per_cluster: usize, changes: usize, fulls: usize) {
    let endpoints = clusters * services * per_cluster;
    println!(
        "== {clusters} clusters x {services} services x {per_cluster} endpoints = {endpoints} endpoints"
    );
    let mut snap = mesh(clusters, services, per_cluster);
    let cluster = snap.cluster.clone();
    let server = Resources::from_snapshot(&snap);
    let mut client = Resources::new();
    client
        .apply(&server.delta_since(&Resources::new()))
        .expect("the first state applies");
    let mut table = RoutingTable::from_resources(&cluster, client.clone());
    let mut server = server;

    let (mut delta_t, mut apply_t, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..changes {
        let s = (i * 7919) % services;
        let e = i % (clusters * per_cluster);
        let ep = &mut snap.services[s].endpoints[e];
        ep.ready = !ep.ready;
        let before = server.clone();
        server.set_service(&snap.services[s]);
        let delta = server.delta_since(&before);
        bytes.push(delta.encoded_len());

        let started = Instant::now();
        client.apply(&delta).expect("the delta applies");
        delta_t.push(started.elapsed());

        let started = Instant::now();
        let (next, changes) = table.apply(client.clone());
        apply_t.push(started.elapsed());
        assert_eq!(changes.services.len(), 1);
        table = next;
    }
    let mut full_t = Vec::new();
    for _ in 0..fulls {
        let snapshot = Arc::new(snap.clone());
        let started = Instant::now();
        let full = RoutingTable::build(&cluster, snapshot);
        full_t.push(started.elapsed());
        assert_eq!(full.services.len(), table.services.len());
    }
    bytes.sort_unstable();
    println!("delta   (Resources::apply)     {}", stats(delta_t));
    println!("apply   (RoutingTable::apply)  {}", stats(apply_t));
    println!("full    (RoutingTable::build)  {}", stats(full_t));
    println!(
        "wire    one-endpoint delta: median {} bytes, max {} bytes (full snapshot {} bytes)",
        bytes[bytes.len() / 2],
        bytes[bytes.len() - 1],
        snap.encoded_len()
    );
}

fn main() {
    run(10, 1_000, 10, 200, 5);
    if std::env::var_os("MERIDIAN_BENCH_1M").is_some() {
        run(50, 2_000, 10, 200, 3);
    }
}
