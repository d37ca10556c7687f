//! `meridianctl explain <svc>.<ns>.global --from region/zone`: the split in force now, from
//! the controller's catalog (GlobalService status) and the accepted policy, computed by the
//! same engine the gateway runs. With `--gateway`, the gateway's live outlier ejections are
//! taken out of the healthy counts, and its locality is the default caller.

use std::collections::BTreeMap;

use anyhow::{Context as _, anyhow, bail};
use kube::api::ListParams;
use kube::{Api, Client};
use meridian_api::Locality;
use meridian_api::policy::TrafficPolicy;
use meridian_api::split::{Caller, Group, compute};
use meridian_crd::{EXPORT_LABEL, GlobalService, GlobalTrafficPolicy};

use crate::render::{self, Output};

/// Arguments of `meridianctl explain`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The global service, `<name>.<namespace>.global` (or `<name>.<namespace>`).
    service: String,
    /// The caller's locality, `region/zone[/subzone]` (default: the gateway's, with --gateway).
    #[arg(long)]
    from: Option<String>,
    /// URL of a gateway's /config_dump listener whose live ejections to apply (e.g.
    /// http://127.0.0.1:15000 through `kubectl port-forward`).
    #[arg(long)]
    gateway: Option<String>,
}

/// What a gateway's `/config_dump` says about one service right now.
#[derive(Debug, Default)]
struct Live {
    /// The gateway's own locality.
    locality: Option<Locality>,
    /// Ready endpoints the gateway has ejected, per locality.
    ejected: BTreeMap<Locality, u32>,
    /// `cluster/address` of each ejected endpoint.
    addresses: Vec<String>,
}

/// A locality as `/config_dump` prints it (`region/zone/subzone`).
fn locality_of(v: &serde_json::Value) -> Locality {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_default()
}

async fn live(gateway: &str, hostname: &str) -> anyhow::Result<Live> {
    let dump = crate::admin::get_json(gateway, "/config_dump").await?;
    let snapshot = &dump["snapshot"];
    let mut live = Live {
        locality: Some(locality_of(&snapshot["locality"])),
        ..Live::default()
    };
    let endpoints = snapshot["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| {
            s["hostname"]
                .as_str()
                .is_some_and(|h| h.starts_with(hostname))
        })
        .map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default();
    for e in dump["ejections"].as_array().into_iter().flatten() {
        if !e["service"]
            .as_str()
            .is_some_and(|s| s.starts_with(hostname))
        {
            continue;
        }
        let cluster = e["cluster"].as_str().unwrap_or_default();
        let address = e["address"].as_str().unwrap_or_default();
        live.addresses.push(format!("{cluster}/{address}"));
        if let Some(ep) = endpoints
            .iter()
            .find(|ep| ep["cluster"] == cluster && ep["address"] == address)
            && ep["ready"] == true
        {
            *live
                .ejected
                .entry(locality_of(&ep["locality"]))
                .or_default() += 1;
        }
    }
    Ok(live)
}

/// Splits `<name>.<namespace>[.<zone>...]` into name and namespace.
pub(crate) fn parse_hostname(host: &str) -> anyhow::Result<(String, String)> {
    let mut parts = host.trim_end_matches('.').split('.');
    match (parts.next(), parts.next()) {
        (Some(name), Some(ns)) if !name.is_empty() && !ns.is_empty() => {
            Ok((name.to_owned(), ns.to_owned()))
        }
        _ => bail!("{host:?} is not <service>.<namespace>.global"),
    }
}

/// Runs `meridianctl explain`.
pub(crate) async fn run(client: &Client, args: &Args, output: Output) -> anyhow::Result<()> {
    let (name, ns) = parse_hostname(&args.service)?;
    let live = match &args.gateway {
        Some(url) => live(url, &format!("{name}.{ns}."))
            .await
            .context("reading the gateway's /config_dump")?,
        None => Live::default(),
    };
    let caller: Locality = match (&args.from, &live.locality) {
        (Some(from), _) => from.parse().map_err(|e| anyhow!("--from: {e}"))?,
        (None, Some(l)) => l.clone(),
        (None, None) => {
            bail!("pass --from region/zone (or --gateway to use the gateway's locality)")
        }
    };
    let gs = Api::<GlobalService>::all(client.clone())
        .get_opt(&format!("{name}.{ns}"))
        .await
        .context("reading the GlobalService")?
        .ok_or_else(|| {
            anyhow!("no global service {name}.{ns}: is the Service labelled {EXPORT_LABEL}=true?")
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
        let ejected = live.ejected.get(&locality).copied().unwrap_or(0);
        groups.push(Group {
            locality,
            total: l.total,
            healthy: l.ready.saturating_sub(ejected),
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
            if args.gateway.is_some() {
                let ejected = if live.addresses.is_empty() {
                    "none".to_owned()
                } else {
                    live.addresses.join(", ")
                };
                println!("live ejections: {ejected}");
            }
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
