//! `multir inspect` end to end: good files give the documented JSON, bad
//! files give one clear error line naming the file, a non-zero exit code,
//! no panic, and no time spent allocating what a lying header asks for.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use multir_common::io::nifti::{self, Dtype, Version, WriteOptions};
use multir_common::{Affine, Volume};

fn multir(args: &[&str]) -> (Output, Duration) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_multir"))
        .args(args)
        .output()
        .expect("run multir");
    (out, t.elapsed())
}

fn lps_volume() -> Volume {
    let dims = [6, 5, 4];
    let mut a = Affine::from_spacing_origin([0.7, 0.8, 2.5], [10.0, 20.0, -30.0]);
    a.0[0][0] = -0.7;
    a.0[1][1] = -0.8;
    let data = (0..120).map(|v| v as f32 * 10.0 - 1000.0).collect();
    Volume::new(data, dims, a).unwrap()
}

fn nifti_bytes(vol: &Volume, opts: &WriteOptions) -> Vec<u8> {
    let mut b = Vec::new();
    nifti::write(&mut b, vol, opts).unwrap();
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn put_i16(b: &mut [u8], off: usize, v: i16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn save(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn json_describes_the_file_in_its_own_axes() {
    let dir = tempfile::tempdir().unwrap();
    let vol = lps_volume();
    let path = dir.path().join("scan.nii.gz");
    nifti::write_path(&path, &vol, &WriteOptions::ct_int16()).unwrap();
    let (out, _) = multir(&["inspect", path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["format"], "NIfTI-1");
    assert_eq!(j["dtype"], "int16");
    assert_eq!(j["orientation"], "LPS");
    assert_eq!(j["shape"], serde_json::json!([6, 5, 4]));
    let sp: Vec<f64> = serde_json::from_value(j["spacing_mm"].clone()).unwrap();
    for (a, b) in sp.iter().zip([0.7, 0.8, 2.5]) {
        assert!((a - b).abs() < 1e-6);
    }
    let aff: Vec<Vec<f64>> = serde_json::from_value(j["affine"].clone()).unwrap();
    assert!((aff[0][0] + 0.7).abs() < 1e-6 && (aff[2][3] + 30.0).abs() < 1e-6);
    assert_eq!(j["min"], -1000.0);
    assert_eq!(j["max"], 190.0);
    assert!((j["mean"].as_f64().unwrap() - (-405.0)).abs() < 1e-9);
    // Human summary mentions the same facts.
    let (out, _) = multir(&["inspect", path.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("LPS") && text.contains("6 x 5 x 4"), "{text}");
}

#[test]
fn nifti2_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.nii");
    let opts = WriteOptions {
        version: Version::Nifti2,
        dtype: Dtype::F64,
        ..WriteOptions::float32()
    };
    nifti::write_path(&path, &lps_volume(), &opts).unwrap();
    let (out, _) = multir(&["inspect", "--json", path.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (j["format"].as_str(), j["dtype"].as_str()),
        (Some("NIfTI-2"), Some("float64"))
    );
}

/// Each bad input: file name, expected words in the message, exit code.
#[test]
fn bad_inputs_fail_cleanly_and_fast() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = nifti_bytes(&lps_volume(), &WriteOptions::mask());
    let mut cases: Vec<(PathBuf, &str, i32)> = Vec::new();

    cases.push((d.join("missing.nii.gz"), "No such file", 74));
    let mut b = good.clone();
    b[344..348].copy_from_slice(b"abc\0");
    cases.push((save(d, "magic.nii", &b), "magic", 65));
    let gz = gzip(&good);
    cases.push((save(d, "cut.nii.gz", &gz[..gz.len() / 2]), "truncated", 65));
    let mut bomb = good.clone();
    for axis in 1..4 {
        put_i16(&mut bomb, 40 + 2 * axis, 32000);
    }
    cases.push((
        save(d, "bomb.nii.gz", &gzip(&bomb)),
        "exceeds the limit",
        65,
    ));
    // 1000^3 voxels is under the default limit; the data is not there.
    let mut liar = good.clone();
    for axis in 1..4 {
        put_i16(&mut liar, 40 + 2 * axis, 1000);
    }
    cases.push((save(d, "liar.nii.gz", &gzip(&liar)), "truncated", 65));
    cases.push((save(d, "liar.nii", &liar), "truncated", 65));
    let mut zero = good.clone();
    put_i16(&mut zero, 44, 0);
    cases.push((save(d, "zero.nii", &zero), "dim[2] = 0", 65));
    let mut neg = good.clone();
    neg[84..88].copy_from_slice(&(-1.0f32).to_le_bytes());
    cases.push((save(d, "negspacing.nii", &neg), "pixdim[2]", 65));
    let mut four = good.clone();
    put_i16(&mut four, 40, 4);
    put_i16(&mut four, 48, 3);
    cases.push((save(d, "fourd.nii", &four), "4D data", 65));
    cases.push((
        save(d, "text.nii", b"hello, not an image\n"),
        "not a NIfTI file",
        65,
    ));

    for (path, words, code) in cases {
        let (out, took) = multir(&["inspect", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{}: {err}", path.display());
        assert!(
            err.contains(path.to_str().unwrap()),
            "error does not name the file: {err}"
        );
        assert!(
            err.contains(words),
            "{}: {err:?} lacks {words:?}",
            path.display()
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            took < Duration::from_secs(1),
            "{} took {took:?}",
            path.display()
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn voxel_limit_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.nii");
    nifti::write_path(&path, &lps_volume(), &WriteOptions::mask()).unwrap();
    let (out, _) = multir(&["inspect", path.to_str().unwrap(), "--max-voxels", "100"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("120 voxels exceeds the limit of 100"));
    let ok = Command::new(env!("CARGO_BIN_EXE_multir"))
        .args(["inspect", path.to_str().unwrap()])
        .env("MULTIR_MAX_VOXELS", "120")
        .output()
        .unwrap();
    assert!(ok.status.success());
}
