//! `meridianctl cluster add|rotate-credentials|remove` against testbed clusters.

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use meridian_crd::registration::{self, CLUSTER_NAME_ANNOTATION, GATEWAY_ADDRESS_ANNOTATION};
use meridian_testbed::{ClusterSpec, Testbed};

use super::support::{meridianctl, ok};

const WAIT: std::time::Duration = std::time::Duration::from_secs(60);
const POLL: std::time::Duration = std::time::Duration::from_millis(200);

async fn client_from(kubeconfig: &str) -> Client {
    let kc = Kubeconfig::from_yaml(kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

async fn registrations(client: Client) -> Vec<Secret> {
    Api::<Secret>::namespaced(client, "meridian-system")
        .list(&ListParams::default().labels(&registration::selector()))
        .await
        .unwrap()
        .items
}

/// `cluster add` writes a working, least-privilege registration; again is harmless;
/// `cluster remove` takes it away.
#[tokio::test(flavor = "multi_thread")]
async fn add_then_remove() {
    let tb = Testbed::start(&[
        ClusterSpec::new("east", "sh", ["2000400001"]),
        ClusterSpec::new("west", "sh", ["200002"]),
    ])
    .await
    .unwrap();
    let east = tb.cluster("east").unwrap();
    let west = tb.cluster("west").unwrap();
    let (host, member) = (
        east.kubeconfig_path().to_str().unwrap(),
        west.kubeconfig_path().to_str().unwrap(),
    );
    let add = [
        "cluster",
        "add",
        "--kubeconfig",
        member,
        "--context",
        "west",
        "--host-kubeconfig",
        host,
        "--gateway-address",
        "127.0.0.9:15008",
    ];
    let out = ok(&add);
    assert!(out.contains("cluster \"west\" registered"), "{out}");
    ok(&add);

    let secrets = registrations(east.client()).await;
    assert_eq!(secrets.len(), 1, "one registration after two adds");
    let s = &secrets[0];
    let annotations = s.metadata.annotations.clone().unwrap();
    assert_eq!(annotations[CLUSTER_NAME_ANNOTATION], "west");
    assert_eq!(annotations[GATEWAY_ADDRESS_ANNOTATION], "127.0.0.9:15008");
    let kubeconfig = registration::kubeconfig(s).unwrap();
    assert!(kubeconfig.contains(west.server_url()), "{kubeconfig}");

    // The minted identity reads what the controller needs and nothing else.
    let reader = client_from(&kubeconfig).await;
    Api::<Service>::all(reader.clone())
        .list(&ListParams::default())
        .await
        .expect("reader lists Services");
    let denied = Api::<Secret>::all(reader)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(denied, kube::Error::Api(ref s) if s.code == 403),
        "{denied:?}"
    );

    ok(&[
        "cluster",
        "remove",
        "west",
        "--host-kubeconfig",
        host,
        "--kubeconfig",
        member,
        "--context",
        "west",
    ]);
    assert!(registrations(east.client()).await.is_empty());
    let gone = meridianctl(&["cluster", "remove", "west", "--host-kubeconfig", host]);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr)
            .contains("no registration Secret for cluster \"west\"")
    );
}

/// The token of a registration kubeconfig and the lifetime the API server granted it
/// (`exp - iat` of the JWT).
fn token_and_lifetime(kubeconfig: &str) -> (String, i64) {
    use base64::Engine as _;
    let kc: serde_json::Value = serde_yaml_ng::from_str(kubeconfig).unwrap();
    let token = kc["users"][0]["user"]["token"].as_str().unwrap().to_owned();
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    (token, lifetime)
}

fn kubeconfig_of(secret: &Secret) -> String {
    registration::kubeconfig(secret).unwrap()
}

async fn phase(host: Client, member: &str) -> Option<String> {
    let m = Api::<meridian_crd::MemberCluster>::all(host)
        .get_opt(member)
        .await
        .ok()??;
    Some(m.status?.phase.to_string())
}

/// Reader tokens expire (30 days unless --token-ttl says otherwise, as the API server
/// grants it), and `rotate-credentials` swaps in a new one while the old one keeps
/// working and the host's controller keeps the member in sync.
#[tokio::test(flavor = "multi_thread")]
async fn reader_tokens_expire_and_rotate_without_downtime() {
    let tb = Testbed::start(&[
        ClusterSpec::new("east", "sh", ["2000400001"]),
        ClusterSpec::new("west", "sh", ["200002"]),
    ])
    .await
    .unwrap();
    let east = tb.cluster("east").unwrap();
    let west = tb.cluster("west").unwrap();
    let (host, member) = (
        east.kubeconfig_path().to_str().unwrap(),
        west.kubeconfig_path().to_str().unwrap(),
    );
    let out = ok(&[
        "cluster",
        "add",
        "--kubeconfig",
        member,
        "--context",
        "west",
        "--host-kubeconfig",
        host,
        "--gateway-address",
        "127.0.0.9:15008",
    ]);
    assert!(out.contains("the token expires"), "{out}");
    let before = registrations(east.client()).await.remove(0);
    let (old_token, lifetime) = token_and_lifetime(&kubeconfig_of(&before));
    assert_eq!(lifetime, 30 * 24 * 3600, "30 days by default");

    // The host's controller follows the registration.
    let ip = tb.allocate_address().unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let _controller = tokio::process::Command::new(
        meridian_testbed::mesh::meridian_binary("meridian-controller").unwrap(),
    )
    .args([
        "--cluster-name=east",
        "--kubeconfig",
        host,
        "--context=east",
    ])
    .arg(format!("--grpc-addr={ip}:15010"))
    .arg(format!("--metrics-addr={ip}:15014"))
    .args(["--install-crds", "--leader-elect=false"])
    .stderr(log.reopen().unwrap())
    .kill_on_drop(true)
    .spawn()
    .expect("the controller binary (cargo build -p meridian-controller)");
    let synced = move || async move {
        (phase(east.client(), "west").await.as_deref() == Some("Synced")).then_some(())
    };
    let what = format!("west Synced (controller log: {})", log.path().display());
    meridian_api::testing::eventually(&what, WAIT, POLL, synced).await;

    let out = ok(&[
        "cluster",
        "rotate-credentials",
        "west",
        "--kubeconfig",
        member,
        "--context",
        "west",
        "--host-kubeconfig",
        host,
        "--token-ttl",
        "2h",
    ]);
    assert!(
        out.contains("rotated the token of cluster \"west\""),
        "{out}"
    );
    assert!(!out.contains(&old_token), "the token is never printed");
    let after = registrations(east.client()).await.remove(0);
    let (new_token, lifetime) = token_and_lifetime(&kubeconfig_of(&after));
    assert_ne!(new_token, old_token);
    assert_eq!(lifetime, 2 * 3600, "--token-ttl is requested and granted");
    assert_eq!(
        after.metadata.annotations, before.metadata.annotations,
        "name and gateway address kept"
    );
    assert_eq!(
        kubeconfig_of(&after).replace(&new_token, ""),
        kubeconfig_of(&before).replace(&old_token, ""),
        "only the token changed"
    );
    // No downtime: both tokens work until the old one expires.
    for kubeconfig in [kubeconfig_of(&before), kubeconfig_of(&after)] {
        Api::<Service>::all(client_from(&kubeconfig).await)
            .list(&ListParams::default())
            .await
            .expect("the token reads Services");
    }
    // The controller reconnects with the new token and the member is Synced with it.
    let what = format!(
        "the controller to reconnect (log: {})",
        log.path().display()
    );
    meridian_api::testing::eventually(&what, WAIT, POLL, || async {
        std::fs::read_to_string(log.path())
            .ok()?
            .contains("registration changed, reconnecting")
            .then_some(())
    })
    .await;
    meridian_api::testing::eventually("west Synced again", WAIT, POLL, synced).await;

    let short = meridianctl(&[
        "cluster",
        "rotate-credentials",
        "west",
        "--kubeconfig",
        member,
        "--host-kubeconfig",
        host,
        "--token-ttl",
        "5m",
    ]);
    assert_eq!(short.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 10m"));
    let unknown = meridianctl(&[
        "cluster",
        "rotate-credentials",
        "north",
        "--kubeconfig",
        member,
        "--host-kubeconfig",
        host,
    ]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("no registration Secret for cluster \"north\"")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_clearly() {
    let tb = Testbed::start(&[ClusterSpec::new("east", "sh", ["z1"])])
        .await
        .unwrap();
    let host = tb
        .cluster("east")
        .unwrap()
        .kubeconfig_path()
        .to_str()
        .unwrap()
        .to_owned();
    let out = meridianctl(&[
        "cluster",
        "add",
        "--kubeconfig",
        &host,
        "--context",
        "nope",
        "--host-kubeconfig",
        &host,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("context \"nope\" not found"));
    let out = meridianctl(&[
        "cluster",
        "add",
        "--kubeconfig",
        &host,
        "--name",
        "Bad_Name",
        "--host-kubeconfig",
        &host,
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a DNS label"));
    // What the host's controller would refuse is refused before anything is created.
    let out = meridianctl(&[
        "cluster",
        "add",
        "--kubeconfig",
        &host,
        "--server",
        "http://127.0.0.1:8080",
        "--host-kubeconfig",
        &host,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "would refuse this registration: clusters[0].cluster.server: must be an https:// URL"
        ),
        "{err}"
    );
    assert!(
        registrations(tb.cluster("east").unwrap().client())
            .await
            .is_empty()
    );
}

/// `cluster add --cluster-property` records the member name as the member's MCS cluster id
/// (KEP-2149 ClusterProperty `cluster.clusterset.k8s.io`): a clear error while the CRD is
/// not installed, written once it is, harmless again, and a different existing id is never
/// overwritten.
#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_id_is_written_when_asked_and_never_changed() {
    let tb = Testbed::start(&[
        ClusterSpec::new("east", "sh", ["2000400001"]),
        ClusterSpec::new("west", "sh", ["200002"]),
    ])
    .await
    .unwrap();
    let (east, west) = (tb.cluster("east").unwrap(), tb.cluster("west").unwrap());
    let (host, member) = (
        east.kubeconfig_path().to_str().unwrap(),
        west.kubeconfig_path().to_str().unwrap(),
    );
    let add = |name: &'static str| {
        [
            "cluster",
            "add",
            "--kubeconfig",
            member,
            "--context",
            "west",
            "--host-kubeconfig",
            host,
            "--name",
            name,
            "--cluster-property",
        ]
    };
    let id = || {
        west.kubectl(&[
            "get",
            "clusterproperty",
            "cluster.clusterset.k8s.io",
            "-o",
            "jsonpath={.spec.value}",
        ])
    };

    let out = meridianctl(&add("west"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "no CRD yet: {stderr}");
    assert!(
        stderr.contains("ClusterProperty (about.k8s.io/v1alpha1) is not served")
            && stderr.contains("kubectl apply -k manifests/mcs"),
        "{stderr}"
    );
    assert!(
        registrations(east.client()).await.is_empty(),
        "nothing is registered when the id cannot be recorded"
    );

    let crd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/mcs/clusterproperties.yaml"
    );
    west.kubectl(&["apply", "-f", crd]).unwrap();
    let served = tokio::time::Instant::now() + WAIT;
    loop {
        let out = meridianctl(&add("west"));
        if out.status.success() {
            break;
        }
        assert!(tokio::time::Instant::now() < served, "CRD never served");
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(id().unwrap(), "west");
    ok(&add("west"));
    assert_eq!(id().unwrap(), "west", "again is harmless");

    let out = meridianctl(&add("west-2"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the cluster id is already \"west\""),
        "{stderr}"
    );
    assert_eq!(id().unwrap(), "west", "a different id is never written");
}
