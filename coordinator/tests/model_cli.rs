//! `multir train`, `run` and `predict` end to end on small phantoms
//! with the test-sized network on a coarse grid (seconds on a CPU), and the
//! shipped model held to its quality bar on a full-size unseen cohort (about
//! a minute and a half on two cores).

use std::path::Path;
use std::process::{Command, Output};

fn multir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_multir"))
        .args(args)
        .env("MULTIR_DEVICE", "cpu")
        // The tests that rely on the default checkpoint mean the shipped one.
        .env_remove("MULTIR_CHECKPOINT")
        .output()
        .expect("run multir")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn synth(out: &Path, scans: &str, seed: &str, scale: &str) {
    ok(&multir(&[
        "synth",
        "--out",
        s(out),
        "--scans",
        scans,
        "--seed",
        seed,
        "--scale",
        scale,
    ]));
}

fn train(data: &Path, out: &Path, steps: &str, extra: &[&str]) -> Output {
    let manifest = data.join("manifest.csv");
    let mut args = vec![
        "train",
        "--manifest",
        s(&manifest),
        "--out",
        s(out),
        "--model",
        "tiny",
        "--spacing",
        "6,6,6",
        "--steps",
        steps,
        "--eval-every",
        "2",
        "--folds",
        "3",
        "--batch",
        "2",
    ];
    args.extend_from_slice(extra);
    multir(&args)
}

#[test]
fn train_run_and_predict_write_what_they_promise() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, "6", "11", "0.4");
    let run = dir.path().join("run");
    let flags = ["--jitter", "0.02", "--soft-masks", "--bce", "0.5"];
    let summary: serde_json::Value =
        serde_json::from_str(&ok(&train(&data, &run, "4", &flags))).unwrap();
    assert_eq!(summary["steps"], 4);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("train_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["sampling"]["jitter"], 0.02, "{config}");
    assert_eq!(config["sampling"]["soft_masks"], true, "{config}");
    assert_eq!(config["loss"]["bce"], 0.5, "{config}");
    for (flag, value) in [("--jitter", "0.7"), ("--bce", "20")] {
        let o = train(&data, &dir.path().join("bad"), "1", &[flag, value]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&flag[2..]), "{err}");
    }
    for f in [
        "best.safetensors",
        "last.safetensors",
        "history.jsonl",
        "train_config.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let history = std::fs::read_to_string(run.join("history.jsonl")).unwrap();
    assert_eq!(history.lines().count(), 2, "one line per validation");

    // Resume to 6 steps from the 4-step run.
    let last = run.join("last.safetensors");
    let resumed = ok(&train(
        &data,
        &run,
        "6",
        &[&["--resume", s(&last)][..], &flags].concat(),
    ));
    assert!(resumed.contains("\"steps\": 6"), "{resumed}");

    // Export: the same weights without the training state; it evaluates
    // (below) but cannot resume.
    let exported = dir.path().join("model.safetensors");
    let said = ok(&multir(&[
        "export",
        "--checkpoint",
        s(&last),
        "--out",
        s(&exported),
    ]));
    assert!(said.contains("step 6"), "{said}");
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&exported) < size(&last) / 2, "optimizer state dropped");
    let o = train(
        &data,
        &dir.path().join("again"),
        "8",
        &[&["--resume", s(&exported)][..], &flags].concat(),
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no training state"), "{err}");

    // Evaluate: a manifest with one unreadable scan gives an error row, the rest still run.
    let manifest = std::fs::read_to_string(data.join("manifest.csv")).unwrap();
    std::fs::write(data.join("broken.nii.gz"), b"not a nifti file").unwrap();
    let mut lines: Vec<String> = manifest.lines().map(String::from).collect();
    lines.push("broken,broken.nii.gz,covid,".into());
    std::fs::write(data.join("with_broken.csv"), lines.join("\n") + "\n").unwrap();
    let ev = dir.path().join("eval");
    let ck = exported;
    let o = multir(&[
        "run",
        "--manifest",
        s(&data.join("with_broken.csv")),
        "--checkpoint",
        s(&ck),
        "--out",
        s(&ev),
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a failed scan must make the run fail"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ev.join("cohort.json")).unwrap()).unwrap();
    assert_eq!(report["scans"], 7);
    assert_eq!(report["errors"], 1);
    assert_eq!(report["classification"]["n"], 6);
    let broken: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ev.join("fragments/broken.json")).unwrap())
            .unwrap();
    assert_eq!(broken["scan"]["status"], "error");
    let why = broken["scan"]["error"].as_str().unwrap();
    assert!(why.contains("broken.nii.gz"), "{why}");
    assert!(ev.join("masks/synth-00000.nii.gz").is_file());
    assert!(ev.join("scans.parquet").is_file() && ev.join("lesions.parquet").is_file());

    // A quality bar the barely trained model cannot meet exits with 3
    // (`evaluate` is `run` by its old name; the finished scans are kept).
    let o = multir(&[
        "evaluate",
        "--manifest",
        s(&data.join("manifest.csv")),
        "--checkpoint",
        s(&ck),
        "--out",
        s(&ev),
        "--min-accuracy",
        "1.01",
    ]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Predict writes mask, probabilities and Grad-CAM on the input's grid.
    let pr = dir.path().join("pred");
    let image = data.join("images/synth-00001.nii.gz");
    let out = ok(&multir(&[
        "predict",
        s(&image),
        "--checkpoint",
        s(&ck),
        "--out",
        s(&pr),
        "--probabilities",
        "--gradcam",
    ]));
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        line["classes"],
        serde_json::json!(["covid", "cap", "healthy"])
    );
    let sum: f64 = line["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-4, "{line}");
    assert!(line["lung_volume_ml"].as_f64().is_some(), "{line}");
    for suffix in ["mask", "prob", "gradcam"] {
        let f = pr.join(format!("synth-00001_{suffix}.nii.gz"));
        let info = ok(&multir(&["inspect", s(&f), "--json"]));
        let src = ok(&multir(&["inspect", s(&image), "--json"]));
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&info).unwrap(),
            serde_json::from_str(&src).unwrap(),
        );
        assert_eq!(a["shape"], b["shape"], "{suffix}");
        assert_eq!(a["affine"], b["affine"], "{suffix}");
    }
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, "1", "2", "0.3");
    let image = data.join("images/synth-00000.nii.gz");
    let fake = dir.path().join("fake.safetensors");
    std::fs::write(&fake, b"definitely not safetensors").unwrap();
    let o = multir(&[
        "predict",
        s(&image),
        "--checkpoint",
        s(&fake),
        "--out",
        s(dir.path()),
    ]);
    assert_eq!(o.status.code(), Some(65));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("fake.safetensors") && err.contains("safetensors"),
        "{err}"
    );
    let o = multir(&[
        "predict",
        s(&image),
        "--checkpoint",
        "/nonexistent.safetensors",
        "--out",
        s(dir.path()),
    ]);
    assert_eq!(
        o.status.code(),
        Some(74),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The shipped model's figures, as its model card reports them: on the 60
/// phantoms of seed 7777 (never used in training or model selection)
/// `multir run` with the default checkpoint must reach accuracy 0.90 and
/// mean volume Dice 0.68 (it measured 0.933 and 0.703), or exit 3. This
/// guards the card's figures against any change to preprocessing,
/// inference, the phantoms or the model file. The project's bar is higher
/// (0.95 and 0.85); the interim model does not meet it yet, and the card
/// says so.
#[test]
fn the_shipped_model_meets_its_quality_bar_on_the_unseen_seed() {
    let dir = tempfile::tempdir().unwrap();
    let (data, eval) = (dir.path().join("test"), dir.path().join("eval"));
    synth(&data, "60", "7777", "1.0");
    let manifest = data.join("manifest.csv");
    let o = multir(&[
        "-q",
        "run",
        "--manifest",
        s(&manifest),
        "--out",
        s(&eval),
        "--min-accuracy",
        "0.90",
        "--min-dice",
        "0.68",
    ]);
    let text = std::fs::read_to_string(eval.join("cohort.json")).unwrap();
    let e: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (acc, dice) = (
        e["classification"]["accuracy"].as_f64().unwrap(),
        e["segmentation"]["mean_dice"].as_f64().unwrap(),
    );
    assert!(
        o.status.success(),
        "accuracy {acc:.3}, mean Dice {dice:.3}; status {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(e["scans"], 60);
    assert_eq!(e["errors"], 0);
    assert!(acc >= 0.90 && dice >= 0.68, "{acc} {dice}");
}

/// The shipped model on real chest CT: pyradiomics' two scans of
/// lung-cancer patients (contrast-enhanced, 5 mm slices; no pneumonia),
/// fetched by `scripts/fetch-real-ct`. Neither has COVID-19 or pneumonia,
/// no lesion voxel may lie outside the lung region, and every lesion must
/// touch the lungs. The project's bar is a lesion volume under 2 % of the
/// lung volume and the class "healthy": the volume is held to it (1.3 % and
/// 0 %; 47 % and 56 % for the model that saw the whole scan). The interim
/// model calls lung2 healthy but lung1 CAP (p 0.62; see the model card), so
/// the class is printed, and only a COVID-19 call (a tumour is not COVID-19)
/// fails.
/// Without the scans it says why it skips; under `CI=true` that is a
/// failure.
#[test]
fn the_shipped_model_is_sane_on_real_chest_ct() {
    use multir_common::{io, model::shipped, preprocess};
    let test = "the_shipped_model_is_sane_on_real_chest_ct";
    let dir = multir_tests::real_ct_dir();
    let scans = ["lung1_image.nrrd", "lung2_image.nrrd"].map(|n| dir.join(n));
    if let Some(p) = scans.iter().find(|p| !p.is_file()) {
        let why = format!("{} is missing: run scripts/fetch-real-ct", p.display());
        return multir_tests::skip(test, &why).unwrap_or(());
    }
    let out = tempfile::tempdir().unwrap();
    let stdout = ok(&multir(&[
        "-q",
        "predict",
        s(&scans[0]),
        s(&scans[1]),
        "--out",
        s(out.path()),
    ]));
    let pre = shipped::checkpoint().unwrap().meta.preprocess;
    assert!(
        pre.lung_region.is_some(),
        "the shipped model sees the lungs only"
    );
    let rows: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for (row, scan) in rows.iter().zip(&scans) {
        let name = scan.file_name().unwrap().to_string_lossy();
        let lesion = row["lesion_volume_ml"].as_f64().unwrap();
        let lung = row["lung_volume_ml"].as_f64().unwrap();
        eprintln!(
            "{name}: {} {:?}, lesion {lesion:.1} mL of {lung:.0} mL lung, {} mL outside the lungs, {} mL removed",
            row["predicted_class"],
            row["probabilities"],
            row["lesion_outside_lungs_ml"],
            row["lesion_removed_ml"]
        );
        assert!(lung > 1000.0, "{name}: lungs found, {lung} mL");
        assert!(lesion < 0.02 * lung, "{name}: {lesion} mL of lesion");
        let outside = row["lesion_outside_lungs_ml"].as_f64().unwrap();
        assert!(
            outside < 1e-6,
            "{name}: {outside} mL of lesion outside the lungs"
        );
        assert!(row["lesion_removed_ml"].as_f64().is_some(), "{name}: {row}");
        assert_ne!(row["predicted_class"], "covid", "{name}: {row}");
        // Voxel for voxel on the scan's own grid.
        let ct = io::load_path(scan, &io::LoadOptions::default())
            .unwrap()
            .volume;
        let mask_file = row["files"][0].as_str().unwrap();
        let mask = io::load_path(mask_file, &io::LoadOptions::default())
            .unwrap()
            .volume;
        let region = preprocess::prepare(&ct, &pre)
            .unwrap()
            .region_on_source()
            .unwrap()
            .unwrap();
        let outside = mask
            .data()
            .iter()
            .zip(region.data())
            .filter(|(m, r)| **m > 0.0 && **r == 0.0)
            .count();
        assert_eq!(outside, 0, "{name}: lesion voxels outside the lung region");
    }
}
