//! The mesh CA's Kubernetes objects: the Secret `<namespace>/meridian-ca` that holds a
//! cluster's intermediate and the mesh root (written by `meridianctl ca
//! issue-intermediate`, read by the controller's certificate signer), and the ConfigMap
//! `<namespace>/meridian-ca-root` (key `root-cert.pem`), like Istio's
//! `istio-ca-root-cert`, that gateway and DNS pods mount to verify the controller's gRPC
//! serving certificate. The root is thus never learnt from the connection it is meant to
//! authenticate.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use meridian_identity::ClusterCa;
use meridian_identity::ca::{CA_CERT_FILE, INTERMEDIATE_CERT_FILE, INTERMEDIATE_KEY_FILE};

/// Name of the Secret holding the cluster's intermediate and the mesh root.
pub const CA_SECRET_NAME: &str = meridian_identity::ca::CA_SECRET.1;

/// The Secret `<namespace>/meridian-ca` holding the intermediate `ca` and the mesh root in
/// the layout the controller's certificate signer reads (what `meridianctl ca issue-intermediate`
/// writes). It never holds the root key.
pub fn ca_secret(ca: &ClusterCa, namespace: &str) -> Secret {
    let entry = |key: &str, value: String| (key.to_owned(), ByteString(value.into_bytes()));
    Secret {
        metadata: ObjectMeta {
            name: Some(CA_SECRET_NAME.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([
            entry(CA_CERT_FILE, ca.root_pem().to_owned()),
            entry(INTERMEDIATE_CERT_FILE, ca.cert_pem().to_owned()),
            entry(INTERMEDIATE_KEY_FILE, ca.key_pem()),
        ])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// Name of the ConfigMap with the mesh root.
pub const CONFIGMAP_NAME: &str = "meridian-ca-root";
/// Its key holding the root, PEM.
pub const ROOT_KEY: &str = "root-cert.pem";

/// The ConfigMap holding `root_pem`, labelled as managed by Meridian.
pub fn config_map(namespace: &str, root_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIGMAP_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                crate::MANAGED_BY_LABEL.to_owned(),
                crate::MANAGED_BY.to_owned(),
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
                .and_then(|l| l.get(crate::MANAGED_BY_LABEL))
                .map(String::as_str)
                == Some(crate::MANAGED_BY);
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
