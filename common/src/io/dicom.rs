//! DICOM CT series: folder -> one volume.

use std::path::Path;

use super::{LoadOptions, Loaded};
use crate::error::{Error, Result};

/// Reads the CT series in a folder.
pub fn read_series_dir(path: &Path, _opts: &LoadOptions) -> Result<Loaded> {
    Err(Error::Unsupported("DICOM reading is not built yet".into()).in_file(path))
}
