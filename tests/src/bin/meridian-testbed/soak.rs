//! `meridian-testbed soak`: the three-cluster world under steady HTTP and TCP traffic and
//! a random fault every few seconds, for a bounded time (`scripts/soak.sh`).
//!
//! Callers are in `east`, which has no pods of the service: requests cross to `west`
//! (same region) and fail over to `far`. Faults hit the serving side: west's gateway
//! SIGKILLed (restarted after 3 s), west's controller SIGKILLed and restarted, a west pod
//! unready for 3 s, a west pod deleted and replaced. Every failed request is counted with
//! its reason and the fault in force. East's controller, gateway and DNS server are never
//! faulted: their RSS and open file descriptors are read at start and end.
//!
//! Pass: no FD growth (beyond [`FD_SLACK`] pooled connections), RSS growth under 10%, no
//! failed request outside a fault's window ([`WINDOW`] after it was injected).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use meridian_testbed::mesh::{Mesh, MeshOptions};
use meridian_testbed::traffic::{http_get, tcp_hello};
use meridian_testbed::{ClusterSpec, PodHandle, PodSpec, ServicePortSpec, ServiceSpec, Testbed};
use tokio::sync::watch;
use tokio::time::Instant;

const NAMESPACE: &str = "soak";
/// Pods per serving cluster.
const PODS: usize = 3;
/// How long after a fault is injected its failures are expected (its documented window:
/// detection plus the next snapshot).
const WINDOW: Duration = Duration::from_secs(5);
/// Open descriptors that may come and go with pooled upstream and tunnel connections.
const FD_SLACK: i64 = 8;

/// Flags of `soak`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SoakArgs {
    /// How long to run, in minutes.
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=1440))]
    minutes: u64,

    /// Seconds between faults.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=600))]
    fault_seconds: u64,
}

/// The faults injected, in turn at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    GatewayKilled,
    ControllerKilled,
    PodUnready,
    PodReplaced,
}

impl Fault {
    const ALL: [Fault; 4] = [
        Fault::GatewayKilled,
        Fault::ControllerKilled,
        Fault::PodUnready,
        Fault::PodReplaced,
    ];
}

/// One traffic outcome.
struct Outcome {
    at: Instant,
    error: Option<String>,
}

/// A tiny xorshift generator: the soak only needs "some fault, not always the same".
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Resident set size (KiB) and open descriptors of `pid`.
fn resources(pid: u32) -> Result<(i64, i64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS missing")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count() as i64;
    Ok((rss, fds))
}

/// RSS and FDs of east's processes.
fn measure(mesh: &Mesh) -> Result<BTreeMap<&'static str, (i64, i64)>> {
    let mut out = BTreeMap::new();
    for (name, pid) in mesh.member("east")?.pids() {
        let pid = pid.with_context(|| format!("east's {name} is not running"))?;
        out.insert(name, resources(pid)?);
    }
    Ok(out)
}

/// Sends requests with `send` every `interval` until `stop`, recording outcomes.
async fn stream<F, Fut>(
    interval: Duration,
    mut stop: watch::Receiver<bool>,
    send: F,
) -> Vec<Outcome>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<String>>,
{
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return out,
        }
        let error = send().await;
        out.push(Outcome {
            at: Instant::now(),
            error,
        });
    }
}

/// Runs the soak; `Ok(true)` when it passed.
pub(crate) async fn run(args: SoakArgs) -> Result<bool> {
    let started = Instant::now();
    let testbed = Testbed::start(&[
        ClusterSpec::new("east", "sh", ["2000400001"]),
        ClusterSpec::new("west", "sh", ["200002"]),
        ClusterSpec::new("far", "bj", ["bj-1"]),
    ])
    .await
    .context("starting the clusters (is KUBEBUILDER_ASSETS set? see scripts/prereqs.sh)")?;
    let mut mesh = Mesh::start(&testbed, MeshOptions::default())
        .await
        .context("starting Meridian on the testbed")?;
    let mut pods: BTreeMap<String, Vec<PodHandle>> = BTreeMap::new();
    let mut serial = 0;
    for c in testbed.clusters() {
        c.create_namespace(NAMESPACE).await?;
        for (name, port) in [
            ("web", ServicePortSpec::http("http", 80).target(8080)),
            ("db", ServicePortSpec::tcp("tcp", 80).target(8080)),
        ] {
            c.create_service(
                &ServiceSpec::new(name)
                    .namespace(NAMESPACE)
                    .selector("app", "soak")
                    .port(port),
            )
            .await?;
        }
        if c.name() == "east" {
            continue;
        }
        for _ in 0..PODS {
            serial += 1;
            let spec = PodSpec::new(format!("soak-{}-{serial}", c.name()))
                .namespace(NAMESPACE)
                .app("soak")
                .port("http", 8080);
            pods.entry(c.name().to_owned())
                .or_default()
                .push(c.add_pod(spec).await?);
        }
    }
    let east = testbed.cluster("east")?;
    for svc in ["web", "db"] {
        let host = format!("{svc}.{NAMESPACE}.global");
        mesh.wait_for_endpoints("east", &host, 2 * PODS, 2 * PODS)
            .await?;
    }
    let web = mesh
        .service_addr(east, &format!("web.{NAMESPACE}.global"), 80)
        .await?;
    let db = mesh
        .service_addr(east, &format!("db.{NAMESPACE}.global"), 80)
        .await?;
    println!(
        "soak: world up in {:.1} s; {} min of HTTP ({web}) and TCP ({db}) traffic from east, a fault every {} s",
        started.elapsed().as_secs_f64(),
        args.minutes,
        args.fault_seconds
    );

    // Warm-up, so pools and caches are at their working size before the first figures.
    for _ in 0..50 {
        let _ = http_get(web, "/", &[]).await;
        let _ = tcp_hello(db).await;
    }
    let before = measure(&mesh)?;

    let (stop_tx, stop) = watch::channel(false);
    let http = tokio::spawn(stream(Duration::from_millis(20), stop.clone(), move || {
        http_one(web)
    }));
    let tcp = tokio::spawn(stream(Duration::from_millis(50), stop, move || tcp_one(db)));

    let mut rng = Rng(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1);
    let mut faults: Vec<(Instant, Fault)> = Vec::new();
    let end = Instant::now() + Duration::from_secs(args.minutes * 60);
    while Instant::now() + Duration::from_secs(args.fault_seconds) < end {
        tokio::time::sleep(Duration::from_secs(args.fault_seconds)).await;
        let fault = Fault::ALL[rng.next(Fault::ALL.len())];
        faults.push((Instant::now(), fault));
        let west = testbed.cluster("west")?;
        match fault {
            Fault::GatewayKilled => {
                mesh.member_mut("west")?.kill_gateway();
                tokio::time::sleep(Duration::from_secs(3)).await;
                mesh.member_mut("west")?.start_gateway().await?;
            }
            Fault::ControllerKilled => mesh.member_mut("west")?.restart_controller().await?,
            Fault::PodUnready => {
                let list = &pods["west"];
                let pod = &list[rng.next(list.len())];
                west.set_pod_ready(pod, false).await?;
                tokio::time::sleep(Duration::from_secs(3)).await;
                west.set_pod_ready(pod, true).await?;
            }
            Fault::PodReplaced => {
                let list = pods.get_mut("west").context("west's pods")?;
                let old = list.remove(rng.next(list.len()));
                west.remove_pod(&old).await?;
                serial += 1;
                let spec = PodSpec::new(format!("soak-west-{serial}"))
                    .namespace(NAMESPACE)
                    .app("soak")
                    .port("http", 8080);
                list.push(west.add_pod(spec).await?);
            }
        }
        mesh.member_mut("east")?.check_alive()?;
    }
    tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
    let _ = stop_tx.send(true);
    let outcomes: Vec<(&str, Outcome)> = http
        .await?
        .into_iter()
        .map(|o| ("http", o))
        .chain(tcp.await?.into_iter().map(|o| ("tcp", o)))
        .collect();
    let after = measure(&mesh)?;

    Ok(report(&outcomes, &faults, &before, &after))
}

async fn http_one(addr: SocketAddr) -> Option<String> {
    match http_get(addr, "/", &[]).await {
        Ok(r) if r.status == 200 => None,
        Ok(r) => Some(format!("HTTP {}", r.status)),
        Err(e) => Some(short(&e.to_string())),
    }
}

async fn tcp_one(addr: SocketAddr) -> Option<String> {
    match tcp_hello(addr).await {
        Ok(_) => None,
        // An empty line: the connection closed before the pod's greeting arrived.
        Err(meridian_testbed::Error::InvalidSpec(m)) if m.ends_with(": \"\"") => {
            Some("greeting missing (connection closed)".to_owned())
        }
        Err(e) => Some(short(&e.to_string())),
    }
}

/// The first words of an error, so equal causes group together.
fn short(e: &str) -> String {
    e.split(':').take(2).collect::<Vec<_>>().join(":")
}

/// Prints the figures; whether the run passed.
fn report(
    outcomes: &[(&str, Outcome)],
    faults: &[(Instant, Fault)],
    before: &BTreeMap<&'static str, (i64, i64)>,
    after: &BTreeMap<&'static str, (i64, i64)>,
) -> bool {
    let mut pass = true;
    let mut per_fault: BTreeMap<Fault, usize> = BTreeMap::new();
    for (_, f) in faults {
        *per_fault.entry(*f).or_default() += 1;
    }
    println!("faults injected: {} {per_fault:?}", faults.len());
    let mut failed: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let (mut outside, mut recovery) = (0, Duration::ZERO);
    for proto in ["http", "tcp"] {
        let sent = outcomes.iter().filter(|(p, _)| *p == proto).count();
        let bad = outcomes
            .iter()
            .filter(|(p, o)| *p == proto && o.error.is_some())
            .count();
        println!("{proto}: {sent} sent, {bad} failed");
    }
    for (proto, o) in outcomes {
        let Some(error) = &o.error else { continue };
        // The fault in force: the latest injected before the failure.
        let fault = faults.iter().rev().find(|(at, _)| *at <= o.at);
        let (window, name) = match fault {
            Some((at, f)) => {
                let since = o.at - *at;
                recovery = recovery.max(since);
                (since <= WINDOW, format!("{f:?}"))
            }
            None => (false, "none".to_owned()),
        };
        if !window {
            outside += 1;
        }
        *failed
            .entry((proto.to_string(), name, error.clone()))
            .or_default() += 1;
    }
    for ((proto, fault, error), n) in &failed {
        println!("  failed {proto} during {fault}: {n} × {error}");
    }
    println!("max recovery (fault injected → its last failure): {recovery:?}");
    if outside > 0 {
        println!("FAIL: {outside} failed requests outside a fault's {WINDOW:?} window");
        pass = false;
    }
    for (name, (rss0, fd0)) in before {
        let Some((rss1, fd1)) = after.get(name) else {
            continue;
        };
        let growth = (rss1 - rss0) as f64 * 100.0 / *rss0 as f64;
        println!("east {name}: RSS {rss0} → {rss1} KiB ({growth:+.1}%), FDs {fd0} → {fd1}");
        if growth >= 10.0 {
            println!("FAIL: {name} RSS grew {growth:.1}% (limit 10%)");
            pass = false;
        }
        if fd1 - fd0 > FD_SLACK {
            println!("FAIL: {name} FDs grew by {} (slack {FD_SLACK})", fd1 - fd0);
            pass = false;
        }
    }
    println!("{}", if pass { "PASS" } else { "FAIL" });
    pass
}
