//! The gateways `scripts/bench.sh` loads with wrk: a caller gateway (cluster `east`) and
//! a remote one (`west`) joined by the mTLS tunnel, each serving four listeners in front
//! of the workload the script started (nginx on pod addresses):
//!
//! | listener | path |
//! |---|---|
//! | `local-http` | HTTP port, endpoint in the caller's cluster |
//! | `local-tcp` | TCP port, endpoint in the caller's cluster |
//! | `tunnel-http` | HTTP port, endpoint in the other cluster (two gateways + tunnel) |
//! | `tunnel-tcp` | TCP port, endpoint in the other cluster |
//!
//! Prints one `name address` line per listener, then `ready`, and serves until SIGTERM or Ctrl-C (the
//! gateways are killed with it). It measures nothing itself: timings come from wrk.
//!
//! `MERIDIAN_BENCH_LOCAL` / `MERIDIAN_BENCH_REMOTE`: `ip:port` of the workload in each
//! cluster. `MERIDIAN_BENCH_GATEWAY_IP` (default 127.0.40.2): the caller gateway's address;
//! the remote one takes the next (so an older build can run beside, for before/after). `cargo bench -p meridian-gateway --bench dataplane`.

#[allow(dead_code)]
#[path = "../tests/gateway/support.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddr};

use meridian_api::proto::Protocol;
use support::{Mesh, endpoint, service};

fn addr(name: &str) -> SocketAddr {
    let value = std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    value
        .parse()
        .unwrap_or_else(|e| panic!("{name}={value:?}: {e}"))
}

#[tokio::main]
async fn main() {
    let local = addr("MERIDIAN_BENCH_LOCAL");
    let remote = addr("MERIDIAN_BENCH_REMOTE");
    let ip: Ipv4Addr = std::env::var("MERIDIAN_BENCH_GATEWAY_IP")
        .map_or(Ok(Ipv4Addr::new(127, 0, 40, 2)), |ip| ip.parse())
        .expect("MERIDIAN_BENCH_GATEWAY_IP");
    let next = Ipv4Addr::from(u32::from(ip) + 1);
    let mesh = Mesh::new();
    let (east, west) = tokio::join!(
        mesh.gateway_as_deployed("east", ip, ("r1", "z1")),
        mesh.gateway_as_deployed("west", next, ("r2", "z2")),
    );
    let listeners = [
        (
            "local-http",
            Protocol::Http,
            26080,
            local,
            "east",
            ("r1", "z1"),
        ),
        (
            "local-tcp",
            Protocol::Tcp,
            26081,
            local,
            "east",
            ("r1", "z1"),
        ),
        (
            "tunnel-http",
            Protocol::Http,
            26082,
            remote,
            "west",
            ("r2", "z2"),
        ),
        (
            "tunnel-tcp",
            Protocol::Tcp,
            26083,
            remote,
            "west",
            ("r2", "z2"),
        ),
    ];
    let services = || {
        listeners
            .iter()
            .map(|(name, protocol, port, target, cluster, zone)| {
                service(
                    &format!("{name}.bench.global"),
                    *protocol,
                    80,
                    *port,
                    vec![endpoint(cluster, *target, *zone, true)],
                    "",
                )
            })
            .collect::<Vec<_>>()
    };
    tokio::join!(
        east.push(1, services(), vec![west.as_peer()]),
        west.push(1, services(), vec![east.as_peer()]),
    );
    for (name, _, port, ..) in &listeners {
        println!("{name} {}", east.listener(*port));
    }
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
