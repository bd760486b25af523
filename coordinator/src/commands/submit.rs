//! `multir submit`: a cohort's jobs onto the run's queue.
//!
//! 1. Read the manifest (a file or an `s3://` object) row by row, check it
//!    as `multir run` does and resolve every image and mask to an `s3://`
//!    URL, writing the resolved copy to a temporary file: nothing is
//!    published unless the whole manifest is sound, and memory does not
//!    grow with the cohort (only the scan ids are kept, to refuse
//!    duplicates).
//! 2. Record the run (`run.json`, `manifest.csv` under the run's prefix);
//!    a run already recorded with another manifest is refused.
//! 3. Publish one job per scan that has no result fragment yet, persistent,
//!    with publisher confirms; what is not confirmed is published again.
//!
//! Submitting the same run again therefore publishes only the unfinished
//! scans (resume). Jobs still queued from the first submission are then on
//! the queue twice; each is processed into the same fragment, so the
//! tables still have one row per scan.

use std::io::{BufReader, Seek};

use multir_common::job::{Job, Source};
use multir_common::manifest::{self, Rows};
use multir_common::process::sha256_hex;
use multir_worker::broker::Outgoing;
use multir_worker::message::RUN_HEADER;
use multir_worker::store::S3Url;

use super::remote::{RUN_SCHEMA_VERSION, Remote, RunRecord, now, runtime};
use crate::cli::SubmitArgs;

/// Manifests larger than this are refused (a 100 000-scan manifest is
/// about 10 MB).
const MAX_MANIFEST_BYTES: u64 = 1 << 30;

pub fn run(args: SubmitArgs) -> anyhow::Result<()> {
    runtime()?.block_on(submit(args))
}

/// Where relative paths of the manifest start: `--base`, else the
/// manifest's own S3 folder.
fn base_of(args: &SubmitArgs) -> anyhow::Result<Option<S3Url>> {
    if let Some(b) = &args.base {
        let mut u = S3Url::parse(b)?;
        if !u.key.is_empty() && !u.key.ends_with('/') {
            u.key.push('/');
        }
        return Ok(Some(u));
    }
    if args.manifest.starts_with("s3://") {
        let u = S3Url::parse(&args.manifest)?;
        let folder = match u.key.rfind('/') {
            Some(i) => u.key[..=i].to_string(),
            None => String::new(),
        };
        return Ok(Some(S3Url {
            bucket: u.bucket,
            key: folder,
        }));
    }
    Ok(None)
}

/// A manifest path as an object URL.
fn resolve(path: &str, base: Option<&S3Url>, line_hint: &str) -> anyhow::Result<String> {
    if path.starts_with("s3://") {
        return Ok(S3Url::parse(path)?.to_string());
    }
    anyhow::ensure!(
        !path.starts_with('/') && !path.contains("://"),
        "{line_hint}: {path:?} is not an s3:// URL or a path relative to the manifest: \
         workers read scans from S3"
    );
    let base = base.ok_or_else(|| {
        anyhow::anyhow!(
            "{line_hint}: {path:?} is relative, but the manifest is a local file: \
             give --base s3://bucket/prefix/ (where the relative paths start)"
        )
    })?;
    Ok(base.join(path).to_string())
}

async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let remote = Remote::open(&args.remote).await?;
    let base = base_of(&args)?;

    // 1. Read, check and resolve into a temporary copy.
    let source: Box<dyn std::io::Read + Send> = if args.manifest.starts_with("s3://") {
        let url = S3Url::parse(&args.manifest)?;
        let bytes = remote.store.get(&url, MAX_MANIFEST_BYTES).await?;
        Box::new(std::io::Cursor::new(bytes))
    } else {
        let f = std::fs::File::open(&args.manifest)
            .map_err(|e| anyhow::anyhow!("{}: {e}", args.manifest))?;
        Box::new(BufReader::new(f))
    };
    let mut copy = tempfile::tempfile()?;
    let mut scans = 0u64;
    {
        let mut w = csv::Writer::from_writer(std::io::BufWriter::new(&mut copy));
        w.write_record(manifest::COLUMNS)?;
        let rows = Rows::new(source).map_err(|e| anyhow::anyhow!("{}: {e}", args.manifest))?;
        for row in rows {
            let e = row.map_err(|e| anyhow::anyhow!("{}: {e}", args.manifest))?;
            let hint = format!("{}: scan {:?}", args.manifest, e.scan_id);
            let image = resolve(&e.image.to_string_lossy(), base.as_ref(), &hint)?;
            let mask = e
                .mask
                .as_ref()
                .map(|m| resolve(&m.to_string_lossy(), base.as_ref(), &hint))
                .transpose()?;
            w.write_record([
                e.scan_id.as_str(),
                &image,
                e.label.map_or("", |l| l.as_str()),
                mask.as_deref().unwrap_or(""),
            ])?;
            scans += 1;
        }
        w.flush()?;
    }
    anyhow::ensure!(scans > 0, "{}: the manifest lists no scans", args.manifest);
    copy.rewind()?;
    let mut resolved = Vec::new();
    std::io::Read::read_to_end(&mut copy, &mut resolved)?;
    let manifest_sha256 = sha256_hex(&resolved);

    // 2. Record the run (or check it is the same one).
    let record = match remote.record().await? {
        Some(r) => {
            anyhow::ensure!(
                r.manifest_sha256 == manifest_sha256,
                "run {:?} was submitted with another manifest ({}, {} scans): \
                 choose another --run, or submit the same manifest to resume it",
                r.run,
                r.manifest,
                r.scans
            );
            r
        }
        None => RunRecord {
            schema: RUN_SCHEMA_VERSION,
            run: remote.queues.run.clone(),
            manifest: args.manifest.clone(),
            manifest_sha256,
            scans,
            queue: remote.queues.jobs.clone(),
            submitted_at: now(),
        },
    };
    remote
        .store
        .put(&remote.layout.manifest(), resolved.clone(), "text/csv")
        .await?;
    remote
        .store
        .put(
            &remote.layout.run_json(),
            serde_json::to_vec_pretty(&record)?,
            "application/json",
        )
        .await?;
    drop(resolved);

    // 3. Publish the unfinished scans.
    let finished: std::collections::HashSet<String> = remote
        .ids_under(&remote.layout.fragments(), ".json")
        .await?
        .into_iter()
        .collect();
    let broker = remote.broker("submit").await?;
    broker
        .declare(&remote.queues, remote.delivery_limit())
        .await?;
    let publisher = broker.publisher().await?;
    copy.rewind()?;
    let run = remote.queues.run.clone();
    let queue = remote.queues.jobs.clone();
    let skipped = std::cell::Cell::new(0u64);
    let reader = csv::Reader::from_reader(BufReader::new(copy));
    let messages = reader.into_records().filter_map(|r| {
        let r = match r {
            Ok(r) => r,
            Err(e) => return Some(Err(multir_worker::Error::Invalid(e.to_string()))),
        };
        let id = r.get(0).unwrap_or("").to_string();
        if finished.contains(&id) {
            skipped.set(skipped.get() + 1);
            return None;
        }
        let label = r
            .get(2)
            .filter(|s| !s.is_empty())
            .and_then(|s| s.parse().ok());
        let job = Job {
            scan_id: id.clone(),
            image: Source::Url {
                url: r.get(1).unwrap_or("").to_string(),
            },
            mask: r
                .get(3)
                .filter(|s| !s.is_empty())
                .map(|m| Source::Url { url: m.to_string() }),
            label,
        };
        Some(
            job.to_json()
                .map_err(multir_worker::Error::from)
                .map(|body| Outgoing {
                    exchange: String::new(),
                    routing_key: queue.clone(),
                    body,
                    message_id: id,
                    headers: vec![(RUN_HEADER.into(), run.clone())],
                }),
        )
    });
    let t = std::time::Instant::now();
    let published = publisher
        .publish_all(messages, args.window, args.publish_attempts)
        .await?;
    let secs = t.elapsed().as_secs_f64();
    super::emit(format_args!(
        "run {}: published {published} jobs to {} in {secs:.1} s ({:.0} jobs/s); \
         {} of {scans} scans already have results",
        record.run,
        remote.queues.jobs,
        published as f64 / secs.max(1e-9),
        skipped.get()
    ))?;
    Ok(())
}
