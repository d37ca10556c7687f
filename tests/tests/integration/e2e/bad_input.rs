//! Bad registration input, nothing else disturbed: registration Secrets that cannot make
//! a member each get a clear MemberCluster phase and message and a metric, while every
//! other member stays Synced and the snapshot entries of every service and peer stay
//! byte-identical. Secret-level refusals (missing key, garbage, a name that is not a DNS
//! label, a duplicate name) are also unit-tested in the controller's registry; this runs
//! them, and the connection-level ones (a kubeconfig for an unknown CA, a revoked token),
//! against the real controller.

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use meridian_crd::registration::Registration;
use meridian_testbed::traffic::http_get;
use meridian_testbed::{Cluster, SYSTEM_NAMESPACE};
use serde_json::Value;

use super::support::{NS, World, eventually, kubectl, kubectl_apply, traffic_policy};

/// Creates a registration Secret in `own`: `kubeconfig` under the `kubeconfig` key (none
/// when `None`), `cluster` as the claimed cluster name (the Secret's name when `None`).
async fn register(own: &Cluster, secret: &str, cluster: Option<&str>, kubeconfig: Option<&str>) {
    let mut registration = Registration::new(secret, kubeconfig.unwrap_or_default());
    if let Some(c) = cluster {
        registration = registration.cluster_name(c);
    }
    let mut s = registration.secret();
    if kubeconfig.is_none() {
        s.data = None;
    }
    Api::<Secret>::namespaced(own.client(), SYSTEM_NAMESPACE)
        .create(&PostParams::default(), &s)
        .await
        .expect("create registration Secret");
}

/// `kubeconfig` with its user replaced by `token`.
fn with_token(kubeconfig: &str, token: &str) -> String {
    let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(kubeconfig).unwrap();
    let user = v["users"][0]["user"].as_mapping_mut().expect("a user");
    user.clear();
    user.insert("token".into(), token.into());
    serde_yaml_ng::to_string(&v).unwrap()
}

/// `kubeconfig` trusting a CA that did not sign its server's certificate.
fn with_unknown_ca(kubeconfig: &str) -> String {
    let other = rcgen::generate_simple_self_signed(vec!["elsewhere".to_owned()]).unwrap();
    let pem = base64::engine::general_purpose::STANDARD.encode(other.cert.pem());
    let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(kubeconfig).unwrap();
    v["clusters"][0]["cluster"]["certificate-authority-data"] = pem.into();
    serde_yaml_ng::to_string(&v).unwrap()
}

/// The MemberClusters of `own` as JSON, by name.
fn members(own: &Cluster) -> serde_json::Map<String, Value> {
    let out = kubectl(own, &["get", "memberclusters", "-o", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["metadata"]["name"].as_str().unwrap().to_owned(),
                m.clone(),
            )
        })
        .collect()
}

/// The snapshot entries east's gateway runs by: every service and peer, as bytes.
async fn entries(world: &World) -> String {
    let dump = world.config_dump("east").await;
    serde_json::to_string(&(&dump["snapshot"]["services"], &dump["snapshot"]["peers"])).unwrap()
}

/// The controller's `/metrics` text of `cluster`.
async fn controller_metrics(world: &World, cluster: &str) -> String {
    let addr = world.mesh.member(cluster).unwrap().controller_metrics();
    let r = http_get(addr, "/metrics", &[]).await.unwrap();
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_get_a_phase_and_a_metric_and_disturb_nothing_else() {
    let world = World::start().await;
    world.deploy("user", [1, 1, 1]).await;
    world.converge("east", "user", 3, 3).await;
    let east = world.cluster("east");
    let west = world.cluster("west");
    // A settled snapshot: the same entries twice, a second apart.
    let before = {
        let mut last = entries(&world).await;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = entries(&world).await;
            if now == last {
                break now;
            }
            last = now;
        }
    };

    // A token that worked, then revoked with its ServiceAccount.
    let token = meridian_testbed::mesh::service_account_token(west, "soon-deleted", None)
        .await
        .unwrap();
    Api::<ServiceAccount>::namespaced(west.client(), SYSTEM_NAMESPACE)
        .delete("soon-deleted", &DeleteParams::default())
        .await
        .unwrap();
    let revoked = with_token(west.kubeconfig(), &token);
    let strange_ca = with_unknown_ca(west.kubeconfig());

    register(east, "nokey", None, None).await;
    register(east, "garbage", None, Some("this: [is not a kubeconfig")).await;
    register(
        east,
        "badname",
        Some("Not_A_Label"),
        Some(west.kubeconfig()),
    )
    .await;
    register(east, "dupwest", Some("west"), Some(west.kubeconfig())).await;
    register(east, "strangeca", None, Some(&strange_ca)).await;
    register(east, "revoked", None, Some(&revoked)).await;

    // (MemberCluster, phase, what its message says)
    let want = [
        ("nokey", "InvalidCredentials", "no \"kubeconfig\" key"),
        (
            "garbage",
            "InvalidCredentials",
            "registration kubeconfig refused",
        ),
        (
            "invalid-name.badname",
            "InvalidCredentials",
            "not a DNS label",
        ),
        ("west.dupwest", "Conflict", "west"),
        ("strangeca", "Unreachable", "certificate"),
        ("revoked", "InvalidCredentials", "401"),
    ];
    for (name, phase, says) in want {
        let message = eventually(&format!("MemberCluster {name} {phase}"), || {
            let m = members(east).remove(name)?;
            (m["status"]["phase"] == phase).then(|| {
                m["status"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
        })
        .await;
        println!("{name}: {phase}: {message}");
        assert!(
            message.contains(says),
            "{name}: {message:?} should say {says:?}"
        );
    }
    let metrics = controller_metrics(&world, "east").await;
    for line in [
        r#"meridian_registrations_rejected{phase="InvalidCredentials"} 3"#,
        r#"meridian_registrations_rejected{phase="Conflict"} 1"#,
        r#"meridian_member_phase{cluster="strangeca",phase="Unreachable"} 1"#,
        r#"meridian_member_phase{cluster="revoked",phase="InvalidCredentials"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    let all = members(east);
    for name in ["east", "west", "far"] {
        assert_eq!(all[name]["status"]["phase"], "Synced", "{name} undisturbed");
    }
    assert_eq!(
        entries(&world).await,
        before,
        "the snapshot entries of every service and peer are byte-identical"
    );
}

/// The `Accepted` condition of GlobalTrafficPolicy `name` on `own`: (status, reason,
/// message).
fn accepted(own: &Cluster, name: &str) -> Option<(String, String, String)> {
    let out = kubectl(own, &["get", "gtp", name, "-n", NS, "-o", "json"]);
    let gtp: Value = serde_json::from_str(&out).ok()?;
    let c = gtp["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Accepted")?
        .clone();
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    Some((text("status"), text("reason"), text("message")))
}

/// Bad policy input, nothing else disturbed: overlapping `distribute` rules, weights that
/// do not sum to 100, an unknown subset, bad locality syntax (one policy each, for
/// Services of their own; validation does not need the Service) and a second policy for a
/// Service that has one. Each gets `Accepted=False` with its reason and a message naming
/// the field, and counts in `meridian_policies_rejected{reason}`; the first policy of that
/// Service stays in force, and the snapshot entries of every service and peer stay
/// byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policies_get_a_condition_and_a_metric_and_disturb_nothing_else() {
    let world = World::start().await;
    world.deploy("user", [1, 1, 1]).await;
    world.converge("east", "user", 3, 3).await;
    let good = traffic_policy(
        "user",
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
    let east = world.cluster("east");
    let before = {
        let mut last = entries(&world).await;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = entries(&world).await;
            if now == last {
                break now;
            }
            last = now;
        }
    };

    let bad = [
        (
            "overlap",
            "ghost-a",
            r#"
  localityLbSetting:
    distribute:
      - {from: "sh/*", to: {"sh/*": 100}}
      - {from: "*/z1", to: {"bj/*": 100}}
"#,
        ),
        (
            "weights",
            "ghost-b",
            r#"
  localityLbSetting:
    distribute:
      - {from: "sh/*", to: {"sh/*": 70, "bj/*": 20}}
"#,
        ),
        (
            "subset",
            "ghost-c",
            r#"
  subsets: [{name: blue, labels: {version: blue}}]
  http:
    - route: [{subset: green}]
"#,
        ),
        (
            "locality",
            "ghost-d",
            r#"
  localityLbSetting:
    distribute:
      - {from: "sh/z1/s1/extra", to: {"sh/*": 100}}
"#,
        ),
        (
            "user-again",
            "user",
            r#"
  panicThreshold: 10
"#,
        ),
    ];
    for (name, service, spec) in bad {
        kubectl_apply(east, &traffic_policy(name, service, spec));
    }
    // (policy, reason, what its message says)
    let want = [
        (
            "overlap",
            "Invalid",
            "localityLbSetting.distribute[1].from: */z1 overlaps distribute[0].from sh/*, which comes first",
        ),
        (
            "weights",
            "Invalid",
            "localityLbSetting.distribute[0].to: weights sum to 90, not 100",
        ),
        (
            "subset",
            "Invalid",
            "http[0].route[0].subset: unknown subset \"green\"",
        ),
        (
            "locality",
            "Invalid",
            "localityLbSetting.distribute[0].from: locality \"sh/z1/s1/extra\" has more than three parts",
        ),
        (
            "user-again",
            "Conflicted",
            "GlobalTrafficPolicy \"user\" already targets Service \"user\"",
        ),
    ];
    for (name, reason, says) in want {
        let (status, got, message) = eventually(&format!("{name}: Accepted=False"), || {
            accepted(east, name).filter(|(s, _, _)| s == "False")
        })
        .await;
        println!("{name}: Accepted={status} {got}: {message}");
        assert_eq!(got, reason, "{name}");
        assert!(
            message.contains(says),
            "{name}: {message:?} should say {says:?}"
        );
    }
    // The aggregator counts on its next pass after the policies changed.
    let counted = [
        r#"meridian_policies_rejected{reason="Invalid"} 4"#,
        r#"meridian_policies_rejected{reason="Conflicted"} 1"#,
    ];
    let mut metrics = String::new();
    for _ in 0..150 {
        metrics = controller_metrics(&world, "east").await;
        if counted
            .iter()
            .all(|line| metrics.lines().any(|l| l == *line))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for line in counted {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    let (status, reason, _) = accepted(east, "user").expect("user's policy has a status");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Accepted"),
        "the first policy of Service user stays in force"
    );
    assert_eq!(
        entries(&world).await,
        before,
        "the snapshot entries of every service and peer are byte-identical"
    );
}
