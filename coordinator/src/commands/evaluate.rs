//! `multir evaluate`: the model over a labelled cohort, with the paper's
//! classification (recall, precision, F1, accuracy, ROC AUC) and
//! segmentation (Dice, ASD, surface overlap and surface Dice) figures.
//!
//! Writes `scans.csv` (one row per scan: an error row for a scan that
//! cannot be read, never a crashed cohort) and `evaluation.json`.

use std::time::Instant;

use anyhow::Context;
use multir_common::io::{self, nifti};
use multir_common::manifest::Manifest;
use multir_common::metrics::cohort::{bland_altman, classification_report};
use multir_common::metrics::segmentation_metrics;
use multir_common::model::Predictor;
use serde::Serialize;

use crate::cli::EvaluateArgs;

/// `--min-accuracy` / `--min-dice` not reached (exit status 3).
#[derive(Debug)]
pub struct QualityBarNotMet(pub String);

impl std::fmt::Display for QualityBarNotMet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "quality bar not met: {}", self.0)
    }
}

impl std::error::Error for QualityBarNotMet {}

/// One scan's row of scans.csv.
#[derive(Debug, Default, Serialize)]
struct Row {
    scan_id: String,
    status: &'static str,
    error: String,
    label: String,
    predicted: String,
    p_covid: Option<f64>,
    p_cap: Option<f64>,
    p_healthy: Option<f64>,
    dice: Option<f64>,
    assd_mm: Option<f64>,
    surface_dice: Option<f64>,
    surface_overlap_truth: Option<f64>,
    surface_overlap_pred: Option<f64>,
    hd95_mm: Option<f64>,
    volume_truth_ml: Option<f64>,
    volume_pred_ml: Option<f64>,
    windows: Option<usize>,
    seconds: f64,
}

fn mean(v: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

pub fn run(args: EvaluateArgs) -> anyhow::Result<()> {
    let manifest = Manifest::read_path(&args.manifest)?;
    let ck = super::model::checkpoint(args.infer.checkpoint.as_deref())?;
    let device = super::model::device(&args.infer.device)?;
    let predictor = Predictor::new(&ck, device)?;
    let cfg = args.infer.config(false);
    cfg.validate()?;
    let classes = ck.meta.classes.clone();
    std::fs::create_dir_all(&args.out).with_context(|| args.out.display().to_string())?;
    if args.save_masks {
        std::fs::create_dir_all(args.out.join("masks"))
            .with_context(|| args.out.display().to_string())?;
    }
    let opts = args.load.options();
    let started = Instant::now();
    let mut rows = Vec::with_capacity(manifest.len());
    let mut probs = Vec::new();
    let mut truth = Vec::new();
    for (n, e) in manifest.entries.iter().enumerate() {
        let t = Instant::now();
        let mut row = Row {
            scan_id: e.scan_id.clone(),
            label: e.label.map(|l| l.as_str().to_string()).unwrap_or_default(),
            ..Row::default()
        };
        let result = (|| -> anyhow::Result<()> {
            let image = e.image_path(&manifest);
            let ct = io::load_path(&image, &opts)?.volume;
            let p = predictor
                .predict(&ct, &cfg)
                .map_err(|err| err.in_file(&image))?;
            row.predicted = classes[p.class_index].clone();
            let cp = &p.class_probabilities;
            (row.p_covid, row.p_cap, row.p_healthy) =
                (cp.first().copied(), cp.get(1).copied(), cp.get(2).copied());
            row.windows = Some(p.windows);
            if let Some(mask_path) = e.mask_path(&manifest) {
                let t_mask = io::load_path(&mask_path, &opts)?.volume;
                let m = segmentation_metrics(&t_mask, &p.mask, args.tolerance_mm).with_context(
                    || format!("{}: comparing with the prediction", mask_path.display()),
                )?;
                row.dice = m.dice;
                row.assd_mm = m.assd;
                row.surface_dice = m.surface_dice;
                row.surface_overlap_truth = m.surface_overlap_truth;
                row.surface_overlap_pred = m.surface_overlap_pred;
                row.hd95_mm = m.hd95;
                row.volume_truth_ml = Some(m.volume_truth_ml);
                row.volume_pred_ml = Some(m.volume_pred_ml);
            }
            if args.save_masks {
                let f = args.out.join("masks").join(format!("{}.nii.gz", e.scan_id));
                nifti::write_path(&f, &p.mask, &nifti::WriteOptions::mask())?;
            }
            if let Some(l) = e.label {
                truth.push(l.index());
                probs.push(p.class_probabilities.clone());
            }
            Ok(())
        })();
        row.seconds = t.elapsed().as_secs_f64();
        match result {
            Ok(()) => row.status = "ok",
            Err(err) => {
                row.status = "error";
                row.error = format!("{err:#}");
                tracing::error!("{}", row.error);
            }
        }
        tracing::info!(
            "{}/{} {}: {} -> {} dice {} ({:.1} s)",
            n + 1,
            manifest.len(),
            row.scan_id,
            row.label,
            row.predicted,
            row.dice.map_or("-".into(), |d| format!("{d:.3}")),
            row.seconds
        );
        rows.push(row);
    }

    let csv_path = args.out.join("scans.csv");
    let mut w =
        csv::Writer::from_path(&csv_path).with_context(|| csv_path.display().to_string())?;
    for r in &rows {
        w.serialize(r)?;
    }
    w.flush()?;

    let ok: Vec<&Row> = rows.iter().filter(|r| r.status == "ok").collect();
    let lesion: Vec<&&Row> = ok
        .iter()
        .filter(|r| r.volume_truth_ml.unwrap_or(0.0) > 0.0)
        .collect();
    let report = if truth.is_empty() {
        None
    } else {
        Some(classification_report(&truth, &probs, &classes)?)
    };
    let (vt, vp): (Vec<f64>, Vec<f64>) = ok
        .iter()
        .filter_map(|r| Some((r.volume_truth_ml?, r.volume_pred_ml?)))
        .unzip();
    let agreement = if vt.len() >= 2 {
        Some(bland_altman(&vt, &vp)?)
    } else {
        None
    };
    let healthy_fp: Vec<f64> = ok
        .iter()
        .filter(|r| r.volume_truth_ml == Some(0.0))
        .filter_map(|r| r.volume_pred_ml)
        .collect();
    let mean_dice = mean(lesion.iter().filter_map(|r| r.dice));
    let accuracy = report.as_ref().and_then(|r| r.accuracy);
    let summary = serde_json::json!({
        "manifest": args.manifest.display().to_string(),
        "scans": rows.len(),
        "errors": rows.len() - ok.len(),
        "seconds": started.elapsed().as_secs_f64(),
        "seconds_per_scan": mean(ok.iter().map(|r| r.seconds)),
        "checkpoint": {
            "fingerprint": ck.meta.training.fingerprint,
            "steps": ck.meta.training.steps,
            "model": ck.meta.model,
            "preprocess": ck.meta.preprocess,
        },
        "inference": cfg,
        "classification": report,
        "segmentation": {
            "scans_with_lesions": lesion.len(),
            "mean_dice": mean_dice,
            "mean_assd_mm": mean(lesion.iter().filter_map(|r| r.assd_mm)),
            "mean_surface_dice": mean(lesion.iter().filter_map(|r| r.surface_dice)),
            "mean_surface_overlap_truth": mean(lesion.iter().filter_map(|r| r.surface_overlap_truth)),
            "mean_surface_overlap_pred": mean(lesion.iter().filter_map(|r| r.surface_overlap_pred)),
            "mean_hd95_mm": mean(lesion.iter().filter_map(|r| r.hd95_mm)),
            "tolerance_mm": args.tolerance_mm,
            "lesion_free_scans": healthy_fp.len(),
            "mean_false_positive_ml_on_lesion_free_scans": mean(healthy_fp.iter().copied()),
            "volume_agreement": agreement,
        },
    });
    let json_path = args.out.join("evaluation.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&summary)?)
        .with_context(|| json_path.display().to_string())?;
    let show = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.4}"));
    super::emit(format_args!(
        "{} scans ({} errors): accuracy {}, macro F1 {}, mean Dice (scans with lesions) {}, mean surface Dice {}; {}",
        rows.len(),
        rows.len() - ok.len(),
        show(accuracy),
        show(report.as_ref().and_then(|r| r.macro_f1)),
        show(mean_dice),
        show(summary["segmentation"]["mean_surface_dice"].as_f64()),
        json_path.display()
    ))?;
    let mut short = Vec::new();
    if let (Some(min), acc) = (args.min_accuracy, accuracy)
        && acc.is_none_or(|a| a < min)
    {
        short.push(format!("accuracy {} < {min}", show(acc)));
    }
    if let (Some(min), d) = (args.min_dice, mean_dice)
        && d.is_none_or(|d| d < min)
    {
        short.push(format!("mean Dice {} < {min}", show(d)));
    }
    if !short.is_empty() {
        return Err(QualityBarNotMet(short.join(", ")).into());
    }
    if ok.len() < rows.len() {
        anyhow::bail!(
            "{} of {} scans failed (see {})",
            rows.len() - ok.len(),
            rows.len(),
            csv_path.display()
        );
    }
    Ok(())
}
