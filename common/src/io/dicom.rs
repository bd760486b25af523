//! DICOM CT series: folder -> one volume.
//!
//! A CT series arrives as a folder of single-frame DICOM files, one per
//! slice, in no reliable order: file names and InstanceNumber are often
//! unrelated to anatomy. The only trustworthy geometry is each slice's
//! ImagePositionPatient (IPP) and ImageOrientationPatient (IOP), so:
//!
//! 1. every regular, non-hidden file is parsed up to (not including) its
//!    pixel data; files that are not DICOM are skipped, DICOM objects that
//!    are not images (DICOMDIR, reports) likewise;
//! 2. images are grouped by SeriesInstanceUID and one series is chosen
//!    ([`LoadOptions::series_uid`] when a folder holds several);
//! 3. slices are sorted by IPP projected on the slice normal
//!    `row_cos x col_cos`, and the gaps between them must be uniform (a
//!    missing slice or a tilted gantry would otherwise silently distort
//!    the volume);
//! 4. pixel data is decoded per slice (uncompressed, deflate, RLE and the
//!    JPEG family via `dicom-pixeldata`) and rescaled to HU with each
//!    slice's own RescaleSlope/RescaleIntercept.
//!
//! Voxel axes follow the pixel layout: `i` = column index (along IOP's
//! first triplet), `j` = row index (IOP's second triplet), `k` = sorted
//! slice, so a slice's pixel buffer is one contiguous `k` plane. The LPS
//! affine of DICOM PS3.3 C.7.6.2.1.1 is converted to RAS+ by negating its
//! first two rows, as nibabel and dcm2niix do.
//!
//! [`read_series`] works on (name, bytes) pairs and never touches the file
//! system; [`read_series_dir`] and [`list_series`] are the folder wrappers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, InMemDicomObject, OpenFileOptions, Tag};
use dicom_pixeldata::PixelDecoder;
use rayon::prelude::*;

use super::{LoadOptions, Loaded, SourceInfo};
use crate::error::{Context, Error, Result};
use crate::volume::{Affine, Volume};

/// Largest Rows or Columns accepted in one file. Clinical CT is 512 or
/// 1024; anything beyond this is a corrupt or hostile header.
pub const MAX_IN_PLANE: usize = 16384;

/// Largest relative deviation of a slice gap from the median gap.
const GAP_TOLERANCE: f64 = 0.01;
/// Largest sine of the angle between the slice stacking direction and the
/// slice normal before the series counts as tilted (about 0.06 degrees;
/// DS rounding of IOP/IPP stays orders of magnitude below).
const TILT_TOLERANCE: f64 = 1e-3;
/// Absolute slack (mm) of the tilt test, for positions rounded by DS text.
const TILT_SLACK_MM: f64 = 1e-3;
/// Slices closer than this along the normal (mm) are duplicates.
const DUPLICATE_MM: f64 = 1e-3;
/// Largest difference of IOP components between slices of one series.
const ORIENTATION_TOLERANCE: f64 = 1e-4;
/// Largest relative difference of PixelSpacing between slices.
const SPACING_TOLERANCE: f64 = 1e-4;

/// One series found in a folder, for telling the user what is there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SeriesSummary {
    /// SeriesInstanceUID.
    pub uid: String,
    /// SeriesDescription, empty when absent.
    pub description: String,
    /// Number of image files (slices) in the series.
    pub slices: usize,
}

/// Reads the CT series in a folder; every error names the folder or the
/// offending file.
pub fn read_series_dir(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let inputs = dir_inputs(path).in_file(path)?;
    read_inputs(&inputs, opts).in_file(path)
}

/// Reads a CT series from in-memory files given as (name, bytes) pairs; the
/// names only appear in log lines and error messages.
pub fn read_series(files: Vec<(String, Vec<u8>)>, opts: &LoadOptions) -> Result<Loaded> {
    let inputs: Vec<Input> = files
        .into_iter()
        .map(|(name, bytes)| Input {
            name,
            source: Source::Memory(bytes),
        })
        .collect();
    read_inputs(&inputs, opts)
}

/// Lists the image series in a folder, sorted by UID.
pub fn list_series(dir: &Path) -> Result<Vec<SeriesSummary>> {
    let inputs = dir_inputs(dir).in_file(dir)?;
    let groups = scan_and_group(&inputs).in_file(dir)?;
    Ok(summaries(&groups))
}

/// Lists the image series among in-memory files, sorted by UID.
pub fn list_series_in(files: Vec<(String, Vec<u8>)>) -> Result<Vec<SeriesSummary>> {
    let inputs: Vec<Input> = files
        .into_iter()
        .map(|(name, bytes)| Input {
            name,
            source: Source::Memory(bytes),
        })
        .collect();
    Ok(summaries(&scan_and_group(&inputs)?))
}

/// Where one file's bytes come from.
enum Source {
    Memory(Vec<u8>),
    File(PathBuf),
}

/// One candidate file.
struct Input {
    name: String,
    source: Source,
}

impl Input {
    fn reader(&self) -> Result<Box<dyn Read + '_>> {
        Ok(match &self.source {
            Source::Memory(b) => Box::new(Cursor::new(b.as_slice())),
            Source::File(p) => Box::new(File::open(p).in_file(&self.name)?),
        })
    }

    /// Whether the bytes carry the DICOM magic "DICM", after the 128-byte
    /// preamble or (preamble-less files) at the very start.
    fn has_magic(&self) -> Result<bool> {
        let mut head = Vec::with_capacity(132);
        self.reader()?
            .take(132)
            .read_to_end(&mut head)
            .in_file(&self.name)?;
        Ok(head.get(128..132) == Some(b"DICM") || head.get(0..4) == Some(b"DICM"))
    }

    /// Parses the file, up to the pixel data when `header_only`.
    fn parse(&self, header_only: bool) -> Result<std::result::Result<DefaultDicomObject, String>> {
        let reader = self.reader()?;
        let options = if header_only {
            OpenFileOptions::new().read_until(tags::PIXEL_DATA)
        } else {
            OpenFileOptions::new()
        };
        Ok(options.from_reader(reader).map_err(|e| error_chain(&e)))
    }
}

/// The regular, non-hidden files of a folder, sorted by name so that logs
/// and tie-breaking messages are reproducible.
fn dir_inputs(dir: &Path) -> Result<Vec<Input>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        let path = entry.path();
        // fs::metadata follows symlinks: a link to a slice is a slice.
        let is_file = std::fs::metadata(&path)
            .map(|m| m.is_file())
            .unwrap_or(false);
        if hidden || !is_file {
            tracing::debug!(path = %path.display(), "skipping hidden file or non-file");
            continue;
        }
        paths.push(path);
    }
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|p| Input {
            name: p.display().to_string(),
            source: Source::File(p),
        })
        .collect())
}

/// A DICOM image header (everything before the pixel data).
struct Scanned {
    /// Index into the inputs.
    index: usize,
    series_uid: String,
    description: String,
    header: DefaultDicomObject,
}

fn scan_one(index: usize, input: &Input) -> Result<Option<Scanned>> {
    let header = match input.parse(true)? {
        Ok(obj) => obj,
        Err(reason) => {
            if input.has_magic()? {
                return Err(
                    Error::Dicom(format!("cannot parse DICOM file: {reason}")).in_file(&input.name)
                );
            }
            tracing::debug!(file = %input.name, %reason, "skipping: not a DICOM file");
            return Ok(None);
        }
    };
    let Some(series_uid) = text(&header, tags::SERIES_INSTANCE_UID) else {
        tracing::debug!(file = %input.name, "skipping DICOM object without SeriesInstanceUID");
        return Ok(None);
    };
    if header.get(tags::ROWS).is_none() {
        tracing::debug!(file = %input.name, "skipping DICOM object that is not an image");
        return Ok(None);
    }
    Ok(Some(Scanned {
        index,
        series_uid,
        description: text(&header, tags::SERIES_DESCRIPTION).unwrap_or_default(),
        header,
    }))
}

/// Parses every input's header and groups the images by series UID.
fn scan_and_group(inputs: &[Input]) -> Result<BTreeMap<String, Vec<Scanned>>> {
    let scanned: Vec<Option<Scanned>> = inputs
        .par_iter()
        .enumerate()
        .map(|(i, input)| scan_one(i, input))
        .collect::<Result<_>>()?;
    let mut groups: BTreeMap<String, Vec<Scanned>> = BTreeMap::new();
    for s in scanned.into_iter().flatten() {
        groups.entry(s.series_uid.clone()).or_default().push(s);
    }
    if groups.is_empty() {
        return Err(Error::Dicom(format!(
            "no DICOM image files found among {} file(s)",
            inputs.len()
        )));
    }
    Ok(groups)
}

fn summaries(groups: &BTreeMap<String, Vec<Scanned>>) -> Vec<SeriesSummary> {
    groups
        .iter()
        .map(|(uid, slices)| SeriesSummary {
            uid: uid.clone(),
            description: slices[0].description.clone(),
            slices: slices.len(),
        })
        .collect()
}

fn describe(groups: &BTreeMap<String, Vec<Scanned>>) -> String {
    summaries(groups)
        .iter()
        .map(|s| {
            if s.description.is_empty() {
                format!("{} ({} slices)", s.uid, s.slices)
            } else {
                format!("{} ({} slices, \"{}\")", s.uid, s.slices, s.description)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Picks the series to load.
fn choose(mut groups: BTreeMap<String, Vec<Scanned>>, opts: &LoadOptions) -> Result<Vec<Scanned>> {
    match opts.series_uid.as_deref().map(str::trim) {
        Some(uid) => groups.remove(uid).ok_or_else(|| {
            Error::Dicom(format!(
                "series {uid} not found; the folder holds: {}",
                describe(&groups)
            ))
        }),
        None if groups.len() == 1 => Ok(groups.into_values().next().unwrap_or_default()),
        None => Err(Error::Dicom(format!(
            "the folder holds {} series; choose one with --series-uid: {}",
            groups.len(),
            describe(&groups)
        ))),
    }
}

fn read_inputs(inputs: &[Input], opts: &LoadOptions) -> Result<Loaded> {
    let series = choose(scan_and_group(inputs)?, opts)?;
    let slices: Vec<Slice> = series
        .iter()
        .map(|s| Slice::from_header(s, &inputs[s.index].name, opts))
        .collect::<Result<_>>()?;
    assemble(inputs, slices, opts)
}

/// How stored pixel samples are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PixelFormat {
    bits_allocated: u16,
    bits_stored: u16,
    high_bit: u16,
    signed: bool,
}

impl PixelFormat {
    /// numpy-style name of the stored type.
    fn dtype(&self) -> String {
        let sign = if self.signed { "" } else { "u" };
        format!("{sign}int{}", self.bits_allocated)
    }

    fn bytes(&self) -> usize {
        usize::from(self.bits_allocated / 8)
    }

    /// The integer value of one raw little-endian sample: the BitsStored
    /// bits ending at HighBit, sign-extended when signed (bits outside them
    /// are not part of the value, PS3.5 8.1.1).
    fn value(&self, raw: u32) -> i64 {
        let shift = u32::from(self.high_bit + 1 - self.bits_stored);
        let bits = u32::from(self.bits_stored);
        let v = (u64::from(raw) >> shift) & ((1u64 << bits) - 1);
        if self.signed && (v >> (bits - 1)) & 1 == 1 {
            v as i64 - (1i64 << bits)
        } else {
            v as i64
        }
    }
}

/// What one slice says about itself.
#[derive(Debug, Clone)]
struct Slice {
    index: usize,
    name: String,
    rows: usize,
    cols: usize,
    /// PixelSpacing: [between rows, between columns] in mm.
    pixel_spacing: [f64; 2],
    row_cos: [f64; 3],
    col_cos: [f64; 3],
    position: [f64; 3],
    slope: f64,
    intercept: f64,
    format: PixelFormat,
    spacing_between: Option<f64>,
    thickness: Option<f64>,
    instance: Option<i64>,
}

impl Slice {
    fn from_header(s: &Scanned, name: &str, opts: &LoadOptions) -> Result<Slice> {
        Self::parse(&s.header, s.index, name, opts).in_file(name)
    }

    fn parse(h: &InMemDicomObject, index: usize, name: &str, opts: &LoadOptions) -> Result<Slice> {
        if let Some(frames) = int(h, tags::NUMBER_OF_FRAMES, "NumberOfFrames")?
            && frames > 1
        {
            return Err(Error::Unsupported(format!(
                "multi-frame DICOM (NumberOfFrames = {frames}); convert it to \
                 single-frame slices or NIfTI first (e.g. with dcm2niix)"
            )));
        }
        let photometric = text(h, tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_default();
        if photometric != "MONOCHROME2" {
            return Err(Error::Unsupported(format!(
                "PhotometricInterpretation \"{photometric}\"; only MONOCHROME2 (CT) is read"
            )));
        }
        let samples = int(h, tags::SAMPLES_PER_PIXEL, "SamplesPerPixel")?.unwrap_or(1);
        if samples != 1 {
            return Err(Error::Unsupported(format!(
                "SamplesPerPixel = {samples}; only grey-level images are read"
            )));
        }
        let rows = required_int(h, tags::ROWS, "Rows")?;
        let cols = required_int(h, tags::COLUMNS, "Columns")?;
        for (what, v) in [("Rows", rows), ("Columns", cols)] {
            if v < 1 || v > MAX_IN_PLANE as i64 {
                return Err(Error::InvalidHeader(format!(
                    "{what} = {v} is outside 1..={MAX_IN_PLANE}"
                )));
            }
        }
        let (rows, cols) = (rows as usize, cols as usize);
        opts.check_voxels(&[cols as u64, rows as u64])?;

        let format = pixel_format(h)?;

        let pixel_spacing = fixed::<2>(h, tags::PIXEL_SPACING, "PixelSpacing")?;
        if pixel_spacing.iter().any(|&v| v <= 0.0) {
            return Err(Error::InvalidHeader(format!(
                "PixelSpacing {pixel_spacing:?} must be positive"
            )));
        }
        let iop = fixed::<6>(
            h,
            tags::IMAGE_ORIENTATION_PATIENT,
            "ImageOrientationPatient",
        )?;
        let (row_cos, col_cos) = orientation(iop)?;
        let position = fixed::<3>(h, tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient")?;

        let slope = float(h, tags::RESCALE_SLOPE, "RescaleSlope")?.unwrap_or(1.0);
        let intercept = float(h, tags::RESCALE_INTERCEPT, "RescaleIntercept")?.unwrap_or(0.0);
        if slope == 0.0 {
            return Err(Error::InvalidHeader("RescaleSlope is 0".into()));
        }
        let positive = |v: Option<f64>| v.filter(|&x| x > 0.0);
        Ok(Slice {
            index,
            name: name.to_string(),
            rows,
            cols,
            pixel_spacing,
            row_cos,
            col_cos,
            position,
            slope,
            intercept,
            format,
            spacing_between: positive(float(
                h,
                tags::SPACING_BETWEEN_SLICES,
                "SpacingBetweenSlices",
            )?),
            thickness: positive(float(h, tags::SLICE_THICKNESS, "SliceThickness")?),
            instance: int(h, tags::INSTANCE_NUMBER, "InstanceNumber")
                .ok()
                .flatten(),
        })
    }
}

fn pixel_format(h: &InMemDicomObject) -> Result<PixelFormat> {
    let allocated = required_int(h, tags::BITS_ALLOCATED, "BitsAllocated")?;
    if ![8, 16, 32].contains(&allocated) {
        return Err(Error::Unsupported(format!(
            "BitsAllocated = {allocated}; only 8, 16 and 32 are read"
        )));
    }
    let stored = int(h, tags::BITS_STORED, "BitsStored")?.unwrap_or(allocated);
    let high = int(h, tags::HIGH_BIT, "HighBit")?.unwrap_or(stored - 1);
    if stored < 1 || stored > allocated || high < stored - 1 || high >= allocated {
        return Err(Error::InvalidHeader(format!(
            "BitsAllocated {allocated}, BitsStored {stored}, HighBit {high} are inconsistent"
        )));
    }
    let signed = match int(h, tags::PIXEL_REPRESENTATION, "PixelRepresentation")? {
        None | Some(0) => false,
        Some(1) => true,
        Some(other) => {
            return Err(Error::InvalidHeader(format!(
                "PixelRepresentation = {other} (must be 0 or 1)"
            )));
        }
    };
    // The checks above bound every value to 0..=32.
    Ok(PixelFormat {
        bits_allocated: allocated as u16,
        bits_stored: stored as u16,
        high_bit: high as u16,
        signed,
    })
}

/// Unit row and column direction cosines from IOP, checked to be an
/// orthonormal pair (renormalised, since DS text rounds them).
fn orientation(iop: [f64; 6]) -> Result<([f64; 3], [f64; 3])> {
    let r = [iop[0], iop[1], iop[2]];
    let c = [iop[3], iop[4], iop[5]];
    let (nr, nc) = (norm(r), norm(c));
    if (nr - 1.0).abs() > 0.01 || (nc - 1.0).abs() > 0.01 {
        return Err(Error::InvalidHeader(format!(
            "ImageOrientationPatient {iop:?} is not made of unit vectors"
        )));
    }
    let (r, c) = (scale(r, 1.0 / nr), scale(c, 1.0 / nc));
    if dot(r, c).abs() > 1e-3 {
        return Err(Error::InvalidHeader(format!(
            "ImageOrientationPatient {iop:?}: row and column directions are not orthogonal"
        )));
    }
    Ok((r, c))
}

/// Checks the slices against each other, sorts them, decodes the pixels and
/// builds the volume.
fn assemble(inputs: &[Input], mut slices: Vec<Slice>, opts: &LoadOptions) -> Result<Loaded> {
    let Some(first) = slices.first().cloned() else {
        return Err(Error::Dicom("the series has no slices".into()));
    };
    for s in &slices[1..] {
        let mismatch = |what: &str, a: String, b: String| {
            Error::Dicom(format!(
                "inconsistent {what} within the series: {a} in {} but {b} in {}",
                first.name, s.name
            ))
        };
        if (s.rows, s.cols) != (first.rows, first.cols) {
            return Err(mismatch(
                "Rows x Columns",
                format!("{}x{}", first.rows, first.cols),
                format!("{}x{}", s.rows, s.cols),
            ));
        }
        let iop_diff = (0..3)
            .map(|d| {
                (s.row_cos[d] - first.row_cos[d])
                    .abs()
                    .max((s.col_cos[d] - first.col_cos[d]).abs())
            })
            .fold(0.0, f64::max);
        if iop_diff > ORIENTATION_TOLERANCE {
            return Err(mismatch(
                "ImageOrientationPatient",
                format!("{:?} {:?}", first.row_cos, first.col_cos),
                format!("{:?} {:?}", s.row_cos, s.col_cos),
            ));
        }
        let ps_diff = (0..2)
            .map(|d| (s.pixel_spacing[d] / first.pixel_spacing[d] - 1.0).abs())
            .fold(0.0, f64::max);
        if ps_diff > SPACING_TOLERANCE {
            return Err(mismatch(
                "PixelSpacing",
                format!("{:?}", first.pixel_spacing),
                format!("{:?}", s.pixel_spacing),
            ));
        }
        if s.format.bits_allocated != first.format.bits_allocated
            || s.format.signed != first.format.signed
        {
            tracing::debug!(
                first = %first.format.dtype(),
                other = %s.format.dtype(),
                file = %s.name,
                "stored pixel type varies within the series; reporting the first"
            );
        }
    }

    let (rows, cols, n) = (first.rows, first.cols, slices.len());
    // Refuse before any geometry work or allocation.
    opts.check_voxels(&[cols as u64, rows as u64, n as u64])?;

    let normal = cross(first.row_cos, first.col_cos);
    let along = |s: &Slice| dot(s.position, normal);
    slices.sort_by(|a, b| along(a).total_cmp(&along(b)));
    tracing::debug!(
        order = ?slices.iter().map(|s| s.instance).collect::<Vec<_>>(),
        "InstanceNumbers in position order"
    );

    let step = slice_step(&slices, normal)?;
    let mut lps = [[0.0; 4]; 4];
    let ps = first.pixel_spacing;
    let columns = [
        scale(first.row_cos, ps[1]),
        scale(first.col_cos, ps[0]),
        step,
        slices[0].position,
    ];
    for (c, col) in columns.iter().enumerate() {
        for r in 0..3 {
            lps[r][c] = col[r];
        }
    }
    lps[3][3] = 1.0;
    // LPS -> RAS+: x and y change sign.
    let mut ras = lps;
    for row in ras.iter_mut().take(2) {
        for v in row.iter_mut() {
            *v = -*v;
        }
    }
    let affine = Affine(ras);

    let plane = rows * cols;
    let len = plane * n;
    let mut data: Vec<f32> = Vec::new();
    data.try_reserve_exact(len).map_err(|_| {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            format!("cannot allocate {len} voxels for the series"),
        ))
    })?;
    data.resize(len, 0.0);
    data.par_chunks_mut(plane)
        .zip(slices.par_iter())
        .try_for_each(|(out, s)| decode_slice(&inputs[s.index], s, out).in_file(&s.name))?;

    let dims = [cols, rows, n];
    let info = SourceInfo {
        format: "DICOM".into(),
        dtype: first.format.dtype(),
        shape: dims,
        spacing_mm: [ps[1], ps[0], norm(step)],
        affine,
        nonfinite_replaced: 0,
    };
    let volume = Volume::new(data, dims, affine)?;
    tracing::debug!(?dims, spacing = ?info.spacing_mm, axcodes = %affine.axcodes(), "DICOM series loaded");
    Ok(Loaded { volume, info })
}

/// The LPS world step from one sorted slice to the next, after checking
/// that positions are distinct, evenly spaced and stacked along the normal.
fn slice_step(slices: &[Slice], normal: [f64; 3]) -> Result<[f64; 3]> {
    let n = slices.len();
    if n == 1 {
        let s = &slices[0];
        let (gap, source) = match (s.spacing_between, s.thickness) {
            (Some(g), _) => (g, "SpacingBetweenSlices"),
            (None, Some(t)) => (t, "SliceThickness"),
            (None, None) => (1.0, "a default of 1 mm"),
        };
        tracing::debug!(
            gap,
            source,
            "single-slice series: slice spacing taken from {source}"
        );
        return Ok(scale(normal, gap));
    }
    let d: Vec<f64> = slices.iter().map(|s| dot(s.position, normal)).collect();
    let gaps: Vec<f64> = d.windows(2).map(|w| w[1] - w[0]).collect();
    for (w, g) in slices.windows(2).zip(&gaps) {
        if *g < DUPLICATE_MM {
            return Err(Error::Dicom(format!(
                "{} and {} lie at the same slice position ({:.3} mm along the normal); \
                 the series holds duplicate images (repeated files, several echoes or phases?)",
                w[0].name,
                w[1].name,
                d[0] + g
            )));
        }
    }
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
    if (max - median).max(median - min) > GAP_TOLERANCE * median {
        return Err(Error::Dicom(format!(
            "irregular slice spacing: gaps between consecutive slices range from \
             {min:.3} to {max:.3} mm (median {median:.3} mm); missing slices or a \
             variable-spacing series cannot be read as one volume"
        )));
    }
    // Gantry tilt (or any shear) shows as slice offsets off the normal.
    let p0 = slices[0].position;
    let mut worst: Option<f64> = None;
    for s in &slices[1..] {
        let v = sub(s.position, p0);
        let a = dot(v, normal);
        let perp = norm(sub(v, scale(normal, a)));
        if perp > TILT_TOLERANCE * a.abs() + TILT_SLACK_MM {
            let angle = perp.atan2(a.abs()).to_degrees();
            worst = Some(worst.map_or(angle, |w: f64| w.max(angle)));
        }
    }
    if let Some(angle) = worst {
        return Err(Error::Unsupported(format!(
            "slices are stacked {angle:.2} degrees off their normal (gantry tilt); \
             resample the series first (e.g. dcm2niix corrects tilt)"
        )));
    }
    Ok(scale(sub(slices[n - 1].position, p0), 1.0 / (n - 1) as f64))
}

/// Decodes one slice's pixel data into `out` (HU, row-major = `i` fastest).
fn decode_slice(input: &Input, s: &Slice, out: &mut [f32]) -> Result<()> {
    let obj = input
        .parse(false)?
        .map_err(|reason| Error::Dicom(format!("cannot parse DICOM file: {reason}")))?;
    let ts = obj.meta().transfer_syntax().to_string();
    let decoded = obj.decode_pixel_data().map_err(|e| {
        let reason = error_chain(&e);
        let named = match ts_name(&ts) {
            Some(name) => format!("{ts} ({name})"),
            None => ts.clone(),
        };
        if reason.to_lowercase().contains("transfer syntax")
            || reason.to_lowercase().contains("transfersyntax")
        {
            Error::Unsupported(format!(
                "pixel data in transfer syntax {named} cannot be decoded by this build: {reason}"
            ))
        } else {
            Error::Dicom(format!(
                "cannot decode pixel data (transfer syntax {named}): {reason}"
            ))
        }
    })?;
    if decoded.rows() as usize != s.rows || decoded.columns() as usize != s.cols {
        return Err(Error::Dicom(format!(
            "decoded pixel data is {}x{}, header says {}x{}",
            decoded.rows(),
            decoded.columns(),
            s.rows,
            s.cols
        )));
    }
    let bps = s.format.bytes();
    let need = out.len() * bps;
    let bytes = decoded.data();
    if bytes.len() < need {
        return Err(Error::Truncated(format!(
            "pixel data holds {} bytes, {}x{} pixels of {} bytes need {need}",
            bytes.len(),
            s.rows,
            s.cols,
            bps
        )));
    }
    // dicom-pixeldata hands over samples in host byte order (values parsed
    // from big-endian files included); every supported host is little-endian.
    let (slope, intercept) = (s.slope, s.intercept);
    let f = s.format;
    let hu = |raw: u32| (f.value(raw) as f64 * slope + intercept) as f32;
    match bps {
        1 => out
            .iter_mut()
            .zip(&bytes[..need])
            .for_each(|(o, &b)| *o = hu(u32::from(b))),
        2 => out
            .iter_mut()
            .zip(bytes[..need].chunks_exact(2))
            .for_each(|(o, b)| *o = hu(u32::from(u16::from_le_bytes([b[0], b[1]])))),
        _ => out
            .iter_mut()
            .zip(bytes[..need].chunks_exact(4))
            .for_each(|(o, b)| *o = hu(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
    }
    Ok(())
}

/// Names of the transfer syntaxes a CT archive may use, for messages.
fn ts_name(uid: &str) -> Option<&'static str> {
    #[allow(deprecated)]
    let table: &[(&str, &str)] = &[
        (uids::IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian"),
        (uids::EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian"),
        (uids::EXPLICIT_VR_BIG_ENDIAN, "Explicit VR Big Endian"),
        (
            uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
            "Deflated Explicit VR Little Endian",
        ),
        (
            uids::ENCAPSULATED_UNCOMPRESSED_EXPLICIT_VR_LITTLE_ENDIAN,
            "Encapsulated Uncompressed",
        ),
        (uids::JPEG_BASELINE8_BIT, "JPEG Baseline"),
        (uids::JPEG_EXTENDED12_BIT, "JPEG Extended"),
        (uids::JPEG_LOSSLESS, "JPEG Lossless"),
        (uids::JPEG_LOSSLESS_SV1, "JPEG Lossless SV1"),
        (uids::JPEGLS_LOSSLESS, "JPEG-LS Lossless"),
        (uids::JPEGLS_NEAR_LOSSLESS, "JPEG-LS Near-Lossless"),
        (uids::JPEG2000_LOSSLESS, "JPEG 2000 Lossless"),
        (uids::JPEG2000, "JPEG 2000"),
        (
            uids::JPEG2000MC_LOSSLESS,
            "JPEG 2000 Multi-component Lossless",
        ),
        (uids::JPEG2000MC, "JPEG 2000 Multi-component"),
        (uids::RLE_LOSSLESS, "RLE Lossless"),
        (uids::JPEGXL_LOSSLESS, "JPEG XL Lossless"),
        (uids::JPEGXL, "JPEG XL"),
        (uids::HTJ2K_LOSSLESS, "High-Throughput JPEG 2000 Lossless"),
        (uids::HTJ2K, "High-Throughput JPEG 2000"),
    ];
    table.iter().find(|(u, _)| *u == uid).map(|(_, n)| *n)
}

/// An error and all its sources, since `dicom-*` errors put the useful
/// detail (which tag, which transfer syntax) in the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let msg = inner.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        src = inner.source();
    }
    out
}

// --- tag access -----------------------------------------------------------

/// A text value with padding removed; None when absent or empty.
fn text(h: &InMemDicomObject, tag: Tag) -> Option<String> {
    let e = h.get(tag)?;
    let s = e.to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!s.is_empty()).then(|| s.to_string())
}

/// An integer value; None when absent or empty (type 2 attributes may be
/// present without a value).
fn int(h: &InMemDicomObject, tag: Tag, name: &str) -> Result<Option<i64>> {
    let Some(e) = h.get(tag) else { return Ok(None) };
    if text(h, tag).is_none() {
        return Ok(None);
    }
    e.to_int::<i64>()
        .map(Some)
        .map_err(|err| Error::InvalidHeader(format!("{name} {tag} is not an integer: {err}")))
}

fn required_int(h: &InMemDicomObject, tag: Tag, name: &str) -> Result<i64> {
    int(h, tag, name)?.ok_or_else(|| Error::Dicom(format!("missing {name} {tag}")))
}

fn floats(h: &InMemDicomObject, tag: Tag, name: &str) -> Result<Option<Vec<f64>>> {
    let Some(e) = h.get(tag) else { return Ok(None) };
    let v = e
        .to_multi_float64()
        .map_err(|err| Error::InvalidHeader(format!("{name} {tag} is not numeric: {err}")))?;
    if v.is_empty() {
        return Ok(None);
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Err(Error::InvalidHeader(format!(
            "{name} {tag} has non-finite values {v:?}"
        )));
    }
    Ok(Some(v))
}

fn float(h: &InMemDicomObject, tag: Tag, name: &str) -> Result<Option<f64>> {
    Ok(floats(h, tag, name)?.map(|v| v[0]))
}

fn fixed<const N: usize>(h: &InMemDicomObject, tag: Tag, name: &str) -> Result<[f64; N]> {
    let v = floats(h, tag, name)?.ok_or_else(|| Error::Dicom(format!("missing {name} {tag}")))?;
    v.as_slice().try_into().map_err(|_| {
        Error::InvalidHeader(format!("{name} {tag} has {} values, expected {N}", v.len()))
    })
}

// --- small vector helpers ---------------------------------------------------

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn scale(a: [f64; 3], s: f64) -> [f64; 3] {
    [a[0] * s, a[1] * s, a[2] * s]
}

fn norm(a: [f64; 3]) -> f64 {
    dot(a, a).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::value::{PixelFragmentSequence, Value};
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_object::meta::FileMetaTableBuilder;

    const AXIAL: [f64; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    /// [between rows, between columns]: different, to catch swaps.
    const PS: [f64; 2] = [0.5, 0.8];

    /// One synthetic slice.
    #[derive(Clone)]
    struct Spec {
        series: String,
        rows: u16,
        cols: u16,
        ps: [f64; 2],
        iop: [f64; 6],
        ipp: [f64; 3],
        slope: f64,
        intercept: f64,
        instance: i32,
        pixels: Vec<i16>,
        extra: Vec<(Tag, VR, String)>,
    }

    fn ds(v: &[f64]) -> String {
        v.iter()
            .map(|x| format!("{x:.6}"))
            .collect::<Vec<_>>()
            .join("\\")
    }

    fn object(s: &Spec) -> InMemDicomObject {
        let sop = format!("1.2.826.0.1.3680043.8.498.7.{}", s.instance);
        let mut o = InMemDicomObject::new_empty();
        let mut put = |tag, vr, v: String| {
            o.put(DataElement::new(tag, vr, v));
        };
        put(tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE.into());
        put(tags::SOP_INSTANCE_UID, VR::UI, sop);
        put(tags::MODALITY, VR::CS, "CT".into());
        put(tags::SERIES_INSTANCE_UID, VR::UI, s.series.clone());
        put(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            format!("desc {}", s.series),
        );
        put(tags::INSTANCE_NUMBER, VR::IS, s.instance.to_string());
        put(tags::IMAGE_POSITION_PATIENT, VR::DS, ds(&s.ipp));
        put(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, ds(&s.iop));
        put(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            "MONOCHROME2".into(),
        );
        put(tags::PIXEL_SPACING, VR::DS, ds(&s.ps));
        put(tags::RESCALE_INTERCEPT, VR::DS, ds(&[s.intercept]));
        put(tags::RESCALE_SLOPE, VR::DS, ds(&[s.slope]));
        for (tag, vr, v) in &s.extra {
            put(*tag, *vr, v.clone());
        }
        let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
        o.put(us(tags::SAMPLES_PER_PIXEL, 1));
        o.put(us(tags::ROWS, s.rows));
        o.put(us(tags::COLUMNS, s.cols));
        o.put(us(tags::BITS_ALLOCATED, 16));
        o.put(us(tags::BITS_STORED, 16));
        o.put(us(tags::HIGH_BIT, 15));
        o.put(us(tags::PIXEL_REPRESENTATION, 1));
        o
    }

    fn write(o: InMemDicomObject, ts: &str) -> Vec<u8> {
        let file = o
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(ts))
            .expect("meta");
        let mut out = Vec::new();
        file.write_all(&mut out).expect("write");
        out
    }

    fn encode(s: &Spec) -> Vec<u8> {
        let mut o = object(s);
        let bytes: Vec<u8> = s.pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(bytes),
        ));
        write(o, uids::EXPLICIT_VR_LITTLE_ENDIAN)
    }

    /// Stored value of a ramp: tells the slice (by position), row, column.
    fn ramp(pos: usize, r: usize, c: usize) -> i16 {
        (100 * pos + 10 * r + c) as i16
    }

    /// `n` slices of 3 rows x 4 columns in position order, `gap` mm apart
    /// along the normal of `iop`, starting at `origin`. InstanceNumbers are
    /// scrambled; intercepts differ per slice.
    fn series(uid: &str, n: usize, gap: f64, iop: [f64; 6], origin: [f64; 3]) -> Vec<Spec> {
        let normal = cross([iop[0], iop[1], iop[2]], [iop[3], iop[4], iop[5]]);
        (0..n)
            .map(|k| {
                let (rows, cols) = (3, 4);
                let pixels = (0..rows)
                    .flat_map(|r| (0..cols).map(move |c| ramp(k, r, c)))
                    .collect();
                Spec {
                    series: uid.into(),
                    rows: rows as u16,
                    cols: cols as u16,
                    ps: PS,
                    iop,
                    ipp: [0, 1, 2].map(|d| origin[d] + k as f64 * gap * normal[d]),
                    slope: 1.0,
                    intercept: -1024.0 + 7.0 * k as f64,
                    // Misleading: neither position order nor its reverse.
                    instance: scramble(k) as i32 + 1 + 20 * (uid.len() as i32),
                    pixels,
                    extra: Vec::new(),
                }
            })
            .collect()
    }

    /// A fixed shuffle of 0..11 (7 is invertible mod 11).
    fn scramble(k: usize) -> usize {
        (k * 7 + 3) % 11
    }

    /// Encodes the slices in a shuffled order, named by InstanceNumber.
    fn files(specs: &[Spec]) -> Vec<(String, Vec<u8>)> {
        let mut order: Vec<usize> = (0..specs.len()).collect();
        order.sort_by_key(|&k| scramble(k + 5));
        order
            .into_iter()
            .map(|k| &specs[k])
            .map(|s| (format!("IMG{:03}", s.instance), encode(s)))
            .collect()
    }

    fn err_text(r: Result<Loaded>) -> (String, Error) {
        let e = r.expect_err("expected an error");
        (e.to_string(), e)
    }

    #[test]
    fn axial_series_is_ordered_by_position_and_rescaled_per_slice() {
        let mut specs = series("1.2.3", 5, 2.0, AXIAL, [-10.0, 20.0, 30.0]);
        specs[2].slope = 2.0;
        let loaded = read_series(files(&specs), &LoadOptions::default()).unwrap();
        let v = &loaded.volume;
        assert_eq!(v.dims(), [4, 3, 5]);
        for (k, s) in specs.iter().enumerate() {
            for j in 0..3 {
                for i in 0..4 {
                    let want = f64::from(ramp(k, j, i)) * s.slope + s.intercept;
                    assert_eq!(v.get(i, j, k), want as f32, "voxel ({i},{j},{k})");
                }
            }
        }
        let info = &loaded.info;
        assert_eq!(info.format, "DICOM");
        assert_eq!(info.dtype, "int16");
        assert_eq!(info.shape, [4, 3, 5]);
        assert_eq!(info.nonfinite_replaced, 0);
        for (got, want) in info.spacing_mm.iter().zip([0.8, 0.5, 2.0]) {
            assert!((got - want).abs() < 1e-9, "{:?}", info.spacing_mm);
        }
        let want = Affine([
            [-0.8, 0.0, 0.0, 10.0],
            [0.0, -0.5, 0.0, -20.0],
            [0.0, 0.0, 2.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ]);
        assert_close(&info.affine, &want);
        assert_eq!(v.affine(), &info.affine);
        assert_eq!(info.affine.axcodes(), "LPS");
    }

    /// Positions given in descending order along the normal still give a
    /// volume whose k axis follows +normal.
    #[test]
    fn oblique_orientation_gives_the_dicom_affine_in_ras() {
        let (a, b) = (30f64.to_radians(), 20f64.to_radians());
        // Row: rotated in the axial plane; column: tilted out of it.
        let row = [a.cos(), a.sin(), 0.0];
        let col0 = [-a.sin(), a.cos(), 0.0];
        let col = [0, 1, 2].map(|d| col0[d] * b.cos() + [0.0, 0.0, 1.0][d] * b.sin());
        let iop = [row[0], row[1], row[2], col[0], col[1], col[2]];
        // Rounded as DS text would be, so the test sees what the reader sees.
        let iop = iop.map(|x| (x * 1e6).round() / 1e6);
        let origin = [12.5, -40.0, 7.25];
        let mut specs = series("1.2.4", 4, -1.5, iop, origin);
        specs
            .iter_mut()
            .for_each(|s| s.ipp = s.ipp.map(|x| (x * 1e6).round() / 1e6));
        let loaded = read_series(files(&specs), &LoadOptions::default()).unwrap();

        let (r, c) = orientation(iop).unwrap();
        let normal = cross(r, c);
        // Slice with the smallest projection on the normal comes first.
        let first = &specs[specs.len() - 1];
        assert_eq!(
            loaded.volume.get(3, 2, 0),
            (f64::from(ramp(3, 2, 3)) + first.intercept) as f32
        );
        for (i, j, k) in [(0, 0, 0), (3, 0, 0), (0, 2, 0), (1, 2, 3), (3, 2, 3)] {
            let lps: [f64; 3] = [0, 1, 2].map(|d| {
                first.ipp[d]
                    + i as f64 * PS[1] * r[d]
                    + j as f64 * PS[0] * c[d]
                    + k as f64 * 1.5 * normal[d]
            });
            let ras = loaded.info.affine.apply([i as f64, j as f64, k as f64]);
            let want = [-lps[0], -lps[1], lps[2]];
            for d in 0..3 {
                assert!((ras[d] - want[d]).abs() < 1e-5, "{ras:?} vs {want:?}");
            }
        }
        let sp = loaded.info.spacing_mm;
        assert!((sp[0] - 0.8).abs() < 1e-9 && (sp[1] - 0.5).abs() < 1e-9);
        assert!((sp[2] - 1.5).abs() < 1e-5, "{sp:?}");
    }

    fn assert_close(a: &Affine, b: &Affine) {
        for r in 0..4 {
            for c in 0..4 {
                assert!((a.0[r][c] - b.0[r][c]).abs() < 1e-9, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn several_series_need_a_uid() {
        let mut all = files(&series("1.2.3", 3, 2.0, AXIAL, [0.0; 3]));
        all.extend(files(&series("1.2.99", 4, 1.0, AXIAL, [0.0; 3])));
        let (msg, e) = err_text(read_series(all.clone(), &LoadOptions::default()));
        assert!(matches!(e, Error::Dicom(_)), "{e:?}");
        assert!(
            msg.contains("1.2.3 (3 slices") && msg.contains("1.2.99 (4 slices"),
            "{msg}"
        );

        let pick = |uid: &str| LoadOptions {
            series_uid: Some(uid.into()),
            ..LoadOptions::default()
        };
        let loaded = read_series(all.clone(), &pick("1.2.99")).unwrap();
        assert_eq!(loaded.volume.dims(), [4, 3, 4]);
        let (msg, _) = err_text(read_series(all.clone(), &pick("9.9")));
        assert!(
            msg.contains("9.9 not found") && msg.contains("1.2.99"),
            "{msg}"
        );

        let listed = list_series_in(all).unwrap();
        assert_eq!(
            listed,
            vec![
                SeriesSummary {
                    uid: "1.2.3".into(),
                    description: "desc 1.2.3".into(),
                    slices: 3
                },
                SeriesSummary {
                    uid: "1.2.99".into(),
                    description: "desc 1.2.99".into(),
                    slices: 4
                },
            ]
        );
    }

    #[test]
    fn irregular_gaps_are_refused_with_min_and_max() {
        let mut specs = series("1.2.3", 5, 2.0, AXIAL, [0.0; 3]);
        // A missing slice: 0 2 4 | 8 10.
        for s in &mut specs[3..] {
            s.ipp[2] += 2.0;
        }
        let (msg, _) = err_text(read_series(files(&specs), &LoadOptions::default()));
        assert!(msg.contains("irregular slice spacing"), "{msg}");
        assert!(msg.contains("2.000 to 4.000 mm"), "{msg}");

        // Within 1%: accepted, spacing is the mean step.
        let mut specs = series("1.2.3", 5, 2.0, AXIAL, [0.0; 3]);
        specs[2].ipp[2] += 0.01;
        let loaded = read_series(files(&specs), &LoadOptions::default()).unwrap();
        assert!((loaded.info.spacing_mm[2] - 2.0).abs() < 1e-9);
    }

    #[test]
    fn gantry_tilt_is_refused() {
        let mut specs = series("1.2.3", 4, 2.0, AXIAL, [0.0; 3]);
        for (k, s) in specs.iter_mut().enumerate() {
            s.ipp[1] += 0.2 * k as f64; // about 5.7 degrees
        }
        let (msg, e) = err_text(read_series(files(&specs), &LoadOptions::default()));
        assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
        assert!(
            msg.contains("tilt") && msg.contains("5.71 degrees"),
            "{msg}"
        );
    }

    #[test]
    fn duplicate_positions_are_refused() {
        let mut specs = series("1.2.3", 4, 2.0, AXIAL, [0.0; 3]);
        specs[3].ipp = specs[1].ipp;
        let (msg, _) = err_text(read_series(files(&specs), &LoadOptions::default()));
        assert!(msg.contains("same slice position"), "{msg}");
        assert!(
            msg.contains(&format!("IMG{:03}", specs[1].instance))
                && msg.contains(&format!("IMG{:03}", specs[3].instance)),
            "{msg}"
        );
    }

    #[test]
    fn inconsistent_slices_are_refused() {
        let mut specs = series("1.2.3", 4, 2.0, AXIAL, [0.0; 3]);
        specs[2].rows = 2;
        specs[2].pixels.truncate(8);
        let (msg, _) = err_text(read_series(files(&specs), &LoadOptions::default()));
        assert!(
            msg.contains("inconsistent Rows x Columns") && msg.contains("2x4"),
            "{msg}"
        );

        let mut specs = series("1.2.3", 4, 2.0, AXIAL, [0.0; 3]);
        specs[1].ps = [0.5, 0.9];
        let (msg, _) = err_text(read_series(files(&specs), &LoadOptions::default()));
        assert!(msg.contains("inconsistent PixelSpacing"), "{msg}");

        let mut specs = series("1.2.3", 4, 2.0, AXIAL, [0.0; 3]);
        specs[1].iop = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0];
        let (msg, _) = err_text(read_series(files(&specs), &LoadOptions::default()));
        assert!(
            msg.contains("inconsistent ImageOrientationPatient"),
            "{msg}"
        );
    }

    #[test]
    fn folders_without_dicom_are_refused_and_junk_is_skipped() {
        let junk = vec![
            ("notes.txt".to_string(), b"hello".to_vec()),
            ("empty".to_string(), Vec::new()),
            ("zeros".to_string(), vec![0u8; 400]),
        ];
        let (msg, e) = err_text(read_series(junk.clone(), &LoadOptions::default()));
        assert!(matches!(e, Error::Dicom(_)), "{e:?}");
        assert!(msg.contains("no DICOM image files found among 3"), "{msg}");

        let mut all = files(&series("1.2.3", 3, 2.0, AXIAL, [0.0; 3]));
        all.extend(junk);
        assert_eq!(
            read_series(all, &LoadOptions::default())
                .unwrap()
                .volume
                .dims(),
            [4, 3, 3]
        );
    }

    #[test]
    fn corrupt_dicom_is_an_error_naming_the_file() {
        let mut all = files(&series("1.2.3", 3, 2.0, AXIAL, [0.0; 3]));
        let mut bad = vec![0u8; 128];
        bad.extend_from_slice(b"DICM\x02\x00\x00\x00garbage");
        all.push(("broken.dcm".into(), bad));
        let (msg, _) = err_text(read_series(all, &LoadOptions::default()));
        assert!(
            msg.starts_with("broken.dcm: ") && msg.contains("cannot parse"),
            "{msg}"
        );

        // Pixel data cut short: the header parses, the decoder must not.
        let specs = series("1.2.3", 3, 2.0, AXIAL, [0.0; 3]);
        let mut all = files(&specs);
        let n = all[1].1.len();
        all[1].1.truncate(n - 10);
        let name = all[1].0.clone();
        let (msg, _) = err_text(read_series(all, &LoadOptions::default()));
        assert!(msg.starts_with(&format!("{name}: ")), "{msg}");
    }

    #[test]
    fn voxel_limit_is_checked_before_decoding() {
        let all = files(&series("1.2.3", 5, 2.0, AXIAL, [0.0; 3]));
        let limit = |max_voxels| LoadOptions {
            max_voxels,
            series_uid: None,
        };
        assert!(read_series(all.clone(), &limit(60)).is_ok());
        let e = read_series(all, &limit(59)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::TooLarge {
                    voxels: 60,
                    limit: 59
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn absurd_rows_are_refused() {
        let mut specs = series("1.2.3", 1, 2.0, AXIAL, [0.0; 3]);
        specs[0].rows = 20000;
        let (msg, e) = err_text(read_series(files(&specs), &LoadOptions::default()));
        assert!(matches!(e.root(), Error::InvalidHeader(_)), "{e:?}");
        assert!(msg.contains("Rows = 20000"), "{msg}");
    }

    #[test]
    fn single_slice_spacing_comes_from_the_header() {
        let one = |extra: Vec<(Tag, VR, String)>| {
            let mut specs = series("1.2.3", 1, 2.0, AXIAL, [0.0; 3]);
            specs[0].extra = extra;
            let loaded = read_series(files(&specs), &LoadOptions::default()).unwrap();
            assert_eq!(loaded.volume.dims(), [4, 3, 1]);
            loaded.info.spacing_mm[2]
        };
        let between = (tags::SPACING_BETWEEN_SLICES, VR::DS, "3.5".to_string());
        let thick = (tags::SLICE_THICKNESS, VR::DS, "1.25".to_string());
        assert_eq!(one(vec![between, thick.clone()]), 3.5);
        assert_eq!(one(vec![thick]), 1.25);
        assert_eq!(one(vec![]), 1.0);
    }

    #[test]
    fn unsupported_images_are_refused() {
        let with = |tag, vr, v: &str| {
            let mut specs = series("1.2.3", 2, 2.0, AXIAL, [0.0; 3]);
            specs[1].extra = vec![(tag, vr, v.to_string())];
            err_text(read_series(files(&specs), &LoadOptions::default()))
        };
        let (msg, e) = with(tags::NUMBER_OF_FRAMES, VR::IS, "2");
        assert!(
            matches!(e.root(), Error::Unsupported(_)) && msg.contains("multi-frame"),
            "{msg}"
        );
        let (msg, e) = with(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME1");
        assert!(
            matches!(e.root(), Error::Unsupported(_)) && msg.contains("MONOCHROME1"),
            "{msg}"
        );
    }

    #[test]
    fn undecodable_transfer_syntax_is_named() {
        let specs = series("1.2.3", 2, 2.0, AXIAL, [0.0; 3]);
        let mut all = files(&specs);
        // Replace one slice with a JPEG 2000 one (no decoder in this build).
        let mut o = object(&specs[0]);
        let frag = PixelFragmentSequence::new(vec![], vec![vec![0xFFu8; 16]]);
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            Value::PixelSequence(frag),
        ));
        let slot = all
            .iter()
            .position(|(name, _)| *name == format!("IMG{:03}", specs[0].instance))
            .unwrap();
        all[slot] = ("j2k.dcm".into(), write(o, uids::JPEG2000_LOSSLESS));
        let (msg, e) = err_text(read_series(all, &LoadOptions::default()));
        assert!(matches!(e.root(), Error::Unsupported(_)), "{e:?}");
        assert!(msg.starts_with("j2k.dcm: "), "{msg}");
        assert!(
            msg.contains("1.2.840.10008.1.2.4.90") && msg.contains("JPEG 2000 Lossless"),
            "{msg}"
        );
    }

    #[test]
    fn stored_bits_are_masked_and_sign_extended() {
        let f = PixelFormat {
            bits_allocated: 16,
            bits_stored: 12,
            high_bit: 11,
            signed: true,
        };
        assert_eq!(f.value(0x0FFF), -1);
        assert_eq!(f.value(0x0800), -2048);
        assert_eq!(f.value(0xF7FF), 2047); // junk above the stored bits
        let u = PixelFormat { signed: false, ..f };
        assert_eq!(u.value(0xFFFF), 4095);
        let shifted = PixelFormat {
            bits_stored: 8,
            high_bit: 11,
            ..u
        };
        assert_eq!(shifted.value(0x0AB0), 0xAB);
        let full = PixelFormat {
            bits_allocated: 32,
            bits_stored: 32,
            high_bit: 31,
            signed: true,
        };
        assert_eq!(full.value(u32::MAX), -1);
        assert_eq!(full.dtype(), "int32");
        assert_eq!(u.dtype(), "uint16");
    }

    #[test]
    fn folder_wrapper_skips_hidden_files_and_names_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files(&series("1.2.3", 3, 2.0, AXIAL, [0.0; 3])) {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        // A hidden slice of another series and a sub-folder must be ignored.
        let other = files(&series("7.7", 1, 2.0, AXIAL, [0.0; 3]));
        std::fs::write(dir.path().join(".other.dcm"), &other[0].1).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join("x.dcm"), &other[0].1).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not DICOM").unwrap();

        let loaded = read_series_dir(dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!(loaded.volume.dims(), [4, 3, 3]);
        let listed = list_series(dir.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].uid.as_str(), listed[0].slices), ("1.2.3", 3));
        let via_load_path = crate::io::load_path(dir.path(), &LoadOptions::default()).unwrap();
        assert_eq!(via_load_path.volume, loaded.volume);

        let empty = tempfile::tempdir().unwrap();
        let msg = read_series_dir(empty.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with(&empty.path().display().to_string()) && msg.contains("no DICOM"),
            "{msg}"
        );
    }
}
