//! The peer-verification matrix: only gateways of the mesh's trust domain, chaining to
//! the mesh root through their own cluster's intermediate and currently valid, get
//! through, and each refusal has its reason.

use std::time::{Duration, SystemTime};

use meridian_identity::testing::TestCa;
use meridian_identity::{Identity, tls};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::{connector, echo_server, ping};

const TD: &str = "meridian.test";

#[tokio::test]
async fn accepts_a_mesh_gateway_and_reports_its_identity() {
    let ca = TestCa::new(TD);
    let server = ca.issue("east");
    let (_store, rx) = tls::watch(server.credentials()).unwrap();
    let (addr, mut results) = echo_server(rx.acceptor()).await;

    let client = ca.issue("west");
    ping(&connector(client.credentials()), addr, &server.identity)
        .await
        .unwrap();
    assert_eq!(results.recv().await.unwrap(), Ok(client.identity.clone()));
}

#[tokio::test]
async fn refuses_bad_client_certificates_with_a_reason() {
    let ca = TestCa::new(TD);
    let server = ca.issue("east");
    let (_store, rx) = tls::watch(server.credentials()).unwrap();
    let (addr, mut results) = echo_server(rx.acceptor()).await;

    let other_ca = TestCa::new(TD);
    let wrong_td = ca.issue_valid(
        &Identity::gateway("elsewhere.test", "west").unwrap(),
        SystemTime::now() - Duration::from_secs(60),
        SystemTime::now() + Duration::from_secs(3600),
    );
    let cases = [
        // Trusts our root (so the client side is happy) but is signed by another CA.
        (
            other_ca.issue("west").credentials_trusting(ca.root_pem()),
            "unknown_issuer",
        ),
        (wrong_td.credentials(), "trust_domain"),
        (ca.issue_expired("west").credentials(), "expired"),
    ];
    for (creds, want) in cases {
        let result = ping(&connector(creds), addr, &server.identity).await;
        assert!(result.is_err(), "{want}: the client must not get through");
        assert_eq!(results.recv().await.unwrap(), Err(want));
    }
}

#[tokio::test]
async fn refuses_a_client_certificate_the_root_signed_directly() {
    let ca = TestCa::new(TD);
    let server = ca.issue("east");
    let (_store, rx) = tls::watch(server.credentials()).unwrap();
    let (addr, mut results) = echo_server(rx.acceptor()).await;

    // Valid chain, right trust domain, but no intermediate: what a root key can mint.
    let ghost = ca.issue_by_root("ghost");
    let result = ping(&connector(ghost.credentials()), addr, &server.identity).await;
    assert!(result.is_err(), "a root-issued leaf must not get through");
    assert_eq!(results.recv().await.unwrap(), Err("root_issued"));
}

#[tokio::test]
async fn refuses_a_client_certified_by_another_clusters_intermediate() {
    let ca = TestCa::new(TD);
    let server = ca.issue("north");
    let (_store, rx) = tls::watch(server.credentials()).unwrap();
    let (addr, mut results) = echo_server(rx.acceptor()).await;

    // west's intermediate (a compromised member) signs east's gateway identity.
    let forged = ca.issue_from("west", "east");
    let result = ping(&connector(forged.credentials()), addr, &server.identity).await;
    assert!(
        result.is_err(),
        "a forged east identity must not get through"
    );
    assert_eq!(results.recv().await.unwrap(), Err("issuer_mismatch"));

    // The same intermediate still certifies its own cluster.
    let own = ca.issue_from("west", "west");
    ping(&connector(own.credentials()), addr, &server.identity)
        .await
        .unwrap();
    assert_eq!(results.recv().await.unwrap(), Ok(own.identity.clone()));
}

#[tokio::test]
async fn client_refuses_a_server_certified_by_another_clusters_intermediate() {
    let ca = TestCa::new(TD);
    // A west gateway posing as east's, with east's identity from west's intermediate.
    let forged = ca.issue_from("west", "east");
    let (_store, rx) = tls::watch(forged.credentials()).unwrap();
    let (addr, _results) = echo_server(rx.acceptor()).await;

    let err = ping(
        &connector(ca.issue("north").credentials()),
        addr,
        &forged.identity,
    )
    .await
    .unwrap_err();
    assert_eq!(
        meridian_identity::verifier::failure_reason(&err),
        "issuer_mismatch"
    );
}

#[tokio::test]
async fn client_refuses_a_server_certificate_the_root_signed_directly() {
    let ca = TestCa::new(TD);
    let forged = ca.issue_by_root("east");
    let (_store, rx) = tls::watch(forged.credentials()).unwrap();
    let (addr, _results) = echo_server(rx.acceptor()).await;

    let err = ping(
        &connector(ca.issue("north").credentials()),
        addr,
        &forged.identity,
    )
    .await
    .unwrap_err();
    assert_eq!(
        meridian_identity::verifier::failure_reason(&err),
        "root_issued"
    );
}

#[tokio::test]
async fn refuses_a_client_without_certificate() {
    let ca = TestCa::new(TD);
    let server = ca.issue("east");
    let (_store, rx) = tls::watch(server.credentials()).unwrap();
    let (addr, mut results) = echo_server(rx.acceptor()).await;

    // A plain rustls client that trusts the root but offers no certificate.
    let provider = tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in meridian_identity::credentials::parse_certs("root", ca.root_pem()).unwrap() {
        roots.add(c).unwrap();
    }
    let verifier = meridian_identity::verifier::IdentityVerifier::new(
        std::sync::Arc::new(roots),
        server.identity.clone(),
        provider.clone(),
    );
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![tls::ALPN_H2.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("gateway").unwrap();
    // TLS 1.3: the client finishes its side before the server rejects; the refusal shows
    // on the first read.
    if let Ok(mut s) = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
    {
        let _ = s.write_all(b"ping").await;
        let mut buf = [0u8; 4];
        assert!(
            tokio::io::AsyncReadExt::read_exact(&mut s, &mut buf)
                .await
                .is_err()
        );
    }
    assert_eq!(results.recv().await.unwrap(), Err("no_client_cert"));
}

#[tokio::test]
async fn client_refuses_the_wrong_gateway() {
    let ca = TestCa::new(TD);
    let server = ca.issue("east");
    let (_store, rx) = tls::watch(server.credentials()).unwrap();
    let (addr, _results) = echo_server(rx.acceptor()).await;

    let expected = Identity::gateway(TD, "north").unwrap();
    let err = ping(&connector(ca.issue("west").credentials()), addr, &expected)
        .await
        .unwrap_err();
    assert_eq!(
        meridian_identity::verifier::failure_reason(&err),
        "identity"
    );
}
