//! Builders for unit-test inputs (Kubernetes objects as the reflectors would hold them).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Node, ObjectReference, Service,
    ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;

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
pub fn service(ns: &str, name: &str, ports: &[(&str, i32, Option<&str>)], export: bool) -> Service {
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
pub fn slice(
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
pub fn endpoints(
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

    /// Adds an EndpointSlice (switching the member to slices).
    pub fn with_slice(mut self, s: EndpointSlice) -> Self {
        match &mut self.endpoints {
            EndpointObjects::Slices(v) => v.push(Arc::new(s)),
            EndpointObjects::Endpoints(_) => {
                self.endpoints = EndpointObjects::Slices(vec![Arc::new(s)])
            }
        }
        self
    }

    /// Adds a core/v1 Endpoints (switching the member to Endpoints).
    pub fn with_endpoints(mut self, e: Endpoints) -> Self {
        match &mut self.endpoints {
            EndpointObjects::Endpoints(v) => v.push(Arc::new(e)),
            EndpointObjects::Slices(_) => {
                self.endpoints = EndpointObjects::Endpoints(vec![Arc::new(e)])
            }
        }
        self
    }

    /// Adds pod metadata with labels.
    pub fn with_pod(mut self, ns: &str, name: &str, l: &[(&str, &str)]) -> Self {
        self.pods.push(Arc::new(PartialObjectMeta {
            types: None,
            metadata: meta(Some(ns), name, l),
            _phantom: Default::default(),
        }));
        self
    }
}
