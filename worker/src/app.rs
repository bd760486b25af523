//! `multir-worker run`: its options and the wiring of model, broker, store,
//! health endpoint and worker loop. The binary only parses, sets up
//! logging and signals, and calls [`serve`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use multir_common::cli::{InferArgs, LoadArgs};
use multir_common::process::{Model, ProcessConfig, Processor};

use crate::broker::{Broker, BrokerArgs, RunQueues};
use crate::error::{Error, Result};
use crate::health::{Health, Metrics};
use crate::message::RunLayout;
use crate::store::{S3Url, Store, StoreArgs};
use crate::worker::{self, Engine, Summary, WorkerConfig};

/// Options of `multir-worker run` (every one has an environment fallback).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The run whose jobs to take (as given to `multir submit --run`).
    #[arg(long, env = "MULTIR_RUN")]
    pub run: String,
    /// Where runs keep their results: `s3://bucket/prefix` (the run's
    /// objects go under `<prefix>/runs/<run>/`).
    #[arg(long, env = "MULTIR_RESULTS")]
    pub results: String,
    /// Scans in flight in this worker (AMQP prefetch): 1 is the fair
    /// default; 2-4 overlap downloads and decoding with the network.
    #[arg(long, env = "MULTIR_PREFETCH", default_value_t = 1)]
    pub prefetch: u16,
    /// Exit with status 0 once the queue has been empty for this many
    /// seconds (Kubernetes Job semantics).
    #[arg(long, env = "MULTIR_EXIT_WHEN_IDLE", value_name = "SECONDS")]
    pub exit_when_idle: Option<f64>,
    /// Seconds that scans in flight may take to finish after SIGTERM before
    /// they are returned to the queue (keep it below the pod's
    /// terminationGracePeriodSeconds).
    #[arg(long, env = "MULTIR_GRACE", default_value_t = 120.0)]
    pub grace: f64,
    /// Longest wait, seconds, before a job that failed for a transient
    /// reason goes back to the queue.
    #[arg(long, env = "MULTIR_MAX_RETRY_DELAY", default_value_t = 30.0)]
    pub max_retry_delay: f64,
    /// Address of the health and metrics endpoint (`off` for none).
    #[arg(long, env = "MULTIR_HTTP", default_value = "0.0.0.0:9090")]
    pub http: String,
    /// libtorch intra-op threads (default: the CPUs of the pod's cgroup
    /// quota, not the host's core count).
    #[arg(long, env = "MULTIR_THREADS")]
    pub threads: Option<usize>,
    /// This worker's name in logs, completions and the broker's connection
    /// list (default: the host name, which is the pod name).
    #[arg(long, env = "MULTIR_WORKER_NAME")]
    pub name: Option<String>,
    /// Surface Dice / overlap tolerance in mm (as `multir run`).
    #[arg(long, env = "MULTIR_TOLERANCE_MM", default_value_t = 1.0, value_parser = multir_common::cli::parse_non_negative_mm)]
    pub tolerance_mm: f64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub store: StoreArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub infer: InferArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub load: LoadArgs,
}

/// `multir-worker probe`: the container image's health check.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The worker's endpoint address, as given to `run --http`.
    #[arg(long, env = "MULTIR_HTTP", default_value = "0.0.0.0:9090")]
    pub http: String,
    /// The path to ask for (`/readyz` also needs the model and the broker).
    #[arg(long, default_value = "/healthz")]
    pub path: String,
    /// Seconds to wait for the connection and for the answer.
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
}

/// Succeeds when the worker's endpoint answers `200` on `args.path`.
pub fn probe(args: &ProbeArgs) -> Result<()> {
    let Some(addr) = http_addr(&args.http)? else {
        return Err(Error::Invalid(
            "--http is off: this worker has no endpoint to probe".into(),
        ));
    };
    crate::health::probe(addr, &args.path, seconds("--timeout", args.timeout)?)
}

/// `--http`: an address, or `off` (or empty) for no endpoint.
fn http_addr(http: &str) -> Result<Option<SocketAddr>> {
    match http {
        "off" | "" => Ok(None),
        a => Ok(Some(a.parse().map_err(|e| {
            Error::Invalid(format!(
                "--http {a}: not an address like 0.0.0.0:9090 ({e})"
            ))
        })?)),
    }
}

fn seconds(what: &str, s: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| {
        Error::Invalid(format!(
            "{what} {s} must be a non-negative number of seconds"
        ))
    })
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("worker-{}", std::process::id()))
}

/// Everything `multir-worker run` does: validates the options, loads the
/// model, connects to the store and the broker, declares the run's queues,
/// serves the health endpoint and runs the worker loop until `shutdown`
/// (or an idle queue, with `--exit-when-idle`).
pub async fn serve(
    args: WorkerArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Summary> {
    let queues = RunQueues::new(&args.broker.queue_prefix, &args.run)?;
    let results = S3Url::parse(&args.results)?;
    if args.prefetch == 0 {
        return Err(Error::Invalid("--prefetch must be at least 1".into()));
    }
    let grace = seconds("--grace", args.grace)?;
    let max_retry_delay = seconds("--max-retry-delay", args.max_retry_delay)?;
    let exit_when_idle = args
        .exit_when_idle
        .map(|s| seconds("--exit-when-idle", s))
        .transpose()?;
    let http = http_addr(&args.http)?;
    let cfg = ProcessConfig {
        max_voxels: args.load.max_voxels,
        series_uid: args.load.series_uid.clone(),
        inference: args.infer.config(false),
        tolerance_mm: args.tolerance_mm,
        keep_lesions_outside_lungs: args.infer.keep_lesions_outside_lungs,
        ..ProcessConfig::default()
    };
    cfg.validate()?;
    let name = args.name.clone().unwrap_or_else(host_name);
    let threads = crate::threads::configure(args.threads);

    // The shutdown signal is needed by the loop and the endpoint.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let device = multir_common::device::open(args.infer.device.device)?;
    let metrics = Arc::new(Metrics::new(matches!(device, tch::Device::Cuda(_))));
    let broker = Arc::new(Broker::connect(&args.broker, &name).await?);
    let b = broker.clone();
    let health = Arc::new(Health::new(metrics.clone(), move || b.is_connected()));
    if let Some(addr) = http {
        let (bound, server) = crate::health::serve(addr, health.clone(), stopped()).await?;
        tracing::info!("health and metrics on http://{bound}/");
        tokio::spawn(server);
    }
    let model = tokio::task::spawn_blocking({
        let checkpoint = args.infer.checkpoint.clone();
        move || Model::open(checkpoint.as_deref())
    })
    .await
    .map_err(|e| Error::Invalid(format!("loading the model failed: {e}")))??;
    let processor = Processor::new(&model, device, &cfg)?;
    let engine = Engine::start(processor, metrics.clone())?;
    health.set_model_loaded();
    tracing::info!(threads, model = %model.name, sha256 = %model.sha256, "model loaded");

    let store = Store::connect(&args.store).await?;
    broker.declare(&queues, args.broker.delivery_limit).await?;
    let config = WorkerConfig {
        layout: RunLayout::new(&results, &args.run),
        queues,
        prefetch: args.prefetch,
        delivery_limit: args.broker.delivery_limit,
        max_object_bytes: multir_common::process::max_file_bytes(args.load.max_voxels),
        exit_when_idle,
        grace,
        max_retry_delay,
        name,
        publish_attempts: 10,
    };
    worker::run(&broker, store, engine, config, metrics, stopped()).await
}
