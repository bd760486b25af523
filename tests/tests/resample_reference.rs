//! Our resampler against scipy.
//!
//! `tests/fixtures/resample/make_reference.py` resampled a small anisotropic
//! volume (smooth field plus a step edge) and a label volume with
//! `scipy.ndimage.map_coordinates` (order 1, mode "nearest" for linear;
//! `floor(x + 0.5)`, checked against order 0, for nearest) to two spacings
//! and to shifted target grids whose edges need clamping, and stored inputs
//! and outputs in `reference.json`. Linear outputs must match within 1e-4
//! absolute, nearest outputs exactly, dims and affines as well.

use multir_common::preprocess::resample::{Interp, resample_to_grid, resample_to_spacing};
use multir_common::volume::Volume;
use multir_tests::{Mismatches, affine, dims3, fixtures_dir, nums, read_json};
use serde_json::Value;

const VALUE_TOL: f64 = 1e-4;

fn volume(v: &Value, what: &str) -> Volume {
    let data: Vec<f32> = nums(&v["values"], what)
        .into_iter()
        .map(|x| x as f32)
        .collect();
    Volume::new(data, dims3(&v["dims"], what), affine(&v["affine"], what))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Checks one case; returns the largest absolute difference seen.
fn check_case(m: &mut Mismatches, case: &Value, inputs: &Value) -> f64 {
    let name = case["name"].as_str().expect("case name");
    let source = case["source"].as_str().expect("case source");
    let input = volume(&inputs[source], source);
    let interp = match case["interp"].as_str() {
        Some("linear") => Interp::Linear,
        Some("nearest") => Interp::Nearest,
        other => panic!("{name}: unknown interp {other:?}"),
    };
    let dims = dims3(&case["dims"], name);
    let aff = affine(&case["affine"], name);
    let out = match case["kind"].as_str() {
        Some("spacing") => {
            let s = nums(&case["spacing"], name);
            resample_to_spacing(&input, [s[0], s[1], s[2]], interp)
        }
        Some("grid") => resample_to_grid(&input, dims, &aff, interp),
        other => panic!("{name}: unknown kind {other:?}"),
    };
    let out = match out {
        Ok(v) => v,
        Err(e) => {
            m.push(format!("{name}: resampling failed: {e}"));
            return f64::NAN;
        }
    };
    m.eq(&format!("{name} dims"), out.dims(), dims);
    m.affine(&format!("{name} affine"), out.affine(), &aff, 1e-9);
    if out.dims() != dims {
        return f64::NAN;
    }
    let want = nums(&case["values"], name);
    assert_eq!(want.len(), out.len(), "{name}: reference size");
    let before = m.len();
    let mut worst = 0.0f64;
    for (n, (&got, &want)) in out.data().iter().zip(&want).enumerate() {
        let (i, j, k) = (
            n % dims[0],
            (n / dims[0]) % dims[1],
            n / (dims[0] * dims[1]),
        );
        let what = format!("{name} voxel ({i},{j},{k})");
        worst = worst.max((got as f64 - want).abs());
        match interp {
            Interp::Linear => m.abs(&what, got as f64, want, VALUE_TOL),
            Interp::Nearest => m.eq(&what, got as f64, want),
        }
        // One broken case should not bury the others.
        if m.len() - before >= 20 {
            m.push(format!("{name}: more mismatches not shown"));
            break;
        }
    }
    worst
}

#[test]
fn resampling_matches_scipy() {
    let reference = read_json(&fixtures_dir("resample").join("reference.json"));
    let cases = reference["cases"].as_array().expect("cases");
    assert!(
        cases.len() >= 5,
        "reference.json holds {} cases",
        cases.len()
    );
    let mut m = Mismatches::new();
    for case in cases {
        let worst = check_case(&mut m, case, &reference["inputs"]);
        eprintln!("{}: max |ours - scipy| = {worst:e}", case["name"]);
    }
    m.assert_none("resampling vs scipy");
}

/// The reference covers what it claims: both interpolations, both entry
/// points, upsampling and downsampling, and target grids that reach past the
/// input on both sides (so the edge clamp is exercised).
#[test]
fn reference_covers_the_interesting_cases() {
    let reference = read_json(&fixtures_dir("resample").join("reference.json"));
    let cases = reference["cases"].as_array().expect("cases");
    let has = |kind: &str, interp: &str| {
        cases
            .iter()
            .any(|c| c["kind"] == kind && c["interp"] == interp)
    };
    for kind in ["spacing", "grid"] {
        for interp in ["linear", "nearest"] {
            assert!(has(kind, interp), "no {kind}/{interp} case");
        }
    }
    let input = volume(&reference["inputs"]["image"], "image");
    let n_in = input.len();
    let sizes: Vec<usize> = cases
        .iter()
        .filter(|c| c["kind"] == "spacing")
        .map(|c| dims3(&c["dims"], "dims").iter().product())
        .collect();
    assert!(sizes.iter().any(|&n| n < n_in) && sizes.iter().any(|&n| n > n_in));
    // The grid cases start before voxel 0 and end past the last voxel.
    let inv = input.affine().inverse().expect("invertible");
    for c in cases.iter().filter(|c| c["kind"] == "grid") {
        let t = affine(&c["affine"], "grid affine");
        let d = dims3(&c["dims"], "grid dims");
        let first = inv.apply(t.apply([0.0; 3]));
        let last = inv.apply(t.apply(d.map(|x| (x - 1) as f64)));
        let n = input.dims();
        for a in 0..3 {
            let (lo, hi) = (first[a].min(last[a]), first[a].max(last[a]));
            assert!(lo < 0.0 || hi > (n[a] - 1) as f64, "axis {a} not clamped");
        }
        assert!((0..3).any(|a| first[a].min(last[a]) < 0.0));
        assert!((0..3).any(|a| first[a].max(last[a]) > (n[a] - 1) as f64));
    }
}
