//! `multir synth` and `multir metrics` end to end.

use std::path::Path;
use std::process::{Command, Output};

fn multir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_multir"))
        .args(args)
        .output()
        .expect("run multir")
}

fn synth(out: &Path, seed: &str) {
    let o = multir(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--scans",
        "3",
        "--seed",
        seed,
        "--scale",
        "0.4",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn synth_is_deterministic_and_writes_a_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    synth(&a, "7");
    synth(&b, "7");
    synth(&c, "8");
    let manifest = std::fs::read_to_string(a.join("manifest.csv")).unwrap();
    let lines: Vec<&str> = manifest.lines().collect();
    assert_eq!(lines[0], "scan_id,image,label,mask");
    assert_eq!(lines.len(), 4);
    let mut labels: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').nth(2).unwrap())
        .collect();
    labels.sort();
    assert_eq!(labels, ["cap", "covid", "healthy"]);
    for line in &lines[1..] {
        let f: Vec<&str> = line.split(',').collect();
        let same = std::fs::read(a.join(f[1])).unwrap() == std::fs::read(b.join(f[1])).unwrap();
        assert!(same, "{} differs between runs with one seed", f[1]);
        assert!(a.join(f[3]).is_file());
    }
    assert_ne!(std::fs::read(a.join("manifest.csv")).unwrap().len(), 0);
    let first = lines[1].split(',').nth(1).unwrap();
    assert_ne!(
        std::fs::read(a.join(first)).unwrap(),
        std::fs::read(c.join(first)).unwrap()
    );
    // Zero scans is refused with a clear message.
    let o = multir(&[
        "synth",
        "--out",
        dir.path().join("z").to_str().unwrap(),
        "--scans",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&o.stderr).contains("at least one scan"));
}

#[test]
fn metrics_compares_masks_and_refuses_other_grids() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("cohort");
    synth(&d, "3");
    let manifest = std::fs::read_to_string(d.join("manifest.csv")).unwrap();
    let rows: Vec<Vec<&str>> = manifest
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let sick = rows.iter().find(|r| r[2] != "healthy").unwrap();
    let mask = d.join(sick[3]);
    let o = multir(&[
        "metrics",
        "--truth",
        mask.to_str().unwrap(),
        "--pred",
        mask.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["dice"], 1.0);
    assert_eq!(j["surface_dice"], 1.0);
    assert_eq!(j["hausdorff"], 0.0);
    assert!(j["volume_truth_ml"].as_f64().unwrap() > 0.0);
    // The same mask on a coarser grid: an error naming the grids, exit 65.
    let coarse = dir.path().join("coarse.nii.gz");
    let o = multir(&[
        "resample",
        mask.to_str().unwrap(),
        "--spacing",
        "4,4,4",
        "--nearest",
        "--out",
        coarse.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = multir(&[
        "metrics",
        "--truth",
        mask.to_str().unwrap(),
        "--pred",
        coarse.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(65), "{err}");
    assert!(err.contains("grid"), "{err}");
}

/// A reader that closes the pipe early (`| head -1`) ends the output; it is
/// neither a panic nor an error exit.
#[test]
fn a_closed_stdout_is_the_end_of_output_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), "3");
    let mask = dir.path().join("masks/synth-00000.nii.gz");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_multir"))
        .args(["resample", mask.to_str().unwrap(), "--spacing", "4,4,4"])
        .args(["--nearest", "--json", "--out"])
        .arg(dir.path().join("coarse.nii.gz"))
        .stdout(writer)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{:?}: {err}", o.status);
    assert!(!err.contains("panicked"), "{err}");
    // It did its work before the write failed.
    assert!(dir.path().join("coarse.nii.gz").is_file());
}
