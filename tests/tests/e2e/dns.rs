//! `.global` names resolve, in each cluster, to that cluster's VIP (queried with `dig`).

use std::process::Command;

use meridian_testbed::mesh::find_service;

use crate::support::World;

/// Runs `dig @server query…` and returns its trimmed output.
pub fn dig(server: std::net::SocketAddr, query: &[&str]) -> String {
    let out = Command::new("dig")
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            "+time=2",
            "+tries=3",
        ])
        .args(query)
        .output()
        .expect("running dig (Debian package dnsutils)");
    assert!(
        out.status.success(),
        "dig failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Resolves `name` at `server` until it answers `want`: the DNS server follows the same
/// snapshot stream as the gateway, so it may be a moment behind.
pub async fn resolves_to(server: std::net::SocketAddr, name: &str, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let answer = dig(server, &["+short", name, "A"]);
        if answer == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} at {server}: {answer:?}, want {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_names_resolve_to_each_clusters_vip() {
    let world = World::start().await;
    world.deploy("user", [1, 1, 1]).await;
    let mut vips = Vec::new();
    for member in world.mesh.members() {
        world.converge(member.name(), "user", 3, 3).await;
        // The VIP is the managed Service's ClusterIP, which can follow the endpoints.
        let dump = world
            .mesh
            .wait_for(member.name(), "a VIP for user.demo.global", |d| {
                find_service(d, "user.demo.global")
                    .and_then(|s| s["vip"].as_str())
                    .is_some_and(|v| !v.is_empty())
            })
            .await
            .unwrap();
        let vip = find_service(&dump, "user.demo.global").unwrap()["vip"]
            .as_str()
            .unwrap()
            .to_owned();
        resolves_to(member.dns_addr(), "user.demo.global", &vip).await;
        let srv = dig(
            member.dns_addr(),
            &["+short", "_http._tcp.user.demo.global", "SRV"],
        );
        assert!(
            srv.contains(" 80 user.demo.global."),
            "SRV in {}: {srv}",
            member.name()
        );
        vips.push(vip);
    }
    vips.sort();
    vips.dedup();
    assert_eq!(vips.len(), 3, "each cluster has its own VIP: {vips:?}");
    let unknown = dig(world.mesh.members()[0].dns_addr(), &["nope.demo.global"]);
    assert!(unknown.contains("status: NXDOMAIN"), "{unknown}");
}
