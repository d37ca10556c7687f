//! Simulated pods: the Pod object a kubelet would maintain, plus (usually) an echo server
//! on the pod's loopback address.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ContainerState, ContainerStateRunning, ContainerStatus, Pod,
    PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

/// Namespace used when a spec names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Label carrying a pod's version (also reported by its echo server).
pub const VERSION_LABEL: &str = "version";

/// Label conventionally selecting an application (the default Service selector).
pub const APP_LABEL: &str = "app";

/// Name of the single container in every simulated pod.
const CONTAINER: &str = "echo";

/// A named container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPortSpec {
    /// Port name (what a Service's named `targetPort` refers to).
    pub name: String,
    /// Port number the echo server listens on.
    pub port: u16,
}

/// What pod to add to a cluster. Build with [`PodSpec::new`] and the chained setters.
#[derive(Clone, Debug)]
pub struct PodSpec {
    /// Pod name.
    pub name: String,
    /// Namespace (created if missing). Default `default`.
    pub namespace: String,
    /// Labels. The `version` label is always set from [`PodSpec::version`].
    pub labels: BTreeMap<String, String>,
    /// Zone whose node runs the pod. Default: the cluster's first zone.
    pub zone: Option<String>,
    /// Subzone whose node runs the pod, for clusters with subzones.
    pub subzone: Option<String>,
    /// Exact node name; overrides `zone`/`subzone`.
    pub node: Option<String>,
    /// Container ports. Default: `http` on 8080.
    pub ports: Vec<ContainerPortSpec>,
    /// Version reported by the echo server and set as the `version` label. Default `v1`.
    pub version: String,
    /// Initial readiness. Default `true`.
    pub ready: bool,
    /// Run an echo server. Default `true`; set `false` when the test runs its own process
    /// (a gateway, say) on the pod's address.
    pub echo: bool,
    /// How long a removed pod keeps terminating (its endpoint `terminating`, its echo
    /// server still serving) before it is gone; whole seconds, rounded up, as Kubernetes'
    /// `terminationGracePeriodSeconds`. Default zero: removed at once.
    pub termination_grace: Duration,
}

impl PodSpec {
    /// A ready `v1` echo pod named `name` in namespace `default`.
    pub fn new(name: impl Into<String>) -> Self {
        PodSpec {
            name: name.into(),
            namespace: DEFAULT_NAMESPACE.into(),
            labels: BTreeMap::new(),
            zone: None,
            subzone: None,
            node: None,
            ports: Vec::new(),
            version: "v1".into(),
            ready: true,
            echo: true,
            termination_grace: Duration::ZERO,
        }
    }

    /// Sets the namespace.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Sets the `app` label (what [`crate::ServiceSpec`] selects by default).
    pub fn app(self, app: impl Into<String>) -> Self {
        self.label(APP_LABEL, app)
    }

    /// Sets the version (echo reply and `version` label).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Places the pod on a node in `zone`.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// Places the pod on a node in `subzone` (within its zone).
    pub fn subzone(mut self, subzone: impl Into<String>) -> Self {
        self.subzone = Some(subzone.into());
        self
    }

    /// Places the pod on the named node.
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Adds a container port (replacing the default `http`/8080).
    pub fn port(mut self, name: impl Into<String>, port: u16) -> Self {
        self.ports.push(ContainerPortSpec {
            name: name.into(),
            port,
        });
        self
    }

    /// Sets the initial readiness.
    pub fn ready(mut self, ready: bool) -> Self {
        self.ready = ready;
        self
    }

    /// Whether to run an echo server (see the field docs).
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// Sets the termination grace period (see the field docs).
    pub fn termination_grace(mut self, grace: Duration) -> Self {
        self.termination_grace = grace;
        self
    }

    /// The container ports, defaulted.
    pub(crate) fn effective_ports(&self) -> Vec<ContainerPortSpec> {
        if self.ports.is_empty() {
            vec![ContainerPortSpec {
                name: "http".into(),
                port: 8080,
            }]
        } else {
            self.ports.clone()
        }
    }

    /// Labels including `version`.
    pub(crate) fn effective_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(VERSION_LABEL.into(), self.version.clone());
        labels
    }
}

/// A pod added to a cluster. Plain data: pass it to the cluster's pod methods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodHandle {
    pub(crate) cluster: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) pod_ip: Ipv4Addr,
    pub(crate) address: Ipv4Addr,
    pub(crate) node: String,
    pub(crate) zone: String,
    pub(crate) ports: Vec<ContainerPortSpec>,
}

impl PodHandle {
    /// Cluster name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Pod name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod IP Kubernetes sees (`10.B.X.Y`, in Pod status and Endpoints).
    pub fn pod_ip(&self) -> Ipv4Addr {
        self.pod_ip
    }

    /// The loopback address the pod's process listens on (`127.B.X.Y`).
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// Where to connect to the pod's `port`.
    pub fn socket_addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.address, port))
    }

    /// Where to connect to the container port named `name`, if the pod has it.
    pub fn named_port(&self, name: &str) -> Option<SocketAddr> {
        let port = self.ports.iter().find(|p| p.name == name)?.port;
        Some(self.socket_addr(port))
    }

    /// Node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Zone of the node.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Container ports.
    pub fn ports(&self) -> &[ContainerPortSpec] {
        &self.ports
    }
}

/// The Pod object as created (status is written separately, as a kubelet would).
pub(crate) fn pod_object(spec: &PodSpec, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: Some(spec.namespace.clone()),
            labels: Some(spec.effective_labels()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some(node.to_string()),
            automount_service_account_token: Some(false),
            termination_grace_period_seconds: Some(
                i64::try_from(spec.termination_grace.as_secs_f64().ceil() as u64)
                    .unwrap_or(i64::MAX),
            ),
            containers: vec![Container {
                name: CONTAINER.into(),
                image: Some(format!("meridian.invalid/echo:{}", spec.version)),
                ports: Some(
                    spec.effective_ports()
                        .into_iter()
                        .map(|p| ContainerPort {
                            name: Some(p.name),
                            container_port: i32::from(p.port),
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// The status a kubelet would report for a running pod with the given readiness.
pub(crate) fn pod_status(
    pod_ip: Ipv4Addr,
    image: &str,
    ready: bool,
    started: &Timestamp,
) -> PodStatus {
    let now = Time(Timestamp::now());
    let condition = |type_: &str, status: bool| PodCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        last_transition_time: Some(now.clone()),
        ..Default::default()
    };
    PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(pod_ip.to_string()),
        pod_ips: Some(vec![PodIP {
            ip: pod_ip.to_string(),
        }]),
        start_time: Some(Time(*started)),
        conditions: Some(vec![
            condition("Initialized", true),
            condition("PodScheduled", true),
            condition("ContainersReady", ready),
            condition("Ready", ready),
        ]),
        container_statuses: Some(vec![ContainerStatus {
            name: CONTAINER.into(),
            image: image.into(),
            image_id: String::new(),
            ready,
            started: Some(true),
            restart_count: 0,
            state: Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(Time(*started)),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        ..Default::default()
    }
}
