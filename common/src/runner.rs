//! The embedded cohort driver: every job through the per-scan processor on
//! this machine, with reading, inference and quantification overlapped.
//!
//! Three stages joined by bounded channels, so memory stays flat whatever
//! the cohort size:
//!
//! ```text
//! reader threads     fetch, checksum, resume check, decode, model grid
//!      | (read_ahead scans)
//! calling thread     the network (the processor never leaves it)
//!      |
//! finisher threads   quantification and metrics
//!      |
//! sink thread        the sink and progress, one scan at a time
//! ```
//!
//! The reader and finisher stages each run on [`RunOptions::readers`] and
//! [`RunOptions::finishers`] threads. A real-size scan takes about as long
//! to decompress and bring onto the model grid as a GPU takes to run the
//! network on it, so one reader cannot keep a GPU busy. Jobs are dealt to a
//! stage's threads in turn and taken back in the same turn ([`ordered`]), so
//! scans reach the network and the sink in manifest order, the same rows
//! come out whatever the thread counts, and no reorder buffer can grow
//! behind one slow scan. At most `read_ahead + readers + 1` decoded scans
//! wait for the network, and `2 * finishers + 1` scans for the sink.
//!
//! Resume: after [`crate::process::Reader::fetch`] the scan's
//! [`ResumeKey`] is known; when `done` says a final result with that key
//! exists, the scan is skipped before it is decoded.
//!
//! Shutdown: when `shutdown` becomes true no further job is taken, scans
//! waiting for the network are abandoned, and the scan in the network and
//! those past it complete and reach the sink, so nothing that finished is
//! lost. A sink error (a full disk) stops the pipeline the same way and is
//! returned.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::{Scope, ScopedJoinHandle};

use crate::error::{Error, Result};
use crate::job::Job;
use crate::process::{InFlight, Processor};
use crate::results::sink::{ScanOutput, Sink};
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
    /// Threads that fetch and decode scans (0 counts as 1).
    pub readers: usize,
    /// Threads that quantify scans after the network (0 counts as 1).
    pub finishers: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            read_ahead: 2,
            readers: 1,
            finishers: 1,
        }
    }
}

impl RunOptions {
    /// Reader and finisher threads for `cpus` CPUs: one of each per four
    /// CPUs, from one to four. Each stage also uses rayon inside a scan,
    /// so a few threads per stage are enough to keep the cores busy.
    pub fn stage_threads(cpus: usize) -> usize {
        (cpus / 4).clamp(1, 4)
    }
}

enum Item {
    Skip(String),
    Scan(Box<InFlight>),
}

enum Done {
    Skip(String),
    Scan(Box<ScanOutput>),
}

/// The threads of an [`ordered`] stage.
struct Stage<'s> {
    /// Returns whether the whole input was dealt out.
    dealer: ScopedJoinHandle<'s, bool>,
    threads: Vec<ScopedJoinHandle<'s, ()>>,
}

impl Stage<'_> {
    /// Joins the stage (after its output was dropped or drained); `Ok(true)`
    /// when its whole input was dealt out.
    fn join(self, what: &str) -> Result<bool> {
        let panicked = || Error::Io(std::io::Error::other(format!("a {what} thread panicked")));
        let mut ok = true;
        for t in self.threads {
            ok &= t.join().is_ok();
        }
        let all = self.dealer.join().map_err(|_| panicked())?;
        if ok { Ok(all) } else { Err(panicked()) }
    }
}

/// Runs `f` over `input` on `threads` threads of `scope`, keeping order:
/// item `n` of the returned receiver is `f` of item `n` of the input. A dealer hands
/// item `n` to thread `n % threads` and a collector takes results back in
/// the same turn, so each thread holds at most the item it works on and
/// the result it waits to hand back, and `capacity` results wait in the
/// output. Dropping the output stops the stage: every thread's next send
/// fails and it returns.
fn ordered<'s, 'e, T, U, F>(
    scope: &'s Scope<'s, 'e>,
    threads: usize,
    capacity: usize,
    input: impl Iterator<Item = T> + Send + 's,
    f: F,
) -> (Receiver<U>, Stage<'s>)
where
    T: Send + 's,
    U: Send + 's,
    F: Fn(T) -> U + Send + Sync + 's,
{
    let threads = threads.max(1);
    let f = Arc::new(f);
    let mut to_threads = Vec::with_capacity(threads);
    let mut from_threads = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads + 1);
    for _ in 0..threads {
        // Rendezvous channels: nothing waits in them, so the bounds above
        // hold.
        let (to_thread, inbox) = sync_channel::<T>(0);
        let (outbox, from_thread) = sync_channel::<U>(0);
        let f = Arc::clone(&f);
        handles.push(scope.spawn(move || {
            for item in inbox {
                if outbox.send(f(item)).is_err() {
                    return;
                }
            }
        }));
        to_threads.push(to_thread);
        from_threads.push(from_thread);
    }
    let dealer = scope.spawn(move || {
        for (n, item) in input.enumerate() {
            if to_threads[n % threads].send(item).is_err() {
                return false;
            }
        }
        true
    });
    let (to_output, output) = sync_channel::<U>(capacity);
    handles.push(scope.spawn(move || {
        // The first thread whose turn yields nothing has no more input,
        // and neither has any after it, as the dealer deals in turn.
        for from in from_threads.iter().cycle() {
            let Ok(result) = from.recv() else { return };
            if to_output.send(result).is_err() {
                return;
            }
        }
    }));
    let stage = Stage {
        dealer,
        threads: handles,
    };
    (output, stage)
}

/// Runs `jobs` through `processor` into `sink`; see the module docs.
///
/// `done(job, key)` says whether a final result for the job with this key
/// exists already; `progress` hears of every scan, on the sink thread.
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
    // Set when the sink fails, so the upstream stages stop early.
    let abort = AtomicBool::new(false);
    let stop = || shutdown.load(Ordering::SeqCst) || abort.load(Ordering::SeqCst);
    // Jobs cut short by a shutdown show in `report.interrupted`; by a sink
    // error, in the error returned.
    let jobs = jobs.into_iter().take_while(|_| !stop());
    let done = &done;
    std::thread::scope(|scope| {
        let (from_readers, reading) = ordered(
            scope,
            options.readers,
            options.read_ahead.max(1),
            jobs,
            move |job: Job| {
                let mut s = reader.fetch(&job);
                if done(&job, &s.key) {
                    Item::Skip(job.scan_id)
                } else {
                    reader.decode(&mut s);
                    Item::Scan(Box::new(s))
                }
            },
        );
        let (to_finish, from_net) = sync_channel::<Item>(0);
        let (from_finishers, finishing) = ordered(
            scope,
            options.finishers,
            1,
            from_net.into_iter(),
            move |item| match item {
                Item::Skip(id) => Done::Skip(id),
                Item::Scan(s) => Done::Scan(Box::new(finisher.finish(*s))),
            },
        );
        let sinking = scope.spawn(|| -> Result<RunReport> {
            let mut report = RunReport::default();
            for item in from_finishers {
                match item {
                    Done::Skip(id) => {
                        report.skipped += 1;
                        progress(Event::Skipped(&id));
                    }
                    Done::Scan(out) => {
                        let row = out.record.scan.clone();
                        if let Err(e) = sink.accept(*out) {
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
        for item in from_readers {
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
                break; // the sink failed
            }
        }
        drop(to_finish);
        let finished = sinking
            .join()
            .map_err(|_| Error::Io(std::io::Error::other("the sink thread panicked")))?;
        finishing.join("finisher")?;
        let all_taken = reading.join("reader")?;
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
    fn ordered_keeps_order_whatever_the_timing_and_stops_when_dropped() {
        // Uneven work: later items often finish before earlier ones.
        let work = |x: u64| {
            std::thread::sleep(std::time::Duration::from_millis((x * 7) % 5));
            x * 2
        };
        std::thread::scope(|scope| {
            let (out, stage) = ordered(scope, 4, 2, 0..60u64, work);
            let got: Vec<u64> = out.iter().collect();
            assert_eq!(got, (0..60).map(|x| x * 2).collect::<Vec<_>>());
            assert!(stage.join("test").unwrap(), "the whole input was dealt");
        });
        // A consumer that stops early stops the stage without taking the rest.
        std::thread::scope(|scope| {
            let (out, stage) = ordered(scope, 3, 1, 0..1_000_000u64, work);
            let first: Vec<u64> = out.iter().take(5).collect();
            assert_eq!(first, [0, 2, 4, 6, 8]);
            drop(out);
            assert!(!stage.join("test").unwrap(), "the input was cut short");
        });
        // A panic ends the output at the item that panicked and is reported.
        std::thread::scope(|scope| {
            let (out, stage) = ordered(scope, 3, 1, 0..20u64, |x| {
                assert_ne!(x, 7, "boom");
                x
            });
            let got: Vec<u64> = out.iter().collect();
            assert_eq!(got, (0..7).collect::<Vec<_>>());
            let e = stage.join("test").unwrap_err();
            assert!(e.to_string().contains("a test thread panicked"), "{e}");
        });
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
            jobs.clone(),
            &p,
            &mut sink,
            |_, _| false,
            &never,
            RunOptions::default(),
            |e| events.push(format!("{e:?}").len()),
        )
        .unwrap();
        // Several readers and finishers give the same rows in the same order.
        let mut threaded = Collector::default();
        let options = RunOptions {
            read_ahead: 1,
            readers: 3,
            finishers: 2,
        };
        let r3 = run(
            jobs,
            &p,
            &mut threaded,
            |_, _| false,
            &never,
            options,
            |_| {},
        )
        .unwrap();
        assert_eq!(r3, report);
        assert_eq!(ids(&threaded), ids(&sink));
        for (a, b) in threaded.records.iter().zip(&sink.records) {
            assert_eq!(a.key, b.key);
            assert_eq!(a.scan.probabilities, b.scan.probabilities);
            assert_eq!(a.scan.lesion_volume_ml, b.scan.lesion_volume_ml);
            assert_eq!(a.scan.error, b.scan.error);
        }
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
        let never = AtomicBool::new(false);
        let threaded = RunOptions {
            read_ahead: 1,
            readers: 2,
            finishers: 2,
        };
        for options in [RunOptions::default(), threaded] {
            let mut full = Full(0);
            let e = run(jobs(), &p, &mut full, |_, _| false, &never, options, |_| {}).unwrap_err();
            assert!(e.to_string().starts_with("x:"), "{e}");
            assert_eq!(full.0, 1, "nothing more is offered to a failing sink");
        }
    }
}
