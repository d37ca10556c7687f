//! The gateway's own identity: its key is generated here and never leaves the process;
//! the controller signs a CSR for `spiffe://<td>/cluster/<cluster>/gateway`, and the
//! certificate is renewed at half life and swapped in without touching open connections.
//! Static PEM files (`--cert-chain`, `--key`, `--root`) replace signing for tests and
//! the testbed; they are re-read periodically so they can be rotated on disk.
//!
//! Over TLS (`https://`) the root that comes back with the certificate is not trusted
//! because the controller said so: every root in it must be one of the pinned roots
//! (`--controller-ca-file`), else the certificate is refused. Only plaintext development
//! setups take the controller's word for the root.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use meridian_api::channel::{ConnectError, ControllerEndpoint};
use meridian_api::proto::SignCertificateRequest;
use meridian_api::proto::certificates_client::CertificatesClient;
use meridian_api::signal::Shutdown;
use meridian_identity::tls::{CredentialReceiver, CredentialStore};
use meridian_identity::{CertificateRequest, Credentials, Identity};
use tracing::{info, warn};

use crate::metrics::Metrics;

/// How often static certificate files are checked for a new certificate.
const FILE_POLL: Duration = Duration::from_secs(10);

/// Where certificates come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// PEM files on disk.
    Files {
        /// Certificate chain.
        chain: PathBuf,
        /// Private key.
        key: PathBuf,
        /// Mesh root.
        root: PathBuf,
    },
    /// The controller's `Certificates.SignCertificate`.
    Signer {
        /// gRPC endpoint (with its pinned root, over TLS, and the ServiceAccount token file
        /// proving the caller is the gateway); boxed, it is large.
        endpoint: Box<ControllerEndpoint>,
        /// Requested lifetime.
        ttl: Duration,
    },
}

/// Why no certificate was obtained (this attempt; [`fetch_until_ok`] retries).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertificateError {
    /// The static files could not be read or do not make credentials.
    #[error("loading the static certificate files")]
    Files(#[source] meridian_identity::Error),
    /// The static certificate is for another gateway.
    #[error("static certificate is for {found}, not {expected}")]
    WrongIdentity {
        /// The identity the certificate carries.
        found: Identity,
        /// This gateway's identity.
        expected: Identity,
    },
    /// Generating the key and CSR failed.
    #[error(transparent)]
    Csr(meridian_identity::Error),
    /// The ServiceAccount token could not be read, or the pinned roots not loaded.
    #[error(transparent)]
    Endpoint(ConnectError),
    /// The signer could not be reached.
    #[error("connecting to the certificate signer at {url}")]
    Connect {
        /// The signer's URL.
        url: String,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// The signer refused or failed the request.
    #[error("SignCertificate")]
    Sign(#[source] tonic::Status),
    /// The root the signer returned is not PEM certificates.
    #[error(transparent)]
    ReturnedRoot(meridian_identity::Error),
    /// The root the signer returned is not pinned.
    #[error(
        "the controller returned a mesh root that is not in --controller-ca-file; refusing it \
         (a rotated root must be added to the meridian-ca-root ConfigMap first)"
    )]
    UnpinnedRoot,
    /// The returned chain does not certify the generated key for this identity.
    #[error("the signed certificate does not fit the request")]
    Mismatch(#[source] meridian_identity::Error),
}

/// Obtains credentials once.
pub(crate) async fn fetch(
    source: &Source,
    identity: &Identity,
) -> Result<Credentials, CertificateError> {
    match source {
        Source::Files { chain, key, root } => {
            let creds =
                Credentials::from_files(chain, key, root).map_err(CertificateError::Files)?;
            if creds.identity() != identity {
                return Err(CertificateError::WrongIdentity {
                    found: creds.identity().clone(),
                    expected: identity.clone(),
                });
            }
            Ok(creds)
        }
        Source::Signer { endpoint, ttl } => sign(endpoint, identity, *ttl).await,
    }
}

async fn sign(
    endpoint: &ControllerEndpoint,
    identity: &Identity,
    ttl: Duration,
) -> Result<Credentials, CertificateError> {
    let request = CertificateRequest::generate(identity).map_err(CertificateError::Csr)?;
    let mut grpc_request = tonic::Request::new(SignCertificateRequest {
        csr_pem: request.pem().to_owned(),
        cluster: identity.cluster().to_owned(),
        ttl_seconds: ttl.as_secs(),
    });
    // Read for every request: the kubelet rotates projected tokens.
    endpoint
        .authorize(&mut grpc_request)
        .map_err(CertificateError::Endpoint)?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| CertificateError::Connect {
            url: endpoint.url().to_owned(),
            source,
        })?;
    let resp = CertificatesClient::new(channel)
        .sign_certificate(grpc_request)
        .await
        .map_err(CertificateError::Sign)?
        .into_inner();
    if let Some(pinned) = endpoint.pinned_roots() {
        check_root(&resp.root_pem, &pinned.map_err(CertificateError::Endpoint)?)?;
    }
    request
        .into_credentials(&resp.cert_chain_pem, &resp.root_pem)
        .map_err(CertificateError::Mismatch)
}

/// Accepts the root the signer returned only if every certificate in it is pinned.
fn check_root(
    root_pem: &str,
    pinned: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<(), CertificateError> {
    let returned = meridian_identity::parse_certs("returned root", root_pem)
        .map_err(CertificateError::ReturnedRoot)?;
    if !returned.iter().all(|r| pinned.contains(r)) {
        return Err(CertificateError::UnpinnedRoot);
    }
    Ok(())
}

/// Obtains credentials, retrying with backoff until it works or `shutdown` is cancelled.
pub(crate) async fn fetch_until_ok(
    source: &Source,
    identity: &Identity,
    shutdown: &Shutdown,
) -> Option<Credentials> {
    let mut backoff = backoff();
    loop {
        match fetch(source, identity).await {
            Ok(c) => return Some(c),
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                warn!(
                    error = meridian_api::error_chain(&e),
                    ?delay,
                    "no certificate yet; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return None,
                }
            }
        }
    }
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Records the certificate in force in the metrics.
pub(crate) fn observe(metrics: &Metrics, creds: &Credentials) {
    metrics
        .cert_expiry
        .set(meridian_identity::ca::unix_seconds(creds.not_after()));
    metrics.cert_renewals.inc();
}

/// Keeps the credentials fresh until `shutdown`: renews at half life (retrying with
/// backoff while the old certificate is still valid), or re-reads static files.
pub(crate) async fn renew(
    store: Arc<CredentialStore>,
    rx: CredentialReceiver,
    source: Source,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    loop {
        let current = rx.current();
        let wait = match &source {
            Source::Files { .. } => FILE_POLL,
            Source::Signer { .. } => current
                .refresh_at()
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        let next = match &source {
            Source::Files { .. } => match fetch(&source, current.identity()).await {
                Ok(c) if c.not_after() != current.not_after() => c,
                Ok(_) => continue,
                Err(e) => {
                    warn!(
                        error = meridian_api::error_chain(&e),
                        "re-reading certificate files failed"
                    );
                    continue;
                }
            },
            Source::Signer { .. } => {
                match fetch_until_ok(&source, current.identity(), &shutdown).await {
                    Some(c) => c,
                    None => return,
                }
            }
        };
        match store.set(next.clone()) {
            Ok(()) => {
                info!(not_after = ?next.not_after(), "certificate renewed");
                observe(&metrics, &next);
            }
            Err(e) => warn!(error = %e, "renewed certificate rejected"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pinned_roots_are_accepted() {
        let ours = meridian_identity::RootCa::generate("a").unwrap();
        let theirs = meridian_identity::RootCa::generate("b").unwrap();
        let pinned = vec![ours.cert_der().clone()];
        check_root(ours.cert_pem(), &pinned).unwrap();
        let err = check_root(theirs.cert_pem(), &pinned).unwrap_err();
        assert!(
            err.to_string().contains("not in --controller-ca-file"),
            "{err}"
        );
        let both = format!("{}{}", ours.cert_pem(), theirs.cert_pem());
        assert!(
            check_root(&both, &pinned).is_err(),
            "every returned root must be pinned"
        );
        assert!(check_root("garbage", &pinned).is_err());
    }
}
