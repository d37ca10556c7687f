//! Tunnel admission with the real controllers: a member removed from a cluster's registry
//! loses its tunnel into that cluster at the next snapshot, although its certificate is
//! still valid.

use std::net::SocketAddr;
use std::time::Duration;

use meridian_testbed::mesh::meridianctl;
use meridian_testbed::metrics;
use tokio::time::Instant;

use super::support::World;

/// The sum of the `name` series carrying every label of `labels` on a gateway's admin
/// port, once it reaches `want` (bounded wait: only turns a hang into a failure).
async fn counter(admin: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = metrics::scrape(admin).await.unwrap_or_default();
        let n = metrics::sum(&text, name, labels);
        if n >= want {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} stayed at {n}, want {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_from_the_registry_is_cut_off() {
    let world = World::start().await;
    let west_gateway = world.mesh.member("west").unwrap().gateway_admin();
    let refusals = "meridian_gateway_tunnel_refusals_total";

    // east's gateway holds a tunnel connection to west's (its peer probe keeps one).
    counter(
        west_gateway,
        "meridian_gateway_tunnel_handshakes_total",
        &[("side", "server"), ("peer", "east"), ("result", "ok")],
        1.0,
    )
    .await;

    // west's operator removes east from west's registry.
    let west = world.cluster("west");
    meridianctl(&[
        "cluster",
        "remove",
        "east",
        "--host-kubeconfig",
        west.kubeconfig_path().to_str().unwrap(),
        "--host-context",
        "west",
    ])
    .unwrap();

    // The open connection is closed with the next snapshot, and east's next attempt (its
    // probe reconnects) is refused.
    assert_eq!(
        counter(west_gateway, refusals, &[("reason", "member_removed")], 1.0).await,
        1.0
    );
    counter(west_gateway, refusals, &[("reason", "not_member")], 1.0).await;
    counter(
        west_gateway,
        "meridian_gateway_tunnel_handshakes_total",
        &[
            ("side", "server"),
            ("peer", "east"),
            ("result", "not_member"),
        ],
        1.0,
    )
    .await;
}
