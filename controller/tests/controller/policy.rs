use kube::api::{Api, Patch, PatchParams, PostParams};
use meridian_controller::crd::{GlobalService, GlobalTrafficPolicy};
use meridian_testbed::{ServicePortSpec, ServiceSpec};

use crate::support::*;

fn accepted(gtp: &GlobalTrafficPolicy) -> Option<(String, String, String)> {
    let c = gtp
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Accepted")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policies_are_reported_and_the_last_accepted_stays_in_force() {
    let testbed = testbed().await;
    let east1 = testbed.cluster("east1").unwrap();
    east1
        .create_service(
            &ServiceSpec::new("echo").port(ServicePortSpec::http("http", 80).target(8080)),
        )
        .await
        .unwrap();
    let ip = testbed.allocate_address().unwrap();
    let ctl = Controller::start(&testbed, east1, ip, &[]).await;

    let gtps: Api<GlobalTrafficPolicy> = Api::namespaced(east1.client(), "default");
    let good: GlobalTrafficPolicy = serde_yaml_ng::from_str(
        r#"
apiVersion: meridian.io/v1alpha1
kind: GlobalTrafficPolicy
metadata: {name: echo}
spec:
  service: echo
  localityLbSetting:
    distribute:
      - from: "us-east1/*"
        to: {"us-east1/*": 80, "us-west1/*": 20}
  panicThreshold: 40
"#,
    )
    .unwrap();
    gtps.create(&PostParams::default(), &good).await.unwrap();
    let st = eventually("policy accepted", || {
        let gtps = gtps.clone();
        async move { accepted(&gtps.get("echo").await.ok()?).filter(|a| a.0 == "True") }
    })
    .await;
    assert_eq!(st.1, "Accepted");
    let mut sub = ctl.subscribe().await;
    let snap = sub
        .wait_for("policy in the snapshot", |s| {
            service(s, "echo.default.global")
                .is_some_and(|g| g.policy_json.contains("\"panicThreshold\":40"))
        })
        .await;
    let policy_json = service(&snap, "echo.default.global")
        .unwrap()
        .policy_json
        .clone();

    // Weights summing to 90: the schema accepts it, the controller does not.
    let patch = serde_json::json!({"spec": {"localityLbSetting": {"distribute": [
        {"from": "us-east1/*", "to": {"us-east1/*": 70, "us-west1/*": 20}}]}}});
    gtps.patch("echo", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let st = eventually("policy rejected", || {
        let gtps = gtps.clone();
        async move { accepted(&gtps.get("echo").await.ok()?).filter(|a| a.0 == "False") }
    })
    .await;
    assert_eq!(st.1, "Invalid");
    assert!(st.2.contains("weights sum to 90"), "{}", st.2);
    let gtp = gtps.get("echo").await.unwrap();
    assert_eq!(gtp.status.as_ref().unwrap().accepted_generation, Some(1));
    assert_eq!(gtp.status.as_ref().unwrap().observed_generation, Some(2));
    // The snapshot keeps the accepted generation.
    let gs: Api<GlobalService> = Api::all(east1.client());
    let st = eventually("GlobalService shows the policy", || {
        let gs = gs.clone();
        async move {
            let st = gs.get("echo.default").await.ok()?.status?;
            (st.policy.as_deref() == Some("echo")).then_some(st)
        }
    })
    .await;
    assert_eq!(st.policy_generation, Some(1));
    // Whatever the rejection caused to be published, the accepted policy stays.
    for snap in sub.drain(std::time::Duration::from_secs(2)).await {
        assert_eq!(
            service(&snap, "echo.default.global").unwrap().policy_json,
            policy_json
        );
    }
    ctl.kill().await;
}
