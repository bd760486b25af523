//! Classical lung segmentation from HU thresholds.
//!
//! [`lung_mask`] works on a CT volume in HU whose voxel axis `k` is the
//! patient's long axis (so `k` slices are axial), which
//! [`Volume::to_canonical`] guarantees. Steps:
//!
//! 1. **Threshold**: voxels below [`LungMaskConfig::threshold_hu`] are
//!    air-like.
//! 2. **Drop outside air**: air connected to the *side* faces of the volume
//!    (`i` and `j` faces) is outside the body. Each axial slice is flooded
//!    from its edge in parallel, and a 3D flood then follows the removed air
//!    across slices (air under the arms, around the table). The top and
//!    bottom faces are deliberately not seeds: the trachea often leaves the
//!    volume through the top slice and would otherwise carry both lungs away
//!    with the outside air.
//! 3. **Components**: the remaining air is labelled with 6-connectivity
//!    (which keeps thin partial-volume junctions from merging the lungs)
//!    inside its bounding box. Components of at least
//!    [`LungMaskConfig::min_lung_ml`] are candidates.
//! 4. **Split or pair**: the lungs are usually one component, joined through
//!    the trachea and main bronchi or the anterior junction. The column
//!    histogram (voxels per `i`) of the largest candidate is searched for a
//!    trough in the middle third of its extent; if the trough is deeper than
//!    [`LungMaskConfig::split_trough_ratio`] of the smaller of the two
//!    peaks, the component is cut along that sagittal column. Otherwise the
//!    largest candidate is one lung and the other is the largest remaining
//!    candidate whose centroid lies across the body's centre. Airway
//!    voxels joined to a lung stay in it (a few percent of lung volume).
//! 5. **Fill and close in-plane**: per axial slice and per lung, holes are
//!    filled (vessels, nodules and consolidation inside the lung), then a
//!    closing with a disc of [`LungMaskConfig::closing_radius_mm`] includes
//!    dense lesions that touch the pleura, and holes are filled again. The
//!    closing only recovers pleural lesions whose contact with the chest
//!    wall is narrower than about the disc's diameter; a larger radius would
//!    start to take in the mediastinum at the hilum.
//! 6. **Sides**: left and right come from the world x of the lungs'
//!    centroids through the volume's affine (RAS: larger x is the patient's
//!    Right), never from voxel indices; a single lung is placed by its side
//!    of the body's centre.
//!
//! Memory: one byte per voxel for the working mask (which becomes the
//! result) plus four bytes per voxel of the air's bounding box while the
//! components are labelled.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::labeling::{Connectivity, MaskVoxel, border_seeds, flood, label, label_rows, push_runs};
use crate::preprocess::morphology::{Disc, close_2d, fill_holes_plane};
use crate::volume::{Affine, Volume};

/// Mask value of the patient's left lung.
pub const LEFT: u8 = 1;
/// Mask value of the patient's right lung.
pub const RIGHT: u8 = 2;

/// A lung.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The patient's left lung (mask value [`LEFT`]).
    Left,
    /// The patient's right lung (mask value [`RIGHT`]).
    Right,
}

impl Side {
    /// The value of this lung's voxels in [`LungMask::mask`].
    pub fn label(self) -> u8 {
        match self {
            Side::Left => LEFT,
            Side::Right => RIGHT,
        }
    }
}

/// Settings of [`lung_mask`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LungMaskConfig {
    /// Voxels below this HU are air-like. -320 HU separates aerated lung
    /// (about -850) from soft tissue and keeps most of the partial-volume
    /// rim of the lung.
    pub threshold_hu: f32,
    /// Smallest air component that may be a lung, in mL. 100 mL rejects the
    /// trachea and most bowel gas while keeping even a badly diseased lung.
    pub min_lung_ml: f64,
    /// Radius of the in-plane closing disc, in mm (0 turns closing off).
    pub closing_radius_mm: f64,
    /// A single air component is cut in two when its column histogram has a
    /// trough at most this fraction of the lower of the peaks beside it.
    pub split_trough_ratio: f64,
}

impl Default for LungMaskConfig {
    fn default() -> Self {
        LungMaskConfig {
            threshold_hu: -320.0,
            min_lung_ml: 100.0,
            closing_radius_mm: 10.0,
            split_trough_ratio: 0.3,
        }
    }
}

impl LungMaskConfig {
    fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64| {
            Err(Error::InvalidArgument(format!(
                "lung mask: {what} of {v} is out of range"
            )))
        };
        if !self.threshold_hu.is_finite() {
            return bad("threshold", self.threshold_hu as f64);
        }
        if !(self.min_lung_ml.is_finite() && self.min_lung_ml >= 0.0) {
            return bad("minimum lung volume (mL)", self.min_lung_ml);
        }
        if !(self.closing_radius_mm.is_finite() && (0.0..=50.0).contains(&self.closing_radius_mm)) {
            return bad("closing radius (mm)", self.closing_radius_mm);
        }
        if !(0.0..=1.0).contains(&self.split_trough_ratio) {
            return bad("split trough ratio", self.split_trough_ratio);
        }
        Ok(())
    }
}

/// A lung mask on the CT's own voxel grid.
#[derive(Debug, Clone, PartialEq)]
pub struct LungMask {
    /// One value per voxel (`i` fastest): 0 outside the lungs, [`LEFT`] or
    /// [`RIGHT`].
    pub mask: Vec<u8>,
    /// Voxel counts along i, j, k.
    pub dims: [usize; 3],
    /// Volume of one voxel in mL.
    pub voxel_ml: f64,
    /// Voxels of the left lung.
    pub left_voxels: u64,
    /// Voxels of the right lung.
    pub right_voxels: u64,
    /// Left lung volume in mL.
    pub left_ml: f64,
    /// Right lung volume in mL.
    pub right_ml: f64,
    /// Both lungs in mL.
    pub total_ml: f64,
}

impl LungMask {
    /// Voxels of one lung, or of both with `None`.
    pub fn voxels(&self, side: Option<Side>) -> u64 {
        match side {
            Some(Side::Left) => self.left_voxels,
            Some(Side::Right) => self.right_voxels,
            None => self.left_voxels + self.right_voxels,
        }
    }

    /// The mask as a label volume (0, [`LEFT`], [`RIGHT`]) with the CT's
    /// affine, e.g. to write it as NIfTI.
    pub fn to_volume(&self, affine: Affine) -> Result<Volume> {
        Volume::new(
            self.mask.iter().map(|&v| v as f32).collect(),
            self.dims,
            affine,
        )
    }
}

/// Working values of the mask while it is built (0 is tissue).
const AIR: u8 = 1;
const OUTSIDE: u8 = 2;

/// Segments the lungs of a CT volume in HU; see the module documentation.
///
/// Fails with [`Error::InvalidArgument`] when `k` is not the
/// superior-inferior axis or the settings are out of range, and with
/// [`Error::Unsupported`] ("no lungs found") when no air region inside the
/// body is large enough.
pub fn lung_mask(ct: &Volume, cfg: &LungMaskConfig) -> Result<LungMask> {
    cfg.validate()?;
    let codes = ct.affine().axcodes();
    if !matches!(codes.chars().nth(2), Some('S' | 'I')) {
        return Err(Error::InvalidArgument(format!(
            "lung mask needs axial slices along k, but the volume is oriented {codes}; \
             reorient it with to_canonical first"
        )));
    }
    let dims = ct.dims();
    let [ni, nj, nk] = dims;
    let plane = ni * nj;
    let voxel_ml = ct.voxel_volume_mm3() / 1000.0;
    let min_voxels = ((cfg.min_lung_ml / voxel_ml).ceil() as u64).max(1);
    let thr = cfg.threshold_hu;

    // 1-2. Air-like voxels, then outside air removed slice by slice and
    // followed across slices in 3D.
    let mut state: Vec<u8> = ct.data().par_iter().map(|&v| (v < thr) as u8).collect();
    state.par_chunks_mut(plane).for_each(|s| {
        let d = [ni, nj, 1];
        flood(s, d, border_seeds(d, true), AIR, OUTSIDE);
    });
    let seeds: Vec<[usize; 3]> = (0..nk)
        .into_par_iter()
        .flat_map_iter(|k| {
            let s = &state[k * plane..(k + 1) * plane];
            let below = (k > 0).then(|| &state[(k - 1) * plane..k * plane]);
            let above = (k + 1 < nk).then(|| &state[(k + 1) * plane..(k + 2) * plane]);
            let mut out = Vec::new();
            for p in 0..plane {
                let touches = |n: Option<&[u8]>| n.is_some_and(|n| n[p] == OUTSIDE);
                if s[p] == AIR && (touches(below) || touches(above)) {
                    out.push([p % ni, p / ni, k]);
                }
            }
            out
        })
        .collect();
    flood(&mut state, dims, seeds, AIR, OUTSIDE);

    // 3. Components of the air inside the body, within its bounding box.
    let Some(bbox) = air_bbox(&state, dims) else {
        return Err(no_lungs(format!(
            "no air-like voxels (below {thr} HU) enclosed by the body"
        )));
    };
    let [i0, i1, j0, j1, k0, k1] = bbox;
    let cd = [i1 - i0 + 1, j1 - j0 + 1, k1 - k0 + 1];
    let labels = label_rows(cd, Connectivity::Six, |j, k, out| {
        let s = i0 + ni * (j + j0 + nj * (k + k0));
        push_runs(&state[s..s + cd[0]], |v| v == AIR, out);
    })?;
    let mut cands: Vec<u32> = (1..=labels.count as u32)
        .filter(|&l| labels.sizes[l as usize] >= min_voxels)
        .collect();
    cands.sort_by_key(|&l| (std::cmp::Reverse(labels.sizes[l as usize]), l));
    if cands.is_empty() {
        let largest = labels.sizes[1..].iter().max().copied().unwrap_or(0);
        return Err(no_lungs(format!(
            "the largest air region inside the body is {:.1} mL, below the {} mL minimum",
            largest as f64 * voxel_ml,
            cfg.min_lung_ml
        )));
    }

    // Centroids of the candidates and the column histogram of the largest.
    let mut cand_of = vec![u32::MAX; labels.count + 1];
    for (c, &l) in cands.iter().enumerate() {
        cand_of[l as usize] = c as u32;
    }
    let nc = cands.len();
    let (sums, hist) = labels
        .labels
        .par_chunks(cd[0] * cd[1])
        .enumerate()
        .fold(
            || (vec![[0f64; 3]; nc], vec![0u64; cd[0]]),
            |(mut sums, mut hist), (k, sl)| {
                for (j, row) in sl.chunks_exact(cd[0]).enumerate() {
                    for (i, &l) in row.iter().enumerate() {
                        let c = cand_of[l as usize];
                        if c == u32::MAX {
                            continue;
                        }
                        let s = &mut sums[c as usize];
                        s[0] += (i + i0) as f64;
                        s[1] += (j + j0) as f64;
                        s[2] += (k + k0) as f64;
                        if c == 0 {
                            hist[i] += 1;
                        }
                    }
                }
                (sums, hist)
            },
        )
        .reduce(
            || (vec![[0f64; 3]; nc], vec![0u64; cd[0]]),
            |(mut sa, mut ha), (sb, hb)| {
                sa.iter_mut()
                    .zip(&sb)
                    .for_each(|(a, b)| (0..3).for_each(|d| a[d] += b[d]));
                ha.iter_mut().zip(&hb).for_each(|(a, b)| *a += b);
                (sa, ha)
            },
        );
    let world_x = |c: usize| {
        let n = labels.sizes[cands[c] as usize] as f64;
        ct.affine()
            .apply([sums[c][0] / n, sums[c][1] / n, sums[c][2] / n])[0]
    };

    // 4. One component cut in two, or two components.
    let a = cands[0];
    let cut = trough(&hist, cfg.split_trough_ratio).filter(|&m| {
        let lo: u64 = hist[..=m].iter().sum();
        let hi: u64 = hist[m + 1..].iter().sum();
        lo >= min_voxels && hi >= min_voxels
    });
    // Slot (1 or 2) of each label; with a cut, label `a` is split by column.
    let mut slot_of = vec![0u8; labels.count + 1];
    slot_of[a as usize] = 1;
    let mut body_x = None;
    if cut.is_none() {
        let bx = body_centre_x(&state, dims, ct.affine());
        body_x = Some(bx);
        let a_right = world_x(0) > bx;
        if let Some(c) = (1..nc).find(|&c| (world_x(c) > bx) != a_right) {
            slot_of[cands[c] as usize] = 2;
        }
    }
    state.par_chunks_mut(plane).enumerate().for_each(|(k, s)| {
        if k < k0 || k > k1 {
            s.fill(0);
            return;
        }
        let lk = &labels.labels[(k - k0) * cd[0] * cd[1]..(k - k0 + 1) * cd[0] * cd[1]];
        for (j, row) in s.chunks_exact_mut(ni).enumerate() {
            if j < j0 || j > j1 {
                row.fill(0);
                continue;
            }
            let lrow = &lk[(j - j0) * cd[0]..(j - j0 + 1) * cd[0]];
            row[..i0].fill(0);
            row[i1 + 1..].fill(0);
            for (i, (v, &l)) in row[i0..=i1].iter_mut().zip(lrow).enumerate() {
                let slot = slot_of[l as usize];
                *v = match cut {
                    Some(m) if slot == 1 && i > m => 2,
                    _ => slot,
                };
            }
        }
    });
    drop(labels);

    // 6 (before 5, on the raw lungs). Which slot is which side.
    let slot_x = slot_centroids_x(&state, dims, ct.affine());
    let mut side_of_slot = [0u8; 3];
    match (slot_x[0], slot_x[1], body_x) {
        (Some(x1), Some(x2), _) => {
            let (r, l) = if x1 > x2 { (1, 2) } else { (2, 1) };
            side_of_slot[r] = RIGHT;
            side_of_slot[l] = LEFT;
        }
        (Some(x1), None, bx) => {
            let bx = match bx {
                Some(bx) => bx,
                None => body_centre_x(&state, dims, ct.affine()),
            };
            side_of_slot[1] = if x1 > bx { RIGHT } else { LEFT };
        }
        _ => {
            return Err(no_lungs(
                "the lung candidates vanished while splitting".into(),
            ));
        }
    }

    // 5. Hole filling and closing per slice and lung.
    let spacing = ct.spacing();
    let disc = if cfg.closing_radius_mm > 0.0 {
        Some(Disc::new(cfg.closing_radius_mm, spacing[0], spacing[1])?)
    } else {
        None
    };
    let trim = cut.map(|m| Trim {
        cut: i0 + m,
        max_pixels: (AIRWAY_MAX_MM2 / (spacing[0] * spacing[1])).ceil() as u64,
    });
    state
        .par_chunks_mut(plane)
        .try_for_each(|s| finish_slice(s, ni, nj, side_of_slot, disc.as_ref(), trim.as_ref()))?;

    let (left_voxels, right_voxels) = state
        .par_chunks(1 << 16)
        .map(|c| {
            c.iter().fold((0u64, 0u64), |(l, r), &v| {
                (l + (v == LEFT) as u64, r + (v == RIGHT) as u64)
            })
        })
        .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    Ok(LungMask {
        mask: state,
        dims,
        voxel_ml,
        left_voxels,
        right_voxels,
        left_ml: left_voxels as f64 * voxel_ml,
        right_ml: right_voxels as f64 * voxel_ml,
        total_ml: (left_voxels + right_voxels) as f64 * voxel_ml,
    })
}

fn no_lungs(why: String) -> Error {
    Error::Unsupported(format!("no lungs found: {why}"))
}

/// Inclusive bounding box `[i0, i1, j0, j1, k0, k1]` of the `AIR` voxels.
fn air_bbox(state: &[u8], dims: [usize; 3]) -> Option<[usize; 6]> {
    let [ni, nj, _] = dims;
    state
        .par_chunks(ni * nj)
        .enumerate()
        .filter_map(|(k, s)| {
            let mut b: Option<[usize; 6]> = None;
            for (j, row) in s.chunks_exact(ni).enumerate() {
                let Some(first) = row.iter().position(|&v| v == AIR) else {
                    continue;
                };
                let last = row.iter().rposition(|&v| v == AIR).unwrap_or(first);
                b = Some(match b {
                    None => [first, last, j, j, k, k],
                    Some(b) => [b[0].min(first), b[1].max(last), b[2], j, k, k],
                });
            }
            b
        })
        .reduce_with(|a, b| {
            [
                a[0].min(b[0]),
                a[1].max(b[1]),
                a[2].min(b[2]),
                a[3].max(b[3]),
                a[4].min(b[4]),
                a[5].max(b[5]),
            ]
        })
}

/// The deepest column of a histogram's middle third, when it is a trough
/// of at most `ratio` of the lower of the highest columns on either side.
fn trough(hist: &[u64], ratio: f64) -> Option<usize> {
    let a0 = hist.iter().position(|&h| h > 0)?;
    let a1 = hist.iter().rposition(|&h| h > 0)?;
    if a1 - a0 < 3 {
        return None;
    }
    let third = (a1 - a0) / 3;
    let (b0, b1) = (a0 + third, a1 - third);
    let m = (b0..=b1).min_by_key(|&i| (hist[i], i.abs_diff((a0 + a1) / 2)))?;
    let left = *hist[a0..m].iter().max()?;
    let right = *hist[m + 1..=a1].iter().max()?;
    let low = left.min(right);
    (low > 0 && hist[m] as f64 <= ratio * low as f64).then_some(m)
}

/// World x of the centroid of everything that is not outside air.
fn body_centre_x(state: &[u8], dims: [usize; 3], affine: &Affine) -> f64 {
    let [ni, nj, _] = dims;
    let (n, s) = state
        .par_chunks(ni * nj)
        .enumerate()
        .map(|(k, sl)| {
            let mut acc = (0u64, [0f64; 3]);
            for (j, row) in sl.chunks_exact(ni).enumerate() {
                for (i, &v) in row.iter().enumerate() {
                    if v != OUTSIDE {
                        acc.0 += 1;
                        acc.1[0] += i as f64;
                        acc.1[1] += j as f64;
                        acc.1[2] += k as f64;
                    }
                }
            }
            acc
        })
        .reduce(
            || (0, [0.0; 3]),
            |a, b| {
                (
                    a.0 + b.0,
                    [a.1[0] + b.1[0], a.1[1] + b.1[1], a.1[2] + b.1[2]],
                )
            },
        );
    let n = n.max(1) as f64;
    affine.apply([s[0] / n, s[1] / n, s[2] / n])[0]
}

/// World x of the centroids of slots 1 and 2 (`None` when empty).
fn slot_centroids_x(state: &[u8], dims: [usize; 3], affine: &Affine) -> [Option<f64>; 2] {
    let [ni, nj, _] = dims;
    let zero = || [(0u64, [0f64; 3]); 2];
    let acc = state
        .par_chunks(ni * nj)
        .enumerate()
        .map(|(k, sl)| {
            let mut acc = zero();
            for (j, row) in sl.chunks_exact(ni).enumerate() {
                for (i, &v) in row.iter().enumerate() {
                    if v == 1 || v == 2 {
                        let a = &mut acc[v as usize - 1];
                        a.0 += 1;
                        a.1[0] += i as f64;
                        a.1[1] += j as f64;
                        a.1[2] += k as f64;
                    }
                }
            }
            acc
        })
        .reduce(zero, |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                x.0 += y.0;
                (0..3).for_each(|d| x.1[d] += y.1[d]);
            }
            a
        });
    acc.map(|(n, s)| {
        (n > 0).then(|| {
            let n = n as f64;
            affine.apply([s[0] / n, s[1] / n, s[2] / n])[0]
        })
    })
}

/// Largest in-plane area of an airway cross-section (a wide trachea is
/// about 25 mm across, 490 mm^2).
const AIRWAY_MAX_MM2: f64 = 600.0;

/// Where a joined component was cut: slot 1 holds columns `i <= cut`, slot 2
/// the rest. In each slice, pieces of a lung that touch the cut and are no
/// larger than an airway are the trachea or a main bronchus, not lung; they
/// are dropped so that the closing does not bridge them to the lung.
struct Trim {
    cut: usize,
    max_pixels: u64,
}

/// Turns one slice of slots (1, 2) into sides, with each lung's holes
/// filled and its outline closed. Voxels of one lung's raw air never go to
/// the other; a voxel both closings claim goes to slot 1.
fn finish_slice(
    s: &mut [u8],
    ni: usize,
    nj: usize,
    side_of_slot: [u8; 3],
    disc: Option<&Disc>,
    trim: Option<&Trim>,
) -> Result<()> {
    if s.iter().all(|&v| v == 0) {
        return Ok(());
    }
    let raw = s.to_vec();
    s.iter_mut().for_each(|v| *v = side_of_slot[*v as usize]);
    for slot in 1..=2u8 {
        // Bounding box of this lung in the slice.
        let mut bb: Option<[usize; 4]> = None;
        for (j, row) in raw.chunks_exact(ni).enumerate() {
            if let (Some(a), Some(b)) = (
                row.iter().position(|&v| v == slot),
                row.iter().rposition(|&v| v == slot),
            ) {
                bb = Some(match bb {
                    None => [a, b, j, j],
                    Some(x) => [x[0].min(a), x[1].max(b), x[2], j],
                });
            }
        }
        let Some([a0, a1, b0, b1]) = bb else { continue };
        let (w, h) = (a1 - a0 + 1, b1 - b0 + 1);
        let mut crop: Vec<bool> = Vec::with_capacity(w * h);
        for j in b0..=b1 {
            crop.extend(raw[j * ni + a0..=j * ni + a1].iter().map(|&v| v == slot));
        }
        if let Some(t) = trim {
            // The crop column next to the cut, if the crop reaches it.
            let edge = if slot == 1 {
                t.cut.checked_sub(a0)
            } else {
                Some(0)
            }
            .filter(|&x| {
                x < w
                    && (if slot == 1 {
                        a1 == t.cut
                    } else {
                        a0 == t.cut + 1
                    })
            });
            if let Some(x) = edge {
                let pieces = label(&crop, [w, h, 1], Connectivity::Six)?;
                let mut drop = vec![false; pieces.count + 1];
                for y in 0..h {
                    let l = pieces.labels[y * w + x] as usize;
                    drop[l] = l != 0 && pieces.sizes[l] <= t.max_pixels;
                }
                for (y, row) in crop.chunks_exact_mut(w).enumerate() {
                    let lrow = &pieces.labels[y * w..(y + 1) * w];
                    let off = (b0 + y) * ni + a0;
                    for (x, (c, &l)) in row.iter_mut().zip(lrow).enumerate() {
                        if drop[l as usize] {
                            *c = false;
                            s[off + x] = 0;
                        }
                    }
                }
                if !crop.contains(&true) {
                    continue;
                }
            }
        }
        fill_holes_plane(&mut crop, w, h)?;
        if let Some(disc) = disc {
            crop = close_2d(&crop, w, h, disc)?;
            fill_holes_plane(&mut crop, w, h)?;
        }
        let side = side_of_slot[slot as usize];
        for (y, crow) in crop.chunks_exact(w).enumerate() {
            let off = (b0 + y) * ni + a0;
            for (x, &c) in crow.iter().enumerate() {
                if c && raw[off + x] == 0 && s[off + x] == 0 {
                    s[off + x] = side;
                }
            }
        }
    }
    debug_assert!(nj * ni == s.len());
    Ok(())
}

/// Voxels of `lesion` inside the lungs, indexed by mask value (0 unused).
fn involved(
    lesion_len: usize,
    lung: &LungMask,
    set: impl Fn(usize) -> bool + Sync,
) -> Result<[u64; 3]> {
    if lesion_len != lung.mask.len() {
        return Err(Error::InvalidArgument(format!(
            "lesion mask of {lesion_len} voxels does not match the lung mask of {} voxels",
            lung.mask.len()
        )));
    }
    Ok(lung
        .mask
        .par_iter()
        .enumerate()
        .fold(
            || [0u64; 3],
            |mut acc, (v, &m)| {
                if m != 0 && set(v) {
                    acc[m.min(2) as usize] += 1;
                }
                acc
            },
        )
        .reduce(|| [0; 3], |a, b| [a[0] + b[0], a[1] + b[1], a[2] + b[2]]))
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64 * 100.0
    }
}

/// Percentage of lung voxels (both lungs) that are lesion voxels; 0 when
/// the mask has no lung voxels. Lesion voxels outside the lungs do not
/// count.
pub fn percent_involved<T: MaskVoxel>(lesion: &[T], lung: &LungMask) -> Result<f64> {
    let c = involved(lesion.len(), lung, |v| lesion[v].is_set())?;
    Ok(percent(c[1] + c[2], lung.voxels(None)))
}

/// Percentage of one lung's voxels that are lesion voxels; 0 when that
/// lung is absent from the mask.
pub fn percent_involved_side<T: MaskVoxel>(
    lesion: &[T],
    lung: &LungMask,
    side: Side,
) -> Result<f64> {
    let c = involved(lesion.len(), lung, |v| lesion[v].is_set())?;
    Ok(percent(c[side.label() as usize], lung.voxels(Some(side))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SP: f64 = 2.5;
    const DIMS: [usize; 3] = [104, 80, 76];
    const RIGHT_C: [f64; 3] = [55.0, 0.0, 0.0];
    const RIGHT_AX: [f64; 3] = [45.0, 60.0, 75.0];
    const LEFT_C: [f64; 3] = [-55.0, 0.0, 0.0];
    const LEFT_AX: [f64; 3] = [40.0, 60.0, 75.0];
    /// A pleural lesion: its centre 8 mm inside the lateral surface of the
    /// left lung (at x = -94.6 mm), so it bulges 2 mm into the chest wall.
    const LESION_C: [f64; 3] = [-86.6, 0.0, 10.0];
    const LESION_R: f64 = 10.0;
    const VESSEL: [f64; 2] = [70.0, 10.0];
    const VESSEL_R: f64 = 4.0;

    fn ell(p: [f64; 3], c: [f64; 3], ax: [f64; 3]) -> f64 {
        (0..3).map(|d| ((p[d] - c[d]) / ax[d]).powi(2)).sum()
    }

    fn dist2(a: [f64; 2], b: [f64; 2]) -> f64 {
        (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)
    }

    /// Airways: a trachea leaving through the top and a bronchus that
    /// joins both lungs.
    fn in_airway(p: [f64; 3]) -> bool {
        near_airway(p, 0.0)
    }

    /// Within `margin` mm of the airways (in-plane closing rounds off the
    /// corners where the bronchus meets a lung).
    fn near_airway(p: [f64; 3], margin: f64) -> bool {
        let (t, b) = ((9.0 + margin).powi(2), (7.0 + margin).powi(2));
        (dist2([p[0], p[1]], [0.0, 0.0]) <= t && p[2] >= 30.0)
            || (dist2([p[1], p[2]], [0.0, 30.0]) <= b && p[0].abs() <= 60.0)
    }

    /// HU of the phantom at world point `p` (RAS mm).
    fn hu(p: [f64; 3], airways: bool) -> f32 {
        let [x, y, _] = p;
        if x.abs() >= 120.0 || y.abs() >= 90.0 {
            return -1000.0;
        }
        let lesion = (0..3).map(|d| (p[d] - LESION_C[d]).powi(2)).sum::<f64>();
        if lesion <= LESION_R * LESION_R {
            return -50.0;
        }
        if dist2([x, y], VESSEL) <= VESSEL_R * VESSEL_R {
            return 40.0;
        }
        if airways && in_airway(p) {
            return -1000.0;
        }
        if ell(p, RIGHT_C, RIGHT_AX) <= 1.0 || ell(p, LEFT_C, LEFT_AX) <= 1.0 {
            return -850.0;
        }
        40.0
    }

    fn ras() -> Affine {
        let half = |n: usize| (n as f64 - 1.0) * SP / 2.0;
        Affine::from_spacing_origin([SP; 3], [-half(DIMS[0]), -half(DIMS[1]), -half(DIMS[2])])
    }

    /// The same world grid stored right-to-left and front-to-back.
    fn lps() -> Affine {
        let mut a = ras();
        for d in 0..2 {
            a.0[d][d] = -SP;
            a.0[d][3] = -a.0[d][3];
        }
        a
    }

    fn phantom(affine: Affine, airways: bool) -> Volume {
        let n: usize = DIMS.iter().product();
        let data = (0..n)
            .map(|v| {
                let (i, j, k) = (v % DIMS[0], v / DIMS[0] % DIMS[1], v / (DIMS[0] * DIMS[1]));
                hu(affine.apply([i as f64, j as f64, k as f64]), airways)
            })
            .collect();
        Volume::new(data, DIMS, affine).unwrap()
    }

    fn world(v: &Volume, idx: usize) -> [f64; 3] {
        let d = v.dims();
        let (i, j, k) = (idx % d[0], idx / d[0] % d[1], idx / (d[0] * d[1]));
        v.affine().apply([i as f64, j as f64, k as f64])
    }

    fn analytic_ml(ax: [f64; 3]) -> f64 {
        4.0 / 3.0 * std::f64::consts::PI * ax[0] * ax[1] * ax[2] / 1000.0
    }

    /// Checks a mask of the phantom against its geometry.
    fn check_phantom(ct: &Volume, m: &LungMask, airways: bool) {
        let mut lesion_in = (0, 0);
        for (v, &lab) in m.mask.iter().enumerate() {
            let p = world(ct, v);
            let er = ell(p, RIGHT_C, RIGHT_AX);
            let el = ell(p, LEFT_C, LEFT_AX);
            let dl = (0..3).map(|d| (p[d] - LESION_C[d]).powi(2)).sum::<f64>();
            let in_lesion = dl <= LESION_R * LESION_R;
            if er <= 0.9 {
                assert_eq!(lab, RIGHT, "inside right lung at {p:?}");
            }
            if el <= 0.9 && !in_lesion {
                assert_eq!(lab, LEFT, "inside left lung at {p:?}");
            }
            if lab != 0 {
                // Only lungs (with a voxel of slack) and airways.
                assert!(
                    er <= 1.15 || el <= 1.15 || (airways && near_airway(p, 10.0)),
                    "mask outside the lungs at {p:?}"
                );
                if lab == RIGHT {
                    assert!(p[0] > -20.0, "right lung voxel at {p:?}");
                } else {
                    assert!(p[0] < 20.0, "left lung voxel at {p:?}");
                }
            }
            if dist2([p[0], p[1]], VESSEL) <= VESSEL_R * VESSEL_R && er <= 0.8 {
                assert_eq!(lab, RIGHT, "vessel at {p:?}");
            }
            if in_lesion && el <= 1.0 {
                lesion_in.0 += 1;
                lesion_in.1 += (lab == LEFT) as usize;
            }
        }
        assert!(lesion_in.0 > 20);
        let frac = lesion_in.1 as f64 / lesion_in.0 as f64;
        // The closing leaves out a thin cap where the lesion meets the chest
        // wall (see the module documentation).
        assert!(
            frac >= 0.85,
            "only {frac} of the pleural lesion in the mask"
        );
        let (r, l) = (analytic_ml(RIGHT_AX), analytic_ml(LEFT_AX));
        assert!(
            (m.right_ml / r - 1.0).abs() < 0.1,
            "right {} vs {r}",
            m.right_ml
        );
        assert!(
            (m.left_ml / l - 1.0).abs() < 0.1,
            "left {} vs {l}",
            m.left_ml
        );
        assert!((m.total_ml - m.left_ml - m.right_ml).abs() < 1e-9);
    }

    #[test]
    fn separate_lungs_sides_vessel_and_lesion() {
        let ct = phantom(ras(), false);
        let m = lung_mask(&ct, &LungMaskConfig::default()).unwrap();
        check_phantom(&ct, &m, false);
    }

    #[test]
    fn closing_is_what_takes_in_the_pleural_lesion() {
        let ct = phantom(ras(), false);
        let lesion_in_lung = |m: &LungMask| {
            let (mut n, mut got) = (0, 0);
            for (v, &lab) in m.mask.iter().enumerate() {
                let p = world(&ct, v);
                let dl = (0..3).map(|d| (p[d] - LESION_C[d]).powi(2)).sum::<f64>();
                if dl <= LESION_R * LESION_R && ell(p, LEFT_C, LEFT_AX) <= 1.0 {
                    n += 1;
                    got += (lab == LEFT) as usize;
                }
            }
            got as f64 / n as f64
        };
        let closed = lung_mask(&ct, &LungMaskConfig::default()).unwrap();
        let cfg = LungMaskConfig {
            closing_radius_mm: 0.0,
            ..LungMaskConfig::default()
        };
        let open = lung_mask(&ct, &cfg).unwrap();
        let (c, o) = (lesion_in_lung(&closed), lesion_in_lung(&open));
        assert!(c >= 0.85 && o < 0.5, "with closing {c}, without {o}");
        assert!(open.left_voxels < closed.left_voxels);
    }

    #[test]
    fn lps_grid_gives_the_same_lungs() {
        let ras_ct = phantom(ras(), false);
        let ras_mask = lung_mask(&ras_ct, &LungMaskConfig::default()).unwrap();
        let lps_ct = phantom(lps(), false);
        assert_eq!(lps_ct.affine().axcodes(), "LPS");
        // Directly on the LPS grid: sides come from world x, not from i.
        let direct = lung_mask(&lps_ct, &LungMaskConfig::default()).unwrap();
        check_phantom(&lps_ct, &direct, false);
        // Through to_canonical: the very same voxels as the RAS grid.
        let (canon, _) = lps_ct.to_canonical();
        let m = lung_mask(&canon, &LungMaskConfig::default()).unwrap();
        assert_eq!(m.mask, ras_mask.mask);
        assert_eq!(direct.left_voxels, m.left_voxels);
        assert_eq!(direct.right_voxels, m.right_voxels);
    }

    #[test]
    fn lungs_joined_by_airways_are_split() {
        let ct = phantom(ras(), true);
        // The air really is one component reaching the top face.
        let air: Vec<bool> = ct.data().iter().map(|&v| v < -320.0).collect();
        let inside: Vec<bool> = (0..air.len())
            .map(|v| {
                let p = world(&ct, v);
                air[v] && p[0].abs() < 120.0 && p[1].abs() < 90.0
            })
            .collect();
        let l = crate::labeling::label(&inside, DIMS, Connectivity::Six).unwrap();
        // (Slivers of lung cut off by the lesion are extra components.)
        let big = l.sizes[1..].iter().filter(|&&s| s > 1000).count();
        assert_eq!(big, 1, "{:?}", l.sizes);
        let m = lung_mask(&ct, &LungMaskConfig::default()).unwrap();
        check_phantom(&ct, &m, true);
        // The trachea above the apices is trimmed off, not kept as lung.
        let trachea_kept = (0..m.mask.len())
            .filter(|&v| {
                let p = world(&ct, v);
                p[2] > 80.0 && in_airway(p) && m.mask[v] != 0
            })
            .count();
        assert_eq!(trachea_kept, 0);
        // With splitting disabled only one lung comes out.
        let cfg = LungMaskConfig {
            split_trough_ratio: 0.0,
            ..LungMaskConfig::default()
        };
        let one = lung_mask(&ct, &cfg).unwrap();
        assert!(one.left_voxels == 0 || one.right_voxels == 0);
    }

    #[test]
    fn percent_involved_counts_lesion_inside_lungs() {
        let ct = phantom(ras(), false);
        let m = lung_mask(&ct, &LungMaskConfig::default()).unwrap();
        let lesion: Vec<u8> = ct.data().iter().map(|&v| (v == -50.0) as u8).collect();
        let in_left = m
            .mask
            .iter()
            .zip(&lesion)
            .filter(|&(&l, &s)| l == LEFT && s == 1)
            .count() as f64;
        assert!(in_left > 0.0);
        let want = in_left / m.left_voxels as f64 * 100.0;
        let got = percent_involved_side(&lesion, &m, Side::Left).unwrap();
        assert!((got - want).abs() < 1e-9);
        assert_eq!(
            percent_involved_side(&lesion, &m, Side::Right).unwrap(),
            0.0
        );
        let total = percent_involved(&lesion, &m).unwrap();
        let want = in_left / (m.left_voxels + m.right_voxels) as f64 * 100.0;
        assert!((total - want).abs() < 1e-9);
        // Everything involved: 100 %.
        let all = vec![true; m.mask.len()];
        assert!((percent_involved(&all, &m).unwrap() - 100.0).abs() < 1e-9);
        assert!(percent_involved(&all[1..], &m).is_err());
        let vol = m.to_volume(*ct.affine()).unwrap();
        assert_eq!(
            vol.data().iter().filter(|&&v| v == 2.0).count() as u64,
            m.right_voxels
        );
    }

    #[test]
    fn volumes_without_lungs_are_refused() {
        let cfg = LungMaskConfig::default();
        for fill in [-1000.0f32, 40.0] {
            let v = Volume::filled(fill, [20, 20, 10], ras()).unwrap();
            let e = lung_mask(&v, &cfg).unwrap_err();
            assert!(matches!(e, Error::Unsupported(_)), "{e}");
            assert!(e.to_string().contains("no lungs found"), "{e}");
        }
        // A body with a small air pocket only.
        let mut v = Volume::filled(40.0, [40, 40, 20], ras()).unwrap();
        let d = v.dims();
        for k in 8..12 {
            for j in 18..22 {
                for i in 18..22 {
                    v.data_mut()[i + d[0] * (j + d[1] * k)] = -900.0;
                }
            }
        }
        let e = lung_mask(&v, &cfg).unwrap_err();
        assert!(e.to_string().contains("below the 100 mL minimum"), "{e}");
    }

    #[test]
    fn bad_orientation_and_settings_are_refused() {
        // k along world x: slices are sagittal.
        let a = Affine([
            [0.0, 0.0, 1.0, 0.0],
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        let v = Volume::filled(-1000.0, [8, 8, 8], a).unwrap();
        let e = lung_mask(&v, &LungMaskConfig::default()).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        let v = Volume::filled(-1000.0, [8, 8, 8], ras()).unwrap();
        for cfg in [
            LungMaskConfig {
                threshold_hu: f32::NAN,
                ..LungMaskConfig::default()
            },
            LungMaskConfig {
                closing_radius_mm: -1.0,
                ..LungMaskConfig::default()
            },
            LungMaskConfig {
                split_trough_ratio: 2.0,
                ..LungMaskConfig::default()
            },
        ] {
            assert!(matches!(
                lung_mask(&v, &cfg),
                Err(Error::InvalidArgument(_))
            ));
        }
    }

    #[test]
    fn trough_needs_two_peaks() {
        assert_eq!(trough(&[0, 5, 9, 9, 1, 0, 8, 9, 4, 0], 0.3), Some(5));
        // One hump: no cut.
        assert_eq!(trough(&[1, 4, 7, 9, 9, 7, 4, 1], 0.3), None);
        assert_eq!(trough(&[0, 0, 3, 0], 0.3), None);
    }
}
