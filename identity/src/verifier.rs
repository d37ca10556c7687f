//! Peer verification for the tunnel. Chains are validated by rustls' WebPKI code against
//! the mesh roots; the SPIFFE identity is then checked here, since WebPKI's name check
//! cannot match a URI-only certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use tracing::debug;

use crate::identity::{identities_in, uri_sans};
use crate::{Error, Identity};

/// Why a peer's identity was refused after its chain validated.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerIdentityError {
    /// No Meridian gateway SPIFFE ID in the expected trust domain.
    #[error("peer is not in trust domain {expected} (SPIFFE IDs: [{found}])")]
    TrustDomain {
        /// The mesh's trust domain.
        expected: String,
        /// URI SANs the peer presented.
        found: String,
    },
    /// The server is not the gateway the client meant to reach.
    #[error("peer is not {expected} (SPIFFE IDs: [{found}])")]
    Identity {
        /// The expected gateway identity.
        expected: String,
        /// URI SANs the peer presented.
        found: String,
    },
}

fn reject(e: PeerIdentityError) -> rustls::Error {
    debug!(error = %e, "peer identity refused");
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

fn found(cert: &CertificateDer<'_>) -> String {
    uri_sans(cert).unwrap_or_default().join(", ")
}

/// Server side: requires a client certificate chaining to the mesh roots whose SPIFFE ID
/// is a gateway in the trust domain.
#[derive(Debug)]
pub struct TrustDomainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl TrustDomainVerifier {
    /// A verifier for clients of `trust_domain` chaining to `roots`.
    pub fn new(
        roots: Arc<RootCertStore>,
        trust_domain: &str,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>, Error> {
        let inner = WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
        Ok(Arc::new(Self {
            inner,
            trust_domain: trust_domain.to_owned(),
        }))
    }
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let ids = identities_in(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if ids.iter().any(|id| id.trust_domain() == self.trust_domain) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(reject(PeerIdentityError::TrustDomain {
                expected: self.trust_domain.clone(),
                found: found(end_entity),
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client side: requires the server certificate to chain to the mesh roots and to carry
/// exactly the expected gateway identity.
#[derive(Debug)]
pub struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: Identity,
    provider: Arc<CryptoProvider>,
}

impl IdentityVerifier {
    /// A verifier for the gateway `expected`, chaining to `roots`.
    pub fn new(
        roots: Arc<RootCertStore>,
        expected: Identity,
        provider: Arc<CryptoProvider>,
    ) -> Arc<Self> {
        Arc::new(Self {
            roots,
            expected,
            provider,
        })
    }
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let ids = identities_in(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if ids.contains(&self.expected) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(reject(PeerIdentityError::Identity {
                expected: self.expected.to_string(),
                found: found(end_entity),
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A short, stable label for why a TLS handshake failed, for metrics: `no_client_cert`,
/// `unknown_issuer`, `expired`, `not_yet_valid`, `trust_domain`, `identity`,
/// `bad_certificate` or `handshake`.
pub fn failure_reason(err: &std::io::Error) -> &'static str {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return "handshake";
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_client_cert",
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_issuer",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Other(o) => match o.0.downcast_ref::<PeerIdentityError>() {
                Some(PeerIdentityError::TrustDomain { .. }) => "trust_domain",
                Some(PeerIdentityError::Identity { .. }) => "identity",
                None => "bad_certificate",
            },
            _ => "bad_certificate",
        },
        _ => "handshake",
    }
}
