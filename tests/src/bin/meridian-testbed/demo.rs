//! `meridian-testbed demo`: zone failover by health (seed scenario 000), live.
//!
//! Three simulated clusters — `east` (sh/2000400001, the caller), `west` (sh/200002) and
//! `far` (bj/bj-1) — run Meridian's real controller, gateway and DNS. `user` is deployed
//! with 14 pods in east and in west and a few in far; a steady request stream goes through
//! east's gateway while east's pods are made unready step by step (14 → 10 → 5 → 0 ready)
//! and then healed. A table shows every second where requests were answered, next to the
//! split east's gateway computes.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use futures::future::try_join_all;
use meridian_testbed::mesh::{Mesh, MeshOptions};
use meridian_testbed::prometheus::Prometheus;
use meridian_testbed::{
    Cluster, ClusterSpec, PodHandle, PodSpec, ServicePortSpec, ServiceSpec, Testbed,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::load::{self, Phase};
use crate::table::{Column, Table};

/// Namespace and name of the demo's service.
const NAMESPACE: &str = "demo";
const SERVICE: &str = "user";
/// Pods per zone in east and west (seed 000).
const PODS: usize = 14;
/// Envoy's default overprovisioning factor, in percent.
const FACTOR: usize = 140;
/// Ready east pods in each step: degrade, then heal.
const STEPS: [usize; 5] = [14, 10, 5, 0, 14];

/// Flags of `demo`.
#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// Seconds of steady traffic shown per step, once east's gateway has the new health.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    step_seconds: u64,

    /// Requests per second sent from east.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=500))]
    rate: u32,

    /// `user` pods in far (the other region, which should get nothing).
    #[arg(long, value_name = "N", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(0..=50))]
    far_pods: u32,

    /// Short steps (2 s of steady traffic each) for a quick look; same as --step-seconds 2.
    #[arg(long, conflicts_with = "step_seconds")]
    quick: bool,

    /// Also run a Prometheus (Debian `prometheus`) on 127.0.0.1 scraping every gateway
    /// each second, and print its address (its graphs: scripts/screenshot.sh).
    #[arg(long)]
    prometheus: bool,

    /// Seconds to keep everything up after the last step (e.g. to look at Prometheus).
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    hold_seconds: u64,
}

/// Meridian on a testbed. Fields drop in order: the Meridian processes before the clusters
/// and the directory they log into.
struct World {
    mesh: Mesh,
    testbed: Testbed,
}

/// The clusters, with the locality the caller sees them at.
fn specs() -> [(ClusterSpec, &'static str); 3] {
    [
        (
            ClusterSpec::new("east", "sh", ["2000400001"]),
            "the caller: requests start here",
        ),
        (
            ClusterSpec::new("west", "sh", ["200002"]),
            "same region, other zone",
        ),
        (ClusterSpec::new("far", "bj", ["bj-1"]), "other region"),
    ]
}

/// Runs the demo to the end. Dropping the future at any await tears everything down.
pub(crate) async fn run(args: DemoArgs) -> Result<()> {
    let step_time = Duration::from_secs(if args.quick { 2 } else { args.step_seconds });
    let far_pods = args.far_pods as usize;
    let started = Instant::now();
    let host = format!("{SERVICE}.{NAMESPACE}.global");

    println!("Meridian demo: zone failover by health, live.");
    println!("Three simulated clusters on loopback (a real etcd and kube-apiserver each), with");
    println!("Meridian's real controller, gateway and DNS processes in every one:");
    let specs = specs();
    for (spec, role) in &specs {
        println!(
            "  {:<5} {:<16} {role}",
            spec.name,
            format!("{}/{}", spec.region, spec.zones[0])
        );
    }
    let cluster_specs: Vec<ClusterSpec> = specs.iter().map(|(s, _)| s.clone()).collect();

    print_flush("starting the clusters … ");
    let t = Instant::now();
    let testbed = Testbed::start(&cluster_specs)
        .await
        .context("starting the clusters (is KUBEBUILDER_ASSETS set? see scripts/prereqs.sh)")?;
    println!("ready ({:.1} s)", t.elapsed().as_secs_f64());
    let dir = testbed.dir().display().to_string();
    println!("testbed directory: {dir} (removed on exit)");
    println!(
        "logs: {dir}/<cluster>/{{etcd,apiserver}}.log and {dir}/meridian/<cluster>/{{controller,gateway,dns}}.log"
    );

    print_flush(
        "starting Meridian (mesh CA and cluster registration with meridianctl, then controller, gateway and DNS per cluster) … ",
    );
    let t = Instant::now();
    let mesh = Mesh::start(&testbed, MeshOptions::default())
        .await
        .context("starting Meridian on the testbed")?;
    println!("ready ({:.1} s)", t.elapsed().as_secs_f64());
    let world = World { mesh, testbed };
    // Declared after the world, so it stops before the testbed directory goes.
    let _prometheus = if args.prometheus {
        let gateways: Vec<_> = world
            .mesh
            .members()
            .iter()
            .map(|m| m.gateway_admin())
            .collect();
        let p = Prometheus::start(&gateways, &world.testbed.dir().join("prometheus"))
            .await
            .context("starting Prometheus (Debian: apt-get install prometheus)")?;
        println!(
            "prometheus: http://{}/ (scraping every gateway each second)",
            p.addr()
        );
        Some(p)
    } else {
        None
    };

    print_flush(&format!(
        "deploying {SERVICE}.{NAMESPACE}: {PODS} pods in east, {PODS} in west, {far_pods} in far … "
    ));
    let t = Instant::now();
    let counts = [PODS, PODS, far_pods];
    let pods = deploy(&world.testbed, counts).await?;
    let total = counts.iter().sum::<usize>();
    world
        .mesh
        .wait_for_endpoints("east", &host, total, total)
        .await
        .context("waiting for east's gateway to see every endpoint")?;
    println!(
        "east's gateway sees {total}/{total} healthy endpoints ({:.1} s)",
        t.elapsed().as_secs_f64()
    );

    let east = world.testbed.cluster("east")?;
    let addr = world
        .mesh
        .service_addr(east, &host, 80)
        .await
        .context("resolving the VIP in east")?;
    let admin = world.mesh.member("east")?.gateway_config_dump();
    println!(
        "sending {} requests/s from east to {host}:80 (east's VIP, served by its gateway at {addr}); Ctrl-C stops everything",
        args.rate
    );
    println!("setup took {:.1} s", started.elapsed().as_secs_f64());

    let (phase_tx, phase_rx) = watch::channel(Phase {
        step: 0,
        steady: false,
    });
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let columns = specs
        .iter()
        .map(|(s, _)| Column {
            cluster: s.name.clone(),
            locality: format!("{}/{}", s.region, s.zones[0]),
        })
        .collect();
    let mut table = Table::new(columns, &host, admin, events_rx, phase_tx);
    // Aborted when dropped (end of run or a signal), which aborts its requests too.
    let mut stream = JoinSet::new();
    stream.spawn(load::stream(addr, args.rate, phase_rx, events_tx));

    let mut ready = vec![true; PODS];
    let others = PODS + far_pods;
    for (step, &target) in STEPS.iter().enumerate() {
        let healed = step + 1 == STEPS.len();
        let split = EnvoySplit::new(target, PODS, [PODS, far_pods]);
        println!();
        println!(
            "step {}/{} · {target}/{PODS} east pods ready{}",
            step + 1,
            STEPS.len(),
            if healed { " (healed)" } else { "" }
        );
        println!("  {}", split.math());
        println!("  {}", split.why(healed));
        table.print_header();
        table.set_phase(Phase {
            step,
            steady: false,
        });
        let began = Instant::now();
        let changed = table
            .run_until(async {
                let changed = set_ready(east, &pods[0], &mut ready, target).await?;
                world
                    .mesh
                    .wait_for_endpoints("east", &host, total, target + others)
                    .await
                    .context("waiting for east's gateway to see the new health")?;
                anyhow::Ok(changed)
            })
            .await?;
        if changed > 0 {
            println!(
                "  … {changed} east pods made {}; east's gateway sees {}/{total} healthy endpoints {:.1} s after the first change",
                if healed { "ready" } else { "unready" },
                target + others,
                began.elapsed().as_secs_f64()
            );
        }
        table.set_phase(Phase { step, steady: true });
        table.run_until(tokio::time::sleep(step_time)).await;
        table.set_phase(Phase {
            step: step + 1,
            steady: false,
        });
        let tally = table.steady_total(step).await;
        println!(
            "  ⇒ step {}/{} ({target}/{PODS} ready): {} requests · {}",
            step + 1,
            STEPS.len(),
            tally.answered() + tally.failed,
            table.describe(&tally)
        );
    }
    if args.hold_seconds > 0 {
        println!();
        println!("holding for {} s", args.hold_seconds);
        tokio::time::sleep(Duration::from_secs(args.hold_seconds)).await;
    }
    drop(stream);
    println!();
    println!(
        "demo done in {:.1} s; stopping the clusters and Meridian",
        started.elapsed().as_secs_f64()
    );
    drop(world);
    println!("stopped; testbed directory removed");
    Ok(())
}

/// Exports `user` in every cluster and adds `counts[i]` echo pods to cluster `i`.
async fn deploy(testbed: &Testbed, counts: [usize; 3]) -> Result<Vec<Vec<PodHandle>>> {
    try_join_all(
        testbed
            .clusters()
            .iter()
            .zip(counts)
            .map(|(cluster, count)| deploy_in(cluster, count)),
    )
    .await
}

async fn deploy_in(cluster: &Cluster, count: usize) -> Result<Vec<PodHandle>> {
    cluster.create_namespace(NAMESPACE).await?;
    cluster
        .create_service(
            &ServiceSpec::new(SERVICE)
                .namespace(NAMESPACE)
                .port(ServicePortSpec::http("http", 80).target(8080)),
        )
        .await?;
    let mut pods = Vec::with_capacity(count);
    for i in 0..count {
        let spec = PodSpec::new(format!("{SERVICE}-{}-{i}", cluster.name()))
            .namespace(NAMESPACE)
            .app(SERVICE)
            .port("http", 8080);
        pods.push(cluster.add_pod(spec).await?);
    }
    Ok(pods)
}

/// Makes exactly `target` of `pods` ready (the last ones), touching only pods that change;
/// returns how many changed.
async fn set_ready(
    cluster: &Cluster,
    pods: &[PodHandle],
    ready: &mut [bool],
    target: usize,
) -> Result<usize> {
    let first_ready = pods.len() - target;
    let mut changed = 0;
    for (i, pod) in pods.iter().enumerate() {
        let want = i >= first_ready;
        if ready[i] != want {
            cluster.set_pod_ready(pod, want).await?;
            ready[i] = want;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Envoy's priority math for a caller in east, with west (same region) and far (other
/// region) fully healthy: the split the table should show, with the numbers behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EnvoySplit {
    healthy: usize,
    total: usize,
    /// Health per priority (east, west, far), percent.
    health: [usize; 3],
    /// Load per priority (east, west, far), percent.
    load: [usize; 3],
}

impl EnvoySplit {
    /// `healthy` of `total` east pods ready; `others` = pods of west and far, all ready.
    fn new(healthy: usize, total: usize, others: [usize; 2]) -> EnvoySplit {
        // An empty priority has no health (and gets no load).
        let health_of = |h: usize, t: usize| (FACTOR * h).checked_div(t).unwrap_or(0).min(100);
        let health = [
            health_of(healthy, total),
            health_of(others[0], others[0]),
            health_of(others[1], others[1]),
        ];
        let nth = health.iter().sum::<usize>().min(100);
        let mut load = [0; 3];
        let mut left = 100;
        for (l, h) in load.iter_mut().zip(health) {
            *l = (h * 100).checked_div(nth).unwrap_or(0).min(left);
            left -= *l;
        }
        EnvoySplit {
            healthy,
            total,
            health,
            load,
        }
    }

    /// The arithmetic, e.g. `east health = min(100, 140×5/14) = 50 → load east 50% · …`.
    fn math(&self) -> String {
        format!(
            "east health = min(100, {FACTOR}×{}/{}) = {} (west {}, far {}) → east {}% · west {}% · far {}%",
            self.healthy,
            self.total,
            self.health[0],
            self.health[1],
            self.health[2],
            self.load[0],
            self.load[1],
            self.load[2]
        )
    }

    /// One line on why the split is what it is.
    fn why(&self, healed: bool) -> String {
        let lost = self.total - self.healthy;
        if healed {
            "healed: east is back at full health, so all traffic returns to the local zone".into()
        } else if self.load[0] == 100 && lost == 0 {
            "all healthy: the caller's own zone (priority 0) takes everything".into()
        } else if self.load[0] == 100 {
            format!(
                "the 1.4 overprovisioning factor absorbs {lost} lost pods: east still counts as fully healthy, nothing moves"
            )
        } else if self.load[0] > 0 {
            format!(
                "east keeps {}%, the rest spills to west (same region, next priority); far gets nothing because west covers it",
                self.load[0]
            )
        } else {
            "east has nothing healthy: west (same region) takes everything; far (other region) stays at 0% because west alone is fully healthy".into()
        }
    }
}

/// Prints `text` without a newline, so a slow step shows what it is waiting for.
fn print_flush(text: &str) {
    use std::io::Write;
    print!("{text}");
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of docs/concepts.md (factor 1.4): 10/14 → 100% local, 5/14 → 50/50,
    /// 0/14 → 100% remote (and nothing to the other region).
    #[test]
    fn seed_figures() {
        let split = |h| EnvoySplit::new(h, 14, [14, 6]).load;
        assert_eq!(split(14), [100, 0, 0]);
        assert_eq!(split(10), [100, 0, 0]);
        assert_eq!(split(5), [50, 50, 0]);
        assert_eq!(split(0), [0, 100, 0]);
        assert_eq!(split(3), [30, 70, 0]);
    }

    /// With west empty the spill goes to far.
    #[test]
    fn spills_to_far_without_west() {
        assert_eq!(EnvoySplit::new(5, 14, [0, 6]).load, [50, 0, 50]);
    }

    #[test]
    fn captions_name_the_numbers() {
        let s = EnvoySplit::new(10, 14, [14, 6]);
        assert!(s.math().contains("140×10/14) = 100"), "{}", s.math());
        assert!(s.why(false).contains("absorbs 4 lost pods"));
    }
}
