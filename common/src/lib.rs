//! The pure core of multir: everything between a file on disk and a result
//! row, with no broker, object store or async runtime in sight.
//!
//! Data flows through the modules in this order:
//!
//! - [`manifest`]: a cohort's list of scans (`scan_id,image,label,mask`).
//! - [`job`]: one scan to process, as drivers and queues pass it on.
//! - [`io`]: NIfTI, NRRD and DICOM decoders and NIfTI writers, giving a
//!   [`volume::Volume`].
//! - [`volume`]: the canonical in-memory volume, affines and reorientation.
//! - [`preprocess`]: resampling, HU windowing, patches, the lung mask.
//! - [`model`]: MultiR-Net in tch: network, losses, checkpoints, training
//!   and sliding-window inference on whole scans.
//! - [`labeling`]: connected components of masks.
//! - [`quantify`]: per-scan lesion table (volumes, centroids, HU), lung
//!   involvement and a zonal severity score.
//! - [`metrics`]: Dice, surface distances, Hausdorff and surface Dice of a
//!   predicted mask against the truth (DeepMind `surface-distance` numbers),
//!   and cohort classification and agreement statistics.
//! - [`process`]: the per-scan processor every driver runs: job in, result
//!   row, lesion rows and mask out, or an error row.
//! - [`results`]: the result rows, the cohort summary, the sink seam and
//!   the output folder with its per-scan fragments.
//! - [`runner`]: the embedded cohort driver (a pipeline of threads).
//! - [`synth`]: synthetic chest-CT phantoms with exact ground truth.
//! - `cli`: command-line options shared by the binaries (feature `cli`).
//! - [`device`]: picks CUDA or CPU for libtorch at start-up.
//! - [`error`]: the crate's one error type.

#[cfg(feature = "cli")]
pub mod cli;
pub mod device;
pub mod error;
pub mod io;
pub mod job;
pub mod labeling;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod process;
pub mod quantify;
pub mod results;
pub mod runner;
pub mod synth;
pub mod volume;

pub use error::{Error, Fault, Result};
pub use volume::{Affine, Volume};
