//! Writes what [`super::resolve`] decided into the own cluster: one `ServiceImport` per
//! exported service (deleted when no cluster exports it any more), the conditions of the own
//! cluster's `ServiceExport`s, and the `cluster.clusterset.k8s.io` ClusterProperty when it
//! is absent. Only the leader writes; objects are written with server-side apply and only
//! when they changed.
//!
//! No EndpointSlices are written for imports: Meridian's data plane is the gateway behind
//! the ClusterSet IP (the VIP), which picks endpoints by locality itself; slices of remote
//! pod addresses would advertise addresses that are not routable from this cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::resolve::{ExportState, McsView, ResolvedImport};
use super::types::{
    CLUSTER_ID_PROPERTY, ClusterProperty, ClusterPropertySpec, ImportType, MCS_GROUP, MCS_VERSION,
    ServiceImport,
};
use crate::catalog::ServiceKey;
use crate::policy::{condition, set_condition};
use crate::snapshot::VipInfo;
use crate::status::StatusView;
use crate::vip::{FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL};
use crate::{Error, Result};

/// The ServiceImport of one exported service in this cluster, as JSON for server-side apply.
pub(crate) fn import_object(
    key: &ServiceKey,
    import: &ResolvedImport,
    vip: Option<&VipInfo>,
) -> serde_json::Value {
    let ips: Vec<String> = match import.type_ {
        ImportType::Headless => Vec::new(),
        ImportType::ClusterSetIP => vip
            .map(|v| v.vip.clone())
            .filter(|v| !v.is_empty())
            .into_iter()
            .collect(),
    };
    let families: Vec<&str> = ips
        .iter()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" })
        .collect();
    let mut spec = json!({
        "type": import.type_,
        "ports": import.ports,
    });
    if !ips.is_empty() {
        spec["ips"] = json!(ips);
        spec["ipFamilies"] = json!(families);
    }
    if let Some(a) = &import.session_affinity {
        spec["sessionAffinity"] = json!(a);
    }
    if let Some(c) = &import.session_affinity_config {
        spec["sessionAffinityConfig"] = json!(c);
    }
    json!({
        "apiVersion": format!("{MCS_GROUP}/{MCS_VERSION}"),
        "kind": "ServiceImport",
        "metadata": {
            "name": key.name,
            "namespace": key.namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
        },
        "spec": spec,
    })
}

/// Whether an import is usable: a ClusterSet IP is assigned (or it is headless).
fn import_ready(object: &serde_json::Value) -> bool {
    object["spec"]["type"] == "Headless" || object["spec"]["ips"].is_array()
}

/// The conditions of one of the own cluster's ServiceExports. `previous` keeps transition
/// times.
pub(crate) fn export_conditions(
    state: &ExportState,
    import: Option<&ResolvedImport>,
    local: &str,
    previous: &[Condition],
) -> Vec<Condition> {
    let mut out = previous.to_vec();
    match state {
        ExportState::Invalid(why) => {
            let message = match why {
                super::resolve::Invalid::NoService => {
                    "no Service of this namespace and name".to_owned()
                }
                super::resolve::Invalid::InvalidServiceType => {
                    "ExternalName Services cannot be exported".to_owned()
                }
            };
            set_condition(
                &mut out,
                condition("Valid", false, why.reason(), message, None),
            );
            set_condition(
                &mut out,
                condition(
                    "Ready",
                    false,
                    "Failed",
                    "the export is not valid".into(),
                    None,
                ),
            );
            out.retain(|c| c.type_ != "Conflict");
        }
        ExportState::Valid => {
            set_condition(
                &mut out,
                condition(
                    "Valid",
                    true,
                    "Valid",
                    "the Service is exported".into(),
                    None,
                ),
            );
            set_condition(
                &mut out,
                condition(
                    "Ready",
                    true,
                    "Exported",
                    "exported to the ClusterSet through Meridian's gateways".into(),
                    None,
                ),
            );
            let conflict = match import {
                Some(i) if !i.conflicts.is_empty() => {
                    let reasons: Vec<&str> = i.conflicts.iter().map(|c| c.reason()).collect();
                    let message = if i.oldest == local {
                        format!(
                            "clusters {} disagree; this cluster's export is the oldest and is in use",
                            i.clusters.iter().cloned().collect::<Vec<_>>().join(", ")
                        )
                    } else {
                        format!(
                            "clusters {} disagree; the oldest export, of cluster {}, is in use",
                            i.clusters.iter().cloned().collect::<Vec<_>>().join(", "),
                            i.oldest
                        )
                    };
                    condition("Conflict", true, &reasons.join(","), message, None)
                }
                _ => condition(
                    "Conflict",
                    false,
                    "NoConflicts",
                    "the exporting clusters agree".into(),
                    None,
                ),
            };
            set_condition(&mut out, conflict);
        }
    }
    out
}

/// Conditions compared without their transition times.
fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    let strip = |c: &[Condition]| -> Vec<(String, String, String, String)> {
        let mut v: Vec<_> = c
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                )
            })
            .collect();
        v.sort();
        v
    };
    strip(a) == strip(b)
}

/// Writes MCS objects in the own cluster.
pub(crate) struct McsWriter {
    client: Client,
    cluster: String,
    /// Managed ServiceImports that exist.
    known: BTreeSet<ServiceKey>,
    /// What was last applied per ServiceImport (object and status).
    written: BTreeMap<ServiceKey, (serde_json::Value, serde_json::Value)>,
    /// Conditions last written per ServiceExport.
    exports: BTreeMap<ServiceKey, Vec<Condition>>,
    cluster_id_checked: bool,
}

impl McsWriter {
    /// Lists the managed ServiceImports that exist, so stale ones are collected.
    pub(crate) async fn start(client: Client, cluster: String) -> Result<McsWriter> {
        let api: Api<ServiceImport> = Api::all(client.clone());
        let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let known = match api.list(&lp).await {
            Ok(list) => list
                .items
                .iter()
                .filter_map(|i| Some(ServiceKey::new(i.namespace()?, i.name_any())))
                .collect(),
            // The MCS CRDs are optional: nothing to collect where they are not installed.
            Err(kube::Error::Api(s)) if s.code == 404 => BTreeSet::new(),
            Err(e) => return Err(Error::Kube(e)),
        };
        Ok(McsWriter {
            client,
            cluster,
            known,
            written: BTreeMap::new(),
            exports: BTreeMap::new(),
            cluster_id_checked: false,
        })
    }

    /// Creates `cluster.clusterset.k8s.io` with this cluster's name when absent; warns when
    /// it names the cluster otherwise (Meridian uses its member names as cluster ids).
    async fn ensure_cluster_id(&mut self) -> Result<()> {
        let api: Api<ClusterProperty> = Api::all(self.client.clone());
        match api.get_opt(CLUSTER_ID_PROPERTY).await {
            Ok(Some(p)) if p.spec.value != self.cluster => warn!(
                property = CLUSTER_ID_PROPERTY,
                value = %p.spec.value,
                cluster = %self.cluster,
                "the ClusterProperty names this cluster otherwise; Meridian's DNS names use its member name"
            ),
            Ok(Some(_)) => {}
            Ok(None) => {
                let mut p = ClusterProperty::new(
                    CLUSTER_ID_PROPERTY,
                    ClusterPropertySpec {
                        value: self.cluster.clone(),
                    },
                );
                p.metadata.labels = Some(BTreeMap::from([(
                    MANAGED_BY_LABEL.to_owned(),
                    MANAGED_BY.to_owned(),
                )]));
                api.create(&PostParams::default(), &p).await?;
                info!(cluster = %self.cluster, "ClusterProperty {CLUSTER_ID_PROPERTY} created");
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                // Not installed (yet): asked again at the next write.
                debug!("ClusterProperty CRD not installed");
                return Ok(());
            }
            Err(e) => return Err(Error::Kube(e)),
        }
        self.cluster_id_checked = true;
        Ok(())
    }

    /// Writes everything that changed; the first error is returned after trying the rest.
    pub(crate) async fn write(
        &mut self,
        mcs: &McsView,
        vips: &BTreeMap<ServiceKey, VipInfo>,
    ) -> Result<()> {
        let mut first_err: Result<()> = Ok(());
        let mut note = |r: Result<()>, what: &str| match r {
            Ok(()) => true,
            Err(e) => {
                warn!(object = what, error = %e, "MCS write failed");
                if first_err.is_ok() {
                    first_err = Err(e);
                }
                false
            }
        };
        if !self.cluster_id_checked {
            let r = self.ensure_cluster_id().await;
            note(r, CLUSTER_ID_PROPERTY);
        }
        let imports_served = super::served(&self.client).await;
        if imports_served {
            for (key, import) in &mcs.imports {
                let object = import_object(key, import, vips.get(key));
                let status = json!({
                    "apiVersion": format!("{MCS_GROUP}/{MCS_VERSION}"),
                    "kind": "ServiceImport",
                    "status": {
                        "clusters": import.clusters.iter().map(|c| json!({"cluster": c})).collect::<Vec<_>>(),
                        "conditions": [{
                            "type": "Ready",
                            "status": if import_ready(&object) { "True" } else { "False" },
                            "reason": if import_ready(&object) { "Ready" } else { "Pending" },
                            "message": if import_ready(&object) { "imported" } else { "waiting for the ClusterSet IP" },
                            "lastTransitionTime": crate::status::rfc3339(std::time::SystemTime::now()),
                        }],
                    },
                });
                if let Some((o, s)) = self.written.get(key)
                    && *o == object
                    && s["status"]["clusters"] == status["status"]["clusters"]
                    && s["status"]["conditions"][0]["status"]
                        == status["status"]["conditions"][0]["status"]
                {
                    continue;
                }
                let r = self.apply_import(key, &object, &status).await;
                if note(r, &key.to_string()) {
                    if self.known.insert(key.clone()) {
                        info!(service = %key, "ServiceImport written");
                    }
                    self.written.insert(key.clone(), (object, status));
                }
            }
            let stale: Vec<ServiceKey> = self
                .known
                .iter()
                .filter(|k| !mcs.imports.contains_key(*k))
                .cloned()
                .collect();
            for key in stale {
                let api: Api<ServiceImport> = Api::namespaced(self.client.clone(), &key.namespace);
                let r = match api.delete(&key.name, &DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    Err(e) => Err(Error::Kube(e)),
                };
                if note(r, &key.to_string()) {
                    info!(service = %key, "ServiceImport deleted: no cluster exports the service");
                    self.known.remove(&key);
                    self.written.remove(&key);
                }
            }
        }

        for (key, state) in &mcs.exports {
            let previous = self.exports.get(key).cloned().unwrap_or_default();
            let conditions =
                export_conditions(state, mcs.imports.get(key), &self.cluster, &previous);
            if self.exports.contains_key(key) && same_conditions(&previous, &conditions) {
                continue;
            }
            // Typed as metadata: the response is read back, and an export may have no spec.
            let api: Api<super::ExportMeta> = Api::namespaced(self.client.clone(), &key.namespace);
            let patch = Patch::Apply(json!({
                "apiVersion": format!("{MCS_GROUP}/{MCS_VERSION}"),
                "kind": "ServiceExport",
                "status": {"conditions": conditions},
            }));
            let r = api
                .patch_status(
                    &key.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &patch,
                )
                .await
                .map(|_| ())
                .map_err(Error::Kube);
            if note(r, &key.to_string()) {
                debug!(service = %key, "ServiceExport status written");
                self.exports.insert(key.clone(), conditions);
            }
        }
        self.exports.retain(|k, _| mcs.exports.contains_key(k));
        first_err
    }

    async fn apply_import(
        &self,
        key: &ServiceKey,
        object: &serde_json::Value,
        status: &serde_json::Value,
    ) -> Result<()> {
        let api: Api<ServiceImport> = Api::namespaced(self.client.clone(), &key.namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&key.name, &params, &Patch::Apply(object)).await?;
        api.patch_status(&key.name, &params, &Patch::Apply(status))
            .await?;
        Ok(())
    }

    /// Writes every view it is sent, retrying failures. Runs until the sender is dropped.
    pub(crate) async fn run(mut self, mut rx: watch::Receiver<Option<Arc<StatusView>>>) {
        loop {
            let view = rx.borrow_and_update().clone();
            if let Some(view) = view
                && self.write(&view.mcs, &view.vips).await.is_err()
            {
                // Retry soon, or at the next view.
                let _ = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
                continue;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}
