//! The worker loop: jobs from the run's queue through the core's per-scan
//! processor, results to S3, then the ack.
//!
//! ```text
//! jobs queue --delivery--> download (S3) --> fetch + decode (blocking pool)
//!            --> network (its own thread) --> quantify + metrics (blocking pool)
//!            --> mask, fragment (S3) --> completion (done queue) --> ack
//! ```
//!
//! The order is what makes every scan count exactly once: the fragment is
//! written before the completion is published and the job is acked last, so
//! a worker that dies at any point leaves the job unacked and the broker
//! delivers it again; the new delivery overwrites the same fragment key
//! (S3 PUTs are atomic), so a scan never has two rows.
//!
//! What happens to a failed scan depends on whose fault it is:
//! - the input's (a corrupt file, a missing object, a bad geometry): an
//!   error row, acked like any result;
//! - the environment's (S3 down, the broker gone, the device failing): the
//!   job is rejected with requeue after a backoff and comes again, counting
//!   toward the queue's delivery limit; on its last allowed delivery the
//!   worker dead-letters it itself with the error as its reason;
//! - a message that is not a job: dead-lettered at once with the reason.
//!
//! The network runs on a thread of its own ([`Engine`]): tch modules are not
//! `Sync`, and a forward pass that takes seconds must not hold up the async
//! runtime, whose tasks keep the AMQP heartbeats going. Several deliveries
//! (the prefetch) are in flight at once, so downloads, decoding and writing
//! overlap the network.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicRejectOptions};
use multir_common::Fault;
use multir_common::io::nifti;
use multir_common::job::{Job, Source};
use multir_common::process::{Finisher, InFlight, Processor, Reader};
use multir_common::results::Status;
use multir_common::results::sink::ScanOutput;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::broker::{self, Broker, Outgoing, Publisher, RunQueues};
use crate::error::{Error, Result};
use crate::health::Metrics;
use crate::message::{COMPLETION_SCHEMA_VERSION, Completion, REASON_HEADER, RUN_HEADER, RunLayout};
use crate::store::{S3Url, Store};

/// The network on a thread of its own, with the stages around it.
#[derive(Clone)]
pub struct Engine {
    tx: std::sync::mpsc::Sender<(InFlight, oneshot::Sender<InFlight>)>,
    reader: Reader,
    finisher: Finisher,
    metrics: Arc<Metrics>,
}

impl Engine {
    /// Moves the processor onto its own thread.
    pub fn start(processor: Processor, metrics: Arc<Metrics>) -> Result<Engine> {
        let reader = processor.reader().clone();
        let finisher = processor.finisher().clone();
        let (tx, rx) = std::sync::mpsc::channel::<(InFlight, oneshot::Sender<InFlight>)>();
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("multir-network".into())
            .spawn(move || {
                for (mut s, reply) in rx {
                    let t = Instant::now();
                    processor.infer(&mut s);
                    m.network_busy(t.elapsed().as_secs_f64());
                    // The task waiting for it may be gone (shutdown).
                    let _ = reply.send(s);
                }
            })?;
        Ok(Engine {
            tx,
            reader,
            finisher,
            metrics,
        })
    }

    /// The four stages of the core's processor on one job whose sources
    /// are local paths or bytes: fetch and decode on the blocking pool, the
    /// network on its thread, quantification and metrics on the pool.
    pub async fn process(&self, job: Job) -> Result<ScanOutput> {
        let reader = self.reader.clone();
        let s = tokio::task::spawn_blocking(move || {
            let mut s = reader.fetch(&job);
            reader.decode(&mut s);
            s
        })
        .await
        .map_err(|e| Error::Invalid(format!("decoding task failed: {e}")))?;
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((s, tx))
            .map_err(|_| Error::Invalid("the network thread has stopped".into()))?;
        let s = rx
            .await
            .map_err(|_| Error::Invalid("the network thread has stopped".into()))?;
        let finisher = self.finisher.clone();
        let out = tokio::task::spawn_blocking(move || finisher.finish(s))
            .await
            .map_err(|e| Error::Invalid(format!("quantification task failed: {e}")))?;
        self.metrics.stages(&out.record.scan.seconds);
        Ok(out)
    }
}

/// Settings of the worker loop.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The run's queues.
    pub queues: RunQueues,
    /// Where the run's results go.
    pub layout: RunLayout,
    /// Unacknowledged deliveries at most (scans in flight in this worker).
    pub prefetch: u16,
    /// The jobs queue's delivery limit: on the delivery numbered this
    /// (0-based), a transient failure dead-letters the job instead of
    /// requeueing it.
    pub delivery_limit: u32,
    /// Objects larger than this are refused before download.
    pub max_object_bytes: u64,
    /// Exit when no job has come for this long and the queue is empty.
    pub exit_when_idle: Option<Duration>,
    /// After a shutdown signal, how long scans in flight may take to
    /// finish before they are returned to the queue.
    pub grace: Duration,
    /// Longest wait before a failed job is requeued (the wait doubles with
    /// each delivery from 1 s).
    pub max_retry_delay: Duration,
    /// This worker's name (in completions and logs).
    pub name: String,
    /// Publish attempts of a completion or dead letter.
    pub publish_attempts: u32,
}

/// What a worker did before it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Scans with an ok row.
    pub ok: u64,
    /// Scans with an error row (the input's fault).
    pub failed: u64,
    /// Deliveries returned to the queue after a transient failure.
    pub retried: u64,
    /// Jobs this worker dead-lettered.
    pub dead: u64,
    /// Scans returned to the queue at shutdown.
    pub returned: u64,
}

/// What became of one delivery.
#[derive(Debug)]
enum Outcome {
    /// A result is stored and announced: ack.
    Done(Status),
    /// Try again later (the environment failed).
    Retry(String),
    /// Give up at once (not a job).
    Dead(String),
}

struct Ctx {
    store: Store,
    publisher: Publisher,
    engine: Engine,
    cfg: WorkerConfig,
    metrics: Arc<Metrics>,
}

/// Consumes the run's jobs until `shutdown` resolves (or, with
/// [`WorkerConfig::exit_when_idle`], until the queue stays empty), then
/// lets the scans in flight finish within the grace period and returns the
/// rest to the queue.
pub async fn run(
    broker: &Broker,
    store: Store,
    engine: Engine,
    cfg: WorkerConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary> {
    let ctx = Arc::new(Ctx {
        store,
        publisher: broker.publisher().await?,
        engine,
        cfg,
        metrics,
    });
    let cfg = &ctx.cfg;
    let mut consumer = broker
        .consume(&cfg.queues.jobs, cfg.prefetch, &cfg.name)
        .await?;
    tracing::info!(
        queue = %cfg.queues.jobs,
        prefetch = cfg.prefetch,
        results = %cfg.layout.root,
        "worker {} consuming",
        cfg.name
    );
    let mut summary = Summary::default();
    let mut tasks: JoinSet<(Outcome, Option<Status>)> = JoinSet::new();
    let mut ackers = std::collections::HashMap::new();
    let mut idle_since = Instant::now();
    tokio::pin!(shutdown);
    let idle_poll = Duration::from_millis(500);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutdown: no new jobs; {} in flight", tasks.len());
                break;
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    ctx.metrics.in_flight(1);
                    let acker = delivery.acker.clone();
                    let handle = tasks.spawn(handle(ctx.clone(), delivery));
                    ackers.insert(handle.id(), acker);
                }
                Some(Err(e)) => {
                    // The subscription rides out cuts that lapin recovers;
                    // an error here means the broker is gone for good: stop
                    // (the orchestrator restarts the pod) and let the broker
                    // requeue what this worker holds.
                    ctx.metrics.broker_error();
                    return Err(e);
                }
                None => return Err(Error::Broker(format!(
                    "the broker cancelled the consumer of {} (queue deleted?)",
                    cfg.queues.jobs
                ))),
            },
            Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                idle_since = Instant::now();
                ctx.metrics.in_flight(-1);
                match joined {
                    Ok((id, (outcome, status))) => {
                        ackers.remove(&id);
                        tally(&mut summary, &outcome, status);
                    }
                    Err(e) => {
                        ackers.remove(&e.id());
                        tracing::error!("scan task failed: {e}");
                    }
                }
            }
            _ = tokio::time::sleep(idle_poll), if cfg.exit_when_idle.is_some() && tasks.is_empty() => {
                let idle = cfg.exit_when_idle.unwrap_or_default();
                if idle_since.elapsed() >= idle {
                    match broker.counts(&cfg.queues).await {
                        Ok(c) if c.jobs_ready == 0 => {
                            tracing::info!("queue {} empty for {:?}: exiting", cfg.queues.jobs, idle);
                            break;
                        }
                        Ok(_) => idle_since = Instant::now(),
                        Err(e) => tracing::warn!("queue count: {e}"),
                    }
                }
            }
        }
    }
    drop(consumer);
    // Let the scans in flight finish; return what cannot finish in time.
    let deadline = tokio::time::sleep(cfg.grace);
    tokio::pin!(deadline);
    while !tasks.is_empty() {
        tokio::select! {
            Some(joined) = tasks.join_next_with_id() => {
                ctx.metrics.in_flight(-1);
                if let Ok((id, (outcome, status))) = joined {
                    ackers.remove(&id);
                    tally(&mut summary, &outcome, status);
                }
            }
            _ = &mut deadline => {
                tracing::warn!("grace period over: returning {} scans to the queue", tasks.len());
                tasks.abort_all();
                for (_, acker) in ackers.drain() {
                    let _ = acker.reject(BasicRejectOptions { requeue: true }).await;
                    summary.returned += 1;
                }
                break;
            }
        }
    }
    tracing::info!(?summary, "worker {} stopped", cfg.name);
    Ok(summary)
}

fn tally(summary: &mut Summary, outcome: &Outcome, status: Option<Status>) {
    match (outcome, status) {
        (Outcome::Done(Status::Ok), _) => summary.ok += 1,
        (Outcome::Done(Status::Error), _) => summary.failed += 1,
        (Outcome::Retry(_), Some(_)) => summary.retried += 1,
        (Outcome::Retry(_), None) | (Outcome::Dead(_), _) => summary.dead += 1,
    }
}

/// One delivery from start to ack. Returns the outcome and, for a retry,
/// `Some` when the job was requeued (`None`: dead-lettered instead).
async fn handle(ctx: Arc<Ctx>, delivery: Delivery) -> (Outcome, Option<Status>) {
    let t = Instant::now();
    if let Some(id) = delivery.properties.message_id() {
        tracing::info!(scan_id = %id, redelivered = delivery.redelivered, "processing");
    }
    let outcome = attempt(&ctx, &delivery).await;
    let m = &ctx.metrics;
    let requeued = match &outcome {
        Outcome::Done(status) => {
            match delivery.acker.ack(BasicAckOptions::default()).await {
                Ok(true) => {}
                Ok(false) => tracing::info!(
                    "ack lost with the connection: the job will come again (its result is stored)"
                ),
                Err(e) => tracing::warn!("ack: {}", redacted(&e)),
            }
            m.job(if *status == Status::Ok { "ok" } else { "error" });
            m.scan_seconds(t.elapsed().as_secs_f64());
            Some(*status)
        }
        Outcome::Retry(reason) => {
            let n = broker::delivery_count(&delivery);
            if n >= ctx.cfg.delivery_limit {
                dead_letter(
                    &ctx,
                    &delivery,
                    &format!("gave up after {} deliveries: {reason}", n + 1),
                )
                .await;
                None
            } else {
                let wait = retry_delay(n, ctx.cfg.max_retry_delay);
                tracing::warn!(
                    "{reason}; delivery {} of {}: requeued in {wait:?}",
                    n + 1,
                    ctx.cfg.delivery_limit + 1
                );
                tokio::time::sleep(wait).await;
                if let Err(e) = delivery
                    .acker
                    .reject(BasicRejectOptions { requeue: true })
                    .await
                {
                    tracing::warn!("reject: {}", redacted(&e));
                }
                m.job("retried");
                Some(Status::Error)
            }
        }
        Outcome::Dead(reason) => {
            dead_letter(&ctx, &delivery, reason).await;
            None
        }
    };
    (outcome, requeued)
}

/// The wait before a failed job goes back to the queue: 1 s, 2 s, 4 s, ...
/// up to `max`, so that a store down for some seconds does not use up the
/// delivery limit at once.
fn retry_delay(previous_deliveries: u32, max: Duration) -> Duration {
    Duration::from_secs(1u64 << previous_deliveries.min(16)).min(max)
}

/// Publishes the job to the run's dead queue with the reason, then acks it;
/// when that publish fails the job is requeued instead, so it is never lost.
async fn dead_letter(ctx: &Ctx, delivery: &Delivery, reason: &str) {
    let q = &ctx.cfg.queues;
    let id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default();
    tracing::error!(message_id = %id, "dead-lettered: {reason}");
    let msg = Outgoing {
        exchange: String::new(),
        routing_key: q.dead.clone(),
        body: delivery.data.clone(),
        message_id: id,
        headers: vec![
            (REASON_HEADER.into(), reason.into()),
            (RUN_HEADER.into(), q.run.clone()),
        ],
    };
    match ctx.publisher.publish(msg, ctx.cfg.publish_attempts).await {
        Ok(()) => {
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            ctx.metrics.job("dead");
        }
        Err(e) => {
            tracing::warn!("dead letter not published ({e}); requeueing the job");
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: true })
                .await;
        }
    }
}

/// Everything up to the completion; the caller acks.
async fn attempt(ctx: &Ctx, delivery: &Delivery) -> Outcome {
    let job = match Job::from_json(&delivery.data) {
        Ok(job) => job,
        Err(e) => return Outcome::Dead(format!("not a multir job: {e}")),
    };
    if let Some(ts) = delivery.properties.timestamp() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        ctx.metrics.queue_wait(now.saturating_sub(*ts) as f64);
    }
    let id = job.scan_id.clone();
    let t = Instant::now();
    let image = match fetch(ctx, &job.image).await {
        Ok(s) => s,
        Err(e) => return Outcome::Retry(format!("scan {id}: {e}")),
    };
    let mask = match &job.mask {
        Some(m) => match fetch(ctx, m).await {
            Ok(s) => Some(s),
            Err(e) => return Outcome::Retry(format!("scan {id}: {e}")),
        },
        None => None,
    };
    let download = t.elapsed().as_secs_f64();
    ctx.metrics.stage("download", download);
    let local = Job { image, mask, ..job };
    let mut out = match ctx.engine.process(local).await {
        Ok(out) => out,
        Err(e) => return Outcome::Retry(format!("scan {id}: {e}")),
    };
    let row = &out.record.scan;
    if row.status == Status::Error && row.fault == Some(Fault::Environment) {
        return Outcome::Retry(row.error.clone().unwrap_or_default());
    }
    // The download is part of reading, as the file read is in `multir run`.
    out.record.scan.seconds.read += download;
    let status = out.record.scan.status;
    if let Err(e) = store_result(ctx, out).await {
        return Outcome::Retry(format!("scan {id}: storing the result: {e}"));
    }
    let completion = Completion {
        schema: COMPLETION_SCHEMA_VERSION,
        run: ctx.cfg.queues.run.clone(),
        scan_id: id.clone(),
        status: status.as_str().to_string(),
        fragment: ctx.cfg.layout.fragment(&id).to_string(),
        worker: ctx.cfg.name.clone(),
    };
    let msg = Outgoing {
        exchange: String::new(),
        routing_key: ctx.cfg.queues.done.clone(),
        body: completion.to_json(),
        message_id: id.clone(),
        headers: vec![(RUN_HEADER.into(), ctx.cfg.queues.run.clone())],
    };
    if let Err(e) = ctx.publisher.publish(msg, ctx.cfg.publish_attempts).await {
        return Outcome::Retry(format!("scan {id}: publishing its completion: {e}"));
    }
    Outcome::Done(status)
}

/// An `s3://` source downloaded into memory. A failure that is the
/// object's own (missing, too large, not a valid URL) becomes an
/// [`Source::Unreadable`] so the processor makes the scan's error row; a
/// transient one is returned as an error so the job is retried.
async fn fetch(ctx: &Ctx, source: &Source) -> Result<Source> {
    let Source::Url { url } = source else {
        return Ok(source.clone());
    };
    let unreadable = |kind: std::io::ErrorKind, e: &Error| Source::Unreadable {
        name: url.clone(),
        io_kind: kind,
        reason: match e {
            // The URL is the source's name: say only what went wrong.
            Error::Store { message, .. } => message.clone(),
            other => other.to_string(),
        },
    };
    let parsed = match S3Url::parse(url) {
        Ok(u) => u,
        Err(e) => return Ok(unreadable(std::io::ErrorKind::InvalidInput, &e)),
    };
    match ctx.store.get(&parsed, ctx.cfg.max_object_bytes).await {
        Ok(bytes) => Ok(Source::Bytes {
            name: url.clone(),
            data: bytes.into(),
        }),
        Err(e) if e.is_transient() => Err(e),
        Err(e @ Error::TooLarge { .. }) => Ok(unreadable(std::io::ErrorKind::InvalidData, &e)),
        Err(e) => Ok(unreadable(std::io::ErrorKind::NotFound, &e)),
    }
}

/// Mask, then fragment (so a fragment never points at a missing mask), then
/// a marker for error rows (so `status` counts failures from a listing).
async fn store_result(ctx: &Ctx, out: ScanOutput) -> Result<()> {
    let t = Instant::now();
    let ScanOutput {
        mut record, mask, ..
    } = out;
    let id = record.scan.scan_id.clone();
    let layout = &ctx.cfg.layout;
    match mask {
        Some(m) => {
            let bytes = tokio::task::spawn_blocking(move || {
                nifti::to_gz_bytes(&m, &nifti::WriteOptions::mask())
            })
            .await
            .map_err(|e| Error::Invalid(format!("mask encoding failed: {e}")))??;
            ctx.store
                .put(&layout.mask(&id), bytes, "application/gzip")
                .await?;
        }
        // A result without a mask must not sit beside a stale one.
        None => ctx.store.delete(&layout.mask(&id)).await?,
    }
    if record.scan.status == Status::Error {
        ctx.store
            .put(&layout.error_marker(&id), Vec::new(), "text/plain")
            .await?;
    }
    let s = &mut record.scan.seconds;
    s.write = t.elapsed().as_secs_f64();
    s.total = s.sum();
    ctx.metrics.stage("write", s.write);
    let json = record.to_json()?;
    ctx.store
        .put(&layout.fragment(&id), json, "application/json")
        .await
}

/// An error's text with any AMQP URL password masked (lapin's errors may
/// carry the URI).
fn redacted(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    text.split_whitespace()
        .map(|w| {
            if w.contains("amqp://") || w.contains("amqps://") {
                broker::redact(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let cap = Duration::from_secs(20);
        let d: Vec<u64> = (0..7).map(|n| retry_delay(n, cap).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 20, 20]);
        assert_eq!(retry_delay(u32::MAX, cap), cap);
    }

    #[test]
    fn a_summary_counts_each_outcome_once() {
        let mut s = Summary::default();
        tally(&mut s, &Outcome::Done(Status::Ok), Some(Status::Ok));
        tally(&mut s, &Outcome::Done(Status::Error), Some(Status::Error));
        tally(&mut s, &Outcome::Retry("x".into()), Some(Status::Error));
        tally(&mut s, &Outcome::Retry("x".into()), None);
        tally(&mut s, &Outcome::Dead("x".into()), None);
        assert_eq!(
            s,
            Summary {
                ok: 1,
                failed: 1,
                retried: 1,
                dead: 2,
                returned: 0
            }
        );
    }
}
