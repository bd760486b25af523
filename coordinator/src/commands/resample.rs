//! `multir resample`: load a scan and bring it to a new voxel spacing. Also
//! the Rust side of the resampling benchmark (`--json` prints timings).

use std::time::Instant;

use anyhow::Context;
use multir_common::io::{self, nifti};
use multir_common::preprocess::{Interp, resample};
use serde_json::json;

use crate::cli::ResampleArgs;

pub fn run(args: ResampleArgs) -> anyhow::Result<()> {
    let spacing = args.spacing;
    let t0 = Instant::now();
    let loaded = io::load_path(&args.input, &args.load.options())?;
    let t_load = t0.elapsed().as_secs_f64();
    let interp = if args.nearest {
        Interp::Nearest
    } else {
        Interp::Linear
    };
    let t1 = Instant::now();
    let out = resample::resample_to_spacing(&loaded.volume, spacing, interp)
        .with_context(|| format!("resampling {}", args.input.display()))?;
    let t_resample = t1.elapsed().as_secs_f64();
    drop(loaded);
    if let Some(path) = &args.out {
        nifti::write_path(path, &out, &nifti::WriteOptions::float32())?;
    }
    if args.json {
        let obj = json!({
            "load_s": t_load,
            "resample_s": t_resample,
            "total_s": t0.elapsed().as_secs_f64(),
            "out_shape": out.dims(),
            "out_spacing_mm": out.spacing(),
        });
        super::emit(obj)?;
    } else {
        let [a, b, c] = out.dims();
        tracing::info!("resampled to {a} x {b} x {c} in {t_resample:.2} s (load {t_load:.2} s)");
    }
    Ok(())
}
