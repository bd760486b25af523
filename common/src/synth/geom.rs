//! Small 3D geometry and sampling helpers for the phantom generator: vectors
//! in millimetres, soft-edged tubes (vessels, airways) and soft-edged
//! perturbed ellipsoids (lesions).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A point or direction in anatomical millimetres (x right, y anterior,
/// z superior).
pub(crate) type V3 = [f64; 3];

pub(crate) fn add(a: V3, b: V3) -> V3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}

pub(crate) fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

pub(crate) fn scale(a: V3, s: f64) -> V3 {
    [a[0] * s, a[1] * s, a[2] * s]
}

pub(crate) fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

pub(crate) fn cross(a: V3, b: V3) -> V3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

pub(crate) fn norm(a: V3) -> f64 {
    dot(a, a).sqrt()
}

/// `a` scaled to unit length; a zero vector gives +z, so callers never
/// divide by zero.
pub(crate) fn normalize(a: V3) -> V3 {
    let n = norm(a);
    if n > 1e-12 {
        scale(a, 1.0 / n)
    } else {
        [0.0, 0.0, 1.0]
    }
}

/// Hermite smoothstep: 0 below `e0`, 1 above `e1`, C1-smooth between.
#[inline]
pub(crate) fn smoothstep(e0: f64, e1: f64, x: f64) -> f64 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// A hash of an integer lattice point and a key, uniform in [0, 1).
#[inline]
fn lattice(ix: i64, iy: i64, iz: i64, key: u64) -> f64 {
    let mut h = (ix as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (iy as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ (iz as u64).wrapping_mul(0x1656_67b1_9e37_79f9)
        ^ key;
    h = (h ^ (h >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    h ^= h >> 32;
    (h >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Lattice offset that keeps cell coordinates positive (positions are
/// within a few metres), so truncation is floor without a libm call.
const NOISE_OFFSET: f64 = 65536.0;

/// Smooth value noise in [0, 1): hashed values on a lattice of `cell` mm,
/// interpolated with a C1 fade. A pure function of the point and `key`, so
/// every slice (and every thread) sees the same field: textures stay
/// deterministic and continuous across slices.
#[inline]
pub(crate) fn value_noise(p: V3, cell: f64, key: u64) -> f64 {
    let inv = 1.0 / cell;
    let q = [
        p[0] * inv + NOISE_OFFSET,
        p[1] * inv + NOISE_OFFSET,
        p[2] * inv + NOISE_OFFSET,
    ];
    let (x, y, z) = (q[0] as i64, q[1] as i64, q[2] as i64);
    let t = [q[0] - x as f64, q[1] - y as f64, q[2] - z as f64].map(|t| t * t * (3.0 - 2.0 * t));
    let mut acc = 0.0;
    for dz in 0..2 {
        let wz = if dz == 0 { 1.0 - t[2] } else { t[2] };
        for dy in 0..2 {
            let wy = if dy == 0 { 1.0 - t[1] } else { t[1] };
            let a = lattice(x, y + dy, z + dz, key);
            let b = lattice(x + 1, y + dy, z + dz, key);
            acc += wz * wy * (a + (b - a) * t[0]);
        }
    }
    acc
}

/// Uniform in `[lo, hi)`; unlike `random_range` it accepts `lo == hi`
/// (degenerate configuration ranges) without panicking.
pub(crate) fn uni(rng: &mut ChaCha8Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

/// A uniformly distributed unit vector.
pub(crate) fn unit(rng: &mut ChaCha8Rng) -> V3 {
    let z = uni(rng, -1.0, 1.0);
    let phi = uni(rng, 0.0, std::f64::consts::TAU);
    let r = (1.0 - z * z).max(0.0).sqrt();
    [r * phi.cos(), r * phi.sin(), z]
}

/// Two unit vectors completing `d` (unit) to an orthonormal frame.
pub(crate) fn frame(d: V3) -> (V3, V3) {
    let helper = if d[2].abs() < 0.9 {
        [0.0, 0.0, 1.0]
    } else {
        [1.0, 0.0, 0.0]
    };
    let u = normalize(cross(d, helper));
    let v = cross(d, u);
    (u, v)
}

/// `d` (unit) turned by `angle` radians towards a random perpendicular
/// direction.
pub(crate) fn deflect(rng: &mut ChaCha8Rng, d: V3, angle: f64) -> V3 {
    let (u, v) = frame(d);
    let phi = uni(rng, 0.0, std::f64::consts::TAU);
    let perp = add(scale(u, phi.cos()), scale(v, phi.sin()));
    normalize(add(scale(d, angle.cos()), scale(perp, angle.sin())))
}

/// An axis-aligned box in millimetres.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Aabb {
    pub lo: V3,
    pub hi: V3,
}

/// A tube (capsule with linearly varying radius) with a soft edge about one
/// `soft` wide, so that thin vessels show partial-volume values instead of
/// aliasing on the voxel grid.
#[derive(Debug, Clone)]
pub(crate) struct Tube {
    a: V3,
    ab: V3,
    inv_len2: f64,
    ra: f64,
    rb: f64,
    soft: f64,
    /// Scale the weight of tubes thinner than their soft edge so that the
    /// painted amount matches their cross-section (partial volume of thin
    /// vessels) instead of smearing a full-strength disk `soft` wide.
    conserve: bool,
    pub bbox: Aabb,
}

impl Tube {
    /// A tube whose weight keeps its cross-section's area when it is
    /// thinner than the soft edge (vessels).
    pub fn vessel(a: V3, b: V3, ra: f64, rb: f64, soft: f64) -> Tube {
        Tube {
            conserve: true,
            ..Tube::new(a, b, ra, rb, soft)
        }
    }

    pub fn new(a: V3, b: V3, ra: f64, rb: f64, soft: f64) -> Tube {
        let ab = sub(b, a);
        let len2 = dot(ab, ab);
        let m = ra.max(rb) + soft;
        let lo = [a[0].min(b[0]) - m, a[1].min(b[1]) - m, a[2].min(b[2]) - m];
        let hi = [a[0].max(b[0]) + m, a[1].max(b[1]) + m, a[2].max(b[2]) + m];
        Tube {
            a,
            ab,
            inv_len2: if len2 > 1e-12 { 1.0 / len2 } else { 0.0 },
            ra,
            rb,
            soft,
            conserve: false,
            bbox: Aabb { lo, hi },
        }
    }

    /// Membership in [0, 1]: 1 well inside, 0.5 on the nominal wall.
    #[inline]
    pub fn weight(&self, p: V3) -> f64 {
        let ap = sub(p, self.a);
        let t = (dot(ap, self.ab) * self.inv_len2).clamp(0.0, 1.0);
        let d = norm(sub(ap, scale(self.ab, t)));
        let r = self.ra + (self.rb - self.ra) * t;
        let w = 1.0 - smoothstep(r - self.soft, r + self.soft, d);
        if self.conserve {
            // The smooth edge adds about 0.3 soft^2 pi to the painted area.
            w * (r * r / (r * r + 0.3 * self.soft * self.soft))
        } else {
            w
        }
    }
}

/// An ellipsoid with random orientation whose surface is perturbed by a few
/// low-frequency lobes, so that lesions are not perfect ellipsoids.
#[derive(Debug, Clone)]
pub(crate) struct Blob {
    pub center: V3,
    axes: [V3; 3],
    inv_r: [f64; 3],
    /// (direction, amplitude, frequency, phase) of each surface lobe.
    lobes: Vec<(V3, f64, f64, f64)>,
    /// Relative half-width of the soft edge.
    soft: f64,
    pub radii: [f64; 3],
    pub bbox: Aabb,
}

/// Largest total lobe amplitude; bounds the bounding box.
const MAX_LOBE: f64 = 0.18;

impl Blob {
    /// `axes` must be orthonormal; `roughness` in [0, 1] scales the lobes.
    pub fn new(
        rng: &mut ChaCha8Rng,
        center: V3,
        axes: [V3; 3],
        radii: [f64; 3],
        soft: f64,
        roughness: f64,
    ) -> Blob {
        let n = 3;
        let lobes = (0..n)
            .map(|_| {
                (
                    unit(rng),
                    MAX_LOBE / n as f64 * roughness.clamp(0.0, 1.0) * uni(rng, 0.5, 1.0),
                    uni(rng, 2.0, 5.0),
                    uni(rng, 0.0, std::f64::consts::TAU),
                )
            })
            .collect();
        let reach = radii.iter().cloned().fold(0.0, f64::max) * (1.0 + soft) / (1.0 - MAX_LOBE);
        Blob {
            center,
            axes,
            inv_r: radii.map(|r| 1.0 / r.max(1e-6)),
            lobes,
            soft,
            radii,
            bbox: Aabb {
                lo: sub(center, [reach; 3]),
                hi: add(center, [reach; 3]),
            },
        }
    }

    /// Normalised radius: < 1 inside the (perturbed) surface.
    #[inline]
    pub fn rho(&self, p: V3) -> f64 {
        let d = sub(p, self.center);
        let q = [
            dot(d, self.axes[0]) * self.inv_r[0],
            dot(d, self.axes[1]) * self.inv_r[1],
            dot(d, self.axes[2]) * self.inv_r[2],
        ];
        let n = norm(q);
        if n < 1e-9 {
            return 0.0;
        }
        let dir = scale(q, 1.0 / n);
        let mut pert = 1.0;
        for &(k, amp, freq, phase) in &self.lobes {
            pert += amp * (freq * dot(dir, k) + phase).cos();
        }
        n / pert
    }

    /// Membership in [0, 1], exactly 0.5 on the perturbed surface.
    #[inline]
    pub fn weight(&self, p: V3) -> f64 {
        let r = self.rho(p);
        1.0 - smoothstep(1.0 - self.soft, 1.0 + self.soft, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn tube_and_blob_weights_are_half_on_the_surface() {
        let t = Tube::new([0.0; 3], [10.0, 0.0, 0.0], 2.0, 2.0, 0.5);
        assert!((t.weight([5.0, 2.0, 0.0]) - 0.5).abs() < 1e-12);
        assert_eq!(t.weight([5.0, 0.0, 0.0]), 1.0);
        assert_eq!(t.weight([5.0, 3.0, 0.0]), 0.0);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let axes = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let b = Blob::new(&mut rng, [0.0; 3], axes, [10.0, 5.0, 3.0], 0.2, 0.0);
        assert!((b.weight([10.0, 0.0, 0.0]) - 0.5).abs() < 1e-12);
        assert!((b.weight([0.0, 0.0, 3.0]) - 0.5).abs() < 1e-12);
        assert_eq!(b.weight([0.0; 3]), 1.0);
        // The bounding box holds every point with weight > 0.
        let rough = Blob::new(&mut rng, [1.0; 3], axes, [10.0, 5.0, 3.0], 0.3, 1.0);
        for _ in 0..2000 {
            let p = add([1.0; 3], scale(unit(&mut rng), uni(&mut rng, 0.0, 20.0)));
            let inside = (0..3).all(|d| p[d] >= rough.bbox.lo[d] && p[d] <= rough.bbox.hi[d]);
            assert!(inside || rough.weight(p) == 0.0);
        }
    }

    #[test]
    fn value_noise_is_bounded_smooth_and_keyed() {
        let mut lo: f64 = 1.0;
        let mut hi: f64 = 0.0;
        for i in 0..2000 {
            let p = [i as f64 * 0.37, (i % 17) as f64 * 1.3, (i % 5) as f64 * 2.1];
            let v = value_noise(p, 4.0, 9);
            lo = lo.min(v);
            hi = hi.max(v);
            // Continuous: a 0.01 mm step moves it very little.
            let w = value_noise(add(p, [0.01, 0.0, 0.0]), 4.0, 9);
            assert!((v - w).abs() < 0.02, "{v} {w}");
        }
        assert!(lo >= 0.0 && hi < 1.0 && hi - lo > 0.5, "{lo}..{hi}");
        let p = [1.7, 2.9, -3.3];
        assert_eq!(value_noise(p, 4.0, 9), value_noise(p, 4.0, 9));
        assert_ne!(value_noise(p, 4.0, 9), value_noise(p, 4.0, 10));
    }

    #[test]
    fn frames_are_orthonormal() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..100 {
            let d = unit(&mut rng);
            let (u, v) = frame(d);
            for (a, b) in [(d, u), (d, v), (u, v)] {
                assert!(dot(a, b).abs() < 1e-9);
            }
            assert!((norm(u) - 1.0).abs() < 1e-9 && (norm(v) - 1.0).abs() < 1e-9);
            let e = deflect(&mut rng, d, 0.5);
            assert!((dot(e, d) - 0.5f64.cos()).abs() < 1e-9);
        }
    }
}
