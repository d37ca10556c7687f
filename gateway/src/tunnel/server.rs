//! Tunnel server: terminates mTLS from peer gateways and serves HTTP/2 CONNECT streams to
//! local endpoints of exported services. Anything else is refused and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meridian_identity::tls::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{ERROR_HEADER, SERVICE_HEADER};
use crate::dataplane::Dataplane;
use crate::metrics::Handshake;

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;
/// How long a new connection may take to start and finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts tunnel connections until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    acceptor: Acceptor,
    dp: Arc<Dataplane>,
    mut shutdown: watch::Receiver<bool>,
) {
    info!(addr = ?listener.local_addr().ok(), "tunnel listening");
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "tunnel accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => break,
        };
        let acceptor = acceptor.clone();
        let dp = dp.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            connection(tcp, acceptor, dp, shutdown)
                .instrument(info_span!("tunnel_inbound", %remote)),
        );
    }
}

async fn connection(
    tcp: TcpStream,
    acceptor: Acceptor,
    dp: Arc<Dataplane>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    // Tell plaintext apart from TLS before the handshake, to count it by name.
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(0)) | Ok(Err(_)) => return,
        Err(_) => {
            dp.metrics.refuse("handshake_timeout");
            return;
        }
        Ok(Ok(_)) => {
            debug!("plaintext connection refused");
            dp.metrics.refuse("plaintext");
            return;
        }
    }
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("TLS handshake timed out")));
    let (tls, peer) = match accepted {
        Ok(x) => x,
        Err(e) => {
            let reason = meridian_identity::verifier::failure_reason(&e);
            debug!(error = %e, reason, "tunnel handshake refused");
            dp.metrics.refuse(reason);
            dp.metrics
                .tunnel_handshakes
                .get_or_create(&Handshake {
                    side: "server",
                    peer: "unknown".into(),
                    result: reason.into(),
                })
                .inc();
            return;
        }
    };
    dp.metrics
        .tunnel_handshakes
        .get_or_create(&Handshake {
            side: "server",
            peer: peer.cluster().to_owned(),
            result: "ok".into(),
        })
        .inc();
    debug!(peer = %peer, "tunnel peer accepted");
    let svc_dp = dp.clone();
    let service = service_fn(move |req| stream(svc_dp.clone(), req));
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let _drain = dp.drain_guard();
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r { debug!(error = %e, "tunnel connection ended") },
        _ = crate::stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// What a CONNECT stream asks for: its target endpoint and the service port it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    /// The `:authority`, an `ip:port`.
    pub target: SocketAddr,
    /// The global service named by the [`SERVICE_HEADER`].
    pub hostname: String,
    /// Its service port.
    pub port: u32,
}

/// Reads a stream's target and service from the peer's request; `None` when either is
/// missing or malformed. Whether the peer may reach it is [`Catalog::authorizes`]'s call.
///
/// [`Catalog::authorizes`]: crate::catalog::Catalog::authorizes
pub fn requested<B>(req: &Request<B>) -> Option<Requested> {
    let target = req.uri().authority()?.as_str().parse().ok()?;
    let (hostname, port) = req
        .headers()
        .get(SERVICE_HEADER)?
        .to_str()
        .ok()?
        .rsplit_once(':')?;
    Some(Requested {
        target,
        hostname: hostname.to_owned(),
        port: port.parse().ok()?,
    })
}

fn reply(status: StatusCode, error: &'static str) -> Response<Empty<Bytes>> {
    Response::builder()
        .status(status)
        .header(ERROR_HEADER, error)
        .body(Empty::new())
        .expect("valid response")
}

async fn stream(
    dp: Arc<Dataplane>,
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, std::convert::Infallible> {
    if req.method() != Method::CONNECT {
        dp.metrics.refuse("not_connect");
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "forbidden"));
    }
    let Some(Requested {
        target,
        hostname,
        port,
    }) = requested(&req)
    else {
        dp.metrics.refuse("target");
        return Ok(reply(StatusCode::FORBIDDEN, "forbidden"));
    };
    if !dp.routing().catalog.authorizes(&hostname, port, target) {
        debug!(%target, %hostname, port, "tunnel target refused: not an exported local endpoint");
        dp.metrics.refuse("target");
        return Ok(reply(StatusCode::FORBIDDEN, "forbidden"));
    }
    let upstream = match dp.settings.connect_endpoint(target).await {
        Ok(s) => s,
        Err(e) => {
            debug!(%target, error = %e, "tunnel target connect failed");
            return Ok(reply(StatusCode::SERVICE_UNAVAILABLE, "connect"));
        }
    };
    dp.metrics.tunnel_streams.inc();
    let guard = dp.drain_guard();
    tokio::spawn(
        async move {
            let _guard = guard;
            match hyper::upgrade::on(&mut req).await {
                Ok(upgraded) => {
                    let mut upgraded = TokioIo::new(upgraded);
                    let mut upstream = upstream;
                    match tokio::io::copy_bidirectional(&mut upgraded, &mut upstream).await {
                        Ok((up, down)) => debug!(up, down, "tunnel stream done"),
                        Err(e) => debug!(error = %e, "tunnel stream ended"),
                    }
                }
                Err(e) => debug!(error = %e, "tunnel upgrade failed"),
            }
        }
        .instrument(info_span!("tunnel_stream", %target)),
    );
    Ok(Response::new(Empty::new()))
}
