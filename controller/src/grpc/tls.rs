//! TLS on the controller's gRPC port, the way istiod serves its port 15012: the controller
//! issues its own serving certificate from its cluster's intermediate (it sends leaf +
//! intermediate), and gateways and DNS servers verify it against the mesh root they
//! received out of band (the ConfigMap `meridian-ca-root`, [`crate::grpc::ca_root`]). Without it, anyone able to impersonate the
//! controller inside the cluster could hand a gateway a bogus root and bogus snapshots, and
//! read the ServiceAccount token a gateway sends with its certificate request.
//!
//! The serving certificate carries the DNS names of the controller Service
//! (`meridian-controller.<namespace>.svc[.cluster.local]`, plus `--grpc-dns-name`) and the
//! URI SAN `spiffe://<trust-domain>/cluster/<cluster>/controller`. It is short-lived
//! (`--grpc-cert-ttl`, 24 h), renewed at half life, and re-issued at once when the CA
//! changes. Renewal publishes the new key through a `watch` channel that the rustls
//! certificate resolver reads on every handshake: open connections (and their Watch
//! streams) are untouched, new ones get the new certificate.
//!
//! Without a mesh CA (no `meridian-ca` Secret yet) the controller still runs, as it always
//! could: the port then serves plaintext, with a warning, until the CA appears (new
//! connections are TLS from then on, without a restart). Once a certificate has been
//! issued the port never falls back to plaintext, even if the CA becomes unreadable.
//! `--grpc-plaintext` keeps the port plaintext for development.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use meridian_api::accept::accept_until;
use meridian_identity::ClusterCa;
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::grpc::certificates::CaCache;

/// Name of the controller Service: the serving certificate's DNS names derive from it.
pub(crate) const SERVICE_NAME: &str = "meridian-controller";
/// ALPN protocol of gRPC.
const ALPN_H2: &[u8] = b"h2";
/// How often the CA is checked for a change while a certificate is in force.
const CA_POLL: Duration = crate::grpc::certificates::CA_CACHE;
/// How often the CA is looked for while there is none, so `meridianctl ca init` takes
/// effect quickly.
const NO_CA_POLL: Duration = Duration::from_secs(5);
/// Retry delay after the API server could not be asked or issuing failed.
const RETRY: Duration = Duration::from_secs(2);
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The DNS names of the serving certificate: the controller Service in `namespace`, short
/// and fully qualified, then `extra`.
pub fn dns_names(namespace: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        format!("{SERVICE_NAME}.{namespace}.svc"),
        format!("{SERVICE_NAME}.{namespace}.svc.cluster.local"),
    ];
    for name in extra {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// What the serving certificate is issued for.
#[derive(Debug, Clone)]
pub struct ServingSettings {
    /// DNS SANs (see [`dns_names`]).
    pub dns_names: Vec<String>,
    /// URI SAN: the controller's SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// Lifetime; renewed at half of it.
    pub ttl: Duration,
}

/// A serving certificate in force.
#[derive(Debug)]
pub struct Issued {
    key: Arc<CertifiedKey>,
    // The intermediate that signed it: a new one (rotation) means re-issuing.
    issuer: CertificateDer<'static>,
    refresh_at: SystemTime,
    not_after: SystemTime,
}

impl Issued {
    /// The leaf certificate presented to clients.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.key.cert[0]
    }

    /// End of validity.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

/// Where the serving certificate stands.
#[derive(Debug, Clone)]
pub enum ServingState {
    /// The CA has not been read yet: connections wait for the outcome.
    Pending,
    /// There is no mesh CA: connections are served in plaintext.
    NoCa,
    /// A certificate is in force: connections are TLS.
    Ready(Arc<Issued>),
}

/// The controller's serving certificate: issued from the mesh CA, renewed at half life.
#[derive(Clone)]
pub struct ServingCert {
    tx: Arc<watch::Sender<ServingState>>,
}

impl Default for ServingCert {
    fn default() -> Self {
        Self::new()
    }
}

impl ServingCert {
    /// No certificate yet ([`ServingState::Pending`]) until [`ServingCert::run`] reads the CA.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(ServingState::Pending).0),
        }
    }

    /// Follows the state.
    pub fn subscribe(&self) -> watch::Receiver<ServingState> {
        self.tx.subscribe()
    }

    /// The state now.
    pub fn state(&self) -> ServingState {
        self.tx.borrow().clone()
    }

    /// Issues, renews and re-issues (on a CA change) forever; spawn it and abort it on
    /// shutdown.
    pub async fn run(self, ca: Arc<CaCache>, settings: ServingSettings) {
        loop {
            let wait = self.step(&ca, &settings).await;
            tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
        }
    }

    /// One check; returns how long to wait before the next.
    async fn step(&self, ca: &CaCache, settings: &ServingSettings) -> Duration {
        let current = self.state();
        let ca = match ca.current().await {
            Ok(ca) => ca,
            Err(status) => {
                let missing = status.code() == tonic::Code::FailedPrecondition;
                return match current {
                    ServingState::Ready(issued) => {
                        let expired = SystemTime::now() >= issued.not_after;
                        if expired {
                            error!(reason = %status.message(), "the serving certificate expired and the mesh CA cannot be read: clients will refuse the controller");
                        } else {
                            warn!(reason = %status.message(), "the mesh CA cannot be read; keeping the current serving certificate");
                        }
                        if missing { NO_CA_POLL } else { RETRY }
                    }
                    ServingState::Pending if missing => {
                        warn!(
                            reason = %status.message(),
                            "no mesh CA: the gRPC port serves PLAINTEXT until one exists \
                             (run `meridianctl ca issue-intermediate`); clients that pin the root cannot connect until then"
                        );
                        self.tx.send_replace(ServingState::NoCa);
                        NO_CA_POLL
                    }
                    ServingState::NoCa => NO_CA_POLL,
                    ServingState::Pending => {
                        warn!(reason = %status.message(), "cannot read the mesh CA yet; gRPC connections wait");
                        RETRY
                    }
                };
            }
        };
        let now = SystemTime::now();
        if let ServingState::Ready(issued) = &current
            && issued.issuer == *ca.cert_der()
            && now < issued.refresh_at
        {
            let due = issued.refresh_at.duration_since(now).unwrap_or_default();
            return due.min(CA_POLL);
        }
        match issue(&ca, settings) {
            Ok(issued) => {
                let reason = match &current {
                    ServingState::Ready(old) if old.issuer != *ca.cert_der() => {
                        "the cluster CA changed"
                    }
                    ServingState::Ready(_) => "half life reached",
                    _ => "first certificate",
                };
                info!(
                    dns_names = ?settings.dns_names,
                    not_after = ?issued.not_after,
                    reason,
                    "gRPC serving certificate issued"
                );
                let due = issued.refresh_at.duration_since(now).unwrap_or_default();
                self.tx.send_replace(ServingState::Ready(Arc::new(issued)));
                due.min(CA_POLL)
            }
            Err(e) => {
                warn!(error = %e, "issuing the gRPC serving certificate failed");
                RETRY
            }
        }
    }
}

fn issue(ca: &ClusterCa, settings: &ServingSettings) -> meridian_identity::Result<Issued> {
    let cert = ca.issue_server(
        &settings.dns_names,
        settings.spiffe_id.as_deref(),
        settings.ttl,
    )?;
    let refresh_at = cert.refresh_at();
    let not_after = cert.not_after;
    Ok(Issued {
        key: meridian_identity::tls::certified_key(cert.chain, cert.key)?,
        issuer: ca.cert_der().clone(),
        refresh_at,
        not_after,
    })
}

/// Hands rustls the certificate in force at each handshake.
#[derive(Debug)]
struct Resolver(watch::Receiver<ServingState>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match &*self.0.borrow() {
            ServingState::Ready(issued) => Some(issued.key.clone()),
            _ => None,
        }
    }
}

/// How the gRPC port talks.
#[derive(Clone)]
pub enum Transport {
    /// Plaintext HTTP/2 (`--grpc-plaintext`, development).
    Plaintext,
    /// TLS with the serving certificate of a [`ServingCert`] (plaintext while it has no CA).
    Tls(watch::Receiver<ServingState>),
}

impl Transport {
    /// TLS following `cert`.
    pub fn tls(cert: &ServingCert) -> Self {
        Transport::Tls(cert.subscribe())
    }
}

/// A connection of the gRPC port: plaintext or TLS.
pub(crate) enum GrpcIo {
    /// Plaintext.
    Plain(TcpStream),
    /// Terminated TLS.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl GrpcIo {
    fn tcp(&self) -> &TcpStream {
        match self {
            GrpcIo::Plain(s) => s,
            GrpcIo::Tls(s) => s.get_ref().0,
        }
    }
}

// tonic implements `Connected` for rustls streams only with its own TLS features, which
// would bring their own provider setup; the connection info is the TCP peer either way.
impl Connected for GrpcIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp().connect_info()
    }
}

impl AsyncRead for GrpcIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            GrpcIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for GrpcIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            GrpcIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            GrpcIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            GrpcIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            GrpcIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            GrpcIo::Plain(s) => s.is_write_vectored(),
            GrpcIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcIo::Plain(s) => Pin::new(s).poll_flush(cx),
            GrpcIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GrpcIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            GrpcIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The accepted (and, for TLS, handshaken) connections of `listener`, for tonic's
/// `serve_with_incoming_shutdown`. Handshakes run in their own tasks, so a slow or
/// malicious client never holds up the accept loop. The loop ends when the stream is
/// dropped (the server stopped).
pub(crate) fn incoming(
    listener: TcpListener,
    transport: Transport,
) -> crate::Result<ReceiverStream<io::Result<GrpcIo>>> {
    let acceptor = match &transport {
        Transport::Plaintext => None,
        Transport::Tls(rx) => {
            let mut config =
                ServerConfig::builder_with_provider(meridian_identity::tls::provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map_err(crate::Error::Tls)?
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(Resolver(rx.clone())));
            config.alpn_protocols = vec![ALPN_H2.to_vec()];
            Some((
                tokio_rustls::TlsAcceptor::from(Arc::new(config)),
                rx.clone(),
            ))
        }
    };
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(
        async move {
            loop {
                let pause = Duration::from_millis(100);
                let what = "accepting a gRPC connection";
                let Some((tcp, peer)) = accept_until(&listener, tx.closed(), pause, what).await
                else {
                    return;
                };
                let _ = tcp.set_nodelay(true);
                let tx = tx.clone();
                let Some((acceptor, mut state)) = acceptor.clone() else {
                    let _ = tx.send(Ok(GrpcIo::Plain(tcp))).await;
                    continue;
                };
                tokio::spawn(async move {
                    let handshake = async {
                        let state = state
                            .wait_for(|s| !matches!(s, ServingState::Pending))
                            .await
                            .map_err(io::Error::other)?
                            .clone();
                        match state {
                            ServingState::Ready(_) => {
                                acceptor.accept(tcp).await.map(|s| GrpcIo::Tls(Box::new(s)))
                            }
                            _ => Ok(GrpcIo::Plain(tcp)),
                        }
                    };
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                        Ok(Ok(io)) => {
                            let _ = tx.send(Ok(io)).await;
                        }
                        // A plaintext client, one that distrusts our root, a port scan:
                        // nothing the server can fix, so not a warning.
                        Ok(Err(e)) => debug!(%peer, error = %e, "gRPC TLS handshake failed"),
                        Err(_) => debug!(%peer, "gRPC TLS handshake timed out"),
                    }
                });
            }
        }
        .instrument(info_span!("grpc-accept")),
    );
    Ok(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_cover_the_service_and_extras_once() {
        let names = dns_names(
            "meridian-system",
            &[
                "ctl.example.com".into(),
                "meridian-controller.meridian-system.svc".into(),
            ],
        );
        assert_eq!(
            names,
            [
                "meridian-controller.meridian-system.svc",
                "meridian-controller.meridian-system.svc.cluster.local",
                "ctl.example.com",
            ]
        );
    }
}
