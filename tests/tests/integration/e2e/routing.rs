//! Per-request behaviour of HTTP ports: header-match routing to versioned subsets, and
//! passive outlier detection.

use meridian_testbed::traffic::{http_get, http_tally};
use meridian_testbed::{PodSpec, ServicePortSpec, ServiceSpec};

use super::support::{NS, World, binomial_ok, policy};

/// Seed 004: `reviews` v1 in east, v2 and v3 in west. Requests with `end-user: jason` go to
/// v2/v3 about 50/50, every other request to v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_routes_to_versions() {
    let world = World::start().await;
    let placement = [
        ("east", "v1"),
        ("east", "v1"),
        ("west", "v2"),
        ("west", "v2"),
        ("west", "v3"),
        ("west", "v3"),
    ];
    for c in ["east", "west"] {
        world
            .cluster(c)
            .create_service(
                &ServiceSpec::new("reviews")
                    .namespace(NS)
                    .port(ServicePortSpec::http("http", 80).target(9080)),
            )
            .await
            .unwrap();
    }
    for (i, (c, v)) in placement.iter().enumerate() {
        let spec = PodSpec::new(format!("reviews-{v}-{i}"))
            .namespace(NS)
            .app("reviews")
            .version(*v)
            .port("http", 9080);
        world.cluster(c).add_pod(spec).await.unwrap();
    }
    world.apply_everywhere(&policy(
        "reviews",
        r#"
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
    - {name: v3, labels: {version: v3}}
  http:
    - match:
        - headers: {end-user: {exact: jason}}
      route:
        - {subset: v2, weight: 50}
        - {subset: v3, weight: 50}
    - route:
        - {subset: v1}
"#,
    ));
    world.converge("east", "reviews", 6, 6).await;
    world
        .converge_policy("east", "reviews", |p| {
            p["http"].as_array().is_some_and(|h| h.len() == 2)
        })
        .await;
    let addr = world.addr("east", "reviews").await;

    let n = 400;
    let jason = http_tally(addr, n, &[("end-user", "jason")]).await;
    assert_eq!((jason.failed, jason.version("v1")), (0, 0), "{jason:?}");
    assert!(
        binomial_ok(jason.version("v2"), n, 0.5),
        "jason: v2/v3 about 50/50: {jason:?}"
    );
    let others = http_tally(addr, 100, &[("end-user", "alice")]).await;
    assert_eq!(
        (others.version("v1"), others.failed),
        (100, 0),
        "{others:?}"
    );
    let anonymous = http_tally(addr, 100, &[]).await;
    assert_eq!(anonymous.version("v1"), 100, "{anonymous:?}");
}

/// One pod answering 503 is ejected after 3 consecutive errors; the client never sees them
/// (idempotent requests are retried on the next choice) and every later request is 200.
/// With 3 of 4 east pods left, 140 × 3/4 ≥ 100: east still takes all traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_pod() {
    let world = World::start().await;
    let pods = world.deploy("user", [4, 3, 0]).await;
    world.apply_everywhere(&policy(
        "user",
        r#"
  outlierDetection:
    consecutive5xxErrors: 3
    interval: 1s
    baseEjectionTime: 60s
    maxEjectionPercent: 50
"#,
    ));
    world.converge("east", "user", 7, 7).await;
    world
        .converge_policy("east", "user", |p| {
            p["outlierDetection"]["consecutive5xxErrors"] == 3
        })
        .await;
    let addr = world.addr("east", "user").await;
    let bad = &pods[0][0];
    world
        .cluster("east")
        .set_pod_failing(bad, true)
        .await
        .unwrap();

    let t = http_tally(addr, 100, &[]).await;
    assert_eq!(
        (t.failed, t.from("east")),
        (0, 100),
        "503s are retried locally, never seen: {t:?}"
    );
    assert_eq!(t.pods.get(bad.name()), None, "{t:?}");

    let dump = world.config_dump("east").await;
    let ejections = dump["ejections"].as_array().unwrap();
    assert_eq!(ejections.len(), 1, "{ejections:?}");
    assert_eq!(ejections[0]["address"], bad.pod_ip().to_string());
    let metrics = http_get(
        world.mesh.member("east").unwrap().gateway_admin(),
        "/metrics",
        &[],
    )
    .await
    .unwrap();
    let text = String::from_utf8(metrics.body).unwrap();
    let served_503: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("meridian_gateway_responses_total{") && l.contains("code=\"503\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        served_503, 3.0,
        "ejected after exactly 3 consecutive 503s:\n{text}"
    );
}
