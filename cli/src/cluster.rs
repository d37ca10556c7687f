//! `meridianctl cluster add|remove|list`: registering member clusters.
//!
//! `add` mints a least-privilege reader identity in the cluster being added and writes a
//! registration Secret (label `meridian.io/cluster: "true"`, key `kubeconfig`, annotation
//! `meridian.io/cluster-name`) into the host cluster, whose controller then watches it.
//! In a multi-primary mesh every member's controller needs the Secret: run `add` once per
//! host cluster. Everything is applied server-side, so running it again is harmless and
//! refreshes the token.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use meridian_controller::crd::MemberCluster;
use meridian_controller::registry::{
    CLUSTER_LABEL, CLUSTER_NAME_ANNOTATION, GATEWAY_ADDRESS_ANNOTATION, is_dns_label,
};
use serde::Serialize;

use crate::connect::{ClusterArgs, Target};
use crate::render::{self, Output};

/// Namespace of Meridian's own objects in every cluster.
pub const SYSTEM_NAMESPACE: &str = "meridian-system";
/// Name of the reader ServiceAccount, ClusterRole and ClusterRoleBinding in members.
pub const READER: &str = "meridian-reader";
const FIELD_MANAGER: &str = "meridianctl";

/// `meridianctl cluster ...`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Register the cluster of --kubeconfig/--context into the host cluster.
    Add(AddArgs),
    /// Remove a registration (and, with --kubeconfig/--context of the member, its reader).
    Remove(RemoveArgs),
    /// List member clusters as the host cluster's controller sees them.
    List,
}

/// Arguments of `cluster add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Member name (default: the kubeconfig's cluster name); a DNS label.
    #[arg(long)]
    name: Option<String>,
    /// Kubeconfig of the host cluster that receives the Secret (default: $KUBECONFIG,
    /// then ~/.kube/config).
    #[arg(long)]
    host_kubeconfig: Option<PathBuf>,
    /// Context of the host cluster (default: the host kubeconfig's current context).
    #[arg(long)]
    host_context: Option<String>,
    /// API server URL as the host cluster's controller reaches it, when it differs from the
    /// kubeconfig's (e.g. a kind node's container address).
    #[arg(long)]
    server: Option<String>,
    /// Address (`host:port`) of the member's gateway tunnel, when it has no LoadBalancer.
    #[arg(long)]
    gateway_address: Option<String>,
    /// Lifetime of the token when it has to be requested through the TokenRequest API.
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    token_ttl: Duration,
}

/// Arguments of `cluster remove`.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// Member name.
    name: String,
    /// Kubeconfig of the host cluster (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    host_kubeconfig: Option<PathBuf>,
    /// Context of the host cluster.
    #[arg(long)]
    host_context: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    meridian_api::policy::parse_duration(s)
}

/// Runs `meridianctl cluster ...`; `target` is --kubeconfig/--context.
pub async fn run(cmd: Command, target: &ClusterArgs, output: Output) -> anyhow::Result<()> {
    match cmd {
        Command::Add(args) => add(args, target).await,
        Command::Remove(args) => remove(args, target).await,
        Command::List => list(&target.client().await?, output).await,
    }
}

async fn add(args: AddArgs, target: &ClusterArgs) -> anyhow::Result<()> {
    let member = Target::load(target.kubeconfig.as_deref(), target.context.as_deref())?;
    let host = Target::load(
        args.host_kubeconfig.as_deref(),
        args.host_context.as_deref(),
    )?;
    let (cluster_name, cluster) = member.cluster()?;
    let name = args.name.clone().unwrap_or(cluster_name);
    if !is_dns_label(&name) {
        bail!(
            "cluster name {name:?} is not a DNS label (lower-case letters, digits, '-'); pass --name"
        );
    }
    let server = args
        .server
        .clone()
        .or(cluster.server.clone())
        .ok_or_else(|| anyhow!("the member's kubeconfig has no server URL; pass --server"))?;
    let ca_data = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(data), _) => Some(data.clone()),
        (None, Some(path)) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the member's CA file {path}"))?;
            Some(base64::engine::general_purpose::STANDARD.encode(pem))
        }
        (None, None) => None,
    };

    // The host's controller accepts only kubeconfigs that pass this check (an https://
    // server, an inline CA): fail before creating anything.
    let probe = registration_kubeconfig(&name, &server, ca_data.as_deref(), "placeholder")?;
    meridian_controller::kubeconfig::accept(&probe, None)
        .map_err(|e| anyhow!("the host's controller would refuse this registration: {e}"))?;

    let client = member.client().await?;
    let token = mint_reader(&client, args.token_ttl)
        .await
        .with_context(|| {
            format!(
                "creating the reader identity in cluster {name:?} (context {:?})",
                member.context
            )
        })?;
    let kubeconfig = registration_kubeconfig(&name, &server, ca_data.as_deref(), &token)?;

    let host_client = host.client().await?;
    ensure_namespace(&host_client).await?;
    let mut annotations = BTreeMap::from([(CLUSTER_NAME_ANNOTATION.to_owned(), name.clone())]);
    if let Some(gw) = &args.gateway_address {
        annotations.insert(GATEWAY_ADDRESS_ANNOTATION.to_owned(), gw.clone());
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&name)),
            namespace: Some(SYSTEM_NAMESPACE.into()),
            labels: Some(BTreeMap::from([
                (CLUSTER_LABEL.to_owned(), "true".to_owned()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    FIELD_MANAGER.to_owned(),
                ),
            ])),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "kubeconfig".to_owned(),
            ByteString(kubeconfig.into_bytes()),
        )])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    };
    apply(
        &Api::<Secret>::namespaced(host_client, SYSTEM_NAMESPACE),
        &secret,
    )
    .await
    .with_context(|| {
        format!(
            "writing the registration Secret into the host cluster (context {:?})",
            host.context
        )
    })?;
    println!(
        "cluster {name:?} registered: Secret {SYSTEM_NAMESPACE}/{} in context {:?} (server {server})",
        secret_name(&name),
        host.context
    );
    Ok(())
}

fn secret_name(cluster: &str) -> String {
    format!("cluster-{cluster}")
}

/// The read-only rules the controller needs in a member, and nothing else.
pub fn reader_rules() -> Vec<PolicyRule> {
    let read = || vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()];
    vec![
        PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec![
                "services".into(),
                "endpoints".into(),
                "nodes".into(),
                "pods".into(),
            ]),
            verbs: read(),
            ..PolicyRule::default()
        },
        PolicyRule {
            api_groups: Some(vec!["discovery.k8s.io".into()]),
            resources: Some(vec!["endpointslices".into()]),
            verbs: read(),
            ..PolicyRule::default()
        },
    ]
}

async fn ensure_namespace(client: &Client) -> anyhow::Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(SYSTEM_NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    apply(&Api::<Namespace>::all(client.clone()), &ns).await
}

async fn apply<K>(api: &Api<K>, obj: &K) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .with_context(|| format!("applying {name}"))?;
    Ok(())
}

/// Creates the reader ServiceAccount, ClusterRole and binding, and returns a token for it:
/// a long-lived ServiceAccount token Secret where a token controller fills it in, else a
/// token from the TokenRequest API with `ttl`.
async fn mint_reader(client: &Client, ttl: Duration) -> anyhow::Result<String> {
    ensure_namespace(client).await?;
    let meta = |ns: Option<&str>| ObjectMeta {
        name: Some(READER.into()),
        namespace: ns.map(str::to_owned),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_owned(),
            FIELD_MANAGER.to_owned(),
        )])),
        ..ObjectMeta::default()
    };
    let sa = ServiceAccount {
        metadata: meta(Some(SYSTEM_NAMESPACE)),
        ..ServiceAccount::default()
    };
    apply(
        &Api::<ServiceAccount>::namespaced(client.clone(), SYSTEM_NAMESPACE),
        &sa,
    )
    .await?;
    let role = ClusterRole {
        metadata: meta(None),
        rules: Some(reader_rules()),
        ..ClusterRole::default()
    };
    apply(&Api::<ClusterRole>::all(client.clone()), &role).await?;
    let binding = ClusterRoleBinding {
        metadata: meta(None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: READER.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: READER.into(),
            namespace: Some(SYSTEM_NAMESPACE.into()),
            ..Subject::default()
        }]),
    };
    apply(&Api::<ClusterRoleBinding>::all(client.clone()), &binding).await?;

    let secrets = Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let token_secret = Secret {
        metadata: ObjectMeta {
            name: Some(format!("{READER}-token")),
            namespace: Some(SYSTEM_NAMESPACE.into()),
            annotations: Some(BTreeMap::from([(
                "kubernetes.io/service-account.name".to_owned(),
                READER.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/service-account-token".into()),
        ..Secret::default()
    };
    apply(&secrets, &token_secret).await?;
    // A token controller fills the Secret within a second or two where one runs.
    for _ in 0..12 {
        let s = secrets.get(&format!("{READER}-token")).await?;
        if let Some(token) = s.data.as_ref().and_then(|d| d.get("token")) {
            return String::from_utf8(token.0.clone()).context("the token is not UTF-8");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // No token controller (e.g. an API server without kube-controller-manager).
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(ttl.as_secs() as i64),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .create_token_request(READER, &PostParams::default(), &request)
        .await
        .context("requesting a token (TokenRequest API)")?;
    issued
        .status
        .map(|s| s.token)
        .ok_or_else(|| anyhow!("the API server returned no token"))
}

fn registration_kubeconfig(
    name: &str,
    server: &str,
    ca_data: Option<&str>,
    token: &str,
) -> anyhow::Result<String> {
    let mut cluster = serde_json::json!({ "server": server });
    if let Some(ca) = ca_data {
        cluster["certificate-authority-data"] = ca.into();
    }
    let kc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": name, "cluster": cluster }],
        "users": [{ "name": READER, "user": { "token": token } }],
        "contexts": [{ "name": name, "context": { "cluster": name, "user": READER } }],
        "current-context": name,
    });
    serde_yaml_ng::to_string(&kc).context("encoding the kubeconfig")
}

async fn remove(args: RemoveArgs, target: &ClusterArgs) -> anyhow::Result<()> {
    let host = Target::load(
        args.host_kubeconfig.as_deref(),
        args.host_context.as_deref(),
    )?;
    let secrets = Api::<Secret>::namespaced(host.client().await?, SYSTEM_NAMESPACE);
    let registered = secrets
        .list(&ListParams::default().labels(&format!("{CLUSTER_LABEL}=true")))
        .await?;
    let mut removed = 0;
    for s in registered {
        let member = s
            .annotations()
            .get(CLUSTER_NAME_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| s.name_any());
        if member == args.name {
            secrets
                .delete(&s.name_any(), &DeleteParams::default())
                .await?;
            println!(
                "removed registration Secret {SYSTEM_NAMESPACE}/{}",
                s.name_any()
            );
            removed += 1;
        }
    }
    if removed == 0 {
        bail!(
            "no registration Secret for cluster {:?} in context {:?}",
            args.name,
            host.context
        );
    }
    if target.kubeconfig.is_some() || target.context.is_some() {
        let client = target.client().await?;
        delete_if_present(
            &Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE),
            &format!("{READER}-token"),
        )
        .await?;
        delete_if_present(
            &Api::<ServiceAccount>::namespaced(client.clone(), SYSTEM_NAMESPACE),
            READER,
        )
        .await?;
        delete_if_present(&Api::<ClusterRoleBinding>::all(client.clone()), READER).await?;
        delete_if_present(&Api::<ClusterRole>::all(client), READER).await?;
        println!("removed the {READER} identity from the member");
    }
    Ok(())
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(anyhow::Error::from(e).context(format!("deleting {name}"))),
    }
}

async fn list(client: &Client, output: Output) -> anyhow::Result<()> {
    let members = Api::<MemberCluster>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing MemberClusters (is Meridian installed in this cluster?)")?;
    let mut items = members.items;
    items.sort_by_key(|m| m.name_any());
    match output {
        Output::Table => print!(
            "{}",
            render::table(&member_header(), items.iter().map(member_row).collect())
        ),
        _ => render::print_structured(&items, output)?,
    }
    Ok(())
}

/// Columns of the member table, shared with `status`.
pub fn member_header() -> [&'static str; 7] {
    [
        "NAME",
        "PHASE",
        "SERVER",
        "ENDPOINT-API",
        "SERVICES",
        "ENDPOINTS",
        "MESSAGE",
    ]
}

/// One row of the member table.
pub fn member_row(m: &MemberCluster) -> Vec<String> {
    let s = m.status.clone().unwrap_or_default();
    vec![
        m.name_any(),
        s.phase.to_string(),
        s.server.unwrap_or_default(),
        s.endpoint_api.unwrap_or_default(),
        s.services.to_string(),
        s.endpoints.to_string(),
        s.message.unwrap_or_default(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_is_read_only() {
        for rule in reader_rules() {
            assert_eq!(rule.verbs, ["get", "list", "watch"]);
            for r in rule.resources.unwrap() {
                assert!(
                    ["services", "endpoints", "nodes", "pods", "endpointslices"]
                        .contains(&r.as_str()),
                    "{r}"
                );
            }
        }
    }
}
