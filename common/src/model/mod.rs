//! MultiR-Net: the network, its losses, training and whole-scan inference.
//!
//! - [`config`]: the architecture's hyper-parameters ([`ModelConfig`]),
//!   with the paper's, the shipped and a test-sized preset.
//! - [`net`]: [`MultiRNet`], built on a caller's `nn::Path`; the network
//!   never loads files.
//! - [`loss`]: Dice, Tversky, Focal Tversky, cross-entropy, eq. 9.
//! - [`checkpoint`]: safetensors with the config, preprocessing, class
//!   names and a training-data fingerprint in the header.
//! - [`data`]: scans on the model grid, patch sampling, augmentation,
//!   folds, fingerprints.
//! - [`optim`]: Adam and reduce-on-plateau with saveable state.
//! - [`train`]: the training loop.
//! - [`infer`]: sliding-window inference on whole scans, Grad-CAM.
//! - [`shipped`]: the trained checkpoint compiled into the binaries.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod infer;
pub mod loss;
pub mod net;
pub mod optim;
pub mod shipped;
pub mod train;

pub use checkpoint::{Checkpoint, CheckpointMeta};
pub use config::{Fusion, ModelConfig};
pub use infer::{GridPrediction, InferenceConfig, Prediction, Predictor, Stitch};
pub use net::MultiRNet;
pub use train::{Start, TrainConfig, TrainEvent, train};
