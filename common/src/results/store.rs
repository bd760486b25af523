//! The output folder of a run.
//!
//! ```text
//! OUT/.lock                    held while a run writes here (flock)
//! OUT/fragments/<scan_id>.json one ScanRecord per finished scan
//! OUT/masks/<scan_id>.nii.gz   the predicted mask on the input's grid
//! OUT/masks/<scan_id>_prob.nii.gz  the probability map (on request)
//! ```
//!
//! A scan is durable the moment its fragment is renamed into place: the
//! mask is written (atomically) first and the fragment last, so a fragment
//! never points at a missing mask, and a run killed at any point loses at
//! most the scans in flight. [`OutputDir::index`] reads the fragments back,
//! which is how a rerun resumes and how the tables are built.
//!
//! The lock is an advisory `flock` on `OUT/.lock`: the kernel drops it when
//! the process ends however it ends, so a killed run never leaves a stale
//! lock behind, and a second run into the same folder is refused while the
//! first one lives.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::ScanRecord;
use super::sink::{ScanOutput, Sink};
use crate::error::{Context, Error, Result};
use crate::io::{nifti, write_atomic};

/// The output folder of a run, locked for as long as this value lives.
#[derive(Debug)]
pub struct OutputDir {
    root: PathBuf,
    // Held for its lock; closing the file releases it.
    _lock: File,
}

impl OutputDir {
    /// Creates (if needed) and locks the output folder. Fails at once,
    /// before any work, when the folder cannot be created or written, or
    /// when another run holds it.
    pub fn open(root: impl Into<PathBuf>) -> Result<OutputDir> {
        let root = root.into();
        for dir in [root.clone(), root.join("fragments"), root.join("masks")] {
            std::fs::create_dir_all(&dir).in_file(&dir)?;
        }
        let lock_path = root.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .in_file(&lock_path)?;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::WouldBlock {
                return Err(Error::Busy(format!(
                    "another multir run is writing to {} (it holds {}); wait for it to \
                     finish or choose another output folder",
                    root.display(),
                    lock_path.display()
                )));
            }
            return Err(Error::Io(err).in_file(&lock_path));
        }
        // The lock file can be created on a folder that is otherwise not
        // writable (a quota, a read-only bind mount below it): prove the
        // folders take files now, not after hours of inference.
        for dir in [root.join("fragments"), root.join("masks")] {
            let probe = dir.join(".probe");
            write_atomic(&probe, |f| Ok(f.write_all(b"multir")?))?;
            std::fs::remove_file(&probe).in_file(&probe)?;
        }
        Ok(OutputDir { root, _lock: lock })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a scan's fragment goes.
    pub fn fragment_path(&self, scan_id: &str) -> PathBuf {
        self.root.join("fragments").join(format!("{scan_id}.json"))
    }

    /// Where a scan's predicted mask goes.
    pub fn mask_path(&self, scan_id: &str) -> PathBuf {
        mask_path(&self.root, scan_id)
    }

    /// Where a scan's probability map goes.
    pub fn probability_path(&self, scan_id: &str) -> PathBuf {
        self.root
            .join("masks")
            .join(format!("{scan_id}_prob.nii.gz"))
    }

    /// Every fragment in the folder by scan id. A fragment that cannot be
    /// read (a different schema version, a file damaged by hand) is
    /// skipped with a warning: its scan is simply processed again.
    pub fn index(&self) -> Result<HashMap<String, ScanRecord>> {
        let dir = self.root.join("fragments");
        let mut out = HashMap::new();
        for entry in std::fs::read_dir(&dir).in_file(&dir)? {
            let path = entry.in_file(&dir)?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue; // .part files of an interrupted write, strays
            };
            let read = std::fs::read(&path)
                .map_err(Error::from)
                .and_then(|b| ScanRecord::from_json(&b));
            match read {
                Ok(r) if r.scan.scan_id == id => {
                    out.insert(id.to_string(), r);
                }
                Ok(r) => tracing::warn!(
                    "{}: holds scan {:?}, not {id:?}; ignored",
                    path.display(),
                    r.scan.scan_id
                ),
                Err(e) => {
                    tracing::warn!("{}: {e}; the scan will be processed again", path.display())
                }
            }
        }
        Ok(out)
    }
}

/// Where the predicted mask of `scan_id` lies under a run's folder.
pub fn mask_path(root: &Path, scan_id: &str) -> PathBuf {
    root.join("masks").join(format!("{scan_id}.nii.gz"))
}

/// Removes a file, a missing one being no error.
fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::Io(e).in_file(path)),
        _ => Ok(()),
    }
}

impl Sink for OutputDir {
    fn accept(&mut self, output: ScanOutput) -> Result<()> {
        let ScanOutput {
            mut record,
            mask,
            probability,
            ..
        } = output;
        let id = record.scan.scan_id.clone();
        let t = Instant::now();
        // An older run may have left maps for this scan; a result without
        // them must not sit beside stale ones.
        match &mask {
            Some(m) => nifti::write_path(self.mask_path(&id), m, &nifti::WriteOptions::mask())?,
            None => remove_if_present(&self.mask_path(&id))?,
        }
        match &probability {
            Some(p) => nifti::write_path(
                self.probability_path(&id),
                p,
                &nifti::WriteOptions::float32(),
            )?,
            None => remove_if_present(&self.probability_path(&id))?,
        }
        let s = &mut record.scan.seconds;
        s.write = t.elapsed().as_secs_f64();
        s.total = s.sum();
        let json = record.to_json()?;
        write_atomic(self.fragment_path(&id), |f| Ok(f.write_all(&json)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{RESULTS_SCHEMA_VERSION, ResumeKey, ScanRow};
    use crate::volume::{Affine, Volume};

    fn output(id: &str, with_mask: bool) -> ScanOutput {
        ScanOutput {
            record: ScanRecord {
                schema: RESULTS_SCHEMA_VERSION,
                classes: vec!["a".into(), "b".into()],
                key: ResumeKey::default(),
                scan: ScanRow::new(id, None),
                lesions: vec![],
            },
            mask: with_mask.then(|| Volume::filled(1.0, [2, 2, 2], Affine::identity()).unwrap()),
            probability: None,
            gradcam: None,
            error: None,
        }
    }

    #[test]
    fn fragments_are_indexed_and_stale_masks_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = OutputDir::open(dir.path().join("run")).unwrap();
        out.accept(output("s1", true)).unwrap();
        out.accept(output("s2", false)).unwrap();
        assert!(out.mask_path("s1").is_file());
        let index = out.index().unwrap();
        assert_eq!(index.len(), 2);
        assert_eq!(index["s2"].scan.scan_id, "s2");
        out.accept(output("s1", false)).unwrap();
        assert!(
            !out.mask_path("s1").exists(),
            "a maskless result removes the old mask"
        );
        // A damaged fragment is skipped, not fatal.
        std::fs::write(out.fragment_path("s3"), b"{not json").unwrap();
        assert_eq!(out.index().unwrap().len(), 2);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("run/fragments"))
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().into_string().unwrap();
                n.ends_with(".part").then_some(n)
            })
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_second_run_into_the_same_folder_is_refused_while_the_first_lives() {
        let dir = tempfile::tempdir().unwrap();
        let first = OutputDir::open(dir.path()).unwrap();
        let err = OutputDir::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Busy(_)), "{err}");
        assert!(err.to_string().contains(".lock"), "{err}");
        drop(first);
        OutputDir::open(dir.path()).expect("the lock goes with its holder");
    }
}
