//! The `meridian.v1.Certificates` gRPC server: signs this cluster's gateway CSRs with the
//! cluster's intermediate CA.
//!
//! The intermediate comes from the Secret `<namespace>/meridian-ca` (keys `ca.crt` for the
//! mesh root, `intermediate.crt` and `intermediate.key`, as `meridianctl ca
//! issue-intermediate` writes it) or from a directory of the same files (`--ca-dir`). It
//! is loaded on demand and cached briefly, so a CA created or rotated after the controller
//! started is picked up. The mesh root key is never needed here; a Secret that still holds
//! it (`ca.key`, the one-tier layout) is reported. A controller only vouches for its own
//! cluster: the identity is `spiffe://<trust-domain>/cluster/<this cluster>/gateway`,
//! whatever the CSR says, and the intermediate must be this cluster's.
//!
//! Callers prove they are the gateway: they send the gateway ServiceAccount's token
//! (`authorization: Bearer …`), which the own API server reviews ([`crate::grpc::auth`]). Without
//! that, anyone reaching the port could obtain the gateway's identity and impersonate it to
//! peers. The token is never logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use meridian_api::proto::{self, SignCertificateRequest, SignCertificateResponse};
use meridian_identity::ca::{
    CA_CERT_FILE, CA_KEY_FILE, INTERMEDIATE_CERT_FILE, INTERMEDIATE_KEY_FILE, granted_ttl,
};
use meridian_identity::{ClusterCa, Identity};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::grpc::auth::CallerAuth;

pub use meridian_crd::ca::{CA_SECRET_NAME, ca_secret};

/// How long a loaded CA is reused before it is read again.
pub(crate) const CA_CACHE: Duration = Duration::from_secs(30);

/// Where the mesh CA is read from.
#[derive(Clone)]
pub enum CaSource {
    /// The Secret `meridian-ca` in a namespace of the own cluster.
    Secret {
        /// Own cluster client.
        client: Client,
        /// Namespace of the Secret.
        namespace: String,
    },
    /// A directory with `ca.crt`, `intermediate.crt` and `intermediate.key`.
    Dir(PathBuf),
}

impl CaSource {
    async fn load(&self) -> Result<ClusterCa, Status> {
        match self {
            CaSource::Dir(dir) => ClusterCa::load_dir(dir).map_err(|e| {
                Status::failed_precondition(format!("cluster CA in {}: {e}", dir.display()))
            }),
            CaSource::Secret { client, namespace } => {
                let secret = Api::<Secret>::namespaced(client.clone(), namespace)
                    .get_opt(CA_SECRET_NAME)
                    .await
                    .map_err(|e| Status::unavailable(format!("reading the mesh CA Secret: {e}")))?
                    .ok_or_else(|| {
                        Status::failed_precondition(format!(
                            "no mesh CA: Secret {namespace}/{CA_SECRET_NAME} not found (run `meridianctl ca issue-intermediate`)"
                        ))
                    })?;
                let data = secret.data.unwrap_or_default();
                let has = |key: &str| data.contains_key(key);
                if has(CA_KEY_FILE) && !has(INTERMEDIATE_KEY_FILE) {
                    return Err(Status::failed_precondition(format!(
                        "Secret {namespace}/{CA_SECRET_NAME} holds the mesh root key (one-tier layout): \
                         install this cluster's intermediate with `meridianctl ca issue-intermediate` \
                         (docs/operations.md, migrating to per-cluster intermediates)"
                    )));
                }
                if has(CA_KEY_FILE) {
                    warn!(secret = %format!("{namespace}/{CA_SECRET_NAME}"), key = CA_KEY_FILE, "the mesh root key is stored in this cluster: remove it, members need only their intermediate");
                }
                let get = |key: &str| {
                    data.get(key)
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                        .ok_or_else(|| {
                            Status::failed_precondition(format!(
                                "Secret {namespace}/{CA_SECRET_NAME} has no {key:?} key"
                            ))
                        })
                };
                ClusterCa::from_pem(
                    &get(INTERMEDIATE_CERT_FILE)?,
                    &get(INTERMEDIATE_KEY_FILE)?,
                    &get(CA_CERT_FILE)?,
                )
                .map_err(|e| Status::failed_precondition(format!("mesh CA Secret: {e}")))
            }
        }
    }
}

/// The mesh CA as last read from its [`CaSource`], reused for [`CA_CACHE`]. Shared by
/// certificate signing, the controller's own serving certificate ([`crate::grpc::tls`]) and the
/// root publisher ([`crate::grpc::ca_root`]), so they agree on one CA and read it once.
pub struct CaCache {
    source: CaSource,
    cache: Mutex<Option<(Arc<ClusterCa>, Instant)>>,
}

impl CaCache {
    /// Reads the CA from `source` on demand.
    pub fn new(source: CaSource) -> Self {
        Self {
            source,
            cache: Mutex::new(None),
        }
    }

    /// The CA: `FAILED_PRECONDITION` when there is none (no Secret, no files, a broken
    /// one), `UNAVAILABLE` when the API server could not be asked.
    pub(crate) async fn current(&self) -> Result<Arc<ClusterCa>, Status> {
        let mut cache = self.cache.lock().await;
        if let Some((ca, at)) = cache.as_ref()
            && at.elapsed() < CA_CACHE
        {
            return Ok(ca.clone());
        }
        let ca = Arc::new(self.source.load().await?);
        *cache = Some((ca.clone(), Instant::now()));
        Ok(ca)
    }

    /// The CA read now, bypassing (and refreshing) the cache: for writers that must not
    /// put a just-replaced root back (the root publisher during a rotation).
    pub(crate) async fn fresh(&self) -> Result<Arc<ClusterCa>, Status> {
        let mut cache = self.cache.lock().await;
        let ca = Arc::new(self.source.load().await?);
        *cache = Some((ca.clone(), Instant::now()));
        Ok(ca)
    }
}

/// The Certificates service implementation.
pub struct CertificatesService {
    cluster: String,
    trust_domain: String,
    ca: Arc<CaCache>,
    auth: CallerAuth,
}

impl CertificatesService {
    /// Signs for the gateway of `cluster` in `trust_domain` with the CA from `ca`, for
    /// callers that pass `auth`.
    pub fn new(cluster: String, trust_domain: String, ca: Arc<CaCache>, auth: CallerAuth) -> Self {
        Self {
            cluster,
            trust_domain,
            ca,
            auth,
        }
    }

    /// The tonic service, ready to add to a server.
    pub(crate) fn into_server(self) -> proto::certificates_server::CertificatesServer<Self> {
        proto::certificates_server::CertificatesServer::new(self)
    }
}

#[tonic::async_trait]
impl proto::certificates_server::Certificates for CertificatesService {
    async fn sign_certificate(
        &self,
        request: Request<SignCertificateRequest>,
    ) -> Result<Response<SignCertificateResponse>, Status> {
        self.auth
            .check("SignCertificate", request.metadata())
            .await?;
        let req = request.into_inner();
        if req.cluster != self.cluster {
            warn!(requested = %req.cluster, "CSR for another cluster refused");
            return Err(Status::permission_denied(format!(
                "this controller signs only for cluster {:?}, not {:?}",
                self.cluster, req.cluster
            )));
        }
        let identity = Identity::gateway(&self.trust_domain, &self.cluster)
            .map_err(|e| Status::internal(e.to_string()))?;
        let ca = self.ca.current().await?;
        if ca.cluster() != self.cluster || ca.trust_domain() != self.trust_domain {
            // Peers would refuse what it signs (issuer check): say so instead.
            warn!(intermediate = %format!("{}/{}", ca.trust_domain(), ca.cluster()), "the installed intermediate is not this cluster's");
            return Err(Status::failed_precondition(format!(
                "the intermediate in Secret {CA_SECRET_NAME} is for {}/{}, not {}/{} (run `meridianctl ca issue-intermediate --cluster {}`)",
                ca.trust_domain(),
                ca.cluster(),
                self.trust_domain,
                self.cluster,
                self.cluster
            )));
        }
        let ttl = granted_ttl(Duration::from_secs(req.ttl_seconds));
        let signed = ca
            .sign_csr(&req.csr_pem, &identity, ttl)
            .map_err(|e| Status::invalid_argument(format!("CSR: {e}")))?;
        info!(%identity, ttl_secs = ttl.as_secs(), "gateway certificate signed");
        Ok(Response::new(SignCertificateResponse {
            not_after: signed.not_after_unix(),
            cert_chain_pem: signed.cert_chain_pem,
            root_pem: signed.root_pem,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_api::proto::certificates_client::CertificatesClient;
    use meridian_identity::CertificateRequest;

    async fn serve(source: CaSource) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let svc = CertificatesService::new(
            "east".into(),
            "meridian.test".into(),
            Arc::new(CaCache::new(source)),
            CallerAuth::Unauthenticated,
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc.into_server())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    #[tokio::test]
    async fn signs_only_the_own_gateway_identity() {
        let dir = std::env::temp_dir().join(format!("meridian-ca-test-{}", std::process::id()));
        let root = meridian_identity::RootCa::generate("meridian.test").unwrap();
        let ca = root
            .issue_intermediate("meridian.test", "east", Duration::from_secs(3600))
            .unwrap();
        ca.write_dir(&dir).unwrap();
        let addr = serve(CaSource::Dir(dir.clone())).await;
        let mut client = CertificatesClient::connect(addr).await.unwrap();

        // Whatever identity the CSR claims, the certificate carries the caller's cluster.
        let claimed = Identity::gateway("meridian.test", "east").unwrap();
        let csr = CertificateRequest::generate(&claimed).unwrap();
        let resp = client
            .sign_certificate(SignCertificateRequest {
                csr_pem: csr.pem().to_owned(),
                cluster: "east".into(),
                ttl_seconds: 3600,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.root_pem, root.cert_pem());
        let certs =
            meridian_identity::credentials::parse_certs("chain", &resp.cert_chain_pem).unwrap();
        let ids = meridian_identity::identity::identities_in(&certs[0]).unwrap();
        assert_eq!(ids, vec![claimed]);
        assert_eq!(
            &certs[1],
            ca.cert_der(),
            "the chain ends with the intermediate"
        );

        let err = client
            .sign_certificate(SignCertificateRequest {
                csr_pem: csr.pem().to_owned(),
                cluster: "west".into(),
                ttl_seconds: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let err = client
            .sign_certificate(SignCertificateRequest {
                csr_pem: "not a csr".into(),
                cluster: "east".into(),
                ttl_seconds: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn another_clusters_intermediate_is_a_failed_precondition() {
        let dir = std::env::temp_dir().join(format!("meridian-ca-west-{}", std::process::id()));
        meridian_identity::RootCa::generate("meridian.test")
            .unwrap()
            .issue_intermediate("meridian.test", "west", Duration::from_secs(3600))
            .unwrap()
            .write_dir(&dir)
            .unwrap();
        let addr = serve(CaSource::Dir(dir.clone())).await;
        let mut client = CertificatesClient::connect(addr).await.unwrap();
        let id = Identity::gateway("meridian.test", "east").unwrap();
        let csr = CertificateRequest::generate(&id).unwrap();
        let err = client
            .sign_certificate(SignCertificateRequest {
                csr_pem: csr.pem().to_owned(),
                cluster: "east".into(),
                ttl_seconds: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("meridian.test/west"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_missing_ca_is_a_failed_precondition() {
        let addr = serve(CaSource::Dir("/nonexistent/meridian-ca".into())).await;
        let mut client = CertificatesClient::connect(addr).await.unwrap();
        let err = client
            .sign_certificate(SignCertificateRequest {
                csr_pem: String::new(),
                cluster: "east".into(),
                ttl_seconds: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    }
}
