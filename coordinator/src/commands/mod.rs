//! One module per subcommand; each takes its parsed arguments.

mod inspect;
mod metrics;
mod resample;
mod synth;

use crate::cli::Command;

/// Runs one subcommand.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Synth(args) => synth::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Resample(args) => resample::run(args),
        Command::Metrics(args) => metrics::run(args),
    }
}
