//! Peer verification for the tunnel. Chains are validated by rustls' WebPKI code against
//! the mesh roots; the SPIFFE identity is then checked here, since WebPKI's name check
//! cannot match a URI-only certificate. Last comes the issuer check that stands in for URI
//! name constraints ([`crate::ca`]): some valid path must run through an intermediate that
//! names the leaf's own cluster, so a member's intermediate cannot certify another cluster's
//! gateway and a leaf the root signed directly is refused.

use std::cell::RefCell;
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

use crate::identity::{ca_scopes_in, identities_in, uri_sans};
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
    /// The leaf was signed by the mesh root itself: gateways are certified by their
    /// cluster's intermediate only.
    #[error(
        "peer certificate is signed by the mesh root, not by a cluster intermediate (SPIFFE IDs: [{found}])"
    )]
    RootIssued {
        /// URI SANs the peer presented.
        found: String,
    },
    /// The intermediate that signed the leaf belongs to another cluster (or to none).
    #[error(
        "peer [{leaf}] is certified by the intermediate of [{issuer}], not by its own cluster's"
    )]
    Issuer {
        /// The gateway identities of the leaf.
        leaf: String,
        /// The clusters the issuing intermediate names.
        issuer: String,
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
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    trust_domain: String,
}

impl TrustDomainVerifier {
    /// A verifier for clients of `trust_domain` chaining to `roots`.
    pub fn new(
        roots: Arc<RootCertStore>,
        trust_domain: &str,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>, Error> {
        let inner =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        Ok(Arc::new(Self {
            inner,
            roots,
            provider,
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
        let chain = Chain {
            end_entity,
            intermediates,
            now,
        };
        check_peer(
            &self.roots,
            &self.provider,
            &chain,
            webpki::KeyUsage::client_auth(),
            |ids| ids.iter().any(|id| id.trust_domain() == self.trust_domain),
            |found| PeerIdentityError::TrustDomain {
                expected: self.trust_domain.clone(),
                found,
            },
        )?;
        Ok(ClientCertVerified::assertion())
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
        let chain = Chain {
            end_entity,
            intermediates,
            now,
        };
        check_peer(
            &self.roots,
            &self.provider,
            &chain,
            webpki::KeyUsage::server_auth(),
            |ids| ids.contains(&self.expected),
            |found| PeerIdentityError::Identity {
                expected: self.expected.to_string(),
                found,
            },
        )?;
        Ok(ServerCertVerified::assertion())
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

/// The checks after WebPKI accepted the chain: the leaf's gateway identities must satisfy
/// `wanted` (the trust domain, or the expected gateway), else `refusal` (given the URI SANs
/// the peer presented) says why; then the issuer check.
fn check_peer(
    roots: &RootCertStore,
    provider: &CryptoProvider,
    chain: &Chain<'_, '_>,
    usage: webpki::KeyUsage,
    wanted: impl FnOnce(&[Identity]) -> bool,
    refusal: impl FnOnce(String) -> PeerIdentityError,
) -> Result<(), rustls::Error> {
    let ids = identities_in(chain.end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if !wanted(&ids) {
        return Err(reject(refusal(found(chain.end_entity))));
    }
    check_issuer(roots, provider, chain, usage, &ids).map_err(reject)
}

/// A presented chain, as the verifiers receive it.
struct Chain<'a, 'b> {
    end_entity: &'a CertificateDer<'b>,
    intermediates: &'a [CertificateDer<'b>],
    now: UnixTime,
}

/// The issuer check, on a chain WebPKI has already accepted: some valid path to the roots
/// must start with an intermediate naming exactly the cluster of every gateway identity
/// in the leaf. Paths are searched (not just the first one found) so an extra certificate
/// a peer sends cannot hide the path that proves it, and every candidate is a path WebPKI
/// validated, so a certificate that merely claims a name proves nothing.
fn check_issuer(
    roots: &RootCertStore,
    provider: &CryptoProvider,
    chain: &Chain<'_, '_>,
    usage: webpki::KeyUsage,
    ids: &[Identity],
) -> Result<(), PeerIdentityError> {
    let leaf = ids
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let refusal = RefCell::new(None);
    let policy = |path: &webpki::VerifiedPath<'_>| {
        let verdict = match path.intermediate_certificates().next() {
            None => Err(PeerIdentityError::RootIssued {
                found: found(chain.end_entity),
            }),
            Some(issuer) => {
                let scopes = ca_scopes_in(&issuer.der()).unwrap_or_default();
                match scopes.as_slice() {
                    [scope] if !ids.is_empty() && ids.iter().all(|id| id == scope) => Ok(()),
                    _ => Err(PeerIdentityError::Issuer {
                        leaf: leaf.clone(),
                        issuer: scopes
                            .iter()
                            .map(|s| format!("{}/{}", s.trust_domain(), s.cluster()))
                            .collect::<Vec<_>>()
                            .join(", "),
                    }),
                }
            }
        };
        verdict.map_err(|e| {
            refusal.borrow_mut().get_or_insert(e);
            // Any error makes WebPKI try the next path; the reason is kept above.
            webpki::Error::UnknownIssuer
        })
    };
    let end_entity = webpki::EndEntityCert::try_from(chain.end_entity).map_err(|_| {
        PeerIdentityError::Issuer {
            leaf: leaf.clone(),
            issuer: String::new(),
        }
    })?;
    match end_entity.verify_for_usage(
        provider.signature_verification_algorithms.all,
        &roots.roots,
        chain.intermediates,
        chain.now,
        usage,
        None,
        Some(&policy),
    ) {
        Ok(_) => Ok(()),
        Err(_) => Err(refusal.into_inner().unwrap_or(PeerIdentityError::Issuer {
            leaf,
            issuer: String::new(),
        })),
    }
}

/// A short, stable label for why a TLS handshake failed, for metrics: `no_client_cert`,
/// `unknown_issuer`, `expired`, `not_yet_valid`, `trust_domain`, `identity`,
/// `root_issued`, `issuer_mismatch`, `bad_certificate` or `handshake`.
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
                Some(PeerIdentityError::RootIssued { .. }) => "root_issued",
                Some(PeerIdentityError::Issuer { .. }) => "issuer_mismatch",
                None => "bad_certificate",
            },
            _ => "bad_certificate",
        },
        _ => "handshake",
    }
}
