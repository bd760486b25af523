//! The command-line grammar of `multir`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use multir_common::cli::{LoadArgs, LogArgs};

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
    /// Describe a NIfTI file or a DICOM series folder.
    Inspect(InspectArgs),
    /// Resample a scan to a new voxel spacing (and optionally save it).
    Resample(ResampleArgs),
    /// Compare a predicted mask with the ground truth: Dice, surface
    /// distances, Hausdorff, surface Dice (DeepMind surface-distance values).
    Metrics(MetricsArgs),
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
    /// A .nii / .nii.gz file or a folder holding one DICOM series.
    pub path: PathBuf,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, clap::Args)]
pub struct ResampleArgs {
    /// Input scan (NIfTI file or DICOM folder).
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
    #[arg(long, default_value_t = 1.0)]
    pub tolerance_mm: f64,
    /// Print one JSON object (metrics, null where undefined, and timings).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub load: LoadArgs,
}
