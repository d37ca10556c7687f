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

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::grpc::certificates::CaCache;

pub use meridian_crd::ca::{CONFIGMAP_NAME, ROOT_KEY, apply, config_map};

/// How often the leader checks the ConfigMap against the CA.
const POLL: Duration = Duration::from_secs(30);
/// How often it looks again while there is no CA or a write failed.
const RETRY: Duration = Duration::from_secs(5);

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
