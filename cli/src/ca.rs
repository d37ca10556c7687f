//! `meridianctl ca init` and `meridianctl ca issue-intermediate`: the two-tier mesh CA.
//!
//! `ca init` creates the mesh root and puts it where the operator chooses: PEM files
//! (`--out DIR`: `ca.crt`, `ca.key`) or a Secret (`--secret NAMESPACE/NAME`) in the
//! cluster of `--kubeconfig`/`--context`, which should be one that runs no Meridian. The
//! root key never goes into a member's `meridian-system`.
//!
//! `ca issue-intermediate --cluster NAME` signs that cluster's intermediate with the root
//! (read from `--root-dir` or `--root-secret`) and installs it into the member's Secret
//! `meridian-system/meridian-ca` (keys `ca.crt` = the root certificate, `intermediate.crt`,
//! `intermediate.key`), removing a `ca.key` left there by the one-tier layout. Running it
//! again rotates the intermediate. Next to the Secret it writes the ConfigMap
//! `meridian-system/meridian-ca-root` (key `root-cert.pem`, the root only) that gateway and
//! DNS pods mount to verify the controller's TLS, so it exists before the first controller
//! starts; the controller keeps it up to date afterwards.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use meridian_identity::RootCa;
use meridian_identity::ca::{CA_CERT_FILE, CA_KEY_FILE, CA_SECRET};

use crate::connect::{ClusterArgs, Target};

/// `meridianctl ca ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create the mesh root CA, as PEM files or in a Secret of a cluster of your choice
    /// (never a member's meridian-system).
    Init(InitArgs),
    /// Sign a member cluster's intermediate CA with the root and install it into that
    /// cluster (Secret meridian-system/meridian-ca); again to rotate it.
    IssueIntermediate(IssueArgs),
}

/// Arguments of `ca init`.
#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// Write the root as PEM files (ca.crt, ca.key) into this directory; no cluster.
    #[arg(long, required_unless_present = "secret", conflicts_with = "secret")]
    out: Option<PathBuf>,
    /// Store the root in this Secret (NAMESPACE/NAME) of the --kubeconfig/--context
    /// cluster, ideally one that runs no Meridian.
    #[arg(long, value_parser = parse_secret_ref)]
    secret: Option<(String, String)>,
    /// Common name of the new root.
    #[arg(long, default_value = "Meridian mesh root CA")]
    name: String,
}

/// Arguments of `ca issue-intermediate`.
#[derive(Debug, clap::Args)]
pub(crate) struct IssueArgs {
    /// The member cluster (its --cluster-name): the only cluster the intermediate certifies.
    #[arg(long)]
    cluster: String,
    /// SPIFFE trust domain of the mesh (the controllers' --trust-domain).
    #[arg(long, default_value = "meridian.local")]
    trust_domain: String,
    /// Lifetime of the intermediate (capped at the root's end).
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    ttl: Duration,
    /// Read the root from PEM files (ca.crt, ca.key) in this directory.
    #[arg(
        long,
        required_unless_present = "root_secret",
        conflicts_with = "root_secret"
    )]
    root_dir: Option<PathBuf>,
    /// Read the root from this Secret (NAMESPACE/NAME, keys ca.crt and ca.key), in the
    /// cluster of --root-kubeconfig/--root-context.
    #[arg(long, value_parser = parse_secret_ref)]
    root_secret: Option<(String, String)>,
    /// Kubeconfig of the cluster holding --root-secret (default: --kubeconfig).
    #[arg(long, requires = "root_secret")]
    root_kubeconfig: Option<PathBuf>,
    /// Context of the cluster holding --root-secret (default: the kubeconfig's current).
    #[arg(long, requires = "root_secret")]
    root_context: Option<String>,
    /// Write the intermediate (intermediate.crt, intermediate.key, ca.crt) into this
    /// directory (the controller's --ca-dir layout) instead of a cluster.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn parse_secret_ref(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(format!("expected NAMESPACE/NAME, got {s:?}")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    meridian_api::policy::parse_duration(s)
}

/// Runs `meridianctl ca ...`.
pub(crate) async fn run(cmd: Command, cluster: &ClusterArgs) -> anyhow::Result<()> {
    match cmd {
        Command::Init(args) => init(args, cluster).await,
        Command::IssueIntermediate(args) => issue_intermediate(args, cluster).await,
    }
}

async fn init(args: InitArgs, cluster: &ClusterArgs) -> anyhow::Result<()> {
    let root = RootCa::generate(&args.name)?;
    if let Some(dir) = &args.out {
        if dir.join(CA_KEY_FILE).exists() {
            bail!(
                "{} already exists; refusing to overwrite a CA key",
                dir.join(CA_KEY_FILE).display()
            );
        }
        root.write_dir(dir)?;
        println!(
            "wrote {} and {} in {} (keep {} away from member clusters)",
            CA_CERT_FILE,
            CA_KEY_FILE,
            dir.display(),
            CA_KEY_FILE
        );
        return Ok(());
    }
    let Some((ns, name)) = &args.secret else {
        bail!("choose where the root key goes: --out DIR or --secret NAMESPACE/NAME");
    };
    if (ns.as_str(), name.as_str()) == CA_SECRET {
        bail!(
            "{ns}/{name} is where members keep their intermediate; the root key must live elsewhere"
        );
    }
    let client = cluster.client().await?;
    ensure_namespace(&client, ns).await?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            ..ObjectMeta::default()
        },
        data: Some(
            [
                (CA_CERT_FILE, root.cert_pem().to_owned()),
                (CA_KEY_FILE, root.key_pem()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
            .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(client, ns)
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| {
            format!("creating Secret {ns}/{name} (an existing root is never replaced)")
        })?;
    println!("created Secret {ns}/{name} with the mesh root CA");
    Ok(())
}

async fn issue_intermediate(args: IssueArgs, cluster: &ClusterArgs) -> anyhow::Result<()> {
    let root = load_root(&args, cluster).await?;
    let ca = root.issue_intermediate(&args.trust_domain, &args.cluster, args.ttl)?;
    if let Some(dir) = &args.out {
        ca.write_dir(dir)?;
        println!(
            "wrote the intermediate of {} into {}",
            args.cluster,
            dir.display()
        );
        return Ok(());
    }
    let client = cluster.client().await?;
    let (ns, name) = CA_SECRET;
    ensure_namespace(&client, ns).await?;
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let desired = meridian_crd::ca::ca_secret(&ca, ns);
    match secrets.get_opt(name).await? {
        None => {
            secrets
                .create(&PostParams::default(), &desired)
                .await
                .with_context(|| format!("creating Secret {ns}/{name}"))?;
        }
        Some(existing) => {
            let data = existing.data.clone().unwrap_or_default();
            if data
                .get(CA_CERT_FILE)
                .is_some_and(|c| c.0 != root.cert_pem().as_bytes())
            {
                bail!(
                    "Secret {ns}/{name} holds a different mesh root; delete it first to replace it (see docs/operations.md, CA rotation)"
                );
            }
            if data.contains_key(CA_KEY_FILE) {
                println!("removing the mesh root key ({CA_KEY_FILE}) from Secret {ns}/{name}");
            }
            // Replaced whole: nothing of the one-tier layout (the root key) survives.
            let replacement = Secret {
                metadata: ObjectMeta {
                    resource_version: existing.metadata.resource_version.clone(),
                    ..desired.metadata.clone()
                },
                ..desired
            };
            secrets
                .replace(name, &PostParams::default(), &replacement)
                .await
                .with_context(|| format!("replacing Secret {ns}/{name}"))?;
        }
    }
    println!(
        "installed the intermediate of {} in Secret {ns}/{name} (valid for {} h)",
        args.cluster,
        ca.not_after()
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
            .as_secs()
            / 3600
    );
    publish_root(&client, ns, root.cert_pem()).await
}

/// The root, from files or from the Secret `ca init --secret` created.
async fn load_root(args: &IssueArgs, cluster: &ClusterArgs) -> anyhow::Result<RootCa> {
    if let Some(dir) = &args.root_dir {
        return RootCa::load_dir(dir)
            .with_context(|| format!("loading the mesh root from {}", dir.display()));
    }
    let (ns, name) = args
        .root_secret
        .as_ref()
        .ok_or_else(|| anyhow!("pass --root-dir or --root-secret"))?;
    let kubeconfig = args
        .root_kubeconfig
        .as_deref()
        .or(cluster.kubeconfig.as_deref());
    let client = Target::load(kubeconfig, args.root_context.as_deref())?
        .client()
        .await?;
    let secret = Api::<Secret>::namespaced(client, ns)
        .get(name)
        .await
        .with_context(|| format!("reading the mesh root Secret {ns}/{name}"))?;
    let data = secret.data.unwrap_or_default();
    let get = |key: &str| {
        data.get(key)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| anyhow!("Secret {ns}/{name} has no {key:?} key"))
    };
    RootCa::from_pem(&get(CA_CERT_FILE)?, &get(CA_KEY_FILE)?)
        .with_context(|| format!("loading the mesh root from Secret {ns}/{name}"))
}

async fn ensure_namespace(client: &kube::Client, ns: &str) -> anyhow::Result<()> {
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
        .with_context(|| format!("creating the {ns} namespace"))?;
    Ok(())
}

/// Writes the root into the ConfigMap clients pin it from.
async fn publish_root(client: &kube::Client, ns: &str, root_pem: &str) -> anyhow::Result<()> {
    use meridian_crd::ca::{CONFIGMAP_NAME, apply};
    if apply(client, ns, root_pem)
        .await
        .with_context(|| format!("writing ConfigMap {ns}/{CONFIGMAP_NAME}"))?
    {
        println!("wrote the mesh root into ConfigMap {ns}/{CONFIGMAP_NAME}");
    }
    Ok(())
}
