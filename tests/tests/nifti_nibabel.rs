//! Our NIfTI reader against nibabel, the field's reference reader.
//!
//! `tests/fixtures/nifti/make_fixtures.py` wrote small files with nibabel
//! (every stored type, several orientations, sform/qform/neither, scaling,
//! NIfTI-2, gzip, big-endian, 4D) and recorded in `expected.json` what
//! nibabel reads from each: shape, zooms, affine, axis codes, dtype, sampled
//! scaled voxels, statistics, and the same after `as_closest_canonical`.
//! Here every file is read with `nifti::read_path` and compared.

use std::collections::BTreeSet;

use multir_common::io::{LoadOptions, nifti};
use multir_tests::{Mismatches, affine, dims3, fixtures_dir, num, nums, read_json};
use serde_json::Value;

/// Affine entries: nibabel and we both compute in f64 from the same stored
/// (often f32) numbers, so differences are rounding only.
const AFFINE_TOL: f64 = 1e-4;
/// Voxels: we hold f32, nibabel f64.
const VALUE_REL_TOL: f64 = 1e-4;

fn expected() -> serde_json::Map<String, Value> {
    let v = read_json(&fixtures_dir("nifti").join("expected.json"));
    v.as_object()
        .expect("expected.json maps file names to expectations")
        .clone()
}

/// Compares `(i, j, k, value)` samples against a volume.
fn check_samples(
    m: &mut Mismatches,
    what: &str,
    vol: &multir_common::volume::Volume,
    samples: &Value,
) {
    let samples = samples.as_array().expect("samples is an array");
    assert!(!samples.is_empty(), "{what}: no samples");
    for s in samples {
        let s = nums(s, what);
        let [i, j, k] = [s[0], s[1], s[2]].map(|x| x as usize);
        let d = vol.dims();
        if i >= d[0] || j >= d[1] || k >= d[2] {
            m.push(format!("{what}: sample ({i},{j},{k}) outside dims {d:?}"));
            continue;
        }
        m.rel(
            &format!("{what} voxel ({i},{j},{k})"),
            vol.get(i, j, k) as f64,
            s[3],
            VALUE_REL_TOL,
        );
    }
}

fn check_file(m: &mut Mismatches, name: &str, want: &Value) {
    let path = fixtures_dir("nifti").join(name);
    let result = nifti::read_path(&path, &LoadOptions::default());
    if let Some(err) = want.get("error") {
        let needle = err.as_str().expect("error is a string");
        match result {
            Ok(_) => m.push(format!(
                "{name}: read succeeded, nibabel-side says {needle}"
            )),
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
    for (a, z) in nums(&want["zooms"], "zooms").into_iter().enumerate() {
        m.abs(&format!("{name} zoom[{a}]"), info.spacing_mm[a], z, 1e-6);
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
    m.eq(
        &format!("{name} axcodes"),
        vol.affine().axcodes().as_str(),
        want["axcodes"].as_str().expect("axcodes"),
    );
    m.eq(
        &format!("{name} dtype"),
        info.dtype.as_str(),
        want["dtype"].as_str().expect("dtype"),
    );
    m.eq(
        &format!("{name} format"),
        info.format.as_str(),
        want["format"].as_str().expect("format"),
    );
    if shape == vol.dims() {
        check_samples(m, name, vol, &want["samples"]);
    }
    let stats = vol.stats();
    let scale = num(&want["min"], "min")
        .abs()
        .max(num(&want["max"], "max").abs());
    m.rel(
        &format!("{name} min"),
        stats.min,
        num(&want["min"], "min"),
        VALUE_REL_TOL,
    );
    m.rel(
        &format!("{name} max"),
        stats.max,
        num(&want["max"], "max"),
        VALUE_REL_TOL,
    );
    // The mean can sit near zero: compare relative to the value range.
    m.abs(
        &format!("{name} mean"),
        stats.mean,
        num(&want["mean"], "mean"),
        VALUE_REL_TOL * scale.max(1.0),
    );

    let canon_want = &want["canonical"];
    let (canon, undo) = vol.to_canonical();
    let what = format!("{name} canonical");
    m.eq(
        &format!("{what} shape"),
        canon.dims(),
        dims3(&canon_want["shape"], "canonical shape"),
    );
    m.affine(
        &format!("{what} affine"),
        canon.affine(),
        &affine(&canon_want["affine"], "canonical affine"),
        AFFINE_TOL,
    );
    m.eq(
        &format!("{what} axcodes"),
        canon.affine().axcodes(),
        "RAS".into(),
    );
    if canon.dims() == dims3(&canon_want["shape"], "canonical shape") {
        check_samples(m, &what, &canon, &canon_want["samples"]);
    }
    match undo.undo(&canon) {
        Ok(back) => m.eq(&format!("{name} undo(canonical) == original"), &back, vol),
        Err(e) => m.push(format!("{name}: undo failed: {e}")),
    }
}

#[test]
fn every_fixture_reads_as_nibabel_reads_it() {
    let expected = expected();
    let mut m = Mismatches::new();
    for (name, want) in &expected {
        check_file(&mut m, name, want);
    }
    m.assert_none("NIfTI fixtures vs nibabel");
}

/// The fixture set covers what it claims to, and expected.json lists exactly
/// the files on disk (a fixture without an expectation would go unchecked).
#[test]
fn fixture_set_is_complete() {
    let expected = expected();
    let listed: BTreeSet<&str> = expected.keys().map(String::as_str).collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(fixtures_dir("nifti"))
        .expect("fixtures/nifti exists")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".nii") || n.ends_with(".nii.gz"))
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
    for codes in ["RAS", "LPS", "LAS", "PIR", "SLA"] {
        assert!(field("axcodes").contains(codes), "no {codes} fixture");
    }
    assert!(field("format").contains("NIfTI-2"));
    assert!(field("error").contains("4D"));
    assert!(listed.iter().any(|n| n.ends_with(".nii.gz")));
}

/// The 4D refusal is an error about the file, not a panic or a silently
/// truncated volume, and it says how many volumes there are.
#[test]
fn multi_volume_4d_is_refused_with_the_file_name() {
    let path = fixtures_dir("nifti").join("four_d_3.nii");
    let err = nifti::read_path(&path, &LoadOptions::default())
        .expect_err("a 4D file with 3 volumes must be refused");
    let msg = err.to_string();
    assert!(msg.contains("four_d_3.nii"), "{msg}");
    assert!(msg.contains("4D"), "{msg}");
    assert!(msg.contains("dim[4] = 3"), "{msg}");
}
