//! Issue 18 §1: draining a cluster for maintenance under steady traffic.

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meridian_testbed::mesh::{find_service, meridian_binary, meridianctl};
use meridian_testbed::traffic::{http_get, http_tally};
use tokio::time::Instant;

use super::support::{World, binomial_ok, eventually};

/// `KUBECONFIG` listing every cluster's kubeconfig: a command reaches the controllers of
/// east, west and far (one context each, named after the cluster).
fn every_kubeconfig(world: &World) -> String {
    let paths: Vec<&str> = world
        .testbed
        .clusters()
        .iter()
        .map(|c| c.kubeconfig_path().to_str().unwrap())
        .collect();
    paths.join(":")
}

/// Runs `meridianctl args…` with `kubeconfig` as `KUBECONFIG`.
fn meridianctl_with(kubeconfig: &str, args: &[&str]) -> Output {
    Command::new(meridian_binary("meridianctl").unwrap())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "meridianctl failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Per-second buckets of answers: (from the drained cluster, from any cluster, failed).
#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    drained: usize,
    answered: usize,
    failed: usize,
}

/// Sends sequential requests to `addr` until `stop`, bucketed by second since `start`.
async fn steady_traffic(
    addr: std::net::SocketAddr,
    drained: &'static str,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> Vec<Bucket> {
    let mut buckets: Vec<Bucket> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let reply = http_get(addr, "/", &[])
            .await
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| r.echo());
        let second = start.elapsed().as_secs() as usize;
        if buckets.len() <= second {
            buckets.resize(second + 1, Bucket::default());
        }
        let b = &mut buckets[second];
        match reply {
            Some(r) => {
                b.answered += 1;
                b.drained += usize::from(r.cluster == drained);
            }
            None => b.failed += 1,
        }
    }
    buckets
}

/// Whether the share `b` is not above `a`, up to sampling noise (4.5 standard deviations
/// of the difference of two binomial shares).
fn not_above(a: Bucket, b: Bucket) -> bool {
    let (pa, pb) = (
        a.drained as f64 / a.answered as f64,
        b.drained as f64 / b.answered as f64,
    );
    let pooled = (a.drained + b.drained) as f64 / (a.answered + b.answered) as f64;
    let sd = (pooled * (1.0 - pooled) * (1.0 / a.answered as f64 + 1.0 / b.answered as f64)).sqrt();
    pb <= pa + 4.5 * sd
}

/// Steady traffic from far to a service in east and west (4 pods each, one priority seen
/// from far): `cluster drain east --over 10s --wait` moves east's share down step by step
/// to 0 with no failed request, callers in east stay local, status says `Drained`;
/// `undrain` brings east back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_traffic_away_gradually_and_undrain_brings_it_back() {
    let mut world = World::start().await;
    world.deploy("user", [4, 4, 0]).await;
    world.converge("far", "user", 8, 8).await;
    world.converge("east", "user", 8, 8).await;
    let addr = world.addr("far", "user").await;

    let t = http_tally(addr, 200, &[]).await;
    assert_eq!(t.failed, 0, "{t:?}");
    assert!(binomial_ok(t.from("east"), 200, 0.5), "before: {t:?}");

    // A name no controller knows is refused, naming it.
    let everywhere = every_kubeconfig(&world);
    let out = meridianctl_with(&everywhere, &["cluster", "drain", "nope", "--over", "10s"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "unknown cluster \"nope\": no MemberCluster \"nope\" in context(s) east, west, far"
        ),
        "{err}"
    );

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(steady_traffic(addr, "east", start, stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let drain_at = start.elapsed().as_secs() as usize + 1;
    let kubeconfig = everywhere.clone();
    let drained = tokio::task::spawn_blocking(move || {
        meridianctl_with(
            &kubeconfig,
            &["cluster", "drain", "east", "--over", "10s", "--wait"],
        )
    })
    .await
    .unwrap();
    let done_at = start.elapsed().as_secs() as usize + 1;
    let out = ok(&drained);
    for context in ["east", "west", "far"] {
        assert!(
            out.contains(&format!(
                "context \"{context}\": MemberCluster \"east\" patched"
            )),
            "{out}"
        );
    }
    assert!(out.contains("cluster \"east\" drained"), "{out}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let buckets = traffic.await.unwrap();

    // Printed for the record (`--nocapture`): the measured ramp.
    println!("drain from second {drain_at} to {done_at}: {buckets:?}");
    let failed: usize = buckets.iter().map(|b| b.failed).sum();
    assert_eq!(failed, 0, "no request fails while draining: {buckets:?}");
    let ramp: Vec<Bucket> = buckets[drain_at..done_at.min(buckets.len())]
        .iter()
        .copied()
        .filter(|b| b.answered > 0)
        .collect();
    assert!(ramp.len() >= 8, "traffic during the 10 s ramp: {buckets:?}");
    for pair in ramp.windows(2) {
        assert!(
            not_above(pair[0], pair[1]),
            "east's share rose from one second to the next: {pair:?} in {buckets:?}"
        );
    }
    let first = ramp[0];
    let last = ramp[ramp.len() - 1];
    assert!(
        first.drained * last.answered > last.drained * first.answered,
        "the share falls over the ramp: {buckets:?}"
    );
    for b in buckets.get(done_at..).unwrap_or_default() {
        assert_eq!(
            b.drained, 0,
            "drained: no request reaches east: {buckets:?}"
        );
    }

    // Callers inside the drained cluster keep being served locally.
    let local = world.addr("east", "user").await;
    let t = http_tally(local, 50, &[]).await;
    assert_eq!((t.from("east"), t.failed), (50, 0), "{t:?}");

    // The state is visible to operators on every controller.
    let kc = world
        .cluster("far")
        .kubeconfig_path()
        .to_str()
        .unwrap()
        .to_owned();
    let status = meridianctl(&["status", "--kubeconfig", &kc]).unwrap();
    let row = status
        .lines()
        .find(|l| l.starts_with("east "))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(row.contains("Drained"), "{status}");

    // A restarted controller reads the drain back from the spec (its own writes never
    // dropped it): far's gateway stays away from east.
    world
        .mesh
        .member_mut("far")
        .unwrap()
        .restart_controller()
        .await
        .unwrap();
    let drained_in_far = |d: &serde_json::Value| {
        d["controllerConnected"] == true
            && d["snapshot"]["drains"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x["cluster"] == "east" && x["permille"] == 1000)
            })
    };
    world
        .mesh
        .wait_for("far", "east drained after the restart", drained_in_far)
        .await
        .unwrap();
    let spec = super::support::kubectl(
        world.cluster("far"),
        &[
            "get",
            "membercluster",
            "east",
            "-o",
            "jsonpath={.spec.drain.overSeconds}",
        ],
    );
    assert_eq!(spec.trim(), "10", "spec.drain kept");
    let t = http_tally(addr, 100, &[]).await;
    assert_eq!(
        (t.from("east"), t.failed),
        (0, 0),
        "after the restart: {t:?}"
    );

    let out = ok(&meridianctl_with(
        &everywhere,
        &["cluster", "undrain", "east"],
    ));
    assert!(
        out.contains("context \"far\": MemberCluster \"east\" patched"),
        "{out}"
    );
    world
        .mesh
        .wait_for("far", "no drains in the snapshot", |d| {
            d["snapshot"]["drains"]
                .as_array()
                .is_some_and(|a| a.is_empty())
                && find_service(d, "user.demo.global").is_some()
        })
        .await
        .unwrap();
    let t = http_tally(addr, 200, &[]).await;
    assert_eq!(t.failed, 0, "{t:?}");
    assert!(binomial_ok(t.from("east"), 200, 0.5), "undrained: {t:?}");
    let status = eventually("the drain gone from status", || {
        let out = meridianctl(&["status", "--kubeconfig", &kc]).ok()?;
        let row = out.lines().find(|l| l.starts_with("east "))?.to_owned();
        (!row.contains("Drain")).then_some(row)
    })
    .await;
    assert!(status.contains("Synced"), "{status}");
}
