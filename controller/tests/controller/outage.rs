use kube::api::Api;
use meridian_controller::crd::{GlobalService, MemberCluster, Phase};
use meridian_testbed::{PodSpec, ServicePortSpec, ServiceSpec};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_member_goes_stale_then_is_withdrawn_then_comes_back() {
    let testbed = testbed().await;
    let east1 = testbed.cluster("east1").unwrap();
    let west = testbed.cluster("west").unwrap();
    let echo = ServiceSpec::new("echo").port(ServicePortSpec::tcp("tcp", 7).target(8080));
    east1.create_service(&echo).await.unwrap();
    west.create_service(&echo).await.unwrap();
    east1.add_pod(PodSpec::new("e1").app("echo")).await.unwrap();
    west.add_pod(PodSpec::new("w1").app("echo")).await.unwrap();
    register(east1, "west", None, west.kubeconfig(), None).await;

    let ip = testbed.allocate_address().unwrap();
    // The grace is the window in which the test must see west stale in the snapshot,
    // the MemberCluster and the GlobalService status: wide enough for a loaded machine.
    let ctl = Controller::start(&testbed, east1, ip, &["--stale-endpoint-grace", "20s"]).await;
    let mut sub = ctl.subscribe().await;
    let west_eps = |s: &meridian_api::proto::Snapshot| -> Vec<(bool, bool)> {
        service(s, "echo.default.global")
            .map(|g| {
                g.endpoints
                    .iter()
                    .filter(|e| e.cluster == "west")
                    .map(|e| (e.ready, e.stale))
                    .collect()
            })
            .unwrap_or_default()
    };
    sub.wait_for("west endpoint live", |s| west_eps(s) == [(true, false)])
        .await;

    west.stop_api_server().await;
    // Kept, marked stale, readiness as last seen.
    sub.wait_for("west endpoint stale", |s| west_eps(s) == [(true, true)])
        .await;
    let members: Api<MemberCluster> = Api::all(east1.client());
    eventually("west Unreachable", || {
        let members = members.clone();
        async move {
            let st = members.get("west").await.ok()?.status?;
            (st.phase == Phase::Unreachable).then_some(())
        }
    })
    .await;
    let gs: Api<GlobalService> = Api::all(east1.client());
    eventually("status shows west stale", || {
        let gs = gs.clone();
        async move {
            let st = gs.get("echo.default").await.ok()?.status?;
            st.clusters
                .iter()
                .any(|c| c.cluster == "west" && c.stale)
                .then_some(())
        }
    })
    .await;
    // Then withdrawn after the grace; east1's endpoint is untouched.
    let snap = sub
        .wait_for("west endpoint withdrawn", |s| west_eps(s).is_empty())
        .await;
    let g = service(&snap, "echo.default.global").expect("echo still served by east1");
    assert_eq!(g.endpoints.len(), 1);
    assert_eq!(g.endpoints[0].cluster, "east1");

    west.start_api_server().await.unwrap();
    sub.wait_for("west endpoint back", |s| west_eps(s) == [(true, false)])
        .await;
    eventually("west Synced again", || {
        let members = members.clone();
        async move {
            let st = members.get("west").await.ok()?.status?;
            (st.phase == Phase::Synced).then_some(())
        }
    })
    .await;
    ctl.kill().await;
}
