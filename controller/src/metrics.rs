//! Prometheus metrics and the `/metrics` + `/healthz` HTTP endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::crd::Phase;

/// `{cluster}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClusterLabels {
    /// Member cluster.
    pub cluster: String,
}

/// `{cluster, phase}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PhaseLabels {
    /// Member cluster.
    pub cluster: String,
    /// Phase name.
    pub phase: String,
}

/// `{phase}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RejectedLabels {
    /// Phase reported for the refused registrations.
    pub phase: String,
}

/// `{cluster, resource}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WatchLabels {
    /// Member cluster.
    pub cluster: String,
    /// Watched resource kind.
    pub resource: String,
}

/// `{controller, error}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabels {
    /// Which reconciler failed.
    pub controller: String,
    /// [`crate::Error::metric_label`].
    pub error: String,
}

/// `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    /// Why.
    pub reason: String,
}

/// `{controller}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ControllerLabels {
    /// Which reconciler ran.
    pub controller: String,
}

/// `{service, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusalLabels {
    /// gRPC method refused (`Watch`, `SignCertificate`).
    pub service: String,
    /// Why ([`crate::grpc::auth::Refusal::label`], or `subscriber_limit`).
    pub reason: String,
}

const PHASES: [Phase; 4] = [
    Phase::Connecting,
    Phase::Synced,
    Phase::Unreachable,
    Phase::InvalidCredentials,
];

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    /// 1 for a member's current phase, 0 for the others.
    pub(crate) member_phase: Family<PhaseLabels, Gauge>,
    /// Seconds since a member was last fully in sync (refreshed on scrape).
    pub(crate) member_last_sync_age: Family<ClusterLabels, Gauge<f64, AtomicU64>>,
    last_sync: ArcSwap<BTreeMap<String, SystemTime>>,
    /// Watch events received per member and resource.
    pub(crate) watch_events: Family<WatchLabels, Counter>,
    /// Registered members.
    pub(crate) members: Gauge,
    /// Registration Secrets refused, per phase (`InvalidCredentials`, `Conflict`).
    pub(crate) registrations_rejected: Family<RejectedLabels, Gauge>,
    /// Global services in the catalog.
    pub(crate) catalog_services: Gauge,
    /// Endpoints in the catalog.
    pub(crate) catalog_endpoints: Gauge,
    /// Version of the current snapshot.
    pub(crate) snapshot_version: Gauge<u64, AtomicU64>,
    /// New snapshot versions published.
    pub(crate) snapshot_publishes: Counter,
    /// Snapshots sent to subscribers.
    pub(crate) snapshot_pushes: Counter,
    /// Time to hand one snapshot to a subscriber's stream.
    pub(crate) snapshot_push_duration: Histogram,
    /// Connected subscribers.
    pub(crate) subscribers: Gauge,
    /// Encoded bytes of the deltas sent to subscribers.
    pub(crate) delta_bytes: Counter,
    /// Deltas a subscriber could not apply (NACKed), each answered with a resend.
    pub(crate) delta_nacks: Counter,
    /// gRPC calls refused before they were served, per method and reason.
    pub(crate) grpc_refusals: Family<RefusalLabels, Counter>,
    /// Reconciliations per reconciler.
    pub(crate) reconciliations: Family<ControllerLabels, Counter>,
    /// Failed reconciliations per reconciler and error.
    pub(crate) reconcile_errors: Family<ErrorLabels, Counter>,
    /// 1 while this replica is the leader (the one writing to the API).
    pub(crate) leader: Gauge,
    /// VIPs currently without (all of) their listener ports or Service, per reason.
    pub(crate) vip_refusals: Family<ReasonLabels, Gauge>,
    /// GlobalTrafficPolicies whose current generation is not in force, per reason
    /// (`Invalid`, `Conflicted`).
    pub(crate) policies_rejected: Family<ReasonLabels, Gauge>,
    /// Endpoints of exported Services left out of the catalog (not tunnel targets), per
    /// reason.
    pub(crate) skipped_endpoints: Family<ReasonLabels, Gauge>,
    /// Connections the metrics server closed.
    pub(crate) admin: meridian_api::admin::AdminMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("meridian"),
            member_phase: Family::default(),
            member_last_sync_age: Family::default(),
            last_sync: ArcSwap::from_pointee(BTreeMap::new()),
            watch_events: Family::default(),
            members: Gauge::default(),
            registrations_rejected: Family::default(),
            catalog_services: Gauge::default(),
            catalog_endpoints: Gauge::default(),
            snapshot_version: Gauge::default(),
            snapshot_publishes: Counter::default(),
            snapshot_pushes: Counter::default(),
            delta_bytes: Counter::default(),
            delta_nacks: Counter::default(),
            snapshot_push_duration: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            subscribers: Gauge::default(),
            grpc_refusals: Family::default(),
            reconciliations: Family::default(),
            reconcile_errors: Family::default(),
            leader: Gauge::default(),
            vip_refusals: Family::default(),
            policies_rejected: Family::default(),
            skipped_endpoints: Family::default(),
            admin: meridian_api::admin::AdminMetrics::default(),
        };
        let r = &mut m.registry;
        m.admin.register(r);
        r.register(
            "member_phase",
            "Current phase of each member cluster (1 = in that phase)",
            m.member_phase.clone(),
        );
        r.register(
            "member_last_sync_age_seconds",
            "Seconds since the member was last fully in sync",
            m.member_last_sync_age.clone(),
        );
        r.register(
            "watch_events",
            "Watch events received per member and resource",
            m.watch_events.clone(),
        );
        r.register("members", "Registered member clusters", m.members.clone());
        r.register(
            "registrations_rejected",
            "Registration Secrets refused (bad name or kubeconfig, or a cluster name owned by an older Secret), per phase",
            m.registrations_rejected.clone(),
        );
        r.register(
            "catalog_services",
            "Global services in the catalog",
            m.catalog_services.clone(),
        );
        r.register(
            "catalog_endpoints",
            "Endpoints in the catalog",
            m.catalog_endpoints.clone(),
        );
        r.register(
            "snapshot_version",
            "Content version of the current snapshot",
            m.snapshot_version.clone(),
        );
        r.register(
            "snapshot_publishes",
            "New snapshot versions published",
            m.snapshot_publishes.clone(),
        );
        r.register(
            "snapshot_pushes",
            "Snapshots sent to subscribers",
            m.snapshot_pushes.clone(),
        );
        r.register(
            "snapshot_push_duration_seconds",
            "Time to hand one snapshot to a subscriber stream",
            m.snapshot_push_duration.clone(),
        );
        r.register(
            "subscribers",
            "Connected snapshot subscribers",
            m.subscribers.clone(),
        );
        r.register(
            "delta_bytes",
            "Encoded bytes of the deltas sent to subscribers",
            m.delta_bytes.clone(),
        );
        r.register(
            "delta_nacks",
            "Deltas a subscriber could not apply (NACKed), each answered with a resend",
            m.delta_nacks.clone(),
        );
        r.register(
            "grpc_refusals",
            "gRPC calls refused before being served, per method and reason",
            m.grpc_refusals.clone(),
        );
        r.register(
            "reconciliations",
            "Reconciliations per reconciler",
            m.reconciliations.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciliations per reconciler and error",
            m.reconcile_errors.clone(),
        );
        r.register(
            "vip_refusals",
            "VIPs without (all of) their listener ports or Service, per reason",
            m.vip_refusals.clone(),
        );
        r.register(
            "policies_rejected",
            "GlobalTrafficPolicies whose current generation is not in force (Accepted=False), per reason",
            m.policies_rejected.clone(),
        );
        r.register(
            "catalog_skipped_endpoints",
            "Endpoints of exported Services left out of the catalog, per reason",
            m.skipped_endpoints.clone(),
        );
        r.register(
            "controller_leader",
            "1 while this replica is the leader and writes to the API, else 0",
            m.leader.clone(),
        );
        m
    }
}

/// Sets `family` to the number of `reasons` per reason; every `known` reason is reported,
/// zero when absent.
fn set_per_reason<'a>(
    family: &Family<ReasonLabels, Gauge>,
    known: &[&'a str],
    reasons: impl IntoIterator<Item = &'a str>,
) {
    let mut counts: BTreeMap<&str, i64> = known.iter().map(|r| (*r, 0)).collect();
    for r in reasons {
        *counts.entry(r).or_default() += 1;
    }
    for (reason, n) in counts {
        family
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .set(n);
    }
}

impl Metrics {
    /// Sets the refused VIPs per reason (every known reason, zero when none).
    pub(crate) fn set_vip_refusals<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        set_per_reason(&self.vip_refusals, &crate::vip::Refusal::REASONS, reasons);
    }

    /// Sets the rejected policies per reason (every known reason, zero included, so a
    /// fixed policy brings its count back down).
    pub(crate) fn set_policy_rejections<'a>(&self, reasons: impl IntoIterator<Item = &'a str>) {
        set_per_reason(
            &self.policies_rejected,
            &crate::policy::Verdict::REJECTIONS,
            reasons,
        );
    }

    /// Counts a refused gRPC call.
    pub(crate) fn refuse(&self, service: &str, reason: &str) {
        self.grpc_refusals
            .get_or_create(&RefusalLabels {
                service: service.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// Records a member's phase.
    pub(crate) fn set_phase(&self, cluster: &str, phase: Phase) {
        for p in PHASES {
            self.member_phase
                .get_or_create(&PhaseLabels {
                    cluster: cluster.to_owned(),
                    phase: p.to_string(),
                })
                .set(i64::from(p == phase));
        }
    }

    /// Records how many registrations are refused with `phase`.
    pub(crate) fn set_rejected(&self, phase: Phase, count: usize) {
        self.registrations_rejected
            .get_or_create(&RejectedLabels {
                phase: phase.to_string(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Records that a member was fully in sync at `at`.
    pub(crate) fn set_synced(&self, cluster: &str, at: SystemTime) {
        self.last_sync.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            m.insert(cluster.to_owned(), at);
            m
        });
    }

    /// Forgets a member that was unregistered.
    pub(crate) fn remove_member(&self, cluster: &str) {
        for p in PHASES {
            self.member_phase.remove(&PhaseLabels {
                cluster: cluster.to_owned(),
                phase: p.to_string(),
            });
        }
        self.member_last_sync_age.remove(&ClusterLabels {
            cluster: cluster.to_owned(),
        });
        self.last_sync.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            m.remove(cluster);
            m
        });
    }

    /// Counts one watch event.
    pub(crate) fn watch_event(&self, cluster: &str, resource: &str) {
        self.watch_events
            .get_or_create(&WatchLabels {
                cluster: cluster.to_owned(),
                resource: resource.to_owned(),
            })
            .inc();
    }

    /// Counts one snapshot sent to a subscriber.
    pub(crate) fn observe_push(&self, took: Duration) {
        self.snapshot_pushes.inc();
        self.snapshot_push_duration.observe(took.as_secs_f64());
    }

    /// Counts one reconciliation.
    pub(crate) fn reconciled(&self, controller: &str) {
        self.reconciliations
            .get_or_create(&ControllerLabels {
                controller: controller.to_owned(),
            })
            .inc();
    }

    /// Counts one failed reconciliation.
    pub(crate) fn reconcile_failed(&self, controller: &str, error: &crate::Error) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_owned(),
                error: error.metric_label().to_owned(),
            })
            .inc();
    }

    /// Renders every metric in the Prometheus text format.
    pub(crate) fn render(&self) -> String {
        let now = SystemTime::now();
        for (cluster, at) in self.last_sync.load().iter() {
            let age = now.duration_since(*at).unwrap_or_default();
            self.member_last_sync_age
                .get_or_create(&ClusterLabels {
                    cluster: cluster.clone(),
                })
                .set(age.as_secs_f64());
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

async fn handle(req: Request<Incoming>, metrics: Arc<Metrics>) -> Response<Full<Bytes>> {
    let resp = match req.uri().path() {
        "/metrics" => Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .body(Full::new(Bytes::from(metrics.render()))),
        "/healthz" | "/readyz" => Response::builder().body(Full::new(Bytes::from_static(b"ok\n"))),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found\n"))),
    };
    resp.expect("static response parts are valid")
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` is cancelled.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    limits: meridian_api::admin::Limits,
    shutdown: CancellationToken,
) {
    let admin = metrics.admin.clone();
    let handler = move |req| handle(req, metrics.clone());
    meridian_api::admin::serve(listener, handler, limits, admin, shutdown.cancelled()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_member_and_snapshot_metrics() {
        let m = Metrics::default();
        m.set_phase("a", Phase::Synced);
        m.set_synced("a", SystemTime::now() - Duration::from_secs(3));
        m.watch_event("a", "Service");
        m.snapshot_version.set(42);
        m.reconcile_failed("policy", &crate::Error::InvalidObject("x".into()));
        let text = m.render();
        assert!(
            text.contains(r#"meridian_member_phase{cluster="a",phase="Synced"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"meridian_member_phase{cluster="a",phase="Unreachable"} 0"#));
        assert!(
            text.contains(r#"meridian_member_last_sync_age_seconds{cluster="a"} 3."#),
            "{text}"
        );
        assert!(text.contains(r#"meridian_watch_events_total{cluster="a",resource="Service"} 1"#));
        assert!(text.contains("meridian_snapshot_version 42"));
        assert!(text.contains(
            r#"meridian_reconcile_errors_total{controller="policy",error="invalid_object"} 1"#
        ));
    }
}
