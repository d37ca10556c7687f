//! Outbound listeners: one per (global service, port) at the listener port the snapshot
//! assigns. TCP ports choose an endpoint per connection and splice bytes both ways; HTTP
//! ports choose per request, follow HTTP routes, and retry idempotent requests onto the
//! next choice on a connect failure or a 503; their upstream connections come from the
//! [`crate::upstream`] pool.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use meridian_api::signal::Shutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::dataplane::Dataplane;
use crate::dial::DialError;
use crate::limits::Slots;
use crate::metrics;
use crate::outlier::Outcome;
use crate::route::ServiceRoutes;
use crate::routing::{ListenerSpec, Port, RoutingTable};
use crate::splice::{Activity, End, splice};
use crate::upstream::{Conn, RequestBody, UpstreamBody};
use crate::workers::Workers;

/// The `listener` label of this module's metrics.
const LISTENER: &str = "outbound";

/// Bodies up to this size are buffered so idempotent requests can be retried.
const MAX_RETRY_BODY: u64 = 64 * 1024;

type ProxyBody = RequestBody;

/// The open outbound listeners, reconciled against each routing table.
#[derive(Debug)]
pub(crate) struct Listeners {
    bind: IpAddr,
    open: BTreeMap<u16, (ListenerSpec, JoinHandle<()>)>,
    /// Where accepted connections are served.
    workers: Arc<Workers>,
}

impl Listeners {
    /// No listeners yet; they will bind to `bind` and hand their connections to `workers`.
    pub(crate) fn new(bind: IpAddr, workers: Workers) -> Self {
        Self {
            bind,
            open: BTreeMap::new(),
            workers: Arc::new(workers),
        }
    }

    /// Opens listeners the routing table adds, closes those it drops and restarts those whose
    /// service port changed; the others, and every open connection, are left alone.
    pub(crate) async fn reconcile(
        &mut self,
        table: &RoutingTable,
        dp: &Arc<Dataplane>,
        shutdown: &Shutdown,
    ) {
        let stale: Vec<u16> = self
            .open
            .iter()
            .filter(|(port, (spec, _))| table.listeners.get(*port) != Some(spec))
            .map(|(port, _)| *port)
            .collect();
        for port in stale {
            if let Some((spec, task)) = self.open.remove(&port) {
                info!(listener_port = port, service = %spec.hostname, "closing outbound listener");
                task.abort();
            }
        }
        for (port, spec) in &table.listeners {
            if self.open.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::new(self.bind, *port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    info!(%addr, service = %spec.hostname, port = spec.port.port, http = spec.port.is_http(), "outbound listener open");
                    let task = tokio::spawn(
                        accept(
                            listener,
                            spec.clone(),
                            dp.clone(),
                            shutdown.clone(),
                            self.workers.clone(),
                        )
                        .instrument(
                            info_span!("outbound", service = %spec.hostname, port = spec.port.port),
                        ),
                    );
                    self.open.insert(*port, (spec.clone(), task));
                }
                Err(e) => {
                    warn!(%addr, service = %spec.hostname, error = %e, "cannot open outbound listener; retried on the next snapshot")
                }
            }
        }
        dp.metrics.listeners.set(self.open.len() as i64);
    }

    /// Closes every listener (shutdown); open connections drain separately.
    pub(crate) fn close_all(&mut self) {
        for (_, (_, task)) in std::mem::take(&mut self.open) {
            task.abort();
        }
    }
}

async fn accept(
    listener: TcpListener,
    spec: ListenerSpec,
    dp: Arc<Dataplane>,
    shutdown: Shutdown,
    workers: Arc<Workers>,
) {
    let slots = Slots::new(dp.settings.limits.max_connections);
    while let Some((tcp, remote, slot)) = slots
        .accept(&listener, LISTENER, &dp.metrics, &shutdown)
        .await
    {
        let _ = tcp.set_nodelay(true);
        let dp = dp.clone();
        let spec = spec.clone();
        let span = info_span!("connection", %remote);
        workers.serve(tcp, span, move |tcp| async move {
            let _slot = slot;
            if spec.port.is_http() {
                http_connection(tcp, spec, dp).await;
            } else {
                tcp_connection(tcp, spec, dp).await;
            }
        });
    }
}

async fn tcp_connection(client: TcpStream, spec: ListenerSpec, dp: Arc<Dataplane>) {
    let _drain = dp.drain_guard();
    let routing = dp.routing();
    let Some(mut routes) = routing.services.get(&spec.hostname).cloned() else {
        return;
    };
    let mut tries = Tries::default();
    let budget = dp.settings.max_retries as usize + 1;
    let port = &spec.port;
    let Some((idx, upstream)) =
        connect_within(&dp, &mut routes, 0, port, &mut tries, budget, |r, idx| {
            let dp = &dp;
            async move { dp.dial(&r, idx, port).await }
        })
        .await
    else {
        dp.metrics
            .no_healthy_upstream
            .get_or_create(&metrics::ServicePort {
                service: spec.hostname.clone(),
                port: spec.port.port,
            })
            .inc();
        debug!("no endpoint reachable; closing");
        return;
    };
    let ep = &routes.service.endpoints[idx];
    let labels = dp.destination(&routes.service, &spec.port, ep);
    dp.metrics
        .connections
        .get_or_create(&labels.flow(metrics::SOURCE))
        .inc();
    dp.report(&routes, idx, Outcome::Success).await;
    let spliced = splice(client, upstream, dp.settings.limits.idle_timeout).await;
    match spliced.end {
        End::Closed => {}
        End::Idle => {
            debug!("idle timeout: closing");
            dp.metrics.timeout(LISTENER, "idle");
        }
        End::Error(e) => debug!(error = %e, "connection ended with an error"),
    }
    for (direction, n) in [("sent", spliced.sent), ("received", spliced.received)] {
        dp.metrics
            .bytes
            .get_or_create(&labels.bytes(metrics::SOURCE, direction))
            .inc_by(n);
    }
}

async fn http_connection(client: TcpStream, spec: ListenerSpec, dp: Arc<Dataplane>) {
    let mut drain = dp.drain_guard();
    let limits = dp.settings.limits;
    let spec = Arc::new(spec);
    let svc_dp = dp.clone();
    let service = service_fn(move |req| proxy(svc_dp.clone(), spec.clone(), req));
    let activity = Activity::default();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header timeout needs hyper's timer; it also closes idle HTTP/1 keep-alive
    // connections. Idle HTTP/2 connections are closed by the activity clock below.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(activity.track(client)), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            if is_header_timeout(&*e) {
                debug!("request header timeout: closing");
                dp.metrics.timeout(LISTENER, "header");
            } else {
                debug!(error = %e, "http connection ended");
            }
        },
        () = activity.idle(limits.idle_timeout) => {
            debug!("idle timeout: closing");
            dp.metrics.timeout(LISTENER, "idle");
        }
        () = drain.draining() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Whether hyper closed the connection because the request headers took too long.
fn is_header_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout)
}

fn full(b: Bytes) -> ProxyBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, msg: &'static str) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(full(Bytes::from_static(msg.as_bytes())))
        .expect("valid response")
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP.iter().chain(listed.iter()) {
        headers.remove(h);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// The request sent upstream: HTTP/1.1 in origin form with a Host header, or HTTP/2 with
/// an absolute URI. Built for every attempt, so it reuses the inbound URI's shared parts
/// rather than formatting strings.
fn upstream_request(
    parts: &http::request::Parts,
    body: ProxyBody,
    http2: bool,
    fallback_host: &str,
) -> Request<ProxyBody> {
    let authority = || -> Option<Authority> {
        parts.uri.authority().cloned().or_else(|| {
            let host = parts.headers.get(header::HOST)?;
            Authority::try_from(host.as_bytes()).ok()
        })
    };
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    let mut uri = uri::Parts::default();
    uri.path_and_query = Some(path);
    let version = if http2 {
        headers.remove(header::HOST);
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority().unwrap_or_else(|| {
            Authority::try_from(fallback_host)
                .unwrap_or_else(|_| Authority::from_static("localhost"))
        }));
        Version::HTTP_2
    } else {
        if !headers.contains_key(header::HOST) {
            let host = authority().map_or_else(
                || HeaderValue::from_str(fallback_host).ok(),
                |a| HeaderValue::from_str(a.as_str()).ok(),
            );
            if let Some(host) = host {
                headers.insert(header::HOST, host);
            }
        }
        Version::HTTP_11
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    req
}

async fn proxy(
    dp: Arc<Dataplane>,
    spec: Arc<ListenerSpec>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let routing = dp.routing();
    let Some(mut routes) = routing.services.get(&spec.hostname).cloned() else {
        return Ok(text(StatusCode::SERVICE_UNAVAILABLE, "unknown service\n"));
    };
    let port = &spec.port;
    let choice = routes.destination_for(Some(req.headers()), &mut rand::rng());
    let dest = choice.destination;
    let timeout = choice.timeout.unwrap_or(dp.settings.response_timeout);
    let inbound_version = req.version();
    let (parts, body) = req.into_parts();
    // Retries need the body again: buffer small bodies of idempotent requests.
    let retryable_size = body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= MAX_RETRY_BODY);
    let (buffered, mut streaming) = if idempotent(&parts.method) && retryable_size {
        match body.collect().await {
            Ok(b) => (Some(b.to_bytes()), None),
            Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "request body failed\n")),
        }
    } else {
        (None, Some(body))
    };
    let max_attempts = if buffered.is_some() {
        dp.settings.max_retries as usize + 1
    } else {
        1
    };
    let mut tries = Tries::default();
    let mut last: Option<Response<ProxyBody>> = None;
    let http2 = port.is_http2();
    let replay = |b: &Bytes| upstream_request(&parts, full(b.clone()), http2, &spec.hostname);
    while tries.attempts < max_attempts {
        // Connect failures move on to the next choice within the same budget.
        let Some((idx, conn)) = connect_within(
            &dp,
            &mut routes,
            dest,
            port,
            &mut tries,
            max_attempts,
            |r, idx| {
                let dp = &dp;
                async move { dp.connect_upstream(&r, idx, port).await }
            },
        )
        .await
        else {
            break;
        };
        // The service by reference count: a lost peer may replace `routes` below, and the
        // endpoint is still needed then (cloning it would allocate for every request).
        let service = routes.service.clone();
        let ep = &service.endpoints[idx];
        let labels = dp.destination(&service, port, ep);
        dp.metrics.requests.get_or_create(&labels).inc();
        let body: ProxyBody = match (&buffered, streaming.take()) {
            (Some(b), _) => full(b.clone()),
            (None, Some(s)) => s.boxed(),
            (None, None) => break,
        };
        let upstream = upstream_request(&parts, body, http2, &spec.hostname);
        let replayable = buffered.as_ref().map(|b| move || replay(b));
        let send = send_upstream(&dp, &routes, idx, port, conn, upstream, replayable);
        let sent = Instant::now();
        match within(timeout, send).await {
            Ok(mut resp) => {
                let code = resp.status().as_u16();
                dp.metrics
                    .responses
                    .get_or_create(&labels.response(code))
                    .inc();
                dp.metrics
                    .durations
                    .observe(&labels, sent.elapsed().as_secs_f64());
                let outcome = if code >= 500 {
                    Outcome::Status(code)
                } else {
                    Outcome::Success
                };
                dp.report(&routes, idx, outcome).await;
                strip_hop_by_hop(resp.headers_mut());
                *resp.version_mut() = inbound_version;
                let resp = resp.map(|b| b.boxed());
                if code == 503 && buffered.is_some() && tries.attempts < max_attempts {
                    debug!(endpoint = %ep.key.address, "503: retrying on the next choice");
                    last = Some(resp);
                    continue;
                }
                return Ok(resp);
            }
            Err(Failure::Connect(e)) => {
                debug!(endpoint = %ep.key.address, cluster = %ep.cluster, error = %e, "reconnect failed");
                dp.metrics.connect_failures.get_or_create(&labels).inc();
                if e.blames_endpoint() {
                    dp.report(&routes, idx, Outcome::ConnectFailure).await;
                }
                if buffered.is_none() {
                    return Ok(text(StatusCode::BAD_GATEWAY, "upstream request failed\n"));
                }
                reroute_if_peer_lost(&dp, &mut routes, &ep.cluster, &mut tries).await;
            }
            Err(Failure::Timeout) => {
                debug!(endpoint = %ep.key.address, cluster = %ep.cluster, "upstream response timed out");
                dp.metrics
                    .responses
                    .get_or_create(&labels.response(504))
                    .inc();
                dp.metrics
                    .durations
                    .observe(&labels, sent.elapsed().as_secs_f64());
                dp.report(&routes, idx, Outcome::Status(504)).await;
                // Not retried (as Envoy's default retry policy): the request may have
                // been processed, and another attempt would double the wait.
                return Ok(text(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"));
            }
            Err(Failure::Request(e)) => {
                debug!(endpoint = %ep.key.address, error = %e, "upstream request failed");
                dp.metrics.connect_failures.get_or_create(&labels).inc();
                dp.report(&routes, idx, Outcome::Status(502)).await;
                if buffered.is_none() {
                    return Ok(text(StatusCode::BAD_GATEWAY, "upstream request failed\n"));
                }
                // The connection or tunnel stream was reset before response headers: an
                // idempotent request goes to the next choice (Envoy's `retry_on: reset`),
                // in another cluster if the reset was the peer gateway going away.
                reroute_if_peer_lost(&dp, &mut routes, &ep.cluster, &mut tries).await;
            }
        }
    }
    if let Some(resp) = last {
        return Ok(resp);
    }
    dp.metrics
        .no_healthy_upstream
        .get_or_create(&metrics::ServicePort {
            service: spec.hostname.clone(),
            port: port.port,
        })
        .inc();
    Ok(text(
        StatusCode::SERVICE_UNAVAILABLE,
        "no healthy upstream\n",
    ))
}

/// The choices one request (or TCP connection) has used up.
#[derive(Debug, Default)]
struct Tries {
    /// Attempts made, the first included; bounded by `--max-retries` + 1.
    attempts: usize,
    /// Endpoints tried, as indices into the service of the routes in use (not tried
    /// again: a retry goes to the next choice).
    tried: Vec<usize>,
}

/// Picks endpoints and opens a connection with `open`, moving to the next choice on
/// failure, until `tries` reaches `limit` attempts. Returns the endpoint index (into
/// `routes`, which a lost peer may have replaced) and the connection, or `None` when all
/// failed.
async fn connect_within<T, Fut>(
    dp: &Dataplane,
    routes: &mut Arc<ServiceRoutes>,
    dest: usize,
    port: &Port,
    tries: &mut Tries,
    limit: usize,
    mut open: impl FnMut(Arc<ServiceRoutes>, usize) -> Fut,
) -> Option<(usize, T)>
where
    Fut: Future<Output = Result<T, DialError>>,
{
    while tries.attempts < limit {
        let idx = routes.pick(dest, &mut rand::rng(), &tries.tried)?;
        if tries.attempts > 0 {
            dp.metrics
                .retries
                .get_or_create(&metrics::ServicePort {
                    service: routes.service.hostname.clone(),
                    port: port.port,
                })
                .inc();
        }
        tries.attempts += 1;
        tries.tried.push(idx);
        match open(routes.clone(), idx).await {
            Ok(conn) => return Some((idx, conn)),
            Err(e) => {
                let service = routes.service.clone();
                let ep = &service.endpoints[idx];
                debug!(endpoint = %ep.key.address, cluster = %ep.cluster, error = %e, "dial failed");
                dp.metrics
                    .connect_failures
                    .get_or_create(&dp.destination(&service, port, ep))
                    .inc();
                if e.blames_endpoint() {
                    dp.report(routes, idx, Outcome::ConnectFailure).await;
                } else {
                    reroute_if_peer_lost(dp, routes, &ep.cluster, tries).await;
                }
            }
        }
    }
    None
}

/// After a failure through `cluster`'s gateway: when its tunnel is gone, the rest of the
/// attempts use the routes rebuilt without it. Otherwise the split the request started
/// with would keep choosing that cluster's other endpoints (every one of them behind the
/// same dead tunnel) until the retries ran out, while the clusters it fails over to may
/// not be in that split at all.
async fn reroute_if_peer_lost(
    dp: &Dataplane,
    routes: &mut Arc<ServiceRoutes>,
    cluster: &str,
    tries: &mut Tries,
) {
    if !dp.peer_lost(cluster).await {
        return;
    }
    let Some(fresh) = dp.routing().services.get(&routes.service.hostname).cloned() else {
        return;
    };
    if !Arc::ptr_eq(&fresh.service, &routes.service) {
        // A new snapshot arrived meanwhile: its indices mean other endpoints.
        tries.tried.clear();
    }
    *routes = fresh;
}

/// `send` bounded by the response `timeout` (zero: unbounded). Both attempts of
/// [`send_upstream`] share it; when it expires the request is dropped (hyper resets the
/// stream or closes the connection) and [`Failure::Timeout`] returned.
async fn within<T>(
    timeout: Duration,
    send: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    if timeout.is_zero() {
        return send.await;
    }
    tokio::time::timeout(timeout, send)
        .await
        .unwrap_or(Err(Failure::Timeout))
}

/// Why a request could not be sent upstream.
enum Failure {
    /// The fresh connection replacing a reused one could not be opened.
    Connect(DialError),
    /// The request failed on its connection.
    Request(hyper::Error),
    /// No response headers within the response timeout.
    Timeout,
}

/// Sends `req` on `conn`. A reused connection may turn out to be gone (the server closed
/// it while idle); when it fails a request that was never written (hyper hands it back),
/// or any request that can be replayed (buffered and idempotent, rebuilt by `replay`),
/// the request goes once more on a fresh connection to the same endpoint. That is not an
/// endpoint error and not a retry onto the next choice; only the fresh attempt's failure
/// counts. A failure on a new connection is returned as is.
async fn send_upstream(
    dp: &Dataplane,
    routes: &ServiceRoutes,
    idx: usize,
    port: &Port,
    conn: Conn,
    req: Request<ProxyBody>,
    replay: Option<impl FnOnce() -> Request<ProxyBody>>,
) -> Result<Response<UpstreamBody>, Failure> {
    let (reused, stale) = (conn.reused(), conn.id());
    let err = match dp.upstreams().send(conn, req).await {
        Ok(resp) => return Ok(resp),
        Err(e) => e,
    };
    let again = match (reused, err.request, replay) {
        (false, _, _) => None,
        (true, Some(req), _) => Some(req),
        (true, None, replay) => replay.map(|f| f()),
    };
    let Some(req) = again else {
        return Err(Failure::Request(err.error));
    };
    debug!(endpoint = %routes.service.endpoints[idx].key.address, error = %err.error, "reused upstream connection failed; sending on a fresh one");
    let conn = dp
        .reconnect_upstream(routes, idx, port, stale)
        .await
        .map_err(Failure::Connect)?;
    dp.upstreams()
        .send(conn, req)
        .await
        .map_err(|e| Failure::Request(e.error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, host: Option<&str>) -> http::request::Parts {
        let mut req = Request::builder()
            .uri(uri)
            .header(header::CONNECTION, "x-hop");
        if let Some(host) = host {
            req = req.header(header::HOST, host);
        }
        req.header("x-hop", "1").body(()).unwrap().into_parts().0
    }

    fn empty() -> ProxyBody {
        full(Bytes::new())
    }

    #[test]
    fn http1_requests_go_in_origin_form_with_a_host() {
        let req = upstream_request(&parts("/a?b=1", Some("svc:80")), empty(), false, "fb");
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()[header::HOST], "svc:80");
        assert!(
            !req.headers().contains_key("x-hop"),
            "hop-by-hop headers go"
        );
        assert!(!req.headers().contains_key(header::CONNECTION));

        // Absolute form (a client talking to a proxy): origin form upstream, Host from it.
        let req = upstream_request(&parts("http://svc.global:81/p", None), empty(), false, "fb");
        assert_eq!(req.uri(), "/p");
        assert_eq!(req.headers()[header::HOST], "svc.global:81");

        // No Host at all: the service's name.
        let req = upstream_request(&parts("/", None), empty(), false, "reviews.default.global");
        assert_eq!(req.headers()[header::HOST], "reviews.default.global");
    }

    #[test]
    fn http2_requests_carry_an_absolute_uri_and_no_host_header() {
        let req = upstream_request(&parts("/a?b=1", Some("svc:80")), empty(), true, "fb");
        assert_eq!(req.uri(), "http://svc:80/a?b=1");
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(!req.headers().contains_key(header::HOST));

        let req = upstream_request(&parts("/", None), empty(), true, "reviews.default.global");
        assert_eq!(req.uri(), "http://reviews.default.global/");
    }
}
