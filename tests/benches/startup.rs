//! Startup cost of the testbed: wall time until three clusters are ready (API servers
//! answering `/readyz`, namespace and Nodes created), and teardown time.
//!
//! `cargo bench -p meridian-testbed --bench startup` (set `MERIDIAN_BENCH_RUNS`, default 5).
//! Prints one line per run and the median; the figure is recorded in docs/testing.md.

use std::time::Duration;

use meridian_testbed::{ClusterSpec, Testbed};
use tokio::time::Instant;

fn specs() -> Vec<ClusterSpec> {
    vec![
        ClusterSpec::new("east", "us-east1", ["us-east1-a", "us-east1-b"]),
        ClusterSpec::new("west", "us-west1", ["us-west1-a", "us-west1-b"]),
        ClusterSpec::new("north", "eu-north1", ["eu-north1-a"]),
    ]
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing special. Both
    // run the measurement, so keep the run count small by default.
    let runs: usize = std::env::var("MERIDIAN_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let mut startups = Vec::new();
    let mut teardowns = Vec::new();
    for run in 1..=runs {
        let started = Instant::now();
        let testbed = Testbed::start(&specs()).await.expect("testbed starts");
        let startup = started.elapsed();
        let stopping = Instant::now();
        drop(testbed);
        let teardown = stopping.elapsed();
        println!("run {run}: 3 clusters ready in {startup:.2?}, torn down in {teardown:.2?}");
        startups.push(startup);
        teardowns.push(teardown);
    }
    println!(
        "median over {runs} runs: startup {:.2?}, teardown {:.2?}",
        median(startups),
        median(teardowns)
    );
}
