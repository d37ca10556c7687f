//! `meridian-testbed`: simulated clusters on loopback (real etcd + kube-apiserver each).
//!
//! - `up` (the default, so `meridian-testbed --cluster …` works too): start clusters and keep
//!   them running until Ctrl-C, for manual work.
//! - `demo`: zone failover, live — three clusters with Meridian's real binaries, a steady
//!   request stream, `east` degraded step by step and healed, a table of where requests land.
//!
//! Ctrl-C (SIGINT) and SIGTERM stop either at any moment: the running work is dropped, which
//! kills every child process and removes the testbed directory before the process exits.

mod demo;
mod load;
mod soak;
mod table;
mod up;

use std::future::Future;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use meridian_api::telemetry::LogFormat;
use tokio::signal::unix::{SignalKind, signal};

/// Simulated Kubernetes clusters on loopback, and Meridian's failover demo.
#[derive(Debug, Parser)]
#[command(
    name = "meridian-testbed",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Without a subcommand, the flags of `up`.
    #[command(flatten)]
    up: up::UpArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start clusters and keep them running until Ctrl-C or SIGTERM (the default).
    Up(up::UpArgs),
    /// Zone failover, live: degrade `east` 14 → 10 → 5 → 0 healthy and heal it while a
    /// request stream from `east` shows where traffic lands. Exits 0 when done.
    Demo(demo::DemoArgs),
    /// Soak: the three clusters under steady HTTP and TCP traffic and a random fault every
    /// few seconds for a bounded time; prints failures, recovery, RSS and FDs. Exits 0
    /// when the pass criteria hold (`scripts/soak.sh`).
    Soak(soak::SoakArgs),
}

/// The signal that ended a run early.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Interrupt,
    Terminate,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stop::Interrupt => "SIGINT",
            Stop::Terminate => "SIGTERM",
        })
    }
}

impl Stop {
    /// The shell convention for "killed by this signal" (128 + signal number).
    fn exit_code(self) -> u8 {
        match self {
            Stop::Interrupt => 130,
            Stop::Terminate => 143,
        }
    }
}

#[tokio::main]
async fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        // The demo's table is the output; only problems go to stderr. kube's client logs
        // every 500 of an API server still starting up, which the testbed waits out.
        Some(Command::Demo(_) | Command::Soak(_)) => "warn,kube_client=off",
        _ => "meridian_testbed=info",
    };
    meridian_api::telemetry::init(LogFormat::Text, default_filter);

    match cli.command.unwrap_or(Command::Up(cli.up)) {
        Command::Up(args) => match until_signal(up::run(args)).await? {
            // Stopping by signal is how `up` is meant to end.
            Some(_) => {
                eprintln!("testbed stopped");
                Ok(ExitCode::SUCCESS)
            }
            None => Ok(ExitCode::SUCCESS),
        },
        Command::Demo(args) => match until_signal(demo::run(args)).await? {
            Some(stop) => {
                eprintln!(
                    "demo stopped by {stop}: clusters and Meridian processes stopped, testbed directory removed"
                );
                Ok(ExitCode::from(stop.exit_code()))
            }
            None => Ok(ExitCode::SUCCESS),
        },
        Command::Soak(args) => {
            let mut passed = false;
            let work = async {
                passed = soak::run(args).await?;
                Ok(())
            };
            match until_signal(work).await? {
                Some(stop) => Ok(ExitCode::from(stop.exit_code())),
                None if passed => Ok(ExitCode::SUCCESS),
                None => Ok(ExitCode::FAILURE),
            }
        }
    }
}

/// Runs `work` until it finishes or SIGINT/SIGTERM arrives. On a signal `work` is dropped
/// here, before returning, so its testbed is torn down by the normal drop path (never by
/// `process::exit`, which would skip destructors and leave the directory behind).
async fn until_signal(work: impl Future<Output = Result<()>>) -> Result<Option<Stop>> {
    // Installed before `work` is first polled, so no signal is lost to the default handler.
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        biased;
        _ = interrupt.recv() => Ok(Some(Stop::Interrupt)),
        _ = terminate.recv() => Ok(Some(Stop::Terminate)),
        result = work => result.map(|()| None),
    }
}
