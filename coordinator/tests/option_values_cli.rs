//! Option values that make no sense are usage errors (exit 2, clap's
//! message naming the option) at parse time, before any file is read; and
//! `multir metrics` prints no negative zeros and no unit after "undefined".

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn multir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_multir"))
        .args(args)
        .output()
        .expect("run multir")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/metrics")
        .join(name)
}

#[test]
fn bad_option_values_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    // Inputs that do not exist: were the option accepted, the run would fail
    // later on the missing file with 74, not 2.
    let scan = dir.path().join("missing.nii.gz");
    let scan = scan.to_str().unwrap();
    let manifest = dir.path().join("missing.csv");
    let manifest = manifest.to_str().unwrap();
    let truth = fixture("identical_truth.nii.gz");
    let pred = fixture("identical_pred.nii.gz");
    let (truth, pred) = (truth.to_str().unwrap(), pred.to_str().unwrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["predict", scan, "--out", out, "--overlap", "1.0"],
            "--overlap",
        ),
        (
            vec!["predict", scan, "--out", out, "--overlap", "NaN"],
            "--overlap",
        ),
        (
            vec!["predict", scan, "--out", out, "--threshold", "2"],
            "--threshold",
        ),
        (
            vec!["predict", scan, "--out", out, "--threshold", "0"],
            "--threshold",
        ),
        (
            vec!["predict", scan, "--out", out, "--window-batch", "0"],
            "--window-batch",
        ),
        (
            vec![
                "evaluate",
                "--manifest",
                manifest,
                "--out",
                out,
                "--min-accuracy",
                "NaN",
            ],
            "--min-accuracy",
        ),
        (
            vec![
                "evaluate",
                "--manifest",
                manifest,
                "--out",
                out,
                "--min-dice",
                "NaN",
            ],
            "--min-dice",
        ),
        (
            vec![
                "evaluate",
                "--manifest",
                manifest,
                "--out",
                out,
                "--tolerance-mm",
                "NaN",
            ],
            "--tolerance-mm",
        ),
        (
            vec![
                "metrics",
                "--truth",
                truth,
                "--pred",
                pred,
                "--tolerance-mm",
                "NaN",
            ],
            "--tolerance-mm",
        ),
        (
            vec![
                "metrics",
                "--truth",
                truth,
                "--pred",
                pred,
                "--tolerance-mm=-1",
            ],
            "--tolerance-mm",
        ),
    ];
    for (args, option) in cases {
        let o = multir(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(option), "{args:?}: {err}");
    }
    // The same checks apply to the environment fallbacks.
    let o = Command::new(env!("CARGO_BIN_EXE_multir"))
        .args(["predict", scan, "--out", out])
        .env("MULTIR_THRESHOLD", "NaN")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn metrics_print_no_negative_zero() {
    let truth = fixture("identical_truth.nii.gz");
    let pred = fixture("identical_pred.nii.gz");
    let (truth, pred) = (truth.to_str().unwrap(), pred.to_str().unwrap());
    let o = multir(&[
        "metrics",
        "--truth",
        truth,
        "--pred",
        pred,
        "--tolerance-mm=-0",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json = String::from_utf8(o.stdout).unwrap();
    assert!(!json.contains("-0"), "{json}");
    let o = multir(&[
        "metrics",
        "--truth",
        truth,
        "--pred",
        pred,
        "--tolerance-mm=-0",
    ]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(!text.contains("-0"), "{text}");
    assert!(text.contains("@0 mm"), "{text}");
    // Both masks empty: the distances are undefined, not "undefined mm".
    let empty = fixture("both_empty_truth.nii.gz");
    let empty = empty.to_str().unwrap();
    let o = multir(&["metrics", "--truth", empty, "--pred", empty]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("hd95                 undefined\n"), "{text}");
    assert!(
        !text.contains("undefined mm") && !text.contains("-0"),
        "{text}"
    );
}
