//! The command-line grammar of `multir`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use multir_common::cli::{DeviceArgs, InferArgs, LoadArgs, LogArgs};

/// Run MultiR-Net over chest-CT cohorts: phantoms, inspection, preprocessing.
#[derive(Debug, Parser)]
#[command(name = "multir", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write synthetic chest-CT phantoms, their lesion masks and a manifest.
    Synth(SynthArgs),
    /// Describe a NIfTI or NRRD file or a DICOM series folder.
    Inspect(InspectArgs),
    /// Resample a scan to a new voxel spacing (and optionally save it).
    Resample(ResampleArgs),
    /// Compare a predicted mask with the ground truth: Dice, surface
    /// distances, Hausdorff, surface Dice (DeepMind surface-distance values).
    Metrics(MetricsArgs),
    /// Train MultiR-Net on a manifest of scans with labels and lesion masks.
    // Boxed: its many options would make every other variant as large.
    Train(Box<TrainArgs>),
    /// Segment and classify scans; writes masks (and optionally probability
    /// maps and Grad-CAM heat maps) as NIfTI.
    Predict(PredictArgs),
    /// Run a cohort through the model: Parquet tables of scans and lesions,
    /// masks, cohort statistics and a report (one row per scan; a bad scan
    /// is an error row). Reruns resume.
    #[command(alias = "evaluate")]
    Run(RunArgs),
    /// Rebuild cohort.json and report.html from a run's Parquet tables.
    Report(ReportArgs),
    /// Copy a checkpoint without its training state (Adam moments, schedule):
    /// a resumable last.safetensors becomes a model file to ship or share.
    Export(ExportArgs),
    /// Copy a local folder (a cohort) into S3, keeping relative paths.
    Upload(UploadArgs),
    /// Publish a cohort's jobs to RabbitMQ for `multir-worker`s (a
    /// distributed run; resubmitting resumes).
    Submit(Box<SubmitArgs>),
    /// Where a distributed run stands: done, failed, in flight, queued,
    /// dead-lettered, ETA.
    Status(Box<StatusArgs>),
    /// A distributed run's results as the tables `run` writes (one row per
    /// scan), on disk or in S3; `--wait` follows the run to its end.
    Collect(Box<CollectArgs>),
    /// Measure the network's window throughput (benchmarks).
    #[command(hide = true)]
    BenchModel(BenchModelArgs),
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The checkpoint to copy (any .safetensors that `multir train` wrote).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Where to write the model-only checkpoint.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Output folder (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of scans.
    #[arg(long, default_value_t = 12)]
    pub scans: usize,
    /// Seed: the same seed gives bit-identical scans.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Scale voxel counts of the standard phantom (e.g. 0.5 for small, fast
    /// scans in tests; 2.0 for large ones in benchmarks).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A .nii / .nii.gz / .nrrd / .nhdr file or a folder holding one DICOM
    /// series.
    pub path: PathBuf,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, clap::Args)]
pub struct ResampleArgs {
    /// Input scan (NIfTI or NRRD file, or DICOM folder).
    pub input: PathBuf,
    /// Target spacing in mm along the file's i,j,k axes, e.g. 0.8,0.8,1.5.
    #[arg(long, value_parser = multir_common::cli::parse_triple)]
    pub spacing: [f64; 3],
    /// Nearest-neighbour (for label masks) instead of trilinear.
    #[arg(long)]
    pub nearest: bool,
    /// Where to write the result (.nii or .nii.gz, float32).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print timings and the output grid as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    /// The predicted mask (voxels > 0.5 are inside).
    #[arg(long)]
    pub pred: PathBuf,
    /// The ground-truth mask, on the same grid as the prediction.
    #[arg(long)]
    pub truth: PathBuf,
    /// Distance (mm) within which surfaces count as touching, for surface
    /// Dice and surface overlap.
    #[arg(long, default_value_t = 1.0, value_parser = multir_common::cli::parse_non_negative_mm)]
    pub tolerance_mm: f64,
    /// Print one JSON object (metrics, null where undefined, and timings).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Manifest (scan_id,image,label,mask) as `multir synth` writes it.
    #[arg(long)]
    pub manifest: PathBuf,
    /// Output folder: best.safetensors, last.safetensors, history.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Architecture: a preset (small, paper, tiny) or a JSON file.
    #[arg(long, default_value = "small")]
    pub model: String,
    /// Model-grid voxel spacing in mm (i,j,k), saved with the checkpoint
    /// (default: 0.8,0.8,1.5 for `paper`, 1.6,1.6,2.5 for the other presets).
    #[arg(long, value_parser = multir_common::cli::parse_triple)]
    pub spacing: Option<[f64; 3]>,
    /// Let the model see the whole scan instead of the lung region only
    /// (README "Lesions belong to the lungs"). The choice is saved with the
    /// checkpoint.
    #[arg(long)]
    pub no_lung_region: bool,
    /// Refinement iterations (overrides the preset).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Window size i,j,k in voxels (overrides the preset).
    #[arg(long, value_parser = multir_common::cli::parse_triple)]
    pub patch: Option<[f64; 3]>,
    /// Fraction of patches centred on a lesion.
    #[arg(long, default_value_t = 0.5)]
    pub lesion_fraction: f64,
    /// Intensity augmentation: scale in 1 +- jitter and shift in +- jitter / 2
    /// of the 0..1 lung window (0.1 shifts by up to 75 HU; CT numbers are
    /// calibrated, so smaller values keep consolidation apart from soft tissue).
    #[arg(long, default_value_t = 0.1)]
    pub jitter: f64,
    /// Train against each model voxel's lesion occupancy (0..1) instead of
    /// the mask thresholded at half occupancy, so probabilities can place
    /// the boundary inside a coarse model voxel (pair it with --bce).
    #[arg(long)]
    pub soft_masks: bool,
    /// Most optimizer steps.
    #[arg(long, default_value_t = 4000)]
    pub steps: u64,
    /// Steps between validations.
    #[arg(long, default_value_t = 100)]
    pub eval_every: u64,
    /// Patches per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Initial learning rate.
    #[arg(long, default_value_t = 3e-4)]
    pub lr: f64,
    /// Segmentation loss: focal-tversky, tversky or dice.
    #[arg(long, default_value = "focal-tversky")]
    pub loss: multir_common::model::loss::SegLoss,
    /// Weight of the classification loss (lambda of eq. 9).
    #[arg(long, default_value_t = 0.3)]
    pub lambda: f64,
    /// Tversky alpha (weight of false negatives).
    #[arg(long, default_value_t = 0.7)]
    pub alpha: f64,
    /// Tversky beta (weight of false positives).
    #[arg(long, default_value_t = 0.3)]
    pub beta: f64,
    /// Focal Tversky exponent.
    #[arg(long, default_value_t = 0.75)]
    pub gamma: f64,
    /// Weight of a voxel-wise binary cross-entropy added to the segmentation
    /// loss (not in the paper; 0 = off). It calibrates boundary voxels.
    #[arg(long, default_value_t = 0.0)]
    pub bce: f64,
    /// Folds of the train/validation split (4 = the paper's 4-fold CV).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// The fold held out for validation.
    #[arg(long, default_value_t = 0)]
    pub fold: usize,
    /// Validations without improvement before the learning rate halves.
    #[arg(long, default_value_t = 4)]
    pub patience: u32,
    /// Validations without improvement before stopping.
    #[arg(long, default_value_t = 10)]
    pub early_stop: u32,
    /// Stop after this many minutes; the step reached is validated and saved
    /// to last.safetensors, so --resume continues from it.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Seed of initialisation, split and sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue from a run's last.safetensors.
    #[arg(long, conflicts_with = "init")]
    pub resume: Option<PathBuf>,
    /// Fine-tune: start from the weights of this checkpoint (same model and
    /// spacing), with a fresh optimizer and schedule.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long, env = "MULTIR_THREADS")]
    pub threads: Option<i32>,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// Scans: NIfTI or NRRD files or DICOM series folders.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output folder for <name>_mask.nii.gz and friends.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the lesion probability map (float32).
    #[arg(long)]
    pub probabilities: bool,
    /// Also write a Grad-CAM heat map of the predicted class (paper Fig. 11).
    #[arg(long)]
    pub gradcam: bool,
    #[command(flatten)]
    pub infer: InferArgs,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Manifest (CSV, or Parquet with the same columns): scan_id, image, and
    /// optionally label and mask.
    #[arg(long)]
    pub manifest: PathBuf,
    /// Output folder: scans.parquet, lesions.parquet, cohort.json,
    /// report.html, masks/, fragments/. It may not hold any input.
    #[arg(long)]
    pub out: PathBuf,
    /// Redo every scan, even those an earlier run into OUT finished with the
    /// same inputs, model and settings.
    #[arg(long)]
    pub force: bool,
    /// Also write each lesion probability map (masks/<scan_id>_prob.nii.gz).
    #[arg(long)]
    pub probabilities: bool,
    /// Surface Dice / overlap tolerance in mm.
    #[arg(long, default_value_t = 1.0, value_parser = multir_common::cli::parse_non_negative_mm)]
    pub tolerance_mm: f64,
    /// Exit with status 3 when the accuracy is below this.
    #[arg(long, value_parser = multir_common::cli::parse_quality_bar)]
    pub min_accuracy: Option<f64>,
    /// Exit with status 3 when the mean Dice of scans with lesions is below this.
    #[arg(long, value_parser = multir_common::cli::parse_quality_bar)]
    pub min_dice: Option<f64>,
    /// Do not write report.html.
    #[arg(long)]
    pub no_report: bool,
    /// Scans read and decoded ahead of the network (memory: each holds its
    /// volumes).
    #[arg(long, env = "MULTIR_READ_AHEAD", default_value_t = 2)]
    pub read_ahead: usize,
    /// Threads that read, decode and resample scans for the network
    /// (default: one per four CPUs, 1 to 4). A GPU needs several.
    #[arg(long, env = "MULTIR_READERS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub readers: Option<u16>,
    /// Threads that quantify scans after the network (default as
    /// `--readers`).
    #[arg(long, env = "MULTIR_FINISHERS", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub finishers: Option<u16>,
    #[command(flatten)]
    pub infer: InferArgs,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A run's output folder (or a folder of collected results) holding
    /// scans.parquet and lesions.parquet.
    #[arg(long)]
    pub results: PathBuf,
    /// The cohort's manifest, for the CT slices of the report's overlays
    /// (without it the report has no overlays).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct BenchModelArgs {
    /// Architecture preset: small, paper or tiny; or shipped (the
    /// configuration of the compiled-in model, its window size included).
    #[arg(long, default_value = "small")]
    pub model: String,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Window size i,j,k (default: the preset's).
    #[arg(long, value_parser = multir_common::cli::parse_triple)]
    pub patch: Option<[f64; 3]>,
    /// Refinement iterations (default: the preset's).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Timed forward passes (after two warm-up passes).
    #[arg(long, default_value_t = 5)]
    pub passes: usize,
    /// fp16 autocast (CUDA only).
    #[arg(long)]
    pub mixed_precision: bool,
    /// Also time a training step (forward, backward, Adam) per pass.
    #[arg(long)]
    pub train_step: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The run and where its queues and objects are (shared by `submit`,
/// `status` and `collect`).
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// The run's name (letters, digits, `-`, `_`, `.`): it names the queues
    /// (`<prefix>.<run>.jobs`) and the results (`<results>/runs/<run>/`).
    #[arg(long, env = "MULTIR_RUN")]
    pub run: String,
    /// Where runs keep their results: `s3://bucket/prefix`.
    #[arg(long, env = "MULTIR_RESULTS")]
    pub results: String,
    #[command(flatten)]
    pub broker: multir_worker::broker::BrokerArgs,
    #[command(flatten)]
    pub store: multir_worker::store::StoreArgs,
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The cohort's manifest (CSV): a local file or `s3://bucket/key`.
    /// Images and masks are `s3://` URLs or paths relative to the
    /// manifest's S3 folder (or to `--base`).
    #[arg(long)]
    pub manifest: String,
    /// Where relative paths of the manifest start (`s3://bucket/prefix/`);
    /// default: the manifest's folder when it is in S3.
    #[arg(long, env = "MULTIR_BASE")]
    pub base: Option<String>,
    /// Unconfirmed publishes at most.
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// Publish attempts per job (a nack or a lost confirm is retried).
    #[arg(long = "attempts", default_value_t = 10)]
    pub publish_attempts: u32,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of a line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, clap::Args)]
pub struct CollectArgs {
    /// Where the tables go: a folder, or `s3://bucket/prefix`.
    #[arg(long)]
    pub out: String,
    /// Follow the run until every scan is finished or dead-lettered.
    #[arg(long)]
    pub wait: bool,
    /// Seconds between looks at the run while waiting.
    #[arg(long, default_value_t = 5.0)]
    pub poll: f64,
    /// Do not write report.html.
    #[arg(long)]
    pub no_report: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// The local folder.
    #[arg(long)]
    pub from: PathBuf,
    /// The destination prefix, `s3://bucket/prefix`.
    #[arg(long)]
    pub to: String,
    /// Create the bucket when it does not exist (local S3 servers).
    #[arg(long)]
    pub create_bucket: bool,
    #[command(flatten)]
    pub store: multir_worker::store::StoreArgs,
}
