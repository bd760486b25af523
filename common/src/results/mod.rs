//! What a cohort run produces for each scan, and for the cohort.
//!
//! - [`ScanRow`]: one row per scan (status, class probabilities, lesion
//!   burden, lung involvement, segmentation metrics, timings, provenance),
//!   the row of `scans.parquet`.
//! - [`LesionRow`]: one row per connected lesion, the row of
//!   `lesions.parquet`.
//! - [`ScanRecord`]: a scan's row, its lesion rows and the [`ResumeKey`]
//!   that says which inputs, model and settings produced them: the durable
//!   per-scan *fragment* a run writes the moment a scan finishes, and the
//!   result message a queue worker sends.
//! - [`summary`]: the cohort statistics computed from the rows.
//! - [`sink`]: where finished scans go ([`sink::Sink`]).
//! - [`store`]: the output folder of a run: per-scan fragments, masks and a
//!   lock, and the index that makes a rerun resume.
//!
//! Every field is typed and an undefined value is `None`, never NaN: the
//! Parquet writer maps the rows one to one onto columns (see the README's
//! schema) and the JSON fragments round-trip exactly.

pub mod sink;
pub mod store;
pub mod summary;

use crate::error::Fault;
use crate::quantify::{LesionSide, ScanQuantification};

/// Version of the result tables' schema and of the fragment layout. It is
/// written into every Parquet file and fragment; a change of any column's
/// name, type or meaning increments it.
pub const RESULTS_SCHEMA_VERSION: u32 = 2;

/// Whether a scan was processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every stage ran.
    #[default]
    Ok,
    /// A stage failed; `error` says which and why. Fields computed before
    /// the failure (for example the prediction when only the truth mask
    /// was unusable) are kept.
    Error,
}

impl Status {
    /// "ok" or "error".
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}

/// Seconds spent in each stage of one scan. Stages overlap across scans in
/// a pipelined run, so `total` is their sum for this scan, not a share of
/// the run's wall time.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct StageSeconds {
    /// Reading the files, checksums and decoding.
    pub read: f64,
    /// Reorientation, resampling and windowing onto the model grid.
    pub preprocess: f64,
    /// Sliding-window inference and the return to the scan's grid.
    pub inference: f64,
    /// Lesion table, lung mask, involvement and severity.
    pub quantify: f64,
    /// Segmentation metrics against the truth mask.
    pub metrics: f64,
    /// Writing the mask (and probability map).
    pub write: f64,
    /// The sum of the above.
    pub total: f64,
}

impl StageSeconds {
    /// The sum of the stages (what `total` holds once the scan is done).
    pub fn sum(&self) -> f64 {
        self.read + self.preprocess + self.inference + self.quantify + self.metrics + self.write
    }
}

/// One scan's results: a row of `scans.parquet`.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct ScanRow {
    /// The manifest's scan id.
    pub scan_id: String,
    /// "ok" or "error".
    pub status: Status,
    /// What went wrong, naming the scan's file; `None` when ok.
    pub error: Option<String>,
    /// Whose fault the error is ("input" or "environment").
    pub fault: Option<Fault>,
    /// The manifest's label, if any.
    pub label: Option<String>,
    /// The most probable class (a checkpoint class name).
    pub predicted_class: Option<String>,
    /// Class probabilities in the checkpoint's class order (empty when the
    /// scan was not predicted); columns `prob_<class>`.
    pub probabilities: Vec<f64>,
    /// Predicted lesion volume, mL.
    pub lesion_volume_ml: Option<f64>,
    /// Predicted lesion volume outside the lung region, mL.
    pub lesion_outside_lungs_ml: Option<f64>,
    /// Predicted lesion removed before quantification because its
    /// connected component touches no lung, mL (not part of
    /// `lesion_volume_ml`; see [`crate::quantify::lesions_touching_lungs`]).
    pub lesion_removed_ml: Option<f64>,
    /// Both lungs, mL (the lung region of [`crate::quantify`]).
    pub lung_volume_ml: Option<f64>,
    /// Percent of the left lung involved.
    pub left_lung_involvement_pct: Option<f64>,
    /// Percent of the right lung involved.
    pub right_lung_involvement_pct: Option<f64>,
    /// Percent of both lungs involved.
    pub lung_involvement_pct: Option<f64>,
    /// Zonal severity score, 0-30.
    pub severity_score: Option<u8>,
    /// Connected lesions.
    pub n_lesions: Option<u32>,
    /// Volumetric Dice against the truth mask.
    pub dice: Option<f64>,
    /// Jaccard index.
    pub jaccard: Option<f64>,
    /// Average symmetric surface distance, mm.
    pub assd_mm: Option<f64>,
    /// Mean distance from the truth surface to the prediction, mm.
    pub asd_truth_to_pred_mm: Option<f64>,
    /// Mean distance from the predicted surface to the truth, mm.
    pub asd_pred_to_truth_mm: Option<f64>,
    /// Surface Dice at the tolerance.
    pub surface_dice: Option<f64>,
    /// Fraction of the truth surface within the tolerance.
    pub surface_overlap_truth: Option<f64>,
    /// Fraction of the predicted surface within the tolerance.
    pub surface_overlap_pred: Option<f64>,
    /// 95th-percentile Hausdorff distance, mm.
    pub hd95_mm: Option<f64>,
    /// Hausdorff distance, mm.
    pub hausdorff_mm: Option<f64>,
    /// Truth lesion volume, mL.
    pub volume_truth_ml: Option<f64>,
    /// Predicted minus truth volume, mL.
    pub volume_difference_ml: Option<f64>,
    /// Surface tolerance of the metrics, mm (set when metrics were computed).
    pub tolerance_mm: Option<f64>,
    /// Seconds per stage.
    pub seconds: StageSeconds,
    /// Sliding windows the network ran.
    pub windows: Option<u32>,
    /// The input's voxel counts along the file's i, j, k axes.
    pub shape: Option<[u32; 3]>,
    /// The input's voxel spacing in mm, same order.
    pub spacing_mm: Option<[f64; 3]>,
    /// SHA-256 of the image (see [`ResumeKey`]).
    pub image_sha256: Option<String>,
    /// SHA-256 of the truth mask.
    pub mask_sha256: Option<String>,
    /// SHA-256 of the checkpoint file.
    pub model_sha256: String,
    /// The multir version that computed the row.
    pub multir_version: String,
    /// Compute device ("cpu", "cuda:0").
    pub device: String,
    /// Why the input does not look like a chest CT, comma-separated
    /// (see [`crate::process::plausibility_flags`]); `None` when it does.
    pub flags: Option<String>,
}

impl ScanRow {
    /// An empty row for a scan: status ok, nothing measured yet.
    pub fn new(scan_id: &str, label: Option<String>) -> ScanRow {
        ScanRow {
            scan_id: scan_id.to_string(),
            label,
            multir_version: env!("CARGO_PKG_VERSION").to_string(),
            ..ScanRow::default()
        }
    }

    /// Marks the row failed. The first failure wins: later stages do not
    /// overwrite why the scan failed.
    pub fn fail(&mut self, fault: Fault, message: String) {
        if self.status == Status::Ok {
            self.status = Status::Error;
            self.error = Some(message);
            self.fault = Some(fault);
        }
    }

    /// Fills the lesion-burden columns from a quantification.
    pub fn set_quantification(&mut self, q: &ScanQuantification) {
        self.lesion_volume_ml = Some(q.total_lesion_ml);
        self.lesion_outside_lungs_ml = q.lesion_in_lung_ml.map(|inside| {
            // The two sums run over the same voxels in another order.
            (q.total_lesion_ml - inside).max(0.0)
        });
        self.lung_volume_ml = q.lung_ml;
        self.left_lung_involvement_pct = q.percent_left_involved;
        self.right_lung_involvement_pct = q.percent_right_involved;
        self.lung_involvement_pct = q.percent_lung_involved;
        self.severity_score = q.severity_score;
        self.n_lesions = Some(q.lesion_count as u32);
    }

    /// Fills the segmentation-metric columns.
    pub fn set_metrics(&mut self, m: &crate::metrics::SegmentationMetrics) {
        self.dice = m.dice;
        self.jaccard = m.jaccard;
        self.assd_mm = m.assd;
        self.asd_truth_to_pred_mm = m.asd_truth_to_pred;
        self.asd_pred_to_truth_mm = m.asd_pred_to_truth;
        self.surface_dice = m.surface_dice;
        self.surface_overlap_truth = m.surface_overlap_truth;
        self.surface_overlap_pred = m.surface_overlap_pred;
        self.hd95_mm = m.hd95;
        self.hausdorff_mm = m.hausdorff;
        self.volume_truth_ml = Some(m.volume_truth_ml);
        self.volume_difference_ml = Some(m.volume_difference_ml);
        self.tolerance_mm = Some(m.tolerance_mm);
    }
}

/// One connected lesion of a scan's predicted mask: a row of
/// `lesions.parquet`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LesionRow {
    /// The scan.
    pub scan_id: String,
    /// 1-based rank by volume within the scan.
    pub lesion_id: u32,
    /// Volume, mL.
    pub volume_ml: f64,
    /// Voxel count.
    pub voxels: u64,
    /// Centroid in world RAS+ mm.
    pub centroid_mm: [f64; 3],
    /// Bounding box, first voxel (file's i, j, k), inclusive.
    pub bbox_min: [u32; 3],
    /// Bounding box, last voxel, inclusive.
    pub bbox_max: [u32; 3],
    /// Mean CT value, HU.
    pub mean_hu: f64,
    /// Standard deviation of the CT values, HU.
    pub std_hu: f64,
    /// "left", "right", "both" or "outside" the lungs; `None` when no
    /// lungs were found.
    pub side: Option<LesionSide>,
    /// Fraction of the lesion inside the lung mask.
    pub in_lung_fraction: Option<f64>,
}

impl LesionRow {
    /// The lesion rows of one scan's quantification.
    pub fn from_quantification(scan_id: &str, q: &ScanQuantification) -> Vec<LesionRow> {
        let u32s = |a: [usize; 3]| a.map(|v| v as u32);
        q.lesions
            .iter()
            .map(|l| LesionRow {
                scan_id: scan_id.to_string(),
                lesion_id: l.id,
                volume_ml: l.volume_ml,
                voxels: l.voxels,
                centroid_mm: l.centroid_mm,
                bbox_min: u32s(l.bbox_min),
                bbox_max: u32s(l.bbox_max),
                mean_hu: l.mean_hu,
                std_hu: l.std_hu,
                side: l.side,
                in_lung_fraction: l.in_lung_fraction,
            })
            .collect()
    }
}

/// What produced a result: the same key means the same answer, so a rerun
/// may keep the result instead of computing it again.
///
/// Checksums are SHA-256 in hex: of the file's bytes for a file (what
/// `sha256sum` prints), and for a DICOM folder of the concatenated
/// `name NUL sha256 NUL` of its files in name order (for a NRRD header with
/// a detached data file, the same of the header, then the data file).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ResumeKey {
    /// The image's checksum (`None` when it could not be read).
    pub image_sha256: Option<String>,
    /// The truth mask's checksum, when the job has one.
    pub mask_sha256: Option<String>,
    /// The label given with the job.
    pub label: Option<String>,
    /// The checkpoint file's checksum.
    pub model_sha256: String,
    /// Checksum of every setting that changes a result (see
    /// [`crate::process::ProcessConfig::settings_sha256`]).
    pub settings_sha256: String,
}

/// A finished scan: its row, its lesions and the key of what produced
/// them. Written as one JSON fragment per scan.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScanRecord {
    /// [`RESULTS_SCHEMA_VERSION`].
    pub schema: u32,
    /// The class names the probabilities follow.
    pub classes: Vec<String>,
    /// What produced the record.
    pub key: ResumeKey,
    /// The scan's row.
    pub scan: ScanRow,
    /// The scan's lesions.
    pub lesions: Vec<LesionRow>,
}

impl ScanRecord {
    /// Whether a rerun may keep this record for a job whose inputs have
    /// `key`: the key matches, and the scan either succeeded or failed for
    /// a reason of its own input (an environment failure is tried again).
    pub fn is_final_for(&self, key: &ResumeKey) -> bool {
        self.schema == RESULTS_SCHEMA_VERSION
            && self.key == *key
            && key.image_sha256.is_some()
            && (self.scan.status == Status::Ok || self.scan.fault == Some(Fault::Input))
    }

    /// Encodes the record as JSON.
    pub fn to_json(&self) -> crate::Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| {
            crate::Error::InvalidArgument(format!("cannot encode {}: {e}", self.scan.scan_id))
        })
    }

    /// Decodes a record, refusing other schema versions.
    pub fn from_json(bytes: &[u8]) -> crate::Result<ScanRecord> {
        let bad = |reason: String| crate::Error::WrongFormat {
            format: "multir result",
            reason,
        };
        let r: ScanRecord = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if r.schema != RESULTS_SCHEMA_VERSION {
            return Err(bad(format!(
                "schema version {}, this build reads version {RESULTS_SCHEMA_VERSION}",
                r.schema
            )));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: Status, fault: Option<Fault>) -> ScanRecord {
        let mut scan = ScanRow::new("a", Some("covid".into()));
        scan.status = status;
        scan.fault = fault;
        scan.probabilities = vec![0.1, 0.2, 0.7];
        scan.dice = Some(0.1 + 0.2);
        ScanRecord {
            schema: RESULTS_SCHEMA_VERSION,
            classes: vec!["covid".into(), "cap".into(), "healthy".into()],
            key: ResumeKey {
                image_sha256: Some("ab".into()),
                model_sha256: "m".into(),
                settings_sha256: "s".into(),
                ..ResumeKey::default()
            },
            scan,
            lesions: vec![],
        }
    }

    #[test]
    fn records_round_trip_exactly_through_json() {
        let r = record(Status::Ok, None);
        let back = ScanRecord::from_json(&r.to_json().unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.scan.dice, Some(0.1 + 0.2), "floats keep every bit");
    }

    #[test]
    fn only_final_records_with_the_same_key_are_kept() {
        let ok = record(Status::Ok, None);
        assert!(ok.is_final_for(&ok.key));
        let mut other = ok.key.clone();
        other.settings_sha256 = "t".into();
        assert!(!ok.is_final_for(&other));
        assert!(record(Status::Error, Some(Fault::Input)).is_final_for(&ok.key));
        assert!(!record(Status::Error, Some(Fault::Environment)).is_final_for(&ok.key));
        let mut unread = ok.clone();
        unread.key.image_sha256 = None;
        assert!(
            !unread.is_final_for(&unread.key),
            "unreadable inputs are retried"
        );
    }

    #[test]
    fn the_first_failure_is_kept() {
        let mut row = ScanRow::new("a", None);
        row.fail(Fault::Input, "first".into());
        row.fail(Fault::Environment, "second".into());
        assert_eq!(row.error.as_deref(), Some("first"));
        assert_eq!(row.fault, Some(Fault::Input));
    }
}
