//! Prometheus metrics of the gateway (served on the admin listener at `/metrics`).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// A label value shared by every label set that carries it: cloning one is a reference
/// count bump, so the hot path builds label sets without allocating. The routing table
/// makes one per service, endpoint cluster and locality when a snapshot is installed.
pub type Label = Arc<str>;

/// Which gateway reports a flow, as Istio's `reporter` label: the `source` gateway (an
/// outbound listener of the caller's cluster) or the `destination` gateway (the tunnel
/// server in the endpoint's cluster). A cross-cluster TCP connection is counted by both,
/// so sums select one reporter.
pub const SOURCE: &str = "source";
/// See [`SOURCE`].
pub const DESTINATION: &str = "destination";

/// A flow of traffic: the service port, the cluster it comes from and where the chosen
/// endpoint runs. Every value is a cluster, a locality or a service: the cardinality is
/// bounded by the mesh's shape, never by its pods or client addresses.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Destination {
    /// Global service hostname.
    pub service: Label,
    /// Service port.
    pub port: u32,
    /// Cluster the traffic comes from: the gateway's own for outbound listeners, the
    /// peer's verified identity for tunnel streams.
    pub source_cluster: Label,
    /// Cluster of the endpoint.
    pub cluster: Label,
    /// Locality of the endpoint, `region/zone/subzone`.
    pub locality: Label,
}

impl Destination {
    /// The labels of a response with `code` from this destination.
    pub fn response(&self, code: u16) -> Response {
        Response {
            destination: self.clone(),
            class: class(code),
            code,
        }
    }

    /// The labels of a TCP flow (connections) reported by `reporter`.
    pub fn flow(&self, reporter: &'static str) -> Flow {
        Flow {
            destination: self.clone(),
            reporter,
        }
    }

    /// The labels of the bytes moved in `direction` of a flow reported by `reporter`.
    pub fn bytes(&self, reporter: &'static str, direction: &'static str) -> Bytes {
        Bytes {
            destination: self.clone(),
            reporter,
            direction,
        }
    }
}

/// The response class of an HTTP status code (`2xx`, ...), for error-rate sums that do
/// not enumerate codes.
pub fn class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A response to a request sent to a destination.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Response {
    /// Where the request went.
    #[prometheus(flatten)]
    pub destination: Destination,
    /// `1xx` to `5xx`.
    pub class: &'static str,
    /// HTTP status code.
    pub code: u16,
}

/// A TCP flow as seen by one of the two gateways it crosses.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Flow {
    /// Where the flow goes.
    #[prometheus(flatten)]
    pub destination: Destination,
    /// [`SOURCE`] or [`DESTINATION`].
    pub reporter: &'static str,
}

/// Bytes moved for a flow, by direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Bytes {
    /// Where the flow goes.
    #[prometheus(flatten)]
    pub destination: Destination,
    /// [`SOURCE`] or [`DESTINATION`].
    pub reporter: &'static str,
    /// `sent` (client to endpoint) or `received`.
    pub direction: &'static str,
}

/// Upper bounds of the request duration buckets: 1 ms doubling to about 33 s, enough
/// resolution for a p99 from two scrapes' bucket deltas.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Request durations (request sent upstream to response headers) per destination.
#[derive(Debug)]
pub struct Durations(pub Family<Destination, Histogram, fn() -> Histogram>);

impl Default for Durations {
    fn default() -> Self {
        Self(Family::new_with_constructor(duration_histogram))
    }
}

impl Durations {
    /// Records one request to `destination` that took `seconds`.
    pub fn observe(&self, destination: &Destination, seconds: f64) {
        self.0.get_or_create(destination).observe(seconds);
    }
}

/// A locality's share of a service's traffic as the engine computes it at this gateway.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SplitShare {
    /// Global service hostname.
    pub service: Label,
    /// This gateway's cluster (the caller the split is computed for).
    pub source_cluster: Label,
    /// The destination locality.
    pub locality: String,
}

/// A service port.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServicePort {
    /// Global service hostname.
    pub service: String,
    /// Service port.
    pub port: u32,
}

/// A service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Service {
    /// Global service hostname.
    pub service: String,
}

/// An outlier ejection of an endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Ejection {
    /// Global service hostname.
    pub service: String,
    /// Cluster of the endpoint.
    pub cluster: String,
    /// Locality of the endpoint.
    pub locality: String,
}

/// A tunnel handshake.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Handshake {
    /// `server` (accepted) or `client` (originated).
    pub side: &'static str,
    /// The peer cluster, when known.
    pub peer: String,
    /// `ok` or the failure reason.
    pub result: String,
}

/// A refused tunnel connection or stream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refusal {
    /// Why: `plaintext`, `no_client_cert`, `unknown_issuer`, `expired`, `trust_domain`,
    /// `root_issued`, `issuer_mismatch`, `not_member` (a valid peer whose cluster is not a
    /// member), `member_removed` (an open connection cut by a new snapshot), `target`,
    /// `not_connect`, ...
    pub reason: String,
}

/// A connection a listener closed because of a limit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Limited {
    /// `outbound` or `tunnel`.
    pub listener: &'static str,
    /// Refusals: `max_connections`, `max_peer_connections`. Timeouts: `handshake`,
    /// `header`, `idle`.
    pub reason: &'static str,
}

/// A peer gateway.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Peer {
    /// Its cluster.
    pub peer: String,
}

/// Every metric of the gateway.
#[derive(Debug, Default)]
pub struct Metrics {
    /// TCP connections (outbound listeners) and tunnel streams (tunnel server) per flow.
    pub connections: Family<Flow, Counter>,
    /// HTTP requests (attempts, retries included) per destination.
    pub requests: Family<Destination, Counter>,
    /// HTTP responses per destination, class and status code.
    pub responses: Family<Response, Counter>,
    /// HTTP request durations per destination.
    pub durations: Durations,
    /// Percent of each service's traffic the engine sends to each locality (every
    /// endpoint's split, before subset routes).
    pub split: Family<SplitShare, Gauge<f64, AtomicU64>>,
    /// Bytes spliced per flow and direction (TCP ports and tunnel streams).
    pub bytes: Family<Bytes, Counter>,
    /// Upstream HTTP connections opened (direct or through the tunnel), per service.
    pub upstream_connections: Family<Service, Counter>,
    /// HTTP requests sent on a reused upstream connection, per service.
    pub upstream_reused: Family<Service, Counter>,
    /// Failed connection attempts per destination.
    pub connect_failures: Family<Destination, Counter>,
    /// Retries onto the next choice, per service port.
    pub retries: Family<ServicePort, Counter>,
    /// Requests or connections that found no healthy endpoint.
    pub no_healthy_upstream: Family<ServicePort, Counter>,
    /// Outlier ejections per endpoint location.
    pub ejections: Family<Ejection, Counter>,
    /// Endpoints ejected right now, per service.
    pub ejected: Family<Service, Gauge>,
    /// Tunnel handshakes by side, peer and result.
    pub tunnel_handshakes: Family<Handshake, Counter>,
    /// Tunnel streams accepted by this gateway (server side).
    pub tunnel_streams: Counter,
    /// Refused tunnel connections and streams by reason.
    pub tunnel_refusals: Family<Refusal, Counter>,
    /// Peer gateway liveness (1 up, 0 down).
    pub peer_up: Family<Peer, Gauge>,
    /// Unix time at which the current certificate expires.
    pub cert_expiry: Gauge,
    /// Certificates installed (initial and renewals).
    pub cert_renewals: Counter,
    /// Version of the snapshot in use.
    /// (Versions are content hashes: the whole u64 range.)
    pub snapshot_version: Gauge<u64, AtomicU64>,
    /// Whether the controller stream is connected (1) or not (0).
    pub controller_connected: Gauge,
    /// Outbound listeners open.
    pub listeners: Gauge,
    /// Connections refused on accept because a limit was reached, by listener and reason.
    pub connections_refused: Family<Limited, Counter>,
    /// Connections or streams closed because a client stayed silent too long, by listener
    /// and reason.
    pub timeouts: Family<Limited, Counter>,
    /// Connections the admin listeners closed (shared with every binary).
    pub admin: meridian_api::admin::AdminMetrics,
}

impl Metrics {
    /// Registers every metric under the `meridian_gateway` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("meridian_gateway");
        r.register(
            "connections",
            "TCP connections and tunnel streams per source, destination and reporter",
            self.connections.clone(),
        );
        r.register(
            "requests",
            "HTTP request attempts per destination",
            self.requests.clone(),
        );
        r.register(
            "responses",
            "HTTP responses per source, destination, class and code",
            self.responses.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "HTTP request duration (sent upstream to response headers) per source and destination",
            Unit::Seconds,
            self.durations.0.clone(),
        );
        r.register(
            "split_percent",
            "Percent of a service's traffic the engine sends to each locality from this gateway",
            self.split.clone(),
        );
        r.register(
            "bytes",
            "Bytes spliced per source, destination, reporter and direction",
            self.bytes.clone(),
        );
        r.register(
            "upstream_connections",
            "Upstream HTTP connections opened",
            self.upstream_connections.clone(),
        );
        r.register(
            "upstream_reused_requests",
            "HTTP requests sent on a reused upstream connection",
            self.upstream_reused.clone(),
        );
        r.register(
            "connect_failures",
            "Failed connection attempts per destination",
            self.connect_failures.clone(),
        );
        r.register(
            "retries",
            "Retries onto the next choice",
            self.retries.clone(),
        );
        r.register(
            "no_healthy_upstream",
            "Requests or connections without a healthy endpoint",
            self.no_healthy_upstream.clone(),
        );
        r.register("ejections", "Outlier ejections", self.ejections.clone());
        r.register(
            "ejected_endpoints",
            "Endpoints currently ejected",
            self.ejected.clone(),
        );
        r.register(
            "tunnel_handshakes",
            "Tunnel mTLS handshakes",
            self.tunnel_handshakes.clone(),
        );
        r.register(
            "tunnel_streams",
            "Tunnel streams accepted",
            self.tunnel_streams.clone(),
        );
        r.register(
            "tunnel_refusals",
            "Refused tunnel connections and streams",
            self.tunnel_refusals.clone(),
        );
        r.register("peer_up", "Peer gateway liveness", self.peer_up.clone());
        r.register(
            "cert_expiry_timestamp_seconds",
            "Expiry of the gateway certificate (Unix seconds)",
            self.cert_expiry.clone(),
        );
        r.register(
            "cert_renewals",
            "Certificates installed",
            self.cert_renewals.clone(),
        );
        r.register(
            "snapshot_version",
            "Version of the snapshot in use",
            self.snapshot_version.clone(),
        );
        r.register(
            "controller_connected",
            "Controller stream connected",
            self.controller_connected.clone(),
        );
        r.register(
            "listeners",
            "Outbound listeners open",
            self.listeners.clone(),
        );
        r.register(
            "connections_refused",
            "Connections refused because a limit was reached, by listener and reason",
            self.connections_refused.clone(),
        );
        r.register(
            "timeouts",
            "Connections or streams closed after a timeout, by listener and reason",
            self.timeouts.clone(),
        );
        self.admin.register(r);
    }

    /// Counts a connection refused by `listener` because of limit `reason`.
    pub fn refuse_connection(&self, listener: &'static str, reason: &'static str) {
        self.connections_refused
            .get_or_create(&Limited { listener, reason })
            .inc();
    }

    /// Counts a connection or stream of `listener` closed after timeout `reason`.
    pub fn timeout(&self, listener: &'static str, reason: &'static str) {
        self.timeouts
            .get_or_create(&Limited { listener, reason })
            .inc();
    }

    /// Counts a refusal.
    pub fn refuse(&self, reason: &str) {
        self.tunnel_refusals
            .get_or_create(&Refusal {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
