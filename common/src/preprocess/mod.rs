//! Preprocessing (the paper's Algorithm 2, made explicit).
//!
//! - [`lung`]: classical lung mask, left/right split.

pub mod lung;
