//! A name pinned to one cluster: from east, `west.user.demo.global` resolves to a VIP whose
//! traffic only west serves, even while east (which the global name keeps all traffic in)
//! is healthy.

use std::net::{IpAddr, SocketAddr};

use meridian_testbed::SYSTEM_NAMESPACE;
use meridian_testbed::mesh::find_service;
use meridian_testbed::traffic::http_tally;

use super::support::{NS, World};

const REQUESTS: usize = 60;

/// The VIP `cluster`'s snapshot pins to `pinned` for `user`, once allocated.
fn pinned_vip(dump: &serde_json::Value, pinned: &str) -> Option<String> {
    find_service(dump, &format!("user.{NS}.global"))?["clusterVips"]
        .as_array()?
        .iter()
        .find(|c| c["cluster"] == pinned)?["vip"]
        .as_str()
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Resolves `name` through the cluster resolver of `cluster` until it answers `want`.
async fn resolves_to(world: &World, cluster: &str, name: &str, want: &str) {
    let resolver = super::dns::resolver(world, cluster);
    super::dns::resolves_to(resolver, name, want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_pinned_name_is_served_only_by_that_cluster() {
    let world = World::start().await;
    let pods = world.deploy("user", [2, 2, 2]).await;
    world.converge("east", "user", 6, 6).await;
    let dump = world
        .mesh
        .wait_for("east", "user's VIPs pinned to every cluster", |d| {
            ["east", "west", "far"]
                .iter()
                .all(|c| pinned_vip(d, c).is_some())
        })
        .await
        .unwrap();
    let west_vip = pinned_vip(&dump, "west").unwrap();
    let east_vip = pinned_vip(&dump, "east").unwrap();
    let global_vip = find_service(&dump, &format!("user.{NS}.global")).unwrap()["vip"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut vips = vec![&west_vip, &east_vip, &global_vip];
    vips.sort();
    vips.dedup();
    assert_eq!(vips.len(), 3, "every name has its own VIP");

    // DNS in east answers the pinned names with the pinned VIPs, the global name with the
    // global one.
    resolves_to(&world, "east", &format!("west.user.{NS}.global"), &west_vip).await;
    resolves_to(&world, "east", &format!("east.user.{NS}.global"), &east_vip).await;
    resolves_to(&world, "east", &format!("user.{NS}.global"), &global_vip).await;

    // Where the resolved VIP leads (kube-proxy's part, played by the testbed).
    let east = world.cluster("east");
    east.sync_endpoints(SYSTEM_NAMESPACE).await.unwrap();
    let behind = |vip: &str| {
        let vip: IpAddr = vip.parse().unwrap();
        async move {
            east.resolve_cluster_ip(SocketAddr::new(vip, 80))
                .await
                .unwrap()
                .into_iter()
                .next()
                .expect("a gateway behind the VIP")
        }
    };

    // East is healthy: the global name stays in east, the west-pinned name reaches only
    // west, spread over west's pods.
    let global = http_tally(behind(&global_vip).await, REQUESTS, &[]).await;
    assert_eq!(global.from("east"), REQUESTS, "{global:?}");
    let west = http_tally(behind(&west_vip).await, REQUESTS, &[]).await;
    assert_eq!(west.from("west"), REQUESTS, "{west:?}");
    assert_eq!(west.pods.len(), 2, "both west pods serve: {west:?}");
    let east_pinned = http_tally(behind(&east_vip).await, REQUESTS, &[]).await;
    assert_eq!(east_pinned.from("east"), REQUESTS, "{east_pinned:?}");

    // West's pods go unready: the global name is unaffected, the west-pinned name still
    // never spills into east or far. East's gateway balances it in panic over west's pods,
    // but west's gateway refuses tunnel streams to pods that are not ready (issue 11 §5),
    // so once west's gateway knows, those requests fail instead.
    world.set_unready("west", &pods[1], 2).await;
    world.converge("east", "user", 6, 4).await;
    world.converge("west", "user", 6, 4).await;
    let global = http_tally(behind(&global_vip).await, REQUESTS, &[]).await;
    assert_eq!(global.from("east"), REQUESTS, "{global:?}");
    let west = http_tally(behind(&west_vip).await, REQUESTS, &[]).await;
    assert_eq!(west.failed, REQUESTS, "{west:?}");
}
