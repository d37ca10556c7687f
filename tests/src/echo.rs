//! Echo servers: the workload inside a simulated pod.
//!
//! Each port serves both protocols, told apart by the first bytes of a connection:
//! - HTTP/1.1 or HTTP/2 (prior knowledge): any method and path gets 200 with the
//!   [`EchoReply`] JSON, or 503 with the same body while the pod is failing;
//! - raw TCP: the server writes the JSON as one line (as soon as the client sends
//!   non-HTTP bytes, or after [`GREETING_DELAY`] of silence), then echoes every byte it
//!   receives. While failing, raw TCP connections are closed without a greeting.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use crate::error::{Error, Result};

/// How long a silent raw-TCP client waits for the greeting line.
pub const GREETING_DELAY: Duration = Duration::from_millis(50);

/// Request methods (and the HTTP/2 preface) that mark a connection as HTTP.
const HTTP_STARTS: [&[u8]; 10] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PRI * HTTP/2.0",
];

/// What an echo pod answers: who served the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReply {
    /// Cluster name.
    pub cluster: String,
    /// Zone of the pod's node.
    pub zone: String,
    /// Pod name.
    pub pod: String,
    /// The pod's version (its `version` label).
    pub version: String,
}

/// An echo server on one address and a set of ports; stopped when dropped.
#[derive(Debug)]
pub(crate) struct EchoServer {
    ip: Ipv4Addr,
    ports: Vec<u16>,
    body: Bytes,
    failing: Arc<AtomicBool>,
    listeners: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// A stopped server that will answer `reply` on `ip` at `ports`.
    pub(crate) fn new(ip: Ipv4Addr, ports: Vec<u16>, reply: &EchoReply) -> Self {
        let mut body = serde_json::to_vec(reply).expect("EchoReply serializes");
        body.push(b'\n');
        EchoServer {
            ip,
            ports,
            body: body.into(),
            failing: Arc::new(AtomicBool::new(false)),
            listeners: Vec::new(),
        }
    }

    /// Whether the server is listening.
    pub(crate) fn is_running(&self) -> bool {
        !self.listeners.is_empty()
    }

    /// Binds every port and starts serving. A no-op when already running.
    pub(crate) async fn start(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let mut bound = Vec::with_capacity(self.ports.len());
        for &port in &self.ports {
            let addr = SocketAddr::from((self.ip, port));
            let listener = TcpListener::bind(addr)
                .await
                .map_err(Error::io(format!("binding echo server to {addr}")))?;
            bound.push((addr, listener));
        }
        for (addr, listener) in bound {
            let span = tracing::debug_span!("echo", %addr);
            let task = accept_loop(listener, self.body.clone(), self.failing.clone());
            self.listeners.push(tokio::spawn(task.instrument(span)));
        }
        Ok(())
    }

    /// Stops listening and drops every open connection, like a killed process. Returns
    /// once the ports are free again.
    pub(crate) async fn stop(&mut self) {
        for task in self.listeners.drain(..) {
            task.abort();
            // Cancelled tasks have dropped their listener (and connections) when this
            // resolves; the error only says "cancelled".
            let _ = task.await;
        }
    }

    /// Makes HTTP answer 503 (and raw TCP close immediately), or back to normal.
    pub(crate) fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        for task in &self.listeners {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, body: Bytes, failing: Arc<AtomicBool>) {
    // Owned here so that aborting this task drops (and aborts) every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let span = tracing::trace_span!("connection", %peer);
                    connections.spawn(
                        serve(stream, body.clone(), failing.clone()).instrument(span),
                    );
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(stream: TcpStream, body: Bytes, failing: Arc<AtomicBool>) {
    let mut first = [0u8; 16];
    let peeked = tokio::time::timeout(GREETING_DELAY, stream.peek(&mut first)).await;
    let result = match peeked {
        Ok(Ok(0)) | Ok(Err(_)) => return,
        Ok(Ok(n)) if looks_like_http(&first[..n]) => serve_http(stream, body, failing).await,
        // Silence or non-HTTP bytes: raw TCP.
        _ => serve_tcp(stream, body, failing).await,
    };
    if let Err(error) = result {
        tracing::trace!(%error, "connection ended with an error");
    }
}

fn looks_like_http(first: &[u8]) -> bool {
    HTTP_STARTS.iter().any(|start| {
        let n = first.len().min(start.len());
        first[..n] == start[..n]
    })
}

async fn serve_http(
    stream: TcpStream,
    body: Bytes,
    failing: Arc<AtomicBool>,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let service = service_fn(move |_request: Request<hyper::body::Incoming>| {
        let status = if failing.load(Ordering::Relaxed) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()))
            .expect("static response is valid");
        async move { Ok::<_, std::convert::Infallible>(response) }
    });
    auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await
}

async fn serve_tcp(
    mut stream: TcpStream,
    body: Bytes,
    failing: Arc<AtomicBool>,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if failing.load(Ordering::Relaxed) {
        return Ok(());
    }
    stream.write_all(&body).await?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::looks_like_http;

    #[test]
    fn sniffs_http() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"PRI * HTTP/2.0\r\n"));
        assert!(looks_like_http(b"PO"));
        assert!(!looks_like_http(b"hello\n"));
        assert!(!looks_like_http(b"GETX"));
    }
}
