//! The controller binary against the hermetic testbed: three real kube-apiservers (v1.20),
//! two zones of one region and one other region. `east1` and `east2` serve
//! `discovery.k8s.io/v1` EndpointSlices (the testbed's CRD; at most three endpoints per
//! slice in `east1`, so services span several), `west` only core/v1 Endpoints.
//!
//! The controller runs as its real binary in cluster `east1`; `east2` and `west` are
//! registered through kubeconfig Secrets. Needs the testbed binaries
//! (`tests/scripts/provision-k8s.sh`); fails loudly without them.

mod support {
    use std::future::Future;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::path::PathBuf;
    use std::process::Stdio;
    use std::time::Duration;

    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, DeleteParams, PostParams};
    use meridian_api::proto::discovery_client::DiscoveryClient;
    use meridian_api::proto::{Snapshot, Subscriber};
    use meridian_testbed::mesh::{
        CONTROLLER_AUDIENCE, GATEWAY_SERVICE_ACCOUNT, service_account_token,
    };
    use meridian_testbed::{Cluster, ClusterSpec, EndpointApi, SYSTEM_NAMESPACE, Testbed};

    /// How long anything may take to converge before a test fails.
    pub const CONVERGE: Duration = Duration::from_secs(60);
    /// What the API server says when a token's audience is not the one asked for.
    pub const AUDIENCE_REFUSED: &str = "is invalid for the target audiences";

    pub use meridian_testbed::init_tracing;

    /// Two zones of one region (two clusters, on EndpointSlices) and one other region (on
    /// core/v1 Endpoints).
    pub fn clusters() -> Vec<ClusterSpec> {
        vec![
            ClusterSpec::new("east1", "us-east1", ["us-east1-a"]).max_endpoints_per_slice(3),
            ClusterSpec::new("east2", "us-east1", ["us-east1-b"]),
            ClusterSpec::new("west", "us-west1", ["us-west1-a"])
                .endpoint_api(EndpointApi::Endpoints),
        ]
    }

    pub async fn testbed() -> Testbed {
        init_tracing();
        Testbed::start(&clusters()).await.expect("testbed starts")
    }

    /// Polls `f` until it yields `Some`, or fails naming `what`.
    pub async fn eventually<T, F, Fut>(what: &str, f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        meridian_api::testing::eventually(what, CONVERGE, Duration::from_millis(200), f).await
    }

    /// The controller binary, running against `cluster`.
    pub struct Controller {
        child: tokio::process::Child,
        /// A gateway ServiceAccount token for the controller's audience, as the gateway
        /// sends it.
        pub token: String,
        /// gRPC address.
        pub grpc: SocketAddr,
        /// Metrics address.
        pub metrics: SocketAddr,
        /// Its log file.
        pub log: PathBuf,
    }

    impl Controller {
        pub async fn start(
            testbed: &Testbed,
            cluster: &Cluster,
            ip: Ipv4Addr,
            extra: &[&str],
        ) -> Self {
            Self::start_with_kubeconfig(testbed, cluster, ip, cluster.kubeconfig_path(), extra)
                .await
        }

        /// [`Controller::start`] reaching its own cluster through `kubeconfig` (a path
        /// through a proxy the test can cut).
        pub async fn start_with_kubeconfig(
            testbed: &Testbed,
            cluster: &Cluster,
            ip: Ipv4Addr,
            kubeconfig: &std::path::Path,
            extra: &[&str],
        ) -> Self {
            let grpc = SocketAddr::from((ip, 15010));
            let metrics = SocketAddr::from((ip, 15014));
            // Outside the testbed directory, so it survives a failed test.
            static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("controller-{}-{n}.log", testbed.block_octet()));
            let file = std::fs::File::create(&log).expect("log file");
            let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian-controller"))
                .arg("--cluster-name")
                .arg(cluster.name())
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(["--grpc-addr", &grpc.to_string()])
                .args(["--metrics-addr", &metrics.to_string()])
                // The probe's timeout is max(interval, 2 s): a member whose API server is
                // slow to answer `/version` on a loaded machine would flip to Unreachable
                // (and its endpoints to stale) mid-test. 5 s, the default, gives it room;
                // lost members are still noticed at once through their failing watches.
                .args(["--install-crds", "--probe-interval", "5s"])
                .args(extra)
                .env("RUST_LOG", "meridian_controller=debug,info")
                .stdout(Stdio::null())
                .stderr(file)
                .kill_on_drop(true)
                .spawn()
                .expect("controller binary starts");
            let token =
                service_account_token(cluster, GATEWAY_SERVICE_ACCOUNT, Some(CONTROLLER_AUDIENCE))
                    .await
                    .expect("a gateway token");
            let c = Controller {
                child,
                token,
                grpc,
                metrics,
                log,
            };
            let m = c.metrics;
            let what = format!(
                "the controller's metrics endpoint (log: {})",
                c.log.display()
            );
            eventually(&what, || async move {
                tokio::net::TcpStream::connect(m).await.ok()
            })
            .await;
            c
        }

        /// Kills the process (as a crash would) and waits for it.
        pub async fn kill(mut self) {
            self.child.kill().await.expect("kill controller");
        }

        /// Sends SIGTERM (as the kubelet does) and waits for the exit, failing after
        /// `CONVERGE` rather than hanging.
        pub async fn terminate(mut self) -> std::process::ExitStatus {
            let pid = self.child.id().expect("running").to_string();
            let sent = tokio::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .await
                .expect("kill -TERM");
            assert!(sent.success());
            tokio::time::timeout(CONVERGE, self.child.wait())
                .await
                .unwrap_or_else(|_| panic!("no exit after SIGTERM; log: {}", self.log.display()))
                .expect("wait")
        }

        /// Connects a subscriber with the gateway's token.
        pub async fn subscribe(&self) -> Watcher {
            let stream = self
                .watch_as(Some(&self.token))
                .await
                .unwrap_or_else(|e| panic!("watch: {e}; log: {}", self.log.display()));
            Watcher {
                stream,
                latest: None,
                log: self.log.clone(),
            }
        }

        /// Opens a Watch stream sending `token` (none: anonymous).
        pub async fn watch_as(
            &self,
            token: Option<&str>,
        ) -> Result<tonic::Streaming<Snapshot>, tonic::Status> {
            let mut client = DiscoveryClient::connect(format!("http://{}", self.grpc))
                .await
                .expect("connect to the controller");
            let mut request = tonic::Request::new(Subscriber {
                cluster: "east1".into(),
                role: "gateway".into(),
                instance: "test".into(),
            });
            if let Some(token) = token {
                let value = format!("Bearer {token}").parse().expect("header value");
                request.metadata_mut().insert("authorization", value);
            }
            client.watch(request).await.map(tonic::Response::into_inner)
        }

        /// GET /metrics.
        pub async fn metrics_text(&self) -> String {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(self.metrics).await.unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    }

    /// A Discovery subscriber.
    pub struct Watcher {
        stream: tonic::Streaming<Snapshot>,
        /// The last snapshot received.
        pub latest: Option<Snapshot>,
        log: PathBuf,
    }

    impl Watcher {
        /// Reads snapshots until one satisfies `pred`.
        pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Snapshot) -> bool) -> Snapshot {
            if let Some(s) = &self.latest
                && pred(s)
            {
                return s.clone();
            }
            let deadline = tokio::time::Instant::now() + CONVERGE;
            loop {
                let next = tokio::time::timeout_at(deadline, self.stream.message()).await;
                let snap = match next {
                    Ok(Ok(Some(s))) => s,
                    Ok(other) => panic!(
                        "snapshot stream ended ({other:?}); log: {}",
                        self.log.display()
                    ),
                    Err(_) => panic!(
                        "timed out waiting for a snapshot where {what}; last: {:#?}; log: {}",
                        self.latest,
                        self.log.display()
                    ),
                };
                self.latest = Some(snap.clone());
                if pred(&snap) {
                    return snap;
                }
            }
        }
    }

    impl Watcher {
        /// The next message of the stream: `Ok(None)` is a clean end.
        pub async fn next(&mut self) -> Result<Option<Snapshot>, tonic::Status> {
            self.stream.message().await
        }

        /// Every snapshot that arrives within `window` (the last one known if none does).
        pub async fn drain(&mut self, window: Duration) -> Vec<Snapshot> {
            let deadline = tokio::time::Instant::now() + window;
            let mut got = Vec::new();
            while let Ok(Ok(Some(s))) =
                tokio::time::timeout_at(deadline, self.stream.message()).await
            {
                self.latest = Some(s.clone());
                got.push(s);
            }
            if got.is_empty() {
                got.extend(self.latest.clone());
            }
            got
        }
    }

    /// Registers `member` with the controller of `own` through a Secret.
    pub async fn register(
        own: &Cluster,
        secret: &str,
        cluster: Option<&str>,
        kubeconfig: &str,
        gateway: Option<&str>,
    ) {
        let mut s = Secret::default();
        s.metadata.name = Some(secret.into());
        s.metadata.labels = Some([("meridian.io/cluster".to_owned(), "true".to_owned())].into());
        let mut ann = std::collections::BTreeMap::new();
        if let Some(c) = cluster {
            ann.insert("meridian.io/cluster-name".to_owned(), c.to_owned());
        }
        if let Some(g) = gateway {
            ann.insert("meridian.io/gateway-address".to_owned(), g.to_owned());
        }
        s.metadata.annotations = Some(ann);
        s.data = Some(
            [(
                "kubeconfig".to_owned(),
                ByteString(kubeconfig.as_bytes().to_vec()),
            )]
            .into(),
        );
        Api::<Secret>::namespaced(own.client(), SYSTEM_NAMESPACE)
            .create(&PostParams::default(), &s)
            .await
            .expect("create registration Secret");
    }

    pub async fn unregister(own: &Cluster, secret: &str) {
        Api::<Secret>::namespaced(own.client(), SYSTEM_NAMESPACE)
            .delete(secret, &DeleteParams::default())
            .await
            .expect("delete registration Secret");
    }

    /// The member's kubeconfig with its client certificate replaced by a bogus token.
    pub fn with_bad_credentials(kubeconfig: &str) -> String {
        let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(kubeconfig).unwrap();
        let user = v["users"][0]["user"].as_mapping_mut().expect("a user");
        user.clear();
        user.insert("token".into(), "not-a-valid-token".into());
        serde_yaml_ng::to_string(&v).unwrap()
    }

    /// The service of a snapshot by hostname.
    pub fn service<'a>(
        s: &'a Snapshot,
        hostname: &str,
    ) -> Option<&'a meridian_api::proto::GlobalService> {
        s.services.iter().find(|g| g.hostname == hostname)
    }
}

mod registration {
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
            .filter(|s| {
                annotation(s, "meridian.io/global-service").as_deref() == Some("default/echo")
            })
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
            service(s, "solo.default.global").is_none()
                && !s.peers.iter().any(|p| p.cluster == "east2")
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
                        .list(
                            &ListParams::default().labels("app.kubernetes.io/managed-by=meridian"),
                        )
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
}

/// Registration Secrets are untrusted input: what a kubeconfig may make the controller do.
mod registration_security {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, SystemTime};

    use k8s_openapi::api::core::v1::Secret;
    use kube::api::Api;
    use meridian_controller::crd::{MemberCluster, Phase};
    use meridian_testbed::{
        ClusterSpec, PodSpec, SYSTEM_NAMESPACE, ServicePortSpec, ServiceSpec, Testbed,
    };

    use crate::support::*;

    /// A credential no status or log may ever show.
    const TOKEN: &str = "s3cr3t-t0ken-DO-NOT-LEAK";

    async fn testbed_of(names: &[&str]) -> Testbed {
        init_tracing();
        let specs: Vec<ClusterSpec> = clusters()
            .into_iter()
            .filter(|c| names.contains(&c.name.as_str()))
            .collect();
        Testbed::start(&specs).await.expect("testbed starts")
    }

    async fn member_in_phase(
        members: &Api<MemberCluster>,
        name: &str,
        phase: Phase,
    ) -> MemberCluster {
        eventually(&format!("MemberCluster {name} {phase}"), || {
            let members = members.clone();
            async move {
                let mc = members.get(name).await.ok()?;
                (mc.status.as_ref()?.phase == phase).then_some(mc)
            }
        })
        .await
    }

    /// An `exec` credential plugin that would create a marker file is refused before anything
    /// runs: no marker, `InvalidCredentials` naming `users[0].user.exec`, no credential shown.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exec_plugin_in_a_registration_secret_is_never_run() {
        let testbed = testbed_of(&["east1"]).await;
        let east1 = testbed.cluster("east1").unwrap();
        let marker = testbed.dir().join("exec-ran");
        let script = testbed.dir().join("credential-plugin.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ntouch '{}'\necho '{{\"apiVersion\":\"client.authentication.k8s.io/v1beta1\",\
                 \"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{TOKEN}\"}}}}'\n",
                marker.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The plugin works: run by hand, it leaves the marker (then removed again).
        let ran = std::process::Command::new(&script).output().unwrap();
        assert!(ran.status.success() && marker.exists());
        std::fs::remove_file(&marker).unwrap();

        // east1's own kubeconfig with its user swapped for the plugin, plus a token the
        // status must not echo.
        let mut kc: serde_yaml_ng::Value = serde_yaml_ng::from_str(east1.kubeconfig()).unwrap();
        let exec: serde_yaml_ng::Value = serde_yaml_ng::from_str(&format!(
            "{{apiVersion: client.authentication.k8s.io/v1beta1, command: '{}', \
             args: ['{TOKEN}'], env: [{{name: TOKEN, value: '{TOKEN}'}}]}}",
            script.display()
        ))
        .unwrap();
        let user = kc["users"][0]["user"].as_mapping_mut().unwrap();
        user.clear();
        user.insert("exec".into(), exec);
        let spare: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&format!("{{name: spare, user: {{token: '{TOKEN}'}}}}"))
                .unwrap();
        kc["users"].as_sequence_mut().unwrap().push(spare);
        register(
            east1,
            "sneaky",
            None,
            &serde_yaml_ng::to_string(&kc).unwrap(),
            None,
        )
        .await;

        let ip = testbed.allocate_address().unwrap();
        let ctl = Controller::start(&testbed, east1, ip, &[]).await;
        let members: Api<MemberCluster> = Api::all(east1.client());
        member_in_phase(&members, "east1", Phase::Synced).await;
        let mc = member_in_phase(&members, "sneaky", Phase::InvalidCredentials).await;
        let message = mc.status.unwrap().message.unwrap_or_default();
        assert!(
            message.contains("users[0].user.exec: exec credential plugins are refused"),
            "{message}"
        );
        assert!(
            !message.contains(TOKEN),
            "the status echoes a credential: {message}"
        );
        assert!(!marker.exists(), "the exec plugin ran");
        let metrics = ctl.metrics_text().await;
        assert!(
            metrics.contains(r#"meridian_registrations_rejected{phase="InvalidCredentials"} 1"#),
            "{metrics}"
        );
        let log = std::fs::read_to_string(&ctl.log).unwrap();
        assert!(!log.contains(TOKEN), "the log echoes a credential");
        ctl.kill().await;
        assert!(!marker.exists(), "the exec plugin ran");
    }

    /// A newer Secret claiming a registered cluster's name does not replace it, even when
    /// its name sorts first: it is reported as `Conflict` naming the owner, and the member
    /// keeps syncing from its own API server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_newer_secret_cannot_take_over_a_registered_cluster() {
        let testbed = testbed_of(&["east1", "west"]).await;
        let east1 = testbed.cluster("east1").unwrap();
        let west = testbed.cluster("west").unwrap();
        west.create_service(
            &ServiceSpec::new("echo").port(ServicePortSpec::http("http", 80).target(8080)),
        )
        .await
        .unwrap();
        west.add_pod(PodSpec::new("echo-w1").app("echo"))
            .await
            .unwrap();
        register(east1, "west-secret", Some("west"), west.kubeconfig(), None).await;

        let ip = testbed.allocate_address().unwrap();
        let ctl = Controller::start(&testbed, east1, ip, &[]).await;
        let members: Api<MemberCluster> = Api::all(east1.client());
        member_in_phase(&members, "west", Phase::Synced).await;

        // Creation times have one-second resolution: the impostor must be strictly newer.
        let secrets: Api<Secret> = Api::namespaced(east1.client(), SYSTEM_NAMESPACE);
        let created = secrets
            .get("west-secret")
            .await
            .unwrap()
            .metadata
            .creation_timestamp
            .unwrap()
            .0;
        let owner_created = SystemTime::from(created);
        while SystemTime::now() < owner_created + Duration::from_millis(1100) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Points at east1's API server: a takeover would change what "west" is.
        register(east1, "a-west", Some("west"), east1.kubeconfig(), None).await;

        let conflict = member_in_phase(&members, "west.a-west", Phase::Conflict).await;
        assert_eq!(
            conflict.spec.secret.as_deref(),
            Some("meridian-system/a-west")
        );
        let message = conflict.status.unwrap().message.unwrap_or_default();
        assert!(
            message.contains("already registered by Secret meridian-system/west-secret"),
            "{message}"
        );
        let mc = members.get("west").await.unwrap();
        assert_eq!(
            mc.spec.secret.as_deref(),
            Some("meridian-system/west-secret")
        );
        let st = eventually("west still synced from its own API server", || {
            let members = members.clone();
            async move {
                let st = members.get("west").await.ok()?.status?;
                (st.phase == Phase::Synced && st.endpoints == 1).then_some(st)
            }
        })
        .await;
        let server = st.server.unwrap_or_default();
        assert!(
            server.starts_with(west.server_url().trim_end_matches('/')),
            "{server}"
        );
        ctl.kill().await;
    }
}

mod outage {
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
}

mod restart {
    use meridian_testbed::{PodSpec, ServicePortSpec, ServiceSpec};

    use crate::support::*;

    /// Hostname, VIP and (port name, listener port) per service.
    type Allocation = Vec<(String, String, Vec<(String, u32)>)>;

    fn allocation(s: &meridian_api::proto::Snapshot) -> Allocation {
        s.services
            .iter()
            .map(|g| {
                (
                    g.hostname.clone(),
                    g.vip.clone(),
                    g.ports
                        .iter()
                        .map(|p| (p.name.clone(), p.listener_port))
                        .collect(),
                )
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_controller_keeps_vips_listener_ports_and_the_snapshot_version() {
        let testbed = testbed().await;
        let east1 = testbed.cluster("east1").unwrap();
        let west = testbed.cluster("west").unwrap();
        for name in ["alpha", "beta", "gamma"] {
            let spec = ServiceSpec::new(name)
                .port(ServicePortSpec::http("http", 80).target(8080))
                .port(ServicePortSpec::tcp("grpc-api", 9000).target(8080));
            east1.create_service(&spec).await.unwrap();
            west.create_service(&spec).await.unwrap();
            west.add_pod(PodSpec::new(format!("{name}-1")).app(name))
                .await
                .unwrap();
        }
        register(
            east1,
            "west",
            None,
            west.kubeconfig(),
            Some("127.0.0.3:15443"),
        )
        .await;

        let ip = testbed.allocate_address().unwrap();
        let ctl = Controller::start(&testbed, east1, ip, &[]).await;
        let complete = |s: &meridian_api::proto::Snapshot| {
            s.services.len() == 3
                && s.services.iter().all(|g| {
                    !g.vip.is_empty()
                        && g.endpoints.len() == 1
                        && g.ports.iter().all(|p| p.listener_port != 0)
                })
        };
        let first = ctl
            .subscribe()
            .await
            .wait_for("three services with VIPs", complete)
            .await;
        let ports: std::collections::BTreeSet<u32> = first
            .services
            .iter()
            .flat_map(|g| g.ports.iter().map(|p| p.listener_port))
            .collect();
        assert_eq!(ports.len(), 6, "listener ports are distinct: {ports:?}");
        ctl.kill().await;

        let ctl = Controller::start(&testbed, east1, ip, &[]).await;
        let second = ctl
            .subscribe()
            .await
            .wait_for("three services with VIPs", complete)
            .await;
        assert_eq!(allocation(&second), allocation(&first));
        assert_eq!(
            second.version, first.version,
            "same inputs, same snapshot version"
        );
        assert_eq!(second, first);
        ctl.kill().await;
    }
}

mod vips {
    //! Issue 11 §2 and §3 through the real binary: one VIP that does not fit is refused on
    //! its own; a Service under a managed name that is not the VIP's is never written.

    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as CoreServiceSpec};
    use kube::api::{Api, PostParams};
    use meridian_controller::catalog::ServiceKey;
    use meridian_controller::crd::GlobalService;
    use meridian_controller::vip::{
        GLOBAL_SERVICE_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, VipKey,
        legacy_managed_service_name, managed_service_name,
    };
    use meridian_testbed::{SYSTEM_NAMESPACE, ServicePortSpec, ServiceSpec, Testbed};

    use crate::support::*;

    /// Only east1: these tests need no other member.
    async fn one_cluster() -> Testbed {
        init_tracing();
        Testbed::start(&clusters()[..1])
            .await
            .expect("testbed starts")
    }

    /// The `VipAllocated` condition of a GlobalService, once its status has one with `reason`.
    async fn vip_condition(gs: &Api<GlobalService>, name: &str, reason: &str) -> (String, String) {
        eventually(
            &format!("{name} VipAllocated reason {reason}"),
            || async move {
                let st = gs.get(name).await.ok()?.status?;
                let c = st.conditions.iter().find(|c| c.type_ == "VipAllocated")?;
                (c.reason == reason).then(|| (c.status.clone(), c.message.clone()))
            },
        )
        .await
    }

    fn metric(text: &str, line_prefix: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse().ok())
    }

    /// A 4-port range: `a` (one port: its VIP and its pin to east1) keeps both after a
    /// 4-port `b` is added; `b` is refused with `PortsExhausted`. Before the fix the whole
    /// allocation failed and the snapshot lost `a`'s VIP and listener ports too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_service_that_does_not_fit_leaves_the_others_their_vips() {
        let testbed = one_cluster().await;
        let east1 = testbed.cluster("east1").unwrap();
        east1
            .create_service(&ServiceSpec::new("a").port(ServicePortSpec::http("http", 80)))
            .await
            .unwrap();
        let ip = testbed.allocate_address().unwrap();
        let ctl =
            Controller::start(&testbed, east1, ip, &["--listener-ports", "15100-15103"]).await;
        let mut sub = ctl.subscribe().await;
        let first = sub
            .wait_for("a has its VIP, its pin and listener ports", |s| {
                service(s, "a.default.global").is_some_and(|a| {
                    !a.vip.is_empty()
                        && a.ports.iter().all(|p| p.listener_port != 0)
                        && a.cluster_vips.iter().any(|c| !c.vip.is_empty())
                })
            })
            .await;
        let a_before = service(&first, "a.default.global").unwrap().clone();

        let mut b = ServiceSpec::new("b");
        for (i, name) in ["p1", "p2", "p3", "p4"].into_iter().enumerate() {
            b = b.port(ServicePortSpec::tcp(name, 9000 + i as u16));
        }
        east1.create_service(&b).await.unwrap();
        let gs: Api<GlobalService> = Api::all(east1.client());
        let (status, message) = vip_condition(&gs, "b.default", "PortsExhausted").await;
        assert_eq!(status, "False");
        assert!(message.contains("15100-15103"), "{message}");
        let with_b = sub
            .wait_for("b is listed", |s| service(s, "b.default.global").is_some())
            .await;
        // Every snapshot from now on keeps a's VIP and ports.
        for snap in
            std::iter::once(with_b).chain(sub.drain(std::time::Duration::from_secs(2)).await)
        {
            let a = service(&snap, "a.default.global").unwrap();
            assert_eq!(a, &a_before, "a keeps its VIP, pin and listener ports");
            let b = service(&snap, "b.default.global").unwrap();
            assert!(b.vip.is_empty() && b.ports.iter().all(|p| p.listener_port == 0));
        }
        let a_status = gs.get("a.default").await.unwrap().status.unwrap();
        assert_eq!(a_status.vip.as_deref(), Some(a_before.vip.as_str()));
        let text = ctl.metrics_text().await;
        assert_eq!(
            metric(&text, r#"meridian_vip_refusals{reason="PortsExhausted"}"#),
            Some(2.0),
            "b's VIP and its pin: {text}"
        );
        ctl.kill().await;
    }

    /// Managed Service names: a Service that carries the name the controller computes for
    /// `default/c` but is not `c`'s (not managed, annotated for another service) is never
    /// written, and `c` is refused with `NameConflict`; a Service written by an earlier
    /// version under the 24-bit name keeps its name and ClusterIP (migration).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_service_under_a_vips_name_that_is_not_its_own_is_not_patched() {
        let testbed = one_cluster().await;
        let east1 = testbed.cluster("east1").unwrap();
        let services: Api<Service> = Api::namespaced(east1.client(), SYSTEM_NAMESPACE);
        let object = |name: String, annotation: &str, managed: bool, target: i32| Service {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name),
                labels: managed.then(|| {
                    BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned())])
                }),
                annotations: Some(BTreeMap::from([(
                    GLOBAL_SERVICE_ANNOTATION.to_owned(),
                    annotation.to_owned(),
                )])),
                ..Default::default()
            },
            spec: Some(CoreServiceSpec {
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    target_port: Some(
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(target),
                    ),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let taken = managed_service_name(&VipKey::global(ServiceKey::new("default", "c")));
        let foreign = services
            .create(
                &PostParams::default(),
                &object(taken.clone(), "default/other", false, 1234),
            )
            .await
            .unwrap();
        let legacy = legacy_managed_service_name(&VipKey::global(ServiceKey::new("default", "e")));
        let old = services
            .create(
                &PostParams::default(),
                &object(legacy.clone(), "default/e", true, 15150),
            )
            .await
            .unwrap();
        for name in ["c", "e"] {
            east1
                .create_service(&ServiceSpec::new(name).port(ServicePortSpec::http("http", 80)))
                .await
                .unwrap();
        }
        let ip = testbed.allocate_address().unwrap();
        let ctl = Controller::start(&testbed, east1, ip, &[]).await;
        let gs: Api<GlobalService> = Api::all(east1.client());
        let (status, message) = vip_condition(&gs, "c.default", "NameConflict").await;
        assert_eq!(status, "False");
        assert!(
            message.contains(&taken) && message.contains("belongs to other.default"),
            "{message}"
        );
        let snap = ctl
            .subscribe()
            .await
            .wait_for("e has its VIP", |s| {
                service(s, "e.default.global").is_some_and(|e| !e.vip.is_empty())
            })
            .await;
        // The legacy Service is e's: same ClusterIP, same listener port, same name.
        let e = service(&snap, "e.default.global").unwrap();
        let old_ip = old.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
        assert_eq!(e.vip, old_ip);
        assert_eq!(e.ports[0].listener_port, 15150);
        assert!(services.get_opt(&legacy).await.unwrap().is_some());
        let c = service(&snap, "c.default.global").unwrap();
        assert!(c.vip.is_empty(), "c has no VIP: {c:?}");
        // The foreign Service is exactly as it was.
        let now = services.get(&taken).await.unwrap();
        assert_eq!(
            now.metadata.resource_version,
            foreign.metadata.resource_version
        );
        assert_eq!(
            now.metadata.annotations.as_ref().unwrap()[GLOBAL_SERVICE_ANNOTATION],
            "default/other"
        );
        let text = ctl.metrics_text().await;
        assert_eq!(
            metric(&text, r#"meridian_vip_refusals{reason="NameConflict"}"#),
            Some(1.0),
            "{text}"
        );
        ctl.kill().await;
    }
}

mod endpoint_targets {
    //! Issue 11 §5 through the real binary and a real API server: a hand-written endpoint of
    //! a selectorless Service whose `targetRef` names one of the namespace's own Pods is a
    //! tunnel target only at that Pod's IP (`status.podIP`, as the member reports it).

    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{
        EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Service,
        ServicePort, ServiceSpec as CoreServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::api::{Api, PostParams};
    use meridian_controller::catalog::EXPORT_LABEL;
    use meridian_controller::crd::GlobalService;
    use meridian_testbed::{PodHandle, PodSpec, Testbed};

    use crate::support::*;

    /// An address naming `pod` (and its node: without one the status write fails today, a
    /// separate bug with an empty locality).
    fn address(ip: String, pod: &PodHandle) -> EndpointAddress {
        EndpointAddress {
            ip,
            node_name: Some(pod.node().into()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(pod.namespace().into()),
                name: Some(pod.name().into()),
                ..ObjectReference::default()
            }),
            ..EndpointAddress::default()
        }
    }

    /// `manual` lists its own pod at its IP, and the same pod's name next to a pod of
    /// another namespace's IP: only the first is in the snapshot; the second is counted as
    /// `address_not_pod_ip` and named in `Ready`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hand_written_endpoint_is_a_target_only_at_its_pods_ip() {
        init_tracing();
        // On core/v1 Endpoints, the API these hand-written objects use.
        let east1 = clusters()
            .remove(0)
            .endpoint_api(meridian_testbed::EndpointApi::Endpoints);
        let testbed = Testbed::start(&[east1]).await.expect("testbed starts");
        let east1 = testbed.cluster("east1").unwrap();
        let own = east1.add_pod(PodSpec::new("own").app("own")).await.unwrap();
        let victim = east1
            .add_pod(PodSpec::new("victim").namespace("other").app("victim"))
            .await
            .unwrap();
        let meta = || ObjectMeta {
            name: Some("manual".into()),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([(EXPORT_LABEL.into(), "true".into())])),
            ..ObjectMeta::default()
        };
        Api::<Service>::namespaced(east1.client(), "default")
            .create(
                &PostParams::default(),
                &Service {
                    metadata: meta(),
                    spec: Some(CoreServiceSpec {
                        ports: Some(vec![ServicePort {
                            name: Some("tcp".into()),
                            port: 80,
                            ..ServicePort::default()
                        }]),
                        ..CoreServiceSpec::default()
                    }),
                    ..Service::default()
                },
            )
            .await
            .unwrap();
        Api::<Endpoints>::namespaced(east1.client(), "default")
            .create(
                &PostParams::default(),
                &Endpoints {
                    metadata: ObjectMeta {
                        labels: None,
                        ..meta()
                    },
                    subsets: Some(vec![EndpointSubset {
                        addresses: Some(vec![
                            address(own.pod_ip().to_string(), &own),
                            address(victim.pod_ip().to_string(), &own),
                        ]),
                        ports: Some(vec![EndpointPort {
                            name: Some("tcp".into()),
                            port: 8080,
                            ..EndpointPort::default()
                        }]),
                        ..EndpointSubset::default()
                    }]),
                },
            )
            .await
            .unwrap();
        let ip = testbed.allocate_address().unwrap();
        let ctl = Controller::start(&testbed, east1, ip, &[]).await;
        let mut sub = ctl.subscribe().await;
        let snap = sub
            .wait_for("manual has its own pod's endpoint", |s| {
                service(s, "manual.default.global").is_some_and(|g| !g.endpoints.is_empty())
            })
            .await;
        let g = service(&snap, "manual.default.global").unwrap();
        let addresses: Vec<&str> = g.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addresses, [own.pod_ip().to_string()]);
        let gs: Api<GlobalService> = Api::all(east1.client());
        let message = eventually("manual's Ready names the skipped endpoint", || async {
            let st = gs.get("manual.default").await.ok()?.status?;
            let c = st.conditions.iter().find(|c| c.type_ == "Ready")?;
            c.message.contains("skipped").then(|| c.message.clone())
        })
        .await;
        assert!(
            message.contains("1 endpoint(s) skipped (address_not_pod_ip)"),
            "{message}"
        );
        let text = ctl.metrics_text().await;
        assert!(
            text.lines().any(
                |l| l == r#"meridian_catalog_skipped_endpoints{reason="address_not_pod_ip"} 1"#
            ),
            "{text}"
        );
        ctl.kill().await;
    }
}

mod policy {
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
}

mod certificates {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};
    use meridian_api::proto::SignCertificateRequest;
    use meridian_api::proto::certificates_client::CertificatesClient;
    use meridian_identity::ca::INTERMEDIATE_TTL;
    use meridian_identity::{CertificateRequest, Identity, RootCa};
    use meridian_testbed::SYSTEM_NAMESPACE;
    use meridian_testbed::mesh::{
        CONTROLLER_AUDIENCE, GATEWAY_SERVICE_ACCOUNT, service_account_token,
    };

    use crate::support::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn gateway_csrs_are_signed_with_the_mesh_ca_from_its_secret() {
        let testbed = testbed().await;
        let east1 = testbed.cluster("east1").unwrap();
        let ip = testbed.allocate_address().unwrap();
        let ctl = Controller::start(&testbed, east1, ip, &[]).await;
        let mut client = CertificatesClient::connect(format!("http://{}", ctl.grpc))
            .await
            .unwrap();
        let identity = Identity::gateway("meridian.local", "east1").unwrap();
        let csr = CertificateRequest::generate(&identity).unwrap();
        let token = ctl.token.clone();
        let signed_in = move |token: &str| {
            let mut r = tonic::Request::new(SignCertificateRequest {
                csr_pem: csr.pem().to_owned(),
                cluster: "east1".into(),
                ttl_seconds: 0,
            });
            let value = format!("Bearer {token}").parse().unwrap();
            r.metadata_mut().insert("authorization", value);
            r
        };
        let request = || signed_in(&token);

        // Only the gateway ServiceAccount may ask: no token, a bad token or another
        // account's token are refused before anything is signed.
        let anonymous = SignCertificateRequest {
            csr_pem: String::new(),
            cluster: "east1".into(),
            ttl_seconds: 0,
        };
        let err = client.sign_certificate(anonymous).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
        let err = client
            .sign_certificate(signed_in("not-a-token"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
        // The gateway's own token, but for the API server's default audience.
        let default_audience = service_account_token(east1, GATEWAY_SERVICE_ACCOUNT, None)
            .await
            .unwrap();
        let err = client
            .sign_certificate(signed_in(&default_audience))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
        assert!(err.message().contains(AUDIENCE_REFUSED), "{err}");
        let intruder = service_account_token(east1, "intruder", Some(CONTROLLER_AUDIENCE))
            .await
            .unwrap();
        let err = client
            .sign_certificate(signed_in(&intruder))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
        assert!(
            err.message()
                .contains("system:serviceaccount:meridian-system:intruder"),
            "{err}"
        );

        // No CA yet: a clear refusal.
        let err = client.sign_certificate(request()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");

        // `meridianctl ca issue-intermediate` writes this Secret; the controller picks it up.
        let root = RootCa::generate("meridian.local").unwrap();
        let ca = root
            .issue_intermediate("meridian.local", "east1", INTERMEDIATE_TTL)
            .unwrap();
        let secrets = Api::<Secret>::namespaced(east1.client(), SYSTEM_NAMESPACE);

        // The one-tier layout (the mesh root key in the member) is refused, naming the
        // migration, rather than used to sign.
        let mut legacy = meridian_controller::certificates::ca_secret(&ca, SYSTEM_NAMESPACE);
        legacy.data = Some(
            [
                ("ca.crt", root.cert_pem().to_owned()),
                ("ca.key", root.key_pem()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), k8s_openapi::ByteString(v.into_bytes())))
            .collect(),
        );
        secrets
            .create(&PostParams::default(), &legacy)
            .await
            .unwrap();
        let err = eventually("the one-tier Secret is read", || {
            let mut client = client.clone();
            let req = request();
            async move {
                let err = client.sign_certificate(req).await.unwrap_err();
                err.message().contains("one-tier").then_some(err)
            }
        })
        .await;
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
        assert!(err.message().contains("issue-intermediate"), "{err}");
        secrets
            .delete("meridian-ca", &Default::default())
            .await
            .unwrap();

        let secret = meridian_controller::certificates::ca_secret(&ca, SYSTEM_NAMESPACE);
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let resp = eventually("the CA is picked up", || {
            let mut client = client.clone();
            let req = request();
            async move { client.sign_certificate(req).await.ok() }
        })
        .await
        .into_inner();
        assert_eq!(resp.root_pem, root.cert_pem());
        let certs =
            meridian_identity::credentials::parse_certs("chain", &resp.cert_chain_pem).unwrap();
        assert_eq!(
            meridian_identity::identity::identities_in(&certs[0]).unwrap(),
            vec![identity]
        );
        assert_eq!(
            &certs[1],
            ca.cert_der(),
            "leaf + the cluster's intermediate"
        );
        ctl.kill().await;
    }
}

mod discovery_access {
    use meridian_testbed::mesh::{
        CONTROLLER_AUDIENCE, DNS_SERVICE_ACCOUNT, GATEWAY_SERVICE_ACCOUNT, service_account_token,
    };
    use meridian_testbed::{ClusterSpec, Testbed};

    use crate::support::*;

    /// One member is enough: these tests are about who may open the stream.
    async fn one_cluster() -> Testbed {
        init_tracing();
        Testbed::start(&[ClusterSpec::new("east1", "us-east1", ["us-east1-a"])])
            .await
            .expect("testbed starts")
    }

    /// `meridian_grpc_refusals_total{service="Watch",reason}` (0 when absent).
    async fn refusals(ctl: &Controller, reason: &str) -> u64 {
        let line =
            format!("meridian_grpc_refusals_total{{service=\"Watch\",reason=\"{reason}\"}} ");
        let text = ctl.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_needs_a_gateway_or_dns_token_for_the_controller_audience() {
        let testbed = one_cluster().await;
        let east1 = testbed.cluster("east1").unwrap();
        let ip = testbed.allocate_address().unwrap();
        let ctl = Controller::start(&testbed, east1, ip, &[]).await;

        // Anonymous: no token at all.
        let err = ctl.watch_as(None).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
        assert!(
            err.message().contains("needs a ServiceAccount token"),
            "{err}"
        );
        // Something that is no token the API server issued.
        let err = ctl.watch_as(Some("not-a-token")).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
        assert!(err.message().contains("not accepted"), "{err}");
        // The gateway's own token, but for the API server's default audience (what a pod's
        // automounted token is): refused, so tokens minted for other uses do not work here.
        let default_audience = service_account_token(east1, GATEWAY_SERVICE_ACCOUNT, None)
            .await
            .unwrap();
        let err = ctl.watch_as(Some(&default_audience)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
        assert!(err.message().contains(AUDIENCE_REFUSED), "{err}");
        // A valid token for the right audience, of another ServiceAccount.
        let intruder = service_account_token(east1, "intruder", Some(CONTROLLER_AUDIENCE))
            .await
            .unwrap();
        let err = ctl.watch_as(Some(&intruder)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
        assert!(
            err.message()
                .contains("system:serviceaccount:meridian-system:intruder may not call Watch"),
            "{err}"
        );
        assert!(
            !err.message().contains(&intruder),
            "the token is not echoed"
        );
        assert_eq!(refusals(&ctl, "unauthenticated").await, 3);
        assert_eq!(refusals(&ctl, "permission_denied").await, 1);

        // The gateway's and the DNS server's tokens for the controller's audience are served.
        let mut gateway = ctl.subscribe().await;
        gateway.wait_for("a first snapshot", |_| true).await;
        let dns = service_account_token(east1, DNS_SERVICE_ACCOUNT, Some(CONTROLLER_AUDIENCE))
            .await
            .unwrap();
        let mut stream = ctl.watch_as(Some(&dns)).await.unwrap();
        assert!(stream.message().await.unwrap().is_some());
        ctl.kill().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subscribers_over_the_cap_are_refused_and_counted() {
        let testbed = one_cluster().await;
        let east1 = testbed.cluster("east1").unwrap();
        let ip = testbed.allocate_address().unwrap();
        let ctl = Controller::start(&testbed, east1, ip, &["--max-subscribers", "2"]).await;
        let mut first = ctl.subscribe().await;
        first.wait_for("a first snapshot", |_| true).await;
        let second = ctl.subscribe().await;
        let err = ctl.watch_as(Some(&ctl.token)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
        assert!(err.message().contains("--max-subscribers"), "{err}");
        assert_eq!(refusals(&ctl, "subscriber_limit").await, 1);
        // A closed stream frees its slot.
        drop(second);
        let mut third = eventually("a slot after a stream closed", || async {
            ctl.watch_as(Some(&ctl.token)).await.ok()
        })
        .await;
        assert!(third.message().await.unwrap().is_some());
        ctl.kill().await;
    }
}

mod leader {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::Timestamp;
    use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
    use meridian_controller::crd::GlobalService;
    use meridian_testbed::{PodSpec, SYSTEM_NAMESPACE, ServicePortSpec, ServiceSpec};

    use crate::support::*;

    const LEASE: &str = "meridian-controller";

    /// `meridian_controller_leader` of a controller.
    async fn leads(ctl: &Controller) -> Option<bool> {
        let text = ctl.metrics_text().await;
        text.lines().find_map(|l| match l {
            "meridian_controller_leader 1" => Some(true),
            "meridian_controller_leader 0" => Some(false),
            _ => None,
        })
    }

    async fn holder(leases: &Api<Lease>) -> Option<String> {
        leases.get(LEASE).await.ok()?.spec?.holder_identity
    }

    async fn managed_services(east1: &meridian_testbed::Cluster) -> usize {
        Api::<Service>::namespaced(east1.client(), SYSTEM_NAMESPACE)
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=meridian"))
            .await
            .unwrap()
            .items
            .len()
    }

    /// A TCP relay to `cluster`'s API server on the server's own address (so its
    /// certificate still matches), and a kubeconfig pointing at it.
    async fn api_relay(
        cluster: &meridian_testbed::Cluster,
        port: u16,
    ) -> (meridian_testbed::delay::DelayRelay, String) {
        let mut kubeconfig: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(cluster.kubeconfig()).unwrap();
        let server = kubeconfig["clusters"][0]["cluster"]["server"]
            .as_str()
            .unwrap()
            .to_owned();
        let api: std::net::SocketAddr = server.trim_start_matches("https://").parse().unwrap();
        let relay = eventually("the API relay listening", || async move {
            meridian_testbed::delay::DelayRelay::start(
                std::net::SocketAddr::new(api.ip(), port),
                api,
                Duration::ZERO,
            )
            .await
            .ok()
        })
        .await;
        kubeconfig["clusters"][0]["cluster"]["server"] = format!("https://{}", relay.addr()).into();
        (relay, serde_yaml_ng::to_string(&kubeconfig).unwrap())
    }

    /// Managed VIP Services by (global service, pinned cluster or ""), with their names: a
    /// duplicate would list two names under one key.
    async fn vip_services(
        east1: &meridian_testbed::Cluster,
    ) -> BTreeMap<(String, String), Vec<String>> {
        let mut out: BTreeMap<_, Vec<String>> = BTreeMap::new();
        for s in Api::<Service>::namespaced(east1.client(), SYSTEM_NAMESPACE)
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=meridian"))
            .await
            .unwrap()
            .items
        {
            let annotations = s.metadata.annotations.clone().unwrap_or_default();
            let of = |k: &str| annotations.get(k).cloned().unwrap_or_default();
            out.entry((
                of("meridian.io/global-service"),
                of("meridian.io/pinned-cluster"),
            ))
            .or_default()
            .push(s.metadata.name.unwrap_or_default());
        }
        out
    }

    /// The leader's own API server cut off (its connections through a relay closed and
    /// refused): it steps down, the follower takes the Lease once it expires and writes
    /// for a service that appears meanwhile; after healing, the old leader follows — one
    /// leader, and one VIP Service per global service.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_cut_off_from_its_api_server_steps_down_and_no_vip_service_is_doubled() {
        let testbed = testbed().await;
        let east1 = testbed.cluster("east1").unwrap();
        let http = ServicePortSpec::http("http", 80).target(8080);
        east1
            .create_service(&ServiceSpec::new("alpha").port(http.clone()))
            .await
            .unwrap();
        east1
            .add_pod(PodSpec::new("alpha-1").app("alpha"))
            .await
            .unwrap();
        let leases: Api<Lease> = Api::namespaced(east1.client(), SYSTEM_NAMESPACE);
        let lease_args = |id: &'static str| ["--leader-identity", id, "--lease-duration", "6s"];

        // a reaches the API server only through the relay; it starts first and leads.
        let (relay, kubeconfig) = api_relay(east1, 0).await;
        let port = relay.addr().port();
        let dir = std::env::temp_dir().join(format!("meridian-cutoff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kubeconfig");
        std::fs::write(&path, kubeconfig).unwrap();
        let a_ip = testbed.allocate_address().unwrap();
        let a =
            Controller::start_with_kubeconfig(&testbed, east1, a_ip, &path, &lease_args("a")).await;
        eventually("a leads", || {
            let leases = leases.clone();
            let a = &a;
            async move {
                (holder(&leases).await.as_deref() == Some("a") && leads(a).await == Some(true))
                    .then_some(())
            }
        })
        .await;
        let b_ip = testbed.allocate_address().unwrap();
        let b = Controller::start(&testbed, east1, b_ip, &lease_args("b")).await;
        // alpha's VIP Services: the global one and the one pinned to east1.
        let before = eventually("alpha's VIP Services written by a", || async {
            let s = vip_services(east1).await;
            (s.len() == 2).then_some(s)
        })
        .await;
        assert_eq!(leads(&b).await, Some(false), "b follows");

        // Cut a off its API server.
        drop(relay);
        let cut = tokio::time::Instant::now();
        eventually("b takes the Lease", || {
            let leases = leases.clone();
            let b = &b;
            async move {
                (holder(&leases).await.as_deref() == Some("b") && leads(b).await == Some(true))
                    .then_some(())
            }
        })
        .await;
        let took_over = cut.elapsed();
        eventually("a stepped down", || async {
            (leads(&a).await == Some(false)).then_some(())
        })
        .await;
        east1
            .create_service(&ServiceSpec::new("beta").port(http))
            .await
            .unwrap();
        eventually("beta's VIP Services written by b", || async {
            (vip_services(east1).await.len() == 4).then_some(())
        })
        .await;

        // Heal: the relay is back on the same port; a reconnects and follows.
        let (_healed, _) = api_relay(east1, port).await;
        let mut a_sub = a.subscribe().await;
        a_sub
            .wait_for("a serves beta with the VIP b allocated", |s| {
                service(s, "beta.default.global").is_some_and(|g| !g.vip.is_empty())
            })
            .await;
        let (la, lb) = (leads(&a).await, leads(&b).await);
        let services = vip_services(east1).await;
        println!(
            "leader cut off: b led {took_over:?} after the cut (lease 6 s); after healing a leads {la:?}, b leads {lb:?}, VIP Services {services:?}"
        );
        assert_eq!((la, lb), (Some(false), Some(true)), "one leader: b");
        assert_eq!(holder(&leases).await.as_deref(), Some("b"));
        assert!(
            services.len() == 4 && services.values().all(|names| names.len() == 1),
            "one VIP Service per global service and pin: {services:?}"
        );
        for (key, names) in &before {
            assert_eq!(services.get(key), Some(names), "alpha's VIP Services kept");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_leader_writes_and_a_follower_takes_over_when_it_dies() {
        let testbed = testbed().await;
        let east1 = testbed.cluster("east1").unwrap();
        let http = ServicePortSpec::http("http", 80).target(8080);
        east1
            .create_service(&ServiceSpec::new("alpha").port(http.clone()))
            .await
            .unwrap();
        east1
            .add_pod(PodSpec::new("alpha-1").app("alpha"))
            .await
            .unwrap();

        // Someone else holds the Lease and keeps renewing it. Replicas judge expiry by the
        // Lease's own duration: 10 s, so a renewal delayed on a loaded machine does not
        // hand the Lease over while the test checks that neither replica leads.
        let leases: Api<Lease> = Api::namespaced(east1.client(), SYSTEM_NAMESPACE);
        let now = || MicroTime(Timestamp::now());
        let mut lease = Lease::default();
        lease.metadata.name = Some(LEASE.into());
        lease.spec = Some(LeaseSpec {
            holder_identity: Some("intruder".into()),
            lease_duration_seconds: Some(10),
            acquire_time: Some(now()),
            renew_time: Some(now()),
            ..LeaseSpec::default()
        });
        leases.create(&PostParams::default(), &lease).await.unwrap();
        let renewer = {
            let leases = leases.clone();
            tokio::spawn(async move {
                loop {
                    let patch = serde_json::json!({"spec": {"renewTime": now()}});
                    let _ = leases
                        .patch(LEASE, &PatchParams::default(), &Patch::Merge(&patch))
                        .await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            })
        };

        // The leader renews a third of the duration before expiry: 6 s leaves 2 s for a
        // renewal on a loaded machine before a follower may take over.
        let lease_args = |id: &'static str| ["--leader-identity", id, "--lease-duration", "6s"];
        let a_ip = testbed.allocate_address().unwrap();
        let b_ip = testbed.allocate_address().unwrap();
        let a = Controller::start(&testbed, east1, a_ip, &lease_args("a")).await;
        let b = Controller::start(&testbed, east1, b_ip, &lease_args("b")).await;
        let (mut a_sub, mut b_sub) = (a.subscribe().await, b.subscribe().await);

        // Neither leads: both serve the catalog, neither writes (the leader applies the VIP
        // Service before it publishes a snapshot with the service, so none means none).
        for sub in [&mut a_sub, &mut b_sub] {
            let snap = sub
                .wait_for("alpha in the catalog", |s| {
                    service(s, "alpha.default.global").is_some()
                })
                .await;
            let g = service(&snap, "alpha.default.global").unwrap();
            assert_eq!(g.vip, "", "a follower allocates no VIP");
            assert!(g.ports.iter().all(|p| p.listener_port == 0));
        }
        assert_eq!(managed_services(east1).await, 0);
        let gs_api: Api<GlobalService> = Api::all(east1.client());
        assert!(
            gs_api.get("alpha.default").await.is_err(),
            "no status written"
        );
        assert_eq!(leads(&a).await, Some(false));
        assert_eq!(leads(&b).await, Some(false));
        assert_eq!(holder(&leases).await.as_deref(), Some("intruder"));

        // The intruder stops renewing: one of the two takes over and writes.
        renewer.abort();
        let (leader, follower) = eventually("one controller leads", || {
            let leases = leases.clone();
            let (a, b) = (&a, &b);
            async move {
                let h = holder(&leases).await?;
                let (la, lb) = (leads(a).await?, leads(b).await?);
                match (h.as_str(), la, lb) {
                    ("a", true, false) => Some(("a", "b")),
                    ("b", false, true) => Some(("b", "a")),
                    _ => None,
                }
            }
        })
        .await;
        // A VIP once the service and its pin are fully allocated (the follower may see the
        // leader's managed Services one by one).
        let vip_of = |s: &meridian_api::proto::Snapshot, host: &str| {
            service(s, host)
                .filter(|g| {
                    !g.cluster_vips.is_empty()
                        && g.cluster_vips.iter().all(|c| !c.vip.is_empty())
                        && g.ports.iter().all(|p| p.listener_port != 0)
                })
                .map(|g| g.vip.clone())
                .filter(|v| !v.is_empty())
        };
        let a_vip = a_sub
            .wait_for("alpha with a VIP", |s| {
                vip_of(s, "alpha.default.global").is_some()
            })
            .await;
        let b_vip = b_sub
            .wait_for("alpha with a VIP", |s| {
                vip_of(s, "alpha.default.global").is_some()
            })
            .await;
        // The follower serves what the leader applied: the same VIPs and listeners.
        let a_alpha = service(&a_vip, "alpha.default.global").unwrap();
        let b_alpha = service(&b_vip, "alpha.default.global").unwrap();
        assert_eq!(a_alpha.vip, b_alpha.vip);
        assert_eq!(a_alpha.ports, b_alpha.ports);
        assert_eq!(a_alpha.cluster_vips, b_alpha.cluster_vips);
        assert_eq!(a_alpha.cluster_vips.len(), 1, "pinned to east1");
        eventually("GlobalService alpha.default written", || {
            let gs_api = gs_api.clone();
            async move { gs_api.get("alpha.default").await.ok() }
        })
        .await;

        // The leader dies without releasing the Lease; the follower takes over once it
        // expires and allocates for a service that appears meanwhile.
        let (dead, survivor, mut survivor_sub) = if leader == "a" {
            (a, b, b_sub)
        } else {
            (b, a, a_sub)
        };
        let killed = Instant::now();
        dead.kill().await;
        east1
            .create_service(&ServiceSpec::new("beta").port(http))
            .await
            .unwrap();
        let snap = survivor_sub
            .wait_for("beta with a VIP from the new leader", |s| {
                vip_of(s, "beta.default.global").is_some()
            })
            .await;
        eprintln!(
            "takeover: {follower} allocated for a new service {:?} after the leader was killed (lease 6 s)",
            killed.elapsed()
        );
        assert_eq!(
            vip_of(&snap, "alpha.default.global").as_deref(),
            Some(a_alpha.vip.as_str()),
            "the new leader keeps the old allocation"
        );
        assert_eq!(
            service(&snap, "alpha.default.global").unwrap().ports,
            a_alpha.ports
        );
        assert_eq!(holder(&leases).await.as_deref(), Some(follower));
        assert_eq!(leads(&survivor).await, Some(true));

        // A replica that joins as a follower never hands out a snapshot without the VIPs:
        // its very first one already has what the leader applied.
        let c_ip = testbed.allocate_address().unwrap();
        let c = Controller::start(&testbed, east1, c_ip, &lease_args("c")).await;
        let mut c_sub = c.subscribe().await;
        let first = c_sub.next().await.unwrap().expect("a first snapshot");
        assert_eq!(
            vip_of(&first, "alpha.default.global").as_deref(),
            Some(a_alpha.vip.as_str()),
            "{first:#?}"
        );
        assert_eq!(leads(&c).await, Some(false));
        c.kill().await;
        eventually("GlobalService beta.default written", || {
            let gs_api = gs_api.clone();
            async move { gs_api.get("beta.default").await.ok() }
        })
        .await;
        survivor.kill().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_ends_the_streams_and_releases_the_lease() {
        let testbed = testbed().await;
        let east1 = testbed.cluster("east1").unwrap();
        let leases: Api<Lease> = Api::namespaced(east1.client(), SYSTEM_NAMESPACE);
        let ip = testbed.allocate_address().unwrap();
        let ctl = Controller::start(&testbed, east1, ip, &["--leader-identity", "only"]).await;
        eventually("the only replica leads", || {
            let leases = leases.clone();
            let ctl = &ctl;
            async move {
                (holder(&leases).await.as_deref() == Some("only") && leads(ctl).await?)
                    .then_some(())
            }
        })
        .await;
        let mut sub = ctl.subscribe().await;
        sub.wait_for("a first snapshot", |_| true).await;

        let asked = Instant::now();
        let status = ctl.terminate().await;
        eprintln!(
            "controller exited {:?} after SIGTERM with a Watch stream open",
            asked.elapsed()
        );
        assert!(status.success(), "{status:?}");
        // The stream was ended by the server, not cut: a clean end of stream.
        let end = tokio::time::timeout(CONVERGE, sub.next()).await;
        assert!(matches!(end, Ok(Ok(None))), "{end:?}");
        // The Lease is free for a successor at once.
        assert_eq!(holder(&leases).await, None);
    }
}

mod slices {
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
        let text = ctl.metrics_text().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(
                    r#"meridian_watch_events_total{cluster="east1",resource="EndpointSlice"} "#,
                )
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
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
}
