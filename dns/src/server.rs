//! DNS transport: binds the UDP and TCP sockets and runs hickory's server on them.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::NetError;
use tokio::net::{TcpListener, UdpSocket};
use tracing::info;

use crate::authority::Authority;

/// A TCP connection that sends no query for this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 64;
/// Attempts at finding a port free for both UDP and TCP when asked for port 0.
const FREE_PORT_ATTEMPTS: usize = 16;

/// The running DNS server.
pub(crate) struct DnsServer {
    server: Server<Authority>,
}

impl DnsServer {
    /// Binds UDP and TCP on each of `listen` (port 0: one free port for both) and starts
    /// answering from `authority`.
    pub(crate) async fn bind(listen: &[SocketAddr], authority: Authority) -> io::Result<Self> {
        let mut server = Server::new(authority);
        for &addr in listen {
            let (udp, tcp) = bind_pair(addr).await?;
            let local = tcp.local_addr()?;
            info!(udp = %udp.local_addr()?, tcp = %local, "listening for DNS");
            server.register_socket(udp);
            server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        }
        Ok(Self { server })
    }

    /// Resolves only if the server stops on its own (a socket failed).
    pub(crate) async fn stopped(&mut self) -> Result<(), NetError> {
        self.server.block_until_done().await
    }

    /// Stops accepting queries and waits for the socket tasks to end.
    pub(crate) async fn shutdown(mut self) -> Result<(), NetError> {
        self.server.shutdown_gracefully().await
    }
}

/// Binds TCP then UDP on the same port.
async fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let attempts = if addr.port() == 0 {
        FREE_PORT_ATTEMPTS
    } else {
        1
    };
    let mut last_error = None;
    for _ in 0..attempts {
        let tcp = TcpListener::bind(addr).await?;
        let port = tcp.local_addr()?.port();
        match UdpSocket::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(udp) => return Ok((udp, tcp)),
            // Port 0 gave a TCP port whose UDP twin is taken: try another.
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free port")))
}
