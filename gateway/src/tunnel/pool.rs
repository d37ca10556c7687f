//! Tunnel client: one pooled HTTP/2 connection per peer gateway, streams multiplexed on it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2::{self, SendRequest};
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meridian_identity::tls::Connector;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::{Mutex, mpsc};
use tracing::{Instrument, debug, info_span};

use super::watched::{Ended, Watched};
use super::{ERROR_HEADER, SERVICE_HEADER, TunnelError};
use crate::metrics::{Handshake, Metrics};
use crate::routing::PeerGateway;

type Sender = SendRequest<Empty<Bytes>>;
type Slot = Arc<Mutex<Option<Pooled>>>;

/// A pooled connection: its sender, and whether its transport has ended (seen before
/// the sender closes; see [`Watched`]).
#[derive(Debug)]
struct Pooled {
    sender: Sender,
    ended: Ended,
}

impl Pooled {
    fn live(&self) -> bool {
        !self.ended.get() && !self.sender.is_closed()
    }
}

/// A change of a peer gateway's liveness as the pool sees it.
#[derive(Debug, Clone)]
pub struct PeerEvent {
    /// The peer's cluster.
    pub cluster: String,
    /// Whether a connection is up.
    pub up: bool,
    /// Why it is down.
    pub error: Option<String>,
}

/// Pooled tunnel connections to peer gateways.
#[derive(Debug)]
pub struct Pool {
    // Set once the gateway has credentials; handshakes read the latest from it.
    connector: OnceLock<Connector>,
    slots: Mutex<HashMap<String, Slot>>,
    connect_timeout: Duration,
    keepalive: Duration,
    metrics: Arc<Metrics>,
    events: mpsc::UnboundedSender<PeerEvent>,
    /// Where tunnel connections run: the runtime the pool was made on (the gateway's main
    /// one), whichever task asks for one. A tunnel connection carries the streams of
    /// every connection worker (`crate::workers`); on the event loop of the worker that
    /// happened to open it, it would compete with that worker's own connections.
    runtime: Option<Handle>,
}

impl Pool {
    /// A pool without credentials yet (see [`Pool::set_connector`]); liveness changes are
    /// sent to `events`.
    pub fn new(
        connect_timeout: Duration,
        keepalive: Duration,
        metrics: Arc<Metrics>,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> Self {
        Self {
            connector: OnceLock::new(),
            slots: Mutex::default(),
            connect_timeout,
            keepalive,
            metrics,
            events,
            runtime: Handle::try_current().ok(),
        }
    }

    /// Installs the connector whose latest credentials every handshake uses. Only the
    /// first call has an effect.
    pub fn set_connector(&self, connector: Connector) {
        let _ = self.connector.set(connector);
    }

    /// Opens a stream to `target` through `peer`, for `service` (`hostname:port`).
    pub async fn open(
        &self,
        peer: &PeerGateway,
        target: SocketAddr,
        service: &str,
    ) -> Result<TokioIo<Upgraded>, TunnelError> {
        let mut sender = self.sender(peer).await?;
        let peer_err = |e: hyper::Error| TunnelError::Peer {
            peer: peer.cluster.clone(),
            reason: e.to_string(),
        };
        sender.ready().await.map_err(peer_err)?;
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(target.to_string())
            .header(SERVICE_HEADER, service)
            .body(Empty::new())
            .expect("valid CONNECT request");
        let resp = sender.send_request(req).await.map_err(peer_err)?;
        match resp.status() {
            StatusCode::OK => hyper::upgrade::on(resp)
                .await
                .map(TokioIo::new)
                .map_err(peer_err),
            StatusCode::SERVICE_UNAVAILABLE
                if resp
                    .headers()
                    .get(ERROR_HEADER)
                    .is_some_and(|v| v == "connect") =>
            {
                Err(TunnelError::TargetConnect)
            }
            status => Err(TunnelError::Refused(status)),
        }
    }

    /// Makes sure a connection to `peer` is up (connecting if needed).
    pub async fn probe(&self, peer: &PeerGateway) -> Result<(), TunnelError> {
        self.sender(peer).await.map(|_| ())
    }

    /// Whether a live connection to `cluster` is pooled.
    pub async fn is_connected(&self, cluster: &str) -> bool {
        let slot = self.slots.lock().await.get(cluster).cloned();
        match slot {
            Some(slot) => slot.lock().await.as_ref().is_some_and(Pooled::live),
            None => false,
        }
    }

    async fn sender(&self, peer: &PeerGateway) -> Result<Sender, TunnelError> {
        let slot = self
            .slots
            .lock()
            .await
            .entry(peer.cluster.clone())
            .or_default()
            .clone();
        // One connection attempt per peer at a time; other peers are not held up.
        let mut current = slot.lock().await;
        if let Some(p) = current.as_ref().filter(|p| p.live()) {
            return Ok(p.sender.clone());
        }
        *current = None;
        let connected = match &self.runtime {
            Some(runtime) => runtime
                .spawn(self.dialer().connect(peer.clone()))
                .await
                .unwrap_or_else(|e| {
                    Err(TunnelError::Peer {
                        peer: peer.cluster.clone(),
                        reason: format!("connecting: {e}"),
                    })
                }),
            None => self.dialer().connect(peer.clone()).await,
        };
        match connected {
            Ok(p) => {
                let s = p.sender.clone();
                *current = Some(p);
                let _ = self.events.send(PeerEvent {
                    cluster: peer.cluster.clone(),
                    up: true,
                    error: None,
                });
                Ok(s)
            }
            Err(e) => {
                let _ = self.events.send(PeerEvent {
                    cluster: peer.cluster.clone(),
                    up: false,
                    error: Some(e.to_string()),
                });
                Err(e)
            }
        }
    }

    /// What opening a tunnel connection needs, owned (it may run on another runtime).
    fn dialer(&self) -> Dialer {
        Dialer {
            connector: self.connector.get().cloned(),
            connect_timeout: self.connect_timeout,
            keepalive: self.keepalive,
            metrics: self.metrics.clone(),
            events: self.events.clone(),
        }
    }

    /// Drops every pooled connection (shutdown).
    pub async fn clear(&self) {
        let slots: Vec<Slot> = self.slots.lock().await.drain().map(|(_, s)| s).collect();
        for s in slots {
            if s.lock().await.take().is_some() {
                debug!("tunnel connection dropped on shutdown");
            }
        }
    }
}

/// Opens tunnel connections: the parts of [`Pool`] that needs, owned.
struct Dialer {
    connector: Option<Connector>,
    connect_timeout: Duration,
    keepalive: Duration,
    metrics: Arc<Metrics>,
    events: mpsc::UnboundedSender<PeerEvent>,
}

impl Dialer {
    async fn connect(self, peer: PeerGateway) -> Result<Pooled, TunnelError> {
        let err = |reason: String| TunnelError::Peer {
            peer: peer.cluster.clone(),
            reason,
        };
        let connector = self
            .connector
            .as_ref()
            .ok_or_else(|| err("no credentials yet".to_owned()))?;
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&peer.address))
            .await
            .map_err(|_| err(format!("connect to {} timed out", peer.address)))?
            .map_err(|e| err(format!("connect to {}: {e}", peer.address)))?;
        let _ = tcp.set_nodelay(true);
        let handshake =
            tokio::time::timeout(self.connect_timeout, connector.connect(tcp, &peer.identity))
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("TLS handshake timed out")));
        let result = match &handshake {
            Ok(_) => "ok".to_owned(),
            Err(e) => meridian_identity::verifier::failure_reason(e).to_owned(),
        };
        self.metrics
            .tunnel_handshakes
            .get_or_create(&Handshake {
                side: "client",
                peer: peer.cluster.clone(),
                result,
            })
            .inc();
        let tls = handshake.map_err(|e| err(format!("TLS handshake: {e}")))?;
        let (tls, ended) = Watched::new(tls);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(self.keepalive)
            .keep_alive_timeout(self.keepalive)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| err(format!("HTTP/2 handshake: {e}")))?;
        let events = self.events.clone();
        let cluster = peer.cluster.clone();
        tokio::spawn(
            async move {
                let error = match conn.await {
                    Ok(()) => "connection closed".to_owned(),
                    Err(e) => e.to_string(),
                };
                debug!(%error, "tunnel connection ended");
                let _ = events.send(PeerEvent {
                    cluster,
                    up: false,
                    error: Some(error),
                });
            }
            .instrument(info_span!("tunnel_connection", peer = %peer.cluster)),
        );
        debug!(peer = %peer.cluster, address = %peer.address, "tunnel connected");
        Ok(Pooled { sender, ended })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::Response;
    use hyper::service::service_fn;
    use meridian_identity::Identity;
    use meridian_identity::testing::TestCa;
    use meridian_identity::tls::watch;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    use super::*;

    const TD: &str = "meridian.test";

    /// A peer gateway answering every CONNECT with 200 and holding the stream open, until
    /// `die` fires: then its connection is dropped at once (its TCP closed), as when the
    /// process is killed.
    async fn peer(ca: &TestCa, die: oneshot::Receiver<()>) -> PeerGateway {
        let (_store, creds) = watch(ca.issue("west").credentials()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let acceptor = creds.acceptor();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (tls, _) = acceptor.accept(tcp).await.unwrap();
            let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let upgrade = hyper::upgrade::on(req);
                tokio::spawn(async move {
                    let _held = upgrade.await;
                    std::future::pending::<()>().await
                });
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc);
            tokio::select! {
                _ = conn => {}
                _ = die => {}
            }
        });
        PeerGateway {
            cluster: "west".into(),
            address,
            identity: Identity::gateway(TD, "west").unwrap(),
        }
    }

    /// The soak's 1-in-27183 failed GET: a request whose tunnel stream failed because the
    /// peer's connection died asked the pool whether the peer was still connected, and the
    /// pool could still say yes (hyper closes the sender a task hop or two after failing
    /// the streams, on another worker thread), so the retries stayed on the dead peer's
    /// endpoints and ran out (503). A race, so tried 100 times on two worker threads:
    /// without the transport watch about one try in three saw the dead connection as
    /// live (99 of 300 measured); with it, none may.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_failing_with_its_connection_finds_the_peer_disconnected() {
        let ca = TestCa::new(TD);
        let mut stale = 0;
        for _ in 0..100 {
            if still_connected_after_failure(&ca).await {
                stale += 1;
            }
        }
        assert_eq!(
            stale, 0,
            "after its stream failed with the connection, the pool reported the dead connection as live"
        );
    }

    /// Opens a stream through a fresh peer, kills the peer, reads the stream until it
    /// fails: whether the pool then still reports the peer connected.
    async fn still_connected_after_failure(ca: &TestCa) -> bool {
        let (die, dead) = oneshot::channel();
        let west = peer(ca, dead).await;
        let (_store, east) = watch(ca.issue("east").credentials()).unwrap();
        let (events, _events) = mpsc::unbounded_channel();
        let pool = Pool::new(
            Duration::from_secs(5),
            Duration::from_secs(30),
            Arc::new(Metrics::default()),
            events,
        );
        pool.set_connector(east.connector());
        let target = SocketAddr::from(([127, 0, 0, 1], 9));
        let mut stream = pool
            .open(&west, target, "api.default.global:80")
            .await
            .unwrap();
        assert!(pool.is_connected("west").await);

        die.send(()).unwrap();
        let mut buf = [0u8; 16];
        let read = stream.read(&mut buf).await;
        assert!(
            !matches!(read, Ok(n) if n > 0),
            "the stream ended with its connection: {read:?}"
        );
        pool.is_connected("west").await
    }
}
