//! A VIP pinned to one cluster (`west.reviews.default.global`): its listener reaches only
//! that cluster's endpoints, through the same locality engine, while the global listener
//! of the same service keeps everything local.

use std::net::Ipv4Addr;

use meridian_api::proto::{ClusterVip, Protocol, ServicePort};

use crate::support::{Backend, Client, Mesh, answers_per_cluster, endpoint, service};

const REQUESTS: usize = 100;

/// Answers per cluster (the echo body starts with the cluster name).
async fn tally(client: &mut Client) -> (usize, usize) {
    let answers = answers_per_cluster(client, REQUESTS).await;
    let count = |cluster| answers.get(cluster).copied().unwrap_or(0);
    assert_eq!(
        count("east") + count("west"),
        REQUESTS,
        "unexpected answers: {answers:?}"
    );
    (count("east"), count("west"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_listener_reaches_only_its_cluster() {
    let mesh = Mesh::new();
    let east_pods = [
        Backend::http(Ipv4Addr::new(127, 0, 21, 1), "east", "e0").await,
        Backend::http(Ipv4Addr::new(127, 0, 21, 2), "east", "e1").await,
    ];
    let west_pods = [
        Backend::http(Ipv4Addr::new(127, 0, 22, 1), "west", "w0").await,
        Backend::http(Ipv4Addr::new(127, 0, 22, 2), "west", "w1").await,
        Backend::http(Ipv4Addr::new(127, 0, 22, 3), "west", "w2").await,
    ];
    let (east, west) = tokio::join!(
        mesh.gateway("east", Ipv4Addr::new(127, 0, 23, 1), ("r1", "z1")),
        mesh.gateway("west", Ipv4Addr::new(127, 0, 23, 2), ("r2", "z2")),
    );
    // West's pods are in two zones: the pinned VIP fails over between them.
    let west_zone = |i: usize| if i == 0 { ("r2", "z2") } else { ("r2", "z3") };
    let pin = |cluster: &str, listener: u32| ClusterVip {
        cluster: cluster.into(),
        vip: String::new(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 9080,
            protocol: Protocol::Http as i32,
            listener_port: listener,
        }],
    };
    let svc = |west_ready: &[bool]| {
        let mut eps: Vec<_> = east_pods
            .iter()
            .map(|b| endpoint("east", b.addr, ("r1", "z1"), true))
            .collect();
        eps.extend(
            west_pods
                .iter()
                .enumerate()
                .map(|(i, b)| endpoint("west", b.addr, west_zone(i), west_ready[i])),
        );
        let mut s = service(
            "reviews.default.global",
            Protocol::Http,
            9080,
            22190,
            eps,
            "",
        );
        s.cluster_vips = vec![pin("east", 22191), pin("west", 22192)];
        vec![s]
    };
    west.push(1, svc(&[true; 3]), vec![east.as_peer()]).await;
    east.push(1, svc(&[true; 3]), vec![west.as_peer()]).await;

    // Everything healthy: the global listener stays in east, the west pin goes to west.
    let mut global = Client::connect(east.listener(22190), "reviews.default.global").await;
    assert_eq!(tally(&mut global).await, (REQUESTS, 0));
    let mut pinned = Client::connect(east.listener(22192), "west.reviews.default.global").await;
    assert_eq!(tally(&mut pinned).await, (0, REQUESTS));
    // The east pin is local, like the global VIP here.
    let mut east_pin = Client::connect(east.listener(22191), "east.reviews.default.global").await;
    assert_eq!(tally(&mut east_pin).await, (REQUESTS, 0));

    // West's z2 pod goes unready: the pin fails over to west's other zone, never to east.
    let before: Vec<usize> = west_pods.iter().map(Backend::hits).collect();
    east.push(2, svc(&[false, true, true]), vec![west.as_peer()])
        .await;
    assert_eq!(tally(&mut pinned).await, (0, REQUESTS));
    assert_eq!(
        west_pods[0].hits(),
        before[0],
        "the unready pod gets nothing"
    );

    // Every west pod unready: the pin still never spills into east (it balances in panic
    // over west's pods); the global listener is unaffected.
    east.push(3, svc(&[false; 3]), vec![west.as_peer()]).await;
    assert_eq!(tally(&mut pinned).await, (0, REQUESTS));
    assert_eq!(tally(&mut global).await, (REQUESTS, 0));

    // The split the gateway reports for the pin names only west's localities.
    let dump = east.config_dump().await;
    let split = &dump["splits"]["west.reviews.default.global"];
    let endpoints = split["endpoints"].as_array().expect("the pin has a split");
    assert_eq!(endpoints.len(), 3, "{split}");
    assert!(
        endpoints.iter().all(|e| e["cluster"] == "west"),
        "{endpoints:?}"
    );
}
