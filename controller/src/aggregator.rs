//! The aggregator: the loop that turns what the members' reflectors hold into the catalog,
//! the VIP Services, the snapshot and the status view.
//!
//! It is level-triggered: any change anywhere pokes one `Notify`; the loop waits a short
//! coalescing delay, then recomputes everything from the current stores. Stale-endpoint
//! grace is a deadline the loop also wakes for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::Store;
use meridian_api::Locality;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, instrument, warn};

use crate::catalog::{self, Catalog, ServiceKey};
use crate::config::Config;
use crate::crd::{GlobalTrafficPolicy, MemberClusterStatus, Phase};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::server::SnapshotPublisher;
use crate::snapshot::{self, PeerInfo, SnapshotInput};
use crate::status::{MemberReport, StatusView, rfc3339};
use crate::vip::{self, VipManager};

/// Delay after a change before recomputing, so bursts of watch events make one pass.
const SETTLE: Duration = Duration::from_millis(25);
/// Recompute at least this often (refreshes member status and retries).
const PERIOD: Duration = Duration::from_secs(10);
/// Retry delay after a failed VIP reconcile.
const VIP_RETRY: Duration = Duration::from_secs(2);

/// The address of a member's gateway: its Service's LoadBalancer ingress (with the port
/// named `tunnel`, else the first), else the registration's `meridian.io/gateway-address`.
pub fn gateway_address(svc: Option<&Service>, fallback: Option<&str>) -> Option<String> {
    let from_lb = svc.and_then(|s| {
        let ingress = s
            .status
            .as_ref()?
            .load_balancer
            .as_ref()?
            .ingress
            .as_ref()?;
        let host = ingress
            .iter()
            .find_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))?;
        let ports = s.spec.as_ref()?.ports.as_ref()?;
        let port = ports
            .iter()
            .find(|p| p.name.as_deref() == Some("tunnel"))
            .or_else(|| ports.first())?
            .port;
        Some(if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        })
    });
    from_lb.or_else(|| fallback.map(str::to_owned))
}

/// Everything the aggregator drives.
pub struct Aggregator {
    config: Arc<Config>,
    registry: Arc<Registry>,
    policies: Store<GlobalTrafficPolicy>,
    vips: VipManager,
    /// The managed VIP Services as the API server has them (what followers serve).
    managed: Store<Service>,
    /// Whether this replica leads (writes VIP Services).
    leader: watch::Receiver<bool>,
    /// Whether `vips` holds the allocation read back since this replica last became leader.
    vips_current: bool,
    publisher: SnapshotPublisher,
    status: watch::Sender<Option<Arc<StatusView>>>,
    notify: Arc<Notify>,
    metrics: Arc<Metrics>,
    started: Instant,
    published: bool,
}

/// What an aggregator reads besides the members: the managed VIP Services and leadership.
pub struct Leadership {
    /// The managed VIP Services (a reflector's store).
    pub managed: Store<Service>,
    /// Whether this replica leads.
    pub leader: watch::Receiver<bool>,
}

impl Aggregator {
    /// Assembles the aggregator.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        registry: Arc<Registry>,
        policies: Store<GlobalTrafficPolicy>,
        vips: VipManager,
        leadership: Leadership,
        publisher: SnapshotPublisher,
        status: watch::Sender<Option<Arc<StatusView>>>,
        notify: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            registry,
            policies,
            vips,
            managed: leadership.managed,
            leader: leadership.leader,
            vips_current: true,
            publisher,
            status,
            notify,
            metrics,
            started: Instant::now(),
            published: false,
        }
    }

    /// Runs until aborted.
    pub async fn run(mut self) {
        loop {
            let deadline = self.pass().await;
            let wake = deadline.unwrap_or_else(|| Instant::now() + PERIOD);
            tokio::select! {
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
                changed = self.leader.changed() => if changed.is_err() { return },
            }
            tokio::time::sleep(SETTLE).await;
        }
    }

    /// One recomputation. Returns when the next one is due at the latest.
    #[instrument(name = "aggregate", skip_all)]
    async fn pass(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let grace = self.config.stale_endpoint_grace;
        let members = self.registry.members();
        let local_name = self.registry.local_name().to_owned();
        let mut deadline: Option<Instant> = Some(now + PERIOD);
        let mut soonest = |t: Instant| {
            deadline = Some(deadline.map_or(t, |d| d.min(t)));
        };

        let mut inputs = Vec::new();
        let mut peers = Vec::new();
        let mut reports = Vec::new();
        let mut local_gateway_locality: Option<Locality> = None;
        let mut node_counts = BTreeMap::new();
        for (name, m) in members.iter() {
            let state = m.state();
            let withdrawn = state
                .lost_since
                .is_some_and(|since| now.duration_since(since) >= grace);
            if let Some(since) = state.lost_since
                && !withdrawn
            {
                soonest(since + grace);
            }
            let stores = m.stores();
            if let Some(stores) = &stores {
                let input = stores.input(name, state.lost_since.is_some());
                node_counts.insert(name.clone(), input.nodes.len() as u32);
                let gw_locality = catalog::service_locality(
                    &input,
                    &self.config.namespace,
                    &self.config.gateway_service,
                );
                if *name == local_name {
                    local_gateway_locality = gw_locality.clone();
                } else if let Some(address) = gateway_address(
                    stores.gateway().as_deref(),
                    m.spec.gateway_address.as_deref(),
                ) {
                    peers.push(PeerInfo {
                        cluster: name.clone(),
                        address,
                        locality: gw_locality.unwrap_or_default(),
                    });
                }
                if withdrawn {
                    debug!(cluster = %name, "member lost beyond the grace: endpoints withdrawn");
                } else {
                    inputs.push(input);
                }
            } else if *name != local_name
                && let Some(address) = m.spec.gateway_address.clone()
            {
                peers.push(PeerInfo {
                    cluster: name.clone(),
                    address,
                    locality: Locality::default(),
                });
            }
            reports.push((name.clone(), m.spec.clone(), state, withdrawn));
        }

        let local_synced = members
            .get(&local_name)
            .is_some_and(|m| m.state().phase == Phase::Synced);
        let others_settled = members
            .values()
            .all(|m| m.state().phase != Phase::Connecting);
        let waited = now.duration_since(self.started) >= self.config.initial_sync_timeout;
        // Nothing is acted on before the members have synced (or the initial timeout passed):
        // a restarting controller must neither hand its gateway a half-empty snapshot nor
        // garbage-collect the VIP Services of services it has not seen yet.
        if !(self.published || (local_synced && (others_settled || waited))) {
            debug!("waiting for the initial sync");
            soonest(self.started + self.config.initial_sync_timeout);
            return deadline;
        }
        // A follower serves the VIPs it reads from the managed Services: not before it has
        // listed them, or its gateways would be told every VIP and listener is gone.
        if !*self.leader.borrow() && self.managed.wait_until_ready().now_or_never().is_none() {
            debug!("waiting for the managed VIP Services to be listed");
            soonest(Instant::now() + SETTLE * 4);
            return deadline;
        }
        let catalog = Arc::new(Catalog::build(&inputs));
        let all_policies = self.policies.state();
        let policies = crate::policy::in_force(&all_policies);
        self.metrics
            .set_policy_rejections(crate::policy::rejections(&all_policies));
        let (vip::Reconciled { vips, refused }, vip_result) = self.vips(&catalog).await;
        if let Err(e) = vip_result {
            warn!(error = %e, "VIP reconcile incomplete, retrying");
            self.metrics.reconcile_failed("vip", &e);
            soonest(Instant::now() + VIP_RETRY);
        }
        self.metrics
            .set_vip_refusals(refused.values().map(vip::Refusal::reason));
        self.metrics.reconciled("aggregate");
        self.metrics
            .catalog_services
            .set(catalog.services.len() as i64);
        self.metrics
            .catalog_endpoints
            .set(catalog.endpoint_count() as i64);
        for (skip, n) in catalog.skipped_counts() {
            self.metrics
                .skipped_endpoints
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: skip.label().to_owned(),
                })
                .set(i64::from(n));
        }

        // Snapshot.
        let policy_specs: BTreeMap<ServiceKey, meridian_api::TrafficPolicy> = policies
            .iter()
            .map(|(k, p)| (k.clone(), p.policy.clone()))
            .collect();
        let snap = snapshot::build(&SnapshotInput {
            cluster: &local_name,
            locality: self
                .config
                .locality()
                .or(local_gateway_locality)
                .unwrap_or_default(),
            trust_domain: &self.config.trust_domain,
            zone: &self.config.zone,
            catalog: Some(&catalog),
            vips: Some(&vips),
            policies: Some(&policy_specs),
            peers,
        });
        {
            let version = snap.version;
            if self.publisher.publish(snap) {
                info!(
                    version,
                    services = catalog.services.len(),
                    "snapshot published"
                );
                self.metrics.snapshot_publishes.inc();
                self.metrics.snapshot_version.set(version);
            }
            self.published = true;
        }

        // Status view.
        let mut members_view: Vec<MemberReport> = reports
            .into_iter()
            .map(|(name, spec, state, withdrawn)| {
                let services = catalog
                    .services
                    .values()
                    .filter(|s| s.clusters.contains(&name))
                    .count() as u32;
                let endpoints = catalog
                    .services
                    .values()
                    .flat_map(|s| s.endpoints.iter())
                    .filter(|e| e.cluster == name)
                    .count() as u32;
                let mut message = state.message.clone();
                if withdrawn {
                    message = Some(format!(
                        "{}; endpoints withdrawn after the stale grace",
                        message.unwrap_or_else(|| "unreachable".into())
                    ));
                } else if state.lost_since.is_some() && state.last_sync.is_some() {
                    // Only a member that synced once has endpoints to keep.
                    message = Some(format!(
                        "{}; last endpoints kept as stale",
                        message.unwrap_or_else(|| "unreachable".into())
                    ));
                }
                let status = MemberClusterStatus {
                    phase: state.phase,
                    server: state.server.clone(),
                    endpoint_api: state.endpoint_api.map(|a| a.to_string()),
                    last_sync_time: state.last_sync.map(rfc3339),
                    services,
                    endpoints,
                    nodes: node_counts.get(&name).copied().unwrap_or_default(),
                    gateway_address: snapshot_peer_address(&name, &members, &local_name),
                    message,
                };
                MemberReport {
                    local: name == local_name,
                    secret: spec.secret.clone(),
                    name,
                    status,
                }
            })
            .collect();
        for r in self.registry.rejected().iter() {
            if members_view.iter().any(|m| m.name == r.report_as) {
                continue; // never hide a member behind a rejected registration
            }
            members_view.push(MemberReport {
                name: r.report_as.clone(),
                local: false,
                secret: Some(r.secret.clone()),
                status: MemberClusterStatus {
                    phase: r.phase,
                    message: Some(r.reason.clone()),
                    ..MemberClusterStatus::default()
                },
            });
        }
        let _ = self.status.send(Some(Arc::new(StatusView {
            catalog,
            vips,
            vip_refusals: refused,
            policies,
            members: members_view,
            zone: self.config.zone.clone(),
        })));
        deadline
    }
}

impl Aggregator {
    /// VIPs and listener ports: the leader allocates and applies them (and knows which
    /// VIPs it refused); other replicas read what the leader applied.
    async fn vips(&mut self, catalog: &Catalog) -> (vip::Reconciled, crate::Result<()>) {
        let followed = |managed: &Store<Service>| vip::Reconciled {
            vips: vip::vips_of(managed.state().iter().map(|s| s.as_ref()), catalog),
            refused: BTreeMap::new(),
        };
        if !*self.leader.borrow_and_update() {
            self.vips_current = false;
            return (followed(&self.managed), Ok(()));
        }
        if !self.vips_current {
            // Another leader may have allocated since this replica last wrote.
            if let Err(e) = self.vips.read_back().await {
                return (followed(&self.managed), Err(e));
            }
            self.vips_current = true;
        }
        self.vips.reconcile(catalog).await
    }
}

fn snapshot_peer_address(
    name: &str,
    members: &BTreeMap<String, Arc<crate::member::Member>>,
    local: &str,
) -> Option<String> {
    if name == local {
        return None;
    }
    let m = members.get(name)?;
    gateway_address(
        m.stores().and_then(|s| s.gateway()).as_deref(),
        m.spec.gateway_address.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
    };

    #[test]
    fn gateway_address_prefers_load_balancer() {
        let svc = Service {
            spec: Some(ServiceSpec {
                ports: Some(vec![
                    ServicePort {
                        name: Some("admin".into()),
                        port: 15021,
                        ..Default::default()
                    },
                    ServicePort {
                        name: Some("tunnel".into()),
                        port: 15443,
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(vec![LoadBalancerIngress {
                        ip: Some("192.0.2.1".into()),
                        ..Default::default()
                    }]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            gateway_address(Some(&svc), Some("127.0.0.9:1")).as_deref(),
            Some("192.0.2.1:15443")
        );
        assert_eq!(
            gateway_address(Some(&Service::default()), Some("127.0.0.9:1")).as_deref(),
            Some("127.0.0.9:1")
        );
        assert_eq!(gateway_address(None, None), None);
    }
}
