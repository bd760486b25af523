//! One module per subcommand; each takes its parsed arguments.

mod bench_model;
mod collect;
mod export;
mod inspect;
mod metrics;
mod outputs;
mod predict;
mod remote;
mod report;
mod resample;
pub mod run;
mod status;
mod submit;
mod synth;
mod train;
mod upload;

use crate::cli::Command;

/// Writes one line of results to stdout. `println!` panics when the reader
/// has gone (`multir predict ... | head -1`); this returns the error, which
/// `main` takes as the end of the output rather than a failure.
pub(crate) fn emit(line: impl std::fmt::Display) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{line}")
}

/// Runs one subcommand.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Synth(args) => synth::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Resample(args) => resample::run(args),
        Command::Metrics(args) => metrics::run(args),
        Command::Train(args) => train::run(*args),
        Command::Predict(args) => predict::run(args),
        Command::Run(args) => run::run(args),
        Command::Report(args) => report::run(args),
        Command::Export(args) => export::run(args),
        Command::BenchModel(args) => bench_model::run(args),
        Command::Upload(args) => upload::run(args),
        Command::Submit(args) => submit::run(*args),
        Command::Status(args) => status::run(*args),
        Command::Collect(args) => collect::run(*args),
    }
}
