//! The architecture's hyper-parameters: one serialisable value that is saved
//! with every checkpoint, so a checkpoint always rebuilds its own network.

use crate::error::{Error, Result};

/// How the decoder's side maps are weighted in the fused mask (eq. 1).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fusion {
    /// The weights alpha_i are trained parameters, initialised to 1/levels.
    Learned,
    /// The weights are fixed hyper-parameters, one per level (full
    /// resolution first).
    Fixed {
        /// alpha_i, full resolution first.
        weights: Vec<f64>,
    },
}

/// Architecture of a MultiR-Net.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Channels of the segmentation subnet at each level, full resolution
    /// first. Each further level halves the resolution: 5 levels reach
    /// 1/16, as in the paper.
    pub widths: Vec<i64>,
    /// Residual convolutions per encoder stage (V-Net uses 1, 2, 3, 3, 3);
    /// the decoder stage of the same level has the same number.
    pub convs: Vec<usize>,
    /// Channels of the classification subnet's six residual modules.
    pub cls_widths: [i64; 6],
    /// Refinement iterations after the first pass (the paper's n: 0, 1
    /// or 2). Every pass sees the volume and the previous fused map.
    pub iterations: usize,
    /// Weights of the multi-scale fusion.
    pub fusion: Fusion,
    /// Reverse attention in the skip connections (off only for ablations).
    pub reverse_attention: bool,
    /// Number of diagnostic classes.
    pub classes: usize,
    /// Window (patch) size along i, j, k in voxels; each must be a multiple
    /// of 2^(levels - 1).
    pub patch: [usize; 3],
    /// Groups of the group normalisation after each convolution (reduced
    /// to the channel count where that is smaller).
    pub norm_groups: i64,
}

impl ModelConfig {
    /// The paper's network: V-Net widths 16-32-64-128-256, 1-2-3-3-3
    /// residual convolutions, 32x96x96 windows, one refinement iteration;
    /// 15.7 M parameters.
    pub fn paper() -> Self {
        ModelConfig {
            widths: vec![16, 32, 64, 128, 256],
            convs: vec![1, 2, 3, 3, 3],
            cls_widths: [16, 32, 64, 128, 128, 256],
            iterations: 1,
            fusion: Fusion::Learned,
            reverse_attention: true,
            classes: 3,
            patch: crate::preprocess::patch::PAPER_PATCH,
            norm_groups: 8,
        }
    }

    /// The paper's architecture at a quarter of the widths (0.73 M
    /// parameters), sized to train on synthetic phantoms on a CPU or in
    /// minutes on a GPU. The shipped model is this network trained with
    /// other windows and grid than this preset's (96x96x16 windows on a
    /// 3.2 x 3.2 x 5 mm grid, no refinement pass): its checkpoint carries
    /// its own configuration, see `models/README.md`.
    pub fn small() -> Self {
        ModelConfig {
            widths: vec![8, 16, 24, 32, 48],
            convs: vec![1, 1, 2, 2, 2],
            cls_widths: [8, 12, 16, 24, 32, 48],
            iterations: 1,
            fusion: Fusion::Learned,
            reverse_attention: true,
            classes: 3,
            patch: crate::preprocess::patch::PAPER_PATCH,
            norm_groups: 4,
        }
    }

    /// A very small network for tests: 3 levels, 16x16x8 windows.
    pub fn tiny() -> Self {
        ModelConfig {
            widths: vec![4, 8, 8],
            convs: vec![1, 1, 1],
            cls_widths: [4, 4, 8, 8, 8, 8],
            iterations: 1,
            fusion: Fusion::Learned,
            reverse_attention: true,
            classes: 3,
            patch: [16, 16, 8],
            norm_groups: 2,
        }
    }

    /// A named preset: `paper`, `small` or `tiny`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "paper" => Ok(Self::paper()),
            "small" => Ok(Self::small()),
            "tiny" => Ok(Self::tiny()),
            other => Err(Error::InvalidArgument(format!(
                "unknown model preset {other:?}: expected paper, small or tiny"
            ))),
        }
    }

    /// Number of resolution levels of the segmentation subnet.
    pub fn levels(&self) -> usize {
        self.widths.len()
    }

    /// Refuses configurations the network cannot be built from, before any
    /// tensor is allocated.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("model config: {m}")));
        let l = self.levels();
        if !(2..=7).contains(&l) {
            return bad(format!("{l} levels; expected 2 to 7"));
        }
        if self.convs.len() != l {
            return bad(format!("{} conv counts for {l} levels", self.convs.len()));
        }
        if self
            .widths
            .iter()
            .chain(&self.cls_widths)
            .any(|&w| !(1..=4096).contains(&w))
        {
            return bad("channel widths must be in 1..=4096".into());
        }
        if self.convs.iter().any(|&c| c == 0 || c > 8) {
            return bad("convolutions per stage must be in 1..=8".into());
        }
        if self.iterations > 4 {
            return bad(format!("{} iterations; at most 4", self.iterations));
        }
        if !(2..=64).contains(&self.classes) {
            return bad(format!("{} classes; expected 2 to 64", self.classes));
        }
        if self.norm_groups < 1 {
            return bad("norm_groups must be at least 1".into());
        }
        let unit = 1usize << (l - 1);
        for (a, &p) in self.patch.iter().enumerate() {
            if p == 0 || p % unit != 0 || p > 1024 {
                return bad(format!(
                    "patch {:?}: axis {a} must be a positive multiple of {unit} (2^(levels-1)) up to 1024",
                    self.patch
                ));
            }
        }
        if let Fusion::Fixed { weights } = &self.fusion
            && (weights.len() != l || weights.iter().any(|w| !w.is_finite()))
        {
            return bad(format!(
                "fixed fusion needs {l} finite weights, got {weights:?}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_round_trip_through_json() {
        for name in ["paper", "small", "tiny"] {
            let c = ModelConfig::preset(name).unwrap();
            c.validate().unwrap();
            let back: ModelConfig =
                serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(back, c);
        }
        assert!(ModelConfig::preset("huge").is_err());
    }

    #[test]
    fn invalid_configs_are_refused_with_the_reason() {
        let mut c = ModelConfig::paper();
        c.patch = [96, 96, 24];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("multiple of 16"), "{e}");
        let mut c = ModelConfig::paper();
        c.convs.pop();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("conv counts")
        );
        let mut c = ModelConfig::small();
        c.fusion = Fusion::Fixed { weights: vec![1.0] };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("fixed fusion")
        );
        let json = r#"{"widths":[4,8],"convs":[1,1],"cls_widths":[4,4,4,4,4,4],"iterations":0,
            "fusion":{"kind":"learned"},"reverse_attention":true,"classes":3,"patch":[16,16,16],
            "norm_groups":2,"extra":1}"#;
        assert!(serde_json::from_str::<ModelConfig>(json).is_err());
    }
}
