//! Tunnel server: terminates mTLS from peer gateways and serves HTTP/2 CONNECT streams to
//! local endpoints of exported services. Anything else is refused and counted.
//!
//! A certificate alone does not admit a peer: its cluster must also be a member in the
//! snapshot in force ([`crate::catalog::Catalog::admits`]), checked after the handshake
//! and again at every new snapshot, so a cluster removed from the registry loses its open
//! connections and spliced streams at the next snapshot, not when its certificate expires.

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
/// Refusal reason: the peer's cluster is not a member in the snapshot in force.
pub const NOT_MEMBER: &str = "not_member";
/// Refusal reason: an open connection's cluster left the members with a new snapshot.
pub const MEMBER_REMOVED: &str = "member_removed";

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
    // Subscribed before the check, so a snapshot installed right after it is not missed.
    let mut snapshots = dp.snapshots();
    let admitted = dp.routing().catalog.admits(&peer);
    dp.metrics
        .tunnel_handshakes
        .get_or_create(&Handshake {
            side: "server",
            peer: peer.cluster().to_owned(),
            result: if admitted { "ok" } else { NOT_MEMBER }.into(),
        })
        .inc();
    if !admitted {
        info!(peer = %peer, reason = NOT_MEMBER, "tunnel peer refused: its cluster is not a member in the current snapshot");
        dp.metrics.refuse(NOT_MEMBER);
        return;
    }
    debug!(peer = %peer, "tunnel peer accepted");
    // Ends this connection's spliced streams when the peer stops being a member.
    let (revoke, revoked) = watch::channel(false);
    let svc_dp = dp.clone();
    let service = service_fn(move |req| stream(svc_dp.clone(), revoked.clone(), req));
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let _drain = dp.drain_guard();
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r { debug!(error = %e, "tunnel connection ended") }
                return;
            }
            _ = crate::stopped(&mut shutdown) => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                return;
            }
            changed = snapshots.changed() => {
                if changed.is_ok() && dp.routing().catalog.admits(&peer) {
                    continue;
                }
                info!(peer = %peer, reason = MEMBER_REMOVED, "tunnel peer is no longer a member: closing its connection and streams");
                dp.metrics.refuse(MEMBER_REMOVED);
                let _ = revoke.send(true);
                // Dropping the connection resets its streams and closes the socket.
                return;
            }
        }
    }
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
    mut revoked: watch::Receiver<bool>,
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, std::convert::Infallible> {
    if req.method() != Method::CONNECT {
        dp.metrics.refuse("not_connect");
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "forbidden"));
    }
    let target: Option<SocketAddr> = req.uri().authority().and_then(|a| a.as_str().parse().ok());
    let service = req
        .headers()
        .get(SERVICE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit_once(':'))
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u32>().ok()?)));
    let (Some(target), Some((hostname, port))) = (target, service) else {
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
                    let revoked = async move {
                        // A connection that ends normally drops the sender: not a revocation.
                        if revoked.wait_for(|r| *r).await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        r = tokio::io::copy_bidirectional(&mut upgraded, &mut upstream) => match r {
                            Ok((up, down)) => debug!(up, down, "tunnel stream done"),
                            Err(e) => debug!(error = %e, "tunnel stream ended"),
                        },
                        _ = revoked => debug!("tunnel stream closed: the peer is no longer a member"),
                    }
                }
                Err(e) => debug!(error = %e, "tunnel upgrade failed"),
            }
        }
        .instrument(info_span!("tunnel_stream", %target)),
    );
    Ok(Response::new(Empty::new()))
}
