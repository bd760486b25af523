//! `multir-worker`: the entrypoint of a worker pod.
//!
//! - `multir-worker run`: take a run's jobs from RabbitMQ, read the scans
//!   from S3, write results to S3 (see the `multir_worker` library);
//! - `multir-worker check`: report which device the pod would compute on,
//!   failing when `--device cuda` was demanded but cannot be had, so a
//!   misconfigured GPU node fails its start-up probe;
//! - `multir-worker probe`: ask a running worker's `/healthz` (the container
//!   image's HEALTHCHECK, which has no curl).
//!
//! Exit status: 0 after a clean stop (SIGTERM, an idle queue), 1 on an
//! error, 2 on a usage error.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use multir_common::cli::{DeviceArgs, LogArgs};
use multir_common::device;
use multir_worker::app::{self, WorkerArgs};

/// MultiR-Net worker.
#[derive(Debug, Parser)]
#[command(name = "multir-worker", version, about)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Process a run's jobs until stopped (or idle, with --exit-when-idle).
    Run(Box<WorkerArgs>),
    /// Print the compute device this pod would use, as JSON.
    Check(DeviceArgs),
    /// Exit 0 when a running worker's health endpoint answers 200 (the
    /// image's HEALTHCHECK).
    Probe(app::ProbeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => {
            let rt = tokio::runtime::Runtime::new()?;
            let summary = rt.block_on(app::serve(*args, shutdown_signal()))?;
            tracing::info!(?summary, "stopped");
            Ok(())
        }
        Command::Probe(args) => Ok(app::probe(&args)?),
        Command::Check(args) => {
            let (_, info) = device::select(args.device)?;
            tracing::info!(device = %info.device, "device selected");
            // Not println!: it panics when stdout is a closed pipe.
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?;
            Ok(())
        }
    }
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (exit) applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing the scans in flight"),
        _ = int.recv() => tracing::info!("SIGINT: finishing the scans in flight"),
    }
}
