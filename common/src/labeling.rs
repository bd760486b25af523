//! Connected components of binary masks (6-, 18- and 26-connectivity).
//!
//! [`label`] is a two-pass union-find over *runs*: the first pass walks the
//! rows (`i` fastest) in raster order, cuts each row into runs of foreground
//! voxels and joins every run with the overlapping runs of the already
//! visited neighbour rows; the second pass replaces provisional labels with
//! final ones. Working on runs rather than voxels keeps the union-find small
//! and the inner loops branch-light, which matters on 300x512x512 volumes.
//! Union always makes the smaller provisional label the root, so a
//! component's root is the run holding its first voxel in raster order, and
//! final labels come out numbered in raster order of first voxels.
//!
//! [`fill_holes`] and [`fill_holes_2d`] use a scanline flood fill from the
//! border instead of labelling the background: they need one byte per voxel
//! and no label buffer.

use std::collections::BTreeSet;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::volume::checked_len;

/// A voxel type that can serve as a binary mask: `true` or non-zero is
/// foreground.
pub trait MaskVoxel: Copy + Send + Sync {
    /// True for a foreground voxel.
    fn is_set(self) -> bool;
}

impl MaskVoxel for bool {
    #[inline]
    fn is_set(self) -> bool {
        self
    }
}

impl MaskVoxel for u8 {
    #[inline]
    fn is_set(self) -> bool {
        self != 0
    }
}

/// Which voxels count as neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectivity {
    /// Voxels sharing a face.
    Six,
    /// Voxels sharing a face or an edge.
    Eighteen,
    /// Voxels sharing a face, an edge or a corner.
    TwentySix,
}

impl Connectivity {
    /// For a neighbour row at offset `(dj, dk)` (not the voxel's own row),
    /// how far along `i` a neighbour may sit (0 or 1), or `None` when no
    /// voxel of that row is a neighbour.
    fn reach(self, dj: isize, dk: isize) -> Option<usize> {
        let m = dj.abs() + dk.abs();
        match (self, m) {
            (Connectivity::Six, 1) => Some(0),
            (Connectivity::Eighteen, 1) => Some(1),
            (Connectivity::Eighteen, 2) => Some(0),
            (Connectivity::TwentySix, 1 | 2) => Some(1),
            _ => None,
        }
    }
}

/// The connected components of a mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    /// One label per voxel (`i` fastest): 0 for background, `1..=count` for
    /// the components, numbered in raster order of their first voxel.
    pub labels: Vec<u32>,
    /// Number of components.
    pub count: usize,
    /// Voxels per label, indexed by label: `sizes[0]` counts the background,
    /// `sizes[l]` component `l`; length `count + 1`.
    pub sizes: Vec<u64>,
    /// Voxel counts along i, j, k.
    pub dims: [usize; 3],
}

impl Labels {
    /// A mask that is true on the voxels of the given labels.
    pub fn mask_of(&self, keep: &[u32]) -> Vec<bool> {
        let mut wanted = vec![false; self.count + 1];
        for &l in keep {
            if let Some(w) = wanted.get_mut(l as usize) {
                *w = l != 0;
            }
        }
        self.labels
            .par_iter()
            .map(|&l| wanted[l as usize])
            .collect()
    }

    /// Keeps the components `l` with `keep[l]` (`keep[0]` is ignored) and
    /// numbers them `1..` in their old order, so they stay in raster order
    /// of their first voxel; removed components become background.
    pub fn retain(mut self, keep: &[bool]) -> Result<Labels> {
        if keep.len() != self.count + 1 {
            return Err(Error::InvalidArgument(format!(
                "{} keep flags given for {} components",
                keep.len().saturating_sub(1),
                self.count
            )));
        }
        let mut new_of = vec![0u32; self.count + 1];
        let mut sizes = vec![self.sizes[0]];
        for l in 1..=self.count {
            if keep[l] {
                new_of[l] = sizes.len() as u32;
                sizes.push(self.sizes[l]);
            } else {
                sizes[0] += self.sizes[l];
            }
        }
        if sizes.len() == self.count + 1 {
            return Ok(self);
        }
        self.labels
            .par_chunks_mut(1 << 16)
            .for_each(|c| c.iter_mut().for_each(|l| *l = new_of[*l as usize]));
        self.count = sizes.len() - 1;
        self.sizes = sizes;
        Ok(self)
    }
}

/// One run of foreground voxels `[start, end)` of a row, with its label.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) start: u32,
    pub(crate) end: u32,
    label: u32,
}

impl Run {
    fn new(start: usize, end: usize) -> Self {
        Run {
            start: start as u32,
            end: end as u32,
            label: 0,
        }
    }
}

/// Appends the runs of voxels of `row` for which `set` holds.
#[inline]
pub(crate) fn push_runs<T: Copy>(row: &[T], set: impl Fn(T) -> bool, out: &mut Vec<Run>) {
    let mut i = 0;
    let n = row.len();
    while i < n {
        if set(row[i]) {
            let s = i;
            while i < n && set(row[i]) {
                i += 1;
            }
            out.push(Run::new(s, i));
        } else {
            i += 1;
        }
    }
}

/// Labels the connected components of a mask of `dims` voxels.
///
/// Fails when `mask.len()` does not match `dims`.
pub fn label<T: MaskVoxel>(mask: &[T], dims: [usize; 3], conn: Connectivity) -> Result<Labels> {
    check_len(mask.len(), dims)?;
    let [ni, nj, _] = dims;
    label_rows(dims, conn, |j, k, out| {
        let start = ni * (j + nj * k);
        push_runs(&mask[start..start + ni], MaskVoxel::is_set, out);
    })
}

fn check_len(len: usize, dims: [usize; 3]) -> Result<usize> {
    let n = checked_len(dims)?;
    if len != n {
        return Err(Error::InvalidArgument(format!(
            "mask of {len} voxels given for a {}x{}x{} volume",
            dims[0], dims[1], dims[2]
        )));
    }
    Ok(n)
}

/// Union-find root with path halving. `parent[x] <= x` always holds.
#[inline]
fn find(parent: &mut [u32], mut x: u32) -> u32 {
    while parent[x as usize] != x {
        let up = parent[parent[x as usize] as usize];
        parent[x as usize] = up;
        x = up;
    }
    x
}

/// Joins two sets, keeping the smaller root (the earlier run) as root.
#[inline]
fn union(parent: &mut [u32], a: u32, b: u32) -> u32 {
    let ra = find(parent, a);
    let rb = find(parent, b);
    let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
    parent[hi as usize] = lo;
    lo
}

/// The labelling engine: `row_runs(j, k, out)` appends the runs of row
/// `(j, k)` (in increasing `i`, with `end <= ni`).
pub(crate) fn label_rows<F>(dims: [usize; 3], conn: Connectivity, mut row_runs: F) -> Result<Labels>
where
    F: FnMut(usize, usize, &mut Vec<Run>),
{
    let n = checked_len(dims)?;
    let [ni, nj, nk] = dims;
    if ni >= u32::MAX as usize {
        return Err(Error::InvalidArgument(format!(
            "rows of {ni} voxels are too long to label"
        )));
    }
    let mut labels = vec![0u32; n];
    // Provisional labels; index 0 stands for the background.
    let mut parent: Vec<u32> = vec![0];
    let mut sizes: Vec<u64> = vec![0];

    // Runs of the current and the previous slice, with row offsets.
    let mut cur: Vec<Run> = Vec::new();
    let mut prev: Vec<Run> = Vec::new();
    let mut cur_rows = vec![0usize; nj + 1];
    let mut prev_rows = vec![0usize; nj + 1];

    // Backward neighbour rows: (dj, dk, reach along i).
    let neighbours: Vec<(isize, isize, usize)> = [(-1, 0), (-1, -1), (0, -1), (1, -1)]
        .into_iter()
        .filter_map(|(dj, dk)| conn.reach(dj, dk).map(|x| (dj, dk, x)))
        .collect();

    for k in 0..nk {
        cur.clear();
        for j in 0..nj {
            let begin = cur.len();
            cur_rows[j] = begin;
            row_runs(j, k, &mut cur);
            let end = cur.len();
            cur_rows[j + 1] = end;
            if begin == end {
                continue;
            }
            // Per neighbour row: (runs, position, end, reach).
            let mut nb: [(usize, usize, usize, bool); 4] = [(0, 0, 0, false); 4];
            for (slot, &(dj, dk, x)) in neighbours.iter().enumerate() {
                let jj = j as isize + dj;
                if jj < 0 || jj >= nj as isize || (dk < 0 && k == 0) {
                    continue;
                }
                let jj = jj as usize;
                let (lo, hi, in_prev) = if dk == 0 {
                    (cur_rows[jj], cur_rows[jj + 1], false)
                } else {
                    (prev_rows[jj], prev_rows[jj + 1], true)
                };
                nb[slot] = (lo, hi, x, in_prev);
            }
            let row_off = ni * (j + nj * k);
            for r in begin..end {
                let (s, e) = (cur[r].start as usize, cur[r].end as usize);
                let mut lab = 0u32;
                for slot in nb.iter_mut().take(neighbours.len()) {
                    let (mut p, hi, x, in_prev) = *slot;
                    let runs: &[Run] = if in_prev { &prev } else { &cur };
                    // Skip runs that end before this one can touch them;
                    // they cannot touch later runs of this row either.
                    while p < hi && (runs[p].end as usize) + x <= s {
                        p += 1;
                    }
                    slot.0 = p;
                    let mut q = p;
                    while q < hi && (runs[q].start as usize) < e + x {
                        let other = runs[q].label;
                        lab = if lab == 0 {
                            other
                        } else {
                            union(&mut parent, lab, other)
                        };
                        q += 1;
                    }
                }
                if lab == 0 {
                    let id = parent.len();
                    if id >= u32::MAX as usize {
                        return Err(Error::InvalidArgument(
                            "mask has too many separate runs to label".into(),
                        ));
                    }
                    lab = id as u32;
                    parent.push(lab);
                    sizes.push(0);
                }
                cur[r].label = lab;
                sizes[lab as usize] += (e - s) as u64;
                labels[row_off + s..row_off + e].fill(lab);
            }
        }
        std::mem::swap(&mut cur, &mut prev);
        std::mem::swap(&mut cur_rows, &mut prev_rows);
    }

    // Resolve: roots get consecutive labels in order of creation, which is
    // raster order of each component's first voxel.
    let mut final_of = vec![0u32; parent.len()];
    let mut count = 0u32;
    let mut final_sizes = vec![0u64];
    for p in 1..parent.len() as u32 {
        let r = find(&mut parent, p);
        if r == p {
            count += 1;
            final_of[p as usize] = count;
            final_sizes.push(0);
        } else {
            final_of[p as usize] = final_of[r as usize];
        }
        final_sizes[final_of[p as usize] as usize] += sizes[p as usize];
    }
    let fg: u64 = final_sizes.iter().sum();
    final_sizes[0] = n as u64 - fg;
    labels
        .par_chunks_mut(1 << 16)
        .for_each(|c| c.iter_mut().for_each(|l| *l = final_of[*l as usize]));
    Ok(Labels {
        labels,
        count: count as usize,
        sizes: final_sizes,
        dims,
    })
}

/// The `n` largest components, largest first (ties: lower label first).
pub fn largest_components(labels: &Labels, n: usize) -> Vec<u32> {
    let mut ids: Vec<u32> = (1..=labels.count as u32).collect();
    ids.sort_by_key(|&l| (std::cmp::Reverse(labels.sizes[l as usize]), l));
    ids.truncate(n);
    ids
}

/// The labels that have at least one voxel on a face of the volume.
pub fn touching_border(labels: &Labels) -> BTreeSet<u32> {
    let [ni, nj, nk] = labels.dims;
    let l = &labels.labels;
    let mut out = BTreeSet::new();
    let idx = |i: usize, j: usize, k: usize| i + ni * (j + nj * k);
    for k in 0..nk {
        for j in 0..nj {
            let whole_row = k == 0 || k == nk - 1 || j == 0 || j == nj - 1;
            if whole_row {
                out.extend(l[idx(0, j, k)..idx(0, j, k) + ni].iter().copied());
            } else {
                out.insert(l[idx(0, j, k)]);
                out.insert(l[idx(ni - 1, j, k)]);
            }
        }
    }
    out.remove(&0);
    out
}

/// Scanline flood fill: every voxel equal to `from` that is 6-connected
/// (4-connected when `dims[2] == 1`) to a seed through voxels equal to
/// `from` becomes `to`. Seeds not equal to `from` are ignored.
pub(crate) fn flood<T: Copy + PartialEq>(
    buf: &mut [T],
    dims: [usize; 3],
    seeds: impl IntoIterator<Item = [usize; 3]>,
    from: T,
    to: T,
) {
    if from == to {
        return;
    }
    let [ni, nj, nk] = dims;
    let mut stack: Vec<[usize; 3]> = Vec::new();
    for seed in seeds {
        stack.push(seed);
        while let Some([i, j, k]) = stack.pop() {
            let row = ni * (j + nj * k);
            if buf[row + i] != from {
                continue;
            }
            let mut l = i;
            while l > 0 && buf[row + l - 1] == from {
                l -= 1;
            }
            let mut r = i;
            while r + 1 < ni && buf[row + r + 1] == from {
                r += 1;
            }
            buf[row + l..=row + r].fill(to);
            let visit = |jj: usize, kk: usize, stack: &mut Vec<[usize; 3]>| {
                let nrow = ni * (jj + nj * kk);
                let mut x = l;
                while x <= r {
                    if buf[nrow + x] == from {
                        stack.push([x, jj, kk]);
                        while x <= r && buf[nrow + x] == from {
                            x += 1;
                        }
                    } else {
                        x += 1;
                    }
                }
            };
            if j > 0 {
                visit(j - 1, k, &mut stack);
            }
            if j + 1 < nj {
                visit(j + 1, k, &mut stack);
            }
            if k > 0 {
                visit(j, k - 1, &mut stack);
            }
            if k + 1 < nk {
                visit(j, k + 1, &mut stack);
            }
        }
    }
}

/// Seeds on the faces of a volume: all six faces, or only the four faces
/// that bound each `k` slice when `sides_only`.
pub(crate) fn border_seeds(dims: [usize; 3], sides_only: bool) -> impl Iterator<Item = [usize; 3]> {
    let [ni, nj, nk] = dims;
    (0..nk).flat_map(move |k| {
        (0..nj).flat_map(move |j| {
            let whole = j == 0 || j == nj - 1 || (!sides_only && (k == 0 || k == nk - 1));
            let step = if whole { 1 } else { (ni - 1).max(1) };
            (0..ni).step_by(step).map(move |i| [i, j, k])
        })
    })
}

/// Fills the holes of a mask in 3D: background regions (6-connected) that do
/// not touch a face of the volume become foreground.
pub fn fill_holes<T: MaskVoxel>(mask: &[T], dims: [usize; 3]) -> Result<Vec<bool>> {
    check_len(mask.len(), dims)?;
    // `true` marks background not yet known to be outside.
    let mut out: Vec<bool> = mask.par_iter().map(|v| !v.is_set()).collect();
    flood(&mut out, dims, border_seeds(dims, false), true, false);
    // What is left `true` is a hole.
    out.par_iter_mut()
        .zip(mask.par_iter())
        .for_each(|(o, m)| *o = *o || m.is_set());
    Ok(out)
}

/// Fills the holes of every axial (`k`) slice in 2D: background regions
/// (4-connected) that do not touch the slice's edge become foreground.
pub fn fill_holes_2d<T: MaskVoxel>(mask: &[T], dims: [usize; 3]) -> Result<Vec<bool>> {
    check_len(mask.len(), dims)?;
    let plane = dims[0] * dims[1];
    let mut out: Vec<bool> = mask.par_iter().map(|v| !v.is_set()).collect();
    out.par_chunks_mut(plane)
        .zip(mask.par_chunks(plane))
        .for_each(|(o, m)| {
            let d = [dims[0], dims[1], 1];
            flood(o, d, border_seeds(d, true), true, false);
            o.iter_mut().zip(m).for_each(|(o, m)| *o = *o || m.is_set());
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::VecDeque;

    fn idx(d: [usize; 3], i: usize, j: usize, k: usize) -> usize {
        i + d[0] * (j + d[1] * k)
    }

    fn cube(mask: &mut [bool], d: [usize; 3], lo: [usize; 3], hi: [usize; 3]) {
        for k in lo[2]..hi[2] {
            for j in lo[1]..hi[1] {
                for i in lo[0]..hi[0] {
                    mask[idx(d, i, j, k)] = true;
                }
            }
        }
    }

    const ALL: [Connectivity; 3] = [
        Connectivity::Six,
        Connectivity::Eighteen,
        Connectivity::TwentySix,
    ];

    #[test]
    fn cubes_touching_at_an_edge() {
        let d = [8, 8, 6];
        let mut m = vec![false; 8 * 8 * 6];
        cube(&mut m, d, [1, 1, 1], [4, 4, 5]);
        // Shares only the edge along k at (i, j) = (3|4, 3|4).
        cube(&mut m, d, [4, 4, 1], [7, 7, 5]);
        let counts: Vec<usize> = ALL
            .iter()
            .map(|&c| label(&m, d, c).unwrap().count)
            .collect();
        assert_eq!(counts, vec![2, 1, 1]);
    }

    #[test]
    fn cubes_touching_at_a_corner() {
        let d = [7, 7, 7];
        let mut m = vec![0u8; 7 * 7 * 7];
        let mut b = vec![false; m.len()];
        cube(&mut b, d, [0, 0, 0], [3, 3, 3]);
        cube(&mut b, d, [3, 3, 3], [6, 6, 6]);
        for (x, &y) in m.iter_mut().zip(&b) {
            *x = y as u8 * 7;
        }
        let counts: Vec<usize> = ALL
            .iter()
            .map(|&c| label(&m, d, c).unwrap().count)
            .collect();
        assert_eq!(counts, vec![2, 2, 1]);
        // Corner contact along the other diagonal (i decreasing) as well.
        let mut b = vec![false; m.len()];
        cube(&mut b, d, [3, 0, 0], [6, 3, 3]);
        cube(&mut b, d, [0, 3, 3], [3, 6, 6]);
        let l = label(&b, d, Connectivity::TwentySix).unwrap();
        assert_eq!(l.count, 1);
        assert_eq!(l.sizes, vec![343 - 54, 54]);
        assert_eq!(label(&b, d, Connectivity::Eighteen).unwrap().count, 2);
    }

    /// Reference: breadth-first flood over explicit neighbour offsets.
    fn reference(m: &[bool], d: [usize; 3], conn: Connectivity) -> (Vec<u32>, usize) {
        let mut offs = Vec::new();
        for dk in -1i64..=1 {
            for dj in -1i64..=1 {
                for di in -1i64..=1 {
                    let s = di.abs() + dj.abs() + dk.abs();
                    let ok = match conn {
                        Connectivity::Six => s == 1,
                        Connectivity::Eighteen => s == 1 || s == 2,
                        Connectivity::TwentySix => s >= 1,
                    };
                    if ok {
                        offs.push([di, dj, dk]);
                    }
                }
            }
        }
        let mut lab = vec![0u32; m.len()];
        let mut count = 0;
        for k in 0..d[2] {
            for j in 0..d[1] {
                for i in 0..d[0] {
                    let v = idx(d, i, j, k);
                    if !m[v] || lab[v] != 0 {
                        continue;
                    }
                    count += 1;
                    lab[v] = count as u32;
                    let mut q = VecDeque::from([[i as i64, j as i64, k as i64]]);
                    while let Some(p) = q.pop_front() {
                        for o in &offs {
                            let n = [p[0] + o[0], p[1] + o[1], p[2] + o[2]];
                            if (0..3).any(|a| n[a] < 0 || n[a] >= d[a] as i64) {
                                continue;
                            }
                            let w = idx(d, n[0] as usize, n[1] as usize, n[2] as usize);
                            if m[w] && lab[w] == 0 {
                                lab[w] = count as u32;
                                q.push_back(n);
                            }
                        }
                    }
                }
            }
        }
        (lab, count)
    }

    #[test]
    fn random_volumes_match_flood_fill_reference() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (trial, &p) in [0.2, 0.35, 0.5, 0.65].iter().enumerate() {
            let d = [13 + trial, 11, 9 + 2 * trial];
            let m: Vec<bool> = (0..d.iter().product::<usize>())
                .map(|_| rng.random_bool(p))
                .collect();
            for conn in ALL {
                let got = label(&m, d, conn).unwrap();
                let (want, count) = reference(&m, d, conn);
                assert_eq!(got.count, count, "p={p} {conn:?}");
                // The reference numbers components in raster order of first
                // voxel too, so the labellings must be identical.
                assert_eq!(got.labels, want, "p={p} {conn:?}");
                let mut sizes = vec![0u64; count + 1];
                want.iter().for_each(|&l| sizes[l as usize] += 1);
                assert_eq!(got.sizes, sizes);
            }
        }
    }

    #[test]
    fn retained_components_are_renumbered_in_order() {
        let d = [6, 3, 2];
        let mut m = vec![false; 36];
        cube(&mut m, d, [0, 0, 0], [2, 2, 2]);
        cube(&mut m, d, [3, 0, 0], [4, 3, 1]);
        cube(&mut m, d, [5, 0, 1], [6, 1, 2]);
        let all = label(&m, d, Connectivity::TwentySix).unwrap();
        assert_eq!((all.count, &all.sizes[1..]), (3, &[8u64, 3, 1][..]));
        let kept = all.clone().retain(&[false, false, true, true]).unwrap();
        assert_eq!(kept.count, 2);
        assert_eq!(kept.sizes, vec![36 - 4, 3, 1]);
        // The same labels as labelling the mask without the first cube.
        let without: Vec<bool> = all.labels.iter().map(|&l| l > 1).collect();
        assert_eq!(kept, label(&without, d, Connectivity::TwentySix).unwrap());
        // Keeping everything changes nothing; bad flags are refused.
        assert_eq!(all.clone().retain(&[true; 4]).unwrap(), all);
        assert!(all.retain(&[true; 3]).is_err());
    }

    #[test]
    fn largest_and_border_helpers() {
        let d = [10, 10, 10];
        let mut m = vec![false; 1000];
        cube(&mut m, d, [0, 0, 0], [2, 2, 2]); // 8 voxels, on the border
        cube(&mut m, d, [3, 3, 3], [7, 7, 7]); // 64, inside
        cube(&mut m, d, [8, 3, 3], [10, 5, 6]); // 12, on the i = 9 face
        let l = label(&m, d, Connectivity::Six).unwrap();
        assert_eq!(l.count, 3);
        assert_eq!(largest_components(&l, 2), vec![2, 3]);
        assert_eq!(largest_components(&l, 9), vec![2, 3, 1]);
        assert_eq!(touching_border(&l), BTreeSet::from([1, 3]));
        let only = l.mask_of(&[2]);
        assert_eq!(only.iter().filter(|&&b| b).count(), 64);
    }

    #[test]
    fn fill_holes_of_hollow_cube() {
        let d = [9, 9, 9];
        let mut m = vec![false; 729];
        cube(&mut m, d, [1, 1, 1], [8, 8, 8]);
        let mut hollow = m.clone();
        // Cavity of 3x3x3 and a tunnel to the border elsewhere (not a hole).
        for k in 3..6 {
            for j in 3..6 {
                for i in 3..6 {
                    hollow[idx(d, i, j, k)] = false;
                }
            }
        }
        let filled = fill_holes(&hollow, d).unwrap();
        assert_eq!(filled, m);
        // Open the cavity to the border along +i: no longer a hole in 3D.
        for i in 6..9 {
            hollow[idx(d, i, 4, 4)] = false;
        }
        let filled = fill_holes(&hollow, d).unwrap();
        assert_eq!(filled, hollow);
        // Per slice, only slices k = 3 and 5 keep a closed ring.
        let f2 = fill_holes_2d(&hollow, d).unwrap();
        let added: Vec<usize> = (0..729).filter(|&v| f2[v] && !hollow[v]).collect();
        assert_eq!(added.len(), 18);
        assert!(added.iter().all(|&v| v / 81 == 3 || v / 81 == 5));
    }

    #[test]
    fn rejects_wrong_length() {
        let m = vec![true; 10];
        assert!(matches!(
            label(&m, [3, 3, 1], Connectivity::Six),
            Err(Error::InvalidArgument(_))
        ));
        assert!(fill_holes(&m, [2, 2, 2]).is_err());
        assert!(fill_holes_2d(&m, [0, 2, 2]).is_err());
    }
}
