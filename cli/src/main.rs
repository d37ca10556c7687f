//! `meridianctl`: the operator's command line for Meridian.
#![forbid(unsafe_code)]

mod admin;
mod ca;
mod cluster;
mod connect;
mod drain;
mod explain;
mod exposition;
mod mesh;
mod render;
mod simulate;
mod status;
mod top;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::connect::ClusterArgs;
use crate::render::Output;

/// Meridian: multi-cluster federation and failover for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "meridianctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value_t,
        global = true
    )]
    output: Output,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register, remove, list, drain and undrain member clusters.
    #[command(subcommand)]
    Cluster(cluster::Command),
    /// Join clusters into a multi-primary mesh in one command, and see or undo it.
    #[command(subcommand)]
    Mesh(mesh::Command),
    /// Manage the mesh CA: the root and the per-cluster intermediates.
    #[command(subcommand)]
    Ca(ca::Command),
    /// Member clusters and global services at a glance.
    Status,
    /// The traffic split in force for a global service, with the reason for each share.
    Explain(explain::Args),
    /// Compute the traffic split for a hypothetical health state (no cluster needed).
    Simulate(simulate::Args),
    /// Where traffic goes now: rates from each gateway per destination cluster and
    /// locality, errors and p99, beside the split the engine computes.
    Top(top::Args),
}

/// Exit code for bad input (usage or file contents), as distinct from runtime failures.
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate(args) => simulate::run(&args, cli.output),
        command => runtime().and_then(|rt| {
            rt.block_on(run(command, &cli.cluster, cli.output))
                .map_err(CliError::Failed)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::BadInput(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
        Err(CliError::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(e.into()))
}

async fn run(command: Command, cluster: &ClusterArgs, output: Output) -> anyhow::Result<()> {
    // rustls needs one process-wide provider; ring is the only one compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match command {
        Command::Cluster(cmd) => cluster::run(cmd, cluster, output).await,
        Command::Mesh(cmd) => mesh::run(cmd, cluster, output).await,
        Command::Ca(cmd) => ca::run(cmd, cluster).await,
        Command::Status => status::run(&cluster.client().await?, output).await,
        Command::Explain(args) => explain::run(&cluster.client().await?, &args, output).await,
        Command::Top(args) => top::run(&args, output).await,
        Command::Simulate(_) => unreachable!("simulate runs without a cluster"),
    }
}

/// A command's failure: bad input (exit 2) or anything else (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The user's input is wrong; the message names the field.
    #[error("{0}")]
    BadInput(String),
    /// The command could not complete.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}
