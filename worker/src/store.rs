//! S3 and S3-compatible object stores.
//!
//! A thin layer over `aws-sdk-s3`, so the worker speaks in `s3://` URLs and
//! in this crate's [`Error`] rather than in SDK types: `s3://bucket/key`
//! URLs, downloads that refuse objects over a size limit before reading
//! them (a scan's size is bounded; an unbounded download could exhaust the
//! pod's memory), uploads (an S3 PUT is atomic: readers see the old object
//! or the whole new one, never a part), paginated listings, and errors that
//! say in plain words what happened to which URL and whether a retry may
//! help (the worker requeues a job after a transient failure and records a
//! permanent one).
//!
//! Credentials come from the standard AWS chain (environment, web identity,
//! profile, instance metadata) unless the caller passes static ones
//! ([`Store::connect_with`], used by tests); they never appear in errors or
//! logs. The SDK itself retries transient failures ([`StoreArgs::attempts`]
//! attempts with exponential backoff); an error returned from here has
//! already been retried.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};

use crate::error::{Error, Result};

/// Static credentials for [`Store::connect_with`] (the SDK's type).
pub use aws_sdk_s3::config::Credentials;

/// The region used when neither `--s3-region` nor the AWS chain names one.
/// S3-compatible stores accept any region in the signature.
pub const FALLBACK_REGION: &str = "us-east-1";

/// The longest wait for a TCP (and TLS) connection, whatever
/// [`StoreArgs::timeout_s`] says: an endpoint that does not accept a
/// connection in this time is down or unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An object or prefix: `s3://bucket/key`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S3Url {
    /// The bucket.
    pub bucket: String,
    /// The key (or prefix): everything after `s3://bucket/`; may be empty.
    pub key: String,
}

impl S3Url {
    /// Parses `s3://bucket/key` (or `s3://bucket`, `s3://bucket/`: the
    /// whole bucket). Another scheme, an empty bucket or whitespace in the
    /// bucket is [`Error::Invalid`].
    pub fn parse(text: &str) -> Result<S3Url> {
        let invalid = |why: &str| Error::Invalid(format!("{text:?} is not an s3:// URL: {why}"));
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| invalid("it must start with s3://"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(invalid("the bucket is empty"));
        }
        if bucket.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("the bucket contains whitespace"));
        }
        Ok(S3Url {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
        })
    }

    /// The URL of `relative` under this prefix, with exactly one `/` between
    /// them whether or not the prefix ends with one or `relative` starts
    /// with one. Under the bucket itself (empty key) it is `relative`.
    pub fn join(&self, relative: &str) -> S3Url {
        let relative = relative.trim_start_matches('/');
        let base = self.key.trim_end_matches('/');
        let key = if base.is_empty() {
            relative.to_owned()
        } else {
            format!("{base}/{relative}")
        };
        S3Url {
            bucket: self.bucket.clone(),
            key,
        }
    }

    /// The key as a listing prefix: empty (the whole bucket) or ending in
    /// `/`, so that `run1` does not also match `run10/...`.
    fn dir_prefix(&self) -> String {
        if self.key.is_empty() || self.key.ends_with('/') {
            self.key.clone()
        } else {
            format!("{}/", self.key)
        }
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
    /// The SDK's default: checksum every upload, validate every download
    /// that carries a checksum.
    WhenSupported,
    /// Only where the S3 API requires one.
    WhenRequired,
}

/// Where and how to reach the object store (flags with environment
/// fallbacks; credentials and, unless given, the region come from the
/// standard AWS chain).
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
    /// Region. Default: the AWS chain's (`AWS_REGION`, the profile, instance
    /// metadata), else us-east-1.
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
    /// Attempts per request, at least 1 (the SDK's standard retry:
    /// exponential backoff with jitter).
    #[arg(long = "s3-attempts", env = "MULTIR_S3_ATTEMPTS", default_value_t = 5)]
    pub attempts: u32,
    /// Seconds before one attempt is abandoned if no response has come
    /// (an upload's body counts; a download's body is read afterwards,
    /// guarded by the SDK's stalled-stream protection). Connecting is
    /// limited to the smaller of this and 10 s.
    #[arg(long = "s3-timeout", env = "MULTIR_S3_TIMEOUT", default_value_t = 60.0)]
    pub timeout_s: f64,
}

impl StoreArgs {
    /// The defaults of the command line, pointed at `endpoint` with
    /// path-style addressing (an S3-compatible store), region us-east-1.
    pub fn for_endpoint(endpoint: &str) -> StoreArgs {
        StoreArgs {
            endpoint: Some(endpoint.to_owned()),
            path_style: true,
            region: Some(FALLBACK_REGION.to_owned()),
            checksums: Checksums::WhenSupported,
            attempts: 5,
            timeout_s: 60.0,
        }
    }
}

/// An S3 client. Cheap to clone (the SDK client is shared).
#[derive(Debug, Clone)]
pub struct Store {
    client: aws_sdk_s3::Client,
    /// The endpoint, for error messages ("is the endpoint ... up?").
    endpoint: String,
    /// The attempt timeout, for error messages.
    timeout_s: f64,
}

impl Store {
    /// A client configured from `args`, with credentials from the standard
    /// AWS chain. Nothing is contacted yet, except that the region may be
    /// looked up (environment, profile, instance metadata) when `args`
    /// gives none.
    pub async fn connect(args: &StoreArgs) -> Result<Store> {
        Store::connect_with(args, None).await
    }

    /// Like [`Store::connect`], with static `credentials` instead of the
    /// AWS chain when given (tests; the process environment is not read
    /// for credentials then).
    pub async fn connect_with(args: &StoreArgs, credentials: Option<Credentials>) -> Result<Store> {
        if args.attempts == 0 {
            return Err(Error::Invalid("--s3-attempts must be at least 1".into()));
        }
        if !(args.timeout_s.is_finite() && args.timeout_s > 0.0) {
            return Err(Error::Invalid(format!(
                "--s3-timeout must be a positive number of seconds, not {}",
                args.timeout_s
            )));
        }
        let timeout = Duration::from_secs_f64(args.timeout_s);
        // An empty setting means "not set": a ConfigMap or compose file
        // leaves MULTIR_S3_ENDPOINT= empty for AWS S3.
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let endpoint = given(&args.endpoint);
        let region = RegionProviderChain::first_try(given(&args.region).map(Region::new))
            .or_default_provider()
            .or_else(Region::new(FALLBACK_REGION));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .retry_config(RetryConfig::standard().with_max_attempts(args.attempts))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(timeout.min(CONNECT_TIMEOUT))
                    .operation_attempt_timeout(timeout)
                    .build(),
            );
        if let Some(endpoint) = &endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(credentials) = credentials {
            loader = loader.credentials_provider(credentials);
        }
        let shared = loader.load().await;
        let mut config =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(args.path_style);
        if args.checksums == Checksums::WhenRequired {
            config = config
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        Ok(Store {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            endpoint: endpoint.unwrap_or_else(|| "AWS S3".to_owned()),
            timeout_s: args.timeout_s,
        })
    }

    /// The object's bytes. Objects larger than `max_bytes` are refused
    /// ([`Error::TooLarge`]) from their `Content-Length`, before the body is
    /// read; a body that turns out longer than that (no or a wrong length)
    /// is abandoned as soon as it passes the limit. A missing object or
    /// bucket is a permanent error.
    pub async fn get(&self, url: &S3Url, max_bytes: u64) -> Result<Vec<u8>> {
        let out = self
            .client
            .get_object()
            .bucket(&url.bucket)
            .key(&url.key)
            .send()
            .await
            .map_err(|e| self.sdk_error(url, &e))?;
        let mut bytes = Vec::with_capacity(announced_size(url, out.content_length(), max_bytes)?);
        let mut body = out.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::Store {
                url: url.to_string(),
                message: format!(
                    "the download broke off after {} bytes: {}",
                    bytes.len(),
                    DisplayErrorContext(&e)
                ),
                transient: true,
            })?;
            check_running_size(url, bytes.len() as u64 + chunk.len() as u64, max_bytes)?;
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// Writes the object whole (replacing any object under that key).
    pub async fn put(&self, url: &S3Url, bytes: Vec<u8>, content_type: &str) -> Result<()> {
        self.client
            .put_object()
            .bucket(&url.bucket)
            .key(&url.key)
            .content_type(content_type)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.sdk_error(url, &e))?;
        Ok(())
    }

    /// Uploads a local file in one PUT (S3 takes up to 5 GiB that way),
    /// streaming it from disk. A file that cannot be read is [`Error::Io`]
    /// naming the path.
    pub async fn put_file(&self, url: &S3Url, path: &Path) -> Result<()> {
        let local = |e: &dyn fmt::Display, kind| {
            Error::Io(std::io::Error::new(
                kind,
                format!("{}: cannot upload it to {url}: {e}", path.display()),
            ))
        };
        tokio::fs::metadata(path)
            .await
            .map_err(|e| local(&e, e.kind()))?;
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| local(&e, std::io::ErrorKind::Other))?;
        self.client
            .put_object()
            .bucket(&url.bucket)
            .key(&url.key)
            .body(body)
            .send()
            .await
            .map_err(|e| self.sdk_error(url, &e))?;
        Ok(())
    }

    /// Whether the object exists (HeadObject). A 404 is `false`; since HEAD
    /// responses carry no error code, a missing bucket is `false` too.
    pub async fn exists(&self, url: &S3Url) -> Result<bool> {
        match self
            .client
            .head_object()
            .bucket(&url.bucket)
            .key(&url.key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(false),
            Err(e) => Err(self.sdk_error(url, &e)),
        }
    }

    /// Every key under the folder `prefix`, relative to it, in the store's
    /// (lexicographic) order. The prefix is taken as a folder: `s3://b/run1`
    /// lists `s3://b/run1/...`, not `s3://b/run10/...`; an empty key lists
    /// the bucket. Follows every page of ListObjectsV2.
    pub async fn list(&self, prefix: &S3Url) -> Result<Vec<String>> {
        let dir = prefix.dir_prefix();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&prefix.bucket)
            .prefix(&dir)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.sdk_error(prefix, &e))?;
            for object in page.contents() {
                if let Some(relative) = object.key().and_then(|k| k.strip_prefix(&dir)) {
                    keys.push(relative.to_owned());
                }
            }
        }
        Ok(keys)
    }

    /// Deletes the object (a missing one is no error; a missing bucket is).
    pub async fn delete(&self, url: &S3Url) -> Result<()> {
        match self
            .client
            .delete_object()
            .bucket(&url.bucket)
            .key(&url.key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NoSuchKey") => Ok(()),
            Err(e) => Err(self.sdk_error(url, &e)),
        }
    }

    /// Creates the bucket unless this account can already use it (tests
    /// and local set-ups). Outside us-east-1 the bucket is created in the
    /// client's region. A bucket that exists but belongs to someone else is
    /// an error.
    pub async fn ensure_bucket(&self, bucket: &str) -> Result<()> {
        let url = S3Url {
            bucket: bucket.to_owned(),
            key: String::new(),
        };
        let mut request = self.client.create_bucket().bucket(bucket);
        if let Some(region) = self.client.config().region().map(Region::as_ref)
            && region != FALLBACK_REGION
        {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            Err(e) if e.code() == Some("BucketAlreadyExists") => {
                // Ours on some stores, someone else's on AWS: ask.
                self.client
                    .head_bucket()
                    .bucket(bucket)
                    .send()
                    .await
                    .map_err(|e| self.sdk_error(&url, &e))?;
                Ok(())
            }
            Err(e) => Err(self.sdk_error(&url, &e)),
        }
    }

    /// The crate error for a failed request on `url`.
    fn sdk_error<E>(&self, url: &S3Url, err: &SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (message, transient) = classify(err, &self.endpoint, self.timeout_s);
        Error::Store {
            url: url.to_string(),
            message,
            transient,
        }
    }
}

/// What a failed request means, in words, and whether a retry may help.
///
/// Permanent: a missing object or bucket, refused credentials or
/// permissions (401, 403), other 4xx answers, requests that could not be
/// built. Transient: timeouts, connections refused or cut, throttling (429,
/// `SlowDown`), 5xx answers, responses that could not be read. The text
/// names the endpoint where that helps and never holds credentials (it is
/// built from the error chain, never from the request).
fn classify<E>(err: &SdkError<E, HttpResponse>, endpoint: &str, timeout_s: f64) -> (String, bool)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let inner = service.err();
            service_failure(status, inner.code(), || {
                DisplayErrorContext(inner).to_string()
            })
        }
        SdkError::TimeoutError(_) => (
            format!("timed out: no answer from {endpoint} within {timeout_s} s"),
            true,
        ),
        SdkError::DispatchFailure(failure) => {
            if failure.is_timeout() {
                (format!("timed out connecting to {endpoint}"), true)
            } else if is_connection_refused(err) {
                (
                    format!("connection refused (is the endpoint {endpoint} up?)"),
                    true,
                )
            } else if failure.is_user() {
                (
                    format!(
                        "the request could not be sent: {}",
                        DisplayErrorContext(err)
                    ),
                    false,
                )
            } else if failure.is_io() {
                // Reset, DNS, TLS.
                (
                    format!(
                        "the connection to {endpoint} failed: {}",
                        DisplayErrorContext(err)
                    ),
                    true,
                )
            } else {
                // A connection that closed under a request, or a failure
                // before sending, such as credentials that could not be
                // loaded (on a pod, often a passing failure of the token or
                // metadata service).
                (
                    format!(
                        "the request to {endpoint} failed: {}",
                        DisplayErrorContext(err)
                    ),
                    true,
                )
            }
        }
        SdkError::ResponseError(response) => (
            format!(
                "unreadable response (HTTP {}) from {endpoint}: {}",
                response.raw().status().as_u16(),
                DisplayErrorContext(err)
            ),
            true,
        ),
        SdkError::ConstructionFailure(_) => (
            format!(
                "the request could not be built: {}",
                DisplayErrorContext(err)
            ),
            false,
        ),
        _ => (format!("failed: {}", DisplayErrorContext(err)), true),
    }
}

/// An answer from the store that is an error: `status`, the S3 error
/// `code` when there is one, and `cause` (the full error, for the cases
/// that have no short description).
fn service_failure(
    status: u16,
    code: Option<&str>,
    cause: impl FnOnce() -> String,
) -> (String, bool) {
    let tagged = |words: &str| match code {
        Some(code) => format!("{words} (HTTP {status} {code})"),
        None => format!("{words} (HTTP {status})"),
    };
    match (status, code) {
        (_, Some("NoSuchKey")) => ("no such object".to_owned(), false),
        (_, Some("NoSuchBucket")) => ("no such bucket".to_owned(), false),
        (
            _,
            Some(
                "SlowDown"
                | "Throttling"
                | "ThrottlingException"
                | "ThrottledException"
                | "RequestThrottled"
                | "RequestLimitExceeded"
                | "TooManyRequests"
                | "TooManyRequestsException"
                | "ProvisionedThroughputExceededException"
                | "BandwidthLimitExceeded",
            ),
        )
        | (429, _) => (tagged("throttled by the store"), true),
        (_, Some("RequestTimeout" | "RequestTimeoutException")) | (408, _) => {
            (tagged("the store timed out reading the request"), true)
        }
        (404, _) => (tagged("not found"), false),
        (401 | 403, _) => (
            format!(
                "{}: check the credentials and the bucket's permissions",
                tagged("access denied")
            ),
            false,
        ),
        (500..=599, _) => (format!("{}: {}", tagged("server error"), cause()), true),
        _ => (format!("{}: {}", tagged("refused"), cause()), false),
    }
}

/// Whether a connection was refused somewhere in the error's chain.
fn is_connection_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The size to reserve for a download from its announced length, or
/// [`Error::TooLarge`] when that is over `max_bytes`. A length missing or
/// not a size reserves nothing (the running check guards the body).
fn announced_size(url: &S3Url, content_length: Option<i64>, max_bytes: u64) -> Result<usize> {
    match content_length.and_then(|n| u64::try_from(n).ok()) {
        Some(size) if size > max_bytes => Err(Error::TooLarge {
            url: url.to_string(),
            size,
            limit: max_bytes,
        }),
        Some(size) => Ok(usize::try_from(size).unwrap_or(0)),
        None => Ok(0),
    }
}

/// [`Error::TooLarge`] once `seen` bytes (so far) pass `max_bytes`.
fn check_running_size(url: &S3Url, seen: u64, max_bytes: u64) -> Result<()> {
    if seen > max_bytes {
        Err(Error::TooLarge {
            url: url.to_string(),
            size: seen,
            limit: max_bytes,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::primitives::SdkBody;
    use aws_sdk_s3::types::error::NoSuchKey;

    fn url(text: &str) -> S3Url {
        S3Url::parse(text).unwrap()
    }

    #[test]
    fn an_empty_endpoint_or_region_setting_means_unset() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let creds = Credentials::new("AK", "SK", None, None, "test");
        let mut args = StoreArgs::for_endpoint("  ");
        args.region = Some("eu-west-1".into());
        let store = rt
            .block_on(Store::connect_with(&args, Some(creds.clone())))
            .unwrap();
        // AWS S3 itself, not a custom endpoint "" that no request can use.
        assert_eq!(store.endpoint, "AWS S3");
        assert_eq!(
            store.client.config().region().map(Region::as_ref),
            Some("eu-west-1")
        );
        let store = rt
            .block_on(Store::connect_with(
                &StoreArgs::for_endpoint("http://127.0.0.1:9"),
                Some(creds),
            ))
            .unwrap();
        assert_eq!(store.endpoint, "http://127.0.0.1:9");
    }

    #[test]
    fn parses_bucket_and_key() {
        let u = url("s3://scans/cohort-a/1.nii.gz");
        assert_eq!(
            (u.bucket.as_str(), u.key.as_str()),
            ("scans", "cohort-a/1.nii.gz")
        );
        assert_eq!(u.to_string(), "s3://scans/cohort-a/1.nii.gz");
        for whole in ["s3://scans", "s3://scans/"] {
            let u = url(whole);
            assert_eq!((u.bucket.as_str(), u.key.as_str()), ("scans", ""));
            assert_eq!(u.to_string(), "s3://scans/");
        }
        // Keys keep what S3 allows, including inner and trailing slashes.
        assert_eq!(url("s3://b/a//c/").key, "a//c/");
    }

    #[test]
    fn refuses_what_is_not_an_s3_url() {
        for bad in [
            "",
            "scans/key",
            "http://scans/key",
            "S3://scans/key",
            "s3:/scans/key",
            "s3://",
            "s3:///key",
            "s3://my bucket/key",
        ] {
            match S3Url::parse(bad) {
                Err(Error::Invalid(text)) => assert!(text.contains("not an s3:// URL"), "{text}"),
                other => panic!("{bad:?}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn join_puts_one_slash_between() {
        for (base, rel, want) in [
            ("s3://b/run1", "x.parquet", "s3://b/run1/x.parquet"),
            ("s3://b/run1/", "x.parquet", "s3://b/run1/x.parquet"),
            ("s3://b/run1//", "/x.parquet", "s3://b/run1/x.parquet"),
            ("s3://b/", "x.parquet", "s3://b/x.parquet"),
            ("s3://b", "masks/1.nii.gz", "s3://b/masks/1.nii.gz"),
            ("s3://b/run1", "", "s3://b/run1/"),
        ] {
            assert_eq!(url(base).join(rel).to_string(), want, "{base} + {rel}");
        }
        assert_eq!(
            url("s3://b/run1").join("a").join("b"),
            url("s3://b/run1/a/b")
        );
    }

    #[test]
    fn listing_prefix_is_a_folder() {
        assert_eq!(url("s3://b").dir_prefix(), "");
        assert_eq!(url("s3://b/run1").dir_prefix(), "run1/");
        assert_eq!(url("s3://b/run1/").dir_prefix(), "run1/");
    }

    #[test]
    fn size_limit_is_checked_from_the_announced_length() {
        let u = url("s3://b/k");
        assert_eq!(announced_size(&u, Some(1000), 1000).unwrap(), 1000);
        assert_eq!(announced_size(&u, None, 1000).unwrap(), 0);
        assert_eq!(announced_size(&u, Some(-1), 1000).unwrap(), 0);
        match announced_size(&u, Some(1_048_576), 1000) {
            Err(
                e @ Error::TooLarge {
                    size: 1_048_576,
                    limit: 1000,
                    ..
                },
            ) => {
                assert_eq!(
                    e.to_string(),
                    "s3://b/k: 1048576 bytes, more than the 1000-byte limit"
                );
                assert!(!e.is_transient());
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(check_running_size(&u, 1000, 1000).is_ok());
        assert!(matches!(
            check_running_size(&u, 1001, 1000),
            Err(Error::TooLarge { size: 1001, .. })
        ));
    }

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(status.try_into().unwrap(), SdkBody::empty())
    }

    fn service(status: u16, code: &str) -> SdkError<GetObjectError, HttpResponse> {
        let meta = ErrorMetadata::builder()
            .code(code)
            .message("the store's words")
            .build();
        let err = if code == "NoSuchKey" {
            GetObjectError::NoSuchKey(NoSuchKey::builder().meta(meta).build())
        } else {
            GetObjectError::generic(meta)
        };
        SdkError::service_error(err, response(status))
    }

    fn classified(err: SdkError<GetObjectError, HttpResponse>) -> (String, bool) {
        classify(&err, "http://127.0.0.1:9", 60.0)
    }

    #[test]
    fn missing_objects_and_refused_credentials_are_permanent() {
        assert_eq!(
            classified(service(404, "NoSuchKey")),
            ("no such object".into(), false)
        );
        assert_eq!(
            classified(service(404, "NoSuchBucket")),
            ("no such bucket".into(), false)
        );
        for code in [
            "AccessDenied",
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId",
        ] {
            let (text, transient) = classified(service(403, code));
            assert!(!transient, "{code}");
            assert!(text.starts_with("access denied (HTTP 403 "), "{text}");
            assert!(
                text.contains(code) && text.contains("credentials"),
                "{text}"
            );
        }
        let (text, transient) = classified(service(400, "InvalidArgument"));
        assert!(!transient);
        assert!(
            text.contains("refused (HTTP 400 InvalidArgument)"),
            "{text}"
        );
        assert!(text.contains("the store's words"), "{text}");
    }

    #[test]
    fn throttling_and_server_errors_are_transient() {
        for (status, code) in [
            (503, "SlowDown"),
            (429, "TooManyRequests"),
            (400, "RequestTimeout"),
            (500, "InternalError"),
            (502, "BadGateway"),
            (503, "ServiceUnavailable"),
        ] {
            let (text, transient) = classified(service(status, code));
            assert!(transient, "{status} {code}: {text}");
            assert!(text.contains(&format!("HTTP {status} {code}")), "{text}");
        }
    }

    #[test]
    fn timeouts_and_refused_connections_are_transient_and_name_the_endpoint() {
        let (text, transient) = classified(SdkError::timeout_error("attempt timeout"));
        assert!(transient);
        assert_eq!(
            text,
            "timed out: no answer from http://127.0.0.1:9 within 60 s"
        );

        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let (text, transient) = classified(SdkError::dispatch_failure(ConnectorError::io(
            Box::new(refused),
        )));
        assert!(transient);
        assert_eq!(
            text,
            "connection refused (is the endpoint http://127.0.0.1:9 up?)"
        );

        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let (text, transient) = classified(SdkError::dispatch_failure(ConnectorError::io(
            Box::new(reset),
        )));
        assert!(transient);
        assert!(
            text.starts_with("the connection to http://127.0.0.1:9 failed: "),
            "{text}"
        );

        let (_, transient) = classified(SdkError::dispatch_failure(ConnectorError::timeout(
            "connect timeout".into(),
        )));
        assert!(transient);
    }

    #[test]
    fn broken_requests_are_permanent_unreadable_responses_transient() {
        let (text, transient) = classified(SdkError::construction_failure("bad input"));
        assert!(!transient);
        assert!(
            text.contains("could not be built") && text.contains("bad input"),
            "{text}"
        );
        let (text, transient) =
            classified(SdkError::response_error("truncated xml", response(200)));
        assert!(transient);
        assert!(text.starts_with("unreadable response (HTTP 200)"), "{text}");
    }
}
