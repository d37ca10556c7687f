//! `meridianctl`: the operator's command line for Meridian.
#![forbid(unsafe_code)]

mod render;
mod simulate;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Meridian: multi-cluster federation and failover for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "meridianctl", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compute the traffic split for a hypothetical health state (no cluster needed).
    Simulate(simulate::Args),
}

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable table.
    #[default]
    Table,
    /// One JSON object.
    Json,
}

/// Exit code for bad input (usage or file contents), as distinct from runtime failures.
const EXIT_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate(args) => simulate::run(&args),
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
