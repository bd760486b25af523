//! What `submit`, `status` and `collect` share: the run's place in S3 and
//! on the broker, and `run.json`, the record `submit` leaves of a run.

use std::collections::HashSet;

use multir_worker::broker::{Broker, RunQueues};
use multir_worker::message::RunLayout;
use multir_worker::store::{S3Url, Store};

use crate::cli::RemoteArgs;

/// Version of `run.json`'s layout.
pub const RUN_SCHEMA_VERSION: u32 = 1;

/// `runs/<run>/run.json`: what `submit` recorded about the run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    /// [`RUN_SCHEMA_VERSION`].
    pub schema: u32,
    /// The run.
    pub run: String,
    /// The manifest as the user named it.
    pub manifest: String,
    /// SHA-256 of the manifest as submitted (with URLs resolved): a rerun
    /// of `submit` must bring the same cohort.
    pub manifest_sha256: String,
    /// Rows of the manifest.
    pub scans: u64,
    /// The jobs queue.
    pub queue: String,
    /// When the run was first submitted (seconds since the Unix epoch).
    pub submitted_at: u64,
}

/// A run's queues, its objects, and clients for both.
pub struct Remote {
    pub queues: RunQueues,
    pub layout: RunLayout,
    pub store: Store,
    args: RemoteArgs,
}

impl Remote {
    /// Checks the names and connects to the store (the broker is
    /// connected only by the commands that need it).
    pub async fn open(args: &RemoteArgs) -> anyhow::Result<Remote> {
        let queues = RunQueues::new(&args.broker.queue_prefix, &args.run)?;
        let results = S3Url::parse(&args.results)?;
        let layout = RunLayout::new(&results, &args.run);
        let store = Store::connect(&args.store).await?;
        Ok(Remote {
            queues,
            layout,
            store,
            args: args.clone(),
        })
    }

    /// Connects to the broker (auto-recovering).
    pub async fn broker(&self, role: &str) -> anyhow::Result<Broker> {
        Ok(Broker::connect(
            &self.args.broker,
            &format!("multir {role} {}", self.args.run),
        )
        .await?)
    }

    /// The run's delivery limit.
    pub fn delivery_limit(&self) -> u32 {
        self.args.broker.delivery_limit
    }

    /// `run.json`, or `None` when the run was never submitted.
    pub async fn record(&self) -> anyhow::Result<Option<RunRecord>> {
        let url = self.layout.run_json();
        if !self.store.exists(&url).await? {
            return Ok(None);
        }
        let bytes = self.store.get(&url, 1 << 20).await?;
        let r: RunRecord = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{url}: not a multir run record: {e}"))?;
        anyhow::ensure!(
            r.schema == RUN_SCHEMA_VERSION,
            "{url}: run record version {}, this build reads version {RUN_SCHEMA_VERSION}",
            r.schema
        );
        Ok(Some(r))
    }

    /// The run record, or an error saying the run was never submitted.
    pub async fn submitted(&self) -> anyhow::Result<RunRecord> {
        self.record().await?.ok_or_else(|| {
            anyhow::anyhow!(
                "run {:?} has no record at {}: submit it first (multir submit --run {})",
                self.args.run,
                self.layout.run_json(),
                self.args.run
            )
        })
    }

    /// The run's finished, failed and dead-lettered scans; with `ids`, only
    /// those scans (the manifest's) are counted.
    pub async fn snapshot(&self, ids: Option<&HashSet<&str>>) -> anyhow::Result<Snapshot> {
        let wanted = |i: &str| ids.is_none_or(|ids| ids.contains(i));
        let done: HashSet<String> = self
            .ids_under(&self.layout.fragments(), ".json")
            .await?
            .into_iter()
            .filter(|i| wanted(i))
            .collect();
        let dead: HashSet<String> = self
            .ids_under(&self.layout.dead_prefix(), ".json")
            .await?
            .into_iter()
            .filter(|i| wanted(i) && !done.contains(i))
            .collect();
        let failed = self
            .ids_under(&self.layout.errors(), "")
            .await?
            .iter()
            .filter(|i| done.contains(*i))
            .count();
        Ok(Snapshot { done, dead, failed })
    }

    /// Scan ids with an object under `prefix`, the key's `suffix` removed.
    pub async fn ids_under(&self, prefix: &S3Url, suffix: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .store
            .list(prefix)
            .await?
            .into_iter()
            .filter_map(|k| k.strip_suffix(suffix).map(str::to_string))
            .filter(|k| !k.contains('/'))
            .collect())
    }
}

/// What a run's objects say about its scans (three listings, no object
/// read): `status` and `collect` count from it.
pub struct Snapshot {
    /// Scans with a result fragment.
    pub done: HashSet<String>,
    /// Scans with a dead-letter record and no fragment.
    pub dead: HashSet<String>,
    /// Scans of `done` whose row is an error (an error marker).
    pub failed: usize,
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A tokio runtime for one command (the other commands need none).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}
