//! The `meridian.v1.Certificates` gRPC server: signs this cluster's gateway CSRs with the
//! mesh CA.
//!
//! The CA comes from the Secret `<namespace>/meridian-ca` (keys `ca.crt`, `ca.key`, as
//! `meridianctl ca init` writes it) or from a directory of the same files (`--ca-dir`). It is
//! loaded on demand and cached briefly, so a CA created after the controller started is
//! picked up. A controller only vouches for its own cluster: the identity is
//! `spiffe://<trust-domain>/cluster/<this cluster>/gateway`, whatever the CSR says.
//!
//! Callers prove they are the gateway: they send the gateway ServiceAccount's token
//! (`authorization: Bearer …`), which the own API server reviews ([`crate::auth`]). Without
//! that, anyone reaching the port could obtain the gateway's identity and impersonate it to
//! peers. The token is never logged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::Api;
use meridian_api::proto::{self, SignCertificateRequest, SignCertificateResponse};
use meridian_identity::ca::{CA_CERT_FILE, CA_KEY_FILE, granted_ttl};
use meridian_identity::{Identity, MeshCa};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::auth::CallerAuth;

/// Name of the Secret holding the mesh root.
pub const CA_SECRET_NAME: &str = meridian_identity::ca::CA_SECRET.1;
/// How long a loaded CA is reused before it is read again.
pub const CA_CACHE: Duration = Duration::from_secs(30);

/// The Secret `<namespace>/meridian-ca` holding `ca` in the layout [`CaSource::Secret`]
/// reads (what `meridianctl ca init` creates).
pub fn ca_secret(ca: &MeshCa, namespace: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET_NAME.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            (
                CA_CERT_FILE.to_owned(),
                ByteString(ca.cert_pem().as_bytes().to_vec()),
            ),
            (
                CA_KEY_FILE.to_owned(),
                ByteString(ca.key_pem().into_bytes()),
            ),
        ])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

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
    /// A directory with `ca.crt` and `ca.key`.
    Dir(PathBuf),
}

impl CaSource {
    async fn load(&self) -> Result<MeshCa, Status> {
        match self {
            CaSource::Dir(dir) => MeshCa::load_dir(dir).map_err(|e| {
                Status::failed_precondition(format!("mesh CA in {}: {e}", dir.display()))
            }),
            CaSource::Secret { client, namespace } => {
                let secret = Api::<Secret>::namespaced(client.clone(), namespace)
                    .get_opt(CA_SECRET_NAME)
                    .await
                    .map_err(|e| Status::unavailable(format!("reading the mesh CA Secret: {e}")))?
                    .ok_or_else(|| {
                        Status::failed_precondition(format!(
                            "no mesh CA: Secret {namespace}/{CA_SECRET_NAME} not found (run `meridianctl ca init`)"
                        ))
                    })?;
                let get = |key: &str| {
                    secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                        .ok_or_else(|| {
                            Status::failed_precondition(format!(
                                "Secret {namespace}/{CA_SECRET_NAME} has no {key:?} key"
                            ))
                        })
                };
                MeshCa::from_pem(&get(CA_CERT_FILE)?, &get(CA_KEY_FILE)?)
                    .map_err(|e| Status::failed_precondition(format!("mesh CA Secret: {e}")))
            }
        }
    }
}

/// The mesh CA as last read from its [`CaSource`], reused for [`CA_CACHE`]. Shared by
/// certificate signing, the controller's own serving certificate ([`crate::tls`]) and the
/// root publisher ([`crate::ca_root`]), so they agree on one CA and read it once.
pub struct CaCache {
    source: CaSource,
    cache: Mutex<Option<(Arc<MeshCa>, Instant)>>,
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
    pub async fn current(&self) -> Result<Arc<MeshCa>, Status> {
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
    pub async fn fresh(&self) -> Result<Arc<MeshCa>, Status> {
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
    pub fn into_server(self) -> proto::certificates_server::CertificatesServer<Self> {
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
        let ca = MeshCa::generate("meridian.test").unwrap();
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
        assert_eq!(resp.root_pem, ca.cert_pem());
        let certs =
            meridian_identity::credentials::parse_certs("chain", &resp.cert_chain_pem).unwrap();
        let ids = meridian_identity::identity::identities_in(&certs[0]).unwrap();
        assert_eq!(ids, vec![claimed]);

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
