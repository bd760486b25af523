//! Cohort manifests: `scan_id,image,label,mask` CSV files.
