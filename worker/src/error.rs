//! The error type of the distributed edge.

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong between the broker, the store and the processor.
///
/// Every variant says whether trying again may help ([`Error::is_transient`]):
/// the worker requeues a job after a transient failure and turns a permanent
/// one into an error row (or a dead letter).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An S3 request failed. `url` names the object; never credentials.
    #[error("{url}: {message}")]
    Store {
        /// The object or prefix, as `s3://bucket/key`.
        url: String,
        /// What happened.
        message: String,
        /// Whether a retry may succeed (timeouts, throttling, 5xx).
        transient: bool,
    },
    /// An object is larger than the limit, refused before it is read.
    #[error("{url}: {size} bytes, more than the {limit}-byte limit")]
    TooLarge {
        /// The object.
        url: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The broker refused or dropped something. The text never holds the
    /// AMQP URL's password.
    #[error("broker: {0}")]
    Broker(String),
    /// A message or setting that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The core failed (decoding, model, I/O).
    #[error(transparent)]
    Core(#[from] multir_common::Error),
    /// Local I/O (the health endpoint's socket, temporary files).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether trying the same operation again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store { transient, .. } => *transient,
            Error::Broker(_) => true,
            Error::Io(_) => true,
            Error::TooLarge { .. } | Error::Invalid(_) => false,
            Error::Core(e) => e.fault() == multir_common::Fault::Environment,
        }
    }
}
