//! `meridianctl cluster drain|undrain NAME`: maintenance mode for a member cluster.
//!
//! A drain is `spec.drain` on the `MemberCluster` NAME of every controller the command
//! reaches: the contexts named by `--host-context` (repeatable), else `--context` (also
//! repeatable, as for `mesh` commands), else every context of the kubeconfig (`KUBECONFIG`
//! may list several files). All of them get
//! the same `startedAt`, so their ramps run in step. A context where NAME is no member is
//! skipped; NAME being a member nowhere is an error, as is a context that cannot be reached
//! (after the others are patched).
//!
//! The field is written with a JSON merge patch under the field manager `meridianctl`; the
//! controller's server-side apply never owns it, so it survives the controller's writes.

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use meridian_crd::MemberCluster;
use meridian_crd::drain::Drain;
use serde_json::json;

use crate::connect::{ClusterArgs, Target};

const FIELD_MANAGER: &str = "meridianctl";
/// How often `--wait` reads the status.
const POLL: Duration = Duration::from_secs(1);

/// Which controllers a drain command reaches.
#[derive(Debug, clap::Args)]
pub(crate) struct Hosts {
    /// Context of a controller's cluster to patch (repeatable; default: --context, else
    /// every context of the kubeconfig).
    #[arg(long = "host-context")]
    host_contexts: Vec<String>,
}

/// Arguments of `cluster drain`.
#[derive(Debug, clap::Args)]
pub(crate) struct DrainArgs {
    /// Member cluster to drain.
    name: String,
    /// Length of the linear ramp (e.g. `30s`, `5m`; `0s` drains at once).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    over: Duration,
    /// Wait until every reached controller reports the cluster `Drained`.
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits beyond the ramp.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    wait_slack: Duration,
    /// Also move callers inside the drained cluster away (by default they stay local).
    #[arg(long)]
    include_local: bool,
    #[command(flatten)]
    hosts: Hosts,
}

/// Arguments of `cluster undrain`.
#[derive(Debug, clap::Args)]
pub(crate) struct UndrainArgs {
    /// Member cluster to bring back.
    name: String,
    #[command(flatten)]
    hosts: Hosts,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    meridian_api::policy::parse_duration(s)
}

/// One reached controller: its context and client.
struct Host {
    context: String,
    client: Client,
}

/// The contexts the command reaches, loaded from the kubeconfig flags.
fn contexts(target: &ClusterArgs, hosts: &Hosts) -> anyhow::Result<Vec<Target>> {
    let first = target.contexts.first().map(String::as_str);
    let base = Target::load(target.kubeconfig.as_deref(), first)?;
    let names: Vec<String> = if !hosts.host_contexts.is_empty() {
        hosts.host_contexts.clone()
    } else if !target.contexts.is_empty() {
        target.contexts.clone()
    } else {
        base.kubeconfig
            .contexts
            .iter()
            .map(|c| c.name.clone())
            .collect()
    };
    names
        .iter()
        .map(|n| Target::load(target.kubeconfig.as_deref(), Some(n)))
        .collect()
}

/// What patching one context came to.
enum Outcome {
    /// Patched (or already drained, for `drain`).
    Done(String),
    /// NAME is not a member there.
    NotMember,
}

/// Applies `patch` to MemberCluster `name` in every context; `already` tells, from the
/// object as it is, whether nothing needs writing (and what to say). Returns the hosts
/// where NAME is a member.
async fn patch_everywhere(
    targets: Vec<Target>,
    name: &str,
    patch: &serde_json::Value,
    already: impl Fn(&MemberCluster) -> Option<String>,
) -> anyhow::Result<Vec<Host>> {
    let mut members = Vec::new();
    let mut failed = Vec::new();
    let mut skipped = Vec::new();
    for t in targets {
        let result = async {
            let client = t.client().await?;
            let api: Api<MemberCluster> = Api::all(client.clone());
            let outcome = match api.get_opt(name).await.with_context(|| {
                "reading MemberClusters (is Meridian installed in this cluster?)".to_owned()
            })? {
                None => Outcome::NotMember,
                Some(mc) => match already(&mc) {
                    Some(note) => Outcome::Done(note),
                    None => {
                        api.patch(
                            name,
                            &PatchParams::apply(FIELD_MANAGER),
                            &Patch::Merge(patch),
                        )
                        .await
                        .context("patching the MemberCluster")?;
                        Outcome::Done("patched".to_owned())
                    }
                },
            };
            anyhow::Ok((client, outcome))
        }
        .await;
        match result {
            Ok((client, Outcome::Done(note))) => {
                println!("context {:?}: MemberCluster {name:?} {note}", t.context);
                members.push(Host {
                    context: t.context,
                    client,
                });
            }
            Ok((_, Outcome::NotMember)) => skipped.push(t.context),
            Err(e) => {
                eprintln!("context {:?}: {e:#}", t.context);
                failed.push(t.context);
            }
        }
    }
    if !skipped.is_empty() {
        println!("not a member in context(s): {}", skipped.join(", "));
    }
    if !failed.is_empty() {
        bail!(
            "could not patch MemberCluster {name:?} in context(s) {}",
            failed.join(", ")
        );
    }
    if members.is_empty() {
        bail!(
            "unknown cluster {name:?}: no MemberCluster {name:?} in context(s) {}",
            skipped.join(", ")
        );
    }
    Ok(members)
}

/// Runs `cluster drain`.
pub(crate) async fn drain(args: DrainArgs, target: &ClusterArgs) -> anyhow::Result<()> {
    let targets = contexts(target, &args.hosts)?;
    let drain = Drain::starting(SystemTime::now(), args.over, args.include_local);
    let patch = json!({ "spec": { "drain": drain } });
    // An existing drain is kept: restarting its ramp would send traffic back.
    let hosts = patch_everywhere(targets, &args.name, &patch, |mc| {
        mc.spec
            .drain
            .as_ref()
            .map(|d| format!("already draining since {}", d.started_at))
    })
    .await?;
    if args.wait {
        wait_drained(&hosts, &args.name, args.over + args.wait_slack).await?;
    }
    Ok(())
}

/// Runs `cluster undrain`.
pub(crate) async fn undrain(args: UndrainArgs, target: &ClusterArgs) -> anyhow::Result<()> {
    let targets = contexts(target, &args.hosts)?;
    let patch = json!({ "spec": { "drain": null } });
    patch_everywhere(targets, &args.name, &patch, |mc| {
        mc.spec.drain.is_none().then(|| "not drained".to_owned())
    })
    .await?;
    Ok(())
}

/// Polls every host until its MemberCluster `name` reports `Drained`, for at most `limit`.
async fn wait_drained(hosts: &[Host], name: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = String::new();
    loop {
        let mut pending = Vec::new();
        let mut states = Vec::new();
        for h in hosts {
            let api: Api<MemberCluster> = Api::all(h.client.clone());
            let state = api
                .get_opt(name)
                .await
                .with_context(|| {
                    format!("context {:?}: reading MemberCluster {name:?}", h.context)
                })?
                .and_then(|mc| mc.status?.drain)
                .unwrap_or_else(|| "-".to_owned());
            if state != "Drained" {
                pending.push(h.context.clone());
            }
            states.push(format!("{}: {state}", h.context));
        }
        let line = states.join(", ");
        if line != last {
            println!("{line}");
            last = line;
        }
        if pending.is_empty() {
            println!("cluster {name:?} drained");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!(
                "cluster {name:?} not reported Drained within {}s in context(s) {}",
                limit.as_secs(),
                pending.join(", ")
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubeconfig with one context per name (no server is contacted).
    fn kubeconfig(names: &[&str]) -> tempfile::NamedTempFile {
        let mut yaml = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
        for n in names {
            yaml.push_str(&format!(
                "- name: {n}\n  cluster: {{server: \"https://127.0.0.1:1\"}}\n"
            ));
        }
        yaml.push_str("users:\n- name: u\n  user: {token: t}\ncontexts:\n");
        for n in names {
            yaml.push_str(&format!(
                "- name: {n}\n  context: {{cluster: {n}, user: u}}\n"
            ));
        }
        yaml.push_str(&format!("current-context: {}\n", names[0]));
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), yaml).unwrap();
        f
    }

    fn chosen(target: &ClusterArgs, hosts: &[&str]) -> anyhow::Result<Vec<String>> {
        let hosts = Hosts {
            host_contexts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        };
        Ok(contexts(target, &hosts)?
            .into_iter()
            .map(|t| t.context)
            .collect())
    }

    #[test]
    fn reaches_every_context_unless_told_otherwise() {
        let f = kubeconfig(&["east", "west", "far"]);
        let mut target = ClusterArgs {
            kubeconfig: Some(f.path().to_owned()),
            contexts: Vec::new(),
        };
        assert_eq!(chosen(&target, &[]).unwrap(), ["east", "west", "far"]);
        assert_eq!(chosen(&target, &["far", "west"]).unwrap(), ["far", "west"]);
        target.contexts = vec!["west".into()];
        assert_eq!(chosen(&target, &[]).unwrap(), ["west"]);
        let e = chosen(&target, &["nope"]).unwrap_err().to_string();
        assert!(
            e.contains("context \"nope\" not found in the kubeconfig (have: east, west, far)"),
            "{e}"
        );
    }
}
