//! Status the controller writes into its own cluster: one `GlobalService` per global service
//! (named `<service>.<namespace>`) and one `MemberCluster` per member. Both are cluster-scoped,
//! labelled `app.kubernetes.io/managed-by: meridian`, and deleted when their subject goes.
//!
//! Status is computed by pure functions from the aggregator's view and written with
//! server-side apply, only when it changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use meridian_api::proto::Protocol;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::catalog::{Catalog, Counts, GlobalServiceEntry, ServiceKey};
use crate::crd::{
    ClusterEndpoints, GlobalService, GlobalServicePort, GlobalServiceStatus, LocalityEndpoints,
    MemberCluster, MemberClusterStatus, Phase,
};
use crate::metrics::Metrics;
use crate::policy::{PolicyInForce, condition, set_condition};
use crate::snapshot::VipInfo;
use crate::vip::{FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, Refusal, VipKey};
use crate::{Error, Result};

/// What a member looks like for its `MemberCluster` status.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MemberReport {
    /// Cluster name.
    pub name: String,
    /// The own cluster.
    pub local: bool,
    /// Registration Secret.
    pub secret: Option<String>,
    /// Status to write.
    pub status: MemberClusterStatus,
}

/// Everything status is written from.
#[derive(Debug, Clone, Default)]
pub(crate) struct StatusView {
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// VIPs and listener ports.
    pub vips: BTreeMap<ServiceKey, VipInfo>,
    /// VIPs refused (their service's `VipAllocated` is false), known to the leader.
    pub vip_refusals: BTreeMap<VipKey, Refusal>,
    /// Policies in force.
    pub policies: BTreeMap<ServiceKey, PolicyInForce>,
    /// Members (and rejected registrations).
    pub members: Vec<MemberReport>,
    /// DNS zone of hostnames.
    pub zone: String,
    /// The MCS view: ServiceImports and the own cluster's ServiceExports ([`crate::mcs`]).
    pub mcs: Arc<crate::mcs::McsView>,
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Http => "HTTP",
        Protocol::Http2 => "HTTP2",
        Protocol::Grpc => "GRPC",
    }
}

fn locality_counts(m: &BTreeMap<meridian_api::Locality, Counts>) -> Vec<LocalityEndpoints> {
    m.iter()
        .map(|(l, c)| LocalityEndpoints {
            locality: l.to_string(),
            ready: c.ready,
            total: c.total,
        })
        .collect()
}

/// `Ready`'s message: the counts, and the endpoints left out as not tunnel targets.
fn ready_message(svc: &GlobalServiceEntry, total: Counts) -> String {
    let mut message = format!("{} of {} endpoints ready", total.ready, total.total);
    let skipped: u32 = svc.skipped.values().sum();
    if skipped > 0 {
        let reasons: Vec<&str> = svc.skipped.keys().map(|s| s.label()).collect();
        message.push_str(&format!(
            "; {skipped} endpoint(s) skipped ({}): not IPs of Pods of namespace {}, see the {} annotation",
            reasons.join(", "),
            svc.key.namespace,
            crate::targets::ALLOW_EXTERNAL_ENDPOINTS_ANNOTATION
        ));
    }
    message
}

/// The status of one global service. `previous` conditions keep their transition times;
/// `refused` is the first of its VIPs that was refused, if any.
pub(crate) fn global_service_status(
    svc: &GlobalServiceEntry,
    vip: Option<&VipInfo>,
    refused: Option<(&VipKey, &Refusal)>,
    policy: Option<&PolicyInForce>,
    zone: &str,
    previous: &[Condition],
) -> GlobalServiceStatus {
    let total = svc.total_counts();
    let counts = svc.counts();
    let vip_ip = vip.map(|v| v.vip.clone()).filter(|v| !v.is_empty());
    let mut conditions = previous.to_vec();
    set_condition(
        &mut conditions,
        condition(
            "Ready",
            total.ready > 0,
            if total.ready > 0 {
                "EndpointsReady"
            } else {
                "NoReadyEndpoints"
            },
            ready_message(svc, total),
            None,
        ),
    );
    set_condition(
        &mut conditions,
        match (&vip_ip, refused) {
            (_, Some((key, r))) => {
                condition("VipAllocated", false, r.reason(), r.message(key), None)
            }
            (Some(ip), None) => {
                condition("VipAllocated", true, "Allocated", format!("VIP {ip}"), None)
            }
            (None, None) => condition(
                "VipAllocated",
                false,
                "Pending",
                "the managed VIP Service is not applied yet".into(),
                None,
            ),
        },
    );
    GlobalServiceStatus {
        hostname: svc.key.hostname(zone),
        vip: vip_ip,
        ports: svc
            .ports
            .iter()
            .map(|p| GlobalServicePort {
                name: p.name.clone(),
                port: p.port,
                protocol: protocol_name(p.protocol).to_owned(),
                listener_port: vip.and_then(|v| v.listeners.get(&p.name).copied()),
            })
            .collect(),
        ready_summary: format!("{}/{}", total.ready, total.total),
        cluster_summary: svc.clusters.iter().cloned().collect::<Vec<_>>().join(","),
        clusters: counts
            .iter()
            .map(|(cluster, (c, per))| ClusterEndpoints {
                cluster: cluster.clone(),
                ready: c.ready,
                total: c.total,
                stale: svc
                    .endpoints
                    .iter()
                    .any(|e| &e.cluster == cluster && e.stale),
                vip: vip
                    .and_then(|v| v.pinned.get(cluster))
                    .map(|p| p.vip.clone())
                    .filter(|v| !v.is_empty()),
                localities: locality_counts(per),
            })
            .collect(),
        localities: locality_counts(&svc.locality_counts()),
        policy: policy.map(|p| p.name.clone()),
        policy_generation: policy.and_then(|p| p.generation),
        conditions,
    }
}

/// RFC 3339 for a status timestamp.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    Timestamp::try_from(t)
        .map(|t| {
            t.round(k8s_openapi::jiff::Unit::Second)
                .unwrap_or(t)
                .to_string()
        })
        .unwrap_or_default()
}

fn managed_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())])
}

/// Writes `GlobalService` and `MemberCluster` objects.
pub(crate) struct StatusWriter {
    client: Client,
    metrics: Arc<Metrics>,
    services: Managed<GlobalServiceStatus>,
    members: Managed<(MemberClusterStatus, SystemTime)>,
}

/// The objects of one kind the writer manages: the names that exist, and the status last
/// written to each.
struct Managed<S> {
    kind: &'static str,
    known: BTreeSet<String>,
    written: BTreeMap<String, S>,
}

impl<S> Managed<S> {
    /// Creates the object `name` with `spec`; returns whether that succeeded.
    async fn create<K>(
        &mut self,
        api: &Api<K>,
        name: &str,
        spec: &impl Serialize,
        errors: &mut FirstError,
    ) -> bool
    where
        K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let r = apply(api, name, self.kind, spec).await;
        if !errors.note(r, name) {
            return false;
        }
        self.known.insert(name.to_owned());
        true
    }

    /// Deletes the objects not in `wanted` and forgets them; returns the names deleted.
    async fn collect<K>(
        &mut self,
        api: &Api<K>,
        wanted: &BTreeSet<String>,
        errors: &mut FirstError,
    ) -> Vec<String>
    where
        K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let mut deleted = Vec::new();
        for name in self.known.clone().difference(wanted) {
            let r = delete(api, name).await;
            if errors.note(r, name) {
                self.known.remove(name);
                self.written.remove(name);
                deleted.push(name.clone());
            }
        }
        deleted
    }
}

/// A member status older than this is rewritten even if only `lastSyncTime` moved.
const SYNC_TIME_REFRESH: Duration = Duration::from_secs(30);

/// The first error of one pass of writes; every error is logged and counted.
struct FirstError {
    first: Result<()>,
    metrics: Arc<Metrics>,
}

impl FirstError {
    /// Notes the result of writing `what`; returns whether it succeeded.
    fn note(&mut self, r: Result<()>, what: &str) -> bool {
        let Err(e) = r else {
            return true;
        };
        warn!(object = what, error = %e, "status write failed");
        self.metrics.reconcile_failed("status", &e);
        if self.first.is_ok() {
            self.first = Err(e);
        }
        false
    }
}

impl StatusWriter {
    /// Lists the managed objects that exist, so stale ones can be collected.
    pub(crate) async fn start(client: Client, metrics: Arc<Metrics>) -> Result<StatusWriter> {
        let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let gs: Api<GlobalService> = Api::all(client.clone());
        let mc: Api<MemberCluster> = Api::all(client.clone());
        let known_services = gs
            .list(&lp)
            .await?
            .items
            .iter()
            .map(|o| o.name_any())
            .collect();
        let known_members = mc
            .list(&lp)
            .await?
            .items
            .iter()
            .map(|o| o.name_any())
            .collect();
        // Existing statuses are taken over so transition times survive restarts.
        let mut services: BTreeMap<_, _> = gs
            .list(&lp)
            .await?
            .items
            .into_iter()
            .filter_map(|o| Some((o.name_any(), o.status?)))
            .collect();
        services.retain(|_, s: &mut GlobalServiceStatus| !s.conditions.is_empty());
        Ok(StatusWriter {
            services: Managed {
                kind: "GlobalService",
                known: known_services,
                written: services,
            },
            members: Managed {
                kind: "MemberCluster",
                known: known_members,
                written: BTreeMap::new(),
            },
            client,
            metrics,
        })
    }

    /// Writes everything that changed since the last call; the first error is returned
    /// after trying the rest.
    pub(crate) async fn write(&mut self, view: &StatusView) -> Result<()> {
        let mut errors = FirstError {
            first: Ok(()),
            metrics: self.metrics.clone(),
        };
        self.write_services(view, &mut errors).await;
        self.write_members(view, &mut errors).await;
        errors.first
    }

    /// The GlobalService of every catalog entry; those of entries gone are deleted.
    async fn write_services(&mut self, view: &StatusView, errors: &mut FirstError) {
        let api: Api<GlobalService> = Api::all(self.client.clone());
        for key in view.catalog.services.keys() {
            self.write_service(&api, view, key, errors).await;
        }
        let wanted = view.catalog.services.keys().map(ToString::to_string);
        for name in self.services.collect(&api, &wanted.collect(), errors).await {
            info!(global_service = %name, "GlobalService deleted");
        }
    }

    /// One GlobalService: created when new, its status written when it changed.
    async fn write_service(
        &mut self,
        api: &Api<GlobalService>,
        view: &StatusView,
        key: &ServiceKey,
        errors: &mut FirstError,
    ) {
        let Some(svc) = view.catalog.services.get(key) else {
            return;
        };
        let name = key.to_string();
        let previous = self
            .services
            .written
            .get(&name)
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let refused = view
            .vip_refusals
            .range(VipKey::global(key.clone())..)
            .take_while(|(k, _)| &k.service == key)
            .next();
        let status = global_service_status(
            svc,
            view.vips.get(key),
            refused,
            view.policies.get(key),
            &view.zone,
            &previous,
        );
        if !self.services.known.contains(&name) {
            let spec = crate::crd::GlobalServiceSpec {
                service: key.name.clone(),
                namespace: key.namespace.clone(),
            };
            if !self.services.create(api, &name, &spec, errors).await {
                return;
            }
            info!(global_service = %name, "GlobalService created");
        }
        if self.services.written.get(&name) != Some(&status) {
            let r = apply_status(api, &name, "GlobalService", &status).await;
            if errors.note(r, &name) {
                debug!(global_service = %name, ready = %status.ready_summary, "status written");
                self.services.written.insert(name, status);
            }
        }
    }

    /// The MemberCluster of every member and rejected registration; those gone are deleted.
    async fn write_members(&mut self, view: &StatusView, errors: &mut FirstError) {
        let api: Api<MemberCluster> = Api::all(self.client.clone());
        let now = SystemTime::now();
        for m in &view.members {
            self.write_member(&api, m, now, errors).await;
        }
        let wanted = view.members.iter().map(|m| m.name.clone());
        for name in self.members.collect(&api, &wanted.collect(), errors).await {
            info!(cluster = %name, "MemberCluster deleted");
        }
    }

    /// One MemberCluster: created when new, its status written when it changed (or its
    /// last sync time is older than [`SYNC_TIME_REFRESH`]).
    async fn write_member(
        &mut self,
        api: &Api<MemberCluster>,
        m: &MemberReport,
        now: SystemTime,
        errors: &mut FirstError,
    ) {
        if !self.members.known.contains(&m.name) {
            // Without `drain`: server-side apply then never owns `spec.drain`, so the
            // user's drain survives every apply by this field manager.
            let spec = crate::crd::MemberClusterSpec {
                local: m.local,
                secret: m.secret.clone(),
                drain: None,
            };
            if !self.members.create(api, &m.name, &spec, errors).await {
                return;
            }
        }
        let fresh = match self.members.written.get(&m.name) {
            Some((old, at)) => {
                let mut a = old.clone();
                let mut b = m.status.clone();
                a.last_sync_time = None;
                b.last_sync_time = None;
                a == b
                    && (old.last_sync_time == m.status.last_sync_time
                        || now.duration_since(*at).unwrap_or_default() < SYNC_TIME_REFRESH)
            }
            None => false,
        };
        if fresh {
            return;
        }
        let r = apply_status(api, &m.name, "MemberCluster", &m.status).await;
        if errors.note(r, &m.name) {
            if m.status.phase != Phase::Synced {
                debug!(cluster = %m.name, phase = %m.status.phase, "member status written");
            }
            self.members
                .written
                .insert(m.name.clone(), (m.status.clone(), now));
        }
    }

    /// Writes every view it is sent, newest first, retrying failures. Runs until the sender
    /// is dropped.
    pub(crate) async fn run(mut self, mut rx: watch::Receiver<Option<Arc<StatusView>>>) {
        loop {
            let view = rx.borrow_and_update().clone();
            if let Some(view) = view
                && self.write(&view).await.is_err()
            {
                // Retry soon, unless something newer arrives first.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    r = rx.changed() => if r.is_err() { return },
                }
                continue;
            }
            if rx.changed().await.is_err() {
                return;
            }
            // Status is for humans: at most a few writes a second.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Creates or updates the object `name` of `kind` with `spec` (server-side apply).
async fn apply<K>(api: &Api<K>, name: &str, kind: &str, spec: &impl Serialize) -> Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = Patch::Apply(serde_json::json!({
        "apiVersion": "meridian.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "labels": managed_labels()},
        "spec": spec,
    }));
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &patch)
        .await?;
    Ok(())
}

/// Writes the status of the object `name` of `kind` (server-side apply).
async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    kind: &str,
    status: &impl Serialize,
) -> Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = Patch::Apply(serde_json::json!({
        "apiVersion": "meridian.io/v1alpha1",
        "kind": kind,
        "status": status,
    }));
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &patch)
        .await?;
    Ok(())
}

/// Deletes the object `name`; one already gone counts as deleted.
async fn delete<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::MemberInput;
    use crate::fixtures::*;

    #[test]
    fn global_service_status_counts_per_cluster_and_locality() {
        let a = MemberInput::test("a")
            .with_node("n1", "eu", "eu-1", "")
            .with_node("n2", "eu", "eu-2", "")
            .with_service(service("demo", "echo", &[("http", 80, None)], true))
            .with_slice(slice(
                "demo",
                "echo",
                &[("http", 8080)],
                &[
                    ("10.0.0.1", true, "n1", "p1"),
                    ("10.0.0.2", false, "n1", "p2"),
                    ("10.0.0.3", true, "n2", "p3"),
                ],
            ));
        let mut b = MemberInput::test("b")
            .with_node("m1", "us", "us-1", "")
            .with_service(service("demo", "echo", &[("http", 80, None)], true))
            .with_slice(slice(
                "demo",
                "echo",
                &[("http", 8080)],
                &[("10.1.0.1", true, "m1", "q1")],
            ));
        b.stale = true;
        let cat = Catalog::build(&[a, b]);
        let svc = cat.services.values().next().unwrap();
        let vip = VipInfo {
            vip: "10.96.0.9".into(),
            listeners: BTreeMap::from([("http".to_owned(), 15100)]),
            pinned: BTreeMap::from([(
                "a".to_owned(),
                VipInfo {
                    vip: "10.96.0.10".into(),
                    ..VipInfo::default()
                },
            )]),
        };
        let st = global_service_status(svc, Some(&vip), None, None, "global", &[]);
        assert_eq!(st.hostname, "echo.demo.global");
        assert_eq!(st.ready_summary, "3/4");
        assert_eq!(st.cluster_summary, "a,b");
        assert_eq!(st.vip.as_deref(), Some("10.96.0.9"));
        assert_eq!(st.ports[0].listener_port, Some(15100));
        assert_eq!(st.ports[0].protocol, "HTTP");
        let a = &st.clusters[0];
        assert_eq!((a.ready, a.total, a.stale), (2, 3, false));
        assert_eq!(a.vip.as_deref(), Some("10.96.0.10"), "the VIP pinned to a");
        assert_eq!(st.clusters[1].vip, None, "none pinned to b yet");
        assert_eq!(
            a.localities,
            vec![
                LocalityEndpoints {
                    locality: "eu/eu-1".into(),
                    ready: 1,
                    total: 2
                },
                LocalityEndpoints {
                    locality: "eu/eu-2".into(),
                    ready: 1,
                    total: 1
                },
            ]
        );
        assert!(st.clusters[1].stale);
        assert_eq!(st.localities.len(), 3);
        // Unchanged inputs give an equal status (transition times kept).
        let again = global_service_status(svc, Some(&vip), None, None, "global", &st.conditions);
        assert_eq!(again, st);
    }
    #[test]
    fn refused_vips_and_skipped_endpoints_are_reported() {
        let mut manual = slice(
            "demo",
            "echo",
            &[("tcp", 1)],
            &[("10.0.0.1", true, "n", "p")],
        );
        manual.endpoints[0].target_ref = None;
        let a = MemberInput::test("a")
            .with_service(service("demo", "echo", &[("tcp", 1, None)], true))
            .with_slice(manual);
        let cat = Catalog::build(&[a]);
        let svc = cat.services.values().next().unwrap();
        let key = VipKey::pinned(svc.key.clone(), "a");
        let refusal = Refusal::PortsExhausted {
            range: "15000-15003".into(),
            needed: 1,
        };
        let st = global_service_status(svc, None, Some((&key, &refusal)), None, "global", &[]);
        let vip = st
            .conditions
            .iter()
            .find(|c| c.type_ == "VipAllocated")
            .unwrap();
        assert_eq!(
            (vip.status.as_str(), vip.reason.as_str()),
            ("False", "PortsExhausted")
        );
        assert!(
            vip.message.contains("the VIP pinned to a"),
            "{}",
            vip.message
        );
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.reason, "NoReadyEndpoints");
        assert!(
            ready
                .message
                .contains("1 endpoint(s) skipped (no_target_ref)"),
            "{}",
            ready.message
        );
    }
}
