//! The upstream response timeout: an endpoint that accepts a request and never answers
//! costs the client a 504 after `--upstream-timeout`, not a hang, and counts as an error
//! for outlier detection; a route of the policy may set its own timeout.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use meridian_api::proto::Protocol;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use crate::support::{Gateway, Mesh, PATIENCE, endpoint, eventually, http_get, service};

const SERVICE: (&str, &str) = ("r1", "z1");

/// An endpoint on `ip` that reads requests and never answers; counts connections still
/// open.
async fn silent(ip: Ipv4Addr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let o = open.clone();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            o.fetch_add(1, Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

/// A gateway on `ip` started with `--upstream-timeout <flag>`, serving
/// `silent.default.global` on listener `port` with the one endpoint `silent` and `policy`.
async fn gateway(
    mesh: &Mesh,
    ip: Ipv4Addr,
    flag: &str,
    silent: SocketAddr,
    port: u16,
    policy: &str,
) -> Gateway {
    let endpoints = vec![endpoint("east", silent, SERVICE, true)];
    let service = service(
        "silent.default.global",
        Protocol::Http,
        80,
        port,
        endpoints,
        policy,
    );
    mesh.serving(ip, &["--upstream-timeout", flag], service)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_endpoint_gets_504_after_the_timeout() {
    let (silent, open) = silent(Ipv4Addr::new(127, 0, 40, 1)).await;
    let mesh = Mesh::new();
    let east = gateway(&mesh, Ipv4Addr::new(127, 0, 40, 2), "1s", silent, 24090, "").await;

    let status = http_get(east.listener(24090), "/", &[])
        .await
        .unwrap()
        .status;
    assert_eq!(status, 504);
    assert_eq!(
        east.metric("meridian_gateway_responses_total", &[("code", "504")])
            .await,
        1.0
    );
    // The abandoned exchange's connection is closed, not kept for the next request.
    eventually("the timed-out upstream connection closed", || async {
        (open.load(Ordering::SeqCst) == 0).then_some(())
    })
    .await;
}

/// A route's `timeout` overrides the gateway's (none here: without the route's, the
/// request would wait forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_timeout_overrides_the_default() {
    let (silent, _) = silent(Ipv4Addr::new(127, 0, 40, 11)).await;
    let mesh = Mesh::new();
    let policy = r#"{"http":[{"route":[{}],"timeout":"1s"}]}"#;
    let east = gateway(
        &mesh,
        Ipv4Addr::new(127, 0, 40, 12),
        "0s",
        silent,
        24091,
        policy,
    )
    .await;
    let answer = tokio::time::timeout(PATIENCE, http_get(east.listener(24091), "/", &[]))
        .await
        .expect("the route's timeout ends the wait");
    assert_eq!(answer.unwrap().status, 504);
}
