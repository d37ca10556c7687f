//! The testbed's endpoints controller: core/v1 Endpoints computed from Services and Pods.
//!
//! Without a kube-controller-manager nothing turns Pods into Endpoints, so the testbed does
//! it the way the upstream endpoints controller does (selector match, named target ports,
//! ready vs not-ready addresses, `nodeName` and a Pod `targetRef` on every address). It runs
//! synchronously inside every testbed call that changes pods or services, so a test sees
//! the new Endpoints as soon as the call returns: deterministic, no polling. Clusters that
//! use EndpointSlices get both, as a real cluster does ([`crate::endpoint_slices`]).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};

use crate::error::{Error, Result};

/// Annotation marking Endpoints the testbed manages (so it may delete orphans).
pub const MANAGED_ANNOTATION: &str = "testbed.meridian.io/managed";

/// How often a sync is retried after a write conflict.
const CONFLICT_RETRIES: usize = 3;

/// Recomputes and writes the Endpoints of every Service with a selector in `namespace`,
/// and deletes managed Endpoints whose Service is gone.
pub(crate) async fn sync_namespace(client: &Client, namespace: &str) -> Result<()> {
    let mut attempt = 0;
    loop {
        match sync_once(client, namespace).await {
            Err(Error::Kube {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 409 && attempt < CONFLICT_RETRIES => attempt += 1,
            other => return other,
        }
    }
}

async fn sync_once(client: &Client, namespace: &str) -> Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default();
    let services = services
        .list(&lp)
        .await
        .map_err(Error::kube(format!("listing Services in {namespace}")))?
        .items;
    let pods = pods
        .list(&lp)
        .await
        .map_err(Error::kube(format!("listing Pods in {namespace}")))?
        .items;
    let existing: BTreeMap<String, Endpoints> = endpoints
        .list(&lp)
        .await
        .map_err(Error::kube(format!("listing Endpoints in {namespace}")))?
        .items
        .into_iter()
        .filter_map(|e| Some((e.metadata.name.clone()?, e)))
        .collect();

    let mut wanted = BTreeSet::new();
    for service in &services {
        let Some(mut desired) = desired_endpoints(service, &pods) else {
            continue;
        };
        let name = desired.metadata.name.clone().unwrap_or_default();
        wanted.insert(name.clone());
        match existing.get(&name) {
            Some(current)
                if current.subsets == desired.subsets
                    && current.metadata.labels == desired.metadata.labels => {}
            Some(current) => {
                desired.metadata.resource_version = current.metadata.resource_version.clone();
                endpoints
                    .replace(&name, &PostParams::default(), &desired)
                    .await
                    .map_err(Error::kube(format!(
                        "updating Endpoints {namespace}/{name}"
                    )))?;
            }
            None => {
                endpoints
                    .create(&PostParams::default(), &desired)
                    .await
                    .map_err(Error::kube(format!(
                        "creating Endpoints {namespace}/{name}"
                    )))?;
            }
        }
    }
    for (name, current) in &existing {
        let managed = current
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(MANAGED_ANNOTATION));
        if managed && !wanted.contains(name) {
            delete_if_present(&endpoints, name, "Endpoints", namespace).await?;
        }
    }
    Ok(())
}

/// The Endpoints for `service` given the namespace's `pods`; `None` for Services without a
/// selector (their Endpoints belong to the user).
/// Deletes `kind` `namespace/name`; one that is already gone is not an error.
pub(crate) async fn delete_if_present<K>(
    api: &Api<K>,
    name: &str,
    kind: &str,
    namespace: &str,
) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("deleting {kind} {namespace}/{name}"))(
            e,
        )),
    }
}

pub(crate) fn desired_endpoints(service: &Service, pods: &[Pod]) -> Option<Endpoints> {
    let spec = service.spec.as_ref()?;
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let service_ports = spec.ports.clone().unwrap_or_default();

    // Pods sharing a port set share a subset, as upstream packs them.
    type PortKey = Vec<(Option<String>, i32, Option<String>, Option<String>)>;
    let mut subsets: BTreeMap<PortKey, (Vec<EndpointAddress>, Vec<EndpointAddress>)> =
        BTreeMap::new();
    for pod in pods.iter().filter(|p| selects(selector, p) && is_live(p)) {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let ports: PortKey = service_ports
            .iter()
            .filter_map(|sp| {
                let port = resolve_target_port(sp, pod)?;
                let protocol = Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into()));
                Some((sp.name.clone(), port, protocol, sp.app_protocol.clone()))
            })
            .collect();
        if ports.is_empty() {
            continue;
        }
        let address = EndpointAddress {
            ip,
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: pod.metadata.namespace.clone(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            }),
            hostname: None,
        };
        let (ready, not_ready) = subsets.entry(ports).or_default();
        if publish_not_ready || is_ready(pod) {
            ready.push(address);
        } else {
            not_ready.push(address);
        }
    }

    let subsets: Vec<EndpointSubset> = subsets
        .into_iter()
        .map(|(ports, (mut ready, mut not_ready))| {
            let key =
                |a: &EndpointAddress| (a.ip.clone(), a.target_ref.clone().and_then(|r| r.name));
            ready.sort_by_key(key);
            not_ready.sort_by_key(key);
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, port, protocol, app_protocol)| EndpointPort {
                            name,
                            port,
                            protocol,
                            app_protocol,
                        })
                        .collect(),
                ),
            }
        })
        .collect();

    let mut annotations = BTreeMap::new();
    annotations.insert(MANAGED_ANNOTATION.to_string(), "true".to_string());
    Some(Endpoints {
        metadata: ObjectMeta {
            name: service.metadata.name.clone(),
            namespace: service.metadata.namespace.clone(),
            // Upstream copies the Service's labels onto its Endpoints.
            labels: service.metadata.labels.clone(),
            annotations: Some(annotations),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    })
}

pub(crate) fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

fn is_live(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

pub(crate) fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod port a Service port targets: a number, or a container port looked up by name.
pub(crate) fn resolve_target_port(
    service_port: &k8s_openapi::api::core::v1::ServicePort,
    pod: &Pod,
) -> Option<i32> {
    match &service_port.target_port {
        None => Some(service_port.port),
        Some(IntOrString::Int(port)) => Some(*port),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::{PodSpec, pod_object, pod_status};
    use crate::service::{ServicePortSpec, ServiceSpec};
    use k8s_openapi::jiff::Timestamp;
    use std::net::Ipv4Addr;

    fn running(spec: PodSpec, ip: [u8; 4], ready: bool) -> Pod {
        let mut pod = pod_object(&spec, "node-a");
        pod.status = Some(pod_status(
            Ipv4Addr::from(ip),
            "img",
            ready,
            &Timestamp::now(),
        ));
        pod
    }

    #[test]
    fn splits_ready_and_not_ready_and_resolves_named_ports() {
        let service = ServiceSpec::new("web")
            .port(ServicePortSpec::http("http", 80).target_name("http"))
            .to_service();
        let pods = vec![
            running(PodSpec::new("web-1").app("web"), [10, 1, 0, 2], true),
            running(PodSpec::new("web-2").app("web"), [10, 1, 0, 3], false),
            running(PodSpec::new("other").app("other"), [10, 1, 0, 4], true),
        ];
        let endpoints = desired_endpoints(&service, &pods).unwrap();
        let subsets = endpoints.subsets.unwrap();
        assert_eq!(subsets.len(), 1);
        let ready = subsets[0].addresses.as_ref().unwrap();
        let not_ready = subsets[0].not_ready_addresses.as_ref().unwrap();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].ip, "10.1.0.2");
        assert_eq!(ready[0].node_name.as_deref(), Some("node-a"));
        assert_eq!(not_ready[0].ip, "10.1.0.3");
        let port = &subsets[0].ports.as_ref().unwrap()[0];
        assert_eq!(port.port, 8080);
        assert_eq!(port.app_protocol.as_deref(), Some("http"));
    }

    #[test]
    fn services_without_selector_are_left_alone() {
        let mut service = ServiceSpec::new("manual").to_service();
        service.spec.as_mut().unwrap().selector = None;
        assert!(desired_endpoints(&service, &[]).is_none());
    }
}
