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
//! backoff of [`BrokerArgs`]): channels, confirm mode, QoS (prefetch),
//! queues and consumers are replayed. [`Subscription::next`] and
//! [`Publisher::publish_all`] wait for the recovery and carry on; confirms
//! pending at the cut are lost, so their messages are published again
//! (a message may then be in the queue twice). An ack for a delivery
//! received before the cut returns `Ok(false)` (its channel is gone); the
//! broker then delivers the job again, which the idempotent results make
//! harmless.
//!
//! lapin 4.12.3 can also stall in recovery: when the socket fails in the
//! middle of a write (a TCP reset while publishing at full speed; measured
//! here through a proxy whose connections are dropped), the connection
//! stays `Reconnecting` for good and never tries to reconnect. Every wait
//! that needs the connection back is therefore bounded by
//! [`BrokerArgs::recovery_timeout_s`]; past it the operation fails and the
//! caller connects again (the worker exits and is restarted; `submit` can
//! publish again, duplicates being harmless). A cut announced by the
//! broker (`CONNECTION_FORCED`, as `rabbitmqctl close_connection` or a
//! broker shutdown sends) recovered in every run here.
//!
//! The AMQP URL's password never appears in a log line or an error.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, ConnectionProperties, ExchangeKind};

use crate::error::{Error, Result};

/// A message as delivered (body, properties, and the acker to settle it).
pub type Delivery = lapin::message::Delivery;

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
    /// Connection attempts, at start-up and after the connection drops,
    /// before giving up (lapin retries the TCP connection with this
    /// backoff at start-up too, so an unreachable broker fails only after
    /// all of them).
    #[arg(long, env = "MULTIR_AMQP_RECONNECT_ATTEMPTS", default_value_t = 60)]
    pub reconnect_attempts: usize,
    /// Longest wait between reconnection attempts, seconds (the waits
    /// start at 0.1 s and double, with jitter).
    #[arg(long, env = "MULTIR_AMQP_RECONNECT_MAX_DELAY", default_value_t = 10.0)]
    pub reconnect_max_delay_s: f64,
    /// Longest time, seconds, that publishing or consuming waits for a lost
    /// connection to come back before failing. Needed because lapin 4.12.3
    /// can stall in recovery for good (see the module docs); the worker
    /// then exits and is restarted, `submit` reports the error.
    #[arg(long, env = "MULTIR_AMQP_RECOVERY_TIMEOUT", default_value_t = 120.0)]
    pub recovery_timeout_s: f64,
}

/// Longest run name and queue prefix, in bytes. AMQP names are at most 255
/// bytes; two of these plus the dots and `.jobs` stay well below.
pub const MAX_NAME_BYTES: usize = 100;

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
    /// The queues of `run` under `prefix`. Run names and the prefix are
    /// checked like scan ids, more strictly: ASCII letters, digits, `-`,
    /// `_`, `.`; no `..`; at most [`MAX_NAME_BYTES`] bytes. The prefix may
    /// not be `amq` or start with `amq.` (RabbitMQ reserves those names).
    pub fn new(prefix: &str, run: &str) -> Result<RunQueues> {
        check_name("queue prefix", prefix)?;
        if prefix == "amq" || prefix.starts_with("amq.") {
            return Err(Error::Invalid(format!(
                "queue prefix {prefix:?}: names starting with \"amq.\" are reserved by RabbitMQ"
            )));
        }
        check_name("run name", run)?;
        Ok(RunQueues {
            run: run.to_string(),
            jobs: format!("{prefix}.{run}.jobs"),
            dead: format!("{prefix}.{run}.dead"),
            done: format!("{prefix}.{run}.done"),
            dlx: format!("{prefix}.dlx"),
        })
    }
}

/// Why `name` cannot be part of a queue name, if it cannot. Names end up
/// in AMQP short strings, object keys and file names, hence the small
/// alphabet.
fn check_name(what: &str, name: &str) -> Result<()> {
    let bad = |why: String| Err(Error::Invalid(format!("{what} {name:?}: {why}")));
    if name.is_empty() {
        return bad("empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return bad(format!(
            "{} bytes long, more than {MAX_NAME_BYTES}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return bad(format!(
            "contains {c:?} (allowed: ASCII letters, digits, '-', '_', '.')"
        ));
    }
    if name.contains("..") || name == "." {
        return bad("'.' and '..' are not usable names".into());
    }
    Ok(())
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
    /// How long operations wait for a lost connection to come back.
    recovery_timeout: Duration,
}

impl Broker {
    /// Connects with auto-recovery; `name` is shown in the broker's
    /// connection list (client property `connection_name`). Must be called
    /// inside a tokio runtime (lapin runs on the current one).
    ///
    /// The reconnection backoff (exponential from 0.1 s, at most
    /// `reconnect_max_delay_s` between tries, `reconnect_attempts` tries,
    /// with jitter) applies to the first connection too: an unreachable
    /// broker is reported only after all attempts.
    pub async fn connect(args: &BrokerArgs, name: &str) -> Result<Broker> {
        let url = &args.amqp_url;
        // Parse here rather than in lapin: the parser's "Invalid URL: '...'"
        // message quotes the whole URL, password included.
        let uri: lapin::uri::AMQPUri = url.parse().map_err(|e: String| {
            Error::Broker(format!(
                "cannot parse the AMQP URL {}: {}",
                redact(url),
                e.replace(url.as_str(), &redact(url))
            ))
        })?;
        let max_delay = seconds("reconnect max delay", args.reconnect_max_delay_s)?;
        let recovery_timeout = seconds("recovery timeout", args.recovery_timeout_s)?;
        let min_delay = Duration::from_millis(100).min(max_delay);
        let attempts = args.reconnect_attempts;
        let props = ConnectionProperties::default()
            .with_connection_name(name.into())
            // Explicit backoff: lapin's default retries nothing, and
            // enable_auto_recover's own default (16 tries) ignores our flags.
            .configure_backoff(move |b| {
                b.with_min_delay(min_delay)
                    .with_max_delay(max_delay)
                    .with_max_times(attempts)
                    .with_jitter()
            })
            .enable_auto_recover();
        // lapin's error texts (I/O, protocol, authentication) do not quote
        // the URI; redact() is used for the host we name ourselves.
        let conn = lapin::Connection::connect_uri(uri, props)
            .await
            .map_err(|e| Error::Broker(format!("cannot connect to {}: {e}", redact(url))))?;
        Ok(Broker {
            conn,
            recovery_timeout,
        })
    }

    /// A fresh channel: a failed declare closes its channel, so each group
    /// of operations that may fail gets its own.
    async fn channel(&self, what: &str) -> Result<lapin::Channel> {
        self.conn
            .create_channel()
            .await
            .map_err(|e| Error::Broker(format!("cannot open a channel ({what}): {e}")))
    }

    /// Declares the run's queues and the dead-letter exchange (idempotent;
    /// every process declares them the same way). A queue that exists with
    /// other arguments (another delivery limit, not a quorum queue) is an
    /// error naming the queue: RabbitMQ refuses to change a queue's
    /// arguments, so the run must be deleted or declared as it was.
    pub async fn declare(&self, queues: &RunQueues, delivery_limit: u32) -> Result<()> {
        let limit = i32::try_from(delivery_limit)
            .ok()
            .filter(|&l| l >= 1)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "delivery limit {delivery_limit}: expected 1 to {}",
                    i32::MAX
                ))
            })?;

        let ch = self.channel("declaring the dead-letter exchange").await?;
        ch.exchange_declare(
            short(&queues.dlx, "name")?,
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_error("exchange", &queues.dlx, e))?;
        close(ch).await;

        let quorum = || {
            let mut t = FieldTable::default();
            t.insert("x-queue-type".into(), long_string("quorum"));
            t
        };
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };

        let ch = self.channel("declaring the dead queue").await?;
        ch.queue_declare(short(&queues.dead, "name")?, durable, quorum())
            .await
            .map_err(|e| declare_error("queue", &queues.dead, e))?;
        ch.queue_bind(
            short(&queues.dead, "name")?,
            short(&queues.dlx, "name")?,
            short(&queues.dead, "name")?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            Error::Broker(format!(
                "cannot bind queue {} to exchange {}: {e}",
                queues.dead, queues.dlx
            ))
        })?;
        close(ch).await;

        let ch = self.channel("declaring the done queue").await?;
        ch.queue_declare(short(&queues.done, "name")?, durable, quorum())
            .await
            .map_err(|e| declare_error("queue", &queues.done, e))?;
        close(ch).await;

        let mut args = quorum();
        args.insert("x-delivery-limit".into(), AMQPValue::LongInt(limit));
        args.insert("x-dead-letter-exchange".into(), long_string(&queues.dlx));
        args.insert(
            "x-dead-letter-routing-key".into(),
            long_string(&queues.dead),
        );
        // At-least-once dead-lettering (no job lost between the queues)
        // requires reject-publish; with drop-head RabbitMQ silently falls
        // back to at-most-once.
        args.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        args.insert("x-overflow".into(), long_string("reject-publish"));
        let ch = self.channel("declaring the jobs queue").await?;
        ch.queue_declare(short(&queues.jobs, "name")?, durable, args)
            .await
            .map_err(|e| declare_error("queue", &queues.jobs, e))?;
        close(ch).await;
        Ok(())
    }

    /// A channel in confirm mode for publishing. Confirm mode is replayed
    /// when the connection recovers.
    pub async fn publisher(&self) -> Result<Publisher> {
        let channel = self.channel("publishing").await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| Error::Broker(format!("cannot enable publisher confirms: {e}")))?;
        Ok(Publisher {
            channel,
            watch: Watch {
                conn: self.conn.status().clone(),
                limit: self.recovery_timeout,
            },
        })
    }

    /// Starts consuming `queue` on a channel of its own, with manual acks
    /// and `prefetch` unacknowledged deliveries at most (`basic.qos`, per
    /// consumer; replayed with the consumer after a recovery). `tag` names
    /// the consumer (empty: the broker picks one).
    pub async fn consume(&self, queue: &str, prefetch: u16, tag: &str) -> Result<Subscription> {
        if prefetch == 0 {
            // 0 means "unlimited" in AMQP: a worker would take the whole
            // queue into memory.
            return Err(Error::Invalid(
                "prefetch 0 would be unlimited; expected at least 1".into(),
            ));
        }
        let queue_name = short(queue, "queue name")?;
        let tag = short(tag, "consumer tag")?;
        let channel = self.channel("consuming").await?;
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await
            .map_err(|e| Error::Broker(format!("cannot set prefetch {prefetch}: {e}")))?;
        let consumer = channel
            .basic_consume(
                queue_name,
                tag,
                BasicConsumeOptions {
                    no_ack: false,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| Error::Broker(format!("cannot consume queue {queue}: {e}")))?;
        Ok(Subscription {
            channel,
            consumer,
            watch: Watch {
                conn: self.conn.status().clone(),
                limit: self.recovery_timeout,
            },
            queue: queue.to_string(),
        })
    }

    /// Takes every message now in `queue`, one at a time with `basic.get`
    /// on one channel (no consumer is registered, so nothing is delivered
    /// after the queue is empty), and hands each to `each`, which acks it
    /// once it has dealt with it. Returns how many there were. Messages
    /// `each` did not ack go back to the queue when the channel closes.
    pub async fn drain<E, F>(&self, queue: &str, mut each: F) -> std::result::Result<u64, E>
    where
        E: From<Error>,
        F: AsyncFnMut(lapin::message::Delivery) -> std::result::Result<(), E>,
    {
        let channel = self.channel("draining a queue").await?;
        let mut n = 0;
        let result = loop {
            let got = channel
                .basic_get(
                    queue.into(),
                    lapin::options::BasicGetOptions { no_ack: false },
                )
                .await
                .map_err(|e| Error::Broker(format!("getting a message from {queue}: {e}")));
            match got {
                Ok(Some(m)) => {
                    if let Err(e) = each(m.delivery).await {
                        break Err(e);
                    }
                    n += 1;
                }
                Ok(None) => break Ok(n),
                Err(e) => break Err(e.into()),
            }
        };
        // Channels are not closed on drop; a drain per poll must not leak one.
        let _ = channel.close(200, "drained".into()).await;
        result
    }

    /// Message and consumer counts of the run's queues. A missing queue is
    /// an error (the run was never declared, or was deleted).
    pub async fn counts(&self, queues: &RunQueues) -> Result<QueueCounts> {
        let ch = self.channel("counting messages").await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let mut counts = QueueCounts::default();
        for (name, is_jobs) in [
            (&queues.jobs, true),
            (&queues.dead, false),
            (&queues.done, false),
        ] {
            let q = ch
                .queue_declare(short(name, "name")?, passive, FieldTable::default())
                .await
                .map_err(|e| match amqp_soft_error(&e) {
                    Some(AMQPSoftError::NOTFOUND) => Error::Broker(format!(
                        "queue {name} does not exist (run {} not declared, or deleted)",
                        queues.run
                    )),
                    _ => Error::Broker(format!("cannot count queue {name}: {e}")),
                })?;
            if is_jobs {
                counts.jobs_ready = q.message_count();
                counts.consumers = q.consumer_count();
            } else if *name == queues.dead {
                counts.dead = q.message_count();
            } else {
                counts.done = q.message_count();
            }
        }
        close(ch).await;
        Ok(counts)
    }

    /// Whether the connection is up (not recovering, not closed).
    pub fn is_connected(&self) -> bool {
        self.conn.status().connected()
    }

    /// Deletes the run's queues with whatever they hold (tests and
    /// `--purge`); the shared dead-letter exchange stays. Queues that do not
    /// exist are skipped.
    pub async fn delete_run(&self, queues: &RunQueues) -> Result<()> {
        let ch = self.channel("deleting the run's queues").await?;
        for name in [&queues.jobs, &queues.dead, &queues.done] {
            ch.queue_delete(short(name, "name")?, QueueDeleteOptions::default())
                .await
                .map_err(|e| Error::Broker(format!("cannot delete queue {name}: {e}")))?;
        }
        close(ch).await;
        Ok(())
    }

    /// Closes the connection cleanly (unacknowledged deliveries go back to
    /// their queues). Dropping a `Broker` closes it too, without waiting.
    pub async fn close(self) -> Result<()> {
        match self.conn.close(200, "bye".into()).await {
            Ok(()) => Ok(()),
            // Already closed or never recovered: nothing left to close.
            Err(_) if !self.conn.status().connected() => Ok(()),
            Err(e) => Err(Error::Broker(format!("cannot close the connection: {e}"))),
        }
    }
}

/// Closes a channel we are done with; a failure only means it is gone
/// already.
async fn close(ch: lapin::Channel) {
    let _ = ch.close(200, "done".into()).await;
}

/// The AMQP soft (channel-level) error code of `e`, if it is one.
fn amqp_soft_error(e: &lapin::Error) -> Option<AMQPSoftError> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(s) => Some(s.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

/// A declare failure, explained when the object exists with other settings.
fn declare_error(what: &str, name: &str, e: lapin::Error) -> Error {
    match amqp_soft_error(&e) {
        Some(AMQPSoftError::PRECONDITIONFAILED) => Error::Broker(format!(
            "{what} {name} already exists with other settings (the run was declared \
             with another delivery limit or queue type; delete it or declare it as \
             before): {e}"
        )),
        _ => Error::Broker(format!("cannot declare {what} {name}: {e}")),
    }
}

/// An AMQP long string value (header and argument values).
fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// An AMQP short string (at most 255 bytes; lapin's `From` panics beyond,
/// and `RunQueues`' fields are public, so names are checked here too).
fn short(s: &str, what: &str) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|_| {
        Error::Invalid(format!(
            "{what} {:?}... is {} bytes long; AMQP allows 255",
            s.chars().take(40).collect::<String>(),
            s.len()
        ))
    })
}

/// A duration setting in seconds: more than 0, at most an hour.
fn seconds(what: &str, s: f64) -> Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s <= 3600.0) {
        return Err(Error::Invalid(format!(
            "{what} {s} s: expected more than 0 and at most 3600"
        )));
    }
    Ok(Duration::from_secs_f64(s))
}

/// Bounds the waits that only a recovered connection can end.
///
/// lapin 4.12.3 can stall in recovery: when the socket fails in the middle
/// of a write, the frames being written stay queued, its I/O loop keeps
/// waiting on the dead socket instead of reconnecting, and the connection
/// stays `Reconnecting` for good; publishes, confirms and consumers pending
/// at that moment never resolve (measured here with a TCP cut under a full
/// publish window). Nothing outside lapin can restart that loop, so
/// operations fail once the connection has been down for `limit`, and the
/// caller starts over with a new connection.
#[derive(Clone)]
struct Watch {
    conn: lapin::ConnectionStatus,
    limit: Duration,
}

impl Watch {
    /// Runs `fut` to completion unless the connection is closed for good or
    /// stays down (not `Connected`) for longer than the limit; then `Err`
    /// with why. A connection that is up but blocked by the broker (flow
    /// control) does not count as down.
    async fn run<F: std::future::Future>(&self, fut: F) -> std::result::Result<F::Output, String> {
        tokio::pin!(fut);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut down_since: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return Ok(out),
                _ = tick.tick() => {
                    if self.conn.closed() || self.conn.errored() {
                        return Err("the connection is closed and will not recover".into());
                    }
                    if self.conn.connected() {
                        down_since = None;
                    } else if down_since
                        .get_or_insert_with(std::time::Instant::now)
                        .elapsed()
                        > self.limit
                    {
                        return Err(format!(
                            "the connection did not recover within {:?} (still {})",
                            self.limit,
                            if self.conn.reconnecting() { "reconnecting" } else { "down" }
                        ));
                    }
                }
            }
        }
    }

    /// Waits until `channel` has recovered from `err`.
    async fn recovery(
        &self,
        channel: &lapin::Channel,
        err: lapin::Error,
    ) -> std::result::Result<(), NotRecovered> {
        match self.run(channel.wait_for_recovery(err)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(NotRecovered::Unrecoverable(e)),
            Err(why) => Err(NotRecovered::Lost(why)),
        }
    }

    /// Waits until the connection is up (within the limit).
    async fn connected(&self) -> std::result::Result<(), String> {
        self.run(async {
            while !self.conn.connected() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
    }
}

/// Why [`Watch::recovery`] did not end in a recovered channel.
enum NotRecovered {
    /// lapin does not recover from this error (recovery off, or a channel
    /// closed by the broker while the connection stays up).
    Unrecoverable(lapin::Error),
    /// The connection is closed for good or stayed down too long.
    Lost(String),
}

impl std::fmt::Display for NotRecovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotRecovered::Unrecoverable(e) => write!(f, "not recoverable: {e}"),
            NotRecovered::Lost(why) => f.write_str(why),
        }
    }
}

/// Consumption of one queue: deliveries, surviving reconnections.
pub struct Subscription {
    channel: lapin::Channel,
    consumer: lapin::Consumer,
    watch: Watch,
    queue: String,
}

impl Subscription {
    /// The next delivery. When the connection drops, waits for lapin to
    /// recover it (the consumer and its prefetch are replayed) and goes on
    /// with the new deliveries; deliveries received before the cut can no
    /// longer be acknowledged (their ack returns `Ok(false)`) and come
    /// again. `None` when the consumer was cancelled (the queue was
    /// deleted, or the channel closed); `Err` when the connection is lost
    /// for good or stays down longer than the recovery timeout (then
    /// connect again).
    pub async fn next(&mut self) -> Option<Result<lapin::message::Delivery>> {
        let fail = |queue: &str, why: &dyn std::fmt::Display| {
            Some(Err(Error::Broker(format!(
                "consuming {queue}: connection lost: {why}"
            ))))
        };
        loop {
            let next = match self.watch.run(self.consumer.next()).await {
                Ok(next) => next,
                Err(why) => return fail(&self.queue, &why),
            };
            match next? {
                Ok(delivery) => return Some(Ok(delivery)),
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "consumer interrupted; waiting for the connection to recover");
                    if let Err(why) = self.watch.recovery(&self.channel, e).await {
                        return fail(&self.queue, &why);
                    }
                    tracing::info!(queue = %self.queue, "consumer recovered");
                }
            }
        }
    }

    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.queue
    }
}

/// A confirm-mode channel.
pub struct Publisher {
    channel: lapin::Channel,
    watch: Watch,
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

/// A message kept until the broker confirms it.
struct Unconfirmed {
    msg: Outgoing,
    /// How many times it has been published.
    tries: u32,
}

/// What to wait for before publishing again.
enum Pause {
    /// The connection or channel failed: wait for recovery.
    Recovery(lapin::Error),
    /// The broker refused (nack, e.g. a full queue): back off.
    Backoff(u32),
}

/// Wait before the `tries`-th retry after a refusal: 0.1 s doubling, at
/// most 5 s.
fn backoff(tries: u32) -> Duration {
    Duration::from_millis(100u64 << tries.saturating_sub(1).min(6)).min(Duration::from_secs(5))
}

impl Publisher {
    /// Publishes persistent messages (delivery mode 2, content type
    /// `application/json`, `mandatory`) with publisher confirms, keeping at
    /// most `window` unconfirmed. A message that is nacked (with
    /// `x-overflow = reject-publish`, a full queue), or whose publish or
    /// confirm fails with the connection, is published again after lapin
    /// has recovered the connection or after a backoff, up to `attempts`
    /// times in all; returns how many were confirmed (one per message).
    ///
    /// At least once: a message whose confirm was lost may already be in
    /// the queue, and is then there twice. Order is not kept across
    /// retries. Memory is bounded by the window, not by the number of
    /// messages. A message the broker returns as unroutable (no such queue:
    /// declare the run first) is an [`Error::Invalid`], not retried; an
    /// `Err` item from `messages` stops publishing with that error; a
    /// connection down for longer than the recovery timeout is an
    /// [`Error::Broker`] (connect again and publish again). On any error,
    /// messages published but not yet confirmed may still arrive.
    pub async fn publish_all<I>(&self, messages: I, window: usize, attempts: u32) -> Result<u64>
    where
        I: Iterator<Item = Result<Outgoing>>,
    {
        if window == 0 || attempts == 0 {
            return Err(Error::Invalid(format!(
                "publish window {window} and attempts {attempts}: both must be at least 1"
            )));
        }
        let mut source = messages.fuse();
        let mut retry: VecDeque<Unconfirmed> = VecDeque::new();
        let mut in_flight = FuturesUnordered::new();
        let mut confirmed = 0u64;
        let mut pause: Option<Pause> = None;
        let lost = |why: String, confirmed: u64| {
            Error::Broker(format!(
                "publishing: connection lost: {why} ({confirmed} messages confirmed before)"
            ))
        };
        loop {
            match pause.take() {
                Some(Pause::Recovery(e)) => match self.watch.recovery(&self.channel, e).await {
                    Ok(()) => {}
                    Err(NotRecovered::Lost(why)) => return Err(lost(why, confirmed)),
                    // An error lapin does not recover from by itself (the
                    // broker closed the channel, say): once the connection
                    // is up, the retries back off and use up their
                    // attempts.
                    Err(NotRecovered::Unrecoverable(_)) => {
                        self.watch
                            .connected()
                            .await
                            .map_err(|why| lost(why, confirmed))?;
                        tokio::time::sleep(backoff(1)).await;
                    }
                },
                Some(Pause::Backoff(tries)) => tokio::time::sleep(backoff(tries)).await,
                None => {}
            }
            // Fill the window: retries first, then new messages.
            while in_flight.len() < window && pause.is_none() {
                // Retries came out of the window, so the window bounds
                // in_flight + retry: new messages only enter when both
                // fit.
                let next = match retry.pop_front() {
                    Some(u) => u,
                    None => match source.next() {
                        Some(m) => Unconfirmed { msg: m?, tries: 0 },
                        None => break,
                    },
                };
                let Unconfirmed { msg, tries } = next;
                let tries = tries + 1;
                let sent = self
                    .watch
                    .run(self.send(&msg))
                    .await
                    .map_err(|why| lost(why, confirmed))?;
                match sent? {
                    Ok(confirm) => in_flight.push(async move { (msg, tries, confirm.await) }),
                    Err(e) => {
                        check_tries(&msg, tries, attempts, &e)?;
                        retry.push_back(Unconfirmed { msg, tries });
                        pause = Some(Pause::Recovery(e));
                    }
                }
            }
            if pause.is_some() {
                continue;
            }
            let first = self
                .watch
                .run(in_flight.next())
                .await
                .map_err(|why| lost(why, confirmed))?;
            let Some(first) = first else {
                // Nothing in flight, nothing to retry, the source is dry.
                debug_assert!(retry.is_empty());
                return Ok(confirmed);
            };
            // Handle everything already settled in one go, so that a burst of
            // failures (a cut fails the whole window) costs one pause.
            let mut settled = vec![first];
            while let Some(Some(more)) = in_flight.next().now_or_never() {
                settled.push(more);
            }
            for (msg, tries, outcome) in settled {
                match outcome {
                    Ok(Confirmation::Ack(None)) => confirmed += 1,
                    Ok(Confirmation::Ack(Some(returned))) => {
                        return Err(Error::Invalid(format!(
                            "message {} returned by the broker: {} {} (no queue {:?} on \
                             exchange {:?}; declare the run first)",
                            msg.message_id,
                            returned.reply_code,
                            returned.reply_text,
                            msg.routing_key,
                            msg.exchange
                        )));
                    }
                    Ok(Confirmation::Nack(_)) => {
                        let why = "nacked by the broker (queue full, or the broker \
                                   could not store it)";
                        check_tries(&msg, tries, attempts, &why)?;
                        retry.push_back(Unconfirmed { msg, tries });
                        if !matches!(pause, Some(Pause::Recovery(_))) {
                            pause = Some(Pause::Backoff(tries));
                        }
                    }
                    Ok(Confirmation::NotRequested) => {
                        return Err(Error::Broker(
                            "publishing: the channel is not in confirm mode".into(),
                        ));
                    }
                    Err(e) => {
                        check_tries(&msg, tries, attempts, &e)?;
                        retry.push_back(Unconfirmed { msg, tries });
                        pause = Some(Pause::Recovery(e));
                    }
                }
            }
        }
    }

    /// Publishes one persistent message and waits for its confirm
    /// (retrying as [`Publisher::publish_all`] does).
    pub async fn publish(&self, message: Outgoing, attempts: u32) -> Result<()> {
        let n = self
            .publish_all(std::iter::once(Ok(message)), 1, attempts)
            .await?;
        debug_assert_eq!(n, 1);
        Ok(())
    }

    /// Sends one message. The outer `Result` is a message that can never be
    /// sent (a name too long); the inner one a broker failure worth a retry.
    async fn send(
        &self,
        msg: &Outgoing,
    ) -> Result<std::result::Result<lapin::PublisherConfirm, lapin::Error>> {
        let mut headers = FieldTable::default();
        for (k, v) in &msg.headers {
            headers.insert(short(k, "header name")?, long_string(v));
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(short(&msg.message_id, "message id")?)
            // Publish time, for the workers' queue-wait metric.
            .with_timestamp(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            )
            .with_headers(headers);
        Ok(self
            .channel
            .basic_publish(
                short(&msg.exchange, "exchange")?,
                short(&msg.routing_key, "routing key")?,
                BasicPublishOptions {
                    // Unroutable messages come back instead of vanishing.
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &msg.body,
                props,
            )
            .await)
    }
}

/// `Err` once a message has been tried `attempts` times.
fn check_tries(
    msg: &Outgoing,
    tries: u32,
    attempts: u32,
    why: &dyn std::fmt::Display,
) -> Result<()> {
    if tries >= attempts {
        return Err(Error::Broker(format!(
            "message {} to {:?} not confirmed after {tries} attempt(s): {why}",
            msg.message_id, msg.routing_key
        )));
    }
    tracing::debug!(message_id = %msg.message_id, tries, error = %why, "publishing again");
    Ok(())
}

/// How many times the broker has delivered this message before
/// (`x-delivery-count` of quorum queues; 0 on the first delivery, when
/// the header is absent). Any integer type is accepted; negative values
/// read as 0.
pub fn delivery_count(delivery: &lapin::message::Delivery) -> u32 {
    headers_delivery_count(delivery.properties.headers().as_ref())
}

fn headers_delivery_count(headers: Option<&FieldTable>) -> u32 {
    headers
        .and_then(|h| h.inner().get("x-delivery-count"))
        .and_then(int_value)
        .map_or(0, |n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

/// An AMQP integer of any width and sign.
fn int_value(v: &AMQPValue) -> Option<i64> {
    Some(match *v {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n,
        _ => return None,
    })
}

/// An AMQP string (long or short), lossily decoded as UTF-8.
fn string_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// A string header of a delivery (long or short string; other types:
/// `None`).
pub fn header(delivery: &lapin::message::Delivery, name: &str) -> Option<String> {
    headers_string(delivery.properties.headers().as_ref(), name)
}

fn headers_string(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    headers?.inner().get(name).and_then(string_value)
}

/// Why a message was dead-lettered: our `x-multir-reason` header when a
/// worker gave up on it, else the broker's `x-first-death-reason`
/// (`delivery_limit`, `rejected`, ...), else the `reason` of the first
/// entry of `x-death`, else `unknown`.
pub fn dead_reason(delivery: &lapin::message::Delivery) -> String {
    headers_dead_reason(delivery.properties.headers().as_ref())
}

fn headers_dead_reason(headers: Option<&FieldTable>) -> String {
    let from_death = || match headers?.inner().get("x-death")? {
        AMQPValue::FieldArray(a) => match a.as_slice().first()? {
            AMQPValue::FieldTable(t) => t.inner().get("reason").and_then(string_value),
            _ => None,
        },
        _ => None,
    };
    headers_string(headers, crate::message::REASON_HEADER)
        .or_else(|| headers_string(headers, "x-first-death-reason"))
        .or_else(from_death)
        .unwrap_or_else(|| "unknown".to_string())
}

/// The URL with its password replaced by `***`, for messages
/// (`amqp://user:secret@host` → `amqp://user:***@host`; URLs without a
/// password are returned unchanged). It errs on the side of hiding: the
/// user information runs to the *last* `@`, so a password holding an
/// unencoded `@` or `/` is hidden too, and a string without `://` that
/// holds `@` has everything before the first `:` kept and the rest up to
/// the last `@` hidden.
pub fn redact(url: &str) -> String {
    let (head, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let Some(at) = rest.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!("{head}{}:***{}", &userinfo[..colon], &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    #[test]
    fn redact_hides_passwords_only() {
        let cases = [
            (
                "amqp://user:secret@host:5672/%2f",
                "amqp://user:***@host:5672/%2f",
            ),
            ("amqps://user:secret@host/vh", "amqps://user:***@host/vh"),
            ("amqp://u:p%40ss%2Fw%3Ard@host/%2f", "amqp://u:***@host/%2f"),
            ("amqp://u:p@ss/w@host/", "amqp://u:***@host/"),
            ("amqp://:secret@host", "amqp://:***@host"),
            ("amqp://user@host:5672/%2f", "amqp://user@host:5672/%2f"),
            ("amqp://host:5672/%2f", "amqp://host:5672/%2f"),
            ("amqps://host", "amqps://host"),
            ("amqp:user:secret@host", "amqp:***@host"),
            ("", ""),
        ];
        for (url, want) in cases {
            assert_eq!(redact(url), want, "{url}");
            assert!(!redact(url).contains("secret"), "{url}");
        }
    }

    #[test]
    fn run_names_are_checked() {
        let q = RunQueues::new("multir", "r-1_a.b").unwrap();
        assert_eq!(q.jobs, "multir.r-1_a.b.jobs");
        assert_eq!(q.dead, "multir.r-1_a.b.dead");
        assert_eq!(q.done, "multir.r-1_a.b.done");
        assert_eq!(q.dlx, "multir.dlx");
        assert_eq!(q.run, "r-1_a.b");
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            "a/b",
            "a b",
            "é",
            "a\n",
            &"x".repeat(101),
        ] {
            let e = RunQueues::new("multir", bad).unwrap_err();
            assert!(matches!(e, Error::Invalid(_)), "{bad:?}: {e}");
        }
        assert!(RunQueues::new("multir", &"x".repeat(100)).is_ok());
        for bad in ["", "amq", "amq.x", "a/b"] {
            assert!(RunQueues::new(bad, "r").is_err(), "{bad:?}");
        }
        assert!(RunQueues::new("amqx", "r").is_ok());
    }

    fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(k.into(), v);
        }
        t
    }

    #[test]
    fn delivery_count_reads_every_integer_type() {
        assert_eq!(headers_delivery_count(None), 0);
        assert_eq!(headers_delivery_count(Some(&FieldTable::default())), 0);
        let values = [
            AMQPValue::ShortShortInt(3),
            AMQPValue::ShortShortUInt(3),
            AMQPValue::ShortInt(3),
            AMQPValue::ShortUInt(3),
            AMQPValue::LongInt(3),
            AMQPValue::LongUInt(3),
            AMQPValue::LongLongInt(3),
        ];
        for v in values {
            let t = table(vec![("x-delivery-count", v.clone())]);
            assert_eq!(headers_delivery_count(Some(&t)), 3, "{v:?}");
        }
        let t = table(vec![("x-delivery-count", AMQPValue::LongLongInt(-2))]);
        assert_eq!(headers_delivery_count(Some(&t)), 0);
        let t = table(vec![("x-delivery-count", AMQPValue::LongLongInt(1 << 40))]);
        assert_eq!(headers_delivery_count(Some(&t)), u32::MAX);
        let t = table(vec![("x-delivery-count", long_string("3"))]);
        assert_eq!(headers_delivery_count(Some(&t)), 0);
    }

    #[test]
    fn headers_and_dead_reasons() {
        let t = table(vec![
            ("a", long_string("long")),
            ("b", AMQPValue::ShortString("short".into())),
            ("c", AMQPValue::LongInt(1)),
        ]);
        assert_eq!(headers_string(Some(&t), "a").as_deref(), Some("long"));
        assert_eq!(headers_string(Some(&t), "b").as_deref(), Some("short"));
        assert_eq!(headers_string(Some(&t), "c"), None);
        assert_eq!(headers_string(Some(&t), "d"), None);
        assert_eq!(headers_string(None, "a"), None);

        let death =
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(table(vec![
                ("reason", long_string("expired")),
                ("count", AMQPValue::LongLongInt(1)),
            ]))]));
        assert_eq!(headers_dead_reason(None), "unknown");
        let t = table(vec![("x-death", death.clone())]);
        assert_eq!(headers_dead_reason(Some(&t)), "expired");
        let t = table(vec![
            ("x-death", death.clone()),
            ("x-first-death-reason", long_string("delivery_limit")),
        ]);
        assert_eq!(headers_dead_reason(Some(&t)), "delivery_limit");
        let t = table(vec![
            ("x-death", death),
            ("x-first-death-reason", long_string("delivery_limit")),
            (
                crate::message::REASON_HEADER,
                long_string("unreadable image"),
            ),
        ]);
        assert_eq!(headers_dead_reason(Some(&t)), "unreadable image");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(6), Duration::from_millis(3200));
        assert_eq!(backoff(7), Duration::from_secs(5));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(5));
    }
}
