use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Endpoints};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use meridian_testbed::{Error, PodSpec, ServicePortSpec, ServiceSpec, Testbed};

use super::support::{init_tracing, one_cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data_and_replays_pod_changes() {
    init_tracing();
    let testbed = Testbed::start(&one_cluster())
        .await
        .expect("testbed starts");
    let cluster = &testbed.clusters()[0];
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client(), "default");
    let survivor = ConfigMap {
        metadata: ObjectMeta {
            name: Some("survivor".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("key".into(), "value".into())])),
        ..Default::default()
    };
    config_maps
        .create(&PostParams::default(), &survivor)
        .await
        .expect("create ConfigMap");
    cluster
        .create_service(&ServiceSpec::new("web").port(ServicePortSpec::tcp("tcp", 80).target(8080)))
        .await
        .expect("service");
    let pod = cluster
        .add_pod(PodSpec::new("web-1").app("web"))
        .await
        .expect("pod");
    let url = cluster.server_url().to_string();

    cluster.stop_api_server().await;
    assert!(!cluster.api_server_running().await);
    assert!(config_maps.get("survivor").await.is_err(), "API is down");
    assert!(matches!(
        cluster.add_pod(PodSpec::new("web-2").app("web")).await,
        Err(Error::ApiServerStopped { .. })
    ));
    // Recorded now, written when the API server is back.
    cluster.set_pod_ready(&pod, false).await.expect("recorded");

    cluster.start_api_server().await.expect("restart");
    assert!(cluster.api_server_running().await);
    assert_eq!(cluster.server_url(), url);
    let back = config_maps
        .get("survivor")
        .await
        .expect("ConfigMap survived");
    assert_eq!(back.data.expect("data")["key"], "value");
    let endpoints: Api<Endpoints> = Api::namespaced(cluster.client(), "default");
    let subsets = endpoints
        .get("web")
        .await
        .expect("endpoints")
        .subsets
        .expect("subsets");
    assert!(subsets[0].addresses.is_none());
    assert_eq!(
        subsets[0]
            .not_ready_addresses
            .as_ref()
            .expect("not ready")
            .len(),
        1
    );
}
