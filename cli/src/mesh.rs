//! `meridianctl mesh connect|status|disconnect`: a multi-primary mesh in one command.
//!
//! Multi-primary needs every member registered into every other cluster: N×(N−1)
//! registrations. `connect` makes each of them with `cluster add`'s own code
//! ([`WantedRegistration`], [`mint_reader`], [`write_registration`]) and only where one is
//! missing or wrong: an existing registration with the wanted server, CA and gateway address
//! whose token the member still accepts (TokenReview) and that has more than a quarter of
//! `--token-ttl` left is not written at all. It then waits until every cluster's controller
//! reports every member `Synced` and prints the host × member matrix, which `status`
//! prints on its own.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, Resource as _, ResourceExt};
use meridian_crd::registration;
use meridian_crd::{MemberCluster, Phase};
use serde::Serialize;

use crate::cluster::{
    DEFAULT_TOKEN_TTL, READER, SYSTEM_NAMESPACE, WantedRegistration, mint_reader, parse_duration,
    parse_token_ttl, registered_name, secret_name, write_registration,
};
use crate::connect::{ClusterArgs, Target};
use crate::render::{self, Output};

/// How often `connect` and `disconnect` look at the controllers' MemberClusters.
const POLL: Duration = Duration::from_secs(1);

/// `meridianctl mesh ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Register every --context cluster into every other (only what is missing or wrong),
    /// wait until every controller reports every member Synced, print the matrix.
    Connect(ConnectArgs),
    /// What every --context cluster's controller reports of every member: the matrix.
    Status,
    /// Remove the first --context cluster from the others (the other --context clusters,
    /// or without them every member it has registered that has a context in the
    /// kubeconfig), and them from it.
    Disconnect(DisconnectArgs),
}

/// Arguments of `mesh connect`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnectArgs {
    /// `NAME=URL`: the API server of cluster NAME (its member or context name) as the
    /// other clusters' controllers reach it, when it differs from the kubeconfig's.
    #[arg(long = "server-for", value_name = "NAME=URL", value_parser = parse_assignment)]
    server_for: Vec<(String, String)>,
    /// `NAME=ADDR`: the `host:port` of cluster NAME's gateway tunnel, when it has no
    /// LoadBalancer.
    #[arg(long = "gateway-address-for", value_name = "NAME=ADDR", value_parser = parse_assignment)]
    gateway_address_for: Vec<(String, String)>,
    /// How long to wait until every pair is Synced.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    timeout: Duration,
    /// Lifetime of new reader tokens (at least 10m); an existing token with less than a
    /// quarter of it left is renewed.
    #[arg(long, default_value = DEFAULT_TOKEN_TTL, value_parser = parse_token_ttl)]
    token_ttl: Duration,
}

/// Arguments of `mesh disconnect`.
#[derive(Debug, clap::Args)]
pub(crate) struct DisconnectArgs {
    /// How long to wait until the others' controllers have dropped the cluster.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    timeout: Duration,
}

/// `90s`, `2m`, `1m30s`: how the flags take durations.
fn humantime(d: Duration) -> String {
    let (m, s) = (d.as_secs() / 60, d.as_secs() % 60);
    match (m, s) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

fn parse_assignment(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.is_empty() => {
            Ok((name.to_owned(), value.to_owned()))
        }
        _ => Err(format!("{s:?}: expected NAME=VALUE")),
    }
}

/// Runs `meridianctl mesh ...`.
pub(crate) async fn run(cmd: Command, target: &ClusterArgs, output: Output) -> anyhow::Result<()> {
    match cmd {
        Command::Connect(args) => connect(args, target, output).await,
        Command::Status => {
            let nodes = nodes(target, 1).await?;
            print_matrix(&nodes, &Report::new(&nodes).await?, &[], output, true)
        }
        Command::Disconnect(args) => disconnect(args, target).await,
    }
}

/// One cluster of the mesh: its context, its member name and a client that reached it.
struct Node {
    context: String,
    name: String,
    target: Target,
    client: Client,
}

/// Loads and checks every --context (at least `min`, no two for the same cluster): the API
/// server answers and Meridian's CRDs are served.
async fn nodes(target: &ClusterArgs, min: usize) -> anyhow::Result<Vec<Node>> {
    if target.contexts.len() < min {
        bail!(
            "give at least {min} cluster(s), one --context each (got {})",
            target.contexts.len()
        );
    }
    let mut nodes: Vec<Node> = Vec::new();
    for context in &target.contexts {
        let node = reach(target, context).await?;
        if let Some(other) = nodes.iter().find(|n| n.name == node.name) {
            bail!(
                "contexts {:?} and {context:?} are both cluster {:?}",
                other.context,
                node.name
            );
        }
        nodes.push(node);
    }
    Ok(nodes)
}

/// One --context, checked.
async fn reach(target: &ClusterArgs, context: &str) -> anyhow::Result<Node> {
    let t = Target::load(target.kubeconfig.as_deref(), Some(context))?;
    let (name, _) = t.cluster()?;
    let client = t.client().await?;
    client
        .apiserver_version()
        .await
        .with_context(|| format!("context {context:?}: the API server is unreachable"))?;
    let api_version = MemberCluster::api_version(&());
    let plural = MemberCluster::plural(&());
    let served = client
        .list_api_group_resources(&api_version)
        .await
        .ok()
        .is_some_and(|list| list.resources.iter().any(|r| r.name == plural));
    if !served {
        bail!(
            "context {context:?}: Meridian is not installed ({plural}.{} {api_version} is not \
             served); install its CRDs and the controller there first (manifests/)",
            MemberCluster::group(&())
        );
    }
    Ok(Node {
        context: context.to_owned(),
        name,
        target: t,
        client,
    })
}

/// What `connect` did with one registration.
#[derive(Debug, Clone, Serialize)]
struct Done {
    host: String,
    member: String,
    /// `unchanged`, `created` or `fixed`.
    action: &'static str,
    /// Why a registration was fixed.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// A registration to write: into `host`, for `member`, as Secret `secret`.
struct Write {
    host: usize,
    member: usize,
    secret: String,
    reason: Option<String>,
}

async fn connect(args: ConnectArgs, target: &ClusterArgs, output: Output) -> anyhow::Result<()> {
    let nodes = nodes(target, 2).await?;
    let for_node = |flag: &str, given: &[(String, String)]| {
        let mut out: BTreeMap<usize, String> = BTreeMap::new();
        for (key, value) in given {
            let matching: Vec<usize> = (0..nodes.len())
                .filter(|&i| nodes[i].name == *key || nodes[i].context == *key)
                .collect();
            match matching.as_slice() {
                [i] => {
                    out.insert(*i, value.clone());
                }
                [] => bail!(
                    "{flag} {key}=...: no --context cluster is named {key:?} (have: {})",
                    nodes
                        .iter()
                        .map(|n| n.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                _ => bail!("{flag} {key}=...: {key:?} names two clusters"),
            }
        }
        Ok(out)
    };
    let mut servers = for_node("--server-for", &args.server_for)?;
    let mut gateways = for_node("--gateway-address-for", &args.gateway_address_for)?;
    let wanted: Vec<WantedRegistration> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            WantedRegistration::of(
                &n.target,
                Some(n.name.clone()),
                servers.remove(&i),
                gateways.remove(&i),
            )
            .with_context(|| format!("context {:?}", n.context))
        })
        .collect::<anyhow::Result<_>>()?;

    // What is there, pair by pair; nothing is written before every pair is known.
    let mut done = Vec::new();
    let mut writes = Vec::new();
    for (h, host) in nodes.iter().enumerate() {
        let secrets = Api::<Secret>::namespaced(host.client.clone(), SYSTEM_NAMESPACE)
            .list(&ListParams::default().labels(&registration::selector()))
            .await
            .with_context(|| format!("listing registrations in context {:?}", host.context))?
            .items;
        for (m, member) in nodes.iter().enumerate().filter(|(m, _)| *m != h) {
            let mine: Vec<&Secret> = secrets
                .iter()
                .filter(|s| registered_name(s) == member.name)
                .collect();
            let (secret, reason) = match mine.as_slice() {
                [] => (secret_name(&member.name), None),
                [existing] => match wanted[m].drift(existing) {
                    Err(reason) => (existing.name_any(), Some(reason)),
                    Ok(registered) => {
                        match token_problem(&member.client, &registered.token, args.token_ttl)
                            .await
                            .with_context(|| {
                                format!("checking a token in context {:?}", member.context)
                            })? {
                            Some(reason) => (existing.name_any(), Some(reason)),
                            None => {
                                done.push(Done {
                                    host: host.name.clone(),
                                    member: member.name.clone(),
                                    action: "unchanged",
                                    reason: None,
                                });
                                continue;
                            }
                        }
                    }
                },
                several => bail!(
                    "context {:?} has {} registration Secrets for cluster {:?} ({}); delete all \
                     but one first",
                    host.context,
                    several.len(),
                    member.name,
                    several
                        .iter()
                        .map(|s| s.name_any())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            writes.push(Write {
                host: h,
                member: m,
                secret,
                reason,
            });
        }
    }

    // One reader token per member that needs one, shared by its new registrations.
    for (m, member) in nodes.iter().enumerate() {
        let mine: Vec<&Write> = writes.iter().filter(|w| w.member == m).collect();
        if mine.is_empty() {
            continue;
        }
        let (token, _) = mint_reader(&member.client, args.token_ttl)
            .await
            .with_context(|| {
                format!(
                    "creating the reader identity in cluster {:?} (context {:?})",
                    member.name, member.context
                )
            })?;
        for w in mine {
            let host = &nodes[w.host];
            let secret = wanted[m].secret(&w.secret, &token)?;
            write_registration(&host.client, &secret)
                .await
                .with_context(|| {
                    format!(
                        "writing the registration of {:?} into context {:?}",
                        member.name, host.context
                    )
                })?;
            done.push(Done {
                host: host.name.clone(),
                member: member.name.clone(),
                action: if w.reason.is_some() {
                    "fixed"
                } else {
                    "created"
                },
                reason: w.reason.clone(),
            });
        }
    }
    let order = |n: &str| nodes.iter().position(|x| x.name == n);
    done.sort_by_key(|d| (order(&d.host), order(&d.member)));
    if output == Output::Table {
        for d in &done {
            match &d.reason {
                Some(reason) => println!("{} in {}: {} ({reason})", d.member, d.host, d.action),
                None => println!("{} in {}: {}", d.member, d.host, d.action),
            }
        }
    }

    let deadline = tokio::time::Instant::now() + args.timeout;
    let report = loop {
        let report = Report::new(&nodes).await?;
        if report.lagging().is_empty() || tokio::time::Instant::now() >= deadline {
            break report;
        }
        tokio::time::sleep(POLL).await;
    };
    // The pairs not Synced are named by the error.
    print_matrix(&nodes, &report, &done, output, false)?;
    let lagging = report.lagging();
    if !lagging.is_empty() {
        bail!(
            "not every pair is Synced after {}: {}",
            humantime(args.timeout),
            lagging.join("; ")
        );
    }
    Ok(())
}

/// Why the reader `token` of a registration must be renewed, if it must: the member no
/// longer accepts it (TokenReview), it is not the reader's, it never expires (an old
/// token Secret's) or less than a quarter of `ttl` is left.
async fn token_problem(
    member: &Client,
    token: &str,
    ttl: Duration,
) -> anyhow::Result<Option<String>> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: None,
        },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(member.clone())
        .create(&PostParams::default(), &review)
        .await
        .context("TokenReview")?;
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Ok(Some("the member no longer accepts its token".into()));
    }
    let reader = format!("system:serviceaccount:{SYSTEM_NAMESPACE}:{READER}");
    if status.user.and_then(|u| u.username).as_deref() != Some(reader.as_str()) {
        return Ok(Some(format!("its token is not {reader}'s")));
    }
    let Some(expires) = token_expiry(token) else {
        return Ok(Some("its token never expires".into()));
    };
    let left = expires.as_second() - Timestamp::now().as_second();
    let quarter = i64::try_from(ttl.as_secs() / 4).unwrap_or(i64::MAX);
    if left < quarter {
        return Ok(Some(format!(
            "its token expires {expires}, within a quarter of --token-ttl"
        )));
    }
    Ok(None)
}

/// The `exp` claim of a JWT (read, not verified: the member's TokenReview vouches for it).
fn token_expiry(token: &str) -> Option<Timestamp> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Timestamp::from_second(claims["exp"].as_i64()?).ok()
}

/// What one host's controller reports of one member.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Cell {
    host: String,
    member: String,
    /// The host's own cluster (always a member, no registration).
    local: bool,
    /// `None`: the host has no MemberCluster for the member.
    phase: Option<Phase>,
    /// Seconds since the host last saw the member in sync.
    lag_seconds: Option<i64>,
    endpoint_api: Option<String>,
    message: Option<String>,
}

/// The host × member matrix, row by row.
struct Report {
    cells: Vec<Cell>,
}

impl Report {
    /// Reads every host's MemberClusters now.
    async fn new(nodes: &[Node]) -> anyhow::Result<Self> {
        let now = Timestamp::now();
        let mut cells = Vec::new();
        for host in nodes {
            let members = Api::<MemberCluster>::all(host.client.clone())
                .list(&ListParams::default())
                .await
                .with_context(|| format!("listing MemberClusters in context {:?}", host.context))?
                .items;
            for member in nodes {
                let local = member.name == host.name;
                let found = members.iter().find(|mc| {
                    if local {
                        mc.spec.local
                    } else {
                        !mc.spec.local && mc.name_any() == member.name
                    }
                });
                let status = found.and_then(|mc| mc.status.clone());
                let lag_seconds = status
                    .as_ref()
                    .and_then(|s| s.last_sync_time.as_deref())
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .map(|t| (now.as_second() - t.as_second()).max(0));
                cells.push(Cell {
                    host: host.name.clone(),
                    member: member.name.clone(),
                    local,
                    phase: found.map(|_| status.as_ref().map(|s| s.phase).unwrap_or_default()),
                    lag_seconds,
                    endpoint_api: status.as_ref().and_then(|s| s.endpoint_api.clone()),
                    message: status.and_then(|s| s.message),
                });
            }
        }
        Ok(Self { cells })
    }

    /// `host → member: phase (message)` for every pair not Synced.
    fn lagging(&self) -> Vec<String> {
        self.cells
            .iter()
            .filter(|c| c.phase != Some(Phase::Synced))
            .map(|c| match c.phase {
                None => format!(
                    "{} → {}: no MemberCluster (is meridian-controller running in {}?)",
                    c.host, c.member, c.host
                ),
                Some(phase) => match &c.message {
                    Some(m) => format!("{} → {}: {phase} ({m})", c.host, c.member),
                    None => format!("{} → {}: {phase}", c.host, c.member),
                },
            })
            .collect()
    }
}

/// The JSON form of `connect` and `status`.
#[derive(Serialize)]
struct MatrixJson<'a> {
    clusters: Vec<&'a str>,
    #[serde(skip_serializing_if = "<[Done]>::is_empty")]
    registrations: &'a [Done],
    matrix: &'a [Cell],
}

/// Prints the matrix; in a table, with a line per pair not Synced when `lagging`.
fn print_matrix(
    nodes: &[Node],
    report: &Report,
    done: &[Done],
    output: Output,
    lagging: bool,
) -> anyhow::Result<()> {
    if output != Output::Table {
        return render::print_structured(
            &MatrixJson {
                clusters: nodes.iter().map(|n| n.name.as_str()).collect(),
                registrations: done,
                matrix: &report.cells,
            },
            output,
        );
    }
    let mut header = vec!["HOST \\ MEMBER"];
    header.extend(nodes.iter().map(|n| n.name.as_str()));
    let rows = report
        .cells
        .chunks(nodes.len())
        .map(|row| {
            let mut cells = vec![row.first().map(|c| c.host.clone()).unwrap_or_default()];
            cells.extend(row.iter().map(|c| match c.phase {
                None => "-".to_owned(),
                Some(phase) => format!(
                    "{phase} {} {}",
                    c.lag_seconds.map_or("-".into(), |s| format!("{s}s")),
                    c.endpoint_api.as_deref().unwrap_or("-")
                ),
            }));
            cells
        })
        .collect();
    print!("{}", render::table(&header, rows));
    if lagging {
        for line in report.lagging() {
            println!("{line}");
        }
    }
    Ok(())
}

async fn disconnect(args: DisconnectArgs, target: &ClusterArgs) -> anyhow::Result<()> {
    let mut given = nodes(target, 1).await?;
    let leaving = given.remove(0);
    let leaving_secrets = Api::<Secret>::namespaced(leaving.client.clone(), SYSTEM_NAMESPACE);
    let registered = leaving_secrets
        .list(&ListParams::default().labels(&registration::selector()))
        .await
        .with_context(|| format!("listing registrations in context {:?}", leaving.context))?
        .items;
    let others = if given.is_empty() {
        // Every member the leaving cluster has registered, by its context in the kubeconfig.
        let mut found = Vec::new();
        for s in &registered {
            let name = registered_name(s);
            let context = leaving.target.kubeconfig.contexts.iter().find(|c| {
                c.context
                    .as_ref()
                    .is_some_and(|ctx| ctx.cluster == name && c.name != leaving.context)
            });
            match context {
                Some(c) => found.push(reach(target, &c.name).await?),
                None => println!(
                    "no context for cluster {name:?} in the kubeconfig: remove {:?} there with \
                     `meridianctl cluster remove {}`",
                    leaving.name, leaving.name
                ),
            }
        }
        found
    } else {
        given
    };
    for other in &others {
        remove_registrations(&leaving.client, &leaving.context, &other.name).await?;
        remove_registrations(&other.client, &other.context, &leaving.name).await?;
    }
    // Done once no other controller still lists the leaving cluster.
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        let mut still = Vec::new();
        for other in &others {
            let names: Vec<String> = Api::<MemberCluster>::all(other.client.clone())
                .list(&ListParams::default())
                .await
                .with_context(|| format!("listing MemberClusters in context {:?}", other.context))?
                .items
                .iter()
                .filter(|mc| !mc.spec.local)
                .map(ResourceExt::name_any)
                .collect();
            if names.iter().any(|n| n == &leaving.name) {
                still.push(other.name.clone());
            }
        }
        if still.is_empty() {
            println!(
                "cluster {:?} disconnected from {}",
                leaving.name,
                others
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!(
                "after {} the controllers of {} still list cluster {:?}",
                humantime(args.timeout),
                still.join(", "),
                leaving.name
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Deletes every registration of `member` in the cluster of `client`.
async fn remove_registrations(client: &Client, context: &str, member: &str) -> anyhow::Result<()> {
    let secrets = Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let registered = secrets
        .list(&ListParams::default().labels(&registration::selector()))
        .await
        .with_context(|| format!("listing registrations in context {context:?}"))?;
    for s in registered {
        if registered_name(&s) == member {
            match secrets
                .delete(&s.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                // Deleted meanwhile (a second disconnect, a GitOps prune): gone either way.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => {
                    return Err(anyhow::Error::from(e).context(format!(
                        "deleting Secret {SYSTEM_NAMESPACE}/{} in context {context:?}",
                        s.name_any()
                    )));
                }
            }
            println!(
                "removed the registration of {member} from {context} (Secret {SYSTEM_NAMESPACE}/{})",
                s.name_any()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_and_token_expiry() {
        assert_eq!(
            parse_assignment("far=https://10.0.0.3:6443").unwrap(),
            ("far".to_owned(), "https://10.0.0.3:6443".to_owned())
        );
        for bad in ["far", "=x", "far="] {
            assert!(parse_assignment(bad).is_err(), "{bad}");
        }
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"exp":1900000000,"sub":"x"}"#);
        assert_eq!(
            token_expiry(&format!("h.{claims}.s")).map(|t| t.as_second()),
            Some(1_900_000_000)
        );
        assert_eq!(token_expiry("not-a-jwt"), None);
    }
}
