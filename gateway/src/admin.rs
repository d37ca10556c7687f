//! Admin listeners: `/healthz/ready` and `/metrics` (OpenMetrics text) on the pod IP for
//! the kubelet and Prometheus, and, on loopback by default, those and `/config_dump` (the
//! snapshot in use, live ejections, peer liveness and the current split per service, as
//! JSON), which shows every endpoint of the mesh (Istio keeps Envoy's admin port on
//! loopback for the same reason).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use meridian_api::proto::{self, Protocol};
use meridian_api::signal::Shutdown;
use meridian_identity::tls::CredentialReceiver;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing::info;

use crate::dataplane::Dataplane;

/// What the admin endpoints read.
#[derive(Debug)]
pub(crate) struct AdminState {
    /// Readiness: a snapshot, credentials and the tunnel listener are in place.
    pub ready: AtomicBool,
    /// Metrics registry.
    pub registry: Registry,
    /// The data plane.
    pub dataplane: Arc<Dataplane>,
    /// The credentials, once obtained.
    pub credentials: OnceLock<CredentialReceiver>,
    /// Whether the controller stream is connected.
    pub controller_connected: AtomicBool,
    /// Limits of every admin listener.
    pub limits: meridian_api::admin::Limits,
}

/// Which endpoints an admin listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoints {
    /// `/healthz/ready` and `/metrics`: for the kubelet and Prometheus, on the pod IP.
    Probes,
    /// Those and `/config_dump`, which shows the whole mesh: loopback by default.
    All,
}

/// Serves the admin endpoints until `shutdown` is cancelled.
pub(crate) async fn serve(
    listener: TcpListener,
    endpoints: Endpoints,
    state: Arc<AdminState>,
    shutdown: Shutdown,
) {
    info!(addr = ?listener.local_addr().ok(), ?endpoints, "admin listening");
    let limits = state.limits;
    let metrics = state.dataplane.metrics.admin.clone();
    let handler = move |req| handle(state.clone(), endpoints, req);
    let stop = async move { shutdown.cancelled().await };
    meridian_api::admin::serve(listener, handler, limits, metrics, stop).await;
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("valid response")
}

async fn handle(
    state: Arc<AdminState>,
    endpoints: Endpoints,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz/ready" => {
            if state.ready.load(Ordering::Relaxed) {
                respond(StatusCode::OK, "text/plain", "ready\n")
            } else {
                respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &state.registry) {
                Ok(()) => respond(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(_) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "encoding failed\n",
                ),
            }
        }
        "/config_dump" if endpoints == Endpoints::All => {
            let dump = config_dump(&state).await;
            respond(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&dump).unwrap_or_default(),
            )
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

fn locality(l: Option<&proto::Locality>) -> String {
    l.map(|l| meridian_api::Locality::from(l).to_string())
        .unwrap_or_default()
}

fn protocol(p: i32) -> &'static str {
    match Protocol::try_from(p).unwrap_or(Protocol::Tcp) {
        Protocol::Tcp => "tcp",
        Protocol::Http => "http",
        Protocol::Http2 => "http2",
        Protocol::Grpc => "grpc",
    }
}

fn snapshot_json(s: &proto::Snapshot) -> Value {
    json!({
        "version": s.version,
        "cluster": s.cluster,
        "locality": locality(s.locality.as_ref()),
        "trustDomain": s.trust_domain,
        "services": s.services.iter().map(|g| json!({
            "hostname": g.hostname,
            "vip": g.vip,
            "clusters": g.clusters,
            "ports": g.ports.iter().map(|p| json!({
                "name": p.name, "port": p.port, "protocol": protocol(p.protocol),
                "listenerPort": p.listener_port,
            })).collect::<Vec<_>>(),
            "clusterVips": g.cluster_vips.iter().map(|c| json!({
                "cluster": c.cluster, "vip": c.vip,
                "ports": c.ports.iter().map(|p| json!({
                    "name": p.name, "port": p.port, "listenerPort": p.listener_port,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "policy": if g.policy_json.is_empty() { Value::Null } else {
                serde_json::from_str::<Value>(&g.policy_json).unwrap_or(Value::String(g.policy_json.clone()))
            },
            "endpoints": g.endpoints.iter().map(|e| json!({
                "cluster": e.cluster, "address": e.address, "ports": e.ports,
                "locality": locality(e.locality.as_ref()), "labels": e.labels,
                "ready": e.ready, "stale": e.stale, "pod": e.pod,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "peers": s.peers.iter().map(|p| json!({
            "cluster": p.cluster, "address": p.address, "identity": p.identity,
            "locality": locality(p.locality.as_ref()),
        })).collect::<Vec<_>>(),
        "drains": s.drains.iter().map(|d| json!({
            "cluster": d.cluster, "permille": d.permille,
        })).collect::<Vec<_>>(),
    })
}

async fn config_dump(state: &AdminState) -> Value {
    let dp = &state.dataplane;
    let routing = dp.routing();
    let now = Instant::now();
    let ejections: Vec<Value> = dp
        .health
        .ejections()
        .await
        .into_iter()
        .map(|(service, e)| {
            json!({
                "service": service,
                "cluster": e.key.cluster,
                "address": e.key.address,
                "ejections": e.ejections,
                "remainingSeconds": e.until.saturating_duration_since(now).as_secs_f64(),
            })
        })
        .collect();
    let peers: serde_json::Map<String, Value> = dp
        .health
        .peers()
        .await
        .into_iter()
        .map(|(c, p)| {
            (
                c,
                json!({"up": p.up, "forSeconds": now.duration_since(p.since).as_secs(), "lastError": p.last_error}),
            )
        })
        .collect();
    let mut splits = serde_json::Map::new();
    for (name, routes) in &routing.services {
        let dests: Vec<Value> = routes
            .destinations
            .iter()
            .map(|d| {
                let groups: Vec<Value> = d
                    .balance
                    .groups
                    .iter()
                    .zip(&d.balance.split.groups)
                    .map(|(g, s)| {
                        json!({
                            "locality": g.locality.to_string(),
                            "labels": g.labels,
                            "total": g.total,
                            "healthy": g.healthy,
                            "drainPermille": g.drain,
                            "priority": s.priority,
                            "tier": s.tier.to_string(),
                            "health": s.health,
                            "panic": s.panic,
                            "percent": s.percent,
                        })
                    })
                    .collect();
                json!({
                    "subset": d.subset,
                    "normalizedTotalHealth": d.balance.split.normalized_total_health,
                    "totalPanic": d.balance.split.total_panic,
                    "groups": groups,
                })
            })
            .collect();
        splits.insert(
            name.clone(),
            json!({
                "policyError": routes.service.policy_error,
                "endpoints": routes.service.endpoints.iter().zip(&routes.healthy).map(|(e, h)| json!({
                    "cluster": e.cluster, "address": e.key.address, "healthy": h,
                })).collect::<Vec<_>>(),
                "destinations": dests,
            }),
        );
    }
    let certificate = state.credentials.get().map(|rx| {
        let c = rx.current();
        json!({
            "identity": c.identity().to_string(),
            "notAfter": meridian_identity::ca::unix_seconds(c.not_after()),
            "expiresInSeconds": c.not_after().duration_since(SystemTime::now()).map(|d| d.as_secs()).unwrap_or(0),
        })
    });
    json!({
        "cluster": dp.cluster,
        "ready": state.ready.load(Ordering::Relaxed),
        "controllerConnected": state.controller_connected.load(Ordering::Relaxed),
        "certificate": certificate,
        // Put together on request only: the routing table holds resources.
        "snapshot": snapshot_json(&routing.table.resources.to_snapshot()),
        "ejections": ejections,
        "peers": peers,
        "splits": splits,
    })
}
