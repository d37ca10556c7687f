//! The connection to the controller's gRPC port (Discovery and Certificates), shared by the
//! snapshot subscription of the gateway and the DNS server and by the gateway's certificate
//! requests, so TLS to the controller is set up in exactly one place.
//!
//! `https://` endpoints are dialled with TLS 1.3 (rustls on the `ring` provider): the
//! controller's serving certificate must chain to the pinned mesh root (the file
//! `--controller-ca-file`, in Kubernetes the ConfigMap `meridian-ca-root`) and carry the
//! server name (`--controller-server-name`) as a DNS SAN, checked by WebPKI. The name is
//! checked, not the URL's host, so a URL with an IP address (the testbed) still verifies
//! the controller's identity. The root file is read again on every connect: a rotated root
//! is picked up at the next reconnect without a restart.
//!
//! `http://` is plaintext, for development only: anyone who can impersonate the controller
//! could then feed bogus snapshots and read the gateway's token. A warning says so once.
//!
//! Every call carries the caller's ServiceAccount token (`--token-file`, a projected token
//! with audience `meridian-controller`) as `authorization: Bearer …`: the controller serves
//! only its own gateway and DNS server ([`ControllerEndpoint::authorize`]). The file is read
//! again for every call, because the kubelet rotates projected tokens.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::warn;

/// The controller's name in its serving certificate by default (its Service in
/// `meridian-system`).
pub const DEFAULT_SERVER_NAME: &str = "meridian-controller.meridian-system.svc";

/// ALPN protocol of gRPC: HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// How to verify the controller on an `https://` endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerTls {
    /// PEM file with the mesh root(s) the controller's serving certificate must chain to.
    pub ca_file: PathBuf,
    /// DNS name the serving certificate must carry.
    pub server_name: String,
}

impl ControllerTls {
    /// Verifies against the roots in `ca_file` and the default server name.
    pub fn new(ca_file: impl Into<PathBuf>) -> Self {
        Self {
            ca_file: ca_file.into(),
            server_name: DEFAULT_SERVER_NAME.to_owned(),
        }
    }
}

/// The `--controller*` flags of every component that talks to the controller (gateway,
/// DNS server), defined once so they read and behave the same everywhere.
#[cfg(feature = "clap")]
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// The controller's gRPC endpoint. `https://` verifies the controller against
    /// --controller-ca-file and --controller-server-name; `http://` is plaintext, for
    /// development only.
    #[arg(
        long = "controller",
        env = "MERIDIAN_CONTROLLER",
        default_value = "https://meridian-controller.meridian-system.svc:15010"
    )]
    pub url: String,

    /// The mesh root (PEM) the controller's serving certificate must chain to: the
    /// ConfigMap `meridian-ca-root` mounted into the pod. Required with `https://`; re-read
    /// on every reconnect.
    #[arg(
        long = "controller-ca-file",
        env = "MERIDIAN_CONTROLLER_CA_FILE",
        value_name = "FILE"
    )]
    pub ca_file: Option<PathBuf>,

    /// The DNS name the controller's serving certificate must carry (checked instead of
    /// the URL's host).
    #[arg(
        long = "controller-server-name",
        value_name = "NAME",
        env = "MERIDIAN_CONTROLLER_SERVER_NAME",
        default_value = DEFAULT_SERVER_NAME
    )]
    pub server_name: String,

    /// ServiceAccount token sent with every call to the controller, which serves only the
    /// gateway's and DNS server's ServiceAccounts: a projected token with audience
    /// `meridian-controller`, re-read on every call as the kubelet rotates it.
    #[arg(long = "token-file", env = "MERIDIAN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

#[cfg(feature = "clap")]
impl ControllerArgs {
    /// How `https://` endpoints are verified (`None` without a CA file).
    pub fn tls(&self) -> Option<ControllerTls> {
        self.ca_file.clone().map(|ca_file| ControllerTls {
            ca_file,
            server_name: self.server_name.clone(),
        })
    }
}

/// Why an endpoint cannot be used at all (a configuration error, not retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The controller endpoint is not a valid URI.
    #[error("invalid controller endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was rejected.
        #[source]
        source: tonic::transport::Error,
    },
    /// The endpoint's scheme is neither `https://` nor `http://`.
    #[error(
        "unsupported scheme in controller endpoint {endpoint:?}: expected https:// (or http:// for development)"
    )]
    UnsupportedScheme {
        /// The endpoint as given.
        endpoint: String,
    },
    /// An `https://` endpoint without a root to verify the controller against.
    #[error(
        "controller endpoint {endpoint:?} is https:// but no root is pinned: set --controller-ca-file (MERIDIAN_CONTROLLER_CA_FILE)"
    )]
    MissingRoot {
        /// The endpoint as given.
        endpoint: String,
    },
    /// The server name is not a DNS name.
    #[error("invalid controller server name {name:?}: expected a DNS name")]
    InvalidServerName {
        /// The name as given.
        name: String,
    },
}

/// Why one connection attempt failed (retried by callers).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The pinned root file could not be read or holds no certificate.
    #[error("controller root {path}: {reason}")]
    Root {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// TCP, TLS or HTTP/2 failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    /// The ServiceAccount token file could not be read or is not a valid header value
    /// (the token itself is never part of the message).
    #[error("ServiceAccount token {path}: {reason}")]
    Token {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Clone, Debug)]
struct Tls {
    ca_file: PathBuf,
    server_name: ServerName<'static>,
}

/// A validated controller endpoint: plaintext (`http://`) or TLS with a pinned root.
#[derive(Clone, Debug)]
pub struct ControllerEndpoint {
    url: String,
    endpoint: Endpoint,
    tls: Option<Tls>,
    token_file: Option<PathBuf>,
}

impl ControllerEndpoint {
    /// Checks `url` against `tls`: `https://` needs it, `http://` ignores it (and warns
    /// once per process that the control plane is unauthenticated).
    pub fn new(url: impl Into<String>, tls: Option<ControllerTls>) -> Result<Self, Error> {
        let url = url.into();
        let endpoint =
            Endpoint::from_shared(url.clone()).map_err(|source| Error::InvalidEndpoint {
                endpoint: url.clone(),
                source,
            })?;
        let tls = match (endpoint.uri().scheme_str(), tls) {
            (Some("https"), Some(tls)) => Some(Tls {
                server_name: ServerName::try_from(tls.server_name.clone())
                    .ok()
                    .filter(|n| matches!(n, ServerName::DnsName(_)))
                    .ok_or(Error::InvalidServerName {
                        name: tls.server_name,
                    })?,
                ca_file: tls.ca_file,
            }),
            (Some("https"), None) => return Err(Error::MissingRoot { endpoint: url }),
            (Some("http"), tls) => {
                warn_plaintext(&url, tls.is_some());
                None
            }
            _ => return Err(Error::UnsupportedScheme { endpoint: url }),
        };
        Ok(Self {
            url,
            endpoint,
            tls,
            token_file: None,
        })
    }

    /// Sends the token in `token_file` with every call ([`ControllerEndpoint::authorize`]).
    pub fn with_token_file(mut self, token_file: Option<PathBuf>) -> Self {
        self.token_file = token_file;
        self
    }

    /// Adds the caller's token, read from the token file now, to `request` (nothing
    /// without a token file: the controller then refuses unless it runs without caller
    /// authentication).
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<(), ConnectError> {
        let Some(path) = &self.token_file else {
            return Ok(());
        };
        let err = |reason: &str| ConnectError::Token {
            path: path.display().to_string(),
            reason: reason.to_owned(),
        };
        let token = std::fs::read_to_string(path).map_err(|e| err(&e.to_string()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(err("the file is empty"));
        }
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| err("not a valid header value"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(())
    }

    /// Adjusts the underlying tonic endpoint (timeouts, keepalive).
    pub fn configure(mut self, f: impl FnOnce(Endpoint) -> Endpoint) -> Self {
        self.endpoint = f(self.endpoint);
        self
    }

    /// The endpoint as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether connections are TLS with a pinned root.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The pinned roots, read now (`None` for plaintext endpoints). The gateway checks the
    /// root the controller hands out against these.
    pub fn pinned_roots(&self) -> Option<Result<Vec<CertificateDer<'static>>, ConnectError>> {
        self.tls.as_ref().map(|t| read_roots(&t.ca_file))
    }

    /// Opens a channel: TCP, then (for `https://`) TLS verified against the root file as it
    /// is now, then HTTP/2.
    pub async fn connect(&self) -> Result<Channel, ConnectError> {
        let Some(tls) = &self.tls else {
            return Ok(self.endpoint.connect().await?);
        };
        let mut roots = RootCertStore::empty();
        for cert in read_roots(&tls.ca_file)? {
            roots.add(cert).map_err(|e| ConnectError::Root {
                path: tls.ca_file.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ConnectError::Root {
                path: tls.ca_file.display().to_string(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        let connector = TlsConnector {
            config: Arc::new(config),
            server_name: tls.server_name.clone(),
        };
        Ok(self.endpoint.connect_with_connector(connector).await?)
    }
}

fn warn_plaintext(url: &str, ca_file_given: bool) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        warn!(
            endpoint = %url,
            ca_file_ignored = ca_file_given,
            "controller endpoint is plaintext http://: snapshots and the gateway token are \
             neither authenticated nor encrypted; use https:// outside development"
        );
    });
}

/// Every certificate in the PEM file at `path` (at least one).
pub fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConnectError> {
    let err = |reason: String| ConnectError::Root {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Dials the URI's host and port and runs the TLS handshake for the pinned server name.
#[derive(Clone)]
struct TlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream>>> + Send + 'static>>;
type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        let name = self.server_name.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
                .ok_or_else(|| std::io::Error::other(format!("no host in {uri}")))?;
            let port = uri.port_u16().unwrap_or(443);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_needs_a_root_and_a_dns_name() {
        let tls = || Some(ControllerTls::new("/nonexistent/root.pem"));
        assert!(
            ControllerEndpoint::new("https://127.0.0.1:15010", tls())
                .unwrap()
                .is_tls()
        );
        assert!(matches!(
            ControllerEndpoint::new("https://127.0.0.1:15010", None),
            Err(Error::MissingRoot { .. })
        ));
        let bad_name = ControllerTls {
            server_name: "10.0.0.1".into(),
            ..ControllerTls::new("/x")
        };
        assert!(matches!(
            ControllerEndpoint::new("https://127.0.0.1:15010", Some(bad_name)),
            Err(Error::InvalidServerName { .. })
        ));
        assert!(
            !ControllerEndpoint::new("http://127.0.0.1:15010", tls())
                .unwrap()
                .is_tls()
        );
        assert!(matches!(
            ControllerEndpoint::new("ftp://127.0.0.1:15010", tls()),
            Err(Error::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            ControllerEndpoint::new("not a uri", tls()),
            Err(Error::InvalidEndpoint { .. })
        ));
    }

    #[test]
    fn the_token_is_read_from_its_file_on_every_call() {
        let path = std::env::temp_dir().join(format!("meridian-token-{}", std::process::id()));
        let ep = ControllerEndpoint::new("http://127.0.0.1:1", None)
            .unwrap()
            .with_token_file(Some(path.clone()));
        let header = |ep: &ControllerEndpoint| {
            let mut r = tonic::Request::new(());
            ep.authorize(&mut r).map(|()| {
                r.metadata()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned())
            })
        };
        assert!(matches!(header(&ep), Err(ConnectError::Token { .. })));
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(header(&ep).unwrap().as_deref(), Some("Bearer first"));
        // Rotated by the kubelet: the next call sends the new token.
        std::fs::write(&path, "second").unwrap();
        assert_eq!(header(&ep).unwrap().as_deref(), Some("Bearer second"));
        std::fs::write(&path, "bad\rvalue").unwrap();
        let err = header(&ep).unwrap_err().to_string();
        assert!(!err.contains("bad"), "the token is not echoed: {err}");
        let _ = std::fs::remove_file(path);
        let none = ControllerEndpoint::new("http://127.0.0.1:1", None).unwrap();
        assert_eq!(header(&none).unwrap(), None);
    }

    #[tokio::test]
    async fn a_missing_root_file_fails_the_connect() {
        let ep = ControllerEndpoint::new(
            "https://127.0.0.1:1",
            Some(ControllerTls::new("/nonexistent/root.pem")),
        )
        .unwrap();
        let err = ep.connect().await.unwrap_err();
        assert!(matches!(err, ConnectError::Root { .. }), "{err}");
    }
}
