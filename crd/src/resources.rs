//! Meridian's custom resources, group `meridian.io`, version `v1alpha1`.
//!
//! - [`GlobalTrafficPolicy`] (namespaced, written by users): `spec.service` plus the api
//!   crate's [`TrafficPolicy`] fields, flattened so the YAML reads like Istio's.
//! - [`GlobalService`] (cluster-scoped, written by the controller): one per exported service,
//!   named `<service>.<namespace>`, a status view of the catalog.
//! - [`MemberCluster`] (cluster-scoped, written by the controller): one per registered cluster.
//!
//! The YAML under `manifests/crds/` is generated from these types (`crdgen`) and a test fails
//! when it drifts.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use meridian_api::TrafficPolicy;

use crate::drain::Drain;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every Meridian resource.
pub const GROUP: &str = "meridian.io";
/// API version of every Meridian resource.
pub const VERSION: &str = "v1alpha1";

/// Distribution and failover rules for one exported Service, in the Service's namespace.
///
/// ```yaml
/// apiVersion: meridian.io/v1alpha1
/// kind: GlobalTrafficPolicy
/// metadata: {name: echo, namespace: demo}
/// spec:
///   service: echo
///   localityLbSetting:
///     failover: [{from: eu, to: us}]
/// ```
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "meridian.io",
    version = "v1alpha1",
    kind = "GlobalTrafficPolicy",
    namespaced,
    status = "GlobalTrafficPolicyStatus",
    shortname = "gtp",
    category = "meridian",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GlobalTrafficPolicySpec {
    /// Name of the Service (in this namespace) the policy applies to.
    #[schemars(length(min = 1, max = 63))]
    pub service: String,
    /// The policy itself: `localityLbSetting`, `outlierDetection`, `overprovisioningFactor`,
    /// `panicThreshold`, `subsets`, `http`.
    #[serde(flatten)]
    pub policy: TrafficPolicy,
}

/// What the controller made of a [`GlobalTrafficPolicy`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GlobalTrafficPolicyStatus {
    /// `Accepted`: True when the current generation is valid and in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The generation of the policy in force (the last accepted one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_generation: Option<i64>,
    /// The policy in force; kept while a later, invalid generation is rejected, so it
    /// survives controller restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<TrafficPolicy>,
}

/// Identifies the exported Service a [`GlobalService`] describes.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "meridian.io",
    version = "v1alpha1",
    kind = "GlobalService",
    status = "GlobalServiceStatus",
    shortname = "gsvc",
    category = "meridian",
    printcolumn = r#"{"name":"Hostname","type":"string","jsonPath":".status.hostname"}"#,
    printcolumn = r#"{"name":"VIP","type":"string","jsonPath":".status.vip"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.readySummary"}"#,
    printcolumn = r#"{"name":"Clusters","type":"string","jsonPath":".status.clusterSummary"}"#,
    printcolumn = r#"{"name":"Policy","type":"string","jsonPath":".status.policy"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GlobalServiceSpec {
    /// Name of the exported Service.
    pub service: String,
    /// Namespace of the exported Service.
    pub namespace: String,
}

/// The catalog's view of one global service, as seen by this cluster's controller.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GlobalServiceStatus {
    /// DNS name, `<service>.<namespace>.global`.
    pub hostname: String,
    /// This cluster's VIP (ClusterIP of the managed Service), once allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// Service ports with their protocol and this cluster's gateway listener port.
    #[serde(default)]
    pub ports: Vec<GlobalServicePort>,
    /// Ready and total endpoints over all clusters, e.g. `3/4`.
    pub ready_summary: String,
    /// Exporting clusters, comma-separated, for the printer column.
    pub cluster_summary: String,
    /// Per exporting cluster: endpoint counts, broken down by locality.
    #[serde(default)]
    pub clusters: Vec<ClusterEndpoints>,
    /// Per locality (over all clusters): endpoint counts.
    #[serde(default)]
    pub localities: Vec<LocalityEndpoints>,
    /// Name of the GlobalTrafficPolicy in force (same namespace as the Service), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Generation of that policy in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_generation: Option<i64>,
    /// `Ready` (some endpoint is ready) and `VipAllocated`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One port of a global service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GlobalServicePort {
    /// Port name (empty for a single unnamed port).
    pub name: String,
    /// Port clients use on the VIP.
    pub port: u32,
    /// `TCP`, `HTTP`, `HTTP2` or `GRPC`.
    pub protocol: String,
    /// Gateway listener port serving it in this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_port: Option<u32>,
}

/// Endpoint counts of one cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterEndpoints {
    /// Member cluster name.
    pub cluster: String,
    /// Ready endpoints.
    pub ready: u32,
    /// All endpoints, ready or not.
    pub total: u32,
    /// True while the cluster is unreachable and its last endpoints are kept (stale grace).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// The VIP pinned to this cluster (`<cluster>.<service>.<namespace>.global`) in the
    /// controller's cluster, once allocated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
    /// Per locality within the cluster.
    #[serde(default)]
    pub localities: Vec<LocalityEndpoints>,
}

/// Endpoint counts of one locality.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalityEndpoints {
    /// `region/zone/subzone` (parts empty when the node has no such label).
    pub locality: String,
    /// Ready endpoints.
    pub ready: u32,
    /// All endpoints, ready or not.
    pub total: u32,
}

/// A registered member cluster. Created and owned by the controller from the registration
/// Secrets; the spec records where the registration came from.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "meridian.io",
    version = "v1alpha1",
    kind = "MemberCluster",
    status = "MemberClusterStatus",
    shortname = "mc",
    category = "meridian",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".status.server"}"#,
    printcolumn = r#"{"name":"Endpoints-API","type":"string","jsonPath":".status.endpointApi"}"#,
    printcolumn = r#"{"name":"Services","type":"integer","jsonPath":".status.services"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"integer","jsonPath":".status.endpoints"}"#,
    printcolumn = r#"{"name":"Last-Sync","type":"date","jsonPath":".status.lastSyncTime"}"#,
    printcolumn = r#"{"name":"Drain","type":"string","jsonPath":".status.drain"}"#,
    printcolumn = r#"{"name":"Message","type":"string","priority":1,"jsonPath":".status.message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterSpec {
    /// True for the controller's own cluster (always a member, no Secret).
    #[serde(default)]
    pub local: bool,
    /// The registration Secret (`<namespace>/<name>`), for remote members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Maintenance drain, set by `meridianctl cluster drain` (absent: not drained). The
    /// controller never writes this field: it applies only `local` and `secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
}

/// Connection phase of a member cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Client built, first lists in flight.
    #[default]
    Connecting,
    /// Every reflector has listed and the API server answers.
    Synced,
    /// The API server cannot be reached (its last endpoints are kept for the stale grace).
    Unreachable,
    /// The registration is refused (bad cluster name, no `kubeconfig` key, a kubeconfig
    /// outside the allow-list: the message names the field) or the server rejects its
    /// credentials (HTTP 401/403).
    InvalidCredentials,
    /// The registration claims a cluster name that belongs to an older registration Secret
    /// (or to the controller's own cluster); the message names the owner. Reported on a
    /// `MemberCluster` named `<cluster>.<secret>`; the owner is undisturbed.
    Conflict,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Connecting => "Connecting",
            Phase::Synced => "Synced",
            Phase::Unreachable => "Unreachable",
            Phase::InvalidCredentials => "InvalidCredentials",
            Phase::Conflict => "Conflict",
        })
    }
}

/// What the controller sees of a member cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterStatus {
    /// Connection phase.
    pub phase: Phase,
    /// API server URL from the kubeconfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Endpoint API read in this cluster: `discovery.k8s.io/v1` or `v1/Endpoints`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_api: Option<String>,
    /// Last time every reflector was in sync and the server answered (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// Exported Services seen.
    #[serde(default)]
    pub services: u32,
    /// Endpoints of exported Services seen.
    #[serde(default)]
    pub endpoints: u32,
    /// Nodes seen.
    #[serde(default)]
    pub nodes: u32,
    /// Address of the member's east-west gateway, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_address: Option<String>,
    /// Human-readable detail, e.g. the last connection error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The drain in force: `Draining 40%` or `Drained`, or why `spec.drain` is refused
    /// (`Invalid: ...`); absent when not drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<String>,
    /// Drain progress in permille (0..=1000), while drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_permille: Option<u32>,
}

/// Every Meridian CRD, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        GlobalTrafficPolicy::crd(),
        GlobalService::crd(),
        MemberCluster::crd(),
    ]
}

/// The YAML committed under `manifests/crds/`: one file per CRD, `(file name, contents)`.
pub fn manifests() -> Vec<(String, String)> {
    all()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.spec.names.plural);
            let yaml = serde_yaml_ng::to_string(&crd).expect("a CRD always serializes to YAML");
            (
                name,
                format!("# Generated by `cargo run -p meridian-controller --bin crdgen`; do not edit.\n---\n{yaml}"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_spec_reads_like_istio() {
        let yaml = r#"
service: echo
localityLbSetting:
  distribute:
    - from: eu/a/*
      to: {"eu/a/*": 80, "eu/b/*": 20}
  failover:
    - {from: eu, to: us}
outlierDetection: {consecutive5xxErrors: 3}
"#;
        let spec: GlobalTrafficPolicySpec = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(spec.service, "echo");
        spec.policy.validate().unwrap();
        let lb = spec.policy.locality_lb_setting.as_ref().unwrap();
        assert_eq!(lb.failover[0].to, "us");
        let back: GlobalTrafficPolicySpec =
            serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn policy_schema_is_flat() {
        let crd = GlobalTrafficPolicy::crd();
        let v = serde_json::to_value(&crd).unwrap();
        let props = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        for field in [
            "service",
            "localityLbSetting",
            "outlierDetection",
            "overprovisioningFactor",
            "panicThreshold",
            "subsets",
            "http",
        ] {
            assert!(props.get(field).is_some(), "spec.{field} missing: {props}");
        }
    }

    /// The committed YAML must be what the types generate; regenerate with
    /// `cargo run -p meridian-controller --bin crdgen manifests/crds`.
    #[test]
    fn committed_manifests_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds");
        for (name, want) in manifests() {
            let path = dir.join(&name);
            let have = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                have == want,
                "{} drifted from the Rust types; regenerate it with \
                 `cargo run -p meridian-controller --bin crdgen manifests/crds`",
                path.display()
            );
        }
    }

    #[test]
    fn scopes() {
        assert_eq!(GlobalTrafficPolicy::crd().spec.scope, "Namespaced");
        assert_eq!(GlobalService::crd().spec.scope, "Cluster");
        assert_eq!(MemberCluster::crd().spec.scope, "Cluster");
    }
}
