//! Passive outlier detection on real requests.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;

use meridian_api::proto::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Backend, Client, Mesh, endpoint, service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejects_a_503_backend_after_three_consecutive_errors() {
    let mesh = Mesh::new();
    let mut pods = Vec::new();
    for i in 0..4u8 {
        pods.push(Backend::http(Ipv4Addr::new(127, 0, 5, 10 + i), "east", &format!("p{i}")).await);
    }
    let bad = pods[0].clone();
    bad.failing.store(true, Ordering::SeqCst);
    let east = mesh
        .gateway("east", Ipv4Addr::new(127, 0, 13, 1), ("r1", "z1"))
        .await;
    let policy = r#"{"outlierDetection":{"consecutive5xxErrors":3,"interval":"1s","baseEjectionTime":"5m","maxEjectionPercent":50}}"#;
    let eps = pods
        .iter()
        .map(|b| endpoint("east", b.addr, ("r1", "z1"), true))
        .collect();
    east.push(
        1,
        vec![service(
            "ratings.default.global",
            Protocol::Http,
            9080,
            23080,
            eps,
            policy,
        )],
        vec![],
    )
    .await;

    let mut client = Client::connect(east.listener(23080), "ratings.default.global").await;
    for i in 0..200 {
        let (status, body) = client.get(&[]).await;
        // The 503s are retried onto the next choice, so clients never see them.
        assert_eq!(status, 200, "request {i}: {body}");
    }
    assert_eq!(
        bad.hits(),
        3,
        "ejected after exactly three consecutive 503s"
    );
    assert_eq!(
        east.metric(
            "meridian_gateway_ejections_total",
            &[("service", "ratings.default.global")]
        )
        .await,
        1.0
    );
    assert_eq!(
        east.metric("meridian_gateway_responses_total", &[("code", "503")])
            .await,
        3.0
    );
    assert_eq!(
        east.metric(
            "meridian_gateway_ejected_endpoints",
            &[("service", "ratings.default.global")]
        )
        .await,
        1.0
    );
    let dump = east.config_dump().await;
    assert_eq!(dump["ejections"][0]["address"], bad.addr.ip().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connect_failures_eject_and_fail_over() {
    let mesh = Mesh::new();
    let live = Backend::tcp_echo(Ipv4Addr::new(127, 0, 5, 30)).await;
    // Nothing listens here.
    let dead_ip = Ipv4Addr::new(127, 0, 5, 31);
    let dead = std::net::SocketAddr::from((dead_ip, meridian_testbed::free_port(dead_ip).unwrap()));
    let east = mesh
        .gateway("east", Ipv4Addr::new(127, 0, 13, 2), ("r1", "z1"))
        .await;
    let policy = r#"{"outlierDetection":{"consecutive5xxErrors":3,"baseEjectionTime":"5m","maxEjectionPercent":50}}"#;
    east.push(
        1,
        vec![service(
            "db.default.global",
            Protocol::Tcp,
            5432,
            23090,
            vec![
                endpoint("east", live.addr, ("r1", "z1"), true),
                endpoint("east", dead, ("r1", "z1"), true),
            ],
            policy,
        )],
        vec![],
    )
    .await;
    for _ in 0..30 {
        let mut tcp = TcpStream::connect(east.listener(23090)).await.unwrap();
        tcp.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tcp.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }
    assert_eq!(
        live.hits(),
        30,
        "every connection ends up on the live endpoint"
    );
    assert_eq!(
        east.metric(
            "meridian_gateway_ejections_total",
            &[("service", "db.default.global")]
        )
        .await,
        1.0
    );
    assert_eq!(
        east.metric("meridian_gateway_connect_failures_total", &[])
            .await,
        3.0
    );
}
