//! Which endpoints of an exported Service become tunnel targets.
//!
//! Peer gateways reach whatever address the catalog lists for a service, so an address must
//! be a pod of that service, not whatever someone wrote into a selectorless Service's
//! Endpoints or EndpointSlices (a node's kubelet, the API server, a pod of another
//! namespace). By default an endpoint is a target only when its `targetRef` is a Pod in
//! the Service's namespace and its address is one of that Pod's IPs (`status.podIP`/
//! `podIPs`), as the endpoints and EndpointSlice controllers write for selected pods: a
//! hand-written endpoint naming one of the namespace's own Pods next to someone else's
//! address is refused too, and so is a finished Pod (phase `Succeeded`/`Failed`): its
//! status keeps an IP the network may have given to another pod since, and the endpoints
//! controllers leave such pods out as well. A Service annotated
//! [`ALLOW_EXTERNAL_ENDPOINTS_ANNOTATION`]` = "true"` opts out, for deliberately
//! hand-written endpoints.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};

/// Service annotation admitting endpoints that are not Pods of the Service's namespace.
pub(crate) const ALLOW_EXTERNAL_ENDPOINTS_ANNOTATION: &str = "meridian.io/allow-external-endpoints";

/// Why an endpoint of an exported Service is not a tunnel target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    /// The endpoint has no `targetRef`.
    NoTargetRef,
    /// Its `targetRef` is not a Pod (a Node, say), or names none.
    NotAPod,
    /// Its `targetRef` is a Pod of another namespace (or names none).
    OtherNamespace,
    /// The referenced Pod is not known (yet) or has no IP yet.
    PodIpUnknown,
    /// The address is not one of the referenced Pod's IPs.
    AddressNotPodIp,
    /// The referenced Pod has finished (phase `Succeeded` or `Failed`); its IP may be
    /// another pod's by now.
    PodFinished,
}

impl Skip {
    /// Every reason, for metrics.
    pub const ALL: [Skip; 6] = [
        Skip::NoTargetRef,
        Skip::NotAPod,
        Skip::OtherNamespace,
        Skip::PodIpUnknown,
        Skip::AddressNotPodIp,
        Skip::PodFinished,
    ];

    /// Stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Skip::NoTargetRef => "no_target_ref",
            Skip::NotAPod => "not_a_pod",
            Skip::OtherNamespace => "other_namespace",
            Skip::PodIpUnknown => "pod_ip_unknown",
            Skip::AddressNotPodIp => "address_not_pod_ip",
            Skip::PodFinished => "pod_finished",
        }
    }
}

/// Whether `svc` admits endpoints that are not Pods of its namespace.
pub(crate) fn allows_external(svc: &Service) -> bool {
    crate::catalog::is_true(
        svc.metadata.annotations.as_ref(),
        ALLOW_EXTERNAL_ENDPOINTS_ANNOTATION,
    )
}

/// The IPs of a Pod: `status.podIPs`, and `status.podIP` (the first of them, or all there is
/// on servers that predate `podIPs`).
pub(crate) fn pod_ips(pod: &Pod) -> impl Iterator<Item = &str> {
    let status = pod.status.as_ref();
    let first = status.and_then(|s| s.pod_ip.as_deref());
    let all = status
        .and_then(|s| s.pod_ips.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|p| p.ip.as_str());
    first.into_iter().chain(all).filter(|ip| !ip.is_empty())
}

/// Whether two textual IPs are the same address (`fd00::1` is `fd00:0::1`).
fn same_ip(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Whether an endpoint `address` with `target_ref` of a Service in `namespace` is a tunnel
/// target. `pod` looks up a Pod of `namespace` by name.
pub(crate) fn admit<'a>(
    address: &str,
    target_ref: Option<&ObjectReference>,
    namespace: &str,
    allow_external: bool,
    pod: impl FnOnce(&str) -> Option<&'a Pod>,
) -> Result<(), Skip> {
    if allow_external {
        return Ok(());
    }
    let r = target_ref.ok_or(Skip::NoTargetRef)?;
    let name = match (r.kind.as_deref(), r.name.as_deref()) {
        (Some("Pod"), Some(name)) if !name.is_empty() => name,
        _ => return Err(Skip::NotAPod),
    };
    if r.namespace.as_deref() != Some(namespace) {
        return Err(Skip::OtherNamespace);
    }
    let pod = pod(name).ok_or(Skip::PodIpUnknown)?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Err(Skip::PodFinished);
    }
    let mut ips = pod_ips(pod).peekable();
    if ips.peek().is_none() {
        return Err(Skip::PodIpUnknown);
    }
    if !ips.any(|ip| same_ip(ip, address)) {
        return Err(Skip::AddressNotPodIp);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::pod;

    fn admit_at(address: &str, ips: &[&str]) -> Result<(), Skip> {
        admit_in_phase(address, ips, None)
    }

    fn admit_in_phase(address: &str, ips: &[&str], phase: Option<&str>) -> Result<(), Skip> {
        let r = ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some("demo".into()),
            name: Some("p1".into()),
            ..ObjectReference::default()
        };
        let mut p = pod("demo", "p1", ips, &[]);
        if let Some(phase) = phase {
            p.status.get_or_insert_default().phase = Some(phase.into());
        }
        admit(address, Some(&r), "demo", false, |name| {
            (name == "p1").then_some(&p)
        })
    }

    /// Any of `podIPs` counts, compared as addresses, not strings.
    #[test]
    fn the_address_is_compared_with_every_pod_ip() {
        assert_eq!(admit_at("10.0.0.1", &["10.0.0.1", "fd00::1"]), Ok(()));
        assert_eq!(admit_at("fd00:0:0::1", &["10.0.0.1", "fd00::1"]), Ok(()));
        assert_eq!(
            admit_at("10.0.0.10", &["10.0.0.1", "fd00::1"]),
            Err(Skip::AddressNotPodIp)
        );
        assert_eq!(
            admit_at("not-an-ip", &["10.0.0.1"]),
            Err(Skip::AddressNotPodIp)
        );
        assert_eq!(admit_at("10.0.0.1", &[]), Err(Skip::PodIpUnknown));
    }

    /// A finished Pod keeps its IP in status, but the network may have handed it to a pod
    /// of another namespace: never a target, even at its IP.
    #[test]
    fn a_finished_pod_is_no_target() {
        for phase in ["Succeeded", "Failed"] {
            assert_eq!(
                admit_in_phase("10.0.0.1", &["10.0.0.1"], Some(phase)),
                Err(Skip::PodFinished),
                "{phase}"
            );
        }
        for phase in ["Running", "Pending"] {
            assert_eq!(
                admit_in_phase("10.0.0.1", &["10.0.0.1"], Some(phase)),
                Ok(()),
                "{phase}"
            );
        }
    }
}
