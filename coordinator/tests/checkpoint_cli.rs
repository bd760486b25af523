//! Checkpoints that would load but cannot give a meaningful answer are
//! refused by `predict` and `export` with one line naming the file (exit 65),
//! and `export` writes nothing for them.

use std::path::Path;
use std::process::{Command, Output};

use multir_common::model::{Checkpoint, shipped};

fn multir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_multir"))
        .args(args)
        .output()
        .expect("run multir")
}

/// The shipped model with one weight made NaN, written without validation.
fn nan_checkpoint(path: &Path) -> String {
    let mut ck: Checkpoint = shipped::checkpoint().unwrap();
    let name = ck.tensors.keys().next().unwrap().clone();
    ck.tensors.get_mut(&name).unwrap().data[0] = f32::NAN;
    std::fs::write(path, ck.to_bytes().unwrap()).unwrap();
    name
}

#[test]
fn nan_weights_are_refused_by_predict_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("nan.safetensors");
    let tensor = nan_checkpoint(&bad);
    let scan = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nifti/int16_ras.nii");
    let out = dir.path().join("pred");
    let exported = dir.path().join("exported.safetensors");
    for args in [
        vec![
            "predict",
            scan.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--checkpoint",
            bad.to_str().unwrap(),
            "--device",
            "cpu",
        ],
        vec![
            "export",
            "--checkpoint",
            bad.to_str().unwrap(),
            "--out",
            exported.to_str().unwrap(),
        ],
    ] {
        let o = multir(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(65), "{args:?}: {err}");
        assert!(
            err.contains(bad.to_str().unwrap()) && err.contains(&tensor) && err.contains("NaN"),
            "{err}"
        );
    }
    assert!(!exported.exists());
    // The shipped model itself exports, and what was written reads back.
    let good = dir.path().join("good.safetensors");
    std::fs::write(&good, shipped::checkpoint().unwrap().to_bytes().unwrap()).unwrap();
    let o = multir(&[
        "export",
        "--checkpoint",
        good.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(Checkpoint::read_path(&exported).is_ok());
}
