//! `multir export`: a checkpoint without its training state.

use multir_common::model::Checkpoint;

use crate::cli::ExportArgs;

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let ck = Checkpoint::read_path(&args.checkpoint)?;
    let out = ck.model_only();
    // The writer validates first and its error already names the path.
    out.write_path(&args.out)?;
    // Read back as `predict` reads it: what was written must load.
    Checkpoint::read_path(&args.out)?;
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    super::emit(format_args!(
        "{}: step {} weights, {} tensors, {:.1} MB",
        args.out.display(),
        out.meta.training.steps,
        out.tensors.len(),
        size as f64 / 1e6
    ))?;
    Ok(())
}
