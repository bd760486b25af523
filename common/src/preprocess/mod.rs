//! Preprocessing: the paper's Algorithm 2 ("resampling and normalization"),
//! made explicit, and the way back for predictions.
//!
//! - [`resample`]: trilinear / nearest resampling between axis-aligned grids.
//! - [`intensity`]: HU window clipping and normalisation to 0..1.
//! - [`patch`]: patch extraction with padding, sliding windows.
//! - [`lung`]: classical lung mask, left/right split.
//! - [`region`]: the lung region lesions may lie in, the only part of a
//!   scan the model sees.
//! - [`morphology`]: in-plane disc dilation, erosion, closing, hole filling.
//!
//! [`prepare`] runs the whole chain on a loaded scan: reorient to canonical
//! RAS, resample to the target spacing, window and normalise. It returns a
//! [`Prepared`] that remembers both grids, so [`Prepared::restore`] brings a
//! mask or probability map computed on the model grid back onto the file's
//! own grid and orientation.

pub mod intensity;
pub mod lung;
pub mod morphology;
pub mod patch;
pub mod region;
pub mod resample;

use crate::error::Result;
use crate::volume::{Reorientation, Volume};
pub use intensity::HuWindow;
pub use resample::Interp;

/// Parameters of [`prepare`]; saved with model checkpoints so inference
/// sees the data as training did.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreprocessConfig {
    /// Target voxel spacing in mm along canonical i (R), j (A), k (S).
    pub spacing_mm: [f64; 3],
    /// HU window mapped to 0..1.
    pub window: HuWindow,
    /// When set, the lung region is computed on the model grid and
    /// everything outside it is replaced with 0 (the value of padding), so
    /// the model sees the lungs only. Checkpoints written before the region
    /// existed have none.
    #[serde(default)]
    pub lung_region: Option<region::LungRegionConfig>,
}

impl Default for PreprocessConfig {
    /// 0.8 x 0.8 mm in-plane and 1.5 mm slices, a common CT working
    /// resolution (the paper's data ranged from 1 to 5 mm slices), and the
    /// lung window; no lung region (`multir train` adds one unless told
    /// not to).
    fn default() -> Self {
        PreprocessConfig {
            spacing_mm: [0.8, 0.8, 1.5],
            window: HuWindow::default(),
            lung_region: None,
        }
    }
}

/// A scan on the model grid, with what is needed to go back.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Canonical, resampled, normalised intensities.
    pub volume: Volume,
    /// From the file's grid to canonical orientation.
    pub reorientation: Reorientation,
    /// The lung region on the model grid, when the configuration asks for
    /// one; the volume is 0 outside it.
    pub region: Option<region::LungRegion>,
    /// The canonical grid before resampling.
    canonical_dims: [usize; 3],
    canonical_affine: crate::volume::Affine,
}

/// Reorients to RAS, resamples (trilinear) and normalises a CT in HU; with
/// a lung region configured, computes it on the resampled HU volume and
/// blanks everything outside it.
pub fn prepare(ct: &Volume, cfg: &PreprocessConfig) -> Result<Prepared> {
    let (canonical, reorientation) = ct.canonical();
    let mut volume = resample::resample_to_spacing(&canonical, cfg.spacing_mm, Interp::Linear)?;
    let region = match &cfg.lung_region {
        Some(rc) => Some(region::lung_region(&volume, rc)?),
        None => None,
    };
    cfg.window.normalize(volume.data_mut());
    if let Some(r) = &region {
        volume
            .data_mut()
            .iter_mut()
            .zip(&r.mask)
            .for_each(|(v, &m)| *v *= f32::from(m));
    }
    Ok(Prepared {
        volume,
        reorientation,
        region,
        canonical_dims: canonical.dims(),
        canonical_affine: *canonical.affine(),
    })
}

impl Prepared {
    /// The lung region on the file's own grid (1 inside, 0 outside), when
    /// there is one: every scan voxel whose trilinear restoration reads any
    /// model voxel of the region. A lesion probability restored to the
    /// scan's grid can be above 0 only there, so "no lesion outside the
    /// region" can be checked voxel for voxel on the scan's grid.
    pub fn region_on_source(&self) -> Result<Option<Volume>> {
        let Some(r) = &self.region else {
            return Ok(None);
        };
        let on_grid = self
            .volume
            .with_data(r.mask.iter().map(|&m| f32::from(m)).collect())?;
        let mut back = self.restore(&on_grid, Interp::Linear)?;
        back.data_mut()
            .iter_mut()
            .for_each(|v| *v = f32::from(*v > 0.0));
        Ok(Some(back))
    }

    /// Brings a volume on the model grid (mask: [`Interp::Nearest`];
    /// probabilities: [`Interp::Linear`]) back onto the original file's grid
    /// and orientation, voxel for voxel.
    pub fn restore(&self, on_model_grid: &Volume, interp: Interp) -> Result<Volume> {
        let canonical = resample::resample_to_grid(
            on_model_grid,
            self.canonical_dims,
            &self.canonical_affine,
            interp,
        )?;
        self.reorientation.undo_owned(canonical)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Affine;

    #[test]
    fn restore_returns_masks_to_the_original_lps_grid() {
        // An LPS scan, 2.5 mm slices; a "lesion" block in file coordinates.
        let dims = [20, 16, 10];
        let mut a = Affine::from_spacing_origin([0.7, 0.7, 2.5], [100.0, 80.0, -50.0]);
        a.0[0][0] = -0.7;
        a.0[1][1] = -0.7;
        let mut hu = vec![-1000.0f32; dims.iter().product()];
        let mut truth = vec![0.0f32; hu.len()];
        for k in 3..7 {
            for j in 4..10 {
                for i in 5..15 {
                    let n = i + dims[0] * (j + dims[1] * k);
                    hu[n] = 0.0;
                    truth[n] = 1.0;
                }
            }
        }
        let ct = Volume::new(hu, dims, a).unwrap();
        let cfg = PreprocessConfig {
            spacing_mm: [1.0, 1.0, 1.0],
            ..Default::default()
        };
        let p = prepare(&ct, &cfg).unwrap();
        assert_eq!(p.volume.affine().axcodes(), "RAS");
        // Threshold the normalised image as a stand-in for a model.
        let t = cfg.window.map(-500.0);
        let pred = p
            .volume
            .with_data(
                p.volume
                    .data()
                    .iter()
                    .map(|&v| (v > t) as u8 as f32)
                    .collect(),
            )
            .unwrap();
        let back = p.restore(&pred, Interp::Nearest).unwrap();
        assert_eq!(back.dims(), dims);
        assert_eq!(back.affine(), ct.affine());
        // Only voxels on the block's faces may differ after 1 mm resampling.
        let face = |i: usize, j: usize, k: usize| {
            let b = [(5, 14), (4, 9), (3, 6)];
            let x = [i, j, k];
            let near = (0..3).all(|a| x[a] + 1 >= b[a].0 && x[a] <= b[a].1 + 1);
            let on_layer = (0..3).any(|a| {
                [b[a].0, b[a].1]
                    .iter()
                    .any(|&e| x[a] + 1 >= e && x[a] <= e + 1)
            });
            near && on_layer
        };
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    let n = i + dims[0] * (j + dims[1] * k);
                    if back.data()[n] != truth[n] {
                        assert!(
                            face(i, j, k),
                            "voxel ({i},{j},{k}) differs away from the block's faces"
                        );
                    }
                }
            }
        }
        // Flipped masks are the classic bug: the block's corner must be hit.
        assert_eq!(back.get(6, 5, 4), 1.0);
        assert_eq!(back.get(2, 2, 1), 0.0);
    }
}
