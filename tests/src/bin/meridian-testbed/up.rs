//! `meridian-testbed`: brings up simulated clusters and keeps them running until Ctrl-C,
//! for poking at them by hand (`kubectl --kubeconfig …`) or driving them from a script.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use clap::Parser;
use meridian_testbed::{ClusterSpec, PodSpec, ServicePortSpec, ServiceSpec, Testbed};

/// Start simulated Kubernetes clusters (real etcd + kube-apiserver each) on loopback.
#[derive(Debug, Parser)]
#[command(name = "meridian-testbed", version)]
struct Config {
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

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "meridian_testbed=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
    let specs: Vec<ClusterSpec> = if config.clusters.is_empty() {
        vec![
            ClusterSpec::new("east", "us-east1", ["us-east1-a", "us-east1-b"]),
            ClusterSpec::new("west", "us-west1", ["us-west1-a", "us-west1-b"]),
            ClusterSpec::new("north", "eu-north1", ["eu-north1-a"]),
        ]
    } else {
        config.clusters.into_iter().map(|c| c.0).collect()
    };

    let testbed = Testbed::start(&specs)
        .await
        .context("starting the testbed")?;
    println!("testbed {}", testbed.dir().display());
    if let Some(dir) = &config.kubeconfig_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    for cluster in testbed.clusters() {
        let kubeconfig = match &config.kubeconfig_dir {
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
        if let Some(service) = &config.service {
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

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    drop(testbed);
    eprintln!("testbed stopped");
    Ok(())
}
