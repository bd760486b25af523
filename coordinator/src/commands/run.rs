//! `multir run` (alias `evaluate`): a whole cohort through the per-scan
//! processor on this machine, into typed tables.
//!
//! Order of work, so that nothing is lost and mistakes cost seconds:
//! 1. read and check the manifest, refuse an output folder that holds any
//!    input, lock and probe the output folder, load the model: all before
//!    the first scan;
//! 2. run the pipeline ([`multir_common::runner`]): each finished scan is a
//!    durable fragment at once, scans finished by an earlier run with the
//!    same inputs, model and settings are skipped;
//! 3. build `scans.parquet`, `lesions.parquet`, `cohort.json` and
//!    `report.html` from the fragments, in manifest order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use multir_common::job::Job;
use multir_common::manifest::Manifest;
use multir_common::process::{Model, ProcessConfig, Processor};
use multir_common::results::store::OutputDir;
use multir_common::results::{ResumeKey, ScanRecord};
use multir_common::runner::{self, RunOptions};

use super::outputs;
use crate::cli::RunArgs;
use crate::progress::Progress;

/// `--min-accuracy` / `--min-dice` not reached (exit status 3).
#[derive(Debug)]
pub struct QualityBarNotMet(pub String);

impl std::fmt::Display for QualityBarNotMet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "quality bar not met: {}", self.0)
    }
}

impl std::error::Error for QualityBarNotMet {}

/// The run was stopped by SIGINT or SIGTERM (exit status 130).
#[derive(Debug)]
pub struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// SIGINT and SIGTERM set the returned flag; a second SIGINT ends the
/// process at once (exit status 130) for a user who does not want to wait
/// for the scan in flight.
fn shutdown_flag() -> anyhow::Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register_conditional_shutdown(SIGINT, 130, flag.clone())?;
    signal_hook::flag::register(SIGINT, flag.clone())?;
    signal_hook::flag::register(SIGTERM, flag.clone())?;
    Ok(flag)
}

/// The pipeline's settings: thread counts not given follow the CPUs this
/// process may use.
fn run_options(args: &RunArgs) -> RunOptions {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let auto = RunOptions::stage_threads(cpus);
    RunOptions {
        read_ahead: args.read_ahead,
        readers: args.readers.map_or(auto, usize::from),
        finishers: args.finishers.map_or(auto, usize::from),
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let manifest = outputs::read_manifest(&args.manifest)?;
    outputs::check_ids(manifest.entries.iter().map(|e| e.scan_id.as_str()))?;
    outputs::refuse_inputs_inside(&args.out, &inputs_of(&manifest, &args.manifest))?;
    let cfg = ProcessConfig {
        max_voxels: args.load.max_voxels,
        series_uid: args.load.series_uid.clone(),
        inference: args.infer.config(false),
        tolerance_mm: args.tolerance_mm,
        probability_maps: args.probabilities,
        keep_lesions_outside_lungs: args.infer.keep_lesions_outside_lungs,
        ..ProcessConfig::default()
    };
    cfg.validate()?;
    let mut out = OutputDir::open(&args.out)?;
    let model = Model::open(args.infer.checkpoint.as_deref())?;
    let device = multir_common::device::open(args.infer.device.device)?;
    let processor = Processor::new(&model, device, &cfg)?;
    let classes = processor.classes().to_vec();

    let earlier = if args.force {
        HashMap::new()
    } else {
        out.index()?
    };
    let done = |job: &Job, key: &ResumeKey| {
        earlier
            .get(&job.scan_id)
            .is_some_and(|r: &ScanRecord| r.is_final_for(key))
    };
    let jobs: Vec<Job> = manifest
        .entries
        .iter()
        .map(|e| Job::from_entry(e, &manifest))
        .collect();
    let shutdown = shutdown_flag()?;
    let mut progress = Progress::new(jobs.len());
    let report = runner::run(
        jobs,
        &processor,
        &mut out,
        done,
        &shutdown,
        run_options(&args),
        |event| progress.event(event),
    );
    progress.finish();
    let report = report?;
    drop(earlier);

    let run_info = serde_json::json!({
        "manifest": std::path::absolute(&args.manifest)
            .unwrap_or_else(|_| args.manifest.clone())
            .display()
            .to_string(),
        "model": {"name": model.name, "sha256": model.sha256,
                  "steps": model.checkpoint.meta.training.steps,
                  "config": model.checkpoint.meta.model,
                  "preprocess": model.checkpoint.meta.preprocess},
        "classes": classes,
        "settings": cfg,
        "settings_sha256": cfg.settings_sha256(),
        "complete": !report.interrupted,
    });
    let index = out.index()?;
    let records: Vec<&ScanRecord> = manifest
        .entries
        .iter()
        .filter_map(|e| index.get(&e.scan_id))
        .collect();
    let written = outputs::write_results(
        out.root(),
        &records,
        &classes,
        &run_info,
        !args.no_report,
        Some(&manifest),
    )?;
    if report.interrupted {
        return Err(Interrupted(format!(
            "interrupted: {} of {} scans have results ({} this run, {} kept from earlier runs); \
             {} holds them. Run the same command again to finish the rest",
            records.len(),
            manifest.len(),
            report.processed,
            report.skipped,
            args.out.join("scans.parquet").display()
        ))
        .into());
    }
    let summary = &written.summary;
    let show = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.4}"));
    super::emit(format_args!(
        "{} scans ({} errors, {} kept from an earlier run): accuracy {}, macro F1 {}, \
         mean Dice (scans with lesions) {}, mean surface Dice {}; tables in {}",
        summary.scans,
        summary.errors,
        report.skipped,
        show(summary.accuracy()),
        show(summary.classification.as_ref().and_then(|c| c.macro_f1)),
        show(summary.mean_dice()),
        show(
            summary
                .segmentation
                .as_ref()
                .and_then(|s| s.mean_surface_dice)
        ),
        args.out.display()
    ))?;
    let mut short = Vec::new();
    if let Some(min) = args.min_accuracy
        && summary.accuracy().is_none_or(|a| a < min)
    {
        short.push(format!("accuracy {} < {min}", show(summary.accuracy())));
    }
    if let Some(min) = args.min_dice
        && summary.mean_dice().is_none_or(|d| d < min)
    {
        short.push(format!("mean Dice {} < {min}", show(summary.mean_dice())));
    }
    if !short.is_empty() {
        return Err(QualityBarNotMet(short.join(", ")).into());
    }
    if summary.errors > 0 {
        anyhow::bail!(
            "{} of {} scans failed (status \"error\" in {})",
            summary.errors,
            summary.scans,
            args.out.join("scans.parquet").display()
        );
    }
    Ok(())
}

/// Every file a run reads: the manifest, the images and the masks.
fn inputs_of(manifest: &Manifest, manifest_path: &Path) -> Vec<PathBuf> {
    let mut v = vec![manifest_path.to_path_buf()];
    for e in &manifest.entries {
        v.push(e.image_path(manifest));
        v.extend(e.mask_path(manifest));
    }
    v
}
