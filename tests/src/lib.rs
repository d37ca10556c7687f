//! Meridian's hermetic multi-cluster testbed.
//!
//! Each simulated cluster is a real etcd and a real kube-apiserver (envtest-style) on its
//! own loopback address, with Node objects carrying topology labels, and "pods" that are
//! echo servers on `127.B.X.Y` addresses answering `{"cluster","zone","pod","version"}`.
//! The testbed plays kubelet (Pod status, graceful termination), endpoints controller
//! (core/v1 Endpoints) and EndpointSlice controller (`discovery.k8s.io/v1`, served on the
//! v1.20 API server through a CRD with the real schema); see `docs/testing.md` for what is
//! real and what is simulated.
//!
//! ```no_run
//! use meridian_testbed::{ClusterSpec, PodSpec, ServicePortSpec, ServiceSpec, Testbed};
//!
//! # async fn demo() -> meridian_testbed::Result<()> {
//! let testbed = Testbed::start(&[
//!     ClusterSpec::new("east", "us-east1", ["us-east1-a", "us-east1-b"]),
//!     ClusterSpec::new("west", "us-west1", ["us-west1-a"]),
//! ])
//! .await?;
//! let east = testbed.cluster("east")?;
//! east.create_service(&ServiceSpec::new("web").port(ServicePortSpec::http("http", 80).target(8080)))
//!     .await?;
//! let pod = east.add_pod(PodSpec::new("web-1").app("web").zone("us-east1-b")).await?;
//! east.set_pod_ready(&pod, false).await?; // Endpoints now list it as not ready
//! east.set_pod_failing(&pod, true).await?; // HTTP 503 from pod.socket_addr(8080)
//! # Ok(())
//! # }
//! ```

mod apiserver;
mod binaries;
mod cluster;
pub mod delay;
mod echo;
mod endpoint_slices;
mod endpoints;
mod error;
mod etcd;
mod kubeconfig;
pub mod mesh;
pub mod metrics;
pub mod netns;
mod network;
mod node;
mod pki;
mod pod;
mod process;
pub mod prometheus;
mod proxy;
mod resolver;
mod service;
mod slice_api;
mod testbed;
pub mod traffic;

pub use binaries::{ASSETS_ENV, Binaries, CACHE_ENV, KUBERNETES_VERSION, cache_dir};
pub use cluster::{
    Cluster, ClusterSpec, EndpointApi, MAX_CLUSTERS, STARTUP_TIMEOUT, SYSTEM_NAMESPACE,
};
pub use echo::{EchoReply, GREETING_DELAY};
pub use endpoint_slices::{
    DEFAULT_MAX_ENDPOINTS_PER_SLICE, MANAGED_BY, MANAGED_BY_LABEL, SERVICE_NAME_LABEL,
};
pub use endpoints::MANAGED_ANNOTATION;
pub use error::{Error, Result};
pub use network::{
    LOOPBACK_CIDR, POD_NETWORK_CIDR, free_port, free_ports, loopback_to_pod_ip, pod_ip_to_loopback,
};
pub use node::{HOSTNAME_LABEL, NodeInfo, REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL};
pub use pod::{APP_LABEL, ContainerPortSpec, DEFAULT_NAMESPACE, PodHandle, PodSpec, VERSION_LABEL};
pub use resolver::{Resolver, unbound_binary};
pub use service::{EXPORT_LABEL, ServicePortSpec, ServiceSpec};
pub use slice_api::CRD_YAML as ENDPOINT_SLICE_CRD_YAML;
pub use testbed::{TMPDIR_ENV, Testbed};

/// Logs to the test harness's captured output (`RUST_LOG`, default `meridian_testbed=info`);
/// safe to call from every test.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "meridian_testbed=info".into()),
        )
        .with_test_writer()
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Testbeds are shared across tasks (`Arc<Testbed>`) and cluster calls are spawned:
    /// keep both `Send`. Checked at compile time; never called.
    #[allow(dead_code)]
    fn testbed_and_cluster_futures_are_send(testbed: &'static Testbed) {
        fn send<T: Send + Sync>(_: &T) {}
        fn send_future<T: Send>(_: T) {}
        send(testbed);
        let cluster = &testbed.clusters()[0];
        let pod = PodSpec::new("p");
        send_future(Testbed::start(&[]));
        send_future(cluster.add_pod(pod));
        send_future(cluster.create_service(&ServiceSpec::new("s")));
        send_future(cluster.start_api_server());
        send_future(cluster.stop_api_server());
        send_future(cluster.resolve_cluster_ip(([127, 0, 0, 1], 80).into()));
    }
}
