//! DNS sockets: binds UDP and TCP. TCP is hickory's server; UDP is served by
//! [`crate::udp`], one socket per core, all bound to the same port with `SO_REUSEPORT`
//! (the kernel spreads clients over them), each with its own loop.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::NetError;
use meridian_api::signal::Shutdown as CancellationToken;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;
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
    udp: JoinSet<io::Error>,
    stop_udp: CancellationToken,
}

impl DnsServer {
    /// Binds UDP and TCP on each of `listen` (port 0: one free port for both) and starts
    /// answering from `authority`. UDP gets one socket per available core.
    pub(crate) async fn bind(listen: &[SocketAddr], authority: Authority) -> io::Result<Self> {
        let sockets = std::thread::available_parallelism().map_or(1, usize::from);
        let mut server = Server::new(authority.clone());
        let mut udp = JoinSet::new();
        let stop_udp = CancellationToken::new();
        for &addr in listen {
            let (udps, tcp) = bind_sockets(addr, sockets).await?;
            let local = tcp.local_addr()?;
            info!(udp = %local, udp_sockets = udps.len(), tcp = %local, "listening for DNS");
            for socket in udps {
                udp.spawn(crate::udp::serve(
                    socket,
                    authority.clone(),
                    stop_udp.clone(),
                ));
            }
            server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        }
        Ok(Self {
            server,
            udp,
            stop_udp,
        })
    }

    /// Resolves only if the server stops on its own (a socket failed).
    pub(crate) async fn stopped(&mut self) -> Result<(), NetError> {
        tokio::select! {
            done = self.server.block_until_done() => done,
            Some(failed) = self.udp.join_next() => Err(match failed {
                Ok(error) => NetError::from(format!("UDP socket failed: {error}")),
                Err(error) => NetError::from(format!("UDP task failed: {error}")),
            }),
        }
    }

    /// Stops accepting queries and waits for the socket tasks to end.
    pub(crate) async fn shutdown(mut self) -> Result<(), NetError> {
        self.stop_udp.cancel();
        while self.udp.join_next().await.is_some() {}
        self.server.shutdown_gracefully().await
    }
}

/// Binds TCP, then `udp` UDP sockets sharing its port (`SO_REUSEPORT`).
async fn bind_sockets(addr: SocketAddr, udp: usize) -> io::Result<(Vec<UdpSocket>, TcpListener)> {
    let attempts = if addr.port() == 0 {
        FREE_PORT_ATTEMPTS
    } else {
        1
    };
    let mut last_error = None;
    'attempt: for _ in 0..attempts {
        let tcp = TcpListener::bind(addr).await?;
        let port = tcp.local_addr()?.port();
        let mut sockets = Vec::with_capacity(udp);
        for _ in 0..udp {
            match reuseport_udp(SocketAddr::new(addr.ip(), port)) {
                Ok(socket) => sockets.push(socket),
                // Port 0 gave a TCP port whose UDP twin is taken: try another.
                Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
                    last_error = Some(error);
                    continue 'attempt;
                }
                Err(error) => return Err(error),
            }
        }
        return Ok((sockets, tcp));
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no free port")))
}

/// A non-blocking UDP socket on `addr` that other sockets of this process may share.
fn reuseport_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}
