//! In-plane binary morphology with a disc whose radius is in millimetres.
//!
//! Masks here are single 2D planes of `w x h` pixels, `x` fastest. A dilation
//! by a disc is computed as "some row within the disc's height has a
//! foreground pixel within that row's half-width": one sweep per row gives
//! the horizontal distance to the nearest foreground pixel, and the row test
//! is then a branch-free comparison that the compiler vectorises. The cost
//! is `w * h * (2 * reach_j + 1)` comparisons, independent of the disc's
//! area, and the result is the exact discrete dilation.

use crate::error::{Error, Result};
use crate::labeling::{border_seeds, flood};

/// A discrete disc: the pixel offsets `(di, dj)` with
/// `(di * si)^2 + (dj * sj)^2 <= r^2` for pixel spacings `si`, `sj`.
#[derive(Debug, Clone, PartialEq)]
pub struct Disc {
    /// Largest `|di|` allowed on row offset `|dj|`; length `reach_j + 1`.
    half_width: Vec<u32>,
}

impl Disc {
    /// A disc of `radius_mm` on a grid with pixel spacings `spacing_i` and
    /// `spacing_j` (mm). Refuses negative or non-finite values and discs
    /// more than 1000 pixels across.
    pub fn new(radius_mm: f64, spacing_i: f64, spacing_j: f64) -> Result<Disc> {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !radius_mm.is_finite() || radius_mm < 0.0 || !ok(spacing_i) || !ok(spacing_j) {
            return Err(Error::InvalidArgument(format!(
                "disc radius {radius_mm} mm with spacing {spacing_i} x {spacing_j} mm"
            )));
        }
        if radius_mm / spacing_i.min(spacing_j) > 500.0 {
            return Err(Error::InvalidArgument(format!(
                "disc of {radius_mm} mm is more than 1000 pixels of \
                 {spacing_i} x {spacing_j} mm across"
            )));
        }
        // A small tolerance keeps offsets that lie on the circle exactly.
        let r2 = radius_mm * radius_mm * (1.0 + 1e-9);
        let reach_j = (radius_mm / spacing_j + 1e-9).floor() as usize;
        let half_width = (0..=reach_j)
            .map(|dj| {
                let y = dj as f64 * spacing_j;
                ((r2 - y * y).max(0.0).sqrt() / spacing_i + 1e-9).floor() as u32
            })
            .collect();
        Ok(Disc { half_width })
    }

    /// Largest offset along `i`.
    pub fn reach_i(&self) -> usize {
        self.half_width[0] as usize
    }

    /// Largest offset along `j`.
    pub fn reach_j(&self) -> usize {
        self.half_width.len() - 1
    }

    /// Number of pixels in the disc.
    pub fn area(&self) -> usize {
        let rows: usize = self.half_width.iter().map(|&w| 2 * w as usize + 1).sum();
        2 * rows - (2 * self.half_width[0] as usize + 1)
    }
}

fn check(mask_len: usize, w: usize, h: usize) -> Result<()> {
    if w.checked_mul(h) != Some(mask_len) || mask_len == 0 {
        return Err(Error::InvalidArgument(format!(
            "plane of {mask_len} pixels given as {w} x {h}"
        )));
    }
    Ok(())
}

/// Dilation where everything outside the plane is background.
fn dilate_core(mask: &[bool], w: usize, h: usize, disc: &Disc) -> Vec<bool> {
    const FAR: u32 = u32::MAX;
    // Horizontal distance to the nearest foreground pixel of the same row.
    let mut dist = vec![FAR; w * h];
    for (m, d) in mask.chunks_exact(w).zip(dist.chunks_exact_mut(w)) {
        let mut run = FAR;
        for (&m, d) in m.iter().zip(d.iter_mut()) {
            run = if m { 0 } else { run.saturating_add(1) };
            *d = run;
        }
        run = FAR;
        for (&m, d) in m.iter().zip(d.iter_mut()).rev() {
            run = if m { 0 } else { run.saturating_add(1) };
            *d = (*d).min(run);
        }
    }
    let r = disc.reach_j();
    let mut out = vec![false; w * h];
    for (y, orow) in out.chunks_exact_mut(w).enumerate() {
        for yy in y.saturating_sub(r)..(y + r + 1).min(h) {
            let lim = disc.half_width[y.abs_diff(yy)];
            let drow = &dist[yy * w..(yy + 1) * w];
            for (o, &d) in orow.iter_mut().zip(drow) {
                *o |= d <= lim;
            }
        }
    }
    out
}

/// Copies a plane into a larger one with `pi` and `pj` background pixels on
/// each side.
fn pad(mask: &[bool], w: usize, h: usize, pi: usize, pj: usize) -> (Vec<bool>, usize, usize) {
    let (pw, ph) = (w + 2 * pi, h + 2 * pj);
    let mut out = vec![false; pw * ph];
    for (y, row) in mask.chunks_exact(w).enumerate() {
        let s = (y + pj) * pw + pi;
        out[s..s + w].copy_from_slice(row);
    }
    (out, pw, ph)
}

fn unpad(padded: &[bool], pw: usize, w: usize, h: usize, pi: usize, pj: usize) -> Vec<bool> {
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        let s = (y + pj) * pw + pi;
        out.extend_from_slice(&padded[s..s + w]);
    }
    out
}

/// Dilation by `disc`; pixels outside the plane count as background.
pub fn dilate_2d(mask: &[bool], w: usize, h: usize, disc: &Disc) -> Result<Vec<bool>> {
    check(mask.len(), w, h)?;
    Ok(dilate_core(mask, w, h, disc))
}

/// Erosion by `disc`; pixels outside the plane count as background, so
/// foreground near the edge is eroded.
pub fn erode_2d(mask: &[bool], w: usize, h: usize, disc: &Disc) -> Result<Vec<bool>> {
    check(mask.len(), w, h)?;
    let (pi, pj) = (disc.reach_i() + 1, disc.reach_j() + 1);
    let (p, pw, ph) = pad(mask, w, h, pi, pj);
    let inv: Vec<bool> = p.iter().map(|&b| !b).collect();
    let e: Vec<bool> = dilate_core(&inv, pw, ph, disc)
        .into_iter()
        .map(|b| !b)
        .collect();
    Ok(unpad(&e, pw, w, h, pi, pj))
}

/// Closing (dilation, then erosion) by `disc`, computed as on an unbounded
/// plane whose pixels outside `w x h` are background: the result contains
/// the mask and lies within its bounding box.
pub fn close_2d(mask: &[bool], w: usize, h: usize, disc: &Disc) -> Result<Vec<bool>> {
    check(mask.len(), w, h)?;
    // The dilation reaches `reach` beyond the mask; another `reach + 1` of
    // background keeps the erosion exact next to it.
    let (pi, pj) = (2 * disc.reach_i() + 1, 2 * disc.reach_j() + 1);
    let (p, pw, ph) = pad(mask, w, h, pi, pj);
    let inv: Vec<bool> = dilate_core(&p, pw, ph, disc)
        .into_iter()
        .map(|b| !b)
        .collect();
    let closed: Vec<bool> = dilate_core(&inv, pw, ph, disc)
        .into_iter()
        .map(|b| !b)
        .collect();
    Ok(unpad(&closed, pw, w, h, pi, pj))
}

/// Fills the holes of a plane in place: background regions (4-connected)
/// that do not touch the plane's edge become foreground.
pub fn fill_holes_plane(mask: &mut [bool], w: usize, h: usize) -> Result<()> {
    check(mask.len(), w, h)?;
    let mut bg: Vec<bool> = mask.iter().map(|&b| !b).collect();
    let d = [w, h, 1];
    flood(&mut bg, d, border_seeds(d, true), true, false);
    mask.iter_mut().zip(bg).for_each(|(m, hole)| *m |= hole);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &[bool]) -> usize {
        m.iter().filter(|&&b| b).count()
    }

    #[test]
    fn disc_shape_follows_spacing() {
        let d = Disc::new(2.0, 1.0, 1.0).unwrap();
        assert_eq!(d.half_width, vec![2, 1, 0]);
        assert_eq!(d.area(), 13);
        // Coarser rows: the disc reaches fewer rows than columns.
        let d = Disc::new(3.0, 1.0, 1.5).unwrap();
        assert_eq!((d.reach_i(), d.reach_j()), (3, 2));
        assert!(Disc::new(-1.0, 1.0, 1.0).is_err());
        assert!(Disc::new(1.0, 0.0, 1.0).is_err());
        assert!(Disc::new(1e6, 1.0, 1.0).is_err());
    }

    #[test]
    fn dilating_a_point_gives_the_disc() {
        let (w, h) = (11, 11);
        let mut m = vec![false; w * h];
        m[5 * w + 5] = true;
        let disc = Disc::new(3.2, 1.0, 1.3).unwrap();
        let d = dilate_2d(&m, w, h, &disc).unwrap();
        assert_eq!(count(&d), disc.area());
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (x as f64 - 5.0, (y as f64 - 5.0) * 1.3);
                assert_eq!(d[y * w + x], dx * dx + dy * dy <= 3.2 * 3.2, "{x},{y}");
            }
        }
        // Eroding the disc back gives the point, and closing a point keeps it.
        assert_eq!(erode_2d(&d, w, h, &disc).unwrap(), m);
        assert_eq!(close_2d(&m, w, h, &disc).unwrap(), m);
    }

    #[test]
    fn closing_bridges_narrow_gaps_only() {
        let (w, h) = (30, 12);
        let block = |gap: usize| {
            let mut m = vec![false; w * h];
            for y in 2..10 {
                for x in 2..12 {
                    m[y * w + x] = true;
                    m[y * w + x + 10 + gap] = true;
                }
            }
            m
        };
        let disc = Disc::new(2.0, 1.0, 1.0).unwrap();
        // A 3-pixel gap is narrower than the 5-pixel disc: bridged.
        let m = block(3);
        let c = close_2d(&m, w, h, &disc).unwrap();
        for y in 0..h {
            for x in 0..w {
                let (inside, gap) = ((2..10).contains(&y), (12..15).contains(&x));
                let v = y * w + x;
                // Extensive, within the bounding box, and the gap is bridged
                // away from the corners, where a disc still fits in.
                assert!(!m[v] || c[v]);
                assert!(!c[v] || (inside && (2..25).contains(&x)));
                if gap && (4..8).contains(&y) {
                    assert!(c[v], "{x},{y}");
                }
            }
        }
        // A 6-pixel gap lets the disc in: nothing changes.
        let m = block(6);
        assert_eq!(close_2d(&m, w, h, &disc).unwrap(), m);
        assert!(close_2d(&m, w, h + 1, &disc).is_err());
    }

    #[test]
    fn plane_holes_are_filled() {
        let (w, h) = (6, 5);
        #[rustfmt::skip]
        let mut m: Vec<bool> = [
            0, 1, 1, 1, 0, 0,
            0, 1, 0, 1, 0, 0,
            0, 1, 1, 1, 1, 1,
            0, 0, 0, 1, 0, 0,
            0, 0, 0, 1, 0, 0,
        ].iter().map(|&v| v == 1).collect();
        fill_holes_plane(&mut m, w, h).unwrap();
        assert!(m[w + 2]);
        assert!(!m[w + 4] && !m[3 * w + 4]);
        assert_eq!(count(&m), 13);
    }
}
