//! rustls configurations for the tunnel, on the `ring` provider (passed explicitly: with
//! both ring and aws-lc in the build, rustls has no default provider), and certificate
//! rotation: credentials are published through a watch channel and every handshake reads
//! the latest, so renewing never touches established connections.

use std::net::Ipv4Addr;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::identity::identities_in;
use crate::verifier::{IdentityVerifier, TrustDomainVerifier};
use crate::{Credentials, Error, Identity};

/// ALPN protocol of the tunnel: HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider every Meridian TLS configuration uses: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// Mesh-internal traffic: TLS 1.3 only.
static VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

#[derive(Debug)]
struct Resolver(Arc<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A tunnel server configuration: presents `creds`, requires a client certificate from
/// the same trust domain chaining to the same roots, negotiates `h2`.
pub fn server_config(creds: &Credentials) -> Result<ServerConfig, Error> {
    let provider = provider();
    let verifier = TrustDomainVerifier::new(
        creds.roots().clone(),
        creds.identity().trust_domain(),
        provider.clone(),
    )?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Resolver(creds.certified_key().clone())));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// A tunnel client configuration: presents `creds` and accepts only the gateway `server`.
pub fn client_config(creds: &Credentials, server: &Identity) -> Result<ClientConfig, Error> {
    let provider = provider();
    let verifier = IdentityVerifier::new(creds.roots().clone(), server.clone(), provider.clone());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(Resolver(creds.certified_key().clone())));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// A certified key on the `ring` provider, checked to match its leaf certificate.
pub fn certified_key(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, Error> {
    let signing = provider().key_provider.load_private_key(key)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match()?;
    Ok(Arc::new(certified))
}

/// What the watch channel carries: credentials and the server config built from them once.
#[derive(Debug)]
struct Current {
    creds: Credentials,
    server: Arc<ServerConfig>,
}

impl Current {
    fn build(creds: Credentials) -> Result<Arc<Self>, Error> {
        let server = Arc::new(server_config(&creds)?);
        Ok(Arc::new(Self { creds, server }))
    }
}

/// The publishing side of a gateway's credentials (held by whoever renews them).
#[derive(Debug)]
pub struct CredentialStore {
    tx: watch::Sender<Arc<Current>>,
}

/// The reading side: hands out acceptors and connectors that always use the latest
/// credentials.
#[derive(Debug, Clone)]
pub struct CredentialReceiver {
    rx: watch::Receiver<Arc<Current>>,
}

/// Starts publishing `initial`.
pub fn watch(initial: Credentials) -> Result<(CredentialStore, CredentialReceiver), Error> {
    let (tx, rx) = watch::channel(Current::build(initial)?);
    Ok((CredentialStore { tx }, CredentialReceiver { rx }))
}

impl CredentialStore {
    /// Replaces the credentials; new handshakes use them, established connections go on.
    /// The identity may not change.
    pub fn set(&self, creds: Credentials) -> Result<(), Error> {
        let old = self.tx.borrow().creds.identity().clone();
        if creds.identity() != &old {
            return Err(Error::IdentityMismatch {
                expected: old.to_string(),
                found: creds.identity().to_string(),
            });
        }
        self.tx.send_replace(Current::build(creds)?);
        Ok(())
    }

    /// A new reader.
    pub fn receiver(&self) -> CredentialReceiver {
        CredentialReceiver {
            rx: self.tx.subscribe(),
        }
    }
}

impl CredentialReceiver {
    /// The credentials in force.
    pub fn current(&self) -> Credentials {
        self.rx.borrow().creds.clone()
    }

    /// Waits until the credentials change; `Err` when the store is gone.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.rx.changed().await
    }

    /// An acceptor for tunnel servers.
    pub fn acceptor(&self) -> Acceptor {
        Acceptor {
            rx: self.rx.clone(),
        }
    }

    /// A connector for tunnel clients.
    pub fn connector(&self) -> Connector {
        Connector {
            rx: self.rx.clone(),
        }
    }
}

/// Terminates mTLS with the latest server configuration on each handshake.
#[derive(Debug, Clone)]
pub struct Acceptor {
    rx: watch::Receiver<Arc<Current>>,
}

impl Acceptor {
    /// Runs the server handshake and returns the stream with the client's identity.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> std::io::Result<(tokio_rustls::server::TlsStream<IO>, Identity)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let cfg = self.rx.borrow().server.clone();
        let tls = tokio_rustls::TlsAcceptor::from(cfg).accept(io).await?;
        let id = peer_identity(tls.get_ref().1.peer_certificates())?;
        Ok((tls, id))
    }

    /// The identity this acceptor presents now.
    pub fn local_identity(&self) -> Identity {
        self.rx.borrow().creds.identity().clone()
    }
}

/// Originates mTLS to a peer gateway with the latest credentials on each handshake.
#[derive(Debug, Clone)]
pub struct Connector {
    rx: watch::Receiver<Arc<Current>>,
}

impl Connector {
    /// Runs the client handshake, accepting only the gateway `server`.
    pub async fn connect<IO>(
        &self,
        io: IO,
        server: &Identity,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let creds = self.rx.borrow().creds.clone();
        let cfg = client_config(&creds, server).map_err(std::io::Error::other)?;
        // The name is not checked (the verifier checks the SPIFFE ID); an IP sends no SNI.
        let name = ServerName::IpAddress(Ipv4Addr::UNSPECIFIED.into());
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, io)
            .await
    }
}

fn peer_identity(
    certs: Option<&[rustls::pki_types::CertificateDer<'static>]>,
) -> std::io::Result<Identity> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or_else(|| std::io::Error::other("peer presented no certificate"))?;
    identities_in(leaf)
        .map_err(std::io::Error::other)?
        .into_iter()
        .next()
        .ok_or_else(|| std::io::Error::other("peer certificate has no gateway identity"))
}
