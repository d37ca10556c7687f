//! Snapshot changes: visible on the next query, swapped atomically.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::proto::rr::{DNSClass, Name, RData, RecordType};
use meridian_api::proto::{Endpoint, ServicePort};
use meridian_api::testing::FakeDiscovery;
use tokio::net::UdpSocket;

use crate::support::{
    CLUSTER, Dns, PATIENCE, REPLY_WAIT, header, query_bytes, service, serving, snapshot,
};

#[tokio::test]
async fn the_controller_hears_who_subscribes() {
    let (controller, _dns) = serving(snapshot(1, vec![]), &[]).await;
    let subscriber = controller.wait_for_subscribers(1).await.remove(0);
    assert_eq!(subscriber.cluster, CLUSTER);
    assert_eq!(subscriber.role, "dns");
    assert!(
        subscriber.instance.starts_with("dns-test-"),
        "{subscriber:?}"
    );
}

#[tokio::test]
async fn a_snapshot_change_is_visible_on_the_next_query() {
    let (controller, dns) = serving(
        snapshot(1, vec![service("reviews", "default", "10.96.0.10")]),
        &[],
    )
    .await;
    assert_eq!(
        dns.dig(&["reviews.default.global"]).await.answers(),
        ["10.96.0.10"]
    );

    // New VIP, a new service, and a service gone.
    controller.push(snapshot(
        2,
        vec![
            service("details", "default", "10.96.0.30"),
            service("reviews", "default", "10.96.0.20"),
        ],
    ));
    dns.wait_version(2).await;
    assert_eq!(
        dns.dig(&["reviews.default.global"]).await.answers(),
        ["10.96.0.20"]
    );
    assert_eq!(
        dns.dig(&["details.default.global"]).await.answers(),
        ["10.96.0.30"]
    );
    let soa = dns.dig(&["global", "SOA"]).await;
    assert!(
        soa.answers()[0].contains(" 2 60 30 3600 "),
        "serial: {}",
        soa.raw
    );

    controller.push(snapshot(
        3,
        vec![service("details", "default", "10.96.0.30")],
    ));
    dns.wait_version(3).await;
    let gone = dns.dig(&["reviews.default.global"]).await;
    assert_eq!(gone.status, "NXDOMAIN", "{}", gone.raw);
}

/// Version `v` of the mesh: port `1000 + v` and VIP `10.0.<v / 256>.<v % 256>`, so every
/// answer says which snapshot each of its records came from.
fn versioned(v: u64) -> meridian_api::proto::Snapshot {
    let mut svc = service(
        "reviews",
        "default",
        &format!("10.0.{}.{}", v / 256, v % 256),
    );
    svc.ports = vec![ServicePort {
        name: "http".into(),
        port: 1000 + v as u32,
        ..Default::default()
    }];
    snapshot(v, vec![svc])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_answer_comes_from_one_snapshot() {
    let (controller, dns) = serving(versioned(1), &[]).await;
    let stream = UdpClientStream::builder(dns.addr, TokioRuntimeProvider::default())
        .with_timeout(Some(Duration::from_secs(2)))
        .build();
    let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(background);

    // Queries run while snapshots are swapped underneath them.
    let done = Arc::new(AtomicBool::new(false));
    // The most versions any one querier has seen so far.
    let overlapped = Arc::new(AtomicUsize::new(0));
    let mut queriers = Vec::new();
    for _ in 0..4 {
        let mut client = client.clone();
        let done = done.clone();
        let overlapped = overlapped.clone();
        queriers.push(tokio::spawn(async move {
            let name = Name::from_str("_http._tcp.reviews.default.global.").unwrap();
            let (mut checked, mut versions) = (0_u32, std::collections::BTreeSet::new());
            while !done.load(Ordering::Relaxed) {
                let Ok(response) = client
                    .query(name.clone(), DNSClass::IN, RecordType::SRV)
                    .await
                else {
                    continue; // a lost datagram says nothing about consistency
                };
                let port = response.answers.iter().find_map(|rr| match &rr.data {
                    RData::SRV(srv) => Some(u64::from(srv.port) - 1000),
                    _ => None,
                });
                let address = response.additionals.iter().find_map(|rr| match &rr.data {
                    RData::A(a) => {
                        let [_, _, hi, lo] = a.0.octets();
                        Some(u64::from(hi) * 256 + u64::from(lo))
                    }
                    _ => None,
                });
                let (Some(port), Some(address)) = (port, address) else {
                    panic!("incomplete answer: {response:?}");
                };
                assert_eq!(port, address, "an answer mixed two snapshots");
                versions.insert(port);
                overlapped.fetch_max(versions.len(), Ordering::Relaxed);
                checked += 1;
            }
            (checked, versions.len())
        }));
    }

    let mut last = 200;
    for v in 2..=last {
        controller.push(versioned(v));
        if v % 20 == 0 {
            dns.wait_version(v).await;
        }
    }
    dns.wait_version(last).await;
    // Whether the queriers got a word in during those swaps depends on scheduling: on a
    // loaded machine keep swapping (bounded by PATIENCE) until one of them has seen the
    // answer change, so `distinct > 1` below checks the server, not the machine's speed.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while overlapped.load(Ordering::Relaxed) < 2 && tokio::time::Instant::now() < deadline {
        last += 1;
        controller.push(versioned(last));
        dns.wait_version(last).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, Ordering::Relaxed);
    let (mut checked, mut distinct) = (0, 0);
    for querier in queriers {
        let (n, versions) = tokio::time::timeout(PATIENCE, querier)
            .await
            .expect("querier ends")
            .expect("querier passed");
        checked += n;
        distinct = distinct.max(versions);
    }
    println!(
        "atomic swap: {checked} answers checked, up to {distinct} versions seen by one querier"
    );
    assert!(checked > 0);
    assert!(distinct > 1, "queries never overlapped a swap");
}

/// Queries `args` until the answers are `want` (bounded by PATIENCE).
async fn wait_answers(dns: &Dns, args: &[&str], want: &[&str]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut answers = dns.dig(args).await.answers().join(" ");
        let mut sorted: Vec<&str> = answers.split(' ').filter(|a| !a.is_empty()).collect();
        sorted.sort_unstable();
        answers = sorted.join(" ");
        if answers == want.join(" ") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{args:?} never answered {want:?} (last: {answers}); log:\n{}",
            dns.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_change_on_the_delta_stream_rebuilds_only_its_service() {
    let controller = FakeDiscovery::start_delta().await.expect("fake controller");
    let mut db = service("db", "default", "10.96.0.20");
    db.headless = true;
    db.endpoints = ["10.1.0.1", "10.1.0.2"]
        .iter()
        .enumerate()
        .map(|(i, address)| Endpoint {
            cluster: CLUSTER.into(),
            pod: format!("db-{i}"),
            address: (*address).into(),
            ready: true,
            ..Endpoint::default()
        })
        .collect();
    let reviews = service("reviews", "default", "10.96.0.10");
    controller.push(snapshot(1, vec![db.clone(), reviews.clone()]));
    let dns = Dns::start(&controller, &[]).await;
    let db_name = "db.default.svc.clusterset.local";
    wait_answers(&dns, &[db_name], &["10.1.0.1", "10.1.0.2"]).await;

    // One endpoint goes unready: one endpoints resource on the wire, one service rebuilt.
    db.endpoints[1].ready = false;
    controller.push(snapshot(2, vec![db, reviews]));
    wait_answers(&dns, &[db_name], &["10.1.0.1"]).await;
    let gone = dns
        .dig(&["db-1.east.db.default.svc.clusterset.local"])
        .await;
    assert_eq!(gone.status, "NXDOMAIN", "{}", gone.raw);
    assert_eq!(
        dns.dig(&["reviews.default.global"]).await.answers(),
        ["10.96.0.10"]
    );
    assert!(
        controller.delta_requests().len() >= 2,
        "the server followed the delta stream and acknowledged it"
    );
    let log = dns.log();
    let updates: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("zones updated"))
        .collect();
    assert!(
        updates.last().is_some_and(|l| l.contains("services=1 ")),
        "{updates:#?}"
    );
}

/// The same query from one socket (so the same server socket and its answer cache) gets
/// byte-identical answers but for the ID, served from the cache, until the zones change:
/// the first query after a change is answered from the new zones.
#[tokio::test]
async fn a_repeated_query_is_answered_from_the_cache_until_the_zones_change() {
    let (controller, dns) = serving(
        snapshot(1, vec![service("reviews", "default", "10.96.0.10")]),
        &[],
    )
    .await;
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let ask = |id: u16| {
        let client = &client;
        let query = query_bytes(id, 0x0100, &[("reviews.default.global", 1, 1)]);
        async move {
            client.send_to(&query, dns.addr).await.expect("send");
            let mut buf = vec![0; 4096];
            let (len, _) = tokio::time::timeout(REPLY_WAIT, client.recv_from(&mut buf))
                .await
                .expect("an answer")
                .expect("recv");
            buf.truncate(len);
            buf
        }
    };
    let hits = "meridian_dns_answer_cache_hits_total";
    let first = ask(1).await;
    assert!(first.ends_with(&[10, 96, 0, 10]), "{first:?}");
    assert_eq!(dns.metric(hits).await, Some(0.0));
    let second = ask(0xabcd).await;
    assert_eq!(header(&second).id, 0xabcd);
    assert_eq!(first[2..], second[2..]);
    assert_eq!(
        dns.metric(hits).await,
        Some(1.0),
        "the repeat came from the cache"
    );
    assert_eq!(
        dns.metric(r#"meridian_dns_queries_total{qtype="A",rcode="NOERROR",protocol="udp"}"#)
            .await,
        Some(2.0),
        "a cached answer is counted as a query too"
    );

    controller.push(snapshot(
        2,
        vec![service("reviews", "default", "10.96.0.20")],
    ));
    dns.wait_version(2).await;
    let third = ask(3).await;
    assert!(third.ends_with(&[10, 96, 0, 20]), "stale answer: {third:?}");
    let fourth = ask(4).await;
    assert_eq!(third[2..], fourth[2..]);
    assert_eq!(dns.metric(hits).await, Some(2.0));
}
