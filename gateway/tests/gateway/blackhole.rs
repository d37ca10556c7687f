//! A blackholed endpoint (accepts connections, never answers) under sequential traffic:
//! the response timeout turns each request that lands on it into a 504, outlier
//! detection ejects it after `consecutive5xxErrors` of them, and traffic moves to the
//! healthy endpoint. The failed requests and the time to move are printed.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use meridian_api::proto::Protocol;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::support::{Backend, Mesh, endpoint, http_get, service};

/// An endpoint on `ip` that accepts connections and reads forever; counts connections.
async fn blackhole(ip: Ipv4Addr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_endpoint_is_ejected_after_consecutive_timeouts() {
    let (hole, accepted) = blackhole(Ipv4Addr::new(127, 0, 64, 1)).await;
    let good = Backend::http(Ipv4Addr::new(127, 0, 64, 2), "east", "e1").await;
    let mesh = Mesh::new();
    let east = mesh
        .gateway_with(
            "east",
            Ipv4Addr::new(127, 0, 64, 3),
            ("r1", "z1"),
            &["--upstream-timeout", "500ms"],
        )
        .await;
    let policy = r#"{"outlierDetection":{"consecutive5xxErrors":3,"interval":"1s","baseEjectionTime":"5m","maxEjectionPercent":50}}"#;
    east.push(
        1,
        vec![service(
            "api.default.global",
            Protocol::Http,
            80,
            27280,
            vec![
                endpoint("east", hole, ("r1", "z1"), true),
                endpoint("east", good.addr, ("r1", "z1"), true),
            ],
            policy,
        )],
        vec![],
    )
    .await;
    let addr = east.listener(27280);

    let start = Instant::now();
    let (mut sent, mut timed_out, mut last_timeout) = (0, 0, None);
    // Until the blackhole is ejected, and 100 requests more.
    let mut after_ejection = 0;
    while after_ejection < 100 {
        sent += 1;
        let (status, body) = http_get(addr, "/", &[])
            .await
            .map(|r| (r.status, r.text()))
            .unwrap();
        match status {
            200 => assert_eq!(body, "east/e1"),
            504 => {
                timed_out += 1;
                last_timeout = Some(start.elapsed());
            }
            other => panic!("unexpected {other}: {body}"),
        }
        if east
            .metric(
                "meridian_gateway_ejected_endpoints",
                &[("service", "api.default.global")],
            )
            .await
            == 1.0
        {
            after_ejection += 1;
        }
    }
    println!(
        "blackhole: {timed_out} of {sent} requests failed (504 after the 500 ms response timeout); last failure {last_timeout:?} after the start"
    );
    assert_eq!(
        timed_out, 3,
        "one 504 per consecutive error before ejection"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "nothing sent to it after"
    );
}
