//! The lung region: where lesions may be, and the only part of a scan the
//! model looks at.
//!
//! COVID-19 and pneumonia lesions lie in the lung parenchyma. The classical
//! lung mask ([`super::lung::lung_mask`]) finds aerated lung, but a dense
//! consolidation (-100..+50 HU) is not air: a lobar consolidation against
//! the chest wall sits *outside* it, and hole filling and closing recover it
//! only when it is enclosed by aerated lung. Thresholds alone cannot tell a
//! consolidation from the chest-wall muscle it touches, so the region is
//! built from the shape of the lungs instead:
//!
//! 1. **Lungs**: the classical lung mask, per side.
//! 2. **Mirror**: in every axial slice each lung is joined by the other
//!    lung reflected across the body's midline. Pneumonia that fills part
//!    of one lung rarely fills the same part of the other (community-acquired
//!    pneumonia is mostly one-sided), so the healthy side restores the
//!    diseased side's outline.
//! 3. **Hull**: per slice and side, the convex hull of both, which also
//!    takes in consolidations in the concave parts of a lung (against the
//!    heart, the spine and the diaphragm).
//! 4. **Reach**: each side's hull is joined with the hulls of the slices
//!    within [`LungRegionConfig::z_reach_mm`] above and below, which covers
//!    consolidations that fill a lung's base or apex slices completely.
//! 5. **Margin**: a disc dilation by [`LungRegionConfig::margin_mm`], for
//!    the partial-volume rim of the pleura.
//!
//! The region is generous on purpose: a lesion voxel outside it can never be
//! found, while tissue inside it that is not lung (a rim of chest wall, part
//! of the heart or the liver dome) is merely visible to the model, which was
//! trained with the same regions and learnt that it is not lesion. It never
//! reaches the subcutaneous fat or the back muscles, which is where a model
//! that saw the whole scan placed most of its false lesions.
//!
//! Inference and training both replace everything outside the region with
//! the value of padding (see [`super::prepare`]), so neither the lesion map
//! nor the diagnosis can depend on what lies outside it, and the lesion
//! map is zero there.

use rayon::prelude::*;

use super::lung::{LEFT, LungMask, LungMaskConfig, RIGHT, lung_mask};
use super::morphology::{Disc, dilate_2d};
use crate::error::{Error, Result};
use crate::volume::Volume;

/// Settings of [`lung_region`]; saved with a checkpoint, so inference
/// builds the region the model was trained with.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LungRegionConfig {
    /// The classical lung mask the region grows from.
    pub lung: LungMaskConfig,
    /// Join each lung with the other one mirrored across the midline.
    pub mirror: bool,
    /// Join each slice's hull with those of the slices this far (mm) above
    /// and below.
    pub z_reach_mm: f64,
    /// In-plane dilation of the result (mm).
    pub margin_mm: f64,
}

impl Default for LungRegionConfig {
    fn default() -> Self {
        LungRegionConfig {
            lung: LungMaskConfig::default(),
            mirror: true,
            z_reach_mm: 10.0,
            margin_mm: 5.0,
        }
    }
}

impl LungRegionConfig {
    fn validate(&self) -> Result<()> {
        for (what, v) in [("z reach", self.z_reach_mm), ("margin", self.margin_mm)] {
            if !(v.is_finite() && (0.0..=50.0).contains(&v)) {
                return Err(Error::InvalidArgument(format!(
                    "lung region: {what} of {v} mm is outside 0..50 mm"
                )));
            }
        }
        Ok(())
    }
}

/// A lung region on a CT's voxel grid.
#[derive(Debug, Clone)]
pub struct LungRegion {
    /// One value per voxel (`i` fastest): 1 inside the region, 0 outside.
    pub mask: Vec<u8>,
    /// Voxel counts along i, j, k.
    pub dims: [usize; 3],
    /// The classical lung mask it grew from.
    pub lungs: LungMask,
    /// Voxels inside the region.
    pub voxels: u64,
}

impl LungRegion {
    /// Volume of the region in mL.
    pub fn ml(&self) -> f64 {
        self.voxels as f64 * self.lungs.voxel_ml
    }
}

/// Builds the lung region of a CT in HU whose `k` axis is the patient's
/// long axis (see [`lung_mask`]); see the module documentation. Fails as
/// [`lung_mask`] does, e.g. with "no lungs found" on a scan without lungs.
pub fn lung_region(ct: &Volume, cfg: &LungRegionConfig) -> Result<LungRegion> {
    cfg.validate()?;
    let lungs = lung_mask(ct, &cfg.lung)?;
    let [ni, nj, nk] = lungs.dims;
    let plane = ni * nj;
    let spacing = ct.spacing();
    // Midline: the centre of the lungs' joint extent in each slice would
    // move with the disease; the body's centre of mass does not.
    let mid = midline_i(ct.data(), [ni, nj, nk]);

    // Per slice and side, the hull of the lung and the mirrored other lung.
    let hulls: Vec<[Vec<bool>; 2]> = lungs
        .mask
        .par_chunks(plane)
        .map(|s| {
            [LEFT, RIGHT].map(|side| {
                let other = if side == LEFT { RIGHT } else { LEFT };
                let mut rows: Vec<Option<(f64, f64)>> = vec![None; nj];
                let mut add = |j: usize, i: f64| {
                    let r = &mut rows[j];
                    *r = Some(match *r {
                        None => (i, i),
                        Some((a, b)) => (a.min(i), b.max(i)),
                    });
                };
                for (j, row) in s.chunks_exact(ni).enumerate() {
                    for (i, &v) in row.iter().enumerate() {
                        if v == side {
                            add(j, i as f64);
                        } else if cfg.mirror && v == other {
                            add(j, 2.0 * mid - i as f64);
                        }
                    }
                }
                fill_hull(&rows, ni, nj)
            })
        })
        .collect();

    let reach = (cfg.z_reach_mm / spacing[2] + 1e-9).floor() as usize;
    let disc = (cfg.margin_mm > 0.0)
        .then(|| Disc::new(cfg.margin_mm, spacing[0], spacing[1]))
        .transpose()?;
    let mut mask = vec![0u8; plane * nk];
    mask.par_chunks_mut(plane)
        .enumerate()
        .try_for_each(|(k, out)| -> Result<()> {
            let lo = k.saturating_sub(reach);
            let hi = (k + reach).min(nk - 1);
            let mut any = vec![false; plane];
            for h in &hulls[lo..=hi] {
                for side in h {
                    any.iter_mut().zip(side).for_each(|(a, &b)| *a |= b);
                }
            }
            if let Some(d) = &disc {
                any = dilate_2d(&any, ni, nj, d)?;
            }
            out.iter_mut().zip(&any).for_each(|(o, &a)| *o = a as u8);
            Ok(())
        })?;
    let voxels = mask.par_iter().map(|&v| v as u64).sum();
    Ok(LungRegion {
        mask,
        dims: [ni, nj, nk],
        lungs,
        voxels,
    })
}

/// HU above which a voxel is body (or table) rather than air.
const BODY_HU: f32 = -500.0;

/// Mean `i` of the body's voxels: the midline the lungs are mirrored across.
fn midline_i(data: &[f32], dims: [usize; 3]) -> f64 {
    let ni = dims[0];
    let (n, s) = data
        .par_chunks(ni)
        .map(|row| {
            row.iter()
                .enumerate()
                .filter(|(_, v)| **v > BODY_HU)
                .fold((0u64, 0f64), |(n, s), (i, _)| (n + 1, s + i as f64))
        })
        .reduce(|| (0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let mid = if n == 0 {
        (ni as f64 - 1.0) / 2.0
    } else {
        s / n as f64
    };
    // Whole or half voxels: mirrored voxels then land on voxel centres, and
    // a few voxels of skin more or less do not move the region.
    (mid * 2.0).round() / 2.0
}

/// Rasterises the convex hull of the points given as, per row `j`, the
/// extreme `i` of that row's points (the hull of a point set is the hull of
/// each row's extremes). Points may lie outside `0..ni`; the result is
/// clipped to the plane.
fn fill_hull(rows: &[Option<(f64, f64)>], ni: usize, nj: usize) -> Vec<bool> {
    let mut pts: Vec<(f64, f64)> = Vec::new();
    for (j, r) in rows.iter().enumerate() {
        if let Some((a, b)) = r {
            pts.push((*a, j as f64));
            if b > a {
                pts.push((*b, j as f64));
            }
        }
    }
    let mut out = vec![false; ni * nj];
    let hull = convex_hull(pts);
    if hull.is_empty() {
        return out;
    }
    let (jlo, jhi) = hull
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
            (lo.min(p.1), hi.max(p.1))
        });
    for j in (jlo.round() as usize)..=(jhi.round() as usize).min(nj - 1) {
        let y = j as f64;
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        let n = hull.len();
        for e in 0..n {
            let (a, b) = (hull[e], hull[(e + 1) % n]);
            if (a.1 - y) * (b.1 - y) <= 0.0 {
                let x = if (b.1 - a.1).abs() < 1e-12 {
                    lo = lo.min(a.0.min(b.0));
                    hi = hi.max(a.0.max(b.0));
                    continue;
                } else {
                    a.0 + (y - a.1) * (b.0 - a.0) / (b.1 - a.1)
                };
                lo = lo.min(x);
                hi = hi.max(x);
            }
        }
        if n == 1 {
            lo = hull[0].0;
            hi = hull[0].0;
        }
        if lo > hi {
            continue;
        }
        // Tolerance keeps the pixels the hull passes through exactly.
        let a = (lo - 1e-6).ceil().max(0.0);
        let b = (hi + 1e-6).floor().min(ni as f64 - 1.0);
        if a > b {
            continue;
        }
        let row = &mut out[j * ni..(j + 1) * ni];
        row[a as usize..=b as usize].fill(true);
    }
    out
}

/// Andrew's monotone chain: the hull's vertices, counter-clockwise, without
/// collinear points (one point, or two, when that is all there is).
fn convex_hull(mut pts: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    pts.dedup();
    if pts.len() < 3 {
        return pts;
    }
    let cross = |o: (f64, f64), a: (f64, f64), b: (f64, f64)| {
        (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
    };
    let mut lower: Vec<(f64, f64)> = Vec::new();
    for &p in &pts {
        while lower.len() >= 2 && cross(lower[lower.len() - 2], lower[lower.len() - 1], p) <= 0.0 {
            lower.pop();
        }
        lower.push(p);
    }
    let mut upper: Vec<(f64, f64)> = Vec::new();
    for &p in pts.iter().rev() {
        while upper.len() >= 2 && cross(upper[upper.len() - 2], upper[upper.len() - 1], p) <= 0.0 {
            upper.pop();
        }
        upper.push(p);
    }
    lower.pop();
    upper.pop();
    lower.extend(upper);
    lower
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Label;
    use crate::preprocess::resample::{Interp, resample_to_spacing};
    use crate::synth::{PhantomConfig, generate};

    #[test]
    fn hull_of_an_l_shape_fills_its_notch_and_nothing_beyond() {
        // An L: column 2..=3 for rows 0..=5, and row 5 for columns 2..=7.
        let (ni, nj) = (10, 8);
        let mut rows = vec![None; nj];
        for r in rows.iter_mut().take(5) {
            *r = Some((2.0, 3.0));
        }
        rows[5] = Some((2.0, 7.0));
        let m = fill_hull(&rows, ni, nj);
        let at = |i: usize, j: usize| m[i + ni * j];
        // The notch between the arms is in (the triangle (3,0),(7,5),(2,5)).
        assert!(at(5, 4) && at(4, 3));
        // Beyond the diagonal from (3,0) to (7,5), and outside rows 0..=5.
        assert!(!at(7, 2) && !at(6, 1));
        assert!((0..ni).all(|i| !at(i, 6) && !at(i, 7)));
        assert!(!at(1, 3) && !at(8, 5));
        // Exactly the convex set: row 5 is 2..=7.
        assert_eq!((0..ni).filter(|&i| at(i, 5)).count(), 6);
    }

    #[test]
    fn hull_handles_points_and_lines_and_clips_to_the_plane() {
        let (ni, nj) = (6, 4);
        let mut rows = vec![None; nj];
        rows[1] = Some((2.0, 2.0));
        assert_eq!(fill_hull(&rows, ni, nj).iter().filter(|&&b| b).count(), 1);
        rows[1] = Some((-3.0, 9.0));
        let m = fill_hull(&rows, ni, nj);
        assert_eq!(m.iter().filter(|&&b| b).count(), ni, "clipped row");
        assert!(fill_hull(&vec![None; nj], ni, nj).iter().all(|&b| !b));
    }

    /// Truth lesion voxels inside the region, and how much of the region is
    /// not lung, on the phantoms' own grid.
    #[test]
    fn covers_the_lesions_of_phantoms_and_stays_in_the_chest() {
        let cfg = PhantomConfig::scaled(0.5).unwrap();
        let (mut lesion, mut covered) = (0u64, 0u64);
        for (n, label) in [
            Label::Cap,
            Label::Cap,
            Label::Covid,
            Label::Cap,
            Label::Healthy,
        ]
        .into_iter()
        .enumerate()
        {
            let p = generate(label, 300 + n as u64, &cfg).unwrap();
            // On the shipped model's grid, where the region is used.
            let grid = |v: &Volume| {
                let (c, _) = v.to_canonical();
                resample_to_spacing(&c, [3.2, 3.2, 5.0], Interp::Linear).unwrap()
            };
            let (ct, mask, lungs) = (grid(&p.image), grid(&p.mask), grid(&p.lungs));
            let r = lung_region(&ct, &LungRegionConfig::default()).unwrap();
            let (mut l_in, mut l_all, mut s_les, mut s_cov) = (0u64, 0u64, 0u64, 0u64);
            let mut classical = 0u64;
            for (((&m, &l), &g), &c) in r
                .mask
                .iter()
                .zip(lungs.data())
                .zip(mask.data())
                .zip(&r.lungs.mask)
            {
                if g > 0.5 {
                    s_les += 1;
                    s_cov += u64::from(m);
                    classical += u64::from(c > 0);
                }
                if l > 0.5 {
                    l_all += 1;
                    l_in += u64::from(m);
                }
            }
            eprintln!(
                "{label:?} seed {}: lesion {s_cov}/{s_les} (classical lung mask {classical}), \
                 lung {l_in}/{l_all}, region {}",
                300 + n,
                r.voxels
            );
            lesion += s_les;
            covered += s_cov;
            // The region holds both true lungs almost entirely, and is not
            // much larger than them (these half-size phantoms have small
            // lungs, for which the 5 mm margin weighs most).
            assert!(
                l_in as f64 / l_all as f64 > 0.99,
                "lung coverage {l_in}/{l_all}"
            );
            assert!(
                (r.voxels as f64) < 2.5 * l_all as f64,
                "region {} voxels for {l_all} lung voxels",
                r.voxels
            );
        }
        assert!(lesion > 0);
        let frac = covered as f64 / lesion as f64;
        assert!(frac > 0.98, "lesion coverage {frac}");
    }
}
