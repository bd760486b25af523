//! `multir report`: `cohort.json` and `report.html` rebuilt from a run's
//! Parquet tables alone, so collected results get the same report as an
//! embedded run.

use std::path::PathBuf;

use multir_common::results::store::OutputDir;

use super::outputs;
use crate::cli::ReportArgs;
use crate::tables;

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let scans = tables::read_scans(&args.results.join("scans.parquet"))?;
    let lesions = tables::read_lesions(&args.results.join("lesions.parquet"))?;
    // The overlays need the CT: the manifest given, else the one the run
    // recorded in the table's metadata, when it is still there.
    let recorded = || -> Option<PathBuf> {
        let (_, run) = scans.metadata.iter().find(|(k, _)| k == "multir.run")?;
        let run: serde_json::Value = serde_json::from_str(run).ok()?;
        let path = PathBuf::from(run["manifest"].as_str()?);
        path.is_file().then_some(path)
    };
    let manifest = match args.manifest.clone().or_else(recorded) {
        Some(p) => Some(outputs::read_manifest(&p)?),
        None => None,
    };
    // Not while a run is writing the same folder.
    let out = OutputDir::open(&args.results)?;
    let written = outputs::write_summary_and_report(
        out.root(),
        &scans.rows,
        &lesions,
        &scans.classes,
        true,
        manifest.as_ref(),
    )?;
    super::emit(format_args!(
        "{} scans, {} errors: wrote {} and {}",
        written.summary.scans,
        written.summary.errors,
        args.results.join("cohort.json").display(),
        args.results.join("report.html").display()
    ))?;
    Ok(())
}
