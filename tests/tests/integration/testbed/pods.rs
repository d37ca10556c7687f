use k8s_openapi::api::core::v1::{Endpoints, Pod};
use kube::Api;
use kube::api::ListParams;
use meridian_testbed::{
    EchoReply, PodSpec, ServicePortSpec, ServiceSpec, Testbed, pod_ip_to_loopback,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::{http_get, init_tracing, one_cluster, tcp_greeting};

/// (ready, not ready) pod names in the Endpoints of `default/web`.
async fn endpoint_pods(api: &Api<Endpoints>) -> (Vec<String>, Vec<String>) {
    let endpoints = api.get("web").await.expect("Endpoints default/web");
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for subset in endpoints.subsets.unwrap_or_default() {
        for (list, out) in [
            (subset.addresses, &mut ready),
            (subset.not_ready_addresses, &mut not_ready),
        ] {
            for address in list.unwrap_or_default() {
                out.push(address.target_ref.and_then(|r| r.name).expect("targetRef"));
            }
        }
    }
    ready.sort();
    not_ready.sort();
    (ready, not_ready)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flip_is_visible_in_endpoints() {
    init_tracing();
    let testbed = Testbed::start(&one_cluster())
        .await
        .expect("testbed starts");
    let cluster = &testbed.clusters()[0];
    cluster
        .create_service(
            &ServiceSpec::new("web").port(ServicePortSpec::http("http", 80).target_name("http")),
        )
        .await
        .expect("service");
    let a = cluster
        .add_pod(PodSpec::new("web-a").app("web").zone("us-east1-a"))
        .await
        .expect("pod a");
    let b = cluster
        .add_pod(
            PodSpec::new("web-b")
                .app("web")
                .zone("us-east1-b")
                .version("v2"),
        )
        .await
        .expect("pod b");
    let endpoints: Api<Endpoints> = Api::namespaced(cluster.client(), "default");
    let both = vec!["web-a".to_string(), "web-b".to_string()];
    assert_eq!(endpoint_pods(&endpoints).await, (both.clone(), vec![]));

    // Addresses carry nodeName (→ Node → locality), the named target port resolved,
    // and pod IPs that map onto the echo servers' loopback addresses.
    let current = endpoints.get("web").await.expect("endpoints");
    let subset = &current.subsets.as_ref().expect("subsets")[0];
    assert_eq!(subset.ports.as_ref().expect("ports")[0].port, 8080);
    for address in subset.addresses.as_ref().expect("addresses") {
        let pod = if address.ip == a.pod_ip().to_string() {
            &a
        } else {
            &b
        };
        assert_eq!(address.node_name.as_deref(), Some(pod.node()));
        let loopback = pod_ip_to_loopback(address.ip.parse().expect("ip"));
        assert_eq!(loopback, std::net::IpAddr::from(pod.address()));
    }

    cluster.set_pod_ready(&b, false).await.expect("b not ready");
    assert_eq!(
        endpoint_pods(&endpoints).await,
        (vec!["web-a".to_string()], vec!["web-b".to_string()])
    );
    cluster.set_pod_ready(&b, true).await.expect("b ready");
    assert_eq!(endpoint_pods(&endpoints).await, (both, vec![]));

    // A metadata-only Pod list sees the labels.
    let pods: Api<Pod> = Api::namespaced(cluster.client(), "default");
    let metas = pods
        .list_metadata(&ListParams::default())
        .await
        .expect("metadata");
    let b_meta = metas
        .items
        .iter()
        .find(|m| m.metadata.name.as_deref() == Some("web-b"))
        .expect("web-b listed");
    let labels = b_meta.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels["app"], "web");
    assert_eq!(labels["version"], "v2");

    cluster.remove_pod(&a).await.expect("remove a");
    assert_eq!(
        endpoint_pods(&endpoints).await,
        (vec!["web-b".to_string()], vec![])
    );
    assert!(pods.get_opt("web-a").await.expect("get").is_none());
    assert!(TcpStream::connect(a.socket_addr(8080)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ips_resolve_to_ready_pods_and_load_balancers_get_addresses() {
    init_tracing();
    let testbed = Testbed::start(&one_cluster())
        .await
        .expect("testbed starts");
    let cluster = &testbed.clusters()[0];
    let service = cluster
        .create_service(
            &ServiceSpec::new("api")
                .namespace("shop")
                .port(ServicePortSpec::http("http", 80).target(8080))
                .port(ServicePortSpec::tcp("grpc", 90).target_name("grpc")),
        )
        .await
        .expect("service");
    let cluster_ip: std::net::IpAddr = service
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("ClusterIP allocated")
        .parse()
        .expect("ClusterIP parses");
    let pods = [
        cluster
            .add_pod(
                PodSpec::new("api-1")
                    .namespace("shop")
                    .app("api")
                    .port("http", 8080)
                    .port("grpc", 9090),
            )
            .await
            .expect("pod 1"),
        cluster
            .add_pod(
                PodSpec::new("api-2")
                    .namespace("shop")
                    .app("api")
                    .port("http", 8080)
                    .port("grpc", 9090),
            )
            .await
            .expect("pod 2"),
    ];
    let vip = std::net::SocketAddr::new(cluster_ip, 90);
    let mut expected: Vec<_> = pods.iter().map(|p| p.socket_addr(9090)).collect();
    expected.sort();
    assert_eq!(
        cluster.resolve_cluster_ip(vip).await.expect("resolve"),
        expected
    );
    let (status, reply) = http_get(expected[0], "/").await;
    assert_eq!(status, 200);
    assert!(reply.pod.starts_with("api-"));

    cluster
        .set_pod_ready(&pods[0], false)
        .await
        .expect("not ready");
    assert_eq!(
        cluster.resolve_cluster_ip(vip).await.expect("resolve"),
        vec![pods[1].socket_addr(9090)]
    );

    let gateway_ip = cluster.allocate_address().expect("address");
    cluster
        .set_load_balancer_ingress("shop", "api", gateway_ip.into())
        .await
        .expect("load balancer status");
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(cluster.client(), "shop");
    let ingress = services
        .get("api")
        .await
        .expect("service")
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .expect("ingress");
    assert_eq!(
        ingress[0].ip.as_deref(),
        Some(gateway_ip.to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_pods_answer_http_and_tcp_and_obey_faults() {
    init_tracing();
    let testbed = Testbed::start(&one_cluster())
        .await
        .expect("testbed starts");
    let cluster = &testbed.clusters()[0];
    let pod = cluster
        .add_pod(
            PodSpec::new("echo-1")
                .zone("us-east1-b")
                .version("v7")
                .port("http", 8080)
                .port("tcp", 9000),
        )
        .await
        .expect("pod");
    let expected = EchoReply {
        cluster: "solo".into(),
        zone: "us-east1-b".into(),
        pod: "echo-1".into(),
        version: "v7".into(),
    };

    // Both protocols on both ports.
    for port in [8080, 9000] {
        assert_eq!(
            http_get(pod.socket_addr(port), "/any/path").await,
            (200, expected.clone())
        );
        let mut stream = TcpStream::connect(pod.socket_addr(port))
            .await
            .expect("tcp");
        assert_eq!(tcp_greeting(&mut stream).await, Some(expected.clone()));
        stream.write_all(b"ping\n").await.expect("write");
        let mut echoed = [0u8; 5];
        stream.read_exact(&mut echoed).await.expect("echo");
        assert_eq!(&echoed, b"ping\n");
    }

    // 503 with the same identity; raw TCP is closed without a greeting.
    cluster.set_pod_failing(&pod, true).await.expect("failing");
    assert_eq!(
        http_get(pod.socket_addr(8080), "/").await,
        (503, expected.clone())
    );
    let mut stream = TcpStream::connect(pod.socket_addr(9000))
        .await
        .expect("tcp");
    assert_eq!(tcp_greeting(&mut stream).await, None);
    cluster.set_pod_failing(&pod, false).await.expect("healthy");
    assert_eq!(http_get(pod.socket_addr(8080), "/").await.0, 200);

    // Stop drops open connections and refuses new ones; start serves again.
    let mut open = TcpStream::connect(pod.socket_addr(9000))
        .await
        .expect("tcp");
    assert!(tcp_greeting(&mut open).await.is_some());
    cluster.stop_pod(&pod).await.expect("stop");
    assert!(!cluster.pod_running(&pod).await.expect("state"));
    assert!(TcpStream::connect(pod.socket_addr(8080)).await.is_err());
    let mut buf = [0u8; 1];
    assert!(matches!(open.read(&mut buf).await, Ok(0) | Err(_)));
    cluster.start_pod(&pod).await.expect("start");
    assert_eq!(http_get(pod.socket_addr(8080), "/").await, (200, expected));
}
