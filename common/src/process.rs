//! The per-scan processor: one job in, one result row (and its lesion rows
//! and mask) out. Every driver runs this same code: the embedded cohort
//! run ([`crate::runner`]), `multir predict`, and the queue worker.
//!
//! A scan passes through four stages, each a method, so a driver may run
//! them on different threads and overlap the reading of the next scans with
//! the network's work on the current one:
//!
//! 1. [`Reader::fetch`]: the input's bytes and their SHA-256 (the
//!    [`ResumeKey`] is known here, before any decoding, so a rerun can skip
//!    a finished scan at the cost of reading it once);
//! 2. [`Reader::decode`]: decode the CT and the truth mask, check that they
//!    share a grid, and bring the CT onto the model grid;
//! 3. [`Processor::infer`]: the network (the one stage that needs it);
//! 4. [`Finisher::finish`]: quantification (lesions, lungs, severity) and
//!    segmentation metrics, giving a [`ScanOutput`].
//!
//! A stage that fails marks the row failed ([`ScanRow::fail`], with the
//! [`Fault`] of the error) and the later stages pass the scan through, so a
//! bad scan always ends as one error row naming the scan and the file and
//! never stops the cohort. A truth mask that cannot be used costs only the
//! metrics: the prediction is still made and reported. A panic inside a
//! stage (a bug) is caught and reported the same way.
//!
//! Nothing here opens output files or talks to a network; the caller's
//! [`crate::results::sink::Sink`] decides where results go.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use tch::Device;

use crate::error::{Context, Error, Result};
use crate::io::{self, LoadOptions, dicom, nrrd};
use crate::job::{Job, Source};
use crate::metrics::segmentation_metrics;
use crate::model::checkpoint::CheckpointMeta;
use crate::model::infer::prepare_for;
use crate::model::{Checkpoint, GridPrediction, InferenceConfig, Predictor};
use crate::preprocess::Prepared;
use crate::preprocess::lung::LungMaskConfig;
use crate::quantify::{
    components_mask, components_touching_lungs, lesion_components, lungs_on_grid,
    quantify_components,
};
use crate::results::sink::ScanOutput;
use crate::results::{LesionRow, RESULTS_SCHEMA_VERSION, ResumeKey, ScanRecord, ScanRow};
use crate::volume::{Volume, check_same_grid};

/// SHA-256 of bytes, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A checkpoint and the checksum of the file it came from.
#[derive(Debug)]
pub struct Model {
    /// The decoded checkpoint.
    pub checkpoint: Checkpoint,
    /// SHA-256 of the checkpoint file's bytes (`sha256sum` of the file).
    pub sha256: String,
    /// Where it came from, for messages ("the shipped model" or a path).
    pub name: String,
}

impl Model {
    /// Decodes checkpoint bytes; errors name `name`.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Model> {
        let checkpoint = Checkpoint::from_bytes(bytes).in_file(name)?;
        let m = &checkpoint.meta;
        tracing::info!(
            steps = m.training.steps,
            fingerprint = %m.training.fingerprint,
            "model {name}: {} levels, widths {:?}, {} iterations, classes {:?}",
            m.model.levels(),
            m.model.widths,
            m.model.iterations,
            m.classes
        );
        Ok(Model {
            checkpoint,
            sha256: sha256_hex(bytes),
            name: name.to_string(),
        })
    }

    /// The checkpoint file at `path`, or the shipped model when `None`.
    pub fn open(path: Option<&Path>) -> Result<Model> {
        match path {
            None => Model::from_bytes("the shipped model", crate::model::shipped::BYTES),
            Some(p) => {
                let len = std::fs::metadata(p).in_file(p)?.len();
                if len > crate::model::checkpoint::MAX_BYTES {
                    return Err(Error::Checkpoint(format!(
                        "{len} bytes, more than the {}-byte limit",
                        crate::model::checkpoint::MAX_BYTES
                    ))
                    .in_file(p));
                }
                let bytes = std::fs::read(p).in_file(p)?;
                Model::from_bytes(&p.display().to_string(), &bytes)
            }
        }
    }
}

/// Everything that decides a scan's result besides its inputs and the
/// model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProcessConfig {
    /// Voxel limit applied to every volume before it is allocated.
    pub max_voxels: u64,
    /// DICOM: the series to read from folders holding several.
    pub series_uid: Option<String>,
    /// Sliding windows, TTA, threshold.
    pub inference: InferenceConfig,
    /// Surface tolerance of the segmentation metrics, mm.
    pub tolerance_mm: f64,
    /// The lung mask behind involvement and severity.
    pub lung: LungMaskConfig,
    /// Return the lesion probability map as well as the mask.
    pub probability_maps: bool,
    /// Keep predicted lesions that touch no lung (by default they are
    /// removed, see [`crate::quantify::lesions_touching_lungs`]).
    pub keep_lesions_outside_lungs: bool,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            max_voxels: io::DEFAULT_MAX_VOXELS,
            series_uid: None,
            inference: InferenceConfig::default(),
            tolerance_mm: 1.0,
            lung: LungMaskConfig::default(),
            probability_maps: false,
            keep_lesions_outside_lungs: false,
        }
    }
}

impl ProcessConfig {
    /// Refuses settings that cannot give a result.
    pub fn validate(&self) -> Result<()> {
        self.inference.validate()?;
        if !(self.tolerance_mm.is_finite() && self.tolerance_mm >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "surface tolerance {} mm must be finite and non-negative",
                self.tolerance_mm
            )));
        }
        Ok(())
    }

    /// The loader options.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            max_voxels: self.max_voxels,
            series_uid: self.series_uid.clone(),
        }
    }

    /// SHA-256 of these settings' JSON: two runs with equal checksums
    /// compute the same results from the same inputs and model. (Settings
    /// that only change speed, such as the window batch and where windows
    /// are blended, are left out.)
    pub fn settings_sha256(&self) -> String {
        let mut s = self.clone();
        s.inference.batch = 0;
        s.inference.stitch = Default::default();
        s.inference.device_stitch_bytes = 0;
        sha256_hex(&serde_json::to_vec(&s).expect("settings serialise"))
    }
}

/// The bytes of one input, read but not decoded.
#[derive(Debug)]
enum Fetched {
    /// One file (NIfTI or NRRD with attached data).
    File { name: String, data: Arc<[u8]> },
    /// A NRRD header (`.nhdr`) and its detached data file.
    Detached {
        name: String,
        data_name: String,
        header: Arc<[u8]>,
        data: Arc<[u8]>,
    },
    /// A DICOM folder on this machine.
    Folder(PathBuf),
    /// A DICOM series in memory.
    Series {
        name: String,
        files: Arc<Vec<(String, Vec<u8>)>>,
    },
}

/// A scan between stages: its row so far and whatever the next stage
/// needs. Only this module looks inside.
#[derive(Debug)]
pub struct InFlight {
    /// The row as far as it is known.
    pub row: ScanRow,
    /// What produces the result (known after [`Reader::fetch`]).
    pub key: ResumeKey,
    image: Option<Fetched>,
    mask: Option<Fetched>,
    image_name: String,
    ct: Option<Volume>,
    truth: Option<Volume>,
    prepared: Option<Prepared>,
    prediction: Option<GridPrediction>,
    first_error: Option<Error>,
}

impl InFlight {
    /// Whether a stage has failed.
    pub fn failed(&self) -> bool {
        self.row.status == crate::results::Status::Error
    }

    /// Records a failure of the scan as a whole: the message names the scan
    /// and (through the error) the file.
    fn fail(&mut self, err: Error) {
        let message = format!("scan {}: {err}", self.row.scan_id);
        self.row.fail(err.fault(), message);
        if self.first_error.is_none() {
            self.first_error = Some(err);
        }
    }
}

/// Runs `f`, turning a panic into an environment failure of the scan: a
/// bug met on one scan must not take the cohort down with it.
fn guarded<T>(stage: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Io(std::io::Error::other(format!(
                "internal error during {stage}: {what}"
            ))))
        }
    }
}

/// Reads and decodes inputs, and brings CTs onto the model grid. Holds no
/// network, so it can work on another thread than [`Processor::infer`].
#[derive(Debug, Clone)]
pub struct Reader {
    load: LoadOptions,
    meta: CheckpointMeta,
    inference: InferenceConfig,
    model_sha256: String,
    settings_sha256: String,
    device: String,
}

/// The largest input file read, from the voxel limit: float64 voxels and a
/// header. Compressed files are smaller; nothing legitimate is larger.
pub fn max_file_bytes(max_voxels: u64) -> u64 {
    max_voxels.saturating_mul(8).saturating_add(1 << 20)
}

impl Reader {
    /// Stage 1: reads the job's files and checksums them.
    pub fn fetch(&self, job: &Job) -> InFlight {
        let t = Instant::now();
        let mut row = ScanRow::new(&job.scan_id, job.label.map(|l| l.as_str().to_string()));
        row.model_sha256 = self.model_sha256.clone();
        row.device = self.device.clone();
        let mut s = InFlight {
            row,
            key: ResumeKey {
                label: job.label.map(|l| l.as_str().to_string()),
                model_sha256: self.model_sha256.clone(),
                settings_sha256: self.settings_sha256.clone(),
                ..ResumeKey::default()
            },
            image: None,
            mask: None,
            image_name: job.image.name(),
            ct: None,
            truth: None,
            prepared: None,
            prediction: None,
            first_error: None,
        };
        match guarded("reading", || self.fetch_source(&job.image)) {
            Ok((f, sum)) => {
                s.key.image_sha256 = Some(sum.clone());
                s.row.image_sha256 = Some(sum);
                s.image = Some(f);
            }
            Err(e) => s.fail(e),
        }
        if let Some(m) = &job.mask {
            match guarded("reading", || self.fetch_source(m)) {
                Ok((f, sum)) => {
                    s.key.mask_sha256 = Some(sum.clone());
                    s.row.mask_sha256 = Some(sum);
                    s.mask = Some(f);
                }
                Err(e) => {
                    let e = e.in_file(m.name());
                    s.fail(metrics_lost(e));
                    // The key must still differ from a run where the mask
                    // was readable, so that run's result is not reused.
                    s.key.mask_sha256 = Some("unreadable".into());
                }
            }
        }
        s.row.seconds.read = t.elapsed().as_secs_f64();
        s
    }

    fn fetch_source(&self, src: &Source) -> Result<(Fetched, String)> {
        match src {
            Source::Path { path } => {
                let meta = std::fs::metadata(path).in_file(path)?;
                if meta.is_dir() {
                    let sum = folder_sha256(path).in_file(path)?;
                    return Ok((Fetched::Folder(path.clone()), sum));
                }
                let limit = max_file_bytes(self.load.max_voxels);
                if meta.len() > limit {
                    return Err(Error::TooLarge {
                        voxels: meta.len() as u128 / 8,
                        limit: self.load.max_voxels,
                    }
                    .in_file(path));
                }
                let data: Arc<[u8]> = std::fs::read(path).in_file(path)?.into();
                if nrrd::is_nrrd(&data)
                    && let Some(data_path) = nrrd::data_file_path(&data, path).in_file(path)?
                {
                    return self.fetch_detached(path, data, &data_path);
                }
                let sum = sha256_hex(&data);
                Ok((
                    Fetched::File {
                        name: path.display().to_string(),
                        data,
                    },
                    sum,
                ))
            }
            Source::Bytes { name, data } => Ok((
                Fetched::File {
                    name: name.clone(),
                    data: data.clone(),
                },
                sha256_hex(data),
            )),
            Source::Series { name, files } => {
                let mut sorted: Vec<&(String, Vec<u8>)> = files.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                let sum =
                    series_sha256(sorted.into_iter().map(|(n, b)| (n.as_str(), sha256_hex(b))));
                Ok((
                    Fetched::Series {
                        name: name.clone(),
                        files: files.clone(),
                    },
                    sum,
                ))
            }
            Source::Unreadable {
                name,
                io_kind,
                reason,
            } => Err(Error::Io(std::io::Error::new(*io_kind, reason.clone())).in_file(name)),
            Source::Url { url } => Err(Error::Io(std::io::Error::other(format!(
                "{url}: a URL must be fetched by the driver before processing"
            )))),
        }
    }

    /// A `.nhdr` and the data file it names, read together so that the
    /// checksum covers both (as for a DICOM folder: `name NUL sha256 NUL`
    /// of the header, then of the data file).
    fn fetch_detached(
        &self,
        path: &Path,
        header: Arc<[u8]>,
        data_path: &Path,
    ) -> Result<(Fetched, String)> {
        let name = format!("{} (data file {})", path.display(), data_path.display());
        let len = std::fs::metadata(data_path).in_file(&name)?.len();
        let limit = max_file_bytes(self.load.max_voxels);
        if len > limit {
            return Err(Error::TooLarge {
                voxels: len as u128 / 8,
                limit: self.load.max_voxels,
            }
            .in_file(&name));
        }
        let data: Arc<[u8]> = std::fs::read(data_path).in_file(&name)?.into();
        let file_name = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let sum = series_sha256(
            [
                (file_name(path), sha256_hex(&header)),
                (file_name(data_path), sha256_hex(&data)),
            ]
            .iter()
            .map(|(n, s)| (n.as_str(), s.clone())),
        );
        let fetched = Fetched::Detached {
            name: path.display().to_string(),
            data_name: data_path.display().to_string(),
            header,
            data,
        };
        Ok((fetched, sum))
    }

    /// Stage 2: decodes the CT (and truth mask) and brings the CT onto the
    /// model grid.
    pub fn decode(&self, s: &mut InFlight) {
        if s.failed() && s.image.is_none() {
            return;
        }
        let t = Instant::now();
        if let Some(f) = s.image.take() {
            match guarded("decoding", || self.decode_one(f)) {
                Ok(ct) => {
                    s.row.shape = Some(ct.dims().map(|d| d as u32));
                    s.row.spacing_mm = Some(ct.spacing());
                    let flags = plausibility_flags(&ct);
                    if !flags.is_empty() {
                        tracing::warn!(
                            "scan {}: {}: does not look like a chest CT ({}); its results \
                             carry these flags",
                            s.row.scan_id,
                            s.image_name,
                            flags.join(", ")
                        );
                        s.row.flags = Some(flags.join(","));
                    }
                    s.ct = Some(ct);
                }
                Err(e) => s.fail(e),
            }
        }
        if let (Some(f), Some(ct)) = (s.mask.take(), &s.ct) {
            let name = fetched_name(&f);
            let truth = guarded("decoding", || {
                let truth = self.decode_one(f)?;
                check_same_grid(ct, &truth, "CT", "truth mask").in_file(&name)?;
                Ok(truth)
            });
            match truth {
                Ok(v) => s.truth = Some(v),
                Err(e) => s.fail(metrics_lost(e)),
            }
        }
        s.row.seconds.read += t.elapsed().as_secs_f64();
        let t = Instant::now();
        if let Some(ct) = &s.ct {
            let name = s.image_name.clone();
            match guarded("preprocessing", || {
                prepare_for(&self.meta, ct, &self.inference).in_file(&name)
            }) {
                Ok(p) => s.prepared = Some(p),
                Err(e) => s.fail(e),
            }
        }
        s.row.seconds.preprocess = t.elapsed().as_secs_f64();
    }

    fn decode_one(&self, f: Fetched) -> Result<Volume> {
        let loaded = match f {
            Fetched::File { name, data } => io::read_named(&data, &name, &self.load)?,
            Fetched::Detached {
                name,
                data_name,
                header,
                data,
            } => nrrd::read_detached(&header, &data[..], Some(data.len() as u64), &self.load)
                .in_file(format!("{name} (data file {data_name})"))?,
            Fetched::Folder(path) => dicom::read_series_dir(&path, &self.load)?,
            Fetched::Series { name, files } => {
                let files = Arc::try_unwrap(files).unwrap_or_else(|shared| (*shared).clone());
                dicom::read_series(files, &self.load).in_file(&name)?
            }
        };
        Ok(loaded.volume)
    }
}

/// Fewest slices (and voxels along any axis) a chest CT is expected to
/// have; fewer is flagged `few_slices`.
pub const MIN_CHEST_SLICES: usize = 16;
/// Smallest extent in mm along every axis of a chest CT: a thorax is more
/// than 10 cm across and deep.
pub const MIN_CHEST_EXTENT_MM: f64 = 100.0;

/// Why a decoded CT does not look like a chest CT, as flags for the
/// result row (`flags`, comma-separated) and a warning in the log. The
/// scan is still processed: a flag says "look at this", not "refused".
///
/// - `few_slices`: fewer than [`MIN_CHEST_SLICES`] voxels along an axis;
/// - `small_field`: less than [`MIN_CHEST_EXTENT_MM`] along an axis;
/// - `all_air`: nothing denser than -500 HU (no body);
/// - `no_air`: nothing below -500 HU (no lungs, so not a chest CT in HU,
///   or not in HU at all);
/// - `label_map`: only the values 0 and 1, a mask given as the image.
pub fn plausibility_flags(ct: &Volume) -> Vec<&'static str> {
    let mut flags = Vec::new();
    let dims = ct.dims();
    let sp = ct.spacing();
    if dims.iter().any(|&d| d < MIN_CHEST_SLICES) {
        flags.push("few_slices");
    }
    if (0..3).any(|a| dims[a] as f64 * sp[a] < MIN_CHEST_EXTENT_MM) {
        flags.push("small_field");
    }
    let binary = ct.data().iter().all(|&v| v == 0.0 || v == 1.0);
    if binary {
        flags.push("label_map");
    } else {
        let st = ct.stats();
        if st.max < -500.0 {
            flags.push("all_air");
        }
        if st.min > -500.0 {
            flags.push("no_air");
        }
    }
    flags
}

/// An unusable truth mask costs the metrics, not the prediction: the
/// message says so.
fn metrics_lost(e: Error) -> Error {
    Error::File {
        path: "truth mask".into(),
        error: Box::new(Error::InvalidArgument(format!(
            "{e}; the prediction is reported, the segmentation metrics are not"
        ))),
    }
}

fn fetched_name(f: &Fetched) -> String {
    match f {
        Fetched::File { name, .. }
        | Fetched::Detached { name, .. }
        | Fetched::Series { name, .. } => name.clone(),
        Fetched::Folder(p) => p.display().to_string(),
    }
}

/// SHA-256 of a DICOM folder: see [`ResumeKey`].
fn folder_sha256(dir: &Path) -> Result<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if std::fs::metadata(&path)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            files.push(path);
        }
    }
    files.sort();
    let mut sums = Vec::with_capacity(files.len());
    for p in &files {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        let mut h = Sha256::new();
        std::io::copy(&mut std::fs::File::open(p).in_file(p)?, &mut h).in_file(p)?;
        sums.push((name.unwrap_or_default(), hex(&h.finalize())));
    }
    Ok(series_sha256(
        sums.iter().map(|(n, s)| (n.as_str(), s.clone())),
    ))
}

fn series_sha256<'a>(files: impl Iterator<Item = (&'a str, String)>) -> String {
    let mut h = Sha256::new();
    for (name, sum) in files {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(sum.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize())
}

/// Quantification and metrics: the work after the network. Holds no
/// network, so it can work on another thread than [`Processor::infer`].
#[derive(Debug, Clone)]
pub struct Finisher {
    classes: Vec<String>,
    tolerance_mm: f64,
    lung: LungMaskConfig,
    probability_maps: bool,
    keep_lesions_outside_lungs: bool,
    inference: InferenceConfig,
}

impl Finisher {
    /// Stage 4: lesions, lungs, severity and metrics; the scan's output.
    pub fn finish(&self, mut s: InFlight) -> ScanOutput {
        let mut lesions = Vec::new();
        let mut mask = None;
        let mut probability = None;
        let mut gradcam = None;
        let grid = match (s.prediction.take(), s.prepared.take()) {
            (Some(g), Some(prepared)) => {
                // The network's maps go back to the scan's grid here, off
                // the device's thread; the seconds count as inference.
                let t = Instant::now();
                let name = s.image_name.clone();
                let restored = guarded("inference", || {
                    g.restore(&prepared, &self.inference).in_file(&name)
                });
                s.row.seconds.inference += t.elapsed().as_secs_f64();
                match restored {
                    Ok(p) => Some(p),
                    Err(e) => {
                        s.fail(e);
                        None
                    }
                }
            }
            _ => None,
        };
        if let (Some(ct), Some(mut p)) = (s.ct.take(), grid) {
            let t = Instant::now();
            let name = s.image_name.clone();
            match guarded("quantification", || {
                check_same_grid(&ct, &p.mask, "CT", "lesion mask").in_file(&name)?;
                let lungs = lungs_on_grid(&ct, &self.lung).in_file(&name)?;
                // Labelled once: the same components are filtered and measured.
                let mut lesions = lesion_components(&p.mask).in_file(&name)?;
                let mut removed = None;
                if let (Some(l), false) = (&lungs, self.keep_lesions_outside_lungs) {
                    let (kept, voxels) = components_touching_lungs(lesions, l).in_file(&name)?;
                    lesions = kept;
                    removed = Some(voxels as f64 * ct.voxel_volume_mm3() / 1000.0);
                    if voxels > 0 {
                        p.mask = components_mask(&lesions, &p.mask).in_file(&name)?;
                    }
                }
                let q = quantify_components(&ct, &lesions, lungs.as_ref()).in_file(&name)?;
                Ok((q, removed))
            }) {
                Ok((q, removed)) => {
                    s.row.set_quantification(&q);
                    s.row.lesion_removed_ml = removed;
                    lesions = LesionRow::from_quantification(&s.row.scan_id, &q);
                }
                Err(e) => s.fail(e),
            }
            drop(ct);
            s.row.seconds.quantify = t.elapsed().as_secs_f64();
            let t = Instant::now();
            if let Some(truth) = s.truth.take() {
                match guarded("metrics", || {
                    segmentation_metrics(&truth, &p.mask, self.tolerance_mm)
                }) {
                    Ok(m) => s.row.set_metrics(&m),
                    Err(e) => s.fail(metrics_lost(e)),
                }
            }
            s.row.seconds.metrics = t.elapsed().as_secs_f64();
            if self.probability_maps {
                probability = Some(p.probability);
            }
            gradcam = p.gradcam;
            mask = Some(p.mask);
        }
        // A sink that writes files adds its own seconds to the total.
        s.row.seconds.total = s.row.seconds.sum();
        ScanOutput {
            record: ScanRecord {
                schema: RESULTS_SCHEMA_VERSION,
                classes: self.classes.clone(),
                key: s.key,
                scan: s.row,
                lesions,
            },
            mask,
            probability,
            gradcam,
            error: s.first_error,
        }
    }
}

/// The per-scan processor: built once from a model, a device and the
/// settings, then given one job after another.
#[derive(Debug)]
pub struct Processor {
    reader: Reader,
    predictor: Predictor,
    finisher: Finisher,
    inference: InferenceConfig,
}

impl Processor {
    /// Builds the network on `device` and loads the model's weights.
    pub fn new(model: &Model, device: Device, cfg: &ProcessConfig) -> Result<Processor> {
        cfg.validate()?;
        let predictor = Predictor::new(&model.checkpoint, device).in_file(&model.name)?;
        let meta = model.checkpoint.meta.clone();
        let device_name = match device {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".to_string(),
        };
        Ok(Processor {
            reader: Reader {
                load: cfg.load_options(),
                inference: cfg.inference,
                model_sha256: model.sha256.clone(),
                settings_sha256: cfg.settings_sha256(),
                device: device_name,
                meta: meta.clone(),
            },
            finisher: Finisher {
                classes: meta.classes.clone(),
                tolerance_mm: cfg.tolerance_mm,
                lung: cfg.lung,
                probability_maps: cfg.probability_maps,
                keep_lesions_outside_lungs: cfg.keep_lesions_outside_lungs,
                inference: cfg.inference,
            },
            predictor,
            inference: cfg.inference,
        })
    }

    /// Stages 1 and 2.
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Stage 4.
    pub fn finisher(&self) -> &Finisher {
        &self.finisher
    }

    /// The model's class names.
    pub fn classes(&self) -> &[String] {
        &self.finisher.classes
    }

    /// Stage 3: the network on a decoded scan, its maps left on the model
    /// grid for [`Finisher::finish`] to restore.
    pub fn infer(&self, s: &mut InFlight) {
        let Some(prepared) = s.prepared.as_ref() else {
            return;
        };
        let t = Instant::now();
        let name = s.image_name.clone();
        match guarded("inference", || {
            self.predictor
                .predict_on_grid(prepared, &self.inference)
                .in_file(&name)
        }) {
            Ok(p) => {
                s.row.predicted_class = self.finisher.classes.get(p.class_index).cloned();
                s.row.probabilities = p.class_probabilities.clone();
                s.row.windows = Some(p.windows as u32);
                s.prediction = Some(p);
            }
            Err(e) => s.fail(e),
        }
        s.row.seconds.inference = t.elapsed().as_secs_f64();
    }

    /// All four stages in turn, on this thread.
    pub fn process(&self, job: &Job) -> ScanOutput {
        let mut s = self.reader.fetch(job);
        self.reader.decode(&mut s);
        self.infer(&mut s);
        self.finisher.finish(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::Affine;

    fn vol(dims: [usize; 3], spacing: f64, f: impl Fn(usize) -> f32) -> Volume {
        let n = dims.iter().product();
        let a = Affine::from_spacing_origin([spacing; 3], [0.0; 3]);
        Volume::new((0..n).map(f).collect(), dims, a).unwrap()
    }

    #[test]
    fn implausible_chest_cts_are_flagged_and_plausible_ones_not() {
        let chest = vol(
            [64, 64, 40],
            5.0,
            |i| if i % 3 == 0 { -850.0 } else { 40.0 },
        );
        assert!(plausibility_flags(&chest).is_empty());
        let one = vol([1, 1, 1], 1.0, |_| 40.0);
        assert_eq!(
            plausibility_flags(&one),
            ["few_slices", "small_field", "no_air"]
        );
        let air = vol([64, 64, 40], 5.0, |_| -1000.0);
        assert_eq!(plausibility_flags(&air), ["all_air"]);
        let labels = vol([64, 64, 40], 5.0, |i| (i % 2) as f32);
        assert_eq!(plausibility_flags(&labels), ["label_map"]);
        let thin = vol([64, 64, 4], 5.0, |i| if i % 3 == 0 { -850.0 } else { 40.0 });
        assert_eq!(plausibility_flags(&thin), ["few_slices", "small_field"]);
    }
}
