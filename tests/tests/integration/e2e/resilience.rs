//! Losing workloads and whole clusters, with no policy at all.

use std::time::Duration;

use meridian_testbed::traffic::{http_get, http_tally};
use tokio::time::Instant;

use super::support::World;

/// All of a service's pods in east deleted → served from west; then west's gateway
/// process is killed (the cluster is lost to callers) → far, with the failed idempotent
/// requests during the switch counted and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_then_cluster_loss() {
    let mut world = World::start().await;
    let pods = world.deploy("user", [3, 3, 3]).await;
    world.converge("east", "user", 9, 9).await;
    let addr = world.addr("east", "user").await;
    assert_eq!(http_tally(addr, 50, &[]).await.from("east"), 50);

    let east = world.cluster("east");
    for p in &pods[0] {
        east.remove_pod(p).await.unwrap();
    }
    world.converge("east", "user", 6, 6).await;
    let t = http_tally(addr, 100, &[]).await;
    assert_eq!(
        (t.from("west"), t.failed),
        (100, 0),
        "scaled to zero in east: served from west: {t:?}"
    );

    // Lose west: its gateway dies while east keeps sending.
    world.mesh.member_mut("west").unwrap().kill_gateway();
    let start = Instant::now();
    let (mut failed, mut sent, mut first_far) = (0, 0, None);
    while start.elapsed() < Duration::from_secs(20) {
        sent += 1;
        match http_get(addr, "/", &[])
            .await
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| r.echo())
        {
            Some(r) if r.cluster == "far" => {
                first_far.get_or_insert(start.elapsed());
                if sent > 50 && start.elapsed() > first_far.unwrap() + Duration::from_secs(2) {
                    break;
                }
            }
            Some(_) => {}
            None => failed += 1,
        }
    }
    let switched = first_far.expect("traffic moved to far after west was lost");
    println!(
        "cluster loss: {failed} of {sent} idempotent requests failed; first answer from far after {switched:?}"
    );
    let t = http_tally(addr, 100, &[]).await;
    assert_eq!(
        (t.from("far"), t.failed),
        (100, 0),
        "after the switch everything is served by far: {t:?}"
    );
    assert!(failed <= 5, "{failed} requests failed during the switch");
}
