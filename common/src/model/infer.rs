//! Whole-scan inference: canonical orientation, resampling, sliding windows
//! with Gaussian-weighted blending, optional mirroring test-time
//! augmentation, scan-level class probabilities, Grad-CAM, and the maps
//! brought back to the file's own grid.
//!
//! Windows are cut from a tensor and blended into accumulators on the
//! "stitch device": the GPU when the scan fits there, the host otherwise,
//! so memory stays bounded whatever the scan size. Nothing returns to the
//! host between windows on the GPU path.

use super::checkpoint::{Checkpoint, CheckpointMeta};
use super::net::MultiRNet;
use crate::error::{Error, Result};
use crate::manifest::Label;
use crate::preprocess::{self, Interp, patch};
use crate::volume::Volume;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor, nn};

/// Where the blended probability map is accumulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stitch {
    /// On the compute device when the accumulators take at most
    /// [`InferenceConfig::device_stitch_bytes`], else on the host.
    #[default]
    Auto,
    /// Always on the compute device.
    Device,
    /// Always on the host.
    Host,
}

impl std::str::FromStr for Stitch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Stitch::Auto),
            "device" => Ok(Stitch::Device),
            "host" => Ok(Stitch::Host),
            o => Err(Error::InvalidArgument(format!(
                "stitch {o:?}: expected auto, device or host"
            ))),
        }
    }
}

/// Inference settings (the model's own settings come from its checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InferenceConfig {
    /// Fractional overlap of neighbouring windows, in [0, 1).
    pub overlap: f64,
    /// Windows per forward pass.
    pub batch: usize,
    /// Average over the 8 mirrorings of each window.
    pub tta: bool,
    /// fp16 autocast on CUDA (ignored on the CPU).
    pub mixed_precision: bool,
    /// Where to blend.
    pub stitch: Stitch,
    /// Largest accumulator size blended on the device under [`Stitch::Auto`].
    pub device_stitch_bytes: u64,
    /// Probability at or above which a voxel is lesion.
    pub threshold: f32,
    /// Largest model-grid volume (voxels) accepted; checked before resampling.
    pub max_model_voxels: u64,
    /// Compute a Grad-CAM heat map of the predicted class.
    pub gradcam: bool,
    /// Weight every window gets in the class average on top of its
    /// predicted lesion content (voxels): windows showing lesions decide the
    /// diagnosis, and a scan without lesions is the plain mean.
    pub window_weight_floor: f64,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            overlap: 0.25,
            batch: 4,
            tta: false,
            mixed_precision: false,
            stitch: Stitch::Auto,
            device_stitch_bytes: 4 << 30,
            threshold: 0.5,
            max_model_voxels: 1 << 28,
            gradcam: false,
            window_weight_floor: 10.0,
        }
    }
}

impl InferenceConfig {
    /// Refuses meaningless settings.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..0.95).contains(&self.overlap) {
            return Err(Error::InvalidArgument(format!(
                "overlap {} outside [0, 0.95)",
                self.overlap
            )));
        }
        if !(1..=1024).contains(&self.batch) {
            return Err(Error::InvalidArgument(format!(
                "batch {} outside 1..=1024",
                self.batch
            )));
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return Err(Error::InvalidArgument(format!(
                "threshold {} outside (0, 1)",
                self.threshold
            )));
        }
        if self.window_weight_floor.is_nan() || self.window_weight_floor <= 0.0 {
            return Err(Error::InvalidArgument(
                "window_weight_floor must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// The result for one scan, on the scan's own grid.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Lesion probability, 0..1.
    pub probability: Volume,
    /// Lesion mask, 0/1.
    pub mask: Volume,
    /// Scan-level class probabilities (sum to 1), class index order.
    pub class_probabilities: Vec<f64>,
    /// The most probable class.
    pub class_index: usize,
    /// Grad-CAM of the predicted class, 0..1, if requested.
    pub gradcam: Option<Volume>,
    /// Windows run (per mirroring).
    pub windows: usize,
    /// Size of the model grid.
    pub model_dims: [usize; 3],
}

impl Prediction {
    /// The predicted class as a label, when the network has the three
    /// standard classes.
    pub fn label(&self) -> Option<Label> {
        Label::from_index(self.class_index)
    }
}

/// The network's answer on the model grid, before its maps go back to the
/// scan's grid: what [`Predictor::predict_on_grid`] (the stage that needs
/// the device) hands to [`GridPrediction::restore`] (CPU only, so a driver
/// runs it on another thread and the device never waits for it).
#[derive(Debug, Clone)]
pub struct GridPrediction {
    /// Lesion probability on the model grid, 0..1 (all finite).
    pub probability: Volume,
    /// Grad-CAM of the predicted class on the model grid, 0..1, if asked.
    pub gradcam: Option<Volume>,
    /// Scan-level class probabilities (sum to 1), class index order.
    pub class_probabilities: Vec<f64>,
    /// The most probable class.
    pub class_index: usize,
    /// Windows run (per mirroring).
    pub windows: usize,
}

impl GridPrediction {
    /// The maps on the scan's own grid ([`preprocess::Prepared::restore`],
    /// linear) and the lesion mask thresholded there at `cfg.threshold`.
    pub fn restore(
        self,
        prepared: &preprocess::Prepared,
        cfg: &InferenceConfig,
    ) -> Result<Prediction> {
        let model_dims = self.probability.dims();
        let probability = prepared.restore(&self.probability, Interp::Linear)?;
        let mask = probability.with_data(
            probability
                .data()
                .par_iter()
                .map(|&p| f32::from(p >= cfg.threshold))
                .collect(),
        )?;
        let gradcam = match self.gradcam {
            Some(cam) => Some(prepared.restore(&cam, Interp::Linear)?),
            None => None,
        };
        Ok(Prediction {
            probability,
            mask,
            class_probabilities: self.class_probabilities,
            class_index: self.class_index,
            gradcam,
            windows: self.windows,
            model_dims,
        })
    }
}

/// A loaded network ready for whole scans.
#[derive(Debug)]
pub struct Predictor {
    // The var store owns the weights the network's tensors point into.
    _vs: nn::VarStore,
    net: MultiRNet,
    meta: CheckpointMeta,
    device: Device,
}

/// The 1-D Gaussian importance profile of one window axis (sigma = size /
/// 8, as nnU-Net), scaled to a maximum of 1 and floored so that border
/// voxels still count.
fn gaussian_1d(n: usize) -> Vec<f32> {
    let sigma = n as f64 / 8.0;
    let c = (n as f64 - 1.0) / 2.0;
    let v: Vec<f64> = (0..n)
        .map(|i| (-(i as f64 - c).powi(2) / (2.0 * sigma * sigma)).exp())
        .collect();
    let max = v.iter().cloned().fold(0.0, f64::max);
    v.iter().map(|x| ((x / max) as f32).max(1e-3)).collect()
}

/// The window's importance map `D x H x W`.
fn gaussian_window(p: [usize; 3], device: Device) -> Result<Tensor> {
    let [gi, gj, gk] = [gaussian_1d(p[0]), gaussian_1d(p[1]), gaussian_1d(p[2])];
    let ti = Tensor::f_from_slice(&gi)?.f_view([1, 1, p[0] as i64])?;
    let tj = Tensor::f_from_slice(&gj)?.f_view([1, p[1] as i64, 1])?;
    let tk = Tensor::f_from_slice(&gk)?.f_view([p[2] as i64, 1, 1])?;
    Ok(tk.f_mul(&tj)?.f_mul(&ti)?.f_to_device(device)?)
}

/// [`Predictor::prepare`] without a network: what a reading thread needs is
/// the checkpoint's metadata alone.
pub fn prepare_for(
    meta: &CheckpointMeta,
    ct: &Volume,
    cfg: &InferenceConfig,
) -> Result<preprocess::Prepared> {
    cfg.validate()?;
    let md = model_dims_for(meta, ct);
    let voxels = md.iter().map(|&d| d as u128).product::<u128>();
    if voxels > cfg.max_model_voxels as u128 {
        return Err(Error::InvalidArgument(format!(
            "the scan would become a {}x{}x{} grid at the model's {:?} mm spacing, more than {} voxels",
            md[0], md[1], md[2], meta.preprocess.spacing_mm, cfg.max_model_voxels
        )));
    }
    preprocess::prepare(ct, &meta.preprocess)
}

/// Model-grid size of a scan under `meta`'s spacing, without touching its
/// voxels.
fn model_dims_for(meta: &CheckpointMeta, ct: &Volume) -> [usize; 3] {
    let sp = ct.spacing();
    let d = ct.dims();
    let mut out = [1usize; 3];
    for (a, (world, _)) in ct.affine().io_orientation().into_iter().enumerate() {
        let n = (d[a] as f64 * sp[a] / meta.preprocess.spacing_mm[world]).round();
        out[world] = if n.is_finite() {
            (n.max(1.0)).min(u32::MAX as f64) as usize
        } else {
            usize::MAX
        };
    }
    out
}

/// Mirrorings used by test-time augmentation (tensor dims of D, H, W).
const MIRRORS: [&[i64]; 8] = [&[], &[4], &[3], &[2], &[3, 4], &[2, 4], &[2, 3], &[2, 3, 4]];

impl Predictor {
    /// Builds the network the checkpoint describes on `device` and loads
    /// its weights.
    pub fn new(ck: &Checkpoint, device: Device) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let net = MultiRNet::new(&vs.root(), &ck.meta.model)?;
        ck.load_into(&mut vs)?;
        vs.freeze();
        Ok(Predictor {
            _vs: vs,
            net,
            meta: ck.meta.clone(),
            device,
        })
    }

    /// The checkpoint's metadata.
    pub fn meta(&self) -> &CheckpointMeta {
        &self.meta
    }

    /// The compute device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The network.
    pub fn net(&self) -> &MultiRNet {
        &self.net
    }

    /// Model-grid size of a scan, without touching its voxels.
    pub fn model_dims(&self, ct: &Volume) -> [usize; 3] {
        model_dims_for(&self.meta, ct)
    }

    /// Segments and classifies one CT (HU, any orientation and spacing):
    /// [`Predictor::prepare`] then [`Predictor::predict_prepared`].
    pub fn predict(&self, ct: &Volume, cfg: &InferenceConfig) -> Result<Prediction> {
        let prepared = self.prepare(ct, cfg)?;
        self.predict_prepared(&prepared, cfg)
    }

    /// Brings a CT onto the model grid (canonical orientation, the
    /// checkpoint's spacing and HU window), refusing grids larger than
    /// `cfg.max_model_voxels` before anything is allocated. It needs no
    /// network, so a driver may run it on another thread while the network
    /// works on the previous scan.
    pub fn prepare(&self, ct: &Volume, cfg: &InferenceConfig) -> Result<preprocess::Prepared> {
        prepare_for(&self.meta, ct, cfg)
    }

    /// Segments and classifies a scan [`Predictor::prepare`] brought onto
    /// the model grid; the maps come back on the scan's own grid
    /// ([`Predictor::predict_on_grid`], then [`GridPrediction::restore`]).
    pub fn predict_prepared(
        &self,
        prepared: &preprocess::Prepared,
        cfg: &InferenceConfig,
    ) -> Result<Prediction> {
        self.predict_on_grid(prepared, cfg)?.restore(prepared, cfg)
    }

    /// The network's part of [`Predictor::predict_prepared`]: sliding
    /// windows, stitching and the diagnosis, with the maps left on the
    /// model grid. A network output that is not finite is an error, never
    /// a confident answer.
    pub fn predict_on_grid(
        &self,
        prepared: &preprocess::Prepared,
        cfg: &InferenceConfig,
    ) -> Result<GridPrediction> {
        cfg.validate()?;
        let dims = prepared.volume.dims();
        let patch = self.meta.model.patch;
        let padded: [usize; 3] = std::array::from_fn(|a| dims[a].max(patch[a]));
        let acc_bytes = 3 * 4 * padded.iter().map(|&d| d as u64).product::<u64>();
        let stitch = match (cfg.stitch, self.device) {
            (_, Device::Cpu) | (Stitch::Host, _) => Device::Cpu,
            (Stitch::Device, d) => d,
            (Stitch::Auto, d) if acc_bytes <= cfg.device_stitch_bytes => d,
            _ => Device::Cpu,
        };
        let shape = |d: [usize; 3]| [1i64, 1, d[2] as i64, d[1] as i64, d[0] as i64];
        // A model-grid volume as a padded 1 x 1 x D x H x W tensor.
        let to_padded = |t: Tensor| -> Result<Tensor> {
            Ok(t.f_view(shape(dims))?
                .f_to_device(stitch)?
                .f_constant_pad_nd([
                    0,
                    (padded[0] - dims[0]) as i64,
                    0,
                    (padded[1] - dims[1]) as i64,
                    0,
                    (padded[2] - dims[2]) as i64,
                ])?)
        };
        let vol = to_padded(Tensor::f_from_slice(prepared.volume.data())?)?;
        let starts = patch::sliding_starts(padded, patch, cfg.overlap)?;
        let g_dev = gaussian_window(patch, self.device)?;
        let g_st = g_dev.f_to_device(stitch)?;
        let acc_p = Tensor::f_zeros(&shape(padded)[2..], (Kind::Float, stitch))?;
        let acc_w = acc_p.f_zeros_like()?;
        let acc_cam = if cfg.gradcam {
            Some(acc_p.f_zeros_like()?)
        } else {
            None
        };
        let classes = self.meta.model.classes as i64;
        let mut cls_acc = Tensor::f_zeros([classes], (Kind::Float, self.device))?;
        let mut weight_sum = Tensor::f_zeros([], (Kind::Float, self.device))?;
        let narrow = |t: &Tensor, s: &[usize; 3], off: i64| -> Result<Tensor> {
            Ok(t.f_narrow(off, s[2] as i64, patch[2] as i64)?
                .f_narrow(off + 1, s[1] as i64, patch[1] as i64)?
                .f_narrow(off + 2, s[0] as i64, patch[0] as i64)?)
        };
        // The lung region (1 inside), padded like the volume. Windows that
        // hold none of it are blank and skipped; they still count in the
        // stitching weights, so their voxels read 0, not 0 / 0.
        let region = match &prepared.region {
            Some(r) => Some(to_padded(
                Tensor::f_from_slice(&r.mask)?.f_to_kind(Kind::Float)?,
            )?),
            None => None,
        };
        let mut active = Vec::with_capacity(starts.len());
        for s in &starts {
            let blank = match &region {
                Some(r) => narrow(r, s, 2)?.f_max()?.double_value(&[]) <= 0.0,
                None => false,
            };
            if blank {
                let _ = narrow(&acc_w, s, 0)?.f_add_(&g_st)?;
            } else {
                active.push(*s);
            }
        }
        for chunk in active.chunks(cfg.batch) {
            let windows = chunk
                .iter()
                .map(|s| narrow(&vol, s, 2))
                .collect::<Result<Vec<_>>>()?;
            let x = Tensor::f_cat(&windows, 0)?.f_to_device(self.device)?;
            let (mut probs, cls) = tch::no_grad(|| self.forward_probs(&x, cfg))?;
            // Each window's share of the lung region: 1 without a region.
            let mut share = Tensor::f_ones([chunk.len() as i64], (Kind::Float, self.device))?;
            if let Some(r) = &region {
                let rw = Tensor::f_cat(
                    &chunk
                        .iter()
                        .map(|s| narrow(r, s, 2))
                        .collect::<Result<Vec<_>>>()?,
                    0,
                )?
                .f_to_device(self.device)?;
                // No lesion outside the lungs, whatever the network says.
                probs = probs.f_mul(&rw)?;
                share = rw.f_mean_dim([1i64, 2, 3, 4].as_slice(), false, Kind::Float)?;
            }
            // Windows showing lesions decide the diagnosis; without lesions,
            // each window weighs by how much lung it shows.
            let w = probs
                .f_sum_dim_intlist([1i64, 2, 3, 4].as_slice(), false, Kind::Float)?
                .f_add(&share.f_mul_scalar(cfg.window_weight_floor)?)?;
            cls_acc = cls_acc.f_add(&cls.f_mul(&w.f_unsqueeze(1)?)?.f_sum_dim_intlist(
                [0i64].as_slice(),
                false,
                Kind::Float,
            )?)?;
            weight_sum = weight_sum.f_add(&w.f_sum(Kind::Float)?)?;
            let weighted = probs.f_squeeze_dim(1)?.f_mul(&g_dev)?.f_to_device(stitch)?;
            let cams = match &acc_cam {
                Some(_) => Some(
                    self.gradcam_windows(&x, &w)?
                        .f_mul(&g_dev)?
                        .f_to_device(stitch)?,
                ),
                None => None,
            };
            for (b, s) in chunk.iter().enumerate() {
                let b = b as i64;
                let _ = narrow(&acc_p, s, 0)?.f_add_(&weighted.f_get(b)?)?;
                let _ = narrow(&acc_w, s, 0)?.f_add_(&g_st)?;
                if let (Some(acc), Some(c)) = (&acc_cam, &cams) {
                    let _ = narrow(acc, s, 0)?.f_add_(&c.f_get(b)?)?;
                }
            }
        }
        let crop = |t: &Tensor| -> Result<Vec<f32>> {
            let t = t
                .f_narrow(0, 0, dims[2] as i64)?
                .f_narrow(1, 0, dims[1] as i64)?
                .f_narrow(2, 0, dims[0] as i64)?
                .f_div(
                    &acc_w
                        .f_narrow(0, 0, dims[2] as i64)?
                        .f_narrow(1, 0, dims[1] as i64)?
                        .f_narrow(2, 0, dims[0] as i64)?,
                )?
                .f_to_device(Device::Cpu)?
                .f_contiguous()?
                .f_flatten(0, -1)?;
            Ok(Vec::<f32>::try_from(t)?)
        };
        let probability = prepared.volume.with_data(crop(&acc_p)?)?;
        let class_probabilities: Vec<f64> =
            Vec::<f32>::try_from(cls_acc.f_div(&weight_sum)?.f_to_device(Device::Cpu)?)?
                .into_iter()
                .map(f64::from)
                .collect();
        // NaN compares false everywhere, so a poisoned network would
        // otherwise yield class 0 and an empty or full mask without a word.
        if let Some(c) = class_probabilities.iter().position(|p| !p.is_finite()) {
            return Err(Error::NonFinite(format!(
                "the network's probability of class {c} is {} for this scan",
                class_probabilities[c]
            )));
        }
        if let Some(v) = probability.data().iter().find(|p| !p.is_finite()) {
            return Err(Error::NonFinite(format!(
                "the network's lesion probability map holds {v} for this scan"
            )));
        }
        let class_index = class_probabilities
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        let gradcam = match &acc_cam {
            Some(acc) => {
                let mut v = crop(acc)?;
                let max = v.iter().cloned().fold(0.0f32, f32::max);
                if max > 0.0 {
                    v.iter_mut().for_each(|x| *x /= max);
                }
                Some(prepared.volume.with_data(v)?)
            }
            None => None,
        };
        Ok(GridPrediction {
            probability,
            gradcam,
            class_probabilities,
            class_index,
            windows: active.len(),
        })
    }

    /// Lesion probabilities `N x 1 x D x H x W` and class probabilities
    /// `N x C` (float32) of a batch of windows, averaged over mirrorings
    /// when TTA is on.
    pub fn forward_probs(&self, x: &Tensor, cfg: &InferenceConfig) -> Result<(Tensor, Tensor)> {
        let mirrors: &[&[i64]] = if cfg.tta { &MIRRORS } else { &MIRRORS[..1] };
        let mut probs: Option<Tensor> = None;
        let mut cls: Option<Tensor> = None;
        for dims in mirrors {
            let xin = if dims.is_empty() {
                x.shallow_clone()
            } else {
                x.f_flip(*dims)?
            };
            let o = tch::autocast(cfg.mixed_precision, || self.net.forward(&xin))?;
            let mut p = o.seg_logits.f_to_kind(Kind::Float)?.f_sigmoid()?;
            if !dims.is_empty() {
                p = p.f_flip(*dims)?;
            }
            let c = o
                .class_logits
                .f_to_kind(Kind::Float)?
                .f_softmax(1, Kind::Float)?;
            probs = Some(match probs {
                Some(acc) => acc.f_add(&p)?,
                None => p,
            });
            cls = Some(match cls {
                Some(acc) => acc.f_add(&c)?,
                None => c,
            });
        }
        let n = mirrors.len() as f64;
        Ok((
            probs.expect("one mirror").f_div_scalar(n)?,
            cls.expect("one mirror").f_div_scalar(n)?,
        ))
    }

    /// Grad-CAM (Selvaraju et al.) of each window's most probable class on
    /// the classification subnet's last module, up-sampled to the window and
    /// scaled by the window's class weight `w`: `N x D x H x W`.
    fn gradcam_windows(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        // The weights are frozen; a leaf input that requires gradients makes
        // autograd record the graph up to the features.
        let x = x.f_detach()?.f_set_requires_grad(true)?;
        let o = tch::with_grad(|| self.net.forward(&x))?;
        let cls = o.class_logits.f_argmax(1, true)?;
        let target = o
            .class_logits
            .f_gather(1, &cls, false)?
            .f_sum(Kind::Float)?;
        let grads = Tensor::f_run_backward(&[&target], &[&o.cls_features], false, false)?;
        let a = grads[0].f_mean_dim([2i64, 3, 4].as_slice(), true, Kind::Float)?;
        let cam = o
            .cls_features
            .f_mul(&a)?
            .f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?
            .f_relu()?;
        let s = x.size();
        let up = cam.f_upsample_trilinear3d([s[2], s[3], s[4]], false, None, None, None)?;
        Ok(up
            .f_squeeze_dim(1)?
            .f_mul(&w.f_view([-1, 1, 1, 1])?)?
            .f_detach()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::checkpoint::CheckpointMeta;
    use crate::model::config::ModelConfig;
    use crate::preprocess::PreprocessConfig;
    use crate::volume::Affine;

    fn predictor(spacing: [f64; 3]) -> Predictor {
        tch::manual_seed(4);
        let cfg = ModelConfig::tiny();
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = MultiRNet::new(&vs.root(), &cfg).unwrap();
        let pre = PreprocessConfig {
            spacing_mm: spacing,
            ..Default::default()
        };
        let meta = CheckpointMeta::new(
            cfg,
            pre,
            vec!["covid".into(), "cap".into(), "healthy".into()],
        );
        Predictor::new(
            &Checkpoint::from_var_store(&vs, meta, &[]).unwrap(),
            Device::Cpu,
        )
        .unwrap()
    }

    fn ct(dims: [usize; 3], affine: Affine) -> Volume {
        let n: usize = dims.iter().product();
        let data = (0..n)
            .map(|i| -1000.0 + ((i * 7919) % 1200) as f32)
            .collect();
        Volume::new(data, dims, affine).unwrap()
    }

    /// The lung region makes the scan outside it invisible: no lesion
    /// there, and neither the map nor the diagnosis changes when it does.
    #[test]
    fn nothing_outside_the_lung_region_is_lesion_or_changes_the_answer() {
        tch::manual_seed(4);
        let cfg = ModelConfig::tiny();
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = MultiRNet::new(&vs.root(), &cfg).unwrap();
        let pre = PreprocessConfig {
            spacing_mm: [3.2, 3.2, 5.0],
            lung_region: Some(crate::preprocess::region::LungRegionConfig::default()),
            ..Default::default()
        };
        let classes = vec!["covid".into(), "cap".into(), "healthy".into()];
        let meta = CheckpointMeta::new(cfg, pre, classes);
        let p = Predictor::new(
            &Checkpoint::from_var_store(&vs, meta, &[]).unwrap(),
            Device::Cpu,
        )
        .unwrap();
        let ph = crate::synth::generate(
            crate::manifest::Label::Cap,
            21,
            &crate::synth::PhantomConfig::scaled(0.5).unwrap(),
        )
        .unwrap();
        // A low threshold, so that the untrained network marks plenty.
        let icfg = InferenceConfig {
            threshold: 0.2,
            ..Default::default()
        };
        let a = p.predict(&ph.image, &icfg).unwrap();
        let prep = p.prepare(&ph.image, &icfg).unwrap();
        let region = prep.region.as_ref().expect("region computed");
        assert!(region.voxels > 0 && (region.voxels as usize) < region.mask.len() / 2);
        // On the model grid nothing outside the region is blank-free.
        assert!(
            prep.volume
                .data()
                .iter()
                .zip(&region.mask)
                .all(|(&v, &m)| m == 1 || v == 0.0)
        );
        let region_native = prep
            .restore(
                &prep
                    .volume
                    .with_data(region.mask.iter().map(|&m| f32::from(m)).collect())
                    .unwrap(),
                Interp::Nearest,
            )
            .unwrap();
        let marked = a.mask.data().iter().filter(|&&m| m > 0.0).count();
        assert!(marked > 0, "the untrained network marks something");
        // The region grown by one model voxel: linear resampling mixes a
        // scan voxel into the model voxels around it, and back.
        let d = a.mask.dims();
        let sp = ph.image.spacing();
        let r: [usize; 3] =
            std::array::from_fn(|x| (pre.spacing_mm[x] / sp[x]).ceil() as usize + 1);
        let mut near = vec![false; a.mask.len()];
        for k in 0..d[2] {
            for j in 0..d[1] {
                for i in 0..d[0] {
                    if region_native.get(i, j, k) == 0.0 {
                        continue;
                    }
                    for kk in k.saturating_sub(r[2])..=(k + r[2]).min(d[2] - 1) {
                        for jj in j.saturating_sub(r[1])..=(j + r[1]).min(d[1] - 1) {
                            let s = a.mask.index(i.saturating_sub(r[0]), jj, kk);
                            let e = a.mask.index((i + r[0]).min(d[0] - 1), jj, kk);
                            near[s..=e].iter_mut().for_each(|v| *v = true);
                        }
                    }
                }
            }
        }
        // Exactly: no lesion voxel outside the region on the scan's grid.
        let exact = prep.region_on_source().unwrap().unwrap();
        for (n, (&m, &r)) in a.mask.data().iter().zip(exact.data()).enumerate() {
            assert!(
                m == 0.0 || r == 1.0,
                "lesion voxel {n} outside the lung region"
            );
            assert!(r == 0.0 || near[n]);
        }
        // Scramble the body away from the region (chest wall, fat, muscle,
        // bone) with fat- and muscle-like values: the answer is bit for bit
        // the same. (Tissue stays tissue, so the body's midline and the
        // lungs the region grows from do not move.)
        let mut scrambled = ph.image.clone();
        let mut changed = 0;
        for (n, v) in scrambled.data_mut().iter_mut().enumerate() {
            if !near[n] && *v > -300.0 {
                *v = -120.0 + ((n * 7919) % 200) as f32;
                changed += 1;
            }
        }
        assert!(changed > 1000);
        let b = p.predict(&scrambled, &icfg).unwrap();
        assert_eq!(a.class_probabilities, b.class_probabilities);
        assert_eq!(a.probability.data(), b.probability.data());
    }

    #[test]
    fn gaussian_is_peaked_symmetric_and_floored() {
        let g = gaussian_1d(16);
        assert_eq!(g.len(), 16);
        assert!((g[7] - g[8]).abs() < 1e-6 && g[7] > 0.99);
        assert!(g[0] >= 1e-3 && g[0] < 0.1);
        assert!(
            g.iter()
                .zip(g.iter().rev())
                .all(|(a, b)| (a - b).abs() < 1e-6)
        );
    }

    #[test]
    fn outputs_cover_the_original_grid_and_class_probabilities_sum_to_one() {
        let p = predictor([1.0, 1.0, 2.0]);
        let mut a = Affine::from_spacing_origin([0.8, 0.8, 2.5], [10.0, -20.0, 30.0]);
        a.0[0][0] = -0.8; // LPS-like
        a.0[1][1] = -0.8;
        let scan = ct([37, 29, 11], a);
        for tta in [false, true] {
            let cfg = InferenceConfig {
                tta,
                overlap: 0.5,
                batch: 3,
                gradcam: true,
                ..Default::default()
            };
            let out = p.predict(&scan, &cfg).unwrap();
            assert_eq!(out.probability.dims(), scan.dims());
            assert_eq!(out.probability.affine(), scan.affine());
            assert_eq!(out.mask.affine(), scan.affine());
            let s: f64 = out.class_probabilities.iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "class probabilities sum to {s}");
            assert!(
                out.probability
                    .data()
                    .iter()
                    .all(|v| (0.0..=1.0).contains(v))
            );
            assert!(out.mask.data().iter().all(|&v| v == 0.0 || v == 1.0));
            let cam = out.gradcam.unwrap();
            assert_eq!(cam.dims(), scan.dims());
            assert!(cam.data().iter().all(|v| (0.0..=1.0001).contains(v)));
            assert!(out.windows >= 2);
        }
    }

    #[test]
    fn host_and_device_stitching_agree_and_batching_does_not_matter() {
        let p = predictor([1.0, 1.0, 1.0]);
        let scan = ct(
            [40, 20, 12],
            Affine::from_spacing_origin([1.0, 1.0, 1.0], [0.0; 3]),
        );
        let a = p
            .predict(
                &scan,
                &InferenceConfig {
                    batch: 1,
                    ..Default::default()
                },
            )
            .unwrap();
        let b = p
            .predict(
                &scan,
                &InferenceConfig {
                    batch: 5,
                    stitch: Stitch::Host,
                    ..Default::default()
                },
            )
            .unwrap();
        let diff = a
            .probability
            .data()
            .iter()
            .zip(b.probability.data())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "{diff}");
    }

    /// The same physical scan stored as RAS, as LPS (i and j reversed) and
    /// with permuted axes must give the same map at the same world points:
    /// a flipped or shifted mask would break this.
    #[test]
    fn predictions_follow_the_anatomy_whatever_the_storage_order() {
        let p = predictor([1.0, 1.0, 2.0]);
        let dims = [34, 27, 10];
        let ras = ct(
            dims,
            Affine::from_spacing_origin([1.0, 1.0, 2.0], [-17.0, -13.0, 5.0]),
        );
        let cfg = InferenceConfig {
            overlap: 0.5,
            ..Default::default()
        };
        let want = p.predict(&ras, &cfg).unwrap();
        let at = |v: &Volume, ijk: [usize; 3]| v.get(ijk[0], ijk[1], ijk[2]);
        // LPS: voxel (i, j, k) holds RAS voxel (ni-1-i, nj-1-j, k).
        let mut lps_data = vec![0.0; ras.len()];
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    lps_data[i + dims[0] * (j + dims[1] * k)] =
                        at(&ras, [dims[0] - 1 - i, dims[1] - 1 - j, k]);
                }
            }
        }
        let mut a = *ras.affine();
        let o = ras
            .affine()
            .apply([(dims[0] - 1) as f64, (dims[1] - 1) as f64, 0.0]);
        a.0[0][0] = -1.0;
        a.0[1][1] = -1.0;
        a.0[0][3] = o[0];
        a.0[1][3] = o[1];
        let lps = Volume::new(lps_data, dims, a).unwrap();
        assert_eq!(lps.affine().axcodes(), "LPS");
        let got = p.predict(&lps, &cfg).unwrap();
        // Permuted: stored k, i, j (axcodes SRA).
        let pd = [dims[2], dims[0], dims[1]];
        let mut perm_data = vec![0.0; ras.len()];
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                for k in 0..dims[2] {
                    perm_data[k + pd[0] * (i + pd[1] * j)] = at(&ras, [i, j, k]);
                }
            }
        }
        let mut pa = Affine::identity();
        for r in 0..3 {
            pa.0[r][r] = 0.0;
        }
        pa.0[2][0] = 2.0;
        pa.0[0][1] = 1.0;
        pa.0[1][2] = 1.0;
        for r in 0..3 {
            pa.0[r][3] = ras.affine().0[r][3];
        }
        let perm = Volume::new(perm_data, pd, pa).unwrap();
        assert_eq!(perm.affine().axcodes(), "SRA");
        let got_perm = p.predict(&perm, &cfg).unwrap();
        let mut worst = 0.0f32;
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    let w = at(&want.probability, [i, j, k]);
                    let l = at(&got.probability, [dims[0] - 1 - i, dims[1] - 1 - j, k]);
                    let q = at(&got_perm.probability, [k, i, j]);
                    worst = worst.max((w - l).abs()).max((w - q).abs());
                }
            }
        }
        assert!(worst < 1e-5, "maps differ by {worst}");
        for (x, y) in want
            .class_probabilities
            .iter()
            .zip(&got.class_probabilities)
        {
            assert!((x - y).abs() < 1e-5);
        }
    }

    #[test]
    fn absurd_model_grids_are_refused_before_resampling() {
        let p = predictor([0.01, 0.01, 0.01]);
        // 1000 x 1000 x 500 voxels of 1 mm would become 10^14 model voxels;
        // only the header-level size is used, so a tiny buffer suffices.
        let scan = ct(
            [10, 10, 5],
            Affine::from_spacing_origin([100.0, 100.0, 100.0], [0.0; 3]),
        );
        let e = p
            .predict(&scan, &InferenceConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than"), "{e}");
    }

    #[test]
    fn a_network_that_overflows_is_an_error_not_an_answer() {
        // Finite weights so large that the activations overflow: every
        // check at load passes, the output is NaN.
        tch::manual_seed(5);
        let cfg = ModelConfig::tiny();
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = MultiRNet::new(&vs.root(), &cfg).unwrap();
        tch::no_grad(|| {
            for (_, mut t) in vs.variables() {
                let _ = t.fill_(1e30);
            }
        });
        let meta = CheckpointMeta::new(
            cfg,
            PreprocessConfig {
                spacing_mm: [4.0; 3],
                ..Default::default()
            },
            vec!["covid".into(), "cap".into(), "healthy".into()],
        );
        let p = Predictor::new(
            &Checkpoint::from_var_store(&vs, meta, &[]).unwrap(),
            Device::Cpu,
        )
        .unwrap();
        let scan = ct(
            [24, 20, 12],
            Affine::from_spacing_origin([2.0; 3], [0.0; 3]),
        );
        let e = p.predict(&scan, &InferenceConfig::default()).unwrap_err();
        assert!(matches!(e, Error::NonFinite(_)), "{e}");
    }
}
