//! The controller's error type.

/// Everything that can go wrong inside the controller library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A member's kubeconfig could not be parsed or turned into a client.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// A resource is missing something it needs (e.g. a namespace).
    #[error("invalid object: {0}")]
    InvalidObject(String),
    /// The gRPC or metrics server failed.
    #[error("server: {0}")]
    Server(String),
    /// Serializing a resource failed.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl Error {
    /// A short, stable label for metrics (`reconcile_errors_total{error=...}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Kubeconfig(_) => "kubeconfig",
            Error::InvalidObject(_) => "invalid_object",
            Error::Server(_) => "server",
            Error::Serialization(_) => "serialization",
        }
    }
}

/// Result alias of the controller library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
