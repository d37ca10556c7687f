//! Retry on reset: an idempotent request whose upstream connection or tunnel stream is
//! reset before response headers arrive goes to the next choice (Envoy's
//! `retry_on: reset`), bounded by `--max-retries`; a request that is not idempotent is
//! answered 502 and never sent twice.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use meridian_api::proto::Protocol;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::support::{Backend, Mesh, endpoint, eventually, http_get, service};

/// One request with `method` to a gateway listener on a connection of its own: status
/// and body.
async fn request(addr: SocketAddr, method: &str) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri("/")
        .header("host", "api.default.global")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// What a test endpoint does with a request once it has read its head.
#[derive(Clone, Copy)]
enum AfterHead {
    /// Holds it without answering, until the connection goes.
    Hold,
    /// Resets the connection (RST, no response).
    Reset,
}

/// An HTTP endpoint on `ip` that reads each request's head and then does `after`; counts
/// the requests it read.
async fn head_reader(ip: Ipv4Addr, after: AfterHead) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let c = c.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                c.fetch_add(1, Ordering::SeqCst);
                match after {
                    AfterHead::Hold => while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {},
                    AfterHead::Reset => {
                        // Linger zero: closing sends RST instead of FIN (and never blocks,
                        // which is what the deprecation warns of).
                        #[allow(deprecated)]
                        let _ = tcp.set_linger(Some(Duration::ZERO));
                        drop(tcp);
                    }
                }
            });
        }
    });
    (addr, count)
}

/// The serving cluster's gateway dies (SIGKILL) while a GET and a POST wait for their
/// responses there. The GET is retried in the next cluster and answered; the POST gets
/// 502 and is not sent again. West (same region as the caller) has three endpoints and
/// takes all traffic; north is only the failover: without rerouting after the lost
/// tunnel, the GET's retries (`--max-retries 2`) would all go to west's other endpoints
/// behind the same dead tunnel and end in 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_in_flight_when_the_peer_gateway_dies_is_answered_by_the_next_cluster() {
    let mesh = Mesh::new();
    let mut west_pods = Vec::new();
    for i in 1..=3 {
        west_pods.push(head_reader(Ipv4Addr::new(127, 0, 60, i), AfterHead::Hold).await);
    }
    let north_pod = Backend::http(Ipv4Addr::new(127, 0, 61, 1), "north", "n0").await;
    let (east, mut west, north) = tokio::join!(
        mesh.gateway("east", Ipv4Addr::new(127, 0, 62, 1), ("r1", "z1")),
        mesh.gateway("west", Ipv4Addr::new(127, 0, 62, 2), ("r1", "z2")),
        mesh.gateway("north", Ipv4Addr::new(127, 0, 62, 3), ("r2", "z3")),
    );
    let mut eps: Vec<_> = west_pods
        .iter()
        .map(|(addr, _)| endpoint("west", *addr, ("r1", "z2"), true))
        .collect();
    eps.push(endpoint("north", north_pod.addr, ("r2", "z3"), true));
    let svc = vec![service(
        "api.default.global",
        Protocol::Http,
        80,
        27080,
        eps,
        "",
    )];
    tokio::join!(
        east.push(1, svc.clone(), vec![west.as_peer(), north.as_peer()]),
        west.push(1, svc.clone(), vec![east.as_peer(), north.as_peer()]),
        north.push(1, svc.clone(), vec![east.as_peer(), west.as_peer()]),
    );
    let addr = east.listener(27080);
    eventually("east's listener open and both peers up", || async {
        TcpStream::connect(addr).await.ok()?;
        let dump = east.config_dump().await;
        (dump["peers"]["west"]["up"] == true && dump["peers"]["north"]["up"] == true).then_some(())
    })
    .await;
    let get = tokio::spawn(async move { request(addr, "GET").await });
    let post = tokio::spawn(async move { request(addr, "POST").await });
    eventually("west holds both requests", || async {
        let held: usize = west_pods
            .iter()
            .map(|(_, h)| h.load(Ordering::SeqCst))
            .sum();
        (held == 2).then_some(())
    })
    .await;
    assert_eq!(north_pod.hits(), 0, "north is only the failover");

    west.kill().await;
    let (status, body) = get.await.unwrap();
    assert_eq!((status, body.as_str()), (200, "north/n0"));
    let (status, _) = post.await.unwrap();
    assert_eq!(status, 502, "a POST is not retried");
    assert_eq!(north_pod.hits(), 1, "only the GET reached north");
    assert_eq!(
        west_pods
            .iter()
            .map(|(_, h)| h.load(Ordering::SeqCst))
            .sum::<usize>(),
        2,
        "nothing was sent to west again"
    );
}

/// A local endpoint that resets connections as requests arrive: GETs that land on it are
/// answered by the other endpoint; a POST that lands on it gets 502 and is not resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_reset_retries_a_get_on_the_next_choice_but_not_a_post() {
    let mesh = Mesh::new();
    let (bad, resets) = head_reader(Ipv4Addr::new(127, 0, 63, 1), AfterHead::Reset).await;
    let good = Backend::http(Ipv4Addr::new(127, 0, 63, 2), "east", "e1").await;
    let east = mesh
        .gateway("east", Ipv4Addr::new(127, 0, 63, 3), ("r1", "z1"))
        .await;
    east.push(
        1,
        vec![service(
            "api.default.global",
            Protocol::Http,
            80,
            27081,
            vec![
                endpoint("east", bad, ("r1", "z1"), true),
                endpoint("east", good.addr, ("r1", "z1"), true),
            ],
            "",
        )],
        vec![],
    )
    .await;
    let addr = east.listener(27081);

    // POSTs until one lands on the resetting endpoint (each picks one of two at random).
    let mut post_reset = None;
    for _ in 0..64 {
        let (before, hits) = (resets.load(Ordering::SeqCst), good.hits());
        let (status, _) = request(addr, "POST").await;
        if resets.load(Ordering::SeqCst) > before {
            post_reset = Some((status, good.hits() - hits));
            break;
        }
        assert_eq!(status, 200);
    }
    assert_eq!(
        post_reset,
        Some((502, 0)),
        "a reset POST: 502, not sent to the other endpoint"
    );

    // GETs: every one answered, those that met a reset by the other endpoint.
    let before = resets.load(Ordering::SeqCst);
    for _ in 0..32 {
        let (status, body) = http_get(addr, "/", &[])
            .await
            .map(|r| (r.status, r.text()))
            .unwrap();
        assert_eq!((status, body.as_str()), (200, "east/e1"));
    }
    assert!(
        resets.load(Ordering::SeqCst) > before,
        "some GETs met the reset and were retried"
    );
}
