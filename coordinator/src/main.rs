//! `multir`: the user's command-line tool.
//!
//! Parses the command line, sets up logging, runs the command and maps the
//! outcome to an exit code (see [`exit_code`]).

mod cli;
mod commands;
mod progress;
mod report;
mod tables;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli.log.init_with(progress::LogWriter);
    match commands::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // Print the whole chain: "file: problem: cause".
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// Output piped into `head` and closed early is not a failure.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// 65 (EX_DATAERR) for input that cannot be used, 74 (EX_IOERR) for I/O
/// failures, 75 (EX_TEMPFAIL) when another run holds the output folder, 3
/// for a quality bar not met, 130 after SIGINT/SIGTERM, 1 for anything else
/// (a run whose scans partly failed among them); clap exits 2 on usage
/// errors.
fn exit_code(err: &anyhow::Error) -> u8 {
    use commands::run::{Interrupted, QualityBarNotMet};
    use multir_common::{Error as E, Fault};
    if err.is::<QualityBarNotMet>() {
        return 3;
    }
    if err.is::<Interrupted>() {
        return 130;
    }
    match err.downcast_ref::<E>() {
        Some(e) if matches!(e.root(), E::Busy(_)) => 75,
        Some(e) if e.is_io() => 74,
        Some(e) if matches!(e.root(), E::Torch(_)) => 1,
        Some(e) if e.fault() == Fault::Input => 65,
        _ => 1,
    }
}
