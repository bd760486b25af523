//! The pure core of multir: everything between a file on disk and a result
//! row, with no broker, object store or async runtime in sight.
//!
//! Data flows through the modules in this order:
//!
//! - [`manifest`]: a cohort's list of scans (`scan_id,image,label,mask`).
//! - [`io`]: NIfTI and DICOM decoders and writers, giving a [`volume::Volume`].
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
//! - [`synth`]: synthetic chest-CT phantoms with exact ground truth.
//! - `cli`: command-line options shared by the binaries (feature `cli`).
//! - [`device`]: picks CUDA or CPU for libtorch at start-up.
//! - [`error`]: the crate's one error type.

#[cfg(feature = "cli")]
pub mod cli;
pub mod device;
pub mod error;
pub mod io;
pub mod labeling;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod quantify;
pub mod synth;
pub mod volume;

pub use error::{Error, Result};
pub use volume::{Affine, Volume};
