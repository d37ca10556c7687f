//! The `meridian-dns` that `scripts/bench.sh` loads with dnsperf, and the same names for
//! NSD: starts the real binary on a free loopback port, fed a snapshot of
//! [`SERVICES`] services by a fake controller, and writes into `MERIDIAN_BENCH_DIR`
//!
//! - `global.zone`: the records meridian-dns serves for that snapshot, as a zone file
//!   (the rules of `meridian_dns::zone`: VIP → A, pinned VIP → A or AAAA, named port →
//!   SRV), for NSD;
//! - `queries.txt`: the dnsperf query mix, a quarter each of A, AAAA, SRV and NXDOMAIN.
//!
//! Prints `dns <address>` and `ready`, then serves until SIGTERM or Ctrl-C. It measures
//! nothing itself. `cargo bench -p meridian-dns --bench serve`.

#[allow(dead_code)]
#[path = "../tests/dns/support.rs"]
mod support;

use std::fmt::Write as _;
use std::path::PathBuf;

use meridian_api::proto::{ClusterVip, GlobalService, ServicePort};

/// Services in the snapshot (each: A, AAAA, pinned A, SRV).
const SERVICES: usize = 1000;
/// TTL of every record (meridian-dns's default, `--ttl 5s`).
const TTL: u32 = 5;
const NAMESERVER: &str = "meridian-dns.meridian-system.svc.cluster.local.";

fn service(i: usize) -> GlobalService {
    GlobalService {
        name: format!("svc-{i}"),
        namespace: "bench".into(),
        hostname: format!("svc-{i}.bench.global"),
        vip: v4(97, i),
        cluster_vips: vec![
            ClusterVip {
                cluster: "east".into(),
                vip: v4(98, i),
                ports: Vec::new(),
            },
            ClusterVip {
                cluster: "west".into(),
                vip: v6(i),
                ports: Vec::new(),
            },
        ],
        ports: vec![ServicePort {
            name: "http".into(),
            port: 8080,
            listener_port: 15100,
            ..Default::default()
        }],
        clusters: vec!["east".into(), "west".into()],
        ..Default::default()
    }
}

fn v4(second: usize, i: usize) -> String {
    format!("10.{second}.{}.{}", i / 256, i % 256)
}

fn v6(i: usize) -> String {
    format!("fd00::{i:x}")
}

/// The zone file NSD serves: the same records as meridian-dns for `services`.
fn zone_file(count: usize) -> String {
    let mut z = String::new();
    let _ = writeln!(z, "$ORIGIN global.\n$TTL {TTL}");
    let _ = writeln!(
        z,
        "@ IN SOA {NAMESERVER} hostmaster.global. 1 30 30 3600 {TTL}\n@ IN NS {NAMESERVER}"
    );
    for i in 0..count {
        let name = format!("svc-{i}.bench");
        let _ = writeln!(z, "{name} IN A {}", v4(97, i));
        let _ = writeln!(z, "east.{name} IN A {}", v4(98, i));
        let _ = writeln!(z, "west.{name} IN AAAA {}", v6(i));
        let _ = writeln!(z, "_http._tcp.{name} IN SRV 0 0 8080 {name}.global.");
    }
    z
}

/// The dnsperf input: A, AAAA, SRV and NXDOMAIN in turn, over every service.
fn queries(count: usize) -> String {
    let mut q = String::new();
    for i in 0..count {
        let name = format!("svc-{i}.bench.global.");
        let _ = writeln!(q, "{name} A");
        let _ = writeln!(q, "west.{name} AAAA");
        let _ = writeln!(q, "_http._tcp.{name} SRV");
        let _ = writeln!(q, "missing-{i}.bench.global. A");
    }
    q
}

#[tokio::main]
async fn main() {
    let dir = PathBuf::from(std::env::var("MERIDIAN_BENCH_DIR").expect("MERIDIAN_BENCH_DIR"));
    std::fs::write(dir.join("global.zone"), zone_file(SERVICES)).expect("zone file");
    std::fs::write(dir.join("queries.txt"), queries(SERVICES)).expect("query file");
    let snapshot = support::snapshot(1, (0..SERVICES).map(service).collect());
    let (_controller, dns) = support::serving(snapshot, &[]).await;
    println!("dns {}", dns.addr);
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
