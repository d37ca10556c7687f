//! The Kubernetes Multi-Cluster Services API (KEP-1645, `multicluster.x-k8s.io`) on top of
//! Meridian's catalog.
//!
//! A `ServiceExport` named like a Service exports it exactly as the `meridian.io/export`
//! label does: the catalog takes either ([`crate::catalog::Catalog::build`]), so an
//! MCS-exported service gets the same VIP, gateway listeners, locality failover, policies,
//! outlier detection and tunnel. On top of that, every cluster's controller
//! - resolves each exported service across clusters ([`resolve`]: the oldest export wins
//!   conflicts, ports are the union by name),
//! - writes a `ServiceImport` per exported service into its own cluster, in the Service's
//!   namespace, with this cluster's VIP as ClusterSet IP ([`writer`]),
//! - writes `Valid`, `Ready` and `Conflict` on its own cluster's ServiceExports, and
//! - makes sure its cluster has a `cluster.clusterset.k8s.io` ClusterProperty.
//!
//! `<svc>.<ns>.svc.clusterset.local` is served by `meridian-dns` from the same snapshot.

pub(crate) mod resolve;
pub mod types;
pub(crate) mod writer;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use kube::Client;

pub use resolve::McsView;
pub use types::{ClusterProperty, ServiceExport, ServiceImport};

/// What the controller reads of a ServiceExport: its metadata (a metadata-only watch; the
/// spec holds nothing Meridian uses, and upstream objects often have none).
pub type ExportMeta = kube::core::PartialObjectMeta<ServiceExport>;

use crate::catalog::{MemberInput, ServiceKey};

/// Keys of the Services a member exports by ServiceExport.
pub fn exported_keys(member: &MemberInput) -> BTreeSet<ServiceKey> {
    member
        .service_exports
        .iter()
        .filter_map(|se| {
            Some(ServiceKey::new(
                se.metadata.namespace.as_deref()?,
                se.metadata.name.as_deref()?,
            ))
        })
        .collect()
}

/// Whether a ServiceExport in `keys` exports `svc` (never an ExternalName Service: its
/// export is invalid).
pub fn is_mcs_exported(svc: &Service, keys: &BTreeSet<ServiceKey>) -> bool {
    let (Some(ns), Some(name)) = (
        svc.metadata.namespace.as_deref(),
        svc.metadata.name.as_deref(),
    ) else {
        return false;
    };
    !keys.is_empty() && !resolve::is_external_name(svc) && keys.contains(&ServiceKey::new(ns, name))
}

/// Whether a cluster serves ServiceExport (the MCS CRDs are installed).
pub async fn served(client: &Client) -> bool {
    let version = format!("{}/{}", types::MCS_GROUP, types::MCS_VERSION);
    matches!(
        client.list_api_group_resources(&version).await,
        Ok(list) if list.resources.iter().any(|r| r.name == "serviceexports")
    )
}
