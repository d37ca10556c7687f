//! Tunnel admission: a valid mesh certificate is not enough, the peer's cluster must be a
//! member in the gateway's snapshot, and a member's intermediate certifies only its own
//! cluster. Each refusal is counted under its own reason.

use std::net::{Ipv4Addr, SocketAddr};

use meridian_api::proto::{GlobalService, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Backend, Gateway, Mesh, endpoint, member, refusals, service, tunnel_request};

const SERVICE: &str = "echo.default.global:9000";

/// A TCP service exported by `cluster` with one endpoint there.
fn echo(cluster: &str, backend: &Backend) -> Vec<GlobalService> {
    vec![service(
        "echo.default.global",
        Protocol::Tcp,
        9000,
        29000,
        vec![endpoint(cluster, backend.addr, ("r1", "z1"), true)],
        "",
    )]
}

/// Where no gateway listens: the members below only ever dial in.
fn nowhere(last: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 22, last], 9))
}

async fn west_with_members(mesh: &Mesh, backend: &Backend, members: &[&str]) -> Gateway {
    let west = mesh
        .gateway("west", Ipv4Addr::new(127, 0, 22, 1), ("r1", "z1"))
        .await;
    let peers = members
        .iter()
        .enumerate()
        .map(|(i, c)| member(c, nowhere(10 + i as u8)))
        .collect();
    west.push(1, echo("west", backend), peers).await;
    west
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_valid_certificate_of_a_cluster_that_is_not_a_member() {
    let mesh = Mesh::new();
    let backend = Backend::tcp_echo(Ipv4Addr::new(127, 0, 22, 100)).await;
    let west = west_with_members(&mesh, &backend, &["east"]).await;

    // ghost holds a genuine certificate from its own intermediate, but is not a member.
    let ghost = mesh.ca.issue("ghost").credentials();
    let r = tunnel_request(&west, ghost, backend.addr, SERVICE).await;
    assert!(r.is_err(), "ghost must not get a stream: {r:?}");
    assert_eq!(refusals(&west, "not_member", 1.0).await, 1.0);

    // The root's own signature does not help either.
    let by_root = mesh.ca.issue_by_root("ghost").credentials();
    let r = tunnel_request(&west, by_root, backend.addr, SERVICE).await;
    assert!(
        r.is_err(),
        "a root-issued ghost must not get a stream: {r:?}"
    );
    assert_eq!(refusals(&west, "root_issued", 1.0).await, 1.0);

    // A member with the same kind of certificate gets through.
    let east = mesh.ca.issue("east").credentials();
    let resp = tunnel_request(&west, east, backend.addr, SERVICE)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(backend.hits(), 1, "only the member reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intermediate_of_west_cannot_certify_easts_gateway() {
    let mesh = Mesh::new();
    let backend = Backend::tcp_echo(Ipv4Addr::new(127, 0, 22, 101)).await;
    // Both are members: only the issuer check stands in the way.
    let north = {
        let gw = mesh
            .gateway("north", Ipv4Addr::new(127, 0, 22, 2), ("r1", "z1"))
            .await;
        gw.push(
            1,
            echo("north", &backend),
            vec![member("east", nowhere(20)), member("west", nowhere(21))],
        )
        .await;
        gw
    };
    let forged = mesh.ca.issue_from("west", "east").credentials();
    let r = tunnel_request(&north, forged, backend.addr, SERVICE).await;
    assert!(
        r.is_err(),
        "a forged east identity must not get a stream: {r:?}"
    );
    assert_eq!(refusals(&north, "issuer_mismatch", 1.0).await, 1.0);
    assert_eq!(backend.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_is_cut_off_at_the_next_snapshot() {
    let mesh = Mesh::new();
    let backend = Backend::tcp_echo(Ipv4Addr::new(127, 0, 22, 102)).await;
    let west = west_with_members(&mesh, &backend, &["east"]).await;
    let east = mesh.ca.issue("east").credentials();

    // An open stream from east, spliced to the backend.
    let resp = tunnel_request(&west, east.clone(), backend.addr, SERVICE)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = hyper_util::rt::TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    // east leaves the registry: the next snapshot no longer lists it.
    west.push(2, echo("west", &backend), vec![]).await;
    assert_eq!(refusals(&west, "member_removed", 1.0).await, 1.0);
    // The open stream ends (reset or EOF), whatever east still writes.
    let _ = stream.write_all(b"more").await;
    let mut rest = Vec::new();
    let ended = stream.read_to_end(&mut rest).await;
    assert!(
        ended.is_err() || rest.is_empty(),
        "the stream must be closed, got {rest:?}"
    );

    // And east cannot come back with the same certificate.
    let r = tunnel_request(&west, east, backend.addr, SERVICE).await;
    assert!(r.is_err(), "a removed member must not get a stream: {r:?}");
    assert_eq!(refusals(&west, "not_member", 1.0).await, 1.0);
}
