//! Cohort statistics from the scan rows: `cohort.json`.
//!
//! [`CohortSummary::from_rows`] needs nothing but the rows and the class
//! names, so the embedded run, `multir report` on Parquet tables and the
//! distributed collector all compute the same numbers from the same rows.
//!
//! Which rows count where:
//! - classification: rows with a label and a predicted class (an error row
//!   whose prediction survived, such as a truth mask on another grid,
//!   still counts);
//! - segmentation: rows with metrics; the means run over scans whose truth
//!   mask holds lesions (Dice is undefined or meaningless on empty truth),
//!   and lesion-free truths give the false-positive volume instead;
//! - quantification: every row with a predicted lesion volume.

use serde::Serialize;

use super::{ScanRow, StageSeconds, Status};
use crate::error::Result;
use crate::metrics::cohort::{
    BlandAltman, ClassificationReport, bland_altman, classification_report,
};

/// Distribution of one per-scan quantity.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Distribution {
    /// Scans with a value.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Smallest value.
    pub min: f64,
    /// First quartile (linear interpolation, as numpy's default).
    pub q25: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub q75: f64,
    /// Largest value.
    pub max: f64,
}

impl Distribution {
    /// The distribution of the values, `None` when there are none.
    pub fn of(values: impl Iterator<Item = f64>) -> Option<Distribution> {
        let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Distribution {
            n: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            min: v[0],
            q25: quantile(&v, 0.25),
            median: quantile(&v, 0.5),
            q75: quantile(&v, 0.75),
            max: v[v.len() - 1],
        })
    }
}

/// Quantile of sorted values with linear interpolation between ranks.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Segmentation quality over the scans with a truth mask.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentationSummary {
    /// Scans with metrics.
    pub scans_with_truth: usize,
    /// Of those, scans whose truth holds lesions (the means run over them).
    pub scans_with_lesions: usize,
    /// Mean volumetric Dice.
    pub mean_dice: Option<f64>,
    /// Mean Jaccard index.
    pub mean_jaccard: Option<f64>,
    /// Mean average symmetric surface distance, mm.
    pub mean_assd_mm: Option<f64>,
    /// Mean surface Dice at the tolerance.
    pub mean_surface_dice: Option<f64>,
    /// Mean surface overlap of the truth.
    pub mean_surface_overlap_truth: Option<f64>,
    /// Mean surface overlap of the prediction.
    pub mean_surface_overlap_pred: Option<f64>,
    /// Mean 95th-percentile Hausdorff distance, mm.
    pub mean_hd95_mm: Option<f64>,
    /// The surface tolerance, mm.
    pub tolerance_mm: Option<f64>,
    /// Scans whose truth is empty.
    pub lesion_free_scans: usize,
    /// Mean predicted volume on them (false positives), mL.
    pub mean_false_positive_ml_on_lesion_free_scans: Option<f64>,
    /// Bland–Altman agreement of predicted with true lesion volume (mL),
    /// when at least two scans have both.
    pub volume_agreement: Option<BlandAltman>,
}

/// Lesion burden over the cohort.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantificationSummary {
    /// Predicted lesion volume, mL.
    pub lesion_volume_ml: Option<Distribution>,
    /// Percent of both lungs involved.
    pub lung_involvement_pct: Option<Distribution>,
    /// Zonal severity score, 0-30.
    pub severity_score: Option<Distribution>,
    /// Predicted lesion volume outside the lung region, mL.
    pub lesion_outside_lungs_ml: Option<Distribution>,
    /// Scans predicted per class, in class order.
    pub predicted: Vec<(String, usize)>,
}

/// Where the time went, summed over scans.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeSummary {
    /// Seconds per stage, summed over every row.
    #[serde(flatten)]
    pub sums: StageSeconds,
    /// Mean of `total` over the scans that ran, s.
    pub mean_per_scan: Option<f64>,
}

/// The statistics of a whole cohort (`cohort.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CohortSummary {
    /// Rows.
    pub scans: usize,
    /// Rows with status ok.
    pub ok: usize,
    /// Rows with status error.
    pub errors: usize,
    /// Class names, in the model's order.
    pub classes: Vec<String>,
    /// Classification against the labels, when any row has one.
    pub classification: Option<ClassificationReport>,
    /// Segmentation against the truth masks, when any row has metrics.
    pub segmentation: Option<SegmentationSummary>,
    /// Lesion burden.
    pub quantification: QuantificationSummary,
    /// Time per stage.
    pub seconds: TimeSummary,
}

/// Mean of the values, `None` when there are none.
fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (s, n) = values.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| s / n as f64)
}

impl CohortSummary {
    /// The statistics of `rows`, whose probabilities follow `classes`.
    /// Errors only on rows inconsistent with the classes (a probability
    /// vector of another length, a label that is no class).
    pub fn from_rows(rows: &[ScanRow], classes: &[String]) -> Result<CohortSummary> {
        let ok = rows.iter().filter(|r| r.status == Status::Ok).count();
        let mut truth = Vec::new();
        let mut probs = Vec::new();
        for r in rows {
            if let (Some(label), Some(_)) = (&r.label, &r.predicted_class) {
                let Some(t) = classes.iter().position(|c| c == label) else {
                    return Err(crate::Error::InvalidArgument(format!(
                        "scan {}: label {label:?} is not one of the model's classes {classes:?}",
                        r.scan_id
                    )));
                };
                truth.push(t);
                probs.push(r.probabilities.clone());
            }
        }
        let classification = if truth.is_empty() {
            None
        } else {
            Some(classification_report(&truth, &probs, classes)?)
        };

        let with_truth: Vec<&ScanRow> = rows
            .iter()
            .filter(|r| r.volume_truth_ml.is_some())
            .collect();
        let segmentation = if with_truth.is_empty() {
            None
        } else {
            let lesion: Vec<&&ScanRow> = with_truth
                .iter()
                .filter(|r| r.volume_truth_ml.unwrap_or(0.0) > 0.0)
                .collect();
            let free: Vec<f64> = with_truth
                .iter()
                .filter(|r| r.volume_truth_ml == Some(0.0))
                .filter_map(|r| r.lesion_volume_ml)
                .collect();
            let (vt, vp): (Vec<f64>, Vec<f64>) = with_truth
                .iter()
                .filter_map(|r| Some((r.volume_truth_ml?, r.lesion_volume_ml?)))
                .unzip();
            let m = |f: fn(&ScanRow) -> Option<f64>| mean(lesion.iter().filter_map(|r| f(r)));
            Some(SegmentationSummary {
                scans_with_truth: with_truth.len(),
                scans_with_lesions: lesion.len(),
                mean_dice: m(|r| r.dice),
                mean_jaccard: m(|r| r.jaccard),
                mean_assd_mm: m(|r| r.assd_mm),
                mean_surface_dice: m(|r| r.surface_dice),
                mean_surface_overlap_truth: m(|r| r.surface_overlap_truth),
                mean_surface_overlap_pred: m(|r| r.surface_overlap_pred),
                mean_hd95_mm: m(|r| r.hd95_mm),
                tolerance_mm: with_truth.iter().find_map(|r| r.tolerance_mm),
                lesion_free_scans: free.len(),
                mean_false_positive_ml_on_lesion_free_scans: mean(free.iter().copied()),
                volume_agreement: if vt.len() >= 2 {
                    Some(bland_altman(&vt, &vp)?)
                } else {
                    None
                },
            })
        };

        let dist = |f: fn(&ScanRow) -> Option<f64>| Distribution::of(rows.iter().filter_map(f));
        let quantification = QuantificationSummary {
            lesion_volume_ml: dist(|r| r.lesion_volume_ml),
            lung_involvement_pct: dist(|r| r.lung_involvement_pct),
            severity_score: dist(|r| r.severity_score.map(f64::from)),
            lesion_outside_lungs_ml: dist(|r| r.lesion_outside_lungs_ml),
            predicted: classes
                .iter()
                .map(|c| {
                    let n = rows
                        .iter()
                        .filter(|r| r.predicted_class.as_deref() == Some(c.as_str()))
                        .count();
                    (c.clone(), n)
                })
                .collect(),
        };
        let mut sums = StageSeconds::default();
        for r in rows {
            let (a, b) = (&mut sums, &r.seconds);
            a.read += b.read;
            a.preprocess += b.preprocess;
            a.inference += b.inference;
            a.quantify += b.quantify;
            a.metrics += b.metrics;
            a.write += b.write;
            a.total += b.total;
        }
        let seconds = TimeSummary {
            sums,
            mean_per_scan: mean(
                rows.iter()
                    .filter(|r| r.status == Status::Ok)
                    .map(|r| r.seconds.total),
            ),
        };
        Ok(CohortSummary {
            scans: rows.len(),
            ok,
            errors: rows.len() - ok,
            classes: classes.to_vec(),
            classification,
            segmentation,
            quantification,
            seconds,
        })
    }

    /// The accuracy, when labels were given.
    pub fn accuracy(&self) -> Option<f64> {
        self.classification.as_ref().and_then(|c| c.accuracy)
    }

    /// The mean Dice over scans with lesions, when masks were given.
    pub fn mean_dice(&self) -> Option<f64> {
        self.segmentation.as_ref().and_then(|s| s.mean_dice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Fault;

    fn classes() -> Vec<String> {
        ["covid", "cap", "healthy"].map(String::from).to_vec()
    }

    fn row(id: &str, label: &str, pred: usize, truth_ml: f64, pred_ml: f64, dice: f64) -> ScanRow {
        let mut r = ScanRow::new(id, Some(label.into()));
        let mut p = vec![0.1; 3];
        p[pred] = 0.8;
        r.probabilities = p;
        r.predicted_class = Some(classes()[pred].clone());
        r.lesion_volume_ml = Some(pred_ml);
        r.volume_truth_ml = Some(truth_ml);
        r.dice = (truth_ml > 0.0 || pred_ml > 0.0).then_some(dice);
        r.seconds.total = 2.0;
        r
    }

    #[test]
    fn summary_counts_what_each_statistic_should() {
        let mut err = ScanRow::new("e", Some("covid".into()));
        err.fail(Fault::Input, "bad".into());
        let mut grid = row("g", "cap", 1, 0.0, 5.0, 0.0);
        // A truth mask on another grid: the prediction counts, metrics not.
        grid.volume_truth_ml = None;
        grid.dice = None;
        grid.fail(Fault::Input, "mask on another grid".into());
        let rows = vec![
            row("a", "covid", 0, 10.0, 12.0, 0.8),
            row("b", "covid", 1, 20.0, 18.0, 0.6),
            row("c", "healthy", 2, 0.0, 1.5, 0.0),
            grid,
            err,
        ];
        let s = CohortSummary::from_rows(&rows, &classes()).unwrap();
        assert_eq!((s.scans, s.ok, s.errors), (5, 3, 2));
        let c = s.classification.as_ref().unwrap();
        assert_eq!(c.n, 4, "the unpredicted error row does not count");
        assert_eq!(s.accuracy(), Some(0.75));
        let seg = s.segmentation.as_ref().unwrap();
        assert_eq!(seg.scans_with_truth, 3);
        assert_eq!(seg.scans_with_lesions, 2);
        assert!((s.mean_dice().unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(seg.mean_false_positive_ml_on_lesion_free_scans, Some(1.5));
        assert_eq!(seg.volume_agreement.as_ref().unwrap().n, 3);
        assert_eq!(
            s.quantification.predicted,
            vec![
                ("covid".into(), 1),
                ("cap".into(), 2),
                ("healthy".into(), 1)
            ]
        );
        assert_eq!(s.seconds.mean_per_scan, Some(2.0));
    }

    #[test]
    fn distributions_interpolate_quartiles_like_numpy() {
        let d = Distribution::of([4.0, 1.0, 3.0, 2.0].into_iter()).unwrap();
        // numpy.percentile([1,2,3,4], [25,50,75]) = 1.75, 2.5, 3.25
        assert_eq!((d.q25, d.median, d.q75), (1.75, 2.5, 3.25));
        assert_eq!((d.min, d.max, d.mean), (1.0, 4.0, 2.5));
        assert!(Distribution::of(std::iter::empty()).is_none());
    }

    #[test]
    fn labels_outside_the_classes_are_an_error_naming_the_scan() {
        let mut r = row("x", "covid", 0, 1.0, 1.0, 1.0);
        r.label = Some("flu".into());
        let e = CohortSummary::from_rows(&[r], &classes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("scan x") && e.contains("flu"), "{e}");
    }
}
