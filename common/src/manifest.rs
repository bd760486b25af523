//! Cohort manifests: `scan_id,image,label,mask` CSV files.
//!
//! A manifest lists the scans of one cohort, one row per scan:
//!
//! ```text
//! scan_id,image,label,mask
//! p001,images/p001.nii.gz,covid,masks/p001.nii.gz
//! p002,dicom/p002/,healthy,
//! p003,images/p003.nii.gz,,
//! ```
//!
//! - The header row is required. `scan_id` and `image` columns must exist;
//!   `label` and `mask` may be left out entirely or left empty per row
//!   (inference cohorts have neither). Other columns are ignored, so a
//!   spreadsheet with extra notes still reads. Column order is free. A
//!   column name may appear only once, and every row has exactly as many
//!   fields as the header (an unquoted comma in a path would shift the
//!   fields after it into the wrong columns).
//! - `scan_id` must be non-empty and unique. Because later stages name
//!   output files after it, it may not contain path separators or control
//!   characters, and may not be `.` or `..`.
//! - `label` is one of `covid`, `cap`, `healthy` (case-insensitive).
//! - Paths are relative to the folder that holds the manifest (so a cohort
//!   folder can be moved or copied as a whole); absolute paths are accepted.
//! - Fields are trimmed of surrounding whitespace; a UTF-8 byte-order mark
//!   (as spreadsheets write) is skipped.
//!
//! Every error is an [`Error::Manifest`] that names the line and the
//! problem; [`Manifest::read_path`] adds the file name.

use std::collections::HashSet;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Context, Error, Result};

/// The three classes of the paper, in the model's class order: the
/// classifier's output `c` means `Label::ALL[c]` (covid = 0, cap = 1,
/// healthy = 2).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// COVID-19 pneumonia.
    Covid,
    /// Community-acquired pneumonia.
    Cap,
    /// No pneumonia.
    Healthy,
}

impl Label {
    /// All labels in class-index order.
    pub const ALL: [Label; 3] = [Label::Covid, Label::Cap, Label::Healthy];

    /// Class index: covid = 0, cap = 1, healthy = 2.
    pub fn index(self) -> usize {
        match self {
            Label::Covid => 0,
            Label::Cap => 1,
            Label::Healthy => 2,
        }
    }

    /// The label of a class index, `None` when out of range.
    pub fn from_index(index: usize) -> Option<Label> {
        Label::ALL.get(index).copied()
    }

    /// The manifest spelling: "covid", "cap" or "healthy".
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Covid => "covid",
            Label::Cap => "cap",
            Label::Healthy => "healthy",
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Label {
    type Err = Error;

    /// Parses the manifest spelling, ignoring case and surrounding spaces.
    fn from_str(s: &str) -> Result<Label> {
        let t = s.trim();
        Label::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown label {t:?} (expected covid, cap or healthy)"
                ))
            })
    }
}

/// One row of a manifest. Paths are as written in the file; resolve them
/// with [`ManifestEntry::image_path`] and [`ManifestEntry::mask_path`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Unique identifier of the scan within the cohort.
    pub scan_id: String,
    /// The image: a NIfTI file or a DICOM folder, as written in the file.
    pub image: PathBuf,
    /// Ground-truth class, if known.
    pub label: Option<Label>,
    /// Ground-truth lesion mask, if known, as written in the file.
    pub mask: Option<PathBuf>,
}

impl ManifestEntry {
    /// The image path resolved against the manifest's folder.
    pub fn image_path(&self, manifest: &Manifest) -> PathBuf {
        manifest.resolve(&self.image)
    }

    /// The mask path resolved against the manifest's folder.
    pub fn mask_path(&self, manifest: &Manifest) -> Option<PathBuf> {
        self.mask.as_deref().map(|m| manifest.resolve(m))
    }
}

/// A cohort: its scans and the folder their relative paths start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The folder of the manifest file; relative entry paths start here.
    pub root: PathBuf,
    /// The scans, in file order.
    pub entries: Vec<ManifestEntry>,
}

/// A manifest's rows, one at a time, with every check of
/// [`Manifest::from_reader`]: for cohorts too large to hold (a `submit` of
/// 100 000 scans). Only the scan ids seen so far are kept, to refuse
/// duplicates. Paths are as written in the file.
pub struct Rows<R: Read> {
    records: csv::StringRecordsIntoIter<R>,
    columns: usize,
    c_id: usize,
    c_image: usize,
    c_label: Option<usize>,
    c_mask: Option<usize>,
    seen: HashSet<String>,
}

impl<R: Read> Rows<R> {
    /// Reads and checks the header.
    pub fn new(reader: R) -> Result<Rows<R>> {
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(reader);
        let headers = rdr.headers().map_err(|e| csv_error(e, "header"))?.clone();
        let find = |name: &str| {
            headers
                .iter()
                .position(|h| h.trim_start_matches('\u{feff}').eq_ignore_ascii_case(name))
        };
        let missing = |name: &str| {
            Error::Manifest(format!(
                "line 1: missing column {name:?} (the header must name at least \
                 scan_id and image; found {:?})",
                headers.iter().collect::<Vec<_>>()
            ))
        };
        // A repeated column name would leave it to chance which one is read.
        let mut names = HashSet::new();
        for h in &headers {
            let name = h.trim_start_matches('\u{feff}').to_ascii_lowercase();
            if !name.is_empty() && !names.insert(name) {
                return Err(Error::Manifest(format!(
                    "line 1: column {h:?} appears more than once in the header"
                )));
            }
        }
        Ok(Rows {
            c_id: find("scan_id").ok_or_else(|| missing("scan_id"))?,
            c_image: find("image").ok_or_else(|| missing("image"))?,
            c_label: find("label"),
            c_mask: find("mask"),
            columns: headers.len(),
            records: rdr.into_records(),
            seen: HashSet::new(),
        })
    }

    fn entry(&mut self, record: csv::StringRecord) -> Result<Option<ManifestEntry>> {
        let line = record.position().map_or(0, |p| p.line());
        if record.iter().all(str::is_empty) {
            return Ok(None); // blank lines and rows of empty cells carry nothing
        }
        // The reader is flexible so that this message, not the csv
        // crate's, names the line; a row with more fields than the
        // header (an unquoted comma in a path) is as wrong as one with
        // fewer: its fields no longer sit under their column names.
        if record.len() != self.columns {
            return Err(Error::Manifest(format!(
                "line {line}: {} fields, but the header has {}",
                record.len(),
                self.columns
            )));
        }
        let field = |c: usize| record.get(c).unwrap_or("");
        let scan_id = field(self.c_id);
        check_scan_id(scan_id).map_err(|why| Error::Manifest(format!("line {line}: {why}")))?;
        if !self.seen.insert(scan_id.to_string()) {
            return Err(Error::Manifest(format!(
                "line {line}: duplicate scan_id {scan_id:?}"
            )));
        }
        let image = field(self.c_image);
        if image.is_empty() {
            return Err(Error::Manifest(format!(
                "line {line}: scan {scan_id:?} has an empty image path"
            )));
        }
        let label = match self.c_label.map(field).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse::<Label>().map_err(|_| {
                Error::Manifest(format!(
                    "line {line}: unknown label {s:?} for scan {scan_id:?} \
                     (expected covid, cap, healthy or empty)"
                ))
            })?),
        };
        let mask = self
            .c_mask
            .map(field)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        Ok(Some(ManifestEntry {
            scan_id: scan_id.to_string(),
            image: PathBuf::from(image),
            label,
            mask,
        }))
    }
}

impl<R: Read> Iterator for Rows<R> {
    type Item = Result<ManifestEntry>;

    fn next(&mut self) -> Option<Result<ManifestEntry>> {
        loop {
            let record = match self.records.next()? {
                Ok(r) => r,
                Err(e) => return Some(Err(csv_error(e, "row"))),
            };
            match self.entry(record) {
                Ok(None) => continue,
                Ok(Some(e)) => return Some(Ok(e)),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// The columns a manifest file has, in the order this module writes them.
pub const COLUMNS: [&str; 4] = ["scan_id", "image", "label", "mask"];

impl Manifest {
    /// An empty manifest whose relative paths start at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Manifest {
            root: root.into(),
            entries: Vec::new(),
        }
    }

    /// Reads a manifest file; relative paths are resolved against its
    /// folder. Errors name the file, the line and the problem.
    pub fn read_path(path: impl AsRef<Path>) -> Result<Manifest> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).in_file(path)?;
        let root = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Manifest::from_reader(std::io::BufReader::new(file), root).in_file(path)
    }

    /// Parses manifest CSV from a reader; `root` is the folder relative
    /// paths start from.
    pub fn from_reader<R: Read>(reader: R, root: impl Into<PathBuf>) -> Result<Manifest> {
        let entries = Rows::new(reader)?.collect::<Result<Vec<_>>>()?;
        if entries.is_empty() {
            return Err(Error::Manifest("the manifest lists no scans".into()));
        }
        Ok(Manifest {
            root: root.into(),
            entries,
        })
    }

    /// Writes the manifest as CSV with the columns of [`COLUMNS`]; paths are
    /// written as stored, so they stay relative to [`Manifest::root`].
    pub fn to_writer<W: Write>(&self, writer: W) -> Result<()> {
        let mut w = csv::Writer::from_writer(writer);
        let io = |e: csv::Error| Error::Io(std::io::Error::other(e.to_string()));
        w.write_record(COLUMNS).map_err(io)?;
        for e in &self.entries {
            let image = path_field(&e.image)?;
            let mask = e.mask.as_deref().map(path_field).transpose()?;
            w.write_record([
                e.scan_id.as_str(),
                image,
                e.label.map_or("", Label::as_str),
                mask.unwrap_or(""),
            ])
            .map_err(io)?;
        }
        w.flush()?;
        Ok(())
    }

    /// Writes the manifest file. Relative paths are written as stored when
    /// the file goes into [`Manifest::root`]; when it goes elsewhere they are
    /// made absolute so they still point at the same files.
    pub fn write_path(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let dest_dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let same_dir = same_folder(&dest_dir, &self.root);
        let rebased;
        let to_write = if same_dir {
            self
        } else {
            let root = std::path::absolute(&self.root).in_file(&self.root)?;
            rebased = Manifest {
                root: dest_dir,
                entries: self
                    .entries
                    .iter()
                    .map(|e| ManifestEntry {
                        image: root.join(&e.image),
                        mask: e.mask.as_ref().map(|m| root.join(m)),
                        ..e.clone()
                    })
                    .collect(),
            };
            &rebased
        };
        crate::io::write_atomic(path, |f| to_write.to_writer(f))
    }

    /// A path from the file resolved against the manifest's folder
    /// (absolute paths are returned unchanged).
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// The entry with this scan id.
    pub fn get(&self, scan_id: &str) -> Option<&ManifestEntry> {
        self.entries.iter().find(|e| e.scan_id == scan_id)
    }

    /// Number of scans per label, in class-index order; unlabelled scans
    /// are not counted.
    pub fn label_counts(&self) -> [usize; 3] {
        let mut c = [0; 3];
        for l in self.entries.iter().filter_map(|e| e.label) {
            c[l.index()] += 1;
        }
        c
    }

    /// Number of scans.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the manifest lists no scans.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Longest scan id in bytes: outputs are named `<scan_id>_prob.nii.gz`
/// and written through a `.part` file, which must stay within the 255-byte
/// file-name limit of common file systems.
pub const MAX_SCAN_ID_BYTES: usize = 200;

/// Why a scan id is unusable, if it is: ids name output files, so they may
/// not be empty, `.` or `..`, hold path separators or control characters, or
/// be longer than [`MAX_SCAN_ID_BYTES`].
pub fn check_scan_id(id: &str) -> std::result::Result<(), String> {
    if id.is_empty() {
        return Err("empty scan_id".into());
    }
    if id.len() > MAX_SCAN_ID_BYTES {
        return Err(format!(
            "scan_id {:?}... is {} bytes long, more than {MAX_SCAN_ID_BYTES} \
             (scan ids name output files)",
            id.chars().take(40).collect::<String>(),
            id.len()
        ));
    }
    if id == "." || id == ".." {
        return Err(format!("scan_id {id:?} is not a usable name"));
    }
    if let Some(c) = id
        .chars()
        .find(|&c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(format!(
            "scan_id {id:?} contains {c:?} (scan ids name output files, so \
             path separators and control characters are not allowed)"
        ));
    }
    Ok(())
}

/// A path as a CSV field; manifests are text, so the path must be UTF-8.
fn path_field(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| Error::InvalidArgument(format!("path {} is not valid UTF-8", p.display())))
}

/// Whether two folder paths name the same folder (by canonical path when
/// both exist, else literally).
fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// A CSV parse error as a manifest error with its line.
fn csv_error(e: csv::Error, what: &str) -> Error {
    let line = e.position().map(|p| p.line());
    let detail = match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "invalid UTF-8".to_string(),
        csv::ErrorKind::Io(io) => return Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        _ => e.to_string(),
    };
    match line {
        Some(l) => Error::Manifest(format!("line {l}: cannot parse {what}: {detail}")),
        None => Error::Manifest(format!("cannot parse {what}: {detail}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest> {
        Manifest::from_reader(text.as_bytes(), "/data/cohort")
    }

    fn manifest_err(text: &str) -> String {
        match parse(text) {
            Err(Error::Manifest(m)) => m,
            other => panic!("expected a manifest error, got {other:?}"),
        }
    }

    #[test]
    fn labels_round_trip_and_index() {
        for (i, l) in Label::ALL.into_iter().enumerate() {
            assert_eq!(l.index(), i);
            assert_eq!(Label::from_index(i), Some(l));
            assert_eq!(l.to_string().parse::<Label>().unwrap(), l);
            assert_eq!(serde_json::to_string(&l).unwrap(), format!("\"{l}\""));
        }
        assert_eq!(Label::from_index(3), None);
        assert_eq!(" COVID ".parse::<Label>().unwrap(), Label::Covid);
        assert!("pneumonia".parse::<Label>().is_err());
        let l: Label = serde_json::from_str("\"cap\"").unwrap();
        assert_eq!(l, Label::Cap);
    }

    #[test]
    fn parses_rows_and_resolves_paths() {
        let m = parse(
            "scan_id,image,label,mask,notes\n\
             a,images/a.nii.gz,covid,masks/a.nii.gz,first\n\
             b, /abs/b.nii , Healthy ,,\n\
             \n\
             c,dicom/c/,,,\n",
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        let a = &m.entries[0];
        assert_eq!(a.label, Some(Label::Covid));
        assert_eq!(
            a.image_path(&m),
            PathBuf::from("/data/cohort/images/a.nii.gz")
        );
        assert_eq!(
            a.mask_path(&m),
            Some(PathBuf::from("/data/cohort/masks/a.nii.gz"))
        );
        let b = m.get("b").unwrap();
        assert_eq!(b.image_path(&m), PathBuf::from("/abs/b.nii"));
        assert_eq!(b.label, Some(Label::Healthy));
        assert_eq!(b.mask, None);
        let c = m.get("c").unwrap();
        assert_eq!((c.label, c.mask.clone()), (None, None));
        assert_eq!(m.label_counts(), [1, 0, 1]);
    }

    #[test]
    fn label_and_mask_columns_are_optional_and_order_is_free() {
        let m = parse("image,scan_id\nx.nii,x\n").unwrap();
        assert_eq!(m.entries[0].scan_id, "x");
        assert_eq!(m.entries[0].image, PathBuf::from("x.nii"));
        assert_eq!(m.entries[0].label, None);
        // A spreadsheet's byte-order mark does not hide the first column.
        let m = parse("\u{feff}scan_id,image\ny,y.nii\n").unwrap();
        assert_eq!(m.entries[0].scan_id, "y");
    }

    #[test]
    fn errors_name_line_and_problem() {
        let e = manifest_err("id,image\na,a.nii\n");
        assert!(
            e.contains("line 1") && e.contains("missing column \"scan_id\""),
            "{e}"
        );
        let e = manifest_err("scan_id,label\na,covid\n");
        assert!(e.contains("missing column \"image\""), "{e}");
        let e = manifest_err("scan_id,image,label\na,a.nii,covid\n,b.nii,cap\n");
        assert!(e.contains("line 3") && e.contains("empty scan_id"), "{e}");
        let e = manifest_err("scan_id,image\na,a.nii\nb,b.nii\na,c.nii\n");
        assert!(
            e.contains("line 4") && e.contains("duplicate scan_id \"a\""),
            "{e}"
        );
        let e = manifest_err("scan_id,image,label\na,a.nii,covid\nb,b.nii,flu\n");
        assert!(
            e.contains("line 3") && e.contains("unknown label \"flu\""),
            "{e}"
        );
        let e = manifest_err("scan_id,image,label\na,a.nii,covid\nb,b.nii\n");
        assert!(e.contains("line 3") && e.contains("2 fields"), "{e}");
        // An unquoted comma in a path shifts every later field.
        let e = manifest_err("scan_id,image,label\na,a.nii,covid\nb,x,y.nii,cap\n");
        assert!(e.contains("line 3") && e.contains("4 fields"), "{e}");
        let e = manifest_err("scan_id,image,Image\na,a.nii,b.nii\n");
        assert!(
            e.contains("line 1") && e.contains("\"Image\" appears more than once"),
            "{e}"
        );
        let e = manifest_err("scan_id,image\na,\n");
        assert!(
            e.contains("line 2") && e.contains("empty image path"),
            "{e}"
        );
        let e = manifest_err("scan_id,image\n../x,x.nii\n");
        assert!(e.contains("line 2") && e.contains("'/'"), "{e}");
        let e = manifest_err("scan_id,image\n");
        assert!(e.contains("no scans"), "{e}");
        let e = Manifest::from_reader(&b"scan_id,image\na,\xff\xfe\n"[..], ".").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn read_path_names_the_file_and_write_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.csv");
        let mut m = Manifest::new(dir.path());
        m.entries.push(ManifestEntry {
            scan_id: "s1".into(),
            image: "images/s1.nii.gz".into(),
            label: Some(Label::Cap),
            mask: Some("masks/s1.nii.gz".into()),
        });
        m.entries.push(ManifestEntry {
            scan_id: "s,2".into(),
            image: "images/s2.nii.gz".into(),
            label: None,
            mask: None,
        });
        m.write_path(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("scan_id,image,label,mask\n"), "{text}");
        assert!(
            text.contains("s1,images/s1.nii.gz,cap,masks/s1.nii.gz"),
            "{text}"
        );
        let back = Manifest::read_path(&path).unwrap();
        assert_eq!(back, m);

        // Written into another folder, the entries still point at the
        // same files.
        let sub = dir.path().join("elsewhere");
        std::fs::create_dir(&sub).unwrap();
        m.write_path(sub.join("m.csv")).unwrap();
        let moved = Manifest::read_path(sub.join("m.csv")).unwrap();
        assert_eq!(
            moved.entries[0].image_path(&moved),
            std::path::absolute(dir.path())
                .unwrap()
                .join("images/s1.nii.gz")
        );

        std::fs::write(&path, "scan_id,image,label\na,a.nii,maybe\n").unwrap();
        let e = Manifest::read_path(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&path.display().to_string()) && e.contains("line 2"),
            "{e}"
        );
        let e = Manifest::read_path(dir.path().join("nope.csv")).unwrap_err();
        assert!(e.to_string().contains("nope.csv"));
    }
}
