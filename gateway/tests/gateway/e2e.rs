//! TCP and HTTP end to end through two gateways, listener changes and static stability.

use std::net::Ipv4Addr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian_api::proto::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Backend, Client, Mesh, endpoint, eventually, service};

const EAST: Ipv4Addr = Ipv4Addr::new(127, 0, 10, 1);
const WEST: Ipv4Addr = Ipv4Addr::new(127, 0, 20, 1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_http_through_two_gateways() {
    let mesh = Mesh::new();
    let web = Backend::http(Ipv4Addr::new(127, 0, 2, 1), "west", "web-0").await;
    let raw = Backend::tcp_echo(Ipv4Addr::new(127, 0, 2, 2)).await;
    let (east, west) = tokio::join!(
        mesh.gateway("east", EAST, ("r1", "z1")),
        mesh.gateway("west", WEST, ("r2", "z2")),
    );
    let services = || {
        vec![
            service(
                "raw.default.global",
                Protocol::Tcp,
                9000,
                20090,
                vec![endpoint("west", raw.addr, ("r2", "z2"), true)],
                "",
            ),
            service(
                "web.default.global",
                Protocol::Http,
                80,
                20080,
                vec![endpoint("west", web.addr, ("r2", "z2"), true)],
                "",
            ),
        ]
    };
    tokio::join!(
        east.push(1, services(), vec![west.as_peer()]),
        west.push(1, services(), vec![east.as_peer()]),
    );

    // TCP: bytes both ways, and the echo still arrives after the client half-closes.
    let mut tcp = TcpStream::connect(east.listener(20090)).await.unwrap();
    tcp.write_all(b"hello through the tunnel").await.unwrap();
    let mut buf = [0u8; 24];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello through the tunnel");
    tcp.write_all(b"last words").await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"last words");

    // HTTP/1.1 and HTTP/2 clients, each request balanced on its own.
    let mut client = Client::connect(east.listener(20080), "web.default.global").await;
    for _ in 0..5 {
        assert_eq!(client.get(&[]).await, (200, "west/web-0".into()));
    }
    let tcp = TcpStream::connect(east.listener(20080)).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://web.default.global/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"west/web-0");
    assert_eq!(web.hits(), 6);

    let west_labels = [("cluster", "west"), ("locality", "r2/z2")];
    assert_eq!(
        east.metric("meridian_gateway_connections_total", &west_labels)
            .await,
        1.0
    );
    assert_eq!(
        east.metric("meridian_gateway_requests_total", &west_labels)
            .await,
        6.0
    );
    assert_eq!(
        east.metric(
            "meridian_gateway_responses_total",
            &[("cluster", "west"), ("code", "200")]
        )
        .await,
        6.0
    );
    // Bytes are counted when the spliced connection ends, which may be just after the
    // client has read its EOF: wait for the count rather than reading it once.
    eventually("bytes sent to west counted", || async {
        let sent = east
            .metric(
                "meridian_gateway_bytes_total",
                &[("cluster", "west"), ("direction", "sent")],
            )
            .await;
        (sent >= 34.0).then_some(())
    })
    .await;
    // Where traffic goes: east reports the requests it sent (source cluster east) by
    // response class, with a duration per request; west's tunnel server reports the same
    // flows as the destination, the source cluster taken from east's verified identity.
    let east_to_west = [("source_cluster", "east"), ("cluster", "west")];
    assert_eq!(
        east.metric("meridian_gateway_requests_total", &east_to_west)
            .await,
        6.0
    );
    assert_eq!(
        east.metric(
            "meridian_gateway_responses_total",
            &[("source_cluster", "east"), ("class", "2xx")]
        )
        .await,
        6.0
    );
    assert_eq!(
        east.metric(
            "meridian_gateway_request_duration_seconds_count",
            &[
                ("service", "web.default.global"),
                ("source_cluster", "east"),
                ("cluster", "west"),
                ("locality", "r2/z2"),
            ]
        )
        .await,
        6.0
    );
    assert_eq!(
        east.metric(
            "meridian_gateway_connections_total",
            &[("source_cluster", "east"), ("reporter", "source")]
        )
        .await,
        1.0
    );
    // Two tunnel streams: the TCP connection and the pooled upstream HTTP connection.
    assert_eq!(
        west.metric(
            "meridian_gateway_connections_total",
            &[
                ("source_cluster", "east"),
                ("cluster", "west"),
                ("locality", "r2/z2"),
                ("reporter", "destination"),
            ]
        )
        .await,
        2.0
    );
    eventually("bytes from east counted by west", || async {
        let sent = west
            .metric(
                "meridian_gateway_bytes_total",
                &[
                    ("service", "raw.default.global"),
                    ("source_cluster", "east"),
                    ("reporter", "destination"),
                    ("direction", "sent"),
                ],
            )
            .await;
        (sent >= 34.0).then_some(())
    })
    .await;
    // The engine's split at east, published beside the traffic: all of web to r2/z2.
    assert_eq!(
        east.metric(
            "meridian_gateway_split_percent",
            &[
                ("service", "web.default.global"),
                ("source_cluster", "east"),
                ("locality", "r2/z2"),
            ]
        )
        .await,
        100.0
    );
    // Bounded cardinality: no traffic series names a pod or an address.
    for text in [east.metrics().await, west.metrics().await] {
        for line in text.lines().filter(|l| {
            [
                "requests",
                "responses",
                "request_duration",
                "connections",
                "bytes",
            ]
            .iter()
            .any(|m| l.starts_with(&format!("meridian_gateway_{m}")))
        }) {
            assert!(
                !line.contains("web-0") && !line.contains("127.0."),
                "{line}"
            );
        }
    }
    // One pooled tunnel connection carried every stream: the TCP connection's, and one
    // for all six HTTP requests, which reuse the same upstream HTTP/1.1 connection.
    assert_eq!(
        east.metric(
            "meridian_gateway_tunnel_handshakes_total",
            &[("side", "client"), ("peer", "west"), ("result", "ok")]
        )
        .await,
        1.0
    );
    assert_eq!(
        west.metric("meridian_gateway_tunnel_streams_total", &[])
            .await,
        2.0
    );
    assert_eq!(
        west.metric(
            "meridian_gateway_tunnel_handshakes_total",
            &[("side", "server"), ("peer", "east"), ("result", "ok")]
        )
        .await,
        1.0
    );
    let dump = east.config_dump().await;
    assert_eq!(dump["snapshot"]["version"], east.version());
    assert_eq!(
        dump["splits"]["web.default.global"]["destinations"][0]["groups"][0]["percent"],
        100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_snapshots_and_survive_the_controller() {
    let mesh = Mesh::new();
    let ip = Ipv4Addr::new(127, 0, 11, 1);
    let raw = Backend::tcp_echo(Ipv4Addr::new(127, 0, 1, 21)).await;
    let web = Backend::http(Ipv4Addr::new(127, 0, 1, 22), "east", "web-0").await;
    let mut east = mesh.gateway("east", ip, ("r1", "z1")).await;
    let raw_svc = service(
        "raw.default.global",
        Protocol::Tcp,
        9000,
        21090,
        vec![endpoint("east", raw.addr, ("r1", "z1"), true)],
        "",
    );
    let web_svc = service(
        "web.default.global",
        Protocol::Http,
        80,
        21080,
        vec![endpoint("east", web.addr, ("r1", "z1"), true)],
        "",
    );
    east.push(1, vec![raw_svc.clone()], vec![]).await;

    // A long-lived connection on the TCP listener.
    let mut tcp = TcpStream::connect(east.listener(21090)).await.unwrap();
    tcp.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    tcp.read_exact(&mut buf).await.unwrap();
    assert!(TcpStream::connect(east.listener(21080)).await.is_err());

    // A new service opens its listener; the other listener and its connection are untouched.
    east.push(2, vec![raw_svc.clone(), web_svc.clone()], vec![])
        .await;
    assert_eq!(
        Client::connect(east.listener(21080), "web.default.global")
            .await
            .get(&[])
            .await,
        (200, "east/web-0".into())
    );
    tcp.write_all(b"two").await.unwrap();
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"two");

    // Removing the TCP service closes its listener, not the open connection. (The
    // listener task is aborted, and drops its socket once the runtime gets to it.)
    east.push(3, vec![web_svc.clone()], vec![]).await;
    eventually("the TCP listener closed", || async {
        TcpStream::connect(east.listener(21090))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    tcp.write_all(b"3rd").await.unwrap();
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"3rd");

    // Static stability: the controller goes away, the last snapshot keeps serving.
    east.controller.stop().await;
    eventually("the gateway notices the controller is gone", || async {
        let connected = east
            .metric("meridian_gateway_controller_connected", &[])
            .await;
        (connected == 0.0).then_some(())
    })
    .await;
    let mut client = Client::connect(east.listener(21080), "web.default.global").await;
    assert_eq!(client.get(&[]).await.0, 200);
    // And it picks up again when the controller is back.
    east.controller.restart().await.unwrap();
    east.push(4, vec![raw_svc, web_svc], vec![]).await;
    // The snapshot reaches the gateway after the reconnect's backoff: wait for the listener.
    eventually("the listener of snapshot 4 opens", || async {
        TcpStream::connect(east.listener(21090))
            .await
            .ok()
            .map(drop)
    })
    .await;
    east.kill().await;
}
