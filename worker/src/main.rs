//! `multir-worker`: the entrypoint of a worker pod.
//!
//! `multir-worker check` reports which device the pod would compute on
//! (CUDA when libtorch's CUDA library loads and a GPU is visible, else the
//! CPU) and exits non-zero when `--device cuda` was demanded but cannot be
//! had, so a misconfigured GPU node fails its start-up probe instead of
//! silently running on the CPU.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use multir_common::cli::{DeviceArgs, LogArgs};
use multir_common::device;

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
    /// Print the compute device this pod would use, as JSON.
    Check(DeviceArgs),
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
