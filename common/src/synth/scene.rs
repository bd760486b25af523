//! The phantom as a scene in anatomical millimetres (x towards the
//! patient's right, y anterior, z superior; body axis through x = y = 0,
//! lung bases at z = 0, apices at z = `h`), sampled from one RNG stream and
//! rendered one axial slice at a time.
//!
//! Rendering a slice reads the scene only, so slices render in parallel and
//! the result does not depend on the thread count.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::geom::{
    Aabb, Blob, Tube, V3, add, deflect, dot, frame, normalize, scale, smoothstep, sub, uni, unit,
};
use super::{LesionKind, LungSide, PhantomConfig};
use crate::manifest::Label;

/// Air outside the body and in the airways.
const AIR_HU: f32 = -1000.0;
/// Blood and soft tissue of pulmonary vessels (unenhanced CT).
const VESSEL_HU: f64 = 40.0;
/// Air inside air bronchograms.
const BRONCHOGRAM_HU: f64 = -920.0;

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
    /// Half-spaces (unit normal, offset): the lesion stops at fissures.
    planes: Vec<(V3, f64)>,
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
        for &(n, off) in &self.planes {
            // A fissure is thin: the consolidation stops within ~1.5 mm.
            w *= smoothstep(-1.5, 1.5, dot(n, p) - off);
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
    /// Stomach cross-section: centre x, y, radii x, y (radii 0: absent),
    /// and whether this height is in its gas cap.
    stomach: [f64; 4],
    stomach_gas: bool,
}

/// Everything about one phantom except the voxels.
#[derive(Debug, Clone)]
pub(crate) struct Scene {
    pub grid: Grid,
    /// Anatomical -> world (RAS mm) translation.
    pub shift: V3,
    a: f64,
    b: f64,
    pub h: f64,
    fat: f64,
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
    spine_y: f64,
    spine_r: f64,
    disc_period: f64,
    disc_phase: f64,
    aorta: [f64; 3],
    stomach: Option<(V3, V3)>,
    table: [f64; 5],
    pub fat_hu: f64,
    pub muscle_hu: f64,
    pub lung_hu: f64,
    lung_grad: f64,
    airways: Vec<Tube>,
    vessels: Vec<Tube>,
    pub lesions: Vec<Lesion>,
}

impl Scene {
    /// Draws a grid and an anatomy, then the lesions of `label`.
    pub fn sample(rng: &mut ChaCha8Rng, label: Label, cfg: &PhantomConfig) -> Scene {
        // Field of view and body size: the body must fit with its table.
        let n = rng.random_range(cfg.inplane[0]..=cfg.inplane[1]);
        let fov = uni(rng, cfg.fov_mm[0], cfg.fov_mm[1]);
        let px = fov / n as f64;
        let gap = uni(rng, 4.0, 20.0);
        let thick = uni(rng, 5.0, 12.0);
        let a = uni(rng, 140.0, 170.0).min(fov / 2.0 - 6.0);
        let b = uni(rng, 95.0, 125.0)
            .min((fov - gap - thick - 12.0) / 2.0)
            .min(0.85 * a);
        let xmin = uni(rng, a + 3.0 - fov, -a - 3.0);
        let ymin = uni(rng, b + 3.0 - fov, -b - gap - thick - 3.0);

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

        let cav = uni(rng, 0.80, 0.84);
        let rib_in = cav + 0.012;
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
        let mut s = Scene {
            grid,
            shift,
            a,
            b,
            h,
            fat: uni(rng, 0.03, 0.08),
            cav,
            rib_in,
            rib_out: rib_in + uni(rng, 0.04, 0.05),
            rib_period: uni(rng, 24.0, 30.0),
            rib_phase: uni(rng, 0.0, 30.0),
            rib_drop: uni(rng, 50.0, 90.0),
            rib_duty: uni(rng, 0.35, 0.45),
            med: uni(rng, 20.0, 30.0),
            dome,
            heart_c,
            heart_r,
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
                (0.45 * fov).min(1.25 * a),
            ],
            fat_hu: uni(rng, -115.0, -85.0),
            muscle_hu: uni(rng, 35.0, 55.0),
            lung_hu: uni(rng, -870.0, -830.0),
            lung_grad: uni(rng, 15.0, 45.0),
            airways: Vec::new(),
            vessels: Vec::new(),
            lesions: Vec::new(),
        };
        s.grow_airways_and_vessels(rng, above);
        match label {
            Label::Healthy => {}
            Label::Covid => s.add_covid(rng),
            Label::Cap => s.add_cap(rng),
        }
        s
    }

    /// Lung-side sign: +1 for the right lung (label 1), -1 for the left.
    fn sign(lung: u8) -> f64 {
        if lung == 1 { 1.0 } else { -1.0 }
    }

    /// The hilum of a lung, where its airway and vessels enter.
    fn hilum(&self, lung: u8) -> V3 {
        [
            Self::sign(lung) * (self.med + 6.0),
            self.spine_y + self.spine_r + 30.0,
            0.55 * self.h,
        ]
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
        // Six trunks per lung (apical, anterior, lateral, posterior,
        // posterior-basal, anterior-basal), each a binary tree thinning to
        // the periphery.
        let trunks: [V3; 6] = [
            [0.4, 0.1, 1.0],
            [0.8, 0.7, 0.5],
            [1.0, 0.2, 0.1],
            [0.7, -0.7, 0.3],
            [0.4, -0.5, -1.0],
            [0.5, 0.6, -0.8],
        ];
        for lung in [1u8, 2] {
            let s = Self::sign(lung);
            let root = add(self.hilum(lung), [s * 4.0, 0.0, 0.0]);
            for t in trunks {
                let turn = uni(rng, 0.0, 0.2);
                let d = deflect(rng, normalize([s * t[0], t[1], t[2]]), turn);
                let r0 = uni(rng, 4.5, 6.5);
                let len = uni(rng, 30.0, 40.0);
                grow_tree(rng, &mut self.vessels, root, d, len, r0, 6, soft);
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

    /// Fissure half-spaces bounding a lobe of `lung`, as (normal, offset)
    /// with the lobe on the positive side.
    fn lobe_planes(&self, rng: &mut ChaCha8Rng, lung: u8) -> Vec<(V3, f64)> {
        // Oblique fissure: from high posterior to low anterior.
        let (y1, z1) = (-0.7 * self.cav * self.b, uni(rng, 0.58, 0.66) * self.h);
        let (y2, z2) = (0.6 * self.cav * self.b, uni(rng, 0.08, 0.16) * self.h);
        let n_obl = normalize([0.0, -(z2 - z1), y2 - y1]); // points up/forward
        let off_obl = dot(n_obl, [0.0, y1, z1]);
        let upper = (n_obl, off_obl);
        let lower = (scale(n_obl, -1.0), -off_obl);
        let u = rng.random::<f64>();
        if lung == 1 && u < 0.2 {
            // Right middle lobe: in front of the oblique fissure, below the
            // horizontal one.
            let zh = uni(rng, 0.45, 0.55) * self.h;
            vec![upper, ([0.0, 0.0, -1.0], -zh)]
        } else if u < 0.55 {
            vec![lower]
        } else if lung == 1 {
            let zh = uni(rng, 0.45, 0.55) * self.h;
            vec![upper, ([0.0, 0.0, 1.0], zh)]
        } else {
            vec![upper]
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
                && planes.iter().all(|&(n, off)| dot(n, p) - off > 3.0)
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
            stomach,
            stomach_gas,
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

    /// 1 right lung, 2 left lung, 0 elsewhere.
    #[inline]
    fn lung_label(&self, x: f64, y: f64, ctx: &SliceCtx) -> u8 {
        if ctx.taper <= 0.0 || x.abs() <= self.med {
            return 0;
        }
        let (u, v) = (x * ctx.inv_a, y * ctx.inv_b);
        if u * u + v * v >= self.cav * self.cav {
            return 0;
        }
        let lung = if x > 0.0 { 1u8 } else { 2u8 };
        let dx = (x.abs() - ctx.lung_c[0]) / ctx.lung_r[0];
        let dy = (y - ctx.lung_c[1]) / ctx.lung_r[1];
        let q = dx * dx + dy * dy;
        if q >= 1.0 || ctx.z <= self.dome[(lung - 1) as usize] * (1.0 - q) {
            return 0;
        }
        if Self::in_heart(x, y, ctx, 3.0) {
            return 0;
        }
        // Paravertebral gutter and descending aorta stay out of the lung.
        let (sx, sy) = (x, y - self.spine_y);
        let sr = self.spine_r + 12.0;
        if sx * sx + sy * sy < sr * sr || (sy < 0.0 && sx.abs() < self.spine_r + 8.0) {
            return 0;
        }
        if ctx.aorta {
            let (ax, ay, ar) = (x - self.aorta[0], y - self.aorta[1], self.aorta[2] + 3.0);
            if ax * ax + ay * ay < ar * ar {
                return 0;
            }
        }
        lung
    }

    /// Bone HU across a bone's thickness: cortex at the edges (`t` near 0
    /// or 1), marrow inside.
    #[inline]
    fn bone(t: f64, marrow: f64, cortex: f64) -> f64 {
        let e = (2.0 * t - 1.0).abs();
        marrow + (cortex - marrow) * e * e * e
    }

    /// HU and lung label of one point, before vessels, airways and lesions.
    fn tissue(&self, x: f64, y: f64, ctx: &SliceCtx) -> (f64, u8) {
        let (u, v) = (x * ctx.inv_a, y * ctx.inv_b);
        let r2 = u * u + v * v;
        if r2 >= 1.0 {
            // Outside the body: air, or the table under the patient.
            let [gap, thick, hu, curve, half] = self.table;
            let top = -self.b - gap + curve * (x / self.a).powi(2);
            if x.abs() < half && y <= top && y > top - thick {
                return (hu, 0);
            }
            return (AIR_HU as f64, 0);
        }
        let r = r2.sqrt();
        if r > 1.0 - self.fat {
            return (self.fat_hu, 0);
        }
        // Spine: vertebral body (or disc), canal, arch, spinous process.
        let (sx, sy) = (x, y - self.spine_y);
        if sx.abs() < 30.0 && sy < self.spine_r + 2.0 {
            let d = (sx * sx + sy * sy).sqrt();
            if d < self.spine_r {
                if ctx.disc {
                    return (80.0, 0);
                }
                return (Self::bone(0.5 + 0.5 * d / self.spine_r, 280.0, 700.0), 0);
            }
            let cy = sy + self.spine_r + 9.0;
            let dc = (sx * sx + cy * cy).sqrt();
            if dc < 7.0 {
                return (15.0, 0); // spinal canal
            }
            if dc < 13.0 && cy < 4.0 {
                return (Self::bone((dc - 7.0) / 6.0, 350.0, 650.0), 0);
            }
            if sx.abs() < 4.0 && cy < -10.0 && cy > -40.0 {
                return (500.0, 0);
            }
        }
        if r > self.cav {
            // Chest wall: sternum, ribs or cartilage, scapulae, muscle.
            let ring = (r - self.rib_in) / (self.rib_out - self.rib_in);
            if ctx.sternum && v > 0.0 && x.abs() < 14.0 && ring < 1.2 {
                return (Self::bone(ring.clamp(0.0, 1.0), 250.0, 600.0), 0);
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
            if ctx.scapula && r > self.rib_out + 0.008 && r < self.rib_out + 0.028 && v < 0.0 {
                let theta = v.atan2(u).abs();
                if (0.55..1.25).contains(&theta) || (1.9..2.6).contains(&theta) {
                    return (500.0, 0);
                }
            }
            return (self.muscle_hu, 0);
        }
        let lung = self.lung_label(x, y, ctx);
        if lung != 0 {
            // Dependent (posterior) lung is slightly denser.
            let g = ((self.cav - v) / (2.0 * self.cav)).clamp(0.0, 1.0);
            return (self.lung_hu + self.lung_grad * g, lung);
        }
        if ctx.aorta {
            let (ax, ay) = (x - self.aorta[0], y - self.aorta[1]);
            if ax * ax + ay * ay < self.aorta[2] * self.aorta[2] {
                return (42.0, 0);
            }
        }
        if Self::in_heart(x, y, ctx, 0.0) {
            return (40.0, 0);
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
                return (58.0, 0);
            }
        }
        (35.0, 0)
    }

    /// Renders slice `k`: HU into `img`, lesion mask (0/1) into `mask`, lung
    /// labels into `lungs`; adds each lesion's mask voxels to `counts`.
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
        let ctx = self.slice_ctx(z);
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
        let in_z = |b: &Aabb| z >= b.lo[2] && z <= b.hi[2];

        // Airways: air inside the mediastinum and neck (never inside the
        // lung label, which belongs to the parenchyma).
        for t in self.airways.iter().filter(|t| in_z(&t.bbox)) {
            for j in g.rows(&t.bbox) {
                let y = g.y0 + j as f64 * g.px;
                for i in g.cols(&t.bbox) {
                    let idx = i + ni * j;
                    let x = g.x0 + i as f64 * g.px;
                    if lab[idx] != 0 {
                        continue;
                    }
                    let (u, v) = (x * ctx.inv_a, y * ctx.inv_b);
                    if u * u + v * v >= self.cav * self.cav {
                        continue;
                    }
                    let w = t.weight([x, y, z]);
                    if w > 0.0 {
                        img[idx] += ((AIR_HU - img[idx]) as f64 * w) as f32;
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

        // Vessels, painted over lesions: ground glass does not hide them.
        let mut vw = vec![0f32; ni * nj];
        for t in self.vessels.iter().filter(|t| in_z(&t.bbox)) {
            for j in g.rows(&t.bbox) {
                let y = g.y0 + j as f64 * g.px;
                for i in g.cols(&t.bbox) {
                    let idx = i + ni * j;
                    if lab[idx] == 0 {
                        continue;
                    }
                    let w = t.weight([g.x0 + i as f64 * g.px, y, z]) as f32;
                    vw[idx] = vw[idx].max(w);
                }
            }
        }

        for idx in 0..ni * nj {
            lungs[idx] = lab[idx] as f32;
            mask[idx] = 0.0;
            if lab[idx] == 0 {
                continue;
            }
            let mut val = img[idx];
            if lw[idx] > 0.0 {
                val += (lt[idx] - val) * lw[idx];
                if lw[idx] > 0.5 {
                    mask[idx] = 1.0;
                    counts[li[idx] as usize] += 1;
                }
            }
            if vw[idx] > 0.0 {
                val += (VESSEL_HU as f32 - val) * vw[idx];
            }
            img[idx] = val;
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
/// shorter, turning away from its parent.
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
) {
    let end = add(p, scale(d, len));
    out.push(Tube::new(p, end, r, 0.85 * r, soft));
    if depth == 0 {
        return;
    }
    for _ in 0..2 {
        let angle = uni(rng, 0.3, 0.65);
        let nd = deflect(rng, d, angle);
        let child_len = len * uni(rng, 0.7, 0.9);
        grow_tree(rng, out, end, nd, child_len, 0.72 * r, depth - 1, soft);
    }
}
