use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use meridian_api::testing::eventually;
use meridian_testbed::{
    ClusterSpec, EndpointApi, MANAGED_BY, MANAGED_BY_LABEL, PodSpec, SERVICE_NAME_LABEL,
    ServicePortSpec, ServiceSpec, Testbed,
};
use tokio::net::TcpStream;

use super::support::init_tracing;

/// (pod, ready, serving, terminating) of one slice endpoint.
type Conditions = (String, bool, bool, bool);
/// (slice name, its endpoints) of a Service.
type Slices = Vec<(String, Vec<Conditions>)>;

/// The slices of `default/web`, by slice name.
async fn slices_of_web(api: &Api<EndpointSlice>) -> Slices {
    let lp = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}=web"));
    let mut out: Vec<_> = api
        .list(&lp)
        .await
        .expect("list slices")
        .items
        .into_iter()
        .map(|s| {
            let eps = s
                .endpoints
                .iter()
                .map(|e| {
                    let c = e.conditions.clone().unwrap_or_default();
                    (
                        e.target_ref
                            .clone()
                            .and_then(|r| r.name)
                            .unwrap_or_default(),
                        c.ready.unwrap_or(true),
                        c.serving.unwrap_or(true),
                        c.terminating.unwrap_or(false),
                    )
                })
                .collect();
            (s.metadata.name.unwrap_or_default(), eps)
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v1_20_server_serves_v1_slices_written_like_the_endpointslice_controller() {
    init_tracing();
    let testbed = Testbed::start(&[
        ClusterSpec::new("sliced", "r", ["z-a", "z-b"]).max_endpoints_per_slice(3),
        ClusterSpec::new("legacy", "r", ["z-c"]).endpoint_api(EndpointApi::Endpoints),
    ])
    .await
    .expect("testbed starts");
    let sliced = testbed.cluster("sliced").unwrap();
    let legacy = testbed.cluster("legacy").unwrap();

    // Discovery: v1 slices where asked for, not served at all on the legacy cluster.
    let groups = sliced.kubectl(&["api-resources", "--api-group=discovery.k8s.io"]);
    assert!(
        groups.unwrap().contains("discovery.k8s.io/v1"),
        "v1 slices are discoverable"
    );
    let err = legacy
        .client()
        .list_api_group_resources("discovery.k8s.io/v1")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err}"
    );

    let web = ServiceSpec::new("web").port(ServicePortSpec::http("http", 80).target(8080));
    sliced.create_service(&web).await.unwrap();
    let api: Api<EndpointSlice> = Api::namespaced(sliced.client(), "default");
    // No endpoints yet: one empty placeholder slice, as upstream keeps.
    let placeholder = slices_of_web(&api).await;
    assert_eq!(placeholder.len(), 1);
    assert!(placeholder[0].1.is_empty());

    let mut pods = Vec::new();
    for i in 0..7 {
        let zone = if i % 2 == 0 { "z-a" } else { "z-b" };
        let spec = PodSpec::new(format!("web-{i}")).app("web").zone(zone);
        let spec = if i == 0 {
            spec.termination_grace(Duration::from_secs(3))
        } else {
            spec
        };
        pods.push(sliced.add_pod(spec).await.unwrap());
    }
    // At most three per slice: 7 endpoints in 3 slices, the placeholder gone.
    let slices = slices_of_web(&api).await;
    let sizes: Vec<usize> = slices.iter().map(|s| s.1.len()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 7, "{slices:?}");
    assert_eq!(slices.len(), 3, "{slices:?}");
    assert!(sizes.iter().all(|n| *n <= 3));
    assert!(!slices.iter().any(|s| s.0 == placeholder[0].0));

    // What upstream writes on every slice and endpoint.
    let services: Api<Service> = Api::namespaced(sliced.client(), "default");
    let service = services.get("web").await.unwrap();
    let service_uid = service.metadata.uid.clone();
    for slice in api.list(&ListParams::default()).await.unwrap().items {
        let labels = slice.metadata.labels.clone().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        let owner = &slice.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Service", "web")
        );
        assert_eq!(Some(owner.uid.clone()), service_uid);
        assert_eq!(owner.controller, Some(true));
        assert_eq!(slice.address_type, "IPv4");
        assert!(slice.metadata.name.unwrap().starts_with("web-"));
        let port = &slice.ports.unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port, port.protocol.as_deref()),
            (Some("http"), Some(8080), Some("TCP"))
        );
        for e in &slice.endpoints {
            let r = e.target_ref.clone().unwrap();
            let pod = pods
                .iter()
                .find(|p| Some(p.name()) == r.name.as_deref())
                .unwrap();
            assert_eq!(e.addresses, [pod.pod_ip().to_string()]);
            assert_eq!(r.kind.as_deref(), Some("Pod"));
            assert_eq!(r.namespace.as_deref(), Some("default"));
            assert!(r.uid.is_some());
            assert_eq!(e.node_name.as_deref(), Some(pod.node()));
            assert_eq!(e.zone.as_deref(), Some(pod.zone()));
        }
    }

    // The server validates what is written, as a real one does.
    let mut bad: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bad"},
        "addressType": "Bogus",
        "endpoints": [],
    }))
    .unwrap();
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err}"
    );
    bad.address_type = "IPv4".into();
    bad.endpoints = serde_json::from_value(serde_json::json!([{"addresses": []}])).unwrap();
    let err = api.create(&PostParams::default(), &bad).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422),
        "{err}"
    );

    // Readiness: ready and serving false, not terminating.
    sliced.set_pod_ready(&pods[1], false).await.unwrap();
    let state = |slices: &Slices, pod: &str| {
        slices
            .iter()
            .flat_map(|s| s.1.iter())
            .find(|e| e.0 == pod)
            .map(|e| (e.1, e.2, e.3))
    };
    let slices = slices_of_web(&api).await;
    assert_eq!(state(&slices, "web-1"), Some((false, false, false)));
    assert_eq!(state(&slices, "web-2"), Some((true, true, false)));

    // A deleted pod terminates for its grace period: out of the Endpoints, terminating
    // in its slice (in the same slice), its echo server still answering.
    let slice_of = |slices: &Slices, pod: &str| {
        slices
            .iter()
            .find(|s| s.1.iter().any(|e| e.0 == pod))
            .map(|s| s.0.clone())
    };
    let home = slice_of(&slices, "web-0");
    sliced.remove_pod(&pods[0]).await.unwrap();
    let slices = slices_of_web(&api).await;
    assert_eq!(state(&slices, "web-0"), Some((false, true, true)));
    assert_eq!(slice_of(&slices, "web-0"), home);
    assert!(sliced.pod_terminating(&pods[0]).await);
    let endpoints: Api<Endpoints> = Api::namespaced(sliced.client(), "default");
    let listed = serde_json::to_string(&endpoints.get("web").await.unwrap()).unwrap();
    assert!(!listed.contains("\"web-0\""), "{listed}");
    let pod_api: Api<Pod> = Api::namespaced(sliced.client(), "default");
    let leaving = pod_api.get("web-0").await.unwrap();
    assert!(leaving.metadata.deletion_timestamp.is_some());
    assert!(TcpStream::connect(pods[0].socket_addr(8080)).await.is_ok());
    // kube-proxy sends nothing new to it.
    let vip = service.spec.clone().unwrap().cluster_ip.unwrap();
    let backends = sliced
        .resolve_cluster_ip(std::net::SocketAddr::new(vip.parse().unwrap(), 80))
        .await
        .unwrap();
    assert_eq!(
        backends.len(),
        5,
        "7 pods less the terminating and the unready"
    );
    assert!(!backends.contains(&pods[0].socket_addr(8080)));

    // Then it is gone: the endpoint, the Pod and the process.
    eventually(
        "web-0 gone",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let slices = slices_of_web(&api).await;
            (state(&slices, "web-0").is_none() && !sliced.pod_terminating(&pods[0]).await)
                .then_some(())
        },
    )
    .await;
    assert!(pod_api.get_opt("web-0").await.unwrap().is_none());
    assert!(TcpStream::connect(pods[0].socket_addr(8080)).await.is_err());

    // Deleting the Service deletes its slices (the testbed plays the garbage collector).
    sliced.delete_service("default", "web").await.unwrap();
    assert!(slices_of_web(&api).await.is_empty());

    // The legacy cluster writes Endpoints only.
    legacy.create_service(&web).await.unwrap();
    legacy
        .add_pod(PodSpec::new("web-l").app("web"))
        .await
        .unwrap();
    let endpoints: Api<Endpoints> = Api::namespaced(legacy.client(), "default");
    assert!(endpoints.get("web").await.unwrap().subsets.is_some());
}
