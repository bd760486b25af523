//! RabbitMQ: the per-run queues, publishing with confirms, consuming,
//! reconnecting.
//!
//! Each run has its own queues, all durable quorum queues:
//!
//! ```text
//! <prefix>.<run>.jobs   one message per scan: the core's Job as JSON
//!                       x-queue-type quorum, x-delivery-limit N,
//!                       x-dead-letter-exchange <prefix>.dlx,
//!                       x-dead-letter-routing-key <prefix>.<run>.dead,
//!                       x-dead-letter-strategy at-least-once,
//!                       x-overflow reject-publish
//! <prefix>.<run>.dead   jobs given up on, with their reason
//! <prefix>.<run>.done   one completion per finished scan (progress)
//! <prefix>.dlx          direct exchange feeding the dead queues
//! ```
//!
//! The same arguments work on RabbitMQ 3.10 (these machines) and 3.13 /
//! 4.x (production): the delivery limit is always set (4.0 defaults it to
//! 20), and at-least-once dead-lettering needs `reject-publish`. Retries
//! use `basic.reject` with requeue, which counts toward the limit on every
//! version (`basic.nack` stops counting on 4.3).
//!
//! Connections recover by themselves (lapin's auto-recovery, with the
//! backoff of [`BrokerArgs`]): channels, QoS, queues and consumers are
//! replayed. An ack for a delivery received before the cut returns
//! `Ok(false)`; the broker then delivers the job again, which the
//! idempotent results make harmless. The AMQP URL's password never appears
//! in a log line or an error.

use crate::error::{Error, Result};

/// How to reach the broker (flags with environment fallbacks).
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// AMQP URL, `amqp://user:password@host:5672/vhost` (or `amqps://`).
    #[arg(
        long,
        env = "MULTIR_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Queue and exchange names start with this.
    #[arg(long, env = "MULTIR_QUEUE_PREFIX", default_value = "multir")]
    pub queue_prefix: String,
    /// Deliveries of one job before it is dead-lettered (quorum queue
    /// `x-delivery-limit`).
    #[arg(long, env = "MULTIR_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,
    /// Reconnection attempts after the connection drops.
    #[arg(long, env = "MULTIR_AMQP_RECONNECT_ATTEMPTS", default_value_t = 60)]
    pub reconnect_attempts: usize,
    /// Longest wait between reconnection attempts, seconds.
    #[arg(long, env = "MULTIR_AMQP_RECONNECT_MAX_DELAY", default_value_t = 10.0)]
    pub reconnect_max_delay_s: f64,
}

/// The names of one run's queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunQueues {
    /// The run.
    pub run: String,
    /// Jobs waiting or in flight.
    pub jobs: String,
    /// Jobs given up on.
    pub dead: String,
    /// Completions.
    pub done: String,
    /// The dead-letter exchange (shared by all runs of the prefix).
    pub dlx: String,
}

impl RunQueues {
    /// The queues of `run` under `prefix`. Run names are checked like scan
    /// ids (letters, digits, `-`, `_`, `.`; no `/`, no `..`).
    pub fn new(prefix: &str, run: &str) -> Result<RunQueues> {
        todo!("{prefix} {run}")
    }
}

/// Messages in a run's queues (from passive declares: AMQP counts ready
/// messages only; unacknowledged ones are in flight).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    /// Jobs ready to be delivered.
    pub jobs_ready: u32,
    /// Consumers on the jobs queue (workers).
    pub consumers: u32,
    /// Dead letters not yet collected.
    pub dead: u32,
    /// Completions not yet consumed.
    pub done: u32,
}

/// A connection to the broker.
pub struct Broker {
    conn: lapin::Connection,
}

impl Broker {
    /// Connects with auto-recovery; `name` is shown in the broker's
    /// connection list.
    pub async fn connect(args: &BrokerArgs, name: &str) -> Result<Broker> {
        todo!("{} {name}", redact(&args.amqp_url))
    }

    /// Declares the run's queues and the dead-letter exchange (idempotent;
    /// every process declares them the same way).
    pub async fn declare(&self, queues: &RunQueues, delivery_limit: u32) -> Result<()> {
        todo!("{queues:?} {delivery_limit} {:?}", self.conn.status())
    }

    /// A channel in confirm mode for publishing.
    pub async fn publisher(&self) -> Result<Publisher> {
        todo!()
    }

    /// Starts consuming `queue` with manual acks and `prefetch` unacked
    /// deliveries at most.
    pub async fn consume(&self, queue: &str, prefetch: u16, tag: &str) -> Result<lapin::Consumer> {
        todo!("{queue} {prefetch} {tag}")
    }

    /// Takes one message from `queue` without registering a consumer
    /// (`basic.get`, manual ack), for draining a queue; `None` when empty.
    pub async fn get(&self, queue: &str) -> Result<Option<lapin::message::Delivery>> {
        todo!("{queue}")
    }

    /// Message and consumer counts of the run's queues.
    pub async fn counts(&self, queues: &RunQueues) -> Result<QueueCounts> {
        todo!("{queues:?}")
    }

    /// Whether the connection is up (not recovering, not closed).
    pub fn is_connected(&self) -> bool {
        todo!()
    }

    /// Deletes the run's queues (tests and `--purge`).
    pub async fn delete_run(&self, queues: &RunQueues) -> Result<()> {
        todo!("{queues:?}")
    }
}

/// A confirm-mode channel.
pub struct Publisher {
    channel: lapin::Channel,
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Exchange (`""`: the default exchange, routing straight to a queue).
    pub exchange: String,
    /// Routing key (the queue's name on the default exchange).
    pub routing_key: String,
    /// The body (JSON).
    pub body: Vec<u8>,
    /// The AMQP `message_id` (the scan id).
    pub message_id: String,
    /// String headers (`x-multir-run`, `x-multir-reason`).
    pub headers: Vec<(String, String)>,
}

impl Publisher {
    /// Publishes persistent messages with publisher confirms, keeping at
    /// most `window` unconfirmed. A message that is nacked, or whose
    /// confirm is lost with the connection, is published again (up to
    /// `attempts` times); returns how many were confirmed. Memory is bounded
    /// by the window, not by the number of messages.
    pub async fn publish_all<I>(&self, messages: I, window: usize, attempts: u32) -> Result<u64>
    where
        I: Iterator<Item = Result<Outgoing>>,
    {
        let _ = (messages, window, attempts, &self.channel);
        todo!()
    }

    /// Publishes one persistent message and waits for its confirm
    /// (retrying as [`Publisher::publish_all`] does).
    pub async fn publish(&self, message: Outgoing, attempts: u32) -> Result<()> {
        todo!("{message:?} {attempts}")
    }
}

/// How many times the broker has delivered this message before
/// (`x-delivery-count` of quorum queues; 0 on the first delivery).
pub fn delivery_count(delivery: &lapin::message::Delivery) -> u32 {
    let _ = delivery;
    todo!()
}

/// A string header of a delivery.
pub fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    let _ = (delivery, name);
    todo!()
}

/// Why a message was dead-lettered: our `x-multir-reason` header when a
/// worker gave up on it, else the broker's `x-first-death-reason`
/// (`delivery_limit`, `rejected`, ...).
pub fn dead_reason(delivery: &lapin::message::Delivery) -> String {
    let _ = delivery;
    todo!()
}

/// The URL with its password replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    todo!("{}", url.len())
}

#[allow(dead_code)]
fn _unused(_: Error) {}
