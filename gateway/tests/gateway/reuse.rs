//! Upstream HTTP connection reuse: sequential requests share one upstream connection
//! (directly, and through the tunnel), `--upstream-idle-timeout 0s` turns it off, a
//! backend that hangs up idle connections costs no errors, and connections to endpoints
//! that leave the routing table are closed.

use std::net::Ipv4Addr;
use std::time::Duration;

use meridian_api::proto::Protocol;

use crate::support::{Backend, Client, HangUp, Mesh, endpoint, eventually, http_get, service};

const SERVICE: (&str, &str) = ("r1", "z1");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_share_one_local_connection() {
    let mesh = Mesh::new();
    let web = Backend::http(Ipv4Addr::new(127, 0, 31, 1), "east", "web-0").await;
    let grpc = Backend::http(Ipv4Addr::new(127, 0, 31, 2), "east", "grpc-0").await;
    let east = mesh
        .gateway("east", Ipv4Addr::new(127, 0, 30, 1), SERVICE)
        .await;
    east.push(
        1,
        vec![
            service(
                "web.default.global",
                Protocol::Http,
                80,
                24080,
                vec![endpoint("east", web.addr, SERVICE, true)],
                "",
            ),
            service(
                "grpc.default.global",
                Protocol::Http2,
                81,
                24081,
                vec![endpoint("east", grpc.addr, SERVICE, true)],
                "",
            ),
        ],
        vec![],
    )
    .await;

    // Over one client connection, and over a new client connection each time: the
    // upstream connection belongs to the endpoint, not to the client.
    let mut client = Client::connect(east.listener(24080), "web.default.global").await;
    for _ in 0..10 {
        assert_eq!(client.get(&[]).await, (200, "east/web-0".into()));
    }
    for _ in 0..10 {
        let answer = http_get(east.listener(24080), "/", &[]).await.unwrap();
        assert_eq!((answer.status, answer.text()), (200, "east/web-0".into()));
    }
    assert_eq!(web.hits(), 20);
    assert_eq!(web.accepted(), 1, "one HTTP/1.1 connection for 20 requests");

    // HTTP/2 upstream: one shared connection.
    let mut client = Client::connect(east.listener(24081), "grpc.default.global").await;
    for _ in 0..10 {
        assert_eq!(client.get(&[]).await, (200, "east/grpc-0".into()));
    }
    assert_eq!(grpc.accepted(), 1, "one HTTP/2 connection for 10 requests");

    let web_svc = [("service", "web.default.global")];
    assert_eq!(
        east.metric("meridian_gateway_upstream_connections_total", &web_svc)
            .await,
        1.0
    );
    assert_eq!(
        east.metric("meridian_gateway_upstream_reused_requests_total", &web_svc)
            .await,
        19.0
    );
    assert_eq!(
        east.metric(
            "meridian_gateway_upstream_reused_requests_total",
            &[("service", "grpc.default.global")]
        )
        .await,
        9.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_share_one_tunnel_stream() {
    let mesh = Mesh::new();
    let web = Backend::http(Ipv4Addr::new(127, 0, 31, 11), "west", "web-0").await;
    let (east, west) = tokio::join!(
        mesh.gateway("east", Ipv4Addr::new(127, 0, 30, 11), SERVICE),
        mesh.gateway("west", Ipv4Addr::new(127, 0, 30, 12), ("r2", "z2")),
    );
    let services = || {
        vec![service(
            "web.default.global",
            Protocol::Http,
            80,
            24180,
            vec![endpoint("west", web.addr, ("r2", "z2"), true)],
            "",
        )]
    };
    tokio::join!(
        east.push(1, services(), vec![west.as_peer()]),
        west.push(1, services(), vec![east.as_peer()]),
    );
    let mut client = Client::connect(east.listener(24180), "web.default.global").await;
    for _ in 0..20 {
        assert_eq!(client.get(&[]).await, (200, "west/web-0".into()));
    }
    assert_eq!(web.accepted(), 1, "west dialled the endpoint once");
    assert_eq!(
        west.metric("meridian_gateway_tunnel_streams_total", &[])
            .await,
        1.0,
        "one CONNECT stream carried every request"
    );
    assert_eq!(
        east.metric("meridian_gateway_upstream_reused_requests_total", &[])
            .await,
        19.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_zero_opens_a_connection_per_request() {
    let mesh = Mesh::new();
    let local = Backend::http(Ipv4Addr::new(127, 0, 31, 21), "east", "local-0").await;
    let remote = Backend::http(Ipv4Addr::new(127, 0, 31, 22), "west", "remote-0").await;
    let (east, west) = tokio::join!(
        mesh.gateway_with(
            "east",
            Ipv4Addr::new(127, 0, 30, 21),
            SERVICE,
            &["--upstream-idle-timeout", "0s"],
        ),
        mesh.gateway("west", Ipv4Addr::new(127, 0, 30, 22), ("r2", "z2")),
    );
    let services = || {
        vec![
            service(
                "local.default.global",
                Protocol::Http,
                80,
                24280,
                vec![endpoint("east", local.addr, SERVICE, true)],
                "",
            ),
            service(
                "remote.default.global",
                Protocol::Http2,
                80,
                24281,
                vec![endpoint("west", remote.addr, ("r2", "z2"), true)],
                "",
            ),
        ]
    };
    tokio::join!(
        east.push(1, services(), vec![west.as_peer()]),
        west.push(1, services(), vec![east.as_peer()]),
    );
    let mut client = Client::connect(east.listener(24280), "local.default.global").await;
    for _ in 0..5 {
        assert_eq!(client.get(&[]).await, (200, "east/local-0".into()));
    }
    let mut client = Client::connect(east.listener(24281), "remote.default.global").await;
    for _ in 0..5 {
        assert_eq!(client.get(&[]).await, (200, "west/remote-0".into()));
    }
    assert_eq!(local.accepted(), 5, "a connection per request");
    assert_eq!(remote.accepted(), 5, "a connection per request");
    assert_eq!(
        west.metric("meridian_gateway_tunnel_streams_total", &[])
            .await,
        5.0
    );
    assert_eq!(
        east.metric("meridian_gateway_upstream_connections_total", &[])
            .await,
        10.0
    );
    assert_eq!(
        east.metric("meridian_gateway_upstream_reused_requests_total", &[])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_hanging_up_idle_connections_cause_no_errors() {
    let mesh = Mesh::new();
    // Hangs up right after each response (racing the next request), after a short idle
    // time (the pooled connection is gone when the next request comes), just as the next
    // request arrives (the request was written: the gateway must send it again), and the
    // first kind again behind the tunnel.
    let at_once = Backend::http_hanging_up(
        Ipv4Addr::new(127, 0, 31, 31),
        "east",
        "a-0",
        HangUp::After(Duration::ZERO),
    )
    .await;
    let soon = Backend::http_hanging_up(
        Ipv4Addr::new(127, 0, 31, 32),
        "east",
        "b-0",
        HangUp::After(Duration::from_millis(20)),
    )
    .await;
    let racing = Backend::http_hanging_up(
        Ipv4Addr::new(127, 0, 31, 34),
        "east",
        "d-0",
        HangUp::OnNextRequest,
    )
    .await;
    let remote = Backend::http_hanging_up(
        Ipv4Addr::new(127, 0, 31, 33),
        "west",
        "c-0",
        HangUp::After(Duration::ZERO),
    )
    .await;
    let (east, west) = tokio::join!(
        mesh.gateway("east", Ipv4Addr::new(127, 0, 30, 31), SERVICE),
        mesh.gateway("west", Ipv4Addr::new(127, 0, 30, 32), ("r2", "z2")),
    );
    // A single endpoint each, ejected by its first counted error: any error would show.
    let policy = r#"{"outlierDetection":{"consecutive5xxErrors":1,"baseEjectionTime":"5m","maxEjectionPercent":100}}"#;
    let services = || {
        vec![
            service(
                "a.default.global",
                Protocol::Http,
                80,
                24380,
                vec![endpoint("east", at_once.addr, SERVICE, true)],
                policy,
            ),
            service(
                "b.default.global",
                Protocol::Http,
                80,
                24381,
                vec![endpoint("east", soon.addr, SERVICE, true)],
                policy,
            ),
            service(
                "d.default.global",
                Protocol::Http,
                80,
                24383,
                vec![endpoint("east", racing.addr, SERVICE, true)],
                policy,
            ),
            service(
                "c.default.global",
                Protocol::Http,
                80,
                24382,
                vec![endpoint("west", remote.addr, ("r2", "z2"), true)],
                policy,
            ),
        ]
    };
    tokio::join!(
        east.push(1, services(), vec![west.as_peer()]),
        west.push(1, services(), vec![east.as_peer()]),
    );
    for (port, host, body, pause) in [
        (24380, "a.default.global", "east/a-0", Duration::ZERO),
        (
            24381,
            "b.default.global",
            "east/b-0",
            Duration::from_millis(60),
        ),
        (24382, "c.default.global", "west/c-0", Duration::ZERO),
        (24383, "d.default.global", "east/d-0", Duration::ZERO),
    ] {
        let mut client = Client::connect(east.listener(port), host).await;
        for i in 0..30 {
            assert_eq!(
                client.get(&[]).await,
                (200, body.into()),
                "{host}: request {i}"
            );
            tokio::time::sleep(pause).await;
        }
    }
    assert_eq!(at_once.hits(), 30);
    assert_eq!(soon.hits(), 30);
    assert_eq!(remote.hits(), 30);
    assert_eq!(racing.hits(), 30);
    // Every request after the first found its reused connection closed under it and went
    // again on a fresh one.
    assert_eq!(racing.accepted(), 30);
    assert_eq!(
        east.metric(
            "meridian_gateway_upstream_reused_requests_total",
            &[("service", "d.default.global")]
        )
        .await,
        29.0
    );
    assert_eq!(
        east.metric("meridian_gateway_ejections_total", &[]).await,
        0.0
    );
    assert_eq!(
        east.metric("meridian_gateway_connect_failures_total", &[])
            .await,
        0.0
    );
    assert_eq!(
        east.metric("meridian_gateway_responses_total", &[("code", "200")])
            .await,
        120.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_endpoints_that_leave_are_closed() {
    let mesh = Mesh::new();
    let old = Backend::http(Ipv4Addr::new(127, 0, 31, 41), "east", "old-0").await;
    let new = Backend::http(Ipv4Addr::new(127, 0, 31, 42), "east", "new-0").await;
    let east = mesh
        .gateway("east", Ipv4Addr::new(127, 0, 30, 41), SERVICE)
        .await;
    let web = |b: &Backend| {
        service(
            "web.default.global",
            Protocol::Http,
            80,
            24480,
            vec![endpoint("east", b.addr, SERVICE, true)],
            "",
        )
    };
    east.push(1, vec![web(&old)], vec![]).await;
    let mut client = Client::connect(east.listener(24480), "web.default.global").await;
    for _ in 0..3 {
        assert_eq!(client.get(&[]).await, (200, "east/old-0".into()));
    }
    assert_eq!(old.accepted(), 1);
    assert_eq!(old.open(), 1, "kept for the next request");

    east.push(2, vec![web(&new)], vec![]).await;
    eventually(
        "the idle connection to the removed endpoint closed",
        || async { (old.open() == 0).then_some(()) },
    )
    .await;
    assert_eq!(client.get(&[]).await, (200, "east/new-0".into()));
    assert_eq!(old.hits(), 3);
}

/// With two connection workers, client connections alternate between them and each
/// worker keeps its own upstream connections (they are registered with its event loop):
/// requests over one client connection share one upstream connection, and new client
/// connections in turn use two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_worker_pools_its_own_upstream_connections() {
    let mesh = Mesh::new();
    let web = Backend::http(Ipv4Addr::new(127, 0, 31, 51), "east", "web-0").await;
    let east = mesh
        .gateway_with(
            "east",
            Ipv4Addr::new(127, 0, 30, 51),
            SERVICE,
            &["--workers", "2"],
        )
        .await;
    east.push(
        1,
        vec![service(
            "web.default.global",
            Protocol::Http,
            80,
            24082,
            vec![endpoint("east", web.addr, SERVICE, true)],
            "",
        )],
        vec![],
    )
    .await;

    let mut client = Client::connect(east.listener(24082), "web.default.global").await;
    for _ in 0..10 {
        assert_eq!(client.get(&[]).await, (200, "east/web-0".into()));
    }
    assert_eq!(web.accepted(), 1, "one worker, one upstream connection");
    drop(client);
    for _ in 0..10 {
        let answer = http_get(east.listener(24082), "/", &[]).await.unwrap();
        assert_eq!((answer.status, answer.text()), (200, "east/web-0".into()));
    }
    assert_eq!(web.hits(), 20);
    assert_eq!(web.accepted(), 2, "one upstream connection per worker");
}
