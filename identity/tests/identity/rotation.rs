//! Rotation: new handshakes use the new certificate, established connections carry on.

use std::time::{Duration, SystemTime};

use meridian_identity::testing::TestCa;
use meridian_identity::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{connector, echo_server};

#[tokio::test]
async fn swaps_certificates_without_dropping_connections() {
    let ca = TestCa::new("meridian.test");
    let first = ca.issue("east");
    let (store, rx) = tls::watch(first.credentials()).unwrap();
    let (addr, mut results) = echo_server(rx.acceptor()).await;
    let client = connector(ca.issue("west").credentials());

    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut long_lived = client.connect(tcp, &first.identity).await.unwrap();
    results.recv().await.unwrap().unwrap();
    let first_serial = leaf(long_lived.get_ref().1.peer_certificates());

    // Renew: a new key and certificate for the same identity.
    let now = SystemTime::now();
    let second = ca.issue_valid(&first.identity, now, now + Duration::from_secs(7200));
    store.set(second.credentials()).unwrap();
    assert_eq!(rx.current().not_after(), second.credentials().not_after());

    // The old connection still works.
    long_lived.write_all(b"still").await.unwrap();
    let mut buf = [0u8; 5];
    long_lived.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still");

    // A new connection sees the new certificate.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let fresh = client.connect(tcp, &first.identity).await.unwrap();
    let second_serial = leaf(fresh.get_ref().1.peer_certificates());
    assert_ne!(first_serial, second_serial);
    assert_eq!(
        second_serial,
        meridian_identity::credentials::parse_certs("leaf", &second.chain_pem).unwrap()[0]
            .as_ref()
            .to_vec()
    );

    // A different identity cannot be swapped in.
    assert!(store.set(ca.issue("north").credentials()).is_err());
}

fn leaf(certs: Option<&[rustls::pki_types::CertificateDer<'static>]>) -> Vec<u8> {
    certs.unwrap()[0].as_ref().to_vec()
}
