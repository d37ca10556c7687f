//! The UDP transport: each socket's loop reads queries in batches (`recvmmsg`), answers
//! them in place and writes the answers in batches (`sendmmsg`), as NSD does.
//!
//! Why batches: once the index of names made answering cheap, two thirds of the server's
//! CPU went to the kernel's per-datagram work and to waking the socket's task, one
//! `recv_from` and one `send_to` system call per query, each returning to the runtime in
//! between. Under load a socket holds many queries at once; one `recvmmsg` takes up to
//! [`BATCH`] of them and one `sendmmsg` sends their answers. Under light load a batch is
//! a single query, as before.
//!
//! Why not hickory's UDP loop: it runs one task per socket that both receives every
//! query and sends every response, each query in a task of its own that hands its
//! response to the socket task through a channel of 32 slots (`BufDnsStreamHandle`). A
//! burst of more than 32 answered queries before the socket task runs again overflows
//! the channel and those responses are dropped, which dnsperf counted as lost queries.
//! Here nothing is dropped: a full send buffer makes the loop wait until it has room.
//!
//! Repeated queries are answered from the socket's [`AnswerCache`].

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock};

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
use hickory_server::server::{Request, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use meridian_api::signal::Shutdown as CancellationToken;
use nix::sys::socket::{self, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::answer_cache::AnswerCache;
use crate::authority::Authority;

/// Datagrams read or written per system call.
const BATCH: usize = 32;
/// Largest UDP query read (hickory's limit too); longer datagrams are truncated and then
/// fail to parse.
const MAX_UDP_QUERY: usize = 4096;

/// Answers the queries arriving on `socket` until `stop`; returns the error that ended it
/// otherwise.
pub(crate) async fn serve(
    socket: UdpSocket,
    authority: Authority,
    stop: CancellationToken,
) -> io::Error {
    let mut queries = Received::new();
    let mut answers = Answers::default();
    let mut cache = AnswerCache::default();
    loop {
        tokio::select! {
            ready = socket.readable() => if let Err(error) = ready {
                return error;
            },
            () = stop.cancelled() => return io::Error::other("stopped"),
        }
        // Until the socket is empty: each round reads a batch and sends its answers.
        loop {
            match socket.try_io(Interest::READABLE, || queries.receive(&socket)) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if is_unrecoverable(&error) => return error,
                // E.g. ICMP port unreachable from an earlier response's client.
                Err(error) => {
                    debug!(%error, "UDP receive failed");
                    continue;
                }
            }
            for (query, src) in queries.iter() {
                answer(query, src, &authority, &mut cache, &mut answers).await;
            }
            if let Err(error) = answers.send(&socket).await {
                return error;
            }
        }
    }
}

/// The datagrams of one `recvmmsg`.
struct Received {
    buffers: Vec<Box<[u8]>>,
    /// Length and source of each datagram received, in `buffers` order.
    datagrams: Vec<(usize, Option<SocketAddr>)>,
}

impl Received {
    fn new() -> Self {
        Self {
            buffers: (0..BATCH)
                .map(|_| vec![0; MAX_UDP_QUERY].into_boxed_slice())
                .collect(),
            datagrams: Vec::with_capacity(BATCH),
        }
    }

    /// Reads up to [`BATCH`] datagrams without waiting; `WouldBlock` when there is none.
    fn receive(&mut self, socket: &UdpSocket) -> io::Result<()> {
        self.datagrams.clear();
        // Allocated per call: nix's headers are not `Send`, and the loop's future must be.
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .buffers
            .iter_mut()
            .map(|buffer| [IoSliceMut::new(buffer)])
            .collect();
        let received = socket::recvmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(io::Error::from)?;
        self.datagrams
            .extend(received.map(|message| (message.bytes, message.address.and_then(socket_addr))));
        Ok(())
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.datagrams
            .iter()
            .zip(&self.buffers)
            .filter_map(|(&(len, src), buffer)| Some((&buffer[..len], src?)))
    }
}

fn socket_addr(address: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// The answers to one batch, sent together.
#[derive(Default)]
struct Answers {
    /// Where each of the batch's answers goes; its length is the batch's size.
    destinations: Vec<Option<SockaddrStorage>>,
    /// Encoded answers, in `destinations` order; those beyond the batch are buffers kept
    /// for reuse.
    buffers: Vec<Vec<u8>>,
}

impl Answers {
    /// An empty buffer for the answer to a query from `dst`.
    fn next(&mut self, dst: SocketAddr) -> &mut Vec<u8> {
        let i = self.destinations.len();
        if i == self.buffers.len() {
            self.buffers.push(Vec::with_capacity(512));
        }
        self.destinations.push(Some(SockaddrStorage::from(dst)));
        let buffer = &mut self.buffers[i];
        buffer.clear();
        buffer
    }

    /// Drops the answer last added (the query turned out to need none).
    fn discard_last(&mut self) {
        self.destinations.pop();
    }

    /// Sends the batch's answers, waiting for room in the send buffer rather than
    /// dropping any. An answer the kernel refuses (e.g. an unreachable destination) is
    /// skipped; only a closed socket ends the loop.
    async fn send(&mut self, socket: &UdpSocket) -> io::Result<()> {
        let mut sent = 0;
        while sent < self.destinations.len() {
            match socket.try_io(Interest::WRITABLE, || self.send_from(socket, sent)) {
                Ok(n) => sent += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    socket.writable().await?;
                }
                Err(error) if is_unrecoverable(&error) => return Err(error),
                Err(error) => {
                    debug!(%error, "UDP send failed; answer dropped");
                    sent += 1;
                }
            }
        }
        self.destinations.clear();
        Ok(())
    }

    /// One `sendmmsg` of the answers from index `from` on; how many were sent.
    fn send_from(&self, socket: &UdpSocket, from: usize) -> io::Result<usize> {
        let end = self.destinations.len();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(end - from, None);
        let slices: Vec<[IoSlice<'_>; 1]> = self.buffers[from..end]
            .iter()
            .map(|buffer| [IoSlice::new(buffer)])
            .collect();
        let sent = socket::sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            &slices,
            &self.destinations[from..],
            [],
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        Ok(sent.count())
    }
}

/// Answers one query into `answers`: from the cache when an identical query was answered
/// from the same zones, else as hickory handles a raw query (too short for a header,
/// dropped; not decodable, FORMERR; a response, dropped, no reflection; else the
/// authority answers).
async fn answer(
    query: &[u8],
    src: SocketAddr,
    authority: &Authority,
    cache: &mut AnswerCache,
    answers: &mut Answers,
) {
    if src.port() == 0 || src.ip().is_unspecified() {
        return; // nowhere to answer
    }
    let generation = authority.generation();
    if let Some(cached) = cache.get(generation, query) {
        cached.write_for(query, answers.next(src));
        authority.count_cached(cached.query_type, cached.code);
        return;
    }
    let capture = Capture::default();
    match Request::from_bytes(query.to_vec(), src, Protocol::Udp) {
        Ok(request) => {
            if request.metadata.message_type == MessageType::Response {
                return;
            }
            let answered = authority
                .answer::<_, TokioTime>(&request, capture.clone())
                .await;
            let Some(response) = capture.take() else {
                return;
            };
            if let (Some(generation), Some(question)) =
                (answered.indexed, request.queries.queries().first())
            {
                cache.insert(
                    generation,
                    query,
                    &response,
                    question.query_type(),
                    answered.info.response_code,
                );
            }
            answers.next(src).extend_from_slice(&response);
        }
        Err(error) => {
            let mut decoder = BinDecoder::new(query);
            let Ok(header) = Header::read(&mut decoder) else {
                return;
            };
            debug!(%src, %error, "undecodable query: FORMERR");
            let Ok(queries) = Queries::read(&mut decoder, 0) else {
                return;
            };
            let response = MessageResponseBuilder::new(&queries, None)
                .error_msg(&header.metadata, ResponseCode::FormErr);
            let buffer = answers.next(src);
            match encode_udp(response) {
                Ok((_, bytes)) => *buffer = bytes,
                Err(error) => {
                    warn!(%error, "failed to encode FORMERR");
                    answers.discard_last();
                }
            }
        }
    }
}

fn is_unrecoverable(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted
    ) || error.raw_os_error() == Some(nix::libc::EBADF)
}

/// Keeps the encoded response instead of sending it: the loop sends it with its batch
/// (and tests compare it).
#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<OnceLock<Vec<u8>>>);

impl Capture {
    /// The response, once the handler (which holds the other clone) is done.
    pub(crate) fn take(self) -> Option<Vec<u8>> {
        Arc::into_inner(self.0).and_then(OnceLock::into_inner)
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
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
        // One response per query: a second one would be a handler bug, and is dropped.
        let _ = self.0.set(bytes);
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
