//! Upstream connection reuse: sequential HTTP/1.1 requests per second through a real
//! `meridian-gateway` to a local echo backend, and through two gateways (the tunnel) to a
//! remote one, with reuse on (the default) and off (`--upstream-idle-timeout 0s`, the
//! baseline: a connection or tunnel stream per request). Rounds alternate between the
//! four set-ups so machine noise hits them alike; the medians and the on/off ratios are
//! printed. Loopback has no real round trip, so the ratio through the tunnel understates
//! what a multi-region deployment saves.
//!
//! `cargo bench -p meridian-gateway --bench upstream` (`MERIDIAN_BENCH_REQUESTS` per
//! round, default 2000; `MERIDIAN_BENCH_ROUNDS`, default 5).

#[allow(dead_code)]
#[path = "../tests/gateway/support.rs"]
mod support;

use std::net::Ipv4Addr;

use meridian_api::proto::{GlobalService, Protocol};
use tokio::time::Instant;

use support::{Backend, Client, Gateway, Mesh, endpoint, service};

const OFF: &[&str] = &["--upstream-idle-timeout", "0s"];

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A caller gateway in r1 and a remote one in r2, serving `local` (an endpoint in the
/// caller's cluster, listener 26080) and `remote` (in the other cluster, listener 26081).
async fn pair(mesh: &Mesh, n: u8, extra: &[&str]) -> (Gateway, Gateway) {
    let local = Backend::http(Ipv4Addr::new(127, 0, 41, n), "east", "local-0").await;
    let remote = Backend::http(Ipv4Addr::new(127, 0, 42, n), "west", "remote-0").await;
    let (east, west) = tokio::join!(
        mesh.gateway_with(
            "east",
            Ipv4Addr::new(127, 0, 40, 2 * n),
            ("r1", "z1"),
            extra
        ),
        mesh.gateway_with(
            "west",
            Ipv4Addr::new(127, 0, 40, 2 * n + 1),
            ("r2", "z2"),
            extra
        ),
    );
    let services = || -> Vec<GlobalService> {
        vec![
            service(
                "local.default.global",
                Protocol::Http,
                80,
                26080,
                vec![endpoint("east", local.addr, ("r1", "z1"), true)],
                "",
            ),
            service(
                "remote.default.global",
                Protocol::Http,
                80,
                26081,
                vec![endpoint("west", remote.addr, ("r2", "z2"), true)],
                "",
            ),
        ]
    };
    tokio::join!(
        east.push(1, services(), vec![west.as_peer()]),
        west.push(1, services(), vec![east.as_peer()]),
    );
    (east, west)
}

/// Requests per second of `n` sequential GETs over one keep-alive client connection.
async fn rate(gateway: &Gateway, port: u16, host: &str, n: usize) -> f64 {
    let mut client = Client::connect(gateway.listener(port), host).await;
    // Warm up: the first request opens whatever the gateway keeps.
    assert_eq!(client.get(&[]).await.0, 200);
    let started = Instant::now();
    for _ in 0..n {
        let (status, _) = client.get(&[]).await;
        assert_eq!(status, 200);
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let requests = env("MERIDIAN_BENCH_REQUESTS", 2000);
    let rounds = env("MERIDIAN_BENCH_ROUNDS", 5);
    let mesh = Mesh::new();
    let (on, _on_west) = pair(&mesh, 1, &[]).await;
    let (off, _off_west) = pair(&mesh, 2, OFF).await;
    let cases: [(&str, &Gateway, u16, &str); 4] = [
        ("local, reuse off", &off, 26080, "local.default.global"),
        ("local, reuse on", &on, 26080, "local.default.global"),
        ("tunnel, reuse off", &off, 26081, "remote.default.global"),
        ("tunnel, reuse on", &on, 26081, "remote.default.global"),
    ];
    let mut samples = vec![Vec::new(); cases.len()];
    for round in 1..=rounds {
        for (i, (name, gateway, port, host)) in cases.iter().enumerate() {
            let r = rate(gateway, *port, host, requests).await;
            println!("round {round}: {name:<18} {r:>8.0} req/s");
            samples[i].push(r);
        }
    }
    let medians: Vec<f64> = samples.into_iter().map(median).collect();
    println!("median over {rounds} rounds of {requests} sequential requests:");
    for ((name, ..), m) in cases.iter().zip(&medians) {
        println!("  {name:<18} {m:>8.0} req/s");
    }
    println!(
        "reuse on / off: local {:.2}x, through the tunnel {:.2}x",
        medians[1] / medians[0],
        medians[3] / medians[2]
    );
    for (name, gateway) in [("reuse off", &off), ("reuse on", &on)] {
        // `+ 0.0`: an empty sum is -0.
        let opened = gateway
            .metric("meridian_gateway_upstream_connections_total", &[])
            .await
            + 0.0;
        let reused = gateway
            .metric("meridian_gateway_upstream_reused_requests_total", &[])
            .await
            + 0.0;
        println!("{name}: {opened} upstream connections opened, {reused} requests reused one");
    }
}
