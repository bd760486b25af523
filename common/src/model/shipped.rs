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
        // A 15 x 15 x 8 cm block from the middle of the chest: one or two
        // windows, so the test stays quick on a CPU.
        let img = &ph.image;
        let sp = img.spacing();
        let n: [usize; 3] =
            std::array::from_fn(|a| ((150.0 - 70.0 * (a / 2) as f64) / sp[a]) as usize);
        let n: [usize; 3] = std::array::from_fn(|a| n[a].min(img.dims()[a]));
        let o: [usize; 3] = std::array::from_fn(|a| (img.dims()[a] - n[a]) / 2);
        let mut data = Vec::with_capacity(n.iter().product());
        for k in 0..n[2] {
            for j in 0..n[1] {
                for i in 0..n[0] {
                    data.push(img.get(o[0] + i, o[1] + j, o[2] + k));
                }
            }
        }
        let mut affine = *img.affine();
        let origin = affine.apply([o[0] as f64, o[1] as f64, o[2] as f64]);
        for r in 0..3 {
            affine.0[r][3] = origin[r];
        }
        let block = crate::Volume::new(data, n, affine).unwrap();
        let out = p.predict(&block, &InferenceConfig::default()).unwrap();
        assert!(out.windows <= 4, "{} windows", out.windows);
        assert_eq!(out.mask.dims(), block.dims());
        let s: f64 = out.class_probabilities.iter().sum();
        assert!((s - 1.0).abs() < 1e-5);
    }
}
