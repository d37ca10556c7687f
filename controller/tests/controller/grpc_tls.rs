//! TLS on the controller's gRPC port: the serving certificate from the mesh CA, who can
//! and cannot connect, rotation under an open Watch stream, the plaintext fallback without
//! a CA, and the root published in the ConfigMap `meridian-ca-root` (the last against a
//! testbed API server with the real binary; the others in process).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meridian_api::channel::{ControllerEndpoint, ControllerTls};
use meridian_api::proto::discovery_client::DiscoveryClient;
use meridian_api::proto::{Snapshot, Subscriber};
use meridian_controller::Metrics;
use meridian_controller::grpc::auth::CallerAuth;
use meridian_controller::grpc::certificates::{CaCache, CaSource};
use meridian_controller::grpc::discovery::{DiscoveryService, SnapshotPublisher};
use meridian_controller::grpc::tls::{self, ServingCert, ServingSettings, Transport};
use meridian_controller::grpc::{self, Keepalive};
use meridian_identity::RootCa;
use meridian_identity::ca::INTERMEDIATE_TTL;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_util::sync::CancellationToken;

use crate::support::{Controller, eventually, init_tracing};

const SERVER_NAME: &str = "meridian-controller.meridian-system.svc";
const WAIT: Duration = Duration::from_secs(30);

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("grpc-tls-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn snap(version: u64) -> Snapshot {
    Snapshot {
        version,
        cluster: "east".into(),
        ..Snapshot::default()
    }
}

fn subscriber() -> Subscriber {
    Subscriber {
        cluster: "east".into(),
        role: "gateway".into(),
        instance: "test".into(),
    }
}

/// A Discovery server over TLS with a CA read from `ca_dir`, in process.
struct Server {
    addr: SocketAddr,
    publisher: SnapshotPublisher,
    serving: ServingCert,
}

async fn serve(ca_dir: &Path, ttl: Duration) -> Server {
    let serving = ServingCert::new();
    let settings = ServingSettings {
        dns_names: tls::dns_names("meridian-system", &[]),
        spiffe_id: Some("spiffe://meridian.local/cluster/east/controller".into()),
        ttl,
    };
    let ca = Arc::new(CaCache::new(CaSource::Dir(ca_dir.to_path_buf())));
    tokio::spawn(serving.clone().run(ca, settings));
    let publisher = SnapshotPublisher::new();
    publisher.publish(snap(1));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let discovery = DiscoveryService::new(
        "east".into(),
        publisher.clone(),
        Arc::new(Metrics::default()),
        CallerAuth::Unauthenticated,
    );
    tokio::spawn(grpc::serve(
        listener,
        Transport::tls(&serving),
        Keepalive::default(),
        discovery,
        None,
        CancellationToken::new(),
    ));
    Server {
        addr,
        publisher,
        serving,
    }
}

/// Opens a Watch through the shared client code (`meridian_api::channel`).
async fn watch_tls(
    addr: SocketAddr,
    root: &Path,
    server_name: &str,
) -> Result<tonic::Streaming<Snapshot>, String> {
    let endpoint = ControllerEndpoint::new(
        format!("https://{addr}"),
        Some(ControllerTls {
            ca_file: root.to_path_buf(),
            server_name: server_name.into(),
        }),
    )
    .map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| chain(&e))?;
    DiscoveryClient::new(channel)
        .watch(subscriber())
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| e.to_string())
}

/// An error with its sources (tonic's transport errors hide the cause otherwise).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

async fn watch_plain(addr: SocketAddr) -> Result<tonic::Streaming<Snapshot>, String> {
    let mut client = DiscoveryClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| e.to_string())?;
    client
        .watch(subscriber())
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| e.to_string())
}

/// Writes east's intermediate and a fresh mesh root into `dir` (the `--ca-dir` layout).
fn install_ca(dir: &Path) {
    RootCa::generate("meridian.local")
        .unwrap()
        .issue_intermediate("meridian.local", "east", INTERMEDIATE_TTL)
        .unwrap()
        .write_dir(dir)
        .unwrap();
}

/// The leaf certificate the server presents to a new connection.
async fn served_leaf(addr: SocketAddr, root: &Path) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in meridian_api::channel::read_roots(root).unwrap() {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(meridian_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVER_NAME).unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

async fn ready(serving: &ServingCert) {
    let mut rx = serving.subscribe();
    tokio::time::timeout(
        WAIT,
        rx.wait_for(|s| matches!(s, tls::ServingState::Ready(_))),
    )
    .await
    .expect("a serving certificate is issued")
    .unwrap();
}

#[tokio::test]
async fn a_client_pinning_the_root_gets_snapshots() {
    let dir = Scratch::new("ok");
    install_ca(&dir.0);
    let server = serve(&dir.0, Duration::from_secs(3600)).await;
    let root = dir.0.join("ca.crt");
    let mut stream = watch_tls(server.addr, &root, SERVER_NAME).await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().version, 1);
    // The fully qualified Service name is in the certificate too.
    let mut stream = watch_tls(
        server.addr,
        &root,
        "meridian-controller.meridian-system.svc.cluster.local",
    )
    .await
    .unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().version, 1);
}

/// A snapshot of `n` services with one endpoint each.
fn mesh(version: u64, n: u8) -> Snapshot {
    Snapshot {
        services: (0..n)
            .map(|i| meridian_api::proto::GlobalService {
                hostname: format!("s{i}.default.global"),
                endpoints: vec![meridian_api::proto::Endpoint {
                    cluster: "west".into(),
                    address: format!("10.1.0.{i}"),
                    ready: true,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
        ..snap(version)
    }
}

/// The gateway's and DNS server's client (`Subscription`) against the controller's
/// Discovery server over TLS: the delta stream, and a one-endpoint change arriving as that
/// one resource.
#[tokio::test]
async fn a_subscription_follows_the_delta_stream_over_tls() {
    use meridian_api::subscription::{Subscription, SubscriptionConfig};
    let dir = Scratch::new("delta");
    install_ca(&dir.0);
    let server = serve(&dir.0, Duration::from_secs(3600)).await;
    ready(&server.serving).await;
    let mut snapshot = mesh(2, 30);
    server.publisher.publish(snapshot.clone());
    let mut config = SubscriptionConfig::new(format!("https://{}", server.addr), subscriber());
    config.tls = Some(ControllerTls {
        ca_file: dir.0.join("ca.crt"),
        server_name: SERVER_NAME.into(),
    });
    let subscription = Subscription::spawn(config).unwrap();
    let mut states = subscription.resources();
    let first = tokio::time::timeout(
        WAIT,
        states.wait_for(|r| r.as_ref().is_some_and(|r| r.hostnames().count() == 30)),
    )
    .await
    .expect("the first state")
    .unwrap()
    .clone()
    .unwrap();
    assert!(subscription.status().delta, "{:?}", subscription.status());

    snapshot.services[4].endpoints[0].ready = false;
    snapshot.version = 3;
    server.publisher.publish(snapshot);
    let second = tokio::time::timeout(
        WAIT,
        states.wait_for(|r| r.as_ref().is_some_and(|r| r.version() != first.version())),
    )
    .await
    .expect("the change")
    .unwrap()
    .clone()
    .unwrap();
    let touched = second.touched_since(&first);
    assert_eq!(touched.services, ["s4.default.global".to_owned()].into());
    assert!(!touched.header);
    let status = subscription.status();
    assert_eq!((status.resyncs, status.snapshots), (0, 2), "{status:?}");
    subscription.shutdown().await;
}

#[tokio::test]
async fn plaintext_foreign_root_and_wrong_name_clients_are_refused() {
    let dir = Scratch::new("refused");
    install_ca(&dir.0);
    let server = serve(&dir.0, Duration::from_secs(3600)).await;
    ready(&server.serving).await;

    let plain = watch_plain(server.addr).await;
    assert!(plain.is_err(), "a plaintext client must not get a snapshot");

    let other = dir.0.join("other-root.pem");
    std::fs::write(
        &other,
        RootCa::generate("attacker").unwrap().cert_pem().as_bytes(),
    )
    .unwrap();
    let err = watch_tls(server.addr, &other, SERVER_NAME)
        .await
        .expect_err("a client trusting another root refuses the controller");
    assert!(err.contains("UnknownIssuer"), "{err}");

    let err = watch_tls(server.addr, &dir.0.join("ca.crt"), "evil.example.com")
        .await
        .expect_err("a name the certificate does not carry is refused");
    assert!(err.contains("not valid for name"), "{err}");
}

#[tokio::test]
async fn rotation_replaces_the_certificate_without_breaking_streams() {
    let dir = Scratch::new("rotation");
    install_ca(&dir.0);
    // Renewed every 2 s (half of 4 s).
    let server = serve(&dir.0, Duration::from_secs(4)).await;
    let root = dir.0.join("ca.crt");
    let mut stream = watch_tls(server.addr, &root, SERVER_NAME).await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().version, 1);
    let first = served_leaf(server.addr, &root).await;

    eventually("the serving certificate renewed", || async {
        (served_leaf(server.addr, &root).await != first).then_some(())
    })
    .await;
    // The stream opened under the old certificate still delivers.
    server.publisher.publish(snap(2));
    let next = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("the open stream delivers after rotation")
        .unwrap()
        .unwrap();
    assert_eq!(next.version, 2);
    // And new clients get in with the new certificate.
    let mut fresh = watch_tls(server.addr, &root, SERVER_NAME).await.unwrap();
    assert_eq!(fresh.message().await.unwrap().unwrap().version, 2);
}

#[tokio::test]
async fn without_a_ca_the_port_is_plaintext_until_one_appears() {
    let dir = Scratch::new("no-ca");
    let server = serve(&dir.0, Duration::from_secs(3600)).await;
    let mut rx = server.serving.subscribe();
    tokio::time::timeout(WAIT, rx.wait_for(|s| matches!(s, tls::ServingState::NoCa)))
        .await
        .unwrap()
        .unwrap();
    let mut plain = watch_plain(server.addr).await.unwrap();
    assert_eq!(plain.message().await.unwrap().unwrap().version, 1);

    // `meridianctl ca init` later: new connections are TLS from then on, no restart.
    install_ca(&dir.0);
    ready(&server.serving).await;
    let mut stream = watch_tls(server.addr, &dir.0.join("ca.crt"), SERVER_NAME)
        .await
        .unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().version, 1);
    assert!(watch_plain(server.addr).await.is_err());
}

/// The real binary on a testbed API server: it publishes the root in the ConfigMap, and a
/// client pinning that ConfigMap's root gets snapshots over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_is_published_and_pins_the_served_certificate() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    use kube::api::{Api, PostParams};
    use meridian_testbed::{ClusterSpec, SYSTEM_NAMESPACE, Testbed};

    init_tracing();
    let testbed = Testbed::start(&[ClusterSpec::new("east", "us-east1", ["us-east1-a"])])
        .await
        .expect("testbed starts");
    let east = testbed.cluster("east").unwrap();
    let ca = RootCa::generate("meridian.local")
        .unwrap()
        .issue_intermediate("meridian.local", "east", INTERMEDIATE_TTL)
        .unwrap();
    let secret = meridian_controller::grpc::certificates::ca_secret(&ca, SYSTEM_NAMESPACE);
    Api::<Secret>::namespaced(east.client(), SYSTEM_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    let ip = testbed.allocate_address().unwrap();
    // This test is about TLS; who may watch is tested in `discovery_access`.
    let ctl = Controller::start(
        &testbed,
        east,
        ip,
        &["--initial-sync-timeout=1s", "--discovery-auth=none"],
    )
    .await;
    let (grpc, log) = (ctl.grpc, &ctl.log);

    let configmaps = Api::<ConfigMap>::namespaced(east.client(), SYSTEM_NAMESPACE);
    let what = format!("the ConfigMap meridian-ca-root (log: {})", log.display());
    let cm = eventually(&what, || async {
        configmaps.get_opt("meridian-ca-root").await.ok().flatten()
    })
    .await;
    let root_pem = cm.data.unwrap()["root-cert.pem"].clone();
    // The root only, never the intermediate.
    assert_eq!(root_pem, ca.root_pem());
    assert_eq!(
        cm.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "meridian"
    );

    let dir = Scratch::new("configmap");
    let root = dir.0.join("root-cert.pem");
    std::fs::write(&root, &root_pem).unwrap();
    let what = format!("a snapshot over TLS (log: {})", log.display());
    let snapshot = eventually(&what, || async {
        watch_tls(grpc, &root, SERVER_NAME)
            .await
            .ok()?
            .message()
            .await
            .ok()?
    })
    .await;
    assert_eq!(snapshot.cluster, "east");
    assert!(
        watch_plain(grpc).await.is_err(),
        "the binary serves TLS by default"
    );
}
