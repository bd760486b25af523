//! `multir inspect`: what a scan file says about itself.

use std::io::Write;

use multir_common::io::{self, Loaded};
use serde_json::json;

use crate::cli::InspectArgs;

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let Loaded { volume, info } = io::load_path(&args.path, &args.load.options())?;
    let stats = volume.stats();
    let orientation = info.affine.axcodes();
    let mut out = std::io::stdout().lock();
    if args.json {
        let obj = json!({
            "path": args.path.display().to_string(),
            "format": info.format,
            "shape": info.shape,
            "spacing_mm": info.spacing_mm,
            "affine": info.affine.0,
            "orientation": orientation,
            "dtype": info.dtype,
            "min": stats.min,
            "max": stats.max,
            "mean": stats.mean,
            "nonfinite_replaced": info.nonfinite_replaced,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&obj)?)?;
        return Ok(());
    }
    let [ni, nj, nk] = info.shape;
    let [si, sj, sk] = info.spacing_mm;
    let ml = volume.voxel_volume_mm3() * volume.len() as f64 / 1000.0;
    writeln!(out, "{}", args.path.display())?;
    writeln!(out, "  format       {} ({})", info.format, info.dtype)?;
    writeln!(out, "  shape        {ni} x {nj} x {nk} voxels (i, j, k)")?;
    writeln!(out, "  spacing      {si:.4} x {sj:.4} x {sk:.4} mm")?;
    writeln!(
        out,
        "  orientation  {orientation} (RAS+ world, nibabel convention)"
    )?;
    writeln!(
        out,
        "  field        {:.1} x {:.1} x {:.1} mm, {ml:.0} mL",
        ni as f64 * si,
        nj as f64 * sj,
        nk as f64 * sk
    )?;
    writeln!(
        out,
        "  intensity    min {:.1}  max {:.1}  mean {:.2}",
        stats.min, stats.max, stats.mean
    )?;
    for (r, row) in info.affine.0.iter().take(3).enumerate() {
        let label = if r == 0 { "affine" } else { "" };
        writeln!(
            out,
            "  {label:<12} [{:>9.4} {:>9.4} {:>9.4} {:>10.3}]",
            row[0], row[1], row[2], row[3]
        )?;
    }
    if info.nonfinite_replaced > 0 {
        writeln!(
            out,
            "  warning      {} non-finite voxels replaced by the minimum",
            info.nonfinite_replaced
        )?;
    }
    Ok(())
}
