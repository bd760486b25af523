//! Our NRRD reader against pynrrd and SimpleITK (ITK's reader, as in 3D
//! Slicer).
//!
//! `tests/fixtures/nrrd/make_fixtures.py` wrote small `.nrrd`/`.nhdr` files
//! (raw and gzip, every common type, both byte orders, LPS/RAS/LAS, oblique
//! directions, skips, a detached header, a 4D single-component file, and
//! corrupt or refused ones) and recorded in `expected.json` what both
//! readers agree the files hold: shape, spacing, the voxel-to-RAS+ affine
//! (SimpleITK's LPS direction and origin turned into RAS+), every voxel as
//! float32, and their sum. Here each file is read through
//! [`io::load_path`], as `multir inspect` and `multir run` read it, and
//! compared: voxels exactly, the affine to 1e-9.

use std::collections::BTreeSet;

use multir_common::io::{self, LoadOptions, nrrd};
use multir_tests::{Mismatches, affine, dims3, fixtures_dir, num, nums, read_json};
use serde_json::Value;

/// Both sides parse the same decimal text into f64; SimpleITK then splits
/// it into spacing and unit directions and we multiply back: rounding only.
const AFFINE_TOL: f64 = 1e-9;

fn expected() -> serde_json::Map<String, Value> {
    let v = read_json(&fixtures_dir("nrrd").join("expected.json"));
    let mut m = v
        .as_object()
        .expect("expected.json maps file names to expectations")
        .clone();
    m.remove("_versions");
    m
}

fn check_file(m: &mut Mismatches, name: &str, want: &Value) {
    let path = fixtures_dir("nrrd").join(name);
    let result = io::load_path(&path, &LoadOptions::default());
    if let Some(err) = want.get("error") {
        let needle = err.as_str().expect("error is a string");
        match result {
            Ok(_) => m.push(format!("{name}: read succeeded, should fail with {needle}")),
            Err(e) => {
                let msg = e.to_string();
                if !msg.contains(name) || !msg.contains(needle) {
                    m.push(format!(
                        "{name}: error {msg:?} should name the file and say {needle:?}"
                    ));
                }
            }
        }
        return;
    }
    let loaded = match result {
        Ok(l) => l,
        Err(e) => {
            m.push(format!("{name}: read failed: {e}"));
            return;
        }
    };
    let (vol, info) = (&loaded.volume, &loaded.info);
    let shape = dims3(&want["shape"], "shape");
    m.eq(&format!("{name} shape"), info.shape, shape);
    m.eq(&format!("{name} volume dims"), vol.dims(), shape);
    m.eq(&format!("{name} format"), info.format.as_str(), "NRRD");
    m.eq(
        &format!("{name} dtype"),
        info.dtype.as_str(),
        want["dtype"].as_str().expect("dtype"),
    );
    for (a, s) in nums(&want["spacing"], "spacing").into_iter().enumerate() {
        m.abs(
            &format!("{name} spacing[{a}]"),
            info.spacing_mm[a],
            s,
            AFFINE_TOL,
        );
    }
    let aff = affine(&want["affine"], "affine");
    m.affine(
        &format!("{name} info.affine"),
        &info.affine,
        &aff,
        AFFINE_TOL,
    );
    m.affine(
        &format!("{name} volume affine"),
        vol.affine(),
        &aff,
        AFFINE_TOL,
    );
    let values = nums(&want["values"], "values");
    m.eq(&format!("{name} voxel count"), vol.len(), values.len());
    // i fastest in both; the expected values are float32 numbers, so the
    // comparison is exact (a JSON parse off by one f64 ulp still rounds to
    // the same f32).
    let wrong: Vec<String> = vol
        .data()
        .iter()
        .zip(&values)
        .enumerate()
        .filter(|(_, (got, want))| **got != **want as f32)
        .take(5)
        .map(|(n, (got, want))| format!("#{n}: {got} vs {want}"))
        .collect();
    if !wrong.is_empty() {
        m.push(format!("{name} voxels differ: {}", wrong.join(", ")));
    }
    let sum: f64 = vol.data().iter().map(|&v| v as f64).sum();
    m.rel(&format!("{name} sum"), sum, num(&want["sum"], "sum"), 1e-12);
    m.eq(&format!("{name} nonfinite"), info.nonfinite_replaced, 0);
}

#[test]
fn every_fixture_reads_as_pynrrd_and_simpleitk_read_it() {
    let mut m = Mismatches::new();
    for (name, want) in &expected() {
        check_file(&mut m, name, want);
    }
    m.assert_none("NRRD fixtures vs pynrrd and SimpleITK");
}

/// expected.json lists exactly the files on disk, and the set covers what
/// the module documentation claims.
#[test]
fn fixture_set_is_complete() {
    let expected = expected();
    let listed: BTreeSet<&str> = expected.keys().map(String::as_str).collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(fixtures_dir("nrrd"))
        .expect("fixtures/nrrd exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".nrrd") || n.ends_with(".nhdr"))
        .collect();
    let on_disk: BTreeSet<&str> = on_disk.iter().map(String::as_str).collect();
    assert_eq!(listed, on_disk);
    let field = |key: &str| -> BTreeSet<String> {
        expected
            .values()
            .filter_map(|v| v.get(key).and_then(Value::as_str).map(str::to_owned))
            .collect()
    };
    for dt in ["uint8", "int16", "uint16", "int32", "float32", "float64"] {
        assert!(field("dtype").contains(dt), "no {dt} fixture");
    }
    for needle in ["truncated", "exceeds the limit", "\"sizes\" is missing"] {
        assert!(field("error").contains(needle), "no {needle} fixture");
    }
    let axcodes: BTreeSet<String> = expected
        .values()
        .filter(|v| v.get("affine").is_some())
        .map(|v| affine(&v["affine"], "affine").axcodes())
        .collect();
    for codes in ["LPS", "RAS", "LAS"] {
        assert!(axcodes.contains(codes), "no {codes} fixture: {axcodes:?}");
    }
    assert!(listed.iter().any(|n| n.ends_with(".nhdr")));
}

/// The same file through every entry point gives the same volume; a
/// detached header's bytes alone give an error naming the data file.
#[test]
fn entry_points_agree() {
    let dir = fixtures_dir("nrrd");
    let opts = LoadOptions::default();
    let gz = dir.join("int16_lps_gzip.nrrd");
    let by_path = nrrd::read_path(&gz, &opts).unwrap();
    let bytes = std::fs::read(&gz).unwrap();
    let named = io::read_named(&bytes, "object-key", &opts).unwrap();
    let streamed = nrrd::read(&bytes[..], &opts).unwrap();
    assert_eq!(by_path.volume, named.volume);
    assert_eq!(by_path.volume, streamed.volume);
    let raw = io::load_path(dir.join("int16_lps_raw.nrrd"), &opts).unwrap();
    assert_eq!(raw.volume, by_path.volume);
    let nhdr = dir.join("detached_int16.nhdr");
    let detached = io::load_path(&nhdr, &opts).unwrap();
    assert_eq!(detached.volume, by_path.volume);
    let header = std::fs::read(&nhdr).unwrap();
    let e = io::read_named(&header, "s3://cohort/detached_int16.nhdr", &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("s3://cohort/detached_int16.nhdr") && e.contains("detached_int16.raw"),
        "{e}"
    );
    let data = std::fs::read(dir.join("detached_int16.raw")).unwrap();
    let from_parts = nrrd::read_detached(&header, &data[..], None, &opts).unwrap();
    assert_eq!(from_parts.volume, by_path.volume);
}
