//! `multir predict`: lesion masks, class probabilities, lesion burden and
//! (on request) probability maps and Grad-CAM heat maps for individual
//! scans, through the same per-scan processor as `multir run`. One JSON
//! line per scan on stdout (the scan's result row and the files written);
//! a scan that fails is reported and the others still run.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use multir_common::io::nifti;
use multir_common::job::{Job, Source};
use multir_common::process::{Model, ProcessConfig, Processor};
use multir_common::results::Status;
use multir_common::results::sink::{ScanOutput, Sink};
use multir_common::runner::{self, RunOptions};

use crate::cli::PredictArgs;

/// The name outputs are written under: the file name without
/// .nii/.nii.gz/.nrrd/.nhdr, or the DICOM folder's name.
pub fn scan_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scan".into());
    for ext in [".nii.gz", ".nii", ".nrrd", ".nhdr"] {
        if let Some(stem) = name.strip_suffix(ext) {
            return stem.to_string();
        }
    }
    name
}

/// Writes each scan's maps under `out` and prints its JSON line.
struct PredictSink<'a> {
    out: &'a Path,
    inputs: Vec<PathBuf>,
    failed: usize,
    next: usize,
    /// The first scan's error, for the exit status.
    first_error: Option<multir_common::Error>,
}

impl PredictSink<'_> {
    fn files(&self, name: &str) -> [PathBuf; 3] {
        ["mask", "prob", "gradcam"].map(|k| self.out.join(format!("{name}_{k}.nii.gz")))
    }

    fn write(&self, o: &ScanOutput, name: &str) -> multir_common::Result<Vec<String>> {
        let [mask_f, prob_f, cam_f] = self.files(name);
        let mut files = Vec::new();
        let maps = [
            (&o.mask, mask_f, nifti::WriteOptions::mask()),
            (&o.probability, prob_f, nifti::WriteOptions::float32()),
            (&o.gradcam, cam_f, nifti::WriteOptions::float32()),
        ];
        for (vol, path, opts) in maps {
            if let Some(v) = vol {
                nifti::write_path(&path, v, &opts)?;
                files.push(path.display().to_string());
            }
        }
        Ok(files)
    }
}

impl Sink for PredictSink<'_> {
    fn accept(&mut self, mut o: ScanOutput) -> multir_common::Result<()> {
        // The runner keeps job order, so the n-th output is the n-th input.
        let input = self.inputs[self.next].clone();
        self.next += 1;
        let name = o.record.scan.scan_id.clone();
        let t = std::time::Instant::now();
        let files = self.write(&o, &name)?;
        o.record.scan.seconds.write = t.elapsed().as_secs_f64();
        o.record.scan.seconds.total = o.record.scan.seconds.sum();
        if self.first_error.is_none() {
            self.first_error = o.error.take();
        }
        let row = &o.record.scan;
        if row.status == Status::Error {
            self.failed += 1;
            tracing::error!("{}", row.error.as_deref().unwrap_or("failed"));
        }
        let mut line = serde_json::to_value(row).map_err(|e| {
            multir_common::Error::InvalidArgument(format!("cannot encode the result: {e}"))
        })?;
        line["input"] = input.display().to_string().into();
        line["classes"] = o.record.classes.clone().into();
        line["files"] = files.into();
        super::emit(line)?;
        Ok(())
    }
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let names: Vec<String> = args.inputs.iter().map(|p| scan_name(p)).collect();
    for (input, name) in args.inputs.iter().zip(&names) {
        multir_common::manifest::check_scan_id(name)
            .map_err(|why| multir_common::Error::InvalidArgument(why).in_file(input))?;
    }
    super::outputs::check_ids(names.iter().map(String::as_str))?;
    let pairs: Vec<(PathBuf, PathBuf)> = args
        .inputs
        .iter()
        .zip(&names)
        .map(|(i, n)| (i.clone(), args.out.join(format!("{n}_mask.nii.gz"))))
        .collect();
    super::outputs::refuse_collisions(&pairs)?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| multir_common::Error::Io(e).in_file(&args.out))?;
    // A folder that cannot take files fails now, not after the inference.
    let probe = args.out.join(".multir-probe");
    multir_common::io::write_atomic(&probe, |_| Ok(()))?;
    std::fs::remove_file(&probe).map_err(|e| multir_common::Error::Io(e).in_file(&probe))?;
    let cfg = ProcessConfig {
        max_voxels: args.load.max_voxels,
        series_uid: args.load.series_uid.clone(),
        inference: args.infer.config(args.gradcam),
        probability_maps: args.probabilities,
        keep_lesions_outside_lungs: args.infer.keep_lesions_outside_lungs,
        ..ProcessConfig::default()
    };
    cfg.validate()?;
    let model = Model::open(args.infer.checkpoint.as_deref())?;
    let device = multir_common::device::open(args.infer.device.device)?;
    let processor = Processor::new(&model, device, &cfg)?;
    let jobs: Vec<Job> = args
        .inputs
        .iter()
        .zip(names)
        .map(|(input, scan_id)| Job {
            scan_id,
            image: Source::path(input),
            mask: None,
            label: None,
        })
        .collect();
    let mut sink = PredictSink {
        out: &args.out,
        inputs: args.inputs.clone(),
        failed: 0,
        next: 0,
        first_error: None,
    };
    let never = AtomicBool::new(false);
    runner::run(
        jobs,
        &processor,
        &mut sink,
        |_, _| false,
        &never,
        RunOptions::default(),
        |_| {},
    )?;
    if sink.failed > 0 {
        // The exit status is that of the first failure (65 bad input, 74
        // missing or unreadable file), as for any other command.
        let why = format!("{} of {} scans failed", sink.failed, args.inputs.len());
        return Err(match sink.first_error {
            Some(e) => anyhow::Error::from(e).context(why),
            None => anyhow::anyhow!(why),
        });
    }
    Ok(())
}
