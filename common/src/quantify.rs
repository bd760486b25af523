//! Per-scan lesion quantification: a lesion table and lung involvement.
//!
//! [`quantify`] takes a CT in HU and a lesion mask on the same grid (a
//! prediction or a ground truth; voxels above 0.5 are lesion) and measures:
//!
//! - **Lesions**: the 26-connected components of the mask
//!   ([`crate::labeling::label`]), each with its volume, centroid in world
//!   RAS mm, bounding box in the caller's voxel indices, mean and standard
//!   deviation of HU, and the lung it lies in. Components touching the
//!   scan's border are measured like any other: what is inside the scan is
//!   counted in full (some tools report such lesions as volume 0 because
//!   they cannot close their surface; a volume needs no closed surface).
//! - **Lungs**: the classical lung mask of [`crate::preprocess::lung`],
//!   computed on the canonical (RAS) copy of the CT, so the input may be in
//!   any orientation; it is brought back onto the caller's grid exactly with
//!   [`crate::volume::Reorientation::undo`].
//! - **Involvement**: lesion voxels over lung voxels, for both lungs and per
//!   lung, in percent, where the *lung region* is the lung mask plus the
//!   voxels of every lesion assigned to one lung (see below). Voxels of
//!   lesions that touch no lung (or straddle both) count in
//!   `total_lesion_ml` but not in the lung region or the percentages.
//! - **Severity**: a zonal CT severity score, see [`SeverityZones`].
//!
//! When no lungs are found (a cropped scan, a phantom without air, a scan
//! that is not a chest) the lesion table is still returned and every
//! lung-derived field is `None`, with a `tracing` warning: one odd scan in a
//! cohort should still yield its lesion volumes. Other lung-mask errors
//! (settings out of range) are returned.
//!
//! Which lung a lesion is in ([`LesionSide`]): `Outside` when none of its
//! voxels is inside the lung mask; otherwise `Left` or `Right` when that
//! lung holds at least [`SIDE_MAJORITY`] of its in-lung voxels, and `Both`
//! when neither does (a lesion bridging the lungs, usually two lesions
//! merged through the mediastinum by a sloppy mask). Any overlap suffices,
//! rather than a majority of the lesion, because the HU-threshold lung mask
//! leaves out dense consolidation: on the CAP phantoms it covers only 4-16 %
//! of a lobar consolidation (its aerated rim and bronchograms), so a
//! majority rule would call nearly every consolidation `Outside`.
//! [`Lesion::in_lung_fraction`] says how much of each lesion the mask covers.
//!
//! The same limitation is why the lung region adds the assigned lesions:
//! with the bare lung mask, a 400 mL consolidation counted as 16 mL of
//! involvement (0.4 % instead of about 10 %). Lesion voxels are lung
//! pathology by construction of the lesion mask, so adding them back is the
//! usual remedy; the cost is that a false-positive lesion touching a lung
//! enlarges that lung. `lung_ml` and its per-side values are this region.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::labeling::{Connectivity, Labels, label};
use crate::preprocess::lung::{LEFT, LungMaskConfig, RIGHT, lung_mask};
use crate::volume::{Reorientation, Volume, check_same_grid};

/// Fraction of a lesion's in-lung voxels one lung must hold for the lesion
/// to be assigned to that lung rather than to [`LesionSide::Both`].
pub const SIDE_MAJORITY: f64 = 0.8;

/// Where a lesion lies relative to the lung mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LesionSide {
    /// In the patient's left lung.
    Left,
    /// In the patient's right lung.
    Right,
    /// Spread over both lungs, neither holding [`SIDE_MAJORITY`].
    Both,
    /// No voxel inside the lung mask.
    Outside,
}

/// One connected lesion.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Lesion {
    /// 1-based rank by volume (1 is the largest lesion).
    pub id: u32,
    /// Volume in mL.
    pub volume_ml: f64,
    /// Voxel count.
    pub voxels: u64,
    /// Centroid of its voxel centres in world RAS mm (independent of the
    /// grid's orientation).
    pub centroid_mm: [f64; 3],
    /// Smallest voxel index along i, j, k on the caller's grid.
    pub bbox_min: [usize; 3],
    /// Largest voxel index along i, j, k on the caller's grid (inclusive).
    pub bbox_max: [usize; 3],
    /// Mean CT value in HU.
    pub mean_hu: f64,
    /// Population standard deviation of the CT values in HU.
    pub std_hu: f64,
    /// Which lung it lies in (see the module documentation for the rule);
    /// `None` when no lungs were found.
    pub side: Option<LesionSide>,
    /// Fraction of its voxels inside the lung mask; `None` when no lungs
    /// were found.
    pub in_lung_fraction: Option<f64>,
}

/// Zonal severity scores: each lung is cut into upper, middle and lower
/// thirds of its own superior-inferior extent (equal slice counts), and
/// each of the six zones is scored by the percentage of its voxels that are
/// lesion: 0 for none, 1 below 5 %, 2 for 5-25 %, 3 for 25-50 %, 4 for
/// 50-75 %, 5 above 75 % ([`zone_score`]).
///
/// This follows the widely used lobar CT severity score of COVID-19
/// pneumonia (Chung et al., Radiology 2020; Pan et al., Radiology 2020),
/// which scores the five lobes 0-5 with these bins for a total of 0-25.
/// Lobes are not segmented here, so six height zones stand in for them and
/// the total runs 0-30: an approximation, comparable between scans of this
/// tool but not to radiologists' lobar scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SeverityZones {
    /// Left lung: upper, middle, lower zone.
    pub left: [u8; 3],
    /// Right lung: upper, middle, lower zone.
    pub right: [u8; 3],
}

impl SeverityZones {
    /// The total score, 0-30.
    pub fn total(&self) -> u8 {
        self.left.iter().chain(&self.right).sum()
    }
}

/// What [`quantify`] measures for one scan.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ScanQuantification {
    /// Lesions, largest first (ties by first voxel in raster order).
    pub lesions: Vec<Lesion>,
    /// Number of lesions.
    pub lesion_count: usize,
    /// All lesion voxels in mL, inside the lungs or not.
    pub total_lesion_ml: f64,
    /// Both lungs in mL (the lung region: lung mask plus the lesions
    /// assigned to a lung); `None` when no lungs were found.
    pub lung_ml: Option<f64>,
    /// Left lung in mL.
    pub left_lung_ml: Option<f64>,
    /// Right lung in mL.
    pub right_lung_ml: Option<f64>,
    /// Lesion voxels inside the lung region, in mL.
    pub lesion_in_lung_ml: Option<f64>,
    /// `lesion_in_lung_ml` over `lung_ml`, in percent.
    pub percent_lung_involved: Option<f64>,
    /// The same for the left lung alone.
    pub percent_left_involved: Option<f64>,
    /// The same for the right lung alone.
    pub percent_right_involved: Option<f64>,
    /// Zonal severity score 0-30 ([`SeverityZones::total`]).
    pub severity_score: Option<u8>,
    /// The six zone scores behind `severity_score`.
    pub severity_zones: Option<SeverityZones>,
}

/// Score of one zone from its percentage of lesion voxels (see
/// [`SeverityZones`]).
pub fn zone_score(percent: f64) -> u8 {
    if percent.is_nan() || percent <= 0.0 {
        0
    } else if percent < 5.0 {
        1
    } else if percent < 25.0 {
        2
    } else if percent < 50.0 {
        3
    } else if percent <= 75.0 {
        4
    } else {
        5
    }
}

/// Running sums of one component.
#[derive(Debug, Clone, Copy)]
struct Acc {
    n: u64,
    sum_idx: [f64; 3],
    sum_hu: f64,
    min: [usize; 3],
    max: [usize; 3],
    /// Voxels in the left and right lung.
    lung: [u64; 2],
}

impl Acc {
    const EMPTY: Acc = Acc {
        n: 0,
        sum_idx: [0.0; 3],
        sum_hu: 0.0,
        min: [usize::MAX; 3],
        max: [0; 3],
        lung: [0; 2],
    };

    fn merge(&mut self, o: &Acc) {
        self.n += o.n;
        for d in 0..3 {
            self.sum_idx[d] += o.sum_idx[d];
            self.min[d] = self.min[d].min(o.min[d]);
            self.max[d] = self.max[d].max(o.max[d]);
        }
        self.sum_hu += o.sum_hu;
        self.lung[0] += o.lung[0];
        self.lung[1] += o.lung[1];
    }
}

/// Measures the lesions of `lesion_mask` (voxels > 0.5) on the CT `ct_hu`
/// and the lungs' involvement; see the module documentation.
///
/// Both volumes must be on the same grid (same dims, affines equal within
/// 1e-4 mm), in any orientation; otherwise [`Error::InvalidArgument`]
/// naming both grids. Lung-derived fields are `None` when no lungs are
/// found; invalid `cfg` settings are an error.
pub fn quantify(
    ct_hu: &Volume,
    lesion_mask: &Volume,
    cfg: &LungMaskConfig,
) -> Result<ScanQuantification> {
    check_same_grid(ct_hu, lesion_mask, "CT", "lesion mask")?;
    let lungs = lungs_on_grid(ct_hu, cfg)?;
    quantify_with_lungs(ct_hu, lesion_mask, lungs.as_ref())
}

/// The classical lung mask of a CT on the CT's own grid, in any
/// orientation ([`LEFT`], [`RIGHT`] or 0 per voxel); `None`, with a
/// `tracing` warning, when no lungs are found. Computed once, it serves
/// both [`lesions_touching_lungs`] and [`quantify_with_lungs`].
pub fn lungs_on_grid(ct_hu: &Volume, cfg: &LungMaskConfig) -> Result<Option<LungLabels>> {
    // The lung mask needs axial slices along k, so it is computed on the
    // canonical orientation (a copy only when the CT is not canonical
    // already) and brought back onto the caller's grid exactly.
    let (canon_ct, reo) = ct_hu.canonical();
    match lung_mask(&canon_ct, cfg) {
        Ok(lm) => Ok(Some(LungLabels {
            labels: reo.undo_vec(lm.mask, lm.dims)?,
            canon_dims: canon_ct.dims(),
            dims: ct_hu.dims(),
            reo,
        })),
        Err(Error::Unsupported(why)) => {
            tracing::warn!("quantify: {why}; lung-derived measures are left empty");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The lung mask of [`lungs_on_grid`].
#[derive(Debug, Clone)]
pub struct LungLabels {
    /// One value per voxel of the CT's grid (`i` fastest): [`LEFT`],
    /// [`RIGHT`] or 0.
    pub labels: Vec<u8>,
    /// Voxel counts of the CT's grid.
    pub dims: [usize; 3],
    /// Voxel counts of the canonical (RAS) copy the mask was computed on,
    /// whose `k` axis runs from the feet to the head.
    canon_dims: [usize; 3],
    /// From the CT's grid to the canonical one.
    reo: Reorientation,
}

/// Keeps the connected components (26-connected, as [`quantify`] counts
/// lesions) of `lesion_mask` that have at least one voxel in the lung mask,
/// and returns the kept mask with the number of voxels removed.
///
/// COVID-19 and pneumonia lesions are lung parenchyma: even a dense lobar
/// consolidation, which the HU-threshold lung mask mostly leaves out,
/// keeps some aerated lung inside or along it (4-16 % of the phantoms'
/// large consolidations lie in the mask). A predicted component that
/// touches no aerated lung at all lies in the heart, the pericardial fat or
/// below the diaphragm, which is where a model sees lung-like patterns in
/// real scans; see README, "Lesions belong to the lungs".
pub fn lesions_touching_lungs(lesion_mask: &Volume, lungs: &LungLabels) -> Result<(Volume, u64)> {
    let (kept, removed) = components_touching_lungs(lesion_components(lesion_mask)?, lungs)?;
    Ok((components_mask(&kept, lesion_mask)?, removed))
}

/// The lesion mask (1 on every component, 0 elsewhere) of `lesions` on the
/// grid of `like`: the inverse of [`lesion_components`].
pub fn components_mask(lesions: &Labels, like: &Volume) -> Result<Volume> {
    like.with_data(
        lesions
            .labels
            .par_iter()
            .map(|&l| f32::from(l != 0))
            .collect(),
    )
}

/// The lesions of a mask: its 26-connected components of voxels above
/// 0.5, as [`quantify`] counts them.
pub fn lesion_components(lesion_mask: &Volume) -> Result<Labels> {
    let fg: Vec<bool> = lesion_mask.data().par_iter().map(|&v| v > 0.5).collect();
    label(&fg, lesion_mask.dims(), Connectivity::TwentySix)
}

/// [`lesions_touching_lungs`] on components already labelled
/// ([`lesion_components`]): the kept components, renumbered in order, and
/// the number of voxels removed.
pub fn components_touching_lungs(lesions: Labels, lungs: &LungLabels) -> Result<(Labels, u64)> {
    if lesions.dims != lungs.dims {
        return Err(Error::InvalidArgument(format!(
            "lesion mask of {:?} voxels vs a lung mask of {:?}",
            lesions.dims, lungs.dims
        )));
    }
    let mut touches = vec![false; lesions.count + 1];
    for (&l, &lung) in lesions.labels.iter().zip(&lungs.labels) {
        if l != 0 && lung != 0 {
            touches[l as usize] = true;
        }
    }
    let removed: u64 = (1..=lesions.count)
        .filter(|&l| !touches[l])
        .map(|l| lesions.sizes[l])
        .sum();
    Ok((lesions.retain(&touches)?, removed))
}

/// [`quantify`] with the lung mask computed already ([`lungs_on_grid`];
/// `None` when no lungs were found).
pub fn quantify_with_lungs(
    ct_hu: &Volume,
    lesion_mask: &Volume,
    lungs: Option<&LungLabels>,
) -> Result<ScanQuantification> {
    check_same_grid(ct_hu, lesion_mask, "CT", "lesion mask")?;
    quantify_components(ct_hu, &lesion_components(lesion_mask)?, lungs)
}

/// [`quantify_with_lungs`] on lesions already labelled on the CT's grid
/// ([`lesion_components`], [`components_touching_lungs`]), so a caller
/// that filtered them does not label the mask again.
pub fn quantify_components(
    ct_hu: &Volume,
    labels: &Labels,
    lungs: Option<&LungLabels>,
) -> Result<ScanQuantification> {
    let dims = ct_hu.dims();
    let grids = [("lesion labels", labels.dims)]
        .into_iter()
        .chain(lungs.map(|l| ("lung mask", l.dims)));
    for (what, d) in grids {
        if d != dims {
            return Err(Error::InvalidArgument(format!(
                "{what} of {d:?} voxels vs a CT of {dims:?}"
            )));
        }
    }
    let [ni, nj, _] = dims;
    let plane = ni * nj;
    let voxel_ml = ct_hu.voxel_volume_mm3() / 1000.0;
    let count = labels.count;
    let hu = ct_hu.data();
    let lung_src = lungs.map(|l| l.labels.as_slice());

    // First pass: counts, index sums, HU sums, extents, lung voxels.
    let accs = labels
        .labels
        .par_chunks(plane)
        .enumerate()
        .fold(
            || vec![Acc::EMPTY; count + 1],
            |mut accs, (k, slab)| {
                for (p, &l) in slab.iter().enumerate() {
                    if l == 0 {
                        continue;
                    }
                    let (i, j) = (p % ni, p / ni);
                    let v = k * plane + p;
                    let a = &mut accs[l as usize];
                    a.n += 1;
                    let ijk = [i, j, k];
                    for d in 0..3 {
                        a.sum_idx[d] += ijk[d] as f64;
                        a.min[d] = a.min[d].min(ijk[d]);
                        a.max[d] = a.max[d].max(ijk[d]);
                    }
                    a.sum_hu += hu[v] as f64;
                    if let Some(ls) = lung_src {
                        match ls[v] {
                            LEFT => a.lung[0] += 1,
                            RIGHT => a.lung[1] += 1,
                            _ => {}
                        }
                    }
                }
                accs
            },
        )
        .reduce(
            || vec![Acc::EMPTY; count + 1],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| x.merge(y));
                a
            },
        );
    let means: Vec<f64> = accs.iter().map(|a| a.sum_hu / a.n.max(1) as f64).collect();
    // Second pass: squared deviations from the mean (numerically safer
    // than a sum of squares for HU values far from zero).
    let sq = labels
        .labels
        .par_iter()
        .zip(hu.par_iter())
        .fold(
            || vec![0f64; count + 1],
            |mut s, (&l, &h)| {
                if l != 0 {
                    let d = h as f64 - means[l as usize];
                    s[l as usize] += d * d;
                }
                s
            },
        )
        .reduce(
            || vec![0f64; count + 1],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );

    let affine = ct_hu.affine();
    let mut lesions: Vec<Lesion> = (1..=count)
        .map(|l| {
            let a = &accs[l];
            let n = a.n as f64;
            let side = lungs.map(|_| {
                let inside = a.lung[0] + a.lung[1];
                if inside == 0 {
                    LesionSide::Outside
                } else if a.lung[0] as f64 >= SIDE_MAJORITY * inside as f64 {
                    LesionSide::Left
                } else if a.lung[1] as f64 >= SIDE_MAJORITY * inside as f64 {
                    LesionSide::Right
                } else {
                    LesionSide::Both
                }
            });
            Lesion {
                id: l as u32,
                volume_ml: a.n as f64 * voxel_ml,
                voxels: a.n,
                centroid_mm: affine.apply(a.sum_idx.map(|s| s / n)),
                bbox_min: a.min,
                bbox_max: a.max,
                mean_hu: means[l],
                std_hu: (sq[l] / n).sqrt(),
                side,
                in_lung_fraction: lungs.map(|_| (a.lung[0] + a.lung[1]) as f64 / n),
            }
        })
        .collect();
    // Which lung each label was assigned to (0: none), before sorting
    // while the lesions are still indexed by label.
    let side_of: Vec<u8> = std::iter::once(0)
        .chain(lesions.iter().map(|l| match l.side {
            Some(LesionSide::Left) => LEFT,
            Some(LesionSide::Right) => RIGHT,
            _ => 0,
        }))
        .collect();
    // Stable sort keeps raster order among equal volumes.
    lesions.sort_by_key(|l| std::cmp::Reverse(l.voxels));
    for (rank, l) in lesions.iter_mut().enumerate() {
        l.id = rank as u32 + 1;
    }
    let total_voxels: u64 = labels.sizes.iter().skip(1).sum();

    let mut q = ScanQuantification {
        lesion_count: count,
        lesions,
        total_lesion_ml: total_voxels as f64 * voxel_ml,
        lung_ml: None,
        left_lung_ml: None,
        right_lung_ml: None,
        lesion_in_lung_ml: None,
        percent_lung_involved: None,
        percent_left_involved: None,
        percent_right_involved: None,
        severity_score: None,
        severity_zones: None,
    };
    if let Some(LungLabels {
        labels: lung_src,
        reo,
        canon_dims,
        ..
    }) = lungs
    {
        // The lung region: the lung mask plus the voxels of lesions
        // assigned to one lung (the threshold mask leaves consolidation
        // out). Measured on the canonical grid, where k runs inferior to
        // superior and the zones are slabs of k.
        let region: Vec<u8> = lung_src
            .par_iter()
            .zip(labels.labels.par_iter())
            .map(|(&m, &l)| if m != 0 { m } else { side_of[l as usize] })
            .collect();
        let canon_region = reo.apply_voxels(&region)?;
        let fg: Vec<bool> = labels.labels.par_iter().map(|&l| l != 0).collect();
        let canon_fg = reo.apply_voxels(&fg)?;
        let (counts, zones) = region_measures(&canon_region, &canon_fg, *canon_dims);
        let [left, right] = counts;
        let pct = |les: u64, lung: u64| {
            if lung == 0 {
                0.0
            } else {
                les as f64 / lung as f64 * 100.0
            }
        };
        q.lung_ml = Some((left[0] + right[0]) as f64 * voxel_ml);
        q.left_lung_ml = Some(left[0] as f64 * voxel_ml);
        q.right_lung_ml = Some(right[0] as f64 * voxel_ml);
        q.lesion_in_lung_ml = Some((left[1] + right[1]) as f64 * voxel_ml);
        q.percent_lung_involved = Some(pct(left[1] + right[1], left[0] + right[0]));
        q.percent_left_involved = Some(pct(left[1], left[0]));
        q.percent_right_involved = Some(pct(right[1], right[0]));
        q.severity_score = Some(zones.total());
        q.severity_zones = Some(zones);
    }
    Ok(q)
}

/// Lung and lesion voxels per lung (`[[lung, lesion]; left, right]`) and
/// the zone scores, from a canonical lung-region label volume (0,
/// [`LEFT`], [`RIGHT`]) and the canonical lesion mask.
fn region_measures(
    region: &[u8],
    lesion: &[bool],
    dims: [usize; 3],
) -> ([[u64; 2]; 2], SeverityZones) {
    let [ni, nj, nk] = dims;
    let plane = ni * nj;
    // Per slice and lung: lung voxels and lesion voxels inside them.
    let per_slice: Vec<[[u64; 2]; 2]> = region
        .par_chunks(plane)
        .zip(lesion.par_chunks(plane))
        .map(|(m, f)| {
            let mut c = [[0u64; 2]; 2];
            for (&s, &x) in m.iter().zip(f) {
                let side = match s {
                    LEFT => 0,
                    RIGHT => 1,
                    _ => continue,
                };
                c[side][0] += 1;
                c[side][1] += x as u64;
            }
            c
        })
        .collect();
    let mut totals = [[0u64; 2]; 2];
    let mut out = [[0u8; 3]; 2];
    for side in 0..2 {
        for c in &per_slice {
            totals[side][0] += c[side][0];
            totals[side][1] += c[side][1];
        }
        let present: Vec<usize> = (0..nk).filter(|&k| per_slice[k][side][0] > 0).collect();
        let (Some(&lo), Some(&hi)) = (present.first(), present.last()) else {
            continue;
        };
        let height = hi - lo + 1;
        // Zone 0 is the lowest third in k (inferior); reported upper first.
        let mut zc = [[0u64; 2]; 3];
        for k in lo..=hi {
            let z = ((k - lo) * 3 / height).min(2);
            zc[z][0] += per_slice[k][side][0];
            zc[z][1] += per_slice[k][side][1];
        }
        for z in 0..3 {
            let [lung, les] = zc[z];
            let pct = if lung == 0 {
                0.0
            } else {
                les as f64 / lung as f64 * 100.0
            };
            out[side][2 - z] = zone_score(pct);
        }
    }
    (
        totals,
        SeverityZones {
            left: out[0],
            right: out[1],
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Label;
    use crate::synth::{PhantomConfig, generate};
    use crate::volume::Affine;

    const DIMS: [usize; 3] = [12, 10, 8];
    const SPACING: [f64; 3] = [0.5, 0.7, 2.0];
    const ORIGIN: [f64; 3] = [-10.0, 20.0, 5.0];

    /// Voxels of the hand-built lesions: two cubes touching at one corner
    /// (one lesion under 26-connectivity) and a block on three borders.
    fn cubes() -> (Vec<[usize; 3]>, Vec<[usize; 3]>) {
        let mut a = Vec::new();
        for k in 1..=2 {
            for j in 1..=3 {
                for i in 1..=3 {
                    a.push([i, j, k]);
                }
            }
        }
        for j in 4..=5 {
            for i in 4..=5 {
                a.push([i, j, 3]);
            }
        }
        let mut b = Vec::new();
        for k in 5..=7 {
            for j in 0..=1 {
                for i in 9..=11 {
                    b.push([i, j, k]);
                }
            }
        }
        (a, b)
    }

    fn hu_at(i: usize, j: usize, k: usize) -> f32 {
        // Varies along all three axes so means and deviations are not
        // trivially equal between lesions.
        (13 * i) as f32 - (7 * j * j) as f32 + (40 * k) as f32 - 600.0
    }

    fn hand_built() -> (Volume, Volume) {
        let affine = Affine::from_spacing_origin(SPACING, ORIGIN);
        let mut ct = Volume::filled(0.0, DIMS, affine).unwrap();
        for k in 0..DIMS[2] {
            for j in 0..DIMS[1] {
                for i in 0..DIMS[0] {
                    let v = ct.index(i, j, k);
                    ct.data_mut()[v] = hu_at(i, j, k);
                }
            }
        }
        let mut mask = Volume::filled(0.0, DIMS, affine).unwrap();
        let (a, b) = cubes();
        for [i, j, k] in a.into_iter().chain(b) {
            let v = mask.index(i, j, k);
            mask.data_mut()[v] = 1.0;
        }
        (ct, mask)
    }

    /// The same volume stored with i and j reversed and an LPS-like affine.
    fn to_lps(v: &Volume) -> Volume {
        let [ni, nj, _] = v.dims();
        let mut a = *v.affine();
        for r in 0..3 {
            a.0[r][3] += a.0[r][0] * (ni - 1) as f64 + a.0[r][1] * (nj - 1) as f64;
            a.0[r][0] = -a.0[r][0];
            a.0[r][1] = -a.0[r][1];
        }
        let mut data = v.data().to_vec();
        data.chunks_mut(ni * nj).for_each(|s| s.reverse());
        Volume::new(data, v.dims(), a).unwrap()
    }

    /// Expected volume, centroid, bbox, mean and std of a voxel list.
    fn expect(vox: &[[usize; 3]], affine: &Affine) -> (u64, [f64; 3], [usize; 6], f64, f64) {
        let n = vox.len() as f64;
        let mut c = [0.0; 3];
        let mut bb = [usize::MAX, usize::MAX, usize::MAX, 0, 0, 0];
        let mut s = 0.0;
        for &[i, j, k] in vox {
            let w = affine.apply([i as f64, j as f64, k as f64]);
            for d in 0..3 {
                c[d] += w[d] / n;
                bb[d] = bb[d].min([i, j, k][d]);
                bb[d + 3] = bb[d + 3].max([i, j, k][d]);
            }
            s += hu_at(i, j, k) as f64;
        }
        let mean = s / n;
        let var = vox
            .iter()
            .map(|&[i, j, k]| (hu_at(i, j, k) as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        (vox.len() as u64, c, bb, mean, var.sqrt())
    }

    #[test]
    fn hand_built_lesions_are_measured_exactly() {
        let (ct, mask) = hand_built();
        let q = quantify(&ct, &mask, &LungMaskConfig::default()).unwrap();
        assert_eq!(q.lesion_count, 2, "diagonal cubes must be one lesion");
        let voxel_ml = 0.5 * 0.7 * 2.0 / 1000.0;
        let (a, b) = cubes();
        // Largest first: the two touching cubes (22 voxels), then the
        // border block (18 voxels), which must keep its full volume.
        for (les, vox) in q.lesions.iter().zip([&a, &b]) {
            let (n, c, bb, mean, std) = expect(vox, ct.affine());
            assert_eq!(les.voxels, n);
            assert!((les.volume_ml - n as f64 * voxel_ml).abs() < 1e-12);
            for d in 0..3 {
                assert!((les.centroid_mm[d] - c[d]).abs() < 1e-9, "{les:?}");
            }
            assert_eq!(les.bbox_min, [bb[0], bb[1], bb[2]]);
            assert_eq!(les.bbox_max, [bb[3], bb[4], bb[5]]);
            assert!((les.mean_hu - mean).abs() < 1e-9);
            assert!((les.std_hu - std).abs() < 1e-9);
            assert!(les.std_hu > 1.0);
        }
        assert_eq!(q.lesions[0].id, 1);
        assert_eq!(q.lesions[1].id, 2);
        assert_eq!(q.lesions[1].voxels, 18);
        assert_eq!(q.lesions[1].bbox_max, [11, 1, 7]);
        assert!((q.total_lesion_ml - 40.0 * voxel_ml).abs() < 1e-12);
        // No air in this volume: no lungs, and the table survives.
        assert_eq!(q.lung_ml, None);
        assert_eq!(q.percent_lung_involved, None);
        assert_eq!(q.severity_score, None);
        assert!(q.lesions.iter().all(|l| l.side.is_none()));
        // Serialises (the lung fields as null).
        let js = serde_json::to_string(&q).unwrap();
        assert!(js.contains("\"lung_ml\":null"), "{js}");
    }

    #[test]
    fn lesions_touching_no_lung_are_removed_and_true_lesions_kept() {
        let cfg = PhantomConfig::scaled(0.5).unwrap();
        for (label, seed) in [(Label::Covid, 11), (Label::Cap, 21), (Label::Cap, 22)] {
            let p = generate(label, seed, &cfg).unwrap();
            let lungs = lungs_on_grid(&p.image, &LungMaskConfig::default())
                .unwrap()
                .expect("a phantom has lungs");
            // Every true lesion, dense consolidations included, touches a lung.
            let (kept, removed) = lesions_touching_lungs(&p.mask, &lungs).unwrap();
            assert_eq!(removed, 0, "{label:?} seed {seed}");
            assert_eq!(kept.data(), p.mask.data());
            // A "lesion" in a corner of the scan, away from the lungs, goes.
            let mut fake = p.mask.clone();
            for k in 0..3 {
                for j in 0..3 {
                    for i in 0..3 {
                        let v = fake.index(i, j, k);
                        fake.data_mut()[v] = 1.0;
                    }
                }
            }
            let (kept, removed) = lesions_touching_lungs(&fake, &lungs).unwrap();
            assert_eq!(removed, 27);
            assert_eq!(kept.data(), p.mask.data());
            // Filtering labelled components (what the processor does) gives
            // the labels of the kept mask, numbered the same way.
            let (comps, removed) =
                components_touching_lungs(lesion_components(&fake).unwrap(), &lungs).unwrap();
            assert_eq!(removed, 27);
            assert_eq!(comps, lesion_components(&kept).unwrap());
            let from_comps = quantify_components(&p.image, &comps, Some(&lungs)).unwrap();
            assert_eq!(from_comps.lesion_count, comps.count);
            // Quantified with the same lungs, the result is quantify's (up
            // to the order of parallel float sums).
            let q = quantify_with_lungs(&p.image, &kept, Some(&lungs)).unwrap();
            let direct = quantify(&p.image, &p.mask, &LungMaskConfig::default()).unwrap();
            assert_eq!(q.lesion_count, direct.lesion_count);
            assert_eq!(q.severity_zones, direct.severity_zones);
            let sizes = |q: &ScanQuantification| -> Vec<u64> {
                q.lesions.iter().map(|l| l.voxels).collect()
            };
            assert_eq!(sizes(&q), sizes(&direct));
            for (a, b) in [
                (q.lung_ml, direct.lung_ml),
                (q.lesion_in_lung_ml, direct.lesion_in_lung_ml),
                (Some(q.total_lesion_ml), Some(direct.total_lesion_ml)),
            ] {
                assert!((a.unwrap() - b.unwrap()).abs() < 1e-6, "{a:?} {b:?}");
            }
        }
        let (_, mask) = hand_built();
        let p = generate(Label::Healthy, 3, &cfg).unwrap();
        let lungs = lungs_on_grid(&p.image, &LungMaskConfig::default())
            .unwrap()
            .unwrap();
        let e = lesions_touching_lungs(&mask, &lungs).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }

    #[test]
    fn lps_copy_gives_same_world_measures() {
        let (ct, mask) = hand_built();
        let q = quantify(&ct, &mask, &LungMaskConfig::default()).unwrap();
        let (ct2, mask2) = (to_lps(&ct), to_lps(&mask));
        assert_eq!(ct2.affine().axcodes(), "LPS");
        let q2 = quantify(&ct2, &mask2, &LungMaskConfig::default()).unwrap();
        assert_eq!(q.lesion_count, q2.lesion_count);
        let [ni, nj, _] = DIMS;
        for (a, b) in q.lesions.iter().zip(&q2.lesions) {
            assert_eq!(a.voxels, b.voxels);
            for d in 0..3 {
                assert!((a.centroid_mm[d] - b.centroid_mm[d]).abs() < 1e-9);
            }
            assert!((a.mean_hu - b.mean_hu).abs() < 1e-9);
            assert!((a.std_hu - b.std_hu).abs() < 1e-9);
            // Boxes are in each caller's own indices: i and j reversed.
            assert_eq!(b.bbox_min[0], ni - 1 - a.bbox_max[0]);
            assert_eq!(b.bbox_max[1], nj - 1 - a.bbox_min[1]);
            assert_eq!(b.bbox_min[2], a.bbox_min[2]);
        }
    }

    #[test]
    fn refuses_mismatched_grids_and_empty_mask_is_fine() {
        let (ct, mask) = hand_built();
        let other = Volume::filled(0.0, [12, 10, 9], *mask.affine()).unwrap();
        let e = quantify(&ct, &other, &LungMaskConfig::default()).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::InvalidArgument(_)), "{msg}");
        assert!(msg.contains("12x10x8") && msg.contains("12x10x9"), "{msg}");
        let shifted = Volume::new(
            mask.data().to_vec(),
            DIMS,
            Affine::from_spacing_origin(SPACING, [0.0; 3]),
        )
        .unwrap();
        assert!(matches!(
            quantify(&ct, &shifted, &LungMaskConfig::default()),
            Err(Error::InvalidArgument(_))
        ));
        let bad = LungMaskConfig {
            min_lung_ml: -1.0,
            ..LungMaskConfig::default()
        };
        assert!(quantify(&ct, &mask, &bad).is_err());
        let empty = Volume::filled(0.0, DIMS, *ct.affine()).unwrap();
        let q = quantify(&ct, &empty, &LungMaskConfig::default()).unwrap();
        assert_eq!(q.lesion_count, 0);
        assert_eq!(q.total_lesion_ml, 0.0);
    }

    #[test]
    fn zone_score_bins() {
        let cases = [
            (0.0, 0),
            (0.01, 1),
            (4.99, 1),
            (5.0, 2),
            (24.9, 2),
            (25.0, 3),
            (49.9, 3),
            (50.0, 4),
            (75.0, 4),
            (75.1, 5),
            (100.0, 5),
        ];
        for (p, s) in cases {
            assert_eq!(zone_score(p), s, "{p}%");
        }
    }

    /// Truth from the phantom's own lung labels (1 right, 2 left): lung
    /// voxels per side and lesion voxels inside each.
    fn truth(p: &crate::synth::Phantom) -> ([u64; 2], [u64; 2]) {
        let mut lung = [0u64; 2];
        let mut les = [0u64; 2];
        for (&l, &m) in p.lungs.data().iter().zip(p.mask.data()) {
            // Index 0 left, 1 right, as in the quantification.
            let s = match l as u8 {
                2 => 0,
                1 => 1,
                _ => continue,
            };
            lung[s] += 1;
            les[s] += (m > 0.5) as u64;
        }
        (lung, les)
    }

    #[test]
    fn covid_phantom_matches_truth() {
        let cfg = PhantomConfig::scaled(0.5).unwrap();
        for seed in [11, 12] {
            let p = generate(Label::Covid, seed, &cfg).unwrap();
            let q = quantify(&p.image, &p.mask, &LungMaskConfig::default()).unwrap();
            let vml = p.mask.voxel_volume_mm3() / 1000.0;
            let n = p.mask.data().iter().filter(|&&m| m > 0.5).count() as f64;
            assert!((q.total_lesion_ml - n * vml).abs() < 1e-9);
            let sum: f64 = q.lesions.iter().map(|l| l.volume_ml).sum();
            assert!((sum - q.total_lesion_ml).abs() < 1e-9);
            assert!(q.lesion_count >= 2, "seed {seed}: {}", q.lesion_count);
            assert!(q.lesions.windows(2).all(|w| w[0].voxels >= w[1].voxels));
            let sides: Vec<_> = q.lesions.iter().filter_map(|l| l.side).collect();
            assert!(
                sides.contains(&LesionSide::Left) && sides.contains(&LesionSide::Right),
                "seed {seed}: {sides:?}"
            );
            let (lung, les) = truth(&p);
            let lung_ml = (lung[0] + lung[1]) as f64 * vml;
            let got = q.lung_ml.unwrap();
            assert!(
                (got - lung_ml).abs() <= 0.15 * lung_ml,
                "seed {seed}: lungs {got} ml vs truth {lung_ml}"
            );
            let pct = (les[0] + les[1]) as f64 / (lung[0] + lung[1]) as f64 * 100.0;
            let gotp = q.percent_lung_involved.unwrap();
            assert!(
                (gotp - pct).abs() < 3.0,
                "seed {seed}: {gotp}% vs truth {pct}%"
            );
            for (s, got) in [q.percent_left_involved, q.percent_right_involved]
                .into_iter()
                .enumerate()
            {
                let t = les[s] as f64 / lung[s] as f64 * 100.0;
                let g = got.unwrap();
                assert!((g - t).abs() < 4.0, "seed {seed} side {s}: {g}% vs {t}%");
            }
            let zones = q.severity_zones.unwrap();
            // Lesions in both lungs: at least one scored zone per lung.
            assert!(zones.left.iter().any(|&z| z > 0), "{zones:?}");
            assert!(zones.right.iter().any(|&z| z > 0), "{zones:?}");
            assert_eq!(q.severity_score, Some(zones.total()));
            println!(
                "covid seed {seed} ({}): {} lesions, {:.1} ml, lungs {got:.0} ml vs {lung_ml:.0}, \
                 involved {gotp:.2}% vs {pct:.2}%, severity {zones:?}",
                p.params.axcodes, q.lesion_count, q.total_lesion_ml
            );

            // The same scan stored the other way round measures the same.
            let q2 = quantify(
                &to_lps(&p.image),
                &to_lps(&p.mask),
                &LungMaskConfig::default(),
            )
            .unwrap();
            assert_eq!(q.lesion_count, q2.lesion_count);
            for (a, b) in q.lesions.iter().zip(&q2.lesions) {
                assert_eq!(a.voxels, b.voxels);
                for d in 0..3 {
                    assert!((a.centroid_mm[d] - b.centroid_mm[d]).abs() < 1e-6);
                }
                assert_eq!(a.side, b.side);
            }
            assert_eq!(q.lung_ml, q2.lung_ml);
            assert_eq!(q.severity_score, q2.severity_score);
        }
    }

    #[test]
    fn cap_phantom_is_mostly_one_sided() {
        use crate::synth::LungSide;
        let cfg = PhantomConfig::scaled(0.5).unwrap();
        for seed in 21..=25 {
            let p = generate(Label::Cap, seed, &cfg).unwrap();
            let q = quantify(&p.image, &p.mask, &LungMaskConfig::default()).unwrap();
            assert!(q.lesion_count >= 1);
            let mut per = [0.0f64; 2];
            for l in &q.lesions {
                match l.side {
                    Some(LesionSide::Left) => per[0] += l.volume_ml,
                    Some(LesionSide::Right) => per[1] += l.volume_ml,
                    _ => {}
                }
            }
            let major = per[0].max(per[1]) / q.total_lesion_ml;
            assert!(
                major >= 0.8,
                "seed {seed}: not one-sided: {per:?} of {}",
                q.total_lesion_ml
            );
            // The largest lesion is the dense consolidation, in the lung
            // the phantom painted it in.
            let big = &q.lesions[0];
            assert!(big.mean_hu > -300.0, "seed {seed}: {big:?}");
            let painted = p
                .params
                .lesions
                .iter()
                .max_by_key(|l| l.voxels)
                .unwrap()
                .lung;
            let want = match painted {
                LungSide::Left => LesionSide::Left,
                LungSide::Right => LesionSide::Right,
            };
            assert_eq!(big.side, Some(want), "seed {seed}: {big:?}");
            // With the assigned lesions added to the lung region, the
            // consolidation counts in full towards involvement.
            let (lung, les) = truth(&p);
            let vml = p.mask.voxel_volume_mm3() / 1000.0;
            let lung_ml = (lung[0] + lung[1]) as f64 * vml;
            let got = q.lung_ml.unwrap();
            assert!(
                (got - lung_ml).abs() <= 0.15 * lung_ml,
                "seed {seed}: lungs {got} ml vs truth {lung_ml}"
            );
            let t = (les[0] + les[1]) as f64 / (lung[0] + lung[1]) as f64 * 100.0;
            let g = q.percent_lung_involved.unwrap();
            assert!((g - t).abs() < 3.0, "seed {seed}: {g}% vs truth {t}%");
            println!(
                "cap seed {seed}: largest {:.1} ml, {:.1}% in lung mask; involved {:.2}% \
                 vs truth {t:.2}% (lesion in lung {:.1} of {:.1} ml), severity {:?}",
                big.volume_ml,
                big.in_lung_fraction.unwrap() * 100.0,
                q.percent_lung_involved.unwrap(),
                q.lesion_in_lung_ml.unwrap(),
                q.total_lesion_ml,
                q.severity_zones.unwrap()
            );
        }
    }
}
