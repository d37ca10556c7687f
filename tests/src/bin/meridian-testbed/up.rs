//! `meridian-testbed up` (the default): brings up simulated clusters and keeps them running
//! until Ctrl-C, for poking at them by hand (`kubectl --kubeconfig …`) or driving them from
//! a script.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use clap::Args;
use meridian_testbed::{ClusterSpec, PodSpec, ServicePortSpec, ServiceSpec, Testbed};

/// Flags of `up`.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct UpArgs {
    /// A cluster as NAME=REGION:ZONE[,ZONE...]; repeat for more. Default: east, west, north.
    #[arg(long = "cluster", value_name = "NAME=REGION:ZONES")]
    clusters: Vec<ClusterArg>,

    /// Also create this exported Service (http 80 → 8080) with one echo pod per zone in
    /// every cluster.
    #[arg(long, value_name = "NAME")]
    service: Option<String>,

    /// Copy each cluster's kubeconfig to DIR/<cluster>.kubeconfig (the testbed's own
    /// directory is deleted on exit).
    #[arg(long, value_name = "DIR")]
    kubeconfig_dir: Option<PathBuf>,
}

#[derive(Clone, Debug)]
struct ClusterArg(ClusterSpec);

impl FromStr for ClusterArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || format!("{s:?}: expected NAME=REGION:ZONE[,ZONE...]");
        let (name, rest) = s.split_once('=').ok_or_else(usage)?;
        let (region, zones) = rest.split_once(':').ok_or_else(usage)?;
        let zones: Vec<&str> = zones.split(',').filter(|z| !z.is_empty()).collect();
        if name.is_empty() || region.is_empty() || zones.is_empty() {
            return Err(usage());
        }
        Ok(ClusterArg(ClusterSpec::new(name, region, zones)))
    }
}

/// Starts the clusters, prints how to reach them, then waits forever: the caller ends the
/// run by dropping this future (on a signal), which tears the testbed down.
pub(crate) async fn run(args: UpArgs) -> Result<()> {
    let specs: Vec<ClusterSpec> = if args.clusters.is_empty() {
        vec![
            ClusterSpec::new("east", "us-east1", ["us-east1-a", "us-east1-b"]),
            ClusterSpec::new("west", "us-west1", ["us-west1-a", "us-west1-b"]),
            ClusterSpec::new("north", "eu-north1", ["eu-north1-a"]),
        ]
    } else {
        args.clusters.into_iter().map(|c| c.0).collect()
    };

    let testbed = Testbed::start(&specs)
        .await
        .context("starting the testbed")?;
    println!("testbed {}", testbed.dir().display());
    if let Some(dir) = &args.kubeconfig_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for cluster in testbed.clusters() {
        let kubeconfig = match &args.kubeconfig_dir {
            Some(dir) => {
                let path = dir.join(format!("{}.kubeconfig", cluster.name()));
                std::fs::write(&path, cluster.kubeconfig())
                    .with_context(|| format!("writing {}", path.display()))?;
                path
            }
            None => cluster.kubeconfig_path().to_path_buf(),
        };
        println!(
            "cluster {} region {} zones {} server {} kubeconfig {}",
            cluster.name(),
            cluster.region(),
            cluster.zones().join(","),
            cluster.server_url(),
            kubeconfig.display()
        );
        if let Some(service) = &args.service {
            if service.is_empty() {
                bail!("--service needs a name");
            }
            cluster
                .create_service(
                    &ServiceSpec::new(service.as_str())
                        .port(ServicePortSpec::http("http", 80).target(8080)),
                )
                .await?;
            for zone in cluster.zones() {
                let name = format!("{service}-{zone}");
                let pod = cluster
                    .add_pod(
                        PodSpec::new(name.as_str())
                            .app(service.as_str())
                            .zone(zone.as_str()),
                    )
                    .await?;
                println!(
                    "  pod {} zone {} ip {} listens {}",
                    pod.name(),
                    pod.zone(),
                    pod.pod_ip(),
                    pod.socket_addr(8080)
                );
            }
        }
    }
    println!("ready; Ctrl-C stops everything");
    // The testbed lives until this future is dropped.
    std::future::pending::<()>().await;
    Ok(())
}
