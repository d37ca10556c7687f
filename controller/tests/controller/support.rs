use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use meridian_api::proto::discovery_client::DiscoveryClient;
use meridian_api::proto::{Snapshot, Subscriber};
use meridian_testbed::mesh::{CONTROLLER_AUDIENCE, GATEWAY_SERVICE_ACCOUNT, service_account_token};
use meridian_testbed::{Cluster, ClusterSpec, EndpointApi, SYSTEM_NAMESPACE, Testbed};

/// How long anything may take to converge before a test fails.
pub(crate) const CONVERGE: Duration = Duration::from_secs(60);
/// What the API server says when a token's audience is not the one asked for.
pub(crate) const AUDIENCE_REFUSED: &str = "is invalid for the target audiences";

pub(crate) use meridian_testbed::init_tracing;
pub(crate) use meridian_testbed::metrics::sample;

/// Two zones of one region (two clusters, on EndpointSlices) and one other region (on
/// core/v1 Endpoints).
pub(crate) fn clusters() -> Vec<ClusterSpec> {
    vec![
        ClusterSpec::new("east1", "us-east1", ["us-east1-a"]).max_endpoints_per_slice(3),
        ClusterSpec::new("east2", "us-east1", ["us-east1-b"]),
        ClusterSpec::new("west", "us-west1", ["us-west1-a"]).endpoint_api(EndpointApi::Endpoints),
    ]
}

/// The testbed of every cluster of [`clusters`].
pub(crate) async fn testbed() -> Testbed {
    init_tracing();
    Testbed::start(&clusters()).await.expect("testbed starts")
}

/// The testbed of the clusters of [`clusters`] named in `names`.
pub(crate) async fn testbed_of(names: &[&str]) -> Testbed {
    init_tracing();
    let specs: Vec<ClusterSpec> = clusters()
        .into_iter()
        .filter(|c| names.contains(&c.name.as_str()))
        .collect();
    Testbed::start(&specs).await.expect("testbed starts")
}

/// Polls `f` until it yields `Some`, or fails naming `what`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    meridian_api::testing::eventually(what, CONVERGE, Duration::from_millis(200), f).await
}

/// The controller binary, running against `cluster`.
pub(crate) struct Controller {
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
    pub(crate) async fn start(
        testbed: &Testbed,
        cluster: &Cluster,
        ip: Ipv4Addr,
        extra: &[&str],
    ) -> Self {
        Self::start_with_kubeconfig(testbed, cluster, ip, cluster.kubeconfig_path(), extra).await
    }

    /// [`Controller::start`] reaching its own cluster through `kubeconfig` (a path through a
    /// proxy the test can cut).
    pub(crate) async fn start_with_kubeconfig(
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
    pub(crate) async fn kill(mut self) {
        self.child.kill().await.expect("kill controller");
    }

    /// Sends SIGTERM (as the kubelet does) and waits for the exit, failing after
    /// `CONVERGE` rather than hanging.
    pub(crate) async fn terminate(mut self) -> std::process::ExitStatus {
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
    pub(crate) async fn subscribe(&self) -> Watcher {
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
    pub(crate) async fn watch_as(
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

    /// Opens `DeltaWatch` as the east1 gateway holding nothing, with `token` as its bearer
    /// token (none when `None`).
    pub(crate) async fn delta_watch_as(
        &self,
        token: Option<&str>,
    ) -> Result<tonic::Streaming<meridian_api::proto::DeltaResponse>, tonic::Status> {
        let mut client = DiscoveryClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect to the controller");
        let first = meridian_api::proto::DeltaRequest {
            subscriber: Some(Subscriber {
                cluster: "east1".into(),
                role: "gateway".into(),
                instance: "test".into(),
            }),
            ..Default::default()
        };
        // The request stream stays open: the controller ends a stream whose requests end.
        let requests = futures::stream::iter([first]).chain(futures::stream::pending());
        let mut request = tonic::Request::new(requests);
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().expect("header value");
            request.metadata_mut().insert("authorization", value);
        }
        client
            .delta_watch(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// GET /metrics.
    pub(crate) async fn metrics_text(&self) -> String {
        meridian_testbed::metrics::scrape(self.metrics)
            .await
            .unwrap()
    }
}

/// A Discovery subscriber.
pub(crate) struct Watcher {
    stream: tonic::Streaming<Snapshot>,
    /// The last snapshot received.
    pub latest: Option<Snapshot>,
    log: PathBuf,
}

impl Watcher {
    /// Reads snapshots until one satisfies `pred`.
    pub(crate) async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&Snapshot) -> bool,
    ) -> Snapshot {
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
    pub(crate) async fn next(&mut self) -> Result<Option<Snapshot>, tonic::Status> {
        self.stream.message().await
    }

    /// Every snapshot that arrives within `window` (the last one known if none does).
    pub(crate) async fn drain(&mut self, window: Duration) -> Vec<Snapshot> {
        let deadline = tokio::time::Instant::now() + window;
        let mut got = Vec::new();
        while let Ok(Ok(Some(s))) = tokio::time::timeout_at(deadline, self.stream.message()).await {
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
pub(crate) async fn register(
    own: &Cluster,
    secret: &str,
    cluster: Option<&str>,
    kubeconfig: &str,
    gateway: Option<&str>,
) {
    let mut registration = meridian_crd::registration::Registration::new(secret, kubeconfig);
    if let Some(c) = cluster {
        registration = registration.cluster_name(c);
    }
    if let Some(g) = gateway {
        registration = registration.gateway_address(g);
    }
    let s = registration.secret();
    Api::<Secret>::namespaced(own.client(), SYSTEM_NAMESPACE)
        .create(&PostParams::default(), &s)
        .await
        .expect("create registration Secret");
}

pub(crate) async fn unregister(own: &Cluster, secret: &str) {
    Api::<Secret>::namespaced(own.client(), SYSTEM_NAMESPACE)
        .delete(secret, &DeleteParams::default())
        .await
        .expect("delete registration Secret");
}

/// The member's kubeconfig with its client certificate replaced by a bogus token.
pub(crate) fn with_bad_credentials(kubeconfig: &str) -> String {
    let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(kubeconfig).unwrap();
    let user = v["users"][0]["user"].as_mapping_mut().expect("a user");
    user.clear();
    user.insert("token".into(), "not-a-valid-token".into());
    serde_yaml_ng::to_string(&v).unwrap()
}

/// The service of a snapshot by hostname.
pub(crate) fn service<'a>(
    s: &'a Snapshot,
    hostname: &str,
) -> Option<&'a meridian_api::proto::GlobalService> {
    s.services.iter().find(|g| g.hostname == hostname)
}
