//! Tests of the testbed itself, against real etcd and kube-apiserver processes.
//!
//! They need the binaries (`tests/scripts/provision-k8s.sh`) and `kubectl`; when either is
//! missing they fail with a message saying so, never skip.

mod support {
    use std::net::SocketAddr;
    use std::path::Path;

    use meridian_testbed::{Cluster, ClusterSpec, EchoReply};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    pub use meridian_testbed::init_tracing;

    pub fn three_clusters() -> Vec<ClusterSpec> {
        vec![
            ClusterSpec::new("east", "us-east1", ["us-east1-a", "us-east1-b"]),
            ClusterSpec::new("west", "us-west1", ["us-west1-a", "us-west1-b"]),
            ClusterSpec::new("north", "eu-north1", ["eu-north1-a"]).subzones(["rack1", "rack2"]),
        ]
    }

    pub fn one_cluster() -> Vec<ClusterSpec> {
        vec![ClusterSpec::new(
            "solo",
            "us-east1",
            ["us-east1-a", "us-east1-b"],
        )]
    }

    /// Runs `kubectl --kubeconfig <cluster's file> args…`, returning stdout; panics with
    /// stderr on failure.
    pub async fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
        cluster.kubectl(args).expect("kubectl")
    }

    /// One HTTP GET; returns the status code and the parsed reply.
    pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, EchoReply) {
        let r = meridian_testbed::traffic::http_get(addr, path, &[])
            .await
            .expect("HTTP GET");
        (r.status, r.echo().expect("echo JSON"))
    }

    /// Connects without sending anything and reads the greeting line.
    pub async fn tcp_greeting(stream: &mut TcpStream) -> Option<EchoReply> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte).await {
                Ok(0) | Err(_) => return None,
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => line.push(byte[0]),
            }
        }
        Some(serde_json::from_slice(&line).expect("greeting is echo JSON"))
    }

    /// Process ids whose command line mentions `dir` (every testbed process does).
    pub fn processes_mentioning(dir: &Path) -> Vec<u32> {
        let needle = dir.to_string_lossy().into_owned();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
                && String::from_utf8_lossy(&cmdline).contains(&needle)
            {
                pids.push(pid);
            }
        }
        pids
    }
}

mod startup {
    use k8s_openapi::api::core::v1::{Namespace, Node};
    use kube::Api;
    use kube::api::ListParams;
    use meridian_testbed::{
        PodSpec, REGION_LABEL, SUBZONE_LABEL, SYSTEM_NAMESPACE, Testbed, ZONE_LABEL,
    };

    use crate::support::{init_tracing, kubectl, three_clusters};

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
}

mod pods {
    use k8s_openapi::api::core::v1::{Endpoints, Pod};
    use kube::Api;
    use kube::api::ListParams;
    use meridian_testbed::{
        EchoReply, PodSpec, ServicePortSpec, ServiceSpec, Testbed, pod_ip_to_loopback,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::support::{http_get, init_tracing, one_cluster, tcp_greeting};

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
                &ServiceSpec::new("web")
                    .port(ServicePortSpec::http("http", 80).target_name("http")),
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
}

mod apiserver {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{ConfigMap, Endpoints};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::Api;
    use kube::api::PostParams;
    use meridian_testbed::{Error, PodSpec, ServicePortSpec, ServiceSpec, Testbed};

    use crate::support::{init_tracing, one_cluster};

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
            .create_service(
                &ServiceSpec::new("web").port(ServicePortSpec::tcp("tcp", 80).target(8080)),
            )
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
}

mod teardown {
    use std::net::{SocketAddr, TcpListener};
    use std::path::PathBuf;
    use std::time::Duration;

    use meridian_testbed::{PodSpec, Testbed};

    use crate::support::{init_tracing, one_cluster, processes_mentioning};

    struct Leftovers {
        dir: PathBuf,
        pids: Vec<u32>,
        ports: Vec<SocketAddr>,
    }

    async fn start_and_record() -> (Testbed, Leftovers) {
        let testbed = Testbed::start(&one_cluster())
            .await
            .expect("testbed starts");
        let cluster = &testbed.clusters()[0];
        let pod = cluster.add_pod(PodSpec::new("p")).await.expect("pod");
        let api: SocketAddr = cluster
            .server_url()
            .trim_start_matches("https://")
            .parse()
            .expect("server address");
        let leftovers = Leftovers {
            dir: testbed.dir().to_path_buf(),
            pids: cluster.process_ids().await,
            ports: vec![api, pod.socket_addr(8080)],
        };
        assert_eq!(leftovers.pids.len(), 2, "etcd and kube-apiserver");
        assert!(leftovers.dir.is_dir());
        assert!(!processes_mentioning(&leftovers.dir).is_empty());
        (testbed, leftovers)
    }

    /// Echo listeners close when the runtime drops their aborted tasks; give it a moment
    /// (bounded generously: a loaded machine may take a while to get to them).
    async fn bindable(addr: SocketAddr) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if TcpListener::bind(addr).is_ok() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn assert_nothing_left(leftovers: Leftovers) {
        for pid in &leftovers.pids {
            assert!(
                !PathBuf::from(format!("/proc/{pid}")).exists(),
                "process {pid} survived teardown"
            );
        }
        assert_eq!(processes_mentioning(&leftovers.dir), Vec::<u32>::new());
        assert!(
            !leftovers.dir.exists(),
            "{} survived",
            leftovers.dir.display()
        );
        for addr in leftovers.ports {
            assert!(bindable(addr).await, "{addr} still bound");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_leaves_no_processes_dirs_or_ports() {
        init_tracing();
        let (testbed, leftovers) = start_and_record().await;
        drop(testbed);
        assert_nothing_left(leftovers).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn panicking_test_still_tears_down() {
        init_tracing();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let (_testbed, leftovers) = start_and_record().await;
            tx.send(leftovers).ok().expect("receiver alive");
            panic!("deliberate panic while a testbed is running");
        });
        let error = task.await.expect_err("the task panics");
        assert!(error.is_panic());
        assert_nothing_left(rx.await.expect("leftovers recorded")).await;
    }
}

mod binary {
    use std::process::Stdio;

    use tokio::io::{AsyncBufReadExt, BufReader};

    use crate::support::processes_mentioning;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn binary_runs_clusters_until_sigterm() {
        let out = tempfile::tempdir().expect("tempdir");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian-testbed"))
            .args([
                "--cluster",
                "lone=r1:r1-a,r1-b",
                "--service",
                "web",
                "--kubeconfig-dir",
            ])
            .arg(out.path())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start meridian-testbed");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut printed = Vec::new();
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if line.starts_with("ready") {
                break;
            }
            printed.push(line);
        }
        assert!(
            printed[1].starts_with("cluster lone region r1 zones r1-a,r1-b"),
            "{printed:?}"
        );
        assert_eq!(
            printed
                .iter()
                .filter(|l| l.trim_start().starts_with("pod web-"))
                .count(),
            2
        );

        let kubeconfig = out.path().join("lone.kubeconfig");
        let output = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "get",
                "endpoints",
                "web",
                "-o",
                "jsonpath={.subsets[0].addresses[*].nodeName}",
            ])
            .output()
            .await
            .expect("kubectl must be installed (Debian: apt-get install kubernetes-client)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let nodes = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            nodes.contains("lone-r1-a-1") && nodes.contains("lone-r1-b-1"),
            "{nodes}"
        );

        let dir = printed[0]
            .strip_prefix("testbed ")
            .expect("first line names the directory");
        let dir = std::path::PathBuf::from(dir);
        assert!(
            !processes_mentioning(&dir).is_empty(),
            "etcd and kube-apiserver run"
        );

        let pid = child.id().expect("running");
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).expect("pid"),
            rustix::process::Signal::TERM,
        )
        .expect("SIGTERM");
        let status = child.wait().await.expect("wait");
        assert!(status.success(), "{status}");
        assert_eq!(processes_mentioning(&dir), Vec::<u32>::new());
        assert!(!dir.exists(), "{} survived", dir.display());
    }
}

mod endpoint_slices {
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

    use crate::support::init_tracing;

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
}
