use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::Api;
use kube::api::ListParams;
use meridian_testbed::{
    PodSpec, REGION_LABEL, SUBZONE_LABEL, SYSTEM_NAMESPACE, Testbed, ZONE_LABEL,
};

use super::support::{init_tracing, kubectl, three_clusters};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clusters_come_up_and_kubectl_works_against_each() {
    init_tracing();
    let testbed = Testbed::start(&three_clusters())
        .await
        .expect("testbed starts");
    assert_eq!(testbed.clusters().len(), 3);

    let mut urls = Vec::new();
    for cluster in testbed.clusters() {
        urls.push(cluster.server_url().to_string());
        let client = cluster.client();

        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .get(SYSTEM_NAMESPACE)
            .await
            .expect("meridian-system exists");

        let nodes: Api<Node> = Api::all(client.clone());
        let nodes = nodes
            .list(&ListParams::default())
            .await
            .expect("list nodes");
        let subzones = cluster.spec().subzones.len().max(1);
        assert_eq!(nodes.items.len(), cluster.zones().len() * subzones);
        assert_eq!(nodes.items.len(), cluster.nodes().len());
        for node in &nodes.items {
            let labels = node.metadata.labels.as_ref().expect("node labels");
            assert_eq!(labels[REGION_LABEL], cluster.region());
            assert!(cluster.zones().contains(&labels[ZONE_LABEL]));
            assert_eq!(
                labels.get(SUBZONE_LABEL).is_some(),
                !cluster.spec().subzones.is_empty()
            );
        }

        // kubectl with the generated kubeconfig: table output, YAML, and server-side
        // `?pretty=true` (the path that crashed with the unpatched vendored reflect2).
        let table = kubectl(cluster, &["get", "nodes", "-L", ZONE_LABEL]).await;
        for zone in cluster.zones() {
            assert!(table.contains(zone.as_str()), "{table}");
        }
        let yaml = kubectl(
            cluster,
            &["get", "namespace", SYSTEM_NAMESPACE, "-o", "yaml"],
        )
        .await;
        assert!(yaml.contains("name: meridian-system"), "{yaml}");
        let pretty = kubectl(cluster, &["get", "--raw", "/api/v1/nodes?pretty=true"]).await;
        assert!(pretty.contains(cluster.region()), "{pretty}");
        let context = kubectl(cluster, &["config", "current-context"]).await;
        assert_eq!(context.trim(), cluster.name());
    }
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), 3, "every cluster has its own API server");

    // Pods land on the node of the requested subzone.
    let north = testbed.cluster("north").expect("north");
    let pod = north
        .add_pod(PodSpec::new("racked").subzone("rack2"))
        .await
        .expect("pod");
    let node = north
        .nodes()
        .iter()
        .find(|n| n.name == pod.node())
        .expect("node");
    assert_eq!(node.subzone.as_deref(), Some("rack2"));
    assert_eq!(pod.zone(), "eu-north1-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_testbeds_do_not_collide() {
    init_tracing();
    let spec = [meridian_testbed::ClusterSpec::new("same-name", "r", ["z"])];
    let (a, b) = tokio::join!(Testbed::start(&spec), Testbed::start(&spec));
    let (a, b) = (a.expect("first testbed"), b.expect("second testbed"));
    assert_ne!(a.block_octet(), b.block_octet());
    assert_ne!(a.dir(), b.dir());
    let (ca, cb) = (&a.clusters()[0], &b.clusters()[0]);
    assert_ne!(ca.server_url(), cb.server_url());
    // Each answers with its own state.
    ca.create_namespace("only-in-a")
        .await
        .expect("namespace in a");
    let namespaces: Api<Namespace> = Api::all(cb.client());
    assert!(
        namespaces
            .get_opt("only-in-a")
            .await
            .expect("get")
            .is_none()
    );
}
