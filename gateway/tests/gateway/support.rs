//! Shared helpers: echo backends on 127.x addresses, real gateway processes fed by a fake
//! Discovery server, snapshot builders, and metrics scraping.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian_api::proto::{
    Endpoint, GlobalService, Locality, Peer, Protocol, ServicePort, Snapshot,
};
use meridian_api::testing::FakeDiscovery;
use meridian_identity::testing::{TestCa, TestCert};
pub(crate) use meridian_testbed::metrics;
pub(crate) use meridian_testbed::traffic::http_get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// Trust domain of every test mesh.
pub(crate) const TD: &str = "meridian.test";

/// Upper bound for anything the tests wait for (a gateway starting, a snapshot applied, a
/// counter catching up). It only turns a hang into a failure on a loaded machine; no
/// assertion depends on how fast things happen.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `f` until it yields `Some`, or fails naming `what` after [`PATIENCE`].
pub(crate) async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    meridian_api::testing::eventually(what, PATIENCE, Duration::from_millis(25), f).await
}

/// A backend "pod": HTTP echo answering `<cluster>/<pod>`, or 503 while failing, on
/// `ip:port`; counts the requests it gets, the connections it accepted and those still
/// open.
#[derive(Clone)]
pub(crate) struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub failing: Arc<AtomicBool>,
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
}

/// When [`Backend::http_hanging_up`] closes a connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum HangUp {
    /// This long after each response.
    After(Duration),
    /// When the next request on the connection arrives, without answering it.
    OnNextRequest,
}

/// Counts a connection as open until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend {
    pub(crate) async fn http(ip: Ipv4Addr, cluster: &str, pod: &str) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let body = Bytes::from(format!("{cluster}/{pod}"));
        let (h, f, a, o) = (
            hits.clone(),
            failing.clone(),
            accepted.clone(),
            open.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                // As real servers do; small writes must not wait on delayed ACKs.
                let _ = tcp.set_nodelay(true);
                a.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard::new(&o);
                let (h, f, body) = (h.clone(), f.clone(), body.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    let svc = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let status = if f.load(Ordering::SeqCst) {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::OK
                        };
                        let resp = Response::builder()
                            .status(status)
                            .body(Full::new(body.clone()))
                            .unwrap();
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            hits,
            failing,
            accepted,
            open,
        }
    }

    /// An HTTP/1.1 server that keeps connections alive by the protocol (no
    /// `Connection: close`) but hangs up on them as `hang_up` says: what a server with a
    /// short keep-alive timeout does to an idle client connection. Answers
    /// `<cluster>/<pod>` to requests without a body; counts answered requests.
    pub(crate) async fn http_hanging_up(
        ip: Ipv4Addr,
        cluster: &str,
        pod: &str,
        hang_up: HangUp,
    ) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let body = format!("{cluster}/{pod}");
        let (h, a, o) = (hits.clone(), accepted.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let guard = OpenGuard::new(&o);
                let (h, body) = (h.clone(), body.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    let mut served = 0;
                    loop {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        if served > 0 && hang_up == HangUp::OnNextRequest {
                            // Dropped unanswered, as if the idle timeout struck just as
                            // the request arrived.
                            return;
                        }
                        h.fetch_add(1, Ordering::SeqCst);
                        served += 1;
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tcp.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                        if let HangUp::After(linger) = hang_up {
                            tokio::time::sleep(linger).await;
                            // Dropped without a word, as an idle-timeout close looks.
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            hits,
            failing: Arc::new(AtomicBool::new(false)),
            accepted,
            open,
        }
    }

    /// A raw TCP echo server: writes back every byte; on EOF, shuts its side down.
    pub(crate) async fn tcp_echo(ip: Ipv4Addr) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                h.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match tcp.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if tcp.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = tcp.shutdown().await;
                });
            }
        });
        Self {
            addr,
            hits,
            failing: Arc::new(AtomicBool::new(false)),
            accepted: Arc::new(AtomicUsize::new(0)),
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// A snapshot peer entry for `cluster` (a member whose gateway is at `address`).
pub(crate) fn member(cluster: &str, address: SocketAddr) -> Peer {
    Peer {
        cluster: cluster.into(),
        address: address.to_string(),
        identity: format!("spiffe://{TD}/cluster/{cluster}/gateway"),
        locality: None,
    }
}

/// Sends one CONNECT for `target` (of `service`, `host:port`) through `gw`'s tunnel,
/// presenting `creds`: the response (its upgrade is the stream when the status is 200).
pub(crate) async fn tunnel_request(
    gw: &Gateway,
    creds: meridian_identity::Credentials,
    target: SocketAddr,
    service: &str,
) -> std::io::Result<Response<hyper::body::Incoming>> {
    let connector = meridian_identity::tls::watch(creds).unwrap().1.connector();
    let server = meridian_identity::Identity::gateway(TD, &gw.cluster).unwrap();
    let tcp = TcpStream::connect(gw.tunnel).await?;
    let tls = connector.connect(tcp, &server).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = Request::connect(target.to_string())
        .header("meridian-service", service)
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)
}

/// The count of `meridian_gateway_tunnel_refusals_total{reason}` once it reaches `want`
/// (the server counts after the client may already have seen the refusal).
pub(crate) async fn refusals(gw: &Gateway, reason: &str, want: f64) -> f64 {
    let what = format!("{}: {want} tunnel refusals {reason}", gw.cluster);
    eventually(&what, || async {
        let n = gw
            .metric(
                "meridian_gateway_tunnel_refusals_total",
                &[("reason", reason)],
            )
            .await;
        (n >= want).then_some(n)
    })
    .await
}

/// An endpoint entry for a snapshot.
pub(crate) fn endpoint(
    cluster: &str,
    addr: SocketAddr,
    zone: (&str, &str),
    ready: bool,
) -> Endpoint {
    Endpoint {
        cluster: cluster.into(),
        address: addr.ip().to_string(),
        ports: [("http".to_string(), u32::from(addr.port()))].into(),
        locality: Some(Locality {
            region: zone.0.into(),
            zone: zone.1.into(),
            subzone: String::new(),
        }),
        labels: BTreeMap::new().into_iter().collect(),
        ready,
        stale: false,
        pod: format!("pod-{addr}"),
    }
}

/// A service with one port named `http`.
pub(crate) fn service(
    hostname: &str,
    protocol: Protocol,
    port: u32,
    listener_port: u16,
    endpoints: Vec<Endpoint>,
    policy_json: &str,
) -> GlobalService {
    GlobalService {
        name: hostname.split('.').next().unwrap().into(),
        namespace: "default".into(),
        hostname: hostname.into(),
        ports: vec![ServicePort {
            name: "http".into(),
            port,
            protocol: protocol as i32,
            listener_port: u32::from(listener_port),
        }],
        endpoints,
        policy_json: policy_json.into(),
        ..Default::default()
    }
}

/// How a gateway gets its certificate.
pub(crate) enum Certs {
    /// Static PEM files.
    Files(TestCert),
    /// A `Certificates` signer at this URL, with this lifetime.
    Signer(String, &'static str),
}

/// A real `meridian-gateway` process with its own fake controller.
pub(crate) struct Gateway {
    pub cluster: String,
    pub controller: FakeDiscovery,
    pub ip: Ipv4Addr,
    pub tunnel: SocketAddr,
    /// Probes and metrics.
    pub admin: SocketAddr,
    /// `/config_dump` (and probes and metrics).
    pub dump: SocketAddr,
    pub locality: (String, String),
    child: Child,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway for `cluster` on `ip` (outbound listeners, tunnel and admin all on
    /// that loopback address). It waits for its first snapshot, which the caller pushes.
    pub(crate) async fn start(
        cluster: &str,
        ip: Ipv4Addr,
        locality: (&str, &str),
        certs: Certs,
    ) -> Self {
        Self::start_with(cluster, ip, locality, certs, &[]).await
    }

    /// [`Gateway::start`] with extra command-line flags.
    pub(crate) async fn start_with(
        cluster: &str,
        ip: Ipv4Addr,
        locality: (&str, &str),
        certs: Certs,
        extra: &[&str],
    ) -> Self {
        // The delta stream, as the real controller serves it.
        let controller = FakeDiscovery::start_delta().await.unwrap();
        let ports = meridian_testbed::free_ports(ip).unwrap();
        let cmd = Command::new(env!("CARGO_BIN_EXE_meridian-gateway"));
        Self::spawn(cmd, controller, ports, cluster, ip, locality, certs, extra).await
    }

    /// A gateway whose process runs inside network namespace `netns` (`ip netns exec`) on
    /// `ip` there, with tunnel, admin and config-dump ports `ports` (free there); its fake
    /// controller listens on `controller_ip`, which the namespace must reach.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start_in_netns(
        netns: &str,
        controller_ip: Ipv4Addr,
        ports: [u16; 3],
        cluster: &str,
        ip: Ipv4Addr,
        locality: (&str, &str),
        certs: Certs,
        extra: &[&str],
    ) -> Self {
        let controller = FakeDiscovery::start_delta_on(SocketAddr::from((controller_ip, 0)))
            .await
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            netns,
            env!("CARGO_BIN_EXE_meridian-gateway"),
        ]);
        Self::spawn(cmd, controller, ports, cluster, ip, locality, certs, extra).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn spawn(
        mut cmd: Command,
        controller: FakeDiscovery,
        [tunnel_port, admin_port, dump_port]: [u16; 3],
        cluster: &str,
        ip: Ipv4Addr,
        locality: (&str, &str),
        certs: Certs,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("meridian-gw-{cluster}-"))
            .tempdir()
            .unwrap();
        let tunnel = SocketAddr::from((ip, tunnel_port));
        let admin = SocketAddr::from((ip, admin_port));
        let dump = SocketAddr::from((ip, dump_port));
        cmd.arg("--cluster")
            .arg(cluster)
            .arg("--controller")
            .arg(controller.url())
            .arg("--tunnel-addr")
            .arg(tunnel.to_string())
            .arg("--admin-addr")
            .arg(admin.to_string())
            .arg("--config-dump-addr")
            .arg(dump.to_string())
            .arg("--outbound-bind")
            .arg(ip.to_string())
            .arg("--peer-probe-interval")
            .arg("200ms")
            // Only a bound on a slow handshake (peers are dialled on a loaded machine);
            // every "dead" peer or endpoint in these tests refuses at once.
            .arg("--connect-timeout")
            .arg("10s")
            .arg("--drain-timeout")
            .arg("1s")
            .args(extra);
        match certs {
            Certs::Files(cert) => {
                let files = cert.write(dir.path(), "gateway");
                cmd.arg("--cert-chain")
                    .arg(files.chain)
                    .arg("--key")
                    .arg(files.key)
                    .arg("--root")
                    .arg(files.root);
            }
            Certs::Signer(url, ttl) => {
                cmd.arg("--ca").arg(url).arg("--cert-ttl").arg(ttl);
            }
        }
        cmd.env(
            "RUST_LOG",
            std::env::var("GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
        let child = cmd.spawn().expect("start meridian-gateway");
        Self {
            cluster: cluster.into(),
            controller,
            ip,
            tunnel,
            admin,
            dump,
            locality: (locality.0.into(), locality.1.into()),
            child,
            _dir: dir,
        }
    }

    /// This gateway as a peer entry in other clusters' snapshots.
    pub(crate) fn as_peer(&self) -> Peer {
        Peer {
            cluster: self.cluster.clone(),
            address: self.tunnel.to_string(),
            identity: format!("spiffe://{TD}/cluster/{}/gateway", self.cluster),
            locality: Some(Locality {
                region: self.locality.0.clone(),
                zone: self.locality.1.clone(),
                subzone: String::new(),
            }),
        }
    }

    /// Pushes a snapshot for this gateway and waits until it is in use.
    pub(crate) async fn push(&self, version: u64, services: Vec<GlobalService>, peers: Vec<Peer>) {
        self.controller.push(Snapshot {
            version,
            cluster: self.cluster.clone(),
            locality: Some(Locality {
                region: self.locality.0.clone(),
                zone: self.locality.1.clone(),
                subzone: String::new(),
            }),
            trust_domain: TD.into(),
            services,
            peers,
            drains: Vec::new(),
        });
        self.wait_ready().await;
        // The version gauge moves once the snapshot's listeners are reconciled and its
        // routing is the one requests read. On the delta stream it shows the system
        // version of the state pushed.
        let system = self.version();
        let want = format!("meridian_gateway_snapshot_version {system}");
        let what = format!("{}: snapshot {version} applied", self.cluster);
        eventually(&what, || async {
            self.metrics()
                .await
                .lines()
                .any(|l| l == want)
                .then_some(())
        })
        .await;
    }

    /// The system version of the last state pushed to this gateway's controller (what its
    /// version gauge and config dump show once applied).
    pub(crate) fn version(&self) -> u64 {
        self.controller
            .resources()
            .map_or(0, |r| r.snapshot_version())
    }

    /// Waits for `/healthz/ready`.
    pub(crate) async fn wait_ready(&self) {
        let what = format!("{}: gateway ready", self.cluster);
        eventually(&what, || async {
            let ready = http_get(self.admin, "/healthz/ready", &[]).await;
            ready.is_ok_and(|r| r.status == 200).then_some(())
        })
        .await;
    }

    /// The `/metrics` text.
    pub(crate) async fn metrics(&self) -> String {
        metrics::scrape(self.admin).await.unwrap_or_default()
    }

    /// Sum of the samples of `name` whose labels contain every `label="value"` given.
    pub(crate) async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metrics::sum(&self.metrics().await, name, labels)
    }

    /// The `/config_dump` JSON.
    pub(crate) async fn config_dump(&self) -> serde_json::Value {
        let dump = http_get(self.dump, "/config_dump", &[]).await.unwrap();
        serde_json::from_slice(&dump.body).unwrap()
    }

    /// An outbound listener address of this gateway.
    pub(crate) fn listener(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    /// Stops the process.
    pub(crate) async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// A keep-alive HTTP/1.1 client on one connection to a gateway listener.
pub(crate) struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: String,
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr, host: &str) -> Self {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Self {
            sender,
            host: host.into(),
        }
    }

    /// GET `/` with extra headers; status and body.
    pub(crate) async fn get(&mut self, headers: &[(&str, &str)]) -> (u16, String) {
        self.sender.ready().await.unwrap();
        let mut req = Request::get("/").header("host", &self.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .sender
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

/// Sends `requests` GETs and counts the answers per cluster (an echo body starts with its
/// backend's cluster name).
pub(crate) async fn answers_per_cluster(
    client: &mut Client,
    requests: usize,
) -> BTreeMap<String, usize> {
    let mut answers = BTreeMap::new();
    for _ in 0..requests {
        let (status, body) = client.get(&[]).await;
        assert_eq!(status, 200, "{body}");
        let cluster = body.split('/').next().unwrap_or_default().to_owned();
        *answers.entry(cluster).or_default() += 1;
    }
    answers
}

/// A mesh CA plus helpers to start gateways with certificates from it.
pub(crate) struct Mesh {
    pub ca: TestCa,
}

impl Mesh {
    pub(crate) fn new() -> Self {
        Self {
            ca: TestCa::new(TD),
        }
    }

    pub(crate) async fn gateway(
        &self,
        cluster: &str,
        ip: Ipv4Addr,
        locality: (&str, &str),
    ) -> Gateway {
        self.gateway_with(cluster, ip, locality, &[]).await
    }

    /// A gateway with extra command-line flags.
    pub(crate) async fn gateway_with(
        &self,
        cluster: &str,
        ip: Ipv4Addr,
        locality: (&str, &str),
        extra: &[&str],
    ) -> Gateway {
        let certs = Certs::Files(self.ca.issue(cluster));
        // One connection worker unless a test asks for more: the tests count upstream
        // connections, and pools are per worker.
        let mut flags = Vec::from(extra);
        if !extra.contains(&"--workers") {
            flags.extend(["--workers", "1"]);
        }
        Gateway::start_with(cluster, ip, locality, certs, &flags).await
    }

    /// A gateway with the product's defaults for everything the tests do not need to set
    /// (`--workers` by the core count): what the benchmark runs.
    #[allow(dead_code)] // benches/dataplane.rs
    pub(crate) async fn gateway_as_deployed(
        &self,
        cluster: &str,
        ip: Ipv4Addr,
        locality: (&str, &str),
    ) -> Gateway {
        let certs = Certs::Files(self.ca.issue(cluster));
        Gateway::start_with(cluster, ip, locality, certs, &[]).await
    }

    /// A gateway of `east` in r1/z1 on `ip`, started with `flags`, whose first snapshot
    /// (version 1) holds only `service`.
    pub(crate) async fn serving(
        &self,
        ip: Ipv4Addr,
        flags: &[&str],
        service: GlobalService,
    ) -> Gateway {
        let gw = self.gateway_with("east", ip, ("r1", "z1"), flags).await;
        gw.push(1, vec![service], vec![]).await;
        gw
    }
}
