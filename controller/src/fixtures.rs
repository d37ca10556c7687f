//! Builders for unit-test inputs (Kubernetes objects as the reflectors would hold them).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Node, ObjectReference, Pod, PodIP,
    PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::catalog::{EndpointObjects, MemberInput};

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

fn meta(ns: Option<&str>, name: &str, l: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: ns.map(str::to_owned),
        name: Some(name.to_owned()),
        labels: labels(l),
        ..ObjectMeta::default()
    }
}

fn pod_ref(ns: &str, pod: &str) -> Option<ObjectReference> {
    Some(ObjectReference {
        kind: Some("Pod".into()),
        namespace: Some(ns.into()),
        name: Some(pod.into()),
        ..ObjectReference::default()
    })
}

/// A Service with `(name, port, appProtocol)` ports, exported or not.
pub(crate) fn service(
    ns: &str,
    name: &str,
    ports: &[(&str, i32, Option<&str>)],
    export: bool,
) -> Service {
    let l: &[(&str, &str)] = if export {
        &[("meridian.io/export", "true")]
    } else {
        &[]
    };
    Service {
        metadata: meta(Some(ns), name, l),
        spec: Some(ServiceSpec {
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p, app)| ServicePort {
                        name: Some((*n).to_owned()),
                        port: *p,
                        app_protocol: app.map(str::to_owned),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// An EndpointSlice with `(name, port)` ports and `(ip, ready, node, pod)` endpoints.
pub(crate) fn slice(
    ns: &str,
    svc: &str,
    ports: &[(&str, i32)],
    eps: &[(&str, bool, &str, &str)],
) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(
            Some(ns),
            &format!("{svc}-abcde"),
            &[("kubernetes.io/service-name", svc)],
        ),
        address_type: "IPv4".into(),
        ports: Some(
            ports
                .iter()
                .map(|(n, p)| k8s_openapi::api::discovery::v1::EndpointPort {
                    name: Some((*n).to_owned()),
                    port: Some(*p),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        endpoints: eps
            .iter()
            .map(|(ip, ready, node, pod)| Endpoint {
                addresses: vec![(*ip).to_owned()],
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    ..Default::default()
                }),
                node_name: Some((*node).to_owned()),
                target_ref: pod_ref(ns, pod),
                ..Default::default()
            })
            .collect(),
    }
}

/// A core/v1 Endpoints with `(name, port)` ports and `(ip, ready, node, pod)` addresses.
pub(crate) fn endpoints(
    ns: &str,
    svc: &str,
    ports: &[(&str, i32)],
    eps: &[(&str, bool, &str, &str)],
) -> Endpoints {
    let addr = |(ip, _, node, pod): &(&str, bool, &str, &str)| EndpointAddress {
        ip: (*ip).to_owned(),
        node_name: Some((*node).to_owned()),
        target_ref: pod_ref(ns, pod),
        ..Default::default()
    };
    Endpoints {
        metadata: meta(Some(ns), svc, &[]),
        subsets: Some(vec![EndpointSubset {
            addresses: Some(eps.iter().filter(|e| e.1).map(addr).collect()),
            not_ready_addresses: Some(eps.iter().filter(|e| !e.1).map(addr).collect()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| EndpointPort {
                        name: Some((*n).to_owned()),
                        port: *p,
                        ..Default::default()
                    })
                    .collect(),
            ),
        }]),
    }
}

impl MemberInput {
    /// An empty member named `cluster`.
    pub fn test(cluster: &str) -> Self {
        MemberInput {
            cluster: cluster.to_owned(),
            ..MemberInput::default()
        }
    }

    /// Adds a node with topology labels (empty values are left out).
    pub fn with_node(mut self, name: &str, region: &str, zone: &str, subzone: &str) -> Self {
        let l: Vec<(&str, &str)> = [
            ("topology.kubernetes.io/region", region),
            ("topology.kubernetes.io/zone", zone),
            ("topology.istio.io/subzone", subzone),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        self.nodes.push(Arc::new(Node {
            metadata: meta(None, name, &l),
            ..Node::default()
        }));
        self
    }

    /// Adds a Service.
    pub fn with_service(mut self, s: Service) -> Self {
        self.services.push(Arc::new(s));
        self
    }

    /// Adds an EndpointSlice (switching the member to slices), and the Pods its endpoints
    /// reference that the member lacks, with the endpoint's address as IP (as the
    /// EndpointSlice controller writes them).
    pub fn with_slice(mut self, s: EndpointSlice) -> Self {
        for e in &s.endpoints {
            self.add_referenced_pod(e.target_ref.as_ref(), &e.addresses);
        }
        match &mut self.endpoints {
            EndpointObjects::Slices(v) => v.push(Arc::new(s)),
            EndpointObjects::Endpoints(_) => {
                self.endpoints = EndpointObjects::Slices(vec![Arc::new(s)])
            }
        }
        self
    }

    /// Adds a core/v1 Endpoints (switching the member to Endpoints), and the Pods its
    /// addresses reference that the member lacks, with the address as IP.
    pub fn with_endpoints(mut self, e: Endpoints) -> Self {
        for s in e.subsets.iter().flatten() {
            let both = [&s.addresses, &s.not_ready_addresses];
            for a in both.into_iter().flatten().flatten() {
                self.add_referenced_pod(a.target_ref.as_ref(), std::slice::from_ref(&a.ip));
            }
        }
        match &mut self.endpoints {
            EndpointObjects::Endpoints(v) => v.push(Arc::new(e)),
            EndpointObjects::Slices(_) => {
                self.endpoints = EndpointObjects::Endpoints(vec![Arc::new(e)])
            }
        }
        self
    }

    fn pod_mut(&mut self, ns: &str, name: &str) -> Option<&mut Pod> {
        self.pods
            .iter_mut()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .map(Arc::make_mut)
    }

    fn add_referenced_pod(&mut self, r: Option<&ObjectReference>, ips: &[String]) {
        let Some((Some(ns), Some(name))) = r
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .map(|r| (r.namespace.as_deref(), r.name.as_deref()))
        else {
            return;
        };
        if self.pod_mut(ns, name).is_none() {
            let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
            self.pods.push(Arc::new(pod(ns, name, &ips, &[])));
        }
    }

    /// Sets the labels of a Pod, adding it (without IPs) if the member lacks it.
    pub fn with_pod(mut self, ns: &str, name: &str, l: &[(&str, &str)]) -> Self {
        match self.pod_mut(ns, name) {
            Some(p) => p.metadata.labels = labels(l),
            None => self.pods.push(Arc::new(pod(ns, name, &[], l))),
        }
        self
    }

    /// Adds (or replaces) a Pod with these IPs, before endpoints referencing it are added.
    pub fn with_pod_ips(mut self, ns: &str, name: &str, ips: &[&str]) -> Self {
        self.pods.retain(|p| {
            p.metadata.namespace.as_deref() != Some(ns) || p.metadata.name.as_deref() != Some(name)
        });
        self.pods.push(Arc::new(pod(ns, name, ips, &[])));
        self
    }
}

/// A Pod as [`crate::members::reflected::pod`] keeps it: labels and `status.podIP`/`podIPs` (none
/// when `ips` is empty, as before the kubelet reports them).
pub(crate) fn pod(ns: &str, name: &str, ips: &[&str], l: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: meta(Some(ns), name, l),
        status: (!ips.is_empty()).then(|| PodStatus {
            pod_ip: ips.first().map(|ip| (*ip).to_owned()),
            pod_ips: Some(
                ips.iter()
                    .map(|ip| PodIP {
                        ip: (*ip).to_owned(),
                    })
                    .collect(),
            ),
            ..PodStatus::default()
        }),
        ..Pod::default()
    }
}
