//! NRRD inputs end to end: `multir inspect` describes `.nrrd` and `.nhdr`
//! files as it describes the same volume in NIfTI, lying NRRD headers exit
//! 65 without allocating what they promise, and `multir run` and `multir
//! predict` give the same results for one phantom stored as NIfTI, as a
//! gzip `.nrrd` and as a `.nhdr` with a raw data file.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use multir_common::io::{LoadOptions, nifti};
use multir_common::{Affine, Volume};
use polars::prelude::{DataFrame, DataType, ParquetReader, SerReader};

fn multir() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_multir"));
    c.env("MULTIR_DEVICE", "cpu")
        .env_remove("MULTIR_CHECKPOINT");
    c
}

fn run(args: &[&str]) -> Output {
    multir().args(args).output().expect("run multir")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// As in inspect_cli.rs: far below what the lying headers below promise,
/// so a reader that allocated first would abort instead of exiting 65.
const ADDRESS_SPACE: u64 = 2 << 30;

fn multir_limited(args: &[&str]) -> Output {
    let mut cmd = multir();
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

/// The element type a test NRRD is written with.
#[derive(Clone, Copy)]
enum Element {
    Short,
    Uchar,
}

/// A NRRD header for `vol` in LPS, as 3D Slicer writes it; directions and
/// origin in Rust's shortest round-trip notation, so nothing is rounded.
fn nrrd_header(vol: &Volume, element: Element, encoding: &str, data_file: Option<&str>) -> String {
    let a = vol.affine();
    let lps = |v: [f64; 3]| format!("({:?},{:?},{:?})", -v[0], -v[1], v[2]);
    let [ni, nj, nk] = vol.dims();
    let mut h = String::from("NRRD0004\n# written by nrrd_cli.rs\n");
    let ty = match element {
        Element::Short => "short",
        Element::Uchar => "uchar",
    };
    writeln!(
        h,
        "type: {ty}\ndimension: 3\nspace: left-posterior-superior"
    )
    .unwrap();
    writeln!(h, "sizes: {ni} {nj} {nk}").unwrap();
    writeln!(
        h,
        "space directions: {} {} {}",
        lps(a.column(0)),
        lps(a.column(1)),
        lps(a.column(2))
    )
    .unwrap();
    writeln!(h, "kinds: domain domain domain\nendian: little").unwrap();
    writeln!(h, "encoding: {encoding}\nspace origin: {}", lps(a.origin())).unwrap();
    if let Some(f) = data_file {
        writeln!(h, "data file: {f}").unwrap();
    }
    h
}

fn voxel_bytes(vol: &Volume, element: Element) -> Vec<u8> {
    match element {
        Element::Short => vol
            .data()
            .iter()
            .flat_map(|&v| (v as i16).to_le_bytes())
            .collect(),
        Element::Uchar => vol.data().iter().map(|&v| v as u8).collect(),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// Writes `vol` as an attached gzip `.nrrd`.
fn write_nrrd(path: &Path, vol: &Volume, element: Element) {
    let mut b = nrrd_header(vol, element, "gzip", None).into_bytes();
    b.push(b'\n');
    b.extend(gzip(&voxel_bytes(vol, element)));
    std::fs::write(path, b).unwrap();
}

/// Writes `vol` as `<stem>.nhdr` and a raw `<stem>.raw` beside it.
fn write_nhdr(dir: &Path, stem: &str, vol: &Volume, element: Element) -> PathBuf {
    let raw = format!("{stem}.raw");
    let header = nrrd_header(vol, element, "raw", Some(&raw));
    std::fs::write(dir.join(&raw), voxel_bytes(vol, element)).unwrap();
    let path = dir.join(format!("{stem}.nhdr"));
    std::fs::write(&path, header).unwrap();
    path
}

fn oblique_volume() -> Volume {
    let (sn, cs) = 9f64.to_radians().sin_cos();
    let a = Affine([
        [-0.7 * cs, 0.8 * sn, 0.0, 110.25],
        [-0.7 * sn, -0.8 * cs, 0.0, 95.5],
        [0.0, 0.0, 2.5, -200.125],
        [0.0, 0.0, 0.0, 1.0],
    ]);
    let data = (0..120)
        .map(|v| (v * 17 % 120) as f32 * 10.0 - 1000.0)
        .collect();
    Volume::new(data, [6, 5, 4], a).unwrap()
}

fn inspect_json(path: &Path) -> serde_json::Value {
    let o = run(&["inspect", "--json", s(path)]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn inspect_describes_nrrd_as_it_describes_nifti() {
    let dir = tempfile::tempdir().unwrap();
    let vol = oblique_volume();
    let nii = dir.path().join("v.nii");
    nifti::write_path(&nii, &vol, &nifti::WriteOptions::ct_int16()).unwrap();
    let nrrd = dir.path().join("v.nrrd");
    write_nrrd(&nrrd, &vol, Element::Short);
    let nhdr = write_nhdr(dir.path(), "d", &vol, Element::Short);
    let want = inspect_json(&nii);
    for path in [&nrrd, &nhdr] {
        let got = inspect_json(path);
        assert_eq!(got["format"], "NRRD");
        for key in ["shape", "orientation", "dtype", "min", "max", "mean"] {
            assert_eq!(got[key], want[key], "{key} of {}", path.display());
        }
        // NIfTI stores the affine as float32; the NRRD text is exact.
        for (r, row) in got["affine"].as_array().unwrap().iter().enumerate() {
            for (c, v) in row.as_array().unwrap().iter().enumerate() {
                let v = v.as_f64().unwrap();
                assert!((v - vol.affine().0[r][c]).abs() < 1e-12, "[{r}][{c}] {v}");
                let w = want["affine"][r][c].as_f64().unwrap();
                assert!((v - w).abs() < 1e-4, "[{r}][{c}] {v} vs NIfTI {w}");
            }
        }
    }
    let o = run(&["inspect", s(&nhdr)]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("NRRD (int16)"),
        "{}",
        text(&o)
    );
}

#[test]
fn bad_nrrd_files_exit_65_or_74_with_one_line_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vol = oblique_volume();
    let header = nrrd_header(&vol, Element::Short, "raw", None);
    let save = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let attach = |h: &str, data: &[u8]| {
        let mut b = h.as_bytes().to_vec();
        b.push(b'\n');
        b.extend_from_slice(data);
        b
    };
    // 1000^3 int32 voxels (4 GB, under the default voxel limit) promised
    // over 240 bytes, raw and gzip.
    let liar = header
        .replace("sizes: 6 5 4", "sizes: 1000 1000 1000")
        .replace("type: short", "type: int");
    let mut cases = vec![
        (
            save("liar.nrrd", &attach(&liar, &[0; 240])),
            "truncated",
            65,
        ),
        (
            save(
                "liar_gz.nrrd",
                &attach(
                    &liar.replace("encoding: raw", "encoding: gzip"),
                    &gzip(&[0; 240]),
                ),
            ),
            "truncated",
            65,
        ),
    ];
    // A small gzip stream that inflates far past what the header promises.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    cases.push((
        save(
            "bomb.nrrd",
            &attach(&header.replace("encoding: raw", "encoding: gzip"), &bomb),
        ),
        "decompress to more bytes",
        65,
    ));
    cases.push((
        save("cut.nrrd", &attach(&header, &[0; 100])),
        "truncated",
        65,
    ));
    cases.push((
        save(
            "nosizes.nrrd",
            &attach(&header.replace("sizes: 6 5 4\n", ""), &[0; 240]),
        ),
        "\"sizes\" is missing",
        65,
    ));
    cases.push((
        save("garbage.nrrd", b"not a header at all\n"),
        "not a NRRD file",
        65,
    ));
    let orphan = nrrd_header(&vol, Element::Short, "raw", Some("gone.raw"));
    cases.push((save("orphan.nhdr", orphan.as_bytes()), "gone.raw", 74));
    for (path, needle, code) in cases {
        let o = multir_limited(&["inspect", s(&path)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(code),
            "{}: {}",
            path.display(),
            text(&o)
        );
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

fn read_parquet(path: &Path) -> DataFrame {
    ParquetReader::new(File::open(path).unwrap())
        .finish()
        .unwrap()
}

fn column(df: &DataFrame, name: &str) -> Vec<Option<String>> {
    let s = df
        .column(name)
        .unwrap()
        .as_materialized_series()
        .cast(&DataType::String)
        .unwrap();
    let ca = s.str().unwrap();
    (0..ca.len()).map(|i| ca.get(i).map(String::from)).collect()
}

#[test]
fn run_and_predict_give_the_same_results_for_nifti_and_nrrd() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let o = run(&[
        "synth",
        "--out",
        s(&data),
        "--scans",
        "1",
        "--seed",
        "5",
        "--scale",
        "0.3",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let opts = LoadOptions::default();
    let ct = nifti::read_path(data.join("images/synth-00000.nii.gz"), &opts)
        .unwrap()
        .volume;
    let mask = nifti::read_path(data.join("masks/synth-00000.nii.gz"), &opts)
        .unwrap()
        .volume;
    write_nrrd(&data.join("ct.nrrd"), &ct, Element::Short);
    write_nrrd(&data.join("mask.nrrd"), &mask, Element::Uchar);
    write_nhdr(&data, "ct", &ct, Element::Short);
    write_nhdr(&data, "mask", &mask, Element::Uchar);
    let manifest = data.join("formats.csv");
    std::fs::write(
        &manifest,
        "scan_id,image,label,mask\n\
         nii,images/synth-00000.nii.gz,covid,masks/synth-00000.nii.gz\n\
         nrrd,ct.nrrd,covid,mask.nrrd\n\
         nhdr,ct.nhdr,covid,mask.nhdr\n",
    )
    .unwrap();
    let out = dir.path().join("run");
    let o = run(&["run", "--manifest", s(&manifest), "--out", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    let scans = read_parquet(&out.join("scans.parquet"));
    for col in ["status", "predicted_class", "dice", "lesion_volume_ml"] {
        let v = column(&scans, col);
        assert_eq!(v.len(), 3);
        assert!(v[0].is_some(), "{col}: {v:?}");
        assert!(v.iter().all(|x| x == &v[0]), "{col} differs: {v:?}");
    }
    assert_eq!(column(&scans, "status")[0].as_deref(), Some("ok"));
    let sums = column(&scans, "image_sha256");
    assert!(sums[0] != sums[1] && sums[1] != sums[2], "{sums:?}");
    let masks: Vec<Vec<u8>> = ["nii", "nrrd", "nhdr"]
        .iter()
        .map(|id| std::fs::read(out.join(format!("masks/{id}.nii.gz"))).unwrap())
        .collect();
    assert!(
        masks[1] == masks[0] && masks[2] == masks[0],
        "predicted masks differ"
    );

    // predict names its outputs after the file without .nrrd / .nhdr.
    let pred = dir.path().join("pred");
    let o = run(&["predict", s(&data.join("ct.nhdr")), "--out", s(&pred)]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read(pred.join("ct_mask.nii.gz")).unwrap(),
        masks[0]
    );
}
