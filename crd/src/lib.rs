//! Meridian's Kubernetes contract, shared by the controller, `meridianctl` and the tests
//! without pulling in the controller:
//!
//! - the custom resources (group `meridian.io`, version `v1alpha1`) and their generated
//!   manifests;
//! - [`registration`]: the Secret that registers a member cluster (label, annotations,
//!   key) and its one builder;
//! - [`kubeconfig`]: the allow-list every registration kubeconfig passes before anything
//!   connects with it;
//! - [`ca`]: the mesh CA Secret and the root ConfigMap;
//! - [`drain`]: a member's maintenance drain (`MemberCluster.spec.drain`) and its ramp.

pub mod ca;
pub mod drain;
pub mod kubeconfig;
pub mod registration;
mod resources;

pub use resources::{
    ClusterEndpoints, GROUP, GlobalService, GlobalServicePort, GlobalServiceSpec,
    GlobalServiceStatus, GlobalTrafficPolicy, GlobalTrafficPolicySpec, GlobalTrafficPolicyStatus,
    LocalityEndpoints, MemberCluster, MemberClusterSpec, MemberClusterStatus, Phase, VERSION, all,
    manifests,
};

/// Label (value `"true"`) that exports a Service through Meridian.
pub const EXPORT_LABEL: &str = "meridian.io/export";
/// Label on every object Meridian manages; its value names the writer.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// [`MANAGED_BY_LABEL`]'s value on objects the controller writes.
pub const MANAGED_BY: &str = "meridian";
