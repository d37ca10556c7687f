//! Services to create in a simulated cluster (exported for Meridian by default).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::pod::{APP_LABEL, DEFAULT_NAMESPACE};

pub use meridian_crd::EXPORT_LABEL;

/// One Service port. Build with [`ServicePortSpec::tcp`] or [`ServicePortSpec::http`].
#[derive(Clone, Debug)]
pub struct ServicePortSpec {
    /// Port name (required by Kubernetes when there are several ports).
    pub name: String,
    /// The Service port.
    pub port: u16,
    /// The pod port: a number or a container port name. Default: `port`.
    pub target_port: Option<IntOrString>,
    /// `appProtocol` (`http`, `http2`, `grpc`…), if any.
    pub app_protocol: Option<String>,
}

impl ServicePortSpec {
    /// A plain TCP port.
    pub fn tcp(name: impl Into<String>, port: u16) -> Self {
        ServicePortSpec {
            name: name.into(),
            port,
            target_port: None,
            app_protocol: None,
        }
    }

    /// A port with `appProtocol: http`.
    pub fn http(name: impl Into<String>, port: u16) -> Self {
        ServicePortSpec::tcp(name, port).app_protocol("http")
    }

    /// Targets pod port number `port`.
    pub fn target(mut self, port: u16) -> Self {
        self.target_port = Some(IntOrString::Int(i32::from(port)));
        self
    }

    /// Targets the pod's container port named `name`.
    pub fn target_name(mut self, name: impl Into<String>) -> Self {
        self.target_port = Some(IntOrString::String(name.into()));
        self
    }

    /// Sets `appProtocol`.
    pub fn app_protocol(mut self, protocol: impl Into<String>) -> Self {
        self.app_protocol = Some(protocol.into());
        self
    }
}

/// What Service to create. Build with [`ServiceSpec::new`] and the chained setters.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// Namespace (created if missing). Default `default`.
    pub namespace: String,
    /// Pod selector; `None` selects `app: <name>`.
    pub selector: Option<BTreeMap<String, String>>,
    /// Ports.
    pub ports: Vec<ServicePortSpec>,
    /// Set the `meridian.io/export: "true"` label. Default `true`.
    pub exported: bool,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

impl ServiceSpec {
    /// An exported Service `name` in `default` selecting `app: <name>`, without ports yet.
    pub fn new(name: impl Into<String>) -> Self {
        ServiceSpec {
            name: name.into(),
            selector: None,
            namespace: DEFAULT_NAMESPACE.into(),
            ports: Vec::new(),
            exported: true,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        }
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Adds a port.
    pub fn port(mut self, port: ServicePortSpec) -> Self {
        self.ports.push(port);
        self
    }

    /// Selects pods labelled `key: value`. The first call replaces the default selector;
    /// later calls add keys.
    pub fn selector(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.selector
            .get_or_insert_default()
            .insert(key.into(), value.into());
        self
    }

    /// Whether to export the Service.
    pub fn exported(mut self, exported: bool) -> Self {
        self.exported = exported;
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds an annotation.
    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// The Service object.
    pub(crate) fn to_service(&self) -> Service {
        let mut labels = self.labels.clone();
        if self.exported {
            labels.insert(EXPORT_LABEL.into(), "true".into());
        }
        Service {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations: (!self.annotations.is_empty()).then(|| self.annotations.clone()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                selector: Some(self.selector.clone().unwrap_or_else(|| {
                    BTreeMap::from([(APP_LABEL.to_string(), self.name.clone())])
                })),
                ports: Some(
                    self.ports
                        .iter()
                        .map(|p| ServicePort {
                            name: Some(p.name.clone()),
                            port: i32::from(p.port),
                            target_port: p.target_port.clone(),
                            app_protocol: p.app_protocol.clone(),
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }
}
