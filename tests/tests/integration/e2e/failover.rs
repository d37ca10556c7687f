//! Zone failover by health (seed 000) measured on real requests.

use meridian_testbed::traffic::http_tally;

use super::support::{World, binomial_ok};

/// 14 `user` pods per sh zone (and 14 in far): 10/14 healthy in east → all east;
/// 5/14 → about half west; 0/14 → all west, none far; healed → all east again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_failover_by_health() {
    let world = World::start().await;
    let pods = world.deploy("user", [14, 14, 14]).await;
    world.converge("east", "user", 42, 42).await;
    let addr = world.addr("east", "user").await;

    let t = http_tally(addr, 100, &[]).await;
    assert_eq!((t.from("east"), t.failed), (100, 0), "all healthy: {t:?}");

    world.set_unready("east", &pods[0], 4).await;
    world.converge("east", "user", 42, 38).await;
    let t = http_tally(addr, 200, &[]).await;
    assert_eq!(
        (t.from("east"), t.failed),
        (200, 0),
        "10/14 healthy stays local: {t:?}"
    );

    world.set_unready("east", &pods[0], 9).await;
    world.converge("east", "user", 42, 33).await;
    let n = 400;
    let t = http_tally(addr, n, &[]).await;
    assert_eq!(t.failed, 0, "{t:?}");
    assert_eq!(t.from("far"), 0, "{t:?}");
    assert!(
        binomial_ok(t.from("west"), n, 0.5),
        "5/14 healthy: about half west: {t:?}"
    );

    world.set_unready("east", &pods[0], 14).await;
    world.converge("east", "user", 42, 28).await;
    let t = http_tally(addr, 200, &[]).await;
    assert_eq!(
        (t.from("west"), t.failed),
        (200, 0),
        "0/14 healthy: all west, none far: {t:?}"
    );

    world.set_unready("east", &pods[0], 0).await;
    world.converge("east", "user", 42, 42).await;
    let t = http_tally(addr, 100, &[]).await;
    assert_eq!(t.from("east"), 100, "healed: {t:?}");
}
