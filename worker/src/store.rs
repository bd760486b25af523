//! S3 and S3-compatible object stores.
//!
//! A thin layer over `aws-sdk-s3`: `s3://bucket/key` URLs, downloads that
//! refuse objects over a size limit before reading them, uploads (an S3 PUT
//! is atomic: readers see the old object or the whole new one, never a
//! part), paginated listings, and errors that say whether a retry may help.
//! Credentials come from the standard AWS chain (environment, web identity,
//! profile, instance metadata); they never appear in errors or logs.

use std::fmt;

use crate::error::{Error, Result};

/// An object or prefix: `s3://bucket/key`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S3Url {
    /// The bucket.
    pub bucket: String,
    /// The key (or prefix), without a leading `/`; may be empty.
    pub key: String,
}

impl S3Url {
    /// Parses `s3://bucket/key`; anything else is [`Error::Invalid`].
    pub fn parse(text: &str) -> Result<S3Url> {
        todo!("{text}")
    }

    /// The URL of `relative` under this prefix (one `/` between them).
    pub fn join(&self, relative: &str) -> S3Url {
        todo!("{relative}")
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Checksums of uploads and downloads. The SDK adds CRC32 checksums by
/// default; some S3-compatible stores reject or mangle them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Checksums {
    /// The SDK's default: checksum every upload, validate every download.
    WhenSupported,
    /// Only where the S3 API requires one.
    WhenRequired,
}

/// Where and how to reach the object store (flags with environment
/// fallbacks; credentials and region come from the standard AWS chain).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// S3 endpoint for S3-compatible stores (MinIO, Ceph, s3s-fs); default:
    /// AWS.
    #[arg(long = "s3-endpoint", env = "MULTIR_S3_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible stores need.
    #[arg(long = "s3-path-style", env = "MULTIR_S3_PATH_STYLE")]
    pub path_style: bool,
    /// Region, when the AWS chain gives none (`AWS_REGION` is read first).
    #[arg(long = "s3-region", env = "MULTIR_S3_REGION")]
    pub region: Option<String>,
    /// Checksums of requests and responses.
    #[arg(
        long = "s3-checksums",
        env = "MULTIR_S3_CHECKSUMS",
        value_enum,
        default_value = "when-supported"
    )]
    pub checksums: Checksums,
    /// Attempts per request (the SDK's standard retry with backoff).
    #[arg(long = "s3-attempts", env = "MULTIR_S3_ATTEMPTS", default_value_t = 5)]
    pub attempts: u32,
    /// Seconds before one attempt is abandoned.
    #[arg(long = "s3-timeout", env = "MULTIR_S3_TIMEOUT", default_value_t = 60.0)]
    pub timeout_s: f64,
}

/// An S3 client.
#[derive(Debug, Clone)]
pub struct Store {
    client: aws_sdk_s3::Client,
}

impl Store {
    /// A client configured from `args` and the standard AWS chain.
    pub async fn connect(args: &StoreArgs) -> Result<Store> {
        todo!("{args:?}")
    }

    /// The object's bytes. Objects larger than `max_bytes` are refused
    /// ([`Error::TooLarge`]) from their `Content-Length`, before the body is
    /// read. A missing object or bucket is a permanent error.
    pub async fn get(&self, url: &S3Url, max_bytes: u64) -> Result<Vec<u8>> {
        todo!("{url} {max_bytes} {:?}", self.client)
    }

    /// Writes the object whole (replacing any object under that key).
    pub async fn put(&self, url: &S3Url, bytes: Vec<u8>, content_type: &str) -> Result<()> {
        todo!("{url} {} {content_type}", bytes.len())
    }

    /// Uploads a local file.
    pub async fn put_file(&self, url: &S3Url, path: &std::path::Path) -> Result<()> {
        todo!("{url} {}", path.display())
    }

    /// Whether the object exists.
    pub async fn exists(&self, url: &S3Url) -> Result<bool> {
        todo!("{url}")
    }

    /// Every key under `prefix` (paginated), relative to it.
    pub async fn list(&self, prefix: &S3Url) -> Result<Vec<String>> {
        todo!("{prefix}")
    }

    /// Deletes the object (a missing one is no error).
    pub async fn delete(&self, url: &S3Url) -> Result<()> {
        todo!("{url}")
    }

    /// Creates the bucket unless it exists (tests and local set-ups).
    pub async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        todo!("{bucket}")
    }
}

#[allow(dead_code)]
fn _unused(_: Error) {}
