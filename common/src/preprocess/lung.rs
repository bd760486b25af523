//! Classical lung segmentation from HU thresholds.
