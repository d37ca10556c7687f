//! The seed scenario on real requests: 14 endpoints in the caller's zone (east, r1/z1)
//! and 14 in another region behind the west gateway; overprovisioning factor 1.4.

use std::net::Ipv4Addr;

use meridian_api::proto::Protocol;

use crate::support::{Backend, Client, Mesh, answers_per_cluster, endpoint, eventually, service};

const REQUESTS: usize = 400;

/// Answers from the caller's cluster (east) and from elsewhere.
async fn measure(client: &mut Client) -> (usize, usize) {
    let answers = answers_per_cluster(client, REQUESTS).await;
    let local = answers.get("east").copied().unwrap_or(0);
    (local, REQUESTS - local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_failover_by_local_health() {
    let mesh = Mesh::new();
    let mut east_pods = Vec::new();
    let mut west_pods = Vec::new();
    for i in 0..14u8 {
        east_pods
            .push(Backend::http(Ipv4Addr::new(127, 0, 3, 10 + i), "east", &format!("e{i}")).await);
        west_pods
            .push(Backend::http(Ipv4Addr::new(127, 0, 4, 10 + i), "west", &format!("w{i}")).await);
    }
    let (east, west) = tokio::join!(
        mesh.gateway("east", Ipv4Addr::new(127, 0, 12, 1), ("r1", "z1")),
        mesh.gateway("west", Ipv4Addr::new(127, 0, 12, 2), ("r2", "z2")),
    );
    let svc = |east_ready: usize| {
        let mut eps: Vec<_> = east_pods
            .iter()
            .enumerate()
            .map(|(i, b)| endpoint("east", b.addr, ("r1", "z1"), i < east_ready))
            .collect();
        eps.extend(
            west_pods
                .iter()
                .map(|b| endpoint("west", b.addr, ("r2", "z2"), true)),
        );
        vec![service(
            "reviews.default.global",
            Protocol::Http,
            9080,
            22080,
            eps,
            "",
        )]
    };
    west.push(1, svc(14), vec![east.as_peer()]).await;

    // 10/14 healthy: health = 1.4 × 10/14 = 100% → everything stays local.
    east.push(1, svc(10), vec![west.as_peer()]).await;
    let mut client = Client::connect(east.listener(22080), "reviews.default.global").await;
    let (local, remote) = measure(&mut client).await;
    eprintln!("10/14 healthy: local {local}, remote {remote}");
    assert_eq!((local, remote), (REQUESTS, 0));
    for unready in &east_pods[10..] {
        assert_eq!(unready.hits(), 0, "not-ready endpoints get nothing");
    }

    // 5/14 healthy: health = 1.4 × 5/14 = 50% → half spills to the other region.
    east.push(2, svc(5), vec![west.as_peer()]).await;
    let (local, remote) = measure(&mut client).await;
    eprintln!("5/14 healthy: local {local}, remote {remote}");
    // Binomial(400, 0.5): sd = 10; allow 5 sd.
    assert!(
        (150..=250).contains(&remote),
        "about half remote: {remote}/{REQUESTS}"
    );
    let dump = east.config_dump().await;
    let groups = &dump["splits"]["reviews.default.global"]["destinations"][0]["groups"];
    let percents: Vec<f64> = groups
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["percent"].as_f64().unwrap())
        .collect();
    assert_eq!(percents, vec![50.0, 50.0], "{groups}");

    // 0/14 healthy: all remote.
    east.push(3, svc(0), vec![west.as_peer()]).await;
    let (local, remote) = measure(&mut client).await;
    eprintln!("0/14 healthy: local {local}, remote {remote}");
    assert_eq!((local, remote), (0, REQUESTS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_peer_gateway_takes_its_endpoints_down_at_once() {
    let mesh = Mesh::new();
    let west_pods = [
        Backend::http(Ipv4Addr::new(127, 0, 8, 1), "west", "w0").await,
        Backend::http(Ipv4Addr::new(127, 0, 8, 2), "west", "w1").await,
    ];
    let north_pods = [
        Backend::http(Ipv4Addr::new(127, 0, 9, 1), "north", "n0").await,
        Backend::http(Ipv4Addr::new(127, 0, 9, 2), "north", "n1").await,
    ];
    let (east, mut west, north) = tokio::join!(
        mesh.gateway("east", Ipv4Addr::new(127, 0, 16, 1), ("r1", "z1")),
        mesh.gateway("west", Ipv4Addr::new(127, 0, 16, 2), ("r2", "z2")),
        mesh.gateway("north", Ipv4Addr::new(127, 0, 16, 3), ("r3", "z3")),
    );
    let mut eps: Vec<_> = west_pods
        .iter()
        .map(|b| endpoint("west", b.addr, ("r2", "z2"), true))
        .collect();
    eps.extend(
        north_pods
            .iter()
            .map(|b| endpoint("north", b.addr, ("r3", "z3"), true)),
    );
    let svc = vec![service(
        "api.default.global",
        Protocol::Http,
        80,
        26080,
        eps,
        "",
    )];
    tokio::join!(
        east.push(1, svc.clone(), vec![west.as_peer(), north.as_peer()]),
        west.push(1, svc.clone(), vec![east.as_peer(), north.as_peer()]),
        north.push(1, svc.clone(), vec![east.as_peer(), west.as_peer()]),
    );
    let mut client = Client::connect(east.listener(26080), "api.default.global").await;
    let (_, remote) = measure(&mut client).await;
    assert_eq!(remote, REQUESTS);
    let west_before: usize = west_pods.iter().map(Backend::hits).sum();
    assert!(
        west_before > 100,
        "both remote clusters serve: {west_before}"
    );

    west.kill().await;
    // Requests racing the failure are retried onto the next choice; none fails.
    for _ in 0..100 {
        let (status, body) = client.get(&[]).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("north/"), "{body}");
    }
    assert_eq!(
        west_pods.iter().map(Backend::hits).sum::<usize>(),
        west_before
    );
    // The failed dial reports the peer down through the gateway's peer-event task, which
    // sets the gauge and the peer state, then rebuilds every split in one go: wait for
    // that rebuild (any endpoint unhealthy), then check all of it.
    // (cluster, healthy) per endpoint: the routing table holds endpoints grouped by
    // cluster in name order, whatever order a snapshot lists them in.
    let (dump, healthy) = eventually("the split rebuilt without west", || async {
        let dump = east.config_dump().await;
        let healthy: Vec<(String, bool)> = dump["splits"]["api.default.global"]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let cluster = e["cluster"].as_str().unwrap().to_owned();
                (cluster, e["healthy"].as_bool().unwrap())
            })
            .collect();
        healthy.iter().any(|(_, h)| !h).then_some((dump, healthy))
    })
    .await;
    assert_eq!(
        east.metric("meridian_gateway_peer_up", &[("peer", "west")])
            .await,
        0.0
    );
    assert_eq!(dump["peers"]["west"]["up"], false);
    assert_eq!(
        healthy,
        [
            ("north", true),
            ("north", true),
            ("west", false),
            ("west", false)
        ]
        .map(|(c, h)| (c.to_owned(), h)),
        "west's endpoints all down at once"
    );
}
