//! The unit of work of a cohort run: one scan, where its bytes are, and
//! what is known about it.
//!
//! A [`Job`] is what every driver hands the per-scan processor
//! ([`crate::process::Processor`]): the embedded `multir run` builds one per
//! manifest row with local paths, and a queue worker receives one as JSON
//! whose sources are object URLs, fetches the bytes and passes them on as
//! [`Source::Bytes`]. The processor never fetches anything itself.
//!
//! On the wire a job is JSON with a schema version:
//!
//! ```json
//! {"schema": 1, "scan_id": "p001",
//!  "image": {"kind": "url", "url": "s3://cohort/images/p001.nii.gz"},
//!  "mask": null, "label": "covid"}
//! ```
//!
//! In-memory sources ([`Source::Bytes`], [`Source::Series`]) are never
//! serialised: encoding a job that holds one is an error, not a job with
//! its bytes silently dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::manifest::{Label, Manifest, ManifestEntry};

/// Version of the job's JSON layout; decoders refuse other versions.
pub const JOB_SCHEMA_VERSION: u32 = 1;

/// Where a volume's bytes are.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// A NIfTI or NRRD file (a `.nhdr` with its data file beside it) or a
    /// DICOM series folder on this machine.
    Path {
        /// The file or folder.
        path: PathBuf,
    },
    /// A location only a driver can reach (for example `s3://bucket/key`);
    /// the driver fetches it and hands the processor [`Source::Bytes`].
    Url {
        /// The object's URL.
        url: String,
    },
    /// One file's bytes, already fetched. `name` appears in messages; the
    /// format is read from the bytes (NIfTI, or NRRD with attached data: a
    /// detached `.nhdr` is refused, its data file being elsewhere).
    #[serde(skip)]
    Bytes {
        /// The name to report (usually the URL it came from).
        name: String,
        /// The file's bytes.
        data: Arc<[u8]>,
    },
    /// A DICOM series as in-memory files (name, bytes).
    #[serde(skip)]
    Series {
        /// The name to report (the folder or prefix it came from).
        name: String,
        /// The series' files.
        files: Arc<Vec<(String, Vec<u8>)>>,
    },
    /// An input the driver could not fetch for a reason of the input's own
    /// (a missing object, one over the size limit): the processor turns it
    /// into the scan's error row exactly as it does an unreadable file.
    #[serde(skip)]
    Unreadable {
        /// The name to report (the URL).
        name: String,
        /// The class of failure; it decides the row's fault (`NotFound` and
        /// `InvalidData` are the input's fault).
        io_kind: std::io::ErrorKind,
        /// What went wrong, in words.
        reason: String,
    },
}

impl Source {
    /// The name messages use for this source.
    pub fn name(&self) -> String {
        match self {
            Source::Path { path } => path.display().to_string(),
            Source::Url { url } => url.clone(),
            Source::Bytes { name, .. }
            | Source::Series { name, .. }
            | Source::Unreadable { name, .. } => name.clone(),
        }
    }

    /// A local file or folder.
    pub fn path(path: impl Into<PathBuf>) -> Source {
        Source::Path { path: path.into() }
    }

    /// The local path, if this source is one.
    pub fn as_path(&self) -> Option<&Path> {
        match self {
            Source::Path { path } => Some(path),
            _ => None,
        }
    }
}

/// One scan to process.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    /// The scan's identifier, unique in its cohort; outputs are named after it.
    pub scan_id: String,
    /// The CT.
    pub image: Source,
    /// The ground-truth lesion mask, for segmentation metrics.
    #[serde(default)]
    pub mask: Option<Source>,
    /// The ground-truth class, for classification statistics.
    #[serde(default)]
    pub label: Option<Label>,
}

/// The job as it travels: [`Job`] with its schema version.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire<J> {
    schema: u32,
    #[serde(flatten)]
    job: J,
}

impl Job {
    /// The job of one manifest row, its paths resolved against the
    /// manifest's folder.
    pub fn from_entry(entry: &ManifestEntry, manifest: &Manifest) -> Job {
        Job {
            scan_id: entry.scan_id.clone(),
            image: Source::path(entry.image_path(manifest)),
            mask: entry.mask_path(manifest).map(Source::path),
            label: entry.label,
        }
    }

    /// Encodes the job as JSON with its schema version. Jobs holding
    /// in-memory bytes cannot be encoded.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(&Wire {
            schema: JOB_SCHEMA_VERSION,
            job: self,
        })
        .map_err(|e| Error::InvalidArgument(format!("cannot encode job {}: {e}", self.scan_id)))
    }

    /// Decodes a job, refusing other schema versions and malformed JSON
    /// with a message that says which.
    pub fn from_json(bytes: &[u8]) -> Result<Job> {
        #[derive(serde::Deserialize)]
        struct Version {
            schema: Option<u32>,
        }
        let bad = |why: String| Error::WrongFormat {
            format: "multir job",
            reason: why,
        };
        let v: Version = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        match v.schema {
            Some(JOB_SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(bad(format!(
                    "schema version {other}, this build reads version {JOB_SCHEMA_VERSION}"
                )));
            }
            None => return Err(bad("no schema version".into())),
        }
        let w: Wire<Job> = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        crate::manifest::check_scan_id(&w.job.scan_id).map_err(bad)?;
        Ok(w.job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_through_json_with_their_version() {
        let job = Job {
            scan_id: "p001".into(),
            image: Source::Url {
                url: "s3://c/images/p001.nii.gz".into(),
            },
            mask: Some(Source::path("/data/masks/p001.nii.gz")),
            label: Some(Label::Cap),
        };
        let bytes = job.to_json().unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains("\"schema\":1"), "{text}");
        assert!(text.contains("\"kind\":\"url\""), "{text}");
        assert_eq!(Job::from_json(&bytes).unwrap(), job);
    }

    #[test]
    fn other_versions_garbage_and_unsafe_ids_are_refused() {
        let v2 = br#"{"schema":2,"scan_id":"a","image":{"kind":"path","path":"x"}}"#;
        let e = Job::from_json(v2).unwrap_err().to_string();
        assert!(e.contains("schema version 2"), "{e}");
        let none = br#"{"scan_id":"a","image":{"kind":"path","path":"x"}}"#;
        assert!(
            Job::from_json(none)
                .unwrap_err()
                .to_string()
                .contains("no schema")
        );
        assert!(Job::from_json(b"\x00\x01garbage").is_err());
        let escape = br#"{"schema":1,"scan_id":"../x","image":{"kind":"path","path":"x"}}"#;
        let e = Job::from_json(escape).unwrap_err().to_string();
        assert!(e.contains("../x"), "{e}");
    }

    #[test]
    fn in_memory_sources_are_not_encoded() {
        let job = Job {
            scan_id: "a".into(),
            image: Source::Bytes {
                name: "mem".into(),
                data: Arc::from(&b"abc"[..]),
            },
            mask: None,
            label: None,
        };
        assert!(job.to_json().is_err());
    }
}
