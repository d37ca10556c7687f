//! Listener limits against a real gateway: silent clients are closed (request headers,
//! TLS handshake, idle splices), connections beyond a cap are refused, and each is
//! counted by listener and reason. Timeouts are set short by flag; the tests only
//! require the close to come before [`PATIENCE`].

use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian_api::proto::{Locality, Peer, Protocol};
use meridian_identity::{Credentials, Identity, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    Backend, Gateway, Mesh, PATIENCE, TD, endpoint, eventually, http_get, service,
};

const EAST: (&str, &str) = ("r1", "z1");
const WEST: (&str, &str) = ("r2", "z2");

/// Reads until the server closes `tcp`; fails if it is still open after [`PATIENCE`].
async fn closed_by_server(tcp: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(PATIENCE, async {
        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(closed.is_ok(), "{what}: still open after {PATIENCE:?}");
}

/// Waits until the gateway's `name` samples with `labels` sum to `want`.
async fn counted(gw: &Gateway, name: &str, labels: &[(&str, &str)], want: f64) {
    let what = format!("{name}{labels:?} = {want}");
    eventually(&what, || async {
        (gw.metric(name, labels).await == want).then_some(())
    })
    .await;
}

/// A gateway on `ip` with `flags`, serving one service on listener `port` with the local
/// endpoint `backend` (`protocol` decides HTTP or TCP).
async fn gateway(
    mesh: &Mesh,
    ip: Ipv4Addr,
    flags: &[&str],
    protocol: Protocol,
    port: u16,
    backend: SocketAddr,
) -> Gateway {
    let endpoints = vec![endpoint("east", backend, EAST, true)];
    let service = service("web.default.global", protocol, 80, port, endpoints, "");
    mesh.serving(ip, flags, service).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_http_listener_closes_a_client_that_never_finishes_its_headers() {
    let web = Backend::http(Ipv4Addr::new(127, 0, 50, 1), "east", "web-0").await;
    let mesh = Mesh::new();
    let ip = Ipv4Addr::new(127, 0, 50, 2);
    let flags = ["--http-header-timeout", "1s"];
    let east = gateway(&mesh, ip, &flags, Protocol::Http, 25080, web.addr).await;

    let mut tcp = TcpStream::connect(east.listener(25080)).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    closed_by_server(&mut tcp, "half-sent request headers").await;
    assert_eq!(web.hits(), 0, "nothing reached the endpoint");
    let labels = [("listener", "outbound"), ("reason", "header")];
    counted(&east, "meridian_gateway_timeouts_total", &labels, 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_closes_a_client_that_never_finishes_its_headers() {
    let web = Backend::http(Ipv4Addr::new(127, 0, 50, 3), "east", "web-0").await;
    let mesh = Mesh::new();
    let ip = Ipv4Addr::new(127, 0, 50, 4);
    let flags = ["--admin-header-timeout", "1s"];
    let east = gateway(&mesh, ip, &flags, Protocol::Http, 25081, web.addr).await;
    // The probe listener (pod IP in a cluster) has no /config_dump; only the loopback one.
    assert_eq!(
        http_get(east.admin, "/config_dump", &[])
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        http_get(east.dump, "/config_dump", &[])
            .await
            .unwrap()
            .status,
        200
    );

    for admin in [east.admin, east.dump] {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        closed_by_server(&mut tcp, &format!("admin {admin}")).await;
    }
    let labels = [("reason", "header_timeout")];
    counted(
        &east,
        "meridian_gateway_admin_connections_closed_total",
        &labels,
        2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_refuses_connections_beyond_the_cap() {
    let web = Backend::http(Ipv4Addr::new(127, 0, 50, 5), "east", "web-0").await;
    let mesh = Mesh::new();
    let ip = Ipv4Addr::new(127, 0, 50, 6);
    let flags = ["--admin-max-connections", "2"];
    let east = gateway(&mesh, ip, &flags, Protocol::Http, 25082, web.addr).await;

    // Two idle connections fill the config-dump listener; the third is closed at once.
    // (Its own limit: the probe listener, scraped below, is not affected.)
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(east.dump).await.unwrap());
    }
    let mut third = TcpStream::connect(east.dump).await.unwrap();
    third
        .write_all(b"GET /healthz/ready HTTP/1.1\r\n\r\n")
        .await
        .ok();
    closed_by_server(&mut third, "third admin connection").await;
    let labels = [("reason", "max_connections")];
    counted(
        &east,
        "meridian_gateway_admin_connections_closed_total",
        &labels,
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_listener_refuses_connections_beyond_the_cap() {
    let raw = Backend::tcp_echo(Ipv4Addr::new(127, 0, 50, 7)).await;
    let mesh = Mesh::new();
    let ip = Ipv4Addr::new(127, 0, 50, 8);
    let flags = ["--max-connections", "2"];
    let east = gateway(&mesh, ip, &flags, Protocol::Tcp, 25083, raw.addr).await;

    let mut held = Vec::new();
    for i in 0..2u8 {
        let mut tcp = TcpStream::connect(east.listener(25083)).await.unwrap();
        tcp.write_all(&[i]).await.unwrap();
        let mut echo = [0u8; 1];
        tcp.read_exact(&mut echo).await.unwrap();
        held.push(tcp);
    }
    let mut third = TcpStream::connect(east.listener(25083)).await.unwrap();
    closed_by_server(&mut third, "third connection").await;
    let labels = [("listener", "outbound"), ("reason", "max_connections")];
    counted(
        &east,
        "meridian_gateway_connections_refused_total",
        &labels,
        1.0,
    )
    .await;

    // A slot freed by a client is usable again (once the gateway has seen it close).
    drop(held.pop());
    eventually("a connection in the freed slot", || async {
        let mut tcp = TcpStream::connect(east.listener(25083)).await.ok()?;
        tcp.write_all(b"x").await.ok()?;
        let mut echo = [0u8; 1];
        tcp.read_exact(&mut echo).await.ok().map(|_| ())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_spliced_tcp_connection_is_closed_after_the_idle_timeout() {
    let raw = Backend::tcp_echo(Ipv4Addr::new(127, 0, 50, 9)).await;
    let mesh = Mesh::new();
    let ip = Ipv4Addr::new(127, 0, 50, 10);
    let flags = ["--idle-timeout", "1s"];
    let east = gateway(&mesh, ip, &flags, Protocol::Tcp, 25084, raw.addr).await;

    let mut tcp = TcpStream::connect(east.listener(25084)).await.unwrap();
    tcp.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    tcp.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    closed_by_server(&mut tcp, "idle spliced connection").await;
    let labels = [("listener", "outbound"), ("reason", "idle")];
    counted(&east, "meridian_gateway_timeouts_total", &labels, 1.0).await;
}

/// The `west` gateway, serving `raw.default.global` (TCP, listener 25090) from `raw`,
/// with `east` as its peer, started with `flags`.
async fn west_with(mesh: &Mesh, ip: Ipv4Addr, raw: SocketAddr, flags: &[&str]) -> Gateway {
    let west = mesh.gateway_with("west", ip, WEST, flags).await;
    let east = Peer {
        cluster: "east".into(),
        address: "127.0.50.250:15008".into(),
        identity: format!("spiffe://{TD}/cluster/east/gateway"),
        locality: Some(Locality {
            region: EAST.0.into(),
            zone: EAST.1.into(),
            subzone: String::new(),
        }),
    };
    west.push(
        1,
        vec![service(
            "raw.default.global",
            Protocol::Tcp,
            9000,
            25090,
            vec![endpoint("west", raw, WEST, true)],
            "",
        )],
        vec![east],
    )
    .await;
    west
}

/// An HTTP/2 tunnel connection to `gw` with `creds`, ready for requests.
async fn tunnel(
    gw: &Gateway,
    creds: Credentials,
) -> Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>, String> {
    let connector = tls::watch(creds).unwrap().1.connector();
    let server = Identity::gateway(TD, &gw.cluster).unwrap();
    let tcp = TcpStream::connect(gw.tunnel)
        .await
        .map_err(|e| e.to_string())?;
    let tls = connector
        .connect(tcp, &server)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.ready().await.map_err(|e| e.to_string())?;
    Ok(sender)
}

/// Opens a CONNECT stream to `target` of `raw.default.global:9000`; its status.
async fn connect(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    target: SocketAddr,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let req = Request::connect(target.to_string())
        .header("meridian-service", "raw.default.global:9000")
        .body(Empty::new())
        .unwrap();
    sender.send_request(req).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_closes_a_client_that_never_handshakes() {
    let raw = Backend::tcp_echo(Ipv4Addr::new(127, 0, 50, 11)).await;
    let mesh = Mesh::new();
    let ip = Ipv4Addr::new(127, 0, 50, 12);
    let west = west_with(&mesh, ip, raw.addr, &["--handshake-timeout", "1s"]).await;

    // One client sends nothing; the other starts a TLS record and stalls.
    let mut silent = TcpStream::connect(west.tunnel).await.unwrap();
    let mut stalled = TcpStream::connect(west.tunnel).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    closed_by_server(&mut silent, "silent tunnel client").await;
    closed_by_server(&mut stalled, "stalled TLS handshake").await;
    let labels = [("listener", "tunnel"), ("reason", "handshake")];
    counted(&west, "meridian_gateway_timeouts_total", &labels, 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_refuses_connections_beyond_the_listener_and_peer_caps() {
    let raw = Backend::tcp_echo(Ipv4Addr::new(127, 0, 50, 13)).await;
    let mesh = Mesh::new();
    let ip = Ipv4Addr::new(127, 0, 50, 14);
    let flags = ["--max-connections", "3", "--max-peer-connections", "1"];
    let west = west_with(&mesh, ip, raw.addr, &flags).await;
    let east = mesh.ca.issue("east").credentials();

    // One connection per peer identity: the first works, the second is closed.
    let mut first = tunnel(&west, east.clone()).await.unwrap();
    assert_eq!(connect(&mut first, raw.addr).await.unwrap().status(), 200);
    let second = match tunnel(&west, east.clone()).await {
        Ok(mut sender) => connect(&mut sender, raw.addr).await.map(|r| r.status()),
        Err(e) => Err(e),
    };
    assert!(second.is_err(), "second connection of one peer: {second:?}");
    let labels = [("listener", "tunnel"), ("reason", "max_peer_connections")];
    counted(
        &west,
        "meridian_gateway_connections_refused_total",
        &labels,
        1.0,
    )
    .await;

    // Three connections per listener, authenticated or not: with `first` and two silent
    // sockets open, a fourth is closed on accept.
    let _silent: Vec<TcpStream> = vec![
        TcpStream::connect(west.tunnel).await.unwrap(),
        TcpStream::connect(west.tunnel).await.unwrap(),
    ];
    let mut fourth = TcpStream::connect(west.tunnel).await.unwrap();
    closed_by_server(&mut fourth, "fourth tunnel connection").await;
    let labels = [("listener", "tunnel"), ("reason", "max_connections")];
    counted(
        &west,
        "meridian_gateway_connections_refused_total",
        &labels,
        1.0,
    )
    .await;
    // The admitted peer is untouched.
    assert_eq!(connect(&mut first, raw.addr).await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_stream_is_closed_after_the_idle_timeout() {
    let raw = Backend::tcp_echo(Ipv4Addr::new(127, 0, 50, 15)).await;
    let mesh = Mesh::new();
    let ip = Ipv4Addr::new(127, 0, 50, 16);
    let west = west_with(&mesh, ip, raw.addr, &["--idle-timeout", "1s"]).await;
    let east = mesh.ca.issue("east").credentials();

    let mut sender = tunnel(&west, east).await.unwrap();
    let resp = connect(&mut sender, raw.addr).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(PATIENCE, async {
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "idle tunnel stream still open after {PATIENCE:?}"
    );
    let labels = [("listener", "tunnel"), ("reason", "idle")];
    counted(&west, "meridian_gateway_timeouts_total", &labels, 1.0).await;
}
