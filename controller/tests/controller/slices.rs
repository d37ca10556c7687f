use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use meridian_api::proto::Snapshot;
use meridian_testbed::{PodSpec, SERVICE_NAME_LABEL, ServicePortSpec, ServiceSpec};

use crate::support::*;

/// (address, ready) of a service's endpoints in a snapshot.
fn endpoints(s: &Snapshot, host: &str) -> Vec<(String, bool)> {
    service(s, host)
        .map(|g| {
            g.endpoints
                .iter()
                .map(|e| (e.address.clone(), e.ready))
                .collect()
        })
        .unwrap_or_default()
}

/// A slice written by hand (not by the testbed's EndpointSlice controller).
fn slice(
    name: &str,
    service: Option<&str>,
    address_type: &str,
    eps: &[(&str, bool, bool)],
) -> EndpointSlice {
    let mut labels = BTreeMap::from([(
        "endpointslice.kubernetes.io/managed-by".to_owned(),
        "test.meridian.io".to_owned(),
    )]);
    if let Some(s) = service {
        labels.insert(SERVICE_NAME_LABEL.to_owned(), s.to_owned());
    }
    let endpoints: Vec<serde_json::Value> = eps
        .iter()
        .map(|(address, ready, terminating)| {
            serde_json::json!({
                "addresses": [address],
                "conditions": {"ready": ready, "serving": true, "terminating": terminating},
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": [{"name": "tcp", "port": 7, "protocol": "TCP"}],
    }))
    .unwrap()
}

/// Watch events the controller has received for EndpointSlices of east1.
async fn slice_events(ctl: &Controller) -> u64 {
    let series = r#"meridian_watch_events_total{cluster="east1",resource="EndpointSlice"}"#;
    sample(&ctl.metrics_text().await, series).map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_are_merged_without_flapping_followed_live_and_filtered() {
    let testbed = testbed().await;
    let east1 = testbed.cluster("east1").unwrap();
    let web = ServiceSpec::new("web").port(ServicePortSpec::tcp("tcp", 7).target(8080));
    east1.create_service(&web).await.unwrap();
    let mut pods = Vec::new();
    for i in 0..7 {
        let spec = PodSpec::new(format!("web-{i}"))
            .app("web")
            .termination_grace(Duration::from_secs(4));
        pods.push(east1.add_pod(spec).await.unwrap());
    }
    let api: Api<EndpointSlice> = Api::namespaced(east1.client(), "default");
    let web_slices = || async {
        let lp = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}=web"));
        let mut l = api.list(&lp).await.unwrap().items;
        l.sort_by_key(|s| s.endpoints.len());
        l
    };
    assert_eq!(
        web_slices().await.len(),
        3,
        "7 endpoints, at most 3 per slice"
    );

    let ip = testbed.allocate_address().unwrap();
    let ctl = Controller::start(&testbed, east1, ip, &[]).await;
    let mut sub = ctl.subscribe().await;
    let all_ready = |s: &Snapshot| {
        let eps = endpoints(s, "web.default.global");
        eps.len() == 7 && eps.iter().all(|e| e.1)
    };
    sub.wait_for("web merged from 3 slices, with its VIP", |s| {
        all_ready(s)
            && service(s, "web.default.global").is_some_and(|g| {
                !g.vip.is_empty()
                    && !g.cluster_vips.is_empty()
                    && g.ports.iter().all(|p| p.listener_port != 0)
            })
    })
    .await;
    // Settled: the last of whatever is still being pushed.
    let version = sub
        .drain(Duration::from_secs(2))
        .await
        .last()
        .unwrap()
        .version;

    // An endpoint moves from a full slice to the one with room, as the EndpointSlice
    // controller moves them: added to the new slice first, then removed from the old.
    let slices = web_slices().await;
    let (mut small, mut full) = (slices[0].clone(), slices[2].clone());
    let moved = full.endpoints.pop().unwrap();
    small.endpoints.push(moved);
    let before = slice_events(&ctl).await;
    let pp = PostParams::default();
    let small_name = small.metadata.name.clone().unwrap();
    let full_name = full.metadata.name.clone().unwrap();
    api.replace(&small_name, &pp, &small).await.unwrap();
    api.replace(&full_name, &pp, &full).await.unwrap();
    eventually("the controller saw both slice updates", || {
        let ctl = &ctl;
        async move { (slice_events(ctl).await >= before + 2).then_some(()) }
    })
    .await;
    // The merged content did not change, so neither did the version: whatever was
    // pushed meanwhile (nothing, or the same snapshot) carries it.
    for s in sub.drain(Duration::from_secs(2)).await {
        assert_eq!(
            s.version,
            version,
            "{:?}",
            endpoints(&s, "web.default.global")
        );
        assert!(all_ready(&s));
    }

    // A terminating endpoint stays listed but not ready, then goes.
    let leaving = pods[0].pod_ip().to_string();
    east1.remove_pod(&pods[0]).await.unwrap();
    sub.wait_for("web-0 terminating", |s| {
        endpoints(s, "web.default.global").contains(&(leaving.clone(), false))
    })
    .await;
    let snap = sub
        .wait_for("web-0 gone after its grace", |s| {
            endpoints(s, "web.default.global").len() == 6
        })
        .await;
    assert!(
        endpoints(&snap, "web.default.global")
            .iter()
            .all(|(a, ready)| *ready && *a != leaving)
    );

    // Slices written by hand for an exported Service whose selector matches no pod; their
    // endpoints name no Pod, so the Service opts in to external endpoints.
    east1
        .create_service(
            &ServiceSpec::new("manual")
                .selector("app", "nothing")
                .annotation("meridian.io/allow-external-endpoints", "true")
                .port(ServicePortSpec::tcp("tcp", 7)),
        )
        .await
        .unwrap();
    east1
        .create_service(
            &ServiceSpec::new("hidden")
                .exported(false)
                .port(ServicePortSpec::tcp("tcp", 7)),
        )
        .await
        .unwrap();
    let host = "manual.default.global";
    let m1 = slice(
        "manual-1",
        Some("manual"),
        "IPv4",
        &[("10.99.0.1", true, false), ("10.99.0.2", true, false)],
    );
    api.create(&pp, &m1).await.unwrap();
    sub.wait_for("manual-1's endpoints", |s| {
        endpoints(s, host) == [("10.99.0.1".into(), true), ("10.99.0.2".into(), true)]
    })
    .await;
    // Updated live: 10.99.0.2 terminates.
    let m1 = slice(
        "manual-1",
        Some("manual"),
        "IPv4",
        &[("10.99.0.1", true, false), ("10.99.0.2", false, true)],
    );
    let mut current = api.get("manual-1").await.unwrap();
    current.endpoints = m1.endpoints.clone();
    api.replace("manual-1", &pp, &current).await.unwrap();
    sub.wait_for("10.99.0.2 not ready", |s| {
        endpoints(s, host).contains(&("10.99.0.2".into(), false))
    })
    .await;
    // Ignored: FQDN, no service label, an unexported Service. Counted once: the same
    // address in a second slice. Carried: IPv6. The last slice marks the end.
    for s in [
        slice(
            "manual-fqdn",
            Some("manual"),
            "FQDN",
            &[("db.example.com", true, false)],
        ),
        slice("unlabelled", None, "IPv4", &[("10.99.0.7", true, false)]),
        slice(
            "hidden-1",
            Some("hidden"),
            "IPv4",
            &[("10.99.0.8", true, false)],
        ),
        slice(
            "manual-dup",
            Some("manual"),
            "IPv4",
            &[("10.99.0.1", true, false)],
        ),
        slice(
            "manual-v6",
            Some("manual"),
            "IPv6",
            &[("fd00::99", true, false)],
        ),
        slice(
            "manual-last",
            Some("manual"),
            "IPv4",
            &[("10.99.0.9", true, false)],
        ),
    ] {
        api.create(&pp, &s).await.unwrap();
    }
    let snap = sub
        .wait_for("10.99.0.9 listed", |s| {
            endpoints(s, host).contains(&("10.99.0.9".into(), true))
        })
        .await;
    assert_eq!(
        endpoints(&snap, host),
        [
            ("10.99.0.1".into(), true),
            ("10.99.0.2".into(), false),
            ("10.99.0.9".into(), true),
            ("fd00::99".into(), true),
        ]
    );
    assert!(service(&snap, "hidden.default.global").is_none());
    // Deleted live: 10.99.0.2 goes with manual-1, 10.99.0.1 stays (manual-dup).
    api.delete("manual-1", &DeleteParams::default())
        .await
        .unwrap();
    sub.wait_for("manual-1 deleted", |s| {
        endpoints(s, host)
            == [
                ("10.99.0.1".into(), true),
                ("10.99.0.9".into(), true),
                ("fd00::99".into(), true),
            ]
    })
    .await;
    let log = std::fs::read_to_string(&ctl.log).unwrap();
    assert!(
        log.contains("EndpointSlice ignored: address type not carried")
            && log.contains("manual-fqdn"),
        "the FQDN slice is logged at debug level"
    );
    ctl.kill().await;
}
