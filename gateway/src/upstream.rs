//! Upstream HTTP connection reuse: idle HTTP/1.1 keep-alive connections and one shared
//! HTTP/2 connection per endpoint, so that a request does not pay for a TCP connect (local
//! endpoint) or a CONNECT round trip to the peer gateway (remote endpoint) when an earlier
//! request left a usable connection behind.
//!
//! Connections are keyed by the endpoint as the gateway dials it ([`Key`]): its cluster
//! (this one, or the peer whose gateway dials it), its address and port, the global
//! service port a tunnel stream was authorized for, and HTTP/1.1 or HTTP/2 prior
//! knowledge. Choosing the endpoint stays with the caller (locality, routes, retries
//! onto the next choice, outlier detection); this module only answers "a connection to
//! exactly this endpoint", reused or new.
//!
//! - HTTP/1.1: a connection goes back to the pool once its response body has been read
//!   to the end (unless hyper will not reuse it, e.g. after `Connection: close`); at most
//!   [`Settings::max_idle`] idle connections per key, each dropped after
//!   [`Settings::idle_timeout`] unused. The most recently used one is taken first, so
//!   surplus connections age out.
//! - HTTP/2: one shared connection per key; every request opens a stream on it. It is
//!   replaced when it is closed (including after a GOAWAY) and dropped after
//!   `idle_timeout` without a new request. Opening it is serialized per key, so a burst
//!   of requests opens one connection, not one each; if that attempt fails, the requests
//!   that waited for it fail with its error at once (each then moves on to its next
//!   choice) rather than dialling again one after another.
//! - Keys of endpoints that leave the routing table or turn unhealthy (not ready, ejected, peer
//!   down) are dropped at every routing rebuild ([`Upstreams::retain`]), and connections
//!   finishing a request for such a key are not kept. [`Upstreams::clear`] drops
//!   everything on shutdown.
//! - `idle_timeout == 0` turns reuse off: every request gets a new connection that closes
//!   after its response, as before pooling.
//!
//! A request handed back by hyper (`TrySendError::take_message`) was never written: the
//! caller may send it again on a fresh connection to the same endpoint without counting
//! an error against that endpoint (see `outbound`).
//!
//! # Why hand-written, not hyper-util's legacy `Client`
//!
//! `hyper_util::client::legacy::Client` with a custom connector was considered first. Its
//! pool is keyed by the request URI's scheme and authority, and that authority is also
//! what goes upstream (the HTTP/2 `:authority`, and `Host` unless disabled). Keying by
//! "endpoint 10.0.0.7:8080 in cluster west, via west's gateway, for service
//! reviews.default.global:9080" would mean encoding all of it into a synthetic authority
//! and rewriting the real one back afterwards, on every request and in both protocols.
//! Beyond that hack it has no way to drop the connections of one key (an ejected
//! endpoint, a peer that went down), erases the dial error into its own error type (the
//! data plane needs to know whether a failure blames the endpoint or the peer gateway),
//! retries canceled requests internally (hiding whether a request went out on a reused
//! connection, which the metrics count) and wants one client per protocol.
//! `hyper_util::client::pool` (feature `client-pool`) is a set of unnameable, still
//! evolving building blocks without idle timeouts or per-key limits. What is needed here
//! is small: a map of `hyper::client::conn` senders with an idle list, a shared HTTP/2
//! sender and a reaper.

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sync_wrapper::SyncWrapper;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span};

use crate::dial::{DialError, Io};
use crate::workers;

/// How long a connection just returned to the pool may take to become ready for its
/// next request. hyper gets there as soon as it has processed the end of the previous
/// exchange, normally within microseconds; this only bounds the odd case (a server that
/// answered before reading the whole request body) before a new connection is opened.
const READY_WAIT: Duration = Duration::from_millis(500);

/// PING interval (and timeout) on shared HTTP/2 connections. A shared connection takes
/// every request to its endpoint and is never idle long enough to be reaped, so an
/// endpoint that vanishes without a reset (a partitioned node) must be detected by the
/// connection itself; without pings its requests would hang until TCP gives up.
const H2_KEEPALIVE: Duration = Duration::from_secs(10);

/// Idle HTTP/1.1 connections kept per peer gateway across all its endpoints. Each is an
/// open CONNECT stream on the one tunnel connection to that peer, whose server admits a
/// bounded number of concurrent streams (hyper's default: 200); idle ones must leave
/// room for new streams, or new requests to that peer would queue behind them.
const MAX_IDLE_PER_PEER: usize = 64;

/// The body of a request sent upstream.
pub type RequestBody = BoxBody<Bytes, hyper::Error>;

/// Reuse tunables.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long an unused connection is kept; zero turns reuse off.
    pub idle_timeout: Duration,
    /// Idle HTTP/1.1 connections kept per key.
    pub max_idle: usize,
}

impl Settings {
    /// Whether connections are reused at all.
    pub fn reuse(&self) -> bool {
        !self.idle_timeout.is_zero()
    }
}

/// An endpoint as the gateway dials it: what makes two connections interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The endpoint's cluster: this gateway's own (dialled directly) or a peer's (dialled
    /// by that peer's gateway through the tunnel). Pod IPs may repeat across clusters.
    /// Shared, since a key is made for every request.
    pub cluster: Arc<str>,
    /// The endpoint's `ip:port` as the snapshot names it.
    pub target: SocketAddr,
    /// For a remote endpoint, the global service port (`hostname:port`) the tunnel stream
    /// was authorized for, so a stream is only ever reused for what the peer allowed.
    /// `None` for a local endpoint.
    pub tunnel_service: Option<String>,
    /// HTTP/2 with prior knowledge; HTTP/1.1 otherwise.
    pub http2: bool,
}

enum Sender {
    Http1(http1::SendRequest<RequestBody>, Driver),
    Http2(http2::SendRequest<RequestBody>),
}

type Http1Connection = http1::Connection<TokioIo<Box<dyn Io>>, RequestBody>;

/// An HTTP/1.1 connection's I/O, driven by the task that uses the connection: the
/// request's, while it waits for the response head, then the client connection's, while
/// it reads the body (through [`UpstreamBody`]). An idle connection is not driven; taking
/// it from the pool first lets it take in what arrived meanwhile (a close, the end of its
/// last exchange).
///
/// Why not a task per connection, as hyper's examples spawn: every request then crosses
/// to that task and back, two wake-ups per request, often onto the other worker thread.
/// Profiles of the gateway under load showed the cost in scheduling and in the
/// request's tail latency (docs/benchmarks.md). HTTP/2 connections are shared by many
/// requests at once and keep their own task.
struct Driver {
    // SyncWrapper: the connection is `Send`, not `Sync`, and response bodies must be
    // both; only `&mut` access is ever needed. `None` once it ended: dropping it at once
    // fails a request still queued on it (hyper hands the request back), where keeping
    // it would leave that request waiting forever.
    conn: Option<SyncWrapper<Pin<Box<Http1Connection>>>>,
    span: tracing::Span,
}

impl Driver {
    /// Makes whatever progress the connection can now (reading, writing, noticing a
    /// close); nothing once it has ended.
    fn poll(&mut self, cx: &mut Context<'_>) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        if let Poll::Ready(result) = conn.get_mut().as_mut().poll(cx) {
            self.conn = None;
            if let Err(e) = result {
                let _span = self.span.enter();
                debug!(error = %e, "upstream connection ended");
            }
        }
    }
}

/// A connection to one endpoint, ready for one request.
pub struct Conn {
    key: Key,
    sender: Sender,
    id: u64,
    reused: bool,
}

impl Conn {
    /// Whether it carried an earlier request (taken from the pool rather than opened).
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Identifies the underlying connection (for [`Upstreams::reconnect`]).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("key", &self.key)
            .field("id", &self.id)
            .field("reused", &self.reused)
            .finish()
    }
}

/// A request that failed on a connection.
#[derive(Debug)]
pub struct SendError {
    /// What went wrong.
    pub error: hyper::Error,
    /// The request, when hyper gave it back because it was never written (the
    /// connection closed first): it can be sent again as is.
    pub request: Option<Request<RequestBody>>,
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    driver: Driver,
    id: u64,
    since: Instant,
}

struct Shared {
    id: u64,
    sender: http2::SendRequest<RequestBody>,
    last_used: Instant,
}

/// One HTTP/2 key's shared connection; its lock serializes opening it.
type Slot = Arc<Mutex<SlotState>>;

#[derive(Default)]
struct SlotState {
    shared: Option<Shared>,
    /// The last failed attempt to open it: requests that waited for that attempt fail
    /// with it at once instead of dialling again one after another.
    failed: Option<(Instant, DialError)>,
}

#[derive(Default)]
struct State {
    // Per event loop as well as per key: a connection is only reused on the event loop
    // (connection worker) whose I/O driver it is registered with, as Envoy keeps a pool
    // per worker (see `crate::workers`).
    idle: HashMap<(Key, usize), Vec<Idle>>,
    shared: HashMap<(Key, usize), Slot>,
    // Keys whose connections may be kept: endpoints in the routing table and healthy,
    // with how many (service, port) routes name each, so that an incremental update can
    // tell when the last one went.
    live: HashMap<Key, usize>,
    closed: bool,
}

/// Reusable upstream HTTP connections.
pub struct Upstreams {
    settings: Settings,
    state: Arc<Mutex<State>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Upstreams {
    /// An empty pool; nothing is kept until [`Upstreams::retain`] names the live keys.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            state: Arc::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// The tunables in force.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// A connection to `key`: an idle or shared one when the pool has one, else a new one
    /// over the stream `dial` opens. A failed HTTP handshake on a new stream counts as the
    /// endpoint failing, like a refused connection.
    pub async fn connect<F, Fut>(&self, key: &Key, dial: F) -> Result<Conn, DialError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Box<dyn Io>, DialError>>,
    {
        if !self.settings.reuse() {
            return Box::pin(self.open(key, dial)).await;
        }
        if !key.http2 {
            if let Some(idle) = self.take_idle(key).await {
                return Ok(Conn {
                    key: key.clone(),
                    sender: Sender::Http1(idle.sender, idle.driver),
                    id: idle.id,
                    reused: true,
                });
            }
            return Box::pin(self.open(key, dial)).await;
        }
        self.shared(key, None, dial).await
    }

    /// A fresh connection to `key`, after connection `stale` failed a request before it
    /// was sent. For HTTP/2 this is the key's shared connection if another request has
    /// already replaced `stale`, else a new one that replaces it.
    pub async fn reconnect<F, Fut>(&self, key: &Key, stale: u64, dial: F) -> Result<Conn, DialError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Box<dyn Io>, DialError>>,
    {
        if key.http2 && self.settings.reuse() {
            self.shared(key, Some(stale), dial).await
        } else {
            Box::pin(self.open(key, dial)).await
        }
    }

    /// Sends `req` on `conn`. An HTTP/1.1 connection returns to the pool once the
    /// response body has been read to its end.
    pub async fn send(
        &self,
        conn: Conn,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let err = |mut e: hyper::client::conn::TrySendError<Request<RequestBody>>| SendError {
            request: e.take_message(),
            error: e.into_error(),
        };
        match conn.sender {
            Sender::Http2(mut sender) => {
                let resp = sender.try_send_request(req).await.map_err(err)?;
                Ok(resp.map(|inner| UpstreamBody {
                    inner,
                    driver: None,
                    checkin: None,
                }))
            }
            Sender::Http1(mut sender, mut driver) => {
                let resp = {
                    let mut response = std::pin::pin!(sender.try_send_request(req));
                    poll_fn(|cx| {
                        driver.poll(cx);
                        response.as_mut().poll(cx)
                    })
                    .await
                    .map_err(err)?
                };
                let keep = self.settings.reuse() && self.settings.max_idle > 0;
                let checkin = keep.then(|| Checkin {
                    key: conn.key,
                    worker: workers::current(),
                    id: conn.id,
                    sender,
                    state: Arc::downgrade(&self.state),
                    settings: self.settings,
                });
                Ok(resp.map(|inner| UpstreamBody {
                    inner,
                    driver: Some(driver),
                    checkin,
                }))
            }
        }
    }

    /// Keeps connections only for `live` keys (endpoints in the routing table and healthy) and
    /// drops the others; connections in use finish their request and are not kept.
    pub async fn retain(&self, live: HashSet<Key>) {
        self.retain_counted(live.into_iter().map(|k| (k, 1)).collect())
            .await;
    }

    /// [`Self::retain`] with the number of routes naming each live key.
    pub(crate) async fn retain_counted(&self, live: HashMap<Key, usize>) {
        let mut st = self.state.lock().await;
        st.idle.retain(|(k, _), _| live.contains_key(k));
        // Dropping a slot drops its sender; a request opening it right now holds the
        // slot until it is done and then drops it too. Streams in flight carry on.
        st.shared.retain(|(k, _), _| live.contains_key(k));
        st.live = live;
    }

    /// Updates the live keys after some services' routes changed: `added` are the new
    /// routes' keys, `removed` the old ones' (each once per route naming it). Connections
    /// of a key no route names any more are dropped, as [`Self::retain`] would.
    pub(crate) async fn update_live(&self, removed: Vec<Key>, added: Vec<Key>) {
        let mut st = self.state.lock().await;
        if st.closed {
            return;
        }
        // Added first: a key both removed and added never drops to zero on the way.
        for k in added {
            *st.live.entry(k).or_default() += 1;
        }
        for k in removed {
            let gone = st.live.get_mut(&k).is_some_and(|n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
            if gone {
                st.live.remove(&k);
                st.idle.retain(|(idle, _), _| *idle != k);
                st.shared.retain(|(shared, _), _| *shared != k);
            }
        }
    }

    /// Drops connections unused for longer than the idle timeout, and closed ones.
    pub async fn reap(&self) {
        let timeout = self.settings.idle_timeout;
        let now = Instant::now();
        let slots: Vec<Slot> = {
            let mut st = self.state.lock().await;
            st.idle.retain(|_, list| {
                list.retain(|i| !i.sender.is_closed() && now.duration_since(i.since) < timeout);
                !list.is_empty()
            });
            st.shared.values().cloned().collect()
        };
        for slot in slots {
            // A slot being opened is in use, not idle.
            if let Ok(mut slot) = slot.try_lock()
                && slot.shared.as_ref().is_some_and(|s| {
                    s.sender.is_closed() || now.duration_since(s.last_used) >= timeout
                })
            {
                slot.shared = None;
            }
        }
    }

    /// Drops every pooled connection and keeps none from now on (shutdown).
    pub async fn clear(&self) {
        let mut st = self.state.lock().await;
        st.closed = true;
        st.live.clear();
        let idle: usize = st.idle.drain().map(|(_, l)| l.len()).sum();
        let shared = st.shared.drain().count();
        debug!(idle, shared, "upstream connections dropped on shutdown");
    }

    /// The most recently returned idle connection of `key` that is still usable. It is
    /// driven first, to take in what arrived while it was idle (a close by the server,
    /// the end of its last exchange); one that is still finishing that exchange is given
    /// [`READY_WAIT`] to become ready.
    async fn take_idle(&self, key: &Key) -> Option<Idle> {
        loop {
            let mut idle = {
                let now = Instant::now();
                let mut st = self.state.lock().await;
                let slot = (key.clone(), workers::current());
                let list = st.idle.get_mut(&slot)?;
                let mut found = None;
                while let Some(idle) = list.pop() {
                    if now.duration_since(idle.since) < self.settings.idle_timeout {
                        found = Some(idle);
                        break;
                    }
                }
                if list.is_empty() {
                    st.idle.remove(&slot);
                }
                found?
            };
            let ready = poll_fn(|cx| {
                idle.driver.poll(cx);
                Poll::Ready(idle.sender.is_ready())
            })
            .await;
            if ready {
                return Some(idle);
            }
            if idle.sender.is_closed() {
                continue;
            }
            let became_ready = tokio::time::timeout(
                READY_WAIT,
                poll_fn(|cx| {
                    idle.driver.poll(cx);
                    idle.sender.poll_ready(cx)
                }),
            )
            .await;
            if matches!(became_ready, Ok(Ok(()))) {
                return Some(idle);
            }
        }
    }

    /// The shared HTTP/2 connection of `key`, opened if there is none (or only `stale`).
    async fn shared<F, Fut>(
        &self,
        key: &Key,
        stale: Option<u64>,
        dial: F,
    ) -> Result<Conn, DialError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Box<dyn Io>, DialError>>,
    {
        let slot = {
            let mut st = self.state.lock().await;
            if st.closed || !st.live.contains_key(key) {
                None
            } else {
                Some(
                    st.shared
                        .entry((key.clone(), workers::current()))
                        .or_default()
                        .clone(),
                )
            }
        };
        let Some(slot) = slot else {
            // Not to be kept: a connection for this request only.
            return Box::pin(self.open(key, dial)).await;
        };
        let waiting_since = Instant::now();
        let mut slot = slot.lock().await;
        // A stream error on the shared connection (a reset stream) does not make the
        // connection stale: only replace it when it is closed or no longer takes streams.
        if let Some(s) = slot
            .shared
            .as_mut()
            .filter(|s| !s.sender.is_closed() && (Some(s.id) != stale || s.sender.is_ready()))
        {
            s.last_used = Instant::now();
            return Ok(Conn {
                key: key.clone(),
                sender: Sender::Http2(s.sender.clone()),
                id: s.id,
                reused: true,
            });
        }
        // The attempt this request waited for failed: share its outcome.
        if let Some((at, e)) = &slot.failed
            && *at >= waiting_since
        {
            return Err(e.clone());
        }
        slot.shared = None;
        match Box::pin(self.open(key, dial)).await {
            Ok(conn) => {
                if let Sender::Http2(sender) = &conn.sender {
                    slot.shared = Some(Shared {
                        id: conn.id,
                        sender: sender.clone(),
                        last_used: Instant::now(),
                    });
                }
                slot.failed = None;
                Ok(conn)
            }
            Err(e) => {
                slot.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// A new connection. Callers box this future: with the dial and the handshake inside
    /// it is several kilobytes, and every request's future would otherwise carry (and
    /// copy on each `.await`) that much, though most requests reuse a connection.
    async fn open<F, Fut>(&self, key: &Key, dial: F) -> Result<Conn, DialError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Box<dyn Io>, DialError>>,
    {
        let io = TokioIo::new(dial().await?);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let span =
            info_span!("upstream_connection", cluster = %key.cluster, target = %key.target, id);
        let handshake = |e: hyper::Error| {
            DialError::Endpoint(format!("HTTP handshake with {}: {e}", key.target))
        };
        let sender = if key.http2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_KEEPALIVE)
                .keep_alive_timeout(H2_KEEPALIVE)
                .keep_alive_while_idle(true)
                .handshake(io)
                .await
                .map_err(handshake)?;
            drive(conn, "upstream h2 connection ended", span);
            Sender::Http2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(handshake)?;
            Sender::Http1(
                sender,
                Driver {
                    conn: Some(SyncWrapper::new(Box::pin(conn))),
                    span,
                },
            )
        };
        Ok(Conn {
            key: key.clone(),
            sender,
            id,
            reused: false,
        })
    }
}

/// Returns an HTTP/1.1 connection to the pool once its exchange is complete (with its
/// [`Driver`], which the response body holds until then).
struct Checkin {
    key: Key,
    /// The event loop the connection is registered with (the request's).
    worker: usize,
    id: u64,
    sender: http1::SendRequest<RequestBody>,
    // Weak: a response outliving the data plane must not keep its pool alive.
    state: Weak<Mutex<State>>,
    settings: Settings,
}

impl Checkin {
    fn run(self, driver: Driver) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        // Returned at once, so that the client's next request finds it: hyper may still
        // be finishing the exchange, which `take_idle` waits for. Only a contended lock
        // defers the return to a task.
        if let Ok(mut st) = state.try_lock() {
            self.put(&mut st, driver);
            return;
        }
        // A body may be dropped while the runtime shuts down; the connection just
        // closes then.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let id = self.id;
        rt.spawn(
            async move {
                let mut st = state.lock().await;
                self.put(&mut st, driver);
            }
            .instrument(info_span!("upstream_checkin", id)),
        );
    }

    fn put(self, st: &mut State, driver: Driver) {
        if st.closed
            || driver.conn.is_none()
            || !st.live.contains_key(&self.key)
            || self.sender.is_closed()
        {
            return;
        }
        if self.key.tunnel_service.is_some() {
            let cluster = &self.key.cluster;
            let per_peer: usize = st
                .idle
                .iter()
                .filter(|((k, _), _)| &k.cluster == cluster)
                .map(|(_, l)| l.len())
                .sum();
            if per_peer >= MAX_IDLE_PER_PEER {
                return;
            }
        }
        let list = st.idle.entry((self.key, self.worker)).or_default();
        if list.len() < self.settings.max_idle {
            list.push(Idle {
                sender: self.sender,
                driver,
                id: self.id,
                since: Instant::now(),
            });
        }
    }
}

/// The body of an upstream response. For a reusable HTTP/1.1 connection it returns the
/// connection to the pool when it reaches its end; dropped earlier, the connection
/// closes (hyper cannot reuse a connection with an unread response on it).
pub struct UpstreamBody {
    inner: Incoming,
    /// The HTTP/1.1 connection it arrives on, driven while the body is read.
    driver: Option<Driver>,
    checkin: Option<Checkin>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let (Some(c), Some(driver)) = (self.checkin.take(), self.driver.take()) {
            c.run(driver);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(driver) = &mut this.driver {
            driver.poll(cx);
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            Some(Err(_)) => this.checkin = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Servers stop polling a body that says it has ended (or never poll an empty one).
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}

/// Drives an upstream connection in its own task, inside `span`, until it ends; an error
/// ending it is logged at debug with the message `ended`.
fn drive(
    conn: impl Future<Output = Result<(), hyper::Error>> + Send + 'static,
    ended: &'static str,
    span: tracing::Span,
) {
    tokio::spawn(
        async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "{ended}");
            }
        }
        .instrument(span),
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::{BodyExt, Empty};
    use hyper::service::service_fn;
    use hyper_util::server::conn::auto;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A loopback server that serves each connection it accepts with `serve`, in a task
    /// of its own; counts accepted connections.
    async fn accepting<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(tcp));
            }
        });
        (addr, accepted)
    }

    /// An HTTP server on loopback answering `ok`; counts accepted connections.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        accepting(|tcp| async move {
            let svc = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                    Bytes::from_static(b"ok"),
                )))
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        })
        .await
    }

    fn key(target: SocketAddr, http2: bool) -> Key {
        Key {
            cluster: "east".into(),
            target,
            tunnel_service: None,
            http2,
        }
    }

    async fn dial(addr: SocketAddr) -> Result<Box<dyn Io>, DialError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| DialError::Endpoint(e.to_string()))?;
        Ok(Box::new(tcp))
    }

    fn get() -> Request<RequestBody> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, "svc")
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap()
    }

    /// Sends one GET on a connection from the pool and reads the body to its end.
    async fn roundtrip(pool: &Upstreams, key: &Key) -> bool {
        let conn = pool.connect(key, || dial(key.target)).await.unwrap();
        let reused = conn.reused();
        let resp = pool.send(conn, get()).await.unwrap();
        assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok");
        reused
    }

    async fn idle(pool: &Upstreams, key: &Key) -> usize {
        pool.state
            .lock()
            .await
            .idle
            .get(&(key.clone(), workers::current()))
            .map_or(0, Vec::len)
    }

    fn settings(max_idle: usize) -> Settings {
        Settings {
            idle_timeout: Duration::from_secs(60),
            max_idle,
        }
    }

    #[tokio::test]
    async fn http1_keeps_at_most_max_idle_and_drops_evicted_keys() {
        let (addr, accepted) = server().await;
        let pool = Upstreams::new(settings(2));
        let k = key(addr, false);
        pool.retain([k.clone()].into()).await;
        assert!(!roundtrip(&pool, &k).await, "nothing to reuse yet");
        assert!(roundtrip(&pool, &k).await);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // Three exchanges at once need three connections; two stay idle afterwards.
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(pool.connect(&k, || dial(addr)).await.unwrap());
        }
        let mut bodies = Vec::new();
        for c in conns {
            bodies.push(pool.send(c, get()).await.unwrap().into_body());
        }
        for b in bodies {
            b.collect().await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(idle(&pool, &k).await, 2);

        // An endpoint leaving drops its idle connections and keeps none returning.
        pool.retain(HashSet::new()).await;
        assert_eq!(idle(&pool, &k).await, 0);
        assert!(!roundtrip(&pool, &k).await);
        assert_eq!(idle(&pool, &k).await, 0);
    }

    #[tokio::test]
    async fn an_idle_connection_the_server_closed_is_replaced_not_used() {
        // Answers one request per connection, then closes it without saying so
        // (no `Connection: close`): the client keeps it as idle.
        let (addr, accepted) = accepting(|mut tcp| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = vec![0; 4096];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            // Later than the response, so the client has put it back to the pool.
            tokio::time::sleep(Duration::from_millis(20)).await;
        })
        .await;
        let pool = Upstreams::new(settings(4));
        let k = key(addr, false);
        pool.retain([k.clone()].into()).await;
        assert!(!roundtrip(&pool, &k).await);
        assert_eq!(idle(&pool, &k).await, 1, "kept: the close is not known yet");
        // Let the close arrive; the idle connection is not driven meanwhile.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !roundtrip(&pool, &k).await,
            "taking it notices the close and opens a new connection"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn http2_shares_one_connection_and_shutdown_clears() {
        let (addr, accepted) = server().await;
        let pool = Upstreams::new(settings(16));
        let k = key(addr, true);
        pool.retain([k.clone()].into()).await;
        let reused = futures::future::join_all((0..8).map(|_| roundtrip(&pool, &k))).await;
        assert_eq!(reused.iter().filter(|r| !**r).count(), 1, "{reused:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        pool.clear().await;
        assert!(
            !roundtrip(&pool, &k).await,
            "nothing is kept after shutdown"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_tunnel_streams_are_capped_per_peer() {
        // Ten endpoints behind one peer (their tunnel streams all share its stream limit),
        // eight idle connections each wanted: only MAX_IDLE_PER_PEER are kept in total.
        let mut keys = Vec::new();
        for i in 0..10 {
            let (addr, _) = server().await;
            keys.push(Key {
                cluster: "west".into(),
                target: addr,
                tunnel_service: Some(format!("svc{i}.demo.global:80")),
                http2: false,
            });
        }
        let pool = Upstreams::new(settings(16));
        pool.retain(keys.iter().cloned().collect()).await;
        for k in &keys {
            let mut conns = Vec::new();
            for _ in 0..8 {
                conns.push(pool.connect(k, || dial(k.target)).await.unwrap());
            }
            let mut bodies = Vec::new();
            for c in conns {
                bodies.push(pool.send(c, get()).await.unwrap().into_body());
            }
            for b in bodies {
                b.collect().await.unwrap();
            }
        }
        let total: usize = pool.state.lock().await.idle.values().map(Vec::len).sum();
        assert_eq!(total, MAX_IDLE_PER_PEER);
    }

    #[tokio::test]
    async fn requests_waiting_for_a_failed_http2_dial_share_its_error() {
        let pool = Upstreams::new(settings(16));
        let k = key("127.0.0.1:9".parse().unwrap(), true);
        pool.retain([k.clone()].into()).await;
        let dials = AtomicUsize::new(0);
        let attempt = || async {
            dials.fetch_add(1, Ordering::SeqCst);
            // A slow failure, as a blackholed endpoint's connect timeout.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err::<Box<dyn Io>, _>(DialError::Endpoint("connect timed out".into()))
        };
        let results = futures::future::join_all((0..5).map(|_| pool.connect(&k, attempt))).await;
        assert!(results.iter().all(Result::is_err));
        assert_eq!(dials.load(Ordering::SeqCst), 1, "one dial for the burst");
        // A later request tries again.
        assert!(pool.connect(&k, attempt).await.is_err());
        assert_eq!(dials.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn zero_idle_timeout_never_reuses() {
        let (addr, accepted) = server().await;
        let pool = Upstreams::new(Settings {
            idle_timeout: Duration::ZERO,
            max_idle: 16,
        });
        for http2 in [false, true] {
            let k = key(addr, http2);
            pool.retain([k.clone()].into()).await;
            for _ in 0..3 {
                assert!(!roundtrip(&pool, &k).await);
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 6);
    }
}
