use meridian_testbed::{PodSpec, ServicePortSpec, ServiceSpec};

use crate::support::*;

/// Hostname, VIP and (port name, listener port) per service.
type Allocation = Vec<(String, String, Vec<(String, u32)>)>;

fn allocation(s: &meridian_api::proto::Snapshot) -> Allocation {
    s.services
        .iter()
        .map(|g| {
            (
                g.hostname.clone(),
                g.vip.clone(),
                g.ports
                    .iter()
                    .map(|p| (p.name.clone(), p.listener_port))
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_keeps_vips_listener_ports_and_the_snapshot_version() {
    let testbed = testbed().await;
    let east1 = testbed.cluster("east1").unwrap();
    let west = testbed.cluster("west").unwrap();
    for name in ["alpha", "beta", "gamma"] {
        let spec = ServiceSpec::new(name)
            .port(ServicePortSpec::http("http", 80).target(8080))
            .port(ServicePortSpec::tcp("grpc-api", 9000).target(8080));
        east1.create_service(&spec).await.unwrap();
        west.create_service(&spec).await.unwrap();
        west.add_pod(PodSpec::new(format!("{name}-1")).app(name))
            .await
            .unwrap();
    }
    register(
        east1,
        "west",
        None,
        west.kubeconfig(),
        Some("127.0.0.3:15443"),
    )
    .await;

    let ip = testbed.allocate_address().unwrap();
    let ctl = Controller::start(&testbed, east1, ip, &[]).await;
    let complete = |s: &meridian_api::proto::Snapshot| {
        s.services.len() == 3
            && s.services.iter().all(|g| {
                !g.vip.is_empty()
                    && g.endpoints.len() == 1
                    && g.ports.iter().all(|p| p.listener_port != 0)
            })
    };
    let first = ctl
        .subscribe()
        .await
        .wait_for("three services with VIPs", complete)
        .await;
    let ports: std::collections::BTreeSet<u32> = first
        .services
        .iter()
        .flat_map(|g| g.ports.iter().map(|p| p.listener_port))
        .collect();
    assert_eq!(ports.len(), 6, "listener ports are distinct: {ports:?}");
    ctl.kill().await;

    let ctl = Controller::start(&testbed, east1, ip, &[]).await;
    let second = ctl
        .subscribe()
        .await
        .wait_for("three services with VIPs", complete)
        .await;
    assert_eq!(allocation(&second), allocation(&first));
    assert_eq!(
        second.version, first.version,
        "same inputs, same snapshot version"
    );
    assert_eq!(second, first);
    ctl.kill().await;
}
