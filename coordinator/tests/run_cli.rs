//! `multir run` end to end on small phantoms with the shipped model: broken
//! rows become error rows, the tables open in Polars (here), pyarrow,
//! pandas and DuckDB (the test venv), their schema is the committed one, a
//! killed run resumes without redoing finished scans, outputs never replace
//! inputs, a second run into the same folder is refused, and a full disk
//! leaves no truncated file behind.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

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

/// A cohort of `n` small phantoms.
fn synth(dir: &Path, n: usize, seed: u64) {
    let o = run(&[
        "synth",
        "--out",
        s(dir),
        "--scans",
        &n.to_string(),
        "--seed",
        &seed.to_string(),
        "--scale",
        "0.3",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

fn read_parquet(path: &Path) -> DataFrame {
    ParquetReader::new(File::open(path).unwrap())
        .finish()
        .unwrap()
}

fn strings(df: &DataFrame, name: &str) -> Vec<Option<String>> {
    let s = df
        .column(name)
        .unwrap()
        .as_materialized_series()
        .cast(&DataType::String)
        .unwrap();
    let ca = s.str().unwrap();
    (0..ca.len()).map(|i| ca.get(i).map(String::from)).collect()
}

fn floats(df: &DataFrame, name: &str) -> Vec<Option<f64>> {
    let s = df
        .column(name)
        .unwrap()
        .as_materialized_series()
        .cast(&DataType::Float64)
        .unwrap();
    let ca = s.f64().unwrap();
    (0..ca.len()).map(|i| ca.get(i)).collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn broken_rows_are_error_rows_in_tables_every_reader_opens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 4, 21);
    // A truncated image, a missing one, and a truth mask on another grid.
    let img0 = std::fs::read(data.join("images/synth-00000.nii.gz")).unwrap();
    std::fs::write(data.join("truncated.nii.gz"), &img0[..img0.len() / 2]).unwrap();
    let o = run(&[
        "resample",
        s(&data.join("masks/synth-00001.nii.gz")),
        "--spacing",
        "2,2,2",
        "--nearest",
        "--out",
        s(&data.join("other_grid.nii.gz")),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let mut manifest = std::fs::read_to_string(data.join("manifest.csv")).unwrap();
    manifest.push_str("trunc,truncated.nii.gz,covid,\n");
    manifest.push_str("missing,images/nope.nii.gz,cap,\n");
    manifest.push_str("grid,images/synth-00001.nii.gz,cap,other_grid.nii.gz\n");
    std::fs::write(data.join("broken.csv"), &manifest).unwrap();
    let ids: Vec<String> = manifest
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();

    let out = dir.path().join("run");
    let o = run(&[
        "run",
        "--manifest",
        s(&data.join("broken.csv")),
        "--out",
        s(&out),
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "failed scans fail the run: {}",
        text(&o)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("3 of 7 scans failed"), "{stderr}");
    assert!(
        !stderr.contains("\x1b["),
        "no colour codes when stderr is not a terminal"
    );

    // Polars, in Rust: one row per manifest row, in manifest order.
    let scans = read_parquet(&out.join("scans.parquet"));
    let got: Vec<String> = strings(&scans, "scan_id").into_iter().flatten().collect();
    assert_eq!(got, ids);
    let status = strings(&scans, "status");
    let error = strings(&scans, "error");
    let pred = strings(&scans, "predicted_class");
    let dice = floats(&scans, "dice");
    let row = |id: &str| ids.iter().position(|i| i == id).unwrap();
    for (id, file) in [("trunc", "truncated.nii.gz"), ("missing", "nope.nii.gz")] {
        let r = row(id);
        assert_eq!(status[r].as_deref(), Some("error"));
        let e = error[r].as_deref().unwrap();
        assert!(e.contains(id) && e.contains(file), "{e}");
        assert!(pred[r].is_none());
    }
    let g = row("grid");
    assert_eq!(status[g].as_deref(), Some("error"));
    let e = error[g].as_deref().unwrap();
    assert!(
        e.contains("other_grid.nii.gz") && e.contains("metrics"),
        "{e}"
    );
    assert!(
        pred[g].is_some(),
        "a bad truth mask costs the metrics, not the prediction"
    );
    assert!(dice[g].is_none());
    for r in 0..4 {
        assert_eq!(status[r].as_deref(), Some("ok"), "{:?}", error[r]);
        assert!(pred[r].is_some());
    }

    // Lesion rows add up to each scan's lesion volume.
    let lesions = read_parquet(&out.join("lesions.parquet"));
    let (lid, lvol) = (strings(&lesions, "scan_id"), floats(&lesions, "volume_ml"));
    let volume = floats(&scans, "lesion_volume_ml");
    for r in 0..4 {
        let sum: f64 = lid
            .iter()
            .zip(&lvol)
            .filter(|(i, _)| i.as_deref() == Some(ids[r].as_str()))
            .map(|(_, v)| v.unwrap())
            .sum();
        assert!((sum - volume[r].unwrap()).abs() < 1e-6, "{}: {sum}", ids[r]);
    }

    let cohort = json(&out.join("cohort.json"));
    assert_eq!(cohort["scans"], 7);
    assert_eq!(cohort["errors"], 3);
    assert_eq!(
        cohort["classification"]["n"], 5,
        "four ok scans and the grid row"
    );
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    for part in [
        "<svg",
        "data:image/png;base64,",
        "Confusion",
        "Bland",
        "nope.nii.gz",
    ] {
        assert!(
            report.contains(part) || report.to_lowercase().contains(&part.to_lowercase()),
            "report lacks {part}"
        );
    }
    for r in 0..4 {
        assert!(out.join(format!("masks/{}.nii.gz", ids[r])).is_file());
    }

    // `multir report` rebuilds the same statistics from the tables alone.
    let before = std::fs::read(out.join("cohort.json")).unwrap();
    std::fs::remove_file(out.join("cohort.json")).unwrap();
    let o = run(&[
        "report",
        "--results",
        s(&out),
        "--manifest",
        s(&data.join("broken.csv")),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(out.join("cohort.json")).unwrap(), before);

    // pyarrow (filters on a string and a categorical column), pandas and
    // DuckDB see the same tables, with the committed schema.
    let Some(py) = multir_tests::python("run tables in Python readers") else {
        return;
    };
    let script = multir_tests::fixtures_dir("results").join("read_tables.py");
    let cls = pred[0].clone().unwrap();
    let o = Command::new(&py)
        .args([s(&script), s(&out), "synth-00002", &cls])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let seen: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let committed = json(&multir_tests::fixtures_dir("results").join("schema.json"));
    assert_eq!(
        seen["schema"], committed,
        "the table schema changed: bump RESULTS_SCHEMA_VERSION, update the README and \
         regenerate tests/fixtures/results/schema.json with read_tables.py --schema"
    );
    assert_eq!(seen["schema_version"], "2");
    assert_eq!(seen["pyarrow_rows"], 7);
    assert_eq!(seen["pyarrow_by_id"], serde_json::json!(["synth-00002"]));
    let want: Vec<String> = (0..7)
        .filter(|&r| pred[r].as_deref() == Some(cls.as_str()))
        .map(|r| ids[r].clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(seen["pyarrow_by_class"], serde_json::json!(want));
    assert_eq!(seen["pandas_rows"], 7);
    assert_eq!(seen["pandas_ok"], 4);
    assert_eq!(seen["pandas_class_dtype"], "category");
    assert_eq!(seen["pandas_ids"], serde_json::json!(ids));
    assert_eq!(seen["duckdb_errors"], 3);
    for r in seen["duckdb_lesion_sums"].as_array().unwrap() {
        let (a, b) = (r[1].as_f64().unwrap(), r[2].as_f64().unwrap());
        assert!((a - b).abs() < 1e-6, "{r}");
    }
}

/// Waits until `dir` holds at least `n` fragments (or the child ends).
fn wait_for_fragments(dir: &Path, n: usize, child: &mut std::process::Child) -> usize {
    loop {
        let count = std::fs::read_dir(dir)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
                })
                .count()
            })
            .unwrap_or(0);
        if count >= n || child.try_wait().unwrap().is_some() {
            return count;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fragments(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(out.join("fragments"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_killed_run_resumes_without_redoing_finished_scans() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 8, 22);
    let (out, manifest) = (dir.path().join("run"), data.join("manifest.csv"));
    let args = ["run", "--manifest", s(&manifest), "--out", s(&out)];
    let mut child = multir()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = wait_for_fragments(&out.join("fragments"), 2, &mut child);
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    assert!(seen >= 2, "the run ended before two scans finished");
    let before = fragments(&out);
    assert!(before.len() < 8, "killed mid-cohort");
    assert!(
        before.iter().all(|(n, _)| n.ends_with(".json")),
        "{before:?}"
    );

    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains(&format!("{} kept from an earlier run", before.len())),
        "{said}"
    );
    let after = fragments(&out);
    assert_eq!(after.len(), 8);
    for (name, bytes) in &before {
        let now = &after.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(now, bytes, "{name} was redone");
    }
    let ids = strings(&read_parquet(&out.join("scans.parquet")), "scan_id");
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (8, 8));

    // --force redoes everything.
    let o = run(&[&args[..], &["--force"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("0 kept"),
        "{}",
        text(&o)
    );
}

#[test]
fn sigterm_finishes_cleanly_writes_what_is_done_and_says_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 8, 23);
    let out = dir.path().join("run");
    let mut child = multir()
        .args([
            "run",
            "--manifest",
            s(&data.join("manifest.csv")),
            "--out",
            s(&out),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_fragments(&out.join("fragments"), 1, &mut child);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let done = fragments(&out).len();
    if done == 8 {
        eprintln!("the run finished before SIGTERM arrived; nothing to check");
        return;
    }
    assert_eq!(o.status.code(), Some(130), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Run the same command again"), "{err}");
    let scans = read_parquet(&out.join("scans.parquet"));
    assert_eq!(scans.height(), done, "the tables hold every finished scan");
    let leftovers: Vec<_> = files_under(&out)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn outputs_never_replace_inputs_and_two_runs_never_share_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 2, 24);
    let manifest = data.join("manifest.csv");
    let masks_before = std::fs::read(data.join("masks/synth-00000.nii.gz")).unwrap();

    // The cohort folder itself as the output: refused before any work.
    let o = run(&["run", "--manifest", s(&manifest), "--out", s(&data)]);
    assert_eq!(o.status.code(), Some(65), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("an input of this run"),
        "{}",
        text(&o)
    );
    assert!(!data.join("fragments").exists(), "nothing written");
    assert_eq!(
        std::fs::read(data.join("masks/synth-00000.nii.gz")).unwrap(),
        masks_before
    );

    // An output "folder" that is a file, or cannot be created: I/O error,
    // before the model is even loaded.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for out in [file.as_path(), Path::new("/proc/multir-out")] {
        let o = run(&["run", "--manifest", s(&manifest), "--out", s(out)]);
        assert_eq!(o.status.code(), Some(74), "{}", text(&o));
        assert!(
            !String::from_utf8_lossy(&o.stderr).contains("model the shipped"),
            "{}",
            text(&o)
        );
    }

    // Two inputs with one name: predict refuses before any work.
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::copy(data.join("images/synth-00000.nii.gz"), d.join("x.nii.gz")).unwrap();
    }
    let pred = dir.path().join("pred");
    let o = run(&[
        "predict",
        s(&a.join("x.nii.gz")),
        s(&b.join("x.nii.gz")),
        "--out",
        s(&pred),
    ]);
    assert_eq!(o.status.code(), Some(65), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("would both write"),
        "{}",
        text(&o)
    );
    assert!(!pred.exists());

    // A second run into a folder another run holds is refused (the lock).
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let lock = File::create(out.join(".lock")).unwrap();
    // SAFETY: flock on a file this test owns.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) },
        0
    );
    let o = run(&["run", "--manifest", s(&manifest), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another multir run"),
        "{}",
        text(&o)
    );
    drop(lock);

    // Scan ids that would escape the output folder or be too long.
    for bad in ["../escape", &"x".repeat(300)] {
        let m = dir.path().join("bad.csv");
        std::fs::write(
            &m,
            format!(
                "scan_id,image\n{bad},{}\n",
                s(&data.join("images/synth-00000.nii.gz"))
            ),
        )
        .unwrap();
        let o = run(&[
            "run",
            "--manifest",
            s(&m),
            "--out",
            s(&dir.path().join("bad")),
        ]);
        assert_eq!(o.status.code(), Some(65), "{}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("line 2"),
            "{}",
            text(&o)
        );
    }
}

#[test]
fn a_full_disk_stops_the_run_naming_the_file_and_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 2, 25);
    let out = dir.path().join("run");
    // A file-size limit stands in for a full disk: writes past it fail as
    // they would with ENOSPC (here EFBIG), through the same code paths.
    let mut cmd = multir();
    cmd.args([
        "run",
        "--manifest",
        s(&data.join("manifest.csv")),
        "--out",
        s(&out),
        "--probabilities",
    ]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 16 << 10,
                rlim_max: 16 << 10,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(74), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("_prob.nii.gz"),
        "the error names the file: {err}"
    );
    for f in files_under(&out) {
        let name = f.to_string_lossy();
        assert!(!name.ends_with(".part"), "partial file left: {name}");
        if name.ends_with(".nii.gz") {
            let o = run(&["inspect", &name]);
            assert!(o.status.success(), "{name} is truncated: {}", text(&o));
        }
    }
}

#[test]
fn predict_exits_with_the_class_of_its_failure_and_flags_implausible_scans() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 1, 26);
    let out = dir.path().join("pred");
    let empty = dir.path().join("empty.nii.gz");
    std::fs::write(&empty, b"").unwrap();
    let o = run(&["predict", s(&empty), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(65), "empty file: {}", text(&o));
    let missing = dir.path().join("missing.nii.gz");
    let o = run(&["predict", s(&missing), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(74), "missing file: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.nii.gz"));

    // A read-only output folder fails before any inference.
    let ro = dir.path().join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    let image = data.join("images/synth-00000.nii.gz");
    let mut perms = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o555);
    std::fs::set_permissions(&ro, perms).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let o = run(&["predict", s(&image), "--out", s(&ro)]);
        assert_eq!(o.status.code(), Some(74), "{}", text(&o));
        assert!(o.stdout.is_empty(), "nothing was predicted");
    }

    // A CT of two slices 40 mm apart is flagged and warned about; the
    // shipped model finds no lungs in it (their air is averaged away), so
    // it is an input error row naming the problem, not a guess.
    let thin = dir.path().join("thin.nii.gz");
    let o = run(&[
        "resample",
        s(&image),
        "--spacing",
        "40,40,40",
        "--out",
        s(&thin),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["predict", s(&thin), "--out", s(&out)]);
    assert_eq!(o.status.code(), Some(65), "{}", text(&o));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(line["flags"], "few_slices", "{line}");
    assert_eq!(line["fault"], "input", "{line}");
    assert!(
        line["error"].as_str().unwrap().contains("no lungs found"),
        "{line}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not look like a chest CT"));
}

#[test]
fn a_parquet_manifest_runs_like_its_csv() {
    use polars::prelude::{Column, NamedFrom, ParquetWriter, Series};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, 2, 27);
    let csv = std::fs::read_to_string(data.join("manifest.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let col = |i: usize, name: &str| -> Column {
        Series::new(name.into(), rows.iter().map(|r| r[i]).collect::<Vec<_>>()).into()
    };
    let mut df = DataFrame::new(
        rows.len(),
        vec![
            col(0, "scan_id"),
            col(1, "image"),
            col(2, "label"),
            col(3, "mask"),
        ],
    )
    .unwrap();
    // Named .csv on purpose: the format is read from the bytes.
    let pq = data.join("manifest-parquet.csv");
    ParquetWriter::new(File::create(&pq).unwrap())
        .finish(&mut df)
        .unwrap();
    let out = dir.path().join("run");
    let o = run(&["run", "--manifest", s(&pq), "--out", s(&out)]);
    assert!(o.status.success(), "{}", text(&o));
    let scans = read_parquet(&out.join("scans.parquet"));
    let ids: Vec<String> = strings(&scans, "scan_id").into_iter().flatten().collect();
    assert_eq!(ids, ["synth-00000", "synth-00001"]);
    assert!(
        floats(&scans, "volume_truth_ml")
            .iter()
            .all(Option::is_some),
        "truth masks were read"
    );
    assert_eq!(strings(&scans, "label")[0].as_deref(), Some(rows[0][2]));

    // Its rows obey the CSV rules: a duplicate id names the line.
    let mut dup = DataFrame::new(
        2,
        vec![
            Series::new("scan_id".into(), ["a", "a"]).into(),
            Series::new("image".into(), [rows[0][1], rows[1][1]]).into(),
        ],
    )
    .unwrap();
    ParquetWriter::new(File::create(&pq).unwrap())
        .finish(&mut dup)
        .unwrap();
    let o = run(&[
        "run",
        "--manifest",
        s(&pq),
        "--out",
        s(&dir.path().join("dup")),
    ]);
    assert_eq!(o.status.code(), Some(65), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 3") && err.contains("duplicate"), "{err}");
}
