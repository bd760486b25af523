//! Synthetic chest-CT phantoms with exact lesion ground truth.
//!
//! [`generate`] draws one scan of a given [`Label`] from a seed;
//! [`write_cohort`] writes a whole labelled cohort (images, masks and a
//! manifest) for `multir synth`. The phantoms exist so that every stage of
//! the pipeline (loading, reorientation, lung masking, patching, the model,
//! lesion metrics) can be exercised and benchmarked without patient data,
//! against a ground truth that is known exactly.
//!
//! # Anatomy model
//!
//! The scene is analytic, in millimetres, and rendered at voxel centres,
//! with 2 x 2 sub-samples wherever a voxel straddles a sharp boundary
//! (partial volume), then lightly blurred ([1 2 1], the scanner's point
//! spread), then given artefacts and correlated noise. Textures are hashed
//! value-noise fields of the position in mm, so they are continuous across
//! slices and deterministic. HU values:
//!
//! | structure | model | HU | lung label |
//! |---|---|---|---|
//! | air outside the body, airways | | -1000 | no |
//! | body habitus | rib cage 200-300 mm wide; obesity (skewed low) sets fat thickness; everything shrinks to fit the 320-380 mm field of view | | |
//! | subcutaneous fat | beyond the chest-wall muscle; nominal 6-60 mm anterior, 4-37 mm lateral, 6-54 mm posterior (thin laterally in thin patients), varying around the body (2 harmonics), along z and lumpily (value noise); lobular mottling and thin fibrous septa | lobules -124..-76 (mostly -120..-80), septa up to about -45 | no |
//! | chest-wall muscle | beyond the ribs: base 4-12 mm, pectoralis major (anterior, upper chest, 8-22 mm), erector spinae (beside the spine, 28-42 mm), trapezius / latissimus (posterolateral, 8-18 mm); intercostal muscle between the ribs; mottling and thin fat streaks | 40..55 (+-4) | no |
//! | breasts (30 % of scans) | anterior protrusion over the pectorals, up to 15-60 mm; fibroglandular tissue mottled in its deep part | fat; gland 0..40 | no |
//! | arms (35 % down) | down: beside the chest, separated by air, radius 38-65 mm: humerus (fatty marrow, cortex), muscle, fat; up: absent from the chest slices | 30..1100; muscle; fat | no |
//! | ribs | ring segments around the cavity, repeating every 24-30 mm in z and sloping down anteriorly; cortex and marrow | 300 (marrow)..850 (cortex) | no |
//! | costal cartilage, sternum | anterior rib ends; anterior midline bone | 110; 250..600 | no |
//! | scapulae | posterolateral plates in the muscle outside the ribs (upper chest) | 500 | no |
//! | spine | vertebral body (discs every 24-30 mm), canal, arch, spinous process | 280..700; disc 80; canal 15 | no |
//! | table | thin curved slab under the body, separated by air | 200..400 | no |
//! | mediastinum | fat with islands of soft tissue around the great vessels | -100..35 | no |
//! | heart | ellipsoid on the left: myocardium (7-12 mm wall and septum), right chambers anterior-right, left chambers posterior-left | plain: all 35..53; enhanced (45 %): myocardium 85..120, chambers 150..400 | no |
//! | aorta, pulmonary trunk | ascending aorta, arch and descending aorta; trunk from the right ventricle to both hila | plain 35..45; enhanced: aorta 150..350, pulmonary arteries 150..400 | no |
//! | liver; stomach | below the right dome; gas cap and fluid below the left dome (60 % of scans) | 52..65 (enhanced 90..130); -1000 / 20 | no |
//! | trachea, main bronchi | air tubes from the neck to a carina and on to each hilum | -1000 | no |
//! | lungs | per side an ellipse clipped by the cavity, the mediastinum, the heart, the spine and aorta; rounded apex, domed base (right dome higher) | -875..-845 + mottling (8-16 HU, 2.5 and 6 mm correlation) + up to 40 denser posteriorly | yes |
//! | fissures | per lung an oblique plane, and in the right lung a shallow bowl (horizontal fissure) in front of it; 1 mm sheets, partial volume over the voxel's extent along their normal, incomplete in places; shared with the lobar consolidations that stop at them | about -700 at 1.5-2.4 mm voxels | yes |
//! | pulmonary vessels | per lung twelve binary trees from the hilum (arteries and veins alternating, apical to basal), radius 4.5-6 mm (9-12 mm calibre) thinning by 0.76 over 8 generations to ~0.6 mm; branches lean outwards and turn away from the pleura to stay in the lung; plus 350-500 peripheral twigs per lung (1-3.6 mm calibre) scattered evenly | plain about 40; enhanced: arteries as pulmonary arteries, veins as the aorta | yes |
//!
//! Lesions ([`LesionKind`]) are soft-edged, randomly lobulated ellipsoids
//! confined to one lung. Each has a membership weight `w` in [0, 1] (1 in
//! the middle, 0.5 exactly on its nominal surface, 0 outside); lung
//! parenchyma is blended towards the lesion's HU by `w`, vessels are painted
//! on top (ground glass does not hide them), and **the mask is exactly the
//! lung voxels where the strongest lesion has `w > 0.5`** (and no opaque
//! finding has weight over 0.5 there, which placement already guarantees):
//! what was painted at least half-way.
//!
//! - **COVID-19**: 2 to 8 peripheral (subpleural) ground-glass opacities,
//!   -680..-330 HU, at least one in each lung, flattened against the pleura
//!   and biased to posterior and lower zones, with a soft border (25 % of
//!   the radius). The first, larger one and about a third of the others have
//!   a consolidated core (-100..+40 HU).
//! - **CAP**: one large lobar or segmental consolidation (-90..+40 HU, sharp
//!   border, stopped by the scene's oblique or horizontal fissure), air
//!   bronchograms in 70 % of scans; a smaller satellite in the same lung in
//!   35 %, a small ground-glass focus in the other lung in 15 %.
//! - **Healthy**: no lesions; the mask is empty.
//!
//! **Findings** ([`FindingKind`], [`FindingInfo`]) that are not pneumonia
//! and never in the mask, drawn independently in scans of every class:
//!
//! | finding | share of scans | model | HU | lung label |
//! |---|---|---|---|---|
//! | nodule | 15 % | lobulated ellipsoid, 5-30 mm, anywhere in a lung | 20..50 | yes (a tumour in the lung is lung region) |
//! | mass | 6 % | 30-60 mm, lobulated, spiculated in 60 %; against the pleura, at the hilum or inside | 20..50 | yes |
//! | atelectasis | 15 % | pleura-based band or wedge at the posterior / lateral base; the hemidiaphragm rises 5-15 mm (volume loss) | 5..55 | yes (collapsed lung) |
//! | pleural effusion | 12 % (30 % of them bilateral) | dependent crescent, 10-40 mm deep posteriorly, thinning forwards and upwards, displacing the lung | 0..20 | **no** |
//! | emphysema | 12 % | 60-220 centrilobular holes (2-8 mm) and 0-2 bullae (16-36 mm), upper zones | about -985 | yes |
//!
//! Opaque findings are placed clear of every lesion's bounding box.
//!
//! Per scan the in-plane size (default 160-224 voxels over a 320-380 mm
//! field of view), slice spacing (1-5 mm), body habitus, fat, arms, breasts,
//! contrast, HU levels, noise (10-40 HU, correlated in-plane by a Gaussian
//! kernel of 0.6-1.3 voxels), artefacts, findings, lesion load and
//! orientation vary; [`PhantomParams`] records them. Artefacts: cupping
//! (0-22 HU lower at the body's centre, more in large patients) in every
//! scan; streaks (thin alternating bright and dark lines radiating from
//! the source, fading with distance) from a metal port chamber in the
//! upper anterior chest wall (about 12 % of scans) or from the humeri in
//! 60 % of arms-down scans, which also get a dark beam-hardening band
//! between the humeri. About half the scans are stored with an LPS-like
//! affine (voxel axes `i` and `j` flipped, as DICOM-derived NIfTI files
//! often are) so loaders and reorientation are exercised; image, mask and
//! lung labels always share one affine.
//!
//! # What is and is not realistic
//!
//! Realistic enough for pipeline tests and to keep a model from calling
//! the chest wall a lesion: the HU ranges of the tissues; a thick, uneven
//! and textured subcutaneous fat layer (the -120..-80 HU fat that real
//! scans have in litres, next to -100..+50 HU consolidations); chest-wall
//! and back muscles with fat streaks; breasts; arms down or up; plain and
//! enhanced blood; the body/table/air layout; lung shape and volume (about
//! 1.5-2.5 l per lung in a full-chest scan); a vessel tree reaching close
//! to the pleura; fissures; parenchymal texture and the dependent
//! gradient; correlated noise, streaks and cupping; partial volume at
//! boundaries; common non-pneumonia findings (nodules, masses, basal
//! atelectasis, effusions, emphysema) in every class; peripheral bilateral
//! multifocal GGO for COVID-19 against unilateral lobar consolidation for
//! CAP; voxel grids and orientations as in public cohorts.
//! Not realistic: the shapes are still smooth analytic primitives (an
//! elliptic rib cage, ellipsoid heart, tube vessels); there is no bronchial
//! tree inside the lungs (other than air bronchograms), no interlobular
//! septa or crazy paving, no breathing or motion artefacts, no shoulder
//! girdle (clavicles, humeral heads) above the apices, no axillary lymph
//! nodes or vessels, no abdominal organs other than liver and stomach; the
//! noise is stationary (not higher behind the shoulders) and only
//! approximately Gaussian; streaks are a pattern, not a reconstruction. A
//! model trained on phantoms will not transfer to patients as is; the
//! phantoms test the software, not the medicine.
//!
//! # Determinism
//!
//! A phantom depends only on its label, its seed and the configuration:
//! scene parameters come from one ChaCha8 stream seeded by the scan seed,
//! textures are hashed fields of the position, and the noise of slice `k`
//! comes from stream `k` of a second ChaCha8 generator (filtered within
//! the slice), so results are bit-identical whatever the thread count. In a
//! cohort, scan `i` has seed [`scan_seed`]`(cohort_seed, i)` and the labels
//! are a deterministic shuffle of a balanced list ([`cohort_labels`]).

mod geom;
mod scene;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{Context, Error, Result};
use crate::io::nifti::{self, WriteOptions};
use crate::manifest::{Label, Manifest, ManifestEntry};
use crate::volume::{Affine, Volume};
use scene::Scene;

/// Ranges the per-scan geometry and noise are drawn from. All ranges are
/// inclusive `[low, high]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PhantomConfig {
    /// In-plane voxel count (the grid is square).
    pub inplane: [usize; 2],
    /// In-plane field of view in mm; the pixel size is fov / inplane.
    pub fov_mm: [f64; 2],
    /// Slice spacing in mm (rounded to 1/8 mm).
    pub slice_mm: [f64; 2],
    /// Most slices per scan: thin-slice scans whose chest would need more
    /// cover a central slab of the chest instead.
    pub max_slices: usize,
    /// Standard deviation of the image noise, HU.
    pub noise_hu: [f64; 2],
    /// Fraction of scans stored with an LPS-like affine (i and j flipped).
    pub lps_fraction: f64,
}

impl Default for PhantomConfig {
    /// 160-224 voxels in-plane at about 1.4-2.4 mm, 1-5 mm slices, at most
    /// 160 slices: 1.5-8 M voxels (about 4 M on average), 6-32 MB as f32.
    fn default() -> Self {
        PhantomConfig {
            inplane: [160, 224],
            fov_mm: [320.0, 380.0],
            slice_mm: [1.0, 5.0],
            max_slices: 160,
            noise_hu: [10.0, 40.0],
            lps_fraction: 0.5,
        }
    }
}

impl PhantomConfig {
    /// The default configuration with voxel counts multiplied by `factor`
    /// in every direction (the anatomy keeps its size in mm, so voxels grow
    /// by 1 / `factor`): 0.3 gives tiny scans for tests, 2 large ones for
    /// benchmarks. Returns an error for factors outside (0, 8].
    pub fn scaled(factor: f64) -> Result<Self> {
        if !(factor.is_finite() && factor > 0.0 && factor <= 8.0) {
            return Err(Error::InvalidArgument(format!(
                "phantom size factor {factor} is outside (0, 8]"
            )));
        }
        let d = PhantomConfig::default();
        let cfg = PhantomConfig {
            inplane: d
                .inplane
                .map(|n| ((n as f64 * factor).round() as usize).max(MIN_INPLANE)),
            slice_mm: d.slice_mm.map(|s| s / factor),
            max_slices: ((d.max_slices as f64 * factor).round() as usize).max(MIN_SLICES),
            ..d
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Largest number of voxels a scan of this configuration can have.
    pub fn max_voxels(&self) -> u128 {
        let n = self.inplane[1] as u128;
        n * n * self.max_slices as u128
    }

    /// Checks that every range is ordered and sensible, and that the
    /// largest scan stays under the loaders' default voxel limit.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidArgument(format!("phantom config: {what}")));
        let range = |r: [f64; 2]| r[0].is_finite() && r[1].is_finite() && r[0] <= r[1];
        if self.inplane[0] > self.inplane[1]
            || self.inplane[0] < MIN_INPLANE
            || self.inplane[1] > 4096
        {
            return bad(&format!(
                "in-plane size {:?} must be an ordered range within [{MIN_INPLANE}, 4096]",
                self.inplane
            ));
        }
        if !range(self.fov_mm) || self.fov_mm[0] < 300.0 || self.fov_mm[1] > 600.0 {
            return bad(&format!(
                "field of view {:?} mm must be an ordered range within [300, 600] \
                 (the body is up to 340 mm wide)",
                self.fov_mm
            ));
        }
        if !range(self.slice_mm) || self.slice_mm[0] < 0.125 || self.slice_mm[1] > 40.0 {
            return bad(&format!(
                "slice spacing {:?} mm must be an ordered range within [0.125, 40]",
                self.slice_mm
            ));
        }
        if self.max_slices < MIN_SLICES || self.max_slices > 4096 {
            return bad(&format!(
                "max_slices {} must be within [{MIN_SLICES}, 4096]",
                self.max_slices
            ));
        }
        if !range(self.noise_hu) || self.noise_hu[0] < 0.0 || self.noise_hu[1] > 500.0 {
            return bad(&format!(
                "noise {:?} HU must be an ordered range within [0, 500]",
                self.noise_hu
            ));
        }
        if !(0.0..=1.0).contains(&self.lps_fraction) {
            return bad(&format!(
                "lps_fraction {} must be within [0, 1]",
                self.lps_fraction
            ));
        }
        let limit = crate::io::DEFAULT_MAX_VOXELS;
        if self.max_voxels() > limit as u128 {
            return bad(&format!(
                "scans of up to {} voxels exceed the loaders' limit of {limit}",
                self.max_voxels()
            ));
        }
        Ok(())
    }
}

/// Fewest in-plane voxels: below this the ribs and vessels vanish.
const MIN_INPLANE: usize = 16;
/// Fewest slices a scan may be limited to.
const MIN_SLICES: usize = 4;

/// What a lesion looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LesionKind {
    /// Ground-glass opacity (about -680..-330 HU).
    GroundGlass,
    /// Ground glass around a consolidated core (-100..+40 HU).
    MixedGroundGlass,
    /// Consolidation (about -90..+40 HU), possibly with air bronchograms.
    Consolidation,
}

/// The patient's right or left lung.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LungSide {
    /// Right lung (lung label 1, world +x).
    Right,
    /// Left lung (lung label 2, world -x).
    Left,
}

/// One painted lesion and its exact extent in the mask.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LesionInfo {
    /// Pattern.
    pub kind: LesionKind,
    /// The lung it is confined to.
    pub lung: LungSide,
    /// Centre in world RAS mm.
    pub center_mm: [f64; 3],
    /// Nominal semi-axes in mm (before lobulation and clipping).
    pub radii_mm: [f64; 3],
    /// Nominal HU of the lesion body.
    pub hu: f64,
    /// Mask voxels where this lesion is the strongest (overlaps count once).
    pub voxels: u64,
    /// `voxels` in millilitres.
    pub volume_ml: f64,
}

/// A non-pneumonia finding; never part of the lesion mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Solitary pulmonary nodule, 5-30 mm, soft tissue (lung label).
    Nodule,
    /// Lung mass, 30-60 mm, lobulated or spiculated, possibly touching the
    /// pleura or the hilum (lung label).
    Mass,
    /// Dependent basal atelectasis: a dense band or wedge, 0..60 HU, with
    /// volume loss (the hemidiaphragm rises); collapsed lung is lung label.
    Atelectasis,
    /// Pleural effusion: a posterior basal crescent of fluid, 0..20 HU,
    /// displacing the lung (never lung label).
    PleuralEffusion,
    /// Emphysema: centrilobular holes and bullae, about -985 HU, mostly in
    /// the upper zones (lung label).
    Emphysema,
}

/// One finding and its extent.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FindingInfo {
    /// What it is.
    pub kind: FindingKind,
    /// Its side.
    pub side: LungSide,
    /// Centre in world RAS mm (for emphysema, of the box of its holes).
    pub center_mm: [f64; 3],
    /// Voxels where it is more than half present (for emphysema, the
    /// holes), in millilitres.
    pub volume_ml: f64,
    /// Whether its voxels carry the lung label.
    pub in_lung_label: bool,
}

/// Whether the arms lie beside the chest or are raised above the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArmPosition {
    /// Raised: absent from the chest slices.
    Up,
    /// Down beside the chest: humerus, muscle and fat.
    Down,
}

/// Streak artefacts in a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Streaks {
    /// None.
    None,
    /// Radiating from a metal object in the anterior chest wall.
    Metal,
    /// Radiating from the humeri of arms down (with a dark band between).
    Arms,
}

/// The parameters a phantom was drawn with, and its exact measurements.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PhantomParams {
    /// The scan seed.
    pub seed: u64,
    /// Voxel counts along i, j, k.
    pub dims: [usize; 3],
    /// Voxel sizes along i, j, k in mm.
    pub spacing_mm: [f64; 3],
    /// Orientation of the stored grid ("RAS" or "LPS").
    pub axcodes: String,
    /// Standard deviation of the added noise, HU.
    pub noise_sigma_hu: f64,
    /// Mean lung parenchyma HU (before the posterior gradient).
    pub lung_hu: f64,
    /// Right and left lung volumes in ml (lung labels 1 and 2).
    pub lung_volume_ml: [f64; 2],
    /// Lesions with at least one mask voxel (touching lesions are counted
    /// separately even when their masks form one connected component).
    pub lesion_count: usize,
    /// Mask volume in ml.
    pub lesion_volume_ml: f64,
    /// Mask voxels in the right and left lung.
    pub lesion_voxels: [u64; 2],
    /// Mask volume over lung volume (0 for healthy scans).
    pub involvement: f64,
    /// Every painted lesion, including any that ended up with no voxels.
    pub lesions: Vec<LesionInfo>,
    /// Whether the scan is contrast-enhanced.
    pub contrast: bool,
    /// HU of the aorta and left heart, the right heart and pulmonary
    /// arteries, and the myocardium (about 40 each in plain scans).
    pub blood_hu: [f64; 3],
    /// Arms down beside the chest or raised.
    pub arms: ArmPosition,
    /// Whether the scan has breasts.
    pub breasts: bool,
    /// Nominal subcutaneous fat thickness anterior, lateral and posterior,
    /// mm (it varies around the body and along z about these).
    pub fat_mm: [f64; 3],
    /// Standard deviation in voxels of the Gaussian kernel that correlates
    /// the noise in-plane.
    pub noise_kernel_px: f64,
    /// Streak artefacts.
    pub streaks: Streaks,
    /// Depth of the cupping (beam hardening) at the body's centre, HU.
    pub cupping_hu: f64,
    /// Non-pneumonia findings (never in the mask).
    pub findings: Vec<FindingInfo>,
}

/// One synthetic scan with its ground truth. The three volumes share dims
/// and affine exactly.
#[derive(Debug, Clone)]
pub struct Phantom {
    /// CT image in HU.
    pub image: Volume,
    /// Lesion mask: 1 inside a lesion, 0 elsewhere.
    pub mask: Volume,
    /// Lung labels: 1 right lung, 2 left lung, 0 elsewhere (ground truth
    /// for lung masking; vessels inside the lungs are lung).
    pub lungs: Volume,
    /// The class it was drawn as.
    pub label: Label,
    /// How it was drawn and what it measures.
    pub params: PhantomParams,
}

/// Draws one phantom. Deterministic in `(label, seed, cfg)`; slices render
/// in parallel on the current rayon pool. Fails only on an invalid `cfg`.
pub fn generate(label: Label, seed: u64, cfg: &PhantomConfig) -> Result<Phantom> {
    cfg.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let scene = Scene::sample(&mut rng, label, cfg);
    let noise_sigma = geom::uni(&mut rng, cfg.noise_hu[0], cfg.noise_hu[1]);
    let lps = rng.random::<f64>() < cfg.lps_fraction;
    let noise_key = rng.next_u64();
    let kernel_px = geom::uni(&mut rng, 0.6, 1.3);

    let g = scene.grid;
    let [ni, nj, nk] = g.dims;
    let plane = ni * nj;
    let n = plane * nk;
    let mut img = vec![0f32; n];
    let mut mask = vec![0f32; n];
    let mut lungs = vec![0f32; n];
    let nles = scene.lesions.len();
    let ncount = nles + scene.findings.len();
    let counts = img
        .par_chunks_mut(plane)
        .zip(mask.par_chunks_mut(plane))
        .zip(lungs.par_chunks_mut(plane))
        .enumerate()
        .map(|(k, ((im, ma), lu))| {
            let mut c = vec![0u64; ncount];
            scene.render_slice(k, im, ma, lu, &mut c);
            blur_plane(im, ni, nj);
            c
        })
        .reduce(
            || vec![0u64; ncount],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
    // Thin slices get the same light blur along z; thick ones already
    // differ a lot from slice to slice and would smear anatomy.
    if g.dz <= 1.5 * g.px {
        blur_z(&mut img, plane, nk);
    }
    // Artefacts and noise per slice: each slice has its own noise stream,
    // correlated in-plane by a small Gaussian kernel (as a reconstruction
    // kernel does) and scaled back to the drawn sigma.
    let kernel = gaussian_kernel(kernel_px);
    let sigma = noise_sigma as f32;
    img.par_chunks_mut(plane).enumerate().for_each(|(k, im)| {
        scene.artefacts(k, im);
        let mut r = ChaCha8Rng::seed_from_u64(noise_key);
        r.set_stream(k as u64);
        let mut noise: Vec<f32> = (0..plane).map(|_| gaussian(&mut r)).collect();
        filter_plane(&mut noise, ni, nj, &kernel);
        for (v, e) in im.iter_mut().zip(&noise) {
            *v = (*v + sigma * e).clamp(-1024.0, 3071.0);
        }
    });

    // Affine: RAS as rendered, or LPS-like with i and j reversed (a
    // reversal of each slice's buffer), the origin moving to the far corner.
    let origin = [
        g.x0 + scene.shift[0],
        g.y0 + scene.shift[1],
        g.z0 + scene.shift[2],
    ];
    let mut affine = Affine::from_spacing_origin([g.px, g.px, g.dz], origin);
    if lps {
        affine.0[0][0] = -g.px;
        affine.0[1][1] = -g.px;
        affine.0[0][3] = origin[0] + (ni - 1) as f64 * g.px;
        affine.0[1][3] = origin[1] + (nj - 1) as f64 * g.px;
        for buf in [&mut img, &mut mask, &mut lungs] {
            buf.par_chunks_mut(plane).for_each(|s| s.reverse());
        }
    }

    let voxel_ml = g.px * g.px * g.dz / 1000.0;
    let mut lung_vox = [0u64; 2];
    let mut lesion_vox = [0u64; 2];
    for (l, m) in lungs.iter().zip(&mask) {
        if *l > 0.0 {
            let s = (*l as usize) - 1;
            lung_vox[s] += 1;
            if *m > 0.0 {
                lesion_vox[s] += 1;
            }
        }
    }
    let lesions: Vec<LesionInfo> = scene
        .lesions
        .iter()
        .zip(&counts)
        .map(|(l, &voxels)| LesionInfo {
            kind: l.kind,
            lung: Scene::side(l.lung),
            center_mm: geom::add(l.blob.center, scene.shift),
            radii_mm: l.blob.radii,
            hu: l.hu(),
            voxels,
            volume_ml: voxels as f64 * voxel_ml,
        })
        .collect();
    let findings: Vec<FindingInfo> = scene
        .findings
        .iter()
        .zip(&counts[nles..])
        .map(|(f, &voxels)| FindingInfo {
            kind: f.kind,
            side: Scene::side(f.lung),
            center_mm: geom::add(f.center, scene.shift),
            volume_ml: voxels as f64 * voxel_ml,
            in_lung_label: f.kind != FindingKind::PleuralEffusion,
        })
        .collect();
    let total_lesion = lesion_vox[0] + lesion_vox[1];
    let total_lung = lung_vox[0] + lung_vox[1];
    let params = PhantomParams {
        seed,
        dims: g.dims,
        spacing_mm: [g.px, g.px, g.dz],
        axcodes: affine.axcodes(),
        noise_sigma_hu: noise_sigma,
        lung_hu: scene.lung_hu,
        lung_volume_ml: lung_vox.map(|v| v as f64 * voxel_ml),
        lesion_count: lesions.iter().filter(|l| l.voxels > 0).count(),
        lesion_volume_ml: total_lesion as f64 * voxel_ml,
        lesion_voxels: lesion_vox,
        involvement: if total_lung > 0 {
            total_lesion as f64 / total_lung as f64
        } else {
            0.0
        },
        lesions,
        contrast: scene.contrast,
        blood_hu: scene.blood,
        arms: scene.arm_position(),
        breasts: scene.breasts(),
        fat_mm: scene.fat_mm(),
        noise_kernel_px: kernel_px,
        streaks: scene.streaks,
        cupping_hu: scene.cupping,
        findings,
    };
    Ok(Phantom {
        image: Volume::new(img, g.dims, affine)?,
        mask: Volume::new(mask, g.dims, affine)?,
        lungs: Volume::new(lungs, g.dims, affine)?,
        label,
        params,
    })
}

/// Approximately standard normal: the sum of four 16-bit uniforms
/// (Irwin-Hall), standardised. One 64-bit draw per sample, tails cut at
/// about 3.5 sigma, which is plenty for image noise and much cheaper than
/// Box-Muller.
#[inline]
fn gaussian(r: &mut ChaCha8Rng) -> f32 {
    let x = r.next_u64();
    let s = (x & 0xffff) + ((x >> 16) & 0xffff) + ((x >> 32) & 0xffff) + (x >> 48);
    // Mean 4 * 32767.5; variance 4 * (65536^2 - 1) / 12.
    const MEAN: f32 = 131_070.0;
    const INV_SD: f32 = 1.0 / 37_837.23;
    (s as f32 - MEAN) * INV_SD
}

/// In-place [1 2 1]/4 blur along i then j of one slice, edges clamped.
fn blur_plane(s: &mut [f32], ni: usize, nj: usize) {
    let mut line = vec![0f32; ni.max(nj)];
    for j in 0..nj {
        let row = &mut s[j * ni..(j + 1) * ni];
        line[..ni].copy_from_slice(row);
        for i in 0..ni {
            let a = line[i.saturating_sub(1)];
            let c = line[(i + 1).min(ni - 1)];
            row[i] = 0.25 * a + 0.5 * line[i] + 0.25 * c;
        }
    }
    for i in 0..ni {
        for j in 0..nj {
            line[j] = s[i + ni * j];
        }
        for j in 0..nj {
            let a = line[j.saturating_sub(1)];
            let c = line[(j + 1).min(nj - 1)];
            s[i + ni * j] = 0.25 * a + 0.5 * line[j] + 0.25 * c;
        }
    }
}

/// A normalised 1D Gaussian kernel of standard deviation `sigma` voxels,
/// scaled so that separable filtering of unit white noise in 2D keeps unit
/// variance (the 2D gain is the square of the 1D sum of squares).
fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let r = (2.5 * sigma).ceil().max(1.0) as i64;
    let w: Vec<f64> = (-r..=r)
        .map(|i| (-0.5 * (i as f64 / sigma).powi(2)).exp())
        .collect();
    let sum: f64 = w.iter().sum();
    let w: Vec<f64> = w.iter().map(|v| v / sum).collect();
    let ss: f64 = w.iter().map(|v| v * v).sum();
    w.iter().map(|v| (v / ss.sqrt()) as f32).collect()
}

/// Separable in-plane filter with `kernel` (odd length), edges clamped.
fn filter_plane(s: &mut [f32], ni: usize, nj: usize, kernel: &[f32]) {
    let r = kernel.len() / 2;
    let mut line = vec![0f32; ni.max(nj)];
    let mut tmp = vec![0f32; ni.max(nj)];
    let pass = |line: &[f32], out: &mut [f32], n: usize| {
        for (i, o) in out[..n].iter_mut().enumerate() {
            let mut acc = 0.0;
            for (t, &w) in kernel.iter().enumerate() {
                let src = (i + t).saturating_sub(r).min(n - 1);
                acc += w * line[src];
            }
            *o = acc;
        }
    };
    for j in 0..nj {
        let row = &mut s[j * ni..(j + 1) * ni];
        line[..ni].copy_from_slice(row);
        pass(&line, &mut tmp, ni);
        row.copy_from_slice(&tmp[..ni]);
    }
    for i in 0..ni {
        for j in 0..nj {
            line[j] = s[i + ni * j];
        }
        pass(&line, &mut tmp, nj);
        for j in 0..nj {
            s[i + ni * j] = tmp[j];
        }
    }
}

/// [1 2 1]/4 blur along k, edges clamped.
fn blur_z(v: &mut [f32], plane: usize, nk: usize) {
    if nk < 2 {
        return;
    }
    let src = v.to_vec();
    v.par_chunks_mut(plane).enumerate().for_each(|(k, out)| {
        let a = &src[k.saturating_sub(1) * plane..][..plane];
        let b = &src[k * plane..][..plane];
        let c = &src[(k + 1).min(nk - 1) * plane..][..plane];
        for (i, o) in out.iter_mut().enumerate() {
            *o = 0.25 * a[i] + 0.5 * b[i] + 0.25 * c[i];
        }
    });
}

/// The seed of scan `index` in a cohort: a SplitMix64 mix of both, so that
/// neighbouring indices and cohort seeds give unrelated streams.
pub fn scan_seed(cohort_seed: u64, index: usize) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    mix(cohort_seed ^ mix(index as u64))
}

/// The labels of a cohort of `n` scans: `n / 3` of each class (the first
/// `n % 3` classes one more), in an order shuffled by `cohort_seed`.
pub fn cohort_labels(n: usize, cohort_seed: u64) -> Vec<Label> {
    let mut labels: Vec<Label> = (0..n).map(|i| Label::ALL[i % 3]).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cohort_seed ^ 0x6c61_6265_6c73); // "labels"
    labels.shuffle(&mut rng);
    labels
}

/// Most scans one cohort may have.
pub const MAX_COHORT: usize = 1_000_000;

/// Writes a cohort of `n` phantoms under `out`: `images/<id>.nii.gz`
/// (int16 HU), `masks/<id>.nii.gz` (uint8), `manifest.csv` (paths relative
/// to `out`) and `phantoms.json` (each scan's [`PhantomParams`]). Scans are
/// generated in parallel; `progress(done, n)` is called after each one is
/// written (from worker threads, in completion order). Existing files of
/// the same names are replaced. Returns the manifest as written.
pub fn write_cohort(
    out: &Path,
    n: usize,
    seed: u64,
    cfg: &PhantomConfig,
    progress: impl Fn(usize, usize) + Sync,
) -> Result<Manifest> {
    if n == 0 {
        return Err(Error::InvalidArgument(
            "a cohort needs at least one scan (got 0)".into(),
        ));
    }
    if n > MAX_COHORT {
        return Err(Error::InvalidArgument(format!(
            "{n} scans is more than the limit of {MAX_COHORT} per cohort"
        )));
    }
    cfg.validate()?;
    for sub in ["images", "masks"] {
        let d = out.join(sub);
        std::fs::create_dir_all(&d).in_file(&d)?;
    }
    let labels = cohort_labels(n, seed);
    let width = n.saturating_sub(1).to_string().len().max(5);
    let done = AtomicUsize::new(0);
    let rows: Vec<(ManifestEntry, serde_json::Value)> = (0..n)
        .into_par_iter()
        .map(|i| -> Result<_> {
            let id = format!("synth-{i:0width$}");
            let label = labels[i];
            let s = scan_seed(seed, i);
            let ph = generate(label, s, cfg)?;
            let image = format!("images/{id}.nii.gz");
            let mask = format!("masks/{id}.nii.gz");
            nifti::write_path(out.join(&image), &ph.image, &WriteOptions::ct_int16())?;
            nifti::write_path(out.join(&mask), &ph.mask, &WriteOptions::mask())?;
            let record = serde_json::json!({
                "scan_id": id,
                "label": label,
                "params": ph.params,
            });
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, n);
            Ok((
                ManifestEntry {
                    scan_id: id,
                    image: image.into(),
                    label: Some(label),
                    mask: Some(mask.into()),
                },
                record,
            ))
        })
        .collect::<Result<_>>()?;
    let (entries, records): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
    let params_path = out.join("phantoms.json");
    let json =
        serde_json::to_vec_pretty(&records).map_err(|e| Error::Io(std::io::Error::other(e)))?;
    crate::io::write_atomic(&params_path, |f| Ok(f.write_all(&json)?))?;
    let manifest = Manifest {
        root: out.to_path_buf(),
        entries,
    };
    manifest.write_path(out.join("manifest.csv"))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::LoadOptions;

    /// Tiny scans (about 4-6 mm voxels) for structure checks.
    fn small() -> PhantomConfig {
        PhantomConfig::scaled(0.4).unwrap()
    }

    /// Small scans with voxels fine enough (about 2.5-4 mm) that partial
    /// volume at lesion borders does not dominate the HU statistics.
    fn medium() -> PhantomConfig {
        PhantomConfig::scaled(0.6).unwrap()
    }

    /// Mask voxels per lung and image values inside the mask.
    fn lesion_stats(p: &Phantom) -> ([u64; 2], Vec<f32>) {
        let mut per = [0u64; 2];
        let mut vals = Vec::new();
        for ((&m, &l), &v) in p.mask.data().iter().zip(p.lungs.data()).zip(p.image.data()) {
            if m > 0.0 {
                assert!(l > 0.0, "mask voxel outside the lungs");
                per[l as usize - 1] += 1;
                vals.push(v);
            }
        }
        (per, vals)
    }

    fn mean(v: &[f32]) -> f64 {
        v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
    }

    #[test]
    fn deterministic_per_seed() {
        let cfg = small();
        let a = generate(Label::Covid, 7, &cfg).unwrap();
        // A one-thread pool gives the same bits as the global pool.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let b = pool.install(|| generate(Label::Covid, 7, &cfg)).unwrap();
        assert_eq!(a.image, b.image);
        assert_eq!(a.mask, b.mask);
        assert_eq!(a.params, b.params);
        let pool2 = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let b2 = pool2.install(|| generate(Label::Covid, 7, &cfg)).unwrap();
        assert_eq!(a.image, b2.image);
        assert_eq!(a.lungs, b2.lungs);
        let c = generate(Label::Covid, 8, &cfg).unwrap();
        assert!(a.image.dims() != c.image.dims() || a.image.data() != c.image.data());
        assert_eq!(scan_seed(1, 2), scan_seed(1, 2));
        assert_ne!(scan_seed(1, 2), scan_seed(1, 3));
        assert_ne!(scan_seed(1, 2), scan_seed(2, 2));
    }

    #[test]
    fn healthy_scans_have_empty_masks_and_plausible_anatomy() {
        // Voxels of 2.5-4 mm: in the 4-6 mm ones of `small` the partial
        // volume of the chest wall, vessels and fissures takes up much of
        // the thin lung.
        let cfg = medium();
        for seed in 0..4 {
            let p = generate(Label::Healthy, seed, &cfg).unwrap();
            assert!(p.mask.data().iter().all(|&m| m == 0.0));
            assert_eq!(p.params.lesion_count, 0);
            assert_eq!(p.params.involvement, 0.0);
            assert_eq!(p.image.affine(), p.mask.affine());
            assert_eq!(p.image.affine(), p.lungs.affine());
            // Lung parenchyma near -850 HU.
            let mut lung: Vec<f32> = p
                .image
                .data()
                .iter()
                .zip(p.lungs.data())
                .filter(|(_, l)| **l > 0.0)
                .map(|(v, _)| *v)
                .collect();
            lung.sort_by(f32::total_cmp);
            let med = lung[lung.len() / 2];
            assert!(
                (-900.0..=-780.0).contains(&med),
                "seed {seed}: lung median {med}"
            );
            // Both lungs, each a plausible 1-4 litres unless a thin slab.
            for v in p.params.lung_volume_ml {
                assert!(v > 100.0 && v < 4000.0, "seed {seed}: lung volume {v} ml");
            }
            // Corners are air; bone exists (ribs, spine).
            let d = p.image.dims();
            assert!(p.image.get(0, 0, d[2] / 2) < -900.0);
            let s = p.image.stats();
            assert!(s.max > 250.0, "no bone: max {}", s.max);
            assert!(s.min >= -1024.0);
        }
    }

    #[test]
    fn covid_lesions_are_bilateral_ground_glass_with_cores() {
        let cfg = medium();
        for seed in 0..6 {
            let p = generate(Label::Covid, 100 + seed, &cfg).unwrap();
            let (per, vals) = lesion_stats(&p);
            assert!(
                per[0] > 0 && per[1] > 0,
                "seed {seed}: not bilateral {per:?}"
            );
            let m = mean(&vals);
            assert!((-750.0..=-250.0).contains(&m), "seed {seed}: GGO mean {m}");
            assert!(
                vals.iter().any(|&v| v > -150.0),
                "seed {seed}: no consolidated core"
            );
            assert!(p.params.lesion_count >= 2 && p.params.lesion_count <= 8);
            assert_eq!(p.params.lesion_voxels, per);
            let sum: u64 = p.params.lesions.iter().map(|l| l.voxels).sum();
            assert_eq!(sum, per[0] + per[1]);

            // Left/right by world position: the right lung's lesions lie at
            // larger world x than the body's midline, whatever the affine.
            let (canon, _) = p.image.to_canonical();
            assert_eq!(canon.affine().axcodes(), "RAS");
            let (cm, _) = p.mask.to_canonical();
            let (cl, _) = p.lungs.to_canonical();
            let d = cm.dims();
            let mut xs = [0.0f64; 2];
            let mut ns = [0.0f64; 2];
            for k in 0..d[2] {
                for j in 0..d[1] {
                    for i in 0..d[0] {
                        if cm.get(i, j, k) > 0.0 {
                            let s = cl.get(i, j, k) as usize - 1;
                            xs[s] += cm.affine().apply([i as f64, j as f64, k as f64])[0];
                            ns[s] += 1.0;
                        }
                    }
                }
            }
            assert!(
                xs[0] / ns[0] > xs[1] / ns[1],
                "seed {seed}: right lesions not at +x"
            );
        }
    }

    #[test]
    fn cap_is_one_sided_consolidation() {
        let cfg = medium();
        for seed in 0..6 {
            let p = generate(Label::Cap, 200 + seed, &cfg).unwrap();
            let (per, vals) = lesion_stats(&p);
            let total = per[0] + per[1];
            assert!(total > 0, "seed {seed}: empty CAP mask");
            let major = per[0].max(per[1]) as f64 / total as f64;
            assert!(major >= 0.8, "seed {seed}: not one-sided {per:?}");
            let m = mean(&vals);
            assert!(
                (-150.0..=80.0).contains(&m),
                "seed {seed}: consolidation mean {m}"
            );
            assert!(
                p.params
                    .lesions
                    .iter()
                    .any(|l| l.kind == LesionKind::Consolidation)
            );
        }
    }

    #[test]
    fn lung_outside_lesions_and_mask_are_consistent() {
        // 2.5-4 mm voxels, as in the healthy-anatomy test.
        let cfg = medium();
        let p = generate(Label::Covid, 3, &cfg).unwrap();
        let mut lung: Vec<f32> = Vec::new();
        for ((&m, &l), &v) in p.mask.data().iter().zip(p.lungs.data()).zip(p.image.data()) {
            if l > 0.0 && m == 0.0 {
                lung.push(v);
            }
            assert!(m == 0.0 || m == 1.0);
        }
        lung.sort_by(f32::total_cmp);
        let med = lung[lung.len() / 2];
        assert!((-900.0..=-780.0).contains(&med), "lung median {med}");
        let vox_ml = p.mask.voxel_volume_mm3() / 1000.0;
        let n = p.mask.data().iter().filter(|&&m| m > 0.0).count() as f64;
        assert!((p.params.lesion_volume_ml - n * vox_ml).abs() < 1e-6);
        assert!(p.params.involvement > 0.0 && p.params.involvement < 1.0);
    }

    #[test]
    fn spacing_orientation_and_size_vary() {
        let cfg = PhantomConfig {
            lps_fraction: 0.5,
            ..small()
        };
        let mut codes = std::collections::HashSet::new();
        let mut dz = Vec::new();
        for seed in 0..16 {
            let p = generate(Label::Healthy, seed, &cfg).unwrap();
            codes.insert(p.params.axcodes.clone());
            dz.push(p.params.spacing_mm[2]);
            let d = p.image.dims();
            assert!(d[0] >= cfg.inplane[0] && d[0] <= cfg.inplane[1]);
            assert!(d[2] <= cfg.max_slices);
        }
        assert!(codes.contains("RAS") && codes.contains("LPS"), "{codes:?}");
        let (lo, hi) = dz
            .iter()
            .fold((f64::MAX, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
        assert!(hi - lo > 2.0, "slice spacing hardly varies: {dz:?}");
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(PhantomConfig::scaled(0.0).is_err());
        assert!(PhantomConfig::scaled(f64::NAN).is_err());
        assert!(PhantomConfig::default().validate().is_ok());
        let bad = [
            PhantomConfig {
                inplane: [200, 100],
                ..Default::default()
            },
            PhantomConfig {
                inplane: [4, 8],
                ..Default::default()
            },
            PhantomConfig {
                slice_mm: [0.0, 1.0],
                ..Default::default()
            },
            PhantomConfig {
                fov_mm: [100.0, 200.0],
                ..Default::default()
            },
            PhantomConfig {
                noise_hu: [f64::NAN, 1.0],
                ..Default::default()
            },
            PhantomConfig {
                lps_fraction: 2.0,
                ..Default::default()
            },
            PhantomConfig {
                inplane: [4000, 4000],
                max_slices: 4000,
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(generate(Label::Healthy, 1, &c).is_err(), "{c:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let e = write_cohort(dir.path(), 0, 1, &small(), |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("at least one scan"), "{e}");
    }

    #[test]
    fn write_cohort_writes_readable_files_and_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cohort");
        let cfg = PhantomConfig::scaled(0.3).unwrap();
        let calls = AtomicUsize::new(0);
        let m = write_cohort(&out, 7, 42, &cfg, |done, total| {
            assert!(done >= 1 && done <= total && total == 7);
            calls.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 7);
        assert_eq!(m.len(), 7);
        let counts = m.label_counts();
        assert_eq!(counts.iter().sum::<usize>(), 7);
        assert!(counts.iter().all(|&c| c == 2 || c == 3), "{counts:?}");

        let back = Manifest::read_path(out.join("manifest.csv")).unwrap();
        assert_eq!(back.entries, m.entries);
        for e in &back.entries {
            assert!(e.image.is_relative());
            let img = nifti::read_path(e.image_path(&back), &LoadOptions::default()).unwrap();
            let mask =
                nifti::read_path(e.mask_path(&back).unwrap(), &LoadOptions::default()).unwrap();
            assert_eq!(img.info.dtype, "int16");
            assert_eq!(mask.info.dtype, "uint8");
            assert_eq!(img.volume.dims(), mask.volume.dims());
            assert_eq!(img.volume.affine(), mask.volume.affine());
            // Same scan as generate() gives, up to int16 rounding.
            let i: usize = e.scan_id.trim_start_matches("synth-").parse().unwrap();
            let p = generate(e.label.unwrap(), scan_seed(42, i), &cfg).unwrap();
            assert_eq!(mask.volume.data(), p.mask.data());
            let close = img
                .volume
                .data()
                .iter()
                .zip(p.image.data())
                .all(|(a, b)| (a - b).abs() <= 0.5);
            assert!(close);
            let has_lesion = mask.volume.data().iter().any(|&v| v > 0.0);
            assert_eq!(has_lesion, e.label != Some(Label::Healthy), "{}", e.scan_id);
        }
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("phantoms.json")).unwrap()).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 7);
        // Same cohort seed, same labels; the shuffle depends on the seed.
        assert_eq!(
            cohort_labels(7, 42),
            m.entries
                .iter()
                .map(|e| e.label.unwrap())
                .collect::<Vec<_>>()
        );
    }

    /// Seeds (from 0) whose scene of `label` has a finding `pick` accepts.
    fn seeds_with(
        label: Label,
        cfg: &PhantomConfig,
        n: usize,
        pick: impl Fn(&scene::Finding) -> bool,
    ) -> Vec<u64> {
        (0..400u64)
            .filter(|&seed| {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                Scene::sample(&mut rng, label, cfg)
                    .findings
                    .iter()
                    .any(&pick)
            })
            .take(n)
            .collect()
    }

    #[test]
    fn findings_are_never_lesions_and_effusion_is_never_lung() {
        let cfg = PhantomConfig {
            lps_fraction: 0.0,
            ..small()
        };
        let mut cases: Vec<(Label, u64)> = Vec::new();
        for label in [Label::Covid, Label::Cap, Label::Healthy] {
            for s in seeds_with(label, &cfg, 2, |f| f.kind == FindingKind::PleuralEffusion) {
                cases.push((label, s));
            }
            for s in seeds_with(label, &cfg, 2, |f| f.opaque()) {
                cases.push((label, s));
            }
        }
        assert!(cases.len() >= 10, "{cases:?}");
        let (mut fluid, mut opaque) = (0u64, 0u64);
        for (label, seed) in cases {
            let p = generate(label, seed, &cfg).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let scene = Scene::sample(&mut rng, label, &cfg);
            let [ni, nj, nk] = p.image.dims();
            for k in 0..nk {
                for j in 0..nj {
                    for i in 0..ni {
                        let (lab, w) = scene.probe(i, j, k);
                        let (m, l) = (p.mask.get(i, j, k), p.lungs.get(i, j, k));
                        if lab > 2 {
                            fluid += 1;
                            assert_eq!(l, 0.0, "{label:?} {seed}: effusion is lung");
                            assert_eq!(m, 0.0, "{label:?} {seed}: effusion in mask");
                        }
                        if w > 0.5 {
                            opaque += 1;
                            assert_eq!(m, 0.0, "{label:?} {seed}: finding in mask");
                            assert!(l > 0.0, "{label:?} {seed}: finding outside lung");
                        }
                        if m > 0.0 {
                            assert!(l > 0.0, "{label:?} {seed}: lesion outside lung");
                        }
                    }
                }
            }
            for f in &p.params.findings {
                assert_eq!(f.in_lung_label, f.kind != FindingKind::PleuralEffusion);
            }
            let sum: u64 = p.params.lesions.iter().map(|l| l.voxels).sum();
            assert_eq!(sum, p.params.lesion_voxels[0] + p.params.lesion_voxels[1]);
        }
        assert!(fluid > 0 && opaque > 0, "fluid {fluid}, opaque {opaque}");
    }

    #[test]
    fn correlated_noise_keeps_its_sigma() {
        let (ni, nj) = (96, 96);
        for sigma in [0.6, 1.3] {
            let k = gaussian_kernel(sigma);
            let mut r = ChaCha8Rng::seed_from_u64(9);
            let mut v: Vec<f32> = (0..ni * nj).map(|_| gaussian(&mut r)).collect();
            filter_plane(&mut v, ni, nj, &k);
            // Interior only: clamped edges repeat samples.
            let mut s2 = 0.0;
            let mut lag = 0.0;
            let mut n = 0.0;
            for j in 8..nj - 8 {
                for i in 8..ni - 8 {
                    let a = v[i + ni * j] as f64;
                    s2 += a * a;
                    lag += a * v[i + 1 + ni * j] as f64;
                    n += 1.0;
                }
            }
            let var = s2 / n;
            assert!((var - 1.0).abs() < 0.12, "sigma {sigma}: variance {var}");
            assert!(
                lag / s2 > 0.3,
                "sigma {sigma}: not correlated ({})",
                lag / s2
            );
        }
    }

    #[test]
    fn noise_is_standardised() {
        let mut r = ChaCha8Rng::seed_from_u64(5);
        let v: Vec<f64> = (0..200_000).map(|_| gaussian(&mut r) as f64).collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64;
        assert!(
            m.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "mean {m} var {var}"
        );
    }
}
