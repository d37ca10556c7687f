//! The east-west tunnel: HTTP/2 CONNECT over mutual TLS between gateways (HBONE-style).
//!
//! A stream's `:authority` is the target endpoint `ip:port`; the [`SERVICE_HEADER`] names
//! the global service and port it belongs to (`reviews.default.global:9080`). The server
//! ([`server`]) accepts only peers of the mesh and only targets that are local endpoints
//! of that exported service port; the client ([`pool`]) keeps one HTTP/2 connection per
//! peer gateway and multiplexes every stream over it.

pub mod pool;
pub mod server;
mod watched;

pub use pool::{PeerEvent, Pool};

/// Request header naming the global service and port of a tunnel stream.
pub const SERVICE_HEADER: &str = "meridian-service";
/// Response header of a refused or failed stream: `connect` when the target did not
/// accept the connection, `forbidden` when the target is not allowed.
pub const ERROR_HEADER: &str = "meridian-error";

/// Why a tunnel stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The peer gateway is unreachable, failed the handshake or dropped the connection.
    #[error("peer gateway {peer}: {reason}")]
    Peer {
        /// The peer's cluster.
        peer: String,
        /// What went wrong.
        reason: String,
    },
    /// The peer gateway could not connect to the target endpoint.
    #[error("peer gateway could not connect to the target")]
    TargetConnect,
    /// The peer gateway refused the stream.
    #[error("peer gateway refused the stream with {0}")]
    Refused(http::StatusCode),
}
