//! The embedded cohort driver: every job through the per-scan processor on
//! this machine, with reading, inference and quantification overlapped.
//!
//! Three threads form a pipeline joined by bounded channels, so memory
//! stays flat whatever the cohort size:
//!
//! ```text
//! reader thread      fetch, checksum, resume check, decode, model grid
//!      | (read_ahead scans)
//! calling thread     the network (the processor never leaves it)
//!      | (1 scan)
//! finisher thread    quantification, metrics, then the sink
//! ```
//!
//! Resume: after [`crate::process::Reader::fetch`] the scan's
//! [`ResumeKey`] is known; when `done` says a final result with that key
//! exists, the scan is skipped before it is decoded.
//!
//! Shutdown: when `shutdown` becomes true the reader stops taking jobs,
//! scans waiting for the network are abandoned, and the scan in the
//! network and those in the finisher complete and reach the sink, so
//! nothing that finished is lost. A sink error (a full disk) stops the
//! pipeline the same way and is returned.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;

use crate::error::{Error, Result};
use crate::job::Job;
use crate::process::{InFlight, Processor};
use crate::results::sink::Sink;
use crate::results::{ResumeKey, ScanRow, Status};

/// What the pipeline reports while it runs.
#[derive(Debug)]
pub enum Event<'a> {
    /// A scan has a final result from an earlier run and was not redone.
    Skipped(&'a str),
    /// A scan finished and its result reached the sink.
    Finished(&'a ScanRow),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunReport {
    /// Scans processed in this run.
    pub processed: usize,
    /// Of those, scans whose row has status error.
    pub failed: usize,
    /// Scans kept from an earlier run.
    pub skipped: usize,
    /// Whether `shutdown` stopped the run before every job was taken.
    pub interrupted: bool,
}

/// Pipeline settings.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Decoded scans waiting for the network (each holds its volumes).
    pub read_ahead: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { read_ahead: 2 }
    }
}

enum Item {
    Skip(String),
    Scan(Box<InFlight>),
}

/// Runs `jobs` through `processor` into `sink`; see the module docs.
///
/// `done(job, key)` says whether a final result for the job with this key
/// exists already; `progress` hears of every scan, on the finisher thread.
pub fn run<S, D, P>(
    jobs: impl IntoIterator<Item = Job, IntoIter: Send>,
    processor: &Processor,
    sink: &mut S,
    done: D,
    shutdown: &AtomicBool,
    options: RunOptions,
    mut progress: P,
) -> Result<RunReport>
where
    S: Sink + Send + ?Sized,
    D: Fn(&Job, &ResumeKey) -> bool + Sync,
    P: FnMut(Event<'_>) + Send,
{
    let reader = processor.reader();
    let finisher = processor.finisher();
    // Set when the finisher fails, so the upstream stages stop early.
    let abort = AtomicBool::new(false);
    let stop = || shutdown.load(Ordering::SeqCst) || abort.load(Ordering::SeqCst);
    let (to_net, from_reader) = sync_channel::<Item>(options.read_ahead.max(1));
    let (to_finish, from_net) = sync_channel::<Item>(1);
    let jobs = jobs.into_iter();
    std::thread::scope(|scope| {
        let reading = scope.spawn(|| {
            // Moved in, so the channel closes when the reader is done.
            let to_net = to_net;
            let mut all_taken = true;
            for job in jobs {
                if stop() {
                    all_taken = false;
                    break;
                }
                let mut s = reader.fetch(&job);
                let item = if done(&job, &s.key) {
                    Item::Skip(job.scan_id)
                } else {
                    reader.decode(&mut s);
                    Item::Scan(Box::new(s))
                };
                if to_net.send(item).is_err() {
                    all_taken = false;
                    break;
                }
            }
            all_taken
        });
        let finishing = scope.spawn(|| -> Result<RunReport> {
            let mut report = RunReport::default();
            for item in from_net {
                match item {
                    Item::Skip(id) => {
                        report.skipped += 1;
                        progress(Event::Skipped(&id));
                    }
                    Item::Scan(s) => {
                        let out = finisher.finish(*s);
                        let row = out.record.scan.clone();
                        if let Err(e) = sink.accept(out) {
                            abort.store(true, Ordering::SeqCst);
                            return Err(e);
                        }
                        report.processed += 1;
                        report.failed += (row.status == Status::Error) as usize;
                        progress(Event::Finished(&row));
                    }
                }
            }
            Ok(report)
        });
        for item in from_reader {
            let item = match item {
                // Scans still waiting for the network are abandoned.
                Item::Scan(_) if stop() => break,
                Item::Scan(mut s) => {
                    processor.infer(&mut s);
                    Item::Scan(s)
                }
                skip => skip,
            };
            if to_finish.send(item).is_err() {
                break; // the finisher stopped on a sink error
            }
        }
        drop(to_finish);
        let finished = finishing
            .join()
            .map_err(|_| Error::Io(std::io::Error::other("the finisher thread panicked")))?;
        let all_taken = reading
            .join()
            .map_err(|_| Error::Io(std::io::Error::other("the reader thread panicked")))?;
        let mut report = finished?;
        report.interrupted = !all_taken || shutdown.load(Ordering::SeqCst);
        Ok(report)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::nifti;
    use crate::job::Source;
    use crate::model::checkpoint::CheckpointMeta;
    use crate::model::config::ModelConfig;
    use crate::model::{Checkpoint, MultiRNet};
    use crate::preprocess::PreprocessConfig;
    use crate::process::{Model, ProcessConfig};
    use crate::results::sink::{Collector, ScanOutput};
    use crate::volume::{Affine, Volume};
    use crate::{Error, Fault};
    use std::path::Path;
    use tch::{Device, nn};

    /// A processor with an untrained tiny network on a coarse grid.
    fn processor() -> Processor {
        tch::manual_seed(3);
        let cfg = ModelConfig::tiny();
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = MultiRNet::new(&vs.root(), &cfg).unwrap();
        let pre = PreprocessConfig {
            spacing_mm: [4.0, 4.0, 4.0],
            ..Default::default()
        };
        let meta = CheckpointMeta::new(
            cfg,
            pre,
            ["covid", "cap", "healthy"].map(String::from).to_vec(),
        );
        let bytes = Checkpoint::from_var_store(&vs, meta, &[])
            .unwrap()
            .to_bytes()
            .unwrap();
        let model = Model::from_bytes("tiny", &bytes).unwrap();
        Processor::new(&model, Device::Cpu, &ProcessConfig::default()).unwrap()
    }

    /// A job for a small CT written to `dir`.
    fn job(dir: &Path, id: &str) -> Job {
        let dims = [24, 20, 12];
        let n: usize = dims.iter().product();
        let data = (0..n)
            .map(|i| -1000.0 + ((i * 7919) % 1100) as f32)
            .collect();
        let ct = Volume::new(data, dims, Affine::from_spacing_origin([2.0; 3], [0.0; 3])).unwrap();
        let path = dir.join(format!("{id}.nii.gz"));
        nifti::write_path(&path, &ct, &nifti::WriteOptions::ct_int16()).unwrap();
        Job {
            scan_id: id.into(),
            image: Source::path(path),
            mask: None,
            label: None,
        }
    }

    fn ids(c: &Collector) -> Vec<String> {
        c.records.iter().map(|r| r.scan.scan_id.clone()).collect()
    }

    #[test]
    fn every_job_reaches_the_sink_in_order_and_bad_ones_as_error_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = processor();
        let mut jobs: Vec<Job> = (0..4).map(|i| job(dir.path(), &format!("s{i}"))).collect();
        jobs.insert(
            2,
            Job {
                scan_id: "gone".into(),
                image: Source::path(dir.path().join("gone.nii.gz")),
                mask: None,
                label: None,
            },
        );
        let mut sink = Collector::default();
        let mut events = Vec::new();
        let never = AtomicBool::new(false);
        let report = run(
            jobs,
            &p,
            &mut sink,
            |_, _| false,
            &never,
            RunOptions::default(),
            |e| events.push(format!("{e:?}").len()),
        )
        .unwrap();
        assert_eq!(ids(&sink), ["s0", "s1", "gone", "s2", "s3"]);
        assert_eq!((report.processed, report.failed, report.skipped), (5, 1, 0));
        assert!(!report.interrupted);
        assert_eq!(events.len(), 5);
        let gone = &sink.records[2].scan;
        assert_eq!(gone.fault, Some(Fault::Input));
        assert!(gone.error.as_deref().unwrap().contains("gone.nii.gz"));
        let ok = &sink.records[0];
        assert_eq!(ok.scan.probabilities.len(), 3);
        assert!(ok.key.image_sha256.is_some() && ok.scan.windows.is_some());
        // The same job through `process` on one thread gives the same row.
        let direct = p.process(&job(dir.path(), "s0")).record;
        assert_eq!(direct.key, ok.key);
        assert_eq!(direct.scan.probabilities, ok.scan.probabilities);
        assert_eq!(direct.scan.lesion_volume_ml, ok.scan.lesion_volume_ml);
    }

    #[test]
    fn finished_scans_are_skipped_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let p = processor();
        let jobs: Vec<Job> = (0..3).map(|i| job(dir.path(), &format!("s{i}"))).collect();
        let mut sink = Collector::default();
        let never = AtomicBool::new(false);
        let mut skipped = Vec::new();
        let report = run(
            jobs,
            &p,
            &mut sink,
            |j, k| j.scan_id == "s1" && k.image_sha256.is_some(),
            &never,
            RunOptions::default(),
            |e| {
                if let Event::Skipped(id) = e {
                    skipped.push(id.to_string())
                }
            },
        )
        .unwrap();
        assert_eq!(ids(&sink), ["s0", "s2"]);
        assert_eq!(skipped, ["s1"]);
        assert_eq!(report.skipped, 1);
    }

    #[test]
    fn shutdown_takes_no_new_scans_and_a_sink_error_stops_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let p = processor();
        let jobs = || {
            (0..3)
                .map(|i| job(dir.path(), &format!("s{i}")))
                .collect::<Vec<_>>()
        };
        let stop = AtomicBool::new(true);
        let mut sink = Collector::default();
        let r = run(
            jobs(),
            &p,
            &mut sink,
            |_, _| false,
            &stop,
            RunOptions::default(),
            |_| {},
        )
        .unwrap();
        assert!(r.interrupted);
        assert!(sink.records.is_empty());

        struct Full(usize);
        impl Sink for Full {
            fn accept(&mut self, _: ScanOutput) -> Result<()> {
                self.0 += 1;
                Err(Error::Io(std::io::Error::from(std::io::ErrorKind::StorageFull)).in_file("x"))
            }
        }
        let mut full = Full(0);
        let never = AtomicBool::new(false);
        let e = run(
            jobs(),
            &p,
            &mut full,
            |_, _| false,
            &never,
            RunOptions::default(),
            |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("x:"), "{e}");
        assert_eq!(full.0, 1, "nothing more is offered to a failing sink");
    }
}
