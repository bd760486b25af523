//! Where finished scans go.
//!
//! The per-scan processor produces a [`ScanOutput`]; a driver pushes each
//! into a [`Sink`] the moment the scan is done. The embedded run's sink is
//! the output folder ([`super::store::OutputDir`]: mask files and a durable
//! per-scan fragment), a queue worker's sink uploads the same fragment and
//! replies on the queue, the Parquet tables are written by a sink fed from
//! the fragments, and tests collect into a [`Collector`].

use super::ScanRecord;
use crate::error::Result;
use crate::volume::Volume;

/// One finished scan: its record and the volumes worth keeping.
#[derive(Debug)]
pub struct ScanOutput {
    /// The row, the lesion rows and what produced them.
    pub record: ScanRecord,
    /// The predicted lesion mask on the input's grid (uint8 0/1 values).
    pub mask: Option<Volume>,
    /// The lesion probability map, when asked for.
    pub probability: Option<Volume>,
    /// The Grad-CAM heat map of the predicted class, when asked for.
    pub gradcam: Option<Volume>,
    /// The first error of a failed scan, as a value (the row holds its
    /// message): drivers that map failures to exit codes or retries use it.
    pub error: Option<crate::Error>,
}

/// Takes finished scans.
///
/// An error from a sink is the environment's (a full disk, a lost
/// connection): the driver stops, since every further scan would fail the
/// same way, and what the sink accepted before stays accepted.
pub trait Sink {
    /// Takes one finished scan.
    fn accept(&mut self, output: ScanOutput) -> Result<()>;
}

/// Keeps every record in memory (tests, small tools).
#[derive(Debug, Default)]
pub struct Collector {
    /// The records, in the order they arrived.
    pub records: Vec<ScanRecord>,
}

impl Sink for Collector {
    fn accept(&mut self, output: ScanOutput) -> Result<()> {
        self.records.push(output.record);
        Ok(())
    }
}

impl<S: Sink + ?Sized> Sink for &mut S {
    fn accept(&mut self, output: ScanOutput) -> Result<()> {
        (**self).accept(output)
    }
}
