//! Meridian mesh identities and mutual TLS.
//!
//! Every east-west gateway holds a SPIFFE identity
//! `spiffe://<trust-domain>/cluster/<cluster>/gateway` ([`Identity`]), certified by its
//! cluster's intermediate CA ([`ca::ClusterCa`]), which the mesh root ([`ca::RootCa`],
//! created by `meridianctl ca init` and kept out of member clusters) signs. The gateway
//! generates its own key ([`CertificateRequest`]); the key never leaves the process.
//! [`tls`] builds rustls configurations on the `ring` provider and publishes them through
//! a watch channel so certificates rotate without dropping connections; [`verifier`]
//! checks peers against the mesh root, the trust domain and the issuing intermediate's
//! cluster, because WebPKI's name check cannot match URI-only SPIFFE certificates.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod ca;
mod certificate;
pub mod credentials;
mod csr;
pub mod identity;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod verifier;

pub use ca::{ClusterCa, RootCa, ServerCertificate, SignedCertificate};
pub use certificate::parse_certs;
pub use credentials::Credentials;
pub use csr::CertificateRequest;
pub use identity::Identity;

/// Errors of the identity crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A string is not a Meridian gateway SPIFFE ID.
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    InvalidIdentity {
        /// The offending text.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Generating or signing a certificate or CSR failed.
    #[error("{what}: {source}")]
    Certificate {
        /// What was being done.
        what: &'static str,
        /// The underlying rcgen error.
        source: rcgen::Error,
    },
    /// A PEM document could not be decoded.
    #[error("{what}: {source}")]
    Pem {
        /// Which document.
        what: &'static str,
        /// The underlying PEM error.
        source: rustls_pki_types::pem::Error,
    },
    /// A PEM document held no certificate.
    #[error("{0}: no certificate found")]
    NoCertificate(&'static str),
    /// A certificate could not be parsed as X.509.
    #[error("{what}: malformed certificate: {reason}")]
    Malformed {
        /// Which certificate.
        what: &'static str,
        /// Parser message.
        reason: String,
    },
    /// The leaf certificate does not carry the expected identity.
    #[error("certificate identity mismatch: expected {expected}, found [{found}]")]
    IdentityMismatch {
        /// The identity that was expected.
        expected: String,
        /// The SPIFFE IDs found in the certificate.
        found: String,
    },
    /// The certificate has no Meridian gateway SPIFFE ID.
    #[error("certificate carries no Meridian gateway SPIFFE ID (found [{0}])")]
    NoIdentity(String),
    /// A rustls configuration could not be built (bad key, key/cert mismatch, ...).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The peer verifier could not be built (for example, an empty root store).
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Reading a PEM file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
