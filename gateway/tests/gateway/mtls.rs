//! The tunnel's refusal matrix against a real gateway: every bad peer or target is refused
//! and counted by reason; a good peer with an exported target gets through.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian_api::proto::Protocol;
use meridian_identity::testing::TestCa;
use meridian_identity::{Credentials, Identity, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{
    Backend, Gateway, Mesh, PATIENCE, TD, endpoint, member, service, tunnel_request,
};

/// Opens a CONNECT stream to `target` through `gw` with `creds`; returns the status.
async fn connect_stream(
    gw: &Gateway,
    creds: Credentials,
    target: SocketAddr,
    service: &str,
) -> std::io::Result<u16> {
    Ok(tunnel_request(gw, creds, target, service)
        .await?
        .status()
        .as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_and_counts_every_bad_peer_and_target() {
    let mesh = Mesh::new();
    let web = Backend::http(Ipv4Addr::new(127, 0, 6, 1), "west", "web-0").await;
    let west = mesh
        .gateway("west", Ipv4Addr::new(127, 0, 14, 1), ("r2", "z2"))
        .await;
    let remote_only = SocketAddr::from(([127, 0, 6, 2], 8080));
    west.push(
        1,
        vec![service(
            "web.default.global",
            Protocol::Http,
            80,
            24080,
            vec![
                endpoint("west", web.addr, ("r2", "z2"), true),
                endpoint("east", remote_only, ("r1", "z1"), true),
            ],
            "",
        )],
        // east is a member (nothing listens at its gateway address: it is only a client).
        vec![member("east", SocketAddr::from(([127, 0, 14, 2], 9)))],
    )
    .await;
    let good = mesh.ca.issue("east").credentials();

    // The good case first: an exported local endpoint through a mesh peer.
    assert_eq!(
        connect_stream(&west, good.clone(), web.addr, "web.default.global:80")
            .await
            .unwrap(),
        200
    );

    // Plaintext.
    let mut tcp = TcpStream::connect(west.tunnel).await.unwrap();
    tcp.write_all(b"CONNECT 127.0.6.1:80 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tcp.read_to_end(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "plaintext gets nothing back");

    // No client certificate.
    let mut roots = rustls::RootCertStore::empty();
    for c in meridian_identity::credentials::parse_certs("root", mesh.ca.root_pem()).unwrap() {
        roots.add(c).unwrap();
    }
    let verifier = meridian_identity::verifier::IdentityVerifier::new(
        Arc::new(roots),
        Identity::gateway(TD, "west").unwrap(),
        tls::provider(),
    );
    let mut cfg = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(west.tunnel).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("west").unwrap();
    if let Ok(tls) = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
    {
        let r = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(tls),
        )
        .await;
        if let Ok((mut sender, conn)) = r {
            tokio::spawn(conn);
            let req = Request::connect(web.addr.to_string())
                .header("meridian-service", "web.default.global:80")
                .body(Empty::new())
                .unwrap();
            assert!(sender.send_request(req).await.is_err());
        }
    }

    // Another CA (the client trusts our root, but its own chain does not lead there).
    let other = TestCa::new(TD)
        .issue("east")
        .credentials_trusting(mesh.ca.root_pem());
    // Wrong trust domain, right CA.
    let now = SystemTime::now();
    let foreign = mesh
        .ca
        .issue_valid(
            &Identity::gateway("elsewhere.test", "east").unwrap(),
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
        .credentials();
    let expired = mesh.ca.issue_expired("east").credentials();
    for creds in [other, foreign, expired] {
        let r = connect_stream(&west, creds, web.addr, "web.default.global:80").await;
        assert!(!matches!(r, Ok(200)), "must be refused: {r:?}");
    }

    // Targets: not an endpoint at all, a remote endpoint, the wrong service port.
    for (target, svc) in [
        (
            SocketAddr::from(([127, 0, 6, 99], 80)),
            "web.default.global:80",
        ),
        (remote_only, "web.default.global:80"),
        (web.addr, "web.default.global:81"),
        (web.addr, "other.default.global:80"),
    ] {
        assert_eq!(
            connect_stream(&west, good.clone(), target, svc)
                .await
                .unwrap(),
            403,
            "{target} {svc}"
        );
    }

    let want = [
        ("plaintext", 1.0),
        ("no_client_cert", 1.0),
        ("unknown_issuer", 1.0),
        ("trust_domain", 1.0),
        ("expired", 1.0),
        ("target", 4.0),
    ];
    // The server counts a refusal after the client may already have seen it fail: poll
    // (bounded only by PATIENCE) until every count has arrived.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < deadline {
        let text = west.metrics().await;
        got = want
            .iter()
            .map(|(r, _)| {
                (
                    *r,
                    crate::support::metrics::sum(
                        &text,
                        "meridian_gateway_tunnel_refusals_total",
                        &[("reason", r)],
                    ),
                )
            })
            .collect::<Vec<_>>();
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got, want);
    assert_eq!(
        web.hits(),
        0,
        "CONNECT alone sends no request to the backend"
    );
}
