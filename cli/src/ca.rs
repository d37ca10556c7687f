//! `meridianctl ca init`: the mesh root CA shared by every member cluster.
//!
//! The root lives in the Secret `meridian-system/meridian-ca` (keys `ca.crt`, `ca.key`) of
//! every member; each controller signs its own gateways' certificates with it. Create it
//! once (`--out DIR` keeps a copy as PEM files), then load the same files into the other
//! members with `--from DIR`. Rotation is described in docs/operations.md.
//!
//! Next to the Secret it writes the ConfigMap `meridian-system/meridian-ca-root` (key
//! `root-cert.pem`, the root only) that gateway and DNS pods mount to verify the
//! controller's TLS, so it exists before the first controller starts; the controller keeps
//! it up to date afterwards. With `--out`, `ca.crt` is that same root.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use meridian_identity::ca::{CA_CERT_FILE, CA_KEY_FILE, CA_SECRET, MeshCa};

use crate::connect::ClusterArgs;

/// `meridianctl ca ...`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create the mesh root CA (or load it from PEM files) into the cluster's Secret.
    Init(InitArgs),
}

/// Arguments of `ca init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Write the CA as PEM files (ca.crt, ca.key) into this directory only; no cluster.
    #[arg(long, conflicts_with = "from")]
    out: Option<PathBuf>,
    /// Load the CA from PEM files (ca.crt, ca.key) in this directory instead of creating one.
    #[arg(long)]
    from: Option<PathBuf>,
    /// Common name of a new root.
    #[arg(long, default_value = "Meridian mesh root CA")]
    name: String,
}

/// Runs `meridianctl ca ...`.
pub async fn run(cmd: Command, cluster: &ClusterArgs) -> anyhow::Result<()> {
    let Command::Init(args) = cmd;
    if let Some(dir) = &args.out {
        if dir.join(CA_KEY_FILE).exists() {
            bail!(
                "{} already exists; refusing to overwrite a CA key",
                dir.join(CA_KEY_FILE).display()
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        MeshCa::generate(&args.name)?.write_dir(dir)?;
        println!(
            "wrote {} and {} in {}",
            CA_CERT_FILE,
            CA_KEY_FILE,
            dir.display()
        );
        return Ok(());
    }
    let ca = match &args.from {
        Some(dir) => MeshCa::load_dir(dir)
            .with_context(|| format!("loading the CA from {}", dir.display()))?,
        None => MeshCa::generate(&args.name)?,
    };
    let client = cluster.client().await?;
    let (ns, name) = CA_SECRET;
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    if let Some(existing) = secrets.get_opt(name).await? {
        let same = existing
            .data
            .as_ref()
            .and_then(|d| d.get(CA_CERT_FILE))
            .is_some_and(|c| c.0 == ca.cert_pem().as_bytes());
        if same || args.from.is_none() {
            println!(
                "Secret {ns}/{name} already exists; keeping it (delete it first to replace the root)"
            );
            // Installs from before the ConfigMap existed get it from the Secret in force.
            if let Some(root) = existing.data.as_ref().and_then(|d| d.get(CA_CERT_FILE)) {
                publish_root(&client, ns, &String::from_utf8_lossy(&root.0)).await?;
            }
            return Ok(());
        }
        bail!(
            "Secret {ns}/{name} holds a different root; delete it first to replace it (see docs/operations.md, CA rotation)"
        );
    }
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::apply("meridianctl"),
            &Patch::Apply(&namespace),
        )
        .await
        .context("creating the meridian-system namespace")?;
    let secret = meridian_controller::certificates::ca_secret(&ca, ns);
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| format!("creating Secret {ns}/{name}"))?;
    println!("created Secret {ns}/{name} with the mesh root CA");
    publish_root(&client, ns, ca.cert_pem()).await
}

/// Writes the root into the ConfigMap clients pin it from.
async fn publish_root(client: &kube::Client, ns: &str, root_pem: &str) -> anyhow::Result<()> {
    use meridian_controller::ca_root::{CONFIGMAP_NAME, apply};
    if apply(client, ns, root_pem)
        .await
        .with_context(|| format!("writing ConfigMap {ns}/{CONFIGMAP_NAME}"))?
    {
        println!("wrote the mesh root into ConfigMap {ns}/{CONFIGMAP_NAME}");
    }
    Ok(())
}
