//! Tunnel server: terminates mTLS from peer gateways and serves HTTP/2 CONNECT streams to
//! local endpoints of exported services. Anything else is refused and counted.
//!
//! A certificate alone does not admit a peer: its cluster must also be a member in the
//! snapshot in force ([`crate::routing::RoutingTable::admits`]), checked after the handshake
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
use meridian_api::signal::Shutdown;
use meridian_identity::tls::Acceptor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span};

use super::{ERROR_HEADER, SERVICE_HEADER};
use crate::dataplane::Dataplane;
use crate::limits::{PeerSlots, Slots};
use crate::metrics::{self, Destination, Handshake, Label};
use crate::splice::{End, splice};

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;
/// The `listener` label of this module's limit metrics.
const LISTENER: &str = "tunnel";
/// Refusal reason: the peer's cluster is not a member in the snapshot in force.
pub const NOT_MEMBER: &str = "not_member";
/// Refusal reason: an open connection's cluster left the members with a new snapshot.
pub const MEMBER_REMOVED: &str = "member_removed";

/// Accepts tunnel connections until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    acceptor: Acceptor,
    dp: Arc<Dataplane>,
    shutdown: Shutdown,
) {
    info!(addr = ?listener.local_addr().ok(), "tunnel listening");
    let slots = Slots::new(dp.settings.limits.max_connections);
    let peers = Arc::new(PeerSlots::new(dp.settings.limits.max_peer_connections));
    // Unauthenticated sockets count too, so a flood of silent ones is bounded before any
    // TLS work is done.
    while let Some((tcp, remote, slot)) = slots
        .accept(&listener, LISTENER, &dp.metrics, &shutdown)
        .await
    {
        let acceptor = acceptor.clone();
        let dp = dp.clone();
        let peers = peers.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                let _slot = slot;
                connection(tcp, acceptor, dp, &peers, shutdown).await;
            }
            .instrument(info_span!("tunnel_inbound", %remote)),
        );
    }
}

async fn connection(
    tcp: TcpStream,
    acceptor: Acceptor,
    dp: Arc<Dataplane>,
    peers: &PeerSlots,
    shutdown: Shutdown,
) {
    let _ = tcp.set_nodelay(true);
    let limits = dp.settings.limits;
    // One deadline for the first byte and the whole handshake: a client that trickles
    // bytes cannot extend it.
    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    // Tell plaintext apart from TLS before the handshake, to count it by name.
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(0)) | Ok(Err(_)) => return,
        Err(_) => {
            handshake_timed_out(&dp);
            return;
        }
        Ok(Ok(_)) => {
            debug!("plaintext connection refused");
            dp.metrics.refuse("plaintext");
            return;
        }
    }
    let Ok(accepted) = tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await else {
        handshake_timed_out(&dp);
        return;
    };
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
    let admitted = dp.routing().table.admits(&peer);
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
    // Per identity, so one member (or a stolen certificate) cannot take every slot.
    let Some(_peer_slot) = peers.try_acquire(&peer.to_string()).await else {
        debug!(peer = %peer, "tunnel connection refused: peer at --max-peer-connections");
        dp.metrics
            .refuse_connection(LISTENER, "max_peer_connections");
        return;
    };
    debug!(peer = %peer, "tunnel peer accepted");
    // Ends this connection's spliced streams when the peer stops being a member.
    let (revoke, revoked) = watch::channel(false);
    let svc_dp = dp.clone();
    // The verified identity's cluster: the source of everything this connection carries.
    let source = Label::from(peer.cluster());
    let service =
        service_fn(move |req| stream(svc_dp.clone(), source.clone(), revoked.clone(), req));
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .max_concurrent_streams(limits.max_streams)
        .serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let _drain = dp.drain_guard();
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r { debug!(error = %e, "tunnel connection ended") }
                return;
            }
            () = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                return;
            }
            changed = snapshots.changed() => {
                if changed.is_ok() && dp.routing().table.admits(&peer) {
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

/// Counts a client that did not finish its TLS handshake in time (it is then closed).
fn handshake_timed_out(dp: &Dataplane) {
    debug!("tunnel handshake timed out: closing");
    dp.metrics.refuse("handshake_timeout");
    dp.metrics.timeout(LISTENER, "handshake");
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
/// missing or malformed. Whether the peer may reach it is [`RoutingTable::authorizes`]'s call.
///
/// [`RoutingTable::authorizes`]: crate::routing::RoutingTable::authorizes
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

/// The labels of a stream from cluster `source` to local endpoint `target` of
/// `hostname:port`, made of the routing table's shared values.
fn inbound(
    dp: &Dataplane,
    source: &Label,
    hostname: &str,
    port: u32,
    target: SocketAddr,
) -> Destination {
    let routing = dp.routing();
    let service = routing.services.get(hostname).map(|r| &r.service);
    let ep = service.and_then(|s| {
        s.endpoints
            .iter()
            .find(|e| e.cluster == dp.cluster && e.ip == target.ip())
    });
    Destination {
        service: service.map_or_else(|| Label::from(hostname), |s| s.label.clone()),
        port,
        source_cluster: source.clone(),
        cluster: dp.cluster_label.clone(),
        locality: ep.map_or_else(|| Label::from(""), |e| e.locality_label.clone()),
    }
}

async fn stream(
    dp: Arc<Dataplane>,
    source: Label,
    mut revoked: watch::Receiver<bool>,
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
    if !dp.routing().table.authorizes(&hostname, port, target) {
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
    let labels = inbound(&dp, &source, &hostname, port, target);
    dp.metrics
        .connections
        .get_or_create(&labels.flow(metrics::DESTINATION))
        .inc();
    let guard = dp.drain_guard();
    tokio::spawn(
        async move {
            let _guard = guard;
            match hyper::upgrade::on(&mut req).await {
                Ok(upgraded) => {
                    let idle = dp.settings.limits.idle_timeout;
                    let revoked = async move {
                        // A connection that ends normally drops the sender: not a revocation.
                        if revoked.wait_for(|r| *r).await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        spliced = splice(TokioIo::new(upgraded), upstream, idle) => {
                            let (up, down) = (spliced.sent, spliced.received);
                            for (direction, n) in [("sent", up), ("received", down)] {
                                dp.metrics
                                    .bytes
                                    .get_or_create(&labels.bytes(metrics::DESTINATION, direction))
                                    .inc_by(n);
                            }
                            match spliced.end {
                                End::Closed => debug!(up, down, "tunnel stream done"),
                                End::Idle => {
                                    debug!(up, down, "tunnel stream idle: closing");
                                    dp.metrics.timeout(LISTENER, "idle");
                                }
                                End::Error(e) => debug!(error = %e, "tunnel stream ended"),
                            }
                        }
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
