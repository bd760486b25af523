//! DICOM series from pydicom's real CT file, checked against what pydicom,
//! numpy and nibabel say a correct reader produces.
//!
//! The fixtures and `expected.json` come from
//! `tests/fixtures/dicom/make_ct_series.py` (see its docstring for the traps
//! they set: shuffled names and InstanceNumbers, per-slice rescale, a
//! misleading SpacingBetweenSlices, non-square anisotropic pixels, an
//! oblique orientation, RLE compression, a README and a hidden file of
//! another series).

use std::path::{Path, PathBuf};

use multir_common::error::Error;
use multir_common::io::dicom::{SeriesSummary, list_series};
use multir_common::io::{LoadOptions, Loaded, load_path};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/dicom")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn load(folder: &str) -> Loaded {
    load_path(fixtures().join(folder), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("loading {folder}: {e}"))
}

/// Compares one loaded folder with its expected.json entry.
fn check(folder: &str) -> Loaded {
    let all = expected();
    let want = &all[folder];
    let got = load(folder);
    let info = &got.info;
    assert_eq!(info.format, "DICOM");
    assert_eq!(info.dtype, want["dtype"].as_str().unwrap());
    assert_eq!(info.nonfinite_replaced, 0);
    let shape: Vec<usize> = f64s(&want["shape"]).iter().map(|&x| x as usize).collect();
    assert_eq!(info.shape.to_vec(), shape, "{folder} shape");
    assert_eq!(got.volume.dims(), info.shape);
    for (g, w) in info.spacing_mm.iter().zip(f64s(&want["spacing_mm"])) {
        assert!(
            (g - w).abs() < 1e-6,
            "{folder} spacing {:?}",
            info.spacing_mm
        );
    }
    let rows = want["affine_ras"].as_array().unwrap();
    for (r, row) in rows.iter().enumerate() {
        for (c, w) in f64s(row).into_iter().enumerate() {
            let g = info.affine.0[r][c];
            assert!(
                (g - w).abs() < 1e-6,
                "{folder} affine[{r}][{c}] = {g}, expected {w}"
            );
        }
    }
    assert_eq!(got.volume.affine(), &info.affine);

    let vol = &got.volume;
    for v in want["voxels"].as_array().unwrap() {
        let ijk: Vec<usize> = f64s(&v["ijk"]).iter().map(|&x| x as usize).collect();
        let hu = v["hu"].as_f64().unwrap();
        assert_eq!(
            f64::from(vol.get(ijk[0], ijk[1], ijk[2])),
            hu,
            "{folder} voxel {ijk:?}"
        );
    }
    let data = vol.data();
    let min = data.iter().copied().fold(f32::INFINITY, f32::min);
    let max = data.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = data.iter().map(|&x| f64::from(x)).sum();
    assert_eq!(
        f64::from(min),
        want["min"].as_f64().unwrap(),
        "{folder} min"
    );
    assert_eq!(
        f64::from(max),
        want["max"].as_f64().unwrap(),
        "{folder} max"
    );
    // HU are multiples of 0.5 here, so the f64 sum is exact.
    assert_eq!(sum, want["sum"].as_f64().unwrap(), "{folder} sum");
    let mean = sum / data.len() as f64;
    assert!((mean - want["mean"].as_f64().unwrap()).abs() < 1e-9);
    got
}

#[test]
fn axial_series_matches_pydicom() {
    let got = check("ct_axial");
    // Not the copied SpacingBetweenSlices (5 mm): positions say 2.5 mm.
    assert!((got.info.spacing_mm[2] - 2.5).abs() < 1e-6);
    assert_eq!(got.info.affine.axcodes(), "LPS");
}

#[test]
fn rle_series_decodes_to_the_same_voxels() {
    let rle = check("ct_rle");
    let plain = load("ct_axial");
    assert_eq!(rle.volume, plain.volume);
}

#[test]
fn oblique_series_matches_the_dicom_affine() {
    let got = check("ct_oblique");
    // The volume's canonical view is a pure permutation/flip of this grid.
    let (canon, reo) = got.volume.to_canonical();
    assert_eq!(canon.affine().axcodes(), "RAS");
    assert_eq!(reo.undo(&canon).unwrap(), got.volume);
}

#[test]
fn series_are_listed_with_uid_description_and_count() {
    let all = expected();
    for folder in ["ct_axial", "ct_rle", "ct_oblique"] {
        let want = &all[folder];
        let listed = list_series(&fixtures().join(folder)).unwrap();
        assert_eq!(
            listed,
            vec![SeriesSummary {
                uid: want["series_uid"].as_str().unwrap().into(),
                description: want["description"].as_str().unwrap().into(),
                slices: want["slices"].as_u64().unwrap() as usize,
            }],
            "{folder}"
        );
    }
}

#[test]
fn mixed_folder_needs_a_series_uid() {
    let all = expected();
    let dir = tempfile::tempdir().unwrap();
    for folder in ["ct_axial", "ct_oblique"] {
        for entry in std::fs::read_dir(fixtures().join(folder)).unwrap() {
            let entry = entry.unwrap();
            let name = format!("{folder}_{}", entry.file_name().to_string_lossy());
            std::fs::copy(entry.path(), dir.path().join(name)).unwrap();
        }
    }
    let axial_uid = all["ct_axial"]["series_uid"].as_str().unwrap();
    let oblique_uid = all["ct_oblique"]["series_uid"].as_str().unwrap();

    let err = load_path(dir.path(), &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err.root(), Error::Dicom(_)), "{err:?}");
    assert!(msg.starts_with(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains(&format!("{axial_uid} (6 slices")), "{msg}");
    assert!(msg.contains(&format!("{oblique_uid} (6 slices")), "{msg}");

    // The copied ".hidden..." file is no longer hidden ("ct_axial_.hidden...")
    // and adds a third, single-slice series.
    let listed = list_series(dir.path()).unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");

    let pick = LoadOptions {
        series_uid: Some(oblique_uid.into()),
        ..LoadOptions::default()
    };
    let got = load_path(dir.path(), &pick).unwrap();
    assert_eq!(got.volume, load("ct_oblique").volume);
}
