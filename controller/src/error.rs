//! The controller's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong inside the controller library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The own cluster's kubeconfig file could not be read.
    #[error("reading the kubeconfig {}", path.display())]
    ReadKubeconfig {
        /// The file (`--kubeconfig`).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The own cluster's kubeconfig could not be parsed or its context not selected.
    #[error("kubeconfig")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    /// No `--kubeconfig` and no in-cluster configuration.
    #[error("in-cluster configuration")]
    InCluster(#[source] kube::config::InClusterError),
    /// The own cluster's client could not be built from its configuration.
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
    /// A resource is missing something it needs (e.g. a namespace).
    #[error("invalid object: {0}")]
    InvalidObject(String),
    /// The gRPC or metrics listener could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server's TLS configuration was refused.
    #[error("gRPC TLS configuration")]
    Tls(#[source] rustls::Error),
    /// The gRPC server failed.
    #[error("gRPC server")]
    Grpc(#[source] tonic::transport::Error),
    /// Serializing a resource failed.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl Error {
    /// A short, stable label for metrics (`reconcile_errors_total{error=...}`).
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::ReadKubeconfig { .. }
            | Error::Kubeconfig(_)
            | Error::InCluster(_)
            | Error::Client(_) => "kubeconfig",
            Error::InvalidObject(_) => "invalid_object",
            Error::Bind { .. } | Error::Tls(_) | Error::Grpc(_) => "server",
            Error::Serialization(_) => "serialization",
        }
    }
}

/// Result alias of the controller library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
