//! Losses of paper section 3.3: Dice (eq. 5), Tversky (eq. 6), Focal
//! Tversky (eq. 7), cross-entropy (eq. 8) and their combination (eq. 9).
//!
//! Segmentation losses sum over every voxel of the batch (the paper's N),
//! so a batch holding lesion-free patches is still well defined.

use crate::error::{Error, Result};
use tch::{Kind, Reduction, Tensor};

/// Which segmentation loss to train with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegLoss {
    /// 1 - Dice.
    Dice,
    /// 1 - Tversky index.
    Tversky,
    /// (1 - Tversky index)^gamma.
    FocalTversky,
}

impl std::str::FromStr for SegLoss {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dice" => Ok(SegLoss::Dice),
            "tversky" => Ok(SegLoss::Tversky),
            "focal-tversky" | "focal_tversky" => Ok(SegLoss::FocalTversky),
            other => Err(Error::InvalidArgument(format!(
                "segmentation loss {other:?}: expected dice, tversky or focal-tversky"
            ))),
        }
    }
}

/// Loss hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossConfig {
    /// The segmentation term.
    pub seg: SegLoss,
    /// Tversky weight of false negatives (paper: 0.7).
    pub alpha: f64,
    /// Tversky weight of false positives (paper: 0.3).
    pub beta: f64,
    /// Focal exponent: the loss is (1 - TI)^gamma. 0.75 is Abraham and
    /// Khan's recommended 1/gamma with gamma = 4/3, which emphasises hard
    /// patches (TI small) over nearly solved ones.
    pub gamma: f64,
    /// Weight of the classification term, lambda of eq. 9; 0 trains the
    /// segmentation subnet alone, 1 the classification alone.
    pub lambda: f64,
    /// Smoothing constant of the Dice and Tversky ratios.
    pub smooth: f64,
    /// Weight of a voxel-wise binary cross-entropy added to the
    /// segmentation term (not in the paper; 0 leaves it out). Dice-type
    /// ratios push every voxel towards 0 or 1; the cross-entropy is minimal
    /// where the probability equals the target, so against soft (occupancy)
    /// masks it teaches calibrated boundary voxels.
    #[serde(default)]
    pub bce: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            seg: SegLoss::FocalTversky,
            alpha: 0.7,
            beta: 0.3,
            gamma: 0.75,
            lambda: 0.3,
            smooth: 1.0,
            bce: 0.0,
        }
    }
}

impl LossConfig {
    /// Refuses values outside the ranges the formulas make sense for.
    pub fn validate(&self) -> Result<()> {
        let ok = (0.0..=1.0).contains(&self.lambda)
            && self.alpha >= 0.0
            && self.beta >= 0.0
            && self.alpha + self.beta > 0.0
            && self.gamma > 0.0
            && self.gamma <= 3.0
            && self.smooth >= 0.0
            && (0.0..=10.0).contains(&self.bce);
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "loss settings {self:?}: need lambda in [0, 1], alpha, beta >= 0 (not both 0), 0 < gamma <= 3, smooth >= 0, bce in [0, 10]"
            )))
        }
    }
}

/// Dice loss (eq. 5) of probabilities `p` against a 0/1 target `g`.
pub fn dice_loss(p: &Tensor, g: &Tensor, smooth: f64) -> Result<Tensor> {
    let inter = p.f_mul(g)?.f_sum(Kind::Float)?;
    let denom = p.f_sum(Kind::Float)?.f_add(&g.f_sum(Kind::Float)?)?;
    let dice = inter
        .f_mul_scalar(2.0)?
        .f_add_scalar(smooth)?
        .f_div(&denom.f_add_scalar(smooth)?)?;
    Ok(dice.f_neg()?.f_add_scalar(1.0)?)
}

/// Tversky index (eq. 6): (TP + s) / (TP + alpha FN + beta FP + s).
pub fn tversky_index(p: &Tensor, g: &Tensor, alpha: f64, beta: f64, smooth: f64) -> Result<Tensor> {
    let tp = p.f_mul(g)?.f_sum(Kind::Float)?;
    let fn_ = p.f_neg()?.f_add_scalar(1.0)?.f_mul(g)?.f_sum(Kind::Float)?;
    let fp = p
        .f_mul(&g.f_neg()?.f_add_scalar(1.0)?)?
        .f_sum(Kind::Float)?;
    let num = tp.f_add_scalar(smooth)?;
    let den = tp
        .f_add(&fn_.f_mul_scalar(alpha)?)?
        .f_add(&fp.f_mul_scalar(beta)?)?
        .f_add_scalar(smooth)?;
    Ok(num.f_div(&den)?)
}

/// Segmentation loss of probabilities against the target, as configured.
pub fn segmentation_loss(p: &Tensor, g: &Tensor, cfg: &LossConfig) -> Result<Tensor> {
    match cfg.seg {
        SegLoss::Dice => dice_loss(p, g, cfg.smooth),
        SegLoss::Tversky => Ok(tversky_index(p, g, cfg.alpha, cfg.beta, cfg.smooth)?
            .f_neg()?
            .f_add_scalar(1.0)?),
        SegLoss::FocalTversky => {
            let one_minus = tversky_index(p, g, cfg.alpha, cfg.beta, cfg.smooth)?
                .f_neg()?
                .f_add_scalar(1.0)?
                // Rounding can push 1 - TI a hair below zero; pow of a
                // negative base with a fractional exponent would be NaN.
                .f_clamp_min(0.0)?;
            Ok(one_minus.f_pow_tensor_scalar(cfg.gamma)?)
        }
    }
}

/// Cross-entropy (eq. 8) of `logits` (`N x C`) against class indices
/// `labels` (`N`, int64), each sample weighted by `weights` (`N`, 0 or 1);
/// the weighted mean, or 0 when every weight is 0.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let per = logits.f_cross_entropy_loss::<Tensor>(labels, None, Reduction::None, -100, 0.0)?;
    let total = per.f_mul(weights)?.f_sum(Kind::Float)?;
    let n = weights.f_sum(Kind::Float)?.f_clamp_min(1.0)?;
    Ok(total.f_div(&n)?)
}

/// The parts of eq. 9 for one batch.
#[derive(Debug)]
pub struct LossParts {
    /// lambda * cls + (1 - lambda) * seg, to back-propagate.
    pub total: Tensor,
    /// The segmentation term alone.
    pub seg: Tensor,
    /// The classification term alone.
    pub cls: Tensor,
}

/// Mean voxel-wise binary cross-entropy of segmentation logits against a
/// (possibly soft) target, computed from the logits for stability.
pub fn voxel_bce(logits: &Tensor, g: &Tensor) -> Result<Tensor> {
    Ok(logits.f_binary_cross_entropy_with_logits::<Tensor>(g, None, None, Reduction::Mean)?)
}

/// Eq. 9 from segmentation logits and class logits; the segmentation term
/// includes `bce` times [`voxel_bce`] when that weight is positive.
pub fn multitask_loss(
    seg_logits: &Tensor,
    target: &Tensor,
    class_logits: &Tensor,
    labels: &Tensor,
    cls_weights: &Tensor,
    cfg: &LossConfig,
) -> Result<LossParts> {
    let p = seg_logits.f_sigmoid()?;
    let mut seg = segmentation_loss(&p, target, cfg)?;
    if cfg.bce > 0.0 {
        seg = seg.f_add(&voxel_bce(seg_logits, target)?.f_mul_scalar(cfg.bce)?)?;
    }
    let cls = cross_entropy(class_logits, labels, cls_weights)?;
    let total = cls
        .f_mul_scalar(cfg.lambda)?
        .f_add(&seg.f_mul_scalar(1.0 - cfg.lambda)?)?;
    Ok(LossParts { total, seg, cls })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn val(x: &Tensor) -> f64 {
        x.double_value(&[])
    }

    // p = [0.9, 0.2, 0.6, 0.1], g = [1, 1, 0, 0]:
    // TP = 0.9 + 0.2 = 1.1, FN = 0.1 + 0.8 = 0.9, FP = 0.6 + 0.1 = 0.7,
    // sum p = 1.8, sum g = 2.
    const P: [f32; 4] = [0.9, 0.2, 0.6, 0.1];
    const G: [f32; 4] = [1.0, 1.0, 0.0, 0.0];

    #[test]
    fn dice_loss_matches_hand_computation() {
        let l = val(&dice_loss(&t(&P), &t(&G), 0.0).unwrap());
        assert!((l - (1.0 - 2.2 / 3.8)).abs() < 1e-6, "{l}");
        let l = val(&dice_loss(&t(&P), &t(&G), 1.0).unwrap());
        assert!((l - (1.0 - 3.2 / 4.8)).abs() < 1e-6, "{l}");
        // Empty prediction and truth: no loss with smoothing.
        let z = t(&[0.0; 4]);
        assert!(val(&dice_loss(&z, &z, 1.0).unwrap()).abs() < 1e-7);
    }

    #[test]
    fn tversky_and_focal_tversky_match_hand_computation() {
        let ti = val(&tversky_index(&t(&P), &t(&G), 0.7, 0.3, 0.0).unwrap());
        let want = 1.1 / (1.1 + 0.7 * 0.9 + 0.3 * 0.7);
        assert!((ti - want).abs() < 1e-6, "{ti} vs {want}");
        // alpha = beta = 0.5 is Dice.
        let ti = val(&tversky_index(&t(&P), &t(&G), 0.5, 0.5, 0.0).unwrap());
        assert!((ti - 2.2 / 3.8).abs() < 1e-6);
        let mut cfg = LossConfig {
            smooth: 0.0,
            ..Default::default()
        };
        let ftl = val(&segmentation_loss(&t(&P), &t(&G), &cfg).unwrap());
        assert!((ftl - (1.0 - want).powf(0.75)).abs() < 1e-6, "{ftl}");
        cfg.seg = SegLoss::Tversky;
        let tl = val(&segmentation_loss(&t(&P), &t(&G), &cfg).unwrap());
        assert!((tl - (1.0 - want)).abs() < 1e-6);
        // A perfect prediction gives exactly zero, not NaN.
        cfg.seg = SegLoss::FocalTversky;
        let perfect = val(&segmentation_loss(&t(&G), &t(&G), &cfg).unwrap());
        assert_eq!(perfect, 0.0);
    }

    #[test]
    fn weighted_cross_entropy_matches_hand_computation() {
        let logits = Tensor::from_slice(&[2.0f32, 0.0, 0.0, 0.0, 1.0, 0.0]).reshape([2, 3]);
        let labels = Tensor::from_slice(&[0i64, 2]);
        let ce0 = -(2f64.exp() / (2f64.exp() + 2.0)).ln();
        let ce1 = -(1.0 / (1.0 + 1f64.exp() + 1.0)).ln();
        let both = val(&cross_entropy(&logits, &labels, &t(&[1.0, 1.0])).unwrap());
        assert!((both - (ce0 + ce1) / 2.0).abs() < 1e-6);
        let first = val(&cross_entropy(&logits, &labels, &t(&[1.0, 0.0])).unwrap());
        assert!((first - ce0).abs() < 1e-6);
        let none = val(&cross_entropy(&logits, &labels, &t(&[0.0, 0.0])).unwrap());
        assert_eq!(none, 0.0);
    }

    #[test]
    fn multitask_loss_is_the_lambda_mix() {
        let seg_logits = t(&[2.0, -1.0, 0.5, -2.0]);
        let logits = Tensor::from_slice(&[0.5f32, -0.5, 0.0]).reshape([1, 3]);
        let labels = Tensor::from_slice(&[1i64]);
        let cfg = LossConfig {
            lambda: 0.25,
            ..Default::default()
        };
        let parts =
            multitask_loss(&seg_logits, &t(&G), &logits, &labels, &t(&[1.0]), &cfg).unwrap();
        let want = 0.25 * val(&parts.cls) + 0.75 * val(&parts.seg);
        assert!((val(&parts.total) - want).abs() < 1e-6);
        assert!(val(&parts.cls) > 0.0 && val(&parts.seg) > 0.0);
        assert!(LossConfig { lambda: 1.5, ..cfg }.validate().is_err());
        assert!("focal-tversky".parse::<SegLoss>().is_ok() && "bce".parse::<SegLoss>().is_err());
    }

    #[test]
    fn voxel_bce_matches_hand_computation_and_is_least_at_the_soft_target() {
        // logits 0 and ln 3 (p = 1/2, 3/4) against targets 1/4 and 1.
        let z = t(&[0.0, 3f32.ln()]);
        let g = t(&[0.25, 1.0]);
        let bce = |p: f64, g: f64| -(g * p.ln() + (1.0 - g) * (1.0 - p).ln());
        let want = (bce(0.5, 0.25) + bce(0.75, 1.0)) / 2.0;
        assert!((val(&voxel_bce(&z, &g).unwrap()) - want).abs() < 1e-6);
        // Against a target of 0.3 the loss is smallest at p = 0.3, which
        // Dice-type ratios do not give.
        let at = |p: f64| val(&voxel_bce(&t(&[(p / (1.0 - p)).ln() as f32]), &t(&[0.3])).unwrap());
        assert!(at(0.3) < at(0.25) && at(0.3) < at(0.35));
        // The term enters the segmentation part with its weight.
        let (seg_logits, logits) = (
            t(&[2.0, -1.0, 0.5, -2.0]),
            Tensor::zeros([1, 3], (Kind::Float, tch::Device::Cpu)),
        );
        let (labels, w) = (Tensor::from_slice(&[0i64]), t(&[1.0]));
        let base = LossConfig::default();
        let with = LossConfig { bce: 2.0, ..base };
        let a = multitask_loss(&seg_logits, &t(&G), &logits, &labels, &w, &base).unwrap();
        let b = multitask_loss(&seg_logits, &t(&G), &logits, &labels, &w, &with).unwrap();
        let extra = 2.0 * val(&voxel_bce(&seg_logits, &t(&G)).unwrap());
        assert!((val(&b.seg) - val(&a.seg) - extra).abs() < 1e-6);
        assert!(LossConfig { bce: -1.0, ..base }.validate().is_err());
    }
}
