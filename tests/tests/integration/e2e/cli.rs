//! `meridianctl` against a running mesh: what an operator sees.

use meridian_testbed::mesh::meridianctl;
use serde_json::Value;

use super::support::{World, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_list_and_explain_show_the_live_state() {
    let world = World::start().await;
    let pods = world.deploy("user", [14, 14, 0]).await;
    world.converge("east", "user", 28, 28).await;
    let kc = world
        .cluster("east")
        .kubeconfig_path()
        .to_str()
        .unwrap()
        .to_owned();

    let list = eventually("three Synced members", || {
        let out = meridianctl(&["cluster", "list", "--kubeconfig", &kc]).ok()?;
        (out.matches("Synced").count() == 3).then_some(out)
    })
    .await;
    for name in ["east", "west", "far"] {
        assert!(list.lines().any(|l| l.starts_with(name)), "{list}");
    }

    // The status is written by the leader as the catalog settles, so wait for both
    // clusters' counts rather than asserting the second right after the first appears.
    let status = eventually("both localities 14/14 in status", || {
        let out = meridianctl(&["status", "--kubeconfig", &kc]).ok()?;
        (out.contains("sh/2000400001 14/14") && out.contains("sh/200002 14/14")).then_some(out)
    })
    .await;
    assert!(status.contains("user.demo.global"), "{status}");

    world.set_unready("east", &pods[0], 9).await;
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            "user.demo.global",
            "--kubeconfig",
            &kc,
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        let out = meridianctl(&args).ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        let percents: Vec<f64> = v["localities"]
            .as_array()?
            .iter()
            .map(|l| l["percent"].as_f64().unwrap())
            .collect();
        Some(percents)
    };
    let split = eventually("the 5/14 split in explain", || {
        explain(&["--from", "sh/2000400001"])
            .filter(|p| p.len() == 2 && p.iter().all(|x| (x - 50.0).abs() < 0.01))
    })
    .await;
    assert_eq!(split, [50.0, 50.0]);

    // With --gateway the caller defaults to the gateway's locality and the table names the
    // live ejections (none here).
    let admin = format!(
        "http://{}",
        world.mesh.member("east").unwrap().gateway_config_dump()
    );
    assert_eq!(explain(&["--gateway", &admin]).unwrap(), [50.0, 50.0]);
    let table = meridianctl(&[
        "explain",
        "user.demo.global",
        "--kubeconfig",
        &kc,
        "--gateway",
        &admin,
    ])
    .unwrap();
    assert!(
        table.contains("live ejections: none") && table.contains("same region"),
        "{table}"
    );
}
