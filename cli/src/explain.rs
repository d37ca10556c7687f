//! `meridianctl explain <svc>.<ns>.global --from region/zone`: the split in force now, from
//! the controller's catalog (GlobalService status) and the accepted policy, computed by the
//! same engine the gateway runs.

use anyhow::{Context as _, anyhow, bail};
use kube::api::ListParams;
use kube::{Api, Client};
use meridian_api::Locality;
use meridian_api::policy::TrafficPolicy;
use meridian_api::split::{Caller, Group, compute};
use meridian_controller::crd::{GlobalService, GlobalTrafficPolicy};

use crate::render::{self, Output};

/// Arguments of `meridianctl explain`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The global service, `<name>.<namespace>.global` (or `<name>.<namespace>`).
    service: String,
    /// The caller's locality, `region/zone[/subzone]`.
    #[arg(long)]
    from: String,
}

/// Splits `<name>.<namespace>[.<zone>...]` into name and namespace.
pub fn parse_hostname(host: &str) -> anyhow::Result<(String, String)> {
    let mut parts = host.trim_end_matches('.').split('.');
    match (parts.next(), parts.next()) {
        (Some(name), Some(ns)) if !name.is_empty() && !ns.is_empty() => {
            Ok((name.to_owned(), ns.to_owned()))
        }
        _ => bail!("{host:?} is not <service>.<namespace>.global"),
    }
}

/// Runs `meridianctl explain`.
pub async fn run(client: &Client, args: &Args, output: Output) -> anyhow::Result<()> {
    let (name, ns) = parse_hostname(&args.service)?;
    let caller: Locality = args.from.parse().map_err(|e| anyhow!("--from: {e}"))?;
    let gs = Api::<GlobalService>::all(client.clone())
        .get_opt(&format!("{name}.{ns}"))
        .await
        .context("reading the GlobalService")?
        .ok_or_else(|| {
            anyhow!(
                "no global service {name}.{ns}: is the Service labelled meridian.io/export=true?"
            )
        })?;
    let status = gs.status.unwrap_or_default();
    let policies = Api::<GlobalTrafficPolicy>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .context("listing GlobalTrafficPolicies")?;
    let policy = policies.items.iter().find(|p| p.spec.service == name);
    let accepted: TrafficPolicy = policy
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.accepted.clone())
        .unwrap_or_default();

    let mut groups = Vec::new();
    for l in &status.localities {
        let locality: Locality = l.locality.parse().unwrap_or_default();
        groups.push(Group {
            locality,
            total: l.total,
            healthy: l.ready,
            ..Group::default()
        });
    }
    let split = compute(&Caller::at(caller.clone()), &groups, &accepted);
    match output {
        Output::Table => {
            println!("{}.{}.global from {caller}", name, ns);
            println!(
                "policy: {}",
                policy.map_or(
                    "none (defaults: failover zone → region → other regions)".to_owned(),
                    |p| {
                        format!(
                            "GlobalTrafficPolicy {ns}/{}",
                            p.metadata.name.clone().unwrap_or_default()
                        )
                    }
                )
            );
            print!("{}", render::split_table(&groups, &split));
            if !split.routable() {
                println!("no healthy endpoint: every request fails");
            }
        }
        _ => render::print_structured(&render::split_json(&groups, &split), output)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostnames() {
        assert_eq!(
            super::parse_hostname("reviews.default.global").unwrap(),
            ("reviews".into(), "default".into())
        );
        assert_eq!(
            super::parse_hostname("reviews.default").unwrap(),
            ("reviews".into(), "default".into())
        );
        assert!(super::parse_hostname("reviews").is_err());
    }
}
