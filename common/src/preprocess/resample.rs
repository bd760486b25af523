//! Resampling between axis-aligned voxel grids.
//!
//! Grids are related per axis by `x_in = scale * x_out + offset` (voxel
//! centres, in voxel units). [`resample_to_spacing`] keeps voxel 0's centre
//! fixed and changes the step; [`resample_to_grid`] takes any target grid
//! whose axes run along the source's (for example, the original grid of a
//! scan, to bring a predicted mask back exactly).
//!
//! Linear interpolation is trilinear with coordinates beyond the outermost
//! voxel centres clamped to the edge, which is what
//! `scipy.ndimage.map_coordinates(order=1, mode="nearest")` computes.
//! Nearest-neighbour rounds half up (`floor(x + 0.5)`) and is meant for
//! label masks. Work is split over output slices with rayon; linear
//! interpolation first blends the four source rows along j and k, then
//! interpolates along i, so the inner loops run over contiguous memory.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::io::DEFAULT_MAX_VOXELS;
use crate::volume::{Affine, Volume, checked_len};

/// Interpolation method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interp {
    /// Trilinear, for images and probability maps.
    Linear,
    /// Nearest neighbour, for label masks.
    Nearest,
}

/// Resamples to a new voxel spacing (mm along i, j, k). The output has
/// `max(1, round(n * s_in / s_out))` voxels per axis and the same centre for
/// voxel (0, 0, 0).
pub fn resample_to_spacing(v: &Volume, spacing: [f64; 3], interp: Interp) -> Result<Volume> {
    if spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(Error::InvalidArgument(format!(
            "target spacing {spacing:?} must be positive and finite"
        )));
    }
    let src = v.spacing();
    let dims_in = v.dims();
    let mut dims = [0usize; 3];
    let mut affine = *v.affine();
    for a in 0..3 {
        let n = (dims_in[a] as f64 * src[a] / spacing[a]).round();
        // Refuse absurd grids before the usize conversion can saturate.
        if n > DEFAULT_MAX_VOXELS as f64 {
            return Err(too_large([n, 1.0, 1.0]));
        }
        dims[a] = (n as usize).max(1);
        let f = spacing[a] / src[a];
        for row in affine.0.iter_mut().take(3) {
            row[a] *= f;
        }
    }
    resample_to_grid(v, dims, &affine, interp)
}

fn too_large(dims: [f64; 3]) -> Error {
    Error::InvalidArgument(format!(
        "resampling would produce a {:.0}x{:.0}x{:.0} grid, more than {} voxels",
        dims[0], dims[1], dims[2], DEFAULT_MAX_VOXELS
    ))
}

/// Resamples onto the grid `dims`/`affine`, whose axes must be parallel to
/// the source's (same orientation, any spacing and shift).
pub fn resample_to_grid(
    v: &Volume,
    dims: [usize; 3],
    affine: &Affine,
    interp: Interp,
) -> Result<Volume> {
    let n = checked_len(dims)?;
    if n as u64 > DEFAULT_MAX_VOXELS {
        return Err(too_large(dims.map(|d| d as f64)));
    }
    // Target index -> source index.
    let m = v.affine().inverse()?.compose(affine);
    let mut scale = [0.0; 3];
    let mut offset = [0.0; 3];
    for r in 0..3 {
        for c in 0..3 {
            let tol = 1e-6 * (m.0[c][c].abs().max(m.0[r][r].abs()));
            if r != c && m.0[r][c].abs() > tol {
                return Err(Error::InvalidArgument(
                    "target grid is rotated relative to the source; reorient first".into(),
                ));
            }
        }
        scale[r] = m.0[r][r];
        offset[r] = m.0[r][3];
    }
    let din = v.dims();
    let axes: [Vec<Tap>; 3] =
        std::array::from_fn(|a| taps(dims[a], din[a], scale[a], offset[a], interp));
    let data = match interp {
        Interp::Linear => linear(v.data(), din, dims, &axes),
        Interp::Nearest => nearest(v.data(), din, dims, &axes),
    };
    Volume::new(data, dims, *affine)
}

/// One output position along an axis: the two source neighbours and the
/// weight of the second.
#[derive(Debug, Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    w: f32,
}

fn taps(n_out: usize, n_in: usize, scale: f64, offset: f64, interp: Interp) -> Vec<Tap> {
    let last = (n_in - 1) as f64;
    (0..n_out)
        .map(|o| {
            let x = (scale * o as f64 + offset).clamp(0.0, last);
            match interp {
                Interp::Nearest => {
                    let i = ((x + 0.5).floor() as usize).min(n_in - 1);
                    Tap {
                        i0: i,
                        i1: i,
                        w: 0.0,
                    }
                }
                Interp::Linear => {
                    let i0 = (x.floor() as usize).min(n_in - 1);
                    let i1 = (i0 + 1).min(n_in - 1);
                    Tap {
                        i0,
                        i1,
                        w: (x - i0 as f64) as f32,
                    }
                }
            }
        })
        .collect()
}

fn linear(src: &[f32], din: [usize; 3], dout: [usize; 3], axes: &[Vec<Tap>; 3]) -> Vec<f32> {
    let [nxi, nyi, _] = din;
    let [nxo, nyo, _] = dout;
    let plane_in = nxi * nyi;
    let mut out = vec![0f32; nxo * nyo * dout[2]];
    out.par_chunks_mut(nxo * nyo).enumerate().for_each_init(
        || vec![0f32; nxi],
        |row, (k, slice)| {
            let tz = axes[2][k];
            let (z0, z1) = (
                &src[tz.i0 * plane_in..][..plane_in],
                &src[tz.i1 * plane_in..][..plane_in],
            );
            for (j, out_row) in slice.chunks_exact_mut(nxo).enumerate() {
                let ty = axes[1][j];
                let r00 = &z0[ty.i0 * nxi..][..nxi];
                let r01 = &z0[ty.i1 * nxi..][..nxi];
                let r10 = &z1[ty.i0 * nxi..][..nxi];
                let r11 = &z1[ty.i1 * nxi..][..nxi];
                let (wy, wz) = (ty.w, tz.w);
                let (a, b, c, d) = (
                    (1.0 - wz) * (1.0 - wy),
                    (1.0 - wz) * wy,
                    wz * (1.0 - wy),
                    wz * wy,
                );
                for x in 0..nxi {
                    row[x] = a * r00[x] + b * r01[x] + c * r10[x] + d * r11[x];
                }
                for (o, t) in out_row.iter_mut().zip(&axes[0]) {
                    *o = row[t.i0] + t.w * (row[t.i1] - row[t.i0]);
                }
            }
        },
    );
    out
}

fn nearest(src: &[f32], din: [usize; 3], dout: [usize; 3], axes: &[Vec<Tap>; 3]) -> Vec<f32> {
    let [nxi, nyi, _] = din;
    let [nxo, nyo, _] = dout;
    let mut out = vec![0f32; nxo * nyo * dout[2]];
    out.par_chunks_mut(nxo * nyo)
        .enumerate()
        .for_each(|(k, slice)| {
            let plane = &src[axes[2][k].i0 * nxi * nyi..][..nxi * nyi];
            for (j, out_row) in slice.chunks_exact_mut(nxo).enumerate() {
                let row = &plane[axes[1][j].i0 * nxi..][..nxi];
                for (o, t) in out_row.iter_mut().zip(&axes[0]) {
                    *o = row[t.i0];
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn affine(spacing: [f64; 3]) -> Affine {
        let mut a = Affine::from_spacing_origin(spacing, [3.0, -2.0, 7.5]);
        // LPS-like flips must not matter: resampling works in voxel space.
        a.0[0][0] = -spacing[0];
        a
    }

    fn linear_field(dims: [usize; 3], spacing: [f64; 3]) -> Volume {
        let mut data = Vec::new();
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    data.push((2.0 * i as f64 - 3.0 * j as f64 + 0.5 * k as f64) as f32);
                }
            }
        }
        Volume::new(data, dims, affine(spacing)).unwrap()
    }

    #[test]
    fn trilinear_is_exact_on_linear_fields_inside() {
        let v = linear_field([10, 9, 8], [0.7, 0.8, 2.5]);
        let out = resample_to_spacing(&v, [0.5, 1.0, 1.25], Interp::Linear).unwrap();
        assert_eq!(out.dims(), [14, 7, 16]);
        let s = [0.5 / 0.7, 1.0 / 0.8, 1.25 / 2.5];
        for k in 0..out.dims()[2] {
            for j in 0..out.dims()[1] {
                for i in 0..out.dims()[0] {
                    let (x, y, z) = (i as f64 * s[0], j as f64 * s[1], k as f64 * s[2]);
                    // Clamp to the edge as scipy's mode="nearest".
                    let (x, y, z) = (x.min(9.0), y.min(8.0), z.min(7.0));
                    let want = 2.0 * x - 3.0 * y + 0.5 * z;
                    let got = out.get(i, j, k) as f64;
                    assert!((got - want).abs() < 1e-4, "({i},{j},{k}) {got} vs {want}");
                }
            }
        }
        // Voxel 0 keeps its world position.
        assert_eq!(out.affine().origin(), v.affine().origin());
        assert!((out.spacing()[2] - 1.25).abs() < 1e-12);
    }

    #[test]
    fn identity_grid_is_a_copy_and_nearest_round_trips_masks() {
        let v = linear_field([5, 4, 3], [1.0, 1.0, 3.0]);
        let same = resample_to_grid(&v, v.dims(), v.affine(), Interp::Linear).unwrap();
        assert_eq!(same, v);
        // A mask taken to a 3x finer grid and back is unchanged.
        let mask = v
            .with_data(v.data().iter().map(|x| (*x > 0.0) as u8 as f32).collect())
            .unwrap();
        let fine =
            resample_to_spacing(&mask, [1.0 / 3.0, 1.0 / 3.0, 1.0], Interp::Nearest).unwrap();
        let back = resample_to_grid(&fine, mask.dims(), mask.affine(), Interp::Nearest).unwrap();
        assert_eq!(back.data(), mask.data());
    }

    #[test]
    fn refuses_rotated_targets_and_absurd_grids() {
        let v = linear_field([4, 4, 4], [1.0, 1.0, 1.0]);
        let mut rot = *v.affine();
        rot.0[0][1] = 0.5;
        assert!(resample_to_grid(&v, [4, 4, 4], &rot, Interp::Linear).is_err());
        assert!(resample_to_spacing(&v, [1e-4, 1e-4, 1e-4], Interp::Linear).is_err());
        assert!(resample_to_spacing(&v, [0.0, 1.0, 1.0], Interp::Linear).is_err());
        assert!(resample_to_spacing(&v, [f64::NAN, 1.0, 1.0], Interp::Linear).is_err());
    }

    #[test]
    fn single_voxel_axes_work() {
        let v = Volume::new(vec![1.0, 3.0], [2, 1, 1], affine([1.0, 1.0, 5.0])).unwrap();
        let out = resample_to_spacing(&v, [0.5, 1.0, 1.0], Interp::Linear).unwrap();
        assert_eq!(out.dims(), [4, 1, 5]);
        assert_eq!(&out.data()[..4], &[1.0, 2.0, 3.0, 3.0]);
    }
}
