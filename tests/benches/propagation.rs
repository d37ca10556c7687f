//! End-to-end propagation on the testbed: one endpoint's readiness flips in cluster `east`
//! and the time until the REMOTE gateway of `west` routes by the new state is measured.
//!
//! Two clusters (real etcd + kube-apiserver each) with Meridian's real binaries, `S`
//! exported services × `E` endpoints in each cluster (one namespace per service, so the
//! testbed's endpoints controller rewrites one service per change). Then `N` times: one
//! endpoint of one service in `east` turns not ready (or ready again) through
//! [`Cluster::set_pod_ready`] (Pod status, Endpoints and EndpointSlice written as the
//! kubelet and the endpoint controllers would), and `west`'s gateway admin `/metrics` is
//! polled every millisecond until `meridian_gateway_snapshot_version` changes (the gauge is
//! set once the new routes are in force); its `/config_dump` then confirms the endpoint's
//! new health, else polling goes on. Prints p50/p99/max of the end-to-end time (from the
//! start of the write), of the testbed's write alone, and the CPU per change of `west`'s
//! controller (the one that watches `east` and serves `west`'s gateway), `east`'s
//! controller and `west`'s gateway (`/proc/<pid>/stat` utime+stime over the N changes / N).
//!
//! ```text
//! export KUBEBUILDER_ASSETS=$(cat ~/.cache/meridian/k8s/assets-dir)
//! cargo build -p meridian-controller -p meridian-gateway -p meridian-dns -p meridian-cli
//! MERIDIAN_BIN_DIR=$PWD/target/debug cargo test -p meridian-testbed --bench propagation
//! ```
//!
//! `MERIDIAN_BENCH_SERVICES` (default 200), `MERIDIAN_BENCH_ENDPOINTS` (10 per service and
//! cluster), `MERIDIAN_BENCH_CHANGES` (50). Timings are printed, never asserted.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meridian_testbed::mesh::{Member, Mesh, MeshOptions};
use meridian_testbed::metrics::{sample, scrape};
use meridian_testbed::{ClusterSpec, PodHandle, PodSpec, ServicePortSpec, ServiceSpec, Testbed};
use serde_json::Value;
use tokio::time::Instant;

/// The gauge the gateway sets once a new snapshot's routes are in force.
const VERSION_SERIES: &str = "meridian_gateway_snapshot_version";
/// How long one change may take to show before the bench gives up.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the processes' idle CPU rate is measured before the changes.
const IDLE: Duration = Duration::from_secs(10);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn namespace(service: usize) -> String {
    format!("prop-{service}")
}

fn hostname(service: usize) -> String {
    format!("svc.{}.global", namespace(service))
}

/// Creates the services and their pods in one cluster; returns the pods per service.
async fn deploy(
    testbed: &Testbed,
    cluster: &str,
    services: usize,
    endpoints: usize,
) -> Result<Vec<Vec<PodHandle>>> {
    let c = testbed.cluster(cluster)?;
    let mut out = Vec::new();
    for s in 0..services {
        let ns = namespace(s);
        c.create_service(
            &ServiceSpec::new("svc")
                .namespace(&ns)
                .port(ServicePortSpec::http("http", 80).target(8080)),
        )
        .await?;
        let mut pods = Vec::new();
        for e in 0..endpoints {
            // No echo servers: nothing sends traffic, and thousands of listeners would
            // only cost file descriptors.
            let spec = PodSpec::new(format!("svc-{cluster}-{e}"))
                .namespace(&ns)
                .app("svc")
                .port("http", 8080)
                .echo(false);
            pods.push(c.add_pod(spec).await?);
        }
        out.push(pods);
    }
    Ok(out)
}

/// Healthy endpoints per cluster of `hostname` in a gateway's config dump.
fn healthy_by_cluster(dump: &Value, hostname: &str) -> BTreeMap<String, (usize, usize)> {
    let mut out = BTreeMap::<String, (usize, usize)>::new();
    for e in dump["splits"][hostname]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let entry = out
            .entry(e["cluster"].as_str().unwrap_or_default().to_owned())
            .or_default();
        entry.0 += 1;
        if e["healthy"] == Value::Bool(true) {
            entry.1 += 1;
        }
    }
    out
}

async fn version(member: &Member) -> Result<f64> {
    let text = scrape(member.gateway_admin()).await?;
    sample(&text, VERSION_SERIES).with_context(|| format!("{VERSION_SERIES} not in /metrics"))
}

/// utime + stime of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn percentiles(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    println!(
        "{label}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n = {})",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
        samples.len()
    );
}

fn pid_of(member: &Member, process: &str) -> Result<u32> {
    member
        .pids()
        .into_iter()
        .find(|(name, _)| *name == process)
        .and_then(|(_, pid)| pid)
        .with_context(|| format!("no {process} in {}", member.name()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let services = env_or("MERIDIAN_BENCH_SERVICES", 200);
    let endpoints = env_or("MERIDIAN_BENCH_ENDPOINTS", 10);
    let changes = env_or("MERIDIAN_BENCH_CHANGES", 50);
    if services == 0 || endpoints == 0 || changes == 0 {
        bail!("MERIDIAN_BENCH_SERVICES, _ENDPOINTS and _CHANGES must be at least 1");
    }

    let started = Instant::now();
    let testbed = Testbed::start(&[
        ClusterSpec::new("east", "us-east1", ["us-east1-a"]),
        ClusterSpec::new("west", "us-west1", ["us-west1-a"]),
    ])
    .await?;
    let mesh = Mesh::start(&testbed, MeshOptions::default()).await?;
    println!(
        "2 clusters and Meridian up in {:.1?}; deploying {services} services × {endpoints} endpoints per cluster",
        started.elapsed()
    );
    let deploying = Instant::now();
    let (east_pods, _west_pods) = tokio::try_join!(
        deploy(&testbed, "east", services, endpoints),
        deploy(&testbed, "west", services, endpoints),
    )?;
    println!("deployed in {:.1?}", deploying.elapsed());

    let west = mesh.member("west")?;
    let converging = Instant::now();
    let want: BTreeMap<String, (usize, usize)> = ["east", "west"]
        .into_iter()
        .map(|c| (c.to_owned(), (endpoints, endpoints)))
        .collect();
    loop {
        let dump = west.config_dump().await?;
        if (0..services).all(|s| healthy_by_cluster(&dump, &hostname(s)) == want) {
            break;
        }
        if converging.elapsed() > Duration::from_secs(600) {
            bail!("west's gateway did not converge on every service within 10 min");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "west's gateway has all {} endpoints healthy after {:.1?} more",
        2 * services * endpoints,
        converging.elapsed()
    );

    let east = testbed.cluster("east")?;
    let pids = [
        ("west controller", pid_of(west, "controller")?),
        (
            "east controller",
            pid_of(mesh.member("east")?, "controller")?,
        ),
        ("west gateway", pid_of(west, "gateway")?),
    ];
    let cpu_now = || {
        pids.iter()
            .map(|(_, pid)| cpu_ticks(*pid))
            .collect::<Result<Vec<_>>>()
    };
    // The processes' CPU with nothing changing (reflector resyncs, the periodic full
    // pass, metrics), to tell apart what the changes cost.
    let idle_start = cpu_now()?;
    tokio::time::sleep(IDLE).await;
    let idle: Vec<f64> = cpu_now()?
        .iter()
        .zip(&idle_start)
        .map(|(now, before)| now.saturating_sub(*before) as f64 / IDLE.as_secs_f64())
        .collect();
    let cpu_before = cpu_now()?;
    let changing = Instant::now();
    let mut ready: BTreeMap<(usize, usize), bool> = BTreeMap::new();
    let (mut end_to_end, mut writes) = (Vec::new(), Vec::new());
    let (mut late, mut unverified) = (0, 0);
    for k in 0..changes {
        // Spread over services and pods; a pod flipped twice comes back ready.
        let (s, e) = ((k * 7) % services, (k / services) % endpoints);
        let now_ready = !ready.get(&(s, e)).copied().unwrap_or(true);
        let pod = &east_pods[s][e];
        let host = hostname(s);
        let healthy_east = (0..endpoints)
            .filter(|i| {
                if *i == e {
                    now_ready
                } else {
                    ready.get(&(s, *i)).copied().unwrap_or(true)
                }
            })
            .count();
        ready.insert((s, e), now_ready);

        let mut seen = version(west).await?;
        let t0 = Instant::now();
        // The write and the polling run side by side: the controller may see the change
        // before the testbed's call returns.
        let write = async {
            east.set_pod_ready(pod, now_ready).await?;
            anyhow::Ok(t0.elapsed())
        };
        let shown = async {
            loop {
                let v = version(west).await?;
                if v != seen {
                    let at = t0.elapsed();
                    // The dump is large and slow on a loaded machine: after it failed
                    // (5 s timeout) the change is taken as shown, and counted.
                    let Ok(dump) = west.config_dump().await else {
                        unverified += 1;
                        return anyhow::Ok(at);
                    };
                    if healthy_by_cluster(&dump, &host).get("east")
                        == Some(&(endpoints, healthy_east))
                    {
                        return anyhow::Ok(at);
                    }
                    // Another change reached the gateway first: keep waiting for this one.
                    late += 1;
                    seen = v;
                }
                if t0.elapsed() > CHANGE_TIMEOUT {
                    bail!(
                        "change {k} ({host}, pod {e} ready={now_ready}) not shown in west after {CHANGE_TIMEOUT:?}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let (write, shown) = tokio::join!(write, shown);
        writes.push(write?);
        let shown = shown?;
        end_to_end.push(shown);
    }
    let changing = changing.elapsed().as_secs_f64();
    let hz = clock_ticks() as f64;
    println!();
    println!(
        "{changes} changes, {services} services × {endpoints} endpoints per cluster × 2 clusters; load {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    percentiles(
        "end to end (write started → west's gateway routes by it)",
        end_to_end,
    );
    percentiles(
        "testbed write alone (Pod status, Endpoints, EndpointSlice)",
        writes,
    );
    if late > 0 {
        println!("{late} version changes were of another change and not counted as the end");
    }
    if unverified > 0 {
        println!(
            "{unverified} changes taken as shown at the version change without the config_dump check (it timed out)"
        );
    }
    for (((name, pid), before), idle) in pids.iter().zip(cpu_before).zip(idle) {
        let used = cpu_ticks(*pid)?.saturating_sub(before) as f64;
        let above_idle = (used - idle * changing).max(0.0);
        println!(
            "{name} CPU per change: {:.1} ms, {:.1} ms above its idle rate of {:.1} ms/s \
             (utime+stime over {changes} changes in {changing:.1} s, {} ms ticks)",
            used / hz * 1e3 / changes as f64,
            above_idle / hz * 1e3 / changes as f64,
            idle / hz * 1e3,
            (1e3 / hz) as u64
        );
    }
    Ok(())
}
