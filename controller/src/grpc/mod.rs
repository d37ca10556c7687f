//! The controller's gRPC port: the Discovery service that streams snapshots to this cluster's
//! gateway and DNS server ([`discovery`]), certificate signing for the gateway
//! ([`certificates`]), both behind caller authentication ([`auth`]), served over TLS with a
//! certificate from the mesh CA ([`tls`]) whose root is published for clients to pin
//! ([`ca_root`]).

pub mod auth;
pub mod ca_root;
pub mod certificates;
pub mod discovery;
pub mod tls;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use self::certificates::CertificatesService;
use self::discovery::DiscoveryService;
use self::tls::Transport;

/// HTTP/2 keepalive of the gRPC server: a PING every `interval`; a connection whose peer
/// does not acknowledge within `timeout` is closed, with its streams.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    /// Time between PINGs.
    pub interval: Duration,
    /// How long an acknowledgement may take.
    pub timeout: Duration,
}

impl Default for Keepalive {
    /// istiod's server keepalive: 30 s, 10 s.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Serves Discovery (and Certificates, when given) on `listener` over `transport`, with
/// `keepalive`, until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    transport: Transport,
    keepalive: Keepalive,
    discovery: DiscoveryService,
    certificates: Option<CertificatesService>,
    shutdown: CancellationToken,
) -> crate::Result<()> {
    let incoming = tls::incoming(listener, transport)?;
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(keepalive.interval))
        .http2_keepalive_timeout(Some(keepalive.timeout))
        .add_service(discovery.into_server())
        .add_optional_service(certificates.map(CertificatesService::into_server))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .map_err(|e| {
            warn!(error = %e, "gRPC server failed");
            crate::Error::Grpc(e)
        })
}
