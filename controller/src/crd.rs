//! Meridian's custom resources, group `meridian.io`, version `v1alpha1`: defined in the
//! `meridian-crd` crate (so `meridianctl` can use them without the controller), re-exported
//! here under their old paths.

pub use meridian_crd::{
    ClusterEndpoints, GROUP, GlobalService, GlobalServicePort, GlobalServiceSpec,
    GlobalServiceStatus, GlobalTrafficPolicy, GlobalTrafficPolicySpec, GlobalTrafficPolicyStatus,
    LocalityEndpoints, MemberCluster, MemberClusterSpec, MemberClusterStatus, Phase, VERSION, all,
    manifests,
};
