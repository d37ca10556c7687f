//! Out-of-band distribution of the mesh root, like Istio's `istio-ca-root-cert`: the
//! ConfigMap `<namespace>/meridian-ca-root` (key `root-cert.pem`) that gateway and DNS
//! pods mount to verify the controller's gRPC serving certificate ([`crate::grpc::tls`]), and
//! that the gateway pins the root handed out with its own certificate against. Clients
//! thus never learn the root from the connection it is meant to authenticate.
//!
//! The leader keeps it equal to the root in the cluster's CA Secret (never the
//! intermediate): it is created when the CA first appears and updated when the root
//! changes. `meridianctl ca issue-intermediate` writes it too, so it exists before the
//! first controller runs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::grpc::certificates::CaCache;

/// Name of the ConfigMap with the mesh root.
pub const CONFIGMAP_NAME: &str = "meridian-ca-root";
/// Its key holding the root, PEM.
pub(crate) const ROOT_KEY: &str = "root-cert.pem";
/// How often the leader checks the ConfigMap against the CA.
const POLL: Duration = Duration::from_secs(30);
/// How often it looks again while there is no CA or a write failed.
const RETRY: Duration = Duration::from_secs(5);

/// The ConfigMap holding `root_pem`, labelled as managed by Meridian.
pub(crate) fn config_map(namespace: &str, root_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIGMAP_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                crate::vip::MANAGED_BY_LABEL.to_owned(),
                crate::vip::MANAGED_BY.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(ROOT_KEY.to_owned(), root_pem.to_owned())])),
        ..ConfigMap::default()
    }
}

/// Makes the ConfigMap in `namespace` hold `root_pem` (get, then create or update, so
/// only `get`/`update` on this one name and `create` are needed). Returns whether it
/// wrote.
pub async fn apply(client: &Client, namespace: &str, root_pem: &str) -> kube::Result<bool> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let mut desired = config_map(namespace, root_pem);
    match api.get_opt(CONFIGMAP_NAME).await? {
        None => {
            api.create(&PostParams::default(), &desired).await?;
            Ok(true)
        }
        Some(existing) => {
            let same_data =
                existing.data.as_ref().and_then(|d| d.get(ROOT_KEY)) == Some(&root_pem.to_owned());
            let labelled = existing
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(crate::vip::MANAGED_BY_LABEL))
                .map(String::as_str)
                == Some(crate::vip::MANAGED_BY);
            if same_data && labelled {
                return Ok(false);
            }
            // Keep whatever else people put on it; only our key and label are ours.
            let mut labels = existing.metadata.labels.clone().unwrap_or_default();
            labels.extend(desired.metadata.labels.take().unwrap_or_default());
            let mut data = existing.data.clone().unwrap_or_default();
            data.insert(ROOT_KEY.to_owned(), root_pem.to_owned());
            desired.metadata = ObjectMeta {
                labels: Some(labels),
                ..existing.metadata
            };
            desired.data = Some(data);
            api.replace(CONFIGMAP_NAME, &PostParams::default(), &desired)
                .await?;
            Ok(true)
        }
    }
}

/// Keeps the ConfigMap equal to the CA's root while this replica leads.
pub(crate) async fn publish_while_leader(
    client: Client,
    namespace: String,
    ca: Arc<CaCache>,
    mut leader: watch::Receiver<bool>,
) {
    loop {
        if leader.wait_for(|l| *l).await.is_err() {
            return;
        }
        loop {
            // Read fresh: a cached root up to CA_CACHE old could undo a rotation that
            // `meridianctl ca issue-intermediate` has just written.
            let wait = match ca.fresh().await {
                // No CA: the serving certificate task already says so.
                Err(_) => RETRY,
                Ok(ca) => match apply(&client, &namespace, ca.root_pem()).await {
                    Ok(true) => {
                        info!(configmap = %format!("{namespace}/{CONFIGMAP_NAME}"), "mesh root published");
                        POLL
                    }
                    Ok(false) => POLL,
                    Err(e) => {
                        warn!(error = %e, configmap = %format!("{namespace}/{CONFIGMAP_NAME}"), "publishing the mesh root failed, retrying");
                        RETRY
                    }
                },
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                lost = leader.wait_for(|l| !*l) => if lost.is_err() { return } else { break },
            }
        }
    }
}
