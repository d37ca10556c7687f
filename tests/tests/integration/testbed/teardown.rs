use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use meridian_testbed::{PodSpec, Testbed};

use super::support::{init_tracing, one_cluster, processes_mentioning};

struct Leftovers {
    dir: PathBuf,
    pids: Vec<u32>,
    ports: Vec<SocketAddr>,
}

async fn start_and_record() -> (Testbed, Leftovers) {
    let testbed = Testbed::start(&one_cluster())
        .await
        .expect("testbed starts");
    let cluster = &testbed.clusters()[0];
    let pod = cluster.add_pod(PodSpec::new("p")).await.expect("pod");
    let api: SocketAddr = cluster
        .server_url()
        .trim_start_matches("https://")
        .parse()
        .expect("server address");
    let leftovers = Leftovers {
        dir: testbed.dir().to_path_buf(),
        pids: cluster.process_ids().await,
        ports: vec![api, pod.socket_addr(8080)],
    };
    assert_eq!(leftovers.pids.len(), 2, "etcd and kube-apiserver");
    assert!(leftovers.dir.is_dir());
    assert!(!processes_mentioning(&leftovers.dir).is_empty());
    (testbed, leftovers)
}

/// Echo listeners close when the runtime drops their aborted tasks; give it a moment
/// (bounded generously: a loaded machine may take a while to get to them).
async fn bindable(addr: SocketAddr) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if TcpListener::bind(addr).is_ok() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_nothing_left(leftovers: Leftovers) {
    for pid in &leftovers.pids {
        assert!(
            !PathBuf::from(format!("/proc/{pid}")).exists(),
            "process {pid} survived teardown"
        );
    }
    assert_eq!(processes_mentioning(&leftovers.dir), Vec::<u32>::new());
    assert!(
        !leftovers.dir.exists(),
        "{} survived",
        leftovers.dir.display()
    );
    for addr in leftovers.ports {
        assert!(bindable(addr).await, "{addr} still bound");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_leaves_no_processes_dirs_or_ports() {
    init_tracing();
    let (testbed, leftovers) = start_and_record().await;
    drop(testbed);
    assert_nothing_left(leftovers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_test_still_tears_down() {
    init_tracing();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let (_testbed, leftovers) = start_and_record().await;
        tx.send(leftovers).ok().expect("receiver alive");
        panic!("deliberate panic while a testbed is running");
    });
    let error = task.await.expect_err("the task panics");
    assert!(error.is_panic());
    assert_nothing_left(rx.await.expect("leftovers recorded")).await;
}
