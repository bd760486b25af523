//! `multir inspect` end to end: good files give the documented JSON, bad
//! files give one clear error line naming the file, a non-zero exit code,
//! no panic, and no memory spent on what a lying header asks for.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use multir_common::io::nifti::{self, Dtype, Version, WriteOptions};
use multir_common::{Affine, Volume};

fn multir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_multir"))
        .args(args)
        .output()
        .expect("run multir")
}

/// Address space a bad-input run may use: room for the binary and its
/// libraries (libtorch maps a few hundred MB), far below the 4 GB that the
/// lying headers below promise. An allocation of the promised size fails
/// under this limit and the process aborts instead of exiting 65, so the
/// test checks "refused before allocating" without a clock.
const ADDRESS_SPACE: u64 = 2 << 30;

/// Runs multir with its address space limited to [`ADDRESS_SPACE`]
/// (`setrlimit(RLIMIT_AS)` in the child, before exec). Few threads and
/// malloc arenas, so that per-thread reservations do not count against the
/// limit on a many-core machine.
fn multir_limited(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_multir"));
    cmd.args(args)
        .env("RAYON_NUM_THREADS", "2")
        .env("MALLOC_ARENA_MAX", "2");
    // SAFETY: setrlimit is async-signal-safe, and the closure allocates
    // nothing between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: ADDRESS_SPACE,
                rlim_max: ADDRESS_SPACE,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("run multir")
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
    let out = multir(&["inspect", path.to_str().unwrap(), "--json"]);
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
    let out = multir(&["inspect", path.to_str().unwrap()]);
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
    let out = multir(&["inspect", "--json", path.to_str().unwrap()]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (j["format"].as_str(), j["dtype"].as_str()),
        (Some("NIfTI-2"), Some("float64"))
    );
}

/// Each bad input: file name, expected words in the message, exit code.
#[test]
fn bad_inputs_fail_cleanly_without_allocating() {
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
    // gzip trailers (CRC-32, length) that do not match the data: files and
    // the script that made them (Python's gzip refuses each) are committed.
    let gz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gzip");
    for name in [
        "crc_flip.nii.gz",
        "isize.nii.gz",
        "second_member_crc.nii.gz",
    ] {
        cases.push((gz.join(name), "does not match", 65));
    }
    // No finite voxel at all: no image to speak of.
    let nan = Volume::new(vec![f32::NAN; 120], [6, 5, 4], *lps_volume().affine()).unwrap();
    cases.push((
        save(d, "nan.nii", &nifti_bytes(&nan, &WriteOptions::float32())),
        "every voxel is NaN or infinite",
        65,
    ));
    // Formats that are not NIfTI, said by name with what to do instead.
    let dicom = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/dicom/ct_axial");
    let slice = std::fs::read_dir(&dicom)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .unwrap();
    let dcm = std::fs::read(slice).unwrap();
    cases.push((
        save(d, "slice.dcm", &dcm),
        "a single DICOM file: pass the folder that holds the series",
        65,
    ));
    let mut analyze = good.clone();
    analyze[344..348].copy_from_slice(&[0; 4]);
    cases.push((
        save(d, "scan.hdr", &analyze[..348]),
        "Analyze 7.5 header",
        65,
    ));
    cases.push((
        save(d, "scan.img", &good[352..]),
        "an Analyze 7.5 image",
        65,
    ));

    for (path, words, code) in cases {
        let out = multir_limited(&["inspect", path.to_str().unwrap()]);
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
        assert!(out.stdout.is_empty());
    }
    // The limit leaves room for real work: a good file reads under it.
    let ok = multir_limited(&["inspect", save(d, "good.nii", &good).to_str().unwrap()]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let two_members = gz.join("good.nii.gz");
    let ok = multir_limited(&["inspect", "--json", two_members.to_str().unwrap()]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(
        (j["min"].as_f64(), j["max"].as_f64()),
        (Some(-1000.0), Some(190.0))
    );
}

#[test]
fn voxel_limit_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.nii");
    nifti::write_path(&path, &lps_volume(), &WriteOptions::mask()).unwrap();
    let out = multir(&["inspect", path.to_str().unwrap(), "--max-voxels", "100"]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("120 voxels exceeds the limit of 100"));
    let ok = Command::new(env!("CARGO_BIN_EXE_multir"))
        .args(["inspect", path.to_str().unwrap()])
        .env("MULTIR_MAX_VOXELS", "120")
        .output()
        .unwrap();
    assert!(ok.status.success());
}
