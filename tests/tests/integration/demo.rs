//! The demo as a user runs it: the real `meridian-testbed demo` binary, which starts real
//! clusters and Meridian's real controller, gateway and DNS (found next to it in the Cargo
//! target directory: build them first, `cargo build -p meridian-controller -p
//! meridian-gateway -p meridian-dns -p meridian-cli`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

const DEMO: &str = env!("CARGO_BIN_EXE_meridian-testbed");
/// A bound on a whole run, so a hung demo fails the test instead of stalling CI.
const RUN_LIMIT: Duration = Duration::from_secs(600);
/// Steps of the demo (14, 10, 5, 0 ready, healed).
const STEPS: usize = 5;

/// The runs's `⇒ step N/5 (…): R requests · east E (P%) · west … · far … · failed F` totals:
/// `requests` and one count per name (clusters and `failed`).
#[derive(Debug)]
struct StepTotals {
    requests: usize,
    counts: BTreeMap<String, usize>,
}

impl StepTotals {
    fn of(&self, name: &str) -> usize {
        self.counts[name]
    }
}

fn step_totals(stdout: &str, step: usize) -> StepTotals {
    let prefix = format!("⇒ step {step}/{STEPS} ");
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no totals for step {step} in:\n{stdout}"));
    let (_, figures) = line.split_once("): ").expect("totals after the label");
    let mut parts = figures.split(" · ");
    let requests = parts
        .next()
        .and_then(|p| p.strip_suffix(" requests"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("request count in {line:?}"));
    let counts = parts
        .map(|p| {
            let mut words = p.split_whitespace();
            let name = words.next().expect("name").to_owned();
            let n = words
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("count in {p:?} of {line:?}"));
            (name, n)
        })
        .collect();
    StepTotals { requests, counts }
}

/// Whether `k` of `n` Bernoulli(p) trials is within 4.5 standard deviations of `n·p`.
fn about(k: usize, n: usize, p: f64) -> bool {
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - n as f64 * p).abs() <= 4.5 * sd
}

/// The directory the demo printed as `testbed directory: DIR (removed on exit)`.
fn testbed_dir(stdout: &str) -> PathBuf {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("testbed directory: "))
        .and_then(|rest| rest.split(" (").next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no testbed directory in:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_demo_moves_traffic_and_exits_zero() {
    let run = Command::new(DEMO)
        .args(["demo", "--quick"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("the demo ends")
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);

    let all_in = |step: usize, cluster: &str| {
        let t = step_totals(&stdout, step);
        assert!(t.requests > 0, "step {step}: {t:?}");
        assert_eq!(t.of("failed"), 0, "step {step}: {t:?}");
        assert_eq!(
            t.of(cluster),
            t.requests,
            "step {step}: all {cluster}: {t:?}"
        );
    };
    all_in(1, "east"); // 14/14 ready
    all_in(2, "east"); // 10/14: 140×10/14 = 100, stays local
    let half = step_totals(&stdout, 3); // 5/14: 140×5/14 = 50
    assert_eq!((half.of("failed"), half.of("far")), (0, 0), "{half:?}");
    assert!(
        about(half.of("west"), half.requests, 0.5),
        "5/14: about half west: {half:?}"
    );
    all_in(4, "west"); // 0/14: all west, none far
    all_in(5, "east"); // healed

    assert!(
        stdout.contains("stopped; testbed directory removed"),
        "{stdout}"
    );
    let dir = testbed_dir(&stdout);
    assert!(!dir.exists(), "{} survived", dir.display());
}

/// A process as `/proc/PID/stat` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proc {
    pid: u32,
    comm: String,
    ppid: u32,
    pgrp: u32,
    /// Start time (clock ticks after boot): tells a reused pid from the original.
    start: u64,
}

fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        // fields[0] is the state (stat field 3); start time is stat field 22.
        if let (Some(ppid), Some(pgrp), Some(start)) = (field(1), field(2), field(19)) {
            out.push(Proc {
                pid,
                comm: stat[open + 1..close].to_owned(),
                ppid: ppid as u32,
                pgrp: pgrp as u32,
                start,
            });
        }
    }
    out
}

fn descendants(root: u32) -> Vec<Proc> {
    let all = processes();
    let mut found: Vec<Proc> = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for p in all.iter().filter(|p| p.ppid == parent) {
            parents.push(p.pid);
            found.push(p.clone());
        }
    }
    found
}

/// Ctrl-C in a terminal: SIGINT to the demo's whole process group mid-run. The demo stops
/// everything it started, removes its directory and exits with 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_mid_run_leaves_nothing_behind() {
    let mut child = Command::new(DEMO)
        // Long steps: the signal lands while traffic flows through the mesh.
        .args(["demo", "--step-seconds", "600"])
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the demo");
    let pid = child.id().expect("running");
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr_text = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = String::new();
    let wait_for_rows = async {
        // The first row of the table: `  1s   50 (100%) …`.
        let mut rows = 0;
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            printed.push_str(&line);
            printed.push('\n');
            let first = line.split_whitespace().next().unwrap_or_default();
            if first.ends_with('s') && first[..first.len() - 1].parse::<u32>().is_ok() {
                rows += 1;
                if rows == 2 {
                    return true;
                }
            }
        }
        false
    };
    let flowing = tokio::time::timeout(RUN_LIMIT, wait_for_rows)
        .await
        .expect("the demo reaches its table");
    assert!(flowing, "the demo ended early:\n{printed}");
    let dir = testbed_dir(&printed);
    assert!(dir.is_dir());

    let running = descendants(pid);
    for name in [
        "etcd",
        "kube-apiserver",
        "meridian-contro", // comm is cut at 15 bytes
        "meridian-gatewa",
        "meridian-dns",
    ] {
        assert_eq!(
            running.iter().filter(|p| p.comm == name).count(),
            3,
            "one {name} per cluster: {running:#?}"
        );
    }

    rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::INT,
    )
    .expect("SIGINT to the process group");
    while let Ok(Some(line)) = lines.next_line().await {
        printed.push_str(&line);
        printed.push('\n');
    }
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the demo stops promptly")
        .expect("wait");
    let stderr = stderr_text.await.expect("stderr reader");
    assert_eq!(status.code(), Some(130), "{status}\n{printed}\n{stderr}");
    assert!(stderr.contains("demo stopped by SIGINT"), "{stderr}");

    let now = processes();
    let survivors: Vec<&Proc> = now
        .iter()
        .filter(|p| p.pgrp == pid || running.iter().any(|r| r.pid == p.pid && r.start == p.start))
        .collect();
    assert!(survivors.is_empty(), "still running: {survivors:#?}");
    assert!(!dir.exists(), "{} survived", dir.display());
}
