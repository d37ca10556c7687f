//! One simulated cluster: etcd + kube-apiserver, Node objects, and the simulated kubelet
//! (echo pods, their Pod status), endpoints controller and EndpointSlice controller.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::{Mutex, MutexGuard};

use crate::apiserver::{ApiServer, ApiServerConfig};
use crate::binaries::Binaries;
use crate::echo::{EchoReply, EchoServer};
use crate::endpoint_slices::{self, DEFAULT_MAX_ENDPOINTS_PER_SLICE};
use crate::endpoints;
use crate::error::{Error, Result};
use crate::etcd::Etcd;
use crate::kubeconfig;
use crate::network::{LoopbackBlock, free_port, loopback_to_pod_ip};
use crate::node::NodeInfo;
use crate::pki::ClusterPki;
use crate::pod::{PodHandle, PodSpec, pod_object, pod_status};
use crate::proxy;
use crate::service::ServiceSpec;
use crate::slice_api;

/// Namespace every cluster starts with (where Meridian's own objects live).
pub const SYSTEM_NAMESPACE: &str = "meridian-system";

/// Deadline for etcd and the API server to become ready (generous: CI machines are slow
/// and other builds may compete for the CPUs).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Most clusters per testbed: each gets its own Service CIDR `172.(16+i).0.0/16`.
pub const MAX_CLUSTERS: usize = 16;

/// Which endpoint API a cluster serves, and so which one Meridian's controller reads there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EndpointApi {
    /// `discovery.k8s.io/v1` EndpointSlices, as every cluster from 1.21 on serves (on the
    /// v1.20 server through a CRD, see `docs/testing.md`). core/v1 Endpoints are written
    /// too, as a real cluster's endpoints controller does.
    #[default]
    EndpointSlices,
    /// core/v1 Endpoints only: an older cluster, where the controller falls back to them.
    Endpoints,
}

/// What cluster to start. Build with [`ClusterSpec::new`] and the chained setters.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Cluster name (a DNS label): kubeconfig context, node name prefix, echo replies.
    pub name: String,
    /// Region label of every node.
    pub region: String,
    /// Zones; each gets `nodes_per_zone` nodes (per subzone, if any).
    pub zones: Vec<String>,
    /// Subzones present in every zone (labelled `topology.istio.io/subzone`). Default none.
    pub subzones: Vec<String>,
    /// Nodes per zone (or per subzone). Default 1.
    pub nodes_per_zone: usize,
    /// The endpoint API. Default [`EndpointApi::EndpointSlices`].
    pub endpoint_api: EndpointApi,
    /// Most endpoints per EndpointSlice (upstream's `--max-endpoints-per-slice`). Default
    /// 100; tests set a few so that one Service spans several slices.
    pub max_endpoints_per_slice: usize,
}

impl ClusterSpec {
    /// A cluster `name` in `region` with one node in each of `zones`.
    pub fn new(
        name: impl Into<String>,
        region: impl Into<String>,
        zones: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        ClusterSpec {
            name: name.into(),
            region: region.into(),
            zones: zones.into_iter().map(Into::into).collect(),
            subzones: Vec::new(),
            nodes_per_zone: 1,
            endpoint_api: EndpointApi::default(),
            max_endpoints_per_slice: DEFAULT_MAX_ENDPOINTS_PER_SLICE,
        }
    }

    /// Sets the endpoint API.
    pub fn endpoint_api(mut self, api: EndpointApi) -> Self {
        self.endpoint_api = api;
        self
    }

    /// Sets the most endpoints per EndpointSlice.
    pub fn max_endpoints_per_slice(mut self, max: usize) -> Self {
        self.max_endpoints_per_slice = max;
        self
    }

    /// Sets the subzones present in every zone.
    pub fn subzones(mut self, subzones: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.subzones = subzones.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the number of nodes per zone (or per subzone).
    pub fn nodes_per_zone(mut self, nodes: usize) -> Self {
        self.nodes_per_zone = nodes;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        // Cluster names become member names: the same rule as a registration's.
        if !meridian_crd::registration::is_dns_label(&self.name) {
            return Err(Error::InvalidSpec(format!(
                "cluster name {:?} must be a lowercase DNS label",
                self.name
            )));
        }
        if self.max_endpoints_per_slice == 0 || self.max_endpoints_per_slice > 1000 {
            return Err(Error::InvalidSpec(format!(
                "cluster {}: max_endpoints_per_slice must be 1 to 1000 (the API's limit)",
                self.name
            )));
        }
        if self.region.is_empty() || self.zones.is_empty() || self.nodes_per_zone == 0 {
            return Err(Error::InvalidSpec(format!(
                "cluster {} needs a region, at least one zone and one node per zone",
                self.name
            )));
        }
        Ok(())
    }

    pub(crate) fn nodes(&self) -> Vec<NodeInfo> {
        let subzones: Vec<Option<&str>> = if self.subzones.is_empty() {
            vec![None]
        } else {
            self.subzones.iter().map(|s| Some(s.as_str())).collect()
        };
        let mut nodes = Vec::new();
        for zone in &self.zones {
            for subzone in &subzones {
                for i in 1..=self.nodes_per_zone {
                    nodes.push(NodeInfo::new(&self.name, &self.region, zone, *subzone, i));
                }
            }
        }
        nodes
    }
}

/// A running simulated cluster. Owned by its [`crate::Testbed`]; everything stops when the
/// testbed is dropped.
pub struct Cluster {
    spec: ClusterSpec,
    client: Client,
    kubeconfig: String,
    kubeconfig_path: PathBuf,
    server_url: String,
    address: Ipv4Addr,
    service_cidr: String,
    block: Arc<LoopbackBlock>,
    nodes: Vec<NodeInfo>,
    writers: EndpointWriters,
    state: Arc<Mutex<State>>,
}

/// The simulated controllers that turn Services and Pods into endpoint objects.
#[derive(Clone)]
struct EndpointWriters {
    client: Client,
    api: EndpointApi,
    max_per_slice: usize,
    /// Node name → zone, for the slices' `zone`.
    zones: Arc<BTreeMap<String, String>>,
}

impl EndpointWriters {
    /// Brings the endpoint objects of every Service in `namespace` up to date.
    async fn sync(&self, namespace: &str) -> Result<()> {
        endpoints::sync_namespace(&self.client, namespace).await?;
        if self.api == EndpointApi::EndpointSlices {
            endpoint_slices::sync_namespace(
                &self.client,
                namespace,
                self.max_per_slice,
                &self.zones,
            )
            .await?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.spec.name)
            .field("server_url", &self.server_url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    // Field order is drop order: pods, then the API server, then etcd.
    pods: BTreeMap<(String, String), PodEntry>,
    apiserver: ApiServer,
    etcd: Etcd,
    /// Pods whose status changed while the API server was stopped.
    unsynced: BTreeSet<(String, String)>,
    /// Deleted pods in their termination grace period (echo servers still running).
    terminating: BTreeMap<(String, String), PodEntry>,
    /// Pods whose grace period ended while the API server was stopped.
    unfinished_deletions: BTreeSet<(String, String)>,
    /// Pod terminations waiting out their grace period; aborted with the cluster.
    terminations: tokio::task::JoinSet<()>,
}

#[derive(Debug)]
struct PodEntry {
    handle: PodHandle,
    image: String,
    ready: bool,
    started: Timestamp,
    termination_grace: Duration,
    echo: Option<EchoServer>,
}

impl Cluster {
    /// Starts etcd and the API server, then creates the system namespace and the nodes.
    #[tracing::instrument(name = "cluster", skip_all, fields(cluster = %spec.name))]
    pub(crate) async fn start(
        spec: ClusterSpec,
        index: usize,
        binaries: &Binaries,
        minor_version: u32,
        block: Arc<LoopbackBlock>,
        root: &Path,
    ) -> Result<Cluster> {
        spec.validate()?;
        let dir = root.join(&spec.name);
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let address = block.allocate()?;
        let pki = ClusterPki::generate(&spec.name, address.into(), &dir)?;

        let mut etcd = Etcd::start(&spec.name, &binaries.etcd, address, &dir)?;
        etcd.wait_ready(STARTUP_TIMEOUT).await?;
        tracing::debug!("etcd ready");

        let service_cidr = format!("172.{}.0.0/16", 16 + index);
        // Slices through the CRD only where the server does not serve v1 itself.
        let slice_crd = spec.endpoint_api == EndpointApi::EndpointSlices
            && minor_version < slice_api::BUILT_IN_SINCE_MINOR;
        let mut apiserver = ApiServer::new(ApiServerConfig {
            cluster: spec.name.clone(),
            binary: binaries.kube_apiserver.clone(),
            minor_version,
            ip: address,
            port: free_port(address)?,
            etcd_url: etcd.client_url(),
            service_cidr: service_cidr.clone(),
            pki: pki.files.clone(),
            dir: dir.clone(),
            slice_crd,
        });
        apiserver.start()?;
        let server_url = apiserver.url();
        let kubeconfig = kubeconfig::render(
            &spec.name,
            &server_url,
            &pki.ca_pem,
            &pki.admin_cert_pem,
            &pki.admin_key_pem,
        );
        let kubeconfig_path = dir.join("kubeconfig");
        std::fs::write(&kubeconfig_path, &kubeconfig)
            .map_err(Error::io(format!("writing {}", kubeconfig_path.display())))?;
        let client = kubeconfig::client(&spec.name, &kubeconfig).await?;
        apiserver.wait_ready(&client, STARTUP_TIMEOUT).await?;
        tracing::debug!(url = %server_url, "kube-apiserver ready");

        if slice_crd {
            slice_api::install(&client, STARTUP_TIMEOUT).await?;
            tracing::debug!("discovery.k8s.io/v1 EndpointSlices served");
        }

        let nodes = spec.nodes();
        let writers = EndpointWriters {
            client: client.clone(),
            api: spec.endpoint_api,
            max_per_slice: spec.max_endpoints_per_slice,
            zones: Arc::new(
                nodes
                    .iter()
                    .map(|n| (n.name.clone(), n.zone.clone()))
                    .collect(),
            ),
        };
        let cluster = Cluster {
            spec,
            client,
            kubeconfig,
            kubeconfig_path,
            server_url,
            address,
            service_cidr,
            block,
            nodes,
            writers,
            state: Arc::new(Mutex::new(State {
                pods: BTreeMap::new(),
                apiserver,
                etcd,
                unsynced: BTreeSet::new(),
                terminating: BTreeMap::new(),
                unfinished_deletions: BTreeSet::new(),
                terminations: tokio::task::JoinSet::new(),
            })),
        };
        cluster.create_namespace(SYSTEM_NAMESPACE).await?;
        cluster.create_nodes().await?;
        Ok(cluster)
    }

    /// Cluster name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Region of every node.
    pub fn region(&self) -> &str {
        &self.spec.region
    }

    /// Zones, in spec order.
    pub fn zones(&self) -> &[String] {
        &self.spec.zones
    }

    /// The spec the cluster was started from.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The nodes (created at startup).
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// An admin (`system:masters`) client.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The admin kubeconfig, self-contained (certificates inline); context = cluster name.
    pub fn kubeconfig(&self) -> &str {
        &self.kubeconfig
    }

    /// A file holding [`Cluster::kubeconfig`], for `kubectl --kubeconfig` and binaries.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// Runs `kubectl --kubeconfig <this cluster> args…` and returns its standard output; a
    /// failure carries kubectl's standard error.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig_path())
            .args(args)
            .output()
            .map_err(Error::io(
                "running kubectl (Debian: apt-get install kubernetes-client)",
            ))?;
        if !out.status.success() {
            return Err(Error::InvalidSpec(format!(
                "kubectl {} against {} failed: {}",
                args.join(" "),
                self.name(),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The API server URL, `https://127.B.X.Y:PORT` (stable across restarts).
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The loopback address of the cluster's etcd and API server.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The Service ClusterIP range (distinct per cluster).
    pub fn service_cidr(&self) -> &str {
        &self.service_cidr
    }

    /// A fresh loopback address of this testbed, for a process the test runs itself (a
    /// gateway, a DNS server). Never handed out twice.
    pub fn allocate_address(&self) -> Result<Ipv4Addr> {
        self.block.allocate()
    }

    /// Process ids of etcd and (if running) kube-apiserver, for teardown checks.
    pub async fn process_ids(&self) -> Vec<u32> {
        let state = self.state.lock().await;
        let mut pids = vec![state.etcd.pid()];
        pids.extend(state.apiserver.pid());
        pids
    }

    /// Creates a namespace; succeeds if it exists.
    pub async fn create_namespace(&self, name: &str) -> Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(Error::kube(format!("creating namespace {name}"))(e)),
        }
    }

    /// Creates a Service and its endpoint objects (from the pods it selects).
    pub async fn create_service(&self, spec: &ServiceSpec) -> Result<Service> {
        let _state = self.running_api().await?;
        self.create_namespace(&spec.namespace).await?;
        let services: Api<Service> = Api::namespaced(self.client.clone(), &spec.namespace);
        let created = services
            .create(&PostParams::default(), &spec.to_service())
            .await
            .map_err(Error::kube(format!(
                "creating Service {}/{}",
                spec.namespace, spec.name
            )))?;
        self.writers.sync(&spec.namespace).await?;
        Ok(created)
    }

    /// Deletes a Service and the endpoint objects the testbed wrote for it.
    pub async fn delete_service(&self, namespace: &str, name: &str) -> Result<()> {
        let _state = self.running_api().await?;
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        services
            .delete(name, &DeleteParams::default())
            .await
            .map_err(Error::kube(format!("deleting Service {namespace}/{name}")))?;
        self.writers.sync(namespace).await
    }

    /// Recomputes the endpoint objects (Endpoints and, where used, EndpointSlices) of every Service in `namespace`. Testbed calls do this
    /// themselves; call it after changing Services or Pods through the API directly.
    pub async fn sync_endpoints(&self, namespace: &str) -> Result<()> {
        let _state = self.running_api().await?;
        self.writers.sync(namespace).await
    }

    /// Where a connection to a Service's `clusterIP:port` would land: the loopback socket
    /// addresses of its ready endpoints (the testbed's stand-in for kube-proxy).
    pub async fn resolve_cluster_ip(&self, vip: SocketAddr) -> Result<Vec<SocketAddr>> {
        let _state = self.running_api().await?;
        proxy::resolve_cluster_ip(&self.client, self.spec.endpoint_api, vip).await
    }

    /// Gives a Service a load balancer address (`status.loadBalancer.ingress[0].ip`), as a
    /// cloud controller would; use an address from [`Cluster::allocate_address`] where the
    /// test runs the process behind it.
    pub async fn set_load_balancer_ingress(
        &self,
        namespace: &str,
        name: &str,
        ip: IpAddr,
    ) -> Result<()> {
        let _state = self.running_api().await?;
        proxy::set_load_balancer_ingress(&self.client, namespace, name, ip).await
    }

    /// Adds a pod: an echo server on a fresh loopback address (unless `spec.echo` is false),
    /// a Pod object on the chosen node with a Running status, and updated endpoint objects.
    pub async fn add_pod(&self, spec: PodSpec) -> Result<PodHandle> {
        let node = self.place(&spec)?.clone();
        let mut state = self.running_api().await?;
        let key = (spec.namespace.clone(), spec.name.clone());
        if state.pods.contains_key(&key) || state.terminating.contains_key(&key) {
            return Err(Error::InvalidSpec(format!(
                "pod {}/{} already exists in cluster {}",
                spec.namespace,
                spec.name,
                self.name()
            )));
        }
        self.create_namespace(&spec.namespace).await?;

        let address = self.block.allocate()?;
        let pod_ip = match loopback_to_pod_ip(address.into()) {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => unreachable!("loopback block is IPv4"),
        };
        let handle = PodHandle {
            cluster: self.name().to_string(),
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            pod_ip,
            address,
            node: node.name.clone(),
            zone: node.zone.clone(),
            ports: spec.effective_ports(),
        };
        let echo = if spec.echo {
            let reply = EchoReply {
                cluster: self.name().to_string(),
                zone: node.zone.clone(),
                pod: spec.name.clone(),
                version: spec.version.clone(),
            };
            let ports = handle.ports.iter().map(|p| p.port).collect();
            let mut server = EchoServer::new(address, ports, &reply);
            server.start().await?;
            Some(server)
        } else {
            None
        };

        let object = pod_object(&spec, &node.name);
        let image = object
            .spec
            .as_ref()
            .and_then(|s| s.containers[0].image.clone())
            .unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &spec.namespace);
        pods.create(&PostParams::default(), &object)
            .await
            .map_err(Error::kube(format!(
                "creating Pod {}/{}",
                spec.namespace, spec.name
            )))?;
        let entry = PodEntry {
            handle: handle.clone(),
            image,
            ready: spec.ready,
            started: Timestamp::now(),
            termination_grace: spec.termination_grace,
            echo,
        };
        self.write_pod_status(&entry).await?;
        state.pods.insert(key, entry);
        self.writers.sync(&spec.namespace).await?;
        tracing::debug!(pod = %spec.name, ip = %pod_ip, %address, node = %node.name, "pod added");
        Ok(handle)
    }

    /// Removes a pod, as its deletion and kubelet would. Without a termination grace
    /// ([`PodSpec::termination_grace`]) at once: its echo server stops, the Pod is deleted
    /// and the endpoints updated. With one, the Pod is deleted gracefully: it gets a
    /// `deletionTimestamp`, leaves the core/v1 Endpoints and turns `terminating` in its
    /// EndpointSlice, while its echo server keeps serving (open connections finish) until
    /// the grace period ends; then the server stops and the Pod and endpoint go. This call
    /// returns once the termination has started.
    pub async fn remove_pod(&self, pod: &PodHandle) -> Result<()> {
        let mut state = self.running_api().await?;
        let key = (pod.namespace.clone(), pod.name.clone());
        let Some(mut entry) = state.pods.remove(&key) else {
            return Err(self.no_pod(pod));
        };
        state.unsynced.remove(&key);
        let grace = entry.termination_grace;
        if grace.is_zero() {
            if let Some(echo) = &mut entry.echo {
                echo.stop().await;
            }
            delete_pod_now(&self.client, &key).await?;
            return self.writers.sync(&pod.namespace).await;
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        // A Pod bound to a node is deleted gracefully: the server sets its
        // deletionTimestamp and keeps it until its kubelet (the task below) confirms.
        let seconds = u32::try_from(grace.as_secs_f64().ceil() as u64).unwrap_or(u32::MAX);
        pods.delete(&pod.name, &DeleteParams::default().grace_period(seconds))
            .await
            .map_err(Error::kube(format!(
                "deleting Pod {}/{}",
                pod.namespace, pod.name
            )))?;
        state.terminating.insert(key.clone(), entry);
        self.writers.sync(&pod.namespace).await?;
        while state.terminations.try_join_next().is_some() {}
        state.terminations.spawn(finish_termination(
            Arc::downgrade(&self.state),
            self.writers.clone(),
            key,
            grace,
        ));
        Ok(())
    }

    /// Whether a removed pod is still in its termination grace period.
    pub async fn pod_terminating(&self, pod: &PodHandle) -> bool {
        let key = (pod.namespace.clone(), pod.name.clone());
        self.state.lock().await.terminating.contains_key(&key)
    }

    /// Flips a pod's readiness, as its kubelet would after a readiness probe: the Pod's
    /// Ready condition and the endpoint objects change; the echo server keeps serving. While the
    /// API server is stopped the change is recorded and written when it restarts.
    pub async fn set_pod_ready(&self, pod: &PodHandle, ready: bool) -> Result<()> {
        let mut state = self.state.lock().await;
        let key = (pod.namespace.clone(), pod.name.clone());
        let Some(entry) = state.pods.get_mut(&key) else {
            return Err(self.no_pod(pod));
        };
        entry.ready = ready;
        if !state.apiserver.is_running() {
            state.unsynced.insert(key);
            return Ok(());
        }
        self.write_pod_status(&state.pods[&key]).await?;
        self.writers.sync(&pod.namespace).await
    }

    /// Makes the pod's echo server answer HTTP 503 (and close raw TCP connections at once),
    /// or answer normally again. Kubernetes objects are untouched.
    pub async fn set_pod_failing(&self, pod: &PodHandle, failing: bool) -> Result<()> {
        let mut state = self.state.lock().await;
        self.echo_of(&mut state, pod)?.set_failing(failing);
        Ok(())
    }

    /// Stops the pod's echo server (connections refused, open ones dropped), like a
    /// crashed process before its kubelet notices. Kubernetes objects are untouched;
    /// combine with [`Cluster::set_pod_ready`] to simulate the kubelet noticing.
    pub async fn stop_pod(&self, pod: &PodHandle) -> Result<()> {
        let mut state = self.state.lock().await;
        self.echo_of(&mut state, pod)?.stop().await;
        Ok(())
    }

    /// Restarts a stopped pod's echo server on the same address and ports.
    pub async fn start_pod(&self, pod: &PodHandle) -> Result<()> {
        let mut state = self.state.lock().await;
        self.echo_of(&mut state, pod)?.start().await
    }

    /// Whether the pod's echo server is listening.
    pub async fn pod_running(&self, pod: &PodHandle) -> Result<bool> {
        let mut state = self.state.lock().await;
        Ok(self.echo_of(&mut state, pod)?.is_running())
    }

    /// Kills the cluster's API server (SIGKILL). etcd keeps running, so no data is lost;
    /// clients get connection errors until [`Cluster::start_api_server`].
    pub async fn stop_api_server(&self) {
        let mut state = self.state.lock().await;
        state.apiserver.stop();
        tracing::info!(cluster = %self.name(), "kube-apiserver stopped");
    }

    /// Starts the API server again (same address, port and credentials), waits until it is
    /// ready, then writes pod changes made while it was down.
    pub async fn start_api_server(&self) -> Result<()> {
        let mut state = self.state.lock().await;
        if !state.apiserver.is_running() {
            state.apiserver.start()?;
        }
        state
            .apiserver
            .wait_ready(&self.client, STARTUP_TIMEOUT)
            .await?;
        let unsynced = std::mem::take(&mut state.unsynced);
        let mut namespaces = BTreeSet::new();
        for key in std::mem::take(&mut state.unfinished_deletions) {
            delete_pod_now(&self.client, &key).await?;
            namespaces.insert(key.0);
        }
        for key in unsynced {
            if let Some(entry) = state.pods.get(&key) {
                self.write_pod_status(entry).await?;
                namespaces.insert(key.0);
            }
        }
        for namespace in namespaces {
            self.writers.sync(&namespace).await?;
        }
        tracing::info!(cluster = %self.name(), "kube-apiserver started");
        Ok(())
    }

    /// Whether the API server process is running.
    pub async fn api_server_running(&self) -> bool {
        self.state.lock().await.apiserver.is_running()
    }

    async fn create_nodes(&self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let status = serde_json::json!({ "status": NodeInfo::ready_status() });
        for node in &self.nodes {
            nodes
                .create(&PostParams::default(), &node.to_node())
                .await
                .map_err(Error::kube(format!("creating Node {}", node.name)))?;
            nodes
                .patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .map_err(Error::kube(format!("writing status of Node {}", node.name)))?;
        }
        Ok(())
    }

    async fn write_pod_status(&self, entry: &PodEntry) -> Result<()> {
        let h = &entry.handle;
        let status = pod_status(h.pod_ip, &entry.image, entry.ready, &entry.started);
        let patch = serde_json::json!({ "status": status });
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &h.namespace);
        pods.patch_status(&h.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(Error::kube(format!(
                "writing status of Pod {}/{}",
                h.namespace, h.name
            )))?;
        Ok(())
    }

    /// The node a pod spec asks for.
    fn place(&self, spec: &PodSpec) -> Result<&NodeInfo> {
        let found = match (&spec.node, &spec.zone) {
            (Some(node), _) => self.nodes.iter().find(|n| &n.name == node),
            (None, zone) => {
                let zone = zone.as_deref().unwrap_or(&self.spec.zones[0]);
                self.nodes.iter().find(|n| {
                    n.zone == zone
                        && (spec.subzone.is_none() || n.subzone.as_ref() == spec.subzone.as_ref())
                })
            }
        };
        found.ok_or_else(|| {
            Error::InvalidSpec(format!(
                "no node in cluster {} matches pod {} (node {:?}, zone {:?}, subzone {:?})",
                self.name(),
                spec.name,
                spec.node,
                spec.zone,
                spec.subzone
            ))
        })
    }

    /// Locks the state, failing if the API server is stopped.
    async fn running_api(&self) -> Result<MutexGuard<'_, State>> {
        let mut state = self.state.lock().await;
        if !state.apiserver.is_running() {
            return Err(Error::ApiServerStopped {
                cluster: self.name().to_string(),
            });
        }
        Ok(state)
    }

    fn echo_of<'a>(&self, state: &'a mut State, pod: &PodHandle) -> Result<&'a mut EchoServer> {
        let key = (pod.namespace.clone(), pod.name.clone());
        let entry = match state.pods.get_mut(&key) {
            Some(entry) => entry,
            None => state
                .terminating
                .get_mut(&key)
                .ok_or_else(|| self.no_pod(pod))?,
        };
        entry.echo.as_mut().ok_or_else(|| {
            Error::InvalidSpec(format!(
                "pod {}/{} runs no echo server",
                pod.namespace, pod.name
            ))
        })
    }

    fn no_pod(&self, pod: &PodHandle) -> Error {
        Error::NotFound {
            kind: "pod",
            name: format!("{}/{} in cluster {}", pod.namespace, pod.name, self.name()),
        }
    }
}

/// Deletes a Pod at once (grace period 0: what its kubelet does once the containers have
/// stopped); a Pod already gone is fine.
async fn delete_pod_now(client: &Client, (namespace, name): &(String, String)) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match pods
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(format!("deleting Pod {namespace}/{name}"))(e)),
    }
}

/// The end of a graceful pod termination: after `grace`, stops the pod's echo server,
/// deletes the Pod and updates the endpoints. Holds only a weak reference, so a dropped
/// cluster is not kept alive.
async fn finish_termination(
    state: Weak<Mutex<State>>,
    writers: EndpointWriters,
    key: (String, String),
    grace: Duration,
) {
    tokio::time::sleep(grace).await;
    let Some(state) = state.upgrade() else {
        return;
    };
    let mut state = state.lock().await;
    let Some(mut entry) = state.terminating.remove(&key) else {
        return;
    };
    if let Some(echo) = &mut entry.echo {
        echo.stop().await;
    }
    if !state.apiserver.is_running() {
        state.unfinished_deletions.insert(key);
        return;
    }
    let done = match delete_pod_now(&writers.client, &key).await {
        Ok(()) => writers.sync(&key.0).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => tracing::debug!(pod = %key.1, "pod terminated"),
        Err(error) => tracing::warn!(pod = %key.1, %error, "finishing a pod termination failed"),
    }
}
