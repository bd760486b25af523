//! `multir status`: where a distributed run stands.
//!
//! Counts come from the run's objects (result fragments, error markers and
//! dead-letter records in S3) and the broker (jobs ready, workers, dead
//! letters not yet collected). AMQP reports only ready messages, so "in
//! flight" is what is neither finished, dead nor queued.

use super::remote::{Remote, now, runtime};
use crate::cli::StatusArgs;

/// A run's counts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunStatus {
    /// The run.
    pub run: String,
    /// Scans in the manifest.
    pub scans: u64,
    /// Scans with a result row (ok or error).
    pub done: u64,
    /// Of those, rows with status error.
    pub failed: u64,
    /// Jobs waiting in the queue.
    pub queued: u64,
    /// Jobs being worked on (neither finished, dead nor queued).
    pub in_flight: u64,
    /// Jobs given up on (collected records plus letters in the dead queue).
    pub dead_lettered: u64,
    /// Workers consuming the run's queue.
    pub workers: u32,
    /// Scans finished per minute since the run was submitted.
    pub scans_per_minute: f64,
    /// Seconds until every scan is finished at that rate.
    pub eta_seconds: Option<f64>,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let remote = Remote::open(&args.remote).await?;
        let s = status(&remote).await?;
        if args.json {
            super::emit(serde_json::to_string_pretty(&s)?)?;
        } else {
            let eta = s
                .eta_seconds
                .map_or("-".to_string(), |e| format!("{:.0} min", e / 60.0));
            super::emit(format_args!(
                "run {}: {} scans: {} done ({} failed), {} in flight, {} queued, \
                 {} dead-lettered; {} workers, {:.1} scans/min, ETA {eta}",
                s.run,
                s.scans,
                s.done,
                s.failed,
                s.in_flight,
                s.queued,
                s.dead_lettered,
                s.workers,
                s.scans_per_minute
            ))?;
        }
        Ok(())
    })
}

/// The run's counts now.
pub async fn status(remote: &Remote) -> anyhow::Result<RunStatus> {
    let record = remote.submitted().await?;
    let snap = remote.snapshot(None).await?;
    let broker = remote.broker("status").await?;
    let counts = broker.counts(&remote.queues).await?;
    let done_n = snap.done.len() as u64;
    let dead = snap.dead.len() as u64 + u64::from(counts.dead);
    let queued = u64::from(counts.jobs_ready);
    let in_flight = record.scans.saturating_sub(done_n + dead + queued);
    let minutes = (now().saturating_sub(record.submitted_at) as f64 / 60.0).max(1.0 / 60.0);
    let rate = done_n as f64 / minutes;
    let remaining = record.scans.saturating_sub(done_n + dead);
    Ok(RunStatus {
        run: record.run,
        scans: record.scans,
        done: done_n,
        failed: snap.failed as u64,
        queued,
        in_flight,
        dead_lettered: dead,
        workers: counts.consumers,
        scans_per_minute: rate,
        eta_seconds: (rate > 0.0).then(|| remaining as f64 / rate * 60.0),
    })
}
