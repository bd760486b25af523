//! Our NRRD reader on two real chest CTs against SimpleITK.
//!
//! The scans (pyradiomics' lung1 and lung2 test cases, with tumour labels)
//! are not in the repository: `scripts/fetch-real-ct` downloads them into
//! the cache; `scripts/test` runs it before the tests. Without the scans the
//! test says why it skips; under CI (`CI=true`) that is a failure.

use std::path::PathBuf;

use multir_common::io::{self, LoadOptions};
use multir_tests::{
    Mismatches, affine, dims3, fixtures_dir, num, nums, python, real_ct_dir, run_python, skip,
};

#[test]
fn real_chest_cts_read_as_simpleitk_reads_them() {
    let dir = real_ct_dir();
    let names = [
        "lung1_image.nrrd",
        "lung1_label.nrrd",
        "lung2_image.nrrd",
        "lung2_label.nrrd",
    ];
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    if let Some(p) = paths.iter().find(|p| !p.is_file()) {
        let why = format!("{} is missing: run scripts/fetch-real-ct", p.display());
        return skip("real_chest_cts_read_as_simpleitk_reads_them", &why).unwrap_or(());
    }
    let Some(py) = python("real_chest_cts_read_as_simpleitk_reads_them") else {
        return;
    };
    let script = fixtures_dir("nrrd").join("describe_sitk.py");
    let args: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
    let (ok, out) = run_python(&py, &script, &args);
    assert!(ok, "describe_sitk.py failed\n{out}");
    let json = out
        .split("--- stdout ---\n")
        .nth(1)
        .and_then(|s| s.split("\n--- stderr ---").next())
        .expect("stdout section");
    let want: serde_json::Value = serde_json::from_str(json.trim()).expect("JSON from SimpleITK");
    let mut m = Mismatches::new();
    for p in &paths {
        let w = &want[p.display().to_string()];
        let l = io::load_path(p, &LoadOptions::default()).expect("our reader reads it");
        let name = p.file_name().unwrap().to_string_lossy();
        m.eq(
            &format!("{name} shape"),
            l.info.shape,
            dims3(&w["shape"], "shape"),
        );
        m.eq(
            &format!("{name} dtype"),
            l.info.dtype.as_str(),
            w["dtype"].as_str().unwrap(),
        );
        for (a, s) in nums(&w["spacing"], "spacing").into_iter().enumerate() {
            m.abs(
                &format!("{name} spacing[{a}]"),
                l.info.spacing_mm[a],
                s,
                1e-9,
            );
        }
        m.affine(
            &format!("{name} affine"),
            &l.info.affine,
            &affine(&w["affine"], "affine"),
            1e-9,
        );
        let stats = l.volume.stats();
        m.eq(&format!("{name} min"), stats.min, num(&w["min"], "min"));
        m.eq(&format!("{name} max"), stats.max, num(&w["max"], "max"));
        // Integer voxels: the f64 sum is exact, so equal means every voxel
        // landed (a shifted or misread block would change it).
        let sum: f64 = l.volume.data().iter().map(|&v| v as f64).sum();
        m.eq(&format!("{name} sum"), sum, num(&w["sum"], "sum"));
        m.eq(
            &format!("{name} orientation"),
            l.info.affine.axcodes(),
            "LPS".into(),
        );
    }
    m.assert_none("real chest CTs vs SimpleITK");
}
