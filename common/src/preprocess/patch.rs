//! Patches: fixed-size windows cut from a volume, padded at the borders.
//!
//! Sizes are given along i, j, k. The paper's 32x96x96 (slices x rows x
//! columns) patch is [`PAPER_PATCH`] = `[96, 96, 32]` here. Voxels outside
//! the volume take a pad value (0 after normalisation = air below the
//! window), so a patch at the edge of a scan looks like air beyond the body.

use crate::error::{Error, Result};
use crate::volume::Volume;

/// The paper's patch: 96 x 96 in-plane, 32 slices.
pub const PAPER_PATCH: [usize; 3] = [96, 96, 32];

/// Copies the patch of `size` whose first voxel is `start` (may be negative
/// or run past the end); outside voxels are `pad`. Returned `i` fastest.
pub fn extract(v: &Volume, start: [isize; 3], size: [usize; 3], pad: f32) -> Result<Vec<f32>> {
    extract_from(v.data(), v.dims(), start, size, pad)
}

/// [`extract`] on any i-fastest buffer of `dims` (masks kept as bytes).
pub fn extract_from<T: Copy>(
    data: &[T],
    d: [usize; 3],
    start: [isize; 3],
    size: [usize; 3],
    pad: T,
) -> Result<Vec<T>> {
    if size.contains(&0) {
        return Err(Error::InvalidArgument(format!(
            "patch size {size:?} contains zero"
        )));
    }
    if data.len() != d[0] * d[1] * d[2] {
        return Err(Error::InvalidArgument(format!(
            "buffer of {} values does not match dims {d:?}",
            data.len()
        )));
    }
    let mut out = vec![pad; size[0] * size[1] * size[2]];
    // Overlap of the patch with the volume along i, as offsets into both.
    let lo_i = start[0].max(0);
    let hi_i = (start[0] + size[0] as isize).min(d[0] as isize);
    if lo_i >= hi_i {
        return Ok(out);
    }
    let (len, src_i, dst_i) = (
        (hi_i - lo_i) as usize,
        lo_i as usize,
        (lo_i - start[0]) as usize,
    );
    for pk in 0..size[2] {
        let k = start[2] + pk as isize;
        if k < 0 || k >= d[2] as isize {
            continue;
        }
        for pj in 0..size[1] {
            let j = start[1] + pj as isize;
            if j < 0 || j >= d[1] as isize {
                continue;
            }
            let s = src_i + d[0] * (j as usize + d[1] * k as usize);
            let o = dst_i + size[0] * (pj + size[1] * pk);
            out[o..o + len].copy_from_slice(&data[s..s + len]);
        }
    }
    Ok(out)
}

/// The start of the patch of `size` centred on voxel `center`.
pub fn centred_start(center: [usize; 3], size: [usize; 3]) -> [isize; 3] {
    std::array::from_fn(|a| center[a] as isize - (size[a] / 2) as isize)
}

/// Starts of sliding windows covering `dims` with the given fractional
/// overlap (0 <= overlap < 1). The last window on each axis is aligned with
/// the end, so every voxel is covered; an axis shorter than the window gets
/// one window at 0 (padded).
pub fn sliding_starts(dims: [usize; 3], size: [usize; 3], overlap: f64) -> Result<Vec<[usize; 3]>> {
    if !(0.0..1.0).contains(&overlap) {
        return Err(Error::InvalidArgument(format!(
            "overlap {overlap} must be in [0, 1)"
        )));
    }
    if size.contains(&0) {
        return Err(Error::InvalidArgument(format!(
            "window size {size:?} contains zero"
        )));
    }
    let per_axis: [Vec<usize>; 3] = std::array::from_fn(|a| {
        if dims[a] <= size[a] {
            return vec![0];
        }
        let step = ((size[a] as f64 * (1.0 - overlap)).floor() as usize).max(1);
        let last = dims[a] - size[a];
        let mut s: Vec<usize> = (0..=last).step_by(step).collect();
        if *s.last().unwrap_or(&0) != last {
            s.push(last);
        }
        s
    });
    let mut out = Vec::with_capacity(per_axis.iter().map(Vec::len).product());
    for &k in &per_axis[2] {
        for &j in &per_axis[1] {
            for &i in &per_axis[0] {
                out.push([i, j, k]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Affine;

    fn ramp(dims: [usize; 3]) -> Volume {
        let n = dims.iter().product();
        Volume::new((0..n).map(|v| v as f32).collect(), dims, Affine::identity()).unwrap()
    }

    #[test]
    fn interior_patch_matches_voxels_and_borders_are_padded() {
        let v = ramp([6, 5, 4]);
        let p = extract(&v, [1, 2, 1], [3, 2, 2], -1.0).unwrap();
        let mut want = Vec::new();
        for k in 1..3 {
            for j in 2..4 {
                for i in 1..4 {
                    want.push(v.get(i, j, k));
                }
            }
        }
        assert_eq!(p, want);
        let p = extract(&v, [-1, -1, 3], [2, 2, 2], -1.0).unwrap();
        // Only (0,0,3) lies inside.
        assert_eq!(
            p,
            vec![-1.0, -1.0, -1.0, v.get(0, 0, 3), -1.0, -1.0, -1.0, -1.0]
        );
        assert!(
            extract(&v, [10, 0, 0], [2, 2, 2], 0.0)
                .unwrap()
                .iter()
                .all(|&x| x == 0.0)
        );
        assert_eq!(centred_start([48, 48, 16], PAPER_PATCH), [0, 0, 0]);
    }

    #[test]
    fn sliding_windows_cover_every_voxel() {
        let dims = [200, 37, 90];
        let size = [96, 96, 32];
        let starts = sliding_starts(dims, size, 0.25).unwrap();
        let mut hit = vec![false; dims.iter().product()];
        for s in &starts {
            for k in s[2]..(s[2] + size[2]).min(dims[2]) {
                for j in s[1]..(s[1] + size[1]).min(dims[1]) {
                    for i in s[0]..(s[0] + size[0]).min(dims[0]) {
                        hit[i + dims[0] * (j + dims[1] * k)] = true;
                    }
                }
            }
        }
        assert!(hit.iter().all(|&h| h));
        // i: 0, 72, 104 (end-aligned); j: 0 (short axis); k: 0, 24, 48, 58.
        assert_eq!(starts.len(), 3 * 4);
        assert!(sliding_starts(dims, size, 1.0).is_err());
    }
}
