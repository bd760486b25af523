//! Files our NIfTI writer produces, read back by nibabel.
//!
//! The test writes volumes of several stored types, scalings, orientations,
//! both NIfTI versions and both `.nii`/`.nii.gz` into a temporary folder,
//! with `written.json` describing each (affine, shape, every voxel). Then
//! `tests/fixtures/nifti/check_readback.py` loads them with nibabel and
//! checks affine, voxels, scaling, form codes and that the qform agrees with
//! the sform for rigid affines. Needs `MULTIR_PYTHON` (see
//! `multir_tests::python`).

use multir_common::io::nifti::{self, Dtype, Version, WriteOptions};
use multir_common::io::{LoadOptions, load_path};
use multir_common::volume::{Affine, Volume};
use multir_tests::{fixtures_dir, python, run_python};
use serde_json::json;

fn rot_x(deg: f64) -> [[f64; 3]; 3] {
    let (s, c) = deg.to_radians().sin_cos();
    [[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]]
}

fn rot_z(deg: f64) -> [[f64; 3]; 3] {
    let (s, c) = deg.to_radians().sin_cos();
    [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]
}

fn mul(a: [[f64; 3]; 3], b: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    std::array::from_fn(|r| std::array::from_fn(|c| (0..3).map(|k| a[r][k] * b[k][c]).sum()))
}

fn diag(d: [f64; 3]) -> [[f64; 3]; 3] {
    std::array::from_fn(|r| std::array::from_fn(|c| if r == c { d[r] } else { 0.0 }))
}

fn affine(linear: [[f64; 3]; 3], origin: [f64; 3]) -> Affine {
    let mut a = Affine::identity();
    for r in 0..3 {
        a.0[r][..3].copy_from_slice(&linear[r]);
        a.0[r][3] = origin[r];
    }
    a
}

/// One file to write.
struct Case {
    file: &'static str,
    dtype: Dtype,
    version: Version,
    slope: f32,
    inter: f32,
    dims: [usize; 3],
    affine: Affine,
    /// Orthonormal columns times zooms, so a qform can say it exactly.
    rigid: bool,
}

/// Voxel values the stored type holds exactly after scaling, with
/// negatives where the type (or the intercept) allows them.
fn values(c: &Case) -> Vec<f32> {
    let [ni, nj, nk] = c.dims;
    let mut out = Vec::with_capacity(ni * nj * nk);
    for k in 0..nk {
        for j in 0..nj {
            for i in 0..ni {
                let (x, y, z) = (i as f64, j as f64, k as f64);
                let stored = match c.dtype {
                    Dtype::U8 => ((i * 37 + j * 11 + k * 5) % 256) as f64,
                    Dtype::I16 => 300.0 * x - 170.0 * y + 53.0 * z - 900.0,
                    _ => 100.0 * (0.7 * x).sin() + 35.5 * (0.3 * y).cos() * z - 25.25,
                };
                out.push((stored * c.slope as f64 + c.inter as f64) as f32);
            }
        }
    }
    out
}

fn cases() -> Vec<Case> {
    let ras = affine(diag([0.8, 0.9, 2.0]), [-10.5, 20.25, -30.0]);
    let lps = affine(diag([-0.8, -0.9, 2.0]), [100.0, 80.5, -60.0]);
    // i to Posterior, j to Inferior, k to Right.
    let pir = affine(
        [[0.0, 0.0, 1.2], [-0.8, 0.0, 0.0], [0.0, -2.5, 0.0]],
        [-5.0, 40.0, 12.0],
    );
    // i to Superior, j to Left, k to Anterior (left-handed: qfac -1).
    let sla = affine(
        [[0.0, -0.7, 0.0], [0.0, 0.0, 1.1], [1.5, 0.0, 0.0]],
        [3.0, -7.0, 9.5],
    );
    let oblique = affine(
        mul(mul(rot_z(20.0), rot_x(15.0)), diag([0.7, 0.8, 2.5])),
        [-90.0, 110.0, -45.5],
    );
    let oblique_las = affine(
        mul(mul(rot_z(-12.0), rot_x(18.0)), diag([-0.75, 0.75, 3.0])),
        [60.0, -20.0, 15.0],
    );
    let sheared = affine(
        [[0.9, 0.15, 0.0], [0.0, 1.0, -0.2], [0.05, 0.0, 2.2]],
        [1.0, 2.0, 3.0],
    );
    use Dtype::*;
    use Version::*;
    let case = |file, dtype, version, (slope, inter), dims, affine, rigid| Case {
        file,
        dtype,
        version,
        slope,
        inter,
        dims,
        affine,
        rigid,
    };
    vec![
        case("u8_ras.nii", U8, Nifti1, (1.0, 0.0), [6, 5, 4], ras, true),
        case(
            "i16_lps_scaled.nii.gz",
            I16,
            Nifti1,
            (0.5, -1024.0),
            [7, 6, 5],
            lps,
            true,
        ),
        case(
            "f32_pir_n2.nii",
            F32,
            Nifti2,
            (1.0, 0.0),
            [5, 4, 3],
            pir,
            true,
        ),
        case(
            "f64_oblique_n2.nii.gz",
            F64,
            Nifti2,
            (1.0, 0.0),
            [6, 5, 4],
            oblique,
            true,
        ),
        case(
            "i16_oblique_las.nii",
            I16,
            Nifti1,
            (1.0, 0.0),
            [6, 6, 3],
            oblique_las,
            true,
        ),
        case(
            "f32_sla_scaled.nii.gz",
            F32,
            Nifti1,
            (2.0, 10.0),
            [4, 5, 6],
            sla,
            true,
        ),
        case(
            "u8_sheared_flat.nii",
            U8,
            Nifti1,
            (1.0, 0.0),
            [5, 4, 1],
            sheared,
            false,
        ),
        case(
            "i16_pir_n2_scaled.nii.gz",
            I16,
            Nifti2,
            (0.25, 5.0),
            [3, 4, 5],
            pir,
            true,
        ),
    ]
}

#[test]
fn nibabel_reads_what_we_write() {
    const TEST: &str = "nibabel_reads_what_we_write";
    let Some(py) = python(TEST) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = cases();
    let mut manifest = Vec::new();
    for c in &cases {
        let data = values(c);
        let vol = Volume::new(data, c.dims, c.affine).expect("valid test volume");
        let opts = WriteOptions {
            dtype: c.dtype,
            version: c.version,
            scl_slope: c.slope,
            scl_inter: c.inter,
        };
        let path = dir.path().join(c.file);
        nifti::write_path(&path, &vol, &opts).expect("write");
        // Our own reader must agree too, so a failure below is about
        // nibabel's view, not a writer that nobody can read. Exact except
        // for float storage with scaling, which rounds (v - inter) / slope.
        let back = load_path(&path, &LoadOptions::default()).expect("read back");
        for (n, (a, b)) in back.volume.data().iter().zip(vol.data()).enumerate() {
            let tol = 1e-6 * b.abs().max(1.0);
            assert!(
                (a - b).abs() <= tol,
                "{}: voxel {n} reads {a}, wrote {b}",
                c.file
            );
        }
        manifest.push(json!({
            "file": c.file,
            "version": if c.version == Version::Nifti2 { 2 } else { 1 },
            "dtype": c.dtype.name(),
            "scl_slope": c.slope,
            "scl_inter": c.inter,
            "rigid": c.rigid,
            "shape": c.dims,
            "affine": c.affine.0,
            "values": vol.data(),
        }));
    }
    std::fs::write(
        dir.path().join("written.json"),
        serde_json::to_string(&manifest).expect("serialise"),
    )
    .expect("write written.json");

    let script = fixtures_dir("nifti").join("check_readback.py");
    let (ok, output) = run_python(&py, &script, &[dir.path()]);
    assert!(ok, "nibabel disagrees with our writer:\n{output}");
    // Guard against a script that passes without looking.
    let done = format!("checked {} files", cases.len());
    assert!(output.contains(&done), "expected {done:?} in:\n{output}");
}

/// The checker itself fails loudly on a wrong expectation, so a pass above
/// means something.
#[test]
fn readback_checker_reports_mismatches() {
    const TEST: &str = "readback_checker_reports_mismatches";
    let Some(py) = python(TEST) else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let c = &cases()[0];
    let vol = Volume::new(values(c), c.dims, c.affine).expect("valid test volume");
    nifti::write_path(dir.path().join(c.file), &vol, &WriteOptions::mask()).expect("write");
    let mut wrong_affine = c.affine;
    wrong_affine.0[0][3] += 0.5;
    let mut wrong_values: Vec<f32> = vol.data().to_vec();
    wrong_values[3] += 1.0;
    let manifest = json!([{
        "file": c.file, "version": 1, "dtype": "uint8", "scl_slope": 1.0, "scl_inter": 0.0,
        "rigid": true, "shape": c.dims, "affine": wrong_affine.0, "values": wrong_values,
    }]);
    std::fs::write(dir.path().join("written.json"), manifest.to_string()).expect("write json");
    let script = fixtures_dir("nifti").join("check_readback.py");
    let (ok, output) = run_python(&py, &script, &[dir.path()]);
    assert!(!ok, "checker accepted a wrong affine and voxel:\n{output}");
    assert!(output.contains("affine"), "{output}");
    assert!(output.contains("1 voxels differ"), "{output}");
}
