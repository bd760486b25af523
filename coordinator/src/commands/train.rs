//! `multir train`: MultiR-Net on a labelled, masked manifest.

use std::io::{IsTerminal, Write};
use std::time::Instant;

use anyhow::Context;
use multir_common::manifest::Manifest;
use multir_common::model::loss::LossConfig;
use multir_common::model::{Checkpoint, ModelConfig, Start, TrainConfig, TrainEvent, data, train};
use multir_common::preprocess::PreprocessConfig;
use multir_common::preprocess::region::LungRegionConfig;

use crate::cli::TrainArgs;

/// The default grid of the `small` and `tiny` presets: phantoms are 1.4-2.4
/// mm in-plane, so a finer grid would only interpolate; 2.5 mm slices keep
/// 32-slice windows 8 cm deep. (The shipped model was trained on a coarser
/// 3.2 x 3.2 x 5 mm grid with `--spacing`; see `models/README.md`.)
pub const SMALL_SPACING_MM: [f64; 3] = [1.6, 1.6, 2.5];

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let mut model = if args.model.ends_with(".json") {
        let text = std::fs::read_to_string(&args.model).with_context(|| args.model.clone())?;
        serde_json::from_str::<ModelConfig>(&text)
            .with_context(|| format!("{}: model config", args.model))?
    } else {
        ModelConfig::preset(&args.model)?
    };
    if let Some(n) = args.iterations {
        model.iterations = n;
    }
    if let Some(p) = args.patch {
        model.patch = p.map(|v| v as usize);
    }
    let spacing = args.spacing.unwrap_or(if args.model == "paper" {
        PreprocessConfig::default().spacing_mm
    } else {
        SMALL_SPACING_MM
    });
    let preprocess = PreprocessConfig {
        spacing_mm: spacing,
        lung_region: (!args.no_lung_region).then(LungRegionConfig::default),
        ..Default::default()
    };
    let mut cfg = TrainConfig::new(model, preprocess);
    cfg.loss = LossConfig {
        seg: args.loss,
        alpha: args.alpha,
        beta: args.beta,
        gamma: args.gamma,
        lambda: args.lambda,
        bce: args.bce,
        ..LossConfig::default()
    };
    cfg.sampling.patch = cfg.model.patch;
    cfg.sampling.lesion_fraction = args.lesion_fraction;
    cfg.sampling.jitter = args.jitter;
    cfg.sampling.soft_masks = args.soft_masks;
    cfg.batch = args.batch;
    cfg.lr = args.lr;
    cfg.steps = args.steps;
    cfg.eval_every = args.eval_every;
    cfg.folds = args.folds;
    cfg.fold = args.fold;
    cfg.plateau_patience = args.patience;
    cfg.early_stop = args.early_stop;
    cfg.seed = args.seed;
    cfg.max_seconds = args.max_minutes.map(|m| m * 60.0);
    cfg.validate()?;
    let device = multir_common::device::open(args.device.device)?;
    let read = |p: &Option<std::path::PathBuf>| p.as_deref().map(Checkpoint::read_path).transpose();
    let (resume, init) = (read(&args.resume)?, read(&args.init)?);
    let start = match (&resume, &init) {
        (Some(ck), _) => Start::Resume(ck),
        (None, Some(ck)) => Start::Init(ck),
        (None, None) => Start::Fresh,
    };

    let manifest = Manifest::read_path(&args.manifest)?;
    let t = Instant::now();
    tracing::info!(scans = manifest.len(), spacing = ?spacing, "loading and resampling the training scans");
    let loaded = data::load_manifest(&manifest, &cfg.preprocess, &args.load.options())?;
    let (scans, hashes): (Vec<_>, Vec<_>) = loaded.into_iter().unzip();
    let voxels: usize = scans.iter().map(|s| s.mask.len()).sum();
    if cfg.preprocess.lung_region.is_some() {
        let kept: usize = scans.iter().map(|s| s.lesion.len()).sum();
        let dropped: u64 = scans.iter().map(|s| s.lesion_outside_region).sum();
        tracing::info!(
            "lung region: {dropped} of {} lesion voxels of the model grid lie outside it ({:.2} %)",
            kept as u64 + dropped,
            100.0 * dropped as f64 / (kept as u64 + dropped).max(1) as f64
        );
    }
    tracing::info!(
        "{} scans on the model grid ({:.0} M voxels) in {:.1} s",
        scans.len(),
        voxels as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all(&args.out).with_context(|| args.out.display().to_string())?;
    std::fs::write(
        args.out.join("train_config.json"),
        serde_json::to_string_pretty(&cfg)?,
    )
    .with_context(|| args.out.display().to_string())?;

    let note = std::env::args().collect::<Vec<_>>().join(" ");
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut ema: Option<f64> = None;
    let total = cfg.steps;
    let mut first = 0;
    let mut report = |e: &TrainEvent| match e {
        TrainEvent::Started {
            train_scans,
            val_scans,
            parameters,
            first_step,
        } => {
            first = *first_step;
            tracing::info!(
                "training on {train_scans} scans, validating on {val_scans}; {parameters} parameters; from step {first_step}"
            );
        }
        TrainEvent::Step { step, loss, lr } => {
            let e = ema.map_or(*loss, |m| 0.95 * m + 0.05 * loss);
            ema = Some(e);
            let per = started.elapsed().as_secs_f64() / (step - first).max(1) as f64;
            let eta = per * total.saturating_sub(*step) as f64;
            if tty {
                eprint!(
                    "\r step {step}/{total}  loss {e:.4}  lr {lr:.1e}  {per:.2} s/step  eta {:.0} min   ",
                    eta / 60.0
                );
                let _ = std::io::stderr().flush();
            } else if step % 25 == 0 {
                tracing::info!("step {step}/{total} loss {e:.4} lr {lr:.1e} {per:.2} s/step");
            }
        }
        TrainEvent::Eval {
            step,
            metrics: m,
            improved,
        } => {
            if tty {
                eprintln!();
            }
            tracing::info!(
                "step {step}: val loss {:.4} (seg {:.4}, cls {:.4}) patch dice {:.3} accuracy {:.3}{}",
                m.loss,
                m.seg_loss,
                m.cls_loss,
                m.dice,
                m.accuracy,
                if *improved { "  * best" } else { "" }
            );
        }
    };
    let summary = train(
        &cfg,
        &scans,
        &hashes,
        device,
        start,
        &args.out,
        &note,
        &mut report,
    )?;
    if tty {
        eprintln!();
    }
    tracing::info!(
        "stopped after {} steps ({}) in {:.1} min; best: {}",
        summary.steps,
        summary.stopped,
        summary.seconds / 60.0,
        args.out.join("best.safetensors").display()
    );
    super::emit(serde_json::to_string_pretty(&summary)?)?;
    Ok(())
}
