//! Preprocessing (the paper's Algorithm 2, made explicit).
//!
//! - [`lung`]: classical lung mask, left/right split.
//! - [`morphology`]: in-plane disc dilation, erosion, closing, hole filling.

pub mod lung;
pub mod morphology;
