//! Certificates from a real `Certificates` gRPC signer (the mesh CA), renewed at half life
//! while a long-lived stream crosses the tunnel.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use meridian_api::proto::certificates_server::{Certificates, CertificatesServer};
use meridian_api::proto::{Protocol, SignCertificateRequest, SignCertificateResponse};
use meridian_identity::testing::TestCa;
use meridian_identity::{Identity, ca};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream_free::serve;

use crate::support::{Backend, Certs, Gateway, PATIENCE, TD, endpoint, service};

/// The controller's side of `SignCertificate`, as the controller is meant to implement it.
struct Signer {
    ca: Arc<TestCa>,
}

#[tonic::async_trait]
impl Certificates for Signer {
    async fn sign_certificate(
        &self,
        request: tonic::Request<SignCertificateRequest>,
    ) -> Result<tonic::Response<SignCertificateResponse>, tonic::Status> {
        let req = request.into_inner();
        let identity = Identity::gateway(TD, &req.cluster)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let ttl = ca::granted_ttl(Duration::from_secs(req.ttl_seconds));
        let signed = self
            .ca
            .intermediate(&req.cluster)
            .sign_csr(&req.csr_pem, &identity, ttl)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        Ok(tonic::Response::new(SignCertificateResponse {
            not_after: signed.not_after_unix(),
            cert_chain_pem: signed.cert_chain_pem,
            root_pem: signed.root_pem,
        }))
    }
}

mod tokio_stream_free {
    //! Serves a tonic service on a bound listener without extra stream crates.
    use super::*;

    pub(super) async fn serve(ca: Arc<TestCa>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = async_stream(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(CertificatesServer::new(Signer { ca }))
                .serve_with_incoming(incoming),
        );
        addr
    }

    fn async_stream(
        listener: TcpListener,
    ) -> impl futures::Stream<Item = std::io::Result<TcpStream>> {
        futures::stream::unfold(listener, |l| async move {
            let r = l.accept().await.map(|(s, _)| s);
            Some((r, l))
        })
    }
}

/// Certificates a gateway has installed so far.
async fn installed(gw: &Gateway) -> f64 {
    gw.metric("meridian_gateway_cert_renewals_total", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_during_a_long_lived_stream_without_breaking_it() {
    let ca = Arc::new(TestCa::new(TD));
    let signer = format!("http://{}", serve(ca.clone()).await);
    let echo = Backend::tcp_echo(Ipv4Addr::new(127, 0, 7, 1)).await;
    let (east, west) = tokio::join!(
        Gateway::start(
            "east",
            Ipv4Addr::new(127, 0, 15, 1),
            ("r1", "z1"),
            Certs::Signer(signer.clone(), "4s")
        ),
        Gateway::start(
            "west",
            Ipv4Addr::new(127, 0, 15, 2),
            ("r2", "z2"),
            Certs::Signer(signer, "4s")
        ),
    );
    let svc = || {
        vec![service(
            "stream.default.global",
            Protocol::Tcp,
            7000,
            25070,
            vec![endpoint("west", echo.addr, ("r2", "z2"), true)],
            "",
        )]
    };
    tokio::join!(
        east.push(1, svc(), vec![west.as_peer()]),
        west.push(1, svc(), vec![east.as_peer()]),
    );
    let first_expiry = east
        .metric("meridian_gateway_cert_expiry_timestamp_seconds", &[])
        .await;

    let mut stream = TcpStream::connect(east.listener(25070)).await.unwrap();
    // At least ~8 s of traffic, and on until both gateways have installed at least three
    // certificates (half-life renewals every ~2 s), however long a loaded machine takes
    // to get there: the stream has to span the renewals, not a fixed time.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for i in 0u32.. {
        let msg = format!("message {i:04}");
        stream.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
        if i + 1 >= 40 && installed(&east).await >= 3.0 && installed(&west).await >= 3.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no three certificates on both gateways after {} messages",
            i + 1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for gw in [&east, &west] {
        let renewals = installed(gw).await;
        assert!(
            renewals >= 3.0,
            "{}: {renewals} certificates installed",
            gw.cluster
        );
    }
    assert!(
        east.metric("meridian_gateway_cert_expiry_timestamp_seconds", &[])
            .await
            > first_expiry
    );
    // The stream never reconnected: one connection, one tunnel stream.
    assert_eq!(echo.hits(), 1);
    assert_eq!(
        west.metric("meridian_gateway_tunnel_streams_total", &[])
            .await,
        1.0
    );

    // New connections still work with the renewed certificates.
    let mut fresh = TcpStream::connect(east.listener(25070)).await.unwrap();
    fresh.write_all(b"fresh").await.unwrap();
    let mut buf = [0u8; 5];
    fresh.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"fresh");
}
