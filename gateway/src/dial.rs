//! What dialling an endpoint yields: a byte stream ([`Io`]), or why there is none
//! ([`DialError`]). Shared by the data plane, which dials, and the upstream connection
//! pool, which dials through it.

use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream to an endpoint (TCP or a tunnel stream).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why an endpoint could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DialError {
    /// The endpoint (or, for a remote one, the peer gateway's dial of it) failed: counts
    /// against the endpoint.
    #[error("endpoint unreachable: {0}")]
    Endpoint(String),
    /// The peer gateway in front of it failed: counts against the peer.
    #[error("{0}")]
    Peer(String),
    /// The peer gateway refused the target.
    #[error("peer gateway refused the stream: {0}")]
    Refused(http::StatusCode),
    /// No gateway is known for the endpoint's cluster.
    #[error("no peer gateway for cluster {0}")]
    NoPeer(String),
}

impl DialError {
    /// Whether outlier detection should count this against the endpoint.
    pub fn blames_endpoint(&self) -> bool {
        matches!(self, DialError::Endpoint(_))
    }
}
