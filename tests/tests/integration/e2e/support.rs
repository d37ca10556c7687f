//! The three-cluster world the scenarios share. It runs both endpoint APIs: east and west
//! serve `discovery.k8s.io/v1` EndpointSlices (east at most [`EAST_MAX_PER_SLICE`] per
//! slice, so its services span several), far only core/v1 Endpoints.

use std::net::SocketAddr;

use meridian_testbed::mesh::{Mesh, MeshOptions};
use meridian_testbed::{
    Cluster, ClusterSpec, EndpointApi, PodHandle, PodSpec, ServicePortSpec, ServiceSpec, Testbed,
};

pub(super) const NS: &str = "demo";
pub(super) const EAST_ZONE: &str = "2000400001";
pub(super) const WEST_ZONE: &str = "200002";
/// Most endpoints per EndpointSlice in east.
pub(super) const EAST_MAX_PER_SLICE: usize = 5;

/// A testbed with Meridian running in every cluster.
pub(super) struct World {
    pub mesh: Mesh,
    pub testbed: Testbed,
}

impl World {
    pub(super) async fn start() -> World {
        Self::start_with(MeshOptions::default()).await
    }

    /// A world with `options`; every cluster gets its Unbound resolver
    /// ([`MeshOptions::resolvers`]) whatever they say.
    pub(super) async fn start_with(options: MeshOptions) -> World {
        meridian_testbed::init_tracing();
        let testbed = Testbed::start(&[
            ClusterSpec::new("east", "sh", [EAST_ZONE]).max_endpoints_per_slice(EAST_MAX_PER_SLICE),
            ClusterSpec::new("west", "sh", [WEST_ZONE]),
            ClusterSpec::new("far", "bj", ["bj-1"]).endpoint_api(EndpointApi::Endpoints),
        ])
        .await
        .expect("testbed");
        let options = MeshOptions {
            resolvers: true,
            ..options
        };
        let mesh = Mesh::start(&testbed, options)
            .await
            .expect("meridian on the testbed");
        for c in testbed.clusters() {
            c.create_namespace(NS).await.unwrap();
        }
        World { mesh, testbed }
    }

    pub(super) fn cluster(&self, name: &str) -> &Cluster {
        self.testbed.cluster(name).unwrap()
    }

    /// Exports `name` (HTTP port 80 → 8080) in every cluster and adds `pods[i]` echo pods
    /// to cluster `i` (east, west, far), all with `version`.
    pub(super) async fn deploy(&self, name: &str, pods: [usize; 3]) -> Vec<Vec<PodHandle>> {
        deploy(&self.testbed, name, &pods).await
    }

    /// Where a client in `cluster` reaches `<name>.demo.global:80`.
    pub(super) async fn addr(&self, cluster: &str, name: &str) -> SocketAddr {
        self.mesh
            .service_addr(self.cluster(cluster), &format!("{name}.{NS}.global"), 80)
            .await
            .unwrap()
    }

    /// The `/config_dump` of `cluster`'s gateway now.
    pub(super) async fn config_dump(&self, cluster: &str) -> serde_json::Value {
        self.mesh
            .member(cluster)
            .unwrap()
            .config_dump()
            .await
            .unwrap()
    }

    /// Waits until east's gateway sees `name` with `healthy` of `total` endpoints healthy.
    pub(super) async fn converge(&self, cluster: &str, name: &str, total: usize, healthy: usize) {
        self.mesh
            .wait_for_endpoints(cluster, &format!("{name}.{NS}.global"), total, healthy)
            .await
            .unwrap();
    }

    /// Sets the first `n` of `pods` not ready and the rest ready.
    pub(super) async fn set_unready(&self, cluster: &str, pods: &[PodHandle], n: usize) {
        let c = self.cluster(cluster);
        for (i, p) in pods.iter().enumerate() {
            c.set_pod_ready(p, i >= n).await.unwrap();
        }
    }
}

/// Exports `name` (HTTP port 80 → 8080, namespace [`NS`], which must exist) in every
/// cluster of `testbed` and adds `pods[i]` echo pods to its cluster `i`.
pub(super) async fn deploy(testbed: &Testbed, name: &str, pods: &[usize]) -> Vec<Vec<PodHandle>> {
    let mut out = Vec::new();
    for (c, &count) in testbed.clusters().iter().zip(pods) {
        c.create_service(
            &ServiceSpec::new(name)
                .namespace(NS)
                .port(ServicePortSpec::http("http", 80).target(8080)),
        )
        .await
        .unwrap();
        let mut handles = Vec::new();
        for i in 0..count {
            let spec = PodSpec::new(format!("{name}-{}-{i}", c.name()))
                .namespace(NS)
                .app(name)
                .port("http", 8080);
            handles.push(c.add_pod(spec).await.unwrap());
        }
        out.push(handles);
    }
    out
}

/// Whether `k` of `n` Bernoulli(p) trials is within 4.5 standard deviations of `n·p`.
pub(super) fn binomial_ok(k: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - mean).abs() <= 4.5 * sd
}

impl World {
    /// `kubectl apply` of `yaml` in every cluster, as a user of a multi-primary mesh does
    /// (each controller reads the policies of its own cluster).
    pub(super) fn apply_everywhere(&self, yaml: &str) {
        for c in self.testbed.clusters() {
            kubectl_apply(c, yaml);
        }
    }

    /// Waits until `cluster`'s gateway runs `name` with a policy for which `check` holds.
    pub(super) async fn converge_policy(
        &self,
        cluster: &str,
        name: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) {
        let host = format!("{name}.{NS}.global");
        self.mesh
            .wait_for(cluster, &format!("the policy of {host}"), |d| {
                meridian_testbed::mesh::find_service(d, &host).is_some_and(|s| check(&s["policy"]))
            })
            .await
            .unwrap();
    }
}

/// Runs `kubectl apply -f -` against `cluster`.
pub(super) fn kubectl_apply(cluster: &Cluster, yaml: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("kubectl")
        .args([
            "--kubeconfig",
            cluster.kubeconfig_path().to_str().unwrap(),
            "apply",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `kubectl args…` against `cluster` and returns its standard output.
pub(super) fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    cluster.kubectl(args).unwrap()
}

/// Polls `probe` every 200 ms until it returns `Some`, for at most 30 s.
pub(super) async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A GlobalTrafficPolicy named after `service`, in the demo namespace; `spec` holds the
/// fields under `spec:` besides `service`, indented by two spaces.
pub(super) fn policy(service: &str, spec: &str) -> String {
    traffic_policy(service, service, spec)
}

/// A GlobalTrafficPolicy `name` for Service `service` in the demo namespace.
pub(super) fn traffic_policy(name: &str, service: &str, spec: &str) -> String {
    format!(
        "apiVersion: meridian.io/v1alpha1\nkind: GlobalTrafficPolicy\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  service: {service}\n{}",
        spec.trim_start_matches('\n')
    )
}
