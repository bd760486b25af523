//! The distributed edge of multir: the same per-scan processor as `multir
//! run`, fed by RabbitMQ and reading and writing S3. The pure core
//! (`multir-common`) knows nothing of brokers, object stores or async
//! runtimes; everything networked lives here.
//!
//! Data flows through the modules in this order:
//!
//! - [`store`]: S3 (and S3-compatible stores): `s3://` URLs, bounded
//!   downloads, atomic uploads, listings; transient and permanent failures
//!   told apart.
//! - [`broker`]: RabbitMQ: the per-run queues (quorum, delivery limit,
//!   dead-lettering), publishing with confirms, consuming, reconnecting.
//! - [`message`]: what travels besides the core's job: completions and
//!   dead letters, each with a schema version.
//! - [`worker`]: the worker loop, `worker::run(...)`: a job in, the
//!   processor, fragment and mask to S3, completion out, then the ack.
//! - [`health`]: liveness, readiness and Prometheus metrics over HTTP.
//! - [`threads`]: libtorch's thread pools sized from the pod's CPU quota.
//! - [`app`]: `multir-worker run`: options and wiring.
//! - [`error`]: the crate's one error type.

pub mod app;
pub mod broker;
pub mod error;
pub mod health;
pub mod message;
pub mod store;
pub mod threads;
pub mod worker;

pub use error::{Error, Result};
