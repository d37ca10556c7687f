//! Why the gateway could not start: the errors [`crate::run`] returns.

use std::net::SocketAddr;

/// An error that stops the gateway.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("binding the {listener} listener {addr}")]
    Bind {
        /// Which listener (admin, tunnel).
        listener: &'static str,
        /// The address it was to bind.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// `--ca`/`--controller` do not describe a usable certificate signer endpoint.
    #[error("the certificate signer endpoint (--ca, --controller)")]
    Signer(#[source] meridian_api::channel::Error),
    /// The snapshot subscription could not start (malformed `--controller`).
    #[error("starting the snapshot subscription")]
    Subscription(#[source] meridian_api::channel::Error),
    /// The subscription ended before the first snapshot.
    #[error("snapshot channel closed")]
    SnapshotsClosed,
    /// `--trust-domain` and `--cluster` do not make a gateway SPIFFE ID.
    #[error("the gateway identity (check --trust-domain and --cluster)")]
    Identity(#[source] meridian_identity::Error),
    /// The connection worker threads could not be started.
    #[error("starting the connection workers")]
    Workers(#[source] std::io::Error),
    /// The obtained certificate cannot serve TLS.
    #[error(transparent)]
    Credentials(meridian_identity::Error),
}

/// Result alias of the gateway library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
