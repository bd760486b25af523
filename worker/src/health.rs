//! Liveness, readiness and Prometheus metrics over HTTP.
//!
//! ```text
//! GET /healthz   200 while the process serves requests (liveness)
//! GET /readyz    200 once the model is loaded and the broker connected,
//!                503 otherwise (readiness: no traffic to a pod that cannot work)
//! GET /metrics   Prometheus text format (see [`Metrics`])
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::Result;

type Labels = Vec<(String, String)>;
type Seconds = Counter<f64, AtomicU64>;

/// The worker's Prometheus metrics.
///
/// - `multir_jobs_total{outcome}`: `ok`, `error` (an error row), `retried`
///   (requeued after a transient failure), `dead` (dead-lettered);
/// - `multir_stage_seconds_total{stage}`: `download`, `read`, `preprocess`,
///   `inference`, `quantify`, `metrics`, `write`;
/// - `multir_scan_seconds`: delivery to ack, per scan (histogram);
/// - `multir_queue_wait_seconds`: publish to delivery (histogram);
/// - `multir_network_busy_seconds_total`: time the network thread computed
///   (on a GPU worker: the device's busy time, the figure to compare with
///   wall time);
/// - `multir_jobs_in_flight`, `multir_gpu_in_use` (1 on CUDA),
///   `multir_broker_errors_total`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    jobs: Family<Labels, Counter>,
    stages: Family<Labels, Seconds>,
    scan: Histogram,
    wait: Histogram,
    busy: Seconds,
    in_flight: Gauge,
    gpu: Gauge,
    broker_errors: Counter,
}

impl Metrics {
    /// Registers every metric; `gpu` says whether the network runs on CUDA.
    pub fn new(gpu: bool) -> Metrics {
        let mut registry = Registry::with_prefix("multir");
        let jobs = Family::<Labels, Counter>::default();
        let stages = Family::<Labels, Seconds>::default();
        let scan = Histogram::new(exponential_buckets(0.25, 2.0, 14));
        let wait = Histogram::new(exponential_buckets(0.25, 2.0, 18));
        let busy = Seconds::default();
        let in_flight = Gauge::default();
        let gpu_gauge = Gauge::default();
        let broker_errors = Counter::default();
        registry.register("jobs", "Jobs finished, by outcome", jobs.clone());
        registry.register("stage_seconds", "Seconds spent per stage", stages.clone());
        registry.register("scan_seconds", "Seconds from delivery to ack", scan.clone());
        registry.register(
            "queue_wait_seconds",
            "Seconds from publish to delivery",
            wait.clone(),
        );
        registry.register(
            "network_busy_seconds",
            "Seconds the network thread computed",
            busy.clone(),
        );
        registry.register(
            "jobs_in_flight",
            "Deliveries being worked on",
            in_flight.clone(),
        );
        registry.register(
            "gpu_in_use",
            "1 when the network runs on CUDA",
            gpu_gauge.clone(),
        );
        registry.register(
            "broker_errors",
            "Consumer errors (connection cuts)",
            broker_errors.clone(),
        );
        gpu_gauge.set(i64::from(gpu));
        Metrics {
            registry,
            jobs,
            stages,
            scan,
            wait,
            busy,
            in_flight,
            gpu: gpu_gauge,
            broker_errors,
        }
    }

    /// Counts a finished job by outcome.
    pub fn job(&self, outcome: &str) {
        self.jobs
            .get_or_create(&vec![("outcome".into(), outcome.into())])
            .inc();
    }

    /// Adds seconds to a stage.
    pub fn stage(&self, stage: &str, seconds: f64) {
        self.stages
            .get_or_create(&vec![("stage".into(), stage.into())])
            .inc_by(seconds.max(0.0));
    }

    /// Adds a scan's core stages.
    pub fn stages(&self, s: &multir_common::results::StageSeconds) {
        for (name, v) in [
            ("read", s.read),
            ("preprocess", s.preprocess),
            ("inference", s.inference),
            ("quantify", s.quantify),
            ("metrics", s.metrics),
        ] {
            self.stage(name, v);
        }
    }

    /// Records a scan's delivery-to-ack time.
    pub fn scan_seconds(&self, seconds: f64) {
        self.scan.observe(seconds);
    }

    /// Records a job's time in the queue.
    pub fn queue_wait(&self, seconds: f64) {
        self.wait.observe(seconds);
    }

    /// Adds to the network thread's busy time.
    pub fn network_busy(&self, seconds: f64) {
        self.busy.inc_by(seconds);
    }

    /// Changes the in-flight gauge.
    pub fn in_flight(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    /// Counts a consumer error.
    pub fn broker_error(&self) {
        self.broker_errors.inc();
    }

    /// Whether the network runs on CUDA.
    pub fn gpu(&self) -> bool {
        self.gpu.get() == 1
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// What the endpoint reports.
pub struct Health {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    model_loaded: AtomicBool,
    broker: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Health {
    /// `broker_up` says whether the broker connection is up right now.
    pub fn new(
        metrics: Arc<Metrics>,
        broker_up: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Health {
        Health {
            metrics,
            model_loaded: AtomicBool::new(false),
            broker: Box::new(broker_up),
        }
    }

    /// Marks the model loaded.
    pub fn set_model_loaded(&self) {
        self.model_loaded.store(true, Ordering::SeqCst);
    }

    /// Model loaded and broker connected.
    pub fn ready(&self) -> bool {
        self.model_loaded.load(Ordering::SeqCst) && (self.broker)()
    }

    fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, body, kind) = match path {
            "/healthz" | "/livez" => (StatusCode::OK, "ok\n".to_string(), "text/plain"),
            "/readyz" => {
                if self.ready() {
                    (StatusCode::OK, "ready\n".to_string(), "text/plain")
                } else {
                    let why = if self.model_loaded.load(Ordering::SeqCst) {
                        "broker not connected\n"
                    } else {
                        "model not loaded\n"
                    };
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        why.to_string(),
                        "text/plain",
                    )
                }
            }
            "/metrics" => (
                StatusCode::OK,
                self.metrics.encode(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "not found\n".to_string(),
                "text/plain",
            ),
        };
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(kind) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    }
}

/// Binds the endpoint (port 0 picks a free one); returns the bound address
/// and the server future, which ends when `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(SocketAddr, impl Future<Output = ()> + Send)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let server = async move {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let h = health.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let r = h.respond(req.uri().path());
                            async move { Ok::<_, Infallible>(r) }
                        });
                        let io = hyper_util::rt::TokioIo::new(stream);
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await
                        {
                            tracing::debug!("health connection: {e}");
                        }
                    });
                }
            }
        }
    };
    Ok((bound, server))
}

/// Asks a running worker's endpoint for `path` and succeeds on `200`: the
/// container image's `HEALTHCHECK` (`multir-worker probe`), which has no
/// curl. An unspecified listen address (`0.0.0.0`, `[::]`) is probed on
/// loopback. Blocking, with `timeout` for connecting and for the answer.
pub fn probe(addr: SocketAddr, path: &str, timeout: std::time::Duration) -> Result<()> {
    use std::io::{Read, Write};
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{addr}{path}");
    let failed = |e: std::io::Error| crate::Error::Invalid(format!("{url}: {e}"));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(failed)?;
    stream.set_read_timeout(Some(timeout)).map_err(failed)?;
    stream.set_write_timeout(Some(timeout)).map_err(failed)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(failed)?;
    // The status line is all that matters; the body is at most a few kB.
    let mut answer = Vec::new();
    stream
        .take(64 << 10)
        .read_to_end(&mut answer)
        .map_err(failed)?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or("");
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => {
            let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").trim();
            Err(crate::Error::Invalid(format!("{url}: {status:?} {body}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_in_prometheus_text() {
        let m = Metrics::new(false);
        m.job("ok");
        m.job("ok");
        m.job("dead");
        m.stage("inference", 1.5);
        m.queue_wait(3.0);
        let text = m.encode();
        assert!(
            text.contains("multir_jobs_total{outcome=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("multir_jobs_total{outcome=\"dead\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("multir_stage_seconds_total{stage=\"inference\"} 1.5"),
            "{text}"
        );
        assert!(text.contains("multir_queue_wait_seconds_count 1"), "{text}");
        assert!(text.contains("multir_gpu_in_use 0"), "{text}");
        assert!(!m.gpu());
    }

    #[test]
    fn the_endpoint_answers_over_http_and_stops_with_its_signal() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let h = Arc::new(Health::new(Arc::new(Metrics::new(false)), || true));
            h.metrics.job("ok");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let (bound, server) = serve(addr, h.clone(), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
            let server = tokio::spawn(server);
            let get = |path: &'static str| async move {
                let mut s = tokio::net::TcpStream::connect(bound).await.unwrap();
                let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                s.write_all(req.as_bytes()).await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            };
            let ready = get("/readyz").await;
            assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
            h.set_model_loaded();
            assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
            let metrics = get("/metrics").await;
            assert!(
                metrics.contains("multir_jobs_total{outcome=\"ok\"} 1"),
                "{metrics}"
            );
            // The image's HEALTHCHECK: blocking, so off the runtime thread.
            let timeout = std::time::Duration::from_secs(5);
            let probe_ready = |path: &'static str| {
                let mut any = bound;
                any.set_ip(std::net::Ipv4Addr::UNSPECIFIED.into());
                tokio::task::spawn_blocking(move || probe(any, path, timeout))
            };
            probe_ready("/healthz").await.unwrap().unwrap();
            let missing = probe_ready("/nope").await.unwrap().unwrap_err();
            assert!(missing.to_string().contains("404"), "{missing}");
            let _ = stop.send(());
            server.await.unwrap();
            let gone = tokio::task::spawn_blocking(move || probe(bound, "/healthz", timeout))
                .await
                .unwrap();
            let gone = gone.unwrap_err().to_string();
            assert!(gone.contains(&format!("http://{bound}/healthz")), "{gone}");
            assert!(
                tokio::net::TcpStream::connect(bound).await.is_err(),
                "the listener is closed"
            );
        });
    }

    #[test]
    fn readiness_needs_the_model_and_the_broker() {
        let up = Arc::new(AtomicBool::new(true));
        let u = up.clone();
        let h = Health::new(Arc::new(Metrics::new(true)), move || {
            u.load(Ordering::SeqCst)
        });
        assert_eq!(
            h.respond("/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(h.respond("/healthz").status(), StatusCode::OK);
        h.set_model_loaded();
        assert_eq!(h.respond("/readyz").status(), StatusCode::OK);
        up.store(false, Ordering::SeqCst);
        assert_eq!(
            h.respond("/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(h.respond("/nope").status(), StatusCode::NOT_FOUND);
    }
}
