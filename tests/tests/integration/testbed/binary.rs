use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use super::support::processes_mentioning;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_runs_clusters_until_sigterm() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian-testbed"))
        .args([
            "--cluster",
            "lone=r1:r1-a,r1-b",
            "--service",
            "web",
            "--kubeconfig-dir",
        ])
        .arg(out.path())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start meridian-testbed");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = Vec::new();
    while let Some(line) = lines.next_line().await.expect("read stdout") {
        if line.starts_with("ready") {
            break;
        }
        printed.push(line);
    }
    assert!(
        printed[1].starts_with("cluster lone region r1 zones r1-a,r1-b"),
        "{printed:?}"
    );
    assert_eq!(
        printed
            .iter()
            .filter(|l| l.trim_start().starts_with("pod web-"))
            .count(),
        2
    );

    let kubeconfig = out.path().join("lone.kubeconfig");
    let output = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[0].addresses[*].nodeName}",
        ])
        .output()
        .await
        .expect("kubectl must be installed (Debian: apt-get install kubernetes-client)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let nodes = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        nodes.contains("lone-r1-a-1") && nodes.contains("lone-r1-b-1"),
        "{nodes}"
    );

    let dir = printed[0]
        .strip_prefix("testbed ")
        .expect("first line names the directory");
    let dir = std::path::PathBuf::from(dir);
    assert!(
        !processes_mentioning(&dir).is_empty(),
        "etcd and kube-apiserver run"
    );

    let pid = child.id().expect("running");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM");
    let status = child.wait().await.expect("wait");
    assert!(status.success(), "{status}");
    assert_eq!(processes_mentioning(&dir), Vec::<u32>::new());
    assert!(!dir.exists(), "{} survived", dir.display());
}
