//! Simulated nodes: Node objects carrying the topology labels Meridian derives locality
//! from, with the Ready status a kubelet would report.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

/// Node label naming the region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Node label naming the zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Node label naming the subzone (Istio's convention).
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// Node label naming the host.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// A node of a simulated cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Region label value.
    pub region: String,
    /// Zone label value.
    pub zone: String,
    /// Subzone label value, if any.
    pub subzone: Option<String>,
}

impl NodeInfo {
    /// A node named `<cluster>-<zone>[-<subzone>]-<index>`.
    pub(crate) fn new(
        cluster: &str,
        region: &str,
        zone: &str,
        subzone: Option<&str>,
        index: usize,
    ) -> Self {
        let base = match subzone {
            Some(sub) => format!("{cluster}-{zone}-{sub}-{index}"),
            None => format!("{cluster}-{zone}-{index}"),
        };
        NodeInfo {
            name: sanitize(&base),
            region: region.into(),
            zone: zone.into(),
            subzone: subzone.map(str::to_string),
        }
    }

    /// The Node object.
    pub(crate) fn to_node(&self) -> Node {
        let mut labels = BTreeMap::from([
            (HOSTNAME_LABEL.to_string(), self.name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            (REGION_LABEL.to_string(), self.region.clone()),
            (ZONE_LABEL.to_string(), self.zone.clone()),
        ]);
        if let Some(subzone) = &self.subzone {
            labels.insert(SUBZONE_LABEL.to_string(), subzone.clone());
        }
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: None,
            status: None,
        }
    }

    /// The status a healthy kubelet would report.
    pub(crate) fn ready_status() -> NodeStatus {
        let now = Time(Timestamp::now());
        NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("KubeletReady".into()),
                message: Some("simulated by meridian-testbed".into()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(now),
            }]),
            ..Default::default()
        }
    }
}

/// Lowercases and replaces characters a node name cannot hold.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect()
}
