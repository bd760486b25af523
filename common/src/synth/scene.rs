//! The phantom as a scene in anatomical millimetres (x towards the
//! patient's right, y anterior, z superior; body axis through x = y = 0,
//! lung bases at z = 0, apices at z = `h`), sampled from one RNG stream and
//! rendered one axial slice at a time.
//!
//! Rendering a slice reads the scene only (textures are hashed value-noise
//! fields of the position in mm), so slices render in parallel and the
//! result does not depend on the thread count.

use std::f64::consts::TAU;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::geom::{
    Aabb, Blob, Tube, V3, add, deflect, dot, frame, normalize, scale, smoothstep, sub, uni, unit,
    value_noise,
};
use super::{ArmPosition, FindingKind, LesionKind, LungSide, PhantomConfig, Streaks};
use crate::manifest::Label;

/// Air outside the body and in the airways.
const AIR_HU: f32 = -1000.0;
/// Air inside air bronchograms.
const BRONCHOGRAM_HU: f64 = -920.0;
/// Emphysematous lung: almost air.
const EMPHYSEMA_HU: f64 = -985.0;
/// A fissure (two pleural layers) at full resolution; partial volume
/// brings the ~1 mm sheet to about -700 HU in a 1.5-2.4 mm voxel.
const FISSURE_HU: f64 = -350.0;
/// Thickness of a fissure sheet in mm.
const FISSURE_MM: f64 = 1.0;
/// Fibrous septa in fat and muscle.
const SEPTUM_HU: f64 = 10.0;
/// A metal object (port chamber, clip) in the chest wall.
const METAL_HU: f64 = 3000.0;
/// Directions per slice at which the chest-wall layers are tabulated.
const WALL_BINS: usize = 720;

/// The voxel grid in anatomical coordinates: voxel (i, j, k) has its centre
/// at (x0 + i px, y0 + j px, z0 + k dz).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    pub dims: [usize; 3],
    pub x0: f64,
    pub y0: f64,
    pub z0: f64,
    pub px: f64,
    pub dz: f64,
}

impl Grid {
    pub fn z(&self, k: usize) -> f64 {
        self.z0 + k as f64 * self.dz
    }

    /// Index range along an axis covering `[lo, hi]` mm, clipped to the grid.
    fn range(lo: f64, hi: f64, origin: f64, step: f64, n: usize) -> std::ops::Range<usize> {
        let a = ((lo - origin) / step).ceil().max(0.0);
        let b = ((hi - origin) / step).floor();
        if b < 0.0 || a > (n - 1) as f64 || a > b {
            return 0..0;
        }
        a as usize..(b.min((n - 1) as f64) as usize + 1)
    }

    fn cols(&self, b: &Aabb) -> std::ops::Range<usize> {
        Self::range(b.lo[0], b.hi[0], self.x0, self.px, self.dims[0])
    }

    fn rows(&self, b: &Aabb) -> std::ops::Range<usize> {
        Self::range(b.lo[1], b.hi[1], self.y0, self.px, self.dims[1])
    }

    /// Centre of the nearest voxel to a point (clamped into the grid).
    fn snap(&self, p: V3) -> V3 {
        let s = |v: f64, o: f64, st: f64, n: usize| {
            o + ((v - o) / st).round().clamp(0.0, (n - 1) as f64) * st
        };
        [
            s(p[0], self.x0, self.px, self.dims[0]),
            s(p[1], self.y0, self.px, self.dims[1]),
            s(p[2], self.z0, self.dz, self.dims[2]),
        ]
    }

    fn z_hi(&self) -> f64 {
        self.z(self.dims[2] - 1)
    }
}

/// A fissure surface: a plane (oblique fissures) or a shallow bowl
/// (the right horizontal fissure, which is domed, so axial slices cut it
/// as a curved line rather than a whole-slice haze).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Surface {
    /// Unit normal and offset: distance `n . p - off`.
    Plane(V3, f64),
    /// `z = z0 + k ((x - cx)^2 + (y - cy)^2)`.
    Bowl { z0: f64, c: [f64; 2], k: f64 },
}

impl Surface {
    /// Signed distance in mm (first order), positive above / in front.
    #[inline]
    pub fn dist(&self, p: V3) -> f64 {
        match *self {
            Surface::Plane(n, off) => dot(n, p) - off,
            Surface::Bowl { z0, c, k } => {
                let (dx, dy) = (p[0] - c[0], p[1] - c[1]);
                let g = p[2] - z0 - k * (dx * dx + dy * dy);
                g / (1.0 + 4.0 * k * k * (dx * dx + dy * dy)).sqrt()
            }
        }
    }

    /// The z component of the unit normal at `p` (how flat the sheet lies
    /// in an axial slice).
    #[inline]
    fn nz(&self, p: V3) -> f64 {
        match *self {
            Surface::Plane(n, _) => n[2],
            Surface::Bowl { c, k, .. } => {
                let (dx, dy) = (p[0] - c[0], p[1] - c[1]);
                1.0 / (1.0 + 4.0 * k * k * (dx * dx + dy * dy)).sqrt()
            }
        }
    }
}

/// The fissures of one lung.
#[derive(Debug, Clone)]
pub(crate) struct Fissures {
    /// Oblique (major) fissure; the upper lobe is on its positive side.
    pub oblique: Surface,
    /// Horizontal (minor) fissure of the right lung, separating the upper
    /// from the middle lobe in front of the oblique fissure.
    pub horizontal: Option<Surface>,
}

/// A lesion: a soft region restricted to one lung, with its own target HU.
#[derive(Debug, Clone)]
pub(crate) struct Lesion {
    pub kind: LesionKind,
    /// Lung label it is confined to: 1 right, 2 left.
    pub lung: u8,
    pub blob: Blob,
    hu: f64,
    /// Denser core: (region, HU).
    core: Option<(Blob, f64)>,
    /// Fissure sides (surface, sign): the lesion stops at fissures.
    planes: Vec<(Surface, f64)>,
    /// Air bronchograms inside a consolidation.
    bronchi: Vec<Tube>,
}

impl Lesion {
    #[inline]
    fn weight(&self, p: V3) -> f64 {
        let mut w = self.blob.weight(p);
        if w <= 0.0 {
            return 0.0;
        }
        for (f, sg) in &self.planes {
            // A fissure is thin: the consolidation stops within ~1.5 mm.
            w *= smoothstep(-1.5, 1.5, sg * f.dist(p));
        }
        w
    }

    #[inline]
    fn target(&self, p: V3) -> f64 {
        let mut t = self.hu;
        if let Some((core, hu)) = &self.core {
            t += (hu - t) * core.weight(p);
        }
        let wb = self.bronchi.iter().map(|b| b.weight(p)).fold(0.0, f64::max);
        t + (BRONCHOGRAM_HU - t) * wb
    }

    /// Nominal HU of the lesion body (before cores and bronchograms).
    pub fn hu(&self) -> f64 {
        self.hu
    }
}

/// A finding that is not pneumonia and never part of the lesion mask.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub kind: FindingKind,
    /// Lung label of its side: 1 right, 2 left.
    pub lung: u8,
    /// Centre in anatomical mm.
    pub center: V3,
    /// Opaque body (nodule, mass, atelectasis).
    body: Option<Blob>,
    /// Spicules of a mass.
    spicules: Vec<Tube>,
    /// Emphysematous holes and bullae.
    holes: Vec<Tube>,
    hu: f64,
    bbox: Aabb,
}

impl Finding {
    /// Membership of the opaque part (0 for effusion and emphysema).
    #[inline]
    fn weight(&self, p: V3) -> f64 {
        let mut w = self.body.as_ref().map_or(0.0, |b| b.weight(p));
        for s in &self.spicules {
            w = w.max(s.weight(p));
        }
        w
    }

    /// Whether the finding is painted as an opaque body in the lung.
    pub fn opaque(&self) -> bool {
        self.body.is_some()
    }
}

/// A pleural effusion: fluid in the dependent pleural space, displacing
/// the lung (never lung label).
#[derive(Debug, Clone, Copy)]
struct Effusion {
    /// Largest depth of the crescent (posteriorly, at the base), mm.
    thick: f64,
    /// Height above which no fluid remains, mm.
    top: f64,
    hu: f64,
}

/// Subcutaneous fat and chest-wall muscle beyond the rib cage.
#[derive(Debug, Clone)]
struct Wall {
    /// Nominal fat thickness anterior, lateral, posterior, mm.
    fat: [f64; 3],
    /// Harmonics around the circumference: (relative amplitude, order,
    /// phase).
    fat_harm: [(f64, f64, f64); 2],
    /// Variation along z: relative amplitude, period (mm), phase.
    fat_z: [f64; 3],
    /// Relative amplitude of the lumpy (value-noise) variation.
    fat_lumpy: f64,
    /// Base muscle thickness anterior, lateral, posterior, mm.
    muscle: [f64; 3],
    /// Pectoralis (anterior, upper chest), erector spinae (beside the
    /// spine), trapezius / latissimus (posterolateral) thickness, mm.
    pect: f64,
    erector: f64,
    lat: f64,
    /// Breasts: centre |x|, centre z, radii x and z, protrusion (mm).
    breast: Option<[f64; 5]>,
    /// Glandular tissue: noise threshold (lower = denser) and HU.
    gland: f64,
    gland_hu: f64,
}

/// Arms down beside the chest.
#[derive(Debug, Clone, Copy)]
struct Arms {
    /// |x| and y of the arm's centre, its radius and fat thickness, mm.
    x: f64,
    y: f64,
    r: f64,
    fat: f64,
    /// Humerus radius and medial offset from the arm's centre.
    hum_r: f64,
    hum_off: f64,
    /// Shoulder height: no arm above.
    top: f64,
}

/// Per-slice quantities of the anatomy, computed once per z.
struct SliceCtx {
    z: f64,
    inv_a: f64,
    inv_b: f64,
    /// Lung radii scale at this height (0: no lung).
    taper: f64,
    lung_c: [f64; 2],
    lung_r: [f64; 2],
    /// Heart cross-section: centre x, y and radii x, y (radii 0: absent).
    heart: [f64; 4],
    ribs: bool,
    disc: bool,
    sternum: bool,
    scapula: bool,
    aorta: bool,
    metal: bool,
    /// Stomach cross-section: centre x, y, radii x, y (radii 0: absent),
    /// and whether this height is in its gas cap.
    stomach: [f64; 4],
    stomach_gas: bool,
    /// Chest-wall layers by direction (empty: computed per point).
    wall: Vec<[f64; 3]>,
}

/// Everything about one phantom except the voxels.
#[derive(Debug, Clone)]
pub(crate) struct Scene {
    pub grid: Grid,
    /// Anatomical -> world (RAS mm) translation.
    pub shift: V3,
    /// Ellipse of which `cav`, `rib_in` and `rib_out` are fractions.
    a: f64,
    b: f64,
    pub h: f64,
    cav: f64,
    rib_in: f64,
    rib_out: f64,
    rib_period: f64,
    rib_phase: f64,
    rib_drop: f64,
    rib_duty: f64,
    med: f64,
    dome: [f64; 2],
    heart_c: V3,
    heart_r: V3,
    myo_mm: f64,
    spine_y: f64,
    spine_r: f64,
    disc_period: f64,
    disc_phase: f64,
    aorta: [f64; 3],
    stomach: Option<(V3, V3)>,
    /// Table: gap under the back, thickness, HU, curvature, half width;
    /// `table_top` is its top at x = 0.
    table: [f64; 5],
    table_top: f64,
    wall: Wall,
    /// Semi-axes of the rib cage (rib_out a, rib_out b) and the nominal
    /// outer extents of the body (lateral, anterior, posterior).
    cage: [f64; 2],
    outer: [f64; 3],
    /// Farthest the body reaches beyond the rib cage, mm (a quick reject
    /// for air voxels).
    reach: f64,
    arms: Option<Arms>,
    pub fat_hu: f64,
    pub muscle_hu: f64,
    pub lung_hu: f64,
    lung_grad: f64,
    lung_tex: f64,
    /// Blood: aorta and left heart, right heart and pulmonary arteries,
    /// myocardium; liver.
    pub blood: [f64; 3],
    liver_hu: f64,
    pub contrast: bool,
    pub fissures: [Fissures; 2],
    effusion: [Option<Effusion>; 2],
    /// Key of the texture fields.
    key: u64,
    /// Metal object: centre and radii.
    metal: Option<(V3, V3)>,
    pub streaks: Streaks,
    /// Streak amplitude (HU), line count, phase.
    streak: [f64; 3],
    /// Cupping depth and the dark band between the arms, HU.
    pub cupping: f64,
    band: f64,
    airways: Vec<Tube>,
    /// Aorta and pulmonary trunk in the mediastinum: (tube, 0 aorta / 1
    /// pulmonary artery).
    great: Vec<(Tube, u8)>,
    /// Lung vessels and whether each is an artery.
    vessels: Vec<Tube>,
    artery: Vec<bool>,
    pub lesions: Vec<Lesion>,
    pub findings: Vec<Finding>,
}

impl Scene {
    /// Draws a grid and an anatomy, then the lesions of `label`, then the
    /// non-pneumonia findings.
    pub fn sample(rng: &mut ChaCha8Rng, label: Label, cfg: &PhantomConfig) -> Scene {
        let n = rng.random_range(cfg.inplane[0]..=cfg.inplane[1]);
        let fov = uni(rng, cfg.fov_mm[0], cfg.fov_mm[1]);
        let px = fov / n as f64;
        let gap = uni(rng, 4.0, 20.0);
        let thick = uni(rng, 5.0, 12.0);

        // Body habitus first: fat and muscle beyond the rib cage decide
        // how much of the field of view the cage may take. Obesity is
        // skewed low: most patients are thin or average.
        let obesity = rng.random::<f64>().powf(1.6);
        let mut fat = [
            uni(rng, 6.0, 14.0) + 45.0 * obesity,
            uni(rng, 4.0, 9.0) + 28.0 * obesity,
            uni(rng, 6.0, 12.0) + 42.0 * obesity,
        ];
        let muscle = [uni(rng, 4.0, 7.0), uni(rng, 6.0, 10.0), uni(rng, 8.0, 12.0)];
        let (pect, erector, lat) = (
            uni(rng, 8.0, 22.0),
            uni(rng, 28.0, 42.0),
            uni(rng, 8.0, 18.0),
        );
        let breasts = rng.random_bool(0.3);
        let mut breast_depth = if breasts {
            uni(rng, 15.0, 40.0) * (0.7 + 0.8 * obesity)
        } else {
            0.0
        };
        let arms_down = rng.random_bool(0.35);
        let cav = uni(rng, 0.80, 0.84);
        let rib_in = cav + 0.012;
        let rib_out = rib_in + uni(rng, 0.04, 0.05);
        // Extents beyond the cage (fat up to 25 % over nominal where the
        // harmonics and lumps add up).
        let lat_ext = |f: &[f64; 3]| muscle[1] + 0.5 * lat + 1.25 * f[1];
        let ant_ext = |f: &[f64; 3], bd: f64| muscle[0] + pect + 1.25 * f[0] + bd;
        let post_ext = |f: &[f64; 3]| muscle[2] + erector + 1.25 * f[2];
        // Arms down lie against the chest: leave room for at least their
        // inner third in the field of view (the rest may be cut off, as
        // in real scans).
        let half_w = fov / 2.0 - 6.0 - if arms_down { 25.0 + 0.4 * fat[1] } else { 0.0 };
        let height = fov - gap - thick - 12.0;
        let mut ca = uni(rng, 118.0, 148.0);
        let mut cb = uni(rng, 82.0, 108.0);
        // Shrink the cage to fit, down to a small adult; then the fat.
        ca = ca.min(half_w - lat_ext(&fat)).max(100.0);
        cb = cb
            .min(0.85 * ca)
            .min((height - ant_ext(&fat, breast_depth) - post_ext(&fat)) / 2.0)
            .max(70.0);
        let over_w = (lat_ext(&fat) + ca - half_w).max(0.0);
        let over_h = (ant_ext(&fat, breast_depth) + post_ext(&fat) + 2.0 * cb - height).max(0.0);
        if over_w > 0.0 || over_h > 0.0 {
            let fw = (1.0 - over_w / (1.25 * fat[1])).clamp(0.2, 1.0);
            let soft = 1.25 * (fat[0] + fat[2]) + breast_depth;
            let fh = (1.0 - over_h / soft).clamp(0.2, 1.0);
            fat = [fat[0] * fh, fat[1] * fw, fat[2] * fh];
            breast_depth *= fh;
        }
        let a = ca / rib_out;
        let b = cb / rib_out;
        let outer = [
            ca + lat_ext(&fat),
            cb + ant_ext(&fat, breast_depth),
            cb + post_ext(&fat),
        ];
        let xmin = uni(rng, outer[0] + 3.0 - fov, -outer[0] - 3.0);
        let ymin = uni(rng, outer[1] + 3.0 - fov, -outer[2] - gap - thick - 3.0);

        // Lungs are h tall; the scan runs from `below` under the lung
        // bases to `above` over the apices, unless the slice limit cuts it
        // to a central slab.
        let h = uni(rng, 200.0, 250.0);
        let below = uni(rng, 25.0, 60.0);
        let above = uni(rng, 15.0, 40.0);
        let dz = ((uni(rng, cfg.slice_mm[0], cfg.slice_mm[1]) * 8.0).round() / 8.0)
            .max(cfg.slice_mm[0].min(0.125));
        let full = ((h + below + above) / dz).floor() as usize + 1;
        let (nk, z0) = if full <= cfg.max_slices {
            (full, -below)
        } else {
            let span = (cfg.max_slices - 1) as f64 * dz;
            let centre = uni(rng, 0.35 * h, 0.6 * h);
            (
                cfg.max_slices,
                (centre - span / 2.0).clamp(-below, h + above - span),
            )
        };
        let grid = Grid {
            dims: [n, n, nk],
            x0: xmin + px / 2.0,
            y0: ymin + px / 2.0,
            z0,
            px,
            dz,
        };
        let shift = [
            uni(rng, -15.0, 15.0),
            uni(rng, -40.0, 40.0),
            uni(rng, -400.0, -100.0),
        ];

        let spine_r = uni(rng, 15.0, 20.0);
        let spine_y = -cav * b + 0.9 * spine_r;
        let dome_r = uni(rng, 35.0, 55.0);
        let dome = [dome_r, dome_r - uni(rng, 5.0, 20.0)];
        let heart_r = [
            uni(rng, 0.38, 0.44) * a,
            uni(rng, 0.40, 0.48) * b,
            uni(rng, 0.22, 0.28) * h,
        ];
        let heart_c = [
            -uni(rng, 0.14, 0.22) * a,
            uni(rng, 0.18, 0.26) * b,
            dome[1] + 0.7 * heart_r[2],
        ];
        let stomach = rng.random_bool(0.6).then(|| {
            (
                [-0.45 * a, 0.12 * b, dome[1] - uni(rng, 25.0, 35.0)],
                [
                    uni(rng, 35.0, 50.0),
                    uni(rng, 30.0, 45.0),
                    uni(rng, 18.0, 28.0),
                ],
            )
        });

        let wall = Wall {
            fat,
            fat_harm: [
                (uni(rng, 0.05, 0.18), 2.0, uni(rng, 0.0, TAU)),
                (
                    uni(rng, 0.02, 0.06),
                    rng.random_range(3..=4) as f64,
                    uni(rng, 0.0, TAU),
                ),
            ],
            fat_z: [
                uni(rng, 0.05, 0.15),
                uni(rng, 80.0, 200.0),
                uni(rng, 0.0, TAU),
            ],
            fat_lumpy: uni(rng, 0.05, 0.12),
            muscle,
            pect,
            erector,
            lat,
            breast: breasts.then(|| {
                [
                    uni(rng, 0.38, 0.52) * ca,
                    uni(rng, 0.35, 0.5) * h,
                    uni(rng, 0.28, 0.36) * ca,
                    uni(rng, 55.0, 75.0),
                    breast_depth,
                ]
            }),
            gland: uni(rng, 0.35, 0.65),
            gland_hu: uni(rng, 0.0, 40.0),
        };
        let arms = arms_down.then(|| {
            let r = uni(rng, 38.0, 48.0) * (1.0 + 0.35 * obesity);
            let fat_arm = (uni(rng, 4.0, 10.0) + 18.0 * obesity).min(0.45 * r);
            Arms {
                // Against the side of the chest (about the widest the
                // lateral wall gets, see `layers`), a little air between.
                x: ca + muscle[1] + 0.5 * lat + 1.65 * fat[1] + uni(rng, 2.0, 8.0) + r,
                y: uni(rng, -0.35, 0.15) * cb,
                r,
                fat: fat_arm,
                hum_r: uni(rng, 10.0, 13.0),
                hum_off: uni(rng, -4.0, 8.0),
                top: h + uni(rng, 10.0, 40.0),
            }
        });
        let contrast = rng.random_bool(0.45);
        let blood = if contrast {
            [
                uni(rng, 150.0, 350.0),
                uni(rng, 150.0, 400.0),
                uni(rng, 85.0, 120.0),
            ]
        } else {
            let v = uni(rng, 35.0, 45.0);
            [v, v + uni(rng, -3.0, 3.0), v + uni(rng, 0.0, 8.0)]
        };
        let liver_hu = if contrast {
            uni(rng, 90.0, 130.0)
        } else {
            uni(rng, 52.0, 65.0)
        };

        // Fissures, one set per lung, shared by the lines drawn and the
        // lobar consolidations that stop at them.
        let fissures = [1.0f64, -1.0].map(|sx| {
            // Oblique fissure: from high posterior to low anterior.
            let (y1, z1) = (-0.7 * cav * b, uni(rng, 0.58, 0.66) * h);
            let (y2, z2) = (0.6 * cav * b, uni(rng, 0.08, 0.16) * h);
            // In an axial slice the fissure runs from posteromedial to
            // anterolateral.
            let tilt = -sx * uni(rng, 0.3, 0.6) * -(z2 - z1);
            let n = normalize([tilt, -(z2 - z1), y2 - y1]); // up/forward
            let oblique = Surface::Plane(n, dot(n, [sx * 0.5 * a, y1, z1]));
            let horizontal = (sx > 0.0).then(|| Surface::Bowl {
                z0: uni(rng, 0.45, 0.55) * h,
                c: [0.55 * cav * a, uni(rng, 0.0, 0.2) * b],
                k: uni(rng, 0.001, 0.003),
            });
            Fissures {
                oblique,
                horizontal,
            }
        });

        let streak_kind = if arms_down && rng.random_bool(0.6) {
            Streaks::Arms
        } else if rng.random_bool(0.12) {
            Streaks::Metal
        } else {
            Streaks::None
        };
        let mut s = Scene {
            grid,
            shift,
            a,
            b,
            h,
            cav,
            rib_in,
            rib_out,
            rib_period: uni(rng, 24.0, 30.0),
            rib_phase: uni(rng, 0.0, 30.0),
            rib_drop: uni(rng, 50.0, 90.0),
            rib_duty: uni(rng, 0.35, 0.45),
            med: uni(rng, 20.0, 30.0),
            dome,
            heart_c,
            heart_r,
            myo_mm: uni(rng, 7.0, 12.0),
            spine_y,
            spine_r,
            disc_period: uni(rng, 24.0, 30.0),
            disc_phase: uni(rng, 0.0, 30.0),
            aorta: [-(spine_r + 13.0), spine_y + 4.0, uni(rng, 11.0, 15.0)],
            stomach,
            table: [
                gap,
                thick,
                uni(rng, 200.0, 400.0),
                uni(rng, 0.0, 25.0),
                (0.45 * fov).min(1.25 * outer[0]),
            ],
            table_top: -outer[2] - gap,
            wall,
            cage: [ca, cb],
            outer,
            reach: 1.5 * (outer[0] - ca).max(outer[1] - cb).max(outer[2] - cb) + 5.0,
            arms,
            fat_hu: uni(rng, -108.0, -92.0),
            muscle_hu: uni(rng, 40.0, 55.0),
            lung_hu: uni(rng, -875.0, -845.0),
            lung_grad: uni(rng, 15.0, 40.0),
            lung_tex: uni(rng, 8.0, 16.0),
            blood,
            liver_hu,
            contrast,
            fissures,
            effusion: [None, None],
            key: rng.random::<u64>(),
            metal: None,
            streaks: streak_kind,
            streak: [
                match streak_kind {
                    Streaks::Metal => uni(rng, 150.0, 400.0),
                    _ => uni(rng, 60.0, 150.0),
                },
                rng.random_range(7..=13) as f64,
                uni(rng, 0.0, TAU),
            ],
            cupping: uni(rng, 0.0, 8.0) + 14.0 * obesity,
            band: if arms_down { uni(rng, 15.0, 45.0) } else { 0.0 },
            airways: Vec::new(),
            great: Vec::new(),
            vessels: Vec::new(),
            artery: Vec::new(),
            lesions: Vec::new(),
            findings: Vec::new(),
        };
        if streak_kind == Streaks::Metal {
            // A port chamber in the upper anterior chest wall fat.
            let sx = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            let c = [sx * uni(rng, 0.35, 0.55) * ca, 0.0, uni(rng, 0.7, 0.9) * h];
            let (mu, f, _) = s.layers(0.0, 1.0, c[2]);
            let y = (1.0 - (c[0] / ca).powi(2)).max(0.0).sqrt() * cb + mu + 0.5 * f;
            s.metal = Some((
                [c[0], y, c[2]],
                [uni(rng, 6.0, 12.0), 4.0, uni(rng, 5.0, 10.0)],
            ));
        }
        // Findings that change the lung outline come before the vessels
        // and lesions, which are placed in the lung that remains.
        let effusion = rng.random_bool(0.12);
        let atelectasis = rng.random_bool(0.15);
        let nodule = rng.random_bool(0.15);
        let mass = rng.random_bool(0.06);
        let emphysema = rng.random_bool(0.12);
        if effusion {
            let both = rng.random_bool(0.3);
            let first = rng.random_range(1..=2u8);
            for lung in [1u8, 2] {
                if lung != first && !both {
                    continue;
                }
                let e = Effusion {
                    thick: uni(rng, 10.0, 40.0),
                    top: s.dome[(lung - 1) as usize] + uni(rng, 30.0, 90.0),
                    hu: uni(rng, 0.0, 20.0),
                };
                s.effusion[(lung - 1) as usize] = Some(e);
                let sx = Self::sign(lung);
                let center = [
                    sx * 0.6 * cav * a,
                    -0.75 * cav * b,
                    s.dome[(lung - 1) as usize] + 15.0,
                ];
                s.findings.push(Finding {
                    kind: FindingKind::PleuralEffusion,
                    lung,
                    center,
                    body: None,
                    spicules: Vec::new(),
                    holes: Vec::new(),
                    hu: e.hu,
                    bbox: Aabb {
                        lo: center,
                        hi: center,
                    },
                });
            }
        }
        let atel_lung = rng.random_range(1..=2u8);
        if atelectasis {
            // Volume loss: the hemidiaphragm rises.
            s.dome[(atel_lung - 1) as usize] += uni(rng, 5.0, 15.0);
        }
        s.grow_airways_and_vessels(rng, above);
        match label {
            Label::Healthy => {}
            Label::Covid => s.add_covid(rng),
            Label::Cap => s.add_cap(rng),
        }
        if atelectasis {
            s.add_atelectasis(rng, atel_lung);
        }
        if nodule {
            s.add_nodule(rng, false);
        }
        if mass {
            s.add_nodule(rng, true);
        }
        if emphysema {
            s.add_emphysema(rng);
        }
        s
    }

    /// Lung-side sign: +1 for the right lung (label 1), -1 for the left.
    fn sign(lung: u8) -> f64 {
        if lung == 1 { 1.0 } else { -1.0 }
    }

    /// Whether per-scan draws put the arms down.
    pub fn arm_position(&self) -> ArmPosition {
        if self.arms.is_some() {
            ArmPosition::Down
        } else {
            ArmPosition::Up
        }
    }

    /// Whether the scan has breasts.
    pub fn breasts(&self) -> bool {
        self.wall.breast.is_some()
    }

    /// Nominal subcutaneous fat thickness anterior, lateral, posterior, mm.
    pub fn fat_mm(&self) -> [f64; 3] {
        self.wall.fat
    }

    /// The hilum of a lung, where its airway and vessels enter.
    fn hilum(&self, lung: u8) -> V3 {
        [
            Self::sign(lung) * (self.med + 6.0),
            self.spine_y + self.spine_r + 30.0,
            0.55 * self.h,
        ]
    }

    /// Lung label at a point (0 outside the lungs).
    fn lung_at(&self, p: V3) -> u8 {
        self.lung_label(p[0], p[1], &self.slice_ctx(p[2]))
    }

    fn grow_airways_and_vessels(&mut self, rng: &mut ChaCha8Rng, above: f64) {
        let soft = 0.4 * self.grid.px;
        let tr = uni(rng, 7.0, 10.0);
        let ty = self.spine_y + self.spine_r + 14.0 + tr;
        let carina = [0.0, ty, 0.62 * self.h];
        self.airways.push(Tube::new(
            carina,
            [0.0, ty, self.h + above + 60.0],
            tr,
            tr,
            soft,
        ));
        for lung in [1u8, 2] {
            let mut hil = self.hilum(lung);
            hil[0] -= Self::sign(lung) * 4.0;
            self.airways
                .push(Tube::new(carina, hil, 0.65 * tr, 0.6 * tr, soft));
        }
        // Great vessels: ascending aorta and arch to the descending aorta;
        // pulmonary trunk from the right ventricle to both hila.
        let (hc, hr) = (self.heart_c, self.heart_r);
        let heart_top = hc[2] + 0.55 * hr[2];
        let ar = uni(rng, 13.0, 16.0);
        let asc0 = [hc[0] + 0.45 * hr[0], hc[1] - 0.1 * hr[1], heart_top - 10.0];
        let asc1 = [12.0, hc[1] - 0.35 * hr[1], 0.74 * self.h];
        let desc = [self.aorta[0], self.aorta[1], 0.72 * self.h];
        let top = [
            -0.5 * (12.0 - self.aorta[0]),
            0.5 * (asc1[1] + desc[1]),
            0.8 * self.h,
        ];
        self.great.push((Tube::new(asc0, asc1, ar, ar, soft), 0));
        self.great
            .push((Tube::new(asc1, top, ar, 0.9 * ar, soft), 0));
        self.great
            .push((Tube::new(top, desc, 0.9 * ar, self.aorta[2], soft), 0));
        let pr = uni(rng, 12.0, 15.0);
        let pa0 = [hc[0] - 0.05 * hr[0], hc[1] + 0.35 * hr[1], heart_top - 12.0];
        let bif = [-10.0, ty - 5.0, 0.6 * self.h];
        self.great.push((Tube::new(pa0, bif, pr, pr, soft), 1));
        for lung in [1u8, 2] {
            let hil = self.hilum(lung);
            self.great
                .push((Tube::new(bif, hil, 0.75 * pr, 0.65 * pr, soft), 1));
        }
        // Twelve trunks per lung, anterolateral and posterolateral at six
        // elevations from apical to basal, each a binary tree from ~10-12
        // mm calibre at the hilum to ~1 mm whose branches turn away from
        // the pleura, so that it fills the lung to within ~10 mm of it.
        // Trunks alternate between arteries and veins.
        let mut trunks = [[0.0; 3]; 12];
        for (i, t) in trunks.iter_mut().enumerate() {
            let elev = [1.0, 0.55, 0.2, -0.15, -0.5, -0.9][i / 2];
            let ay = if i % 2 == 0 { 0.6 } else { -0.6 };
            *t = [0.8, ay, 1.5 * elev];
        }
        let mut vessels = Vec::new();
        let mut artery = Vec::new();
        for lung in [1u8, 2] {
            let s = Self::sign(lung);
            let root = add(self.hilum(lung), [s * 4.0, 0.0, 0.0]);
            for (ti, t) in trunks.iter().enumerate() {
                let turn = uni(rng, 0.0, 0.2);
                let d = deflect(rng, normalize([s * t[0], t[1], t[2]]), turn);
                let r0 = uni(rng, 4.5, 6.0);
                let len = uni(rng, 22.0, 28.0);
                let before = vessels.len();
                let keep = |p: V3| self.lung_at(p) == lung;
                grow_tree(rng, &mut vessels, root, d, len, r0, 8, soft, &keep, 0, root);
                artery.extend(std::iter::repeat_n(ti % 2 == 0, vessels.len() - before));
            }
        }
        self.vessels = vessels;
        self.artery = artery;
        // The trees leave gaps; peripheral twigs (1-3.6 mm calibre, mostly
        // thin, pointing away from the hilum) scattered through each lung
        // give the even density of small vessels real lungs show.
        for lung in [1u8, 2] {
            let hil = self.hilum(lung);
            for i in 0..rng.random_range(350..=500) {
                let Some(p) = self.lung_point(rng, lung, 0.0, 1.0) else {
                    continue;
                };
                let turn = uni(rng, 0.0, 0.5);
                let d = deflect(rng, normalize(sub(p, hil)), turn);
                let half = 0.5 * uni(rng, 8.0, 20.0);
                let (a, b) = (sub(p, scale(d, half)), add(p, scale(d, half)));
                if self.lung_at(a) != lung || self.lung_at(b) != lung {
                    continue;
                }
                let r = 0.5 + 1.3 * rng.random::<f64>().powi(2);
                self.vessels.push(Tube::vessel(a, b, r, 0.8 * r, soft));
                self.artery.push(i % 2 == 0);
            }
        }
    }
    /// Lower and upper z of the slab where lesions may sit (inside the
    /// scan, clear of the lung apex).
    fn lesion_z_range(&self, lung: u8) -> (f64, f64) {
        let lo = (self.dome[(lung - 1) as usize] * 0.4).max(self.grid.z0 + 4.0);
        let hi = (0.85 * self.h).min(self.grid.z_hi() - 4.0);
        (lo, hi.max(lo))
    }

    /// A point on the pleura of `lung` seen from the lung's centre, pulled
    /// `depth` mm inwards, snapped to a voxel centre inside that lung; with
    /// the outward direction. `None` when the draw found no lung.
    fn peripheral_point(
        &self,
        rng: &mut ChaCha8Rng,
        lung: u8,
        depth: f64,
        posterior_bias: bool,
    ) -> Option<(V3, V3)> {
        let (zlo, zhi) = self.lesion_z_range(lung);
        self.peripheral_point_z(rng, lung, depth, posterior_bias, zlo, zhi)
    }

    /// [`Self::peripheral_point`] between heights `flo` and `fhi`
    /// (fractions of `h`, within the lesion slab).
    fn peripheral_point_in(
        &self,
        rng: &mut ChaCha8Rng,
        lung: u8,
        depth: f64,
        posterior_bias: bool,
        flo: f64,
        fhi: f64,
    ) -> Option<(V3, V3)> {
        let (zlo, zhi) = self.lesion_z_range(lung);
        let (lo, hi) = ((flo * self.h).max(zlo), (fhi * self.h).min(zhi));
        if lo >= hi {
            return None;
        }
        self.peripheral_point_z(rng, lung, depth, posterior_bias, lo, hi)
    }

    fn peripheral_point_z(
        &self,
        rng: &mut ChaCha8Rng,
        lung: u8,
        depth: f64,
        posterior_bias: bool,
        zlo: f64,
        zhi: f64,
    ) -> Option<(V3, V3)> {
        for _ in 0..60 {
            // Lower zones first, as both COVID-19 and aspiration favour
            // the bases.
            let z = zlo + (zhi - zlo) * rng.random::<f64>().powf(1.4);
            let theta = uni(rng, 0.0, std::f64::consts::TAU);
            if posterior_bias && theta.sin() > 0.0 && rng.random_bool(0.5) {
                continue; // anterior half: keep half of the draws
            }
            let ctx = self.slice_ctx(z);
            if ctx.taper <= 0.0 {
                continue;
            }
            let c = [Self::sign(lung) * ctx.lung_c[0], ctx.lung_c[1]];
            let dir = [theta.cos(), theta.sin(), 0.0];
            let mut last = None;
            let mut t = 0.0;
            while t < 250.0 {
                let (x, y) = (c[0] + dir[0] * t, c[1] + dir[1] * t);
                if self.lung_label(x, y, &ctx) == lung {
                    last = Some(t);
                }
                t += 1.0;
            }
            let Some(tb) = last else { continue };
            let p = self.grid.snap([
                c[0] + dir[0] * (tb - depth),
                c[1] + dir[1] * (tb - depth),
                z,
            ]);
            let pc = self.slice_ctx(p[2]);
            if self.lung_label(p[0], p[1], &pc) == lung {
                return Some((p, dir));
            }
        }
        None
    }

    /// COVID-19: 2 to 8 peripheral ground-glass opacities, at least one
    /// per lung, some with a consolidated core.
    fn add_covid(&mut self, rng: &mut ChaCha8Rng) {
        let severity = uni(rng, 0.6, 1.6);
        let n = rng.random_range(2..=8usize);
        for idx in 0..n {
            let lung = match idx {
                0 => 1,
                1 => 2,
                _ => rng.random_range(1..=2u8),
            };
            // The first lesion is a larger one with a consolidated core,
            // so every COVID scan shows both patterns.
            let boost = if idx == 0 { 1.25 } else { 1.0 };
            let radii = [
                uni(rng, 7.0, 16.0) * severity * boost,
                uni(rng, 12.0, 30.0) * severity * boost,
                uni(rng, 10.0, 28.0) * severity * boost,
            ];
            let depth = uni(rng, 0.3, 0.8) * radii[0];
            let Some((centre, dir)) = self.peripheral_point(rng, lung, depth, true) else {
                continue;
            };
            // Flattened against the pleura: short radially, long along it.
            let axes = [dir, [-dir[1], dir[0], 0.0], [0.0, 0.0, 1.0]];
            let blob = Blob::new(rng, centre, axes, radii, 0.25, 1.0);
            let core = (idx == 0 || rng.random_bool(0.35)).then(|| {
                let f = uni(rng, 0.4, 0.6);
                let cr = radii.map(|r| (r * f).max(5.0_f64.min(0.8 * r)));
                (
                    Blob::new(rng, centre, axes, cr, 0.3, 0.8),
                    uni(rng, -100.0, 40.0),
                )
            });
            self.lesions.push(Lesion {
                kind: if core.is_some() {
                    LesionKind::MixedGroundGlass
                } else {
                    LesionKind::GroundGlass
                },
                lung,
                blob,
                hu: uni(rng, -680.0, -330.0),
                core,
                planes: Vec::new(),
                bronchi: Vec::new(),
            });
        }
    }

    /// Fissure sides bounding a lobe of `lung`, as (surface, sign) with the
    /// lobe where `sign * surface.dist(p) > 0`. The surfaces are the scene's
    /// own fissures, the ones drawn as lines, so a lobar consolidation stops
    /// exactly at a visible fissure.
    fn lobe_planes(&self, rng: &mut ChaCha8Rng, lung: u8) -> Vec<(Surface, f64)> {
        let f = &self.fissures[(lung - 1) as usize];
        let upper = (f.oblique, 1.0);
        let lower = (f.oblique, -1.0);
        let u = rng.random::<f64>();
        match f.horizontal {
            // Right middle lobe: in front of the oblique fissure, below the
            // horizontal one.
            Some(hz) if u < 0.2 => vec![upper, (hz, -1.0)],
            _ if u < 0.55 => vec![lower],
            Some(hz) => vec![upper, (hz, 1.0)],
            None => vec![upper],
        }
    }

    /// Community-acquired pneumonia: one large lobar or segmental
    /// consolidation in one lung, often with air bronchograms; sometimes a
    /// smaller satellite, rarely a small opacity in the other lung.
    fn add_cap(&mut self, rng: &mut ChaCha8Rng) {
        let lung = rng.random_range(1..=2u8);
        let severity = uni(rng, 0.7, 1.3);
        let planes = self.lobe_planes(rng, lung);
        let radii = [
            uni(rng, 35.0, 65.0) * severity,
            uni(rng, 35.0, 65.0) * severity,
            uni(rng, 30.0, 60.0) * severity,
        ];
        let mut found = None;
        for _ in 0..40 {
            let depth = uni(rng, 10.0, 30.0);
            if let Some((p, _)) = self.peripheral_point(rng, lung, depth, false)
                && planes.iter().all(|(f, sg)| sg * f.dist(p) > 3.0)
            {
                found = Some(p);
                break;
            }
        }
        // A lobe may lie outside a thin-slab scan: fall back to a segmental
        // consolidation anywhere in the lung.
        let (centre, planes) = if let Some(p) = found {
            (p, planes)
        } else {
            let depth = uni(rng, 10.0, 30.0);
            match self.peripheral_point(rng, lung, depth, false) {
                Some((p, _)) => (p, Vec::new()),
                None => return,
            }
        };
        let d = unit(rng);
        let (u, v) = frame(d);
        let blob = Blob::new(rng, centre, [d, u, v], radii, 0.08, 1.0);
        let mut bronchi = Vec::new();
        if rng.random_bool(0.7) {
            let hil = self.hilum(lung);
            let start = add(centre, scale(sub(hil, centre), 0.35));
            let dir = normalize(sub(centre, hil));
            let (len, r0) = (uni(rng, 15.0, 25.0), uni(rng, 1.6, 2.4));
            grow_tree(
                rng,
                &mut bronchi,
                start,
                dir,
                len,
                r0,
                3,
                0.4 * self.grid.px,
                &|_: V3| true,
                0,
                start,
            );
        }
        self.lesions.push(Lesion {
            kind: LesionKind::Consolidation,
            lung,
            blob,
            hu: uni(rng, -90.0, 40.0),
            core: None,
            planes,
            bronchi,
        });
        if rng.random_bool(0.35) {
            let r = [
                uni(rng, 12.0, 25.0),
                uni(rng, 12.0, 25.0),
                uni(rng, 12.0, 25.0),
            ];
            let depth = uni(rng, 8.0, 20.0);
            if let Some((p, _)) = self.peripheral_point(rng, lung, depth, false) {
                let d = unit(rng);
                let (u, v) = frame(d);
                self.lesions.push(Lesion {
                    kind: LesionKind::Consolidation,
                    lung,
                    blob: Blob::new(rng, p, [d, u, v], r, 0.1, 1.0),
                    hu: uni(rng, -90.0, 40.0),
                    core: None,
                    planes: Vec::new(),
                    bronchi: Vec::new(),
                });
            }
        }
        if rng.random_bool(0.15) {
            let other = 3 - lung;
            let r = [
                uni(rng, 6.0, 10.0),
                uni(rng, 8.0, 15.0),
                uni(rng, 8.0, 15.0),
            ];
            if let Some((p, dir)) = self.peripheral_point(rng, other, 0.5 * r[0], false) {
                self.lesions.push(Lesion {
                    kind: LesionKind::GroundGlass,
                    lung: other,
                    blob: Blob::new(
                        rng,
                        p,
                        [dir, [-dir[1], dir[0], 0.0], [0.0, 0.0, 1.0]],
                        r,
                        0.25,
                        1.0,
                    ),
                    hu: uni(rng, -650.0, -400.0),
                    core: None,
                    planes: Vec::new(),
                    bronchi: Vec::new(),
                });
            }
        }
    }

    /// A random voxel centre inside `lung` between heights `zlo` and `zhi`
    /// (fractions of `h`), or `None` when the draws found none.
    fn lung_point(&self, rng: &mut ChaCha8Rng, lung: u8, zlo: f64, zhi: f64) -> Option<V3> {
        let lo = (zlo * self.h).max(self.grid.z0 + 4.0);
        let hi = (zhi * self.h).min(self.grid.z_hi() - 4.0);
        if lo >= hi {
            return None;
        }
        for _ in 0..80 {
            let z = uni(rng, lo, hi);
            let ctx = self.slice_ctx(z);
            if ctx.taper <= 0.0 {
                continue;
            }
            let rho = rng.random::<f64>().sqrt();
            let phi = uni(rng, 0.0, TAU);
            let x = Self::sign(lung) * (ctx.lung_c[0] + ctx.lung_r[0] * rho * phi.cos());
            let y = ctx.lung_c[1] + ctx.lung_r[1] * rho * phi.sin();
            let p = self.grid.snap([x, y, z]);
            if self.lung_at(p) == lung {
                return Some(p);
            }
        }
        None
    }

    /// Whether a box is clear (with `margin` mm) of every lesion's box, so
    /// that a finding never overlaps a lesion.
    fn clear_of_lesions(&self, b: &Aabb, margin: f64) -> bool {
        self.lesions.iter().all(|l| {
            let lb = &l.blob.bbox;
            (0..3).any(|d| b.hi[d] + margin < lb.lo[d] || b.lo[d] - margin > lb.hi[d])
        })
    }

    fn push_opaque(
        &mut self,
        kind: FindingKind,
        lung: u8,
        body: Blob,
        spicules: Vec<Tube>,
        hu: f64,
    ) -> bool {
        let mut bbox = body.bbox;
        for t in &spicules {
            for d in 0..3 {
                bbox.lo[d] = bbox.lo[d].min(t.bbox.lo[d]);
                bbox.hi[d] = bbox.hi[d].max(t.bbox.hi[d]);
            }
        }
        if !self.clear_of_lesions(&bbox, 3.0) {
            return false;
        }
        self.findings.push(Finding {
            kind,
            lung,
            center: body.center,
            body: Some(body),
            spicules,
            holes: Vec::new(),
            hu,
            bbox,
        });
        true
    }

    /// Atelectasis: a dense pleura-based band or wedge in the posterior
    /// lung base (the collapsed lung is still lung label).
    fn add_atelectasis(&mut self, rng: &mut ChaCha8Rng, lung: u8) {
        for _ in 0..10 {
            let radii = [
                uni(rng, 4.0, 9.0),
                uni(rng, 20.0, 45.0),
                uni(rng, 12.0, 25.0),
            ];
            let Some((c, dir)) =
                self.peripheral_point_in(rng, lung, 0.6 * radii[0], true, 0.05, 0.35)
            else {
                continue;
            };
            if dir[1] > 0.2 {
                continue; // posterior and lateral bases only
            }
            let axes = [dir, [-dir[1], dir[0], 0.0], [0.0, 0.0, 1.0]];
            let body = Blob::new(rng, c, axes, radii, 0.15, 0.6);
            let hu = uni(rng, 5.0, 55.0);
            if self.push_opaque(FindingKind::Atelectasis, lung, body, Vec::new(), hu) {
                return;
            }
        }
    }

    /// A solitary nodule (5-30 mm) or, with `mass`, a spiculated or
    /// lobulated mass (30-60 mm) that may touch the pleura or the hilum.
    fn add_nodule(&mut self, rng: &mut ChaCha8Rng, mass: bool) {
        for _ in 0..10 {
            let lung = rng.random_range(1..=2u8);
            let r = if mass {
                uni(rng, 15.0, 30.0)
            } else {
                uni(rng, 2.5, 15.0)
            };
            let radii = [
                r * uni(rng, 0.8, 1.0),
                r * uni(rng, 0.85, 1.1),
                r * uni(rng, 0.8, 1.1),
            ];
            let where_ = rng.random::<f64>();
            let depth = uni(rng, 0.3, 0.9) * r;
            let c = if mass && where_ < 0.35 {
                self.peripheral_point_in(rng, lung, depth, false, 0.15, 0.9)
                    .map(|(p, _)| p)
            } else if mass && where_ < 0.6 {
                let hil = self.hilum(lung);
                let p = add(
                    hil,
                    [
                        Self::sign(lung) * (r + uni(rng, 4.0, 12.0)),
                        uni(rng, -10.0, 10.0),
                        uni(rng, -15.0, 15.0),
                    ],
                );
                let p = self.grid.snap(p);
                (self.lung_at(p) == lung).then_some(p)
            } else {
                self.lung_point(rng, lung, 0.1, 0.92)
            };
            let Some(c) = c else { continue };
            let d = unit(rng);
            let (u, v) = frame(d);
            let rough = if mass { 1.0 } else { uni(rng, 0.1, 0.6) };
            let body = Blob::new(rng, c, [d, u, v], radii, 0.08, rough);
            let mut spicules = Vec::new();
            if mass && rng.random_bool(0.6) {
                for _ in 0..rng.random_range(8..=16) {
                    let dir = unit(rng);
                    let a = add(c, scale(dir, 0.8 * r));
                    let b = add(c, scale(dir, r * uni(rng, 1.2, 1.7)));
                    spicules.push(Tube::new(a, b, uni(rng, 0.7, 1.4), 0.3, 0.4 * self.grid.px));
                }
            }
            let kind = if mass {
                FindingKind::Mass
            } else {
                FindingKind::Nodule
            };
            let hu = uni(rng, 20.0, 50.0);
            if self.push_opaque(kind, lung, body, spicules, hu) {
                return;
            }
        }
    }

    /// Emphysema: centrilobular holes (2-8 mm) and a few bullae, mostly in
    /// the upper zones of one or both lungs.
    fn add_emphysema(&mut self, rng: &mut ChaCha8Rng) {
        let both = rng.random_bool(0.7);
        let first = rng.random_range(1..=2u8);
        let soft = 0.4 * self.grid.px;
        for lung in [1u8, 2] {
            if lung != first && !both {
                continue;
            }
            let mut holes = Vec::new();
            for _ in 0..rng.random_range(60..=220) {
                if let Some(p) = self.lung_point(rng, lung, 0.45, 1.0) {
                    let r = uni(rng, 1.0, 4.0);
                    holes.push(Tube::new(p, p, r, r, soft));
                }
            }
            for _ in 0..rng.random_range(0..=2) {
                let r = uni(rng, 8.0, 18.0);
                if let Some((p, _)) = self.peripheral_point_in(rng, lung, 0.7 * r, false, 0.6, 0.95)
                {
                    holes.push(Tube::new(p, p, r, r, soft));
                }
            }
            if holes.is_empty() {
                continue;
            }
            let mut bbox = holes[0].bbox;
            for t in &holes {
                for d in 0..3 {
                    bbox.lo[d] = bbox.lo[d].min(t.bbox.lo[d]);
                    bbox.hi[d] = bbox.hi[d].max(t.bbox.hi[d]);
                }
            }
            let center = scale(add(bbox.lo, bbox.hi), 0.5);
            self.findings.push(Finding {
                kind: FindingKind::Emphysema,
                lung,
                center,
                body: None,
                spicules: Vec::new(),
                holes,
                hu: EMPHYSEMA_HU,
                bbox,
            });
        }
    }

    fn slice_ctx(&self, z: f64) -> SliceCtx {
        let h = self.h;
        // The upper chest narrows towards the neck.
        let c = 1.0 - 0.2 * smoothstep(0.85 * h, h + 60.0, z);
        let (a, b) = (self.a * c, self.b * c);
        let t = z / h;
        let taper = if t >= 1.0 {
            0.0
        } else if t > 0.55 {
            (1.0 - ((t - 0.55) / 0.45).powi(2)).sqrt()
        } else {
            1.0
        };
        let cav = self.cav;
        let hz = (z - self.heart_c[2]) / self.heart_r[2];
        let heart = if hz.abs() < 1.0 {
            let f = (1.0 - hz * hz).sqrt();
            [
                self.heart_c[0],
                self.heart_c[1],
                self.heart_r[0] * f,
                self.heart_r[1] * f,
            ]
        } else {
            [0.0; 4]
        };
        let (stomach, stomach_gas) = match &self.stomach {
            Some((sc, sr)) if ((z - sc[2]) / sr[2]).abs() < 1.0 => {
                let f = (1.0 - ((z - sc[2]) / sr[2]).powi(2)).sqrt();
                ([sc[0], sc[1], sr[0] * f, sr[1] * f], z > sc[2] - 5.0)
            }
            _ => ([0.0; 4], false),
        };
        let disc_frac = ((z - self.disc_phase) / self.disc_period).rem_euclid(1.0);
        SliceCtx {
            z,
            inv_a: 1.0 / a,
            inv_b: 1.0 / b,
            taper,
            lung_c: [0.56 * cav * a, -0.05 * cav * b],
            lung_r: [0.44 * cav * a * taper, 0.9 * cav * b * taper],
            heart,
            ribs: z > -20.0 && z < h + 10.0,
            disc: disc_frac < 6.0 / self.disc_period,
            sternum: z > 0.25 * h && z < 0.95 * h,
            scapula: z > 0.45 * h && z < h + 20.0,
            aorta: z < 0.72 * h,
            metal: self.metal.is_some_and(|(c, r)| (z - c[2]).abs() < r[2]),
            stomach,
            stomach_gas,
            wall: Vec::new(),
        }
    }

    #[inline]
    fn in_heart(x: f64, y: f64, ctx: &SliceCtx, margin: f64) -> bool {
        let [hx, hy, rx, ry] = ctx.heart;
        if rx <= 0.0 {
            return false;
        }
        let (dx, dy) = ((x - hx) / (rx + margin), (y - hy) / (ry + margin));
        dx * dx + dy * dy < 1.0
    }

    /// 1 right lung, 2 left lung, 0 elsewhere (pleural fluid included).
    #[inline]
    fn lung_label(&self, x: f64, y: f64, ctx: &SliceCtx) -> u8 {
        match self.lung_region(x, y, ctx) {
            (l, false) => l,
            (_, true) => 0,
        }
    }

    /// The lung side of a point inside a lung's outline (0 outside) and
    /// whether it is pleural fluid there rather than lung.
    #[inline]
    fn lung_region(&self, x: f64, y: f64, ctx: &SliceCtx) -> (u8, bool) {
        if ctx.taper <= 0.0 || x.abs() <= self.med {
            return (0, false);
        }
        let (u, v) = (x * ctx.inv_a, y * ctx.inv_b);
        if u * u + v * v >= self.cav * self.cav {
            return (0, false);
        }
        let lung = if x > 0.0 { 1u8 } else { 2u8 };
        let dx = (x.abs() - ctx.lung_c[0]) / ctx.lung_r[0];
        let dy = (y - ctx.lung_c[1]) / ctx.lung_r[1];
        let q = dx * dx + dy * dy;
        if q >= 1.0 || ctx.z <= self.dome[(lung - 1) as usize] * (1.0 - q) {
            return (0, false);
        }
        if Self::in_heart(x, y, ctx, 3.0) {
            return (0, false);
        }
        // Paravertebral gutter and descending aorta stay out of the lung.
        let (sx, sy) = (x, y - self.spine_y);
        let sr = self.spine_r + 12.0;
        if sx * sx + sy * sy < sr * sr || (sy < 0.0 && sx.abs() < self.spine_r + 8.0) {
            return (0, false);
        }
        if ctx.aorta {
            let (ax, ay, ar) = (x - self.aorta[0], y - self.aorta[1], self.aorta[2] + 3.0);
            if ax * ax + ay * ay < ar * ar {
                return (0, false);
            }
        }
        if let Some(e) = &self.effusion[(lung - 1) as usize] {
            // Dependent crescent: deepest posteriorly, none in front,
            // thinning upwards; measured inwards from the lung's outline.
            let t = e.thick * (1.0 - smoothstep(e.top - 40.0, e.top, ctx.z));
            let local = t * smoothstep(0.35, -0.9, dy);
            if local > 0.0 && (1.0 - q.sqrt()) * ctx.lung_r[1] < local {
                return (lung, true);
            }
        }
        (lung, false)
    }

    /// Bone HU across a bone's thickness: cortex at the edges (`t` near 0
    /// or 1), marrow inside.
    #[inline]
    fn bone(t: f64, marrow: f64, cortex: f64) -> f64 {
        let e = (2.0 * t - 1.0).abs();
        marrow + (cortex - marrow) * e * e * e
    }

    /// Subcutaneous fat: lobules (mottling) separated by thin fibrous
    /// septa along the field's mid-level lines.
    #[inline]
    fn fat_tex(&self, p: V3) -> f64 {
        let lob = value_noise(p, 6.0, self.key ^ 0x11);
        let base = self.fat_hu + 16.0 * (lob - 0.5);
        let w = 0.5 * (1.0 - smoothstep(0.0, 0.025, (lob - 0.5).abs()));
        base + (SEPTUM_HU - base) * w
    }

    /// Skeletal muscle: faint mottling and thin intramuscular fat streaks
    /// (elongated along the body axis).
    #[inline]
    fn muscle_tex(&self, p: V3) -> f64 {
        let n = value_noise([p[0], p[1], 0.3 * p[2]], 5.0, self.key ^ 0x21);
        let base = self.muscle_hu + 8.0 * (n - 0.5);
        let w = 0.55 * (1.0 - smoothstep(0.0, 0.015, (n - 0.5).abs()));
        base + (self.fat_hu - base) * w
    }

    /// Muscle thickness, fat thickness and breast protrusion (mm) beyond
    /// the rib cage in direction (c, s) of the cage's normalised frame
    /// (s = 1 anterior, -1 posterior) at height z. A function of the
    /// direction and z only, so a slice can tabulate it.
    fn layers(&self, c: f64, s: f64, z: f64) -> (f64, f64, f64) {
        let w = &self.wall;
        let (pa, pp) = (s.max(0.0), (-s).max(0.0));
        let shrink = 1.0 - 0.2 * smoothstep(0.85 * self.h, self.h + 60.0, z);
        let ca = self.cage[0] * shrink;
        // The point of the cage in this direction.
        let x = ca * c;
        let mut f = w.fat[1] + (w.fat[0] - w.fat[1]) * pa * pa + (w.fat[2] - w.fat[1]) * pp * pp;
        let theta = s.atan2(c);
        let mut m = 1.0;
        for &(amp, k, ph) in &w.fat_harm {
            m += amp * (k * theta + ph).cos();
        }
        m *= 1.0 + w.fat_z[0] * (TAU * z / w.fat_z[1] + w.fat_z[2]).sin();
        let q = [150.0 * c, 150.0 * s, z];
        m *= 1.0 + w.fat_lumpy * (2.0 * value_noise(q, 50.0, self.key ^ 0x31) - 1.0);
        f *= m * (1.0 - 0.5 * smoothstep(self.h, self.h + 60.0, z));
        let mut bf = 0.0;
        if let Some([bx, bz, rx, rz, depth]) = w.breast
            && s > 0.0
        {
            let (dx, dzz) = ((x.abs() - bx) / rx, (z - bz) / rz);
            let q = 1.0 - dx * dx - dzz * dzz;
            if q > 0.0 {
                bf = depth * q.sqrt() * smoothstep(0.1, 0.6, s);
            }
        }
        let base = w.muscle[1]
            + (w.muscle[0] - w.muscle[1]) * pa * pa
            + (w.muscle[2] - w.muscle[1]) * pp * pp;
        let mut mu = base;
        if s > 0.0 {
            // Pectoralis major over the upper anterior ribs.
            let ax = x.abs();
            let bump = (-((ax - 0.42 * ca) / (0.3 * ca)).powi(2)).exp();
            let zf = smoothstep(0.3 * self.h, 0.55 * self.h, z)
                * (1.0 - smoothstep(self.h + 10.0, self.h + 50.0, z));
            mu += w.pect * bump * zf * smoothstep(0.15, 0.5, s);
        } else {
            // Erector spinae in the paravertebral grooves; trapezius and
            // latissimus posterolaterally.
            mu += w.erector * (-(x / 48.0).powi(4)).exp() * smoothstep(0.3, 0.8, pp);
            mu += w.lat * (-((c.abs() - 0.65) / 0.22).powi(2)).exp() * smoothstep(0.1, 0.5, pp);
        }
        // Muscle bellies mostly push the fat aside rather than the skin
        // out, so the body's outline stays smooth.
        let f = (f - 0.7 * (mu - base)).max(0.35 * f).max(2.5);
        (mu, f + bf, bf)
    }

    /// `layers` tabulated around the body at height z.
    fn wall_table(&self, z: f64) -> Vec<[f64; 3]> {
        (0..WALL_BINS)
            .map(|i| {
                let t = -std::f64::consts::PI + i as f64 * TAU / WALL_BINS as f64;
                let (mu, f, bf) = self.layers(t.cos(), t.sin(), z);
                [mu, f, bf]
            })
            .collect()
    }

    /// `layers` from the slice's table when it has one.
    #[inline]
    fn layers_at(&self, c: f64, s: f64, ctx: &SliceCtx) -> (f64, f64, f64) {
        if ctx.wall.is_empty() {
            return self.layers(c, s, ctx.z);
        }
        let t = (s.atan2(c) + std::f64::consts::PI) * (WALL_BINS as f64 / TAU);
        let i = (t as usize).min(WALL_BINS - 1);
        let fr = t - i as f64;
        let (a, b) = (&ctx.wall[i], &ctx.wall[(i + 1) % WALL_BINS]);
        let l = |k: usize| a[k] + (b[k] - a[k]) * fr;
        (l(0), l(1), l(2))
    }

    /// Air outside the body, arms (when down) and the table.
    fn outside(&self, x: f64, y: f64, ctx: &SliceCtx) -> f64 {
        if let Some(arm) = &self.arms
            && ctx.z < arm.top
        {
            let sx = if x > 0.0 { 1.0 } else { -1.0 };
            let (dx, dy) = (x - sx * arm.x, y - arm.y);
            let rho = (dx * dx + dy * dy).sqrt();
            if rho < arm.r {
                let p = [x, y, ctx.z];
                let hx = dx + sx * arm.hum_off;
                let dh = (hx * hx + dy * dy).sqrt();
                if dh < arm.hum_r {
                    return Self::bone(0.5 + 0.5 * dh / arm.hum_r, 30.0, 1100.0);
                }
                return if rho > arm.r - arm.fat {
                    self.fat_tex(p)
                } else {
                    self.muscle_tex(p)
                };
            }
        }
        let [_, thick, hu, curve, half] = self.table;
        let top = self.table_top + curve * (x / self.outer[0]).powi(2);
        if x.abs() < half && y <= top && y > top - thick {
            return hu;
        }
        AIR_HU as f64
    }

    /// Spine: vertebral body (or disc), canal, arch, spinous process.
    #[inline]
    fn spine(&self, x: f64, y: f64, ctx: &SliceCtx) -> Option<f64> {
        let (sx, sy) = (x, y - self.spine_y);
        if sx.abs() >= 30.0 || sy >= self.spine_r + 2.0 {
            return None;
        }
        let d = (sx * sx + sy * sy).sqrt();
        if d < self.spine_r {
            if ctx.disc {
                return Some(80.0);
            }
            return Some(Self::bone(0.5 + 0.5 * d / self.spine_r, 280.0, 700.0));
        }
        let cy = sy + self.spine_r + 9.0;
        let dc = (sx * sx + cy * cy).sqrt();
        if dc < 7.0 {
            return Some(15.0); // spinal canal
        }
        if dc < 13.0 && cy < 4.0 {
            return Some(Self::bone((dc - 7.0) / 6.0, 350.0, 650.0));
        }
        if sx.abs() < 4.0 && cy < -10.0 && cy > -40.0 {
            return Some(500.0);
        }
        None
    }

    /// Heart: myocardium around the chambers and along the septum; right
    /// chambers (anterior, right) and left chambers take their blood HU.
    #[inline]
    fn heart_hu(&self, x: f64, y: f64, ctx: &SliceCtx) -> Option<f64> {
        let [hx, hy, rx, ry] = ctx.heart;
        if rx <= 0.0 {
            return None;
        }
        let (dx, dy) = ((x - hx) / rx, (y - hy) / ry);
        let q = dx * dx + dy * dy;
        if q >= 1.0 {
            return None;
        }
        let depth = (1.0 - q.sqrt()) * rx.min(ry);
        let ds = (x - hx) * 0.5 + (y - hy) * 0.866;
        if depth < self.myo_mm || ds.abs() < 0.8 * self.myo_mm {
            return Some(self.blood[2]);
        }
        Some(if ds > 0.0 {
            self.blood[1]
        } else {
            self.blood[0]
        })
    }

    /// Lung parenchyma: dependent density gradient, low-amplitude
    /// correlated mottling, and fissure lines with their partial volume.
    #[inline]
    fn parenchyma(&self, p: V3, v: f64, lung: u8) -> f64 {
        let g = ((self.cav - v) / (2.0 * self.cav)).clamp(0.0, 1.0);
        let t1 = value_noise(p, 6.0, self.key ^ 0x41) - 0.5;
        let t2 = value_noise(p, 2.5, self.key ^ 0x42) - 0.5;
        let mut val = self.lung_hu + self.lung_grad * g + self.lung_tex * (1.4 * t1 + 0.8 * t2);
        let f = &self.fissures[(lung - 1) as usize];
        let d = f.oblique.dist(p);
        let mut fw = self.sheet(d, f.oblique.nz(p));
        if d > 0.0
            && let Some(hz) = &f.horizontal
        {
            fw = fw.max(self.sheet(hz.dist(p), hz.nz(p)));
        }
        if fw > 0.0 {
            // Fissures are often incomplete.
            fw *= smoothstep(0.25, 0.4, value_noise(p, 30.0, self.key ^ 0x43));
            val += (FISSURE_HU - val) * fw;
        }
        val
    }

    /// Fraction of a voxel covered by a `FISSURE_MM` sheet at signed
    /// distance `d` whose normal has z component `nz`: the sheet is
    /// spread over the voxel's extent along its normal.
    #[inline]
    fn sheet(&self, d: f64, nz: f64) -> f64 {
        let g = &self.grid;
        let ext = (g.px * g.px * (1.0 - nz * nz) + g.dz * g.dz * nz * nz)
            .sqrt()
            .max(FISSURE_MM);
        let h = 0.5 * FISSURE_MM;
        let lo = (d - h).max(-0.5 * ext);
        let hi = (d + h).min(0.5 * ext);
        ((hi - lo) / ext).max(0.0)
    }

    /// HU and label of one point before airways, great vessels, lung
    /// vessels, lesions and findings: label 1 or 2 for lung, 3 or 4 for
    /// pleural fluid on the right or left, 0 elsewhere.
    fn tissue(&self, x: f64, y: f64, ctx: &SliceCtx) -> (f64, u8) {
        let p = [x, y, ctx.z];
        if ctx.metal
            && let Some((mc, mr)) = &self.metal
        {
            let q = [
                (x - mc[0]) / mr[0],
                (y - mc[1]) / mr[1],
                (ctx.z - mc[2]) / mr[2],
            ];
            if dot(q, q) < 1.0 {
                return (METAL_HU, 0);
            }
        }
        let (u, v) = (x * ctx.inv_a, y * ctx.inv_b);
        let r = (u * u + v * v).sqrt();
        let ro = self.rib_out;
        let mut wall = None;
        if r > ro {
            let (c, s) = (u / r, v / r);
            let d = (x * x + y * y).sqrt() * (1.0 - ro / r);
            if d > self.reach {
                return (self.outside(x, y, ctx), 0);
            }
            let (mu, f, bf) = self.layers_at(c, s, ctx);
            if d >= mu + f {
                return (self.outside(x, y, ctx), 0);
            }
            wall = Some((d, mu, f, bf, c, s));
        }
        if let Some(hu) = self.spine(x, y, ctx) {
            return (hu, 0);
        }
        if r > self.cav {
            let ring = (r - self.rib_in) / (self.rib_out - self.rib_in);
            if ctx.sternum && v > 0.0 && x.abs() < 14.0 && ring < 1.2 {
                return (Self::bone(ring.clamp(0.0, 1.0), 250.0, 600.0), 0);
            }
            if let Some((d, mu, f, bf, c, s)) = wall {
                if d < mu {
                    if ctx.scapula
                        && s < -0.2
                        && (0.3..0.85).contains(&c.abs())
                        && d > 2.0
                        && d < (mu - 2.0).min(10.0)
                    {
                        return (500.0, 0);
                    }
                    return (self.muscle_tex(p), 0);
                }
                let fat = self.fat_tex(p);
                if bf > 0.0 {
                    // Fibroglandular tissue in the deep part of the breast.
                    let into = d - mu;
                    let deep = smoothstep(f - bf, f - bf + 6.0, into)
                        * (1.0 - smoothstep(f - 10.0, f - 4.0, into));
                    if deep > 0.0 {
                        let n = value_noise(p, 6.0, self.key ^ 0x51);
                        let gl =
                            deep * smoothstep(self.wall.gland - 0.08, self.wall.gland + 0.08, n);
                        return (fat + (self.wall.gland_hu - fat) * gl, 0);
                    }
                }
                return (fat, 0);
            }
            if ctx.ribs && (0.0..1.0).contains(&ring) {
                let theta = v.atan2(u);
                let zr = ctx.z + self.rib_drop * 0.5 * (1.0 + theta.sin()) - self.rib_phase;
                let f = (zr / self.rib_period).rem_euclid(1.0);
                if f < self.rib_duty {
                    let along = f / self.rib_duty;
                    let t = if (2.0 * along - 1.0).abs() > (2.0 * ring - 1.0).abs() {
                        along
                    } else {
                        ring
                    };
                    // Anterior ends are costal cartilage, not bone.
                    if (theta - std::f64::consts::FRAC_PI_2).abs() < 0.35 {
                        return (110.0, 0);
                    }
                    return (Self::bone(t, 300.0, 850.0), 0);
                }
            }
            // Intercostal muscles between the ribs.
            return (self.muscle_tex(p), 0);
        }
        let (lung, fluid) = self.lung_region(x, y, ctx);
        if fluid {
            let e = self.effusion[(lung - 1) as usize]
                .as_ref()
                .map_or(10.0, |e| e.hu);
            return (
                e + 6.0 * (value_noise(p, 8.0, self.key ^ 0x61) - 0.5),
                lung + 2,
            );
        }
        if lung != 0 {
            return (self.parenchyma(p, v, lung), lung);
        }
        if ctx.aorta {
            let (ax, ay) = (x - self.aorta[0], y - self.aorta[1]);
            if ax * ax + ay * ay < self.aorta[2] * self.aorta[2] {
                return (self.blood[0], 0);
            }
        }
        if let Some(hu) = self.heart_hu(x, y, ctx) {
            return (hu, 0);
        }
        let [scx, scy, srx, sry] = ctx.stomach;
        if srx > 0.0 {
            let (dx, dy) = ((x - scx) / srx, (y - scy) / sry);
            if dx * dx + dy * dy < 1.0 {
                return (
                    if ctx.stomach_gas && dy > -0.2 {
                        AIR_HU as f64
                    } else {
                        20.0
                    },
                    0,
                );
            }
        }
        // Below the right dome: liver.
        if x > -0.15 * self.a && ctx.z < self.dome[0] + 5.0 {
            let dx = (x.abs() - ctx.lung_c[0]) / (0.44 * self.cav / ctx.inv_a);
            let dy = (y - ctx.lung_c[1]) / (0.9 * self.cav / ctx.inv_b);
            let q = (dx * dx + dy * dy).min(1.0);
            if ctx.z < self.dome[0] * (1.0 - q) + 5.0 {
                return (self.liver_hu, 0);
            }
        }
        // Mediastinal (or upper abdominal) fat with islands of soft tissue
        // (lymph nodes, thymic remnant, bowel); around the apices mostly
        // soft tissue (vessels, scalene muscles) with fat planes.
        let n = value_noise(p, 16.0, self.key ^ 0x71);
        let soft = if ctx.z > 0.8 * self.h {
            0.3
        } else if ctx.z > self.dome[1] {
            0.62
        } else {
            0.45
        };
        let fat = self.fat_hu + 16.0 * (n - 0.5);
        (
            fat + (35.0 - fat) * smoothstep(soft - 0.05, soft + 0.05, n),
            0,
        )
    }

    /// Renders slice `k`: HU into `img`, lesion mask (0/1) into `mask`, lung
    /// labels into `lungs`; adds each lesion's mask voxels to `counts[..n]`
    /// and each finding's voxels to `counts[n..]` (n lesions).
    pub fn render_slice(
        &self,
        k: usize,
        img: &mut [f32],
        mask: &mut [f32],
        lungs: &mut [f32],
        counts: &mut [u64],
    ) {
        let g = &self.grid;
        let [ni, nj, _] = g.dims;
        let z = g.z(k);
        let mut ctx = self.slice_ctx(z);
        ctx.wall = self.wall_table(z);
        let mut lab = vec![0u8; ni * nj];
        for j in 0..nj {
            let y = g.y0 + j as f64 * g.px;
            for i in 0..ni {
                let x = g.x0 + i as f64 * g.px;
                let (hu, l) = self.tissue(x, y, &ctx);
                img[i + ni * j] = hu as f32;
                lab[i + ni * j] = l;
            }
        }
        // Partial volume: where a voxel differs sharply from a neighbour it
        // straddles a boundary; it gets the mean of its centre and three
        // sub-samples. The label stays the centre's.
        let centre = img.to_vec();
        for j in 0..nj {
            for i in 0..ni {
                let idx = i + ni * j;
                let c = centre[idx];
                let edge = (i > 0 && (centre[idx - 1] - c).abs() > 80.0)
                    || (i + 1 < ni && (centre[idx + 1] - c).abs() > 80.0)
                    || (j > 0 && (centre[idx - ni] - c).abs() > 80.0)
                    || (j + 1 < nj && (centre[idx + ni] - c).abs() > 80.0);
                if edge {
                    let (x, y) = (g.x0 + i as f64 * g.px, g.y0 + j as f64 * g.px);
                    let o = 0.3 * g.px;
                    let mut sum = c as f64;
                    for (ox, oy) in [(-o, -o), (o, o), (-o, o)] {
                        sum += self.tissue(x + ox, y + oy, &ctx).0;
                    }
                    img[idx] = (0.25 * sum) as f32;
                }
            }
        }
        let in_z = |b: &Aabb| z >= b.lo[2] && z <= b.hi[2];
        let in_cavity = |x: f64, y: f64| {
            let (u, v) = (x * ctx.inv_a, y * ctx.inv_b);
            u * u + v * v < self.cav * self.cav
        };

        // Great vessels, then airways: inside the mediastinum and neck
        // (never inside the lung label, which belongs to the parenchyma).
        for (t, which) in self.great.iter().filter(|(t, _)| in_z(&t.bbox)) {
            let hu = self.blood[*which as usize] as f32;
            for j in g.rows(&t.bbox) {
                let y = g.y0 + j as f64 * g.px;
                for i in g.cols(&t.bbox) {
                    let idx = i + ni * j;
                    let x = g.x0 + i as f64 * g.px;
                    if lab[idx] != 0 || !in_cavity(x, y) || img[idx] > 400.0 {
                        continue;
                    }
                    let w = t.weight([x, y, z]) as f32;
                    if w > 0.0 {
                        img[idx] += (hu - img[idx]) * w;
                    }
                }
            }
        }
        for t in self.airways.iter().filter(|t| in_z(&t.bbox)) {
            for j in g.rows(&t.bbox) {
                let y = g.y0 + j as f64 * g.px;
                for i in g.cols(&t.bbox) {
                    let idx = i + ni * j;
                    let x = g.x0 + i as f64 * g.px;
                    if lab[idx] != 0 || !in_cavity(x, y) {
                        continue;
                    }
                    let w = t.weight([x, y, z]);
                    if w > 0.0 {
                        img[idx] += ((AIR_HU - img[idx]) as f64 * w) as f32;
                    }
                }
            }
        }

        // Emphysema: holes in the parenchyma (under lesions and vessels).
        let nles = self.lesions.len();
        let mut ew = vec![0f32; ni * nj];
        let mut ei = vec![u16::MAX; ni * nj];
        for (n, f) in self.findings.iter().enumerate() {
            if f.holes.is_empty() || !in_z(&f.bbox) {
                continue;
            }
            for t in f.holes.iter().filter(|t| in_z(&t.bbox)) {
                for j in g.rows(&t.bbox) {
                    let y = g.y0 + j as f64 * g.px;
                    for i in g.cols(&t.bbox) {
                        let idx = i + ni * j;
                        if lab[idx] != f.lung {
                            continue;
                        }
                        let w = t.weight([g.x0 + i as f64 * g.px, y, z]) as f32;
                        if w > ew[idx] {
                            ew[idx] = w;
                            ei[idx] = n as u16;
                        }
                    }
                }
            }
        }

        // Lesions: per voxel the strongest lesion wins.
        let mut lw = vec![0f32; ni * nj];
        let mut lt = vec![0f32; ni * nj];
        let mut li = vec![u16::MAX; ni * nj];
        for (n, les) in self.lesions.iter().enumerate() {
            if !in_z(&les.blob.bbox) {
                continue;
            }
            for j in g.rows(&les.blob.bbox) {
                let y = g.y0 + j as f64 * g.px;
                for i in g.cols(&les.blob.bbox) {
                    let idx = i + ni * j;
                    if lab[idx] != les.lung {
                        continue;
                    }
                    let p = [g.x0 + i as f64 * g.px, y, z];
                    let w = les.weight(p) as f32;
                    if w > lw[idx] {
                        lw[idx] = w;
                        lt[idx] = les.target(p) as f32;
                        li[idx] = n as u16;
                    }
                }
            }
        }

        // Opaque findings (nodule, mass, atelectasis): painted over
        // lesions, and where one is more than half present the voxel is
        // not lesion (placement keeps them apart, so this is a guard).
        let mut fw = vec![0f32; ni * nj];
        let mut ft = vec![0f32; ni * nj];
        let mut fi = vec![u16::MAX; ni * nj];
        for (n, f) in self.findings.iter().enumerate() {
            if !f.opaque() || !in_z(&f.bbox) {
                continue;
            }
            for j in g.rows(&f.bbox) {
                let y = g.y0 + j as f64 * g.px;
                for i in g.cols(&f.bbox) {
                    let idx = i + ni * j;
                    if lab[idx] != f.lung {
                        continue;
                    }
                    let w = f.weight([g.x0 + i as f64 * g.px, y, z]) as f32;
                    if w > fw[idx] {
                        fw[idx] = w;
                        ft[idx] = f.hu as f32;
                        fi[idx] = n as u16;
                    }
                }
            }
        }

        // Vessels, painted over lesions: ground glass does not hide them.
        let mut vw = vec![0f32; ni * nj];
        let mut vt = vec![0f32; ni * nj];
        let art = [self.blood[0] as f32, self.blood[1] as f32];
        for (t, &is_art) in self.vessels.iter().zip(&self.artery) {
            if !in_z(&t.bbox) {
                continue;
            }
            for j in g.rows(&t.bbox) {
                let y = g.y0 + j as f64 * g.px;
                for i in g.cols(&t.bbox) {
                    let idx = i + ni * j;
                    if lab[idx] == 0 || lab[idx] > 2 {
                        continue;
                    }
                    let w = t.weight([g.x0 + i as f64 * g.px, y, z]) as f32;
                    if w > vw[idx] {
                        vw[idx] = w;
                        vt[idx] = art[is_art as usize];
                    }
                }
            }
        }

        for idx in 0..ni * nj {
            let l = lab[idx];
            mask[idx] = 0.0;
            if l > 2 {
                // Pleural fluid: not lung.
                lungs[idx] = 0.0;
                if let Some(n) = self
                    .findings
                    .iter()
                    .position(|f| f.kind == FindingKind::PleuralEffusion && f.lung + 2 == l)
                {
                    counts[nles + n] += 1;
                }
                continue;
            }
            lungs[idx] = l as f32;
            if l == 0 {
                continue;
            }
            let mut val = img[idx];
            if ew[idx] > 0.0 {
                val += (EMPHYSEMA_HU as f32 - val) * ew[idx];
                if ew[idx] > 0.5 {
                    counts[nles + ei[idx] as usize] += 1;
                }
            }
            if lw[idx] > 0.0 {
                val += (lt[idx] - val) * lw[idx];
                if lw[idx] > 0.5 && fw[idx] <= 0.5 {
                    mask[idx] = 1.0;
                    counts[li[idx] as usize] += 1;
                }
            }
            if fw[idx] > 0.0 {
                val += (ft[idx] - val) * fw[idx];
                if fw[idx] > 0.5 {
                    counts[nles + fi[idx] as usize] += 1;
                }
            }
            if vw[idx] > 0.0 {
                val += (vt[idx] - val) * vw[idx];
            }
            img[idx] = val;
        }
    }

    /// Scanner artefacts of slice `k`, added after the blur: cupping (the
    /// body's centre reads a little low), and in some scans streaks from a
    /// metal object or from the arms, with a dark beam-hardening band
    /// between the humeri.
    pub fn artefacts(&self, k: usize, img: &mut [f32]) {
        let g = &self.grid;
        let [ni, nj, _] = g.dims;
        let z = g.z(k);
        let [ow, oa, op] = self.outer;
        let oy = 0.5 * (oa - op);
        let (ry, rx) = (0.5 * (oa + op), ow);
        let arms = self.arms.filter(|a| z < a.top);
        let metal = self
            .metal
            .filter(|(c, r)| self.streaks == Streaks::Metal && (z - c[2]).abs() < r[2] + 2.0);
        let [amp, lines, phase] = self.streak;
        let streak = |dx: f64, dy: f64, horizontal: bool| -> f64 {
            let rho = (dx * dx + dy * dy).sqrt();
            let phi = dy.atan2(dx);
            let s = (lines * phi + phase + 0.05 * z).sin();
            let mut v = s.signum() * s.abs().powi(40) * 60.0 / (rho + 60.0);
            if horizontal {
                v *= phi.cos().powi(4);
            }
            v
        };
        for j in 0..nj {
            let y = g.y0 + j as f64 * g.px;
            for i in 0..ni {
                let x = g.x0 + i as f64 * g.px;
                let idx = i + ni * j;
                let (u, v) = (x / rx, (y - oy) / ry);
                let r2 = u * u + v * v;
                let mut add = 0.0;
                if r2 < 1.0 {
                    add -= self.cupping * (1.0 - r2);
                }
                if let Some((c, _)) = metal {
                    add += amp * streak(x - c[0], y - c[1], false);
                }
                if let Some(a) = arms {
                    if self.streaks == Streaks::Arms {
                        let hx = a.x - a.hum_off;
                        add +=
                            amp * (streak(x - hx, y - a.y, true) + streak(x + hx, y - a.y, true));
                    }
                    if x.abs() < a.x && r2 < 1.2 {
                        add -= self.band * (-((y - a.y) / 18.0).powi(2)).exp();
                    }
                }
                if add != 0.0 {
                    img[idx] += add as f32;
                }
            }
        }
    }

    /// Lung side of a lesion label.
    pub fn side(lung: u8) -> LungSide {
        if lung == 1 {
            LungSide::Right
        } else {
            LungSide::Left
        }
    }
}

/// Appends a binary tree of tubes: each branch splits in two, thinner and
/// shorter, turning away from its parent. From generation 2 on a branch
/// that neither starts nor ends where `keep` is true (inside its lung) is
/// dropped with its subtree, so the tree fills the lung without leaving it.
#[allow(clippy::too_many_arguments)]
fn grow_tree(
    rng: &mut ChaCha8Rng,
    out: &mut Vec<Tube>,
    p: V3,
    d: V3,
    len: f64,
    r: f64,
    depth: u32,
    soft: f64,
    keep: &dyn Fn(V3) -> bool,
    generation: u32,
    origin: V3,
) {
    let end = add(p, scale(d, len));
    if generation >= 2 && !keep(p) && !keep(end) {
        return;
    }
    out.push(Tube::vessel(p, end, r, 0.85 * r, soft));
    if depth == 0 {
        return;
    }
    for _ in 0..2 {
        // A child that would end outside the lung is turned another way
        // (a few tries), so the tree fills the lung instead of leaving it.
        let (mut nd, mut child_len) = (d, len);
        let mut ok = false;
        // Branches spread: each child leans away from where the tree
        // started.
        let out_dir = normalize(sub(end, origin));
        for _ in 0..6 {
            let angle = uni(rng, 0.3, 0.65);
            nd = normalize(add(deflect(rng, d, angle), scale(out_dir, 0.35)));
            child_len = len * uni(rng, 0.78, 0.92);
            if generation < 1 || keep(add(end, scale(nd, child_len))) {
                ok = true;
                break;
            }
        }
        if !ok {
            continue;
        }
        grow_tree(
            rng,
            out,
            end,
            nd,
            child_len,
            0.76 * r,
            depth - 1,
            soft,
            keep,
            generation + 1,
            origin,
        );
    }
}

#[cfg(test)]
impl Scene {
    /// Label (as `tissue` gives it, 3 and 4 for pleural fluid) and the
    /// strongest opaque finding's weight at voxel (i, j, k) of the grid.
    pub(crate) fn probe(&self, i: usize, j: usize, k: usize) -> (u8, f64) {
        let g = &self.grid;
        let p = [g.x0 + i as f64 * g.px, g.y0 + j as f64 * g.px, g.z(k)];
        let ctx = self.slice_ctx(p[2]);
        let (_, lab) = self.tissue(p[0], p[1], &ctx);
        let w = self
            .findings
            .iter()
            .filter(|f| f.opaque() && f.lung == lab)
            .map(|f| f.weight(p))
            .fold(0.0, f64::max);
        (lab, w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn scene(seed: u64, label: Label) -> Scene {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Scene::sample(&mut rng, label, &PhantomConfig::scaled(0.4).unwrap())
    }

    /// HU at a point of the scene before blur, artefacts and noise.
    fn hu(s: &Scene, p: V3) -> f64 {
        s.tissue(p[0], p[1], &s.slice_ctx(p[2])).0
    }

    /// A point straight out to the side (y = 0) at a depth beyond the rib
    /// cage that `depth(muscle, fat)` gives from the layers there.
    fn lateral(s: &Scene, z: f64, depth: impl Fn(f64, f64) -> f64) -> V3 {
        let ca = s.rib_out * s.a * (1.0 - 0.2 * smoothstep(0.85 * s.h, s.h + 60.0, z));
        let (mu, f, _) = s.layers(1.0, 0.0, z);
        [ca + depth(mu, f), 0.0, z]
    }

    #[test]
    fn chest_wall_fat_and_muscle_have_their_hu() {
        let (mut fat, mut fat_in, mut mus, mut mus_in) = (0, 0, 0, 0);
        for seed in 0..12 {
            let s = scene(seed, Label::Healthy);
            for zi in 0..10 {
                let z = s.h * (0.2 + 0.07 * zi as f64);
                // Middle of the fat layer: lobules at -120..-80, septa
                // brighter but never soft tissue.
                let p = lateral(&s, z, |mu, f| mu + 0.5 * f);
                let v = hu(&s, p);
                assert!((-125.0..=15.0).contains(&v), "seed {seed} z {z}: fat {v}");
                fat += 1;
                fat_in += (-120.0..=-80.0).contains(&v) as usize;
                // Middle of the lateral muscle.
                let p = lateral(&s, z, |mu, _| 0.5 * mu);
                let v = hu(&s, p);
                if v > 200.0 {
                    continue; // a scapula
                }
                assert!(
                    (-125.0..=65.0).contains(&v),
                    "seed {seed} z {z}: muscle {v}"
                );
                mus += 1;
                mus_in += (35.0..=60.0).contains(&v) as usize;
            }
        }
        assert!(fat_in as f64 > 0.8 * fat as f64, "fat {fat_in}/{fat}");
        assert!(mus_in as f64 > 0.8 * mus as f64, "muscle {mus_in}/{mus}");
    }

    #[test]
    fn fat_thickness_varies_between_and_within_patients() {
        let mut lat = Vec::new();
        for seed in 0..40 {
            let s = scene(seed, Label::Healthy);
            let [fa, fl, fp] = s.fat_mm();
            assert!(
                (3.0..=60.0).contains(&fa) && fl >= 1.0 && fp <= 60.0,
                "{:?}",
                s.fat_mm()
            );
            lat.push(fl);
            // Around one slice the local thickness changes.
            let z = 0.5 * s.h;
            let th: Vec<f64> = (0..16)
                .map(|i| {
                    let t = i as f64 * TAU / 16.0;
                    s.layers(t.cos(), t.sin(), z).1
                })
                .collect();
            let (lo, hi) = th
                .iter()
                .fold((f64::MAX, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
            assert!(
                hi > 1.3 * lo,
                "seed {seed}: fat {lo}..{hi} mm around the body"
            );
        }
        let (lo, hi) = lat
            .iter()
            .fold((f64::MAX, 0.0f64), |(a, b), &x| (a.min(x), b.max(x)));
        assert!(lo < 10.0 && hi > 20.0, "lateral fat {lo}..{hi} mm");
    }

    #[test]
    fn blood_is_enhanced_in_contrast_scans_only() {
        let (mut enh, mut arms, mut breasts) = (0, 0, 0);
        let n = 40;
        for seed in 0..n {
            let s = scene(1000 + seed, Label::Healthy);
            let z = 0.4 * s.h;
            let v = hu(&s, [s.aorta[0], s.aorta[1], z]);
            if s.contrast {
                enh += 1;
                assert!((150.0..=400.0).contains(&v), "seed {seed}: aorta {v}");
                assert!((80.0..=125.0).contains(&s.blood[2]), "myocardium");
            } else {
                assert!((30.0..=50.0).contains(&v), "seed {seed}: plain aorta {v}");
            }
            arms += (s.arm_position() == ArmPosition::Down) as usize;
            breasts += s.breasts() as usize;
        }
        let f = |c: usize| c as f64 / n as f64;
        assert!((0.25..=0.65).contains(&f(enh)), "enhanced {enh}/{n}");
        assert!((0.15..=0.55).contains(&f(arms)), "arms down {arms}/{n}");
        assert!((0.1..=0.5).contains(&f(breasts)), "breasts {breasts}/{n}");
    }

    #[test]
    fn arms_down_are_beside_the_chest_and_up_are_absent() {
        for seed in 0..30 {
            let s = scene(seed, Label::Healthy);
            let z = 0.5 * s.h;
            let x = s.outer[0] + 60.0;
            match s.arms {
                Some(a) => {
                    // The humerus's centre is bone, the arm's edge soft.
                    let v = hu(&s, [a.x - a.hum_off, a.y, z]);
                    assert!(v > 0.0 && v < 1200.0, "seed {seed}: humerus {v}");
                    let v = hu(&s, [a.x - a.hum_off + a.hum_r - 1.0, a.y, z]);
                    assert!(v > 500.0, "seed {seed}: cortex {v}");
                }
                None => {
                    assert_eq!(hu(&s, [x, 0.0, z]), AIR_HU as f64, "seed {seed}");
                }
            }
        }
    }

    #[test]
    fn findings_of_every_kind_occur_in_every_class() {
        let mut kinds = std::collections::HashSet::new();
        let mut healthy = 0;
        for seed in 0..90 {
            let label = Label::ALL[seed as usize % 3];
            let s = scene(seed, label);
            for f in &s.findings {
                kinds.insert(f.kind);
                healthy += (label == Label::Healthy) as usize;
                // Opaque findings never overlap a lesion's box.
                if f.opaque() {
                    assert!(s.clear_of_lesions(&f.bbox, 0.0), "seed {seed}");
                }
            }
        }
        assert_eq!(kinds.len(), 5, "{kinds:?}");
        assert!(healthy > 0);
    }

    #[test]
    fn fissures_are_lines_and_lobar_lesions_stop_at_them() {
        let s = scene(3, Label::Healthy);
        let f = &s.fissures[0];
        let Surface::Plane(n, _) = f.oblique else {
            panic!("oblique fissure is a plane")
        };
        // On the oblique fissure the lung is denser than 6 mm off it (where
        // the fissure is present: it is incomplete in places).
        let (mut pairs, mut denser) = (0, 0);
        for i in 0..2000 {
            let z = s.h * (0.2 + 0.6 * (i % 40) as f64 / 40.0);
            let x = s.med + 10.0 + (i / 40) as f64 * 2.0;
            // Walk along y to the plane: n . p = off.
            let off = dot(n, [x, 0.0, z]) - f.oblique.dist([x, 0.0, z]);
            let y = (off - n[0] * x - n[2] * z) / n[1];
            let q = [x, y, z];
            let r = add(q, scale(n, 6.0));
            let (cq, cr) = (s.slice_ctx(q[2]), s.slice_ctx(r[2]));
            if s.lung_label(q[0], q[1], &cq) != 1 || s.lung_label(r[0], r[1], &cr) != 1 {
                continue;
            }
            pairs += 1;
            let dv = s.parenchyma(q, q[1] * cq.inv_b, 1) - s.parenchyma(r, r[1] * cr.inv_b, 1);
            denser += (dv > 20.0) as usize;
        }
        assert!(pairs > 50, "{pairs} pairs");
        assert!(
            denser as f64 > 0.25 * pairs as f64,
            "{denser}/{pairs} denser on the fissure"
        );
        // Lobar lesions use the scene's fissures.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..20 {
            for (surf, _) in s.lobe_planes(&mut rng, 1) {
                let p = [60.0, 10.0, 0.3 * s.h];
                let same = [f.oblique.dist(p)]
                    .into_iter()
                    .chain(f.horizontal.map(|h| h.dist(p)))
                    .any(|d| d == surf.dist(p));
                assert!(same);
            }
        }
    }
}
