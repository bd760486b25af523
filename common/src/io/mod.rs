//! Reading and writing CT volumes.
//!
//! - [`nifti`]: NIfTI-1 and NIfTI-2, `.nii` and `.nii.gz`, read and write.
//! - [`nrrd`]: NRRD, `.nrrd` (attached data) and `.nhdr` with a detached
//!   data file, read (3D Slicer's and pyradiomics' format).
//! - [`dicom`]: a CT series from a folder of DICOM files.
//!
//! Decoders take bytes or readers; [`load_path`] is the thin wrapper that
//! picks the decoder for a path and names the path in every error,
//! [`read_named`] does the same for a file already in memory, and
//! [`write_atomic`] is the one way files are written. Loaders
//! return the volume on the file's own voxel grid (axes as stored), with a
//! RAS+ affine; callers reorient with [`crate::volume::Volume::to_canonical`].

pub mod dicom;
pub mod nifti;
pub mod nrrd;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::volume::{Affine, Volume};

/// Writes `path` through `write` into `<path>.part` and renames it into
/// place, so a reader never sees half a file and a crash or error leaves the
/// old file (if any) intact. On error the partial file is removed and the
/// error names `path`.
pub fn write_atomic(
    path: impl AsRef<Path>,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    let path = path.as_ref();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    let result = (|| -> Result<()> {
        let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        write(&mut file)?;
        file.flush()?;
        // Durable before it is visible: a crash right after the rename must
        // not leave an empty file under the final name.
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable only once the folder is synced.
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.in_file(path)
}

/// Default voxel limit: 2^30 voxels (4 GiB as f32).
pub const DEFAULT_MAX_VOXELS: u64 = 1 << 30;

/// Options shared by all loaders.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Refuse headers implying more voxels than this, before allocating.
    pub max_voxels: u64,
    /// DICOM: the SeriesInstanceUID to load when a folder holds several.
    pub series_uid: Option<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_voxels: DEFAULT_MAX_VOXELS,
            series_uid: None,
        }
    }
}

impl LoadOptions {
    /// Checks a voxel count against the limit.
    pub fn check_voxels(&self, dims: &[u64]) -> Result<()> {
        let voxels: u128 = dims.iter().map(|&d| d as u128).product();
        if voxels > self.max_voxels as u128 {
            return Err(Error::TooLarge {
                voxels,
                limit: self.max_voxels,
            });
        }
        Ok(())
    }
}

/// What a loader read, besides the voxels: the file's own description.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SourceInfo {
    /// "NIfTI-1", "NIfTI-2", "NRRD" or "DICOM".
    pub format: String,
    /// Stored data type, numpy-style: "int16", "uint8", "float32", ...
    pub dtype: String,
    /// Voxel counts in the file's own i, j, k order.
    pub shape: [usize; 3],
    /// Voxel sizes in mm, same order.
    pub spacing_mm: [f64; 3],
    /// Voxel-to-RAS+ mm affine (nibabel's convention).
    pub affine: Affine,
    /// Non-finite voxels (NaN, +-inf) that were replaced; see
    /// [`replace_nonfinite`].
    pub nonfinite_replaced: u64,
}

/// A loaded volume and its description.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Voxels on the file's own grid, intensities scaled (HU for CT).
    pub volume: Volume,
    /// What the file said about itself.
    pub info: SourceInfo,
}

/// Loads a NIfTI file (`.nii`, `.nii.gz`), a NRRD file (`.nrrd`, or a
/// `.nhdr` with its data file) or a DICOM series folder. Files are told
/// apart by their first bytes (NRRD's magic), and by a `.nrrd`/`.nhdr`
/// name, so a damaged NRRD file is reported as one rather than as a bad
/// NIfTI header.
pub fn load_path(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Loaded> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::Io(e).in_file(path))?;
    if meta.is_dir() {
        return dicom::read_series_dir(path, opts);
    }
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .in_file(path)?;
    if nrrd::is_nrrd(&head[..n]) || has_nrrd_name(&path.to_string_lossy()) {
        nrrd::read_path(path, opts)
    } else {
        nifti::read_path(path, opts)
    }
}

/// Reads one file already in memory (fetched from an object store, or read
/// once to be checksummed): NRRD when the bytes start with its magic or
/// `name` ends in `.nrrd`/`.nhdr`, NIfTI otherwise. `name` is what every
/// error names. A detached NRRD header cannot be read this way (its data
/// file is not in `bytes`): that is an error saying so.
pub fn read_named(bytes: &[u8], name: &str, opts: &LoadOptions) -> Result<Loaded> {
    if nrrd::is_nrrd(bytes) || has_nrrd_name(name) {
        nrrd::read_named(bytes, name, opts)
    } else {
        nifti::read_named(bytes, name, opts)
    }
}

fn has_nrrd_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.ends_with(".nrrd") || name.ends_with(".nhdr")
}

/// Turns a gzip decoder's I/O errors into errors that say what happened
/// (shared by the NIfTI and NRRD readers).
pub(crate) fn gzip_context(e: Error) -> Error {
    match e {
        Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            Error::Truncated(format!("gzip stream ends early ({io})"))
        }
        Error::Io(io)
            if io.kind() == std::io::ErrorKind::InvalidInput
                || io.kind() == std::io::ErrorKind::InvalidData =>
        {
            Error::Truncated(format!("corrupt gzip stream: {io}"))
        }
        other => other,
    }
}

/// Replaces NaN and infinite voxels by the smallest finite value of the
/// volume, so that they read as background (air in CT, outside in masks)
/// and cannot poison sums and interpolation. Returns how many were
/// replaced; loaders log a warning with that count. A volume with no finite
/// voxel at all carries no image (there is nothing to call background), and
/// is refused rather than turned into a block of 0 (water in HU).
pub fn replace_nonfinite(data: &mut [f32]) -> Result<u64> {
    // A branch-free count first (it vectorises); almost every volume has
    // nothing to replace, and then this is the only pass.
    let bad = data.iter().filter(|v| !v.is_finite()).count() as u64;
    if bad == 0 {
        return Ok(0);
    }
    if bad == data.len() as u64 {
        return Err(Error::InvalidArgument(
            "every voxel is NaN or infinite: the volume holds no image".into(),
        ));
    }
    let min = data
        .iter()
        .filter(|v| v.is_finite())
        .fold(f32::INFINITY, |m, &v| m.min(v));
    data.iter_mut()
        .filter(|v| !v.is_finite())
        .for_each(|v| *v = min);
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonfinite_become_the_minimum() {
        let mut d = vec![3.0, f32::NAN, -2.0, f32::INFINITY, f32::NEG_INFINITY];
        assert_eq!(replace_nonfinite(&mut d).unwrap(), 3);
        assert_eq!(d, vec![3.0, -2.0, -2.0, -2.0, -2.0]);
        let mut fine = vec![1.0, 2.0];
        assert_eq!(replace_nonfinite(&mut fine).unwrap(), 0);
        let mut all_bad = vec![f32::NAN, f32::INFINITY];
        let e = replace_nonfinite(&mut all_bad).unwrap_err().to_string();
        assert!(e.contains("every voxel is NaN or infinite"), "{e}");
    }

    #[test]
    fn nrrd_is_picked_by_its_magic_or_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let header = "NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 1 1\n\
                      space: RAS\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n\
                      encoding: raw\n\n";
        let mut bytes = header.as_bytes().to_vec();
        bytes.extend_from_slice(&[3, 4]);
        // A misleading name does not matter: the bytes say NRRD.
        let odd = dir.path().join("scan.nii");
        std::fs::write(&odd, &bytes).unwrap();
        let l = load_path(&odd, &LoadOptions::default()).unwrap();
        assert_eq!(
            (l.info.format.as_str(), l.volume.data()),
            ("NRRD", &[3.0, 4.0][..])
        );
        let l = read_named(&bytes, "object", &LoadOptions::default()).unwrap();
        assert_eq!(l.info.format, "NRRD");
        // A damaged .nrrd is reported as a bad NRRD, not a bad NIfTI.
        let bad = dir.path().join("bad.nrrd");
        std::fs::write(&bad, b"\x00\x01garbage").unwrap();
        let e = load_path(&bad, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad.nrrd") && e.contains("not a NRRD file"),
            "{e}"
        );
        let e = read_named(b"junk", "x.NHDR", &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a NRRD file"), "{e}");
        let e = read_named(b"junk", "x.nii", &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("NIfTI"), "{e}");
    }

    #[test]
    fn voxel_limit_is_checked_without_overflow() {
        let o = LoadOptions {
            max_voxels: 1000,
            series_uid: None,
        };
        assert!(o.check_voxels(&[10, 10, 10]).is_ok());
        assert!(matches!(
            o.check_voxels(&[10, 10, 11]),
            Err(Error::TooLarge { .. })
        ));
        assert!(o.check_voxels(&[u64::MAX, u64::MAX, u64::MAX]).is_err());
    }

    #[test]
    fn atomic_writes_leave_the_old_file_on_error_and_no_part_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        write_atomic(&path, |f| Ok(f.write_all(b"first")?)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let err = write_atomic(&path, |f| {
            f.write_all(b"half")?;
            Err(Error::InvalidArgument("encoder failed".into()))
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("out.bin") && err.contains("encoder failed"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"first", "old file kept");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("out.bin")],
            "no .part left"
        );
        let missing = dir.path().join("no/such/dir/out.bin");
        let err = write_atomic(&missing, |_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("no/such/dir/out.bin"), "{err}");
    }
}
