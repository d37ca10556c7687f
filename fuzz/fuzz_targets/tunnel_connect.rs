//! Tunnel CONNECT: what a peer gateway controls in a stream request, the `:authority`
//! (target `ip:port`) and the `meridian-service` header (`host:port`), read by
//! `tunnel::server::requested` and authorized by `RoutingTable::authorizes`.
//!
//! Input: the authority bytes, `\n`, the header value bytes. The request is built as h2
//! builds a CONNECT request (authority only, no scheme or path).
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use http::uri::{Authority, Parts};
use http::{HeaderValue, Method, Request, Uri};
use libfuzzer_sys::fuzz_target;
use meridian_api::proto::{Endpoint, GlobalService, Protocol, ServicePort, Snapshot};
use meridian_gateway::routing::RoutingTable;
use meridian_gateway::tunnel::SERVICE_HEADER;
use meridian_gateway::tunnel::server::requested;

/// The gateway of `east`: `reviews` has one local endpoint on two ports and one remote.
static TABLE: LazyLock<RoutingTable> = LazyLock::new(|| {
    let endpoint = |cluster: &str, address: &str| Endpoint {
        cluster: cluster.into(),
        address: address.into(),
        ports: [("http".to_string(), 8080), ("grpc".to_string(), 9090)].into(),
        ready: true,
        ..Default::default()
    };
    let port = |name: &str, port, listener_port| ServicePort {
        name: name.into(),
        port,
        protocol: Protocol::Http as i32,
        listener_port,
    };
    let snapshot = Snapshot {
        cluster: "east".into(),
        trust_domain: "meridian.test".into(),
        services: vec![GlobalService {
            name: "reviews".into(),
            namespace: "default".into(),
            hostname: "reviews.default.global".into(),
            ports: vec![port("http", 9080, 20001), port("grpc", 9090, 20002)],
            endpoints: vec![endpoint("east", "10.1.0.5"), endpoint("west", "10.2.0.5")],
            ..Default::default()
        }],
        ..Default::default()
    };
    RoutingTable::build("east", Arc::new(snapshot))
});

/// Exactly what the routing table above may authorize.
const LOCAL: [(&str, u32, &str); 2] = [
    ("reviews.default.global", 9080, "10.1.0.5:8080"),
    ("reviews.default.global", 9090, "10.1.0.5:9090"),
];

fuzz_target!(|data: &[u8]| {
    let (authority, service) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(authority) = Authority::try_from(authority) else {
        return;
    };
    let mut parts = Parts::default();
    parts.authority = Some(authority);
    let Ok(uri) = Uri::from_parts(parts) else {
        return;
    };
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = uri;
    if let Ok(value) = HeaderValue::from_bytes(service) {
        req.headers_mut().insert(SERVICE_HEADER, value);
    }
    let Some(r) = requested(&req) else {
        return;
    };

    // What the client (`tunnel::pool`) would send for it reads back the same.
    let mut again = Request::new(());
    *again.method_mut() = Method::CONNECT;
    *again.uri_mut() = Uri::try_from(r.target.to_string()).expect("an ip:port is a URI");
    again.headers_mut().insert(
        SERVICE_HEADER,
        HeaderValue::try_from(format!("{}:{}", r.hostname, r.port))
            .expect("the hostname came from a header value"),
    );
    assert_eq!(requested(&again).as_ref(), Some(&r));

    // Authorization is exact: only a local endpoint of that very service port.
    if TABLE.authorizes(&r.hostname, r.port, r.target) {
        assert!(
            LOCAL.iter().any(|(h, p, t)| {
                *h == r.hostname && *p == r.port && t.parse::<SocketAddr>() == Ok(r.target)
            }),
            "authorized {r:?}"
        );
    }
});
