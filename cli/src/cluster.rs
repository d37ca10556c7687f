//! `meridianctl cluster add|rotate-credentials|remove|list`: registering member clusters
//! (`drain` and `undrain` are in [`crate::drain`]).
//!
//! `add` mints a least-privilege reader identity in the cluster being added and writes a
//! registration Secret (label `meridian.io/cluster: "true"`, key `kubeconfig`, annotation
//! `meridian.io/cluster-name`) into the host cluster, whose controller then watches it.
//! In a multi-primary mesh every member's controller needs the Secret: run `add` once per
//! host cluster. Everything is applied server-side, so running it again is harmless and
//! refreshes the token.
//!
//! The reader's token is a bound token from the TokenRequest API that expires
//! (`--token-ttl`, 30 days by default), never a long-lived token Secret: a leaked
//! registration stops working by itself. `rotate-credentials` mints a fresh token and puts
//! it into the host's registration Secret(s), keeping everything else; the controller
//! reconnects with it, and the old token stays valid until it expires, so nothing is cut
//! off while the Secret propagates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
use meridian_crd::registration::{
    self, CLUSTER_NAME_ANNOTATION, CONTEXT_ANNOTATION, GATEWAY_ADDRESS_ANNOTATION, KUBECONFIG_KEY,
    Registration, is_dns_label,
};
use meridian_crd::{MANAGED_BY_LABEL, MemberCluster};
use serde::Serialize;

use crate::connect::{ClusterArgs, Target};
use crate::render::{self, Output};

/// Namespace of Meridian's own objects in every cluster.
pub(crate) const SYSTEM_NAMESPACE: &str = "meridian-system";
/// Name of the reader ServiceAccount, ClusterRole and ClusterRoleBinding in members.
pub(crate) const READER: &str = "meridian-reader";
const FIELD_MANAGER: &str = "meridianctl";

/// `meridianctl cluster ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Register the cluster of --kubeconfig/--context into the host cluster.
    Add(AddArgs),
    /// Mint a new reader token in the member (--kubeconfig/--context) and put it into the
    /// host cluster's registration Secret(s) of NAME; the old token stays valid until it
    /// expires.
    RotateCredentials(RotateArgs),
    /// Remove a registration (and, with --kubeconfig/--context of the member, its reader).
    Remove(RemoveArgs),
    /// List member clusters as the host cluster's controller sees them.
    List,
    /// Drain NAME for maintenance: its endpoints lose weight linearly over --over until
    /// no other cluster sends it new connections or requests.
    Drain(crate::drain::DrainArgs),
    /// End the drain of NAME: its endpoints get their full weight back at once.
    Undrain(crate::drain::UndrainArgs),
}

/// Arguments of `cluster add`.
#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
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
    /// Lifetime of the reader token (at least 10m; the API server may shorten it with
    /// --service-account-max-token-expiration). Rotate before it ends:
    /// `meridianctl cluster rotate-credentials`.
    #[arg(long, default_value = DEFAULT_TOKEN_TTL, value_parser = parse_token_ttl)]
    token_ttl: Duration,
    /// Also record the member name as the member's cluster id for the Multi-Cluster
    /// Services API: the ClusterProperty `cluster.clusterset.k8s.io` (KEP-2149). Needs
    /// `manifests/mcs` installed in the member; an existing, different id is never changed.
    #[arg(long)]
    cluster_property: bool,
}

/// Arguments of `cluster rotate-credentials`.
#[derive(Debug, clap::Args)]
pub(crate) struct RotateArgs {
    /// Member name, as registered.
    name: String,
    /// Kubeconfig of the host cluster holding the registration (default: $KUBECONFIG, then
    /// ~/.kube/config).
    #[arg(long)]
    host_kubeconfig: Option<PathBuf>,
    /// Context of the host cluster.
    #[arg(long)]
    host_context: Option<String>,
    /// Lifetime of the new token (at least 10m).
    #[arg(long, default_value = DEFAULT_TOKEN_TTL, value_parser = parse_token_ttl)]
    token_ttl: Duration,
}

/// Default lifetime of reader tokens: 30 days.
pub(crate) const DEFAULT_TOKEN_TTL: &str = "720h";
/// The shortest lifetime the TokenRequest API grants.
const MIN_TOKEN_TTL: Duration = Duration::from_secs(600);

pub(crate) fn parse_token_ttl(s: &str) -> Result<Duration, String> {
    let ttl = parse_duration(s)?;
    if ttl < MIN_TOKEN_TTL {
        return Err(format!(
            "{s:?}: at least 10m (the TokenRequest API's minimum)"
        ));
    }
    Ok(ttl)
}

/// Arguments of `cluster remove`.
#[derive(Debug, clap::Args)]
pub(crate) struct RemoveArgs {
    /// Member name.
    name: String,
    /// Kubeconfig of the host cluster (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    host_kubeconfig: Option<PathBuf>,
    /// Context of the host cluster.
    #[arg(long)]
    host_context: Option<String>,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    meridian_api::policy::parse_duration(s)
}

/// Runs `meridianctl cluster ...`; `target` is --kubeconfig/--context.
pub(crate) async fn run(cmd: Command, target: &ClusterArgs, output: Output) -> anyhow::Result<()> {
    match cmd {
        Command::Add(args) => add(args, target).await,
        Command::RotateCredentials(args) => rotate(args, target).await,
        Command::Remove(args) => remove(args, target).await,
        Command::List => list(&target.client().await?, output).await,
        Command::Drain(args) => crate::drain::drain(args, target).await,
        Command::Undrain(args) => crate::drain::undrain(args, target).await,
    }
}

/// The member cluster (`target`) and the host cluster (`--host-kubeconfig`,
/// `--host-context`) that `add` and `rotate` work on, loaded in that order.
fn member_and_host(
    target: &ClusterArgs,
    host_kubeconfig: Option<&Path>,
    host_context: Option<&str>,
) -> anyhow::Result<(Target, Target)> {
    let member = Target::load(target.kubeconfig.as_deref(), target.context()?)?;
    let host = Target::load(host_kubeconfig, host_context)?;
    Ok((member, host))
}

async fn add(args: AddArgs, target: &ClusterArgs) -> anyhow::Result<()> {
    let (member, host) = member_and_host(
        target,
        args.host_kubeconfig.as_deref(),
        args.host_context.as_deref(),
    )?;
    let wanted = WantedRegistration::of(
        &member,
        args.name.clone(),
        args.server.clone(),
        args.gateway_address.clone(),
    )?;
    let name = &wanted.name;

    let client = member.client().await?;
    if args.cluster_property {
        write_cluster_id(&client, name).await.with_context(|| {
            format!(
                "recording the cluster id in cluster {name:?} (context {:?})",
                member.context
            )
        })?;
    }
    let (token, expires) = mint_reader(&client, args.token_ttl)
        .await
        .with_context(|| {
            format!(
                "creating the reader identity in cluster {name:?} (context {:?})",
                member.context
            )
        })?;
    let secret = wanted.secret(&secret_name(name), &token)?;
    write_registration(&host.client().await?, &secret)
        .await
        .with_context(|| {
            format!(
                "writing the registration Secret into the host cluster (context {:?})",
                host.context
            )
        })?;
    println!(
        "cluster {name:?} registered: Secret {SYSTEM_NAMESPACE}/{} in context {:?} (server {}); \
         the token expires {expires}: run `meridianctl cluster rotate-credentials {name}` before",
        secret_name(name),
        host.context,
        wanted.server,
    );
    Ok(())
}

/// What the registration of one member says apart from its token: the member's name, its
/// API server as hosts reach it, its CA and its gateway address. `cluster add` and `mesh
/// connect` both build their Secrets from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WantedRegistration {
    /// Member name (a DNS label).
    pub(crate) name: String,
    /// API server URL for the hosts' controllers.
    pub(crate) server: String,
    /// The member's CA, base64 as in a kubeconfig.
    pub(crate) ca_data: Option<String>,
    /// `host:port` of the member's gateway, when given.
    pub(crate) gateway_address: Option<String>,
}

impl WantedRegistration {
    /// The registration of the cluster of `member`'s context: `name` defaults to the
    /// kubeconfig's cluster name, `server` to its server URL. Checked against what the
    /// host's controller accepts before anything is created.
    pub(crate) fn of(
        member: &Target,
        name: Option<String>,
        server: Option<String>,
        gateway_address: Option<String>,
    ) -> anyhow::Result<Self> {
        let (cluster_name, cluster) = member.cluster()?;
        let name = name.unwrap_or(cluster_name);
        if !is_dns_label(&name) {
            bail!(
                "cluster name {name:?} is not a DNS label (lower-case letters, digits, '-'); pass --name"
            );
        }
        let server = server
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
        let wanted = Self {
            name,
            server,
            ca_data,
            gateway_address,
        };
        // The host's controller accepts only kubeconfigs that pass this check (an https://
        // server, an inline CA): fail before creating anything.
        let probe = wanted.kubeconfig("placeholder")?;
        meridian_crd::kubeconfig::accept(&probe, None)
            .map_err(|e| anyhow!("the host's controller would refuse this registration: {e}"))?;
        Ok(wanted)
    }

    /// The registration kubeconfig carrying `token`.
    fn kubeconfig(&self, token: &str) -> anyhow::Result<String> {
        registration_kubeconfig(&self.name, &self.server, self.ca_data.as_deref(), token)
    }

    /// The registration Secret `secret` (in [`SYSTEM_NAMESPACE`]) carrying `token`.
    pub(crate) fn secret(&self, secret: &str, token: &str) -> anyhow::Result<Secret> {
        let mut registration = Registration::new(secret, self.kubeconfig(token)?)
            .namespace(SYSTEM_NAMESPACE)
            .cluster_name(&self.name)
            .label(MANAGED_BY_LABEL, FIELD_MANAGER);
        if let Some(gw) = &self.gateway_address {
            registration = registration.gateway_address(gw);
        }
        Ok(registration.secret())
    }

    /// What the registration Secret `existing` (one for this member) says, or why it is not
    /// this registration; its token is checked apart ([`Registered::token`]). A reason never
    /// carries a credential.
    pub(crate) fn drift(&self, existing: &Secret) -> Result<Registered, String> {
        let annotations = existing.annotations();
        if annotations.get(CLUSTER_NAME_ANNOTATION) != Some(&self.name) {
            return Err(format!("no {CLUSTER_NAME_ANNOTATION} annotation"));
        }
        let gateway = annotations.get(GATEWAY_ADDRESS_ANNOTATION);
        if gateway != self.gateway_address.as_ref() {
            return Err(format!(
                "gateway address {} instead of {}",
                gateway.map_or("(none)", String::as_str),
                self.gateway_address.as_deref().unwrap_or("(none)")
            ));
        }
        let registered = Registered::read(existing)?;
        if registered.server != self.server {
            return Err(format!(
                "server {} instead of {}",
                registered.server, self.server
            ));
        }
        if registered.ca_data != self.ca_data {
            return Err("a different certificate-authority-data".into());
        }
        Ok(registered)
    }
}

/// What an existing registration Secret says, as the controller reads it.
pub(crate) struct Registered {
    server: String,
    ca_data: Option<String>,
    /// The reader token (a credential: never print it).
    pub(crate) token: String,
}

impl Registered {
    /// The server, CA and token of the context the controller uses, when the controller
    /// accepts the kubeconfig and it is a token user's (what `cluster add` writes).
    fn read(existing: &Secret) -> Result<Self, String> {
        let text = registration::kubeconfig(existing)
            .ok_or_else(|| format!("no UTF-8 key {KUBECONFIG_KEY}"))?;
        let context = existing
            .annotations()
            .get(CONTEXT_ANNOTATION)
            .map(String::as_str);
        let accepted = meridian_crd::kubeconfig::accept(&text, context)
            .map_err(|e| format!("the controller refuses its kubeconfig: {e}"))?;
        let kc: serde_json::Value =
            serde_yaml_ng::from_str(&text).map_err(|_| "its kubeconfig is not YAML".to_owned())?;
        let named = |list: &str, name: &str, body: &str| {
            kc[list]
                .as_array()
                .and_then(|l| l.iter().find(|e| e["name"] == name))
                .map(|e| e[body].clone())
                .unwrap_or_default()
        };
        let ctx = named("contexts", accepted.context(), "context");
        let cluster = named(
            "clusters",
            ctx["cluster"].as_str().unwrap_or_default(),
            "cluster",
        );
        let user = named("users", ctx["user"].as_str().unwrap_or_default(), "user");
        let token = user["token"]
            .as_str()
            .ok_or_else(|| "its user has no token (a client certificate)".to_owned())?;
        Ok(Self {
            server: cluster["server"].as_str().unwrap_or_default().to_owned(),
            ca_data: cluster["certificate-authority-data"]
                .as_str()
                .map(str::to_owned),
            token: token.to_owned(),
        })
    }
}

/// Writes a registration Secret into the host cluster of `client` (server-side apply, as
/// `cluster add` always has).
pub(crate) async fn write_registration(client: &Client, secret: &Secret) -> anyhow::Result<()> {
    ensure_namespace(client).await?;
    apply(
        &Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE),
        secret,
    )
    .await
}

/// Replaces the reader token in every registration Secret of `args.name` in the host with
/// a new one from the member, keeping server, CA and annotations.
async fn rotate(args: RotateArgs, target: &ClusterArgs) -> anyhow::Result<()> {
    let (member, host) = member_and_host(
        target,
        args.host_kubeconfig.as_deref(),
        args.host_context.as_deref(),
    )?;
    let secrets = Api::<Secret>::namespaced(host.client().await?, SYSTEM_NAMESPACE);
    let registered: Vec<Secret> = secrets
        .list(&ListParams::default().labels(&registration::selector()))
        .await
        .with_context(|| format!("listing registrations in context {:?}", host.context))?
        .items
        .into_iter()
        .filter(|s| registered_name(s) == args.name)
        .collect();
    if registered.is_empty() {
        bail!(
            "no registration Secret for cluster {:?} in context {:?} (`meridianctl cluster add` first)",
            args.name,
            host.context
        );
    }
    // Checked before anything is minted: every Secret must be one this command can update.
    let kubeconfigs = registered
        .iter()
        .map(|s| {
            let text = registration::kubeconfig(s).ok_or_else(|| {
                anyhow!("Secret {} has no UTF-8 key {KUBECONFIG_KEY}", s.name_any())
            })?;
            Ok((s.name_any(), text))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (token, expires) = mint_reader(&member.client().await?, args.token_ttl)
        .await
        .with_context(|| {
            format!(
                "minting a reader token in cluster {:?} (context {:?})",
                args.name, member.context
            )
        })?;
    for (secret, text) in kubeconfigs {
        let rotated = with_token(&text, &token)
            .with_context(|| format!("Secret {SYSTEM_NAMESPACE}/{secret}"))?;
        let patch = serde_json::json!({"data": {KUBECONFIG_KEY: ByteString(rotated.into_bytes())}});
        secrets
            .patch(&secret, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("updating Secret {SYSTEM_NAMESPACE}/{secret}"))?;
        println!(
            "rotated the token of cluster {:?} in Secret {SYSTEM_NAMESPACE}/{secret} (context {:?}); \
             it expires {expires}; the previous token stays valid until its own expiry",
            args.name, host.context
        );
    }
    Ok(())
}

/// The member name a registration Secret is for.
pub(crate) fn registered_name(s: &Secret) -> String {
    s.annotations()
        .get(CLUSTER_NAME_ANNOTATION)
        .cloned()
        .unwrap_or_else(|| s.name_any())
}

/// `kubeconfig` with the token of its (single) user replaced; anything else about the user
/// would be a registration this command did not write.
fn with_token(kubeconfig: &str, token: &str) -> anyhow::Result<String> {
    let mut kc: serde_json::Value =
        serde_yaml_ng::from_str(kubeconfig).context("the kubeconfig is not valid YAML")?;
    let users = kc
        .get_mut("users")
        .and_then(serde_json::Value::as_array_mut)
        .filter(|u| u.len() == 1)
        .ok_or_else(|| anyhow!("the kubeconfig must have exactly one user"))?;
    let user = users[0]
        .get_mut("user")
        .and_then(serde_json::Value::as_object_mut)
        .filter(|u| u.len() == 1 && u.contains_key("token"))
        .ok_or_else(|| {
            anyhow!("the kubeconfig's user is not a token user (re-register with `cluster add`)")
        })?;
    user.insert("token".into(), token.into());
    serde_yaml_ng::to_string(&kc).context("encoding the kubeconfig")
}

pub(crate) fn secret_name(cluster: &str) -> String {
    format!("cluster-{cluster}")
}

/// The read-only rules the controller needs in a member, and nothing else.
pub(crate) fn reader_rules() -> Vec<PolicyRule> {
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
        // Multi-Cluster Services: a ServiceExport exports its Service (docs/mcs.md).
        PolicyRule {
            api_groups: Some(vec!["multicluster.x-k8s.io".into()]),
            resources: Some(vec!["serviceexports".into()]),
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

/// The KEP-2149 property holding a cluster's id within its ClusterSet.
const CLUSTER_ID_PROPERTY: &str = "cluster.clusterset.k8s.io";

/// Creates the ClusterProperty naming the cluster `name`, unless it already says so. A
/// different id is refused, not overwritten: MCS consumers key exported endpoints by it.
async fn write_cluster_id(client: &Client, name: &str) -> anyhow::Result<()> {
    let gvk = kube::api::GroupVersionKind::gvk("about.k8s.io", "v1alpha1", "ClusterProperty");
    let resource = kube::api::ApiResource::from_gvk_with_plural(&gvk, "clusterproperties");
    // `get` cannot tell a missing object from a missing CRD (both 404): ask discovery first.
    let served = client
        .list_api_group_resources(&resource.api_version)
        .await
        .ok()
        .is_some_and(|list| list.resources.iter().any(|r| r.name == resource.plural));
    if !served {
        bail!(
            "ClusterProperty ({}) is not served; install the MCS CRDs first: \
             kubectl apply -k manifests/mcs",
            resource.api_version
        );
    }
    let api: Api<kube::api::DynamicObject> = Api::all_with(client.clone(), &resource);
    if let Some(existing) = api.get_opt(CLUSTER_ID_PROPERTY).await? {
        let id = existing.data["spec"]["value"].as_str().unwrap_or_default();
        if id == name {
            return Ok(());
        }
        bail!(
            "the cluster id is already {id:?}; an id must not change while the cluster is in a \
             ClusterSet (delete clusterproperty {CLUSTER_ID_PROPERTY} first to change it)"
        );
    }
    let property = kube::api::DynamicObject::new(CLUSTER_ID_PROPERTY, &resource)
        .data(serde_json::json!({ "spec": { "value": name } }));
    api.create(&PostParams::default(), &property).await?;
    Ok(())
}

/// Creates the reader ServiceAccount, ClusterRole and binding, and returns a token for it
/// from the TokenRequest API, valid for `ttl` (or less, if the API server caps it), and
/// its expiry.
pub(crate) async fn mint_reader(
    client: &Client,
    ttl: Duration,
) -> anyhow::Result<(String, String)> {
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

    // A bound token that expires, never a long-lived token Secret: a leaked registration
    // stops working by itself.
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .create_token_request(READER, &PostParams::default(), &request)
        .await
        .context("requesting a token (TokenRequest API)")?;
    let status = issued
        .status
        .ok_or_else(|| anyhow!("the API server returned no token"))?;
    Ok((status.token, status.expiration_timestamp.0.to_string()))
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
        .list(&ListParams::default().labels(&registration::selector()))
        .await?;
    let mut removed = 0;
    for s in registered {
        if registered_name(&s) == args.name {
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
    if target.kubeconfig.is_some() || target.context()?.is_some() {
        let client = target.client().await?;
        // The long-lived token Secret earlier versions created; deleting the
        // ServiceAccount below invalidates the bound tokens too.
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
pub(crate) fn member_header() -> [&'static str; 8] {
    [
        "NAME",
        "PHASE",
        "SERVER",
        "ENDPOINT-API",
        "SERVICES",
        "ENDPOINTS",
        "DRAIN",
        "MESSAGE",
    ]
}

/// One row of the member table.
pub(crate) fn member_row(m: &MemberCluster) -> Vec<String> {
    let s = m.status.clone().unwrap_or_default();
    vec![
        m.name_any(),
        s.phase.to_string(),
        s.server.unwrap_or_default(),
        s.endpoint_api.unwrap_or_default(),
        s.services.to_string(),
        s.endpoints.to_string(),
        s.drain.unwrap_or_else(|| "-".to_owned()),
        s.message.unwrap_or_default(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_replaces_only_the_token() {
        let kc =
            registration_kubeconfig("west", "https://10.0.0.1:6443", Some("Q0E="), "old").unwrap();
        let rotated = with_token(&kc, "new").unwrap();
        assert_eq!(
            rotated,
            registration_kubeconfig("west", "https://10.0.0.1:6443", Some("Q0E="), "new").unwrap()
        );
        let cert_user = kc.replace("token: old", "client-certificate-data: Q0U=");
        let err = with_token(&cert_user, "new").unwrap_err().to_string();
        assert!(err.contains("not a token user"), "{err}");
        assert!(parse_token_ttl("9m").is_err());
        assert_eq!(
            parse_token_ttl(DEFAULT_TOKEN_TTL).unwrap(),
            Duration::from_secs(30 * 24 * 3600)
        );
    }

    /// One wrong registration per reason `mesh connect` fixes, and the right one accepted.
    #[test]
    fn drift_names_what_is_wrong() {
        // Real PEM, as the controller parses it.
        let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
        let cert = meridian_identity::testing::TestCa::new("meridian.local").issue("west");
        let ca = b64(&cert.root_pem);
        let wanted = WantedRegistration {
            name: "west".into(),
            server: "https://10.0.0.2:6443".into(),
            ca_data: Some(ca.clone()),
            gateway_address: Some("192.0.2.7:15008".into()),
        };
        let right = wanted.secret("cluster-west", "tok").unwrap();
        assert_eq!(wanted.drift(&right).unwrap().token, "tok");

        let drift = |w: &WantedRegistration, s: &Secret| w.drift(s).err().unwrap();
        let mut unnamed = right.clone();
        unnamed
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(CLUSTER_NAME_ANNOTATION);
        assert_eq!(
            drift(&wanted, &unnamed),
            "no meridian.io/cluster-name annotation"
        );
        let other_gateway = WantedRegistration {
            gateway_address: None,
            ..wanted.clone()
        };
        assert_eq!(
            drift(&other_gateway, &right),
            "gateway address 192.0.2.7:15008 instead of (none)"
        );
        let other_server = WantedRegistration {
            server: "https://10.0.0.3:6443".into(),
            ..wanted.clone()
        };
        assert_eq!(
            drift(&other_server, &right),
            "server https://10.0.0.2:6443 instead of https://10.0.0.3:6443"
        );
        let other_ca = WantedRegistration {
            ca_data: Some(b64(&cert.chain_pem)),
            ..wanted.clone()
        };
        assert_eq!(
            drift(&other_ca, &right),
            "a different certificate-authority-data"
        );

        let with_kubeconfig = |text: String| {
            let mut s = right.clone();
            s.data = Some(BTreeMap::from([(
                KUBECONFIG_KEY.to_owned(),
                ByteString(text.into_bytes()),
            )]));
            s
        };
        let kc =
            registration_kubeconfig("west", "https://10.0.0.2:6443", Some(&ca), "tok").unwrap();
        let cert_user = with_kubeconfig(kc.replace(
            "token: tok",
            &format!(
                "client-certificate-data: {}\n    client-key-data: {}",
                b64(&cert.chain_pem),
                b64(&cert.key_pem)
            ),
        ));
        assert_eq!(
            drift(&wanted, &cert_user),
            "its user has no token (a client certificate)"
        );
        let exec = with_kubeconfig(kc.replace("token: tok", "exec: {command: sh}"));
        assert_eq!(
            drift(&wanted, &exec),
            "the controller refuses its kubeconfig: users[0].user.exec: exec credential \
             plugins are refused (the controller runs no commands); use token or \
             client-certificate-data and client-key-data"
        );
        let mut no_key = right.clone();
        no_key.data = None;
        assert_eq!(drift(&wanted, &no_key), "no UTF-8 key kubeconfig");
    }

    #[test]
    fn reader_is_read_only() {
        for rule in reader_rules() {
            assert_eq!(rule.verbs, ["get", "list", "watch"]);
            for r in rule.resources.unwrap() {
                assert!(
                    [
                        "services",
                        "endpoints",
                        "nodes",
                        "pods",
                        "endpointslices",
                        "serviceexports"
                    ]
                    .contains(&r.as_str()),
                    "{r}"
                );
            }
        }
    }
}
