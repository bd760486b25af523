//! Training data: scans brought onto the model grid once, patches sampled
//! from them (lesion-centred and at random), augmentation, the validation
//! split and the data fingerprint.

use crate::error::{Context, Error, Result};
use crate::manifest::{Label, Manifest};
use crate::preprocess::{self, Interp, PreprocessConfig, patch};
use crate::volume::Volume;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// One training scan on the model grid.
#[derive(Debug, Clone)]
pub struct TrainingScan {
    /// The manifest's scan id.
    pub id: String,
    /// Diagnosis.
    pub label: Label,
    /// Normalised intensities on the model grid.
    pub image: Volume,
    /// Lesion occupancy on the same grid: the fraction of each model voxel
    /// the scan's mask covers, in 1/255 steps ([`OCCUPIED`] = all of it). A
    /// voxel counts as lesion from [`HALF`] on.
    pub mask: Vec<u8>,
    /// Indices of the lesion voxels (for lesion-centred sampling).
    pub lesion: Vec<u32>,
    /// Lesion voxels of the model grid that fell outside the lung region
    /// and were dropped from the target (0 without a region).
    pub lesion_outside_region: u64,
}

impl TrainingScan {
    /// Brings a CT (HU) and its lesion mask (any grid equal to the CT's)
    /// onto the model grid.
    pub fn prepare(
        id: &str,
        label: Label,
        ct: &Volume,
        mask: &Volume,
        cfg: &PreprocessConfig,
    ) -> Result<Self> {
        crate::volume::check_same_grid(ct, mask, "image", "mask")?;
        let p = preprocess::prepare(ct, cfg)?;
        let (canon_mask, _) = mask.to_canonical();
        let on_grid = preprocess::resample::resample_to_grid(
            &canon_mask,
            p.volume.dims(),
            p.volume.affine(),
            Interp::Linear,
        )?;
        // Linear resampling of the 0/1 mask gives each model voxel the
        // fraction of it inside the lesion; kept (quantised) so training can
        // target it and a model's probabilities can carry the boundary
        // below the model grid's resolution.
        let mut mask: Vec<u8> = on_grid
            .data()
            .iter()
            .map(|&v| (v.clamp(0.0, 1.0) * OCCUPIED as f32).round() as u8)
            .collect();
        // The model cannot see outside the lung region (the image is blank
        // there), so lesion outside it is not a target: teaching the model
        // to paint it would teach it to guess.
        let mut outside = 0u64;
        if let Some(r) = &p.region {
            for (m, &inside) in mask.iter_mut().zip(&r.mask) {
                if inside == 0 && *m > 0 {
                    outside += u64::from(*m >= HALF);
                    *m = 0;
                }
            }
        }
        if mask.len() > u32::MAX as usize {
            return Err(Error::InvalidArgument(format!(
                "scan {id} is too large to train on"
            )));
        }
        let mut scan = TrainingScan::new(id.to_string(), label, p.volume, mask);
        scan.lesion_outside_region = outside;
        Ok(scan)
    }

    /// A scan already on the model grid (`mask` in occupancy steps, see
    /// [`TrainingScan::mask`]); indexes its lesion voxels.
    pub fn new(id: String, label: Label, image: Volume, mask: Vec<u8>) -> Self {
        let lesion = mask
            .iter()
            .enumerate()
            .filter(|(_, m)| **m >= HALF)
            .map(|(i, _)| i as u32)
            .collect();
        TrainingScan {
            id,
            label,
            image,
            mask,
            lesion,
            lesion_outside_region: 0,
        }
    }
}

/// Occupancy of a model voxel wholly inside a lesion.
pub const OCCUPIED: u8 = 255;
/// Occupancy from which a model voxel counts as lesion (half covered).
pub const HALF: u8 = 128;

/// FNV-1a, 64 bit: a stable, dependency-free hash for fingerprints.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Feeds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// Fingerprint of decoded scans: labels, grids and voxel values.
fn scan_hash(label: Label, ct: &Volume, mask: &Volume) -> u64 {
    let mut h = Fnv::default();
    h.write(label.as_str().as_bytes());
    for v in [ct, mask] {
        for d in v.dims() {
            h.write(&(d as u64).to_le_bytes());
        }
        for row in v.affine().0 {
            for x in row {
                h.write(&x.to_le_bytes());
            }
        }
        for x in v.data() {
            h.write(&x.to_le_bytes());
        }
    }
    h.finish()
}

/// Loads every scan of a manifest (all need masks) onto the model grid, in
/// parallel. Returns the scans in manifest order and one hash per scan.
pub fn load_manifest(
    manifest: &Manifest,
    cfg: &PreprocessConfig,
    load: &crate::io::LoadOptions,
) -> Result<Vec<(TrainingScan, u64)>> {
    manifest
        .entries
        .par_iter()
        .map(|e| {
            let image_path = e.image_path(manifest);
            let mask_path = e.mask_path(manifest).ok_or_else(|| {
                Error::Manifest(format!(
                    "scan {} has no mask; training needs one for every scan",
                    e.scan_id
                ))
            })?;
            let label = e.label.ok_or_else(|| {
                Error::Manifest(format!(
                    "scan {} has no label; training needs one for every scan",
                    e.scan_id
                ))
            })?;
            let ct = crate::io::load_path(&image_path, load)?.volume;
            let mask = crate::io::load_path(&mask_path, load)?.volume;
            let hash = scan_hash(label, &ct, &mask);
            let scan =
                TrainingScan::prepare(&e.scan_id, label, &ct, &mask, cfg).in_file(&mask_path)?;
            Ok((scan, hash))
        })
        .collect()
}

/// The fingerprint of a training set: FNV-1a over the per-scan hashes.
pub fn fingerprint(hashes: &[u64]) -> String {
    let mut h = Fnv::default();
    for x in hashes {
        h.write(&x.to_le_bytes());
    }
    format!("{:016x}", h.finish())
}

/// Assigns scans to `folds` folds, stratified by label: each label's scans
/// are shuffled (seeded) and dealt round-robin. Returns the fold of each scan.
pub fn assign_folds(labels: &[Label], folds: usize, seed: u64) -> Result<Vec<usize>> {
    if folds < 2 {
        return Err(Error::InvalidArgument(format!(
            "{folds} folds; at least 2 are needed"
        )));
    }
    let mut out = vec![0; labels.len()];
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_f01d);
    let mut offset = 0;
    for label in Label::ALL {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == label).collect();
        for i in (1..idx.len()).rev() {
            let j = rng.random_range(0..=i);
            idx.swap(i, j);
        }
        for (n, &i) in idx.iter().enumerate() {
            out[i] = (n + offset) % folds;
        }
        // Continue dealing where this label stopped, so small classes do
        // not all land in fold 0.
        offset = (offset + idx.len()) % folds;
    }
    Ok(out)
}

/// How patches are drawn.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingConfig {
    /// Patch size along i, j, k.
    pub patch: [usize; 3],
    /// Probability that a patch of a scan with lesions is centred on a
    /// lesion voxel (the paper trained on lesion-centred crops only).
    pub lesion_fraction: f64,
    /// Random mirroring along each axis.
    pub flips: bool,
    /// Intensity jitter: scale in 1 +- jitter, shift in +- jitter / 2.
    pub jitter: f64,
    /// A patch of a diseased scan counts for the classification loss only
    /// when it holds at least this many lesion voxels: a lesion-free patch
    /// of a COVID-19 scan shows nothing COVID-19-like.
    pub min_cls_lesion_voxels: usize,
    /// Train against each voxel's lesion occupancy (0..1) instead of the
    /// occupancy thresholded at one half. The model grid is coarser than a
    /// scan's; a model that predicts occupancy lets the linear resampling
    /// back to the scan place the boundary within a model voxel.
    #[serde(default)]
    pub soft_masks: bool,
}

impl SamplingConfig {
    /// Defaults for a patch size.
    pub fn new(patch: [usize; 3]) -> Self {
        SamplingConfig {
            patch,
            lesion_fraction: 0.5,
            flips: true,
            jitter: 0.1,
            min_cls_lesion_voxels: 20,
            soft_masks: false,
        }
    }
}

/// One sampled patch.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Image patch, i fastest.
    pub image: Vec<f32>,
    /// Mask patch (0/1, or occupancy 0..1 with soft masks), i fastest.
    pub mask: Vec<f32>,
    /// Class index.
    pub label: i64,
    /// 1 when the patch counts for the classification loss.
    pub cls_weight: f32,
}

/// Draws the patch of `scans[s]` at `start`, optionally augmented.
fn cut(
    scan: &TrainingScan,
    start: [isize; 3],
    cfg: &SamplingConfig,
    rng: Option<&mut ChaCha8Rng>,
) -> Result<Sample> {
    let size = cfg.patch;
    let mut image = patch::extract(&scan.image, start, size, 0.0)?;
    let m = patch::extract_from(&scan.mask, scan.image.dims(), start, size, 0u8)?;
    let lesion_voxels = m.iter().filter(|&&v| v >= HALF).count();
    let mut mask: Vec<f32> = if cfg.soft_masks {
        m.into_iter()
            .map(|v| f32::from(v) / f32::from(OCCUPIED))
            .collect()
    } else {
        m.into_iter().map(|v| f32::from(v >= HALF)).collect()
    };
    if let Some(rng) = rng {
        if cfg.flips {
            for axis in 0..3 {
                if rng.random_bool(0.5) {
                    flip(&mut image, size, axis);
                    flip(&mut mask, size, axis);
                }
            }
        }
        if cfg.jitter > 0.0 {
            let scale = 1.0 + rng.random_range(-cfg.jitter..=cfg.jitter) as f32;
            let shift = rng.random_range(-cfg.jitter..=cfg.jitter) as f32 / 2.0;
            for v in &mut image {
                *v = *v * scale + shift;
            }
        }
    }
    let counts = scan.label == Label::Healthy || lesion_voxels >= cfg.min_cls_lesion_voxels;
    Ok(Sample {
        image,
        mask,
        label: scan.label.index() as i64,
        cls_weight: counts as u8 as f32,
    })
}

/// Mirrors an i-fastest patch along `axis` in place.
fn flip<T>(data: &mut [T], size: [usize; 3], axis: usize) {
    let [ni, nj, nk] = size;
    for k in 0..nk {
        for j in 0..nj {
            for i in 0..ni {
                let (a, b) = match axis {
                    0 if i < ni / 2 => ((i, j, k), (ni - 1 - i, j, k)),
                    1 if j < nj / 2 => ((i, j, k), (i, nj - 1 - j, k)),
                    2 if k < nk / 2 => ((i, j, k), (i, j, nk - 1 - k)),
                    _ => continue,
                };
                let ia = a.0 + ni * (a.1 + nj * a.2);
                let ib = b.0 + ni * (b.1 + nj * b.2);
                data.swap(ia, ib);
            }
        }
    }
}

/// Normalised intensity above which a voxel counts as body: -900 HU in the
/// default lung window (air is -1000).
const BODY_LEVEL: f32 = (-900.0 + 1350.0) / 1500.0;
/// Draws before a random centre is accepted wherever it fell.
const BODY_TRIES: usize = 20;

/// Picks the start of a patch in `scan`: on a lesion voxel (jittered by up
/// to a quarter patch) or anywhere in the body.
fn pick_start(
    scan: &TrainingScan,
    cfg: &SamplingConfig,
    lesion: bool,
    rng: &mut ChaCha8Rng,
) -> [isize; 3] {
    let d = scan.image.dims();
    let center: [usize; 3] = if lesion && !scan.lesion.is_empty() {
        let idx = scan.lesion[rng.random_range(0..scan.lesion.len())] as usize;
        let c = [idx % d[0], (idx / d[0]) % d[1], idx / (d[0] * d[1])];
        std::array::from_fn(|a| {
            let q = (cfg.patch[a] / 4) as i64;
            let off = if q > 0 { rng.random_range(-q..=q) } else { 0 };
            (c[a] as i64 + off).clamp(0, d[a] as i64 - 1) as usize
        })
    } else {
        // Anywhere in the body: centres in the air around the patient teach
        // little, and false positives arise in tissue and at lung borders.
        let mut c = [0; 3];
        for _ in 0..BODY_TRIES {
            c = std::array::from_fn(|a| rng.random_range(0..d[a]));
            if scan.image.get(c[0], c[1], c[2]) > BODY_LEVEL {
                break;
            }
        }
        c
    };
    patch::centred_start(center, cfg.patch)
}

/// Draws a training batch; the batch is a pure function of (`seed`,
/// `step`), so a resumed run sees the same batches as an uninterrupted one.
pub fn training_batch(
    scans: &[&TrainingScan],
    cfg: &SamplingConfig,
    batch: usize,
    seed: u64,
    step: u64,
) -> Result<Vec<Sample>> {
    if scans.is_empty() {
        return Err(Error::InvalidArgument("no training scans".into()));
    }
    // Balance classes: a class first, then a scan of it.
    let present: Vec<Label> = Label::ALL
        .into_iter()
        .filter(|l| scans.iter().any(|s| s.label == *l))
        .collect();
    // One generator per sample, seeded by (seed, step, index): patches are
    // cut in parallel and still reproducible.
    (0..batch)
        .into_par_iter()
        .map(|b| {
            let mut h = Fnv::default();
            for x in [seed, step, b as u64] {
                h.write(&x.to_le_bytes());
            }
            let mut rng = ChaCha8Rng::seed_from_u64(h.finish());
            let label = present[rng.random_range(0..present.len())];
            let of: Vec<&&TrainingScan> = scans.iter().filter(|s| s.label == label).collect();
            let scan = of[rng.random_range(0..of.len())];
            let lesion = rng.random_bool(cfg.lesion_fraction);
            let start = pick_start(scan, cfg, lesion, &mut rng);
            cut(scan, start, cfg, Some(&mut rng))
        })
        .collect()
}

/// A fixed validation set: `per_scan` patches of each scan, half of them
/// lesion-centred where the scan has lesions, never augmented.
pub fn validation_samples(
    scans: &[&TrainingScan],
    cfg: &SamplingConfig,
    per_scan: usize,
    seed: u64,
) -> Result<Vec<Sample>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0a11_da7e);
    let mut out = Vec::with_capacity(scans.len() * per_scan);
    for scan in scans {
        for n in 0..per_scan {
            let start = pick_start(scan, cfg, n % 2 == 0, &mut rng);
            out.push(cut(scan, start, cfg, None)?);
        }
    }
    Ok(out)
}

/// Tensors of a batch on `device`: images and masks `N x 1 x D x H x W`,
/// labels `N` (int64), classification weights `N`.
pub fn to_tensors(
    samples: &[Sample],
    patch: [usize; 3],
    device: Device,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let shape = [
        samples.len() as i64,
        1,
        patch[2] as i64,
        patch[1] as i64,
        patch[0] as i64,
    ];
    let cat = |f: &dyn Fn(&Sample) -> &[f32]| -> Result<Tensor> {
        let flat: Vec<f32> = samples.iter().flat_map(|s| f(s).iter().copied()).collect();
        Ok(Tensor::f_from_slice(&flat)?
            .f_reshape(shape)?
            .f_to_device(device)?)
    };
    let images = cat(&|s| &s.image)?;
    let masks = cat(&|s| &s.mask)?;
    let labels: Vec<i64> = samples.iter().map(|s| s.label).collect();
    let weights: Vec<f32> = samples.iter().map(|s| s.cls_weight).collect();
    Ok((
        images,
        masks,
        Tensor::f_from_slice(&labels)?.f_to_device(device)?,
        Tensor::f_from_slice(&weights)?
            .f_to_kind(Kind::Float)?
            .f_to_device(device)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Affine;

    fn scan(label: Label) -> TrainingScan {
        let dims = [40, 30, 20];
        let n = dims.iter().product();
        let mut mask = vec![0u8; n];
        let image: Vec<f32> = (0..n).map(|i| (i % 7) as f32 / 7.0).collect();
        if label != Label::Healthy {
            for k in 8..12 {
                for j in 10..15 {
                    for i in 20..26 {
                        mask[i + 40 * (j + 30 * k)] = OCCUPIED;
                    }
                }
            }
        }
        TrainingScan::new(
            format!("{label:?}"),
            label,
            Volume::new(image, dims, Affine::identity()).unwrap(),
            mask,
        )
    }

    #[test]
    fn batches_are_reproducible_and_lesion_centred_patches_hold_lesions() {
        let scans = [scan(Label::Covid), scan(Label::Healthy)];
        let refs: Vec<&TrainingScan> = scans.iter().collect();
        let mut cfg = SamplingConfig::new([16, 16, 8]);
        let a = training_batch(&refs, &cfg, 8, 5, 3).unwrap();
        let b = training_batch(&refs, &cfg, 8, 5, 3).unwrap();
        let c = training_batch(&refs, &cfg, 8, 5, 4).unwrap();
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| x.image == y.image && x.mask == y.mask)
        );
        assert!(a.iter().zip(&c).any(|(x, y)| x.image != y.image));
        cfg.lesion_fraction = 1.0;
        cfg.min_cls_lesion_voxels = 1;
        for s in training_batch(&refs, &cfg, 32, 1, 0).unwrap() {
            if s.label == Label::Covid.index() as i64 {
                assert!(
                    s.mask.iter().sum::<f32>() > 0.0,
                    "lesion-centred patch without lesion"
                );
                assert_eq!(s.cls_weight, 1.0);
            } else {
                assert_eq!(s.mask.iter().sum::<f32>(), 0.0);
                assert_eq!(s.cls_weight, 1.0);
            }
        }
    }

    #[test]
    fn lesion_free_patches_of_diseased_scans_do_not_count_for_classification() {
        let s = scan(Label::Cap);
        let cfg = SamplingConfig::new([8, 8, 4]);
        let far = cut(&s, [0, 0, 0], &cfg, None).unwrap();
        assert_eq!(far.cls_weight, 0.0);
        let on = cut(&s, [20, 10, 8], &cfg, None).unwrap();
        assert_eq!(on.cls_weight, 1.0);
        assert_eq!(on.mask.iter().sum::<f32>(), 6.0 * 5.0 * 4.0);
    }

    #[test]
    fn soft_masks_give_occupancy_and_hard_masks_threshold_it_at_half() {
        let mut s = scan(Label::Covid);
        let d = s.image.dims();
        // Beside the block (i 20..26, j 10..15, k 8..12): one voxel a
        // quarter covered, one three quarters.
        s.mask[19 + d[0] * (10 + d[1] * 8)] = 64;
        s.mask[21 + d[0] * (9 + d[1] * 8)] = 191;
        let s = TrainingScan::new(s.id, s.label, s.image, s.mask);
        let mut cfg = SamplingConfig::new([8, 8, 4]);
        let hard = cut(&s, [18, 9, 8], &cfg, None).unwrap();
        cfg.soft_masks = true;
        let soft = cut(&s, [18, 9, 8], &cfg, None).unwrap();
        // Patch index i + 8 j of slice 0: (19, 10) is 9, (21, 9) is 3 and
        // (20, 10), inside the block, is 10.
        assert_eq!((hard.mask[9], hard.mask[3], hard.mask[10]), (0.0, 1.0, 1.0));
        assert!((soft.mask[9] - 64.0 / 255.0).abs() < 1e-6);
        assert!((soft.mask[3] - 191.0 / 255.0).abs() < 1e-6);
        assert_eq!(soft.mask[10], 1.0);
        // Lesion-centred sampling and the classification count use the
        // half-covered voxels only.
        assert_eq!(s.lesion.len(), 6 * 5 * 4 + 1);
    }

    #[test]
    fn flips_are_involutions_and_move_voxels() {
        let size = [4, 3, 2];
        let orig: Vec<u32> = (0..24).collect();
        for axis in 0..3 {
            let mut d = orig.clone();
            flip(&mut d, size, axis);
            assert_ne!(d, orig);
            flip(&mut d, size, axis);
            assert_eq!(d, orig);
        }
        let mut d = orig.clone();
        flip(&mut d, size, 0);
        assert_eq!(&d[..4], &[3, 2, 1, 0]);
    }

    #[test]
    fn folds_are_stratified_and_seeded() {
        let labels: Vec<Label> = (0..30).map(|i| Label::ALL[i % 3]).collect();
        let f = assign_folds(&labels, 5, 1).unwrap();
        for fold in 0..5 {
            for l in Label::ALL {
                let n = (0..30).filter(|&i| f[i] == fold && labels[i] == l).count();
                assert_eq!(n, 2, "fold {fold} label {l:?}");
            }
        }
        assert_eq!(f, assign_folds(&labels, 5, 1).unwrap());
        assert_ne!(f, assign_folds(&labels, 5, 2).unwrap());
        assert!(assign_folds(&labels, 1, 0).is_err());
    }

    #[test]
    fn fingerprint_changes_with_any_voxel() {
        let s = scan(Label::Covid);
        let m = Volume::new(
            s.mask.iter().map(|&v| v as f32).collect(),
            s.image.dims(),
            Affine::identity(),
        )
        .unwrap();
        let a = scan_hash(Label::Covid, &s.image, &m);
        let mut img2 = s.image.clone();
        img2.data_mut()[5] += 1.0;
        assert_ne!(a, scan_hash(Label::Covid, &img2, &m));
        assert_ne!(a, scan_hash(Label::Cap, &s.image, &m));
        assert_ne!(fingerprint(&[a, 1]), fingerprint(&[1, a]));
    }
}

#[cfg(test)]
mod phantom_tests {
    use super::*;
    use crate::synth::{self, PhantomConfig};

    /// The mask must land on the lesions after canonical reorientation and
    /// resampling, for LPS-stored phantoms too: lesions are denser than the
    /// lung around them.
    #[test]
    fn prepared_masks_sit_on_the_lesions() {
        let cfg = PhantomConfig {
            lps_fraction: 0.5,
            ..PhantomConfig::scaled(0.5).unwrap()
        };
        let pre = PreprocessConfig {
            spacing_mm: [2.0, 2.0, 3.0],
            ..Default::default()
        };
        let mut seen = std::collections::HashSet::new();
        for seed in 0..12 {
            let ph = synth::generate(Label::Covid, seed, &cfg).unwrap();
            let codes = ph.image.affine().axcodes();
            let s = TrainingScan::prepare("x", Label::Covid, &ph.image, &ph.mask, &pre).unwrap();
            let (lungs, _) = ph.lungs.to_canonical();
            let lungs = crate::preprocess::resample::resample_to_grid(
                &lungs,
                s.image.dims(),
                s.image.affine(),
                Interp::Nearest,
            )
            .unwrap();
            let (mut inside, mut n_in, mut lung, mut n_lung) = (0.0, 0, 0.0, 0);
            for (idx, &v) in s.image.data().iter().enumerate() {
                if s.mask[idx] >= HALF {
                    inside += v as f64;
                    n_in += 1;
                } else if s.mask[idx] == 0 && lungs.data()[idx] > 0.5 {
                    lung += v as f64;
                    n_lung += 1;
                }
            }
            let (inside, lung) = (inside / n_in as f64, lung / n_lung as f64);
            assert!(
                inside > lung + 0.1,
                "seed {seed} ({codes}): lesion {inside:.3} vs lung {lung:.3}"
            );
            seen.insert(codes);
        }
        assert!(seen.len() >= 2, "both storage orders tested: {seen:?}");
    }

    /// The occupancy kept on the model grid holds the lesion's volume: its
    /// sum matches the scan mask's volume within 3 %, and boundary voxels
    /// keep fractions between 0 and 1.
    #[test]
    fn occupancy_preserves_the_lesion_volume() {
        let cfg = PhantomConfig::scaled(0.5).unwrap();
        let pre = PreprocessConfig {
            spacing_mm: [3.2, 3.2, 5.0],
            ..Default::default()
        };
        let ph = synth::generate(Label::Covid, 3, &cfg).unwrap();
        let truth_mm3 =
            ph.mask.data().iter().filter(|&&m| m > 0.5).count() as f64 * ph.mask.voxel_volume_mm3();
        let s = TrainingScan::prepare("x", Label::Covid, &ph.image, &ph.mask, &pre).unwrap();
        let vox = s.image.voxel_volume_mm3();
        let soft: f64 = s
            .mask
            .iter()
            .map(|&m| m as f64 / OCCUPIED as f64)
            .sum::<f64>()
            * vox;
        assert!(truth_mm3 > 1000.0, "phantom has lesions: {truth_mm3} mm3");
        let rel = (soft - truth_mm3).abs() / truth_mm3;
        assert!(
            rel < 0.03,
            "occupancy volume {soft:.0} vs truth {truth_mm3:.0} mm3"
        );
        assert!(
            s.mask.iter().any(|&m| m > 0 && m < OCCUPIED),
            "partial voxels at the boundary"
        );
    }
}
