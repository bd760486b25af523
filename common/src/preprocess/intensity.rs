//! HU windowing and normalisation.
//!
//! The default is the lung window (level -600 HU, width 1500 HU, so
//! -1350..150 HU), which keeps the whole range that matters for pneumonia:
//! aerated lung (about -850), ground glass (-700..-300) and consolidation
//! (-100..+50), while bone and metal saturate. Values map linearly to 0..1.

/// An HU window.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HuWindow {
    /// Lowest HU kept; maps to 0.
    pub lo: f32,
    /// Highest HU kept; maps to 1.
    pub hi: f32,
}

impl Default for HuWindow {
    fn default() -> Self {
        HuWindow::from_level_width(-600.0, 1500.0)
    }
}

impl HuWindow {
    /// A window given as level (centre) and width, as radiologists state it.
    pub fn from_level_width(level: f32, width: f32) -> Self {
        HuWindow {
            lo: level - width / 2.0,
            hi: level + width / 2.0,
        }
    }

    /// Clips to the window and maps it to 0..1, in place.
    pub fn normalize(&self, data: &mut [f32]) {
        use rayon::prelude::*;
        let (lo, scale) = (self.lo, 1.0 / (self.hi - self.lo));
        data.par_chunks_mut(1 << 16).for_each(|c| {
            for v in c {
                *v = ((*v - lo) * scale).clamp(0.0, 1.0);
            }
        });
    }

    /// The normalised value of an HU value.
    pub fn map(&self, hu: f32) -> f32 {
        ((hu - self.lo) / (self.hi - self.lo)).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lung_window_maps_and_clips() {
        let w = HuWindow::default();
        assert_eq!((w.lo, w.hi), (-1350.0, 150.0));
        let mut d = vec![-2000.0, -1350.0, -600.0, 150.0, 3000.0];
        w.normalize(&mut d);
        assert_eq!(d, vec![0.0, 0.0, 0.5, 1.0, 1.0]);
        assert_eq!(w.map(-975.0), 0.25);
    }
}
