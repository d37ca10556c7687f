//! Which endpoints of an exported Service become tunnel targets.
//!
//! Peer gateways reach whatever address the catalog lists for a service, so an address must
//! be a pod of that service, not whatever someone wrote into a selectorless Service's
//! Endpoints or EndpointSlices (a node's kubelet, the API server, a pod of another
//! namespace). By default an endpoint is a target only when its `targetRef` is a Pod in
//! the Service's namespace, as the endpoints and EndpointSlice controllers write for
//! selected pods. A Service annotated [`ALLOW_EXTERNAL_ENDPOINTS_ANNOTATION`]` = "true"`
//! opts out, for deliberately hand-written endpoints.

use k8s_openapi::api::core::v1::{ObjectReference, Service};

/// Service annotation admitting endpoints that are not Pods of the Service's namespace.
pub const ALLOW_EXTERNAL_ENDPOINTS_ANNOTATION: &str = "meridian.io/allow-external-endpoints";

/// Why an endpoint of an exported Service is not a tunnel target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    /// The endpoint has no `targetRef`.
    NoTargetRef,
    /// Its `targetRef` is not a Pod (a Node, say), or names none.
    NotAPod,
    /// Its `targetRef` is a Pod of another namespace (or names none).
    OtherNamespace,
}

impl Skip {
    /// Every reason, for metrics.
    pub const ALL: [Skip; 3] = [Skip::NoTargetRef, Skip::NotAPod, Skip::OtherNamespace];

    /// Stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Skip::NoTargetRef => "no_target_ref",
            Skip::NotAPod => "not_a_pod",
            Skip::OtherNamespace => "other_namespace",
        }
    }
}

/// Whether `svc` admits endpoints that are not Pods of its namespace.
pub fn allows_external(svc: &Service) -> bool {
    svc.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOW_EXTERNAL_ENDPOINTS_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// Whether an endpoint with `target_ref` of a Service in `namespace` is a tunnel target.
pub fn admit(
    target_ref: Option<&ObjectReference>,
    namespace: &str,
    allow_external: bool,
) -> Result<(), Skip> {
    if allow_external {
        return Ok(());
    }
    let r = target_ref.ok_or(Skip::NoTargetRef)?;
    if r.kind.as_deref() != Some("Pod") || r.name.as_deref().is_none_or(str::is_empty) {
        return Err(Skip::NotAPod);
    }
    if r.namespace.as_deref() != Some(namespace) {
        return Err(Skip::OtherNamespace);
    }
    Ok(())
}
