//! The training loop: Adam on eq. 9, validation on a fixed patch set,
//! reduce-on-plateau, early stopping, checkpoints that resume exactly.

use super::checkpoint::{Checkpoint, CheckpointMeta, OPTIM_PREFIX, TrainingInfo};
use super::config::ModelConfig;
use super::data::{self, Sample, SamplingConfig, TrainingScan};
use super::loss::{LossConfig, multitask_loss};
use super::net::{MultiRNet, parameter_count};
use super::optim::{Adam, Plateau};
use crate::error::{Error, Result};
use crate::manifest::Label;
use crate::preprocess::PreprocessConfig;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn};

/// Everything a training run is configured by.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Architecture.
    pub model: ModelConfig,
    /// Preprocessing (saved with the checkpoint).
    pub preprocess: PreprocessConfig,
    /// Loss.
    pub loss: LossConfig,
    /// Patch sampling and augmentation.
    pub sampling: SamplingConfig,
    /// Patches per step (paper: 4).
    pub batch: usize,
    /// Initial learning rate (paper: 3e-4).
    pub lr: f64,
    /// Adam betas (paper: 0.9, 0.999).
    pub betas: (f64, f64),
    /// Most optimizer steps.
    pub steps: u64,
    /// Steps between validations (one "epoch").
    pub eval_every: u64,
    /// Validation patches per held-out scan.
    pub val_patches: usize,
    /// Validations without improvement before the rate is reduced.
    pub plateau_patience: u32,
    /// Rate multiplier on a plateau.
    pub plateau_factor: f64,
    /// Floor of the rate.
    pub min_lr: f64,
    /// Validations without improvement before stopping.
    pub early_stop: u32,
    /// Folds of the split; the scans of fold `fold` validate.
    pub folds: usize,
    /// The validation fold (k-fold cross-validation runs each in turn).
    pub fold: usize,
    /// Seed of initialisation, split and sampling.
    pub seed: u64,
    /// Stop after this many seconds (checked after each step), if set.
    pub max_seconds: Option<f64>,
}

impl TrainConfig {
    /// Paper defaults around a model configuration.
    pub fn new(model: ModelConfig, preprocess: PreprocessConfig) -> Self {
        TrainConfig {
            sampling: SamplingConfig::new(model.patch),
            model,
            preprocess,
            loss: LossConfig::default(),
            batch: 4,
            lr: 3e-4,
            betas: (0.9, 0.999),
            steps: 4000,
            eval_every: 100,
            val_patches: 4,
            plateau_patience: 4,
            plateau_factor: 0.5,
            min_lr: 1e-6,
            early_stop: 10,
            folds: 5,
            fold: 0,
            seed: 0,
            max_seconds: None,
        }
    }

    /// Refuses inconsistent settings before any work.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.loss.validate()?;
        let bad = |m: String| Err(Error::InvalidArgument(format!("training: {m}")));
        if self.sampling.patch != self.model.patch {
            return bad(format!(
                "sampling patch {:?} differs from the model's {:?}",
                self.sampling.patch, self.model.patch
            ));
        }
        if !(1..=256).contains(&self.batch) {
            return bad(format!("batch {} outside 1..=256", self.batch));
        }
        if !(self.lr > 0.0 && self.lr < 1.0) {
            return bad(format!("learning rate {} outside (0, 1)", self.lr));
        }
        if self.eval_every == 0 || self.steps == 0 {
            return bad("steps and eval_every must be positive".into());
        }
        if self.folds < 2 || self.fold >= self.folds {
            return bad(format!(
                "fold {} of {} folds (need folds >= 2, fold < folds)",
                self.fold, self.folds
            ));
        }
        if !(0.0..=1.0).contains(&self.sampling.lesion_fraction)
            || !(0.0..0.5).contains(&self.sampling.jitter)
        {
            return bad("lesion_fraction must be in [0, 1] and jitter in [0, 0.5)".into());
        }
        Ok(())
    }
}

/// Validation figures of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ValMetrics {
    /// Mean eq. 9 loss over the validation batches.
    pub loss: f64,
    /// Mean segmentation term.
    pub seg_loss: f64,
    /// Mean classification term.
    pub cls_loss: f64,
    /// Dice of the thresholded predictions over all validation patches.
    pub dice: f64,
    /// Patch accuracy over the patches that count for classification.
    pub accuracy: f64,
}

/// What the loop reports as it goes.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// Data split and network built.
    Started {
        /// Training scans.
        train_scans: usize,
        /// Validation scans.
        val_scans: usize,
        /// Trainable parameters.
        parameters: i64,
        /// First step (non-zero when resuming).
        first_step: u64,
    },
    /// One optimizer step done.
    Step {
        /// Step number (1-based).
        step: u64,
        /// Eq. 9 loss of the batch.
        loss: f64,
        /// Learning rate used.
        lr: f64,
    },
    /// A validation done.
    Eval {
        /// Step number.
        step: u64,
        /// Figures.
        metrics: ValMetrics,
        /// Whether it is the best so far (best.safetensors written).
        improved: bool,
    },
}

/// How a run ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainSummary {
    /// Steps taken in total.
    pub steps: u64,
    /// Why it stopped.
    pub stopped: String,
    /// Best validation figures.
    pub best: Option<ValMetrics>,
    /// Wall time of this run, seconds.
    pub seconds: f64,
    /// Training-data fingerprint.
    pub fingerprint: String,
}

/// Resume state kept in checkpoint metadata.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct ResumeState {
    step: u64,
    lr: f64,
    plateau: Plateau,
    best: Option<ValMetrics>,
    config: TrainConfig,
}

/// Where a run starts.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// Fresh weights from the seed.
    Fresh,
    /// Continue a run exactly from its `last.safetensors` (same model,
    /// preprocessing and data; weights, optimizer and schedule restored).
    Resume(&'a Checkpoint),
    /// Fine-tune: weights from any checkpoint of the same architecture and
    /// preprocessing, a new optimizer and schedule from step 0. The window
    /// size may differ: the network is fully convolutional up to a global
    /// average pool, so its weights do not depend on it.
    Init(&'a Checkpoint),
}

/// Trains from `scans` (all of the manifest; the split is made here) and
/// writes `last.safetensors` (resumable), `best.safetensors` (model only)
/// and `history.jsonl` to `out`. `hashes` are the per-scan data hashes for
/// the fingerprint.
#[allow(clippy::too_many_arguments)]
pub fn train(
    cfg: &TrainConfig,
    scans: &[TrainingScan],
    hashes: &[u64],
    device: Device,
    start: Start<'_>,
    out: &Path,
    note: &str,
    progress: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    cfg.validate()?;
    let started = Instant::now();
    let labels: Vec<Label> = scans.iter().map(|s| s.label).collect();
    let folds = data::assign_folds(&labels, cfg.folds, cfg.seed)?;
    let train_set: Vec<&TrainingScan> = scans
        .iter()
        .zip(&folds)
        .filter(|(_, f)| **f != cfg.fold)
        .map(|(s, _)| s)
        .collect();
    let val_set: Vec<&TrainingScan> = scans
        .iter()
        .zip(&folds)
        .filter(|(_, f)| **f == cfg.fold)
        .map(|(s, _)| s)
        .collect();
    if train_set.is_empty() || val_set.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} scans cannot be split into {} folds with both parts non-empty",
            scans.len(),
            cfg.folds
        )));
    }
    let train_hashes: Vec<u64> = hashes
        .iter()
        .zip(&folds)
        .filter(|(_, f)| **f != cfg.fold)
        .map(|(h, _)| *h)
        .collect();
    let fingerprint = data::fingerprint(&train_hashes);
    std::fs::create_dir_all(out).map_err(|e| Error::Io(e).in_file(out))?;

    tch::manual_seed(cfg.seed as i64);
    let mut vs = nn::VarStore::new(device);
    let net = MultiRNet::new(&vs.root(), &cfg.model)?;
    let mut opt = Adam::new(&vs, cfg.lr, cfg.betas)?;
    let mut plateau = Plateau::new(cfg.plateau_patience, cfg.plateau_factor, cfg.min_lr);
    let mut best: Option<ValMetrics> = None;
    let mut step = 0u64;
    if let Start::Init(ck) = start {
        let same_window = ModelConfig {
            patch: cfg.model.patch,
            ..ck.meta.model.clone()
        };
        // The weights do not depend on the window size or on whether a lung
        // region blanks the input (fine-tuning teaches that), but they do
        // on the grid and the HU window.
        let same_grid = PreprocessConfig {
            lung_region: cfg.preprocess.lung_region,
            ..ck.meta.preprocess
        };
        if same_window != cfg.model || same_grid != cfg.preprocess {
            return Err(Error::Checkpoint(
                "the initial weights belong to a different model or preprocessing configuration"
                    .into(),
            ));
        }
        ck.load_into(&mut vs)?;
    }
    if let Start::Resume(ck) = start {
        let state: ResumeState = ck
            .meta
            .resume
            .clone()
            .ok_or_else(|| {
                Error::Checkpoint(
                    "no training state to resume from (a model-only checkpoint?)".into(),
                )
            })
            .and_then(|v| {
                serde_json::from_value(v)
                    .map_err(|e| Error::Checkpoint(format!("training state: {e}")))
            })?;
        if state.config.model != cfg.model || state.config.preprocess != cfg.preprocess {
            return Err(Error::Checkpoint(
                "the checkpoint was trained with a different model or preprocessing configuration"
                    .into(),
            ));
        }
        if ck.meta.training.fingerprint != fingerprint {
            return Err(Error::Checkpoint(format!(
                "the checkpoint was trained on other data (fingerprint {} here {})",
                ck.meta.training.fingerprint, fingerprint
            )));
        }
        ck.load_into(&mut vs)?;
        opt.load_state(&ck.optimizer_state()?, state.step)?;
        opt.lr = state.lr;
        plateau = state.plateau;
        best = state.best;
        step = state.step;
    }
    progress(&TrainEvent::Started {
        train_scans: train_set.len(),
        val_scans: val_set.len(),
        parameters: parameter_count(&vs),
        first_step: step,
    });

    let val = data::validation_samples(&val_set, &cfg.sampling, cfg.val_patches, cfg.seed)?;
    let history_path = out.join("history.jsonl");
    let meta_base = |step: u64, validation: Option<ValMetrics>| {
        let mut m = CheckpointMeta::new(
            cfg.model.clone(),
            cfg.preprocess,
            Label::ALL.iter().map(|l| l.as_str().to_string()).collect(),
        );
        m.training = TrainingInfo {
            fingerprint: fingerprint.clone(),
            train_scans: train_set.len(),
            val_scans: val_set.len(),
            seed: cfg.seed,
            steps: step,
            device: format!("{device:?}").to_lowercase(),
            validation: validation.map(val_map).unwrap_or_default(),
            note: note.to_string(),
        };
        m
    };

    let stopped;
    loop {
        if step >= cfg.steps {
            stopped = format!("reached {} steps", cfg.steps);
            break;
        }
        let batch = data::training_batch(&train_set, &cfg.sampling, cfg.batch, cfg.seed, step)?;
        let (x, y, labels, w) = data::to_tensors(&batch, cfg.model.patch, device)?;
        opt.zero_grad()?;
        let o = net.forward(&x)?;
        let parts = multitask_loss(&o.seg_logits, &y, &o.class_logits, &labels, &w, &cfg.loss)?;
        let loss = parts.total.f_double_value(&[])?;
        if !loss.is_finite() {
            return Err(Error::InvalidArgument(format!(
                "loss became {loss} at step {}; lower the learning rate",
                step + 1
            )));
        }
        parts.total.f_backward()?;
        opt.step()?;
        step += 1;
        progress(&TrainEvent::Step {
            step,
            loss,
            lr: opt.lr,
        });

        // Checked after a step, so every run makes progress; a stop on the
        // time budget validates and saves like an evaluation step, so
        // `--resume` loses none of the steps since the last one.
        let out_of_time = cfg
            .max_seconds
            .filter(|&limit| started.elapsed().as_secs_f64() >= limit);
        if step.is_multiple_of(cfg.eval_every) || step == cfg.steps || out_of_time.is_some() {
            let m = validate(&net, &val, cfg, device)?;
            let (improved, lr) = plateau.observe(m.loss, opt.lr);
            opt.lr = lr;
            if improved {
                best = Some(m);
                let ck = Checkpoint::from_var_store(&vs, meta_base(step, Some(m)), &[])?;
                ck.write_path(out.join("best.safetensors"))?;
            }
            let state = ResumeState {
                step,
                lr: opt.lr,
                plateau: plateau.clone(),
                best,
                config: cfg.clone(),
            };
            let mut meta = meta_base(step, Some(m));
            meta.resume =
                Some(serde_json::to_value(&state).map_err(|e| Error::Checkpoint(e.to_string()))?);
            let extra: Vec<(String, Tensor)> = opt
                .state()
                .into_iter()
                .map(|(k, t)| (format!("{OPTIM_PREFIX}{k}"), t))
                .collect();
            Checkpoint::from_var_store(&vs, meta, &extra)?
                .write_path(out.join("last.safetensors"))?;
            append_history(
                &history_path,
                step,
                opt.lr,
                &m,
                started.elapsed().as_secs_f64(),
            )?;
            progress(&TrainEvent::Eval {
                step,
                metrics: m,
                improved,
            });
            if let Some(limit) = out_of_time {
                stopped = format!("time budget of {limit} s used");
                break;
            }
            if plateau.bad_evals >= cfg.early_stop {
                stopped = format!(
                    "early stop: no improvement in {} validations",
                    cfg.early_stop
                );
                break;
            }
        }
    }
    Ok(TrainSummary {
        steps: step,
        stopped,
        best,
        seconds: started.elapsed().as_secs_f64(),
        fingerprint,
    })
}

fn val_map(m: ValMetrics) -> BTreeMap<String, f64> {
    BTreeMap::from([
        ("loss".to_string(), m.loss),
        ("seg_loss".to_string(), m.seg_loss),
        ("cls_loss".to_string(), m.cls_loss),
        ("patch_dice".to_string(), m.dice),
        ("patch_accuracy".to_string(), m.accuracy),
    ])
}

fn append_history(path: &Path, step: u64, lr: f64, m: &ValMetrics, seconds: f64) -> Result<()> {
    use std::io::Write;
    let line = serde_json::json!({"step": step, "lr": lr, "seconds": seconds, "val": m});
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::Io(e).in_file(path))?;
    writeln!(f, "{line}").map_err(|e| Error::Io(e).in_file(path))
}

/// Loss, Dice and accuracy of the network on the validation patches.
pub fn validate(
    net: &MultiRNet,
    val: &[Sample],
    cfg: &TrainConfig,
    device: Device,
) -> Result<ValMetrics> {
    tch::no_grad(|| {
        let (mut loss, mut seg, mut cls, mut batches) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        let (mut inter, mut sum_p, mut sum_g) = (0.0, 0.0, 0.0);
        let (mut right, mut counted) = (0.0, 0.0);
        for chunk in val.chunks(cfg.batch) {
            let (x, y, labels, w) = data::to_tensors(chunk, cfg.model.patch, device)?;
            let o = net.forward(&x)?;
            let parts = multitask_loss(&o.seg_logits, &y, &o.class_logits, &labels, &w, &cfg.loss)?;
            loss += parts.total.f_double_value(&[])?;
            seg += parts.seg.f_double_value(&[])?;
            cls += parts.cls.f_double_value(&[])?;
            batches += 1.0;
            let pred = o.seg_logits.f_gt(0.0)?.f_to_kind(Kind::Float)?;
            // Soft targets count as lesion from half occupancy, as at
            // inference.
            let y = y.f_ge(0.5)?.f_to_kind(Kind::Float)?;
            inter += pred.f_mul(&y)?.f_sum(Kind::Float)?.f_double_value(&[])?;
            sum_p += pred.f_sum(Kind::Float)?.f_double_value(&[])?;
            sum_g += y.f_sum(Kind::Float)?.f_double_value(&[])?;
            let hit = o
                .class_logits
                .f_argmax(1, false)?
                .f_eq_tensor(&labels)?
                .f_to_kind(Kind::Float)?;
            right += hit.f_mul(&w)?.f_sum(Kind::Float)?.f_double_value(&[])?;
            counted += w.f_sum(Kind::Float)?.f_double_value(&[])?;
        }
        let b = batches.max(1.0);
        Ok(ValMetrics {
            loss: loss / b,
            seg_loss: seg / b,
            cls_loss: cls / b,
            dice: if sum_p + sum_g > 0.0 {
                2.0 * inter / (sum_p + sum_g)
            } else {
                1.0
            },
            accuracy: if counted > 0.0 {
                right / counted
            } else {
                f64::NAN
            },
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Affine, Volume};

    /// Scans where lesions are bright blocks: COVID small, CAP large.
    fn toy_scans() -> Vec<TrainingScan> {
        let dims = [24, 24, 12];
        let mut out = Vec::new();
        for (n, label) in [Label::Covid, Label::Cap, Label::Healthy]
            .iter()
            .cycle()
            .take(6)
            .enumerate()
        {
            let len = dims.iter().product();
            let mut img = vec![0.2f32; len];
            let mut mask = vec![0u8; len];
            let r = match label {
                Label::Covid => 2,
                Label::Cap => 4,
                Label::Healthy => 0,
            };
            let c = [8 + n % 3 * 3, 10, 6];
            for k in c[2] - r.min(3)..c[2] + r.min(3) {
                for j in c[1] - r..c[1] + r {
                    for i in c[0] - r..c[0] + r {
                        let idx = i + 24 * (j + 24 * k);
                        img[idx] = 0.8;
                        mask[idx] = data::OCCUPIED;
                    }
                }
            }
            out.push(TrainingScan::new(
                format!("s{n}"),
                *label,
                Volume::new(img, dims, Affine::identity()).unwrap(),
                mask,
            ));
        }
        out
    }

    fn tiny_cfg(steps: u64) -> TrainConfig {
        let mut c = TrainConfig::new(ModelConfig::tiny(), PreprocessConfig::default());
        c.steps = steps;
        c.eval_every = steps;
        c.folds = 3;
        c.batch = 2;
        c.lr = 3e-3;
        c.sampling.jitter = 0.0;
        c
    }

    #[test]
    fn training_is_reproducible_and_resumes_exactly() {
        let scans = toy_scans();
        let hashes: Vec<u64> = (0..scans.len() as u64).collect();
        let dir = tempfile::tempdir().unwrap();
        let run = |cfg: &TrainConfig, sub: &str, resume: Option<&Checkpoint>| {
            let start = resume.map_or(Start::Fresh, Start::Resume);
            train(
                cfg,
                &scans,
                &hashes,
                Device::Cpu,
                start,
                &dir.path().join(sub),
                "test",
                &mut |_| {},
            )
            .unwrap()
        };
        let cfg4 = tiny_cfg(4);
        run(&cfg4, "a", None);
        run(&cfg4, "b", None);
        let a = Checkpoint::read_path(dir.path().join("a/last.safetensors")).unwrap();
        let b = Checkpoint::read_path(dir.path().join("b/last.safetensors")).unwrap();
        assert_eq!(a.tensors, b.tensors, "same seed, same weights");
        // 2 steps, then 2 more from the checkpoint = 4 straight.
        let mut cfg2 = tiny_cfg(2);
        cfg2.eval_every = 2;
        run(&cfg2, "c", None);
        let mid = Checkpoint::read_path(dir.path().join("c/last.safetensors")).unwrap();
        let mut cont = cfg4.clone();
        cont.eval_every = 2;
        let mut cfg4b = cfg4.clone();
        cfg4b.eval_every = 2;
        run(&cfg4b, "d", None);
        let s = run(&cont, "e", Some(&mid));
        assert_eq!(s.steps, 4);
        let straight = Checkpoint::read_path(dir.path().join("d/last.safetensors")).unwrap();
        let resumed = Checkpoint::read_path(dir.path().join("e/last.safetensors")).unwrap();
        for (name, t) in &straight.tensors {
            let r = &resumed.tensors[name];
            let diff = t
                .data
                .iter()
                .zip(&r.data)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(diff < 1e-5, "{name} differs by {diff} after resuming");
        }
        // A run stopped by its time budget saves the step it reached, not
        // the last evaluation step (here: no evaluation step was reached).
        let mut timed = tiny_cfg(50);
        timed.max_seconds = Some(0.0);
        let s = run(&timed, "t", None);
        assert!(s.stopped.contains("time budget"), "{}", s.stopped);
        assert_eq!(s.steps, 1);
        let t = Checkpoint::read_path(dir.path().join("t/last.safetensors")).unwrap();
        assert_eq!(t.meta.training.steps, 1);
        assert_eq!(t.meta.resume.as_ref().unwrap()["step"], 1);
        // The model-only best checkpoint cannot resume.
        let best = Checkpoint::read_path(dir.path().join("a/best.safetensors")).unwrap();
        let e = train(
            &cfg4,
            &scans,
            &hashes,
            Device::Cpu,
            Start::Resume(&best),
            &dir.path().join("f"),
            "",
            &mut |_| {},
        );
        assert!(e.unwrap_err().to_string().contains("no training state"));
        // But it can initialise a fine-tuning run of the same architecture,
        // which then starts from its weights, not from the seed's.
        let mut one = tiny_cfg(1);
        one.lr = 1e-12;
        one.seed = 77;
        let init = |cfg: &TrainConfig, sub: &str| {
            let out = dir.path().join(sub);
            train(
                cfg,
                &scans,
                &hashes,
                Device::Cpu,
                Start::Init(&best),
                &out,
                "",
                &mut |_| {},
            )
            .map(|_| Checkpoint::read_path(out.join("last.safetensors")).unwrap())
        };
        let tuned = init(&one, "g").unwrap();
        for (name, t) in &best.tensors {
            let diff = t
                .data
                .iter()
                .zip(&tuned.tensors[name].data)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff < 1e-6,
                "{name} moved by {diff} at a negligible learning rate"
            );
        }
        let mut other = tiny_cfg(1);
        other.model.widths = vec![4, 8, 16];
        let e = init(&other, "h").unwrap_err().to_string();
        assert!(e.contains("different model"), "{e}");
        // A larger window is the same network: it fine-tunes, and the
        // checkpoint it writes records the new window.
        let mut wider = tiny_cfg(1);
        wider.model.patch = [
            2 * one.model.patch[0],
            one.model.patch[1],
            one.model.patch[2],
        ];
        wider.sampling.patch = wider.model.patch;
        let w = init(&wider, "w").unwrap();
        assert_eq!(w.meta.model.patch, wider.model.patch);
        assert_ne!(w.meta.model.patch, best.meta.model.patch);
    }

    #[test]
    fn a_tiny_model_overfits_one_batch() {
        tch::manual_seed(0);
        let scans = toy_scans();
        let refs: Vec<&TrainingScan> = scans.iter().collect();
        let cfg = tiny_cfg(1);
        let mut sampling = cfg.sampling;
        sampling.lesion_fraction = 1.0;
        sampling.flips = false;
        let batch = data::training_batch(&refs, &sampling, 4, 7, 0).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = MultiRNet::new(&vs.root(), &cfg.model).unwrap();
        let mut opt = Adam::new(&vs, 3e-3, (0.9, 0.999)).unwrap();
        let (x, y, labels, w) = data::to_tensors(&batch, cfg.model.patch, Device::Cpu).unwrap();
        let loss_cfg = LossConfig {
            lambda: 0.5,
            ..Default::default()
        };
        let mut first = None;
        let mut last = 0.0;
        for _ in 0..300 {
            opt.zero_grad().unwrap();
            let o = net.forward(&x).unwrap();
            let p =
                multitask_loss(&o.seg_logits, &y, &o.class_logits, &labels, &w, &loss_cfg).unwrap();
            last = p.total.double_value(&[]);
            first.get_or_insert(last);
            p.total.backward();
            opt.step().unwrap();
        }
        let first = first.unwrap();
        assert!(last < 0.15 * first, "loss went from {first} to {last}");
        let o = tch::no_grad(|| net.forward(&x).unwrap());
        let pred = o.seg_logits.gt(0.0).to_kind(Kind::Float);
        let dice = 2.0 * (&pred * &y).sum(Kind::Float).double_value(&[])
            / (pred.sum(Kind::Float).double_value(&[]) + y.sum(Kind::Float).double_value(&[]));
        assert!(dice > 0.9, "dice on the memorised batch {dice}");
        let acc = o
            .class_logits
            .argmax(1, false)
            .eq_tensor(&labels)
            .to_kind(Kind::Float)
            .mean(Kind::Float);
        assert_eq!(acc.double_value(&[]), 1.0);
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut c = tiny_cfg(1);
        c.fold = 3;
        assert!(c.validate().unwrap_err().to_string().contains("fold"));
        let mut c = tiny_cfg(1);
        c.sampling.patch = [32, 32, 16];
        assert!(c.validate().unwrap_err().to_string().contains("patch"));
    }
}
