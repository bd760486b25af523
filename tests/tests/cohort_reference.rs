//! Cohort statistics against scikit-learn and numpy.
//!
//! `fixtures/cohort/make_reference.py` drew three random 60-scan, 3-class
//! cohorts (plain, scores rounded to one decimal so that they tie, and one
//! class never predicted) and a 60-pair Bland–Altman example, and wrote
//! scikit-learn's numbers (`zero_division=np.nan`, `roc_auc_score` one vs
//! rest) and numpy's into `reference.json`. Every number must match to
//! 1e-12, with `null` exactly where scikit-learn gives NaN.

use std::path::PathBuf;

use multir_common::metrics::cohort::{bland_altman, classification_report, label_classes};
use serde_json::Value;

fn reference() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/cohort/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Equal to 1e-12 (relative above 1), or both null.
fn same(got: &Value, want: &Value) -> bool {
    match (got.as_f64(), want.as_f64()) {
        (Some(g), Some(w)) => (g - w).abs() <= 1e-12 * w.abs().max(1.0),
        (None, None) => got.is_null() && want.is_null(),
        _ => false,
    }
}

#[test]
fn classification_matches_sklearn() {
    let json = reference();
    let cases = json["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    let mut failures = Vec::new();
    let mut nulls = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let classes: Vec<String> = case["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(classes, label_classes(), "{name}: class order");
        let truth: Vec<usize> = case["truth"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as usize)
            .collect();
        let probs: Vec<Vec<f64>> = case["probs"]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        let want = &case["expected"];
        let report = classification_report(&truth, &probs, &classes).unwrap();
        let got = serde_json::to_value(&report).unwrap();

        // Predictions are implied by the confusion matrix only in aggregate;
        // check them scan by scan through the matrix of (truth, pred) pairs.
        let pred: Vec<u64> = want["pred"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        let mut counts = vec![vec![0u64; 3]; 3];
        for (t, p) in truth.iter().zip(&pred) {
            counts[*t][*p as usize] += 1;
        }
        assert_eq!(report.confusion.counts, counts, "{name}: argmax");
        assert_eq!(got["confusion"]["counts"], want["confusion"], "{name}");
        assert_eq!(got["n"], want["n"], "{name}");

        for (field, key) in [
            ("support", "support"),
            ("recall", "recall"),
            ("precision", "precision"),
            ("f1", "f1"),
            ("roc_auc", "roc_auc"),
        ] {
            for c in 0..3 {
                let (g, w) = (&got["per_class"][c][field], &want[key][c]);
                nulls += usize::from(w.is_null());
                if !same(g, w) {
                    failures.push(format!("{name} {field}[{c}]: got {g}, want {w}"));
                }
            }
        }
        for field in [
            "accuracy",
            "macro_recall",
            "macro_precision",
            "macro_f1",
            "macro_roc_auc",
        ] {
            let (g, w) = (&got[field], &want[field]);
            if !same(g, w) {
                failures.push(format!("{name} {field}: got {g}, want {w}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The never-predicted class's precision must have been compared as null.
    assert!(nulls >= 1, "no undefined value in the reference");
}

#[test]
fn bland_altman_matches_numpy() {
    let json = reference();
    let ba = &json["bland_altman"];
    let got = bland_altman(&floats(&ba["truth"]), &floats(&ba["pred"])).unwrap();
    let got = serde_json::to_value(got).unwrap();
    let want = &ba["expected"];
    assert_eq!(got["n"], want["n"]);
    for field in [
        "bias",
        "sd",
        "loa_low",
        "loa_high",
        "mean_truth",
        "mean_pred",
    ] {
        assert!(
            same(&got[field], &want[field]),
            "{field}: got {}, want {}",
            got[field],
            want[field]
        );
    }
}
