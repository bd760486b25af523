//! The canonical in-memory volume and its world geometry.
//!
//! A [`Volume`] holds f32 voxels with the first voxel axis `i` varying
//! fastest (the byte order of NIfTI and of a C array indexed `[k][j][i]`), so
//! a tensor view of it has shape `(nk, nj, ni)`. Geometry is a 4x4
//! voxel-to-world [`Affine`] in RAS+ millimetres, nibabel's convention:
//! world x grows towards the patient's Right, y towards Anterior, z towards
//! Superior (DICOM's LPS+ negates x and y).
//!
//! Every later stage (resampling, patches, model, metrics) works on volumes
//! in the canonical orientation, [`CANONICAL`] = "RAS": voxel axis `i` runs
//! closest to +R, `j` to +A, `k` to +S. [`Volume::to_canonical`] gets there by
//! permuting and flipping axes only (no interpolation) and returns the
//! [`Reorientation`] that maps results back onto the file's own grid exactly.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Canonical axis codes of in-memory volumes.
pub const CANONICAL: [char; 3] = ['R', 'A', 'S'];

/// A 4x4 voxel-to-world (RAS+ mm) transform, row-major.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Affine(pub [[f64; 4]; 4]);

impl Affine {
    /// The identity transform.
    pub fn identity() -> Self {
        let mut m = [[0.0; 4]; 4];
        for (d, row) in m.iter_mut().enumerate() {
            row[d] = 1.0;
        }
        Affine(m)
    }

    /// A diagonal affine with the given spacing and origin (world position
    /// of voxel (0,0,0)).
    pub fn from_spacing_origin(spacing: [f64; 3], origin: [f64; 3]) -> Self {
        let mut a = Self::identity();
        for d in 0..3 {
            a.0[d][d] = spacing[d];
            a.0[d][3] = origin[d];
        }
        a
    }

    /// Column `c` of the 3x3 linear part: the world step of one voxel along
    /// voxel axis `c`.
    pub fn column(&self, c: usize) -> [f64; 3] {
        [self.0[0][c], self.0[1][c], self.0[2][c]]
    }

    /// World position of voxel (0,0,0).
    pub fn origin(&self) -> [f64; 3] {
        [self.0[0][3], self.0[1][3], self.0[2][3]]
    }

    /// Voxel sizes in mm: the lengths of the three columns.
    pub fn spacing(&self) -> [f64; 3] {
        let mut s = [0.0; 3];
        for (c, v) in s.iter_mut().enumerate() {
            let col = self.column(c);
            *v = (col[0] * col[0] + col[1] * col[1] + col[2] * col[2]).sqrt();
        }
        s
    }

    /// Maps a (possibly fractional) voxel index to world mm.
    pub fn apply(&self, ijk: [f64; 3]) -> [f64; 3] {
        let m = &self.0;
        let mut out = [0.0; 3];
        for (r, o) in out.iter_mut().enumerate() {
            *o = m[r][0] * ijk[0] + m[r][1] * ijk[1] + m[r][2] * ijk[2] + m[r][3];
        }
        out
    }

    /// Matrix product `self * other`.
    pub fn compose(&self, other: &Affine) -> Affine {
        let mut m = [[0.0; 4]; 4];
        for (r, row) in m.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = (0..4).map(|k| self.0[r][k] * other.0[k][c]).sum();
            }
        }
        Affine(m)
    }

    /// The inverse transform, or an error when the matrix is singular.
    pub fn inverse(&self) -> Result<Affine> {
        let m = &self.0;
        let a = [
            [m[0][0], m[0][1], m[0][2]],
            [m[1][0], m[1][1], m[1][2]],
            [m[2][0], m[2][1], m[2][2]],
        ];
        let det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
            - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
        if !det.is_finite() || det.abs() < 1e-12 {
            return Err(Error::InvalidHeader(format!(
                "affine is singular (determinant {det:e})"
            )));
        }
        let mut inv = [[0.0; 3]; 3];
        for (r, row) in inv.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                // Cofactor of a[c][r] (transposed) over the determinant.
                let (r1, r2) = ((c + 1) % 3, (c + 2) % 3);
                let (c1, c2) = ((r + 1) % 3, (r + 2) % 3);
                *v = (a[r1][c1] * a[r2][c2] - a[r1][c2] * a[r2][c1]) / det;
            }
        }
        let t = self.origin();
        let mut out = Self::identity();
        for r in 0..3 {
            for c in 0..3 {
                out.0[r][c] = inv[r][c];
            }
            out.0[r][3] = -(0..3).map(|c| inv[r][c] * t[c]).sum::<f64>();
        }
        Ok(out)
    }

    /// For each voxel axis, the world axis (0=x, 1=y, 2=z) it runs closest to
    /// and the direction (+1/-1), as nibabel's `io_orientation`: the largest
    /// remaining entry of the column-normalised matrix is assigned first.
    pub fn io_orientation(&self) -> [(usize, i8); 3] {
        let sp = self.spacing();
        let mut m = [[0.0f64; 3]; 3];
        for c in 0..3 {
            for r in 0..3 {
                m[r][c] = if sp[c] > 0.0 {
                    self.0[r][c] / sp[c]
                } else {
                    0.0
                };
            }
        }
        let mut out = [(usize::MAX, 1i8); 3];
        let mut used_rows = [false; 3];
        let mut used_cols = [false; 3];
        for _ in 0..3 {
            let mut best = (0usize, 0usize, -1.0f64);
            for (r, used_r) in used_rows.iter().enumerate() {
                for (c, used_c) in used_cols.iter().enumerate() {
                    if !used_r && !used_c && m[r][c].abs() > best.2 {
                        best = (r, c, m[r][c].abs());
                    }
                }
            }
            let (r, c, _) = best;
            used_rows[r] = true;
            used_cols[c] = true;
            out[c] = (r, if m[r][c] < 0.0 { -1 } else { 1 });
        }
        out
    }

    /// Axis codes such as "RAS" or "LPS", as nibabel's `aff2axcodes`.
    pub fn axcodes(&self) -> String {
        const POS: [char; 3] = ['R', 'A', 'S'];
        const NEG: [char; 3] = ['L', 'P', 'I'];
        self.io_orientation()
            .iter()
            .map(|&(axis, sign)| if sign > 0 { POS[axis] } else { NEG[axis] })
            .collect()
    }

    /// True when every entry is finite.
    pub fn is_finite(&self) -> bool {
        self.0.iter().flatten().all(|v| v.is_finite())
    }
}

/// A 3D scalar volume: f32 voxels, `i` fastest, with its world geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    data: Vec<f32>,
    dims: [usize; 3],
    affine: Affine,
}

impl Volume {
    /// Wraps voxel data; fails when the length does not match the dims or
    /// the geometry is degenerate.
    pub fn new(data: Vec<f32>, dims: [usize; 3], affine: Affine) -> Result<Self> {
        let n = checked_len(dims)?;
        if data.len() != n {
            return Err(Error::InvalidArgument(format!(
                "{} voxels given for a {}x{}x{} volume",
                data.len(),
                dims[0],
                dims[1],
                dims[2]
            )));
        }
        if !affine.is_finite() {
            return Err(Error::InvalidHeader("affine has non-finite entries".into()));
        }
        affine.inverse()?;
        if affine.spacing().iter().any(|&s| s <= 0.0) {
            return Err(Error::InvalidHeader("zero voxel spacing".into()));
        }
        Ok(Volume { data, dims, affine })
    }

    /// A volume of one constant value.
    pub fn filled(value: f32, dims: [usize; 3], affine: Affine) -> Result<Self> {
        Self::new(vec![value; checked_len(dims)?], dims, affine)
    }

    /// Voxel counts along i, j, k.
    pub fn dims(&self) -> [usize; 3] {
        self.dims
    }

    /// Voxel sizes in mm along i, j, k.
    pub fn spacing(&self) -> [f64; 3] {
        self.affine.spacing()
    }

    /// Voxel-to-world transform.
    pub fn affine(&self) -> &Affine {
        &self.affine
    }

    /// The voxels, `i` fastest.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The voxels, mutable.
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Gives up the voxel buffer.
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Number of voxels.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True for a volume without voxels (never produced by the loaders).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Linear index of voxel (i, j, k).
    #[inline]
    pub fn index(&self, i: usize, j: usize, k: usize) -> usize {
        i + self.dims[0] * (j + self.dims[1] * k)
    }

    /// Voxel value at (i, j, k); panics when out of range.
    #[inline]
    pub fn get(&self, i: usize, j: usize, k: usize) -> f32 {
        self.data[self.index(i, j, k)]
    }

    /// Volume of one voxel in mm^3 (|det| of the linear part).
    pub fn voxel_volume_mm3(&self) -> f64 {
        let a = &self.affine.0;
        (a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
            - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
            + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]))
            .abs()
    }

    /// A volume with the same geometry and new voxels.
    pub fn with_data(&self, data: Vec<f32>) -> Result<Volume> {
        Volume::new(data, self.dims, self.affine)
    }

    /// Minimum, maximum and mean of the voxels (f64 accumulation).
    pub fn stats(&self) -> Stats {
        use rayon::prelude::*;
        let (min, max, sum) = self
            .data
            .par_chunks(1 << 16)
            .map(|c| {
                c.iter().fold(
                    (f32::INFINITY, f32::NEG_INFINITY, 0.0f64),
                    |(lo, hi, s), &v| (lo.min(v), hi.max(v), s + v as f64),
                )
            })
            .reduce(
                || (f32::INFINITY, f32::NEG_INFINITY, 0.0),
                |a, b| (a.0.min(b.0), a.1.max(b.1), a.2 + b.2),
            );
        Stats {
            min: min as f64,
            max: max as f64,
            mean: sum / self.data.len().max(1) as f64,
        }
    }

    /// Reorders and flips the voxel axes so that the volume is in the
    /// canonical RAS orientation; returns the volume and how to undo it.
    pub fn to_canonical(&self) -> (Volume, Reorientation) {
        let (v, r) = self.canonical();
        (v.into_owned(), r)
    }

    /// [`Volume::to_canonical`] without a copy when the volume already is
    /// canonical (most scans are): a full-size CT is hundreds of MB, and
    /// each copy costs more in page faults than in arithmetic.
    pub fn canonical(&self) -> (Cow<'_, Volume>, Reorientation) {
        let ornt = self.affine.io_orientation();
        // Canonical axis a takes the source axis whose world axis is a.
        let mut perm = [0usize; 3];
        let mut flip = [false; 3];
        for (src, &(world, sign)) in ornt.iter().enumerate() {
            perm[world] = src;
            flip[world] = sign < 0;
        }
        let r = Reorientation {
            perm,
            flip,
            src_dims: self.dims,
            src_affine: self.affine,
        };
        let v = if r.is_identity() {
            Cow::Borrowed(self)
        } else {
            Cow::Owned(r.apply(self))
        };
        (v, r)
    }
}

/// Largest per-entry difference between two affines that still counts as
/// the same grid (mm; header round-trips through f32 stay far below).
pub const GRID_TOLERANCE: f64 = 1e-4;

/// Refuses two volumes whose grids (dims or affine, within
/// [`GRID_TOLERANCE`]) differ; the message names both by role (e.g. "truth"
/// and "prediction") and shows both grids. Nothing is ever resampled
/// silently: the caller must bring `b` onto `a`'s grid.
pub fn check_same_grid(a: &Volume, b: &Volume, a_name: &str, b_name: &str) -> Result<()> {
    let same_affine = a
        .affine
        .0
        .iter()
        .flatten()
        .zip(b.affine.0.iter().flatten())
        .all(|(x, y)| (x - y).abs() <= GRID_TOLERANCE);
    if a.dims == b.dims && same_affine {
        return Ok(());
    }
    let grid = |v: &Volume| {
        let rows: Vec<String> = v.affine.0[..3]
            .iter()
            .map(|r| format!("[{} {} {} {}]", r[0], r[1], r[2], r[3]))
            .collect();
        let [i, j, k] = v.dims;
        format!("{i}x{j}x{k} affine {}", rows.join(" "))
    };
    Err(Error::InvalidArgument(format!(
        "{a_name} and {b_name} are on different grids ({a_name} {}; {b_name} {}); \
         resample the {b_name} onto the {a_name}'s grid first",
        grid(a),
        grid(b)
    )))
}

/// Summary statistics of voxel values.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Stats {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// An axis permutation with flips taking a volume to canonical orientation,
/// and back: `undo(apply(v)) == v` bit for bit.
#[derive(Debug, Clone, PartialEq)]
pub struct Reorientation {
    /// Output axis `a` reads source axis `perm[a]`.
    perm: [usize; 3],
    /// Whether output axis `a` runs opposite to its source axis.
    flip: [bool; 3],
    src_dims: [usize; 3],
    src_affine: Affine,
}

impl Reorientation {
    /// True when the source already was canonical.
    pub fn is_identity(&self) -> bool {
        self.perm == [0, 1, 2] && self.flip == [false; 3]
    }

    /// The source grid's dims.
    pub fn source_dims(&self) -> [usize; 3] {
        self.src_dims
    }

    /// The source grid's affine.
    pub fn source_affine(&self) -> &Affine {
        &self.src_affine
    }

    fn out_dims(&self) -> [usize; 3] {
        [
            self.src_dims[self.perm[0]],
            self.src_dims[self.perm[1]],
            self.src_dims[self.perm[2]],
        ]
    }

    /// Canonical voxel index -> source voxel index, as an affine on indices.
    fn index_map(&self) -> Affine {
        let od = self.out_dims();
        let mut m = [[0.0; 4]; 4];
        m[3][3] = 1.0;
        for a in 0..3 {
            let s = self.perm[a];
            if self.flip[a] {
                m[s][a] = -1.0;
                m[s][3] = (od[a] - 1) as f64;
            } else {
                m[s][a] = 1.0;
            }
        }
        Affine(m)
    }

    /// Brings a volume on the source grid into canonical orientation.
    pub fn apply(&self, v: &Volume) -> Volume {
        assert_eq!(
            v.dims, self.src_dims,
            "volume is not on the reorientation's source grid"
        );
        let od = self.out_dims();
        let (start, step) = self.forward_steps();
        let data = gather(&v.data, od, start, step);
        let affine = v.affine.compose(&self.index_map());
        Volume {
            data,
            dims: od,
            affine,
        }
    }

    /// Brings a canonical-grid volume (e.g. a predicted mask) back onto the
    /// source grid, exactly.
    pub fn undo(&self, v: &Volume) -> Result<Volume> {
        let data = self.undo_voxels(&v.data, v.dims)?.into_owned();
        Ok(Volume {
            data,
            dims: self.src_dims,
            affine: self.src_affine,
        })
    }

    /// [`Reorientation::undo`] of a volume the caller no longer needs: no
    /// copy when the source was canonical.
    pub fn undo_owned(&self, v: Volume) -> Result<Volume> {
        Ok(Volume {
            data: self.undo_vec(v.data, v.dims)?,
            dims: self.src_dims,
            affine: self.src_affine,
        })
    }

    /// [`Reorientation::undo_voxels`] of voxels the caller no longer needs:
    /// they are returned as they are when nothing moves.
    pub fn undo_vec<T: Copy + Send + Sync>(
        &self,
        data: Vec<T>,
        dims: [usize; 3],
    ) -> Result<Vec<T>> {
        let moved = match self.undo_voxels(&data, dims)? {
            Cow::Owned(v) => Some(v),
            Cow::Borrowed(_) => None,
        };
        Ok(moved.unwrap_or(data))
    }

    /// [`Reorientation::apply`] for voxel values of any type (labels,
    /// flags) laid out on the source grid; borrowed when nothing moves.
    pub fn apply_voxels<'a, T: Copy + Send + Sync>(&self, data: &'a [T]) -> Result<Cow<'a, [T]>> {
        check_voxels(data.len(), self.src_dims, "source")?;
        if self.is_identity() {
            return Ok(Cow::Borrowed(data));
        }
        let (start, step) = self.forward_steps();
        Ok(Cow::Owned(gather(data, self.out_dims(), start, step)))
    }

    /// [`Reorientation::undo`] for voxel values of any type laid out on
    /// the canonical grid of `dims`; borrowed when nothing moves.
    pub fn undo_voxels<'a, T: Copy + Send + Sync>(
        &self,
        data: &'a [T],
        dims: [usize; 3],
    ) -> Result<Cow<'a, [T]>> {
        let od = self.out_dims();
        if dims != od {
            return Err(Error::InvalidArgument(format!(
                "volume dims {dims:?} do not match the canonical grid {od:?}"
            )));
        }
        check_voxels(data.len(), od, "canonical")?;
        if self.is_identity() {
            return Ok(Cow::Borrowed(data));
        }
        // Source axis d is canonical axis a with perm[a] == d.
        let canon_stride = [1, od[0], od[0] * od[1]];
        let mut start = 0isize;
        let mut step = [0isize; 3];
        for a in 0..3 {
            let d = self.perm[a];
            let st = canon_stride[a] as isize;
            if self.flip[a] {
                start += st * (self.src_dims[d] as isize - 1);
                step[d] = -st;
            } else {
                step[d] = st;
            }
        }
        Ok(Cow::Owned(gather(data, self.src_dims, start, step)))
    }

    /// Where canonical voxel (0, 0, 0) lies in the source buffer, and the
    /// source step of one voxel along each canonical axis.
    fn forward_steps(&self) -> (isize, [isize; 3]) {
        let canon_dims = self.out_dims();
        let src_stride = [1, self.src_dims[0], self.src_dims[0] * self.src_dims[1]];
        let mut start = 0isize;
        let mut step = [0isize; 3];
        for a in 0..3 {
            let st = src_stride[self.perm[a]] as isize;
            if self.flip[a] {
                start += st * (canon_dims[a] as isize - 1);
                step[a] = -st;
            } else {
                step[a] = st;
            }
        }
        (start, step)
    }
}

fn check_voxels(len: usize, dims: [usize; 3], grid: &str) -> Result<()> {
    if checked_len(dims)? != len {
        return Err(Error::InvalidArgument(format!(
            "{len} voxels given for the {grid} grid of {dims:?}"
        )));
    }
    Ok(())
}

/// `out[i + ni * (j + nj * k)] = from[start + step . (i, j, k)]` over the
/// output grid `dims`, one axial slice per task. Every index is in bounds
/// because `start` and `step` come from a permutation with flips of the
/// same grid.
fn gather<T: Copy + Send + Sync>(
    from: &[T],
    dims: [usize; 3],
    start: isize,
    step: [isize; 3],
) -> Vec<T> {
    let [ni, nj, _] = dims;
    let plane = ni * nj;
    if from.is_empty() || plane == 0 {
        return Vec::new();
    }
    let mut out = vec![from[0]; from.len()];
    out.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(k, slice)| {
            for (j, row) in slice.chunks_exact_mut(ni).enumerate() {
                let mut s = start + step[2] * k as isize + step[1] * j as isize;
                for o in row {
                    *o = from[s as usize];
                    s += step[0];
                }
            }
        });
    out
}

/// Number of voxels of `dims`, refusing zero and overflow.
pub fn checked_len(dims: [usize; 3]) -> Result<usize> {
    if dims.contains(&0) {
        return Err(Error::InvalidArgument(format!(
            "volume dims {dims:?} contain zero"
        )));
    }
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::InvalidArgument(format!("volume dims {dims:?} overflow")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(dims: [usize; 3], affine: Affine) -> Volume {
        let n = dims.iter().product();
        Volume::new((0..n).map(|v| v as f32).collect(), dims, affine).unwrap()
    }

    fn lps(spacing: [f64; 3]) -> Affine {
        let mut a = Affine::from_spacing_origin(spacing, [10.0, 20.0, -30.0]);
        a.0[0][0] = -spacing[0];
        a.0[1][1] = -spacing[1];
        a
    }

    #[test]
    fn axcodes_follow_nibabel() {
        assert_eq!(Affine::identity().axcodes(), "RAS");
        assert_eq!(lps([1.0, 1.0, 2.0]).axcodes(), "LPS");
        // i along -z, j along +x, k along -y.
        let a = Affine([
            [0.0, 0.8, 0.0, 0.0],
            [0.0, 0.0, -2.5, 0.0],
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        assert_eq!(a.axcodes(), "IRP");
    }

    #[test]
    fn inverse_round_trips() {
        let mut a = lps([0.7, 0.8, 2.5]);
        a.0[0][1] = 0.1;
        a.0[2][0] = -0.2;
        let p = a.compose(&a.inverse().unwrap());
        for r in 0..4 {
            for c in 0..4 {
                let want = if r == c { 1.0 } else { 0.0 };
                assert!((p.0[r][c] - want).abs() < 1e-12);
            }
        }
        let zero = Affine([[0.0; 4]; 4]);
        assert!(zero.inverse().is_err());
    }

    #[test]
    fn canonical_keeps_world_positions_and_undoes_exactly() {
        let a = Affine([
            [0.0, -0.8, 0.0, 5.0],
            [0.0, 0.0, 0.9, -7.0],
            [-2.0, 0.0, 0.0, 11.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        let v = ramp([4, 3, 5], a);
        let (c, r) = v.to_canonical();
        assert!(!r.is_identity());
        assert_eq!(c.affine().axcodes(), "RAS");
        assert_eq!(c.dims(), [3, 5, 4]);
        // Each canonical voxel sits at the same world position as the
        // source voxel that holds the same value.
        let inv = v.affine().inverse().unwrap();
        for k in 0..c.dims()[2] {
            for j in 0..c.dims()[1] {
                for i in 0..c.dims()[0] {
                    let w = c.affine().apply([i as f64, j as f64, k as f64]);
                    let s = inv.apply(w).map(|x| x.round() as usize);
                    assert_eq!(c.get(i, j, k), v.get(s[0], s[1], s[2]));
                }
            }
        }
        assert_eq!(r.undo(&c).unwrap(), v);
        assert_eq!(r.undo_owned(c.clone()).unwrap(), v);

        // Voxels of other types move exactly as the f32 volume does.
        let ids: Vec<u32> = (0..v.len() as u32).collect();
        let canon_ids = r.apply_voxels(&ids).unwrap();
        assert!(matches!(canon_ids, std::borrow::Cow::Owned(_)));
        let as_f32: Vec<f32> = canon_ids.iter().map(|&x| x as f32).collect();
        assert_eq!(as_f32, c.data());
        let back = r.undo_voxels(&canon_ids, c.dims()).unwrap();
        assert_eq!(back.as_ref(), ids.as_slice());
        // A buffer of the wrong size or grid is refused, not read past.
        assert!(r.apply_voxels(&ids[1..]).is_err());
        assert!(r.undo_voxels(&ids, v.dims()).is_err());
        assert!(r.undo(&v).is_err());
    }

    #[test]
    fn canonical_of_canonical_is_identity() {
        let v = ramp(
            [3, 4, 2],
            Affine::from_spacing_origin([1.0, 2.0, 3.0], [0.0; 3]),
        );
        let (c, r) = v.to_canonical();
        assert!(r.is_identity());
        assert_eq!(c, v);
        // Nothing is copied on the way in or out.
        let (c, r) = v.canonical();
        assert!(matches!(c, std::borrow::Cow::Borrowed(_)));
        let flags = vec![true; v.len()];
        assert!(matches!(
            r.apply_voxels(&flags).unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
        assert!(matches!(
            r.undo_voxels(&flags, v.dims()).unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(r.undo_owned(c.into_owned()).unwrap(), v);
        let ptr = flags.as_ptr();
        let back = r.undo_vec(flags, v.dims()).unwrap();
        assert_eq!(back.as_ptr(), ptr, "the identity moves nothing");
    }

    #[test]
    fn rejects_bad_shapes() {
        let a = Affine::identity();
        assert!(Volume::new(vec![0.0; 5], [2, 2, 2], a).is_err());
        assert!(Volume::new(vec![], [0, 2, 2], a).is_err());
        assert!(checked_len([usize::MAX, 2, 1]).is_err());
    }

    #[test]
    fn stats_are_exact_on_small_data() {
        let v = ramp([2, 2, 2], Affine::identity());
        let s = v.stats();
        assert_eq!((s.min, s.max, s.mean), (0.0, 7.0, 3.5));
        assert!((lps([1.0, 2.0, 3.0]).spacing()[2] - 3.0).abs() < 1e-12);
        assert!((ramp([1, 1, 1], lps([1.0, 2.0, 3.0])).voxel_volume_mm3() - 6.0).abs() < 1e-12);
    }
}
