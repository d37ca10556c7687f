//! Object checks, as pure functions from rendered documents to a list of problems, so
//! they can be shown to catch bad input as well as to pass good input.

use serde_json::Value;

mod deployments;
mod network_policies;
mod objects;
mod rbac;
mod services;
mod tokens;

use deployments::deployments;
use network_policies::network_policies;
pub(super) use objects::{Objects, id, parse};
use rbac::rbac;
use services::services;
use tokens::controller_tokens;

/// Where Meridian runs.
pub(crate) const NAMESPACE: &str = "meridian-system";
/// The controller's ServiceAccount, the only identity with API rights.
pub(crate) const CONTROLLER_SA: &str = "meridian-controller";
/// The per-cluster ConfigMap every component reads the cluster name from.
pub(crate) const CLUSTER_CONFIGMAP: &str = "meridian-cluster";
/// The controller's default `--gateway-selector`.
pub(crate) const GATEWAY_SELECTOR: (&str, &str) = ("app.kubernetes.io/name", "meridian-gateway");
/// The controller's default `--gateway-service`.
pub(crate) const GATEWAY_SERVICE: &str = "meridian-gateway";

/// Deployment name → (binary, env var naming the cluster, admin port name).
pub(crate) const COMPONENTS: [(&str, &str, &str); 3] = [
    (
        "meridian-controller",
        "meridian-controller",
        "MERIDIAN_CLUSTER_NAME",
    ),
    (
        "meridian-gateway",
        "meridian-gateway",
        "MERIDIAN_CLUSTER_NAME",
    ),
    ("meridian-dns", "meridian-dns", "MERIDIAN_CLUSTER_NAME"),
];

pub(crate) fn name<
    K: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    k: &K,
) -> &str {
    k.metadata().name.as_deref().unwrap_or("")
}

/// Everything, in one list.
pub(super) fn all(docs: &[Value]) -> (Objects, Vec<String>) {
    let mut problems = Vec::new();
    let objects = parse(docs, &mut problems);
    if objects.namespaces.iter().map(name).collect::<Vec<_>>() != [NAMESPACE] {
        problems.push(format!(
            "the base must create exactly the {NAMESPACE} Namespace"
        ));
    }
    rbac(&objects, &mut problems);
    deployments(&objects, &mut problems);
    services(&objects, &mut problems);
    network_policies(&objects, &mut problems);
    controller_tokens(&objects, &mut problems);
    (objects, problems)
}
