//! Meridian on the testbed: the real controller, gateway and DNS binaries per cluster,
//! wired together the way an operator would (one mesh CA, clusters registered into each
//! other with `meridianctl cluster add`, a gateway "pod" behind the LoadBalancer Service
//! `meridian-system/meridian-gateway`).
//!
//! Binaries come from `$MERIDIAN_BIN_DIR`, else the Cargo target directory the running
//! executable lives in (`cargo test --workspace` and `cargo build` put them there).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::cluster::{Cluster, SYSTEM_NAMESPACE};
use crate::error::{Error, Result};
use crate::network::free_ports;
use crate::pod::{PodHandle, PodSpec};
use crate::process::ChildProcess;
use crate::resolver::Resolver;
use crate::service::{ServicePortSpec, ServiceSpec};
use crate::testbed::Testbed;
use crate::traffic::http_get;

/// Environment variable naming the directory with the Meridian binaries.
pub const BIN_DIR_ENV: &str = "MERIDIAN_BIN_DIR";
/// Trust domain of the test mesh.
pub const TRUST_DOMAIN: &str = "meridian.local";
/// The tunnel port every gateway listens on (each on its own loopback address).
pub const TUNNEL_PORT: u16 = 15008;
/// The gateway admin port (probes, metrics).
pub const ADMIN_PORT: u16 = 15021;
/// The gateway's `/config_dump` port (loopback-only by default in a pod).
pub const CONFIG_DUMP_PORT: u16 = 15000;
/// Label selecting gateway pods (the controller's default).
pub const GATEWAY_LABEL: (&str, &str) = ("app.kubernetes.io/name", "meridian-gateway");
/// The ServiceAccount whose token the controller accepts for the gateway certificate (and
/// for the snapshot stream).
pub const GATEWAY_SERVICE_ACCOUNT: &str = "meridian-gateway";
/// The DNS server's ServiceAccount, whose token the controller accepts for the snapshot
/// stream.
pub const DNS_SERVICE_ACCOUNT: &str = "meridian-dns";
/// The audience of the tokens gateway and DNS send to the controller (the projected
/// token's `audience` in the manifests).
pub const CONTROLLER_AUDIENCE: &str = "meridian-controller";
/// The name the controller's gRPC serving certificate carries (its Service in
/// meridian-system), which gateway and DNS verify.
pub const CONTROLLER_SERVER_NAME: &str = "meridian-controller.meridian-system.svc";
/// How long components get to come up or converge.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Knobs of a test mesh.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// `--stale-endpoint-grace` of every controller.
    pub stale_endpoint_grace: Duration,
    /// How often a gateway probes a peer that is down.
    pub peer_probe_interval: Duration,
    /// Run a cluster resolver per member: Unbound with a `global.` stub zone pointing at
    /// the member's `meridian-dns` ([`crate::Resolver`]), as pods resolve `.global`.
    pub resolvers: bool,
    /// Register every cluster into every other with `meridianctl cluster add` before the
    /// controllers start; off for tests that join the mesh themselves (`mesh connect`).
    pub register: bool,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            stale_endpoint_grace: Duration::from_secs(60),
            peer_probe_interval: Duration::from_millis(500),
            resolvers: false,
            register: true,
        }
    }
}

/// Finds a Meridian binary (see the module docs).
pub fn meridian_binary(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(d) => PathBuf::from(d),
        None => {
            let exe =
                std::env::current_exe().map_err(Error::io("locating the running executable"))?;
            let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::InvalidSpec(format!(
            "{} not found; build it first (`cargo build -p meridian-controller -p meridian-gateway -p meridian-dns -p meridian-cli`) or set {BIN_DIR_ENV}",
            path.display()
        )))
    }
}

/// Meridian's processes in one cluster.
#[derive(Debug)]
pub struct Member {
    name: String,
    controller: ChildProcess,
    grpc: SocketAddr,
    controller_metrics: SocketAddr,
    controller_args: Vec<String>,
    gateway: Option<ChildProcess>,
    gateway_args: Vec<String>,
    gateway_pod: PodHandle,
    dns: ChildProcess,
    dns_addr: SocketAddr,
    dns_admin: SocketAddr,
    dns_args: Vec<String>,
    resolver: Option<Resolver>,
    dir: PathBuf,
}

impl Member {
    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The gateway's loopback address (tunnel, admin and outbound listeners).
    pub fn gateway_ip(&self) -> Ipv4Addr {
        self.gateway_pod.address()
    }

    /// The gateway admin address (probes, metrics).
    pub fn gateway_admin(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.gateway_ip()), ADMIN_PORT)
    }

    /// The gateway's `/config_dump` address.
    pub fn gateway_config_dump(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.gateway_ip()), CONFIG_DUMP_PORT)
    }

    /// The DNS server's address (UDP and TCP).
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns_addr
    }

    /// The cluster resolver's address (Unbound, stub zone `global.` → this member's DNS
    /// server), when the mesh runs them ([`MeshOptions::resolvers`]).
    pub fn resolver_addr(&self) -> Option<SocketAddr> {
        self.resolver.as_ref().map(Resolver::addr)
    }

    /// The controller's gRPC address.
    pub fn controller_grpc(&self) -> SocketAddr {
        self.grpc
    }

    /// The controller's metrics address.
    pub fn controller_metrics(&self) -> SocketAddr {
        self.controller_metrics
    }

    /// The gateway's `/config_dump`.
    pub async fn config_dump(&self) -> Result<Value> {
        let r = http_get(self.gateway_config_dump(), "/config_dump", &[]).await?;
        serde_json::from_slice(&r.body)
            .map_err(|e| Error::InvalidSpec(format!("config_dump of {}: {e}", self.name)))
    }

    /// Process ids of the controller, the gateway (`None` while killed) and the DNS
    /// server, for resource figures (`/proc/<pid>`).
    pub fn pids(&self) -> [(&'static str, Option<u32>); 3] {
        [
            ("controller", Some(self.controller.pid())),
            ("gateway", self.gateway.as_ref().map(ChildProcess::pid)),
            ("dns", Some(self.dns.pid())),
        ]
    }

    /// Kills the gateway process (SIGKILL), as a lost node or cluster would.
    pub fn kill_gateway(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            g.kill();
        }
    }

    /// Restarts a killed gateway with the same flags.
    pub async fn start_gateway(&mut self) -> Result<()> {
        if self.gateway.is_none() {
            let log = self.dir.join("gateway.log");
            self.gateway = Some(ChildProcess::spawn(
                format!("{}/meridian-gateway", self.name),
                &meridian_binary("meridian-gateway")?,
                &self.gateway_args,
                &log,
            )?);
            wait_ready(&format!("gateway of {}", self.name), self.gateway_admin()).await?;
        }
        Ok(())
    }

    /// Kills and restarts the controller with the same flags.
    pub async fn restart_controller(&mut self) -> Result<()> {
        self.controller.kill();
        self.start_controller().await
    }

    /// Kills the controller (SIGKILL) and leaves it down, as losing every replica would;
    /// [`Member::start_controller`] brings it back.
    pub fn kill_controller(&mut self) {
        self.controller.kill();
    }

    /// Starts the controller with the same flags (after [`Member::kill_controller`]).
    pub async fn start_controller(&mut self) -> Result<()> {
        self.controller = ChildProcess::spawn(
            format!("{}/meridian-controller", self.name),
            &meridian_binary("meridian-controller")?,
            &self.controller_args,
            &self.dir.join("controller.log"),
        )?;
        wait_ready(
            &format!("controller of {}", self.name),
            self.controller_metrics,
        )
        .await
    }

    /// Kills the DNS server (SIGKILL) and starts it again with the same flags; returns
    /// once it is ready (it has its first snapshot).
    pub async fn restart_dns(&mut self) -> Result<()> {
        self.dns.kill();
        self.dns = ChildProcess::spawn(
            format!("{}/meridian-dns", self.name),
            &meridian_binary("meridian-dns")?,
            &self.dns_args,
            &self.dir.join("dns.log"),
        )?;
        wait_ready(&format!("DNS server of {}", self.name), self.dns_admin).await
    }

    /// Fails with the process's log if the controller or DNS server died.
    pub fn check_alive(&mut self) -> Result<()> {
        for p in [&mut self.controller, &mut self.dns] {
            if let Some(status) = p.exited() {
                return Err(p.failure(format!("exited with {status}")));
            }
        }
        Ok(())
    }
}

/// The Meridian processes of every testbed cluster.
#[derive(Debug)]
pub struct Mesh {
    members: Vec<Member>,
}

impl Mesh {
    /// Installs and starts Meridian in every cluster of `testbed` and (unless
    /// [`MeshOptions::register`] is off) registers every cluster into every other. Returns
    /// once each gateway and DNS server is ready.
    pub async fn start(testbed: &Testbed, options: MeshOptions) -> Result<Mesh> {
        let dir = testbed.dir().join("meridian");
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        // The root stays in files here (as an operator keeps it off the members); each
        // cluster gets its own intermediate.
        let ca_dir = dir.join("ca");
        meridianctl(&["ca", "init", "--out", path(&ca_dir)])?;
        for c in testbed.clusters() {
            meridianctl(&[
                "ca",
                "issue-intermediate",
                "--cluster",
                c.name(),
                "--trust-domain",
                TRUST_DOMAIN,
                "--root-dir",
                path(&ca_dir),
                "--kubeconfig",
                path(c.kubeconfig_path()),
            ])?;
        }
        // Every cluster is registered into every other, as an operator of a multi-primary
        // mesh does; the registrations are independent, so they run side by side.
        let pairs: Vec<(&Cluster, &Cluster)> = testbed
            .clusters()
            .iter()
            .filter(|_| options.register)
            .flat_map(|host| {
                testbed
                    .clusters()
                    .iter()
                    .filter(move |m| m.name() != host.name())
                    .map(move |m| (host, m))
            })
            .collect();
        std::thread::scope(|scope| {
            let runs: Vec<_> = pairs
                .iter()
                .map(|(host, member)| {
                    scope.spawn(move || {
                        meridianctl(&[
                            "cluster",
                            "add",
                            "--kubeconfig",
                            path(member.kubeconfig_path()),
                            "--context",
                            member.name(),
                            "--name",
                            member.name(),
                            "--host-kubeconfig",
                            path(host.kubeconfig_path()),
                            "--host-context",
                            host.name(),
                        ])
                    })
                })
                .collect();
            runs.into_iter()
                .map(|r| {
                    r.join().unwrap_or_else(|_| {
                        Err(Error::InvalidSpec("meridianctl runner panicked".into()))
                    })
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let mut members = Vec::new();
        for c in testbed.clusters() {
            members.push(start_member(c, &dir.join(c.name()), &ca_dir, &options).await?);
        }
        Ok(Mesh { members })
    }

    /// Every member, in testbed order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member for cluster `name`.
    pub fn member(&self, name: &str) -> Result<&Member> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::NotFound {
                kind: "mesh member",
                name: name.to_owned(),
            })
    }

    /// The member for cluster `name`, mutably.
    pub fn member_mut(&mut self, name: &str) -> Result<&mut Member> {
        self.members
            .iter_mut()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::NotFound {
                kind: "mesh member",
                name: name.to_owned(),
            })
    }

    /// Where a client in `cluster` reaches `hostname:port`: the cluster's VIP from the
    /// gateway's snapshot, then (as kube-proxy would) the gateway pod behind it.
    pub async fn service_addr(
        &self,
        cluster: &Cluster,
        hostname: &str,
        port: u32,
    ) -> Result<SocketAddr> {
        // A service can reach the snapshot before its managed Service has a ClusterIP.
        let vip_of = |dump: &Value| {
            find_service(dump, hostname)
                .and_then(|s| s["vip"].as_str())
                .and_then(|v| v.parse::<IpAddr>().ok())
        };
        let dump = self
            .wait_for(cluster.name(), &format!("a VIP for {hostname}"), |d| {
                vip_of(d).is_some()
            })
            .await?;
        let vip = vip_of(&dump).expect("checked by wait_for");
        cluster.sync_endpoints(SYSTEM_NAMESPACE).await?;
        let targets = cluster
            .resolve_cluster_ip(SocketAddr::new(vip, port as u16))
            .await?;
        targets.into_iter().next().ok_or_else(|| Error::NotFound {
            kind: "ready gateway behind the VIP",
            name: format!("{vip}:{port}"),
        })
    }

    /// Polls `cluster`'s gateway `/config_dump` until `check` holds.
    pub async fn wait_for(
        &self,
        cluster: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let member = self.member(cluster)?;
        let start = Instant::now();
        loop {
            if let Ok(dump) = member.config_dump().await
                && check(&dump)
            {
                return Ok(dump);
            }
            if start.elapsed() > CONVERGE_TIMEOUT {
                return Err(Error::Timeout {
                    what: format!("{what} in the gateway of {cluster}"),
                    after: CONVERGE_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `cluster`'s gateway sees `hostname` with exactly `total` endpoints of
    /// which `healthy` are healthy (ready and not ejected).
    pub async fn wait_for_endpoints(
        &self,
        cluster: &str,
        hostname: &str,
        total: usize,
        healthy: usize,
    ) -> Result<()> {
        self.wait_for(
            cluster,
            &format!("{hostname} with {healthy}/{total} healthy endpoints"),
            |dump| {
                let eps = dump["splits"][hostname]["endpoints"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                eps.len() == total
                    && eps
                        .iter()
                        .filter(|e| e["healthy"] == Value::Bool(true))
                        .count()
                        == healthy
            },
        )
        .await
        .map(|_| ())
    }
}

/// The snapshot entry for `hostname` in a gateway's config dump.
pub fn find_service<'a>(dump: &'a Value, hostname: &str) -> Option<&'a Value> {
    dump["snapshot"]["services"]
        .as_array()?
        .iter()
        .find(|s| s["hostname"] == hostname)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Runs `meridianctl` to completion; its output lands in the error on failure.
pub fn meridianctl(args: &[&str]) -> Result<String> {
    let bin = meridian_binary("meridianctl")?;
    let out = Command::new(&bin)
        .args(args)
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .map_err(Error::io(format!("running {}", bin.display())))?;
    if !out.status.success() {
        return Err(Error::InvalidSpec(format!(
            "meridianctl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn start_member(
    cluster: &Cluster,
    dir: &Path,
    ca_dir: &Path,
    options: &MeshOptions,
) -> Result<Member> {
    std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let name = cluster.name().to_owned();
    let zone = cluster.zones().first().cloned().unwrap_or_default();

    // The gateway runs as a pod of the cluster (so VIP Services select it) behind the
    // LoadBalancer Service the controllers read peer addresses from.
    let gateway_pod = cluster
        .add_pod(
            PodSpec::new("meridian-gateway-0")
                .namespace(SYSTEM_NAMESPACE)
                .label(GATEWAY_LABEL.0, GATEWAY_LABEL.1)
                .zone(zone.clone())
                .port("tunnel", TUNNEL_PORT)
                .echo(false),
        )
        .await?;
    let gw_ip = gateway_pod.address();
    cluster
        .create_service(
            &ServiceSpec::new("meridian-gateway")
                .namespace(SYSTEM_NAMESPACE)
                .selector(GATEWAY_LABEL.0, GATEWAY_LABEL.1)
                .port(ServicePortSpec::tcp("tunnel", TUNNEL_PORT))
                .exported(false),
        )
        .await?;
    cluster
        .set_load_balancer_ingress(SYSTEM_NAMESPACE, "meridian-gateway", IpAddr::V4(gw_ip))
        .await?;

    let ctl_ip = cluster.allocate_address()?;
    let [grpc_port, metrics_port] = free_ports(ctl_ip)?;
    let grpc = SocketAddr::new(IpAddr::V4(ctl_ip), grpc_port);
    let controller_metrics = SocketAddr::new(IpAddr::V4(ctl_ip), metrics_port);
    let controller_args: Vec<String> = vec![
        format!("--cluster-name={name}"),
        format!("--kubeconfig={}", path(cluster.kubeconfig_path())),
        format!("--context={name}"),
        format!("--grpc-addr={grpc}"),
        format!("--metrics-addr={controller_metrics}"),
        format!("--trust-domain={TRUST_DOMAIN}"),
        format!("--locality={}/{zone}", cluster.region()),
        format!(
            "--stale-endpoint-grace={}ms",
            options.stale_endpoint_grace.as_millis()
        ),
        "--install-crds".into(),
    ];
    let controller = ChildProcess::spawn(
        format!("{name}/meridian-controller"),
        &meridian_binary("meridian-controller")?,
        &controller_args,
        &dir.join("controller.log"),
    )?;
    wait_ready(&format!("controller of {name}"), controller_metrics).await?;

    // The controller serves TLS with a certificate from the mesh CA; gateway and DNS pin
    // the root (`ca.crt` is what the meridian-ca-root ConfigMap holds) and check the
    // Service name, not the loopback address they dial.
    let controller_url = format!("https://{grpc}");
    let controller_tls = [
        format!("--controller-ca-file={}", path(&ca_dir.join("ca.crt"))),
        format!("--controller-server-name={CONTROLLER_SERVER_NAME}"),
    ];
    // The tokens the kubelet would project (audience meridian-controller): the controller
    // serves snapshots only to the gateway and DNS ServiceAccounts, and signs only for the
    // gateway's (TokenReview).
    let token_file = write_controller_token(cluster, dir, GATEWAY_SERVICE_ACCOUNT).await?;
    let dns_token_file = write_controller_token(cluster, dir, DNS_SERVICE_ACCOUNT).await?;
    let gateway_args: Vec<String> = vec![
        format!("--token-file={}", path(&token_file)),
        format!("--cluster={name}"),
        format!("--controller={controller_url}"),
        controller_tls[0].clone(),
        controller_tls[1].clone(),
        format!("--trust-domain={TRUST_DOMAIN}"),
        format!("--tunnel-addr={gw_ip}:{TUNNEL_PORT}"),
        format!("--admin-addr={gw_ip}:{ADMIN_PORT}"),
        format!("--config-dump-addr={gw_ip}:{CONFIG_DUMP_PORT}"),
        format!("--outbound-bind={gw_ip}"),
        format!(
            "--peer-probe-interval={}ms",
            options.peer_probe_interval.as_millis()
        ),
        "--instance=meridian-gateway-0".into(),
        // Pod IPs of the testbed are 10.B.X.Y, served on 127.B.X.Y.
        "--dial-address-map=10.0.0.0/8=127.0.0.0/8".into(),
    ];
    let gateway = ChildProcess::spawn(
        format!("{name}/meridian-gateway"),
        &meridian_binary("meridian-gateway")?,
        &gateway_args,
        &dir.join("gateway.log"),
    )?;
    wait_ready(
        &format!("gateway of {name}"),
        SocketAddr::new(IpAddr::V4(gw_ip), ADMIN_PORT),
    )
    .await?;

    let dns_ip = cluster.allocate_address()?;
    let [dns_port, dns_admin_port] = free_ports(dns_ip)?;
    let dns_addr = SocketAddr::new(IpAddr::V4(dns_ip), dns_port);
    let dns_admin = SocketAddr::new(IpAddr::V4(dns_ip), dns_admin_port);
    let dns_args = vec![
        format!("--cluster={name}"),
        format!("--controller={controller_url}"),
        controller_tls[0].clone(),
        controller_tls[1].clone(),
        format!("--token-file={}", path(&dns_token_file)),
        format!("--listen={dns_addr}"),
        format!("--admin={dns_admin}"),
    ];
    let dns = ChildProcess::spawn(
        format!("{name}/meridian-dns"),
        &meridian_binary("meridian-dns")?,
        &dns_args,
        &dir.join("dns.log"),
    )?;
    wait_ready(&format!("DNS server of {name}"), dns_admin).await?;
    let resolver = if options.resolvers {
        let ip = cluster.allocate_address()?;
        Some(
            Resolver::start(
                &name,
                ip,
                &["global.", "clusterset.local."],
                dns_addr,
                &dir.join("unbound"),
            )
            .await?,
        )
    } else {
        None
    };

    Ok(Member {
        name,
        controller,
        grpc,
        controller_metrics,
        controller_args,
        gateway: Some(gateway),
        gateway_args,
        gateway_pod,
        dns,
        dns_addr,
        dns_admin,
        dns_args,
        resolver,
        dir: dir.to_path_buf(),
    })
}

/// Writes `<dir>/<account>.token`: a token of `meridian-system/<account>` for the
/// controller's audience.
async fn write_controller_token(cluster: &Cluster, dir: &Path, account: &str) -> Result<PathBuf> {
    let file = dir.join(format!("{account}.token"));
    let token = service_account_token(cluster, account, Some(CONTROLLER_AUDIENCE)).await?;
    std::fs::write(&file, token).map_err(Error::io(format!("writing {}", file.display())))?;
    Ok(file)
}

/// Creates the ServiceAccount `meridian-system/<name>` (if missing) and a token for it, as
/// the kubelet would project into a pod running as it: for `audience`, or for the API
/// server's default audience with `None`.
pub async fn service_account_token(
    cluster: &Cluster,
    name: &str,
    audience: Option<&str>,
) -> Result<String> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kube::api::{Api, PostParams};

    let accounts = Api::<ServiceAccount>::namespaced(cluster.client(), SYSTEM_NAMESPACE);
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some(name.into());
    match accounts.create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(Error::kube("creating the gateway ServiceAccount")(e)),
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(24 * 3600),
            audiences: audience.map(|a| vec![a.to_owned()]).unwrap_or_default(),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let issued = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .map_err(Error::kube("requesting a gateway token"))?;
    issued
        .status
        .map(|s| s.token)
        .ok_or_else(|| Error::InvalidSpec("the API server returned no token".into()))
}

/// Waits until `admin` answers `/healthz/ready` with 200 (or, for the controller's metrics
/// listener, `/metrics`).
async fn wait_ready(what: &str, admin: SocketAddr) -> Result<()> {
    let start = Instant::now();
    loop {
        for path in ["/healthz/ready", "/metrics"] {
            if let Ok(r) = http_get(admin, path, &[]).await
                && r.status == 200
            {
                return Ok(());
            }
        }
        if start.elapsed() > CONVERGE_TIMEOUT {
            return Err(Error::Timeout {
                what: format!("{what} to be ready at {admin}"),
                after: CONVERGE_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
