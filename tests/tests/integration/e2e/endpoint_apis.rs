//! Both endpoint APIs in one mesh, and terminating pods drained rather than cut.

use std::time::Duration;

use meridian_testbed::traffic::{http_tally, tcp_tally};
use meridian_testbed::{PodSpec, ServicePortSpec, ServiceSpec};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::support::{EAST_MAX_PER_SLICE, NS, World, kubectl};

/// Every controller reads each member through the API that member serves, shows it in
/// `MemberCluster.status.endpointApi`, and the endpoints of all three reach every gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_member_is_read_through_the_endpoint_api_it_serves() {
    let world = World::start().await;
    // More pods in east than fit one slice.
    world.deploy("user", [EAST_MAX_PER_SLICE + 2, 2, 2]).await;
    let total = EAST_MAX_PER_SLICE + 6;
    for member in world.mesh.members() {
        world.converge(member.name(), "user", total, total).await;
        let apis = kubectl(
            world.cluster(member.name()),
            &[
                "get",
                "memberclusters",
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.name}={.status.endpointApi} {end}"#,
            ],
        );
        let mut apis: Vec<&str> = apis.split_whitespace().collect();
        apis.sort();
        assert_eq!(
            apis,
            [
                "east=discovery.k8s.io/v1",
                "far=v1/Endpoints",
                "west=discovery.k8s.io/v1"
            ],
            "in {}",
            member.name()
        );
    }
    let slices = kubectl(
        world.cluster("east"),
        &[
            "get",
            "endpointslices.v1.discovery.k8s.io",
            "-n",
            NS,
            "-l",
            "kubernetes.io/service-name=user",
            "-o",
            "name",
        ],
    );
    assert_eq!(slices.lines().count(), 2, "{slices}");
}

/// A deleted pod terminates for its grace period: while its slice says `terminating`, the
/// gateway sends it no new connection or request, and a connection already open to it
/// keeps working; once the pod is gone its endpoint is too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_pods_get_nothing_new_and_open_connections_finish() {
    let world = World::start().await;
    let east = world.cluster("east");
    // One set of pods behind a TCP service (db) and an HTTP one (web).
    east.create_service(
        &ServiceSpec::new("db")
            .namespace(NS)
            .selector("app", "db")
            .port(ServicePortSpec::tcp("tcp", 80).target(8080)),
    )
    .await
    .unwrap();
    east.create_service(
        &ServiceSpec::new("web")
            .namespace(NS)
            .selector("app", "db")
            .port(ServicePortSpec::http("http", 80).target(8080)),
    )
    .await
    .unwrap();
    let mut pods = Vec::new();
    for i in 0..3 {
        let spec = PodSpec::new(format!("db-{i}"))
            .namespace(NS)
            .app("db")
            .port("http", 8080)
            .termination_grace(Duration::from_secs(30));
        pods.push(east.add_pod(spec).await.unwrap());
    }
    world.converge("east", "db", 3, 3).await;
    world.converge("east", "web", 3, 3).await;
    let db = world.addr("east", "db").await;
    let web = world.addr("east", "web").await;

    // A connection through the gateway, open on one pod.
    let mut open = BufReader::new(TcpStream::connect(db).await.unwrap());
    let mut line = String::new();
    open.read_line(&mut line).await.unwrap();
    let greeting: meridian_testbed::EchoReply = serde_json::from_str(line.trim()).unwrap();
    let leaving = pods.iter().find(|p| p.name() == greeting.pod).unwrap();

    east.remove_pod(leaving).await.unwrap();
    world.converge("east", "db", 3, 2).await;
    world.converge("east", "web", 3, 2).await;
    assert!(
        east.pod_terminating(leaving).await,
        "still in its grace period"
    );

    // Nothing new reaches it.
    let t = tcp_tally(db, 30).await;
    assert_eq!((t.failed, t.pods.get(leaving.name())), (0, None), "{t:?}");
    let t = http_tally(web, 30, &[]).await;
    assert_eq!((t.failed, t.pods.get(leaving.name())), (0, None), "{t:?}");
    // The open connection still works.
    open.get_mut().write_all(b"still there?\n").await.unwrap();
    let mut echoed = String::new();
    open.read_line(&mut echoed).await.unwrap();
    assert_eq!(echoed, "still there?\n");
    assert!(
        east.pod_terminating(leaving).await,
        "checked within the grace period"
    );

    // Then it is gone.
    world.converge("east", "db", 2, 2).await;
}
