//! The testbed's error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while starting or driving the testbed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required binary (kube-apiserver, etcd) was not found anywhere.
    #[error(
        "{binary} not found in $KUBEBUILDER_ASSETS, PATH or {cache}; run \
         tests/scripts/provision-k8s.sh (Debian 12) or set KUBEBUILDER_ASSETS to a directory \
         holding kube-apiserver and etcd"
    )]
    BinaryNotFound {
        /// The missing binary's file name.
        binary: &'static str,
        /// The cache directory that was searched.
        cache: PathBuf,
    },

    /// `$KUBEBUILDER_ASSETS` is set but does not hold a required binary.
    #[error("KUBEBUILDER_ASSETS={dir} does not contain an executable {binary}")]
    AssetsIncomplete {
        /// The directory named by `$KUBEBUILDER_ASSETS`.
        dir: PathBuf,
        /// The missing binary's file name.
        binary: &'static str,
    },

    /// A filesystem or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A child process (etcd, kube-apiserver) exited or never became ready.
    #[error("{process} failed: {reason}; last log lines from {log}:\n{tail}")]
    Process {
        /// The process name, e.g. `etcd[east]`.
        process: String,
        /// Why it is considered failed.
        reason: String,
        /// The process's log file.
        log: PathBuf,
        /// The end of that log, to make failures diagnosable from test output.
        tail: String,
    },

    /// Something did not happen within its deadline.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The deadline.
        after: Duration,
    },

    /// Generating certificates or keys failed.
    #[error("generating {what}: {source}")]
    Pki {
        /// The credential being generated.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },

    /// Building a client from the generated kubeconfig failed.
    #[error("admin kubeconfig for cluster {cluster}: {reason}")]
    Kubeconfig {
        /// The cluster name.
        cluster: String,
        /// Why it failed.
        reason: String,
    },

    /// A Kubernetes API call failed.
    #[error("{context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },

    /// The cluster's API server is stopped, so the API cannot be changed now.
    #[error("the API server of cluster {cluster} is stopped")]
    ApiServerStopped {
        /// The cluster name.
        cluster: String,
    },

    /// A cluster, pod or service spec is invalid.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// No cluster or pod by that name.
    #[error("no {kind} named {name}")]
    NotFound {
        /// `cluster` or `pod`.
        kind: &'static str,
        /// The name looked up.
        name: String,
    },

    /// Every loopback block or address is in use.
    #[error("loopback addresses exhausted: {0}")]
    AddressesExhausted(String),
}

/// The testbed's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// Wraps a kube error with what was being done.
    pub(crate) fn kube(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let context = context.into();
        move |source| Error::Kube { context, source }
    }
}
