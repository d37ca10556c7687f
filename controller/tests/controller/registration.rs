use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use meridian_controller::crd::{GlobalService, MemberCluster, Phase};
use meridian_testbed::{PodSpec, SYSTEM_NAMESPACE, ServicePortSpec, ServiceSpec};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_register_members_and_the_catalog_flows_to_status_vips_and_snapshots() {
    let testbed = testbed().await;
    let east1 = testbed.cluster("east1").unwrap();
    let east2 = testbed.cluster("east2").unwrap();
    let west = testbed.cluster("west").unwrap();

    // `echo` is exported from east1 and west; `solo` only from east2.
    let echo = ServiceSpec::new("echo").port(ServicePortSpec::http("http", 80).target(8080));
    east1.create_service(&echo).await.unwrap();
    west.create_service(&echo).await.unwrap();
    east2
        .create_service(
            &ServiceSpec::new("solo").port(ServicePortSpec::tcp("tcp-db", 5432).target(8080)),
        )
        .await
        .unwrap();
    east1
        .create_service(
            &ServiceSpec::new("private")
                .exported(false)
                .port(ServicePortSpec::tcp("tcp", 1).target(8080)),
        )
        .await
        .unwrap();
    east1
        .add_pod(PodSpec::new("echo-a").app("echo"))
        .await
        .unwrap();
    let w1 = west
        .add_pod(PodSpec::new("echo-w1").app("echo").version("v2"))
        .await
        .unwrap();
    let w2 = west
        .add_pod(PodSpec::new("echo-w2").app("echo").ready(false))
        .await
        .unwrap();
    east2
        .add_pod(PodSpec::new("solo-1").app("solo"))
        .await
        .unwrap();

    register(
        east1,
        "east2",
        None,
        east2.kubeconfig(),
        Some("127.0.0.2:15443"),
    )
    .await;
    register(
        east1,
        "west-secret",
        Some("west"),
        west.kubeconfig(),
        Some("127.0.0.3:15443"),
    )
    .await;

    // Gateways: east1's gateway pod (the VIP Services select it; its node gives the
    // snapshot's own locality); west's gateway Service has a LoadBalancer address,
    // which wins over the Secret's annotation.
    let gateway_svc = ServiceSpec::new("meridian-gateway")
        .namespace(SYSTEM_NAMESPACE)
        .exported(false)
        .selector("app.kubernetes.io/name", "meridian-gateway")
        .port(ServicePortSpec::tcp("tunnel", 15443).target(15443));
    east1.create_service(&gateway_svc).await.unwrap();
    let gw = east1
        .add_pod(
            PodSpec::new("gateway-0")
                .namespace(SYSTEM_NAMESPACE)
                .label("app.kubernetes.io/name", "meridian-gateway")
                .echo(false),
        )
        .await
        .unwrap();
    west.create_service(&gateway_svc).await.unwrap();
    let west_lb = testbed.allocate_address().unwrap();
    west.set_load_balancer_ingress(SYSTEM_NAMESPACE, "meridian-gateway", west_lb.into())
        .await
        .unwrap();

    let ip = testbed.allocate_address().unwrap();
    let ctl = Controller::start(&testbed, east1, ip, &[]).await;

    // Every member syncs, reading the endpoint API it serves.
    let members: Api<MemberCluster> = Api::all(east1.client());
    for (name, api) in [
        ("east1", "discovery.k8s.io/v1"),
        ("east2", "discovery.k8s.io/v1"),
        ("west", "v1/Endpoints"),
    ] {
        let mc = eventually(&format!("MemberCluster {name} Synced"), || {
            let members = members.clone();
            async move {
                let mc = members.get(name).await.ok()?;
                (mc.status.as_ref()?.phase == Phase::Synced).then_some(mc)
            }
        })
        .await;
        let st = mc.status.unwrap();
        assert_eq!(st.endpoint_api.as_deref(), Some(api), "{name}");
        assert!(st.last_sync_time.is_some());
        assert_eq!(mc.spec.local, name == "east1");
    }
    let west_mc = members.get("west").await.unwrap();
    assert_eq!(
        west_mc.spec.secret.as_deref(),
        Some("meridian-system/west-secret")
    );
    let server = west_mc.status.as_ref().unwrap().server.clone().unwrap();
    assert!(
        server.starts_with(west.server_url().trim_end_matches('/')),
        "{server}"
    );

    // GlobalService status: per cluster and per locality, ready AND total.
    let gs_api: Api<GlobalService> = Api::all(east1.client());
    let gs = eventually(
        "GlobalService echo.default with 3 endpoints and a VIP",
        || {
            let gs_api = gs_api.clone();
            async move {
                let gs = gs_api.get("echo.default").await.ok()?;
                let st = gs.status.as_ref()?;
                (st.ready_summary == "2/3" && st.vip.is_some()).then_some(gs)
            }
        },
    )
    .await;
    let st = gs.status.unwrap();
    assert_eq!(st.hostname, "echo.default.global");
    assert_eq!(st.cluster_summary, "east1,west");
    let by_cluster: Vec<_> = st
        .clusters
        .iter()
        .map(|c| (c.cluster.as_str(), c.ready, c.total))
        .collect();
    assert_eq!(by_cluster, [("east1", 1, 1), ("west", 1, 2)]);
    let by_locality: Vec<_> = st
        .localities
        .iter()
        .map(|l| (l.locality.as_str(), l.ready, l.total))
        .collect();
    assert_eq!(
        by_locality,
        [("us-east1/us-east1-a", 1, 1), ("us-west1/us-west1-a", 1, 2)]
    );
    assert_eq!(st.ports.len(), 1);
    assert_eq!(st.ports[0].protocol, "HTTP");
    let listener = st.ports[0].listener_port.expect("listener port");
    assert!((15100..=15999).contains(&listener));
    assert!(
        gs_api.get("private.default").await.is_err(),
        "unexported services stay out"
    );

    // The managed VIP Service: selects the gateway, maps 80 → listener, ClusterIP = VIP.
    let svcs: Api<Service> = Api::namespaced(east1.client(), SYSTEM_NAMESPACE);
    let managed = svcs
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=meridian"))
        .await
        .unwrap()
        .items;
    let annotation = |s: &Service, key: &str| {
        s.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key).cloned())
    };
    let vip_svc = managed
        .iter()
        .find(|s| {
            annotation(s, "meridian.io/global-service").as_deref() == Some("default/echo")
                && annotation(s, "meridian.io/pinned-cluster").is_none()
        })
        .expect("a managed VIP Service for echo");
    let spec = vip_svc.spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ip, st.vip);
    assert_eq!(
        spec.selector
            .as_ref()
            .unwrap()
            .get("app.kubernetes.io/name")
            .map(String::as_str),
        Some("meridian-gateway")
    );
    let port = &spec.ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 80);
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(listener as i32))
    );

    // One more per exporting cluster: the VIP pinned to it, with its own listener port.
    let mut pinned: Vec<(String, String, i32)> = managed
        .iter()
        .filter(|s| annotation(s, "meridian.io/global-service").as_deref() == Some("default/echo"))
        .filter_map(|s| {
            let spec = s.spec.as_ref()?;
            let target = match spec.ports.as_ref()?[0].target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) => t,
                _ => return None,
            };
            Some((
                annotation(s, "meridian.io/pinned-cluster")?,
                spec.cluster_ip.clone()?,
                target,
            ))
        })
        .collect();
    pinned.sort();
    let pinned_clusters: Vec<_> = pinned.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(pinned_clusters, ["east1", "west"], "{pinned:?}");
    let mut all_listeners: Vec<i32> = pinned.iter().map(|p| p.2).collect();
    all_listeners.push(listener as i32);
    all_listeners.sort();
    all_listeners.dedup();
    assert_eq!(
        all_listeners.len(),
        3,
        "distinct listener ports: {pinned:?}"
    );
    assert!(pinned.iter().all(|p| Some(&p.1) != st.vip.as_ref()));
    // GlobalService status shows each cluster's pinned VIP.
    let want: Vec<(String, Option<String>)> = pinned
        .iter()
        .map(|p| (p.0.clone(), Some(p.1.clone())))
        .collect();
    eventually("pinned VIPs in the GlobalService status", || {
        let gs_api = gs_api.clone();
        let want = want.clone();
        async move {
            let st = gs_api.get("echo.default").await.ok()?.status?;
            let got: Vec<_> = st
                .clusters
                .iter()
                .map(|c| (c.cluster.clone(), c.vip.clone()))
                .collect();
            (got == want).then_some(())
        }
    })
    .await;

    // A subscriber gets the same picture at once.
    let mut sub = ctl.subscribe().await;
    let snap = sub
        .wait_for("echo has 3 endpoints and solo exists", |s| {
            service(s, "echo.default.global").is_some_and(|g| g.endpoints.len() == 3)
                && service(s, "solo.default.global").is_some()
        })
        .await;
    assert_eq!(snap.cluster, "east1");
    assert_ne!(snap.version, 0);
    let g = service(&snap, "echo.default.global").unwrap();
    assert_eq!(Some(&g.vip), st.vip.as_ref());
    assert_eq!(g.ports[0].listener_port, listener);
    assert_eq!(
        g.ports[0].protocol,
        meridian_api::proto::Protocol::Http as i32
    );
    assert_eq!(g.clusters, ["east1", "west"]);
    // The pinned VIPs, as the managed Services have them.
    let cluster_vips: Vec<_> = g
        .cluster_vips
        .iter()
        .map(|c| {
            assert_eq!(c.ports.len(), 1);
            assert_eq!(c.ports[0].port, 80);
            (
                c.cluster.clone(),
                c.vip.clone(),
                c.ports[0].listener_port as i32,
            )
        })
        .collect();
    assert_eq!(cluster_vips, pinned);
    let eps: Vec<_> = g
        .endpoints
        .iter()
        .map(|e| {
            let l = e.locality.clone().unwrap_or_default();
            (
                e.cluster.as_str(),
                e.ready,
                format!("{}/{}", l.region, l.zone),
                e.stale,
            )
        })
        .collect();
    assert_eq!(
        eps.iter()
            .filter(|e| e.0 == "west" && e.2 == "us-west1/us-west1-a")
            .count(),
        2
    );
    assert_eq!(eps.iter().filter(|e| e.1).count(), 2);
    assert!(eps.iter().all(|e| !e.3));
    let w1_ep = g
        .endpoints
        .iter()
        .find(|e| e.address == w1.pod_ip().to_string())
        .expect("w1 endpoint");
    assert_eq!(w1_ep.labels.get("version").map(String::as_str), Some("v2"));
    assert_eq!(w1_ep.ports.get("http"), Some(&8080));
    assert_eq!(w1_ep.pod, "echo-w1");
    let west_lb_addr = format!("{west_lb}:15443");
    let peers: Vec<_> = snap
        .peers
        .iter()
        .map(|p| (p.cluster.as_str(), p.address.as_str(), p.identity.as_str()))
        .collect();
    assert_eq!(
        peers,
        [
            (
                "east2",
                "127.0.0.2:15443",
                "spiffe://meridian.local/cluster/east2/gateway"
            ),
            (
                "west",
                west_lb_addr.as_str(),
                "spiffe://meridian.local/cluster/west/gateway"
            ),
        ]
    );
    let own = snap.locality.clone().unwrap();
    assert_eq!(
        (own.region.as_str(), own.zone.as_str()),
        ("us-east1", "us-east1-a")
    );

    // The VIP leads to the gateway pod's listener (the testbed plays kube-proxy).
    east1.sync_endpoints(SYSTEM_NAMESPACE).await.unwrap();
    let vip: std::net::IpAddr = st.vip.as_deref().unwrap().parse().unwrap();
    let backends = east1
        .resolve_cluster_ip(std::net::SocketAddr::new(vip, 80))
        .await
        .unwrap();
    assert_eq!(backends, [gw.socket_addr(listener as u16)]);
    // So does the VIP pinned to west, to its own listener.
    let (_, west_vip, west_listener) = &pinned[1];
    let backends = east1
        .resolve_cluster_ip(std::net::SocketAddr::new(west_vip.parse().unwrap(), 80))
        .await
        .unwrap();
    assert_eq!(backends, [gw.socket_addr(*west_listener as u16)]);

    // Readiness flips reach the snapshot and the status.
    let before = snap.version;
    west.set_pod_ready(&w2, true).await.unwrap();
    let snap = sub
        .wait_for("all echo endpoints ready", |s| {
            service(s, "echo.default.global")
                .is_some_and(|g| g.endpoints.iter().filter(|e| e.ready).count() == 3)
        })
        .await;
    assert_ne!(snap.version, before);
    eventually("status 3/3", || {
        let gs_api = gs_api.clone();
        async move {
            let gs = gs_api.get("echo.default").await.ok()?;
            (gs.status?.ready_summary == "3/3").then_some(())
        }
    })
    .await;

    // kubectl shows the state at a glance.
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(east1.kubeconfig_path())
        .args(["get", "globalservices,memberclusters"])
        .output()
        .await
        .expect("kubectl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("echo.default.global") && text.contains("3/3"),
        "{text}"
    );
    assert!(
        text.contains("Synced")
            && text.contains("v1/Endpoints")
            && text.contains("discovery.k8s.io/v1"),
        "{text}"
    );

    // Metrics.
    let metrics = ctl.metrics_text().await;
    assert!(
        metrics.contains(r#"meridian_member_phase{cluster="west",phase="Synced"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("meridian_catalog_services 2"), "{metrics}");
    assert!(
        metrics.contains("meridian_snapshot_pushes_total"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"meridian_member_last_sync_age_seconds{cluster="east2"}"#),
        "{metrics}"
    );

    // Bad registrations only affect themselves.
    register(east1, "garbage", None, "this: [is not a kubeconfig", None).await;
    register(
        east1,
        "badcreds",
        None,
        &with_bad_credentials(east2.kubeconfig()),
        None,
    )
    .await;
    let nowhere = east2
        .kubeconfig()
        .replace(east2.server_url(), "https://127.0.0.1:1");
    register(east1, "nowhere", None, &nowhere, None).await;
    for (name, phase) in [
        ("garbage", Phase::InvalidCredentials),
        ("badcreds", Phase::InvalidCredentials),
        ("nowhere", Phase::Unreachable),
    ] {
        let mc = eventually(&format!("MemberCluster {name} {phase}"), || {
            let members = members.clone();
            async move {
                let mc = members.get(name).await.ok()?;
                (mc.status.as_ref()?.phase == phase).then_some(mc)
            }
        })
        .await;
        assert!(
            mc.status.unwrap().message.is_some(),
            "{name} explains itself"
        );
    }
    for name in ["east1", "east2", "west"] {
        let st = members.get(name).await.unwrap().status.unwrap();
        assert_eq!(st.phase, Phase::Synced, "{name} undisturbed");
    }
    let snap = sub.latest.clone().unwrap();
    assert_eq!(
        service(&snap, "echo.default.global")
            .unwrap()
            .endpoints
            .iter()
            .filter(|e| e.ready)
            .count(),
        3
    );

    // Deleting a Secret withdraws that member: its endpoints, its only service, the VIP.
    unregister(east1, "east2").await;
    sub.wait_for("solo withdrawn with east2", |s| {
        service(s, "solo.default.global").is_none() && !s.peers.iter().any(|p| p.cluster == "east2")
    })
    .await;
    eventually("MemberCluster east2 deleted", || {
        let members = members.clone();
        async move { members.get("east2").await.is_err().then_some(()) }
    })
    .await;
    eventually("GlobalService solo.default deleted", || {
        let gs_api = gs_api.clone();
        async move { gs_api.get("solo.default").await.is_err().then_some(()) }
    })
    .await;
    eventually(
        "VIP Services of solo (own and pinned to east2) deleted",
        || {
            let svcs = svcs.clone();
            async move {
                let managed = svcs
                    .list(&ListParams::default().labels("app.kubernetes.io/managed-by=meridian"))
                    .await
                    .ok()?
                    .items;
                // echo's own VIP and its pins to east1 and west remain.
                (managed.len() == 3).then_some(())
            }
        },
    )
    .await;

    // West stops exporting echo: only its pin goes; echo's VIP and ports stay.
    west.delete_service("default", "echo").await.unwrap();
    let snap = sub
        .wait_for("echo without west", |s| {
            service(s, "echo.default.global").is_some_and(|g| g.clusters == ["east1"])
        })
        .await;
    let g = service(&snap, "echo.default.global").unwrap();
    let left: Vec<_> = g.cluster_vips.iter().map(|c| c.cluster.as_str()).collect();
    assert_eq!(left, ["east1"]);
    assert_eq!(g.cluster_vips[0].vip, pinned[0].1, "the east1 pin is kept");
    assert_eq!(Some(&g.vip), st.vip.as_ref());
    eventually("the VIP Service pinned to west deleted", || {
        let svcs = svcs.clone();
        async move {
            let managed = svcs
                .list(&ListParams::default().labels("app.kubernetes.io/managed-by=meridian"))
                .await
                .ok()?
                .items;
            (managed.len() == 2).then_some(())
        }
    })
    .await;
    ctl.kill().await;
}
