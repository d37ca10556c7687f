//! The admin kubeconfig of a simulated cluster, and a kube `Client` built from it.
//!
//! The kubeconfig is self-contained (certificates inline) so it can be handed to
//! `kubectl --kubeconfig`, stored in a member-cluster Secret, or parsed by any client.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::{Error, Result};

/// Renders an admin kubeconfig whose cluster, user and context are all named `cluster`.
pub(crate) fn render(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    let b64 = |pem: &str| STANDARD.encode(pem.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {cluster}-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {cluster}
  context:
    cluster: {cluster}
    user: {cluster}-admin
current-context: {cluster}
",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
}

/// A client for the kubeconfig's current context.
pub(crate) async fn client(cluster: &str, kubeconfig: &str) -> Result<Client> {
    let fail = |reason: String| Error::Kubeconfig {
        cluster: cluster.to_string(),
        reason,
    };
    let parsed = Kubeconfig::from_yaml(kubeconfig).map_err(|e| fail(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(parsed, &KubeConfigOptions::default())
        .await
        .map_err(|e| fail(e.to_string()))?;
    Client::try_from(config).map_err(|e| fail(e.to_string()))
}
