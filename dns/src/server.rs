//! DNS transport: binds the UDP and TCP sockets. TCP is hickory's server; UDP is served
//! here, one socket per core.
//!
//! Why not hickory's UDP loop: it runs one task per socket that both receives every
//! query and sends every response, each query in a task of its own that hands its
//! response to the socket task through a channel of 32 slots (`BufDnsStreamHandle`). A
//! burst of more than 32 answered queries before the socket task runs again overflows
//! the channel and those responses are dropped, which dnsperf counted as lost queries;
//! the one socket task also caps the rate at what one core can receive and send. Here
//! each of several sockets bound to the same port with `SO_REUSEPORT` (the kernel spreads
//! clients over them) runs its own loop that answers each query in place and sends the
//! response straight on the socket, waiting for room in the send buffer rather than
//! dropping.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::Server;
use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{
    Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder,
};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use meridian_api::signal::Shutdown as CancellationToken;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::authority::Authority;

/// A TCP connection that sends no query for this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 64;
/// Attempts at finding a port free for both UDP and TCP when asked for port 0.
const FREE_PORT_ATTEMPTS: usize = 16;
/// Largest UDP query read (hickory's limit too); longer datagrams are truncated and then
/// fail to parse.
const MAX_UDP_QUERY: usize = 4096;

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
                udp.spawn(serve_udp(
                    Arc::new(socket),
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

/// Answers the queries arriving on `socket` one after another until `stop`; returns the
/// error that ended it otherwise.
async fn serve_udp(
    socket: Arc<UdpSocket>,
    authority: Authority,
    stop: CancellationToken,
) -> io::Error {
    let mut buf = vec![0u8; MAX_UDP_QUERY];
    loop {
        let (len, src) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(x) => x,
                Err(error) if is_unrecoverable(&error) => return error,
                // E.g. ICMP port unreachable from an earlier response's client.
                Err(error) => {
                    debug!(%error, "UDP receive failed");
                    continue;
                }
            },
            () = stop.cancelled() => return io::Error::other("stopped"),
        };
        if src.port() == 0 || src.ip().is_unspecified() {
            continue; // nowhere to answer
        }
        let responder = UdpResponder {
            socket: socket.clone(),
            dst: src,
        };
        answer(&buf[..len], src, &authority, responder).await;
    }
}

/// Hickory's handling of a raw query: too short for a header, dropped; not decodable,
/// FORMERR; a response, dropped (no reflection); else the authority answers.
async fn answer(bytes: &[u8], src: SocketAddr, authority: &Authority, responder: UdpResponder) {
    match Request::from_bytes(bytes.to_vec(), src, Protocol::Udp) {
        Ok(request) => {
            if request.metadata.message_type == MessageType::Response {
                return;
            }
            authority
                .handle_request::<_, TokioTime>(&request, responder)
                .await;
        }
        Err(error) => {
            let mut decoder = BinDecoder::new(bytes);
            let Ok(header) = Header::read(&mut decoder) else {
                return;
            };
            debug!(%src, %error, "undecodable query: FORMERR");
            let Ok(queries) = Queries::read(&mut decoder, 0) else {
                return;
            };
            let response = MessageResponseBuilder::new(&queries, None)
                .error_msg(&header.metadata, ResponseCode::FormErr);
            let mut responder = responder;
            if let Err(error) = responder.send_response(response).await {
                warn!(%error, "failed to send FORMERR");
            }
        }
    }
}

fn is_unrecoverable(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted
    )
}

/// Sends a response on the socket its query came in on.
#[derive(Clone)]
struct UdpResponder {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for UdpResponder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let (info, bytes) = encode_udp(response)?;
        self.socket
            .send_to(&bytes, self.dst)
            .await
            .map_err(NetError::from)?;
        Ok(info)
    }
}

/// What hickory's `MessageResponse::encode` (crate-private) does for UDP: the response
/// fits the client's advertised payload size (512 bytes without EDNS), truncated if need
/// be; one that cannot be encoded becomes an empty SERVFAIL.
pub(crate) fn encode_udp<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> Result<(ResponseInfo, Vec<u8>), NetError> {
    let id = response.metadata().id;
    let max_size = response.edns().map_or(512, |edns| edns.max_payload());
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(max_size);
    let error = match response.destructive_emit(&mut encoder) {
        Ok(info) => return Ok((info, bytes)),
        Err(error) => error,
    };
    warn!(%error, "cannot encode a response: SERVFAIL");
    bytes.clear();
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(512);
    let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
    metadata.response_code = ResponseCode::ServFail;
    let header = Header {
        metadata,
        counts: HeaderCounts::default(),
    };
    header.emit(&mut encoder).map_err(NetError::from)?;
    Ok((ResponseInfo::from(header), bytes))
}
