//! Why the DNS server could not start or stopped on its own: the errors [`crate::run`]
//! returns.

use std::net::SocketAddr;

/// An error that stops the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--controller` does not describe a usable endpoint.
    #[error("controller endpoint")]
    Subscription(#[source] meridian_api::channel::Error),
    /// The DNS sockets could not be bound.
    #[error("binding DNS sockets on {listen:?}")]
    BindDns {
        /// The `--listen` addresses.
        listen: Vec<SocketAddr>,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The admin listener could not be bound.
    #[error("binding the admin server on {addr}")]
    BindAdmin {
        /// The admin address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The DNS server stopped without being asked to.
    #[error("DNS server stopped unexpectedly")]
    Stopped,
    /// A DNS socket failed.
    #[error("DNS server failed")]
    Failed(#[source] hickory_server::net::NetError),
}

/// Result alias of the DNS server library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
