//! Exact anisotropic Euclidean distance transform over a box of the corner
//! lattice, for the surface points that have no target nearby.
//!
//! Noisy masks (the salt of a thresholded probability map) have millions of
//! surface points far from the other surface, and a k-d tree query each is
//! then slower than the reference's full distance map. This transform costs
//! a fixed amount per lattice point of the box (three separable passes,
//! Felzenszwalb & Huttenlocher 2012), whatever the number of queries.
//!
//! Exactness: the value minimised is scipy's formula for the chosen target,
//! `((a s0)^2 + (b s1)^2) + (c s2)^2` in f64 with integer offsets `a, b, c`,
//! and the separable passes give its exact minimum because each rounded sum
//! is monotone in the partial sum it extends (the minimum of
//! `fl(G + x)` over targets is `fl(min G + x)`). Each 1-D pass takes the
//! lower envelope of parabolas (real arithmetic, so its breakpoints may be
//! off by rounding, far less than a lattice step) and then, at every point
//! within a step of a breakpoint, compares the envelope's parabola with its
//! two neighbours in the rounded arithmetic, which settles near-ties between
//! neighbouring parabolas. What is stored per lattice
//! point is the offset to the chosen target (two i16), not a distance, so
//! the memory is 4 bytes per point of the box and every value is recomputed
//! from integers exactly as scipy computes it.

use rayon::prelude::*;

/// No target in this row (pass 1) or column (pass 2).
const NONE: i16 = i16::MIN;

/// The box is limited so that offsets fit in i16.
pub const MAX_EXTENT: usize = i16::MAX as usize;

#[inline]
fn sq(d: i64, s: f64) -> f64 {
    let a = d as f64 * s;
    a * a
}

/// The lower envelope of `f(p) + s^2 (q - p)^2` over the finite entries of
/// `f`, evaluated at every `q`: writes the minimising `p` (or `u32::MAX`
/// when every entry is infinite) into `arg[q]`. `finite` lists the finite
/// entries in increasing order. `v` and `z` are scratch buffers.
fn envelope(
    f: &[f64],
    finite: impl Iterator<Item = usize>,
    s: f64,
    arg: &mut [u32],
    v: &mut Vec<usize>,
    z: &mut Vec<f64>,
) {
    let n = f.len();
    let s2 = s * s;
    v.clear();
    z.clear();
    for p in finite {
        let fp = f[p];
        let pf = p as f64;
        let own = fp + s2 * pf * pf;
        loop {
            match v.last() {
                None => {
                    v.push(p);
                    z.push(f64::NEG_INFINITY);
                    break;
                }
                Some(&r) => {
                    // Where the parabola of p starts to undercut that of r.
                    let rf = r as f64;
                    let x = (own - (f[r] + s2 * rf * rf)) / (2.0 * s2 * (pf - rf));
                    if x <= *z.last().unwrap() {
                        v.pop();
                        z.pop();
                    } else {
                        v.push(p);
                        z.push(x);
                        break;
                    }
                }
            }
        }
    }
    if v.is_empty() {
        arg.iter_mut().for_each(|a| *a = u32::MAX);
        return;
    }
    // The value scipy computes for target p seen from q.
    let h = |q: usize, p: usize| f[p] + sq(q as i64 - p as i64, s);
    let mut k = 0;
    for q in 0..n {
        while k + 1 < v.len() && z[k + 1] < q as f64 {
            k += 1;
        }
        let mut best = v[k];
        // A neighbour can tie only next to its breakpoint with this
        // parabola: the breakpoints are off by rounding (far below a
        // lattice step), never by a whole step.
        let qf = q as f64;
        let near_prev = k > 0 && qf - z[k] < 1.0;
        let near_next = k + 1 < v.len() && z[k + 1] - qf < 1.0;
        if !near_prev && !near_next {
            arg[q] = best as u32;
            continue;
        }
        let mut best_h = h(q, best);
        for c in [k.wrapping_sub(1), k + 1] {
            if let Some(&p) = v.get(c) {
                let hp = h(q, p);
                if hp < best_h {
                    best = p;
                    best_h = hp;
                }
            }
        }
        arg[q] = best as u32;
    }
}

/// For every query point (lattice coordinates), the distance in mm to the
/// nearest target point, both given inside the box `lo .. lo + size`;
/// targets must be non-empty and `size` at most [`MAX_EXTENT`] on each axis.
pub fn distances_in_box(
    targets: &[[i32; 3]],
    queries: &[[i32; 3]],
    lo: [i32; 3],
    size: [usize; 3],
    spacing: [f64; 3],
) -> Vec<f64> {
    let [nx, ny, nz] = size;
    let plane = nx * ny;
    let local = |p: &[i32; 3]| [0, 1, 2].map(|d| (p[d] - lo[d]) as usize);
    // Pass 1, along x: offset to the nearest target in the row.
    let mut dx = vec![NONE; plane * nz];
    for t in targets {
        let [x, y, z] = local(t);
        dx[x + nx * (y + ny * z)] = 0;
    }
    dx.par_chunks_mut(nx).for_each(|row| {
        // Forward: distance to the last target at or before x.
        let mut last: Option<usize> = None;
        for x in 0..nx {
            if row[x] == 0 {
                last = Some(x);
            } else if let Some(l) = last {
                row[x] = (l as i64 - x as i64) as i16;
            }
        }
        // Backward: a target after x that is nearer wins (ties: either
        // gives the same value).
        let mut next: Option<usize> = None;
        for x in (0..nx).rev() {
            if row[x] == 0 {
                next = Some(x);
            } else if let Some(n) = next {
                let ahead = (n - x) as i16;
                if row[x] == NONE || ahead < -row[x] {
                    row[x] = ahead;
                }
            }
        }
    });
    // Pass 2, along y within each z slice: (dx, dy) to the nearest target
    // in the slice.
    let mut dy = vec![NONE; plane * nz];
    dx.par_chunks_mut(plane)
        .zip(dy.par_chunks_mut(plane))
        .for_each(|(sx, sy)| {
            // After pass 1 a row is either all NONE (no target) or has an
            // offset everywhere; the same rows hold the parabolas of every
            // column of the slice, often a small fraction of them.
            let rows: Vec<usize> = (0..ny).filter(|&y| sx[nx * y] != NONE).collect();
            if rows.is_empty() {
                return;
            }
            let (mut f, mut arg) = (vec![f64::INFINITY; ny], vec![0u32; ny]);
            let (mut v, mut z) = (Vec::new(), Vec::new());
            let mut col_dx = vec![NONE; ny];
            for x in 0..nx {
                for &y in &rows {
                    let d = sx[x + nx * y];
                    col_dx[y] = d;
                    f[y] = sq(i64::from(d), spacing[0]);
                }
                envelope(
                    &f,
                    rows.iter().copied(),
                    spacing[1],
                    &mut arg,
                    &mut v,
                    &mut z,
                );
                for y in 0..ny {
                    let p = arg[y] as usize;
                    sx[x + nx * y] = col_dx[p];
                    sy[x + nx * y] = (p as i64 - y as i64) as i16;
                }
            }
        });
    // Pass 3, along z, only in the columns and at the points asked for.
    // The queries are bucketed by y (a counting sort, linear): one task per
    // y plane.
    let mut first = vec![0usize; ny + 1];
    for q in queries {
        first[local(q)[1] + 1] += 1;
    }
    for y in 0..ny {
        first[y + 1] += first[y];
    }
    let mut fill = first.clone();
    let mut order = vec![0u32; queries.len()];
    for (i, q) in queries.iter().enumerate() {
        let y = local(q)[1];
        order[fill[y]] = i as u32;
        fill[y] += 1;
    }
    // Distances in `order`'s order, one disjoint chunk per y plane.
    let mut sorted = vec![f64::INFINITY; queries.len()];
    let mut chunks = Vec::with_capacity(ny);
    let mut rest = sorted.as_mut_slice();
    for y in 0..ny {
        let (chunk, tail) = rest.split_at_mut(first[y + 1] - first[y]);
        chunks.push((y, chunk));
        rest = tail;
    }
    chunks
        .into_par_iter()
        .filter(|(_, chunk)| !chunk.is_empty())
        .for_each_init(
            // Buffers reused by each worker thread across y planes.
            || {
                (
                    vec![false; nx],
                    vec![f64::INFINITY; nx * nz],
                    vec![u32::MAX; nx * nz],
                    Vec::new(),
                    Vec::new(),
                )
            },
            |(has, g, arg, v, zb), (y, out)| {
                let group = &order[first[y]..first[y + 1]];
                has.fill(false);
                for &qi in group {
                    has[local(&queries[qi as usize])[0]] = true;
                }
                // The (x, z) plane at this y, transposed so that each column
                // along z is contiguous: rows are read whole, not one cache
                // line per voxel.
                for x in (0..nx).filter(|&x| has[x]) {
                    g[x * nz..(x + 1) * nz].fill(f64::INFINITY);
                }
                for z in 0..nz {
                    let row = nx * y + plane * z;
                    for x in (0..nx).filter(|&x| has[x]) {
                        let n = row + x;
                        if dy[n] != NONE {
                            g[x * nz + z] =
                                sq(i64::from(dx[n]), spacing[0]) + sq(i64::from(dy[n]), spacing[1]);
                        }
                    }
                }
                for x in (0..nx).filter(|&x| has[x]) {
                    let f = &g[x * nz..(x + 1) * nz];
                    let finite = (0..nz).filter(|&z| f[z].is_finite());
                    envelope(f, finite, spacing[2], &mut arg[x * nz..(x + 1) * nz], v, zb);
                }
                for (&qi, o) in group.iter().zip(out.iter_mut()) {
                    let [x, _, z] = local(&queries[qi as usize]);
                    let p = arg[x * nz + z];
                    if p != u32::MAX {
                        *o = (g[x * nz + p as usize] + sq(i64::from(p) - z as i64, spacing[2]))
                            .sqrt();
                    }
                }
            },
        );
    let mut dist = vec![f64::INFINITY; queries.len()];
    for (&qi, d) in order.iter().zip(sorted) {
        dist[qi as usize] = d;
    }
    dist
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
                    .map(|p| {
                        let a = f64::from(p[0] - q[0]) * s[0];
                        let b = f64::from(p[1] - q[1]) * s[1];
                        let c = f64::from(p[2] - q[2]) * s[2];
                        a * a + b * b + c * c
                    })
                    .fold(f64::INFINITY, f64::min)
                    .sqrt()
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for round in 0..60 {
            let s = if round % 3 == 0 {
                // Spacings with exact ties between different offsets.
                [5.0, 0.6, 0.8]
            } else {
                [0; 3].map(|_| rng.random_range(0.3..3.0))
            };
            let size = [0; 3].map(|_| rng.random_range(1..14usize));
            let lo = [-3, 5, 0];
            let mut pick = |n: usize| -> Vec<[i32; 3]> {
                (0..n)
                    .map(|_| [0, 1, 2].map(|d| lo[d] + rng.random_range(0..size[d] as i32)))
                    .collect()
            };
            let to = pick(1 + round % 17);
            let from = pick(200);
            let got = distances_in_box(&to, &from, lo, size, s);
            assert_eq!(got, brute(&from, &to, s), "round {round}, {s:?}, {size:?}");
        }
    }

    #[test]
    fn one_target_in_a_long_box() {
        let s = [0.7, 0.7, 1.25];
        let to = [[0, 0, 0]];
        let from: Vec<[i32; 3]> = (0..40).map(|i| [i, 39 - i, i / 2]).collect();
        let got = distances_in_box(&to, &from, [0, 0, 0], [40, 40, 20], s);
        assert_eq!(got, brute(&from, &to, s));
    }
}
