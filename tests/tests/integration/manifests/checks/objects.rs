//! The rendered documents parsed into their types.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::NAMESPACE;

/// The rendered objects, typed.
#[derive(Default)]
pub(crate) struct Objects {
    pub namespaces: Vec<Namespace>,
    pub crds: Vec<CustomResourceDefinition>,
    pub service_accounts: Vec<ServiceAccount>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub services: Vec<Service>,
    pub deployments: Vec<Deployment>,
    pub config_maps: Vec<ConfigMap>,
    pub network_policies: Vec<NetworkPolicy>,
}

/// Fields of `original` that did not survive a round trip through the typed object:
/// misspelt or misplaced fields the typed parser silently drops.
fn unknown_fields(original: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => {
            for (k, v) in o {
                let p = format!("{path}.{k}");
                match t.get(k) {
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    None if v.is_null() => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            for (i, (ov, tv)) in o.iter().zip(t).enumerate() {
                unknown_fields(ov, tv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn typed<K: DeserializeOwned + serde::Serialize>(
    doc: &Value,
    id: &str,
    problems: &mut Vec<String>,
) -> Option<K> {
    match serde_json::from_value::<K>(doc.clone()) {
        Ok(k) => {
            let back = serde_json::to_value(&k).expect("typed objects serialize");
            let mut unknown = Vec::new();
            unknown_fields(doc, &back, "", &mut unknown);
            for f in unknown {
                problems.push(format!("{id}: unknown field {f}"));
            }
            Some(k)
        }
        Err(e) => {
            problems.push(format!("{id}: does not parse as its kind: {e}"));
            None
        }
    }
}

/// `Kind namespace/name` of a raw document.
pub(crate) fn id(doc: &Value) -> String {
    let s = |p: &str| doc.pointer(p).and_then(Value::as_str).unwrap_or("");
    format!(
        "{} {}/{}",
        s("/kind"),
        s("/metadata/namespace"),
        s("/metadata/name")
    )
}

/// Parses every document into its type; checks apiVersion, names and namespaces.
pub(crate) fn parse(docs: &[Value], problems: &mut Vec<String>) -> Objects {
    let mut objects = Objects::default();
    let mut seen = BTreeSet::new();
    for doc in docs {
        let id = id(doc);
        if !seen.insert(id.clone()) {
            problems.push(format!("{id}: duplicate object"));
        }
        let api_version = doc["apiVersion"].as_str().unwrap_or("");
        let kind = doc["kind"].as_str().unwrap_or("");
        let name = doc.pointer("/metadata/name").and_then(Value::as_str);
        let namespace = doc.pointer("/metadata/namespace").and_then(Value::as_str);
        if name.is_none_or(str::is_empty) {
            problems.push(format!("{id}: no metadata.name"));
        }
        let (want_api, namespaced) = match kind {
            "Namespace" => ("v1", false),
            "CustomResourceDefinition" => ("apiextensions.k8s.io/v1", false),
            "ClusterRole" | "ClusterRoleBinding" => ("rbac.authorization.k8s.io/v1", false),
            "Role" | "RoleBinding" => ("rbac.authorization.k8s.io/v1", true),
            "ServiceAccount" | "Service" | "ConfigMap" => ("v1", true),
            "Deployment" => ("apps/v1", true),
            "NetworkPolicy" => ("networking.k8s.io/v1", true),
            other => {
                problems.push(format!(
                    "{id}: unexpected kind {other:?} (PodDisruptionBudget policy/v1 and \
                         ServiceMonitor are deliberately not in the base)"
                ));
                continue;
            }
        };
        if api_version != want_api {
            problems.push(format!(
                "{id}: apiVersion {api_version:?}, want {want_api:?}"
            ));
        }
        match (namespaced, namespace) {
            (true, Some(NAMESPACE)) | (false, None) => {}
            (true, other) => {
                problems.push(format!("{id}: namespace {other:?}, want {NAMESPACE:?}"))
            }
            (false, Some(ns)) => {
                problems.push(format!("{id}: cluster-scoped but has namespace {ns:?}"))
            }
        }
        if kind != "CustomResourceDefinition"
            && doc.pointer("/metadata/labels/app.kubernetes.io~1part-of")
                != Some(&Value::from("meridian"))
        {
            problems.push(format!(
                "{id}: label app.kubernetes.io/part-of=meridian missing"
            ));
        }
        let p = &mut *problems;
        match kind {
            "Namespace" => objects.namespaces.extend(typed(doc, &id, p)),
            "CustomResourceDefinition" => objects.crds.extend(typed(doc, &id, p)),
            "ServiceAccount" => objects.service_accounts.extend(typed(doc, &id, p)),
            "ClusterRole" => objects.cluster_roles.extend(typed(doc, &id, p)),
            "ClusterRoleBinding" => objects.cluster_role_bindings.extend(typed(doc, &id, p)),
            "Role" => objects.roles.extend(typed(doc, &id, p)),
            "RoleBinding" => objects.role_bindings.extend(typed(doc, &id, p)),
            "Service" => objects.services.extend(typed(doc, &id, p)),
            "Deployment" => objects.deployments.extend(typed(doc, &id, p)),
            "ConfigMap" => objects.config_maps.extend(typed(doc, &id, p)),
            "NetworkPolicy" => objects.network_policies.extend(typed(doc, &id, p)),
            _ => unreachable!("filtered above"),
        }
    }
    objects
}
