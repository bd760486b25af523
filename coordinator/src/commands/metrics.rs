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
    let tol = m.tolerance_mm;
    writeln!(
        out,
        "{} vs truth {}",
        args.pred.display(),
        args.truth.display()
    )?;
    writeln!(out, "  dice                 {}", show(m.dice, ""))?;
    writeln!(out, "  jaccard              {}", show(m.jaccard, ""))?;
    let label = format!("surface dice @{tol} mm");
    writeln!(out, "  {label:<21}{}", show(m.surface_dice, ""))?;
    writeln!(out, "  hd95                 {}", show(m.hd95, " mm"))?;
    writeln!(out, "  hausdorff            {}", show(m.hausdorff, " mm"))?;
    writeln!(out, "  assd                 {}", show(m.assd, " mm"))?;
    writeln!(
        out,
        "  volume               truth {} mL, pred {} mL ({} mL)",
        fixed(m.volume_truth_ml, 3, false),
        fixed(m.volume_pred_ml, 3, false),
        fixed(m.volume_difference_ml, 3, true)
    )?;
    tracing::info!("metrics in {t_metrics:.3} s (load {t_load:.3} s)");
    Ok(())
}

/// A value with its unit, or "undefined" (no unit: there is no distance).
fn show(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "undefined".to_string(), |x| fixed(x, 4, false) + unit)
}

/// `x` with `decimals` decimals (and a sign when `plus`), never "-0.000":
/// a value that rounds to zero prints as zero, whatever its sign.
fn fixed(x: f64, decimals: usize, plus: bool) -> String {
    let text = format!("{x:.decimals$}");
    let zero = text
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.');
    let x = if zero { 0.0 } else { x };
    if plus {
        format!("{x:+.decimals$}")
    } else {
        format!("{x:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_print_without_a_sign() {
        assert_eq!(fixed(-0.0, 3, false), "0.000");
        assert_eq!(fixed(-0.0001, 3, true), "+0.000");
        assert_eq!(fixed(-0.0016, 3, true), "-0.002");
        assert_eq!(fixed(2.5, 4, false), "2.5000");
        assert_eq!(show(None, " mm"), "undefined");
        assert_eq!(show(Some(-0.0), " mm"), "0.0000 mm");
    }
}
