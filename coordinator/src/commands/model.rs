//! What the model commands share: choosing the device and the checkpoint.

use std::path::Path;

use anyhow::Context;
use multir_common::cli::DeviceArgs;
use multir_common::device;
use multir_common::model::Checkpoint;

/// Picks CUDA or the CPU as asked and says which, and why.
pub fn device(args: &DeviceArgs) -> anyhow::Result<tch::Device> {
    let (dev, info) = device::select(args.device)?;
    match &info.note {
        Some(note) => tracing::info!(device = %info.device, "{note}"),
        None => tracing::info!(device = %info.device, cudnn = info.cudnn, "using CUDA"),
    }
    if dev != tch::Device::Cpu {
        // Window sizes are fixed, so cuDNN's per-shape autotuning pays off.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    Ok(dev)
}

/// The checkpoint at `path`, or the shipped model.
pub fn checkpoint(path: Option<&Path>) -> anyhow::Result<Checkpoint> {
    let ck = match path {
        Some(p) => Checkpoint::read_path(p)?,
        None => multir_common::model::shipped::checkpoint().context("the shipped model")?,
    };
    tracing::info!(
        steps = ck.meta.training.steps,
        fingerprint = %ck.meta.training.fingerprint,
        "model: {} levels, widths {:?}, {} iterations",
        ck.meta.model.levels(),
        ck.meta.model.widths,
        ck.meta.model.iterations
    );
    Ok(ck)
}
