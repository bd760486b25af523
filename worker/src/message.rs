//! What travels on the queues besides the core's job.
//!
//! The jobs queue carries [`multir_common::job::Job`] exactly as the core
//! encodes it (JSON with its schema version; image and mask are `s3://`
//! URLs). A worker that finishes a scan publishes a [`Completion`] to the
//! run's done queue; a job given up on goes to the dead queue with its
//! original body and an `x-multir-reason` header.

use crate::error::{Error, Result};

/// Version of the completion's JSON layout.
pub const COMPLETION_SCHEMA_VERSION: u32 = 1;

/// Header naming the run a message belongs to.
pub const RUN_HEADER: &str = "x-multir-run";
/// Header saying why a job was dead-lettered by a worker.
pub const REASON_HEADER: &str = "x-multir-reason";

/// A finished scan, as published to the run's done queue.
///
/// ```json
/// {"schema": 1, "run": "r1", "scan_id": "p001", "status": "ok",
///  "fragment": "s3://b/p/runs/r1/fragments/p001.json", "worker": "w-0"}
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Completion {
    /// [`COMPLETION_SCHEMA_VERSION`].
    pub schema: u32,
    /// The run.
    pub run: String,
    /// The scan.
    pub scan_id: String,
    /// "ok" or "error" (the row's status).
    pub status: String,
    /// Where the result fragment is.
    pub fragment: String,
    /// The worker that finished it.
    pub worker: String,
}

impl Completion {
    /// Encodes as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings always serialises.
        serde_json::to_vec(self).expect("completion encodes")
    }

    /// Decodes, refusing other schema versions.
    pub fn from_json(bytes: &[u8]) -> Result<Completion> {
        let c: Completion = serde_json::from_slice(bytes)
            .map_err(|e| Error::Invalid(format!("not a multir completion: {e}")))?;
        if c.schema != COMPLETION_SCHEMA_VERSION {
            return Err(Error::Invalid(format!(
                "completion schema version {}, this build reads version {COMPLETION_SCHEMA_VERSION}",
                c.schema
            )));
        }
        Ok(c)
    }
}

/// Where a run keeps its objects, under the results prefix:
///
/// ```text
/// <results>/runs/<run>/run.json              what submit recorded
/// <results>/runs/<run>/manifest.csv          the manifest as submitted
/// <results>/runs/<run>/fragments/<id>.json   one ScanRecord per finished scan
/// <results>/runs/<run>/masks/<id>.nii.gz     its predicted mask
/// <results>/runs/<run>/errors/<id>           empty: the scan's row is an error
/// <results>/runs/<run>/dead/<id>.json        a job given up on, and why
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLayout {
    /// `<results>/runs/<run>`.
    pub root: crate::store::S3Url,
}

impl RunLayout {
    /// The layout of `run` under the results prefix.
    pub fn new(results: &crate::store::S3Url, run: &str) -> RunLayout {
        RunLayout {
            root: results.join(&format!("runs/{run}")),
        }
    }

    /// The scan's result fragment.
    pub fn fragment(&self, scan_id: &str) -> crate::store::S3Url {
        self.root.join(&format!("fragments/{scan_id}.json"))
    }

    /// The scan's predicted mask.
    pub fn mask(&self, scan_id: &str) -> crate::store::S3Url {
        self.root.join(&format!("masks/{scan_id}.nii.gz"))
    }

    /// The record of a job given up on.
    pub fn dead(&self, scan_id: &str) -> crate::store::S3Url {
        self.root.join(&format!("dead/{scan_id}.json"))
    }

    /// The empty marker of a scan whose row is an error (so that `status`
    /// counts failures from a listing, without reading fragments).
    pub fn error_marker(&self, scan_id: &str) -> crate::store::S3Url {
        self.root.join(&format!("errors/{scan_id}"))
    }

    /// The error markers' prefix.
    pub fn errors(&self) -> crate::store::S3Url {
        self.root.join("errors/")
    }

    /// The fragments' prefix.
    pub fn fragments(&self) -> crate::store::S3Url {
        self.root.join("fragments/")
    }

    /// The dead records' prefix.
    pub fn dead_prefix(&self) -> crate::store::S3Url {
        self.root.join("dead/")
    }

    /// What submit recorded.
    pub fn run_json(&self) -> crate::store::S3Url {
        self.root.join("run.json")
    }

    /// The manifest as submitted.
    pub fn manifest(&self) -> crate::store::S3Url {
        self.root.join("manifest.csv")
    }
}
