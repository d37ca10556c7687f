//! The testbed's EndpointSlice controller: `discovery.k8s.io/v1` EndpointSlices computed
//! from Services and Pods, written as Kubernetes' `endpointslice-controller.k8s.io` writes
//! them.
//!
//! - Labels `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by`, plus
//!   the Service's own labels; an owner reference to the Service; `generateName:
//!   <service>-`; `addressType: IPv4` (pod IPs are IPv4).
//! - Endpoints grouped by port set; at most `max_endpoints_per_slice` per slice.
//! - Each endpoint has `ready`, `serving` and `terminating` conditions, `nodeName`, `zone`
//!   and a Pod `targetRef`. A pod being deleted stays as `terminating: true, ready: false`
//!   with `serving` = its readiness until the deletion completes.
//! - Reconciling as upstream does: endpoints stay in the slice they are in (updated in
//!   place), gone ones are dropped, new ones fill slices with room before new slices are
//!   created, emptied slices are deleted, and a Service with no endpoints keeps one empty
//!   placeholder slice. Slices are never repacked.
//!
//! Like the Endpoints writer ([`crate::endpoints`]) it runs synchronously inside every
//! testbed call that changes pods or services. No garbage collector runs in the testbed, so
//! it also deletes the slices it manages whose Service is gone.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};

use crate::endpoints::{delete_if_present, is_ready, resolve_target_port, selects};
use crate::error::{Error, Result};

/// Label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// The value upstream's EndpointSlice controller (and the testbed) writes.
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Upstream's default `--max-endpoints-per-slice`.
pub const DEFAULT_MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// How often a sync is retried after a write conflict.
const CONFLICT_RETRIES: usize = 3;

/// One port set: (name, port, protocol, appProtocol) per Service port.
type PortKey = Vec<(Option<String>, i32, String, Option<String>)>;

/// Recomputes and writes the slices of every Service with a selector in `namespace`, and
/// deletes managed slices whose Service is gone. `zones` maps node names to their zone.
pub(crate) async fn sync_namespace(
    client: &Client,
    namespace: &str,
    max_per_slice: usize,
    zones: &BTreeMap<String, String>,
) -> Result<()> {
    let mut attempt = 0;
    loop {
        match sync_once(client, namespace, max_per_slice, zones).await {
            Err(Error::Kube {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 409 && attempt < CONFLICT_RETRIES => attempt += 1,
            other => return other,
        }
    }
}

async fn sync_once(
    client: &Client,
    namespace: &str,
    max_per_slice: usize,
    zones: &BTreeMap<String, String>,
) -> Result<()> {
    let lp = ListParams::default();
    let services = Api::<Service>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await
        .map_err(Error::kube(format!("listing Services in {namespace}")))?
        .items;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&lp)
        .await
        .map_err(Error::kube(format!("listing Pods in {namespace}")))?
        .items;
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let managed = api
        .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")))
        .await
        .map_err(Error::kube(format!(
            "listing EndpointSlices in {namespace}"
        )))?
        .items;
    let mut by_service: BTreeMap<String, Vec<EndpointSlice>> = BTreeMap::new();
    for slice in managed {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned()
            .unwrap_or_default();
        by_service.entry(service).or_default().push(slice);
    }

    for service in &services {
        let name = service.metadata.name.clone().unwrap_or_default();
        let existing = by_service.remove(&name).unwrap_or_default();
        let Some(plan) = reconcile(service, &pods, zones, &existing, max_per_slice) else {
            // No selector: the user's slices, if any.
            continue;
        };
        apply(&api, namespace, plan).await?;
    }
    // Whatever is left belongs to Services that are gone (or lost their selector).
    let orphans = Plan {
        delete: by_service
            .into_values()
            .flatten()
            .filter_map(|s| s.metadata.name)
            .collect(),
        ..Plan::default()
    };
    apply(&api, namespace, orphans).await
}

/// Writes to make one Service's slices what they should be.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// New slices (`generateName`).
    pub create: Vec<EndpointSlice>,
    /// Changed slices, with the resourceVersion they were read at.
    pub update: Vec<EndpointSlice>,
    /// Names of slices to delete.
    pub delete: Vec<String>,
}

async fn apply(api: &Api<EndpointSlice>, namespace: &str, plan: Plan) -> Result<()> {
    let pp = PostParams::default();
    // Creates and updates before deletes, so an endpoint moving between slices is never
    // missing from all of them (upstream orders its writes the same way).
    for slice in &plan.create {
        api.create(&pp, slice).await.map_err(Error::kube(format!(
            "creating an EndpointSlice in {namespace}"
        )))?;
    }
    for slice in &plan.update {
        let name = slice.metadata.name.clone().unwrap_or_default();
        api.replace(&name, &pp, slice)
            .await
            .map_err(Error::kube(format!(
                "updating EndpointSlice {namespace}/{name}"
            )))?;
    }
    for name in &plan.delete {
        delete_if_present(api, name, "EndpointSlice", namespace).await?;
    }
    Ok(())
}

/// The writes that bring `existing` (this Service's managed slices) to the desired state;
/// `None` for Services without a selector.
pub(crate) fn reconcile(
    service: &Service,
    pods: &[Pod],
    zones: &BTreeMap<String, String>,
    existing: &[EndpointSlice],
    max_per_slice: usize,
) -> Option<Plan> {
    let max = max_per_slice.max(1);
    let mut desired = desired_endpoints(service, pods, zones)?;
    let mut plan = Plan::default();

    // Existing slices: keep what is still wanted where it is, drop the rest.
    let mut kept: Vec<(EndpointSlice, bool)> = Vec::new();
    let mut placeholder: Option<EndpointSlice> = None;
    for slice in existing {
        let key = slice_port_key(slice);
        let Some(wanted) = desired
            .get_mut(&key)
            .filter(|_| slice.address_type == "IPv4")
        else {
            if slice.endpoints.is_empty() && slice.ports.as_ref().is_none_or(Vec::is_empty) {
                // A placeholder from when the Service had no endpoints.
                if placeholder.is_none() {
                    placeholder = Some(slice.clone());
                    continue;
                }
            }
            plan.delete.extend(slice.metadata.name.clone());
            continue;
        };
        let mut updated = slice.clone();
        updated.endpoints = slice
            .endpoints
            .iter()
            .filter_map(|e| wanted.remove(e.addresses.first()?))
            .collect();
        let changed = updated.endpoints != slice.endpoints;
        kept.push((updated, changed));
    }

    // New endpoints fill slices with room (those being written anyway first), then new ones.
    kept.sort_by_key(|(_, changed)| !changed);
    for (key, wanted) in &mut desired {
        let mut fresh: Vec<Endpoint> = std::mem::take(wanted).into_values().collect();
        for (slice, changed) in kept.iter_mut().filter(|(s, _)| slice_port_key(s) == *key) {
            let room = max.saturating_sub(slice.endpoints.len()).min(fresh.len());
            if room > 0 {
                slice.endpoints.extend(fresh.drain(..room));
                *changed = true;
            }
        }
        for chunk in fresh.chunks(max) {
            plan.create
                .push(new_slice(service, Some(key), chunk.to_vec()));
        }
    }
    let mut any_endpoints = !plan.create.is_empty();
    for (mut slice, changed) in kept {
        if slice.endpoints.is_empty() {
            plan.delete.extend(slice.metadata.name.clone());
            continue;
        }
        any_endpoints = true;
        let labels = slice_labels(service);
        if changed || slice.metadata.labels.as_ref() != Some(&labels) {
            slice
                .endpoints
                .sort_by(|a, b| a.addresses.cmp(&b.addresses));
            slice.metadata.labels = Some(labels);
            slice.metadata.managed_fields = None;
            plan.update.push(slice);
        }
    }
    match (any_endpoints, placeholder) {
        (true, Some(p)) => plan.delete.extend(p.metadata.name),
        (false, None) => plan.create.push(new_slice(service, None, Vec::new())),
        _ => {}
    }
    Some(plan)
}

/// The endpoints of `service` by port set and address; `None` without a selector.
fn desired_endpoints(
    service: &Service,
    pods: &[Pod],
    zones: &BTreeMap<String, String>,
) -> Option<BTreeMap<PortKey, BTreeMap<String, Endpoint>>> {
    let spec = service.spec.as_ref()?;
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let service_ports = spec.ports.clone().unwrap_or_default();
    let mut out: BTreeMap<PortKey, BTreeMap<String, Endpoint>> = BTreeMap::new();
    for pod in pods.iter().filter(|p| selects(selector, p)) {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let ports: PortKey = service_ports
            .iter()
            .filter_map(|sp| {
                let port = resolve_target_port(sp, pod)?;
                let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
                Some((sp.name.clone(), port, protocol, sp.app_protocol.clone()))
            })
            .collect();
        if ports.is_empty() {
            continue;
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = publish_not_ready || is_ready(pod);
        let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let endpoint = Endpoint {
            addresses: vec![ip.clone()],
            conditions: Some(EndpointConditions {
                // Upstream: never ready while terminating; serving says whether it
                // still answers.
                ready: Some(serving && !terminating),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            zone: node_name.as_ref().and_then(|n| zones.get(n)).cloned(),
            node_name,
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        out.entry(ports).or_default().insert(ip, endpoint);
    }
    Some(out)
}

fn slice_port_key(slice: &EndpointSlice) -> PortKey {
    slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.name.clone(),
                p.port?,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.app_protocol.clone(),
            ))
        })
        .collect()
}

fn slice_labels(service: &Service) -> BTreeMap<String, String> {
    // Upstream copies the Service's labels, then sets its own.
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    labels.insert(
        SERVICE_NAME_LABEL.into(),
        service.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels
}

/// A new slice of `service` for `ports` (`None`: the empty placeholder).
fn new_slice(
    service: &Service,
    ports: Option<&PortKey>,
    mut endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    let name = service.metadata.name.clone().unwrap_or_default();
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: service.metadata.namespace.clone(),
            labels: Some(slice_labels(service)),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name,
                uid: service.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports: Some(
            ports
                .into_iter()
                .flatten()
                .map(|(name, port, protocol, app_protocol)| EndpointPort {
                    name: name.clone(),
                    port: Some(*port),
                    protocol: Some(protocol.clone()),
                    app_protocol: app_protocol.clone(),
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::{PodSpec, pod_object, pod_status};
    use crate::service::{ServicePortSpec, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use std::net::Ipv4Addr;

    fn pod(name: &str, last: u8, ready: bool) -> Pod {
        let mut pod = pod_object(&PodSpec::new(name).app("web"), "node-a");
        pod.metadata.uid = Some(format!("uid-{name}"));
        pod.status = Some(pod_status(
            Ipv4Addr::new(10, 1, 0, last),
            "img",
            ready,
            &Timestamp::now(),
        ));
        pod
    }

    fn web() -> Service {
        let mut s = ServiceSpec::new("web")
            .port(ServicePortSpec::http("http", 80).target(8080))
            .to_service();
        s.metadata.uid = Some("uid-web".into());
        s
    }

    fn zones() -> BTreeMap<String, String> {
        [("node-a".to_owned(), "zone-a".to_owned())].into()
    }

    /// Applies a plan to an in-memory set of slices, naming created ones `web-<n>`.
    fn applied(mut slices: Vec<EndpointSlice>, plan: Plan, next: &mut usize) -> Vec<EndpointSlice> {
        slices.retain(|s| !plan.delete.contains(s.metadata.name.as_ref().unwrap()));
        for u in plan.update {
            let i = slices
                .iter()
                .position(|s| s.metadata.name == u.metadata.name)
                .unwrap();
            slices[i] = u;
        }
        for mut c in plan.create {
            *next += 1;
            c.metadata.name = Some(format!("web-{next}"));
            slices.push(c);
        }
        slices
    }

    fn addresses(slices: &[EndpointSlice]) -> Vec<Vec<String>> {
        slices
            .iter()
            .map(|s| s.endpoints.iter().map(|e| e.addresses[0].clone()).collect())
            .collect()
    }

    #[test]
    fn splits_at_the_maximum_and_fills_before_creating() {
        let pods: Vec<Pod> = (1..=5).map(|i| pod(&format!("p{i}"), i, true)).collect();
        let mut n = 0;
        let plan = reconcile(&web(), &pods, &zones(), &[], 2).unwrap();
        assert_eq!((plan.create.len(), plan.update.len()), (3, 0));
        let slices = applied(Vec::new(), plan, &mut n);
        assert_eq!(
            addresses(&slices),
            [
                vec!["10.1.0.1", "10.1.0.2"],
                vec!["10.1.0.3", "10.1.0.4"],
                vec!["10.1.0.5"]
            ]
        );
        let s = &slices[0];
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels[crate::EXPORT_LABEL], "true", "service labels copied");
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", "uid-web")
        );
        assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
        let port = &s.ports.as_ref().unwrap()[0];
        assert_eq!(port.port, Some(8080));
        let e = &s.endpoints[0];
        assert_eq!(e.zone.as_deref(), Some("zone-a"));
        assert_eq!(e.node_name.as_deref(), Some("node-a"));
        assert_eq!(
            e.target_ref.as_ref().unwrap().uid.as_deref(),
            Some("uid-p1")
        );

        // p2 goes, p6 comes: it takes p2's place; nothing else is written.
        let mut pods = pods;
        pods.remove(1);
        pods.push(pod("p6", 6, true));
        let plan = reconcile(&web(), &pods, &zones(), &slices, 2).unwrap();
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.update.len(), 1);
        let slices = applied(slices, plan, &mut n);
        assert_eq!(
            addresses(&slices),
            [
                vec!["10.1.0.1", "10.1.0.6"],
                vec!["10.1.0.3", "10.1.0.4"],
                vec!["10.1.0.5"]
            ]
        );
        // Nothing changed: nothing written.
        let plan = reconcile(&web(), &pods, &zones(), &slices, 2).unwrap();
        assert!(plan.create.is_empty() && plan.update.is_empty() && plan.delete.is_empty());

        // All gone: one empty placeholder remains.
        let plan = reconcile(&web(), &[], &zones(), &slices, 2).unwrap();
        let slices = applied(slices, plan, &mut n);
        assert_eq!(slices.len(), 1);
        assert!(slices[0].endpoints.is_empty());
        let plan = reconcile(&web(), &[], &zones(), &slices, 2).unwrap();
        assert!(plan.create.is_empty() && plan.update.is_empty() && plan.delete.is_empty());
        // And it goes once there are endpoints again.
        let plan = reconcile(&web(), &pods[..1], &zones(), &slices, 2).unwrap();
        assert_eq!((plan.create.len(), plan.delete.len()), (1, 1));
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let mut leaving = pod("leaving", 3, true);
        leaving.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let pods = [pod("up", 1, true), pod("down", 2, false), leaving];
        let plan = reconcile(&web(), &pods, &zones(), &[], 100).unwrap();
        let conditions: Vec<_> = plan.create[0]
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (
                    e.addresses[0].as_str(),
                    c.ready.unwrap(),
                    c.serving.unwrap(),
                    c.terminating.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            conditions,
            [
                ("10.1.0.1", true, true, false),
                ("10.1.0.2", false, false, false),
                ("10.1.0.3", false, true, true),
            ]
        );
    }
}
