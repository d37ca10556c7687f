//! The controller's own cluster: its client, and Meridian's CRDs installed in it.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use tracing::info;

use crate::crd;
use crate::{Config, Error, Result};

/// How often, and how far apart, installed CRDs are checked for being served.
const CRD_READY_ATTEMPTS: u32 = 100;
const CRD_READY_POLL: Duration = Duration::from_millis(100);

/// Builds the own cluster's client: `--kubeconfig` (and `--context`) when given, else the
/// in-cluster configuration. Returns the client and the API server URL.
pub(crate) async fn client(config: &Config) -> Result<(Client, String)> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::ReadKubeconfig {
                path: path.clone(),
                source,
            })?;
            let kc = Kubeconfig::from_yaml(&text).map_err(Error::Kubeconfig)?;
            let opts = KubeConfigOptions {
                context: config.context.clone(),
                ..KubeConfigOptions::default()
            };
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(Error::Kubeconfig)?
        }
        None => kube::Config::incluster().map_err(Error::InCluster)?,
    };
    let server = kube_config.cluster_url.to_string();
    let client = Client::try_from(kube_config).map_err(Error::Client)?;
    Ok((client, server))
}

/// Applies Meridian's CRDs and waits until they are served.
pub(crate) async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    // Create or replace, not server-side apply: v1.20's apply turns `default: ''` into null.
    for mut crd in crd::all() {
        let name = crd.name_any();
        match api.get_opt(&name).await? {
            Some(existing) => {
                crd.metadata.resource_version = existing.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &crd).await?;
            }
            None => {
                api.create(&PostParams::default(), &crd).await?;
            }
        }
        info!(crd = %name, "CRD installed");
    }
    // Established CRDs answer lists; poll briefly.
    let mut attempt = 1;
    loop {
        match crds_served(client).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= CRD_READY_ATTEMPTS => return Err(e.into()),
            Err(_) => attempt += 1,
        }
        tokio::time::sleep(CRD_READY_POLL).await;
    }
}

/// Whether every Meridian CRD answers a list.
async fn crds_served(client: &Client) -> kube::Result<()> {
    let one = ListParams::default().limit(1);
    Api::<crd::GlobalService>::all(client.clone())
        .list(&one)
        .await?;
    Api::<crd::MemberCluster>::all(client.clone())
        .list(&one)
        .await?;
    Api::<crd::GlobalTrafficPolicy>::all(client.clone())
        .list(&one)
        .await?;
    Ok(())
}
