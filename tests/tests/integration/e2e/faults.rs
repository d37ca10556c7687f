//! Injected faults under steady traffic, with counted outcomes printed for
//! docs/reliability.md: a serving gateway killed, a controller killed and restarted.

use std::net::SocketAddr;
use std::time::Duration;

use meridian_testbed::mesh::find_service;
use meridian_testbed::traffic::http_get;
use tokio::time::Instant;

use super::support::{NS, World};

/// One GET through the gateway: the answering cluster, or `None` when it failed.
async fn get_cluster(addr: SocketAddr) -> Option<String> {
    http_get(addr, "/", &[])
        .await
        .ok()
        .filter(|r| r.status == 200)
        .and_then(|r| r.echo())
        .map(|r| r.cluster)
}

/// The serving cluster's gateway is SIGKILLed while a client in east sends sequential
/// GETs every 10 ms (as a new user would try it): every request is answered (the one in
/// flight when the peer died is retried in the next cluster), and the time from the kill
/// to the first answer from far is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_gateway_sigkill_fails_no_get() {
    let mut world = World::start().await;
    world.deploy("user", [0, 3, 3]).await;
    world.converge("east", "user", 6, 6).await;
    let addr = world.addr("east", "user").await;

    let (mut sent, mut failed, mut killed_at, mut first_far) = (0usize, 0usize, None, None);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if sent == 100 {
            world.mesh.member_mut("west").unwrap().kill_gateway();
            killed_at = Some(Instant::now());
        }
        sent += 1;
        match get_cluster(addr).await.as_deref() {
            Some("far") => {
                let at = *first_far.get_or_insert_with(Instant::now);
                if at.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
            Some(c) => assert!(
                killed_at.is_none() || c == "west",
                "answered by {c} after west was lost"
            ),
            None => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = killed_at.expect("west's gateway was killed");
    let switch = first_far.expect("traffic moved to far") - killed_at;
    println!(
        "serving gateway SIGKILL: {failed} of {sent} sequential GETs (every 10 ms) failed; first answer from far {switch:?} after the kill"
    );
    assert_eq!(failed, 0, "idempotent requests failed across the kill");
}

/// East's controller is SIGKILLed and restarted while a client sends sequential GETs:
/// none fails, and the VIP, listener port and gateway addresses are the same afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_sigkill_and_restart_fails_no_request() {
    let mut world = World::start().await;
    world.deploy("user", [2, 2, 2]).await;
    world.converge("east", "user", 6, 6).await;
    let host = format!("user.{NS}.global");
    let addr = world.addr("east", "user").await;
    let before = world.config_dump("east").await;
    let service_before = find_service(&before, &host).unwrap().clone();

    let traffic = tokio::spawn(async move {
        let (mut sent, mut failed) = (0usize, 0usize);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            sent += 1;
            if get_cluster(addr).await.is_none() {
                failed += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (sent, failed)
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restart = Instant::now();
    world
        .mesh
        .member_mut("east")
        .unwrap()
        .restart_controller()
        .await
        .unwrap();
    let ready = restart.elapsed();
    let (sent, failed) = traffic.await.unwrap();
    let after = world.config_dump("east").await;
    let service_after = find_service(&after, &host).unwrap().clone();
    println!(
        "controller SIGKILL+restart: {failed} of {sent} requests failed; restarted controller ready after {ready:?}; snapshot version {} -> {}",
        before["snapshot"]["version"], after["snapshot"]["version"]
    );
    assert_eq!(failed, 0, "requests failed across the controller restart");
    assert_eq!(service_after["vip"], service_before["vip"], "same VIP");
    assert_eq!(
        service_after["ports"], service_before["ports"],
        "same listener ports"
    );
    assert_eq!(world.addr("east", "user").await, addr);
}

/// East's DNS server is SIGKILLed and restarted: answers resume once the new process has
/// its first snapshot; the gap (kill → first right answer) is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_server_restart_resumes_answers_from_the_next_snapshot() {
    let mut world = World::start().await;
    world.deploy("user", [1, 1, 1]).await;
    world.converge("east", "user", 3, 3).await;
    let host = format!("user.{NS}.global");
    let dump = world.config_dump("east").await;
    let vip = find_service(&dump, &host).unwrap()["vip"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = world.mesh.member("east").unwrap().dns_addr();
    super::dns::resolves_to(server, &host, &vip).await;

    let killed = Instant::now();
    world
        .mesh
        .member_mut("east")
        .unwrap()
        .restart_dns()
        .await
        .unwrap();
    let ready = killed.elapsed();
    let (mut queries, mut wrong) = (0, 0);
    let gap = loop {
        queries += 1;
        let answer = super::dns::dig(server, &["+short", "+time=1", "+tries=1", &host, "A"]);
        if answer == vip {
            break killed.elapsed();
        }
        wrong += 1;
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no answer after the restart: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "DNS server restart: ready after {ready:?}; first right answer {gap:?} after the kill ({wrong} of {queries} queries after readiness unanswered or wrong)"
    );
}

/// West's API server is down for 30 s while east sends requests that west serves: east's
/// controller keeps west's endpoints (stale) for the grace, gateways keep routing to them
/// (they still answer), the snapshot does not flap, and west resyncs after the restart.
/// Failed requests, snapshot versions seen during the outage and the resync time are
/// printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_api_server_down_30s_keeps_its_endpoints_and_resyncs() {
    let world = World::start().await;
    world.deploy("user", [0, 2, 2]).await;
    world.converge("east", "user", 4, 4).await;
    let addr = world.addr("east", "user").await;
    let version = |d: &serde_json::Value| d["snapshot"]["version"].to_string();
    let phase = || {
        let out = super::support::kubectl(
            world.cluster("east"),
            &[
                "get",
                "membercluster",
                "west",
                "-o",
                "jsonpath={.status.phase}",
            ],
        );
        out.trim().to_owned()
    };
    assert_eq!(phase(), "Synced");

    let west = world.cluster("west");
    west.stop_api_server().await;
    let down = Instant::now();
    let (mut sent, mut failed, mut from_west) = (0usize, 0usize, 0usize);
    let mut versions = std::collections::BTreeSet::new();
    while down.elapsed() < Duration::from_secs(30) {
        sent += 1;
        match get_cluster(addr).await.as_deref() {
            Some("west") => from_west += 1,
            Some(_) => {}
            None => failed += 1,
        }
        versions.insert(version(&world.config_dump("east").await));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outage_phase = phase();
    west.start_api_server().await.unwrap();
    let up = Instant::now();
    let resync = loop {
        if phase() == "Synced" {
            break up.elapsed();
        }
        assert!(
            up.elapsed() < Duration::from_secs(60),
            "west never resynced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    world.converge("east", "user", 4, 4).await;
    let t = meridian_testbed::traffic::http_tally(addr, 50, &[]).await;
    println!(
        "member API server down 30 s: {failed} of {sent} requests failed, {from_west} answered by west; west {outage_phase} during the outage; {} snapshot versions seen by east's gateway during it; resynced {resync:?} after the restart",
        versions.len()
    );
    assert_eq!(
        failed, 0,
        "requests failed while west's API server was down"
    );
    assert!(
        from_west > 0,
        "west's endpoints kept serving during the grace"
    );
    assert!(
        versions.len() <= 3,
        "the snapshot flapped during the outage: {versions:?}"
    );
    assert_eq!(t.failed, 0, "after the resync: {t:?}");
}

/// East's controller is down for 60 s (every replica lost): east's gateway and DNS server
/// keep serving the last snapshot (no failed request, DNS answers unchanged), and resume
/// following the controller once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_controller_for_60s_a_cluster_serves_the_last_snapshot() {
    let mut world = World::start().await;
    world.deploy("user", [0, 2, 2]).await;
    world.converge("east", "user", 4, 4).await;
    let host = format!("user.{NS}.global");
    let addr = world.addr("east", "user").await;
    let dump = world.config_dump("east").await;
    let vip = find_service(&dump, &host).unwrap()["vip"]
        .as_str()
        .unwrap()
        .to_owned();
    let dns = world.mesh.member("east").unwrap().dns_addr();
    super::dns::resolves_to(dns, &host, &vip).await;

    world.mesh.member_mut("east").unwrap().kill_controller();
    let down = Instant::now();
    let (mut sent, mut failed, mut queries, mut wrong) = (0usize, 0usize, 0usize, 0usize);
    while down.elapsed() < Duration::from_secs(60) {
        sent += 1;
        if get_cluster(addr).await.is_none() {
            failed += 1;
        }
        if sent % 20 == 0 {
            queries += 1;
            if super::dns::dig(dns, &["+short", &host, "A"]) != vip {
                wrong += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    world
        .mesh
        .member_mut("east")
        .unwrap()
        .start_controller()
        .await
        .unwrap();
    // Following again: a new pod in west reaches east's gateway.
    let west = world.cluster("west");
    west.add_pod(
        meridian_testbed::PodSpec::new("user-west-late")
            .namespace(NS)
            .app("user")
            .port("http", 8080),
    )
    .await
    .unwrap();
    world.converge("east", "user", 5, 5).await;
    println!(
        "controller down 60 s: {failed} of {sent} requests failed, {wrong} of {queries} DNS answers wrong or missing; following snapshots again after the restart"
    );
    assert_eq!(failed, 0, "requests failed without the controller");
    assert_eq!(wrong, 0, "DNS answers changed without the controller");
}
