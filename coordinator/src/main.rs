//! `multir`: the user's command-line tool.
//!
//! Parses the command line, sets up logging, runs the command and maps the
//! outcome to an exit code (see [`exit_code`]).

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    cli.log.init();
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
/// failures, 3 for an `evaluate` quality bar not met, 1 for anything else;
/// clap itself exits 2 on usage errors.
fn exit_code(err: &anyhow::Error) -> u8 {
    use multir_common::Error as E;
    if err.is::<commands::evaluate::QualityBarNotMet>() {
        return 3;
    }
    match err.downcast_ref::<E>().map(E::root) {
        Some(
            E::WrongFormat { .. }
            | E::InvalidHeader(_)
            | E::TooLarge { .. }
            | E::Truncated(_)
            | E::Unsupported(_)
            | E::Dicom(_)
            | E::Manifest(_)
            | E::Checkpoint(_)
            | E::InvalidArgument(_),
        ) => 65,
        Some(E::Io(_)) => 74,
        _ => 1,
    }
}
