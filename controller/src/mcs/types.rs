//! The Multi-Cluster Services API resources Meridian reads and writes: `ServiceExport` and
//! `ServiceImport` (`multicluster.x-k8s.io`, KEP-1645) and `ClusterProperty`
//! (`about.k8s.io`, KEP-2149).
//!
//! The CRDs serve `v1alpha1` and `v1beta1` with the same schema and store `v1beta1`, as
//! upstream mcs-api v0.5 does, so clients of either version work without a conversion
//! webhook. The YAML under `manifests/mcs/` is generated from these types ([`manifests`])
//! and a test fails when it drifts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::SessionAffinityConfig;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of ServiceExport and ServiceImport.
pub const MCS_GROUP: &str = "multicluster.x-k8s.io";
/// The version Meridian reads and writes (the storage version).
pub const MCS_VERSION: &str = "v1beta1";
/// The older version the CRDs also serve.
pub const MCS_LEGACY_VERSION: &str = "v1alpha1";
/// The well-known ClusterProperty naming this cluster in the ClusterSet (KEP-2149).
pub const CLUSTER_ID_PROPERTY: &str = "cluster.clusterset.k8s.io";

/// Declares that the Service of the same namespace and name is exported to the ClusterSet.
///
/// ```yaml
/// apiVersion: multicluster.x-k8s.io/v1beta1
/// kind: ServiceExport
/// metadata: {name: echo, namespace: demo}
/// ```
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1beta1",
    kind = "ServiceExport",
    namespaced,
    status = "ServiceExportStatus",
    shortname = "svcex",
    shortname = "svcexport",
    category = "multicluster",
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Conflict","type":"string","jsonPath":".status.conditions[?(@.type==\"Conflict\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExportSpec {
    /// Labels to put on the ServiceImport (optional for implementations; Meridian does not
    /// propagate them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exported_labels: BTreeMap<String, String>,
    /// Annotations to put on the ServiceImport (not propagated by Meridian).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exported_annotations: BTreeMap<String, String>,
}

/// What the controller of the export's own cluster made of a [`ServiceExport`]:
/// conditions `Valid`, `Ready` and `Conflict`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExportStatus {
    /// `Valid`, `Ready`, `Conflict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A service imported from the clusters of the ClusterSet, in the exported Service's
/// namespace; written by Meridian in every member cluster.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1beta1",
    kind = "ServiceImport",
    namespaced,
    status = "ServiceImportStatus",
    shortname = "svcim",
    shortname = "svcimport",
    category = "multicluster",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".spec.ips"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    /// The union of the exported Services' ports.
    pub ports: Vec<ImportPort>,
    /// The ClusterSet IP(s) in this cluster: at most one per family; empty when headless.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub ips: Vec<String>,
    /// `ClusterSetIP` or `Headless`.
    #[serde(rename = "type")]
    pub type_: ImportType,
    /// `ClientIP` or `None` (the exported Services').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<String>,
    /// The exported Services' session affinity configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// The families of `ips`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub ip_families: Vec<String>,
}

/// How a [`ServiceImport`] is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ImportType {
    /// Through the ClusterSet IP.
    #[default]
    ClusterSetIP,
    /// Backends addressed directly.
    Headless,
}

/// One port of a [`ServiceImport`].
#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ImportPort {
    /// Port name; empty for a single unnamed port.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `TCP`, `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// Application protocol hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// The port number.
    pub port: i32,
}

/// Derived state of a [`ServiceImport`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportStatus {
    /// The exporting clusters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ImportCluster>,
    /// `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One exporting cluster of a [`ServiceImport`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ImportCluster {
    /// Cluster name (Meridian's member name).
    pub cluster: String,
}

/// A cluster property (KEP-2149); Meridian reads and writes `cluster.clusterset.k8s.io`.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "about.k8s.io",
    version = "v1alpha1",
    kind = "ClusterProperty",
    shortname = "clusterproperty",
    printcolumn = r#"{"name":"Value","type":"string","jsonPath":".spec.value"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct ClusterPropertySpec {
    /// The property's value.
    #[schemars(length(min = 1, max = 128000))]
    pub value: String,
}

/// The MCS CRD as generated, with `v1alpha1` also served (same schema, not stored).
/// The spec is optional, as upstream (`kind: ServiceExport` with metadata only is the usual
/// export).
fn served_twice(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for v in &mut crd.spec.versions {
        if let Some(required) = v
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.required.as_mut())
        {
            required.retain(|r| r != "spec");
        }
    }
    if let Some(stored) = crd.spec.versions.first().cloned() {
        let mut legacy = stored;
        legacy.name = MCS_LEGACY_VERSION.to_owned();
        legacy.storage = false;
        crd.spec.versions.insert(0, legacy);
    }
    crd
}

/// `about.k8s.io` is a protected (`*.k8s.io`) group: the API server admits its CRDs only
/// with the approval annotation, which names the KEP that defines the API.
fn approved(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    crd.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(
            "api-approved.kubernetes.io".to_owned(),
            "https://github.com/kubernetes/enhancements/tree/master/keps/sig-multicluster/2149-clusterid"
                .to_owned(),
        );
    crd
}

/// The optional MCS CRDs: ServiceExport, ServiceImport, ClusterProperty.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        served_twice(ServiceExport::crd()),
        served_twice(ServiceImport::crd()),
        approved(ClusterProperty::crd()),
    ]
}

/// The YAML committed under `manifests/mcs/`: one file per CRD, `(file name, contents)`.
pub fn manifests() -> Vec<(String, String)> {
    all()
        .into_iter()
        .filter_map(|crd| {
            let name = format!("{}.yaml", crd.spec.names.plural);
            let yaml = serde_yaml_ng::to_string(&crd).ok()?;
            Some((
                name,
                format!(
                    "# Generated by `cargo run -p meridian-controller --bin crdgen -- --mcs`; do not edit.\n---\n{yaml}"
                ),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_mcs_manifests_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/mcs");
        for (name, yaml) in manifests() {
            let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            assert!(
                committed == yaml,
                "manifests/mcs/{name} drifted: run `cargo run -p meridian-controller --bin crdgen -- --mcs manifests/mcs`"
            );
        }
    }

    #[test]
    fn both_versions_are_served_and_v1beta1_is_stored() {
        for crd in &all()[..2] {
            let versions: Vec<(&str, bool, bool)> = crd
                .spec
                .versions
                .iter()
                .map(|v| (v.name.as_str(), v.served, v.storage))
                .collect();
            assert_eq!(
                versions,
                [("v1alpha1", true, false), ("v1beta1", true, true)]
            );
        }
    }

    #[test]
    fn an_export_without_spec_is_admitted_and_read() {
        // Read as metadata (what the controller watches), whatever the spec.
        let se: crate::mcs::ExportMeta = serde_yaml_ng::from_str(
            "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceExport\nmetadata: {name: echo, namespace: demo}\n",
        )
        .expect("parses");
        assert_eq!(se.metadata.name.as_deref(), Some("echo"));
        let crd = ServiceExport::crd();
        let required = served_twice(crd).spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| s.required.clone())
            .unwrap_or_default();
        assert!(!required.contains(&"spec".to_owned()), "{required:?}");
    }

    #[test]
    fn import_reads_upstream_yaml() {
        let yaml = r#"
apiVersion: multicluster.x-k8s.io/v1beta1
kind: ServiceImport
metadata: {name: echo, namespace: demo}
spec:
  type: ClusterSetIP
  ips: [10.96.0.10]
  ports: [{name: http, protocol: TCP, port: 80}]
  sessionAffinity: None
status:
  clusters: [{cluster: east}]
"#;
        let si: ServiceImport = serde_yaml_ng::from_str(yaml).expect("parses");
        assert_eq!(si.spec.type_, ImportType::ClusterSetIP);
        assert_eq!(si.spec.ports[0].port, 80);
        assert_eq!(si.status.expect("status").clusters[0].cluster, "east");
    }
}
