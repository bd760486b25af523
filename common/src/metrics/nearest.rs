//! Exact nearest-point distances between two sets of lattice points, with
//! anisotropic spacing.
//!
//! The reference computes a Euclidean distance transform over the whole
//! bounding box and reads it at the surface points. Only the surface points
//! need a distance, and they are a tiny fraction of the box (a few hundred
//! thousand out of tens of millions), so two exact searches replace it:
//!
//! - Most surface points of a decent prediction lie within a few mm of the
//!   other surface. A bitmap of the target's corners over its bounding box
//!   (one bit per corner) is probed at the lattice offsets within a few mm,
//!   visited in increasing distance: the first hit is the nearest point.
//! - Points with nothing that close fall back to a k-d tree over the target
//!   points (exact nearest neighbour, O(log n) per query on average), or,
//!   when there are many of them (salt noise in a thresholded prediction
//!   gives millions), to one exact distance transform of the bounding box
//!   ([`super::edt`]), whose cost does not grow with the number of points.
//!
//! Distances are computed the way scipy's `distance_transform_edt` computes
//! them from its feature transform, `sqrt((d0 s0)^2 + (d1 s1)^2 + (d2 s2)^2)`
//! in f64 with the offsets `d` as integers, so equal nearest points give
//! bit-identical distances.

use rayon::prelude::*;

use super::edt;

/// Points per leaf: below this a linear scan beats further splitting.
const LEAF: usize = 12;
/// Subtrees larger than this are built in parallel.
const PAR_BUILD: usize = 16_384;
/// Lattice offsets the bitmap search probes before giving up: a ball of
/// about this many corners (a radius of ~4 mm at 0.7 x 0.7 x 1.25 mm).
const BALL_OFFSETS: f64 = 400.0;

/// A static, implicitly stored k-d tree: the node of a range is its middle
/// element, its children the halves either side.
pub struct KdTree {
    points: Vec<[i32; 3]>,
    /// Split axis of the node stored at the same index (unused in leaves).
    axes: Vec<u8>,
    spacing: [f64; 3],
}

/// The squared distance between lattice points, summed in scipy's order.
#[inline]
fn dist2(p: &[i32; 3], q: &[i32; 3], s: &[f64; 3]) -> f64 {
    let a = f64::from(p[0] - q[0]) * s[0];
    let b = f64::from(p[1] - q[1]) * s[1];
    let c = f64::from(p[2] - q[2]) * s[2];
    a * a + b * b + c * c
}

impl KdTree {
    /// Builds the tree over `points` (taken by value and reordered).
    pub fn new(mut points: Vec<[i32; 3]>, spacing: [f64; 3]) -> Self {
        let mut axes = vec![0u8; points.len()];
        build(&mut points, &mut axes, &spacing);
        KdTree {
            points,
            axes,
            spacing,
        }
    }

    /// The distance in mm from `q` to the nearest point of the tree;
    /// infinite when the tree is empty.
    pub fn nearest_distance(&self, q: &[i32; 3]) -> f64 {
        let mut best = f64::INFINITY;
        self.search(q, 0, self.points.len(), &mut best);
        best.sqrt()
    }

    fn search(&self, q: &[i32; 3], lo: usize, hi: usize, best: &mut f64) {
        let n = hi - lo;
        if n <= LEAF {
            for p in &self.points[lo..hi] {
                let d = dist2(p, q, &self.spacing);
                if d < *best {
                    *best = d;
                }
            }
            return;
        }
        let mid = lo + n / 2;
        let p = &self.points[mid];
        let d = dist2(p, q, &self.spacing);
        if d < *best {
            *best = d;
        }
        let a = usize::from(self.axes[mid]);
        let diff = f64::from(q[a] - p[a]) * self.spacing[a];
        // Points in the far half are at least |diff| away along this axis
        // alone, and adding non-negative terms never rounds below that.
        let (near, far) = if diff < 0.0 {
            ((lo, mid), (mid + 1, hi))
        } else {
            ((mid + 1, hi), (lo, mid))
        };
        self.search(q, near.0, near.1, best);
        if diff * diff < *best {
            self.search(q, far.0, far.1, best);
        }
    }
}

/// Orders `points` into an implicit k-d tree, splitting each range at its
/// middle along the axis where it is widest in mm.
fn build(points: &mut [[i32; 3]], axes: &mut [u8], spacing: &[f64; 3]) {
    let n = points.len();
    if n <= LEAF {
        return;
    }
    let mut lo = [i32::MAX; 3];
    let mut hi = [i32::MIN; 3];
    for p in points.iter() {
        for d in 0..3 {
            lo[d] = lo[d].min(p[d]);
            hi[d] = hi[d].max(p[d]);
        }
    }
    let widths = [0, 1, 2].map(|d| f64::from(hi[d] - lo[d]) * spacing[d]);
    let axis = if widths[0] >= widths[1] && widths[0] >= widths[2] {
        0
    } else if widths[1] >= widths[2] {
        1
    } else {
        2
    };
    let mid = n / 2;
    points.select_nth_unstable_by_key(mid, |p| p[axis]);
    axes[mid] = axis as u8;
    let (left, rest) = points.split_at_mut(mid);
    let right = &mut rest[1..];
    let (left_axes, rest_axes) = axes.split_at_mut(mid);
    let right_axes = &mut rest_axes[1..];
    if n > PAR_BUILD {
        rayon::join(
            || build(left, left_axes, spacing),
            || build(right, right_axes, spacing),
        );
    } else {
        build(left, left_axes, spacing);
        build(right, right_axes, spacing);
    }
}

/// One bit per lattice point of a box: which points belong to a set.
struct Occupancy {
    lo: [i32; 3],
    size: [usize; 3],
    bits: Vec<u64>,
}

impl Occupancy {
    /// The bitmap of `points` (non-empty) over their bounding box.
    fn new(points: &[[i32; 3]]) -> Self {
        let (lo, hi) = bounds(points.iter());
        let size = box_size(lo, hi);
        let mut bits = vec![0u64; (size[0] * size[1] * size[2]).div_ceil(64)];
        let mut grid = Occupancy {
            lo,
            size,
            bits: Vec::new(),
        };
        for p in points {
            if let Some(n) = grid.index(p) {
                bits[n / 64] |= 1 << (n % 64);
            }
        }
        grid.bits = bits;
        grid
    }

    /// Linear index of `p`, or `None` outside the box.
    #[inline]
    fn index(&self, p: &[i32; 3]) -> Option<usize> {
        let mut n = 0usize;
        for d in (0..3).rev() {
            let x = (i64::from(p[d]) - i64::from(self.lo[d])) as u64;
            if x >= self.size[d] as u64 {
                return None;
            }
            n = n * self.size[d] + x as usize;
        }
        Some(n)
    }

    #[inline]
    fn contains(&self, p: &[i32; 3]) -> bool {
        self.index(p).is_some_and(|n| self.bit(n))
    }

    #[inline]
    fn bit(&self, n: usize) -> bool {
        self.bits[n / 64] & (1 << (n % 64)) != 0
    }

    /// Whether every point within `reach` of `p` (per axis) is in the box.
    #[inline]
    fn holds_around(&self, p: &[i32; 3], reach: &[i32; 3]) -> bool {
        (0..3).all(|d| {
            let x = i64::from(p[d]) - i64::from(self.lo[d]);
            x >= i64::from(reach[d]) && x + i64::from(reach[d]) < self.size[d] as i64
        })
    }
}

/// Lattice offsets with their squared distances (scipy's formula), sorted
/// by distance, covering the ball of about [`BALL_OFFSETS`] points: every
/// offset left out is farther than every offset listed.
fn ball_offsets(spacing: [f64; 3]) -> Vec<([i32; 3], f64)> {
    let [s0, s1, s2] = spacing;
    let cell = s0 * s1 * s2;
    let radius = (BALL_OFFSETS * cell * 3.0 / (4.0 * std::f64::consts::PI))
        .cbrt()
        .max(s0.max(s1).max(s2));
    let r2 = radius * radius;
    // One step beyond the radius on each axis, so rounding cannot leave out
    // an offset whose computed distance is within it.
    let reach = spacing.map(|s| (radius / s).floor() as i32 + 1);
    let mut out = Vec::new();
    for c in -reach[2]..=reach[2] {
        for b in -reach[1]..=reach[1] {
            for a in -reach[0]..=reach[0] {
                let off = [a, b, c];
                let d2 = dist2(&off, &[0, 0, 0], &spacing);
                if d2 <= r2 {
                    out.push((off, d2));
                }
            }
        }
    }
    out.sort_by(|x, y| x.1.total_cmp(&y.1));
    out
}

/// For every point of `from`, the distance in mm to the nearest point of
/// `to` (infinite when `to` is empty).
pub fn nearest_distances(from: &[[i32; 3]], to: Vec<[i32; 3]>, spacing: [f64; 3]) -> Vec<f64> {
    if to.is_empty() || from.is_empty() {
        return vec![f64::INFINITY; from.len()];
    }
    let grid = Occupancy::new(&to);
    let offsets = ball_offsets(spacing);
    let mut reach = [0i32; 3];
    for (off, _) in &offsets {
        for d in 0..3 {
            reach[d] = reach[d].max(off[d].abs());
        }
    }
    // The same offsets as steps of the bitmap's linear index, for queries
    // whose whole ball lies inside the box (no per-probe bounds checks).
    let [sx, sy, _] = grid.size.map(|n| n as isize);
    let steps: Vec<(isize, f64)> = offsets
        .iter()
        .map(|(o, d2)| {
            let [a, b, c] = o.map(|v| v as isize);
            (a + sx * (b + sy * c), *d2)
        })
        .collect();
    // Each point first probes the ball of offsets around it; what that
    // misses is farther than the ball's radius from every target.
    let probe = |q: &[i32; 3]| -> f64 {
        if grid.holds_around(q, &reach) {
            let base = grid.index(q).unwrap_or_default() as isize;
            for (step, d2) in &steps {
                if grid.bit((base + step) as usize) {
                    return d2.sqrt();
                }
            }
        } else {
            for (off, d2) in &offsets {
                let p = [q[0] + off[0], q[1] + off[1], q[2] + off[2]];
                if grid.contains(&p) {
                    return d2.sqrt();
                }
            }
        }
        f64::NAN // nothing within the ball
    };
    // When a sample says most points will miss (salt noise far from the
    // other surface), probing is wasted work: the distance transform
    // answers every point exactly.
    let sample = from.len().div_ceil(SAMPLE);
    let sampled_misses = from
        .par_iter()
        .step_by(sample)
        .filter(|q| probe(q).is_nan())
        .count();
    let expected_misses = (sampled_misses * sample) as f64;
    if let Some((lo, size)) = edt_box(&to, from)
        && expected_misses * TREE_QUERY_COST > box_points(size)
        && sampled_misses * 2 > from.len().div_ceil(sample)
    {
        return edt::distances_in_box(&to, from, lo, size, spacing);
    }
    let mut out: Vec<f64> = from.par_iter().with_min_len(1024).map(probe).collect();
    let missed: Vec<usize> = (0..out.len()).filter(|&i| out[i].is_nan()).collect();
    if missed.is_empty() {
        return out;
    }
    // A few misses (a stray blob of the other mask): grow a cube around
    // each until it holds the nearest target; what would take too many
    // probes goes to the tree or the distance transform.
    let start_mm = offsets.last().map_or(0.0, |o| o.1.sqrt());
    // No more probes than a k-d tree would cost (building it included).
    let budget = (to.len() as f64 * TREE_BUILD_COST / missed.len() as f64 + TREE_QUERY_COST) as u64;
    for (&i, d) in missed.iter().zip(
        missed
            .par_iter()
            .map(|&i| cube_search(&grid, &from[i], spacing, start_mm, budget))
            .collect::<Vec<_>>(),
    ) {
        out[i] = d;
    }
    let still: Vec<usize> = missed.into_iter().filter(|&i| out[i].is_nan()).collect();
    if still.is_empty() {
        return out;
    }
    let queries: Vec<[i32; 3]> = still.iter().map(|&i| from[i]).collect();
    let far = far_distances(to, &queries, spacing);
    for (i, d) in still.into_iter().zip(far) {
        out[i] = d;
    }
    out
}

/// The exact distance from `q` to the nearest point of `grid`, found by
/// probing every lattice point of a cube around `q` whose half-width (mm)
/// doubles from twice `start_mm` until the nearest point found lies within
/// it: every point outside is then farther (it is more than the half-width
/// away along one axis). NaN when that would take more than `budget`
/// probes.
fn cube_search(
    grid: &Occupancy,
    q: &[i32; 3],
    spacing: [f64; 3],
    start_mm: f64,
    budget: u64,
) -> f64 {
    let mut half = 2.0 * start_mm.max(spacing[0].max(spacing[1]).max(spacing[2]));
    let mut spent = 0u64;
    loop {
        let n = spacing.map(|s| (half / s).floor() as i64);
        let points: u64 = n.iter().map(|&k| 2 * k as u64 + 1).product();
        spent += points;
        if spent > budget {
            return f64::NAN;
        }
        // The cube clipped to the bitmap's box.
        let lo = [0, 1, 2].map(|d| (i64::from(q[d]) - n[d]).max(i64::from(grid.lo[d])));
        let hi = [0, 1, 2]
            .map(|d| (i64::from(q[d]) + n[d]).min(i64::from(grid.lo[d]) + grid.size[d] as i64 - 1));
        let mut best = f64::INFINITY;
        for c in lo[2]..=hi[2] {
            for b in lo[1]..=hi[1] {
                for a in lo[0]..=hi[0] {
                    let p = [a as i32, b as i32, c as i32];
                    if let Some(k) = grid.index(&p)
                        && grid.bit(k)
                    {
                        best = best.min(dist2(&p, q, &spacing));
                    }
                }
            }
        }
        // Points outside are more than `half` away; compare with a margin
        // far above rounding, so only a clear inside counts.
        let inner = half * (1.0 - 1e-9);
        if best <= inner * inner {
            return best.sqrt();
        }
        half *= 2.0;
    }
}

/// Exact distances from points that have no target within the ball: a k-d
/// tree, or a distance transform of the box the answers can lie in,
/// whichever costs less. The box is the queries' bounding box grown by an
/// upper bound of their distances (each query's distance to a sample of the
/// targets), so a few far points in one region cost a small box, not the
/// whole volume, and no target outside it can be nearer.
fn far_distances(to: Vec<[i32; 3]>, queries: &[[i32; 3]], spacing: [f64; 3]) -> Vec<f64> {
    let tree_cost = to.len() as f64 * TREE_BUILD_COST + queries.len() as f64 * TREE_QUERY_COST;
    let full = bounds(to.iter().chain(queries));
    let mut lo = full.0;
    let mut hi = full.1;
    let step = to.len().div_ceil(BOUND_SAMPLE);
    if queries.len() * to.len().div_ceil(step) <= BOUND_WORK {
        let bound2 = queries
            .par_iter()
            .map(|q| {
                to.iter()
                    .step_by(step)
                    .map(|p| dist2(p, q, &spacing))
                    .fold(f64::INFINITY, f64::min)
            })
            .reduce(|| 0.0, f64::max);
        let bound = bound2.sqrt();
        let (qlo, qhi) = bounds(queries.iter());
        for d in 0..3 {
            // One lattice step more than the bound, against rounding.
            let margin = (bound / spacing[d]).ceil().min(f64::from(i32::MAX / 4)) as i32 + 1;
            lo[d] = lo[d].max(qlo[d].saturating_sub(margin));
            hi[d] = hi[d].min(qhi[d].saturating_add(margin));
        }
    }
    let size = [0, 1, 2].map(|d| (i64::from(hi[d]) - i64::from(lo[d]) + 1) as usize);
    if size.iter().all(|&n| n <= edt::MAX_EXTENT) && box_points(size) < tree_cost {
        let inside = |p: &[i32; 3]| (0..3).all(|d| p[d] >= lo[d] && p[d] <= hi[d]);
        let near: Vec<[i32; 3]> = to.into_iter().filter(|p| inside(p)).collect();
        return edt::distances_in_box(&near, queries, lo, size, spacing);
    }
    let tree = KdTree::new(to, spacing);
    queries
        .par_iter()
        .with_min_len(256)
        .map(|q| tree.nearest_distance(q))
        .collect()
}

/// Voxels per axis of the box from `lo` to `hi` (inclusive).
fn box_size(lo: [i32; 3], hi: [i32; 3]) -> [usize; 3] {
    [0, 1, 2].map(|d| (i64::from(hi[d]) - i64::from(lo[d]) + 1) as usize)
}

/// The per-axis minimum and maximum of some points.
fn bounds<'a>(points: impl Iterator<Item = &'a [i32; 3]>) -> ([i32; 3], [i32; 3]) {
    let mut lo = [i32::MAX; 3];
    let mut hi = [i32::MIN; 3];
    for p in points {
        for d in 0..3 {
            lo[d] = lo[d].min(p[d]);
            hi[d] = hi[d].max(p[d]);
        }
    }
    (lo, hi)
}

/// Targets sampled to bound the far queries' distances.
const BOUND_SAMPLE: usize = 4096;
/// Distance evaluations allowed for that bound.
const BOUND_WORK: usize = 1 << 26;
/// Building the k-d tree costs about this many lattice points of the
/// distance transform per target point.
const TREE_BUILD_COST: f64 = 4.0;

/// A k-d tree query costs about as much as this many lattice points of the
/// distance transform (measured: ~20 us a query among 600k targets against
/// ~30 ns a point for the three passes).
const TREE_QUERY_COST: f64 = 500.0;

/// Points probed to estimate how many will miss the ball.
const SAMPLE: usize = 4096;

fn box_points(size: [usize; 3]) -> f64 {
    size.iter().map(|&n| n as f64).product()
}

/// The bounding box of targets and queries, `None` when it is too large
/// along an axis for the distance transform's 16-bit offsets.
fn edt_box(to: &[[i32; 3]], queries: &[[i32; 3]]) -> Option<([i32; 3], [usize; 3])> {
    let (lo, hi) = bounds(to.iter().chain(queries));
    let size = box_size(lo, hi);
    size.iter()
        .all(|&n| n <= edt::MAX_EXTENT)
        .then_some((lo, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn brute(from: &[[i32; 3]], to: &[[i32; 3]], s: [f64; 3]) -> Vec<f64> {
        from.iter()
            .map(|q| {
                to.iter()
                    .map(|p| dist2(p, q, &s))
                    .fold(f64::INFINITY, f64::min)
                    .sqrt()
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_on_random_clouds() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for round in 0..40 {
            let s = [
                rng.random_range(0.3..3.0),
                rng.random_range(0.3..3.0),
                rng.random_range(0.3..3.0),
            ];
            // Small extents force many ties and repeated coordinates.
            let ext = if round % 2 == 0 { 6 } else { 60 };
            let mut cloud = |n: usize| -> Vec<[i32; 3]> {
                (0..n)
                    .map(|_| [0; 3].map(|_| rng.random_range(-ext..ext)))
                    .collect()
            };
            let to = cloud(1 + round * 37);
            let from = cloud(300);
            let got = nearest_distances(&from, to.clone(), s);
            let want = brute(&from, &to, s);
            assert_eq!(got, want, "round {round}, spacing {s:?}");
        }
    }

    #[test]
    fn kd_tree_alone_matches_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let s = [0.7, 0.7, 1.25];
        let to: Vec<[i32; 3]> = (0..2000)
            .map(|_| [0; 3].map(|_| rng.random_range(-40..40)))
            .collect();
        let from: Vec<[i32; 3]> = (0..500)
            .map(|_| [0; 3].map(|_| rng.random_range(-90..90)))
            .collect();
        let tree = KdTree::new(to.clone(), s);
        let got: Vec<f64> = from.iter().map(|q| tree.nearest_distance(q)).collect();
        assert_eq!(got, brute(&from, &to, s));
    }

    /// The bitmap search is exact only if the ball is complete: every
    /// offset left out is farther than every offset listed.
    #[test]
    fn ball_offsets_are_complete_and_sorted() {
        for s in [[0.7, 0.7, 1.25], [1.0, 1.0, 1.0], [0.3, 2.0, 5.0]] {
            let ball = ball_offsets(s);
            assert!(ball.len() >= 7 && ball[0] == ([0, 0, 0], 0.0));
            assert!(ball.windows(2).all(|w| w[0].1 <= w[1].1));
            let max = ball.last().unwrap().1;
            let reach = 3 + ball
                .iter()
                .flat_map(|(o, _)| o.map(i32::abs))
                .max()
                .unwrap();
            let listed: std::collections::HashSet<[i32; 3]> = ball.iter().map(|b| b.0).collect();
            for c in -reach..=reach {
                for b in -reach..=reach {
                    for a in -reach..=reach {
                        if !listed.contains(&[a, b, c]) {
                            assert!(dist2(&[a, b, c], &[0, 0, 0], &s) > max, "{a} {b} {c}");
                        }
                    }
                }
            }
        }
    }

    /// Most points far from a few targets: the distance-transform path.
    #[test]
    fn many_far_points_match_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for s in [[1.0, 1.0, 1.0], [5.0, 0.6, 0.8], [0.7, 0.7, 1.25]] {
            let to: Vec<[i32; 3]> = (0..3)
                .map(|_| [0; 3].map(|_| rng.random_range(0..30)))
                .collect();
            let from: Vec<[i32; 3]> = (0..3000)
                .map(|_| [0; 3].map(|_| rng.random_range(-5..35)))
                .collect();
            let queries: Vec<[i32; 3]> = from.clone();
            let (_, size) = edt_box(&to, &queries).unwrap();
            assert!(3000.0 * TREE_QUERY_COST > box_points(size));
            assert_eq!(
                nearest_distances(&from, to.clone(), s),
                brute(&from, &to, s),
                "{s:?}"
            );
        }
    }

    #[test]
    fn cube_search_is_exact_or_gives_up() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let s = [0.7, 0.7, 1.25];
        let to: Vec<[i32; 3]> = (0..40)
            .map(|_| [0; 3].map(|_| rng.random_range(0..50)))
            .collect();
        let grid = Occupancy::new(&to);
        for _ in 0..200 {
            let q = [0; 3].map(|_| rng.random_range(-20..70));
            let want = brute(&[q], &to, s)[0];
            assert_eq!(cube_search(&grid, &q, s, 1.0, u64::MAX), want, "{q:?}");
            let capped = cube_search(&grid, &q, s, 1.0, 100);
            assert!(capped.is_nan() || capped == want);
        }
    }

    /// A few far points beside a large target set: the distance transform
    /// of a small box around them, bounded by a sample of the targets.
    #[test]
    fn far_points_in_a_small_box_match_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let s = [0.7, 0.7, 1.25];
        let mut to = Vec::new();
        for z in 0..40 {
            for y in 0..60 {
                for x in 0..60 {
                    if rng.random_range(0..4) == 0 {
                        to.push([x, y, z]);
                    }
                }
            }
        }
        let queries: Vec<[i32; 3]> = (0..50)
            .map(|_| {
                [
                    rng.random_range(70..80),
                    rng.random_range(20..30),
                    rng.random_range(10..20),
                ]
            })
            .collect();
        let got = far_distances(to.clone(), &queries, s);
        assert_eq!(got, brute(&queries, &to, s));
    }

    #[test]
    fn empty_target_gives_infinity() {
        let got = nearest_distances(&[[0, 0, 0], [3, 1, 2]], Vec::new(), [1.0; 3]);
        assert!(got.iter().all(|d| d.is_infinite()));
    }

    #[test]
    fn distance_is_scipys_formula() {
        let s = [1.25, 0.7, 0.7];
        let got = nearest_distances(&[[0, 0, 0]], vec![[2, -3, 1]], s);
        let want = ((2.0f64 * 1.25).powi(2) + (-3.0f64 * 0.7).powi(2) + (0.7f64).powi(2)).sqrt();
        assert_eq!(got[0], want);
    }
}
