//! Where traffic goes: `meridianctl top` and the Grafana dashboard's queries, against live
//! traffic from east split about half to west (5 of east's 14 pods ready).

use std::path::PathBuf;
use std::time::Duration;

use meridian_testbed::mesh::meridianctl;
use meridian_testbed::prometheus::Prometheus;
use meridian_testbed::traffic::{http_tally, tcp_tally};
use meridian_testbed::{ServicePortSpec, ServiceSpec};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::support::{NS, World};

/// `user` (HTTP) and `db` (TCP, the same pods) exported by east and west, 14 pods each,
/// east's down to 5 ready: the engine sends east's callers half to east, half to west.
async fn half_to_west() -> World {
    let world = World::start().await;
    let pods = world.deploy("user", [14, 14, 0]).await;
    for cluster in ["east", "west"] {
        world
            .cluster(cluster)
            .create_service(
                &ServiceSpec::new("db")
                    .namespace(NS)
                    .selector("app", "user")
                    .port(ServicePortSpec::tcp("tcp", 80).target(8080)),
            )
            .await
            .unwrap();
    }
    world.set_unready("east", &pods[0], 9).await;
    world.converge("east", "user", 28, 19).await;
    world.converge("east", "db", 28, 19).await;
    world
}

/// Steady HTTP and TCP traffic from east until the handle is aborted.
async fn load(world: &World) -> JoinHandle<()> {
    let user = world.addr("east", "user").await;
    let db = world.addr("east", "db").await;
    tokio::spawn(async move {
        loop {
            http_tally(user, 10, &[]).await;
            tcp_tally(db, 2).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_rates_per_destination_beside_the_computed_split() {
    let world = half_to_west().await;
    let traffic = load(&world).await;
    let gateway = format!(
        "http://{}",
        world.mesh.member("east").unwrap().gateway_config_dump()
    );
    let args = [
        "top",
        "user.demo.global",
        "--gateway",
        &gateway,
        "--once",
        "--interval",
        "2",
        "-o",
        "json",
    ]
    .map(str::to_owned);
    let out = tokio::task::spawn_blocking(move || {
        meridianctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
    .unwrap();
    let view: Value = serde_json::from_str(&out).unwrap();
    let rows = view["rows"].as_array().unwrap();
    for (cluster, locality) in [("east", "sh/2000400001"), ("west", "sh/200002")] {
        let row = rows
            .iter()
            .find(|r| r["cluster"] == cluster && r["locality"] == locality)
            .unwrap_or_else(|| panic!("no row to {cluster}: {out}"));
        assert_eq!(row["source"], "east", "{row}");
        assert_eq!(row["service"], "user.demo.global", "{row}");
        assert!(row["requestsPerSecond"].as_f64().unwrap() > 0.0, "{row}");
        assert_eq!(row["errorsPerSecond"], 0.0, "{row}");
        assert!(row["p99Seconds"].as_f64().unwrap() > 0.0, "{row}");
        // The engine's split at east's gateway: 5/14 healthy × 1.4 = 50 % stays local.
        let split = row["splitPercent"].as_f64().unwrap();
        assert!((split - 50.0).abs() < 0.01, "{row}");
    }
    // The service filter: db's rows are not shown.
    assert!(
        rows.iter().all(|r| r["service"] == "user.demo.global"),
        "{out}"
    );

    // --cluster names a cluster none of the gateways serves: a clear error.
    let err = tokio::task::spawn_blocking(move || {
        meridianctl(&[
            "top",
            "--gateway",
            &gateway,
            "--cluster",
            "nowhere",
            "--once",
        ])
    })
    .await
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--cluster nowhere: no --gateway of that cluster (have: east)"),
        "{err}"
    );
    traffic.abort();
}

/// The dashboard's Grafana variables replaced as Grafana does with "All" selected, and its
/// rate window sized for the testbed's 1 s scrapes.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$service", ".*")
        .replace("$source", ".*")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_return_series_from_a_real_prometheus() {
    let world = half_to_west().await;
    let gateways: Vec<_> = world
        .mesh
        .members()
        .iter()
        .map(|m| m.gateway_admin())
        .collect();
    let prometheus = Prometheus::start(&gateways, &world.testbed.dir().join("prometheus"))
        .await
        .unwrap();
    let traffic = load(&world).await;

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/observability/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            queries.push((
                panel["title"].as_str().unwrap().to_owned(),
                substitute(expr),
            ));
        }
    }
    assert_eq!(queries.len(), 8, "every panel has its query");
    // The variables' label_values(metric, label), as the series Prometheus answers it from.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        let Some(q) = var["query"]["query"].as_str() else {
            continue;
        };
        let (metric, label) = q
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.split_once(", "))
            .unwrap_or_else(|| panic!("variable query {q}"));
        queries.push((
            format!("variable {}", var["name"]),
            format!("count by ({label}) ({metric})"),
        ));
    }

    // Rates need two scrapes of a series in the window; bytes need finished connections.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (title, query) in &queries {
        loop {
            let series = prometheus.query(query).await.unwrap();
            if !series.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{title}: no series for {query}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // The destinations are the clusters, by name, with traffic to both.
    let per_cluster = prometheus.query(&queries[0].1).await.unwrap();
    for cluster in ["east", "west"] {
        assert!(
            per_cluster.iter().any(|s| s["metric"]["cluster"] == cluster
                && s["metric"]["source_cluster"] == "east"
                && s["value"][1].as_str().unwrap().parse::<f64>().unwrap() > 0.0),
            "{per_cluster:?}"
        );
    }
    traffic.abort();
}
