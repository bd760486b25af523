//! Cohort-level statistics: how well the per-scan class predictions agree
//! with the truth (confusion matrix, recall, precision, F1, one-vs-rest ROC
//! AUC), and how well a per-scan quantity agrees with its reference
//! (Bland–Altman bias and limits of agreement, e.g. lesion volume in mL).
//!
//! Classes are plain indices `0..n` with names passed alongside, so the
//! functions serve any number of classes; the project's own order is that of
//! [`Label::ALL`] (covid = 0, cap = 1, healthy = 2), available as
//! [`label_classes`].
//!
//! **Undefined values are `None` (JSON `null`), never 0.** scikit-learn
//! replaces a 0/0 by its `zero_division` argument (a warning and 0 by
//! default); our numbers equal scikit-learn's with `zero_division=np.nan`,
//! whose NaN we write as `null`:
//!
//! - recall of a class is undefined when it has no true scans (support 0);
//! - precision is undefined when the class is never predicted;
//! - F1 is `2·TP / (2·TP + FP + FN)`, as scikit-learn computes it (not the
//!   harmonic mean of the two values above), so it is 0, not undefined, for
//!   a class that has true scans but is never predicted, and undefined only
//!   for a class that is neither present nor predicted;
//! - accuracy is undefined for an empty cohort;
//! - ROC AUC of a class is undefined when the cohort has no scans of it or
//!   only scans of it.
//!
//! Each macro average is the unweighted mean **over the classes where that
//! value is defined**, and `None` when it is defined for none (scikit-learn
//! with `zero_division=np.nan` drops the NaNs from its averages the same
//! way; with its default `zero_division="warn"` it would count them as 0
//! instead and give a lower average).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::manifest::Label;

/// Most classes a report accepts: the confusion matrix is `n × n`, and no
/// classifier of this project comes anywhere near.
pub const MAX_CLASSES: usize = 1024;

/// The project's class names in class-index order ("covid", "cap",
/// "healthy"), for the `classes` argument of this module's functions.
pub fn label_classes() -> Vec<String> {
    Label::ALL.iter().map(|l| l.as_str().to_string()).collect()
}

/// Checks the class names and returns them owned.
fn class_names<S: AsRef<str>>(classes: &[S]) -> Result<Vec<String>> {
    if classes.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "classification needs at least 2 classes, got {}",
            classes.len()
        )));
    }
    if classes.len() > MAX_CLASSES {
        return Err(Error::InvalidArgument(format!(
            "{} classes exceed the limit of {MAX_CLASSES}",
            classes.len()
        )));
    }
    let names: Vec<String> = classes.iter().map(|c| c.as_ref().to_string()).collect();
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            return Err(Error::InvalidArgument(format!(
                "class name {name:?} is given twice"
            )));
        }
    }
    Ok(names)
}

/// Counts of scans by true and predicted class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfusionMatrix {
    /// Class names in index order.
    pub classes: Vec<String>,
    /// `counts[truth][pred]`: scans of true class `truth` predicted as `pred`.
    pub counts: Vec<Vec<u64>>,
}

impl ConfusionMatrix {
    /// Tallies paired true and predicted class indices.
    ///
    /// Errors when the slices differ in length, a label is not below the
    /// number of classes, or the class names are fewer than 2, more than
    /// [`MAX_CLASSES`] or repeated.
    pub fn from_pairs<S: AsRef<str>>(
        truth: &[usize],
        pred: &[usize],
        classes: &[S],
    ) -> Result<Self> {
        let classes = class_names(classes)?;
        if truth.len() != pred.len() {
            return Err(Error::InvalidArgument(format!(
                "{} true labels but {} predictions",
                truth.len(),
                pred.len()
            )));
        }
        let n = classes.len();
        let mut counts = vec![vec![0u64; n]; n];
        for (scan, (&t, &p)) in truth.iter().zip(pred).enumerate() {
            for (what, label) in [("true label", t), ("predicted label", p)] {
                if label >= n {
                    return Err(Error::InvalidArgument(format!(
                        "scan {scan}: {what} {label} is not a class index (0..{n})"
                    )));
                }
            }
            counts[t][p] += 1;
        }
        Ok(ConfusionMatrix { classes, counts })
    }

    /// Number of scans counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Scans of true class `c` (row sum).
    pub fn support(&self, c: usize) -> u64 {
        self.counts[c].iter().sum()
    }

    /// Scans predicted as class `c` (column sum).
    pub fn predicted(&self, c: usize) -> u64 {
        self.counts.iter().map(|row| row[c]).sum()
    }

    /// Scans on the diagonal (predicted as their true class).
    pub fn correct(&self) -> u64 {
        (0..self.classes.len()).map(|c| self.counts[c][c]).sum()
    }
}

/// Statistics of one class against all others.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassStats {
    /// Class name.
    pub class: String,
    /// Scans whose true class is this one.
    pub support: u64,
    /// TP / (TP + FN); `None` when the support is 0.
    pub recall: Option<f64>,
    /// TP / (TP + FP); `None` when the class is never predicted.
    pub precision: Option<f64>,
    /// 2·TP / (2·TP + FP + FN); `None` when the class is neither present
    /// nor predicted.
    pub f1: Option<f64>,
    /// One-vs-rest ROC AUC of this class's probability; `None` without both
    /// positive and negative scans.
    pub roc_auc: Option<f64>,
}

/// Classification statistics of a cohort. See the module documentation for
/// when a value is `None` and how the macro averages treat it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationReport {
    /// Counts by true and predicted class.
    pub confusion: ConfusionMatrix,
    /// One entry per class, in class order.
    pub per_class: Vec<ClassStats>,
    /// Fraction of scans predicted as their true class; `None` when empty.
    pub accuracy: Option<f64>,
    /// Mean recall over the classes where it is defined.
    pub macro_recall: Option<f64>,
    /// Mean precision over the classes where it is defined.
    pub macro_precision: Option<f64>,
    /// Mean F1 over the classes where it is defined.
    pub macro_f1: Option<f64>,
    /// Mean one-vs-rest ROC AUC over the classes where it is defined.
    pub macro_roc_auc: Option<f64>,
    /// Number of scans.
    pub n: u64,
}

/// `num / den`, undefined for a zero denominator.
fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Mean of the defined values, `None` when there are none.
fn mean_defined(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let (sum, count) = values
        .flatten()
        .fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    (count > 0).then(|| sum / count as f64)
}

/// Index of the largest score; on ties the lowest index wins (as numpy's
/// `argmax`), so a scan scoring two classes equally is never predicted as
/// the later one.
fn argmax(scores: &[f64]) -> usize {
    let mut best = 0;
    for (c, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = c;
        }
    }
    best
}

/// Statistics of a classifier over a cohort.
///
/// `truth[i]` is scan `i`'s true class index and `probs[i]` its score for
/// every class, in the order of `classes`. The prediction is the class of
/// highest score, ties going to the lowest index. Scores must be finite but
/// need not be probabilities: only their order matters (argmax per scan,
/// ranking per class for the one-vs-rest ROC AUC, see [`roc_auc`]).
///
/// Errors on mismatched lengths, out-of-range true labels, score vectors of
/// the wrong length or non-finite scores (naming the scan), and on the class
/// names as in [`ConfusionMatrix::from_pairs`].
pub fn classification_report<S: AsRef<str>>(
    truth: &[usize],
    probs: &[Vec<f64>],
    classes: &[S],
) -> Result<ClassificationReport> {
    let n_classes = classes.len();
    if truth.len() != probs.len() {
        return Err(Error::InvalidArgument(format!(
            "{} true labels but {} probability vectors",
            truth.len(),
            probs.len()
        )));
    }
    // Validate the scores before anything is derived from them.
    for (scan, p) in probs.iter().enumerate() {
        if p.len() != n_classes {
            return Err(Error::InvalidArgument(format!(
                "scan {scan}: {} class probabilities, expected {n_classes} ({})",
                p.len(),
                classes
                    .iter()
                    .map(|c| c.as_ref())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if let Some(c) = p.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "scan {scan}: probability of class {c} is {}",
                p[c]
            )));
        }
    }
    let pred: Vec<usize> = probs.iter().map(|p| argmax(p)).collect();
    let confusion = ConfusionMatrix::from_pairs(truth, &pred, classes)?;

    let mut per_class = Vec::with_capacity(n_classes);
    let mut scores = Vec::with_capacity(truth.len());
    let mut positive = Vec::with_capacity(truth.len());
    for c in 0..n_classes {
        let tp = confusion.counts[c][c];
        let support = confusion.support(c);
        let predicted = confusion.predicted(c);
        let (fn_, fp) = (support - tp, predicted - tp);
        scores.clear();
        scores.extend(probs.iter().map(|p| p[c]));
        positive.clear();
        positive.extend(truth.iter().map(|&t| t == c));
        per_class.push(ClassStats {
            class: confusion.classes[c].clone(),
            support,
            recall: ratio(tp, support),
            precision: ratio(tp, predicted),
            f1: ratio(2 * tp, 2 * tp + fp + fn_),
            roc_auc: roc_auc(&scores, &positive)?,
        });
    }
    let n = confusion.total();
    Ok(ClassificationReport {
        accuracy: ratio(confusion.correct(), n),
        macro_recall: mean_defined(per_class.iter().map(|s| s.recall)),
        macro_precision: mean_defined(per_class.iter().map(|s| s.precision)),
        macro_f1: mean_defined(per_class.iter().map(|s| s.f1)),
        macro_roc_auc: mean_defined(per_class.iter().map(|s| s.roc_auc)),
        per_class,
        confusion,
        n,
    })
}

/// Area under the ROC curve of `scores` for the binary labels `positive`.
///
/// This is the Mann–Whitney statistic: the fraction of (positive, negative)
/// pairs in which the positive scores higher, a tie counting one half. It
/// equals the rank-sum form `(R₊ − n₊(n₊+1)/2) / (n₊ n₋)` with average
/// ranks for tied scores, and scikit-learn's
/// `roc_auc_score(positive, scores)` (the trapezoidal area under the curve
/// through every distinct threshold). The pair count is accumulated exactly
/// in integers (twice it, so ties stay whole), then divided once.
///
/// `None` when there are no positives or no negatives; errors on slices of
/// different lengths or a non-finite score.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> Result<Option<f64>> {
    if scores.len() != positive.len() {
        return Err(Error::InvalidArgument(format!(
            "{} scores but {} labels",
            scores.len(),
            positive.len()
        )));
    }
    if let Some(i) = scores.iter().position(|v| !v.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "score {i} is {}",
            scores[i]
        )));
    }
    let n_pos = positive.iter().filter(|&&p| p).count() as u128;
    let n_neg = positive.len() as u128 - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Ok(None);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Finite values compare totally; `partial_cmp` (unlike `total_cmp`)
    // keeps -0.0 and 0.0 equal, as they are for the classifier.
    order.sort_unstable_by(|&a, &b| {
        scores[a]
            .partial_cmp(&scores[b])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    // Walk groups of equal score upwards; each positive in a group beats the
    // negatives below it and ties those inside it.
    let (mut twice_wins, mut neg_below) = (0u128, 0u128);
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        let (mut pos_here, mut neg_here) = (0u128, 0u128);
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            if positive[order[end]] {
                pos_here += 1;
            } else {
                neg_here += 1;
            }
            end += 1;
        }
        twice_wins += pos_here * (2 * neg_below + neg_here);
        neg_below += neg_here;
        start = end;
    }
    Ok(Some(twice_wins as f64 / (2 * n_pos * n_neg) as f64))
}

/// The ROC curve of `scores` for the binary labels `positive`: the
/// (false-positive rate, true-positive rate) points at every distinct
/// threshold, from (0, 0) to (1, 1), tied scores moving together (the
/// points scikit-learn's `roc_curve` gives with `drop_intermediate=False`).
/// The trapezoidal area under them is [`roc_auc`]. `None` when there are no
/// positives or no negatives.
pub fn roc_curve(scores: &[f64], positive: &[bool]) -> Result<Option<Vec<(f64, f64)>>> {
    if scores.len() != positive.len() {
        return Err(Error::InvalidArgument(format!(
            "{} scores but {} labels",
            scores.len(),
            positive.len()
        )));
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "score {i} is {}",
            scores[i]
        )));
    }
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Ok(None);
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < order.len() {
        let s = scores[order[i]];
        while i < order.len() && scores[order[i]] == s {
            if positive[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        points.push((fp as f64 / n_neg as f64, tp as f64 / n_pos as f64));
    }
    Ok(Some(points))
}

/// Bland–Altman agreement between paired measurements.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlandAltman {
    /// Number of pairs.
    pub n: u64,
    /// Mean difference, prediction − truth.
    pub bias: f64,
    /// Sample standard deviation of the differences (divisor n − 1).
    pub sd: f64,
    /// Lower limit of agreement, `bias − 1.96·sd`.
    pub loa_low: f64,
    /// Upper limit of agreement, `bias + 1.96·sd`.
    pub loa_high: f64,
    /// Mean of the true values.
    pub mean_truth: f64,
    /// Mean of the predicted values.
    pub mean_pred: f64,
}

/// Bland–Altman statistics of `pred` against `truth` (paired by index).
///
/// Errors on slices of different lengths, fewer than 2 pairs (the sample
/// standard deviation needs n − 1 > 0), non-finite values, or values so
/// large that the statistics overflow.
pub fn bland_altman(truth: &[f64], pred: &[f64]) -> Result<BlandAltman> {
    if truth.len() != pred.len() {
        return Err(Error::InvalidArgument(format!(
            "{} true values but {} predictions",
            truth.len(),
            pred.len()
        )));
    }
    if truth.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "Bland–Altman needs at least 2 pairs, got {}",
            truth.len()
        )));
    }
    for (what, values) in [("true value", truth), ("prediction", pred)] {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "pair {i}: {what} is {}",
                values[i]
            )));
        }
    }
    let n = truth.len() as f64;
    let mean = |xs: &mut dyn Iterator<Item = f64>| xs.sum::<f64>() / n;
    let bias = mean(&mut truth.iter().zip(pred).map(|(t, p)| p - t));
    // Two passes: deviations from the mean, not E[d²] − E[d]², which loses
    // everything to cancellation when the bias dwarfs the spread.
    let ss: f64 = truth
        .iter()
        .zip(pred)
        .map(|(t, p)| (p - t - bias).powi(2))
        .sum();
    let sd = (ss / (n - 1.0)).sqrt();
    let stats = BlandAltman {
        n: truth.len() as u64,
        bias,
        sd,
        loa_low: bias - 1.96 * sd,
        loa_high: bias + 1.96 * sd,
        mean_truth: mean(&mut truth.iter().copied()),
        mean_pred: mean(&mut pred.iter().copied()),
    };
    let all = [
        stats.bias,
        stats.sd,
        stats.loa_low,
        stats.loa_high,
        stats.mean_truth,
        stats.mean_pred,
    ];
    if all.iter().any(|v| !v.is_finite()) {
        return Err(Error::InvalidArgument(
            "values too large: Bland–Altman statistics overflow".into(),
        ));
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: [&str; 3] = ["a", "b", "c"];

    fn close(got: Option<f64>, want: f64) {
        let g = got.unwrap_or_else(|| panic!("expected {want}, got None"));
        assert!((g - want).abs() < 1e-12, "got {g}, want {want}");
    }

    /// Expands a confusion matrix into (truth, pred) pairs.
    fn pairs(counts: &[[u64; 3]; 3]) -> (Vec<usize>, Vec<usize>) {
        let (mut t, mut p) = (Vec::new(), Vec::new());
        for (i, row) in counts.iter().enumerate() {
            for (j, &k) in row.iter().enumerate() {
                for _ in 0..k {
                    t.push(i);
                    p.push(j);
                }
            }
        }
        (t, p)
    }

    /// One-hot-ish scores whose argmax is `pred`.
    fn scores_for(pred: &[usize], n: usize) -> Vec<Vec<f64>> {
        pred.iter()
            .map(|&p| (0..n).map(|c| if c == p { 0.8 } else { 0.1 }).collect())
            .collect()
    }

    #[test]
    fn label_classes_follow_label_order() {
        assert_eq!(label_classes(), ["covid", "cap", "healthy"]);
        for l in Label::ALL {
            assert_eq!(label_classes()[l.index()], l.as_str());
        }
    }

    #[test]
    fn confusion_matrix_counts_pairs() {
        let m =
            ConfusionMatrix::from_pairs(&[0, 0, 1, 2, 2, 2], &[0, 1, 1, 2, 0, 2], &ABC).unwrap();
        assert_eq!(m.counts, vec![vec![1, 1, 0], vec![0, 1, 0], vec![1, 0, 2]]);
        assert_eq!(m.total(), 6);
        assert_eq!((m.support(2), m.predicted(0), m.correct()), (3, 2, 4));
        assert_eq!(m.classes, ABC);
    }

    #[test]
    fn confusion_matrix_refuses_bad_input() {
        let e = ConfusionMatrix::from_pairs(&[0, 3], &[0, 1], &ABC).unwrap_err();
        assert!(e.to_string().contains("scan 1: true label 3"), "{e}");
        let e = ConfusionMatrix::from_pairs(&[0, 1], &[0, 7], &ABC).unwrap_err();
        assert!(e.to_string().contains("scan 1: predicted label 7"), "{e}");
        let e = ConfusionMatrix::from_pairs(&[0, 1], &[0], &ABC).unwrap_err();
        assert!(e.to_string().contains("2 true labels but 1"), "{e}");
        assert!(ConfusionMatrix::from_pairs(&[0], &[0], &["only"]).is_err());
        assert!(ConfusionMatrix::from_pairs(&[0], &[0], &["a", "a"]).is_err());
    }

    #[test]
    fn report_of_hand_checked_matrix() {
        // truth\pred  a  b  c   support
        //   a         5  1  0   6
        //   b         2  3  1   6
        //   c         0  0  4   4
        // predicted   7  4  5   16
        // recall:    a 5/6, b 3/6 = 1/2, c 4/4 = 1
        // precision: a 5/7, b 3/4, c 4/5
        // F1 = 2TP/(2TP+FP+FN): a 10/(10+2+1) = 10/13, b 6/(6+1+3) = 3/5,
        //                       c 8/(8+1+0) = 8/9
        // accuracy 12/16 = 3/4
        let counts = [[5, 1, 0], [2, 3, 1], [0, 0, 4]];
        let (t, p) = pairs(&counts);
        let r = classification_report(&t, &scores_for(&p, 3), &ABC).unwrap();
        assert_eq!(r.confusion.counts, counts.map(|row| row.to_vec()).to_vec());
        assert_eq!(r.n, 16);
        close(r.accuracy, 3.0 / 4.0);
        let recall = [5.0 / 6.0, 1.0 / 2.0, 1.0];
        let precision = [5.0 / 7.0, 3.0 / 4.0, 4.0 / 5.0];
        let f1 = [10.0 / 13.0, 3.0 / 5.0, 8.0 / 9.0];
        for c in 0..3 {
            let s = &r.per_class[c];
            assert_eq!(s.class, ABC[c]);
            close(s.recall, recall[c]);
            close(s.precision, precision[c]);
            close(s.f1, f1[c]);
            // F1 here is also the harmonic mean, since both are defined.
            close(
                s.f1,
                2.0 * recall[c] * precision[c] / (recall[c] + precision[c]),
            );
        }
        assert_eq!(
            r.per_class.iter().map(|s| s.support).collect::<Vec<_>>(),
            [6, 6, 4]
        );
        close(r.macro_recall, (5.0 / 6.0 + 1.0 / 2.0 + 1.0) / 3.0);
        close(r.macro_precision, (5.0 / 7.0 + 3.0 / 4.0 + 4.0 / 5.0) / 3.0);
        close(r.macro_f1, (10.0 / 13.0 + 3.0 / 5.0 + 8.0 / 9.0) / 3.0);
    }

    #[test]
    fn never_predicted_class_has_no_precision_and_is_left_out_of_its_macro() {
        // truth\pred  a  b  c
        //   a         3  0  1
        //   b         1  0  1     b is never predicted
        //   c         0  0  2
        // precision: a 3/4, b undefined, c 2/4 → macro (3/4 + 1/2)/2 = 5/8
        //            (sklearn's zero_division=0 would give (3/4+0+1/2)/3)
        // recall:    a 3/4, b 0/2 = 0, c 2/2 = 1 → macro (3/4+0+1)/3 = 7/12
        // F1:        a 6/(6+1+1) = 3/4, b 0/(0+0+2) = 0, c 4/(4+2+0) = 2/3
        //            → macro (3/4 + 0 + 2/3)/3 = 17/36
        let (t, p) = pairs(&[[3, 0, 1], [1, 0, 1], [0, 0, 2]]);
        let r = classification_report(&t, &scores_for(&p, 3), &ABC).unwrap();
        assert_eq!(r.per_class[1].precision, None);
        close(r.per_class[1].recall, 0.0);
        close(r.per_class[1].f1, 0.0);
        close(r.macro_precision, 5.0 / 8.0);
        close(r.macro_recall, 7.0 / 12.0);
        close(r.macro_f1, 17.0 / 36.0);
        close(r.accuracy, 5.0 / 8.0);
    }

    #[test]
    fn absent_class_has_no_recall_auc_or_f1() {
        // Class c neither occurs nor is predicted: recall, precision, F1 and
        // AUC all undefined, and every macro average is over a and b only.
        // truth [a,a,b,b], pred [a,b,b,b]: recall a 1/2, b 1; precision
        // a 1, b 2/3; F1 a 2/(2+0+1) = 2/3, b 4/(4+1+0) = 4/5.
        let truth = [0, 0, 1, 1];
        let probs = vec![
            vec![0.9, 0.1, 0.0],
            vec![0.3, 0.6, 0.1],
            vec![0.2, 0.7, 0.1],
            vec![0.1, 0.8, 0.1],
        ];
        let r = classification_report(&truth, &probs, &ABC).unwrap();
        let c = &r.per_class[2];
        assert_eq!(
            (c.support, c.recall, c.precision, c.f1),
            (0, None, None, None)
        );
        assert_eq!(c.roc_auc, None);
        close(r.macro_recall, (0.5 + 1.0) / 2.0);
        close(r.macro_precision, (1.0 + 2.0 / 3.0) / 2.0);
        close(r.macro_f1, (2.0 / 3.0 + 4.0 / 5.0) / 2.0);
        // a: positives score 0.9, 0.3; negatives 0.2, 0.1 → 4/4 = 1.
        // b: positives 0.7, 0.8; negatives 0.1, 0.6 → 4/4 = 1.
        close(r.per_class[0].roc_auc, 1.0);
        close(r.per_class[1].roc_auc, 1.0);
        close(r.macro_roc_auc, 1.0);
    }

    #[test]
    fn argmax_ties_go_to_the_lowest_index() {
        let probs = vec![vec![0.4, 0.4, 0.2], vec![0.2, 0.4, 0.4], vec![1.0 / 3.0; 3]];
        let r = classification_report(&[1, 2, 2], &probs, &ABC).unwrap();
        // Predictions a, b, a.
        assert_eq!(
            r.confusion.counts,
            vec![vec![0, 0, 0], vec![1, 0, 0], vec![1, 1, 0]]
        );
    }

    #[test]
    fn empty_cohort_is_all_undefined() {
        let r = classification_report(&[], &[], &ABC).unwrap();
        assert_eq!((r.n, r.accuracy, r.macro_recall), (0, None, None));
        assert_eq!((r.macro_f1, r.macro_roc_auc), (None, None));
    }

    #[test]
    fn report_refuses_bad_probabilities() {
        let e = classification_report(&[0, 1], &[vec![0.5, 0.5, 0.0], vec![0.5, 0.5]], &ABC)
            .unwrap_err();
        assert!(
            e.to_string().contains("scan 1: 2 class probabilities"),
            "{e}"
        );
        let e = classification_report(&[0], &[vec![0.5, f64::NAN, 0.0]], &ABC).unwrap_err();
        assert!(
            e.to_string().contains("scan 0: probability of class 1"),
            "{e}"
        );
        let e = classification_report(&[0, 1], &[vec![0.5, 0.5, 0.0]], &ABC).unwrap_err();
        assert!(e.to_string().contains("2 true labels but 1"), "{e}");
        let e = classification_report(&[5], &[vec![0.5, 0.5, 0.0]], &ABC).unwrap_err();
        assert!(e.to_string().contains("true label 5"), "{e}");
    }

    #[test]
    fn roc_auc_hand_examples() {
        // Positives 0.35, 0.8; negatives 0.1, 0.4. Pairs won: 0.35>0.1,
        // 0.8>0.1, 0.8>0.4; lost 0.35<0.4 → 3/4.
        close(
            roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap(),
            0.75,
        );
        // Perfect separation and its reverse.
        let pos = [false, false, true, true];
        close(roc_auc(&[0.1, 0.2, 0.3, 0.4], &pos).unwrap(), 1.0);
        close(roc_auc(&[0.4, 0.3, 0.2, 0.1], &pos).unwrap(), 0.0);
        // Ties: positives 0.5, 0.5, 0.9; negatives 0.5, 0.2.
        // 0.5 vs 0.5 tie (½), 0.5 > 0.2 (1), twice; 0.9 wins both (2):
        // (1.5 + 1.5 + 2) / 6 = 5/6.
        close(
            roc_auc(
                &[0.5, 0.5, 0.9, 0.5, 0.2],
                &[true, true, true, false, false],
            )
            .unwrap(),
            5.0 / 6.0,
        );
        // All scores equal: every pair ties → 1/2.
        close(roc_auc(&[0.3; 4], &pos).unwrap(), 0.5);
        // -0.0 and 0.0 are the same score, so they tie.
        close(roc_auc(&[-0.0, 0.0], &[true, false]).unwrap(), 0.5);
    }

    #[test]
    fn roc_auc_equals_average_rank_formula() {
        // Rank-sum form with average ranks, computed independently here by
        // counting, for every score, how many are below and equal to it.
        let scores = [0.3, 0.7, 0.3, 0.1, 0.7, 0.7, 0.9, 0.3, 0.5, 0.1];
        let pos = [
            true, false, false, true, true, false, true, true, false, false,
        ];
        let rank = |s: f64| {
            let below = scores.iter().filter(|&&x| x < s).count() as f64;
            let equal = scores.iter().filter(|&&x| x == s).count() as f64;
            below + (equal + 1.0) / 2.0
        };
        let n_pos = pos.iter().filter(|&&p| p).count() as f64;
        let n_neg = scores.len() as f64 - n_pos;
        let r_pos: f64 = (0..scores.len())
            .filter(|&i| pos[i])
            .map(|i| rank(scores[i]))
            .sum();
        let want = (r_pos - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg);
        close(roc_auc(&scores, &pos).unwrap(), want);
    }

    #[test]
    fn roc_auc_undefined_or_refused() {
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]).unwrap(), None);
        assert_eq!(roc_auc(&[0.1, 0.2], &[false, false]).unwrap(), None);
        assert_eq!(roc_auc(&[], &[]).unwrap(), None);
        assert!(roc_auc(&[0.1], &[true, false]).is_err());
        assert!(roc_auc(&[0.1, f64::INFINITY], &[true, false]).is_err());
    }

    #[test]
    fn bland_altman_hand_example() {
        // truth [1, 2, 3, 4], pred [1.5, 2, 3.5, 5]: differences
        // [0.5, 0, 0.5, 1], bias 2/4 = 0.5; deviations [0, -0.5, 0, 0.5],
        // sum of squares 0.5, variance 0.5/3 = 1/6, sd = √(1/6).
        let b = bland_altman(&[1.0, 2.0, 3.0, 4.0], &[1.5, 2.0, 3.5, 5.0]).unwrap();
        let sd = (1.0f64 / 6.0).sqrt();
        assert_eq!(b.n, 4);
        close(Some(b.bias), 0.5);
        close(Some(b.sd), sd);
        close(Some(b.loa_low), 0.5 - 1.96 * sd);
        close(Some(b.loa_high), 0.5 + 1.96 * sd);
        close(Some(b.mean_truth), 2.5);
        close(Some(b.mean_pred), 3.0);
    }

    #[test]
    fn bland_altman_keeps_precision_under_large_bias() {
        // Differences 1e9 ± 1: a one-pass E[d²] − E[d]² would lose the
        // spread entirely; two passes give sd = 1 exactly.
        let truth = [0.0, 0.0, 0.0];
        let pred = [1e9 - 1.0, 1e9, 1e9 + 1.0];
        let b = bland_altman(&truth, &pred).unwrap();
        close(Some(b.bias), 1e9);
        close(Some(b.sd), 1.0);
    }

    #[test]
    fn bland_altman_refuses_bad_input() {
        assert!(bland_altman(&[1.0], &[1.0]).is_err());
        assert!(bland_altman(&[1.0, 2.0], &[1.0]).is_err());
        let e = bland_altman(&[1.0, f64::NAN], &[1.0, 2.0]).unwrap_err();
        assert!(e.to_string().contains("pair 1: true value is NaN"), "{e}");
        assert!(bland_altman(&[-f64::MAX, f64::MAX], &[f64::MAX, -f64::MAX]).is_err());
    }

    #[test]
    fn report_serializes_undefined_as_null() {
        let (t, p) = pairs(&[[1, 0, 0], [1, 0, 0], [0, 0, 1]]);
        let r = classification_report(&t, &scores_for(&p, 3), &ABC).unwrap();
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["per_class"][1]["precision"].is_null());
        assert_eq!(json["confusion"]["counts"][1][0], 1);
        assert_eq!(json["n"], 3);
    }

    #[test]
    fn the_area_under_the_roc_curve_is_the_auc() {
        let scores = [0.9, 0.8, 0.8, 0.4, 0.3, 0.3, 0.1];
        let pos = [true, false, true, true, false, true, false];
        let pts = roc_curve(&scores, &pos).unwrap().unwrap();
        assert_eq!(pts.first(), Some(&(0.0, 0.0)));
        assert_eq!(pts.last(), Some(&(1.0, 1.0)));
        assert_eq!(
            pts.len(),
            6,
            "one point per distinct score, plus the origin"
        );
        let area: f64 = pts
            .windows(2)
            .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
            .sum();
        let auc = roc_auc(&scores, &pos).unwrap().unwrap();
        assert!((area - auc).abs() < 1e-12, "{area} vs {auc}");
        assert!(roc_curve(&[0.5], &[true]).unwrap().is_none());
    }
}
