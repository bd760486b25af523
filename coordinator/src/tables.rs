//! The result tables as Parquet, written and read with Polars.
//!
//! `scans.parquet` holds one [`ScanRow`] per row and `lesions.parquet` one
//! [`LesionRow`]; the column list, in order, is [`scan_columns`] (README,
//! "Result tables"). Files are zstd-compressed, written in row groups of
//! [`ROW_GROUP`] rows to a temporary name and renamed, and carry file-level
//! metadata: `multir.schema_version`, `multir.version`, `multir.table` and
//! `multir.run` (the run's settings as JSON).
//!
//! **Readers.** Polars' Rust writer describes string columns to Arrow
//! readers as `string_view` (the Arrow schema it stores under the
//! `ARROW:schema` key uses its newest compatibility level), which pyarrow's
//! `filters=` cannot compare with a string literal. The pages themselves
//! are plain Parquet strings either way, so this module stores the Arrow
//! schema of the oldest compatibility level instead (`large_string`,
//! dictionaries of `large_string`): pyarrow, pandas, DuckDB and Polars then
//! read, filter and categorise the columns as they would any Parquet file.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use anyhow::{Context, bail};
use multir_common::Fault;
use multir_common::io::write_atomic;
use multir_common::quantify::LesionSide;
use multir_common::results::sink::{ScanOutput, Sink};
use multir_common::results::{LesionRow, RESULTS_SCHEMA_VERSION, ScanRow, StageSeconds, Status};
use polars::prelude::{
    Column, CompatLevel, DataFrame, DataType, FrozenCategories, KeyValueMetadata, NamedFrom,
    ParquetCompression, ParquetReader, ParquetWriter, SchemaExt, SerReader, Series,
};
use polars_parquet::write::{KeyValue, schema_to_metadata_key};

/// Rows per Parquet row group (and per Polars frame built at a time).
pub const ROW_GROUP: usize = 16_384;

/// Every column of `scans.parquet` in order, for `classes`.
pub fn scan_columns(classes: &[String]) -> Vec<String> {
    let mut c: Vec<String> = [
        "scan_id",
        "status",
        "error",
        "fault",
        "label",
        "predicted_class",
    ]
    .map(String::from)
    .to_vec();
    c.extend(classes.iter().map(|k| format!("prob_{k}")));
    c.extend(
        [
            "lesion_volume_ml",
            "lesion_outside_lungs_ml",
            "lesion_removed_ml",
            "lung_volume_ml",
            "left_lung_involvement_pct",
            "right_lung_involvement_pct",
            "lung_involvement_pct",
            "severity_score",
            "n_lesions",
            "dice",
            "jaccard",
            "assd_mm",
            "asd_truth_to_pred_mm",
            "asd_pred_to_truth_mm",
            "surface_dice",
            "surface_overlap_truth",
            "surface_overlap_pred",
            "hd95_mm",
            "hausdorff_mm",
            "volume_truth_ml",
            "volume_difference_ml",
            "tolerance_mm",
            "read_s",
            "preprocess_s",
            "inference_s",
            "quantify_s",
            "metrics_s",
            "write_s",
            "total_s",
            "windows",
            "shape_i",
            "shape_j",
            "shape_k",
            "spacing_i_mm",
            "spacing_j_mm",
            "spacing_k_mm",
            "image_sha256",
            "mask_sha256",
            "model_sha256",
            "multir_version",
            "device",
            "flags",
        ]
        .map(String::from),
    );
    c
}

/// An Enum type over `names` (a categorical column with a fixed set).
fn enum_type<'a>(names: impl IntoIterator<Item = &'a str>) -> anyhow::Result<DataType> {
    Ok(DataType::from_frozen_categories(FrozenCategories::new(
        names,
    )?))
}

fn col<T: Into<Column>>(c: T) -> Column {
    c.into()
}

fn f64s(name: &str, rows: &[ScanRow], f: impl Fn(&ScanRow) -> Option<f64>) -> Column {
    col(Series::new(
        name.into(),
        rows.iter().map(f).collect::<Vec<_>>(),
    ))
}

fn u32s(name: &str, rows: &[ScanRow], f: impl Fn(&ScanRow) -> Option<u32>) -> Column {
    col(Series::new(
        name.into(),
        rows.iter().map(f).collect::<Vec<_>>(),
    ))
}

fn strs(name: &str, v: Vec<Option<&str>>) -> Column {
    col(Series::new(name.into(), v))
}

fn enums(name: &str, v: Vec<Option<&str>>, dtype: &DataType) -> anyhow::Result<Column> {
    Ok(col(Series::new(name.into(), v).strict_cast(dtype)?))
}

/// The categories of the label and class columns: the model's classes,
/// then any other label the rows carry.
fn class_categories<'a>(rows: &'a [ScanRow], classes: &'a [String]) -> Vec<&'a str> {
    let mut cats: Vec<&str> = classes.iter().map(String::as_str).collect();
    for r in rows {
        if let Some(l) = r.label.as_deref()
            && !cats.contains(&l)
        {
            cats.push(l);
        }
    }
    cats
}

/// The scans table of `rows` as a frame.
pub fn scans_frame(rows: &[ScanRow], classes: &[String]) -> anyhow::Result<DataFrame> {
    let class_type = enum_type(class_categories(rows, classes))?;
    let status_type = enum_type(["ok", "error"])?;
    let fault_type = enum_type(["input", "environment"])?;
    let mut cols = vec![
        strs(
            "scan_id",
            rows.iter().map(|r| Some(r.scan_id.as_str())).collect(),
        ),
        enums(
            "status",
            rows.iter().map(|r| Some(r.status.as_str())).collect(),
            &status_type,
        )?,
        strs("error", rows.iter().map(|r| r.error.as_deref()).collect()),
        enums(
            "fault",
            rows.iter().map(|r| r.fault.map(Fault::as_str)).collect(),
            &fault_type,
        )?,
        enums(
            "label",
            rows.iter().map(|r| r.label.as_deref()).collect(),
            &class_type,
        )?,
        enums(
            "predicted_class",
            rows.iter().map(|r| r.predicted_class.as_deref()).collect(),
            &class_type,
        )?,
    ];
    for (c, name) in classes.iter().enumerate() {
        cols.push(f64s(&format!("prob_{name}"), rows, |r| {
            r.probabilities.get(c).copied()
        }));
    }
    cols.extend([
        f64s("lesion_volume_ml", rows, |r| r.lesion_volume_ml),
        f64s("lesion_outside_lungs_ml", rows, |r| {
            r.lesion_outside_lungs_ml
        }),
        f64s("lesion_removed_ml", rows, |r| r.lesion_removed_ml),
        f64s("lung_volume_ml", rows, |r| r.lung_volume_ml),
        f64s("left_lung_involvement_pct", rows, |r| {
            r.left_lung_involvement_pct
        }),
        f64s("right_lung_involvement_pct", rows, |r| {
            r.right_lung_involvement_pct
        }),
        f64s("lung_involvement_pct", rows, |r| r.lung_involvement_pct),
        u32s("severity_score", rows, |r| r.severity_score.map(u32::from)),
        u32s("n_lesions", rows, |r| r.n_lesions),
        f64s("dice", rows, |r| r.dice),
        f64s("jaccard", rows, |r| r.jaccard),
        f64s("assd_mm", rows, |r| r.assd_mm),
        f64s("asd_truth_to_pred_mm", rows, |r| r.asd_truth_to_pred_mm),
        f64s("asd_pred_to_truth_mm", rows, |r| r.asd_pred_to_truth_mm),
        f64s("surface_dice", rows, |r| r.surface_dice),
        f64s("surface_overlap_truth", rows, |r| r.surface_overlap_truth),
        f64s("surface_overlap_pred", rows, |r| r.surface_overlap_pred),
        f64s("hd95_mm", rows, |r| r.hd95_mm),
        f64s("hausdorff_mm", rows, |r| r.hausdorff_mm),
        f64s("volume_truth_ml", rows, |r| r.volume_truth_ml),
        f64s("volume_difference_ml", rows, |r| r.volume_difference_ml),
        f64s("tolerance_mm", rows, |r| r.tolerance_mm),
        f64s("read_s", rows, |r| Some(r.seconds.read)),
        f64s("preprocess_s", rows, |r| Some(r.seconds.preprocess)),
        f64s("inference_s", rows, |r| Some(r.seconds.inference)),
        f64s("quantify_s", rows, |r| Some(r.seconds.quantify)),
        f64s("metrics_s", rows, |r| Some(r.seconds.metrics)),
        f64s("write_s", rows, |r| Some(r.seconds.write)),
        f64s("total_s", rows, |r| Some(r.seconds.total)),
        u32s("windows", rows, |r| r.windows),
    ]);
    for (a, axis) in ["i", "j", "k"].iter().enumerate() {
        cols.push(u32s(&format!("shape_{axis}"), rows, |r| {
            r.shape.map(|s| s[a])
        }));
    }
    for (a, axis) in ["i", "j", "k"].iter().enumerate() {
        cols.push(f64s(&format!("spacing_{axis}_mm"), rows, |r| {
            r.spacing_mm.map(|s| s[a])
        }));
    }
    cols.extend([
        strs(
            "image_sha256",
            rows.iter().map(|r| r.image_sha256.as_deref()).collect(),
        ),
        strs(
            "mask_sha256",
            rows.iter().map(|r| r.mask_sha256.as_deref()).collect(),
        ),
        strs(
            "model_sha256",
            rows.iter().map(|r| Some(r.model_sha256.as_str())).collect(),
        ),
        strs(
            "multir_version",
            rows.iter()
                .map(|r| Some(r.multir_version.as_str()))
                .collect(),
        ),
        strs(
            "device",
            rows.iter().map(|r| Some(r.device.as_str())).collect(),
        ),
        strs("flags", rows.iter().map(|r| r.flags.as_deref()).collect()),
    ]);
    let df = DataFrame::new(rows.len(), cols)?;
    debug_assert!(
        df.get_column_names()
            .iter()
            .map(|n| n.as_str())
            .eq(scan_columns(classes).iter().map(String::as_str)),
        "scans_frame and scan_columns disagree"
    );
    Ok(df)
}

/// Every column of `lesions.parquet` in order.
pub const LESION_COLUMNS: [&str; 16] = [
    "scan_id",
    "lesion_id",
    "volume_ml",
    "voxels",
    "centroid_x_mm",
    "centroid_y_mm",
    "centroid_z_mm",
    "bbox_min_i",
    "bbox_min_j",
    "bbox_min_k",
    "bbox_max_i",
    "bbox_max_j",
    "bbox_max_k",
    "mean_hu",
    "std_hu",
    "side",
];

/// "left", "right", "both", "outside".
fn side_str(s: LesionSide) -> &'static str {
    match s {
        LesionSide::Left => "left",
        LesionSide::Right => "right",
        LesionSide::Both => "both",
        LesionSide::Outside => "outside",
    }
}

/// The lesions table of `rows` as a frame (columns [`LESION_COLUMNS`] and
/// `in_lung_fraction`).
pub fn lesions_frame(rows: &[LesionRow]) -> anyhow::Result<DataFrame> {
    let side_type = enum_type(["left", "right", "both", "outside"])?;
    let f = |name: &str, g: &dyn Fn(&LesionRow) -> Option<f64>| {
        col(Series::new(
            name.into(),
            rows.iter().map(g).collect::<Vec<_>>(),
        ))
    };
    let u = |name: &str, g: &dyn Fn(&LesionRow) -> u32| {
        col(Series::new(
            name.into(),
            rows.iter().map(g).collect::<Vec<_>>(),
        ))
    };
    let cols = vec![
        strs(
            "scan_id",
            rows.iter().map(|r| Some(r.scan_id.as_str())).collect(),
        ),
        u("lesion_id", &|r| r.lesion_id),
        f("volume_ml", &|r| Some(r.volume_ml)),
        col(Series::new(
            "voxels".into(),
            rows.iter().map(|r| r.voxels).collect::<Vec<u64>>(),
        )),
        f("centroid_x_mm", &|r| Some(r.centroid_mm[0])),
        f("centroid_y_mm", &|r| Some(r.centroid_mm[1])),
        f("centroid_z_mm", &|r| Some(r.centroid_mm[2])),
        u("bbox_min_i", &|r| r.bbox_min[0]),
        u("bbox_min_j", &|r| r.bbox_min[1]),
        u("bbox_min_k", &|r| r.bbox_min[2]),
        u("bbox_max_i", &|r| r.bbox_max[0]),
        u("bbox_max_j", &|r| r.bbox_max[1]),
        u("bbox_max_k", &|r| r.bbox_max[2]),
        f("mean_hu", &|r| Some(r.mean_hu)),
        f("std_hu", &|r| Some(r.std_hu)),
        enums(
            "side",
            rows.iter().map(|r| r.side.map(side_str)).collect(),
            &side_type,
        )?,
        f("in_lung_fraction", &|r| r.in_lung_fraction),
    ];
    let df = DataFrame::new(rows.len(), cols)?;
    debug_assert!(
        df.get_column_names()
            .iter()
            .zip(LESION_COLUMNS)
            .all(|(a, b)| a.as_str() == b),
        "lesions_frame and LESION_COLUMNS disagree"
    );
    Ok(df)
}

/// File-level metadata of a table.
pub fn metadata(table: &str, run: &serde_json::Value) -> Vec<(String, String)> {
    vec![
        (
            "multir.schema_version".into(),
            RESULTS_SCHEMA_VERSION.to_string(),
        ),
        ("multir.version".into(), env!("CARGO_PKG_VERSION").into()),
        ("multir.table".into(), table.into()),
        ("multir.run".into(), run.to_string()),
    ]
}

/// Writes frames built `ROW_GROUP` rows at a time to `path` (temporary
/// name, then rename), with `meta` as file-level metadata.
pub fn write<T>(
    path: &Path,
    rows: &[T],
    frame: impl Fn(&[T]) -> anyhow::Result<DataFrame>,
    meta: Vec<(String, String)>,
) -> anyhow::Result<()> {
    let first = frame(&rows[..rows.len().min(ROW_GROUP)])?;
    // See the module docs: the oldest Arrow types, so every reader can
    // filter the string columns.
    let arrow_schema = first.schema().to_arrow(CompatLevel::oldest());
    let mut kv: Vec<KeyValue> = vec![schema_to_metadata_key(&arrow_schema)];
    kv.extend(meta.into_iter().map(|(key, value)| KeyValue {
        key,
        value: Some(value),
    }));
    let mut failure = None;
    write_atomic(path, |file| {
        let result = (|| -> anyhow::Result<()> {
            let writer = ParquetWriter::new(file)
                .with_compression(ParquetCompression::Zstd(None))
                .with_key_value_metadata(Some(KeyValueMetadata::Static(kv)));
            let mut batched = writer.batched(first.schema())?;
            batched.write_batch(&first)?;
            for chunk in rows.chunks(ROW_GROUP).skip(1) {
                batched.write_batch(&frame(chunk)?)?;
            }
            batched.finish()?;
            Ok(())
        })();
        result.map_err(|e| {
            // Keep the cause for the caller; the core only needs to know
            // the write failed to remove the temporary file.
            let io = std::io::Error::other(format!("{e:#}"));
            failure = Some(e);
            multir_common::Error::Io(io)
        })
    })
    .map_err(|e| match failure.take() {
        Some(cause) => cause.context(format!("{}", path.display())),
        None => anyhow::Error::from(e),
    })
}

/// The result tables as a [`Sink`]: scans are gathered as they arrive and
/// [`TableSink::finish`] writes `scans.parquet` and `lesions.parquet` in
/// the order they came, so every driver (the embedded run from its
/// fragments, in manifest order; a collector from its result messages)
/// ends in the same files.
pub struct TableSink {
    classes: Vec<String>,
    scans: Vec<ScanRow>,
    lesions: Vec<LesionRow>,
}

impl TableSink {
    /// An empty table for a model with these classes.
    pub fn new(classes: &[String]) -> TableSink {
        TableSink {
            classes: classes.to_vec(),
            scans: Vec::new(),
            lesions: Vec::new(),
        }
    }

    /// Writes both tables under `root` (each atomically) with `run` as the
    /// `multir.run` metadata, and returns the rows.
    pub fn finish(
        self,
        root: &Path,
        run: &serde_json::Value,
    ) -> anyhow::Result<(Vec<ScanRow>, Vec<LesionRow>)> {
        let classes = &self.classes;
        write(
            &root.join("scans.parquet"),
            &self.scans,
            |rows| scans_frame(rows, classes),
            metadata("scans", run),
        )?;
        write(
            &root.join("lesions.parquet"),
            &self.lesions,
            lesions_frame,
            metadata("lesions", run),
        )?;
        Ok((self.scans, self.lesions))
    }
}

impl Sink for TableSink {
    fn accept(&mut self, output: ScanOutput) -> multir_common::Result<()> {
        self.scans.push(output.record.scan);
        self.lesions.extend(output.record.lesions);
        Ok(())
    }
}

/// What a table file says about itself.
#[derive(Debug, Clone)]
pub struct TableFile {
    /// The frame.
    pub frame: DataFrame,
    /// File-level key/value metadata.
    pub metadata: Vec<(String, String)>,
}

/// Reads a Parquet file written by [`write`] (or any Parquet file).
pub fn read(path: &Path) -> anyhow::Result<TableFile> {
    let file = File::open(path).with_context(|| path.display().to_string())?;
    let mut reader = ParquetReader::new(file);
    let metadata = reader
        .get_metadata()
        .with_context(|| path.display().to_string())?
        .key_value_metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|kv| Some((kv.key, kv.value?)))
        .collect();
    let frame = reader
        .finish()
        .with_context(|| path.display().to_string())?;
    Ok(TableFile { frame, metadata })
}

/// A column cast to `dtype` (so categorical columns read as strings and
/// narrower integers as u64).
fn cast_col(df: &DataFrame, name: &str, dtype: &DataType) -> anyhow::Result<Series> {
    Ok(df
        .column(name)
        .with_context(|| format!("column {name}"))?
        .as_materialized_series()
        .cast(dtype)?)
}

/// A column as optional strings (categorical columns included).
fn str_col(df: &DataFrame, name: &str) -> anyhow::Result<Vec<Option<String>>> {
    let s = cast_col(df, name, &DataType::String)?;
    let ca = s.str()?;
    Ok((0..ca.len())
        .map(|i| ca.get(i).map(str::to_string))
        .collect())
}

fn f64_col(df: &DataFrame, name: &str) -> anyhow::Result<Vec<Option<f64>>> {
    let s = cast_col(df, name, &DataType::Float64)?;
    let ca = s.f64()?;
    Ok((0..ca.len()).map(|i| ca.get(i)).collect())
}

fn u64_col(df: &DataFrame, name: &str) -> anyhow::Result<Vec<Option<u64>>> {
    let s = cast_col(df, name, &DataType::UInt64)?;
    let ca = s.u64()?;
    Ok((0..ca.len()).map(|i| ca.get(i)).collect())
}

/// The class names of a scans table, from its `prob_<class>` columns.
pub fn classes_of(df: &DataFrame) -> Vec<String> {
    df.get_column_names()
        .iter()
        .filter_map(|n| n.strip_prefix("prob_").map(str::to_string))
        .collect()
}

/// A scans table read back.
pub struct Scans {
    /// The rows, in file order.
    pub rows: Vec<ScanRow>,
    /// The class names, from the `prob_<class>` columns.
    pub classes: Vec<String>,
    /// The file-level metadata (`multir.run` holds the run's settings).
    pub metadata: Vec<(String, String)>,
}

/// Columns of one type by name.
type Columns<T> = HashMap<String, Vec<Option<T>>>;

/// Float and integer columns of a table by name. Every listed column must
/// be there; each is read by the type the file stores, so the writers'
/// column lists are the only ones.
fn numeric_columns(
    df: &DataFrame,
    names: impl IntoIterator<Item = String>,
    path: &Path,
) -> anyhow::Result<(Columns<f64>, Columns<u64>)> {
    let at = |what: &str| format!("{}: {what}", path.display());
    let (mut fl, mut il) = (HashMap::new(), HashMap::new());
    for name in names {
        let dtype = df
            .column(&name)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| at(&name))?
            .dtype()
            .clone();
        match dtype {
            DataType::Float64 => {
                fl.insert(name.clone(), f64_col(df, &name).with_context(|| at(&name))?);
            }
            DataType::UInt32 | DataType::UInt64 => {
                il.insert(name.clone(), u64_col(df, &name).with_context(|| at(&name))?);
            }
            _ => {}
        }
    }
    Ok((fl, il))
}

/// Reads `scans.parquet` back into rows and class names.
pub fn read_scans(path: &Path) -> anyhow::Result<Scans> {
    let t = read(path)?;
    let df = &t.frame;
    let at = |what: &str| format!("{}: {what}", path.display());
    let classes = classes_of(df);
    let n = df.height();
    let s = |name: &str| str_col(df, name).with_context(|| at(name));
    let (ids, status, error, fault, label, pred) = (
        s("scan_id")?,
        s("status")?,
        s("error")?,
        s("fault")?,
        s("label")?,
        s("predicted_class")?,
    );
    let (fl, il) = numeric_columns(df, scan_columns(&classes), path)?;
    let probs: Vec<&Vec<Option<f64>>> = classes
        .iter()
        .map(|c| {
            fl.get(&format!("prob_{c}")).ok_or_else(|| {
                anyhow::anyhow!("{}: column prob_{c} is not float64", path.display())
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let fv = |name: &str, i: usize| fl.get(name).and_then(|v| v[i]);
    let iv = |name: &str, i: usize| il.get(name).and_then(|v| v[i]);
    let (img, msk, model, ver, dev, flags) = (
        s("image_sha256")?,
        s("mask_sha256")?,
        s("model_sha256")?,
        s("multir_version")?,
        s("device")?,
        s("flags")?,
    );
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let Some(id) = ids[i].clone() else {
            bail!("{}: row {i} has no scan_id", path.display());
        };
        let status = match status[i].as_deref() {
            Some("ok") => Status::Ok,
            Some("error") => Status::Error,
            other => bail!("{}: scan {id}: status {other:?}", path.display()),
        };
        let fault = match fault[i].as_deref() {
            Some("input") => Some(Fault::Input),
            Some("environment") => Some(Fault::Environment),
            _ => None,
        };
        let probabilities = if probs.iter().all(|p| p[i].is_some()) {
            probs.iter().map(|p| p[i].unwrap_or_default()).collect()
        } else {
            Vec::new()
        };
        let triple_u = |a: &str, b: &str, c: &str| -> Option<[u32; 3]> {
            Some([iv(a, i)? as u32, iv(b, i)? as u32, iv(c, i)? as u32])
        };
        rows.push(ScanRow {
            scan_id: id,
            status,
            error: error[i].clone(),
            fault,
            label: label[i].clone(),
            predicted_class: pred[i].clone(),
            probabilities,
            lesion_volume_ml: fv("lesion_volume_ml", i),
            lesion_outside_lungs_ml: fv("lesion_outside_lungs_ml", i),
            lesion_removed_ml: fv("lesion_removed_ml", i),
            lung_volume_ml: fv("lung_volume_ml", i),
            left_lung_involvement_pct: fv("left_lung_involvement_pct", i),
            right_lung_involvement_pct: fv("right_lung_involvement_pct", i),
            lung_involvement_pct: fv("lung_involvement_pct", i),
            severity_score: iv("severity_score", i).map(|v| v as u8),
            n_lesions: iv("n_lesions", i).map(|v| v as u32),
            dice: fv("dice", i),
            jaccard: fv("jaccard", i),
            assd_mm: fv("assd_mm", i),
            asd_truth_to_pred_mm: fv("asd_truth_to_pred_mm", i),
            asd_pred_to_truth_mm: fv("asd_pred_to_truth_mm", i),
            surface_dice: fv("surface_dice", i),
            surface_overlap_truth: fv("surface_overlap_truth", i),
            surface_overlap_pred: fv("surface_overlap_pred", i),
            hd95_mm: fv("hd95_mm", i),
            hausdorff_mm: fv("hausdorff_mm", i),
            volume_truth_ml: fv("volume_truth_ml", i),
            volume_difference_ml: fv("volume_difference_ml", i),
            tolerance_mm: fv("tolerance_mm", i),
            seconds: StageSeconds {
                read: fv("read_s", i).unwrap_or(0.0),
                preprocess: fv("preprocess_s", i).unwrap_or(0.0),
                inference: fv("inference_s", i).unwrap_or(0.0),
                quantify: fv("quantify_s", i).unwrap_or(0.0),
                metrics: fv("metrics_s", i).unwrap_or(0.0),
                write: fv("write_s", i).unwrap_or(0.0),
                total: fv("total_s", i).unwrap_or(0.0),
            },
            windows: iv("windows", i).map(|v| v as u32),
            shape: triple_u("shape_i", "shape_j", "shape_k"),
            spacing_mm: (|| {
                Some([
                    fv("spacing_i_mm", i)?,
                    fv("spacing_j_mm", i)?,
                    fv("spacing_k_mm", i)?,
                ])
            })(),
            image_sha256: img[i].clone(),
            mask_sha256: msk[i].clone(),
            model_sha256: model[i].clone().unwrap_or_default(),
            multir_version: ver[i].clone().unwrap_or_default(),
            device: dev[i].clone().unwrap_or_default(),
            flags: flags[i].clone(),
        });
    }
    Ok(Scans {
        rows,
        classes,
        metadata: t.metadata,
    })
}

/// Reads `lesions.parquet` back into rows.
pub fn read_lesions(path: &Path) -> anyhow::Result<Vec<LesionRow>> {
    let t = read(path)?;
    let df = &t.frame;
    let at = |what: &str| format!("{}: {what}", path.display());
    let s = |name: &str| str_col(df, name).with_context(|| at(name));
    let (ids, side) = (s("scan_id")?, s("side")?);
    let names = LESION_COLUMNS.iter().chain(["in_lung_fraction"].iter());
    let (fl, il) = numeric_columns(df, names.map(|n| n.to_string()), path)?;
    let fv = |name: &str, i: usize| fl.get(name).and_then(|v| v[i]).unwrap_or_default();
    let iv = |name: &str, i: usize| il.get(name).and_then(|v| v[i]).unwrap_or_default();
    Ok((0..df.height())
        .map(|i| LesionRow {
            scan_id: ids[i].clone().unwrap_or_default(),
            lesion_id: iv("lesion_id", i) as u32,
            volume_ml: fv("volume_ml", i),
            voxels: iv("voxels", i),
            centroid_mm: ["x", "y", "z"].map(|a| fv(&format!("centroid_{a}_mm"), i)),
            bbox_min: ["i", "j", "k"].map(|a| iv(&format!("bbox_min_{a}"), i) as u32),
            bbox_max: ["i", "j", "k"].map(|a| iv(&format!("bbox_max_{a}"), i) as u32),
            mean_hu: fv("mean_hu", i),
            std_hu: fv("std_hu", i),
            side: match side[i].as_deref() {
                Some("left") => Some(LesionSide::Left),
                Some("right") => Some(LesionSide::Right),
                Some("both") => Some(LesionSide::Both),
                Some("outside") => Some(LesionSide::Outside),
                _ => None,
            },
            in_lung_fraction: fl.get("in_lung_fraction").and_then(|v| v[i]),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use multir_common::results::ScanRow;

    fn classes() -> Vec<String> {
        ["covid", "cap", "healthy"].map(String::from).to_vec()
    }

    fn rows() -> Vec<ScanRow> {
        let mut a = ScanRow::new("a", Some("covid".into()));
        a.predicted_class = Some("cap".into());
        a.probabilities = vec![0.25, 0.5, 0.25];
        a.lesion_volume_ml = Some(0.1 + 0.2);
        a.severity_score = Some(7);
        a.n_lesions = Some(2);
        a.shape = Some([3, 4, 5]);
        a.spacing_mm = Some([0.7, 0.7, 1.25]);
        a.seconds.inference = 1.5;
        a.seconds.total = 2.0;
        a.image_sha256 = Some("ab".into());
        a.model_sha256 = "cd".into();
        a.device = "cpu".into();
        a.flags = Some("few_slices,no_air".into());
        let mut b = ScanRow::new("b", Some("flu".into()));
        b.fail(Fault::Input, "scan b: x.nii.gz: truncated".into());
        vec![a, b]
    }

    #[test]
    fn the_frames_have_the_documented_columns_in_order() {
        let df = scans_frame(&rows(), &classes()).unwrap();
        let names: Vec<String> = df
            .get_column_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, scan_columns(&classes()));
        let df = lesions_frame(&[]).unwrap();
        let names: Vec<String> = df
            .get_column_names()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(&names[..LESION_COLUMNS.len()], &LESION_COLUMNS);
        assert_eq!(names.last().map(String::as_str), Some("in_lung_fraction"));
    }

    #[test]
    fn scan_rows_round_trip_through_parquet_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scans.parquet");
        let rows = rows();
        let run = serde_json::json!({"complete": true});
        write(
            &path,
            &rows,
            |r| scans_frame(r, &classes()),
            metadata("scans", &run),
        )
        .unwrap();
        let back = read_scans(&path).unwrap();
        assert_eq!(back.classes, classes());
        assert_eq!(
            back.rows, rows,
            "every field, labels outside the classes included"
        );
        let meta = back.metadata;
        let get = |k: &str| meta.iter().find(|(m, _)| m == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("multir.schema_version"),
            Some(RESULTS_SCHEMA_VERSION.to_string())
        );
        assert_eq!(get("multir.table").as_deref(), Some("scans"));
        assert_eq!(get("multir.run").as_deref(), Some(run.to_string().as_str()));
        assert!(get("ARROW:schema").is_some());
    }

    #[test]
    fn lesion_rows_round_trip_through_parquet_exactly() {
        let rows = vec![
            LesionRow {
                scan_id: "a".into(),
                lesion_id: 1,
                volume_ml: 0.1 + 0.2,
                voxels: 7,
                centroid_mm: [-1.5, 2.25, 1e-9],
                bbox_min: [1, 2, 3],
                bbox_max: [4, 5, 6],
                mean_hu: -650.5,
                std_hu: 80.0,
                side: Some(LesionSide::Left),
                in_lung_fraction: Some(0.75),
            },
            LesionRow {
                scan_id: "b".into(),
                lesion_id: 2,
                volume_ml: 3.0,
                voxels: 9,
                centroid_mm: [0.0; 3],
                bbox_min: [0; 3],
                bbox_max: [9; 3],
                mean_hu: 20.0,
                std_hu: 0.0,
                side: None,
                in_lung_fraction: None,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lesions.parquet");
        let run = serde_json::json!({});
        write(&path, &rows, lesions_frame, metadata("lesions", &run)).unwrap();
        assert_eq!(read_lesions(&path).unwrap(), rows);
    }
}
