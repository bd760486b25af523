//! `multir predict`: lesion masks, class probabilities and (on request)
//! probability maps and Grad-CAM heat maps for individual scans. One JSON
//! line per scan on stdout; a scan that fails is reported and the others
//! still run.

use std::path::Path;
use std::time::Instant;

use multir_common::io::{self, nifti};
use multir_common::model::Predictor;

use crate::cli::PredictArgs;

/// The name outputs are written under: the file name without .nii/.nii.gz,
/// or the DICOM folder's name.
pub fn scan_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scan".into());
    for ext in [".nii.gz", ".nii"] {
        if let Some(stem) = name.strip_suffix(ext) {
            return stem.to_string();
        }
    }
    name
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let ck = super::model::checkpoint(args.infer.checkpoint.as_deref())?;
    let device = super::model::device(&args.infer.device)?;
    let predictor = Predictor::new(&ck, device)?;
    let cfg = args.infer.config(args.gradcam);
    cfg.validate()?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| multir_common::Error::Io(e).in_file(&args.out))?;
    let classes = &ck.meta.classes;
    let mut failed = 0;
    for input in &args.inputs {
        let t = Instant::now();
        let result = (|| -> anyhow::Result<serde_json::Value> {
            let ct = io::load_path(input, &args.load.options())?.volume;
            let p = predictor.predict(&ct, &cfg).map_err(|e| e.in_file(input))?;
            let name = scan_name(input);
            let mask_path = args.out.join(format!("{name}_mask.nii.gz"));
            nifti::write_path(&mask_path, &p.mask, &nifti::WriteOptions::mask())?;
            let mut files = vec![mask_path.display().to_string()];
            if args.probabilities {
                let f = args.out.join(format!("{name}_prob.nii.gz"));
                nifti::write_path(&f, &p.probability, &nifti::WriteOptions::float32())?;
                files.push(f.display().to_string());
            }
            if let Some(cam) = &p.gradcam {
                let f = args.out.join(format!("{name}_gradcam.nii.gz"));
                nifti::write_path(&f, cam, &nifti::WriteOptions::float32())?;
                files.push(f.display().to_string());
            }
            let voxels = p.mask.data().iter().filter(|&&v| v > 0.5).count();
            Ok(serde_json::json!({
                "input": input.display().to_string(),
                "class": classes[p.class_index],
                "probabilities": classes.iter().cloned().zip(p.class_probabilities.iter().map(|&v| serde_json::Value::from(v))).collect::<serde_json::Map<_, _>>(),
                "lesion_volume_ml": voxels as f64 * p.mask.voxel_volume_mm3() / 1000.0,
                "windows": p.windows,
                "seconds": t.elapsed().as_secs_f64(),
                "files": files,
            }))
        })();
        match result {
            Ok(v) => super::emit(v)?,
            Err(e) => {
                failed += 1;
                tracing::error!("{e:#}");
                super::emit(
                    serde_json::json!({"input": input.display().to_string(), "error": format!("{e:#}")}),
                )?;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} scans failed", args.inputs.len());
    }
    Ok(())
}
