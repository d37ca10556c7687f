//! Serving `discovery.k8s.io/v1` EndpointSlices on a kube-apiserver that predates them.
//!
//! Every cluster from Kubernetes 1.21 on serves v1 slices, and Meridian's controller reads
//! them wherever they are served. The testbed's v1.20 server serves them only as
//! `v1beta1`, so a cluster that uses slices gets the v1 API from a CustomResourceDefinition
//! with the real v1 schema (`tests/crds/endpointslices.discovery.k8s.io.yaml`), with the
//! built-in group switched off (`--runtime-config=discovery.k8s.io/v1beta1=false`; left
//! on, it shadows the CRD and v1 answers 404). The server then gives the v1 slices real
//! list, watch, validation, pruning and resourceVersion semantics.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// The CRD, as an operator could `kubectl apply` it.
pub const CRD_YAML: &str = include_str!("../crds/endpointslices.discovery.k8s.io.yaml");

/// The API server flag that lets the CRD serve the group.
pub(crate) const RUNTIME_CONFIG: &str = "--runtime-config=discovery.k8s.io/v1beta1=false";

/// First minor version whose API server serves v1 slices itself.
pub(crate) const BUILT_IN_SINCE_MINOR: u32 = 21;

const POLL: Duration = Duration::from_millis(100);

/// Installs the CRD and waits until `/apis/discovery.k8s.io/v1/endpointslices` is listed
/// by discovery and answers a list.
pub(crate) async fn install(client: &Client, timeout: Duration) -> Result<()> {
    let crd: CustomResourceDefinition = serde_yaml_ng::from_str(CRD_YAML)
        .map_err(|e| Error::InvalidSpec(format!("the EndpointSlice CRD does not parse: {e}")))?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        // A restarted cluster keeps it in etcd.
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(Error::kube("creating the EndpointSlice v1 CRD")(e)),
    }
    let deadline = Instant::now() + timeout;
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = Api::all(client.clone());
    loop {
        let discovered = client
            .list_api_group_resources("discovery.k8s.io/v1")
            .await
            .is_ok_and(|l| l.resources.iter().any(|r| r.name == "endpointslices"));
        if discovered && slices.list(&ListParams::default().limit(1)).await.is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: "discovery.k8s.io/v1 EndpointSlices to be served".into(),
                after: timeout,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_is_the_v1_endpointslice_in_its_protected_group() {
        let crd: CustomResourceDefinition = serde_yaml_ng::from_str(CRD_YAML).unwrap();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("endpointslices.discovery.k8s.io")
        );
        assert!(
            crd.metadata
                .annotations
                .unwrap()
                .contains_key("api-approved.kubernetes.io")
        );
        assert_eq!(crd.spec.group, "discovery.k8s.io");
        assert_eq!(crd.spec.names.kind, "EndpointSlice");
        let v = &crd.spec.versions[0];
        assert_eq!((v.name.as_str(), v.served, v.storage), ("v1", true, true));
    }
}
