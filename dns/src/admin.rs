//! The admin HTTP server: `/metrics`, `/healthz/ready` and `/healthz/live`.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use meridian_api::signal::Shutdown;
use meridian_api::subscription::Status;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::authority::Authority;
use crate::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin endpoints report on.
pub(crate) struct Admin {
    /// The metrics to expose.
    pub metrics: Arc<Metrics>,
    /// The controller subscription's state.
    pub status: watch::Receiver<Status>,
    /// Ready once zones from a snapshot are served.
    pub authority: Authority,
    /// Connections served at once and the request header timeout.
    pub limits: meridian_api::admin::Limits,
}

/// Serves the admin endpoints on `listener` until `shutdown` is cancelled.
pub(crate) async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: Shutdown) {
    let limits = admin.limits;
    let metrics = admin.metrics.admin.clone();
    let handler = move |request: Request<Incoming>| {
        let response = route(&request, &admin);
        async move { response }
    };
    meridian_api::admin::serve(
        listener,
        handler,
        limits,
        metrics,
        shutdown.cancelled_owned(),
    )
    .await;
}

fn route(request: &Request<Incoming>, admin: &Admin) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match request.uri().path() {
        "/metrics" => match admin.metrics.encode(&admin.status.borrow()) {
            Ok(body) => Response::builder()
                .header(header::CONTENT_TYPE, OPENMETRICS)
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "encoding\n")),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "metrics encoding failed\n",
            ),
        },
        "/healthz/live" => text(StatusCode::OK, "live\n"),
        // Static stability: once loaded, stay ready even while the controller is away.
        "/healthz/ready" if admin.authority.is_loaded() => text(StatusCode::OK, "ready\n"),
        "/healthz/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no snapshot from the controller yet\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
