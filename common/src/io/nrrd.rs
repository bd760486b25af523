//! NRRD (`.nrrd` with attached data, `.nhdr` with a detached data file):
//! read, as 3D Slicer, pyradiomics and ITK write it.
//!
//! A NRRD file is a text header (`NRRD0004`, then `field: value` lines,
//! `key:=value` pairs and `#` comments) ended by a blank line, followed by
//! the data, or naming a detached `data file`. Geometry is taken from
//! `space`, `space directions` and `space origin` exactly as ITK (and so
//! SimpleITK and 3D Slicer) reads it: each spatial axis's direction vector
//! is that axis's column of the voxel-to-world matrix (spacing included),
//! in the header's patient space; LPS and LAS are turned into RAS+ by
//! flipping the sign of the x (and for LPS the y) rows.
//!
//! Supported: `raw` and `gzip` (`gz`) encodings; every integer type to 64
//! bits, `float` and `double`, in all of the spec's spellings (`short`,
//! `signed short`, `int16_t`, ...); `endian` little or big; 3 axes, or 4
//! when one of them is a non-spatial axis of size 1 (direction `none`, as
//! Slicer writes single-component vector images); spaces
//! right-anterior-superior, left-anterior-superior, left-posterior-superior
//! and their abbreviations; `line skip`, `byte skip` (-1 with raw data); a
//! single detached `data file` relative to the header's folder.
//!
//! Refused with a message that says so: other encodings (ascii, hex,
//! bzip2), `block` data, more than one component or time point, headers
//! without an anatomical `space` (a bare `space dimension`, `scanner-xyz`,
//! `3D-right-handed`: nothing says which way the patient lies, and a
//! guessed left/right is worse than no answer) or without `space
//! directions`, space units other than mm, and `LIST` or numbered
//! (`%03d`) multi-file data. As with NIfTI, a header is checked against
//! the voxel limit before anything is allocated, the data must be exactly
//! as long as the header implies (a short file is truncated; more data,
//! compressed or not, means the header lies, and decompression stops just
//! past the promised size, so a small file cannot inflate into a huge
//! one), and NaN/infinite voxels are replaced as [`replace_nonfinite`]
//! says.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::bufread::MultiGzDecoder;

use super::nifti::{Dtype, read_voxels};
use super::{LoadOptions, Loaded, SourceInfo, replace_nonfinite};
use crate::error::{Context, Error, Result};
use crate::volume::{Affine, Volume};

/// Longest header accepted: real headers are a few hundred bytes (a few
/// kB with diffusion gradients as key/value pairs); a "header" with no
/// blank line in the first MiB is not one.
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// True when `head` (the first bytes of a file) starts with NRRD's magic.
pub fn is_nrrd(head: &[u8]) -> bool {
    head.starts_with(b"NRRD")
}

/// How the voxel bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Plain bytes.
    Raw,
    /// A gzip stream (`gzip` or `gz`).
    Gzip,
}

/// The anatomical space the `space directions` and `space origin` are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// right-anterior-superior (RAS): already RAS+.
    Ras,
    /// left-anterior-superior (LAS): x flipped.
    Las,
    /// left-posterior-superior (LPS, DICOM's and ITK's): x and y flipped.
    Lps,
}

impl Space {
    /// Signs that turn this space's x, y, z into RAS+.
    fn to_ras(self) -> [f64; 3] {
        match self {
            Space::Ras => [1.0, 1.0, 1.0],
            Space::Las => [-1.0, 1.0, 1.0],
            Space::Lps => [-1.0, -1.0, 1.0],
        }
    }
}

/// A parsed and validated NRRD header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Format version from the magic line (`NRRD0004` is 4).
    pub version: u32,
    /// Element type.
    pub dtype: Dtype,
    /// `sizes`, fastest axis first.
    pub sizes: Vec<u64>,
    /// Data encoding.
    pub encoding: Encoding,
    /// True for `endian: big` (irrelevant for 1-byte types).
    pub big_endian: bool,
    /// The patient space of the geometry.
    pub space: Space,
    /// `space directions`, one per axis; `None` for a non-spatial axis.
    pub directions: Vec<Option<[f64; 3]>>,
    /// `space origin` (0 when absent, as ITK reads it).
    pub origin: [f64; 3],
    /// `kinds`, when given.
    pub kinds: Option<Vec<String>>,
    /// Lines to skip at the start of the data file.
    pub line_skip: u64,
    /// Bytes to skip before the data (after line skip; for gzip, in the
    /// decompressed stream); -1: the data are the last bytes of the file.
    pub byte_skip: i64,
    /// The detached data file, as written in the header.
    pub data_file: Option<String>,
    /// Bytes of the header, blank line included: where attached data start.
    pub header_len: usize,
}

impl Header {
    /// Parses and validates a header from the start of a file. `bytes` may
    /// hold more than the header (attached data after the blank line); a
    /// detached header (`.nhdr`) may end at the end of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        let mut lines = Lines { bytes, pos: 0 };
        let Some(magic) = lines.next() else {
            return Err(wrong("file is empty".into()));
        };
        let magic = String::from_utf8_lossy(magic);
        let magic = magic.trim_end();
        let version = magic
            .strip_prefix("NRRD")
            .filter(|v| v.len() == 4 && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| {
                wrong(format!(
                    "the first line is {:?}, not NRRD's magic NRRD000<version>",
                    clip(magic)
                ))
            })?;
        if !(1..=5).contains(&version) {
            return Err(Error::Unsupported(format!(
                "NRRD format version {version} (versions 1 to 5 are known)"
            )));
        }
        let mut fields = Fields::default();
        let mut ended = false;
        let mut line_no = 1;
        while let Some(raw) = lines.next() {
            line_no += 1;
            let line = String::from_utf8_lossy(raw);
            // The spec ignores trailing whitespace, and a line that is
            // empty after that ends the header.
            let line = line.trim_end();
            if line.is_empty() {
                ended = true;
                break;
            }
            if line.starts_with('#') {
                continue;
            }
            let kv = line.find(":=");
            let field = line.find(": ");
            match (field, kv) {
                // Key/value pairs carry metadata (Slicer's segment names,
                // DWI gradients) that geometry and voxels do not depend on.
                (f, Some(k)) if f.is_none_or(|f| k < f) => continue,
                (Some(f), _) => fields.set(&line[..f], line[f + 2..].trim(), line_no)?,
                _ => {
                    return Err(Error::InvalidHeader(format!(
                        "line {line_no} ({:?}) is neither \"field: value\" nor \"key:=value\"",
                        clip(line)
                    )));
                }
            }
        }
        if !ended && fields.data_file.is_none() {
            return Err(Error::Truncated(
                "the header does not end with a blank line, so no data follow it \
                 (and it names no detached data file)"
                    .into(),
            ));
        }
        fields.finish(version, lines.pos)
    }

    /// Number of elements the data hold (all axes).
    pub fn elements(&self) -> u128 {
        self.sizes.iter().map(|&s| s as u128).product()
    }

    /// Bytes of voxel data the header implies.
    pub fn data_bytes(&self) -> u128 {
        self.elements() * self.dtype.size() as u128
    }

    /// Indices of the three spatial axes (those with a direction), in order.
    fn spatial_axes(&self) -> [usize; 3] {
        let axes: Vec<usize> = (0..self.sizes.len())
            .filter(|&a| self.directions[a].is_some())
            .collect();
        [axes[0], axes[1], axes[2]]
    }

    /// Voxel counts along the volume's i, j, k (the spatial axes).
    pub fn dims3(&self) -> [u64; 3] {
        self.spatial_axes().map(|a| self.sizes[a])
    }

    /// The voxel-to-RAS+ affine: columns are the spatial axes' directions,
    /// the translation the origin, both turned from the header's space
    /// into RAS+.
    pub fn affine(&self) -> Affine {
        let flip = self.space.to_ras();
        // A flipped 0 is -0, which prints as "-0.0000": keep zeros positive.
        let signed = |r: usize, v: f64| if v == 0.0 { 0.0 } else { flip[r] * v };
        let mut m = Affine::identity();
        for (c, a) in self.spatial_axes().into_iter().enumerate() {
            let d = self.directions[a].expect("spatial axes have directions");
            for r in 0..3 {
                m.0[r][c] = signed(r, d[r]);
            }
        }
        for r in 0..3 {
            m.0[r][3] = signed(r, self.origin[r]);
        }
        m
    }
}

/// Splits bytes into lines (without their `\n`), remembering where the
/// next line starts.
struct Lines<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Lines<'a> {
    fn next(&mut self) -> Option<&'a [u8]> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let rest = &self.bytes[self.pos..];
        let (line, used) = match rest.iter().position(|&b| b == b'\n') {
            Some(n) => (&rest[..n], n + 1),
            None => (rest, rest.len()),
        };
        self.pos += used;
        Some(line)
    }
}

/// Header fields as they are read, before they are checked together.
#[derive(Default)]
struct Fields {
    seen: Vec<String>,
    dtype: Option<Dtype>,
    dimension: Option<usize>,
    sizes: Option<Vec<u64>>,
    encoding: Option<Encoding>,
    endian: Option<bool>,
    space: Option<Space>,
    space_dimension: Option<usize>,
    directions: Option<Vec<Option<[f64; 3]>>>,
    origin: Option<[f64; 3]>,
    kinds: Option<Vec<String>>,
    line_skip: Option<u64>,
    byte_skip: Option<i64>,
    data_file: Option<String>,
}

impl Fields {
    fn set(&mut self, name: &str, value: &str, line_no: usize) -> Result<()> {
        let name = name.trim().to_ascii_lowercase();
        // "byteskip", "lineskip" and "datafile" are NRRD's older spellings.
        let canonical = match name.as_str() {
            "byteskip" => "byte skip",
            "lineskip" => "line skip",
            "datafile" => "data file",
            other => other,
        }
        .to_string();
        if self.seen.contains(&canonical) {
            return Err(Error::InvalidHeader(format!(
                "field \"{canonical}\" appears twice (line {line_no})"
            )));
        }
        self.seen.push(canonical.clone());
        let bad = |what: &str| {
            Error::InvalidHeader(format!(
                "line {line_no}: \"{canonical}: {}\": {what}",
                clip(value)
            ))
        };
        match canonical.as_str() {
            "type" => self.dtype = Some(parse_type(value)?),
            "dimension" => {
                self.dimension = Some(value.parse().map_err(|_| bad("not a whole number"))?)
            }
            "sizes" => {
                let sizes = value
                    .split_whitespace()
                    .map(|s| s.parse::<u64>())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|_| bad("sizes must be whole numbers"))?;
                self.sizes = Some(sizes);
            }
            "encoding" => {
                self.encoding = Some(match value.to_ascii_lowercase().as_str() {
                    "raw" => Encoding::Raw,
                    "gzip" | "gz" => Encoding::Gzip,
                    e @ ("ascii" | "text" | "txt" | "hex" | "bzip2" | "bz2" | "zrl") => {
                        return Err(Error::Unsupported(format!(
                            "NRRD encoding \"{e}\" (raw and gzip are read; convert the file, \
                             e.g. with 3D Slicer or SimpleITK)"
                        )));
                    }
                    _ => return Err(bad("unknown encoding (raw, gzip, ...)")),
                })
            }
            "endian" => {
                self.endian = Some(match value.to_ascii_lowercase().as_str() {
                    "little" => false,
                    "big" => true,
                    _ => return Err(bad("endian is \"little\" or \"big\"")),
                })
            }
            "space" => self.space = Some(parse_space(value)?),
            "space dimension" => {
                self.space_dimension = Some(value.parse().map_err(|_| bad("not a whole number"))?)
            }
            "space directions" => {
                let mut dirs = Vec::new();
                for token in vector_tokens(value).map_err(|e| bad(&e))? {
                    dirs.push(match token {
                        None => None,
                        Some(v) => Some(three(&v).map_err(|e| bad(&e))?),
                    });
                }
                self.directions = Some(dirs);
            }
            "space origin" => {
                let tokens = vector_tokens(value).map_err(|e| bad(&e))?;
                match tokens.as_slice() {
                    [Some(v)] => self.origin = Some(three(v).map_err(|e| bad(&e))?),
                    _ => return Err(bad("expected one vector like (x,y,z)")),
                }
            }
            "space units" => {
                for unit in value.split('"').skip(1).step_by(2) {
                    if !unit.is_empty() && unit != "mm" {
                        return Err(Error::Unsupported(format!(
                            "space units \"{unit}\": geometry in millimetres is needed"
                        )));
                    }
                }
            }
            "kinds" => {
                self.kinds = Some(value.split_whitespace().map(str::to_string).collect());
            }
            "line skip" => {
                self.line_skip = Some(
                    value
                        .parse()
                        .map_err(|_| bad("line skip is a whole number >= 0"))?,
                )
            }
            "byte skip" => {
                let v: i64 = value
                    .parse()
                    .map_err(|_| bad("byte skip is a whole number >= -1"))?;
                if v < -1 {
                    return Err(bad("byte skip is a whole number >= -1"));
                }
                self.byte_skip = Some(v);
            }
            "data file" => {
                let mut words = value.split_whitespace();
                let first = words.next().unwrap_or_default();
                if first == "LIST" || value.starts_with("LIST") {
                    return Err(Error::Unsupported(
                        "NRRD data split over a LIST of files; write it as one .nrrd".into(),
                    ));
                }
                if words.next().is_some() || first.contains('%') {
                    return Err(Error::Unsupported(format!(
                        "NRRD data split over numbered files (\"data file: {}\"); write it \
                         as one .nrrd",
                        clip(value)
                    )));
                }
                if first.is_empty() {
                    return Err(bad("no file name"));
                }
                self.data_file = Some(value.to_string());
            }
            // Descriptive fields that neither geometry (set by the space
            // fields) nor voxel values depend on.
            "content" | "thicknesses" | "centerings" | "centers" | "labels" | "units" | "min"
            | "max" | "old min" | "oldmin" | "old max" | "oldmax" | "sample units"
            | "measurement frame" | "number" | "axis mins" | "axismins" | "axis maxs"
            | "axismaxs" | "spacings" => {}
            "block size" | "blocksize" => {
                return Err(Error::Unsupported("NRRD block data".into()));
            }
            _ => {
                return Err(Error::InvalidHeader(format!(
                    "line {line_no}: unknown field \"{canonical}\" (metadata is written \
                     \"key:=value\")"
                )));
            }
        }
        Ok(())
    }

    fn finish(self, version: u32, header_len: usize) -> Result<Header> {
        let missing =
            |f: &str| Error::InvalidHeader(format!("the required field \"{f}\" is missing"));
        let dtype = self.dtype.ok_or_else(|| missing("type"))?;
        let dimension = self.dimension.ok_or_else(|| missing("dimension"))?;
        let sizes = self.sizes.ok_or_else(|| missing("sizes"))?;
        let encoding = self.encoding.ok_or_else(|| missing("encoding"))?;
        if sizes.len() != dimension {
            return Err(Error::InvalidHeader(format!(
                "dimension is {dimension} but sizes lists {} axes",
                sizes.len()
            )));
        }
        if !(3..=4).contains(&dimension) {
            return Err(Error::Unsupported(format!(
                "{dimension}-dimensional NRRD data; a 3D volume is needed"
            )));
        }
        if let Some(a) = sizes.iter().position(|&s| s == 0) {
            return Err(Error::InvalidHeader(format!(
                "sizes[{a}] is 0: every axis needs at least one sample"
            )));
        }
        let big_endian = match self.endian {
            Some(b) => b,
            None if dtype.size() == 1 => false,
            None => return Err(missing("endian")),
        };
        let space = match (self.space, self.space_dimension) {
            (Some(s), None | Some(3)) => s,
            (Some(_), Some(d)) => {
                return Err(Error::InvalidHeader(format!(
                    "space dimension {d} contradicts the 3D anatomical space"
                )));
            }
            (None, Some(_)) => {
                return Err(Error::Unsupported(
                    "a \"space dimension\" without \"space\": no patient space is named, \
                     so left and right are unknown"
                        .into(),
                ));
            }
            (None, None) => {
                return Err(Error::Unsupported(
                    "a NRRD header without \"space\" and \"space directions\": the voxels' \
                     orientation in the patient is unknown (3D Slicer writes \
                     \"space: left-posterior-superior\")"
                        .into(),
                ));
            }
        };
        let directions = self.directions.ok_or_else(|| missing("space directions"))?;
        if directions.len() != dimension {
            return Err(Error::InvalidHeader(format!(
                "space directions lists {} axes, dimension is {dimension}",
                directions.len()
            )));
        }
        let spatial = directions.iter().filter(|d| d.is_some()).count();
        if spatial != 3 {
            return Err(Error::Unsupported(format!(
                "{spatial} spatial axes (space directions other than none); 3 are needed"
            )));
        }
        for (a, d) in directions.iter().enumerate() {
            if d.is_none() && sizes[a] != 1 {
                return Err(Error::Unsupported(format!(
                    "axis {a} is not spatial and has {} samples (components or time \
                     points); a single 3D volume is needed",
                    sizes[a]
                )));
            }
        }
        if let Some(k) = &self.kinds
            && k.len() != dimension
        {
            return Err(Error::InvalidHeader(format!(
                "kinds lists {} axes, dimension is {dimension}",
                k.len()
            )));
        }
        let byte_skip = self.byte_skip.unwrap_or(0);
        if byte_skip == -1 && encoding != Encoding::Raw {
            return Err(Error::Unsupported(
                "byte skip -1 (data at the end of the file) with gzip encoding".into(),
            ));
        }
        let h = Header {
            version,
            dtype,
            sizes,
            encoding,
            big_endian,
            space,
            directions,
            origin: self.origin.unwrap_or([0.0; 3]),
            kinds: self.kinds,
            line_skip: self.line_skip.unwrap_or(0),
            byte_skip,
            data_file: self.data_file,
            header_len,
        };
        let affine = h.affine();
        if !affine.is_finite() || affine.inverse().is_err() {
            return Err(Error::InvalidHeader(
                "space directions are singular (an axis has no length or two axes are \
                 parallel) or not finite"
                    .into(),
            ));
        }
        Ok(h)
    }
}

/// The element types, under every spelling the NRRD spec allows.
fn parse_type(value: &str) -> Result<Dtype> {
    let v = value.split_whitespace().collect::<Vec<_>>().join(" ");
    Ok(match v.to_ascii_lowercase().as_str() {
        "signed char" | "int8" | "int8_t" => Dtype::I8,
        "uchar" | "unsigned char" | "uint8" | "uint8_t" => Dtype::U8,
        "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => {
            Dtype::I16
        }
        "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => Dtype::U16,
        "int" | "signed int" | "int32" | "int32_t" => Dtype::I32,
        "uint" | "unsigned int" | "uint32" | "uint32_t" => Dtype::U32,
        "longlong"
        | "long long"
        | "long long int"
        | "signed long long"
        | "signed long long int"
        | "int64"
        | "int64_t" => Dtype::I64,
        "ulonglong" | "unsigned long long" | "unsigned long long int" | "uint64" | "uint64_t" => {
            Dtype::U64
        }
        "float" => Dtype::F32,
        "double" => Dtype::F64,
        "block" => return Err(Error::Unsupported("NRRD block data".into())),
        _ => {
            return Err(Error::Unsupported(format!(
                "NRRD type \"{}\" (integers to 64 bits, float and double are read)",
                clip(value)
            )));
        }
    })
}

fn parse_space(value: &str) -> Result<Space> {
    Ok(match value.to_ascii_lowercase().as_str() {
        "right-anterior-superior" | "ras" => Space::Ras,
        "left-anterior-superior" | "las" => Space::Las,
        "left-posterior-superior" | "lps" => Space::Lps,
        s @ ("right-anterior-superior-time"
        | "rast"
        | "left-anterior-superior-time"
        | "last"
        | "left-posterior-superior-time"
        | "lpst"
        | "scanner-xyz-time"
        | "3d-right-handed-time"
        | "3d-left-handed-time") => {
            return Err(Error::Unsupported(format!(
                "space \"{s}\": a space with time; a single 3D volume is needed"
            )));
        }
        s @ ("scanner-xyz" | "3d-right-handed" | "3d-left-handed") => {
            return Err(Error::Unsupported(format!(
                "space \"{s}\": it names no patient direction, so left and right are \
                 unknown (right-anterior-superior, left-anterior-superior and \
                 left-posterior-superior are read)"
            )));
        }
        _ => {
            return Err(Error::InvalidHeader(format!(
                "unknown space \"{}\"",
                clip(value)
            )));
        }
    })
}

/// Splits `(a,b,c) none (d,e,f)` into vectors and `none`s.
fn vector_tokens(value: &str) -> std::result::Result<Vec<Option<Vec<f64>>>, String> {
    let mut out = Vec::new();
    let mut rest = value.trim();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('(') {
            let close = after
                .find(')')
                .ok_or_else(|| "a vector lacks its closing \")\"".to_string())?;
            let v = after[..close]
                .split(',')
                .map(|x| x.trim().parse::<f64>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| format!("({}) is not a vector of numbers", &after[..close]))?;
            out.push(Some(v));
            rest = after[close + 1..].trim_start();
        } else if rest.len() >= 4 && rest[..4].eq_ignore_ascii_case("none") {
            out.push(None);
            rest = rest[4..].trim_start();
        } else {
            return Err("expected vectors like (1,0,0) or none".into());
        }
    }
    Ok(out)
}

fn three(v: &[f64]) -> std::result::Result<[f64; 3], String> {
    let a: [f64; 3] = v
        .try_into()
        .map_err(|_| format!("a vector has {} components; the space is 3D", v.len()))?;
    if a.iter().any(|x| !x.is_finite()) {
        return Err("a vector is not finite".into());
    }
    Ok(a)
}

fn wrong(reason: String) -> Error {
    Error::WrongFormat {
        format: "NRRD",
        reason,
    }
}

/// A header value shortened for an error message.
fn clip(s: &str) -> String {
    if s.chars().count() > 80 {
        let mut t: String = s.chars().take(80).collect();
        t.push_str("...");
        t
    } else {
        s.to_string()
    }
}

/// Reads the header's bytes from a stream, up to and including its blank
/// line (or the end, for a detached header), leaving the stream at the
/// data.
fn read_header_bytes<R: BufRead>(src: &mut R) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    loop {
        let start = buf.len();
        let n = src
            .by_ref()
            .take((MAX_HEADER_BYTES + 1 - start) as u64)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(buf);
        }
        if buf.len() > MAX_HEADER_BYTES {
            return Err(Error::InvalidHeader(format!(
                "no blank line ends the header within its first {MAX_HEADER_BYTES} bytes"
            )));
        }
        let line = &buf[start..];
        if start == 0 && !is_nrrd(line) {
            // Stop at once: a binary file's first "line" could be all of it.
            return Ok(buf);
        }
        if start > 0 && line.iter().all(u8::is_ascii_whitespace) {
            return Ok(buf);
        }
    }
}

/// Reads a NRRD file with attached data from a stream. A header that
/// names a detached data file is refused: a stream cannot reach it (use
/// [`read_path`] or [`read_detached`]). Byte skip -1 needs the stream's
/// length, so it is refused here too ([`read_named`] handles it).
pub fn read<R: Read>(reader: R, opts: &LoadOptions) -> Result<Loaded> {
    let mut src = BufReader::with_capacity(1 << 20, reader);
    let head = read_header_bytes(&mut src)?;
    let h = Header::parse(&head)?;
    refuse_detached(&h)?;
    decode(&h, &mut src, None, opts)
}

/// Reads a NRRD file already in memory; `name` is where it came from and
/// every error names it. A detached header (`.nhdr`) is refused with a
/// message naming the data file it needs, since bytes alone cannot reach
/// it.
pub fn read_named(bytes: &[u8], name: &str, opts: &LoadOptions) -> Result<Loaded> {
    (|| -> Result<Loaded> {
        let head = read_header_bytes(&mut &bytes[..])?;
        let h = Header::parse(&head)?;
        refuse_detached(&h)?;
        let rest = &bytes[h.header_len..];
        decode(&h, &mut &rest[..], Some(rest.len() as u64), opts)
    })()
    .in_file(name)
}

/// Reads a detached NRRD: `header` is the `.nhdr` file's bytes, `data` the
/// data file's content (of `data_len` bytes, when known; byte skip -1
/// needs it).
pub fn read_detached<R: Read>(
    header: &[u8],
    data: R,
    data_len: Option<u64>,
    opts: &LoadOptions,
) -> Result<Loaded> {
    let h = Header::parse(header)?;
    if h.data_file.is_none() {
        return Err(Error::InvalidArgument(
            "this NRRD header has its data attached, not in a detached data file".into(),
        ));
    }
    let mut src = BufReader::with_capacity(1 << 20, data);
    decode(&h, &mut src, data_len, opts)
}

/// Where a header's detached data file is: its `data file`, relative to
/// the folder of the header at `header_path`. `None` for attached data.
pub fn data_file_path(header: &[u8], header_path: &Path) -> Result<Option<PathBuf>> {
    let head = read_header_bytes(&mut &header[..])?;
    let h = Header::parse(&head)?;
    Ok(h.data_file.map(|f| {
        let f = PathBuf::from(f);
        if f.is_absolute() {
            f
        } else {
            header_path.parent().unwrap_or(Path::new("")).join(f)
        }
    }))
}

/// Reads a `.nrrd` or a `.nhdr` and its data file; every error names the
/// header, and errors in the data file name it too.
pub fn read_path(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Loaded> {
    let path = path.as_ref();
    let file = File::open(path).in_file(path)?;
    let len = file.metadata().in_file(path)?.len();
    let mut src = BufReader::with_capacity(1 << 20, file);
    let head = read_header_bytes(&mut src).in_file(path)?;
    let h = Header::parse(&head).in_file(path)?;
    match data_file_path(&head, path).in_file(path)? {
        None => {
            let rest = len.saturating_sub(h.header_len as u64);
            decode(&h, &mut src, Some(rest), opts).in_file(path)
        }
        Some(data_path) => {
            let name = format!("{} (data file {})", path.display(), data_path.display());
            let data = File::open(&data_path).in_file(&name)?;
            let data_len = data.metadata().in_file(&name)?.len();
            let mut src = BufReader::with_capacity(1 << 20, data);
            decode(&h, &mut src, Some(data_len), opts).in_file(&name)
        }
    }
}

fn refuse_detached(h: &Header) -> Result<()> {
    match &h.data_file {
        None => Ok(()),
        Some(f) => Err(Error::Unsupported(format!(
            "a detached NRRD header (.nhdr): its voxels are in the data file \"{f}\", which \
             cannot be reached from the header's bytes alone; pass the header's path with \
             the data file beside it, or convert it to a single .nrrd"
        ))),
    }
}

/// Reads the voxels that `src` (positioned where the data file, or the
/// attached data, starts; `len` bytes long when known) holds for `h`.
fn decode<R: BufRead>(
    h: &Header,
    src: &mut R,
    len: Option<u64>,
    opts: &LoadOptions,
) -> Result<Loaded> {
    // Before anything is allocated or decompressed.
    opts.check_voxels(&h.sizes)?;
    let nbytes = u64::try_from(h.data_bytes())
        .map_err(|_| Error::InvalidHeader("the data size overflows 64 bits".into()))?;
    let n = h.elements() as usize;
    let mut consumed = 0u64;
    for line in 0..h.line_skip {
        let mut sink = Vec::new();
        // Bounded: line skip passes text lines, not the voxels.
        let k = src
            .by_ref()
            .take(MAX_HEADER_BYTES as u64)
            .read_until(b'\n', &mut sink)?;
        if k == 0 || sink.last() != Some(&b'\n') {
            return Err(Error::Truncated(format!(
                "the data end inside line {} of the {} lines to skip",
                line + 1,
                h.line_skip
            )));
        }
        consumed += k as u64;
    }
    let data = match h.encoding {
        Encoding::Raw => {
            let remaining = len.map(|l| l.saturating_sub(consumed));
            let skip = if h.byte_skip == -1 {
                let Some(r) = remaining else {
                    return Err(Error::Unsupported(
                        "byte skip -1 on a stream of unknown length".into(),
                    ));
                };
                if r < nbytes {
                    return Err(truncated(nbytes, r));
                }
                r - nbytes
            } else {
                h.byte_skip as u64
            };
            if let Some(r) = remaining {
                if r < skip.saturating_add(nbytes) {
                    return Err(truncated(nbytes, r.saturating_sub(skip)));
                }
                if r > skip + nbytes {
                    return Err(Error::InvalidHeader(format!(
                        "the data hold {} bytes more than the {nbytes} that sizes and type \
                         imply",
                        r - skip - nbytes
                    )));
                }
            }
            skip_bytes(src, skip)?;
            let data = read_voxels(src, h.dtype, h.big_endian, n)?;
            check_end(src, "the data hold more bytes than sizes and type imply")?;
            data
        }
        Encoding::Gzip => {
            let skip = h.byte_skip as u64;
            // A gzip byte skip passes decompressed bytes: bounded like the
            // voxels themselves, so it cannot be a bomb's fuse.
            let cap = opts.max_voxels.saturating_mul(8).saturating_add(1 << 20);
            if skip > cap {
                return Err(Error::TooLarge {
                    voxels: skip as u128 / 8,
                    limit: opts.max_voxels,
                });
            }
            let mut dec = BufReader::with_capacity(1 << 20, MultiGzDecoder::new(src));
            (|| -> Result<Vec<f32>> {
                skip_bytes(&mut dec, skip)?;
                let data = read_voxels(&mut dec, h.dtype, h.big_endian, n)?;
                // One read past the promised bytes: it finds more data (the
                // header lies, or this is a bomb; either way stop here) or
                // the end, where the decoder checks every member's CRC-32
                // and length.
                check_end(
                    &mut dec,
                    "the gzip data decompress to more bytes than sizes and type imply",
                )?;
                Ok(data)
            })()
            .map_err(super::gzip_context)?
        }
    };
    finish(h, data)
}

fn truncated(want: u64, have: u64) -> Error {
    Error::Truncated(format!("expected {want} bytes of voxel data, found {have}"))
}

fn skip_bytes<R: Read>(src: &mut R, skip: u64) -> Result<()> {
    let skipped = std::io::copy(&mut src.by_ref().take(skip), &mut std::io::sink())?;
    if skipped < skip {
        return Err(Error::Truncated(format!(
            "the data end within the {skip} bytes to skip (byte skip)"
        )));
    }
    Ok(())
}

/// Fails when `src` holds anything more.
fn check_end<R: Read>(src: &mut R, why: &str) -> Result<()> {
    let mut probe = [0u8; 1];
    loop {
        match src.read(&mut probe) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(Error::InvalidHeader(why.into())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn finish(h: &Header, mut data: Vec<f32>) -> Result<Loaded> {
    let nonfinite = replace_nonfinite(&mut data)?;
    if nonfinite > 0 {
        tracing::warn!(
            count = nonfinite,
            "replaced non-finite voxels by the volume minimum"
        );
    }
    let shape = h.dims3().map(|d| d as usize);
    let affine = h.affine();
    let volume = Volume::new(data, shape, affine)?;
    let info = SourceInfo {
        format: "NRRD".into(),
        dtype: h.dtype.name().into(),
        shape,
        spacing_mm: affine.spacing(),
        affine,
        nonfinite_replaced: nonfinite,
    };
    Ok(Loaded { volume, info })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    const LPS_HEADER: &str = "NRRD0004\n\
        # a comment\n\
        type: short\n\
        dimension: 3\n\
        space: left-posterior-superior\n\
        sizes: 3 2 2\n\
        space directions: (0.5,0,0) (0,0.75,0) (0,0,2.5)\n\
        kinds: domain domain domain\n\
        endian: little\n\
        encoding: raw\n\
        space origin: (-10,20.5,-30)\n\
        Segment0_Name:=tumour: left lung\n";

    fn voxels_i16(n: usize) -> (Vec<u8>, Vec<f32>) {
        let vals: Vec<i16> = (0..n as i16).map(|v| v * 100 - 700).collect();
        let bytes = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        (bytes, vals.iter().map(|&v| v as f32).collect())
    }

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut b = header.as_bytes().to_vec();
        b.push(b'\n');
        b.extend_from_slice(data);
        b
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn load(bytes: &[u8]) -> Result<Loaded> {
        read_named(bytes, "t.nrrd", &LoadOptions::default())
    }

    fn err(bytes: &[u8]) -> String {
        load(bytes).unwrap_err().to_string()
    }

    #[test]
    fn lps_header_becomes_a_ras_affine() {
        let (data, want) = voxels_i16(12);
        let l = load(&file(LPS_HEADER, &data)).unwrap();
        assert_eq!(l.volume.data(), &want[..]);
        assert_eq!(l.info.shape, [3, 2, 2]);
        assert_eq!(l.info.format, "NRRD");
        assert_eq!(l.info.dtype, "int16");
        assert_eq!(l.info.spacing_mm, [0.5, 0.75, 2.5]);
        let a = l.info.affine;
        assert_eq!(a.0[0], [-0.5, 0.0, 0.0, 10.0]);
        assert_eq!(a.0[1], [0.0, -0.75, 0.0, -20.5]);
        assert_eq!(a.0[2], [0.0, 0.0, 2.5, -30.0]);
        assert_eq!(a.axcodes(), "LPS");
        assert!(a.0[0][1].is_sign_positive(), "no -0 in the affine");
        // The same through a stream.
        let s = read(&file(LPS_HEADER, &data)[..], &LoadOptions::default()).unwrap();
        assert_eq!(s.volume, l.volume);
    }

    #[test]
    fn spaces_and_their_abbreviations() {
        let (data, _) = voxels_i16(12);
        for (space, x, y) in [
            ("RAS", 0.5, 0.75),
            ("right-anterior-superior", 0.5, 0.75),
            ("LAS", -0.5, 0.75),
            ("left-anterior-superior", -0.5, 0.75),
            ("LPS", -0.5, -0.75),
        ] {
            let h = LPS_HEADER.replace("left-posterior-superior", space);
            let a = load(&file(&h, &data)).unwrap().info.affine;
            assert_eq!((a.0[0][0], a.0[1][1]), (x, y), "{space}");
        }
        for (space, needle) in [
            ("3D-right-handed", "names no patient direction"),
            ("scanner-xyz", "names no patient direction"),
            ("RAST", "time"),
            ("up-down", "unknown space"),
        ] {
            let h = LPS_HEADER.replace("left-posterior-superior", space);
            let e = err(&file(&h, &data));
            assert!(e.contains(needle) && e.contains("t.nrrd"), "{space}: {e}");
        }
        let h = LPS_HEADER.replace("space: left-posterior-superior", "space dimension: 3");
        assert!(err(&file(&h, &data)).contains("no patient space"));
        let h = LPS_HEADER.replace("space: left-posterior-superior\n", "");
        assert!(err(&file(&h, &data)).contains("orientation in the patient is unknown"));
    }

    #[test]
    fn every_type_spelling_and_both_byte_orders() {
        let cases: &[(&[&str], Dtype)] = &[
            (&["signed char", "int8", "int8_t"], Dtype::I8),
            (&["uchar", "unsigned char", "uint8", "uint8_t"], Dtype::U8),
            (
                &[
                    "short",
                    "short int",
                    "signed short",
                    "signed short int",
                    "int16",
                    "int16_t",
                ],
                Dtype::I16,
            ),
            (
                &[
                    "ushort",
                    "unsigned short",
                    "unsigned short int",
                    "uint16",
                    "uint16_t",
                ],
                Dtype::U16,
            ),
            (&["int", "signed int", "int32", "int32_t"], Dtype::I32),
            (&["uint", "unsigned int", "uint32", "uint32_t"], Dtype::U32),
            (
                &["longlong", "long long", "signed long long int", "int64_t"],
                Dtype::I64,
            ),
            (&["ulonglong", "unsigned long long", "uint64"], Dtype::U64),
            (&["float"], Dtype::F32),
            (&["double"], Dtype::F64),
        ];
        for (names, dt) in cases {
            for name in *names {
                assert_eq!(parse_type(name).unwrap(), *dt, "{name}");
            }
        }
        assert!(
            parse_type("block")
                .unwrap_err()
                .to_string()
                .contains("block")
        );
        assert!(parse_type("quad").unwrap_err().to_string().contains("quad"));
        // Big-endian floats.
        let vals = [
            1.5f32, -2.25, 1e6, 0.0, 3.0, 7.0, -1.0, 2.0, 9.5, 4.0, 5.0, 6.0,
        ];
        let be: Vec<u8> = vals.iter().flat_map(|v| v.to_be_bytes()).collect();
        let h = LPS_HEADER
            .replace("type: short", "type: float")
            .replace("endian: little", "endian: big");
        let l = load(&file(&h, &be)).unwrap();
        assert_eq!(l.volume.data(), &vals[..]);
        assert_eq!(l.info.dtype, "float32");
        // One-byte types need no endian field.
        let h = LPS_HEADER
            .replace("type: short", "type: uchar")
            .replace("endian: little\n", "");
        let l = load(&file(&h, &[7u8; 12])).unwrap();
        assert_eq!(l.volume.data(), &[7.0; 12]);
        let h = LPS_HEADER.replace("endian: little\n", "");
        assert!(err(&file(&h, &[0; 24])).contains("\"endian\" is missing"));
    }

    #[test]
    fn gzip_data_with_byte_skip_and_integrity() {
        let (data, want) = voxels_i16(12);
        let h = LPS_HEADER.replace("encoding: raw", "encoding: gzip");
        let gz = gzip(&data);
        assert_eq!(load(&file(&h, &gz)).unwrap().volume.data(), &want[..]);
        let h_gz = LPS_HEADER.replace("encoding: raw", "encoding: gz");
        assert_eq!(load(&file(&h_gz, &gz)).unwrap().volume.data(), &want[..]);
        // Byte skip counts decompressed bytes, as pynrrd and teem read it.
        let mut skipped = vec![0xAB; 5];
        skipped.extend_from_slice(&data);
        let hs = format!("{h}byte skip: 5\n");
        let l = load(&file(&hs, &gzip(&skipped))).unwrap();
        assert_eq!(l.volume.data(), &want[..]);
        // Cut compressed stream; a flipped bit in the CRC trailer.
        let e = err(&file(&h, &gz[..gz.len() - 10]));
        assert!(e.contains("truncated"), "{e}");
        let mut flipped = gz.clone();
        let at = flipped.len() - 6;
        flipped[at] ^= 1;
        let e = err(&file(&h, &flipped));
        assert!(e.contains("corrupt gzip"), "{e}");
        // A small file inflating past the promised size is stopped.
        let bomb = gzip(&vec![0u8; 1 << 22]);
        let e = err(&file(&h, &bomb));
        assert!(e.contains("decompress to more bytes"), "{e}");
        let hm = format!("{h}byte skip: -1\n");
        assert!(err(&file(&hm, &gz)).contains("byte skip -1"));
    }

    #[test]
    fn raw_byte_and_line_skips() {
        let (data, want) = voxels_i16(12);
        let mut pre = b"junk line\nsecond\n".to_vec();
        pre.extend_from_slice(&[1, 2, 3]);
        pre.extend_from_slice(&data);
        let h = format!("{LPS_HEADER}line skip: 2\nbyte skip: 3\n");
        assert_eq!(load(&file(&h, &pre)).unwrap().volume.data(), &want[..]);
        // -1: the data are the file's last bytes, whatever precedes them.
        let mut tail = vec![9u8; 33];
        tail.extend_from_slice(&data);
        let h = format!("{LPS_HEADER}byte skip: -1\n");
        assert_eq!(load(&file(&h, &tail)).unwrap().volume.data(), &want[..]);
        let e = read(&file(&h, &tail)[..], &LoadOptions::default()).unwrap_err();
        assert!(e.to_string().contains("unknown length"), "{e}");
        let h = format!("{LPS_HEADER}byte skip: -2\n");
        assert!(err(&file(&h, &data)).contains(">= -1"));
    }

    #[test]
    fn short_and_long_data_are_refused() {
        let (data, _) = voxels_i16(12);
        let e = err(&file(LPS_HEADER, &data[..23]));
        assert!(e.contains("truncated") && e.contains("24 bytes"), "{e}");
        let e = read(&file(LPS_HEADER, &data[..23])[..], &LoadOptions::default()).unwrap_err();
        assert!(matches!(e, Error::Truncated(_)), "{e}");
        let mut long = data.clone();
        long.push(0);
        assert!(err(&file(LPS_HEADER, &long)).contains("1 bytes more"));
        let e = err(LPS_HEADER.as_bytes());
        assert!(e.contains("does not end with a blank line"), "{e}");
    }

    #[test]
    fn absurd_sizes_fail_before_allocating() {
        let h = LPS_HEADER.replace("sizes: 3 2 2", "sizes: 100000 100000 100000");
        let e = load(&file(&h, &[0; 24])).unwrap_err();
        assert!(matches!(e.root(), Error::TooLarge { .. }), "{e}");
        // Under the limit but far beyond the bytes that follow: 2e15
        // int16 voxels were promised; an allocation would have killed the
        // process, not returned an error.
        let opts = LoadOptions {
            max_voxels: u64::MAX,
            series_uid: None,
        };
        let e = read_named(&file(&h, &[0; 24]), "t.nrrd", &opts).unwrap_err();
        assert!(matches!(e.root(), Error::Truncated(_)), "{e}");
        let hg = h.replace("encoding: raw", "encoding: gzip");
        let e = read_named(&file(&hg, &gzip(&[0; 24])), "t.nrrd", &opts).unwrap_err();
        assert!(matches!(e.root(), Error::Truncated(_)), "{e}");
        // 2^63 int16 elements: a count that fits, a byte size that does not.
        let h = LPS_HEADER.replace("sizes: 3 2 2", &format!("sizes: {} 1 1", 1u64 << 63));
        assert!(
            read_named(&file(&h, &[0; 24]), "t.nrrd", &opts)
                .unwrap_err()
                .to_string()
                .contains("overflows")
        );
    }

    #[test]
    fn bad_headers_say_what_is_wrong() {
        let (data, _) = voxels_i16(12);
        let expect = |h: String, needle: &str| {
            let e = err(&file(&h, &data));
            assert!(
                e.contains(needle) && e.contains("t.nrrd"),
                "{e:?} lacks {needle:?}"
            );
        };
        expect("hello\n".into(), "not a NRRD file");
        expect(LPS_HEADER.replace("NRRD0004", "NRRD0009"), "version 9");
        expect(
            LPS_HEADER.replace("sizes: 3 2 2\n", ""),
            "\"sizes\" is missing",
        );
        expect(
            LPS_HEADER.replace("type: short\n", ""),
            "\"type\" is missing",
        );
        expect(
            LPS_HEADER.replace("encoding: raw\n", ""),
            "\"encoding\" is missing",
        );
        expect(
            LPS_HEADER.replace("dimension: 3\n", ""),
            "\"dimension\" is missing",
        );
        expect(
            LPS_HEADER.replace("space directions: (0.5,0,0) (0,0.75,0) (0,0,2.5)\n", ""),
            "\"space directions\" is missing",
        );
        expect(
            LPS_HEADER.replace("sizes: 3 2 2", "sizes: 3 2"),
            "sizes lists 2 axes",
        );
        expect(
            LPS_HEADER.replace("sizes: 3 2 2", "sizes: 3 0 2"),
            "sizes[1] is 0",
        );
        expect(
            LPS_HEADER.replace("sizes: 3 2 2", "sizes: 3 -2 2"),
            "whole numbers",
        );
        expect(
            LPS_HEADER.replace("encoding: raw", "encoding: bzip2"),
            "bzip2",
        );
        expect(
            LPS_HEADER.replace("encoding: raw", "encoding: ascii"),
            "ascii",
        );
        expect(
            LPS_HEADER.replace("encoding: raw", "encoding: lzma"),
            "unknown encoding",
        );
        expect(
            LPS_HEADER.replace("endian: little", "endian: middle"),
            "endian",
        );
        expect(
            LPS_HEADER.replace("(0,0,2.5)", "(0,0.75,0)"),
            "space directions are singular",
        );
        expect(LPS_HEADER.replace("(0,0,2.5)", "(0,0,nan)"), "not finite");
        expect(LPS_HEADER.replace("(0,0,2.5)", "(0,2.5)"), "2 components");
        expect(LPS_HEADER.replace("(0,0,2.5)", "(0,0,2.5"), "closing");
        expect(
            LPS_HEADER.replace("kinds: domain domain domain", "kinds: domain"),
            "kinds lists 1",
        );
        expect(format!("{LPS_HEADER}type: float\n"), "appears twice");
        expect(
            format!("{LPS_HEADER}colour: blue\n"),
            "unknown field \"colour\"",
        );
        expect(format!("{LPS_HEADER}garbage\n"), "neither");
        expect(
            format!("{LPS_HEADER}space units: \"cm\" \"cm\" \"cm\"\n"),
            "millimetres",
        );
        expect(format!("{LPS_HEADER}data file: LIST\n"), "LIST");
        expect(
            format!("{LPS_HEADER}data file: s%03d.raw 1 10 1\n"),
            "numbered",
        );
        expect(format!("{LPS_HEADER}space dimension: 2\n"), "contradicts");
    }

    #[test]
    fn single_sample_non_spatial_axis_is_dropped() {
        let (data, want) = voxels_i16(12);
        let h = LPS_HEADER
            .replace("dimension: 3", "dimension: 4")
            .replace("sizes: 3 2 2", "sizes: 1 3 2 2")
            .replace("space directions: (", "space directions: none (")
            .replace("kinds: domain", "kinds: list domain");
        let l = load(&file(&h, &data)).unwrap();
        assert_eq!(l.info.shape, [3, 2, 2]);
        assert_eq!(l.volume.data(), &want[..]);
        assert_eq!(l.info.affine.0[0][0], -0.5);
        let h = h.replace("sizes: 1 3 2 2", "sizes: 2 3 2 2");
        let e = err(&file(&h, &[0; 48]));
        assert!(e.contains("axis 0 is not spatial and has 2 samples"), "{e}");
        let h = LPS_HEADER
            .replace("dimension: 3", "dimension: 2")
            .replace("sizes: 3 2 2", "sizes: 3 2");
        assert!(err(&file(&h, &data)).contains("2-dimensional"));
    }

    #[test]
    fn detached_headers_need_their_data_file() {
        let (data, want) = voxels_i16(12);
        let dir = tempfile::tempdir().unwrap();
        let header = format!("{LPS_HEADER}data file: vol.raw\n");
        std::fs::write(dir.path().join("vol.nhdr"), &header).unwrap();
        std::fs::write(dir.path().join("vol.raw"), &data).unwrap();
        let l = read_path(dir.path().join("vol.nhdr"), &LoadOptions::default()).unwrap();
        assert_eq!(l.volume.data(), &want[..]);
        // The header's bytes alone cannot reach the data file.
        let e = read_named(
            header.as_bytes(),
            "s3://b/vol.nhdr",
            &LoadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("s3://b/vol.nhdr") && e.contains("\"vol.raw\""),
            "{e}"
        );
        let d = read_detached(header.as_bytes(), &data[..], None, &LoadOptions::default()).unwrap();
        assert_eq!(d.volume, l.volume);
        assert_eq!(
            data_file_path(header.as_bytes(), &dir.path().join("vol.nhdr")).unwrap(),
            Some(dir.path().join("vol.raw"))
        );
        // Errors in the data file name the header and the data file.
        std::fs::write(dir.path().join("vol.raw"), &data[..10]).unwrap();
        let e = read_path(dir.path().join("vol.nhdr"), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vol.nhdr (data file") && e.contains("truncated"),
            "{e}"
        );
        std::fs::remove_file(dir.path().join("vol.raw")).unwrap();
        let e = read_path(dir.path().join("vol.nhdr"), &LoadOptions::default()).unwrap_err();
        assert!(e.is_io() && e.to_string().contains("vol.raw"), "{e}");
    }

    #[test]
    fn nan_voxels_are_replaced() {
        let vals = [
            1.0f32,
            f32::NAN,
            -5.0,
            2.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
        ];
        let le: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let h = LPS_HEADER.replace("type: short", "type: float");
        let l = load(&file(&h, &le)).unwrap();
        assert_eq!(l.info.nonfinite_replaced, 1);
        assert_eq!(l.volume.data()[1], -5.0);
    }

    #[test]
    fn a_binary_file_is_not_read_as_a_header() {
        let e = err(&[0x1f, 0x8b, 8, 0, 0, 0]);
        assert!(e.contains("not a NRRD file"), "{e}");
        assert!(err(b"").contains("empty"));
    }
}
