//! `multir collect`: a distributed run's results as the same tables as
//! `multir run` writes (`scans.parquet`, `lesions.parquet`, `cohort.json`,
//! `report.html`), on disk or in S3, with exactly one row per manifest row.
//!
//! - a scan with a result fragment gets the fragment's row (ok or error);
//! - a scan whose job was given up on (dead-lettered: its delivery limit
//!   reached, or a worker gave up on it) gets an error row with the reason;
//! - with `--wait`, collect follows the run (a progress bar) until every
//!   scan is one of those; without it, unfinished scans get an error row
//!   saying so and the command fails, so a partial table is never taken
//!   for a whole one.
//!
//! Dead letters are moved from the broker into `dead/<scan_id>.json` objects
//! before the tables are built, so that the record survives the queue and a
//! second collect sees the same rows. A message on the dead queue that is
//! not a job at all (a garbage message) has no manifest row: it is counted
//! and described in the run information of the tables and in a warning.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use multir_common::Fault;
use multir_common::job::Job;
use multir_common::manifest::{Label, Manifest};
use multir_common::results::{RESULTS_SCHEMA_VERSION, ResumeKey, ScanRecord, ScanRow};
use multir_worker::broker::{self, Broker, Delivery};
use multir_worker::store::S3Url;

use super::outputs;
use super::remote::{Remote, now, runtime};
use crate::cli::CollectArgs;
use crate::progress::Progress;

/// A dead letter, as kept under `dead/`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DeadRecord {
    /// The scan (empty for a message that was not a job).
    pub scan_id: String,
    /// Why it was given up on.
    pub reason: String,
    /// When collect moved it from the queue (seconds since the epoch).
    pub collected_at: u64,
    /// The message body, for a message that was not a job.
    #[serde(default)]
    pub body: Option<String>,
}

pub fn run(args: CollectArgs) -> anyhow::Result<()> {
    runtime()?.block_on(collect(args))
}

/// Moves every dead letter of the run into `dead/` objects; returns the
/// records of messages that were not jobs.
async fn move_dead_letters(remote: &Remote, broker: &Broker) -> anyhow::Result<Vec<DeadRecord>> {
    let mut garbage = Vec::new();
    broker
        .drain(&remote.queues.dead, async |d: Delivery| {
            let reason = broker::dead_reason(&d);
            let (id, body) = match Job::from_json(&d.data) {
                Ok(job) => (job.scan_id, None),
                Err(_) => (
                    String::new(),
                    Some(
                        String::from_utf8_lossy(&d.data)
                            .chars()
                            .take(2000)
                            .collect(),
                    ),
                ),
            };
            let rec = DeadRecord {
                scan_id: id.clone(),
                reason,
                collected_at: now(),
                body,
            };
            let key = if id.is_empty() {
                let sum = multir_common::process::sha256_hex(&d.data);
                garbage.push(rec.clone());
                remote
                    .layout
                    .root
                    .join(&format!("dead-messages/{}.json", &sum[..16]))
            } else {
                remote.layout.dead(&id)
            };
            remote
                .store
                .put(&key, serde_json::to_vec_pretty(&rec)?, "application/json")
                .await?;
            // Acked only once its record is stored: a crash here loses nothing.
            d.acker.ack(Default::default()).await?;
            anyhow::Ok(())
        })
        .await?;
    Ok(garbage)
}

/// Completions only drive the progress bar; the fragments are the truth.
async fn drain_completions(remote: &Remote, broker: &Broker) -> anyhow::Result<u64> {
    broker
        .drain(&remote.queues.done, async |d: Delivery| {
            d.acker.ack(Default::default()).await?;
            anyhow::Ok(())
        })
        .await
}

async fn collect(args: CollectArgs) -> anyhow::Result<()> {
    let remote = Remote::open(&args.remote).await?;
    let record = remote.submitted().await?;
    let manifest_url = remote.layout.manifest();
    let bytes = remote.store.get(&manifest_url, 1 << 30).await?;
    let manifest = Manifest::from_reader(std::io::Cursor::new(bytes), ".")
        .map_err(|e| anyhow::anyhow!("{manifest_url}: {e}"))?;
    let ids: HashSet<&str> = manifest
        .entries
        .iter()
        .map(|e| e.scan_id.as_str())
        .collect();
    let broker = remote.broker("collect").await?;
    broker
        .declare(&remote.queues, remote.delivery_limit())
        .await?;

    let poll = Duration::try_from_secs_f64(args.poll).unwrap_or(Duration::from_secs(5));
    let mut progress = args.wait.then(|| Progress::new(manifest.len()));
    let mut garbage = Vec::new();
    let snap = loop {
        garbage.extend(move_dead_letters(&remote, &broker).await?);
        drain_completions(&remote, &broker).await?;
        let snap = remote.snapshot(Some(&ids)).await?;
        let finished = snap.done.len() + snap.dead.len();
        if let Some(p) = &mut progress {
            p.set(finished, snap.failed + snap.dead.len());
        }
        if !args.wait || finished >= manifest.len() {
            break snap;
        }
        tokio::time::sleep(poll).await;
    };
    if let Some(p) = &mut progress {
        p.finish();
    }
    for g in &garbage {
        tracing::warn!(
            "a message on {} was not a job ({}): {:?}",
            remote.queues.dead,
            g.reason,
            g.body.as_deref().unwrap_or("")
        );
    }

    // Fragments, several downloads at a time, in manifest order.
    let wanted: Vec<&str> = manifest
        .entries
        .iter()
        .map(|e| e.scan_id.as_str())
        .filter(|i| snap.done.contains(*i))
        .collect();
    let store = &remote.store;
    let layout = &remote.layout;
    let mut fragments: HashMap<String, ScanRecord> = HashMap::new();
    let mut stream = futures_util::stream::iter(wanted.iter().map(|id| async move {
        let url = layout.fragment(id);
        let bytes = get_again(store, &url).await?;
        let rec = ScanRecord::from_json(&bytes).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        anyhow::Ok(rec)
    }))
    .buffered(16);
    while let Some(rec) = stream.next().await {
        let rec = rec?;
        fragments.insert(rec.scan.scan_id.clone(), rec);
    }
    drop(stream);
    let mut dead: HashMap<String, DeadRecord> = HashMap::new();
    for id in &snap.dead {
        let url = layout.dead(id);
        let bytes = store.get(&url, 1 << 20).await?;
        let rec: DeadRecord = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{url}: not a dead-letter record: {e}"))?;
        dead.insert(id.clone(), rec);
    }

    let classes: Vec<String> = fragments
        .values()
        .map(|r| r.classes.clone())
        .next()
        .unwrap_or_else(|| Label::ALL.iter().map(|l| l.as_str().to_string()).collect());
    let mut pending = 0usize;
    let records: Vec<ScanRecord> = manifest
        .entries
        .iter()
        .map(|e| {
            if let Some(r) = fragments.remove(&e.scan_id) {
                return r;
            }
            let mut row = ScanRow::new(&e.scan_id, e.label.map(|l| l.as_str().to_string()));
            match dead.get(&e.scan_id) {
                Some(d) => row.fail(
                    Fault::Environment,
                    format!("scan {}: dead-lettered: {}", e.scan_id, d.reason),
                ),
                None => {
                    pending += 1;
                    row.fail(
                        Fault::Environment,
                        format!("scan {}: not finished yet (queued or in flight)", e.scan_id),
                    )
                }
            }
            ScanRecord {
                schema: RESULTS_SCHEMA_VERSION,
                classes: classes.clone(),
                key: ResumeKey::default(),
                scan: row,
                lesions: Vec::new(),
            }
        })
        .collect();
    let models: HashSet<&str> = records
        .iter()
        .map(|r| r.key.model_sha256.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    let settings: HashSet<&str> = records
        .iter()
        .map(|r| r.key.settings_sha256.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    if models.len() > 1 || settings.len() > 1 {
        tracing::warn!(
            "the run's results come from {} models and {} settings: workers were configured differently",
            models.len(),
            settings.len()
        );
    }
    let run_info = serde_json::json!({
        "run": record.run,
        "manifest": record.manifest,
        "results": remote.layout.root.to_string(),
        "queue": record.queue,
        "model_sha256": models,
        "settings_sha256": settings,
        "dead_lettered": dead.len(),
        "messages_not_jobs": garbage.len(),
        "complete": pending == 0,
    });

    let refs: Vec<&ScanRecord> = records.iter().collect();
    let written = if args.out.starts_with("s3://") {
        let out = S3Url::parse(&args.out)?;
        let tmp = tempfile::tempdir()?;
        let w = outputs::write_results(
            tmp.path(),
            &refs,
            &classes,
            &run_info,
            !args.no_report,
            None,
        )?;
        upload_folder(&remote, tmp.path(), &out).await?;
        w
    } else {
        let out = PathBuf::from(&args.out);
        std::fs::create_dir_all(&out).map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
        outputs::write_results(&out, &refs, &classes, &run_info, !args.no_report, None)?
    };
    let s = &written.summary;
    super::emit(format_args!(
        "run {}: {} scans ({} errors, {} dead-lettered, {pending} unfinished); tables in {}",
        record.run,
        s.scans,
        s.errors,
        dead.len(),
        args.out
    ))?;
    anyhow::ensure!(
        pending == 0,
        "{pending} of {} scans are not finished: their rows say so; run collect --wait to wait for them",
        manifest.len()
    );
    // As `multir run`: the tables are written, but a cohort with failed
    // scans does not end with status 0.
    anyhow::ensure!(
        s.errors == 0,
        "{} of {} scans failed (status \"error\" in the scans table)",
        s.errors,
        s.scans
    );
    Ok(())
}

/// A GET tried again after a transient failure. A body cut short or
/// failing its checksum is not retried by the SDK; a worker rewriting the
/// same fragment (a redelivered job) while it is read can cause one on
/// stores whose overwrites are not atomic for readers.
async fn get_again(store: &multir_worker::store::Store, url: &S3Url) -> anyhow::Result<Vec<u8>> {
    let mut wait = Duration::from_millis(100);
    for _ in 0..5 {
        match store.get(url, 64 << 20).await {
            Err(e) if e.is_transient() => {
                tracing::debug!("{e}; trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return Ok(other?),
        }
    }
    Ok(store.get(url, 64 << 20).await?)
}

/// Uploads the files of a folder (not recursive: the tables).
async fn upload_folder(remote: &Remote, dir: &Path, to: &S3Url) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            remote
                .store
                .put_file(&to.join(&name), &entry.path())
                .await?;
        }
    }
    Ok(())
}
