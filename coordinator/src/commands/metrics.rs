//! `multir metrics`: overlap and surface-distance metrics of a predicted
//! mask against the ground truth, with DeepMind surface-distance's numbers.
//! Also the Rust side of the metrics benchmark (`--json` prints timings).

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use multir_common::io::{self, Loaded};
use multir_common::metrics::segmentation_metrics;
use serde_json::Value;

use crate::cli::MetricsArgs;

pub fn run(args: MetricsArgs) -> anyhow::Result<()> {
    let opts = args.load.options();
    let t0 = Instant::now();
    // The two files decode independently; gzip inflation dominates.
    let (truth, pred) = std::thread::scope(|s| {
        let pred = s.spawn(|| io::load_path(&args.pred, &opts));
        let truth = io::load_path(&args.truth, &opts);
        let pred = pred.join().expect("loader thread panicked");
        (truth, pred)
    });
    let Loaded { volume: truth, .. } = truth?;
    let Loaded { volume: pred, .. } = pred?;
    let t_load = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let m = segmentation_metrics(&truth, &pred, args.tolerance_mm).with_context(|| {
        format!(
            "comparing {} with {}",
            args.pred.display(),
            args.truth.display()
        )
    })?;
    let t_metrics = t1.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut obj = serde_json::to_value(&m)?;
        if let Value::Object(map) = &mut obj {
            map.insert("truth".into(), args.truth.display().to_string().into());
            map.insert("pred".into(), args.pred.display().to_string().into());
            map.insert("load_s".into(), t_load.into());
            map.insert("metrics_s".into(), t_metrics.into());
            map.insert("total_s".into(), t0.elapsed().as_secs_f64().into());
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&obj)?)?;
        return Ok(());
    }
    let show = |v: Option<f64>| v.map_or_else(|| "undefined".to_string(), |x| format!("{x:.4}"));
    let tol = m.tolerance_mm;
    writeln!(
        out,
        "{} vs truth {}",
        args.pred.display(),
        args.truth.display()
    )?;
    writeln!(out, "  dice                 {}", show(m.dice))?;
    writeln!(out, "  jaccard              {}", show(m.jaccard))?;
    let label = format!("surface dice @{tol} mm");
    writeln!(out, "  {label:<21}{}", show(m.surface_dice))?;
    writeln!(out, "  hd95                 {} mm", show(m.hd95))?;
    writeln!(out, "  hausdorff            {} mm", show(m.hausdorff))?;
    writeln!(out, "  assd                 {} mm", show(m.assd))?;
    writeln!(
        out,
        "  volume               truth {:.3} mL, pred {:.3} mL ({:+.3} mL)",
        m.volume_truth_ml, m.volume_pred_ml, m.volume_difference_ml
    )?;
    tracing::info!("metrics in {t_metrics:.3} s (load {t_load:.3} s)");
    Ok(())
}
