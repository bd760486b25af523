//! NIfTI-1 and NIfTI-2 (`.nii`, `.nii.gz`): read and write.
//!
//! Written here rather than taken from the `nifti` crate because that crate
//! reads NIfTI-1 only, allocates from the header before checking it, and
//! goes through ndarray; here the header is validated against a voxel limit
//! before anything is allocated, data streams straight into f32, and both
//! versions and byte orders are handled.
//!
//! Geometry follows nibabel exactly: the sform when `sform_code > 0`, else
//! the qform when `qform_code > 0`, else nibabel's fallback built from
//! `pixdim` (x flipped, origin at the volume centre). Intensities are scaled
//! by `scl_slope`/`scl_inter` when the slope is finite and non-zero.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use flate2::Compression;
use flate2::bufread::MultiGzDecoder;
use flate2::write::GzEncoder;

use super::{LoadOptions, Loaded, SourceInfo, replace_nonfinite};
use crate::error::{Context, Error, Result};
use crate::volume::{Affine, Volume};

/// NIfTI format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// 348-byte header, 16-bit dims.
    Nifti1,
    /// 540-byte header, 64-bit dims.
    Nifti2,
}

/// Stored voxel data types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// NIFTI_TYPE_UINT8 (2)
    U8,
    /// NIFTI_TYPE_INT8 (256)
    I8,
    /// NIFTI_TYPE_INT16 (4)
    I16,
    /// NIFTI_TYPE_UINT16 (512)
    U16,
    /// NIFTI_TYPE_INT32 (8)
    I32,
    /// NIFTI_TYPE_UINT32 (768)
    U32,
    /// NIFTI_TYPE_INT64 (1024)
    I64,
    /// NIFTI_TYPE_UINT64 (1280)
    U64,
    /// NIFTI_TYPE_FLOAT32 (16)
    F32,
    /// NIFTI_TYPE_FLOAT64 (64)
    F64,
}

impl Dtype {
    /// The NIfTI datatype code.
    pub fn code(self) -> i16 {
        match self {
            Dtype::U8 => 2,
            Dtype::I16 => 4,
            Dtype::I32 => 8,
            Dtype::F32 => 16,
            Dtype::F64 => 64,
            Dtype::I8 => 256,
            Dtype::U16 => 512,
            Dtype::U32 => 768,
            Dtype::I64 => 1024,
            Dtype::U64 => 1280,
        }
    }

    /// The data type for a NIfTI datatype code, if supported.
    pub fn from_code(code: i16) -> Option<Dtype> {
        Some(match code {
            2 => Dtype::U8,
            4 => Dtype::I16,
            8 => Dtype::I32,
            16 => Dtype::F32,
            64 => Dtype::F64,
            256 => Dtype::I8,
            512 => Dtype::U16,
            768 => Dtype::U32,
            1024 => Dtype::I64,
            1280 => Dtype::U64,
            _ => return None,
        })
    }

    /// Bytes per voxel.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 | Dtype::I8 => 1,
            Dtype::I16 | Dtype::U16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::U64 | Dtype::F64 => 8,
        }
    }

    /// numpy's name for the type.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::U8 => "uint8",
            Dtype::I8 => "int8",
            Dtype::I16 => "int16",
            Dtype::U16 => "uint16",
            Dtype::I32 => "int32",
            Dtype::U32 => "uint32",
            Dtype::I64 => "int64",
            Dtype::U64 => "uint64",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F64)
    }

    /// Representable range, for clamping when writing integers.
    fn range(self) -> (f64, f64) {
        match self {
            Dtype::U8 => (0.0, u8::MAX as f64),
            Dtype::I8 => (i8::MIN as f64, i8::MAX as f64),
            Dtype::I16 => (i16::MIN as f64, i16::MAX as f64),
            Dtype::U16 => (0.0, u16::MAX as f64),
            Dtype::I32 => (i32::MIN as f64, i32::MAX as f64),
            Dtype::U32 => (0.0, u32::MAX as f64),
            Dtype::I64 => (i64::MIN as f64, i64::MAX as f64),
            Dtype::U64 => (0.0, u64::MAX as f64),
            Dtype::F32 => (f32::MIN as f64, f32::MAX as f64),
            Dtype::F64 => (f64::MIN, f64::MAX),
        }
    }
}

/// How to write a volume.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteOptions {
    /// Stored type; integer types round to nearest and clamp.
    pub dtype: Dtype,
    /// Header version.
    pub version: Version,
    /// Stored value = (value - inter) / slope; readers apply
    /// `stored * slope + inter`. Use 1 and 0 for no scaling.
    pub scl_slope: f32,
    /// See `scl_slope`.
    pub scl_inter: f32,
}

impl WriteOptions {
    /// Float32, NIfTI-1, no scaling: lossless for any volume.
    pub fn float32() -> Self {
        WriteOptions {
            dtype: Dtype::F32,
            version: Version::Nifti1,
            scl_slope: 1.0,
            scl_inter: 0.0,
        }
    }

    /// uint8, for label masks.
    pub fn mask() -> Self {
        WriteOptions {
            dtype: Dtype::U8,
            ..Self::float32()
        }
    }

    /// int16 HU, as scanners store CT.
    pub fn ct_int16() -> Self {
        WriteOptions {
            dtype: Dtype::I16,
            ..Self::float32()
        }
    }
}

/// The header fields that matter to us, version independent.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// Version the header was stored as.
    pub version: Version,
    /// True when the file is big-endian.
    pub big_endian: bool,
    /// `dim[0..8]`.
    pub dim: [i64; 8],
    /// `pixdim[0..8]`.
    pub pixdim: [f64; 8],
    /// Raw datatype code.
    pub datatype: i16,
    /// Offset of the voxel data in the (uncompressed) file.
    pub vox_offset: u64,
    /// Intensity scaling.
    pub scl_slope: f64,
    /// Intensity scaling.
    pub scl_inter: f64,
    /// qform code (0 = unset).
    pub qform_code: i32,
    /// sform code (0 = unset).
    pub sform_code: i32,
    /// Quaternion b, c, d and offsets x, y, z.
    pub quatern: [f64; 6],
    /// sform rows x, y, z.
    pub srow: [[f64; 4]; 3],
}

const N1_SIZE: usize = 348;
const N2_SIZE: usize = 540;

impl Header {
    /// Parses and validates a header from its first bytes (at least 540
    /// for NIfTI-2, 348 for NIfTI-1).
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        if bytes.len() < 4 {
            return Err(wrong(format!("file is only {} bytes long", bytes.len())));
        }
        let le = i32::from_le_bytes(bytes[0..4].try_into().unwrap());
        let be = i32::from_be_bytes(bytes[0..4].try_into().unwrap());
        let (version, big_endian) = match (le, be) {
            (348, _) => (Version::Nifti1, false),
            (_, 348) => (Version::Nifti1, true),
            (540, _) => (Version::Nifti2, false),
            (_, 540) => (Version::Nifti2, true),
            _ => return Err(wrong(format!("sizeof_hdr is {le}, not 348 or 540"))),
        };
        let need = if version == Version::Nifti1 {
            N1_SIZE
        } else {
            N2_SIZE
        };
        if bytes.len() < need {
            return Err(Error::Truncated(format!(
                "header needs {need} bytes, file has {}",
                bytes.len()
            )));
        }
        let r = Fields {
            b: bytes,
            big: big_endian,
        };
        let h = match version {
            Version::Nifti1 => {
                let magic = &bytes[344..348];
                if magic == [0; 4] {
                    // A 348-byte header without NIfTI's magic is the format
                    // NIfTI-1 extended.
                    return Err(wrong(
                        "this is an Analyze 7.5 header (348 bytes, no NIfTI magic): \
                         convert it to NIfTI (.nii)"
                            .into(),
                    ));
                }
                if magic != b"n+1\0" && magic != b"ni1\0" {
                    return Err(wrong(format!("magic is {:?}, not \"n+1\"", escape(magic))));
                }
                if magic == b"ni1\0" {
                    return Err(Error::Unsupported(
                        "two-file NIfTI (.hdr/.img) pairs; convert to a single .nii".into(),
                    ));
                }
                let mut dim = [0i64; 8];
                let mut pixdim = [0f64; 8];
                for d in 0..8 {
                    dim[d] = r.i16(40 + 2 * d) as i64;
                    pixdim[d] = r.f32(76 + 4 * d) as f64;
                }
                let mut srow = [[0.0; 4]; 3];
                for (row, s) in srow.iter_mut().enumerate() {
                    for (c, v) in s.iter_mut().enumerate() {
                        *v = r.f32(280 + 16 * row + 4 * c) as f64;
                    }
                }
                let mut quatern = [0.0; 6];
                for (q, v) in quatern.iter_mut().enumerate() {
                    *v = r.f32(256 + 4 * q) as f64;
                }
                Header {
                    version,
                    big_endian,
                    dim,
                    pixdim,
                    datatype: r.i16(70),
                    vox_offset: finite_offset(r.f32(108) as f64)?,
                    scl_slope: r.f32(112) as f64,
                    scl_inter: r.f32(116) as f64,
                    qform_code: r.i16(252) as i32,
                    sform_code: r.i16(254) as i32,
                    quatern,
                    srow,
                }
            }
            Version::Nifti2 => {
                let magic = &bytes[4..12];
                if &magic[..4] != b"n+2\0" {
                    if &magic[..4] == b"ni2\0" {
                        return Err(Error::Unsupported(
                            "two-file NIfTI-2 (.hdr/.img) pairs; convert to a single .nii".into(),
                        ));
                    }
                    return Err(wrong(format!(
                        "magic is {:?}, not \"n+2\"",
                        escape(&magic[..4])
                    )));
                }
                let mut dim = [0i64; 8];
                let mut pixdim = [0f64; 8];
                for d in 0..8 {
                    dim[d] = r.i64(16 + 8 * d);
                    pixdim[d] = r.f64(104 + 8 * d);
                }
                let mut srow = [[0.0; 4]; 3];
                for (row, s) in srow.iter_mut().enumerate() {
                    for (c, v) in s.iter_mut().enumerate() {
                        *v = r.f64(400 + 32 * row + 8 * c);
                    }
                }
                let mut quatern = [0.0; 6];
                for (q, v) in quatern.iter_mut().enumerate() {
                    *v = r.f64(352 + 8 * q);
                }
                let off = r.i64(168);
                if off < 0 {
                    return Err(Error::InvalidHeader(format!("negative vox_offset {off}")));
                }
                Header {
                    version,
                    big_endian,
                    dim,
                    pixdim,
                    datatype: r.i16(12),
                    vox_offset: off as u64,
                    scl_slope: r.f64(176),
                    scl_inter: r.f64(184),
                    qform_code: r.i32(344),
                    sform_code: r.i32(348),
                    quatern,
                    srow,
                }
            }
        };
        h.validate()?;
        Ok(h)
    }

    fn validate(&self) -> Result<()> {
        let ndim = self.dim[0];
        if !(1..=7).contains(&ndim) {
            return Err(Error::InvalidHeader(format!(
                "dim[0] = {ndim}, must be 1 to 7"
            )));
        }
        for d in 1..=ndim as usize {
            if self.dim[d] <= 0 {
                return Err(Error::InvalidHeader(format!(
                    "dim[{d}] = {}, dimensions must be positive",
                    self.dim[d]
                )));
            }
        }
        if Dtype::from_code(self.datatype).is_none() {
            return Err(Error::Unsupported(format!(
                "NIfTI datatype code {} (supported: uint8, int8, int16, uint16, int32, \
                 uint32, int64, uint64, float32, float64)",
                self.datatype
            )));
        }
        Ok(())
    }

    /// Voxel counts along i, j, k (1 for missing axes).
    pub fn dims3(&self) -> [u64; 3] {
        let n = self.dim[0] as usize;
        std::array::from_fn(|a| if a < n { self.dim[a + 1] as u64 } else { 1 })
    }

    /// The stored data type.
    pub fn dtype(&self) -> Dtype {
        Dtype::from_code(self.datatype).expect("validated at parse time")
    }

    /// Refuses 4D+ data with more than one volume.
    fn check_3d(&self) -> Result<()> {
        let n = self.dim[0] as usize;
        for d in 4..=n {
            if self.dim[d] > 1 {
                return Err(Error::Unsupported(format!(
                    "{n}D data (dim[{d}] = {}); a single 3D volume is needed",
                    self.dim[d]
                )));
            }
        }
        Ok(())
    }

    /// Voxel sizes along i, j, k as stored in `pixdim`.
    pub fn zooms(&self) -> [f64; 3] {
        [self.pixdim[1], self.pixdim[2], self.pixdim[3]]
    }

    /// The qform affine (quaternion, qfac, pixdim, offsets).
    pub fn qform_affine(&self) -> Affine {
        let [b, c, d, qx, qy, qz] = self.quatern;
        let a2 = 1.0 - (b * b + c * c + d * d);
        // nibabel treats tiny negative a^2 from rounding as zero.
        let a = if a2 < 0.0 { 0.0 } else { a2.sqrt() };
        let rot = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let qfac = if self.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let z = [self.pixdim[1], self.pixdim[2], self.pixdim[3] * qfac];
        let mut m = Affine::identity();
        for r in 0..3 {
            for col in 0..3 {
                m.0[r][col] = rot[r][col] * z[col];
            }
        }
        m.0[0][3] = qx;
        m.0[1][3] = qy;
        m.0[2][3] = qz;
        m
    }

    /// nibabel's fallback affine when neither form is set.
    pub fn base_affine(&self) -> Affine {
        let dims = self.dims3();
        let z = self.zooms();
        let zs = [-z[0], z[1], z[2]];
        let mut m = Affine::identity();
        for a in 0..3 {
            m.0[a][a] = zs[a];
            m.0[a][3] = -((dims[a] as f64 - 1.0) / 2.0) * zs[a];
        }
        m
    }

    /// The affine nibabel's `get_best_affine` returns.
    pub fn best_affine(&self) -> Affine {
        if self.sform_code > 0 {
            let mut m = Affine::identity();
            for r in 0..3 {
                m.0[r] = self.srow[r];
            }
            m
        } else if self.qform_code > 0 {
            self.qform_affine()
        } else {
            self.base_affine()
        }
    }

    /// Scaling to apply, or None when the slope says "no scaling".
    pub fn scaling(&self) -> Option<(f64, f64)> {
        if self.scl_slope.is_finite() && self.scl_slope != 0.0 {
            let inter = if self.scl_inter.is_finite() {
                self.scl_inter
            } else {
                0.0
            };
            if self.scl_slope == 1.0 && inter == 0.0 {
                None
            } else {
                Some((self.scl_slope, inter))
            }
        } else {
            None
        }
    }
}

fn finite_offset(v: f64) -> Result<u64> {
    if !v.is_finite() || v < 0.0 {
        return Err(Error::InvalidHeader(format!(
            "vox_offset {v} is not a valid offset"
        )));
    }
    Ok(v as u64)
}

fn wrong(reason: String) -> Error {
    Error::WrongFormat {
        format: "NIfTI",
        reason,
    }
}

fn escape(b: &[u8]) -> String {
    b.iter()
        .flat_map(|&c| std::ascii::escape_default(c))
        .map(char::from)
        .collect()
}

/// Endian-aware field access into a header buffer.
struct Fields<'a> {
    b: &'a [u8],
    big: bool,
}

macro_rules! field {
    ($name:ident, $t:ty, $n:expr) => {
        fn $name(&self, off: usize) -> $t {
            let a: [u8; $n] = self.b[off..off + $n].try_into().unwrap();
            if self.big {
                <$t>::from_be_bytes(a)
            } else {
                <$t>::from_le_bytes(a)
            }
        }
    };
}

impl Fields<'_> {
    field!(i16, i16, 2);
    field!(i32, i32, 4);
    field!(i64, i64, 8);
    field!(f32, f32, 4);
    field!(f64, f64, 8);
}

/// Reads a whole NIfTI image from a reader; gzip is detected from the
/// first bytes, so `.nii` and `.nii.gz` content are both accepted.
pub fn read<R: Read>(reader: R, opts: &LoadOptions) -> Result<Loaded> {
    read_inner(BufReader::with_capacity(1 << 20, reader), opts, None)
}

/// Reads a NIfTI file; every error names the file.
pub fn read_path(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Loaded> {
    let path = path.as_ref();
    let file = File::open(path).in_file(path)?;
    let len = file.metadata().in_file(path)?.len();
    read_inner(BufReader::with_capacity(1 << 20, file), opts, Some(len))
        .map_err(|e| analyze_hint(e, path))
        .in_file(path)
}

/// Reads a NIfTI file already in memory (fetched from an object store, or
/// read once to be checksummed); `name` is the file or object it came from,
/// which every error names and which, as for [`read_path`], tells an
/// Analyze `.img` apart.
pub fn read_named(bytes: &[u8], name: &str, opts: &LoadOptions) -> Result<Loaded> {
    read_inner(
        BufReader::with_capacity(1 << 20, bytes),
        opts,
        Some(bytes.len() as u64),
    )
    .map_err(|e| analyze_hint(e, Path::new(name)))
    .in_file(name)
}

/// An Analyze 7.5 (or two-file NIfTI) `.img` holds only voxels; its header
/// is the `.hdr` beside it. Said in those words rather than as the bad
/// "sizeof_hdr" its first voxels make.
fn analyze_hint(e: Error, path: &Path) -> Error {
    let name = path.to_string_lossy().to_ascii_lowercase();
    if matches!(e, Error::WrongFormat { .. })
        && (name.ends_with(".img") || name.ends_with(".img.gz"))
    {
        return wrong(
            "this is an Analyze 7.5 image (.img: voxels only, the header is the .hdr beside \
             it): convert it to NIfTI (.nii)"
                .into(),
        );
    }
    e
}

/// Reads just the header (cheap: decompresses at most the first block).
pub fn read_header<R: Read>(reader: R) -> Result<Header> {
    let mut src = BufReader::new(reader);
    let gz = is_gzip(&mut src)?;
    let mut buf = Vec::with_capacity(N2_SIZE);
    if gz {
        MultiGzDecoder::new(src)
            .take(N2_SIZE as u64)
            .read_to_end(&mut buf)?;
    } else {
        src.take(N2_SIZE as u64).read_to_end(&mut buf)?;
    }
    Header::parse(&buf)
}

fn is_gzip<R: BufRead>(r: &mut R) -> Result<bool> {
    let head = r.fill_buf()?;
    if head.is_empty() {
        return Err(wrong("file is empty".into()));
    }
    Ok(head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b)
}

fn read_inner<R: BufRead>(mut src: R, opts: &LoadOptions, file_len: Option<u64>) -> Result<Loaded> {
    if is_gzip(&mut src)? {
        let mut dec = BufReader::with_capacity(1 << 20, MultiGzDecoder::new(src));
        let loaded = read_stream(&mut dec, opts, None).map_err(super::gzip_context)?;
        // The decoder checks each member's CRC-32 and length (its 8-byte
        // trailer) only when it reaches the member's end, and reading stops
        // after the header's promised voxel bytes, just before it: without
        // this drain a bit flipped inside the compressed voxels would go
        // unnoticed. Reading on to the end checks every member's trailer
        // (multi-member files are legal gzip).
        std::io::copy(&mut dec, &mut std::io::sink()).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                Error::Truncated(format!(
                    "corrupt gzip data: the CRC-32 or length in the gzip trailer does not \
                     match the decompressed bytes ({e})"
                ))
            }
            _ => super::gzip_context(e.into()),
        })?;
        Ok(loaded)
    } else {
        if looks_like_dicom(src.fill_buf()?) {
            return Err(wrong(
                "this is a single DICOM file: pass the folder that holds the series".into(),
            ));
        }
        read_stream(&mut src, opts, file_len)
    }
}

/// A DICOM Part 10 file: a 128-byte preamble, then "DICM".
fn looks_like_dicom(head: &[u8]) -> bool {
    head.len() >= 132 && &head[128..132] == b"DICM"
}

fn read_stream<R: Read>(src: &mut R, opts: &LoadOptions, file_len: Option<u64>) -> Result<Loaded> {
    // Header: 348 bytes for NIfTI-1, 540 for NIfTI-2; read what the first
    // four bytes announce.
    let mut hbuf = vec![0u8; 4];
    read_exact_or(src, &mut hbuf, "the header")?;
    let le = u32::from_le_bytes(hbuf[..4].try_into().unwrap());
    let be = u32::from_be_bytes(hbuf[..4].try_into().unwrap());
    let size = if le == 540 || be == 540 {
        N2_SIZE
    } else {
        N1_SIZE
    };
    if ![348, 540].contains(&le) && ![348, 540].contains(&be) {
        return Err(wrong(format!("sizeof_hdr is {le}, not 348 or 540")));
    }
    hbuf.resize(size, 0);
    read_exact_or(src, &mut hbuf[4..], "the header")?;
    let h = Header::parse(&hbuf)?;
    h.check_3d()?;
    let dims = h.dims3();
    opts.check_voxels(&dims)?;
    let zooms = h.zooms();
    for (a, z) in zooms.iter().enumerate() {
        if !z.is_finite() || *z <= 0.0 {
            return Err(Error::InvalidHeader(format!(
                "pixdim[{}] = {z}: voxel spacing must be positive",
                a + 1
            )));
        }
    }
    let affine = h.best_affine();
    if !affine.is_finite() || affine.inverse().is_err() {
        return Err(Error::InvalidHeader(
            "the header's affine is singular or not finite".into(),
        ));
    }
    let dtype = h.dtype();
    let n = (dims[0] * dims[1] * dims[2]) as usize;
    let nbytes = n as u64 * dtype.size() as u64;
    if h.vox_offset < size as u64 {
        return Err(Error::InvalidHeader(format!(
            "vox_offset {} lies inside the {size}-byte header",
            h.vox_offset
        )));
    }
    if let Some(len) = file_len
        && len < h.vox_offset + nbytes
    {
        return Err(Error::Truncated(format!(
            "header promises {nbytes} bytes of voxels at offset {}, file has {len} bytes",
            h.vox_offset
        )));
    }
    // Skip extensions up to the data.
    let skip = h.vox_offset - size as u64;
    let skipped = std::io::copy(&mut src.by_ref().take(skip), &mut std::io::sink())?;
    if skipped < skip {
        return Err(Error::Truncated("file ends before vox_offset".into()));
    }
    let mut data = read_voxels(src, dtype, h.big_endian, n)?;
    if let Some((slope, inter)) = h.scaling() {
        let (s, i) = (slope as f32, inter as f32);
        data.iter_mut().for_each(|v| *v = *v * s + i);
    }
    let nonfinite = replace_nonfinite(&mut data)?;
    if nonfinite > 0 {
        tracing::warn!(
            count = nonfinite,
            "replaced non-finite voxels by the volume minimum"
        );
    }
    let shape = dims.map(|d| d as usize);
    let volume = Volume::new(data, shape, affine)?;
    let info = SourceInfo {
        format: match h.version {
            Version::Nifti1 => "NIfTI-1",
            Version::Nifti2 => "NIfTI-2",
        }
        .into(),
        dtype: dtype.name().into(),
        shape,
        spacing_mm: zooms,
        affine,
        nonfinite_replaced: nonfinite,
    };
    Ok(Loaded { volume, info })
}

fn read_exact_or<R: Read>(src: &mut R, buf: &mut [u8], what: &str) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) if what == "the header" && buf.len() == 4 => {
                return Err(wrong(format!("file is only {got} bytes long")));
            }
            Ok(0) => return Err(Error::Truncated(format!("file ends inside {what}"))),
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Streams `n` voxels into f32, growing the buffer as data arrives so that
/// a lying header over a short stream costs nothing. Shared with the NRRD
/// reader, whose element types are the same.
pub(super) fn read_voxels<R: Read>(
    src: &mut R,
    dtype: Dtype,
    big: bool,
    n: usize,
) -> Result<Vec<f32>> {
    const CHUNK_VOXELS: usize = 1 << 18;
    let sz = dtype.size();
    let mut out: Vec<f32> = Vec::with_capacity(n.min(1 << 24));
    let mut buf = vec![0u8; CHUNK_VOXELS * sz];
    while out.len() < n {
        let want = (n - out.len()).min(CHUNK_VOXELS) * sz;
        let chunk = &mut buf[..want];
        let mut got = 0;
        while got < want {
            match src.read(&mut chunk[got..]) {
                Ok(0) => {
                    let have = out.len() as u64 * sz as u64 + got as u64;
                    return Err(Error::Truncated(format!(
                        "expected {} bytes of voxel data, found {have}",
                        n as u64 * sz as u64
                    )));
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        convert(chunk, dtype, big, &mut out);
    }
    Ok(out)
}

fn convert(bytes: &[u8], dtype: Dtype, big: bool, out: &mut Vec<f32>) {
    macro_rules! conv {
        ($t:ty, $n:expr) => {
            out.extend(bytes.chunks_exact($n).map(|c| {
                let a: [u8; $n] = c.try_into().unwrap();
                (if big {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                }) as f32
            }))
        };
    }
    match dtype {
        Dtype::U8 => out.extend(bytes.iter().map(|&b| b as f32)),
        Dtype::I8 => out.extend(bytes.iter().map(|&b| b as i8 as f32)),
        Dtype::I16 => conv!(i16, 2),
        Dtype::U16 => conv!(u16, 2),
        Dtype::I32 => conv!(i32, 4),
        Dtype::U32 => conv!(u32, 4),
        Dtype::I64 => conv!(i64, 8),
        Dtype::U64 => conv!(u64, 8),
        Dtype::F32 => conv!(f32, 4),
        Dtype::F64 => conv!(f64, 8),
    }
}

/// Writes an uncompressed `.nii` image (header, empty extension flag, data).
/// Both the sform (exact affine) and the qform (its closest rigid part) are
/// set with code 1 (scanner anatomical), as nibabel does on save.
pub fn write<W: Write>(mut w: W, vol: &Volume, opts: &WriteOptions) -> Result<()> {
    if !(opts.scl_slope.is_finite() && opts.scl_slope != 0.0 && opts.scl_inter.is_finite()) {
        return Err(Error::InvalidArgument(format!(
            "scl_slope {} / scl_inter {} cannot be written",
            opts.scl_slope, opts.scl_inter
        )));
    }
    let header = encode_header(vol, opts)?;
    w.write_all(&header)?;
    w.write_all(&[0u8; 4])?; // no extensions
    let (lo, hi) = opts.dtype.range();
    let (slope, inter) = (opts.scl_slope as f64, opts.scl_inter as f64);
    let mut buf = Vec::with_capacity((1 << 16) * opts.dtype.size());
    for chunk in vol.data().chunks(1 << 16) {
        buf.clear();
        for &v in chunk {
            let s = (v as f64 - inter) / slope;
            let s = if opts.dtype.is_float() {
                s
            } else {
                s.round().clamp(lo, hi)
            };
            match opts.dtype {
                Dtype::U8 => buf.push(s as u8),
                Dtype::I8 => buf.push(s as i8 as u8),
                Dtype::I16 => buf.extend_from_slice(&(s as i16).to_le_bytes()),
                Dtype::U16 => buf.extend_from_slice(&(s as u16).to_le_bytes()),
                Dtype::I32 => buf.extend_from_slice(&(s as i32).to_le_bytes()),
                Dtype::U32 => buf.extend_from_slice(&(s as u32).to_le_bytes()),
                Dtype::I64 => buf.extend_from_slice(&(s as i64).to_le_bytes()),
                Dtype::U64 => buf.extend_from_slice(&(s as u64).to_le_bytes()),
                Dtype::F32 => buf.extend_from_slice(&(s as f32).to_le_bytes()),
                Dtype::F64 => buf.extend_from_slice(&s.to_le_bytes()),
            }
        }
        w.write_all(&buf)?;
    }
    w.flush()?;
    Ok(())
}

/// A gzip-compressed NIfTI image in memory (a `.nii.gz` file's bytes), for
/// drivers that store results elsewhere than on a local disk.
pub fn to_gz_bytes(vol: &Volume, opts: &WriteOptions) -> Result<Vec<u8>> {
    // Level 1, as write_path: masks compress well at any level.
    let mut gz = GzEncoder::new(Vec::new(), Compression::new(1));
    write(&mut gz, vol, opts)?;
    Ok(gz.finish()?)
}

/// Writes a NIfTI file, gzip-compressed when the name ends in `.gz`. The
/// file is written under a temporary name and renamed, so a crash never
/// leaves a half-written image behind.
pub fn write_path(path: impl AsRef<Path>, vol: &Volume, opts: &WriteOptions) -> Result<()> {
    let path = path.as_ref();
    let gzip = path.extension().is_some_and(|e| e == "gz");
    super::write_atomic(path, |file| {
        if gzip {
            // Level 1: CT compresses little better at higher levels and
            // writing a cohort should not be gzip-bound.
            let mut gz = GzEncoder::new(file, Compression::new(1));
            write(&mut gz, vol, opts)?;
            gz.finish()?;
        } else {
            write(file, vol, opts)?;
        }
        Ok(())
    })
}

fn encode_header(vol: &Volume, opts: &WriteOptions) -> Result<Vec<u8>> {
    let dims = vol.dims();
    let aff = vol.affine();
    let zooms = aff.spacing();
    let (quat, qfac) = affine_to_quaternion(aff);
    let mut dim = [1i64; 8];
    dim[0] = 3;
    for a in 0..3 {
        dim[a + 1] = dims[a] as i64;
    }
    let mut pixdim = [0f64; 8];
    pixdim[0] = qfac;
    pixdim[1..4].copy_from_slice(&zooms);
    let origin = aff.origin();
    let mut h = match opts.version {
        Version::Nifti1 => {
            if dims.iter().any(|&d| d > i16::MAX as usize) {
                return Err(Error::InvalidArgument(format!(
                    "dims {dims:?} exceed NIfTI-1's 32767 per axis; write NIfTI-2"
                )));
            }
            let mut b = vec![0u8; N1_SIZE];
            put(&mut b, 0, &348i32.to_le_bytes());
            for (d, v) in dim.iter().enumerate() {
                put(&mut b, 40 + 2 * d, &(*v as i16).to_le_bytes());
            }
            put(&mut b, 70, &opts.dtype.code().to_le_bytes());
            put(&mut b, 72, &((opts.dtype.size() * 8) as i16).to_le_bytes());
            for (d, v) in pixdim.iter().enumerate() {
                put(&mut b, 76 + 4 * d, &(*v as f32).to_le_bytes());
            }
            put(&mut b, 108, &352f32.to_le_bytes());
            put(&mut b, 112, &opts.scl_slope.to_le_bytes());
            put(&mut b, 116, &opts.scl_inter.to_le_bytes());
            b[123] = 10 | 8; // xyzt_units: mm, s
            put(&mut b, 252, &1i16.to_le_bytes());
            put(&mut b, 254, &1i16.to_le_bytes());
            let q = [quat[0], quat[1], quat[2], origin[0], origin[1], origin[2]];
            for (i, v) in q.iter().enumerate() {
                put(&mut b, 256 + 4 * i, &(*v as f32).to_le_bytes());
            }
            for r in 0..3 {
                for c in 0..4 {
                    put(
                        &mut b,
                        280 + 16 * r + 4 * c,
                        &(aff.0[r][c] as f32).to_le_bytes(),
                    );
                }
            }
            put(&mut b, 344, b"n+1\0");
            b
        }
        Version::Nifti2 => {
            let mut b = vec![0u8; N2_SIZE];
            put(&mut b, 0, &540i32.to_le_bytes());
            put(&mut b, 4, b"n+2\0\r\n\x1a\n");
            put(&mut b, 12, &opts.dtype.code().to_le_bytes());
            put(&mut b, 14, &((opts.dtype.size() * 8) as i16).to_le_bytes());
            for (d, v) in dim.iter().enumerate() {
                put(&mut b, 16 + 8 * d, &v.to_le_bytes());
            }
            for (d, v) in pixdim.iter().enumerate() {
                put(&mut b, 104 + 8 * d, &v.to_le_bytes());
            }
            put(&mut b, 168, &544i64.to_le_bytes());
            put(&mut b, 176, &(opts.scl_slope as f64).to_le_bytes());
            put(&mut b, 184, &(opts.scl_inter as f64).to_le_bytes());
            put(&mut b, 344, &1i32.to_le_bytes());
            put(&mut b, 348, &1i32.to_le_bytes());
            let q = [quat[0], quat[1], quat[2], origin[0], origin[1], origin[2]];
            for (i, v) in q.iter().enumerate() {
                put(&mut b, 352 + 8 * i, &v.to_le_bytes());
            }
            for r in 0..3 {
                for c in 0..4 {
                    put(&mut b, 400 + 32 * r + 8 * c, &aff.0[r][c].to_le_bytes());
                }
            }
            put(&mut b, 500, &(10i32 | 8).to_le_bytes());
            b
        }
    };
    h.shrink_to_fit();
    Ok(h)
}

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// The quaternion (b, c, d) and qfac of the rotation closest to the
/// affine's linear part, as NIfTI's `mat44_to_quatern` (via a polar
/// decomposition, so oblique but orthogonal frames are exact).
fn affine_to_quaternion(aff: &Affine) -> ([f64; 3], f64) {
    let sp = aff.spacing();
    let mut r = [[0.0f64; 3]; 3];
    for row in 0..3 {
        for c in 0..3 {
            r[row][c] = aff.0[row][c] / sp[c];
        }
    }
    let r = orthogonalize(r);
    let mut r = r;
    let det = det3(&r);
    let qfac = if det < 0.0 {
        for row in r.iter_mut() {
            row[2] = -row[2];
        }
        -1.0
    } else {
        1.0
    };
    // Shepperd's method, as nifti_mat44_to_quatern.
    let (xx, yy, zz) = (r[0][0], r[1][1], r[2][2]);
    let trace = 1.0 + xx + yy + zz;
    let (a, mut b, mut c, mut d): (f64, f64, f64, f64);
    if trace > 0.5 {
        a = 0.5 * trace.sqrt();
        b = 0.25 * (r[2][1] - r[1][2]) / a;
        c = 0.25 * (r[0][2] - r[2][0]) / a;
        d = 0.25 * (r[1][0] - r[0][1]) / a;
    } else {
        let xd = 1.0 + xx - (yy + zz);
        let yd = 1.0 + yy - (xx + zz);
        let zd = 1.0 + zz - (xx + yy);
        if xd > 1.0 {
            b = 0.5 * xd.sqrt();
            c = 0.25 * (r[0][1] + r[1][0]) / b;
            d = 0.25 * (r[0][2] + r[2][0]) / b;
            a = 0.25 * (r[2][1] - r[1][2]) / b;
        } else if yd > 1.0 {
            c = 0.5 * yd.sqrt();
            b = 0.25 * (r[0][1] + r[1][0]) / c;
            d = 0.25 * (r[1][2] + r[2][1]) / c;
            a = 0.25 * (r[0][2] - r[2][0]) / c;
        } else {
            d = 0.5 * zd.sqrt();
            b = 0.25 * (r[0][2] + r[2][0]) / d;
            c = 0.25 * (r[1][2] + r[2][1]) / d;
            a = 0.25 * (r[1][0] - r[0][1]) / d;
        }
        if a < 0.0 {
            b = -b;
            c = -c;
            d = -d;
        }
    }
    ([b, c, d], qfac)
}

fn det3(m: &[[f64; 3]; 3]) -> f64 {
    m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
}

/// The orthogonal matrix closest to `m` (polar decomposition by Newton
/// iteration: X <- (X + X^-T) / 2), for qforms of slightly sheared sforms.
fn orthogonalize(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let mut x = m;
    for _ in 0..50 {
        let d = det3(&x);
        if d.abs() < 1e-12 {
            break;
        }
        // inverse transpose = cofactor matrix / det
        let mut next = [[0.0; 3]; 3];
        let mut change = 0.0f64;
        for r in 0..3 {
            for c in 0..3 {
                let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
                let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
                let cof = x[r1][c1] * x[r2][c2] - x[r1][c2] * x[r2][c1];
                next[r][c] = 0.5 * (x[r][c] + cof / d);
                change = change.max((next[r][c] - x[r][c]).abs());
            }
        }
        x = next;
        if change < 1e-15 {
            break;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oblique_affine() -> Affine {
        // 10 degrees about z, spacing 0.7 x 0.8 x 2.5, LPS-like flips.
        let (s, c) = 10f64.to_radians().sin_cos();
        Affine([
            [-0.7 * c, 0.8 * s, 0.0, 120.0],
            [-0.7 * s, -0.8 * c, 0.0, 90.5],
            [0.0, 0.0, 2.5, -200.25],
            [0.0, 0.0, 0.0, 1.0],
        ])
    }

    fn ramp(dims: [usize; 3], aff: Affine) -> Volume {
        let n = dims.iter().product();
        Volume::new(
            (0..n).map(|v| (v as f32) * 3.0 - 1000.0).collect(),
            dims,
            aff,
        )
        .unwrap()
    }

    fn roundtrip(vol: &Volume, opts: &WriteOptions) -> Loaded {
        let mut bytes = Vec::new();
        write(&mut bytes, vol, opts).unwrap();
        read(&bytes[..], &LoadOptions::default()).unwrap()
    }

    #[test]
    fn both_versions_round_trip_data_and_affine() {
        let vol = ramp([5, 4, 3], oblique_affine());
        for version in [Version::Nifti1, Version::Nifti2] {
            let back = roundtrip(
                &vol,
                &WriteOptions {
                    version,
                    ..WriteOptions::float32()
                },
            );
            assert_eq!(back.volume.data(), vol.data());
            for r in 0..4 {
                for c in 0..4 {
                    let (a, b) = (back.volume.affine().0[r][c], vol.affine().0[r][c]);
                    assert!(
                        (a - b).abs() < 1e-4,
                        "{version:?} affine[{r}][{c}] {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn qform_matches_sform_for_rigid_affines() {
        let vol = ramp([2, 2, 2], oblique_affine());
        let mut bytes = Vec::new();
        write(&mut bytes, &vol, &WriteOptions::float32()).unwrap();
        let h = Header::parse(&bytes).unwrap();
        let q = h.qform_affine();
        for r in 0..3 {
            for c in 0..4 {
                assert!(
                    (q.0[r][c] - vol.affine().0[r][c]).abs() < 1e-4,
                    "qform[{r}][{c}]"
                );
            }
        }
    }

    #[test]
    fn every_dtype_round_trips_with_scaling() {
        let vol = Volume::new(
            vec![0.0, 1.0, 2.0, 50.0, 7.0, 3.0, 4.0, 5.5],
            [2, 2, 2],
            Affine::identity(),
        )
        .unwrap();
        for dt in [
            Dtype::U8,
            Dtype::I8,
            Dtype::I16,
            Dtype::U16,
            Dtype::I32,
            Dtype::U32,
            Dtype::I64,
            Dtype::U64,
            Dtype::F32,
            Dtype::F64,
        ] {
            let back = roundtrip(
                &vol,
                &WriteOptions {
                    dtype: dt,
                    scl_slope: 0.5,
                    scl_inter: -4.0,
                    ..WriteOptions::float32()
                },
            );
            assert_eq!(back.info.dtype, dt.name());
            assert_eq!(back.volume.data(), vol.data(), "{dt:?}");
        }
    }

    #[test]
    fn gzip_streams_are_detected() {
        let vol = ramp([3, 3, 3], Affine::identity());
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        write(&mut gz, &vol, &WriteOptions::ct_int16()).unwrap();
        let bytes = gz.finish().unwrap();
        let back = read(&bytes[..], &LoadOptions::default()).unwrap();
        assert_eq!(back.volume.data(), vol.data());
        // Cut the stream in the middle of the voxels.
        let err = read(&bytes[..bytes.len() / 2], &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Truncated(_)), "{err}");
    }

    #[test]
    fn big_endian_headers_and_data_are_read() {
        let vol = ramp([2, 3, 2], Affine::identity());
        let mut le = Vec::new();
        write(&mut le, &vol, &WriteOptions::ct_int16()).unwrap();
        // Byte-swap every header field we read and every voxel.
        let mut be = le.clone();
        let swap = |b: &mut [u8], off: usize, n: usize| b[off..off + n].reverse();
        swap(&mut be, 0, 4);
        for d in 0..8 {
            swap(&mut be, 40 + 2 * d, 2);
            swap(&mut be, 76 + 4 * d, 4);
        }
        for off in [70, 72, 252, 254] {
            swap(&mut be, off, 2);
        }
        for off in [108, 112, 116] {
            swap(&mut be, off, 4);
        }
        for i in 0..18 {
            swap(&mut be, 256 + 4 * i, 4);
        }
        for v in 0..12 {
            swap(&mut be, 352 + 2 * v, 2);
        }
        let back = read(&be[..], &LoadOptions::default()).unwrap();
        assert_eq!(back.volume.data(), vol.data());
        assert_eq!(back.volume.affine(), vol.affine());
    }

    fn header_bytes(vol: &Volume) -> Vec<u8> {
        let mut b = Vec::new();
        write(&mut b, vol, &WriteOptions::mask()).unwrap();
        b
    }

    #[test]
    fn absurd_headers_fail_before_allocating() {
        let mut b = header_bytes(&ramp([2, 2, 2], Affine::identity()));
        for d in 1..4 {
            put(&mut b, 40 + 2 * d, &30000i16.to_le_bytes());
        }
        let err = read(&b[..], &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        // Under the limit but far more than the bytes that follow.
        let err = read(
            &b[..],
            &LoadOptions {
                max_voxels: u64::MAX,
                series_uid: None,
            },
        )
        .unwrap_err();
        // 2.7e13 int16 voxels (54 TB) were promised: had the reader
        // allocated them, this process would have died, not got an error.
        assert!(matches!(err, Error::Truncated(_)), "{err}");
    }

    #[test]
    fn bad_headers_say_what_is_wrong() {
        let good = header_bytes(&ramp([2, 2, 2], Affine::identity()));
        let opts = LoadOptions::default();
        let expect = |b: &[u8], needle: &str| {
            let e = read(b, &opts).unwrap_err().to_string();
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        };
        expect(b"", "file is empty");
        expect(b"hi\n", "3 bytes long");
        expect(&good[..100], "truncated");
        let mut b = good.clone();
        put(&mut b, 344, b"xyz\0");
        expect(&b, "magic");
        let mut b = good.clone();
        put(&mut b, 0, &123i32.to_le_bytes());
        expect(&b, "sizeof_hdr");
        let mut b = good.clone();
        put(&mut b, 42, &0i16.to_le_bytes());
        expect(&b, "dim[1] = 0");
        let mut b = good.clone();
        put(&mut b, 42, &(-3i16).to_le_bytes());
        expect(&b, "dimensions must be positive");
        let mut b = good.clone();
        put(&mut b, 80, &0f32.to_le_bytes());
        expect(&b, "pixdim[1]");
        let mut b = good.clone();
        put(&mut b, 84, &(-1f32).to_le_bytes());
        expect(&b, "pixdim[2]");
        let mut b = good.clone();
        put(&mut b, 40, &4i16.to_le_bytes());
        put(&mut b, 48, &5i16.to_le_bytes());
        expect(&b, "4D data");
        let mut b = good.clone();
        put(&mut b, 70, &32i16.to_le_bytes());
        expect(&b, "datatype code 32");
    }

    #[test]
    fn single_volume_4d_is_accepted() {
        let mut b = header_bytes(&ramp([2, 2, 2], Affine::identity()));
        put(&mut b, 40, &4i16.to_le_bytes());
        put(&mut b, 48, &1i16.to_le_bytes());
        let back = read(&b[..], &LoadOptions::default()).unwrap();
        assert_eq!(back.volume.dims(), [2, 2, 2]);
    }

    #[test]
    fn nan_voxels_are_replaced_and_counted() {
        let vol = Volume::new(
            vec![1.0, f32::NAN, -5.0, 2.0],
            [2, 2, 1],
            Affine::identity(),
        )
        .unwrap();
        let back = roundtrip(&vol, &WriteOptions::float32());
        assert_eq!(back.info.nonfinite_replaced, 1);
        assert_eq!(back.volume.data(), &[1.0, -5.0, -5.0, 2.0]);
    }

    #[test]
    fn fallback_affine_is_nibabels() {
        let mut b = header_bytes(&ramp(
            [4, 3, 2],
            Affine::from_spacing_origin([2.0, 3.0, 4.0], [0.0; 3]),
        ));
        put(&mut b, 252, &0i16.to_le_bytes());
        put(&mut b, 254, &0i16.to_le_bytes());
        let h = Header::parse(&b).unwrap();
        // nibabel: diag(-2, 3, 4) with origin -(shape-1)/2 * zooms.
        let a = h.best_affine();
        assert_eq!(a.0[0], [-2.0, 0.0, 0.0, 3.0]);
        assert_eq!(a.0[1], [0.0, 3.0, 0.0, -3.0]);
        assert_eq!(a.0[2], [0.0, 0.0, 4.0, -2.0]);
    }
}
