//! The admin HTTP server: `/metrics`, `/healthz/ready` and `/healthz/live`.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meridian_api::subscription::Status;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::authority::Authority;
use crate::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin endpoints report on.
pub struct Admin {
    /// The metrics to expose.
    pub metrics: Arc<Metrics>,
    /// The controller subscription's state.
    pub status: watch::Receiver<Status>,
    /// Ready once zones from a snapshot are served.
    pub authority: Authority,
}

/// Serves the admin endpoints on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "admin accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let admin = admin.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(route(&request, &admin)) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, "admin connection ended");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    // Dropping the set aborts connections still open.
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
