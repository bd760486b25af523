//! What the cohort commands (`run`, `report`) share: reading a manifest in
//! either format, the checks that keep outputs away from inputs, and the
//! writing of the tables, `cohort.json` and the report.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use multir_common::Error;
use multir_common::io::write_atomic;
use multir_common::manifest::Manifest;
use multir_common::results::sink::{ScanOutput, Sink};
use multir_common::results::summary::CohortSummary;
use multir_common::results::{LesionRow, ScanRecord, ScanRow};

use crate::{report, tables};

/// Reads a manifest: CSV, or Parquet with the same columns (told apart by
/// the file's first bytes, not its name). A Parquet manifest goes through
/// the CSV parser's checks unchanged: its rows are rendered as CSV first,
/// so both formats obey the same rules and name the same line numbers
/// (row n is line n + 1).
pub fn read_manifest(path: &Path) -> anyhow::Result<Manifest> {
    let mut magic = [0u8; 4];
    let is_parquet = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .map(|()| &magic == b"PAR1")
        .unwrap_or(false);
    if !is_parquet {
        return Ok(Manifest::read_path(path)?);
    }
    let frame = tables::read(path)?.frame;
    let names: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|n| n.to_string())
        .collect();
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&names)?;
    let cols = names
        .iter()
        .map(|n| {
            let s = frame
                .column(n)?
                .as_materialized_series()
                .cast(&polars::prelude::DataType::String)?;
            let ca = s.str()?;
            Ok((0..ca.len())
                .map(|i| ca.get(i).unwrap_or("").to_string())
                .collect::<Vec<_>>())
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| path.display().to_string())?;
    for r in 0..frame.height() {
        w.write_record(cols.iter().map(|c| c[r].as_str()))?;
    }
    let text = w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?;
    let root = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(Manifest::from_reader(&text[..], root).map_err(|e| e.in_file(path))?)
}

/// Refuses scan ids that differ only in case: on case-insensitive file
/// systems (macOS, Windows shares) their outputs would be one file.
pub fn check_ids<'a>(ids: impl Iterator<Item = &'a str>) -> multir_common::Result<()> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for id in ids {
        if let Some(other) = seen.insert(id.to_lowercase(), id)
            && other != id
        {
            return Err(Error::Manifest(format!(
                "scan ids {other:?} and {id:?} differ only in case; their output files \
                 would collide on case-insensitive file systems"
            )));
        }
    }
    Ok(())
}

/// The absolute, symlink-free form of a path that may not exist yet: its
/// nearest existing ancestor canonicalised, the rest appended.
fn resolve(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut tail = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            return tail.iter().rev().fold(c, |p: PathBuf, t| p.join(t));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuses an output folder that holds any input (or is one): every
/// output lies under it, so this is what guarantees no output replaces an
/// input, through symbolic links too. Folders are resolved once each, so
/// the check stays fast on cohorts of 100 000 scans.
pub fn refuse_inputs_inside(out: &Path, inputs: &[PathBuf]) -> multir_common::Result<()> {
    let out_real = resolve(out);
    let mut dirs: HashMap<PathBuf, PathBuf> = HashMap::new();
    for input in inputs {
        let is_link = std::fs::symlink_metadata(input)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false);
        let real = if is_link {
            resolve(input)
        } else {
            let parent = input.parent().unwrap_or(Path::new(""));
            let dir = dirs.entry(parent.to_path_buf()).or_insert_with(|| {
                resolve(if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                })
            });
            match input.file_name() {
                Some(n) => dir.join(n),
                None => dir.clone(),
            }
        };
        if real.starts_with(&out_real) {
            return Err(Error::InvalidArgument(format!(
                "the output folder {} holds {}, an input of this run: outputs written there \
                 could replace inputs. Choose an output folder outside the cohort's files",
                out.display(),
                input.display()
            )));
        }
    }
    Ok(())
}

/// What [`write_results`] produced.
pub struct Written {
    /// The cohort statistics.
    pub summary: CohortSummary,
}

/// Writes `scans.parquet`, `lesions.parquet`, `cohort.json` and (when asked
/// and labels or masks make one worthwhile) `report.html` under `root`, each
/// atomically; the manifest gives the report its CT overlays.
pub fn write_results(
    root: &Path,
    records: &[&ScanRecord],
    classes: &[String],
    run_info: &serde_json::Value,
    with_report: bool,
    manifest: Option<&Manifest>,
) -> anyhow::Result<Written> {
    let mut tables = tables::TableSink::new(classes);
    for r in records {
        tables.accept(ScanOutput {
            record: (*r).clone(),
            mask: None,
            probability: None,
            gradcam: None,
            error: None,
        })?;
    }
    let (scans, lesions) = tables.finish(root, run_info)?;
    write_summary_and_report(root, &scans, &lesions, classes, with_report, manifest)
}

/// `cohort.json` and the report, from rows alone.
pub fn write_summary_and_report(
    root: &Path,
    scans: &[ScanRow],
    lesions: &[LesionRow],
    classes: &[String],
    with_report: bool,
    manifest: Option<&Manifest>,
) -> anyhow::Result<Written> {
    let summary = CohortSummary::from_rows(scans, classes)?;
    let json = serde_json::to_vec_pretty(&summary)?;
    write_atomic(root.join("cohort.json"), |f| {
        Ok(std::io::Write::write_all(f, &json)?)
    })?;
    let labelled = scans
        .iter()
        .any(|r| r.label.is_some() || r.volume_truth_ml.is_some());
    if with_report && labelled {
        let html = report::render(&summary, scans, lesions, manifest, root)?;
        write_atomic(root.join("report.html"), |f| {
            Ok(std::io::Write::write_all(f, html.as_bytes())?)
        })?;
    }
    Ok(Written { summary })
}

/// Refuses outputs that would share a path or replace an input, before
/// any work: `predict`'s per-scan file names.
pub fn refuse_collisions(pairs: &[(PathBuf, PathBuf)]) -> multir_common::Result<()> {
    let inputs: HashSet<PathBuf> = pairs.iter().map(|(i, _)| resolve(i)).collect();
    let mut seen: HashMap<PathBuf, &Path> = HashMap::new();
    for (input, output) in pairs {
        let real = resolve(output);
        if inputs.contains(&real) {
            return Err(Error::InvalidArgument(format!(
                "output {} would replace the input {}",
                output.display(),
                real.display()
            )));
        }
        if let Some(other) = seen.insert(real, input) {
            return Err(Error::InvalidArgument(format!(
                "{} and {} would both write {}; give them different names or \
                 predict them into different --out folders",
                other.display(),
                input.display(),
                output.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differing_in_case_are_refused() {
        assert!(check_ids(["a", "b", "A1"].into_iter()).is_ok());
        let e = check_ids(["Scan1", "x", "scan1"].into_iter())
            .unwrap_err()
            .to_string();
        assert!(e.contains("Scan1") && e.contains("scan1"), "{e}");
    }

    #[test]
    fn an_output_folder_holding_an_input_is_refused_even_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let cohort = dir.path().join("cohort");
        std::fs::create_dir_all(cohort.join("masks")).unwrap();
        let mask = cohort.join("masks/a.nii.gz");
        std::fs::write(&mask, b"x").unwrap();
        let inputs = vec![mask.clone()];
        assert!(refuse_inputs_inside(&dir.path().join("run"), &inputs).is_ok());
        assert!(refuse_inputs_inside(&dir.path().join("run/deeper/new"), &inputs).is_ok());
        let e = refuse_inputs_inside(&cohort, &inputs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.nii.gz"), "{e}");
        // The same folder under another name.
        let link = dir.path().join("alias");
        std::os::unix::fs::symlink(&cohort, &link).unwrap();
        assert!(refuse_inputs_inside(&link, &inputs).is_err());
        // An input that is a link into the output folder.
        let out = dir.path().join("out");
        std::fs::create_dir_all(out.join("masks")).unwrap();
        std::fs::write(out.join("masks/b.nii.gz"), b"y").unwrap();
        let b = cohort.join("b.nii.gz");
        std::os::unix::fs::symlink(out.join("masks/b.nii.gz"), &b).unwrap();
        assert!(refuse_inputs_inside(&out, &[b]).is_err());
    }

    #[test]
    fn outputs_sharing_a_name_or_replacing_an_input_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s);
        let ok = [(p("a/x.nii.gz"), p("out/x_mask.nii.gz"))];
        assert!(refuse_collisions(&ok).is_ok());
        let clash = [
            (p("a/x.nii.gz"), p("out/x_mask.nii.gz")),
            (p("b/x.nii.gz"), p("out/x_mask.nii.gz")),
        ];
        let e = refuse_collisions(&clash).unwrap_err().to_string();
        assert!(e.contains("a/x.nii.gz") && e.contains("b/x.nii.gz"), "{e}");
        let replace = [
            (p("a/x.nii.gz"), p("out/y.nii.gz")),
            (p("out/y.nii.gz"), p("out/z.nii.gz")),
        ];
        assert!(refuse_collisions(&replace).is_err());
    }
}
