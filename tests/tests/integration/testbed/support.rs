use std::net::SocketAddr;
use std::path::Path;

use meridian_testbed::{Cluster, ClusterSpec, EchoReply};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub(super) use meridian_testbed::init_tracing;

pub(super) fn three_clusters() -> Vec<ClusterSpec> {
    vec![
        ClusterSpec::new("east", "us-east1", ["us-east1-a", "us-east1-b"]),
        ClusterSpec::new("west", "us-west1", ["us-west1-a", "us-west1-b"]),
        ClusterSpec::new("north", "eu-north1", ["eu-north1-a"]).subzones(["rack1", "rack2"]),
    ]
}

pub(super) fn one_cluster() -> Vec<ClusterSpec> {
    vec![ClusterSpec::new(
        "solo",
        "us-east1",
        ["us-east1-a", "us-east1-b"],
    )]
}

/// Runs `kubectl --kubeconfig <cluster's file> args…`, returning stdout; panics with
/// stderr on failure.
pub(super) async fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    cluster.kubectl(args).expect("kubectl")
}

/// One HTTP GET; returns the status code and the parsed reply.
pub(super) async fn http_get(addr: SocketAddr, path: &str) -> (u16, EchoReply) {
    let r = meridian_testbed::traffic::http_get(addr, path, &[])
        .await
        .expect("HTTP GET");
    (r.status, r.echo().expect("echo JSON"))
}

/// Connects without sending anything and reads the greeting line.
pub(super) async fn tcp_greeting(stream: &mut TcpStream) -> Option<EchoReply> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte).await {
            Ok(0) | Err(_) => return None,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
        }
    }
    Some(serde_json::from_slice(&line).expect("greeting is echo JSON"))
}

/// Process ids whose command line mentions `dir` (every testbed process does).
pub(super) fn processes_mentioning(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(&needle)
        {
            pids.push(pid);
        }
    }
    pids
}
