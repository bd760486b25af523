//! Surface elements of binary masks and their distances to the other mask's
//! surface.
//!
//! Surface points live on the corner lattice: corner `(i, j, k)` sits between
//! voxels `i-1, i` along axis 0 (and likewise on the other axes), so a volume
//! of `n` voxels along an axis has `n + 1` corners there. A corner is on the
//! surface when its eight neighbouring voxels are neither all inside nor all
//! outside; voxels beyond the volume count as outside, so a mask touching the
//! volume's border is closed there.
//!
//! The masks are read row by row (a row runs along axis 0, the fastest): a
//! first pass finds each row's first and last foreground voxel, and the
//! surface pass only visits corners next to a non-empty row, so an almost
//! empty 512x512x300 volume costs one linear scan.

use rayon::prelude::*;

use super::nearest::nearest_distances;
use super::table::surfel_area_table;
use crate::error::{Error, Result};

/// One surface element: its distance to the other surface and its area.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Surfel {
    /// Distance in mm to the nearest surface point of the other mask
    /// (infinite when the other mask is empty).
    pub distance_mm: f64,
    /// Area of the element in mm^2.
    pub area_mm2: f64,
}

/// Surface elements of both masks with their distances to the other
/// surface, each list sorted by distance (then area), as the reference's
/// `compute_surface_distances` returns them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SurfaceDistances {
    /// The truth surface, distances to the predicted surface.
    pub truth_to_pred: Vec<Surfel>,
    /// The predicted surface, distances to the truth surface.
    pub pred_to_truth: Vec<Surfel>,
}

/// First and last foreground voxel of a row, or `None` when it is empty.
pub(crate) type Extent = Option<(u32, u32)>;

/// A binary mask stored one value per voxel, axis 0 fastest.
pub(crate) trait Mask: Sync {
    /// Whether voxel `index` is inside.
    fn inside(&self, index: usize) -> bool;
    /// First and last inside voxel of the `len` voxels from `start`.
    fn row_extent(&self, start: usize, len: usize) -> Extent;
}

/// Flags, one per voxel.
pub(crate) struct Flags<'a>(pub &'a [bool]);

/// Voxel values, inside when above 0.5 (NaN is outside).
pub(crate) struct Above<'a>(pub &'a [f32]);

impl Mask for Flags<'_> {
    #[inline]
    fn inside(&self, index: usize) -> bool {
        self.0[index]
    }

    fn row_extent(&self, start: usize, len: usize) -> Extent {
        let row = &self.0[start..start + len];
        let first = row.iter().position(|&v| v)?;
        let last = row.iter().rposition(|&v| v)?;
        Some((first as u32, last as u32))
    }
}

impl Mask for Above<'_> {
    #[inline]
    fn inside(&self, index: usize) -> bool {
        self.0[index] > 0.5
    }

    fn row_extent(&self, start: usize, len: usize) -> Extent {
        let row = &self.0[start..start + len];
        // A branch-free pass first (it vectorises): most rows of a lesion
        // mask are empty, and memory bandwidth is the limit.
        if !row.iter().fold(false, |any, &v| any | (v > 0.5)) {
            return None;
        }
        let first = row.iter().position(|&v| v > 0.5)?;
        let last = row.iter().rposition(|&v| v > 0.5)?;
        Some((first as u32, last as u32))
    }
}

/// Checks the mask geometry before anything is allocated.
pub(crate) fn check_grid(len_truth: usize, len_pred: usize, dims: [usize; 3]) -> Result<()> {
    let n = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::InvalidArgument(format!("mask dims {dims:?} overflow")))?;
    if dims.contains(&0) {
        return Err(Error::InvalidArgument(format!(
            "mask dims {dims:?} are empty"
        )));
    }
    // Corner coordinates are i32 and row extents u32.
    if dims.iter().any(|&d| d >= i32::MAX as usize) {
        return Err(Error::InvalidArgument(format!(
            "mask dims {dims:?} too large"
        )));
    }
    if len_truth != n || len_pred != n {
        return Err(Error::InvalidArgument(format!(
            "masks of {len_truth} and {len_pred} voxels for a {}x{}x{} grid",
            dims[0], dims[1], dims[2]
        )));
    }
    Ok(())
}

/// Validates a spacing: finite and positive on every axis.
pub(crate) fn check_spacing(spacing_mm: [f64; 3]) -> Result<()> {
    if spacing_mm.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(Error::InvalidArgument(format!(
            "voxel spacing {spacing_mm:?} mm must be finite and positive"
        )));
    }
    Ok(())
}

/// Per-row extents of a mask.
pub(crate) fn row_extents<M: Mask>(dims: [usize; 3], mask: &M) -> Vec<Extent> {
    let ni = dims[0];
    (0..dims[1] * dims[2])
        .into_par_iter()
        .with_min_len(64)
        .map(|row| mask.row_extent(row * ni, ni))
        .collect()
}

/// The surface corners of one mask, with their neighbourhood codes.
pub(crate) fn surface_points<M: Mask>(
    dims: [usize; 3],
    mask: &M,
    extents: &[Extent],
) -> (Vec<[i32; 3]>, Vec<u8>) {
    let [ni, nj, nk] = dims;
    let per_slice: Vec<(Vec<[i32; 3]>, Vec<u8>)> = (0..=nk)
        .into_par_iter()
        .map(|k| {
            let mut points = Vec::new();
            let mut codes = Vec::new();
            for j in 0..=nj {
                // The four voxel rows around this corner row, ordered by the
                // code bit they feed: (j-1, k-1) -> 8, (j-1, k) -> 4,
                // (j, k-1) -> 2, (j, k) -> 1.
                let mut rows: [Option<(usize, u32, u32)>; 4] = [None; 4];
                let mut lo = u32::MAX;
                let mut hi = 0u32;
                for (slot, (b, c)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
                    let (Some(jj), Some(kk)) = ((j + b).checked_sub(1), (k + c).checked_sub(1))
                    else {
                        continue;
                    };
                    if jj >= nj || kk >= nk {
                        continue;
                    }
                    let row = jj + nj * kk;
                    if let Some((f, l)) = extents[row] {
                        rows[slot] = Some((row * ni, f, l));
                        lo = lo.min(f);
                        hi = hi.max(l);
                    }
                }
                if lo > hi {
                    continue;
                }
                // Voxel column value at i: 4 bits, one per row.
                let column = |i: u32| -> u8 {
                    let mut v = 0u8;
                    for (slot, r) in rows.iter().enumerate() {
                        if let Some((base, f, l)) = *r
                            && i >= f
                            && i <= l
                            && mask.inside(base + i as usize)
                        {
                            v |= 8 >> slot;
                        }
                    }
                    v
                };
                // Corners lo..=hi+1 are the only ones touching these rows.
                let mut prev = 0u8; // column lo-1 is outside every extent
                for i in lo..=hi + 1 {
                    let cur = if i <= hi { column(i) } else { 0 };
                    let code = (prev << 4) | cur;
                    if code != 0 && code != 255 {
                        points.push([i as i32, j as i32, k as i32]);
                        codes.push(code);
                    }
                    prev = cur;
                }
            }
            (points, codes)
        })
        .collect();
    let total = per_slice.iter().map(|s| s.0.len()).sum();
    let mut points = Vec::with_capacity(total);
    let mut codes = Vec::with_capacity(total);
    for (p, c) in per_slice {
        points.extend_from_slice(&p);
        codes.extend_from_slice(&c);
    }
    (points, codes)
}

/// Pairs distances with areas and sorts them by (distance, area).
fn surfels(distances: Vec<f64>, codes: &[u8], table: &[f64; 256]) -> Vec<Surfel> {
    let mut out: Vec<Surfel> = distances
        .into_iter()
        .zip(codes)
        .map(|(distance_mm, &c)| Surfel {
            distance_mm,
            area_mm2: table[usize::from(c)],
        })
        .collect();
    // Distances and areas are non-negative (or +inf), where the order of
    // the IEEE bit patterns is the numeric order: one integer key sorts
    // faster than two float comparisons.
    out.par_sort_unstable_by_key(|e| {
        (u128::from(e.distance_mm.to_bits()) << 64) | u128::from(e.area_mm2.to_bits())
    });
    out
}

/// Surface distances of two masks whose row extents are already known.
pub(crate) fn surface_distances_with<M: Mask>(
    dims: [usize; 3],
    spacing_mm: [f64; 3],
    truth: &M,
    truth_extents: &[Extent],
    pred: &M,
    pred_extents: &[Extent],
) -> SurfaceDistances {
    let ((t_points, t_codes), (p_points, p_codes)) = rayon::join(
        || surface_points(dims, truth, truth_extents),
        || surface_points(dims, pred, pred_extents),
    );
    let (d_t, d_p) = rayon::join(
        || nearest_distances(&t_points, p_points.clone(), spacing_mm),
        || nearest_distances(&p_points, t_points.clone(), spacing_mm),
    );
    let table = surfel_area_table(spacing_mm);
    SurfaceDistances {
        truth_to_pred: surfels(d_t, &t_codes, &table),
        pred_to_truth: surfels(d_p, &p_codes, &table),
    }
}

/// Surface elements of two masks on one grid and their distances to the
/// other mask's surface.
///
/// `truth` and `pred` hold one flag per voxel, axis 0 fastest (index
/// `i + ni * (j + nj * k)`), `dims = [ni, nj, nk]`, `spacing_mm` the voxel
/// size along each axis. Fails on mismatched lengths, empty or huge dims and
/// non-positive spacing.
pub fn surface_distances(
    truth: &[bool],
    pred: &[bool],
    dims: [usize; 3],
    spacing_mm: [f64; 3],
) -> Result<SurfaceDistances> {
    check_grid(truth.len(), pred.len(), dims)?;
    check_spacing(spacing_mm)?;
    let (t, p) = (Flags(truth), Flags(pred));
    let (te, pe) = rayon::join(|| row_extents(dims, &t), || row_extents(dims, &p));
    Ok(surface_distances_with(dims, spacing_mm, &t, &te, &p, &pe))
}

impl SurfaceDistances {
    /// Area-weighted mean distance from the truth surface to the predicted
    /// one and back (NaN for an empty surface, infinite when the other
    /// surface is empty).
    pub fn average_distance(&self) -> (f64, f64) {
        (
            mean_distance(&self.truth_to_pred),
            mean_distance(&self.pred_to_truth),
        )
    }

    /// The `percent` percentile of distances in both directions, weighted
    /// by area, and the larger of the two (infinite when either surface is
    /// empty). `percent = 100` is the Hausdorff distance.
    pub fn robust_hausdorff(&self, percent: f64) -> f64 {
        percentile(&self.truth_to_pred, percent).max(percentile(&self.pred_to_truth, percent))
    }

    /// Fraction of the truth surface area within `tolerance_mm` of the
    /// predicted surface, and of the predicted surface within tolerance of
    /// the truth (NaN for an empty surface).
    pub fn overlap_at_tolerance(&self, tolerance_mm: f64) -> (f64, f64) {
        let frac = |s: &[Surfel]| area_within(s, tolerance_mm) / total_area(s);
        (frac(&self.truth_to_pred), frac(&self.pred_to_truth))
    }

    /// Surface Dice at `tolerance_mm`: the area of both surfaces within
    /// tolerance of the other over the total area (NaN when both are empty).
    pub fn surface_dice(&self, tolerance_mm: f64) -> f64 {
        let (t, p) = (&self.truth_to_pred, &self.pred_to_truth);
        (area_within(t, tolerance_mm) + area_within(p, tolerance_mm))
            / (total_area(t) + total_area(p))
    }
}

fn total_area(s: &[Surfel]) -> f64 {
    s.iter().map(|e| e.area_mm2).sum()
}

fn area_within(s: &[Surfel], tolerance_mm: f64) -> f64 {
    s.iter()
        .filter(|e| e.distance_mm <= tolerance_mm)
        .map(|e| e.area_mm2)
        .sum()
}

fn mean_distance(s: &[Surfel]) -> f64 {
    s.iter().map(|e| e.distance_mm * e.area_mm2).sum::<f64>() / total_area(s)
}

/// The reference's weighted percentile: the first sorted element whose
/// cumulative area fraction reaches `percent / 100` (the last one if
/// rounding keeps the sum below), infinite for an empty list.
fn percentile(s: &[Surfel], percent: f64) -> f64 {
    let Some(last) = s.last() else {
        return f64::INFINITY;
    };
    let total = total_area(s);
    let target = percent / 100.0;
    let mut cum = 0.0;
    for e in s {
        cum += e.area_mm2;
        if cum / total >= target {
            return e.distance_mm;
        }
    }
    last.distance_mm
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// (distance, code) of each surface corner.
    type Plain = Vec<(f64, u8)>;

    /// Straightforward version: pad by one voxel of background, look at the
    /// eight voxels of every corner, compare every pair of surface points.
    fn brute(truth: &[bool], pred: &[bool], dims: [usize; 3], s: [f64; 3]) -> (Plain, Plain) {
        let at = |m: &[bool], i: i64, j: i64, k: i64| -> bool {
            let d = dims.map(|d| d as i64);
            i >= 0
                && j >= 0
                && k >= 0
                && i < d[0]
                && j < d[1]
                && k < d[2]
                && m[(i + d[0] * (j + d[1] * k)) as usize]
        };
        let surface = |m: &[bool]| {
            let mut out = Vec::new();
            for k in 0..=dims[2] as i64 {
                for j in 0..=dims[1] as i64 {
                    for i in 0..=dims[0] as i64 {
                        let mut code = 0u8;
                        for a in 0..2 {
                            for b in 0..2 {
                                for c in 0..2 {
                                    if at(m, i - 1 + a, j - 1 + b, k - 1 + c) {
                                        code |= 1 << (7 - (4 * a + 2 * b + c));
                                    }
                                }
                            }
                        }
                        if code != 0 && code != 255 {
                            out.push(([i, j, k], code));
                        }
                    }
                }
            }
            out
        };
        let (st, sp) = (surface(truth), surface(pred));
        let dist = |from: &[([i64; 3], u8)], to: &[([i64; 3], u8)]| -> Plain {
            from.iter()
                .map(|(q, code)| {
                    let d = to
                        .iter()
                        .map(|(p, _)| {
                            let v = [0, 1, 2].map(|d| (p[d] - q[d]) as f64 * s[d]);
                            v[0] * v[0] + v[1] * v[1] + v[2] * v[2]
                        })
                        .fold(f64::INFINITY, f64::min)
                        .sqrt();
                    (d, *code)
                })
                .collect()
        };
        (dist(&st, &sp), dist(&sp, &st))
    }

    fn sorted(v: Plain, table: &[f64; 256]) -> Vec<Surfel> {
        let mut out: Vec<Surfel> = v
            .into_iter()
            .map(|(d, c)| Surfel {
                distance_mm: d,
                area_mm2: table[usize::from(c)],
            })
            .collect();
        out.sort_by(|a, b| {
            a.distance_mm
                .total_cmp(&b.distance_mm)
                .then(a.area_mm2.total_cmp(&b.area_mm2))
        });
        out
    }

    #[test]
    fn matches_brute_force_on_random_masks() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for round in 0..25 {
            let dims = [0; 3].map(|_| rng.random_range(1..9usize));
            let s = [0; 3].map(|_| rng.random_range(0.4..2.5));
            let n = dims[0] * dims[1] * dims[2];
            // Sparse, dense and empty masks; many touch the border.
            let p_t = [0.0, 0.1, 0.5, 0.9][round % 4];
            let p_p = [0.3, 0.0, 0.7, 0.2][round % 4];
            let truth: Vec<bool> = (0..n).map(|_| rng.random_bool(p_t)).collect();
            let pred: Vec<bool> = (0..n).map(|_| rng.random_bool(p_p)).collect();
            let got = surface_distances(&truth, &pred, dims, s).unwrap();
            let (bt, bp) = brute(&truth, &pred, dims, s);
            let table = surfel_area_table(s);
            assert_eq!(got.truth_to_pred, sorted(bt, &table), "round {round}");
            assert_eq!(got.pred_to_truth, sorted(bp, &table), "round {round}");
        }
    }

    #[test]
    fn full_volume_is_closed_at_the_border() {
        // Every voxel inside: the surface is the volume's own boundary.
        let dims = [3, 4, 5];
        let all = vec![true; 60];
        let sd = surface_distances(&all, &all, dims, [1.0; 3]).unwrap();
        assert!(!sd.truth_to_pred.is_empty());
        assert!(sd.truth_to_pred.iter().all(|e| e.distance_mm == 0.0));
        assert_eq!(sd.surface_dice(0.0), 1.0);
    }

    #[test]
    fn rejects_bad_input() {
        let m = vec![false; 8];
        assert!(surface_distances(&m, &m[..7], [2, 2, 2], [1.0; 3]).is_err());
        assert!(surface_distances(&m, &m, [2, 2, 2], [1.0, 0.0, 1.0]).is_err());
        assert!(surface_distances(&m, &m, [2, 2, 2], [1.0, f64::NAN, 1.0]).is_err());
        assert!(surface_distances(&[], &[], [0, 2, 2], [1.0; 3]).is_err());
        assert!(surface_distances(&m, &m, [usize::MAX, 2, 2], [1.0; 3]).is_err());
    }

    #[test]
    fn empty_masks_follow_the_reference_conventions() {
        let dims = [4, 4, 4];
        let empty = vec![false; 64];
        let mut one = empty.clone();
        one[21] = true;
        let both = surface_distances(&empty, &empty, dims, [1.0; 3]).unwrap();
        assert!(both.truth_to_pred.is_empty() && both.pred_to_truth.is_empty());
        assert!(both.surface_dice(1.0).is_nan());
        assert!(both.robust_hausdorff(95.0).is_infinite());
        let no_pred = surface_distances(&one, &empty, dims, [1.0; 3]).unwrap();
        assert_eq!(no_pred.truth_to_pred.len(), 8);
        assert!(no_pred.average_distance().0.is_infinite());
        assert!(no_pred.average_distance().1.is_nan());
        assert_eq!(no_pred.overlap_at_tolerance(1.0).0, 0.0);
        assert_eq!(no_pred.surface_dice(1.0), 0.0);
    }

    #[test]
    fn percentile_is_area_weighted() {
        let e = |d: f64, a: f64| Surfel {
            distance_mm: d,
            area_mm2: a,
        };
        let s = [e(0.0, 1.0), e(1.0, 1.0), e(5.0, 8.0)];
        assert_eq!(percentile(&s, 10.0), 0.0);
        assert_eq!(percentile(&s, 15.0), 1.0);
        assert_eq!(percentile(&s, 20.0), 1.0);
        assert_eq!(percentile(&s, 21.0), 5.0);
        assert_eq!(percentile(&s, 100.0), 5.0);
    }
}
