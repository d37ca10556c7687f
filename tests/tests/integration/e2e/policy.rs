//! Distribution rules and ordered failover across regions, declared with
//! GlobalTrafficPolicy and measured on real requests.

use meridian_testbed::traffic::http_tally;

use super::support::{World, binomial_ok, eventually, kubectl, policy};

/// `distribute` east → 50/50 east/west with every pod healthy; then, with
/// `failover: [{from: sh, to: bj}]` and both sh zones down, everything goes to far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distribute_then_ordered_failover() {
    let world = World::start().await;
    let pods = world.deploy("user", [14, 14, 14]).await;
    world.converge("east", "user", 42, 42).await;
    let addr = world.addr("east", "user").await;

    world.apply_everywhere(&policy(
        "user",
        r#"
  localityLbSetting:
    distribute:
      - from: sh/2000400001/*
        to:
          "sh/2000400001/*": 50
          "sh/200002/*": 50
"#,
    ));
    world
        .converge_policy("east", "user", |p| {
            !p["localityLbSetting"]["distribute"].is_null()
        })
        .await;
    let n = 400;
    let t = http_tally(addr, n, &[]).await;
    assert_eq!((t.failed, t.from("far")), (0, 0), "{t:?}");
    assert!(
        binomial_ok(t.from("east"), n, 0.5),
        "distribute 50/50: {t:?}"
    );

    world.apply_everywhere(&policy(
        "user",
        r#"
  localityLbSetting:
    failover:
      - {from: sh, to: bj}
"#,
    ));
    world
        .converge_policy("east", "user", |p| {
            !p["localityLbSetting"]["failover"].is_null()
        })
        .await;
    world.set_unready("east", &pods[0], 14).await;
    world.set_unready("west", &pods[1], 14).await;
    world.converge("east", "user", 42, 14).await;
    let t = http_tally(addr, 200, &[]).await;
    assert_eq!(
        (t.from("far"), t.failed),
        (200, 0),
        "both sh zones down: all to far: {t:?}"
    );
}

/// A policy the controller cannot accept (weights summing to 90) is reported and the last
/// accepted one stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_policy_keeps_the_last_accepted() {
    let world = World::start().await;
    world.deploy("user", [2, 2, 0]).await;
    world.converge("east", "user", 4, 4).await;
    let good = policy(
        "user",
        r#"
  localityLbSetting:
    distribute:
      - from: sh/2000400001/*
        to: {"sh/2000400001/*": 50, "sh/200002/*": 50}
"#,
    );
    world.apply_everywhere(&good);
    world
        .converge_policy("east", "user", |p| {
            !p["localityLbSetting"]["distribute"].is_null()
        })
        .await;
    world.apply_everywhere(&good.replace("\"sh/200002/*\": 50", "\"sh/200002/*\": 40"));

    let east = world.cluster("east");
    let table = eventually("Accepted=False on the rejected policy", || {
        let text = kubectl(east, &["get", "globaltrafficpolicies", "-n", "demo"]);
        text.contains("False").then_some(text)
    })
    .await;
    assert!(table.contains("user"), "{table}");
    let message = kubectl(
        east,
        &[
            "get",
            "gtp",
            "user",
            "-n",
            "demo",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Accepted\")].message}",
        ],
    );
    assert!(
        message.contains("weights sum to 90, not 100"),
        "the reason names the problem: {message}"
    );
    let dump = world.config_dump("east").await;
    let svc = meridian_testbed::mesh::find_service(&dump, "user.demo.global").unwrap();
    assert_eq!(
        svc["policy"]["localityLbSetting"]["distribute"][0]["to"]["sh/200002/*"], 50,
        "last accepted in force"
    );
}
