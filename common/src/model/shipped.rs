//! The shipped checkpoint, compiled into the binaries so a fresh install
//! segments and classifies without downloading anything. Trained on
//! synthetic phantoms only: see `models/README.md` (the model card).

use super::checkpoint::Checkpoint;
use crate::error::Result;

/// The checkpoint's bytes (safetensors).
pub const BYTES: &[u8] = include_bytes!("../../../models/multir-small.safetensors");

/// The shipped checkpoint, decoded.
pub fn checkpoint() -> Result<Checkpoint> {
    Checkpoint::from_bytes(BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InferenceConfig, Predictor};
    use crate::synth::{self, PhantomConfig};

    #[test]
    fn the_shipped_model_loads_and_runs_on_a_phantom() {
        let ck = checkpoint().unwrap();
        assert_eq!(ck.meta.classes, ["covid", "cap", "healthy"]);
        assert!(
            ck.optimizer_state().unwrap().is_empty(),
            "ship weights only"
        );
        assert!(BYTES.len() < 8 << 20, "the shipped model must stay small");
        let p = Predictor::new(&ck, tch::Device::Cpu).unwrap();
        let ph = synth::generate(
            crate::manifest::Label::Cap,
            5,
            &PhantomConfig::scaled(0.5).unwrap(),
        )
        .unwrap();
        // The whole (half-size) phantom: the shipped model's lung region
        // needs the body's outline to find the lungs, so a block cut from
        // the chest would be refused ("no lungs found").
        let block = &ph.image;
        let out = p.predict(block, &InferenceConfig::default()).unwrap();
        assert!(out.windows >= 1, "{} windows", out.windows);
        assert_eq!(out.mask.dims(), block.dims());
        let s: f64 = out.class_probabilities.iter().sum();
        assert!((s - 1.0).abs() < 1e-5);
    }
}
