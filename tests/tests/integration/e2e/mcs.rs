//! The Kubernetes Multi-Cluster Services API on the e2e world, written after the Required
//! behaviours of the upstream conformance suite (`conformance/` in sigs.k8s.io/mcs-api) and
//! its DNS and connectivity checks. Services here carry no `meridian.io/export` label: a
//! ServiceExport alone exports them. docs/mcs.md maps each behaviour to its test.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use meridian_testbed::mesh::find_service;
use meridian_testbed::traffic::http_tally;
use meridian_testbed::{Cluster, PodHandle, PodSpec, SYSTEM_NAMESPACE};
use serde_json::Value;

use super::dns::{query, resolver};
use super::support::{NS, World, kubectl_apply};

/// How long anything may take to converge (a member's ServiceExport watch retries with
/// backoff until the CRD is served) before a test fails.
const CONVERGE: Duration = Duration::from_secs(90);

/// Polls `probe` every 200 ms until it returns `Some`, or fails naming `what`.
async fn until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(start.elapsed() < CONVERGE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `kubectl apply -k manifests/mcs` in every cluster, as docs/mcs.md says, and waits until
/// the resources are served.
async fn install_mcs(world: &World) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/mcs");
    let dir = dir.to_str().expect("a UTF-8 path");
    for c in world.testbed.clusters() {
        c.kubectl(&["apply", "-k", dir])
            .expect("the MCS manifests apply");
    }
    for c in world.testbed.clusters() {
        until("the MCS CRDs to be served", || {
            c.kubectl(&["get", "serviceimports.multicluster.x-k8s.io", "-A"])
                .ok()
        })
        .await;
    }
}

/// A Service `name` in the demo namespace selecting `app: name`, without the export label;
/// `spec` is added under `spec:` (indented by two spaces).
fn create_service(cluster: &Cluster, name: &str, spec: &str) {
    kubectl_apply(
        cluster,
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n{spec}"
        ),
    );
}

/// HTTP port 80 → 8080, selecting `app: name`.
fn http_spec(name: &str) -> String {
    format!(
        "  selector: {{app: {name}}}\n  ports: [{{name: http, port: 80, targetPort: 8080, protocol: TCP}}]\n"
    )
}

async fn add_pods(cluster: &Cluster, name: &str, n: usize) -> Vec<PodHandle> {
    let mut pods = Vec::new();
    for i in 0..n {
        let spec = PodSpec::new(format!("{name}-{}-{i}", cluster.name()))
            .namespace(NS)
            .app(name)
            .port("http", 8080);
        pods.push(cluster.add_pod(spec).await.expect("pod"));
    }
    cluster.sync_endpoints(NS).await.expect("endpoints");
    pods
}

fn export(cluster: &Cluster, name: &str) {
    kubectl_apply(
        cluster,
        &format!(
            "apiVersion: multicluster.x-k8s.io/v1beta1\nkind: ServiceExport\nmetadata: {{name: {name}, namespace: {NS}}}\n"
        ),
    );
}

fn unexport(cluster: &Cluster, name: &str) {
    cluster
        .kubectl(&["delete", "serviceexport", "-n", NS, name])
        .expect("the ServiceExport is deleted");
}

/// `kind/name` in the demo namespace as JSON, if it exists.
fn get(cluster: &Cluster, kind: &str, name: &str) -> Option<Value> {
    let out = cluster
        .kubectl(&["get", kind, "-n", NS, name, "-o", "json"])
        .ok()?;
    serde_json::from_str(&out).ok()
}

/// Waits until `cluster` has a ServiceImport `name` for which `check` holds.
async fn import_where(cluster: &Cluster, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    until(
        &format!("ServiceImport {name} in {} as expected", cluster.name()),
        || get(cluster, "serviceimports.multicluster.x-k8s.io", name).filter(&check),
    )
    .await
}

async fn no_import(cluster: &Cluster, name: &str) {
    until(
        &format!("no ServiceImport {name} in {}", cluster.name()),
        || {
            get(cluster, "serviceimports.multicluster.x-k8s.io", name)
                .is_none()
                .then_some(())
        },
    )
    .await;
}

/// `(status, reason)` of condition `type_` of the ServiceExport `name`.
fn condition(cluster: &Cluster, name: &str, type_: &str) -> Option<(String, String)> {
    let se = get(cluster, "serviceexports.multicluster.x-k8s.io", name)?;
    se["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

async fn condition_is(cluster: &Cluster, name: &str, type_: &str, status: &str, reason: &str) {
    until(
        &format!(
            "{type_}={status} ({reason}) on ServiceExport {name} in {}",
            cluster.name()
        ),
        || {
            (condition(cluster, name, type_) == Some((status.to_owned(), reason.to_owned())))
                .then_some(())
        },
    )
    .await;
}

fn clusters_of(import: &Value) -> Vec<String> {
    import["status"]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["cluster"].as_str().map(str::to_owned))
        .collect()
}

/// `(name, protocol, port)` of an import's ports, sorted.
fn ports_of(import: &Value) -> Vec<(String, String, i64)> {
    let mut v: Vec<_> = import["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["protocol"].as_str().unwrap_or_default().to_owned(),
                p["port"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

fn port(name: &str, protocol: &str, number: i64) -> (String, String, i64) {
    (name.to_owned(), protocol.to_owned(), number)
}

/// This cluster's VIP of `name` (its gateway's snapshot).
async fn vip(world: &World, cluster: &str, name: &str) -> String {
    let host = format!("{name}.{NS}.global");
    let dump = world
        .mesh
        .wait_for(cluster, &format!("a VIP for {host}"), |d| {
            find_service(d, &host)
                .and_then(|s| s["vip"].as_str())
                .is_some_and(|v| !v.is_empty())
        })
        .await
        .expect("a VIP");
    find_service(&dump, &host).expect("listed")["vip"]
        .as_str()
        .expect("a string")
        .to_owned()
}

/// `meridian-dns` of `cluster` answers `name type_` with exactly `want` (sorted data).
async fn answers(world: &World, cluster: &str, name: &str, type_: &str, want: &[&str]) {
    let dns = world.mesh.member(cluster).expect("member").dns_addr();
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    until(&format!("{name} {type_} = {want:?} at {cluster}"), || {
        let a = query(dns, name, type_);
        let mut got: Vec<String> = a
            .records
            .iter()
            .filter(|r| r.1 == type_)
            .map(|r| r.2.clone())
            .collect();
        got.sort();
        (a.status == "NOERROR" && got == want).then_some(())
    })
    .await;
}

async fn nxdomain(world: &World, cluster: &str, name: &str) {
    let dns = world.mesh.member(cluster).expect("member").dns_addr();
    until(&format!("NXDOMAIN for {name} at {cluster}"), || {
        (query(dns, name, "A").status == "NXDOMAIN").then_some(())
    })
    .await;
}

/// ClusterSetIP: a ServiceExport alone exports the Service; every cluster gets a
/// ServiceImport with its own VIP, the Service's ports and session affinity, the exporting
/// clusters; `<svc>.<ns>.svc.clusterset.local` resolves to the VIP (A, SRV, PTR, the
/// dns-version TXT) and carries traffic with Meridian's locality failover; the import lives
/// while at least one cluster exports and goes when none does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcs_clusterset_ip_import_dns_and_failover() {
    let world = World::start().await;
    install_mcs(&world).await;
    let (east, west) = (world.cluster("east"), world.cluster("west"));
    let spec = format!("{}  sessionAffinity: ClientIP\n", http_spec("hello"));
    create_service(east, "hello", &spec);
    create_service(west, "hello", &spec);
    let east_pods = add_pods(east, "hello", 2).await;
    add_pods(west, "hello", 2).await;
    assert!(
        get(east, "serviceimports.multicluster.x-k8s.io", "hello").is_none(),
        "no import before an export"
    );

    export(east, "hello");
    for c in world.testbed.clusters() {
        let vip = vip(&world, c.name(), "hello").await;
        let import = import_where(c, "hello", |i| {
            i["spec"]["ips"]
                .as_array()
                .is_some_and(|ips| !ips.is_empty())
        })
        .await;
        assert_eq!(import["spec"]["type"], "ClusterSetIP", "{}", c.name());
        assert_eq!(
            import["spec"]["ips"],
            serde_json::json!([vip]),
            "one IP, this cluster's VIP, in {}",
            c.name()
        );
        assert!(vip.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4()));
        assert_eq!(import["spec"]["ipFamilies"], serde_json::json!(["IPv4"]));
        assert_eq!(ports_of(&import), [port("http", "TCP", 80)]);
        assert_eq!(import["spec"]["sessionAffinity"], "ClientIP");
        assert_eq!(clusters_of(&import), ["east"]);
    }
    condition_is(east, "hello", "Valid", "True", "Valid").await;
    condition_is(east, "hello", "Ready", "True", "Exported").await;
    condition_is(east, "hello", "Conflict", "False", "NoConflicts").await;
    let property = east
        .kubectl(&[
            "get",
            "clusterproperty",
            "cluster.clusterset.k8s.io",
            "-o",
            "jsonpath={.spec.value}",
        ])
        .expect("the controller created the cluster id");
    assert_eq!(property, "east");

    // DNS, asked of east's meridian-dns.
    export(west, "hello");
    let name = format!("hello.{NS}.svc.clusterset.local");
    let east_vip = vip(&world, "east", "hello").await;
    answers(&world, "east", &name, "A", &[&east_vip]).await;
    // And the way a pod asks: through the cluster's resolver, whose stub zone
    // `clusterset.local.` points at meridian-dns.
    let through_resolver = resolver(&world, "east");
    until(&format!("{name} A through east's resolver"), || {
        let a = query(through_resolver, &name, "A");
        (a.status == "NOERROR" && a.records.iter().any(|r| r.1 == "A" && r.2 == east_vip))
            .then_some(())
    })
    .await;
    answers(
        &world,
        "east",
        &format!("_http._tcp.{name}"),
        "SRV",
        &[&format!("0 0 80 {name}.")],
    )
    .await;
    answers(
        &world,
        "east",
        "dns-version.clusterset.local",
        "TXT",
        &["\"1.0.0\""],
    )
    .await;
    let reverse: IpAddr = east_vip.parse().expect("an IP");
    let IpAddr::V4(v4) = reverse else {
        panic!("IPv4 VIP expected")
    };
    let o = v4.octets();
    answers(
        &world,
        "east",
        &format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0]),
        "PTR",
        &[&format!("{name}.")],
    )
    .await;
    nxdomain(&world, "east", &format!("nope.{NS}.svc.clusterset.local")).await;

    // Connectivity through the clusterset name, with locality failover underneath.
    for c in world.testbed.clusters() {
        import_where(c, "hello", |i| clusters_of(i) == ["east", "west"]).await;
    }
    world.converge("east", "hello", 4, 4).await;
    let dns = world.mesh.member("east").expect("member").dns_addr();
    let resolved: IpAddr = query(dns, &name, "A").records[0]
        .2
        .parse()
        .expect("an address");
    // As kube-proxy would: the VIP's managed Service leads to the gateway pod.
    east.sync_endpoints(SYSTEM_NAMESPACE)
        .await
        .expect("endpoints");
    let addr = east
        .resolve_cluster_ip(SocketAddr::new(resolved, 80))
        .await
        .expect("the VIP leads to the gateway")
        .into_iter()
        .next()
        .expect("a gateway behind the VIP");
    let t = http_tally(addr, 50, &[]).await;
    assert_eq!((t.from("east"), t.failed), (50, 0), "all local: {t:?}");
    world.set_unready("east", &east_pods, 2).await;
    world.converge("east", "hello", 4, 2).await;
    let t = http_tally(addr, 50, &[]).await;
    assert_eq!(
        (t.from("west"), t.failed),
        (50, 0),
        "east unhealthy: all west: {t:?}"
    );

    // Lives while one cluster exports, goes when none does.
    unexport(east, "hello");
    for c in world.testbed.clusters() {
        import_where(c, "hello", |i| clusters_of(i) == ["west"]).await;
    }
    unexport(west, "hello");
    for c in world.testbed.clusters() {
        no_import(c, "hello").await;
    }
    nxdomain(&world, "east", &name).await;
}

/// Conflicts resolved by the oldest export (west's, exported a second earlier, whatever the
/// cluster names say), reported on every constituent ServiceExport; ports are the union;
/// ExternalName and missing Services are invalid and imported nowhere; a headless export
/// is a Headless import without IPs whose name answers with the ready endpoints (and each
/// by `<pod>.<cluster>`), NXDOMAIN when none is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcs_conflicts_invalid_exports_and_headless() {
    let world = World::start().await;
    install_mcs(&world).await;
    let (east, west, far) = (
        world.cluster("east"),
        world.cluster("west"),
        world.cluster("far"),
    );
    let tcp = |n: i32| {
        format!("  selector: {{app: x}}\n  ports: [{{name: tcp, port: {n}, protocol: TCP}}]\n")
    };
    // West exports first.
    create_service(west, "multi", &tcp(42));
    create_service(west, "clash", &tcp(43));
    create_service(west, "mixed", &tcp(42));
    for s in ["multi", "clash", "mixed"] {
        export(west, s);
    }
    // Creation times have a resolution of one second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create_service(
        east,
        "multi",
        "  selector: {app: x}\n  ports: [{name: tcp, port: 42, protocol: TCP}, {name: dns, port: 53, protocol: UDP}]\n",
    );
    create_service(east, "clash", &tcp(42));
    create_service(east, "mixed", &format!("{}  clusterIP: None\n", tcp(42)));
    create_service(
        east,
        "ext",
        "  type: ExternalName\n  externalName: example.com\n",
    );
    for s in ["multi", "clash", "mixed", "ext", "ghost"] {
        export(east, s);
    }

    // Ports: the union, no conflict.
    for c in [east, west, far] {
        let import = import_where(c, "multi", |i| clusters_of(i).len() == 2).await;
        assert_eq!(
            ports_of(&import),
            [port("dns", "UDP", 53), port("tcp", "TCP", 42)],
            "{}",
            c.name()
        );
    }
    condition_is(east, "multi", "Conflict", "False", "NoConflicts").await;
    condition_is(west, "multi", "Conflict", "False", "NoConflicts").await;

    // A port conflict: west's (older) definition is imported; both exports say so.
    condition_is(east, "clash", "Conflict", "True", "PortConflict").await;
    condition_is(west, "clash", "Conflict", "True", "PortConflict").await;
    for c in [east, west, far] {
        let import = import_where(c, "clash", |i| clusters_of(i).len() == 2).await;
        assert_eq!(ports_of(&import), [port("tcp", "TCP", 43)], "{}", c.name());
        // The VIP serves the same definition (not the first cluster by name's).
        let host = format!("clash.{NS}.global");
        world
            .mesh
            .wait_for(c.name(), "clash on west's port 43", |d| {
                find_service(d, &host).is_some_and(|s| s["ports"][0]["port"] == 43)
            })
            .await
            .expect("the gateway serves port 43");
    }

    // Headless in east, not in (older) west: ClusterSetIP wins.
    condition_is(east, "mixed", "Conflict", "True", "TypeConflict").await;
    condition_is(west, "mixed", "Conflict", "True", "TypeConflict").await;
    for c in [east, west, far] {
        let import = import_where(c, "mixed", |i| clusters_of(i).len() == 2).await;
        assert_eq!(import["spec"]["type"], "ClusterSetIP", "{}", c.name());
    }

    // Invalid exports: status says why, nothing is imported.
    condition_is(east, "ext", "Valid", "False", "InvalidServiceType").await;
    condition_is(east, "ext", "Ready", "False", "Failed").await;
    condition_is(east, "ghost", "Valid", "False", "NoService").await;
    for c in [east, west, far] {
        // Written in the same pass as the conditions above.
        assert!(
            get(c, "serviceimports.multicluster.x-k8s.io", "ext").is_none(),
            "{}",
            c.name()
        );
        assert!(
            get(c, "serviceimports.multicluster.x-k8s.io", "ghost").is_none(),
            "{}",
            c.name()
        );
    }
    // The Service appears: the export becomes valid and imported.
    create_service(east, "ghost", &tcp(7));
    condition_is(east, "ghost", "Valid", "True", "Valid").await;
    import_where(far, "ghost", |_| true).await;

    // Headless.
    let headless = format!("{}  clusterIP: None\n", http_spec("db"));
    create_service(east, "db", &headless);
    create_service(west, "db", &headless);
    let east_db = add_pods(east, "db", 1).await;
    let west_db = add_pods(west, "db", 2).await;
    export(east, "db");
    export(west, "db");
    for c in [east, west, far] {
        let import = import_where(c, "db", |i| clusters_of(i).len() == 2).await;
        assert_eq!(import["spec"]["type"], "Headless", "{}", c.name());
        assert!(
            import["spec"].get("ips").is_none(),
            "no IP for headless: {import}"
        );
    }
    let ips = |c: &Cluster| -> Vec<String> {
        let out = c
            .kubectl(&[
                "get",
                "pods",
                "-n",
                NS,
                "-l",
                "app=db",
                "-o",
                "jsonpath={.items[*].status.podIP}",
            ])
            .expect("pods");
        out.split_whitespace().map(str::to_owned).collect()
    };
    let mut all: Vec<String> = ips(east);
    all.extend(ips(west));
    assert_eq!(all.len(), 3, "{all:?}");
    let name = format!("db.{NS}.svc.clusterset.local");
    let want: Vec<&str> = all.iter().map(String::as_str).collect();
    answers(&world, "east", &name, "A", &want).await;
    let west_pod = format!("db-west-0.west.{name}");
    let west_pod_ip = ips(west);
    let dns = world.mesh.member("east").expect("member").dns_addr();
    let answered = query(dns, &west_pod, "A");
    assert_eq!(answered.records.len(), 1, "{answered:?}");
    assert!(west_pod_ip.contains(&answered.records[0].2), "{answered:?}");
    world.set_unready("east", &east_db, 1).await;
    world.set_unready("west", &west_db, 2).await;
    nxdomain(&world, "east", &name).await;
}
